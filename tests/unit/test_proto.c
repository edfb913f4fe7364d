/* tests/unit/test_proto.c — proto/: frame headers and the FrameReader (byte-by-byte feeds,
 * several frames per feed, bad headers refused before any body byte, the exact maximum), the
 * msgcheck validator (depth, element count, string size, every prefix truncated, trailing
 * bytes, non-map top level, ext), request decoding of every op (defaults, both ends of every
 * range and one past, wrong types, unknown/duplicate/missing fields, unknown op, ids, NaN,
 * UTF-8, stop list), and the encoders round-tripping through the decoders. Single-threaded
 * cmocka test. proto_limits.h comes in through msg.h.
 */
#include <errno.h>
#include <float.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "frame.h"
#include "msg.h"
#include "msgcheck.h"

/* ---------------------------------------------------------------------------------------
 * Building bodies: tagged values passed through varargs as (key, Val) pairs. */

typedef struct Val {
        char t;                       /* u i d f b s n S(tr array) T(oken array) R(aw msgpack) */
        uint64_t u;
        int64_t i;
        double d;
        float f;
        bool b;
        const char *s;
        size_t n;                     /* s: bytes; S/T: elements; R: bytes */
        const char *const *strs;
        const uint64_t *toks;
} Val;

#define U(x) ((Val){ .t = 'u', .u = (x) })
#define I(x) ((Val){ .t = 'i', .i = (x) })
#define D(x) ((Val){ .t = 'd', .d = (x) })
#define F(x) ((Val){ .t = 'f', .f = (x) })
#define B(x) ((Val){ .t = 'b', .b = (x) })
#define S(x) ((Val){ .t = 's', .s = (x), .n = strlen(x) })
#define SN(x, len) ((Val){ .t = 's', .s = (x), .n = (len) })
#define NIL ((Val){ .t = 'n' })
#define STRS(a, len) ((Val){ .t = 'S', .strs = (a), .n = (len) })
#define TOKS(a, len) ((Val){ .t = 'T', .toks = (a), .n = (len) })
#define RAW(arr) ((Val){ .t = 'R', .s = (arr), .n = sizeof(arr) - 1 })  /* a char array literal */

static void put_val(ProtoOut *o, Val v) {
        switch (v.t) {
        case 'u': proto_out_uint(o, v.u); break;
        case 'i': proto_out_int(o, v.i); break;
        case 'd': proto_out_double(o, v.d); break;
        case 'f': assert_int_equal(msgpack_pack_float(&o->pk, v.f), 0); break;
        case 'b': proto_out_bool(o, v.b); break;
        case 's': proto_out_strn(o, v.s, v.n); break;
        case 'n': proto_out_nil(o); break;
        case 'S':
                proto_out_array(o, (uint32_t)v.n);
                for (size_t k = 0; k < v.n; k++)
                        proto_out_str(o, v.strs[k]);
                break;
        case 'T':
                proto_out_array(o, (uint32_t)v.n);
                for (size_t k = 0; k < v.n; k++)
                        proto_out_uint(o, v.toks[k]);
                break;
        case 'R':
                assert_int_equal(msgpack_sbuffer_write(&o->sbuf, v.s, v.n), 0);
                break;
        default:
                fail_msg("bad Val tag %c", v.t);
        }
        assert_int_equal(o->error, 0);
}

/* Pack {key: val, ...} from NULL-terminated (const char *key, Val val) pairs into o. */
static void build_v(ProtoOut *o, va_list ap) {
        va_list count;
        uint32_t n = 0;

        va_copy(count, ap);
        while (va_arg(count, const char *)) {
                (void)va_arg(count, Val);
                n++;
        }
        va_end(count);
        proto_out_map(o, n);
        for (const char *k; (k = va_arg(ap, const char *));) {
                proto_out_str(o, k);
                put_val(o, va_arg(ap, Val));
        }
}

static void build(ProtoOut *o, ...) {
        va_list ap;

        va_start(ap, o);
        build_v(o, ap);
        va_end(ap);
}

/* Decode the map of the given pairs as a request. */
static int dec(Request *req, ProtoError *err, ...) {
        ProtoOut o;
        va_list ap;
        int r;

        proto_out_init(&o);
        va_start(ap, err);
        build_v(&o, ap);
        va_end(ap);
        r = request_decode((const uint8_t *)o.sbuf.data, o.sbuf.size, req, err);
        proto_out_done(&o);
        return r;
}

#define GEN(req, err, ...) dec(req, err, "id", U(7), "op", S("generate"), "prompt", S("hi"), __VA_ARGS__, NULL)

static void expect_ok(int r, const ProtoError *err) {
        if (r != 0)
                fail_msg("expected success, got %d (%s: %s)", r, err->code ? err->code : "-", err->message);
}

static void expect_err(int r, const ProtoError *err, int want_r, const char *want_code) {
        if (r != want_r || !err->code || strcmp(err->code, want_code) != 0)
                fail_msg("expected %d/%s, got %d/%s (%s)", want_r, want_code, r, err->code ? err->code : "-",
                         err->message);
}

/* A generate with one extra field: accepted (req filled) or refused with want_r/want_code. */
static void gen_ok(const char *field, Val v, Request *req) {
        ProtoError err;

        expect_ok(GEN(req, &err, field, v), &err);
        assert_int_equal(req->op, PROTO_OP_GENERATE);
}

static void gen_bad(const char *field, Val v, int want_r, const char *want_code) {
        Request req = { 0 };
        ProtoError err;
        int r = GEN(&req, &err, field, v);

        expect_err(r, &err, want_r, want_code);
        assert_false(err.fatal);
        assert_true(err.has_id);
        assert_int_equal(err.id, 7);
        if (strcmp(want_code, PROTO_ERR_BAD_REQUEST) == 0 && !strstr(err.message, field))
                fail_msg("message '%s' does not name the field '%s'", err.message, field);
}

static char *filled(size_t n, char c) {
        char *p = malloc(n + 1);

        assert_non_null(p);
        memset(p, c, n);
        p[n] = 0;
        return p;
}

/* ---------------------------------------------------------------------------------------
 * Framing */

static void test_frame_header(void **state) {
        uint8_t h[4];
        uint32_t len = 12345;

        memcpy(h, "\0\0\0\0", 4);
        assert_int_equal(frame_header_decode(h, &len), -EBADMSG);
        assert_int_equal(len, 12345);
        memcpy(h, "\0\0\0\1", 4);
        assert_int_equal(frame_header_decode(h, &len), 0);
        assert_int_equal(len, 1);
        frame_header_encode(PROTO_MAX_FRAME, h);
        assert_int_equal(frame_header_decode(h, &len), 0);
        assert_int_equal(len, PROTO_MAX_FRAME);
        frame_header_encode(PROTO_MAX_FRAME + 1, h);
        assert_int_equal(frame_header_decode(h, &len), -E2BIG);
        memcpy(h, "\xff\xff\xff\xff", 4);
        assert_int_equal(frame_header_decode(h, &len), -E2BIG);
        frame_header_encode(0x01020304, h);
        assert_memory_equal(h, "\x01\x02\x03\x04", 4);
}

static void test_frame_encode(void **state) {
        uint8_t *f = NULL;
        size_t n = 0;
        static uint8_t big[PROTO_MAX_FRAME + 1];

        assert_int_equal(frame_encode_bytes("\x80", 1, &f, &n), 0);
        assert_int_equal(n, 5);
        assert_memory_equal(f, "\0\0\0\1\x80", 5);
        free(f);
        f = NULL;
        assert_int_equal(frame_encode_bytes("", 0, &f, &n), -EINVAL);
        assert_int_equal(frame_encode_bytes(big, sizeof(big), &f, &n), -E2BIG);
        assert_null(f);
        assert_int_equal(frame_encode_bytes(big, PROTO_MAX_FRAME, &f, &n), 0);
        assert_int_equal(n, PROTO_FRAME_HEADER + PROTO_MAX_FRAME);
        free(f);
}

/* A stream of frames with distinct bodies of the given lengths; returns the bytes. */
static uint8_t *make_stream(const uint32_t *lens, size_t n, size_t *ret_len) {
        size_t total = 0, at = 0;
        uint8_t *s;

        for (size_t i = 0; i < n; i++)
                total += PROTO_FRAME_HEADER + lens[i];
        s = malloc(total);
        assert_non_null(s);
        for (size_t i = 0; i < n; i++) {
                frame_header_encode(lens[i], s + at);
                at += PROTO_FRAME_HEADER;
                for (uint32_t k = 0; k < lens[i]; k++)
                        s[at + k] = (uint8_t)(i * 31 + k);
                at += lens[i];
        }
        *ret_len = total;
        return s;
}

static void check_body(const uint8_t *body, size_t len, size_t i, uint32_t want_len) {
        assert_int_equal(len, want_len);
        for (uint32_t k = 0; k < len; k++)
                if (body[k] != (uint8_t)(i * 31 + k))
                        fail_msg("frame %zu byte %u differs", i, k);
}

/* Feed the stream in chunks of the sizes chunk(i) returns; check every frame comes out. */
static void run_stream(const uint32_t *lens, size_t n, size_t (*chunk)(size_t i)) {
        FrameReader fr;
        size_t len, at = 0, got = 0, i = 0;
        uint8_t *s = make_stream(lens, n, &len);

        frame_reader_init(&fr);
        while (at < len) {
                size_t c = chunk(i++), used;

                if (c > len - at)
                        c = len - at;
                const uint8_t *p = s + at;
                size_t left = c;
                while (left > 0) {
                        const uint8_t *body;
                        size_t body_len;
                        int r = frame_reader_feed(&fr, p, left, &used);

                        assert_true(r >= 0);
                        assert_true(frame_reader_buffered(&fr) <= PROTO_FRAME_HEADER + PROTO_MAX_FRAME);
                        /* a stream ending now would end mid-frame exactly while bytes wait */
                        assert_int_equal(frame_reader_partial(&fr), r == 1 || frame_reader_buffered(&fr) > 0);
                        p += used, left -= used;
                        if (frame_reader_next(&fr, &body, &body_len) > 0) {
                                assert_true(got < n);
                                check_body(body, body_len, got, lens[got]);
                                got++;
                                assert_false(frame_reader_partial(&fr));
                                assert_int_equal(frame_reader_next(&fr, &body, &body_len), 0);
                        }
                }
                at += c;
        }
        assert_int_equal(got, n);
        assert_false(frame_reader_partial(&fr));
        assert_int_equal(frame_reader_buffered(&fr), 0 + (fr.handed_out ? lens[n - 1] + PROTO_FRAME_HEADER : 0));
        frame_reader_done(&fr);
        free(s);
}

static size_t chunk_one(size_t i) { return 1; }
static size_t chunk_all(size_t i) { return SIZE_MAX; }
static size_t chunk_odd(size_t i) { return 1 + (i * 7919) % 97; }
static size_t chunk_3(size_t i) { return 3; }

