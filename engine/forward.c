/* engine/forward.c — the transformer forward pass (HF Mixtral semantics), reading top to
 * bottom like the math. One Forward per thread; the Model is shared read-only. */
#include "forward.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "limits.h"
#include "ops.h"
#include "quant.h"

struct Forward {
        const Model *m;
        uint32_t max_chunk, max_slots;
        double *inv_freq;   /* [hd/2] RoPE inverse frequencies */
        float *x;           /* [T][D] residual stream */
        float *xb;          /* [T][D] normed input of a sub-block */
        float *q;           /* [T][H*hd] */
        float *k;           /* [T][KV*hd] this chunk's keys */
        float *v;           /* [T][KV*hd] this chunk's values */
        float *att;         /* [T][H*hd] attention output */
        float *scores;      /* [max_slots + max_chunk] one head's attention weights */
        float *router;      /* [T][E] router probabilities */
        int32_t *sel;       /* [T][k] chosen experts, ascending ids */
        float *sel_w;       /* [T][k] their renormalised weights */
        int32_t *rows;      /* [T*k] token index of each row routed to the current expert */
        int32_t *rows_slot; /* [T*k] which of the token's k choices that row is */
        float *xe;          /* [T][D] gathered inputs of one expert */
        float *gate;        /* [T][FF] */
        float *up;          /* [T][FF] */
        float *eout;        /* [T][D] one expert's outputs */
        float *moe;         /* [T][k][D] per-choice expert outputs before the weighted sum */
        float *row_tmp;     /* [max(D, FF, H*hd)] dequantized weight row */
        float *logits;      /* [max_chunk][V] for callers (forward_logits_buffer) */
        ForwardRouteFn route_fn;
        void *route_data;
};

int forward_new(const Model *m, uint32_t max_chunk, uint32_t max_slots, Forward **ret_fw) {
        const ModelConfig *c = &m->cfg;
        if (max_chunk == 0 || max_chunk > FORWARD_MAX_CHUNK || max_slots == 0)
                return -EINVAL;
        Forward *fw = calloc(1, sizeof(*fw));
        if (!fw)
                return -ENOMEM;
        const size_t T = max_chunk, D = c->n_embd, FF = c->n_ff, Q = (size_t)c->n_head * c->head_dim,
                     KV = (size_t)c->n_head_kv * c->head_dim, K = c->n_expert ? c->n_expert_used : 1,
                     E = c->n_expert ? c->n_expert : 1;
        size_t widest = D > FF ? D : FF;
        if (Q > widest)
                widest = Q;
        fw->m = m;
        fw->max_chunk = max_chunk;
        fw->max_slots = max_slots;
        fw->inv_freq = malloc(c->head_dim / 2 * sizeof(double));
        fw->x = malloc(T * D * sizeof(float));
        fw->xb = malloc(T * D * sizeof(float));
        fw->q = malloc(T * Q * sizeof(float));
        fw->k = malloc(T * KV * sizeof(float));
        fw->v = malloc(T * KV * sizeof(float));
        fw->att = malloc(T * Q * sizeof(float));
        fw->scores = malloc(((size_t)max_slots + T) * sizeof(float));
        fw->router = malloc(T * E * sizeof(float));
        fw->sel = malloc(T * K * sizeof(int32_t));
        fw->sel_w = malloc(T * K * sizeof(float));
        fw->rows = malloc(T * K * sizeof(int32_t));
        fw->rows_slot = malloc(T * K * sizeof(int32_t));
        fw->xe = malloc(T * D * sizeof(float));
        fw->gate = malloc(T * FF * sizeof(float));
        fw->up = malloc(T * FF * sizeof(float));
        fw->eout = malloc(T * D * sizeof(float));
        fw->moe = malloc(T * K * D * sizeof(float));
        fw->row_tmp = malloc(widest * sizeof(float));
        fw->logits = malloc(T * c->n_vocab * sizeof(float));
        if (!fw->logits || !fw->inv_freq || !fw->x || !fw->xb || !fw->q || !fw->k || !fw->v || !fw->att || !fw->scores || !fw->router ||
            !fw->sel || !fw->sel_w || !fw->rows || !fw->rows_slot || !fw->xe || !fw->gate || !fw->up || !fw->eout ||
            !fw->moe || !fw->row_tmp) {
                forward_free(fw);
                return -ENOMEM;
        }
        for (uint32_t i = 0; i < c->head_dim / 2; i++)
                fw->inv_freq[i] = pow((double)c->rope_theta, -2.0 * i / (double)c->head_dim);
        *ret_fw = fw;
        return 0;
}

