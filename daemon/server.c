/* daemon/server.c — the loop: listening socket (ours or socket-activated), what the outbox
 * brings from the engine thread, housekeeping (timeouts, statistics, watchdog), signals, reload
 * and orderly shutdown (the engine thread is joined before the loop's handles close). Loop
 * thread. */
#include "server.h"

#include <errno.h>
#include <grp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <systemd/sd-daemon.h>
#include <time.h>
#include <unistd.h>

#include "guard.h"
#include "hugepage.h"
#include "log.h"
#include "persist.h"
#include "quant_int8.h"
#include "session.h"

static SchedSetup cluster_setup; /* fn NULL: not in the cluster mode (server_set_cluster) */
static struct Cluster *cluster_handle;

static void finish_reload(Server *srv);

/* Log once that the model file shrank under us. */
static void report_guard(Server *srv) {
        if (guard_tripped() && !srv->guard_reported) {
                srv->guard_reported = true;
                log_error("the model file %s shrank while mapped; requests fail until a reload (SIGHUP) or restart",
                          srv->cfg->model);
        }
}

/* A job has left the list. The shutdown or reload waiting for the last one goes on at the
 * next loop iteration (not from inside the job list's own calls); so does closing a
 * connection. */
static void on_job_end(void *data, uint64_t conn_id, bool answered) {
        Server *srv = data;
        Conn *c = conn_find(srv, conn_id);
        if (c) {
                c->n_jobs--;
                c->last_active_ms = now_ms();
                if (!answered)
                        conn_reply_lost(c); /* closed at the next drain's end: its client must not wait forever */
                else
                        conn_check_done(c); /* a half-closed client's last answer may be on its way */
        }
        if (srv->jobs.n == 0 && (srv->shutting_down || srv->reloading))
                outbox_kick(&srv->outbox);
}

/* Everything the engine thread (and the loop, for jobs the engine never had) queued since the
 * last wake-up. */
static void on_outbox(void *data, OutMsg *m) {
        Server *srv = data;
        srv->drains++;
        report_guard(srv);
        while (m) {
                OutMsg *next = m->next;
                if (m->job_done) {
                        jobs_finished(&srv->jobs, m->job); /* frees the job and the message in it */
                } else {
                        Conn *c = conn_find(srv, m->conn_id);
                        if (c && m->frame) {
                                conn_send(c, m->frame, m->len);
                                m->frame = NULL;
                        }
                        if (m->job)
                                jobs_frame_sent(&srv->jobs, m->job, m->last,
                                                c && !c->closing && c->write_queued > DAEMON_WRITE_SOFT_LIMIT);
                        outbox_msg_free(m);
                }
                m = next;
        }
        if (!srv->shutting_down && !srv->reloading)
                jobs_admit(&srv->jobs); /* finished work may have freed KV */
        conn_drained(srv); /* half-closed connections answered in full are closed */
        if (srv->jobs.n == 0) {
                if (srv->shutting_down)
                        server_begin_shutdown(srv, NULL);
                else if (srv->reloading)
                        finish_reload(srv);
        }
}

/* ------------------------------------------------------------------ housekeeping */

static void on_housekeeping(uv_timer_t *h) {
        Server *srv = h->data;
        const uint64_t t = now_ms();
        unsigned n = sessions_expire(&srv->sessions, t, srv->cfg->idle_timeout * 1000);
        if (n)
                log_info("dropped %u idle session(s)", n);
        jobs_expire(&srv->jobs, t);
        if (!srv->shutting_down && !srv->reloading)
                jobs_admit(&srv->jobs); /* expired sessions freed KV */
        conn_expire(srv, t);
        report_guard(srv);
        const uint64_t window = jobs_take_tokens_window(&srv->jobs);
        const double dt = DAEMON_HOUSEKEEPING_MS / 1000.0;
        srv->tokens_per_s = 0.8 * srv->tokens_per_s + 0.2 * (double)window / dt;
        sd_notifyf(0, "WATCHDOG=1\nSTATUS=serving %s: %llu session(s), %u connection(s), %.1f tokens/s",
                   srv->cfg->model, (unsigned long long)(srv->sessions.n_named), srv->n_conns, srv->tokens_per_s);
}

/* ------------------------------------------------------------------ shutdown */

static void on_closed_quietly(uv_handle_t *h) {
        (void)h;
}

