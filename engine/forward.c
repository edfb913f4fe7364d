/* engine/forward.c — the transformer forward pass (HF Mixtral semantics), reading top to
 * bottom like the math. Matrix products are split over the pool's threads by output rows,
 * attention by (token, KV head) pairs or, for few tokens, (token, KV head, key block)
 * triples, so the split never changes a result. One Forward per caller thread; the Model is
 * shared read-only. */
#include "forward.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine_limits.h"
#include "experts.h"
#include "numa.h"
#include "ops.h"
#include "quant.h"
#include "products.h"
#include "quant_int8.h"

/* One thread's attention scratch: [group][ATTN_KEY_BLOCK] scores, a key block's (m, s, o)
 * and a (row, KV head)'s running fold (see attention below). */
typedef struct AttnScratch {
        float *scores;
        float *m, *o;             /* [group], [group][hd] */
        double *s;                /* [group] */
        float *row_m;             /* [group] the running fold of a (row, KV head) */
        double *row_s;            /* [group] */
} AttnScratch;

struct Forward {
        const Model *m;
        Pool *pool;               /* borrowed; NULL = this thread only */
        unsigned n_threads;
        uint32_t max_rows, max_slots;
        double *inv_freq;         /* [hd/2] RoPE inverse frequencies */
        /* per row of the batch */
        uint32_t *row_item;       /* [T] which item */
        int64_t *row_pos;         /* [T] its position */
        uint32_t *item_row0;      /* [T] first row of each item */
        float *x;                 /* [T][D] residual stream */
        float *xb;                /* [T][D] normed input of a sub-block */
        float *q;                 /* [T][H*hd] */
        float *k;                 /* [T][KV*hd] this batch's keys */
        float *v;                 /* [T][KV*hd] this batch's values */
        uint8_t *kc, *vc;         /* [T][kc_row bytes] the same in the row's cache type: [KV][row bytes] */
        size_t kc_row;            /* KV*hd floats' bytes: room for a row in any KV type */
        float *att;               /* [T][H*hd] attention output */
        float *router;            /* [T][E] router probabilities */
        int32_t *sel;             /* [T][k] chosen experts, ascending ids */
        float *sel_w;             /* [T][k] their renormalised weights */
        uint32_t *choice_row;     /* [T][k] the gathered row of each (token, choice) */
        float *xe;                /* [T*k][D] inputs gathered per expert, experts in id order */
        float *eout;              /* [T*k][D] their expert outputs, before the weighted sum */
        float *logits;            /* [T][V] for callers (forward_logits_buffer) and the head */
        uint32_t *logit_rows;     /* [T] rows whose logits are wanted */
        uint8_t *row_exact;       /* [T] 1: the row runs on the float path whatever int8 says (FORWARD_EXACT_POSITIONS) */
        uint8_t *xe_exact;        /* [T*k] the same for the rows gathered for experts */
        uint8_t *out_exact;       /* [T] the same for the rows of the output head */
        /* per thread */
        AttnScratch *attn;        /* [threads] */
        ForwardAttnSplit attn_split;
        /* attention split over key blocks (few rows), NULL with one thread: per item */
        float *part_m;            /* [ATTN_SPLIT_MAX_ITEMS][group] a block's largest scores */
        double *part_s;           /* [ATTN_SPLIT_MAX_ITEMS][group] its sums of exponentials */
        float *part_o;            /* [ATTN_SPLIT_MAX_ITEMS][group][hd] its weighted values */
        unsigned long *split_item0; /* [T] each row's first item */
        uint32_t *part_left;      /* [T][KV] blocks not done yet (atomic) */
        ForwardRouteFn route_fn;
        void *route_data;
        ProductCtx pc;            /* the products' pool, NUMA plan, 8-bit switch, row scratch */
        ExpertsLocal *local;      /* the local expert executor on pc */
        ExpertExec experts;       /* who runs a layer's experts: local, or one set by forward_set_experts */
        /* The same inputs quantized, one buffer per activation format (QuantAct): */
        void *xq_in[QUANT_ACT_COUNT_];  /* [T][max(D, H*hd)/256] blocks: a product's input */
        void *xq_moe[QUANT_ACT_COUNT_]; /* [T][D/256] the feed-forward input */
        void *xq_e[QUANT_ACT_COUNT_];   /* [T*k][D/256] the rows gathered for the experts */
};

/* Scratch rows start on cache lines: the SIMD dot products run at full speed only on
 * 32/64-byte aligned data (their order, and so their results, never depend on it). */
static void *alloc64(size_t bytes) {
        return aligned_alloc(64, (bytes + 63) / 64 * 64);
}

