/* client/remote.h — mixctl's connection to mixd: finding the socket, sending requests and
 * reading replies (blocking, interruptible by SIGINT), and mapping error replies to exit
 * codes. Main thread only. */
#pragma once
#include <stdint.h>

#include "msg.h"

typedef struct Remote {
        int fd;
        FrameReader fr;
        uint64_t next_id;
        char path[108];
        uint8_t pend[65536];    /* bytes read from the socket, not yet fed to fr */
        size_t pend_off, pend_len;
} Remote;

/* Connect to --socket (may be NULL), else $MIXD_SOCKET, else /run/mixd/mixd.sock when it
 * exists, else $XDG_RUNTIME_DIR/mixd.sock. On failure prints the reason and returns
 * EXIT_CONNECT. */
int remote_connect(Remote *r, const char *socket_path);
void remote_close(Remote *r);

/* Send req (its id is assigned here). Returns an exit code: 0, EXIT_USAGE when the request
 * is invalid (checked locally with the server's own rules), EXIT_RUNTIME on I/O errors. */
int remote_send(Remote *r, Request *req);
/* Wait for the next reply frame. 0, -EINTR when interrupted (cli_interrupted set),
 * -ECONNRESET when the daemon closed the connection, -EBADMSG for a bad frame. */
int remote_recv(Remote *r, Reply *ret);
/* One request, one reply (non-streaming ops). Prints error replies; returns an exit code. */
int remote_call(Remote *r, Request *req, Reply *ret);
/* Exit code for an error reply, after printing it. */
int remote_report_error(const Reply *rep);
