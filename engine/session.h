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
 * context length); limited to what kv_budget bytes hold with keys and values stored as
 * kv_type (kv.h: GGML_TYPE_F16, Q8_0 or F32). Sliding-window models always use W slots.
 * -E2BIG if not even a minimal cache fits the budget; -EINVAL if kv_type is no KV type or
 * (Q8_0) the model's head size is not a multiple of 32. */
int session_new(const Model *m, uint32_t capacity, uint64_t kv_budget, uint32_t kv_type, Session **ret_session);
Session *session_free(Session *s);
void session_reset(Session *s);
/* Bytes this session's KV cache holds. */
uint64_t session_kv_bytes(const Session *s);
/* Slots a session of this model would get (for sizing a Forward's scratch). */
int session_slots(const Model *m, uint32_t capacity, uint64_t kv_budget, uint32_t kv_type, uint32_t *ret_slots);
/* Bytes one position of this model's cache takes in kv_type (keys and values, all layers). */
int session_kv_bytes_per_pos(const Model *m, uint32_t kv_type, uint64_t *ret_bytes);

/* Called with the logits [V] of each position when feeding with on_logits. Return < 0 to stop. */
typedef int (*SessionLogitsFn)(void *userdata, int64_t pos, const float *logits);
/* Feed n tokens in chunks of at most forward_max_chunk(). Afterwards last_logits holds the
 * logits after the last token. */
int session_feed(Session *s, Forward *fw, const int32_t *tokens, size_t n, SessionLogitsFn on_logits,
                 void *userdata);
