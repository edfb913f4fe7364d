/* tools/bench/membw.c — memory read bandwidth: best of N timed passes over a large buffer,
 * once with 1 thread and once with every online CPU. The reading loop is AVX-512 or AVX2
 * (chosen at run time from the CPU's features), else plain 64-bit loads. Prints one JSON object.
 *
 *   membw [--mib N] [--passes N] [--threads N]
 *
 * Each thread reads its own contiguous share of the buffer (the same share it touched first,
 * so pages sit on its NUMA node); a pass is timed from a barrier that starts every thread to
 * the moment the last one finishes. GB/s = bytes read / seconds / 1e9. */
#include <errno.h>
#include <immintrin.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

typedef uint64_t (*ReadFn)(const uint8_t *p, size_t n);

/* Sum of the buffer as 64-bit lanes (the result only keeps the loads alive). */
__attribute__((target("avx512f"))) static uint64_t read_avx512(const uint8_t *p, size_t n) {
        __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
        size_t i = 0;
        for (; i + 256 <= n; i += 256) {
                a0 = _mm512_add_epi64(a0, _mm512_load_si512((const void *)(p + i)));
                a1 = _mm512_add_epi64(a1, _mm512_load_si512((const void *)(p + i + 64)));
                a2 = _mm512_add_epi64(a2, _mm512_load_si512((const void *)(p + i + 128)));
                a3 = _mm512_add_epi64(a3, _mm512_load_si512((const void *)(p + i + 192)));
        }
        a0 = _mm512_add_epi64(_mm512_add_epi64(a0, a1), _mm512_add_epi64(a2, a3));
        uint64_t lanes[8];
        _mm512_storeu_si512((void *)lanes, a0);
        uint64_t s = 0;
        for (int k = 0; k < 8; k++)
                s += lanes[k];
        for (; i < n; i++)
                s += p[i];
        return s;
}

__attribute__((target("avx2"))) static uint64_t read_avx2(const uint8_t *p, size_t n) {
        __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
        size_t i = 0;
        for (; i + 128 <= n; i += 128) {
                a0 = _mm256_add_epi64(a0, _mm256_load_si256((const __m256i *)(p + i)));
                a1 = _mm256_add_epi64(a1, _mm256_load_si256((const __m256i *)(p + i + 32)));
                a2 = _mm256_add_epi64(a2, _mm256_load_si256((const __m256i *)(p + i + 64)));
                a3 = _mm256_add_epi64(a3, _mm256_load_si256((const __m256i *)(p + i + 96)));
        }
        a0 = _mm256_add_epi64(_mm256_add_epi64(a0, a1), _mm256_add_epi64(a2, a3));
        uint64_t lanes[4];
        _mm256_storeu_si256((__m256i *)lanes, a0);
        uint64_t s = lanes[0] + lanes[1] + lanes[2] + lanes[3];
        for (; i < n; i++)
                s += p[i];
        return s;
}

static uint64_t read_scalar(const uint8_t *p, size_t n) {
        const uint64_t *q = (const uint64_t *)p;
        uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
        size_t i = 0, m = n / 8;
        for (; i + 4 <= m; i += 4) {
                s0 += q[i];
                s1 += q[i + 1];
                s2 += q[i + 2];
                s3 += q[i + 3];
        }
        for (; i < m; i++)
                s0 += q[i];
        return s0 + s1 + s2 + s3;
}

