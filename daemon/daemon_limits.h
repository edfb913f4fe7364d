/* daemon/daemon_limits.h — the daemon's compile-time limits, with units. Runtime settings (and
 * their bounds) are the table in config.c; protocol limits are in proto/limits.h. */
#pragma once

#include "proto_limits.h"

/* --- connections --- */
#define DAEMON_MAX_CONNECTIONS_DEFAULT   256           /* open client connections */
#define DAEMON_MAX_CONNECTIONS_PER_UID_DEFAULT 32      /* connections one user (not an administrator) may hold */
#define DAEMON_ADMIN_CONNECTIONS_DEFAULT 4             /* connections only administrators may take */
#define DAEMON_FRAME_TIMEOUT_S           30            /* seconds from a frame's first byte to its last */
#define DAEMON_CONNECTION_IDLE_TIMEOUT_S 3600          /* seconds a connection may sit with nothing in flight */
#define DAEMON_WRITE_SOFT_LIMIT          (1u << 20)    /* bytes queued to a client before its generation pauses */
#define DAEMON_WRITE_RESUME              (256u << 10)  /* bytes: paused generations resume below this */
#define DAEMON_WRITE_HARD_LIMIT          (16u << 20)   /* bytes queued before the connection is closed */
#define DAEMON_READ_BATCH                (64u << 10)   /* bytes read per callback */
#define DAEMON_MAX_REQUESTS_PER_CONN     64            /* requests in flight on one connection */
#define DAEMON_QUEUED_BYTES_DEFAULT      (512ull << 20) /* bytes requests in progress hold, all users */
#define DAEMON_QUEUED_BYTES_PER_UID_DEFAULT (64ull << 20) /* bytes the requests of one user hold */

/* --- sessions and KV --- */
#define DAEMON_MAX_SESSIONS_DEFAULT      64            /* named sessions, all users */
#define DAEMON_MAX_SESSIONS_PER_UID      16            /* named sessions one uid may hold */
#define DAEMON_KV_BUDGET_DEFAULT         (8ull << 30)  /* bytes of KV cache, all sessions together */
#define DAEMON_SESSION_CAPACITY_DEFAULT  0             /* positions per full-attention session (0 = model context) */
#define DAEMON_MAX_PROMPT_TOKENS         PROTO_MAX_PROMPT_TOKENS /* tokens in one request's prompt or text (65536): default and most */
#define DAEMON_EVICTED_MEMORY            256           /* evicted session ids remembered, to explain errors */

/* --- time --- */
#define DAEMON_IDLE_SESSION_TIMEOUT_S    3600          /* seconds an idle named session lives */
#define DAEMON_REQUEST_TIMEOUT_S         1800          /* seconds one request may run (or wait for room in the KV budget) */
#define DAEMON_UNREAD_TIMEOUT_S          60            /* seconds a client may read nothing while output waits for it */
#define DAEMON_HOUSEKEEPING_MS           1000          /* timer period: timeouts, stats */
#define DAEMON_STATUS_REFRESH_MS         10000         /* status reads /proc/self/smaps at most this often */

/* --- requests answered on the loop thread --- */
#define DAEMON_LOOP_OPS_PER_S            10            /* status, experts, session.list per second per connection */
#define DAEMON_LOOP_OPS_BURST            20            /* of those, at once after a quiet spell */

/* --- workers --- */
#define DAEMON_MAX_THREADS               256           /* compute threads */
#define DAEMON_PREFILL_CHUNK             64            /* tokens a prompt feeds per round (others share the round) */
#define DAEMON_BATCH_ROWS                256           /* tokens in one forward batch, all sessions */
