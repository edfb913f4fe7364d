/* daemon/rounds.c — what a job does in the scheduler's rounds: generate (a prefill chunk, then
 * one token per round), score (one chunk per round), tokenize and detokenize (one round).
 * Engine thread, except job_rounds_init/job_rounds_done (loop thread, while the scheduler does
 * not hold the job). It sees only the Job and its JobEnv; output goes to the outbox. */
#include "job.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "clock.h"
#include "daemon_limits.h"
#include "log.h"
#include "ops.h"
#include "tokenizer.h"

/* Queue a frame for the job's client, tagged with tag (see answer_stopped). last: the frame
 * that ends the request (done event, final reply or error; j->answered once it is queued):
 * the loop releases the job's session as it sends it (a tagged one), so a client that reacts
 * to it at once finds the session free. Nothing touches the session after it.
 * A reply that cannot be framed (over the frame limits, out of memory) is replaced by the
 * error saying why, which ends the request (j->failed is set). If not even that can be made,
 * a last frame without bytes goes out (the session is released) and the job list answers for
 * the request when the job ends (jobs.h). Returns 0 (queued as made), 1 (the error queued in
 * its place) or -ENOMEM (nothing could be made or queued). */
static int emit_as(Job *j, ProtoOut *o, bool last, Job *tag) {
        uint8_t *frame = NULL;
        size_t len = 0;
        ProtoError err;
        int r = proto_out_frame_or_error(o, j->req.id, &frame, &len, &err);
        proto_out_done(o);
        if (r != 0) {
                log_warning("request %llu on connection %llu: %s", (unsigned long long)j->req.id,
                            (unsigned long long)j->conn_id, r > 0 ? err.message : "no memory for its reply");
                j->failed = true;
                last = true;
        }
        if (outbox_push(j->env->outbox, j->conn_id, tag, frame, len, last) < 0)
                return -ENOMEM;
        if (last && r >= 0)
                j->answered = true; /* a last frame with bytes: the request's one answer */
        return r;
}

/* Queue one of the job's own frames. true: the request ended in its place (an error replaced
 * it, or it was lost for want of memory, and the job list answers): the job must stop. */
