/* daemon/job.h — one request that computes (generate, score, tokenize, detokenize) as the
 * scheduler's rounds see it. The engine-side code (rounds.c) reaches the rest of the daemon
 * only through the Job's JobEnv: the model, the prompt limit, the outbox and one statistics
 * counter. Fields are marked by the thread that owns them; the job list is jobs.h's. */
#pragma once
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "generate.h"
#include "model.h"
#include "msg.h"
#include "outbox.h"
#include "sched.h"
#include "sessions.h"

/* JOB_SESSION_OPEN: a session.open waiting for room in the KV budget (never in the scheduler). */
typedef enum JobKind { JOB_GENERATE, JOB_SCORE, JOB_TOKENIZE, JOB_DETOKENIZE, JOB_SESSION_OPEN } JobKind;

/* Why a job was told to stop (Job.cancel). */
enum {
        JOB_STOP_ASKED = 1,          /* cancel op, client gone, session closed, request timeout, shutdown, reload */
        JOB_STOP_SHARE,              /* its uid held more than its share of the KV budget while another waited */
        JOB_STOP_UNREAD,             /* its client read nothing for unread-timeout while output waited */
        JOB_STOP_NO_ROOM,            /* waited for room in the KV budget past the request timeout */
};

/* What engine-side code may use. Set by the loop while no job exists (start, reload). */
typedef struct JobEnv {
        const Model *m;
        uint64_t max_prompt_tokens;  /* tokens in one prompt (the max-prompt-tokens setting) */
        uint64_t unread_timeout_s;   /* the unread-timeout setting (for messages) */
        uint64_t request_timeout_s;  /* the request-timeout setting (for messages) */
        Outbox *outbox;              /* every frame goes to the loop through it */
        uint64_t tokens_window;      /* tokens generated, added by the engine (atomic), taken by the loop */
} JobEnv;

typedef struct Job {
        SchedJob sj;                /* first member */
        JobEnv *env;                /* read-only but for its statistics counter */
        JobKind kind;
        uint64_t conn_id;
        uid_t uid;
        Request req;                /* owned */
        uint64_t bytes;             /* what the job holds, as the job list counts it (loop) */
        Session *s;                 /* the session's engine state (generate, score), busy while the job runs */
        bool session_named;         /* a named session that outlives the job */
        int cancel;                 /* 0 or JOB_STOP_*, set by the loop (atomic): stop at the next step */
        bool answered;              /* the request's final frame (reply, error, done event) is queued: set by
                                     * whoever queued it (the engine, or the loop for a job the engine never
                                     * had), read by the loop once the job is back (jobs.h answers if not) */
        /* loop thread */
        DSession *ds;               /* the session table's entry for s, until released */
        bool waiting;               /* for room in the KV budget: not in the scheduler yet */
        uint64_t seq;               /* arrival order */
        bool backpressured;         /* paused for a full write queue */
        uint64_t deadline_ms;
        struct Job *next;           /* the job list */
        /* engine thread */
        bool started;
        bool failed;                /* already answered with an error: finish at end of round */
        bool settle_asked;          /* one more round feeds the last token into a named session */
        uint32_t fed;               /* tokens fed this round */
        float *chunk_logits;        /* score: [DAEMON_PREFILL_CHUNK][V] */
        Generation gen;
        int32_t *tokens;            /* score / tokenize: the text's tokens */
        size_t n_tokens;            /* their count; generate: the prompt's tokens fed (n_prompt) */
        uint64_t n_dropped;         /* generate: session positions its re-tokenization replaced */
        size_t n_scored;
        float *logprobs;            /* score: [n_tokens - 1] */
        uint64_t t0_ms, t_prefill_ms;
        OutMsg done_msg;            /* "finished", queued without allocating */
} Job;

/* rounds.c: set the scheduler callbacks for j->kind (loop thread, before submitting). */
void job_rounds_init(Job *j);
/* Answer a job stopped before the engine began it (loop thread: a waiting job, or one
 * sched_remove_untaken gave back): by j->cancel, an over_limit or timeout error, or for a plain
 * cancel a generation's done event with stop_reason "cancelled" (nothing generated) and the
 * other ops' error "cancelled". The frame goes through the outbox, tagged with no job. */
void job_answer_stopped(Job *j);
/* Free what the rounds allocated (loop thread, once the job is back from the scheduler). */
void job_rounds_done(Job *j);
