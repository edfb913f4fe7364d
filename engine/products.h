/* engine/products.h — the forward pass's matrix products over the thread pool. A job is a
 * list of products that share one pool pass (Q/K/V; the gate/up pairs of a group of experts;
 * their down products): their rows are cut in chunks of about equal bytes that any thread
 * takes, first come first served, so the threads meet once per list and a thread the
 * machine slows does less. Each matrix runs its 8-bit kernels (quant_int8.h) when its input
 * was quantized in the activation format its type pairs with, else the float path
 * (ops.h matmul_rows); rows flagged exact always take the float path. Whatever the
 * chunking, every output is the same bits. Called from the forward pass's thread. */
#pragma once
#include <stdbool.h>
#include <stdint.h>

#include "model.h"
#include "numa.h"
#include "pool.h"
#include "quant_int8.h"

/* What the products of one Forward share. */
typedef struct ProductCtx {
        Pool *pool;               /* borrowed; NULL: the calling thread only */
        const NumaPlan *numa;     /* borrowed; NULL: any thread runs any expert */
        float **row_tmp;          /* [threads][widest row] a dequantized weight row */
        bool int8;                /* quantize inputs to 8 bits for the weight types that allow it */
        bool any_exact;           /* this step flags some rows exact (FORWARD_EXACT_POSITIONS) */
} ProductCtx;

/* An input's quantized forms: q[act] in format act, NULL where not made (no matrix reading
 * this input needs it, or the float path). */
typedef struct ActQ {
        const void *q[QUANT_ACT_COUNT_];
} ActQ;

/* One matrix product out[t][r] = W[r] . x[t], or with w_up a SwiGLU pair:
 * out[t][r] = silu(W[r] . x[t]) * (W_up[r] . x[t]), optionally quantized into hq as it is
 * made (each 256-block of a token's row needs only its own values). */
typedef struct Product {
        const Matrix *w;          /* [rows][cols] */
        const Matrix *w_up;       /* NULL, or [rows][cols] the up half of a SwiGLU pair */
        const float *x;           /* [T][cols] */
        ActQ xq;                  /* [T][cols/256] blocks: x quantized; a matrix whose format is missing runs on the float path */
        const uint8_t *exact;     /* NULL, or [T]: 1 where token t runs on the float path anyway */
        int64_t T;
        float *out;               /* [T][rows] */
        float *up;                /* with w_up: [T][rows] scratch for W_up x */
        void *hq;                 /* with w_up, or NULL: [T][rows/256] blocks of format hq_act, out quantized */
        QuantAct hq_act;
        unsigned long chunk_rows; /* rows per chunk */
        unsigned long chunk_end;  /* one past this product's last chunk in the job's numbering */
} Product;

/* Products that run in one pool pass: their rows are cut in chunks that any thread takes,
 * first come first served, so the threads wait for each other once per list instead of
 * once per product, and a thread slowed by the machine does less. */
#define PRODUCTS_MAX 16

typedef struct ProductJob {
        ProductCtx *pc;
        Product p[PRODUCTS_MAX];
        unsigned n;
        int node;                 /* >= 0: only the threads of this NUMA node take part */
        unsigned long next_chunk; /* atomic */
} ProductJob;

/* Below this many multiply-adds a product runs on the calling thread: waking the pool
 * costs more than it saves (and a loaded machine makes every barrier expensive). */
#define PARALLEL_MIN_WORK (1u << 20)


/* The activation format in which W's int8 kernels take their input, or -1: W runs on the
 * float path (8-bit inputs are off, W's type has no int8 kernel, or its rows are not whole
 * 256-blocks). */
int product_act(const ProductCtx *pc, const Matrix *w);
/* x [T][cols] quantized into dst[act] in each format that one of the matrices w[0..n-1]
 * (NULLs skipped) reads it in. */
ActQ product_quantize(const ProductCtx *pc, void *const dst[QUANT_ACT_COUNT_], const float *x, int64_t T, uint64_t cols,
                      const Matrix *const *w, unsigned n);

/* An empty job; node >= 0: only that NUMA node's threads take part. */
void product_job_init(ProductJob *j, ProductCtx *pc, int node);
/* Adds a product (at most PRODUCTS_MAX to a job): out[t][r] = W[r] . x[t], or with w_up a
 * SwiGLU pair out = silu(W x) * (W_up x) (up: [T][rows] scratch), quantized into hq (format
 * hq_act) as it is made unless hq is NULL or the rows are not whole 256-blocks. xq: x's
 * quantized forms; exact: NULL or [T] rows that take the float path anyway. */
void product_job_add(ProductJob *j, const Matrix *w, const Matrix *w_up, const float *x, ActQ xq, const uint8_t *exact,
                     int64_t T, float *out, float *up, void *hq, QuantAct hq_act);
/* Runs the job's list (on the calling thread alone when it is small). */
void product_job_run(ProductJob *j);
/* out[t][r] = W[r] . x[t] as a job of one, x quantized first into the xq buffers when W
 * takes the 8-bit path. */
void product_matmul(ProductCtx *pc, void *const xq[QUANT_ACT_COUNT_], const Matrix *w, const float *x,
                    const uint8_t *exact, int64_t T, float *out);
