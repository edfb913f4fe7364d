/* daemon/conn.c — client connections: accept with peer credentials and the connection limits
 * (per user; a reserve for administrators), read and cut frames, write with backpressure,
 * the frame and idle timeouts, half-closed clients (answered, then closed), close (memory
 * freed in the close callback). Loop thread only. */
#include "server.h"

#include <errno.h>
#include <grp.h>
#include <poll.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "log.h"

typedef struct WriteReq {
        uv_write_t req;
        Conn *conn;
        uint8_t *frame;
        size_t len;
} WriteReq;

Conn *conn_find(Server *srv, uint64_t id) {
        for (Conn *c = srv->conns; c; c = c->next)
                if (c->id == id)
                        return c;
        return NULL;
}

static void on_conn_closed(uv_handle_t *h) {
        Conn *c = (Conn *)h;
        frame_reader_done(&c->fr);
        free(c);
}

void conn_close(Conn *c) {
        Server *srv = c->srv;
        if (c->closing && uv_is_closing((uv_handle_t *)&c->pipe))
                return;
        c->closing = true;
        /* unlinked now: output still on its way from workers is dropped */
        for (Conn **p = &srv->conns; *p; p = &(*p)->next)
                if (*p == c) {
                        *p = c->next;
                        srv->n_conns--;
                        if (c->drain_check) {
                                c->drain_check = 0;
                                srv->n_drain_checks--;
                        }
                        break;
                }
        /* its requests stop at their next step (a generation ends at the next token) */
        jobs_cancel_conn(&srv->jobs, c->id);
        uv_close((uv_handle_t *)&c->pipe, on_conn_closed);
}

/* A half-closed connection with every request answered and every byte written is closed,
 * unless an outbox drain it waits for (drain_check) may still bring it answers. */
static void close_if_done(Conn *c) {
        if (c->read_eof && !c->closing && !c->drain_check && c->n_jobs == 0 && c->write_queued == 0) {
                log_debug("connection %llu: the half-closed client has its answers; closing", (unsigned long long)c->id);
                conn_close(c);
        }
}

/* Look at c again at the end of the next outbox drain (the one after the current, when called
 * from within one): what the loop queued for it until now has been sent by then. */
static void check_at_drain(Conn *c) {
        Server *srv = c->srv;
        if (!c->drain_check)
                srv->n_drain_checks++;
        c->drain_check = srv->drains + 1;
        outbox_kick(&srv->outbox); /* that drain comes even with nothing queued */
}

void conn_check_done(Conn *c) {
        if (c->read_eof && !c->closing)
                check_at_drain(c);
}

void conn_reply_lost(Conn *c) {
        if (c->closing)
                return;
        c->reply_lost = true;
        check_at_drain(c);
}

void conn_drained(Server *srv) {
        if (srv->n_drain_checks == 0)
                return;
        for (Conn *c = srv->conns, *next; c; c = next) {
                next = c->next; /* closing unlinks c (and only c) */
                if (!c->drain_check || c->drain_check > srv->drains)
                        continue;
                c->drain_check = 0;
                srv->n_drain_checks--;
                if (c->reply_lost) {
                        log_error("connection %llu (uid %u): a request ended without any answer; closing",
                                  (unsigned long long)c->id, (unsigned)c->uid);
                        conn_close(c);
                } else {
                        close_if_done(c);
                }
        }
}

/* The client closed its end entirely (not just its sending side): nobody will read answers. A
 * Unix stream socket reports POLLHUP once both directions are shut, POLLRDHUP alone for a
 * half-close. */
static bool peer_gone(Conn *c) {
        uv_os_fd_t fd;
        if (uv_fileno((uv_handle_t *)&c->pipe, &fd) < 0)
                return true;
        struct pollfd pfd = { .fd = fd, .events = 0 };
        return poll(&pfd, 1, 0) > 0 && (pfd.revents & (POLLHUP | POLLERR | POLLNVAL));
}

