/* tools/bench_int8.c — developer benchmark (not part of the build or the tests): throughput
 * of the int8 kernels (engine/quant_int8.c) on Mixtral-shaped matrices, [14336][4096] Q4_K
 * (w1/w3), [4096][14336] Q6_K (w2) and [14336][4096] Q8_0, at T = 1 and T = 8 tokens, with 1 and 2 threads
 * (rows split in halves, threads pinned to CPUs 0 and 1), next to the float fused kernel
 * (quant_traits(type)->dot_rows), the time of quantize_row_q8k, and read bandwidth: a sum
 * of a 1 GiB array, and a sum of the very copies the products read ("read (sum) the
 * copies": the same sizes, threads and timing, the reference for the "% of read bw").
 * Each timed pass reads the next of several copies of the matrix (>= 384 MiB in all), so
 * the weights come from DRAM, as in decoding. Wall-clock time, best and median of 8 to 24
 * passes: the machine is shared, the best pass is the one least disturbed. Figures: GB/s
 * of weight bytes and G weights/s per pass (whatever T: a pass at T = 8 does 8 products
 * per weight). Build and run from the repository root:
 *   make MODE=rel build/rel/libmixengine.a
 *   cc -std=gnu17 -O2 -ffp-contract=off -iquote engine tools/bench_int8.c \
 *      build/rel/libmixengine.a -lm -lpthread -o /tmp/bench_int8
 *   /tmp/bench_int8            (every int8 variant at 1 thread, the chosen one at 2)
 *   /tmp/bench_int8 quick      (the chosen int8 kernel only)
 *   /tmp/bench_int8 quick 1 2 4 8   (and these token counts, 1..16, instead of 1 and 8) */
#define _GNU_SOURCE
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "quant.h"
#include "quant_int8.h"

static double now(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static uint64_t rng = 0x1234567;
static uint64_t rnd(void) {
        uint64_t z = (rng += 0x9e3779b97f4a7c15ull);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        return z ^ (z >> 31);
}
static double rndu(void) {
        return (double)(rnd() >> 11) * 0x1.0p-53;
}
static float rndn(void) {
        return (float)(sqrt(-2.0 * log(rndu() + 1e-300)) * cos(6.283185307179586 * rndu()));
}

static void *xalloc(size_t n) {
        void *p = aligned_alloc(64, (n + 63) / 64 * 64);
        if (!p) {
                perror("aligned_alloc");
                exit(1);
        }
        return p;
}

/* ---- a tiny pool: worker threads wait at a barrier, run job(i), meet at a second barrier ---- */

typedef void (*JobFn)(void *ctx, int thread, int n_threads);
static int n_threads = 1;
static pthread_barrier_t bar_start, bar_end;
static JobFn job_fn;
static void *job_ctx;
static int quitting;

static void pin(int cpu) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(cpu, &set);
        pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
}

static void *worker(void *arg) {
        const int id = (int)(intptr_t)arg;
        pin(id);
        for (;;) {
                pthread_barrier_wait(&bar_start);
                if (quitting)
                        return NULL;
                job_fn(job_ctx, id, n_threads);
                pthread_barrier_wait(&bar_end);
        }
}

/* Wall time of one run of fn on n threads (n <= the pool's size). */
static int pool_size;
static double run_threads(JobFn fn, void *ctx, int n) {
        job_fn = fn;
        job_ctx = ctx;
        n_threads = n;
        const double t0 = now();
        pthread_barrier_wait(&bar_start);
        fn(ctx, 0, n);
        pthread_barrier_wait(&bar_end);
        return now() - t0;
}
/* The job wrapper: the real job f on the first n threads of the pool. */
typedef struct Guard {
        JobFn f;
        void *c;
        int n;
} Guard;
static void guarded(void *ctx, int thread, int n_pool) {
        (void)n_pool;
        const Guard *g = ctx;
        if (thread < g->n)
                g->f(g->c, thread, g->n);
}

/* ---- read bandwidth ---- */
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
__attribute__((target("avx2"))) static float sum_avx2(const float *a, size_t n) {
        __m256 s[8];
        for (int k = 0; k < 8; k++)
                s[k] = _mm256_setzero_ps();
        for (size_t i = 0; i + 64 <= n; i += 64)
                for (int k = 0; k < 8; k++)
                        s[k] = _mm256_add_ps(s[k], _mm256_load_ps(a + i + 8 * k));
        for (int k = 1; k < 8; k++)
                s[0] = _mm256_add_ps(s[0], s[k]);
        float l[8];
        _mm256_storeu_ps(l, s[0]);
        return l[0] + l[1] + l[2] + l[3] + l[4] + l[5] + l[6] + l[7];
}
#endif

