/* engine/quant.c — scalar reference dequantization and dot kernels for every supported
 * ggml type and for attention over KV cache rows (F32, F16, Q8_0), the traits table and the
 * choice of kernels for this CPU (made once, at the
 * first quant_traits() or quant_best_isa() call, under pthread_once). Dequantization
 * reproduces ggml's float operation order exactly (built with -ffp-contract=off so no
 * multiply-add is fused). SIMD twins live in quant_simd.c. Any thread. */
#include "quant.h"

#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stddef.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "engine_limits.h"
#include "kv.h"

float fp16_to_fp32(ggml_half h) {
        uint32_t sign = (uint32_t)(h & 0x8000) << 16;
        uint32_t exp = (h >> 10) & 0x1f;
        uint32_t mant = h & 0x3ff;
        uint32_t bits;
        if (exp == 0x1f) {
                bits = sign | 0x7f800000u | (mant << 13); /* inf / nan */
        } else if (exp != 0) {
                bits = sign | ((exp + 112) << 23) | (mant << 13);
        } else if (mant == 0) {
                bits = sign;
        } else {
                /* subnormal half: normalise */
                int e = -1;
                do {
                        e++;
                        mant <<= 1;
                } while (!(mant & 0x400));
                bits = sign | ((uint32_t)(112 - e) << 23) | ((mant & 0x3ff) << 13);
        }
        float f;
        memcpy(&f, &bits, 4);
        return f;
}

ggml_half fp32_to_fp16(float f) {
        uint32_t x;
        memcpy(&x, &f, 4);
        uint32_t sign = (x >> 16) & 0x8000;
        uint32_t exp = (x >> 23) & 0xff;
        uint32_t mant = x & 0x7fffff;
        if (exp == 0xff)
                return (ggml_half)(sign | 0x7c00 | (mant ? 0x200 : 0));
        int e = (int)exp - 127 + 15;
        if (e >= 0x1f)
                return (ggml_half)(sign | 0x7c00);
        if (e <= 0) {
                if (e < -10)
                        return (ggml_half)sign;
                mant |= 0x800000;
                uint32_t shift = (uint32_t)(14 - e);
                uint32_t half = mant >> shift;
                uint32_t rem = mant & ((1u << shift) - 1), mid = 1u << (shift - 1);
                if (rem > mid || (rem == mid && (half & 1)))
                        half++;
                return (ggml_half)(sign | half);
        }
        uint32_t half = sign | ((uint32_t)e << 10) | (mant >> 13);
        uint32_t rem = mant & 0x1fff;
        if (rem > 0x1000 || (rem == 0x1000 && (half & 1)))
                half++; /* may carry into the exponent: correct rounding to inf */
        return (ggml_half)half;
}

float bf16_to_fp32(uint16_t h) {
        uint32_t bits = (uint32_t)h << 16;
        float f;
        memcpy(&f, &bits, 4);
        return f;
}

#define H(x) fp16_to_fp32(x)

static void dequant_f32(const void *restrict vx, float *restrict y, int64_t n) {
        memcpy(y, vx, (size_t)n * sizeof(float));
}

static void dequant_f16(const void *restrict vx, float *restrict y, int64_t n) {
        const ggml_half *x = vx;
        for (int64_t i = 0; i < n; i++)
                y[i] = H(x[i]);
}

static void dequant_bf16(const void *restrict vx, float *restrict y, int64_t n) {
        const uint16_t *x = vx;
        for (int64_t i = 0; i < n; i++)
                y[i] = bf16_to_fp32(x[i]);
}

static void dequant_q4_0(const void *restrict vx, float *restrict y, int64_t n) {
        const BlockQ4_0 *x = vx;
        for (int64_t b = 0; b < n / QK4_0; b++, y += QK4_0) {
                const float d = H(x[b].d);
                for (int j = 0; j < QK4_0 / 2; j++) {
                        y[j] = ((x[b].qs[j] & 0x0f) - 8) * d;
                        y[j + QK4_0 / 2] = ((x[b].qs[j] >> 4) - 8) * d;
                }
        }
}