static void on_written(uv_write_t *req, int status) {
        WriteReq *w = (WriteReq *)req;
        Conn *c = w->conn; /* alive: the close callback runs after cancelled writes */
        c->write_queued -= w->len;
        if (status == 0) {
                c->last_active_ms = c->write_progress_ms = now_ms(); /* the client takes its output */
                c->unread_stopped = false;
        }
        free(w->frame);
        free(w);
        if (status < 0 && status != UV_ECANCELED) {
                if (!c->closing)
                        log_debug("connection %llu: write failed: %s", (unsigned long long)c->id, uv_strerror(status));
                conn_close(c);
                return;
        }
        if (c->closing)
                return;
        if (c->close_after_write && c->write_queued == 0) {
                conn_close(c);
                return;
        }
        if (c->read_eof) {
                close_if_done(c); /* its last answer is written */
                if (c->closing)
                        return;
        }
        if (c->write_queued < DAEMON_WRITE_RESUME)
                jobs_resume_conn(&c->srv->jobs, c->id);
}

void conn_send(Conn *c, uint8_t *frame, size_t len) {
        if (c->closing) {
                free(frame);
                return;
        }
        if (c->write_queued + len > DAEMON_WRITE_HARD_LIMIT) {
                log_warning("connection %llu (uid %u): client is not reading; closing", (unsigned long long)c->id,
                            (unsigned)c->uid);
                free(frame);
                conn_close(c);
                return;
        }
        WriteReq *w = malloc(sizeof(*w));
        if (!w) {
                free(frame);
                conn_close(c);
                return;
        }
        *w = (WriteReq){ .conn = c, .frame = frame, .len = len };
        if (c->write_queued == 0)
                c->write_progress_ms = now_ms(); /* output starts to wait for the client */
        uv_buf_t buf = uv_buf_init((char *)frame, (unsigned)len);
        int r = uv_write(&w->req, (uv_stream_t *)&c->pipe, &buf, 1, on_written);
        if (r < 0) {
                free(frame);
                free(w);
                conn_close(c);
                return;
        }
        c->write_queued += len;
}

void conn_send_error(Conn *c, const ProtoError *err) {
        uint8_t *frame;
        size_t len;
        if (proto_error_encode(err, &frame, &len) < 0) {
                conn_close(c);
                return;
        }
        conn_send(c, frame, len);
}

/* A short sample of bad input for the log: printable ASCII kept, the rest masked. */
static void masked_sample(const uint8_t *p, size_t n, char out[33]) {
        size_t k = n < 32 ? n : 32;
        for (size_t i = 0; i < k; i++)
                out[i] = p[i] >= 0x20 && p[i] < 0x7f ? (char)p[i] : '.';
        out[k] = '\0';
}

/* Answer a fatal protocol error once, then close; no resync. */
static void protocol_error(Conn *c, const ProtoError *err, const uint8_t *sample, size_t n) {
        char s[33];
        masked_sample(sample, n, s);
        log_notice("connection %llu (uid %u): %s: %s; input starts \"%s\"; closing", (unsigned long long)c->id,
                   (unsigned)c->uid, err->code, err->message, s);
        uv_read_stop((uv_stream_t *)&c->pipe);
        c->close_after_write = true;
        conn_send_error(c, err);
        if (!c->closing && c->write_queued == 0)
                conn_close(c);
}

