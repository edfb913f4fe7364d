/* proto/proto_error.c — filling a ProtoError. Any thread (touches only the caller's struct). */
#include "proto_error.h"

#include <stdarg.h>
#include <stdio.h>

int proto_error_set(ProtoError *err, int r, const char *code, bool fatal, const char *fmt, ...) {
        if (err) {
                va_list ap;

                err->code = code;
                err->fatal = fatal;
                va_start(ap, fmt);
                vsnprintf(err->message, sizeof(err->message), fmt, ap);
                va_end(ap);
        }
        return r;
}
