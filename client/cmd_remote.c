/* client/cmd_remote.c — the commands that talk to mixd: generate and tokenize without -m,
 * chat, score, sessions, session rm, status, experts, shutdown. Main thread only. */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <editline/readline.h>

#include "cli.h"
#include "remote.h"

#define REMOTE_LONG_OPTS { "socket", required_argument, NULL, OPT_SOCKET }, { "json", no_argument, NULL, OPT_JSON }, \
                         { "timeout", required_argument, NULL, OPT_TIMEOUT },                                    \
                         { "connect-timeout", required_argument, NULL, OPT_CONNECT_TIMEOUT },                    \
                         { "help", no_argument, NULL, 'h' }

typedef struct RemoteOpts {
        const char *socket;
        int json;
        double timeout;          /* seconds; see REMOTE_REPLY_TIMEOUT_S */
        double connect_timeout;  /* seconds; see REMOTE_CONNECT_TIMEOUT_S */
} RemoteOpts;
#define REMOTE_OPTS_INIT { .timeout = REMOTE_REPLY_TIMEOUT_S, .connect_timeout = REMOTE_CONNECT_TIMEOUT_S }

/* 1 if c was a daemon option (*ret_exit set on a bad value), else 0. */
static int parse_remote_opt(int c, const char *arg, RemoteOpts *o, int *ret_exit) {
        float v;
        switch (c) {
        case OPT_SOCKET: o->socket = arg; return 1;
        case OPT_JSON: o->json = 1; return 1;
        case OPT_TIMEOUT:
        case OPT_CONNECT_TIMEOUT:
                if (cli_parse_float(arg, 0.0, REMOTE_MAX_TIMEOUT_S, &v) < 0) {
                        cli_error("--%s: '%s' is not a number of seconds in 0..%.0f", c == OPT_TIMEOUT ? "timeout" : "connect-timeout",
                                  arg, REMOTE_MAX_TIMEOUT_S);
                        *ret_exit = EXIT_USAGE;
                } else {
                        *(c == OPT_TIMEOUT ? &o->timeout : &o->connect_timeout) = v;
                }
                return 1;
        }
        return 0;
}

static int connect_remote(Remote *rc, const RemoteOpts *o) {
        return remote_connect(rc, o->socket, o->connect_timeout, o->timeout);
}

/* A reply without a field its op always carries (or with another type): mixd broke the
 * protocol. Prints that and returns 1; 0 when the field is there. */
static int reply_lacks(const Reply *rep, const char *op, const char *field, msgpack_object_type type) {
        const msgpack_object *o = proto_map_get(&rep->root, field);
        if (o && o->type == type)
                return 0;
        cli_error("mixd broke the protocol: its %s reply has no '%s' %s", op, field,
                  type == MSGPACK_OBJECT_ARRAY ? "array" : "string");
        return 1;
}

/* msgpack value → JSON, for --json output of generic replies (NULL: null). */
static void print_json(FILE *out, const msgpack_object *o) {
        if (!o) {
                fputs("null", out);
                return;
        }
        switch (o->type) {
        case MSGPACK_OBJECT_NIL: fputs("null", out); break;
        case MSGPACK_OBJECT_BOOLEAN: fputs(o->via.boolean ? "true" : "false", out); break;
        case MSGPACK_OBJECT_POSITIVE_INTEGER: fprintf(out, "%llu", (unsigned long long)o->via.u64); break;
        case MSGPACK_OBJECT_NEGATIVE_INTEGER: fprintf(out, "%lld", (long long)o->via.i64); break;
        case MSGPACK_OBJECT_FLOAT32:
        case MSGPACK_OBJECT_FLOAT64:
                if (isfinite(o->via.f64))
                        fprintf(out, "%.9g", o->via.f64);
                else
                        fputs("null", out);
                break;
        case MSGPACK_OBJECT_STR: cli_json_string(out, o->via.str.ptr, o->via.str.size); break;
        case MSGPACK_OBJECT_ARRAY:
                fputc('[', out);
                for (uint32_t i = 0; i < o->via.array.size; i++) {
                        if (i)
                                fputc(',', out);
                        print_json(out, &o->via.array.ptr[i]);
                }
                fputc(']', out);
                break;
        case MSGPACK_OBJECT_MAP:
                fputc('{', out);
                for (uint32_t i = 0; i < o->via.map.size; i++) {
                        if (i)
                                fputc(',', out);
                        print_json(out, &o->via.map.ptr[i].key);
                        fputc(':', out);
                        print_json(out, &o->via.map.ptr[i].val);
                }
                fputc('}', out);
                break;
        default: fputs("null", out); break;
        }
}

