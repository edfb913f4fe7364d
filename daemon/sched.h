/* daemon/sched.h — the scheduler: persistent worker threads that step jobs round-robin, one
 * step (a prefill chunk or one token) at a time, so concurrent sessions progress together.
 * sched_submit/sched_wake/sched_stop: loop thread; steps run on workers. */
#pragma once
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "forward.h"
#include "model.h"

/* What a worker thread owns: forward scratch and its router statistics. */
typedef struct Worker {
        unsigned index;
        Forward *fw;
        uint64_t *expert_counts;   /* [n_layer][n_expert], updated with relaxed atomics */
        pthread_t thread;
        struct Scheduler *sched;
} Worker;

typedef struct SchedJob SchedJob;
struct SchedJob {
        SchedJob *next;
        /* One step on a worker: 1 = more to do, 0 = finished (then done() is called). */
        int (*step)(SchedJob *job, Worker *w);
        /* Called on the worker once the job has finished; the job belongs to the caller again. */
        void (*done)(SchedJob *job);
        bool paused;               /* guarded by the scheduler lock: skipped while set */
};

typedef struct Scheduler {
        const Model *m;
        pthread_mutex_t lock;
        pthread_cond_t cond;
        SchedJob *head, *tail;     /* runnable and paused jobs, FIFO */
        unsigned n_jobs, n_running;
        bool stopping;
        unsigned n_workers;        /* threads started */
        unsigned n_alloc;          /* workers allocated */
        Worker *workers;
} Scheduler;

int sched_start(Scheduler *s, const Model *m, unsigned n_workers, uint32_t max_chunk, uint32_t max_slots);
/* Finish: workers exit after their current step and are freed; queued jobs are left to
 * the caller. Safe after a failed sched_start. */
void sched_stop(Scheduler *s);
void sched_submit(Scheduler *s, SchedJob *job);
void sched_set_paused(Scheduler *s, SchedJob *job, bool paused);
unsigned sched_queue_length(Scheduler *s);
/* Sum of every worker's router counts into out [n_layer][n_expert]. */
void sched_expert_counts(Scheduler *s, uint64_t *out);
