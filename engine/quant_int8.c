/* engine/quant_int8.c — the int8 path (see quant_int8.h): activation quantization to
 * BlockQ8K and integer dot kernels for Q4_K, Q5_K, Q6_K and Q8_0 weights, as a scalar
 * reference plus AVX2, AVX-512 and AVX-512 VNNI variants chosen once at run time (the build
 * is plain x86-64; SIMD functions carry target attributes). Any thread.
 *
 * Exactness. A weight row's dot with a quantized activation row is, per 256-weight
 * super-block, a handful of integers (sums of int8 x small-int products, weighted by the
 * block's 6- or 8-bit scales) combined with the float scales. Every variant computes those
 * integers exactly (no saturation anywhere: the widest vpmaddubsw pair is 2 * 128 * 127 =
 * 32512; every int32 sum stays below 2^28). The float part is defined once, below ("Float
 * part"): per super-block a term made by a fixed sequence of IEEE operations from the
 * integers and the scales, added to the (row, token) accumulator in super-block order. The
 * scalar reference calls those inline functions; the SIMD variants evaluate the same
 * sequence for 4 super-blocks (T = 1) or 4 tokens at once in the lanes of packed
 * instructions (one IEEE operation per lane per instruction, same operands, same order,
 * no FMA: -ffp-contract=off), then add the terms in the same order. fp16 scales go through
 * F16C, which equals quant_int8_half() except on NaNs: those take quant_int8_half(). So
 * all variants, any tile shape, give the same bits, on any x86-64 CPU (infinite scales
 * included; a NaN scale gives a NaN everywhere, its payload unspecified);
 * tests/unit/test_int8.c checks it.
 *
 * Speed (Zen 4): Q4_K/Q5_K per token and super-block take 8 vpmaddubsw + 8 vpmaddwd on
 * 256-bit vectors (VNNI: 8 vpdpbusd + 4 vpdpwssd), the 512-bit forms being double-pumped
 * there; the horizontal sums are shared by 4 super-blocks or 4 tokens (one transposing
 * hadd tree); T = 1 rows are software-prefetched. With 2 threads T = 1 runs at about the
 * read bandwidth (tools/bench_int8.c).
 *
 * The SIMD kernels are written once (the QI8_TEMPLATE section at the end of this file)
 * and compiled three times by including this file into itself: AVX2, AVX-512, AVX-512 with
 * VNNI, since an instruction may not appear, even unused, in a function built without its
 * extension. */
#ifndef QI8_TEMPLATE

#include "quant_int8.h"
#include "quant_gemm.h"
#include "quant_x86.h"

#include <math.h>
#include <pthread.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#define INLINE static inline __attribute__((always_inline))

/* ---------------------------------------------------------------------------------------
 * Activation quantization. */

/* The largest |x[i]| of n floats (n a multiple of 4), or NaN if one of them is a NaN: the
 * block's scale is then NaN, so every product it enters is NaN. A NaN must not quantize to
 * a finite number: a corrupt weight would then give plausible garbage (greedy decoding
 * emitting token 0 forever) instead of the non-finite logits the requests check for. */
static float block_amax(const float *x, int n) {
#if defined(__x86_64__) /* SSE2: the same maximum, 4 lanes at a time */
        const __m128 abs_mask = _mm_castsi128_ps(_mm_set1_epi32(0x7fffffff));
        __m128 m = _mm_setzero_ps(), nan = _mm_setzero_ps();
        for (int i = 0; i < n; i += 4) {
                const __m128 v = _mm_loadu_ps(x + i);
                nan = _mm_or_ps(nan, _mm_cmpunord_ps(v, v));
                m = _mm_max_ps(_mm_and_ps(v, abs_mask), m); /* a NaN lane keeps m */
        }
        if (_mm_movemask_ps(nan))
                return NAN;
        m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
        return _mm_cvtss_f32(m);
#else
        float amax = 0.0f;
        for (int i = 0; i < n; i++) {
                const float a = fabsf(x[i]);
                if (a != a)
                        return NAN;
                if (a > amax)
                        amax = a;
        }
        return amax;
#endif
}

#if !defined(__x86_64__)
/* Nearest integer of v (|v| <= 127), halves away from zero, without depending on the
 * rounding mode: truncation and the remainder are exact here. */
static inline int round_q8(float v) {
        const int q = (int)v;
        const float frac = v - (float)q;
        return q + (frac >= 0.5f) - (frac <= -0.5f);
}
#endif

/* qs and bsums of a group of 16 with scale d: q = round_q8(clamp(x / d)), NaN -> 0 (so all 0
 * when d is NaN: the scale carries the NaN); all 0 when d is 0 (an all-zero group, or one so
 * small that its scale underflows). */
static void group_quantize(const float *x, float d, int8_t *qs, int16_t *bsum) {
        if (d == 0.0f) {
                memset(qs, 0, 16);
                *bsum = 0;
                return;
        }
#if defined(__x86_64__) /* SSE2, lane by lane the same operations as the scalar loop */
        const __m128 vd = _mm_set1_ps(d), hi = _mm_set1_ps(127.0f), lo = _mm_set1_ps(-127.0f);
        const __m128 half = _mm_set1_ps(0.5f), mhalf = _mm_set1_ps(-0.5f);
        __m128i q4[4];
        for (int k = 0; k < 4; k++) {
                const __m128 v0 = _mm_div_ps(_mm_loadu_ps(x + 4 * k), vd);
                const __m128 ok = _mm_cmpord_ps(v0, v0);               /* not NaN */
                const __m128 v = _mm_max_ps(_mm_min_ps(v0, hi), lo);   /* NaN lanes: masked below */
                __m128i q = _mm_cvttps_epi32(v);
                const __m128 frac = _mm_sub_ps(v, _mm_cvtepi32_ps(q));
                q = _mm_sub_epi32(q, _mm_castps_si128(_mm_cmpge_ps(frac, half)));  /* + 1 */
                q = _mm_add_epi32(q, _mm_castps_si128(_mm_cmple_ps(frac, mhalf))); /* - 1 */
                q4[k] = _mm_and_si128(q, _mm_castps_si128(ok));
        }
        const __m128i q16 = _mm_packs_epi16(_mm_packs_epi32(q4[0], q4[1]), _mm_packs_epi32(q4[2], q4[3]));
        _mm_storeu_si128((__m128i *)qs, q16);
        /* sum of the 16 signed bytes: psadbw of the bytes + 128, minus 16 * 128 */
        const __m128i sad = _mm_sad_epu8(_mm_xor_si128(q16, _mm_set1_epi8((char)0x80)), _mm_setzero_si128());
        *bsum = (int16_t)(_mm_cvtsi128_si32(sad) + _mm_cvtsi128_si32(_mm_srli_si128(sad, 8)) - 16 * 128);
#else
        int s = 0;
        for (int i = 0; i < 16; i++) {
                float v = x[i] / d;
                v = v > 127.0f ? 127.0f : v < -127.0f ? -127.0f : v;
                const int q = v == v ? round_q8(v) : 0; /* NaN: 0 */
                qs[i] = (int8_t)q;
                s += q;
        }
        *bsum = (int16_t)s;
#endif
}

void quantize_row_q8k(const float *restrict x, BlockQ8K *restrict y, int64_t n) {
        for (int64_t b = 0; b < n / QK_K; b++, x += QK_K) {
                const float d = block_amax(x, QK_K) / 127.0f;
                y[b].d = d;
                for (int g = 0; g < QK_K / 16; g++)
                        group_quantize(x + 16 * g, d, y[b].qs + 16 * g, &y[b].bsums[g]);
        }
}

void quantize_row_q8x(const float *restrict x, BlockQ8X *restrict y, int64_t n) {
        for (int64_t b = 0; b < n / QK_K; b++, x += QK_K) {
                for (int j = 0; j < 8; j++) {
                        const float d = block_amax(x + 32 * j, 32) / 127.0f;
                        y[b].d[j] = d;
                        group_quantize(x + 32 * j, d, y[b].qs + 32 * j, &y[b].bsums[2 * j]);
                        group_quantize(x + 32 * j + 16, d, y[b].qs + 32 * j + 16, &y[b].bsums[2 * j + 1]);
                }
        }
}

void quantize_row_act(QuantAct act, const float *restrict x, void *restrict dst, int64_t n) {
        if (act == QUANT_ACT_Q8X)
                quantize_row_q8x(x, dst, n);
        else
                quantize_row_q8k(x, dst, n);
}

size_t quant_act_block_bytes(QuantAct act) {
        return act == QUANT_ACT_Q8X ? sizeof(BlockQ8X) : sizeof(BlockQ8K);
}

/* ---------------------------------------------------------------------------------------
 * Float part: the only float arithmetic of the dot kernels. Per super-block, a term from
 * the integer sums, the activation block's scale xd and the weights' scales; the
 * (row, token) accumulator then becomes acc + term, super-block by super-block. */

/* Q4_K, Q5_K: isum = sum_j sc_j S_j (S_j: sum of q x over group j), msum = sum_j m_j X_j
 * (X_j: sum of x over group j); wd, wm: the block's d and dmin. */
INLINE float term_k4(float xd, float wd, float wm, int32_t isum, int32_t msum) {
        return (xd * wd) * (float)isum - (xd * wm) * (float)msum;
}

/* Q6_K: isum = sum_g sc_g sum_i (q_i - 32) x_i. */
INLINE float term_q6k(float xd, float wd, int32_t isum) {
        return (xd * wd) * (float)isum;
}

/* The legacy types (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0), per 256 weights = 8 blocks of 32:
 * s[i] = sum q x over block i (q the block's signed integer weights: q - 8 for Q4_0, ...),
 * wd[i] its scale, xd[i] the activation block's; Q4_1 / Q5_1 (wm != NULL) add their minimum
 * wm[i] times xs[i] = sum x over the block. */
INLINE float term_leg(const float wd[8], const float xd[8], const int32_t s[8], const float *wm, const int32_t *xs) {
        float p[8];
        for (int i = 0; i < 8; i++) {
                p[i] = (wd[i] * xd[i]) * (float)s[i];
                if (wm)
                        p[i] = p[i] + (wm[i] * xd[i]) * (float)xs[i];
        }
        return ((p[0] + p[1]) + (p[2] + p[3])) + ((p[4] + p[5]) + (p[6] + p[7]));
}

/* ---------------------------------------------------------------------------------------
 * Scalar reference: the integers straight from the definitions. */

/* Q4_K (qh == NULL) and Q5_K: group j is the low (j even) or high nibbles of qs[32 (j/2) ..],
 * plus 16 where bit j of qh[l] is set. X_j comes from bsums. */
static void k45_sums_ref(const uint8_t *scales, const uint8_t *qs, const uint8_t *qh, const BlockQ8K *x,
                         int32_t *ret_isum, int32_t *ret_msum) {
        int32_t sc[8], m[8], isum = 0, msum = 0;
        k4_scales(scales, sc, m);
        for (int j = 0; j < 8; j++) {
                const uint8_t *q = qs + 32 * (j / 2);
                int32_t s = 0;
                for (int l = 0; l < 32; l++) {
                        int32_t w = (q[l] >> (4 * (j & 1))) & 15;
                        if (qh)
                                w += ((qh[l] >> j) & 1) << 4;
                        s += w * x->qs[32 * j + l];
                }
                isum += sc[j] * s;
                msum += m[j] * (x->bsums[2 * j] + x->bsums[2 * j + 1]);
        }
        *ret_isum = isum;
        *ret_msum = msum;
}

static float dot_q4k_scalar(const void *restrict vw, const void *restrict vx, int64_t n) {
        const BlockQ8K *x = vx;
        const BlockQ4_K *w = vw;
        float acc = 0.0f;
        for (int64_t b = 0; b < n / QK_K; b++) {
                int32_t isum, msum;
                k45_sums_ref(w[b].scales, w[b].qs, NULL, &x[b], &isum, &msum);
                acc = acc + term_k4(x[b].d, quant_int8_half(w[b].d), quant_int8_half(w[b].dmin), isum, msum);
        }
        return acc;
}

static float dot_q5k_scalar(const void *restrict vw, const void *restrict vx, int64_t n) {
        const BlockQ8K *x = vx;
        const BlockQ5_K *w = vw;
        float acc = 0.0f;
        for (int64_t b = 0; b < n / QK_K; b++) {
                int32_t isum, msum;
                k45_sums_ref(w[b].scales, w[b].qs, w[b].qh, &x[b], &isum, &msum);
                acc = acc + term_k4(x[b].d, quant_int8_half(w[b].d), quant_int8_half(w[b].dmin), isum, msum);
        }
        return acc;
}

/* Q6_K: isum = sum_g sc_g sum_{i in g} q_i x_i - 32 sum_g sc_g bsums_g with q_i = 0..63 (the
 * same integer as sum sc (q - 32) x, bsums matching qs). */
static float dot_q6k_scalar(const void *restrict vw, const void *restrict vx, int64_t n) {
        const BlockQ8K *x = vx;
        const BlockQ6_K *w = vw;
        float acc = 0.0f;
        for (int64_t b = 0; b < n / QK_K; b++) {
                uint8_t q[QK_K];
                for (int h = 0; h < 2; h++) {
                        const uint8_t *ql = w[b].ql + 64 * h, *qh = w[b].qh + 32 * h;
                        for (int l = 0; l < 32; l++) {
                                q[128 * h + l] = (uint8_t)((ql[l] & 15) | ((qh[l] & 3) << 4));
                                q[128 * h + l + 32] = (uint8_t)((ql[l + 32] & 15) | (((qh[l] >> 2) & 3) << 4));
                                q[128 * h + l + 64] = (uint8_t)((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4));
                                q[128 * h + l + 96] = (uint8_t)((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4));
                        }
                }
                int32_t raw = 0, msum = 0;
                for (int g = 0; g < 16; g++) {
                        int32_t s = 0;
                        for (int l = 16 * g; l < 16 * g + 16; l++)
                                s += q[l] * x[b].qs[l];
                        raw += w[b].scales[g] * s;
                        msum += w[b].scales[g] * x[b].bsums[g];
                }
                acc = acc + term_q6k(x[b].d, quant_int8_half(w[b].d), raw - 32 * msum);
        }
        return acc;
}

/* The 32 integer weights of legacy block blk of type (as ggml's dequantizers read them, the
 * offset taken out for Q4_0 / Q5_0), its scale and (Q4_1 / Q5_1) its minimum. */
static void leg_block_ref(uint32_t type, const uint8_t *blk, int32_t q[32], float *ret_d, float *ret_m) {
        ggml_half d, m = 0;
        memcpy(&d, blk, 2);
        uint32_t qh = 0;
        const uint8_t *qs;
        int off = 0;
        switch (type) {
        case GGML_TYPE_Q8_0:
                for (int l = 0; l < 32; l++)
                        q[l] = ((const BlockQ8_0 *)blk)->qs[l];
                *ret_d = quant_int8_half(d);
                *ret_m = 0.0f;
                return;
        case GGML_TYPE_Q4_0: qs = ((const BlockQ4_0 *)blk)->qs; off = 8; break;
        case GGML_TYPE_Q4_1: qs = ((const BlockQ4_1 *)blk)->qs; memcpy(&m, blk + 2, 2); break;
        case GGML_TYPE_Q5_0: qs = ((const BlockQ5_0 *)blk)->qs; memcpy(&qh, blk + 2, 4); off = 16; break;
        default: /* Q5_1 */  qs = ((const BlockQ5_1 *)blk)->qs; memcpy(&m, blk + 2, 2); memcpy(&qh, blk + 4, 4); break;
        }
        for (int l = 0; l < 16; l++) {
                q[l] = (int32_t)((qs[l] & 15) | (((qh >> l) & 1) << 4)) - off;
                q[l + 16] = (int32_t)((qs[l] >> 4) | (((qh >> (l + 16)) & 1) << 4)) - off;
        }
        *ret_d = quant_int8_half(d);
        *ret_m = quant_int8_half(m);
}

