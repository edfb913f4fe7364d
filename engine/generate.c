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

int generation_start(Generation *g, Session *s, const int32_t *prompt, size_t n, const GenParams *p,
                     int strip_leading_space) {
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
        g->prompt = malloc((n ? n : 1) * sizeof(int32_t));
        if (!g->prompt) {
                r = -ENOMEM;
                goto fail;
        }
        memcpy(g->prompt, prompt, n * sizeof(int32_t));
        g->n_prompt = n;
        for (size_t i = 0; i < n; i++)
                sampler_accept(g->sampler, prompt[i]);
        detok_init(&g->detok, s->m->tok, strip_leading_space);
        return 0;
fail:
        generation_done(g);
        return r;
}

void generation_done(Generation *g) {
        g->sampler = sampler_free(g->sampler);
        free(g->prompt);
        g->prompt = NULL;
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
        if (why == GEN_STOP_STRING || why == GEN_STOP_CANCELLED)
                return;
        char piece[DETOK_MAX_OUT];
        int n = detok_flush(&g->detok, piece);
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
                if (n_fed) /* the settling feed: the last token is in the cache now */
                        g->have_next = g->settling = 0;
                return 0;
        }
        if (g->prompt_fed < g->n_prompt) {
                g->prompt_fed += n_fed;
                ev->prefilling = 1;
                ev->prompt_done = g->prompt_fed;
                ev->prompt_total = g->n_prompt;
                if (g->prompt_fed < g->n_prompt)
                        return 1;
        } else if (n_fed) {
                g->have_next = 0; /* the token sampled last step is in the cache now */
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
