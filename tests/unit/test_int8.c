/* tests/unit/test_int8.c — engine/quant_int8.c: activation quantization (BlockQ8K) and the
 * int8 dot kernels. Every variant this CPU can run (scalar, AVX2, AVX-512, AVX-512 VNNI;
 * each called directly) against the scalar reference bit for bit on random blocks (random
 * bytes, finite scale halves of every kind; then infinite ones; NaN ones: NaN everywhere)
 * and on extreme blocks (largest quants and scales, -128 weights: the widest integer sums),
 * for R 1..5 (and several row blocks and token tiles) x T 1..16, at unaligned addresses;
 * quantize_row_q8k's contract; the shared fp16 conversion over all halves; and the accuracy
 * of the int8 dot against dequantize-then-dot in double (worst and RMS printed).
 * Single-threaded cmocka test; run from the repository root. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "quant.h"
#include "quant_gemm.h"
#include "quant_int8.h"
#include "test_blocks.h"

/* ---------------------------------------------------------------------------------------
 * Helpers. */

/* Uniform in [0, 1). */
static double rng_unit(uint64_t *s) {
        return (double)(rng_next(s) >> 11) * 0x1.0p-53;
}

/* Standard normal (Box-Muller). */
static float rng_normal(uint64_t *s) {
        const double u = rng_unit(s) + 0x1.0p-60, v = rng_unit(s);
        return (float)(sqrt(-2.0 * log(u)) * cos(6.283185307179586 * v));
}

static const uint32_t int8_types[] = { GGML_TYPE_Q4_0, GGML_TYPE_Q4_1, GGML_TYPE_Q5_0, GGML_TYPE_Q5_1, GGML_TYPE_Q8_0,
                                       GGML_TYPE_Q2_K, GGML_TYPE_Q3_K, GGML_TYPE_Q4_K, GGML_TYPE_Q5_K, GGML_TYPE_Q6_K };
#define N_TYPES (sizeof(int8_types) / sizeof(int8_types[0]))

/* A scale half of any kind: random_scale()'s, or +-inf, or (with_nan) a NaN, quiet or
 * signalling. */
static ggml_half nonfinite_scale(uint64_t *s, int with_nan) {
        const uint64_t r = rng_next(s);
        const uint16_t sign = (r & 1) ? 0x8000 : 0;
        switch ((r >> 1) % 4) {
        case 0: return (ggml_half)(sign | 0x7c00);
        case 1: return with_nan ? (ggml_half)(sign | 0x7c00 | (((r >> 8) & 0x3ff) | 1)) : (ggml_half)(sign | 0x7c00);
        default: return random_scale(s);
        }
}

/* Weight blocks for n weights: random bytes; scales by `realistic`: 0: random_scale();
 * 1: positive values around 0.001 .. 0.021 (as in real models); 3: nonfinite_scale()
 * without NaNs; 4: with NaNs. Returned at `shift` bytes past a malloc'd address
 * (*ret_base: what to free). */
static uint8_t *random_weights(uint32_t type, int64_t n, uint64_t *seed, int realistic, size_t shift,
                               size_t *ret_bytes, uint8_t **ret_base) {
        const QuantTraits *qt = quant_traits(type);
        const size_t bytes = (size_t)(n / qt->block_size) * qt->type_size;
        uint8_t *base = xmalloc(bytes + shift), *p = base + shift;
        for (size_t i = 0; i < bytes; i++)
                p[i] = (uint8_t)rng_next(seed);
        int off[3];
        scale_offsets(type, off);
        for (size_t b = 0; b < bytes / qt->type_size; b++)
                for (int k = 0; k < 3 && off[k] >= 0; k++) {
                        const ggml_half h = realistic == 1   ? fp32_to_fp16((float)(0.001 + 0.02 * rng_unit(seed)))
                                            : realistic >= 3 ? nonfinite_scale(seed, realistic == 4)
                                                             : random_scale(seed);
                        memcpy(p + b * qt->type_size + (size_t)off[k], &h, 2);
                }
        *ret_bytes = bytes;
        *ret_base = base;
        return p;
}

