/* daemon/sessions.c — the session table (see sessions.h). Loop thread only. */
#include "sessions.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

void sessions_init(SessionTable *t, const Model *m, const SessionLimits *lim) {
        memset(t, 0, sizeof(*t));
        t->m = m;
        t->lim = *lim;
}

static void unlink_and_free(SessionTable *t, DSession *ds) {
        for (DSession **p = &t->head; *p; p = &(*p)->next)
                if (*p == ds) {
                        *p = ds->next;
                        break;
                }
        t->kv_used -= ds->kv_bytes;
        if (ds->ephemeral)
                t->n_ephemeral--;
        else
                t->n_named--;
        session_free(ds->s);
        free(ds);
}

void sessions_done(SessionTable *t) {
        while (t->head)
                unlink_and_free(t, t->head);
}

uint64_t sessions_uid_bytes(const SessionTable *t, uid_t uid) {
        uint64_t b = 0;
        for (const DSession *d = t->head; d; d = d->next)
                if (d->uid == uid)
                        b += d->kv_bytes;
        return b;
}

static bool in(const uid_t *uids, unsigned n, uid_t uid) {
        for (unsigned i = 0; i < n; i++)
                if (uids[i] == uid)
                        return true;
        return false;
}

uint64_t sessions_share(const SessionTable *t, const uid_t *also, unsigned n_also) {
        unsigned n = 0; /* distinct uids in `also` */
        for (unsigned i = 0; i < n_also; i++)
                n += !in(also, i, also[i]);
        for (const DSession *d = t->head; d; d = d->next) {
                if (in(also, n_also, d->uid))
                        continue;
                bool seen = false;
                for (const DSession *e = t->head; e != d && !seen; e = e->next)
                        seen = e->uid == d->uid;
                n += !seen;
        }
        return t->lim.kv_budget / (n ? n : 1);
}

static void forget(SessionTable *t, const char *id, const char *why) {
        memcpy(t->forgotten[t->forgotten_pos].id, id, SESSION_ID_LEN + 1);
        t->forgotten[t->forgotten_pos].why = why;
        t->forgotten_pos = (t->forgotten_pos + 1) % DAEMON_EVICTED_MEMORY;
}

const char *sessions_forgotten(const SessionTable *t, const char *id) {
        for (size_t i = 0; i < DAEMON_EVICTED_MEMORY; i++)
                if (t->forgotten[i].why && !strcmp(t->forgotten[i].id, id))
                        return t->forgotten[i].why;
        return NULL;
}

void sessions_drop_all(SessionTable *t, const char *why) {
        while (t->head) {
                if (!t->head->ephemeral)
                        forget(t, t->head->id, why);
                unlink_and_free(t, t->head);
        }
}

/* The least recently used idle session we may evict for `uid`, or NULL. */
static DSession *pick_victim(const SessionTable *t, uid_t uid) {
        const uint64_t fair = sessions_share(t, &uid, 1);
        DSession *best = NULL;
        for (DSession *d = t->head; d; d = d->next) {
                if (d->busy || d->ephemeral)
                        continue;
                if (d->uid != uid && sessions_uid_bytes(t, d->uid) <= fair)
                        continue; /* that user is within its fair share */
                /* <=: the list runs newest first, so among sessions last used in the same
                 * millisecond the one opened first wins (a burst of opens must not evict the
                 * newest) */
                if (!best || d->last_used_ms <= best->last_used_ms)
                        best = d;
        }
        return best;
}

int sessions_bytes_each(const SessionTable *t, uint64_t *ret_bytes) {
        uint32_t slots;
        int r = session_slots(t->m, t->lim.capacity, t->lim.kv_budget, t->lim.kv_type, &slots);
        if (r < 0)
                return r;
        return kv_cache_bytes(t->lim.kv_type, t->m->cfg.n_layer, t->m->cfg.n_head_kv, t->m->cfg.head_dim, slots,
                              ret_bytes);
}

/* Any session (named or ephemeral, closing or not) with this id. */
static DSession *find_id(const SessionTable *t, const char *id) {
        for (DSession *d = t->head; d; d = d->next)
                if (!strcmp(d->id, id))
                        return d;
        return NULL;
}

