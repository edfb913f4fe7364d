/* engine/hugepage.c — measuring and refaulting 2 MiB mappings of the model file (see
 * hugepage.h). */
#include "hugepage.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "engine_limits.h"

#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22 /* Linux 5.14 */
#endif

/* "7f1e4ac00000-7f1e4e000000 r--s ..." starts a mapping's block of smaps fields. */
static int parse_range(const char *line, uintptr_t *ret_start, uintptr_t *ret_end) {
        if (!((line[0] >= '0' && line[0] <= '9') || (line[0] >= 'a' && line[0] <= 'f')))
                return 0;
        return sscanf(line, "%" SCNxPTR "-%" SCNxPTR, ret_start, ret_end) == 2;
}

/* "FilePmdMapped:   1859584 kB" -> bytes, when line is one of the huge-mapping fields. */
static int parse_huge_field(const char *line, uint64_t *ret_bytes) {
        static const char *const fields[] = { "FilePmdMapped:", "AnonHugePages:", "ShmemPmdMapped:" };
        for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++) {
                const size_t n = strlen(fields[i]);
                unsigned long long kib;
                if (strncmp(line, fields[i], n) == 0 && sscanf(line + n, "%llu", &kib) == 1) {
                        *ret_bytes = (uint64_t)kib * 1024u;
                        return 1;
                }
        }
        return 0;
}

int hugepage_mapped_bytes(const void *base, size_t len, uint64_t *ret_bytes) {
        const uintptr_t lo = (uintptr_t)base, hi = lo + len;
        FILE *f = fopen("/proc/self/smaps", "re");
        if (!f)
                return -errno;
        char *line = NULL;
        size_t cap = 0;
        uint64_t total = 0;
        int inside = 0;
        while (getline(&line, &cap, f) > 0) {
                uintptr_t start, end;
                uint64_t bytes;
                if (parse_range(line, &start, &end))
                        inside = start < hi && end > lo; /* the last page may reach past len */
                else if (inside && parse_huge_field(line, &bytes))
                        total += bytes;
        }
        const int failed = ferror(f);
        free(line);
        fclose(f);
        if (failed)
                return -EIO;
        *ret_bytes = total;
        return 0;
}

/* Maps every page of [base, base + len), reading what the page cache lacks. */
static int populate(const void *base, size_t len) {
        if (madvise((void *)(uintptr_t)base, len, MADV_POPULATE_READ) == 0)
                return 0;
        if (errno != EINVAL)
                return -errno;
        /* before Linux 5.14: touch a byte of every page */
        const long page = sysconf(_SC_PAGESIZE);
        const size_t step = page > 0 ? (size_t)page : 4096u;
        uint8_t sum = 0;
        for (size_t off = 0; off < len; off += step)
                sum ^= ((const volatile uint8_t *)base)[off];
        (void)sum;
        return 0;
}

int hugepage_refault(const char *path, const void *base, size_t len) {
        void *start = (void *)(uintptr_t)base;
        if (madvise(start, len, MADV_DONTNEED) < 0)
                return -errno;
        const int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
                return -errno;
        const int r = posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
        close(fd);
        if (r != 0)
                return -r;
        return populate(base, len);
}

static double seconds_now(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int hugepage_settle(const char *path, const void *base, size_t len, HugepageReport *ret) {
        HugepageReport rep = { .file_bytes = len };
        const long pages = sysconf(_SC_PHYS_PAGES), page_size = sysconf(_SC_PAGESIZE);
        const uint64_t ram = pages > 0 && page_size > 0 ? (uint64_t)pages * (uint64_t)page_size : 0;
        rep.too_large = ram == 0 || len > ram / 100 * HUGEPAGE_REFAULT_RAM_PERCENT;
        /* a fresh mapping has no pages yet: map what the page cache holds (in whatever
         * folio sizes it holds it) before measuring */
        int r = rep.too_large ? 0 : populate(base, len);
        if (r < 0)
                return r;
        r = hugepage_mapped_bytes(base, len, &rep.huge_before);
        if (r < 0)
                return r;
        rep.huge_after = rep.huge_before;
        if (!rep.too_large && rep.huge_before < len / 100 * HUGEPAGE_SETTLED_PERCENT) {
                const double t0 = seconds_now();
                r = hugepage_refault(path, base, len);
                if (r < 0)
                        return r;
                rep.refaulted = true;
                rep.seconds = seconds_now() - t0;
                r = hugepage_mapped_bytes(base, len, &rep.huge_after);
                if (r < 0)
                        return r;
        }
        *ret = rep;
        return 0;
}
