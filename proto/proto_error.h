/* proto/proto_error.h — why a frame or message was refused: the wire error code, a message for
 * the error reply, the request id when it could be read, and whether the connection must close.
 * Plain data; any thread. */
#pragma once
#include <stdbool.h>
#include <stdint.h>

#include "proto_limits.h"

/* Wire error codes (the "code" of an error reply). Pointers to these literals are what
 * ProtoError.code holds; compare with strcmp or by pointer. */
#define PROTO_ERR_BAD_FRAME           "bad_frame"           /* framing or msgpack structure broken */
#define PROTO_ERR_TOO_LARGE           "too_large"           /* a size limit of proto_limits.h exceeded */
#define PROTO_ERR_BAD_REQUEST         "bad_request"         /* well-formed msgpack, invalid request */
#define PROTO_ERR_UNKNOWN_OP          "unknown_op"          /* "op" names no operation */
#define PROTO_ERR_UNSUPPORTED_VERSION "unsupported_version" /* hello with another major version */
/* Codes only the daemon produces (never request_decode), listed here so both sides agree. */
#define PROTO_ERR_NOT_FOUND           "not_found"           /* no such session / cancel target */
#define PROTO_ERR_PERMISSION_DENIED   "permission_denied"   /* peer credentials do not allow it */
#define PROTO_ERR_OVER_LIMIT          "over_limit"          /* a server capacity limit (sessions, KV, connections) */
#define PROTO_ERR_BUSY                "busy"                /* the session is in use by another request */
#define PROTO_ERR_UNAVAILABLE         "unavailable"         /* the daemon is shutting down */
#define PROTO_ERR_CANCELLED           "cancelled"           /* a non-streaming request was cancelled */
#define PROTO_ERR_TIMEOUT             "timeout"             /* a connection or request outlived one of the daemon's timeouts */
#define PROTO_ERR_INTERNAL            "internal"            /* the server failed (out of memory, engine error) */

typedef struct ProtoError {
        const char *code;                       /* one of PROTO_ERR_*; NULL when no error */
        char message[PROTO_MAX_ERROR_MESSAGE];  /* human-readable, names the field; NUL-terminated */
        bool has_id;                            /* id below was read from the request */
        uint64_t id;                            /* request id to echo in the error reply */
        bool fatal;                             /* the frame itself was bad (or the version is
                                                 * unsupported): send the one error reply, then
                                                 * close the connection; no resync */
} ProtoError;

/* Fill err (may be NULL) and return r (a negative errno), so callers can write
 * `return proto_error_set(err, r, PROTO_ERR_..., fatal, "fmt", ...);`. Keeps has_id/id. */
int proto_error_set(ProtoError *err, int r, const char *code, bool fatal, const char *fmt, ...)
        __attribute__((format(printf, 5, 6)));
