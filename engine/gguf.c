/* engine/gguf.c — GGUF parsing and validation. The file is hostile: every count, length,
 * dimension and offset is checked with overflow-safe 64-bit arithmetic before use.
 * Called at model load (any thread); the result is read-only afterwards. */
#include "gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine_limits.h"
#include "quant.h"

#define GGUF_DEFAULT_ALIGNMENT 32

/* A bounded reader over the file bytes. */
typedef struct Cursor {
        const uint8_t *base;
        uint64_t size;
        uint64_t pos;
        GGUFError *err;
} Cursor;

static int fail(GGUFError *err, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(GGUFError *err, int code, const char *fmt, ...) {
        if (err) {
                va_list ap;
                va_start(ap, fmt);
                vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
                va_end(ap);
        }
        return code;
}

static int cursor_take(Cursor *c, uint64_t n, const uint8_t **ret, const char *what) {
        if (n > c->size - c->pos)
                return fail(c->err, -EBADMSG, "truncated file: %s needs %llu bytes at offset %llu, file is %llu bytes",
                            what, (unsigned long long)n, (unsigned long long)c->pos, (unsigned long long)c->size);
        *ret = c->base + c->pos;
        c->pos += n;
        return 0;
}

static uint64_t load_le(const uint8_t *p, unsigned n) {
        uint64_t v = 0;
        for (unsigned i = 0; i < n; i++)
                v |= (uint64_t)p[i] << (8 * i);
        return v;
}

static int cursor_u32(Cursor *c, uint32_t *ret, const char *what) {
        const uint8_t *p = NULL;
        int r = cursor_take(c, 4, &p, what);
        if (r < 0)
                return r;
        *ret = (uint32_t)load_le(p, 4);
        return 0;
}

static int cursor_u64(Cursor *c, uint64_t *ret, const char *what) {
        const uint8_t *p = NULL;
        int r = cursor_take(c, 8, &p, what);
        if (r < 0)
                return r;
        *ret = load_le(p, 8);
        return 0;
}

static int cursor_string(Cursor *c, GGUFString *ret, const char *what) {
        uint64_t len;
        const uint8_t *p = NULL;
        int r = cursor_u64(c, &len, what);
        if (r < 0)
                return r;
        if (len > GGUF_MAX_STRING)
                return fail(c->err, -E2BIG, "%s: string length %llu over the limit of %u bytes", what,
                            (unsigned long long)len, GGUF_MAX_STRING);
        r = cursor_take(c, len, &p, what);
        if (r < 0)
                return r;
        ret->len = len;
        ret->data = (const char *)p;
        return 0;
}

/* Size in bytes of a fixed-size scalar value type; 0 for string/array/unknown. */
static unsigned scalar_size(uint32_t t) {
        switch (t) {
        case GGUF_TYPE_UINT8: case GGUF_TYPE_INT8: case GGUF_TYPE_BOOL: return 1;
        case GGUF_TYPE_UINT16: case GGUF_TYPE_INT16: return 2;
        case GGUF_TYPE_UINT32: case GGUF_TYPE_INT32: case GGUF_TYPE_FLOAT32: return 4;
        case GGUF_TYPE_UINT64: case GGUF_TYPE_INT64: case GGUF_TYPE_FLOAT64: return 8;
        default: return 0;
        }
}

int gguf_str_eq(GGUFString s, const char *c) {
        size_t n = strlen(c);
        return s.len == n && (n == 0 || memcmp(s.data, c, n) == 0);
}

/* A key or name from the file, made safe for an error message (and so for a log line): at
 * most 60 bytes, anything outside printable ASCII masked as '?', "..." if cut. */
typedef struct SafeName {
        char s[64];
} SafeName;

static SafeName safe_name(GGUFString in) {
        SafeName out;
        size_t n = in.len > 60 ? 57 : (size_t)in.len, i;
        for (i = 0; i < n; i++) {
                unsigned char ch = (unsigned char)in.data[i];
                out.s[i] = ch >= 0x20 && ch < 0x7f ? (char)ch : '?';
        }
        if (in.len > 60)
                for (int k = 0; k < 3; k++)
                        out.s[i++] = '.';
        out.s[i] = 0;
        return out;
}

static int parse_kv(Cursor *c, GGUFKV *kv, uint64_t index) {
        char what[96];
        uint32_t t;
        int r;

        snprintf(what, sizeof(what), "metadata key #%llu", (unsigned long long)index);
        r = cursor_string(c, &kv->key, what);
        if (r < 0)
                return r;
        snprintf(what, sizeof(what), "metadata '%s'", safe_name(kv->key).s);
        r = cursor_u32(c, &t, what);
        if (r < 0)
                return r;
        if (t >= GGUF_TYPE_COUNT_)
                return fail(c->err, -EBADMSG, "%s: unknown value type %u", what, t);
        kv->type = (GGUFValueType)t;
        kv->value = c->base + c->pos;

        if (t == GGUF_TYPE_STRING) {
                GGUFString s;
                return cursor_string(c, &s, what);
        }
        if (t != GGUF_TYPE_ARRAY) {
                const uint8_t *p = NULL;
                return cursor_take(c, scalar_size(t), &p, what);
        }

        uint32_t at;
        uint64_t n;
        r = cursor_u32(c, &at, what);
        if (r < 0)
                return r;
        r = cursor_u64(c, &n, what);
        if (r < 0)
                return r;
        if (at >= GGUF_TYPE_COUNT_ || at == GGUF_TYPE_ARRAY)
                return fail(c->err, -EBADMSG, "%s: unsupported array element type %u", what, at);
        if (n > GGUF_MAX_ARRAY)
                return fail(c->err, -E2BIG, "%s: array of %llu elements over the limit of %u", what,
                            (unsigned long long)n, GGUF_MAX_ARRAY);
        kv->arr_type = (GGUFValueType)at;
        kv->arr_len = n;
        kv->value = c->base + c->pos;
        if (at == GGUF_TYPE_STRING) {
                for (uint64_t i = 0; i < n; i++) {
                        GGUFString s;
                        r = cursor_string(c, &s, what);
                        if (r < 0)
                                return r;
                }
                return 0;
        }
        const uint8_t *p = NULL;
        /* n <= 2^24 and element size <= 8: the product cannot overflow. */
        return cursor_take(c, n * scalar_size(at), &p, what);
}

static int parse_tensor_info(Cursor *c, GGUFTensor *t, uint64_t index) {
        char what[128];
        uint32_t type;
        int r;

        snprintf(what, sizeof(what), "tensor #%llu name", (unsigned long long)index);
        r = cursor_string(c, &t->name, what);
        if (r < 0)
                return r;
        snprintf(what, sizeof(what), "tensor '%s'", safe_name(t->name).s);
        r = cursor_u32(c, &t->n_dims, what);
        if (r < 0)
                return r;
        if (t->n_dims == 0 || t->n_dims > GGUF_MAX_DIMS)
                return fail(c->err, -EBADMSG, "%s: %u dimensions (1..%d allowed)", what, t->n_dims, GGUF_MAX_DIMS);
        uint64_t n_el = 1;
        for (uint32_t d = 0; d < GGUF_MAX_DIMS; d++) {
                t->ne[d] = 1;
                if (d >= t->n_dims)
                        continue;
                r = cursor_u64(c, &t->ne[d], what);
                if (r < 0)
                        return r;
                if (t->ne[d] == 0 || t->ne[d] > INT64_MAX)
                        return fail(c->err, -EBADMSG, "%s: dimension %u is %llu (must be 1..2^63-1)", what, d,
                                    (unsigned long long)t->ne[d]);
                if (__builtin_mul_overflow(n_el, t->ne[d], &n_el) || n_el > INT64_MAX)
                        return fail(c->err, -EOVERFLOW, "%s: element count overflows", what);
        }
        t->n_elements = n_el;
        r = cursor_u32(c, &type, what);
        if (r < 0)
                return r;
        const QuantTraits *qt = quant_traits(type);
        if (!qt)
                return fail(c->err, -ENOTSUP, "%s: unsupported tensor type %u", what, type);
        t->type = type;
        if (t->ne[0] % qt->block_size != 0)
                return fail(c->err, -EBADMSG, "%s: row of %llu elements is not a multiple of the %s block size %u",
                            what, (unsigned long long)t->ne[0], qt->name, qt->block_size);
        uint64_t row_bytes;
        r = quant_row_bytes(type, t->ne[0], &row_bytes);
        if (r < 0 || __builtin_mul_overflow(row_bytes, n_el / t->ne[0], &t->n_bytes))
                return fail(c->err, -EOVERFLOW, "%s: byte size overflows", what);
        return cursor_u64(c, &t->offset, what);
}

static int cmp_tensor_offset(const void *a, const void *b) {
        const GGUFTensor *x = *(const GGUFTensor *const *)a, *y = *(const GGUFTensor *const *)b;
        return x->offset < y->offset ? -1 : x->offset > y->offset;
}

static int cmp_string(GGUFString a, GGUFString b) {
        size_t n = a.len < b.len ? a.len : b.len;
        int c = memcmp(a.data, b.data, n);
        if (c)
                return c;
        return a.len < b.len ? -1 : a.len > b.len;
}

static int cmp_kv_key(const void *a, const void *b) {
        return cmp_string((*(const GGUFKV *const *)a)->key, (*(const GGUFKV *const *)b)->key);
}

static int cmp_tensor_name(const void *a, const void *b) {
        return cmp_string((*(const GGUFTensor *const *)a)->name, (*(const GGUFTensor *const *)b)->name);
}

/* Natural alignment in memory of one element / block of a tensor type (what the kernels'
 * pointer types need); the most any type could need for types we do not know. */
static size_t type_alignment(uint32_t type) {
        switch (type) {
        case GGML_TYPE_F32: return _Alignof(float);
        case GGML_TYPE_F16: return _Alignof(ggml_half);
        case GGML_TYPE_BF16: return _Alignof(uint16_t);
        case GGML_TYPE_Q4_0: return _Alignof(BlockQ4_0);
        case GGML_TYPE_Q4_1: return _Alignof(BlockQ4_1);
        case GGML_TYPE_Q5_0: return _Alignof(BlockQ5_0);
        case GGML_TYPE_Q5_1: return _Alignof(BlockQ5_1);
        case GGML_TYPE_Q8_0: return _Alignof(BlockQ8_0);
        case GGML_TYPE_Q2_K: return _Alignof(BlockQ2_K);
        case GGML_TYPE_Q3_K: return _Alignof(BlockQ3_K);
        case GGML_TYPE_Q4_K: return _Alignof(BlockQ4_K);
        case GGML_TYPE_Q5_K: return _Alignof(BlockQ5_K);
        case GGML_TYPE_Q6_K: return _Alignof(BlockQ6_K);
        default: return _Alignof(max_align_t);
        }
}

/* Duplicate keys / names, tensors that overlap, run past the end or are misaligned. */
static int validate_layout(GGUFFile *f, GGUFError *err) {
        uint64_t n = f->n_kv > f->n_tensors ? f->n_kv : f->n_tensors;
        const void **idx = calloc(n ? n : 1, sizeof(*idx));
        int r = 0;
        if (!idx)
                return -ENOMEM;

        for (uint64_t i = 0; i < f->n_kv; i++)
                idx[i] = &f->kv[i];
        qsort(idx, f->n_kv, sizeof(*idx), cmp_kv_key);
        for (uint64_t i = 1; i < f->n_kv; i++) {
                const GGUFKV *k = idx[i];
                if (cmp_string(((const GGUFKV *)idx[i - 1])->key, k->key) == 0) {
                        r = fail(err, -EBADMSG, "duplicate metadata key '%s'", safe_name(k->key).s);
                        goto out;
                }
        }

        for (uint64_t i = 0; i < f->n_tensors; i++)
                idx[i] = &f->tensors[i];
        qsort(idx, f->n_tensors, sizeof(*idx), cmp_tensor_name);
        for (uint64_t i = 1; i < f->n_tensors; i++) {
                const GGUFTensor *t = idx[i];
                if (cmp_string(((const GGUFTensor *)idx[i - 1])->name, t->name) == 0) {
                        r = fail(err, -EBADMSG, "duplicate tensor name '%s'", safe_name(t->name).s);
                        goto out;
                }
        }

        qsort(idx, f->n_tensors, sizeof(*idx), cmp_tensor_offset);
        uint64_t data_size = f->size - f->data_offset, prev_end = 0;
        for (uint64_t i = 0; i < f->n_tensors; i++) {
                GGUFTensor *t = (GGUFTensor *)idx[i];
                if (t->offset % f->alignment != 0) {
                        r = fail(err, -EBADMSG, "tensor '%s': offset %llu is not a multiple of the alignment %llu",
                                 safe_name(t->name).s, (unsigned long long)t->offset, (unsigned long long)f->alignment);
                        goto out;
                }
                if (t->offset > data_size || t->n_bytes > data_size - t->offset) {
                        r = fail(err, -EBADMSG, "tensor '%s': data (%llu bytes at offset %llu) runs past the end of the file",
                                 safe_name(t->name).s, (unsigned long long)t->n_bytes, (unsigned long long)t->offset);
                        goto out;
                }
                if (i > 0 && t->offset < prev_end) {
                        r = fail(err, -EBADMSG, "tensor '%s': data at offset %llu overlaps the previous tensor (ends at %llu)",
                                 safe_name(t->name).s, (unsigned long long)t->offset, (unsigned long long)prev_end);
                        goto out;
                }
                /* The kernels read tensor data through float / ggml_half / block pointers, so it
                 * must be aligned in memory, not just in the file: a small general.alignment, or a
                 * caller buffer that is not itself aligned, could break that. */
                const uint8_t *data = f->base + f->data_offset + t->offset;
                size_t a = type_alignment(t->type);
                if ((uintptr_t)data % a != 0) {
                        r = fail(err, -EBADMSG, "tensor '%s': data is not %zu-byte aligned in memory for %s "
                                 "(file alignment %llu, data section at %llu)", safe_name(t->name).s, a,
                                 quant_traits(t->type)->name, (unsigned long long)f->alignment,
                                 (unsigned long long)f->data_offset);
                        goto out;
                }
                prev_end = t->offset + t->n_bytes;
                t->data = data;
        }
out:
        free(idx);
        return r;
}

static int parse(GGUFFile *f, GGUFError *err) {
        Cursor c = { .base = f->base, .size = f->size, .pos = 0, .err = err };
        const uint8_t *magic = NULL;
        int r;

        r = cursor_take(&c, 4, &magic, "magic");
        if (r < 0)
                return r;
        if (memcmp(magic, "GGUF", 4) != 0)
                return fail(err, -EBADMSG, "not a GGUF file (bad magic)");
        r = cursor_u32(&c, &f->version, "version");
        if (r < 0)
                return r;
        if (f->version != 2 && f->version != 3)
                return fail(err, -ENOTSUP, "GGUF version %u not supported (2 and 3 are)", f->version);
        r = cursor_u64(&c, &f->n_tensors, "tensor count");
        if (r < 0)
                return r;
        r = cursor_u64(&c, &f->n_kv, "metadata count");
        if (r < 0)
                return r;
        if (f->n_tensors > GGUF_MAX_TENSORS)
                return fail(err, -E2BIG, "tensor count %llu over the limit of %u", (unsigned long long)f->n_tensors, GGUF_MAX_TENSORS);
        if (f->n_kv > GGUF_MAX_KV)
                return fail(err, -E2BIG, "metadata count %llu over the limit of %u", (unsigned long long)f->n_kv, GGUF_MAX_KV);
        /* Before allocating for them: every pair takes at least 13 bytes (key length, type, a
         * one-byte value) and every tensor info 32 (name length, n_dims, one dim, type, offset).
         * Both counts are at most 2^16 here, so this cannot overflow. */
        uint64_t min_bytes = f->n_kv * 13 + f->n_tensors * 32;
        if (min_bytes > c.size - c.pos)
                return fail(err, -EBADMSG, "truncated file: %llu metadata pairs and %llu tensor infos need at least %llu bytes, "
                            "%llu left after the header", (unsigned long long)f->n_kv, (unsigned long long)f->n_tensors,
                            (unsigned long long)min_bytes, (unsigned long long)(c.size - c.pos));

        f->kv = calloc(f->n_kv ? f->n_kv : 1, sizeof(*f->kv));
        f->tensors = calloc(f->n_tensors ? f->n_tensors : 1, sizeof(*f->tensors));
        if (!f->kv || !f->tensors)
                return -ENOMEM;

        for (uint64_t i = 0; i < f->n_kv; i++) {
                r = parse_kv(&c, &f->kv[i], i);
                if (r < 0)
                        return r;
        }

        /* general.alignment is a UINT32 (as ggml requires): a power of two, at most our limit. */
        f->alignment = GGUF_DEFAULT_ALIGNMENT;
        const GGUFKV *akv = gguf_find_kv(f, "general.alignment");
        if (akv) {
                if (akv->type != GGUF_TYPE_UINT32)
                        return fail(err, -EBADMSG, "general.alignment has value type %u, must be UINT32 (%u)",
                                    (unsigned)akv->type, (unsigned)GGUF_TYPE_UINT32);
                uint32_t a = (uint32_t)load_le(akv->value, 4);
                if (a == 0 || (a & (a - 1)) != 0)
                        return fail(err, -EBADMSG, "general.alignment %u is not a power of two", a);
                if (a > GGUF_MAX_ALIGNMENT)
                        return fail(err, -E2BIG, "general.alignment %u over the limit of %u", a, GGUF_MAX_ALIGNMENT);
                f->alignment = a;
        }

        for (uint64_t i = 0; i < f->n_tensors; i++) {
                r = parse_tensor_info(&c, &f->tensors[i], i);
                if (r < 0)
                        return r;
        }

        uint64_t data_offset = (c.pos + f->alignment - 1) / f->alignment * f->alignment;
        if (f->n_tensors > 0 && data_offset > f->size)
                return fail(err, -EBADMSG, "truncated file: tensor data section starts at %llu, file is %llu bytes",
                            (unsigned long long)data_offset, (unsigned long long)f->size);
        f->data_offset = data_offset > f->size ? f->size : data_offset;
        return validate_layout(f, err);
}

int gguf_open_buffer(const void *buf, size_t size, GGUFError *err, GGUFFile **ret_file) {
        GGUFFile *f = calloc(1, sizeof(*f));
        int r;
        if (!f)
                return fail(err, -ENOMEM, "out of memory");
        f->base = buf;
        f->size = size;
        r = parse(f, err);
        if (r < 0) {
                if (r == -ENOMEM)
                        fail(err, r, "out of memory");
                gguf_close(f);
                return r;
        }
        *ret_file = f;
        return 0;
}

/* Map a whole file read-only at a 2 MiB-aligned address and ask for huge pages, so the
 * kernel can map it with 2 MiB entries wherever the page cache holds 2 MiB folios (see
 * hugepage.h). Both are hints: a plain mapping works the same, only slower. */
#define MAP_HUGE_ALIGN ((size_t)2 << 20)
static void *map_aligned(int fd, size_t size) {
        if (size < MAP_HUGE_ALIGN || size > SIZE_MAX - MAP_HUGE_ALIGN)
                return mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0);
        uint8_t *reserve = mmap(NULL, size + MAP_HUGE_ALIGN, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (reserve == MAP_FAILED)
                return mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0);
        uint8_t *aligned = (uint8_t *)(((uintptr_t)reserve + MAP_HUGE_ALIGN - 1) & ~(uintptr_t)(MAP_HUGE_ALIGN - 1));
        void *map = mmap(aligned, size, PROT_READ, MAP_SHARED | MAP_FIXED, fd, 0);
        if (map == MAP_FAILED) {
                const int e = errno;
                munmap(reserve, size + MAP_HUGE_ALIGN);
                errno = e;
                return MAP_FAILED;
        }
        /* give back the reservation's slack on both sides */
        if (aligned > reserve)
                munmap(reserve, (size_t)(aligned - reserve));
        const size_t tail = (size_t)(reserve + size + MAP_HUGE_ALIGN - (aligned + size));
        if (tail > 0)
                munmap(aligned + size, tail);
        (void)madvise(map, size, MADV_HUGEPAGE);
        return map;
}

