/* tests/unit/test_forward.c — the forward pass gives the same bits however a prompt is cut,
 * whatever shares its batch and however many threads run it, for every KV cache type:
 * - short: on the fixture model with a small rolling cache (4 sinks + 8 rolling slots, so the
 *   ring wraps many times), every position's logits from chunks of 8, 3 and 1 tokens, and
 *   from two sessions fed side by side in one batch, are equal to the bit; with float and
 *   with 8-bit activations, on one thread and on a pool of two;
 * - long: 800 positions in a 300-slot cache (up to 4 attention key blocks a query, the sinks'
 *   block apart from the window's, the ring wrapping), fed in chunks of 64, ragged chunks, one
 *   token at a time and batched with another session, on 1, 2 and 3 threads, with attention's
 *   keys split over threads by key blocks or not: the logits every 64 positions are equal to
 *   the bit;
 * - experts elsewhere: an expert executor (engine/experts.h) that deals each layer's experts
 *   to three other Forwards (1, 2 and 3 threads), last one first, through copies of their
 *   inputs and outputs, as the cluster transport does, gives the same bits as the local one.
 * The numerics themselves are checked against oracles elsewhere (tests/python). */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "engine_limits.h"
#include "forward.h"
#include "quant_int8.h"
#include "test_fixtures.h"

#define N_TOKENS 40
#define CACHE_SLOTS 12 /* KV_ATTENTION_SINKS sinks + the rest rolling */
#define MAX_CHUNK (CACHE_SLOTS - KV_ATTENTION_SINKS) /* a chunk is at most the rolling slots */

#define LONG_TOKENS 800
#define LONG_SLOTS 300  /* the window of position 799 starts at 504: key blocks 1..3, sinks in 0 */
#define LONG_CHECK 64   /* logits compared at positions 63, 127, ... and the last */
#define LONG_CHECKS ((LONG_TOKENS + LONG_CHECK - 1) / LONG_CHECK)
#define LONG_CHUNK 64

static const uint32_t kv_types[] = { GGML_TYPE_F16, GGML_TYPE_Q8_0, GGML_TYPE_F32 };

typedef struct Fixture {
        Model *m;
        Pool *pool2, *pool3;
        uint32_t V;
} Fixture;

static void prompt(int which, int32_t *out, uint32_t n) {
        for (uint32_t i = 0; i < n; i++)
                out[i] = i == 0 ? 1 : (int32_t)(300 + (i * (which ? 104729u : 7919u)) % 20000);
}

static KVCache *new_cache(const Fixture *f, uint32_t type, uint32_t slots) {
        KVCache *kv = NULL;
        assert_int_equal(kv_cache_new(f->m->cfg.n_layer, f->m->cfg.n_head_kv, f->m->cfg.head_dim, type, 0, slots, &kv), 0);
        assert_int_equal(kv->type, type);
        return kv;
}

/* Every position's logits [N_TOKENS][V] of one session fed in chunks of `chunk` tokens. */
static void run_alone(Forward *fw, const Fixture *f, uint32_t type, int which, uint32_t chunk, float *logits) {
        int32_t tok[N_TOKENS];
        prompt(which, tok, N_TOKENS);
        KVCache *kv = new_cache(f, type, CACHE_SLOTS);
        for (uint32_t p = 0; p < N_TOKENS; p += chunk) {
                const uint32_t n = N_TOKENS - p < chunk ? N_TOKENS - p : chunk;
                assert_int_equal(forward_chunk(fw, kv, tok + p, n, FORWARD_LOGITS_ALL, logits + (size_t)p * f->V), 0);
        }
        kv_cache_free(kv);
}

