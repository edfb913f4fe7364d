/* tests/fuzz/fuzz_tokenizer.c — libFuzzer target for engine/tokenizer.c. The vocabulary comes
 * from the GGUF at $MIXD_FUZZ_MODEL, loaded once. Each input is tokenized as text; the result
 * must agree with an independent UTF-8 check (-EILSEQ exactly for invalid input), and for valid
 * input the ids must decode back to the text (with "▁" read as a space, as SentencePiece
 * does), both whole and streamed one id at a time; invalid input is also repaired ('?' for
 * each bad byte) and checked as text. The same bytes are then decoded as a sequence of ids,
 * whose text must always be valid UTF-8. Any mismatch aborts. Seeds: the texts of
 * mistral-v1-tokenizer-vectors.jsonl, one file each.
 * Build (from the repository root):
 *   clang -std=gnu17 -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
 *         -Iengine tests/fuzz/fuzz_tokenizer.c engine/tokenizer.c engine/gguf.c engine/quant.c \
 *         -lm -o build/fuzz/fuzz_tokenizer
 * Run: MIXD_FUZZ_MODEL=../shared/fixtures/tiny-moe-shakespeare/tiny-moe-f16.gguf \
 *        build/fuzz/fuzz_tokenizer -max_len=4096 CORPUS_DIR SEED_DIR */
#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gguf.h"
#include "tokenizer.h"

static Tokenizer *tok;

