/* client/cli.h — what mixctl's commands share: exit codes, error reporting, stdin and
 * stdout helpers, strict number parsing. Main thread only. */
#pragma once
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* Exit codes of every mixctl command (a stable contract for scripts). */
enum {
        EXIT_OK = 0,
        EXIT_RUNTIME = 1,     /* missing or bad model file, server error */
        EXIT_USAGE = 2,       /* usage or bad input (e.g. invalid UTF-8 on stdin) */
        EXIT_CONNECT = 3,     /* cannot connect to the daemon */
        EXIT_REFUSED = 4,     /* refused by the server (limits, permission) */
        EXIT_INTERRUPTED = 130,
};

/* Print "mixctl: <message>" on stderr (one line). */
void cli_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Read all of stdin verbatim. 0 or -errno (-E2BIG past max bytes). *ret_buf is NUL-terminated. */
int cli_read_stdin(size_t max, char **ret_buf, size_t *ret_len);
/* Read a whole file. */
int cli_read_file(const char *path, size_t max, char **ret_buf, size_t *ret_len);

/* Write to stdout, unbuffered. A closed pipe sets cli_stdout_closed and returns -EPIPE; any
 * other failure returns -errno (report it with cli_write_error). */
extern volatile int cli_stdout_closed;
int cli_write(const void *buf, size_t len);
/* A write to stdout failed with err (-errno). -EPIPE: the reader left (| head), a quiet end:
 * returns EXIT_OK. Anything else (a full disk, an I/O error) is printed once and remembered:
 * returns EXIT_RUNTIME. Either way the command stops writing (cli_stdout_usable). */
int cli_write_error(int err);
/* 0 once stdout failed (a closed pipe or another error): stop producing output. */
int cli_stdout_usable(void);
/* The end of every command: flush stdout and turn a write error (other than EPIPE) seen at any
 * point into EXIT_RUNTIME when the command would have succeeded. Returns the exit code. */
int cli_finish_output(int ex);

/* Strict parsers: the whole string must be a number within [lo, hi]. 0 or -EINVAL. */
int cli_parse_i64(const char *s, int64_t lo, int64_t hi, int64_t *ret);
int cli_parse_u64(const char *s, uint64_t *ret);
int cli_parse_float(const char *s, double lo, double hi, float *ret);

/* SIGINT/SIGTERM set this; long loops poll it. */
extern volatile int cli_interrupted;
void cli_install_signals(void);

/* Long-option ids shared by the commands. */
enum { OPT_CTX = 1000, OPT_KV_BUDGET, OPT_NO_BOS, OPT_TEMP, OPT_TOP_K, OPT_TOP_P, OPT_MIN_P, OPT_REPEAT_PENALTY,
       OPT_REPEAT_LAST_N, OPT_SEED, OPT_STOP, OPT_TOKENS, OPT_ALL, OPT_CHUNK, OPT_SOCKET, OPT_JSON, OPT_SESSION,
       OPT_LOGPROBS, OPT_SYSTEM, OPT_INT8, OPT_EXACT, OPT_KV_TYPE, OPT_TIMEOUT, OPT_CONNECT_TIMEOUT };

/* Sampling options of generate and chat (in-process and remote alike). */
#include "sample.h"
#include "engine_limits.h"
typedef struct GenerateOpts {
        int64_t n_predict;
        SamplerParams sp;
        int seed_given;
        const char *stops[SAMPLE_MAX_STOPS];
        int n_stops;
} GenerateOpts;
#define GENERATE_OPTS_DEFAULTS ((GenerateOpts){ .n_predict = 256, .sp = SAMPLER_DEFAULTS })
#define SAMPLING_LONG_OPTS                                                                                        \
        { "n-predict", required_argument, NULL, 'n' }, { "temp", required_argument, NULL, OPT_TEMP },             \
        { "top-k", required_argument, NULL, OPT_TOP_K }, { "top-p", required_argument, NULL, OPT_TOP_P },         \
        { "min-p", required_argument, NULL, OPT_MIN_P },                                                          \
        { "repeat-penalty", required_argument, NULL, OPT_REPEAT_PENALTY },                                        \
        { "repeat-last-n", required_argument, NULL, OPT_REPEAT_LAST_N },                                          \
        { "seed", required_argument, NULL, OPT_SEED }, { "stop", required_argument, NULL, OPT_STOP }