static float dot_leg_ref(uint32_t type, size_t bsz, const void *restrict vw, const void *restrict vx, int64_t n) {
        const uint8_t *w = vw;
        const BlockQ8X *x = vx;
        const int has_m = type == GGML_TYPE_Q4_1 || type == GGML_TYPE_Q5_1;
        float acc = 0.0f;
        for (int64_t b = 0; b < n / QK_K; b++) {
                int32_t s[8], xs[8];
                float wd[8], wm[8];
                for (int i = 0; i < 8; i++) {
                        int32_t q[32];
                        leg_block_ref(type, w + (size_t)(8 * b + i) * bsz, q, &wd[i], &wm[i]);
                        s[i] = 0;
                        for (int l = 0; l < 32; l++)
                                s[i] += q[l] * x[b].qs[32 * i + l];
                        xs[i] = x[b].bsums[2 * i] + x[b].bsums[2 * i + 1];
                }
                acc = acc + term_leg(wd, x[b].d, s, has_m ? wm : NULL, xs);
        }
        return acc;
}

static float dot_q8_0_scalar(const void *restrict w, const void *restrict x, int64_t n) {
        return dot_leg_ref(GGML_TYPE_Q8_0, sizeof(BlockQ8_0), w, x, n);
}
static float dot_q4_0_scalar(const void *restrict w, const void *restrict x, int64_t n) {
        return dot_leg_ref(GGML_TYPE_Q4_0, sizeof(BlockQ4_0), w, x, n);
}
static float dot_q4_1_scalar(const void *restrict w, const void *restrict x, int64_t n) {
        return dot_leg_ref(GGML_TYPE_Q4_1, sizeof(BlockQ4_1), w, x, n);
}
static float dot_q5_0_scalar(const void *restrict w, const void *restrict x, int64_t n) {
        return dot_leg_ref(GGML_TYPE_Q5_0, sizeof(BlockQ5_0), w, x, n);
}
static float dot_q5_1_scalar(const void *restrict w, const void *restrict x, int64_t n) {
        return dot_leg_ref(GGML_TYPE_Q5_1, sizeof(BlockQ5_1), w, x, n);
}

/* The 2-bit quant of weight i (0..255) of a Q2_K / Q3_K super-block's qs (as ggml lays them
 * out: byte 32 (i / 128) + i % 32, bits 2 ((i % 128) / 32)). */
static inline int k2_quant(const uint8_t *qs, int i) {
        return (qs[32 * (i / 128) + i % 32] >> (2 * ((i % 128) / 32))) & 3;
}

/* Q2_K: 16 groups of 16; group g = weights 16g .., q = (qs[32 (g / 8) + l] >> 2 ((g / 2) % 4)) & 3
 * (l < 32 the weight's place in its 32); isum = sum_g sc_g S_g, msum = sum_g m_g X_g (sc, m
 * the low and high nibbles of scales[g]), combined as Q4_K's. */
static float dot_q2k_scalar(const void *restrict vw, const void *restrict vx, int64_t n) {
        const BlockQ2_K *w = vw;
        const BlockQ8K *x = vx;
        float acc = 0.0f;
        for (int64_t b = 0; b < n / QK_K; b++) {
                int32_t isum = 0, msum = 0;
                for (int g = 0; g < 16; g++) {
                        int32_t s = 0;
                        for (int i = 16 * g; i < 16 * g + 16; i++)
                                s += k2_quant(w[b].qs, i) * x[b].qs[i];
                        isum += (w[b].scales[g] & 15) * s;
                        msum += (w[b].scales[g] >> 4) * x[b].bsums[g];
                }
                acc = acc + term_k4(x[b].d, quant_int8_half(w[b].d), quant_int8_half(w[b].dmin), isum, msum);
        }
        return acc;
}

/* Q3_K: q = u - 4 with u = ((qs[32 (i / 128) + l] >> 2 j) & 3) + 4 (bit 4 (i / 128) + j of
 * hmask[l]) in 0..7 (j = (i % 128) / 32, l = i % 32); isum = sum_g sc_g sum (u x) -
 * 4 sum_g sc_g X_g (the same integer as sum sc q x), combined as Q6_K's. */
static float dot_q3k_scalar(const void *restrict vw, const void *restrict vx, int64_t n) {
        const BlockQ3_K *w = vw;
        const BlockQ8K *x = vx;
        float acc = 0.0f;
        for (int64_t b = 0; b < n / QK_K; b++) {
                int8_t sc[16];
                quant_q3_k_scales(w[b].scales, sc);
                int32_t raw = 0, msum = 0;
                for (int g = 0; g < 16; g++) {
                        int32_t s = 0;
                        for (int i = 16 * g; i < 16 * g + 16; i++) /* the high bit: bit (i / 32) of hmask[i % 32] */
                                s += (k2_quant(w[b].qs, i) + 4 * ((w[b].hmask[i % 32] >> (i / 32)) & 1)) * x[b].qs[i];
                        raw += sc[g] * s;
                        msum += sc[g] * x[b].bsums[g];
                }
                acc = acc + term_q6k(x[b].d, quant_int8_half(w[b].d), raw - 4 * msum);
        }
        return acc;
}

#define DEFINE_ROWS_SCALAR(name, dot, XT)                                                                     \
        static void name(const void *restrict w, size_t rb, int64_t R, const void *restrict xv, int64_t xs,   \
                         int64_t T, float *restrict out, int64_t os, int64_t n) {                             \
                const XT *x = xv;                                                                             \
                for (int64_t r = 0; r < R; r++)                                                               \
                        for (int64_t t = 0; t < T; t++)                                                       \
                                out[t * os + r] = dot((const uint8_t *)w + (size_t)r * rb, x + t * xs, n);    \
        }
DEFINE_ROWS_SCALAR(rows_q2k_scalar, dot_q2k_scalar, BlockQ8K)
DEFINE_ROWS_SCALAR(rows_q3k_scalar, dot_q3k_scalar, BlockQ8K)
DEFINE_ROWS_SCALAR(rows_q4k_scalar, dot_q4k_scalar, BlockQ8K)
DEFINE_ROWS_SCALAR(rows_q5k_scalar, dot_q5k_scalar, BlockQ8K)
DEFINE_ROWS_SCALAR(rows_q6k_scalar, dot_q6k_scalar, BlockQ8K)
DEFINE_ROWS_SCALAR(rows_q4_0_scalar, dot_q4_0_scalar, BlockQ8X)
DEFINE_ROWS_SCALAR(rows_q4_1_scalar, dot_q4_1_scalar, BlockQ8X)
DEFINE_ROWS_SCALAR(rows_q5_0_scalar, dot_q5_0_scalar, BlockQ8X)
DEFINE_ROWS_SCALAR(rows_q5_1_scalar, dot_q5_1_scalar, BlockQ8X)
DEFINE_ROWS_SCALAR(rows_q8_0_scalar, dot_q8_0_scalar, BlockQ8X)

/* ---------------------------------------------------------------------------------------
 * Tiling shared by the SIMD variants. A tile function TILE(wrow, x, xs, tt, acc, nb) runs one
 * weight row against tt <= TILE_T tokens (x, x + xs, ...) over nb super-blocks, decoding each
 * weight super-block once for all tt tokens, and leaves the results in acc[0 .. tt-1].
 * dot_rows walks blocks of rows small enough to stay in L2 (ROW_BLOCK_BYTES) and, inside,
 * tiles of TILE_T tokens, so a weight row comes from memory once and an activation tile
 * from L2 for every row of the block. */
#define TILE_T 8
#define ROW_BLOCK_BYTES (256u * 1024u)
/* The 256-bit variants' Q4_K / Q5_K tile decodes each super-block once for up to this many
 * tokens (a few sessions decoding). The 512-bit variants run 2 tokens or more in 4-row
 * groups (DOT_ROWS4_QUARTERS), which stream faster than this since they read four long
 * streams: Q4_K at 2 tokens 12.8 against 9.9 GB/s on one thread. */
#define FEW_TOKENS 2

/* One tile of T <= TILE_T tokens (decoding: one token per session), one row at a time, the
 * rows in two interleaved halves, 0, h, 1, h + 1, ..., so each thread reads two streams
 * from memory instead of one. The hardware keeps more of two streams in flight: on the
 * bench model (Q4_K_M, Mixtral shapes, 2 threads) decoding went from 37.3 to 46.3
 * tokens/s; four streams were no better than two. */
#define DOT_ROWS_FEW(BLOCK_T, TILE)                                                                           \
        do {                                                                                                  \
                const int64_t h_ = (R + 1) / 2;                                                               \
                float acc_[TILE_T];                                                                           \
                for (int64_t i = 0; i < R; i++) {                                                             \
                        const int64_t r = (i & 1) ? h_ + i / 2 : i / 2;                                       \
                        const BLOCK_T *wr_ = (const BLOCK_T *)((const uint8_t *)w + (size_t)r * rb);          \
                        if (T == 1) { /* a literal 1: the inlined tile keeps only its T = 1 path */         \
                                TILE(wr_, x, xs, 1, acc_, nb);                                                \
                                out[r] = acc_[0];                                                             \
                                continue;                                                                     \
                        }                                                                                     \
                        TILE(wr_, x, xs, (int)T, acc_, nb);                                                   \
                        for (int t = 0; t < (int)T; t++)                                                      \
                                out[t * os + r] = acc_[t];                                                    \
                }                                                                                             \
        } while (0)

#define DEFINE_DOT_ROWS(name, dotname, ATTR, BLOCK_T, XT, TILE)                                               \
        ATTR static void name(const void *restrict w, size_t rb, int64_t R, const void *restrict xv,          \
                              int64_t xs, int64_t T, float *restrict out, int64_t os, int64_t n) {            \
                const XT *x = xv;                                                                             \
                const int64_t nb = n / QK_K;                                                                  \
                if (T <= TILE_T) { /* one tile: no activation tile to keep in L2 */                          \
                        DOT_ROWS_FEW(BLOCK_T, TILE);                                                          \
                        return;                                                                               \
                }                                                                                             \
                const int64_t rblk = rb == 0 || rb >= ROW_BLOCK_BYTES ? 1 : (int64_t)(ROW_BLOCK_BYTES / rb);  \
                float acc[TILE_T];                                                                            \
                for (int64_t r0 = 0; r0 < R; r0 += rblk) {                                                    \
                        const int64_t r1 = R - r0 < rblk ? R : r0 + rblk;                                     \
                        for (int64_t t0 = 0; t0 < T; t0 += TILE_T) {                                          \
                                const int tt = T - t0 < TILE_T ? (int)(T - t0) : TILE_T;                      \
                                for (int64_t r = r0; r < r1; r++) {                                           \
                                        const BLOCK_T *wr = (const BLOCK_T *)((const uint8_t *)w + (size_t)r * rb); \
                                        if (tt == 1)                                                          \
                                                TILE(wr, x + t0 * xs, xs, 1, acc, nb);                        \
                                        else                                                                  \
                                                TILE(wr, x + t0 * xs, xs, tt, acc, nb);                       \
                                        for (int t = 0; t < tt; t++)                                          \
                                                out[(t0 + t) * os + r] = acc[t];                              \
                                }                                                                             \
                        }                                                                                     \
                }                                                                                             \
        }                                                                                                     \
        ATTR static float dotname(const void *restrict w, const void *restrict x, int64_t n) {                \
                float acc[1];                                                                                 \
                TILE((const BLOCK_T *)w, (const XT *)x, 0, 1, acc, n / QK_K);                                 \
                return acc[0];                                                                                \
        }

/* The 512-bit variants' dot_rows (every type): T = 1 as above, one row at a time; T > 1 by
 * TILE4(rows, x, xs, tt, acc, nb), which runs 4 weight rows (rows[0..3]) against tt <=
 * TILE_T4 tokens and leaves (row i, token t) in acc[16 (t / 4) + 4 i + t % 4]: a super-block
 * of 4 rows is decoded once per tile of tokens, and the vectors hold the 4 rows side by
 * side, so each activation load serves 4 rows.
 * Row blocks as above, of a multiple of 4 rows; a last group of fewer than 4 rows repeats
 * its last row (computed, not stored). */
#define TILE_T4 16

/* TILE4 on the 4-row group of rows r, r + step, r + 2 step, r + 3 step (the first nr <= 4 of
 * them; the last of those repeated, computed and not stored) and tokens t0 .. t0 + tt - 1,
 * stored to out. */
#define DOT_ROWS4_GROUP(TILE4, r, step, nr, t0, tt)                                                           \
        do {                                                                                                  \
                const uint8_t *rows_[4];                                                                      \
                for (int i_ = 0; i_ < 4; i_++)                                                                \
                        rows_[i_] = (const uint8_t *)w + (size_t)((r) + (i_ < (nr) ? i_ : (nr) - 1) * (step)) * rb; \
                TILE4(rows_, x + (t0) * xs, xs, (tt), acc, nb);                                               \
                for (int t_ = 0; t_ < (tt); t_++)                                                             \
                        for (int i_ = 0; i_ < (nr); i_++)                                                     \
                                out[((t0) + t_) * os + (r) + i_ * (step)] = acc[16 * (t_ / 4) + 4 * i_ + t_ % 4]; \
        } while (0)

/* One tile of T <= TILE_T4 tokens (a few sessions decoding): group j takes rows j, q + j,
 * 2q + j, 3q + j (q = R / 4 rounded up; those past R are left out), so the thread reads four
 * long sequential streams, as one token reads two, instead of a new 4-row window every 4
 * rows that the hardware prefetchers never got ahead of. One thread, Q4_K [14336][4096]
 * from memory: 3 tokens 7.6 -> 12.2 GB/s, 4 tokens 7.1 -> 11.5, 8 tokens 5.6 -> 8.4. */
#define DOT_ROWS4_QUARTERS(TILE4)                                                                             \
        do {                                                                                                  \
                const int64_t q_ = (R + 3) / 4;                                                               \
                for (int64_t j = 0; j < q_; j++) {                                                            \
                        const int nr_ = 1 + (q_ + j < R) + (2 * q_ + j < R) + (3 * q_ + j < R);               \
                        DOT_ROWS4_GROUP(TILE4, j, q_, nr_, 0, (int)T);                                        \
                }                                                                                             \
        } while (0)

/* T = 1 by DOT_ROWS_FEW; up to TILE_T4 tokens in 4-row groups from the four quarters of
 * the rows (DOT_ROWS4_QUARTERS); more in 4-row groups of consecutive rows, row blocks as
 * DEFINE_DOT_ROWS (prefill: the activation tiles are reused from L2 across a block). */
