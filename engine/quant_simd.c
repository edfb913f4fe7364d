/* engine/quant_simd.c — x86-64 SIMD twins of quant.c's kernels: AVX2 and AVX-512
 * dequantizers that give exactly the scalar reference's floats, the SIMD dot_f32 kernels,
 * fused dequantize+dot kernels that accumulate in exactly dot_f32's order, and the
 * attention kernels over KV cache rows (F32, F16, Q8_0; quant.h KVDotFn). Each kernel
 * carries a target attribute (the build itself is plain x86-64); quant.c picks the set
 * once at run time. Other architectures compile this file to "no kernels". Any thread.
 *
 * Bit-exactness rules (tests/unit/test_kernels.c checks every variant on this CPU):
 * - Every weight goes through the same float operations as in quant.c, one IEEE operation
 *   per intrinsic: an explicit multiply then an explicit subtract, never an FMA (the build
 *   uses -ffp-contract=off, so the compiler does not fuse them either). Integer to float
 *   conversions are exact for the small integers involved.
 * - For 4- and 5-bit types the 16 (32) possible values of a group are computed once with
 *   exactly those operations into a table, and each weight is a table lookup (vpermps):
 *   the same operation on the same operands gives the same float.
 * - fp16 scales: F16C conversion, except for inf/NaN halves, which take the scalar path
 *   (F16C would quiet a signalling NaN).
 *   (For these formats the products are exact anyway: d * sc has at most 11 + 8 bits and
 *   times a 4- or 5-bit quant still fits a float's 24, so even a fused build would agree;
 *   the rule keeps that from being something to re-prove for every new format.)
 * - Dot products (dot_f32 and the fused kernels) use one fixed order, described at
 *   DOT_ORDER below for each instruction set. The fused kernels work on tiles of up to
 *   2 weight rows x 4 tokens, but every (row, token) pair has its own 4 accumulators fed
 *   in exactly that order, so neither the tile shape nor the batch size changes a bit.
 * - Attention over KV rows: a key's score is dot_f32 of the same instruction set on the
 *   row decoded exactly; a value row is added as y + p * x per number, key after key. */
#include "quant.h"

#include <string.h>

#include "engine_limits.h"
#include "kv.h"

#if defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>

/* AVX2 dequantizers are built without FMA so no multiply-add can appear in them at all. */
#define AVX2_DQ __attribute__((target("avx2,f16c")))
#define AVX2_FMA __attribute__((target("avx2,fma,f16c")))
#define AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,f16c,fma")))
#define INLINE static inline __attribute__((always_inline))

/* ---------------------------------------------------------------------------------------
 * CPU features. */

int quant_simd_cpu_has(QuantIsa isa) {
        unsigned a, b, c, d;
        if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & bit_F16C))
                return 0;
        __builtin_cpu_init(); /* __builtin_cpu_supports also checks that the OS saves the state */
        switch (isa) {
        case QUANT_ISA_AVX2:
                return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
        case QUANT_ISA_AVX512:
                return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                       __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
                       __builtin_cpu_supports("fma");
        default:
                return 0;
        }
}

/* fp16 scale to float, equal to fp16_to_fp32() for every half. */
__attribute__((target("f16c"))) INLINE float half_f16c(ggml_half h) {
        if (__builtin_expect((h & 0x7c00) == 0x7c00, 0))
                return fp16_to_fp32(h); /* inf / NaN: keep the payload bits exactly */
        return _cvtsh_ss(h);
}

/* The 6-bit scales and mins of a Q4_K / Q5_K block as bytes [sc0..sc7, m0..m7]
 * (the same values as quant.c's k4_scale_min for j = 0..7). */
INLINE void k4_unpack(const uint8_t s[K_SCALE_SIZE], uint32_t ret_words[4]) {
        uint32_t a, b, c;
        memcpy(&a, s, 4);
        memcpy(&b, s + 4, 4);
        memcpy(&c, s + 8, 4);
        ret_words[0] = a & 0x3f3f3f3fu;                                      /* sc 0..3 */
        ret_words[1] = (c & 0x0f0f0f0fu) | ((a >> 2) & 0x30303030u);         /* sc 4..7 */
        ret_words[2] = b & 0x3f3f3f3fu;                                      /* m 0..3 */
        ret_words[3] = ((c >> 4) & 0x0f0f0f0fu) | ((b >> 2) & 0x30303030u);  /* m 4..7 */
}

/* ---------------------------------------------------------------------------------------
 * Attention over KV rows: what every instruction set's kernels share. */

/* Bytes of a KV row of n numbers of type T (kv.h). */
INLINE size_t kv_row_size(uint32_t T, int64_t n) {
        return T == GGML_TYPE_F32 ? (size_t)n * 4 : T == GGML_TYPE_F16 ? (size_t)n * 2 : (size_t)n / QK8_0 * sizeof(BlockQ8_0);
}

/* Values for head sizes the register kernels do not cover: each row decoded, then a multiply
 * and an add per number, key after key. */
static void kv_axpy_rows_plain(float *out, uint32_t n_q, const float *p, int64_t ld, const void *v, size_t v_stride,
                               int64_t n_k, int64_t n, uint32_t T) {
        float row[MODEL_MAX_HEAD_DIM];
        for (int64_t i = 0; i < n_k; i++) {
                kv_decode(T, (const uint8_t *)v + (size_t)i * v_stride, (size_t)n, row);
                for (uint32_t g = 0; g < n_q; g++) {
                        float *y = out + (size_t)g * n;
                        const float a = p[g * ld + i];
                        for (int64_t j = 0; j < n; j++)
                                y[j] = y[j] + a * row[j];
                }
        }
}


/* =======================================================================================
 * AVX-512
 *
 * DOT_ORDER (AVX-512): the arrays are cut into 16-float vectors v = 0, 1, 2, ...; vector v
 * is added into accumulator v % 4 by one FMA, in increasing v; a final partial vector
 * (n % 16 floats) likewise, its missing lanes left untouched; the result is
 * ((acc0 + acc1) + (acc2 + acc3)) reduced by the halving tree of hsum16(). */

/* 16 halves to floats, equal to fp16_to_fp32() lane by lane. */
AVX512 INLINE __m512 f16x16_avx512(__m256i h) {
        __m512 f = _mm512_cvtph_ps(h);
        const __mmask16 nan = _mm256_cmpgt_epu16_mask(_mm256_and_si256(h, _mm256_set1_epi16(0x7fff)),
                                                      _mm256_set1_epi16(0x7c00));
        if (__builtin_expect(nan != 0, 0)) {
                /* sign | 0x7f800000 | mant << 13, as fp16_to_fp32 (no quieting) */
                const __m512i w = _mm512_cvtepu16_epi32(h);
                const __m512i bits = _mm512_or_si512(
                        _mm512_or_si512(_mm512_slli_epi32(_mm512_and_si512(w, _mm512_set1_epi32(0x7fff)), 13),
                                        _mm512_set1_epi32(0x70000000)),
                        _mm512_slli_epi32(_mm512_and_si512(w, _mm512_set1_epi32(0x8000)), 16));
                f = _mm512_mask_mov_ps(f, nan, _mm512_castsi512_ps(bits));
        }
        return f;
}

AVX512 INLINE __m512 bf16x16_avx512(__m256i h) {
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

AVX512 INLINE float hsum16(__m512 a0, __m512 a1, __m512 a2, __m512 a3) {
        const __m512 s = _mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3));
        const __m256 s8 = _mm256_add_ps(_mm512_castps512_ps256(s), _mm512_extractf32x8_ps(s, 1));
        const __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
        const __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
        return _mm_cvtss_f32(_mm_add_ss(s2, _mm_movehdup_ps(s2)));
}

/* Mask of the lanes of vector k (0..7) of a tail of rem floats. */
INLINE __mmask16 tail_mask16(int64_t rem, int k) {
        const int64_t r = rem - 16 * k;
        return r >= 16 ? (__mmask16)0xffff : r <= 0 ? (__mmask16)0 : (__mmask16)((1u << r) - 1);
}

AVX512 static float dot_f32_avx512(const float *a, const float *b, int64_t n) {
        __m512 acc[4] = { _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps() };
        int64_t i = 0;
        for (; i + 128 <= n; i += 128) {
                _Pragma("GCC unroll 8") for (int k = 0; k < 8; k++)
                        acc[k & 3] = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16 * k), _mm512_loadu_ps(b + i + 16 * k),
                                                     acc[k & 3]);
        }
        /* i is a multiple of 64: the tail's vector k goes to accumulator k % 4 */
        const int64_t rem = n - i;
        _Pragma("GCC unroll 8") for (int k = 0; k < 8; k++) {
                const __mmask16 m = tail_mask16(rem, k);
                if (m)
                        acc[k & 3] = _mm512_mask3_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i + 16 * k),
                                                           _mm512_maskz_loadu_ps(m, b + i + 16 * k), acc[k & 3], m);
        }
        return hsum16(acc[0], acc[1], acc[2], acc[3]);
}

/* dot_f32_avx512 of n_q query rows (n floats apart) against n_k key rows, for n = 16 * NV:
 * each key's vectors are loaded once for all queries; every (query, key) pair has its own
 * 4 accumulators fed vector v into v % 4 in increasing v, then hsum16 -- DOT_ORDER. The row
 * at the same place of prefetch is fetched into L2 meanwhile. */
AVX512 INLINE void dot_many_nv(const float *q, uint32_t n_q, const float *k, int64_t k_stride, int64_t n_k,
                               const float *prefetch, float scale, float *out, int64_t out_ld, const int NV) {
        for (int64_t i = 0; i < n_k; i++) {
                const float *kr = k + i * k_stride;
                if (prefetch)
                        _Pragma("GCC unroll 8") for (int v = 0; v < NV; v++)
                                _mm_prefetch((const char *)(prefetch + i * k_stride + 16 * v), _MM_HINT_T1);
                __m512 kv[8];
                _Pragma("GCC unroll 8") for (int v = 0; v < NV; v++)
                        kv[v] = _mm512_loadu_ps(kr + 16 * v);
                for (uint32_t g = 0; g < n_q; g++) {
                        const float *qg = q + (size_t)g * 16 * NV;
                        __m512 acc[4] = { _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(),
                                          _mm512_setzero_ps() };
                        _Pragma("GCC unroll 8") for (int v = 0; v < NV; v++)
                                acc[v & 3] = _mm512_fmadd_ps(_mm512_loadu_ps(qg + 16 * v), kv[v], acc[v & 3]);
                        out[g * out_ld + i] = hsum16(acc[0], acc[1], acc[2], acc[3]) * scale;
                }
        }
}

