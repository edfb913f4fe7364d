/* client/cmd_bench.c — `mixctl bench`: in-process prefill and decode throughput of a model,
 * the way llama-bench measures pp/tg. Prefill feeds --pp random token ids through a Session
 * with a Forward of the largest allowed chunk; decode then generates --tg tokens greedily,
 * one forward call per token. A per-token prefill baseline feeds the same ids one at a time
 * (chunk 1), so the chunked speedup can be read off. Each figure is the median of up to
 * --repeat runs on a fresh session (fewer, and decode / baseline over fewer tokens, when
 * --budget says so; the JSON tells); all clocks are CLOCK_MONOTONIC. Prints one JSON object.
 * Main thread only. See docs/BENCH.md. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "forward.h"
#include "hugepage.h"
#include "engine_limits.h"
#include "model.h"
#include "ops.h"
#include "pool.h"
#include "quant_int8.h"
#include "session.h"

enum { BOPT_PP = 2000, BOPT_TG, BOPT_REPEAT, BOPT_CHUNK, BOPT_NO_PER_TOKEN, BOPT_PER_TOKEN_REPEAT,
       BOPT_SEED, BOPT_CTX, BOPT_KV_BUDGET, BOPT_BUDGET, BOPT_INT8, BOPT_EXACT, BOPT_HUGEPAGES, BOPT_KV_TYPE };

#define BENCH_MAX_REPEAT 100

typedef struct BenchOpts {
        const char *model;
        int64_t pp, tg, repeat, per_token_repeat, threads, chunk;
        int int8;                    /* 8-bit activations (forward_set_int8) */
        int hugepages;               /* 1: settle the model into 2 MiB pages first, as mixd does */
        double budget;          /* seconds for the whole measurement; 0 = no limit */
        int per_token;
        uint64_t seed;
        uint32_t capacity;
        uint64_t kv_budget;
        uint32_t kv_type;            /* KV cache storage type (kv.h) */
} BenchOpts;

static double now_s(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b) {
        const double x = *(const double *)a, y = *(const double *)b;
        return x < y ? -1 : x > y;
}

static double median(const double *v, int n) {
        double s[BENCH_MAX_REPEAT];
        memcpy(s, v, (size_t)n * sizeof(double));
        qsort(s, (size_t)n, sizeof(double), cmp_double);
        return n % 2 ? s[n / 2] : 0.5 * (s[n / 2 - 1] + s[n / 2]);
}

static int32_t argmax(const float *x, uint32_t n) {
        uint32_t best = 0;
        for (uint32_t i = 1; i < n; i++)
                if (x[i] > x[best])
                        best = i;
        return (int32_t)best;
}

/* Random token ids in [3, V) (past <unk>, <s>, </s> of a SentencePiece vocab), reproducible. */
static void random_tokens(int32_t *ids, size_t n, uint32_t n_vocab, uint64_t seed) {
        uint64_t s = seed * 0x9E3779B97F4A7C15ull + 0x632BE59BD9B4E019ull;
        const uint32_t lo = n_vocab > 3 ? 3 : 0;
        for (size_t i = 0; i < n; i++) {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ids[i] = (int32_t)(lo + (uint32_t)(s % (n_vocab - lo)));
        }
}

/* Feed ids[0..n) into a fresh session through fw; seconds taken. */
static int timed_feed(Session *s, Forward *fw, const int32_t *ids, size_t n, double *ret_s) {
        session_reset(s);
        const double t0 = now_s();
        int r = session_feed(s, fw, ids, n, NULL, NULL);
        *ret_s = now_s() - t0;
        return r;
}

/* The per-token baseline: ids fed one forward call each into a fresh session, logits only
 * for the last (as chunked prefill computes them). Stops early, after at least min_n
 * tokens, once `deadline` (0: none) has passed; *ret_n = tokens fed. */
