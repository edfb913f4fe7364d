/* daemon/server.h — the daemon's state and the pieces that share it: the libuv loop and its
 * handles (server.c), connections (conn.c) and request dispatch on the loop (dispatch.c).
 * Everything here belongs to the loop thread; the engine thread sees only what jobs.h gives
 * each job (job.h's JobEnv) and reaches the loop through the outbox (outbox.h). */
#pragma once
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <uv.h>

#include "clock.h"
#include "config.h"
#include "daemon_limits.h"
#include "jobs.h"
#include "model.h"
#include "msg.h"
#include "numa.h"
#include "outbox.h"
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
        bool read_eof;              /* the client shut down its sending side (shutdown(SHUT_WR), as
                                     * nc -N and socat do): its requests are answered, then it closes */
        uint64_t drain_check;       /* look at it again at the end of outbox drain number drain_check,
                                     * which brings what the loop queued for it so far (0: none) */
        bool reply_lost;            /* a request of it could not be answered at all (out of memory): it is
                                     * closed at that drain's end, so its client does not wait forever */
        FrameReader fr;
        size_t write_queued;        /* bytes handed to uv_write and not yet written */
        unsigned n_jobs;            /* requests of this connection in the job list */
        uint64_t last_active_ms;    /* last byte read, write completed or request finished */
        uint64_t write_progress_ms; /* output last taken by the client (or began to wait for it) */
        bool unread_stopped;        /* its requests were stopped for unread output (until progress) */
        double loop_ops;            /* status/experts/session.list it may still ask now (token bucket) */
        uint64_t loop_ops_ms;       /* when loop_ops was last topped up */
        uint64_t partial_since_ms;  /* first byte of the frame still incomplete (0: none) */
        struct Conn *next;
        char rbuf[DAEMON_READ_BATCH];
} Conn;

struct Server {
        uv_loop_t *loop;
        Config *cfg;
        Model *m;
        SessionTable sessions;
        Scheduler sched;
        uv_pipe_t listener;
        bool listening;
        bool own_socket;            /* we bound it (not socket-activated): unlink at exit */
        int listen_fds;             /* sockets passed by the service manager (0 or 1), read once */
        Outbox outbox;              /* engine thread → loop */
        uint64_t drains;            /* outbox drains begun */
        unsigned n_drain_checks;    /* connections with a drain_check */
        uv_timer_t housekeeping;
        uv_signal_t sig_int, sig_term, sig_hup;
        const char *config_path;    /* re-read on SIGHUP, then argv on top */
        int argc;
        char **argv;
        bool reloading;             /* SIGHUP: waiting for in-flight jobs before swapping models */
        Model *pending_model;       /* the model being swapped in */
        char *pending_path;
        Conn *conns;
        unsigned n_conns;
        uint64_t next_conn_id;
        JobList jobs;               /* every request that computes */
        bool shutting_down;
        bool saved;                 /* sessions written to the state directory */
        bool save_failed;           /* ... but not all of them: mixd exits with 1 */
        bool guard_reported;        /* the shrunk model file was logged */
        gid_t admin_gid;
        bool have_admin_gid;
        uint64_t start_ms;
        uint64_t model_id;          /* identity of the model file, for session state files */
        NumaPlan numa;              /* n_nodes 0: not planned (off, or no NUMA support) */
        uint64_t huge_bytes;        /* the model's bytes mapped with 2 MiB pages, as status last read them */
        uint64_t huge_read_ms;      /* when (0: not read since the model was loaded) */
        uint64_t front_resident;    /* cluster mode: the front's resident bytes of the model, as status last read them */
        /* statistics */
        double tokens_per_s;        /* moving average */
        uint64_t requests_total;
};

/* server.c */
int server_run(Config *cfg, const char *config_path, int argc, char **argv);
/* The cluster mode (daemon/cluster_main.c), before server_run: setup is called on the engine's
 * Forward when the engine starts (it places the experts and sets the executor). The model is
 * then never re-read for huge pages (that would read every rank's experts) and a reload
 * (SIGHUP) keeps the current model: the other ranks cannot follow it. */
struct Cluster;
void server_set_cluster(const SchedSetup *setup, struct Cluster *cluster);
/* The cluster of the cluster mode (status shows its ranks), NULL otherwise. */
struct Cluster *server_cluster(void);
void server_begin_shutdown(Server *srv, const char *why);

/* conn.c */
int conn_accept(Server *srv);
void conn_send(Conn *c, uint8_t *frame, size_t len);    /* takes ownership of frame */
void conn_send_error(Conn *c, const ProtoError *err);
void conn_close(Conn *c);
Conn *conn_find(Server *srv, uint64_t id);
/* Close connections past the frame or idle timeout, and half-closed ones whose client has
 * gone entirely (housekeeping); returns how many. */
unsigned conn_expire(Server *srv, uint64_t now);
/* A half-closed connection (read_eof) is closed once its requests are answered and every
 * byte is written. Answers the loop made may still wait in the outbox, so after a job of c
 * ends (or its client half-closes) this asks the next outbox drain to look: c is closed at
 * its end if nothing is left to send. Nothing for a connection that is not half-closed. */
void conn_check_done(Conn *c);
/* A request of c ended without any answer (out of memory): c is closed at the end of the next
 * outbox drain (not at once: this is called from within the job list). */
void conn_reply_lost(Conn *c);
/* End of an outbox drain: the connections waiting for it (above) are looked at. */
void conn_drained(Server *srv);

/* dispatch.c: one decoded request from c (ownership of req passes); wire_bytes: its frame body. */
void dispatch_request(Conn *c, Request *req, size_t wire_bytes);
void reply_error(Conn *c, uint64_t id, const char *code, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