Forward *forward_free(Forward *fw) {
        if (!fw)
                return NULL;
        free(fw->inv_freq);
        free(fw->x);
        free(fw->xb);
        free(fw->q);
        free(fw->k);
        free(fw->v);
        free(fw->att);
        free(fw->scores);
        free(fw->router);
        free(fw->sel);
        free(fw->sel_w);
        free(fw->rows);
        free(fw->rows_slot);
        free(fw->xe);
        free(fw->gate);
        free(fw->up);
        free(fw->eout);
        free(fw->moe);
        free(fw->row_tmp);
        free(fw->logits);
        free(fw);
        return NULL;
}

void forward_set_route_hook(Forward *fw, ForwardRouteFn fn, void *userdata) {
        fw->route_fn = fn;
        fw->route_data = userdata;
}

float *forward_logits_buffer(Forward *fw) {
        return fw->logits;
}

uint32_t forward_max_chunk(const Forward *fw, const KVCache *kv) {
        return fw->max_chunk < kv->n_roll ? fw->max_chunk : kv->n_roll;
}

/* Key/value vectors of position p for layer il: from this chunk's scratch when p >= p0,
 * else from the cache. */
static const float *kv_row(const Forward *fw, const KVCache *kv, const float *cache, const float *chunk, uint32_t il,
                           int64_t p, int64_t p0) {
        if (p >= p0)
                return chunk + (size_t)(p - p0) * kv->kv_dim;
        return cache + ((size_t)il * kv->n_slots + kv_slot(kv, p)) * kv->kv_dim;
}

/* Causal attention of the chunk's queries over the cache plus the chunk itself, keys in
 * ascending position order (so results never depend on how a prompt was chunked). */
static void attention(Forward *fw, const KVCache *kv, uint32_t il, uint32_t T, int64_t p0) {
        const ModelConfig *c = &fw->m->cfg;
        const uint32_t hd = c->head_dim, group = c->n_head / c->n_head_kv;
        const float scale = 1.0f / sqrtf((float)hd);
        const float *kc = kv->k, *vc = kv->v;

        for (uint32_t t = 0; t < T; t++) {
                const int64_t qpos = p0 + t;
                const int64_t n_sink = qpos + 1 < (int64_t)kv->n_sink ? qpos + 1 : (int64_t)kv->n_sink;
                const int64_t ws = kv_window_start(kv, qpos);
                for (uint32_t h = 0; h < c->n_head; h++) {
                        const float *qh = fw->q + ((size_t)t * c->n_head + h) * hd;
                        const size_t koff = (size_t)(h / group) * hd;
                        float *out = fw->att + ((size_t)t * c->n_head + h) * hd;
                        uint32_t n = 0;

                        for (int64_t p = 0; p < n_sink; p++)
                                fw->scores[n++] = dot_f32(qh, kv_row(fw, kv, kc, fw->k, il, p, p0) + koff, hd) * scale;
                        for (int64_t p = ws; p <= qpos; p++)
                                fw->scores[n++] = dot_f32(qh, kv_row(fw, kv, kc, fw->k, il, p, p0) + koff, hd) * scale;
                        softmax(fw->scores, n);

                        memset(out, 0, hd * sizeof(float));
                        n = 0;
                        for (int64_t p = 0; p < qpos + 1; p++) {
                                if (p >= n_sink && p < ws) {
                                        p = ws - 1; /* skip the dropped positions */
                                        continue;
                                }
                                const float *vp = kv_row(fw, kv, vc, fw->v, il, p, p0) + koff;
                                const float w = fw->scores[n++];
                                for (uint32_t i = 0; i < hd; i++)
                                        out[i] += w * vp[i];
                        }
                }
        }
}

