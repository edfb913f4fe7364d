/* daemon/config.c — the settings table and its two readers (config file, command line).
 * Every number is range-checked against the table's bounds. Main thread, at start. */
#include "config.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "daemon_limits.h"

/* SET_AUTO_OFF: a string that must be "auto" or "off"; SET_KV_TYPE: one of KV_TYPE_CHOICES */
typedef enum { SET_STRING, SET_AUTO_OFF, SET_KV_TYPE, SET_UINT, SET_BYTES, SET_OCTAL } SettingType;
#define KV_TYPE_CHOICES "f16|q8_0|f32" /* engine/kv.h's names */

typedef struct Setting {
        const char *name;
        SettingType type;
        size_t offset;
        uint64_t min, max;
        const char *help;
} Setting;

/* the types held as a char * in Config */
static bool holds_string(SettingType t) {
        return t == SET_STRING || t == SET_AUTO_OFF || t == SET_KV_TYPE;
}

/* Whether value is one of the '|'-separated words of choices. */
static bool is_choice(const char *choices, const char *value) {
        const size_t len = strlen(value);
        for (const char *p = choices; *p;) {
                const char *bar = strchr(p, '|');
                const size_t n = bar ? (size_t)(bar - p) : strlen(p);
                if (n == len && strncmp(p, value, n) == 0)
                        return true;
                p += n + (bar != NULL);
        }
        return false;
}

#define U(field) offsetof(Config, field)
static const Setting settings[] = {
        { "model", SET_STRING, U(model), 0, 0, "GGUF model file to serve" },
        { "socket", SET_STRING, U(socket_path), 0, 0,
          "Unix socket path (default /run/mixd/mixd.sock as root, else $XDG_RUNTIME_DIR/mixd.sock)" },
        { "admin-group", SET_STRING, U(admin_group), 0, 0,
          "group of administrators (with root and the daemon's user): shutdown, every session, reserved connections" },
        { "numa", SET_AUTO_OFF, U(numa), 0, 0,
          "auto: place experts and pin threads by NUMA node (when there are several); off: don't" },
        { "hugepages", SET_AUTO_OFF, U(hugepages), 0, 0,
          "auto: at load, re-read a model that is not mapped with 2 MiB pages so it is (faster decode); off: don't" },
        { "state-dir", SET_STRING, U(state_dir), 0, 0,
          "directory for sessions saved at stop and restored at start (default $STATE_DIRECTORY; 'none': not kept)" },
        { "threads", SET_UINT, U(threads), 1, DAEMON_MAX_THREADS, "worker threads (default: online CPUs)" },
        { "kv-budget", SET_BYTES, U(kv_budget), 1 << 20, 1ull << 46, "bytes of KV cache for all sessions (K/M/G suffixes)" },
        { "kv-type", SET_KV_TYPE, U(kv_type), 0, 0,
          "KV cache numbers: f16 (default), q8_0 (about half the bytes of f16) or f32" },
        { "max-sessions", SET_UINT, U(max_sessions), 1, 1 << 20, "named sessions, all users" },
        { "max-sessions-per-uid", SET_UINT, U(max_sessions_per_uid), 1, 1 << 20, "named sessions per user" },
        { "max-connections", SET_UINT, U(max_connections), 1, 1 << 16, "open client connections" },
        { "max-connections-per-uid", SET_UINT, U(max_connections_per_uid), 1, 1 << 16,
          "connections one user may hold (administrators: no per-user limit)" },
        { "admin-connections", SET_UINT, U(admin_connections), 0, 1 << 16,
          "of max-connections, this many only administrators may take" },
        { "frame-timeout", SET_UINT, U(frame_timeout), 1, 1 << 20,
          "seconds a frame may take from its first byte to its last before the connection is closed" },
        { "connection-idle-timeout", SET_UINT, U(connection_idle_timeout), 0, 1 << 30,
          "seconds a connection with nothing in flight may stay silent before it is closed (0: never)" },
        { "max-prompt-tokens", SET_UINT, U(max_prompt_tokens), 1, DAEMON_MAX_PROMPT_TOKENS,
          "tokens in one prompt or text (at most what one tokenize reply can carry)" },
        { "max-queued-bytes", SET_BYTES, U(max_queued_bytes), 1 << 20, 1ull << 40,
          "bytes the requests in progress (waiting or running) of all users hold (K/M/G suffixes)" },
        { "max-queued-bytes-per-uid", SET_BYTES, U(max_queued_bytes_per_uid), 1 << 16, 1ull << 40,
          "bytes the requests in progress of one user hold (K/M/G suffixes)" },
        { "session-capacity", SET_UINT, U(session_capacity), 0, 1 << 24,
          "positions a full-attention session keeps before rolling (0 = model context)" },
        { "idle-timeout", SET_UINT, U(idle_timeout), 1, 1 << 30, "seconds before an idle session is dropped" },
        { "request-timeout", SET_UINT, U(request_timeout), 1, 1 << 30,
          "seconds one request may run (or wait for room in the KV budget)" },
        { "unread-timeout", SET_UINT, U(unread_timeout), 0, 1 << 30,
          "seconds a client may read nothing while output waits for it; then its requests are stopped (0: never)" },
        { "exact", SET_UINT, U(exact), 0, 1,
          "1: float activations everywhere, the exact reference path (2-3x slower); 0: 8-bit activations" },
        { "int8", SET_UINT, U(int8), 0, 1, "deprecated: 'int8 = 0' is 'exact = 1' (8-bit activations are the default)" },
        { "socket-mode", SET_OCTAL, U(socket_mode), 0, 0777, "permissions of a socket mixd creates (octal)" },
        { "cluster", SET_UINT, U(cluster), 0, 1,
          "1: run as one rank of an mpirun job, the experts spread over the ranks (builds with Open MPI)" },
};
#undef U