typedef struct SumJob {
        const float *a;
        size_t n;
        float out[64];
} SumJob;

static void sum_job(void *ctx, int thread, int n) {
        SumJob *j = ctx;
        const size_t per = j->n / (size_t)n / 128 * 128;
        const float *p = j->a + per * (size_t)thread;
#if defined(__x86_64__)
        j->out[thread] = __builtin_cpu_supports("avx512f") ? sum_avx512(p, per) : sum_avx2(p, per);
#else
        float s = 0;
        for (size_t i = 0; i < per; i++)
                s += p[i];
        j->out[thread] = s;
#endif
}

static double bandwidth[3];

static void bench_bandwidth(void) {
        const size_t n = (size_t)1 << 28; /* 1 GiB of floats */
        float *a = xalloc(n * sizeof(float));
        SumJob j = { a, n, { 0 } };
        for (size_t i = 0; i < n; i++)
                a[i] = (float)(i & 7);
        for (int th = 1; th <= pool_size; th++) {
                double best = 1e9;
                for (int rep = 0; rep < 5; rep++) {
                        Guard g = { sum_job, &j, th };
                        const double t = run_threads(guarded, &g, pool_size);
                        best = t < best ? t : best;
                }
                bandwidth[th] = (double)(n / (size_t)th * (size_t)th / 128 * 128 * 4) / best / 1e9;
                printf("read bandwidth, %d thread%s (AVX-512 sum of a 1 GiB float array): %6.1f GB/s\n", th, th > 1 ? "s" : "",
                       bandwidth[th]);
        }
        free(a);
}

/* ---- the products ---- */

/* Read bandwidth over the same copies, the same split and timing as the products. */
typedef struct ReadJob {
        const uint8_t *w;
        size_t bytes;
        float out[8];
} ReadJob;

static void read_job(void *ctx, int thread, int n) {
        ReadJob *j = ctx;
        const size_t per = j->bytes / (size_t)n / 512 * 512;
        const float *p = (const float *)(j->w + per * (size_t)thread);
#if defined(__x86_64__)
        j->out[thread] = __builtin_cpu_supports("avx512f") ? sum_avx512(p, per / 4) : sum_avx2(p, per / 4);
#else
        float s = 0;
        for (size_t i = 0; i < per / 4; i++)
                s += p[i];
        j->out[thread] = s;
#endif
}

typedef struct MatJob {
        const uint8_t *w;       /* this pass's copy */
        size_t rb;
        int64_t rows, cols, T;
        const float *xf;        /* [T][cols] */
        const void *xq;         /* [T][cols / 256] blocks of the type's activation format */
        float *out;             /* [T][rows] */
        DotRowsFn f32;          /* one of these */
        Int8DotRowsFn i8;
} MatJob;

static void mat_job(void *ctx, int thread, int n) {
        const MatJob *j = ctx;
        const int64_t r0 = j->rows * thread / n, r1 = j->rows * (thread + 1) / n;
        if (j->i8)
                j->i8(j->w + (size_t)r0 * j->rb, j->rb, r1 - r0, j->xq, j->cols / QK_K, j->T, j->out + r0, j->rows, j->cols);
        else
                j->f32(j->w + (size_t)r0 * j->rb, j->rb, r1 - r0, j->xf, j->cols, j->T, j->out + r0, j->rows, j->cols);
}

static int cmp_double(const void *a, const void *b) {
        const double x = *(const double *)a, y = *(const double *)b;
        return x < y ? -1 : x > y;
}

/* Wall times of reps passes, each on the next copy of the weights: best and median. */
typedef struct Timing {
        double best, median;
} Timing;
static int next_copy;
static Timing time_passes(JobFn fn, void *ctx, const uint8_t **wp, uint8_t *const *copies, int n_copies, int th, int reps) {
        double t[64];
        reps = reps > 64 ? 64 : reps;
        Guard g = { fn, ctx, th };
        for (int rep = 0; rep < reps; rep++) {
                *wp = copies[next_copy++ % n_copies];
                t[rep] = run_threads(guarded, &g, pool_size);
        }
        qsort(t, (size_t)reps, sizeof(double), cmp_double);
        return (Timing){ t[0], t[reps / 2] };
}

