/* daemon/dispatch.c — what the loop does with each decoded request: answers the cheap ops
 * itself (hello, status, sessions, experts, cancel, shutdown) and hands the ones that compute
 * (generate, score, tokenize, detokenize) to the scheduler as jobs. Loop thread only. */
#include "server.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "guard.h"
#include "hugepage.h"
#include "log.h"
#ifdef MIXD_CLUSTER
#include "cluster.h"
#endif

void reply_error(Conn *c, uint64_t id, const char *code, const char *fmt, ...) {
        ProtoError err = { .code = code, .has_id = true, .id = id };
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err.message, sizeof(err.message), fmt, ap);
        va_end(ap);
        conn_send_error(c, &err);
}

/* Send a packed reply, or the error saying why it could not be framed; close the connection
 * when not even that can be made (a request never goes unanswered on an open connection). */
static void send_out(Conn *c, ProtoOut *o, uint64_t id) {
        uint8_t *frame;
        size_t len;
        ProtoError err;
        int r = proto_out_frame_or_error(o, id, &frame, &len, &err);
        proto_out_done(o);
        if (r > 0)
                log_warning("request %llu on connection %llu: %s", (unsigned long long)id, (unsigned long long)c->id,
                            err.message);
        if (r < 0)
                conn_close(c);
        else
                conn_send(c, frame, len);
}

static void op_hello(Conn *c, const Request *req) {
        Server *srv = c->srv;
        const ModelConfig *mc = &srv->m->cfg;
        ProtoOut o;
        proto_out_init(&o);
        proto_out_ok(&o, req->id, 4);
        proto_out_kv_uint(&o, "version", PROTO_VERSION);
        proto_out_kv_str(&o, "server", "mixd " MIXD_VERSION);
        proto_out_str(&o, "model");
        proto_out_map(&o, 9);
        proto_out_kv_str(&o, "path", srv->cfg->model);
        proto_out_kv_uint(&o, "n_layer", mc->n_layer);
        proto_out_kv_uint(&o, "n_embd", mc->n_embd);
        proto_out_kv_uint(&o, "n_vocab", mc->n_vocab);
        proto_out_kv_uint(&o, "n_expert", mc->n_expert);
        proto_out_kv_uint(&o, "n_expert_used", mc->n_expert_used);
        proto_out_kv_uint(&o, "sliding_window", mc->sliding_window);
        proto_out_kv_uint(&o, "n_ctx_train", mc->n_ctx_train);
        proto_out_kv_str(&o, "moe_layout", srv->m->moe_layout);
        proto_out_str(&o, "limits");
        proto_out_limits(&o);
        send_out(c, &o, req->id);
}

/* Requests the loop answers itself cost the loop's time, which every connection shares:
 * status, experts and session.list are limited per connection (a token bucket). */
static bool loop_op_allowed(Conn *c, const Request *req) {
        const uint64_t t = now_ms();
        c->loop_ops += (double)(t - c->loop_ops_ms) * DAEMON_LOOP_OPS_PER_S / 1000.0;
        if (c->loop_ops > DAEMON_LOOP_OPS_BURST)
                c->loop_ops = DAEMON_LOOP_OPS_BURST;
        c->loop_ops_ms = t;
        if (c->loop_ops >= 1.0) {
                c->loop_ops -= 1.0;
                return true;
        }
        reply_error(c, req->id, "over_limit", "at most %d status, experts and session.list requests per second on one "
                    "connection", DAEMON_LOOP_OPS_PER_S);
        return false;
}