void server_begin_shutdown(Server *srv, const char *why) {
        if (why) {
                if (srv->shutting_down)
                        return;
                log_notice("shutting down: %s", why);
                sd_notify(0, "STOPPING=1");
        }
        srv->shutting_down = true;
        if (srv->listening) {
                srv->listening = false;
                uv_close((uv_handle_t *)&srv->listener, on_closed_quietly);
        }
        /* in-flight work stops at its next step; the last finished job brings us back here */
        jobs_cancel_all(&srv->jobs);
        if (srv->jobs.n > 0)
                return;
        if (srv->cfg->state_dir && !srv->saved) {
                srv->saved = true;
                unsigned total;
                const unsigned n = persist_save_all(&srv->sessions, srv->cfg->state_dir, srv->model_id, &total);
                if (n == total) {
                        log_info("saved %u of %u session(s) to %s", n, total, srv->cfg->state_dir);
                } else {
                        log_error("saved %u of %u session(s) to %s: the others are lost", n, total,
                                  srv->cfg->state_dir);
                        srv->save_failed = true;
                }
        }
        for (Conn *c = srv->conns; c;) {
                Conn *next = c->next;
                conn_close(c);
                c = next;
        }
        /* the engine thread may still be inside its last uv_async_send: join it before the
         * wake-up handle closes (and long before the loop does) */
        sched_stop(&srv->sched);
        if (srv->outbox.open) {
                outbox_close(&srv->outbox);
                uv_close((uv_handle_t *)&srv->housekeeping, on_closed_quietly);
                uv_close((uv_handle_t *)&srv->sig_int, on_closed_quietly);
                uv_close((uv_handle_t *)&srv->sig_term, on_closed_quietly);
                uv_close((uv_handle_t *)&srv->sig_hup, on_closed_quietly);
        }
}

static void on_signal(uv_signal_t *h, int signum) {
        server_begin_shutdown(h->data, signum == SIGINT ? "SIGINT" : "SIGTERM");
}

/* ------------------------------------------------------------------ reload (SIGHUP) */

/* Start the engine for srv->m: sessions table (restored from the state directory) and
 * scheduler. */
static int engine_start(Server *srv) {
        Config *cfg = srv->cfg;
        uint32_t slots, kv_type = KV_TYPE_DEFAULT;
        if (cfg->kv_type && kv_type_parse(cfg->kv_type, &kv_type) < 0) {
                log_error("kv-type '%s' is not f16, q8_0 or f32", cfg->kv_type);
                return -EINVAL;
        }
        int r = session_slots(srv->m, (uint32_t)cfg->session_capacity, cfg->kv_budget, kv_type, &slots);
        if (r == -EINVAL) {
                log_error("kv-type %s needs a head size that is a multiple of 32; this model's is %u",
                          kv_type_name(kv_type), srv->m->cfg.head_dim);
                return r;
        }
        if (r < 0) {
                log_error("the KV budget of %llu bytes cannot hold one session of this model",
                          (unsigned long long)cfg->kv_budget);
                return r;
        }
        SessionLimits lim = { .kv_budget = cfg->kv_budget, .max_sessions = cfg->max_sessions,
                              .max_per_uid = cfg->max_sessions_per_uid, .capacity = (uint32_t)cfg->session_capacity,
                              .kv_type = kv_type };
        srv->sessions.m = srv->m;
        srv->sessions.lim = lim;
        guard_arm(srv->m->file->base, srv->m->file->size);
        srv->guard_reported = false;
        if (cfg->state_dir) {
                r = persist_model_id(cfg->model, srv->m->file, &srv->model_id);
                if (r < 0) {
                        log_error("cannot identify the model file: %s", strerror(-r));
                        return r;
                }
                r = persist_restore_all(&srv->sessions, cfg->state_dir, srv->model_id, now_ms());
                if (r < 0)
                        log_warning("cannot read saved sessions in %s: %s", cfg->state_dir, strerror(-r));
                else if (r > 0)
                        log_info("restored %d session(s) from %s", r, cfg->state_dir);
        }
        numa_plan_free(&srv->numa);
        memset(&srv->numa, 0, sizeof(srv->numa));
        NumaTopology topo;
        if ((!cfg->numa || !strcmp(cfg->numa, "auto")) && numa_topology_detect(&topo) == 0 &&
            numa_plan(srv->m, &topo, (unsigned)cfg->threads, &srv->numa) == 0) {
                r = numa_apply(srv->m, &srv->numa);
                if (r < 0)
                        log_warning("NUMA: cannot bind expert pages: %s (continuing unplaced)", strerror(-r));
                for (unsigned n = 0; n < srv->numa.n_nodes; n++)
                        log_info("NUMA node %u: %llu MiB of experts, %u thread(s)", n,
                                 (unsigned long long)(srv->numa.node_bytes[n] >> 20), srv->numa.node_threads[n]);
        }
        jobs_set_model(&srv->jobs, srv->m, cfg->max_prompt_tokens);
        r = sched_start(&srv->sched, srv->m, (unsigned)cfg->threads, DAEMON_BATCH_ROWS, slots, &srv->numa,
                        cfg->int8 != 0 && cfg->exact == 0, cluster_setup.fn ? &cluster_setup : NULL);
        if (r < 0)
                log_error("cannot start the engine with %llu threads: %s", (unsigned long long)cfg->threads,
                          strerror(-r));
        return r;
}

