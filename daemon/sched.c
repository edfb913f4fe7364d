/* daemon/sched.c — the engine thread and its round-robin batches (see sched.h). */
#include "sched.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "guard.h"
#include "daemon_limits.h"
#include "numa.h"

static void count_route(void *userdata, uint32_t layer, const int32_t *experts, uint32_t k) {
        Scheduler *s = userdata;
        const uint32_t E = s->m->cfg.n_expert;
        for (uint32_t j = 0; j < k; j++)
                __atomic_fetch_add(&s->expert_counts[(size_t)layer * E + (uint32_t)experts[j]], 1, __ATOMIC_RELAXED);
}

static void append(Scheduler *s, SchedJob *j) {
        j->next = NULL;
        if (s->tail)
                s->tail->next = j;
        else
                s->head = j;
        s->tail = j;
}

static bool any_runnable(const Scheduler *s) {
        for (const SchedJob *j = s->head; j; j = j->next)
                if (!j->paused)
                        return true;
        return false;
}

/* The first runnable job of the queue, unlinked and marked taken, or NULL. Under the lock. */
static SchedJob *take_runnable(Scheduler *s) {
        SchedJob *prev = NULL;
        for (SchedJob **link = &s->head; *link; prev = *link, link = &(*link)->next) {
                SchedJob *j = *link;
                if (j->paused)
                        continue;
                *link = j->next;
                if (s->tail == j)
                        s->tail = prev;
                j->next = NULL;
                j->taken = true;
                return j;
        }
        return NULL;
}

/* One round: runnable jobs are taken in queue order, each asked what it feeds as it is taken,
 * until the batch is full (the others keep their place, and the loop may still remove those
 * it cancels); the batch runs; each job takes its result. Called and returns with the lock. */
static void run_round(Scheduler *s, SchedJob **jobs, ForwardItem *items, unsigned cap) {
        const uint32_t max_rows = forward_max_rows(s->fw);
        uint32_t rows = 0, n_items = 0;
        unsigned n = 0;
        SchedJob *j;
        while (n < cap && rows < max_rows && (j = take_runnable(s))) {
                pthread_mutex_unlock(&s->lock);
                if (j->begin(j, s->fw, max_rows - rows, &items[n_items]) > 0)
                        rows += items[n_items++].n_tokens;
                jobs[n++] = j;
                pthread_mutex_lock(&s->lock);
        }
        pthread_mutex_unlock(&s->lock);

        int err = n_items ? forward_batch(s->fw, items, n_items) : 0;
        if (guard_tripped())
                err = -EIO; /* the model file shrank under us: these results are garbage */

        for (unsigned i = 0; i < n; i++) {
                j = jobs[i];
                const int more = j->end(j, s->fw, err);
                pthread_mutex_lock(&s->lock);
                if (more > 0) {
                        append(s, j); /* back of the line: everyone gets a turn */
                        pthread_mutex_unlock(&s->lock);
                } else {
                        s->n_jobs--;
                        pthread_mutex_unlock(&s->lock);
                        j->done(j);
                }
        }
        pthread_mutex_lock(&s->lock);
}

static void *engine_main(void *arg) {
        Scheduler *s = arg;
        const unsigned cap = forward_max_rows(s->fw);
        SchedJob **jobs = calloc(cap, sizeof(*jobs));
        ForwardItem *items = calloc(cap, sizeof(*items));
        if (!jobs || !items)
                abort(); /* a few KiB at start; nothing sensible to do without them */
        if (s->numa)
                pool_pin_self(s->numa->thread_cpu[0]);

        pthread_mutex_lock(&s->lock);
        for (;;) {
                while (!s->stopping && !any_runnable(s))
                        pthread_cond_wait(&s->cond, &s->lock);
                if (s->stopping)
                        break;
                run_round(s, jobs, items, cap);
        }
        pthread_mutex_unlock(&s->lock);
        free(jobs);
        free(items);
        return NULL;
}