/* Open a session; id NULL: a fresh random one. may_evict: idle sessions may go to make room. */
static int open_session(SessionTable *t, uid_t uid, bool ephemeral, const char *id, bool may_evict, uint64_t now_ms,
                        DSession **ret_ds, unsigned *ret_n_evicted) {
        uint64_t need;
        unsigned evicted = 0;
        int r;

        *ret_n_evicted = 0;
        if (id && find_id(t, id))
                return -EEXIST; /* never two live sessions with one id */
        if (!ephemeral) {
                uint64_t mine = 0;
                for (const DSession *d = t->head; d; d = d->next)
                        mine += d->uid == uid && !d->ephemeral;
                if (t->n_named >= t->lim.max_sessions || mine >= t->lim.max_per_uid)
                        return -EUSERS;
        }
        r = sessions_bytes_each(t, &need);
        if (r < 0)
                return r;
        while (t->kv_used + need > t->lim.kv_budget) {
                DSession *v = may_evict ? pick_victim(t, uid) : NULL;
                if (!v)
                        return -ENOSPC;
                forget(t, v->id, "was evicted to free KV memory for other sessions");
                t->n_evicted_total++;
                unlink_and_free(t, v);
                evicted++;
        }
        *ret_n_evicted = evicted;

        DSession *ds = calloc(1, sizeof(*ds));
        if (!ds)
                return -ENOMEM;
        r = session_new(t->m, t->lim.capacity, t->lim.kv_budget, t->lim.kv_type, &ds->s);
        if (r < 0) {
                free(ds);
                return r;
        }
        if (id) {
                snprintf(ds->id, sizeof(ds->id), "%s", id);
        } else {
                do { /* unique, however unlikely a repeat of 64 random bits is */
                        uint64_t rnd;
                        if (getrandom(&rnd, sizeof(rnd), 0) != sizeof(rnd))
                                rnd = now_ms * 0x9e3779b97f4a7c15ull ^ (uint64_t)(uintptr_t)ds ^ t->n_named;
                        snprintf(ds->id, sizeof(ds->id), "s-%016llx", (unsigned long long)rnd);
                } while (find_id(t, ds->id));
        }
        ds->uid = uid;
        ds->ephemeral = ephemeral;
        ds->kv_bytes = session_kv_bytes(ds->s);
        ds->created_ms = ds->last_used_ms = now_ms;
        ds->next = t->head;
        t->head = ds;
        t->kv_used += ds->kv_bytes;
        if (ephemeral)
                t->n_ephemeral++;
        else
                t->n_named++;
        *ret_ds = ds;
        return 0;
}

int sessions_open(SessionTable *t, uid_t uid, bool ephemeral, uint64_t now_ms, DSession **ret_ds,
                  unsigned *ret_n_evicted) {
        return open_session(t, uid, ephemeral, NULL, true, now_ms, ret_ds, ret_n_evicted);
}

int sessions_restore(SessionTable *t, const char *id, uid_t uid, uint64_t now_ms, DSession **ret_ds) {
        unsigned evicted;
        if (strlen(id) != SESSION_ID_LEN)
                return -EINVAL;
        return open_session(t, uid, false, id, false, now_ms, ret_ds, &evicted);
}

int sessions_get(SessionTable *t, const char *id, uid_t uid, bool is_admin, DSession **ret_ds) {
        for (DSession *d = t->head; d; d = d->next) {
                if (d->ephemeral || d->closing || strcmp(d->id, id) != 0)
                        continue;
                if (d->uid != uid && !is_admin)
                        return -EPERM;
                *ret_ds = d;
                return 0;
        }
        return sessions_forgotten(t, id) ? -ESTALE : -ENOENT;
}

void sessions_close(SessionTable *t, DSession *ds) {
        if (ds->busy)
                ds->closing = true;
        else
                unlink_and_free(t, ds);
}

void sessions_release(SessionTable *t, DSession *ds, uint64_t now_ms) {
        ds->busy = false;
        ds->last_used_ms = now_ms;
        ds->n_requests++;
        if (ds->ephemeral || ds->closing)
                unlink_and_free(t, ds);
}

unsigned sessions_expire(SessionTable *t, uint64_t now_ms, uint64_t idle_ms) {
        unsigned n = 0;
        DSession *d = t->head;
        while (d) {
                DSession *next = d->next;
                if (!d->busy && !d->ephemeral && now_ms - d->last_used_ms > idle_ms) {
                        unlink_and_free(t, d);
                        n++;
                }
                d = next;
        }
        return n;
}