#define DEFINE_DOT_ROWS4(name, dotname, ATTR, BLOCK_T, XT, TILE, TILE4)                                       \
        ATTR static void name(const void *restrict w, size_t rb, int64_t R, const void *restrict xv,          \
                              int64_t xs, int64_t T, float *restrict out, int64_t os, int64_t n) {            \
                const XT *x = xv;                                                                             \
                const int64_t nb = n / QK_K;                                                                  \
                if (T == 1) {                                                                                 \
                        DOT_ROWS_FEW(BLOCK_T, TILE);                                                          \
                        return;                                                                               \
                }                                                                                             \
                float acc[TILE_T4 * 4] __attribute__((aligned(64)));                                          \
                if (T <= TILE_T4) {                                                                           \
                        DOT_ROWS4_QUARTERS(TILE4);                                                            \
                        return;                                                                               \
                }                                                                                             \
                int64_t rblk = rb == 0 || rb >= ROW_BLOCK_BYTES ? 4 : (int64_t)(ROW_BLOCK_BYTES / rb) & ~(int64_t)3; \
                rblk = rblk < 4 ? 4 : rblk;                                                                   \
                for (int64_t r0 = 0; r0 < R; r0 += rblk) {                                                    \
                        const int64_t r1 = R - r0 < rblk ? R : r0 + rblk;                                     \
                        for (int64_t t0 = 0; t0 < T; t0 += TILE_T4) {                                         \
                                const int tt = T - t0 < TILE_T4 ? (int)(T - t0) : TILE_T4;                    \
                                for (int64_t r = r0; r < r1; r += 4)                                          \
                                        DOT_ROWS4_GROUP(TILE4, r, 1, r1 - r < 4 ? (int)(r1 - r) : 4, t0, tt);    \
                        }                                                                                     \
                }                                                                                             \
        }                                                                                                     \
        ATTR static float dotname(const void *restrict w, const void *restrict x, int64_t n) {                \
                float acc[1];                                                                                 \
                TILE((const BLOCK_T *)w, (const XT *)x, 0, 1, acc, n / QK_K);                                 \
                return acc[0];                                                                                \
        }

#if defined(__x86_64__)

#define T_AVX2 __attribute__((target("avx2,f16c")))
#define T_512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,f16c")))
#define T_VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,f16c,avx512vnni")))

/* =======================================================================================
 * The float part, 4 terms at a time (AVX2 + F16C, so usable by every SIMD variant). Each
 * packed instruction does, lane by lane, one operation of term_*() on the same operands. */

/* 8 fp16 scales to floats, equal to quant_int8_half() lane by lane: F16C, except when a
 * lane is a NaN (F16C would quiet a signalling one). */
static __attribute__((noinline, cold)) void halves_slow(const uint16_t h[8], float f[8]) {
        for (int i = 0; i < 8; i++)
                f[i] = quant_int8_half(h[i]);
}

T_AVX2 INLINE __m256 halves8(__m128i h) {
        const __m128i nan = _mm_cmpgt_epi16(_mm_and_si128(h, _mm_set1_epi16(0x7fff)), _mm_set1_epi16(0x7c00));
        if (__builtin_expect(!_mm_testz_si128(nan, nan), 0)) {
                uint16_t hv[8];
                float f[8];
                _mm_storeu_si128((__m128i *)hv, h);
                halves_slow(hv, f);
                return _mm256_loadu_ps(f);
        }
        return _mm256_cvtph_ps(h);
}

/* The activation scales of blocks x, x + stride, .. (k <= 4 of them; 0 in the other lanes). */
T_AVX2 INLINE __m128 xd4(const BlockQ8K *x, int64_t stride, int k) {
        if (k == 4)
                return _mm_setr_ps(x[0].d, x[stride].d, x[2 * stride].d, x[3 * stride].d);
        return _mm_setr_ps(x[0].d, k > 1 ? x[stride].d : 0.0f, k > 2 ? x[2 * stride].d : 0.0f, 0.0f);
}

/* acc + t[0] + t[1] + ... (the first k terms, in order) */
T_AVX2 INLINE float add_terms(float acc, __m128 t, int k) {
        if (__builtin_expect(k == 4, 1)) {
                __m128 a = _mm_add_ss(_mm_set_ss(acc), t);
                a = _mm_add_ss(a, _mm_movehdup_ps(t));
                a = _mm_add_ss(a, _mm_movehl_ps(t, t));
                a = _mm_add_ss(a, _mm_shuffle_ps(t, t, _MM_SHUFFLE(3, 3, 3, 3)));
                return _mm_cvtss_f32(a);
        }
        float f[4];
        _mm_storeu_ps(f, t);
        for (int i = 0; i < k; i++)
                acc = acc + f[i];
        return acc;
}

/* term_k4 of 4 items: A[i] / M[i] hold isum / msum of item i spread over 8 int32 lanes,
 * X4 the items' xd, Wv [wd0, wm0, wd1, wm1, .. wd3, wm3]. */
T_AVX2 INLINE __m128 terms_k4(const __m256i A[4], const __m256i M[4], __m128 X4, __m256 Wv) {
        const __m256i g01 = _mm256_hadd_epi32(_mm256_hadd_epi32(A[0], M[0]), _mm256_hadd_epi32(A[1], M[1]));
        const __m256i g23 = _mm256_hadd_epi32(_mm256_hadd_epi32(A[2], M[2]), _mm256_hadd_epi32(A[3], M[3]));
        /* [isum0, msum0, isum1, msum1 | isum2, msum2, isum3, msum3] */
        const __m256i s = _mm256_add_epi32(_mm256_permute2x128_si256(g01, g23, 0x20), _mm256_permute2x128_si256(g01, g23, 0x31));
        const __m256 X = _mm256_permutevar8x32_ps(_mm256_castps128_ps256(X4), _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3));
        const __m256 P = _mm256_mul_ps(_mm256_mul_ps(X, Wv), _mm256_cvtepi32_ps(s));
        return _mm_hsub_ps(_mm256_castps256_ps128(P), _mm256_extractf128_ps(P, 1));
}

/* term_q6k of 4 items: A[i] holds isum of item i spread over 8 lanes. */
T_AVX2 INLINE __m128 terms_q6k(const __m256i A[4], __m128 X4, __m128 W4) {
        const __m256i g = _mm256_hadd_epi32(_mm256_hadd_epi32(A[0], A[1]), _mm256_hadd_epi32(A[2], A[3]));
        const __m128i s = _mm_add_epi32(_mm256_castsi256_si128(g), _mm256_extracti128_si256(g, 1));
        return _mm_mul_ps(_mm_mul_ps(X4, W4), _mm_cvtepi32_ps(s));
}

/* term_leg of 4 items: S[i] the 8 block sums of item i, W8[i] / X8[i] the weight and
 * activation scales of its blocks; with M8 (Q4_1 / Q5_1) also M8[i] its minimums and XS[i]
 * its sums of x. The halving adds pair exactly as term_leg: ((p0 + p1) + (p2 + p3)) +
 * ((p4 + p5) + (p6 + p7)). */
T_AVX2 INLINE __m128 terms_leg(const __m256i S[4], const __m256 W8[4], const __m256 X8[4], const __m256 *M8,
                               const __m256i *XS) {
        __m256 P[4];
        for (int i = 0; i < 4; i++) {
                P[i] = _mm256_mul_ps(_mm256_mul_ps(W8[i], X8[i]), _mm256_cvtepi32_ps(S[i]));
                if (M8)
                        P[i] = _mm256_add_ps(P[i], _mm256_mul_ps(_mm256_mul_ps(M8[i], X8[i]), _mm256_cvtepi32_ps(XS[i])));
        }
        const __m256 g = _mm256_hadd_ps(_mm256_hadd_ps(P[0], P[1]), _mm256_hadd_ps(P[2], P[3]));
        return _mm_add_ps(_mm256_castps256_ps128(g), _mm256_extractf128_ps(g, 1));
}

/* The fp16 at byte off of each of the 8 consecutive legacy blocks (bsz bytes each) at blk, as
 * floats: their scales d (off 0) or minimums m (off 2, Q4_1 / Q5_1). */
T_AVX2 INLINE __m256 leg_halves8(const void *blk, size_t bsz, size_t off) {
        uint16_t h[8];
        for (int i = 0; i < 8; i++)
                memcpy(&h[i], (const uint8_t *)blk + (size_t)i * bsz + off, 2);
        return halves8(_mm_loadu_si128((const __m128i *)h));
}

/* The sums of x over the 8 blocks of 32 of an activation block (from its bsums). */
T_AVX2 INLINE __m256i xsums8(const BlockQ8X *x) {
        return _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)x->bsums), _mm256_set1_epi16(1));
}

/* d | dmin << 16 of a Q4_K / Q5_K block (the two halves at its start). */
INLINE uint32_t k4_dm(const void *blk) {
        uint32_t v;
        memcpy(&v, blk, 4);
        return v;
}

/* The K4 layout's kinds: Q4_K, Q5_K (4-bit quants + a 5th bit), Q2_K. */
enum { KQ_Q4K = 0, KQ_Q5K = 1, KQ_Q2K = 2 };

/* d | dmin << 16 of a block of the kind */
INLINE uint32_t kq_dm(const uint8_t *blk, int kind) {
        return k4_dm(kind == KQ_Q2K ? blk + offsetof(BlockQ2_K, d) : blk);
}

/* int16 [m0, m0, m1, m1, .. m7, m7] from k4_scales_simd's bytes: times bsums[0..15] by
 * vpmaddwd, sum m_j X_j spread over 8 lanes. */
T_AVX2 INLINE __m256i k4_min_pairs(__m128i sm) {
        const __m256i ctl = _mm256_setr_epi8(8, -128, 8, -128, 9, -128, 9, -128, 10, -128, 10, -128, 11, -128, 11, -128,
                                             12, -128, 12, -128, 13, -128, 13, -128, 14, -128, 14, -128, 15, -128, 15, -128);
        return _mm256_shuffle_epi8(_mm256_broadcastsi128_si256(sm), ctl);
}

T_AVX2 INLINE __m256i load256(const void *p) {
        return _mm256_loadu_si256((const __m256i *)p);
}

/* Decoding one row (T = 1), the weights [p + PREFETCH_BYTES, + len) are asked for ahead of
 * use: the hardware prefetcher alone left Q6_K rows 20-30% below the read bandwidth on
 * Zen 4. (A prefetch never faults, past the end of the matrix included.) */
#define PREFETCH_BYTES 2048
INLINE void prefetch_ahead(const void *p, size_t len) {
        for (size_t o = 0; o < len; o += 64)
                _mm_prefetch((const char *)((uintptr_t)p + PREFETCH_BYTES + o), _MM_HINT_T0);
}

/* Shift each 16-bit lane left (s > 0) or right (s < 0) by |s|. */
T_AVX2 INLINE __m256i shift16(__m256i v, int s) {
        return s > 0 ? _mm256_slli_epi16(v, s) : s < 0 ? _mm256_srli_epi16(v, -s) : v;
}

/* The Q6_K tile (see DEFINE_DOT_ROWS): DECODE(blk, &d) decodes a super-block, ITEM(&d, xb) gives its
 * isum with one activation block spread over 8 lanes; T = 1: 4 super-blocks per terms_q6k(), else
 * 4 tokens per terms_q6k() with one accumulator lane each. */
#define Q6K_TILE_BODY(DEC_T, DECODE, ITEM)                                                                    \
        do {                                                                                                  \
                const __m256i z_ = _mm256_setzero_si256();                                                    \
                if (TT == 1) {                                                                                \
                        float a_ = 0.0f;                                                                      \
                        for (int64_t b0 = 0; b0 < nb; b0 += 4) {                                              \
                                const int k = nb - b0 < 4 ? (int)(nb - b0) : 4;                               \
                                prefetch_ahead(w + b0, 4 * sizeof(*w));                                       \
                                __m256i A[4];                                                                 \
                                uint16_t dh[8] = { 0 };                                                       \
                                _Pragma("GCC unroll 4") for (int i = 0; i < 4; i++) {                         \
                                        A[i] = z_;                                                            \
                                        if (i < k) {                                                          \
                                                DEC_T d;                                                      \
                                                DECODE(&w[b0 + i], &d);                                       \
                                                A[i] = ITEM(&d, x + b0 + i);                                  \
                                                dh[i] = w[b0 + i].d;                                          \
                                        }                                                                     \
                                }                                                                             \
                                const __m128 W4 = _mm256_castps256_ps128(halves8(_mm_loadu_si128((const __m128i *)dh))); \
                                a_ = add_terms(a_, terms_q6k(A, xd4(x + b0, 1, k), W4), k);                   \
                        }                                                                                     \
                        acc[0] = a_;                                                                          \
                        break;                                                                                \
                }                                                                                             \
                __m128 acc4[TILE_T / 4] = { _mm_setzero_ps(), _mm_setzero_ps() };                             \
                for (int64_t b = 0; b < nb; b++) {                                                            \
                        DEC_T d;                                                                              \
                        DECODE(&w[b], &d);                                                                    \
                        const __m128 W4 = _mm256_castps256_ps128(halves8(_mm_set1_epi16((short)w[b].d)));     \
                        for (int g = 0; g < TT; g += 4) {                                                     \
                                const int k = TT - g < 4 ? TT - g : 4;                                        \
                                __m256i A[4];                                                                 \
                                _Pragma("GCC unroll 4") for (int i = 0; i < 4; i++)                           \
                                        A[i] = i < k ? ITEM(&d, x + (g + i) * xs + b) : z_;                   \
                                acc4[g / 4] = _mm_add_ps(acc4[g / 4], terms_q6k(A, xd4(x + g * xs + b, xs, k), W4)); \
                        }                                                                                     \
                }                                                                                             \
                float f_[TILE_T];                                                                             \
                _mm_storeu_ps(f_, acc4[0]);                                                                   \
                _mm_storeu_ps(f_ + 4, acc4[1]);                                                               \
                for (int t = 0; t < TT; t++)                                                                  \
                        acc[t] = f_[t];                                                                       \
        } while (0)

/* The legacy tile (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0), likewise on BlockQ8X activations: DECODE
 * decodes a super-block (8 blocks of 32), ITEM gives its 8 block sums with one activation
 * block; HAS_M: the type has a minimum (Q4_1 / Q5_1). */
