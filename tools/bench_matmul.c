/* tools/bench_matmul.c — developer benchmark (not part of the build or the tests):
 * single-thread throughput of matmul_rows on Mixtral-shaped quantized matrices
 * ([14336][4096] Q4_K, [4096][14336] Q6_K, T = 1 and 16 tokens), of every dequantizer
 * variant per type, of dot_f32, and the machine's single-thread read bandwidth.
 * Random weights with finite scales; best of several runs. Build and run:
 *   make MODE=rel build/rel/libmixengine.a
 *   cc -std=gnu17 -O2 -ffp-contract=off -iquote engine tools/bench_matmul.c \
 *      build/rel/libmixengine.a -lm -lpthread -o /tmp/bench_matmul
 *   taskset -c 0 /tmp/bench_matmul [quick]
 * Add -DBENCH_BASELINE to build against an engine without the variant API. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ops.h"
#include "quant.h"

static double now(void) {
        struct timespec ts;
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts); /* CPU time: robust to a busy machine */
        return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static uint64_t rng = 0x1234567;
static uint64_t rnd(void) {
        uint64_t z = (rng += 0x9e3779b97f4a7c15ull);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        return z ^ (z >> 31);
}
static float rndf(void) {
        return (float)((double)(rnd() >> 11) * 0x1.0p-53 * 2.0 - 1.0);
}

/* Offsets of the fp16 scales inside a block, -1 terminated. */
static void scale_offsets(uint32_t type, int off[3]) {
        off[0] = off[1] = off[2] = -1;
        switch (type) {
        case GGML_TYPE_Q4_0: case GGML_TYPE_Q5_0: case GGML_TYPE_Q8_0: off[0] = 0; break;
        case GGML_TYPE_Q4_1: case GGML_TYPE_Q5_1: case GGML_TYPE_Q4_K: case GGML_TYPE_Q5_K: off[0] = 0; off[1] = 2; break;
        case GGML_TYPE_Q2_K: off[0] = 80; off[1] = 82; break;
        case GGML_TYPE_Q3_K: off[0] = 108; break;
        case GGML_TYPE_Q6_K: off[0] = 208; break;
        default: break;
        }
}

/* Random quantized data of n weights with small finite scales. */
static uint8_t *random_weights(uint32_t type, uint64_t n, uint64_t *ret_bytes) {
        const QuantTraits *qt = quant_traits(type);
        uint64_t bytes = n / qt->block_size * qt->type_size;
        uint8_t *p = aligned_alloc(64, (bytes + 63) / 64 * 64);
        for (uint64_t i = 0; i < bytes; i += 8) {
                uint64_t r = rnd();
                memcpy(p + i, &r, bytes - i < 8 ? bytes - i : 8);
        }
        int off[3];
        scale_offsets(type, off);
        if (type == GGML_TYPE_F16 || type == GGML_TYPE_BF16) {
                for (uint64_t i = 0; i < n; i++) {
                        float f = rndf();
                        uint16_t h = type == GGML_TYPE_F16 ? fp32_to_fp16(f) : (uint16_t)0;
                        if (type == GGML_TYPE_BF16) {
                                uint32_t b;
                                memcpy(&b, &f, 4);
                                h = (uint16_t)(b >> 16);
                        }
                        memcpy(p + 2 * i, &h, 2);
                }
        } else {
                for (uint64_t b = 0; b < n / qt->block_size; b++)
                        for (int k = 0; k < 3 && off[k] >= 0; k++) {
                                ggml_half h = fp32_to_fp16(0.001f + 0.01f * (rndf() + 1.0f));
                                memcpy(p + b * qt->type_size + (uint64_t)off[k], &h, 2);
                        }
        }
        *ret_bytes = bytes;
        return p;
}

/* ---- read bandwidth: sum a 1 GiB float array ---- */
#if defined(__x86_64__)
#include <immintrin.h>
__attribute__((target("avx512f"))) static float sum_avx512(const float *a, size_t n) {
        __m512 s[8];
        for (int k = 0; k < 8; k++)
                s[k] = _mm512_setzero_ps();
        for (size_t i = 0; i + 128 <= n; i += 128)
                for (int k = 0; k < 8; k++)
                        s[k] = _mm512_add_ps(s[k], _mm512_load_ps(a + i + 16 * k));
        for (int k = 1; k < 8; k++)
                s[0] = _mm512_add_ps(s[0], s[k]);
        return _mm512_reduce_add_ps(s[0]);
}
#endif

