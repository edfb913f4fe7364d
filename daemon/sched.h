/* daemon/sched.h — the scheduler: one engine thread that steps every runnable job together.
 * Each round it takes runnable jobs in queue order and asks each what to feed (a prefill
 * chunk, or the one token a generation sampled last round) until the batch is full, runs
 * them all as one forward batch on the thread pool, so sessions that pick the same expert
 * share one pass over its weights, then lets each job take its result. Every row's numbers are
 * the same whatever else is in the batch. Jobs not taken stay in the queue, where the loop may
 * take them back (sched_remove_untaken).
 * sched_submit/sched_set_paused/sched_remove_untaken/sched_*: loop thread; job callbacks: the
 * engine thread. */
#pragma once
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "forward.h"
#include "model.h"
#include "pool.h"

typedef struct SchedJob SchedJob;
struct SchedJob {
        SchedJob *next;
        /* Before a round: fill item with at most max_rows tokens to feed and return 1, or
         * return 0 to feed nothing this round (end() still runs). */
        int (*begin)(SchedJob *job, Forward *fw, uint32_t max_rows, ForwardItem *item);
        /* After the round's batch (err: its result, 0 or -errno): 1 = more rounds, 0 = finished. */
        int (*end)(SchedJob *job, Forward *fw, int err);
        /* Finished: the job belongs to its owner again. */
        void (*done)(SchedJob *job);
        bool paused;               /* guarded by the scheduler lock: skipped while set */
        bool taken;                /* guarded by the scheduler lock: the engine thread has begun it */
};

typedef struct Scheduler {
        const Model *m;
        Pool *pool;
        Forward *fw;
        pthread_t thread;
        bool inited;               /* between sched_start and sched_stop */
        bool started;              /* the engine thread runs */
        pthread_mutex_t lock;
        pthread_cond_t cond;
        SchedJob *head, *tail;     /* FIFO of jobs, paused ones included */
        unsigned n_jobs;
        bool stopping;
        uint64_t *expert_counts;   /* [n_layer][n_expert], written by the engine thread (relaxed atomics) */
        const struct NumaPlan *numa;
} Scheduler;

/* Called once on the engine's Forward before its thread starts (on the caller's thread):
 * e.g. to give it another expert executor (forward_set_experts). A negative errno fails the
 * start. */
typedef struct SchedSetup {
        int (*fn)(void *ctx, const Model *m, Forward *fw);
        void *ctx;
} SchedSetup;

/* threads: the pool's size; max_rows: rows per batch; max_slots: the largest session cache;
 * numa (may be NULL, borrowed): pin the threads and run experts on their nodes' threads;
 * setup: NULL, or called on the Forward (above). */
struct NumaPlan;
int sched_start(Scheduler *s, const Model *m, unsigned threads, uint32_t max_rows, uint32_t max_slots,
                const struct NumaPlan *numa, bool int8, const SchedSetup *setup);
/* The engine thread finishes its current round and is joined, then everything is freed;
 * queued jobs are left to the caller. Safe after a failed sched_start, and a second call does
 * nothing. */
void sched_stop(Scheduler *s);
void sched_submit(Scheduler *s, SchedJob *job);
void sched_set_paused(Scheduler *s, SchedJob *job, bool paused);
/* Take back a job the engine thread has not begun yet (it is then the caller's again, and its
 * done() is never called): true when it was removed, false when the engine has it. */
bool sched_remove_untaken(Scheduler *s, SchedJob *job);
unsigned sched_queue_length(Scheduler *s);
unsigned sched_threads(const Scheduler *s);
/* Router counts into out [n_layer][n_expert]. */
void sched_expert_counts(Scheduler *s, uint64_t *out);