AVX512 static void dot_f32_many_avx512(const float *q, uint32_t n_q, const float *k, int64_t k_stride, int64_t n_k,
                                       const float *prefetch, int64_t n, float scale, float *out, int64_t out_ld) {
        switch (n) {
        case 128: dot_many_nv(q, n_q, k, k_stride, n_k, prefetch, scale, out, out_ld, 8); return;
        case 64: dot_many_nv(q, n_q, k, k_stride, n_k, prefetch, scale, out, out_ld, 4); return;
        case 32: dot_many_nv(q, n_q, k, k_stride, n_k, prefetch, scale, out, out_ld, 2); return;
        default:
                for (int64_t i = 0; i < n_k; i++)
                        for (uint32_t g = 0; g < n_q; g++)
                                out[g * out_ld + i] = dot_f32_avx512(q + (size_t)g * n, k + i * k_stride, n) * scale;
        }
}

/* ---- dequantizers ---- */

AVX512 static void dq_f16_avx512(const void *restrict vx, float *restrict y, int64_t n) {
        const ggml_half *x = vx;
        int64_t i = 0;
        for (; i + 64 <= n; i += 64)
                for (int k = 0; k < 64; k += 16)
                        _mm512_storeu_ps(y + i + k, f16x16_avx512(_mm256_loadu_si256((const __m256i *)(x + i + k))));
        for (; i + 16 <= n; i += 16)
                _mm512_storeu_ps(y + i, f16x16_avx512(_mm256_loadu_si256((const __m256i *)(x + i))));
        for (; i < n; i++)
                y[i] = fp16_to_fp32(x[i]);
}

AVX512 static void dq_bf16_avx512(const void *restrict vx, float *restrict y, int64_t n) {
        const uint16_t *x = vx;
        int64_t i = 0;
        for (; i + 64 <= n; i += 64)
                for (int k = 0; k < 64; k += 16)
                        _mm512_storeu_ps(y + i + k, bf16x16_avx512(_mm256_loadu_si256((const __m256i *)(x + i + k))));
        for (; i + 16 <= n; i += 16)
                _mm512_storeu_ps(y + i, bf16x16_avx512(_mm256_loadu_si256((const __m256i *)(x + i))));
        for (; i < n; i++)
                y[i] = bf16_to_fp32(x[i]);
}

/* Block decoders. DECODE(R, EMIT) decodes block blk_[r] of each of R rows (R <= RMAX, a
 * constant after inlining) and hands each 16-float vector, in row order, to EMIT(v, EXPR):
 * v is the vector's index within the block and EXPR its value for row r_ (EMIT evaluates it
 * for r_ = 0 .. R-1). Indices are constants after unrolling, so the per-row state below
 * lives in registers. The dequantizers store the vectors (R = 1); the fused dot kernels
 * multiply them into their accumulators, several rows sharing each activation load. */
#define RMAX 2
#define UNROLL _Pragma("GCC unroll 8") /* constant-trip loops over rows, tokens, vectors */
#define FOR_R for (int r_ = 0; r_ < R; r_++)

/* Q8_0: w = q * d. */
#define Q8_0_DEC_512(R, EMIT)                                                                        \
        do {                                                                                         \
                __m512 d_[RMAX];                                                                     \
                UNROLL FOR_R d_[r_] = _mm512_set1_ps(half_f16c(blk_[r_]->d));                      \
                UNROLL for (int h_ = 0; h_ < 2; h_++)                                              \
                        EMIT(h_, _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(              \
                                                       _mm_loadu_si128((const __m128i *)(blk_[r_]->qs + 16 * h_)))), \
                                               d_[r_]));                                             \
        } while (0)

/* Q4_0: table (k - 8) * d for the 16 nibble values; vpermps reads the low 4 bits. */
#define Q4_0_DEC_512(R, EMIT)                                                                        \
        do {                                                                                         \
                __m512 lut_[RMAX];                                                                   \
                __m512i q_[RMAX];                                                                    \
                UNROLL FOR_R {                                                                     \
                        lut_[r_] = _mm512_mul_ps(_mm512_setr_ps(-8, -7, -6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7), \
                                                 _mm512_set1_ps(half_f16c(blk_[r_]->d)));            \
                        q_[r_] = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)blk_[r_]->qs)); \
                }                                                                                    \
                EMIT(0, _mm512_permutexvar_ps(q_[r_], lut_[r_]));                                    \
                EMIT(1, _mm512_permutexvar_ps(_mm512_srli_epi32(q_[r_], 4), lut_[r_]));              \
        } while (0)

/* Q4_1: table k * d + m. */
#define Q4_1_DEC_512(R, EMIT)                                                                        \
        do {                                                                                         \
                __m512 lut_[RMAX];                                                                   \
                __m512i q_[RMAX];                                                                    \
                UNROLL FOR_R {                                                                     \
                        lut_[r_] = _mm512_add_ps(_mm512_mul_ps(_mm512_load_ps(iota32),               \
                                                               _mm512_set1_ps(half_f16c(blk_[r_]->d))), \
                                                 _mm512_set1_ps(half_f16c(blk_[r_]->m)));            \
                        q_[r_] = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)blk_[r_]->qs)); \
                }                                                                                    \
                EMIT(0, _mm512_permutexvar_ps(q_[r_], lut_[r_]));                                    \
                EMIT(1, _mm512_permutexvar_ps(_mm512_srli_epi32(q_[r_], 4), lut_[r_]));              \
        } while (0)

/* Q5_0: tables (k - 16) * d (5th bit clear) and k * d (set); the 5th bits select. */
#define Q5_0_DEC_512(R, EMIT)                                                                        \
        do {                                                                                         \
                __m512 lo_[RMAX], hi_[RMAX];                                                         \
                __m512i q_[RMAX];                                                                    \
                uint32_t qh_[RMAX];                                                                  \
                UNROLL FOR_R {                                                                     \
                        const __m512 d_ = _mm512_set1_ps(half_f16c(blk_[r_]->d));                    \
                        lo_[r_] = _mm512_mul_ps(_mm512_sub_ps(_mm512_load_ps(iota32), _mm512_set1_ps(16)), d_); \
                        hi_[r_] = _mm512_mul_ps(_mm512_load_ps(iota32), d_);                         \
                        memcpy(&qh_[r_], blk_[r_]->qh, 4);                                           \
                        q_[r_] = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)blk_[r_]->qs)); \
                }                                                                                    \
                EMIT(0, _mm512_mask_permutexvar_ps(_mm512_permutexvar_ps(q_[r_], lo_[r_]), (__mmask16)qh_[r_], \
                                                   q_[r_], hi_[r_]));                                \
                EMIT(1, _mm512_mask_permutexvar_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(q_[r_], 4), lo_[r_]), \
                                                   (__mmask16)(qh_[r_] >> 16), _mm512_srli_epi32(q_[r_], 4), hi_[r_])); \
        } while (0)

/* Q5_1: tables k * d + m and (k + 16) * d + m. */
#define Q5_1_DEC_512(R, EMIT)                                                                        \
        do {                                                                                         \
                __m512 lo_[RMAX], hi_[RMAX];                                                         \
                __m512i q_[RMAX];                                                                    \
                uint32_t qh_[RMAX];                                                                  \
                UNROLL FOR_R {                                                                     \
                        const __m512 d_ = _mm512_set1_ps(half_f16c(blk_[r_]->d));                    \
                        const __m512 m_ = _mm512_set1_ps(half_f16c(blk_[r_]->m));                    \
                        lo_[r_] = _mm512_add_ps(_mm512_mul_ps(_mm512_load_ps(iota32), d_), m_);      \
                        hi_[r_] = _mm512_add_ps(_mm512_mul_ps(_mm512_load_ps(iota32 + 16), d_), m_); \
                        memcpy(&qh_[r_], blk_[r_]->qh, 4);                                           \
                        q_[r_] = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)blk_[r_]->qs)); \
                }                                                                                    \
                EMIT(0, _mm512_mask_permutexvar_ps(_mm512_permutexvar_ps(q_[r_], lo_[r_]), (__mmask16)qh_[r_], \
                                                   q_[r_], hi_[r_]));                                \
                EMIT(1, _mm512_mask_permutexvar_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(q_[r_], 4), lo_[r_]), \
                                                   (__mmask16)(qh_[r_] >> 16), _mm512_srli_epi32(q_[r_], 4), hi_[r_])); \
        } while (0)

static const float iota32[32] __attribute__((aligned(64))) = { 0,  1,  2,  3,  4,  5,  6,  7,  8,  9,  10,
                                                               11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21,
                                                               22, 23, 24, 25, 26, 27, 28, 29, 30, 31 };

/* Group scales of a Q4_K / Q5_K block: dm[g] = d * sc_g, dm[8 + g] = dmin * m_g. */
AVX512 INLINE void k4_dm_avx512(const uint8_t *scales, ggml_half d, ggml_half dmin, float dm[16]) {
        uint32_t w[4];
        k4_unpack(scales, w);
        const __m512 s = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)w)));
        const __m512 dd = _mm512_mask_blend_ps(0xff00, _mm512_set1_ps(half_f16c(d)), _mm512_set1_ps(half_f16c(dmin)));
        _mm512_store_ps(dm, _mm512_mul_ps(dd, s));
        /* Keep dm in memory: broadcasting its elements from memory is a plain load, which
         * the compiler would otherwise turn into a shuffle from the register. */
        __asm__("" : "+m"(*(float(*)[16])dm));
}

/* Q4_K: per group g, table (d * sc_g) * k - dmin * m_g. Pair j of groups (2j, 2j+1) uses the
 * low and the high nibbles of qs[32j .. 32j+31]: vectors 4j .. 4j+3. */
