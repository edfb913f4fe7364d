/* engine/kv.c — allocation of rolling KV caches (see kv.h for the slot rule, layout and
 * storage types), the conversion of numbers to and from those types, and a cache's rows in
 * the session file's order. */
#include "kv.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "engine_limits.h"
#include "quant.h"

static const struct {
        uint32_t type;
        const char *name;
} kv_types[] = {
        { GGML_TYPE_F32, "f32" },
        { GGML_TYPE_F16, "f16" },
        { GGML_TYPE_Q8_0, "q8_0" },
};
#define N_KV_TYPES (sizeof(kv_types) / sizeof(kv_types[0]))

int kv_type_parse(const char *name, uint32_t *ret_type) {
        for (size_t i = 0; i < N_KV_TYPES; i++)
                if (strcasecmp(name, kv_types[i].name) == 0) {
                        *ret_type = kv_types[i].type;
                        return 0;
                }
        return -EINVAL;
}

const char *kv_type_name(uint32_t type) {
        for (size_t i = 0; i < N_KV_TYPES; i++)
                if (kv_types[i].type == type)
                        return kv_types[i].name;
        return NULL;
}

int kv_row_bytes(uint32_t type, uint32_t head_dim, uint32_t *ret_bytes) {
        uint64_t b;
        switch (type) {
        case GGML_TYPE_F32: b = (uint64_t)head_dim * sizeof(float); break;
        case GGML_TYPE_F16: b = (uint64_t)head_dim * sizeof(ggml_half); break;
        case GGML_TYPE_Q8_0:
                if (head_dim % QK8_0 != 0)
                        return -EINVAL;
                b = (uint64_t)head_dim / QK8_0 * sizeof(BlockQ8_0);
                break;
        default: return -EINVAL;
        }
        if (b > UINT32_MAX)
                return -EOVERFLOW;
        *ret_bytes = (uint32_t)b;
        return 0;
}

int kv_cache_bytes(uint32_t type, uint32_t n_layer, uint32_t n_head_kv, uint32_t head_dim, uint32_t n_slots,
                   uint64_t *ret_bytes) {
        uint32_t row;
        uint64_t n;
        int r = kv_row_bytes(type, head_dim, &row);
        if (r < 0)
                return r;
        if (__builtin_mul_overflow((uint64_t)n_layer * n_head_kv, (uint64_t)n_slots, &n) ||
            __builtin_mul_overflow(n, 2 * (uint64_t)row, &n))
                return -EOVERFLOW;
        *ret_bytes = n;
        return 0;
}