static void test_reader_chunks(void **state) {
        const uint32_t lens[] = { 1, 5, 300, 2, 4096, 4097, 1, 70000, 3 };
        size_t n = sizeof(lens) / sizeof(lens[0]);

        run_stream(lens, n, chunk_one);
        run_stream(lens, n, chunk_all);  /* several frames in one feed */
        run_stream(lens, n, chunk_odd);
        run_stream(lens, n, chunk_3);    /* chunks straddling headers */
}

static void test_reader_exact_max(void **state) {
        const uint32_t lens[] = { PROTO_MAX_FRAME, 7, PROTO_MAX_FRAME };

        run_stream(lens, 3, chunk_all);
        run_stream(lens, 3, chunk_odd);
}

/* A bad header is refused the moment its 4th byte arrives: no body byte is taken. */
static void bad_header(uint32_t value, int want, const char *code) {
        FrameReader fr;
        uint8_t s[12] = { 0 };
        size_t used = 99;
        const uint8_t *body;
        size_t body_len;
        ProtoError err;

        frame_header_encode(value, s);
        /* header alone, split */
        frame_reader_init(&fr);
        assert_int_equal(frame_reader_feed(&fr, s, 2, &used), 0);
        assert_int_equal(used, 2);
        assert_int_equal(frame_reader_feed(&fr, s + 2, 2, &used), want);
        assert_int_equal(used, 2);  /* untouched on failure */
        assert_true(frame_reader_buffered(&fr) <= PROTO_FRAME_HEADER);
        assert_null(fr.buf);
        /* sticky */
        assert_int_equal(frame_reader_feed(&fr, s + 4, 8, &used), want);
        assert_int_equal(frame_reader_next(&fr, &body, &body_len), want);
        frame_reader_error(&fr, &err);
        assert_string_equal(err.code, code);
        assert_true(err.fatal);
        frame_reader_done(&fr);

        /* header followed by body bytes in the same feed */
        frame_reader_init(&fr);
        assert_int_equal(frame_reader_feed(&fr, s, sizeof(s), &used), want);
        assert_null(fr.buf);
        frame_reader_done(&fr);
}

static void test_reader_bad_headers(void **state) {
        bad_header(0, -EBADMSG, PROTO_ERR_BAD_FRAME);
        bad_header(UINT32_MAX, -E2BIG, PROTO_ERR_TOO_LARGE);  /* 4 GiB - 1 */
        bad_header(PROTO_MAX_FRAME + 1, -E2BIG, PROTO_ERR_TOO_LARGE);

        /* after good frames, a bad one still stops the stream */
        FrameReader fr;
        uint8_t s[] = { 0, 0, 0, 1, 0x80, 0, 0, 0, 0 };
        size_t used;
        const uint8_t *body;
        size_t body_len;

        frame_reader_init(&fr);
        assert_int_equal(frame_reader_feed(&fr, s, sizeof(s), &used), 1);
        assert_int_equal(used, 5);
        assert_int_equal(frame_reader_next(&fr, &body, &body_len), 1);
        assert_int_equal(frame_reader_feed(&fr, s + 5, 4, &used), -EBADMSG);
        frame_reader_done(&fr);
}

static void test_reader_memory(void **state) {
        FrameReader fr;
        uint8_t hdr[4];
        static uint8_t chunk[1000];
        size_t used;
        const uint8_t *body;
        size_t body_len;

        /* a header announcing the maximum allocates only what arrives */
        frame_reader_init(&fr);
        frame_header_encode(PROTO_MAX_FRAME, hdr);
        assert_int_equal(frame_reader_feed(&fr, hdr, 4, &used), 0);
        assert_int_equal(frame_reader_feed(&fr, chunk, sizeof(chunk), &used), 0);
        assert_true(fr.cap <= 4096);
        for (uint32_t got = sizeof(chunk); got < PROTO_MAX_FRAME; got += used) {
                size_t c = PROTO_MAX_FRAME - got < sizeof(chunk) ? PROTO_MAX_FRAME - got : sizeof(chunk);
                assert_true(frame_reader_feed(&fr, chunk, c, &used) >= 0);
                assert_true(fr.cap <= PROTO_MAX_FRAME);
        }
        assert_int_equal(frame_reader_next(&fr, &body, &body_len), 1);
        assert_int_equal(body_len, PROTO_MAX_FRAME);
        /* the big buffer is dropped once the next frame starts */
        frame_header_encode(1, hdr);
        assert_int_equal(frame_reader_feed(&fr, hdr, 4, &used), 0);
        assert_true(fr.cap <= PROTO_READER_KEEP);
        frame_reader_done(&fr);
        frame_reader_done(&fr);  /* twice is fine */
}

/* ---------------------------------------------------------------------------------------
 * msgcheck */

static int check_bytes(const void *p, size_t n, const char *want_code) {
        ProtoError err = { 0 };
        int r = msgcheck(p, n, &err);

        if (want_code) {
                if (r >= 0 || strcmp(err.code, want_code) != 0)
                        fail_msg("msgcheck: expected %s, got %d (%s)", want_code, r, err.code ? err.code : "-");
                assert_true(err.fatal);
        } else if (r != 0)
                fail_msg("msgcheck: expected success, got %d: %s", r, err.message);
        return r;
}

static void check_out(ProtoOut *o, const char *want_code) {
        assert_int_equal(o->error, 0);
        check_bytes(o->sbuf.data, o->sbuf.size, want_code);
}

static void test_msgcheck_depth(void **state) {
        ProtoOut o;

        /* {"a": [[...]]} with the map at depth 1 and `depth - 1` nested arrays */
        for (unsigned depth = 1; depth <= PROTO_MAX_DEPTH + 2; depth++) {
                proto_out_init(&o);
                proto_out_map(&o, 1);
                proto_out_str(&o, "a");
                for (unsigned k = 1; k < depth; k++)
                        proto_out_array(&o, k + 1 < depth ? 1 : 0);
                if (depth == 1)
                        proto_out_nil(&o);
                check_out(&o, depth <= PROTO_MAX_DEPTH ? NULL : PROTO_ERR_TOO_LARGE);
                proto_out_done(&o);
        }
        /* nested maps: depth 9 with a scalar at the bottom */
        proto_out_init(&o);
        for (unsigned k = 0; k < PROTO_MAX_DEPTH + 1; k++) {
                proto_out_map(&o, 1);
                proto_out_str(&o, "k");
        }
        proto_out_uint(&o, 1);
        check_out(&o, PROTO_ERR_TOO_LARGE);
        proto_out_done(&o);
}

static void test_msgcheck_elements(void **state) {
        ProtoOut o;

        /* {"a": [nil * n]} counts 1 + n elements */
        for (uint32_t n = PROTO_MAX_ELEMENTS - 1; n <= PROTO_MAX_ELEMENTS; n++) {
                proto_out_init(&o);
                proto_out_map(&o, 1);
                proto_out_str(&o, "a");
                proto_out_array(&o, n);
                for (uint32_t k = 0; k < n; k++)
                        proto_out_nil(&o);
                check_out(&o, n < PROTO_MAX_ELEMENTS ? NULL : PROTO_ERR_TOO_LARGE);
                proto_out_done(&o);
        }
        /* spread over many small arrays: 65537 + ... */
        proto_out_init(&o);
        proto_out_map(&o, 1);
        proto_out_str(&o, "a");
        proto_out_array(&o, 8300);
        for (uint32_t k = 0; k < 8300; k++) {
                proto_out_array(&o, 7);
                for (int j = 0; j < 7; j++)
                        proto_out_uint(&o, 1);
        }
        check_out(&o, PROTO_ERR_TOO_LARGE);  /* 1 + 8300 * 8 = 66401 */
        proto_out_done(&o);

        /* announced counts far beyond the bytes present */
        check_bytes("\xdf\xff\xff\xff\xff", 5, PROTO_ERR_TOO_LARGE);
        check_bytes("\x81\xa1" "a\xdc\x00\x64\xc0\xc0", 7, PROTO_ERR_BAD_FRAME);
        check_bytes("\x81\xa1" "a\xdd\x00\x00\x10\x00", 8, PROTO_ERR_BAD_FRAME);
}

static void test_msgcheck_strings(void **state) {
        ProtoOut o;
        char *s = filled(PROTO_MAX_STRING + 1, 'x');

        for (int bin = 0; bin <= 1; bin++)
                for (uint32_t n = PROTO_MAX_STRING; n <= PROTO_MAX_STRING + 1; n++) {
                        proto_out_init(&o);
                        proto_out_map(&o, 1);
                        proto_out_str(&o, "a");
                        if (bin)
                                assert_int_equal(msgpack_pack_bin_with_body(&o.pk, s, n), 0);
                        else
                                proto_out_strn(&o, s, n);
                        check_out(&o, n <= PROTO_MAX_STRING ? NULL : PROTO_ERR_TOO_LARGE);
                        proto_out_done(&o);
                }
        free(s);
        /* a str32 header announcing 4 GiB - 1 with nothing behind it */
        check_bytes("\x81\xa1" "a\xdb\xff\xff\xff\xff", 8, PROTO_ERR_TOO_LARGE);
        check_bytes("\x81\xa1" "a\xdb\x00\x00\x01\x00xx", 10, PROTO_ERR_BAD_FRAME);
}

static void test_msgcheck_shapes(void **state) {
        /* top level must be a map */
        check_bytes("", 0, PROTO_ERR_BAD_FRAME);
        check_bytes("\x90", 1, PROTO_ERR_BAD_FRAME);
        check_bytes("\x01", 1, PROTO_ERR_BAD_FRAME);
        check_bytes("\xc0", 1, PROTO_ERR_BAD_FRAME);
        check_bytes("\xa1" "a", 2, PROTO_ERR_BAD_FRAME);
        check_bytes("\xcb\0\0\0\0\0\0\0\0", 9, PROTO_ERR_BAD_FRAME);
        /* the smallest maps */
        check_bytes("\x80", 1, NULL);
        check_bytes("\xde\x00\x00", 3, NULL);
        check_bytes("\xdf\x00\x00\x00\x00", 5, NULL);
        /* trailing bytes */
        check_bytes("\x80\x00", 2, PROTO_ERR_BAD_FRAME);
        check_bytes("\x80\x80", 2, PROTO_ERR_BAD_FRAME);
        check_bytes("\x81\xa1" "a\x01\xff", 5, PROTO_ERR_BAD_FRAME);
        /* ext and the unused byte, anywhere */
        check_bytes("\x81\xa1" "a\xd4\x01\x00", 6, PROTO_ERR_BAD_FRAME);
        check_bytes("\x81\xa1" "a\xd8\x01" "0123456789abcdef", 21, PROTO_ERR_BAD_FRAME);
        check_bytes("\x81\xa1" "a\xc7\x01\x05\x00", 7, PROTO_ERR_BAD_FRAME);
        check_bytes("\x81\xa1" "a\xc8\x00\x01\x05\x00", 8, PROTO_ERR_BAD_FRAME);
        check_bytes("\x81\xa1" "a\xc9\x00\x00\x00\x01\x05\x00", 10, PROTO_ERR_BAD_FRAME);
        check_bytes("\x81\xa1" "a\xc1", 4, PROTO_ERR_BAD_FRAME);
        check_bytes("\x81\xc1\x01", 3, PROTO_ERR_BAD_FRAME);
        /* every scalar kind inside a map: 15 entries */
        static const char kinds[] =
                "\x8f"
                "\x00\x7f" "\xe0\xff" "\xc0\xc2" "\xc3\xca\0\0\0\0"
                "\xcb\0\0\0\0\0\0\0\0" "\xcc\1" "\xcd\0\1" "\xce\0\0\0\1" "\xcf\0\0\0\0\0\0\0\1"
                "\xd0\1" "\xd1\0\1" "\xd2\0\0\0\1" "\xd3\0\0\0\0\0\0\0\1" "\xc4\1x" "\xc5\0\1x"
                "\xc6\0\0\0\1x" "\xd9\1x" "\xda\0\1x" "\xdb\0\0\0\1x" "\x90\x80"
                "\xdc\0\0" "\xdd\0\0\0\0" "\xde\0\0" "\xdf\0\0\0\0" "\xa0";
        check_bytes(kinds, sizeof(kinds) - 1, NULL);
        check_bytes(kinds, sizeof(kinds) - 2, PROTO_ERR_BAD_FRAME);
}