int forward_new(const Model *m, uint32_t max_rows, uint32_t max_slots, Pool *pool, Forward **ret_fw) {
        const ModelConfig *c = &m->cfg;
        if (max_rows == 0 || max_rows > FORWARD_MAX_CHUNK || max_slots == 0)
                return -EINVAL;
        Forward *fw = calloc(1, sizeof(*fw));
        if (!fw)
                return -ENOMEM;
        const size_t T = max_rows, D = c->n_embd, FF = c->n_ff, Q = (size_t)c->n_head * c->head_dim,
                     group = c->n_head / c->n_head_kv,
                     KV = (size_t)c->n_head_kv * c->head_dim, K = c->n_expert ? c->n_expert_used : 1,
                     E = c->n_expert ? c->n_expert : 1;
        size_t widest = D > FF ? D : FF;
        if (Q > widest)
                widest = Q;
        fw->m = m;
        fw->pool = pool;
        fw->pc.pool = pool;
        fw->n_threads = pool_size(pool);
        fw->max_rows = max_rows;
        fw->max_slots = max_slots;
        fw->inv_freq = alloc64(c->head_dim / 2 * sizeof(double));
        fw->row_item = alloc64(T * sizeof(uint32_t));
        fw->row_pos = alloc64(T * sizeof(int64_t));
        fw->item_row0 = alloc64(T * sizeof(uint32_t));
        fw->x = alloc64(T * D * sizeof(float));
        fw->xb = alloc64(T * D * sizeof(float));
        fw->q = alloc64(T * Q * sizeof(float));
        fw->k = alloc64(T * KV * sizeof(float));
        fw->v = alloc64(T * KV * sizeof(float));
        fw->kc_row = KV * sizeof(float);
        fw->kc = alloc64(T * fw->kc_row);
        fw->vc = alloc64(T * fw->kc_row);
        fw->att = alloc64(T * Q * sizeof(float));
        fw->router = alloc64(T * E * sizeof(float));
        fw->sel = alloc64(T * K * sizeof(int32_t));
        fw->sel_w = alloc64(T * K * sizeof(float));
        fw->choice_row = alloc64(T * K * sizeof(uint32_t));
        fw->xe = alloc64(T * K * D * sizeof(float));
        fw->eout = alloc64(T * K * D * sizeof(float));
        fw->logits = alloc64(T * c->n_vocab * sizeof(float));
        fw->logit_rows = alloc64(T * sizeof(uint32_t));
        fw->row_exact = alloc64(T);
        fw->xe_exact = alloc64(T * K);
        fw->out_exact = alloc64(T);
        const size_t widest_blocks = ((D > Q ? D : Q) + QK_K - 1) / QK_K, d_blocks = (D + QK_K - 1) / QK_K;
        int ok = 1;
        for (int a = 0; a < QUANT_ACT_COUNT_; a++) {
                const size_t bb = quant_act_block_bytes((QuantAct)a);
                fw->xq_in[a] = alloc64(T * widest_blocks * bb);
                fw->xq_moe[a] = alloc64(T * d_blocks * bb);
                fw->xq_e[a] = alloc64(T * K * d_blocks * bb);
                ok = ok && fw->xq_in[a] && fw->xq_moe[a] && fw->xq_e[a];
        }
        fw->pc.row_tmp = calloc(fw->n_threads, sizeof(float *));
        fw->attn = calloc(fw->n_threads, sizeof(AttnScratch));
        ok = ok && fw->inv_freq && fw->row_item && fw->row_pos && fw->item_row0 && fw->x && fw->xb && fw->q && fw->k &&
             fw->v && fw->kc && fw->vc && fw->att && fw->router && fw->sel && fw->sel_w && fw->choice_row &&
             fw->xe && fw->eout && fw->logits && fw->logit_rows && fw->pc.row_tmp &&
             fw->attn && fw->row_exact && fw->xe_exact && fw->out_exact;
        if (ok && fw->n_threads > 1) {
                const size_t items = ATTN_SPLIT_MAX_ITEMS;
                fw->part_m = alloc64(items * group * sizeof(float));
                fw->part_s = alloc64(items * group * sizeof(double));
                fw->part_o = alloc64(items * group * c->head_dim * sizeof(float));
                fw->split_item0 = alloc64(T * sizeof(unsigned long));
                fw->part_left = alloc64(T * c->n_head_kv * sizeof(uint32_t));
                ok = fw->part_m && fw->part_s && fw->part_o && fw->split_item0 && fw->part_left;
        }
        for (unsigned t = 0; ok && t < fw->n_threads; t++) {
                AttnScratch *a = &fw->attn[t];
                fw->pc.row_tmp[t] = alloc64(widest * sizeof(float));
                a->scores = alloc64(group * ATTN_KEY_BLOCK * sizeof(float));
                a->o = alloc64(group * c->head_dim * sizeof(float));
                a->m = alloc64(group * sizeof(float));
                a->row_m = alloc64(group * sizeof(float));
                a->s = alloc64(group * sizeof(double));
                a->row_s = alloc64(group * sizeof(double));
                ok = fw->pc.row_tmp[t] && a->scores && a->o && a->m && a->row_m && a->s && a->row_s;
        }
        if (ok && experts_local_new(m, max_rows, &fw->pc, &fw->local) < 0)
                ok = 0;
        if (!ok) {
                forward_free(fw);
                return -ENOMEM;
        }
        fw->experts = (ExpertExec){ experts_local_run, fw->local };
        for (uint32_t i = 0; i < c->head_dim / 2; i++)
                fw->inv_freq[i] = pow((double)c->rope_theta, -2.0 * i / (double)c->head_dim);
        *ret_fw = fw;
        return 0;
}