static void op_status(Conn *c, const Request *req) {
        Server *srv = c->srv;
        ProtoOut o;
        proto_out_init(&o);
        /* walking /proc/self/smaps takes the loop most of a millisecond: at most every 10 s */
        const uint64_t t = now_ms();
        if (!srv->huge_read_ms || t - srv->huge_read_ms >= DAEMON_STATUS_REFRESH_MS) {
                srv->huge_bytes = 0; /* 0 when unknown */
                (void)hugepage_mapped_bytes(srv->m->file->base, srv->m->file->size, &srv->huge_bytes);
                srv->huge_read_ms = t;
        }
#ifdef MIXD_CLUSTER
        struct Cluster *cl = server_cluster();
        if (cl && (srv->huge_read_ms == t)) {
                const int64_t res = cluster_resident_bytes(srv->m->file->base, srv->m->file->size);
                srv->front_resident = res > 0 ? (uint64_t)res : 0;
        }
#else
        void *cl = NULL;
#endif
        const uint64_t huge = srv->huge_bytes;
        uint64_t per_pos = 0;
        (void)session_kv_bytes_per_pos(srv->m, srv->sessions.lim.kv_type, &per_pos);
        proto_out_ok(&o, req->id, 19 + (cl != NULL));
        proto_out_kv_str(&o, "model", srv->cfg->model);
        proto_out_kv_uint(&o, "model_bytes", srv->m->file->size);
        proto_out_kv_uint(&o, "model_huge_page_bytes", huge);
        proto_out_kv_uint(&o, "sessions", srv->sessions.n_named);
        proto_out_kv_uint(&o, "active_requests", srv->jobs.n);
        proto_out_kv_uint(&o, "queue", sched_queue_length(&srv->sched));
        proto_out_kv_uint(&o, "queued_bytes", srv->jobs.bytes);
        proto_out_kv_uint(&o, "kv_waiting", srv->jobs.n_waiting);
        proto_out_kv_uint(&o, "connections", srv->n_conns);
        proto_out_kv_uint(&o, "kv_bytes_used", srv->sessions.kv_used);
        proto_out_kv_uint(&o, "kv_budget", srv->sessions.lim.kv_budget);
        proto_out_kv_str(&o, "kv_type", kv_type_name(srv->sessions.lim.kv_type));
        proto_out_kv_uint(&o, "kv_bytes_per_pos", per_pos);
        proto_out_kv_uint(&o, "sessions_evicted", srv->sessions.n_evicted_total);
        proto_out_kv_double(&o, "tokens_per_s", srv->tokens_per_s);
        proto_out_kv_uint(&o, "tokens_generated", srv->jobs.tokens_generated);
        proto_out_kv_uint(&o, "threads", sched_threads(&srv->sched));
        proto_out_kv_double(&o, "uptime_s", (double)(now_ms() - srv->start_ms) / 1000.0);
        /* the NUMA plan: per node, expert bytes placed there and threads pinned there */
        proto_out_str(&o, "numa");
        proto_out_array(&o, srv->numa.n_nodes);
        for (unsigned n = 0; n < srv->numa.n_nodes; n++) {
                proto_out_map(&o, 2);
                proto_out_kv_uint(&o, "expert_bytes", srv->numa.node_bytes[n]);
                proto_out_kv_uint(&o, "threads", srv->numa.node_threads[n]);
        }
#ifdef MIXD_CLUSTER
        /* the cluster mode: one object per rank (rank 0 is this daemon) */
        if (cl) {
                const uint64_t tokens = cluster_tokens(cl);
                proto_out_str(&o, "ranks");
                proto_out_array(&o, cluster_size(cl));
                for (unsigned r = 0; r < cluster_size(cl); r++) {
                        ClusterRankStats st;
                        cluster_rank_stats(cl, r, &st);
                        proto_out_map(&o, 13);
                        proto_out_kv_uint(&o, "rank", r);
                        proto_out_kv_str(&o, "host", st.host);
                        proto_out_kv_uint(&o, "experts", st.experts);
                        proto_out_kv_uint(&o, "expert_bytes", st.expert_bytes);
                        proto_out_kv_uint(&o, "resident_bytes", r == 0 ? srv->front_resident : st.resident_bytes);
                        proto_out_kv_uint(&o, "steps", st.steps);
                        proto_out_kv_uint(&o, "rows", st.rows);
                        proto_out_kv_double(&o, "compute_s", (double)st.compute_us / 1e6);
                        proto_out_kv_double(&o, "wait_s", (double)st.wait_us / 1e6);
                        proto_out_kv_double(&o, "ms_per_token", tokens ? (double)st.compute_us / 1e3 / (double)tokens : 0.0);
                        proto_out_kv_uint(&o, "sent_bytes", st.sent_bytes);
                        proto_out_kv_uint(&o, "received_bytes", st.received_bytes);
                        proto_out_kv_uint(&o, "tokens", tokens);
                }
        }
#endif
        send_out(c, &o, req->id);
}

