/* proto/msg.h — the messages: requests decoded into typed structs (every field type- and
 * range-checked) and encoded by the client; replies, errors and stream events packed by the
 * daemon and decoded by the client, with a small accessor API over msgpack objects. Pure data
 * transformations with no shared state: any thread, one object per thread at a time. */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <msgpack.h>

#include "frame.h"
#include "proto_limits.h"
#include "proto_error.h"

/* ===========================================================================================
 * Requests (client → daemon)
 * =========================================================================================== */

typedef enum ProtoOp {
        PROTO_OP_HELLO,
        PROTO_OP_GENERATE,
        PROTO_OP_CANCEL,
        PROTO_OP_TOKENIZE,
        PROTO_OP_DETOKENIZE,
        PROTO_OP_SCORE,
        PROTO_OP_SESSION_OPEN,
        PROTO_OP_SESSION_CLOSE,
        PROTO_OP_SESSION_LIST,
        PROTO_OP_STATUS,
        PROTO_OP_EXPERTS,
        PROTO_OP_SHUTDOWN,
        PROTO_OP_COUNT_,
} ProtoOp;

/* Defaults of the generate fields (the engine's SAMPLER_DEFAULTS; -n 256 like mixctl). */
#define PROTO_DEFAULT_N_PREDICT      256
#define PROTO_DEFAULT_TEMPERATURE    0.8f
#define PROTO_DEFAULT_TOP_K          40
#define PROTO_DEFAULT_TOP_P          0.95f
#define PROTO_DEFAULT_MIN_P          0.05f
#define PROTO_DEFAULT_REPEAT_PENALTY 1.0f
#define PROTO_DEFAULT_REPEAT_LAST_N  64

typedef struct HelloRequest {
        uint64_t version;         /* the client's PROTO_VERSION; == PROTO_VERSION once decoded */
} HelloRequest;

typedef struct GenerateRequest {
        char *prompt;             /* [prompt_len + 1] owned copy, NUL-terminated; valid UTF-8 (may hold U+0000) */
        size_t prompt_len;        /* bytes, 0..PROTO_MAX_PROMPT_BYTES */
        char *session;            /* owned session id, or NULL for a one-shot generation */
        int32_t n_predict;        /* -1 (until EOS/stop) .. PROTO_MAX_NEW_TOKENS */
        float temperature;        /* 0 (greedy) .. PROTO_MAX_TEMPERATURE */
        int32_t top_k;            /* 0 (off) .. PROTO_MAX_TOP_K */
        float top_p;              /* (0, 1] */
        float min_p;              /* [0, 1] */
        float repeat_penalty;     /* (0, PROTO_MAX_REPEAT_PENALTY] */
        int32_t repeat_last_n;    /* tokens, 0 .. PROTO_MAX_REPEAT_LAST_N */
        bool has_seed;            /* false: the server picks a seed */
        uint64_t seed;
        uint32_t n_stop;          /* 0 .. PROTO_MAX_STOPS */
        char *stop[PROTO_MAX_STOPS];      /* owned, NUL-terminated, valid UTF-8 without U+0000 */
        size_t stop_len[PROTO_MAX_STOPS]; /* bytes, 1 .. PROTO_MAX_STOP_LEN */
        bool logprobs;            /* token events carry "logprob" */
        bool add_bos;
} GenerateRequest;

typedef struct CancelRequest {
        uint64_t target;          /* id of the request to cancel, 0 .. PROTO_MAX_ID */
} CancelRequest;

/* tokenize and score */
typedef struct TextRequest {
        char *text;               /* [text_len + 1] owned copy, NUL-terminated; valid UTF-8 */
        size_t text_len;          /* bytes, 0..PROTO_MAX_PROMPT_BYTES */
        bool add_bos;
} TextRequest;

typedef struct DetokenizeRequest {
        int32_t *tokens;          /* [n_tokens] owned; each 0..PROTO_MAX_TOKEN_ID */
        size_t n_tokens;          /* 0..PROTO_MAX_TOKENS_ARRAY */
} DetokenizeRequest;

