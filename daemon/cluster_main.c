/* daemon/cluster_main.c — mixd --cluster: wires the cluster transport (cluster/) to the
 * daemon on rank 0 and to a serving loop on the other ranks. Main thread; the front's
 * executor then runs on the engine thread. */
#include "cluster_main.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

unsigned cluster_launcher_ranks(void) {
        const char *v = getenv("OMPI_COMM_WORLD_SIZE");
        if (!v || !*v)
                v = getenv("PMI_SIZE");
        if (!v || !*v)
                return 0;
        char *end;
        const unsigned long n = strtoul(v, &end, 10);
        return *end || n > 1u << 20 ? 0 : (unsigned)n;
}

#ifndef MIXD_CLUSTER

int cluster_main(Config *cfg, const char *config_path, int argc, char **argv) {
        (void)cfg, (void)config_path, (void)argc, (void)argv;
        fprintf(stderr, "mixd: cluster = 1: this mixd was built without Open MPI (install libopenmpi-dev, "
                        "then make MPI=1)\n");
        return -ENOTSUP;
}

#else

#include <inttypes.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

#include "cluster.h"
#include "daemon_limits.h"
#include "forward.h"
#include "log.h"
#include "model.h"
#include "pool.h"
#include "server.h"

static void log_plan(const Cluster *c, const Model *m) {
        const uint32_t units = m->cfg.n_expert ? m->cfg.n_expert : 1;
        for (unsigned r = 0; r < cluster_size(c); r++)
                log_info("cluster: rank %u holds %u of %u experts, %.1f MiB", r, cluster_rank_experts(c, r),
                         units * m->cfg.n_layer, (double)cluster_rank_bytes(c, r) / (1 << 20));
}

/* One line per rank at its end: how much of the model file this rank had resident, against
 * its experts' bytes (the test of "a rank reads only its own experts" reads it). */
static void log_resident(const Cluster *c, const Model *m) {
        const unsigned rank = cluster_rank(c);
        const int64_t rss = cluster_resident_bytes(m->file->base, m->file->size);
        if (rss >= 0)
                log_info("rank %u: model pages resident: %" PRId64 " KiB of %zu KiB (its experts: %" PRIu64 " KiB)", rank,
                         rss >> 10, m->file->size >> 10, cluster_rank_bytes(c, rank) >> 10);
}

/* The front's executor: the cluster's, and when a rank fails, the daemon stops (the same
 * graceful stop as SIGTERM: requests in flight end with an error, named sessions are saved)
 * and exits non-zero, so that the service manager restarts the whole job. Engine thread. */
typedef struct FrontExec {
        Cluster *c;
        ExpertExec inner;
        bool stopping;
} FrontExec;

static int front_run(void *ctx, const ExpertWork *w) {
        FrontExec *f = ctx;
        const int r = f->inner.run(f->inner.ctx, w);
        if (r < 0 && cluster_broken(f->c) && !f->stopping) {
                f->stopping = true;
                log_error("cluster: rank %d failed (%s): stopping, the job will exit with an error",
                          cluster_failed_rank(f->c), strerror(-r));
                kill(getpid(), SIGTERM); /* the loop thread's signal handler begins the stop */
        }
        return r;
}

static FrontExec front_exec;

/* The front: the experts are placed when the engine starts, and its Forward gets the
 * cluster's executor (with the Forward's own local one for the front's share). */
static int front_setup(void *ctx, const Model *m, Forward *fw) {
        Cluster *c = ctx;
        const int r = cluster_plan(c, m);
        if (r < 0) {
                log_error("cluster: %s", r == -EMEDIUMTYPE ? "the ranks did not load the same model file"
                                                            : strerror(-r));
                return r;
        }
        log_plan(c, m);
        front_exec = (FrontExec){ .c = c, .inner = cluster_front_exec(c, forward_experts_local(fw)) };
        forward_set_experts(fw, &(ExpertExec){ front_run, &front_exec });
        return 0;
}

/* A worker: the model mapped (only its experts' pages are ever read), the plan, then
 * requests until the front says stop. */
static int worker_run(Cluster *c, const Config *cfg) {
        const unsigned rank = cluster_rank(c);
        ModelError merr = { "" };
        Model *m = NULL;
        Pool *pool = NULL;
        Forward *fw = NULL;
        int r = model_load(cfg->model, &merr, &m);
        if (r < 0) {
                log_error("rank %u: cannot load model %s: %s", rank, cfg->model, merr.msg[0] ? merr.msg : strerror(-r));
                return r;
        }
        r = cluster_plan(c, m);
        if (r < 0) {
                log_error("rank %u: %s", rank, r == -EMEDIUMTYPE ? "the ranks did not load the same model file" : strerror(-r));
                goto out;
        }
        r = pool_new((unsigned)cfg->threads, &pool);
        if (r >= 0)
                r = forward_new(m, DAEMON_BATCH_ROWS, 1, pool, &fw);
        if (r < 0) {
                log_error("rank %u: cannot start the engine with %llu threads: %s", rank,
                          (unsigned long long)cfg->threads, strerror(-r));
                goto out;
        }
        log_info("rank %u: serving %u experts (%.1f MiB) with %u thread(s)", rank, cluster_rank_experts(c, rank),
                 (double)cluster_rank_bytes(c, rank) / (1 << 20), pool_size(pool));
        r = cluster_serve(c, forward_experts_local(fw));
        if (r < 0)
                log_error("rank %u: lost the front: %s", rank, strerror(-r));
        else
                log_resident(c, m);
out:
        forward_free(fw);
        pool_free(pool);
        model_free(m);
        return r;
}

int cluster_main(Config *cfg, const char *config_path, int argc, char **argv) {
        Cluster *c;
        int r = cluster_init(&c);
        if (r < 0) {
                log_error("cluster: cannot start MPI: %s", r == -EPROTO ? "no support for calls from several threads"
                                                                         : strerror(-r));
                return r;
        }
        if (cluster_rank(c) > 0) {
                /* the front stops the workers; a signal from the launcher must not end one first */
                signal(SIGTERM, SIG_IGN);
                signal(SIGINT, SIG_IGN);
                signal(SIGHUP, SIG_IGN);
                r = worker_run(c, cfg);
                cluster_free(c, r == 0);
                return r;
        }
        log_info("cluster: front of %u rank(s)", cluster_size(c));
        server_set_cluster(&(SchedSetup){ front_setup, c }, c);
        r = server_run(cfg, config_path, argc, argv);
        if (r == 0 && cluster_broken(c)) {
                log_error("cluster: a rank failed; exiting with an error");
                r = -EIO;
        }
        cluster_free(c, r == 0);
        return r;
}

#endif
