/* client/cli.h — what mixctl's commands share: exit codes, error reporting, stdin and
 * stdout helpers, strict number parsing. Main thread only. */
#pragma once
#include <stddef.h>
#include <stdint.h>

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

/* Write to stdout, unbuffered. A closed pipe sets cli_stdout_closed and returns -EPIPE. */
extern volatile int cli_stdout_closed;
int cli_write(const void *buf, size_t len);

/* Strict parsers: the whole string must be a number within [lo, hi]. 0 or -EINVAL. */
int cli_parse_i64(const char *s, int64_t lo, int64_t hi, int64_t *ret);
int cli_parse_u64(const char *s, uint64_t *ret);
int cli_parse_float(const char *s, double lo, double hi, float *ret);

/* SIGINT/SIGTERM set this; long loops poll it. */
extern volatile int cli_interrupted;
void cli_install_signals(void);

int cmd_tokenize(int argc, char **argv);
int cmd_generate(int argc, char **argv);
int cmd_logits(int argc, char **argv);
int cmd_perplexity(int argc, char **argv);
