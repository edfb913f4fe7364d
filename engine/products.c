/* engine/products.c — matrix products over the thread pool (see products.h). */
#include "products.h"

#include "ops.h"

/* Rows [r0, r1) of W x into out, on this thread: on the int8 path when x was quantized in
 * W's activation format. */
static void product_rows(ProductCtx *pc, unsigned thread, const Matrix *w, const float *x, const ActQ *xq,
                         const uint8_t *exact, int64_t T, float *out, unsigned long r0, unsigned long r1) {
        const QuantInt8Kernels *k = quant_int8(w->type);
        if (k && xq->q[k->act]) {
                k->dot_rows(w->data + r0 * w->row_bytes, w->row_bytes, (int64_t)(r1 - r0), xq->q[k->act],
                            (int64_t)(w->cols / QK_K), T, out + r0, (int64_t)w->rows, (int64_t)w->cols);
                for (int64_t t = 0; exact && t < T; t++) /* computed twice: rare (one row per sequence) */
                        if (exact[t])
                                matmul_rows(w, x + (uint64_t)t * w->cols, 1, out + (uint64_t)t * w->rows, (int64_t)w->rows,
                                            r0, r1, pc->row_tmp[thread]);
                return;
        }
        matmul_rows(w, x, T, out, (int64_t)w->rows, r0, r1, pc->row_tmp[thread]);
}

static void product_chunk(ProductCtx *pc, unsigned thread, const Product *p, unsigned long r0, unsigned long r1) {
        product_rows(pc, thread, p->w, p->x, &p->xq, p->exact, p->T, p->out, r0, r1);
        if (!p->w_up)
                return;
        product_rows(pc, thread, p->w_up, p->x, &p->xq, p->exact, p->T, p->up, r0, r1);
        const uint64_t rows = p->w->rows;
        for (int64_t t = 0; t < p->T; t++) {
                float *h = p->out + (uint64_t)t * rows;
                const float *u = p->up + (uint64_t)t * rows;
                for (unsigned long r = r0; r < r1; r++)
                        h[r] = silu(h[r]) * u[r];
                if (p->hq) /* r0 and r1 are whole 256-blocks (product_job_run's chunks) */
                        quantize_row_act(p->hq_act, h + r0,
                                         (char *)p->hq + ((uint64_t)t * (rows / QK_K) + r0 / QK_K) * quant_act_block_bytes(p->hq_act),
                                         (int64_t)(r1 - r0));
        }
}

static void product_part(void *ctx, unsigned thread, unsigned n_threads) {
        ProductJob *j = ctx;
        (void)n_threads;
        if (j->node >= 0 && j->pc->numa->thread_node[thread] != j->node)
                return;
        const unsigned long n_chunks = j->p[j->n - 1].chunk_end;
        unsigned k = 0;
        for (;;) {
                const unsigned long c = __atomic_fetch_add(&j->next_chunk, 1, __ATOMIC_RELAXED);
                if (c >= n_chunks)
                        return;
                while (c >= j->p[k].chunk_end) /* chunks are taken in increasing order */
                        k++;
                const Product *p = &j->p[k];
                const unsigned long first = k ? j->p[k - 1].chunk_end : 0, r0 = (c - first) * p->chunk_rows;
                const unsigned long r1 = r0 + p->chunk_rows < p->w->rows ? r0 + p->chunk_rows : p->w->rows;
                product_chunk(j->pc, thread, p, r0, r1);
        }
}

/* The activation format in which W's int8 kernels take their input, or -1: W runs on the
 * float path (the path is off, W's type has no int8 kernel, or its rows are not whole
 * 256-blocks). */
int product_act(const ProductCtx *pc, const Matrix *w) {
        const QuantInt8Kernels *k = pc->int8 && w && w->cols % QK_K == 0 ? quant_int8(w->type) : NULL;
        return k ? (int)k->act : -1;
}

/* x [T][cols] quantized into dst[act] in each format that one of the matrices w[0..n-1]
 * (NULLs skipped) reads it in. */
