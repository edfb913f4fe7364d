/* tests/unit/test_gguf.c — engine/gguf.c: an in-memory GGUF builder, a table of malformed
 * files that must each be rejected with a reason, truncation at every byte, the typed
 * getters, gguf_open on paths, and the real fixture files. Single-threaded cmocka test;
 * run from the repository root. */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "gguf.h"
#include "hugepage.h"
#include "engine_limits.h"
#include "quant.h"
#include "test_fixtures.h"

/* ---------------------------------------------------------------------------------------
 * A growable byte buffer and little-endian writers. */

typedef struct Buf {
        uint8_t *p;
        size_t n, cap;
} Buf;

static void buf_put(Buf *b, const void *src, size_t n) {
        if (b->n + n > b->cap) {
                size_t cap = b->cap ? b->cap : 256;
                while (cap < b->n + n)
                        cap *= 2;
                b->p = realloc(b->p, cap);
                assert_non_null(b->p);
                b->cap = cap;
        }
        if (n)
                memcpy(b->p + b->n, src, n);
        b->n += n;
}

static void buf_free(Buf *b) {
        free(b->p);
        *b = (Buf){ 0 };
}

static void put_le(Buf *b, uint64_t v, unsigned size) {
        uint8_t tmp[8];
        for (unsigned i = 0; i < size; i++)
                tmp[i] = (uint8_t)(v >> (8 * i));
        buf_put(b, tmp, size);
}

static void patch_le(Buf *b, size_t pos, uint64_t v, unsigned size) {
        assert_true(pos + size <= b->n);
        for (unsigned i = 0; i < size; i++)
                b->p[pos + i] = (uint8_t)(v >> (8 * i));
}

static void put_zeros(Buf *b, size_t n) {
        for (size_t i = 0; i < n; i++)
                put_le(b, 0, 1);
}

static uint64_t f32_bits(float f) {
        uint32_t u;
        memcpy(&u, &f, 4);
        return u;
}

static uint64_t f64_bits(double d) {
        uint64_t u;
        memcpy(&u, &d, 8);
        return u;
}

static unsigned value_size(uint32_t t) {
        switch (t) {
        case GGUF_TYPE_UINT8: case GGUF_TYPE_INT8: case GGUF_TYPE_BOOL: return 1;
        case GGUF_TYPE_UINT16: case GGUF_TYPE_INT16: return 2;
        case GGUF_TYPE_UINT32: case GGUF_TYPE_INT32: case GGUF_TYPE_FLOAT32: return 4;
        case GGUF_TYPE_UINT64: case GGUF_TYPE_INT64: case GGUF_TYPE_FLOAT64: return 8;
        default: return 0;
        }
}

/* ---------------------------------------------------------------------------------------
 * A GGUF file described as data, with knobs to break it. */

#define MAX_KV 32
#define MAX_T 8
#define MAX_ELEMS 8

typedef struct KVSpec {
        const char *key;
        uint32_t type;
        uint64_t val;                  /* scalar value: raw bits */
        const char *str;               /* GGUF_TYPE_STRING value */
        uint32_t arr_type;             /* GGUF_TYPE_ARRAY: element type */
        uint32_t n_elems;              /*   elements written */
        uint64_t elems[MAX_ELEMS];     /*   scalar elements: raw bits */
        const char *strs[MAX_ELEMS];   /*   string elements */
        /* Breakage. */
        int key_len_set;               /* write key_len as the key's length field */
        uint64_t key_len;
        int val_len_set;               /* write val_len as the length of the string value / first string element */
        uint64_t val_len;
        int count_set;                 /* write count as the array's element count */
        uint64_t count;
} KVSpec;

typedef struct TensorSpec {
        const char *name;
        uint32_t n_dims;               /* as written; that many of ne[] follow when <= 6 */
        uint64_t ne[6];
        uint32_t type;
        int offset_set;                /* else placed after the previous tensor, aligned */
        uint64_t offset;
        int name_len_set;
        uint64_t name_len;
} TensorSpec;

typedef struct FileSpec {
        char magic[4];
        uint32_t version;
        int counts_set;                /* else the real counts */
        uint64_t n_tensors_field, n_kv_field;
        size_t n_kv;
        KVSpec kv[MAX_KV];
        size_t n_tensors;
        TensorSpec t[MAX_T];
        uint32_t layout_alignment;     /* what the builder pads to */
        int64_t data_extra;            /* bytes added (> 0) or cut (< 0) at the end */
        int misalign_first;            /* place tensor 0 at an address == 2 (mod 4) */
} FileSpec;

/* Where the builder put things, for tests that patch the bytes afterwards. */
typedef struct Marks {
        size_t kv_key[MAX_KV];         /* a key's length field */
        size_t kv_value[MAX_KV];       /* a value (string: its length field; array: element type) */
        size_t t_name[MAX_T];          /* a tensor name's length field */
        size_t t_offset[MAX_T];        /* a tensor's offset field */
        size_t data_offset;            /* start of the data section */
        uint64_t offset[MAX_T];        /* tensor offsets written */
        uint64_t n_bytes[MAX_T];       /* tensor sizes (0 when not computable) */
} Marks;

/* Bytes of a tensor, or 0 when the shape / type makes it invalid or huge. */
static uint64_t spec_tensor_bytes(const TensorSpec *t) {
        const QuantTraits *qt = quant_traits(t->type);
        uint64_t n = 1, bytes;
        if (!qt || t->n_dims == 0 || t->n_dims > GGUF_MAX_DIMS)
                return 0;
        for (uint32_t d = 0; d < t->n_dims; d++)
                if (__builtin_mul_overflow(n, t->ne[d], &n))
                        return 0;
        if (n == 0 || t->ne[0] % qt->block_size != 0)
                return 0;
        if (__builtin_mul_overflow(n / qt->block_size, (uint64_t)qt->type_size, &bytes))
                return 0;
        return bytes > (1u << 20) ? 0 : bytes;
}

static uint8_t pattern_byte(size_t tensor, uint64_t i) {
        return (uint8_t)(tensor * 31 + i * 7 + 1);
}

static void put_string(Buf *b, const char *s, int len_set, uint64_t len) {
        size_t n = strlen(s);
        put_le(b, len_set ? len : n, 8);
        buf_put(b, s, n);
}

static void build(const FileSpec *s, Buf *b, Marks *m) {
        *b = (Buf){ 0 };
        *m = (Marks){ 0 };
        buf_put(b, s->magic, 4);
        put_le(b, s->version, 4);
        put_le(b, s->counts_set ? s->n_tensors_field : s->n_tensors, 8);
        put_le(b, s->counts_set ? s->n_kv_field : s->n_kv, 8);

        for (size_t i = 0; i < s->n_kv; i++) {
                const KVSpec *kv = &s->kv[i];
                m->kv_key[i] = b->n;
                put_string(b, kv->key, kv->key_len_set, kv->key_len);
                put_le(b, kv->type, 4);
                m->kv_value[i] = b->n;
                if (kv->type == GGUF_TYPE_STRING) {
                        put_string(b, kv->str, kv->val_len_set, kv->val_len);
                } else if (kv->type == GGUF_TYPE_ARRAY) {
                        put_le(b, kv->arr_type, 4);
                        put_le(b, kv->count_set ? kv->count : kv->n_elems, 8);
                        for (uint32_t j = 0; j < kv->n_elems; j++) {
                                if (kv->arr_type == GGUF_TYPE_STRING)
                                        put_string(b, kv->strs[j], j == 0 && kv->val_len_set, kv->val_len);
                                else
                                        put_le(b, kv->elems[j], value_size(kv->arr_type));
                        }
                } else {
                        put_le(b, kv->val, value_size(kv->type));
                }
        }

        for (size_t i = 0; i < s->n_tensors; i++) {
                const TensorSpec *t = &s->t[i];
                m->t_name[i] = b->n;
                put_string(b, t->name, t->name_len_set, t->name_len);
                put_le(b, t->n_dims, 4);
                for (uint32_t d = 0; d < (t->n_dims <= 6 ? t->n_dims : 0); d++)
                        put_le(b, t->ne[d], 8);
                put_le(b, t->type, 4);
                m->t_offset[i] = b->n;
                put_le(b, 0, 8); /* patched below */
        }

        /* Padding before the data section; none when there is no data (so that every
         * proper prefix of a tensor-less file is invalid too). */
        const size_t a = s->layout_alignment;
        if (s->n_tensors > 0)
                put_zeros(b, (a - b->n % a) % a);
        m->data_offset = b->n;

        /* Lay the tensors out, patch their offsets, write their bytes. */
        uint64_t next = 0, end = 0;
        for (size_t i = 0; i < s->n_tensors; i++) {
                const TensorSpec *t = &s->t[i];
                uint64_t off = (next + a - 1) / a * a;
                if (i == 0 && s->misalign_first)
                        off = (m->data_offset % 4 == 2) ? 0 : 2;
                if (t->offset_set)
                        off = t->offset;
                m->offset[i] = off;
                m->n_bytes[i] = spec_tensor_bytes(t);
                patch_le(b, m->t_offset[i], off, 8);
                if (m->n_bytes[i] && off <= (1u << 20)) {
                        next = off + m->n_bytes[i];
                        if (next > end)
                                end = next;
                }
        }
        put_zeros(b, (size_t)end);
        for (size_t i = 0; i < s->n_tensors; i++)
                if (m->n_bytes[i] && m->offset[i] <= (1u << 20))
                        for (uint64_t j = 0; j < m->n_bytes[i]; j++)
                                b->p[m->data_offset + m->offset[i] + j] = pattern_byte(i, j);
        if (s->data_extra > 0)
                put_zeros(b, (size_t)s->data_extra);
        else
                b->n -= (size_t)-s->data_extra;
}

