/* client/cli.c — shared helpers of mixctl's commands (see cli.h). Main thread only,
 * except the signal handler, which only sets a flag. */
#include "cli.h"

#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

volatile int cli_stdout_closed;
volatile int cli_interrupted;
static int stdout_error; /* errno of the first failed write to stdout other than EPIPE, reported */

void cli_error(const char *fmt, ...) {
        va_list ap;
        fputs("mixctl: ", stderr);
        va_start(ap, fmt);
        vfprintf(stderr, fmt, ap);
        va_end(ap);
        fputc('\n', stderr);
}

static int read_fd(int fd, size_t max, char **ret_buf, size_t *ret_len) {
        size_t cap = 4096, len = 0;
        char *buf = malloc(cap + 1);
        if (!buf)
                return -ENOMEM;
        for (;;) {
                if (len == cap) {
                        if (cap >= max) {
                                free(buf);
                                return -E2BIG;
                        }
                        cap = cap * 2 > max ? max : cap * 2;
                        char *nb = realloc(buf, cap + 1);
                        if (!nb) {
                                free(buf);
                                return -ENOMEM;
                        }
                        buf = nb;
                }
                ssize_t n = read(fd, buf + len, cap - len);
                if (n < 0) {
                        if (errno == EINTR && !cli_interrupted)
                                continue;
                        int r = errno == EINTR ? -EINTR : -errno;
                        free(buf);
                        return r;
                }
                if (n == 0)
                        break;
                len += (size_t)n;
        }
        buf[len] = '\0';
        *ret_buf = buf;
        *ret_len = len;
        return 0;
}

int cli_read_stdin(size_t max, char **ret_buf, size_t *ret_len) {
        return read_fd(STDIN_FILENO, max, ret_buf, ret_len);
}

int cli_read_file(const char *path, size_t max, char **ret_buf, size_t *ret_len) {
        FILE *f = fopen(path, "rb");
        if (!f)
                return -errno;
        int r = read_fd(fileno(f), max, ret_buf, ret_len);
        fclose(f);
        return r;
}

int cli_write(const void *buf, size_t len) {
        const char *p = buf;
        if (cli_stdout_closed)
                return -EPIPE;
        if (stdout_error)
                return -stdout_error;
        while (len > 0) {
                ssize_t n = write(STDOUT_FILENO, p, len);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        if (errno == EPIPE)
                                cli_stdout_closed = 1;
                        return -errno;
                }
                p += n;
                len -= (size_t)n;
        }
        return 0;
}

int cli_write_error(int err) {
        if (err == -EPIPE) {
                cli_stdout_closed = 1;
                return EXIT_OK;
        }
        if (!stdout_error) {
                stdout_error = -err;
                cli_error("cannot write to standard output: %s", strerror(-err));
        }
        return EXIT_RUNTIME;
}

int cli_stdout_usable(void) {
        return !cli_stdout_closed && !stdout_error;
}

int cli_finish_output(int ex) {
        errno = 0;
        if (fflush(stdout) != 0 || ferror(stdout)) {
                const int e = errno ? errno : EIO;
                if (e != EPIPE || stdout_error)
                        cli_write_error(-e);
        }
        return stdout_error && ex == EXIT_OK ? EXIT_RUNTIME : ex;
}

void cli_stdin_hint(const char *what) {
        if (isatty(STDIN_FILENO))
                fprintf(stderr, "mixctl: reading the %s from the terminal; end it with Ctrl-D on a line of its own "
                                "(or give it as an argument, or pipe it in)\n", what);
}

void cli_newline_after_interrupt(void) {
        if (isatty(STDOUT_FILENO) && cli_stdout_usable())
                cli_write("\n", 1);
        else if (isatty(STDERR_FILENO))
                fputc('\n', stderr);
}

int cli_parse_i64(const char *s, int64_t lo, int64_t hi, int64_t *ret) {
        char *end;
        errno = 0;
        long long v = strtoll(s, &end, 10);
        if (errno || end == s || *end || v < lo || v > hi)
                return -EINVAL;
        *ret = v;
        return 0;
}

int cli_parse_u64(const char *s, uint64_t *ret) {
        char *end;
        if (*s == '-' || *s == '\0')
                return -EINVAL;
        errno = 0;
        unsigned long long v = strtoull(s, &end, 10);
        if (errno || *end)
                return -EINVAL;
        *ret = v;
        return 0;
}

int cli_parse_float(const char *s, double lo, double hi, float *ret) {
        char *end;
        errno = 0;
        double v = strtod(s, &end);
        if (errno || end == s || *end || !isfinite(v) || v < lo || v > hi)
                return -EINVAL;
        *ret = (float)v;
        return 0;
}

static void on_signal(int sig) {
        (void)sig;
        cli_interrupted = 1;
}

void cli_install_signals(void) {
        struct sigaction sa = { .sa_handler = on_signal };
        sigemptyset(&sa.sa_mask);
        sigaction(SIGINT, &sa, NULL);
        sigaction(SIGTERM, &sa, NULL);
        signal(SIGPIPE, SIG_IGN);
}

void cli_json_string(FILE *out, const char *s, size_t len) {
        fputc('"', out);
        for (size_t i = 0; i < len; i++) {
                const unsigned char ch = (unsigned char)s[i];
                switch (ch) {
                case '"': fputs("\\\"", out); break;
                case '\\': fputs("\\\\", out); break;
                case '\n': fputs("\\n", out); break;
                case '\r': fputs("\\r", out); break;
                case '\t': fputs("\\t", out); break;
                default:
                        if (ch < 0x20 || ch == 0x7f)
                                fprintf(out, "\\u%04x", ch);
                        else
                                fputc(ch, out);
                }
        }
        fputc('"', out);
}