#define LEG_TILE_BODY(DEC_T, DECODE, ITEM, HAS_M)                                                             \
        do {                                                                                                  \
                const __m256i z_ = _mm256_setzero_si256();                                                    \
                const __m256 zf_ = _mm256_setzero_ps();                                                       \
                if (TT == 1) {                                                                                \
                        float a_ = 0.0f;                                                                      \
                        for (int64_t b0 = 0; b0 < nb; b0 += 4) {                                              \
                                const int k = nb - b0 < 4 ? (int)(nb - b0) : 4;                               \
                                prefetch_ahead(w + 8 * b0, 32 * sizeof(*w));                                  \
                                __m256i S[4], XS[4];                                                          \
                                __m256 W8[4], M8[4], X8[4];                                                   \
                                _Pragma("GCC unroll 4") for (int i = 0; i < 4; i++) {                         \
                                        S[i] = XS[i] = z_;                                                    \
                                        W8[i] = M8[i] = X8[i] = zf_;                                          \
                                        if (i < k) {                                                          \
                                                DEC_T d;                                                      \
                                                DECODE(&w[8 * (b0 + i)], &d);                                 \
                                                S[i] = ITEM(&d, x + b0 + i);                                  \
                                                W8[i] = leg_halves8(&w[8 * (b0 + i)], sizeof(*w), 0);                     \
                                                X8[i] = _mm256_loadu_ps(x[b0 + i].d);                         \
                                                if (HAS_M) {                                                  \
                                                        M8[i] = leg_halves8(&w[8 * (b0 + i)], sizeof(*w), 2);         \
                                                        XS[i] = xsums8(x + b0 + i);                           \
                                                }                                                             \
                                        }                                                                     \
                                }                                                                             \
                                a_ = add_terms(a_, terms_leg(S, W8, X8, HAS_M ? M8 : NULL, XS), k);           \
                        }                                                                                     \
                        acc[0] = a_;                                                                          \
                        break;                                                                                \
                }                                                                                             \
                __m128 acc4[TILE_T / 4] = { _mm_setzero_ps(), _mm_setzero_ps() };                             \
                for (int64_t b = 0; b < nb; b++) {                                                            \
                        DEC_T d;                                                                              \
                        DECODE(&w[8 * b], &d);                                                                \
                        const __m256 W = leg_halves8(&w[8 * b], sizeof(*w), 0);                                           \
                        const __m256 M = HAS_M ? leg_halves8(&w[8 * b], sizeof(*w), 2) : zf_;                         \
                        const __m256 W8[4] = { W, W, W, W }, M8[4] = { M, M, M, M };                          \
                        for (int g = 0; g < TT; g += 4) {                                                     \
                                const int k = TT - g < 4 ? TT - g : 4;                                        \
                                __m256i S[4], XS[4];                                                          \
                                __m256 X8[4];                                                                 \
                                _Pragma("GCC unroll 4") for (int i = 0; i < 4; i++) {                         \
                                        S[i] = XS[i] = z_;                                                    \
                                        X8[i] = zf_;                                                          \
                                        if (i < k) {                                                          \
                                                const BlockQ8X *xb_ = x + (g + i) * xs + b;                   \
                                                S[i] = ITEM(&d, xb_);                                         \
                                                X8[i] = _mm256_loadu_ps(xb_->d);                              \
                                                if (HAS_M)                                                    \
                                                        XS[i] = xsums8(xb_);                                  \
                                        }                                                                     \
                                }                                                                             \
                                acc4[g / 4] = _mm_add_ps(acc4[g / 4], terms_leg(S, W8, X8, HAS_M ? M8 : NULL, XS)); \
                        }                                                                                     \
                }                                                                                             \
                float f_[TILE_T];                                                                             \
                _mm_storeu_ps(f_, acc4[0]);                                                                   \
                _mm_storeu_ps(f_ + 4, acc4[1]);                                                               \
                for (int t = 0; t < TT; t++)                                                                  \
                        acc[t] = f_[t];                                                                       \
        } while (0)

/* =======================================================================================
 * AVX-512 helpers (plain AVX-512: usable from the VNNI build too). */

/* [lo as 32 bytes | hi as 32 bytes] */
T_512 INLINE __m512i join256(__m256i lo, __m256i hi) {
        return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
}

/* 16 int32 lanes folded to 8 (lane i + lane i + 8). */
T_512 INLINE __m256i fold512(__m512i v) {
        return _mm256_add_epi32(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64(v, 1));
}

/* R[k] holds block 2k in lanes 0..7 and block 2k+1 in lanes 8..15: the 8 block sums in order. */
T_512 INLINE __m256i blocksums8_512(const __m512i R[4]) {
        const __m512i t0 = _mm512_add_epi32(_mm512_unpacklo_epi32(R[0], R[1]), _mm512_unpackhi_epi32(R[0], R[1]));
        const __m512i t1 = _mm512_add_epi32(_mm512_unpacklo_epi32(R[2], R[3]), _mm512_unpackhi_epi32(R[2], R[3]));
        /* 128-bit lane l of z: [R0, R1, R2, R3] summed over their lane l */
        const __m512i z = _mm512_add_epi32(_mm512_unpacklo_epi64(t0, t1), _mm512_unpackhi_epi64(t0, t1));
        const __m512i y = _mm512_add_epi32(z, _mm512_shuffle_i32x4(z, z, _MM_SHUFFLE(2, 3, 0, 1)));
        const __m128i even = _mm512_castsi512_si128(y), odd = _mm512_extracti32x4_epi32(y, 2); /* [S0 S2 S4 S6], [S1 ..] */
        return _mm256_set_m128i(_mm_unpackhi_epi32(even, odd), _mm_unpacklo_epi32(even, odd));
}

/* ---- The 4-row layout (DEFINE_DOT_ROWS4): 128-bit lane r of a vector belongs to weight row r. */

/* The 16 bytes at p[r] + off in lane r. */
T_512 INLINE __m512i load4x128(const uint8_t *const p[4], size_t off) {
        const __m256i lo = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)(p[0] + off))),
                                                   _mm_loadu_si128((const __m128i *)(p[1] + off)), 1);
        const __m256i hi = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)(p[2] + off))),
                                                   _mm_loadu_si128((const __m128i *)(p[3] + off)), 1);
        return join256(lo, hi);
}

/* The 16 bytes at p in every lane. */
T_512 INLINE __m512i bcast128(const void *p) {
        return _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)p));
}

/* V[t] (t < 4): lane r holds 4 int32 partial sums of (row r, token t); the result: their
 * sums, (row r, token t) at 4r + t (a transposing add tree). */
T_512 INLINE __m512i sum4x4(const __m512i V[4]) {
        const __m512i a = _mm512_add_epi32(_mm512_unpacklo_epi32(V[0], V[1]), _mm512_unpackhi_epi32(V[0], V[1]));
        const __m512i b = _mm512_add_epi32(_mm512_unpacklo_epi32(V[2], V[3]), _mm512_unpackhi_epi32(V[2], V[3]));
        return _mm512_add_epi32(_mm512_unpacklo_epi64(a, b), _mm512_unpackhi_epi64(a, b));
}

/* The 8 fp16 halves h as floats (halves8), f[2r + odd] in lanes 4r .. 4r + 3: per row r,
 * for every token t. */
T_512 INLINE __m512 halves_per_row(__m128i h, int odd) {
        const __m512i idx = _mm512_setr_epi32(0, 0, 0, 0, 2, 2, 2, 2, 4, 4, 4, 4, 6, 6, 6, 6);
        return _mm512_permutexvar_ps(_mm512_add_epi32(idx, _mm512_set1_epi32(odd)), _mm512_castps256_ps512(halves8(h)));
}

/* The kernels, three times: AVX2; AVX-512; AVX-512 with VNNI. */
#define QI8_TEMPLATE
#define SFX avx2
#define ATTR T_AVX2
#define W512 0
#define VNNI 0
#include "quant_int8.c"
#undef SFX
#undef ATTR
#undef W512
#undef VNNI
#define SFX avx512
#define ATTR T_512
#define W512 1
#define VNNI 0
#include "quant_int8.c"
#undef SFX
#undef ATTR
#undef W512
#undef VNNI
#define SFX vnni
#define ATTR T_VNNI
#define W512 1
#define VNNI 1
#include "quant_int8.c"
#undef SFX
#undef ATTR
#undef W512
#undef VNNI
#undef QI8_TEMPLATE

#endif /* __x86_64__ */

/* ---------------------------------------------------------------------------------------
 * Tables and the choice of variant. */

static QuantInt8Kernels kernels[] = {
        { "Q4_0", GGML_TYPE_Q4_0, QUANT_ACT_Q8X, QUANT_INT8_SCALAR, NULL, NULL, { NULL }, { NULL } },
        { "Q4_1", GGML_TYPE_Q4_1, QUANT_ACT_Q8X, QUANT_INT8_SCALAR, NULL, NULL, { NULL }, { NULL } },
        { "Q5_0", GGML_TYPE_Q5_0, QUANT_ACT_Q8X, QUANT_INT8_SCALAR, NULL, NULL, { NULL }, { NULL } },
        { "Q5_1", GGML_TYPE_Q5_1, QUANT_ACT_Q8X, QUANT_INT8_SCALAR, NULL, NULL, { NULL }, { NULL } },
        { "Q8_0", GGML_TYPE_Q8_0, QUANT_ACT_Q8X, QUANT_INT8_SCALAR, NULL, NULL, { NULL }, { NULL } },
        { "Q2_K", GGML_TYPE_Q2_K, QUANT_ACT_Q8K, QUANT_INT8_SCALAR, NULL, NULL, { NULL }, { NULL } },
        { "Q3_K", GGML_TYPE_Q3_K, QUANT_ACT_Q8K, QUANT_INT8_SCALAR, NULL, NULL, { NULL }, { NULL } },
        { "Q4_K", GGML_TYPE_Q4_K, QUANT_ACT_Q8K, QUANT_INT8_SCALAR, NULL, NULL, { NULL }, { NULL } },
        { "Q5_K", GGML_TYPE_Q5_K, QUANT_ACT_Q8K, QUANT_INT8_SCALAR, NULL, NULL, { NULL }, { NULL } },
        { "Q6_K", GGML_TYPE_Q6_K, QUANT_ACT_Q8K, QUANT_INT8_SCALAR, NULL, NULL, { NULL }, { NULL } },
};
#define N_KERNELS (sizeof(kernels) / sizeof(kernels[0]))

static pthread_once_t int8_once = PTHREAD_ONCE_INIT;
static int int8_ok[QUANT_INT8_ISA_COUNT_];

static void int8_set(size_t k, QuantInt8Isa isa, Int8DotFn dot, Int8DotRowsFn rows) {
        if (int8_ok[isa]) {
                kernels[k].dot_variant[isa] = dot;
                kernels[k].dot_rows_variant[isa] = rows;
        }
}

