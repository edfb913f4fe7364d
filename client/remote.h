/* client/remote.h — mixctl's connection to mixd: finding the socket, sending requests and
 * reading replies (blocking, interruptible by SIGINT, with timeouts), telling a lost
 * connection from a daemon that broke the protocol, and mapping error replies to exit codes.
 * Main thread only. */
#pragma once
#include <stdint.h>

#include "msg.h"

/* Defaults of --connect-timeout and --timeout (seconds; the options take 0 = wait forever). */
#define REMOTE_CONNECT_TIMEOUT_S 5.0   /* connect(): mixd's listen backlog stays full this long */
#define REMOTE_REPLY_TIMEOUT_S   30.0  /* silence from mixd while waiting for a reply */
#define REMOTE_MAX_TIMEOUT_S     86400.0

typedef struct Remote {
        int fd;
        FrameReader fr;
        uint64_t next_id;       /* ids 1..next_id - 1 have been sent on this connection */
        char path[108];
        uint8_t pend[65536];    /* bytes read from the socket, not yet fed to fr */
        size_t pend_off, pend_len;
        int64_t timeout_ms;     /* silence before giving up on mixd; 0: wait forever */
        uint64_t ping_id;       /* the hello sent to see whether a silent mixd is alive, or 0 */
        int64_t quiet_since_ms; /* monotonic time of the last byte received or request sent */
        char why[256];          /* the last remote_recv failure, for remote_report_recv */
} Remote;

/* Connect to --socket (may be NULL), else $MIXD_SOCKET, else /run/mixd/mixd.sock when it
 * exists, else $XDG_RUNTIME_DIR/mixd.sock, waiting at most connect_timeout_s for a daemon
 * whose backlog is full; reply_timeout_s is the silence remote_recv tolerates (both 0: wait
 * forever). On failure prints the reason and returns EXIT_CONNECT. */
int remote_connect(Remote *r, const char *socket_path, double connect_timeout_s, double reply_timeout_s);
void remote_close(Remote *r);

/* Send req (its id is assigned here). Returns an exit code: 0, EXIT_USAGE when the request
 * is invalid (checked locally with the server's own rules), EXIT_RUNTIME on I/O errors. */
int remote_send(Remote *r, Request *req);
/* Wait for the next reply frame. 0, or (with the reason in r->why, see remote_report_recv):
 * -EINTR when interrupted (cli_interrupted set), -ECONNRESET when the connection was lost,
 * -EPROTO when mixd broke the protocol (a bad frame, a body that is no reply, a reply to a
 * request never sent), -ETIMEDOUT when mixd stayed silent for the reply timeout. While mixd
 * is silent for half the timeout a hello goes out: a live daemon answers it at once (its
 * loop never computes), so a long computation is not mistaken for a dead daemon. */
int remote_recv(Remote *r, Reply *ret);
/* Print why remote_recv failed (nothing for -EINTR) and return the exit code:
 * EXIT_INTERRUPTED or EXIT_RUNTIME. */
int remote_report_recv(const Remote *r, int e);
/* One request, one reply (non-streaming ops). Prints error replies; returns an exit code. */
int remote_call(Remote *r, Request *req, Reply *ret);
/* Exit code for an error reply, after printing it. */
int remote_report_error(const Reply *rep);