/* Store the chunk's keys and values in their slots (after every query has read them). */
static void kv_store(const Forward *fw, KVCache *kv, uint32_t il, uint32_t T, int64_t p0) {
        for (uint32_t t = 0; t < T; t++) {
                const size_t off = ((size_t)il * kv->n_slots + kv_slot(kv, p0 + t)) * kv->kv_dim;
                memcpy(kv->k + off, fw->k + (size_t)t * kv->kv_dim, kv->kv_dim * sizeof(float));
                memcpy(kv->v + off, fw->v + (size_t)t * kv->kv_dim, kv->kv_dim * sizeof(float));
        }
}

/* Softmax over the router logits, top-k (ties: lower id), renormalise; selections are
 * stored with ascending expert ids so experts are summed in id order. */
static void route(Forward *fw, uint32_t il, uint32_t T) {
        const ModelConfig *c = &fw->m->cfg;
        const uint32_t E = c->n_expert, K = c->n_expert_used;
        for (uint32_t t = 0; t < T; t++) {
                float *p = fw->router + (size_t)t * E;
                int32_t *sel = fw->sel + (size_t)t * K;
                float *w = fw->sel_w + (size_t)t * K;
                uint8_t taken[MODEL_MAX_EXPERTS] = { 0 };
                softmax(p, E);
                for (uint32_t j = 0; j < K; j++) {
                        int32_t best = -1;
                        for (uint32_t e = 0; e < E; e++)
                                if (!taken[e] && (best < 0 || p[e] > p[best]))
                                        best = (int32_t)e;
                        taken[best] = 1;
                }
                float sum = 0.0f;
                uint32_t j = 0;
                for (uint32_t e = 0; e < E; e++)
                        if (taken[e]) {
                                sel[j] = (int32_t)e;
                                w[j] = p[e];
                                sum += p[e];
                                j++;
                        }
                for (j = 0; j < K; j++)
                        w[j] /= sum;
                if (fw->route_fn)
                        fw->route_fn(fw->route_data, il, sel, K);
        }
}

/* SwiGLU of one expert over the rows gathered in fw->xe: eout = down(silu(gate x) * up x). */
static void expert_ffn(Forward *fw, const LayerWeights *L, uint32_t e, uint32_t n) {
        const ModelConfig *c = &fw->m->cfg;
        const size_t FF = c->n_ff;
        matmul(&L->gate[e], fw->xe, n, fw->gate, fw->row_tmp);
        matmul(&L->up[e], fw->xe, n, fw->up, fw->row_tmp);
        for (size_t i = 0; i < n * FF; i++)
                fw->gate[i] = silu(fw->gate[i]) * fw->up[i];
        matmul(&L->down[e], fw->gate, n, fw->eout, fw->row_tmp);
}

/* Mixture of experts on fw->xb, result added into the residual fw->x. Tokens routed to an
 * expert are batched so its weights are read once per chunk. */
static void moe(Forward *fw, const LayerWeights *L, uint32_t il, uint32_t T) {
        const ModelConfig *c = &fw->m->cfg;
        const size_t D = c->n_embd;

        if (c->n_expert == 0) {
                memcpy(fw->xe, fw->xb, T * D * sizeof(float));
                expert_ffn(fw, L, 0, T);
                for (size_t i = 0; i < T * D; i++)
                        fw->x[i] += fw->eout[i];
                return;
        }

        const uint32_t E = c->n_expert, K = c->n_expert_used;
        matmul(&L->router, fw->xb, T, fw->router, fw->row_tmp);
        route(fw, il, T);

        for (uint32_t e = 0; e < E; e++) {
                uint32_t n = 0;
                for (uint32_t t = 0; t < T; t++)
                        for (uint32_t j = 0; j < K; j++)
                                if (fw->sel[t * K + j] == (int32_t)e) {
                                        fw->rows[n] = (int32_t)t;
                                        fw->rows_slot[n] = (int32_t)j;
                                        memcpy(fw->xe + n * D, fw->xb + (size_t)t * D, D * sizeof(float));
                                        n++;
                                }
                if (n == 0)
                        continue;
                expert_ffn(fw, L, e, n);
                for (uint32_t i = 0; i < n; i++)
                        memcpy(fw->moe + ((size_t)fw->rows[i] * K + fw->rows_slot[i]) * D, fw->eout + i * D,
                               D * sizeof(float));
        }
        for (uint32_t t = 0; t < T; t++) {
                float *x = fw->x + (size_t)t * D;
                for (size_t i = 0; i < D; i++) {
                        float s = 0.0f;
                        for (uint32_t j = 0; j < K; j++)
                                s += fw->sel_w[t * K + j] * fw->moe[((size_t)t * K + j) * D + i];
                        x[i] += s;
                }
        }
}