/* Weight blocks with the largest integer sums: every quant at its maximum magnitude (Q8_0:
 * -128, Q4_0: -8, Q5_0: -16), every 4/6/8-bit scale and min at its maximum (Q6_K:
 * alternately +127 and -128; Q3_K: +31). */
static uint8_t *extreme_weights(uint32_t type, int64_t n, size_t *ret_bytes) {
        const QuantTraits *qt = quant_traits(type);
        const size_t bytes = (size_t)(n / qt->block_size) * qt->type_size;
        uint8_t *p = xmalloc(bytes);
        for (size_t b = 0; b < bytes / qt->type_size; b++) {
                uint8_t *blk = p + b * qt->type_size;
                const ggml_half one = 0x3c00, half = 0x3800;
                switch (type) {
                case GGML_TYPE_Q8_0:
                        memset(blk, 0x80, qt->type_size);
                        memcpy(blk, &one, 2);
                        break;
                case GGML_TYPE_Q4_0:
                case GGML_TYPE_Q5_0: /* q = 0: -8 / -16 */
                        memset(blk, 0, qt->type_size);
                        memcpy(blk, &one, 2);
                        break;
                case GGML_TYPE_Q4_1:
                case GGML_TYPE_Q5_1:
                        memset(blk, 0xff, qt->type_size);
                        memcpy(blk, &one, 2);
                        memcpy(blk + 2, &half, 2);
                        break;
                case GGML_TYPE_Q2_K:
                        memset(blk, 0xff, qt->type_size);
                        memcpy(blk + offsetof(BlockQ2_K, d), &one, 2);
                        memcpy(blk + offsetof(BlockQ2_K, dmin), &half, 2);
                        break;
                case GGML_TYPE_Q3_K:
                        memset(blk, 0xff, qt->type_size);
                        memcpy(blk + offsetof(BlockQ3_K, d), &one, 2);
                        break;
                case GGML_TYPE_Q6_K: {
                        BlockQ6_K *q = (BlockQ6_K *)blk;
                        memset(q->ql, 0xff, sizeof(q->ql));
                        memset(q->qh, 0xff, sizeof(q->qh));
                        for (int g = 0; g < 16; g++)
                                q->scales[g] = (int8_t)(g & 1 ? -128 : 127);
                        q->d = one;
                        break;
                }
                default: /* Q4_K, Q5_K: d, dmin, scales, [qh], qs */
                        memset(blk, 0xff, qt->type_size);
                        memcpy(blk, &one, 2);
                        memcpy(blk + 2, &half, 2);
                        break;
                }
        }
        *ret_bytes = bytes;
        return p;
}

/* T rows of n activations quantized to blocks of format act, xs blocks apart, at 4 bytes
 * past a malloc'd address (*ret_base: what to free). kind 0: normal x random magnitude per
 * row; 1: all +1 or all -1 per row (every quant +-127); 2: alternating rows of 0 and
 * normal; 3: normal x a magnitude per 32 that varies over 2^16 (the legacy formats' scales
 * differ block by block). */
static const void *random_acts(QuantAct act, int64_t n, int64_t T, int64_t xs, uint64_t *seed, int kind, void **ret_base) {
        const size_t bb = quant_act_block_bytes(act);
        uint8_t *base = xmalloc((size_t)(T * xs) * bb + 4), *x = base + 4;
        float *f = xmalloc((size_t)n * sizeof(float));
        memset(base, 0x5a, (size_t)(T * xs) * bb + 4);
        for (int64_t t = 0; t < T; t++) {
                float mag = (float)ldexp(1.0, (int)(rng_next(seed) % 24) - 12);
                const float sign = (rng_next(seed) & 1) ? 1.0f : -1.0f;
                for (int64_t i = 0; i < n; i++) {
                        if (kind == 3 && i % 32 == 0)
                                mag = (float)ldexp(1.0, (int)(rng_next(seed) % 16) - 8);
                        f[i] = kind == 1 ? sign : kind == 2 && (t & 1) ? 0.0f : mag * rng_normal(seed);
                }
                quantize_row_act(act, f, x + (size_t)(t * xs) * bb, n);
        }
        free(f);
        *ret_base = base;
        return x;
}