/* hugepages = auto: a model mostly mapped with 4 KiB pages is read once more so the page
 * cache holds it in 2 MiB folios (engine/hugepage.h); decoding then runs closer to the
 * memory bandwidth. */
static void settle_huge_pages(const Model *m, const char *path) {
        HugepageReport rep;
        sd_notify(0, "STATUS=mapping the model with 2 MiB pages");
        int r = hugepage_settle(path, m->file->base, m->file->size, &rep);
        if (r < 0) {
                log_warning("model pages: cannot measure or re-read %s: %s", path, strerror(-r));
                return;
        }
        const unsigned long long mib = rep.file_bytes >> 20;
        if (rep.too_large) {
                log_info("model pages: the model is over %d%% of RAM; mapping it as the page cache holds it",
                         HUGEPAGE_REFAULT_RAM_PERCENT);
                return;
        }
        if (!rep.refaulted) {
                log_info("model pages: %llu of %llu MiB mapped with 2 MiB pages", (unsigned long long)(rep.huge_before >> 20),
                         mib);
                return;
        }
        log_info("model pages: re-read the file in %.2f s (hugepages = off skips this): %llu -> %llu of %llu MiB "
                 "mapped with 2 MiB pages", rep.seconds, (unsigned long long)(rep.huge_before >> 20),
                 (unsigned long long)(rep.huge_after >> 20), mib);
        if (rep.huge_after <= rep.huge_before)
                log_warning("model pages: this kernel or filesystem keeps the model in 4 KiB pages (decoding is "
                            "slower); set hugepages = off to skip the re-read at start");
}

void server_set_cluster(const SchedSetup *setup, struct Cluster *cluster) {
        cluster_setup = *setup;
        cluster_handle = cluster;
}

struct Cluster *server_cluster(void) {
        return cluster_handle;
}

static bool want_huge_pages(const Config *cfg) {
        if (cluster_setup.fn)
                return false; /* re-reading the file would bring every rank's experts in */
        return !cfg->hugepages || strcmp(cfg->hugepages, "off") != 0;
}

static int load_model(const char *path, bool huge_pages, Model **ret) {
        ModelError merr = { "" };
        log_info("loading %s", path);
        int r = model_load(path, &merr, ret);
        if (r < 0) {
                log_error("cannot load model %s: %s", path, merr.msg[0] ? merr.msg : strerror(-r));
                return r;
        }
        if (huge_pages)
                settle_huge_pages(*ret, path);
        const ModelConfig *mc = &(*ret)->cfg;
        log_info("model: %u layers, hidden %u, %u experts (top-%u), window %u, vocab %u", mc->n_layer, mc->n_embd,
                 mc->n_expert, mc->n_expert_used, mc->sliding_window, mc->n_vocab);
        int isa_cap;
        if (quant_isa_env(&isa_cap) < 0)
                log_warning("MIXD_ISA='%s' is not one of scalar, avx2, avx512, avx512vnni: ignored", getenv("MIXD_ISA"));
        log_info("kernels: float %s, 8-bit %s", quant_isa_name(quant_best_isa()),
                 quant_int8_isa_name(quant_int8(GGML_TYPE_Q4_K)->isa));
        return 0;
}

/* All jobs have ended: swap the models. Sessions of the old model cannot continue on the
 * new one; they are closed, and later requests naming them are told why. */
