/* client/options.c — sampling options shared by generate and chat, in-process and remote.
 * Main thread only. */
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "engine_limits.h"
#include "model.h"

int sampling_opt_parse(int c, const char *arg, GenerateOpts *g, int *ret_exit) {
        int64_t v;
        switch (c) {
        case 'n':
                if (cli_parse_i64(arg, -1, INT32_MAX, &g->n_predict) < 0)
                        goto bad;
                return 1;
        case OPT_TEMP:
                if (cli_parse_float(arg, 0.0, 100.0, &g->sp.temperature) < 0)
                        goto bad;
                return 1;
        case OPT_TOP_K:
                if (cli_parse_i64(arg, 0, MODEL_MAX_VOCAB, &v) < 0)
                        goto bad;
                g->sp.top_k = (int32_t)v;
                return 1;
        case OPT_TOP_P:
                if (cli_parse_float(arg, 1e-6, 1.0, &g->sp.top_p) < 0)
                        goto bad;
                return 1;
        case OPT_MIN_P:
                if (cli_parse_float(arg, 0.0, 1.0, &g->sp.min_p) < 0)
                        goto bad;
                return 1;
        case OPT_REPEAT_PENALTY:
                if (cli_parse_float(arg, 1e-3, 100.0, &g->sp.repeat_penalty) < 0)
                        goto bad;
                return 1;
        case OPT_REPEAT_LAST_N:
                if (cli_parse_i64(arg, 0, SAMPLE_MAX_REPEAT_LAST, &v) < 0)
                        goto bad;
                g->sp.repeat_last_n = (int32_t)v;
                return 1;
        case OPT_SEED:
                if (cli_parse_u64(arg, &g->sp.seed) < 0)
                        goto bad;
                g->seed_given = 1;
                return 1;
        case OPT_STOP:
                if (g->n_stops >= SAMPLE_MAX_STOPS) {
                        cli_error("at most %d --stop strings", SAMPLE_MAX_STOPS);
                        *ret_exit = EXIT_USAGE;
                        return 1;
                }
                if (!*arg || strlen(arg) > SAMPLE_MAX_STOP_LEN) {
                        cli_error("--stop strings must be 1..%d bytes", SAMPLE_MAX_STOP_LEN);
                        *ret_exit = EXIT_USAGE;
                        return 1;
                }
                g->stops[g->n_stops++] = arg;
                return 1;
        }
        return 0;
bad:
        cli_error("invalid value '%s' for an option (see 'mixctl generate --help')", arg);
        *ret_exit = EXIT_USAGE;
        return 1;
}

void sampling_opt_finish(GenerateOpts *g) {
        if (!g->seed_given && getrandom(&g->sp.seed, sizeof(g->sp.seed), 0) != sizeof(g->sp.seed))
                g->sp.seed = (uint64_t)time(NULL) ^ (uint64_t)getpid();
}