/* ---------------------------------------------------------------------------------------
 * Selection, tables. */

static void test_selection(void **state) {
        for (size_t k = 0; k < N_TYPES; k++) {
                const QuantInt8Kernels *q = quant_int8(int8_types[k]);
                assert_non_null(q);
                assert_int_equal(q->type, int8_types[k]);
                assert_string_equal(q->name, quant_traits(int8_types[k])->name);
                /* the pairing: one activation scale per 32 for the 32-wide types, per 256 for K-quants */
                assert_int_equal(q->act, quant_traits(int8_types[k])->block_size == 32 ? QUANT_ACT_Q8X : QUANT_ACT_Q8K);
                assert_true(quant_int8_isa_supported(q->isa));
                assert_non_null(q->dot);
                assert_non_null(q->dot_rows);
                assert_ptr_equal(q->dot, q->dot_variant[q->isa]);
                assert_ptr_equal(q->dot_rows, q->dot_rows_variant[q->isa]);
                for (int isa = 0; isa < QUANT_INT8_ISA_COUNT_; isa++) {
                        const int ok = quant_int8_isa_supported((QuantInt8Isa)isa);
                        assert_int_equal(ok, q->dot_variant[isa] != NULL);
                        assert_int_equal(ok, q->dot_rows_variant[isa] != NULL);
                        if (ok && !getenv("MIXD_ISA"))
                                assert_true(isa <= (int)q->isa); /* the chosen one is the best */
                }
                assert_ptr_equal(quant_int8(int8_types[k]), q);
        }
        static const uint32_t none[] = { GGML_TYPE_F32, GGML_TYPE_F16, GGML_TYPE_Q8_1, GGML_TYPE_Q8_K, GGML_TYPE_BF16,
                                         4, 99, 0xffffffffu };
        for (size_t k = 0; k < sizeof(none) / sizeof(none[0]); k++)
                assert_null(quant_int8(none[k]));
        assert_true(quant_int8_isa_supported(QUANT_INT8_SCALAR));
        assert_false(quant_int8_isa_supported(QUANT_INT8_ISA_COUNT_));
        assert_int_equal(quant_int8_isa_supported(QUANT_INT8_AVX2), quant_isa_supported(QUANT_ISA_AVX2));
        assert_int_equal(quant_int8_isa_supported(QUANT_INT8_AVX512), quant_isa_supported(QUANT_ISA_AVX512));
        if (quant_int8_isa_supported(QUANT_INT8_AVX512_VNNI))
                assert_true(quant_int8_isa_supported(QUANT_INT8_AVX512));
        const QuantInt8Kernels *q = quant_int8(GGML_TYPE_Q4_K);
        int cap;
        if (quant_isa_env(&cap) > 0) /* MIXD_ISA caps the choice */
                assert_true((int)q->isa <= cap);
        print_message("int8 kernels: %s (supported:", quant_int8_isa_name(q->isa));
        for (int isa = 0; isa < QUANT_INT8_ISA_COUNT_; isa++)
                if (quant_int8_isa_supported((QuantInt8Isa)isa))
                        print_message(" %s", quant_int8_isa_name((QuantInt8Isa)isa));
        print_message(")\n");
}

/* quant_int8_half: fp16_to_fp32 bit for bit, all 65536 halves. */
static void test_half(void **state) {
        for (uint32_t h = 0; h < 65536; h++) {
                const float got = quant_int8_half((ggml_half)h), want = fp16_to_fp32((ggml_half)h);
                if (float_bits(got) != float_bits(want))
                        fail_msg("half 0x%04x: 0x%08x, fp16_to_fp32 0x%08x", h, float_bits(got), float_bits(want));
        }
}

