/* daemon/server.h — the daemon's state and the pieces that share it: the libuv loop and its
 * handles (server.c), connections (conn.c), request dispatch on the loop (dispatch.c) and the
 * jobs workers run (jobs.c). Everything here belongs to the loop thread except what is marked
 * "worker": a Job's engine state while the scheduler runs it, and the outbox (locked). */
#pragma once
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <uv.h>

#include "config.h"
#include "generate.h"
#include "daemon_limits.h"
#include "model.h"
#include "msg.h"
#include "numa.h"
#include "sched.h"
#include "sessions.h"

typedef struct Server Server;

typedef struct Conn {
        uv_pipe_t pipe;             /* first member: the handle's memory is the Conn's */
        Server *srv;
        uint64_t id;                /* outbox messages name connections by id, never by pointer */
        uid_t uid;                  /* SO_PEERCRED */
        gid_t gid;
        pid_t pid;
        bool is_admin;
        bool closing;               /* uv_close called (or will be after the last write) */
        bool close_after_write;     /* a fatal protocol error was answered: close once sent */
        FrameReader fr;
        size_t write_queued;        /* bytes handed to uv_write and not yet written */
        unsigned n_jobs;            /* requests of this connection in the scheduler */
        struct Conn *next;
        char rbuf[DAEMON_READ_BATCH];
} Conn;

/* Worker → loop messages. */
typedef struct OutMsg {
        struct OutMsg *next;
        uint64_t conn_id;
        struct Job *job;            /* the job that produced it (for backpressure), or NULL */
        bool job_done;              /* the job has finished: release it */
        bool last;                  /* the request's final frame: release its session now */
        uint8_t *frame;             /* owned encoded frame, or NULL */
        size_t len;
} OutMsg;

typedef enum JobKind { JOB_GENERATE, JOB_SCORE, JOB_TOKENIZE, JOB_DETOKENIZE } JobKind;

typedef struct Job {
        SchedJob sj;                /* first member */
        Server *srv;
        JobKind kind;
        uint64_t conn_id;
        Request req;                /* owned */
        DSession *ds;               /* busy while the job runs (generate, score) */
        bool session_named;         /* ds is a named session that outlives the job */
        int cancel;                 /* set by the loop (atomic): stop at the next step */
        bool backpressured;         /* paused by the loop for a full write queue (loop only) */
        uint64_t deadline_ms;
        /* engine-thread state */
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
        struct Job *next;           /* server's job list (loop) */
} Job;

struct Server {
        uv_loop_t *loop;
        Config *cfg;
        Model *m;
        SessionTable sessions;
        Scheduler sched;
        uv_pipe_t listener;
        bool listening;
        bool own_socket;            /* we bound it (not socket-activated): unlink at exit */
        uv_async_t wakeup;          /* workers → loop: drain the outbox */
        uv_timer_t housekeeping;
        uv_signal_t sig_int, sig_term, sig_hup;
        const char *config_path;    /* re-read on SIGHUP, then argv on top */
        int argc;
        char **argv;
        bool reloading;             /* SIGHUP: waiting for in-flight jobs before swapping models */
        Model *pending_model;       /* the model being swapped in */
        char *pending_path;
        pthread_mutex_t outbox_lock;
        OutMsg *outbox_head, *outbox_tail;
        Conn *conns;
        unsigned n_conns;
        uint64_t next_conn_id;
        Job *jobs;
        unsigned n_jobs;
        bool shutting_down;
        bool saved;                 /* sessions written to the state directory */
        bool save_failed;           /* ... but not all of them: mixd exits with 1 */
        bool guard_reported;        /* the shrunk model file was logged */
        gid_t admin_gid;
        bool have_admin_gid;
        uint64_t start_ms;
        uint64_t model_id;          /* identity of the model file, for session state files */
        NumaPlan numa;              /* n_nodes 0: not planned (off, or no NUMA support) */
        /* statistics */
        uint64_t tokens_generated;  /* total (loop: counted from done events) */
        uint64_t tokens_window;     /* generated since the last housekeeping tick (atomic) */
        double tokens_per_s;        /* moving average */
        uint64_t requests_total;
};

uint64_t now_ms(void);

/* server.c */
int server_run(Config *cfg, const char *config_path, int argc, char **argv);
void server_begin_shutdown(Server *srv, const char *why);
/* Worker side: queue a frame for a connection (takes ownership of frame) / a finished job. */
void outbox_push(Server *srv, uint64_t conn_id, Job *job, uint8_t *frame, size_t len, bool last);
void outbox_job_done(Server *srv, Job *job);

/* conn.c */
int conn_accept(Server *srv);
void conn_send(Conn *c, uint8_t *frame, size_t len);    /* takes ownership of frame */
void conn_send_error(Conn *c, const ProtoError *err);
void conn_close(Conn *c);
Conn *conn_find(Server *srv, uint64_t id);

/* dispatch.c: one decoded request from c (ownership of req passes). */
void dispatch_request(Conn *c, Request *req);
void reply_error(Conn *c, uint64_t id, const char *code, const char *fmt, ...) __attribute__((format(printf, 4, 5)));

/* jobs.c */
Job *job_new(Server *srv, Conn *c, JobKind kind, Request *req);
void job_free(Job *j);
/* Ask a job to stop at its next round (loop thread). */
void job_cancel(Server *srv, Job *j);