/* Both sessions in the same batches, `chunk` tokens of each per batch. */
static void run_together(Forward *fw, const Fixture *f, uint32_t type, uint32_t chunk, float *logits0, float *logits1) {
        int32_t tok[2][N_TOKENS];
        KVCache *kv[2];
        float *out[2] = { logits0, logits1 };
        for (int s = 0; s < 2; s++) {
                prompt(s, tok[s], N_TOKENS);
                kv[s] = new_cache(f, type, CACHE_SLOTS);
        }
        for (uint32_t p = 0; p < N_TOKENS; p += chunk) {
                const uint32_t n = N_TOKENS - p < chunk ? N_TOKENS - p : chunk;
                ForwardItem items[2];
                for (int s = 0; s < 2; s++)
                        items[s] = (ForwardItem){ .kv = kv[s], .tokens = tok[s] + p, .n_tokens = n,
                                                  .mode = FORWARD_LOGITS_ALL, .logits = out[s] + (size_t)p * f->V };
                assert_int_equal(forward_batch(fw, items, 2), 0);
        }
        kv_cache_free(kv[0]);
        kv_cache_free(kv[1]);
}

static void check_same(const float *a, const float *b, size_t n_rows, const Fixture *f, const char *what) {
        const size_t n = n_rows * f->V;
        for (size_t i = 0; i < n; i++)
                if (memcmp(&a[i], &b[i], sizeof(float)) != 0)
                        fail_msg("%s: row %zu logit %zu differs (%.9g against %.9g)", what, i / f->V, i % f->V,
                                 (double)a[i], (double)b[i]);
}

static int load_fixture(Fixture *f) {
        char path[4096];
        if (!fixture_path("tiny-moe-shakespeare/tiny-moe-q4_k_m.gguf", path, sizeof(path)))
                return 0;
        ModelError err;
        assert_int_equal(model_load(path, &err, &f->m), 0);
        f->V = f->m->cfg.n_vocab;
        assert_int_equal(pool_new(2, &f->pool2), 0);
        assert_int_equal(pool_new(3, &f->pool3), 0);
        return 1;
}

static void free_fixture(Fixture *f) {
        pool_free(f->pool2);
        pool_free(f->pool3);
        model_free(f->m);
}

static void test_chunking_and_batching_change_no_bit(void **state) {
        Fixture f = { 0 };
        if (!load_fixture(&f))
                return;
        const size_t n = (size_t)N_TOKENS * f.V;
        float *ref = calloc(n, sizeof(float)), *got = calloc(n, sizeof(float)), *other = calloc(n, sizeof(float)),
              *other_ref = calloc(n, sizeof(float));
        assert_true(ref && got && other && other_ref);
        for (size_t k = 0; k < sizeof(kv_types) / sizeof(kv_types[0]); k++)
                for (int threads = 1; threads <= 2; threads++)
                        for (int int8 = 0; int8 <= 1; int8++) {
                                /* F16, the default, on every path; the other types on two */
                                if (kv_types[k] != GGML_TYPE_F16 && int8 + 1 != threads)
                                        continue;
                                Forward *fw = NULL;
                                assert_int_equal(forward_new(f.m, 16, CACHE_SLOTS, threads == 2 ? f.pool2 : NULL, &fw), 0);
                                forward_set_int8(fw, int8);
                                const uint32_t max = MAX_CHUNK, type = kv_types[k];
                                run_alone(fw, &f, type, 0, max, ref);
                                run_alone(fw, &f, type, 0, 3, got);
                                check_same(ref, got, N_TOKENS, &f, "chunks of 3 against the largest");
                                run_alone(fw, &f, type, 0, 1, got);
                                check_same(ref, got, N_TOKENS, &f, "one token at a time against the largest chunks");
                                run_alone(fw, &f, type, 1, max, other_ref);
                                run_together(fw, &f, type, 3, got, other);
                                check_same(ref, got, N_TOKENS, &f, "session 0 batched with session 1");
                                check_same(other_ref, other, N_TOKENS, &f, "session 1 batched with session 0");
                                print_message("ok   KV %-4s %d thread(s), %s activations: chunks 8/3/1 and batched, same bits\n",
                                              kv_type_name(type), threads, int8 ? "8-bit" : "float");
                                forward_free(fw);
                        }
        free(ref);
        free(got);
        free(other);
        free(other_ref);
        free_fixture(&f);
}

/* ------------------------------------------------------------------ long contexts */

/* How a long run is fed: calls of at most `chunk` tokens (cut at the check positions, so each
 * of them ends a call), alone or side by side with the other prompt's session. */
