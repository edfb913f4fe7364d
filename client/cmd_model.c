/* client/cmd_model.c — the model commands that run the engine in-process (-m MODEL):
 * tokenize, generate, logits, perplexity. Main thread only. */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "engine_limits.h"
#include "model.h"
#include "ops.h"
#include "pool.h"
#include "generate.h"
#include "sample.h"
#include "session.h"
#include "stop.h"
#include "tokenizer.h"

#define CLI_MAX_INPUT TOKENIZER_MAX_INPUT /* bytes of prompt or text file */

/* Options every model command understands. */
typedef struct ModelOpts {
        const char *model;
        unsigned threads;    /* 0 = online CPUs */
        int int8;            /* 8-bit activations for quantized weights (forward_set_int8); --exact clears it */
        uint32_t capacity;   /* positions a full-attention session keeps (0 = model default) */
        uint64_t kv_budget;  /* bytes */
        uint32_t kv_type;    /* KV cache storage type (kv.h) */
} ModelOpts;
#define MODEL_OPTS_INIT { .kv_budget = KV_DEFAULT_BUDGET, .kv_type = KV_TYPE_DEFAULT, .int8 = 1 }

/* An engine error for a message: -EDOM (non-finite logits) in words. */
static const char *engine_error(int r) {
        return r == -EDOM ? "the model produced non-finite logits (NaN or infinity); its weights are likely corrupt"
                          : strerror(-r);
}

static int open_model(const ModelOpts *o, Model **ret) {
        ModelError err = { "" };
        if (!o->model) {
                cli_error("no model given (use -m MODEL.gguf)");
                return EXIT_USAGE;
        }
        int r = model_load(o->model, &err, ret);
        if (r < 0) {
                cli_error("cannot load model %s: %s", o->model, err.msg[0] ? err.msg : strerror(-r));
                return EXIT_RUNTIME;
        }
        return EXIT_OK;
}

#define CLI_DEFAULT_CHUNK 256 /* tokens per prefill chunk */

/* What the in-process commands run on: a session, the forward scratch to feed it and the
 * thread pool behind it. */
typedef struct Engine {
        Session *s;
        Forward *fw;
        Pool *pool;
} Engine;

static void engine_close(Engine *e) {
        e->fw = forward_free(e->fw);
        e->s = session_free(e->s);
        e->pool = pool_free(e->pool);
}

/* chunk 0: the default. */
static int open_engine(const Model *m, const ModelOpts *o, uint32_t chunk, Engine *e) {
        long cpus = sysconf(_SC_NPROCESSORS_ONLN);
        unsigned threads = o->threads ? o->threads : cpus > 0 ? (unsigned)cpus : 1;
        int r = session_new(m, o->capacity, o->kv_budget, o->kv_type, &e->s);
        if (r == 0)
                r = pool_new(threads, &e->pool);
        if (r == 0)
                r = forward_new(m, chunk ? chunk : CLI_DEFAULT_CHUNK, e->s->kv->n_slots, e->pool, &e->fw);
        if (r == 0)
                forward_set_int8(e->fw, o->int8);
        if (r < 0) {
                cli_error("cannot create a session: %s",
                          r == -E2BIG    ? "KV budget too small for this model"
                          : r == -EINVAL ? "this KV type does not fit the model's head size"
                                         : strerror(-r));
                return EXIT_RUNTIME;
        }
        return EXIT_OK;
}

/* Encode text, mapping errors to exit codes. */
static int encode(const Model *m, const char *text, size_t len, int add_bos, int32_t **ret_ids, size_t *ret_n) {
        int r = tokenizer_encode(m->tok, text, len, add_bos, ret_ids, ret_n);
        if (r == -EILSEQ) {
                cli_error("input is not valid UTF-8");
                return EXIT_USAGE;
        }
        if (r < 0) {
                cli_error("cannot tokenize input: %s", strerror(-r));
                return r == -E2BIG ? EXIT_USAGE : EXIT_RUNTIME;
        }
        return EXIT_OK;
}