static int timed_feed_each(Session *s, Forward *fw1, const int32_t *ids, size_t n, size_t min_n, double deadline,
                           size_t *ret_n, double *ret_s) {
        session_reset(s);
        const double t0 = now_s();
        size_t i = 0;
        for (; i < n; i++) {
                if (cli_interrupted)
                        return -EINTR;
                if (i >= min_n && deadline > 0 && now_s() > deadline)
                        break;
                const ForwardLogits mode = i + 1 == n ? FORWARD_LOGITS_LAST : FORWARD_LOGITS_NONE;
                int r = forward_chunk(fw1, s->kv, ids + i, 1, mode, s->last_logits);
                if (r < 0)
                        return r;
        }
        *ret_s = now_s() - t0;
        *ret_n = i;
        return 0;
}

/* Greedy decode of up to n tokens after whatever the session holds: each step picks the
 * argmax of the last logits and feeds it (one forward call of one token). Stops early, after
 * at least min_n tokens, once `deadline` (0: none) has passed; *ret_n = tokens decoded. */
static int timed_decode(Session *s, Forward *fw, int64_t n, int64_t min_n, double deadline, int64_t *ret_n,
                        double *ret_s) {
        const uint32_t V = s->m->cfg.n_vocab;
        const double t0 = now_s();
        int64_t i = 0;
        for (; i < n; i++) {
                if (cli_interrupted)
                        return -EINTR;
                if (i >= min_n && deadline > 0 && now_s() > deadline)
                        break;
                const int32_t tok = argmax(s->last_logits, V);
                int r = session_feed(s, fw, &tok, 1, NULL, NULL);
                if (r < 0)
                        return r;
        }
        *ret_s = now_s() - t0;
        *ret_n = i;
        return 0;
}

static void print_list(const char *key, const double *v, int n) {
        printf(",\"%s\":[", key);
        for (int i = 0; i < n; i++)
                printf("%s%.6f", i ? "," : "", v[i]);
        putchar(']');
}

