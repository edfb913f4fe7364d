/* tests/fuzz/fuzz_frame.c — libFuzzer target for proto/: the input is a byte stream cut into
 * chunks (its first byte picks how) and fed through a FrameReader; every complete frame goes
 * through request_decode and reply_decode. Checks the contracts, not just memory safety: a
 * refused frame always yields an encodable error reply, a stream error is fatal and sticky,
 * and an accepted request re-encodes to an equal request. Single-threaded (one libFuzzer
 * process).
 *
 * Built by tests/fuzz/Makefile (`make -C tests/fuzz run-frame`), or by hand from the root:
 *   clang -fsanitize=fuzzer,address,undefined -std=gnu17 -D_GNU_SOURCE -g -O1 \
 *         -iquote proto tests/fuzz/fuzz_frame.c proto/frame.c proto/msg.c proto/msgcheck.c \
 *         proto/proto_error.c -lmsgpackc -lm \
 *         -o build/fuzz/fuzz_frame
 *   build/fuzz/fuzz_frame -max_total_time=300 build/fuzz/corpus-frame tests/fuzz/corpus_frame
 * With -DFUZZ_FRAME_MAKE_SEEDS (and without -fsanitize=fuzzer) it is instead the program that
 * wrote the committed seeds in tests/fuzz/corpus_frame/ (first byte: chunking mode):
 *   clang -std=gnu17 -D_GNU_SOURCE -DFUZZ_FRAME_MAKE_SEEDS -iquote proto tests/fuzz/fuzz_frame.c \
 *         proto/frame.c proto/msg.c proto/msgcheck.c proto/proto_error.c -lmsgpackc -lm \
 *         -o build/fuzz/fuzz_frame_seeds
 *   build/fuzz/fuzz_frame_seeds tests/fuzz/corpus_frame */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "frame.h"
#include "msg.h"

/* A crash libFuzzer will report, for a broken contract rather than a memory error. */
#define CHECK(x)                                  \
        do {                                      \
                if (!(x))                         \
                        __builtin_trap();         \
        } while (0)

#ifndef FUZZ_FRAME_MAKE_SEEDS

static void check_error_reply(const ProtoError *err) {
        uint8_t *frame = NULL;
        size_t len = 0;

        CHECK(err->code != NULL);
        CHECK(err->message[0] != 0);
        CHECK(proto_error_encode(err, &frame, &len) == 0);
        CHECK(len > PROTO_FRAME_HEADER);
        free(frame);
}

static void handle_body(const uint8_t *body, size_t len) {
        Request req, again;
        Reply rep;
        ProtoError err, err2;
        uint8_t *frame = NULL;
        size_t flen = 0;

        CHECK(len >= 1 && len <= PROTO_MAX_FRAME);
        if (request_decode(body, len, &req, &err) == 0) {
                CHECK(req.id <= PROTO_MAX_ID);
                CHECK(request_encode(&req, &frame, &flen, &err2) == 0);
                CHECK(request_decode(frame + PROTO_FRAME_HEADER, flen - PROTO_FRAME_HEADER, &again, &err2) == 0);
                CHECK(request_equal(&req, &again));
                request_free(&again);
                request_free(&req);
                free(frame);
        } else {
                CHECK(!err.has_id || err.id <= PROTO_MAX_ID);
                check_error_reply(&err);
        }
        if (reply_decode(body, len, &rep, &err) == 0)
                reply_free(&rep);
}

/* How big the next chunk is: mode 0 = everything at once, 1 = byte by byte, 2..255 =
 * pseudo-random sizes up to 4 * mode bytes from an xorshift seeded by the mode. */
static size_t next_chunk(uint8_t mode, uint32_t *rng) {
        if (mode == 0)
                return SIZE_MAX;
        if (mode == 1)
                return 1;
        *rng ^= *rng << 13;
        *rng ^= *rng >> 17;
        *rng ^= *rng << 5;
        return 1 + *rng % (4u * mode);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        FrameReader fr;
        uint8_t mode;
        uint32_t rng;
        int failed = 0;

        if (size < 1)
                return 0;
        mode = data[0];
        rng = 0x9e3779b9u ^ mode;
        data++, size--;

        frame_reader_init(&fr);
        while (size > 0 && !failed) {
                size_t c = next_chunk(mode, &rng);

                if (c > size)
                        c = size;
                const uint8_t *p = data;
                size_t left = c;
                data += c, size -= c;
                while (left > 0) {
                        const uint8_t *body;
                        size_t body_len, used = 0;
                        int r = frame_reader_feed(&fr, p, left, &used);

                        CHECK(frame_reader_buffered(&fr) <= PROTO_FRAME_HEADER + PROTO_MAX_FRAME);
                        if (r < 0) {
                                ProtoError err;

                                CHECK(r == -E2BIG || r == -EBADMSG);
                                frame_reader_error(&fr, &err);
                                CHECK(err.fatal);
                                check_error_reply(&err);
                                /* sticky */
                                CHECK(frame_reader_feed(&fr, p, left, &used) == r);
                                CHECK(frame_reader_next(&fr, &body, &body_len) == r);
                                failed = 1;
                                break;
                        }
                        CHECK(used <= left);
                        p += used, left -= used;
                        r = frame_reader_next(&fr, &body, &body_len);
                        if (r > 0) {
                                handle_body(body, body_len);
                                CHECK(frame_reader_next(&fr, &body, &body_len) == 0);
                        } else
                                CHECK(r == 0 && used > 0);  /* progress whenever no frame is waiting */
                }
        }
        frame_reader_done(&fr);
        return 0;
}