int forward_chunk(Forward *fw, KVCache *kv, const int32_t *tokens, uint32_t T, ForwardLogits mode, float *logits) {
        const Model *m = fw->m;
        const ModelConfig *c = &m->cfg;
        const size_t D = c->n_embd, Q = (size_t)c->n_head * c->head_dim, KVD = kv->kv_dim;
        const int64_t p0 = kv->n_pos;

        if (T == 0 || T > forward_max_chunk(fw, kv) || kv->n_slots > fw->max_slots || kv->n_layer != c->n_layer ||
            KVD != (size_t)c->n_head_kv * c->head_dim)
                return -EINVAL;
        for (uint32_t t = 0; t < T; t++)
                if (tokens[t] < 0 || (uint32_t)tokens[t] >= c->n_vocab)
                        return -EINVAL;

        /* x[t] = embedding of token t */
        const QuantTraits *et = quant_traits(m->tok_embd.type);
        for (uint32_t t = 0; t < T; t++)
                et->dequant(m->tok_embd.data + (uint64_t)tokens[t] * m->tok_embd.row_bytes, fw->x + t * D, (int64_t)D);

        for (uint32_t il = 0; il < c->n_layer; il++) {
                const LayerWeights *L = &m->layers[il];

                /* attention block: xb = norm(x); q,k,v projections; RoPE; attend; x += wo att */
                for (uint32_t t = 0; t < T; t++)
                        rmsnorm(fw->xb + t * D, fw->x + t * D, L->attn_norm, (int64_t)D, c->rms_eps);
                matmul(&L->wq, fw->xb, T, fw->q, fw->row_tmp);
                matmul(&L->wk, fw->xb, T, fw->k, fw->row_tmp);
                matmul(&L->wv, fw->xb, T, fw->v, fw->row_tmp);
                for (uint32_t t = 0; t < T; t++) {
                        rope(fw->q + t * Q, c->n_head, c->head_dim, p0 + t, fw->inv_freq);
                        rope(fw->k + t * KVD, c->n_head_kv, c->head_dim, p0 + t, fw->inv_freq);
                }
                attention(fw, kv, il, T, p0);
                kv_store(fw, kv, il, T, p0);
                matmul(&L->wo, fw->att, T, fw->xb, fw->row_tmp);
                for (size_t i = 0; i < T * D; i++)
                        fw->x[i] += fw->xb[i];

                /* feed-forward block: xb = norm(x); x += sum_k w_k expert_k(xb) */
                for (uint32_t t = 0; t < T; t++)
                        rmsnorm(fw->xb + t * D, fw->x + t * D, L->ffn_norm, (int64_t)D, c->rms_eps);
                moe(fw, L, il, T);
        }
        kv->n_pos += T;

        if (mode == FORWARD_LOGITS_NONE)
                return 0;
        const uint32_t first = mode == FORWARD_LOGITS_ALL ? 0 : T - 1;
        for (uint32_t t = first; t < T; t++)
                rmsnorm(fw->xb + (t - first) * D, fw->x + t * D, m->output_norm, (int64_t)D, c->rms_eps);
        matmul(&m->output, fw->xb, T - first, logits, fw->row_tmp);
        return 0;
}
