/* engine/quant_int8.h — the int8 matrix-product path (as llama.cpp's): activations are
 * quantized once per token to 8-bit blocks, then each weight row is dotted with them in
 * integer arithmetic, so the kernels are bound by memory bandwidth rather than by float
 * arithmetic. Every quantized weight type has an int8 path, paired with the activation
 * format that keeps it as accurate as ggml's pairing or better:
 *   K-quants (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K): BlockQ8K, one float scale per 256 activations
 *     (ggml's Q8_K);
 *   legacy 32-wide types (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0): BlockQ8X, one float scale per 32
 *     activations (ggml pairs them with Q8_0 / Q8_1, whose scales are fp16).
 * A 256-wide scale is not enough for the legacy types: one outlier (the first token's
 * hidden state has a few) flattens the other 255 values, and Q8_0 attn_k / attn_v then lose
 * more than llama.cpp does (the fixture's BOS logits moved by 1.5 against 0.06).
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
        float d;              /* scale: max |x| / 127, 0 for an all-zero block, NaN if x holds a NaN */
        int8_t qs[QK_K];      /* quants, -127..127 */
        int16_t bsums[QK_K / 16];
} BlockQ8K;
static_assert(sizeof(BlockQ8K) == 292, "Q8_K block size");
static_assert(offsetof(BlockQ8K, bsums) == 260, "Q8_K layout");

/* 256 activations in 8 blocks of 32, each with its own scale: x[i] ~= d[i / 32] * qs[i];
 * bsums as BlockQ8K's. The legacy types' activation format. */
typedef struct BlockQ8X {
        float d[8];           /* scale of activations 32j .. 32j + 31: their max |x| / 127 */
        int8_t qs[QK_K];      /* quants, -127..127 */
        int16_t bsums[QK_K / 16];
} BlockQ8X;
static_assert(sizeof(BlockQ8X) == 320, "Q8_X block size");
static_assert(offsetof(BlockQ8X, qs) == 32 && offsetof(BlockQ8X, bsums) == 288, "Q8_X layout");

/* The activation formats. */
typedef enum QuantAct {
        QUANT_ACT_Q8K = 0, /* BlockQ8K */
        QUANT_ACT_Q8X,     /* BlockQ8X */
        QUANT_ACT_COUNT_,
} QuantAct;

/* Quantize n floats (n a multiple of 256) into n / 256 blocks: per block d = max|x| / 127
 * (when that is 0 every quant is 0), q = x / d rounded to nearest (halves away from zero),
 * clamped to [-127, 127]. Deterministic (no dependence on the rounding mode or the CPU).
 * A block holding a NaN gets d = NaN (and quants 0), one with an infinity d = inf: a
 * non-finite activation makes the products it enters NaN, never a finite number. */
void quantize_row_q8k(const float *restrict x, BlockQ8K *restrict y, int64_t n);
/* The same with a scale per 32 floats (BlockQ8X). */
void quantize_row_q8x(const float *restrict x, BlockQ8X *restrict y, int64_t n);
/* n floats into n / 256 blocks of format act (dst: BlockQ8K or BlockQ8X). */
void quantize_row_act(QuantAct act, const float *restrict x, void *restrict dst, int64_t n);
/* Bytes of one activation block of format act (covering 256 activations). */
size_t quant_act_block_bytes(QuantAct act);

/* Dot product of one weight row (n weights of the type, n a multiple of 256) with one
 * quantized activation row of n / 256 blocks of the type's activation format. */
typedef float (*Int8DotFn)(const void *restrict w, const void *restrict x, int64_t n);

/* R weight rows (row_bytes apart, n weights each) times T activation rows (x_stride_blocks
 * blocks of the type's format apart, n / 256 blocks each): out[t * out_stride + r] =
 * dot(row r, token t) for r < R, t < T, each bit-identical to the single dot whatever R and
 * T (the kernels work on tiles of rows x up to 8 tokens so a row is decoded once per tile).
 * Weights need 2-byte alignment, activations 4-byte; nothing more. */
typedef void (*Int8DotRowsFn)(const void *restrict w, size_t row_bytes, int64_t R, const void *restrict x,
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
        QuantAct act;            /* the activation format its kernels take */
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
/* Whether this CPU and build can run the variants of isa (MIXD_ISA lowers it: see
 * quant_best_isa()). */
int quant_int8_isa_supported(QuantInt8Isa isa);
const char *quant_int8_isa_name(QuantInt8Isa isa);

/* The 6-bit scales sc[0..7] and mins m[0..7] of a Q4_K / Q5_K block (as quant.c). */
static inline void k4_scales(const uint8_t *q, int32_t sc[8], int32_t m[8]) {
        for (int j = 0; j < 8; j++) {
                if (j < 4) {
                        sc[j] = q[j] & 63;
                        m[j] = q[j + 4] & 63;
                } else {
                        sc[j] = (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4);
                        m[j] = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
                }
        }
}

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