/* Indexes of the valid file's metadata and tensors. */
enum {
        KV_ARCH, KV_ALIGN, KV_U8, KV_I8, KV_U16, KV_I16, KV_U32, KV_I32, KV_I32POS, KV_U64, KV_U64SMALL,
        KV_I64, KV_I64POS, KV_F32, KV_F64, KV_BOOL, KV_BOOL0, KV_BOOL2, KV_STR, KV_EMPTYSTR, KV_ARR_I32,
        KV_ARR_F32, KV_ARR_STR, KV_ARR_EMPTY, KV_ARR_U64, N_VALID_KV,
};
enum { T_TOK, T_Q, T_NORM, T_E, N_VALID_T };

#define S(k, t, ...) (KVSpec){ .key = (k), .type = (t), __VA_ARGS__ }

/* A small valid GGUF v3: every metadata type, four tensors of four types; the last tensor
 * ends exactly at the end of the file (no padding after it), so every prefix is invalid. */
static void spec_valid(FileSpec *s) {
        *s = (FileSpec){ .magic = "GGUF", .version = 3, .layout_alignment = 32 };
        s->kv[KV_ARCH] = S("general.architecture", GGUF_TYPE_STRING, .str = "llama");
        s->kv[KV_ALIGN] = S("general.alignment", GGUF_TYPE_UINT32, .val = 32);
        s->kv[KV_U8] = S("test.u8", GGUF_TYPE_UINT8, .val = 200);
        s->kv[KV_I8] = S("test.i8", GGUF_TYPE_INT8, .val = (uint8_t)-5);
        s->kv[KV_U16] = S("test.u16", GGUF_TYPE_UINT16, .val = 60000);
        s->kv[KV_I16] = S("test.i16", GGUF_TYPE_INT16, .val = (uint16_t)-300);
        s->kv[KV_U32] = S("test.u32", GGUF_TYPE_UINT32, .val = 4000000000u);
        s->kv[KV_I32] = S("test.i32", GGUF_TYPE_INT32, .val = (uint32_t)-7);
        s->kv[KV_I32POS] = S("test.i32pos", GGUF_TYPE_INT32, .val = 123456);
        s->kv[KV_U64] = S("test.u64", GGUF_TYPE_UINT64, .val = 1ull << 40);
        s->kv[KV_U64SMALL] = S("test.u64small", GGUF_TYPE_UINT64, .val = 77);
        s->kv[KV_I64] = S("test.i64", GGUF_TYPE_INT64, .val = (uint64_t)-1);
        s->kv[KV_I64POS] = S("test.i64pos", GGUF_TYPE_INT64, .val = 5);
        s->kv[KV_F32] = S("test.f32", GGUF_TYPE_FLOAT32, .val = f32_bits(1.5f));
        s->kv[KV_F64] = S("test.f64", GGUF_TYPE_FLOAT64, .val = f64_bits(0.25));
        s->kv[KV_BOOL] = S("test.bool", GGUF_TYPE_BOOL, .val = 1);
        s->kv[KV_BOOL0] = S("test.bool0", GGUF_TYPE_BOOL, .val = 0);
        s->kv[KV_BOOL2] = S("test.bool2", GGUF_TYPE_BOOL, .val = 2); /* parses; the getter refuses it */
        s->kv[KV_STR] = S("test.str", GGUF_TYPE_STRING, .str = "hello");
        s->kv[KV_EMPTYSTR] = S("test.emptystr", GGUF_TYPE_STRING, .str = "");
        s->kv[KV_ARR_I32] = S("test.arr_i32", GGUF_TYPE_ARRAY, .arr_type = GGUF_TYPE_INT32, .n_elems = 3,
                              .elems = { 1, (uint32_t)-2, 3 });
        s->kv[KV_ARR_F32] = S("test.arr_f32", GGUF_TYPE_ARRAY, .arr_type = GGUF_TYPE_FLOAT32, .n_elems = 2,
                              .elems = { f32_bits(0.5f), f32_bits(2.0f) });
        s->kv[KV_ARR_STR] = S("test.arr_str", GGUF_TYPE_ARRAY, .arr_type = GGUF_TYPE_STRING, .n_elems = 3,
                              .strs = { "a", "", "ccc" });
        s->kv[KV_ARR_EMPTY] = S("test.arr_empty", GGUF_TYPE_ARRAY, .arr_type = GGUF_TYPE_UINT8, .n_elems = 0);
        s->kv[KV_ARR_U64] = S("test.arr_u64", GGUF_TYPE_ARRAY, .arr_type = GGUF_TYPE_UINT64, .n_elems = 2,
                              .elems = { UINT64_MAX, 9 });
        s->n_kv = N_VALID_KV;

        s->t[T_TOK] = (TensorSpec){ .name = "tok.weight", .n_dims = 2, .ne = { 8, 2 }, .type = GGML_TYPE_F32 };      /* 64 B at 0 */
        s->t[T_Q] = (TensorSpec){ .name = "blk.0.q", .n_dims = 2, .ne = { 64, 2 }, .type = GGML_TYPE_Q4_0 };         /* 72 B at 64 */
        s->t[T_NORM] = (TensorSpec){ .name = "norm", .n_dims = 1, .ne = { 16 }, .type = GGML_TYPE_F16 };             /* 32 B at 160 */
        s->t[T_E] = (TensorSpec){ .name = "blk.0.e", .n_dims = 4, .ne = { 32, 1, 2, 1 }, .type = GGML_TYPE_Q8_0 };  /* 68 B at 192 */
        s->n_tensors = N_VALID_T;
}

/* Opens a copy of b in an exactly-sized heap block (so ASan sees any over-read). *ret_copy
 * must be freed after gguf_close. */
static int open_copy(const Buf *b, size_t n, GGUFError *err, GGUFFile **ret_file, uint8_t **ret_copy) {
        uint8_t *copy = malloc(n ? n : 1);
        assert_non_null(copy);
        memcpy(copy, b->p, n);
        *ret_copy = copy;
        return gguf_open_buffer(copy, n, err, ret_file);
}

/* ---------------------------------------------------------------------------------------
 * The valid file and its getters. */