/* Valid bodies used for the truncation tests: one request per op plus replies and events. */
static size_t sample_bodies(uint8_t **bodies, size_t *lens, size_t max);

static void test_msgcheck_truncated_everywhere(void **state) {
        uint8_t *bodies[32];
        size_t lens[32];
        size_t n = sample_bodies(bodies, lens, 32);

        assert_true(n >= PROTO_OP_COUNT_ + 4);
        for (size_t i = 0; i < n; i++) {
                check_bytes(bodies[i], lens[i], NULL);
                for (size_t cut = 0; cut < lens[i]; cut++) {
                        uint8_t *copy = malloc(cut ? cut : 1);
                        Request req;
                        Reply rep;
                        ProtoError err;

                        memcpy(copy, bodies[i], cut);
                        check_bytes(copy, cut, PROTO_ERR_BAD_FRAME);
                        assert_int_equal(request_decode(copy, cut, &req, &err), -EBADMSG);
                        assert_true(err.fatal);
                        assert_int_equal(reply_decode(copy, cut, &rep, &err), -EBADMSG);
                        free(copy);
                }
                free(bodies[i]);
        }
}

/* ---------------------------------------------------------------------------------------
 * Requests: every op with its defaults */

static void test_ops_defaults(void **state) {
        Request req;
        ProtoError err;
        const uint64_t no_tokens[1] = { 0 };

        expect_ok(dec(&req, &err, "id", U(1), "op", S("hello"), "version", U(PROTO_VERSION), NULL), &err);
        assert_int_equal(req.op, PROTO_OP_HELLO);
        assert_int_equal(req.id, 1);
        assert_int_equal(req.hello.version, PROTO_VERSION);
        request_free(&req);

        expect_ok(dec(&req, &err, "op", S("generate"), "prompt", S("Hello"), "id", U(2), NULL), &err);
        assert_int_equal(req.op, PROTO_OP_GENERATE);
        assert_int_equal(req.id, 2);
        assert_int_equal(req.generate.prompt_len, 5);
        assert_string_equal(req.generate.prompt, "Hello");
        assert_null(req.generate.session);
        assert_int_equal(req.generate.n_predict, 256);
        assert_true(req.generate.temperature == 0.8f);
        assert_int_equal(req.generate.top_k, 40);
        assert_true(req.generate.top_p == 0.95f);
        assert_true(req.generate.min_p == 0.05f);
        assert_true(req.generate.repeat_penalty == 1.0f);
        assert_int_equal(req.generate.repeat_last_n, 64);
        assert_false(req.generate.has_seed);
        assert_int_equal(req.generate.n_stop, 0);
        assert_false(req.generate.logprobs);
        assert_true(req.generate.add_bos);
        request_free(&req);

        expect_ok(dec(&req, &err, "id", U(3), "op", S("cancel"), "target", U(2), NULL), &err);
        assert_int_equal(req.op, PROTO_OP_CANCEL);
        assert_int_equal(req.cancel.target, 2);
        request_free(&req);

        expect_ok(dec(&req, &err, "id", U(4), "op", S("tokenize"), "text", S("a b"), NULL), &err);
        assert_int_equal(req.op, PROTO_OP_TOKENIZE);
        assert_string_equal(req.tokenize.text, "a b");
        assert_int_equal(req.tokenize.text_len, 3);
        assert_true(req.tokenize.add_bos);
        request_free(&req);

        expect_ok(dec(&req, &err, "id", U(5), "op", S("detokenize"), "tokens", TOKS(no_tokens, 0), NULL), &err);
        assert_int_equal(req.op, PROTO_OP_DETOKENIZE);
        assert_int_equal(req.detokenize.n_tokens, 0);
        assert_non_null(req.detokenize.tokens);
        request_free(&req);

        expect_ok(dec(&req, &err, "id", U(6), "op", S("score"), "text", S(""), NULL), &err);
        assert_int_equal(req.op, PROTO_OP_SCORE);
        assert_string_equal(req.score.text, "");
        assert_int_equal(req.score.text_len, 0);
        assert_true(req.score.add_bos);
        request_free(&req);

        expect_ok(dec(&req, &err, "id", U(8), "op", S("session.close"), "session", S("s-1"), NULL), &err);
        assert_int_equal(req.op, PROTO_OP_SESSION_CLOSE);
        assert_string_equal(req.session_close.session, "s-1");
        request_free(&req);

        static const struct { const char *name; ProtoOp op; } bare[] = {
                { "session.open", PROTO_OP_SESSION_OPEN }, { "session.list", PROTO_OP_SESSION_LIST },
                { "status", PROTO_OP_STATUS },             { "experts", PROTO_OP_EXPERTS },
                { "shutdown", PROTO_OP_SHUTDOWN },
        };
        for (size_t i = 0; i < sizeof(bare) / sizeof(bare[0]); i++) {
                expect_ok(dec(&req, &err, "id", U(9), "op", S(bare[i].name), NULL), &err);
                assert_int_equal(req.op, bare[i].op);
                assert_int_equal(req.id, 9);
                assert_string_equal(proto_op_name(req.op), bare[i].name);
                request_free(&req);
                /* and they take no fields */
                assert_int_equal(dec(&req, &err, "id", U(9), "op", S(bare[i].name), "x", U(1), NULL), -EINVAL);
                assert_string_equal(err.code, PROTO_ERR_BAD_REQUEST);
        }
        assert_null(proto_op_name(PROTO_OP_COUNT_));
        request_free(NULL);
}

/* ---------------------------------------------------------------------------------------
 * Requests: both ends of every range, and one past */

static void test_generate_int_ranges(void **state) {
        static const struct { const char *field; int64_t lo, hi; size_t off; } rows[] = {
                { "n_predict", -1, PROTO_MAX_NEW_TOKENS, offsetof(GenerateRequest, n_predict) },
                { "top_k", 0, PROTO_MAX_TOP_K, offsetof(GenerateRequest, top_k) },
                { "repeat_last_n", 0, PROTO_MAX_REPEAT_LAST_N, offsetof(GenerateRequest, repeat_last_n) },
        };
        Request req;

        for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
                gen_ok(rows[i].field, I(rows[i].lo), &req);
                assert_int_equal(*(int32_t *)((char *)&req.generate + rows[i].off), rows[i].lo);
                request_free(&req);
                gen_ok(rows[i].field, I(rows[i].hi), &req);
                assert_int_equal(*(int32_t *)((char *)&req.generate + rows[i].off), rows[i].hi);
                request_free(&req);
                gen_bad(rows[i].field, I(rows[i].lo - 1), -EINVAL, PROTO_ERR_BAD_REQUEST);
                gen_bad(rows[i].field, I(rows[i].hi + 1), -EINVAL, PROTO_ERR_BAD_REQUEST);
                gen_bad(rows[i].field, I(INT64_MIN), -EINVAL, PROTO_ERR_BAD_REQUEST);
                gen_bad(rows[i].field, U(UINT64_MAX), -EINVAL, PROTO_ERR_BAD_REQUEST);
                gen_bad(rows[i].field, U((uint64_t)1 << 32), -EINVAL, PROTO_ERR_BAD_REQUEST);
        }
}

static void test_generate_float_ranges(void **state) {
        static const struct {
                const char *field;
                double lo, hi;   /* accepted ends (lo is the smallest positive float for open ends) */
                double below;    /* rejected */
                size_t off;
        } rows[] = {
                { "temperature", 0.0, 100.0, -FLT_TRUE_MIN, offsetof(GenerateRequest, temperature) },
                { "top_p", FLT_TRUE_MIN, 1.0, 0.0, offsetof(GenerateRequest, top_p) },
                { "min_p", 0.0, 1.0, -FLT_TRUE_MIN, offsetof(GenerateRequest, min_p) },
                { "repeat_penalty", FLT_TRUE_MIN, 100.0, 0.0, offsetof(GenerateRequest, repeat_penalty) },
        };
        Request req;

        for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
                const char *f = rows[i].field;
                float *slot = (float *)((char *)&req.generate + rows[i].off);

                /* both ends, as float64 and as float32 */
                gen_ok(f, D(rows[i].lo), &req);
                assert_true(*slot == (float)rows[i].lo);
                request_free(&req);
                gen_ok(f, F((float)rows[i].lo), &req);
                assert_true(*slot == (float)rows[i].lo);
                request_free(&req);
                gen_ok(f, D(rows[i].hi), &req);
                assert_true(*slot == (float)rows[i].hi);
                request_free(&req);
                gen_ok(f, F((float)rows[i].hi), &req);
                assert_true(*slot == (float)rows[i].hi);
                request_free(&req);
                /* integers are numbers too */
                gen_ok(f, U((uint64_t)rows[i].hi), &req);
                assert_true(*slot == (float)rows[i].hi);
                request_free(&req);
                /* one past each end */
                gen_bad(f, D(rows[i].below), -EINVAL, PROTO_ERR_BAD_REQUEST);
                gen_bad(f, F((float)rows[i].below), -EINVAL, PROTO_ERR_BAD_REQUEST);
                gen_bad(f, D(nextafter(rows[i].hi, INFINITY)), -EINVAL, PROTO_ERR_BAD_REQUEST);
                gen_bad(f, F(nextafterf((float)rows[i].hi, INFINITY)), -EINVAL, PROTO_ERR_BAD_REQUEST);
                gen_bad(f, I(-1), -EINVAL, PROTO_ERR_BAD_REQUEST);
                gen_bad(f, U(101), -EINVAL, PROTO_ERR_BAD_REQUEST);
                /* not finite */
                gen_bad(f, D(NAN), -EINVAL, PROTO_ERR_BAD_REQUEST);
                gen_bad(f, F(NAN), -EINVAL, PROTO_ERR_BAD_REQUEST);
                gen_bad(f, D(INFINITY), -EINVAL, PROTO_ERR_BAD_REQUEST);
                gen_bad(f, D(-INFINITY), -EINVAL, PROTO_ERR_BAD_REQUEST);
                gen_bad(f, F(INFINITY), -EINVAL, PROTO_ERR_BAD_REQUEST);
        }
        /* an open lower end also refuses a double that would round to 0 as a float */
        gen_bad("top_p", D(1e-60), -EINVAL, PROTO_ERR_BAD_REQUEST);
        gen_bad("repeat_penalty", D(DBL_TRUE_MIN), -EINVAL, PROTO_ERR_BAD_REQUEST);
        /* -0.0 is 0 */
        gen_ok("temperature", D(-0.0), &req);
        assert_true(req.generate.temperature == 0.0f);
        request_free(&req);
}