static uint64_t get_u(const Reply *r, const char *key) {
        uint64_t v = 0;
        proto_obj_uint(proto_map_get(&r->root, key), &v);
        return v;
}

static double get_d(const Reply *r, const char *key) {
        double v = 0;
        proto_obj_double(proto_map_get(&r->root, key), &v);
        return v;
}

/* Read the prompt: the argument when given, else stdin to EOF; must be UTF-8. what: "prompt"
 * or "text", for the hint shown when stdin is a terminal. */
static int read_prompt(int argc, char **argv, int optind_, const char *what, char **ret, size_t *ret_len) {
        if (argc - optind_ > 1) {
                cli_error("give the prompt as one argument (quote it), or on stdin");
                return EXIT_USAGE;
        }
        if (optind_ < argc) {
                *ret = strdup(argv[optind_]);
                *ret_len = strlen(argv[optind_]);
                if (!*ret)
                        return EXIT_RUNTIME;
        } else {
                cli_stdin_hint(what);
                int r = cli_read_stdin(PROTO_MAX_PROMPT_BYTES + 1, ret, ret_len);
                if (r == -EINTR)
                        return EXIT_INTERRUPTED;
                if (r < 0 || *ret_len > PROTO_MAX_PROMPT_BYTES) {
                        cli_error("cannot read standard input: %s", r == -E2BIG || r == 0 ? "input too large" : strerror(-r));
                        if (r == 0)
                                free(*ret);
                        return r == -E2BIG || r == 0 ? EXIT_USAGE : EXIT_RUNTIME;
                }
        }
        if (!proto_utf8_valid(*ret, *ret_len)) {
                cli_error("input is not valid UTF-8");
                free(*ret);
                return EXIT_USAGE;
        }
        return EXIT_OK;
}

/* Stream one generate request's events to stdout. *ret_stop gets the stop reason. */
static int stream_generation(Remote *rc, Request *req, int json, int show_stats) {
        const int tty = isatty(STDOUT_FILENO), tty_err = isatty(STDERR_FILENO);
        int ex = remote_send(rc, req), cancel_sent = 0, waiting = tty_err && !json;
        if (ex)
                return ex;
        if (waiting)
                fputs("…", stderr);
        for (;;) {
                Reply rep;
                int e = remote_recv(rc, &rep);
                if (e == -EINTR && !cancel_sent) {
                        Request c;
                        request_init(&c, PROTO_OP_CANCEL, 0);
                        c.cancel.target = req->id;
                        cancel_sent = 1;
                        cli_interrupted = 0;
                        remote_send(rc, &c);
                        ex = EXIT_INTERRUPTED;
                        continue;
                }
                if (e == -EINTR) { /* a second Ctrl-C leaves at once */
                        cli_newline_after_interrupt();
                        return EXIT_INTERRUPTED;
                }
                if (e < 0)
                        return remote_report_recv(rc, e);
                if (rep.has_id && rep.id != req->id) {
                        reply_free(&rep);
                        continue;
                }
                if (rep.kind == REPLY_EVENT && proto_str_eq(rep.event_name, "progress") && waiting) {
                        uint64_t done = 0, total = 0;
                        proto_obj_uint(proto_map_get(&rep.root, "done"), &done);
                        proto_obj_uint(proto_map_get(&rep.root, "total"), &total);
                        fprintf(stderr, "\rprefill %llu/%llu tokens", (unsigned long long)done, (unsigned long long)total);
                        reply_free(&rep);
                        continue;
                }
                if (waiting && (rep.kind != REPLY_EVENT || rep.event != REPLY_EVENT_OTHER)) {
                        fputs("\r\033[K", stderr);
                        waiting = 0;
                }
                if (rep.kind == REPLY_ERROR) {
                        int x = remote_report_error(&rep);
                        reply_free(&rep);
                        return cancel_sent ? EXIT_INTERRUPTED : x;
                }
                if (rep.kind != REPLY_EVENT) {
                        reply_free(&rep);
                        continue;
                }
                if (rep.event == REPLY_EVENT_TOKEN && cli_stdout_usable() && !cancel_sent) {
                        int w;
                        if (json) {
                                print_json(stdout, &rep.root);
                                fputc('\n', stdout);
                                w = fflush(stdout) == 0 ? 0 : -(errno ? errno : EIO);
                        } else {
                                w = cli_write(rep.text.ptr, rep.text.len);
                        }
                        if (w < 0) {
                                /* stdout closed (| head): stop the generation, end quietly;
                                 * any other write error (a full disk): stop it, exit 1 */
                                ex = cli_write_error(w);
                                Request c;
                                request_init(&c, PROTO_OP_CANCEL, 0);
                                c.cancel.target = req->id;
                                cancel_sent = 1;
                                remote_send(rc, &c);
                        }
                } else if (rep.event == REPLY_EVENT_DONE) {
                        if (json && cli_stdout_usable()) {
                                print_json(stdout, &rep.root);
                                fputc('\n', stdout);
                                if (fflush(stdout) != 0)
                                        ex = cli_write_error(-(errno ? errno : EIO));
                        } else if (tty && cli_stdout_usable()) {
                                cli_write("\n", 1);
                        }
                        if (show_stats && tty_err && !json)
                                fprintf(stderr, "[prompt %llu tokens, %.1f tok/s; generated %llu tokens, %.1f tok/s; stop: %.*s]\n",
                                        (unsigned long long)rep.n_prompt, rep.n_prompt / (rep.prompt_ms / 1000.0 + 1e-9),
                                        (unsigned long long)rep.n_generated,
                                        rep.n_generated / (rep.generate_ms / 1000.0 + 1e-9), (int)rep.stop_reason.len,
                                        rep.stop_reason.ptr);
                        if (!cancel_sent && proto_str_eq(rep.stop_reason, PROTO_STOP_CANCELLED)) {
                                cli_error("the daemon cancelled the generation (shutdown, model reload or timeout); "
                                          "the output is incomplete");
                                ex = EXIT_RUNTIME;
                        }
                        reply_free(&rep);
                        return ex;
                }
                reply_free(&rep);
        }
}

