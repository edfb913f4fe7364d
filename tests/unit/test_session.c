/* tests/unit/test_session.c — sessions on the repository's default model
 * (models/tiny-moe-q4_k_m.gguf; run from the repository root, as tests/run.sh does):
 * - a cache never goes past KV_MAX_POSITION (what restoring a state file also checks). */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "engine_limits.h"
#include "forward.h"
#include "session.h"

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

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_position_limit),
        };
        return cmocka_run_group_tests(tests, setup, teardown);
}