int gguf_open(const char *path, GGUFError *err, GGUFFile **ret_file) {
        struct stat st;
        GGUFFile *f = NULL;
        void *map;
        int fd, r;

        fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
                r = -errno;
                return fail(err, r, "cannot open: %s", strerror(-r));
        }
        if (fstat(fd, &st) < 0) {
                r = -errno;
                close(fd);
                return fail(err, r, "cannot stat: %s", strerror(-r));
        }
        if (!S_ISREG(st.st_mode)) {
                close(fd);
                r = S_ISDIR(st.st_mode) ? -EISDIR : -EINVAL;
                return fail(err, r, "not a regular file");
        }
        if (st.st_size < 24) {
                close(fd);
                return fail(err, -EBADMSG, "truncated file: %lld bytes is too short for a GGUF header", (long long)st.st_size);
        }
        /* With a 32-bit size_t a file over 4 GiB cannot be mapped whole: refuse it rather than
         * map a truncated size. */
        if ((uintmax_t)st.st_size > SIZE_MAX) {
                close(fd);
                return fail(err, -EFBIG, "file of %lld bytes does not fit in the address space", (long long)st.st_size);
        }
        map = map_aligned(fd, (size_t)st.st_size);
        r = map == MAP_FAILED ? -errno : 0;
        close(fd);
        if (map == MAP_FAILED)
                return fail(err, r, "cannot map: %s", strerror(-r));

        r = gguf_open_buffer(map, (size_t)st.st_size, err, &f);
        if (r < 0) {
                munmap(map, (size_t)st.st_size);
                return r;
        }
        f->mapped = 1;
        *ret_file = f;
        return 0;
}