static void int8_select(void) {
        int8_ok[QUANT_INT8_SCALAR] = 1;
#if defined(__x86_64__)
        int8_ok[QUANT_INT8_AVX2] = quant_isa_supported(QUANT_ISA_AVX2);
        int8_ok[QUANT_INT8_AVX512] = quant_isa_supported(QUANT_ISA_AVX512);
        __builtin_cpu_init();
        int8_ok[QUANT_INT8_AVX512_VNNI] = int8_ok[QUANT_INT8_AVX512] && __builtin_cpu_supports("avx512vnni");
#endif
        for (size_t k = 0; k < N_KERNELS; k++) {
                switch (kernels[k].type) {
#if defined(__x86_64__)
#define SET_ALL(T)                                                                     \
        int8_set(k, QUANT_INT8_SCALAR, dot_##T##_scalar, rows_##T##_scalar);           \
        int8_set(k, QUANT_INT8_AVX2, dot_##T##_avx2, rows_##T##_avx2);                 \
        int8_set(k, QUANT_INT8_AVX512, dot_##T##_avx512, rows_##T##_avx512);           \
        int8_set(k, QUANT_INT8_AVX512_VNNI, dot_##T##_vnni, rows_##T##_vnni);          \
        break;
#else
#define SET_ALL(T)                                                                     \
        int8_set(k, QUANT_INT8_SCALAR, dot_##T##_scalar, rows_##T##_scalar);           \
        break;
#endif
                case GGML_TYPE_Q4_0: SET_ALL(q4_0)
                case GGML_TYPE_Q4_1: SET_ALL(q4_1)
                case GGML_TYPE_Q5_0: SET_ALL(q5_0)
                case GGML_TYPE_Q5_1: SET_ALL(q5_1)
                case GGML_TYPE_Q2_K: SET_ALL(q2k)
                case GGML_TYPE_Q3_K: SET_ALL(q3k)
                case GGML_TYPE_Q4_K: SET_ALL(q4k)
                case GGML_TYPE_Q5_K: SET_ALL(q5k)
                case GGML_TYPE_Q6_K: SET_ALL(q6k)
                case GGML_TYPE_Q8_0: SET_ALL(q8_0)
#undef SET_ALL
                default: break;
                }
        }
        /* The best variant of the family quant_best_isa() chose. */
        const QuantIsa best = quant_best_isa();
        int cap;
        quant_isa_env(&cap); /* MIXD_ISA=avx512: the plain AVX-512 variants even with VNNI */
        QuantInt8Isa isa = QUANT_INT8_SCALAR;
        if (best == QUANT_ISA_AVX512)
                isa = int8_ok[QUANT_INT8_AVX512_VNNI] && cap >= 3 ? QUANT_INT8_AVX512_VNNI : QUANT_INT8_AVX512;
        else if (best == QUANT_ISA_AVX2)
                isa = QUANT_INT8_AVX2;
        if (!int8_ok[isa])
                isa = QUANT_INT8_SCALAR;
        for (size_t k = 0; k < N_KERNELS; k++) {
                kernels[k].isa = isa;
                kernels[k].dot = kernels[k].dot_variant[isa];
                kernels[k].dot_rows = kernels[k].dot_rows_variant[isa];
        }
}

const QuantInt8Kernels *quant_int8(uint32_t ggml_type) {
        for (size_t k = 0; k < N_KERNELS; k++) {
                if (kernels[k].type == ggml_type) {
                        pthread_once(&int8_once, int8_select);
                        return &kernels[k];
                }
        }
        return NULL;
}

int quant_int8_isa_supported(QuantInt8Isa isa) {
        if (isa < 0 || isa >= QUANT_INT8_ISA_COUNT_)
                return 0;
        pthread_once(&int8_once, int8_select);
        return int8_ok[isa];
}

const char *quant_int8_isa_name(QuantInt8Isa isa) {
        static const char *const names[QUANT_INT8_ISA_COUNT_] = {
                [QUANT_INT8_SCALAR] = "scalar",
                [QUANT_INT8_AVX2] = "avx2",
                [QUANT_INT8_AVX512] = "avx512",
                [QUANT_INT8_AVX512_VNNI] = "avx512vnni",
        };
        return isa >= 0 && isa < QUANT_INT8_ISA_COUNT_ ? names[isa] : "?";
}

#else /* QI8_TEMPLATE: the SIMD kernels, built with ATTR, names suffixed _SFX; W512: 512-bit
       * Q6_K / Q8_0 kernels (else 256-bit); VNNI: vpdpwssd / vpdpbusd */

#define QI8_CAT2(a, b) a##_##b
#define QI8_CAT(a, b) QI8_CAT2(a, b)
#define FN(name) QI8_CAT(name, SFX)

/* acc + sum over pairs of p (int16) * s (int16), as int32 lanes */
ATTR INLINE __m256i FN(madd_acc256)(__m256i acc, __m256i p, __m256i s) {
#if VNNI
        return _mm256_dpwssd_epi32(acc, p, s);
#else
        return _mm256_add_epi32(acc, _mm256_madd_epi16(p, s));
#endif
}

/* ---- Q4_K / Q5_K, 256-bit vectors for every instruction set (on Zen 4 the 512-bit
 * version was slower: the extra shuffles cost more than the halved instruction count). Per
 * 32 weights: vpmaddubsw (unsigned quant x signed activation, pairs to int16), then
 * vpmaddwd + vpaddd with the group's scale; VNNI: see k4_item. W[g]: the 32 quants of
 * group g (low nibbles of qs[32 (g/2) ..] for even g, high for odd, + 16 from qh for
 * Q5_K); SC[g]: its scale in every int16 lane (VNNI: SC[0..3], two groups each); MP: the
 * min pairs. */
typedef struct FN(K4) {
        __m256i W[8], SC[8], MP;
} FN(K4);

ATTR INLINE void FN(k4_decode)(const uint8_t *scales, const uint8_t *qs, const uint8_t *qh, FN(K4) *d) {
        const __m256i m4 = _mm256_set1_epi8(0x0f), b4 = _mm256_set1_epi8(0x10);
        const __m128i sm = k4_scales_simd(scales);
        const __m256i bsm = _mm256_broadcastsi128_si256(sm);
        d->MP = k4_min_pairs(sm);
        const __m256i hb = qh ? load256(qh) : _mm256_setzero_si256();
        _Pragma("GCC unroll 4") for (int j = 0; j < 4; j++) {
                const __m256i q = load256(qs + 32 * j);
                __m256i lo = _mm256_and_si256(q, m4), hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
                if (qh) { /* bit 2j (low nibbles) / 2j+1 (high) of qh[l] to bit 4 */
                        lo = _mm256_or_si256(lo, _mm256_and_si256(shift16(hb, 4 - 2 * j), b4));
                        hi = _mm256_or_si256(hi, _mm256_and_si256(shift16(hb, 3 - 2 * j), b4));
                }
                d->W[2 * j] = lo;
                d->W[2 * j + 1] = hi;
        }
#if VNNI /* SC[p]: per 128-bit lane [sc[2p] x 4, sc[2p+1] x 4], the layout of k4_item's vpackssdw */
        _Pragma("GCC unroll 4") for (int p = 0; p < 4; p++) {
                const short a = (short)(0x8000 | (2 * p)), b = (short)(0x8000 | (2 * p + 1));
                d->SC[p] = _mm256_shuffle_epi8(bsm, _mm256_setr_epi16(a, a, a, a, b, b, b, b, a, a, a, a, b, b, b, b));
        }
#else
        _Pragma("GCC unroll 8") for (int g = 0; g < 8; g++)
                d->SC[g] = _mm256_shuffle_epi8(bsm, _mm256_set1_epi16((short)(0x8000 | g)));
#endif
}

/* isum and msum of a decoded super-block with one activation block, spread over 8 lanes */
ATTR INLINE void FN(k4_item)(const FN(K4) *d, const BlockQ8K *xb, __m256i *ret_a, __m256i *ret_m) {
        __m256i s0 = _mm256_setzero_si256(), s1 = _mm256_setzero_si256();
#if VNNI
        /* vpdpbusd per group (int32 sums of 4, |.| <= 4 * 31 * 127 < 2^15), two groups packed
         * to int16 by vpackssdw (exact), then vpdpwssd with the scales: 12 multiplying
         * instructions per super-block instead of 16 */
        const __m256i z = _mm256_setzero_si256();
        _Pragma("GCC unroll 4") for (int p = 0; p < 4; p++) {
                const __m256i r0 = _mm256_dpbusd_epi32(z, d->W[2 * p], load256(xb->qs + 64 * p));
                const __m256i r1 = _mm256_dpbusd_epi32(z, d->W[2 * p + 1], load256(xb->qs + 64 * p + 32));
                if (p & 1)
                        s1 = _mm256_dpwssd_epi32(s1, _mm256_packs_epi32(r0, r1), d->SC[p]);
                else
                        s0 = _mm256_dpwssd_epi32(s0, _mm256_packs_epi32(r0, r1), d->SC[p]);
        }
#else
        _Pragma("GCC unroll 4") for (int g = 0; g < 8; g += 2) {
                s0 = FN(madd_acc256)(s0, _mm256_maddubs_epi16(d->W[g], load256(xb->qs + 32 * g)), d->SC[g]);
                s1 = FN(madd_acc256)(s1, _mm256_maddubs_epi16(d->W[g + 1], load256(xb->qs + 32 * g + 32)), d->SC[g + 1]);
        }
#endif
        *ret_a = _mm256_add_epi32(s0, s1);
        *ret_m = _mm256_madd_epi16(load256(xb->bsums), d->MP);
}

/* ---- Q2_K into the same layout: W[c] (chunk c = 4h + j: weights 128h + 32j .., groups 2c
 * and 2c + 1) the quants 0..3; SC as k4_decode's but one scale per 16 lanes' half (the
 * int16 lanes 0..7 of vpmaddubsw's result are group 2c, 8..15 group 2c + 1); MP the 16 mins
 * as int16, against bsums[0..15]. */
ATTR INLINE void FN(q2k_decode)(const BlockQ2_K *blk, FN(K4) *d) {
        const __m256i m3 = _mm256_set1_epi8(3);
        _Pragma("GCC unroll 2") for (int h = 0; h < 2; h++) {
                const __m256i q = load256(blk->qs + 32 * h);
                _Pragma("GCC unroll 4") for (int j = 0; j < 4; j++)
                        d->W[4 * h + j] = _mm256_and_si256(shift16(q, -2 * j), m3);
        }
        const __m128i sv = _mm_loadu_si128((const __m128i *)blk->scales), m4 = _mm_set1_epi8(0x0f);
        const __m256i bsc = _mm256_broadcastsi128_si256(_mm_and_si128(sv, m4));
        d->MP = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(sv, 4), m4));
#if VNNI /* SC[p] per k4_item's vpackssdw layout: [sc 4p x 4, sc 4p+2 x 4 | sc 4p+1 x 4, sc 4p+3 x 4] */
        _Pragma("GCC unroll 4") for (int p = 0; p < 4; p++) {
                const short a = (short)(0x8000 | (4 * p)), b = (short)(0x8000 | (4 * p + 1)),
                            c = (short)(0x8000 | (4 * p + 2)), e = (short)(0x8000 | (4 * p + 3));
                d->SC[p] = _mm256_shuffle_epi8(bsc, _mm256_setr_epi16(a, a, a, a, c, c, c, c, b, b, b, b, e, e, e, e));
        }
#else
        _Pragma("GCC unroll 8") for (int c = 0; c < 8; c++) {
                const short a = (short)(0x8000 | (2 * c)), b = (short)(0x8000 | (2 * c + 1));
                d->SC[c] = _mm256_shuffle_epi8(bsc, _mm256_setr_epi16(a, a, a, a, a, a, a, a, b, b, b, b, b, b, b, b));
        }
#endif
}

ATTR INLINE void FN(kq_decode)(const uint8_t *blk, int kind, FN(K4) *d) {
        if (kind == KQ_Q2K)
                FN(q2k_decode)((const BlockQ2_K *)blk, d);
        else if (kind == KQ_Q5K)
                FN(k4_decode)(blk + 4, blk + offsetof(BlockQ5_K, qs), blk + offsetof(BlockQ5_K, qh), d);
        else
                FN(k4_decode)(blk + 4, blk + offsetof(BlockQ4_K, qs), NULL, d);
}

/* Q4_K / Q5_K / Q2_K (kind) rows: block b at w + b * bsz. T = 1: 4 super-blocks
 * per terms_k4(); up to FEW_TOKENS the same per token, the 4 decoded once (decoding into an
 * array made T = 1 itself 17% slower from L2: 20.1-20.8 against 24.8 GB/s, so T = 1 keeps
 * its own loop); else one super-block, 4 tokens per terms_k4() (a lane per token). */
ATTR INLINE void FN(k45_tile)(const uint8_t *w, size_t bsz, int kind, const BlockQ8K *x, int64_t xs, int TT, float *acc,
                              int64_t nb) {
        const __m256i z = _mm256_setzero_si256();
        if (TT == 1) {
                float a = 0.0f;
                for (int64_t b0 = 0; b0 < nb; b0 += 4) {
                        const int k = nb - b0 < 4 ? (int)(nb - b0) : 4;
                        __m256i A[4], M[4];
                        uint32_t dm[4] = { 0, 0, 0, 0 };
                        prefetch_ahead(w + (size_t)b0 * bsz, 4 * bsz);
                        _Pragma("GCC unroll 4") for (int i = 0; i < 4; i++) {
                                A[i] = M[i] = z;
                                if (i < k) {
                                        const uint8_t *blk = w + (size_t)(b0 + i) * bsz;
                                        FN(K4) d;
                                        FN(kq_decode)(blk, kind, &d);
                                        FN(k4_item)(&d, x + b0 + i, &A[i], &M[i]);
                                        dm[i] = kq_dm(blk, kind);
                                }
                        }
                        const __m256 Wv = halves8(_mm_setr_epi32((int)dm[0], (int)dm[1], (int)dm[2], (int)dm[3]));
                        a = add_terms(a, terms_k4(A, M, xd4(x + b0, 1, k), Wv), k);
                }
                acc[0] = a;
                return;
        }
        if (TT <= FEW_TOKENS) { /* as T = 1, each super-block decoded once for the TT tokens */
                float a[FEW_TOKENS] = { 0.0f };
                for (int64_t b0 = 0; b0 < nb; b0 += 4) {
                        const int k = nb - b0 < 4 ? (int)(nb - b0) : 4;
                        FN(K4) d[4];
                        uint32_t dm[4] = { 0, 0, 0, 0 };
                        prefetch_ahead(w + (size_t)b0 * bsz, 4 * bsz);
                        for (int i = 0; i < k; i++) {
                                const uint8_t *blk = w + (size_t)(b0 + i) * bsz;
                                FN(kq_decode)(blk, kind, &d[i]);
                                dm[i] = kq_dm(blk, kind);
                        }
                        const __m256 Wv = halves8(_mm_setr_epi32((int)dm[0], (int)dm[1], (int)dm[2], (int)dm[3]));
                        for (int t = 0; t < TT; t++) {
                                __m256i A[4], M[4];
                                _Pragma("GCC unroll 4") for (int i = 0; i < 4; i++) {
                                        A[i] = M[i] = z;
                                        if (i < k)
                                                FN(k4_item)(&d[i], x + t * xs + b0 + i, &A[i], &M[i]);
                                }
                                a[t] = add_terms(a[t], terms_k4(A, M, xd4(x + t * xs + b0, 1, k), Wv), k);
                        }
                }
                for (int t = 0; t < TT; t++)
                        acc[t] = a[t];
                return;
        }
        __m128 acc4[TILE_T / 4] = { _mm_setzero_ps(), _mm_setzero_ps() };
        for (int64_t b = 0; b < nb; b++) {
                const uint8_t *blk = w + (size_t)b * bsz;
                FN(K4) d;
                FN(kq_decode)(blk, kind, &d);
                const __m256 Wv = halves8(_mm_set1_epi32((int)kq_dm(blk, kind)));
                for (int g = 0; g < TT; g += 4) {
                        const int k = TT - g < 4 ? TT - g : 4;
                        __m256i A[4], M[4];
                        _Pragma("GCC unroll 4") for (int i = 0; i < 4; i++) {
                                A[i] = M[i] = z;
                                if (i < k)
                                        FN(k4_item)(&d, x + (g + i) * xs + b, &A[i], &M[i]);
                        }
                        acc4[g / 4] = _mm_add_ps(acc4[g / 4], terms_k4(A, M, xd4(x + g * xs + b, xs, k), Wv));
                }
        }
        float f[TILE_T];
        _mm_storeu_ps(f, acc4[0]);
        _mm_storeu_ps(f + 4, acc4[1]);
        for (int t = 0; t < TT; t++)
                acc[t] = f[t];
}

ATTR INLINE void FN(q4k_tile)(const BlockQ4_K *w, const BlockQ8K *x, int64_t xs, int TT, float *acc, int64_t nb) {
        FN(k45_tile)((const uint8_t *)w, sizeof(BlockQ4_K), KQ_Q4K, x, xs, TT, acc, nb);
}

ATTR INLINE void FN(q5k_tile)(const BlockQ5_K *w, const BlockQ8K *x, int64_t xs, int TT, float *acc, int64_t nb) {
        FN(k45_tile)((const uint8_t *)w, sizeof(BlockQ5_K), KQ_Q5K, x, xs, TT, acc, nb);
}

ATTR INLINE void FN(q2k_tile)(const BlockQ2_K *w, const BlockQ8K *x, int64_t xs, int TT, float *acc, int64_t nb) {
        FN(k45_tile)((const uint8_t *)w, sizeof(BlockQ2_K), KQ_Q2K, x, xs, TT, acc, nb);
}

/* ---- Signed scales per group of 16 (Q6_K on 256-bit vectors, Q3_K): W[c] (chunk c: weights
 * 32c .., groups 2c and 2c + 1) the unsigned quants; SC[c] their scales as int16, 8 lanes
 * each (vpmaddubsw's int16 lanes 0..7 are group 2c, 8..15 group 2c + 1); S16 all 16 scales. */
typedef struct FN(G16) {
        __m256i W[8], SC[8], S16;
} FN(G16);

/* SC and S16 from the 16 signed scales. */
ATTR INLINE void FN(g16_scales)(__m128i sc8, FN(G16) *d) {
        _Pragma("GCC unroll 8") for (int c = 0; c < 8; c++) {
                const __m128i idx = _mm_or_si128(_mm_set1_epi8((char)(2 * c)),
                                                 _mm_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1));
                d->SC[c] = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(sc8, idx));
        }
        d->S16 = _mm256_cvtepi8_epi16(sc8);
}

/* isum spread over 8 lanes: sum sc q x - (sum sc bsums) << off_shift (the quants' offset:
 * 32 = 1 << 5 for Q6_K, 4 = 1 << 2 for Q3_K) */
ATTR INLINE __m256i FN(g16_item)(const FN(G16) *d, const BlockQ8K *xb, int off_shift) {
        __m256i s0 = _mm256_setzero_si256(), s1 = _mm256_setzero_si256();
        _Pragma("GCC unroll 4") for (int c = 0; c < 8; c += 2) {
                s0 = FN(madd_acc256)(s0, _mm256_maddubs_epi16(d->W[c], load256(xb->qs + 32 * c)), d->SC[c]);
                s1 = FN(madd_acc256)(s1, _mm256_maddubs_epi16(d->W[c + 1], load256(xb->qs + 32 * c + 32)), d->SC[c + 1]);
        }
        const __m256i ms = _mm256_madd_epi16(load256(xb->bsums), d->S16);
        return _mm256_sub_epi32(_mm256_add_epi32(s0, s1), _mm256_slli_epi32(ms, off_shift));
}

#if W512
/* acc + sum over pairs of p (int16) * s (int16), as int32 lanes */
ATTR INLINE __m512i FN(madd_acc512)(__m512i acc, __m512i p, __m512i s) {
#if VNNI
        return _mm512_dpwssd_epi32(acc, p, s);
#else
        return _mm512_add_epi32(acc, _mm512_madd_epi16(p, s));
#endif
}

/* ---- Q6_K, 512-bit: zmm k = weights 64k .. 64k+63 (groups 4k .. 4k+3) as 0..63; SC[k] lane i
 * = sc[4k + i/8] (int16); S16 the 16 scales as int16. */
typedef struct FN(Q6) {
        __m512i W[4], SC[4];
        __m256i S16;
} FN(Q6);

ATTR INLINE void FN(q6k_decode)(const BlockQ6_K *blk, FN(Q6) *d) {
        const __m512i m4 = _mm512_set1_epi8(0x0f), m30 = _mm512_set1_epi8(0x30);
        const __m512i base = _mm512_set_epi64(0x0003000300030003, 0x0003000300030003, 0x0002000200020002, 0x0002000200020002,
                                              0x0001000100010001, 0x0001000100010001, 0, 0);
        _Pragma("GCC unroll 2") for (int h = 0; h < 2; h++) {
                const __m512i l = _mm512_loadu_si512(blk->ql + 64 * h);
                const __m256i qh = _mm256_loadu_si256((const __m256i *)(blk->qh + 32 * h));
                const __m512i z = join256(qh, _mm256_srli_epi16(qh, 2));
                d->W[2 * h] = _mm512_or_si512(_mm512_and_si512(l, m4), _mm512_and_si512(_mm512_slli_epi16(z, 4), m30));
                d->W[2 * h + 1] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(l, 4), m4), _mm512_and_si512(z, m30));
        }
        d->S16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)blk->scales));
        _Pragma("GCC unroll 4") for (int k = 0; k < 4; k++)
                d->SC[k] = _mm512_permutexvar_epi16(_mm512_add_epi16(base, _mm512_set1_epi16((short)(4 * k))),
                                                    _mm512_castsi256_si512(d->S16));
}

