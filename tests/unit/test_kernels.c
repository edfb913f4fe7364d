/* tests/unit/test_kernels.c — every kernel variant this CPU can run (scalar, AVX2, AVX-512;
 * each called directly, not only the dispatched one) against its reference, bit for bit:
 * dequantizers against quant.c's scalar reference on random blocks (random bytes, scale
 * halves drawn from normal, subnormal, signed-zero and large values) and against ggml's
 * output in quant-zoo.gguf; dot_f32 against a scalar emulation of its documented order;
 * fused dequantize+dot against dequantize-then-dot_f32 for 1..16 tokens; attention's
 * dot_f32_many / axpy_many against dot_f32 / axpy one pair at a time; the attention kernels
 * over F32, F16 and Q8_0 KV rows against dot_f32 / a multiply-add loop on the decoded rows;
 * the KV types' encoding. Single-threaded cmocka test; run from the repository root. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "gguf.h"
#include "kv.h"
#include "ops.h"
#include "quant.h"
#include "test_blocks.h"
#include "test_fixtures.h"

/* ---------------------------------------------------------------------------------------
 * Helpers. */

/* Uniform in [-1, 1). */
static float rng_float(uint64_t *s) {
        return (float)((double)(rng_next(s) >> 11) * 0x1.0p-53 * 2.0 - 1.0);
}

static const uint32_t all_types[] = {
        GGML_TYPE_F32,  GGML_TYPE_F16,  GGML_TYPE_BF16, GGML_TYPE_Q4_0, GGML_TYPE_Q4_1,
        GGML_TYPE_Q5_0, GGML_TYPE_Q5_1, GGML_TYPE_Q8_0, GGML_TYPE_Q2_K, GGML_TYPE_Q3_K,
        GGML_TYPE_Q4_K, GGML_TYPE_Q5_K, GGML_TYPE_Q6_K,
};
#define N_TYPES (sizeof(all_types) / sizeof(all_types[0]))

/* n weights of type as random blocks with finite scales; F16/BF16: random bit patterns
 * (NaNs and infinities included), F32: random finite floats. */
static uint8_t *random_row(uint32_t type, int64_t n, uint64_t *seed, size_t *ret_bytes) {
        const QuantTraits *qt = quant_traits(type);
        const size_t bytes = (size_t)(n / qt->block_size) * qt->type_size;
        uint8_t *p = xmalloc(bytes);
        for (size_t i = 0; i < bytes; i++)
                p[i] = (uint8_t)rng_next(seed);
        if (type == GGML_TYPE_F32) {
                for (int64_t i = 0; i < n; i++) {
                        const float f = rng_float(seed);
                        memcpy(p + 4 * i, &f, 4);
                }
        }
        int off[3];
        scale_offsets(type, off);
        for (size_t b = 0; b < bytes / qt->type_size; b++)
                for (int k = 0; k < 3 && off[k] >= 0; k++) {
                        const ggml_half h = random_scale(seed);
                        memcpy(p + b * qt->type_size + (size_t)off[k], &h, 2);
                }
        *ret_bytes = bytes;
        return p;
}

/* Index of the first float whose bits differ, or -1. */
static int64_t first_diff(const float *a, const float *b, int64_t n) {
        if (memcmp(a, b, (size_t)n * sizeof(float)) == 0)
                return -1;
        for (int64_t i = 0; i < n; i++)
                if (memcmp(&a[i], &b[i], 4) != 0)
                        return i;
        return -1;
}

/* ---------------------------------------------------------------------------------------
 * Kernel selection. */

