/* engine/ops.c — leaf math kernels (see ops.h). SIMD variants are compiled with target
 * attributes and chosen at first use; the scalar version is the reference. */
#include "ops.h"

#include <float.h>
#include <math.h>
#include <string.h>

#include "quant.h"

/* dot_f32's kernels live in quant_simd.c beside the fused dequantize+dot kernels that must
 * reproduce their accumulation order; the instruction set is the one quant_best_isa()
 * chose, so dot_f32 and the quantized kernels always agree. */
static DotF32Fn dot_impl;
static DotManyFn dot_many_impl; /* NULL: dot_f32 per pair */

static void ops_init(void) {
        /* Benign race: every thread stores the same pointers (dot_impl last: it says "done"). */
        const QuantIsa isa = quant_best_isa();
        __atomic_store_n(&dot_many_impl, isa == QUANT_ISA_SCALAR ? NULL : quant_simd_dot_f32_many(isa),
                         __ATOMIC_RELEASE);
        __atomic_store_n(&dot_impl, quant_dot_f32_variant(isa), __ATOMIC_RELEASE);
}

float dot_f32(const float *a, const float *b, int64_t n) {
        DotF32Fn f = __atomic_load_n(&dot_impl, __ATOMIC_ACQUIRE);
        if (!f) {
                ops_init();
                f = __atomic_load_n(&dot_impl, __ATOMIC_ACQUIRE);
        }
        return f(a, b, n);
}

void dot_f32_many(const float *q, uint32_t n_q, const float *k, int64_t k_stride, int64_t n_k, const float *prefetch,
                  int64_t n, float scale, float *scores, int64_t ld) {
        if (!__atomic_load_n(&dot_impl, __ATOMIC_ACQUIRE))
                ops_init();
        const DotManyFn f = __atomic_load_n(&dot_many_impl, __ATOMIC_ACQUIRE);
        if (f) {
                f(q, n_q, k, k_stride, n_k, prefetch, n, scale, scores, ld);
                return;
        }
        for (int64_t i = 0; i < n_k; i++)
                for (uint32_t g = 0; g < n_q; g++)
                        scores[g * ld + i] = dot_f32(q + (size_t)g * n, k + i * k_stride, n) * scale;
}

/* The attention kernels of each KV type, chosen once (F32, F16, Q8_0 by ggml id). */
#define KV_TYPE_SLOTS (GGML_TYPE_Q8_0 + 1)
static KVDotFn kv_dot_impl[KV_TYPE_SLOTS];
static KVAxpyFn kv_axpy_impl[KV_TYPE_SLOTS];

static void kv_kernels_init(uint32_t type) {
        /* Benign race: every thread stores the same pointers (the dot kernel last: it says "done"). */
        const QuantIsa isa = quant_best_isa();
        __atomic_store_n(&kv_axpy_impl[type], quant_kv_axpy_variant(type, isa), __ATOMIC_RELEASE);
        __atomic_store_n(&kv_dot_impl[type], quant_kv_dot_variant(type, isa), __ATOMIC_RELEASE);
}

void attn_dot_many(uint32_t type, const float *q, uint32_t n_q, const void *k, size_t k_stride, int64_t n_k,
                   const void *prefetch, int64_t n, float scale, float *scores, int64_t ld) {
        KVDotFn f = __atomic_load_n(&kv_dot_impl[type], __ATOMIC_ACQUIRE);
        if (!f) {
                kv_kernels_init(type);
                f = __atomic_load_n(&kv_dot_impl[type], __ATOMIC_ACQUIRE);
        }
        f(q, n_q, k, k_stride, n_k, prefetch, n, scale, scores, ld);
}