static void bench_bandwidth(void) {
#if defined(__x86_64__)
        const size_t n = (size_t)1 << 28; /* 1 GiB */
        float *a = aligned_alloc(64, n * sizeof(float));
        for (size_t i = 0; i < n; i++)
                a[i] = (float)(i & 7);
        double best = 1e9;
        volatile float sink = 0;
        for (int rep = 0; rep < 5; rep++) {
                double t0 = now();
                sink += sum_avx512(a, n);
                double t = now() - t0;
                if (t < best)
                        best = t;
        }
        printf("read bandwidth (AVX-512 sum of a 1 GiB float array): %.1f GB/s\n", (double)(n * 4) / best / 1e9);
        free(a);
        (void)sink;
#endif
}

/* ---- matmul_rows ---- */
static void bench_matmul(uint32_t type, uint64_t rows, uint64_t cols, int T, int reps) {
        uint64_t bytes;
        const QuantTraits *qt = quant_traits(type);
        uint8_t *data = random_weights(type, rows * cols, &bytes);
        Matrix w = { .data = data, .type = type, .rows = rows, .cols = cols, .row_bytes = bytes / rows };
        float *x = malloc((size_t)T * cols * sizeof(float));
        float *out = malloc((size_t)T * rows * sizeof(float));
        float *row_tmp = aligned_alloc(64, cols * sizeof(float));
        for (uint64_t i = 0; i < (uint64_t)T * cols; i++)
                x[i] = rndf();
        double best = 1e9;
        for (int rep = 0; rep < reps; rep++) {
                double t0 = now();
                matmul_rows(&w, x, T, out, (int64_t)rows, 0, rows, row_tmp);
                double t = now() - t0;
                if (t < best)
                        best = t;
        }
        double chk = 0;
        for (uint64_t i = 0; i < (uint64_t)T * rows; i++)
                chk += out[i];
        printf("matmul_rows %-4s [%5llu][%5llu] T=%-2d  %7.2f ms  %6.2f GB/s weights  %6.2f Gweights/s  %6.1f GFLOP/s  (checksum %.6g)\n",
               qt->name, (unsigned long long)rows, (unsigned long long)cols, T, best * 1e3, (double)bytes / best / 1e9,
               (double)(rows * cols) / best / 1e9, 2.0 * (double)(rows * cols) * T / best / 1e9, chk);
#ifndef BENCH_BASELINE
        /* The same product through the fused kernel (what matmul_rows would do with dot_rows). */
        if (qt->dot_rows) {
                float *out2 = malloc((size_t)T * rows * sizeof(float));
                best = 1e9;
                for (int rep = 0; rep < reps; rep++) {
                        double t0 = now();
                        qt->dot_rows(data, w.row_bytes, (int64_t)rows, x, (int64_t)cols, T, out2, (int64_t)rows, (int64_t)cols);
                        double t = now() - t0;
                        if (t < best)
                                best = t;
                }
                printf("  fused dot_rows            T=%-2d  %7.2f ms  %6.2f GB/s weights  %6.2f Gweights/s  %6.1f GFLOP/s  (%s)\n",
                       T, best * 1e3, (double)bytes / best / 1e9, (double)(rows * cols) / best / 1e9,
                       2.0 * (double)(rows * cols) * T / best / 1e9,
                       memcmp(out, out2, (size_t)T * rows * sizeof(float)) == 0 ? "bit-identical to matmul_rows" : "DIFFERS");
                free(out2);
        }
#endif
        free(data);
        free(x);
        free(out);
        free(row_tmp);
}

/* ---- dequantizers: 8 MiB-ish of weights (from L3/DRAM) into one 4096-float row ---- */
static double time_dequant(DequantFn f, const uint8_t *data, uint64_t row_bytes, uint64_t n_rows, int64_t cols, float *row) {
        double best = 1e9;
        for (int rep = 0; rep < 5; rep++) {
                double t0 = now();
                for (uint64_t r = 0; r < n_rows; r++)
                        f(data + r * row_bytes, row, cols);
                double t = now() - t0;
                if (t < best)
                        best = t;
        }
        return (double)(n_rows * (uint64_t)cols) / best / 1e9;
}

