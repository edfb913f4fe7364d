/* daemon/jobs.c — the job list (see jobs.h). Loop thread only. */
#include "jobs.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "log.h"

void jobs_init(JobList *l, Scheduler *sched, SessionTable *sessions, Outbox *ob, JobEndFn on_end, void *data) {
        *l = (JobList){ .sched = sched, .sessions = sessions, .on_end = on_end, .on_end_data = data };
        l->env.outbox = ob;
}

void jobs_set_model(JobList *l, const Model *m, uint64_t max_prompt_tokens) {
        l->env.m = m;
        l->env.max_prompt_tokens = max_prompt_tokens;
}

static void job_free(Job *j) {
        job_rounds_done(j);
        request_free(&j->req);
        free(j);
}

static void release_session(JobList *l, Job *j) {
        if (j->ds) {
                sessions_release(l->sessions, j->ds, now_ms());
                j->ds = NULL;
        }
}

int jobs_start(JobList *l, JobKind kind, uint64_t conn_id, uid_t uid, Request *req, DSession *ds, bool named,
               uint64_t timeout_ms) {
        Job *j = calloc(1, sizeof(*j));
        if (!j)
                return -ENOMEM;
        j->env = &l->env;
        j->kind = kind;
        j->conn_id = conn_id;
        j->uid = uid;
        j->req = *req; /* ownership moves to the job */
        memset(req, 0, sizeof(*req));
        j->deadline_ms = now_ms() + timeout_ms;
        if (ds) {
                ds->busy = true;
                j->ds = ds;
                j->s = ds->s;
                j->session_named = named;
        }
        job_rounds_init(j);
        j->next = l->head;
        l->head = j;
        l->n++;
        sched_submit(l->sched, &j->sj);
        return 0;
}

bool jobs_in_progress(const JobList *l, uint64_t conn_id, uint64_t req_id) {
        for (const Job *j = l->head; j; j = j->next)
                if (j->conn_id == conn_id && j->req.id == req_id)
                        return true;
        return false;
}

static void cancel(JobList *l, Job *j) {
        __atomic_store_n(&j->cancel, 1, __ATOMIC_RELAXED);
        if (j->backpressured) { /* it must run to see the flag */
                j->backpressured = false;
                sched_set_paused(l->sched, &j->sj, false);
        }
}

unsigned jobs_cancel_request(JobList *l, uint64_t conn_id, uint64_t req_id) {
        unsigned n = 0;
        for (Job *j = l->head; j; j = j->next)
                if (j->conn_id == conn_id && j->req.id == req_id) {
                        cancel(l, j);
                        n++;
                }
        return n;
}

unsigned jobs_cancel_conn(JobList *l, uint64_t conn_id) {
        unsigned n = 0;
        for (Job *j = l->head; j; j = j->next)
                if (j->conn_id == conn_id) {
                        cancel(l, j);
                        n++;
                }
        return n;
}

unsigned jobs_cancel_session(JobList *l, const DSession *ds) {
        unsigned n = 0;
        for (Job *j = l->head; j; j = j->next)
                if (j->ds == ds) {
                        cancel(l, j);
                        n++;
                }
        return n;
}

unsigned jobs_cancel_all(JobList *l) {
        unsigned n = 0;
        for (Job *j = l->head; j; j = j->next) {
                cancel(l, j);
                n++;
        }
        return n;
}

unsigned jobs_expire(JobList *l, uint64_t now) {
        unsigned n = 0;
        for (Job *j = l->head; j; j = j->next)
                if (now > j->deadline_ms && !__atomic_load_n(&j->cancel, __ATOMIC_RELAXED)) {
                        log_notice("request %llu exceeded the request timeout; cancelling", (unsigned long long)j->req.id);
                        cancel(l, j);
                        n++;
                }
        return n;
}

void jobs_frame_sent(JobList *l, Job *j, bool last, bool over_soft) {
        if (last)
                release_session(l, j);
        if (over_soft && !j->backpressured) {
                /* backpressure: a slow reader pauses its own generation */
                j->backpressured = true;
                sched_set_paused(l->sched, &j->sj, true);
        }
}

void jobs_finished(JobList *l, Job *j) {
        for (Job **p = &l->head; *p; p = &(*p)->next)
                if (*p == j) {
                        *p = j->next;
                        break;
                }
        l->n--;
        release_session(l, j);
        if (j->kind == JOB_GENERATE)
                l->tokens_generated += (uint64_t)j->gen.n_generated;
        const uint64_t conn_id = j->conn_id;
        job_free(j);
        if (l->on_end)
                l->on_end(l->on_end_data, conn_id);
}

void jobs_resume_conn(JobList *l, uint64_t conn_id) {
        for (Job *j = l->head; j; j = j->next)
                if (j->conn_id == conn_id && j->backpressured) {
                        j->backpressured = false;
                        sched_set_paused(l->sched, &j->sj, false);
                }
}

uint64_t jobs_take_tokens_window(JobList *l) {
        return __atomic_exchange_n(&l->env.tokens_window, 0, __ATOMIC_RELAXED);
}