static void test_generate_other_fields(void **state) {
        Request req;
        char *s;
        const char *stops[PROTO_MAX_STOPS + 1];

        /* seed: any uint64; absent means the server picks */
        gen_ok("seed", U(0), &req);
        assert_true(req.generate.has_seed);
        assert_int_equal(req.generate.seed, 0);
        request_free(&req);
        gen_ok("seed", U(UINT64_MAX), &req);
        assert_true(req.generate.seed == UINT64_MAX);
        request_free(&req);
        gen_bad("seed", I(-1), -EINVAL, PROTO_ERR_BAD_REQUEST);

        /* booleans */
        gen_ok("logprobs", B(true), &req);
        assert_true(req.generate.logprobs);
        request_free(&req);
        gen_ok("add_bos", B(false), &req);
        assert_false(req.generate.add_bos);
        request_free(&req);

        /* session id: 1..64 printable ASCII */
        gen_ok("session", S("a"), &req);
        assert_string_equal(req.generate.session, "a");
        request_free(&req);
        s = filled(PROTO_MAX_SESSION_ID + 1, 'z');
        gen_ok("session", SN(s, PROTO_MAX_SESSION_ID), &req);
        assert_int_equal(strlen(req.generate.session), PROTO_MAX_SESSION_ID);
        request_free(&req);
        gen_bad("session", SN(s, PROTO_MAX_SESSION_ID + 1), -E2BIG, PROTO_ERR_TOO_LARGE);
        free(s);
        gen_bad("session", S(""), -EINVAL, PROTO_ERR_BAD_REQUEST);
        gen_bad("session", S("a b"), -EINVAL, PROTO_ERR_BAD_REQUEST);
        gen_bad("session", S("caf\xc3\xa9"), -EINVAL, PROTO_ERR_BAD_REQUEST);
        gen_bad("session", SN("a\0b", 3), -EINVAL, PROTO_ERR_BAD_REQUEST);

        /* stop: up to 16 strings of 1..256 bytes */
        s = filled(PROTO_MAX_STOP_LEN + 1, 's');
        for (unsigned i = 0; i <= PROTO_MAX_STOPS; i++)
                stops[i] = i == 3 ? s + 1 : "\n\n";  /* one of exactly 256 bytes */
        gen_ok("stop", STRS(stops, 0), &req);
        assert_int_equal(req.generate.n_stop, 0);
        request_free(&req);
        gen_ok("stop", STRS(stops, PROTO_MAX_STOPS), &req);
        assert_int_equal(req.generate.n_stop, PROTO_MAX_STOPS);
        assert_int_equal(req.generate.stop_len[3], PROTO_MAX_STOP_LEN);
        assert_string_equal(req.generate.stop[0], "\n\n");
        request_free(&req);
        gen_bad("stop", STRS(stops, PROTO_MAX_STOPS + 1), -E2BIG, PROTO_ERR_TOO_LARGE);
        stops[3] = s;  /* 257 bytes */
        gen_bad("stop", STRS(stops, 4), -E2BIG, PROTO_ERR_TOO_LARGE);
        stops[3] = "x";
        gen_ok("stop", STRS(stops, 4), &req);
        assert_int_equal(req.generate.stop_len[3], 1);
        request_free(&req);
        stops[3] = "";
        gen_bad("stop", STRS(stops, 4), -EINVAL, PROTO_ERR_BAD_REQUEST);
        stops[3] = "\xff";
        gen_bad("stop", STRS(stops, 4), -EINVAL, PROTO_ERR_BAD_REQUEST);
        free(s);
}

static void test_text_sizes(void **state) {
        Request req;
        ProtoError err;
        char *s = filled(PROTO_MAX_PROMPT_BYTES + 1, 'p');
        static const char *const ops[] = { "tokenize", "score" };

        /* prompt: 0..PROTO_MAX_PROMPT_BYTES, and a maximal one still fits in a frame */
        gen_ok("session", S("x"), &req);  /* prompt "hi" */
        request_free(&req);
        expect_ok(dec(&req, &err, "id", U(1), "op", S("generate"), "prompt", SN(s, 0), NULL), &err);
        assert_int_equal(req.generate.prompt_len, 0);
        request_free(&req);
        expect_ok(dec(&req, &err, "id", U(1), "op", S("generate"), "prompt", SN(s, PROTO_MAX_PROMPT_BYTES), NULL), &err);
        assert_int_equal(req.generate.prompt_len, PROTO_MAX_PROMPT_BYTES);
        assert_int_equal(req.generate.prompt[PROTO_MAX_PROMPT_BYTES], 0);
        request_free(&req);
        expect_err(dec(&req, &err, "id", U(1), "op", S("generate"), "prompt", SN(s, PROTO_MAX_PROMPT_BYTES + 1), NULL),
                   &err, -E2BIG, PROTO_ERR_TOO_LARGE);
        assert_false(err.fatal);
        assert_true(err.has_id);

        for (size_t i = 0; i < 2; i++) {
                expect_ok(dec(&req, &err, "id", U(1), "op", S(ops[i]), "text", SN(s, PROTO_MAX_PROMPT_BYTES),
                              "add_bos", B(false), NULL), &err);
                assert_int_equal(req.tokenize.text_len, PROTO_MAX_PROMPT_BYTES);
                assert_false(req.tokenize.add_bos);
                request_free(&req);
                expect_err(dec(&req, &err, "id", U(1), "op", S(ops[i]), "text", SN(s, PROTO_MAX_PROMPT_BYTES + 1), NULL),
                           &err, -E2BIG, PROTO_ERR_TOO_LARGE);
                expect_err(dec(&req, &err, "id", U(1), "op", S(ops[i]), "text", S("\xc0\x80"), NULL),
                           &err, -EINVAL, PROTO_ERR_BAD_REQUEST);
                expect_err(dec(&req, &err, "id", U(1), "op", S(ops[i]), NULL), &err, -EINVAL, PROTO_ERR_BAD_REQUEST);
        }
        free(s);
        /* a prompt may carry U+0000 */
        expect_ok(dec(&req, &err, "id", U(1), "op", S("generate"), "prompt", SN("a\0b", 3), NULL), &err);
        assert_int_equal(req.generate.prompt_len, 3);
        assert_memory_equal(req.generate.prompt, "a\0b", 4);
        request_free(&req);
}

static void test_utf8(void **state) {
        static const struct { const char *s; bool ok; } rows[] = {
                { "plain", true },
                { "caf\xc3\xa9", true },                   /* é */
                { "\xe2\x82\xac", true },                  /* € */
                { "\xf0\x9f\x98\x80", true },              /* 😀 */
                { "\xf4\x8f\xbf\xbf", true },              /* U+10FFFF */
                { "\xef\xbf\xbd", true },                  /* U+FFFD */
                { "\xc0\x80", false },                     /* overlong NUL */
                { "\xc1\xbf", false },                     /* overlong */
                { "\xe0\x80\xaf", false },                 /* overlong */
                { "\xf0\x80\x80\xaf", false },             /* overlong */
                { "\xed\xa0\x80", false },                 /* surrogate U+D800 */
                { "\xed\xbf\xbf", false },                 /* surrogate U+DFFF */
                { "\xf4\x90\x80\x80", false },             /* U+110000 */
                { "\xf5\x80\x80\x80", false },
                { "\xe2\x82", false },                     /* truncated */
                { "abc\xf0\x9f\x98", false },              /* truncated at the end */
                { "\x80", false },                         /* lone continuation */
                { "\xc3\x28", false },                     /* bad continuation */
                { "\xfe", false },
                { "\xff", false },
        };
        Request req;

        for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
                assert_int_equal(proto_utf8_valid(rows[i].s, strlen(rows[i].s)), rows[i].ok);
                if (rows[i].ok) {
                        ProtoError err;

                        expect_ok(dec(&req, &err, "id", U(1), "op", S("generate"), "prompt", S(rows[i].s), NULL), &err);
                        assert_string_equal(req.generate.prompt, rows[i].s);
                        request_free(&req);
                } else {
                        ProtoError err;

                        expect_err(dec(&req, &err, "id", U(1), "op", S("generate"), "prompt", S(rows[i].s), NULL),
                                   &err, -EINVAL, PROTO_ERR_BAD_REQUEST);
                        assert_non_null(strstr(err.message, "prompt"));
                }
        }
}