#define Q4_K_DEC_512(R, EMIT)                                                                        \
        do {                                                                                         \
                float dm_[RMAX][16] __attribute__((aligned(64)));                                    \
                UNROLL FOR_R k4_dm_avx512(blk_[r_]->scales, blk_[r_]->d, blk_[r_]->dmin, dm_[r_]); \
                UNROLL for (int j_ = 0; j_ < 4; j_++) {                                            \
                        __m512 l0_[RMAX], l1_[RMAX];                                                 \
                        __m512i a_[RMAX], b_[RMAX];                                                  \
                        UNROLL FOR_R {                                                             \
                                const __m512 k_ = _mm512_load_ps(iota32);                            \
                                l0_[r_] = _mm512_sub_ps(_mm512_mul_ps(k_, _mm512_set1_ps(dm_[r_][2 * j_])), \
                                                        _mm512_set1_ps(dm_[r_][8 + 2 * j_]));        \
                                l1_[r_] = _mm512_sub_ps(_mm512_mul_ps(k_, _mm512_set1_ps(dm_[r_][2 * j_ + 1])), \
                                                        _mm512_set1_ps(dm_[r_][9 + 2 * j_]));        \
                                a_[r_] = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(blk_[r_]->qs + 32 * j_))); \
                                b_[r_] = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(blk_[r_]->qs + 32 * j_ + 16))); \
                        }                                                                            \
                        EMIT(4 * j_ + 0, _mm512_permutexvar_ps(a_[r_], l0_[r_]));                    \
                        EMIT(4 * j_ + 1, _mm512_permutexvar_ps(b_[r_], l0_[r_]));                    \
                        EMIT(4 * j_ + 2, _mm512_permutexvar_ps(_mm512_srli_epi32(a_[r_], 4), l1_[r_])); \
                        EMIT(4 * j_ + 3, _mm512_permutexvar_ps(_mm512_srli_epi32(b_[r_], 4), l1_[r_])); \
                }                                                                                    \
        } while (0)

/* Q5_K: as Q4_K with a second table for k + 16, selected by bit 2j (low nibbles) or 2j+1
 * (high nibbles) of qh[l]. */
#define Q5_K_DEC_512(R, EMIT)                                                                        \
        do {                                                                                         \
                float dm_[RMAX][16] __attribute__((aligned(64)));                                    \
                UNROLL FOR_R k4_dm_avx512(blk_[r_]->scales, blk_[r_]->d, blk_[r_]->dmin, dm_[r_]); \
                UNROLL for (int j_ = 0; j_ < 4; j_++) {                                            \
                        __m512 lo0_[RMAX], hi0_[RMAX], lo1_[RMAX], hi1_[RMAX];                       \
                        __m512i a_[RMAX], b_[RMAX];                                                  \
                        __mmask32 h0_[RMAX], h1_[RMAX];                                              \
                        UNROLL FOR_R {                                                             \
                                const __m512 k_ = _mm512_load_ps(iota32), k16_ = _mm512_load_ps(iota32 + 16); \
                                const __m512 d0_ = _mm512_set1_ps(dm_[r_][2 * j_]), m0_ = _mm512_set1_ps(dm_[r_][8 + 2 * j_]); \
                                const __m512 d1_ = _mm512_set1_ps(dm_[r_][2 * j_ + 1]), m1_ = _mm512_set1_ps(dm_[r_][9 + 2 * j_]); \
                                const __m256i qh_ = _mm256_loadu_si256((const __m256i *)blk_[r_]->qh); \
                                lo0_[r_] = _mm512_sub_ps(_mm512_mul_ps(k_, d0_), m0_);               \
                                hi0_[r_] = _mm512_sub_ps(_mm512_mul_ps(k16_, d0_), m0_);             \
                                lo1_[r_] = _mm512_sub_ps(_mm512_mul_ps(k_, d1_), m1_);               \
                                hi1_[r_] = _mm512_sub_ps(_mm512_mul_ps(k16_, d1_), m1_);             \
                                h0_[r_] = _mm256_test_epi8_mask(qh_, _mm256_set1_epi8((char)(1 << (2 * j_)))); \
                                h1_[r_] = _mm256_test_epi8_mask(qh_, _mm256_set1_epi8((char)(2 << (2 * j_)))); \
                                a_[r_] = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(blk_[r_]->qs + 32 * j_))); \
                                b_[r_] = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(blk_[r_]->qs + 32 * j_ + 16))); \
                        }                                                                            \
                        EMIT(4 * j_ + 0, _mm512_mask_permutexvar_ps(_mm512_permutexvar_ps(a_[r_], lo0_[r_]), \
                                                                    (__mmask16)h0_[r_], a_[r_], hi0_[r_])); \
                        EMIT(4 * j_ + 1, _mm512_mask_permutexvar_ps(_mm512_permutexvar_ps(b_[r_], lo0_[r_]), \
                                                                    (__mmask16)(h0_[r_] >> 16), b_[r_], hi0_[r_])); \
                        EMIT(4 * j_ + 2, _mm512_mask_permutexvar_ps(                                 \
                                                 _mm512_permutexvar_ps(_mm512_srli_epi32(a_[r_], 4), lo1_[r_]), \
                                                 (__mmask16)h1_[r_], _mm512_srli_epi32(a_[r_], 4), hi1_[r_])); \
                        EMIT(4 * j_ + 3, _mm512_mask_permutexvar_ps(                                 \
                                                 _mm512_permutexvar_ps(_mm512_srli_epi32(b_[r_], 4), lo1_[r_]), \
                                                 (__mmask16)(h1_[r_] >> 16), _mm512_srli_epi32(b_[r_], 4), hi1_[r_])); \
                }                                                                                    \
        } while (0)

/* Q6_K: w = (d * sc_g) * (q - 32), 16 groups of 16. Half h (128 weights) takes ql[64h ..],
 * qh[32h ..]; its vector u (0..7) uses scale 8h + u. Built 64 quants at a time as bytes:
 * low nibbles of ql[0..63] are vectors 0..3, high nibbles vectors 4..7; the 2-bit pieces of
 * qh[l] at shifts 0, 2, 4, 6 belong to vectors (0,1), (2,3), (4,5), (6,7). */
AVX512 INLINE void q6_k_ds_avx512(const BlockQ6_K *b, float ds[16]) {
        const __m512 s = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)b->scales)));
        _mm512_store_ps(ds, _mm512_mul_ps(_mm512_set1_ps(half_f16c(b->d)), s));
        __asm__("" : "+m"(*(float(*)[16])ds)); /* as in k4_dm_avx512 */
}

AVX512 INLINE void q6_k_bytes_avx512(const uint8_t *ql, const uint8_t *qh, __m512i *ret_lo, __m512i *ret_hi) {
        const __m512i m4 = _mm512_set1_epi8(0x0f), m30 = _mm512_set1_epi8(0x30), off = _mm512_set1_epi8(32);
        const __m512i l = _mm512_loadu_si512(ql);
        const __m256i h256 = _mm256_loadu_si256((const __m256i *)qh);
        const __m512i h = _mm512_inserti64x4(_mm512_castsi256_si512(h256), h256, 1);
        /* per 16-bit lane shifts; bits pulled in from the neighbouring byte are masked off */
        const __m512i sl = _mm512_inserti64x4(_mm512_set1_epi16(4), _mm256_set1_epi16(2), 1);
        const __m512i sr = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(2), 1);
        const __m512i hi_a = _mm512_and_si512(_mm512_sllv_epi16(h, sl), m30); /* (qh>>0&3)<<4 | (qh>>2&3)<<4 */
        const __m512i hi_b = _mm512_and_si512(_mm512_srlv_epi16(h, sr), m30); /* (qh>>4&3)<<4 | (qh>>6&3)<<4 */
        *ret_lo = _mm512_sub_epi8(_mm512_or_si512(_mm512_and_si512(l, m4), hi_a), off);
        *ret_hi = _mm512_sub_epi8(_mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(l, 4), m4), hi_b), off);
}

#define Q6_K_VEC_AVX512(bytes, lane, scale) \
        _mm512_mul_ps(_mm512_set1_ps(scale), _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm512_extracti32x4_epi32(bytes, lane))))

#define Q6_K_DEC_512(R, EMIT)                                                                        \
        do {                                                                                         \
                float ds_[RMAX][16] __attribute__((aligned(64)));                                    \
                UNROLL FOR_R q6_k_ds_avx512(blk_[r_], ds_[r_]);                                    \
                UNROLL for (int h_ = 0; h_ < 2; h_++) {                                            \
                        __m512i lo_[RMAX], hi_[RMAX];                                                \
                        UNROLL FOR_R q6_k_bytes_avx512(blk_[r_]->ql + 64 * h_, blk_[r_]->qh + 32 * h_, &lo_[r_], &hi_[r_]); \
                        EMIT(8 * h_ + 0, Q6_K_VEC_AVX512(lo_[r_], 0, ds_[r_][8 * h_ + 0]));         \
                        EMIT(8 * h_ + 1, Q6_K_VEC_AVX512(lo_[r_], 1, ds_[r_][8 * h_ + 1]));         \
                        EMIT(8 * h_ + 2, Q6_K_VEC_AVX512(lo_[r_], 2, ds_[r_][8 * h_ + 2]));         \
                        EMIT(8 * h_ + 3, Q6_K_VEC_AVX512(lo_[r_], 3, ds_[r_][8 * h_ + 3]));         \
                        EMIT(8 * h_ + 4, Q6_K_VEC_AVX512(hi_[r_], 0, ds_[r_][8 * h_ + 4]));         \
                        EMIT(8 * h_ + 5, Q6_K_VEC_AVX512(hi_[r_], 1, ds_[r_][8 * h_ + 5]));         \
                        EMIT(8 * h_ + 6, Q6_K_VEC_AVX512(hi_[r_], 2, ds_[r_][8 * h_ + 6]));         \
                        EMIT(8 * h_ + 7, Q6_K_VEC_AVX512(hi_[r_], 3, ds_[r_][8 * h_ + 7]));         \
                }                                                                                    \
        } while (0)

/* Dequantizers: one row (R = 1); vector v of block b goes to y + 16 * v. */
#define STORE_EMIT_512(v, EXPR)                                                                      \
        do {                                                                                         \
                const int r_ = 0;                                                                    \
                _mm512_storeu_ps(yb + 16 * (v), (EXPR));                                             \
        } while (0)
