/* engine/quant_gemm.h — the 8-bit products of many tokens at once (prefill) on AVX2: a
 * weight matrix's rows are repacked, 8 rows and a few super-blocks at a time, into a panel
 * that holds 4 weights of each of the 8 rows side by side in one 256-bit vector; every
 * token of the product then runs over that panel from L1, so one vpmaddubsw serves 8 rows,
 * the activations are read as broadcast dwords, and a group's partial sums stay in 16-bit
 * lanes until its scale is applied once. The integer sums are exact and the float part is,
 * term for term, quant_int8.c's (super-block by super-block, the same operations), so the
 * results are the same bits as every other variant's. Pure functions; any thread (each
 * thread repacks into its own panel). */
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "quant_int8.h"

/* From this many tokens on, quant_int8's AVX2 kernels of the types below hand the product
 * to the panel version: below it the repacking, paid once per 8 rows, is not repaid. */
#define QUANT_GEMM_MIN_T 12

#if defined(__x86_64__)
/* Int8DotRowsFn for any R >= 1, T >= 1 and strides: Q4_K, Q5_K and Q6_K weights against BlockQ8K
 * activations, Q4_0 and Q8_0 against BlockQ8X. */
#define QUANT_GEMM_DECLARE(type)                                                                      \
        void quant_gemm_##type##_avx2(const void *restrict w, size_t row_bytes, int64_t R,            \
                                      const void *restrict x, int64_t x_stride_blocks, int64_t T,     \
                                      float *restrict out, int64_t out_stride, int64_t n)
QUANT_GEMM_DECLARE(q4k);
QUANT_GEMM_DECLARE(q5k);
QUANT_GEMM_DECLARE(q6k);
QUANT_GEMM_DECLARE(q4_0);
QUANT_GEMM_DECLARE(q8_0);
#endif