static void finish_reload(Server *srv) {
        sched_stop(&srv->sched);
        guard_arm(NULL, 0);
        sessions_drop_all(&srv->sessions, "was closed when the daemon reloaded its model");
        model_free(srv->m);
        srv->m = srv->pending_model;
        srv->pending_model = NULL;
        free(srv->cfg->model);
        srv->cfg->model = srv->pending_path;
        srv->pending_path = NULL;
        srv->reloading = false;
        srv->huge_read_ms = 0; /* another mapping */
        if (engine_start(srv) < 0) {
                server_begin_shutdown(srv, "the engine could not restart after the reload");
                return;
        }
        log_notice("reloaded: serving %s", srv->cfg->model);
        sd_notifyf(0, "READY=1\nSTATUS=serving %s", srv->cfg->model);
}

static void begin_reload(Server *srv) {
        Config fresh;
        char err[512] = "";
        if (srv->shutting_down || srv->reloading)
                return;
        if (cluster_setup.fn) {
                log_warning("reload: not in the cluster mode (the other ranks keep their model); still serving %s; "
                            "restart the job to serve another model", srv->cfg->model);
                return;
        }
        sd_notify(0, "RELOADING=1");
        /* the model path may have changed in the config file; flags still win */
        config_defaults(&fresh);
        int r = config_load_file(&fresh, srv->config_path, err, sizeof(err));
        if (r < 0 && r != -ENOENT)
                log_warning("reload: %s; keeping the current settings", err[0] ? err : strerror(-r));
        if (config_parse_args(&fresh, srv->argc, srv->argv, err, sizeof(err)) != 0 || !fresh.model) {
                log_error("reload: no usable model setting; keeping %s", srv->cfg->model);
                config_free(&fresh);
                sd_notify(0, "READY=1");
                return;
        }
        Model *m;
        if (load_model(fresh.model, want_huge_pages(&fresh), &m) < 0) {
                log_error("reload failed; still serving %s", srv->cfg->model);
                config_free(&fresh);
                sd_notify(0, "READY=1");
                return;
        }
        srv->pending_model = m;
        srv->pending_path = fresh.model;
        fresh.model = NULL;
        config_free(&fresh);
        srv->reloading = true;
        log_notice("reloading: in-flight requests are cancelled, sessions of the old model are closed");
        jobs_cancel_all(&srv->jobs);
        if (srv->jobs.n == 0)
                finish_reload(srv);
}

static void on_sighup(uv_signal_t *h, int signum) {
        (void)signum;
        begin_reload(h->data);
}

/* ------------------------------------------------------------------ listening */

static void on_connection(uv_stream_t *listener, int status) {
        Server *srv = listener->data;
        if (status < 0) {
                log_warning("accept failed: %s", uv_strerror(status));
                return;
        }
        conn_accept(srv);
}

static int default_socket_path(char **ret) {
        if (geteuid() == 0) {
                if (mkdir("/run/mixd", 0755) < 0 && errno != EEXIST)
                        return -errno;
                *ret = strdup("/run/mixd/mixd.sock");
        } else {
                const char *xdg = getenv("XDG_RUNTIME_DIR");
                if (!xdg || !*xdg)
                        return -ENOENT;
                size_t n = strlen(xdg) + sizeof("/mixd.sock");
                *ret = malloc(n);
                if (*ret)
                        snprintf(*ret, n, "%s/mixd.sock", xdg);
        }
        return *ret ? 0 : -ENOMEM;
}

/* A leftover socket file from a dead daemon is removed; a live one is -EADDRINUSE, another kind
 * of file -EEXIST. */
static int clear_stale_socket(const char *path) {
        struct stat st;
        if (lstat(path, &st) < 0)
                return errno == ENOENT ? 0 : -errno;
        if (!S_ISSOCK(st.st_mode))
                return -EEXIST;
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
                return -errno;
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        strncpy(sa.sun_path, path, sizeof(sa.sun_path) - 1);
        int r = connect(fd, (struct sockaddr *)&sa, sizeof(sa));
        close(fd);
        if (r == 0)
                return -EADDRINUSE;
        return unlink(path) < 0 ? -errno : 0;
}

/* Why a socket cannot be created at path, in words (the directory's problem, or another
 * daemon's socket there), logged; 0 when nothing stands in the way. */
