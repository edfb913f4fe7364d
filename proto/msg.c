/* proto/msg.c — request decoding/encoding driven by one field table per op, the ProtoOut packer,
 * replies/events, and the client-side reply decoder with its accessors (see msg.h). No shared
 * state: any thread. */
#include "msg.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "msgcheck.h"

/* ===========================================================================================
 * The field tables: one row per request field, with its type, bounds and default. Decoding,
 * defaults, encoding, comparison and freeing all walk these rows.
 * =========================================================================================== */

typedef enum FieldKind {
        FIELD_UINT,     /* uint64_t at off, 0..umax; optional ones set the bool at off_aux */
        FIELD_INT,      /* int32_t at off, imin..imax */
        FIELD_FLOAT,    /* float at off, fmin..fmax (fmin excluded when fmin_open); ints accepted */
        FIELD_BOOL,     /* bool at off */
        FIELD_TEXT,     /* char * at off, size_t length at off_aux; 0..umax bytes of UTF-8 */
        FIELD_SESSION,  /* char * at off (NULL when absent); 1..PROTO_MAX_SESSION_ID printable ASCII */
        FIELD_STOPS,    /* GenerateRequest.stop/stop_len/n_stop */
        FIELD_TOKENS,   /* int32_t * at off, size_t count at off_aux */
} FieldKind;

typedef struct FieldSpec {
        const char *name;
        FieldKind kind;
        bool required;
        size_t off;             /* offset of the value in Request */
        size_t off_aux;         /* see FieldKind; 0 = none */
        int64_t imin;
        uint64_t umax;          /* upper bound of UINT/INT values, byte limit of TEXT */
        double fmin, fmax;
        bool fmin_open;
        double def;             /* default of INT/FLOAT/BOOL fields (exact for every value used) */
} FieldSpec;

#define AT(member) offsetof(Request, member)

static const FieldSpec hello_fields[] = {
        { .name = "version", .kind = FIELD_UINT, .required = true, .off = AT(hello.version), .umax = UINT64_MAX },
};

static const FieldSpec generate_fields[] = {
        { .name = "prompt", .kind = FIELD_TEXT, .required = true, .off = AT(generate.prompt),
          .off_aux = AT(generate.prompt_len), .umax = PROTO_MAX_PROMPT_BYTES },
        { .name = "session", .kind = FIELD_SESSION, .off = AT(generate.session) },
        { .name = "n_predict", .kind = FIELD_INT, .off = AT(generate.n_predict),
          .imin = -1, .umax = PROTO_MAX_NEW_TOKENS, .def = PROTO_DEFAULT_N_PREDICT },
        { .name = "temperature", .kind = FIELD_FLOAT, .off = AT(generate.temperature),
          .fmin = 0.0, .fmax = PROTO_MAX_TEMPERATURE, .def = PROTO_DEFAULT_TEMPERATURE },
        { .name = "top_k", .kind = FIELD_INT, .off = AT(generate.top_k),
          .imin = 0, .umax = PROTO_MAX_TOP_K, .def = PROTO_DEFAULT_TOP_K },
        { .name = "top_p", .kind = FIELD_FLOAT, .off = AT(generate.top_p),
          .fmin = 0.0, .fmin_open = true, .fmax = 1.0, .def = PROTO_DEFAULT_TOP_P },
        { .name = "min_p", .kind = FIELD_FLOAT, .off = AT(generate.min_p),
          .fmin = 0.0, .fmax = 1.0, .def = PROTO_DEFAULT_MIN_P },
        { .name = "repeat_penalty", .kind = FIELD_FLOAT, .off = AT(generate.repeat_penalty),
          .fmin = 0.0, .fmin_open = true, .fmax = PROTO_MAX_REPEAT_PENALTY, .def = PROTO_DEFAULT_REPEAT_PENALTY },
        { .name = "repeat_last_n", .kind = FIELD_INT, .off = AT(generate.repeat_last_n),
          .imin = 0, .umax = PROTO_MAX_REPEAT_LAST_N, .def = PROTO_DEFAULT_REPEAT_LAST_N },
        { .name = "seed", .kind = FIELD_UINT, .off = AT(generate.seed), .off_aux = AT(generate.has_seed),
          .umax = UINT64_MAX },
        { .name = "stop", .kind = FIELD_STOPS },
        { .name = "logprobs", .kind = FIELD_BOOL, .off = AT(generate.logprobs), .def = 0 },
        { .name = "add_bos", .kind = FIELD_BOOL, .off = AT(generate.add_bos), .def = 1 },
};

static const FieldSpec cancel_fields[] = {
        { .name = "target", .kind = FIELD_UINT, .required = true, .off = AT(cancel.target), .umax = PROTO_MAX_ID },
};

static const FieldSpec tokenize_fields[] = {
        { .name = "text", .kind = FIELD_TEXT, .required = true, .off = AT(tokenize.text),
          .off_aux = AT(tokenize.text_len), .umax = PROTO_MAX_PROMPT_BYTES },
        { .name = "add_bos", .kind = FIELD_BOOL, .off = AT(tokenize.add_bos), .def = 1 },
};

static const FieldSpec detokenize_fields[] = {
        { .name = "tokens", .kind = FIELD_TOKENS, .required = true, .off = AT(detokenize.tokens),
          .off_aux = AT(detokenize.n_tokens) },
};

static const FieldSpec score_fields[] = {
        { .name = "text", .kind = FIELD_TEXT, .required = true, .off = AT(score.text),
          .off_aux = AT(score.text_len), .umax = PROTO_MAX_PROMPT_BYTES },
        { .name = "add_bos", .kind = FIELD_BOOL, .off = AT(score.add_bos), .def = 1 },
};

static const FieldSpec session_close_fields[] = {
        { .name = "session", .kind = FIELD_SESSION, .required = true, .off = AT(session_close.session) },
};

typedef struct OpSpec {
        const char *name;
        const FieldSpec *fields;
        uint32_t n_fields;      /* <= 32 (a bitmask tracks the fields seen) */
} OpSpec;

