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

/* The text a session holds, so that a continuation gets the tokens of the whole text so far,
 * as a one-shot prompt of it would (docs/PROTOCOL.md, "Continuing a session"). Positions
 * [base, kv->n_pos) are the open segment: one string, `text`, whose tokens sit at those
 * positions (tokens[i] at base + i); the positions before base are fixed (BOS, a control
 * token such as an EOS the model wrote, or positions a rolling cache can no longer return
 * to). A new turn tokenizes text + the new text as one string and keeps the common prefix
 * of the cache; the rest is rolled back and fed again. While the cache has not wrapped the
 * segment may reach back to the document's start; once it has, only the last token can be
 * rolled back, so the segment keeps that one (its piece as text) or nothing. Memory: at
 * most n_slots tokens, and text of at most DETOK_MAX_OUT bytes per token. */
typedef struct SessionText {
        int64_t base;        /* first position of the open segment */
        int fresh;           /* the segment starts a document: tokenized with SentencePiece's
                                leading-space marker; else as a continuation */
        int pending;         /* tokens were fed whose text is not known yet (a prompt still
                                feeding or cut short): the next turn treats the segment as
                                unknown (base = n_pos, a continuation) */
        int32_t *tokens;     /* [n_tokens] the ids at positions base .. */
        size_t n_tokens, cap_tokens;
        char *text;          /* [len] UTF-8, not NUL-terminated */
        size_t len, cap;
} SessionText;

typedef struct Session {
        const Model *m;
        KVCache *kv;
        float *last_logits;  /* [V] logits after the last fed token (kv->n_pos tokens fed) */
        SessionText text;    /* what the cache holds, as text (kept by Generation) */
} Session;

/* capacity: positions a full-attention session keeps before rolling (0 = the model's
 * context length); limited to what kv_budget bytes hold with keys and values stored as
 * kv_type (kv.h: GGML_TYPE_F16, Q8_0 or F32). Sliding-window models always use W slots.
 * -E2BIG if not even a minimal cache fits the budget; -EINVAL if kv_type is no KV type or
 * (Q8_0) the model's head size is not a multiple of 32. */
int session_new(const Model *m, uint32_t capacity, uint64_t kv_budget, uint32_t kv_type, Session **ret_session);
Session *session_free(Session *s);
/* Empty the cache and its text (the next token starts a document at position 0). */
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

/* ---- continuing a text (see SessionText) ---- */

/* What a turn feeds: tokens after rolling the cache back to `keep` positions. */
typedef struct SessionPlan {
        int32_t *feed;       /* [n_feed] (malloc'd): BOS first on an empty session with add_bos */
        size_t n_feed;
        int64_t keep;        /* positions kept; kv->n_pos - keep are dropped and fed again */
        char *text;          /* [text_len] (malloc'd) the segment's text once the feed is in */
        size_t text_len;
        int at_doc_start;    /* nothing but BOS precedes what is generated next (the detokenizer
                                drops its leading space, as SentencePiece does) */
} SessionPlan;

/* Plan a turn that appends len bytes of UTF-8 text to what s holds: the segment's text +
 * text tokenized as one string (with the leading-space marker when the segment starts a
 * document), the longest common prefix with the segment's tokens kept, the rest fed; on an
 * empty session BOS first when add_bos. A rollback is planned only where the cache allows
 * it exactly (kv_cache_can_truncate) and something is fed after it. s is not changed.
 * -EILSEQ (invalid UTF-8), -E2BIG (over TOKENIZER_MAX_INPUT), -ENOMEM; *ret_plan untouched
 * on failure. */
int session_plan(const Session *s, const char *text, size_t len, int add_bos, SessionPlan *ret_plan);
void session_plan_free(SessionPlan *p);
/* Start feeding plan p: roll the cache back to p->keep and the segment with it; the plan's
 * text becomes the segment's once session_text_fed has seen all of p->feed and
 * session_text_set has been called with it. -ERANGE if the rollback is not possible. */
int session_begin(Session *s, const SessionPlan *p);
/* n tokens went into the cache: the segment grows by them (a control token closes it: the
 * next segment starts a document after it). */
void session_text_fed(Session *s, const int32_t *tokens, size_t n);
/* The segment's text is now text[0..len) (the prompt fed), or grows by it (add: the text
 * of generated tokens just fed). Clears `pending` (set), so the segment is known again. */
void session_text_set(Session *s, const char *text, size_t len);
void session_text_add(Session *s, const char *text, size_t len);
/* Forget the segment: the next turn is tokenized as a continuation of an unknown text
 * (a document's start on an empty cache). Called after feeds made without a Generation. */
void session_text_forget(Session *s);
/* Replace the segment (a restored state file): base, fresh, tokens and text must be what
 * session_text_set/_fed could have made for this cache: 0 <= base <= n_pos, n == n_pos -
 * base, n <= 1 once the cache has wrapped, ids in the vocabulary, valid UTF-8 of at most
 * n * DETOK_MAX_OUT + 16 bytes. -EBADMSG otherwise (s unchanged), -ENOMEM. */
int session_text_restore(Session *s, int64_t base, int fresh, const int32_t *tokens, size_t n, const char *text,
                         size_t len);
/* The segment as a state file keeps it: the known segment, or an empty one at n_pos. */
void session_text_view(const Session *s, int64_t *ret_base, int *ret_fresh, const int32_t **ret_tokens,
                       size_t *ret_n, const char **ret_text, size_t *ret_len);