GGUFFile *gguf_close(GGUFFile *f) {
        if (!f)
                return NULL;
        if (f->mapped)
                munmap((void *)f->base, f->size);
        free(f->kv);
        free(f->tensors);
        free(f);
        return NULL;
}

const GGUFKV *gguf_find_kv(const GGUFFile *f, const char *key) {
        for (uint64_t i = 0; i < f->n_kv; i++)
                if (gguf_str_eq(f->kv[i].key, key))
                        return &f->kv[i];
        return NULL;
}

const GGUFTensor *gguf_find_tensor(const GGUFFile *f, const char *name) {
        for (uint64_t i = 0; i < f->n_tensors; i++)
                if (gguf_str_eq(f->tensors[i].name, name))
                        return &f->tensors[i];
        return NULL;
}

/* Reads any integer-typed value as signed 128-bit-safe pair (neg flag + magnitude). */
static int kv_integer(const GGUFKV *kv, int *ret_neg, uint64_t *ret_mag) {
        const uint8_t *p = kv->value;
        int64_t s;
        switch (kv->type) {
        case GGUF_TYPE_UINT8: case GGUF_TYPE_UINT16: case GGUF_TYPE_UINT32: case GGUF_TYPE_UINT64:
                *ret_neg = 0;
                *ret_mag = load_le(p, scalar_size(kv->type));
                return 0;
        case GGUF_TYPE_INT8: s = (int8_t)p[0]; break;
        case GGUF_TYPE_INT16: s = (int16_t)load_le(p, 2); break;
        case GGUF_TYPE_INT32: s = (int32_t)load_le(p, 4); break;
        case GGUF_TYPE_INT64: s = (int64_t)load_le(p, 8); break;
        default: return -EBADMSG;
        }
        *ret_neg = s < 0;
        *ret_mag = s < 0 ? (uint64_t)0 - (uint64_t)s : (uint64_t)s;
        return 0;
}