/* ---------------------------------------------------------------------------------------
 * quantize_row_q8k. */

static void check_q8k_block(const float *x, const BlockQ8K *y, const char *what) {
        float amax = 0.0f;
        for (int i = 0; i < QK_K; i++)
                amax = fabsf(x[i]) > amax ? fabsf(x[i]) : amax;
        const float d = amax / 127.0f;
        if (d == 0.0f) {
                assert_true(y->d == 0.0f);
                for (int i = 0; i < QK_K; i++)
                        assert_int_equal(y->qs[i], 0);
                for (int g = 0; g < 16; g++)
                        assert_int_equal(y->bsums[g], 0);
                return;
        }
        if (float_bits(y->d) != float_bits(d))
                fail_msg("%s: d %.9g, want max/127 = %.9g", what, y->d, d);
        int hit_max = 0;
        for (int g = 0; g < 16; g++) {
                int s = 0;
                for (int i = 16 * g; i < 16 * g + 16; i++) {
                        const int q = y->qs[i];
                        if (q < -127 || q > 127)
                                fail_msg("%s: q[%d] = %d out of range", what, i, q);
                        /* nearest integer of x/d (halves away from zero) */
                        const double v = (double)(x[i] / d);
                        const double want = v > 127 ? 127 : v < -127 ? -127 : (v >= 0 ? floor(v + 0.5) : -floor(-v + 0.5));
                        if (q != (int)want)
                                fail_msg("%s: q[%d] = %d, x/d = %.9g", what, i, q, v);
                        /* reconstruction within half a step (plus the rounding of x/d), when d
                         * is a normal float (a subnormal d has too few bits for that) */
                        if (d >= 0x1p-126f && !(fabs((double)q * d - x[i]) <= 0.5 * d * (1 + 1e-6)))
                                fail_msg("%s: q[%d] * d = %.9g, x = %.9g", what, i, q * d, x[i]);
                        hit_max |= q == 127 || q == -127;
                        s += q;
                }
                assert_int_equal(y->bsums[g], s);
        }
        if (d >= 0x1p-126f && !hit_max) /* the largest |x| maps to +-127 */
                fail_msg("%s: no quant is +-127", what);
}