int kv_cache_new(uint32_t n_layer, uint32_t n_head_kv, uint32_t head_dim, uint32_t type, uint32_t window,
                 uint32_t capacity, KVCache **ret_cache) {
        uint32_t n_sink = window ? 0 : KV_ATTENTION_SINKS;
        uint32_t n_slots = window ? window : capacity;
        uint32_t kv_dim, row;
        uint64_t bytes;
        int r;

        if (n_layer == 0 || n_head_kv == 0 || head_dim == 0 || n_slots <= n_sink)
                return -EINVAL;
        if (__builtin_mul_overflow(n_head_kv, head_dim, &kv_dim))
                return -EOVERFLOW;
        r = kv_row_bytes(type, head_dim, &row);
        if (r < 0)
                return r;
        r = kv_cache_bytes(type, n_layer, n_head_kv, head_dim, n_slots, &bytes);
        if (r < 0)
                return r;
        if (bytes > SIZE_MAX)
                return -E2BIG;

        KVCache *c = calloc(1, sizeof(*c));
        if (!c)
                return -ENOMEM;
        *c = (KVCache){ .n_layer = n_layer, .n_head_kv = n_head_kv, .head_dim = head_dim, .kv_dim = kv_dim,
                        .type = type, .row_bytes = row, .n_sink = n_sink, .n_roll = n_slots - n_sink,
                        .n_slots = n_slots };
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

bool kv_cache_can_truncate(const KVCache *c, int64_t n_pos) {
        /* Positions [n_pos, c->n_pos) go. The next query, at n_pos, attends back to
         * n_pos - n_roll + 1; once the ring has wrapped, every position below c->n_pos - 1
         * has lost one of those to a later one (slot(x) = slot(x + n_roll)). */
        return n_pos >= 0 && n_pos <= c->n_pos && (c->n_pos <= (int64_t)c->n_slots || n_pos >= c->n_pos - 1);
}

int kv_cache_truncate(KVCache *c, int64_t n_pos) {
        if (!kv_cache_can_truncate(c, n_pos))
                return -ERANGE;
        c->n_pos = n_pos;
        return 0;
}

/* One Q8_0 block of 32 numbers. */
static void encode_q8_0_block(const float *x, BlockQ8_0 *y) {
        float amax = 0.0f;
        for (int j = 0; j < QK8_0; j++) {
                const float a = fabsf(x[j]);
                if (a > amax) /* NaN never compares greater: it is skipped */
                        amax = a;
        }
        const ggml_half dh = fp32_to_fp16(amax / 127.0f);
        const float d = fp16_to_fp32(dh);
        const float inv = d != 0.0f ? 1.0f / d : 0.0f;
        y->d = dh;
        for (int j = 0; j < QK8_0; j++) {
                float t = x[j] * inv;
                if (!(t == t))
                        t = 0.0f;
                t = roundf(t);
                y->qs[j] = (int8_t)(t > 127.0f ? 127.0f : t < -127.0f ? -127.0f : t);
        }
}

void kv_encode(uint32_t type, const float *src, size_t n, void *dst) {
        switch (type) {
        case GGML_TYPE_F32:
                memcpy(dst, src, n * sizeof(float));
                return;
        case GGML_TYPE_F16: {
                ggml_half *h = dst;
                for (size_t i = 0; i < n; i++)
                        h[i] = fp32_to_fp16(src[i]); /* NaN: 0x7e00 with its sign, quiet */
                return;
        }
        case GGML_TYPE_Q8_0: {
                BlockQ8_0 *b = dst;
                for (size_t i = 0; i < n / QK8_0; i++)
                        encode_q8_0_block(src + i * QK8_0, b + i);
                return;
        }
        }
}

void kv_decode(uint32_t type, const void *src, size_t n, float *dst) {
        if (type == GGML_TYPE_F32) {
                memcpy(dst, src, n * sizeof(float));
                return;
        }
        quant_traits(type)->dequant_ref(src, dst, (int64_t)n);
}

static ggml_half quiet_half(ggml_half h) {
        return (h & 0x7c00) == 0x7c00 && (h & 0x03ff) ? (ggml_half)(h | 0x0200) : h;
}

void kv_sanitize(uint32_t type, void *data, size_t n) {
        if (type == GGML_TYPE_F16) {
                ggml_half *h = data;
                for (size_t i = 0; i < n; i++)
                        h[i] = quiet_half(h[i]);
        } else if (type == GGML_TYPE_Q8_0) {
                BlockQ8_0 *b = data;
                for (size_t i = 0; i < n / QK8_0; i++)
                        b[i].d = quiet_half(b[i].d);
        }
}

void kv_rows_out(const KVCache *c, const uint8_t *base, uint32_t layer, uint32_t slot0, uint32_t n, void *dst) {
        uint8_t *d = dst;
        for (uint32_t i = 0; i < n; i++)
                for (uint32_t h = 0; h < c->n_head_kv; h++)
                        memcpy(d + ((size_t)i * c->n_head_kv + h) * c->row_bytes, base + kv_offset(c, layer, h, slot0 + i),
                               c->row_bytes);
}

void kv_rows_in(const KVCache *c, uint8_t *base, uint32_t layer, uint32_t slot0, uint32_t n, const void *src) {
        const uint8_t *s = src;
        for (uint32_t i = 0; i < n; i++)
                for (uint32_t h = 0; h < c->n_head_kv; h++)
                        memcpy(base + kv_offset(c, layer, h, slot0 + i), s + ((size_t)i * c->n_head_kv + h) * c->row_bytes,
                               c->row_bytes);
}
