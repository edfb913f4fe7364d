/* daemon/jobs.c — the requests that compute, run in the scheduler's rounds: generate (a
 * prefill chunk, then one token per round), score (one chunk per round), tokenize and
 * detokenize (one round). The engine thread never touches sockets: output goes to the outbox.
 * job_new/job_free: loop thread; round callbacks: the engine thread. */
#include "server.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "ops.h"
#include "tokenizer.h"

/* Queue a frame for the job's client. last: the frame that ends the request (done event,
 * final reply or error): the loop releases the job's session as it sends it, so a client
 * that reacts to it at once finds the session free. Nothing touches the session after it. */
static void emit(Job *j, ProtoOut *o, bool last) {
        uint8_t *frame;
        size_t len;
        if (proto_out_frame(o, &frame, &len) == 0)
                outbox_push(j->srv, j->conn_id, j, frame, len, last);
        else if (last)
                outbox_push(j->srv, j->conn_id, j, NULL, 0, true);
        proto_out_done(o);
}

static void emit_error(Job *j, const char *code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void emit_error(Job *j, const char *code, const char *fmt, ...) {
        ProtoError err = { .code = code, .has_id = true, .id = j->req.id };
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err.message, sizeof(err.message), fmt, ap);
        va_end(ap);
        ProtoOut o;
        proto_out_init(&o);
        proto_out_error(&o, &err);
        emit(j, &o, true);
}

/* What a request whose logits hold a NaN or an infinity is told (the engine's -EDOM). */
#define NONFINITE_LOGITS "the model produced non-finite logits (NaN or infinity); its weights are likely corrupt"

static bool cancelled(Job *j) {
        return __atomic_load_n(&j->cancel, __ATOMIC_RELAXED) != 0;
}

/* Tokenize text; false (after replying) when it cannot be. */
static bool tokenize_text(Job *j, const char *text, size_t len, bool add_bos) {
        int r = tokenizer_encode(j->srv->m->tok, text, len, add_bos, &j->tokens, &j->n_tokens);
        if (r < 0) {
                emit_error(j, r == -EILSEQ ? "bad_request" : "too_large", "cannot tokenize: %s",
                           r == -EILSEQ ? "invalid UTF-8" : strerror(-r));
                return false;
        }
        if (j->n_tokens > j->srv->cfg->max_prompt_tokens) {
                emit_error(j, "over_limit", "%zu tokens is over the limit of %llu", j->n_tokens,
                           (unsigned long long)j->srv->cfg->max_prompt_tokens);
                return false;
        }
        return true;
}

/* ------------------------------------------------------------------ generate */

static void emit_done(Job *j) {
        const GenerateRequest *g = &j->req.generate;
        const uint64_t t = now_ms();
        const uint64_t tp = j->t_prefill_ms ? j->t_prefill_ms : t;
        DoneEvent ev = { .id = j->req.id, .stop_reason = gen_stop_reason_name(j->gen.stop_reason),
                         .n_prompt = j->n_tokens, .n_generated = (uint64_t)j->gen.n_generated,
                         .prompt_ms = (double)(tp - j->t0_ms), .generate_ms = (double)(t - tp),
                         .session = j->session_named ? g->session : NULL, .n_dropped = j->n_dropped };
        ProtoOut o;
        proto_out_init(&o);
        proto_out_done_event(&o, &ev);
        emit(j, &o, true);
}