static void test_quantize(void **state) {
        uint64_t seed = 0x71386b;
        const int64_t n = 4096;
        float *x = xmalloc((size_t)n * sizeof(float));
        BlockQ8K *y = xmalloc((size_t)(n / QK_K) * sizeof(BlockQ8K)), *y2 = xmalloc((size_t)(n / QK_K) * sizeof(BlockQ8K));
        for (int rep = 0; rep < 64; rep++) {
                const float mag = (float)ldexp(1.0, (int)(rng_next(&seed) % 80) - 40);
                for (int64_t i = 0; i < n; i++)
                        x[i] = mag * rng_normal(&seed);
                switch (rep % 8) {
                case 1: /* some all-zero blocks, a block with one non-zero */
                        memset(x + 256, 0, 256 * sizeof(float));
                        memset(x + 1024, 0, 256 * sizeof(float));
                        x[1024 + 17] = -mag;
                        memset(x + 2048, 0, 256 * sizeof(float));
                        x[2048 + 255] = 3.0f;
                        break;
                case 2: /* exact halves of the step: x = (k + 0.5) * d for a power-of-two d */
                        for (int64_t i = 0; i < n; i++)
                                x[i] = ((float)((int64_t)(rng_next(&seed) % 254) - 127) + 0.5f) * 0.25f;
                        for (int64_t b = 0; b < n / QK_K; b++)
                                x[b * QK_K] = 127.0f * 0.25f;
                        break;
                case 3: /* tiny and subnormal values */
                        for (int64_t i = 0; i < n; i++)
                                x[i] = ldexpf(rng_normal(&seed), -140);
                        break;
                case 4: /* constant sign, one large outlier per block */
                        for (int64_t i = 0; i < n; i++)
                                x[i] = fabsf(x[i]) + (i % QK_K == 100 ? 1000.0f * mag : 0.0f);
                        break;
                default:
                        break;
                }
                quantize_row_q8k(x, y, n);
                for (int64_t b = 0; b < n / QK_K; b++) {
                        char what[64];
                        snprintf(what, sizeof(what), "rep %d block %lld", rep, (long long)b);
                        check_q8k_block(x + b * QK_K, &y[b], what);
                }
                quantize_row_q8k(x, y2, n); /* deterministic */
                assert_memory_equal(y, y2, (size_t)(n / QK_K) * sizeof(BlockQ8K));
        }
        /* all zero */
        memset(x, 0, (size_t)n * sizeof(float));
        memset(y, 0x33, (size_t)(n / QK_K) * sizeof(BlockQ8K));
        quantize_row_q8k(x, y, n);
        for (int64_t b = 0; b < n / QK_K; b++)
                check_q8k_block(x + b * QK_K, &y[b], "zero row");
        /* a NaN makes the block's scale NaN (its quants 0, no undefined behaviour), so the
         * products of the block are NaN: never laundered into a finite number */
        for (int64_t i = 0; i < 2 * QK_K; i++)
                x[i] = (float)(i % 7) - 3.0f;
        x[5] = NAN;
        quantize_row_q8k(x, y, 2 * QK_K);
        assert_true(isnan(y[0].d));
        assert_int_equal(y[0].qs[5], 0);
        assert_int_equal(y[0].qs[6], 0);
        assert_int_equal(y[1].qs[2], 127); /* x[258] = 3: the next block is its own */
        assert_true(y[1].d == 3.0f / 127.0f);
        free(x);
        free(y);
        free(y2);
        print_message("ok   quantize_row_q8k: d = max/127, nearest q in [-127, 127], bsums, zero blocks, deterministic\n");
}

/* quantize_row_q8x: each 32 activations quantized on their own, exactly as a Q8_K block of
 * those 32 values padded with zeros would be (same d, q and bsums), whatever the other
 * blocks hold; an all-zero 32 gets d = 0 and zero quants. */
static void test_quantize_q8x(void **state) {
        uint64_t seed = 0x713878;
        const int64_t n = 1024;
        float *x = xmalloc((size_t)n * sizeof(float)), pad[QK_K];
        BlockQ8X *y = xmalloc((size_t)(n / QK_K) * sizeof(BlockQ8X));
        BlockQ8K k;
        for (int rep = 0; rep < 32; rep++) {
                float mag = 1.0f;
                for (int64_t i = 0; i < n; i++) { /* a magnitude per 32 over 2^40 */
                        if (i % 32 == 0)
                                mag = (float)ldexp(1.0, (int)(rng_next(&seed) % 40) - 20);
                        x[i] = mag * rng_normal(&seed);
                }
                if (rep % 4 == 1)
                        memset(x + 64, 0, 32 * sizeof(float));
                if (rep % 4 == 2)
                        x[300] = NAN;
                quantize_row_q8x(x, y, n);
                for (int64_t j = 0; j < n / 32; j++) {
                        memset(pad, 0, sizeof(pad));
                        memcpy(pad, x + 32 * j, 32 * sizeof(float));
                        quantize_row_q8k(pad, &k, QK_K);
                        const BlockQ8X *b = &y[j / 8];
                        const int o = (int)(j % 8);
                        if (float_bits(b->d[o]) != float_bits(k.d))
                                fail_msg("rep %d block %lld: d %.9g, want %.9g", rep, (long long)j, b->d[o], k.d);
                        assert_memory_equal(b->qs + 32 * o, k.qs, 32);
                        assert_int_equal(b->bsums[2 * o], k.bsums[0]);
                        assert_int_equal(b->bsums[2 * o + 1], k.bsums[1]);
                }
        }
        free(x);
        free(y);
        print_message("ok   quantize_row_q8x: each 32 scaled on its own, as Q8_K would, zero and NaN blocks\n");
}

