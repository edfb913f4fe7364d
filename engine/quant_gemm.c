/* engine/quant_gemm.c — panel products of many tokens on AVX2 (see quant_gemm.h).
 *
 * Layout of a panel (8 weight rows x up to GEMM_KC super-blocks): per super-block, for each
 * group of 32 weights and each chunk of 4 of them, one 32-byte vector with row r's 4 quants
 * at bytes 4r .. 4r + 3. Against an activation dword broadcast to every lane (the same 4
 * activations of one token), vpmaddubsw gives each row's two pair sums in its two int16
 * lanes; the 8 chunks of a group add up in int16 (|sum| <= 16 * 15 * 127 < 2^15, exact), and
 * one vpmaddwd with the group's scales (row r's in lanes 2r, 2r + 1) leaves row r's scaled
 * group sum in int32 lane r. So the sums of 8 rows come out in the 8 lanes of one vector,
 * with no horizontal adds, and the float part runs on 8 rows at once. */
#include "quant_gemm.h"

#include <stddef.h>
#include <string.h>

#include "quant_x86.h"

#if defined(__x86_64__)
#include <immintrin.h>

#define T_AVX2 __attribute__((target("avx2,f16c")))
#define INLINE static inline __attribute__((always_inline))

#define GEMM_ROWS 8 /* rows per panel: one int32 lane each */
#define GEMM_KC 4   /* super-blocks per panel: its 10 KiB and 4 tokens' activations stay in L1 */
#define GEMM_TOK 4  /* tokens per pass over the panel */

/* A panel's super-block, 8 rows. q[j][c]: chunk c (weights 32j + 4c .. + 3) of group j (of
 * 32 weights), row r's at bytes 4r .. 4r + 3: unsigned quants (Q4_K 0..15, Q6_K 0..63, Q4_0
 * 0..15, Q5_K 0..31) or Q8_0's signed ones. The scales, each type its own fields, row r's in int16 lanes
 * 2r and 2r + 1 (against a dword of 2 activations or 2 sums) or in float lane r. */
typedef struct Panel {
        uint8_t q[8][8][32]; /* [group of 32][chunk][row x 4 quants] */
        int16_t sc[16][16];  /* Q4_K: [group of 32] its scale; Q6_K: [group of 16] its scale, both lanes */
        int16_t mn[8][16];   /* Q4_K: [k < 4] the mins of groups 2k, 2k + 1; Q6_K: [k] the scales of groups 2k, 2k + 1 */
        float d[8][8];       /* [0][row]: K-quants' d; legacy: [block of 32][row] its scale */
        float dmin[8];       /* Q4_K: [row] */
} Panel;
_Static_assert(sizeof(Panel) % 32 == 0, "panel rows stay 32-byte aligned");

static _Thread_local Panel panel[GEMM_KC] __attribute__((aligned(64)));

T_AVX2 INLINE __m256i load256(const void *p) {
        return _mm256_loadu_si256((const __m256i *)p);
}

/* The 32-bit int at p in every lane (a broadcast load). */
T_AVX2 INLINE __m256i bcast32(const void *p) {
        int32_t v;
        memcpy(&v, p, 4);
        return _mm256_set1_epi32(v);
}

/* v[r] dword c -> v[c] dword r (an 8 x 8 transpose of 32-bit elements). */
T_AVX2 INLINE void transpose8x32(__m256i v[8]) {
        __m256i t[8], u[8];
        _Pragma("GCC unroll 4") for (int i = 0; i < 8; i += 2) {
                t[i] = _mm256_unpacklo_epi32(v[i], v[i + 1]);
                t[i + 1] = _mm256_unpackhi_epi32(v[i], v[i + 1]);
        }
        _Pragma("GCC unroll 2") for (int i = 0; i < 8; i += 4) {
                u[i] = _mm256_unpacklo_epi64(t[i], t[i + 2]);
                u[i + 1] = _mm256_unpackhi_epi64(t[i], t[i + 2]);
                u[i + 2] = _mm256_unpacklo_epi64(t[i + 1], t[i + 3]);
                u[i + 3] = _mm256_unpackhi_epi64(t[i + 1], t[i + 3]);
        }
        _Pragma("GCC unroll 4") for (int i = 0; i < 4; i++) {
                v[i] = _mm256_permute2x128_si256(u[i], u[i + 4], 0x20);
                v[i + 4] = _mm256_permute2x128_si256(u[i], u[i + 4], 0x31);
        }
}