static void handle_body(Conn *c, const uint8_t *body, size_t len) {
        Request req;
        ProtoError err = { 0 };
        int r = request_decode(body, len, &req, &err);
        if (r < 0) {
                if (err.fatal) {
                        protocol_error(c, &err, body, len);
                } else {
                        log_debug("connection %llu: %s: %s", (unsigned long long)c->id, err.code, err.message);
                        conn_send_error(c, &err);
                }
                return;
        }
        c->srv->requests_total++;
        dispatch_request(c, &req, len);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
        Conn *c = (Conn *)h;
        (void)suggested;
        *buf = uv_buf_init(c->rbuf, sizeof(c->rbuf));
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf) {
        Conn *c = (Conn *)stream;
        if (nread < 0) {
                if (nread == UV_EOF && !frame_reader_partial(&c->fr) && !peer_gone(c)) {
                        /* half-closed between frames: answer what it asked, then close */
                        uv_read_stop(stream);
                        c->read_eof = true;
                        log_debug("connection %llu: the client finished sending; %u request(s) to answer",
                                  (unsigned long long)c->id, c->n_jobs);
                        conn_check_done(c); /* answers of requests that ended may still be in the outbox */
                        return;
                }
                if (nread != UV_EOF)
                        log_debug("connection %llu: read: %s", (unsigned long long)c->id, uv_strerror((int)nread));
                conn_close(c); /* gone, or gone in the middle of a frame: its requests are cancelled */
                return;
        }
        if (nread == 0)
                return; /* nothing read (EAGAIN): nothing changes */
        const uint8_t *p = (const uint8_t *)buf->base;
        size_t left = (size_t)nread;
        const uint64_t t = now_ms();
        int more = 0; /* 0: the last frame fed is incomplete */
        c->last_active_ms = t;
        while (left > 0 && !c->closing && !c->close_after_write) {
                size_t used;
                int r = more = frame_reader_feed(&c->fr, p, left, &used);
                if (r < 0) {
                        ProtoError err = { 0 };
                        frame_reader_error(&c->fr, &err);
                        protocol_error(c, &err, p, left);
                        return;
                }
                p += used;
                left -= used;
                const uint8_t *body;
                size_t len;
                if (frame_reader_next(&c->fr, &body, &len) > 0)
                        handle_body(c, body, len);
        }
        /* the frame timeout runs from a frame's first byte, however slowly the rest comes */
        if (more == 0 && frame_reader_buffered(&c->fr) > 0) {
                if (!c->partial_since_ms)
                        c->partial_since_ms = t;
        } else {
                c->partial_since_ms = 0;
        }
}

/* Tell the client why, then close once that is written; at once if output already waits
 * for a client that is not reading it. */
static void close_with(Conn *c, const char *code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void close_with(Conn *c, const char *code, const char *fmt, ...) {
        if (c->write_queued > 0) {
                conn_close(c);
                return;
        }
        ProtoError err = { .code = code, .fatal = true };
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err.message, sizeof(err.message), fmt, ap);
        va_end(ap);
        uv_read_stop((uv_stream_t *)&c->pipe);
        c->close_after_write = true;
        conn_send_error(c, &err);
        if (!c->closing && c->write_queued == 0)
                conn_close(c);
}

unsigned conn_expire(Server *srv, uint64_t now) {
        const uint64_t frame_ms = srv->cfg->frame_timeout * 1000, idle_ms = srv->cfg->connection_idle_timeout * 1000,
                       unread_ms = srv->cfg->unread_timeout * 1000;
        unsigned n = 0;
        for (Conn *c = srv->conns, *next; c; c = next) {
                next = c->next; /* closing unlinks c */
                if (c->closing)
                        continue;
                if (c->read_eof && peer_gone(c)) {
                        /* half-closed, then gone: nobody reads the answers; its work stops */
                        log_debug("connection %llu: the half-closed client went away", (unsigned long long)c->id);
                        conn_close(c);
                        n++;
                        continue;
                }
                if (c->close_after_write) {
                        /* answered, to be closed once that is written: at once if its client reads nothing */
                        if (c->write_queued > 0 && now - c->write_progress_ms > frame_ms)
                                conn_close(c);
                        continue;
                }
                /* output waits and the client has taken none of it: its requests stop (their one-shot
                 * KV goes back); the connection stays, and is closed once idle */
                if (unread_ms && c->write_queued > 0 && !c->unread_stopped && now - c->write_progress_ms > unread_ms) {
                        c->unread_stopped = true;
                        unsigned k = jobs_cancel_unread(&srv->jobs, c->id);
                        if (k)
                                log_notice("connection %llu (uid %u): nothing read for %llu s while output waits; stopping "
                                           "its %u request(s)", (unsigned long long)c->id, (unsigned)c->uid,
                                           (unsigned long long)srv->cfg->unread_timeout, k);
                }
                if (c->partial_since_ms && now - c->partial_since_ms > frame_ms) {
                        log_notice("connection %llu (uid %u): a frame incomplete after %llu s; closing",
                                   (unsigned long long)c->id, (unsigned)c->uid, (unsigned long long)srv->cfg->frame_timeout);
                        close_with(c, "timeout", "a frame stayed incomplete for %llu s (frame-timeout)",
                                   (unsigned long long)srv->cfg->frame_timeout);
                        n++;
                } else if (idle_ms && !c->partial_since_ms && c->n_jobs == 0 && now - c->last_active_ms > idle_ms) {
                        /* (output may still wait for a client that reads nothing) */
                        log_info("connection %llu (uid %u): idle for %llu s; closing", (unsigned long long)c->id,
                                 (unsigned)c->uid, (unsigned long long)srv->cfg->connection_idle_timeout);
                        close_with(c, "timeout", "idle for %llu s (connection-idle-timeout)",
                                   (unsigned long long)srv->cfg->connection_idle_timeout);
                        n++;
                }
        }
        return n;
}