/* ---------------------------------------------------------------------------------------
 * Every variant against the scalar reference, bit for bit. */

typedef struct Case {
        uint32_t type;
        int64_t n;
        int realistic; /* random_weights()'s scale kind; 2: extreme_weights() */
        int act_kind;
} Case;

static int64_t n_dots_checked;
static int nan_scales; /* the current case has NaN scales: NaN results need only be NaN in every variant */

static int same_result(float got, float want) {
        return float_bits(got) == float_bits(want) || (nan_scales && isnan(got) && isnan(want));
}

/* Checks variant isa of type on R rows x T tokens at row_bytes rb, activations xs blocks
 * apart, against the scalar single dot, plus sentinels around the outputs. */
static void check_rows(const QuantInt8Kernels *q, QuantInt8Isa isa, const uint8_t *w, size_t rb, int64_t R,
                       const void *x, int64_t xs, int64_t T, int64_t n, const float *want, int64_t want_os,
                       const char *what) {
        const int64_t os = R + 3;
        const size_t out_n = (size_t)((T + 1) * os);
        float *base = xmalloc((out_n + 1) * sizeof(float)), *out = base + 1; /* 4 bytes off malloc's alignment */
        for (size_t i = 0; i < out_n; i++)
                out[i] = -12345.0f;
        q->dot_rows_variant[isa](w, rb, R, x, xs, T, out, os, n);
        for (int64_t t = 0; t <= T; t++)
                for (int64_t r = 0; r < os; r++) {
                        const float got = out[t * os + r];
                        if (t >= T || r >= R) {
                                if (got != -12345.0f)
                                        fail_msg("%s %s %s R=%lld T=%lld wrote out[%lld][%lld]", q->name,
                                                 quant_int8_isa_name(isa), what, (long long)R, (long long)T, (long long)t,
                                                 (long long)r);
                                continue;
                        }
                        const float ref = want[t * want_os + r];
                        if (!same_result(got, ref))
                                fail_msg("%s %s %s n=%lld R=%lld T=%lld row %lld token %lld: %.9g (0x%08x), scalar %.9g (0x%08x)",
                                         q->name, quant_int8_isa_name(isa), what, (long long)n, (long long)R, (long long)T,
                                         (long long)r, (long long)t, got, float_bits(got), ref, float_bits(ref));
                        n_dots_checked++;
                }
        free(base);
}

static void run_case(const Case *c, uint64_t *seed) {
        const QuantInt8Kernels *q = quant_int8(c->type);
        const int64_t n = c->n, nb = n / QK_K, R_max = 5, T_max = 16, xs = nb + 1;
        nan_scales = c->realistic == 4;
        size_t bytes;
        uint8_t *wbase = NULL, *w;
        if (c->realistic == 2) {
                w = extreme_weights(c->type, n * R_max, &bytes);
                wbase = w;
        } else {
                w = random_weights(c->type, n * R_max, seed, c->realistic, 2, &bytes, &wbase);
        }
        const size_t rb = bytes / (size_t)R_max;
        void *xbase;
        const size_t bb = quant_act_block_bytes(q->act);
        const uint8_t *x = random_acts(q->act, n, T_max, xs, seed, c->act_kind, &xbase);
        /* reference: the scalar single dot of every (row, token) */
        Int8DotFn ref = q->dot_variant[QUANT_INT8_SCALAR];
        float *want = xmalloc((size_t)(T_max * R_max) * sizeof(float));
        for (int64_t t = 0; t < T_max; t++)
                for (int64_t r = 0; r < R_max; r++)
                        want[t * R_max + r] = ref(w + (size_t)r * rb, x + (size_t)(t * xs) * bb, n);
        for (int isa = 0; isa < QUANT_INT8_ISA_COUNT_; isa++) {
                if (!quant_int8_isa_supported((QuantInt8Isa)isa))
                        continue;
                for (int64_t t = 0; t < T_max; t++)
                        for (int64_t r = 0; r < R_max; r++) {
                                const float got = q->dot_variant[isa](w + (size_t)r * rb, x + (size_t)(t * xs) * bb, n);
                                if (!same_result(got, want[t * R_max + r]))
                                        fail_msg("%s %s single dot n=%lld row %lld token %lld: 0x%08x, scalar 0x%08x", q->name,
                                                 quant_int8_isa_name((QuantInt8Isa)isa), (long long)n, (long long)r,
                                                 (long long)t, float_bits(got), float_bits(want[t * R_max + r]));
                                n_dots_checked++;
                        }
                for (int64_t R = 1; R <= R_max; R++)
                        for (int64_t T = 1; T <= T_max; T++) {
                                if (n > 4096 && T != 1 && T != 8 && T != 9 && T != 16)
                                        continue; /* long rows: fewer shapes */
                                check_rows(q, (QuantInt8Isa)isa, w, rb, R, x, xs, T, n, want, R_max, "rows");
                        }
        }
        free(want);
        free(wbase);
        free(xbase);
}