/* A session's turn: the tokens of its whole text so far plus the prompt (session_plan). */
static int generate_begin(Job *j) {
        const GenerateRequest *g = &j->req.generate;
        Session *s = j->ds->s;
        SessionPlan plan;
        int r = session_plan(s, g->prompt, g->prompt_len, g->add_bos, &plan);
        if (r < 0) {
                emit_error(j, r == -EILSEQ ? "bad_request" : r == -ENOMEM ? "internal" : "too_large",
                           "cannot tokenize: %s", r == -EILSEQ ? "invalid UTF-8" : strerror(-r));
                return 0;
        }
        if (plan.n_feed > j->srv->cfg->max_prompt_tokens) {
                emit_error(j, "over_limit", "%zu tokens is over the limit of %llu", plan.n_feed,
                           (unsigned long long)j->srv->cfg->max_prompt_tokens);
                session_plan_free(&plan);
                return 0;
        }
        if (s->kv->n_pos == 0 && plan.n_feed == 0) {
                emit_error(j, "bad_request", "an empty prompt needs add_bos on a new session");
                session_plan_free(&plan);
                return 0;
        }
        j->n_tokens = plan.n_feed;
        j->n_dropped = (uint64_t)(s->kv->n_pos - plan.keep);
        GenParams gp = {
                .sampling = { .temperature = g->temperature, .top_k = g->top_k, .top_p = g->top_p, .min_p = g->min_p,
                              .repeat_penalty = g->repeat_penalty, .repeat_last_n = g->repeat_last_n, .seed = g->seed },
                .n_predict = g->n_predict,
                .n_stops = (int)g->n_stop,
                .want_logprobs = g->logprobs,
        };
        if (!g->has_seed && getrandom(&gp.sampling.seed, sizeof(gp.sampling.seed), 0) != sizeof(gp.sampling.seed))
                gp.sampling.seed = now_ms();
        for (uint32_t i = 0; i < g->n_stop; i++)
                gp.stops[i] = g->stop[i];
        r = generation_start(&j->gen, s, &plan, &gp);
        session_plan_free(&plan);
        if (r < 0) {
                emit_error(j, "internal", "cannot start: %s", strerror(-r));
                return 0;
        }
        j->started = true;
        return 1;
}

/* Tokens per prefill round: long prompts share the engine with other sessions. */
static uint32_t feed_limit(Forward *fw, const Session *s, uint32_t max_rows) {
        uint32_t n = forward_max_chunk(fw, s->kv);
        if (n > DAEMON_PREFILL_CHUNK)
                n = DAEMON_PREFILL_CHUNK;
        return n < max_rows ? n : max_rows;
}

static int generate_begin_round(SchedJob *sj, Forward *fw, uint32_t max_rows, ForwardItem *item) {
        Job *j = (Job *)sj;
        Session *s = j->ds->s;
        j->fed = 0;
        if (!j->started) {
                j->t0_ms = now_ms();
                if (!generate_begin(j)) {
                        j->failed = true;
                        return 0;
                }
        }
        if (cancelled(j))
                generation_cancel(&j->gen);
        const int32_t *tokens;
        const uint32_t n = generation_want(&j->gen, feed_limit(fw, s, max_rows), &tokens);
        if (n == 0)
                return 0;
        *item = (ForwardItem){ .kv = s->kv, .tokens = tokens, .n_tokens = n, .mode = FORWARD_LOGITS_LAST,
                               .logits = s->last_logits };
        j->fed = n;
        return 1;
}

/* The batch failed: tell the client why. */
static void emit_batch_error(Job *j, int err) {
        if (err == -EIO)
                emit_error(j, "unavailable", "the model file changed on disk while mapped (truncated?); "
                                             "mixd needs a reload (SIGHUP) or a restart");
        else
                emit_error(j, "internal", "forward pass failed: %s", strerror(-err));
}

/* The job already answered, or the round's batch failed (then it answers now). */
static bool round_failed(Job *j, int err) {
        if (j->failed)
                return true;
        if (err < 0) {
                emit_batch_error(j, err);
                return true;
        }
        return false;
}

