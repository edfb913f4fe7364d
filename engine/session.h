/* engine/session.h — a conversation's state: its rolling KV cache, forward scratch and
 * last logits, and the chunked feeding of tokens. One thread at a time per session. */
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "forward.h"
#include "kv.h"
#include "model.h"

typedef struct Session {
        const Model *m;
        KVCache *kv;
        Forward *fw;
        uint32_t chunk;      /* prefill chunk size (<= the cache's rolling slots) */
        float *logits;       /* [chunk][V] logits of the last chunk */
        float *last_logits;  /* [V] logits after the last fed token */
        int64_t n_fed;       /* tokens fed so far (== kv->n_pos) */
} Session;

/* capacity: positions a full-attention session keeps before rolling (0 = the model's
 * context length); limited to what kv_budget bytes hold. Sliding-window models always use
 * W slots. chunk: prefill chunk (0 = default). -E2BIG if not even a minimal cache fits. */
int session_new(const Model *m, uint32_t capacity, uint64_t kv_budget, uint32_t chunk, Session **ret_session);
Session *session_free(Session *s);
void session_reset(Session *s);

/* Called with the logits [V] of each position when feeding with all_logits. Return < 0 to stop. */
typedef int (*SessionLogitsFn)(void *userdata, int64_t pos, const float *logits);
/* Called after each chunk with tokens done so far; return < 0 to cancel (-ECANCELED). */
typedef int (*SessionProgressFn)(void *userdata, size_t done, size_t total);

/* Feed n tokens in chunks. Afterwards last_logits holds the logits after the last token. */
int session_feed(Session *s, const int32_t *tokens, size_t n, SessionLogitsFn on_logits, SessionProgressFn on_progress,
                 void *userdata);
