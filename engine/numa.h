/* engine/numa.h — NUMA placement: which node holds each expert's weights and which CPUs run
 * it. The planner is a pure function of a topology (tested on synthetic ones); applying a
 * plan moves the mapped expert pages (mbind) and tells the forward pass which threads may
 * run each expert. Plan at load, on one thread; read-only afterwards. */
#pragma once
#include <stdint.h>

#include "model.h"

#define NUMA_MAX_NODES 64
#define NUMA_MAX_CPUS 1024

typedef struct NumaTopology {
        unsigned n_nodes;
        unsigned n_cpus[NUMA_MAX_NODES];          /* CPUs of each node */
        uint16_t cpus[NUMA_MAX_NODES][64];        /* the first 64 CPU ids of each node */
        uint64_t mem_bytes[NUMA_MAX_NODES];       /* memory of each node */
} NumaTopology;

typedef struct NumaPlan {
        unsigned n_nodes;                         /* 1: nothing to place */
        uint32_t n_layer, n_expert;
        uint8_t *expert_node;                     /* [n_layer][n_expert] */
        uint64_t node_bytes[NUMA_MAX_NODES];      /* expert bytes placed on each node */
        unsigned node_threads[NUMA_MAX_NODES];    /* compute threads pinned to each node */
        uint8_t *thread_node;                     /* [n_threads] node of each pool thread */
        uint16_t *thread_cpu;                     /* [n_threads] CPU each pool thread is pinned to */
        unsigned n_threads;
        uint64_t bytes_moved;                     /* set by numa_apply */
} NumaPlan;

/* The machine's topology (libnuma); -ENOSYS when the kernel has no NUMA support. */
int numa_topology_detect(NumaTopology *ret);
/* Place each (layer, expert) on a node so that expert bytes per node follow the node's share
 * of CPUs, and spread n_threads over the nodes the same way (at least one per node that
 * holds experts). Deterministic. */
int numa_plan(const Model *m, const NumaTopology *t, unsigned n_threads, NumaPlan *ret);
void numa_plan_free(NumaPlan *p);
/* Bind each expert's pages to its node (moving what is already resident). */
int numa_apply(const Model *m, NumaPlan *p);