static void check_valid_contents(const GGUFFile *f, const Marks *m) {
        uint32_t u32;
        uint64_t u64;
        float fl;
        int bl;
        GGUFString str;

        assert_int_equal(f->version, 3);
        assert_int_equal(f->n_kv, N_VALID_KV);
        assert_int_equal(f->n_tensors, N_VALID_T);
        assert_int_equal(f->alignment, 32);
        assert_int_equal(f->data_offset, m->data_offset);
        assert_int_equal(f->data_offset % 32, 0);

        /* u32 from every integer type, when the value fits */
        assert_int_equal(gguf_get_u32(f, "general.alignment", &u32), 0);
        assert_int_equal(u32, 32);
        assert_int_equal(gguf_get_u32(f, "test.u8", &u32), 0);
        assert_int_equal(u32, 200);
        assert_int_equal(gguf_get_u32(f, "test.u16", &u32), 0);
        assert_int_equal(u32, 60000);
        assert_int_equal(gguf_get_u32(f, "test.u32", &u32), 0);
        assert_int_equal(u32, 4000000000u);
        assert_int_equal(gguf_get_u32(f, "test.i32pos", &u32), 0);
        assert_int_equal(u32, 123456);
        assert_int_equal(gguf_get_u32(f, "test.u64small", &u32), 0);
        assert_int_equal(u32, 77);
        assert_int_equal(gguf_get_u32(f, "test.i64pos", &u32), 0);
        assert_int_equal(u32, 5);
        u32 = 0xdead;
        assert_int_equal(gguf_get_u32(f, "test.i8", &u32), -EBADMSG);      /* negative */
        assert_int_equal(gguf_get_u32(f, "test.i16", &u32), -EBADMSG);
        assert_int_equal(gguf_get_u32(f, "test.i32", &u32), -EBADMSG);
        assert_int_equal(gguf_get_u32(f, "test.i64", &u32), -EBADMSG);
        assert_int_equal(gguf_get_u32(f, "test.u64", &u32), -EBADMSG);     /* 2^40 does not fit */
        assert_int_equal(gguf_get_u32(f, "test.f32", &u32), -EBADMSG);     /* not an integer */
        assert_int_equal(gguf_get_u32(f, "test.bool", &u32), -EBADMSG);
        assert_int_equal(gguf_get_u32(f, "test.str", &u32), -EBADMSG);
        assert_int_equal(gguf_get_u32(f, "test.arr_i32", &u32), -EBADMSG);
        assert_int_equal(gguf_get_u32(f, "no.such.key", &u32), -ENOENT);
        assert_int_equal(u32, 0xdead); /* untouched on failure */

        assert_int_equal(gguf_get_u64(f, "test.u64", &u64), 0);
        assert_int_equal(u64, 1ull << 40);
        assert_int_equal(gguf_get_u64(f, "test.u8", &u64), 0);
        assert_int_equal(u64, 200);
        assert_int_equal(gguf_get_u64(f, "test.i64", &u64), -EBADMSG);
        assert_int_equal(gguf_get_u64(f, "no.such.key", &u64), -ENOENT);

        assert_int_equal(gguf_get_f32(f, "test.f32", &fl), 0);
        assert_true(fl == 1.5f);
        assert_int_equal(gguf_get_f32(f, "test.f64", &fl), 0);
        assert_true(fl == 0.25f);
        assert_int_equal(gguf_get_f32(f, "test.u32", &fl), -EBADMSG);
        assert_int_equal(gguf_get_f32(f, "test.str", &fl), -EBADMSG);
        assert_int_equal(gguf_get_f32(f, "no.such.key", &fl), -ENOENT);

        assert_int_equal(gguf_get_bool(f, "test.bool", &bl), 0);
        assert_int_equal(bl, 1);
        assert_int_equal(gguf_get_bool(f, "test.bool0", &bl), 0);
        assert_int_equal(bl, 0);
        assert_int_equal(gguf_get_bool(f, "test.bool2", &bl), -EBADMSG);
        assert_int_equal(gguf_get_bool(f, "test.u8", &bl), -EBADMSG);
        assert_int_equal(gguf_get_bool(f, "no.such.key", &bl), -ENOENT);

        assert_int_equal(gguf_get_str(f, "general.architecture", &str), 0);
        assert_true(gguf_str_eq(str, "llama"));
        assert_int_equal(gguf_get_str(f, "test.str", &str), 0);
        assert_int_equal(str.len, 5);
        assert_memory_equal(str.data, "hello", 5);
        assert_false(gguf_str_eq(str, "hell"));
        assert_false(gguf_str_eq(str, "hello!"));
        assert_int_equal(gguf_get_str(f, "test.emptystr", &str), 0);
        assert_int_equal(str.len, 0);
        assert_true(gguf_str_eq(str, ""));
        assert_int_equal(gguf_get_str(f, "test.u8", &str), -EBADMSG);
        assert_int_equal(gguf_get_str(f, "test.arr_str", &str), -EBADMSG);
        assert_int_equal(gguf_get_str(f, "no.such.key", &str), -ENOENT);

        const void *data;
        uint64_t n;
        int32_t i32[3];
        float f32[2];
        uint64_t u64s[2];
        assert_int_equal(gguf_get_array(f, "test.arr_i32", GGUF_TYPE_INT32, &data, &n), 0);
        assert_int_equal(n, 3);
        memcpy(i32, data, sizeof(i32));
        assert_int_equal(i32[0], 1);
        assert_int_equal(i32[1], -2);
        assert_int_equal(i32[2], 3);
        assert_int_equal(gguf_get_array(f, "test.arr_f32", GGUF_TYPE_FLOAT32, &data, &n), 0);
        assert_int_equal(n, 2);
        memcpy(f32, data, sizeof(f32));
        assert_true(f32[0] == 0.5f && f32[1] == 2.0f);
        assert_int_equal(gguf_get_array(f, "test.arr_u64", GGUF_TYPE_UINT64, &data, &n), 0);
        assert_int_equal(n, 2);
        memcpy(u64s, data, sizeof(u64s));
        assert_true(u64s[0] == UINT64_MAX && u64s[1] == 9);
        assert_int_equal(gguf_get_array(f, "test.arr_empty", GGUF_TYPE_UINT8, &data, &n), 0);
        assert_int_equal(n, 0);
        assert_int_equal(gguf_get_array(f, "test.arr_i32", GGUF_TYPE_UINT32, &data, &n), -EBADMSG);
        assert_int_equal(gguf_get_array(f, "test.arr_str", GGUF_TYPE_STRING, &data, &n), -EBADMSG);
        assert_int_equal(gguf_get_array(f, "test.u32", GGUF_TYPE_UINT32, &data, &n), -EBADMSG);
        assert_int_equal(gguf_get_array(f, "no.such.key", GGUF_TYPE_INT32, &data, &n), -ENOENT);

        GGUFString *strs = NULL;
        assert_int_equal(gguf_get_str_array(f, "test.arr_str", &strs, &n), 0);
        assert_int_equal(n, 3);
        assert_true(gguf_str_eq(strs[0], "a"));
        assert_true(gguf_str_eq(strs[1], ""));
        assert_true(gguf_str_eq(strs[2], "ccc"));
        free(strs);
        strs = NULL;
        assert_int_equal(gguf_get_str_array(f, "test.arr_i32", &strs, &n), -EBADMSG);
        assert_int_equal(gguf_get_str_array(f, "test.str", &strs, &n), -EBADMSG);
        assert_int_equal(gguf_get_str_array(f, "no.such.key", &strs, &n), -ENOENT);
        assert_null(strs);

        /* find_kv sees every key, with its type */
        const GGUFKV *kv = gguf_find_kv(f, "test.arr_str");
        assert_non_null(kv);
        assert_int_equal(kv->type, GGUF_TYPE_ARRAY);
        assert_int_equal(kv->arr_type, GGUF_TYPE_STRING);
        assert_int_equal(kv->arr_len, 3);
        assert_null(gguf_find_kv(f, "test"));
        assert_null(gguf_find_kv(f, "test.u8x"));

        /* tensors */
        static const struct {
                const char *name;
                uint32_t n_dims, type;
                uint64_t ne[4], n_el, n_bytes;
        } want[N_VALID_T] = {
                [T_TOK] = { "tok.weight", 2, GGML_TYPE_F32, { 8, 2, 1, 1 }, 16, 64 },
                [T_Q] = { "blk.0.q", 2, GGML_TYPE_Q4_0, { 64, 2, 1, 1 }, 128, 72 },
                [T_NORM] = { "norm", 1, GGML_TYPE_F16, { 16, 1, 1, 1 }, 16, 32 },
                [T_E] = { "blk.0.e", 4, GGML_TYPE_Q8_0, { 32, 1, 2, 1 }, 64, 68 },
        };
        for (size_t i = 0; i < N_VALID_T; i++) {
                const GGUFTensor *t = gguf_find_tensor(f, want[i].name);
                assert_non_null(t);
                assert_ptr_equal(t, &f->tensors[i]);
                assert_true(gguf_str_eq(t->name, want[i].name));
                assert_int_equal(t->n_dims, want[i].n_dims);
                assert_int_equal(t->type, want[i].type);
                for (int d = 0; d < GGUF_MAX_DIMS; d++)
                        assert_int_equal(t->ne[d], want[i].ne[d]);
                assert_int_equal(t->n_elements, want[i].n_el);
                assert_int_equal(t->n_bytes, want[i].n_bytes);
                assert_int_equal(t->n_bytes, m->n_bytes[i]);
                assert_int_equal(t->offset, m->offset[i]);
                assert_ptr_equal(t->data, f->base + f->data_offset + t->offset);
                const uint8_t *p = t->data;
                for (uint64_t j = 0; j < t->n_bytes; j++)
                        assert_int_equal(p[j], pattern_byte(i, j));
        }
        assert_int_equal(f->tensors[T_E].offset + f->tensors[T_E].n_bytes + f->data_offset, f->size);
        assert_null(gguf_find_tensor(f, "tok"));
        assert_null(gguf_find_tensor(f, "tok.weight2"));
}