static int check_socket_path(const char *path) {
        if (strlen(path) >= sizeof(((struct sockaddr_un *)0)->sun_path)) {
                log_error("socket path too long (at most %zu bytes): %s", sizeof(((struct sockaddr_un *)0)->sun_path) - 1,
                          path);
                return -ENAMETOOLONG;
        }
        char dir[sizeof(((struct sockaddr_un *)0)->sun_path)];
        const char *slash = strrchr(path, '/');
        if (!slash)
                snprintf(dir, sizeof(dir), ".");
        else if (slash == path)
                snprintf(dir, sizeof(dir), "/");
        else
                snprintf(dir, sizeof(dir), "%.*s", (int)(slash - path), path);
        struct stat st;
        if (stat(dir, &st) < 0) {
                int e = errno;
                if (e == ENOENT)
                        log_error("cannot create socket %s: the directory %s does not exist", path, dir);
                else
                        log_error("cannot create socket %s: %s: %s", path, dir, strerror(e));
                return -e;
        }
        if (!S_ISDIR(st.st_mode)) {
                log_error("cannot create socket %s: %s is not a directory", path, dir);
                return -ENOTDIR;
        }
        if (access(dir, W_OK | X_OK) < 0) {
                int e = errno;
                log_error("cannot create socket %s: no permission to create files in %s (%s)", path, dir, strerror(e));
                return -e;
        }
        int r = clear_stale_socket(path);
        if (r < 0) {
                log_error("cannot use socket %s: %s", path,
                          r == -EADDRINUSE ? "another daemon is listening there"
                          : r == -EEXIST   ? "a file that is not a socket is in the way"
                                           : strerror(-r));
                return r;
        }
        return 0;
}

/* Before the model is mapped (which can take minutes): the service manager's sockets, or the
 * path to bind and whether anything stands in its way. */
static int check_socket(Server *srv) {
        int n = sd_listen_fds(1); /* unsets LISTEN_FDS: read once, kept in listen_fds */
        if (n < 0) {
                log_error("expected one socket from the service manager, got descriptors that are not open: %s",
                          strerror(-n));
                return n;
        }
        if (n > 1) {
                log_error("expected one socket from the service manager, got %d", n);
                return -EINVAL;
        }
        srv->listen_fds = n > 0 ? n : 0;
        if (srv->listen_fds)
                return 0;
        int r;
        if (!srv->cfg->socket_path && (r = default_socket_path(&srv->cfg->socket_path)) < 0) {
                if (r == -ENOENT)
                        log_error("no socket: give --socket PATH (or 'socket = PATH' in the config file); the default, "
                                  "$XDG_RUNTIME_DIR/mixd.sock, needs XDG_RUNTIME_DIR, which is unset");
                else
                        log_error("cannot create the default socket directory /run/mixd: %s", strerror(-r));
                return r;
        }
        return check_socket_path(srv->cfg->socket_path);
}

static int start_listening(Server *srv) {
        int r = uv_pipe_init(srv->loop, &srv->listener, 0);
        if (r < 0)
                return r;
        srv->listener.data = srv;
        srv->listening = true;

        if (srv->listen_fds == 1) {
                r = uv_pipe_open(&srv->listener, SD_LISTEN_FDS_START);
                if (r < 0)
                        return r;
                log_info("listening on the socket passed by the service manager");
        } else {
                /* checked before the model was loaded; again now, as things may have changed since */
                r = check_socket_path(srv->cfg->socket_path);
                if (r < 0)
                        return r;
                r = uv_pipe_bind(&srv->listener, srv->cfg->socket_path);
                if (r < 0) {
                        log_error("cannot bind %s: %s", srv->cfg->socket_path, uv_strerror(r));
                        return r;
                }
                srv->own_socket = true;
                if (chmod(srv->cfg->socket_path, (mode_t)srv->cfg->socket_mode) < 0)
                        log_warning("cannot chmod %s: %s", srv->cfg->socket_path, strerror(errno));
                log_info("listening on %s", srv->cfg->socket_path);
        }
        r = uv_listen((uv_stream_t *)&srv->listener, 128, on_connection);
        if (r < 0)
                log_error("listen failed: %s", uv_strerror(r));
        return r;
}

/* ------------------------------------------------------------------ run */

