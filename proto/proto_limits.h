/* proto/limits.h — every limit of the mixd wire protocol, in one place, with units. Constants
 * only; any thread. Include it as "limits.h" from proto/ (engine/ has its own limits.h). */
#pragma once

/* --- versioning --- */
#define PROTO_VERSION           1u           /* major version; a hello with another one is refused */

/* --- framing: a 4-byte big-endian body length, then the body --- */
#define PROTO_FRAME_HEADER      4u           /* bytes of the length prefix */
#define PROTO_MAX_FRAME         (1u << 20)   /* bytes of one frame's body (header excluded); 0 is invalid */
#define PROTO_READER_KEEP       (64u << 10)  /* bytes of buffer a FrameReader keeps between frames */

/* --- msgpack structure of one body (checked by msgcheck before anything is unpacked) --- */
#define PROTO_MAX_DEPTH         8u           /* nesting of arrays/maps; the top-level map is depth 1 */
#define PROTO_MAX_TOKENS_ARRAY  65536u       /* token ids in one tokens array (request or reply) */
#define PROTO_ENVELOPE_ELEMENTS 256u         /* room beside a full tokens array for the other fields */
/* Array elements plus map entries (a key/value pair counts once) in one body, all levels summed.
 * A full tokens array must fit, with the envelope around it, so this is not a round 65536. */
#define PROTO_MAX_ELEMENTS      (PROTO_MAX_TOKENS_ARRAY + PROTO_ENVELOPE_ELEMENTS)
#define PROTO_MAX_STRING        (1u << 20)   /* bytes of one str or bin value */

/* --- request fields --- */
#define PROTO_MAX_ID            ((1ull << 53) - 1) /* request ids are 0..this (exact in a double) */
/* bytes of a generate prompt or a tokenize/score text; the rest of the frame is left for the
 * other fields (16 stops of 256 bytes and the envelope need < 8 KiB) */
#define PROTO_MAX_PROMPT_BYTES  (PROTO_MAX_FRAME - (64u << 10))
#define PROTO_MAX_TOKEN_ID      2147483647u  /* token ids travel as uint, 0..INT32_MAX */
#define PROTO_MAX_STOPS         16u          /* stop strings per generate request */
#define PROTO_MAX_STOP_LEN      256u         /* bytes per stop string (at least 1) */
#define PROTO_MAX_NEW_TOKENS    (1 << 20)    /* n_predict is -1 (until EOS/stop) .. this */
#define PROTO_MAX_SESSION_ID    64u          /* bytes of a session id (at least 1, printable ASCII) */
#define PROTO_MAX_TOP_K         (1 << 20)    /* top_k is 0 (off) .. this */
#define PROTO_MAX_REPEAT_LAST_N 4096         /* tokens; repeat_last_n is 0 .. this */
#define PROTO_MAX_TEMPERATURE   100.0        /* temperature is 0 (greedy) .. this */
#define PROTO_MAX_REPEAT_PENALTY 100.0       /* repeat_penalty is > 0 .. this */

/* --- error replies --- */
#define PROTO_MAX_ERROR_MESSAGE 256u         /* bytes of an error message, NUL included */

/* --- what one reply can carry (derived from the frame limits above, so a reply within these
 * always frames; the daemon refuses a request whose reply would not, before computing it) --- */
/* tokens of one prompt or text the daemon accepts (its max-prompt-tokens setting is at most
 * this): a tokenize reply echoes every one of them in one tokens array */
#define PROTO_MAX_PROMPT_TOKENS PROTO_MAX_TOKENS_ARRAY
/* tokens of a score reply: its tokens (n) and logprobs (n - 1) arrays share PROTO_MAX_ELEMENTS
 * with the envelope, so n is at most half of a tokens array plus one: 32768 */
#define PROTO_MAX_SCORE_TOKENS  ((PROTO_MAX_TOKENS_ARRAY + 1u) / 2u)
/* bytes of a detokenize reply's text: what a text sent in may hold */
#define PROTO_MAX_TEXT_REPLY    PROTO_MAX_PROMPT_BYTES
/* bytes a reply needs besides its arrays or text: map and array headers, the id, ok and the
 * field names (well under this) */
#define PROTO_REPLY_ENVELOPE    256u

/* worst case encodings: a token id (uint32) takes 5 bytes, a logprob (float64) 9 */
_Static_assert(PROTO_MAX_PROMPT_TOKENS * 5ull + PROTO_REPLY_ENVELOPE <= PROTO_MAX_FRAME,
               "a tokenize reply of PROTO_MAX_PROMPT_TOKENS ids must fit one frame");
_Static_assert(PROTO_MAX_PROMPT_TOKENS <= PROTO_MAX_TOKENS_ARRAY, "a tokenize reply must pass msgcheck");
_Static_assert(PROTO_MAX_SCORE_TOKENS * 14ull + PROTO_REPLY_ENVELOPE <= PROTO_MAX_FRAME,
               "a score reply of PROTO_MAX_SCORE_TOKENS tokens must fit one frame");
_Static_assert(2ull * PROTO_MAX_SCORE_TOKENS - 1 + PROTO_ENVELOPE_ELEMENTS <= PROTO_MAX_ELEMENTS,
               "a score reply must pass msgcheck's element count");
_Static_assert(PROTO_MAX_TEXT_REPLY + PROTO_REPLY_ENVELOPE <= PROTO_MAX_FRAME &&
               PROTO_MAX_TEXT_REPLY <= PROTO_MAX_STRING, "a detokenize reply must fit one frame");
