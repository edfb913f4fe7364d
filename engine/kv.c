/* engine/kv.c — allocation of rolling KV caches (see kv.h for the slot rule and layout), and
 * their rows in the session file's order. */
#include "kv.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "engine_limits.h"

int kv_cache_bytes(uint32_t n_layer, uint32_t kv_dim, uint32_t n_slots, uint64_t *ret_bytes) {
        uint64_t n;
        if (__builtin_mul_overflow((uint64_t)n_layer * kv_dim, (uint64_t)n_slots, &n) ||
            __builtin_mul_overflow(n, 2 * sizeof(float), &n))
                return -EOVERFLOW;
        *ret_bytes = n;
        return 0;
}

int kv_cache_new(uint32_t n_layer, uint32_t n_head_kv, uint32_t head_dim, uint32_t window, uint32_t capacity,
                 KVCache **ret_cache) {
        uint32_t n_sink = window ? 0 : KV_ATTENTION_SINKS;
        uint32_t n_slots = window ? window : capacity;
        uint32_t kv_dim;
        uint64_t bytes;
        int r;

        if (n_layer == 0 || n_head_kv == 0 || head_dim == 0 || n_slots <= n_sink)
                return -EINVAL;
        if (__builtin_mul_overflow(n_head_kv, head_dim, &kv_dim))
                return -EOVERFLOW;
        r = kv_cache_bytes(n_layer, kv_dim, n_slots, &bytes);
        if (r < 0)
                return r;
        if (bytes > SIZE_MAX)
                return -E2BIG;

        KVCache *c = calloc(1, sizeof(*c));
        if (!c)
                return -ENOMEM;
        *c = (KVCache){ .n_layer = n_layer, .n_head_kv = n_head_kv, .head_dim = head_dim, .kv_dim = kv_dim,
                        .n_sink = n_sink, .n_roll = n_slots - n_sink, .n_slots = n_slots };
        c->k = aligned_alloc(64, (bytes / 2 + 63) / 64 * 64); /* rows on cache lines: fast SIMD dots */
        c->v = aligned_alloc(64, (bytes / 2 + 63) / 64 * 64);
        if (!c->k || !c->v) {
                kv_cache_free(c);
                return -ENOMEM;
        }
        *ret_cache = c;
        return 0;
}

KVCache *kv_cache_free(KVCache *c) {
        if (!c)
                return NULL;
        free(c->k);
        free(c->v);
        free(c);
        return NULL;
}

void kv_cache_reset(KVCache *c) {
        c->n_pos = 0;
}

void kv_rows_out(const KVCache *c, const float *base, uint32_t layer, uint32_t slot0, uint32_t n, float *dst) {
        for (uint32_t i = 0; i < n; i++)
                for (uint32_t h = 0; h < c->n_head_kv; h++)
                        memcpy(dst + (size_t)i * c->kv_dim + (size_t)h * c->head_dim, base + kv_offset(c, layer, h, slot0 + i),
                               c->head_dim * sizeof(float));
}

void kv_rows_in(const KVCache *c, float *base, uint32_t layer, uint32_t slot0, uint32_t n, const float *src) {
        for (uint32_t i = 0; i < n; i++)
                for (uint32_t h = 0; h < c->n_head_kv; h++)
                        memcpy(base + kv_offset(c, layer, h, slot0 + i), src + (size_t)i * c->kv_dim + (size_t)h * c->head_dim,
                               c->head_dim * sizeof(float));
}
