/* tools/bench/membw.c — memory read bandwidth, measured the way the fastest kernels read, so
 * that the figure is a ceiling for anything that streams weights. Prints one JSON object.
 *
 *   membw [--mib N] [--passes N] [--extra N] [--threads N] [--isa auto|all|avx512|avx2|scalar]
 *
 * A large anonymous buffer (2 MiB aligned, transparent huge pages requested) is written once
 * by the threads that later read it, then read by a set of variants:
 *
 *   - the loads: the widest the CPU has (AVX-512, else AVX2, else 64-bit scalar), chosen at
 *     run time from __builtin_cpu_supports; --isa all measures every set the CPU runs;
 *   - streams: each thread's share is cut into 1, 2 or 4 equal parts read side by side,
 *     256 bytes of each per step (as a kernel reads 1, 2 or 4 weight rows at once);
 *   - software prefetch: none, or each stream asks for the lines 512, 2048 or 8192 bytes
 *     ahead of what it reads (prefetcht0).
 *
 * Each thread reads its own contiguous share (the same share it touched first, so on NUMA
 * machines its pages are on its node). A pass is timed from a barrier that releases every
 * thread to the moment the last one finishes: GB/s = bytes / seconds / 1e9. Every variant
 * runs --passes times, the passes of all variants interleaved (pass 1 of each, then pass 2
 * of each, ...) so a burst of other activity does not hit one variant alone; then the 3 best
 * so far run --extra more passes (default 10), interleaved too. Other activity only ever slows
 * a pass down, so a variant's figure is its best pass. This is done with 1 thread and with
 * --threads (default: every online CPU); for each, the best variant and its figure are
 * reported, and every variant's best and median in "variants". */
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

#define STEP 256                /* bytes of one stream read per step */
#define ALIGN_2M ((size_t)2 << 20)

/* The reading loop, for one load width. S streams of L bytes each (L a multiple of STEP) read
 * side by side, STEP bytes of each per step, with a prefetch D bytes ahead of each (D = 0:
 * none); the bytes past S * L (less than S * STEP) are read by 64-bit loads at the end. The
 * loads are summed as 64-bit lanes into 4 accumulators: the sum keeps them from being
 * dropped. S and D are constants in each instantiation below (always_inline), so the inner
 * loops unroll fully. */