Forward *forward_free(Forward *fw) {
        if (!fw)
                return NULL;
        for (unsigned t = 0; t < fw->n_threads; t++) {
                if (fw->pc.row_tmp)
                        free(fw->pc.row_tmp[t]);
                if (fw->attn) {
                        AttnScratch *a = &fw->attn[t];
                        free(a->scores);
                        free(a->o);
                        free(a->m);
                        free(a->row_m);
                        free(a->s);
                        free(a->row_s);
                }
        }
        free(fw->pc.row_tmp);
        free(fw->attn);
        free(fw->part_m);
        free(fw->part_s);
        free(fw->part_o);
        free(fw->split_item0);
        free(fw->part_left);
        free(fw->inv_freq);
        free(fw->row_item);
        free(fw->row_pos);
        free(fw->item_row0);
        free(fw->x);
        free(fw->xb);
        free(fw->q);
        free(fw->k);
        free(fw->v);
        free(fw->kc);
        free(fw->vc);
        free(fw->att);
        free(fw->router);
        free(fw->sel);
        free(fw->sel_w);
        free(fw->choice_row);
        free(fw->xe);
        free(fw->eout);
        free(fw->logits);
        free(fw->logit_rows);
        free(fw->row_exact);
        free(fw->xe_exact);
        free(fw->out_exact);
        for (int a = 0; a < QUANT_ACT_COUNT_; a++) {
                free(fw->xq_in[a]);
                free(fw->xq_moe[a]);
                free(fw->xq_e[a]);
        }
        experts_local_free(fw->local);
        free(fw);
        return NULL;
}

void forward_set_numa(Forward *fw, const NumaPlan *plan) {
        fw->pc.numa = plan && plan->n_nodes > 1 && plan->n_threads == fw->n_threads ? plan : NULL;
}

void forward_set_experts(Forward *fw, const ExpertExec *ex) {
        fw->experts = ex ? *ex : (ExpertExec){ experts_local_run, fw->local };
}

ExpertExec forward_experts_local(Forward *fw) {
        return (ExpertExec){ experts_local_run, fw->local };
}

void forward_set_route_hook(Forward *fw, ForwardRouteFn fn, void *userdata) {
        fw->route_fn = fn;
        fw->route_data = userdata;
}

void forward_set_int8(Forward *fw, bool on) {
        fw->pc.int8 = on;
}

float *forward_logits_buffer(Forward *fw) {
        return fw->logits;
}

uint32_t forward_max_rows(const Forward *fw) {
        return fw->max_rows;
}

uint32_t forward_max_chunk(const Forward *fw, const KVCache *kv) {
        return fw->max_rows < kv->n_roll ? fw->max_rows : kv->n_roll;
}

void forward_set_attn_split(Forward *fw, ForwardAttnSplit mode) {
        fw->attn_split = mode;
}

/* ------------------------------------------------------------------ attention */

/* Attention is computed per key block: block b holds the positions [b * ATTN_KEY_BLOCK,
 * (b + 1) * ATTN_KEY_BLOCK), so its bounds depend on positions alone. For each query head,
 * a block gives its largest score m, the sum s of exp(score - m) and the values weighted by
 * those exponentials, o; a (row, KV head)'s blocks are folded in ascending order (attn_fold)
 * and divided by the total at the end. A block is computed the same way whichever thread
 * takes it and whatever else is in the batch, and the fold's order is fixed, so splitting a
 * row's blocks over threads (few rows: decode) or not (many rows: prefill) changes no bit. */

/* Few rows: the work is cut into (row, KV head, key block) items when (row, KV head) pairs
 * number fewer than this per thread. */
#define ATTN_SPLIT_BELOW_PER_THREAD 8

typedef struct AttnJob {
        Forward *fw;
        const ForwardItem *items;
        uint32_t il;
        uint32_t T;
        bool split;               /* items are (row, KV head, key block), else (row, KV head) */
        unsigned long n_work;     /* items */
        unsigned long next;       /* atomic: the next item to take */
} AttnJob;

/* A run of consecutive positions whose key (value) rows lie `stride` bytes apart: in the
 * item's cache (between ring wrap-arounds) or in this batch's scratch, in the cache's type. */
typedef struct KeyRun {
        const uint8_t *k, *v;
        size_t stride;
        int64_t n;
} KeyRun;

/* Runs of one query's keys in one block, at most: the sinks in the cache and in the batch;
 * the window in the cache up to the ring's wrap, after it, and in the batch. */
#define KEY_RUNS_MAX 5