static void fill_generate(Request *req, const GenerateOpts *g) {
        GenerateRequest *q = &req->generate;
        q->n_predict = g->n_predict < INT32_MIN || g->n_predict > INT32_MAX ? INT32_MAX : (int32_t)g->n_predict;
        q->temperature = g->sp.temperature;
        q->top_k = g->sp.top_k;
        q->top_p = g->sp.top_p;
        q->min_p = g->sp.min_p;
        q->repeat_penalty = g->sp.repeat_penalty;
        q->repeat_last_n = g->sp.repeat_last_n;
        q->has_seed = true;
        q->seed = g->sp.seed;
        for (int i = 0; i < g->n_stops; i++) {
                q->stop[i] = strdup(g->stops[i]);
                q->stop_len[i] = strlen(g->stops[i]);
        }
        q->n_stop = (uint32_t)g->n_stops;
}

int cmd_generate_remote(int argc, char **argv) {
        static const struct option longopts[] = {
                REMOTE_LONG_OPTS, SAMPLING_LONG_OPTS,
                { "session", required_argument, NULL, OPT_SESSION },
                { "logprobs", no_argument, NULL, OPT_LOGPROBS },
                { 0 },
        };
        RemoteOpts ro = REMOTE_OPTS_INIT;
        GenerateOpts g = GENERATE_OPTS_DEFAULTS;
        const char *session = NULL;
        int logprobs = 0, c, ex = EXIT_OK;

        optind = 1;
        while ((c = getopt_long(argc, argv, "n:h", longopts, NULL)) != -1) {
                if (parse_remote_opt(c, optarg, &ro, &ex) || sampling_opt_parse(c, optarg, &g, &ex)) {
                        if (ex)
                                return ex;
                        continue;
                }
                if (c == OPT_SESSION) {
                        session = optarg;
                } else if (c == OPT_LOGPROBS) {
                        logprobs = 1;
                } else if (c == 'h') {
                        generate_usage();
                        return EXIT_OK;
                } else {
                        return EXIT_USAGE;
                }
        }
        char *text;
        size_t len;
        if ((ex = read_prompt(argc, argv, optind, "prompt", &text, &len)))
                return ex;
        sampling_opt_finish(&g);

        Remote rc;
        Request req;
        if ((ex = connect_remote(&rc, &ro))) {
                free(text);
                remote_close(&rc);
                return ex;
        }
        request_init(&req, PROTO_OP_GENERATE, 0);
        req.generate.prompt = text;
        req.generate.prompt_len = len;
        req.generate.session = session ? strdup(session) : NULL;
        req.generate.logprobs = logprobs;
        fill_generate(&req, &g);
        ex = stream_generation(&rc, &req, ro.json, 1);
        request_free(&req);
        remote_close(&rc);
        return ex;
}

