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

typedef enum JobKind { JOB_GENERATE, JOB_SCORE, JOB_TOKENIZE, JOB_DETOKENIZE } JobKind;

/* What engine-side code may use. Set by the loop while no job exists (start, reload). */
typedef struct JobEnv {
        const Model *m;
        uint64_t max_prompt_tokens;  /* tokens in one prompt (the max-prompt-tokens setting) */
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
        int cancel;                 /* set by the loop (atomic): stop at the next step */
        /* loop thread */
        DSession *ds;               /* the session table's entry for s, until released */
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
        int32_t *tokens;            /* prompt / text tokens */
        size_t n_tokens;
        size_t n_scored;
        float *logprobs;            /* score: [n_tokens - 1] */
        uint64_t t0_ms, t_prefill_ms;
        OutMsg done_msg;            /* "finished", queued without allocating */
} Job;

/* rounds.c: set the scheduler callbacks for j->kind (loop thread, before submitting). */
void job_rounds_init(Job *j);
/* Answer a job the engine never began (loop thread, once sched_remove_untaken gave it back):
 * a generation's done event with stop_reason "cancelled", else the error "cancelled". The
 * frame goes through the outbox, tagged with no job. */
void job_answer_cancelled(Job *j);
/* Free what the rounds allocated (loop thread, once the job is back from the scheduler). */
void job_rounds_done(Job *j);