/* Group j (32 weights) of 8 rows, src[r] pointing at row r's 32 quants, into the panel's layout. */
T_AVX2 INLINE void put_group(const uint8_t *const src[GEMM_ROWS], int j, Panel *p) {
        __m256i v[8];
        _Pragma("GCC unroll 8") for (int r = 0; r < GEMM_ROWS; r++)
                v[r] = load256(src[r]);
        transpose8x32(v);
        _Pragma("GCC unroll 8") for (int c = 0; c < 8; c++)
                _mm256_store_si256((__m256i *)p->q[j][c], v[c]);
}

/* All 8 groups of the 8 rows' decoded quants q[r][0 .. 255]. */
T_AVX2 INLINE void put_groups(uint8_t q[GEMM_ROWS][QK_K], Panel *p) {
        for (int j = 0; j < 8; j++) {
                const uint8_t *src[GEMM_ROWS];
                for (int r = 0; r < GEMM_ROWS; r++)
                        src[r] = q[r] + 32 * j;
                put_group(src, j, p);
        }
}

/* s[t] = the int16 pair sums of chunks c0 .. c0 + n - 1 of group j against token t's 32
 * activations at xq[t]: n vpmaddubsw added up, exact while n * 2 * (largest quant) * 127 <
 * 2^15 (the caller's bound: Q4_K and Q4_0 n = 8, Q5_K 4). run_q6k keeps its own two-chunk
 * loop: through this one its pairs of chunks ran a third slower. */
T_AVX2 INLINE void chunk_pairs(const Panel *p, int j, int c0, int n, const int8_t *const xq[GEMM_TOK], __m256i s[GEMM_TOK]) {
        const __m256i w0 = _mm256_load_si256((const __m256i *)p->q[j][c0]);
        _Pragma("GCC unroll 4") for (int t = 0; t < GEMM_TOK; t++)
                s[t] = _mm256_maddubs_epi16(w0, bcast32(xq[t] + 4 * c0));
        _Pragma("GCC unroll 1") for (int c = c0 + 1; c < c0 + n; c++) {
                const __m256i w = _mm256_load_si256((const __m256i *)p->q[j][c]);
                _Pragma("GCC unroll 4") for (int t = 0; t < GEMM_TOK; t++)
                        s[t] = _mm256_add_epi16(s[t], _mm256_maddubs_epi16(w, bcast32(xq[t] + 4 * c)));
        }
}

/* ---- Q4_K and Q5_K */

/* v shifted left (s > 0) or right (s < 0) by |s| in each 16-bit lane. */
T_AVX2 INLINE __m256i shift16(__m256i v, int s) {
        return s > 0 ? _mm256_slli_epi16(v, s) : s < 0 ? _mm256_srli_epi16(v, -s) : v;
}

/* Super-block b of the 8 rows (blocks of bsz bytes: d, dmin, the 12 scale bytes at 4, with
 * has_qh Q5_K's 5th bits at 16, the 4-bit quants at qs_off) into p. */