static void dequant_q4_1(const void *restrict vx, float *restrict y, int64_t n) {
        const BlockQ4_1 *x = vx;
        for (int64_t b = 0; b < n / QK4_1; b++, y += QK4_1) {
                const float d = H(x[b].d), m = H(x[b].m);
                for (int j = 0; j < QK4_1 / 2; j++) {
                        y[j] = (x[b].qs[j] & 0x0f) * d + m;
                        y[j + QK4_1 / 2] = (x[b].qs[j] >> 4) * d + m;
                }
        }
}

static void dequant_q5_0(const void *restrict vx, float *restrict y, int64_t n) {
        const BlockQ5_0 *x = vx;
        for (int64_t b = 0; b < n / QK5_0; b++, y += QK5_0) {
                const float d = H(x[b].d);
                uint32_t qh;
                memcpy(&qh, x[b].qh, 4);
                for (int j = 0; j < QK5_0 / 2; j++) {
                        const uint8_t hi0 = ((qh >> j) << 4) & 0x10;
                        const uint8_t hi1 = (qh >> (j + 12)) & 0x10;
                        y[j] = (((x[b].qs[j] & 0x0f) | hi0) - 16) * d;
                        y[j + QK5_0 / 2] = (((x[b].qs[j] >> 4) | hi1) - 16) * d;
                }
        }
}

static void dequant_q5_1(const void *restrict vx, float *restrict y, int64_t n) {
        const BlockQ5_1 *x = vx;
        for (int64_t b = 0; b < n / QK5_1; b++, y += QK5_1) {
                const float d = H(x[b].d), m = H(x[b].m);
                uint32_t qh;
                memcpy(&qh, x[b].qh, 4);
                for (int j = 0; j < QK5_1 / 2; j++) {
                        const uint8_t hi0 = ((qh >> j) << 4) & 0x10;
                        const uint8_t hi1 = (qh >> (j + 12)) & 0x10;
                        y[j] = ((x[b].qs[j] & 0x0f) | hi0) * d + m;
                        y[j + QK5_1 / 2] = ((x[b].qs[j] >> 4) | hi1) * d + m;
                }
        }
}

static void dequant_q8_0(const void *restrict vx, float *restrict y, int64_t n) {
        const BlockQ8_0 *x = vx;
        for (int64_t b = 0; b < n / QK8_0; b++, y += QK8_0) {
                const float d = H(x[b].d);
                for (int j = 0; j < QK8_0; j++)
                        y[j] = x[b].qs[j] * d;
        }
}

static void dequant_q2_k(const void *restrict vx, float *restrict y, int64_t n) {
        const BlockQ2_K *x = vx;
        for (int64_t b = 0; b < n / QK_K; b++) {
                const float d = H(x[b].d), dmin = H(x[b].dmin);
                const uint8_t *q = x[b].qs;
                int is = 0;
                /* two halves of 128 weights; each byte holds 4 quants at shifts 0,2,4,6 */
                for (int half = 0; half < 2; half++, q += 32) {
                        for (int shift = 0; shift < 8; shift += 2) {
                                for (int g = 0; g < 2; g++) {
                                        const uint8_t sc = x[b].scales[is++];
                                        const float dl = d * (sc & 0x0f), ml = dmin * (sc >> 4);
                                        for (int l = 0; l < 16; l++)
                                                *y++ = dl * (int8_t)((q[l + 16 * g] >> shift) & 3) - ml;
                                }
                        }
                }
        }
}

void quant_q3_k_scales(const uint8_t packed[12], int8_t out[16]) {
        for (int j = 0; j < 16; j++) {
                const int lo = j < 8 ? (packed[j] & 0x0f) : (packed[j - 8] >> 4);
                const int hi = (packed[8 + (j % 4)] >> (2 * (j / 4))) & 3;
                out[j] = (int8_t)((lo | (hi << 4)) - 32);
        }
}

