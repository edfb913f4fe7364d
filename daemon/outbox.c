/* daemon/outbox.c — the engine → loop boundary (see outbox.h). outbox_post/outbox_push: any
 * thread, under the lock; init, kick, close and the drain: the loop thread. */
#include "outbox.h"

#include <errno.h>
#include <stdlib.h>

static OutMsg *take_all(Outbox *ob) {
        pthread_mutex_lock(&ob->lock);
        OutMsg *m = ob->head;
        ob->head = ob->tail = NULL;
        pthread_mutex_unlock(&ob->lock);
        return m;
}

static void on_wakeup(uv_async_t *h) {
        Outbox *ob = h->data;
        ob->drain(ob->data, take_all(ob));
}

int outbox_init(Outbox *ob, uv_loop_t *loop, OutboxDrainFn drain, void *data) {
        *ob = (Outbox){ .drain = drain, .data = data };
        int r = pthread_mutex_init(&ob->lock, NULL);
        if (r)
                return -r;
        r = uv_async_init(loop, &ob->wakeup, on_wakeup);
        if (r < 0) {
                pthread_mutex_destroy(&ob->lock);
                return r;
        }
        ob->wakeup.data = ob;
        ob->open = true;
        return 0;
}

void outbox_post(Outbox *ob, OutMsg *m) {
        m->next = NULL;
        pthread_mutex_lock(&ob->lock);
        if (ob->tail)
                ob->tail->next = m;
        else
                ob->head = m;
        ob->tail = m;
        pthread_mutex_unlock(&ob->lock);
        /* after the unlock: the loop may already have taken m, and outbox_close waits for
         * every poster to be joined, so this send always reaches an open handle */
        uv_async_send(&ob->wakeup);
}

int outbox_push(Outbox *ob, uint64_t conn_id, struct Job *job, uint8_t *frame, size_t len, bool last) {
        OutMsg *m = calloc(1, sizeof(*m));
        if (!m) {
                free(frame); /* a last frame's session is released with the job */
                return -ENOMEM;
        }
        *m = (OutMsg){ .conn_id = conn_id, .job = job, .frame = frame, .len = len, .last = last };
        outbox_post(ob, m);
        return 0;
}

void outbox_kick(Outbox *ob) {
        if (ob->open)
                uv_async_send(&ob->wakeup);
}

void outbox_msg_free(OutMsg *m) {
        if (!m)
                return;
        free(m->frame);
        free(m);
}

static void on_closed(uv_handle_t *h) {
        Outbox *ob = h->data;
        pthread_mutex_destroy(&ob->lock);
}

void outbox_close(Outbox *ob) {
        if (!ob->open)
                return;
        ob->open = false;
        OutMsg *left = take_all(ob);
        if (left)
                ob->drain(ob->data, left);
        uv_close((uv_handle_t *)&ob->wakeup, on_closed);
}