typedef struct LongRun {
        unsigned threads;        /* 1, 2 or 3 */
        ForwardAttnSplit split;
        uint32_t chunk;
        uint32_t from;           /* chunks of LONG_CHUNK before this position (saves time) */
        int batched;
        const char *what;
} LongRun;

static int is_check(uint32_t pos) {
        return (pos + 1) % LONG_CHECK == 0 || pos + 1 == LONG_TOKENS;
}

/* Logits at the check positions [LONG_CHECKS][V] of prompt 0 (and of prompt 1 when batched). */
static void run_long(const Fixture *f, uint32_t type, const LongRun *lr, float *out0, float *out1) {
        Forward *fw = NULL;
        Pool *pool = lr->threads == 3 ? f->pool3 : lr->threads == 2 ? f->pool2 : NULL;
        assert_int_equal(forward_new(f->m, 2 * LONG_CHUNK, LONG_SLOTS, pool, &fw), 0);
        forward_set_attn_split(fw, lr->split);
        int32_t *tok[2];
        KVCache *kv[2] = { NULL, NULL };
        float *out[2] = { out0, out1 };
        const int n_sessions = lr->batched ? 2 : 1;
        for (int s = 0; s < n_sessions; s++) {
                tok[s] = malloc(LONG_TOKENS * sizeof(int32_t));
                assert_non_null(tok[s]);
                prompt(s, tok[s], LONG_TOKENS);
                kv[s] = new_cache(f, type, LONG_SLOTS);
        }
        uint32_t check = 0;
        for (uint32_t p = 0; p < LONG_TOKENS;) {
                const uint32_t chunk = p < lr->from ? LONG_CHUNK : lr->chunk;
                uint32_t n = 1;
                while (n < chunk && p + n < LONG_TOKENS && !is_check(p + n - 1))
                        n++;
                const int last_is_check = is_check(p + n - 1);
                ForwardItem items[2];
                for (int s = 0; s < n_sessions; s++)
                        items[s] = (ForwardItem){ .kv = kv[s], .tokens = tok[s] + p, .n_tokens = n,
                                                  .mode = last_is_check ? FORWARD_LOGITS_LAST : FORWARD_LOGITS_NONE,
                                                  .logits = out[s] + (size_t)check * f->V };
                assert_int_equal(forward_batch(fw, items, (uint32_t)n_sessions), 0);
                check += last_is_check;
                p += n;
        }
        assert_int_equal(check, LONG_CHECKS);
        for (int s = 0; s < n_sessions; s++) {
                kv_cache_free(kv[s]);
                free(tok[s]);
        }
        forward_free(fw);
}

