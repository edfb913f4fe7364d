/* engine/stop.c — stop-string matching over streamed text (see stop.h). */
#include "stop.h"

#include <errno.h>
#include <string.h>

int stop_init(StopMatcher *s, const char *const *stops, int n_stops) {
        memset(s, 0, sizeof(*s));
        if (n_stops < 0 || n_stops > SAMPLE_MAX_STOPS)
                return -E2BIG;
        for (int i = 0; i < n_stops; i++) {
                size_t n = strlen(stops[i]);
                if (n == 0 || n > SAMPLE_MAX_STOP_LEN)
                        return -EINVAL;
                s->stops[i] = stops[i];
                s->stop_len[i] = n;
        }
        s->n_stops = n_stops;
        return 0;
}

/* Length of the longest suffix of held that is a proper prefix of some stop string. */
static size_t partial_suffix(const StopMatcher *s) {
        size_t best = 0;
        for (int i = 0; i < s->n_stops; i++) {
                size_t max = s->stop_len[i] - 1 < s->n_held ? s->stop_len[i] - 1 : s->n_held;
                for (size_t k = max; k > best; k--)
                        if (memcmp(s->held + s->n_held - k, s->stops[i], k) == 0) {
                                best = k;
                                break;
                        }
        }
        return best;
}

/* One step with at most 64 new bytes (held has room for them). */
static int push_piece(StopMatcher *s, const char *text, size_t len, char *out, size_t *ret_out_len) {
        memcpy(s->held + s->n_held, text, len);
        s->n_held += len;

        /* earliest complete match wins */
        size_t match_at = (size_t)-1;
        for (int i = 0; i < s->n_stops; i++) {
                const char *p = memmem(s->held, s->n_held, s->stops[i], s->stop_len[i]);
                if (p && (size_t)(p - s->held) < match_at)
                        match_at = (size_t)(p - s->held);
        }
        if (match_at != (size_t)-1) {
                memcpy(out, s->held, match_at);
                *ret_out_len = match_at;
                s->n_held = 0;
                return 1;
        }

        size_t keep = partial_suffix(s), release = s->n_held - keep;
        memcpy(out, s->held, release);
        memmove(s->held, s->held + release, keep);
        s->n_held = keep;
        *ret_out_len = release;
        return 0;
}

int stop_push(StopMatcher *s, const char *text, size_t len, char *out, size_t *ret_out_len) {
        size_t total = 0;
        while (len > 0) {
                size_t piece = len < 64 ? len : 64, n;
                int r = push_piece(s, text, piece, out + total, &n);
                total += n;
                if (r) {
                        *ret_out_len = total;
                        return 1;
                }
                text += piece;
                len -= piece;
        }
        *ret_out_len = total;
        return 0;
}

size_t stop_flush(StopMatcher *s, char *out) {
        size_t n = s->n_held;
        memcpy(out, s->held, n);
        s->n_held = 0;
        return n;
}