T_AVX2 INLINE void pack_k45(const uint8_t *const row[GEMM_ROWS], int64_t b, Panel *p, size_t bsz, size_t qs_off, int has_qh) {
        const __m256i m4 = _mm256_set1_epi8(0x0f), b4 = _mm256_set1_epi8(0x10);
        const uint8_t *blk[GEMM_ROWS];
        for (int r = 0; r < GEMM_ROWS; r++)
                blk[r] = row[r] + (size_t)b * bsz;
        __m256i H[8]; /* with has_qh: H[c] row r's qh[4c .. 4c + 3] (bit j: group j's 5th bit) */
        if (has_qh) {
                _Pragma("GCC unroll 8") for (int r = 0; r < GEMM_ROWS; r++)
                        H[r] = load256(blk[r] + 16);
                transpose8x32(H);
        }
        _Pragma("GCC unroll 4") for (int h = 0; h < 4; h++) { /* qs[32h ..]: low nibbles group 2h, high group 2h + 1 */
                __m256i v[8];
                _Pragma("GCC unroll 8") for (int r = 0; r < GEMM_ROWS; r++)
                        v[r] = load256(blk[r] + qs_off + 32 * h);
                transpose8x32(v);
                _Pragma("GCC unroll 8") for (int c = 0; c < 8; c++) {
                        __m256i lo = _mm256_and_si256(v[c], m4), hi = _mm256_and_si256(_mm256_srli_epi16(v[c], 4), m4);
                        if (has_qh) { /* bit 2h (low nibbles) / 2h + 1 (high) to bit 4 */
                                lo = _mm256_or_si256(lo, _mm256_and_si256(shift16(H[c], 4 - 2 * h), b4));
                                hi = _mm256_or_si256(hi, _mm256_and_si256(shift16(H[c], 3 - 2 * h), b4));
                        }
                        _mm256_store_si256((__m256i *)p->q[2 * h][c], lo);
                        _mm256_store_si256((__m256i *)p->q[2 * h + 1][c], hi);
                }
        }
        /* scales: row r's [sc_j, sc_j] and [m_2k, m_2k+1] as int16 dwords, then transposed so
         * that dword r of sc[j] / mn[k] is row r's */
        __m256i SC[8], MN[8];
        _Pragma("GCC unroll 8") for (int r = 0; r < GEMM_ROWS; r++) {
                const __m128i sm = k4_scales_simd(blk[r] + 4); /* bytes sc0 .. sc7, m0 .. m7 */
                const __m128i sc = _mm_cvtepu8_epi16(sm);
                SC[r] = _mm256_set_m128i(_mm_unpackhi_epi16(sc, sc), _mm_unpacklo_epi16(sc, sc));
                MN[r] = _mm256_set_m128i(_mm_setzero_si128(), _mm_cvtepu8_epi16(_mm_srli_si128(sm, 8)));
        }
        transpose8x32(SC);
        transpose8x32(MN);
        _Pragma("GCC unroll 8") for (int j = 0; j < 8; j++)
                _mm256_store_si256((__m256i *)p->sc[j], SC[j]);
        _Pragma("GCC unroll 4") for (int k = 0; k < 4; k++)
                _mm256_store_si256((__m256i *)p->mn[k], MN[k]);
        for (int r = 0; r < GEMM_ROWS; r++) {
                uint16_t dm[2];
                memcpy(dm, blk[r], 4);
                p->d[0][r] = quant_int8_half(dm[0]);
                p->dmin[r] = quant_int8_half(dm[1]);
        }
}

T_AVX2 static void pack_q4k(const uint8_t *const row[GEMM_ROWS], int64_t b, Panel *p) {
        pack_k45(row, b, p, sizeof(BlockQ4_K), offsetof(BlockQ4_K, qs), 0);
}

T_AVX2 static void pack_q5k(const uint8_t *const row[GEMM_ROWS], int64_t b, Panel *p) {
        pack_k45(row, b, p, sizeof(BlockQ5_K), offsetof(BlockQ5_K, qs), 1);
}

/* acc[t] (row r in lane r) + term_k4 of super-blocks 0 .. kb - 1 of the panel against
 * token t's blocks x[t], super-block by super-block. A group's chunks add up in int16 cps
 * at a time (cps * 2 * max quant * 127 < 2^15: 8 for Q4_K's 0..15, 4 for Q5_K's 0..31). */