static void test_long_context_threads_and_splits_change_no_bit(void **state) {
        Fixture f = { 0 };
        if (!load_fixture(&f))
                return;
        const size_t n = (size_t)LONG_CHECKS * f.V;
        float *ref[2] = { calloc(n, sizeof(float)), calloc(n, sizeof(float)) };
        float *got[2] = { calloc(n, sizeof(float)), calloc(n, sizeof(float)) };
        assert_true(ref[0] && ref[1] && got[0] && got[1]);
        static const LongRun reference = { 1, FORWARD_ATTN_NEVER, LONG_CHUNK, 0, 0, "reference" };
        static const LongRun reference_other = { 1, FORWARD_ATTN_NEVER, LONG_CHUNK, 0, 1, "reference, both prompts" };
        static const LongRun runs[] = {
                { 2, FORWARD_ATTN_ALWAYS, 1, 512, 0, "one token at a time from 512, 2 threads, keys split by blocks" },
                { 3, FORWARD_ATTN_AUTO, 23, 0, 0, "chunks of 23, 3 threads" },
                { 3, FORWARD_ATTN_ALWAYS, 16, 0, 1, "batched with another session, chunks of 16, 3 threads, split" },
                { 2, FORWARD_ATTN_ALWAYS, LONG_CHUNK, 0, 0, "chunks of 64, 2 threads, keys split by blocks" },
                { 1, FORWARD_ATTN_AUTO, 1, 640, 1, "batched, one token at a time from 640, 1 thread" },
        };
        const size_t n_all = sizeof(runs) / sizeof(runs[0]);
        for (size_t k = 0; k < sizeof(kv_types) / sizeof(kv_types[0]); k++) {
                const uint32_t type = kv_types[k];
                /* F16, the default, runs every schedule; the other types one each */
                const size_t n_runs = type == GGML_TYPE_F16 ? n_all : 1;
                run_long(&f, type, &reference, ref[0], NULL);
                int batched = 0;
                for (size_t i = 0; i < n_runs; i++)
                        batched |= runs[(i + 3 * k) % n_all].batched;
                if (batched) {
                        run_long(&f, type, &reference_other, got[0], ref[1]);
                        check_same(ref[0], got[0], LONG_CHECKS, &f, "the reference batched with another session");
                }
                for (size_t i = 0; i < n_runs; i++) {
                        const LongRun *lr = &runs[(i + 3 * k) % n_all];
                        run_long(&f, type, lr, got[0], got[1]);
                        check_same(ref[0], got[0], LONG_CHECKS, &f, lr->what);
                        if (lr->batched)
                                check_same(ref[1], got[1], LONG_CHECKS, &f, lr->what);
                        print_message("ok   KV %-4s %d positions, %s: same bits\n", kv_type_name(type), LONG_TOKENS,
                                      lr->what);
                }
        }
        for (int s = 0; s < 2; s++) {
                free(ref[s]);
                free(got[s]);
        }
        free_fixture(&f);
}

/* ------------------------------------------------------------------ expert executors */

#define SPLIT_WAYS 3
#define SPLIT_ROWS 64 /* rows of a layer's work: 16 tokens x top-2, with room */

/* An executor that deals expert e to "rank" e % SPLIT_WAYS, runs the ranks last one first,
 * each on another Forward's local executor, with its rows copied into buffers of its own (as
 * a transport delivers them) and its outputs copied back into place. */
typedef struct SplitExec {
        ExpertExec ways[SPLIT_WAYS];
        size_t D;
        float *x, *out;                  /* [SPLIT_ROWS][D] */
        uint8_t *xq[QUANT_ACT_COUNT_];   /* [SPLIT_ROWS][D/256] blocks */
        uint8_t exact[SPLIT_ROWS];
        unsigned calls;
} SplitExec;

static int split_run(void *ctx, const ExpertWork *w) {
        SplitExec *s = ctx;
        const size_t D = s->D, DB = D / QK_K;
        for (int r = SPLIT_WAYS - 1; r >= 0; r--) {
                uint32_t ids[MODEL_MAX_EXPERTS], base[MODEL_MAX_EXPERTS], n[MODEL_MAX_EXPERTS], from[MODEL_MAX_EXPERTS];
                unsigned k = 0;
                uint32_t rows = 0;
                for (unsigned g = 0; g < w->count; g++) {
                        if (w->ids[g] % SPLIT_WAYS != (uint32_t)r)
                                continue;
                        assert_true(rows + w->n[g] <= SPLIT_ROWS);
                        ids[k] = w->ids[g];
                        base[k] = rows;
                        n[k] = w->n[g];
                        from[k++] = w->base[g];
                        memcpy(s->x + (size_t)rows * D, w->x + (size_t)w->base[g] * D, w->n[g] * D * sizeof(float));
                        memcpy(s->exact + rows, w->exact + w->base[g], w->n[g]);
                        for (int a = 0; a < QUANT_ACT_COUNT_; a++)
                                if (w->xq.q[a]) {
                                        const size_t row = DB * quant_act_block_bytes((QuantAct)a);
                                        memcpy(s->xq[a] + rows * row, (const uint8_t *)w->xq.q[a] + w->base[g] * row, w->n[g] * row);
                                }
                        rows += w->n[g];
                }
                if (k == 0)
                        continue;
                ExpertWork sub = { .il = w->il, .count = k, .ids = ids, .base = base, .n = n, .n_rows = rows, .x = s->x,
                                   .exact = s->exact, .int8 = w->int8, .out = s->out };
                for (int a = 0; a < QUANT_ACT_COUNT_; a++)
                        if (w->xq.q[a])
                                sub.xq.q[a] = s->xq[a];
                memset(s->out, 0xff, SPLIT_ROWS * D * sizeof(float)); /* NaNs where nothing was written */
                const int e = s->ways[r].run(s->ways[r].ctx, &sub);
                if (e < 0)
                        return e;
                for (unsigned i = 0; i < k; i++)
                        memcpy(w->out + (size_t)from[i] * D, s->out + (size_t)base[i] * D, n[i] * D * sizeof(float));
        }
        s->calls++;
        return 0;
}

