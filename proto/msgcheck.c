/* proto/msgcheck.c — the bounded msgpack walker (see msgcheck.h). Iterative, with a fixed stack
 * of PROTO_MAX_DEPTH levels; never allocates. Any thread. */
#include "msgcheck.h"

#include <errno.h>
#include <stdint.h>

static uint64_t be(const uint8_t *p, unsigned n) {
        uint64_t v = 0;

        for (unsigned i = 0; i < n; i++)
                v = v << 8 | p[i];
        return v;
}

static int truncated(ProtoError *err, size_t at) {
        return proto_error_set(err, -EBADMSG, PROTO_ERR_BAD_FRAME, true, "msgpack truncated at byte %zu", at);
}

int msgcheck(const void *buf, size_t len, ProtoError *err) {
        const uint8_t *p = buf;
        /* left[d]: objects still to read at level d; level 0 holds just the top-level object,
         * the children of a container read at level d are at level d + 1 (its depth). */
        uint64_t left[PROTO_MAX_DEPTH + 1];
        unsigned d = 0;
        uint64_t elements = 0;
        size_t pos = 0;

        if (err)
                *err = (ProtoError){ 0 };
        if (len == 0)
                return truncated(err, 0);
        if (!((p[0] >= 0x80 && p[0] <= 0x8f) || p[0] == 0xde || p[0] == 0xdf))
                return proto_error_set(err, -EBADMSG, PROTO_ERR_BAD_FRAME, true,
                                       "top level is not a map (byte 0x%02x)", p[0]);

        left[0] = 1;
        for (;;) {
                size_t at = pos;
                uint8_t b = p[pos++];
                uint64_t payload = 0;  /* bytes that follow the header (scalars, str, bin) */
                uint64_t count = 0;    /* array elements or map entries */
                unsigned hdr = 0;      /* bytes of the length field that follows b */
                int container = 0;     /* 1 array, 2 map */
                int blob = 0;          /* str or bin: check the length against PROTO_MAX_STRING */

                left[d]--;
                if (b <= 0x7f || b >= 0xe0 || b == 0xc0 || b == 0xc2 || b == 0xc3)
                        ;                                     /* fixint, nil, bool */
                else if (b <= 0x8f)
                        container = 2, count = b & 0x0f;      /* fixmap */
                else if (b <= 0x9f)
                        container = 1, count = b & 0x0f;      /* fixarray */
                else if (b <= 0xbf)
                        blob = 1, payload = b & 0x1f;         /* fixstr */
                else
                        switch (b) {
                        case 0xc4: case 0xd9: blob = 1, hdr = 1; break;   /* bin8, str8 */
                        case 0xc5: case 0xda: blob = 1, hdr = 2; break;   /* bin16, str16 */
                        case 0xc6: case 0xdb: blob = 1, hdr = 4; break;   /* bin32, str32 */
                        case 0xca: payload = 4; break;                    /* float32 */
                        case 0xcb: payload = 8; break;                    /* float64 */
                        case 0xcc: case 0xd0: payload = 1; break;         /* (u)int8 */
                        case 0xcd: case 0xd1: payload = 2; break;         /* (u)int16 */
                        case 0xce: case 0xd2: payload = 4; break;         /* (u)int32 */
                        case 0xcf: case 0xd3: payload = 8; break;         /* (u)int64 */
                        case 0xdc: container = 1, hdr = 2; break;         /* array16 */
                        case 0xdd: container = 1, hdr = 4; break;         /* array32 */
                        case 0xde: container = 2, hdr = 2; break;         /* map16 */
                        case 0xdf: container = 2, hdr = 4; break;         /* map32 */
                        case 0xc7: case 0xc8: case 0xc9:
                        case 0xd4: case 0xd5: case 0xd6: case 0xd7: case 0xd8:
                                return proto_error_set(err, -EBADMSG, PROTO_ERR_BAD_FRAME, true,
                                                       "msgpack ext type at byte %zu", at);
                        default: /* 0xc1 */
                                return proto_error_set(err, -EBADMSG, PROTO_ERR_BAD_FRAME, true,
                                                       "invalid msgpack byte 0x%02x at byte %zu", b, at);
                        }

                if (hdr > 0) {
                        if (len - pos < hdr)
                                return truncated(err, at);
                        if (container)
                                count = be(p + pos, hdr);
                        else
                                payload = be(p + pos, hdr);
                        pos += hdr;
                }
                if (blob && payload > PROTO_MAX_STRING)
                        return proto_error_set(err, -E2BIG, PROTO_ERR_TOO_LARGE, true,
                                               "string of %llu bytes at byte %zu exceeds %u",
                                               (unsigned long long)payload, at, PROTO_MAX_STRING);
                if (payload > len - pos)
                        return truncated(err, at);
                pos += payload;

                if (container) {
                        uint64_t objects = container == 2 ? 2 * count : count;

                        if (d + 1 > PROTO_MAX_DEPTH)
                                return proto_error_set(err, -E2BIG, PROTO_ERR_TOO_LARGE, true,
                                                       "msgpack nesting deeper than %u at byte %zu",
                                                       PROTO_MAX_DEPTH, at);
                        elements += count;
                        if (elements > PROTO_MAX_ELEMENTS)
                                return proto_error_set(err, -E2BIG, PROTO_ERR_TOO_LARGE, true,
                                                       "more than %u msgpack elements (at byte %zu)",
                                                       PROTO_MAX_ELEMENTS, at);
                        /* every object takes at least one byte */
                        if (objects > len - pos)
                                return truncated(err, at);
                        if (objects > 0)
                                left[++d] = objects;
                }

                while (d > 0 && left[d] == 0)
                        d--;
                if (d == 0 && left[0] == 0)
                        break;
                if (pos >= len)
                        return truncated(err, pos);
        }

        if (pos != len)
                return proto_error_set(err, -EBADMSG, PROTO_ERR_BAD_FRAME, true,
                                       "%zu trailing bytes after the top-level map", len - pos);
        return 0;
}
