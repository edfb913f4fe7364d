/* daemon/log.c — "<N>message" lines to stderr (see log.h). */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <unistd.h>

static int max_priority = LOG_INFO;

void log_set_max_priority(int priority) {
        max_priority = priority;
}

void log_msg(int priority, const char *fmt, ...) {
        char line[1024];
        if (priority > max_priority)
                return;
        int n = snprintf(line, sizeof(line), "<%d>", priority);
        va_list ap;
        va_start(ap, fmt);
        int m = vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
        va_end(ap);
        size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);
        if (len > sizeof(line) - 2)
                len = sizeof(line) - 2;
        /* one line per message: newlines inside become spaces */
        for (size_t i = (size_t)n; i < len; i++)
                if (line[i] == '\n')
                        line[i] = ' ';
        line[len++] = '\n';
        ssize_t w = write(STDERR_FILENO, line, len);
        (void)w;
}