static void test_variants_exact(void **state) {
        uint64_t seed = 0x696e7438;
        static const int64_t sizes[] = { 256, 512, 768, 1280, 4096 + 768, 14336 };
        for (size_t k = 0; k < N_TYPES; k++) {
                const int64_t before = n_dots_checked;
                for (size_t s = 0; s < sizeof(sizes) / sizeof(sizes[0]); s++) {
                        for (int act = 0; act < 4; act++) {
                                const Case c = { int8_types[k], sizes[s], 0, act };
                                run_case(&c, &seed);
                        }
                        const Case real = { int8_types[k], sizes[s], 1, 0 };
                        run_case(&real, &seed);
                }
                /* infinite scales (the same bits still: only default NaNs arise), NaN scales (NaN
                 * results everywhere; their payloads are not specified) */
                for (int real = 3; real <= 4; real++) {
                        const Case c = { int8_types[k], 1280, real, 0 };
                        run_case(&c, &seed);
                }
                nan_scales = 0;
                /* the widest integer sums: largest quants and scales against +-127 activations */
                for (int act = 0; act < 3; act += 1) {
                        const Case c = { int8_types[k], 1280, 2, act == 0 ? 1 : act };
                        run_case(&c, &seed);
                }
                print_message("ok   %-5s every variant bit-identical to the scalar reference (%lld dots; R 1..5, T 1..16, "
                              "random/extreme blocks, unaligned)\n",
                              quant_int8(int8_types[k])->name, (long long)(n_dots_checked - before));
        }
}

/* Many rows (several of dot_rows' row blocks, which hold 256 KiB of weights) and tokens
 * (several tiles of 8; and few-token tiles over many rows), rows and activations at odd
 * strides. */
