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

void jobs_set_limits(JobList *l, uint64_t max_bytes, uint64_t max_bytes_per_uid) {
        l->max_bytes = max_bytes;
        l->max_bytes_per_uid = max_bytes_per_uid;
}

uint64_t jobs_charge(uint64_t wire_bytes) {
        return sizeof(Job) + wire_bytes;
}

static JobUid *uid_entry(const JobList *l, uid_t uid) {
        for (JobUid *u = l->uids; u; u = u->next)
                if (u->uid == uid)
                        return u;
        return NULL;
}

uint64_t jobs_uid_bytes(const JobList *l, uid_t uid) {
        const JobUid *u = uid_entry(l, uid);
        return u ? u->bytes : 0;
}

int jobs_check_bytes(const JobList *l, uid_t uid, uint64_t bytes, uint64_t *ret_held) {
        const uint64_t mine = jobs_uid_bytes(l, uid);
        if (mine + bytes > l->max_bytes_per_uid) {
                *ret_held = mine;
                return -EDQUOT;
        }
        if (l->bytes + bytes > l->max_bytes) {
                *ret_held = l->bytes;
                return -ENOBUFS;
        }
        return 0;
}

/* Count bytes for uid (may fail only when adding: -ENOMEM). */
static int charge(JobList *l, uid_t uid, int64_t delta) {
        JobUid *u = uid_entry(l, uid);
        if (!u) {
                if (delta <= 0)
                        return 0;
                u = calloc(1, sizeof(*u));
                if (!u)
                        return -ENOMEM;
                u->uid = uid;
                u->next = l->uids;
                l->uids = u;
        }
        u->bytes += (uint64_t)delta;
        l->bytes += (uint64_t)delta;
        if (u->bytes == 0)
                for (JobUid **p = &l->uids; *p; p = &(*p)->next)
                        if (*p == u) {
                                *p = u->next;
                                free(u);
                                break;
                        }
        return 0;
}

static void job_free(JobList *l, Job *j) {
        charge(l, j->uid, -(int64_t)j->bytes);
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

int jobs_start(JobList *l, JobKind kind, uint64_t conn_id, uid_t uid, Request *req, uint64_t bytes, DSession *ds,
               bool named, uint64_t timeout_ms) {
        Job *j = calloc(1, sizeof(*j));
        if (!j || charge(l, uid, (int64_t)bytes) < 0) {
                free(j);
                return -ENOMEM;
        }
        j->bytes = bytes;
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

/* Take j off the list and free it; the server hears of it. */
static void unlink_and_free(JobList *l, Job *j) {
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
        job_free(l, j);
        if (l->on_end)
                l->on_end(l->on_end_data, conn_id);
}

static void cancel(JobList *l, Job *j) {
        __atomic_store_n(&j->cancel, 1, __ATOMIC_RELAXED);
        if (sched_remove_untaken(l->sched, &j->sj)) {
                /* never begun: answered and freed now, not when its turn would have come */
                job_answer_cancelled(j);
                unlink_and_free(l, j);
                return;
        }
        if (j->backpressured) { /* it must run to see the flag */
                j->backpressured = false;
                sched_set_paused(l->sched, &j->sj, false);
        }
}

/* Which jobs to cancel: those of a connection (req_id: any, or one request), of a session,
 * or all. */
typedef struct Match {
        bool all;
        uint64_t conn_id;
        bool one_request;
        uint64_t req_id;
        const DSession *ds;
} Match;

static bool matches(const Job *j, const Match *m) {
        if (m->all)
                return true;
        if (m->ds)
                return j->ds == m->ds;
        return j->conn_id == m->conn_id && (!m->one_request || j->req.id == m->req_id);
}

static unsigned cancel_matching(JobList *l, const Match *m) {
        unsigned n = 0;
        for (Job *j = l->head, *next; j; j = next) {
                next = j->next; /* cancelling may free j */
                if (matches(j, m)) {
                        cancel(l, j);
                        n++;
                }
        }
        return n;
}

unsigned jobs_cancel_request(JobList *l, uint64_t conn_id, uint64_t req_id) {
        return cancel_matching(l, &(Match){ .conn_id = conn_id, .one_request = true, .req_id = req_id });
}

unsigned jobs_cancel_conn(JobList *l, uint64_t conn_id) {
        return cancel_matching(l, &(Match){ .conn_id = conn_id });
}

unsigned jobs_cancel_session(JobList *l, const DSession *ds) {
        return cancel_matching(l, &(Match){ .ds = ds });
}

unsigned jobs_cancel_all(JobList *l) {
        return cancel_matching(l, &(Match){ .all = true });
}

unsigned jobs_expire(JobList *l, uint64_t now) {
        unsigned n = 0;
        for (Job *j = l->head, *next; j; j = next) {
                next = j->next;
                if (now > j->deadline_ms && !__atomic_load_n(&j->cancel, __ATOMIC_RELAXED)) {
                        log_notice("request %llu exceeded the request timeout; cancelling", (unsigned long long)j->req.id);
                        cancel(l, j);
                        n++;
                }
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
        unlink_and_free(l, j);
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
