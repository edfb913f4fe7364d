/* proto/frame.h — the framing layer: a 4-byte big-endian body length, then the body. Owns the
 * header rules, the FrameReader that cuts a byte stream into bodies, and frame_encode. A
 * FrameReader belongs to one connection and is used by one thread at a time (the daemon's loop
 * thread, or the client); the free functions may be called from any thread. */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <msgpack.h>

#include "proto_limits.h"
#include "proto_error.h"

/* Decode a header. Returns 0 and sets *ret_len (1..PROTO_MAX_FRAME); -EBADMSG for a zero
 * length, -E2BIG above PROTO_MAX_FRAME. *ret_len is untouched on failure. */
int frame_header_decode(const uint8_t hdr[PROTO_FRAME_HEADER], uint32_t *ret_len);
void frame_header_encode(uint32_t len, uint8_t ret_hdr[PROTO_FRAME_HEADER]);

/* Cuts a stream into frame bodies. Fields are private; embed it (e.g. in a Conn) and use the
 * functions below. Memory held is at most PROTO_FRAME_HEADER + PROTO_MAX_FRAME bytes, and
 * grows with the bytes actually received (a header announcing 1 MiB does not allocate it). */
typedef struct FrameReader {
        uint8_t hdr[PROTO_FRAME_HEADER]; /* header bytes received so far */
        uint32_t n_hdr;                  /* 0..PROTO_FRAME_HEADER */
        uint32_t body_len;               /* announced body length, once n_hdr is complete */
        uint32_t n_body;                 /* body bytes received, <= body_len */
        uint8_t *buf;                    /* [cap] body bytes */
        uint32_t cap;                    /* bytes allocated, <= PROTO_MAX_FRAME */
        bool handed_out;                 /* the complete frame went out through next() */
        int error;                       /* sticky negative errno once the stream is bad */
        uint32_t bad_len;                /* the rejected header value, for the error message */
} FrameReader;

void frame_reader_init(FrameReader *r);
/* Releases the buffer; r may then be init'ed again. Accepts a zeroed or init'ed reader. */
void frame_reader_done(FrameReader *r);

/* Take bytes from a chunk of the stream, stopping at the end of one complete frame (the rest of
 * the chunk is left for the next call). Sets *ret_consumed (possibly 0 when a complete frame is
 * still waiting for frame_reader_next). Returns 1 when a complete frame is ready, 0 when more
 * bytes are needed, or a negative errno at the first bad header, checked as soon as its 4 bytes
 * are in and before any body byte is taken: -EBADMSG (length 0), -E2BIG (over PROTO_MAX_FRAME);
 * -ENOMEM. Errors are sticky (every later call returns the same one); the caller replies once
 * (see frame_reader_error) and closes. Typical loop over a chunk p[len]:
 *
 *         while (len > 0) {
 *                 r = frame_reader_feed(fr, p, len, &n);
 *                 if (r < 0) { reply error; close; break; }
 *                 p += n, len -= n;
 *                 if (frame_reader_next(fr, &body, &body_len) > 0)
 *                         handle(body, body_len);
 *         }
 */
int frame_reader_feed(FrameReader *r, const void *data, size_t len, size_t *ret_consumed);

/* Hand out the complete frame, once. Returns 1 and the body (valid until the next
 * frame_reader_feed or frame_reader_done), or 0 when no complete frame is waiting (outputs
 * untouched), or the sticky error. */
int frame_reader_next(FrameReader *r, const uint8_t **ret_body, size_t *ret_len);

/* Bytes currently buffered (header + body of the frame in progress). */
size_t frame_reader_buffered(const FrameReader *r);
/* true while bytes of a frame have arrived that were not handed out yet: a stream that ends
 * now ends in the middle of a frame (or with a complete frame not yet taken). */
bool frame_reader_partial(const FrameReader *r);

/* Describe the reader's sticky error for the error reply ("too_large" / "bad_frame", fatal,
 * has_id false): every field of *ret_err is set. */
void frame_reader_error(const FrameReader *r, ProtoError *ret_err);

/* Prepend the header to len body bytes: *ret_frame is malloc'd (free() it), *ret_len =
 * PROTO_FRAME_HEADER + len. -EINVAL for an empty body, -E2BIG above PROTO_MAX_FRAME, -ENOMEM.
 * Outputs untouched on failure. */
int frame_encode_bytes(const void *body, size_t len, uint8_t **ret_frame, size_t *ret_len);
/* Same for a body packed into an sbuffer (the sbuffer is not modified). */
int frame_encode(const msgpack_sbuffer *body, uint8_t **ret_frame, size_t *ret_len);
