/* tests/unit/test_forward.c — the forward pass gives the same bits however a prompt is cut
 * and whatever shares its batch: on the fixture model with a small rolling cache (4 sinks +
 * 8 rolling slots, so the ring wraps many times), every position's logits from chunks of
 * 8, 3 and 1 tokens, and from two sessions fed side by side in one batch, are equal to the
 * bit; with float and with 8-bit activations, on one thread and on a pool of two. The
 * numerics themselves are checked against oracles elsewhere (tests/python). */
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
#include "test_fixtures.h"

#define N_TOKENS 40
#define CACHE_SLOTS 12 /* KV_ATTENTION_SINKS sinks + the rest rolling */
#define MAX_CHUNK (CACHE_SLOTS - KV_ATTENTION_SINKS) /* a chunk is at most the rolling slots */

typedef struct Fixture {
        Model *m;
        Pool *pool;
        uint32_t V;
} Fixture;

static void prompt(int which, int32_t out[N_TOKENS]) {
        for (uint32_t i = 0; i < N_TOKENS; i++)
                out[i] = i == 0 ? 1 : (int32_t)(300 + (i * (which ? 104729u : 7919u)) % 20000);
}

/* Every position's logits [N_TOKENS][V] of one session fed in chunks of `chunk` tokens. */
static void run_alone(Forward *fw, const Fixture *f, int which, uint32_t chunk, float *logits) {
        int32_t tok[N_TOKENS];
        prompt(which, tok);
        KVCache *kv = NULL;
        assert_int_equal(kv_cache_new(f->m->cfg.n_layer, f->m->cfg.n_head_kv, f->m->cfg.head_dim, 0, CACHE_SLOTS, &kv), 0);
        for (uint32_t p = 0; p < N_TOKENS; p += chunk) {
                const uint32_t n = N_TOKENS - p < chunk ? N_TOKENS - p : chunk;
                assert_int_equal(forward_chunk(fw, kv, tok + p, n, FORWARD_LOGITS_ALL, logits + (size_t)p * f->V), 0);
        }
        kv_cache_free(kv);
}

/* Both sessions in the same batches, `chunk` tokens of each per batch. */
static void run_together(Forward *fw, const Fixture *f, uint32_t chunk, float *logits0, float *logits1) {
        int32_t tok[2][N_TOKENS];
        KVCache *kv[2] = { NULL, NULL };
        float *out[2] = { logits0, logits1 };
        for (int s = 0; s < 2; s++) {
                prompt(s, tok[s]);
                assert_int_equal(kv_cache_new(f->m->cfg.n_layer, f->m->cfg.n_head_kv, f->m->cfg.head_dim, 0, CACHE_SLOTS,
                                              &kv[s]),
                                 0);
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

static void check_same(const float *a, const float *b, const Fixture *f, const char *what) {
        const size_t n = (size_t)N_TOKENS * f->V;
        for (size_t i = 0; i < n; i++)
                if (memcmp(&a[i], &b[i], sizeof(float)) != 0)
                        fail_msg("%s: position %zu logit %zu differs (%.9g against %.9g)", what, i / f->V, i % f->V,
                                 (double)a[i], (double)b[i]);
}

static void test_chunking_and_batching_change_no_bit(void **state) {
        char path[4096];
        if (!fixture_path("tiny-moe-shakespeare/tiny-moe-q4_k_m.gguf", path, sizeof(path)))
                return;
        Fixture f = { 0 };
        ModelError err;
        assert_int_equal(model_load(path, &err, &f.m), 0);
        f.V = f.m->cfg.n_vocab;
        assert_int_equal(pool_new(2, &f.pool), 0);
        const size_t n = (size_t)N_TOKENS * f.V;
        float *ref = calloc(n, sizeof(float)), *got = calloc(n, sizeof(float)), *other = calloc(n, sizeof(float)),
              *other_ref = calloc(n, sizeof(float));
        assert_true(ref && got && other && other_ref);
        for (int threads = 1; threads <= 2; threads++)
                for (int int8 = 0; int8 <= 1; int8++) {
                        Forward *fw = NULL;
                        assert_int_equal(forward_new(f.m, 16, CACHE_SLOTS, threads == 2 ? f.pool : NULL, &fw), 0);
                        forward_set_int8(fw, int8);
                        const uint32_t max = MAX_CHUNK;
                        run_alone(fw, &f, 0, max, ref);
                        run_alone(fw, &f, 0, 3, got);
                        check_same(ref, got, &f, "chunks of 3 against the largest");
                        run_alone(fw, &f, 0, 1, got);
                        check_same(ref, got, &f, "one token at a time against the largest chunks");
                        run_alone(fw, &f, 1, max, other_ref);
                        run_together(fw, &f, 3, got, other);
                        check_same(ref, got, &f, "session 0 batched with session 1");
                        check_same(other_ref, other, &f, "session 1 batched with session 0");
                        print_message("ok   %d thread(s), %s activations: chunks 8/3/1 and batched, same bits\n", threads,
                                      int8 ? "8-bit" : "float");
                        forward_free(fw);
                }
        free(ref);
        free(got);
        free(other);
        free(other_ref);
        pool_free(f.pool);
        model_free(f.m);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_chunking_and_batching_change_no_bit),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
