/* engine/generate.h — one generation request as a step machine over a Session: prefill the
 * prompt chunk by chunk, then one token per step, with sampling, detokenization and stop
 * strings. The daemon's scheduler interleaves steps of many generations; mixctl's in-process
 * path runs one to the end. One thread at a time per Generation. */
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "engine_limits.h"
#include "sample.h"
#include "session.h"
#include "stop.h"
#include "tokenizer.h"

typedef enum GenStopReason {
        GEN_RUNNING = 0,
        GEN_STOP_LENGTH,    /* n_predict tokens generated */
        GEN_STOP_EOS,       /* the model ended the text */
        GEN_STOP_STRING,    /* a stop string appeared */
        GEN_STOP_CANCELLED, /* the caller cancelled */
} GenStopReason;

const char *gen_stop_reason_name(GenStopReason r);

typedef struct GenParams {
        SamplerParams sampling;
        int64_t n_predict;                 /* -1: until EOS */
        const char *stops[SAMPLE_MAX_STOPS];
        int n_stops;
        int want_logprobs;
} GenParams;

/* What one step produced. */
typedef struct GenEvent {
        int prefilling;             /* this step fed prompt tokens */
        size_t prompt_done, prompt_total;
        int has_token;              /* a token was sampled */
        int32_t token;
        float logprob;              /* log p(token) under the model's raw distribution */
        char text[DETOK_MAX_OUT + SAMPLE_MAX_STOP_LEN + 16]; /* text released by this step */
        size_t text_len;
} GenEvent;

typedef struct Generation {
        Session *s;
        Sampler *sampler;
        StopMatcher stop;
        Detokenizer detok;
        GenParams params;
        int32_t *prompt;            /* tokens still to feed (owned) */
        size_t n_prompt, prompt_fed;
        int64_t n_generated;
        int32_t next_token;         /* sampled, not yet fed (fed at the next step) */
        int have_next;
        int settling;               /* done, but the last token still goes into the cache */
        GenStopReason stop_reason;
        char *seg_text;             /* the session's text once the prompt is in (owned) */
        size_t seg_len;
        char *gen_text;             /* the detokenizer's output for sampled tokens not yet fed */
        size_t gen_len, gen_cap;
} Generation;

/* Start a generation on s for a turn planned by session_plan(s, ...) (s unchanged since):
 * rolls s back to plan->keep, then feeds plan->feed (the model continues from what s holds)
 * and samples. Takes plan->text (the plan's feed is copied: free the plan after); params
 * are copied, stop strings must outlive g. The fed tokens enter the repeat-penalty history.
 * s's text (SessionText) follows what is fed: the prompt's, then each generated token's.
 * -ERANGE if the plan's rollback is no longer possible, -EINVAL, -ENOMEM. */
int generation_start(Generation *g, Session *s, SessionPlan *plan, const GenParams *p);
/* One step: a prefill chunk, or one sampled token. Returns 1 while running, 0 when done
 * (g->stop_reason says why; ev may still carry final text), or -errno: -EDOM when the
 * logits to sample from hold a NaN or an infinity (corrupt weights, or a cache holding
 * such numbers); nothing is sampled then. */
int generation_step(Generation *g, Forward *fw, GenEvent *ev);
/* The same step in two halves, for a caller that feeds many sessions in one batch:
 * generation_want says which tokens (at most max) to feed into g->s now (0: none), with
 * the logits of the last one into g->s->last_logits; generation_after takes the count fed
 * and does the rest of the step. Once the generation is done, setting g->settling makes one
 * more want/after round feed the last sampled token (EOS included), so that a session used
 * again continues after it. */
uint32_t generation_want(const Generation *g, uint32_t max, const int32_t **ret_tokens);
int generation_after(Generation *g, uint32_t n_fed, GenEvent *ev);
/* Mark the generation cancelled; the next step returns 0. */
void generation_cancel(Generation *g);
void generation_done(Generation *g);
