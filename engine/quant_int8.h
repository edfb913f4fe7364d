/* engine/quant_int8.h — the int8 matrix-product path (as llama.cpp's): activations are
 * quantized once per token to 8-bit blocks (BlockQ8K), then each weight row is dotted with
 * them in integer arithmetic, so the kernels are bound by memory bandwidth rather than by
 * float arithmetic. Weight types with an int8 path: Q4_K, Q5_K, Q6_K, Q8_0.
 *
 * Every kernel exists as a scalar reference, AVX2, AVX-512 (vpmaddubsw) and AVX-512 VNNI
 * variant; all give exactly the same float bits. Per 256-weight super-block each variant
 * computes exact integer sums (SIMD or not), then calls one shared scalar function that
 * combines them with the float scales in a fixed order (quant_int8.c: "Float part"), so
 * the same inputs give the same bits on every x86-64 CPU (for finite or infinite scales;
 * a NaN scale gives a NaN). The result is NOT the float path's (quant_traits()->dot_rows):
 * the activations were rounded to 8 bits (error around 1e-2 of sqrt(sum (w_i x_i)^2)).
 * Pure functions; any thread. quant_int8() selects the variant for this CPU once. */
#pragma once
#include <assert.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "quant.h"

/* 256 activations: x[i] ~= d * qs[i]. bsums[i] = qs[16i] + ... + qs[16i + 15]; the kernels
 * rely on it (quantize_row_q8k makes it so). */
typedef struct BlockQ8K {
        float d;              /* scale: max |x| / 127, 0 for an all-zero block */
        int8_t qs[QK_K];      /* quants, -127..127 */
        int16_t bsums[QK_K / 16];
} BlockQ8K;
static_assert(sizeof(BlockQ8K) == 292, "Q8_K block size");
static_assert(offsetof(BlockQ8K, bsums) == 260, "Q8_K layout");

/* Quantize n floats (n a multiple of 256) into n / 256 blocks: per block d = max|x| / 127
 * (when that is 0 every quant is 0), q = x / d rounded to nearest (halves away from zero),
 * clamped to [-127, 127]. Deterministic (no dependence on the rounding mode or the CPU).
 * Inputs should be finite; a NaN quantizes to 0 and an infinite max gives d = inf. */
void quantize_row_q8k(const float *restrict x, BlockQ8K *restrict y, int64_t n);

/* Dot product of one weight row (n weights of the type, n a multiple of 256) with one
 * quantized activation row of n / 256 blocks. */
typedef float (*Int8DotFn)(const void *restrict w, const BlockQ8K *restrict x, int64_t n);

/* R weight rows (row_bytes apart, n weights each) times T activation rows (x_stride_blocks
 * blocks apart, n / 256 blocks each): out[t * out_stride + r] = dot(row r, token t) for
 * r < R, t < T, each bit-identical to the single dot whatever R and T (the kernels work on
 * tiles of rows x up to 8 tokens so a row is decoded once per tile). Weights need 2-byte
 * alignment, activations 4-byte; nothing more. */
typedef void (*Int8DotRowsFn)(const void *restrict w, size_t row_bytes, int64_t R, const BlockQ8K *restrict x,
                              int64_t x_stride_blocks, int64_t T, float *restrict out, int64_t out_stride, int64_t n);

/* Kernel variants. */
typedef enum QuantInt8Isa {
        QUANT_INT8_SCALAR = 0,     /* portable C: the reference */
        QUANT_INT8_AVX2,           /* x86-64 AVX2 (quant_isa_supported(QUANT_ISA_AVX2)) */
        QUANT_INT8_AVX512,         /* AVX-512 F/BW/VL/DQ (quant_isa_supported(QUANT_ISA_AVX512)), vpmaddubsw */
        QUANT_INT8_AVX512_VNNI,    /* the same plus AVX512_VNNI (vpdpbusd, vpdpwssd) */
        QUANT_INT8_ISA_COUNT_,
} QuantInt8Isa;

typedef struct QuantInt8Kernels {
        const char *name;        /* the weight type's name ("Q4_K") */
        uint32_t type;           /* its ggml type id */
        QuantInt8Isa isa;        /* the variant chosen for this CPU: the best of quant_best_isa()'s family */
        Int8DotFn dot;           /* that variant's kernels */
        Int8DotRowsFn dot_rows;
        /* Every variant, for tests and benchmarks: NULL where this CPU (or build) cannot run it. */
        Int8DotFn dot_variant[QUANT_INT8_ISA_COUNT_];
        Int8DotRowsFn dot_rows_variant[QUANT_INT8_ISA_COUNT_];
} QuantInt8Kernels;

/* The int8 kernels of a weight type, NULL for types without an int8 path. The first call
 * chooses the variants (thread-safe); every later call returns the same table. */
const QuantInt8Kernels *quant_int8(uint32_t ggml_type);
/* Whether this CPU and build can run the variants of isa. */
int quant_int8_isa_supported(QuantInt8Isa isa);
const char *quant_int8_isa_name(QuantInt8Isa isa);

/* fp16 to float without branches on the common path, equal to fp16_to_fp32() for all 65536
 * halves (NaN payloads included). Used by every variant's float part. */
static inline float quant_int8_half(ggml_half h) {
        const uint32_t sign = (uint32_t)(h & 0x8000) << 16, em = h & 0x7fffu;
        uint32_t bits = em << 13;
        float f;
        memcpy(&f, &bits, 4);
        f *= 0x1p112f; /* exact for normal and subnormal halves */
        memcpy(&bits, &f, 4);
        if (em >= 0x7c00)
                bits = 0x7f800000u | (em << 13); /* inf / NaN, payload kept */
        bits |= sign;
        memcpy(&f, &bits, 4);
        return f;
}