/* The longest run from position p (< end) for KV head kvh of item i, layer il. */
static KeyRun key_run(const Forward *fw, const ForwardItem *it, uint32_t i, uint32_t il, uint32_t kvh, int64_t p,
                      int64_t end) {
        const KVCache *kv = it->kv;
        if (p >= kv->n_pos) {
                const size_t off = (size_t)(fw->item_row0[i] + (uint32_t)(p - kv->n_pos)) * fw->kc_row +
                                   (size_t)kvh * kv->row_bytes;
                return (KeyRun){ fw->kc + off, fw->vc + off, fw->kc_row, end - p };
        }
        const uint32_t slot = kv_slot(kv, p);
        int64_t n = (end < kv->n_pos ? end : kv->n_pos) - p;
        const int64_t to_edge = p < (int64_t)kv->n_sink ? (int64_t)kv->n_sink - p : (int64_t)(kv->n_slots - slot);
        if (n > to_edge)
                n = to_edge;
        const size_t off = kv_offset(kv, il, kvh, slot);
        return (KeyRun){ kv->k + off, kv->v + off, kv->row_bytes, n };
}

/* The keys of row r: the sinks [0, n_sink) and the window [ws, qpos], ascending, and the key
 * blocks holding them: block 0 for the sinks (unless the window's first block is 0 too),
 * then the window's blocks b_win, b_win + 1, ... */
typedef struct RowKeys {
        int64_t ranges[2][2];     /* [sinks, window][begin, end) */
        int64_t b_win;            /* the window's first block */
        uint32_t n_blocks;        /* blocks holding keys */
        bool sink_block;          /* block 0 is there for the sinks alone */
} RowKeys;

static void row_keys(const Forward *fw, const ForwardItem *items, uint32_t r, RowKeys *ret) {
        const KVCache *kv = items[fw->row_item[r]].kv;
        const int64_t qpos = fw->row_pos[r];
        const int64_t n_sink = qpos + 1 < (int64_t)kv->n_sink ? qpos + 1 : (int64_t)kv->n_sink;
        const int64_t ws = kv_window_start(kv, qpos); /* >= kv->n_sink >= n_sink */
        const bool window = ws <= qpos;
        *ret = (RowKeys){ .ranges = { { 0, n_sink }, { ws, window ? qpos + 1 : ws } },
                          .b_win = window ? ws / ATTN_KEY_BLOCK : 0 };
        ret->sink_block = n_sink > 0 && (!window || ret->b_win > 0);
        ret->n_blocks = (window ? (uint32_t)(qpos / ATTN_KEY_BLOCK - ret->b_win + 1) : 0) + ret->sink_block;
}

/* The j-th of a row's key blocks, ascending. */
static int64_t row_block(const RowKeys *rk, uint32_t j) {
        if (rk->sink_block)
                return j == 0 ? 0 : rk->b_win + j - 1;
        return rk->b_win + j;
}

/* Key block b of row r for the query heads sharing KV head kvh: m[g], s[g] and o[g][hd] as
 * above. Keys in ascending position order (runs found once for both passes) whether they
 * come from the cache or the batch; each key and value row is read once for the whole group
 * and every head's numbers are computed exactly as one head alone would; the values are
 * prefetched while the keys are scored (+2% decode tok/s at 1500 positions). */
static void attend_block(const Forward *fw, const ForwardItem *items, uint32_t il, uint32_t r, uint32_t kvh,
                         const RowKeys *rk, int64_t b, float *scores, float *m, double *s, float *o) {
        const ModelConfig *c = &fw->m->cfg;
        const uint32_t hd = c->head_dim, group = c->n_head / c->n_head_kv, i = fw->row_item[r];
        const ForwardItem *it = &items[i];
        const uint32_t type = it->kv->type;
        const float scale = 1.0f / sqrtf((float)hd);
        const float *q0 = fw->q + ((size_t)r * c->n_head + (size_t)kvh * group) * hd;
        const int64_t lo = b * ATTN_KEY_BLOCK, hi = lo + ATTN_KEY_BLOCK;

        KeyRun runs[KEY_RUNS_MAX];
        int n_runs = 0;
        for (int part = 0; part < 2; part++) {
                const int64_t end = rk->ranges[part][1] < hi ? rk->ranges[part][1] : hi;
                for (int64_t p = rk->ranges[part][0] > lo ? rk->ranges[part][0] : lo; p < end;) {
                        runs[n_runs] = key_run(fw, it, i, il, kvh, p, end);
                        p += runs[n_runs++].n;
                }
        }

        int64_t n = 0; /* keys before run k */
        for (int k = 0; k < n_runs; k++) {
                attn_dot_many(type, q0, group, runs[k].k, runs[k].stride, runs[k].n, runs[k].v, hd, scale, scores + n,
                              ATTN_KEY_BLOCK);
                n += runs[k].n;
        }
        for (uint32_t g = 0; g < group; g++)
                s[g] = exp_shifted(scores + (size_t)g * ATTN_KEY_BLOCK, n, &m[g]);

        memset(o, 0, (size_t)group * hd * sizeof(float));
        n = 0;
        for (int k = 0; k < n_runs; k++) {
                attn_axpy_many(type, o, group, scores + n, ATTN_KEY_BLOCK, runs[k].v, runs[k].stride, runs[k].n, hd);
                n += runs[k].n;
        }
}