#define OP(n, f) { .name = (n), .fields = (f), .n_fields = sizeof(f) / sizeof((f)[0]) }
static const OpSpec op_specs[PROTO_OP_COUNT_] = {
        [PROTO_OP_HELLO]         = OP("hello", hello_fields),
        [PROTO_OP_GENERATE]      = OP("generate", generate_fields),
        [PROTO_OP_CANCEL]        = OP("cancel", cancel_fields),
        [PROTO_OP_TOKENIZE]      = OP("tokenize", tokenize_fields),
        [PROTO_OP_DETOKENIZE]    = OP("detokenize", detokenize_fields),
        [PROTO_OP_SCORE]         = OP("score", score_fields),
        [PROTO_OP_SESSION_OPEN]  = { .name = "session.open" },
        [PROTO_OP_SESSION_CLOSE] = OP("session.close", session_close_fields),
        [PROTO_OP_SESSION_LIST]  = { .name = "session.list" },
        [PROTO_OP_STATUS]        = { .name = "status" },
        [PROTO_OP_EXPERTS]       = { .name = "experts" },
        [PROTO_OP_SHUTDOWN]      = { .name = "shutdown" },
};

_Static_assert(sizeof(generate_fields) / sizeof(generate_fields[0]) <= 32, "seen-field bitmask is 32 bits");

#define FIELD_PTR(req, off, type) ((type *)(void *)((char *)(req) + (off)))
#define FIELD_CPTR(req, off, type) ((const type *)(const void *)((const char *)(req) + (off)))

const char *proto_op_name(ProtoOp op) {
        if ((unsigned)op >= PROTO_OP_COUNT_)
                return NULL;
        return op_specs[op].name;
}

static void apply_defaults(Request *req) {
        const OpSpec *os = &op_specs[req->op];

        for (uint32_t i = 0; i < os->n_fields; i++) {
                const FieldSpec *f = &os->fields[i];

                switch (f->kind) {
                case FIELD_INT:
                        *FIELD_PTR(req, f->off, int32_t) = (int32_t)f->def;
                        break;
                case FIELD_FLOAT:
                        *FIELD_PTR(req, f->off, float) = (float)f->def;
                        break;
                case FIELD_BOOL:
                        *FIELD_PTR(req, f->off, bool) = f->def != 0;
                        break;
                default:
                        break;
                }
        }
}

int request_init(Request *req, ProtoOp op, uint64_t id) {
        if ((unsigned)op >= PROTO_OP_COUNT_)
                return -EINVAL;
        *req = (Request){ .id = id, .op = op };
        apply_defaults(req);
        return 0;
}

void request_free(Request *req) {
        const OpSpec *os;

        if (!req)
                return;
        if ((unsigned)req->op < PROTO_OP_COUNT_) {
                os = &op_specs[req->op];
                for (uint32_t i = 0; i < os->n_fields; i++) {
                        const FieldSpec *f = &os->fields[i];

                        switch (f->kind) {
                        case FIELD_TEXT:
                        case FIELD_SESSION:
                                free(*FIELD_PTR(req, f->off, char *));
                                break;
                        case FIELD_TOKENS:
                                free(*FIELD_PTR(req, f->off, int32_t *));
                                break;
                        case FIELD_STOPS:
                                for (uint32_t k = 0; k < req->generate.n_stop && k < PROTO_MAX_STOPS; k++)
                                        free(req->generate.stop[k]);
                                break;
                        default:
                                break;
                        }
                }
        }
        *req = (Request){ 0 };
}

int request_equal(const Request *a, const Request *b) {
        const OpSpec *os;

        if (a->id != b->id || a->op != b->op || (unsigned)a->op >= PROTO_OP_COUNT_)
                return 0;
        os = &op_specs[a->op];
        for (uint32_t i = 0; i < os->n_fields; i++) {
                const FieldSpec *f = &os->fields[i];

                switch (f->kind) {
                case FIELD_UINT:
                        if (f->off_aux && *FIELD_CPTR(a, f->off_aux, bool) != *FIELD_CPTR(b, f->off_aux, bool))
                                return 0;
                        if ((!f->off_aux || *FIELD_CPTR(a, f->off_aux, bool)) &&
                            *FIELD_CPTR(a, f->off, uint64_t) != *FIELD_CPTR(b, f->off, uint64_t))
                                return 0;
                        break;
                case FIELD_INT:
                        if (*FIELD_CPTR(a, f->off, int32_t) != *FIELD_CPTR(b, f->off, int32_t))
                                return 0;
                        break;
                case FIELD_FLOAT:
                        if (*FIELD_CPTR(a, f->off, float) != *FIELD_CPTR(b, f->off, float))
                                return 0;
                        break;
                case FIELD_BOOL:
                        if (*FIELD_CPTR(a, f->off, bool) != *FIELD_CPTR(b, f->off, bool))
                                return 0;
                        break;
                case FIELD_TEXT: {
                        size_t la = *FIELD_CPTR(a, f->off_aux, size_t), lb = *FIELD_CPTR(b, f->off_aux, size_t);
                        const char *sa = *FIELD_CPTR(a, f->off, char *), *sb = *FIELD_CPTR(b, f->off, char *);

                        if (la != lb || (la > 0 && memcmp(sa, sb, la) != 0))
                                return 0;
                        break;
                }
                case FIELD_SESSION: {
                        const char *sa = *FIELD_CPTR(a, f->off, char *), *sb = *FIELD_CPTR(b, f->off, char *);

                        if (!sa != !sb || (sa && strcmp(sa, sb) != 0))
                                return 0;
                        break;
                }
                case FIELD_STOPS:
                        if (a->generate.n_stop != b->generate.n_stop)
                                return 0;
                        for (uint32_t k = 0; k < a->generate.n_stop && k < PROTO_MAX_STOPS; k++)
                                if (a->generate.stop_len[k] != b->generate.stop_len[k] ||
                                    memcmp(a->generate.stop[k], b->generate.stop[k], a->generate.stop_len[k]) != 0)
                                        return 0;
                        break;
                case FIELD_TOKENS: {
                        size_t na = *FIELD_CPTR(a, f->off_aux, size_t), nb = *FIELD_CPTR(b, f->off_aux, size_t);
                        const int32_t *ta = *FIELD_CPTR(a, f->off, int32_t *), *tb = *FIELD_CPTR(b, f->off, int32_t *);

                        if (na != nb || (na > 0 && memcmp(ta, tb, na * sizeof(int32_t)) != 0))
                                return 0;
                        break;
                }
                }
        }
        return 1;
}

