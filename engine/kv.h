/* engine/kv.h — a session's rolling KV cache and its storage types. Positions below n_sink
 * keep their own slots forever; later positions roll through n_roll slots (slot = n_sink +
 * (pos - n_sink) mod n_roll). Sliding-window models: n_sink = 0, n_roll = W, so slot = pos
 * mod W and memory is O(W). Full-attention models: n_sink = KV_ATTENTION_SINKS and n_roll =
 * capacity - n_sink: exact attention up to the capacity, then the oldest non-sink positions
 * are dropped. Keys and values are stored as F16 (the default), Q8_0 or F32 (kv_type).
 * Owned by one session; one thread at a time. */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "quant.h"

/* KV storage types are ggml type ids (quant.h):
 *   GGML_TYPE_F32  (0): 4 bytes a number, exact;
 *   GGML_TYPE_F16  (1): 2 bytes, IEEE half, rounded to nearest even (relative error <= 2^-11);
 *   GGML_TYPE_Q8_0 (8): blocks of 32 numbers as one fp16 scale d and 32 int8 q (34 bytes),
 *                       value = q * d; needs a head size that is a multiple of 32.
 * Q8_0 keeps ggml's block (fp16 scale) rather than a float scale: 34 bytes instead of 36 per
 * 32 numbers, and q * d is then exact in float (8 + 11 significant bits), so a value decodes
 * to the same float in every kernel whatever the order of operations around it. The scale's
 * own rounding (2^-11 relative) is an eighth of the int8 step's (1/254 of the block's largest
 * magnitude), so a float scale would buy no accuracy worth its bytes.
 * No KV cache ever holds a signalling-NaN half (kv_encode quiets NaNs and a restored session's
 * rows go through kv_sanitize), so kernels may convert halves with F16C, which would quiet one. */
#define KV_TYPE_DEFAULT GGML_TYPE_F16

typedef struct KVCache {
        uint32_t n_layer;
        uint32_t n_head_kv;  /* KV heads */
        uint32_t head_dim;
        uint32_t kv_dim;     /* n_head_kv * head_dim: one position's keys (or values) */
        uint32_t type;       /* storage type of k and v (see above) */
        uint32_t row_bytes;  /* bytes of one head's keys (values) of one slot, in `type` */
        uint32_t n_sink;     /* positions kept forever */
        uint32_t n_roll;     /* rolling slots */
        uint32_t n_slots;    /* n_sink + n_roll */
        int64_t n_pos;       /* positions already stored: the next token's position */
        uint8_t *k;          /* [n_layer][n_head_kv][n_slots][row_bytes] keys after RoPE */
        uint8_t *v;          /* [n_layer][n_head_kv][n_slots][row_bytes] values */
} KVCache;
/* One head's keys are contiguous in slot order, so attention streams them: with the heads
 * of a position side by side instead ([slot][kv_dim]) a head's keys lay kv_dim numbers
 * apart, which the hardware prefetcher does not follow (decode after a 512-token prompt
 * ran about 2% slower on the bench model). */

/* "f32", "f16", "q8_0" (case-insensitive) to a KV type; -EINVAL for anything else. */
int kv_type_parse(const char *name, uint32_t *ret_type);
/* "f32", "f16", "q8_0"; NULL for a type that is not a KV type. */
const char *kv_type_name(uint32_t type);
/* Bytes of head_dim numbers stored as type; -EINVAL if type is not a KV type or (Q8_0)
 * head_dim is not a multiple of 32. */
int kv_row_bytes(uint32_t type, uint32_t head_dim, uint32_t *ret_bytes);

/* Bytes a cache of this geometry takes (keys and values); -EINVAL as kv_row_bytes,
 * -EOVERFLOW on overflow. n_slots = 1: the bytes one position costs. */
int kv_cache_bytes(uint32_t type, uint32_t n_layer, uint32_t n_head_kv, uint32_t head_dim, uint32_t n_slots,
                   uint64_t *ret_bytes);
/* window > 0: sliding window of that many positions; window == 0: full attention with
 * room for `capacity` positions (>= KV_ATTENTION_SINKS + 1). */
int kv_cache_new(uint32_t n_layer, uint32_t n_head_kv, uint32_t head_dim, uint32_t type, uint32_t window,
                 uint32_t capacity, KVCache **ret_cache);
KVCache *kv_cache_free(KVCache *c);
void kv_cache_reset(KVCache *c);
/* Drop the positions from n_pos on, so the next token goes to position n_pos: possible
 * (true) when the cache still holds every position the following queries attend to, i.e.
 * n_pos <= c->n_pos and either the ring never wrapped (c->n_pos <= n_slots) or only the
 * last position goes. kv_cache_truncate: -ERANGE when it is not possible (c unchanged). */
bool kv_cache_can_truncate(const KVCache *c, int64_t n_pos);
int kv_cache_truncate(KVCache *c, int64_t n_pos);

/* Byte offset of head h's row in slot `slot` of layer `layer`, in c->k or c->v. */
static inline size_t kv_offset(const KVCache *c, uint32_t layer, uint32_t h, uint32_t slot) {
        return (((size_t)layer * c->n_head_kv + h) * c->n_slots + slot) * c->row_bytes;
}

/* n numbers of src into dst as type (n a multiple of 32 for Q8_0): rounding to nearest
 * (even), NaN to a quiet NaN; Q8_0 takes d = max|x| / 127 rounded to fp16 and q = x / d
 * rounded to nearest, clamped to +-127 (NaN: 0). The same input always gives the same bytes. */
void kv_encode(uint32_t type, const float *src, size_t n, void *dst);
/* n numbers stored as type at src into floats, exactly as the attention kernels read them. */
void kv_decode(uint32_t type, const void *src, size_t n, float *dst);
/* Quiets any signalling-NaN half in n numbers stored as type (F16 values, Q8_0 scales). */
void kv_sanitize(uint32_t type, void *data, size_t n);

/* Slots [slot0, slot0 + n) of one layer of base (c->k or c->v) as n position rows of
 * n_head_kv * row_bytes bytes (the heads of a slot side by side, in c->type) into dst, and
 * back: the session file's order. */
void kv_rows_out(const KVCache *c, const uint8_t *base, uint32_t layer, uint32_t slot0, uint32_t n, void *dst);
void kv_rows_in(const KVCache *c, uint8_t *base, uint32_t layer, uint32_t slot0, uint32_t n, const void *src);

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