static void dequant_q3_k(const void *restrict vx, float *restrict y, int64_t n) {
        const BlockQ3_K *x = vx;
        for (int64_t b = 0; b < n / QK_K; b++) {
                const float d_all = H(x[b].d);
                const uint8_t *q = x[b].qs, *hm = x[b].hmask;
                int8_t scales[16];
                uint8_t m = 1;
                int is = 0;
                quant_q3_k_scales(x[b].scales, scales);
                for (int half = 0; half < 2; half++, q += 32) {
                        for (int shift = 0; shift < 8; shift += 2, m <<= 1) {
                                for (int g = 0; g < 2; g++) {
                                        const float dl = d_all * scales[is++];
                                        for (int l = 16 * g; l < 16 * g + 16; l++)
                                                *y++ = dl * ((int8_t)((q[l] >> shift) & 3) - ((hm[l] & m) ? 0 : 4));
                                }
                        }
                }
        }
}

/* The 6-bit scale and min of group j (0..7) of a Q4_K / Q5_K block. */
static void k4_scale_min(int j, const uint8_t *q, uint8_t *ret_sc, uint8_t *ret_m) {
        if (j < 4) {
                *ret_sc = q[j] & 63;
                *ret_m = q[j + 4] & 63;
        } else {
                *ret_sc = (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4);
                *ret_m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
        }
}

static void dequant_q4_k(const void *restrict vx, float *restrict y, int64_t n) {
        const BlockQ4_K *x = vx;
        for (int64_t b = 0; b < n / QK_K; b++) {
                const float d = H(x[b].d), dmin = H(x[b].dmin);
                const uint8_t *q = x[b].qs;
                for (int is = 0; is < 8; is += 2, q += 32) {
                        uint8_t sc, m;
                        k4_scale_min(is, x[b].scales, &sc, &m);
                        const float d1 = d * sc, m1 = dmin * m;
                        k4_scale_min(is + 1, x[b].scales, &sc, &m);
                        const float d2 = d * sc, m2 = dmin * m;
                        for (int l = 0; l < 32; l++)
                                *y++ = d1 * (q[l] & 0x0f) - m1;
                        for (int l = 0; l < 32; l++)
                                *y++ = d2 * (q[l] >> 4) - m2;
                }
        }
}

static void dequant_q5_k(const void *restrict vx, float *restrict y, int64_t n) {
        const BlockQ5_K *x = vx;
        for (int64_t b = 0; b < n / QK_K; b++) {
                const float d = H(x[b].d), dmin = H(x[b].dmin);
                const uint8_t *ql = x[b].qs, *qh = x[b].qh;
                uint8_t u1 = 1, u2 = 2;
                for (int is = 0; is < 8; is += 2, ql += 32, u1 <<= 2, u2 <<= 2) {
                        uint8_t sc, m;
                        k4_scale_min(is, x[b].scales, &sc, &m);
                        const float d1 = d * sc, m1 = dmin * m;
                        k4_scale_min(is + 1, x[b].scales, &sc, &m);
                        const float d2 = d * sc, m2 = dmin * m;
                        for (int l = 0; l < 32; l++)
                                *y++ = d1 * ((ql[l] & 0x0f) + (qh[l] & u1 ? 16 : 0)) - m1;
                        for (int l = 0; l < 32; l++)
                                *y++ = d2 * ((ql[l] >> 4) + (qh[l] & u2 ? 16 : 0)) - m2;
                }
        }
}