/* ===========================================================================================
 * Decoding requests
 * =========================================================================================== */

int proto_utf8_valid(const char *s, size_t len) {
        const uint8_t *p = (const uint8_t *)s;
        size_t i = 0;

        while (i < len) {
                uint8_t c = p[i];
                uint32_t cp, min;
                size_t n;

                if (c < 0x80) {
                        i++;
                        continue;
                }
                if (c >= 0xc2 && c <= 0xdf)
                        n = 1, cp = c & 0x1f, min = 0x80;
                else if ((c & 0xf0) == 0xe0)
                        n = 2, cp = c & 0x0f, min = 0x800;
                else if (c >= 0xf0 && c <= 0xf4)
                        n = 3, cp = c & 0x07, min = 0x10000;
                else
                        return 0;
                if (len - i - 1 < n)
                        return 0;
                for (size_t k = 1; k <= n; k++) {
                        uint8_t b = p[i + k];

                        if ((b & 0xc0) != 0x80)
                                return 0;
                        cp = cp << 6 | (b & 0x3f);
                }
                if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
                        return 0;
                i += n + 1;
        }
        return 1;
}

/* A short, masked sample of untrusted bytes for a message: printable ASCII kept, the rest '?'. */
static const char *mask(char *out, size_t size, const char *s, size_t len) {
        size_t n = 0;

        for (size_t i = 0; i < len && n + 4 < size; i++)
                out[n++] = (s[i] >= 0x20 && s[i] < 0x7f) ? s[i] : '?';
        if (n < len && n + 4 <= size) {
                memcpy(out + n, "...", 3);
                n += 3;
        }
        out[n] = 0;
        return out;
}

static bool key_is(const msgpack_object *k, const char *name) {
        size_t n = strlen(name);

        return k->type == MSGPACK_OBJECT_STR && k->via.str.size == n && memcmp(k->via.str.ptr, name, n) == 0;
}

