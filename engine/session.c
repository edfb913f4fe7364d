/* engine/session.c — session lifetime and chunked prefill (see session.h). */
#include "session.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "limits.h"

#define SESSION_DEFAULT_CHUNK 256 /* tokens per prefill chunk */

int session_new(const Model *m, uint32_t capacity, uint64_t kv_budget, uint32_t chunk, Session **ret_session) {
        const ModelConfig *c = &m->cfg;
        const uint32_t kv_dim = c->n_head_kv * c->head_dim;
        uint64_t per_pos;
        int r;

        r = kv_cache_bytes(c->n_layer, kv_dim, 1, &per_pos);
        if (r < 0)
                return r;
        uint32_t slots;
        if (c->sliding_window) {
                slots = c->sliding_window;
                if (per_pos * slots > kv_budget)
                        return -E2BIG;
        } else {
                slots = capacity ? capacity : c->n_ctx_train;
                if (per_pos * slots > kv_budget)
                        slots = (uint32_t)(kv_budget / per_pos);
                if (slots < KV_ATTENTION_SINKS + 1)
                        return -E2BIG;
        }

        Session *s = calloc(1, sizeof(*s));
        if (!s)
                return -ENOMEM;
        s->m = m;
        r = kv_cache_new(c->n_layer, kv_dim, c->sliding_window, slots, &s->kv);
        if (r < 0)
                goto fail;
        s->chunk = chunk ? chunk : SESSION_DEFAULT_CHUNK;
        if (s->chunk > FORWARD_MAX_CHUNK)
                s->chunk = FORWARD_MAX_CHUNK;
        if (s->chunk > s->kv->n_roll)
                s->chunk = s->kv->n_roll;
        r = forward_new(m, s->chunk, s->kv->n_slots, &s->fw);
        if (r < 0)
                goto fail;
        s->logits = malloc((size_t)s->chunk * c->n_vocab * sizeof(float));
        s->last_logits = calloc(c->n_vocab, sizeof(float));
        if (!s->logits || !s->last_logits) {
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
        forward_free(s->fw);
        free(s->logits);
        free(s->last_logits);
        free(s);
        return NULL;
}

void session_reset(Session *s) {
        kv_cache_reset(s->kv);
        s->n_fed = 0;
}

int session_feed(Session *s, const int32_t *tokens, size_t n, SessionLogitsFn on_logits, SessionProgressFn on_progress,
                 void *userdata) {
        const uint32_t V = s->m->cfg.n_vocab;
        size_t done = 0;
        while (done < n) {
                const uint32_t T = (uint32_t)(n - done < s->chunk ? n - done : s->chunk);
                const int last_chunk = done + T == n;
                const ForwardLogits mode = on_logits ? FORWARD_LOGITS_ALL
                                           : last_chunk ? FORWARD_LOGITS_LAST : FORWARD_LOGITS_NONE;
                int r = forward_chunk(s->fw, s->kv, tokens + done, T, mode, s->logits);
                if (r < 0)
                        return r;
                if (on_logits)
                        for (uint32_t t = 0; t < T; t++) {
                                r = on_logits(userdata, s->n_fed + t, s->logits + (size_t)t * V);
                                if (r < 0)
                                        return r;
                        }
                if (last_chunk)
                        memcpy(s->last_logits, s->logits + (mode == FORWARD_LOGITS_ALL ? (size_t)(T - 1) * V : 0),
                               V * sizeof(float));
                s->n_fed += T;
                done += T;
                if (on_progress && on_progress(userdata, done, n) < 0)
                        return -ECANCELED;
        }
        return 0;
}