#define DEFINE_DQ_AVX512(suffix, BLOCK_T, QK, DECODE)                                                \
        AVX512 static void dq_##suffix##_avx512(const void *restrict vx, float *restrict y, int64_t n) { \
                const BLOCK_T *x = vx;                                                               \
                const int R = 1;                                                                     \
                for (int64_t b = 0; b < n / (QK); b++) {                                             \
                        float *yb = y + b * (QK);                                                    \
                        const BLOCK_T *blk_[RMAX] = { &x[b] };                                       \
                        DECODE(R, STORE_EMIT_512);                                                   \
                }                                                                                    \
        }

DEFINE_DQ_AVX512(q8_0, BlockQ8_0, QK8_0, Q8_0_DEC_512)
DEFINE_DQ_AVX512(q4_0, BlockQ4_0, QK4_0, Q4_0_DEC_512)
DEFINE_DQ_AVX512(q4_1, BlockQ4_1, QK4_1, Q4_1_DEC_512)
DEFINE_DQ_AVX512(q5_0, BlockQ5_0, QK5_0, Q5_0_DEC_512)
DEFINE_DQ_AVX512(q5_1, BlockQ5_1, QK5_1, Q5_1_DEC_512)
DEFINE_DQ_AVX512(q4_k, BlockQ4_K, QK_K, Q4_K_DEC_512)
DEFINE_DQ_AVX512(q5_k, BlockQ5_K, QK_K, Q5_K_DEC_512)
DEFINE_DQ_AVX512(q6_k, BlockQ6_K, QK_K, Q6_K_DEC_512)

/* ---- fused dequantize + dot: a tile of R rows x G tokens per pass over the row ---- */

#define GMAX 4

/* Vector v of the current block is global vector vb + v of the row and goes to accumulator
 * (slot + v) % 4, slot == vb % 4 being a constant (0 for 256-weight blocks), so every
 * accumulator index is a constant after unrolling and the accumulators stay in registers.
 * Each activation vector is loaded once and used by all R rows. */
#define DOT_EMIT_512(v, EXPR)                                                                        \
        do {                                                                                         \
                __m512 e_w[RMAX];                                                                    \
                UNROLL FOR_R e_w[r_] = (EXPR);                                                     \
                const float *e_x = x + 16 * (vb + (v));                                              \
                UNROLL for (int e_t = 0; e_t < G; e_t++) {                                         \
                        const __m512 e_xt = _mm512_loadu_ps(e_x + e_t * xs);                         \
                        UNROLL FOR_R acc[r_][e_t][(slot + (v)) & 3] =                              \
                                _mm512_fmadd_ps(e_w[r_], e_xt, acc[r_][e_t][(slot + (v)) & 3]);      \
                }                                                                                    \
        } while (0)

/* One tile. 32-weight blocks (2 vectors) go two at a time so that the slot of each is a
 * constant; an odd last block has an even index (slot 0). */
#define DEFINE_DOT_ROWS_AVX512(suffix, BLOCK_T, QK, DECODE)                                         \
        AVX512 INLINE void dot_##suffix##_tile_avx512(const uint8_t *w, uint64_t rb, int R, const float *x, \
                                                      int64_t xs, int G, float *out, int64_t os, int64_t n) { \
                __m512 acc[RMAX][GMAX][4];                                                           \
                UNROLL FOR_R UNROLL for (int t = 0; t < G; t++) UNROLL for (int k = 0; k < 4; k++) \
                        acc[r_][t][k] = _mm512_setzero_ps();                                         \
                const BLOCK_T *rows_[RMAX];                                                          \
                UNROLL FOR_R rows_[r_] = (const BLOCK_T *)(w + (uint64_t)r_ * rb);                \
                const int64_t nb = n / (QK);                                                         \
                int64_t b = 0;                                                                       \
                if ((QK) == QK_K) {                                                                  \
                        for (; b < nb; b++) {                                                        \
                                const int64_t vb = b * 16;                                           \
                                const int slot = 0;                                                  \
                                const BLOCK_T *blk_[RMAX];                                           \
                                UNROLL FOR_R blk_[r_] = rows_[r_] + b;                             \
                                DECODE(R, DOT_EMIT_512);                                             \
                        }                                                                            \
                } else {                                                                             \
                        for (; b + 2 <= nb; b += 2) {                                                \
                                UNROLL for (int s = 0; s < 2; s++) {                               \
                                        const int64_t vb = 2 * (b + s);                              \
                                        const int slot = 2 * s;                                      \
                                        const BLOCK_T *blk_[RMAX];                                   \
                                        UNROLL FOR_R blk_[r_] = rows_[r_] + b + s;                 \
                                        DECODE(R, DOT_EMIT_512);                                     \
                                }                                                                    \
                        }                                                                            \
                        if (b < nb) {                                                                \
                                const int64_t vb = 2 * b;                                            \
                                const int slot = 0;                                                  \
                                const BLOCK_T *blk_[RMAX];                                           \
                                UNROLL FOR_R blk_[r_] = rows_[r_] + b;                             \
                                DECODE(R, DOT_EMIT_512);                                             \
                        }                                                                            \
                }                                                                                    \
                UNROLL FOR_R UNROLL for (int t = 0; t < G; t++)                                  \
                        out[t * os + r_] = hsum16(acc[r_][t][0], acc[r_][t][1], acc[r_][t][2], acc[r_][t][3]); \
        }                                                                                            \
        AVX512 static void dot_##suffix##_avx512(const void *restrict vw, uint64_t rb, int64_t R, const float *restrict x, \
                                                 int64_t xs, int64_t T, float *restrict out, int64_t os, int64_t n) { \
                const uint8_t *w = vw;                                                               \
                int64_t r = 0;                                                                       \
                /* pairs of rows share each activation load: 1 or 2 tokens at a time */              \
                for (; r + 2 <= R && T > 1; r += 2) {                                                \
                        const uint8_t *wr = w + (uint64_t)r * rb;                                    \
                        int64_t t = 0;                                                               \
                        for (; t + 2 <= T; t += 2)                                                   \
                                dot_##suffix##_tile_avx512(wr, rb, 2, x + t * xs, xs, 2, out + t * os + r, os, n); \
                        if (t < T)                                                                   \
                                dot_##suffix##_tile_avx512(wr, rb, 2, x + t * xs, xs, 1, out + t * os + r, os, n); \
                }                                                                                    \
                /* a last odd row: up to 4 tokens at a time */                                       \
                for (; r < R; r++) {                                                                 \
                        const uint8_t *wr = w + (uint64_t)r * rb;                                    \
                        for (int64_t t = 0; t < T; t += GMAX) {                                      \
                                const float *xt = x + t * xs;                                        \
                                float *ot = out + t * os + r;                                        \
                                switch (T - t >= GMAX ? GMAX : (int)(T - t)) {                       \
                                case 4: dot_##suffix##_tile_avx512(wr, rb, 1, xt, xs, 4, ot, os, n); break; \
                                case 3: dot_##suffix##_tile_avx512(wr, rb, 1, xt, xs, 3, ot, os, n); break; \
                                case 2: dot_##suffix##_tile_avx512(wr, rb, 1, xt, xs, 2, ot, os, n); break; \
                                default: dot_##suffix##_tile_avx512(wr, rb, 1, xt, xs, 1, ot, os, n); break; \
                                }                                                                    \
                        }                                                                            \
                }                                                                                    \
        }

DEFINE_DOT_ROWS_AVX512(q8_0, BlockQ8_0, QK8_0, Q8_0_DEC_512)
DEFINE_DOT_ROWS_AVX512(q4_0, BlockQ4_0, QK4_0, Q4_0_DEC_512)
DEFINE_DOT_ROWS_AVX512(q4_1, BlockQ4_1, QK4_1, Q4_1_DEC_512)
DEFINE_DOT_ROWS_AVX512(q5_0, BlockQ5_0, QK5_0, Q5_0_DEC_512)
DEFINE_DOT_ROWS_AVX512(q5_1, BlockQ5_1, QK5_1, Q5_1_DEC_512)
DEFINE_DOT_ROWS_AVX512(q4_k, BlockQ4_K, QK_K, Q4_K_DEC_512)
DEFINE_DOT_ROWS_AVX512(q5_k, BlockQ5_K, QK_K, Q5_K_DEC_512)
DEFINE_DOT_ROWS_AVX512(q6_k, BlockQ6_K, QK_K, Q6_K_DEC_512)

/* ---- attention over KV rows (quant.h KVDotFn / KVAxpyFn) ----
 * A row of head size n = 16 * NV is held in NV registers for all the query heads; its
 * numbers decode exactly (no signalling-NaN half is ever in a KV cache, kv.h, so F16C's
 * conversion is exact), and each (query, key) pair keeps DOT_ORDER; values get a multiply
 * then an add per number, key after key. Other head sizes decode the row into a buffer and
 * take dot_f32_avx512 / the plain loop. */

/* Numbers 16v .. 16v+15 of a KV row of type T. */
AVX512 INLINE __m512 kv_vec16_avx512(const uint8_t *row, uint32_t T, int v) {
        if (T == GGML_TYPE_F32)
                return _mm512_loadu_ps((const float *)row + 16 * v);
        if (T == GGML_TYPE_F16)
                return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const ggml_half *)row + 16 * v)));
        const BlockQ8_0 *b = (const BlockQ8_0 *)row + v / 2;
        return _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(b->qs + 16 * (v % 2))))),
                             _mm512_set1_ps(half_f16c(b->d)));
}

AVX512 INLINE void kv_dot_nv_avx512(const float *q, uint32_t n_q, const uint8_t *k, size_t k_stride, int64_t n_k,
                                    const uint8_t *prefetch, size_t row_bytes, float scale, float *out,
                                    int64_t out_ld, const uint32_t T, const int NV) {
        for (int64_t i = 0; i < n_k; i++) {
                const uint8_t *kr = k + (size_t)i * k_stride;
                if (prefetch)
                        for (size_t o = 0; o < row_bytes; o += 64)
                                _mm_prefetch((const char *)(prefetch + (size_t)i * k_stride + o), _MM_HINT_T1);
                __m512 kv[8];
                _Pragma("GCC unroll 8") for (int v = 0; v < NV; v++)
                        kv[v] = kv_vec16_avx512(kr, T, v);
                for (uint32_t g = 0; g < n_q; g++) {
                        const float *qg = q + (size_t)g * 16 * NV;
                        __m512 acc[4] = { _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(),
                                          _mm512_setzero_ps() };
                        _Pragma("GCC unroll 8") for (int v = 0; v < NV; v++)
                                acc[v & 3] = _mm512_fmadd_ps(_mm512_loadu_ps(qg + 16 * v), kv[v], acc[v & 3]);
                        out[g * out_ld + i] = hsum16(acc[0], acc[1], acc[2], acc[3]) * scale;
                }
        }
}