/* Text input: stdin read verbatim to EOF. */
static int read_input(char **ret_buf, size_t *ret_len) {
        int r = cli_read_stdin(CLI_MAX_INPUT, ret_buf, ret_len);
        if (r == -EINTR)
                return EXIT_INTERRUPTED;
        if (r < 0) {
                cli_error("cannot read standard input: %s", r == -E2BIG ? "input too large" : strerror(-r));
                return r == -E2BIG ? EXIT_USAGE : EXIT_RUNTIME;
        }
        return EXIT_OK;
}

/* Parses the options shared by model commands; returns 1 if consumed. */
static int parse_model_opt(int c, const char *arg, ModelOpts *o, int *ret_exit) {
        int64_t v;
        switch (c) {
        case 'm':
                o->model = arg;
                return 1;
        case OPT_CTX:
                if (cli_parse_i64(arg, KV_ATTENTION_SINKS + 1, MODEL_MAX_CONTEXT, &v) < 0) {
                        cli_error("--ctx must be an integer in %d..%d", KV_ATTENTION_SINKS + 1, MODEL_MAX_CONTEXT);
                        *ret_exit = EXIT_USAGE;
                }
                o->capacity = (uint32_t)v;
                return 1;
        case 't':
                if (cli_parse_i64(arg, 1, 256, &v) < 0) {
                        cli_error("--threads must be an integer in 1..256");
                        *ret_exit = EXIT_USAGE;
                }
                o->threads = (unsigned)v;
                return 1;
        case OPT_INT8: /* the default since 8-bit activations pass the fixtures' agreement checks */
                o->int8 = 1;
                return 1;
        case OPT_EXACT:
                o->int8 = 0;
                return 1;
        case OPT_KV_BUDGET:
                if (cli_parse_u64(arg, &o->kv_budget) < 0 || o->kv_budget == 0) {
                        cli_error("--kv-budget must be a positive number of bytes");
                        *ret_exit = EXIT_USAGE;
                }
                return 1;
        case OPT_KV_TYPE:
                if (kv_type_parse(arg, &o->kv_type) < 0) {
                        cli_error("--kv-type must be f16, q8_0 or f32");
                        *ret_exit = EXIT_USAGE;
                }
                return 1;
        }
        return 0;
}

#define MODEL_LONG_OPTS \
        { "model", required_argument, NULL, 'm' }, { "ctx", required_argument, NULL, OPT_CTX }, \
        { "kv-budget", required_argument, NULL, OPT_KV_BUDGET }, { "threads", required_argument, NULL, 't' }, \
        { "int8", no_argument, NULL, OPT_INT8 }, { "exact", no_argument, NULL, OPT_EXACT },             \
        { "kv-type", required_argument, NULL, OPT_KV_TYPE },                                            \
        { "help", no_argument, NULL, 'h' }


/* ---------------------------------------------------------------- tokenize */

int cmd_tokenize_local(int argc, char **argv) {
        static const struct option longopts[] = { MODEL_LONG_OPTS, { "no-bos", no_argument, NULL, OPT_NO_BOS }, { 0 } };
        ModelOpts o = MODEL_OPTS_INIT;
        int add_bos = 1, c, ex = EXIT_OK;

        optind = 1;
        while ((c = getopt_long(argc, argv, "m:t:h", longopts, NULL)) != -1) {
                if (parse_model_opt(c, optarg, &o, &ex)) {
                        if (ex)
                                return ex;
                        continue;
                }
                if (c == OPT_NO_BOS) {
                        add_bos = 0;
                } else if (c == 'h') {
                        tokenize_usage();
                        return EXIT_OK;
                } else {
                        return EXIT_USAGE;
                }
        }
        if (optind != argc) {
                cli_error("tokenize reads its text from stdin; unexpected argument '%s'", argv[optind]);
                return EXIT_USAGE;
        }

        Model *m = NULL;
        char *text = NULL;
        int32_t *ids = NULL;
        size_t len, n;
        cli_stdin_hint("text");
        if ((ex = read_input(&text, &len)) || (ex = open_model(&o, &m)) || (ex = encode(m, text, len, add_bos, &ids, &n)))
                goto out;

        size_t cap = 16 + n * 12, pos = 0;
        char *out = malloc(cap);
        if (!out) {
                ex = EXIT_RUNTIME;
                goto out;
        }
        out[pos++] = '[';
        for (size_t i = 0; i < n; i++)
                pos += (size_t)snprintf(out + pos, cap - pos, "%s%d", i ? "," : "", ids[i]);
        out[pos++] = ']';
        out[pos++] = '\n';
        int w = cli_write(out, pos);
        if (w < 0)
                ex = cli_write_error(w);
        free(out);
out:
        free(ids);
        free(text);
        model_free(m);
        return ex;
}