int server_run(Config *cfg, const char *config_path, int argc, char **argv) {
        Server srv_storage = { 0 }, *srv = &srv_storage;
        int r;

        srv->cfg = cfg;
        srv->config_path = config_path;
        srv->argc = argc;
        srv->argv = argv;
        srv->start_ms = now_ms();
        if (cfg->admin_group) {
                struct group *g = getgrnam(cfg->admin_group);
                if (!g) {
                        log_error("admin group '%s' does not exist", cfg->admin_group);
                        return -ENOENT;
                }
                srv->admin_gid = g->gr_gid;
                srv->have_admin_gid = true;
        }
        if (cfg->admin_connections >= cfg->max_connections)
                log_warning("admin-connections (%llu) is not below max-connections (%llu): only administrators can connect",
                            (unsigned long long)cfg->admin_connections, (unsigned long long)cfg->max_connections);
        if (!cfg->state_dir && getenv("STATE_DIRECTORY") && *getenv("STATE_DIRECTORY")) {
                /* systemd's StateDirectory= (the first one if several) */
                cfg->state_dir = strndup(getenv("STATE_DIRECTORY"), strcspn(getenv("STATE_DIRECTORY"), ":"));
        }
        if (cfg->state_dir && (!strcmp(cfg->state_dir, "none") || !*cfg->state_dir)) {
                free(cfg->state_dir); /* "state-dir = none": sessions are not kept across restarts */
                cfg->state_dir = NULL;
        }
        /* what can be checked without the model is checked before mapping it (which can take
         * minutes): a socket that cannot be created or is taken fails the start at once */
        r = check_socket(srv);
        if (r < 0)
                return r;
        /* a state directory that cannot take the sessions is found now, not at the stop that
         * would lose them */
        if (cfg->state_dir && (r = persist_check_dir(cfg->state_dir)) < 0) {
                log_error("sessions could not be saved at stop: fix the state directory, or set "
                          "state-dir = none to run without keeping sessions");
                return r;
        }
        r = guard_install();
        if (r < 0)
                log_warning("cannot install the SIGBUS guard: %s", strerror(-r));
        r = load_model(cfg->model, want_huge_pages(cfg), &srv->m);
        if (r < 0)
                return r;
        sessions_init(&srv->sessions, srv->m, &(SessionLimits){ 0 });
        jobs_init(&srv->jobs, &srv->sched, &srv->sessions, &srv->outbox, on_job_end, srv);
        jobs_set_limits(&srv->jobs, cfg->max_queued_bytes, cfg->max_queued_bytes_per_uid, cfg->request_timeout,
                        cfg->unread_timeout);
        srv->loop = uv_default_loop();
        r = outbox_init(&srv->outbox, srv->loop, on_outbox, srv);
        if (r < 0) {
                log_error("cannot set up the event loop: %s", uv_strerror(r));
                goto out_engine;
        }
        r = engine_start(srv);
        if (r < 0) {
                outbox_close(&srv->outbox);
                uv_run(srv->loop, UV_RUN_DEFAULT);
                uv_loop_close(srv->loop);
                goto out_engine;
        }

        uv_timer_init(srv->loop, &srv->housekeeping);
        srv->housekeeping.data = srv;
        uv_timer_start(&srv->housekeeping, on_housekeeping, DAEMON_HOUSEKEEPING_MS, DAEMON_HOUSEKEEPING_MS);
        uv_signal_init(srv->loop, &srv->sig_int);
        uv_signal_init(srv->loop, &srv->sig_term);
        uv_signal_init(srv->loop, &srv->sig_hup);
        srv->sig_int.data = srv->sig_term.data = srv->sig_hup.data = srv;
        uv_signal_start(&srv->sig_int, on_signal, SIGINT);
        uv_signal_start(&srv->sig_term, on_signal, SIGTERM);
        uv_signal_start(&srv->sig_hup, on_sighup, SIGHUP);
        signal(SIGPIPE, SIG_IGN);

        r = start_listening(srv);
        if (r < 0) {
                server_begin_shutdown(srv, "cannot listen");
                uv_run(srv->loop, UV_RUN_DEFAULT);
                goto out_loop;
        }
        sd_notifyf(0, "READY=1\nSTATUS=serving %s", cfg->model);
        log_notice("ready in %llu ms: %llu compute thread(s), KV budget %llu MiB (%s)",
                   (unsigned long long)(now_ms() - srv->start_ms), (unsigned long long)cfg->threads,
                   (unsigned long long)(cfg->kv_budget >> 20), kv_type_name(srv->sessions.lim.kv_type));
        uv_run(srv->loop, UV_RUN_DEFAULT);
        r = srv->save_failed ? -EIO : 0; /* sessions were lost: the stop is a failure */
out_loop:
        if (uv_loop_close(srv->loop) != 0)
                log_warning("event loop closed with handles still open");
        if (srv->own_socket)
                unlink(cfg->socket_path);
out_engine:
        sched_stop(&srv->sched);
        numa_plan_free(&srv->numa);
        sessions_done(&srv->sessions);
        model_free(srv->pending_model);
        free(srv->pending_path);
        model_free(srv->m);
        log_info("stopped");
        return r;
}