static void test_selection(void **state) {
        const QuantIsa best = quant_best_isa();
        assert_true(quant_isa_supported(QUANT_ISA_SCALAR));
        assert_true(quant_isa_supported(best));
        for (int isa = best + 1; isa < QUANT_ISA_COUNT_; isa++)
                assert_false(quant_isa_supported((QuantIsa)isa));
        assert_string_equal(ops_kernel_name(), quant_isa_name(best));
        print_message("kernels: %s (supported:", quant_isa_name(best));
        for (int isa = 0; isa < QUANT_ISA_COUNT_; isa++)
                if (quant_isa_supported((QuantIsa)isa))
                        print_message(" %s", quant_isa_name((QuantIsa)isa));
        print_message(")\n");
        for (size_t k = 0; k < N_TYPES; k++) {
                const QuantTraits *qt = quant_traits(all_types[k]);
                assert_non_null(qt);
                assert_non_null(qt->dequant_ref);
                assert_ptr_equal(qt->dequant, quant_dequant_variant(all_types[k], best));
                assert_ptr_equal(qt->dot_rows, quant_dot_rows_variant(all_types[k], best));
                assert_ptr_equal(quant_dequant_variant(all_types[k], QUANT_ISA_SCALAR), qt->dequant_ref);
                assert_null(quant_dot_rows_variant(all_types[k], QUANT_ISA_SCALAR));
        }
        assert_null(quant_dequant_variant(4, best));
        assert_null(quant_dequant_variant(GGML_TYPE_COUNT_, best));
        assert_null(quant_dequant_variant(GGML_TYPE_Q4_K, QUANT_ISA_COUNT_));
        assert_non_null(quant_dot_f32_variant(QUANT_ISA_SCALAR));
        assert_non_null(quant_dot_f32_variant(best));
}

/* ---------------------------------------------------------------------------------------
 * Dequantizers: every variant against the scalar reference. */

/* Checks f against the reference on n weights at src (into a float buffer offset by
 * one float, so stores are unaligned too). */
static void check_dequant(uint32_t type, QuantIsa isa, const uint8_t *src, int64_t n, const char *what) {
        const QuantTraits *qt = quant_traits(type);
        DequantFn f = quant_dequant_variant(type, isa);
        float *want = xmalloc((size_t)n * sizeof(float)), *got = xmalloc(((size_t)n + 1) * sizeof(float));
        qt->dequant_ref(src, want, n);
        memset(got, 0xa5, ((size_t)n + 1) * sizeof(float));
        f(src, got + 1, n);
        const int64_t bad = first_diff(got + 1, want, n);
        if (bad >= 0)
                fail_msg("%s %s (%s, n=%lld): weight %lld is %.9g (0x%08x), reference %.9g (0x%08x)", qt->name,
                         quant_isa_name(isa), what, (long long)n, (long long)bad, got[1 + bad], float_bits(got[1 + bad]),
                         want[bad], float_bits(want[bad]));
        free(want);
        free(got);
}

static void test_dequant_random(void **state) {
        for (size_t k = 0; k < N_TYPES; k++) {
                const uint32_t type = all_types[k];
                const QuantTraits *qt = quant_traits(type);
                for (int isa = 0; isa < QUANT_ISA_COUNT_; isa++) {
                        if (!quant_isa_supported((QuantIsa)isa))
                                continue;
                        uint64_t seed = 0x6b65726e656c0000ull + 131 * type + (uint64_t)isa;
                        /* 64 Ki weights in one call, then short rows of 1..9 blocks (tails). */
                        size_t bytes;
                        const int64_t n = 65536;
                        uint8_t *row = random_row(type, n, &seed, &bytes);
                        check_dequant(type, (QuantIsa)isa, row, n, "random blocks");
                        free(row);
                        for (int64_t nb = 1; nb <= 9; nb++) {
                                const int64_t m = nb * (qt->block_size == 1 ? 7 : qt->block_size);
                                row = random_row(type, m, &seed, &bytes);
                                /* at an odd multiple of 2 bytes from malloc's alignment */
                                uint8_t *shifted = xmalloc(bytes + 2);
                                memcpy(shifted + 2, row, bytes);
                                check_dequant(type, (QuantIsa)isa, shifted + 2, m, "short row");
                                free(shifted);
                                free(row);
                        }
                        print_message("ok   %-5s %-6s %s\n", qt->name, quant_isa_name((QuantIsa)isa),
                                      quant_dequant_variant(type, (QuantIsa)isa) == qt->dequant_ref
                                              ? "(scalar reference)"
                                              : "bit-identical to the reference on random blocks");
                }
        }
}

/* F16 and BF16: every one of the 65536 bit patterns (NaN payloads included). */
static void test_dequant_all_halves(void **state) {
        static const uint32_t types[] = { GGML_TYPE_F16, GGML_TYPE_BF16 };
        uint16_t *h = xmalloc(65536 * sizeof(uint16_t));
        for (uint32_t i = 0; i < 65536; i++)
                h[i] = (uint16_t)i;
        for (size_t k = 0; k < 2; k++)
                for (int isa = 0; isa < QUANT_ISA_COUNT_; isa++)
                        if (quant_isa_supported((QuantIsa)isa))
                                check_dequant(types[k], (QuantIsa)isa, (const uint8_t *)h, 65536, "all 65536 halves");
        free(h);
}

