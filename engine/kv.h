/* engine/kv.h — a session's rolling KV cache. Positions below n_sink keep their own slots
 * forever; later positions roll through n_roll slots (slot = n_sink + (pos - n_sink) mod
 * n_roll). Sliding-window models: n_sink = 0, n_roll = W, so slot = pos mod W and memory is
 * O(W). Full-attention models: n_sink = KV_ATTENTION_SINKS and n_roll = capacity - n_sink:
 * exact attention up to the capacity, then the oldest non-sink positions are dropped.
 * Owned by one session; one thread at a time. */
#pragma once
#include <stddef.h>
#include <stdint.h>

typedef struct KVCache {
        uint32_t n_layer;
        uint32_t n_head_kv;  /* KV heads */
        uint32_t head_dim;
        uint32_t kv_dim;     /* n_head_kv * head_dim: one position's keys (or values) */
        uint32_t n_sink;     /* positions kept forever */
        uint32_t n_roll;     /* rolling slots */
        uint32_t n_slots;    /* n_sink + n_roll */
        int64_t n_pos;       /* positions already stored: the next token's position */
        float *k;            /* [n_layer][n_head_kv][n_slots][head_dim], keys after RoPE (F32) */
        float *v;            /* [n_layer][n_head_kv][n_slots][head_dim] */
} KVCache;
/* One head's keys are contiguous in slot order, so attention streams them: with the heads
 * of a position side by side instead ([slot][kv_dim]) a head's keys lay kv_dim floats
 * apart, which the hardware prefetcher does not follow (decode after a 512-token prompt
 * ran about 2% slower on the bench model). */

/* Bytes a cache of this geometry takes; -EOVERFLOW on overflow. */
int kv_cache_bytes(uint32_t n_layer, uint32_t kv_dim, uint32_t n_slots, uint64_t *ret_bytes);
/* window > 0: sliding window of that many positions; window == 0: full attention with
 * room for `capacity` positions (>= KV_ATTENTION_SINKS + 1). */
int kv_cache_new(uint32_t n_layer, uint32_t n_head_kv, uint32_t head_dim, uint32_t window, uint32_t capacity,
                 KVCache **ret_cache);
KVCache *kv_cache_free(KVCache *c);
void kv_cache_reset(KVCache *c);

/* Offset (in floats) of head h's row in slot `slot` of layer `layer`, in c->k or c->v. */
static inline size_t kv_offset(const KVCache *c, uint32_t layer, uint32_t h, uint32_t slot) {
        return (((size_t)layer * c->n_head_kv + h) * c->n_slots + slot) * c->head_dim;
}

/* Slots [slot0, slot0 + n) of one layer of base (c->k or c->v) as rows of kv_dim floats
 * (the heads of a slot side by side) into dst, and back: the session file's order. */
void kv_rows_out(const KVCache *c, const float *base, uint32_t layer, uint32_t slot0, uint32_t n, float *dst);
void kv_rows_in(const KVCache *c, float *base, uint32_t layer, uint32_t slot0, uint32_t n, const float *src);

static inline uint32_t kv_slot(const KVCache *c, int64_t pos) {
        if (pos < (int64_t)c->n_sink)
                return (uint32_t)pos;
        return c->n_sink + (uint32_t)((pos - c->n_sink) % c->n_roll);
}

/* First non-sink position that query position q attends to (positions below n_sink are
 * always attended when <= q). */
static inline int64_t kv_window_start(const KVCache *c, int64_t q) {
        int64_t s = q - (int64_t)c->n_roll + 1;
        return s > (int64_t)c->n_sink ? s : (int64_t)c->n_sink;
}
