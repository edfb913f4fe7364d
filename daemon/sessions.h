/* daemon/sessions.h — the session table: named sessions (kept between requests, owned by
 * the uid that opened them) and ephemeral ones (one request), the KV budget they share, and
 * eviction of idle sessions when it runs out. Loop thread only; a worker touches a session's
 * engine state only while the session is marked busy by the job it runs. */
#pragma once
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "daemon_limits.h"
#include "session.h"

#define SESSION_ID_LEN 18 /* "s-" + 16 hex digits */

typedef struct DSession {
        char id[SESSION_ID_LEN + 1];
        uid_t uid;
        bool ephemeral;          /* lives for one request, never listed */
        bool busy;               /* a job is using it */
        bool closing;            /* close asked while busy: freed when the job ends */
        Session *s;
        uint64_t kv_bytes;
        uint64_t created_ms, last_used_ms;
        uint64_t n_requests;
        struct DSession *next;
} DSession;

typedef struct SessionLimits {
        uint64_t kv_budget;          /* bytes, all sessions */
        uint64_t max_sessions;       /* named sessions */
        uint64_t max_per_uid;        /* named sessions per uid */
        uint32_t capacity;           /* positions per full-attention session (0 = model context) */
        uint32_t kv_type;            /* KV cache storage type of every session (engine/kv.h) */
} SessionLimits;

typedef struct SessionTable {
        const Model *m;
        SessionLimits lim;
        DSession *head;
        uint64_t n_named, n_ephemeral;
        uint64_t kv_used;            /* bytes */
        uint64_t n_evicted_total;
        struct {                     /* sessions dropped recently, to explain errors */
                char id[SESSION_ID_LEN + 1];
                const char *why;     /* static text */
        } forgotten[DAEMON_EVICTED_MEMORY];
        unsigned forgotten_pos;
} SessionTable;

void sessions_init(SessionTable *t, const Model *m, const SessionLimits *lim);
void sessions_done(SessionTable *t);

/* KV bytes one session takes (every session has the same size). */
int sessions_bytes_each(const SessionTable *t, uint64_t *ret_bytes);
/* KV bytes of uid's sessions (named, busy or one-shot). */
uint64_t sessions_uid_bytes(const SessionTable *t, uid_t uid);
/* A uid's fair share of the budget: the budget over the number of uids that hold sessions
 * or are in `also` (uids that want room). */
uint64_t sessions_share(const SessionTable *t, const uid_t *also, unsigned n_also);

/* Open a session for uid. Evicts idle sessions (least recently used first, never another
 * uid's session while that uid is within its fair share of the budget) when needed; the
 * number evicted goes to *ret_n_evicted. -EUSERS over the session limits, -ENOSPC when
 * the budget cannot be freed, -ENOMEM. */
int sessions_open(SessionTable *t, uid_t uid, bool ephemeral, uint64_t now_ms, DSession **ret_ds,
                  unsigned *ret_n_evicted);
/* A named session for uid that takes the id of a state file being restored (persist.c): never
 * evicts another session (-ENOSPC when the budget has no room, -EUSERS over the session
 * limits), -EEXIST when a session with that id is already live, -ENOMEM. */
int sessions_restore(SessionTable *t, const char *id, uid_t uid, uint64_t now_ms, DSession **ret_ds);
/* Find a named session for uid: -ENOENT unknown, -ESTALE dropped earlier (see
 * sessions_forgotten), -EPERM another uid's (admin may pass any uid when is_admin). */
int sessions_get(SessionTable *t, const char *id, uid_t uid, bool is_admin, DSession **ret_ds);
/* Why the session id was dropped ("was evicted ..."), or NULL if it is not remembered. */
const char *sessions_forgotten(const SessionTable *t, const char *id);
/* Drop every session (none may be busy), remembering why for later requests. */
void sessions_drop_all(SessionTable *t, const char *why);
/* Close: freed now if idle, else when its job ends. */
void sessions_close(SessionTable *t, DSession *ds);
/* The job using ds has ended. Frees ephemeral and closing sessions. */
void sessions_release(SessionTable *t, DSession *ds, uint64_t now_ms);
/* Drop idle named sessions unused for longer than idle_ms; returns how many. */
unsigned sessions_expire(SessionTable *t, uint64_t now_ms, uint64_t idle_ms);