T_AVX2 INLINE void run_k45(const Panel *p, int kb, const uint8_t *const xv[GEMM_TOK], __m256 acc[GEMM_TOK], int cps) {
        for (int b = 0; b < kb; b++) {
                const Panel *pb = &p[b];
                const BlockQ8K *x[GEMM_TOK];
                int16_t gsum[GEMM_TOK][8] __attribute__((aligned(16))); /* token t's sums of x over each group */
                _Pragma("GCC unroll 4") for (int t = 0; t < GEMM_TOK; t++) {
                        x[t] = (const BlockQ8K *)xv[t] + b;
                        const __m128i lo = _mm_loadu_si128((const __m128i *)x[t]->bsums);
                        const __m128i hi = _mm_loadu_si128((const __m128i *)(x[t]->bsums + 8));
                        _mm_store_si128((__m128i *)gsum[t], _mm_hadd_epi16(lo, hi)); /* |.| <= 32 * 127: exact */
                }
                __m256i isum[GEMM_TOK];
                _Pragma("GCC unroll 4") for (int t = 0; t < GEMM_TOK; t++)
                        isum[t] = _mm256_setzero_si256();
                _Pragma("GCC unroll 2") for (int j = 0; j < 8; j++) {
                        const __m256i sc = _mm256_load_si256((const __m256i *)pb->sc[j]);
                        const int8_t *xq[GEMM_TOK];
                        _Pragma("GCC unroll 4") for (int t = 0; t < GEMM_TOK; t++)
                                xq[t] = x[t]->qs + 32 * j;
                        _Pragma("GCC unroll 2") for (int c0 = 0; c0 < 8; c0 += cps) {
                                __m256i s[GEMM_TOK];
                                chunk_pairs(pb, j, c0, cps, xq, s);
                                _Pragma("GCC unroll 4") for (int t = 0; t < GEMM_TOK; t++)
                                        isum[t] = _mm256_add_epi32(isum[t], _mm256_madd_epi16(s[t], sc));
                        }
                }
                const __m256 wd = _mm256_load_ps(pb->d[0]), wm = _mm256_load_ps(pb->dmin);
                _Pragma("GCC unroll 4") for (int t = 0; t < GEMM_TOK; t++) {
                        __m256i msum = _mm256_madd_epi16(bcast32(gsum[t]), _mm256_load_si256((const __m256i *)pb->mn[0]));
                        _Pragma("GCC unroll 4") for (int k = 1; k < 4; k++)
                                msum = _mm256_add_epi32(msum, _mm256_madd_epi16(bcast32(gsum[t] + 2 * k),
                                                                                _mm256_load_si256((const __m256i *)pb->mn[k])));
                        /* term_k4: (xd * wd) * isum - (xd * wm) * msum, then acc + term */
                        const __m256 xd = _mm256_set1_ps(x[t]->d);
                        const __m256 term = _mm256_sub_ps(_mm256_mul_ps(_mm256_mul_ps(xd, wd), _mm256_cvtepi32_ps(isum[t])),
                                                          _mm256_mul_ps(_mm256_mul_ps(xd, wm), _mm256_cvtepi32_ps(msum)));
                        acc[t] = _mm256_add_ps(acc[t], term);
                }
        }
}

T_AVX2 static void run_q4k(const Panel *p, int kb, const uint8_t *const x[GEMM_TOK], __m256 acc[GEMM_TOK]) {
        run_k45(p, kb, x, acc, 8);
}

T_AVX2 static void run_q5k(const Panel *p, int kb, const uint8_t *const x[GEMM_TOK], __m256 acc[GEMM_TOK]) {
        run_k45(p, kb, x, acc, 4);
}

/* ---- Q6_K */