static void test_variants_large(void **state) {
        uint64_t seed = 0x6c61726765;
        for (size_t k = 0; k < N_TYPES; k++) {
                const QuantInt8Kernels *q = quant_int8(int8_types[k]);
                const int64_t n = 4096, R = 150, T = 37, nb = n / QK_K, xs = nb + 3; /* T: the most tokens of Ts below */
                size_t bytes;
                uint8_t *wbase;
                const uint8_t *w = random_weights(int8_types[k], n * R, &seed, 0, 2, &bytes, &wbase);
                const size_t rb = bytes / (size_t)R;
                void *xbase;
                const size_t bb = quant_act_block_bytes(q->act);
                const uint8_t *x = random_acts(q->act, n, T, xs, &seed, 0, &xbase);
                float *want = xmalloc((size_t)(T * R) * sizeof(float));
                for (int64_t t = 0; t < T; t++)
                        for (int64_t r = 0; r < R; r++)
                                want[t * R + r] = q->dot_variant[QUANT_INT8_SCALAR](w + (size_t)r * rb, x + (size_t)(t * xs) * bb, n);
                /* 19 tokens: row blocks (512-bit) or 8-row panels (AVX2, QUANT_GEMM_MIN_T and up:
                 * 150 and 147 rows end in a short panel, 37 tokens in a short tile); 2..16: 4-row
                 * groups from the quarters of R (150 and 147 rows: some groups short) */
                static const int64_t Ts[] = { 19, 37, QUANT_GEMM_MIN_T, 2, 3, 8, 16 };
                for (int isa = 0; isa < QUANT_INT8_ISA_COUNT_; isa++)
                        if (quant_int8_isa_supported((QuantInt8Isa)isa))
                                for (size_t i = 0; i < sizeof(Ts) / sizeof(Ts[0]); i++) {
                                        check_rows(q, (QuantInt8Isa)isa, w, rb, R, x, xs, Ts[i], n, want, R, "large");
                                        check_rows(q, (QuantInt8Isa)isa, w, rb, R - 3, x, xs, Ts[i], n, want, R, "large");
                                }
                free(want);
                free(wbase);
                free(xbase);
        }
}

/* ---------------------------------------------------------------------------------------
 * Accuracy against the float path: |int8 dot - sum dequant(w)_i x_i| / sqrt(sum (w_i x_i)^2)
 * with normal activations and realistic scales. Reports the worst and the RMS. */

static void test_accuracy(void **state) {
        uint64_t seed = 0x616363;
        static const int64_t sizes[] = { 4096, 14336 };
        for (size_t k = 0; k < N_TYPES; k++) {
                const QuantInt8Kernels *q = quant_int8(int8_types[k]);
                const QuantTraits *qt = quant_traits(int8_types[k]);
                double worst = 0, sq = 0;
                int count = 0;
                for (size_t s = 0; s < 2; s++) {
                        const int64_t n = sizes[s], R = 48;
                        size_t bytes;
                        uint8_t *wbase;
                        const uint8_t *w = random_weights(int8_types[k], n * R, &seed, 1, 0, &bytes, &wbase);
                        const size_t rb = bytes / (size_t)R;
                        float *wf = xmalloc((size_t)n * sizeof(float)), *xf = xmalloc((size_t)n * sizeof(float));
                        void *xq = xmalloc((size_t)(n / QK_K) * quant_act_block_bytes(q->act));
                        for (int64_t r = 0; r < R; r++) {
                                for (int64_t i = 0; i < n; i++)
                                        xf[i] = rng_normal(&seed);
                                quantize_row_act(q->act, xf, xq, n);
                                qt->dequant_ref(w + (size_t)r * rb, wf, n);
                                double exact = 0, mag = 0;
                                for (int64_t i = 0; i < n; i++) {
                                        const double p = (double)wf[i] * xf[i];
                                        exact += p;
                                        mag += p * p;
                                }
                                const double err = fabs((double)q->dot(w + (size_t)r * rb, xq, n) - exact) / sqrt(mag);
                                worst = err > worst ? err : worst;
                                sq += err * err;
                                count++;
                        }
                        free(wf);
                        free(xf);
                        free(xq);
                        free(wbase);
                }
                print_message("ok   %-5s int8 vs dequantize+dot: worst %.2e, rms %.2e of sqrt(sum (w x)^2) (%d rows)\n", q->name,
                              worst, sqrt(sq / count), count);
                if (!(worst < 0.04))
                        fail_msg("%s: int8 dot error %.3g of sqrt(sum (w x)^2)", q->name, worst);
        }
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_selection),
                cmocka_unit_test(test_half),
                cmocka_unit_test(test_quantize),
                cmocka_unit_test(test_quantize_q8x),
                cmocka_unit_test(test_variants_exact),
                cmocka_unit_test(test_variants_large),
                cmocka_unit_test(test_accuracy),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