static int parse_opts(int argc, char **argv, BenchOpts *o) {
        static const struct option longopts[] = {
                { "model", required_argument, NULL, 'm' },
                { "pp", required_argument, NULL, BOPT_PP },
                { "tg", required_argument, NULL, BOPT_TG },
                { "repeat", required_argument, NULL, BOPT_REPEAT },
                { "per-token-repeat", required_argument, NULL, BOPT_PER_TOKEN_REPEAT },
                { "threads", required_argument, NULL, 't' },
                { "chunk", required_argument, NULL, BOPT_CHUNK },
                { "no-per-token", no_argument, NULL, BOPT_NO_PER_TOKEN },
                { "seed", required_argument, NULL, BOPT_SEED },
                { "ctx", required_argument, NULL, BOPT_CTX },
                { "kv-budget", required_argument, NULL, BOPT_KV_BUDGET },
                { "budget", required_argument, NULL, BOPT_BUDGET },
                { "int8", no_argument, NULL, BOPT_INT8 },
                { "exact", no_argument, NULL, BOPT_EXACT },
                { "hugepages", required_argument, NULL, BOPT_HUGEPAGES },
                { "kv-type", required_argument, NULL, BOPT_KV_TYPE },
                { "help", no_argument, NULL, 'h' },
                { 0 },
        };
        int c;
        int64_t v;
        optind = 1;
        while ((c = getopt_long(argc, argv, "m:t:h", longopts, NULL)) != -1) {
                switch (c) {
                case 'm':
                        o->model = optarg;
                        break;
                case BOPT_PP:
                        if (cli_parse_i64(optarg, 1, 1 << 20, &o->pp) < 0) {
                                cli_error("--pp must be in 1..%d", 1 << 20);
                                return EXIT_USAGE;
                        }
                        break;
                case BOPT_TG:
                        if (cli_parse_i64(optarg, 0, 1 << 20, &o->tg) < 0) {
                                cli_error("--tg must be in 0..%d", 1 << 20);
                                return EXIT_USAGE;
                        }
                        break;
                case BOPT_REPEAT:
                case BOPT_PER_TOKEN_REPEAT:
                        if (cli_parse_i64(optarg, 1, BENCH_MAX_REPEAT, &v) < 0) {
                                cli_error("--%s must be in 1..%d", c == BOPT_REPEAT ? "repeat" : "per-token-repeat",
                                          BENCH_MAX_REPEAT);
                                return EXIT_USAGE;
                        }
                        *(c == BOPT_REPEAT ? &o->repeat : &o->per_token_repeat) = v;
                        break;
                case 't':
                        if (cli_parse_i64(optarg, 1, 256, &o->threads) < 0) {
                                cli_error("--threads must be an integer in 1..256");
                                return EXIT_USAGE;
                        }
                        break;
                case BOPT_CHUNK:
                        if (cli_parse_i64(optarg, 1, FORWARD_MAX_CHUNK, &o->chunk) < 0) {
                                cli_error("--chunk must be in 1..%d", FORWARD_MAX_CHUNK);
                                return EXIT_USAGE;
                        }
                        break;
                case BOPT_INT8: /* the default */
                        o->int8 = 1;
                        break;
                case BOPT_EXACT:
                        o->int8 = 0;
                        break;
                case BOPT_HUGEPAGES:
                        if (strcmp(optarg, "auto") != 0 && strcmp(optarg, "off") != 0) {
                                cli_error("--hugepages must be auto or off");
                                return EXIT_USAGE;
                        }
                        o->hugepages = strcmp(optarg, "auto") == 0;
                        break;
                case BOPT_NO_PER_TOKEN:
                        o->per_token = 0;
                        break;
                case BOPT_SEED:
                        if (cli_parse_u64(optarg, &o->seed) < 0) {
                                cli_error("--seed must be a non-negative integer");
                                return EXIT_USAGE;
                        }
                        break;
                case BOPT_CTX:
                        if (cli_parse_i64(optarg, KV_ATTENTION_SINKS + 1, MODEL_MAX_CONTEXT, &v) < 0) {
                                cli_error("--ctx must be an integer in %d..%d", KV_ATTENTION_SINKS + 1, MODEL_MAX_CONTEXT);
                                return EXIT_USAGE;
                        }
                        o->capacity = (uint32_t)v;
                        break;
                case BOPT_KV_BUDGET:
                        if (cli_parse_u64(optarg, &o->kv_budget) < 0 || o->kv_budget == 0) {
                                cli_error("--kv-budget must be a positive number of bytes");
                                return EXIT_USAGE;
                        }
                        break;
                case BOPT_KV_TYPE:
                        if (kv_type_parse(optarg, &o->kv_type) < 0) {
                                cli_error("--kv-type must be f16, q8_0 or f32");
                                return EXIT_USAGE;
                        }
                        break;
                case BOPT_BUDGET: {
                        float f;
                        if (cli_parse_float(optarg, 0, 1e6, &f) < 0) {
                                cli_error("--budget must be a number of seconds in 0..1e6");
                                return EXIT_USAGE;
                        }
                        o->budget = f;
                        break;
                }
                case 'h':
                        printf("usage: mixctl bench -m MODEL [--pp N] [--tg N] [--repeat R] [--threads N]\n"
                               "Measures in-process prefill (pp) and greedy decode (tg) tokens/s on random token\n"
                               "ids and prints one JSON object; each figure is the median of R runs.\n"
                               "  -m, --model FILE       GGUF model file (required)\n"
                               "  --pp N                 prompt tokens to prefill (default 512)\n"
                               "  --tg N                 tokens to decode after the prompt (default 128; 0 = skip)\n"
                               "  --repeat R             runs per figure, median reported (default 3)\n"
                               "  --per-token-repeat R   runs of the per-token prefill baseline (default: --repeat)\n"
                               "  --no-per-token         skip the per-token (chunk 1) prefill baseline\n"
                               "  --budget SECONDS       time limit (default 0: none): decode and the per-token\n"
                               "                         baseline stop early (JSON says how many tokens were timed)\n"
                               "                         and repeats are skipped when they would not fit\n"
                               "  --chunk N              prefill chunk (default: the largest allowed, %d)\n"
                               "  -t, --threads N        compute threads (default: online CPUs)\n"
                               "  --seed N               seed of the random prompt (default 1)\n"
                               "  --ctx N                positions the session keeps (default: the model's)\n"
                               "  --kv-budget BYTES      most bytes of KV cache (default 4 GiB)\n"
                               "  --exact                float activations everywhere (mixd's exact = 1); the\n"
                               "                         default quantizes activations to 8 bits, as mixd does\n"
                               "  --kv-type TYPE         KV cache numbers: f16 (default, as mixd), q8_0 or f32\n"
                               "  --hugepages auto|off   auto (default, as mixd): re-read a model mostly mapped\n"
                               "                         with 4 KiB pages so it maps with 2 MiB pages\n",
                               FORWARD_MAX_CHUNK);
                        return -1;
                default:
                        return EXIT_USAGE;
                }
        }
        if (optind != argc) {
                cli_error("unexpected argument '%s'", argv[optind]);
                return EXIT_USAGE;
        }
        if (!o->model) {
                cli_error("no model given (use -m MODEL.gguf)");
                return EXIT_USAGE;
        }
        return EXIT_OK;
}

