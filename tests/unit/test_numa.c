/* tests/unit/test_numa.c — the NUMA planner on synthetic topologies: every expert placed,
 * bytes per node follow the nodes' CPU shares, threads spread the same way, at least one
 * thread on every node that holds experts, deterministic; the real machine's plan; and a
 * forward pass that runs experts by node (a synthetic two-node plan on a fixture model)
 * giving the same bits as one that does not. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "forward.h"
#include "numa.h"
#include "test_fixtures.h"

/* A model with only what the planner reads: layer count, expert count and expert sizes. */
static Model *fake_model(uint32_t n_layer, uint32_t n_expert, uint64_t ff, uint64_t d) {
        Model *m = calloc(1, sizeof(*m));
        m->cfg.n_layer = n_layer;
        m->cfg.n_expert = n_expert;
        m->layers = calloc(n_layer, sizeof(LayerWeights));
        for (uint32_t l = 0; l < n_layer; l++) {
                LayerWeights *L = &m->layers[l];
                L->gate = calloc(n_expert, sizeof(Matrix));
                L->up = calloc(n_expert, sizeof(Matrix));
                L->down = calloc(n_expert, sizeof(Matrix));
                for (uint32_t e = 0; e < n_expert; e++) {
                        /* Q4_K-like: 144 bytes per 256 weights; sizes vary a little per expert */
                        const uint64_t rb = d / 256 * 144 + (e % 3) * 144;
                        L->gate[e] = (Matrix){ .rows = ff, .cols = d, .row_bytes = rb };
                        L->up[e] = (Matrix){ .rows = ff, .cols = d, .row_bytes = rb };
                        L->down[e] = (Matrix){ .rows = d, .cols = ff, .row_bytes = ff / 256 * 144 };
                }
        }
        return m;
}

static void free_fake(Model *m) {
        for (uint32_t l = 0; l < m->cfg.n_layer; l++) {
                free(m->layers[l].gate);
                free(m->layers[l].up);
                free(m->layers[l].down);
        }
        free(m->layers);
        free(m);
}

static NumaTopology topo(unsigned n_nodes, const unsigned *cpus) {
        NumaTopology t = { .n_nodes = n_nodes };
        unsigned next = 0;
        for (unsigned n = 0; n < n_nodes; n++) {
                t.n_cpus[n] = cpus[n];
                for (unsigned i = 0; i < cpus[n] && i < 64; i++)
                        t.cpus[n][i] = (uint16_t)(next + i);
                next += cpus[n];
                t.mem_bytes[n] = 64ull << 30;
        }
        return t;
}

static uint64_t expert_size(const Model *m, uint32_t l, uint32_t e) {
        const LayerWeights *L = &m->layers[l];
        return L->gate[e].rows * L->gate[e].row_bytes + L->up[e].rows * L->up[e].row_bytes +
               L->down[e].rows * L->down[e].row_bytes;
}

static void check_plan(const Model *m, const NumaTopology *t, unsigned n_threads) {
        NumaPlan p, again;
        assert_int_equal(numa_plan(m, t, n_threads, &p), 0);
        assert_int_equal(p.n_nodes, t->n_nodes);

        /* every expert on a real node; bytes add up */
        uint64_t total = 0, sum_nodes = 0, biggest = 0, counted[NUMA_MAX_NODES] = { 0 };
        unsigned cpus = 0;
        for (uint32_t l = 0; l < m->cfg.n_layer; l++)
                for (uint32_t e = 0; e < m->cfg.n_expert; e++) {
                        const unsigned node = p.expert_node[l * m->cfg.n_expert + e];
                        assert_true(node < t->n_nodes);
                        const uint64_t b = expert_size(m, l, e);
                        counted[node] += b;
                        total += b;
                        biggest = b > biggest ? b : biggest;
                }
        for (unsigned n = 0; n < t->n_nodes; n++) {
                assert_int_equal(counted[n], p.node_bytes[n]);
                sum_nodes += p.node_bytes[n];
                cpus += t->n_cpus[n];
        }
        assert_int_equal(sum_nodes, total);
        /* each node within one expert of its CPU share */
        for (unsigned n = 0; n < t->n_nodes; n++) {
                const double want = (double)total * t->n_cpus[n] / cpus;
                assert_true((double)p.node_bytes[n] <= want + (double)biggest);
                assert_true((double)p.node_bytes[n] + (double)biggest >= want);
        }
        /* threads: all given out, to the right nodes, CPUs of that node */
        unsigned given = 0, per[NUMA_MAX_NODES] = { 0 };
        for (unsigned n = 0; n < t->n_nodes; n++)
                given += p.node_threads[n];
        assert_int_equal(given, n_threads);
        for (unsigned i = 0; i < n_threads; i++) {
                const unsigned n = p.thread_node[i];
                assert_true(n < t->n_nodes);
                per[n]++;
                int on_node = 0;
                for (unsigned c = 0; c < t->n_cpus[n] && c < 64; c++)
                        on_node |= t->cpus[n][c] == p.thread_cpu[i];
                assert_true(on_node);
        }
        for (unsigned n = 0; n < t->n_nodes; n++) {
                assert_int_equal(per[n], p.node_threads[n]);
                if (n_threads >= t->n_nodes && p.node_bytes[n] > 0)
                        assert_true(p.node_threads[n] >= 1);
        }
        /* deterministic */
        assert_int_equal(numa_plan(m, t, n_threads, &again), 0);
        assert_memory_equal(p.expert_node, again.expert_node, (size_t)m->cfg.n_layer * m->cfg.n_expert);
        assert_memory_equal(p.thread_cpu, again.thread_cpu, n_threads * sizeof(uint16_t));
        numa_plan_free(&again);
        numa_plan_free(&p);
}

