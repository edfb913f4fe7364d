/* tests/unit/test_session.c — sessions on the repository's default model
 * (models/tiny-moe-q4_k_m.gguf, a 64-position sliding window; run from the repository root,
 * as tests/run.sh does):
 * - continuing a session gives the model the tokens of the whole text so far: the logits
 *   (to the bit) and greedy tokens of turn 2 equal a one-shot run of the concatenated text,
 *   with generated text in between, when the new text merges with the old (a rollback),
 *   and once the window has wrapped; a prompt cut short leaves an unknown segment, which
 *   the next text continues; a control token starts a new document;
 * - a cache never goes past KV_MAX_POSITION (what restoring a state file also checks). */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "engine_limits.h"
#include "forward.h"
#include "generate.h"
#include "session.h"
#include "tokenizer.h"

#define MODEL_PATH "models/tiny-moe-q4_k_m.gguf"

typedef struct Fixture {
        Model *m;
        Forward *fw;
} Fixture;

static int setup(void **state) {
        Fixture *f = calloc(1, sizeof(*f));
        ModelError err = { "" };
        assert_non_null(f);
        if (model_load(MODEL_PATH, &err, &f->m) < 0)
                fail_msg("cannot load %s: %s (run from the repository root)", MODEL_PATH, err.msg);
        assert_int_equal(forward_new(f->m, 64, 64, NULL, &f->fw), 0);
        *state = f;
        return 0;
}

static int teardown(void **state) {
        Fixture *f = *state;
        forward_free(f->fw);
        model_free(f->m);
        free(f);
        return 0;
}

/* Positions stop at KV_MAX_POSITION: a feed that would pass it is refused (-EOVERFLOW) and
 * leaves the cache as it was; one that ends exactly there runs. */
static void test_position_limit(void **state) {
        Fixture *f = *state;
        Session *s;
        const int32_t toks[2] = { 1, 1014 };
        assert_int_equal(session_new(f->m, 0, KV_DEFAULT_BUDGET, GGML_TYPE_F16, &s), 0);
        s->kv->n_pos = KV_MAX_POSITION - 1;
        assert_int_equal(session_feed(s, f->fw, toks, 2, NULL, NULL), -EOVERFLOW);
        assert_int_equal(s->kv->n_pos, KV_MAX_POSITION - 1);
        assert_int_equal(session_feed(s, f->fw, toks, 1, NULL, NULL), 0);
        assert_int_equal(s->kv->n_pos, KV_MAX_POSITION);
        assert_int_equal(session_feed(s, f->fw, toks, 1, NULL, NULL), -EOVERFLOW);
        s->kv->n_pos = -1;
        assert_int_equal(session_feed(s, f->fw, toks, 1, NULL, NULL), -EOVERFLOW);
        session_free(s);
}

/* ------------------------------------------------------------------ continuing a text */

#define MAX_GEN 16
#define MAX_FED 256

typedef struct Turn {
        float *logits;           /* [V] after the turn's last fed token (what the first token samples from) */
        int32_t gen[MAX_GEN];    /* tokens generated */
        int n_gen;
        char text[4096];         /* their text, as a client gets it */
        size_t len;
        int32_t fed[MAX_FED];    /* the tokens the turn fed */
        size_t n_fed;
        int64_t dropped;         /* positions rolled back */
} Turn;

static Session *new_session(const Fixture *f) {
        Session *s;
        assert_int_equal(session_new(f->m, 0, KV_DEFAULT_BUDGET, GGML_TYPE_F16, &s), 0);
        return s;
}

/* One turn, as the daemon runs it: plan, greedy generation of n_predict tokens, then the
 * last sampled token fed too (settling), so the session continues after it. */