/* Folds a block's (m, s, o) into a (row, KV head)'s running (M, S, O), blocks taken in
 * ascending order (first: the row's first block). */
static void attn_fold(uint32_t group, uint32_t hd, bool first, float *M, double *S, float *O, const float *m,
                      const double *s, const float *o) {
        if (first) {
                memcpy(M, m, group * sizeof(float));
                memcpy(S, s, group * sizeof(double));
                memcpy(O, o, (size_t)group * hd * sizeof(float));
                return;
        }
        for (uint32_t g = 0; g < group; g++) {
                const float mx = M[g] > m[g] ? M[g] : m[g], a = expf(M[g] - mx), e = expf(m[g] - mx);
                float *y = O + (size_t)g * hd;
                const float *x = o + (size_t)g * hd;
                S[g] = S[g] * a + s[g] * e;
                M[g] = mx;
                for (uint32_t j = 0; j < hd; j++)
                        y[j] = y[j] * a + x[j] * e;
        }
}

/* O[g] /= S[g]: the attention output. */
static void attn_finish(uint32_t group, uint32_t hd, const double *S, float *O) {
        for (uint32_t g = 0; g < group; g++) {
                const float inv = (float)(1.0 / S[g]);
                for (uint32_t j = 0; j < hd; j++)
                        O[(size_t)g * hd + j] *= inv;
        }
}

/* Causal attention of row r for the query heads sharing KV head kvh, all its blocks. */
static void attend_row(const Forward *fw, const ForwardItem *items, uint32_t il, uint32_t r, uint32_t kvh,
                       const AttnScratch *t) {
        const ModelConfig *c = &fw->m->cfg;
        const uint32_t hd = c->head_dim, group = c->n_head / c->n_head_kv;
        float *out0 = fw->att + ((size_t)r * c->n_head + (size_t)kvh * group) * hd;
        RowKeys rk;
        row_keys(fw, items, r, &rk);
        for (uint32_t j = 0; j < rk.n_blocks; j++) {
                attend_block(fw, items, il, r, kvh, &rk, row_block(&rk, j), t->scores, t->m, t->s, t->o);
                attn_fold(group, hd, j == 0, t->row_m, t->row_s, out0, t->m, t->s, t->o);
        }
        attn_finish(group, hd, t->row_s, out0);
}

/* Split item w: one block of one (row, KV head), kept in the partials; whoever finishes a
 * (row, KV head)'s last block folds them all, in block order. */
static void attend_split_item(Forward *fw, const ForwardItem *items, uint32_t il, uint32_t T, unsigned long w,
                              const AttnScratch *t) {
        const ModelConfig *c = &fw->m->cfg;
        const uint32_t hd = c->head_dim, group = c->n_head / c->n_head_kv;
        uint32_t r = 0;
        while (r + 1 < T && fw->split_item0[r + 1] <= w)
                r++;
        RowKeys rk;
        row_keys(fw, items, r, &rk);
        const unsigned long local = w - fw->split_item0[r];
        const uint32_t kvh = (uint32_t)(local / rk.n_blocks), j = (uint32_t)(local % rk.n_blocks);
        attend_block(fw, items, il, r, kvh, &rk, row_block(&rk, j), t->scores, fw->part_m + w * group,
                     fw->part_s + w * group, fw->part_o + w * group * hd);
        if (__atomic_sub_fetch(&fw->part_left[(size_t)r * c->n_head_kv + kvh], 1, __ATOMIC_ACQ_REL) != 0)
                return;
        float *out0 = fw->att + ((size_t)r * c->n_head + (size_t)kvh * group) * hd;
        const unsigned long w0 = fw->split_item0[r] + (unsigned long)kvh * rk.n_blocks;
        for (uint32_t jj = 0; jj < rk.n_blocks; jj++)
                attn_fold(group, hd, jj == 0, t->row_m, t->row_s, out0, fw->part_m + (w0 + jj) * group,
                          fw->part_s + (w0 + jj) * group, fw->part_o + (w0 + jj) * group * hd);
        attn_finish(group, hd, t->row_s, out0);
}

static void attention_part(void *ctx, unsigned thread, unsigned n_threads) {
        AttnJob *j = ctx;
        Forward *fw = j->fw;
        const uint32_t HKV = fw->m->cfg.n_head_kv;
        (void)n_threads;
        for (;;) {
                const unsigned long w = __atomic_fetch_add(&j->next, 1, __ATOMIC_RELAXED);
                if (w >= j->n_work)
                        return;
                if (j->split)
                        attend_split_item(fw, j->items, j->il, j->T, w, &fw->attn[thread]);
                else
                        attend_row(fw, j->items, j->il, (uint32_t)(w / HKV), (uint32_t)(w % HKV), &fw->attn[thread]);
        }
}

