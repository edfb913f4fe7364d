/* engine/quant.h — ggml tensor types: block layouts, the traits table, dequantization
 * and dot kernels (scalar references in quant.c, AVX2/AVX-512 twins in quant_simd.c,
 * chosen once per process). Pure functions; any thread. */
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
/* Fused dequantize-and-dot of R consecutive weight rows (row_bytes apart, n weights each)
 * with T activation rows: out[t * out_stride + r] = dot_f32(dequant(row r), x + t * x_stride, n)
 * for r < R, t < T, bit for bit (the same per-lane accumulation order as this machine's
 * dot_f32), whatever R and T. */
typedef void (*DotRowsFn)(const void *restrict w, uint64_t row_bytes, int64_t R, const float *restrict x,
                          int64_t x_stride, int64_t T, float *restrict out, int64_t out_stride, int64_t n);
/* The dot_f32 kernel signature (see ops.h for the contract). */
typedef float (*DotF32Fn)(const float *a, const float *b, int64_t n);
/* Several queries against a run of keys, bit for bit (see ops.h dot_f32_many):
 * out[g * out_ld + i] = dot_f32(q + g * n, k + i * k_stride, n) * scale for g < n_q, i < n_k;
 * prefetch: NULL, or rows laid out as k's to bring into L2 on the way. */
typedef void (*DotManyFn)(const float *q, uint32_t n_q, const float *k, int64_t k_stride, int64_t n_k,
                          const float *prefetch, int64_t n, float scale, float *out, int64_t out_ld);

/* Attention over KV cache rows stored as a KV type (kv.h: F32, F16 or Q8_0), strides in
 * bytes, each row decoded exactly (kv_decode) on the way:
 * KVDotFn:  out[g * out_ld + i] = dot_f32(q + g * n, decode(k + i * k_stride), n) * scale for
 *           g < n_q, i < n_k, bit for bit with the dot_f32 of the same instruction set; the
 *           rows at prefetch (laid out as k's) are brought into L2 on the way (may be NULL);
 * KVAxpyFn: out + g * n gets y[j] = y[j] + p[g * ld + i] * decode(v + i * v_stride)[j] (a
 *           multiply then an add) for i = 0, 1, ... in that order: the same bits on every
 *           instruction set.
 * Each row is read once for all n_q heads where the kernel can; n: the head size. */
typedef void (*KVDotFn)(const float *q, uint32_t n_q, const void *k, size_t k_stride, int64_t n_k,
                        const void *prefetch, int64_t n, float scale, float *out, int64_t out_ld);
typedef void (*KVAxpyFn)(float *out, uint32_t n_q, const float *p, int64_t ld, const void *v, size_t v_stride,
                         int64_t n_k, int64_t n);

typedef struct QuantTraits {
        const char *name;
        uint32_t block_size;   /* weights per block */
        uint32_t type_size;    /* bytes per block */
        DequantFn dequant;     /* the one to use: fastest for this CPU, bit-identical to dequant_ref */
        VecDotFn vec_dot;      /* scalar reference: per-block sums (not dot_f32's order) */
        DequantFn dequant_ref; /* scalar reference, reproduces ggml bit for bit */
        DotRowsFn dot_rows;    /* fused dequant + dot_f32 for this CPU; NULL: dequant then dot_f32 */
} QuantTraits;

/* NULL for ids we do not support. The first call selects the kernels for this CPU
 * (thread-safe); every later call returns the same table. */
const QuantTraits *quant_traits(uint32_t type);

/* Bytes of a row of n weights; -EINVAL if n is not a multiple of the block size,
 * -EOVERFLOW on overflow. */
int quant_row_bytes(uint32_t type, uint64_t n, uint64_t *ret_bytes);
/* 0 if the n weights at data (n a multiple of the block size) hold no infinity or NaN among
 * their floats: every value of F32/F16/BF16, every block's fp16 scale (and minimum) of the
 * quantized types (their quants are integers). -EBADMSG otherwise, with *ret_index the first
 * weight of the first bad block; -EINVAL for an unsupported type or n. Reads only the
 * scales, but they sit in every block: the whole tensor is paged in. */
int quant_check_finite(uint32_t type, const void *data, uint64_t n, uint64_t *ret_index);

