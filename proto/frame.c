/* proto/frame.c — frame headers, the FrameReader and frame_encode (see frame.h). A FrameReader
 * is used by one thread at a time; the rest is pure. */
#include "frame.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

int frame_header_decode(const uint8_t hdr[PROTO_FRAME_HEADER], uint32_t *ret_len) {
        uint32_t len = (uint32_t)hdr[0] << 24 | (uint32_t)hdr[1] << 16 | (uint32_t)hdr[2] << 8 | hdr[3];

        if (len == 0)
                return -EBADMSG;
        if (len > PROTO_MAX_FRAME)
                return -E2BIG;
        *ret_len = len;
        return 0;
}

void frame_header_encode(uint32_t len, uint8_t ret_hdr[PROTO_FRAME_HEADER]) {
        ret_hdr[0] = (uint8_t)(len >> 24);
        ret_hdr[1] = (uint8_t)(len >> 16);
        ret_hdr[2] = (uint8_t)(len >> 8);
        ret_hdr[3] = (uint8_t)len;
}

void frame_reader_init(FrameReader *r) {
        *r = (FrameReader){ 0 };
}

void frame_reader_done(FrameReader *r) {
        if (!r)
                return;
        free(r->buf);
        *r = (FrameReader){ 0 };
}

static bool frame_complete(const FrameReader *r) {
        return r->n_hdr == PROTO_FRAME_HEADER && r->n_body == r->body_len;
}

/* Start over after a frame went out; a buffer grown for a big frame is not kept. */
static void frame_reader_reset(FrameReader *r) {
        if (r->cap > PROTO_READER_KEEP) {
                free(r->buf);
                r->buf = NULL;
                r->cap = 0;
        }
        r->n_hdr = 0;
        r->body_len = 0;
        r->n_body = 0;
        r->handed_out = false;
}

/* Make room for `need` body bytes (need <= body_len <= PROTO_MAX_FRAME): grow geometrically,
 * but never past the announced length. */
static int frame_reader_reserve(FrameReader *r, uint32_t need) {
        uint32_t cap;
        uint8_t *p;

        if (need <= r->cap)
                return 0;
        cap = r->cap < 4096 ? 4096 : r->cap;
        while (cap < need)
                cap *= 2;
        if (cap > r->body_len)
                cap = r->body_len;
        p = realloc(r->buf, cap);
        if (!p)
                return -ENOMEM;
        r->buf = p;
        r->cap = cap;
        return 0;
}

int frame_reader_feed(FrameReader *r, const void *data, size_t len, size_t *ret_consumed) {
        const uint8_t *p = data;
        size_t used = 0;
        int k;

        if (r->error < 0)
                return r->error;
        if (r->handed_out)
                frame_reader_reset(r);
        else if (frame_complete(r)) {
                *ret_consumed = 0;
                return 1;
        }

        while (r->n_hdr < PROTO_FRAME_HEADER && used < len)
                r->hdr[r->n_hdr++] = p[used++];
        if (r->n_hdr < PROTO_FRAME_HEADER) {
                *ret_consumed = used;
                return 0;
        }
        if (r->body_len == 0) {
                k = frame_header_decode(r->hdr, &r->body_len);
                if (k < 0) {
                        r->bad_len = (uint32_t)r->hdr[0] << 24 | (uint32_t)r->hdr[1] << 16 |
                                     (uint32_t)r->hdr[2] << 8 | r->hdr[3];
                        return (r->error = k);
                }
        }

        size_t take = len - used;
        if (take > r->body_len - r->n_body)
                take = r->body_len - r->n_body;
        if (take > 0) {
                k = frame_reader_reserve(r, r->n_body + (uint32_t)take);
                if (k < 0)
                        return (r->error = k);
                memcpy(r->buf + r->n_body, p + used, take);
                r->n_body += (uint32_t)take;
                used += take;
        }
        *ret_consumed = used;
        return frame_complete(r) ? 1 : 0;
}

int frame_reader_next(FrameReader *r, const uint8_t **ret_body, size_t *ret_len) {
        if (r->error < 0)
                return r->error;
        if (r->handed_out || !frame_complete(r))
                return 0;
        r->handed_out = true;
        *ret_body = r->buf;
        *ret_len = r->body_len;
        return 1;
}

size_t frame_reader_buffered(const FrameReader *r) {
        return r->n_hdr + (size_t)r->n_body;
}

bool frame_reader_partial(const FrameReader *r) {
        return !r->handed_out && r->n_hdr > 0;
}

void frame_reader_error(const FrameReader *r, ProtoError *ret_err) {
        *ret_err = (ProtoError){ 0 };  /* no request id: the frame was never read */
        switch (r->error) {
        case 0:
                proto_error_set(ret_err, 0, NULL, false, "no error");
                break;
        case -E2BIG:
                proto_error_set(ret_err, r->error, PROTO_ERR_TOO_LARGE, true,
                                "frame of %u bytes exceeds the limit of %u bytes", r->bad_len,
                                PROTO_MAX_FRAME);
                break;
        case -EBADMSG:
                proto_error_set(ret_err, r->error, PROTO_ERR_BAD_FRAME, true, "frame length 0");
                break;
        case -ENOMEM:
                proto_error_set(ret_err, r->error, PROTO_ERR_BAD_FRAME, true, "out of memory reading a frame");
                break;
        default:
                proto_error_set(ret_err, r->error, PROTO_ERR_BAD_FRAME, true, "frame not read (errno %d)",
                                -r->error);
                break;
        }
}

int frame_encode_bytes(const void *body, size_t len, uint8_t **ret_frame, size_t *ret_len) {
        uint8_t *f;

        if (len == 0)
                return -EINVAL;
        if (len > PROTO_MAX_FRAME)
                return -E2BIG;
        f = malloc(PROTO_FRAME_HEADER + len);
        if (!f)
                return -ENOMEM;
        frame_header_encode((uint32_t)len, f);
        memcpy(f + PROTO_FRAME_HEADER, body, len);
        *ret_frame = f;
        *ret_len = PROTO_FRAME_HEADER + len;
        return 0;
}

int frame_encode(const msgpack_sbuffer *body, uint8_t **ret_frame, size_t *ret_len) {
        return frame_encode_bytes(body->data, body->size, ret_frame, ret_len);
}
