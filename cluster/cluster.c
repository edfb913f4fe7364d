/* cluster/cluster.c — the Open MPI transport of the expert executor (see cluster.h): the
 * placement plan, the front's per-layer exchange and the workers' serving loop. Messages are
 * the engine's own inputs byte for byte (the quantized activation blocks, the float rows
 * that run on the float path) and the float outputs, so a rank computes exactly what the
 * front would have. All ranks are the same build on the same architecture (native byte
 * order and struct layout; the plan's model check catches a different file). */
#include "cluster.h"

#include <errno.h>
#include <inttypes.h>
#include <mpi.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "cluster_limits.h"
#include "engine_limits.h"
#include "quant_int8.h"

enum { TAG_REQ = 1, TAG_REPLY = 2 };
enum { OP_WORK = 1, OP_STOP = 2 };
#define MSG_MAGIC 0x5745584du   /* "MXEW" */
#define REPLY_MAGIC 0x5245584du /* "MXER" */

/* A request: this header, then (each section at a multiple of CLUSTER_MSG_ALIGN)
 * ids[count], n[count] (uint32), exact[n_rows] (uint8), for each format a in act_mask the
 * rows' blocks [n_rows][D/256], then n_float float rows [n_float][D]: every row's when
 * all_float, else the exact rows' in row order. An expert's rows follow the previous one's. */
typedef struct ReqHeader {
        uint32_t magic, op;
        uint32_t il;              /* layer */
        uint32_t count;           /* experts */
        uint32_t n_rows;          /* rows, all experts */
        uint32_t int8;            /* 1: 8-bit activations (down's input is quantized) */
        uint32_t act_mask;        /* bit a: the rows' blocks in format a follow */
        uint32_t all_float;       /* 1: every row's floats follow; 0: the exact rows' only */
        uint32_t n_float;         /* float rows that follow */
        uint32_t pad;
        uint64_t seq;             /* the front's step number, echoed in the reply */
        uint64_t bytes;           /* the whole message */
} ReqHeader;

/* A reply: this header, then at CLUSTER_MSG_ALIGN the outputs [n_rows][D] in request order
 * (none when status < 0). */
typedef struct ReplyHeader {
        uint32_t magic;
        int32_t status;           /* 0, or the worker's -errno */
        uint32_t n_rows;
        uint32_t pad;
        uint64_t seq;
        uint64_t compute_us;      /* the worker's time computing this request */
        uint64_t resident;        /* its resident bytes of the model file, last measured */
} ReplyHeader;

/* Per rank, what status shows (relaxed atomics: the engine thread adds, anyone reads). */
typedef struct RankStats {
        uint64_t resident, steps, rows, compute_us, wait_us, sent, received;
} RankStats;

/* Where each section of a request lies. */
typedef struct Layout {
        size_t ids, n, exact, xq[QUANT_ACT_COUNT_], x, bytes;
} Layout;

struct Cluster {
        MPI_Comm comm;            /* a duplicate of MPI_COMM_WORLD whose errors return */
        int rank, size;
        bool planned, broken;
        int failed_rank;          /* the rank that did not answer or answered wrong (-1: none) */
        const Model *m;
        uint32_t n_layer, units;  /* units: experts per layer, max(E, 1) */
        uint16_t *owner;          /* [n_layer][units] */
        uint64_t bytes[CLUSTER_MAX_RANKS];
        uint32_t experts[CLUSTER_MAX_RANKS];
        ExpertExec local;         /* the front's own experts */
        uint64_t seq;
        char (*hosts)[CLUSTER_HOST_MAX]; /* [size] */
        RankStats *stats;         /* [size] */
        uint64_t tokens;
        uint64_t resident, resident_us; /* worker: its resident bytes, and when measured */
        /* per rank: the request and reply buffers (front); a worker uses [0] */
        uint8_t **sbuf, **rbuf;
        size_t *scap, *rcap;
        MPI_Request *sreq, *rreq;
        uint8_t *xbuf;            /* worker: [rows][D] floats, the float rows of a request */
        size_t xcap;
};

static size_t align_up(size_t v) {
        return (v + CLUSTER_MSG_ALIGN - 1) / CLUSTER_MSG_ALIGN * CLUSTER_MSG_ALIGN;
}