/* Attention of every row of the batch into fw->att, on the pool unless the work is small. */
static void attention(Forward *fw, const ForwardItem *items, uint32_t n_items, uint32_t il, uint32_t T) {
        const ModelConfig *c = &fw->m->cfg;
        const uint32_t HKV = c->n_head_kv;
        AttnJob aj = { fw, items, il, T, false, (unsigned long)T * HKV, 0 };
        uint64_t keys = 0; /* work estimate: keys attended, all rows */
        for (uint32_t i = 0; i < n_items; i++)
                keys += (uint64_t)items[i].n_tokens * (items[i].kv->n_pos + items[i].n_tokens);
        if (fw->attn_split != FORWARD_ATTN_ALWAYS && keys * c->n_head * c->head_dim < PARALLEL_MIN_WORK) {
                attention_part(&aj, 0, 1);
                return;
        }
        const bool few = aj.n_work < (unsigned long)ATTN_SPLIT_BELOW_PER_THREAD * fw->n_threads;
        if (fw->part_o && fw->attn_split != FORWARD_ATTN_NEVER && (few || fw->attn_split == FORWARD_ATTN_ALWAYS)) {
                unsigned long n = 0;
                for (uint32_t r = 0; r < T; r++) {
                        RowKeys rk;
                        row_keys(fw, items, r, &rk);
                        fw->split_item0[r] = n;
                        n += (unsigned long)HKV * rk.n_blocks;
                        for (uint32_t h = 0; h < HKV; h++)
                                fw->part_left[(size_t)r * HKV + h] = rk.n_blocks;
                }
                if ((n > aj.n_work || fw->attn_split == FORWARD_ATTN_ALWAYS) && n <= ATTN_SPLIT_MAX_ITEMS) {
                        aj.split = true;
                        aj.n_work = n;
                }
        }
        pool_run(fw->pool, attention_part, &aj);
}

/* Each row's new keys and values in its cache's type (fw->kc, fw->vc), which attention
 * reads: a key is the same number whether it comes from the batch or, later, the cache. */
static void kv_encode_batch(Forward *fw, const ForwardItem *items, uint32_t T) {
        const size_t KVD = (size_t)fw->m->cfg.n_head_kv * fw->m->cfg.head_dim;
        for (uint32_t r = 0; r < T; r++) {
                const uint32_t type = items[fw->row_item[r]].kv->type;
                kv_encode(type, fw->k + r * KVD, KVD, fw->kc + r * fw->kc_row);
                kv_encode(type, fw->v + r * KVD, KVD, fw->vc + r * fw->kc_row);
        }
}

/* Store the batch's keys and values in their slots (after every query has read them: a
 * chunk's later positions may take the slots of keys its earlier queries still read). */
static void kv_store(const Forward *fw, const ForwardItem *items, uint32_t il, uint32_t T) {
        for (uint32_t r = 0; r < T; r++) {
                const KVCache *kv = items[fw->row_item[r]].kv;
                kv_rows_in(kv, kv->k, il, kv_slot(kv, fw->row_pos[r]), 1, fw->kc + r * fw->kc_row);
                kv_rows_in(kv, kv->v, il, kv_slot(kv, fw->row_pos[r]), 1, fw->vc + r * fw->kc_row);
        }
}

/* ------------------------------------------------------------------ mixture of experts */

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

/* Mixture of experts on fw->xb, added into the residual fw->x. The rows routed to each
 * expert are gathered together, experts in id order, so an expert's weights are read once per
 * batch; the layer's whole work goes to the expert executor (fw->experts: the local one,
 * experts.c, unless forward_set_experts chose another) in one call, and the outputs it
 * writes per gathered row are summed here, each token's k choices in their order, so the
 * result does not depend on who ran which expert. A dense model's feed-forward is one
 * "expert" (id 0) that every row takes, added without a weight. */