/* The routing counts add up every user's tokens: what one user's prompts route where is
 * visible in them, so only administrators may read them. */
static void op_experts(Conn *c, const Request *req) {
        Server *srv = c->srv;
        if (!c->is_admin) {
                reply_error(c, req->id, "permission_denied", "the routing counts cover every user's requests: only root, "
                            "the daemon's user or the admin group may read them");
                return;
        }
        const uint32_t L = srv->m->cfg.n_layer, E = srv->m->cfg.n_expert;
        uint64_t *counts = calloc((size_t)L * (E ? E : 1), sizeof(uint64_t));
        if (!counts) {
                reply_error(c, req->id, "internal", "out of memory");
                return;
        }
        sched_expert_counts(&srv->sched, counts);
        ProtoOut o;
        proto_out_init(&o);
        proto_out_ok(&o, req->id, 4);
        proto_out_kv_uint(&o, "n_layer", L);
        proto_out_kv_uint(&o, "n_expert", E);
        proto_out_kv_uint(&o, "n_expert_used", srv->m->cfg.n_expert_used);
        proto_out_str(&o, "counts"); /* [layer][expert]: tokens routed there since start */
        proto_out_array(&o, E ? L : 0);
        for (uint32_t l = 0; E && l < L; l++) {
                proto_out_array(&o, E);
                for (uint32_t e = 0; e < E; e++)
                        proto_out_uint(&o, counts[(size_t)l * E + e]);
        }
        free(counts);
        send_out(c, &o, req->id);
}

static const char *session_error_code(int r) {
        return r == -EPERM ? "permission_denied" : "not_found";
}

static const char *session_error_text(const Server *srv, int r, const char *id) {
        switch (r) {
        case -EPERM: return "belongs to another user";
        case -ESTALE: return sessions_forgotten(&srv->sessions, id);
        default: return "does not exist (closed or expired)";
        }
}

static void reply_session_opened(Conn *c, const Request *req, const DSession *ds, unsigned evicted) {
        ProtoOut o;
        proto_out_init(&o);
        proto_out_ok(&o, req->id, 4);
        proto_out_kv_str(&o, "session", ds->id);
        proto_out_kv_uint(&o, "capacity", ds->s->kv->n_slots);
        proto_out_kv_uint(&o, "kv_bytes", ds->kv_bytes);
        proto_out_kv_uint(&o, "evicted", evicted);
        send_out(c, &o, req->id);
}

static void op_session_close(Conn *c, const Request *req) {
        DSession *ds;
        int r = sessions_get(&c->srv->sessions, req->session_close.session, c->uid, c->is_admin, &ds);
        if (r < 0) {
                reply_error(c, req->id, session_error_code(r), "session %s %s", req->session_close.session,
                            session_error_text(c->srv, r, req->session_close.session));
                return;
        }
        /* a request still running on it stops at its next token */
        jobs_cancel_session(&c->srv->jobs, ds);
        sessions_close(&c->srv->sessions, ds);
        jobs_admit(&c->srv->jobs); /* its room may be someone's turn */
        ProtoOut o;
        proto_out_init(&o);
        proto_out_ok(&o, req->id, 0);
        send_out(c, &o, req->id);
}