/* A command that sends one field-less request and prints the reply. */
typedef void (*PrintFn)(const Reply *rep);

static int simple_command(int argc, char **argv, ProtoOp op, const char *usage, PrintFn print) {
        static const struct option longopts[] = { REMOTE_LONG_OPTS, { 0 } };
        RemoteOpts ro = REMOTE_OPTS_INIT;
        int c, ex = EXIT_OK;
        optind = 1;
        while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
                if (parse_remote_opt(c, optarg, &ro, &ex)) {
                        if (ex)
                                return ex;
                        continue;
                }
                if (c == 'h') {
                        printf("%s\n" REMOTE_OPTS_HELP, usage);
                        return EXIT_OK;
                }
                return EXIT_USAGE;
        }
        if (optind != argc) {
                cli_error("unexpected argument '%s'", argv[optind]);
                return EXIT_USAGE;
        }
        Remote rc;
        Request req;
        Reply rep;
        if ((ex = connect_remote(&rc, &ro)) == 0) {
                request_init(&req, op, 0);
                if ((ex = remote_call(&rc, &req, &rep)) == 0) {
                        if (ro.json || !print) {
                                print_json(stdout, &rep.root);
                                fputc('\n', stdout);
                        } else {
                                print(&rep);
                        }
                        reply_free(&rep);
                }
                request_free(&req);
        }
        remote_close(&rc);
        return ex;
}

static void print_status(const Reply *rep) {
        ProtoStr model = { "", 0 };
        proto_obj_str(proto_map_get(&rep->root, "model"), &model);
        printf("model            %.*s\n", (int)model.len, model.ptr);
        const uint64_t model_bytes = get_u(rep, "model_bytes"), huge = get_u(rep, "model_huge_page_bytes");
        printf("model pages      %.1f of %.1f MiB mapped with 2 MiB pages (%.0f%%)\n", huge / 1048576.0,
               model_bytes / 1048576.0, model_bytes ? 100.0 * (double)huge / (double)model_bytes : 0.0);
        printf("sessions         %llu (evicted so far: %llu)\n", (unsigned long long)get_u(rep, "sessions"),
               (unsigned long long)get_u(rep, "sessions_evicted"));
        printf("requests         %llu active, %llu queued\n", (unsigned long long)get_u(rep, "active_requests"),
               (unsigned long long)get_u(rep, "queue"));
        printf("connections      %llu\n", (unsigned long long)get_u(rep, "connections"));
        ProtoStr kv_type = { "?", 1 };
        proto_obj_str(proto_map_get(&rep->root, "kv_type"), &kv_type);
        printf("KV cache         %.1f MiB of %.1f MiB (%.*s, %llu bytes per position)\n",
               get_u(rep, "kv_bytes_used") / 1048576.0, get_u(rep, "kv_budget") / 1048576.0, (int)kv_type.len,
               kv_type.ptr, (unsigned long long)get_u(rep, "kv_bytes_per_pos"));
        printf("tokens/s         %.1f (generated so far: %llu)\n", get_d(rep, "tokens_per_s"),
               (unsigned long long)get_u(rep, "tokens_generated"));
        printf("compute threads  %llu\n", (unsigned long long)get_u(rep, "threads"));
        printf("uptime           %.0f s\n", get_d(rep, "uptime_s"));
        const msgpack_object *numa = proto_map_get(&rep->root, "numa");
        if (numa && numa->type == MSGPACK_OBJECT_ARRAY && numa->via.array.size > 0) {
                for (uint32_t n = 0; n < numa->via.array.size; n++) {
                        uint64_t b = 0, t = 0;
                        proto_obj_uint(proto_map_get(&numa->via.array.ptr[n], "expert_bytes"), &b);
                        proto_obj_uint(proto_map_get(&numa->via.array.ptr[n], "threads"), &t);
                        printf("NUMA node %-6u %.1f MiB of experts, %llu thread(s)%s\n", n, b / 1048576.0,
                               (unsigned long long)t, numa->via.array.size == 1 ? " (one node: nothing to place)" : "");
                }
        } else {
                printf("NUMA             not planned (--numa off or no NUMA support)\n");
        }
        /* the cluster mode (mixd --cluster): one line per rank */
        const msgpack_object *ranks = proto_map_get(&rep->root, "ranks");
        for (uint32_t r = 0; ranks && ranks->type == MSGPACK_OBJECT_ARRAY && r < ranks->via.array.size; r++) {
                const msgpack_object *o = &ranks->via.array.ptr[r];
                uint64_t experts = 0, eb = 0, res = 0;
                double ms = 0.0;
                ProtoStr host = { "?", 1 };
                proto_obj_str(proto_map_get(o, "host"), &host);
                proto_obj_uint(proto_map_get(o, "experts"), &experts);
                proto_obj_uint(proto_map_get(o, "expert_bytes"), &eb);
                proto_obj_uint(proto_map_get(o, "resident_bytes"), &res);
                const msgpack_object *m = proto_map_get(o, "ms_per_token");
                if (m && m->type == MSGPACK_OBJECT_FLOAT64)
                        ms = m->via.f64;
                printf("rank %-11u %.*s%s: %llu experts (%.1f MiB), %.1f MiB of the model resident, %.3f ms per token\n", r,
                       (int)host.len, host.ptr, r == 0 ? " (front)" : "", (unsigned long long)experts, eb / 1048576.0,
                       res / 1048576.0, ms);
        }
}

