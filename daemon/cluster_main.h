/* daemon/cluster_main.h — mixd --cluster: one rank of an mpirun job (docs/CLUSTER.md).
 * Main thread. */
#pragma once
#include "config.h"

/* Rank 0 runs the daemon (server_run) with its experts spread over the job's ranks; the
 * other ranks load the model and serve their experts until the front stops them. Returns
 * like server_run; a failure that leaves other ranks waiting aborts the whole job. Without
 * Open MPI in the build: -ENOTSUP, with a message. */
int cluster_main(Config *cfg, const char *config_path, int argc, char **argv);
/* Ranks of the mpirun job this process was started in (from the launcher's environment),
 * 0 when not started by mpirun. */
unsigned cluster_launcher_ranks(void);
