/* daemon/jobs.c — the job list (see jobs.h): what jobs hold, the wait for room in the KV
 * budget and the shares that decide who gets it, cancelling and its answers. Loop thread. */
#include "jobs.h"

#include <errno.h>
#include <stdio.h>
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

void jobs_set_limits(JobList *l, uint64_t max_bytes, uint64_t max_bytes_per_uid, uint64_t request_timeout_s,
                     uint64_t unread_timeout_s) {
        l->max_bytes = max_bytes;
        l->max_bytes_per_uid = max_bytes_per_uid;
        l->env.request_timeout_s = request_timeout_s;
        l->env.unread_timeout_s = unread_timeout_s;
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

/* Run j on ds (busy from now on): into the scheduler. */
static void run(JobList *l, Job *j, DSession *ds, bool named) {
        if (ds) {
                ds->busy = true;
                j->ds = ds;
                j->s = ds->s;
                j->session_named = named;
        }
        j->waiting = false;
        sched_submit(l->sched, &j->sj);
}

static bool needs_session(const Job *j) {
        return j->kind == JOB_GENERATE || j->kind == JOB_SCORE || j->kind == JOB_SESSION_OPEN;
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
        j->seq = ++l->seq;
        j->req = *req; /* ownership moves to the job */
        memset(req, 0, sizeof(*req));
        j->deadline_ms = now_ms() + timeout_ms;
        job_rounds_init(j);
        j->next = l->head;
        l->head = j;
        l->n++;
        if (!ds && needs_session(j)) {
                j->waiting = true; /* for room in the KV budget */
                l->n_waiting++;
                jobs_admit(l);
        } else {
                run(l, j, ds, named);
        }
        return 0;
}

bool jobs_in_progress(const JobList *l, uint64_t conn_id, uint64_t req_id) {
        for (const Job *j = l->head; j; j = j->next)
                if (j->conn_id == conn_id && j->req.id == req_id)
                        return true;
        return false;
}

static bool answer_error(JobList *l, Job *j, const char *code, const char *msg);

/* Take j off the list and free it; the server hears of it. */
static void unlink_and_free(JobList *l, Job *j) {
        for (Job **p = &l->head; *p; p = &(*p)->next)
                if (*p == j) {
                        *p = j->next;
                        break;
                }
        l->n--;
        l->n_waiting -= j->waiting;
        release_session(l, j);
        if (j->kind == JOB_GENERATE)
                l->tokens_generated += (uint64_t)j->gen.n_generated;
        if (!j->answered) {
                /* every request ends in exactly one reply or error: its own could not be made or
                 * queued (out of memory), so the list answers for it */
                log_error("request %llu (uid %u) on connection %llu ended without a reply; answering with an error",
                          (unsigned long long)j->req.id, (unsigned)j->uid, (unsigned long long)j->conn_id);
                j->answered = answer_error(l, j, "internal", "the request ended without a reply (out of memory?)");
        }
        const uint64_t conn_id = j->conn_id;
        const bool answered = j->answered;
        job_free(l, j);
        if (l->on_end)
                l->on_end(l->on_end_data, conn_id, answered);
}

static void cancel(JobList *l, Job *j, int why) {
        if (__atomic_load_n(&j->cancel, __ATOMIC_RELAXED))
                return; /* the first reason stands */
        __atomic_store_n(&j->cancel, why, __ATOMIC_RELAXED);
        if (j->waiting || (j->kind != JOB_SESSION_OPEN && sched_remove_untaken(l->sched, &j->sj))) {
                /* never begun: answered and freed now, not when its turn would have come */
                job_answer_stopped(j);
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

static unsigned cancel_matching(JobList *l, const Match *m, int why) {
        unsigned n = 0;
        for (Job *j = l->head, *next; j; j = next) {
                next = j->next; /* cancelling may free j */
                if (matches(j, m)) {
                        cancel(l, j, why);
                        n++;
                }
        }
        return n;
}

unsigned jobs_cancel_request(JobList *l, uint64_t conn_id, uint64_t req_id) {
        return cancel_matching(l, &(Match){ .conn_id = conn_id, .one_request = true, .req_id = req_id }, JOB_STOP_ASKED);
}

unsigned jobs_cancel_conn(JobList *l, uint64_t conn_id) {
        return cancel_matching(l, &(Match){ .conn_id = conn_id }, JOB_STOP_ASKED);
}

unsigned jobs_cancel_unread(JobList *l, uint64_t conn_id) {
        return cancel_matching(l, &(Match){ .conn_id = conn_id }, JOB_STOP_UNREAD);
}

unsigned jobs_cancel_session(JobList *l, const DSession *ds) {
        return cancel_matching(l, &(Match){ .ds = ds }, JOB_STOP_ASKED);
}

unsigned jobs_cancel_all(JobList *l) {
        return cancel_matching(l, &(Match){ .all = true }, JOB_STOP_ASKED);
}

unsigned jobs_expire(JobList *l, uint64_t now) {
        unsigned n = 0;
        for (Job *j = l->head, *next; j; j = next) {
                next = j->next; /* cancelling may free j */
                if (now > j->deadline_ms && !__atomic_load_n(&j->cancel, __ATOMIC_RELAXED)) {
                        log_notice("request %llu (uid %u) %s the request timeout; cancelling", (unsigned long long)j->req.id,
                                   (unsigned)j->uid, j->waiting ? "waited for room in the KV budget past" : "exceeded");
                        cancel(l, j, j->waiting ? JOB_STOP_NO_ROOM : JOB_STOP_ASKED);
                        n++;
                }
        }
        return n;
}

/* ------------------------------------------------------------------ room in the KV budget */

/* What one uid holds in the KV budget, and how much of it its stopped one-shot jobs will give
 * back when they end; gathered once per decision (uids are few, jobs may be many). */
typedef struct UidKv {
        uid_t uid;
        uint64_t kv, freeing;
} UidKv;

typedef struct UidMemo {
        UidKv *v;
        unsigned n, cap;
} UidMemo;

static bool stopped(const Job *j) {
        return __atomic_load_n(&j->cancel, __ATOMIC_RELAXED) != 0;
}

/* uid's entry (NULL without memory: then callers treat the uid as holding nothing). */
static UidKv *memo_get(UidMemo *m, const JobList *l, uid_t uid) {
        for (unsigned i = 0; i < m->n; i++)
                if (m->v[i].uid == uid)
                        return &m->v[i];
        if (m->n == m->cap) {
                const unsigned cap = m->cap ? 2 * m->cap : 16;
                UidKv *v = realloc(m->v, cap * sizeof(*v));
                if (!v)
                        return NULL;
                m->v = v;
                m->cap = cap;
        }
        UidKv *e = &m->v[m->n++];
        *e = (UidKv){ .uid = uid, .kv = sessions_uid_bytes(l->sessions, uid) };
        for (const Job *j = l->head; j; j = j->next)
                if (j->uid == uid && j->ds && j->ds->ephemeral && stopped(j))
                        e->freeing += j->ds->kv_bytes;
        return e;
}

static uint64_t memo_kv(UidMemo *m, const JobList *l, uid_t uid) {
        const UidKv *e = memo_get(m, l, uid);
        return e ? e->kv : 0;
}

/* The waiting job to admit first: its uid holds the least KV; among equals, the oldest. */
static Job *next_waiting(const JobList *l, UidMemo *m) {
        Job *best = NULL;
        uint64_t best_kv = 0;
        for (Job *j = l->head; j; j = j->next) {
                if (!j->waiting)
                        continue;
                const uint64_t kv = memo_kv(m, l, j->uid);
                if (!best || kv < best_kv || (kv == best_kv && j->seq < best->seq)) {
                        best = j;
                        best_kv = kv;
                }
        }
        return best;
}

/* A uid's fair share: the budget over the uids that hold KV or wait for it. */
static uint64_t fair_share(const JobList *l) {
        uid_t *want = l->n_waiting ? malloc(l->n_waiting * sizeof(*want)) : NULL;
        unsigned n = 0;
        for (const Job *j = l->head; want && j; j = j->next)
                if (j->waiting)
                        want[n++] = j->uid;
        const uint64_t share = sessions_share(l->sessions, want, n);
        free(want);
        return share;
}

/* w cannot have a session now. If its uid is within its share of the budget, stop one-shot
 * work of uids over theirs, newest first, until what is free and what they give back covers
 * w; it gets the room when they end (their answer: over_limit). */
static void make_room(JobList *l, const Job *w, UidMemo *m) {
        const SessionTable *t = l->sessions;
        uint64_t need;
        if (sessions_bytes_each(t, &need) < 0)
                return;
        const uint64_t share = fair_share(l);
        if (memo_kv(m, l, w->uid) + need > share)
                return; /* w's user already has its share: it waits its turn */
        uint64_t coming = t->kv_used < t->lim.kv_budget ? t->lim.kv_budget - t->kv_used : 0;
        for (const Job *j = l->head; j; j = j->next)
                if (j->ds && j->ds->ephemeral && stopped(j))
                        coming += j->ds->kv_bytes;
        /* the list runs newest first */
        for (Job *j = l->head, *next; j && coming < need; j = next) {
                next = j->next; /* stopping may free j */
                if (!j->ds || !j->ds->ephemeral || j->uid == w->uid || stopped(j))
                        continue;
                UidKv *e = memo_get(m, l, j->uid);
                if (!e || e->kv - e->freeing <= share)
                        continue;
                log_notice("uid %u holds %llu bytes of KV, over its share of %llu while uid %u waits: cancelling its "
                           "request %llu", (unsigned)j->uid, (unsigned long long)e->kv, (unsigned long long)share,
                           (unsigned)w->uid, (unsigned long long)j->req.id);
                const uint64_t kv = j->ds->kv_bytes;
                e->freeing += kv;
                coming += kv;
                cancel(l, j, JOB_STOP_SHARE);
        }
}

/* A session.open that waited: its reply (or the error saying why it could not be framed).
 * Sets j->answered once it is queued. */
static void answer_opened(JobList *l, Job *j, const DSession *ds, unsigned evicted) {
        ProtoOut o;
        ProtoError err;
        uint8_t *frame;
        size_t len;
        proto_out_init(&o);
        proto_out_ok(&o, j->req.id, 4);
        proto_out_kv_str(&o, "session", ds->id);
        proto_out_kv_uint(&o, "capacity", ds->s->kv->n_slots);
        proto_out_kv_uint(&o, "kv_bytes", ds->kv_bytes);
        proto_out_kv_uint(&o, "evicted", evicted);
        int r = proto_out_frame_or_error(&o, j->req.id, &frame, &len, &err);
        proto_out_done(&o);
        if (r > 0)
                log_warning("request %llu on connection %llu: %s", (unsigned long long)j->req.id,
                            (unsigned long long)j->conn_id, err.message);
        if (r >= 0 && outbox_push(l->env.outbox, j->conn_id, NULL, frame, len, false) == 0)
                j->answered = true;
}

/* An error reply for j, through the outbox (after what is queued already); true once queued. */
static bool answer_error(JobList *l, Job *j, const char *code, const char *msg) {
        ProtoError err = { .code = code, .has_id = true, .id = j->req.id };
        uint8_t *frame;
        size_t len;
        snprintf(err.message, sizeof(err.message), "%s", msg);
        return proto_error_encode(&err, &frame, &len) == 0 &&
               outbox_push(l->env.outbox, j->conn_id, NULL, frame, len, false) == 0;
}

void jobs_admit(JobList *l) {
        UidMemo m = { 0 };
        Job *w;
        while ((w = next_waiting(l, &m))) {
                DSession *ds;
                unsigned evicted;
                int r = sessions_open(l->sessions, w->uid, w->kind != JOB_SESSION_OPEN, now_ms(), &ds, &evicted);
                m.n = 0; /* what uids hold has changed (or may, below) */
                if (r == -ENOSPC) {
                        const uint64_t before = l->sessions->kv_used;
                        make_room(l, w, &m);
                        m.n = 0;
                        if (l->sessions->kv_used < before)
                                continue; /* a stopped job not yet begun gave its room back at once */
                        break;
                }
                if (evicted)
                        log_info("evicted %u idle session(s) for uid %u", evicted, (unsigned)w->uid);
                l->n_waiting--;
                w->waiting = false;
                if (r < 0) {
                        w->answered = answer_error(l, w, r == -EUSERS ? "over_limit" : "internal",
                                                   r == -EUSERS ? "session limit reached" : strerror(-r));
                        unlink_and_free(l, w);
                } else if (w->kind == JOB_SESSION_OPEN) {
                        answer_opened(l, w, ds, evicted);
                        unlink_and_free(l, w);
                } else {
                        run(l, w, ds, false);
                }
        }
        free(m.v);
}

void jobs_frame_sent(JobList *l, Job *j, bool last, bool over_soft) {
        if (last)
                release_session(l, j);
        if (over_soft && !j->backpressured && !__atomic_load_n(&j->cancel, __ATOMIC_RELAXED)) {
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