static void op_session_list(Conn *c, const Request *req) {
        SessionTable *t = &c->srv->sessions;
        const uint64_t now = now_ms();
        uint32_t n = 0;
        for (DSession *d = t->head; d; d = d->next)
                n += !d->ephemeral && !d->closing && (d->uid == c->uid || c->is_admin);
        ProtoOut o;
        proto_out_init(&o);
        proto_out_ok(&o, req->id, 1);
        proto_out_str(&o, "sessions");
        proto_out_array(&o, n);
        for (DSession *d = t->head; d; d = d->next) {
                if (d->ephemeral || d->closing || !(d->uid == c->uid || c->is_admin))
                        continue;
                proto_out_map(&o, 7);
                proto_out_kv_str(&o, "session", d->id);
                proto_out_kv_uint(&o, "uid", d->uid);
                proto_out_kv_uint(&o, "n_tokens", (uint64_t)d->s->kv->n_pos);
                proto_out_kv_uint(&o, "kv_bytes", d->kv_bytes);
                proto_out_kv_double(&o, "idle_s", d->busy ? 0.0 : (double)(now - d->last_used_ms) / 1000.0);
                proto_out_kv_bool(&o, "busy", d->busy);
                proto_out_kv_uint(&o, "requests", d->n_requests);
        }
        send_out(c, &o, req->id);
}

static void op_cancel(Conn *c, const Request *req) {
        if (jobs_cancel_request(&c->srv->jobs, c->id, req->cancel.target) > 0) {
                ProtoOut o;
                proto_out_init(&o);
                proto_out_ok(&o, req->id, 0);
                send_out(c, &o, req->id);
                return;
        }
        reply_error(c, req->id, "not_found", "no request %llu in progress on this connection",
                    (unsigned long long)req->cancel.target);
}

static void op_shutdown(Conn *c, const Request *req) {
        if (!c->is_admin) {
                reply_error(c, req->id, "permission_denied", "only root, the daemon's user or the admin group may shut it down");
                return;
        }
        ProtoOut o;
        proto_out_init(&o);
        proto_out_ok(&o, req->id, 0);
        send_out(c, &o, req->id);
        log_notice("shutdown requested by uid %u (pid %d)", (unsigned)c->uid, (int)c->pid);
        server_begin_shutdown(c->srv, "requested by a client");
}

/* Jobs: the compute goes to workers. For generate/score, the session is claimed here, and a
 * session.open that finds no room in the KV budget becomes a job that waits for it.
 * wire_bytes: the request's frame body, which the job holds (decoded) until it ends. */
