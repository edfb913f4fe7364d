/* engine/ops.c — leaf math kernels (see ops.h). SIMD variants are compiled with target
 * attributes and chosen at first use; the scalar version is the reference. */
#include "ops.h"

#include <math.h>
#include <string.h>

#include "quant.h"

static float dot_f32_scalar(const float *a, const float *b, int64_t n) {
        float acc[8] = { 0 };
        int64_t i = 0;
        for (; i + 8 <= n; i += 8)
                for (int j = 0; j < 8; j++)
                        acc[j] += a[i + j] * b[i + j];
        float s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
        for (; i < n; i++)
                s += a[i] * b[i];
        return s;
}

#if defined(__x86_64__)
#include <immintrin.h>

__attribute__((target("avx2,fma"))) static float dot_f32_avx2(const float *a, const float *b, int64_t n) {
        __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
        int64_t i = 0;
        for (; i + 16 <= n; i += 16) {
                s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
                s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
        }
        for (; i + 8 <= n; i += 8)
                s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
        s0 = _mm256_add_ps(s0, s1);
        __m128 h = _mm_add_ps(_mm256_castps256_ps128(s0), _mm256_extractf128_ps(s0, 1));
        h = _mm_add_ps(h, _mm_movehl_ps(h, h));
        h = _mm_add_ss(h, _mm_movehdup_ps(h));
        float s = _mm_cvtss_f32(h);
        for (; i < n; i++)
                s += a[i] * b[i];
        return s;
}

__attribute__((target("avx512f"))) static float dot_f32_avx512(const float *a, const float *b, int64_t n) {
        __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
        int64_t i = 0;
        for (; i + 32 <= n; i += 32) {
                s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
                s1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), s1);
        }
        for (; i + 16 <= n; i += 16)
                s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
        float s = _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
        for (; i < n; i++)
                s += a[i] * b[i];
        return s;
}
#endif

typedef float (*DotFn)(const float *, const float *, int64_t);
static DotFn dot_impl;
static const char *dot_name;

static void ops_init(void) {
        dot_impl = dot_f32_scalar;
        dot_name = "scalar";
#if defined(__x86_64__)
        __builtin_cpu_init();
        if (__builtin_cpu_supports("avx512f")) {
                dot_impl = dot_f32_avx512;
                dot_name = "avx512";
        } else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
                dot_impl = dot_f32_avx2;
                dot_name = "avx2";
        }
#endif
}

float dot_f32(const float *a, const float *b, int64_t n) {
        /* Benign race: every thread computes the same pointers. */
        DotFn f = __atomic_load_n(&dot_impl, __ATOMIC_ACQUIRE);
        if (!f) {
                ops_init();
                f = dot_impl;
        }
        return f(a, b, n);
}

const char *ops_kernel_name(void) {
        if (!dot_impl)
                ops_init();
        return dot_name;
}

void matmul_rows(const Matrix *w, const float *x, int64_t T, float *out, int64_t out_stride, uint64_t r0, uint64_t r1,
                 float *row_tmp) {
        const QuantTraits *qt = quant_traits(w->type);
        const int64_t cols = (int64_t)w->cols;
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

void matmul(const Matrix *w, const float *x, int64_t T, float *out, float *row_tmp) {
        matmul_rows(w, x, T, out, (int64_t)w->rows, 0, w->rows, row_tmp);
}

void rmsnorm(float *out, const float *x, const float *weight, int64_t n, float eps) {
        double ss = 0.0;
        for (int64_t i = 0; i < n; i++)
                ss += (double)x[i] * x[i];
        const float scale = (float)(1.0 / sqrt(ss / (double)n + (double)eps));
        for (int64_t i = 0; i < n; i++)
                out[i] = x[i] * scale * weight[i];
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