typedef struct SessionRequest {
        char *session;            /* owned, 1..PROTO_MAX_SESSION_ID printable ASCII bytes */
} SessionRequest;

typedef struct Request {
        uint64_t id;              /* 0..PROTO_MAX_ID, chosen by the client, echoed in replies */
        ProtoOp op;
        union {                   /* the member named after op; the field-less ops have none */
                HelloRequest hello;
                GenerateRequest generate;
                CancelRequest cancel;
                TextRequest tokenize;
                DetokenizeRequest detokenize;
                TextRequest score;
                SessionRequest session_close;
        };
} Request;

/* "generate" for PROTO_OP_GENERATE, ...; NULL for an invalid op. */
const char *proto_op_name(ProtoOp op);

/* Start a request for the client to fill in: zeroed, id and op set, every field at its default
 * (generate: add_bos true, n_predict 256, ...). -EINVAL for an invalid op (req untouched).
 * Strings the caller puts in must be malloc'd: request_free frees them. */
int request_init(Request *req, ProtoOp op, uint64_t id);

/* Free what req owns and zero it. NULL and zeroed requests are fine. */
void request_free(Request *req);

/* Decode one frame body. Runs msgcheck first, then msgpack_unpack, then checks every field
 * (type, range, UTF-8, unknown and duplicate names, required fields). Returns 0 and fills *ret
 * (free with request_free), or a negative errno with err filled (err may be NULL):
 *   -EBADMSG/-E2BIG from msgcheck: "bad_frame"/"too_large", fatal (reply once, close);
 *   -EINVAL:  "bad_request" (wrong type, out of range, unknown/duplicate/missing field);
 *   -E2BIG:   "too_large" for a field over its size limit (prompt, stops, tokens, session);
 *   -EOPNOTSUPP: "unknown_op";
 *   -EPROTONOSUPPORT: "unsupported_version" (hello with version != PROTO_VERSION), fatal;
 *   -ENOMEM.
 * err->has_id/err->id are set whenever a valid id was read, so the error reply can echo it.
 * *ret is untouched on failure. */
int request_decode(const uint8_t *body, size_t len, Request *ret, ProtoError *err);

/* 1 when a and b carry the same op, id and field values (floats compared exactly), else 0. */
int request_equal(const Request *a, const Request *b);

/* ===========================================================================================
 * Packing (daemon replies and events; client requests): an sbuffer, a packer writing into
 * it, and the first error latched so a reply can be packed without checking every call.
 * A ProtoOut must not be copied (pk points at sbuf): init it where it lives.
 * =========================================================================================== */

typedef struct ProtoOut {
        msgpack_sbuffer sbuf;     /* the body packed so far */
        msgpack_packer pk;        /* writes into sbuf; direct msgpack_pack_* calls are fine */
        int error;                /* first failure of a proto_out_* call (-ENOMEM), or 0 */
} ProtoOut;

void proto_out_init(ProtoOut *o);
void proto_out_done(ProtoOut *o);
/* Forget what was packed (keeps the buffer), to pack the next message. */
void proto_out_reset(ProtoOut *o);

/* Finish: check the packed body with msgcheck (a wrong map/array count is -EBADMSG, a body
 * over the limits -E2BIG) and frame it. *ret_frame is malloc'd (free() it; e.g. owned by the
 * write request). Returns the latched error first. o stays valid (reset or done it). */
int proto_out_frame(ProtoOut *o, uint8_t **ret_frame, size_t *ret_len);
/* Finish a reply that must reach its client in one form or another: frame it as
 * proto_out_frame does, or, when it cannot be framed, frame an error reply for id instead —
 * "too_large" naming the frame limits when the body is over them (-E2BIG), "internal"
 * otherwise. Returns 0 (the reply's frame), 1 (the error's frame; *ret_err says why the reply
 * could not be framed, err may be NULL), or -ENOMEM when not even the error could be framed
 * (outputs untouched). o stays valid (reset or done it). */
