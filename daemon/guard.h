/* daemon/guard.h — survives the model file being truncated while mapped. A read of a page
 * that no longer exists raises SIGBUS; the handler maps a zero page there (so the faulting
 * thread carries on with garbage it will not be allowed to return) and raises a flag. The
 * scheduler checks the flag after every batch and fails that batch's requests with a clear
 * error; the daemon then refuses compute until a reload. Install/arm: loop thread; the
 * handler: any thread. */
#pragma once
#include <stdbool.h>
#include <stddef.h>

int guard_install(void);
/* The mapping to protect (NULL, 0: none). */
void guard_arm(const void *base, size_t size);
/* True once a read past the end of the (shrunk) file happened; guard_arm clears it. */
bool guard_tripped(void);