#define CHECK(cond)                                                                            \
        do {                                                                                   \
                if (!(cond)) {                                                                 \
                        fprintf(stderr, "fuzz_tokenizer: check failed at line %d: %s\n",       \
                                __LINE__, #cond);                                              \
                        abort();                                                               \
                }                                                                              \
        } while (0)

int LLVMFuzzerInitialize(int *argc, char ***argv) {
        const char *path = getenv("MIXD_FUZZ_MODEL");
        GGUFError err = { "" };
        GGUFFile *f = NULL;
        int r;

        if (!path || !*path) {
                fprintf(stderr, "fuzz_tokenizer: set MIXD_FUZZ_MODEL to a GGUF file with a llama vocabulary\n");
                abort();
        }
        r = gguf_open(path, &err, &f);
        if (r < 0) {
                fprintf(stderr, "fuzz_tokenizer: %s: %s (%s)\n", path, err.msg, strerror(-r));
                abort();
        }
        r = tokenizer_load(f, &tok);
        gguf_close(f);
        if (r < 0) {
                fprintf(stderr, "fuzz_tokenizer: %s: tokenizer_load: %s\n", path, strerror(-r));
                abort();
        }
        return 0;
}

/* Length of the valid UTF-8 character at s[0..n), 0 if there is none. Written independently
 * of the tokenizer's check: decode, then require the code point to be in range for its length
 * and not a surrogate. */
static size_t char_len(const uint8_t *s, size_t n) {
        uint8_t c = s[0];
        size_t len;
        uint32_t cp, min;
        if (c < 0x80)
                return 1;
        if ((c & 0xe0) == 0xc0)
                len = 2, cp = c & 0x1f, min = 0x80;
        else if ((c & 0xf0) == 0xe0)
                len = 3, cp = c & 0x0f, min = 0x800;
        else if ((c & 0xf8) == 0xf0)
                len = 4, cp = c & 0x07, min = 0x10000;
        else
                return 0;
        if (n < len)
                return 0;
        for (size_t k = 1; k < len; k++) {
                if ((s[k] & 0xc0) != 0x80)
                        return 0;
                cp = cp << 6 | (s[k] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
                return 0;
        return len;
}

static bool valid_utf8(const uint8_t *s, size_t n) {
        for (size_t i = 0, k; i < n; i += k)
                if ((k = char_len(s + i, n - i)) == 0)
                        return false;
        return true;
}

/* The input with each byte that starts no valid character replaced by '?': most fuzzed
 * inputs are not UTF-8, this way every one also exercises the encoder. */
static uint8_t *repaired(const uint8_t *s, size_t n) {
        uint8_t *out = malloc(n ? n : 1);
        CHECK(out);
        for (size_t i = 0; i < n;) {
                size_t k = char_len(s + i, n - i);
                if (k == 0) {
                        out[i++] = '?';
                        continue;
                }
                memcpy(out + i, s + i, k);
                i += k;
        }
        return out;
}

/* The text SentencePiece gives back: every U+2581 becomes a space. */
static char *expected_text(const uint8_t *s, size_t n, size_t *ret_len) {
        char *out = malloc(n + 1);
        size_t len = 0;
        CHECK(out);
        for (size_t i = 0; i < n;) {
                if (n - i >= 3 && s[i] == 0xe2 && s[i + 1] == 0x96 && s[i + 2] == 0x81) {
                        out[len++] = ' ';
                        i += 3;
                } else {
                        out[len++] = (char)s[i++];
                }
        }
        *ret_len = len;
        return out;
}

static void check_text(const uint8_t *data, size_t size) {
        bool valid = valid_utf8(data, size);
        int32_t *ids = NULL, *ids_nobos = NULL;
        size_t n = 0, n_nobos = 0, want_len = 0, got_len = 0, len = 0;
        char *want, *got = NULL, *streamed;
        Detokenizer d;
        int r;

        r = tokenizer_encode(tok, (const char *)data, size, 1, &ids, &n);
        if (!valid) {
                CHECK(r == -EILSEQ);
                return;
        }
        CHECK(r == 0);
        CHECK(n >= 1 && ids[0] == tokenizer_bos(tok));
        CHECK(n <= size + 4);
        for (size_t i = 1; i < n; i++) {
                int type = tokenizer_token_type(tok, ids[i]);
                CHECK(type > 0 && type != TOKEN_TYPE_CONTROL);
        }

        /* Without BOS: the same ids. */
        r = tokenizer_encode(tok, (const char *)data, size, 0, &ids_nobos, &n_nobos);
        CHECK(r == 0 && n_nobos == n - 1);
        CHECK(n_nobos == 0 || memcmp(ids_nobos, ids + 1, n_nobos * sizeof(*ids)) == 0);
        free(ids_nobos);

        want = expected_text(data, size, &want_len);
        r = tokenizer_decode(tok, ids, n, 1, &got, &got_len);
        CHECK(r == 0);
        CHECK(got_len == want_len && memcmp(got, want, want_len) == 0);

        streamed = malloc(n * DETOK_MAX_OUT + 16);
        CHECK(streamed);
        detok_init(&d, tok, 1);
        for (size_t i = 0; i < n; i++) {
                r = detok_push(&d, ids[i], streamed + len);
                CHECK(r >= 0 && r <= DETOK_MAX_OUT);
                len += (size_t)r;
        }
        r = detok_flush(&d, streamed + len);
        CHECK(r == 0); /* a whole text never leaves bytes pending */
        CHECK(len == want_len && memcmp(streamed, want, want_len) == 0);

        free(streamed);
        free(got);
        free(want);
        free(ids);
}

/* The bytes as little-endian 16-bit ids (the top bit set: an id taken modulo 2^15 + the
 * vocabulary size, so that some are out of range). The output is always valid UTF-8. */
static void check_ids(const uint8_t *data, size_t size) {
        uint32_t nv = tokenizer_n_vocab(tok);
        size_t n = size / 2, len = 0;
        char *out = malloc(n * DETOK_MAX_OUT + 16);
        Detokenizer d;
        int r;

        CHECK(out);
        detok_init(&d, tok, data[0] & 1);
        for (size_t i = 0; i < n; i++) {
                uint32_t v = (uint32_t)data[2 * i] | (uint32_t)data[2 * i + 1] << 8;
                int32_t id = (int32_t)(v % (nv + 64));
                r = detok_push(&d, id, out + len);
                if ((uint32_t)id >= nv) {
                        CHECK(r == -EINVAL);
                        continue;
                }
                CHECK(r >= 0 && r <= DETOK_MAX_OUT);
                len += (size_t)r;
        }
        r = detok_flush(&d, out + len);
        CHECK(r >= 0 && r <= 12);
        len += (size_t)r;
        CHECK(valid_utf8((const uint8_t *)out, len));
        free(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        check_text(data, size);
        if (!valid_utf8(data, size)) {
                uint8_t *fixed = repaired(data, size);
                CHECK(valid_utf8(fixed, size));
                check_text(fixed, size);
                free(fixed);
        }
        if (size >= 2)
                check_ids(data, size);
        return 0;
}
