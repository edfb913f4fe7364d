/* engine/tokenizer.c — SentencePiece BPE for GGUF "llama" (SPM) vocabularies: vocabulary
 * validation and the piece hash table (load), encoding with byte fallback, and the streaming
 * detokenizer. Load on any thread; afterwards a Tokenizer is read-only and shared by all
 * threads (encode keeps its scratch on the caller's stack and heap). */
#include "tokenizer.h"

#include <assert.h>
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "engine_limits.h"

/* SentencePiece's visible space: U+2581 LOWER ONE EIGHTH BLOCK "▁". */
#define SPACE_SYMBOL     "\xe2\x96\x81"
#define SPACE_SYMBOL_LEN 3
#define SPACE_CP         0x2581u
/* SentencePiece's default surface of <unk>: " ⁇ " (U+2047 between spaces). */
#define UNK_SURFACE      " \xe2\x81\x87 "
#define UNK_SURFACE_LEN  5
/* U+FFFD REPLACEMENT CHARACTER. */
#define REPLACEMENT      "\xef\xbf\xbd"
#define REPLACEMENT_LEN  3

/* Encode cuts the text into segments of at least this many bytes, at points no vocabulary
 * piece can straddle (see Tokenizer.pairs), so its scratch memory stays small. */
#define SEGMENT_BYTES    64u

/* A symbol's length word (Encoder.len) carries this bit when it is a user-defined piece. */
#define SYM_FROZEN       0x8000u
#define SYM_LEN_MASK     0x7fffu

typedef struct TokenEntry {
        float score;
        uint32_t rank;      /* mergeable pieces: order of score among all distinct scores of
                             * mergeable pieces (0 = lowest); equal scores, equal ranks */
        uint32_t offset;    /* of the piece in Tokenizer.blob */
        uint32_t aux;       /* BYTE: the byte value; UNUSED: index into Encoder.rev_left */
        uint16_t len;       /* bytes, 1 .. TOKENIZER_MAX_PIECE */
        uint8_t type;       /* TokenType */
        uint8_t mergeable;  /* NORMAL, USER_DEFINED or UNUSED: a BPE merge may produce it */
} TokenEntry;

/* Byte trie of the user-defined pieces (first-child / next-sibling lists). Node 0 is the root,
 * so 0 also means "none" in child and sibling. */
typedef struct TrieNode {
        uint32_t child;
        uint32_t sibling;
        int32_t id;         /* token ending at this node, -1 = none */
        uint8_t byte;
} TrieNode;

struct Tokenizer {
        uint32_t n_vocab;
        TokenEntry *tokens;         /* [n_vocab] */
        char *blob;                 /* every piece, back to back, no separators */

        /* Open-addressing piece → id table: 0 = empty slot, else (hash >> 32) << 32 | (id + 1). */
        uint64_t *slots;            /* [slot_mask + 1] */
        uint64_t slot_mask;

        /* Set of adjacent code-point pairs (a, b) occurring inside some mergeable piece.
         * Between two characters whose pair is absent no piece can straddle, so the text on
         * either side is tokenized independently: encode cuts segments there. Keys are
         * (a << 21 | b) + 1, 0 = empty. NULL when segmenting is off (UNUSED pieces exist:
         * SentencePiece re-splits them with state gathered over the whole text). */
        uint64_t *pairs;            /* [pair_mask + 1] */
        uint64_t pair_mask;

        TrieNode *trie;             /* [n_trie]; n_trie <= 1 when no user-defined pieces */
        uint32_t n_trie;

        int32_t bos, eos, unk;
        int add_space_prefix;
        int add_bos;
        int byte_fallback;          /* all 256 <0xNN> tokens present */
        int32_t byte_ids[256];
        uint32_t n_unused;
        uint32_t max_merge_len;     /* bytes of the longest mergeable piece */
};

/* ---------------------------------------------------------------- UTF-8 */

/* Total length of the character a lead byte starts, or 0 when b cannot start one
 * (continuation bytes, C0/C1 which only start overlong forms, F5..FF beyond U+10FFFF). */
static unsigned utf8_need(uint8_t b) {
        if (b < 0x80)
                return 1;
        if (b < 0xc2)
                return 0;
        if (b < 0xe0)
                return 2;
        if (b < 0xf0)
                return 3;
        if (b < 0xf5)
                return 4;
        return 0;
}

/* Whether b may follow lead as the second byte: the narrowed ranges rule out overlong forms
 * (E0, F0), surrogates (ED) and code points past U+10FFFF (F4). */
static bool utf8_second_ok(uint8_t lead, uint8_t b) {
        uint8_t lo = 0x80, hi = 0xbf;
        if (lead == 0xe0)
                lo = 0xa0;
        else if (lead == 0xed)
                hi = 0x9f;
        else if (lead == 0xf0)
                lo = 0x90;
        else if (lead == 0xf4)
                hi = 0x8f;
        return b >= lo && b <= hi;
}

/* Length (1..4) of the valid character at s[0..n), storing its code point; 0 when the bytes
 * there are not a whole valid character. */