T_AVX2 static void pack_q6k(const uint8_t *const row[GEMM_ROWS], int64_t b, Panel *p) {
        const __m256i m4 = _mm256_set1_epi8(0x0f), m2 = _mm256_set1_epi8(0x03);
        uint8_t q[GEMM_ROWS][QK_K] __attribute__((aligned(32)));
        for (int r = 0; r < GEMM_ROWS; r++) {
                const BlockQ6_K *blk = (const BlockQ6_K *)row[r] + b;
                for (int h = 0; h < 2; h++) { /* weights 128h + 32i + l from ql[64h + l (+ 32)], qh[32h + l] */
                        const __m256i l0 = load256(blk->ql + 64 * h), l1 = load256(blk->ql + 64 * h + 32);
                        const __m256i qh = load256(blk->qh + 32 * h);
                        const __m256i h0 = _mm256_slli_epi16(_mm256_and_si256(qh, m2), 4);
                        const __m256i h1 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), m2), 4);
                        const __m256i h2 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 4), m2), 4);
                        const __m256i h3 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 6), m2), 4);
                        uint8_t *o = q[r] + 128 * h;
                        _mm256_store_si256((__m256i *)o, _mm256_or_si256(_mm256_and_si256(l0, m4), h0));
                        _mm256_store_si256((__m256i *)(o + 32), _mm256_or_si256(_mm256_and_si256(l1, m4), h1));
                        _mm256_store_si256((__m256i *)(o + 64), _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4), h2));
                        _mm256_store_si256((__m256i *)(o + 96), _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4), h3));
                }
                for (int g = 0; g < 16; g++)
                        p->sc[g][2 * r] = p->sc[g][2 * r + 1] = blk->scales[g];
                for (int k = 0; k < 8; k++) {
                        p->mn[k][2 * r] = blk->scales[2 * k];
                        p->mn[k][2 * r + 1] = blk->scales[2 * k + 1];
                }
                p->d[0][r] = quant_int8_half(blk->d);
        }
        put_groups(q, p);
}

/* acc[t] + term_q6k per super-block: isum = sum_g sc_g sum q x - 32 sum_g sc_g X_g (X_g the
 * group's activation sum: bsums[g]); two chunks of 6-bit quants per int16 sum (|.| <= 4 * 63 *
 * 127 < 2^15). */
T_AVX2 static void run_q6k(const Panel *p, int kb, const uint8_t *const xv[GEMM_TOK], __m256 acc[GEMM_TOK]) {
        for (int b = 0; b < kb; b++) {
                const Panel *pb = &p[b];
                const BlockQ8K *x[GEMM_TOK];
                __m256i isum[GEMM_TOK];
                _Pragma("GCC unroll 4") for (int t = 0; t < GEMM_TOK; t++) {
                        x[t] = (const BlockQ8K *)xv[t] + b;
                        isum[t] = _mm256_setzero_si256();
                }
                _Pragma("GCC unroll 1") for (int j = 0; j < 8; j++) {
                        _Pragma("GCC unroll 4") for (int c = 0; c < 8; c += 2) {
                                const __m256i w0 = _mm256_load_si256((const __m256i *)pb->q[j][c]);
                                const __m256i w1 = _mm256_load_si256((const __m256i *)pb->q[j][c + 1]);
                                const __m256i sc = _mm256_load_si256((const __m256i *)pb->sc[2 * j + c / 4]);
                                _Pragma("GCC unroll 4") for (int t = 0; t < GEMM_TOK; t++) {
                                        const int8_t *xq = x[t]->qs + 32 * j + 4 * c;
                                        const __m256i s = _mm256_add_epi16(_mm256_maddubs_epi16(w0, bcast32(xq)),
                                                                           _mm256_maddubs_epi16(w1, bcast32(xq + 4)));
                                        isum[t] = _mm256_add_epi32(isum[t], _mm256_madd_epi16(s, sc));
                                }
                        }
                }
                const __m256 wd = _mm256_load_ps(pb->d[0]);
                _Pragma("GCC unroll 4") for (int t = 0; t < GEMM_TOK; t++) {
                        __m256i msum = _mm256_setzero_si256();
                        _Pragma("GCC unroll 8") for (int k = 0; k < 8; k++)
                                msum = _mm256_add_epi32(msum, _mm256_madd_epi16(bcast32(x[t]->bsums + 2 * k),
                                                                                _mm256_load_si256((const __m256i *)pb->mn[k])));
                        const __m256i s = _mm256_sub_epi32(isum[t], _mm256_slli_epi32(msum, 5));
                        /* term_q6k: (xd * wd) * isum, then acc + term */
                        acc[t] = _mm256_add_ps(acc[t], _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(x[t]->d), wd), _mm256_cvtepi32_ps(s)));
                }
        }
}