static int generate_end_round(SchedJob *sj, Forward *fw, int err) {
        Job *j = (Job *)sj;
        if (round_failed(j, err))
                return 0;
        GenEvent ev;
        int r = generation_after(&j->gen, j->fed, &ev);
        if (r < 0) {
                if (r == -EDOM)
                        emit_error(j, "internal", "%s", NONFINITE_LOGITS);
                else
                        emit_error(j, "internal", "generation failed: %s", strerror(-r));
                return 0;
        }
        if (!ev.prefilling && !j->t_prefill_ms)
                j->t_prefill_ms = now_ms();
        if (ev.prefilling && ev.prompt_total > DAEMON_PREFILL_CHUNK) {
                /* a long prompt: {"id", "event": "progress", "done", "total"} after each round */
                ProtoOut o;
                proto_out_init(&o);
                proto_out_map(&o, 4);
                proto_out_kv_uint(&o, "id", j->req.id);
                proto_out_kv_str(&o, "event", "progress");
                proto_out_kv_uint(&o, "done", ev.prompt_done);
                proto_out_kv_uint(&o, "total", ev.prompt_total);
                emit(j, &o, false);
        }
        if (ev.has_token || ev.text_len > 0) {
                if (ev.has_token)
                        __atomic_fetch_add(&j->srv->tokens_window, 1, __ATOMIC_RELAXED);
                TokenEvent te = { .id = j->req.id, .text = ev.text, .text_len = ev.text_len,
                                  .token = (uint32_t)(ev.has_token ? ev.token : j->gen.next_token),
                                  .has_logprob = ev.has_token && j->req.generate.logprobs, .logprob = ev.logprob };
                ProtoOut o;
                proto_out_init(&o);
                proto_out_token_event(&o, &te);
                emit(j, &o, false);
        }
        if (r > 0)
                return 1;
        /* a named session continues after everything this request produced: one more round
         * puts the last sampled token into its cache */
        if (j->session_named && j->gen.have_next && !j->settle_asked) {
                j->settle_asked = true;
                j->gen.settling = 1;
                return 1;
        }
        emit_done(j);
        return 0;
}

/* ------------------------------------------------------------------ score */

static int score_begin_round(SchedJob *sj, Forward *fw, uint32_t max_rows, ForwardItem *item) {
        Job *j = (Job *)sj;
        const TextRequest *t = &j->req.score;
        Session *s = j->ds->s;
        j->fed = 0;
        if (!j->started) {
                j->started = true;
                if (!tokenize_text(j, t->text, t->text_len, t->add_bos)) {
                        j->failed = true;
                        return 0;
                }
                const size_t V = j->srv->m->cfg.n_vocab;
                j->logprobs = calloc(j->n_tokens ? j->n_tokens : 1, sizeof(float));
                j->chunk_logits = malloc((size_t)DAEMON_PREFILL_CHUNK * V * sizeof(float));
                if (!j->logprobs || !j->chunk_logits) {
                        emit_error(j, "internal", "out of memory");
                        j->failed = true;
                        return 0;
                }
        }
        if (cancelled(j) || j->n_scored >= j->n_tokens)
                return 0;
        const uint32_t left = (uint32_t)(j->n_tokens - j->n_scored), lim = feed_limit(fw, s, max_rows);
        const uint32_t n = left < lim ? left : lim;
        *item = (ForwardItem){ .kv = s->kv, .tokens = j->tokens + j->n_scored, .n_tokens = n,
                               .mode = FORWARD_LOGITS_ALL, .logits = j->chunk_logits };
        j->fed = n;
        return 1;
}

static int score_end_round(SchedJob *sj, Forward *fw, int err) {
        Job *j = (Job *)sj;
        if (round_failed(j, err))
                return 0;
        if (cancelled(j)) {
                emit_error(j, "cancelled", "request cancelled");
                return 0;
        }
        const size_t V = j->srv->m->cfg.n_vocab;
        for (uint32_t t = 0; t < j->fed; t++)
                if (j->n_scored + t + 1 < j->n_tokens) {
                        if (!all_finite(j->chunk_logits + t * V, V)) {
                                emit_error(j, "internal", "%s", NONFINITE_LOGITS);
                                return 0;
                        }
                        j->logprobs[j->n_scored + t] = (float)log_softmax_at(j->chunk_logits + t * V, (uint32_t)V, j->tokens[j->n_scored + t + 1]);
                }
        j->n_scored += j->fed;
        if (j->n_scored < j->n_tokens)
                return 1;

        ProtoOut o;
        proto_out_init(&o);
        proto_out_ok(&o, j->req.id, 3);
        double total = 0.0;
        proto_out_str(&o, "tokens");
        proto_out_array(&o, (uint32_t)j->n_tokens);
        for (size_t i = 0; i < j->n_tokens; i++)
                proto_out_uint(&o, (uint64_t)j->tokens[i]);
        proto_out_str(&o, "logprobs"); /* logprobs[i]: log p(tokens[i+1] | tokens[0..i]) */
        const uint32_t n_lp = j->n_tokens ? (uint32_t)j->n_tokens - 1 : 0;
        proto_out_array(&o, n_lp);
        for (uint32_t i = 0; i < n_lp; i++) {
                proto_out_double(&o, j->logprobs[i]);
                total += j->logprobs[i];
        }
        proto_out_kv_double(&o, "total_logprob", total);
        emit(j, &o, true);
        return 0;
}