static void run_turn(Forward *fw, Session *s, const char *text, int add_bos, int n_predict, Turn *t) {
        const uint32_t V = s->m->cfg.n_vocab;
        SessionPlan plan;
        Generation g;
        GenEvent ev;
        GenParams gp = { .sampling = SAMPLER_DEFAULTS, .n_predict = n_predict };
        gp.sampling.temperature = 0.0f;
        memset(t, 0, sizeof(*t));
        t->logits = calloc(V, sizeof(float));
        assert_non_null(t->logits);
        assert_int_equal(session_plan(s, text, strlen(text), add_bos, &plan), 0);
        assert_true(plan.n_feed <= MAX_FED);
        memcpy(t->fed, plan.feed, plan.n_feed * sizeof(int32_t));
        t->n_fed = plan.n_feed;
        t->dropped = s->kv->n_pos - plan.keep;
        assert_int_equal(generation_start(&g, s, &plan, &gp), 0);
        session_plan_free(&plan);
        int r, captured = 0;
        if (g.n_prompt == 0) {
                memcpy(t->logits, s->last_logits, V * sizeof(float));
                captured = 1;
        }
        do {
                r = generation_step(&g, fw, &ev);
                assert_true(r >= 0);
                if (!captured && g.prompt_fed == g.n_prompt) {
                        memcpy(t->logits, s->last_logits, V * sizeof(float));
                        captured = 1;
                }
                if (ev.has_token && t->n_gen < MAX_GEN && ev.token != tokenizer_eos(s->m->tok))
                        t->gen[t->n_gen++] = ev.token;
                assert_true(t->len + ev.text_len < sizeof(t->text));
                memcpy(t->text + t->len, ev.text, ev.text_len);
                t->len += ev.text_len;
        } while (r > 0);
        if (g.have_next) {
                g.settling = 1;
                assert_int_equal(generation_step(&g, fw, &ev), 0);
                assert_false(g.have_next);
        }
        t->text[t->len] = '\0';
        generation_done(&g);
}

/* Turn 2 of the session equals the one-shot run: same logits to the bit, same tokens. */
static void assert_same_turn(const Session *s, const Turn *a, const Turn *b, const char *what) {
        const uint32_t V = s->m->cfg.n_vocab;
        if (memcmp(a->logits, b->logits, V * sizeof(float)) != 0)
                fail_msg("%s: the logits after turn 2 differ from the one-shot run's", what);
        assert_int_equal(a->n_gen, b->n_gen);
        assert_memory_equal(a->gen, b->gen, (size_t)a->n_gen * sizeof(int32_t));
}

static void free_turns(Turn *t, int n) {
        for (int i = 0; i < n; i++)
                free(t[i].logits);
}

/* Generated text between the turns, and a turn that starts with punctuation (", what":
 * tokenized as a fresh string it would be "▁," "▁what"). */
static void test_continuation_equals_one_shot(void **state) {
        Fixture *f = *state;
        Session *s = new_session(f), *one = new_session(f);
        Turn t[3];
        char full[8192];
        run_turn(f->fw, s, "ROMEO:", 1, 8, &t[0]);
        run_turn(f->fw, s, ", what light", 1, 8, &t[1]);
        snprintf(full, sizeof(full), "ROMEO:%s, what light", t[0].text);
        run_turn(f->fw, one, full, 1, 8, &t[2]);
        assert_same_turn(s, &t[1], &t[2], "generated text, then \", what light\"");
        /* the session holds the one-shot's tokens: BOS, then the segment */
        assert_int_equal(s->text.base, 1);
        assert_true(s->text.n_tokens >= t[2].n_fed - 1);
        assert_memory_equal(s->text.tokens, t[2].fed + 1, (t[2].n_fed - 1) * sizeof(int32_t));
        free_turns(t, 3);
        session_free(s);
        session_free(one);
}

/* The new text merges with the end of the old ("Wh" + "at" is "▁What", not "▁Wh" "at"):
 * the cache rolls back to the common prefix and feeds the whole text's tokens. */
static void test_rollback_to_common_prefix(void **state) {
        Fixture *f = *state;
        Session *s = new_session(f), *one = new_session(f);
        Turn t[3];
        run_turn(f->fw, s, "ROMEO: Wh", 1, 0, &t[0]);
        run_turn(f->fw, s, "at light", 1, 8, &t[1]);
        run_turn(f->fw, one, "ROMEO: What light", 1, 8, &t[2]);
        assert_true(t[1].dropped >= 1);
        assert_int_equal(s->kv->n_pos, (int64_t)t[2].n_fed + 8);
        assert_same_turn(s, &t[1], &t[2], "\"ROMEO: Wh\" then \"at light\"");
        free_turns(t, 3);
        session_free(s);
        session_free(one);
}

/* Past the 64-position window the cache can only drop its last position: the segment keeps
 * that token, and the next text still merges with it ("... Wh" + "at"); a text that does
 * not merge continues without the leading-space marker. Both equal the one-shot runs. */
