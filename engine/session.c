/* engine/session.c — session lifetime and chunked prefill (see session.h). */
#include "session.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "engine_limits.h"

int session_kv_bytes_per_pos(const Model *m, uint32_t kv_type, uint64_t *ret_bytes) {
        const ModelConfig *c = &m->cfg;
        return kv_cache_bytes(kv_type, c->n_layer, c->n_head_kv, c->head_dim, 1, ret_bytes);
}

int session_slots(const Model *m, uint32_t capacity, uint64_t kv_budget, uint32_t kv_type, uint32_t *ret_slots) {
        const ModelConfig *c = &m->cfg;
        uint64_t per_pos;
        int r = session_kv_bytes_per_pos(m, kv_type, &per_pos);
        if (r < 0)
                return r;
        uint64_t slots = c->sliding_window ? c->sliding_window : capacity ? capacity : c->n_ctx_train;
        if (per_pos * slots > kv_budget) {
                if (c->sliding_window)
                        return -E2BIG; /* a window cannot shrink */
                slots = kv_budget / per_pos;
        }
        if (!c->sliding_window && slots < KV_ATTENTION_SINKS + 1)
                return -E2BIG;
        *ret_slots = (uint32_t)slots;
        return 0;
}

int session_new(const Model *m, uint32_t capacity, uint64_t kv_budget, uint32_t kv_type, Session **ret_session) {
        const ModelConfig *c = &m->cfg;
        uint32_t slots;
        int r = session_slots(m, capacity, kv_budget, kv_type, &slots);
        if (r < 0)
                return r;
        Session *s = calloc(1, sizeof(*s));
        if (!s)
                return -ENOMEM;
        s->m = m;
        r = kv_cache_new(c->n_layer, c->n_head_kv, c->head_dim, kv_type, c->sliding_window, slots, &s->kv);
        if (r < 0)
                goto fail;
        s->last_logits = calloc(c->n_vocab, sizeof(float));
        if (!s->last_logits) {
                r = -ENOMEM;
                goto fail;
        }
        *ret_session = s;
        return 0;
fail:
        session_free(s);
        return r;
}

Session *session_free(Session *s) {
        if (!s)
                return NULL;
        kv_cache_free(s->kv);
        free(s->last_logits);
        free(s);
        return NULL;
}

void session_reset(Session *s) {
        kv_cache_reset(s->kv);
}

uint64_t session_kv_bytes(const Session *s) {
        uint64_t b = 0;
        kv_cache_bytes(s->kv->type, s->kv->n_layer, s->kv->n_head_kv, s->kv->head_dim, s->kv->n_slots, &b);
        return b;
}

int session_feed(Session *s, Forward *fw, const int32_t *tokens, size_t n, SessionLogitsFn on_logits,
                 void *userdata) {
        const uint32_t V = s->m->cfg.n_vocab, chunk = forward_max_chunk(fw, s->kv);
        float *logits = forward_logits_buffer(fw);
        size_t done = 0;
        while (done < n) {
                const uint32_t T = (uint32_t)(n - done < chunk ? n - done : chunk);
                const int last_chunk = done + T == n;
                const ForwardLogits mode = on_logits ? FORWARD_LOGITS_ALL
                                           : last_chunk ? FORWARD_LOGITS_LAST : FORWARD_LOGITS_NONE;
                const int64_t pos0 = s->kv->n_pos;
                int r = forward_chunk(fw, s->kv, tokens + done, T, mode, logits);
                if (r < 0)
                        return r;
                if (on_logits)
                        for (uint32_t t = 0; t < T; t++) {
                                r = on_logits(userdata, pos0 + t, logits + (size_t)t * V);
                                if (r < 0)
                                        return r;
                        }
                if (last_chunk)
                        memcpy(s->last_logits, logits + (mode == FORWARD_LOGITS_ALL ? (size_t)(T - 1) * V : 0),
                               V * sizeof(float));
                done += T;
        }
        return 0;
}