static double now_s(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

typedef struct Run {
        uint8_t *buf;
        size_t bytes;
        unsigned n_threads;
        ReadFn fn;
        pthread_barrier_t start, end;
        int touch;              /* this round writes (first touch) instead of reading */
        volatile uint64_t sink;
} Run;

typedef struct Worker {
        Run *run;
        unsigned index;
        pthread_t tid;
} Worker;

/* Share of thread t: 4 KiB-aligned, contiguous. */
static void share(const Run *r, unsigned t, size_t *b, size_t *e) {
        const size_t pages = r->bytes / 4096;
        *b = pages * t / r->n_threads * 4096;
        *e = pages * (t + 1) / r->n_threads * 4096;
}

static void *worker(void *arg) {
        Worker *w = arg;
        Run *r = w->run;
        size_t b, e;
        share(r, w->index, &b, &e);
        pthread_barrier_wait(&r->start);
        if (r->touch) {
                for (size_t i = b; i < e; i += 4096)
                        memset(r->buf + i, (int)(i >> 12) & 0xff, 4096);
        } else {
                uint64_t s = r->fn(r->buf + b, e - b);
                __atomic_add_fetch(&r->sink, s, __ATOMIC_RELAXED);
        }
        pthread_barrier_wait(&r->end);
        return NULL;
}

/* One round over the buffer with n threads (the caller is thread 0); returns seconds from
 * the start barrier to the end barrier. */
static double round_trip(Run *r, unsigned n, int touch) {
        Worker *ws = calloc(n, sizeof(*ws));
        if (!ws) {
                perror("calloc");
                exit(1);
        }
        r->n_threads = n;
        r->touch = touch;
        pthread_barrier_init(&r->start, NULL, n);
        pthread_barrier_init(&r->end, NULL, n);
        for (unsigned t = 1; t < n; t++) {
                ws[t] = (Worker){ r, t, 0 };
                int e = pthread_create(&ws[t].tid, NULL, worker, &ws[t]);
                if (e) {
                        fprintf(stderr, "membw: pthread_create: %s\n", strerror(e));
                        exit(1);
                }
        }
        size_t b, e;
        share(r, 0, &b, &e);
        pthread_barrier_wait(&r->start);
        const double t0 = now_s();
        if (touch) {
                for (size_t i = b; i < e; i += 4096)
                        memset(r->buf + i, (int)(i >> 12) & 0xff, 4096);
        } else {
                uint64_t s = r->fn(r->buf + b, e - b);
                __atomic_add_fetch(&r->sink, s, __ATOMIC_RELAXED);
        }
        pthread_barrier_wait(&r->end);
        const double t1 = now_s();
        for (unsigned t = 1; t < n; t++)
                pthread_join(ws[t].tid, NULL);
        pthread_barrier_destroy(&r->start);
        pthread_barrier_destroy(&r->end);
        free(ws);
        return t1 - t0;
}

static double best_gbs(Run *r, unsigned n, int passes) {
        double best = 0.0;
        for (int p = 0; p < passes; p++) {
                const double s = round_trip(r, n, 0);
                const double gbs = (double)(r->bytes / 4096 * 4096) / s / 1e9;
                if (gbs > best)
                        best = gbs;
        }
        return best;
}

static long parse_pos(const char *s, const char *what) {
        char *end;
        errno = 0;
        long v = strtol(s, &end, 10);
        if (errno || *end || v <= 0) {
                fprintf(stderr, "membw: %s must be a positive integer\n", what);
                exit(2);
        }
        return v;
}

int main(int argc, char **argv) {
        long mib = 4096, passes = 5, threads = sysconf(_SC_NPROCESSORS_ONLN);
        for (int i = 1; i < argc; i++) {
                if (!strcmp(argv[i], "--mib") && i + 1 < argc)
                        mib = parse_pos(argv[++i], "--mib");
                else if (!strcmp(argv[i], "--passes") && i + 1 < argc)
                        passes = parse_pos(argv[++i], "--passes");
                else if (!strcmp(argv[i], "--threads") && i + 1 < argc)
                        threads = parse_pos(argv[++i], "--threads");
                else {
                        fprintf(stderr, "usage: membw [--mib N] [--passes N] [--threads N]\n");
                        return 2;
                }
        }
        if (threads < 1)
                threads = 1;

        const char *kernel = "scalar";
        ReadFn fn = read_scalar;
        __builtin_cpu_init();
        if (__builtin_cpu_supports("avx512f")) {
                kernel = "avx512";
                fn = read_avx512;
        } else if (__builtin_cpu_supports("avx2")) {
                kernel = "avx2";
                fn = read_avx2;
        }

        Run r = { .bytes = (size_t)mib << 20, .fn = fn };
        r.buf = mmap(NULL, r.bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (r.buf == MAP_FAILED) {
                perror("membw: mmap");
                return 1;
        }
        madvise(r.buf, r.bytes, MADV_HUGEPAGE); /* fewer TLB misses; harmless if refused */

        const double touch_s = round_trip(&r, (unsigned)threads, 1); /* first touch, by the readers' split */
        const double one = best_gbs(&r, 1, (int)passes);
        const double all = best_gbs(&r, (unsigned)threads, (int)passes);
        printf("{\"kernel\":\"%s\",\"buffer_mib\":%ld,\"passes\":%ld,\"threads\":%ld,\"touch_s\":%.3f,"
               "\"1_thread\":%.2f,\"all_threads\":%.2f,\"checksum\":%llu}\n",
               kernel, mib, passes, threads, touch_s, one, all, (unsigned long long)r.sink);
        munmap(r.buf, r.bytes);
        return 0;
}