/* ---- The legacy types Q4_0 and Q8_0 (BlockQ8X activations, a scale per 32) */

T_AVX2 static void pack_q4_0(const uint8_t *const row[GEMM_ROWS], int64_t b, Panel *p) {
        const __m128i m4 = _mm_set1_epi8(0x0f);
        uint8_t q[GEMM_ROWS][QK_K] __attribute__((aligned(32)));
        for (int r = 0; r < GEMM_ROWS; r++) {
                const BlockQ4_0 *blk = (const BlockQ4_0 *)row[r] + 8 * b;
                for (int i = 0; i < 8; i++) { /* low nibbles: weights 0..15, high: 16..31 */
                        const __m128i v = _mm_loadu_si128((const __m128i *)blk[i].qs);
                        _mm_store_si128((__m128i *)(q[r] + 32 * i), _mm_and_si128(v, m4));
                        _mm_store_si128((__m128i *)(q[r] + 32 * i + 16), _mm_and_si128(_mm_srli_epi16(v, 4), m4));
                        p->d[i][r] = quant_int8_half(blk[i].d);
                }
        }
        put_groups(q, p);
}

T_AVX2 static void pack_q8_0(const uint8_t *const row[GEMM_ROWS], int64_t b, Panel *p) {
        const uint8_t *q[GEMM_ROWS];
        for (int i = 0; i < 8; i++) {
                for (int r = 0; r < GEMM_ROWS; r++) {
                        const BlockQ8_0 *blk = (const BlockQ8_0 *)row[r] + 8 * b + i;
                        q[r] = (const uint8_t *)blk->qs;
                        p->d[i][r] = quant_int8_half(blk->d);
                }
                put_group(q, i, p);
        }
}

/* acc[t] + term_leg per super-block from the 8 blocks' sums s[i] (row r in lane r). */
T_AVX2 INLINE __m256 leg_term(const Panel *p, const BlockQ8X *x, const __m256i s[8]) {
        __m256 P[8];
        _Pragma("GCC unroll 8") for (int i = 0; i < 8; i++) /* (wd * xd) * s */
                P[i] = _mm256_mul_ps(_mm256_mul_ps(_mm256_load_ps(p->d[i]), _mm256_set1_ps(x->d[i])), _mm256_cvtepi32_ps(s[i]));
        return _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(P[0], P[1]), _mm256_add_ps(P[2], P[3])),
                             _mm256_add_ps(_mm256_add_ps(P[4], P[5]), _mm256_add_ps(P[6], P[7])));
}

/* Q4_0: s = sum q x - 8 X (X: the block's activation sum, from bsums). */
T_AVX2 static void run_q4_0(const Panel *p, int kb, const uint8_t *const xv[GEMM_TOK], __m256 acc[GEMM_TOK]) {
        const __m256i ones = _mm256_set1_epi16(1);
        for (int b = 0; b < kb; b++) {
                const Panel *pb = &p[b];
                const BlockQ8X *x[GEMM_TOK];
                _Pragma("GCC unroll 4") for (int t = 0; t < GEMM_TOK; t++)
                        x[t] = (const BlockQ8X *)xv[t] + b;
                __m256i s[GEMM_TOK][8], xsum8[GEMM_TOK]; /* 8 x token t's sum of x over block i in lane i */
                _Pragma("GCC unroll 4") for (int t = 0; t < GEMM_TOK; t++)
                        xsum8[t] = _mm256_slli_epi32(_mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)x[t]->bsums), ones), 3);
                _Pragma("GCC unroll 1") for (int i = 0; i < 8; i++) {
                        __m256i a[GEMM_TOK];
                        const int8_t *xq[GEMM_TOK];
                        _Pragma("GCC unroll 4") for (int t = 0; t < GEMM_TOK; t++)
                                xq[t] = x[t]->qs + 32 * i;
                        chunk_pairs(pb, i, 0, 8, xq, a);
                        _Pragma("GCC unroll 4") for (int t = 0; t < GEMM_TOK; t++) /* minus 8 x the block's sum of x */
                                s[t][i] = _mm256_sub_epi32(_mm256_madd_epi16(a[t], ones),
                                                           _mm256_permutevar8x32_epi32(xsum8[t], _mm256_set1_epi32(i)));
                }
                _Pragma("GCC unroll 4") for (int t = 0; t < GEMM_TOK; t++)
                        acc[t] = _mm256_add_ps(acc[t], leg_term(pb, x[t], s[t]));
        }
}

