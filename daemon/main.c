/* daemon/main.c — mixd's entry point: settings (config file, then flags), then the server.
 * Main thread. */
#include <errno.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cluster_main.h"
#include "config.h"
#include "log.h"
#include "server.h"

#define DEFAULT_CONFIG "/etc/mixd/mixd.conf"

int main(int argc, char **argv) {
        Config cfg;
        char err[512] = "";
        const char *config_path = NULL;
        int r;

        /* Session buffers (KV caches, logits) are large and come and go with clients: keep them
         * in their own mappings so freeing one returns its memory. glibc otherwise raises the
         * threshold after the first large free and RSS drifts with heap fragmentation. */
        mallopt(M_MMAP_THRESHOLD, 64 * 1024);
        config_defaults(&cfg);
        for (int i = 1; i < argc; i++) {
                if (!strcmp(argv[i], "--config") && i + 1 < argc)
                        config_path = argv[++i];
                else if (!strncmp(argv[i], "--config=", 9))
                        config_path = argv[i] + 9;
        }
        const char *file = config_path ? config_path : DEFAULT_CONFIG;
        r = config_load_file(&cfg, file, err, sizeof(err));
        if (r < 0 && !(r == -ENOENT && !config_path)) {
                if (err[0])
                        log_error("%s", err);
                else
                        log_error("cannot read %s: %s", file, strerror(-r));
                config_free(&cfg);
                return 2;
        }
        r = config_parse_args(&cfg, argc, argv, err, sizeof(err));
        if (r != 0) {
                if (r < 0)
                        fprintf(stderr, "mixd: %s\n", err);
                config_free(&cfg);
                return r < 0 ? 2 : 0;
        }
        if (!cfg.model) {
                fprintf(stderr, "mixd: no model given (--model FILE, or 'model = FILE' in %s)\n", file);
                config_free(&cfg);
                return 2;
        }
        if (getenv("MIXD_DEBUG"))
                log_set_max_priority(LOG_DEBUG);
        if (cfg.cluster) {
                r = cluster_main(&cfg, file, argc, argv);
                config_free(&cfg);
                return r == -ENOTSUP ? 2 : r < 0 ? 1 : 0;
        }
        if (cluster_launcher_ranks() > 1) {
                /* N copies of the daemon would fight over one socket */
                fprintf(stderr, "mixd: started by mpirun with %u ranks but without --cluster\n", cluster_launcher_ranks());
                config_free(&cfg);
                return 2;
        }
        r = server_run(&cfg, file, argc, argv);
        config_free(&cfg);
        return r < 0 ? 1 : 0;
}