AVX512 INLINE void kv_axpy_nv_avx512(float *out, uint32_t n_q, const float *p, int64_t ld, const uint8_t *v,
                                     size_t v_stride, int64_t n_k, const uint32_t T, const int NV) {
        for (uint32_t g0 = 0; g0 < n_q; g0 += 2) {
                const uint32_t ng = n_q - g0 < 2 ? 1 : 2;
                __m512 acc[2][8];
                for (uint32_t h = 0; h < ng; h++)
                        _Pragma("GCC unroll 8") for (int u = 0; u < NV; u++)
                                acc[h][u] = _mm512_loadu_ps(out + (size_t)(g0 + h) * 16 * NV + 16 * u);
                for (int64_t i = 0; i < n_k; i++) {
                        const uint8_t *vr = v + (size_t)i * v_stride;
                        __m512 x[8];
                        _Pragma("GCC unroll 8") for (int u = 0; u < NV; u++)
                                x[u] = kv_vec16_avx512(vr, T, u);
                        for (uint32_t h = 0; h < ng; h++) {
                                const __m512 a = _mm512_set1_ps(p[(g0 + h) * ld + i]);
                                _Pragma("GCC unroll 8") for (int u = 0; u < NV; u++)
                                        acc[h][u] = _mm512_add_ps(acc[h][u], _mm512_mul_ps(a, x[u]));
                        }
                }
                for (uint32_t h = 0; h < ng; h++)
                        _Pragma("GCC unroll 8") for (int u = 0; u < NV; u++)
                                _mm512_storeu_ps(out + (size_t)(g0 + h) * 16 * NV + 16 * u, acc[h][u]);
        }
}

#define DEFINE_KV_AVX512(suffix, T)                                                                  \
        AVX512 static void kv_dot_##suffix##_avx512(const float *q, uint32_t n_q, const void *k, size_t k_stride, \
                                                    int64_t n_k, const void *prefetch, int64_t n, float scale, \
                                                    float *out, int64_t out_ld) {                   \
                const size_t rb = kv_row_size(T, n);                                                 \
                switch (n) {                                                                         \
                case 128: kv_dot_nv_avx512(q, n_q, k, k_stride, n_k, prefetch, rb, scale, out, out_ld, T, 8); return; \
                case 64: kv_dot_nv_avx512(q, n_q, k, k_stride, n_k, prefetch, rb, scale, out, out_ld, T, 4); return; \
                case 32: kv_dot_nv_avx512(q, n_q, k, k_stride, n_k, prefetch, rb, scale, out, out_ld, T, 2); return; \
                }                                                                                    \
                float row[MODEL_MAX_HEAD_DIM];                                                       \
                for (int64_t i = 0; i < n_k; i++) {                                                  \
                        kv_decode(T, (const uint8_t *)k + (size_t)i * k_stride, (size_t)n, row);        \
                        for (uint32_t g = 0; g < n_q; g++)                                           \
                                out[g * out_ld + i] = dot_f32_avx512(q + (size_t)g * n, row, n) * scale; \
                }                                                                                    \
        }                                                                                            \
        AVX512 static void kv_axpy_##suffix##_avx512(float *out, uint32_t n_q, const float *p, int64_t ld, \
                                                     const void *v, size_t v_stride, int64_t n_k, int64_t n) { \
                switch (n) {                                                                         \
                case 128: kv_axpy_nv_avx512(out, n_q, p, ld, v, v_stride, n_k, T, 8); return;        \
                case 64: kv_axpy_nv_avx512(out, n_q, p, ld, v, v_stride, n_k, T, 4); return;         \
                case 32: kv_axpy_nv_avx512(out, n_q, p, ld, v, v_stride, n_k, T, 2); return;         \
                }                                                                                    \
                kv_axpy_rows_plain(out, n_q, p, ld, v, v_stride, n_k, n, T);                         \
        }

DEFINE_KV_AVX512(f32, GGML_TYPE_F32)
DEFINE_KV_AVX512(f16, GGML_TYPE_F16)
DEFINE_KV_AVX512(q8_0, GGML_TYPE_Q8_0)


/* =======================================================================================
 * AVX2
 *
 * DOT_ORDER (AVX2): as for AVX-512 with 8-float vectors: vector v into accumulator v % 4
 * by one FMA, in increasing v; a final partial vector is loaded with zeros in the missing
 * lanes (an accumulator is never -0, so adding +0 leaves it unchanged); the result is
 * ((acc0 + acc1) + (acc2 + acc3)) reduced by the halving tree of hsum8(). */

/* 8 halves to floats, equal to fp16_to_fp32() lane by lane. */
AVX2_DQ INLINE __m256 f16x8_avx2(__m128i h) {
        __m256 f = _mm256_cvtph_ps(h);
        const __m128i nan = _mm_cmpgt_epi16(_mm_and_si128(h, _mm_set1_epi16(0x7fff)), _mm_set1_epi16(0x7c00));
        if (__builtin_expect(_mm_movemask_epi8(nan) != 0, 0)) {
                const __m256i w = _mm256_cvtepu16_epi32(h);
                const __m256i bits = _mm256_or_si256(
                        _mm256_or_si256(_mm256_slli_epi32(_mm256_and_si256(w, _mm256_set1_epi32(0x7fff)), 13),
                                        _mm256_set1_epi32(0x70000000)),
                        _mm256_slli_epi32(_mm256_and_si256(w, _mm256_set1_epi32(0x8000)), 16));
                f = _mm256_blendv_ps(f, _mm256_castsi256_ps(bits), _mm256_castsi256_ps(_mm256_cvtepi16_epi32(nan)));
        }
        return f;
}

AVX2_DQ INLINE __m256 bf16x8_avx2(__m128i h) {
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

AVX2_FMA INLINE float hsum8(__m256 a0, __m256 a1, __m256 a2, __m256 a3) {
        const __m256 s = _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3));
        const __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
        const __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
        return _mm_cvtss_f32(_mm_add_ss(s2, _mm_movehdup_ps(s2)));
}

/* Lane mask of vector k (0..7) of a tail of rem floats, for vmaskmovps. */
AVX2_FMA INLINE __m256i tail_mask8(int64_t rem, int k) {
        const int64_t r = rem - 8 * k;
        const int lanes = r >= 8 ? 8 : r <= 0 ? 0 : (int)r;
        return _mm256_cmpgt_epi32(_mm256_set1_epi32(lanes), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

AVX2_FMA static float dot_f32_avx2(const float *a, const float *b, int64_t n) {
        __m256 acc[4] = { _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps() };
        int64_t i = 0;
        for (; i + 64 <= n; i += 64) {
                _Pragma("GCC unroll 8") for (int k = 0; k < 8; k++)
                        acc[k & 3] = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8 * k), _mm256_loadu_ps(b + i + 8 * k),
                                                     acc[k & 3]);
        }
        /* i is a multiple of 32: the tail's vector k goes to accumulator k % 4 */
        const int64_t rem = n - i;
        _Pragma("GCC unroll 8") for (int k = 0; k < 8; k++) {
                if (rem > 8 * k) {
                        const __m256i m = tail_mask8(rem, k);
                        acc[k & 3] = _mm256_fmadd_ps(_mm256_maskload_ps(a + i + 8 * k, m),
                                                     _mm256_maskload_ps(b + i + 8 * k, m), acc[k & 3]);
                }
        }
        return hsum8(acc[0], acc[1], acc[2], acc[3]);
}

/* ---- dequantizers ---- */

AVX2_DQ static void dq_f16_avx2(const void *restrict vx, float *restrict y, int64_t n) {
        const ggml_half *x = vx;
        int64_t i = 0;
        for (; i + 32 <= n; i += 32)
                _Pragma("GCC unroll 4") for (int k = 0; k < 32; k += 8)
                        _mm256_storeu_ps(y + i + k, f16x8_avx2(_mm_loadu_si128((const __m128i *)(x + i + k))));
        for (; i + 8 <= n; i += 8)
                _mm256_storeu_ps(y + i, f16x8_avx2(_mm_loadu_si128((const __m128i *)(x + i))));
        for (; i < n; i++)
                y[i] = fp16_to_fp32(x[i]);
}

AVX2_DQ static void dq_bf16_avx2(const void *restrict vx, float *restrict y, int64_t n) {
        const uint16_t *x = vx;
        int64_t i = 0;
        for (; i + 32 <= n; i += 32)
                _Pragma("GCC unroll 4") for (int k = 0; k < 32; k += 8)
                        _mm256_storeu_ps(y + i + k, bf16x8_avx2(_mm_loadu_si128((const __m128i *)(x + i + k))));
        for (; i + 8 <= n; i += 8)
                _mm256_storeu_ps(y + i, bf16x8_avx2(_mm_loadu_si128((const __m128i *)(x + i))));
        for (; i < n; i++)
                y[i] = bf16_to_fp32(x[i]);
}

/* 8 bytes at p, zero-extended to 32-bit lanes. */
#define U8X8(p) _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(p)))
#define I8X8(p) _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(p)))
/* ((qh >> (first + lane)) & 1) << 4 for the 8 lanes. */
#define Q5_HBIT8(qh, first) \
        _mm256_slli_epi32(_mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32((int)(qh)), \
                                                             _mm256_add_epi32(_mm256_set1_epi32(first), lane8)), one8), 4)

/* Block decoders as for AVX-512, in 8-float vectors. */
#define Q8_0_BLOCK_AVX2(blk, EMIT)                                                                   \
        do {                                                                                         \
                const __m256 d_ = _mm256_set1_ps(half_f16c((blk)->d));                               \
                _Pragma("GCC unroll 4") for (int k_ = 0; k_ < 4; k_++)                               \
                        EMIT(k_, _mm256_mul_ps(_mm256_cvtepi32_ps(I8X8((blk)->qs + 8 * k_)), d_));   \
        } while (0)