/* ---------------------------------------------------------------------------------------
 * Dequantizers: every variant against ggml's own output (quant-zoo.gguf). */

static void test_dequant_zoo(void **state) {
        char path[4096];
        GGUFError err = { "" };
        GGUFFile *f = NULL;
        if (!fixture_path("quant-zoo.gguf", path, sizeof(path))) {
                skip();
                return;
        }
        assert_int_equal(gguf_open(path, &err, &f), 0);
        for (size_t k = 0; k < N_TYPES; k++) {
                const QuantTraits *qt = quant_traits(all_types[k]);
                char name[64];
                snprintf(name, sizeof(name), "zoo.%s", qt->name);
                const GGUFTensor *q = gguf_find_tensor(f, name);
                snprintf(name, sizeof(name), "zoo.%s.f32", qt->name);
                const GGUFTensor *ref = gguf_find_tensor(f, name);
                if (!q || !ref)
                        continue; /* no F32 twin of F32 */
                const int64_t n = (int64_t)q->n_elements;
                float *got = xmalloc((size_t)n * sizeof(float));
                for (int isa = 0; isa < QUANT_ISA_COUNT_; isa++) {
                        if (!quant_isa_supported((QuantIsa)isa))
                                continue;
                        /* the whole tensor in one call: rows are whole blocks back to back */
                        quant_dequant_variant(all_types[k], (QuantIsa)isa)(q->data, got, n);
                        const int64_t bad = first_diff(got, ref->data, n);
                        if (bad >= 0)
                                fail_msg("zoo.%s %s: weight %lld is 0x%08x, ggml says 0x%08x", qt->name,
                                         quant_isa_name((QuantIsa)isa), (long long)bad, float_bits(got[bad]),
                                         float_bits(((const float *)ref->data)[bad]));
                        print_message("ok   zoo.%-5s %-6s %lld weights bit-identical to ggml\n", qt->name,
                                      quant_isa_name((QuantIsa)isa), (long long)n);
                }
                free(got);
        }
        gguf_close(f);
}

/* ---------------------------------------------------------------------------------------
 * dot_f32: each SIMD variant against a scalar emulation of its documented order
 * (quant_simd.c, DOT_ORDER): vector v of `lanes` floats into accumulator v % 4 by FMA,
 * partial last vector on its lanes only, ((a0 + a1) + (a2 + a3)), then halving. */

static float emulate_dot(const float *a, const float *b, int64_t n, int lanes) {
        float acc[4][16] = { { 0 } };
        for (int64_t i = 0; i < n; i++) {
                const int64_t v = i / lanes;
                acc[v % 4][i % lanes] = fmaf(a[i], b[i], acc[v % 4][i % lanes]);
        }
        float s[16];
        for (int l = 0; l < lanes; l++)
                s[l] = (acc[0][l] + acc[1][l]) + (acc[2][l] + acc[3][l]);
        for (int w = lanes / 2; w >= 2; w /= 2)
                for (int l = 0; l < w; l++)
                        s[l] = s[l] + s[l + w];
        return s[0] + s[1];
}