static void test_valid_file(void **state) {
        FileSpec s;
        Buf b;
        Marks m;
        GGUFError err = { "" };
        GGUFFile *f = NULL;
        uint8_t *copy;

        spec_valid(&s);
        build(&s, &b, &m);
        int r = open_copy(&b, b.n, &err, &f, &copy);
        if (r < 0)
                fail_msg("valid file rejected: %d %s", r, err.msg);
        check_valid_contents(f, &m);
        assert_null(gguf_close(f));
        free(copy);
        buf_free(&b);

        /* The same as GGUF v2; with trailing bytes after the data; without general.alignment
         * (default 32); with alignment 64; with no tensors at all. */
        for (int variant = 0; variant < 5; variant++) {
                spec_valid(&s);
                if (variant == 0)
                        s.version = 2;
                if (variant == 1)
                        s.data_extra = 100;
                if (variant == 2)
                        s.kv[KV_ALIGN] = S("test.not_alignment", GGUF_TYPE_UINT32, .val = 7);
                if (variant == 3) {
                        s.kv[KV_ALIGN].val = 64;
                        s.layout_alignment = 64;
                }
                if (variant == 4)
                        s.n_tensors = 0;
                build(&s, &b, &m);
                f = NULL;
                r = open_copy(&b, b.n, &err, &f, &copy);
                if (r < 0)
                        fail_msg("variant %d rejected: %d %s", variant, r, err.msg);
                assert_int_equal(f->version, s.version);
                assert_int_equal(f->alignment, s.layout_alignment);
                assert_int_equal(f->n_tensors, s.n_tensors);
                for (size_t i = 0; i < s.n_tensors; i++) {
                        assert_int_equal(f->tensors[i].offset % s.layout_alignment, 0);
                        assert_int_equal(f->tensors[i].offset, m.offset[i]);
                }
                gguf_close(f);
                free(copy);
                buf_free(&b);
        }
        assert_null(gguf_close(NULL));
}

/* ---------------------------------------------------------------------------------------
 * Malformed files: each must be rejected with the expected code and a message naming the
 * problem. */

typedef struct BadCase {
        const char *name;
        void (*mutate)(FileSpec *s);
        void (*post)(Buf *b, const Marks *m); /* patch the built bytes, or NULL */
        int want;                             /* the return code */
        const char *want_msg;                 /* a substring of the message */
} BadCase;

#define MUT(fn, body) static void fn(FileSpec *s) { body; }
#define POST(fn, body) static void fn(Buf *b, const Marks *m) { body; }

MUT(m_none, (void)s)
MUT(m_magic, memcpy(s->magic, "GGUX", 4))
MUT(m_magic_swapped, memcpy(s->magic, "FUGG", 4))
MUT(m_magic_zero, memset(s->magic, 0, 4))
MUT(m_version0, s->version = 0)
MUT(m_version1, s->version = 1)
MUT(m_version4, s->version = 4)
MUT(m_version_big, s->version = 0x03000000) /* v3 written big-endian */
MUT(m_ntensors_huge, s->counts_set = 1; s->n_kv_field = s->n_kv; s->n_tensors_field = 1ull << 63)
MUT(m_ntensors_max, s->counts_set = 1; s->n_kv_field = s->n_kv; s->n_tensors_field = UINT64_MAX)
MUT(m_ntensors_limit, s->counts_set = 1; s->n_kv_field = s->n_kv; s->n_tensors_field = GGUF_MAX_TENSORS + 1ull)
MUT(m_ntensors_unfit, s->counts_set = 1; s->n_kv_field = s->n_kv; s->n_tensors_field = 1000)
MUT(m_ntensors_plus1, s->counts_set = 1; s->n_kv_field = s->n_kv; s->n_tensors_field = s->n_tensors + 1)
MUT(m_nkv_huge, s->counts_set = 1; s->n_tensors_field = s->n_tensors; s->n_kv_field = 1ull << 62)
MUT(m_nkv_limit, s->counts_set = 1; s->n_tensors_field = s->n_tensors; s->n_kv_field = GGUF_MAX_KV + 1ull)
MUT(m_nkv_unfit, s->counts_set = 1; s->n_tensors_field = s->n_tensors; s->n_kv_field = 60000)
MUT(m_nkv_plus1, s->counts_set = 1; s->n_tensors_field = s->n_tensors; s->n_kv_field = s->n_kv + 1)
MUT(m_key_len_huge, s->kv[KV_U8].key_len_set = 1; s->kv[KV_U8].key_len = 1ull << 63)
MUT(m_key_len_limit, s->kv[KV_U8].key_len_set = 1; s->kv[KV_U8].key_len = GGUF_MAX_STRING + 1ull)
MUT(m_str_len_huge, s->kv[KV_STR].val_len_set = 1; s->kv[KV_STR].val_len = 1ull << 63)
MUT(m_str_len_max, s->kv[KV_STR].val_len_set = 1; s->kv[KV_STR].val_len = UINT64_MAX)
MUT(m_arr_str_len_huge, s->kv[KV_ARR_STR].val_len_set = 1; s->kv[KV_ARR_STR].val_len = 1ull << 63)
MUT(m_tname_len_huge, s->t[T_Q].name_len_set = 1; s->t[T_Q].name_len = 1ull << 63)
MUT(m_arr_huge, s->kv[KV_ARR_I32].count_set = 1; s->kv[KV_ARR_I32].count = 1ull << 62)
MUT(m_arr_str_huge, s->kv[KV_ARR_STR].count_set = 1; s->kv[KV_ARR_STR].count = 1ull << 62)
MUT(m_arr_limit, s->kv[KV_ARR_I32].count_set = 1; s->kv[KV_ARR_I32].count = GGUF_MAX_ARRAY + 1ull)
MUT(m_arr_unfit, s->kv[KV_ARR_U64].count_set = 1; s->kv[KV_ARR_U64].count = 1000)
MUT(m_arr_str_unfit, s->kv[KV_ARR_STR].count_set = 1; s->kv[KV_ARR_STR].count = 1000)
MUT(m_arr_of_arr, s->kv[KV_ARR_I32].arr_type = GGUF_TYPE_ARRAY)
MUT(m_arr_type13, s->kv[KV_ARR_I32].arr_type = GGUF_TYPE_COUNT_)
MUT(m_arr_type_max, s->kv[KV_ARR_I32].arr_type = UINT32_MAX)
MUT(m_type13, s->kv[KV_U16].type = GGUF_TYPE_COUNT_)
MUT(m_type_high, s->kv[KV_U16].type = 0x80000000u)
MUT(m_ndims0, s->t[T_Q].n_dims = 0)
MUT(m_ndims5, s->t[T_Q].n_dims = 5; s->t[T_Q].ne[2] = s->t[T_Q].ne[3] = s->t[T_Q].ne[4] = 1)
MUT(m_ndims_max, s->t[T_Q].n_dims = UINT32_MAX)
MUT(m_dim0, s->t[T_Q].ne[1] = 0)
MUT(m_dim0_first, s->t[T_TOK].ne[0] = 0)
MUT(m_dim_neg, s->t[T_Q].ne[1] = 1ull << 63)
MUT(m_dims_overflow, s->t[T_TOK].ne[0] = 1ull << 32; s->t[T_TOK].ne[1] = 1ull << 32)
MUT(m_dims_overflow4, s->t[T_E].ne[0] = 1ull << 20; s->t[T_E].ne[1] = 1ull << 20; s->t[T_E].ne[2] = 1ull << 20;
    s->t[T_E].ne[3] = 1ull << 20)
