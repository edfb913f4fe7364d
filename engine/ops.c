/* engine/ops.c — leaf math kernels (see ops.h). SIMD variants are compiled with target
 * attributes and chosen at first use; the scalar version is the reference. */
#include "ops.h"

#include <math.h>
#include <string.h>

#include "quant.h"

/* dot_f32's kernels live in quant_simd.c beside the fused dequantize+dot kernels that must
 * reproduce their accumulation order; the instruction set is the one quant_best_isa()
 * chose, so dot_f32 and the quantized kernels always agree. */
static DotF32Fn dot_impl;

static void ops_init(void) {
        /* Benign race: every thread stores the same pointer. */
        __atomic_store_n(&dot_impl, quant_dot_f32_variant(quant_best_isa()), __ATOMIC_RELEASE);
}

float dot_f32(const float *a, const float *b, int64_t n) {
        DotF32Fn f = __atomic_load_n(&dot_impl, __ATOMIC_ACQUIRE);
        if (!f) {
                ops_init();
                f = __atomic_load_n(&dot_impl, __ATOMIC_ACQUIRE);
        }
        return f(a, b, n);
}

const char *ops_kernel_name(void) {
        return quant_isa_name(quant_best_isa());
}

void matmul_rows(const Matrix *w, const float *x, int64_t T, float *out, int64_t out_stride, uint64_t r0, uint64_t r1,
                 float *row_tmp) {
        const QuantTraits *qt = quant_traits(w->type);
        const int64_t cols = (int64_t)w->cols;
        if (qt->dot_rows && r1 > r0) {
                /* fused dequantize + dot: the same bits as the loop below, without the row buffer */
                qt->dot_rows(w->data + r0 * w->row_bytes, w->row_bytes, (int64_t)(r1 - r0), x, cols, T, out + r0,
                             out_stride, cols);
                return;
        }
        for (uint64_t r = r0; r < r1; r++) {
                const uint8_t *row = w->data + r * w->row_bytes;
                const float *wr;
                if (w->type == GGML_TYPE_F32) {
                        wr = (const float *)row; /* GGUF data is 32-byte aligned; rows of floats stay 4-aligned */
                } else {
                        qt->dequant(row, row_tmp, cols);
                        wr = row_tmp;
                }
                for (int64_t t = 0; t < T; t++)
                        out[t * out_stride + (int64_t)r] = dot_f32(wr, x + t * cols, cols);
        }
}


static void axpy_scalar(float *restrict y, float a, const float *restrict x, int64_t n) {
        for (int64_t i = 0; i < n; i++)
                y[i] += a * x[i];
}

#if defined(__x86_64__)
#include <immintrin.h>
/* A multiply then an add per element, as the scalar loop: the same bits. */
__attribute__((target("avx2"))) static void axpy_avx2(float *restrict y, float a, const float *restrict x, int64_t n) {
        const __m256 va = _mm256_set1_ps(a);
        int64_t i = 0;
        for (; i + 8 <= n; i += 8)
                _mm256_storeu_ps(y + i, _mm256_add_ps(_mm256_loadu_ps(y + i), _mm256_mul_ps(va, _mm256_loadu_ps(x + i))));
        axpy_scalar(y + i, a, x + i, n - i);
}
#endif

void axpy(float *restrict y, float a, const float *restrict x, int64_t n) {
#if defined(__x86_64__)
        static int have_avx2 = -1;
        if (have_avx2 < 0)
                __atomic_store_n(&have_avx2, __builtin_cpu_supports("avx2") ? 1 : 0, __ATOMIC_RELAXED);
        if (__atomic_load_n(&have_avx2, __ATOMIC_RELAXED)) {
                axpy_avx2(y, a, x, n);
                return;
        }
#endif
        axpy_scalar(y, a, x, n);
}

void rmsnorm(float *out, const float *x, const float *weight, int64_t n, float eps) {
        double ss = 0.0;
        for (int64_t i = 0; i < n; i++)
                ss += (double)x[i] * x[i];
        const float scale = (float)(1.0 / sqrt(ss / (double)n + (double)eps));
        for (int64_t i = 0; i < n; i++)
                out[i] = x[i] * scale * weight[i];
}

double log_softmax_at(const float *logits, uint32_t n, int32_t index) {
        float max = logits[0];
        for (uint32_t i = 1; i < n; i++)
                if (logits[i] > max)
                        max = logits[i];
        double sum = 0.0;
        for (uint32_t i = 0; i < n; i++)
                sum += exp((double)logits[i] - max);
        return (double)logits[index] - max - log(sum);
}

void softmax(float *x, int64_t n) {
        float max = x[0];
        for (int64_t i = 1; i < n; i++)
                if (x[i] > max)
                        max = x[i];
        double sum = 0.0;
        for (int64_t i = 0; i < n; i++) {
                x[i] = expf(x[i] - max);
                sum += x[i];
        }
        const float inv = (float)(1.0 / sum);
        for (int64_t i = 0; i < n; i++)
                x[i] *= inv;
}

void rope(float *x, uint32_t n_heads, uint32_t head_dim, int64_t pos, const double *inv_freq) {
        for (uint32_t i = 0; i < head_dim / 2; i++) {
                const double angle = (double)pos * inv_freq[i];
                const float c = (float)cos(angle), s = (float)sin(angle);
                for (uint32_t h = 0; h < n_heads; h++) {
                        float *p = x + (uint64_t)h * head_dim + 2 * i;
                        const float x0 = p[0], x1 = p[1];
                        p[0] = x0 * c - x1 * s;
                        p[1] = x0 * s + x1 * c;
                }
        }
}