static void test_dot_f32_variants(void **state) {
        const int64_t max_n = 20000;
        float *a = xmalloc((size_t)(max_n + 16) * sizeof(float)), *b = xmalloc((size_t)(max_n + 16) * sizeof(float));
        uint64_t seed = 7;
        for (int64_t i = 0; i < max_n + 16; i++) {
                a[i] = rng_float(&seed);
                b[i] = rng_float(&seed) * 100.0f;
        }
        static const int64_t sizes[] = { 0, 1, 7, 8, 15, 16, 17, 31, 33, 63, 64, 65, 100, 127, 128, 129, 255, 256,
                                         257, 300, 1000, 4095, 4096, 4097, 14336, 16384, 20000 };
        for (int isa = 0; isa < QUANT_ISA_COUNT_; isa++) {
                if (!quant_isa_supported((QuantIsa)isa))
                        continue;
                DotF32Fn dot = quant_dot_f32_variant((QuantIsa)isa);
                for (size_t k = 0; k < sizeof(sizes) / sizeof(sizes[0]); k++) {
                        const int64_t n = sizes[k];
                        for (int off = 0; off < 3; off++) {
                                const float got = dot(a + off, b + 2 * off, n);
                                double ref = 0, mag = 0;
                                for (int64_t i = 0; i < n; i++) {
                                        ref += (double)a[i + off] * b[i + 2 * off];
                                        mag += fabs((double)a[i + off] * b[i + 2 * off]);
                                }
                                if (!(fabs(got - ref) <= 1e-5 * mag))
                                        fail_msg("dot_f32 %s n=%lld: %.9g, exact %.9g", quant_isa_name((QuantIsa)isa),
                                                 (long long)n, got, ref);
                                if (isa != QUANT_ISA_SCALAR) {
                                        const float want = emulate_dot(a + off, b + 2 * off, n, isa == QUANT_ISA_AVX512 ? 16 : 8);
                                        if (float_bits(got) != float_bits(want))
                                                fail_msg("dot_f32 %s n=%lld offset %d: 0x%08x, documented order gives 0x%08x",
                                                         quant_isa_name((QuantIsa)isa), (long long)n, off, float_bits(got),
                                                         float_bits(want));
                                }
                        }
                }
                print_message("ok   dot_f32 %-6s %s\n", quant_isa_name((QuantIsa)isa),
                              isa == QUANT_ISA_SCALAR ? "within 1e-5 of exact" : "bit-identical to its documented order");
        }
        /* The dispatched one is the best variant. */
        assert_int_equal(float_bits(dot_f32(a, b, 4096)), float_bits(quant_dot_f32_variant(quant_best_isa())(a, b, 4096)));
        free(a);
        free(b);
}

/* Attention's grouped kernels against dot_f32 and axpy called one (head, key) at a time:
 * the same bits, for every head size (the AVX-512 ones specialise 32, 64 and 128), group
 * size, key count and key stride; the prefetch hint never changes a value. */
static void test_attention_many(void **state) {
        (void)state;
        enum { MAX_N = 136, MAX_Q = 5, MAX_K = 40, STRIDE = 3 * MAX_N };
        float *q = xmalloc(MAX_Q * MAX_N * sizeof(float)), *kv = xmalloc(MAX_K * STRIDE * sizeof(float));
        float *got = xmalloc(MAX_Q * MAX_K * sizeof(float)), *want = xmalloc(MAX_Q * MAX_K * sizeof(float));
        float *out = xmalloc(MAX_Q * MAX_N * sizeof(float)), *ref = xmalloc(MAX_Q * MAX_N * sizeof(float));
        uint64_t seed = 11;
        for (int i = 0; i < MAX_Q * MAX_N; i++)
                q[i] = rng_float(&seed);
        for (int i = 0; i < MAX_K * STRIDE; i++)
                kv[i] = rng_float(&seed) * 3.0f;
        static const int64_t dims[] = { 8, 16, 32, 48, 64, 100, 128, 136 };
        static const uint32_t groups[] = { 1, 2, 3, 4, 5 };
        static const int64_t keys[] = { 1, 2, 17, 40 };
        static const int64_t strides[] = { 0, 2 * MAX_N + 5 }; /* 0: rows packed (stride n) */
        for (size_t a = 0; a < sizeof(dims) / sizeof(dims[0]); a++)
                for (size_t b = 0; b < sizeof(groups) / sizeof(groups[0]); b++)
                        for (size_t c = 0; c < sizeof(keys) / sizeof(keys[0]); c++)
                                for (size_t d = 0; d < 2; d++) {
                                        const int64_t n = dims[a], nk = keys[c], st = strides[d] ? strides[d] : n;
                                        const uint32_t nq = groups[b];
                                        const float scale = 0.0883883f;
                                        dot_f32_many(q, nq, kv, st, nk, d ? kv + 1 : NULL, n, scale, got, MAX_K);
                                        for (int64_t i = 0; i < nk; i++)
                                                for (uint32_t g = 0; g < nq; g++)
                                                        want[g * MAX_K + i] = dot_f32(q + g * n, kv + i * st, n) * scale;
                                        for (uint32_t g = 0; g < nq; g++)
                                                for (int64_t i = 0; i < nk; i++)
                                                        if (float_bits(got[g * MAX_K + i]) != float_bits(want[g * MAX_K + i]))
                                                                fail_msg("dot_f32_many n=%lld group %u key %lld head %u: 0x%08x, dot_f32 0x%08x",
                                                                         (long long)n, nq, (long long)i, g,
                                                                         float_bits(got[g * MAX_K + i]),
                                                                         float_bits(want[g * MAX_K + i]));
                                        for (int64_t i = 0; i < nq * n; i++)
                                                out[i] = ref[i] = q[i];
                                        axpy_many(out, nq, want, MAX_K, kv, st, nk, n);
                                        for (int64_t i = 0; i < nk; i++)
                                                for (uint32_t g = 0; g < nq; g++)
                                                        axpy(ref + g * n, want[g * MAX_K + i], kv + i * st, n);
                                        for (int64_t i = 0; i < nq * n; i++)
                                                if (float_bits(out[i]) != float_bits(ref[i]))
                                                        fail_msg("axpy_many n=%lld group %u keys %lld element %lld: 0x%08x, axpy 0x%08x",
                                                                 (long long)n, nq, (long long)nk, (long long)i,
                                                                 float_bits(out[i]), float_bits(ref[i]));
                                }
        /* (Without AVX-512 both sides take the per-pair path: there is no grouped kernel to test.) */
        print_message("ok   dot_f32_many / axpy_many bit-identical to dot_f32 / axpy (%s)\n",
                      quant_isa_supported(QUANT_ISA_AVX512) ? "AVX-512 grouped kernels" : "per-pair fallback only");
        free(q);
        free(kv);
        free(got);
        free(want);
        free(out);
        free(ref);
}

