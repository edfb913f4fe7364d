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
 * from here). conn_id: the connection that asked for it. */
typedef void (*JobEndFn)(void *data, uint64_t conn_id);

typedef struct JobList {
        Job *head;
        unsigned n;
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

/* Start a job for req (ownership passes on success). ds (may be NULL): the session it runs on,
 * marked busy until the job's last frame; named: a named session, else ds is the job's own
 * one-shot session. timeout_ms: the request timeout. -ENOMEM (req and ds untouched). */
int jobs_start(JobList *l, JobKind kind, uint64_t conn_id, uid_t uid, Request *req, DSession *ds, bool named,
               uint64_t timeout_ms);
/* Whether request req_id of conn_id is in progress. */
bool jobs_in_progress(const JobList *l, uint64_t conn_id, uint64_t req_id);

/* Ask jobs to stop at their next step. Returns how many were asked. */
unsigned jobs_cancel_request(JobList *l, uint64_t conn_id, uint64_t req_id);
unsigned jobs_cancel_conn(JobList *l, uint64_t conn_id);
unsigned jobs_cancel_session(JobList *l, const DSession *ds);
unsigned jobs_cancel_all(JobList *l);
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