#define Q4_0_BLOCK_AVX2(blk, EMIT)                                                                   \
        do {                                                                                         \
                const __m256 d_ = _mm256_set1_ps(half_f16c((blk)->d));                               \
                const __m256i m4_ = _mm256_set1_epi32(15), e8_ = _mm256_set1_epi32(8);               \
                _Pragma("GCC unroll 2") for (int k_ = 0; k_ < 2; k_++) {                             \
                        const __m256i q_ = U8X8((blk)->qs + 8 * k_);                                 \
                        EMIT(k_, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_and_si256(q_, m4_), e8_)), d_)); \
                        EMIT(2 + k_, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_srli_epi32(q_, 4), e8_)), d_)); \
                }                                                                                    \
        } while (0)

#define Q4_1_BLOCK_AVX2(blk, EMIT)                                                                   \
        do {                                                                                         \
                const __m256 d_ = _mm256_set1_ps(half_f16c((blk)->d)), m_ = _mm256_set1_ps(half_f16c((blk)->m)); \
                const __m256i m4_ = _mm256_set1_epi32(15);                                           \
                _Pragma("GCC unroll 2") for (int k_ = 0; k_ < 2; k_++) {                             \
                        const __m256i q_ = U8X8((blk)->qs + 8 * k_);                                 \
                        EMIT(k_, _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_and_si256(q_, m4_)), d_), m_)); \
                        EMIT(2 + k_, _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(q_, 4)), d_), m_)); \
                }                                                                                    \
        } while (0)

#define Q5_0_BLOCK_AVX2(blk, EMIT)                                                                   \
        do {                                                                                         \
                const __m256 d_ = _mm256_set1_ps(half_f16c((blk)->d));                               \
                const __m256i m4_ = _mm256_set1_epi32(15), e16_ = _mm256_set1_epi32(16);             \
                const __m256i lane8 = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), one8 = _mm256_set1_epi32(1); \
                uint32_t qh_;                                                                        \
                memcpy(&qh_, (blk)->qh, 4);                                                          \
                _Pragma("GCC unroll 2") for (int k_ = 0; k_ < 2; k_++) {                             \
                        const __m256i q_ = U8X8((blk)->qs + 8 * k_);                                 \
                        const __m256i lo_ = _mm256_or_si256(_mm256_and_si256(q_, m4_), Q5_HBIT8(qh_, 8 * k_)); \
                        const __m256i hi_ = _mm256_or_si256(_mm256_srli_epi32(q_, 4), Q5_HBIT8(qh_, 16 + 8 * k_)); \
                        EMIT(k_, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(lo_, e16_)), d_)); \
                        EMIT(2 + k_, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(hi_, e16_)), d_)); \
                }                                                                                    \
        } while (0)

#define Q5_1_BLOCK_AVX2(blk, EMIT)                                                                   \
        do {                                                                                         \
                const __m256 d_ = _mm256_set1_ps(half_f16c((blk)->d)), m_ = _mm256_set1_ps(half_f16c((blk)->m)); \
                const __m256i m4_ = _mm256_set1_epi32(15);                                           \
                const __m256i lane8 = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), one8 = _mm256_set1_epi32(1); \
                uint32_t qh_;                                                                        \
                memcpy(&qh_, (blk)->qh, 4);                                                          \
                _Pragma("GCC unroll 2") for (int k_ = 0; k_ < 2; k_++) {                             \
                        const __m256i q_ = U8X8((blk)->qs + 8 * k_);                                 \
                        const __m256i lo_ = _mm256_or_si256(_mm256_and_si256(q_, m4_), Q5_HBIT8(qh_, 8 * k_)); \
                        const __m256i hi_ = _mm256_or_si256(_mm256_srli_epi32(q_, 4), Q5_HBIT8(qh_, 16 + 8 * k_)); \
                        EMIT(k_, _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(lo_), d_), m_));     \
                        EMIT(2 + k_, _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(hi_), d_), m_)); \
                }                                                                                    \
        } while (0)

/* dm[g] = d * sc_g, dm[8 + g] = dmin * m_g. */
AVX2_DQ INLINE void k4_dm_avx2(const uint8_t *scales, ggml_half d, ggml_half dmin, float dm[16]) {
        uint32_t w[4];
        k4_unpack(scales, w);
        _mm256_store_ps(dm, _mm256_mul_ps(_mm256_set1_ps(half_f16c(d)), _mm256_cvtepi32_ps(U8X8(w))));
        _mm256_store_ps(dm + 8, _mm256_mul_ps(_mm256_set1_ps(half_f16c(dmin)), _mm256_cvtepi32_ps(U8X8(w + 2))));
}

/* Q4_K: pair j: low nibbles of qs[32j ..] are vectors 8j .. 8j+3 (group 2j), high nibbles
 * 8j+4 .. 8j+7 (group 2j+1); w = (d * sc) * q - dmin * m. */
#define Q4_K_BLOCK_AVX2(blk, EMIT)                                                                   \
        do {                                                                                         \
                float dm_[16] __attribute__((aligned(32)));                                          \
                k4_dm_avx2((blk)->scales, (blk)->d, (blk)->dmin, dm_);                               \
                const __m256i m4_ = _mm256_set1_epi32(15);                                           \
                _Pragma("GCC unroll 4") for (int j_ = 0; j_ < 4; j_++) {                             \
                        const __m256 d0_ = _mm256_set1_ps(dm_[2 * j_]), m0_ = _mm256_set1_ps(dm_[8 + 2 * j_]); \
                        const __m256 d1_ = _mm256_set1_ps(dm_[2 * j_ + 1]), m1_ = _mm256_set1_ps(dm_[9 + 2 * j_]); \
                        _Pragma("GCC unroll 4") for (int k_ = 0; k_ < 4; k_++) {                     \
                                const __m256i q_ = U8X8((blk)->qs + 32 * j_ + 8 * k_);               \
                                EMIT(8 * j_ + k_, _mm256_sub_ps(_mm256_mul_ps(d0_, _mm256_cvtepi32_ps(_mm256_and_si256(q_, m4_))), m0_)); \
                                EMIT(8 * j_ + 4 + k_, _mm256_sub_ps(_mm256_mul_ps(d1_, _mm256_cvtepi32_ps(_mm256_srli_epi32(q_, 4))), m1_)); \
                        }                                                                            \
                }                                                                                    \
        } while (0)

/* Q5_K: plus 16 where bit 2j (low nibbles) or 2j+1 (high) of qh[l] is set. */
#define Q5_K_BLOCK_AVX2(blk, EMIT)                                                                   \
        do {                                                                                         \
                float dm_[16] __attribute__((aligned(32)));                                          \
                k4_dm_avx2((blk)->scales, (blk)->d, (blk)->dmin, dm_);                               \
                const __m256i m4_ = _mm256_set1_epi32(15), s16_ = _mm256_set1_epi32(16), z_ = _mm256_setzero_si256(); \
                _Pragma("GCC unroll 4") for (int j_ = 0; j_ < 4; j_++) {                             \
                        const __m256 d0_ = _mm256_set1_ps(dm_[2 * j_]), m0_ = _mm256_set1_ps(dm_[8 + 2 * j_]); \
                        const __m256 d1_ = _mm256_set1_ps(dm_[2 * j_ + 1]), m1_ = _mm256_set1_ps(dm_[9 + 2 * j_]); \
                        const __m256i u1_ = _mm256_set1_epi32(1 << (2 * j_)), u2_ = _mm256_set1_epi32(2 << (2 * j_)); \
                        _Pragma("GCC unroll 4") for (int k_ = 0; k_ < 4; k_++) {                     \
                                const __m256i q_ = U8X8((blk)->qs + 32 * j_ + 8 * k_);               \
                                const __m256i h_ = U8X8((blk)->qh + 8 * k_);                         \
                                const __m256i h1_ = _mm256_andnot_si256(_mm256_cmpeq_epi32(_mm256_and_si256(h_, u1_), z_), s16_); \
                                const __m256i h2_ = _mm256_andnot_si256(_mm256_cmpeq_epi32(_mm256_and_si256(h_, u2_), z_), s16_); \
                                const __m256i lo_ = _mm256_add_epi32(_mm256_and_si256(q_, m4_), h1_); \
                                const __m256i hi_ = _mm256_add_epi32(_mm256_srli_epi32(q_, 4), h2_); \
                                EMIT(8 * j_ + k_, _mm256_sub_ps(_mm256_mul_ps(d0_, _mm256_cvtepi32_ps(lo_)), m0_)); \
                                EMIT(8 * j_ + 4 + k_, _mm256_sub_ps(_mm256_mul_ps(d1_, _mm256_cvtepi32_ps(hi_)), m1_)); \
                        }                                                                            \
                }                                                                                    \
        } while (0)

/* Q6_K: per half, four 32-byte vectors of signed quants (q1..q4 of quant.c), each four
 * 8-float vectors; 8-float vector p (0..15) of the half uses scale 8h + p/2. */
AVX2_DQ INLINE void q6_k_ds_avx2(const BlockQ6_K *b, float ds[16]) {
        const __m256 d = _mm256_set1_ps(half_f16c(b->d));
        _mm256_store_ps(ds, _mm256_mul_ps(d, _mm256_cvtepi32_ps(I8X8(b->scales))));
        _mm256_store_ps(ds + 8, _mm256_mul_ps(d, _mm256_cvtepi32_ps(I8X8(b->scales + 8))));
}

AVX2_DQ INLINE void q6_k_bytes_avx2(const uint8_t *ql, const uint8_t *qh, __m256i q[4]) {
        const __m256i m4 = _mm256_set1_epi8(0x0f), m30 = _mm256_set1_epi8(0x30), off = _mm256_set1_epi8(32);
        const __m256i l0 = _mm256_loadu_si256((const __m256i *)ql), l1 = _mm256_loadu_si256((const __m256i *)(ql + 32));
        const __m256i h = _mm256_loadu_si256((const __m256i *)qh);
        q[0] = _mm256_sub_epi8(_mm256_or_si256(_mm256_and_si256(l0, m4), _mm256_and_si256(_mm256_slli_epi16(h, 4), m30)), off);
        q[1] = _mm256_sub_epi8(_mm256_or_si256(_mm256_and_si256(l1, m4), _mm256_and_si256(_mm256_slli_epi16(h, 2), m30)), off);
        q[2] = _mm256_sub_epi8(_mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4), _mm256_and_si256(h, m30)), off);
        q[3] = _mm256_sub_epi8(_mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                                               _mm256_and_si256(_mm256_srli_epi16(h, 2), m30)), off);
}