/* ---------------------------------------------------------------------------------------
 * Attention over KV rows (quant.h KVDotFn / KVAxpyFn), every variant this CPU runs. */

static const uint32_t kv_type_list[] = { GGML_TYPE_F32, GGML_TYPE_F16, GGML_TYPE_Q8_0 };

/* n_rows rows of n numbers of a KV type, stride bytes apart: F32 and F16 mostly normal
 * values (F16 also 1 in 16 a random non-NaN half: subnormals, zeros, infinities), Q8_0
 * random quants (-128 included) and random finite scales. */
static void random_kv_rows(uint32_t type, int64_t n, int64_t n_rows, size_t stride, uint64_t *seed, uint8_t *out) {
        for (int64_t r = 0; r < n_rows; r++) {
                uint8_t *row = out + (size_t)r * stride;
                if (type == GGML_TYPE_F32) {
                        for (int64_t i = 0; i < n; i++) {
                                const float f = rng_float(seed) * 3.0f;
                                memcpy(row + 4 * i, &f, 4);
                        }
                } else if (type == GGML_TYPE_F16) {
                        for (int64_t i = 0; i < n; i++) {
                                ggml_half h = fp32_to_fp16(rng_float(seed) * 3.0f);
                                if (rng_next(seed) % 16 == 0) {
                                        h = (ggml_half)rng_next(seed);
                                        if ((h & 0x7c00) == 0x7c00)
                                                h &= 0xfc00; /* NaN -> infinity: no NaN ever enters a cache as data */
                                }
                                memcpy(row + 2 * i, &h, 2);
                        }
                } else {
                        for (int64_t b = 0; b < n / QK8_0; b++) {
                                BlockQ8_0 blk;
                                blk.d = random_scale(seed);
                                for (int j = 0; j < QK8_0; j++)
                                        blk.qs[j] = (int8_t)rng_next(seed);
                                memcpy(row + b * sizeof(BlockQ8_0), &blk, sizeof(blk));
                        }
                }
        }
}

/* Each variant's scores against dot_f32 of the same isa on the decoded rows, and its value
 * sums against y + p * x per number, key after key: the same bits, for head sizes the
 * register kernels specialise and others, group sizes 1..5, 1..40 keys, packed and padded
 * rows, with and without the prefetch hint. The dispatched attn_dot_many / attn_axpy_many
 * (ops.h) are the best isa's. */