static size_t utf8_decode(const uint8_t *s, size_t n, uint32_t *ret_cp) {
        static const uint8_t lead_mask[5] = { 0, 0x7f, 0x1f, 0x0f, 0x07 };
        unsigned need = utf8_need(s[0]);
        uint32_t cp;

        if (need == 0 || n < need)
                return 0;
        if (need > 1 && !utf8_second_ok(s[0], s[1]))
                return 0;
        cp = s[0] & lead_mask[need];
        for (unsigned i = 1; i < need; i++) {
                if ((s[i] & 0xc0) != 0x80)
                        return 0;
                cp = cp << 6 | (s[i] & 0x3f);
        }
        *ret_cp = cp;
        return need;
}

static bool utf8_valid(const char *s, size_t n) {
        uint32_t cp;
        for (size_t i = 0; i < n;) {
                size_t k = utf8_decode((const uint8_t *)s + i, n - i, &cp);
                if (k == 0)
                        return false;
                i += k;
        }
        return true;
}

/* ---------------------------------------------------------------- hashing */

static uint64_t mix64(uint64_t h) {
        h ^= h >> 33;
        h *= 0xff51afd7ed558ccdull;
        h ^= h >> 33;
        h *= 0xc4ceb9fe1a85ec53ull;
        h ^= h >> 33;
        return h;
}

/* FNV-1a, then a finalizer so that both halves of the result are well mixed. */
static uint64_t hash_bytes(const char *s, size_t n) {
        uint64_t h = 0xcbf29ce484222325ull;
        for (size_t i = 0; i < n; i++) {
                h ^= (uint8_t)s[i];
                h *= 0x100000001b3ull;
        }
        return mix64(h);
}

/* Id of the piece s[0..n), or -1. */
static int32_t piece_find(const Tokenizer *t, const char *s, size_t n) {
        uint64_t h, i;
        uint32_t tag;

        if (n == 0 || n > TOKENIZER_MAX_PIECE)
                return -1;
        h = hash_bytes(s, n);
        tag = (uint32_t)(h >> 32);
        for (i = h & t->slot_mask;; i = (i + 1) & t->slot_mask) {
                uint64_t slot = t->slots[i];
                const TokenEntry *e;
                uint32_t id;

                if (slot == 0)
                        return -1;
                if ((uint32_t)(slot >> 32) != tag)
                        continue;
                id = (uint32_t)slot - 1;
                e = &t->tokens[id];
                if (e->len == n && memcmp(t->blob + e->offset, s, n) == 0)
                        return (int32_t)id;
        }
}

/* Inserts id; -EBADMSG when its piece is already present (SentencePiece rejects duplicates). */
static int piece_insert(Tokenizer *t, uint32_t id) {
        const TokenEntry *e = &t->tokens[id];
        const char *s = t->blob + e->offset;
        uint64_t h = hash_bytes(s, e->len), i;

        for (i = h & t->slot_mask; t->slots[i] != 0; i = (i + 1) & t->slot_mask) {
                const TokenEntry *o = &t->tokens[(uint32_t)t->slots[i] - 1];
                if (o->len == e->len && memcmp(t->blob + o->offset, s, e->len) == 0)
                        return -EBADMSG;
        }
        t->slots[i] = (h >> 32) << 32 | (uint64_t)(id + 1);
        return 0;
}

static uint64_t pair_key(uint32_t a, uint32_t b) {
        return ((uint64_t)a << 21 | b) + 1;
}

static void pair_insert(Tokenizer *t, uint32_t a, uint32_t b) {
        uint64_t key = pair_key(a, b), i;
        for (i = mix64(key) & t->pair_mask; t->pairs[i] != 0; i = (i + 1) & t->pair_mask)
                if (t->pairs[i] == key)
                        return;
        t->pairs[i] = key;
}

static bool pair_has(const Tokenizer *t, uint32_t a, uint32_t b) {
        uint64_t key = pair_key(a, b), i;
        for (i = mix64(key) & t->pair_mask; t->pairs[i] != 0; i = (i + 1) & t->pair_mask)
                if (t->pairs[i] == key)
                        return true;
        return false;
}

/* Smallest power of two >= 2 * n (load factor <= 1/2), at least 16. */
static uint64_t table_size(uint64_t n) {
        uint64_t s = 16;
        while (s < 2 * n)
                s <<= 1;
        return s;
}

/* ---------------------------------------------------------------- load */

Tokenizer *tokenizer_free(Tokenizer *t) {
        if (!t)
                return NULL;
        free(t->tokens);
        free(t->blob);
        free(t->slots);
        free(t->pairs);
        free(t->trie);
        free(t);
        return NULL;
}

static int get_bool_or(const GGUFFile *f, const char *key, int def, int *ret) {
        int r = gguf_get_bool(f, key, ret);
        if (r == -ENOENT) {
                *ret = def;
                return 0;
        }
        return r < 0 ? -EBADMSG : 0;
}

