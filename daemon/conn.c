/* daemon/conn.c — client connections: accept with peer credentials, read and cut frames,
 * write with backpressure, close (memory freed in the close callback). Loop thread only. */
#include "server.h"

#include <errno.h>
#include <grp.h>
#include <poll.h>
#include <pwd.h>
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
                        break;
                }
        /* its requests stop at their next step (a generation ends at the next token) */
        for (Job *j = srv->jobs; j; j = j->next)
                if (j->conn_id == c->id) {
                        job_cancel(srv, j);
                }
        uv_close((uv_handle_t *)&c->pipe, on_conn_closed);
}

void conn_close_if_done(Conn *c) {
        if (c->read_eof && !c->closing && c->n_jobs == 0 && c->write_queued == 0)
                conn_close(c);
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

void conn_check_half_closed(Server *srv) {
        for (Conn *c = srv->conns, *next; c; c = next) {
                next = c->next;
                if (c->read_eof && !c->closing && peer_gone(c)) {
                        log_debug("connection %llu: the half-closed client went away", (unsigned long long)c->id);
                        conn_close(c);
                }
        }
}

static void resume_generations(Conn *c) {
        Server *srv = c->srv;
        for (Job *j = srv->jobs; j; j = j->next)
                if (j->conn_id == c->id && j->backpressured) {
                        j->backpressured = false;
                        sched_set_paused(&srv->sched, &j->sj, false);
                }
}

static void on_written(uv_write_t *req, int status) {
        WriteReq *w = (WriteReq *)req;
        Conn *c = w->conn; /* alive: the close callback runs after cancelled writes */
        c->write_queued -= w->len;
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
                conn_close_if_done(c);
                if (c->closing)
                        return;
        }
        if (c->write_queued < DAEMON_WRITE_RESUME)
                resume_generations(c);
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
        dispatch_request(c, &req);
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
                        conn_close_if_done(c);
                        return;
                }
                if (nread != UV_EOF)
                        log_debug("connection %llu: read: %s", (unsigned long long)c->id, uv_strerror((int)nread));
                conn_close(c); /* gone, or gone in the middle of a frame: its requests are cancelled */
                return;
        }
        const uint8_t *p = (const uint8_t *)buf->base;
        size_t left = (size_t)nread;
        while (left > 0 && !c->closing && !c->close_after_write) {
                size_t used;
                int r = frame_reader_feed(&c->fr, p, left, &used);
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

        if (srv->n_conns > srv->cfg->max_connections || srv->shutting_down) {
                ProtoError err = { .code = "over_limit", .fatal = true };
                snprintf(err.message, sizeof(err.message), "%s", srv->shutting_down ? "the daemon is shutting down"
                                                                                     : "too many connections");
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