/* the token counts T to time (command line; default 1 and 8) */
#define TOKENS_MAX 16
static int64_t token_counts[8] = { 1, 8 };
static int n_token_counts = 2;

/* read bandwidth over the copies (best pass), per thread count */
static double matched_bw[3];

static void report(const char *what, int th, int64_t T, Timing tm, uint64_t bytes, uint64_t weights) {
        const double gbs = (double)bytes / tm.best / 1e9;
        printf("  %-22s %d thr  T=%-2lld %8.3f ms (median %8.3f)  %6.2f GB/s  %6.2f Gweights/s  %4.0f%% of read bw\n", what,
               th, (long long)T, tm.best * 1e3, tm.median * 1e3, gbs, (double)weights / tm.best / 1e9,
               100.0 * gbs / matched_bw[th]);
}

static void bench_matrix(uint32_t type, int64_t rows, int64_t cols, int all_variants) {
        const QuantTraits *qt = quant_traits(type);
        const QuantInt8Kernels *q8 = quant_int8(type);
        uint64_t bytes;
        quant_row_bytes(type, (uint64_t)(rows * cols), &bytes);
        const size_t rb = bytes / (uint64_t)rows;
        /* copies of random weights with realistic scales, >= 384 MiB in all */
        const int n_copies = (int)((384u << 20) / bytes + 1);
        uint8_t **copies = malloc((size_t)n_copies * sizeof(*copies));
        const int off0 = type == GGML_TYPE_Q6_K ? (int)offsetof(BlockQ6_K, d)
                         : type == GGML_TYPE_Q3_K ? (int)offsetof(BlockQ3_K, d)
                         : type == GGML_TYPE_Q2_K ? (int)offsetof(BlockQ2_K, d) : 0;
        const int n_scales = type == GGML_TYPE_Q4_K || type == GGML_TYPE_Q5_K || type == GGML_TYPE_Q2_K ||
                                             type == GGML_TYPE_Q4_1 || type == GGML_TYPE_Q5_1 ? 2 : 1;
        for (int c = 0; c < n_copies; c++) {
                uint8_t *p = copies[c] = xalloc(bytes);
                for (uint64_t i = 0; i < bytes; i += 8) {
                        const uint64_t r = rnd();
                        memcpy(p + i, &r, bytes - i < 8 ? bytes - i : 8);
                }
                for (uint64_t b = 0; b < bytes / qt->type_size; b++)
                        for (int k = 0; k < n_scales; k++) {
                                const ggml_half h = fp32_to_fp16((float)(0.001 + 0.02 * rndu()));
                                memcpy(p + b * qt->type_size + (size_t)off0 + 2 * (size_t)k, &h, 2);
                        }
        }
        const int64_t T_max = TOKENS_MAX;
        float *xf = xalloc((size_t)(T_max * cols) * sizeof(float));
        const size_t xrow = (size_t)(cols / QK_K) * quant_act_block_bytes(q8->act);
        uint8_t *xq = xalloc((size_t)T_max * xrow);
        float *out = xalloc((size_t)(T_max * rows) * sizeof(float)), *out_f = xalloc((size_t)(T_max * rows) * sizeof(float));
        for (int64_t i = 0; i < T_max * cols; i++)
                xf[i] = rndn();
        /* activation quantization: once per distinct input row */
        double tq = 1e9;
        for (int rep = 0; rep < 20; rep++) {
                const double t0 = now();
                for (int64_t t = 0; t < T_max; t++)
                        quantize_row_act(q8->act, xf + t * cols, xq + (size_t)t * xrow, cols);
                tq = fmin(tq, now() - t0);
        }
        printf("\n%s [%lld][%lld]: %.1f MiB per pass, %d copies; activation quantization of one %lld-float row: %.1f us\n", qt->name,
               (long long)rows, (long long)cols, (double)bytes / 1048576.0, n_copies, (long long)cols, tq / T_max * 1e6);
        for (int th = 1; th <= pool_size; th++) {
                ReadJob rj = { NULL, bytes, { 0 } };
                const Timing tm = time_passes(read_job, &rj, &rj.w, copies, n_copies, th, 24);
                matched_bw[th] = (double)bytes / tm.best / 1e9;
                printf("  %-22s %d thr        %8.3f ms (median %8.3f)  %6.2f GB/s  (the reference below)\n", "read (sum) the copies",
                       th, tm.best * 1e3, tm.median * 1e3, matched_bw[th]);
        }
        for (int ti = 0; ti < n_token_counts; ti++) {
                const int64_t T = token_counts[ti];
                const int reps = T == 1 ? 40 : 10;
                for (int th = 1; th <= pool_size; th++) {
                        MatJob j = { NULL, rb, rows, cols, T, xf, xq, out_f, qt->dot_rows, NULL };
                        if (qt->dot_rows)
                                report("float fused dot_rows", th, T, time_passes(mat_job, &j, &j.w, copies, n_copies, th, reps),
                                       bytes, (uint64_t)(rows * cols));
                        for (int isa = 0; isa < QUANT_INT8_ISA_COUNT_; isa++) {
                                const int chosen = isa == (int)q8->isa;
                                if (!q8->dot_rows_variant[isa] || (!chosen && (!all_variants || th > 1 || isa == 0)))
                                        continue;
                                char name[64];
                                snprintf(name, sizeof(name), "int8 %s%s", quant_int8_isa_name((QuantInt8Isa)isa),
                                         chosen ? " *" : "");
                                j = (MatJob){ NULL, rb, rows, cols, T, xf, xq, out, NULL, q8->dot_rows_variant[isa] };
                                report(name, th, T, time_passes(mat_job, &j, &j.w, copies, n_copies, th, reps), bytes,
                                       (uint64_t)(rows * cols));
                        }
                }
                /* sanity: int8 vs float results on the same copy */
                if (qt->dot_rows) {
                        qt->dot_rows(copies[0], rb, rows, xf, cols, T, out_f, rows, cols);
                        q8->dot_rows(copies[0], rb, rows, xq, cols / QK_K, T, out, rows, cols);
                }
                double num = 0, den = 0;
                for (int64_t i = 0; i < T * rows; i++) {
                        num += (double)(out[i] - out_f[i]) * (out[i] - out_f[i]);
                        den += (double)out_f[i] * out_f[i];
                }
                if (qt->dot_rows)
                        printf("  (int8 vs float outputs, T=%lld: rms difference / rms output %.2e)\n", (long long)T, sqrt(num / den));
        }
        for (int c = 0; c < n_copies; c++)
                free(copies[c]);
        free(copies);
        free(xf);
        free(xq);
        free(out);
        free(out_f);
}