int gguf_get_u64(const GGUFFile *f, const char *key, uint64_t *ret) {
        const GGUFKV *kv = gguf_find_kv(f, key);
        int neg;
        uint64_t v;
        if (!kv)
                return -ENOENT;
        if (kv_integer(kv, &neg, &v) < 0 || neg)
                return -EBADMSG;
        *ret = v;
        return 0;
}

int gguf_get_u32(const GGUFFile *f, const char *key, uint32_t *ret) {
        uint64_t v;
        int r = gguf_get_u64(f, key, &v);
        if (r < 0)
                return r;
        if (v > UINT32_MAX)
                return -EBADMSG;
        *ret = (uint32_t)v;
        return 0;
}

int gguf_get_f32(const GGUFFile *f, const char *key, float *ret) {
        const GGUFKV *kv = gguf_find_kv(f, key);
        if (!kv)
                return -ENOENT;
        if (kv->type == GGUF_TYPE_FLOAT32) {
                uint32_t bits = (uint32_t)load_le(kv->value, 4);
                memcpy(ret, &bits, 4);
                return 0;
        }
        if (kv->type == GGUF_TYPE_FLOAT64) {
                uint64_t bits = load_le(kv->value, 8);
                double d;
                memcpy(&d, &bits, 8);
                *ret = (float)d;
                return 0;
        }
        return -EBADMSG;
}