void config_defaults(Config *c) {
        long cpus = sysconf(_SC_NPROCESSORS_ONLN);
        memset(c, 0, sizeof(*c));
        c->threads = cpus > 0 ? (uint64_t)cpus : 1;
        if (c->threads > DAEMON_MAX_THREADS)
                c->threads = DAEMON_MAX_THREADS;
        c->kv_budget = DAEMON_KV_BUDGET_DEFAULT;
        c->max_sessions = DAEMON_MAX_SESSIONS_DEFAULT;
        c->max_sessions_per_uid = DAEMON_MAX_SESSIONS_PER_UID;
        c->max_connections = DAEMON_MAX_CONNECTIONS_DEFAULT;
        c->max_connections_per_uid = DAEMON_MAX_CONNECTIONS_PER_UID_DEFAULT;
        c->admin_connections = DAEMON_ADMIN_CONNECTIONS_DEFAULT;
        c->frame_timeout = DAEMON_FRAME_TIMEOUT_S;
        c->connection_idle_timeout = DAEMON_CONNECTION_IDLE_TIMEOUT_S;
        c->max_prompt_tokens = DAEMON_MAX_PROMPT_TOKENS;
        c->max_queued_bytes = DAEMON_QUEUED_BYTES_DEFAULT;
        c->max_queued_bytes_per_uid = DAEMON_QUEUED_BYTES_PER_UID_DEFAULT;
        c->session_capacity = DAEMON_SESSION_CAPACITY_DEFAULT;
        c->idle_timeout = DAEMON_IDLE_SESSION_TIMEOUT_S;
        c->request_timeout = DAEMON_REQUEST_TIMEOUT_S;
        c->unread_timeout = DAEMON_UNREAD_TIMEOUT_S;
        c->socket_mode = 0660;
        c->int8 = 1;
}

void config_free(Config *c) {
        for (size_t i = 0; i < sizeof(settings) / sizeof(settings[0]); i++)
                if (holds_string(settings[i].type)) {
                        char **p = (char **)((char *)c + settings[i].offset);
                        free(*p);
                        *p = NULL;
                }
}

static const Setting *find_setting(const char *name, size_t len) {
        for (size_t i = 0; i < sizeof(settings) / sizeof(settings[0]); i++) {
                const char *s = settings[i].name;
                if (strlen(s) != len)
                        continue;
                size_t j = 0;
                /* "kv_budget" and "kv-budget" are the same key */
                while (j < len && (s[j] == name[j] || (s[j] == '-' && name[j] == '_')))
                        j++;
                if (j == len)
                        return &settings[i];
        }
        return NULL;
}

static int parse_number(const char *v, SettingType type, uint64_t *ret) {
        char *end;
        if (*v == '-' || *v == '\0')
                return -EINVAL;
        errno = 0;
        unsigned long long n = strtoull(v, &end, type == SET_OCTAL ? 8 : 10);
        if (errno || end == v)
                return -EINVAL;
        if (type == SET_BYTES && *end) {
                unsigned shift = 0;
                switch (*end) {
                case 'K': case 'k': shift = 10; break;
                case 'M': case 'm': shift = 20; break;
                case 'G': case 'g': shift = 30; break;
                case 'T': case 't': shift = 40; break;
                default: return -EINVAL;
                }
                end++;
                if (*end == 'i' && end[1] == 'B')
                        end += 2;
                else if (*end == 'B')
                        end++;
                if (n > (UINT64_MAX >> shift))
                        return -EINVAL;
                n <<= shift;
        }
        if (*end)
                return -EINVAL;
        *ret = n;
        return 0;
}

