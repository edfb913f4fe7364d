/* engine/session.c — session lifetime and chunked prefill (see session.h). */
#include "session.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "engine_limits.h"
#include "tokenizer.h"

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
        session_text_forget(s); /* empty: the first text starts a document */
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
        free(s->text.tokens);
        free(s->text.text);
        free(s);
        return NULL;
}

void session_reset(Session *s) {
        kv_cache_reset(s->kv);
        session_text_forget(s);
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

/* ------------------------------------------------------------------ continuing a text */

/* The most text a segment of n tokens may hold: each token's text is at most what the
 * detokenizer gives for it, plus a final flush of incomplete UTF-8. */
static size_t text_bound(size_t n_tokens) {
        return n_tokens * DETOK_MAX_OUT + 16;
}

void session_text_forget(Session *s) {
        SessionText *h = &s->text;
        h->base = s->kv->n_pos;
        h->fresh = s->kv->n_pos == 0;
        h->pending = 0;
        h->n_tokens = 0;
        h->len = 0;
}

/* The segment matches the cache and its text is known. */
static bool text_known(const Session *s) {
        const SessionText *h = &s->text;
        return !h->pending && h->base >= 0 && h->base + (int64_t)h->n_tokens == s->kv->n_pos;
}

static int grow(void **p, size_t *cap, size_t need, size_t size) {
        if (need <= *cap)
                return 0;
        size_t n = *cap ? *cap : 64;
        while (n < need)
                n *= 2;
        void *q = realloc(*p, n * size);
        if (!q)
                return -ENOMEM;
        *p = q;
        *cap = n;
        return 0;
}

/* Once the ring has wrapped only the last position can be rolled back: the segment keeps
 * that token alone, with its piece as text (" Hello" for "▁Hello": what follows continues
 * it), or nothing when its piece is not text (a byte or control token). A segment whose
 * text outgrew what its tokens can hold (it cannot be theirs) is forgotten. */
static void text_settle(Session *s) {
        SessionText *h = &s->text;
        if (h->pending)
                return;
        if (s->kv->n_pos > (int64_t)s->kv->n_slots && h->n_tokens > 1) {
                const Tokenizer *tok = s->m->tok;
                const int32_t last = h->tokens[h->n_tokens - 1];
                const int type = tokenizer_token_type(tok, last);
                size_t plen = 0;
                const char *piece = tokenizer_piece(tok, last, &plen);
                session_text_forget(s);
                if ((type != TOKEN_TYPE_NORMAL && type != TOKEN_TYPE_USER_DEFINED) || !piece ||
                    grow((void **)&h->text, &h->cap, plen, 1) < 0)
                        return;
                /* the piece with each U+2581 (e2 96 81) as a space */
                for (size_t i = 0; i < plen; i++) {
                        if (i + 2 < plen && (uint8_t)piece[i] == 0xe2 && (uint8_t)piece[i + 1] == 0x96 &&
                            (uint8_t)piece[i + 2] == 0x81) {
                                h->text[h->len++] = ' ';
                                i += 2;
                        } else {
                                h->text[h->len++] = piece[i];
                        }
                }
                h->tokens[0] = last;
                h->n_tokens = 1;
                h->base = s->kv->n_pos - 1;
                return;
        }
        if (h->len > text_bound(h->n_tokens))
                session_text_forget(s);
}

void session_plan_free(SessionPlan *p) {
        free(p->feed);
        free(p->text);
        p->feed = NULL;
        p->text = NULL;
}

int session_plan(const Session *s, const char *text, size_t len, int add_bos, SessionPlan *ret_plan) {
        const KVCache *kv = s->kv;
        const SessionText *h = &s->text;
        const Tokenizer *tok = s->m->tok;
        bool known = text_known(s);
        int32_t *ids = NULL, *feed = NULL;
        char *full = NULL;
        size_t n_ids = 0;
        int r;

        if (!text && len > 0)
                return -EINVAL;
again:;
        /* an unknown segment: the cache's contents are fixed, the text follows them */
        const int64_t base = known ? h->base : kv->n_pos;
        const int fresh = known ? h->fresh : kv->n_pos == 0;
        const size_t n_old = known ? h->n_tokens : 0, old_len = known ? h->len : 0;
        const bool bos = add_bos && kv->n_pos == 0;
        if (old_len + len > TOKENIZER_MAX_INPUT)
                return -E2BIG;
        full = malloc(old_len + len + 1);
        if (!full)
                return -ENOMEM;
        if (old_len)
                memcpy(full, h->text, old_len);
        if (len)
                memcpy(full + old_len, text, len);
        r = tokenizer_encode_text(tok, full, old_len + len, 0, fresh, &ids, &n_ids);
        if (r < 0) {
                free(full);
                return r;
        }
        size_t common = 0;
        while (common < n_old && common < n_ids && ids[common] == h->tokens[common])
                common++;
        int64_t keep = base + (int64_t)common;
        if (keep < kv->n_pos && common == n_ids) {
                /* the new tokens are a prefix of the old: nothing would be fed after the
                 * rollback (only tokens whose text is empty differ); keep the cache */
                keep = kv->n_pos;
        } else if (keep < kv->n_pos && !kv_cache_can_truncate(kv, keep)) {
                free(full);
                free(ids);
                known = false; /* cannot happen: the segment only holds positions the cache can drop */
                goto again;
        }
        const size_t from = common;
        const size_t n_feed = (bos ? 1 : 0) + (n_ids - from);
        feed = malloc((n_feed ? n_feed : 1) * sizeof(int32_t));
        if (!feed) {
                free(full);
                free(ids);
                return -ENOMEM;
        }
        if (bos)
                feed[0] = tokenizer_bos(tok);
        memcpy(feed + (bos ? 1 : 0), ids + from, (n_ids - from) * sizeof(int32_t));
        free(ids);
        *ret_plan = (SessionPlan){ .feed = feed, .n_feed = n_feed, .keep = keep, .text = full,
                                   .text_len = old_len + len, .at_doc_start = fresh && old_len + len == 0 };
        return 0;
}

int session_begin(Session *s, const SessionPlan *p) {
        SessionText *h = &s->text;
        const bool known = text_known(s);
        int r = kv_cache_truncate(s->kv, p->keep);
        if (r < 0)
                return r;
        if (known && p->keep >= h->base) {
                h->n_tokens = (size_t)(p->keep - h->base);
        } else {
                session_text_forget(s);
        }
        if (p->n_feed > 0) {
                h->pending = 1;
        } else {
                session_text_set(s, p->text, p->text_len);
        }
        return 0;
}

void session_text_fed(Session *s, const int32_t *tokens, size_t n) {
        SessionText *h = &s->text;
        const Tokenizer *tok = s->m->tok;
        const int64_t pos0 = s->kv->n_pos - (int64_t)n; /* the cache has them already */
        for (size_t i = 0; i < n; i++) {
                if (tokenizer_token_type(tok, tokens[i]) == TOKEN_TYPE_CONTROL) {
                        /* BOS, EOS...: the next segment starts a document after it */
                        h->base = pos0 + (int64_t)i + 1;
                        h->fresh = 1;
                        h->n_tokens = 0;
                        h->len = 0;
                        continue;
                }
                if (grow((void **)&h->tokens, &h->cap_tokens, h->n_tokens + 1, sizeof(int32_t)) < 0) {
                        session_text_forget(s);
                        h->pending = 1; /* unknown until the next turn */
                        return;
                }
                h->tokens[h->n_tokens++] = tokens[i];
        }
        if (h->pending && s->kv->n_pos > (int64_t)s->kv->n_slots && h->n_tokens > s->kv->n_slots) {
                /* a long prompt past the cache's end: only its end can matter (text_settle) */
                const size_t drop = h->n_tokens - s->kv->n_slots;
                memmove(h->tokens, h->tokens + drop, s->kv->n_slots * sizeof(int32_t));
                h->n_tokens -= drop;
                h->base += (int64_t)drop;
        }
        text_settle(s);
}

void session_text_set(Session *s, const char *text, size_t len) {
        SessionText *h = &s->text;
        h->len = 0;
        h->pending = 0;
        session_text_add(s, text, len);
}

void session_text_add(Session *s, const char *text, size_t len) {
        SessionText *h = &s->text;
        if (h->pending)
                return; /* the text of the tokens before it is not known */
        if (s->kv->n_pos > (int64_t)s->kv->n_slots && h->n_tokens > 1) {
                text_settle(s); /* only the last token stays: its piece is its text */
                return;
        }
        /* + 1: a generated token's text comes just before the token itself (token_fed) */
        if (h->len + len > text_bound(h->n_tokens + 1) || grow((void **)&h->text, &h->cap, h->len + len, 1) < 0) {
                session_text_forget(s);
                return;
        }
        if (len)
                memcpy(h->text + h->len, text, len);
        h->len += len;
        text_settle(s);
}

int session_text_restore(Session *s, int64_t base, int fresh, const int32_t *tokens, size_t n, const char *text,
                         size_t len) {
        SessionText *h = &s->text;
        const KVCache *kv = s->kv;
        if (base < 0 || base > kv->n_pos || (uint64_t)(kv->n_pos - base) != n || (fresh != 0 && fresh != 1) ||
            (kv->n_pos > (int64_t)kv->n_slots && n > 1) || len > text_bound(n) || !tokenizer_utf8_valid(text, len))
                return -EBADMSG;
        for (size_t i = 0; i < n; i++)
                if (tokens[i] < 0 || (uint32_t)tokens[i] >= s->m->cfg.n_vocab ||
                    tokenizer_token_type(s->m->tok, tokens[i]) == TOKEN_TYPE_CONTROL)
                        return -EBADMSG;
        if (grow((void **)&h->tokens, &h->cap_tokens, n, sizeof(int32_t)) < 0 || grow((void **)&h->text, &h->cap, len, 1) < 0)
                return -ENOMEM;
        if (n)
                memcpy(h->tokens, tokens, n * sizeof(int32_t));
        if (len)
                memcpy(h->text, text, len);
        h->base = base;
        h->fresh = fresh;
        h->pending = 0;
        h->n_tokens = n;
        h->len = len;
        return 0;
}

void session_text_view(const Session *s, int64_t *ret_base, int *ret_fresh, const int32_t **ret_tokens,
                       size_t *ret_n, const char **ret_text, size_t *ret_len) {
        const SessionText *h = &s->text;
        const bool known = text_known(s);
        *ret_base = known ? h->base : s->kv->n_pos;
        *ret_fresh = known ? h->fresh : s->kv->n_pos == 0;
        *ret_tokens = h->tokens;
        *ret_n = known ? h->n_tokens : 0;
        *ret_text = h->text ? h->text : "";
        *ret_len = known ? h->len : 0;
}