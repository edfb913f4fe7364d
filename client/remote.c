/* client/remote.c — the client side of the protocol (see remote.h). */
#include "remote.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "cli.h"

#define DEFAULT_SYSTEM_SOCKET "/run/mixd/mixd.sock"

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

int remote_connect(Remote *r, const char *socket_path) {
        memset(r, 0, sizeof(*r));
        r->fd = -1;
        r->next_id = 1;
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
        if (connect(r->fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
                cli_error("cannot connect to mixd at %s: %s", r->path, strerror(errno));
                close(r->fd);
                r->fd = -1;
                return EXIT_CONNECT;
        }
        return EXIT_OK;
}

void remote_close(Remote *r) {
        if (r->fd >= 0)
                close(r->fd);
        r->fd = -1;
        frame_reader_done(&r->fr);
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
        const uint8_t *p = frame;
        while (len > 0) {
                ssize_t n = send(r->fd, p, len, MSG_NOSIGNAL);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        cli_error("lost the connection to mixd: %s", strerror(errno));
                        free(frame);
                        return EXIT_RUNTIME;
                }
                p += n;
                len -= (size_t)n;
        }
        free(frame);
        return EXIT_OK;
}

int remote_recv(Remote *r, Reply *ret) {
        for (;;) {
                const uint8_t *body;
                size_t len;
                int e = frame_reader_next(&r->fr, &body, &len);
                if (e < 0)
                        return -EBADMSG;
                if (e > 0)
                        return reply_decode(body, len, ret, NULL) < 0 ? -EBADMSG : 0;

                /* bytes already read: feed them up to the end of the next frame */
                if (r->pend_off < r->pend_len) {
                        size_t used;
                        if (frame_reader_feed(&r->fr, r->pend + r->pend_off, r->pend_len - r->pend_off, &used) < 0)
                                return -EBADMSG;
                        r->pend_off += used;
                        continue;
                }

                if (cli_interrupted)
                        return -EINTR;
                struct pollfd pfd = { .fd = r->fd, .events = POLLIN };
                int pr = poll(&pfd, 1, 200);
                if (pr < 0 && errno != EINTR)
                        return -errno;
                if (pr <= 0)
                        continue;
                ssize_t n = read(r->fd, r->pend, sizeof(r->pend));
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        return -ECONNRESET;
                }
                if (n == 0)
                        return -ECONNRESET;
                r->pend_off = 0;
                r->pend_len = (size_t)n;
        }
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
                if (e == -EINTR)
                        return EXIT_INTERRUPTED;
                if (e < 0) {
                        cli_error("lost the connection to mixd (%s)", strerror(-e));
                        return EXIT_RUNTIME;
                }
                if (ret->has_id && ret->id != req->id) {
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
