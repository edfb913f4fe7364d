/* engine/numa.c — topology detection (libnuma), the placement planner and mbind (see numa.h). */
#include "numa.h"

#include <errno.h>
#include <numa.h>
#include <numaif.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int numa_topology_detect(NumaTopology *ret) {
        memset(ret, 0, sizeof(*ret));
        if (numa_available() < 0)
                return -ENOSYS;
        int max = numa_max_node();
        struct bitmask *bm = numa_allocate_cpumask();
        if (!bm)
                return -ENOMEM;
        for (int node = 0; node <= max && ret->n_nodes < NUMA_MAX_NODES; node++) {
                long long size = numa_node_size64(node, NULL);
                if (size <= 0 || numa_node_to_cpus(node, bm) < 0)
                        continue;
                const unsigned n = ret->n_nodes;
                for (unsigned cpu = 0; cpu < bm->size && cpu < NUMA_MAX_CPUS; cpu++)
                        if (numa_bitmask_isbitset(bm, cpu)) {
                                if (ret->n_cpus[n] < 64)
                                        ret->cpus[n][ret->n_cpus[n]] = (uint16_t)cpu;
                                ret->n_cpus[n]++;
                        }
                if (ret->n_cpus[n] == 0)
                        continue; /* memory-only node */
                ret->mem_bytes[n] = (uint64_t)size;
                ret->n_nodes++;
        }
        numa_free_cpumask(bm);
        return ret->n_nodes ? 0 : -ENOSYS;
}

static uint64_t expert_bytes(const LayerWeights *L, uint32_t e) {
        return L->gate[e].rows * L->gate[e].row_bytes + L->up[e].rows * L->up[e].row_bytes +
               L->down[e].rows * L->down[e].row_bytes;
}

int numa_plan(const Model *m, const NumaTopology *t, unsigned n_threads, NumaPlan *ret) {
        const ModelConfig *c = &m->cfg;
        const uint32_t E = c->n_expert ? c->n_expert : 1;
        unsigned total_cpus = 0;
        memset(ret, 0, sizeof(*ret));
        if (t->n_nodes == 0 || t->n_nodes > NUMA_MAX_NODES || n_threads == 0)
                return -EINVAL;
        for (unsigned n = 0; n < t->n_nodes; n++)
                total_cpus += t->n_cpus[n];
        if (total_cpus == 0)
                return -EINVAL;
        ret->n_nodes = t->n_nodes;
        ret->n_layer = c->n_layer;
        ret->n_expert = E;
        ret->n_threads = n_threads;
        ret->expert_node = calloc((size_t)c->n_layer * E, 1);
        ret->thread_node = calloc(n_threads, 1);
        ret->thread_cpu = calloc(n_threads, sizeof(uint16_t));
        if (!ret->expert_node || !ret->thread_node || !ret->thread_cpu) {
                numa_plan_free(ret);
                return -ENOMEM;
        }

        /* experts: greedy, each to the node furthest below its CPU share of the bytes so far */
        uint64_t placed = 0;
        for (uint32_t l = 0; l < c->n_layer; l++)
                for (uint32_t e = 0; e < E; e++) {
                        const uint64_t b = expert_bytes(&m->layers[l], e);
                        unsigned best = 0;
                        double best_deficit = -1e300;
                        for (unsigned n = 0; n < t->n_nodes; n++) {
                                const double want = (double)(placed + b) * t->n_cpus[n] / total_cpus;
                                const double deficit = want - (double)ret->node_bytes[n];
                                if (deficit > best_deficit) {
                                        best_deficit = deficit;
                                        best = n;
                                }
                        }
                        ret->expert_node[(size_t)l * E + e] = (uint8_t)best;
                        ret->node_bytes[best] += b;
                        placed += b;
                }

        /* threads: proportional to CPUs, at least one per node (when there are enough) */
        unsigned given = 0;
        for (unsigned n = 0; n < t->n_nodes; n++) {
                ret->node_threads[n] = (unsigned)((uint64_t)n_threads * t->n_cpus[n] / total_cpus);
                if (ret->node_threads[n] == 0 && n_threads >= t->n_nodes)
                        ret->node_threads[n] = 1;
                given += ret->node_threads[n];
        }
        for (unsigned n = 0; given < n_threads; n = (n + 1) % t->n_nodes, given++)
                ret->node_threads[n]++;
        for (unsigned n = t->n_nodes; given > n_threads && n-- > 0;)
                while (given > n_threads && ret->node_threads[n] > 1) {
                        ret->node_threads[n]--;
                        given--;
                }
        unsigned k = 0;
        for (unsigned n = 0; n < t->n_nodes; n++)
                for (unsigned i = 0; i < ret->node_threads[n] && k < n_threads; i++, k++) {
                        ret->thread_node[k] = (uint8_t)n;
                        const unsigned ncpu = t->n_cpus[n] < 64 ? t->n_cpus[n] : 64;
                        ret->thread_cpu[k] = t->cpus[n][i % ncpu];
                }
        return 0;
}

void numa_plan_free(NumaPlan *p) {
        free(p->expert_node);
        free(p->thread_node);
        free(p->thread_cpu);
        p->expert_node = p->thread_node = NULL;
        p->thread_cpu = NULL;
}

/* mbind a byte range, widened to whole pages. */
static int bind_range(const void *start, uint64_t len, unsigned node) {
        const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
        uintptr_t a = (uintptr_t)start & ~(page - 1), b = ((uintptr_t)start + len + page - 1) & ~(page - 1);
        unsigned long mask[NUMA_MAX_NODES / (8 * sizeof(unsigned long)) + 1] = { 0 };
        mask[node / (8 * sizeof(unsigned long))] |= 1ul << (node % (8 * sizeof(unsigned long)));
        if (mbind((void *)a, b - a, MPOL_BIND, mask, NUMA_MAX_NODES + 1, MPOL_MF_MOVE) < 0)
                return -errno;
        return 0;
}

int numa_apply(const Model *m, NumaPlan *p) {
        if (p->n_nodes <= 1 || m->cfg.n_expert == 0)
                return 0; /* nothing to place */
        for (uint32_t l = 0; l < p->n_layer; l++)
                for (uint32_t e = 0; e < p->n_expert; e++) {
                        const LayerWeights *L = &m->layers[l];
                        const unsigned node = p->expert_node[(size_t)l * p->n_expert + e];
                        const Matrix *mats[3] = { &L->gate[e], &L->up[e], &L->down[e] };
                        for (int i = 0; i < 3; i++) {
                                const uint64_t len = mats[i]->rows * mats[i]->row_bytes;
                                int r = bind_range(mats[i]->data, len, node);
                                if (r < 0)
                                        return r;
                                p->bytes_moved += len;
                        }
                }
        return 0;
}
