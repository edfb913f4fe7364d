/* engine/hugepage.h — 2 MiB pages for the mapped model file. Decoding reads every weight
 * of a token once, straight from the page cache through the model's mmap; with 4 KiB
 * mappings that costs a TLB miss every 4 KiB and left decode near 65% of the read bandwidth,
 * with 2 MiB mappings (the page cache holding the file in 2 MiB folios) it runs near 90%.
 *
 * The kernel maps a file with 2 MiB entries when the mapping is 2 MiB-aligned and the page
 * cache holds that part of the file as a 2 MiB folio. gguf_open() takes care of the first and
 * asks for huge pages (MADV_HUGEPAGE), so a file first read through that mapping comes in
 * as 2 MiB folios; a file already cached in small folios (say, just downloaded or copied)
 * stays small until it leaves the cache. hugepage_refault() makes it leave and come back.
 * Whether folios can be 2 MiB depends on the kernel and the filesystem (Linux 6.x ext4,
 * xfs, tmpfs: yes; older ext4: no), so callers measure before and after.
 *
 * Library code: returns -errno, never prints. Call on a loading thread: a refault takes
 * one read of the file. */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Bytes the process maps with 2 MiB (or larger) entries in the mappings that overlap
 * [base, base + len), from /proc/self/smaps (FilePmdMapped + AnonHugePages +
 * ShmemPmdMapped). Counts only pages mapped so far. -ENOENT without /proc. */
int hugepage_mapped_bytes(const void *base, size_t len, uint64_t *ret_bytes);

/* Drop this process's mapping of [base, base + len) (a read-only shared mapping of path),
 * evict the file's clean, unmapped pages from the page cache, and read it back through the
 * mapping so the page cache can refill with 2 MiB folios. The contents never change; only
 * the pages that hold them do. Pages other processes map stay as they are. */
int hugepage_refault(const char *path, const void *base, size_t len);

/* What hugepage_settle() found and did. */
typedef struct HugepageReport {
        uint64_t file_bytes;
        uint64_t huge_before;      /* bytes mapped with 2 MiB pages before */
        uint64_t huge_after;       /* and after (== huge_before when nothing was done) */
        bool refaulted;            /* the file was read again */
        bool too_large;            /* over HUGEPAGE_REFAULT_RAM_PERCENT of RAM: neither populated nor re-read */
        double seconds;            /* the re-read's wall time */
} HugepageReport;

/* The loading policy for a file that fits HUGEPAGE_REFAULT_RAM_PERCENT of RAM: map all of
 * it (MADV_POPULATE_READ: cheap when the page cache holds it) and measure; when less than
 * HUGEPAGE_SETTLED_PERCENT is mapped with 2 MiB pages, refault it and measure again. A
 * larger file is only measured as it is (too_large). -ENOENT without /proc/self/smaps. */
int hugepage_settle(const char *path, const void *base, size_t len, HugepageReport *ret);