/* Q8_0: signed quants, so each chunk runs as |q| times x with q's sign (a pair sum is then
 * at most 2 * 128 * 127 < 2^15, but two are not: each goes to int32 on its own). */
T_AVX2 static void run_q8_0(const Panel *p, int kb, const uint8_t *const xv[GEMM_TOK], __m256 acc[GEMM_TOK]) {
        const __m256i ones = _mm256_set1_epi16(1);
        for (int b = 0; b < kb; b++) {
                const Panel *pb = &p[b];
                const BlockQ8X *x[GEMM_TOK];
                _Pragma("GCC unroll 4") for (int t = 0; t < GEMM_TOK; t++)
                        x[t] = (const BlockQ8X *)xv[t] + b;
                __m256i s[GEMM_TOK][8];
                _Pragma("GCC unroll 1") for (int i = 0; i < 8; i++) {
                        __m256i a[GEMM_TOK];
                        _Pragma("GCC unroll 4") for (int t = 0; t < GEMM_TOK; t++)
                                a[t] = _mm256_setzero_si256();
                        _Pragma("GCC unroll 2") for (int c = 0; c < 8; c++) {
                                const __m256i w = _mm256_load_si256((const __m256i *)pb->q[i][c]);
                                const __m256i aw = _mm256_abs_epi8(w);
                                _Pragma("GCC unroll 4") for (int t = 0; t < GEMM_TOK; t++) {
                                        const __m256i xs = _mm256_sign_epi8(bcast32(x[t]->qs + 32 * i + 4 * c), w);
                                        a[t] = _mm256_add_epi32(a[t], _mm256_madd_epi16(_mm256_maddubs_epi16(aw, xs), ones));
                                }
                        }
                        _Pragma("GCC unroll 4") for (int t = 0; t < GEMM_TOK; t++)
                                s[t][i] = a[t];
                }
                _Pragma("GCC unroll 4") for (int t = 0; t < GEMM_TOK; t++)
                        acc[t] = _mm256_add_ps(acc[t], leg_term(pb, x[t], s[t]));
        }
}

/* ---- The driver: 8-row panels of GEMM_KC super-blocks, each run over all tokens. */

typedef void (*PackFn)(const uint8_t *const row[GEMM_ROWS], int64_t b, Panel *p);
typedef void (*RunFn)(const Panel *p, int kb, const uint8_t *const x[GEMM_TOK], __m256 acc[GEMM_TOK]);

/* Tokens whose running sums a pass keeps (TLS, 16 KiB): out is written once per panel row
 * and token, not read and written back for every panel of super-blocks (its rows are far
 * apart: each such access missed the caches). More tokens run in passes of this many. */
#define GEMM_TMAX 512
static _Thread_local float panel_acc[GEMM_TMAX][GEMM_ROWS] __attribute__((aligned(64)));

