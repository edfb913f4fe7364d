/* engine/experts.h — the seam between the forward pass and whoever runs a layer's experts.
 * The forward pass gathers the rows routed to each expert (experts in ascending id order),
 * hands them to an ExpertExec and sums the outputs itself, in its fixed order; an executor
 * only computes each row's expert output. The local executor (experts.c) runs them on the
 * Forward's thread pool; another (a cluster transport, outside the engine) may send some of
 * them elsewhere, as long as each row is computed with these kernels on these inputs, so
 * every output is the same bits wherever it was made. Called from the forward pass's thread. */
#pragma once
#include <stdbool.h>
#include <stdint.h>

#include "model.h"
#include "products.h"

/* One layer's expert work. Expert ids[g]'s n[g] rows are rows base[g] .. base[g] + n[g] - 1
 * of x, xq, exact and out; those ranges do not overlap (the forward pass lays them out one
 * after another; a subset of a work keeps its rows where they are). */
typedef struct ExpertWork {
        uint32_t il;               /* layer */
        unsigned count;            /* experts with rows: 1 .. max(E, 1) */
        const uint32_t *ids;       /* [count] ascending expert ids (0 for a dense model) */
        const uint32_t *base;      /* [count] each expert's first row */
        const uint32_t *n;         /* [count] each expert's rows (>= 1) */
        uint32_t n_rows;           /* rows of x, xq, exact, out the work may address */
        const float *x;            /* [n_rows][D] inputs: read by rows on the float path */
        ActQ xq;                   /* [n_rows][D/256] blocks: x quantized in the gate/up matrices' activation
                                      format; NULL where not made (their float path) */
        const uint8_t *exact;      /* [n_rows] 1: the row runs on the float path whatever its xq */
        bool int8;                 /* 8-bit activations: silu(gate x) * up x is quantized for down */
        float *out;                /* [n_rows][D] down(silu(gate x) * up x) of each row's expert */
} ExpertWork;

/* An executor: run() computes out for every row of w and returns 0, or a negative errno
 * (the forward step then fails with it). */
typedef struct ExpertExec {
        int (*run)(void *ctx, const ExpertWork *w);
        void *ctx;
} ExpertExec;

/* The local executor: the experts of a work run on a ProductCtx's pool (and NUMA plan),
 * in groups of at most PRODUCTS_MAX experts and MOE_GROUP_ROWS rows (or one expert's), two
 * pool passes per group (gate/up with SiLU and the quantization for down, then down). */
typedef struct ExpertsLocal ExpertsLocal;

/* Scratch for groups of up to max_rows rows; pc borrowed (its pool, NUMA plan, row scratch). */
int experts_local_new(const Model *m, uint32_t max_rows, ProductCtx *pc, ExpertsLocal **ret_el);
ExpertsLocal *experts_local_free(ExpertsLocal *el);
/* The ExpertExec run() of the local executor (ctx: an ExpertsLocal). -E2BIG when an expert
 * has more rows than the scratch holds, -EINVAL for an expert id or layer out of range. */
int experts_local_run(void *ctx, const ExpertWork *w);