MUT(m_dims_over_int64, s->t[T_TOK].ne[0] = 1ull << 32; s->t[T_TOK].ne[1] = 1ull << 31)
MUT(m_bytes_overflow_f32, s->t[T_TOK].n_dims = 1; s->t[T_TOK].ne[0] = 1ull << 62)
/* Elements are capped at 2^63-1, so only 4-byte F32 can overflow 2^64 bytes. */
MUT(m_bytes_overflow_2d, s->t[T_TOK].ne[0] = 1ull << 31; s->t[T_TOK].ne[1] = 1ull << 31)
MUT(m_bytes_huge, s->t[T_TOK].n_dims = 1; s->t[T_TOK].ne[0] = 1ull << 60)
MUT(m_type99, s->t[T_Q].type = 99)
MUT(m_type4, s->t[T_Q].type = 4)
MUT(m_type5, s->t[T_Q].type = 5)
MUT(m_type_q8k, s->t[T_Q].type = GGML_TYPE_Q8_K)
MUT(m_type_max, s->t[T_Q].type = UINT32_MAX)
MUT(m_offset_unaligned, s->t[T_Q].offset_set = 1; s->t[T_Q].offset = 65)
MUT(m_offset_half_aligned, s->t[T_NORM].offset_set = 1; s->t[T_NORM].offset = 144)
MUT(m_offset_past_end, s->t[T_NORM].offset_set = 1; s->t[T_NORM].offset = 1u << 21)
MUT(m_offset_max, s->t[T_NORM].offset_set = 1; s->t[T_NORM].offset = UINT64_MAX & ~31ull)
MUT(m_overlap, s->t[T_Q].offset_set = 1; s->t[T_Q].offset = 32)
MUT(m_same_offset, s->t[T_NORM].offset_set = 1; s->t[T_NORM].offset = 0)
MUT(m_data_short, s->data_extra = -1)
MUT(m_tensor_too_big, s->t[T_E].ne[2] = 3; s->data_extra = -(int64_t)sizeof(BlockQ8_0))
MUT(m_dup_key, s->kv[KV_I8].key = "test.u8")
MUT(m_dup_key_far, s->kv[KV_ARR_U64].key = "general.architecture")
MUT(m_dup_key_ctrl, s->kv[KV_I8].key = "x\033[31m\n"; s->kv[KV_U16].key = "x\033[31m\n")
MUT(m_dup_tensor, s->t[T_NORM].name = "tok.weight")
MUT(m_align0, s->kv[KV_ALIGN].val = 0)
MUT(m_align48, s->kv[KV_ALIGN].val = 48)
MUT(m_align_big, s->kv[KV_ALIGN].val = GGUF_MAX_ALIGNMENT * 2u)
MUT(m_align_max, s->kv[KV_ALIGN].val = 0x80000000u)
MUT(m_align_str, s->kv[KV_ALIGN] = S("general.alignment", GGUF_TYPE_STRING, .str = "32"))
MUT(m_align_i32, s->kv[KV_ALIGN] = S("general.alignment", GGUF_TYPE_INT32, .val = 32))
MUT(m_align_u64, s->kv[KV_ALIGN] = S("general.alignment", GGUF_TYPE_UINT64, .val = 32))
MUT(m_align_f32, s->kv[KV_ALIGN] = S("general.alignment", GGUF_TYPE_FLOAT32, .val = f32_bits(32.0f)))
MUT(m_align_arr, s->kv[KV_ALIGN] = S("general.alignment", GGUF_TYPE_ARRAY, .arr_type = GGUF_TYPE_UINT32, .n_elems = 1,
                                     .elems = { 32 }))
MUT(m_row_q4_0, s->t[T_Q].ne[0] = 48)
MUT(m_row_q8_0, s->t[T_E].ne[0] = 33)
MUT(m_row_q4_k, s->t[T_Q].type = GGML_TYPE_Q4_K)
MUT(m_misaligned_f32, s->kv[KV_ALIGN].val = 2; s->layout_alignment = 2; s->misalign_first = 1)

/* Length fields that point one byte past the end of the file. */
POST(p_str_past_end, patch_le(b, m->kv_value[KV_STR], b->n - (m->kv_value[KV_STR] + 8) + 1, 8))
POST(p_key_past_end, patch_le(b, m->kv_key[KV_F32], b->n - (m->kv_key[KV_F32] + 8) + 1, 8))
POST(p_arr_str_past_end, patch_le(b, m->kv_value[KV_ARR_STR] + 12, b->n - (m->kv_value[KV_ARR_STR] + 20) + 1, 8))
POST(p_tname_past_end, patch_le(b, m->t_name[T_NORM], b->n - (m->t_name[T_NORM] + 8) + 1, 8))
POST(p_arr_past_end, patch_le(b, m->kv_value[KV_ARR_I32] + 4, (b->n - (m->kv_value[KV_ARR_I32] + 12)) / 4 + 1, 8))

#define ANY 1 /* want: any negative code */