static int moe(Forward *fw, const LayerWeights *L, uint32_t il, uint32_t T) {
        const ModelConfig *c = &fw->m->cfg;
        const size_t D = c->n_embd;

        const Matrix *readers[2] = { &L->gate[0], &L->up[0] }; /* the experts of a layer share their types */
        const ActQ xq = product_quantize(&fw->pc, fw->xq_moe, fw->xb, T, D, readers, 2);
        const size_t DB = D / QK_K;
        if (c->n_expert == 0) {
                const uint32_t id = 0, base = 0, n = T;
                const ExpertWork w = { .il = il, .count = 1, .ids = &id, .base = &base, .n = &n, .n_rows = T,
                                       .x = fw->xb, .xq = xq, .exact = fw->row_exact, .int8 = fw->pc.int8,
                                       .out = fw->eout };
                const int r = fw->experts.run(fw->experts.ctx, &w);
                if (r < 0)
                        return r;
                for (size_t i = 0; i < T * D; i++)
                        fw->x[i] += fw->eout[i];
                return 0;
        }

        const uint32_t E = c->n_expert, K = c->n_expert_used;
        product_matmul(&fw->pc, fw->xq_in, &L->router, fw->xb, fw->row_exact, T, fw->router);
        route(fw, il, T);

        uint32_t rows_of[MODEL_MAX_EXPERTS] = { 0 }; /* rows routed to each expert */
        for (uint32_t i = 0; i < T * K; i++)
                rows_of[fw->sel[i]]++;
        uint32_t ids[MODEL_MAX_EXPERTS], base[MODEL_MAX_EXPERTS], n[MODEL_MAX_EXPERTS];
        unsigned count = 0;
        uint32_t used = 0; /* rows gathered */
        ActQ xe = { { NULL } };
        for (int a = 0; a < QUANT_ACT_COUNT_; a++)
                if (xq.q[a])
                        xe.q[a] = fw->xq_e[a];
        for (uint32_t e = 0; e < E; e++) {
                if (rows_of[e] == 0)
                        continue;
                ids[count] = e;
                base[count] = used;
                n[count++] = rows_of[e];
                for (uint32_t t = 0; t < T; t++)
                        for (uint32_t j = 0; j < K; j++)
                                if (fw->sel[t * K + j] == (int32_t)e) {
                                        fw->choice_row[t * K + j] = used;
                                        fw->xe_exact[used] = fw->row_exact[t];
                                        memcpy(fw->xe + used * D, fw->xb + (size_t)t * D, D * sizeof(float));
                                        for (int a = 0; a < QUANT_ACT_COUNT_; a++) {
                                                const size_t row = DB * quant_act_block_bytes((QuantAct)a);
                                                if (xq.q[a])
                                                        memcpy((char *)fw->xq_e[a] + used * row, (const char *)xq.q[a] + t * row, row);
                                        }
                                        used++;
                                }
        }
        const ExpertWork w = { .il = il, .count = count, .ids = ids, .base = base, .n = n, .n_rows = used,
                               .x = fw->xe, .xq = xe, .exact = fw->xe_exact, .int8 = fw->pc.int8, .out = fw->eout };
        const int r = fw->experts.run(fw->experts.ctx, &w);
        if (r < 0)
                return r;
        for (uint32_t t = 0; t < T; t++) {
                float *x = fw->x + (size_t)t * D;
                const uint32_t *row = fw->choice_row + (size_t)t * K;
                for (size_t i = 0; i < D; i++) {
                        float s = 0.0f;
                        for (uint32_t j = 0; j < K; j++)
                                s += fw->sel_w[t * K + j] * fw->eout[(size_t)row[j] * D + i];
                        x[i] += s;
                }
        }
        return 0;
}

/* ------------------------------------------------------------------ the blocks of a layer */

/* Attention block of layer il over the batch's T rows: xb = norm(x); q, k, v = Wq, Wk, Wv xb
 * (one product list); RoPE on q and k; each row attends to its keys (cache + this batch);
 * the batch's keys and values go to their slots; x += Wo att.
 * Shapes: x, xb [T][D]; q, att [T][H][hd]; k, v [T][KV][hd]. */
static void attention_block(Forward *fw, const ForwardItem *items, uint32_t n_items, uint32_t il, uint32_t T) {
        const ModelConfig *c = &fw->m->cfg;
        const LayerWeights *L = &fw->m->layers[il];
        const size_t D = c->n_embd, Q = (size_t)c->n_head * c->head_dim, KVD = (size_t)c->n_head_kv * c->head_dim;
        for (uint32_t t = 0; t < T; t++)
                rmsnorm(fw->xb + t * D, fw->x + t * D, L->attn_norm, (int64_t)D, c->rms_eps);
        const Matrix *qkv_w[3] = { &L->wq, &L->wk, &L->wv };
        const ActQ xq = product_quantize(&fw->pc, fw->xq_in, fw->xb, T, D, qkv_w, 3);
        ProductJob qkv;
        product_job_init(&qkv, &fw->pc, -1);
        product_job_add(&qkv, &L->wq, NULL, fw->xb, xq, fw->row_exact, T, fw->q, NULL, NULL, QUANT_ACT_Q8K);
        product_job_add(&qkv, &L->wk, NULL, fw->xb, xq, fw->row_exact, T, fw->k, NULL, NULL, QUANT_ACT_Q8K);
        product_job_add(&qkv, &L->wv, NULL, fw->xb, xq, fw->row_exact, T, fw->v, NULL, NULL, QUANT_ACT_Q8K);
        product_job_run(&qkv);
        for (uint32_t t = 0; t < T; t++) {
                rope(fw->q + t * Q, c->n_head, c->head_dim, fw->row_pos[t], fw->inv_freq);
                rope(fw->k + t * KVD, c->n_head_kv, c->head_dim, fw->row_pos[t], fw->inv_freq);
        }
        kv_encode_batch(fw, items, T);
        attention(fw, items, n_items, il, T);
        kv_store(fw, items, il, T);
        product_matmul(&fw->pc, fw->xq_in, &L->wo, fw->att, fw->row_exact, T, fw->xb);
        for (size_t i = 0; i < T * D; i++)
                fw->x[i] += fw->xb[i];
}

/* Feed-forward block of layer il: xb = norm(x); x += sum over the row's k experts of
 * w_e expert_e(xb). Shapes: x, xb [T][D]. 0, or the expert executor's error. */