static int bad_request(ProtoError *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int bad_request(ProtoError *err, const char *fmt, ...) {
        if (err) {
                va_list ap;

                err->code = PROTO_ERR_BAD_REQUEST;
                err->fatal = false;
                va_start(ap, fmt);
                vsnprintf(err->message, sizeof(err->message), fmt, ap);
                va_end(ap);
        }
        return -EINVAL;
}

static int too_large(ProtoError *err, const char *field, uint64_t n, const char *unit, uint64_t max) {
        return proto_error_set(err, -E2BIG, PROTO_ERR_TOO_LARGE, false, "field '%s' has %llu %s, over the limit of %llu",
                               field, (unsigned long long)n, unit, (unsigned long long)max);
}

static char *copy_bytes(const char *s, size_t len) {
        char *p = malloc(len + 1);

        if (!p)
                return NULL;
        if (len > 0)
                memcpy(p, s, len);
        p[len] = 0;
        return p;
}

static int no_memory(ProtoError *err) {
        return proto_error_set(err, -ENOMEM, PROTO_ERR_INTERNAL, false, "out of memory");
}

/* A number for a FIELD_FLOAT: float32/float64 or an integer, finite, within the row's range. */
static int decode_float(const FieldSpec *f, const msgpack_object *v, float *ret, ProtoError *err) {
        double d;
        float x;

        switch (v->type) {
        case MSGPACK_OBJECT_FLOAT32:
        case MSGPACK_OBJECT_FLOAT64:
                d = v->via.f64;
                break;
        case MSGPACK_OBJECT_POSITIVE_INTEGER:
                d = (double)v->via.u64;
                break;
        case MSGPACK_OBJECT_NEGATIVE_INTEGER:
                d = (double)v->via.i64;
                break;
        default:
                return bad_request(err, "field '%s' must be a number", f->name);
        }
        if (!isfinite(d))
                return bad_request(err, "field '%s' must be finite", f->name);
        /* checked as sent, then again as the float the engine will see (1e-50 rounds to 0) */
        x = (float)d;
        if (d > f->fmax || (double)x > f->fmax || d < f->fmin || (double)x < f->fmin ||
            (f->fmin_open && (d <= f->fmin || (double)x <= f->fmin)))
                return bad_request(err, "field '%s' out of range %s%g, %g]", f->name, f->fmin_open ? "(" : "[",
                                   f->fmin, f->fmax);
        *ret = x;
        return 0;
}

static int decode_text(const FieldSpec *f, const msgpack_object *v, Request *req, ProtoError *err) {
        size_t len;
        char *p;

        if (v->type != MSGPACK_OBJECT_STR)
                return bad_request(err, "field '%s' must be a string", f->name);
        len = v->via.str.size;
        if (len > f->umax)
                return too_large(err, f->name, len, "bytes", f->umax);
        if (!proto_utf8_valid(v->via.str.ptr, len))
                return bad_request(err, "field '%s' is not valid UTF-8", f->name);
        p = copy_bytes(v->via.str.ptr, len);
        if (!p)
                return no_memory(err);
        *FIELD_PTR(req, f->off, char *) = p;
        *FIELD_PTR(req, f->off_aux, size_t) = len;
        return 0;
}

static int decode_session(const FieldSpec *f, const msgpack_object *v, Request *req, ProtoError *err) {
        size_t len;
        char *p;

        if (v->type != MSGPACK_OBJECT_STR)
                return bad_request(err, "field '%s' must be a string", f->name);
        len = v->via.str.size;
        if (len > PROTO_MAX_SESSION_ID)
                return too_large(err, f->name, len, "bytes", PROTO_MAX_SESSION_ID);
        if (len == 0)
                return bad_request(err, "field '%s' must not be empty", f->name);
        for (size_t i = 0; i < len; i++)
                if (v->via.str.ptr[i] < 0x21 || v->via.str.ptr[i] > 0x7e)
                        return bad_request(err, "field '%s' must be printable ASCII without spaces", f->name);
        p = copy_bytes(v->via.str.ptr, len);
        if (!p)
                return no_memory(err);
        *FIELD_PTR(req, f->off, char *) = p;
        return 0;
}

static int decode_stops(const FieldSpec *f, const msgpack_object *v, Request *req, ProtoError *err) {
        GenerateRequest *g = &req->generate;

        if (v->type != MSGPACK_OBJECT_ARRAY)
                return bad_request(err, "field '%s' must be an array of strings", f->name);
        if (v->via.array.size > PROTO_MAX_STOPS)
                return too_large(err, f->name, v->via.array.size, "strings", PROTO_MAX_STOPS);
        for (uint32_t i = 0; i < v->via.array.size; i++) {
                const msgpack_object *s = &v->via.array.ptr[i];
                size_t len;

                if (s->type != MSGPACK_OBJECT_STR)
                        return bad_request(err, "field '%s' must be an array of strings", f->name);
                len = s->via.str.size;
                if (len == 0)
                        return bad_request(err, "field '%s': stop string %u is empty", f->name, i);
                if (len > PROTO_MAX_STOP_LEN)
                        return proto_error_set(err, -E2BIG, PROTO_ERR_TOO_LARGE, false,
                                               "field '%s': stop string %u has %zu bytes, over the limit of %u",
                                               f->name, i, len, PROTO_MAX_STOP_LEN);
                if (!proto_utf8_valid(s->via.str.ptr, len) || memchr(s->via.str.ptr, 0, len))
                        return bad_request(err, "field '%s': stop string %u is not valid UTF-8 without NUL",
                                           f->name, i);
                g->stop[i] = copy_bytes(s->via.str.ptr, len);
                if (!g->stop[i])
                        return no_memory(err);
                g->stop_len[i] = len;
                g->n_stop = i + 1;
        }
        return 0;
}

static int decode_tokens(const FieldSpec *f, const msgpack_object *v, Request *req, ProtoError *err) {
        uint32_t n;
        int32_t *t;

        if (v->type != MSGPACK_OBJECT_ARRAY)
                return bad_request(err, "field '%s' must be an array of unsigned integers", f->name);
        n = v->via.array.size;
        if (n > PROTO_MAX_TOKENS_ARRAY)
                return too_large(err, f->name, n, "tokens", PROTO_MAX_TOKENS_ARRAY);
        t = malloc((n ? n : 1) * sizeof(int32_t));
        if (!t)
                return no_memory(err);
        for (uint32_t i = 0; i < n; i++) {
                const msgpack_object *e = &v->via.array.ptr[i];

                if (e->type != MSGPACK_OBJECT_POSITIVE_INTEGER || e->via.u64 > PROTO_MAX_TOKEN_ID) {
                        free(t);
                        return bad_request(err, "field '%s': element %u must be an unsigned integer 0..%u",
                                           f->name, i, PROTO_MAX_TOKEN_ID);
                }
                t[i] = (int32_t)e->via.u64;
        }
        *FIELD_PTR(req, f->off, int32_t *) = t;
        *FIELD_PTR(req, f->off_aux, size_t) = n;
        return 0;
}

static int decode_field(const FieldSpec *f, const msgpack_object *v, Request *req, ProtoError *err) {
        switch (f->kind) {
        case FIELD_UINT:
                if (v->type != MSGPACK_OBJECT_POSITIVE_INTEGER && v->type != MSGPACK_OBJECT_NEGATIVE_INTEGER)
                        return bad_request(err, "field '%s' must be an unsigned integer", f->name);
                if (v->type == MSGPACK_OBJECT_NEGATIVE_INTEGER || v->via.u64 > f->umax)
                        return bad_request(err, "field '%s' out of range 0..%llu", f->name, (unsigned long long)f->umax);
                *FIELD_PTR(req, f->off, uint64_t) = v->via.u64;
                if (f->off_aux)
                        *FIELD_PTR(req, f->off_aux, bool) = true;
                return 0;
        case FIELD_INT:
                if (v->type != MSGPACK_OBJECT_POSITIVE_INTEGER && v->type != MSGPACK_OBJECT_NEGATIVE_INTEGER)
                        return bad_request(err, "field '%s' must be an integer", f->name);
                if ((v->type == MSGPACK_OBJECT_POSITIVE_INTEGER && v->via.u64 > f->umax) ||
                    (v->type == MSGPACK_OBJECT_NEGATIVE_INTEGER && v->via.i64 < f->imin))
                        return bad_request(err, "field '%s' out of range %lld..%llu", f->name, (long long)f->imin,
                                           (unsigned long long)f->umax);
                *FIELD_PTR(req, f->off, int32_t) = v->type == MSGPACK_OBJECT_POSITIVE_INTEGER ?
                        (int32_t)v->via.u64 : (int32_t)v->via.i64;
                return 0;
        case FIELD_FLOAT:
                return decode_float(f, v, FIELD_PTR(req, f->off, float), err);
        case FIELD_BOOL:
                if (v->type != MSGPACK_OBJECT_BOOLEAN)
                        return bad_request(err, "field '%s' must be a boolean", f->name);
                *FIELD_PTR(req, f->off, bool) = v->via.boolean;
                return 0;
        case FIELD_TEXT:
                return decode_text(f, v, req, err);
        case FIELD_SESSION:
                return decode_session(f, v, req, err);
        case FIELD_STOPS:
                return decode_stops(f, v, req, err);
        case FIELD_TOKENS:
                return decode_tokens(f, v, req, err);
        }
        return -EINVAL;
}

static const msgpack_object *find_key(const msgpack_object_map *m, const char *name) {
        for (uint32_t i = 0; i < m->size; i++)
                if (key_is(&m->ptr[i].key, name))
                        return &m->ptr[i].val;
        return NULL;
}

/* Decode the top-level map into req (which request_free can always clean up). */
static int decode_request(const msgpack_object_map *m, Request *req, ProtoError *err) {
        const msgpack_object *idv, *opv;
        const OpSpec *os = NULL;
        uint32_t seen = 0;
        bool seen_id = false, seen_op = false;
        char sample[48];
        int r;

        idv = find_key(m, "id");
        if (!idv)
                return bad_request(err, "missing field 'id'");
        if (idv->type != MSGPACK_OBJECT_POSITIVE_INTEGER || idv->via.u64 > PROTO_MAX_ID)
                return bad_request(err, "field 'id' must be an unsigned integer 0..%llu",
                                   (unsigned long long)PROTO_MAX_ID);
        req->id = idv->via.u64;
        if (err) {
                err->has_id = true;
                err->id = req->id;
        }

        opv = find_key(m, "op");
        if (!opv)
                return bad_request(err, "missing field 'op'");
        if (opv->type != MSGPACK_OBJECT_STR)
                return bad_request(err, "field 'op' must be a string");
        for (unsigned i = 0; i < PROTO_OP_COUNT_; i++)
                if (key_is(opv, op_specs[i].name)) {
                        req->op = (ProtoOp)i;
                        os = &op_specs[i];
                        break;
                }
        if (!os)
                return proto_error_set(err, -EOPNOTSUPP, PROTO_ERR_UNKNOWN_OP, false, "unknown op '%s'",
                                       mask(sample, sizeof(sample), opv->via.str.ptr, opv->via.str.size));
        apply_defaults(req);

        for (uint32_t i = 0; i < m->size; i++) {
                const msgpack_object *k = &m->ptr[i].key;
                const FieldSpec *f = NULL;
                uint32_t j;

                if (k->type != MSGPACK_OBJECT_STR)
                        return bad_request(err, "field names must be strings");
                if (key_is(k, "id") || key_is(k, "op")) {
                        bool *s = key_is(k, "id") ? &seen_id : &seen_op;

                        if (*s)
                                return bad_request(err, "duplicate field '%s'", key_is(k, "id") ? "id" : "op");
                        *s = true;
                        continue;
                }
                for (j = 0; j < os->n_fields; j++)
                        if (key_is(k, os->fields[j].name)) {
                                f = &os->fields[j];
                                break;
                        }
                if (!f)
                        return bad_request(err, "unknown field '%s' for op '%s'",
                                           mask(sample, sizeof(sample), k->via.str.ptr, k->via.str.size), os->name);
                if (seen & (1u << j))
                        return bad_request(err, "duplicate field '%s'", f->name);
                seen |= 1u << j;
                r = decode_field(f, &m->ptr[i].val, req, err);
                if (r < 0)
                        return r;
        }

        for (uint32_t j = 0; j < os->n_fields; j++)
                if (os->fields[j].required && !(seen & (1u << j)))
                        return bad_request(err, "missing field '%s' for op '%s'", os->fields[j].name, os->name);

        if (req->op == PROTO_OP_HELLO && req->hello.version != PROTO_VERSION)
                return proto_error_set(err, -EPROTONOSUPPORT, PROTO_ERR_UNSUPPORTED_VERSION, true,
                                       "protocol version %llu is not supported; this server speaks version %u",
                                       (unsigned long long)req->hello.version, PROTO_VERSION);
        return 0;
}

/* msgcheck, then unpack into up (the caller destroys it). */
static int unpack_checked(const uint8_t *body, size_t len, msgpack_unpacked *up, ProtoError *err) {
        msgpack_unpack_return ur;
        size_t off = 0;
        int r;

        r = msgcheck(body, len, err);
        if (r < 0)
                return r;
        ur = msgpack_unpack_next(up, (const char *)body, len, &off);
        if (ur == MSGPACK_UNPACK_NOMEM_ERROR)
                return no_memory(err);
        if (ur != MSGPACK_UNPACK_SUCCESS || off != len || up->data.type != MSGPACK_OBJECT_MAP)
                return proto_error_set(err, -EBADMSG, PROTO_ERR_BAD_FRAME, true, "msgpack body not unpackable");
        return 0;
}

int request_decode(const uint8_t *body, size_t len, Request *ret, ProtoError *err) {
        msgpack_unpacked up;
        Request req = { 0 };
        int r;

        if (err)
                *err = (ProtoError){ 0 };
        msgpack_unpacked_init(&up);
        r = unpack_checked(body, len, &up, err);
        if (r >= 0)
                r = decode_request(&up.data.via.map, &req, err);
        msgpack_unpacked_destroy(&up);
        if (r < 0) {
                request_free(&req);
                return r;
        }
        *ret = req;
        return 0;
}

/* ===========================================================================================
 * ProtoOut
 * =========================================================================================== */

void proto_out_init(ProtoOut *o) {
        msgpack_sbuffer_init(&o->sbuf);
        msgpack_packer_init(&o->pk, &o->sbuf, msgpack_sbuffer_write);
        o->error = 0;
}

void proto_out_done(ProtoOut *o) {
        if (!o)
                return;
        msgpack_sbuffer_destroy(&o->sbuf);
        msgpack_sbuffer_init(&o->sbuf);
        o->error = 0;
}

void proto_out_reset(ProtoOut *o) {
        msgpack_sbuffer_clear(&o->sbuf);
        o->error = 0;
}

int proto_out_frame(ProtoOut *o, uint8_t **ret_frame, size_t *ret_len) {
        int r;

        if (o->error < 0)
                return o->error;
        if (o->sbuf.size > PROTO_MAX_FRAME)
                return -E2BIG;
        r = msgcheck(o->sbuf.data, o->sbuf.size, NULL);
        if (r < 0)
                return r;
        return frame_encode(&o->sbuf, ret_frame, ret_len);
}

int proto_out_frame_or_error(ProtoOut *o, uint64_t id, uint8_t **ret_frame, size_t *ret_len, ProtoError *ret_err) {
        ProtoError err = { .has_id = true, .id = id };
        const size_t body = o->sbuf.size;
        int r = proto_out_frame(o, ret_frame, ret_len);

        if (r == 0)
                return 0;
        if (r == -E2BIG)
                proto_error_set(&err, r, PROTO_ERR_TOO_LARGE, false,
                                "the reply (%zu bytes) is over the frame limits (%u bytes, %u elements, "
                                "strings of %u bytes); ask for less", body, PROTO_MAX_FRAME, PROTO_MAX_ELEMENTS,
                                PROTO_MAX_STRING);
        else
                proto_error_set(&err, r, PROTO_ERR_INTERNAL, false, "the reply could not be encoded: %s",
                                strerror(-r));
        r = proto_error_encode(&err, ret_frame, ret_len);
        if (r < 0)
                return -ENOMEM;
        if (ret_err)
                *ret_err = err;
        return 1;
}

/* Run one msgpack_pack_* call unless an earlier one failed; latch its failure. */
#define OUT(o, call)                                            \
        do {                                                    \
                if ((o)->error == 0 && (call) != 0)             \
                        (o)->error = -ENOMEM;                   \
                return (o)->error;                              \
        } while (0)

int proto_out_map(ProtoOut *o, uint32_t n) { OUT(o, msgpack_pack_map(&o->pk, n)); }
int proto_out_array(ProtoOut *o, uint32_t n) { OUT(o, msgpack_pack_array(&o->pk, n)); }
int proto_out_nil(ProtoOut *o) { OUT(o, msgpack_pack_nil(&o->pk)); }
int proto_out_bool(ProtoOut *o, bool v) { OUT(o, v ? msgpack_pack_true(&o->pk) : msgpack_pack_false(&o->pk)); }
int proto_out_uint(ProtoOut *o, uint64_t v) { OUT(o, msgpack_pack_uint64(&o->pk, v)); }
int proto_out_int(ProtoOut *o, int64_t v) { OUT(o, msgpack_pack_int64(&o->pk, v)); }
int proto_out_double(ProtoOut *o, double v) { OUT(o, msgpack_pack_double(&o->pk, v)); }
int proto_out_strn(ProtoOut *o, const char *s, size_t len) { OUT(o, msgpack_pack_str_with_body(&o->pk, s, len)); }
static int proto_out_float(ProtoOut *o, float v) { OUT(o, msgpack_pack_float(&o->pk, v)); }

int proto_out_str(ProtoOut *o, const char *s) {
        if (!s)
                return proto_out_nil(o);
        return proto_out_strn(o, s, strlen(s));
}

int proto_out_kv_nil(ProtoOut *o, const char *key) {
        proto_out_str(o, key);
        return proto_out_nil(o);
}

int proto_out_kv_bool(ProtoOut *o, const char *key, bool v) {
        proto_out_str(o, key);
        return proto_out_bool(o, v);
}

int proto_out_kv_uint(ProtoOut *o, const char *key, uint64_t v) {
        proto_out_str(o, key);
        return proto_out_uint(o, v);
}

int proto_out_kv_int(ProtoOut *o, const char *key, int64_t v) {
        proto_out_str(o, key);
        return proto_out_int(o, v);
}

int proto_out_kv_double(ProtoOut *o, const char *key, double v) {
        proto_out_str(o, key);
        return proto_out_double(o, v);
}

int proto_out_kv_str(ProtoOut *o, const char *key, const char *s) {
        proto_out_str(o, key);
        return proto_out_str(o, s);
}

int proto_out_kv_strn(ProtoOut *o, const char *key, const char *s, size_t len) {
        proto_out_str(o, key);
        return proto_out_strn(o, s, len);
}

int proto_out_ok(ProtoOut *o, uint64_t id, uint32_t n_fields) {
        proto_out_map(o, n_fields + 2);
        proto_out_kv_uint(o, "id", id);
        return proto_out_kv_bool(o, "ok", true);
}

int proto_out_limits(ProtoOut *o) {
        proto_out_map(o, 13);
        proto_out_kv_uint(o, "max_frame", PROTO_MAX_FRAME);
        proto_out_kv_uint(o, "max_depth", PROTO_MAX_DEPTH);
        proto_out_kv_uint(o, "max_elements", PROTO_MAX_ELEMENTS);
        proto_out_kv_uint(o, "max_string", PROTO_MAX_STRING);
        proto_out_kv_uint(o, "max_prompt_bytes", PROTO_MAX_PROMPT_BYTES);
        proto_out_kv_uint(o, "max_tokens_array", PROTO_MAX_TOKENS_ARRAY);
        proto_out_kv_uint(o, "max_score_tokens", PROTO_MAX_SCORE_TOKENS);
        proto_out_kv_uint(o, "max_token_id", PROTO_MAX_TOKEN_ID);
        proto_out_kv_uint(o, "max_stops", PROTO_MAX_STOPS);
        proto_out_kv_uint(o, "max_stop_len", PROTO_MAX_STOP_LEN);
        proto_out_kv_uint(o, "max_new_tokens", PROTO_MAX_NEW_TOKENS);
        proto_out_kv_uint(o, "max_session_id", PROTO_MAX_SESSION_ID);
        return proto_out_kv_uint(o, "max_id", PROTO_MAX_ID);
}

int proto_out_error(ProtoOut *o, const ProtoError *err) {
        proto_out_map(o, 2);
        if (err->has_id)
                proto_out_kv_uint(o, "id", err->id);
        else
                proto_out_kv_nil(o, "id");
        proto_out_str(o, "error");
        proto_out_map(o, 2);
        proto_out_kv_str(o, "code", err->code ? err->code : PROTO_ERR_INTERNAL);
        return proto_out_kv_str(o, "message", err->message);
}

int proto_out_token_event(ProtoOut *o, const TokenEvent *ev) {
        proto_out_map(o, ev->has_logprob ? 5 : 4);
        proto_out_kv_uint(o, "id", ev->id);
        proto_out_kv_str(o, "event", "token");
        proto_out_kv_strn(o, "text", ev->text, ev->text_len);
        proto_out_kv_uint(o, "token", ev->token);
        if (ev->has_logprob)
                proto_out_kv_double(o, "logprob", ev->logprob);
        return o->error;
}

int proto_out_done_event(ProtoOut *o, const DoneEvent *ev) {
        proto_out_map(o, ev->session ? 9 : 7);
        proto_out_kv_uint(o, "id", ev->id);
        proto_out_kv_str(o, "event", "done");
        proto_out_kv_str(o, "stop_reason", ev->stop_reason ? ev->stop_reason : PROTO_STOP_EOS);
        proto_out_kv_uint(o, "n_prompt", ev->n_prompt);
        proto_out_kv_uint(o, "n_generated", ev->n_generated);
        proto_out_kv_double(o, "prompt_ms", ev->prompt_ms);
        proto_out_kv_double(o, "generate_ms", ev->generate_ms);
        if (ev->session) {
                proto_out_kv_str(o, "session", ev->session);
                proto_out_kv_uint(o, "n_dropped", ev->n_dropped);
        }
        return o->error;
}

static bool field_present(const FieldSpec *f, const Request *req) {
        switch (f->kind) {
        case FIELD_UINT:
                return !f->off_aux || *FIELD_CPTR(req, f->off_aux, bool);
        case FIELD_SESSION:
                return *FIELD_CPTR(req, f->off, char *) != NULL;
        case FIELD_STOPS:
                return req->generate.n_stop > 0;
        default:
                return true;
        }
}

int proto_out_request(ProtoOut *o, const Request *req) {
        const OpSpec *os;
        uint32_t n = 2;

        if ((unsigned)req->op >= PROTO_OP_COUNT_)
                return -EINVAL;
        os = &op_specs[req->op];
        for (uint32_t i = 0; i < os->n_fields; i++)
                n += field_present(&os->fields[i], req);

        proto_out_map(o, n);
        proto_out_kv_uint(o, "id", req->id);
        proto_out_kv_str(o, "op", os->name);
        for (uint32_t i = 0; i < os->n_fields; i++) {
                const FieldSpec *f = &os->fields[i];

                if (!field_present(f, req))
                        continue;
                proto_out_str(o, f->name);
                switch (f->kind) {
                case FIELD_UINT:
                        proto_out_uint(o, *FIELD_CPTR(req, f->off, uint64_t));
                        break;
                case FIELD_INT:
                        proto_out_int(o, *FIELD_CPTR(req, f->off, int32_t));
                        break;
                case FIELD_FLOAT:
                        proto_out_float(o, *FIELD_CPTR(req, f->off, float));
                        break;
                case FIELD_BOOL:
                        proto_out_bool(o, *FIELD_CPTR(req, f->off, bool));
                        break;
                case FIELD_TEXT:
                        proto_out_strn(o, *FIELD_CPTR(req, f->off, char *), *FIELD_CPTR(req, f->off_aux, size_t));
                        break;
                case FIELD_SESSION:
                        proto_out_str(o, *FIELD_CPTR(req, f->off, char *));
                        break;
                case FIELD_STOPS: {
                        uint32_t ns = req->generate.n_stop;

                        proto_out_array(o, ns);
                        for (uint32_t k = 0; k < ns && k < PROTO_MAX_STOPS; k++)
                                proto_out_strn(o, req->generate.stop[k], req->generate.stop_len[k]);
                        break;
                }
                case FIELD_TOKENS: {
                        size_t nt = *FIELD_CPTR(req, f->off_aux, size_t);
                        const int32_t *t = *FIELD_CPTR(req, f->off, int32_t *);

                        if (nt > UINT32_MAX)
                                return (o->error = -E2BIG);
                        proto_out_array(o, (uint32_t)nt);
                        for (size_t k = 0; k < nt; k++)
                                proto_out_int(o, t[k]);
                        break;
                }
                }
        }
        return o->error;
}

int request_encode(const Request *req, uint8_t **ret_frame, size_t *ret_len, ProtoError *err) {
        ProtoOut o;
        Request check;
        uint8_t *frame = NULL;
        size_t len = 0;
        int r;

        if (err)
                *err = (ProtoError){ .has_id = true, .id = req->id };
        proto_out_init(&o);
        r = proto_out_request(&o, req);
        if (r >= 0)
                r = proto_out_frame(&o, &frame, &len);
        proto_out_done(&o);
        if (r == -E2BIG)
                return proto_error_set(err, r, PROTO_ERR_TOO_LARGE, false, "request does not fit in one frame");
        if (r == -ENOMEM)
                return no_memory(err);
        if (r < 0)
                return proto_error_set(err, r, PROTO_ERR_BAD_REQUEST, false, "request not encodable");

        /* the daemon's verdict, locally */
        r = request_decode(frame + PROTO_FRAME_HEADER, len - PROTO_FRAME_HEADER, &check, err);
        if (r < 0) {
                free(frame);
                return r;
        }
        request_free(&check);
        *ret_frame = frame;
        *ret_len = len;
        return 0;
}

int proto_error_encode(const ProtoError *err, uint8_t **ret_frame, size_t *ret_len) {
        ProtoOut o;
        int r;

        proto_out_init(&o);
        r = proto_out_error(&o, err);
        if (r >= 0)
                r = proto_out_frame(&o, ret_frame, ret_len);
        proto_out_done(&o);
        return r;
}

/* ===========================================================================================
 * Replies and accessors (client side)
 * =========================================================================================== */

int proto_str_eq(ProtoStr s, const char *lit) {
        size_t n = strlen(lit);

        return s.len == n && (n == 0 || memcmp(s.ptr, lit, n) == 0);
}

const msgpack_object *proto_map_get(const msgpack_object *map, const char *key) {
        if (!map || map->type != MSGPACK_OBJECT_MAP)
                return NULL;
        return find_key(&map->via.map, key);
}

int proto_obj_uint(const msgpack_object *o, uint64_t *ret) {
        if (!o)
                return -ENOENT;
        if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
                return -ERANGE;
        if (o->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
                return -EBADMSG;
        *ret = o->via.u64;
        return 0;
}

int proto_obj_int(const msgpack_object *o, int64_t *ret) {
        if (!o)
                return -ENOENT;
        if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
                *ret = o->via.i64;
                return 0;
        }
        if (o->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
                return -EBADMSG;
        if (o->via.u64 > INT64_MAX)
                return -ERANGE;
        *ret = (int64_t)o->via.u64;
        return 0;
}

int proto_obj_double(const msgpack_object *o, double *ret) {
        if (!o)
                return -ENOENT;
        switch (o->type) {
        case MSGPACK_OBJECT_FLOAT32:
        case MSGPACK_OBJECT_FLOAT64:
                *ret = o->via.f64;
                return 0;
        case MSGPACK_OBJECT_POSITIVE_INTEGER:
                *ret = (double)o->via.u64;
                return 0;
        case MSGPACK_OBJECT_NEGATIVE_INTEGER:
                *ret = (double)o->via.i64;
                return 0;
        default:
                return -EBADMSG;
        }
}

int proto_obj_bool(const msgpack_object *o, bool *ret) {
        if (!o)
                return -ENOENT;
        if (o->type != MSGPACK_OBJECT_BOOLEAN)
                return -EBADMSG;
        *ret = o->via.boolean;
        return 0;
}

int proto_obj_str(const msgpack_object *o, ProtoStr *ret) {
        if (!o)
                return -ENOENT;
        if (o->type != MSGPACK_OBJECT_STR)
                return -EBADMSG;
        *ret = (ProtoStr){ .ptr = o->via.str.ptr, .len = o->via.str.size };
        return 0;
}

static int bad_reply(ProtoError *err, const char *what) {
        return proto_error_set(err, -EINVAL, PROTO_ERR_BAD_FRAME, true, "malformed reply: %s", what);
}

static int decode_event(Reply *rep, ProtoError *err) {
        const msgpack_object *root = &rep->unpacked.data, *v;

        if (proto_str_eq(rep->event_name, "token")) {
                rep->event = REPLY_EVENT_TOKEN;
                if (proto_obj_str(proto_map_get(root, "text"), &rep->text) < 0)
                        return bad_reply(err, "token event without a string 'text'");
                if (proto_obj_uint(proto_map_get(root, "token"), &rep->token) < 0)
                        return bad_reply(err, "token event without an unsigned 'token'");
                v = proto_map_get(root, "logprob");
                if (v) {
                        if (proto_obj_double(v, &rep->logprob) < 0)
                                return bad_reply(err, "'logprob' is not a number");
                        rep->has_logprob = true;
                }
        } else if (proto_str_eq(rep->event_name, "done")) {
                rep->event = REPLY_EVENT_DONE;
                if (proto_obj_str(proto_map_get(root, "stop_reason"), &rep->stop_reason) < 0 ||
                    proto_obj_uint(proto_map_get(root, "n_prompt"), &rep->n_prompt) < 0 ||
                    proto_obj_uint(proto_map_get(root, "n_generated"), &rep->n_generated) < 0 ||
                    proto_obj_double(proto_map_get(root, "prompt_ms"), &rep->prompt_ms) < 0 ||
                    proto_obj_double(proto_map_get(root, "generate_ms"), &rep->generate_ms) < 0)
                        return bad_reply(err, "done event with a missing or mistyped field");
                v = proto_map_get(root, "session");
                if (v) {
                        if (proto_obj_str(v, &rep->session) < 0)
                                return bad_reply(err, "'session' is not a string");
                        rep->has_session = true;
                }
        } else
                rep->event = REPLY_EVENT_OTHER;
        return 0;
}

static int decode_reply(Reply *rep, ProtoError *err) {
        const msgpack_object *root = &rep->unpacked.data, *v, *e;
        bool ok;

        v = proto_map_get(root, "id");
        if (v && v->type != MSGPACK_OBJECT_NIL) {
                if (proto_obj_uint(v, &rep->id) < 0)
                        return bad_reply(err, "'id' is not an unsigned integer");
                rep->has_id = true;
                if (err) {
                        err->has_id = true;
                        err->id = rep->id;
                }
        }

        if ((e = proto_map_get(root, "error"))) {
                rep->kind = REPLY_ERROR;
                if (proto_obj_str(proto_map_get(e, "code"), &rep->error_code) < 0 ||
                    proto_obj_str(proto_map_get(e, "message"), &rep->error_message) < 0)
                        return bad_reply(err, "'error' is not a map of string 'code' and 'message'");
                return 0;
        }
        if ((v = proto_map_get(root, "event"))) {
                rep->kind = REPLY_EVENT;
                if (proto_obj_str(v, &rep->event_name) < 0)
                        return bad_reply(err, "'event' is not a string");
                return decode_event(rep, err);
        }
        if (proto_obj_bool(proto_map_get(root, "ok"), &ok) == 0 && ok) {
                rep->kind = REPLY_OK;
                return 0;
        }
        return bad_reply(err, "neither 'ok': true, 'error' nor 'event'");
}

int reply_decode(const uint8_t *body, size_t len, Reply *ret, ProtoError *err) {
        Reply rep = { 0 };
        int r;

        if (err)
                *err = (ProtoError){ 0 };
        msgpack_unpacked_init(&rep.unpacked);
        rep.body = malloc(len);
        if (!rep.body) {
                r = no_memory(err);
                goto fail;
        }
        memcpy(rep.body, body, len);
        r = unpack_checked(rep.body, len, &rep.unpacked, err);
        if (r < 0)
                goto fail;
        r = decode_reply(&rep, err);
        if (r < 0)
                goto fail;
        rep.root = rep.unpacked.data;
        *ret = rep;
        return 0;
fail:
        reply_free(&rep);
        return r;
}

void reply_free(Reply *r) {
        if (!r)
                return;
        if (r->unpacked.zone)
                msgpack_unpacked_destroy(&r->unpacked);
        free(r->body);
        *r = (Reply){ 0 };
}
