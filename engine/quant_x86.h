/* engine/quant_x86.h — x86-64 helpers shared by the int8 kernels (quant_int8.c) and the
 * panel products (quant_gemm.c). */
#pragma once
#if defined(__x86_64__)
#include <immintrin.h>
#include <stdint.h>

/* Bytes [sc0 .. sc7, m0 .. m7] of a Q4_K / Q5_K block's 12 scale bytes (the values of
 * k4_scales), reading 16 bytes (the 4 after the scales are the block's too). */
static inline __attribute__((always_inline, target("avx2"))) __m128i k4_scales_simd(const uint8_t *s) {
        const __m128i v = _mm_loadu_si128((const __m128i *)s);             /* dwords a, b, c, - */
        const __m128i x = _mm_shuffle_epi32(v, _MM_SHUFFLE(2, 1, 2, 0));  /* a, c, b, c */
        const __m128i y = _mm_shuffle_epi32(v, _MM_SHUFFLE(1, 1, 0, 0));  /* a, a, b, b */
        const __m128i lo = _mm_and_si128(_mm_srlv_epi32(x, _mm_setr_epi32(0, 0, 0, 4)),
                                         _mm_setr_epi32(0x3f3f3f3f, 0x0f0f0f0f, 0x3f3f3f3f, 0x0f0f0f0f));
        const __m128i hi = _mm_and_si128(_mm_srli_epi32(y, 2), _mm_setr_epi32(0, 0x30303030, 0, 0x30303030));
        return _mm_or_si128(lo, hi);
}

#endif