static int apply(Config *c, const Setting *s, const char *value, char *err, size_t errlen) {
        void *field = (char *)c + s->offset;
        if (s->type == SET_AUTO_OFF && strcmp(value, "auto") != 0 && strcmp(value, "off") != 0) {
                snprintf(err, errlen, "%s: '%s' is neither auto nor off", s->name, value);
                return -EINVAL;
        }
        if (s->type == SET_KV_TYPE && !is_choice(KV_TYPE_CHOICES, value)) {
                snprintf(err, errlen, "%s: '%s' is not one of %s", s->name, value, KV_TYPE_CHOICES);
                return -EINVAL;
        }
        if (holds_string(s->type)) {
                char *dup = strdup(value);
                if (!dup)
                        return -ENOMEM;
                free(*(char **)field);
                *(char **)field = dup;
                return 0;
        }
        uint64_t v;
        if (parse_number(value, s->type, &v) < 0 || v < s->min || v > s->max) {
                snprintf(err, errlen, "%s: '%s' is not a%s number in %llu..%llu", s->name, value,
                         s->type == SET_OCTAL ? "n octal" : "", (unsigned long long)s->min, (unsigned long long)s->max);
                return -EINVAL;
        }
        *(uint64_t *)field = v;
        return 0;
}

static char *trim(char *s) {
        while (*s == ' ' || *s == '\t')
                s++;
        char *e = s + strlen(s);
        while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\n' || e[-1] == '\r'))
                *--e = '\0';
        return s;
}

int config_load_file(Config *c, const char *path, char *err, size_t errlen) {
        FILE *f = fopen(path, "re");
        char line[4096];
        unsigned lineno = 0;
        if (!f)
                return -errno;
        while (fgets(line, sizeof(line), f)) {
                lineno++;
                char *l = trim(line);
                if (*l == '#' || *l == '\0')
                        continue;
                char *eq = strchr(l, '=');
                if (!eq) {
                        snprintf(err, errlen, "%s:%u: expected 'key = value'", path, lineno);
                        fclose(f);
                        return -EINVAL;
                }
                *eq = '\0';
                char *key = trim(l), *value = trim(eq + 1);
                const Setting *s = find_setting(key, strlen(key));
                if (!s) {
                        snprintf(err, errlen, "%s:%u: unknown setting '%s'", path, lineno, key);
                        fclose(f);
                        return -EINVAL;
                }
                char sub[256];
                int r = apply(c, s, value, sub, sizeof(sub));
                if (r < 0) {
                        snprintf(err, errlen, "%s:%u: %s", path, lineno, sub);
                        fclose(f);
                        return r;
                }
        }
        fclose(f);
        return 0;
}

void config_usage(FILE *out) {
        fputs("usage: mixd [--config FILE] [--model FILE] [--socket PATH] [options]\n\n"
              "Serves a GGUF Mixtral-family model on a Unix socket (see mixctl).\n\noptions:\n"
              "  --config FILE              settings file (default /etc/mixd/mixd.conf when present)\n", out);
        for (size_t i = 0; i < sizeof(settings) / sizeof(settings[0]); i++) {
                const Setting *s = &settings[i];
                char arg[64];
                snprintf(arg, sizeof(arg), "--%s %s", s->name,
                         s->type == SET_KV_TYPE ? KV_TYPE_CHOICES : holds_string(s->type) ? "VALUE" : "N");
                fprintf(out, "  %-26s %s\n", arg, s->help);
        }
        fputs("  -h, --help                 this text\n  --version                  print the version\n"
              "Every option may also be set in the config file as 'name = value'.\n", out);
}

int config_parse_args(Config *c, int argc, char **argv, char *err, size_t errlen) {
        for (int i = 1; i < argc; i++) {
                const char *a = argv[i];
                if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
                        config_usage(stdout);
                        return 1;
                }
                if (!strcmp(a, "--version")) {
                        puts("mixd " MIXD_VERSION);
                        return 1;
                }
                if (strncmp(a, "--", 2) != 0) {
                        snprintf(err, errlen, "unexpected argument '%s'", a);
                        return -EINVAL;
                }
                const char *name = a + 2, *eq = strchr(name, '='), *value;
                size_t len = eq ? (size_t)(eq - name) : strlen(name);
                if (len == 6 && !strncmp(name, "config", 6)) {
                        i += eq ? 0 : 1; /* handled by the caller before the file is read */
                        continue;
                }
                const Setting *s = find_setting(name, len);
                if (!s) {
                        snprintf(err, errlen, "unknown option '%s' (see --help)", a);
                        return -EINVAL;
                }
                const int is_switch = s->type == SET_UINT && s->min == 0 && s->max == 1;
                if (eq) {
                        value = eq + 1;
                } else if (is_switch && (i + 1 >= argc || !strncmp(argv[i + 1], "--", 2))) {
                        value = "1"; /* a bare on/off option: --exact */
                } else if (i + 1 < argc) {
                        value = argv[++i];
                } else {
                        snprintf(err, errlen, "option --%s needs a value", s->name);
                        return -EINVAL;
                }
                int r = apply(c, s, value, err, errlen);
                if (r < 0)
                        return r;
        }
        return 0;
}