static void test_kv_attention_kernels(void **state) {
        (void)state;
        enum { MAX_N = 256, MAX_Q = 5, MAX_K = 40 };
        const size_t max_stride = MAX_N * 4 + 72;
        float *q = xmalloc(MAX_Q * MAX_N * sizeof(float)), *dec = xmalloc(MAX_K * MAX_N * sizeof(float));
        uint8_t *rows = xmalloc(MAX_K * max_stride);
        float *got = xmalloc(MAX_Q * MAX_K * sizeof(float)), *want = xmalloc(MAX_Q * MAX_K * sizeof(float));
        float *out = xmalloc(MAX_Q * MAX_N * sizeof(float)), *ref = xmalloc(MAX_Q * MAX_N * sizeof(float));
        uint64_t seed = 0x6b76;
        for (int i = 0; i < MAX_Q * MAX_N; i++)
                q[i] = rng_float(&seed);
        static const int64_t dims_f[] = { 8, 16, 32, 48, 64, 100, 128, 136, 256 };
        static const int64_t dims_q[] = { 32, 64, 96, 128, 256 };
        static const int64_t keys[] = { 1, 2, 17, 40 };
        int n_variants = 0;
        for (size_t t = 0; t < sizeof(kv_type_list) / sizeof(kv_type_list[0]); t++) {
                const uint32_t type = kv_type_list[t];
                const int64_t *dims = type == GGML_TYPE_Q8_0 ? dims_q : dims_f;
                const size_t n_dims = type == GGML_TYPE_Q8_0 ? sizeof(dims_q) / sizeof(dims_q[0])
                                                               : sizeof(dims_f) / sizeof(dims_f[0]);
                for (int isa = 0; isa < QUANT_ISA_COUNT_; isa++) {
                        if (!quant_isa_supported((QuantIsa)isa))
                                continue;
                        const KVDotFn kdot = quant_kv_dot_variant(type, (QuantIsa)isa);
                        const KVAxpyFn kaxpy = quant_kv_axpy_variant(type, (QuantIsa)isa);
                        const DotF32Fn dot = quant_dot_f32_variant((QuantIsa)isa);
                        assert_non_null(kdot);
                        assert_non_null(kaxpy);
                        const int best = isa == (int)quant_best_isa();
                        for (size_t a = 0; a < n_dims; a++)
                                for (uint32_t nq = 1; nq <= MAX_Q; nq++)
                                        for (size_t c = 0; c < sizeof(keys) / sizeof(keys[0]); c++)
                                                for (int pad = 0; pad < 2; pad++) {
                                                        const int64_t n = dims[a], nk = keys[c];
                                                        uint32_t rb;
                                                        assert_int_equal(kv_row_bytes(type, (uint32_t)n, &rb), 0);
                                                        const size_t st = rb + (pad ? 68 : 0);
                                                        const float scale = 0.0883883f;
                                                        random_kv_rows(type, n, nk, st, &seed, rows);
                                                        for (int64_t i = 0; i < nk; i++)
                                                                kv_decode(type, rows + (size_t)i * st, (size_t)n, dec + i * n);
                                                        kdot(q, nq, rows, st, nk, pad ? rows : NULL, n, scale, got, MAX_K);
                                                        for (int64_t i = 0; i < nk; i++)
                                                                for (uint32_t g = 0; g < nq; g++)
                                                                        want[g * MAX_K + i] = dot(q + g * n, dec + i * n, n) * scale;
                                                        for (uint32_t g = 0; g < nq; g++)
                                                                for (int64_t i = 0; i < nk; i++)
                                                                        if (float_bits(got[g * MAX_K + i]) != float_bits(want[g * MAX_K + i]))
                                                                                fail_msg("KV dot %s %s n=%lld group %u key %lld head %u: 0x%08x, dot_f32 0x%08x",
                                                                                         kv_type_name(type), quant_isa_name((QuantIsa)isa),
                                                                                         (long long)n, nq, (long long)i, g,
                                                                                         float_bits(got[g * MAX_K + i]),
                                                                                         float_bits(want[g * MAX_K + i]));
                                                        if (best) {
                                                                attn_dot_many(type, q, nq, rows, st, nk, NULL, n, scale, got, MAX_K);
                                                                for (uint32_t g = 0; g < nq; g++)
                                                                        assert_memory_equal(got + g * MAX_K, want + g * MAX_K,
                                                                                            (size_t)nk * sizeof(float));
                                                        }
                                                        /* values: the scores as weights, the queries as the sums so far */
                                                        for (int64_t i = 0; i < nq * n; i++)
                                                                out[i] = ref[i] = q[i];
                                                        kaxpy(out, nq, want, MAX_K, rows, st, nk, n);
                                                        for (int64_t i = 0; i < nk; i++)
                                                                for (uint32_t g = 0; g < nq; g++)
                                                                        for (int64_t j = 0; j < n; j++)
                                                                                ref[g * n + j] = ref[g * n + j] + want[g * MAX_K + i] * dec[i * n + j];
                                                        for (int64_t i = 0; i < nq * n; i++)
                                                                if (float_bits(out[i]) != float_bits(ref[i]))
                                                                        fail_msg("KV axpy %s %s n=%lld group %u keys %lld number %lld: 0x%08x, reference 0x%08x",
                                                                                 kv_type_name(type), quant_isa_name((QuantIsa)isa),
                                                                                 (long long)n, nq, (long long)nk, (long long)i,
                                                                                 float_bits(out[i]), float_bits(ref[i]));
                                                        if (best) {
                                                                for (int64_t i = 0; i < nq * n; i++)
                                                                        out[i] = q[i];
                                                                attn_axpy_many(type, out, nq, want, MAX_K, rows, st, nk, n);
                                                                assert_memory_equal(out, ref, (size_t)(nq * n) * sizeof(float));
                                                        }
                                                }
                        n_variants++;
                        print_message("ok   KV attention %-4s %-6s bit-identical to dot_f32 / multiply-add on the decoded rows\n",
                                      kv_type_name(type), quant_isa_name((QuantIsa)isa));
                }
        }
        assert_true(n_variants >= 3);
        free(q);
        free(dec);
        free(rows);
        free(got);
        free(want);
        free(out);
        free(ref);
}