/* isum spread over 8 lanes: sum sc q x - 32 sum sc bsums */
ATTR INLINE __m256i FN(q6k_item)(const FN(Q6) *d, const BlockQ8K *xb) {
        __m512i s0 = _mm512_setzero_si512(), s1 = _mm512_setzero_si512();
        s0 = FN(madd_acc512)(s0, _mm512_maddubs_epi16(d->W[0], _mm512_loadu_si512(xb->qs)), d->SC[0]);
        s1 = FN(madd_acc512)(s1, _mm512_maddubs_epi16(d->W[1], _mm512_loadu_si512(xb->qs + 64)), d->SC[1]);
        s0 = FN(madd_acc512)(s0, _mm512_maddubs_epi16(d->W[2], _mm512_loadu_si512(xb->qs + 128)), d->SC[2]);
        s1 = FN(madd_acc512)(s1, _mm512_maddubs_epi16(d->W[3], _mm512_loadu_si512(xb->qs + 192)), d->SC[3]);
        const __m256i ms = _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)xb->bsums), d->S16);
        return _mm256_sub_epi32(fold512(_mm512_add_epi32(s0, s1)), _mm256_slli_epi32(ms, 5));
}

/* ---- Q8_0, 512-bit: zmm k = blocks 2k, 2k+1 of the super-block. VNNI: vpdpbusd of (w + 128)
 * with x, minus 128 * sum x (from bsums); else |w| x (x negated where w < 0) by vpmaddubsw. */
typedef struct FN(Q80) {
        __m512i W[4];
#if !VNNI
        __mmask64 neg[4];
#endif
} FN(Q80);

ATTR INLINE void FN(q8_0_decode)(const BlockQ8_0 *blk, FN(Q80) *d) {
        _Pragma("GCC unroll 4") for (int k = 0; k < 4; k++) {
                const __m512i v = join256(_mm256_loadu_si256((const __m256i *)blk[2 * k].qs),
                                          _mm256_loadu_si256((const __m256i *)blk[2 * k + 1].qs));
#if VNNI
                d->W[k] = _mm512_xor_si512(v, _mm512_set1_epi8((char)0x80));
#else
                d->neg[k] = _mm512_movepi8_mask(v);
                d->W[k] = _mm512_abs_epi8(v);
#endif
        }
}

/* the 8 block sums in order */
ATTR INLINE __m256i FN(q8_0_item)(const FN(Q80) *d, const BlockQ8X *xb) {
        __m512i R[4];
        _Pragma("GCC unroll 4") for (int k = 0; k < 4; k++) {
                const __m512i a = _mm512_loadu_si512(xb->qs + 64 * k);
#if VNNI
                R[k] = _mm512_dpbusd_epi32(_mm512_setzero_si512(), d->W[k], a);
#else
                const __m512i sa = _mm512_mask_sub_epi8(a, d->neg[k], _mm512_setzero_si512(), a);
                R[k] = _mm512_madd_epi16(_mm512_maddubs_epi16(d->W[k], sa), _mm512_set1_epi16(1));
#endif
        }
        const __m256i S = blocksums8_512(R);
#if VNNI
        const __m256i xsum = _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)xb->bsums), _mm256_set1_epi16(1));
        return _mm256_sub_epi32(S, _mm256_slli_epi32(xsum, 7));
#else
        return S;
#endif
}

#else /* 256-bit Q6_K */

/* ---- Q6_K, 256-bit: per half h, four ymm of quants 0..63: W[4h + p] = weights 128h + 32p ..,
 * groups 8h + 2p and 8h + 2p + 1; SC[4h + p] their scales as int16, 8 lanes each. */
typedef FN(G16) FN(Q6);

ATTR INLINE void FN(q6k_decode)(const BlockQ6_K *blk, FN(Q6) *d) {
        const __m256i m4 = _mm256_set1_epi8(0x0f), m30 = _mm256_set1_epi8(0x30);
        _Pragma("GCC unroll 2") for (int h = 0; h < 2; h++) {
                const __m256i l0 = load256(blk->ql + 64 * h), l1 = load256(blk->ql + 64 * h + 32);
                const __m256i qh = load256(blk->qh + 32 * h);
                d->W[4 * h + 0] = _mm256_or_si256(_mm256_and_si256(l0, m4), _mm256_and_si256(_mm256_slli_epi16(qh, 4), m30));
                d->W[4 * h + 1] = _mm256_or_si256(_mm256_and_si256(l1, m4), _mm256_and_si256(_mm256_slli_epi16(qh, 2), m30));
                d->W[4 * h + 2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4), _mm256_and_si256(qh, m30));
                d->W[4 * h + 3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                                                  _mm256_and_si256(_mm256_srli_epi16(qh, 2), m30));
        }
        FN(g16_scales)(_mm_loadu_si128((const __m128i *)blk->scales), d);
}

/* isum spread over 8 lanes: sum sc q x - 32 sum sc bsums */
ATTR INLINE __m256i FN(q6k_item)(const FN(Q6) *d, const BlockQ8K *xb) {
        return FN(g16_item)(d, xb, 5);
}

#endif /* W512 */

/* ---- The legacy types, 256-bit for every instruction set: W[i] = the 32 signed integer
 * weights of block i (q - 8 for Q4_0, q - 16 for Q5_0, q for Q4_1 / Q5_1 / Q8_0), U[i] =
 * |W[i]|; signed x signed as |w| x (x with w's sign, vpsignb): exact, |x| <= 127. */
typedef struct FN(L8) {
        __m256i W[8], U[8];
} FN(L8);

/* The 32 weights of a 4-bit block (qs: 16 bytes, low nibbles first), plus 16 where bit l
 * of qh (Q5_0 / Q5_1) is set, minus off. */
ATTR INLINE __m256i FN(leg_nibbles)(const uint8_t *qs, const uint8_t *qh, int off) {
        const __m128i v = _mm_loadu_si128((const __m128i *)qs), m4 = _mm_set1_epi8(0x0f);
        __m256i q = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(v, 4), m4), _mm_and_si128(v, m4));
        if (qh) { /* byte l takes byte l / 8 of qh, then its bit l % 8 */
                uint32_t h;
                memcpy(&h, qh, 4);
                const __m256i spread = _mm256_shuffle_epi8(_mm256_set1_epi32((int)h),
                                                           _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,
                                                                            2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3));
                const __m256i bit = _mm256_set1_epi64x(0x8040201008040201);
                const __m256i set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit);
                q = _mm256_or_si256(q, _mm256_and_si256(set, _mm256_set1_epi8(0x10)));
        }
        return off ? _mm256_sub_epi8(q, _mm256_set1_epi8((char)off)) : q;
}

/* Decodes the 8 blocks (bsz bytes each) of a legacy super-block. */
ATTR INLINE void FN(leg_decode)(const uint8_t *blk, uint32_t type, size_t bsz, FN(L8) *d) {
        _Pragma("GCC unroll 8") for (int i = 0; i < 8; i++) {
                const uint8_t *b = blk + (size_t)i * bsz;
                switch (type) {
                case GGML_TYPE_Q8_0: d->W[i] = load256(b + 2); break;
                case GGML_TYPE_Q4_0: d->W[i] = FN(leg_nibbles)(b + 2, NULL, 8); break;
                case GGML_TYPE_Q4_1: d->W[i] = FN(leg_nibbles)(b + 4, NULL, 0); break;
                case GGML_TYPE_Q5_0: d->W[i] = FN(leg_nibbles)(b + 6, b + 2, 16); break;
                default:             d->W[i] = FN(leg_nibbles)(b + 8, b + 4, 0); break; /* Q5_1 */
                }
                d->U[i] = _mm256_sign_epi8(d->W[i], d->W[i]);
        }
}

/* The 8 block sums of a decoded super-block with one activation block, in order. */
ATTR INLINE __m256i FN(leg_item)(const FN(L8) *d, const BlockQ8X *xb) {
        const __m256i ones = _mm256_set1_epi16(1);
        __m256i R[8];
        _Pragma("GCC unroll 8") for (int i = 0; i < 8; i++)
                R[i] = _mm256_madd_epi16(_mm256_maddubs_epi16(d->U[i], _mm256_sign_epi8(load256(xb->qs + 32 * i), d->W[i])), ones);
        const __m256i g0 = _mm256_hadd_epi32(_mm256_hadd_epi32(R[0], R[1]), _mm256_hadd_epi32(R[2], R[3]));
        const __m256i g1 = _mm256_hadd_epi32(_mm256_hadd_epi32(R[4], R[5]), _mm256_hadd_epi32(R[6], R[7]));
        return _mm256_add_epi32(_mm256_permute2x128_si256(g0, g1, 0x20), _mm256_permute2x128_si256(g0, g1, 0x31));
}

#define LEG_DECODER(NAME, BLK, TYPE)                                                                          \
        ATTR INLINE void FN(NAME)(const BLK *blk, FN(L8) *d) {                                                \
                FN(leg_decode)((const uint8_t *)blk, TYPE, sizeof(BLK), d);                                   \
        }
LEG_DECODER(q4_1_decode, BlockQ4_1, GGML_TYPE_Q4_1)
LEG_DECODER(q5_1_decode, BlockQ5_1, GGML_TYPE_Q5_1)

/* Q4_0 / Q5_0 keep their unsigned quants q (0..15 / 0..31): vpmaddubsw takes them as they
 * are (no vpsignb), and the offset comes out of the block sums at the end: sum (q - off) x
 * = sum q x - off * (sum x), the activation sums from bsums. */
typedef struct FN(L8U) {
        __m256i Q[8];
} FN(L8U);

ATTR INLINE void FN(q4_0_decode)(const BlockQ4_0 *blk, FN(L8U) *d) {
        _Pragma("GCC unroll 8") for (int i = 0; i < 8; i++)
                d->Q[i] = FN(leg_nibbles)(blk[i].qs, NULL, 0);
}

ATTR INLINE void FN(q5_0_decode)(const BlockQ5_0 *blk, FN(L8U) *d) {
        _Pragma("GCC unroll 8") for (int i = 0; i < 8; i++)
                d->Q[i] = FN(leg_nibbles)(blk[i].qs, blk[i].qh, 0);
}

/* The 8 block sums of sum (q - 2^off_log2) x, in order. */
ATTR INLINE __m256i FN(leg_item_u)(const FN(L8U) *d, const BlockQ8X *xb, int off_log2) {
        const __m256i ones = _mm256_set1_epi16(1);
        __m256i R[8];
        _Pragma("GCC unroll 8") for (int i = 0; i < 8; i++) /* pair sums <= 2 * 31 * 127 */
                R[i] = _mm256_madd_epi16(_mm256_maddubs_epi16(d->Q[i], load256(xb->qs + 32 * i)), ones);
        const __m256i g0 = _mm256_hadd_epi32(_mm256_hadd_epi32(R[0], R[1]), _mm256_hadd_epi32(R[2], R[3]));
        const __m256i g1 = _mm256_hadd_epi32(_mm256_hadd_epi32(R[4], R[5]), _mm256_hadd_epi32(R[6], R[7]));
        const __m256i s = _mm256_add_epi32(_mm256_permute2x128_si256(g0, g1, 0x20), _mm256_permute2x128_si256(g0, g1, 0x31));
        return _mm256_sub_epi32(s, _mm256_slli_epi32(xsums8(xb), off_log2));
}

ATTR INLINE __m256i FN(q4_0_item)(const FN(L8U) *d, const BlockQ8X *xb) {
        return FN(leg_item_u)(d, xb, 3);
}

ATTR INLINE __m256i FN(q5_0_item)(const FN(L8U) *d, const BlockQ8X *xb) {
        return FN(leg_item_u)(d, xb, 4);
}

ATTR INLINE void FN(q4_0_tile)(const BlockQ4_0 *w, const BlockQ8X *x, int64_t xs, int TT, float *acc, int64_t nb) {
        LEG_TILE_BODY(FN(L8U), FN(q4_0_decode), FN(q4_0_item), 0);
}
ATTR INLINE void FN(q4_1_tile)(const BlockQ4_1 *w, const BlockQ8X *x, int64_t xs, int TT, float *acc, int64_t nb) {
        LEG_TILE_BODY(FN(L8), FN(q4_1_decode), FN(leg_item), 1);
}
ATTR INLINE void FN(q5_0_tile)(const BlockQ5_0 *w, const BlockQ8X *x, int64_t xs, int TT, float *acc, int64_t nb) {
        LEG_TILE_BODY(FN(L8U), FN(q5_0_decode), FN(q5_0_item), 0);
}
ATTR INLINE void FN(q5_1_tile)(const BlockQ5_1 *w, const BlockQ8X *x, int64_t xs, int TT, float *acc, int64_t nb) {
        LEG_TILE_BODY(FN(L8), FN(q5_1_decode), FN(leg_item), 1);
}

/* ---- Q3_K, 256-bit for every instruction set, in the G16 layout: W[c] (c = 4h + j: weights
 * 128h + 32j ..) the unsigned u = q2 + 4 hbit (0..7). */
typedef FN(G16) FN(Q3);

ATTR INLINE void FN(q3k_decode)(const BlockQ3_K *blk, FN(Q3) *d) {
        const __m256i m3 = _mm256_set1_epi8(3), one = _mm256_set1_epi8(1);
        const __m256i hm = load256(blk->hmask);
        _Pragma("GCC unroll 2") for (int h = 0; h < 2; h++) {
                const __m256i q = load256(blk->qs + 32 * h);
                _Pragma("GCC unroll 4") for (int j = 0; j < 4; j++) {
                        const __m256i lo = _mm256_and_si256(shift16(q, -2 * j), m3);
                        const __m256i hb = _mm256_and_si256(shift16(hm, -(4 * h + j)), one);
                        d->W[4 * h + j] = _mm256_or_si256(lo, _mm256_slli_epi16(hb, 2));
                }
        }
        int8_t sc[16];
        quant_q3_k_scales(blk->scales, sc);
        FN(g16_scales)(_mm_loadu_si128((const __m128i *)sc), d);
}

