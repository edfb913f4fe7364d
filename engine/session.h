/* engine/session.h — a conversation's state: its rolling KV cache and the logits after its
 * last token, and the chunked feeding of tokens through a caller's Forward (the scratch
 * belongs to the thread, not the session, so idle sessions cost only their cache).
 * One thread at a time per session. */
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "forward.h"
#include "kv.h"
#include "model.h"

typedef struct Session {
        const Model *m;
        KVCache *kv;
        float *last_logits;  /* [V] logits after the last fed token (kv->n_pos tokens fed) */
} Session;

/* capacity: positions a full-attention session keeps before rolling (0 = the model's
 * context length); limited to what kv_budget bytes hold. Sliding-window models always use
 * W slots. -E2BIG if not even a minimal cache fits the budget. */
int session_new(const Model *m, uint32_t capacity, uint64_t kv_budget, Session **ret_session);
Session *session_free(Session *s);
void session_reset(Session *s);
/* Bytes this session's KV cache holds. */
uint64_t session_kv_bytes(const Session *s);
/* Slots a session of this model would get (for sizing a Forward's scratch). */
int session_slots(const Model *m, uint32_t capacity, uint64_t kv_budget, uint32_t *ret_slots);

/* Called with the logits [V] of each position when feeding with on_logits. Return < 0 to stop. */
typedef int (*SessionLogitsFn)(void *userdata, int64_t pos, const float *logits);
/* Feed n tokens in chunks of at most forward_max_chunk(). Afterwards last_logits holds the
 * logits after the last token. */
int session_feed(Session *s, Forward *fw, const int32_t *tokens, size_t n, SessionLogitsFn on_logits,
                 void *userdata);