int gguf_get_bool(const GGUFFile *f, const char *key, int *ret) {
        const GGUFKV *kv = gguf_find_kv(f, key);
        if (!kv)
                return -ENOENT;
        if (kv->type != GGUF_TYPE_BOOL || kv->value[0] > 1)
                return -EBADMSG;
        *ret = kv->value[0];
        return 0;
}

int gguf_get_str(const GGUFFile *f, const char *key, GGUFString *ret) {
        const GGUFKV *kv = gguf_find_kv(f, key);
        if (!kv)
                return -ENOENT;
        if (kv->type != GGUF_TYPE_STRING)
                return -EBADMSG;
        ret->len = load_le(kv->value, 8);
        ret->data = (const char *)kv->value + 8;
        return 0;
}

int gguf_get_array(const GGUFFile *f, const char *key, GGUFValueType t, const void **ret_data, uint64_t *ret_n) {
        const GGUFKV *kv = gguf_find_kv(f, key);
        if (!kv)
                return -ENOENT;
        if (kv->type != GGUF_TYPE_ARRAY || kv->arr_type != t || scalar_size(t) == 0)
                return -EBADMSG;
        *ret_data = kv->value;
        *ret_n = kv->arr_len;
        return 0;
}

int gguf_get_str_array(const GGUFFile *f, const char *key, GGUFString **ret_strings, uint64_t *ret_n) {
        const GGUFKV *kv = gguf_find_kv(f, key);
        if (!kv)
                return -ENOENT;
        if (kv->type != GGUF_TYPE_ARRAY || kv->arr_type != GGUF_TYPE_STRING)
                return -EBADMSG;
        GGUFString *s = calloc(kv->arr_len ? kv->arr_len : 1, sizeof(*s));
        if (!s)
                return -ENOMEM;
        /* Already validated by the parser: lengths are in bounds. */
        const uint8_t *p = kv->value;
        for (uint64_t i = 0; i < kv->arr_len; i++) {
                s[i].len = load_le(p, 8);
                s[i].data = (const char *)p + 8;
                p += 8 + s[i].len;
        }
        *ret_strings = s;
        *ret_n = kv->arr_len;
        return 0;
}
