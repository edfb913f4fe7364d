/* tests/fuzz/fuzz_gguf.c — libFuzzer target for the GGUF reader: gguf_open_buffer on the
 * input, then every getter over every key found, and the first row of every tensor through
 * its dequantizer and dot kernel. Single-threaded (one libFuzzer process). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "gguf.h"
#include "quant.h"

/* A crash libFuzzer will report, for a broken contract rather than a memory error. */
#define CHECK(x)                                  \
        do {                                      \
                if (!(x))                         \
                        __builtin_trap();         \
        } while (0)

/* Largest row the harness dequantizes (weights), to bound its own allocations. */
#define FUZZ_MAX_ROW 65536

static void exercise_kv(const GGUFFile *f, const GGUFKV *kv) {
        char key[256];
        uint32_t u32;
        uint64_t u64, n;
        float fl;
        int b, r;
        GGUFString s, *strs = NULL;
        const void *data;
        volatile uint8_t sink = 0;

        /* Keys with a NUL inside cannot be looked up by C string; skip them. */
        if (kv->key.len >= sizeof(key) || memchr(kv->key.data, 0, kv->key.len))
                return;
        memcpy(key, kv->key.data, kv->key.len);
        key[kv->key.len] = 0;
        CHECK(gguf_find_kv(f, key) == kv); /* keys are unique */

        (void)gguf_get_u32(f, key, &u32);
        (void)gguf_get_u64(f, key, &u64);
        (void)gguf_get_f32(f, key, &fl);
        (void)gguf_get_bool(f, key, &b);
        if (gguf_get_str(f, key, &s) == 0) {
                CHECK(s.data >= (const char *)f->base && s.len <= f->size);
                for (uint64_t i = 0; i < s.len; i++)
                        sink ^= (uint8_t)s.data[i];
        }
        for (uint32_t t = 0; t < GGUF_TYPE_COUNT_; t++) {
                r = gguf_get_array(f, key, (GGUFValueType)t, &data, &n);
                if (r < 0)
                        continue;
                CHECK(t == kv->arr_type && n == kv->arr_len);
                /* every element byte is readable */
                const uint8_t *p = data;
                uint64_t size = (t == GGUF_TYPE_UINT8 || t == GGUF_TYPE_INT8 || t == GGUF_TYPE_BOOL) ? 1
                              : (t == GGUF_TYPE_UINT16 || t == GGUF_TYPE_INT16)                       ? 2
                              : (t == GGUF_TYPE_UINT64 || t == GGUF_TYPE_INT64 || t == GGUF_TYPE_FLOAT64) ? 8
                                                                                                          : 4;
                for (uint64_t i = 0; i < n * size; i++)
                        sink ^= p[i];
        }
        if (gguf_get_str_array(f, key, &strs, &n) == 0) {
                CHECK(n == kv->arr_len);
                for (uint64_t i = 0; i < n; i++)
                        for (uint64_t j = 0; j < strs[i].len; j++)
                                sink ^= (uint8_t)strs[i].data[j];
                free(strs);
        }
        (void)sink;
}

static void exercise_tensor(const GGUFFile *f, const GGUFTensor *t) {
        char name[256];
        const QuantTraits *qt = quant_traits(t->type);
        const uint8_t *data = t->data;

        CHECK(qt);
        CHECK(data >= f->base + f->data_offset);
        CHECK(t->n_bytes <= f->size - (size_t)(data - f->base));
        CHECK(t->ne[0] % qt->block_size == 0);
        if (t->name.len < sizeof(name) && !memchr(t->name.data, 0, t->name.len)) {
                memcpy(name, t->name.data, t->name.len);
                name[t->name.len] = 0;
                CHECK(gguf_find_tensor(f, name) == t); /* names are unique */
        }

        /* First row through the kernels: reads exactly one row of blocks. */
        if (t->ne[0] > FUZZ_MAX_ROW)
                return;
        const int64_t n = (int64_t)t->ne[0];
        float *y = malloc((size_t)n * sizeof(float)), *a = malloc((size_t)n * sizeof(float));
        if (y && a) {
                for (int64_t i = 0; i < n; i++)
                        a[i] = 1.0f;
                qt->dequant(data, y, n);
                volatile float s = qt->vec_dot(data, a, n);
                (void)s;
        }
        free(y);
        free(a);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        GGUFError err;
        GGUFFile *f = NULL;

        err.msg[0] = 0;
        int r = gguf_open_buffer(data, size, &err, &f);
        if (r < 0) {
                CHECK(f == NULL);
                CHECK(err.msg[0] != 0); /* every rejection says why */
                return 0;
        }
        CHECK(f && f->base == data && f->size == size);
        CHECK(f->alignment > 0 && (f->alignment & (f->alignment - 1)) == 0);
        CHECK(f->data_offset <= size);
        for (uint64_t i = 0; i < f->n_kv; i++)
                exercise_kv(f, &f->kv[i]);
        for (uint64_t i = 0; i < f->n_tensors; i++)
                exercise_tensor(f, &f->tensors[i]);
        gguf_close(f);
        return 0;
}