/* ------------------------------------------------------------------ tokenize / detokenize */

/* Jobs that need no forward pass do their work in end_round. */
static int no_feed(SchedJob *sj, Forward *fw, uint32_t max_rows, ForwardItem *item) {
        return 0;
}

static int tokenize_end_round(SchedJob *sj, Forward *fw, int err) {
        Job *j = (Job *)sj;
        const TextRequest *t = &j->req.tokenize;
        if (!tokenize_text(j, t->text, t->text_len, t->add_bos))
                return 0;
        ProtoOut o;
        proto_out_init(&o);
        proto_out_ok(&o, j->req.id, 1);
        proto_out_str(&o, "tokens");
        proto_out_array(&o, (uint32_t)j->n_tokens);
        for (size_t i = 0; i < j->n_tokens; i++)
                proto_out_uint(&o, (uint64_t)j->tokens[i]);
        emit(j, &o, true);
        return 0;
}

static int detokenize_end_round(SchedJob *sj, Forward *fw, int err) {
        Job *j = (Job *)sj;
        const DetokenizeRequest *d = &j->req.detokenize;
        const Tokenizer *tok = j->srv->m->tok;
        Detokenizer dt;
        char *text = malloc(d->n_tokens * DETOK_MAX_OUT + 16);
        size_t len = 0;
        if (!text) {
                emit_error(j, "internal", "out of memory");
                return 0;
        }
        detok_init(&dt, tok, 1);
        for (size_t i = 0; i < d->n_tokens; i++) {
                int n = detok_push(&dt, d->tokens[i], text + len);
                if (n < 0) {
                        emit_error(j, "bad_request", "token %d is not in the vocabulary (0..%u)", d->tokens[i],
                                   tokenizer_n_vocab(tok) - 1);
                        free(text);
                        return 0;
                }
                len += (size_t)n;
        }
        len += (size_t)detok_flush(&dt, text + len);
        ProtoOut o;
        proto_out_init(&o);
        proto_out_ok(&o, j->req.id, 1);
        proto_out_kv_strn(&o, "text", text, len);
        free(text);
        emit(j, &o, true);
        return 0;
}

/* ------------------------------------------------------------------ lifetime */

static void job_finished(SchedJob *sj) {
        Job *j = (Job *)sj;
        outbox_job_done(j->srv, j);
}

Job *job_new(Server *srv, Conn *c, JobKind kind, Request *req) {
        static const struct {
                int (*begin)(SchedJob *, Forward *, uint32_t, ForwardItem *);
                int (*end)(SchedJob *, Forward *, int);
        } rounds[] = {
                [JOB_GENERATE] = { generate_begin_round, generate_end_round },
                [JOB_SCORE] = { score_begin_round, score_end_round },
                [JOB_TOKENIZE] = { no_feed, tokenize_end_round },
                [JOB_DETOKENIZE] = { no_feed, detokenize_end_round },
        };
        Job *j = calloc(1, sizeof(*j));
        if (!j)
                return NULL;
        j->srv = srv;
        j->kind = kind;
        j->conn_id = c->id;
        j->req = *req; /* ownership moves to the job */
        memset(req, 0, sizeof(*req));
        j->sj.begin = rounds[kind].begin;
        j->sj.end = rounds[kind].end;
        j->sj.done = job_finished;
        j->deadline_ms = now_ms() + srv->cfg->request_timeout * 1000;
        return j;
}

void job_cancel(Server *srv, Job *j) {
        __atomic_store_n(&j->cancel, 1, __ATOMIC_RELAXED);
        if (j->backpressured) { /* it must run to see the flag */
                j->backpressured = false;
                sched_set_paused(&srv->sched, &j->sj, false);
        }
}

void job_free(Job *j) {
        if (!j)
                return;
        generation_done(&j->gen);
        free(j->tokens);
        free(j->logprobs);
        free(j->chunk_logits);
        request_free(&j->req);
        free(j);
}