/* ---------------------------------------------------------------- generate */

/* Prefill progress on a terminal, for prompts long enough to notice. */
static void show_progress(void *userdata, size_t done, size_t total) {
        if (!isatty(STDERR_FILENO) || total <= 256)
                return;
        fprintf(stderr, "\rprefill %zu/%zu tokens", done, total);
        if (done == total)
                fputs("\r\033[K", stderr);
}

static double now_seconds(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Write generated text; a closed stdout ends generation quietly. */
static int emit(const char *buf, size_t len) {
        if (len == 0)
                return 0;
        return cli_write(buf, len);
}

int cmd_generate_local(int argc, char **argv) {
        static const struct option longopts[] = {
                MODEL_LONG_OPTS,
                SAMPLING_LONG_OPTS,
                { 0 },
        };
        ModelOpts o = MODEL_OPTS_INIT;
        GenerateOpts g = { .n_predict = 256, .sp = SAMPLER_DEFAULTS };
        int c, ex = EXIT_OK;

        optind = 1;
        while ((c = getopt_long(argc, argv, "m:n:t:h", longopts, NULL)) != -1) {
                if (parse_model_opt(c, optarg, &o, &ex) || sampling_opt_parse(c, optarg, &g, &ex)) {
                        if (ex)
                                return ex;
                        continue;
                }
                if (c == 'h') {
                        generate_usage();
                        return EXIT_OK;
                }
                return EXIT_USAGE;
        }
        if (argc - optind > 1) {
                cli_error("give the prompt as one argument (quote it), or on stdin");
                return EXIT_USAGE;
        }
        sampling_opt_finish(&g);

        Model *m = NULL;
        Engine e = { 0 };
        Generation gen = { 0 };
        char *text = NULL;
        int32_t *ids = NULL;
        size_t len, n_ids;

        if (optind < argc) {
                text = strdup(argv[optind]);
                len = strlen(argv[optind]);
                if (!text)
                        return EXIT_RUNTIME;
        } else {
                cli_stdin_hint("prompt");
                if ((ex = read_input(&text, &len)))
                        return ex;
        }
        if ((ex = open_model(&o, &m)) || (ex = encode(m, text, len, 1, &ids, &n_ids)) ||
            (ex = open_engine(m, &o, 0, &e)))
                goto out;
        GenParams gp = { .sampling = g.sp, .n_predict = g.n_predict, .n_stops = g.n_stops };
        memcpy(gp.stops, g.stops, sizeof(g.stops));
        /* the daemon's path: on a fresh session, BOS and the prompt's tokens (ids) */
        SessionPlan plan;
        if (session_plan(e.s, text, len, 1, &plan) < 0) {
                ex = EXIT_RUNTIME;
                goto out;
        }
        int rs = generation_start(&gen, e.s, &plan, &gp);
        session_plan_free(&plan);
        if (rs < 0) {
                ex = EXIT_RUNTIME;
                goto out;
        }

        const double t0 = now_seconds();
        double t1 = t0;
        GenEvent ev;
        int r;
        do {
                if (cli_interrupted) {
                        cli_newline_after_interrupt(); /* the shell's prompt starts on a line of its own */
                        ex = EXIT_INTERRUPTED;
                        goto out;
                }
                r = generation_step(&gen, e.fw, &ev);
                if (r < 0) {
                        cli_error("generation failed: %s", engine_error(r));
                        ex = EXIT_RUNTIME;
                        goto out;
                }
                if (ev.prefilling) {
                        show_progress(NULL, ev.prompt_done, ev.prompt_total);
                        t1 = now_seconds();
                }
                int w = emit(ev.text, ev.text_len);
                if (w < 0) { /* stdout closed early (| head): a quiet, successful end; else an error */
                        ex = cli_write_error(w);
                        goto out;
                }
        } while (r > 0);

        if (isatty(STDOUT_FILENO)) {
                const double t2 = now_seconds();
                emit("\n", 1);
                fprintf(stderr, "[prompt %zu tokens, %.1f tok/s; generated %lld tokens, %.1f tok/s; stop: %s]\n", n_ids,
                        n_ids / (t1 - t0 + 1e-9), (long long)gen.n_generated, gen.n_generated / (t2 - t1 + 1e-9),
                        gen_stop_reason_name(gen.stop_reason));
        }
out:
        generation_done(&gen);
        engine_close(&e);
        free(ids);
        free(text);
        model_free(m);
        return ex;
}

/* ---------------------------------------------------------------- logits */

static int parse_token_list(const char *s, uint32_t n_vocab, int32_t **ret_ids, size_t *ret_n) {
        size_t cap = 1;
        for (const char *p = s; *p; p++)
                cap += *p == ',';
        int32_t *ids = malloc(cap * sizeof(int32_t));
        size_t n = 0;
        if (!ids)
                return -ENOMEM;
        const char *p = s;
        while (*p) {
                char *end;
                errno = 0;
                long v = strtol(p, &end, 10);
                if (errno || end == p || v < 0 || (unsigned long)v >= n_vocab || (*end && *end != ',')) {
                        free(ids);
                        return -EINVAL;
                }
                ids[n++] = (int32_t)v;
                p = *end ? end + 1 : end;
                if (*end && !*p) {
                        free(ids);
                        return -EINVAL;
                }
        }
        if (n == 0) {
                free(ids);
                return -EINVAL;
        }
        *ret_ids = ids;
        *ret_n = n;
        return 0;
}

typedef struct LogitsPrinter {
        uint32_t n_vocab;
        int all;
        int64_t last_pos;
        char *buf;   /* one line */
} LogitsPrinter;

static int print_logits_line(LogitsPrinter *lp, int64_t pos, const float *logits) {
        size_t len = (size_t)sprintf(lp->buf, "{\"pos\":%lld,\"logits\":[", (long long)pos);
        for (uint32_t i = 0; i < lp->n_vocab; i++)
                len += (size_t)sprintf(lp->buf + len, "%s%.9g", i ? "," : "", (double)logits[i]);
        len += (size_t)sprintf(lp->buf + len, "]}\n");
        int w = cli_write(lp->buf, len);
        if (w < 0)
                cli_write_error(w); /* reported (unless EPIPE); the feed stops */
        return w < 0 ? -EPIPE : 0;
}

static int on_logits(void *userdata, int64_t pos, const float *logits) {
        LogitsPrinter *lp = userdata;
        if (cli_interrupted)
                return -ECANCELED;
        if (!lp->all && pos != lp->last_pos)
                return 0;
        if (!all_finite(logits, lp->n_vocab))
                return -EDOM; /* no NaN or inf in the JSON: the command fails instead */
        return print_logits_line(lp, pos, logits);
}

int cmd_logits(int argc, char **argv) {
        static const struct option longopts[] = {
                MODEL_LONG_OPTS,
                { "tokens", required_argument, NULL, OPT_TOKENS },
                { "all", no_argument, NULL, OPT_ALL },
                { "chunk", required_argument, NULL, OPT_CHUNK },
                { 0 },
        };
        ModelOpts o = MODEL_OPTS_INIT;
        const char *tokens = NULL;
        int all = 0, c, ex = EXIT_OK;
        int64_t chunk = 0;

        optind = 1;
        while ((c = getopt_long(argc, argv, "m:t:h", longopts, NULL)) != -1) {
                if (parse_model_opt(c, optarg, &o, &ex)) {
                        if (ex)
                                return ex;
                        continue;
                }
                switch (c) {
                case OPT_TOKENS:
                        tokens = optarg;
                        break;
                case OPT_ALL:
                        all = 1;
                        break;
                case OPT_CHUNK:
                        if (cli_parse_i64(optarg, 1, FORWARD_MAX_CHUNK, &chunk) < 0) {
                                cli_error("--chunk must be in 1..%d", FORWARD_MAX_CHUNK);
                                return EXIT_USAGE;
                        }
                        break;
                case 'h':
                        printf("usage: mixctl logits -m MODEL --tokens ID,ID,... [--all] [--chunk N]\n"
                               "Prints {\"pos\":P,\"logits\":[...]} for the last position (or every one with --all).\n"
                               "The ids are used as given: no BOS is added.\n" MODEL_OPTS_HELP
                               "  --chunk N            prefill chunk size (default: the largest allowed)\n");
                        return EXIT_OK;
                default:
                        return EXIT_USAGE;
                }
        }
        if (!tokens || optind != argc) {
                cli_error("usage: mixctl logits -m MODEL --tokens ID,ID,... [--all]");
                return EXIT_USAGE;
        }

        Model *m = NULL;
        Engine e = { 0 };
        int32_t *ids = NULL;
        size_t n;
        LogitsPrinter lp = { 0 };
        if ((ex = open_model(&o, &m)))
                goto out;
        if (parse_token_list(tokens, m->cfg.n_vocab, &ids, &n) < 0) {
                cli_error("--tokens must be comma-separated ids in 0..%u", m->cfg.n_vocab - 1);
                ex = EXIT_USAGE;
                goto out;
        }
        if ((ex = open_engine(m, &o, (uint32_t)chunk, &e)))
                goto out;
        lp = (LogitsPrinter){ .n_vocab = m->cfg.n_vocab, .all = all, .last_pos = (int64_t)n - 1,
                              .buf = malloc(64 + (size_t)m->cfg.n_vocab * 20) };
        if (!lp.buf) {
                ex = EXIT_RUNTIME;
                goto out;
        }
        int r = session_feed(e.s, e.fw, ids, n, on_logits, &lp);
        if (r == -ECANCELED)
                ex = EXIT_INTERRUPTED;
        else if (r < 0 && r != -EPIPE) { /* -EPIPE: the output stopped (cli_finish_output decides) */
                cli_error("forward pass failed: %s", engine_error(r));
                ex = EXIT_RUNTIME;
        }
out:
        free(lp.buf);
        engine_close(&e);
        free(ids);
        model_free(m);
        return ex;
}

/* ---------------------------------------------------------------- perplexity */

typedef struct PplState {
        const int32_t *chunk;   /* this chunk's tokens */
        int64_t first_scored;   /* position whose logits predict the first scored token */
        int64_t n_ctx;
        uint32_t n_vocab;
        double nll_sum;
        int64_t n_scored;
} PplState;

static int ppl_on_logits(void *userdata, int64_t pos, const float *logits) {
        PplState *st = userdata;
        if (cli_interrupted)
                return -ECANCELED;
        if (pos >= st->first_scored && pos < st->n_ctx - 1) {
                if (!all_finite(logits, st->n_vocab))
                        return -EDOM;
                st->nll_sum -= log_softmax_at(logits, st->n_vocab, st->chunk[pos + 1]);
                st->n_scored++;
        }
        return 0;
}

int cmd_perplexity(int argc, char **argv) {
        static const struct option longopts[] = {
                MODEL_LONG_OPTS,
                { "file", required_argument, NULL, 'f' },
                { 0 },
        };
        ModelOpts o = MODEL_OPTS_INIT;
        const char *path = NULL;
        int64_t n_ctx = 512;
        int c, ex = EXIT_OK;

        optind = 1;
        /* --ctx here is the chunk length, as in llama-perplexity */
        while ((c = getopt_long(argc, argv, "m:f:c:t:h", longopts, NULL)) != -1) {
                if (c == OPT_CTX || c == 'c') {
                        if (cli_parse_i64(optarg, 4, 1 << 20, &n_ctx) < 0) {
                                cli_error("--ctx must be an integer in 4..%d", 1 << 20);
                                return EXIT_USAGE;
                        }
                        continue;
                }
                if (parse_model_opt(c, optarg, &o, &ex)) {
                        if (ex)
                                return ex;
                        continue;
                }
                if (c == 'f') {
                        path = optarg;
                } else if (c == 'h') {
                        printf("usage: mixctl perplexity -m MODEL -f FILE [--ctx N]\n"
                               "llama-perplexity's method: chunks of N tokens (default 512), each starting with BOS;\n"
                               "the second half of each chunk is scored. The last stdout line is 'ppl VALUE'.\n"
                               "  -m, --model FILE     GGUF model file (required)\n"
                               "  -f, --file FILE      text to score\n"
                               "  -c, --ctx N          chunk length in tokens (default 512)\n"
                               "  -t, --threads N      compute threads (default: online CPUs)\n"
                               "  --kv-budget BYTES    most bytes of KV cache (default 4 GiB)\n");
                        return EXIT_OK;
                } else {
                        return EXIT_USAGE;
                }
        }
        if (!path || optind != argc) {
                cli_error("usage: mixctl perplexity -m MODEL -f FILE [--ctx N]");
                return EXIT_USAGE;
        }

        Model *m = NULL;
        Engine e = { 0 };
        char *text = NULL;
        int32_t *ids = NULL, *chunk = NULL;
        size_t len, n;
        int r = cli_read_file(path, CLI_MAX_INPUT, &text, &len);
        if (r < 0) {
                cli_error("cannot read %s: %s", path, r == -E2BIG ? "file too large" : strerror(-r));
                return EXIT_USAGE;
        }
        o.capacity = (uint32_t)n_ctx; /* exact attention over a whole chunk */
        if ((ex = open_model(&o, &m)) || (ex = encode(m, text, len, 1, &ids, &n)) || (ex = open_engine(m, &o, 0, &e)))
                goto out;
        const int64_t n_chunks = (int64_t)n / n_ctx;
        if (n_chunks == 0) {
                cli_error("%s has %zu tokens, fewer than one chunk of %lld", path, n, (long long)n_ctx);
                ex = EXIT_USAGE;
                goto out;
        }
        if (!m->cfg.sliding_window && e.s->kv->n_slots < n_ctx)
                fprintf(stderr, "mixctl: warning: KV budget holds %u positions, less than --ctx %lld; attention rolls\n",
                        e.s->kv->n_slots, (long long)n_ctx);
        chunk = malloc((size_t)n_ctx * sizeof(int32_t));
        if (!chunk) {
                ex = EXIT_RUNTIME;
                goto out;
        }
        PplState st = { .chunk = chunk, .first_scored = n_ctx / 2, .n_ctx = n_ctx, .n_vocab = m->cfg.n_vocab };
        fprintf(stderr, "perplexity: %zu tokens, %lld chunks of %lld\n", n, (long long)n_chunks, (long long)n_ctx);
        for (int64_t ci = 0; ci < n_chunks; ci++) {
                memcpy(chunk, ids + ci * n_ctx, (size_t)n_ctx * sizeof(int32_t));
                chunk[0] = tokenizer_bos(m->tok);
                session_reset(e.s);
                /* the first half only fills the cache; the second half is scored */
                r = session_feed(e.s, e.fw, chunk, (size_t)st.first_scored, NULL, NULL);
                if (r == 0)
                        r = session_feed(e.s, e.fw, chunk + st.first_scored, (size_t)(n_ctx - st.first_scored), ppl_on_logits,
                                         &st);
                if (r == -ECANCELED) {
                        ex = EXIT_INTERRUPTED;
                        goto out;
                }
                if (r < 0) {
                        cli_error("forward pass failed: %s", engine_error(r));
                        ex = EXIT_RUNTIME;
                        goto out;
                }
                fprintf(stderr, "[%lld/%lld] ppl %.4f\n", (long long)ci + 1, (long long)n_chunks,
                        exp(st.nll_sum / (double)st.n_scored));
        }
        char line[64];
        int ln = snprintf(line, sizeof(line), "ppl %.6f\n", exp(st.nll_sum / (double)st.n_scored));
        int w = cli_write(line, (size_t)ln);
        if (w < 0)
                ex = cli_write_error(w);
out:
        free(chunk);
        engine_close(&e);
        free(ids);
        free(text);
        model_free(m);
        return ex;
}