static void test_continuation_after_the_window_wrapped(void **state) {
        Fixture *f = *state;
        static const char *const head =
                "ROMEO: But soft, what light through yonder window breaks? It is the east, and Juliet is the "
                "sun. Arise, fair sun, and kill the envious moon, who is already sick and pale with grief, that "
                "thou her maid art far more fair than she. Be not her maid, since she is envious. Wh";
        static const char *const tails[] = { "at light", ", and then" };
        for (int k = 0; k < 2; k++) {
                Session *s = new_session(f), *one = new_session(f);
                Turn t[3];
                char full[8192];
                run_turn(f->fw, s, head, 1, 0, &t[0]);
                assert_true(s->kv->n_pos > (int64_t)s->kv->n_slots); /* wrapped */
                assert_true(s->text.n_tokens == 1);
                run_turn(f->fw, s, tails[k], 1, 8, &t[1]);
                if (t[1].dropped != (k == 0)) /* "▁Wh" goes again as "▁What" */
                        fail_msg("%s: %lld positions dropped, fed %zu tokens (first %d)", tails[k], (long long)t[1].dropped,
                                 t[1].n_fed, t[1].fed[0]);
                snprintf(full, sizeof(full), "%s%s", head, tails[k]);
                run_turn(f->fw, one, full, 1, 8, &t[2]);
                assert_same_turn(s, &t[1], &t[2], tails[k]);
                free_turns(t, 3);
                session_free(s);
                session_free(one);
        }
}

/* A prompt cut short (cancelled while feeding): its text is unknown, so the next text
 * continues the cache as it is, without rollback and without the leading-space marker. A
 * control token (an EOS the model wrote) closes the segment: what follows is a new
 * document, tokenized with the marker. */
static void test_cut_prompt_and_control_tokens(void **state) {
        Fixture *f = *state;
        Forward *small;
        Session *s = new_session(f);
        SessionPlan plan;
        Generation g;
        GenEvent ev;
        GenParams gp = { .sampling = SAMPLER_DEFAULTS, .n_predict = 4 };
        int32_t *ids;
        size_t n;
        assert_int_equal(forward_new(f->m, 8, 64, NULL, &small), 0);
        assert_int_equal(session_plan(s, "ROMEO: But soft, what light through yonder window breaks?", 58, 1, &plan), 0);
        assert_true(plan.n_feed > 8);
        assert_int_equal(generation_start(&g, s, &plan, &gp), 0);
        session_plan_free(&plan);
        assert_int_equal(generation_step(&g, small, &ev), 1); /* 8 tokens in */
        generation_cancel(&g);
        assert_int_equal(generation_step(&g, small, &ev), 0);
        generation_done(&g);
        assert_int_equal(s->kv->n_pos, 8);
        assert_true(s->text.pending);
        assert_int_equal(session_plan(s, ", what", 6, 1, &plan), 0);
        assert_int_equal(plan.keep, 8);
        assert_int_equal(tokenizer_encode_text(f->m->tok, ", what", 6, 0, 0, &ids, &n), 0);
        assert_int_equal(plan.n_feed, n);
        assert_memory_equal(plan.feed, ids, n * sizeof(int32_t));
        free(ids);
        session_plan_free(&plan);

        /* an EOS after a turn (the daemon feeds the EOS a generation ends with): a new
         * document follows */
        Turn t;
        session_reset(s);
        run_turn(small, s, "ROMEO:", 1, 0, &t);
        free_turns(&t, 1);
        const int64_t after_eos = s->kv->n_pos + 1;
        const int32_t eos = tokenizer_eos(f->m->tok);
        assert_int_equal(session_feed(s, small, &eos, 1, NULL, NULL), 0);
        session_text_fed(s, &eos, 1);
        assert_int_equal(s->text.base, after_eos);
        assert_true(s->text.fresh && !s->text.pending && s->text.n_tokens == 0);
        assert_int_equal(session_plan(s, "Hello", 5, 1, &plan), 0);
        assert_int_equal(tokenizer_encode_text(f->m->tok, "Hello", 5, 0, 1, &ids, &n), 0);
        assert_int_equal(plan.keep, after_eos);
        assert_int_equal(plan.n_feed, n);
        assert_memory_equal(plan.feed, ids, n * sizeof(int32_t));
        free(ids);
        session_plan_free(&plan);
        forward_free(small);
        session_free(s);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_continuation_equals_one_shot),
                cmocka_unit_test(test_rollback_to_common_prefix),
                cmocka_unit_test(test_continuation_after_the_window_wrapped),
                cmocka_unit_test(test_cut_prompt_and_control_tokens),
                cmocka_unit_test(test_position_limit),
        };
        return cmocka_run_group_tests(tests, setup, teardown);
}
