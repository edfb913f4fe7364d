/* daemon/persist.c — session state files (see persist.h). Layout, little-endian:
 *   "MIXDSES\0" | u32 version | u32 kv type | u64 model id | char id[24] | u32 uid |
 *   u32 n_layer, kv_dim, n_sink, n_roll, n_vocab | i64 n_pos | u64 slots written |
 *   (version 3:) i64 text base | u32 text fresh | u32 0 | u64 text tokens n | u64 text bytes |
 *   K [n_layer][slots][kv_dim] in the kv type | V (same) | last logits [n_vocab] f32 |
 *   (version 3:) text tokens [n] i32 | text bytes (UTF-8) |
 *   u64 FNV-1a of all before
 * The kv type is a ggml type id (engine/kv.h: F32 0, F16 1, Q8_0 8; a slot's kv_dim numbers
 * are its heads side by side, for Q8_0 kv_dim / 32 blocks). Version 1 files had 0 there
 * (reserved) and F32 numbers: they are read as F32. A file whose type is not the daemon's
 * kv-type is converted as it is read (its numbers decoded, then rounded to the daemon's type).
 * The text fields are the session's open segment (engine/session.h SessionText), so a
 * restored session continues its text as it would have; a version 1 or 2 file has none: the
 * next turn's text follows the restored cache as a continuation.
 */
#include "persist.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine_limits.h"
#include "log.h"
#include "tokenizer.h"

#define STATE_MAGIC "MIXDSES"
#define STATE_VERSION 3u    /* 3: the session's text; 2: the kv type field; 1: F32 only. All read */
#define STATE_PREFIX "session-"
#define STATE_SUFFIX ".state"
#define PERSIST_ROWS 256u /* cache slots converted per write or read (the cache keeps heads apart) */

typedef struct StateHeader {
        char magic[8];
        uint32_t version;
        uint32_t kv_type;    /* version >= 2; version 1: reserved, F32 */
        uint64_t model_id;
        char id[24];
        uint32_t uid;
        uint32_t n_layer, kv_dim, n_sink, n_roll, n_vocab;
        int64_t n_pos;
        uint64_t slots;      /* slots written per layer: min(n_pos, n_slots) */
} StateHeader;
_Static_assert(sizeof(StateHeader) == 88, "state header layout");

/* Version 3: right after StateHeader. */
typedef struct StateText {
        int64_t base;        /* first position of the open segment */
        uint32_t fresh;      /* 1: the segment starts a document */
        uint32_t reserved;   /* 0 */
        uint64_t n_tokens;   /* = n_pos - base */
        uint64_t len;        /* bytes of text */
} StateText;
_Static_assert(sizeof(StateText) == 32, "state text layout");

static uint64_t fnv1a(uint64_t h, const void *data, size_t n) {
        const uint8_t *p = data;
        for (size_t i = 0; i < n; i++) {
                h ^= p[i];
                h *= 0x100000001b3ull;
        }
        return h;
}
#define FNV_OFFSET 0xcbf29ce484222325ull

int persist_model_id(const char *path, const GGUFFile *f, uint64_t *ret_id) {
        struct stat st;
        if (stat(path, &st) < 0)
                return -errno;
        uint64_t h = fnv1a(FNV_OFFSET, f->base, f->data_offset);
        uint64_t meta[2] = { (uint64_t)st.st_size, (uint64_t)st.st_mtim.tv_sec * 1000000000ull + (uint64_t)st.st_mtim.tv_nsec };
        *ret_id = fnv1a(h, meta, sizeof(meta));
        return 0;
}