static void submit_job(Conn *c, Request *req, JobKind kind, size_t wire_bytes) {
        Server *srv = c->srv;
        DSession *ds = NULL;
        bool named = false;
        const uint64_t bytes = jobs_charge(wire_bytes);
        uint64_t held;

        if (guard_tripped() && kind != JOB_SESSION_OPEN) {
                reply_error(c, req->id, "unavailable", "the model file changed on disk while mapped; "
                                                       "mixd needs a reload (SIGHUP) or a restart");
                goto fail;
        }
        if (srv->shutting_down || srv->reloading) {
                reply_error(c, req->id, "unavailable", "the daemon is %s", srv->reloading ? "reloading its model; retry shortly"
                                                                                        : "shutting down");
                goto fail;
        }
        if (c->n_jobs >= DAEMON_MAX_REQUESTS_PER_CONN) {
                reply_error(c, req->id, "over_limit", "at most %d requests in flight per connection",
                            DAEMON_MAX_REQUESTS_PER_CONN);
                goto fail;
        }
        int rb = jobs_check_bytes(&srv->jobs, c->uid, bytes, &held);
        if (rb == -EDQUOT) {
                reply_error(c, req->id, "over_limit", "requests of uid %u in progress hold %llu bytes; this one (%llu) "
                            "would pass max-queued-bytes-per-uid (%llu)", (unsigned)c->uid, (unsigned long long)held,
                            (unsigned long long)bytes, (unsigned long long)srv->jobs.max_bytes_per_uid);
                goto fail;
        }
        if (rb == -ENOBUFS) {
                reply_error(c, req->id, "over_limit", "requests in progress hold %llu bytes; this one (%llu) would pass "
                            "max-queued-bytes (%llu)", (unsigned long long)held, (unsigned long long)bytes,
                            (unsigned long long)srv->jobs.max_bytes);
                goto fail;
        }
        if (jobs_in_progress(&srv->jobs, c->id, req->id)) {
                reply_error(c, req->id, "bad_request", "request id %llu is already in progress",
                            (unsigned long long)req->id);
                goto fail;
        }
        if (kind == JOB_GENERATE && req->generate.session) {
                int r = sessions_get(&srv->sessions, req->generate.session, c->uid, false, &ds);
                if (r < 0) {
                        reply_error(c, req->id, session_error_code(r), "session %s %s", req->generate.session,
                                    session_error_text(srv, r, req->generate.session));
                        goto fail;
                }
                if (ds->busy) {
                        reply_error(c, req->id, "busy", "session %s is in use by another request", ds->id);
                        goto fail;
                }
                named = true;
        } else if (kind == JOB_GENERATE || kind == JOB_SCORE || kind == JOB_SESSION_OPEN) {
                /* a one-shot session, or a named one: without room now, the request waits for it
                 * (jobs_admit decides who gets room first) */
                const bool one_shot = kind != JOB_SESSION_OPEN;
                unsigned evicted;
                int r = sessions_open(&srv->sessions, c->uid, one_shot, now_ms(), &ds, &evicted);
                if (r == 0 && evicted)
                        log_info("evicted %u idle session(s) for uid %u", evicted, (unsigned)c->uid);
                if (r == 0 && !one_shot) {
                        reply_session_opened(c, req, ds, evicted);
                        goto fail; /* answered: nothing to run */
                }
                if (r == -EUSERS) {
                        reply_error(c, req->id, "over_limit", "session limit reached (%llu in all, %llu per user)",
                                    (unsigned long long)srv->sessions.lim.max_sessions,
                                    (unsigned long long)srv->sessions.lim.max_per_uid);
                        goto fail;
                }
                if (r < 0 && r != -ENOSPC) {
                        reply_error(c, req->id, "internal", "cannot open a session: %s", strerror(-r));
                        goto fail;
                }
                if (r == -ENOSPC)
                        ds = NULL;
        }
        c->n_jobs++; /* before: a job that waits for room may be answered and gone within jobs_start */
        if (jobs_start(&srv->jobs, kind, c->id, c->uid, req, bytes, ds, named, srv->cfg->request_timeout * 1000) < 0) {
                c->n_jobs--;
                if (ds && !named)
                        sessions_release(&srv->sessions, ds, now_ms());
                reply_error(c, req->id, "internal", "out of memory");
                goto fail;
        }
        return;
fail:
        request_free(req);
}

void dispatch_request(Conn *c, Request *req, size_t wire_bytes) {
        switch (req->op) {
        case PROTO_OP_HELLO: op_hello(c, req); break;
        case PROTO_OP_STATUS:
                if (loop_op_allowed(c, req))
                        op_status(c, req);
                break;
        case PROTO_OP_EXPERTS:
                if (loop_op_allowed(c, req))
                        op_experts(c, req);
                break;
        case PROTO_OP_SESSION_OPEN: submit_job(c, req, JOB_SESSION_OPEN, wire_bytes); return;
        case PROTO_OP_SESSION_CLOSE: op_session_close(c, req); break;
        case PROTO_OP_SESSION_LIST:
                if (loop_op_allowed(c, req))
                        op_session_list(c, req);
                break;
        case PROTO_OP_CANCEL: op_cancel(c, req); break;
        case PROTO_OP_SHUTDOWN: op_shutdown(c, req); break;
        case PROTO_OP_GENERATE: submit_job(c, req, JOB_GENERATE, wire_bytes); return;
        case PROTO_OP_SCORE: submit_job(c, req, JOB_SCORE, wire_bytes); return;
        case PROTO_OP_TOKENIZE: submit_job(c, req, JOB_TOKENIZE, wire_bytes); return;
        case PROTO_OP_DETOKENIZE: submit_job(c, req, JOB_DETOKENIZE, wire_bytes); return;
        default: reply_error(c, req->id, "unknown_op", "unknown operation"); break;
        }
        request_free(req);
}
