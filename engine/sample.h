/* engine/sample.h — token sampling: repeat penalty, greedy, top-k, top-p, min-p,
 * temperature, seeded RNG. A Sampler belongs to one request; one thread at a time. */
#pragma once
#include <stdint.h>

typedef struct SamplerParams {
        float temperature;      /* <= 0: greedy */
        int32_t top_k;          /* <= 0: off */
        float top_p;            /* >= 1: off */
        float min_p;            /* <= 0: off */
        float repeat_penalty;   /* 1: off */
        int32_t repeat_last_n;  /* tokens of history the penalty looks at */
        uint64_t seed;
} SamplerParams;

#define SAMPLER_DEFAULTS ((SamplerParams){ .temperature = 0.8f, .top_k = 40, .top_p = 0.95f, .min_p = 0.05f, \
                                           .repeat_penalty = 1.0f, .repeat_last_n = 64, .seed = 0 })

typedef struct Sampler Sampler;

/* -EINVAL when a parameter is out of range (temperature < 0 or not finite, top_p not in
 * (0,1], min_p not in [0,1], repeat_penalty <= 0, repeat_last_n not in 0..SAMPLE_MAX_REPEAT_LAST). */
int sampler_validate(const SamplerParams *p);
int sampler_new(uint32_t n_vocab, const SamplerParams *p, Sampler **ret_sampler);
Sampler *sampler_free(Sampler *s);
/* Pick a token from logits [n_vocab] (not modified). */
int32_t sampler_sample(Sampler *s, const float *logits);
/* Record a token (prompt or generated) in the repeat-penalty history. */
void sampler_accept(Sampler *s, int32_t token);