static int moe_block(Forward *fw, uint32_t il, uint32_t T) {
        const ModelConfig *c = &fw->m->cfg;
        const LayerWeights *L = &fw->m->layers[il];
        const size_t D = c->n_embd;
        for (uint32_t t = 0; t < T; t++)
                rmsnorm(fw->xb + t * D, fw->x + t * D, L->ffn_norm, (int64_t)D, c->rms_eps);
        return moe(fw, L, il, T);
}

/* ------------------------------------------------------------------ the step */

/* Lay out the batch's rows; -EINVAL if it does not fit. Returns the row count. */
static int layout(Forward *fw, const ForwardItem *items, uint32_t n_items) {
        const ModelConfig *c = &fw->m->cfg;
        uint32_t T = 0;
        fw->pc.any_exact = false;
        if (n_items == 0 || n_items > fw->max_rows)
                return -EINVAL;
        for (uint32_t i = 0; i < n_items; i++) {
                const ForwardItem *it = &items[i];
                const KVCache *kv = it->kv;
                if (kv->n_pos < 0 || kv->n_pos > KV_MAX_POSITION - (int64_t)it->n_tokens)
                        return -EOVERFLOW;
                if (it->n_tokens == 0 || it->n_tokens > kv->n_roll || it->n_tokens > fw->max_rows - T ||
                    kv->n_slots > fw->max_slots || kv->n_layer != c->n_layer ||
                    kv->n_head_kv != c->n_head_kv || kv->head_dim != c->head_dim || !kv_type_name(kv->type))
                        return -EINVAL;
                for (uint32_t j = 0; j < i; j++)
                        if (items[j].kv == kv)
                                return -EINVAL;
                fw->item_row0[i] = T;
                for (uint32_t t = 0; t < it->n_tokens; t++) {
                        if (it->tokens[t] < 0 || (uint32_t)it->tokens[t] >= c->n_vocab)
                                return -EINVAL;
                        fw->row_item[T] = i;
                        fw->row_pos[T] = kv->n_pos + t;
                        fw->row_exact[T] = fw->pc.int8 && fw->row_pos[T] < FORWARD_EXACT_POSITIONS;
                        fw->pc.any_exact |= fw->row_exact[T];
                        T++;
                }
        }
        return (int)T;
}

int forward_batch(Forward *fw, const ForwardItem *items, uint32_t n_items) {
        const Model *m = fw->m;
        const ModelConfig *c = &m->cfg;
        const size_t D = c->n_embd;
        const int r = layout(fw, items, n_items);
        if (r < 0)
                return r;
        const uint32_t T = (uint32_t)r;

        /* x[r] = embedding of row r's token */
        const QuantTraits *et = quant_traits(m->tok_embd.type);
        for (uint32_t row = 0; row < T; row++) {
                const ForwardItem *it = &items[fw->row_item[row]];
                const int32_t tok = it->tokens[row - fw->item_row0[fw->row_item[row]]];
                et->dequant(m->tok_embd.data + (uint64_t)tok * m->tok_embd.row_bytes, fw->x + row * D, (int64_t)D);
        }

        for (uint32_t il = 0; il < c->n_layer; il++) {
                attention_block(fw, items, n_items, il, T);
                const int e = moe_block(fw, il, T);
                if (e < 0)
                        return e; /* the executor failed: the items' caches keep their positions */
        }
        for (uint32_t i = 0; i < n_items; i++)
                items[i].kv->n_pos += items[i].n_tokens;

        /* logits: final norm and output head for the rows that want them */
        uint32_t n_out = 0;
        for (uint32_t row = 0; row < T; row++) {
                const uint32_t i = fw->row_item[row];
                const int last = row + 1 == fw->item_row0[i] + items[i].n_tokens;
                if (items[i].mode == FORWARD_LOGITS_ALL || (items[i].mode == FORWARD_LOGITS_LAST && last)) {
                        rmsnorm(fw->xb + n_out * D, fw->x + row * D, m->output_norm, (int64_t)D, c->rms_eps);
                        fw->out_exact[n_out] = fw->row_exact[row];
                        fw->logit_rows[n_out++] = row;
                }
        }
        if (n_out == 0)
                return 0;
        const size_t V = c->n_vocab;
        product_matmul(&fw->pc, fw->xq_in, &m->output, fw->xb, fw->out_exact, n_out, fw->logits);
        for (uint32_t o = 0; o < n_out; o++) {
                const uint32_t row = fw->logit_rows[o], i = fw->row_item[row];
                float *dst = items[i].mode == FORWARD_LOGITS_ALL
                                     ? items[i].logits + (size_t)(row - fw->item_row0[i]) * V
                                     : items[i].logits;
                if (dst != fw->logits + o * V)
                        memmove(dst, fw->logits + o * V, V * sizeof(float));
        }
        return 0;
}

int forward_chunk(Forward *fw, KVCache *kv, const int32_t *tokens, uint32_t T, ForwardLogits mode, float *logits) {
        ForwardItem it = { .kv = kv, .tokens = tokens, .n_tokens = T, .mode = mode, .logits = logits };
        return forward_batch(fw, &it, 1);
}
