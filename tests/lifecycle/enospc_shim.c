/* tests/lifecycle/enospc_shim.c — an LD_PRELOAD shim for the "disk full on save" test:
 * write(2) to any file whose name contains ".tmp-" fails with ENOSPC. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

ssize_t write(int fd, const void *buf, size_t n) {
        static ssize_t (*real_write)(int, const void *, size_t);
        char link[64], target[4096];
        if (!real_write)
                real_write = (ssize_t(*)(int, const void *, size_t))dlsym(RTLD_NEXT, "write");
        snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
        ssize_t len = readlink(link, target, sizeof(target) - 1);
        if (len > 0) {
                target[len] = '\0';
                if (strstr(target, ".tmp-")) {
                        errno = ENOSPC;
                        return -1;
                }
        }
        return real_write(fd, buf, n);
}
