/* daemon/persist.h — named sessions that survive a restart: at a graceful stop each one's KV
 * cache, last logits and text go to a checksummed, versioned state file (written to a temporary
 * name, then renamed); at start they come back. A file for another model, of another
 * version, truncated or corrupt is skipped with a log line. Loop thread only. */
#pragma once
#include <stdint.h>

#include "gguf.h"
#include "sessions.h"

/* Cheap identity of a model file: size, mtime and a hash of the header and tensor table
 * (never the gigabytes of weights). */
int persist_model_id(const char *path, const GGUFFile *f, uint64_t *ret_id);

/* Make sure sessions can be saved into dir, at start rather than at the stop that would lose
 * them: creates dir (mode 0700; its parent must exist) if it is missing, then creates and
 * removes a probe file in it. Logs what is wrong and returns -errno. */
int persist_check_dir(const char *dir);
/* Write every idle named session of t into dir (each failure logged; the others are still
 * attempted). Returns the number written; *ret_total: the number there were to write. */
unsigned persist_save_all(SessionTable *t, const char *dir, uint64_t model_id, unsigned *ret_total);
/* Restore every valid state file in dir into t (then delete it). Every field is checked
 * against the model, t's limits and KV_MAX_POSITION; a file whose id is already live, or
 * that does not fit without evicting a session, is skipped (and kept). Returns the number
 * restored. */
int persist_restore_all(SessionTable *t, const char *dir, uint64_t model_id, uint64_t now_ms);