static void print_experts(const Reply *rep) {
        static const char *shades[] = { " ", "░", "▒", "▓", "█" };
        const msgpack_object *counts = proto_map_get(&rep->root, "counts");
        const uint64_t E = get_u(rep, "n_expert");
        if (!counts || counts->type != MSGPACK_OBJECT_ARRAY || E == 0) {
                puts("this model has no experts");
                return;
        }
        printf("share of routed tokens per expert (%%), by layer; each token picks %llu\n",
               (unsigned long long)get_u(rep, "n_expert_used"));
        printf("layer ");
        for (uint64_t e = 0; e < E; e++)
                printf(" e%-4llu", (unsigned long long)e);
        printf("  routed\n");
        for (uint32_t l = 0; l < counts->via.array.size; l++) {
                const msgpack_object *row = &counts->via.array.ptr[l];
                if (row->type != MSGPACK_OBJECT_ARRAY)
                        continue;
                uint64_t total = 0, max = 0;
                for (uint32_t e = 0; e < row->via.array.size; e++) {
                        uint64_t v = row->via.array.ptr[e].via.u64;
                        total += v;
                        max = v > max ? v : max;
                }
                printf("%5u ", l);
                for (uint32_t e = 0; e < row->via.array.size; e++) {
                        uint64_t v = row->via.array.ptr[e].via.u64;
                        double pct = total ? 100.0 * (double)v / (double)total : 0.0;
                        int shade = max ? (int)(4.0 * (double)v / (double)max + 0.5) : 0;
                        printf(" %s%4.1f", shades[shade], pct);
                }
                printf("  %llu\n", (unsigned long long)total);
        }
}

static void print_sessions(const Reply *rep) {
        const msgpack_object *list = proto_map_get(&rep->root, "sessions");
        if (!list || list->type != MSGPACK_OBJECT_ARRAY || list->via.array.size == 0) {
                puts("no sessions");
                return;
        }
        printf("%-20s %6s %8s %10s %8s %8s\n", "SESSION", "UID", "TOKENS", "KV MiB", "IDLE s", "REQUESTS");
        for (uint32_t i = 0; i < list->via.array.size; i++) {
                const msgpack_object *s = &list->via.array.ptr[i];
                ProtoStr id = { "", 0 };
                uint64_t uid = 0, n = 0, kv = 0, reqs = 0;
                double idle = 0;
                bool busy = false;
                proto_obj_str(proto_map_get(s, "session"), &id);
                proto_obj_uint(proto_map_get(s, "uid"), &uid);
                proto_obj_uint(proto_map_get(s, "n_tokens"), &n);
                proto_obj_uint(proto_map_get(s, "kv_bytes"), &kv);
                proto_obj_uint(proto_map_get(s, "requests"), &reqs);
                proto_obj_double(proto_map_get(s, "idle_s"), &idle);
                proto_obj_bool(proto_map_get(s, "busy"), &busy);
                char idle_s[32];
                snprintf(idle_s, sizeof(idle_s), busy ? "busy" : "%.0f", idle);
                printf("%-20.*s %6llu %8llu %10.1f %8s %8llu\n", (int)id.len, id.ptr, (unsigned long long)uid,
                       (unsigned long long)n, kv / 1048576.0, idle_s, (unsigned long long)reqs);
        }
}

