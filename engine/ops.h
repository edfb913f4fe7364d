/* engine/ops.h — the leaf math of the forward pass: dot products, matrix products over
 * quantized weights, RMSNorm, softmax, RoPE, SiLU. Pure functions; any thread. */
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "model.h"

/* Dot product of two float vectors of length n. Chosen once per process by CPU features
 * (AVX-512, AVX2+FMA or scalar); the same machine always gives the same bits. */
float dot_f32(const float *a, const float *b, int64_t n);
const char *ops_kernel_name(void);

/* out[t][r] = W[r] . x[t] for rows r in [r0, r1) and t < T.
 * W: [rows][cols]; x: [T][cols]; out: [T][out_stride]; row_tmp: scratch of cols floats. */
void matmul_rows(const Matrix *w, const float *x, int64_t T, float *out, int64_t out_stride, uint64_t r0, uint64_t r1,
                 float *row_tmp);

/* y[i] += a * x[i] (elementwise: vectorizing it never changes a result). */
void axpy(float *restrict y, float a, const float *restrict x, int64_t n);

/* Attention's two halves for the n_q query heads that share one KV head, over a run of n_k
 * key (value) rows k_stride (v_stride) floats apart; n: head dimension.
 * dot_f32_many: scores[g * ld + i] = dot_f32(q + g * n, k + i * k_stride, n) * scale, the same
 *   bits as that call; meanwhile the rows at prefetch (laid out as k's: the values, which
 *   are read next) are brought into L2 where the CPU allows it (prefetch may be NULL);
 * axpy_many: out + g * n gets axpy(.., p[g * ld + i], v + i * v_stride, n) for i = 0, 1, ...
 *   in that order, the same bits as those calls.
 * Each key and value row is read once for all heads. */
void dot_f32_many(const float *q, uint32_t n_q, const float *k, int64_t k_stride, int64_t n_k, const float *prefetch,
                  int64_t n, float scale, float *scores, int64_t ld);
void axpy_many(float *out, uint32_t n_q, const float *p, int64_t ld, const float *v, int64_t v_stride, int64_t n_k,
               int64_t n);
/* The same two halves over KV cache rows stored as `type` (kv.h: GGML_TYPE_F32, F16 or
 * Q8_0), strides in bytes: each row decoded exactly, then as dot_f32_many / axpy_many (see
 * quant.h KVDotFn / KVAxpyFn; the kernels of quant_best_isa()). */
void attn_dot_many(uint32_t type, const float *q, uint32_t n_q, const void *k, size_t k_stride, int64_t n_k,
                   const void *prefetch, int64_t n, float scale, float *scores, int64_t ld);
void attn_axpy_many(uint32_t type, float *out, uint32_t n_q, const float *p, int64_t ld, const void *v,
                    size_t v_stride, int64_t n_k, int64_t n);
/* out = x / sqrt(mean(x^2) + eps) * weight, length n (out may alias x). */
void rmsnorm(float *out, const float *x, const float *weight, int64_t n, float eps);
/* 1 if none of the n values is NaN or infinite. */
int all_finite(const float *x, size_t n);
/* log softmax(logits)[index], computed in double. */
double log_softmax_at(const float *logits, uint32_t n, int32_t index);
/* x[i] = expf(x[i] - max) in place over n >= 1 values; returns their sum (in double) and the
 * max in *ret_max: softmax without the division, for softmaxes merged block by block. */
double exp_shifted(float *x, int64_t n, float *ret_max);
/* In-place softmax over n values. */
void softmax(float *x, int64_t n);
/* Rotate adjacent pairs (x[2i], x[2i+1]) of each of n_heads heads by pos * inv_freq[i]. */
void rope(float *x, uint32_t n_heads, uint32_t head_dim, int64_t pos, const double *inv_freq);
static inline float silu(float x) {
        return x / (1.0f + __builtin_expf(-x));
}