void attn_axpy_many(uint32_t type, float *out, uint32_t n_q, const float *p, int64_t ld, const void *v,
                    size_t v_stride, int64_t n_k, int64_t n) {
        if (!__atomic_load_n(&kv_dot_impl[type], __ATOMIC_ACQUIRE))
                kv_kernels_init(type);
        __atomic_load_n(&kv_axpy_impl[type], __ATOMIC_ACQUIRE)(out, n_q, p, ld, v, v_stride, n_k, n);
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

#if defined(__x86_64__)
/* axpy_many for n = 16 * NV: two heads' outputs stay in registers over all the rows; each
 * element still gets y + (p * v) row by row, a multiply then an add, as axpy. */
__attribute__((target("avx512f"), always_inline)) static inline void axpy_many_nv(float *out, uint32_t n_q,
                                                                                  const float *p, int64_t ld,
                                                                                  const float *v, int64_t v_stride,
                                                                                  int64_t n_k, const int NV) {
        for (uint32_t g0 = 0; g0 < n_q; g0 += 2) {
                const uint32_t ng = n_q - g0 < 2 ? 1 : 2;
                __m512 acc[2][8];
                for (uint32_t h = 0; h < ng; h++)
                        _Pragma("GCC unroll 8") for (int u = 0; u < NV; u++)
                                acc[h][u] = _mm512_loadu_ps(out + (size_t)(g0 + h) * 16 * NV + 16 * u);
                for (int64_t i = 0; i < n_k; i++) {
                        const float *vr = v + i * v_stride;
                        for (uint32_t h = 0; h < ng; h++) {
                                const __m512 a = _mm512_set1_ps(p[(g0 + h) * ld + i]);
                                _Pragma("GCC unroll 8") for (int u = 0; u < NV; u++)
                                        acc[h][u] = _mm512_add_ps(acc[h][u], _mm512_mul_ps(a, _mm512_loadu_ps(vr + 16 * u)));
                        }
                }
                for (uint32_t h = 0; h < ng; h++)
                        _Pragma("GCC unroll 8") for (int u = 0; u < NV; u++)
                                _mm512_storeu_ps(out + (size_t)(g0 + h) * 16 * NV + 16 * u, acc[h][u]);
        }
}

__attribute__((target("avx512f"))) static int axpy_many_avx512(float *out, uint32_t n_q, const float *p, int64_t ld,
                                                               const float *v, int64_t v_stride, int64_t n_k,
                                                               int64_t n) {
        switch (n) {
        case 128: axpy_many_nv(out, n_q, p, ld, v, v_stride, n_k, 8); return 1;
        case 64: axpy_many_nv(out, n_q, p, ld, v, v_stride, n_k, 4); return 1;
        case 32: axpy_many_nv(out, n_q, p, ld, v, v_stride, n_k, 2); return 1;
        default: return 0;
        }
}
#endif

/* Chosen by the CPU alone, not quant_best_isa(): a multiply then an add per element (no FMA
 * here, and the build has -ffp-contract=off) gives the same bits on every instruction set. */
void axpy_many(float *out, uint32_t n_q, const float *p, int64_t ld, const float *v, int64_t v_stride, int64_t n_k,
               int64_t n) {
#if defined(__x86_64__)
        static int have_avx512 = -1;
        if (have_avx512 < 0)
                __atomic_store_n(&have_avx512, __builtin_cpu_supports("avx512f") ? 1 : 0, __ATOMIC_RELAXED);
        if (__atomic_load_n(&have_avx512, __ATOMIC_RELAXED) && axpy_many_avx512(out, n_q, p, ld, v, v_stride, n_k, n))
                return;
#endif
        for (int64_t i = 0; i < n_k; i++)
                for (uint32_t g = 0; g < n_q; g++)
                        axpy(out + (size_t)g * n, p[g * ld + i], v + i * v_stride, n);
}

void rmsnorm(float *out, const float *x, const float *weight, int64_t n, float eps) {
        double ss = 0.0;
        for (int64_t i = 0; i < n; i++)
                ss += (double)x[i] * x[i];
        const float scale = (float)(1.0 / sqrt(ss / (double)n + (double)eps));
        for (int64_t i = 0; i < n; i++)
                out[i] = x[i] * scale * weight[i];
}

int all_finite(const float *x, size_t n) {
        /* |x| <= FLT_MAX is false for NaN and the infinities; no early exit, so it vectorizes */
        int ok = 1;
        for (size_t i = 0; i < n; i++)
                ok &= fabsf(x[i]) <= FLT_MAX;
        return ok;
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

double exp_shifted(float *x, int64_t n, float *ret_max) {
        float max = x[0];
        for (int64_t i = 1; i < n; i++)
                if (x[i] > max)
                        max = x[i];
        double sum = 0.0;
        for (int64_t i = 0; i < n; i++) {
                x[i] = expf(x[i] - max);
                sum += x[i];
        }
        *ret_max = max;
        return sum;
}

void softmax(float *x, int64_t n) {
        float max;
        const double sum = exp_shifted(x, n, &max);
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
