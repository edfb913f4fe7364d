/* client/remote.c — the client side of the protocol (see remote.h). Main thread only. */
#include "remote.h"

#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"

#define DEFAULT_SYSTEM_SOCKET "/run/mixd/mixd.sock"
#define POLL_SLICE_MS 200 /* how often a wait looks at cli_interrupted and the clock */

static int64_t mono_ms(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int fail(Remote *r, int e, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(Remote *r, int e, const char *fmt, ...) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(r->why, sizeof(r->why), fmt, ap);
        va_end(ap);
        return e;
}

static int pick_path(const char *given, char *out, size_t outlen) {
        const char *env = getenv("MIXD_SOCKET");
        struct stat st;
        if (given)
                return snprintf(out, outlen, "%s", given) < (int)outlen ? 0 : -ENAMETOOLONG;
        if (env && *env)
                return snprintf(out, outlen, "%s", env) < (int)outlen ? 0 : -ENAMETOOLONG;
        if (stat(DEFAULT_SYSTEM_SOCKET, &st) == 0)
                return snprintf(out, outlen, "%s", DEFAULT_SYSTEM_SOCKET) < (int)outlen ? 0 : -ENAMETOOLONG;
        const char *xdg = getenv("XDG_RUNTIME_DIR");
        if (xdg && *xdg)
                return snprintf(out, outlen, "%s/mixd.sock", xdg) < (int)outlen ? 0 : -ENAMETOOLONG;
        return -ENOENT;
}

/* SO_SNDTIMEO bounds a blocking connect() on a Unix socket (a full backlog) and send(). */
static void set_send_timeout(int fd, double seconds) {
        struct timeval tv = { .tv_sec = (time_t)seconds, .tv_usec = (suseconds_t)((seconds - (double)(time_t)seconds) * 1e6) };
        (void)setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

int remote_connect(Remote *r, const char *socket_path, double connect_timeout_s, double reply_timeout_s) {
        memset(r, 0, sizeof(*r));
        r->fd = -1;
        r->next_id = 1;
        r->timeout_ms = (int64_t)(reply_timeout_s * 1000.0);
        frame_reader_init(&r->fr);
        int e = pick_path(socket_path, r->path, sizeof(r->path));
        if (e < 0) {
                cli_error("no daemon socket: give --socket, set MIXD_SOCKET, or use -m MODEL to run in-process");
                return EXIT_CONNECT;
        }
        r->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (r->fd < 0) {
                cli_error("socket: %s", strerror(errno));
                return EXIT_CONNECT;
        }
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        memcpy(sa.sun_path, r->path, strlen(r->path) + 1);
        set_send_timeout(r->fd, connect_timeout_s);
        if (connect(r->fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
                if (errno == EAGAIN || errno == EINPROGRESS)
                        cli_error("cannot connect to mixd at %s: it accepted no connection within %g s "
                                  "(--connect-timeout)", r->path, connect_timeout_s);
                else
                        cli_error("cannot connect to mixd at %s: %s", r->path, strerror(errno));
                close(r->fd);
                r->fd = -1;
                return EXIT_CONNECT;
        }
        set_send_timeout(r->fd, reply_timeout_s);
        r->quiet_since_ms = mono_ms();
        return EXIT_OK;
}

void remote_close(Remote *r) {
        if (r->fd >= 0)
                close(r->fd);
        r->fd = -1;
        frame_reader_done(&r->fr);
}

/* Write a whole frame. 0, or -errno (-EAGAIN: mixd did not take it within the timeout). */
static int send_frame(Remote *r, const uint8_t *p, size_t len) {
        while (len > 0) {
                ssize_t n = send(r->fd, p, len, MSG_NOSIGNAL);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                p += n;
                len -= (size_t)n;
        }
        return 0;
}

int remote_send(Remote *r, Request *req) {
        uint8_t *frame;
        size_t len;
        ProtoError err = { 0 };
        req->id = r->next_id++;
        int e = request_encode(req, &frame, &len, &err);
        if (e < 0) {
                cli_error("invalid request: %s", err.message[0] ? err.message : strerror(-e));
                return e == -ENOMEM ? EXIT_RUNTIME : EXIT_USAGE;
        }
        e = send_frame(r, frame, len);
        free(frame);
        r->quiet_since_ms = mono_ms(); /* the silence counts from the request (a ping does not reset it) */
        if (e == -EAGAIN) {
                cli_error("mixd did not take the request within %g s (--timeout)", (double)r->timeout_ms / 1000.0);
                return EXIT_RUNTIME;
        }
        if (e < 0) {
                cli_error("lost the connection to mixd: %s", strerror(-e));
                return EXIT_RUNTIME;
        }
        return EXIT_OK;
}

/* mixd has been silent for half the timeout: ask it something its loop answers at once. */
static int send_ping(Remote *r) {
        Request req;
        uint8_t *frame;
        size_t len;
        const uint64_t id = r->next_id++;
        request_init(&req, PROTO_OP_HELLO, id);
        req.hello.version = PROTO_VERSION;
        int e = request_encode(&req, &frame, &len, NULL);
        request_free(&req);
        if (e < 0)
                return e;
        e = send_frame(r, frame, len);
        free(frame);
        if (e == 0)
                r->ping_id = id;
        return e;
}

/* A complete frame body: decode it and check that it answers something this client sent.
 * 1 when it was the answer to our ping (consumed), 0 with *ret filled, or -EPROTO. */
static int take_reply(Remote *r, const uint8_t *body, size_t len, Reply *ret) {
        ProtoError err = { 0 };
        if (reply_decode(body, len, ret, &err) < 0)
                return fail(r, -EPROTO, "%s", err.message[0] ? err.message : "a reply that cannot be decoded");
        if (ret->has_id && (ret->id == 0 || ret->id >= r->next_id)) {
                uint64_t id = ret->id;
                reply_free(ret);
                return fail(r, -EPROTO, "a reply for request %llu, which this client never sent (ids 1..%llu)",
                            (unsigned long long)id, (unsigned long long)(r->next_id - 1));
        }
        if (r->ping_id && ret->has_id && ret->id == r->ping_id) {
                r->ping_id = 0;
                reply_free(ret);
                return 1;
        }
        return 0;
}

int remote_recv(Remote *r, Reply *ret) {
        for (;;) {
                const uint8_t *body;
                size_t len;
                int e = frame_reader_next(&r->fr, &body, &len);
                if (e < 0) {
                        ProtoError err;
                        frame_reader_error(&r->fr, &err);
                        return fail(r, -EPROTO, "%s", err.message);
                }
                if (e > 0) {
                        e = take_reply(r, body, len, ret);
                        if (e == 1)
                                continue;
                        return e;
                }

                /* bytes already read: feed them up to the end of the next frame */
                if (r->pend_off < r->pend_len) {
                        size_t used;
                        if (frame_reader_feed(&r->fr, r->pend + r->pend_off, r->pend_len - r->pend_off, &used) < 0)
                                continue; /* the sticky error is reported above */
                        r->pend_off += used;
                        continue;
                }

                if (cli_interrupted)
                        return fail(r, -EINTR, "interrupted");
                if (r->timeout_ms > 0) {
                        const int64_t quiet = mono_ms() - r->quiet_since_ms;
                        if (quiet >= r->timeout_ms)
                                return fail(r, -ETIMEDOUT, "mixd did not answer within %g s (--timeout)",
                                            (double)r->timeout_ms / 1000.0);
                        if (!r->ping_id && quiet >= r->timeout_ms / 2 && (e = send_ping(r)) < 0)
                                return fail(r, -ECONNRESET, "%s", strerror(-e));
                }
                struct pollfd pfd = { .fd = r->fd, .events = POLLIN };
                int pr = poll(&pfd, 1, POLL_SLICE_MS);
                if (pr < 0 && errno != EINTR)
                        return fail(r, -ECONNRESET, "%s", strerror(errno));
                if (pr <= 0)
                        continue;
                ssize_t n = read(r->fd, r->pend, sizeof(r->pend));
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        return fail(r, -ECONNRESET, "%s", strerror(errno));
                }
                if (n == 0)
                        return fail(r, -ECONNRESET, "it closed the connection");
                r->pend_off = 0;
                r->pend_len = (size_t)n;
                r->quiet_since_ms = mono_ms();
        }
}

int remote_report_recv(const Remote *r, int e) {
        switch (e) {
        case -EINTR: return EXIT_INTERRUPTED;
        case -EPROTO: cli_error("mixd broke the protocol: %s", r->why); break;
        case -ETIMEDOUT: cli_error("%s", r->why); break;
        default: cli_error("lost the connection to mixd: %s", r->why); break;
        }
        return EXIT_RUNTIME;
}

int remote_report_error(const Reply *rep) {
        cli_error("mixd: %.*s (%.*s)", (int)rep->error_message.len, rep->error_message.ptr, (int)rep->error_code.len,
                  rep->error_code.ptr);
        if (proto_str_eq(rep->error_code, "permission_denied") || proto_str_eq(rep->error_code, "over_limit") ||
            proto_str_eq(rep->error_code, "busy") || proto_str_eq(rep->error_code, "unavailable"))
                return EXIT_REFUSED;
        if (proto_str_eq(rep->error_code, "bad_request") || proto_str_eq(rep->error_code, "too_large"))
                return EXIT_USAGE;
        return EXIT_RUNTIME;
}

int remote_call(Remote *r, Request *req, Reply *ret) {
        int ex = remote_send(r, req);
        if (ex)
                return ex;
        for (;;) {
                int e = remote_recv(r, ret);
                if (e < 0)
                        return remote_report_recv(r, e);
                /* another request's answer, or an event (none is defined for these ops: ignored) */
                if ((ret->has_id && ret->id != req->id) || ret->kind == REPLY_EVENT) {
                        reply_free(ret);
                        continue;
                }
                if (ret->kind == REPLY_ERROR) {
                        ex = remote_report_error(ret);
                        reply_free(ret);
                        return ex;
                }
                return EXIT_OK;
        }
}
