/* tests/unit/test_pool.c — the thread pool: every thread index runs exactly once per run,
 * with the right thread count, and a run's writes are visible when pool_run returns; in the
 * three timings that take different paths: back-to-back runs (both sides polling), runs
 * after a pause longer than the polling time (workers asleep), and a worker slower than the
 * polling time (the caller asleep); freeing a pool whose workers sleep. Also built with
 * ThreadSanitizer by `make test`. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "engine_limits.h"
#include "pool.h"

#define MAX_THREADS 4

typedef struct Count {
        unsigned calls[MAX_THREADS]; /* written by thread t only, read after pool_run */
        unsigned n_seen[MAX_THREADS];
        unsigned slow_thread;        /* this thread sleeps slow_ns inside the run */
        long slow_ns;
} Count;

static void sleep_ns(long ns) {
        struct timespec ts = { ns / 1000000000L, ns % 1000000000L };
        while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
                ;
}

static void count_fn(void *ctx, unsigned thread, unsigned n_threads) {
        Count *c = ctx;
        if (thread == c->slow_thread && c->slow_ns > 0)
                sleep_ns(c->slow_ns);
        c->calls[thread]++;
        c->n_seen[thread] = n_threads;
}

static void check_runs(Pool *p, unsigned n, unsigned runs, long pause_ns, unsigned slow_thread, long slow_ns) {
        Count c = { .slow_thread = slow_thread, .slow_ns = slow_ns };
        for (unsigned r = 0; r < runs; r++) {
                if (pause_ns > 0)
                        sleep_ns(pause_ns);
                pool_run(p, count_fn, &c);
                for (unsigned t = 0; t < n; t++) {
                        assert_int_equal(c.calls[t], r + 1); /* once per run, done on return */
                        assert_int_equal(c.n_seen[t], n);
                }
        }
}

static void test_back_to_back(void **state) {
        (void)state;
        for (unsigned n = 1; n <= MAX_THREADS; n++) {
                Pool *p = NULL;
                assert_int_equal(pool_new(n, &p), 0);
                assert_int_equal(pool_size(p), n);
                check_runs(p, n, 20000, 0, 0, 0);
                pool_free(p);
        }
}

static void test_workers_asleep(void **state) {
        (void)state;
        Pool *p = NULL;
        assert_int_equal(pool_new(3, &p), 0);
        check_runs(p, 3, 4, 2 * (long)POOL_SPIN_NS, 0, 0);
        pool_free(p);
}

static void test_caller_asleep(void **state) {
        (void)state;
        Pool *p = NULL;
        assert_int_equal(pool_new(2, &p), 0);
        check_runs(p, 2, 4, 0, 1, 2 * (long)POOL_SPIN_NS); /* worker 1 outlasts the caller's polling */
        check_runs(p, 2, 2000, 0, 0, 0);                    /* and the pool polls again afterwards */
        pool_free(p);
}

static void test_free_sleeping_pool(void **state) {
        (void)state;
        Pool *p = NULL;
        assert_int_equal(pool_new(MAX_THREADS, &p), 0);
        sleep_ns(2 * (long)POOL_SPIN_NS);
        assert_null(pool_free(p)); /* returns: every worker woke and left */
        assert_int_equal(pool_new(0, &p), -EINVAL);
        assert_null(pool_free(NULL));
        assert_int_equal(pool_size(NULL), 1);
}

int main(void) {
        alarm(120); /* a lost wake-up hangs: fail instead */
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_back_to_back),
                cmocka_unit_test(test_workers_asleep),
                cmocka_unit_test(test_caller_asleep),
                cmocka_unit_test(test_free_sleeping_pool),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
