/* tests/unit/test_blocks.h — what the kernel tests share: a seeded RNG, random quant blocks'
 * scale halves (normal, subnormal, zero, huge), where each block type keeps its scales, and
 * small helpers. Included by test_kernels.c and test_int8.c; single-threaded. */
#pragma once
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "quant.h"

/* splitmix64: the test owns its RNG, fixed seeds. */
static inline uint64_t rng_next(uint64_t *s) {
        uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        return z ^ (z >> 31);
}

static inline void *xmalloc(size_t n) {
        void *p = malloc(n ? n : 1);
        assert_non_null(p);
        return p;
}

/* Byte offsets of a block's fp16 scale fields, -1 terminated. */
static inline void scale_offsets(uint32_t type, int ret_off[3]) {
        ret_off[0] = ret_off[1] = ret_off[2] = -1;
        switch (type) {
        case GGML_TYPE_Q4_0:
        case GGML_TYPE_Q5_0:
        case GGML_TYPE_Q8_0:
                ret_off[0] = 0;
                break;
        case GGML_TYPE_Q4_1:
        case GGML_TYPE_Q5_1:
                ret_off[0] = offsetof(BlockQ4_1, d);
                ret_off[1] = offsetof(BlockQ4_1, m);
                break;
        case GGML_TYPE_Q2_K:
                ret_off[0] = offsetof(BlockQ2_K, d);
                ret_off[1] = offsetof(BlockQ2_K, dmin);
                break;
        case GGML_TYPE_Q3_K:
                ret_off[0] = offsetof(BlockQ3_K, d);
                break;
        case GGML_TYPE_Q4_K:
        case GGML_TYPE_Q5_K:
                ret_off[0] = offsetof(BlockQ4_K, d);
                ret_off[1] = offsetof(BlockQ4_K, dmin);
                break;
        case GGML_TYPE_Q6_K:
                ret_off[0] = offsetof(BlockQ6_K, d);
                break;
        default:
                break;
        }
}

/* A finite scale half: normal, subnormal, +-0, the largest exponents, or +-1. */
static inline ggml_half random_scale(uint64_t *s) {
        const uint64_t r = rng_next(s);
        const uint16_t sign = (r & 1) ? 0x8000 : 0, mant = (uint16_t)((r >> 8) & 0x3ff);
        switch ((r >> 1) % 8) {
        case 0: return (ggml_half)(sign | (mant ? mant : 1));           /* subnormal */
        case 1: return (ggml_half)sign;                                 /* +0 / -0 */
        case 2: return (ggml_half)(sign | 0x7800 | mant);               /* large: exponent 30 */
        case 3: return (ggml_half)(sign | 0x3c00);                      /* +-1 */
        default: return (ggml_half)(sign | ((((r >> 20) % 30) + 1) << 10) | mant); /* any normal */
        }
}

static inline uint32_t float_bits(float f) {
        uint32_t u;
        memcpy(&u, &f, 4);
        return u;
}