int cmd_status(int argc, char **argv) {
        return simple_command(argc, argv, PROTO_OP_STATUS, "usage: mixctl status [--json]", print_status);
}

int cmd_experts(int argc, char **argv) {
        return simple_command(argc, argv, PROTO_OP_EXPERTS, "usage: mixctl experts [--json]\n"
                              "How often the router has chosen each expert of each layer since mixd started.",
                              print_experts);
}

int cmd_sessions(int argc, char **argv) {
        return simple_command(argc, argv, PROTO_OP_SESSION_LIST, "usage: mixctl sessions [--json]", print_sessions);
}

static void print_ok(const Reply *rep) {
        (void)rep;
}

int cmd_shutdown(int argc, char **argv) {
        return simple_command(argc, argv, PROTO_OP_SHUTDOWN, "usage: mixctl shutdown\nStops the daemon (root or the admin group).",
                              print_ok);
}

/* mixctl session open | rm ID */
int cmd_session(int argc, char **argv) {
        static const struct option longopts[] = { REMOTE_LONG_OPTS, { 0 } };
        RemoteOpts ro = REMOTE_OPTS_INIT;
        int c, ex = EXIT_OK;
        optind = 1;
        while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
                if (parse_remote_opt(c, optarg, &ro, &ex)) {
                        if (ex)
                                return ex;
                        continue;
                }
                if (c == 'h') {
                        printf("usage: mixctl session open | mixctl session rm ID\n" REMOTE_OPTS_HELP);
                        return EXIT_OK;
                }
                return EXIT_USAGE;
        }
        const int open_ = optind + 1 == argc && !strcmp(argv[optind], "open");
        const int rm = optind + 2 == argc && (!strcmp(argv[optind], "rm") || !strcmp(argv[optind], "close"));
        if (!open_ && !rm) {
                cli_error("usage: mixctl session open | mixctl session rm ID");
                return EXIT_USAGE;
        }
        Remote rc;
        Request req;
        Reply rep;
        if ((ex = connect_remote(&rc, &ro)) == 0) {
                request_init(&req, open_ ? PROTO_OP_SESSION_OPEN : PROTO_OP_SESSION_CLOSE, 0);
                if (rm)
                        req.session_close.session = strdup(argv[optind + 1]);
                if ((ex = remote_call(&rc, &req, &rep)) == 0) {
                        if (open_ && reply_lacks(&rep, "session.open", "session", MSGPACK_OBJECT_STR)) {
                                ex = EXIT_RUNTIME;
                        } else if (ro.json) {
                                print_json(stdout, &rep.root);
                                fputc('\n', stdout);
                        } else if (open_) {
                                ProtoStr id = { "", 0 };
                                proto_obj_str(proto_map_get(&rep.root, "session"), &id);
                                printf("%.*s\n", (int)id.len, id.ptr);
                        }
                        reply_free(&rep);
                }
                request_free(&req);
        }
        remote_close(&rc);
        return ex;
}

/* tokenize and score: a text (argument when allowed, else stdin) and --no-bos. */
typedef void (*TextPrintFn)(const Reply *rep);