static const BadCase bad_cases[] = {
        { "bad magic", m_magic, NULL, -EBADMSG, "bad magic" },
        { "magic byte-swapped", m_magic_swapped, NULL, -EBADMSG, "bad magic" },
        { "magic zero", m_magic_zero, NULL, -EBADMSG, "bad magic" },
        { "version 0", m_version0, NULL, -ENOTSUP, "version 0" },
        { "version 1", m_version1, NULL, -ENOTSUP, "version 1" },
        { "version 4", m_version4, NULL, -ENOTSUP, "version 4" },
        { "version big-endian 3", m_version_big, NULL, -ENOTSUP, "version" },
        { "tensor count 2^63", m_ntensors_huge, NULL, -E2BIG, "tensor count" },
        { "tensor count 2^64-1", m_ntensors_max, NULL, -E2BIG, "tensor count" },
        { "tensor count limit+1", m_ntensors_limit, NULL, -E2BIG, "tensor count" },
        { "tensor count cannot fit", m_ntensors_unfit, NULL, -EBADMSG, "truncated" },
        { "tensor count one too many", m_ntensors_plus1, NULL, ANY, NULL },
        { "kv count 2^62", m_nkv_huge, NULL, -E2BIG, "metadata count" },
        { "kv count limit+1", m_nkv_limit, NULL, -E2BIG, "metadata count" },
        { "kv count cannot fit", m_nkv_unfit, NULL, -EBADMSG, "truncated" },
        { "kv count one too many", m_nkv_plus1, NULL, ANY, NULL },
        { "key length 2^63", m_key_len_huge, NULL, -E2BIG, "string length" },
        { "key length limit+1", m_key_len_limit, NULL, -E2BIG, "string length" },
        { "key length past the end", m_none, p_key_past_end, -EBADMSG, "truncated" },
        { "string length 2^63", m_str_len_huge, NULL, -E2BIG, "string length" },
        { "string length 2^64-1", m_str_len_max, NULL, -E2BIG, "string length" },
        { "string length past the end", m_none, p_str_past_end, -EBADMSG, "truncated" },
        { "string element length 2^63", m_arr_str_len_huge, NULL, -E2BIG, "string length" },
        { "string element length past the end", m_none, p_arr_str_past_end, -EBADMSG, "truncated" },
        { "tensor name length 2^63", m_tname_len_huge, NULL, -E2BIG, "string length" },
        { "tensor name length past the end", m_none, p_tname_past_end, -EBADMSG, "truncated" },
        { "array of 2^62 elements", m_arr_huge, NULL, -E2BIG, "array of" },
        { "string array of 2^62 elements", m_arr_str_huge, NULL, -E2BIG, "array of" },
        { "array limit+1", m_arr_limit, NULL, -E2BIG, "array of" },
        { "array count past the end", m_none, p_arr_past_end, -EBADMSG, "truncated" },
        { "u64 array count too big for the file", m_arr_unfit, NULL, -EBADMSG, "truncated" },
        { "string array count too big for the file", m_arr_str_unfit, NULL, ANY, NULL },
        { "array of arrays", m_arr_of_arr, NULL, -EBADMSG, "array element type 9" },
        { "array element type 13", m_arr_type13, NULL, -EBADMSG, "array element type 13" },
        { "array element type 2^32-1", m_arr_type_max, NULL, -EBADMSG, "array element type" },
        { "value type 13", m_type13, NULL, -EBADMSG, "unknown value type 13" },
        { "value type 2^31", m_type_high, NULL, -EBADMSG, "unknown value type" },
        { "n_dims 0", m_ndims0, NULL, -EBADMSG, "0 dimensions" },
        { "n_dims 5", m_ndims5, NULL, -EBADMSG, "5 dimensions" },
        { "n_dims 2^32-1", m_ndims_max, NULL, -EBADMSG, "dimensions" },
        { "dim of 0", m_dim0, NULL, -EBADMSG, "dimension 1 is 0" },
        { "first dim of 0", m_dim0_first, NULL, -EBADMSG, "dimension 0 is 0" },
        { "dim 2^63", m_dim_neg, NULL, -EBADMSG, "dimension 1" },
        { "dims product overflows uint64", m_dims_overflow, NULL, -EOVERFLOW, "element count overflows" },
        { "4 dims product overflows uint64", m_dims_overflow4, NULL, -EOVERFLOW, "element count overflows" },
        { "dims product over int64", m_dims_over_int64, NULL, -EOVERFLOW, "element count overflows" },
        { "byte size overflows (F32)", m_bytes_overflow_f32, NULL, -EOVERFLOW, "byte size overflows" },
        { "byte size overflows (F32, 2 dims)", m_bytes_overflow_2d, NULL, -EOVERFLOW, "byte size overflows" },
        { "byte size 2^62", m_bytes_huge, NULL, -EBADMSG, "past the end" },
        { "tensor type 99", m_type99, NULL, -ENOTSUP, "unsupported tensor type 99" },
        { "tensor type 4 (removed Q4_2)", m_type4, NULL, -ENOTSUP, "unsupported tensor type 4" },
        { "tensor type 5 (removed Q4_3)", m_type5, NULL, -ENOTSUP, "unsupported tensor type 5" },
        { "tensor type Q8_K", m_type_q8k, NULL, -ENOTSUP, "unsupported tensor type 15" },
        { "tensor type 2^32-1", m_type_max, NULL, -ENOTSUP, "unsupported tensor type" },
        { "offset not aligned (65)", m_offset_unaligned, NULL, -EBADMSG, "not a multiple of the alignment" },
        { "offset aligned to 16, not 32", m_offset_half_aligned, NULL, -EBADMSG, "not a multiple of the alignment" },
        { "offset past the end", m_offset_past_end, NULL, -EBADMSG, "past the end" },
        { "offset near 2^64", m_offset_max, NULL, -EBADMSG, "past the end" },
        { "tensors overlap", m_overlap, NULL, -EBADMSG, "overlaps" },
        { "tensors at the same offset", m_same_offset, NULL, -EBADMSG, "overlaps" },
        { "data one byte short", m_data_short, NULL, -EBADMSG, "past the end" },
        { "tensor larger than its data", m_tensor_too_big, NULL, -EBADMSG, "past the end" },
        { "duplicate kv key", m_dup_key, NULL, -EBADMSG, "duplicate metadata key 'test.u8'" },
        { "duplicate kv key, far apart", m_dup_key_far, NULL, -EBADMSG, "duplicate metadata key 'general.architecture'" },
        { "duplicate kv key with control bytes", m_dup_key_ctrl, NULL, -EBADMSG, "duplicate metadata key 'x?[31m?'" },
        { "duplicate tensor name", m_dup_tensor, NULL, -EBADMSG, "duplicate tensor name 'tok.weight'" },
        { "alignment 0", m_align0, NULL, -EBADMSG, "general.alignment 0 is not a power of two" },
        { "alignment 48", m_align48, NULL, -EBADMSG, "general.alignment 48 is not a power of two" },
        { "alignment over the limit", m_align_big, NULL, -E2BIG, "general.alignment" },
        { "alignment 2^31", m_align_max, NULL, -E2BIG, "general.alignment" },
        { "alignment as string", m_align_str, NULL, -EBADMSG, "general.alignment has value type" },
        { "alignment as int32", m_align_i32, NULL, -EBADMSG, "general.alignment has value type" },
        { "alignment as uint64", m_align_u64, NULL, -EBADMSG, "general.alignment has value type" },
        { "alignment as float32", m_align_f32, NULL, -EBADMSG, "general.alignment has value type" },
        { "alignment as array", m_align_arr, NULL, -EBADMSG, "general.alignment has value type" },
        { "Q4_0 row of 48", m_row_q4_0, NULL, -EBADMSG, "not a multiple of the Q4_0 block size 32" },
        { "Q8_0 row of 33", m_row_q8_0, NULL, -EBADMSG, "not a multiple of the Q8_0 block size 32" },
        { "Q4_K row of 64", m_row_q4_k, NULL, -EBADMSG, "not a multiple of the Q4_K block size 256" },
        { "F32 data misaligned in memory", m_misaligned_f32, NULL, -EBADMSG, "not 4-byte aligned in memory" },
};

static void test_malformed(void **state) {
        int n_failed = 0;
        for (size_t i = 0; i < sizeof(bad_cases) / sizeof(bad_cases[0]); i++) {
                const BadCase *c = &bad_cases[i];
                FileSpec s;
                Buf b;
                Marks m;
                GGUFError err;
                GGUFFile *f = NULL;
                uint8_t *copy;

                spec_valid(&s);
                c->mutate(&s);
                build(&s, &b, &m);
                if (c->post)
                        c->post(&b, &m);
                memset(err.msg, 0, sizeof(err.msg));
                int r = open_copy(&b, b.n, &err, &f, &copy);
                int ok = r < 0 && (c->want == ANY || r == c->want) && err.msg[0] != 0 && f == NULL &&
                         (!c->want_msg || strstr(err.msg, c->want_msg));
                for (const char *p = err.msg; *p; p++)
                        if ((unsigned char)*p < 0x20 || (unsigned char)*p >= 0x7f)
                                ok = 0; /* messages are printable ASCII */
                if (ok) {
                        print_message("ok   %-42s %4d  %s\n", c->name, r, err.msg);
                } else {
                        print_error("FAIL %-42s got %d \"%s\", want %d \"%s\"\n", c->name, r, err.msg, c->want,
                                    c->want_msg ? c->want_msg : "(any)");
                        n_failed++;
                }
                gguf_close(f);
                free(copy);
                buf_free(&b);
        }
        assert_int_equal(n_failed, 0);
}

/* The misalignment check is about memory, not the file: the same bytes are accepted when
 * they land aligned (the F32 tensor at an address == 0 mod 4). */
static void test_alignment_in_memory(void **state) {
        FileSpec s;
        Buf b;
        Marks m;
        GGUFError err = { "" };
        GGUFFile *f = NULL;

        spec_valid(&s);
        m_misaligned_f32(&s);
        build(&s, &b, &m);
        /* Shift the whole file by 2 bytes in an aligned block: the tensor becomes aligned. */
        uint8_t *block = aligned_alloc(16, (b.n + 2 + 15) / 16 * 16);
        assert_non_null(block);
        memcpy(block + 2, b.p, b.n);
        int r = gguf_open_buffer(block + 2, b.n, &err, &f);
        if (r < 0)
                fail_msg("shifted file rejected: %d %s", r, err.msg);
        assert_int_equal(f->alignment, 2);
        assert_int_equal((uintptr_t)f->tensors[T_TOK].data % 4, 0);
        for (size_t i = 0; i < f->n_tensors; i++)
                assert_int_equal((uintptr_t)f->tensors[i].data % 2, 0);
        gguf_close(f);
        f = NULL;
        /* And at an odd address every tensor is misaligned. */
        memmove(block + 1, block + 2, b.n);
        r = gguf_open_buffer(block + 1, b.n, &err, &f);
        assert_true(r < 0);
        assert_non_null(strstr(err.msg, "aligned in memory"));
        free(block);
        buf_free(&b);
}