/* Signed bytes 8r .. 8r+7 of v as floats. */
AVX2_DQ INLINE __m256 i8_part_avx2(__m256i v, int r) {
        const __m128i half = r < 2 ? _mm256_castsi256_si128(v) : _mm256_extracti128_si256(v, 1);
        return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32((r & 1) ? _mm_unpackhi_epi64(half, half) : half));
}

#define Q6_K_BLOCK_AVX2(blk, EMIT)                                                                   \
        do {                                                                                         \
                float ds_[16] __attribute__((aligned(32)));                                          \
                q6_k_ds_avx2((blk), ds_);                                                            \
                _Pragma("GCC unroll 2") for (int h_ = 0; h_ < 2; h_++) {                             \
                        __m256i q_[4];                                                               \
                        q6_k_bytes_avx2((blk)->ql + 64 * h_, (blk)->qh + 32 * h_, q_);               \
                        _Pragma("GCC unroll 4") for (int p_ = 0; p_ < 4; p_++)                       \
                                _Pragma("GCC unroll 4") for (int r_ = 0; r_ < 4; r_++)               \
                                        EMIT(16 * h_ + 4 * p_ + r_,                                  \
                                             _mm256_mul_ps(_mm256_set1_ps(ds_[8 * h_ + 2 * p_ + r_ / 2]), \
                                                           i8_part_avx2(q_[p_], r_)));               \
                }                                                                                    \
        } while (0)

#define STORE_EMIT_256(v, w) _mm256_storeu_ps(yb + 8 * (v), (w))
#define DEFINE_DQ_AVX2(suffix, BLOCK_T, QK, DECODE)                                                  \
        AVX2_DQ static void dq_##suffix##_avx2(const void *restrict vx, float *restrict y, int64_t n) { \
                const BLOCK_T *x = vx;                                                               \
                for (int64_t b = 0; b < n / (QK); b++) {                                             \
                        float *yb = y + b * (QK);                                                    \
                        DECODE(&x[b], STORE_EMIT_256);                                               \
                }                                                                                    \
        }

DEFINE_DQ_AVX2(q8_0, BlockQ8_0, QK8_0, Q8_0_BLOCK_AVX2)
DEFINE_DQ_AVX2(q4_0, BlockQ4_0, QK4_0, Q4_0_BLOCK_AVX2)
DEFINE_DQ_AVX2(q4_1, BlockQ4_1, QK4_1, Q4_1_BLOCK_AVX2)
DEFINE_DQ_AVX2(q5_0, BlockQ5_0, QK5_0, Q5_0_BLOCK_AVX2)
DEFINE_DQ_AVX2(q5_1, BlockQ5_1, QK5_1, Q5_1_BLOCK_AVX2)
DEFINE_DQ_AVX2(q4_k, BlockQ4_K, QK_K, Q4_K_BLOCK_AVX2)
DEFINE_DQ_AVX2(q5_k, BlockQ5_K, QK_K, Q5_K_BLOCK_AVX2)
DEFINE_DQ_AVX2(q6_k, BlockQ6_K, QK_K, Q6_K_BLOCK_AVX2)

/* ---- fused dequantize + dot: up to DOT_G_256 tokens (16 registers only) ---- */

#define DOT_G_256 2

/* Every block here has a multiple of 4 vectors (32 weights = 4 vectors of 8), so vector v
 * of a block goes to accumulator v % 4. */
#define DOT_EMIT_256(v, w)                                                                           \
        do {                                                                                         \
                const __m256 w_ = (w);                                                               \
                const float *xv_ = xb + 8 * (v);                                                     \
                _Pragma("GCC unroll 2") for (int t_ = 0; t_ < G; t_++)                               \
                        acc[t_][(v) & 3] = _mm256_fmadd_ps(w_, _mm256_loadu_ps(xv_ + t_ * xs), acc[t_][(v) & 3]); \
        } while (0)

#define DEFINE_DOT_ROWS_AVX2(suffix, BLOCK_T, QK, DECODE)                                            \
        AVX2_FMA INLINE void dot_##suffix##_g_avx2(const BLOCK_T *w, const float *x, int64_t xs, int G, \
                                                   float *out, int64_t os, int64_t n) {             \
                __m256 acc[DOT_G_256][4];                                                            \
                _Pragma("GCC unroll 2") for (int t = 0; t < G; t++)                                  \
                        _Pragma("GCC unroll 4") for (int k = 0; k < 4; k++)                          \
                                acc[t][k] = _mm256_setzero_ps();                                     \
                for (int64_t b = 0; b < n / (QK); b++) {                                             \
                        const float *xb = x + b * (QK);                                              \
                        DECODE(&w[b], DOT_EMIT_256);                                                 \
                }                                                                                    \
                _Pragma("GCC unroll 2") for (int t = 0; t < G; t++)                                  \
                        out[t * os] = hsum8(acc[t][0], acc[t][1], acc[t][2], acc[t][3]);              \
        }                                                                                            \
        AVX2_FMA static void dot_##suffix##_avx2(const void *restrict vw, uint64_t rb, int64_t R, const float *restrict x, \
                                                 int64_t xs, int64_t T, float *restrict out, int64_t os, int64_t n) { \
                for (int64_t r = 0; r < R; r++) {                                                    \
                        const BLOCK_T *wr = (const BLOCK_T *)((const uint8_t *)vw + (uint64_t)r * rb); \
                        int64_t t = 0;                                                               \
                        for (; t + 2 <= T; t += 2)                                                   \
                                dot_##suffix##_g_avx2(wr, x + t * xs, xs, 2, out + t * os + r, os, n); \
                        if (t < T)                                                                   \
                                dot_##suffix##_g_avx2(wr, x + t * xs, xs, 1, out + t * os + r, os, n); \
                }                                                                                    \
        }

DEFINE_DOT_ROWS_AVX2(q8_0, BlockQ8_0, QK8_0, Q8_0_BLOCK_AVX2)
DEFINE_DOT_ROWS_AVX2(q4_0, BlockQ4_0, QK4_0, Q4_0_BLOCK_AVX2)
DEFINE_DOT_ROWS_AVX2(q4_1, BlockQ4_1, QK4_1, Q4_1_BLOCK_AVX2)
DEFINE_DOT_ROWS_AVX2(q5_0, BlockQ5_0, QK5_0, Q5_0_BLOCK_AVX2)
DEFINE_DOT_ROWS_AVX2(q5_1, BlockQ5_1, QK5_1, Q5_1_BLOCK_AVX2)
DEFINE_DOT_ROWS_AVX2(q4_k, BlockQ4_K, QK_K, Q4_K_BLOCK_AVX2)
DEFINE_DOT_ROWS_AVX2(q5_k, BlockQ5_K, QK_K, Q5_K_BLOCK_AVX2)
DEFINE_DOT_ROWS_AVX2(q6_k, BlockQ6_K, QK_K, Q6_K_BLOCK_AVX2)

/* ---- attention over KV rows (quant.h KVDotFn / KVAxpyFn) ----
 * 16 registers do not hold a row of 128 numbers, so the kernels walk a row in chunks: keys
 * in 32-number chunks (one Q8_0 block; four vectors, one per accumulator, so DOT_ORDER
 * holds) for two query heads at a time; values in 16-number columns, for up to 4 heads
 * whose sums stay in registers over a tile of keys, each number still getting a multiply
 * then an add per key in key order. Numbers decode exactly (no signalling-NaN half is ever
 * in a KV cache, kv.h, so F16C's conversion is exact). Other head sizes decode the row into
 * a buffer and take dot_f32_avx2 / the plain loop. */

#define KV_AXPY_KEYS 16 /* keys per tile of the value kernel: their rows stay in L1 */

/* Numbers 32c .. 32c+31 of a KV row of type T as four vectors. */
AVX2_FMA INLINE void kv_chunk32_avx2(const uint8_t *row, uint32_t T, int64_t c, __m256 out[4]) {
        if (T == GGML_TYPE_F32) {
                const float *f = (const float *)row + 32 * c;
                UNROLL for (int j = 0; j < 4; j++)
                        out[j] = _mm256_loadu_ps(f + 8 * j);
        } else if (T == GGML_TYPE_F16) {
                const ggml_half *h = (const ggml_half *)row + 32 * c;
                UNROLL for (int j = 0; j < 4; j++)
                        out[j] = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(h + 8 * j)));
        } else {
                const BlockQ8_0 *b = (const BlockQ8_0 *)row + c;
                const __m256 d = _mm256_set1_ps(half_f16c(b->d));
                UNROLL for (int j = 0; j < 4; j++)
                        out[j] = _mm256_mul_ps(
                                _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(b->qs + 8 * j)))), d);
        }
}

/* Numbers 16c .. 16c+15 of a KV row of type T as two vectors. */
AVX2_DQ INLINE void kv_chunk16_avx2(const uint8_t *row, uint32_t T, int64_t c, __m256 out[2]) {
        if (T == GGML_TYPE_F32) {
                const float *f = (const float *)row + 16 * c;
                out[0] = _mm256_loadu_ps(f);
                out[1] = _mm256_loadu_ps(f + 8);
        } else if (T == GGML_TYPE_F16) {
                const ggml_half *h = (const ggml_half *)row + 16 * c;
                out[0] = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)h));
                out[1] = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(h + 8)));
        } else {
                const BlockQ8_0 *b = (const BlockQ8_0 *)row + c / 2;
                const int8_t *qs = b->qs + 16 * (c % 2);
                const __m256 d = _mm256_set1_ps(half_f16c(b->d));
                out[0] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)qs))), d);
                out[1] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(qs + 8)))), d);
        }
}

