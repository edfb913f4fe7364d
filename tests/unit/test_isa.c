/* tests/unit/test_isa.c — which instruction sets the kernel tests cover on this machine.
 * test_kernels and test_int8 check every variant this CPU and build can run, and only those,
 * so a machine without AVX-512 leaves the AVX-512 kernels untested. This test prints the sets
 * covered ("note: ..." lines, which tests/run.sh shows) and fails when MIXD_REQUIRE_ISA, a
 * comma-separated list of scalar, avx2, avx512 and avx512vnni, names one that is not covered
 * (or a name not in that list). MIXD_ISA does not change the coverage: it caps the kernels
 * the engine chooses, not the variants the tests call. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "quant.h"
#include "quant_int8.h"

/* Whether the kernel tests cover the instruction set called name: 1 yes, 0 no, -1 no such name.
 * Covered: test_int8 runs its int8 variants and, for scalar, avx2 and avx512, test_kernels
 * its float ones. */
static int covered(const char *name) {
        for (int isa = 0; isa < QUANT_INT8_ISA_COUNT_; isa++) {
                if (strcmp(name, quant_int8_isa_name((QuantInt8Isa)isa)) != 0)
                        continue;
                int ok = quant_int8_isa_supported((QuantInt8Isa)isa);
                if (isa < QUANT_ISA_COUNT_) {
                        assert_string_equal(quant_isa_name((QuantIsa)isa), name);
                        ok = ok && quant_isa_supported((QuantIsa)isa);
                }
                return ok ? 1 : 0;
        }
        return -1;
}

static void test_coverage(void **state) {
        (void)state;
        char yes[128] = "", no[128] = "";
        for (int isa = 0; isa < QUANT_INT8_ISA_COUNT_; isa++) {
                const char *name = quant_int8_isa_name((QuantInt8Isa)isa);
                char *list = covered(name) == 1 ? yes : no;
                snprintf(list + strlen(list), sizeof(yes) - strlen(list), " %s", name);
        }
        print_message("note: kernel tests cover:%s; not covered on this machine:%s\n", yes, *no ? no : " none");
        const char *req = getenv("MIXD_REQUIRE_ISA");
        if (!req || !*req)
                return;
        char buf[256];
        snprintf(buf, sizeof(buf), "%s", req);
        for (char *save = NULL, *name = strtok_r(buf, ",", &save); name; name = strtok_r(NULL, ",", &save)) {
                const int c = covered(name);
                if (c < 0)
                        fail_msg("MIXD_REQUIRE_ISA: '%s' is not one of scalar, avx2, avx512, avx512vnni", name);
                if (c == 0)
                        fail_msg("MIXD_REQUIRE_ISA=%s: this CPU (or build) cannot run the %s kernels, so "
                                 "no test covered them", req, name);
        }
        print_message("note: MIXD_REQUIRE_ISA=%s: all covered\n", req);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_coverage),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
