/* tests/sanitizers/probe.c — a program with a deliberate defect on an error path, built with
 * the project's sanitizer flags (make MODE=asan build/asan/tests/sanitizer_probe), so that
 * tests/sanitizers/test_exit_codes.sh can show that a sanitizer report changes the exit
 * status to the sanitizers' own code instead of the 1 an error path returns anyway.
 * usage: sanitizer_probe clean|leak|ub|overflow — each prints an error and returns 1;
 * "clean" has no defect, the others leak, overflow a signed int, or read past a heap block. */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv) {
        const char *mode = argc > 1 ? argv[1] : "clean";
        /* volatile: the compiler may not fold the defects away */
        volatile int big = INT_MAX, one = 1, past = 16;
        char *volatile kept = NULL;
        if (!strcmp(mode, "leak")) {
                kept = malloc(64);
                kept = NULL; /* the only pointer is gone: a leak at exit */
        } else if (!strcmp(mode, "ub")) {
                volatile int sum = big + one; /* signed overflow */
                (void)sum;
        } else if (!strcmp(mode, "overflow")) {
                char *p = calloc(16, 1), out[32];
                memcpy(out, p, (size_t)past + 1); /* heap-buffer-overflow read */
                kept = out;
                free(p);
        } else if (strcmp(mode, "clean") != 0) {
                fprintf(stderr, "usage: sanitizer_probe clean|leak|ub|overflow\n");
                return 2;
        }
        (void)kept;
        fprintf(stderr, "sanitizer_probe: %s: an error path, exit status 1\n", mode);
        return 1;
}
