/* engine/forward.h — one forward step over a chunk of consecutive tokens of one session:
 * embeddings → per layer (RMSNorm, attention over the rolling KV cache, router top-k,
 * SwiGLU experts) → final norm → logits. A Forward holds scratch for one caller thread. */
#pragma once
#include <stdint.h>

#include "kv.h"
#include "model.h"

typedef enum ForwardLogits {
        FORWARD_LOGITS_NONE = 0,  /* only fill the KV cache */
        FORWARD_LOGITS_LAST = 1,  /* logits of the last token: [V] */
        FORWARD_LOGITS_ALL = 2,   /* logits of every token: [T][V] */
} ForwardLogits;

typedef struct Forward Forward;

/* Router statistics hook: called once per token and layer with the chosen experts. */
typedef void (*ForwardRouteFn)(void *userdata, uint32_t layer, const int32_t *experts, uint32_t k);

/* Scratch for chunks of up to max_chunk tokens (<= FORWARD_MAX_CHUNK) against caches with
 * up to max_slots slots. */
int forward_new(const Model *m, uint32_t max_chunk, uint32_t max_slots, Forward **ret_fw);
Forward *forward_free(Forward *fw);
void forward_set_route_hook(Forward *fw, ForwardRouteFn fn, void *userdata);

/* Run T tokens (1 <= T <= min(max_chunk, kv->n_roll)) at positions kv->n_pos ...; appends
 * them to the cache. -EINVAL for a token id out of range or a bad T; logits as mode says. */
int forward_chunk(Forward *fw, KVCache *kv, const int32_t *tokens, uint32_t T, ForwardLogits mode, float *logits);

/* Largest chunk forward_chunk accepts for this cache. */
uint32_t forward_max_chunk(const Forward *fw, const KVCache *kv);
/* Scratch for the logits of a whole chunk: [max_chunk][V]. */
float *forward_logits_buffer(Forward *fw);