/* write(2) all of it, folding it into the checksum. */
static int write_all(int fd, const void *data, size_t n, uint64_t *hash) {
        const uint8_t *p = data;
        *hash = fnv1a(*hash, data, n);
        while (n > 0) {
                ssize_t w = write(fd, p, n);
                if (w < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                p += w;
                n -= (size_t)w;
        }
        return 0;
}

static int save_one(const DSession *ds, const char *dir, uint64_t model_id) {
        const Session *s = ds->s;
        const KVCache *kv = s->kv;
        char path[4096], tmp[4096];
        StateHeader h = { .magic = STATE_MAGIC, .version = STATE_VERSION, .kv_type = kv->type, .model_id = model_id,
                          .uid = ds->uid,
                          .n_layer = kv->n_layer, .kv_dim = kv->kv_dim, .n_sink = kv->n_sink, .n_roll = kv->n_roll,
                          .n_vocab = s->m->cfg.n_vocab, .n_pos = kv->n_pos };
        h.slots = (uint64_t)kv->n_pos < kv->n_slots ? (uint64_t)kv->n_pos : kv->n_slots;
        const int32_t *text_tokens;
        const char *text;
        size_t n_text_tokens, text_len;
        int fresh;
        StateText ht = { 0 };
        session_text_view(s, &ht.base, &fresh, &text_tokens, &n_text_tokens, &text, &text_len);
        ht.fresh = (uint32_t)fresh;
        ht.n_tokens = n_text_tokens;
        ht.len = text_len;
        snprintf(h.id, sizeof(h.id), "%s", ds->id);
        snprintf(path, sizeof(path), "%s/" STATE_PREFIX "%s" STATE_SUFFIX, dir, ds->id);
        snprintf(tmp, sizeof(tmp), "%s/.tmp-%s", dir, ds->id);

        const size_t slot_bytes = (size_t)kv->n_head_kv * kv->row_bytes;
        uint8_t *rows = malloc(PERSIST_ROWS * slot_bytes);
        if (!rows)
                return -ENOMEM;
        int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        if (fd < 0) {
                free(rows);
                return -errno;
        }
        uint64_t hash = FNV_OFFSET;
        int r = write_all(fd, &h, sizeof(h), &hash);
        if (r == 0)
                r = write_all(fd, &ht, sizeof(ht), &hash);
        for (int which = 0; which < 2 && r == 0; which++) {
                const uint8_t *base = which ? kv->v : kv->k;
                for (uint32_t l = 0; l < kv->n_layer && r == 0; l++)
                        for (uint32_t s0 = 0; s0 < h.slots && r == 0; s0 += PERSIST_ROWS) {
                                const uint32_t n = h.slots - s0 < PERSIST_ROWS ? (uint32_t)(h.slots - s0) : PERSIST_ROWS;
                                kv_rows_out(kv, base, l, s0, n, rows);
                                r = write_all(fd, rows, (size_t)n * slot_bytes, &hash);
                        }
        }
        free(rows);
        if (r == 0)
                r = write_all(fd, s->last_logits, (size_t)h.n_vocab * sizeof(float), &hash);
        if (r == 0)
                r = write_all(fd, text_tokens, n_text_tokens * sizeof(int32_t), &hash);
        if (r == 0)
                r = write_all(fd, text, text_len, &hash);
        if (r == 0) {
                uint64_t sum = hash, ignored;
                r = write_all(fd, &sum, sizeof(sum), &ignored);
        }
        if (r == 0 && fsync(fd) < 0)
                r = -errno;
        if (close(fd) < 0 && r == 0)
                r = -errno;
        if (r == 0 && rename(tmp, path) < 0)
                r = -errno;
        if (r < 0)
                unlink(tmp);
        return r;
}

int persist_check_dir(const char *dir) {
        struct stat st;
        if (stat(dir, &st) < 0) {
                if (errno != ENOENT) {
                        log_error("state directory %s: %s", dir, strerror(errno));
                        return -errno;
                }
                if (mkdir(dir, 0700) < 0) {
                        const int e = errno;
                        log_error("state directory %s does not exist and cannot be created: %s%s", dir, strerror(e),
                                  e == ENOENT ? " (its parent directory does not exist)" : "");
                        return -e;
                }
                log_info("created the state directory %s", dir);
        } else if (!S_ISDIR(st.st_mode)) {
                log_error("state directory %s is not a directory", dir);
                return -ENOTDIR;
        }
        /* the probe's name starts as an interrupted save's does, so a leftover is removed at
         * the next start */
        char probe[4096];
        snprintf(probe, sizeof(probe), "%s/.tmp-probe-%ld", dir, (long)getpid());
        int fd = open(probe, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        if (fd < 0) {
                const int e = errno;
                log_error("state directory %s is not writable: %s", dir, strerror(e));
                return -e;
        }
        close(fd);
        unlink(probe);
        return 0;
}

unsigned persist_save_all(SessionTable *t, const char *dir, uint64_t model_id, unsigned *ret_total) {
        unsigned n = 0, total = 0;
        for (DSession *d = t->head; d; d = d->next) {
                if (d->ephemeral || d->busy || d->closing)
                        continue;
                total++;
                int r = save_one(d, dir, model_id);
                if (r < 0) {
                        log_error("cannot save session %s to %s: %s", d->id, dir, strerror(-r));
                        continue;
                }
                n++;
        }
        int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd >= 0) {
                fsync(dfd); /* the renames */
                close(dfd);
        }
        *ret_total = total;
        return n;
}

/* read(2) exactly n bytes, folding them into the checksum. */
static int read_all(int fd, void *data, size_t n, uint64_t *hash) {
        uint8_t *p = data;
        size_t left = n;
        while (left > 0) {
                ssize_t r = read(fd, p, left);
                if (r < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                if (r == 0)
                        return -EBADMSG; /* truncated */
                p += r;
                left -= (size_t)r;
        }
        if (hash)
                *hash = fnv1a(*hash, data, n);
        return 0;
}

/* The id field: "s-" and 16 lowercase hex digits (what sessions_open makes; it also names
 * the file written at the next stop, so nothing else may pass), NUL-padded. */
static bool valid_id(const char id[24]) {
        if (strncmp(id, "s-", 2) != 0)
                return false;
        for (size_t i = 2; i < SESSION_ID_LEN; i++)
                if (!((id[i] >= '0' && id[i] <= '9') || (id[i] >= 'a' && id[i] <= 'f')))
                        return false;
        for (size_t i = SESSION_ID_LEN; i < 24; i++)
                if (id[i] != '\0')
                        return false;
        return true;
}

/* Bytes a file with these headers must have: headers, K and V of n_layer x slots rows of
 * slot_bytes, n_vocab logits, the text (version 3), checksum. -EOVERFLOW if that does not
 * fit in 64 bits. */
static int expected_size(const StateHeader *h, const StateText *ht, uint64_t slot_bytes, uint64_t *ret_size) {
        uint64_t kv, text, size;
        const uint64_t fixed = sizeof(*h) + (h->version >= 3 ? sizeof(*ht) : 0) + (uint64_t)h->n_vocab * sizeof(float) +
                               sizeof(uint64_t);
        if (__builtin_mul_overflow((uint64_t)h->n_layer, h->slots, &kv) || __builtin_mul_overflow(kv, slot_bytes, &kv) ||
            __builtin_mul_overflow(kv, (uint64_t)2, &kv) || __builtin_add_overflow(kv, fixed, &size) ||
            __builtin_mul_overflow(ht->n_tokens, (uint64_t)sizeof(int32_t), &text) ||
            __builtin_add_overflow(text, ht->len, &text) || __builtin_add_overflow(size, text, &size))
                return -EOVERFLOW;
        *ret_size = size;
        return 0;
}

/* Restore one file; on any mismatch returns < 0 with why set. Every header field is checked
 * against the model, the daemon's settings and the limits before anything is allocated,
 * and the file's size against the header; the numbers are checked as they are read. */
static int restore_one(SessionTable *t, const char *path, uint64_t model_id, uint64_t now_ms, const char **why) {
        StateHeader h;
        StateText ht = { 0 };
        uint64_t hash = FNV_OFFSET, sum;
        DSession *ds = NULL;
        uint8_t *rows = NULL, *file_rows = NULL;
        float *numbers = NULL;
        int32_t *text_tokens = NULL;
        char *text = NULL;
        struct stat st;
        int r, fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
        if (fd < 0) {
                *why = "cannot open";
                return -errno;
        }
        if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
                *why = "not a regular file";
                r = -EBADMSG;
                goto out;
        }
        if ((r = read_all(fd, &h, sizeof(h), &hash)) < 0) {
                *why = "truncated header";
                goto out;
        }
        r = -EBADMSG;
        if (memcmp(h.magic, STATE_MAGIC, 8) != 0) {
                *why = "not a session state file";
                goto out;
        }
        if (h.version < 1 || h.version > STATE_VERSION) {
                *why = "written by another version";
                goto out;
        }
        if (h.version >= 3 && (r = read_all(fd, &ht, sizeof(ht), &hash)) < 0) {
                *why = "truncated header";
                goto out;
        }
        r = -EBADMSG;
        const uint32_t file_type = h.version == 1 ? GGML_TYPE_F32 : h.kv_type;
        if (h.model_id != model_id) {
                *why = "saved with another model file";
                goto out;
        }
        const ModelConfig *c = &t->m->cfg;
        uint32_t file_row_bytes;
        if (kv_row_bytes(file_type, c->head_dim, &file_row_bytes) < 0) {
                *why = "unknown KV type, or one this model's head size cannot take";
                goto out;
        }
        if (!valid_id(h.id)) {
                *why = "invalid session id";
                goto out;
        }
        if (h.uid == (uint32_t)-1) {
                *why = "invalid owner uid";
                goto out;
        }
        if (h.n_layer != c->n_layer || h.kv_dim != c->n_head_kv * c->head_dim || h.n_vocab != c->n_vocab) {
                *why = "model shape (layers, KV width or vocabulary) differs from the model's";
                goto out;
        }
        if (h.n_pos < 0 || h.n_pos > KV_MAX_POSITION) {
                *why = "position count out of range";
                goto out;
        }
        if (h.slots != ((uint64_t)h.n_pos < (uint64_t)h.n_sink + h.n_roll ? (uint64_t)h.n_pos
                                                                         : (uint64_t)h.n_sink + h.n_roll)) {
                *why = "slot count inconsistent with the positions";
                goto out;
        }
        const uint64_t file_slot_bytes = (uint64_t)c->n_head_kv * file_row_bytes;
        uint64_t want_size;
        /* the text's own checks are session_text_restore's; these bound what is read */
        if (h.version >= 3 && (ht.base < 0 || ht.base > h.n_pos || ht.n_tokens != (uint64_t)(h.n_pos - ht.base) ||
                               ht.n_tokens > (uint64_t)h.n_sink + h.n_roll || ht.reserved != 0 ||
                               ht.len > ht.n_tokens * DETOK_MAX_OUT + 16)) {
                *why = "session text fields out of range";
                goto out;
        }
        if (expected_size(&h, &ht, file_slot_bytes, &want_size) < 0) {
                *why = "sizes in the header overflow";
                goto out;
        }
        if ((uint64_t)st.st_size != want_size) {
                *why = (uint64_t)st.st_size < want_size ? "truncated" : "size differs from what the header says";
                goto out;
        }
        h.id[sizeof(h.id) - 1] = '\0';
        r = sessions_restore(t, h.id, (uid_t)h.uid, now_ms, &ds);
        if (r < 0) {
                *why = r == -EEXIST ? "a session with this id is already live (a copied state file?)"
                                    : "no room under the session limits or KV budget";
                ds = NULL;
                goto out;
        }
        KVCache *kv = ds->s->kv;
        r = -EBADMSG;
        if (kv->n_sink != h.n_sink || kv->n_roll != h.n_roll) {
                *why = "cache geometry differs from this daemon's settings";
                goto out;
        }
        /* rows in the cache's type; with another type in the file, its rows and their numbers */
        const bool convert = file_type != kv->type;
        rows = malloc(PERSIST_ROWS * (size_t)kv->n_head_kv * kv->row_bytes);
        if (convert) {
                file_rows = malloc(PERSIST_ROWS * file_slot_bytes);
                numbers = malloc((size_t)PERSIST_ROWS * kv->kv_dim * sizeof(float));
        }
        if (!rows || (convert && (!file_rows || !numbers))) {
                r = -ENOMEM;
                *why = "out of memory";
                goto out;
        }
        for (int which = 0; which < 2; which++) {
                uint8_t *base = which ? kv->v : kv->k;
                for (uint32_t l = 0; l < kv->n_layer; l++)
                        for (uint32_t s0 = 0; s0 < h.slots; s0 += PERSIST_ROWS) {
                                const uint32_t n = h.slots - s0 < PERSIST_ROWS ? (uint32_t)(h.slots - s0) : PERSIST_ROWS;
                                const size_t count = (size_t)n * kv->kv_dim;
                                if ((r = read_all(fd, convert ? file_rows : rows, n * file_slot_bytes, &hash)) < 0) {
                                        *why = "truncated";
                                        goto out;
                                }
                                if (convert) {
                                        kv_decode(file_type, file_rows, count, numbers);
                                        kv_encode(kv->type, numbers, count, rows);
                                } else {
                                        kv_sanitize(kv->type, rows, count);
                                }
                                kv_rows_in(kv, base, l, s0, n, rows);
                        }
        }
        text_tokens = malloc(ht.n_tokens ? ht.n_tokens * sizeof(int32_t) : 1);
        text = malloc(ht.len ? ht.len : 1);
        if (!text_tokens || !text) {
                r = -ENOMEM;
                *why = "out of memory";
                goto out;
        }
        if ((r = read_all(fd, ds->s->last_logits, (size_t)h.n_vocab * sizeof(float), &hash)) < 0 ||
            (r = read_all(fd, text_tokens, ht.n_tokens * sizeof(int32_t), &hash)) < 0 ||
            (r = read_all(fd, text, ht.len, &hash)) < 0 || (r = read_all(fd, &sum, sizeof(sum), NULL)) < 0) {
                *why = "truncated";
                goto out;
        }
        uint8_t extra;
        if (sum != hash || read(fd, &extra, 1) != 0) {
                *why = "checksum mismatch";
                r = -EBADMSG;
                goto out;
        }
        for (uint32_t i = 0; i < h.n_vocab; i++)
                if (!isfinite(ds->s->last_logits[i])) {
                        *why = "non-finite logits";
                        r = -EBADMSG;
                        goto out;
                }
        kv->n_pos = h.n_pos;
        if (h.version >= 3) {
                r = session_text_restore(ds->s, ht.base, (int)ht.fresh, text_tokens, ht.n_tokens, text, ht.len);
                if (r < 0) {
                        *why = r == -ENOMEM ? "out of memory" : "session text inconsistent with the cache";
                        goto out;
                }
        } else {
                session_text_forget(ds->s); /* the text that follows continues the cache */
        }
        if (convert)
                log_info("session %s: KV cache converted from %s to %s as it was restored", ds->id,
                         kv_type_name(file_type), kv_type_name(kv->type));
        r = 0;
out:
        free(rows);
        free(file_rows);
        free(numbers);
        free(text_tokens);
        free(text);
        if (r < 0 && ds)
                sessions_close(t, ds);
        close(fd);
        return r;
}

int persist_restore_all(SessionTable *t, const char *dir, uint64_t model_id, uint64_t now_ms) {
        DIR *d = opendir(dir);
        int n = 0;
        if (!d)
                return errno == ENOENT ? 0 : -errno;
        struct dirent *e;
        while ((e = readdir(d))) {
                const size_t len = strlen(e->d_name), pl = strlen(STATE_PREFIX), sl = strlen(STATE_SUFFIX);
                if (!strncmp(e->d_name, ".tmp-", 5)) {
                        /* a save that never finished (killed mid-write): never valid */
                        char path[4096];
                        snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
                        log_warning("removing %s, left by an interrupted save", path);
                        unlink(path);
                        continue;
                }
                if (len <= pl + sl || strncmp(e->d_name, STATE_PREFIX, pl) != 0 ||
                    strcmp(e->d_name + len - sl, STATE_SUFFIX) != 0)
                        continue;
                char path[4096];
                const char *why = "";
                snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
                int r = restore_one(t, path, model_id, now_ms, &why);
                if (r < 0) {
                        log_warning("skipping session state %s: %s", path, why);
                        continue;
                }
                unlink(path); /* restored: from now on the live session is the truth */
                n++;
        }
        closedir(d);
        return n;
}