#define SAMPLING_OPTS_HELP                                                                \
        "  -n, --n-predict N    tokens to generate (default 256; -1 = until EOS)\n"      \
        "  --temp T             temperature (default 0.8; 0 = greedy)\n"                 \
        "  --top-k K            (default 40; 0 = off)\n"                                 \
        "  --top-p P            (default 0.95; 1 = off)\n"                               \
        "  --min-p P            (default 0.05; 0 = off)\n"                               \
        "  --repeat-penalty X   (default 1.0 = off)\n"                                   \
        "  --repeat-last-n N    tokens the penalty looks back (default 64)\n"            \
        "  --seed N             random seed (default: random)\n"                         \
        "  --stop STR           stop before STR (repeatable; STR is not printed)\n"
/* Options of the in-process model commands (-m) and of the commands that talk to mixd. */
#define MODEL_OPTS_HELP                                                                                         \
        "  -m, --model FILE     GGUF model file (required)\n"                                                   \
        "  --ctx N              positions a full-attention session keeps before rolling\n"                      \
        "  --kv-budget BYTES    most bytes of KV cache (default 4 GiB)\n"                                       \
        "  --kv-type TYPE       KV cache numbers: f16 (default), q8_0 (half the bytes) or f32\n"                \
        "  -t, --threads N      compute threads (default: online CPUs)\n"                                       \
        "  --exact              float activations everywhere: the exact reference path (2-3x slower;\n"         \
        "                       the default quantizes activations to 8 bits for quantized weights)\n"          \
        "  --int8               deprecated, does nothing: 8-bit activations are the default\n"
#define REMOTE_OPTS_HELP                                                                                        \
        "  --socket PATH        daemon socket (default: $MIXD_SOCKET, /run/mixd/mixd.sock,\n"                   \
        "                       $XDG_RUNTIME_DIR/mixd.sock)\n"                                                  \
        "  --json               print JSON (one object per line)\n"                                             \
        "  --timeout S          give up when mixd stays silent S seconds (default 30; 0 = never)\n"             \
        "  --connect-timeout S  give up when mixd accepts no connection in S seconds (default 5)\n"
/* The help of generate and tokenize, which run in-process with -m and through mixd without:
 * the same text either way, every option of both. */
void generate_usage(void);
void tokenize_usage(void);
/* Before reading a prompt or text from stdin: when stdin is a terminal, say so on stderr (what
 * is being read, and that Ctrl-D ends it), so a command waiting there is not mistaken for hung. */
void cli_stdin_hint(const char *what);
/* After Ctrl-C ends output on a terminal: end the line, so the shell's prompt starts on a new one. */
void cli_newline_after_interrupt(void);

/* 1 if c was a sampling option (*ret_exit set on a bad value), else 0. */
int sampling_opt_parse(int c, const char *arg, GenerateOpts *g, int *ret_exit);
/* Pick a random seed unless one was given. */
void sampling_opt_finish(GenerateOpts *g);

/* Append s as a JSON string literal (quoted, escaped) to stdout's buffer. */
void cli_json_string(FILE *out, const char *s, size_t len);

int cmd_tokenize(int argc, char **argv);
int cmd_tokenize_local(int argc, char **argv);
int cmd_tokenize_remote(int argc, char **argv);
int cmd_generate(int argc, char **argv);
int cmd_generate_local(int argc, char **argv);
int cmd_generate_remote(int argc, char **argv);
int cmd_chat(int argc, char **argv);
int cmd_score(int argc, char **argv);
int cmd_status(int argc, char **argv);
int cmd_experts(int argc, char **argv);
int cmd_sessions(int argc, char **argv);
int cmd_session(int argc, char **argv);
int cmd_shutdown(int argc, char **argv);
int cmd_logits(int argc, char **argv);
int cmd_perplexity(int argc, char **argv);
int cmd_bench(int argc, char **argv);
