/* tests/unit/test_tokenizer.c — engine/tokenizer.c against the real SentencePiece: every
 * vector of mistral-v1-tokenizer-vectors.jsonl with the fixture model's vocabulary, an
 * independent naive BPE on longer texts, decode round trips, UTF-8 rejection, streaming of
 * byte tokens, and metadata validation on small synthetic GGUF vocabularies.
 * Single-threaded cmocka test; run from the repository root. */
#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "gguf.h"
#include "tokenizer.h"

/* ---------------------------------------------------------------------------------------
 * Fixtures: $FIXTURES or ../shared/fixtures (relative to the repository root). A missing
 * fixture fails the test when CI=true and skips it loudly otherwise. */

#define MODEL_FIXTURE   "tiny-moe-shakespeare/tiny-moe-f16.gguf"
#define VECTORS_FIXTURE "mistral-v1-tokenizer-vectors.jsonl"

static const char *fixture_dir(void) {
        const char *d = getenv("FIXTURES");
        return d && *d ? d : "../shared/fixtures";
}

static int in_ci(void) {
        const char *ci = getenv("CI");
        return ci && strcmp(ci, "true") == 0;
}

typedef struct Vector {
        char *text;           /* NUL-terminated, may contain NULs: use len */
        size_t len;
        int32_t *ids;
        size_t n_ids;
        char **pieces;        /* [n_pieces], NUL-terminated */
        size_t n_pieces;
} Vector;

static Tokenizer *g_tok;
static Vector *g_vec;
static size_t g_n_vec;
static bool g_loaded;        /* load attempted */
static bool g_missing;       /* a fixture file is absent */

/* ---------------------------------------------------------------------------------------
 * A small JSON reader for one vector line: {"text": "...", "ids": [...], "pieces": [...]};
 * other keys are skipped. Strings decode every escape including \uXXXX surrogate pairs. */

typedef struct Json {
        const char *p, *end;
} Json;