/* isum spread over 8 lanes: sum sc u x - 4 sum sc bsums */
ATTR INLINE __m256i FN(q3k_item)(const FN(Q3) *d, const BlockQ8K *xb) {
        return FN(g16_item)(d, xb, 2);
}

ATTR INLINE void FN(q3k_tile)(const BlockQ3_K *w, const BlockQ8K *x, int64_t xs, int TT, float *acc, int64_t nb) {
        Q6K_TILE_BODY(FN(Q3), FN(q3k_decode), FN(q3k_item));
}

ATTR INLINE void FN(q6k_tile)(const BlockQ6_K *w, const BlockQ8K *x, int64_t xs, int TT, float *acc, int64_t nb) {
        Q6K_TILE_BODY(FN(Q6), FN(q6k_decode), FN(q6k_item));
}

#if W512
ATTR INLINE void FN(q8_0_tile)(const BlockQ8_0 *w, const BlockQ8X *x, int64_t xs, int TT, float *acc, int64_t nb) {
        LEG_TILE_BODY(FN(Q80), FN(q8_0_decode), FN(q8_0_item), 0);
}
#else
LEG_DECODER(q8_0_decode, BlockQ8_0, GGML_TYPE_Q8_0)
ATTR INLINE void FN(q8_0_tile)(const BlockQ8_0 *w, const BlockQ8X *x, int64_t xs, int TT, float *acc, int64_t nb) {
        LEG_TILE_BODY(FN(L8), FN(q8_0_decode), FN(leg_item), 0);
}
#endif
#undef LEG_DECODER

#if W512
/* =======================================================================================
 * 4 rows at once (T > 1, DEFINE_DOT_ROWS4), 512-bit: in every vector 128-bit lane r
 * belongs to weight row r; the activation operand is the token's 16 matching quants
 * broadcast to the 4 lanes. Each vpdpbusd (VNNI) or vpmaddubsw + vpmaddwd leaves 4 int32
 * partial sums per row; a group's sum stays spread over its lane until the group scales
 * are applied (vpdpwssd / vpmaddwd on int16 lanes, exact), and the 4 partials of each row
 * are added once per super-block and 4 tokens by sum4x4(), (row r, token t) in lane 4r + t,
 * so the float part runs on 16 lanes = 4 rows x 4 tokens. */

/* ---- Q4_K / Q5_K: W[c] (chunk c < 8: qs[16c .. 16c + 15] of each row) the low nibbles =
 * weights 16 (c & 1) .. + 15 of group 2 (c / 2), W[8 + c] the high nibbles = the same
 * weights of group 2 (c / 2) + 1 (Q5_K: + 16 from qh). VNNI: both halves of a group go
 * into one vpdpbusd sum (|lane| <= 8 * 31 * 127 < 2^15), two groups are packed to int16
 * (vpackssdw, exact) and SC[j] (j < 4) = [sc_2j x 4, sc_2j+1 x 4] per lane weighs them
 * (one vpdpwssd); else SC[g] = sc_g in every int16 lane. MN[h]: [m_4h, m_4h, m_4h+1,
 * m_4h+1, .. m_4h+3, m_4h+3] per lane, times bsums[8h .. 8h + 7]. WD, WM: d, dmin of row r
 * in lanes 4r .. 4r + 3. */
typedef struct FN(K4x4) {
        __m512i W[16], SC[8], MN[2];
        __m512 WD, WM;
} FN(K4x4);

ATTR INLINE void FN(k4x4_decode)(const uint8_t *const blk[4], size_t qs_off, int has_qh, FN(K4x4) *d) {
        const __m512i m4 = _mm512_set1_epi8(0x0f), b4 = _mm512_set1_epi8(0x10);
        __m512i QH[2] = { _mm512_setzero_si512(), _mm512_setzero_si512() };
        if (has_qh) { /* Q5_K: qh[l] at block offset 16 + l */
                QH[0] = load4x128(blk, 16);
                QH[1] = load4x128(blk, 32);
        }
        _Pragma("GCC unroll 8") for (int c = 0; c < 8; c++) {
                const int j = c / 2;
                const __m512i q = load4x128(blk, qs_off + 16 * (size_t)c);
                __m512i lo = _mm512_and_si512(q, m4), hi = _mm512_and_si512(_mm512_srli_epi16(q, 4), m4);
                if (has_qh) { /* bit 2j (low nibbles) / 2j+1 (high) of qh[l] to bit 4 */
                        const __m512i h = QH[c & 1];
                        const __m512i hl = 4 - 2 * j > 0 ? _mm512_slli_epi16(h, 4 - 2 * j) : _mm512_srli_epi16(h, 2 * j - 4);
                        const __m512i hh = 3 - 2 * j > 0 ? _mm512_slli_epi16(h, 3 - 2 * j) : _mm512_srli_epi16(h, 2 * j - 3);
                        lo = _mm512_or_si512(lo, _mm512_and_si512(hl, b4));
                        hi = _mm512_or_si512(hi, _mm512_and_si512(hh, b4));
                }
                d->W[c] = lo;
                d->W[8 + c] = hi;
        }
        /* k4_scales_simd on 4 rows: lane r = [sc0 .. sc7, m0 .. m7] of row r */
        const __m512i v = load4x128(blk, 4);
        const __m512i xv = _mm512_shuffle_epi32(v, (_MM_PERM_ENUM)_MM_SHUFFLE(2, 1, 2, 0));
        const __m512i yv = _mm512_shuffle_epi32(v, (_MM_PERM_ENUM)_MM_SHUFFLE(1, 1, 0, 0));
        const __m512i lo = _mm512_and_si512(_mm512_srlv_epi32(xv, _mm512_broadcast_i32x4(_mm_setr_epi32(0, 0, 0, 4))),
                                            _mm512_broadcast_i32x4(_mm_setr_epi32(0x3f3f3f3f, 0x0f0f0f0f, 0x3f3f3f3f, 0x0f0f0f0f)));
        const __m512i hi = _mm512_and_si512(_mm512_srli_epi32(yv, 2), _mm512_broadcast_i32x4(_mm_setr_epi32(0, 0x30303030, 0, 0x30303030)));
        const __m512i sm = _mm512_or_si512(lo, hi);
#if VNNI
        _Pragma("GCC unroll 4") for (int p = 0; p < 4; p++) {
                const short a = (short)(0x8000 | (2 * p)), b = (short)(0x8000 | (2 * p + 1));
                d->SC[p] = _mm512_shuffle_epi8(sm, _mm512_broadcast_i32x4(_mm_setr_epi16(a, a, a, a, b, b, b, b)));
        }
#else
        _Pragma("GCC unroll 8") for (int g = 0; g < 8; g++)
                d->SC[g] = _mm512_shuffle_epi8(sm, _mm512_set1_epi16((short)(0x8000 | g)));
#endif
        _Pragma("GCC unroll 2") for (int h = 0; h < 2; h++) {
                const short m0 = (short)(0x8000 | (8 + 4 * h)), m1 = (short)(m0 + 1), m2 = (short)(m0 + 2), m3 = (short)(m0 + 3);
                d->MN[h] = _mm512_shuffle_epi8(sm, _mm512_broadcast_i32x4(_mm_setr_epi16(m0, m0, m1, m1, m2, m2, m3, m3)));
        }
        const __m128i dm = _mm_setr_epi32((int)k4_dm(blk[0]), (int)k4_dm(blk[1]), (int)k4_dm(blk[2]), (int)k4_dm(blk[3]));
        d->WD = halves_per_row(dm, 0);
        d->WM = halves_per_row(dm, 1);
}

/* One token: *A = partial isums (4 per row lane), *M = partial msums */
ATTR INLINE void FN(k4x4_item)(const FN(K4x4) *d, const BlockQ8K *xb, __m512i *A, __m512i *M) {
        const __m512i z = _mm512_setzero_si512();
        __m512i s0 = z, s1 = z;
        _Pragma("GCC unroll 4") for (int j = 0; j < 4; j++) {
                const int8_t *q = xb->qs + 64 * j;
#if VNNI
                const __m512i a = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(z, d->W[2 * j], bcast128(q)), d->W[2 * j + 1], bcast128(q + 16));
                const __m512i b = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(z, d->W[8 + 2 * j], bcast128(q + 32)), d->W[9 + 2 * j],
                                                      bcast128(q + 48));
                if (j & 1)
                        s1 = _mm512_dpwssd_epi32(s1, _mm512_packs_epi32(a, b), d->SC[j]);
                else
                        s0 = _mm512_dpwssd_epi32(s0, _mm512_packs_epi32(a, b), d->SC[j]);
#else /* pair sums, |.| <= 2 * 31 * 127; the group's two halves added: < 2^14 */
                const __m512i a = _mm512_add_epi16(_mm512_maddubs_epi16(d->W[2 * j], bcast128(q)),
                                                   _mm512_maddubs_epi16(d->W[2 * j + 1], bcast128(q + 16)));
                const __m512i b = _mm512_add_epi16(_mm512_maddubs_epi16(d->W[8 + 2 * j], bcast128(q + 32)),
                                                   _mm512_maddubs_epi16(d->W[9 + 2 * j], bcast128(q + 48)));
                s0 = FN(madd_acc512)(s0, a, d->SC[2 * j]);
                s1 = FN(madd_acc512)(s1, b, d->SC[2 * j + 1]);
#endif
        }
        *A = _mm512_add_epi32(s0, s1);
        *M = FN(madd_acc512)(_mm512_madd_epi16(bcast128(xb->bsums), d->MN[0]), bcast128(xb->bsums + 8), d->MN[1]);
}

/* term_k4 on the 16 lanes (row r, token t) of I (isum), M (msum): X = xd_t, WD, WM per row */
ATTR INLINE __m512 FN(terms_k4x4)(__m512i I, __m512i M, __m512 X, __m512 WD, __m512 WM) {
        const __m512 p = _mm512_mul_ps(_mm512_mul_ps(X, WD), _mm512_cvtepi32_ps(I));
        return _mm512_sub_ps(p, _mm512_mul_ps(_mm512_mul_ps(X, WM), _mm512_cvtepi32_ps(M)));
}

ATTR INLINE void FN(k45_tile4)(const uint8_t *const w[4], size_t bsz, size_t qs_off, int has_qh, const BlockQ8K *x, int64_t xs,
                               int TT, float *out, int64_t nb) {
        __m512 acc[TILE_T4 / 4];
        for (int g = 0; g < TILE_T4 / 4; g++)
                acc[g] = _mm512_setzero_ps();
        for (int64_t b = 0; b < nb; b++) {
                const uint8_t *blk[4] = { w[0] + (size_t)b * bsz, w[1] + (size_t)b * bsz, w[2] + (size_t)b * bsz, w[3] + (size_t)b * bsz };
                FN(K4x4) d;
                FN(k4x4_decode)(blk, qs_off, has_qh, &d);
                for (int g = 0; g < TT; g += 4) {
                        const int k = TT - g < 4 ? TT - g : 4;
                        __m512i A[4], M[4];
                        _Pragma("GCC unroll 4") for (int i = 0; i < 4; i++) {
                                A[i] = M[i] = _mm512_setzero_si512();
                                if (i < k)
                                        FN(k4x4_item)(&d, x + (g + i) * xs + b, &A[i], &M[i]);
                        }
                        const __m512 X = _mm512_broadcast_f32x4(xd4(x + g * xs + b, xs, k));
                        acc[g / 4] = _mm512_add_ps(acc[g / 4], FN(terms_k4x4)(sum4x4(A), sum4x4(M), X, d.WD, d.WM));
                }
        }
        for (int g = 0; g < TT; g += 4)
                _mm512_store_ps(out + 4 * g, acc[g / 4]);
}

ATTR INLINE void FN(q4k_tile4)(const uint8_t *const w[4], const BlockQ8K *x, int64_t xs, int TT, float *out, int64_t nb) {
        FN(k45_tile4)(w, sizeof(BlockQ4_K), offsetof(BlockQ4_K, qs), 0, x, xs, TT, out, nb);
}

ATTR INLINE void FN(q5k_tile4)(const uint8_t *const w[4], const BlockQ8K *x, int64_t xs, int TT, float *out, int64_t nb) {
        FN(k45_tile4)(w, sizeof(BlockQ5_K), offsetof(BlockQ5_K, qs), 1, x, xs, TT, out, nb);
}

/* ---- Q6_K: W[g] = group g (weights 16g .. 16g + 15, quants 0..63) of each row. VNNI: a
 * group's vpdpbusd sum (|lane| <= 4 * 63 * 127 < 2^15), two groups packed to int16 and
 * SC[p] (p < 8) = [sc_2p x 4, sc_2p+1 x 4] per lane; else SC[g] = sc_g in every int16
 * lane. SB[h] = [-32 sc_8h+i, i < 8] per lane, times bsums[8h .. 8h + 7]: the -32 sum sc
 * bsums part of isum in the same accumulator. WD: d of row r in lanes 4r .. 4r + 3. */
typedef struct FN(Q6x4) {
        __m512i W[16], SC[16], SB[2];
        __m512 WD;
} FN(Q6x4);

ATTR INLINE void FN(q6x4_decode)(const uint8_t *const blk[4], FN(Q6x4) *d) {
        const __m512i m4 = _mm512_set1_epi8(0x0f), m30 = _mm512_set1_epi8(0x30);
        _Pragma("GCC unroll 2") for (int h = 0; h < 2; h++)
                _Pragma("GCC unroll 2") for (int s = 0; s < 2; s++) {
                        /* l = 16s .. 16s + 15 of half h: quants 128h + l (+ 32, + 64, + 96) */
                        const __m512i qh = load4x128(blk, offsetof(BlockQ6_K, qh) + 32 * (size_t)h + 16 * (size_t)s);
                        const __m512i l0 = load4x128(blk, 64 * (size_t)h + 16 * (size_t)s);
                        const __m512i l1 = load4x128(blk, 64 * (size_t)h + 32 + 16 * (size_t)s);
                        d->W[8 * h + s] = _mm512_or_si512(_mm512_and_si512(l0, m4), _mm512_and_si512(_mm512_slli_epi16(qh, 4), m30));
                        d->W[8 * h + 2 + s] = _mm512_or_si512(_mm512_and_si512(l1, m4), _mm512_and_si512(_mm512_slli_epi16(qh, 2), m30));
                        d->W[8 * h + 4 + s] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(l0, 4), m4), _mm512_and_si512(qh, m30));
                        d->W[8 * h + 6 + s] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(l1, 4), m4),
                                                              _mm512_and_si512(_mm512_srli_epi16(qh, 2), m30));
                }
        /* scale bytes to the high byte of int16 lanes, then an arithmetic shift: sign-extended */
        const __m512i sc = load4x128(blk, offsetof(BlockQ6_K, scales));
#if VNNI
        _Pragma("GCC unroll 8") for (int p = 0; p < 8; p++) {
                const short a = (short)(((2 * p) << 8) | 0x80), b = (short)(((2 * p + 1) << 8) | 0x80);
                d->SC[p] = _mm512_srai_epi16(_mm512_shuffle_epi8(sc, _mm512_broadcast_i32x4(_mm_setr_epi16(a, a, a, a, b, b, b, b))), 8);
        }
