/* proto/msgcheck.h — a bounded structural check of raw msgpack bytes, run on every body before
 * msgpack_unpack sees it (msgpack-c allocates from announced counts, so this is what bounds the
 * memory a frame can cost). Pure and allocation-free; any thread. */
#pragma once
#include <stddef.h>

#include "proto_error.h"

/* Accept exactly one msgpack map filling buf[len]. Rejects:
 *   -EBADMSG ("bad_frame"): empty or truncated input, bytes after the top-level object, a
 *            top level that is not a map, ext/fixext types, the never-used byte 0xc1, a
 *            container announcing more objects than bytes remain;
 *   -E2BIG   ("too_large"): nesting deeper than PROTO_MAX_DEPTH, more than PROTO_MAX_ELEMENTS
 *            array elements + map entries in total, a str/bin over PROTO_MAX_STRING bytes.
 * The body length itself is the framing's business (PROTO_MAX_FRAME). err (may be NULL) is
 * reset, then on failure gets the code, a message with the byte offset, and fatal = true.
 * Returns 0 when acceptable. */
int msgcheck(const void *buf, size_t len, ProtoError *err);