static void test_ids_and_targets(void **state) {
        Request req;
        ProtoError err;

        expect_ok(dec(&req, &err, "id", U(0), "op", S("status"), NULL), &err);
        assert_int_equal(req.id, 0);
        request_free(&req);
        expect_ok(dec(&req, &err, "id", U(PROTO_MAX_ID), "op", S("status"), NULL), &err);
        assert_true(req.id == PROTO_MAX_ID);
        request_free(&req);

        /* bad or missing ids: no id to echo */
        expect_err(dec(&req, &err, "id", U(PROTO_MAX_ID + 1), "op", S("status"), NULL), &err, -EINVAL,
                   PROTO_ERR_BAD_REQUEST);
        assert_false(err.has_id);
        expect_err(dec(&req, &err, "id", U(UINT64_MAX), "op", S("status"), NULL), &err, -EINVAL, PROTO_ERR_BAD_REQUEST);
        expect_err(dec(&req, &err, "id", I(-1), "op", S("status"), NULL), &err, -EINVAL, PROTO_ERR_BAD_REQUEST);
        expect_err(dec(&req, &err, "id", D(1.0), "op", S("status"), NULL), &err, -EINVAL, PROTO_ERR_BAD_REQUEST);
        expect_err(dec(&req, &err, "id", S("1"), "op", S("status"), NULL), &err, -EINVAL, PROTO_ERR_BAD_REQUEST);
        expect_err(dec(&req, &err, "id", NIL, "op", S("status"), NULL), &err, -EINVAL, PROTO_ERR_BAD_REQUEST);
        expect_err(dec(&req, &err, "op", S("status"), NULL), &err, -EINVAL, PROTO_ERR_BAD_REQUEST);
        assert_false(err.has_id);
        assert_false(err.fatal);
        assert_non_null(strstr(err.message, "id"));
        expect_err(dec(&req, &err, NULL), &err, -EINVAL, PROTO_ERR_BAD_REQUEST);

        /* missing or mistyped op: the id is echoed */
        expect_err(dec(&req, &err, "id", U(5), NULL), &err, -EINVAL, PROTO_ERR_BAD_REQUEST);
        assert_true(err.has_id);
        assert_int_equal(err.id, 5);
        expect_err(dec(&req, &err, "id", U(5), "op", U(1), NULL), &err, -EINVAL, PROTO_ERR_BAD_REQUEST);
        assert_true(err.has_id);

        /* unknown op */
        expect_err(dec(&req, &err, "id", U(6), "op", S("generat"), NULL), &err, -EOPNOTSUPP, PROTO_ERR_UNKNOWN_OP);
        assert_true(err.has_id);
        assert_int_equal(err.id, 6);
        assert_false(err.fatal);
        assert_non_null(strstr(err.message, "generat"));
        expect_err(dec(&req, &err, "id", U(6), "op", S(""), NULL), &err, -EOPNOTSUPP, PROTO_ERR_UNKNOWN_OP);
        expect_err(dec(&req, &err, "id", U(6), "op", SN("status\0", 7), NULL), &err, -EOPNOTSUPP, PROTO_ERR_UNKNOWN_OP);
        expect_err(dec(&req, &err, "id", U(6), "op", S("STATUS"), NULL), &err, -EOPNOTSUPP, PROTO_ERR_UNKNOWN_OP);

        /* cancel target: 0..PROTO_MAX_ID */
        expect_ok(dec(&req, &err, "id", U(1), "op", S("cancel"), "target", U(0), NULL), &err);
        request_free(&req);
        expect_ok(dec(&req, &err, "id", U(1), "op", S("cancel"), "target", U(PROTO_MAX_ID), NULL), &err);
        assert_true(req.cancel.target == PROTO_MAX_ID);
        request_free(&req);
        expect_err(dec(&req, &err, "id", U(1), "op", S("cancel"), "target", U(PROTO_MAX_ID + 1), NULL), &err, -EINVAL,
                   PROTO_ERR_BAD_REQUEST);
        expect_err(dec(&req, &err, "id", U(1), "op", S("cancel"), "target", I(-1), NULL), &err, -EINVAL,
                   PROTO_ERR_BAD_REQUEST);
        expect_err(dec(&req, &err, "id", U(1), "op", S("cancel"), NULL), &err, -EINVAL, PROTO_ERR_BAD_REQUEST);
        assert_non_null(strstr(err.message, "target"));

        /* hello: version must be ours; another one is refused and the connection closes */
        expect_ok(dec(&req, &err, "id", U(1), "op", S("hello"), "version", U(PROTO_VERSION), NULL), &err);
        request_free(&req);
        for (uint64_t v = 0; v <= PROTO_VERSION + 1; v += 2) {
                expect_err(dec(&req, &err, "id", U(1), "op", S("hello"), "version", U(v), NULL), &err,
                           -EPROTONOSUPPORT, PROTO_ERR_UNSUPPORTED_VERSION);
                assert_true(err.fatal);
                assert_true(err.has_id);
        }
        expect_err(dec(&req, &err, "id", U(1), "op", S("hello"), "version", U(UINT64_MAX), NULL), &err,
                   -EPROTONOSUPPORT, PROTO_ERR_UNSUPPORTED_VERSION);
        expect_err(dec(&req, &err, "id", U(1), "op", S("hello"), "version", I(-1), NULL), &err, -EINVAL,
                   PROTO_ERR_BAD_REQUEST);
        expect_err(dec(&req, &err, "id", U(1), "op", S("hello"), "version", S("1"), NULL), &err, -EINVAL,
                   PROTO_ERR_BAD_REQUEST);
        expect_err(dec(&req, &err, "id", U(1), "op", S("hello"), NULL), &err, -EINVAL, PROTO_ERR_BAD_REQUEST);

        /* session.close needs a session */
        expect_err(dec(&req, &err, "id", U(1), "op", S("session.close"), NULL), &err, -EINVAL, PROTO_ERR_BAD_REQUEST);
        expect_err(dec(&req, &err, "id", U(1), "op", S("session.close"), "session", U(3), NULL), &err, -EINVAL,
                   PROTO_ERR_BAD_REQUEST);
        /* generate needs a prompt */
        expect_err(dec(&req, &err, "id", U(1), "op", S("generate"), "n_predict", I(3), NULL), &err, -EINVAL,
                   PROTO_ERR_BAD_REQUEST);
        assert_non_null(strstr(err.message, "prompt"));
}

static void test_tokens(void **state) {
        Request req;
        ProtoError err;
        uint64_t *t = calloc(PROTO_MAX_TOKENS_ARRAY + 1, sizeof(uint64_t));

        assert_non_null(t);
        t[0] = 0;
        t[1] = PROTO_MAX_TOKEN_ID;
        expect_ok(dec(&req, &err, "id", U(1), "op", S("detokenize"), "tokens", TOKS(t, 2), NULL), &err);
        assert_int_equal(req.detokenize.n_tokens, 2);
        assert_int_equal(req.detokenize.tokens[1], INT32_MAX);
        request_free(&req);
        for (size_t i = 0; i <= PROTO_MAX_TOKENS_ARRAY; i++)
                t[i] = i;
        /* a full array fits in a frame and in the element budget */
        expect_ok(dec(&req, &err, "id", U(1), "op", S("detokenize"), "tokens", TOKS(t, PROTO_MAX_TOKENS_ARRAY), NULL),
                  &err);
        assert_int_equal(req.detokenize.n_tokens, PROTO_MAX_TOKENS_ARRAY);
        assert_int_equal(req.detokenize.tokens[PROTO_MAX_TOKENS_ARRAY - 1], PROTO_MAX_TOKENS_ARRAY - 1);
        request_free(&req);
        expect_err(dec(&req, &err, "id", U(1), "op", S("detokenize"), "tokens", TOKS(t, PROTO_MAX_TOKENS_ARRAY + 1), NULL),
                   &err, -E2BIG, PROTO_ERR_TOO_LARGE);
        t[1] = (uint64_t)PROTO_MAX_TOKEN_ID + 1;
        expect_err(dec(&req, &err, "id", U(1), "op", S("detokenize"), "tokens", TOKS(t, 2), NULL), &err, -EINVAL,
                   PROTO_ERR_BAD_REQUEST);
        free(t);
        static const char neg[] = "\x92\x01\xff";  /* [1, -1] */
        expect_err(dec(&req, &err, "id", U(1), "op", S("detokenize"), "tokens", RAW(neg), NULL), &err, -EINVAL,
                   PROTO_ERR_BAD_REQUEST);
        static const char flt[] = "\x91\xcb\x3f\xf0\0\0\0\0\0\0";  /* [1.0] */
        expect_err(dec(&req, &err, "id", U(1), "op", S("detokenize"), "tokens", RAW(flt), NULL), &err, -EINVAL,
                   PROTO_ERR_BAD_REQUEST);
        expect_err(dec(&req, &err, "id", U(1), "op", S("detokenize"), NULL), &err, -EINVAL, PROTO_ERR_BAD_REQUEST);
}

static void test_wrong_types(void **state) {
        static const char map1[] = "\x81\xa1" "a\x01";
        static const char arr1[] = "\x91\x01";
        static const char bin1[] = "\xc4\x01x";
        static const char strs_bad[] = "\x92\xa1" "a\x05";   /* ["a", 5] */
        static const char strs_bin[] = "\x91\xc4\x01x";      /* [bin "x"] */
        struct { const char *field; Val v; } rows[] = {
                { "prompt", U(1) },            { "prompt", NIL },            { "prompt", RAW(bin1) },
                { "prompt", RAW(arr1) },    { "session", U(1) },          { "session", NIL },
                { "n_predict", D(1.0) },       { "n_predict", F(1.0f) },     { "n_predict", S("1") },
                { "n_predict", B(true) },      { "n_predict", NIL },         { "temperature", S("0.5") },
                { "temperature", B(false) },   { "temperature", NIL },       { "temperature", RAW(arr1) },
                { "top_k", D(40.0) },          { "top_p", RAW(map1) },    { "min_p", S("") },
                { "repeat_penalty", NIL },     { "repeat_last_n", D(64) },   { "seed", D(1.0) },
                { "seed", S("42") },           { "seed", NIL },              { "stop", S("\n") },
                { "stop", RAW(strs_bad) },  { "stop", RAW(strs_bin) }, { "stop", RAW(map1) },
                { "stop", NIL },               { "logprobs", U(1) },         { "logprobs", S("true") },
                { "add_bos", NIL },            { "add_bos", U(0) },
        };

        for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++)
                gen_bad(rows[i].field, rows[i].v, -EINVAL, PROTO_ERR_BAD_REQUEST);

        Request req;
        ProtoError err;
        expect_err(dec(&req, &err, "id", U(1), "op", S("tokenize"), "text", U(3), NULL), &err, -EINVAL,
                   PROTO_ERR_BAD_REQUEST);
        expect_err(dec(&req, &err, "id", U(1), "op", S("score"), "text", S("x"), "add_bos", U(1), NULL), &err, -EINVAL,
                   PROTO_ERR_BAD_REQUEST);
        expect_err(dec(&req, &err, "id", U(1), "op", S("detokenize"), "tokens", RAW(map1), NULL), &err, -EINVAL,
                   PROTO_ERR_BAD_REQUEST);
        expect_err(dec(&req, &err, "id", U(1), "op", S("detokenize"), "tokens", RAW(strs_bad), NULL), &err, -EINVAL,
                   PROTO_ERR_BAD_REQUEST);
        expect_err(dec(&req, &err, "id", U(1), "op", S("cancel"), "target", D(3.0), NULL), &err, -EINVAL,
                   PROTO_ERR_BAD_REQUEST);

        /* a key that is not a string */
        static const char intkey[] = "\x83\xa2" "id\x01\xa2" "op\xa6" "status\x01\x02";
        assert_int_equal(request_decode((const uint8_t *)intkey, sizeof(intkey) - 1, &req, &err), -EINVAL);
        assert_string_equal(err.code, PROTO_ERR_BAD_REQUEST);
        assert_true(err.has_id);
}

static void test_unknown_and_duplicate_fields(void **state) {
        Request req;
        ProtoError err;

        gen_bad("temp", D(0.5), -EINVAL, PROTO_ERR_BAD_REQUEST);
        gen_bad("text", S("x"), -EINVAL, PROTO_ERR_BAD_REQUEST);  /* a field of another op */
        gen_bad("", U(1), -EINVAL, PROTO_ERR_BAD_REQUEST);
        gen_bad("Prompt", S("x"), -EINVAL, PROTO_ERR_BAD_REQUEST);
        expect_err(GEN(&req, &err, "temp\x01\xff", D(0.5)), &err, -EINVAL, PROTO_ERR_BAD_REQUEST);
        assert_non_null(strstr(err.message, "temp??"));  /* masked sample of the name */
        expect_err(dec(&req, &err, "id", U(1), "op", S("status"), "verbose", B(true), NULL), &err, -EINVAL,
                   PROTO_ERR_BAD_REQUEST);
        assert_non_null(strstr(err.message, "verbose"));

        /* duplicates: a field, the id, the op */
        gen_bad("prompt", S("again"), -EINVAL, PROTO_ERR_BAD_REQUEST);
        expect_err(GEN(&req, &err, "top_k", I(1), "top_k", I(2)), &err, -EINVAL, PROTO_ERR_BAD_REQUEST);
        expect_err(dec(&req, &err, "id", U(1), "id", U(2), "op", S("status"), NULL), &err, -EINVAL,
                   PROTO_ERR_BAD_REQUEST);
        assert_int_equal(err.id, 1);
        expect_err(dec(&req, &err, "id", U(1), "op", S("status"), "op", S("status"), NULL), &err, -EINVAL,
                   PROTO_ERR_BAD_REQUEST);
        /* a duplicated stop list does not leak the first one */
        static const char *const st[] = { "a", "b" };
        expect_err(GEN(&req, &err, "stop", STRS(st, 2), "stop", STRS(st, 1)), &err, -EINVAL, PROTO_ERR_BAD_REQUEST);
}