int proto_out_frame_or_error(ProtoOut *o, uint64_t id, uint8_t **ret_frame, size_t *ret_len, ProtoError *ret_err);

/* Values. Each returns o->error after the call (0 or -ENOMEM); after a failure they do nothing. */
int proto_out_map(ProtoOut *o, uint32_t n_entries);
int proto_out_array(ProtoOut *o, uint32_t n);
int proto_out_nil(ProtoOut *o);
int proto_out_bool(ProtoOut *o, bool v);
int proto_out_uint(ProtoOut *o, uint64_t v);
int proto_out_int(ProtoOut *o, int64_t v);
int proto_out_double(ProtoOut *o, double v);
int proto_out_str(ProtoOut *o, const char *s);                 /* NUL-terminated; NULL packs nil */
int proto_out_strn(ProtoOut *o, const char *s, size_t len);
/* key + value in one call, for map entries */
int proto_out_kv_nil(ProtoOut *o, const char *key);
int proto_out_kv_bool(ProtoOut *o, const char *key, bool v);
int proto_out_kv_uint(ProtoOut *o, const char *key, uint64_t v);
int proto_out_kv_int(ProtoOut *o, const char *key, int64_t v);
int proto_out_kv_double(ProtoOut *o, const char *key, double v);
int proto_out_kv_str(ProtoOut *o, const char *key, const char *s);
int proto_out_kv_strn(ProtoOut *o, const char *key, const char *s, size_t len);

/* Begin an ok reply: a map of n_fields + 2 entries whose first two are "id" and "ok": true.
 * The caller then packs exactly n_fields key/value pairs (kv helpers, or proto_out_str for the
 * key followed by any value: a nested map, an array...). Example, the session.open reply:
 *         proto_out_ok(o, req->id, 1);
 *         proto_out_kv_str(o, "session", sid);
 *         r = proto_out_frame(o, &frame, &frame_len);                                      */
int proto_out_ok(ProtoOut *o, uint64_t id, uint32_t n_fields);

/* The limits map of the hello reply: {"max_frame": PROTO_MAX_FRAME, ...}. */
int proto_out_limits(ProtoOut *o);

/* {"id": id or nil, "error": {"code": err->code, "message": err->message}} */
int proto_out_error(ProtoOut *o, const ProtoError *err);

typedef struct TokenEvent {
        uint64_t id;              /* the generate request */
        const char *text;         /* [text_len] the text this token completes (may be empty) */
        size_t text_len;
        uint32_t token;           /* token id */
        bool has_logprob;         /* set when the request asked for logprobs */
        double logprob;           /* natural log of the token's sampling probability */
} TokenEvent;

typedef struct DoneEvent {
        uint64_t id;
        const char *stop_reason;  /* PROTO_STOP_* */
        uint64_t n_prompt;        /* prompt tokens evaluated */
        uint64_t n_generated;     /* tokens generated */
        double prompt_ms;         /* prefill wall time */
        double generate_ms;       /* generation wall time */
        const char *session;      /* session id when the request named one, else NULL */
        uint64_t n_dropped;       /* with session: positions of the session's earlier text that its
                                     re-tokenization replaced (fed again, counted in n_prompt) */
} DoneEvent;

#define PROTO_STOP_EOS       "eos"        /* the model produced end-of-sequence */
#define PROTO_STOP_LENGTH    "length"     /* n_predict tokens generated */
#define PROTO_STOP_STOP      "stop"       /* a stop string matched (not included in the text) */
#define PROTO_STOP_CANCELLED "cancelled"  /* a cancel request, or the client went away */

/* {"id", "event": "token", "text", "token", ["logprob"]} */
int proto_out_token_event(ProtoOut *o, const TokenEvent *ev);
/* {"id", "event": "done", "stop_reason", "n_prompt", "n_generated", "prompt_ms", "generate_ms",
 *  ["session", "n_dropped"]} */
int proto_out_done_event(ProtoOut *o, const DoneEvent *ev);

