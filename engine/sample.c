/* engine/sample.c — the sampling chain, in llama.cpp's default order: repeat penalty →
 * top-k → softmax → top-p → min-p → temperature → draw. Greedy when temperature <= 0. */
#include "sample.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine_limits.h"

typedef struct Candidate {
        float logit;
        float p;
        int32_t id;
} Candidate;

struct Sampler {
        SamplerParams p;
        uint32_t n_vocab;
        uint64_t rng;
        Candidate *cand;   /* [n_vocab] */
        int32_t *history;  /* ring of the last repeat_last_n tokens */
        uint32_t n_history, history_pos;
};

int sampler_validate(const SamplerParams *p) {
        if (!(p->temperature >= 0.0f) || !isfinite(p->temperature) || !(p->top_p > 0.0f && p->top_p <= 1.0f) ||
            !(p->min_p >= 0.0f && p->min_p <= 1.0f) || !(p->repeat_penalty > 0.0f) || !isfinite(p->repeat_penalty) ||
            p->repeat_last_n < 0 || p->repeat_last_n > SAMPLE_MAX_REPEAT_LAST)
                return -EINVAL;
        return 0;
}

int sampler_new(uint32_t n_vocab, const SamplerParams *p, Sampler **ret_sampler) {
        if (n_vocab == 0 || sampler_validate(p) < 0)
                return -EINVAL;
        Sampler *s = calloc(1, sizeof(*s));
        if (!s)
                return -ENOMEM;
        s->p = *p;
        s->n_vocab = n_vocab;
        s->rng = p->seed ^ 0x9e3779b97f4a7c15ull;
        s->cand = malloc(n_vocab * sizeof(Candidate));
        s->history = malloc(((size_t)p->repeat_last_n + 1) * sizeof(int32_t));
        if (!s->cand || !s->history) {
                sampler_free(s);
                return -ENOMEM;
        }
        *ret_sampler = s;
        return 0;
}

Sampler *sampler_free(Sampler *s) {
        if (!s)
                return NULL;
        free(s->cand);
        free(s->history);
        free(s);
        return NULL;
}

void sampler_accept(Sampler *s, int32_t token) {
        if (s->p.repeat_last_n == 0)
                return;
        s->history[s->history_pos] = token;
        s->history_pos = (s->history_pos + 1) % (uint32_t)s->p.repeat_last_n;
        if (s->n_history < (uint32_t)s->p.repeat_last_n)
                s->n_history++;
}

/* splitmix64: the sampler's own RNG, so a seed gives the same text everywhere. */
static uint64_t rng_next(uint64_t *state) {
        uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        return z ^ (z >> 31);
}

static double rng_uniform(uint64_t *state) {
        return (double)(rng_next(state) >> 11) * (1.0 / 9007199254740992.0);
}

static int cmp_candidate(const void *a, const void *b) {
        const Candidate *x = a, *y = b;
        if (x->logit != y->logit)
                return x->logit > y->logit ? -1 : 1;
        return x->id < y->id ? -1 : x->id > y->id; /* ties: lower id first */
}

/* a sorts after b (cmp_candidate): a heap of the best k keeps its worst at the root */
static int sorts_after(const Candidate *a, const Candidate *b) {
        return cmp_candidate(a, b) > 0;
}

static void sift_down(Candidate *c, uint32_t k, uint32_t i) {
        for (;;) {
                const uint32_t l = 2 * i + 1, r = l + 1;
                uint32_t m = i;
                if (l < k && sorts_after(&c[l], &c[m]))
                        m = l;
                if (r < k && sorts_after(&c[r], &c[m]))
                        m = r;
                if (m == i)
                        return;
                const Candidate t = c[i];
                c[i] = c[m];
                c[m] = t;
                i = m;
        }
}

/* The k (1 <= k <= n) candidates that sort first, in order, into c[0 .. k-1]: the same as
 * sorting all n and keeping k, at n comparisons with the heap's root plus a sort of k (a
 * full sort of Mistral's 32,000 was 7% of the daemon's time with 8 sessions sampling). */
static void keep_best(Candidate *c, uint32_t n, uint32_t k) {
        if (k < n) {
                for (uint32_t i = k / 2; i-- > 0;)
                        sift_down(c, k, i);
                for (uint32_t i = k; i < n; i++)
                        if (sorts_after(&c[0], &c[i])) {
                                c[0] = c[i];
                                sift_down(c, k, 0);
                        }
        }
        qsort(c, k, sizeof(Candidate), cmp_candidate);
}

/* On the candidates, still in id order (cand[i].id == i). */
static void apply_repeat_penalty(Sampler *s) {
        if (s->p.repeat_penalty == 1.0f)
                return;
        /* each distinct token is penalised once */
        for (uint32_t i = 0; i < s->n_history; i++) {
                int32_t t = s->history[i], seen = 0;
                for (uint32_t j = 0; j < i && !seen; j++)
                        seen = s->history[j] == t;
                if (seen || t < 0 || (uint32_t)t >= s->n_vocab)
                        continue;
                float *l = &s->cand[t].logit;
                *l = *l > 0 ? *l / s->p.repeat_penalty : *l * s->p.repeat_penalty;
        }
}

/* The rest of the chain on the n best candidates, cand[0 .. n-1] in order: softmax (at
 * temperature 1: the filters see the model's distribution), top-p, min-p, temperature, draw. */
static int32_t draw(Sampler *s, uint32_t n) {
        double sum = 0.0;
        for (uint32_t i = 0; i < n; i++)
                sum += exp((double)s->cand[i].logit - s->cand[0].logit);
        for (uint32_t i = 0; i < n; i++)
                s->cand[i].p = (float)(exp((double)s->cand[i].logit - s->cand[0].logit) / sum);

        if (s->p.top_p < 1.0f) {
                double cum = 0.0;
                for (uint32_t i = 0; i < n; i++) {
                        cum += s->cand[i].p;
                        if (cum >= s->p.top_p) {
                                n = i + 1;
                                break;
                        }
                }
        }
        if (s->p.min_p > 0.0f) {
                const float floor_p = s->cand[0].p * s->p.min_p;
                uint32_t keep = 1;
                while (keep < n && s->cand[keep].p >= floor_p)
                        keep++;
                n = keep;
        }

        /* temperature, then draw */
        sum = 0.0;
        for (uint32_t i = 0; i < n; i++) {
                s->cand[i].p = (float)exp(((double)s->cand[i].logit - s->cand[0].logit) / s->p.temperature);
                sum += s->cand[i].p;
        }
        double r = rng_uniform(&s->rng) * sum, acc = 0.0;
        for (uint32_t i = 0; i < n; i++) {
                acc += s->cand[i].p;
                if (r < acc)
                        return s->cand[i].id;
        }
        return s->cand[n - 1].id;
}

int32_t sampler_sample(Sampler *s, const float *logits) {
        uint32_t n = s->n_vocab;
        for (uint32_t i = 0; i < n; i++)
                s->cand[i] = (Candidate){ .logit = logits[i], .id = (int32_t)i };
        apply_repeat_penalty(s);

        if (s->p.temperature <= 0.0f) {
                int32_t best = 0;
                for (uint32_t i = 1; i < n; i++)
                        if (s->cand[i].logit > s->cand[best].logit)
                                best = (int32_t)i;
                return best;
        }

        if (s->p.top_k > 0 && (uint32_t)s->p.top_k < n)
                n = (uint32_t)s->p.top_k;
        keep_best(s->cand, s->n_vocab, n);

        return draw(s, n);
}
