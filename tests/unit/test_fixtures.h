/* tests/unit/test_fixtures.h — where the unit tests find ../shared/fixtures: $FIXTURES or
 * ../shared/fixtures (relative to the repository root). A missing fixture fails the test when
 * CI=true; otherwise the test is skipped (cmocka's skip(): reported as SKIPPED, not PASSED)
 * with a loud message. Include after <cmocka.h>. */
#pragma once
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static inline const char *fixture_dir(void) {
        const char *d = getenv("FIXTURES");
        return d && *d ? d : "../shared/fixtures";
}

/* 1 if fixture `name` exists (path filled in); 0 after a loud message (the caller goes on
 * with the fixtures it has and calls skip() when it has none); fails in CI. */
static inline int fixture_found(const char *name, char *path, size_t size) {
        const char *ci = getenv("CI");
        snprintf(path, size, "%s/%s", fixture_dir(), name);
        if (access(path, R_OK) == 0)
                return 1;
        if (ci && strcmp(ci, "true") == 0)
                fail_msg("fixture %s missing (CI=true: a missing fixture is a failure)", path);
        fprintf(stderr, "\n*** SKIPPED: fixture %s is missing (set FIXTURES=dir) ***\n\n", path);
        return 0;
}

/* 1 if fixture `name` exists (path filled in). Otherwise it does not return: the test fails
 * in CI and is skipped elsewhere (call it before allocating anything). */
static inline int fixture_path(const char *name, char *path, size_t size) {
        if (!fixture_found(name, path, size))
                skip();
        return 1;
}