/* A token id key: default when absent, -EBADMSG when not an integer or not < n. */
static int get_id_or(const GGUFFile *f, const char *key, int64_t def, uint32_t n, int32_t *ret) {
        uint32_t v;
        int r = gguf_get_u32(f, key, &v);
        if (r == -ENOENT) {
                if (def < 0 || def >= n)
                        return -EBADMSG;
                *ret = (int32_t)def;
                return 0;
        }
        if (r < 0 || v >= n)
                return -EBADMSG;
        *ret = (int32_t)v;
        return 0;
}

static uint32_t load_u32le(const uint8_t *p) {
        return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static int hex_digit(char c) {
        if (c >= '0' && c <= '9')
                return c - '0';
        if (c >= 'A' && c <= 'F')
                return c - 'A' + 10;
        return -1;
}

/* The value of a byte piece "<0xNN>" (upper-case hex, as SentencePiece writes them), or -1. */
static int byte_piece_value(const char *s, size_t n) {
        int hi, lo;
        if (n != 6 || memcmp(s, "<0x", 3) != 0 || s[5] != '>')
                return -1;
        hi = hex_digit(s[3]);
        lo = hex_digit(s[4]);
        if (hi < 0 || lo < 0)
                return -1;
        return hi << 4 | lo;
}

static void trie_insert(Tokenizer *t, const char *s, size_t n, int32_t id) {
        uint32_t node = 0;
        for (size_t i = 0; i < n; i++) {
                uint8_t b = (uint8_t)s[i];
                uint32_t c;
                for (c = t->trie[node].child; c != 0; c = t->trie[c].sibling)
                        if (t->trie[c].byte == b)
                                break;
                if (c == 0) {
                        /* Capacity was sized to the total bytes of user-defined pieces + 1. */
                        c = t->n_trie++;
                        t->trie[c] = (TrieNode){ .child = 0, .sibling = t->trie[node].child, .id = -1, .byte = b };
                        t->trie[node].child = c;
                }
                node = c;
        }
        t->trie[node].id = id;
}

/* Bytes of the longest user-defined piece that s[0..n) starts with, or 0. */
static size_t trie_match(const Tokenizer *t, const char *s, size_t n) {
        uint32_t node = 0;
        size_t best = 0;
        for (size_t i = 0; i < n; i++) {
                uint32_t c;
                for (c = t->trie[node].child; c != 0; c = t->trie[c].sibling)
                        if (t->trie[c].byte == (uint8_t)s[i])
                                break;
                if (c == 0)
                        break;
                node = c;
                if (t->trie[node].id >= 0)
                        best = i + 1;
        }
        return best;
}

static int cmp_float(const void *a, const void *b) {
        float x = *(const float *)a, y = *(const float *)b;
        return (x > y) - (x < y);
}

/* Sets TokenEntry.rank of every mergeable piece (encode compares ranks, not floats). */
static int rank_scores(Tokenizer *t) {
        float *s = malloc(t->n_vocab * sizeof(*s));
        size_t n = 0, m = 0;

        if (!s)
                return -ENOMEM;
        for (uint32_t i = 0; i < t->n_vocab; i++)
                if (t->tokens[i].mergeable)
                        s[n++] = t->tokens[i].score;
        qsort(s, n, sizeof(*s), cmp_float);
        for (size_t i = 0; i < n; i++)
                if (m == 0 || s[i] != s[m - 1])
                        s[m++] = s[i];
        for (uint32_t i = 0; i < t->n_vocab; i++) {
                TokenEntry *e = &t->tokens[i];
                const float *p;
                if (!e->mergeable)
                        continue;
                p = bsearch(&e->score, s, m, sizeof(*s), cmp_float);
                e->rank = (uint32_t)(p - s); /* present: it was collected above */
        }
        free(s);
        return 0;
}

int tokenizer_load(const GGUFFile *f, Tokenizer **ret_tok) {
        GGUFString model, *pieces = NULL;
        const void *scores_raw = NULL, *types_raw = NULL;
        uint64_t n = 0, n_scores = 0, n_types = 0, blob_len = 0, user_bytes = 0, n_pair_max = 0;
        uint32_t n_byte_tokens = 0, n_unk = 0;
        int32_t unk_typed = -1;
        int remove_extra_ws = 0, r;
        Tokenizer *t = NULL;

        if (!f || !ret_tok)
                return -EINVAL;

        r = gguf_get_str(f, "tokenizer.ggml.model", &model);
        if (r < 0)
                return -EBADMSG;
        if (!gguf_str_eq(model, "llama"))
                return -ENOTSUP;
        r = get_bool_or(f, "tokenizer.ggml.remove_extra_whitespaces", 0, &remove_extra_ws);
        if (r < 0)
                return r;
        if (remove_extra_ws)
                return -ENOTSUP;

        r = gguf_get_str_array(f, "tokenizer.ggml.tokens", &pieces, &n);
        if (r < 0)
                return r == -ENOMEM ? r : -EBADMSG;
        if (n == 0) {
                r = -EBADMSG;
                goto fail;
        }
        if (n > MODEL_MAX_VOCAB) {
                r = -E2BIG;
                goto fail;
        }
        if (gguf_get_array(f, "tokenizer.ggml.scores", GGUF_TYPE_FLOAT32, &scores_raw, &n_scores) < 0 ||
            gguf_get_array(f, "tokenizer.ggml.token_type", GGUF_TYPE_INT32, &types_raw, &n_types) < 0 ||
            n_scores != n || n_types != n) {
                r = -EBADMSG;
                goto fail;
        }

        t = calloc(1, sizeof(*t));
        if (!t) {
                r = -ENOMEM;
                goto fail;
        }
        t->n_vocab = (uint32_t)n;
        for (int b = 0; b < 256; b++)
                t->byte_ids[b] = -1;
        t->tokens = calloc(n, sizeof(*t->tokens));
        if (!t->tokens) {
                r = -ENOMEM;
                goto fail;
        }

        /* Pass 1: per-token checks and sizes. */
        for (uint64_t i = 0; i < n; i++) {
                TokenEntry *e = &t->tokens[i];
                uint32_t bits = load_u32le((const uint8_t *)scores_raw + 4 * i);
                int32_t type = (int32_t)load_u32le((const uint8_t *)types_raw + 4 * i);
                float score;

                memcpy(&score, &bits, sizeof(score));
                if (!isfinite(score) || type < TOKEN_TYPE_NORMAL || type > TOKEN_TYPE_BYTE ||
                    pieces[i].len == 0 || pieces[i].len > TOKENIZER_MAX_PIECE ||
                    !utf8_valid(pieces[i].data, pieces[i].len)) {
                        r = -EBADMSG;
                        goto fail;
                }
                e->score = score;
                e->type = (uint8_t)type;
                e->len = (uint16_t)pieces[i].len;
                e->offset = (uint32_t)blob_len; /* <= MODEL_MAX_VOCAB * TOKENIZER_MAX_PIECE = 2^28 */
                blob_len += pieces[i].len;
                e->mergeable = type == TOKEN_TYPE_NORMAL || type == TOKEN_TYPE_USER_DEFINED ||
                               type == TOKEN_TYPE_UNUSED;
                if (e->mergeable) {
                        if (e->len > t->max_merge_len)
                                t->max_merge_len = e->len;
                        n_pair_max += e->len; /* >= characters - 1 */
                }

                switch (type) {
                case TOKEN_TYPE_BYTE: {
                        int v = byte_piece_value(pieces[i].data, pieces[i].len);
                        if (v < 0 || t->byte_ids[v] >= 0) {
                                r = -EBADMSG;
                                goto fail;
                        }
                        t->byte_ids[v] = (int32_t)i;
                        e->aux = (uint32_t)v;
                        n_byte_tokens++;
                        break;
                }
                case TOKEN_TYPE_UNKNOWN:
                        n_unk++;
                        unk_typed = (int32_t)i;
                        break;
                case TOKEN_TYPE_UNUSED:
                        e->aux = t->n_unused++;
                        break;
                case TOKEN_TYPE_USER_DEFINED:
                        user_bytes += e->len;
                        break;
                default:
                        break;
                }
        }
        /* SentencePiece: exactly one <unk>; byte fallback needs every byte. */
        if (n_unk != 1 || (n_byte_tokens != 0 && n_byte_tokens != 256)) {
                r = -EBADMSG;
                goto fail;
        }
        t->byte_fallback = n_byte_tokens == 256;

        r = rank_scores(t);
        if (r < 0)
                goto fail;

        t->blob = malloc(blob_len ? blob_len : 1);
        t->slots = calloc(table_size(n), sizeof(*t->slots));
        if (!t->blob || !t->slots) {
                r = -ENOMEM;
                goto fail;
        }
        t->slot_mask = table_size(n) - 1;
        for (uint64_t i = 0; i < n; i++) {
                memcpy(t->blob + t->tokens[i].offset, pieces[i].data, pieces[i].len);
                r = piece_insert(t, (uint32_t)i);
                if (r < 0)
                        goto fail;
        }

        /* Special ids: llama.cpp's SPM defaults when absent. */
        r = get_id_or(f, "tokenizer.ggml.unknown_token_id", unk_typed, t->n_vocab, &t->unk);
        if (r < 0 || t->unk != unk_typed) {
                r = -EBADMSG;
                goto fail;
        }
        r = get_id_or(f, "tokenizer.ggml.bos_token_id", 1, t->n_vocab, &t->bos);
        if (r < 0)
                goto fail;
        r = get_id_or(f, "tokenizer.ggml.eos_token_id", 2, t->n_vocab, &t->eos);
        if (r < 0)
                goto fail;
        for (int k = 0; k < 2; k++) {
                uint8_t type = t->tokens[k == 0 ? t->bos : t->eos].type;
                if (type != TOKEN_TYPE_CONTROL && type != TOKEN_TYPE_USER_DEFINED) {
                        r = -EBADMSG;
                        goto fail;
                }
        }
        r = get_bool_or(f, "tokenizer.ggml.add_space_prefix", 1, &t->add_space_prefix);
        if (r < 0)
                goto fail;
        r = get_bool_or(f, "tokenizer.ggml.add_bos_token", 1, &t->add_bos);
        if (r < 0)
                goto fail;

        /* User-defined pieces: matched whole before BPE. */
        t->trie = calloc(user_bytes + 1, sizeof(*t->trie));
        if (!t->trie) {
                r = -ENOMEM;
                goto fail;
        }
        t->trie[0] = (TrieNode){ .id = -1 };
        t->n_trie = 1;
        for (uint32_t i = 0; i < t->n_vocab; i++)
                if (t->tokens[i].type == TOKEN_TYPE_USER_DEFINED)
                        trie_insert(t, t->blob + t->tokens[i].offset, t->tokens[i].len, (int32_t)i);

        /* Segment cut points (see Tokenizer.pairs). */
        if (t->n_unused == 0) {
                t->pair_mask = table_size(n_pair_max) - 1;
                t->pairs = calloc(t->pair_mask + 1, sizeof(*t->pairs));
                if (!t->pairs) {
                        r = -ENOMEM;
                        goto fail;
                }
                for (uint32_t i = 0; i < t->n_vocab; i++) {
                        const TokenEntry *e = &t->tokens[i];
                        const uint8_t *s = (const uint8_t *)t->blob + e->offset;
                        uint32_t prev = 0, cp;
                        if (!e->mergeable)
                                continue;
                        for (size_t k = 0, first = 1; k < e->len; first = 0) {
                                k += utf8_decode(s + k, e->len - k, &cp); /* validated above */
                                if (!first)
                                        pair_insert(t, prev, cp);
                                prev = cp;
                        }
                }
        }

        free(pieces);
        *ret_tok = t;
        return 0;

fail:
        free(pieces);
        tokenizer_free(t);
        return r;
}

uint32_t tokenizer_n_vocab(const Tokenizer *t) {
        return t->n_vocab;
}

int32_t tokenizer_bos(const Tokenizer *t) {
        return t->bos;
}

int32_t tokenizer_eos(const Tokenizer *t) {
        return t->eos;
}

int32_t tokenizer_unk(const Tokenizer *t) {
        return t->unk;
}

int tokenizer_add_bos_default(const Tokenizer *t) {
        return t->add_bos;
}

const char *tokenizer_piece(const Tokenizer *t, int32_t id, size_t *ret_len) {
        if (id < 0 || (uint32_t)id >= t->n_vocab)
                return NULL;
        if (ret_len)
                *ret_len = t->tokens[id].len;
        return t->blob + t->tokens[id].offset;
}

int tokenizer_token_type(const Tokenizer *t, int32_t id) {
        if (id < 0 || (uint32_t)id >= t->n_vocab)
                return -EINVAL;
        return t->tokens[id].type;
}

/* ---------------------------------------------------------------- encode */

/* A merge candidate as one 64-bit key, ordered like SentencePiece's agenda (best score first,
 * then leftmost): the rank of the merged piece's score (TokenEntry.rank) in the top bits, then
 * the left symbol's offset, inverted, then the merged size, which tells whether the candidate
 * is stale (either symbol grew since it was proposed). */
typedef uint64_t Candidate;

#define CAND_RANK_SHIFT  44
#define CAND_LEFT_SHIFT  16
#define CAND_LEFT_MAX    ((1u << 28) - 1)
#define CAND_SIZE_MASK   0xffffu

static_assert(MODEL_MAX_VOCAB <= (1u << (64 - CAND_RANK_SHIFT)), "score ranks fit a candidate key");
static_assert(3ull * TOKENIZER_MAX_INPUT + SPACE_SYMBOL_LEN <= CAND_LEFT_MAX, "offsets fit a candidate key");
static_assert(TOKENIZER_MAX_PIECE <= CAND_SIZE_MASK && TOKENIZER_MAX_PIECE <= SYM_LEN_MASK, "piece sizes fit");

/* Scratch of one encode call. Symbols are indexed by the byte offset where they start in the
 * segment: a symbol's right neighbour starts at offset + len, its left neighbour at the
 * nearest offset before with a non-zero len. */
typedef struct Encoder {
        const Tokenizer *t;
        char *seg;                  /* normalized text of the current segment */
        size_t seg_len, seg_cap;
        uint16_t *len;              /* [len_cap] symbol bytes (| SYM_FROZEN) at a symbol's first
                                     * byte; 0 elsewhere and once merged into the left neighbour */
        size_t len_cap;
        Candidate *heap;            /* 4-ary max-heap */
        size_t n_heap, heap_cap;
        int32_t *ids;               /* output */
        size_t n_ids, ids_cap;
        uint16_t *rev_left;         /* [n_unused] left length of the last merge proposed into
                                     * each UNUSED piece (SentencePiece's rev_merge), 0 = none */
        bool prev_unk;              /* last output was <unk> (runs of unknowns give one <unk>) */
} Encoder;

static int grow(void **p, size_t *cap, size_t need, size_t elem) {
        size_t c = *cap ? *cap : 16;
        void *q;
        if (need <= *cap)
                return 0;
        while (c < need) {
                if (c > SIZE_MAX / 2 / elem)
                        return -ENOMEM;
                c *= 2;
        }
        q = realloc(*p, c * elem);
        if (!q)
                return -ENOMEM;
        *p = q;
        *cap = c;
        return 0;
}

static int push_id(Encoder *e, int32_t id) {
        int r = grow((void **)&e->ids, &e->ids_cap, e->n_ids + 1, sizeof(*e->ids));
        if (r < 0)
                return r;
        e->ids[e->n_ids++] = id;
        return 0;
}

static int heap_push(Encoder *e, Candidate c) {
        size_t i;
        int r = grow((void **)&e->heap, &e->heap_cap, e->n_heap + 1, sizeof(*e->heap));
        if (r < 0)
                return r;
        for (i = e->n_heap++; i > 0; i = (i - 1) / 4) {
                size_t parent = (i - 1) / 4;
                if (e->heap[parent] >= c)
                        break;
                e->heap[i] = e->heap[parent];
        }
        e->heap[i] = c;
        return 0;
}

static Candidate heap_pop(Encoder *e) {
        Candidate top = e->heap[0], last = e->heap[--e->n_heap];
        size_t i = 0, n = e->n_heap;
        for (;;) {
                size_t c = 4 * i + 1, best, end;
                if (c >= n)
                        break;
                end = c + 4 < n ? c + 4 : n;
                best = c;
                for (size_t k = c + 1; k < end; k++)
                        if (e->heap[k] > e->heap[best])
                                best = k;
                if (e->heap[best] <= last)
                        break;
                e->heap[i] = e->heap[best];
                i = best;
        }
        if (n > 0)
                e->heap[i] = last;
        return top;
}

/* Offset of the symbol before the one at l, or -1. Walks back over at most one symbol. */
static int64_t prev_symbol(const Encoder *e, size_t l) {
        while (l > 0)
                if (e->len[--l] != 0)
                        return (int64_t)l;
        return -1;
}

/* SentencePiece's MaybeAddNewSymbolPair: propose merging the symbol at l with its right
 * neighbour when the concatenation is a mergeable piece. */
static int maybe_add_pair(Encoder *e, int64_t l) {
        const Tokenizer *t = e->t;
        const TokenEntry *te;
        size_t r, size;
        int32_t id;

        if (l < 0)
                return 0;
        r = (size_t)l + (e->len[l] & SYM_LEN_MASK);
        if (r >= e->seg_len || (e->len[l] & SYM_FROZEN) || (e->len[r] & SYM_FROZEN))
                return 0;
        size = (size_t)e->len[l] + e->len[r];
        if (size > t->max_merge_len)
                return 0;
        id = piece_find(t, e->seg + l, size);
        if (id < 0 || !t->tokens[id].mergeable)
                return 0;
        te = &t->tokens[id];
        if (te->type == TOKEN_TYPE_UNUSED)
                e->rev_left[te->aux] = e->len[l];
        return heap_push(e, (Candidate)te->rank << CAND_RANK_SHIFT |
                                    (Candidate)(CAND_LEFT_MAX - (uint32_t)l) << CAND_LEFT_SHIFT | size);
}

/* Outputs one final symbol: its id, re-split when it is an UNUSED piece, byte fallback (or
 * <unk>) when it is not in the vocabulary. */
static int emit_symbol(Encoder *e, const char *s, size_t n) {
        const Tokenizer *t = e->t;
        int32_t id = piece_find(t, s, n);
        int r;

        if (id >= 0 && t->tokens[id].type == TOKEN_TYPE_UNUSED) {
                size_t left = e->rev_left ? e->rev_left[t->tokens[id].aux] : 0;
                if (left > 0 && left < n) {
                        r = emit_symbol(e, s, left);
                        if (r < 0)
                                return r;
                        return emit_symbol(e, s + left, n - left);
                }
        }
        if (id < 0 || t->tokens[id].type == TOKEN_TYPE_UNKNOWN) {
                if (t->byte_fallback) {
                        for (size_t i = 0; i < n; i++) {
                                r = push_id(e, t->byte_ids[(uint8_t)s[i]]);
                                if (r < 0)
                                        return r;
                        }
                        e->prev_unk = false;
                        return 0;
                }
                if (e->prev_unk)
                        return 0;
                e->prev_unk = true;
                return push_id(e, t->unk);
        }
        e->prev_unk = false;
        return push_id(e, id);
}

/* BPE over e->seg[0..seg_len) (valid UTF-8), appending ids: SentencePiece's bpe_model.cc
 * Encode, candidate for candidate. */
static int encode_segment(Encoder *e) {
        const Tokenizer *t = e->t;
        size_t n = e->seg_len, i;
        int r;

        if (n == 0)
                return 0;
        if (n > CAND_LEFT_MAX)
                return -E2BIG; /* unreachable, see the static_assert */
        r = grow((void **)&e->len, &e->len_cap, n, sizeof(*e->len));
        if (r < 0)
                return r;
        memset(e->len, 0, n * sizeof(*e->len));

        /* Initial symbols: user-defined pieces (frozen), else single characters. */
        for (i = 0; i < n;) {
                size_t k = t->n_trie > 1 ? trie_match(t, e->seg + i, n - i) : 0;
                uint16_t frozen = k > 0 ? SYM_FROZEN : 0;
                if (k == 0)
                        k = utf8_need((uint8_t)e->seg[i]);
                e->len[i] = (uint16_t)(k | frozen);
                i += k;
        }

        e->n_heap = 0;
        for (i = 0; i < n; i += e->len[i] & SYM_LEN_MASK) {
                r = maybe_add_pair(e, (int64_t)i);
                if (r < 0)
                        return r;
        }

        while (e->n_heap > 0) {
                Candidate c = heap_pop(e);
                size_t l = CAND_LEFT_MAX - (size_t)(c >> CAND_LEFT_SHIFT & CAND_LEFT_MAX);
                size_t size = (size_t)(c & CAND_SIZE_MASK), rr;

                if (e->len[l] == 0)
                        continue;
                rr = l + e->len[l];
                /* Stale when either symbol grew since the proposal (lengths only grow; a frozen
                 * right symbol carries SYM_FROZEN and never matches). */
                if (rr >= n || (size_t)e->len[l] + e->len[rr] != size)
                        continue;
                e->len[l] = (uint16_t)size;
                e->len[rr] = 0;
                r = maybe_add_pair(e, prev_symbol(e, l));
                if (r < 0)
                        return r;
                r = maybe_add_pair(e, (int64_t)l);
                if (r < 0)
                        return r;
        }

        for (i = 0; i < n;) {
                size_t k = e->len[i] & SYM_LEN_MASK;
                r = emit_symbol(e, e->seg + i, k);
                if (r < 0)
                        return r;
                i += k;
        }
        return 0;
}

static int seg_append(Encoder *e, const char *s, size_t n) {
        int r = grow((void **)&e->seg, &e->seg_cap, e->seg_len + n, 1);
        if (r < 0)
                return r;
        memcpy(e->seg + e->seg_len, s, n);
        e->seg_len += n;
        return 0;
}

int tokenizer_utf8_valid(const char *s, size_t n) {
        return utf8_valid(s, n);
}

int tokenizer_encode(const Tokenizer *t, const char *text, size_t len, int add_bos,
                     int32_t **ret_ids, size_t *ret_n) {
        return tokenizer_encode_text(t, text, len, add_bos, 1, ret_ids, ret_n);
}

int tokenizer_encode_text(const Tokenizer *t, const char *text, size_t len, int add_bos, int space_prefix,
                          int32_t **ret_ids, size_t *ret_n) {
        Encoder e = { .t = t };
        uint32_t prev_cp = 0;
        bool have_prev = false;
        int r = 0;

        if (!t || (!text && len > 0) || !ret_ids || !ret_n)
                return -EINVAL;
        if (len > TOKENIZER_MAX_INPUT)
                return -E2BIG;

        r = grow((void **)&e.ids, &e.ids_cap, 16, sizeof(*e.ids));
        if (r < 0)
                goto finish;
        if (add_bos) {
                r = push_id(&e, t->bos);
                if (r < 0)
                        goto finish;
        }
        if (len == 0)
                goto finish;

        if (t->n_unused > 0) {
                e.rev_left = calloc(t->n_unused, sizeof(*e.rev_left));
                if (!e.rev_left) {
                        r = -ENOMEM;
                        goto finish;
                }
        }

        /* Normalize (identity; ' ' → "▁"; dummy prefix) into segments and encode each. */
        if (t->add_space_prefix && space_prefix) {
                r = seg_append(&e, SPACE_SYMBOL, SPACE_SYMBOL_LEN);
                if (r < 0)
                        goto finish;
                prev_cp = SPACE_CP;
                have_prev = true;
        }
        for (size_t pos = 0; pos < len;) {
                uint32_t cp;
                size_t k = utf8_decode((const uint8_t *)text + pos, len - pos, &cp);

                if (k == 0) {
                        r = -EILSEQ;
                        goto finish;
                }
                if (cp == ' ')
                        cp = SPACE_CP;
                if (t->pairs && have_prev && e.seg_len >= SEGMENT_BYTES && !pair_has(t, prev_cp, cp)) {
                        r = encode_segment(&e);
                        if (r < 0)
                                goto finish;
                        e.seg_len = 0;
                }
                if (cp == SPACE_CP && k == 1)
                        r = seg_append(&e, SPACE_SYMBOL, SPACE_SYMBOL_LEN);
                else
                        r = seg_append(&e, text + pos, k);
                if (r < 0)
                        goto finish;
                prev_cp = cp;
                have_prev = true;
                pos += k;
        }
        r = encode_segment(&e);

finish:
        free(e.seg);
        free(e.len);
        free(e.heap);
        free(e.rev_left);
        if (r < 0) {
                free(e.ids);
                return r;
        }
        if (e.n_ids < e.ids_cap) {
                int32_t *q = realloc(e.ids, (e.n_ids ? e.n_ids : 1) * sizeof(*e.ids));
                if (q)
                        e.ids = q;
        }
        *ret_ids = e.ids;
        *ret_n = e.n_ids;
        return 0;
}

/* ---------------------------------------------------------------- decode */

void detok_init(Detokenizer *d, const Tokenizer *t, int strip_leading_space) {
        *d = (Detokenizer){
                .tok = t,
                .at_start = 1,
                .strip_leading_space = strip_leading_space && t->add_space_prefix,
        };
}

/* Pending bytes can never complete: each becomes U+FFFD (SentencePiece's byte decoding). */
static int flush_pending(Detokenizer *d, char *out) {
        int w = 0;
        for (int i = 0; i < d->n_pending; i++, w += REPLACEMENT_LEN)
                memcpy(out + w, REPLACEMENT, REPLACEMENT_LEN);
        d->n_pending = 0;
        return w;
}

static int push_byte(Detokenizer *d, uint8_t b, char *out) {
        int w = 0;
        unsigned need;

        if (d->n_pending > 0) {
                uint8_t lead = d->pending[0];
                bool ok = d->n_pending == 1 ? utf8_second_ok(lead, b) : (b & 0xc0) == 0x80;
                if (ok) {
                        d->pending[d->n_pending++] = b;
                        if ((unsigned)d->n_pending < utf8_need(lead))
                                return 0;
                        memcpy(out, d->pending, (size_t)d->n_pending);
                        w = d->n_pending;
                        d->n_pending = 0;
                        return w;
                }
                /* The held lead cannot start a valid character: it and its continuation bytes
                 * become U+FFFD each; b starts afresh. */
                w = flush_pending(d, out);
        }
        need = utf8_need(b);
        if (need == 1) {
                out[w++] = (char)b;
        } else if (need == 0) {
                memcpy(out + w, REPLACEMENT, REPLACEMENT_LEN);
                w += REPLACEMENT_LEN;
        } else {
                d->pending[0] = b;
                d->n_pending = 1;
        }
        return w;
}

int detok_push(Detokenizer *d, int32_t id, char *out) {
        const Tokenizer *t = d->tok;
        const TokenEntry *e;
        const char *p;
        size_t n;
        int w;

        if (id < 0 || (uint32_t)id >= t->n_vocab)
                return -EINVAL;
        e = &t->tokens[id];
        if (e->type == TOKEN_TYPE_BYTE) {
                d->at_start = 0;
                return push_byte(d, (uint8_t)e->aux, out);
        }
        w = flush_pending(d, out);
        if (e->type == TOKEN_TYPE_CONTROL)
                return w;
        if (e->type == TOKEN_TYPE_UNKNOWN) {
                d->at_start = 0;
                memcpy(out + w, UNK_SURFACE, UNK_SURFACE_LEN);
                return w + UNK_SURFACE_LEN;
        }

        p = t->blob + e->offset;
        n = e->len;
        if (d->at_start && d->strip_leading_space && n >= SPACE_SYMBOL_LEN &&
            memcmp(p, SPACE_SYMBOL, SPACE_SYMBOL_LEN) == 0) {
                p += SPACE_SYMBOL_LEN;
                n -= SPACE_SYMBOL_LEN;
        }
        d->at_start = 0;
        for (size_t i = 0; i < n;) {
                if (n - i >= SPACE_SYMBOL_LEN && memcmp(p + i, SPACE_SYMBOL, SPACE_SYMBOL_LEN) == 0) {
                        out[w++] = ' ';
                        i += SPACE_SYMBOL_LEN;
                } else {
                        out[w++] = p[i++];
                }
        }
        return w;
}

int detok_flush(Detokenizer *d, char *out) {
        return flush_pending(d, out);
}

int tokenizer_decode(const Tokenizer *t, const int32_t *ids, size_t n, int strip_leading_space,
                     char **ret_text, size_t *ret_len) {
        Detokenizer d;
        char *buf = NULL;
        size_t len = 0, cap = 0;
        int r;

        if (!t || (!ids && n > 0) || !ret_text)
                return -EINVAL;
        detok_init(&d, t, strip_leading_space);
        for (size_t i = 0; i <= n; i++) {
                r = grow((void **)&buf, &cap, len + DETOK_MAX_OUT + 1, 1);
                if (r < 0)
                        goto fail;
                r = i < n ? detok_push(&d, ids[i], buf + len) : detok_flush(&d, buf + len);
                if (r < 0)
                        goto fail;
                len += (size_t)r;
        }
        buf[len] = '\0';
        *ret_text = buf;
        if (ret_len)
                *ret_len = len;
        return 0;

fail:
        free(buf);
        return r;
}
