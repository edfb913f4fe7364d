/* engine/generate.c — the generation step machine (see generate.h). */
#include "generate.h"

#include "ops.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

const char *gen_stop_reason_name(GenStopReason r) {
        switch (r) {
        case GEN_RUNNING: return "running";
        case GEN_STOP_LENGTH: return "length";
        case GEN_STOP_EOS: return "eos";
        case GEN_STOP_STRING: return "stop";
        case GEN_STOP_CANCELLED: return "cancelled";
        }
        return "unknown";
}

int generation_start(Generation *g, Session *s, SessionPlan *plan, const GenParams *p) {
        int r;
        memset(g, 0, sizeof(*g));
        g->s = s;
        g->params = *p;
        r = sampler_new(s->m->cfg.n_vocab, &p->sampling, &g->sampler);
        if (r < 0)
                return r;
        r = stop_init(&g->stop, p->stops, p->n_stops);
        if (r < 0)
                goto fail;
        const size_t n = plan->n_feed;
        g->prompt = malloc((n ? n : 1) * sizeof(int32_t));
        g->gen_cap = 2 * DETOK_MAX_OUT + 16;
        g->gen_text = malloc(g->gen_cap);
        if (!g->prompt || !g->gen_text) {
                r = -ENOMEM;
                goto fail;
        }
        memcpy(g->prompt, plan->feed, n * sizeof(int32_t));
        g->n_prompt = n;
        r = session_begin(s, plan); /* the last step that can fail: s changes from here on */
        if (r < 0)
                goto fail;
        g->seg_text = plan->text;
        g->seg_len = plan->text_len;
        plan->text = NULL;
        for (size_t i = 0; i < n; i++)
                sampler_accept(g->sampler, g->prompt[i]);
        detok_init(&g->detok, s->m->tok, plan->at_doc_start);
        return 0;
fail:
        generation_done(g);
        return r;
}

void generation_done(Generation *g) {
        g->sampler = sampler_free(g->sampler);
        free(g->prompt);
        free(g->seg_text);
        free(g->gen_text);
        g->prompt = NULL;
        g->seg_text = g->gen_text = NULL;
}

/* Detokenized text of sampled tokens, kept until they are fed (then it is the session's). */
#define GEN_TEXT_LOST ((size_t)-1) /* gen_len when memory ran out: the session's text becomes unknown */

static void keep_text(Generation *g, const char *text, size_t n) {
        if (g->gen_len == GEN_TEXT_LOST)
                return;
        if (g->gen_len + n > g->gen_cap) {
                char *q = realloc(g->gen_text, 2 * (g->gen_len + n));
                if (!q) {
                        g->gen_len = GEN_TEXT_LOST;
                        return;
                }
                g->gen_text = q;
                g->gen_cap = 2 * (g->gen_len + n);
        }
        memcpy(g->gen_text + g->gen_len, text, n);
        g->gen_len += n;
}

/* The sampled token g->next_token went into the cache: it and its text are the session's. */
static void token_fed(Generation *g) {
        Session *s = g->s;
        if (g->gen_len == GEN_TEXT_LOST) {
                session_text_fed(s, &g->next_token, 1);
                session_text_forget(s);
        } else {
                session_text_add(s, g->gen_text, g->gen_len); /* the text before a control token is the old segment's */
                session_text_fed(s, &g->next_token, 1);
        }
        g->gen_len = 0;
}

/* Text from the detokenizer through the stop matcher into ev. Returns 1 on a stop match. */
static int release_text(Generation *g, const char *piece, size_t n, GenEvent *ev) {
        size_t out;
        int matched = stop_push(&g->stop, piece, n, ev->text + ev->text_len, &out);
        ev->text_len += out;
        return matched;
}

static void finish(Generation *g, GenStopReason why, GenEvent *ev) {
        g->stop_reason = why;
        char piece[DETOK_MAX_OUT];
        int n = detok_flush(&g->detok, piece); /* incomplete UTF-8 at the end: U+FFFD */
        if (n > 0)
                keep_text(g, piece, (size_t)n);
        if (why == GEN_STOP_STRING || why == GEN_STOP_CANCELLED)
                return;
        if (n > 0 && release_text(g, piece, (size_t)n, ev)) {
                g->stop_reason = GEN_STOP_STRING;
                return;
        }
        ev->text_len += stop_flush(&g->stop, ev->text + ev->text_len);
}