static Layout layout(uint32_t count, uint32_t n_rows, uint32_t act_mask, uint32_t n_float, size_t D) {
        Layout l = { 0 };
        const size_t DB = D / QK_K;
        size_t at = align_up(sizeof(ReqHeader));
        l.ids = at;
        at = align_up(at + (size_t)count * sizeof(uint32_t));
        l.n = at;
        at = align_up(at + (size_t)count * sizeof(uint32_t));
        l.exact = at;
        at = align_up(at + n_rows);
        for (int a = 0; a < QUANT_ACT_COUNT_; a++)
                if (act_mask & (1u << a)) {
                        l.xq[a] = at;
                        at = align_up(at + (size_t)n_rows * DB * quant_act_block_bytes((QuantAct)a));
                }
        l.x = at;
        l.bytes = at + (size_t)n_float * D * sizeof(float);
        return l;
}

static size_t reply_bytes(uint32_t n_rows, size_t D) {
        return align_up(sizeof(ReplyHeader)) + (size_t)n_rows * D * sizeof(float);
}

/* *buf holds at least `bytes` (64-byte aligned); -ENOMEM. */
static int reserve(uint8_t **buf, size_t *cap, size_t bytes) {
        if (bytes <= *cap)
                return 0;
        const size_t want = align_up(bytes + bytes / 2);
        uint8_t *p = aligned_alloc(CLUSTER_MSG_ALIGN, want);
        if (!p)
                return -ENOMEM;
        free(*buf);
        *buf = p;
        *cap = want;
        return 0;
}