#else
        _Pragma("GCC unroll 16") for (int g = 0; g < 16; g++)
                d->SC[g] = _mm512_srai_epi16(_mm512_shuffle_epi8(sc, _mm512_set1_epi16((short)((g << 8) | 0x80))), 8);
#endif
        _Pragma("GCC unroll 2") for (int h = 0; h < 2; h++) {
                const __m512i ctl = _mm512_broadcast_i32x4(_mm_setr_epi16(
                        (short)(((8 * h) << 8) | 0x80), (short)(((8 * h + 1) << 8) | 0x80), (short)(((8 * h + 2) << 8) | 0x80),
                        (short)(((8 * h + 3) << 8) | 0x80), (short)(((8 * h + 4) << 8) | 0x80), (short)(((8 * h + 5) << 8) | 0x80),
                        (short)(((8 * h + 6) << 8) | 0x80), (short)(((8 * h + 7) << 8) | 0x80)));
                /* (sc << 8) >> 3 = 32 sc, negated */
                d->SB[h] = _mm512_sub_epi16(_mm512_setzero_si512(), _mm512_srai_epi16(_mm512_shuffle_epi8(sc, ctl), 3));
        }
        uint16_t dh[4];
        for (int r = 0; r < 4; r++)
                memcpy(&dh[r], blk[r] + offsetof(BlockQ6_K, d), 2);
        d->WD = halves_per_row(_mm_setr_epi16((short)dh[0], 0, (short)dh[1], 0, (short)dh[2], 0, (short)dh[3], 0), 0);
}

/* One token: partial isums, 4 per row lane */
ATTR INLINE __m512i FN(q6x4_item)(const FN(Q6x4) *d, const BlockQ8K *xb) {
        const __m512i z = _mm512_setzero_si512();
        __m512i s0 = z, s1 = z;
#if VNNI
        _Pragma("GCC unroll 8") for (int p = 0; p < 8; p++) {
                const __m512i a = _mm512_dpbusd_epi32(z, d->W[2 * p], bcast128(xb->qs + 32 * p));
                const __m512i b = _mm512_dpbusd_epi32(z, d->W[2 * p + 1], bcast128(xb->qs + 32 * p + 16));
                if (p & 1)
                        s1 = _mm512_dpwssd_epi32(s1, _mm512_packs_epi32(a, b), d->SC[p]);
                else
                        s0 = _mm512_dpwssd_epi32(s0, _mm512_packs_epi32(a, b), d->SC[p]);
        }
#else
        _Pragma("GCC unroll 16") for (int g = 0; g < 16; g += 2) {
                s0 = FN(madd_acc512)(s0, _mm512_maddubs_epi16(d->W[g], bcast128(xb->qs + 16 * g)), d->SC[g]);
                s1 = FN(madd_acc512)(s1, _mm512_maddubs_epi16(d->W[g + 1], bcast128(xb->qs + 16 * g + 16)), d->SC[g + 1]);
        }
#endif
        s0 = FN(madd_acc512)(s0, bcast128(xb->bsums), d->SB[0]);
        s1 = FN(madd_acc512)(s1, bcast128(xb->bsums + 8), d->SB[1]);
        return _mm512_add_epi32(s0, s1);
}

ATTR INLINE void FN(q6k_tile4)(const uint8_t *const w[4], const BlockQ8K *x, int64_t xs, int TT, float *out, int64_t nb) {
        __m512 acc[TILE_T4 / 4];
        for (int g = 0; g < TILE_T4 / 4; g++)
                acc[g] = _mm512_setzero_ps();
        for (int64_t b = 0; b < nb; b++) {
                const size_t o = (size_t)b * sizeof(BlockQ6_K);
                const uint8_t *blk[4] = { w[0] + o, w[1] + o, w[2] + o, w[3] + o };
                FN(Q6x4) d;
                FN(q6x4_decode)(blk, &d);
                for (int g = 0; g < TT; g += 4) {
                        const int k = TT - g < 4 ? TT - g : 4;
                        __m512i A[4];
                        _Pragma("GCC unroll 4") for (int i = 0; i < 4; i++)
                                A[i] = i < k ? FN(q6x4_item)(&d, x + (g + i) * xs + b) : _mm512_setzero_si512();
                        const __m512 X = _mm512_broadcast_f32x4(xd4(x + g * xs + b, xs, k));
                        /* term_q6k: (xd * wd) * isum */
                        acc[g / 4] = _mm512_add_ps(acc[g / 4], _mm512_mul_ps(_mm512_mul_ps(X, d.WD), _mm512_cvtepi32_ps(sum4x4(A))));
                }
        }
        for (int g = 0; g < TT; g += 4)
                _mm512_store_ps(out + 4 * g, acc[g / 4]);
}

/* ---- Q8_0: W[c] (c < 16) = quants 16c .. 16c + 15 of the super-block (block c / 2) of each
 * row. VNNI: w + 128 as unsigned bytes; the block sums then carry 128 sum x, taken off once
 * per (block, 4 tokens) from the activation's bsums (exact). Else |w|, and the broadcast
 * activation negated in the lanes where w < 0 (neg[c]; |x| <= 127, so that is exact too).
 * WD[i]: the d of block i of row r in lanes 4r .. 4r + 3. */
typedef struct FN(Q80x4) {
        __m512i W[16];
#if !VNNI
        __mmask64 neg[16];
#endif
        __m512 WD[8];
} FN(Q80x4);

ATTR INLINE void FN(q80x4_decode)(const uint8_t *const blk[4], FN(Q80x4) *d) {
        _Pragma("GCC unroll 16") for (int c = 0; c < 16; c++) {
                const __m512i v = load4x128(blk, sizeof(BlockQ8_0) * (size_t)(c / 2) + offsetof(BlockQ8_0, qs) + 16 * (size_t)(c & 1));
#if VNNI
                d->W[c] = _mm512_xor_si512(v, _mm512_set1_epi8((char)0x80));
#else
                d->neg[c] = _mm512_movepi8_mask(v);
                d->W[c] = _mm512_abs_epi8(v);
#endif
        }
        _Pragma("GCC unroll 4") for (int p = 0; p < 4; p++) {
                uint16_t h[8];
                for (int r = 0; r < 4; r++) {
                        memcpy(&h[2 * r], blk[r] + sizeof(BlockQ8_0) * (size_t)(2 * p), 2);
                        memcpy(&h[2 * r + 1], blk[r] + sizeof(BlockQ8_0) * (size_t)(2 * p + 1), 2);
                }
                const __m128i hv = _mm_loadu_si128((const __m128i *)h);
                d->WD[2 * p] = halves_per_row(hv, 0);
                d->WD[2 * p + 1] = halves_per_row(hv, 1);
        }
}

/* Token xb, block i: 4 partial sums of (row r) in lane r */
ATTR INLINE __m512i FN(q80x4_block)(const FN(Q80x4) *d, const BlockQ8X *xb, int i) {
        const __m512i a0 = bcast128(xb->qs + 32 * i), a1 = bcast128(xb->qs + 32 * i + 16);
#if VNNI
        return _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), d->W[2 * i], a0), d->W[2 * i + 1], a1);
#else
        const __m512i z = _mm512_setzero_si512(), one = _mm512_set1_epi16(1);
        const __m512i s0 = _mm512_maddubs_epi16(d->W[2 * i], _mm512_mask_sub_epi8(a0, d->neg[2 * i], z, a0));
        const __m512i s1 = _mm512_maddubs_epi16(d->W[2 * i + 1], _mm512_mask_sub_epi8(a1, d->neg[2 * i + 1], z, a1));
        return _mm512_add_epi32(_mm512_madd_epi16(s0, one), _mm512_madd_epi16(s1, one));
#endif
}

ATTR INLINE void FN(q8_0_tile4)(const uint8_t *const w[4], const BlockQ8X *x, int64_t xs, int TT, float *out, int64_t nb) {
        __m512 acc[TILE_T4 / 4];
        for (int g = 0; g < TILE_T4 / 4; g++)
                acc[g] = _mm512_setzero_ps();
        for (int64_t b = 0; b < nb; b++) {
                const size_t o = (size_t)b * 8 * sizeof(BlockQ8_0);
                const uint8_t *blk[4] = { w[0] + o, w[1] + o, w[2] + o, w[3] + o };
                FN(Q80x4) d;
                FN(q80x4_decode)(blk, &d);
                for (int g = 0; g < TT; g += 4) {
                        const int k = TT - g < 4 ? TT - g : 4;
                        const BlockQ8X *xt[4];
                        for (int t = 0; t < 4; t++)
                                xt[t] = x + (g + (t < k ? t : 0)) * xs + b;
#if VNNI /* XS: sum x over block i of token t at lane 8t + i (t < 2) / 8 (t - 2) + i (t >= 2) */
                        __m256i xsum[4];
                        for (int t = 0; t < 4; t++)
                                xsum[t] = t < k ? _mm256_madd_epi16(load256(xt[t]->bsums), _mm256_set1_epi16(1)) : _mm256_setzero_si256();
                        const __m512i XS01 = join256(xsum[0], xsum[1]), XS23 = join256(xsum[2], xsum[3]);
#endif
                        __m512 P[8];
                        _Pragma("GCC unroll 8") for (int i = 0; i < 8; i++) {
                                __m512i V[4];
                                _Pragma("GCC unroll 4") for (int t = 0; t < 4; t++)
                                        V[t] = t < k ? FN(q80x4_block)(&d, xt[t], i) : _mm512_setzero_si512();
                                __m512i S = sum4x4(V); /* (row r, token t) at 4r + t */
#if VNNI
                                const __m512i idx = _mm512_add_epi32(_mm512_setr_epi32(0, 8, 16, 24, 0, 8, 16, 24, 0, 8, 16, 24, 0, 8, 16, 24),
                                                                     _mm512_set1_epi32(i));
                                S = _mm512_sub_epi32(S, _mm512_slli_epi32(_mm512_permutex2var_epi32(XS01, idx, XS23), 7));
#endif
                                /* token t's scale of block i in lanes 4r + t */
                                const __m512 XD = _mm512_broadcast_f32x4(_mm_setr_ps(xt[0]->d[i], xt[1]->d[i], xt[2]->d[i], xt[3]->d[i]));
                                P[i] = _mm512_mul_ps(_mm512_mul_ps(d.WD[i], XD), _mm512_cvtepi32_ps(S));
                        }
                        /* term_leg: ((p0 + p1) + (p2 + p3)) + ((p4 + p5) + (p6 + p7)) */
                        const __m512 sum = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(P[0], P[1]), _mm512_add_ps(P[2], P[3])),
                                                         _mm512_add_ps(_mm512_add_ps(P[4], P[5]), _mm512_add_ps(P[6], P[7])));
                        acc[g / 4] = _mm512_add_ps(acc[g / 4], sum);
                }
        }
        for (int g = 0; g < TT; g += 4)
                _mm512_store_ps(out + 4 * g, acc[g / 4]);
}

DEFINE_DOT_ROWS4(FN(rows_q4k), FN(dot_q4k), ATTR, BlockQ4_K, BlockQ8K, FN(q4k_tile), FN(q4k_tile4))
DEFINE_DOT_ROWS4(FN(rows_q5k), FN(dot_q5k), ATTR, BlockQ5_K, BlockQ8K, FN(q5k_tile), FN(q5k_tile4))
DEFINE_DOT_ROWS4(FN(rows_q6k), FN(dot_q6k), ATTR, BlockQ6_K, BlockQ8K, FN(q6k_tile), FN(q6k_tile4))
DEFINE_DOT_ROWS4(FN(rows_q8_0), FN(dot_q8_0), ATTR, BlockQ8_0, BlockQ8X, FN(q8_0_tile), FN(q8_0_tile4))
#else
/* Many tokens (prefill): the 8-row panels of quant_gemm.c; fewer: a row at a time. */
#define DEFINE_DOT_ROWS_PANELS(name, gemm)                                                                    \
        ATTR static void FN(name)(const void *restrict w, size_t rb, int64_t R, const void *restrict x,       \
                                  int64_t xs, int64_t T, float *restrict out, int64_t os, int64_t n) {        \
                if (T >= QUANT_GEMM_MIN_T)                                                                    \
                        gemm(w, rb, R, x, xs, T, out, os, n);                                                 \
                else                                                                                          \
                        FN(name##_tiles)(w, rb, R, x, xs, T, out, os, n);                                     \
        }
DEFINE_DOT_ROWS(FN(rows_q4k_tiles), FN(dot_q4k), ATTR, BlockQ4_K, BlockQ8K, FN(q4k_tile))
DEFINE_DOT_ROWS_PANELS(rows_q4k, quant_gemm_q4k_avx2)
DEFINE_DOT_ROWS(FN(rows_q5k_tiles), FN(dot_q5k), ATTR, BlockQ5_K, BlockQ8K, FN(q5k_tile))
DEFINE_DOT_ROWS_PANELS(rows_q5k, quant_gemm_q5k_avx2)
DEFINE_DOT_ROWS(FN(rows_q6k_tiles), FN(dot_q6k), ATTR, BlockQ6_K, BlockQ8K, FN(q6k_tile))
DEFINE_DOT_ROWS_PANELS(rows_q6k, quant_gemm_q6k_avx2)
DEFINE_DOT_ROWS(FN(rows_q8_0_tiles), FN(dot_q8_0), ATTR, BlockQ8_0, BlockQ8X, FN(q8_0_tile))
DEFINE_DOT_ROWS_PANELS(rows_q8_0, quant_gemm_q8_0_avx2)
DEFINE_DOT_ROWS(FN(rows_q4_0_tiles), FN(dot_q4_0), ATTR, BlockQ4_0, BlockQ8X, FN(q4_0_tile))
DEFINE_DOT_ROWS_PANELS(rows_q4_0, quant_gemm_q4_0_avx2)
#undef DEFINE_DOT_ROWS_PANELS
#endif
/* The types whose kernels are 256-bit in every variant (one row at a time, any T). */
DEFINE_DOT_ROWS(FN(rows_q2k), FN(dot_q2k), ATTR, BlockQ2_K, BlockQ8K, FN(q2k_tile))
DEFINE_DOT_ROWS(FN(rows_q3k), FN(dot_q3k), ATTR, BlockQ3_K, BlockQ8K, FN(q3k_tile))
#if W512
DEFINE_DOT_ROWS(FN(rows_q4_0), FN(dot_q4_0), ATTR, BlockQ4_0, BlockQ8X, FN(q4_0_tile))
#endif
DEFINE_DOT_ROWS(FN(rows_q4_1), FN(dot_q4_1), ATTR, BlockQ4_1, BlockQ8X, FN(q4_1_tile))
DEFINE_DOT_ROWS(FN(rows_q5_0), FN(dot_q5_0), ATTR, BlockQ5_0, BlockQ8X, FN(q5_0_tile))
DEFINE_DOT_ROWS(FN(rows_q5_1), FN(dot_q5_1), ATTR, BlockQ5_1, BlockQ8X, FN(q5_1_tile))

#undef FN
#undef QI8_CAT
#undef QI8_CAT2

#endif /* QI8_TEMPLATE */