int main(int argc, char **argv) {
        const int quick = argc > 1 && strcmp(argv[1], "quick") == 0;
        if (argc > 2) {
                n_token_counts = 0;
                for (int i = 2; i < argc && n_token_counts < 8; i++) {
                        const long t = strtol(argv[i], NULL, 10);
                        if (t < 1 || t > TOKENS_MAX) {
                                fprintf(stderr, "token counts are 1..%d\n", TOKENS_MAX);
                                return 2;
                        }
                        token_counts[n_token_counts++] = t;
                }
        }
        const long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
        pool_size = ncpu >= 2 ? 2 : 1;
        pthread_barrier_init(&bar_start, NULL, (unsigned)pool_size);
        pthread_barrier_init(&bar_end, NULL, (unsigned)pool_size);
        pin(0);
        pthread_t tid[2];
        for (int i = 1; i < pool_size; i++)
                pthread_create(&tid[i], NULL, worker, (void *)(intptr_t)i);
        printf("kernels: float %s, int8 %s\n", quant_isa_name(quant_best_isa()),
               quant_int8_isa_name(quant_int8(GGML_TYPE_Q4_K)->isa));
        bench_bandwidth();
        bench_matrix(GGML_TYPE_Q4_K, 14336, 4096, !quick);
        bench_matrix(GGML_TYPE_Q6_K, 4096, 14336, !quick);
        bench_matrix(GGML_TYPE_Q8_0, 14336, 4096, !quick);
        bench_matrix(GGML_TYPE_Q4_0, 14336, 4096, !quick);
        bench_matrix(GGML_TYPE_Q5_K, 14336, 4096, !quick);
        bench_matrix(GGML_TYPE_Q3_K, 14336, 4096, !quick);
        quitting = 1;
        pthread_barrier_wait(&bar_start);
        for (int i = 1; i < pool_size; i++)
                pthread_join(tid[i], NULL);
        return 0;
}