static void json_ws(Json *j) {
        while (j->p < j->end && (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r'))
                j->p++;
}

static bool json_eat(Json *j, char c) {
        json_ws(j);
        if (j->p < j->end && *j->p == c) {
                j->p++;
                return true;
        }
        return false;
}

static size_t put_utf8(uint32_t cp, char *out) {
        if (cp < 0x80) {
                out[0] = (char)cp;
                return 1;
        }
        if (cp < 0x800) {
                out[0] = (char)(0xc0 | cp >> 6);
                out[1] = (char)(0x80 | (cp & 0x3f));
                return 2;
        }
        if (cp < 0x10000) {
                out[0] = (char)(0xe0 | cp >> 12);
                out[1] = (char)(0x80 | (cp >> 6 & 0x3f));
                out[2] = (char)(0x80 | (cp & 0x3f));
                return 3;
        }
        out[0] = (char)(0xf0 | cp >> 18);
        out[1] = (char)(0x80 | (cp >> 12 & 0x3f));
        out[2] = (char)(0x80 | (cp >> 6 & 0x3f));
        out[3] = (char)(0x80 | (cp & 0x3f));
        return 4;
}

static int json_hex4(Json *j, uint32_t *ret) {
        uint32_t v = 0;
        if (j->end - j->p < 4)
                return -1;
        for (int i = 0; i < 4; i++) {
                char c = *j->p++;
                v <<= 4;
                if (c >= '0' && c <= '9')
                        v |= (uint32_t)(c - '0');
                else if (c >= 'a' && c <= 'f')
                        v |= (uint32_t)(c - 'a' + 10);
                else if (c >= 'A' && c <= 'F')
                        v |= (uint32_t)(c - 'A' + 10);
                else
                        return -1;
        }
        *ret = v;
        return 0;
}

/* Parses a string into a malloc'd NUL-terminated buffer (the decoded text is never longer
 * than its JSON form). */
static int json_string(Json *j, char **ret, size_t *ret_len) {
        char *out;
        size_t n = 0;

        if (!json_eat(j, '"'))
                return -1;
        out = malloc((size_t)(j->end - j->p) + 1);
        if (!out)
                return -1;
        while (j->p < j->end && *j->p != '"') {
                unsigned char c = (unsigned char)*j->p++;
                uint32_t cp, lo;

                if (c < 0x20)
                        goto bad;
                if (c != '\\') {
                        out[n++] = (char)c;
                        continue;
                }
                if (j->p >= j->end)
                        goto bad;
                switch (*j->p++) {
                case '"': out[n++] = '"'; break;
                case '\\': out[n++] = '\\'; break;
                case '/': out[n++] = '/'; break;
                case 'b': out[n++] = '\b'; break;
                case 'f': out[n++] = '\f'; break;
                case 'n': out[n++] = '\n'; break;
                case 'r': out[n++] = '\r'; break;
                case 't': out[n++] = '\t'; break;
                case 'u':
                        if (json_hex4(j, &cp) < 0)
                                goto bad;
                        if (cp >= 0xdc00 && cp <= 0xdfff)
                                goto bad; /* lone low surrogate */
                        if (cp >= 0xd800 && cp <= 0xdbff) {
                                if (j->end - j->p < 2 || j->p[0] != '\\' || j->p[1] != 'u')
                                        goto bad;
                                j->p += 2;
                                if (json_hex4(j, &lo) < 0 || lo < 0xdc00 || lo > 0xdfff)
                                        goto bad;
                                cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
                        }
                        n += put_utf8(cp, out + n);
                        break;
                default:
                        goto bad;
                }
        }
        if (!json_eat(j, '"'))
                goto bad;
        out[n] = '\0';
        *ret = out;
        *ret_len = n;
        return 0;
bad:
        free(out);
        return -1;
}

static int json_int(Json *j, int64_t *ret) {
        int64_t v = 0;
        bool neg = false, any = false;
        json_ws(j);
        if (j->p < j->end && *j->p == '-') {
                neg = true;
                j->p++;
        }
        while (j->p < j->end && *j->p >= '0' && *j->p <= '9') {
                if (v > (INT64_MAX - 9) / 10)
                        return -1;
                v = v * 10 + (*j->p++ - '0');
                any = true;
        }
        if (!any)
                return -1;
        *ret = neg ? -v : v;
        return 0;
}

/* Skips any value (strings, numbers, literals, arrays, objects). */
static int json_skip(Json *j, int depth) {
        json_ws(j);
        if (j->p >= j->end || depth > 64)
                return -1;
        if (*j->p == '"') {
                char *s;
                size_t n;
                if (json_string(j, &s, &n) < 0)
                        return -1;
                free(s);
                return 0;
        }
        if (*j->p == '[' || *j->p == '{') {
                char close = *j->p == '[' ? ']' : '}';
                bool obj = *j->p == '{';
                j->p++;
                if (json_eat(j, close))
                        return 0;
                do {
                        if (obj) {
                                char *k;
                                size_t kn;
                                if (json_string(j, &k, &kn) < 0)
                                        return -1;
                                free(k);
                                if (!json_eat(j, ':'))
                                        return -1;
                        }
                        if (json_skip(j, depth + 1) < 0)
                                return -1;
                } while (json_eat(j, ','));
                return json_eat(j, close) ? 0 : -1;
        }
        while (j->p < j->end && strchr("+-.0123456789eEtruefalsn", *j->p))
                j->p++;
        return 0;
}

static void vector_clear(Vector *v) {
        free(v->text);
        free(v->ids);
        for (size_t i = 0; i < v->n_pieces; i++)
                free(v->pieces[i]);
        free(v->pieces);
        memset(v, 0, sizeof(*v));
}

static int parse_vector(const char *line, size_t len, Vector *v) {
        Json j = { line, line + len };
        bool have_text = false, have_ids = false;

        memset(v, 0, sizeof(*v));
        if (!json_eat(&j, '{'))
                return -1;
        do {
                char *key;
                size_t kn;
                if (json_string(&j, &key, &kn) < 0)
                        goto bad;
                if (!json_eat(&j, ':')) {
                        free(key);
                        goto bad;
                }
                if (strcmp(key, "text") == 0) {
                        free(key);
                        if (have_text || json_string(&j, &v->text, &v->len) < 0)
                                goto bad;
                        have_text = true;
                } else if (strcmp(key, "ids") == 0) {
                        free(key);
                        if (have_ids || !json_eat(&j, '['))
                                goto bad;
                        have_ids = true;
                        if (json_eat(&j, ']'))
                                continue;
                        do {
                                int64_t x;
                                int32_t *q;
                                if (json_int(&j, &x) < 0 || x < 0 || x > INT32_MAX)
                                        goto bad;
                                q = realloc(v->ids, (v->n_ids + 1) * sizeof(*q));
                                if (!q)
                                        goto bad;
                                v->ids = q;
                                v->ids[v->n_ids++] = (int32_t)x;
                        } while (json_eat(&j, ','));
                        if (!json_eat(&j, ']'))
                                goto bad;
                } else if (strcmp(key, "pieces") == 0) {
                        free(key);
                        if (!json_eat(&j, '['))
                                goto bad;
                        if (json_eat(&j, ']'))
                                continue;
                        do {
                                char *s, **q;
                                size_t sn;
                                if (json_string(&j, &s, &sn) < 0)
                                        goto bad;
                                q = realloc(v->pieces, (v->n_pieces + 1) * sizeof(*q));
                                if (!q) {
                                        free(s);
                                        goto bad;
                                }
                                v->pieces = q;
                                v->pieces[v->n_pieces++] = s;
                        } while (json_eat(&j, ','));
                        if (!json_eat(&j, ']'))
                                goto bad;
                } else {
                        free(key);
                        if (json_skip(&j, 0) < 0)
                                goto bad;
                }
        } while (json_eat(&j, ','));
        if (!json_eat(&j, '}') || !have_text || !have_ids)
                goto bad;
        json_ws(&j);
        if (j.p != j.end)
                goto bad;
        return 0;
bad:
        vector_clear(v);
        return -1;
}

/* Loads the model's vocabulary and the vectors once. Returns false when they are missing
 * (after failing the test in CI, or printing a loud skip notice). */
static bool fixtures(void) {
        char path[4096];
        FILE *fp;
        char *line = NULL;
        size_t cap = 0;
        ssize_t n;
        GGUFFile *f = NULL;
        GGUFError err = { "" };
        int r;

        if (!g_loaded) {
                g_loaded = true;
                snprintf(path, sizeof(path), "%s/%s", fixture_dir(), MODEL_FIXTURE);
                r = gguf_open(path, &err, &f);
                if (r == -ENOENT) {
                        g_missing = true;
                        fprintf(stderr, "\n!!!!! %s missing (FIXTURES=%s)\n", path, fixture_dir());
                } else {
                        if (r < 0)
                                fprintf(stderr, "gguf_open(%s): %s\n", path, err.msg);
                        assert_int_equal(r, 0);
                        r = tokenizer_load(f, &g_tok);
                        f = gguf_close(f);
                        assert_int_equal(r, 0);
                }

                snprintf(path, sizeof(path), "%s/%s", fixture_dir(), VECTORS_FIXTURE);
                fp = fopen(path, "re");
                if (!fp) {
                        g_missing = true;
                        fprintf(stderr, "\n!!!!! %s missing (FIXTURES=%s)\n", path, fixture_dir());
                } else {
                        unsigned lineno = 0;
                        while ((n = getline(&line, &cap, fp)) >= 0) {
                                Vector *q;
                                lineno++;
                                while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
                                        n--;
                                if (n == 0)
                                        continue;
                                q = realloc(g_vec, (g_n_vec + 1) * sizeof(*q));
                                assert_non_null(q);
                                g_vec = q;
                                if (parse_vector(line, (size_t)n, &g_vec[g_n_vec]) < 0)
                                        fail_msg("%s:%u: cannot parse the vector", path, lineno);
                                g_n_vec++;
                        }
                        free(line);
                        fclose(fp);
                }
        }
        if (g_missing) {
                if (in_ci())
                        fail_msg("tokenizer fixtures missing under %s and CI=true", fixture_dir());
                fprintf(stderr, "!!!!! SKIPPING: tokenizer fixtures missing under %s !!!!!\n", fixture_dir());
                skip();
        }
        return !g_missing;
}

static int teardown_all(void **state) {
        for (size_t i = 0; i < g_n_vec; i++)
                vector_clear(&g_vec[i]);
        free(g_vec);
        g_tok = tokenizer_free(g_tok);
        return 0;
}

/* ---------------------------------------------------------------------------------------
 * Helpers */

static void hexdump(const char *what, const char *s, size_t n) {
        fprintf(stderr, "%s (%zu bytes):", what, n);
        for (size_t i = 0; i < n && i < 200; i++)
                fprintf(stderr, " %02x", (uint8_t)s[i]);
        fprintf(stderr, "%s\n", n > 200 ? " ..." : "");
}

static void print_ids(const char *what, const int32_t *ids, size_t n) {
        fprintf(stderr, "%s (%zu):", what, n);
        for (size_t i = 0; i < n && i < 64; i++)
                fprintf(stderr, " %d", ids[i]);
        fprintf(stderr, "%s\n", n > 64 ? " ..." : "");
}

/* Decodes ids one at a time through a Detokenizer into a malloc'd buffer. */
static char *stream_decode(const Tokenizer *t, const int32_t *ids, size_t n, int strip, size_t *ret_len) {
        Detokenizer d;
        size_t cap = 4096, len = 0;
        char *out = malloc(cap);
        int r;

        assert_non_null(out);
        detok_init(&d, t, strip);
        for (size_t i = 0; i < n; i++) {
                if (len + DETOK_MAX_OUT + 16 > cap) {
                        cap *= 2;
                        out = realloc(out, cap);
                        assert_non_null(out);
                }
                r = detok_push(&d, ids[i], out + len);
                assert_true(r >= 0 && r <= DETOK_MAX_OUT);
                len += (size_t)r;
        }
        r = detok_flush(&d, out + len);
        assert_true(r >= 0 && r <= 12);
        len += (size_t)r;
        out[len] = '\0';
        *ret_len = len;
        return out;
}

static void check_roundtrip(const Tokenizer *t, const char *text, size_t len) {
        int32_t *ids = NULL;
        size_t n = 0, dlen = 0;
        char *dec, *dec2 = NULL;
        size_t dlen2 = 0;

        assert_int_equal(tokenizer_encode(t, text, len, 1, &ids, &n), 0);
        dec = stream_decode(t, ids, n, 1, &dlen);
        if (dlen != len || memcmp(dec, text, len) != 0) {
                hexdump("text   ", text, len);
                hexdump("decoded", dec, dlen);
                fail_msg("round trip mismatch");
        }
        assert_int_equal(tokenizer_decode(t, ids, n, 1, &dec2, &dlen2), 0);
        assert_int_equal(dlen2, len);
        assert_memory_equal(dec2, text, len);
        assert_int_equal(dec2[dlen2], '\0');
        free(dec2);
        free(dec);
        free(ids);
}

/* ---------------------------------------------------------------------------------------
 * Vectors from the real SentencePiece */

static void test_vectors(void **state) {
        size_t passed = 0;

        if (!fixtures())
                return;
        assert_true(g_n_vec > 0);
        assert_int_equal(tokenizer_n_vocab(g_tok), 32000);
        assert_int_equal(tokenizer_bos(g_tok), 1);
        assert_int_equal(tokenizer_eos(g_tok), 2);
        assert_int_equal(tokenizer_unk(g_tok), 0);
        assert_int_equal(tokenizer_add_bos_default(g_tok), 1);

        for (size_t i = 0; i < g_n_vec; i++) {
                const Vector *v = &g_vec[i];
                int32_t *ids = NULL;
                size_t n = 0;
                bool ok;
                int r = tokenizer_encode(g_tok, v->text, v->len, 0, &ids, &n);

                ok = r == 0 && n == v->n_ids && (n == 0 || memcmp(ids, v->ids, n * sizeof(*ids)) == 0);
                /* The pieces named in the vector are the vocabulary's pieces of those ids. */
                for (size_t k = 0; ok && k < v->n_pieces && k < n; k++) {
                        size_t pl = 0;
                        const char *p = tokenizer_piece(g_tok, ids[k], &pl);
                        ok = p && pl == strlen(v->pieces[k]) && memcmp(p, v->pieces[k], pl) == 0;
                }
                if (!ok) {
                        fprintf(stderr, "vector %zu failed (r=%d)\n", i + 1, r);
                        hexdump("text", v->text, v->len);
                        print_ids("want", v->ids, v->n_ids);
                        if (r == 0)
                                print_ids("got ", ids, n);
                } else {
                        passed++;
                }
                free(ids);

                /* Same with BOS. */
                r = tokenizer_encode(g_tok, v->text, v->len, 1, &ids, &n);
                assert_int_equal(r, 0);
                assert_int_equal(n, v->n_ids + 1);
                assert_int_equal(ids[0], 1);
                if (v->n_ids > 0)
                        assert_memory_equal(ids + 1, v->ids, v->n_ids * sizeof(*ids));
                free(ids);
        }
        fprintf(stderr, "tokenizer vectors: %zu/%zu pass\n", passed, g_n_vec);
        assert_int_equal(passed, g_n_vec);
}

static void test_vectors_roundtrip(void **state) {
        int32_t *a = NULL, *b = NULL;
        size_t na = 0, nb = 0;

        if (!fixtures())
                return;
        for (size_t i = 0; i < g_n_vec; i++)
                check_roundtrip(g_tok, g_vec[i].text, g_vec[i].len);

        /* A literal "▁" in the text is a space to SentencePiece (so it decodes as one). */
        assert_int_equal(tokenizer_encode(g_tok, "Hello world", 11, 0, &a, &na), 0);
        assert_int_equal(tokenizer_encode(g_tok, "Hello\xe2\x96\x81world", 13, 0, &b, &nb), 0);
        assert_int_equal(na, nb);
        assert_memory_equal(a, b, na * sizeof(*a));
        free(a);
        free(b);
}

static void test_empty(void **state) {
        int32_t *ids = NULL;
        size_t n = 99;

        if (!fixtures())
                return;
        assert_int_equal(tokenizer_encode(g_tok, "", 0, 0, &ids, &n), 0);
        assert_non_null(ids);
        assert_int_equal(n, 0);
        free(ids);
        assert_int_equal(tokenizer_encode(g_tok, NULL, 0, 1, &ids, &n), 0);
        assert_int_equal(n, 1);
        assert_int_equal(ids[0], tokenizer_bos(g_tok));
        free(ids);
}

/* Special tokens are never parsed from text. */
static void test_special_as_text(void **state) {
        static const int32_t want_s[] = { 523, 28713, 28767 }; /* "▁<" "s" ">" */
        static const char *texts[] = { "<s>", "</s>", "<unk>", "<0x0A>", "<s><s></s>", "[INST]<s>" };
        int32_t *ids = NULL;
        size_t n = 0;

        if (!fixtures())
                return;
        assert_int_equal(tokenizer_encode(g_tok, "<s>", 3, 0, &ids, &n), 0);
        assert_int_equal(n, 3);
        assert_memory_equal(ids, want_s, sizeof(want_s));
        free(ids);
        for (size_t k = 0; k < sizeof(texts) / sizeof(texts[0]); k++) {
                assert_int_equal(tokenizer_encode(g_tok, texts[k], strlen(texts[k]), 0, &ids, &n), 0);
                for (size_t i = 0; i < n; i++)
                        assert_int_equal(tokenizer_token_type(g_tok, ids[i]), TOKEN_TYPE_NORMAL);
                free(ids);
                check_roundtrip(g_tok, texts[k], strlen(texts[k]));
        }
}

static void test_invalid_utf8(void **state) {
        static const struct {
                const char *s;
                size_t n;
        } bad[] = {
                { "\x80", 1 },                   /* lone continuation */
                { "abc\xbf", 4 },
                { "\xc0\x80", 2 },               /* overlong NUL */
                { "\xc1\xbf", 2 },               /* overlong */
                { "\xe0\x80\x80", 3 },           /* overlong 3-byte */
                { "\xe0\x9f\xbf", 3 },           /* overlong U+07FF */
                { "\xf0\x80\x80\x80", 4 },       /* overlong 4-byte */
                { "\xf0\x8f\xbf\xbf", 4 },       /* overlong U+FFFF */
                { "\xed\xa0\x80", 3 },           /* U+D800 */
                { "\xed\xbf\xbf", 3 },           /* U+DFFF */
                { "\xed\xa0\xbd\xed\xb8\x80", 6 }, /* CESU-8 surrogate pair */
                { "\xf4\x90\x80\x80", 4 },       /* U+110000 */
                { "\xf5\x80\x80\x80", 4 },
                { "\xf8\x88\x80\x80\x80", 5 },   /* 5-byte form */
                { "\xfe", 1 },
                { "\xff", 1 },
                { "\xe2\x82", 2 },               /* truncated */
                { "Hello \xe2", 7 },             /* truncated at the end */
                { "\xf0\x9f\x98", 3 },
                { "\xc3", 1 },
                { "\xc3(", 2 },                  /* bad continuation */
                { "\xe2\x28\xa1", 3 },
                { "\xf0\x9f\x98\x28", 4 },
        };
        static const struct {
                const char *s;
                size_t n;
        } good[] = {
                { "\xc2\x80", 2 },               /* U+0080 */
                { "\xdf\xbf", 2 },               /* U+07FF */
                { "\xe0\xa0\x80", 3 },           /* U+0800 */
                { "\xed\x9f\xbf", 3 },           /* U+D7FF */
                { "\xee\x80\x80", 3 },           /* U+E000 */
                { "\xef\xbf\xbd", 3 },           /* U+FFFD */
                { "\xef\xbf\xbf", 3 },           /* U+FFFF */
                { "\xf0\x90\x80\x80", 4 },       /* U+10000 */
                { "\xf4\x8f\xbf\xbf", 4 },       /* U+10FFFF */
                { "a\0b", 3 },                   /* NUL is a character */
        };
        int32_t *ids = (int32_t *)(uintptr_t)0x1;
        size_t n = 12345;

        if (!fixtures())
                return;
        for (size_t k = 0; k < sizeof(bad) / sizeof(bad[0]); k++) {
                int r = tokenizer_encode(g_tok, bad[k].s, bad[k].n, 1, &ids, &n);
                if (r != -EILSEQ)
                        hexdump("accepted invalid UTF-8", bad[k].s, bad[k].n);
                assert_int_equal(r, -EILSEQ);
                assert_ptr_equal(ids, (int32_t *)(uintptr_t)0x1); /* untouched on failure */
                assert_int_equal(n, 12345);
        }
        for (size_t k = 0; k < sizeof(good) / sizeof(good[0]); k++) {
                int r = tokenizer_encode(g_tok, good[k].s, good[k].n, 0, &ids, &n);
                if (r != 0)
                        hexdump("rejected valid UTF-8", good[k].s, good[k].n);
                assert_int_equal(r, 0);
                free(ids);
                ids = (int32_t *)(uintptr_t)0x1;
                check_roundtrip(g_tok, good[k].s, good[k].n);
        }
}

static void test_too_long(void **state) {
        int32_t *ids = NULL;
        size_t n = 0;

        if (!fixtures())
                return;
        /* The length is checked before the text is read. */
        assert_int_equal(tokenizer_encode(g_tok, "x", (size_t)TOKENIZER_MAX_INPUT + 1, 0, &ids, &n), -E2BIG);
}

/* ---------------------------------------------------------------------------------------
 * An independent, naive BPE (quadratic, no segmenting) to check the real one on longer
 * texts: same normalization, scan for the best adjacent pair each step. */

typedef struct RefPiece {
        const char *s;
        size_t n;
        int32_t id;
} RefPiece;

static RefPiece *g_ref;
static size_t g_n_ref;

static int ref_cmp(const void *a, const void *b) {
        const RefPiece *x = a, *y = b;
        size_t m = x->n < y->n ? x->n : y->n;
        int c = memcmp(x->s, y->s, m);
        if (c != 0)
                return c;
        return x->n < y->n ? -1 : x->n > y->n;
}

static int32_t ref_find(const char *s, size_t n) {
        RefPiece key = { s, n, -1 };
        const RefPiece *p;
        if (!g_ref) {
                g_n_ref = tokenizer_n_vocab(g_tok);
                g_ref = calloc(g_n_ref, sizeof(*g_ref));
                assert_non_null(g_ref);
                for (size_t i = 0; i < g_n_ref; i++) {
                        g_ref[i].s = tokenizer_piece(g_tok, (int32_t)i, &g_ref[i].n);
                        g_ref[i].id = (int32_t)i;
                }
                qsort(g_ref, g_n_ref, sizeof(*g_ref), ref_cmp);
        }
        p = bsearch(&key, g_ref, g_n_ref, sizeof(*g_ref), ref_cmp);
        return p ? p->id : -1;
}

/* Score of the merged piece of s[0..n) or -INFINITY when no NORMAL piece. */
static float ref_score(const char *s, size_t n, const float *scores) {
        int32_t id = ref_find(s, n);
        if (id < 0 || tokenizer_token_type(g_tok, id) != TOKEN_TYPE_NORMAL)
                return -INFINITY;
        return scores[id];
}

static void ref_encode(const char *text, size_t len, const float *scores, int32_t **ret_ids, size_t *ret_n) {
        char *norm = malloc(3 * len + 3);
        size_t nl = 0, m = 0, n_ids = 0;
        size_t *start, *slen;
        float *ps;
        int32_t *ids;

        assert_non_null(norm);
        memcpy(norm, "\xe2\x96\x81", 3);
        nl = 3;
        for (size_t i = 0; i < len; i++) {
                if (text[i] == ' ') {
                        memcpy(norm + nl, "\xe2\x96\x81", 3);
                        nl += 3;
                } else {
                        norm[nl++] = text[i];
                }
        }
        start = calloc(nl, sizeof(*start));
        slen = calloc(nl, sizeof(*slen));
        ps = calloc(nl, sizeof(*ps));
        ids = calloc(nl, sizeof(*ids));
        assert_true(start && slen && ps && ids);
        for (size_t i = 0; i < nl; m++) {
                uint8_t c = (uint8_t)norm[i];
                size_t k = c < 0x80 ? 1 : c < 0xe0 ? 2 : c < 0xf0 ? 3 : 4;
                start[m] = i;
                slen[m] = k;
                i += k;
        }
        for (size_t i = 0; i + 1 < m; i++)
                ps[i] = ref_score(norm + start[i], slen[i] + slen[i + 1], scores);
        for (;;) {
                size_t best = SIZE_MAX;
                for (size_t i = 0; i + 1 < m; i++)
                        if (ps[i] != -INFINITY && (best == SIZE_MAX || ps[i] > ps[best]))
                                best = i;
                if (best == SIZE_MAX)
                        break;
                slen[best] += slen[best + 1];
                memmove(start + best + 1, start + best + 2, (m - best - 2) * sizeof(*start));
                memmove(slen + best + 1, slen + best + 2, (m - best - 2) * sizeof(*slen));
                memmove(ps + best + 1, ps + best + 2, (m - best - 2) * sizeof(*ps));
                m--;
                if (best > 0)
                        ps[best - 1] = ref_score(norm + start[best - 1], slen[best - 1] + slen[best], scores);
                if (best + 1 < m)
                        ps[best] = ref_score(norm + start[best], slen[best] + slen[best + 1], scores);
        }
        for (size_t i = 0; i < m; i++) {
                int32_t id = ref_find(norm + start[i], slen[i]);
                if (id >= 0 && tokenizer_token_type(g_tok, id) != TOKEN_TYPE_UNKNOWN) {
                        ids[n_ids++] = id;
                        continue;
                }
                for (size_t k = 0; k < slen[i]; k++) {
                        char bp[8];
                        snprintf(bp, sizeof(bp), "<0x%02X>", (uint8_t)norm[start[i] + k]);
                        ids[n_ids++] = ref_find(bp, 6);
                }
        }
        free(start);
        free(slen);
        free(ps);
        free(norm);
        *ret_ids = ids;
        *ret_n = n_ids;
}

static uint64_t rng_next(uint64_t *s) {
        *s ^= *s << 13;
        *s ^= *s >> 7;
        *s ^= *s << 17;
        return *s;
}

/* Builds about `target` bytes from words of the vectors' texts, odd characters and runs of
 * whitespace; with `nospace` never a space (one long segment). */
static char *random_text(uint64_t *seed, size_t target, bool nospace, size_t *ret_len) {
        static const char *extra[] = {
                "\xc2\xa0", "\t", "\n", "\n\n", "\xf0\x9f\x98\x80", "\xe2\x88\xab",
                "\x01", "\xef\xbf\xbd", "\xe6\xb7\xb7", "ab", "aaaa", "\xe2\x80\x8b", "....", "0123",
        };
        char *out = malloc(target + 1024);
        size_t len = 0;

        assert_non_null(out);
        while (len < target) {
                uint64_t r = rng_next(seed);
                const char *w;
                size_t wn;
                if (r % 5 == 0) {
                        w = extra[(r >> 8) % (sizeof(extra) / sizeof(extra[0]))];
                        wn = strlen(w);
                } else {
                        /* A word of a vector: from a space to the next one. */
                        const Vector *v = &g_vec[(r >> 8) % g_n_vec];
                        size_t a, b;
                        if (v->len == 0)
                                continue;
                        a = (r >> 24) % v->len;
                        while (a > 0 && v->text[a - 1] != ' ')
                                a--;
                        b = a;
                        while (b < v->len && v->text[b] != ' ')
                                b++;
                        w = v->text + a;
                        wn = b - a;
                }
                assert_true(wn < 512);
                memcpy(out + len, w, wn);
                len += wn;
                if (!nospace) {
                        unsigned spaces = (r >> 40) % 7 == 0 ? (unsigned)((r >> 44) % 20) : 1;
                        for (unsigned k = 0; k < spaces; k++)
                                out[len++] = ' ';
                }
        }
        *ret_len = len;
        return out;
}

static void check_against_ref(const char *text, size_t len, const float *scores) {
        int32_t *ids = NULL, *want = NULL;
        size_t n = 0, n_want = 0;

        assert_int_equal(tokenizer_encode(g_tok, text, len, 0, &ids, &n), 0);
        ref_encode(text, len, scores, &want, &n_want);
        if (n != n_want || memcmp(ids, want, n * sizeof(*ids)) != 0) {
                size_t k = 0;
                while (k < n && k < n_want && ids[k] == want[k])
                        k++;
                fprintf(stderr, "differs from the naive BPE at id #%zu\n", k);
                print_ids("want", want + (k > 8 ? k - 8 : 0), n_want - (k > 8 ? k - 8 : 0));
                print_ids("got ", ids + (k > 8 ? k - 8 : 0), n - (k > 8 ? k - 8 : 0));
                fail();
        }
        free(ids);
        free(want);
}

static void test_against_naive_bpe(void **state) {
        uint64_t seed = 0x9e3779b97f4a7c15ull;
        float *scores;
        GGUFFile *f = NULL;
        char path[4096];
        const void *raw;
        uint64_t nraw;

        if (!fixtures())
                return;
        /* Scores straight from the file (the Tokenizer does not expose them). */
        snprintf(path, sizeof(path), "%s/%s", fixture_dir(), MODEL_FIXTURE);
        assert_int_equal(gguf_open(path, NULL, &f), 0);
        assert_int_equal(gguf_get_array(f, "tokenizer.ggml.scores", GGUF_TYPE_FLOAT32, &raw, &nraw), 0);
        assert_int_equal(nraw, tokenizer_n_vocab(g_tok));
        scores = malloc(nraw * sizeof(*scores));
        assert_non_null(scores);
        memcpy(scores, raw, nraw * sizeof(*scores)); /* little-endian host */
        gguf_close(f);

        for (int round = 0; round < 6; round++) {
                size_t len;
                char *text = random_text(&seed, round < 4 ? 12000 : 6000, round >= 4, &len);
                check_against_ref(text, len, scores);
                check_roundtrip(g_tok, text, len);
                free(text);
        }
        /* Long runs with every pair in the vocabulary: one segment. */
        {
                static const char *runs[] = { "a", "ab", " ", "1", "\xe6\xb7\xb7" };
                for (size_t k = 0; k < sizeof(runs) / sizeof(runs[0]); k++) {
                        size_t wn = strlen(runs[k]), len = 0;
                        char *text = malloc(6000 + wn);
                        assert_non_null(text);
                        while (len < 6000) {
                                memcpy(text + len, runs[k], wn);
                                len += wn;
                        }
                        check_against_ref(text, len, scores);
                        check_roundtrip(g_tok, text, len);
                        free(text);
                }
        }
        free(scores);
        free(g_ref);
        g_ref = NULL;
}

static void test_long_input(void **state) {
        const size_t target = 1u << 20;
        char *text;
        size_t len = 0;
        int32_t *ids = NULL;
        size_t n = 0;
        struct timespec t0, t1;

        if (!fixtures())
                return;
        text = malloc(target + 4096);
        assert_non_null(text);
        for (size_t i = 0; len < target; i++) {
                const Vector *v = &g_vec[i % g_n_vec];
                memcpy(text + len, v->text, v->len);
                len += v->len;
                text[len++] = ' ';
        }
        clock_gettime(CLOCK_MONOTONIC, &t0);
        assert_int_equal(tokenizer_encode(g_tok, text, len, 1, &ids, &n), 0);
        clock_gettime(CLOCK_MONOTONIC, &t1);
        fprintf(stderr, "1 MiB of mixed text: %zu ids in %.3f s\n", n,
                (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) * 1e-9);
        assert_true(n > len / 8 && n < len);
        free(ids);
        check_roundtrip(g_tok, text, len);

        /* 1 MiB without a single cut point. */
        memset(text, 'a', target);
        clock_gettime(CLOCK_MONOTONIC, &t0);
        assert_int_equal(tokenizer_encode(g_tok, text, target, 0, &ids, &n), 0);
        clock_gettime(CLOCK_MONOTONIC, &t1);
        fprintf(stderr, "1 MiB of 'a': %zu ids in %.3f s\n", n,
                (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) * 1e-9);
        free(ids);
        check_roundtrip(g_tok, text, target);
        free(text);
}

/* ---------------------------------------------------------------------------------------
 * Detokenizer */

#define BYTE_ID(b) ((int32_t)(b) + 3) /* <0x00> is id 3 in the Mistral v1 vocabulary */

static void push_expect(Detokenizer *d, int32_t id, const char *want, size_t want_n) {
        char out[DETOK_MAX_OUT];
        int r = detok_push(d, id, out);
        assert_int_equal(r, (int)want_n);
        assert_memory_equal(out, want, want_n);
}

static void test_detok_streaming(void **state) {
        static const int32_t family[] = { 28705, 243, 162, 148, 171, 29274, 243, 162, 148, 172, 29274, 243, 162,
                                          148, 170, 29274, 243, 162, 148, 169, 2005 };
        const char *want_family = "\xf0\x9f\x91\xa8\xe2\x80\x8d\xf0\x9f\x91\xa9\xe2\x80\x8d\xf0\x9f\x91\xa7"
                                  "\xe2\x80\x8d\xf0\x9f\x91\xa6 family";
        Detokenizer d;
        char out[DETOK_MAX_OUT];
        char *text;
        size_t len;

        if (!fixtures())
                return;
        {
                size_t pl = 0;
                const char *p = tokenizer_piece(g_tok, BYTE_ID(0xF0), &pl);
                assert_non_null(p);
                assert_int_equal(pl, 6);
                assert_memory_equal(p, "<0xF0>", 6);
        }

        /* U+1F468 split over four byte tokens: nothing until the last one. */
        detok_init(&d, g_tok, 1);
        push_expect(&d, BYTE_ID(0xF0), "", 0);
        push_expect(&d, BYTE_ID(0x9F), "", 0);
        push_expect(&d, BYTE_ID(0x91), "", 0);
        push_expect(&d, BYTE_ID(0xA8), "\xf0\x9f\x91\xa8", 4);
        push_expect(&d, 2005, " family", 7);  /* not stripped: something came before */
        assert_int_equal(detok_flush(&d, out), 0);

        /* The whole vector, one id at a time. */
        text = stream_decode(g_tok, family, sizeof(family) / sizeof(family[0]), 1, &len);
        assert_int_equal(len, strlen(want_family));
        assert_memory_equal(text, want_family, len);
        free(text);

        /* A lead byte followed by something that cannot continue it. */
        detok_init(&d, g_tok, 0);
        push_expect(&d, BYTE_ID(0xE2), "", 0);
        push_expect(&d, BYTE_ID(0x41), "\xef\xbf\xbd" "A", 4);
        push_expect(&d, BYTE_ID(0x80), "\xef\xbf\xbd", 3);               /* lone continuation */
        push_expect(&d, BYTE_ID(0xFF), "\xef\xbf\xbd", 3);
        push_expect(&d, BYTE_ID(0xC0), "\xef\xbf\xbd", 3);               /* overlong lead */
        push_expect(&d, BYTE_ID(0xED), "", 0);
        push_expect(&d, BYTE_ID(0xA0), "\xef\xbf\xbd\xef\xbf\xbd", 6);   /* surrogate */
        push_expect(&d, BYTE_ID(0xE2), "", 0);
        push_expect(&d, BYTE_ID(0x88), "", 0);
        push_expect(&d, 1318, "\xef\xbf\xbd\xef\xbf\xbd x", 8);          /* "▁x" flushes */
        push_expect(&d, BYTE_ID(0xF0), "", 0);
        push_expect(&d, BYTE_ID(0x9F), "", 0);
        push_expect(&d, BYTE_ID(0x98), "", 0);
        assert_int_equal(detok_flush(&d, out), 9);
        assert_memory_equal(out, "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd", 9);
        assert_int_equal(detok_flush(&d, out), 0);

        /* Control tokens give nothing and do not end the leading-space window. */
        detok_init(&d, g_tok, 1);
        push_expect(&d, 1, "", 0);
        push_expect(&d, 22557, "Hello", 5);    /* "▁Hello" */
        push_expect(&d, 1526, " world", 6);    /* "▁world" */
        push_expect(&d, 2, "", 0);
        detok_init(&d, g_tok, 1);
        push_expect(&d, 28705, "", 0);         /* "▁" of " Hello": the dummy prefix */
        push_expect(&d, 22557, " Hello", 6);
        detok_init(&d, g_tok, 0);
        push_expect(&d, 22557, " Hello", 6);
        detok_init(&d, g_tok, 1);
        push_expect(&d, 259, " ", 1);          /* "▁▁" */
        detok_init(&d, g_tok, 1);
        push_expect(&d, 0, " \xe2\x81\x87 ", 5); /* <unk> */
        push_expect(&d, 22557, " Hello", 6);

        /* Out of range. */
        assert_int_equal(detok_push(&d, -1, out), -EINVAL);
        assert_int_equal(detok_push(&d, 32000, out), -EINVAL);
        assert_int_equal(tokenizer_token_type(g_tok, 32000), -EINVAL);
        assert_null(tokenizer_piece(g_tok, -1, NULL));
        {
                int32_t bad[] = { 22557, 40000 };
                char *s = NULL;
                assert_int_equal(tokenizer_decode(g_tok, bad, 2, 1, &s, NULL), -EINVAL);
                assert_null(s);
        }
}

/* ---------------------------------------------------------------------------------------
 * Synthetic vocabularies in an in-memory GGUF */

typedef struct Buf {
        uint8_t *p;
        size_t n, cap;
} Buf;

static void buf_put(Buf *b, const void *s, size_t n) {
        if (b->n + n > b->cap) {
                b->cap = (b->n + n) * 2 + 64;
                b->p = realloc(b->p, b->cap);
                assert_non_null(b->p);
        }
        memcpy(b->p + b->n, s, n);
        b->n += n;
}

static void put_u32(Buf *b, uint32_t v) {
        uint8_t x[4] = { (uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24) };
        buf_put(b, x, 4);
}

static void put_u64(Buf *b, uint64_t v) {
        put_u32(b, (uint32_t)v);
        put_u32(b, (uint32_t)(v >> 32));
}

static void put_str(Buf *b, const char *s, size_t n) {
        put_u64(b, n);
        buf_put(b, s, n);
}

typedef struct Synth {
        const char *model;            /* NULL: key absent */
        const char **pieces;
        size_t n_pieces;              /* SIZE_MAX: key absent */
        const float *scores;
        size_t n_scores;
        int scores_as_i32;            /* wrong element type */
        const int32_t *types;
        size_t n_types;
        int64_t bos, eos, unk;        /* -1: key absent */
        int add_space_prefix;         /* -1: absent; 2: stored as UINT32 (wrong type) */
} Synth;

static void kv_key(Buf *b, const char *key, uint32_t type, uint64_t *n_kv) {
        put_str(b, key, strlen(key));
        put_u32(b, type);
        (*n_kv)++;
}

static int synth_load(const Synth *s, Tokenizer **ret) {
        Buf b = { 0 };
        uint64_t n_kv = 0;
        GGUFFile *f = NULL;
        int r;

        buf_put(&b, "GGUF", 4);
        put_u32(&b, 3);
        put_u64(&b, 0);   /* tensors */
        put_u64(&b, 0);   /* kv count, patched below */
        if (s->model) {
                kv_key(&b, "tokenizer.ggml.model", GGUF_TYPE_STRING, &n_kv);
                put_str(&b, s->model, strlen(s->model));
        }
        if (s->n_pieces != SIZE_MAX) {
                kv_key(&b, "tokenizer.ggml.tokens", GGUF_TYPE_ARRAY, &n_kv);
                put_u32(&b, GGUF_TYPE_STRING);
                put_u64(&b, s->n_pieces);
                for (size_t i = 0; i < s->n_pieces; i++)
                        put_str(&b, s->pieces[i], strlen(s->pieces[i]));
        }
        kv_key(&b, "tokenizer.ggml.scores", GGUF_TYPE_ARRAY, &n_kv);
        put_u32(&b, s->scores_as_i32 ? GGUF_TYPE_INT32 : GGUF_TYPE_FLOAT32);
        put_u64(&b, s->n_scores);
        for (size_t i = 0; i < s->n_scores; i++) {
                uint32_t bits;
                memcpy(&bits, &s->scores[i], 4);
                put_u32(&b, bits);
        }
        kv_key(&b, "tokenizer.ggml.token_type", GGUF_TYPE_ARRAY, &n_kv);
        put_u32(&b, GGUF_TYPE_INT32);
        put_u64(&b, s->n_types);
        for (size_t i = 0; i < s->n_types; i++)
                put_u32(&b, (uint32_t)s->types[i]);
        if (s->bos >= 0) {
                kv_key(&b, "tokenizer.ggml.bos_token_id", GGUF_TYPE_UINT32, &n_kv);
                put_u32(&b, (uint32_t)s->bos);
        }
        if (s->eos >= 0) {
                kv_key(&b, "tokenizer.ggml.eos_token_id", GGUF_TYPE_UINT32, &n_kv);
                put_u32(&b, (uint32_t)s->eos);
        }
        if (s->unk >= 0) {
                kv_key(&b, "tokenizer.ggml.unknown_token_id", GGUF_TYPE_UINT32, &n_kv);
                put_u32(&b, (uint32_t)s->unk);
        }
        if (s->add_space_prefix == 0 || s->add_space_prefix == 1) {
                uint8_t v = (uint8_t)s->add_space_prefix;
                kv_key(&b, "tokenizer.ggml.add_space_prefix", GGUF_TYPE_BOOL, &n_kv);
                buf_put(&b, &v, 1);
        } else if (s->add_space_prefix == 2) {
                kv_key(&b, "tokenizer.ggml.add_space_prefix", GGUF_TYPE_UINT32, &n_kv);
                put_u32(&b, 1);
        }
        for (int i = 0; i < 8; i++)
                b.p[16 + i] = (uint8_t)(n_kv >> (8 * i));

        r = gguf_open_buffer(b.p, b.n, NULL, &f);
        assert_int_equal(r, 0);
        r = tokenizer_load(f, ret);
        gguf_close(f);
        free(b.p);
        return r;
}

/* ids:                   0        1      2       3                4    5    6    7     8      9      10    11      12   13 */
static const char *syn_pieces[] = { "<unk>", "<s>", "</s>", "\xe2\x96\x81", "a", "b", "c", "ab", "abc", "<x>", "bc", "abcd", "d", "<x>y" };
static const float syn_scores[] = { 0, 0, 0, -1, -2, -3, -4, -0.5f, -0.1f, 0, -0.6f, -0.05f, -4, 0 };
static const int32_t syn_types[] = { 2, 3, 3, 1, 1, 1, 1, 5, 5, 4, 1, 1, 1, 4 };
#define SYN_N 14

static Synth synth_base(const char **pieces, float *scores, int32_t *types) {
        memcpy(pieces, syn_pieces, sizeof(syn_pieces));
        memcpy(scores, syn_scores, sizeof(syn_scores));
        memcpy(types, syn_types, sizeof(syn_types));
        return (Synth){
                .model = "llama",
                .pieces = pieces, .n_pieces = SYN_N,
                .scores = scores, .n_scores = SYN_N,
                .types = types, .n_types = SYN_N,
                .bos = 1, .eos = 2, .unk = 0,
                .add_space_prefix = 0,
        };
}

static void expect_ids(const Tokenizer *t, const char *text, const int32_t *want, size_t n_want) {
        int32_t *ids = NULL;
        size_t n = 0;
        assert_int_equal(tokenizer_encode(t, text, strlen(text), 0, &ids, &n), 0);
        if (n != n_want || memcmp(ids, want, n * sizeof(*ids)) != 0) {
                fprintf(stderr, "text \"%s\"\n", text);
                print_ids("want", want, n_want);
                print_ids("got ", ids, n);
                fail();
        }
        free(ids);
}

#define EXPECT(t, text, ...)                                                                   \
        do {                                                                                   \
                static const int32_t want_[] = { __VA_ARGS__ };                                \
                expect_ids(t, text, want_, sizeof(want_) / sizeof(want_[0]));                  \
        } while (0)

static void test_synthetic_vocab(void **state) {
        const char *pieces[SYN_N];
        float scores[SYN_N];
        int32_t types[SYN_N];
        Synth s = synth_base(pieces, scores, types);
        Tokenizer *t = NULL;
        int32_t *ids = NULL;
        size_t n = 0;
        char *dec = NULL;

        assert_int_equal(synth_load(&s, &t), 0);
        /* UNUSED pieces may form mid-merge but are re-split the way they were formed. */
        EXPECT(t, "abc", 4, 5, 6);        /* a+b → ab (unused), ab+c → abc (unused) → a b c */
        EXPECT(t, "abcd", 11);            /* ... abc+d → abcd (normal) */
        EXPECT(t, "ab", 4, 5);
        EXPECT(t, "bc", 10);
        EXPECT(t, "cbc", 6, 10);
        /* User-defined pieces are matched whole (longest first) and never merged. */
        EXPECT(t, "x<x>ab", 0, 9, 4, 5);
        EXPECT(t, "<x>bc", 9, 10);
        EXPECT(t, "a<x>", 4, 9);
        EXPECT(t, "<x>y", 13);
        EXPECT(t, "<x>z", 9, 0);
        /* Without byte tokens a run of unknown characters gives one <unk>. */
        EXPECT(t, "xy", 0);
        EXPECT(t, "<x", 0);
        EXPECT(t, "xaz", 0, 4, 0);
        EXPECT(t, "a b", 4, 3, 5);         /* no dummy prefix: add_space_prefix = false */
        assert_int_equal(tokenizer_encode(t, "", 0, 0, &ids, &n), 0);
        assert_int_equal(n, 0);
        free(ids);

        /* Decoding: user-defined pieces are text, <unk> is " ⁇ ", no prefix stripping
         * (the vocabulary adds no dummy prefix). */
        {
                int32_t seq[] = { 1, 3, 9, 0, 7, 8 };
                assert_int_equal(tokenizer_decode(t, seq, 6, 1, &dec, &n), 0);
                assert_string_equal(dec, " <x> \xe2\x81\x87 ababc");
                free(dec);
        }
        t = tokenizer_free(t);
        assert_null(tokenizer_free(NULL));

        /* Defaults: dummy prefix on, bos/eos 1/2, unk found by type. */
        s.add_space_prefix = -1;
        s.bos = s.eos = s.unk = -1;
        assert_int_equal(synth_load(&s, &t), 0);
        assert_int_equal(tokenizer_bos(t), 1);
        assert_int_equal(tokenizer_eos(t), 2);
        assert_int_equal(tokenizer_unk(t), 0);
        EXPECT(t, "a", 3, 4);
        EXPECT(t, " a", 3, 3, 4);
        assert_int_equal(tokenizer_encode(t, "", 0, 0, &ids, &n), 0);
        assert_int_equal(n, 0);
        free(ids);
        t = tokenizer_free(t);
}

static void test_synthetic_rejects(void **state) {
        const char *pieces[SYN_N + 1];
        float scores[SYN_N + 1];
        int32_t types[SYN_N + 1];
        char long_piece[TOKENIZER_MAX_PIECE + 2];
        Tokenizer *t = (Tokenizer *)(uintptr_t)0x1;
        Synth s;

#define REJECT(err, ...)                                                                       \
        do {                                                                                   \
                s = synth_base(pieces, scores, types);                                         \
                __VA_ARGS__;                                                                   \
                assert_int_equal(synth_load(&s, &t), err);                                     \
                assert_ptr_equal(t, (Tokenizer *)(uintptr_t)0x1);                              \
        } while (0)

        s = synth_base(pieces, scores, types);
        s.model = "gpt2";
        assert_int_equal(synth_load(&s, &t), -ENOTSUP);
        assert_ptr_equal(t, (Tokenizer *)(uintptr_t)0x1);

        REJECT(-EBADMSG, s.model = NULL);
        REJECT(-EBADMSG, s.n_pieces = SIZE_MAX);                   /* no tokens */
        REJECT(-EBADMSG, s.n_pieces = 0; s.n_scores = 0; s.n_types = 0);
        REJECT(-EBADMSG, s.n_scores = SYN_N - 1);                   /* lengths differ */
        REJECT(-EBADMSG, s.n_types = SYN_N - 1);
        REJECT(-EBADMSG, s.n_pieces = SYN_N - 1);
        REJECT(-EBADMSG, s.scores_as_i32 = 1);
        REJECT(-EBADMSG, pieces[4] = "\xff");                       /* not UTF-8 */
        REJECT(-EBADMSG, pieces[4] = "\xed\xa0\x80");               /* surrogate */
        REJECT(-EBADMSG, pieces[4] = "\xe2\x96");                   /* truncated */
        REJECT(-EBADMSG, pieces[4] = "");                           /* empty */
        REJECT(-EBADMSG, pieces[5] = "a");                          /* duplicate */
        REJECT(-EBADMSG, pieces[5] = "<s>");                        /* duplicate across types */
        memset(long_piece, 'z', TOKENIZER_MAX_PIECE + 1);
        long_piece[TOKENIZER_MAX_PIECE + 1] = '\0';
        REJECT(-EBADMSG, pieces[4] = long_piece);                   /* too long */
        REJECT(-EBADMSG, types[4] = 0);                             /* unknown types */
        REJECT(-EBADMSG, types[4] = 7);
        REJECT(-EBADMSG, types[4] = -1);
        REJECT(-EBADMSG, scores[4] = NAN);
        REJECT(-EBADMSG, scores[4] = INFINITY);
        REJECT(-EBADMSG, types[4] = 6);                             /* "a" is no byte piece */
        REJECT(-EBADMSG, pieces[4] = "<0x41>"; types[4] = 6);       /* 1 of 256 byte pieces */
        REJECT(-EBADMSG, types[4] = 2);                             /* two <unk> */
        REJECT(-EBADMSG, types[0] = 3);                             /* no <unk> */
        REJECT(-EBADMSG, s.unk = 4);                                /* unk id not UNKNOWN */
        REJECT(-EBADMSG, s.unk = SYN_N);
        REJECT(-EBADMSG, s.bos = SYN_N);                            /* out of range */
        REJECT(-EBADMSG, s.eos = 1000);
        REJECT(-EBADMSG, s.bos = 4);                                /* a normal piece */
        REJECT(-EBADMSG, s.add_space_prefix = 2);                   /* wrong key type */
#undef REJECT

        /* Byte pieces must all be there, spelled <0xNN> in upper case. */
        {
                const char **bp = calloc(3 + 256, sizeof(*bp));
                float *bs = calloc(3 + 256, sizeof(*bs));
                int32_t *bt = calloc(3 + 256, sizeof(*bt));
                char (*names)[8] = calloc(256, sizeof(*names));
                int32_t *out = NULL;
                size_t n = 0;

                assert_true(bp && bs && bt && names);
                bp[0] = "<unk>", bp[1] = "<s>", bp[2] = "</s>";
                bt[0] = 2, bt[1] = 3, bt[2] = 3;
                for (int i = 0; i < 256; i++) {
                        snprintf(names[i], sizeof(names[i]), "<0x%02X>", i);
                        bp[3 + i] = names[i];
                        bt[3 + i] = 6;
                }
                s = (Synth){ .model = "llama", .pieces = bp, .n_pieces = 259, .scores = bs, .n_scores = 259,
                             .types = bt, .n_types = 259, .bos = -1, .eos = -1, .unk = -1, .add_space_prefix = -1 };
                assert_int_equal(synth_load(&s, &t), 0);
                /* Every character falls back to bytes. */
                assert_int_equal(tokenizer_encode(t, "A \xc3\xa9", 4, 0, &out, &n), 0);
                {
                        static const int32_t want[] = { 3 + 0xE2, 3 + 0x96, 3 + 0x81, 3 + 'A', 3 + 0xE2, 3 + 0x96,
                                                        3 + 0x81, 3 + 0xC3, 3 + 0xA9 };
                        assert_int_equal(n, 9);
                        assert_memory_equal(out, want, sizeof(want));
                }
                free(out);
                t = tokenizer_free(t);

                t = (Tokenizer *)(uintptr_t)0x1;
                snprintf(names[10], sizeof(names[10]), "<0x0a>");
                assert_int_equal(synth_load(&s, &t), -EBADMSG);
                snprintf(names[10], sizeof(names[10]), "<0x0B>"); /* twice 0x0B */
                assert_int_equal(synth_load(&s, &t), -EBADMSG);
                snprintf(names[10], sizeof(names[10]), "<0x0A >");
                assert_int_equal(synth_load(&s, &t), -EBADMSG);
                assert_ptr_equal(t, (Tokenizer *)(uintptr_t)0x1);
                free(bp);
                free(bs);
                free(bt);
                free(names);
        }
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_vectors),
                cmocka_unit_test(test_vectors_roundtrip),
                cmocka_unit_test(test_empty),
                cmocka_unit_test(test_special_as_text),
                cmocka_unit_test(test_invalid_utf8),
                cmocka_unit_test(test_too_long),
                cmocka_unit_test(test_against_naive_bpe),
                cmocka_unit_test(test_long_input),
                cmocka_unit_test(test_detok_streaming),
                cmocka_unit_test(test_synthetic_vocab),
                cmocka_unit_test(test_synthetic_rejects),
        };
        return cmocka_run_group_tests(tests, NULL, teardown_all);
}