static int text_command(int argc, char **argv, ProtoOp op, const char *usage, int arg_allowed, TextPrintFn print) {
        static const struct option longopts[] = { REMOTE_LONG_OPTS, { "no-bos", no_argument, NULL, OPT_NO_BOS }, { 0 } };
        RemoteOpts ro = REMOTE_OPTS_INIT;
        int add_bos = 1, c, ex = EXIT_OK;
        optind = 1;
        while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
                if (parse_remote_opt(c, optarg, &ro, &ex)) {
                        if (ex)
                                return ex;
                        continue;
                }
                if (c == OPT_NO_BOS) {
                        add_bos = 0;
                } else if (c == 'h') {
                        if (op == PROTO_OP_TOKENIZE)
                                tokenize_usage(); /* with the in-process options too */
                        else
                                printf("%s\n" REMOTE_OPTS_HELP "  --no-bos             do not add the BOS token\n", usage);
                        return EXIT_OK;
                } else {
                        return EXIT_USAGE;
                }
        }
        if (!arg_allowed && optind != argc) {
                cli_error("this command reads its text from stdin; unexpected argument '%s'", argv[optind]);
                return EXIT_USAGE;
        }
        char *text;
        size_t len;
        if ((ex = read_prompt(argc, argv, arg_allowed ? optind : argc, "text", &text, &len)))
                return ex;
        Remote rc;
        Request req;
        Reply rep;
        if ((ex = connect_remote(&rc, &ro)) == 0) {
                request_init(&req, op, 0);
                TextRequest *t = op == PROTO_OP_SCORE ? &req.score : &req.tokenize;
                t->text = text;
                t->text_len = len;
                t->add_bos = add_bos;
                text = NULL;
                if ((ex = remote_call(&rc, &req, &rep)) == 0) {
                        if (reply_lacks(&rep, proto_op_name(op), "tokens", MSGPACK_OBJECT_ARRAY) ||
                            (op == PROTO_OP_SCORE && reply_lacks(&rep, "score", "logprobs", MSGPACK_OBJECT_ARRAY)))
                                ex = EXIT_RUNTIME;
                        else
                                print(&rep);
                        reply_free(&rep);
                }
                request_free(&req);
        }
        free(text);
        remote_close(&rc);
        return ex;
}

static void print_tokens(const Reply *rep) {
        print_json(stdout, proto_map_get(&rep->root, "tokens"));
        fputc('\n', stdout);
}

static void print_score(const Reply *rep) {
        const msgpack_object *lp = proto_map_get(&rep->root, "logprobs");
        const double total = get_d(rep, "total_logprob");
        const uint32_t n = lp && lp->type == MSGPACK_OBJECT_ARRAY ? lp->via.array.size : 0;
        fputs("{\"tokens\":", stdout);
        print_json(stdout, proto_map_get(&rep->root, "tokens"));
        fputs(",\"logprobs\":", stdout);
        print_json(stdout, lp);
        /* JSON has no NaN or infinity: such a number prints as null */
        const double ppl = n ? exp(-total / n) : 1.0;
        printf(isfinite(total) ? ",\"total_logprob\":%.9g" : ",\"total_logprob\":null", total);
        printf(isfinite(ppl) ? ",\"perplexity\":%.9g}\n" : ",\"perplexity\":null}\n", ppl);
}

int cmd_tokenize_remote(int argc, char **argv) {
        return text_command(argc, argv, PROTO_OP_TOKENIZE, "usage: mixctl tokenize [-m MODEL] [--no-bos] < text\n"
                            "Prints the token ids of stdin (read verbatim) as one JSON array.", 0, print_tokens);
}

int cmd_score(int argc, char **argv) {
        return text_command(argc, argv, PROTO_OP_SCORE, "usage: mixctl score [--no-bos] [\"text\"]\n"
                            "Per-token log probabilities of the text (argument, else stdin) under the model,\n"
                            "as one JSON object: tokens, logprobs (of tokens[1..]), total_logprob, perplexity.",
                            1, print_score);
}

/* ------------------------------------------------------------------ chat */

static char *read_line(int tty) {
        if (tty) {
                char *l = readline("> ");
                if (l && *l)
                        add_history(l);
                return l;
        }
        char *line = NULL;
        size_t cap = 0;
        ssize_t n = getline(&line, &cap, stdin);
        if (n < 0) {
                free(line);
                return NULL;
        }
        if (n > 0 && line[n - 1] == '\n')
                line[n - 1] = '\0';
        return line;
}

