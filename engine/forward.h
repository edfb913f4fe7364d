/* engine/forward.h — one forward step over a batch: consecutive tokens of one or more
 * sessions (a prefill chunk, or one decode token from each of several sessions). Embeddings
 * → per layer (RMSNorm, attention over each session's rolling KV cache, router top-k,
 * SwiGLU experts with the rows routed to each expert run together) → final norm → logits.
 * Every row's result is the same whatever else is in the batch, and whichever executor
 * (experts.h) ran its experts. A Forward holds scratch for one caller thread (plus its pool's
 * threads). */
#pragma once
#include <stdbool.h>
#include <stdint.h>

#include "experts.h"
#include "kv.h"
#include "model.h"
#include "pool.h"

typedef enum ForwardLogits {
        FORWARD_LOGITS_NONE = 0,  /* only fill the KV cache */
        FORWARD_LOGITS_LAST = 1,  /* logits of the item's last token: [V] */
        FORWARD_LOGITS_ALL = 2,   /* logits of every token of the item: [n_tokens][V] */
} ForwardLogits;

/* One session's part of a batch: n_tokens tokens at positions kv->n_pos, ... */
typedef struct ForwardItem {
        KVCache *kv;
        const int32_t *tokens;   /* [n_tokens] */
        uint32_t n_tokens;       /* 1 .. kv->n_roll */
        ForwardLogits mode;
        float *logits;           /* [V] (LAST) or [n_tokens][V] (ALL) */
} ForwardItem;

typedef struct Forward Forward;

/* On: quantize activations to 8 bits (Q8_K blocks) for Q4_K/Q5_K/Q6_K/Q8_0 weights and use
 * integer dot products, as llama.cpp does: about 3x faster decoding, results within ~1e-2 relative of
 * the float path and the same on every x86-64 CPU. Off (the default): float activations,
 * results equal to dequantize-then-dot within rounding. */
void forward_set_int8(Forward *fw, bool on);

/* Router statistics hook: called once per token and layer with the chosen experts. */
typedef void (*ForwardRouteFn)(void *userdata, uint32_t layer, const int32_t *experts, uint32_t k);

/* Scratch for batches of up to max_rows tokens (<= FORWARD_MAX_CHUNK) against caches with
 * up to max_slots slots. pool (may be NULL: single-threaded) is borrowed, not owned. */
int forward_new(const Model *m, uint32_t max_rows, uint32_t max_slots, Pool *pool, Forward **ret_fw);
Forward *forward_free(Forward *fw);
void forward_set_route_hook(Forward *fw, ForwardRouteFn fn, void *userdata);
/* Who runs each layer's experts (experts.h): ex is copied (its ctx borrowed; NULL: back to
 * the Forward's own local executor, the default). The forward pass still sums the outputs in
 * its fixed order. */
void forward_set_experts(Forward *fw, const ExpertExec *ex);
/* The Forward's local executor (its pool, NUMA plan and scratch): an executor set by
 * forward_set_experts may hand it the experts it runs here, and a process serving experts
 * for another may run its requests on it. */
ExpertExec forward_experts_local(Forward *fw);
/* Run each expert only on the pool threads of the NUMA node that holds it (plan borrowed;
 * its thread count must be the pool's). */
struct NumaPlan;
void forward_set_numa(Forward *fw, const struct NumaPlan *plan);

/* Run a batch; every item's tokens are appended to its cache. Items must use distinct
 * caches. -EINVAL for a token id out of range, too many rows, or an item over its cache's
 * rolling slots or the Forward's max_slots; -EOVERFLOW for an item that would take its
 * cache past KV_MAX_POSITION. */
int forward_batch(Forward *fw, const ForwardItem *items, uint32_t n_items);
/* One item. */
int forward_chunk(Forward *fw, KVCache *kv, const int32_t *tokens, uint32_t T, ForwardLogits mode, float *logits);

/* Largest chunk forward_chunk accepts for this cache. */
uint32_t forward_max_chunk(const Forward *fw, const KVCache *kv);
uint32_t forward_max_rows(const Forward *fw);
/* Scratch for the logits of a whole chunk: [max_rows][V]. */
float *forward_logits_buffer(Forward *fw);

/* How attention's work is cut over the pool's threads: FORWARD_ATTN_AUTO (the default)
 * splits the keys of few rows over threads by key blocks; ALWAYS and NEVER force it either
 * way (for tests: the results are the same bits whichever is chosen). */
typedef enum ForwardAttnSplit {
        FORWARD_ATTN_AUTO = 0,
        FORWARD_ATTN_ALWAYS = 1,
        FORWARD_ATTN_NEVER = 2,
} ForwardAttnSplit;
void forward_set_attn_split(Forward *fw, ForwardAttnSplit mode);