/* kv_encode / kv_decode: F16 is fp32_to_fp16 (nearest even, NaN quiet); Q8_0 blocks within
 * half a step of their input, the largest magnitude on +-127, NaN to 0, zeros to zeros;
 * kv_sanitize quiets signalling halves and nothing else. */
static void test_kv_encoding(void **state) {
        (void)state;
        enum { N = 4 * QK8_0 };
        float x[N], y[N];
        uint8_t buf[N * 4];
        uint64_t seed = 0x656e63;
        for (int i = 0; i < N; i++)
                x[i] = rng_float(&seed) * (i < QK8_0 ? 1e-3f : i < 2 * QK8_0 ? 40.0f : 1.0f);
        x[2 * QK8_0 + 5] = NAN;
        for (int i = 3 * QK8_0; i < N; i++)
                x[i] = 0.0f;

        kv_encode(GGML_TYPE_F16, x, N, buf);
        kv_decode(GGML_TYPE_F16, buf, N, y);
        for (int i = 0; i < N; i++) {
                ggml_half h;
                memcpy(&h, buf + 2 * i, 2);
                assert_int_equal(h, fp32_to_fp16(x[i]));
                if (i != 2 * QK8_0 + 5)
                        assert_int_equal(float_bits(y[i]), float_bits(fp16_to_fp32(fp32_to_fp16(x[i]))));
        }
        assert_true(isnan(y[2 * QK8_0 + 5]));

        kv_encode(GGML_TYPE_Q8_0, x, N, buf);
        kv_decode(GGML_TYPE_Q8_0, buf, N, y);
        for (int b = 0; b < N / QK8_0; b++) {
                const BlockQ8_0 *blk = (const BlockQ8_0 *)buf + b;
                const float d = fp16_to_fp32(blk->d);
                float amax = 0.0f;
                int top = 0;
                for (int j = 0; j < QK8_0; j++) {
                        const float v = x[b * QK8_0 + j];
                        if (fabsf(v) > amax)
                                amax = fabsf(v);
                        top |= blk->qs[j] == 127 || blk->qs[j] == -127;
                        assert_true(blk->qs[j] >= -127);
                        if (v == v)
                                assert_true(fabsf(y[b * QK8_0 + j] - v) <= 0.5f * d * (1.0f + 1e-5f));
                        else
                                assert_int_equal(blk->qs[j], 0);
                }
                assert_true(fabsf(d - amax / 127.0f) <= amax / 127.0f * 0x1p-10f);
                assert_int_equal(top, amax > 0.0f);
        }
        for (int j = 0; j < QK8_0; j++)
                assert_true(y[3 * QK8_0 + j] == 0.0f);

        const ggml_half h[4] = { 0x7c01, 0xfd00, 0x7e00, 0x3c00 }; /* signalling, signalling, quiet, 1.0 */
        memcpy(buf, h, sizeof(h));
        kv_sanitize(GGML_TYPE_F16, buf, 4);
        const ggml_half want[4] = { 0x7e01, 0xff00, 0x7e00, 0x3c00 };
        assert_memory_equal(buf, want, sizeof(want));
        print_message("ok   KV encoding: F16 rounding, Q8_0 within half a step, NaNs handled\n");
}

/* ---------------------------------------------------------------------------------------
 * Fused dequantize + dot against dequantize (reference) then dot_f32 of the same isa, for
 * 1..5 rows and 1..16 tokens (every tile shape and remainder the kernels have). */