/* ---------------------------------------------------------------------------------------
 * Kernel variants by instruction set. Every variant of a kernel gives the same bits as its
 * scalar reference (dequantizers) or as dot_f32 of the same instruction set (fused dots).
 * Tests and benchmarks call them directly; everything else uses quant_traits() and
 * dot_f32(), which use quant_best_isa(). */
typedef enum QuantIsa {
        QUANT_ISA_SCALAR = 0, /* portable C */
        QUANT_ISA_AVX2,       /* x86-64 AVX2 + FMA + F16C */
        QUANT_ISA_AVX512,     /* x86-64 AVX-512 F/BW/VL/DQ + F16C */
        QUANT_ISA_COUNT_,
} QuantIsa;

/* The best instruction set this CPU (and this build) supports, decided once; the
 * environment variable MIXD_ISA (scalar, avx2, avx512, avx512vnni) caps it, so tests and
 * benchmarks can run every variant on one CPU (quant_isa_env()). */
QuantIsa quant_best_isa(void);
/* MIXD_ISA as a level, 0 scalar .. 3 avx512vnni, into *ret_level: 1 when it is set, 0 when
 * it is not (*ret_level = 3), -EINVAL for a name not in the list (ignored by the kernels'
 * choice; the caller may say so). */
int quant_isa_env(int *ret_level);
/* Whether this CPU and build can run kernels of isa. */
int quant_isa_supported(QuantIsa isa);
const char *quant_isa_name(QuantIsa isa);
/* The dequantizer of type for isa: the SIMD one if there is one, else the scalar reference;
 * NULL for an unsupported type or an isa this CPU cannot run. */
DequantFn quant_dequant_variant(uint32_t type, QuantIsa isa);
/* The fused dequant + dot of type for isa (consistent with quant_dot_f32_variant(isa)),
 * NULL if there is none or the CPU cannot run it. */
DotRowsFn quant_dot_rows_variant(uint32_t type, QuantIsa isa);
/* dot_f32 of isa (the scalar one is the portable reference); NULL if the CPU cannot run it. */
DotF32Fn quant_dot_f32_variant(QuantIsa isa);

/* The attention kernels of a KV type (GGML_TYPE_F32, F16, Q8_0) for isa (the scalar ones are
 * the portable references); NULL for another type or an isa the CPU cannot run. */
KVDotFn quant_kv_dot_variant(uint32_t type, QuantIsa isa);
KVAxpyFn quant_kv_axpy_variant(uint32_t type, QuantIsa isa);

/* Implemented in quant_simd.c, for quant.c: the SIMD kernels of isa, NULL where none. */
DequantFn quant_simd_dequant(uint32_t type, QuantIsa isa);
DotRowsFn quant_simd_dot_rows(uint32_t type, QuantIsa isa);
DotF32Fn quant_simd_dot_f32(QuantIsa isa);
/* The DotManyFn in exactly quant_simd_dot_f32(isa)'s order; NULL where there is none. */
DotManyFn quant_simd_dot_f32_many(QuantIsa isa);
KVDotFn quant_simd_kv_dot(uint32_t type, QuantIsa isa);
KVAxpyFn quant_simd_kv_axpy(uint32_t type, QuantIsa isa);
/* Whether the CPU has what quant_simd.c's kernels of isa need (0 on other architectures). */
int quant_simd_cpu_has(QuantIsa isa);
/* The portable dot_f32 (8 float accumulators), in quant.c. */
float quant_dot_f32_scalar(const float *a, const float *b, int64_t n);
/* The portable KV value sums, in quant.c (also the SIMD variants' fallback for head sizes
 * their register kernels do not cover): per key i, each row decoded (kv_decode), then
 * out[g][j] += p[g * ld + i] * row[j], a multiply and an add per number, key after key. */
void quant_kv_axpy_scalar(float *out, uint32_t n_q, const float *p, int64_t ld, const void *v, size_t v_stride,
                          int64_t n_k, int64_t n, uint32_t type);

/* The 16 six-bit Q3_K scales (stored in 12 bytes) as signed values (-32..31). */
void quant_q3_k_scales(const uint8_t packed[12], int8_t out[16]);

float fp16_to_fp32(ggml_half h);
ggml_half fp32_to_fp16(float f);
float bf16_to_fp32(uint16_t h);