/* Shares of --budget: decode and the per-token baseline each stop after this fraction of it
 * (the chunked prefill, one forward call per chunk, always runs whole). */
#define BENCH_TG_SHARE 0.35
#define BENCH_PT_SHARE 0.35
#define BENCH_MIN_TOKENS 8     /* timed at least, whatever the budget */

int cmd_bench(int argc, char **argv) {
        BenchOpts o = { .pp = 512, .tg = 128, .repeat = 3, .per_token_repeat = 0, .threads = 0,
                        .chunk = FORWARD_MAX_CHUNK, .per_token = 1, .seed = 1, .kv_budget = KV_DEFAULT_BUDGET,
                        .hugepages = 1, .int8 = 1, .kv_type = KV_TYPE_DEFAULT };
        int ex = parse_opts(argc, argv, &o);
        if (ex)
                return ex < 0 ? EXIT_OK : ex;
        if (!o.per_token_repeat)
                o.per_token_repeat = o.repeat;

        Model *m = NULL;
        Session *s = NULL;
        Forward *fw = NULL, *fw1 = NULL;
        Pool *pool = NULL;
        int32_t *ids = NULL;
        double pp_s[BENCH_MAX_REPEAT], tg_s[BENCH_MAX_REPEAT], pt_s[BENCH_MAX_REPEAT];
        int n_pp = 0, n_pt = 0;
        int64_t tg_n = 0;     /* decode tokens timed per run (the first run sets it) */
        size_t pt_n = 0;      /* per-token baseline tokens timed per run */
        ModelError err = { "" };
        int r;

        double t0 = now_s();
        r = model_load(o.model, &err, &m);
        const double load_s = now_s() - t0;
        if (r < 0) {
                cli_error("cannot load model %s: %s", o.model, err.msg[0] ? err.msg : strerror(-r));
                return EXIT_RUNTIME;
        }
        HugepageReport huge = { .file_bytes = m->file->size };
        if (o.hugepages) {
                r = hugepage_settle(o.model, m->file->base, m->file->size, &huge);
                if (r < 0)
                        fprintf(stderr, "bench: cannot measure the model's 2 MiB pages: %s\n", strerror(-r));
                else
                        fprintf(stderr, "bench: %.0f%% of the model mapped with 2 MiB pages%s\n",
                                huge.file_bytes ? 100.0 * (double)huge.huge_after / (double)huge.file_bytes : 0.0,
                                huge.refaulted ? " (after re-reading it)" : "");
        }
        const ModelConfig *c = &m->cfg;
        if (!o.threads) {
                const long cpus = sysconf(_SC_NPROCESSORS_ONLN);
                o.threads = cpus > 0 ? cpus : 1;
        }
        r = session_new(m, o.capacity, o.kv_budget, o.kv_type, &s);
        if (r == 0)
                r = pool_new((unsigned)o.threads, &pool);
        if (r == 0)
                r = forward_new(m, (uint32_t)o.chunk, s->kv->n_slots, pool, &fw);
        if (r == 0 && o.per_token)
                r = forward_new(m, 1, s->kv->n_slots, pool, &fw1);
        if (r < 0) {
                cli_error("cannot create a session: %s",
                          r == -E2BIG    ? "KV budget too small for this model"
                          : r == -EINVAL ? "this KV type does not fit the model's head size"
                                         : strerror(-r));
                ex = EXIT_RUNTIME;
                goto out;
        }
        forward_set_int8(fw, o.int8);
        if (fw1)
                forward_set_int8(fw1, o.int8);
        if ((uint64_t)o.pp + (uint64_t)o.tg > s->kv->n_slots)
                fprintf(stderr, "mixctl: note: %lld + %lld positions exceed the %u-slot cache, which rolls\n",
                        (long long)o.pp, (long long)o.tg, s->kv->n_slots);
        const unsigned threads = pool_size(pool);

        ids = malloc((size_t)o.pp * sizeof(int32_t));
        if (!ids) {
                ex = EXIT_RUNTIME;
                goto out;
        }
        random_tokens(ids, (size_t)o.pp, c->n_vocab, o.seed);

        /* warm-up: a few tokens, so page faults of the mapped weights and first-touch of the
         * scratch are not charged to the first timed run */
        double warm_s = 0;
        r = timed_feed(s, fw, ids, o.pp < 8 ? (size_t)o.pp : 8, &warm_s);

        const double start = now_s(), deadline = o.budget > 0 ? start + o.budget : 0;
        double run_s = 0, pt_run_s = 0;   /* duration of the first pp+tg run, of the first baseline run */
        /* One run of pp+tg, one of the baseline, then more of each, alternating, while they
         * fit the budget. The first run of each sets how many tokens later runs time. */
        for (int round = 0; r == 0; round++) {
                int ran = 0;
                if (cli_interrupted) {
                        ex = EXIT_INTERRUPTED;
                        goto out;
                }
                if (n_pp < o.repeat && (round == 0 || deadline == 0 || now_s() + run_s <= deadline)) {
                        const double r0 = now_s();
                        fprintf(stderr, "bench: prefill %lld tokens (chunk %u), run %d/%lld\n", (long long)o.pp,
                                forward_max_chunk(fw, s->kv), n_pp + 1, (long long)o.repeat);
                        r = timed_feed(s, fw, ids, (size_t)o.pp, &pp_s[n_pp]);
                        if (r == 0 && o.tg > 0) {
                                const int64_t limit = round == 0 ? o.tg : tg_n;
                                const double tg_deadline = round == 0 && deadline > 0 ? now_s() + o.budget * BENCH_TG_SHARE : 0;
                                int64_t done = 0;
                                fprintf(stderr, "bench: decode %lld tokens, run %d/%lld\n", (long long)limit, n_pp + 1,
                                        (long long)o.repeat);
                                r = timed_decode(s, fw, limit, BENCH_MIN_TOKENS, tg_deadline, &done, &tg_s[n_pp]);
                                if (round == 0)
                                        tg_n = done;
                        }
                        if (round == 0)
                                run_s = now_s() - r0;
                        n_pp++;
                        ran = 1;
                }
                if (r == 0 && o.per_token && n_pt < o.per_token_repeat &&
                    (round == 0 || deadline == 0 || now_s() + pt_run_s <= deadline)) {
                        const size_t limit = round == 0 ? (size_t)o.pp : pt_n;
                        const double pt_deadline = round == 0 && deadline > 0 ? now_s() + o.budget * BENCH_PT_SHARE : 0;
                        const double r0 = now_s();
                        size_t done = 0;
                        fprintf(stderr, "bench: per-token prefill %zu tokens (chunk 1), run %d/%lld\n", limit, n_pt + 1,
                                (long long)o.per_token_repeat);
                        r = timed_feed_each(s, fw1, ids, limit, BENCH_MIN_TOKENS, pt_deadline, &done, &pt_s[n_pt]);
                        if (round == 0) {
                                pt_n = done;
                                pt_run_s = now_s() - r0;
                        }
                        n_pt++;
                        ran = 1;
                }
                if (!ran)
                        break;
        }
        if (r < 0) {
                if (r == -EINTR || cli_interrupted) {
                        ex = EXIT_INTERRUPTED;
                        goto out;
                }
                cli_error("forward pass failed: %s", strerror(-r));
                ex = EXIT_RUNTIME;
                goto out;
        }

        const double pp_med = median(pp_s, n_pp);
        printf("{\"model\":");
        cli_json_string(stdout, o.model, strlen(o.model));
        printf(",\"n_layer\":%u,\"n_embd\":%u,\"n_ff\":%u,\"n_head\":%u,\"n_head_kv\":%u,\"n_expert\":%u,"
               "\"n_expert_used\":%u,\"n_vocab\":%u,\"moe_layout\":\"%s\"",
               c->n_layer, c->n_embd, c->n_ff, c->n_head, c->n_head_kv, c->n_expert, c->n_expert_used, c->n_vocab,
               m->moe_layout);
        printf(",\"int8\":%s", o.int8 ? "true" : "false");
        /* measured now, after the runs mapped the weights they read (0 when unknown) */
        uint64_t huge_bytes = 0;
        (void)hugepage_mapped_bytes(m->file->base, m->file->size, &huge_bytes);
        printf(",\"model_bytes\":%llu,\"model_huge_page_bytes\":%llu,\"model_reread_s\":%.3f",
               (unsigned long long)huge.file_bytes, (unsigned long long)huge_bytes, huge.seconds);
        printf(",\"threads\":%u,\"dot_kernel\":\"%s\",\"int8_kernel\":\"%s\",\"budget_s\":%.1f,\"elapsed_s\":%.3f", threads,
               ops_kernel_name(), quant_int8_isa_name(quant_int8(GGML_TYPE_Q4_K)->isa), o.budget, now_s() - start);
        uint64_t per_pos = 0;
        (void)session_kv_bytes_per_pos(m, s->kv->type, &per_pos);
        printf(",\"load_s\":%.6f,\"kv_type\":\"%s\",\"kv_bytes_per_pos\":%llu,\"kv_slots\":%u,\"kv_bytes\":%llu,"
               "\"chunk\":%u",
               load_s, kv_type_name(s->kv->type), (unsigned long long)per_pos, s->kv->n_slots,
               (unsigned long long)session_kv_bytes(s), forward_max_chunk(fw, s->kv));
        printf(",\"pp_tokens\":%lld,\"pp_runs\":%d,\"pp_s\":%.6f,\"pp_tok_s\":%.4f", (long long)o.pp, n_pp, pp_med,
               (double)o.pp / pp_med);
        print_list("pp_s_runs", pp_s, n_pp);
        if (o.tg > 0) {
                const double tg_med = median(tg_s, n_pp);
                printf(",\"tg_tokens\":%lld,\"tg_tokens_target\":%lld,\"tg_truncated\":%s,\"tg_runs\":%d,\"tg_s\":%.6f,"
                       "\"tg_tok_s\":%.4f,\"tg_first_pos\":%lld",
                       (long long)tg_n, (long long)o.tg, tg_n < o.tg ? "true" : "false", n_pp, tg_med,
                       (double)tg_n / tg_med, (long long)o.pp);
                print_list("tg_s_runs", tg_s, n_pp);
        }
        if (o.per_token) {
                const double pt_med = median(pt_s, n_pt), pt_rate = (double)pt_n / pt_med;
                printf(",\"pp_per_token_tokens\":%zu,\"pp_per_token_target\":%lld,\"pp_per_token_truncated\":%s,"
                       "\"pp_per_token_runs\":%d,\"pp_per_token_s\":%.6f,\"pp_per_token_tok_s\":%.4f,"
                       "\"prefill_speedup\":%.4f",
                       pt_n, (long long)o.pp, pt_n < (size_t)o.pp ? "true" : "false", n_pt, pt_med, pt_rate,
                       ((double)o.pp / pp_med) / pt_rate);
                print_list("pp_per_token_s_runs", pt_s, n_pt);
        }
        printf("}\n");
        fflush(stdout);
out:
        free(ids);
        forward_free(fw1);
        forward_free(fw);
        pool_free(pool);
        session_free(s);
        model_free(m);
        return ex;
}