static uint64_t now_us(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* Between polls: yield while the last message is recent, then sleep, doubling. */
static void backoff(uint64_t since_us, unsigned *sleep_us) {
        if (now_us() - since_us < CLUSTER_SPIN_US) {
                sched_yield();
                return;
        }
        *sleep_us = *sleep_us ? *sleep_us * 2 : 50;
        if (*sleep_us > CLUSTER_SLEEP_MAX_US)
                *sleep_us = CLUSTER_SLEEP_MAX_US;
        const struct timespec ts = { 0, (long)*sleep_us * 1000 };
        nanosleep(&ts, NULL);
}

/* Waits for n requests (MPI_REQUEST_NULL ones count as done): 0, -EIO, or -ETIMEDOUT after
 * CLUSTER_REPLY_TIMEOUT_S. */
static int wait_all(int n, MPI_Request *reqs) {
        const uint64_t t0 = now_us();
        unsigned sleep_us = 0;
        for (;;) {
                int done = 0;
                if (MPI_Testall(n, reqs, &done, MPI_STATUSES_IGNORE) != MPI_SUCCESS)
                        return -EIO;
                if (done)
                        return 0;
                if (now_us() - t0 > (uint64_t)CLUSTER_REPLY_TIMEOUT_S * 1000000u)
                        return -ETIMEDOUT;
                backoff(t0, &sleep_us);
        }
}

int cluster_init(Cluster **ret_c) {
        int provided = 0;
        if (MPI_Init_thread(NULL, NULL, MPI_THREAD_SERIALIZED, &provided) != MPI_SUCCESS)
                return -EIO;
        if (provided < MPI_THREAD_SERIALIZED) {
                MPI_Finalize();
                return -EPROTO;
        }
        Cluster *c = calloc(1, sizeof(*c));
        if (!c) {
                MPI_Finalize();
                return -ENOMEM;
        }
        MPI_Comm_dup(MPI_COMM_WORLD, &c->comm);
        MPI_Comm_set_errhandler(c->comm, MPI_ERRORS_RETURN);
        MPI_Comm_rank(c->comm, &c->rank);
        MPI_Comm_size(c->comm, &c->size);
        c->failed_rank = -1;
        const size_t n = (size_t)c->size;
        c->sbuf = calloc(n, sizeof(*c->sbuf));
        c->rbuf = calloc(n, sizeof(*c->rbuf));
        c->scap = calloc(n, sizeof(*c->scap));
        c->rcap = calloc(n, sizeof(*c->rcap));
        c->sreq = calloc(n, sizeof(*c->sreq));
        c->rreq = calloc(n, sizeof(*c->rreq));
        c->hosts = calloc(n, sizeof(*c->hosts));
        c->stats = calloc(n, sizeof(*c->stats));
        if (c->size > CLUSTER_MAX_RANKS || !c->sbuf || !c->rbuf || !c->scap || !c->rcap || !c->sreq || !c->rreq ||
            !c->hosts || !c->stats) {
                const int r = c->size > CLUSTER_MAX_RANKS ? -E2BIG : -ENOMEM;
                cluster_free(c, true);
                return r;
        }
        *ret_c = c;
        return 0;
}

unsigned cluster_rank(const Cluster *c) {
        return (unsigned)c->rank;
}

unsigned cluster_size(const Cluster *c) {
        return (unsigned)c->size;
}

static uint64_t fnv(uint64_t h, const void *p, size_t n) {
        const uint8_t *b = p;
        for (size_t i = 0; i < n; i++)
                h = (h ^ b[i]) * 0x100000001b3ull;
        return h;
}

/* What every rank must agree on: the shapes, the file's size and layout, each expert's
 * offset and type. */
static uint64_t model_digest(const Model *m) {
        uint64_t h = 0xcbf29ce484222325ull;
        h = fnv(h, &m->cfg, sizeof(m->cfg));
        const uint64_t sizes[3] = { m->file->size, m->file->n_tensors, m->file->data_offset };
        h = fnv(h, sizes, sizeof(sizes));
        const uint32_t units = m->cfg.n_expert ? m->cfg.n_expert : 1;
        for (uint32_t il = 0; il < m->cfg.n_layer; il++)
                for (uint32_t e = 0; e < units; e++) {
                        const Matrix *w[3] = { &m->layers[il].gate[e], &m->layers[il].up[e], &m->layers[il].down[e] };
                        for (int k = 0; k < 3; k++) {
                                const uint64_t v[3] = { (uint64_t)(w[k]->data - m->file->base), w[k]->type, w[k]->rows };
                                h = fnv(h, v, sizeof(v));
                        }
                }
        return h;
}

static uint64_t unit_bytes(const Model *m, uint32_t il, uint32_t e) {
        const LayerWeights *L = &m->layers[il];
        return L->gate[e].rows * L->gate[e].row_bytes + L->up[e].rows * L->up[e].row_bytes +
               L->down[e].rows * L->down[e].row_bytes;
}

/* Another rank's bytes [p, p + n): no read-ahead into the pages wholly inside, and no
 * 2 MiB mapping over them (the file is mapped asking for huge pages; one 2 MiB entry at an
 * edge of this rank's experts would make a neighbour's bytes resident here); what loading
 * the model mapped there already (2 MiB around each norm it copied, when the page cache
 * holds the file in 2 MiB folios) is unmapped. The file's pages stay in the page cache. */
static void not_mine(const uint8_t *p, uint64_t n) {
        const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
        const uintptr_t a = ((uintptr_t)p + page - 1) / page * page, b = ((uintptr_t)p + n) / page * page;
        if (b > a) {
                (void)madvise((void *)a, b - a, MADV_RANDOM);
                (void)madvise((void *)a, b - a, MADV_NOHUGEPAGE);
                (void)madvise((void *)a, b - a, MADV_DONTNEED);
        }
}

int cluster_plan(Cluster *c, const Model *m) {
        const uint64_t mine = model_digest(m);
        uint64_t *all = calloc((size_t)c->size, sizeof(uint64_t));
        if (!all)
                return -ENOMEM;
        if (MPI_Allgather(&mine, 1, MPI_UINT64_T, all, 1, MPI_UINT64_T, c->comm) != MPI_SUCCESS) {
                free(all);
                return -EIO;
        }
        int same = 1;
        for (int r = 1; r < c->size; r++)
                same &= all[r] == all[0];
        free(all);
        if (!same)
                return -EMEDIUMTYPE;
        char name[MPI_MAX_PROCESSOR_NAME] = "", host[CLUSTER_HOST_MAX] = "";
        int len = 0;
        if (MPI_Get_processor_name(name, &len) == MPI_SUCCESS)
                memcpy(host, name, strnlen(name, sizeof(host) - 1)); /* truncated, NUL-terminated */
        if (MPI_Allgather(host, CLUSTER_HOST_MAX, MPI_CHAR, c->hosts, CLUSTER_HOST_MAX, MPI_CHAR, c->comm) != MPI_SUCCESS)
                return -EIO;
        for (int r = 0; r < c->size; r++)
                c->hosts[r][CLUSTER_HOST_MAX - 1] = '\0';
        c->m = m;
        c->n_layer = m->cfg.n_layer;
        c->units = m->cfg.n_expert ? m->cfg.n_expert : 1;
        free(c->owner);
        c->owner = calloc((size_t)c->n_layer * c->units, sizeof(uint16_t));
        if (!c->owner)
                return -ENOMEM;
        memset(c->bytes, 0, sizeof(c->bytes));
        memset(c->experts, 0, sizeof(c->experts));
        for (uint32_t il = 0; il < c->n_layer; il++)
                for (uint32_t e = 0; e < c->units; e++) {
                        int best = 0;
                        for (int r = 1; r < c->size; r++)
                                if (c->bytes[r] < c->bytes[best])
                                        best = r;
                        c->owner[(size_t)il * c->units + e] = (uint16_t)best;
                        c->bytes[best] += unit_bytes(m, il, e);
                        c->experts[best]++;
                        if (best != c->rank && m->file->mapped) {
                                const LayerWeights *L = &m->layers[il];
                                not_mine(L->gate[e].data, L->gate[e].rows * L->gate[e].row_bytes);
                                not_mine(L->up[e].data, L->up[e].rows * L->up[e].row_bytes);
                                not_mine(L->down[e].data, L->down[e].rows * L->down[e].row_bytes);
                        }
                }
        /* A worker needs nothing more of the file than its experts: what loading mapped
         * (the metadata, 2 MiB around each norm) is unmapped, to come back only if read. */
        if (c->rank != 0 && m->file->mapped)
                (void)madvise((void *)(uintptr_t)m->file->base, m->file->size, MADV_DONTNEED);
        c->planned = true;
        return 0;
}

unsigned cluster_owner(const Cluster *c, uint32_t il, uint32_t e) {
        return c->owner[(size_t)il * c->units + e];
}

uint64_t cluster_rank_bytes(const Cluster *c, unsigned r) {
        return r < (unsigned)c->size ? c->bytes[r] : 0;
}

uint32_t cluster_rank_experts(const Cluster *c, unsigned r) {
        return r < (unsigned)c->size ? c->experts[r] : 0;
}

bool cluster_broken(const Cluster *c) {
        return c->broken;
}

int cluster_failed_rank(const Cluster *c) {
        return c->failed_rank;
}

/* After a failed wait: the first rank whose request is still pending (or -1). */
static int pending_rank(Cluster *c, MPI_Request *reqs) {
        for (int r = 1; r < c->size; r++) {
                int done = 1;
                if (reqs[r] != MPI_REQUEST_NULL && MPI_Test(&reqs[r], &done, MPI_STATUS_IGNORE) == MPI_SUCCESS && !done)
                        return r;
        }
        return -1;
}

#define LOAD(x) __atomic_load_n(&(x), __ATOMIC_RELAXED)
#define ADD(x, v) __atomic_fetch_add(&(x), (v), __ATOMIC_RELAXED)

void cluster_rank_stats(const Cluster *c, unsigned r, ClusterRankStats *ret) {
        memset(ret, 0, sizeof(*ret));
        if (r >= (unsigned)c->size)
                return;
        const RankStats *s = &c->stats[r];
        *ret = (ClusterRankStats){ .host = c->hosts[r], .experts = c->experts[r], .expert_bytes = c->bytes[r],
                                   .resident_bytes = LOAD(s->resident), .steps = LOAD(s->steps), .rows = LOAD(s->rows),
                                   .compute_us = LOAD(s->compute_us), .wait_us = LOAD(s->wait_us),
                                   .sent_bytes = LOAD(s->sent), .received_bytes = LOAD(s->received) };
}

uint64_t cluster_tokens(const Cluster *c) {
        return LOAD(c->tokens);
}

int64_t cluster_resident_bytes(const void *base, size_t len) {
        FILE *f = fopen("/proc/self/smaps", "re");
        if (!f)
                return -ENOENT;
        char line[512];
        int64_t total = 0;
        bool inside = false;
        while (fgets(line, sizeof(line), f)) {
                uintptr_t a, b;
                uint64_t kb;
                if (sscanf(line, "%" SCNxPTR "-%" SCNxPTR " ", &a, &b) == 2)
                        inside = a >= (uintptr_t)base && b <= (uintptr_t)base + len;
                else if (inside && sscanf(line, "Rss: %" SCNu64 " kB", &kb) == 1)
                        total += (int64_t)kb * 1024;
        }
        fclose(f);
        return total;
}

/* ------------------------------------------------------------------ the front */

/* Whether some row of the experts gs[0..k-1] of w runs gate or up on the float path for
 * every row (no quantized input in the format its type takes): then every row's floats go. */
static bool needs_all_floats(const Cluster *c, const ExpertWork *w, const unsigned *gs, unsigned k) {
        const LayerWeights *L = &c->m->layers[w->il];
        for (unsigned i = 0; i < k; i++) {
                const Matrix *mats[2] = { &L->gate[w->ids[gs[i]]], &L->up[w->ids[gs[i]]] };
                for (int j = 0; j < 2; j++) {
                        const QuantInt8Kernels *kern = quant_int8(mats[j]->type);
                        if (!kern || !w->xq.q[kern->act])
                                return true;
                }
        }
        return false;
}

/* Packs the experts gs[0..k-1] of w (k >= 1) into rank r's request buffer; returns its
 * bytes, or -ENOMEM. */
static long pack(Cluster *c, unsigned r, const ExpertWork *w, const unsigned *gs, unsigned k, uint32_t rows) {
        const size_t D = c->m->cfg.n_embd, DB = D / QK_K;
        uint32_t mask = 0, n_float = 0;
        for (int a = 0; a < QUANT_ACT_COUNT_; a++)
                if (w->xq.q[a])
                        mask |= 1u << a;
        const bool all_float = needs_all_floats(c, w, gs, k);
        for (unsigned i = 0; i < k; i++)
                for (uint32_t t = 0; t < w->n[gs[i]]; t++)
                        n_float += all_float || w->exact[w->base[gs[i]] + t];
        const Layout l = layout(k, rows, mask, n_float, D);
        if (reserve(&c->sbuf[r], &c->scap[r], l.bytes) < 0)
                return -ENOMEM;
        uint8_t *b = c->sbuf[r];
        *(ReqHeader *)b = (ReqHeader){ .magic = MSG_MAGIC, .op = OP_WORK, .il = w->il, .count = k, .n_rows = rows,
                                       .int8 = w->int8, .act_mask = mask, .all_float = all_float, .n_float = n_float,
                                       .seq = c->seq, .bytes = l.bytes };
        uint32_t *ids = (uint32_t *)(b + l.ids), *ns = (uint32_t *)(b + l.n);
        uint32_t at = 0, fl = 0;
        for (unsigned i = 0; i < k; i++) {
                const unsigned g = gs[i];
                const uint32_t base = w->base[g], n = w->n[g];
                ids[i] = w->ids[g];
                ns[i] = n;
                memcpy(b + l.exact + at, w->exact + base, n);
                for (int a = 0; a < QUANT_ACT_COUNT_; a++)
                        if (mask & (1u << a)) {
                                const size_t row = DB * quant_act_block_bytes((QuantAct)a);
                                memcpy(b + l.xq[a] + at * row, (const uint8_t *)w->xq.q[a] + base * row, n * row);
                        }
                for (uint32_t t = 0; t < n; t++)
                        if (all_float || w->exact[base + t])
                                memcpy(b + l.x + (size_t)fl++ * D * sizeof(float), w->x + (size_t)(base + t) * D,
                                       D * sizeof(float));
                at += n;
        }
        return (long)l.bytes;
}

/* The front's executor (see cluster.h). */
static int front_run(void *ctx, const ExpertWork *w) {
        Cluster *c = ctx;
        const size_t D = c->m->cfg.n_embd;
        if (c->broken)
                return -EIO;
        if (w->il >= c->n_layer || w->count > c->units)
                return -EINVAL;
        c->seq++;
        unsigned gs[MODEL_MAX_EXPERTS], k_of[CLUSTER_MAX_RANKS] = { 0 }, first[CLUSTER_MAX_RANKS];
        uint32_t rows_of[CLUSTER_MAX_RANKS] = { 0 };
        /* the work's experts grouped by owner, each rank's in id order */
        unsigned at = 0;
        for (int r = 0; r < c->size; r++) {
                first[r] = at;
                for (unsigned g = 0; g < w->count; g++)
                        if (cluster_owner(c, w->il, w->ids[g]) == (unsigned)r) {
                                gs[at++] = g;
                                k_of[r]++;
                                rows_of[r] += w->n[g];
                        }
        }
        int err = 0;
        for (int r = 1; r < c->size; r++) {
                c->sreq[r] = c->rreq[r] = MPI_REQUEST_NULL;
                if (k_of[r] == 0 || err)
                        continue;
                const long bytes = pack(c, (unsigned)r, w, gs + first[r], k_of[r], rows_of[r]);
                if (bytes < 0 || reserve(&c->rbuf[r], &c->rcap[r], reply_bytes(rows_of[r], D)) < 0) {
                        err = -ENOMEM;
                        continue;
                }
                if (MPI_Irecv(c->rbuf[r], (int)reply_bytes(rows_of[r], D), MPI_BYTE, r, TAG_REPLY, c->comm, &c->rreq[r]) !=
                            MPI_SUCCESS ||
                    MPI_Isend(c->sbuf[r], (int)bytes, MPI_BYTE, r, TAG_REQ, c->comm, &c->sreq[r]) != MPI_SUCCESS) {
                        err = -EIO;
                        continue;
                }
        }
        /* the requests are on their way (large ones need the front's progress) before the
         * front runs its own experts */
        if (c->size > 1) {
                const int e = wait_all(c->size - 1, c->sreq + 1);
                if (e < 0 && !err) {
                        err = e;
                        c->failed_rank = pending_rank(c, c->sreq);
                }
        }
        int local_err = 0;
        if (!err && k_of[0] > 0) {
                uint32_t ids[MODEL_MAX_EXPERTS], base[MODEL_MAX_EXPERTS], n[MODEL_MAX_EXPERTS];
                for (unsigned i = 0; i < k_of[0]; i++) {
                        ids[i] = w->ids[gs[i]];
                        base[i] = w->base[gs[i]];
                        n[i] = w->n[gs[i]];
                }
                ExpertWork mine = *w;
                mine.count = k_of[0];
                mine.ids = ids;
                mine.base = base;
                mine.n = n;
                const uint64_t t0 = now_us();
                local_err = c->local.run(c->local.ctx, &mine); /* the replies are still awaited */
                ADD(c->stats[0].compute_us, now_us() - t0);
                ADD(c->stats[0].rows, rows_of[0]);
                ADD(c->stats[0].steps, 1);
        }
        const uint64_t waited = now_us();
        if (c->size > 1 && !err) {
                err = wait_all(c->size - 1, c->rreq + 1);
                if (err < 0)
                        c->failed_rank = pending_rank(c, c->rreq);
        }
        for (int r = 1; r < c->size && !err; r++) {
                if (k_of[r] == 0)
                        continue;
                const ReplyHeader *h = (const ReplyHeader *)c->rbuf[r];
                if (h->magic != REPLY_MAGIC || h->seq != c->seq || (h->status == 0 && h->n_rows != rows_of[r])) {
                        err = -EPROTO;
                        c->failed_rank = r;
                        break;
                }
                if (h->status < 0) {
                        err = h->status;
                        c->failed_rank = r;
                        break;
                }
                RankStats *st = &c->stats[r];
                ADD(st->steps, 1);
                ADD(st->rows, rows_of[r]);
                ADD(st->compute_us, h->compute_us);
                ADD(st->wait_us, now_us() - waited);
                ADD(st->sent, ((const ReqHeader *)c->sbuf[r])->bytes);
                ADD(st->received, reply_bytes(rows_of[r], D));
                __atomic_store_n(&st->resident, h->resident, __ATOMIC_RELAXED);
                const float *out = (const float *)(c->rbuf[r] + align_up(sizeof(ReplyHeader)));
                for (unsigned i = 0; i < k_of[r]; i++) {
                        const unsigned g = gs[first[r] + i];
                        memcpy(w->out + (size_t)w->base[g] * D, out, (size_t)w->n[g] * D * sizeof(float));
                        out += (size_t)w->n[g] * D;
                }
        }
        if (err) {
                c->broken = true; /* requests may still be in flight: nothing after this is trusted */
                return err == -ENOMEM || err == -ETIMEDOUT ? err : -EIO;
        }
        if (w->il == 0)
                ADD(c->tokens, w->n_rows / (c->m->cfg.n_expert ? c->m->cfg.n_expert_used : 1));
        return local_err; /* the front's own failure fails the step, not the cluster */
}

ExpertExec cluster_front_exec(Cluster *c, ExpertExec local) {
        c->local = local;
        return (ExpertExec){ front_run, c };
}

/* ------------------------------------------------------------------ a worker */

/* One request in c->rbuf[0] (len bytes) run into the reply in c->sbuf[0]; returns the
 * reply's bytes. The request is checked against its own layout and the plan: a worker runs
 * only its own experts. */
static size_t serve_one(Cluster *c, size_t len) {
        const size_t D = c->m->cfg.n_embd;
        const ReqHeader *h = (const ReqHeader *)c->rbuf[0];
        int status = 0;
        uint32_t rows = 0;
        Layout l = { 0 };
        if (h->count == 0 || h->count > c->units || h->il >= c->n_layer || h->n_rows == 0 ||
            h->act_mask >= (1u << QUANT_ACT_COUNT_) || h->n_float > h->n_rows)
                status = -EBADMSG;
        if (!status) {
                l = layout(h->count, h->n_rows, h->act_mask, h->n_float, D);
                if (l.bytes != len || h->bytes != len)
                        status = -EBADMSG;
        }
        uint32_t base[MODEL_MAX_EXPERTS];
        const uint32_t *ids = (const uint32_t *)(c->rbuf[0] + l.ids), *ns = (const uint32_t *)(c->rbuf[0] + l.n);
        for (uint32_t i = 0; !status && i < h->count; i++) {
                if (ids[i] >= c->units || cluster_owner(c, h->il, ids[i]) != (unsigned)c->rank || ns[i] == 0 ||
                    ns[i] > h->n_rows - rows)
                        status = -EBADMSG;
                base[i] = rows;
                rows += ns[i];
        }
        if (!status && rows != h->n_rows)
                status = -EBADMSG;
        const uint8_t *exact = c->rbuf[0] + l.exact;
        const float *x = (const float *)(c->rbuf[0] + l.x);
        if (!status && !h->all_float) {
                /* the exact rows' floats into their places; the others are never read */
                uint32_t n_exact = 0;
                for (uint32_t t = 0; t < rows; t++)
                        n_exact += exact[t] != 0;
                if (n_exact != h->n_float)
                        status = -EBADMSG;
                else if (reserve(&c->xbuf, &c->xcap, (size_t)rows * D * sizeof(float)) < 0)
                        status = -ENOMEM;
                for (uint32_t t = 0, f = 0; !status && t < rows; t++)
                        if (exact[t])
                                memcpy(c->xbuf + (size_t)t * D * sizeof(float), x + (size_t)f++ * D, D * sizeof(float));
                x = (const float *)c->xbuf;
        } else if (!status && h->n_float != rows) {
                status = -EBADMSG;
        }
        if (reserve(&c->sbuf[0], &c->scap[0], status ? align_up(sizeof(ReplyHeader)) : reply_bytes(rows, D)) < 0) {
                status = -ENOMEM;
                if (reserve(&c->sbuf[0], &c->scap[0], align_up(sizeof(ReplyHeader))) < 0)
                        abort(); /* 64 bytes: nothing sensible to do without them */
        }
        const uint64_t t0 = now_us();
        if (!status) {
                ExpertWork w = { .il = h->il, .count = h->count, .ids = ids, .base = base, .n = ns, .n_rows = rows,
                                 .x = x, .exact = exact, .int8 = h->int8 != 0,
                                 .out = (float *)(c->sbuf[0] + align_up(sizeof(ReplyHeader))) };
                for (int a = 0; a < QUANT_ACT_COUNT_; a++)
                        if (h->act_mask & (1u << a))
                                w.xq.q[a] = c->rbuf[0] + l.xq[a];
                status = c->local.run(c->local.ctx, &w);
        }
        const uint64_t t1 = now_us();
        if (!c->resident_us || t1 - c->resident_us >= CLUSTER_RESIDENT_REFRESH_US) {
                const int64_t res = cluster_resident_bytes(c->m->file->base, c->m->file->size);
                c->resident = res > 0 ? (uint64_t)res : 0;
                c->resident_us = now_us();
        }
        *(ReplyHeader *)c->sbuf[0] = (ReplyHeader){ .magic = REPLY_MAGIC, .status = status,
                                                     .n_rows = status ? 0 : rows, .seq = h->seq,
                                                     .compute_us = t1 - t0, .resident = c->resident };
        return status ? align_up(sizeof(ReplyHeader)) : reply_bytes(rows, D);
}

int cluster_serve(Cluster *c, ExpertExec local) {
        if (!c->planned || c->rank == 0)
                return -EINVAL;
        c->local = local;
        uint64_t last = now_us();
        unsigned sleep_us = 0;
        for (;;) {
                int flag = 0, len = 0;
                MPI_Status st;
                if (MPI_Iprobe(0, TAG_REQ, c->comm, &flag, &st) != MPI_SUCCESS)
                        return -EIO;
                if (!flag) {
                        backoff(last, &sleep_us);
                        continue;
                }
                sleep_us = 0;
                if (MPI_Get_count(&st, MPI_BYTE, &len) != MPI_SUCCESS || len < (int)sizeof(ReqHeader))
                        return -EBADMSG;
                if (reserve(&c->rbuf[0], &c->rcap[0], (size_t)len) < 0)
                        return -ENOMEM;
                if (MPI_Recv(c->rbuf[0], len, MPI_BYTE, 0, TAG_REQ, c->comm, MPI_STATUS_IGNORE) != MPI_SUCCESS)
                        return -EIO;
                const ReqHeader *h = (const ReqHeader *)c->rbuf[0];
                if (h->magic != MSG_MAGIC)
                        return -EBADMSG;
                if (h->op == OP_STOP)
                        return 0;
                if (h->op != OP_WORK)
                        return -EBADMSG;
                const size_t bytes = serve_one(c, (size_t)len);
                if (MPI_Send(c->sbuf[0], (int)bytes, MPI_BYTE, 0, TAG_REPLY, c->comm) != MPI_SUCCESS)
                        return -EIO;
                last = now_us();
        }
}

/* ------------------------------------------------------------------ the end */

Cluster *cluster_free(Cluster *c, bool ok) {
        if (!c)
                return NULL;
        if (!ok || (c->rank == 0 && c->size > 1 && (!c->planned || c->broken)))
                MPI_Abort(MPI_COMM_WORLD, 1); /* the workers wait in the plan, or a step is in flight */
        if (c->rank == 0 && c->planned) {
                const ReqHeader stop = { .magic = MSG_MAGIC, .op = OP_STOP, .bytes = sizeof(ReqHeader) };
                for (int r = 1; r < c->size; r++)
                        MPI_Send(&stop, (int)sizeof(stop), MPI_BYTE, r, TAG_REQ, c->comm);
        }
        for (int r = 0; r < c->size; r++) {
                if (c->sbuf)
                        free(c->sbuf[r]);
                if (c->rbuf)
                        free(c->rbuf[r]);
        }
        free(c->sbuf);
        free(c->rbuf);
        free(c->scap);
        free(c->rcap);
        free(c->sreq);
        free(c->rreq);
        free(c->xbuf);
        free(c->owner);
        free(c->hosts);
        free(c->stats);
        MPI_Comm_free(&c->comm);
        free(c);
        MPI_Finalize();
        return NULL;
}