/* Every proper prefix of a valid file fails cleanly; the whole file opens. */
static void check_all_prefixes(const FileSpec *s) {
        Buf b;
        Marks m;
        build(s, &b, &m);
        for (size_t n = 0; n <= b.n; n++) {
                GGUFError err;
                GGUFFile *f = NULL;
                uint8_t *copy;
                memset(err.msg, 0, sizeof(err.msg));
                int r = open_copy(&b, n, &err, &f, &copy);
                if (n == b.n) {
                        if (r < 0)
                                fail_msg("full file (%zu bytes) rejected: %d %s", n, r, err.msg);
                } else {
                        if (r >= 0)
                                fail_msg("prefix of %zu of %zu bytes accepted", n, b.n);
                        if (r != -EBADMSG || !(strstr(err.msg, "truncated") || strstr(err.msg, "past the end")))
                                fail_msg("prefix of %zu of %zu bytes: %d \"%s\"", n, b.n, r, err.msg);
                        assert_null(f);
                }
                gguf_close(f);
                free(copy);
        }
        buf_free(&b);
}

static void test_truncated_everywhere(void **state) {
        FileSpec s;
        spec_valid(&s);
        check_all_prefixes(&s);
        /* No tensors: the file ends with the last metadata value. */
        spec_valid(&s);
        s.n_tensors = 0;
        check_all_prefixes(&s);
        /* Only the header. */
        s.n_kv = 0;
        check_all_prefixes(&s);
}

/* Every byte of the valid file set to a few values: nothing may crash, leak or over-read;
 * whatever opens must answer every getter. */
static void exercise(const GGUFFile *f) {
        for (uint64_t i = 0; i < f->n_kv; i++) {
                char key[128];
                const GGUFKV *kv = &f->kv[i];
                if (kv->key.len >= sizeof(key) || memchr(kv->key.data, 0, kv->key.len))
                        continue;
                memcpy(key, kv->key.data, kv->key.len);
                key[kv->key.len] = 0;
                uint32_t u32;
                uint64_t u64, n;
                float fl;
                int bl;
                GGUFString str, *strs = NULL;
                const void *data;
                (void)gguf_get_u32(f, key, &u32);
                (void)gguf_get_u64(f, key, &u64);
                (void)gguf_get_f32(f, key, &fl);
                (void)gguf_get_bool(f, key, &bl);
                if (gguf_get_str(f, key, &str) == 0 && str.len)
                        (void)*(volatile const char *)&str.data[str.len - 1];
                if (gguf_get_array(f, key, kv->arr_type, &data, &n) == 0 && n)
                        (void)*(volatile const uint8_t *)data;
                if (gguf_get_str_array(f, key, &strs, &n) == 0) {
                        for (uint64_t j = 0; j < n; j++)
                                if (strs[j].len)
                                        (void)*(volatile const char *)&strs[j].data[strs[j].len - 1];
                        free(strs);
                }
        }
        for (uint64_t i = 0; i < f->n_tensors; i++) {
                const GGUFTensor *t = &f->tensors[i];
                assert_true((const uint8_t *)t->data >= f->base + f->data_offset);
                assert_true(t->n_bytes <= f->size - ((const uint8_t *)t->data - f->base));
                (void)*(volatile const uint8_t *)t->data;
                (void)*(volatile const uint8_t *)((const uint8_t *)t->data + t->n_bytes - 1);
        }
}

static void test_byte_corruption(void **state) {
        static const uint8_t values[] = { 0x00, 0x01, 0x7f, 0x80, 0xff };
        FileSpec s;
        Buf b;
        Marks m;
        unsigned n_open = 0, n_rejected = 0;

        spec_valid(&s);
        build(&s, &b, &m);
        for (size_t pos = 0; pos < m.data_offset; pos++) {
                for (size_t v = 0; v < sizeof(values); v++) {
                        GGUFError err = { "" };
                        GGUFFile *f = NULL;
                        uint8_t *copy;
                        const uint8_t saved = b.p[pos];
                        b.p[pos] = values[v];
                        int r = open_copy(&b, b.n, &err, &f, &copy);
                        b.p[pos] = saved;
                        if (r < 0) {
                                assert_true(err.msg[0] != 0);
                                assert_null(f);
                                n_rejected++;
                        } else {
                                exercise(f);
                                n_open++;
                        }
                        gguf_close(f);
                        free(copy);
                }
        }
        print_message("byte corruption: %u opened, %u rejected\n", n_open, n_rejected);
        buf_free(&b);
}

/* ---------------------------------------------------------------------------------------
 * gguf_open on paths. */

static char tmpdir[256];

static int setup_tmpdir(void **state) {
        const char *t = getenv("TMPDIR");
        snprintf(tmpdir, sizeof(tmpdir), "%s/test_gguf.XXXXXX", t && *t ? t : "/tmp");
        return mkdtemp(tmpdir) ? 0 : -1;
}

static void write_file(const char *path, const void *p, size_t n) {
        FILE *fp = fopen(path, "wb");
        assert_non_null(fp);
        assert_int_equal(fwrite(p, 1, n, fp), n);
        assert_int_equal(fclose(fp), 0);
}

static void test_open_paths(void **state) {
        char path[512];
        GGUFError err;
        GGUFFile *f = NULL;
        int r;

        assert_int_equal(setup_tmpdir(state), 0);

        snprintf(path, sizeof(path), "%s/missing.gguf", tmpdir);
        memset(&err, 0, sizeof(err));
        r = gguf_open(path, &err, &f);
        assert_int_equal(r, -ENOENT);
        assert_true(err.msg[0] != 0);
        assert_null(f);
        assert_int_equal(gguf_open(path, NULL, &f), -ENOENT); /* err may be NULL */

        memset(&err, 0, sizeof(err));
        r = gguf_open(tmpdir, &err, &f);
        assert_int_equal(r, -EISDIR);
        assert_true(err.msg[0] != 0);
        assert_null(f);

        memset(&err, 0, sizeof(err));
        r = gguf_open("/dev/null", &err, &f);
        assert_true(r < 0);
        assert_true(err.msg[0] != 0);

        snprintf(path, sizeof(path), "%s/empty.gguf", tmpdir);
        write_file(path, "", 0);
        memset(&err, 0, sizeof(err));
        r = gguf_open(path, &err, &f);
        assert_int_equal(r, -EBADMSG);
        assert_non_null(strstr(err.msg, "truncated"));
        assert_null(f);
        unlink(path);

        /* A valid file on disk: mapped, and its tensor bytes are where they should be. */
        FileSpec s;
        Buf b;
        Marks m;
        spec_valid(&s);
        build(&s, &b, &m);
        snprintf(path, sizeof(path), "%s/valid.gguf", tmpdir);
        write_file(path, b.p, b.n);
        memset(&err, 0, sizeof(err));
        r = gguf_open(path, &err, &f);
        if (r < 0)
                fail_msg("valid file on disk rejected: %d %s", r, err.msg);
        assert_int_equal(f->mapped, 1);
        assert_int_equal(f->size, b.n);
        check_valid_contents(f, &m);
        f = gguf_close(f);
        unlink(path);

        /* A header-only prefix on disk, and a corrupt one: rejected, nothing leaked. */
        snprintf(path, sizeof(path), "%s/short.gguf", tmpdir);
        write_file(path, b.p, 30);
        r = gguf_open(path, &err, &f);
        assert_int_equal(r, -EBADMSG);
        assert_null(f);
        b.p[0] = 'X';
        write_file(path, b.p, b.n);
        r = gguf_open(path, &err, &f);
        assert_int_equal(r, -EBADMSG);
        assert_non_null(strstr(err.msg, "magic"));
        assert_null(f);
        unlink(path);
        buf_free(&b);

        assert_int_equal(rmdir(tmpdir), 0);
}

/* ---------------------------------------------------------------------------------------
 * The real fixture files. */