static void test_expert_executor_changes_no_bit(void **state) {
        Fixture f = { 0 };
        if (!load_fixture(&f))
                return;
        const size_t n = (size_t)N_TOKENS * f.V, D = f.m->cfg.n_embd;
        float *ref = calloc(n, sizeof(float)), *got = calloc(n, sizeof(float)), *other = calloc(n, sizeof(float)),
              *other_ref = calloc(n, sizeof(float));
        assert_true(ref && got && other && other_ref);
        SplitExec split = { .D = D };
        split.x = calloc(SPLIT_ROWS * D, sizeof(float));
        split.out = calloc(SPLIT_ROWS * D, sizeof(float));
        assert_true(split.x && split.out);
        for (int a = 0; a < QUANT_ACT_COUNT_; a++) {
                split.xq[a] = calloc(SPLIT_ROWS * (D / QK_K), quant_act_block_bytes((QuantAct)a));
                assert_non_null(split.xq[a]);
        }
        Forward *ways[SPLIT_WAYS] = { NULL };
        Pool *pools[SPLIT_WAYS] = { NULL, f.pool2, f.pool3 };
        for (int r = 0; r < SPLIT_WAYS; r++) {
                assert_int_equal(forward_new(f.m, 16, CACHE_SLOTS, pools[r], &ways[r]), 0);
                split.ways[r] = forward_experts_local(ways[r]);
        }
        for (int threads = 1; threads <= 2; threads++)
                for (int int8 = 0; int8 <= 1; int8++) {
                        Forward *fw = NULL;
                        assert_int_equal(forward_new(f.m, 16, CACHE_SLOTS, threads == 2 ? f.pool2 : NULL, &fw), 0);
                        forward_set_int8(fw, int8);
                        const uint32_t type = GGML_TYPE_F16;
                        run_alone(fw, &f, type, 0, MAX_CHUNK, ref);
                        run_alone(fw, &f, type, 1, MAX_CHUNK, other_ref);
                        forward_set_experts(fw, &(ExpertExec){ split_run, &split });
                        split.calls = 0;
                        run_alone(fw, &f, type, 0, MAX_CHUNK, got);
                        check_same(ref, got, N_TOKENS, &f, "experts dealt to three Forwards");
                        run_together(fw, &f, type, 3, got, other);
                        check_same(ref, got, N_TOKENS, &f, "session 0 batched, experts dealt to three Forwards");
                        check_same(other_ref, other, N_TOKENS, &f, "session 1 batched, experts dealt to three Forwards");
                        assert_true(split.calls > 0);
                        forward_set_experts(fw, NULL);
                        run_alone(fw, &f, type, 0, MAX_CHUNK, got);
                        check_same(ref, got, N_TOKENS, &f, "back on the local executor");
                        print_message("ok   %d thread(s), %s activations: experts dealt to three Forwards, same bits "
                                      "(%u layer calls)\n", threads, int8 ? "8-bit" : "float", split.calls);
                        forward_free(fw);
                }
        for (int r = 0; r < SPLIT_WAYS; r++)
                forward_free(ways[r]);
        for (int a = 0; a < QUANT_ACT_COUNT_; a++)
                free(split.xq[a]);
        free(split.x);
        free(split.out);
        free(ref);
        free(got);
        free(other);
        free(other_ref);
        free_fixture(&f);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_chunking_and_batching_change_no_bit),
                cmocka_unit_test(test_long_context_threads_and_splits_change_no_bit),
                cmocka_unit_test(test_expert_executor_changes_no_bit),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
