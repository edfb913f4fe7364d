/* engine/quant.h — ggml tensor types: block layouts, the traits table, dequantization
 * and dot kernels (scalar references). Pure functions; any thread. */
#pragma once
#include <assert.h>
#include <stddef.h>
#include <stdint.h>

/* ggml type ids as stored in GGUF tensor infos. */
typedef enum GGMLType {
        GGML_TYPE_F32 = 0,
        GGML_TYPE_F16 = 1,
        GGML_TYPE_Q4_0 = 2,
        GGML_TYPE_Q4_1 = 3,
        GGML_TYPE_Q5_0 = 6,
        GGML_TYPE_Q5_1 = 7,
        GGML_TYPE_Q8_0 = 8,
        GGML_TYPE_Q8_1 = 9,
        GGML_TYPE_Q2_K = 10,
        GGML_TYPE_Q3_K = 11,
        GGML_TYPE_Q4_K = 12,
        GGML_TYPE_Q5_K = 13,
        GGML_TYPE_Q6_K = 14,
        GGML_TYPE_Q8_K = 15,
        GGML_TYPE_BF16 = 30,
        GGML_TYPE_COUNT_ = 40,
} GGMLType;

typedef uint16_t ggml_half; /* IEEE binary16 bits */

#define QK4_0 32
#define QK4_1 32
#define QK5_0 32
#define QK5_1 32
#define QK8_0 32
#define QK_K 256
#define K_SCALE_SIZE 12

/* Q4_0: 32 weights = d * (q - 8), q in 0..15 */
typedef struct {
        ggml_half d;           /* scale */
        uint8_t qs[QK4_0 / 2]; /* low nibbles: weights 0..15, high nibbles: 16..31 */
} BlockQ4_0;
static_assert(sizeof(BlockQ4_0) == 18, "Q4_0 block size");

/* Q4_1: 32 weights = d * q + m */
typedef struct {
        ggml_half d;           /* scale */
        ggml_half m;           /* minimum */
        uint8_t qs[QK4_1 / 2]; /* nibbles as in Q4_0 */
} BlockQ4_1;
static_assert(sizeof(BlockQ4_1) == 20, "Q4_1 block size");

/* Q5_0: 32 weights = d * (q - 16), q 5 bits */
typedef struct {
        ggml_half d;           /* scale */
        uint8_t qh[4];         /* 5th bit of each weight, bit j = weight j */
        uint8_t qs[QK5_0 / 2]; /* low 4 bits, nibbles as in Q4_0 */
} BlockQ5_0;
static_assert(sizeof(BlockQ5_0) == 22, "Q5_0 block size");

/* Q5_1: 32 weights = d * q + m, q 5 bits */
typedef struct {
        ggml_half d;           /* scale */
        ggml_half m;           /* minimum */
        uint8_t qh[4];         /* 5th bits */
        uint8_t qs[QK5_1 / 2]; /* low 4 bits */
} BlockQ5_1;
static_assert(sizeof(BlockQ5_1) == 24, "Q5_1 block size");

/* Q8_0: 32 weights = d * q, q int8 */
typedef struct {
        ggml_half d;       /* scale */
        int8_t qs[QK8_0];  /* quants */
} BlockQ8_0;
static_assert(sizeof(BlockQ8_0) == 34, "Q8_0 block size");

/* Q2_K: 256 weights in 16 groups of 16; w = d*sc*q - dmin*m, q 2 bits */
typedef struct {
        uint8_t scales[QK_K / 16]; /* per group: low nibble scale, high nibble min */
        uint8_t qs[QK_K / 4];      /* 2-bit quants, 4 per byte */
        ggml_half d;               /* super-block scale for scales */
        ggml_half dmin;            /* super-block scale for mins */
} BlockQ2_K;
static_assert(sizeof(BlockQ2_K) == 84, "Q2_K block size");

/* Q3_K: 256 weights in 16 groups of 16; w = d*(sc-32)*(q - 4*!hbit), q 2+1 bits */
typedef struct {
        uint8_t hmask[QK_K / 8];   /* high bit of each quant */
        uint8_t qs[QK_K / 4];      /* low 2 bits */
        uint8_t scales[12];        /* 16 6-bit scales, packed */
        ggml_half d;               /* super-block scale */
} BlockQ3_K;
static_assert(sizeof(BlockQ3_K) == 110, "Q3_K block size");

/* Q4_K: 256 weights in 8 groups of 32; w = d*sc*q - dmin*m, q 4 bits, sc/m 6 bits */
typedef struct {
        ggml_half d;                  /* super-block scale for scales */
        ggml_half dmin;               /* super-block scale for mins */
        uint8_t scales[K_SCALE_SIZE]; /* 8 scales + 8 mins, 6 bits each, packed */
        uint8_t qs[QK_K / 2];         /* 4-bit quants */
} BlockQ4_K;
static_assert(sizeof(BlockQ4_K) == 144, "Q4_K block size");

/* Q5_K: as Q4_K with a 5th bit per quant */
typedef struct {
        ggml_half d;                  /* super-block scale for scales */
        ggml_half dmin;               /* super-block scale for mins */
        uint8_t scales[K_SCALE_SIZE]; /* packed 6-bit scales and mins */
        uint8_t qh[QK_K / 8];         /* 5th bits */
        uint8_t qs[QK_K / 2];         /* low 4 bits */
} BlockQ5_K;
static_assert(sizeof(BlockQ5_K) == 176, "Q5_K block size");

/* Q6_K: 256 weights in 16 groups of 16; w = d*sc*(q - 32), q 6 bits, sc int8 */
typedef struct {
        uint8_t ql[QK_K / 2];      /* low 4 bits */
        uint8_t qh[QK_K / 4];      /* high 2 bits */
        int8_t scales[QK_K / 16];  /* 8-bit group scales */
        ggml_half d;               /* super-block scale */
} BlockQ6_K;
static_assert(sizeof(BlockQ6_K) == 210, "Q6_K block size");

/* Dequantize n weights (n a multiple of the block size) from row x into y. */
typedef void (*DequantFn)(const void *restrict x, float *restrict y, int64_t n);
/* Dot product of n weights at w with float activations a. */
typedef float (*VecDotFn)(const void *restrict w, const float *restrict a, int64_t n);

typedef struct QuantTraits {
        const char *name;
        uint32_t block_size; /* weights per block */
        uint32_t type_size;  /* bytes per block */
        DequantFn dequant;
        VecDotFn vec_dot;
} QuantTraits;

/* NULL for ids we do not support. */
const QuantTraits *quant_traits(uint32_t type);

/* Bytes of a row of n weights; -EINVAL if n is not a multiple of the block size,
 * -EOVERFLOW on overflow. */
int quant_row_bytes(uint32_t type, uint64_t n, uint64_t *ret_bytes);

float fp16_to_fp32(ggml_half h);
ggml_half fp32_to_fp16(float f);
float bf16_to_fp32(uint16_t h);
