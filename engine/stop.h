/* engine/stop.h — stop strings over streamed text: holds back the tail that might begin a
 * stop string, releases text once it cannot, and reports a full match. One request, one
 * thread. */
#pragma once
#include <stddef.h>

#include "engine_limits.h"

typedef struct StopMatcher {
        const char *stops[SAMPLE_MAX_STOPS];
        size_t stop_len[SAMPLE_MAX_STOPS];
        int n_stops;
        char held[SAMPLE_MAX_STOP_LEN + 64]; /* text not yet released */
        size_t n_held;
} StopMatcher;

/* stops must outlive the matcher. -EINVAL for an empty or too long stop, -E2BIG for too many. */
int stop_init(StopMatcher *s, const char *const *stops, int n_stops);
/* Append len bytes of text. Writes releasable text to out (room for len +
 * SAMPLE_MAX_STOP_LEN bytes) and sets *ret_out_len. Returns 1 when a stop string matched (out then
 * holds the text before it, and the match ends the stream), else 0. */
int stop_push(StopMatcher *s, const char *text, size_t len, char *out, size_t *ret_out_len);
/* At the end of the stream: release everything still held. */
size_t stop_flush(StopMatcher *s, char *out);