ActQ product_quantize(const ProductCtx *pc, void *const dst[QUANT_ACT_COUNT_], const float *x, int64_t T, uint64_t cols,
                      const Matrix *const *w, unsigned n) {
        ActQ q = { { NULL } };
        for (unsigned i = 0; i < n; i++) {
                const int a = product_act(pc, w[i]);
                if (a < 0 || q.q[a])
                        continue;
                const size_t row = cols / QK_K * quant_act_block_bytes((QuantAct)a);
                for (int64_t t = 0; t < T; t++)
                        quantize_row_act((QuantAct)a, x + (size_t)t * cols, (char *)dst[a] + (size_t)t * row, (int64_t)cols);
                q.q[a] = dst[a];
        }
        return q;
}


/* Without NUMA placement a list's rows go in about this many chunks per thread. */
#define MATMUL_CHUNKS_PER_THREAD 4

void product_job_init(ProductJob *j, ProductCtx *pc, int node) {
        j->pc = pc;
        j->n = 0;
        j->node = node >= 0 && pc->numa && pc->numa->node_threads[node] > 0 ? node : -1;
        j->next_chunk = 0;
}

/* Adds a product (callers add at most PRODUCTS_MAX to a job: Q/K/V, or one per expert of a
 * group of at most PRODUCTS_MAX). Each matrix takes the int8 path when xq holds x in its
 * activation format; hq (SwiGLU pairs only, in format hq_act) is dropped unless the rows
 * are whole 256-blocks. */
void product_job_add(ProductJob *j, const Matrix *w, const Matrix *w_up, const float *x, ActQ xq, const uint8_t *exact,
                     int64_t T, float *out, float *up, void *hq, QuantAct hq_act) {
        j->p[j->n++] = (Product){ w, w_up, x, xq, j->pc->any_exact ? exact : NULL, T, out, up,
                                  hq && w->rows % QK_K == 0 ? hq : NULL, hq_act, 0, 0 };
}

/* Cuts the list in chunks of about equal bytes and runs it (on the calling thread alone
 * when it is small). */
void product_job_run(ProductJob *j) {
        ProductCtx *pc = j->pc;
        if (j->n == 0)
                return;
        uint64_t bytes = 0, work = 0;
        for (unsigned k = 0; k < j->n; k++) {
                const Product *p = &j->p[k];
                const uint64_t n_mat = p->w_up ? 2 : 1;
                bytes += n_mat * p->w->rows * p->w->row_bytes;
                work += n_mat * p->w->rows * p->w->cols * (uint64_t)p->T;
        }
        const bool alone = work < PARALLEL_MIN_WORK;
        const unsigned threads = alone ? 1 : j->node >= 0 ? pc->numa->node_threads[j->node] : pool_size(pc->pool);
        const uint64_t chunk_bytes = bytes / ((uint64_t)threads * MATMUL_CHUNKS_PER_THREAD) + 1;
        unsigned long end = 0;
        for (unsigned k = 0; k < j->n; k++) {
                Product *p = &j->p[k];
                const unsigned long align = p->hq ? QK_K : 8; /* whole 256-blocks / 8-row panels (quant_gemm.h) */
                const uint64_t row_bytes = (p->w_up ? 2 : 1) * p->w->row_bytes;
                unsigned long rows = (unsigned long)((chunk_bytes + row_bytes - 1) / row_bytes);
                rows = (rows + align - 1) / align * align;
                p->chunk_rows = rows;
                end += (unsigned long)((p->w->rows + rows - 1) / rows);
                p->chunk_end = end;
        }
        if (alone) {
                j->node = -1;
                product_part(j, 0, 1);
        } else {
                pool_run(pc->pool, product_part, j);
        }
}

void product_matmul(ProductCtx *pc, void *const xq[QUANT_ACT_COUNT_], const Matrix *w, const float *x,
                    const uint8_t *exact, int64_t T, float *out) {
        ProductJob j;
        product_job_init(&j, pc, -1);
        product_job_add(&j, w, NULL, x, product_quantize(pc, xq, x, T, w->cols, &w, 1), exact, T, out, NULL, NULL,
                        QUANT_ACT_Q8K);
        product_job_run(&j);
}

