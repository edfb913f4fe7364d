/* tools/bench/sgemm.c — OpenBLAS single-precision GEMM throughput on this machine, as a
 * reference for what the CPU's float units can do: C = A·B with M = N = K (default 2048),
 * every online CPU, one warm-up call, then the best and median of N timed calls.
 * GFLOP/s = 2·M·N·K / seconds / 1e9. Prints one JSON object.
 *
 *   sgemm [--n N] [--reps N] [--threads N] */
#include <cblas.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* OpenBLAS extensions (declared here: not every cblas.h carries them). */
void openblas_set_num_threads(int num_threads);
int openblas_get_num_threads(void);
char *openblas_get_corename(void);

static double now_s(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b) {
        const double x = *(const double *)a, y = *(const double *)b;
        return x < y ? -1 : x > y;
}

static long parse_pos(const char *s, const char *what) {
        char *end;
        errno = 0;
        long v = strtol(s, &end, 10);
        if (errno || *end || v <= 0) {
                fprintf(stderr, "sgemm: %s must be a positive integer\n", what);
                exit(2);
        }
        return v;
}

int main(int argc, char **argv) {
        long n = 2048, reps = 5, threads = sysconf(_SC_NPROCESSORS_ONLN);
        for (int i = 1; i < argc; i++) {
                if (!strcmp(argv[i], "--n") && i + 1 < argc)
                        n = parse_pos(argv[++i], "--n");
                else if (!strcmp(argv[i], "--reps") && i + 1 < argc)
                        reps = parse_pos(argv[++i], "--reps");
                else if (!strcmp(argv[i], "--threads") && i + 1 < argc)
                        threads = parse_pos(argv[++i], "--threads");
                else {
                        fprintf(stderr, "usage: sgemm [--n N] [--reps N] [--threads N]\n");
                        return 2;
                }
        }
        openblas_set_num_threads((int)threads);

        const size_t nn = (size_t)n * (size_t)n;
        float *a = malloc(nn * sizeof(float)), *b = malloc(nn * sizeof(float)), *c = malloc(nn * sizeof(float));
        double *t = malloc((size_t)reps * sizeof(double));
        if (!a || !b || !c || !t) {
                fprintf(stderr, "sgemm: out of memory\n");
                return 1;
        }
        unsigned s = 12345;
        for (size_t i = 0; i < nn; i++) {
                s = s * 1103515245u + 12345u;
                a[i] = (float)((s >> 8) & 0xffff) / 65536.0f - 0.5f;
                s = s * 1103515245u + 12345u;
                b[i] = (float)((s >> 8) & 0xffff) / 65536.0f - 0.5f;
        }
        memset(c, 0, nn * sizeof(float));

        const int N = (int)n;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, N, N, 1.0f, a, N, b, N, 0.0f, c, N); /* warm-up */
        for (long r = 0; r < reps; r++) {
                const double t0 = now_s();
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, N, N, 1.0f, a, N, b, N, 0.0f, c, N);
                t[r] = now_s() - t0;
        }
        qsort(t, (size_t)reps, sizeof(double), cmp_double);
        const double flop = 2.0 * (double)n * (double)n * (double)n;
        printf("{\"m\":%ld,\"n\":%ld,\"k\":%ld,\"threads\":%d,\"core\":\"%s\",\"reps\":%ld,"
               "\"best_s\":%.6f,\"median_s\":%.6f,\"gflops\":%.2f,\"gflops_median\":%.2f,\"c00\":%.6g}\n",
               n, n, n, openblas_get_num_threads(), openblas_get_corename(), reps, t[0], t[reps / 2],
               flop / t[0] / 1e9, flop / t[reps / 2] / 1e9, (double)c[0]);
        free(a);
        free(b);
        free(c);
        free(t);
        return 0;
}
