/* engine/model.c — reads "llama"-arch hyperparameters and builds weight views over the
 * GGUF mapping: dense FFN, merged MoE (ffn_*_exps, 3-D) and per-expert MoE (ffn_*.E).
 * Called once at load; the Model is read-only afterwards. */
#include "model.h"

#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine_limits.h"
#include "quant.h"

static int fail(ModelError *err, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(ModelError *err, int code, const char *fmt, ...) {
        if (err) {
                va_list ap;
                va_start(ap, fmt);
                vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
                va_end(ap);
        }
        return code;
}

/* Required unsigned hyperparameter in [lo, hi]. */
static int get_param(const GGUFFile *f, const char *key, uint32_t lo, uint32_t hi, ModelError *err, uint32_t *ret) {
        uint32_t v;
        int r = gguf_get_u32(f, key, &v);
        if (r == -ENOENT)
                return fail(err, -EBADMSG, "missing metadata key %s", key);
        if (r < 0 || v < lo || v > hi)
                return fail(err, -EBADMSG, "metadata %s out of range (%u..%u)", key, lo, hi);
        *ret = v;
        return 0;
}

static int get_param_opt(const GGUFFile *f, const char *key, uint32_t def, uint32_t lo, uint32_t hi, ModelError *err,
                         uint32_t *ret) {
        if (!gguf_find_kv(f, key)) {
                *ret = def;
                return 0;
        }
        return get_param(f, key, lo, hi, err, ret);
}

static int read_config(const GGUFFile *f, ModelError *err, ModelConfig *c) {
        GGUFString arch;
        int r;

        if (gguf_get_str(f, "general.architecture", &arch) < 0)
                return fail(err, -EBADMSG, "missing general.architecture");
        if (!gguf_str_eq(arch, "llama"))
                return fail(err, -ENOTSUP, "architecture '%.*s' is not supported (llama is)", (int)(arch.len > 40 ? 40 : arch.len), arch.data);

        if ((r = get_param(f, "llama.block_count", 1, MODEL_MAX_LAYERS, err, &c->n_layer)) < 0 ||
            (r = get_param(f, "llama.embedding_length", 1, MODEL_MAX_EMBD, err, &c->n_embd)) < 0 ||
            (r = get_param(f, "llama.feed_forward_length", 1, MODEL_MAX_FF, err, &c->n_ff)) < 0 ||
            (r = get_param(f, "llama.attention.head_count", 1, MODEL_MAX_HEADS, err, &c->n_head)) < 0 ||
            (r = get_param_opt(f, "llama.attention.head_count_kv", c->n_head, 1, MODEL_MAX_HEADS, err, &c->n_head_kv)) < 0 ||
            (r = get_param_opt(f, "llama.context_length", 4096, 1, MODEL_MAX_CONTEXT, err, &c->n_ctx_train)) < 0 ||
            (r = get_param_opt(f, "llama.expert_count", 0, 0, MODEL_MAX_EXPERTS, err, &c->n_expert)) < 0 ||
            (r = get_param_opt(f, "llama.expert_used_count", 0, 0, MODEL_MAX_EXPERTS, err, &c->n_expert_used)) < 0 ||
            (r = get_param_opt(f, "llama.attention.sliding_window", 0, 0, MODEL_MAX_CONTEXT, err, &c->sliding_window)) < 0)
                return r;

        if (c->n_embd % c->n_head != 0)
                return fail(err, -EBADMSG, "embedding_length %u is not a multiple of head_count %u", c->n_embd, c->n_head);
        c->head_dim = c->n_embd / c->n_head;
        if (c->head_dim % 2 != 0 || c->head_dim > MODEL_MAX_HEAD_DIM)
                return fail(err, -EBADMSG, "head dimension %u must be even and at most %d", c->head_dim, MODEL_MAX_HEAD_DIM);
        uint32_t rope_dims;
        if ((r = get_param_opt(f, "llama.rope.dimension_count", c->head_dim, 1, MODEL_MAX_HEAD_DIM, err, &rope_dims)) < 0)
                return r;
        if (rope_dims != c->head_dim)
                return fail(err, -ENOTSUP, "partial RoPE (rope.dimension_count %u != head dim %u) is not supported", rope_dims, c->head_dim);
        if (c->n_head % c->n_head_kv != 0)
                return fail(err, -EBADMSG, "head_count %u is not a multiple of head_count_kv %u", c->n_head, c->n_head_kv);
        if (c->n_expert == 1)
                return fail(err, -EBADMSG, "expert_count 1 is not a mixture");
        if (c->n_expert > 0 && (c->n_expert_used < 1 || c->n_expert_used > c->n_expert))
                return fail(err, -EBADMSG, "expert_used_count %u out of range 1..%u", c->n_expert_used, c->n_expert);

        c->rope_theta = 10000.0f;
        if (gguf_find_kv(f, "llama.rope.freq_base") && gguf_get_f32(f, "llama.rope.freq_base", &c->rope_theta) < 0)
                return fail(err, -EBADMSG, "llama.rope.freq_base is not a float");
        if (!(c->rope_theta > 0.0f) || !isfinite(c->rope_theta))
                return fail(err, -EBADMSG, "llama.rope.freq_base must be positive and finite");
        c->rms_eps = 1e-5f;
        if (gguf_find_kv(f, "llama.attention.layer_norm_rms_epsilon") &&
            gguf_get_f32(f, "llama.attention.layer_norm_rms_epsilon", &c->rms_eps) < 0)
                return fail(err, -EBADMSG, "llama.attention.layer_norm_rms_epsilon is not a float");
        if (!(c->rms_eps >= 0.0f) || !isfinite(c->rms_eps))
                return fail(err, -EBADMSG, "layer_norm_rms_epsilon must be finite and >= 0");
        return 0;
}

/* Find a tensor and check its shape: ne[0..n_dims-1] must equal want[] (others 1). */
static int find_tensor(const GGUFFile *f, const char *name, int n_dims, const uint64_t *want, ModelError *err,
                       const GGUFTensor **ret) {
        const GGUFTensor *t = gguf_find_tensor(f, name);
        if (!t)
                return fail(err, -EBADMSG, "missing tensor %s", name);
        for (int d = 0; d < GGUF_MAX_DIMS; d++) {
                uint64_t w = d < n_dims ? want[d] : 1;
                if (t->ne[d] != w)
                        return fail(err, -EBADMSG, "tensor %s: dimension %d is %llu, expected %llu", name, d,
                                    (unsigned long long)t->ne[d], (unsigned long long)w);
        }
        *ret = t;
        return 0;
}

/* check: refuse a tensor with a non-finite scale (quant_check_finite), so a corrupt file
 * fails at load rather than with garbage. Done for every tensor but the experts: those a
 * token reads whole (attention, router, output head, a dense model's FFN) and the embedding
 * (one matrix of the output head's size). The experts, most of a Mixtral file, are not read
 * at load; a NaN there shows in the logits, which every request checks. */
static int load_matrix_checked(const GGUFFile *f, const char *name, uint64_t rows, uint64_t cols, bool check,
                               ModelError *err, Matrix *ret) {
        const GGUFTensor *t;
        uint64_t want[2] = { cols, rows }, bad;
        int r = find_tensor(f, name, 2, want, err, &t);
        if (r < 0)
                return r;
        ret->data = t->data;
        ret->type = t->type;
        ret->rows = rows;
        ret->cols = cols;
        if ((r = quant_row_bytes(t->type, cols, &ret->row_bytes)) < 0)
                return r;
        if (check && quant_check_finite(t->type, t->data, rows * cols, &bad) < 0)
                return fail(err, -EBADMSG, "tensor %s: a non-finite scale or value (NaN or infinity) at weight %llu "
                            "(row %llu): the file is corrupt", name, (unsigned long long)bad,
                            (unsigned long long)(bad / cols));
        return 0;
}

static int load_matrix(const GGUFFile *f, const char *name, uint64_t rows, uint64_t cols, ModelError *err, Matrix *ret) {
        return load_matrix_checked(f, name, rows, cols, true, err, ret);
}

/* Expert e of a merged 3-D tensor ne = [cols, rows, E]. */
static int load_expert_slices(const GGUFFile *f, const char *name, uint64_t rows, uint64_t cols, uint32_t n_expert,
                              ModelError *err, Matrix *ret) {
        const GGUFTensor *t;
        uint64_t want[3] = { cols, rows, n_expert };
        int r = find_tensor(f, name, 3, want, err, &t);
        if (r < 0)
                return r;
        uint64_t row_bytes;
        r = quant_row_bytes(t->type, cols, &row_bytes);
        if (r < 0)
                return r;
        for (uint32_t e = 0; e < n_expert; e++)
                ret[e] = (Matrix){ .data = (const uint8_t *)t->data + (uint64_t)e * rows * row_bytes,
                                   .type = t->type, .rows = rows, .cols = cols, .row_bytes = row_bytes };
        return 0;
}

/* A 1-D weight of length n, dequantized into a malloc'd float array. */
static int load_vector(const GGUFFile *f, const char *name, uint64_t n, ModelError *err, float **ret) {
        const GGUFTensor *t;
        int r = find_tensor(f, name, 1, &n, err, &t);
        if (r < 0)
                return r;
        float *v = malloc(n * sizeof(float));
        if (!v)
                return -ENOMEM;
        quant_traits(t->type)->dequant(t->data, v, (int64_t)n);
        for (uint64_t i = 0; i < n; i++)
                if (!isfinite(v[i])) {
                        free(v);
                        return fail(err, -EBADMSG, "tensor %s: non-finite value at %llu", name, (unsigned long long)i);
                }
        *ret = v;
        return 0;
}

static int load_layer(const Model *m, uint32_t il, ModelError *err, LayerWeights *L) {
        const GGUFFile *f = m->file;
        const ModelConfig *c = &m->cfg;
        const uint64_t D = c->n_embd, FF = c->n_ff, Q = (uint64_t)c->n_head * c->head_dim,
                       KV = (uint64_t)c->n_head_kv * c->head_dim;
        const uint32_t n_mats = c->n_expert ? c->n_expert : 1;
        char name[96];
        int r;

#define NAME(fmt, ...) (snprintf(name, sizeof(name), "blk.%u." fmt, il, ##__VA_ARGS__), name)
        if ((r = load_vector(f, NAME("attn_norm.weight"), D, err, &L->attn_norm)) < 0 ||
            (r = load_vector(f, NAME("ffn_norm.weight"), D, err, &L->ffn_norm)) < 0 ||
            (r = load_matrix(f, NAME("attn_q.weight"), Q, D, err, &L->wq)) < 0 ||
            (r = load_matrix(f, NAME("attn_k.weight"), KV, D, err, &L->wk)) < 0 ||
            (r = load_matrix(f, NAME("attn_v.weight"), KV, D, err, &L->wv)) < 0 ||
            (r = load_matrix(f, NAME("attn_output.weight"), D, Q, err, &L->wo)) < 0)
                return r;

        L->gate = calloc(n_mats, sizeof(Matrix));
        L->up = calloc(n_mats, sizeof(Matrix));
        L->down = calloc(n_mats, sizeof(Matrix));
        if (!L->gate || !L->up || !L->down)
                return -ENOMEM;

        if (c->n_expert == 0) {
                if ((r = load_matrix(f, NAME("ffn_gate.weight"), FF, D, err, &L->gate[0])) < 0 ||
                    (r = load_matrix(f, NAME("ffn_up.weight"), FF, D, err, &L->up[0])) < 0 ||
                    (r = load_matrix(f, NAME("ffn_down.weight"), D, FF, err, &L->down[0])) < 0)
                        return r;
                return 0;
        }

        if ((r = load_matrix(f, NAME("ffn_gate_inp.weight"), c->n_expert, D, err, &L->router)) < 0)
                return r;
        if (gguf_find_tensor(f, NAME("ffn_gate_exps.weight"))) {
                if ((r = load_expert_slices(f, NAME("ffn_gate_exps.weight"), FF, D, c->n_expert, err, L->gate)) < 0 ||
                    (r = load_expert_slices(f, NAME("ffn_up_exps.weight"), FF, D, c->n_expert, err, L->up)) < 0 ||
                    (r = load_expert_slices(f, NAME("ffn_down_exps.weight"), D, FF, c->n_expert, err, L->down)) < 0)
                        return r;
                return 0;
        }
        for (uint32_t e = 0; e < c->n_expert; e++)
                if ((r = load_matrix_checked(f, NAME("ffn_gate.%u.weight", e), FF, D, false, err, &L->gate[e])) < 0 ||
                    (r = load_matrix_checked(f, NAME("ffn_up.%u.weight", e), FF, D, false, err, &L->up[e])) < 0 ||
                    (r = load_matrix_checked(f, NAME("ffn_down.%u.weight", e), D, FF, false, err, &L->down[e])) < 0)
                        return r;
#undef NAME
        return 0;
}

int model_load(const char *path, ModelError *err, Model **ret_model) {
        GGUFError gerr = { "" };
        Model *m = calloc(1, sizeof(*m));
        int r;

        if (!m)
                return -ENOMEM;
        r = gguf_open(path, &gerr, &m->file);
        if (r < 0) {
                fail(err, r, "%s", gerr.msg);
                goto fail;
        }
        if ((r = read_config(m->file, err, &m->cfg)) < 0)
                goto fail;

        r = tokenizer_load(m->file, &m->tok);
        if (r < 0) {
                fail(err, r, "bad tokenizer metadata (%s)", strerror(-r));
                goto fail;
        }
        m->cfg.n_vocab = tokenizer_n_vocab(m->tok);
        if (m->cfg.n_vocab > MODEL_MAX_VOCAB) {
                r = fail(err, -E2BIG, "vocabulary of %u tokens over the limit", m->cfg.n_vocab);
                goto fail;
        }

        const uint64_t D = m->cfg.n_embd, V = m->cfg.n_vocab;
        if ((r = load_matrix(m->file, "token_embd.weight", V, D, err, &m->tok_embd)) < 0 ||
            (r = load_vector(m->file, "output_norm.weight", D, err, &m->output_norm)) < 0)
                goto fail;
        if (gguf_find_tensor(m->file, "output.weight")) {
                if ((r = load_matrix(m->file, "output.weight", V, D, err, &m->output)) < 0)
                        goto fail;
        } else {
                m->output = m->tok_embd; /* tied embeddings */
        }

        m->layers = calloc(m->cfg.n_layer, sizeof(*m->layers));
        if (!m->layers) {
                r = -ENOMEM;
                goto fail;
        }
        for (uint32_t il = 0; il < m->cfg.n_layer; il++)
                if ((r = load_layer(m, il, err, &m->layers[il])) < 0)
                        goto fail;
        m->moe_layout = m->cfg.n_expert == 0 ? "dense"
                        : gguf_find_tensor(m->file, "blk.0.ffn_gate_exps.weight") ? "merged" : "per-expert";
        *ret_model = m;
        return 0;
fail:
        if (r == -ENOMEM)
                fail(err, r, "out of memory");
        model_free(m);
        return r;
}

Model *model_free(Model *m) {
        if (!m)
                return NULL;
        if (m->layers)
                for (uint32_t il = 0; il < m->cfg.n_layer; il++) {
                        LayerWeights *L = &m->layers[il];
                        free(L->attn_norm);
                        free(L->ffn_norm);
                        free(L->gate);
                        free(L->up);
                        free(L->down);
                }
        free(m->layers);
        free(m->output_norm);
        tokenizer_free(m->tok);
        gguf_close(m->file);
        free(m);
        return NULL;
}