int sched_start(Scheduler *s, const Model *m, unsigned threads, uint32_t max_rows, uint32_t max_slots,
                const NumaPlan *numa, bool int8, const SchedSetup *setup) {
        const size_t n_counts = (size_t)m->cfg.n_layer * (m->cfg.n_expert ? m->cfg.n_expert : 1);
        int r;
        memset(s, 0, sizeof(*s));
        s->m = m;
        pthread_mutex_init(&s->lock, NULL);
        pthread_cond_init(&s->cond, NULL);
        s->inited = true;
        s->expert_counts = calloc(n_counts, sizeof(uint64_t));
        if (!s->expert_counts)
                return -ENOMEM;
        r = pool_new(threads, &s->pool);
        if (r < 0)
                return r;
        r = forward_new(m, max_rows, max_slots, s->pool, &s->fw);
        if (r < 0)
                return r;
        if (numa && numa->n_nodes > 1 && numa->n_threads == threads) {
                s->numa = numa;
                r = pool_pin(s->pool, numa->thread_cpu);
                if (r < 0)
                        return r;
                forward_set_numa(s->fw, numa);
        }
        if (m->cfg.n_expert)
                forward_set_route_hook(s->fw, count_route, s);
        forward_set_int8(s->fw, int8);
        if (setup && setup->fn) {
                r = setup->fn(setup->ctx, m, s->fw);
                if (r < 0)
                        return r;
        }
        r = -pthread_create(&s->thread, NULL, engine_main, s);
        if (r < 0)
                return r;
        s->started = true;
        return 0;
}

void sched_stop(Scheduler *s) {
        if (!s->inited)
                return;
        if (s->started) {
                pthread_mutex_lock(&s->lock);
                s->stopping = true;
                pthread_cond_broadcast(&s->cond);
                pthread_mutex_unlock(&s->lock);
                pthread_join(s->thread, NULL);
                s->started = false;
        }
        s->fw = forward_free(s->fw);
        s->pool = pool_free(s->pool);
        free(s->expert_counts);
        s->expert_counts = NULL;
        pthread_cond_destroy(&s->cond);
        pthread_mutex_destroy(&s->lock);
        s->inited = false;
}

void sched_submit(Scheduler *s, SchedJob *job) {
        pthread_mutex_lock(&s->lock);
        append(s, job);
        s->n_jobs++;
        pthread_cond_signal(&s->cond);
        pthread_mutex_unlock(&s->lock);
}

bool sched_remove_untaken(Scheduler *s, SchedJob *job) {
        bool removed = false;
        pthread_mutex_lock(&s->lock);
        if (!job->taken) {
                SchedJob *prev = NULL;
                for (SchedJob **link = &s->head; *link; prev = *link, link = &(*link)->next)
                        if (*link == job) {
                                *link = job->next;
                                if (s->tail == job)
                                        s->tail = prev;
                                job->next = NULL;
                                s->n_jobs--;
                                removed = true;
                                break;
                        }
        }
        pthread_mutex_unlock(&s->lock);
        return removed;
}

void sched_set_paused(Scheduler *s, SchedJob *job, bool paused) {
        pthread_mutex_lock(&s->lock);
        job->paused = paused;
        if (!paused)
                pthread_cond_signal(&s->cond);
        pthread_mutex_unlock(&s->lock);
}

unsigned sched_queue_length(Scheduler *s) {
        pthread_mutex_lock(&s->lock);
        unsigned n = s->n_jobs;
        pthread_mutex_unlock(&s->lock);
        return n;
}

unsigned sched_threads(const Scheduler *s) {
        return pool_size(s->pool);
}

void sched_expert_counts(Scheduler *s, uint64_t *out) {
        const size_t n = (size_t)s->m->cfg.n_layer * (s->m->cfg.n_expert ? s->m->cfg.n_expert : 1);
        for (size_t k = 0; k < n; k++)
                out[k] = __atomic_load_n(&s->expert_counts[k], __ATOMIC_RELAXED);
}