static void test_dot_rows_variants(void **state) {
        const int64_t T_max = 16, R_max = 5, pad = 5, sentinel_os = R_max + 2;
        for (size_t k = 0; k < N_TYPES; k++) {
                const uint32_t type = all_types[k];
                const QuantTraits *qt = quant_traits(type);
                for (int isa = 1; isa < QUANT_ISA_COUNT_; isa++) {
                        DotRowsFn fused = quant_dot_rows_variant(type, (QuantIsa)isa);
                        if (!fused)
                                continue;
                        DotF32Fn dot = quant_dot_f32_variant((QuantIsa)isa);
                        uint64_t seed = 0x66757365ull + 977 * type + (uint64_t)isa;
                        const int64_t bs = qt->block_size;
                        const int64_t sizes[] = { bs, 2 * bs, 3 * bs, 5 * bs, 4096 + 3 * bs, 14336 };
                        int n_checked = 0;
                        for (size_t s = 0; s < sizeof(sizes) / sizeof(sizes[0]); s++) {
                                const int64_t n = sizes[s], xs = n + pad;
                                size_t bytes;
                                uint8_t *rows = random_row(type, n * R_max, &seed, &bytes);
                                const uint64_t rb = bytes / (uint64_t)R_max;
                                float *w = xmalloc((size_t)(n * R_max) * sizeof(float));
                                float *x = xmalloc((size_t)(T_max * xs) * sizeof(float));
                                float *out = xmalloc((size_t)(T_max * sentinel_os) * sizeof(float));
                                for (int64_t i = 0; i < T_max * xs; i++)
                                        x[i] = rng_float(&seed);
                                qt->dequant_ref(rows, w, n * R_max);
                                static const int64_t Ts[] = { 1, 2, 3, 4, 5, 7, 8, 16 };
                                for (int64_t R = 1; R <= R_max; R++) {
                                        for (size_t ti = 0; ti < sizeof(Ts) / sizeof(Ts[0]); ti++) {
                                                const int64_t T = Ts[ti];
                                                if (n > 4096 && R != 3 && T != 16 && T != 1)
                                                        continue; /* the long rows: fewer shapes */
                                                for (int64_t i = 0; i < T_max * sentinel_os; i++)
                                                        out[i] = -12345.0f;
                                                fused(rows, rb, R, x, xs, T, out, sentinel_os, n);
                                                for (int64_t t = 0; t < T_max; t++) {
                                                        for (int64_t r = 0; r < sentinel_os; r++) {
                                                                const float got = out[t * sentinel_os + r];
                                                                if (t >= T || r >= R) {
                                                                        if (got != -12345.0f)
                                                                                fail_msg("%s %s fused dot R=%lld T=%lld wrote out[%lld][%lld]",
                                                                                         qt->name, quant_isa_name((QuantIsa)isa), (long long)R,
                                                                                         (long long)T, (long long)t, (long long)r);
                                                                        continue;
                                                                }
                                                                const float want = dot(w + r * n, x + t * xs, n);
                                                                if (float_bits(got) != float_bits(want))
                                                                        fail_msg("%s %s fused dot n=%lld R=%lld T=%lld row %lld token %lld: "
                                                                                 "%.9g (0x%08x), dequantize+dot_f32 %.9g (0x%08x)",
                                                                                 qt->name, quant_isa_name((QuantIsa)isa), (long long)n,
                                                                                 (long long)R, (long long)T, (long long)r, (long long)t, got,
                                                                                 float_bits(got), want, float_bits(want));
                                                                n_checked++;
                                                        }
                                                }
                                        }
                                }
                                free(rows);
                                free(w);
                                free(x);
                                free(out);
                        }
                        print_message("ok   %-5s %-6s fused dot bit-identical to dequantize+dot_f32 (%d dots, R 1..5, T 1..16)\n",
                                      qt->name, quant_isa_name((QuantIsa)isa), n_checked);
                }
        }
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_selection),
                cmocka_unit_test(test_dequant_random),
                cmocka_unit_test(test_dequant_all_halves),
                cmocka_unit_test(test_dequant_zoo),
                cmocka_unit_test(test_dot_f32_variants),
                cmocka_unit_test(test_attention_many),
                cmocka_unit_test(test_kv_attention_kernels),
                cmocka_unit_test(test_kv_encoding),
                cmocka_unit_test(test_dot_rows_variants),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