/* Pack a request: id, op, every field of the op (optional fields only when present; stop only
 * when n_stop > 0). -EINVAL for an invalid op. */
int proto_out_request(ProtoOut *o, const Request *req);

/* Whole-frame conveniences. request_encode also decodes what it packed, so the client gets the
 * daemon's verdict locally: -EINVAL/-E2BIG/... with err filled exactly as request_decode would. */
int request_encode(const Request *req, uint8_t **ret_frame, size_t *ret_len, ProtoError *err);
int proto_error_encode(const ProtoError *err, uint8_t **ret_frame, size_t *ret_len);

/* ===========================================================================================
 * Replies (daemon → client): classification plus accessors over the msgpack tree.
 * =========================================================================================== */

/* A string inside a Reply's body: NOT NUL-terminated. */
typedef struct ProtoStr {
        const char *ptr;
        size_t len;
} ProtoStr;

/* 1 when s holds exactly the NUL-terminated string lit. */
int proto_str_eq(ProtoStr s, const char *lit);

typedef enum ReplyKind {
        REPLY_OK,                 /* {"id", "ok": true, ...op-specific fields} */
        REPLY_ERROR,              /* {"id", "error": {"code", "message"}} */
        REPLY_EVENT,              /* {"id", "event", ...} */
} ReplyKind;

typedef enum ReplyEvent {
        REPLY_EVENT_NONE,         /* not an event */
        REPLY_EVENT_TOKEN,
        REPLY_EVENT_DONE,
        REPLY_EVENT_OTHER,        /* an event this client does not know: ignore it */
} ReplyEvent;

typedef struct Reply {
        uint8_t *body;                /* private copy of the body; every ProtoStr points into it */
        msgpack_unpacked unpacked;    /* owns the object tree */
        msgpack_object root;          /* the top-level map: proto_map_get(&r->root, "sessions") */
        bool has_id;                  /* false only for an error about an unreadable request */
        uint64_t id;
        ReplyKind kind;
        ProtoStr error_code;          /* REPLY_ERROR: one of PROTO_ERR_* (or newer) */
        ProtoStr error_message;
        ReplyEvent event;             /* REPLY_EVENT */
        ProtoStr event_name;
        ProtoStr text;                /* token: text, token, logprob */
        uint64_t token;
        bool has_logprob;
        double logprob;
        ProtoStr stop_reason;         /* done: stop_reason, counts, times, session */
        uint64_t n_prompt, n_generated;
        double prompt_ms, generate_ms;
        bool has_session;
        ProtoStr session;
} Reply;

/* Decode a reply or event body (msgcheck, unpack, classify, read the fields above). Fields the
 * client does not know are kept in root, never an error. Returns 0 (free with reply_free), or
 * -EBADMSG/-E2BIG ("bad_frame"/"too_large" from msgcheck), -EINVAL (a known field has the wrong
 * type, or the map is neither ok, error nor event), -ENOMEM; err may be NULL. *ret untouched on
 * failure. */
int reply_decode(const uint8_t *body, size_t len, Reply *ret, ProtoError *err);
/* Free a decoded reply and zero it; zeroed replies are fine. */
void reply_free(Reply *r);

/* The value stored under key in a map (NULL when map is NULL or not a map, or key is absent). */
const msgpack_object *proto_map_get(const msgpack_object *map, const char *key);
/* Typed reads; o may be NULL (absent): -ENOENT. Wrong type -EBADMSG; out of range -ERANGE.
 * Outputs untouched on failure. proto_obj_double accepts integers too. */
int proto_obj_uint(const msgpack_object *o, uint64_t *ret);
int proto_obj_int(const msgpack_object *o, int64_t *ret);
int proto_obj_double(const msgpack_object *o, double *ret);
int proto_obj_bool(const msgpack_object *o, bool *ret);
int proto_obj_str(const msgpack_object *o, ProtoStr *ret);

/* 1 when s[len] is valid UTF-8 (no overlong forms, surrogates or code points over U+10FFFF). */
int proto_utf8_valid(const char *s, size_t len);