void generation_cancel(Generation *g) {
        if (g->stop_reason == GEN_RUNNING)
                g->stop_reason = GEN_STOP_CANCELLED;
}

uint32_t generation_want(const Generation *g, uint32_t max, const int32_t **ret_tokens) {
        if (g->stop_reason != GEN_RUNNING) {
                if (g->settling && g->have_next) {
                        *ret_tokens = &g->next_token;
                        return 1;
                }
                return 0;
        }
        if (g->prompt_fed < g->n_prompt) {
                size_t n = g->n_prompt - g->prompt_fed;
                *ret_tokens = g->prompt + g->prompt_fed;
                return (uint32_t)(n < max ? n : max);
        }
        if (g->have_next) {
                *ret_tokens = &g->next_token;
                return 1;
        }
        return 0;
}

int generation_after(Generation *g, uint32_t n_fed, GenEvent *ev) {
        Session *s = g->s;

        memset(ev, 0, offsetof(GenEvent, text));
        ev->text_len = 0;
        if (g->stop_reason != GEN_RUNNING) {
                if (n_fed && g->have_next) { /* the settling feed: the last token is in the cache now */
                        token_fed(g);
                        g->have_next = g->settling = 0;
                }
                return 0;
        }
        if (g->prompt_fed < g->n_prompt) {
                session_text_fed(s, g->prompt + g->prompt_fed, n_fed);
                g->prompt_fed += n_fed;
                ev->prefilling = 1;
                ev->prompt_done = g->prompt_fed;
                ev->prompt_total = g->n_prompt;
                if (g->prompt_fed < g->n_prompt)
                        return 1;
                session_text_set(s, g->seg_text, g->seg_len); /* the whole prompt is in */
        } else if (n_fed) {
                token_fed(g); /* the token sampled last step is in the cache now */
                g->have_next = 0;
        }
        if (s->kv->n_pos == 0)
                return -EINVAL; /* nothing to continue from */
        if (g->params.n_predict >= 0 && g->n_generated >= g->params.n_predict) {
                finish(g, GEN_STOP_LENGTH, ev);
                return 0;
        }

        if (!all_finite(s->last_logits, s->m->cfg.n_vocab))
                return -EDOM; /* NaN or infinite logits: no distribution to sample from */
        const int32_t tok = sampler_sample(g->sampler, s->last_logits);
        ev->has_token = 1;
        ev->token = tok;
        ev->logprob = g->params.want_logprobs ? (float)log_softmax_at(s->last_logits, s->m->cfg.n_vocab, tok) : NAN;
        g->next_token = tok; /* EOS too: a continued conversation sees the end of this turn */
        g->have_next = 1;
        if (tok == tokenizer_eos(s->m->tok)) {
                finish(g, GEN_STOP_EOS, ev);
                return 0;
        }
        sampler_accept(g->sampler, tok);
        g->n_generated++;

        char piece[DETOK_MAX_OUT];
        int n = detok_push(&g->detok, tok, piece);
        if (n < 0)
                return n;
        if (n > 0)
                keep_text(g, piece, (size_t)n); /* the session keeps a matched stop string too */
        if (n > 0 && release_text(g, piece, (size_t)n, ev)) {
                g->stop_reason = GEN_STOP_STRING;
                return 0;
        }
        if (g->params.n_predict >= 0 && g->n_generated >= g->params.n_predict) {
                finish(g, GEN_STOP_LENGTH, ev);
                return 0;
        }
        return 1;
}

int generation_step(Generation *g, Forward *fw, GenEvent *ev) {
        const int32_t *tokens = NULL;
        const uint32_t n = generation_want(g, forward_max_chunk(fw, g->s->kv), &tokens);
        if (n > 0) {
                int r = session_feed(g->s, fw, tokens, n, NULL, NULL);
                if (r < 0)
                        return r;
        }
        return generation_after(g, n, ev);
}
