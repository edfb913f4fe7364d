/* tests/unit/test_sample.c — the sampler's top-k selection (keep_best, engine/sample.c,
 * included here for its static functions): on random logits full of ties it must give the
 * k first candidates of a full sort (by logit, then id), in that order, for every k; and
 * a whole sampler run must draw the same tokens as one that sorts every candidate first
 * (the selection before keep_best, kept here as the oracle). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "../../engine/sample.c"

static uint64_t test_rng = 0x2545f4914f6cdd1dull;

static uint32_t next_u32(void) {
        return (uint32_t)(rng_next(&test_rng) >> 32);
}

/* n candidates in id order, logits on a grid of `levels` values, so many of them tie. */
static void fill(Candidate *c, uint32_t n, uint32_t levels) {
        for (uint32_t i = 0; i < n; i++)
                c[i] = (Candidate){ .logit = (float)(next_u32() % levels) * 0.125f - 4.0f, .id = (int32_t)i };
}

static void test_keep_best_equals_full_sort(void **state) {
        (void)state;
        enum { N = 3000 };
        static Candidate a[N], b[N];
        const uint32_t ks[] = { 1, 2, 3, 40, 41, 255, 1000, N - 1, N };
        const uint32_t levels[] = { 1, 2, 7, 64, 100000 };
        for (size_t l = 0; l < sizeof(levels) / sizeof(levels[0]); l++)
                for (size_t j = 0; j < sizeof(ks) / sizeof(ks[0]); j++)
                        for (int rep = 0; rep < 4; rep++) {
                                const uint32_t n = rep == 0 ? N : 1 + next_u32() % N, k = ks[j] < n ? ks[j] : n;
                                fill(a, n, levels[l]);
                                memcpy(b, a, n * sizeof(Candidate));
                                qsort(b, n, sizeof(Candidate), cmp_candidate);
                                keep_best(a, n, k);
                                for (uint32_t i = 0; i < k; i++)
                                        if (a[i].id != b[i].id || a[i].logit != b[i].logit)
                                                fail_msg("n=%u k=%u levels=%u: place %u holds id %d, a full sort has %d", n, k,
                                                         levels[l], i, a[i].id, b[i].id);
                        }
}

/* The chain as it was before keep_best: sort every candidate, keep top_k, then the same
 * rest of the chain (draw). */
static int32_t sample_full_sort(Sampler *s, const float *logits) {
        uint32_t n = s->n_vocab;
        for (uint32_t i = 0; i < n; i++)
                s->cand[i] = (Candidate){ .logit = logits[i], .id = (int32_t)i };
        apply_repeat_penalty(s);
        qsort(s->cand, n, sizeof(Candidate), cmp_candidate);
        if (s->p.top_k > 0 && (uint32_t)s->p.top_k < n)
                n = (uint32_t)s->p.top_k;
        return draw(s, n);
}

static void test_sampler_draws_as_full_sort(void **state) {
        (void)state;
        enum { V = 32000, STEPS = 40 };
        static float logits[V];
        const int32_t top_ks[] = { 1, 5, 40, 0, V + 1 };
        const float temps[] = { 0.3f, 0.8f, 1.5f };
        for (size_t a = 0; a < sizeof(top_ks) / sizeof(top_ks[0]); a++)
                for (size_t t = 0; t < sizeof(temps) / sizeof(temps[0]); t++) {
                        SamplerParams p = SAMPLER_DEFAULTS;
                        p.top_k = top_ks[a];
                        p.temperature = temps[t];
                        p.top_p = t == 2 ? 1.0f : 0.95f;
                        p.min_p = t == 1 ? 0.0f : 0.05f;
                        p.repeat_penalty = 1.1f;
                        p.seed = 7 + a * 3 + t;
                        Sampler *s1 = NULL, *s2 = NULL;
                        assert_int_equal(sampler_new(V, &p, &s1), 0);
                        assert_int_equal(sampler_new(V, &p, &s2), 0);
                        for (int step = 0; step < STEPS; step++) {
                                for (uint32_t i = 0; i < V; i++) /* a peaked, tied distribution */
                                        logits[i] = (float)(next_u32() % 16) * 0.5f - (i % 97 == 0 ? 0.0f : 4.0f);
                                const int32_t x = sampler_sample(s1, logits), y = sample_full_sort(s2, logits);
                                if (x != y)
                                        fail_msg("top_k %d temperature %.1f step %d: drew %d, a full sort draws %d", p.top_k,
                                                 (double)p.temperature, step, x, y);
                                sampler_accept(s1, x);
                                sampler_accept(s2, y);
                        }
                        sampler_free(s1);
                        sampler_free(s2);
                }
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_keep_best_equals_full_sort),
                cmocka_unit_test(test_sampler_draws_as_full_sort),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
