/* client/options.c — sampling options shared by generate and chat, in-process and remote.
 * Main thread only. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "engine_limits.h"
#include "model.h"

/* Say which option got a bad value and what it takes (wanted: a format for one long long). */
static int bad_value(const char *option, const char *arg, const char *wanted, long long n, int *ret_exit) {
        char what[128];
        snprintf(what, sizeof(what), wanted, n);
        cli_error("%s: '%s' is not %s", option, arg, what);
        *ret_exit = EXIT_USAGE;
        return 1;
}

int sampling_opt_parse(int c, const char *arg, GenerateOpts *g, int *ret_exit) {
        int64_t v;
        switch (c) {
        case 'n':
                if (cli_parse_i64(arg, -1, INT32_MAX, &g->n_predict) < 0)
                        return bad_value("-n/--n-predict", arg, "an integer in -1..%lld (-1: until the end of text)",
                                         (long long)INT32_MAX, ret_exit);
                return 1;
        case OPT_TEMP:
                if (cli_parse_float(arg, 0.0, 100.0, &g->sp.temperature) < 0)
                        return bad_value("--temp", arg, "a number in 0..%lld (0: greedy)", 100, ret_exit);
                return 1;
        case OPT_TOP_K:
                if (cli_parse_i64(arg, 0, MODEL_MAX_VOCAB, &v) < 0)
                        return bad_value("--top-k", arg, "an integer in 0..%lld (0: off)", (long long)MODEL_MAX_VOCAB,
                                         ret_exit);
                g->sp.top_k = (int32_t)v;
                return 1;
        case OPT_TOP_P:
                if (cli_parse_float(arg, 1e-6, 1.0, &g->sp.top_p) < 0)
                        return bad_value("--top-p", arg, "a number above 0, at most 1 (1: off)", 0, ret_exit);
                return 1;
        case OPT_MIN_P:
                if (cli_parse_float(arg, 0.0, 1.0, &g->sp.min_p) < 0)
                        return bad_value("--min-p", arg, "a number in 0..1 (0: off)", 0, ret_exit);
                return 1;
        case OPT_REPEAT_PENALTY:
                if (cli_parse_float(arg, 1e-3, 100.0, &g->sp.repeat_penalty) < 0)
                        return bad_value("--repeat-penalty", arg, "a number in 0.001..100 (1: off)", 0, ret_exit);
                return 1;
        case OPT_REPEAT_LAST_N:
                if (cli_parse_i64(arg, 0, SAMPLE_MAX_REPEAT_LAST, &v) < 0)
                        return bad_value("--repeat-last-n", arg, "an integer in 0..%lld", (long long)SAMPLE_MAX_REPEAT_LAST,
                                         ret_exit);
                g->sp.repeat_last_n = (int32_t)v;
                return 1;
        case OPT_SEED:
                if (cli_parse_u64(arg, &g->sp.seed) < 0)
                        return bad_value("--seed", arg, "an integer in 0..18446744073709551615", 0, ret_exit);
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
}

void sampling_opt_finish(GenerateOpts *g) {
        if (!g->seed_given && getrandom(&g->sp.seed, sizeof(g->sp.seed), 0) != sizeof(g->sp.seed))
                g->sp.seed = (uint64_t)time(NULL) ^ (uint64_t)getpid();
}