static void test_synthetic_topologies(void **state) {
        (void)state;
        Model *m = fake_model(32, 8, 14336, 4096); /* Mixtral 8x7B's expert shapes */
        const unsigned one[] = { 2 }, two[] = { 16, 16 }, uneven[] = { 8, 24 }, four[] = { 12, 12, 12, 12 },
                       eight[] = { 4, 4, 4, 4, 4, 4, 4, 4 };
        const struct { unsigned n; const unsigned *cpus; } cases[] = { { 1, one }, { 2, two }, { 2, uneven },
                                                                       { 4, four }, { 8, eight } };
        const unsigned threads[] = { 1, 2, 3, 8, 32, 64 };
        for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
                NumaTopology t = topo(cases[c].n, cases[c].cpus);
                for (size_t k = 0; k < sizeof(threads) / sizeof(threads[0]); k++)
                        check_plan(m, &t, threads[k]);
        }
        free_fake(m);
}

static void test_two_equal_nodes_split_evenly(void **state) {
        (void)state;
        Model *m = fake_model(2, 8, 512, 256);
        const unsigned two[] = { 4, 4 };
        NumaTopology t = topo(2, two);
        NumaPlan p;
        assert_int_equal(numa_plan(m, &t, 8, &p), 0);
        assert_int_equal(p.node_threads[0], 4);
        assert_int_equal(p.node_threads[1], 4);
        unsigned on0 = 0;
        for (unsigned i = 0; i < 16; i++)
                on0 += p.expert_node[i] == 0;
        assert_int_equal(on0, 8);
        numa_plan_free(&p);
        free_fake(m);
}

static void test_bad_input(void **state) {
        (void)state;
        Model *m = fake_model(1, 8, 512, 256);
        NumaTopology empty = { 0 };
        NumaPlan p;
        assert_int_equal(numa_plan(m, &empty, 2, &p), -EINVAL);
        const unsigned one[] = { 2 };
        NumaTopology t = topo(1, one);
        assert_int_equal(numa_plan(m, &t, 0, &p), -EINVAL);
        free_fake(m);
}

static void test_this_machine(void **state) {
        (void)state;
        NumaTopology t;
        int r = numa_topology_detect(&t);
        if (r == -ENOSYS) {
                print_message("no NUMA support here: nothing to detect\n");
                return;
        }
        assert_int_equal(r, 0);
        assert_true(t.n_nodes >= 1);
        Model *m = fake_model(4, 8, 512, 256);
        check_plan(m, &t, 2);
        free_fake(m);
}

/* Logits of a PROMPT_TOKENS-token prefill (every position) then two decode steps, on fw.
 * The prompt is long enough that each expert's rows are enough work for the pool. */
#define PROMPT_TOKENS 48
static void run_prompt(Forward *fw, KVCache *kv, uint32_t V, float *logits) {
        int32_t prompt[PROMPT_TOKENS];
        const uint32_t n = PROMPT_TOKENS;
        for (uint32_t i = 0; i < n; i++)
                prompt[i] = i == 0 ? 1 : (int32_t)(300 + (i * 7919) % 20000);
        kv_cache_reset(kv);
        assert_int_equal(forward_chunk(fw, kv, prompt, n, FORWARD_LOGITS_ALL, logits), 0);
        for (uint32_t i = 0; i < 2; i++)
                assert_int_equal(forward_chunk(fw, kv, &prompt[i], 1, FORWARD_LOGITS_LAST, logits + (n + i) * V), 0);
}

static void test_forward_by_node_matches(void **state) {
        (void)state;
        char path[4096];
        ModelError err;
        Model *m = NULL;
        if (!fixture_path("tiny-moe-shakespeare/tiny-moe-q4_k_m.gguf", path, sizeof(path)))
                return;
        assert_int_equal(model_load(path, &err, &m), 0);
        const uint32_t V = m->cfg.n_vocab, n_logits = PROMPT_TOKENS + 2;
        Pool *pool = NULL;
        assert_int_equal(pool_new(2, &pool), 0);
        KVCache *kv = NULL;
        assert_int_equal(kv_cache_new(m->cfg.n_layer, m->cfg.n_head_kv, m->cfg.head_dim, KV_TYPE_DEFAULT, 0, 64, &kv), 0);
        Forward *fw = NULL;
        assert_int_equal(forward_new(m, PROMPT_TOKENS, 64, pool, &fw), 0);
        const unsigned cpus[] = { 1, 1 };
        NumaTopology t = topo(2, cpus);
        NumaPlan plan;
        assert_int_equal(numa_plan(m, &t, 2, &plan), 0);
        assert_int_equal(plan.n_nodes, 2);
        float *plain = calloc((size_t)n_logits * V, sizeof(float)), *by_node = calloc((size_t)n_logits * V, sizeof(float));
        assert_non_null(plain);
        assert_non_null(by_node);
        for (int int8 = 0; int8 <= 1; int8++) {
                forward_set_int8(fw, int8);
                forward_set_numa(fw, NULL);
                run_prompt(fw, kv, V, plain);
                forward_set_numa(fw, &plan);
                run_prompt(fw, kv, V, by_node);
                assert_memory_equal(plain, by_node, (size_t)n_logits * V * sizeof(float));
        }
        free(plain);
        free(by_node);
        numa_plan_free(&plan);
        forward_free(fw);
        kv_cache_free(kv);
        pool_free(pool);
        model_free(m);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_synthetic_topologies),
                cmocka_unit_test(test_two_equal_nodes_split_evenly),
                cmocka_unit_test(test_bad_input),
                cmocka_unit_test(test_this_machine),
                cmocka_unit_test(test_forward_by_node_matches),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
