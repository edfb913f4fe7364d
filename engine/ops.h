/* engine/ops.h — the leaf math of the forward pass: dot products, matrix products over
 * quantized weights, RMSNorm, softmax, RoPE, SiLU. Pure functions; any thread. */
#pragma once
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
/* out = x / sqrt(mean(x^2) + eps) * weight, length n (out may alias x). */
void rmsnorm(float *out, const float *x, const float *weight, int64_t n, float eps);
/* log softmax(logits)[index], computed in double. */
double log_softmax_at(const float *logits, uint32_t n, int32_t index);
/* In-place softmax over n values. */
void softmax(float *x, int64_t n);
/* Rotate adjacent pairs (x[2i], x[2i+1]) of each of n_heads heads by pos * inv_freq[i]. */
void rope(float *x, uint32_t n_heads, uint32_t head_dim, int64_t pos, const double *inv_freq);
static inline float silu(float x) {
        return x / (1.0f + __builtin_expf(-x));
}