#else /* FUZZ_FRAME_MAKE_SEEDS: write one seed per op (and a few replies) */

static void write_seed(const char *dir, const char *name, uint8_t mode, const uint8_t *frame, size_t len) {
        char path[512];
        FILE *f;

        snprintf(path, sizeof(path), "%s/%s", dir, name);
        f = fopen(path, "wb");
        if (!f || fputc(mode, f) == EOF || fwrite(frame, 1, len, f) != len || fclose(f) != 0) {
                perror(path);
                exit(1);
        }
}

static char *xstrdup(const char *s) {
        char *p = strdup(s);

        if (!p)
                exit(1);
        return p;
}

int main(int argc, char **argv) {
        ProtoError err;
        uint8_t *frame;
        size_t len;

        if (argc != 2) {
                fprintf(stderr, "usage: %s DIR\n", argv[0]);
                return 2;
        }
        for (ProtoOp op = 0; op < PROTO_OP_COUNT_; op++) {
                Request r;
                char name[64];

                request_init(&r, op, 1 + op);
                switch (op) {
                case PROTO_OP_HELLO:
                        r.hello.version = PROTO_VERSION;
                        break;
                case PROTO_OP_GENERATE:
                        r.generate.prompt = xstrdup("ROMEO: But soft, what light");
                        r.generate.prompt_len = strlen(r.generate.prompt);
                        r.generate.session = xstrdup("s-1");
                        r.generate.has_seed = true;
                        r.generate.seed = 42;
                        r.generate.temperature = 0.5f;
                        r.generate.n_stop = 2;
                        r.generate.stop[0] = xstrdup("\n\n");
                        r.generate.stop_len[0] = 2;
                        r.generate.stop[1] = xstrdup("JULIET:");
                        r.generate.stop_len[1] = 7;
                        r.generate.logprobs = true;
                        break;
                case PROTO_OP_CANCEL:
                        r.cancel.target = 2;
                        break;
                case PROTO_OP_TOKENIZE:
                case PROTO_OP_SCORE:
                        r.tokenize.text = xstrdup("To be, or not to be: caf\xc3\xa9");
                        r.tokenize.text_len = strlen(r.tokenize.text);
                        break;
                case PROTO_OP_DETOKENIZE:
                        r.detokenize.tokens = malloc(3 * sizeof(int32_t));
                        if (!r.detokenize.tokens)
                                return 1;
                        r.detokenize.tokens[0] = 1;
                        r.detokenize.tokens[1] = 415;
                        r.detokenize.tokens[2] = 2936;
                        r.detokenize.n_tokens = 3;
                        break;
                case PROTO_OP_SESSION_CLOSE:
                        r.session_close.session = xstrdup("s-1");
                        break;
                default:
                        break;
                }
                if (request_encode(&r, &frame, &len, &err) < 0) {
                        fprintf(stderr, "%s: %s\n", proto_op_name(op), err.message);
                        return 1;
                }
                snprintf(name, sizeof(name), "req-%s", proto_op_name(op));
                /* vary the chunking across seeds: whole, byte by byte, random */
                write_seed(argv[1], name, (uint8_t)(op % 3 == 2 ? 7 : op % 3), frame, len);
                free(frame);
                request_free(&r);
        }

        /* a stream of two requests in one input, and the daemon's messages */
        {
                ProtoOut o;
                uint8_t *f2;
                size_t l2;
                TokenEvent t = { .id = 2, .text = " soft", .text_len = 5, .token = 2936, .has_logprob = true,
                                 .logprob = -0.5 };
                DoneEvent d = { .id = 2, .stop_reason = PROTO_STOP_STOP, .n_prompt = 8, .n_generated = 12,
                                .prompt_ms = 3.5, .generate_ms = 40.25, .session = "s-1" };
                Request r;

                request_init(&r, PROTO_OP_STATUS, 9);
                request_encode(&r, &frame, &len, &err);
                request_init(&r, PROTO_OP_CANCEL, 10);
                r.cancel.target = 9;
                request_encode(&r, &f2, &l2, &err);
                frame = realloc(frame, len + l2);
                if (!frame)
                        return 1;
                memcpy(frame + len, f2, l2);
                write_seed(argv[1], "stream-two", 0, frame, len + l2);
                free(frame);
                free(f2);

                proto_out_init(&o);
                proto_out_token_event(&o, &t);
                proto_out_frame(&o, &frame, &len);
                write_seed(argv[1], "event-token", 1, frame, len);
                free(frame);
                proto_out_reset(&o);
                proto_out_done_event(&o, &d);
                proto_out_frame(&o, &frame, &len);
                write_seed(argv[1], "event-done", 0, frame, len);
                free(frame);
                proto_out_reset(&o);
                proto_error_set(&err, -EINVAL, PROTO_ERR_BAD_REQUEST, false, "field 'top_k' out of range");
                err.has_id = true;
                err.id = 4;
                proto_out_error(&o, &err);
                proto_out_frame(&o, &frame, &len);
                write_seed(argv[1], "reply-error", 0, frame, len);
                free(frame);
                proto_out_reset(&o);
                proto_out_ok(&o, 1, 2);
                proto_out_kv_uint(&o, "version", PROTO_VERSION);
                proto_out_str(&o, "limits");
                proto_out_limits(&o);
                proto_out_frame(&o, &frame, &len);
                write_seed(argv[1], "reply-hello", 0, frame, len);
                free(frame);
                proto_out_done(&o);
        }
        return 0;
}

#endif
