/* engine/tokenizer.h — SentencePiece BPE tokenizer built from a GGUF vocabulary (GGUF model
 * "llama", what llama.cpp calls SPM), and a streaming detokenizer. A Tokenizer is immutable
 * after load: any thread may use it concurrently. A Detokenizer belongs to one caller. */
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "gguf.h"
#include "engine_limits.h"

typedef struct Tokenizer Tokenizer;

/* tokenizer.ggml.token_type values (SentencePiece piece types + 1). */
typedef enum TokenType {
        TOKEN_TYPE_NORMAL = 1,
        TOKEN_TYPE_UNKNOWN = 2,       /* exactly one: <unk> */
        TOKEN_TYPE_CONTROL = 3,       /* <s>, </s>: never produced by encode, decode to nothing */
        TOKEN_TYPE_USER_DEFINED = 4,  /* matched whole in text before BPE, never split */
        TOKEN_TYPE_UNUSED = 5,        /* may appear mid-BPE, re-split before output */
        TOKEN_TYPE_BYTE = 6,          /* <0xNN>: byte fallback */
} TokenType;

/* Build from the tokenizer.ggml.* keys:
 *   model (string, must be "llama"), tokens (string[]), scores (float32[]),
 *   token_type (int32[]), bos_token_id / eos_token_id (default 1 / 2),
 *   unknown_token_id (default: the one UNKNOWN-typed token), add_space_prefix (default true),
 *   add_bos_token (default true).
 * Returns 0; -EBADMSG on missing or inconsistent metadata (array lengths differ, ids out of
 * range, empty, duplicate, too long (> TOKENIZER_MAX_PIECE) or non-UTF-8 pieces, malformed
 * byte tokens, non-finite scores, unknown token types); -E2BIG over MODEL_MAX_VOCAB;
 * -ENOTSUP for another tokenizer model (or remove_extra_whitespaces = true); -ENOMEM.
 * The Tokenizer copies what it needs: it does not keep f. *ret_tok untouched on failure. */
int tokenizer_load(const GGUFFile *f, Tokenizer **ret_tok);
/* Accepts NULL; returns NULL. */
Tokenizer *tokenizer_free(Tokenizer *t);

uint32_t tokenizer_n_vocab(const Tokenizer *t);
int32_t tokenizer_bos(const Tokenizer *t);
int32_t tokenizer_eos(const Tokenizer *t);
int32_t tokenizer_unk(const Tokenizer *t);
/* tokenizer.ggml.add_bos_token (true when absent): whether prompts should start with BOS. */
int tokenizer_add_bos_default(const Tokenizer *t);
/* The piece of id exactly as in the vocabulary ("▁Hello", "<0x0A>", "<s>"), not
 * NUL-terminated; NULL for an id out of range. */
const char *tokenizer_piece(const Tokenizer *t, int32_t id, size_t *ret_len);
/* TokenType of id, or -EINVAL for an id out of range. */
int tokenizer_token_type(const Tokenizer *t, int32_t id);

/* Encode len bytes of UTF-8 text exactly as SentencePiece does (identity normalization:
 * ' ' becomes U+2581, "▁" is prepended when add_space_prefix and text is non-empty; BPE by
 * piece score; unknown characters fall back to <0xNN> byte tokens). Text is never parsed
 * for special tokens: "<s>" is text. Empty text gives no ids (just BOS when add_bos).
 * Prepends BOS when add_bos. Returns 0; -EILSEQ on invalid UTF-8 (overlong forms,
 * surrogates, > U+10FFFF, truncated sequences), -E2BIG over TOKENIZER_MAX_INPUT, -ENOMEM.
 * *ret_ids is malloc'd, never NULL on success (free() it); outputs untouched on failure.
 * Time O(n log n). Scratch memory follows the longest stretch of text that no vocabulary
 * piece boundary can cut (a word, for ordinary text: tiny); for adversarial text with no cut
 * at all (64 MiB of spaces) it reaches ~17 bytes per input byte. */
int tokenizer_encode(const Tokenizer *t, const char *text, size_t len, int add_bos,
                     int32_t **ret_ids, size_t *ret_n);
/* The same; space_prefix 0 leaves out the "▁" that add_space_prefix prepends, for a text
 * that continues an earlier one rather than starting a document. */
int tokenizer_encode_text(const Tokenizer *t, const char *text, size_t len, int add_bos, int space_prefix,
                          int32_t **ret_ids, size_t *ret_n);
/* 1 if the n bytes at s are strictly valid UTF-8 (what tokenizer_encode accepts). */
int tokenizer_utf8_valid(const char *s, size_t n);

/* Streaming decoder: feed ids one at a time, get back the bytes that became complete.
 * Pieces come out with U+2581 turned back into ' '. Bytes from byte-fallback tokens are
 * held until they form whole UTF-8 characters; each byte that cannot be part of a valid
 * character comes out as U+FFFD (as SentencePiece does). Control tokens (BOS/EOS) produce
 * nothing; <unk> produces " ⁇ " (SentencePiece's unknown surface).
 * When strip_leading_space is set and the vocabulary has add_space_prefix, the leading
 * space of the first non-control piece is dropped (what SentencePiece does when decoding
 * a whole text from its start, undoing the "▁" that encode prepended). */
typedef struct Detokenizer {
        const Tokenizer *tok;
        int at_start;             /* no non-control token seen yet */
        int strip_leading_space;
        uint8_t pending[4];       /* incomplete UTF-8 sequence from byte tokens */
        int n_pending;
} Detokenizer;

/* Room detok_push needs in out: a piece (<= TOKENIZER_MAX_PIECE bytes; U+2581 shrinks to
 * ' ') plus up to 3 pending bytes flushed as U+FFFD (3 bytes each). */
#define TOKENIZER_PIECE_BYTES_MAX TOKENIZER_MAX_PIECE
#define DETOK_MAX_OUT (TOKENIZER_PIECE_BYTES_MAX + 16)

void detok_init(Detokenizer *d, const Tokenizer *t, int strip_leading_space);
/* Appends at most DETOK_MAX_OUT bytes to out (not NUL-terminated); returns the number of
 * bytes written, or -EINVAL for an id out of range (d unchanged). */
int detok_push(Detokenizer *d, int32_t id, char *out);
/* Emits what is still pending (as U+FFFD) and resets the pending state; returns bytes
 * written (<= 12). Call once at the end of a stream. */
int detok_flush(Detokenizer *d, char *out);

/* Whole-sequence convenience over a Detokenizer: decodes n ids into a malloc'd,
 * NUL-terminated string (free() it). Returns 0, -EINVAL for an id out of range, -ENOMEM. */
int tokenizer_decode(const Tokenizer *t, const int32_t *ids, size_t n, int strip_leading_space,
                     char **ret_text, size_t *ret_len);