/* ---------------------------------------------------------------------------------------
 * Encoders round trip */

static void roundtrip(const Request *in) {
        uint8_t *frame = NULL;
        size_t len = 0;
        uint32_t body_len;
        Request out;
        ProtoError err;
        FrameReader fr;
        const uint8_t *body;
        size_t got, used;

        expect_ok(request_encode(in, &frame, &len, &err), &err);
        assert_int_equal(frame_header_decode(frame, &body_len), 0);
        assert_int_equal(body_len + PROTO_FRAME_HEADER, len);
        /* through a reader, byte by byte */
        frame_reader_init(&fr);
        for (size_t i = 0; i < len; i++) {
                int r = frame_reader_feed(&fr, frame + i, 1, &used);
                assert_int_equal(used, 1);
                assert_int_equal(r, i + 1 == len);
        }
        assert_int_equal(frame_reader_next(&fr, &body, &got), 1);
        expect_ok(request_decode(body, got, &out, &err), &err);
        if (!request_equal(in, &out))
                fail_msg("round trip of op %s changed the request", proto_op_name(in->op));
        assert_true(request_equal(&out, in));
        request_free(&out);
        frame_reader_done(&fr);
        free(frame);
}

static char *xstrdup(const char *s) {
        char *p = strdup(s);

        assert_non_null(p);
        return p;
}

static void test_request_roundtrip(void **state) {
        Request r;

        for (ProtoOp op = 0; op < PROTO_OP_COUNT_; op++) {
                assert_int_equal(request_init(&r, op, 1000 + op), 0);
                switch (op) {
                case PROTO_OP_HELLO:
                        r.hello.version = PROTO_VERSION;
                        break;
                case PROTO_OP_GENERATE:
                        r.generate.prompt = xstrdup("");
                        break;
                case PROTO_OP_TOKENIZE:
                case PROTO_OP_SCORE:
                        r.tokenize.text = xstrdup("x");
                        r.tokenize.text_len = 1;
                        break;
                case PROTO_OP_DETOKENIZE:
                        r.detokenize.tokens = malloc(sizeof(int32_t));
                        r.detokenize.n_tokens = 0;
                        break;
                case PROTO_OP_SESSION_CLOSE:
                        r.session_close.session = xstrdup("abc");
                        break;
                default:
                        break;
                }
                roundtrip(&r);
                request_free(&r);
        }
        assert_int_equal(request_init(&r, PROTO_OP_COUNT_, 1), -EINVAL);

        /* every generate field away from its default, at the range ends */
        static const float lo_hi[][4] = {
                { 0.0f, FLT_TRUE_MIN, 0.0f, FLT_TRUE_MIN },
                { 100.0f, 1.0f, 1.0f, 100.0f },
                { 0.123456789f, 0.5f, 0.25f, 1.1f },
        };
        for (size_t k = 0; k < 3; k++) {
                request_init(&r, PROTO_OP_GENERATE, k == 0 ? 0 : PROTO_MAX_ID);
                r.generate.prompt = xstrdup("Once upon a time \xe2\x82\xac");
                r.generate.prompt_len = strlen(r.generate.prompt);
                r.generate.session = xstrdup(k == 1 ? "0123456789012345678901234567890123456789012345678901234567890123" : "s");
                r.generate.n_predict = k == 0 ? -1 : PROTO_MAX_NEW_TOKENS;
                r.generate.temperature = lo_hi[k][0];
                r.generate.top_p = lo_hi[k][1];
                r.generate.min_p = lo_hi[k][2];
                r.generate.repeat_penalty = lo_hi[k][3];
                r.generate.top_k = k == 0 ? 0 : PROTO_MAX_TOP_K;
                r.generate.repeat_last_n = k == 0 ? 0 : PROTO_MAX_REPEAT_LAST_N;
                r.generate.has_seed = true;
                r.generate.seed = k == 0 ? 0 : UINT64_MAX - k;
                r.generate.n_stop = k == 0 ? 1 : PROTO_MAX_STOPS;
                for (uint32_t i = 0; i < r.generate.n_stop; i++) {
                        char *s = filled(i == 0 ? PROTO_MAX_STOP_LEN : i + 1, (char)('a' + i));
                        r.generate.stop[i] = s;
                        r.generate.stop_len[i] = strlen(s);
                }
                r.generate.logprobs = true;
                r.generate.add_bos = k != 0;
                roundtrip(&r);
                request_free(&r);
        }

        /* a full tokens array; text with a NUL inside */
        request_init(&r, PROTO_OP_DETOKENIZE, 77);
        r.detokenize.n_tokens = PROTO_MAX_TOKENS_ARRAY;
        r.detokenize.tokens = malloc(PROTO_MAX_TOKENS_ARRAY * sizeof(int32_t));
        for (size_t i = 0; i < PROTO_MAX_TOKENS_ARRAY; i++)
                r.detokenize.tokens[i] = (int32_t)(i * 32749u % PROTO_MAX_TOKEN_ID);
        r.detokenize.tokens[5] = INT32_MAX;
        roundtrip(&r);
        request_free(&r);
        request_init(&r, PROTO_OP_SCORE, 78);
        r.score.text = malloc(4);
        memcpy(r.score.text, "a\0b", 4);
        r.score.text_len = 3;
        r.score.add_bos = false;
        roundtrip(&r);
        request_free(&r);
}

static void test_request_encode_refuses(void **state) {
        Request r;
        uint8_t *frame = NULL;
        size_t len = 0;
        ProtoError err;

        request_init(&r, PROTO_OP_GENERATE, 5);
        r.generate.prompt = xstrdup("x");
        r.generate.prompt_len = 1;
        r.generate.temperature = NAN;
        assert_int_equal(request_encode(&r, &frame, &len, &err), -EINVAL);
        assert_string_equal(err.code, PROTO_ERR_BAD_REQUEST);
        assert_non_null(strstr(err.message, "temperature"));
        assert_null(frame);
        r.generate.temperature = 0.5f;
        r.generate.n_predict = -2;
        assert_int_equal(request_encode(&r, &frame, &len, &err), -EINVAL);
        r.generate.n_predict = 1;
        free(r.generate.prompt);
        r.generate.prompt_len = PROTO_MAX_FRAME;
        r.generate.prompt = filled(r.generate.prompt_len, 'x');
        assert_int_equal(request_encode(&r, &frame, &len, &err), -E2BIG);
        assert_string_equal(err.code, PROTO_ERR_TOO_LARGE);
        request_free(&r);

        request_init(&r, PROTO_OP_HELLO, 5);
        r.hello.version = PROTO_VERSION + 1;
        assert_int_equal(request_encode(&r, &frame, &len, &err), -EPROTONOSUPPORT);
        r.op = PROTO_OP_COUNT_;
        assert_int_equal(request_encode(&r, &frame, &len, &err), -EINVAL);
        assert_null(frame);
}

/* Strip the header of a frame into a Reply. */
static void decode_frame_reply(uint8_t *frame, size_t len, Reply *rep) {
        uint32_t body_len;
        ProtoError err;

        assert_int_equal(frame_header_decode(frame, &body_len), 0);
        assert_int_equal(body_len + PROTO_FRAME_HEADER, len);
        expect_ok(reply_decode(frame + PROTO_FRAME_HEADER, body_len, rep, &err), &err);
        free(frame);
}

static void test_error_reply(void **state) {
        ProtoError e = { 0 };
        uint8_t *frame;
        size_t len;
        Reply rep;
        Request req;

        /* from a failed decode, echoing its id */
        assert_int_equal(dec(&req, &e, "id", U(41), "op", S("nope"), NULL), -EOPNOTSUPP);
        assert_int_equal(proto_error_encode(&e, &frame, &len), 0);
        decode_frame_reply(frame, len, &rep);
        assert_int_equal(rep.kind, REPLY_ERROR);
        assert_true(rep.has_id);
        assert_int_equal(rep.id, 41);
        assert_true(proto_str_eq(rep.error_code, PROTO_ERR_UNKNOWN_OP));
        assert_true(proto_str_eq(rep.error_message, e.message));
        reply_free(&rep);
        reply_free(&rep);  /* zeroed: fine */

        /* without an id: "id": nil */
        proto_error_set(&e, -EINVAL, PROTO_ERR_BAD_REQUEST, false, "missing field '%s'", "id");
        e.has_id = false;
        assert_int_equal(proto_error_encode(&e, &frame, &len), 0);
        decode_frame_reply(frame, len, &rep);
        assert_int_equal(rep.kind, REPLY_ERROR);
        assert_false(rep.has_id);
        assert_true(proto_str_eq(rep.error_message, "missing field 'id'"));
        assert_true(proto_map_get(&rep.root, "id")->type == MSGPACK_OBJECT_NIL);
        reply_free(&rep);

        /* from a frame reader's error */
        FrameReader fr;
        size_t used;
        frame_reader_init(&fr);
        assert_int_equal(frame_reader_feed(&fr, "\x7f\xff\xff\xff", 4, &used), -E2BIG);
        memset(&e, 0xaa, sizeof(e));  /* every field is set, none left over */
        frame_reader_error(&fr, &e);
        assert_false(e.has_id);
        assert_true(e.fatal);
        assert_non_null(strstr(e.message, "2147483647"));
        assert_int_equal(proto_error_encode(&e, &frame, &len), 0);
        decode_frame_reply(frame, len, &rep);
        assert_true(proto_str_eq(rep.error_code, PROTO_ERR_TOO_LARGE));
        reply_free(&rep);
        frame_reader_done(&fr);
}