static void dequant_q6_k(const void *restrict vx, float *restrict y, int64_t n) {
        const BlockQ6_K *x = vx;
        for (int64_t b = 0; b < n / QK_K; b++) {
                const float d = H(x[b].d);
                const uint8_t *ql = x[b].ql, *qh = x[b].qh;
                const int8_t *sc = x[b].scales;
                for (int half = 0; half < 2; half++, y += 128, ql += 64, qh += 32, sc += 8) {
                        for (int l = 0; l < 32; l++) {
                                const int is = l / 16;
                                const int8_t q1 = (int8_t)((ql[l] & 0x0f) | (((qh[l] >> 0) & 3) << 4)) - 32;
                                const int8_t q2 = (int8_t)((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) - 32;
                                const int8_t q3 = (int8_t)((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                                const int8_t q4 = (int8_t)((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                                y[l] = d * sc[is] * q1;
                                y[l + 32] = d * sc[is + 2] * q2;
                                y[l + 64] = d * sc[is + 4] * q3;
                                y[l + 96] = d * sc[is + 6] * q4;
                        }
                }
        }
}

/* Reference dot kernels: dequantize one block at a time, then a float dot product.
 * Equal to dequantize-then-dot by construction; SIMD kernels are tested against these. */
#define DEFINE_VEC_DOT(suffix, BLOCK_T, QK)                                                          \
        static float vec_dot_##suffix(const void *restrict vw, const float *restrict a, int64_t n) { \
                const BLOCK_T *w = vw;                                                               \
                float tmp[QK], sum = 0.0f;                                                           \
                for (int64_t b = 0; b < n / (QK); b++) {                                             \
                        dequant_##suffix(&w[b], tmp, QK);                                            \
                        float s = 0.0f;                                                              \
                        for (int j = 0; j < (QK); j++)                                               \
                                s += tmp[j] * a[b * (QK) + j];                                       \
                        sum += s;                                                                    \
                }                                                                                    \
                return sum;                                                                          \
        }

DEFINE_VEC_DOT(q4_0, BlockQ4_0, QK4_0)
DEFINE_VEC_DOT(q4_1, BlockQ4_1, QK4_1)
DEFINE_VEC_DOT(q5_0, BlockQ5_0, QK5_0)
DEFINE_VEC_DOT(q5_1, BlockQ5_1, QK5_1)
DEFINE_VEC_DOT(q8_0, BlockQ8_0, QK8_0)
DEFINE_VEC_DOT(q2_k, BlockQ2_K, QK_K)
DEFINE_VEC_DOT(q3_k, BlockQ3_K, QK_K)
DEFINE_VEC_DOT(q4_k, BlockQ4_K, QK_K)
DEFINE_VEC_DOT(q5_k, BlockQ5_K, QK_K)
DEFINE_VEC_DOT(q6_k, BlockQ6_K, QK_K)

static float vec_dot_f32(const void *restrict vw, const float *restrict a, int64_t n) {
        const float *w = vw;
        float sum = 0.0f;
        for (int64_t i = 0; i < n; i++)
                sum += w[i] * a[i];
        return sum;
}

static float vec_dot_f16(const void *restrict vw, const float *restrict a, int64_t n) {
        const ggml_half *w = vw;
        float sum = 0.0f;
        for (int64_t i = 0; i < n; i++)
                sum += H(w[i]) * a[i];
        return sum;
}

static float vec_dot_bf16(const void *restrict vw, const float *restrict a, int64_t n) {
        const uint16_t *w = vw;
        float sum = 0.0f;
        for (int64_t i = 0; i < n; i++)
                sum += bf16_to_fp32(w[i]) * a[i];
        return sum;
}

/* The portable dot_f32: 8 interleaved accumulators (element i of each full group of 8 into
 * acc[i % 8]), a fixed pairwise sum, then the tail in order. */
float quant_dot_f32_scalar(const float *a, const float *b, int64_t n) {
        float acc[8] = { 0 };
        int64_t i = 0;
        for (; i + 8 <= n; i += 8)
                for (int j = 0; j < 8; j++)
                        acc[j] += a[i + j] * b[i + j];
        float s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
        for (; i < n; i++)
                s += a[i] * b[i];
        return s;
}

/* ---- attention over KV rows (quant.h KVDotFn / KVAxpyFn): the portable references ----
 * Each row is decoded exactly (kv_decode); a key's score is the portable dot_f32 of the
 * query and the row times the scale; a value row is added as y + p * x per number. */

static void kv_dot_scalar(const float *q, uint32_t n_q, const void *k, size_t k_stride, int64_t n_k, int64_t n,
                          float scale, float *out, int64_t out_ld, uint32_t type) {
        float row[MODEL_MAX_HEAD_DIM];
        for (int64_t i = 0; i < n_k; i++) {
                kv_decode(type, (const uint8_t *)k + (size_t)i * k_stride, (size_t)n, row);
                for (uint32_t g = 0; g < n_q; g++)
                        out[g * out_ld + i] = quant_dot_f32_scalar(q + (size_t)g * n, row, n) * scale;
        }
}

void quant_kv_axpy_scalar(float *out, uint32_t n_q, const float *p, int64_t ld, const void *v, size_t v_stride,
                           int64_t n_k, int64_t n, uint32_t type) {
        float row[MODEL_MAX_HEAD_DIM];
        for (int64_t i = 0; i < n_k; i++) {
                kv_decode(type, (const uint8_t *)v + (size_t)i * v_stride, (size_t)n, row);
                for (uint32_t g = 0; g < n_q; g++) {
                        float *y = out + (size_t)g * n;
                        const float a = p[g * ld + i];
                        for (int64_t j = 0; j < n; j++)
                                y[j] += a * row[j];
                }
        }
}

#define DEFINE_KV_SCALAR(suffix, T)                                                                  \
        static void kv_dot_##suffix##_scalar(const float *q, uint32_t n_q, const void *k, size_t k_stride, \
                                             int64_t n_k, const void *prefetch, int64_t n, float scale, float *out, \
                                             int64_t out_ld) {                                      \
                (void)prefetch;                                                                      \
                kv_dot_scalar(q, n_q, k, k_stride, n_k, n, scale, out, out_ld, T);                   \
        }                                                                                            \
        static void kv_axpy_##suffix##_scalar(float *out, uint32_t n_q, const float *p, int64_t ld, const void *v, \
                                              size_t v_stride, int64_t n_k, int64_t n) {             \
                quant_kv_axpy_scalar(out, n_q, p, ld, v, v_stride, n_k, n, T);                             \
        }

DEFINE_KV_SCALAR(f32, GGML_TYPE_F32)
DEFINE_KV_SCALAR(f16, GGML_TYPE_F16)
DEFINE_KV_SCALAR(q8_0, GGML_TYPE_Q8_0)

/* dequant and dot_rows start as the scalar reference / NULL and are filled in by select_kernels(). */
static QuantTraits traits[GGML_TYPE_COUNT_] = {
        [GGML_TYPE_F32]  = { "F32",  1,     4,                  dequant_f32,  vec_dot_f32,  dequant_f32,  NULL },
        [GGML_TYPE_F16]  = { "F16",  1,     2,                  dequant_f16,  vec_dot_f16,  dequant_f16,  NULL },
        [GGML_TYPE_BF16] = { "BF16", 1,     2,                  dequant_bf16, vec_dot_bf16, dequant_bf16, NULL },
        [GGML_TYPE_Q4_0] = { "Q4_0", QK4_0, sizeof(BlockQ4_0), dequant_q4_0, vec_dot_q4_0, dequant_q4_0, NULL },
        [GGML_TYPE_Q4_1] = { "Q4_1", QK4_1, sizeof(BlockQ4_1), dequant_q4_1, vec_dot_q4_1, dequant_q4_1, NULL },
        [GGML_TYPE_Q5_0] = { "Q5_0", QK5_0, sizeof(BlockQ5_0), dequant_q5_0, vec_dot_q5_0, dequant_q5_0, NULL },
        [GGML_TYPE_Q5_1] = { "Q5_1", QK5_1, sizeof(BlockQ5_1), dequant_q5_1, vec_dot_q5_1, dequant_q5_1, NULL },
        [GGML_TYPE_Q8_0] = { "Q8_0", QK8_0, sizeof(BlockQ8_0), dequant_q8_0, vec_dot_q8_0, dequant_q8_0, NULL },
        [GGML_TYPE_Q2_K] = { "Q2_K", QK_K,  sizeof(BlockQ2_K), dequant_q2_k, vec_dot_q2_k, dequant_q2_k, NULL },
        [GGML_TYPE_Q3_K] = { "Q3_K", QK_K,  sizeof(BlockQ3_K), dequant_q3_k, vec_dot_q3_k, dequant_q3_k, NULL },
        [GGML_TYPE_Q4_K] = { "Q4_K", QK_K,  sizeof(BlockQ4_K), dequant_q4_k, vec_dot_q4_k, dequant_q4_k, NULL },
        [GGML_TYPE_Q5_K] = { "Q5_K", QK_K,  sizeof(BlockQ5_K), dequant_q5_k, vec_dot_q5_k, dequant_q5_k, NULL },
        [GGML_TYPE_Q6_K] = { "Q6_K", QK_K,  sizeof(BlockQ6_K), dequant_q6_k, vec_dot_q6_k, dequant_q6_k, NULL },
};

static pthread_once_t select_once = PTHREAD_ONCE_INIT;
static int isa_ok[QUANT_ISA_COUNT_];      /* what this CPU can run, decided once */
static QuantIsa best_isa = QUANT_ISA_SCALAR;

static DequantFn dequant_for(uint32_t type, QuantIsa isa) {
        DequantFn f = isa == QUANT_ISA_SCALAR ? NULL : quant_simd_dequant(type, isa);
        return f ? f : traits[type].dequant_ref;
}

int quant_isa_env(int *ret_level) {
        static const char *const names[] = { "scalar", "avx2", "avx512", "avx512vnni" };
        const char *e = getenv("MIXD_ISA");
        *ret_level = 3;
        if (!e || !*e)
                return 0;
        for (int i = 0; i < 4; i++)
                if (!strcmp(e, names[i])) {
                        *ret_level = i;
                        return 1;
                }
        return -EINVAL;
}

static void select_kernels(void) {
        int cap;
        quant_isa_env(&cap); /* avx512vnni (3) caps the float kernels at avx512 */
        isa_ok[QUANT_ISA_SCALAR] = 1;
        for (int i = QUANT_ISA_SCALAR + 1; i < QUANT_ISA_COUNT_; i++) {
                isa_ok[i] = quant_simd_cpu_has((QuantIsa)i);
                if (isa_ok[i] && i <= cap)
                        best_isa = (QuantIsa)i;
        }
        for (uint32_t t = 0; t < GGML_TYPE_COUNT_; t++) {
                if (!traits[t].name)
                        continue;
                traits[t].dequant = dequant_for(t, best_isa);
                traits[t].dot_rows = best_isa == QUANT_ISA_SCALAR ? NULL : quant_simd_dot_rows(t, best_isa);
        }
}

QuantIsa quant_best_isa(void) {
        pthread_once(&select_once, select_kernels);
        return best_isa;
}

int quant_isa_supported(QuantIsa isa) {
        if (isa < 0 || isa >= QUANT_ISA_COUNT_)
                return 0;
        pthread_once(&select_once, select_kernels);
        return isa_ok[isa];
}

const char *quant_isa_name(QuantIsa isa) {
        static const char *const names[QUANT_ISA_COUNT_] = {
                [QUANT_ISA_SCALAR] = "scalar", [QUANT_ISA_AVX2] = "avx2", [QUANT_ISA_AVX512] = "avx512"
        };
        return isa >= 0 && isa < QUANT_ISA_COUNT_ ? names[isa] : "?";
}

DequantFn quant_dequant_variant(uint32_t type, QuantIsa isa) {
        if (type >= GGML_TYPE_COUNT_ || !traits[type].name || !quant_isa_supported(isa))
                return NULL;
        return dequant_for(type, isa);
}

DotRowsFn quant_dot_rows_variant(uint32_t type, QuantIsa isa) {
        if (type >= GGML_TYPE_COUNT_ || !traits[type].name || isa == QUANT_ISA_SCALAR || !quant_isa_supported(isa))
                return NULL;
        return quant_simd_dot_rows(type, isa);
}

DotF32Fn quant_dot_f32_variant(QuantIsa isa) {
        if (!quant_isa_supported(isa))
                return NULL;
        return isa == QUANT_ISA_SCALAR ? quant_dot_f32_scalar : quant_simd_dot_f32(isa);
}

KVDotFn quant_kv_dot_variant(uint32_t type, QuantIsa isa) {
        if (!quant_isa_supported(isa))
                return NULL;
        if (isa != QUANT_ISA_SCALAR)
                return quant_simd_kv_dot(type, isa);
        switch (type) {
        case GGML_TYPE_F32: return kv_dot_f32_scalar;
        case GGML_TYPE_F16: return kv_dot_f16_scalar;
        case GGML_TYPE_Q8_0: return kv_dot_q8_0_scalar;
        default: return NULL;
        }
}

KVAxpyFn quant_kv_axpy_variant(uint32_t type, QuantIsa isa) {
        if (!quant_isa_supported(isa))
                return NULL;
        if (isa != QUANT_ISA_SCALAR)
                return quant_simd_kv_axpy(type, isa);
        switch (type) {
        case GGML_TYPE_F32: return kv_axpy_f32_scalar;
        case GGML_TYPE_F16: return kv_axpy_f16_scalar;
        case GGML_TYPE_Q8_0: return kv_axpy_q8_0_scalar;
        default: return NULL;
        }
}

const QuantTraits *quant_traits(uint32_t type) {
        if (type >= GGML_TYPE_COUNT_ || !traits[type].name)
                return NULL;
        pthread_once(&select_once, select_kernels);
        return &traits[type];
}

int quant_row_bytes(uint32_t type, uint64_t n, uint64_t *ret_bytes) {
        const QuantTraits *t = quant_traits(type);
        if (!t || n % t->block_size != 0)
                return -EINVAL;
        if (__builtin_mul_overflow(n / t->block_size, (uint64_t)t->type_size, ret_bytes))
                return -EOVERFLOW;
        return 0;
}

/* Byte offsets of the fp16 scales (and minimums) in one block of each quantized type: the
 * only floats a block holds (its quants are integers). */
static const struct {
        uint8_t n;
        uint8_t off[2];
} half_scales[GGML_TYPE_COUNT_] = {
        [GGML_TYPE_Q4_0] = { 1, { offsetof(BlockQ4_0, d) } },
        [GGML_TYPE_Q4_1] = { 2, { offsetof(BlockQ4_1, d), offsetof(BlockQ4_1, m) } },
        [GGML_TYPE_Q5_0] = { 1, { offsetof(BlockQ5_0, d) } },
        [GGML_TYPE_Q5_1] = { 2, { offsetof(BlockQ5_1, d), offsetof(BlockQ5_1, m) } },
        [GGML_TYPE_Q8_0] = { 1, { offsetof(BlockQ8_0, d) } },
        [GGML_TYPE_Q2_K] = { 2, { offsetof(BlockQ2_K, d), offsetof(BlockQ2_K, dmin) } },
        [GGML_TYPE_Q3_K] = { 1, { offsetof(BlockQ3_K, d) } },
        [GGML_TYPE_Q4_K] = { 2, { offsetof(BlockQ4_K, d), offsetof(BlockQ4_K, dmin) } },
        [GGML_TYPE_Q5_K] = { 2, { offsetof(BlockQ5_K, d), offsetof(BlockQ5_K, dmin) } },
        [GGML_TYPE_Q6_K] = { 1, { offsetof(BlockQ6_K, d) } },
};

int quant_check_finite(uint32_t type, const void *data, uint64_t n, uint64_t *ret_index) {
        const QuantTraits *t = quant_traits(type);
        const uint8_t *p = data;
        if (!t || n % t->block_size != 0)
                return -EINVAL;
        const uint64_t n_blocks = n / t->block_size;
        for (uint64_t b = 0; b < n_blocks; b++, p += t->type_size) {
                bool ok = true;
                uint16_t h;
                float f;
                switch (type) {
                case GGML_TYPE_F32:
                        memcpy(&f, p, sizeof(f));
                        ok = isfinite(f);
                        break;
                case GGML_TYPE_F16:
                        memcpy(&h, p, sizeof(h));
                        ok = (h & 0x7c00) != 0x7c00; /* exponent all ones: infinity or NaN */
                        break;
                case GGML_TYPE_BF16:
                        memcpy(&h, p, sizeof(h));
                        ok = (h & 0x7f80) != 0x7f80;
                        break;
                default:
                        for (unsigned i = 0; i < half_scales[type].n && ok; i++) {
                                memcpy(&h, p + half_scales[type].off[i], sizeof(h));
                                ok = (h & 0x7c00) != 0x7c00;
                        }
                        break;
                }
                if (!ok) {
                        *ret_index = b * t->block_size;
                        return -EBADMSG;
                }
        }
        return 0;
}