static void bench_dequant(void) {
        static const uint32_t types[] = { GGML_TYPE_F16, GGML_TYPE_BF16, GGML_TYPE_Q4_0, GGML_TYPE_Q4_1,
                                          GGML_TYPE_Q5_0, GGML_TYPE_Q5_1, GGML_TYPE_Q8_0, GGML_TYPE_Q2_K,
                                          GGML_TYPE_Q3_K, GGML_TYPE_Q4_K, GGML_TYPE_Q5_K, GGML_TYPE_Q6_K };
        const int64_t cols = 4096;
        const uint64_t n_rows = 2048; /* 8 Mi weights */
        float *row = aligned_alloc(64, (size_t)cols * sizeof(float));
        printf("dequantize, Gweights/s (8 Mi weights, 4096 per call):\n");
        for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++) {
                const QuantTraits *qt = quant_traits(types[i]);
                uint64_t bytes;
                uint8_t *data = random_weights(types[i], n_rows * (uint64_t)cols, &bytes);
#ifdef BENCH_BASELINE
                printf("  %-5s scalar %6.2f\n", qt->name, time_dequant(qt->dequant, data, bytes / n_rows, n_rows, cols, row));
#else
                const double ref = time_dequant(qt->dequant_ref, data, bytes / n_rows, n_rows, cols, row);
                printf("  %-5s scalar %6.2f", qt->name, ref);
                for (int isa = QUANT_ISA_AVX2; isa < QUANT_ISA_COUNT_; isa++) {
                        DequantFn f = quant_dequant_variant(types[i], (QuantIsa)isa);
                        if (f && f != qt->dequant_ref) {
                                const double g = time_dequant(f, data, bytes / n_rows, n_rows, cols, row);
                                printf("  %s %6.2f (x%.1f)", quant_isa_name((QuantIsa)isa), g, g / ref);
                        }
                }
                printf("\n");
#endif
                free(data);
        }
        free(row);
}

/* ---- dot_f32 at a range of lengths (64-byte aligned, L1/L2 resident) ---- */
static void bench_dot_fn(const char *name, float (*dot)(const float *, const float *, int64_t)) {
        float *a = aligned_alloc(64, 16384 * sizeof(float)), *b = aligned_alloc(64, 16384 * sizeof(float));
        for (int i = 0; i < 16384; i++) {
                a[i] = rndf();
                b[i] = rndf();
        }
        printf("dot_f32 %-7s Gpairs/s:", name);
        for (int64_t n = 256; n <= 16384; n *= 4) {
                const int iters = (int)(20000000 / n);
                volatile float sink = 0;
                double best = 1e9;
                for (int rep = 0; rep < 5; rep++) {
                        double t0 = now();
                        float s = 0;
                        for (int it = 0; it < iters; it++)
                                s += dot(a, b, n);
                        sink += s;
                        double t = now() - t0;
                        if (t < best)
                                best = t;
                }
                printf("  n=%-5lld %5.2f", (long long)n, (double)n * iters / best / 1e9);
                (void)sink;
        }
        printf("\n");
        free(a);
        free(b);
}

static void bench_dot(void) {
#ifdef BENCH_BASELINE
        bench_dot_fn(ops_kernel_name(), dot_f32);
#else
        for (int isa = 0; isa < QUANT_ISA_COUNT_; isa++)
                if (quant_isa_supported((QuantIsa)isa))
                        bench_dot_fn(quant_isa_name((QuantIsa)isa), quant_dot_f32_variant((QuantIsa)isa));
#endif
}

int main(int argc, char **argv) {
        const int quick = argc > 1 && strcmp(argv[1], "quick") == 0;
        if (argc > 3 && strcmp(argv[1], "mm") == 0) { /* mm q4_k|q6_k|q8_0 T */
                const int T = atoi(argv[3]);
                if (strcmp(argv[2], "q6_k") == 0)
                        bench_matmul(GGML_TYPE_Q6_K, 4096, 14336, T, 3);
                else
                        bench_matmul(strcmp(argv[2], "q8_0") == 0 ? GGML_TYPE_Q8_0 : GGML_TYPE_Q4_K, 14336, 4096, T, 3);
                return 0;
        }
        if (argc > 1 && strcmp(argv[1], "dq") == 0) {
                bench_dequant();
                bench_matmul(GGML_TYPE_Q4_K, 14336, 4096, 1, 3);
                bench_matmul(GGML_TYPE_Q6_K, 4096, 14336, 1, 3);
                return 0;
        }
        const int reps = quick ? 2 : 5;
        if (!quick)
                bench_bandwidth();
        bench_dot();
        bench_dequant();
        bench_matmul(GGML_TYPE_Q4_K, 14336, 4096, 1, reps);
        bench_matmul(GGML_TYPE_Q4_K, 14336, 4096, 16, reps > 3 ? 3 : reps);
        bench_matmul(GGML_TYPE_Q6_K, 4096, 14336, 1, reps);
        bench_matmul(GGML_TYPE_Q6_K, 4096, 14336, 16, reps > 3 ? 3 : reps);
        return 0;
}