/* Weight super-blocks of wb bytes, activation blocks of xb bytes; T <= GEMM_TMAX. */
T_AVX2 static void gemm_pass(PackFn pack, RunFn run, size_t wb, size_t xb, const void *restrict w, size_t rb, int64_t R,
                             const uint8_t *restrict x, int64_t xs, int64_t T, float *restrict out, int64_t os, int64_t n) {
        const int64_t nb = n / QK_K;
        for (int64_t r0 = 0; r0 < R; r0 += GEMM_ROWS) {
                const int nr = R - r0 < GEMM_ROWS ? (int)(R - r0) : GEMM_ROWS;
                const uint8_t *row[GEMM_ROWS]; /* a short last panel repeats its last row (computed, not stored) */
                for (int i = 0; i < GEMM_ROWS; i++)
                        row[i] = (const uint8_t *)w + (size_t)(r0 + (i < nr ? i : nr - 1)) * rb;
                for (int64_t b0 = 0; b0 < nb; b0 += GEMM_KC) {
                        const int kb = nb - b0 < GEMM_KC ? (int)(nb - b0) : GEMM_KC;
                        for (int b = 0; b < kb; b++)
                                pack(row, b0 + b, &panel[b]);
                        /* the next panel's weights (these rows' next super-blocks, or the next
                         * rows' first) come from memory while this one runs over the tokens */
                        for (int i = 0; i < GEMM_ROWS; i++) {
                                const int64_t next_row = b0 + kb < nb ? r0 + (i < nr ? i : nr - 1) : r0 + GEMM_ROWS + i;
                                const int64_t next_b = b0 + kb < nb ? b0 + kb : 0;
                                if (next_row >= R)
                                        break;
                                const uint8_t *next = (const uint8_t *)w + (size_t)next_row * rb + (size_t)next_b * wb;
                                for (size_t o = 0; o < GEMM_KC * wb; o += 64) /* a prefetch never faults */
                                        _mm_prefetch((const char *)next + o, _MM_HINT_T0);
                        }
                        for (int64_t t0 = 0; t0 < T; t0 += GEMM_TOK) {
                                const int tt = T - t0 < GEMM_TOK ? (int)(T - t0) : GEMM_TOK;
                                const uint8_t *xt[GEMM_TOK]; /* a short last tile repeats its last token */
                                __m256 acc[GEMM_TOK];
                                for (int i = 0; i < GEMM_TOK; i++) {
                                        xt[i] = x + (size_t)((t0 + (i < tt ? i : tt - 1)) * xs + b0) * xb;
                                        acc[i] = b0 == 0 || i >= tt ? _mm256_setzero_ps() : _mm256_load_ps(panel_acc[t0 + i]);
                                }
                                run(panel, kb, xt, acc);
                                for (int i = 0; i < tt; i++)
                                        _mm256_store_ps(panel_acc[t0 + i], acc[i]);
                        }
                }
                for (int64_t t = 0; t < T; t++)
                        if (nr == GEMM_ROWS)
                                _mm256_storeu_ps(out + t * os + r0, _mm256_load_ps(panel_acc[t]));
                        else
                                memcpy(out + t * os + r0, panel_acc[t], (size_t)nr * sizeof(float));
        }
}

T_AVX2 static void gemm_panels(PackFn pack, RunFn run, size_t wb, size_t xb, const void *restrict w, size_t rb, int64_t R,
                               const void *restrict xv, int64_t xs, int64_t T, float *restrict out, int64_t os, int64_t n) {
        for (int64_t t0 = 0; t0 < T; t0 += GEMM_TMAX)
                gemm_pass(pack, run, wb, xb, w, rb, R, (const uint8_t *)xv + (size_t)(t0 * xs) * xb, xs,
                          T - t0 < GEMM_TMAX ? T - t0 : GEMM_TMAX, out + t0 * os, os, n);
}

#define DEFINE_GEMM(type, WSB, XT)                                                                               \
        __attribute__((target("avx2,f16c"))) void quant_gemm_##type##_avx2(                                   \
                const void *restrict w, size_t rb, int64_t R, const void *restrict x, int64_t xs, int64_t T,  \
                float *restrict out, int64_t os, int64_t n) {                                                  \
                gemm_panels(pack_##type, run_##type, WSB, sizeof(XT), w, rb, R, x, xs, T, out, os, n);             \
        }

DEFINE_GEMM(q4k, sizeof(BlockQ4_K), BlockQ8K)
DEFINE_GEMM(q5k, sizeof(BlockQ5_K), BlockQ8K)
DEFINE_GEMM(q6k, sizeof(BlockQ6_K), BlockQ8K)
DEFINE_GEMM(q4_0, 8 * sizeof(BlockQ4_0), BlockQ8X)
DEFINE_GEMM(q8_0, 8 * sizeof(BlockQ8_0), BlockQ8X)

#endif /* __x86_64__ */
