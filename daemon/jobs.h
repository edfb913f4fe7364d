/* daemon/jobs.h — the job list: every request that computes, from the moment the loop
 * accepts it until the loop frees it. This module is the only one that adds, removes or walks
 * jobs; the rest of the daemon asks it to start, cancel, pause or resume them by connection,
 * request or session. Loop thread only (the engine side of a job is job.h / rounds.c). */
#pragma once
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "job.h"
#include "outbox.h"
#include "sched.h"
#include "sessions.h"

/* Called after a job has left the list (the list is consistent; do not start or cancel jobs
 * from here, nor close connections). conn_id: the connection that asked for it. Every request
 * ends in exactly one reply or error: a job that could not queue its own is answered by the
 * list (an "internal" error, after whatever the job queued); answered false: not even that
 * could be queued (out of memory), and the client would wait forever unless its connection
 * is closed. */
typedef void (*JobEndFn)(void *data, uint64_t conn_id, bool answered);

/* Bytes held by one uid's jobs. */
typedef struct JobUid {
        uid_t uid;
        uint64_t bytes;
        struct JobUid *next;
} JobUid;

typedef struct JobList {
        Job *head;
        unsigned n;
        unsigned n_waiting;          /* of them, waiting for room in the KV budget */
        uint64_t seq;                /* arrival counter */
        uint64_t bytes;              /* held by all jobs: their requests as received, and the Job */
        uint64_t max_bytes, max_bytes_per_uid;
        JobUid *uids;                /* uids with jobs */
        JobEnv env;                  /* shared by every job */
        Scheduler *sched;            /* borrowed */
        SessionTable *sessions;      /* borrowed */
        uint64_t tokens_generated;   /* by finished generations */
        JobEndFn on_end;
        void *on_end_data;
} JobList;

void jobs_init(JobList *l, Scheduler *sched, SessionTable *sessions, Outbox *ob, JobEndFn on_end, void *data);
/* The model and prompt limit jobs see; only while the list is empty. */
void jobs_set_model(JobList *l, const Model *m, uint64_t max_prompt_tokens);
/* Bounds on the bytes jobs hold, all together and per uid; the request and unread timeouts
 * (seconds; unread 0: never). */
void jobs_set_limits(JobList *l, uint64_t max_bytes, uint64_t max_bytes_per_uid, uint64_t request_timeout_s,
                     uint64_t unread_timeout_s);
/* What a job for a request of wire_bytes (its frame body) holds, as jobs_start counts it. */
uint64_t jobs_charge(uint64_t wire_bytes);
/* Whether uid may start a job holding `bytes`: 0, -EDQUOT (its own bound) or -ENOBUFS (the
 * bound of all jobs). *ret_held: what it (-EDQUOT) or everyone (-ENOBUFS) holds already. */
int jobs_check_bytes(const JobList *l, uid_t uid, uint64_t bytes, uint64_t *ret_held);
/* Bytes held by uid's jobs. */
uint64_t jobs_uid_bytes(const JobList *l, uid_t uid);

/* Start a job for req (ownership passes on success), holding `bytes` (jobs_charge). ds (may be
 * NULL): the session it runs on, marked busy until the job's last frame; named: a named
 * session, else ds is the job's own one-shot session. A generate or score without ds, and a
 * JOB_SESSION_OPEN, wait for room in the KV budget (see jobs_admit) and are answered when
 * they get it. timeout_ms: the request timeout. -ENOMEM (req and ds untouched). */
int jobs_start(JobList *l, JobKind kind, uint64_t conn_id, uid_t uid, Request *req, uint64_t bytes, DSession *ds,
               bool named, uint64_t timeout_ms);
/* Give waiting jobs the room the KV budget has, the job whose uid holds the least KV first
 * (then the oldest); idle sessions are evicted as sessions_open does. When the first cannot
 * have room and its uid is within its fair share (the budget over the uids that hold KV or
 * wait for it), one-shot work of uids over their share is stopped (answered over_limit) until
 * what it gives back covers it. Call whenever KV may have been freed. */
void jobs_admit(JobList *l);
/* Whether request req_id of conn_id is in progress. */
bool jobs_in_progress(const JobList *l, uint64_t conn_id, uint64_t req_id);

/* Stop jobs: one the engine has not begun is answered and freed at once (its session
 * released), the others stop at their next step. Returns how many were cancelled. */
unsigned jobs_cancel_request(JobList *l, uint64_t conn_id, uint64_t req_id);
unsigned jobs_cancel_conn(JobList *l, uint64_t conn_id);
unsigned jobs_cancel_session(JobList *l, const DSession *ds);
unsigned jobs_cancel_all(JobList *l);
/* Stop a connection's requests because its client reads nothing (they end with a timeout
 * error, their one-shot KV goes back). */
unsigned jobs_cancel_unread(JobList *l, uint64_t conn_id);
/* Cancel the jobs past their deadline (logged); returns how many. */
unsigned jobs_expire(JobList *l, uint64_t now);

/* From the outbox: j's frame went to its connection (or nowhere: closed). last: the request's
 * final frame (its session is released now); over_soft: the connection's write queue is past
 * DAEMON_WRITE_SOFT_LIMIT (the job pauses until resumed). */
void jobs_frame_sent(JobList *l, Job *j, bool last, bool over_soft);
/* From the outbox: j has left the scheduler; it is freed. */
void jobs_finished(JobList *l, Job *j);
/* A connection's write queue drained below DAEMON_WRITE_RESUME: its paused jobs go on. */
void jobs_resume_conn(JobList *l, uint64_t conn_id);
/* Tokens generated since the last call (the engine counts them as they come). */
uint64_t jobs_take_tokens_window(JobList *l);
