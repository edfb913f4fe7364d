/* engine/experts.c — the local expert executor (see experts.h): a layer's routed rows run
 * on the calling thread's pool, in groups of experts that share two pool passes. Called
 * from the forward pass's thread (or a cluster worker's serving thread). */
#include "experts.h"

#include <errno.h>
#include <stdlib.h>

#include "engine_limits.h"

struct ExpertsLocal {
        const Model *m;
        ProductCtx *pc;           /* borrowed */
        uint32_t max_rows;        /* rows of one group's scratch */
        float *gate;              /* [max_rows][FF] silu(gate x) * up x */
        float *up;                /* [max_rows][FF] up x */
        void *hq;                 /* [max_rows][FF/256] blocks: gate quantized for down */
};

static void *alloc64(size_t bytes) {
        return aligned_alloc(64, (bytes + 63) / 64 * 64);
}

int experts_local_new(const Model *m, uint32_t max_rows, ProductCtx *pc, ExpertsLocal **ret_el) {
        if (max_rows == 0)
                return -EINVAL;
        ExpertsLocal *el = calloc(1, sizeof(*el));
        if (!el)
                return -ENOMEM;
        const size_t T = max_rows, FF = m->cfg.n_ff, ff_blocks = (FF + QK_K - 1) / QK_K;
        el->m = m;
        el->pc = pc;
        el->max_rows = max_rows;
        el->gate = alloc64(T * FF * sizeof(float));
        el->up = alloc64(T * FF * sizeof(float));
        el->hq = alloc64(T * ff_blocks * (sizeof(BlockQ8X) > sizeof(BlockQ8K) ? sizeof(BlockQ8X) : sizeof(BlockQ8K)));
        if (!el->gate || !el->up || !el->hq) {
                experts_local_free(el);
                return -ENOMEM;
        }
        *ret_el = el;
        return 0;
}

ExpertsLocal *experts_local_free(ExpertsLocal *el) {
        if (!el)
                return NULL;
        free(el->gate);
        free(el->up);
        free(el->hq);
        free(el);
        return NULL;
}

/* One group of `count` experts of w (ids, base, n as in ExpertWork; off[g]: expert g's first
 * row in the scratch): out = down(silu(gate x) * up x) for each, in two pool passes for the
 * whole group, the first also quantizing silu(gate x) * up x for the second. With a NUMA plan
 * the group is one expert, run on the threads of the node holding it. */
static void group_run(ExpertsLocal *el, const ExpertWork *w, const uint32_t *ids, const uint32_t *base,
                      const uint32_t *n, const uint32_t *off, unsigned count) {
        ProductCtx *pc = el->pc;
        const ModelConfig *c = &el->m->cfg;
        const LayerWeights *L = &el->m->layers[w->il];
        const size_t D = c->n_embd, FF = c->n_ff, DB = D / QK_K, FB = FF / QK_K;
        const int hact = product_act(pc, &L->down[ids[0]]); /* the experts of a layer share one type */
        const size_t hb = FB * quant_act_block_bytes(hact < 0 ? QUANT_ACT_Q8K : (QuantAct)hact);
        int node = -1;
        if (pc->numa && c->n_expert && count == 1)
                node = pc->numa->expert_node[(size_t)w->il * pc->numa->n_expert + ids[0]];
        ProductJob up, down;
        product_job_init(&up, pc, node);
        product_job_init(&down, pc, node);
        for (unsigned g = 0; g < count; g++) {
                const uint32_t e = ids[g];
                ActQ xg = { { NULL } };
                for (int a = 0; a < QUANT_ACT_COUNT_; a++)
                        if (w->xq.q[a])
                                xg.q[a] = (const char *)w->xq.q[a] + base[g] * DB * quant_act_block_bytes((QuantAct)a);
                product_job_add(&up, &L->gate[e], &L->up[e], w->x + base[g] * D, xg, w->exact + base[g], n[g],
                                el->gate + off[g] * FF, el->up + off[g] * FF,
                                hact >= 0 ? (char *)el->hq + off[g] * hb : NULL, hact >= 0 ? (QuantAct)hact : QUANT_ACT_Q8K);
        }
        product_job_run(&up);
        for (unsigned g = 0; g < count; g++) {
                const uint32_t e = ids[g];
                ActQ hq = { { NULL } };
                if (up.p[g].hq)
                        hq.q[hact] = up.p[g].hq;
                product_job_add(&down, &L->down[e], NULL, el->gate + off[g] * FF, hq, w->exact + base[g], n[g],
                                w->out + base[g] * D, NULL, NULL, QUANT_ACT_Q8K);
        }
        product_job_run(&down);
}

int experts_local_run(void *ctx, const ExpertWork *w) {
        ExpertsLocal *el = ctx;
        ProductCtx *pc = el->pc;
        const ModelConfig *c = &el->m->cfg;
        const uint32_t E = c->n_expert ? c->n_expert : 1;
        if (w->il >= c->n_layer || w->count == 0 || w->count > E)
                return -EINVAL;
        bool any_exact = false;
        for (unsigned g = 0; g < w->count; g++) {
                if (w->ids[g] >= E || w->n[g] == 0 || w->base[g] > w->n_rows || w->n[g] > w->n_rows - w->base[g])
                        return -EINVAL;
                if (w->n[g] > el->max_rows)
                        return -E2BIG;
                for (uint32_t r = 0; r < w->n[g] && !any_exact; r++)
                        any_exact = w->exact[w->base[g] + r] != 0;
        }
        /* the work's own switches; the caller's are back when it returns */
        const bool int8 = pc->int8, exact = pc->any_exact;
        pc->int8 = w->int8;
        pc->any_exact = any_exact;

        const unsigned max_group = pc->numa ? 1 : PRODUCTS_MAX;
        const uint32_t group_rows = el->max_rows < MOE_GROUP_ROWS ? el->max_rows : MOE_GROUP_ROWS;
        uint32_t ids[PRODUCTS_MAX], base[PRODUCTS_MAX], n[PRODUCTS_MAX], off[PRODUCTS_MAX];
        unsigned count = 0;
        uint32_t used = 0; /* scratch rows taken by the group */
        for (unsigned g = 0; g < w->count; g++) {
                if (count == max_group || (count > 0 && used + w->n[g] > group_rows)) {
                        group_run(el, w, ids, base, n, off, count);
                        count = 0;
                        used = 0;
                }
                ids[count] = w->ids[g];
                base[count] = w->base[g];
                n[count] = w->n[g];
                off[count++] = used;
                used += w->n[g];
        }
        if (count > 0)
                group_run(el, w, ids, base, n, off, count);
        pc->int8 = int8;
        pc->any_exact = exact;
        return 0;
}