static void test_events(void **state) {
        ProtoOut o;
        uint8_t *frame;
        size_t len;
        Reply rep;

        proto_out_init(&o);
        TokenEvent t = { .id = 9, .text = " soft", .text_len = 5, .token = 2936 };
        assert_int_equal(proto_out_token_event(&o, &t), 0);
        assert_int_equal(proto_out_frame(&o, &frame, &len), 0);
        decode_frame_reply(frame, len, &rep);
        assert_int_equal(rep.kind, REPLY_EVENT);
        assert_int_equal(rep.event, REPLY_EVENT_TOKEN);
        assert_int_equal(rep.id, 9);
        assert_true(proto_str_eq(rep.text, " soft"));
        assert_int_equal(rep.token, 2936);
        assert_false(rep.has_logprob);
        reply_free(&rep);

        proto_out_reset(&o);
        t = (TokenEvent){ .id = PROTO_MAX_ID, .text = "", .text_len = 0, .token = 0, .has_logprob = true,
                          .logprob = -1.25 };
        assert_int_equal(proto_out_token_event(&o, &t), 0);
        assert_int_equal(proto_out_frame(&o, &frame, &len), 0);
        decode_frame_reply(frame, len, &rep);
        assert_int_equal(rep.event, REPLY_EVENT_TOKEN);
        assert_true(rep.id == PROTO_MAX_ID);
        assert_int_equal(rep.text.len, 0);
        assert_true(rep.has_logprob);
        assert_true(rep.logprob == -1.25);
        reply_free(&rep);

        for (int with_session = 0; with_session <= 1; with_session++) {
                DoneEvent d = { .id = 10, .stop_reason = PROTO_STOP_LENGTH, .n_prompt = 7, .n_generated = 64,
                                .prompt_ms = 12.5, .generate_ms = 1234.75, .session = with_session ? "s-9" : NULL };

                proto_out_reset(&o);
                assert_int_equal(proto_out_done_event(&o, &d), 0);
                assert_int_equal(proto_out_frame(&o, &frame, &len), 0);
                decode_frame_reply(frame, len, &rep);
                assert_int_equal(rep.kind, REPLY_EVENT);
                assert_int_equal(rep.event, REPLY_EVENT_DONE);
                assert_true(proto_str_eq(rep.stop_reason, "length"));
                assert_int_equal(rep.n_prompt, 7);
                assert_int_equal(rep.n_generated, 64);
                assert_true(rep.prompt_ms == 12.5);
                assert_true(rep.generate_ms == 1234.75);
                assert_int_equal(rep.has_session, with_session);
                if (with_session)
                        assert_true(proto_str_eq(rep.session, "s-9"));
                reply_free(&rep);
        }

        /* an event this client does not know is passed through */
        proto_out_reset(&o);
        proto_out_map(&o, 3);
        proto_out_kv_uint(&o, "id", 3);
        proto_out_kv_str(&o, "event", "progress");
        proto_out_kv_double(&o, "fraction", 0.5);
        assert_int_equal(proto_out_frame(&o, &frame, &len), 0);
        decode_frame_reply(frame, len, &rep);
        assert_int_equal(rep.event, REPLY_EVENT_OTHER);
        assert_true(proto_str_eq(rep.event_name, "progress"));
        double fr;
        assert_int_equal(proto_obj_double(proto_map_get(&rep.root, "fraction"), &fr), 0);
        assert_true(fr == 0.5);
        reply_free(&rep);
        proto_out_done(&o);
}

static void test_ok_reply_builder(void **state) {
        ProtoOut o;
        uint8_t *frame = NULL;
        size_t len;
        Reply rep;
        ProtoStr s;
        uint64_t u;
        int64_t i;
        double d;
        bool b;

        /* a hello reply */
        proto_out_init(&o);
        proto_out_ok(&o, 1, 4);
        proto_out_kv_uint(&o, "version", PROTO_VERSION);
        proto_out_kv_str(&o, "server", "mixd 0.1.0");
        proto_out_str(&o, "model");
        proto_out_map(&o, 2);
        proto_out_kv_str(&o, "name", "tiny-moe");
        proto_out_kv_int(&o, "n_expert", 8);
        proto_out_str(&o, "limits");
        proto_out_limits(&o);
        assert_int_equal(proto_out_frame(&o, &frame, &len), 0);
        decode_frame_reply(frame, len, &rep);
        assert_int_equal(rep.kind, REPLY_OK);
        assert_int_equal(rep.id, 1);
        assert_int_equal(proto_obj_uint(proto_map_get(&rep.root, "version"), &u), 0);
        assert_int_equal(u, PROTO_VERSION);
        assert_int_equal(proto_obj_str(proto_map_get(&rep.root, "server"), &s), 0);
        assert_true(proto_str_eq(s, "mixd 0.1.0"));
        const msgpack_object *model = proto_map_get(&rep.root, "model");
        assert_int_equal(proto_obj_int(proto_map_get(model, "n_expert"), &i), 0);
        assert_int_equal(i, 8);
        const msgpack_object *lim = proto_map_get(&rep.root, "limits");
        assert_int_equal(proto_obj_uint(proto_map_get(lim, "max_frame"), &u), 0);
        assert_int_equal(u, PROTO_MAX_FRAME);
        assert_int_equal(proto_obj_uint(proto_map_get(lim, "max_id"), &u), 0);
        assert_true(u == PROTO_MAX_ID);
        assert_int_equal(proto_obj_uint(proto_map_get(lim, "max_stops"), &u), 0);
        assert_int_equal(u, PROTO_MAX_STOPS);
        /* accessors: absent, wrong type, range */
        assert_null(proto_map_get(&rep.root, "nope"));
        assert_null(proto_map_get(NULL, "id"));
        assert_null(proto_map_get(proto_map_get(&rep.root, "server"), "x"));
        assert_int_equal(proto_obj_uint(NULL, &u), -ENOENT);
        assert_int_equal(proto_obj_str(proto_map_get(&rep.root, "version"), &s), -EBADMSG);
        assert_int_equal(proto_obj_bool(proto_map_get(&rep.root, "ok"), &b), 0);
        assert_true(b);
        assert_int_equal(proto_obj_double(proto_map_get(&rep.root, "version"), &d), 0);
        assert_true(d == 1.0);
        assert_int_equal(proto_obj_bool(proto_map_get(&rep.root, "version"), &b), -EBADMSG);
        reply_free(&rep);

        /* negative and huge numbers through the accessors */
        proto_out_reset(&o);
        proto_out_ok(&o, 2, 3);
        proto_out_kv_int(&o, "neg", -5);
        proto_out_kv_uint(&o, "big", UINT64_MAX);
        proto_out_kv_nil(&o, "none");
        assert_int_equal(proto_out_frame(&o, &frame, &len), 0);
        decode_frame_reply(frame, len, &rep);
        assert_int_equal(proto_obj_uint(proto_map_get(&rep.root, "neg"), &u), -ERANGE);
        assert_int_equal(proto_obj_int(proto_map_get(&rep.root, "neg"), &i), 0);
        assert_int_equal(i, -5);
        assert_int_equal(proto_obj_int(proto_map_get(&rep.root, "big"), &i), -ERANGE);
        assert_int_equal(proto_obj_double(proto_map_get(&rep.root, "none"), &d), -EBADMSG);
        reply_free(&rep);

        /* a wrong field count is caught before anything is sent */
        proto_out_reset(&o);
        proto_out_ok(&o, 3, 2);
        proto_out_kv_uint(&o, "only", 1);
        frame = NULL;
        assert_int_equal(proto_out_frame(&o, &frame, &len), -EBADMSG);
        proto_out_reset(&o);
        proto_out_ok(&o, 3, 0);
        proto_out_kv_uint(&o, "extra", 1);
        assert_int_equal(proto_out_frame(&o, &frame, &len), -EBADMSG);
        assert_null(frame);
        /* and an empty body */
        proto_out_reset(&o);
        assert_int_equal(proto_out_frame(&o, &frame, &len), -EBADMSG);
        proto_out_done(&o);
        proto_out_done(&o);
}

/* A reply that cannot be framed becomes an error reply for its request, never nothing; the
 * largest replies the limits promise (tokenize, score, detokenize) do frame. */
static void test_reply_frame_or_error(void **state) {
        ProtoOut o;
        uint8_t *frame;
        size_t len;
        Reply rep;
        ProtoError err;

        /* a tokenize reply of 70,000 ids: over PROTO_MAX_ELEMENTS */
        proto_out_init(&o);
        proto_out_ok(&o, 41, 1);
        proto_out_str(&o, "tokens");
        proto_out_array(&o, 70000);
        for (uint32_t i = 0; i < 70000; i++)
                proto_out_uint(&o, 31999);
        assert_int_equal(proto_out_frame_or_error(&o, 41, &frame, &len, &err), 1);
        assert_string_equal(err.code, PROTO_ERR_TOO_LARGE);
        decode_frame_reply(frame, len, &rep);
        assert_int_equal(rep.kind, REPLY_ERROR);
        assert_true(rep.has_id && rep.id == 41);
        assert_true(proto_str_eq(rep.error_code, PROTO_ERR_TOO_LARGE));
        assert_non_null(memmem(rep.error_message.ptr, rep.error_message.len, "frame limits", 12));
        reply_free(&rep);

        /* a text of 1 MiB: over PROTO_MAX_FRAME once the envelope is around it */
        char *big = malloc(PROTO_MAX_STRING);
        assert_non_null(big);
        memset(big, '-', PROTO_MAX_STRING);
        proto_out_reset(&o);
        proto_out_ok(&o, 42, 1);
        proto_out_kv_strn(&o, "text", big, PROTO_MAX_STRING);
        assert_int_equal(proto_out_frame_or_error(&o, 42, &frame, &len, NULL), 1);
        decode_frame_reply(frame, len, &rep);
        assert_true(rep.kind == REPLY_ERROR && rep.id == 42 && proto_str_eq(rep.error_code, PROTO_ERR_TOO_LARGE));
        reply_free(&rep);

        /* the largest detokenize, tokenize and score replies the limits allow frame as they are */
        proto_out_reset(&o);
        proto_out_ok(&o, 43, 1);
        proto_out_kv_strn(&o, "text", big, PROTO_MAX_TEXT_REPLY);
        assert_int_equal(proto_out_frame_or_error(&o, PROTO_MAX_ID, &frame, &len, NULL), 0);
        free(frame);
        free(big);
        proto_out_reset(&o);
        proto_out_ok(&o, PROTO_MAX_ID, 1);
        proto_out_str(&o, "tokens");
        proto_out_array(&o, PROTO_MAX_PROMPT_TOKENS);
        for (uint32_t i = 0; i < PROTO_MAX_PROMPT_TOKENS; i++)
                proto_out_uint(&o, PROTO_MAX_TOKEN_ID);
        assert_int_equal(proto_out_frame_or_error(&o, PROTO_MAX_ID, &frame, &len, NULL), 0);
        free(frame);
        proto_out_reset(&o);
        proto_out_ok(&o, PROTO_MAX_ID, 3);
        proto_out_str(&o, "tokens");
        proto_out_array(&o, PROTO_MAX_SCORE_TOKENS);
        for (uint32_t i = 0; i < PROTO_MAX_SCORE_TOKENS; i++)
                proto_out_uint(&o, PROTO_MAX_TOKEN_ID);
        proto_out_str(&o, "logprobs");
        proto_out_array(&o, PROTO_MAX_SCORE_TOKENS - 1);
        for (uint32_t i = 0; i + 1 < PROTO_MAX_SCORE_TOKENS; i++)
                proto_out_double(&o, -1.0 / 3.0);
        proto_out_kv_double(&o, "total_logprob", -12345.678);
        assert_int_equal(proto_out_frame_or_error(&o, PROTO_MAX_ID, &frame, &len, NULL), 0);
        free(frame);
        /* a score reply of 33,000 tokens (2n - 1 elements) is over the element limit */
        proto_out_reset(&o);
        proto_out_ok(&o, 44, 2);
        proto_out_str(&o, "tokens");
        proto_out_array(&o, 33000);
        for (uint32_t i = 0; i < 33000; i++)
                proto_out_uint(&o, 5);
        proto_out_str(&o, "logprobs");
        proto_out_array(&o, 32999);
        for (uint32_t i = 0; i < 32999; i++)
                proto_out_double(&o, -1.0);
        assert_int_equal(proto_out_frame_or_error(&o, 44, &frame, &len, NULL), 1);
        decode_frame_reply(frame, len, &rep);
        assert_true(rep.kind == REPLY_ERROR && rep.id == 44 && proto_str_eq(rep.error_code, PROTO_ERR_TOO_LARGE));
        reply_free(&rep);

        /* a packing failure (latched -ENOMEM) is an internal error */
        proto_out_reset(&o);
        proto_out_ok(&o, 45, 0);
        o.error = -ENOMEM;
        assert_int_equal(proto_out_frame_or_error(&o, 45, &frame, &len, &err), 1);
        assert_string_equal(err.code, PROTO_ERR_INTERNAL);
        decode_frame_reply(frame, len, &rep);
        assert_true(rep.kind == REPLY_ERROR && rep.id == 45 && proto_str_eq(rep.error_code, PROTO_ERR_INTERNAL));
        reply_free(&rep);
        proto_out_done(&o);
}

