/* daemon/config.h — mixd's runtime settings: one table (name, type, bounds, default, help)
 * read from the config file and then the command line, which overrides it. Main thread. */
#pragma once
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

typedef struct Config {
        char *model;                 /* GGUF path */
        char *socket_path;           /* Unix socket to listen on (unless socket-activated) */
        char *admin_group;           /* members (with root and the daemon's user) are administrators */
        char *numa;                  /* "auto" or "off" */
        char *state_dir;             /* where sessions are saved at stop (default $STATE_DIRECTORY) */
        uint64_t threads;            /* worker threads */
        uint64_t kv_budget;          /* bytes of KV cache, all sessions */
        char *kv_type;               /* "f16", "q8_0" or "f32": KV cache storage (NULL: f16) */
        uint64_t max_sessions;       /* named sessions, all users */
        uint64_t max_sessions_per_uid;
        uint64_t max_connections;
        uint64_t max_connections_per_uid; /* for users other than administrators */
        uint64_t admin_connections;  /* of max_connections, kept for administrators */
        uint64_t frame_timeout;      /* seconds */
        uint64_t connection_idle_timeout; /* seconds (0: never) */
        uint64_t max_prompt_tokens;
        uint64_t max_queued_bytes;   /* bytes requests in progress hold, all users */
        uint64_t max_queued_bytes_per_uid;
        uint64_t session_capacity;   /* positions per full-attention session (0 = model context) */
        uint64_t idle_timeout;       /* seconds */
        uint64_t request_timeout;    /* seconds */
        uint64_t unread_timeout;     /* seconds (0: never) */
        uint64_t socket_mode;        /* permission bits of a socket we create (octal in text) */
        uint64_t exact;              /* 1: float activations everywhere (the exact path) */
        uint64_t int8;               /* deprecated: 0 means exact = 1 */
        char *hugepages;             /* "auto" or "off": re-read the model for 2 MiB pages at load */
        uint64_t cluster;            /* 1: one rank of an mpirun job (docs/CLUSTER.md) */
} Config;

void config_defaults(Config *c);
void config_free(Config *c);
/* "key = value" lines, '#' comments. -ENOENT when the file is missing; -EINVAL with
 * *ret_line set (and a message in err) on a bad line. */
int config_load_file(Config *c, const char *path, char *err, size_t errlen);
/* Parse argv (long options named like the table). Returns 0, 1 when --help/--version was
 * printed, or -EINVAL with a message in err. */
int config_parse_args(Config *c, int argc, char **argv, char *err, size_t errlen);
void config_usage(FILE *out);