int cmd_chat(int argc, char **argv) {
        static const struct option longopts[] = {
                REMOTE_LONG_OPTS, SAMPLING_LONG_OPTS, { "session", required_argument, NULL, OPT_SESSION }, { 0 },
        };
        RemoteOpts ro = REMOTE_OPTS_INIT;
        GenerateOpts g = GENERATE_OPTS_DEFAULTS;
        const char *session = NULL;
        int c, ex = EXIT_OK;
        g.n_predict = -1;
        optind = 1;
        while ((c = getopt_long(argc, argv, "n:h", longopts, NULL)) != -1) {
                if (parse_remote_opt(c, optarg, &ro, &ex) || sampling_opt_parse(c, optarg, &g, &ex)) {
                        if (ex)
                                return ex;
                        continue;
                }
                if (c == OPT_SESSION) {
                        session = optarg;
                } else if (c == 'h') {
                        printf("usage: mixctl chat [--session ID] [options]\n"
                               "A conversation in Mistral's [INST] ... [/INST] format, one line per turn; the\n"
                               "daemon keeps it in a session, so each turn costs only its new tokens.\n"
                               "Ends at EOF (Ctrl-D). -n defaults to -1 (until the model ends its turn).\n"
                               REMOTE_OPTS_HELP "  --session ID         continue an existing session\n" SAMPLING_OPTS_HELP);
                        return EXIT_OK;
                } else {
                        return EXIT_USAGE;
                }
        }
        if (optind != argc) {
                cli_error("chat reads its turns from stdin; unexpected argument '%s'", argv[optind]);
                return EXIT_USAGE;
        }
        sampling_opt_finish(&g);
        Remote rc;
        if ((ex = connect_remote(&rc, &ro))) {
                remote_close(&rc);
                return ex;
        }
        char *sid = session ? strdup(session) : NULL;
        const int opened = !session;
        if (opened) {
                Request req;
                Reply rep;
                request_init(&req, PROTO_OP_SESSION_OPEN, 0);
                ex = remote_call(&rc, &req, &rep);
                request_free(&req);
                if (ex) {
                        remote_close(&rc);
                        return ex;
                }
                if (reply_lacks(&rep, "session.open", "session", MSGPACK_OBJECT_STR)) {
                        reply_free(&rep);
                        remote_close(&rc);
                        return EXIT_RUNTIME;
                }
                ProtoStr id = { "", 0 };
                proto_obj_str(proto_map_get(&rep.root, "session"), &id);
                sid = strndup(id.ptr, id.len);
                reply_free(&rep);
        }
        const int tty = isatty(STDIN_FILENO);
        if (tty)
                fprintf(stderr, "session %s; Ctrl-D ends, Ctrl-C stops an answer\n", sid);
        for (;;) {
                char *line = read_line(tty);
                if (!line) {
                        if (tty && isatty(STDOUT_FILENO))
                                cli_write("\n", 1); /* Ctrl-D at the prompt: the shell's prompt on a new line */
                        break;
                }
                if (!*line) {
                        free(line);
                        continue;
                }
                size_t n = strlen(line) + 32;
                char *prompt = malloc(n);
                snprintf(prompt, n, "[INST] %s [/INST]", line);
                free(line);
                if (!proto_utf8_valid(prompt, strlen(prompt))) {
                        cli_error("input is not valid UTF-8");
                        free(prompt);
                        ex = EXIT_USAGE;
                        break;
                }
                Request req;
                request_init(&req, PROTO_OP_GENERATE, 0);
                req.generate.prompt = prompt;
                req.generate.prompt_len = strlen(prompt);
                req.generate.session = strdup(sid);
                fill_generate(&req, &g);
                ex = stream_generation(&rc, &req, ro.json, 0);
                request_free(&req);
                int w = !isatty(STDOUT_FILENO) && !ro.json && cli_stdout_usable() ? cli_write("\n", 1) : 0;
                if (w < 0 && cli_write_error(w) != EXIT_OK && !ex)
                        ex = EXIT_RUNTIME;
                if (ex == EXIT_INTERRUPTED && tty) {
                        ex = EXIT_OK; /* Ctrl-C stops one answer; the chat goes on */
                        continue;
                }
                if (ex || !cli_stdout_usable())
                        break;
        }
        if (opened) {
                Request req;
                Reply rep;
                request_init(&req, PROTO_OP_SESSION_CLOSE, 0);
                req.session_close.session = strdup(sid);
                if (remote_call(&rc, &req, &rep) == 0)
                        reply_free(&rep);
                request_free(&req);
        }
        free(sid);
        remote_close(&rc);
        return cli_stdout_closed && ex != EXIT_INTERRUPTED ? EXIT_OK : ex;
}