static void test_reply_malformed(void **state) {
#define BYTES(lit) (lit), sizeof(lit) - 1
        static const struct { const char *bytes; size_t len; } rows[] = {
                { BYTES("\x81\xa2" "id\x01") },                                    /* neither ok, error nor event */
                { BYTES("\x82\xa2" "id\x01\xa2" "ok\xc2") },                       /* ok: false */
                { BYTES("\x82\xa2" "id\x01\xa2" "ok\x01") },                       /* ok: 1 */
                { BYTES("\x82\xa2" "id\xa1" "x\xa2" "ok\xc3") },                  /* id not a number */
                { BYTES("\x82\xa2" "id\xff\xa2" "ok\xc3") },                       /* id negative */
                { BYTES("\x82\xa2" "id\x01\xa5" "error\xa3" "bad") },             /* error not a map */
                { BYTES("\x82\xa2" "id\x01\xa5" "error\x81\xa4" "code\xa1" "x") },  /* no message */
                { BYTES("\x82\xa2" "id\x01\xa5" "event\x01") },                   /* event not a string */
                { BYTES("\x82\xa2" "id\x01\xa5" "event\xa5" "token") },           /* token without text */
                { BYTES("\x83\xa2" "id\x01\xa5" "event\xa5" "token\xa4" "text\xa0") },  /* without token */
                { BYTES("\x82\xa2" "id\x01\xa5" "event\xa4" "done") },            /* done without fields */
        };
        Reply rep;
        ProtoError err;

        for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
                int r = reply_decode((const uint8_t *)rows[i].bytes, rows[i].len, &rep, &err);
                if (r != -EINVAL)
                        fail_msg("row %zu: expected -EINVAL, got %d (%s)", i, r, err.message);
                assert_true(err.fatal);
        }
        assert_int_equal(reply_decode((const uint8_t *)"\x91\x01", 2, &rep, &err), -EBADMSG);
        assert_int_equal(reply_decode((const uint8_t *)"\x81\xa2" "id\x01\x00", 6, &rep, &err), -EBADMSG);
}

/* Random damage to valid bodies must never crash, leak or be half-accepted. */
static void test_mutations(void **state) {
        uint8_t *bodies[32];
        size_t lens[32];
        size_t n = sample_bodies(bodies, lens, 32);
        uint64_t rng = 0x9e3779b97f4a7c15ull;
        size_t accepted = 0;

        for (int iter = 0; iter < 40000; iter++) {
                size_t k = iter % n, len = lens[k];
                uint8_t *b = malloc(len + 8);

                memcpy(b, bodies[k], len);
                for (int m = 0; m < 1 + iter % 4; m++) {
                        rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
                        size_t at = rng % len;
                        switch ((rng >> 32) % 4) {
                        case 0: b[at] ^= (uint8_t)(1u << ((rng >> 40) % 8)); break;
                        case 1: b[at] = (uint8_t)(rng >> 48); break;
                        case 2: len = at + 1; break;
                        default: b[len++] = (uint8_t)(rng >> 24); if (len > lens[k] + 7) len = lens[k]; break;
                        }
                }
                Request req;
                Reply rep;
                ProtoError err;
                int r = request_decode(b, len, &req, &err);
                if (r == 0) {
                        accepted++;
                        uint8_t *frame;
                        size_t flen;
                        ProtoError err2;
                        /* what decodes re-encodes to the same request */
                        Request again;
                        expect_ok(request_encode(&req, &frame, &flen, &err2), &err2);
                        expect_ok(request_decode(frame + 4, flen - 4, &again, &err2), &err2);
                        assert_true(request_equal(&req, &again));
                        request_free(&again);
                        free(frame);
                        request_free(&req);
                } else {
                        assert_non_null(err.code);
                        assert_true(strlen(err.message) > 0);
                }
                if (reply_decode(b, len, &rep, &err) == 0)
                        reply_free(&rep);
                free(b);
        }
        assert_true(accepted > 0);
        for (size_t i = 0; i < n; i++)
                free(bodies[i]);
}

/* ---------------------------------------------------------------------------------------
 * Sample bodies */

static uint8_t *take_body(ProtoOut *o, size_t *ret_len) {
        uint8_t *p = malloc(o->sbuf.size);

        assert_int_equal(o->error, 0);
        assert_non_null(p);
        memcpy(p, o->sbuf.data, o->sbuf.size);
        *ret_len = o->sbuf.size;
        proto_out_reset(o);
        return p;
}

static size_t sample_bodies(uint8_t **bodies, size_t *lens, size_t max) {
        static const char *const stops[] = { "\n\n", "User:" };
        static const uint64_t toks[] = { 1, 415, 2936 };
        ProtoOut o;
        size_t n = 0;

        proto_out_init(&o);
        build(&o, "id", U(1), "op", S("hello"), "version", U(1), NULL);
        bodies[n] = take_body(&o, &lens[n]), n++;
        build(&o, "id", U(2), "op", S("generate"), "prompt", S("ROMEO: But soft"), "session", S("s1"),
              "n_predict", I(-1), "temperature", F(0.5f), "top_k", U(10), "top_p", D(0.9), "min_p", D(0.0),
              "repeat_penalty", F(1.1f), "repeat_last_n", U(64), "seed", U(42), "stop", STRS(stops, 2),
              "logprobs", B(true), "add_bos", B(false), NULL);
        bodies[n] = take_body(&o, &lens[n]), n++;
        build(&o, "id", U(3), "op", S("cancel"), "target", U(2), NULL);
        bodies[n] = take_body(&o, &lens[n]), n++;
        build(&o, "id", U(4), "op", S("tokenize"), "text", S("To be, or not"), "add_bos", B(true), NULL);
        bodies[n] = take_body(&o, &lens[n]), n++;
        build(&o, "id", U(5), "op", S("detokenize"), "tokens", TOKS(toks, 3), NULL);
        bodies[n] = take_body(&o, &lens[n]), n++;
        build(&o, "id", U(6), "op", S("score"), "text", S("caf\xc3\xa9"), NULL);
        bodies[n] = take_body(&o, &lens[n]), n++;
        build(&o, "id", U(7), "op", S("session.open"), NULL);
        bodies[n] = take_body(&o, &lens[n]), n++;
        build(&o, "id", U(8), "op", S("session.close"), "session", S("s1"), NULL);
        bodies[n] = take_body(&o, &lens[n]), n++;
        build(&o, "id", U(9), "op", S("session.list"), NULL);
        bodies[n] = take_body(&o, &lens[n]), n++;
        build(&o, "id", U(PROTO_MAX_ID), "op", S("status"), NULL);
        bodies[n] = take_body(&o, &lens[n]), n++;
        build(&o, "id", U(11), "op", S("experts"), NULL);
        bodies[n] = take_body(&o, &lens[n]), n++;
        build(&o, "id", U(12), "op", S("shutdown"), NULL);
        bodies[n] = take_body(&o, &lens[n]), n++;

        ProtoError e = { .code = PROTO_ERR_BAD_REQUEST, .has_id = true, .id = 3 };
        strcpy(e.message, "field 'x' out of range");
        proto_out_error(&o, &e);
        bodies[n] = take_body(&o, &lens[n]), n++;
        TokenEvent t = { .id = 2, .text = " soft", .text_len = 5, .token = 2936, .has_logprob = true, .logprob = -0.5 };
        proto_out_token_event(&o, &t);
        bodies[n] = take_body(&o, &lens[n]), n++;
        DoneEvent d = { .id = 2, .stop_reason = PROTO_STOP_STOP, .n_prompt = 5, .n_generated = 9, .prompt_ms = 1.5,
                        .generate_ms = 20.25, .session = "s1" };
        proto_out_done_event(&o, &d);
        bodies[n] = take_body(&o, &lens[n]), n++;
        proto_out_ok(&o, 4, 1);
        proto_out_str(&o, "tokens");
        proto_out_array(&o, 3);
        for (int i = 0; i < 3; i++)
                proto_out_uint(&o, toks[i]);
        bodies[n] = take_body(&o, &lens[n]), n++;
        proto_out_done(&o);
        assert_true(n <= max);
        return n;
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_frame_header),
                cmocka_unit_test(test_frame_encode),
                cmocka_unit_test(test_reader_chunks),
                cmocka_unit_test(test_reader_exact_max),
                cmocka_unit_test(test_reader_bad_headers),
                cmocka_unit_test(test_reader_memory),
                cmocka_unit_test(test_msgcheck_depth),
                cmocka_unit_test(test_msgcheck_elements),
                cmocka_unit_test(test_msgcheck_strings),
                cmocka_unit_test(test_msgcheck_shapes),
                cmocka_unit_test(test_msgcheck_truncated_everywhere),
                cmocka_unit_test(test_ops_defaults),
                cmocka_unit_test(test_generate_int_ranges),
                cmocka_unit_test(test_generate_float_ranges),
                cmocka_unit_test(test_generate_other_fields),
                cmocka_unit_test(test_text_sizes),
                cmocka_unit_test(test_utf8),
                cmocka_unit_test(test_ids_and_targets),
                cmocka_unit_test(test_tokens),
                cmocka_unit_test(test_wrong_types),
                cmocka_unit_test(test_unknown_and_duplicate_fields),
                cmocka_unit_test(test_request_roundtrip),
                cmocka_unit_test(test_request_encode_refuses),
                cmocka_unit_test(test_error_reply),
                cmocka_unit_test(test_events),
                cmocka_unit_test(test_ok_reply_builder),
                cmocka_unit_test(test_reply_frame_or_error),
                cmocka_unit_test(test_reply_malformed),
                cmocka_unit_test(test_mutations),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