static void check_fixture_common(const GGUFFile *f) {
        assert_int_equal(f->version, 3);
        assert_int_equal(f->alignment, 32);
        assert_int_equal(f->data_offset % 32, 0);
        for (uint64_t i = 0; i < f->n_tensors; i++) {
                const GGUFTensor *t = &f->tensors[i];
                char name[256];
                assert_true(t->name.len < sizeof(name));
                memcpy(name, t->name.data, t->name.len);
                name[t->name.len] = 0;
                assert_ptr_equal(gguf_find_tensor(f, name), t);
                assert_non_null(quant_traits(t->type));
                assert_int_equal(t->offset % 32, 0);
                assert_ptr_equal(t->data, f->base + f->data_offset + t->offset);
                assert_true(f->data_offset + t->offset + t->n_bytes <= f->size);
        }
        exercise(f);
}

/* A file over 2 MiB is mapped at a 2 MiB boundary (so the kernel may use 2 MiB pages), and
 * re-reading it for 2 MiB pages (engine/hugepage.h) changes nothing it holds. */
static void test_open_huge_aligned(void **state) {
        char path[512];
        GGUFError err;
        GGUFFile *f = NULL;
        FileSpec s;
        Buf b;
        Marks m;
        const size_t pad = (size_t)5 << 20; /* bytes after the last tensor: the file is ~5 MiB */

        assert_int_equal(setup_tmpdir(state), 0);
        spec_valid(&s);
        build(&s, &b, &m);
        snprintf(path, sizeof(path), "%s/large.gguf", tmpdir);
        uint8_t *big = malloc(b.n + pad);
        assert_non_null(big);
        memcpy(big, b.p, b.n);
        for (size_t i = 0; i < pad; i++)
                big[b.n + i] = (uint8_t)(i * 131u + 7u);
        write_file(path, big, b.n + pad);
        int r = gguf_open(path, &err, &f);
        if (r < 0)
                fail_msg("padded file rejected: %d %s", r, err.msg);
        assert_int_equal(f->size, b.n + pad);
        assert_int_equal((uintptr_t)f->base & (((uintptr_t)2 << 20) - 1), 0);

        uint64_t huge = UINT64_MAX;
        r = hugepage_mapped_bytes(f->base, f->size, &huge);
        if (r == -ENOENT) {
                fprintf(stderr, "SKIP part of test_open_huge_aligned: no /proc/self/smaps\n");
        } else {
                assert_int_equal(r, 0);
                assert_true(huge <= f->size + 4096);
                assert_int_equal(hugepage_refault(path, f->base, f->size), 0);
                assert_memory_equal(f->base, big, b.n + pad);
                HugepageReport rep;
                assert_int_equal(hugepage_settle(path, f->base, f->size, &rep), 0);
                assert_int_equal(rep.file_bytes, f->size);
                assert_true(rep.huge_after <= f->size + 4096);
                /* either it was already mostly 2 MiB-mapped, or it was re-read (or too large) */
                assert_true(rep.refaulted || rep.too_large || rep.huge_before >= f->size / 100 * 90);
                assert_memory_equal(f->base, big, b.n + pad);
                assert_int_equal(hugepage_refault("/nonexistent/model.gguf", f->base, f->size), -ENOENT);
                assert_memory_equal(f->base, big, b.n + pad);
        }
        /* memory that is not a file mapping: measured, nothing found, no error */
        r = hugepage_mapped_bytes(big, 4096, &huge);
        assert_true(r == 0 || r == -ENOENT);
        f = gguf_close(f);
        unlink(path);
        free(big);
        buf_free(&b);
        rmdir(tmpdir);
}

static void test_fixture_models(void **state) {
        static const char *const files[] = {
                "tiny-moe-shakespeare/tiny-moe-f16.gguf",
                "tiny-moe-shakespeare/tiny-moe-q8_0.gguf",
                "tiny-moe-shakespeare/tiny-moe-q4_k_m.gguf",
        };
        int n_opened = 0;
        for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
                char path[4096];
                GGUFError err = { "" };
                GGUFFile *f = NULL;
                if (!fixture_found(files[i], path, sizeof(path)))
                        continue;
                int r = gguf_open(path, &err, &f);
                if (r < 0)
                        fail_msg("gguf_open(%s) = %d: %s", path, r, err.msg);
                check_fixture_common(f);
                assert_int_equal(f->n_tensors, 43);

                GGUFString str;
                uint32_t u32;
                float fl;
                int bl;
                uint64_t n;
                const void *data;
                GGUFString *tokens = NULL;
                assert_int_equal(gguf_get_str(f, "general.architecture", &str), 0);
                assert_true(gguf_str_eq(str, "llama"));
                assert_int_equal(gguf_get_u32(f, "llama.block_count", &u32), 0);
                assert_int_equal(u32, 4);
                assert_int_equal(gguf_get_u32(f, "llama.embedding_length", &u32), 0);
                assert_int_equal(u32, 256);
                assert_int_equal(gguf_get_u32(f, "llama.expert_count", &u32), 0);
                assert_int_equal(u32, 8);
                assert_int_equal(gguf_get_u32(f, "llama.expert_used_count", &u32), 0);
                assert_int_equal(u32, 2);
                assert_int_equal(gguf_get_u32(f, "llama.attention.sliding_window", &u32), 0);
                assert_int_equal(u32, 64);
                assert_int_equal(gguf_get_f32(f, "llama.rope.freq_base", &fl), 0);
                assert_true(fl == 1e6f);
                assert_int_equal(gguf_get_bool(f, "tokenizer.ggml.add_bos_token", &bl), 0);
                assert_int_equal(gguf_get_str_array(f, "tokenizer.ggml.tokens", &tokens, &n), 0);
                assert_int_equal(n, 32000);
                assert_true(gguf_str_eq(tokens[1], "<s>"));
                assert_true(gguf_str_eq(tokens[2], "</s>"));
                free(tokens);
                assert_int_equal(gguf_get_array(f, "tokenizer.ggml.scores", GGUF_TYPE_FLOAT32, &data, &n), 0);
                assert_int_equal(n, 32000);
                assert_int_equal(gguf_get_array(f, "tokenizer.ggml.token_type", GGUF_TYPE_INT32, &data, &n), 0);
                assert_int_equal(n, 32000);
                const GGUFTensor *t = gguf_find_tensor(f, "blk.0.ffn_gate_exps.weight");
                assert_non_null(t);
                assert_int_equal(t->n_dims, 3);
                assert_int_equal(t->ne[0], 256);
                assert_int_equal(t->ne[1], 512);
                assert_int_equal(t->ne[2], 8);
                gguf_close(f);
                n_opened++;
        }
        if (n_opened == 0)
                skip();
}

static void test_fixture_zoo(void **state) {
        char path[4096];
        GGUFError err = { "" };
        GGUFFile *f = NULL;
        GGUFString str;
        if (!fixture_path("quant-zoo.gguf", path, sizeof(path))) {
                skip();
                return;
        }
        int r = gguf_open(path, &err, &f);
        if (r < 0)
                fail_msg("gguf_open(%s) = %d: %s", path, r, err.msg);
        check_fixture_common(f);
        assert_int_equal(f->n_tensors, 24);
        assert_int_equal(gguf_get_str(f, "general.architecture", &str), 0);
        assert_true(gguf_str_eq(str, "zoo"));
        const GGUFTensor *t = gguf_find_tensor(f, "zoo.Q4_K");
        assert_non_null(t);
        assert_int_equal(t->type, GGML_TYPE_Q4_K);
        assert_int_equal(t->ne[0], 256);
        assert_int_equal(t->ne[1], 256);
        assert_int_equal(t->n_bytes, 256 * sizeof(BlockQ4_K));
        gguf_close(f);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_valid_file),
                cmocka_unit_test(test_malformed),
                cmocka_unit_test(test_alignment_in_memory),
                cmocka_unit_test(test_truncated_everywhere),
                cmocka_unit_test(test_byte_corruption),
                cmocka_unit_test(test_open_paths),
                cmocka_unit_test(test_open_huge_aligned),
                cmocka_unit_test(test_fixture_models),
                cmocka_unit_test(test_fixture_zoo),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
