/* daemon/outbox.h — the one boundary from the engine thread to the loop: a mutex-guarded
 * queue of messages (encoded frames for connections, finished jobs) and the uv_async_t that
 * wakes the loop, whose callback takes the whole queue at once. outbox_post/outbox_push: any
 * thread; the rest: the loop thread. Every thread that posts must have been joined before
 * outbox_close (an async send after the loop has closed would write to a closed descriptor). */
#pragma once
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

struct Job;

typedef struct OutMsg {
        struct OutMsg *next;
        uint64_t conn_id;           /* connections are named by id, never by pointer */
        struct Job *job;            /* the job that produced it, or NULL */
        bool job_done;              /* the job has finished: the loop releases it */
        bool last;                  /* the request's final frame: its session is released as it is sent */
        uint8_t *frame;             /* owned encoded frame, or NULL */
        size_t len;
} OutMsg;

/* Called on the loop with the messages queued so far, oldest first; it owns them (see
 * outbox_msg_free; a job_done message lives in its job). */
typedef void (*OutboxDrainFn)(void *data, OutMsg *list);

typedef struct Outbox {
        pthread_mutex_t lock;
        OutMsg *head, *tail;        /* guarded by lock */
        uv_async_t wakeup;
        OutboxDrainFn drain;
        void *data;
        bool open;                  /* initialised and not yet closed (loop thread) */
} Outbox;

int outbox_init(Outbox *ob, uv_loop_t *loop, OutboxDrainFn drain, void *data);
/* Queue m (owned by the caller until the drain) and wake the loop. */
void outbox_post(Outbox *ob, OutMsg *m);
/* Queue a frame (ownership passes; freed if no memory for the message: then -ENOMEM). */
int outbox_push(Outbox *ob, uint64_t conn_id, struct Job *job, uint8_t *frame, size_t len, bool last);
/* Loop thread: run the drain again soon (at the next loop iteration), even with nothing queued. */
void outbox_kick(Outbox *ob);
/* Free a message made by outbox_push, and its frame. */
void outbox_msg_free(OutMsg *m);
/* Loop thread, once nothing can post any more: drain what is left, close the handle. The
 * mutex is destroyed in the close callback. */
void outbox_close(Outbox *ob);
