/* tests/lifecycle/async_delay_shim.c — an LD_PRELOAD shim for the "late wake-up at shutdown"
 * test: uv_async_send called by any thread but the main one sleeps MIXD_TEST_ASYNC_DELAY_MS
 * milliseconds first, so the engine thread's last wake-up comes long after the loop has seen
 * the message it announces (the loop then finishes the last job and shuts down meanwhile). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

typedef struct uv_async_s uv_async_t;

int uv_async_send(uv_async_t *handle) {
        static int (*real_send)(uv_async_t *);
        if (!real_send)
                real_send = (int (*)(uv_async_t *))dlsym(RTLD_NEXT, "uv_async_send");
        const char *ms = getenv("MIXD_TEST_ASYNC_DELAY_MS");
        if (ms && gettid() != getpid()) {
                long n = atol(ms);
                struct timespec ts = { n / 1000, (n % 1000) * 1000000L };
                nanosleep(&ts, NULL);
        }
        return real_send(handle);
}
