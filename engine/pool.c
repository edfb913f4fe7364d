/* engine/pool.c — the persistent thread pool (see pool.h). A run is published by bumping a
 * generation counter; the caller then waits for a count of workers still running to reach 0.
 * Both sides poll (up to POOL_SPIN_NS; yielding the CPU after POOL_YIELD_AFTER_NS) before
 * sleeping on a condition variable, and a side takes the mutex only when the other has said
 * it sleeps: back-to-back runs (a decoded token is a few dozen of them) make no system call. The "sleeping" flags and the counters
 * are sequentially consistent atomics, so a store then a load on each side cannot both miss
 * (the sleeper re-checks under the mutex, which the waker takes to signal). */
#include "pool.h"

#include "engine_limits.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdbool.h>
#include <stdlib.h>
#include <time.h>

#if defined(__x86_64__) || defined(__i386__)
#define cpu_relax() __builtin_ia32_pause()
#else
#define cpu_relax() __asm__ __volatile__("" ::: "memory")
#endif

struct Pool {
        unsigned n_threads;
        pthread_t *threads;       /* [n_threads - 1] */
        pthread_mutex_t lock;
        pthread_cond_t wake, done;
        unsigned generation;      /* bumped per run */
        unsigned remaining;       /* workers still running this run */
        unsigned sleepers;        /* workers waiting on wake */
        bool caller_sleeps;       /* the caller waits on done */
        bool stop;
        PoolFn fn;
        void *ctx;
};

#define LOAD(p) __atomic_load_n((p), __ATOMIC_SEQ_CST)
#define STORE(p, v) __atomic_store_n((p), (v), __ATOMIC_SEQ_CST)

static uint64_t now_ns(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Polls until (*p == v) == equal, for up to POOL_SPIN_NS, false if the time ran out first.
 * Past POOL_YIELD_AFTER_NS each poll also yields the CPU, so that on a machine with more
 * runnable threads than CPUs the thread being waited for gets to run. */
static bool spin_until(const unsigned *p, unsigned v, bool equal) {
        uint64_t start = 0, elapsed = 0;
        for (unsigned i = 1;; i++) {
                if ((LOAD(p) == v) == equal)
                        return true;
                if (elapsed >= POOL_YIELD_AFTER_NS)
                        sched_yield();
                else
                        cpu_relax();
                if (i % 64 == 0 || elapsed >= POOL_YIELD_AFTER_NS) {
                        const uint64_t t = now_ns();
                        if (start == 0)
                                start = t;
                        elapsed = t - start;
                        if (elapsed >= POOL_SPIN_NS)
                                return false;
                }
        }
}

typedef struct WorkerArg {
        Pool *pool;
        unsigned index;
} WorkerArg;

static void *worker_main(void *arg) {
        WorkerArg *wa = arg;
        Pool *p = wa->pool;
        const unsigned index = wa->index;
        unsigned seen = 0;
        free(wa);
        for (;;) {
                if (!spin_until(&p->generation, seen, false)) {
                        pthread_mutex_lock(&p->lock);
                        __atomic_add_fetch(&p->sleepers, 1, __ATOMIC_SEQ_CST);
                        while (LOAD(&p->generation) == seen)
                                pthread_cond_wait(&p->wake, &p->lock);
                        __atomic_sub_fetch(&p->sleepers, 1, __ATOMIC_SEQ_CST);
                        pthread_mutex_unlock(&p->lock);
                }
                seen = LOAD(&p->generation);
                if (LOAD(&p->stop))
                        return NULL;
                p->fn(p->ctx, index, p->n_threads);
                if (__atomic_sub_fetch(&p->remaining, 1, __ATOMIC_SEQ_CST) == 0 && LOAD(&p->caller_sleeps)) {
                        pthread_mutex_lock(&p->lock);
                        pthread_cond_signal(&p->done);
                        pthread_mutex_unlock(&p->lock);
                }
        }
}

/* Publishes a new generation and wakes the workers that sleep. */
static void publish(Pool *p) {
        __atomic_add_fetch(&p->generation, 1, __ATOMIC_SEQ_CST);
        if (LOAD(&p->sleepers) > 0) {
                pthread_mutex_lock(&p->lock);
                pthread_cond_broadcast(&p->wake);
                pthread_mutex_unlock(&p->lock);
        }
}

int pool_new(unsigned n_threads, Pool **ret_pool) {
        if (n_threads == 0)
                return -EINVAL;
        Pool *p = calloc(1, sizeof(*p));
        if (!p)
                return -ENOMEM;
        p->n_threads = 1;
        pthread_mutex_init(&p->lock, NULL);
        pthread_cond_init(&p->wake, NULL);
        pthread_cond_init(&p->done, NULL);
        p->threads = calloc(n_threads, sizeof(pthread_t));
        if (!p->threads) {
                pool_free(p);
                return -ENOMEM;
        }
        for (unsigned i = 1; i < n_threads; i++) {
                WorkerArg *wa = malloc(sizeof(*wa));
                if (!wa) {
                        pool_free(p);
                        return -ENOMEM;
                }
                *wa = (WorkerArg){ p, i };
                int r = pthread_create(&p->threads[i - 1], NULL, worker_main, wa);
                if (r) {
                        free(wa);
                        pool_free(p);
                        return -r;
                }
                p->n_threads++;
        }
        *ret_pool = p;
        return 0;
}

Pool *pool_free(Pool *p) {
        if (!p)
                return NULL;
        STORE(&p->stop, true);
        publish(p); /* a worker that wakes or stops polling sees stop */
        for (unsigned i = 0; i + 1 < p->n_threads; i++)
                pthread_join(p->threads[i], NULL);
        free(p->threads);
        pthread_cond_destroy(&p->wake);
        pthread_cond_destroy(&p->done);
        pthread_mutex_destroy(&p->lock);
        free(p);
        return NULL;
}

unsigned pool_size(const Pool *p) {
        return p ? p->n_threads : 1;
}

void pool_run(Pool *p, PoolFn fn, void *ctx) {
        if (!p || p->n_threads == 1) {
                fn(ctx, 0, 1);
                return;
        }
        p->fn = fn;
        p->ctx = ctx;
        STORE(&p->remaining, p->n_threads - 1);
        publish(p);

        fn(ctx, 0, p->n_threads);

        if (!spin_until(&p->remaining, 0, true)) {
                pthread_mutex_lock(&p->lock);
                STORE(&p->caller_sleeps, true);
                while (LOAD(&p->remaining) != 0)
                        pthread_cond_wait(&p->done, &p->lock);
                STORE(&p->caller_sleeps, false);
                pthread_mutex_unlock(&p->lock);
        }
}

static int pin(pthread_t t, unsigned cpu) {
        cpu_set_t set;
        if (cpu >= CPU_SETSIZE)
                return -EINVAL;
        CPU_ZERO(&set);
        CPU_SET(cpu, &set);
        return -pthread_setaffinity_np(t, sizeof(set), &set);
}

int pool_pin(Pool *p, const uint16_t *cpus) {
        for (unsigned t = 1; p && t < p->n_threads; t++) {
                int r = pin(p->threads[t - 1], cpus[t]);
                if (r < 0)
                        return r;
        }
        return 0;
}

int pool_pin_self(unsigned cpu) {
        return pin(pthread_self(), cpu);
}
