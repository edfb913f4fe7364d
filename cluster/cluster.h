/* cluster/cluster.h — expert parallelism over Open MPI: one job of N ranks serves one model.
 * Rank 0 (the front) runs the daemon and the forward pass; the experts are placed on the
 * ranks (the front included) by a plan balanced by bytes, and each layer's routed rows go to
 * their experts' owners, one message per rank per layer, through an ExpertExec
 * (engine/experts.h). Every rank computes with the engine's own kernels on the inputs the
 * front quantized, and the front sums the outputs in the forward pass's fixed order, so the
 * logits are the same bits as in one process. cluster_init/cluster_free: the main thread;
 * the executor: the front's engine thread; cluster_serve: a worker's main thread (the MPI
 * library is used by one thread at a time). No MPI type appears in this header. */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "experts.h"
#include "model.h"

typedef struct Cluster Cluster;

/* Starts MPI (every rank, before any other thread exists). -EPROTO when the library cannot
 * give the thread support needed (one thread at a time, not the main one). */
int cluster_init(Cluster **ret_c);
unsigned cluster_rank(const Cluster *c);
unsigned cluster_size(const Cluster *c);

/* Collective (every rank, after loading the model): checks that all ranks loaded the same
 * model (-EMEDIUMTYPE if not), then places each layer's experts (a dense model's feed-forward
 * is one expert) on the ranks: in (layer, expert) order, each goes to the rank with the
 * fewest expert bytes so far (lowest rank on ties), so every rank computes the same plan.
 * The other ranks' expert bytes are marked not to be read ahead (MADV_RANDOM) nor
 * mapped with 2 MiB pages (MADV_NOHUGEPAGE), and a worker unmaps what loading the model
 * mapped, so that only its experts' pages become resident in it. */
int cluster_plan(Cluster *c, const Model *m);
/* Which rank runs expert e of layer il (after cluster_plan). */
unsigned cluster_owner(const Cluster *c, uint32_t il, uint32_t e);
/* Expert bytes (gate, up, down) placed on rank r, and how many experts. */
uint64_t cluster_rank_bytes(const Cluster *c, unsigned r);
uint32_t cluster_rank_experts(const Cluster *c, unsigned r);

/* The front's executor: each layer's rows for other ranks' experts are sent to them (one
 * message per rank), the front's own run on `local` meanwhile, and the replies are put in
 * place. A failed or late (CLUSTER_REPLY_TIMEOUT_S) reply fails that step with -EIO or
 * -ETIMEDOUT, and every later one with -EIO: the cluster is then broken (cluster_broken). */
ExpertExec cluster_front_exec(Cluster *c, ExpertExec local);
bool cluster_broken(const Cluster *c);
/* Which rank broke it (did not answer in time, or answered an error), -1 when unknown. */
int cluster_failed_rank(const Cluster *c);
/* What the front knows of rank r (for status). Counters only grow; rank 0's are its own
 * share, run on its local executor, and its resident_bytes is 0 (the front measures its
 * own: cluster_resident_bytes). The front's engine thread writes them (relaxed atomics);
 * any thread may read. */
typedef struct ClusterRankStats {
        const char *host;         /* its processor name (MPI_Get_processor_name) */
        uint32_t experts;         /* experts placed on it */
        uint64_t expert_bytes;
        uint64_t resident_bytes;  /* of the model file, as it last reported (every second at most) */
        uint64_t steps;           /* layer requests it answered */
        uint64_t rows;            /* routed rows it computed */
        uint64_t compute_us;      /* microseconds it spent computing them */
        uint64_t wait_us;         /* microseconds the front waited for its replies after its own share */
        uint64_t sent_bytes;      /* front -> rank */
        uint64_t received_bytes;  /* rank -> front */
} ClusterRankStats;
void cluster_rank_stats(const Cluster *c, unsigned r, ClusterRankStats *ret);
/* Tokens (rows of the batches) the front's forward passes ran through the cluster. */
uint64_t cluster_tokens(const Cluster *c);
/* Bytes of [base, base + len) this process has resident (the Rss of the mappings inside it,
 * /proc/self/smaps); -ENOENT without /proc. */
int64_t cluster_resident_bytes(const void *base, size_t len);

/* A worker (rank > 0): answers the front's requests with `local` until the front says stop.
 * 0, or a negative errno when a request could not be read (the job should then abort). */
int cluster_serve(Cluster *c, ExpertExec local);

/* The front tells the workers to stop (after a plan; before one, or after a failure, the
 * whole job is aborted instead, since the workers wait in the plan); then MPI ends.
 * ok = false: abort the job (MPI_Abort), which does not return. */
Cluster *cluster_free(Cluster *c, bool ok);