#define DEFINE_READER(ISA, ATTR, VEC, VB, ZERO, LOAD, ADD, FOLD)                                              \
        ATTR static inline __attribute__((always_inline)) uint64_t ISA##_body(const uint8_t *p, size_t n,     \
                                                                              const int S, const size_t D) {  \
                VEC acc[4] = { ZERO, ZERO, ZERO, ZERO };                                                      \
                const size_t L = n / (size_t)S / STEP * STEP;                                                 \
                for (size_t o = 0; o < L; o += STEP) {                                                        \
                        _Pragma("GCC unroll 4") for (int s = 0; s < S; s++) {                                 \
                                const uint8_t *q = p + (size_t)s * L + o;                                     \
                                if (D) {                                                                      \
                                        _Pragma("GCC unroll 4") for (int c = 0; c < STEP; c += 64)            \
                                                _mm_prefetch((const char *)(q + D + c), _MM_HINT_T0);         \
                                }                                                                             \
                                _Pragma("GCC unroll 32") for (int k = 0; k < STEP / (VB); k++)                \
                                        acc[k & 3] = ADD(acc[k & 3], LOAD(q + k * (VB)));                     \
                        }                                                                                     \
                }                                                                                             \
                uint64_t sum = FOLD(acc);                                                                     \
                for (size_t i = (size_t)S * L; i + 8 <= n; i += 8) {                                          \
                        uint64_t v;                                                                           \
                        memcpy(&v, p + i, 8);                                                                 \
                        sum += v;                                                                             \
                }                                                                                             \
                return sum;                                                                                   \
        }                                                                                                     \
        ATTR static uint64_t ISA##_s1_p0(const uint8_t *p, size_t n) { return ISA##_body(p, n, 1, 0); }       \
        ATTR static uint64_t ISA##_s1_p512(const uint8_t *p, size_t n) { return ISA##_body(p, n, 1, 512); }   \
        ATTR static uint64_t ISA##_s1_p2048(const uint8_t *p, size_t n) { return ISA##_body(p, n, 1, 2048); } \
        ATTR static uint64_t ISA##_s1_p8192(const uint8_t *p, size_t n) { return ISA##_body(p, n, 1, 8192); } \
        ATTR static uint64_t ISA##_s2_p0(const uint8_t *p, size_t n) { return ISA##_body(p, n, 2, 0); }       \
        ATTR static uint64_t ISA##_s2_p512(const uint8_t *p, size_t n) { return ISA##_body(p, n, 2, 512); }   \
        ATTR static uint64_t ISA##_s2_p2048(const uint8_t *p, size_t n) { return ISA##_body(p, n, 2, 2048); } \
        ATTR static uint64_t ISA##_s2_p8192(const uint8_t *p, size_t n) { return ISA##_body(p, n, 2, 8192); } \
        ATTR static uint64_t ISA##_s4_p0(const uint8_t *p, size_t n) { return ISA##_body(p, n, 4, 0); }       \
        ATTR static uint64_t ISA##_s4_p512(const uint8_t *p, size_t n) { return ISA##_body(p, n, 4, 512); }   \
        ATTR static uint64_t ISA##_s4_p2048(const uint8_t *p, size_t n) { return ISA##_body(p, n, 4, 2048); } \
        ATTR static uint64_t ISA##_s4_p8192(const uint8_t *p, size_t n) { return ISA##_body(p, n, 4, 8192); } \
        static const ReadFn ISA##_fns[3][4] = {                                                               \
                { ISA##_s1_p0, ISA##_s1_p512, ISA##_s1_p2048, ISA##_s1_p8192 },                               \
                { ISA##_s2_p0, ISA##_s2_p512, ISA##_s2_p2048, ISA##_s2_p8192 },                               \
                { ISA##_s4_p0, ISA##_s4_p512, ISA##_s4_p2048, ISA##_s4_p8192 },                               \
        };

static const int STREAMS[3] = { 1, 2, 4 };
static const int PREFETCH[4] = { 0, 512, 2048, 8192 };

#define ATTR_AVX512 __attribute__((target("avx512f")))
#define LOAD512(p) _mm512_load_si512((const void *)(p))
ATTR_AVX512 static inline __attribute__((always_inline)) uint64_t fold512(const __m512i *a) {
        const __m512i s = _mm512_add_epi64(_mm512_add_epi64(a[0], a[1]), _mm512_add_epi64(a[2], a[3]));
        return (uint64_t)_mm512_reduce_add_epi64(s);
}
DEFINE_READER(avx512, ATTR_AVX512, __m512i, 64, _mm512_setzero_si512(), LOAD512, _mm512_add_epi64, fold512)

#define ATTR_AVX2 __attribute__((target("avx2")))
#define LOAD256(p) _mm256_load_si256((const __m256i *)(const void *)(p))
ATTR_AVX2 static inline __attribute__((always_inline)) uint64_t fold256(const __m256i *a) {
        const __m256i s = _mm256_add_epi64(_mm256_add_epi64(a[0], a[1]), _mm256_add_epi64(a[2], a[3]));
        uint64_t l[4];
        _mm256_storeu_si256((__m256i *)(void *)l, s);
        return l[0] + l[1] + l[2] + l[3];
}
DEFINE_READER(avx2, ATTR_AVX2, __m256i, 32, _mm256_setzero_si256(), LOAD256, _mm256_add_epi64, fold256)

#define ATTR_NONE
#define LOAD64(p) (*(const uint64_t *)(const void *)(p))
#define ADD64(a, b) ((a) + (b))
#define FOLD64(a) ((a)[0] + (a)[1] + (a)[2] + (a)[3])
DEFINE_READER(scalar, ATTR_NONE, uint64_t, 8, 0, LOAD64, ADD64, FOLD64)

static double now_s(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

typedef struct Run {
        uint8_t *buf;
        size_t bytes;
        unsigned n_threads;
        ReadFn fn;              /* NULL: this round writes the buffer (first touch) */
        pthread_barrier_t start, end;
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

static void work(Run *r, unsigned t) {
        size_t b, e;
        share(r, t, &b, &e);
        if (!r->fn) {
                for (size_t i = b; i < e; i += 4096)
                        memset(r->buf + i, (int)(i >> 12) & 0xff, 4096);
        } else {
                const uint64_t s = r->fn(r->buf + b, e - b);
                __atomic_add_fetch(&r->sink, s, __ATOMIC_RELAXED);
        }
}

static void *worker(void *arg) {
        Worker *w = arg;
        pthread_barrier_wait(&w->run->start);
        work(w->run, w->index);
        pthread_barrier_wait(&w->run->end);
        return NULL;
}

/* One round over the buffer with n threads (the caller is thread 0) running fn (NULL: write
 * it); returns seconds from the start barrier to the end barrier. */
static double round_trip(Run *r, unsigned n, ReadFn fn) {
        Worker *ws = calloc(n, sizeof(*ws));
        if (!ws) {
                perror("membw: calloc");
                exit(1);
        }
        r->n_threads = n;
        r->fn = fn;
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
        pthread_barrier_wait(&r->start);
        const double t0 = now_s();
        work(r, 0);
        pthread_barrier_wait(&r->end);
        const double t1 = now_s();
        for (unsigned t = 1; t < n; t++)
                pthread_join(ws[t].tid, NULL);
        pthread_barrier_destroy(&r->start);
        pthread_barrier_destroy(&r->end);
        free(ws);
        return t1 - t0;
}

static long parse_int(const char *s, long min, const char *what) {
        char *end;
        errno = 0;
        long v = strtol(s, &end, 10);
        if (errno || *end || end == s || v < min) {
                fprintf(stderr, "membw: %s must be an integer >= %ld\n", what, min);
                exit(2);
        }
        return v;
}

static int cmp_double(const void *a, const void *b) {
        const double x = *(const double *)a, y = *(const double *)b;
        return x < y ? -1 : x > y;
}

/* Bytes of [p, p + n) mapped with huge pages (AnonHugePages of the mapping, from
 * /proc/self/smaps); -1 when unknown. */
static long long huge_bytes(const void *p, size_t n) {
        FILE *f = fopen("/proc/self/smaps", "r");
        if (!f)
                return -1;
        char line[512];
        long long total = -1;
        int in = 0;
        const uintptr_t lo = (uintptr_t)p, hi = lo + n;
        while (fgets(line, sizeof line, f)) {
                unsigned long a, b;
                long long kb;
                if (sscanf(line, "%lx-%lx ", &a, &b) == 2) { /* a mapping's first line */
                        in = a < hi && b > lo;
                } else if (in && sscanf(line, "AnonHugePages: %lld kB", &kb) == 1) {
                        total = (total < 0 ? 0 : total) + kb * 1024;
                }
        }
        fclose(f);
        return total;
}

typedef struct Variant {
        const char *isa;
        int streams, prefetch;
        ReadFn fn;
        char name[48];
        double *gbs[2];         /* per thread count: GB/s of every pass */
        int n[2];               /* passes run */
        double best[2], med[2];
} Variant;

#define MAX_VARIANTS 36
#define N_ISA 3
#define FINALISTS 3             /* variants given the extra passes */

int main(int argc, char **argv) {
        long mib = 4096, passes = 5, extra = 10, threads = sysconf(_SC_NPROCESSORS_ONLN);
        const char *isa_opt = "auto";
        for (int i = 1; i < argc; i++) {
                if (!strcmp(argv[i], "--mib") && i + 1 < argc)
                        mib = parse_int(argv[++i], 1, "--mib");
                else if (!strcmp(argv[i], "--passes") && i + 1 < argc)
                        passes = parse_int(argv[++i], 1, "--passes");
                else if (!strcmp(argv[i], "--extra") && i + 1 < argc)
                        extra = parse_int(argv[++i], 0, "--extra");
                else if (!strcmp(argv[i], "--threads") && i + 1 < argc)
                        threads = parse_int(argv[++i], 1, "--threads");
                else if (!strcmp(argv[i], "--isa") && i + 1 < argc)
                        isa_opt = argv[++i];
                else {
                        fprintf(stderr, "usage: membw [--mib N] [--passes N] [--extra N] [--threads N] "
                                        "[--isa auto|all|avx512|avx2|scalar]\n");
                        return 2;
                }
        }
        if (threads < 1)
                threads = 1;
        if (threads > 1024)
                threads = 1024;

        __builtin_cpu_init();
        const struct {
                const char *name;
                int ok;
                const ReadFn (*fns)[4];
        } isas[N_ISA] = {
                { "avx512", __builtin_cpu_supports("avx512f"), avx512_fns },
                { "avx2", __builtin_cpu_supports("avx2"), avx2_fns },
                { "scalar", 1, scalar_fns },
        };
        int use[N_ISA] = { 0 };
        if (!strcmp(isa_opt, "auto") || !strcmp(isa_opt, "all")) {
                for (int k = 0; k < N_ISA; k++) {
                        if (isas[k].ok) {
                                use[k] = 1;
                                if (!strcmp(isa_opt, "auto"))
                                        break; /* the widest only */
                        }
                }
        } else {
                int k = 0;
                while (k < N_ISA && strcmp(isa_opt, isas[k].name))
                        k++;
                if (k == N_ISA) {
                        fprintf(stderr, "membw: --isa must be auto, all, avx512, avx2 or scalar\n");
                        return 2;
                }
                if (!isas[k].ok) {
                        fprintf(stderr, "membw: this CPU does not run %s\n", isa_opt);
                        return 2;
                }
                use[k] = 1;
        }

        unsigned counts[2] = { 1, (unsigned)threads };
        const int n_counts = threads > 1 ? 2 : 1;

        Variant vs[MAX_VARIANTS];
        int nv = 0;
        for (int k = 0; k < N_ISA; k++) {
                if (!use[k])
                        continue;
                for (int s = 0; s < 3; s++)
                        for (int d = 0; d < 4; d++) {
                                Variant *v = &vs[nv++];
                                *v = (Variant){ .isa = isas[k].name, .streams = STREAMS[s], .prefetch = PREFETCH[d],
                                                .fn = isas[k].fns[s][d] };
                                snprintf(v->name, sizeof v->name, "%s-s%d-pf%d", v->isa, v->streams, v->prefetch);
                                for (int c = 0; c < n_counts; c++) {
                                        v->gbs[c] = calloc((size_t)(passes + extra), sizeof(double));
                                        if (!v->gbs[c]) {
                                                perror("membw: calloc");
                                                return 1;
                                        }
                                }
                        }
        }

        /* the buffer, 2 MiB aligned so that all of it can be mapped with huge pages */
        const size_t bytes = (size_t)mib << 20;
        uint8_t *raw = mmap(NULL, bytes + ALIGN_2M, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (raw == MAP_FAILED) {
                perror("membw: mmap");
                return 1;
        }
        uint8_t *buf = (uint8_t *)(((uintptr_t)raw + ALIGN_2M - 1) & ~(uintptr_t)(ALIGN_2M - 1));
        madvise(buf, bytes, MADV_HUGEPAGE); /* fewer TLB misses; harmless if refused */

        Run r = { .buf = buf, .bytes = bytes };
        const double touch_s = round_trip(&r, (unsigned)threads, NULL); /* first touch, by the readers' split */
        const long long huge = huge_bytes(buf, bytes);
        const double read_bytes = (double)(bytes / 4096 * 4096);

        /* Every variant `passes` times, interleaved; then `extra` more passes of the FINALISTS
         * best so far, interleaved too: noise only ever slows a pass down, so more passes of
         * the contenders bring the best figure nearer the real ceiling. */
        const double t_start = now_s();
        int top[2] = { 0, 0 };
        for (int c = 0; c < n_counts; c++) {
                for (long p = 0; p < passes; p++)
                        for (int v = 0; v < nv; v++) {
                                const double s = round_trip(&r, counts[c], vs[v].fn);
                                vs[v].gbs[c][vs[v].n[c]++] = read_bytes / s / 1e9;
                        }
                for (int v = 0; v < nv; v++) {
                        vs[v].best[c] = 0;
                        for (int i = 0; i < vs[v].n[c]; i++)
                                if (vs[v].gbs[c][i] > vs[v].best[c])
                                        vs[v].best[c] = vs[v].gbs[c][i];
                }
                int fin[FINALISTS], nf = 0; /* the FINALISTS best so far, best first */
                for (; nf < FINALISTS && nf < nv; nf++) {
                        int b = -1;
                        for (int v = 0; v < nv; v++) {
                                int taken = 0;
                                for (int f = 0; f < nf; f++)
                                        taken |= fin[f] == v;
                                if (!taken && (b < 0 || vs[v].best[c] > vs[b].best[c]))
                                        b = v;
                        }
                        fin[nf] = b;
                }
                for (long p = 0; p < extra; p++)
                        for (int f = 0; f < nf; f++) {
                                Variant *v = &vs[fin[f]];
                                const double s = round_trip(&r, counts[c], v->fn);
                                v->gbs[c][v->n[c]++] = read_bytes / s / 1e9;
                        }
                /* best pass and median per variant; the best variant */
                for (int v = 0; v < nv; v++) {
                        double *g = vs[v].gbs[c];
                        const int n = vs[v].n[c];
                        qsort(g, (size_t)n, sizeof(double), cmp_double);
                        vs[v].best[c] = g[n - 1];
                        vs[v].med[c] = n % 2 ? g[n / 2] : 0.5 * (g[n / 2 - 1] + g[n / 2]);
                        if (vs[v].best[c] > vs[top[c]].best[c])
                                top[c] = v;
                }
        }
        const double elapsed = now_s() - t_start;
        /* the simplest variant (one stream, no prefetch, widest loads): what a plain loop gets */
        const Variant *plain = &vs[0];

        const int all = n_counts - 1;
        printf("{\"kernel\":\"%s\",\"isa\":\"%s\",\"buffer_mib\":%ld,\"passes\":%ld,\"extra_passes\":%ld,"
               "\"finalists\":%d,\"threads\":%ld,\"touch_s\":%.3f,\"huge_page_bytes\":%lld,\"elapsed_s\":%.1f,",
               vs[0].isa, isa_opt, mib, passes, extra, FINALISTS, threads, touch_s, huge, elapsed);
        printf("\"1_thread\":%.2f,\"all_threads\":%.2f,\"best_1_thread\":\"%s\",\"best_all_threads\":\"%s\","
               "\"plain_1_thread\":%.2f,\"plain_all_threads\":%.2f,\"plain\":\"%s\",",
               vs[top[0]].best[0], vs[top[all]].best[all], vs[top[0]].name, vs[top[all]].name, plain->best[0],
               plain->best[all], plain->name);
        printf("\"thread_counts\":[");
        for (int c = 0; c < n_counts; c++)
                printf("%s%u", c ? "," : "", counts[c]);
        printf("],\"variants\":[");
        for (int v = 0; v < nv; v++) {
                printf("%s{\"name\":\"%s\",\"isa\":\"%s\",\"streams\":%d,\"prefetch\":%d,\"gbs\":[", v ? "," : "",
                       vs[v].name, vs[v].isa, vs[v].streams, vs[v].prefetch);
                for (int c = 0; c < n_counts; c++)
                        printf("%s%.2f", c ? "," : "", vs[v].best[c]);
                printf("],\"gbs_median\":[");
                for (int c = 0; c < n_counts; c++)
                        printf("%s%.2f", c ? "," : "", vs[v].med[c]);
                printf("],\"passes_run\":[");
                for (int c = 0; c < n_counts; c++)
                        printf("%s%d", c ? "," : "", vs[v].n[c]);
                printf("]}");
        }
        printf("],\"checksum\":%llu}\n", (unsigned long long)r.sink);
        for (int v = 0; v < nv; v++)
                for (int c = 0; c < n_counts; c++)
                        free(vs[v].gbs[c]);
        munmap(raw, bytes + ALIGN_2M);
        return 0;
}
