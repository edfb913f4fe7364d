/* daemon/sched.c — worker threads and the round-robin job queue (see sched.h). */
#include "sched.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static void count_route(void *userdata, uint32_t layer, const int32_t *experts, uint32_t k) {
        Worker *w = userdata;
        const uint32_t E = w->sched->m->cfg.n_expert;
        for (uint32_t j = 0; j < k; j++)
                __atomic_fetch_add(&w->expert_counts[(size_t)layer * E + (uint32_t)experts[j]], 1, __ATOMIC_RELAXED);
}

/* First job that is not paused, unlinked; NULL if none. Lock held. */
static SchedJob *take_runnable(Scheduler *s) {
        SchedJob *prev = NULL;
        for (SchedJob *j = s->head; j; prev = j, j = j->next) {
                if (j->paused)
                        continue;
                if (prev)
                        prev->next = j->next;
                else
                        s->head = j->next;
                if (s->tail == j)
                        s->tail = prev;
                j->next = NULL;
                return j;
        }
        return NULL;
}

static void append(Scheduler *s, SchedJob *j) {
        j->next = NULL;
        if (s->tail)
                s->tail->next = j;
        else
                s->head = j;
        s->tail = j;
}

static void *worker_main(void *arg) {
        Worker *w = arg;
        Scheduler *s = w->sched;
        pthread_mutex_lock(&s->lock);
        for (;;) {
                SchedJob *j = NULL;
                while (!s->stopping && !(j = take_runnable(s)))
                        pthread_cond_wait(&s->cond, &s->lock);
                if (s->stopping)
                        break;
                s->n_running++;
                pthread_mutex_unlock(&s->lock);

                int more = j->step(j, w);

                pthread_mutex_lock(&s->lock);
                s->n_running--;
                if (more > 0) {
                        append(s, j); /* back of the line: everyone gets a turn */
                        pthread_cond_signal(&s->cond);
                } else {
                        s->n_jobs--;
                        pthread_mutex_unlock(&s->lock);
                        j->done(j);
                        pthread_mutex_lock(&s->lock);
                }
        }
        pthread_mutex_unlock(&s->lock);
        return NULL;
}

int sched_start(Scheduler *s, const Model *m, unsigned n_workers, uint32_t max_chunk, uint32_t max_slots) {
        const size_t n_counts = (size_t)m->cfg.n_layer * (m->cfg.n_expert ? m->cfg.n_expert : 1);
        int r;
        memset(s, 0, sizeof(*s));
        s->m = m;
        pthread_mutex_init(&s->lock, NULL);
        pthread_cond_init(&s->cond, NULL);
        s->workers = calloc(n_workers, sizeof(Worker));
        if (!s->workers)
                return -ENOMEM;
        s->n_alloc = n_workers;
        for (unsigned i = 0; i < n_workers; i++) {
                Worker *w = &s->workers[i];
                w->index = i;
                w->sched = s;
                w->expert_counts = calloc(n_counts, sizeof(uint64_t));
                r = w->expert_counts ? forward_new(m, max_chunk, max_slots, &w->fw) : -ENOMEM;
                if (r < 0) {
                        sched_stop(s);
                        return r;
                }
                if (m->cfg.n_expert)
                        forward_set_route_hook(w->fw, count_route, w);
        }
        for (unsigned i = 0; i < n_workers; i++) {
                r = -pthread_create(&s->workers[i].thread, NULL, worker_main, &s->workers[i]);
                if (r < 0) {
                        sched_stop(s);
                        return r;
                }
                s->n_workers++;
        }
        return 0;
}

void sched_stop(Scheduler *s) {
        pthread_mutex_lock(&s->lock);
        s->stopping = true;
        pthread_cond_broadcast(&s->cond);
        pthread_mutex_unlock(&s->lock);
        for (unsigned i = 0; i < s->n_workers; i++)
                pthread_join(s->workers[i].thread, NULL);
        for (unsigned i = 0; s->workers && i < s->n_alloc; i++) {
                forward_free(s->workers[i].fw);
                free(s->workers[i].expert_counts);
        }
        free(s->workers);
        s->workers = NULL;
        s->n_workers = s->n_alloc = 0;
        pthread_cond_destroy(&s->cond);
        pthread_mutex_destroy(&s->lock);
}

void sched_submit(Scheduler *s, SchedJob *job) {
        pthread_mutex_lock(&s->lock);
        append(s, job);
        s->n_jobs++;
        pthread_cond_signal(&s->cond);
        pthread_mutex_unlock(&s->lock);
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

void sched_expert_counts(Scheduler *s, uint64_t *out) {
        const size_t n = (size_t)s->m->cfg.n_layer * (s->m->cfg.n_expert ? s->m->cfg.n_expert : 1);
        memset(out, 0, n * sizeof(uint64_t));
        for (unsigned i = 0; i < s->n_workers; i++)
                for (size_t k = 0; k < n; k++)
                        out[k] += __atomic_load_n(&s->workers[i].expert_counts[k], __ATOMIC_RELAXED);
}