static bool uid_in_group(uid_t uid, gid_t primary, gid_t group) {
        if (primary == group)
                return true;
        struct passwd *pw = getpwuid(uid);
        if (!pw)
                return false;
        gid_t groups[256];
        int n = 256;
        if (getgrouplist(pw->pw_name, pw->pw_gid, groups, &n) < 0)
                return false;
        for (int i = 0; i < n; i++)
                if (groups[i] == group)
                        return true;
        return false;
}

int conn_accept(Server *srv) {
        Conn *c = calloc(1, sizeof(*c));
        if (!c)
                return -ENOMEM;
        c->srv = srv;
        uv_pipe_init(srv->loop, &c->pipe, 0);
        int r = uv_accept((uv_stream_t *)&srv->listener, (uv_stream_t *)&c->pipe);
        if (r < 0) {
                uv_close((uv_handle_t *)&c->pipe, on_conn_closed);
                return r;
        }
        frame_reader_init(&c->fr);
        c->id = ++srv->next_conn_id;
        c->next = srv->conns;
        srv->conns = c;
        srv->n_conns++;

        uv_os_fd_t fd;
        struct ucred cred;
        socklen_t len = sizeof(cred);
        if (uv_fileno((uv_handle_t *)&c->pipe, &fd) < 0 || getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0) {
                log_warning("cannot read peer credentials: %s; closing", strerror(errno));
                conn_close(c);
                return -EPERM;
        }
        c->uid = cred.uid;
        c->gid = cred.gid;
        c->pid = cred.pid;
        c->is_admin = cred.uid == 0 || cred.uid == geteuid() ||
                      (srv->have_admin_gid && uid_in_group(cred.uid, cred.gid, srv->admin_gid));

        c->last_active_ms = c->loop_ops_ms = now_ms();
        c->loop_ops = DAEMON_LOOP_OPS_BURST;
        /* the limits: all connections; all but the administrators' reserve for everyone else;
         * and one user's share (the list holds c already) */
        const Config *cfg = srv->cfg;
        const uint64_t reserve = cfg->admin_connections, open = srv->n_conns;
        uint64_t mine = 0;
        if (!c->is_admin)
                for (const Conn *o = srv->conns; o; o = o->next)
                        mine += o->uid == c->uid;
        const char *refused = NULL;
        char why[160];
        if (srv->shutting_down) {
                refused = "the daemon is shutting down";
        } else if (open > cfg->max_connections) {
                snprintf(why, sizeof(why), "too many connections (%llu, max-connections)",
                         (unsigned long long)cfg->max_connections);
                refused = why;
        } else if (!c->is_admin && open + reserve > cfg->max_connections) {
                snprintf(why, sizeof(why), "every connection but the %llu kept for administrators is in use",
                         (unsigned long long)reserve);
                refused = why;
        } else if (!c->is_admin && mine > cfg->max_connections_per_uid) {
                snprintf(why, sizeof(why), "uid %u already holds %llu connections (max-connections-per-uid)",
                         (unsigned)c->uid, (unsigned long long)cfg->max_connections_per_uid);
                refused = why;
        }
        if (refused) {
                ProtoError err = { .code = "over_limit", .fatal = true };
                snprintf(err.message, sizeof(err.message), "%s", refused);
                if (!srv->shutting_down)
                        log_info("connection %llu from pid %d uid %u refused: %s", (unsigned long long)c->id, (int)c->pid,
                                 (unsigned)c->uid, refused);
                c->close_after_write = true;
                conn_send_error(c, &err);
                return -EUSERS;
        }
        r = uv_read_start((uv_stream_t *)&c->pipe, on_alloc, on_read);
        if (r < 0) {
                conn_close(c);
                return r;
        }
        log_debug("connection %llu from pid %d uid %u%s", (unsigned long long)c->id, (int)c->pid, (unsigned)c->uid,
                  c->is_admin ? " (admin)" : "");
        return 0;
}