/* NH (1 or 2) query heads n floats apart against one key row of n = 32 * nc numbers. */
AVX2_FMA INLINE void kv_dot_heads_avx2(const float *q, int64_t n, const uint8_t *kr, uint32_t T, float scale,
                                       float *out, int64_t out_ld, const int NH) {
        __m256 acc[2][4];
        UNROLL for (int h = 0; h < NH; h++)
                UNROLL for (int j = 0; j < 4; j++)
                        acc[h][j] = _mm256_setzero_ps();
        for (int64_t c = 0; c < n / 32; c++) {
                __m256 kv[4];
                kv_chunk32_avx2(kr, T, c, kv);
                UNROLL for (int h = 0; h < NH; h++)
                        UNROLL for (int j = 0; j < 4; j++)
                                acc[h][j] = _mm256_fmadd_ps(_mm256_loadu_ps(q + h * n + 32 * c + 8 * j), kv[j], acc[h][j]);
        }
        UNROLL for (int h = 0; h < NH; h++)
                out[h * out_ld] = hsum8(acc[h][0], acc[h][1], acc[h][2], acc[h][3]) * scale;
}

AVX2_FMA INLINE void kv_dot_avx2(const float *q, uint32_t n_q, const void *k, size_t k_stride, int64_t n_k,
                                 const void *prefetch, int64_t n, float scale, float *out, int64_t out_ld,
                                 const uint32_t T) {
        const size_t rb = kv_row_size(T, n);
        for (int64_t i = 0; i < n_k; i++) {
                const uint8_t *kr = (const uint8_t *)k + (size_t)i * k_stride;
                if (prefetch)
                        for (size_t o = 0; o < rb; o += 64)
                                _mm_prefetch((const char *)prefetch + (size_t)i * k_stride + o, _MM_HINT_T1);
                if (n % 32 != 0) {
                        float row[MODEL_MAX_HEAD_DIM];
                        kv_decode(T, kr, (size_t)n, row);
                        for (uint32_t g = 0; g < n_q; g++)
                                out[g * out_ld + i] = dot_f32_avx2(q + (size_t)g * n, row, n) * scale;
                        continue;
                }
                uint32_t g = 0;
                for (; g + 2 <= n_q; g += 2)
                        kv_dot_heads_avx2(q + (size_t)g * n, n, kr, T, scale, out + g * out_ld + i, out_ld, 2);
                if (g < n_q)
                        kv_dot_heads_avx2(q + (size_t)g * n, n, kr, T, scale, out + g * out_ld + i, out_ld, 1);
        }
}

/* NH (1..4) heads' outputs (n floats apart), columns 16c .. 16c+15, over keys [i0, i1). */
AVX2_DQ INLINE void kv_axpy_tile_avx2(float *out, int64_t n, const float *p, int64_t ld, const uint8_t *v,
                                      size_t v_stride, int64_t i0, int64_t i1, int64_t c, uint32_t T, const int NH) {
        __m256 acc[4][2];
        UNROLL for (int h = 0; h < NH; h++) {
                acc[h][0] = _mm256_loadu_ps(out + h * n + 16 * c);
                acc[h][1] = _mm256_loadu_ps(out + h * n + 16 * c + 8);
        }
        for (int64_t i = i0; i < i1; i++) {
                __m256 x[2];
                kv_chunk16_avx2(v + (size_t)i * v_stride, T, c, x);
                UNROLL for (int h = 0; h < NH; h++) {
                        const __m256 a = _mm256_broadcast_ss(p + h * ld + i);
                        acc[h][0] = _mm256_add_ps(acc[h][0], _mm256_mul_ps(a, x[0]));
                        acc[h][1] = _mm256_add_ps(acc[h][1], _mm256_mul_ps(a, x[1]));
                }
        }
        UNROLL for (int h = 0; h < NH; h++) {
                _mm256_storeu_ps(out + h * n + 16 * c, acc[h][0]);
                _mm256_storeu_ps(out + h * n + 16 * c + 8, acc[h][1]);
        }
}

AVX2_DQ INLINE void kv_axpy_avx2(float *out, uint32_t n_q, const float *p, int64_t ld, const void *v, size_t v_stride,
                                 int64_t n_k, int64_t n, const uint32_t T) {
        if (n % 16 != 0) {
                kv_axpy_rows_plain(out, n_q, p, ld, v, v_stride, n_k, n, T);
                return;
        }
        for (int64_t i0 = 0; i0 < n_k; i0 += KV_AXPY_KEYS) {
                const int64_t i1 = n_k - i0 < KV_AXPY_KEYS ? n_k : i0 + KV_AXPY_KEYS;
                for (uint32_t g = 0; g < n_q; g += 4) {
                        float *o = out + (size_t)g * n;
                        const float *pg = p + g * ld;
                        for (int64_t c = 0; c < n / 16; c++)
                                switch (n_q - g) {
                                case 1: kv_axpy_tile_avx2(o, n, pg, ld, v, v_stride, i0, i1, c, T, 1); break;
                                case 2: kv_axpy_tile_avx2(o, n, pg, ld, v, v_stride, i0, i1, c, T, 2); break;
                                case 3: kv_axpy_tile_avx2(o, n, pg, ld, v, v_stride, i0, i1, c, T, 3); break;
                                default: kv_axpy_tile_avx2(o, n, pg, ld, v, v_stride, i0, i1, c, T, 4); break;
                                }
                }
        }
}

#define DEFINE_KV_AVX2(suffix, T)                                                                    \
        AVX2_FMA static void kv_dot_##suffix##_avx2(const float *q, uint32_t n_q, const void *k, size_t k_stride, \
                                                    int64_t n_k, const void *prefetch, int64_t n, float scale, \
                                                    float *out, int64_t out_ld) {                   \
                kv_dot_avx2(q, n_q, k, k_stride, n_k, prefetch, n, scale, out, out_ld, T);           \
        }                                                                                            \
        AVX2_DQ static void kv_axpy_##suffix##_avx2(float *out, uint32_t n_q, const float *p, int64_t ld, \
                                                    const void *v, size_t v_stride, int64_t n_k, int64_t n) { \
                kv_axpy_avx2(out, n_q, p, ld, v, v_stride, n_k, n, T);                               \
        }

DEFINE_KV_AVX2(f32, GGML_TYPE_F32)
DEFINE_KV_AVX2(f16, GGML_TYPE_F16)
DEFINE_KV_AVX2(q8_0, GGML_TYPE_Q8_0)


/* =======================================================================================
 * Tables for quant.c. */

#define KERNEL_CASES(kind, isa)                                    \
        case GGML_TYPE_Q8_0: return kind##_q8_0_##isa;             \
        case GGML_TYPE_Q4_0: return kind##_q4_0_##isa;             \
        case GGML_TYPE_Q4_1: return kind##_q4_1_##isa;             \
        case GGML_TYPE_Q5_0: return kind##_q5_0_##isa;             \
        case GGML_TYPE_Q5_1: return kind##_q5_1_##isa;             \
        case GGML_TYPE_Q4_K: return kind##_q4_k_##isa;             \
        case GGML_TYPE_Q5_K: return kind##_q5_k_##isa;             \
        case GGML_TYPE_Q6_K: return kind##_q6_k_##isa;

DequantFn quant_simd_dequant(uint32_t type, QuantIsa isa) {
        if (isa == QUANT_ISA_AVX512) {
                switch (type) {
                case GGML_TYPE_F16: return dq_f16_avx512;
                case GGML_TYPE_BF16: return dq_bf16_avx512;
                KERNEL_CASES(dq, avx512)
                default: return NULL;
                }
        }
        if (isa == QUANT_ISA_AVX2) {
                switch (type) {
                case GGML_TYPE_F16: return dq_f16_avx2;
                case GGML_TYPE_BF16: return dq_bf16_avx2;
                KERNEL_CASES(dq, avx2)
                default: return NULL;
                }
        }
        return NULL;
}

DotRowsFn quant_simd_dot_rows(uint32_t type, QuantIsa isa) {
        if (isa == QUANT_ISA_AVX512) {
                switch (type) {
                KERNEL_CASES(dot, avx512)
                default: return NULL;
                }
        }
        if (isa == QUANT_ISA_AVX2) {
                switch (type) {
                KERNEL_CASES(dot, avx2)
                default: return NULL;
                }
        }
        return NULL;
}

DotF32Fn quant_simd_dot_f32(QuantIsa isa) {
        return isa == QUANT_ISA_AVX512 ? dot_f32_avx512 : isa == QUANT_ISA_AVX2 ? dot_f32_avx2 : NULL;
}

DotManyFn quant_simd_dot_f32_many(QuantIsa isa) {
        return isa == QUANT_ISA_AVX512 ? dot_f32_many_avx512 : NULL;
}

#define KV_CASES(kind, isa)                                        \
        case GGML_TYPE_F32: return kind##_f32_##isa;               \
        case GGML_TYPE_F16: return kind##_f16_##isa;               \
        case GGML_TYPE_Q8_0: return kind##_q8_0_##isa;

KVDotFn quant_simd_kv_dot(uint32_t type, QuantIsa isa) {
        if (isa == QUANT_ISA_AVX512) {
                switch (type) {
                KV_CASES(kv_dot, avx512)
                default: return NULL;
                }
        }
        if (isa == QUANT_ISA_AVX2) {
                switch (type) {
                KV_CASES(kv_dot, avx2)
                default: return NULL;
                }
        }
        return NULL;
}

KVAxpyFn quant_simd_kv_axpy(uint32_t type, QuantIsa isa) {
        if (isa == QUANT_ISA_AVX512) {
                switch (type) {
                KV_CASES(kv_axpy, avx512)
                default: return NULL;
                }
        }
        if (isa == QUANT_ISA_AVX2) {
                switch (type) {
                KV_CASES(kv_axpy, avx2)
                default: return NULL;
                }
        }
        return NULL;
}

#else /* not x86-64: no SIMD kernels */

int quant_simd_cpu_has(QuantIsa isa) {
        return 0;
}

DequantFn quant_simd_dequant(uint32_t type, QuantIsa isa) {
        return NULL;
}

DotRowsFn quant_simd_dot_rows(uint32_t type, QuantIsa isa) {
        return NULL;
}

DotF32Fn quant_simd_dot_f32(QuantIsa isa) {
        return NULL;
}

DotManyFn quant_simd_dot_f32_many(QuantIsa isa) {
        return NULL;
}

KVDotFn quant_simd_kv_dot(uint32_t type, QuantIsa isa) {
        return NULL;
}

KVAxpyFn quant_simd_kv_axpy(uint32_t type, QuantIsa isa) {
        return NULL;
}

#endif /* __x86_64__ */