static bool emit(Job *j, ProtoOut *o, bool last) {
        if (emit_as(j, o, last, j) == 0)
                return false;
        j->failed = true;
        return true;
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

static int stop_reason(const Job *j) {
        return __atomic_load_n(&j->cancel, __ATOMIC_RELAXED);
}

/* The error that ends a request stopped for its user's KV share or its unread output, or
 * that waited too long for room; false for a plain cancel. */
static bool stop_error(const Job *j, ProtoError *err) {
        *err = (ProtoError){ .has_id = true, .id = j->req.id };
        switch (stop_reason(j)) {
        case JOB_STOP_SHARE:
                err->code = "over_limit";
                snprintf(err->message, sizeof(err->message), "cancelled to make room in the KV budget for another "
                         "user: uid %u held more than its share", (unsigned)j->uid);
                return true;
        case JOB_STOP_UNREAD:
                err->code = "timeout";
                snprintf(err->message, sizeof(err->message), "cancelled: the client read nothing for %llu s while "
                         "output waited (unread-timeout)", (unsigned long long)j->env->unread_timeout_s);
                return true;
        case JOB_STOP_NO_ROOM:
                err->code = "over_limit";
                snprintf(err->message, sizeof(err->message), "no room in the KV budget within the request timeout "
                         "(%llu s)", (unsigned long long)j->env->request_timeout_s);
                return true;
        default:
                return false;
        }
}

/* End the request with its stop error, if it has one (see stop_error). */
static bool emit_stop_error(Job *j) {
        ProtoError e;
        if (!stop_error(j, &e))
                return false;
        ProtoOut o;
        proto_out_init(&o);
        proto_out_error(&o, &e);
        emit(j, &o, true);
        return true;
}

/* A request stopped before it began: see job_answer_stopped. tag: the job the loop hears of
 * with the frame, which then ends the request; NULL when the loop answers. */
static void answer_stopped(Job *j, Job *tag) {
        ProtoOut o;
        ProtoError err;
        proto_out_init(&o);
        if (stop_error(j, &err)) {
                proto_out_error(&o, &err);
        } else if (j->kind == JOB_GENERATE) {
                DoneEvent ev = { .id = j->req.id, .stop_reason = gen_stop_reason_name(GEN_STOP_CANCELLED),
                                 .session = j->session_named ? j->req.generate.session : NULL };
                proto_out_done_event(&o, &ev);
        } else {
                err = (ProtoError){ .code = "cancelled", .has_id = true, .id = j->req.id };
                snprintf(err.message, sizeof(err.message), "request cancelled");
                proto_out_error(&o, &err);
        }
        emit_as(j, &o, true, tag);
}

/* The engine takes a job cancelled before its first round: answered, nothing computed. */
static bool cancelled_before_start(Job *j) {
        if (j->started || !cancelled(j))
                return false;
        j->started = j->failed = true;
        answer_stopped(j, j);
        return true;
}

/* Tokenize text; false (after replying) when it cannot be. */
static bool tokenize_text(Job *j, const char *text, size_t len, bool add_bos) {
        int r = tokenizer_encode(j->env->m->tok, text, len, add_bos, &j->tokens, &j->n_tokens);
        if (r < 0) {
                emit_error(j, r == -EILSEQ ? "bad_request" : "too_large", "cannot tokenize: %s",
                           r == -EILSEQ ? "invalid UTF-8" : strerror(-r));
                return false;
        }
        if (j->n_tokens > j->env->max_prompt_tokens) {
                emit_error(j, "over_limit", "%zu tokens is over the limit of %llu", j->n_tokens,
                           (unsigned long long)j->env->max_prompt_tokens);
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
        Session *s = j->s;
        SessionPlan plan;
        int r = session_plan(s, g->prompt, g->prompt_len, g->add_bos, &plan);
        if (r < 0) {
                emit_error(j, r == -EILSEQ ? "bad_request" : r == -ENOMEM ? "internal" : "too_large",
                           "cannot tokenize: %s", r == -EILSEQ ? "invalid UTF-8" : strerror(-r));
                return 0;
        }
        if (plan.n_feed > j->env->max_prompt_tokens) {
                emit_error(j, "over_limit", "%zu tokens is over the limit of %llu", plan.n_feed,
                           (unsigned long long)j->env->max_prompt_tokens);
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
        Session *s = j->s;
        j->fed = 0;
        if (cancelled_before_start(j))
                return 0;
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
                if (emit(j, &o, false))
                        return 0;
        }
        if (ev.has_token || ev.text_len > 0) {
                if (ev.has_token)
                        __atomic_fetch_add(&j->env->tokens_window, 1, __ATOMIC_RELAXED);
                TokenEvent te = { .id = j->req.id, .text = ev.text, .text_len = ev.text_len,
                                  .token = (uint32_t)(ev.has_token ? ev.token : j->gen.next_token),
                                  .has_logprob = ev.has_token && j->req.generate.logprobs, .logprob = ev.logprob };
                ProtoOut o;
                proto_out_init(&o);
                proto_out_token_event(&o, &te);
                if (emit(j, &o, false))
                        return 0;
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
        if (j->gen.stop_reason != GEN_STOP_CANCELLED || !emit_stop_error(j))
                emit_done(j);
        return 0;
}

/* ------------------------------------------------------------------ score */

static int score_begin_round(SchedJob *sj, Forward *fw, uint32_t max_rows, ForwardItem *item) {
        Job *j = (Job *)sj;
        const TextRequest *t = &j->req.score;
        Session *s = j->s;
        j->fed = 0;
        if (cancelled_before_start(j))
                return 0;
        if (!j->started) {
                j->started = true;
                if (!tokenize_text(j, t->text, t->text_len, t->add_bos)) {
                        j->failed = true;
                        return 0;
                }
                if (j->n_tokens > PROTO_MAX_SCORE_TOKENS) { /* its reply would not fit a frame */
                        emit_error(j, "too_large", "the text is %zu tokens; a score reply holds at most %u",
                                   j->n_tokens, PROTO_MAX_SCORE_TOKENS);
                        j->failed = true;
                        return 0;
                }
                const size_t V = j->env->m->cfg.n_vocab;
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
                if (!emit_stop_error(j))
                        emit_error(j, "cancelled", "request cancelled");
                return 0;
        }
        const size_t V = j->env->m->cfg.n_vocab;
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
        if (cancelled_before_start(j))
                return 0;
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
        const Tokenizer *tok = j->env->m->tok;
        if (cancelled_before_start(j))
                return 0;
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
        if (len > PROTO_MAX_TEXT_REPLY) { /* its reply would not fit a frame */
                emit_error(j, "too_large", "the text of these %zu tokens is %zu bytes; a detokenize reply holds at most %u",
                           d->n_tokens, len, PROTO_MAX_TEXT_REPLY);
                free(text);
                return 0;
        }
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
        /* embedded in the job: reporting a finished job never needs memory */
        j->done_msg = (OutMsg){ .conn_id = j->conn_id, .job = j, .job_done = true };
        outbox_post(j->env->outbox, &j->done_msg);
}

void job_rounds_init(Job *j) {
        static const struct {
                int (*begin)(SchedJob *, Forward *, uint32_t, ForwardItem *);
                int (*end)(SchedJob *, Forward *, int);
        } rounds[] = {
                [JOB_GENERATE] = { generate_begin_round, generate_end_round },
                [JOB_SCORE] = { score_begin_round, score_end_round },
                [JOB_TOKENIZE] = { no_feed, tokenize_end_round },
                [JOB_DETOKENIZE] = { no_feed, detokenize_end_round },
        };
        if (j->kind == JOB_SESSION_OPEN)
                return; /* never in the scheduler */
        j->sj.begin = rounds[j->kind].begin;
        j->sj.end = rounds[j->kind].end;
        j->sj.done = job_finished;
}

void job_answer_stopped(Job *j) {
        answer_stopped(j, NULL);
}

void job_rounds_done(Job *j) {
        generation_done(&j->gen);
        free(j->tokens);
        free(j->logprobs);
        free(j->chunk_logits);
        j->tokens = NULL;
        j->logprobs = j->chunk_logits = NULL;
}
