/* tests/unit/test_quant.c — engine/quant.c against external ground truth: every dequantizer
 * bit for bit against ggml's own output (quant-zoo.gguf), every vec_dot against
 * dequantize-then-dot, fp16 conversions over all 65536 halves, block sizes against the
 * traits table. Single-threaded cmocka test; run from the repository root. */
#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "gguf.h"
#include "quant.h"

/* ---------------------------------------------------------------------------------------
 * Fixtures: $FIXTURES or ../shared/fixtures (relative to the repository root). A missing
 * fixture fails the test when CI=true and skips it loudly otherwise. */

static const char *fixture_dir(void) {
        const char *d = getenv("FIXTURES");
        return d && *d ? d : "../shared/fixtures";
}

static int in_ci(void) {
        const char *ci = getenv("CI");
        return ci && strcmp(ci, "true") == 0;
}

/* Opens a fixture, or returns NULL after skipping (or failing, in CI) the current test. */
static GGUFFile *open_fixture_or_skip(const char *name) {
        char path[4096];
        GGUFError err = { "" };
        GGUFFile *f = NULL;

        snprintf(path, sizeof(path), "%s/%s", fixture_dir(), name);
        if (access(path, R_OK) < 0) {
                if (in_ci())
                        fail_msg("fixture %s missing (CI=true: a missing fixture is a failure)", path);
                fprintf(stderr, "\n*** SKIPPED: fixture %s is missing (set FIXTURES=dir) ***\n\n", path);
                return NULL;
        }
        int r = gguf_open(path, &err, &f);
        if (r < 0)
                fail_msg("gguf_open(%s) = %d: %s", path, r, err.msg);
        return f;
}

/* ---------------------------------------------------------------------------------------
 * The types of quant-zoo.gguf. */

typedef struct ZooType {
        const char *name; /* T in zoo.T */
        uint32_t type;
} ZooType;

static const ZooType zoo_types[] = {
        { "F16",  GGML_TYPE_F16 },  { "BF16", GGML_TYPE_BF16 }, { "Q4_0", GGML_TYPE_Q4_0 },
        { "Q4_1", GGML_TYPE_Q4_1 }, { "Q5_0", GGML_TYPE_Q5_0 }, { "Q5_1", GGML_TYPE_Q5_1 },
        { "Q8_0", GGML_TYPE_Q8_0 }, { "Q2_K", GGML_TYPE_Q2_K }, { "Q3_K", GGML_TYPE_Q3_K },
        { "Q4_K", GGML_TYPE_Q4_K }, { "Q5_K", GGML_TYPE_Q5_K }, { "Q6_K", GGML_TYPE_Q6_K },
};
#define N_ZOO (sizeof(zoo_types) / sizeof(zoo_types[0]))

/* The quantized tensor zoo.T and its ggml dequantization zoo.T.f32, checked for shape. */
static void zoo_pair(const GGUFFile *f, const ZooType *z, const GGUFTensor **ret_q, const GGUFTensor **ret_ref) {
        char name[64];
        snprintf(name, sizeof(name), "zoo.%s", z->name);
        const GGUFTensor *q = gguf_find_tensor(f, name);
        if (!q)
                fail_msg("quant-zoo.gguf has no tensor %s", name);
        snprintf(name, sizeof(name), "zoo.%s.f32", z->name);
        const GGUFTensor *ref = gguf_find_tensor(f, name);
        if (!ref)
                fail_msg("quant-zoo.gguf has no tensor %s", name);
        assert_int_equal(q->type, z->type);
        assert_int_equal(ref->type, GGML_TYPE_F32);
        assert_int_equal(q->n_elements, ref->n_elements);
        assert_int_equal(q->ne[0], ref->ne[0]);
        assert_true(q->ne[0] % quant_traits(z->type)->block_size == 0);
        *ret_q = q;
        *ret_ref = ref;
}

/* ---------------------------------------------------------------------------------------
 * Dequantization: bit for bit against ggml. */

static void test_dequant_bit_exact(void **state) {
        GGUFFile *f = open_fixture_or_skip("quant-zoo.gguf");
        int n_bad_types = 0;
        if (!f) {
                skip();
                return;
        }
        for (size_t k = 0; k < N_ZOO; k++) {
                const ZooType *z = &zoo_types[k];
                const GGUFTensor *q, *ref;
                zoo_pair(f, z, &q, &ref);

                const QuantTraits *qt = quant_traits(z->type);
                assert_non_null(qt);
                const int64_t n_col = (int64_t)q->ne[0], n_row = (int64_t)(q->n_elements / q->ne[0]);
                const size_t row_bytes = (size_t)(n_col / qt->block_size) * qt->type_size;
                assert_int_equal(row_bytes * (size_t)n_row, q->n_bytes);
                float *row = malloc((size_t)n_col * sizeof(float));
                assert_non_null(row);

                uint64_t n_bad = 0, first_bad = UINT64_MAX;
                float got_bad = 0, want_bad = 0;
                for (int64_t r = 0; r < n_row; r++) {
                        const uint8_t *src = (const uint8_t *)q->data + (size_t)r * row_bytes;
                        const float *want = (const float *)ref->data + r * n_col;
                        qt->dequant(src, row, n_col);
                        if (memcmp(row, want, (size_t)n_col * sizeof(float)) == 0)
                                continue;
                        for (int64_t c = 0; c < n_col; c++) {
                                uint32_t gb, wb;
                                memcpy(&gb, &row[c], 4);
                                memcpy(&wb, &want[c], 4);
                                if (gb == wb)
                                        continue;
                                if (n_bad++ == 0) {
                                        first_bad = (uint64_t)(r * n_col + c);
                                        got_bad = row[c];
                                        want_bad = want[c];
                                }
                        }
                }
                if (n_bad == 0) {
                        print_message("ok   %-5s %lld x %lld bit-identical\n", z->name, (long long)n_row, (long long)n_col);
                } else {
                        uint32_t gb, wb;
                        memcpy(&gb, &got_bad, 4);
                        memcpy(&wb, &want_bad, 4);
                        print_error("FAIL %-5s %llu of %llu values differ; first at index %llu (row %llu, col %llu): "
                                    "got %.9g (0x%08x) want %.9g (0x%08x)\n",
                                    z->name, (unsigned long long)n_bad, (unsigned long long)q->n_elements,
                                    (unsigned long long)first_bad, (unsigned long long)(first_bad / (uint64_t)n_col),
                                    (unsigned long long)(first_bad % (uint64_t)n_col), got_bad, gb, want_bad, wb);
                        n_bad_types++;
                }
                free(row);
        }
        gguf_close(f);
        assert_int_equal(n_bad_types, 0);
}

/* ---------------------------------------------------------------------------------------
 * vec_dot against dequantize-then-dot. */

/* splitmix64: the test owns its RNG, fixed seed. */
static uint64_t rng_next(uint64_t *s) {
        uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        return z ^ (z >> 31);
}

/* Uniform in [-1, 1). */
static float rng_float(uint64_t *s) {
        return (float)((double)(rng_next(s) >> 11) * 0x1.0p-53 * 2.0 - 1.0);
}

/* Tolerance for a float dot product of n terms: 1e-5 relative to sum |w_i * a_i| (the
 * magnitude the rounding error scales with; equal to |dot| when nothing cancels). */
#define VEC_DOT_RTOL 1e-5

static void check_vec_dot(const GGUFTensor *t, const char *label, double *ret_max_err) {
        const QuantTraits *qt = quant_traits(t->type);
        const int64_t n_col = (int64_t)t->ne[0], n_row = (int64_t)(t->n_elements / t->ne[0]);
        const size_t row_bytes = (size_t)(n_col / qt->block_size) * qt->type_size;
        float *w = malloc((size_t)n_col * sizeof(float)), *a = malloc((size_t)n_col * sizeof(float));
        uint64_t seed = 0x6d69786400000000ull ^ t->type;
        double max_err = 0;
        assert_non_null(w);
        assert_non_null(a);

        for (int64_t r = 0; r < n_row; r++) {
                const uint8_t *src = (const uint8_t *)t->data + (size_t)r * row_bytes;
                for (int64_t i = 0; i < n_col; i++)
                        a[i] = rng_float(&seed);
                qt->dequant(src, w, n_col);
                double ref = 0, scale = 0;
                for (int64_t i = 0; i < n_col; i++) {
                        ref += (double)w[i] * (double)a[i];
                        scale += fabs((double)w[i] * (double)a[i]);
                }
                const float got = qt->vec_dot(src, a, n_col);
                const double err = fabs((double)got - ref);
                if (!(err <= VEC_DOT_RTOL * scale))
                        fail_msg("%s vec_dot row %lld: got %.9g, dequantize-then-dot %.9g (error %.3g, allowed %.3g)",
                                 label, (long long)r, got, ref, err, VEC_DOT_RTOL * scale);
                if (scale > 0 && err / scale > max_err)
                        max_err = err / scale;
        }
        free(w);
        free(a);
        *ret_max_err = max_err;
}

static void test_vec_dot(void **state) {
        GGUFFile *f = open_fixture_or_skip("quant-zoo.gguf");
        if (!f) {
                skip();
                return;
        }
        for (size_t k = 0; k < N_ZOO; k++) {
                const GGUFTensor *q, *ref;
                double e_q, e_f32;
                char label[32];
                zoo_pair(f, &zoo_types[k], &q, &ref);
                check_vec_dot(q, zoo_types[k].name, &e_q);
                snprintf(label, sizeof(label), "%s.f32 (F32)", zoo_types[k].name);
                check_vec_dot(ref, label, &e_f32);
                print_message("ok   %-5s vec_dot: max error / sum|w*a| = %.2e (F32 twin %.2e)\n", zoo_types[k].name, e_q, e_f32);
        }
        gguf_close(f);
}

/* ---------------------------------------------------------------------------------------
 * fp16 / bf16 conversions. */

/* Value of half h computed independently: (-1)^s * 2^(e-15) * 1.m, or 2^-14 * 0.m. */
static double half_value(uint16_t h) {
        const int s = h >> 15, e = (h >> 10) & 0x1f, m = h & 0x3ff;
        double v;
        if (e == 0x1f)
                v = m ? NAN : INFINITY;
        else if (e == 0)
                v = ldexp((double)m, -24);
        else
                v = ldexp((double)(m | 0x400), e - 25);
        return s ? -v : v;
}

static void test_fp16_round_trip(void **state) {
        for (uint32_t i = 0; i < 65536; i++) {
                const uint16_t h = (uint16_t)i;
                const float f = fp16_to_fp32(h);
                const double want = half_value(h);
                const uint16_t back = fp32_to_fp16(f);
                if (isnan(want)) {
                        if (!isnan(f))
                                fail_msg("fp16_to_fp32(0x%04x) = %.9g, want NaN", h, f);
                        if ((back & 0x7c00) != 0x7c00 || (back & 0x3ff) == 0)
                                fail_msg("fp32_to_fp16(NaN from 0x%04x) = 0x%04x, not a NaN", h, back);
                        continue;
                }
                if ((double)f != want || !signbit(f) != !signbit(want))
                        fail_msg("fp16_to_fp32(0x%04x) = %.9g, want %.9g", h, f, want);
                if (back != h)
                        fail_msg("fp32_to_fp16(fp16_to_fp32(0x%04x)) = 0x%04x", h, back);
        }
}

/* fp32_to_fp16 rounds to nearest, ties to even, like the hardware conversion ggml uses. */
static void test_fp32_to_fp16_rounding(void **state) {
        uint64_t seed = 42;
        /* Exact midpoints between adjacent halves, and one ulp either side of them. */
        for (uint32_t i = 0; i < 0x7bff; i++) {
                const double lo = half_value((uint16_t)i), hi = half_value((uint16_t)(i + 1));
                const float mid = (float)((lo + hi) / 2); /* exact: halves have 11-bit mantissas */
                const uint16_t even = (i & 1) ? (uint16_t)(i + 1) : (uint16_t)i;
                if ((double)mid != (lo + hi) / 2)
                        fail_msg("midpoint of 0x%04x not representable", i);
                if (fp32_to_fp16(mid) != even)
                        fail_msg("fp32_to_fp16(%.9g) = 0x%04x, want 0x%04x (tie to even)", mid, fp32_to_fp16(mid), even);
                if (fp32_to_fp16(-mid) != (even | 0x8000))
                        fail_msg("fp32_to_fp16(%.9g) = 0x%04x, want 0x%04x", -mid, fp32_to_fp16(-mid), even | 0x8000);
                if (fp32_to_fp16(nextafterf(mid, 0.0f)) != (uint16_t)i && mid != 0.0f)
                        fail_msg("fp32_to_fp16(just below %.9g) = 0x%04x, want 0x%04x", mid, fp32_to_fp16(nextafterf(mid, 0.0f)), i);
                if (fp32_to_fp16(nextafterf(mid, INFINITY)) != (uint16_t)(i + 1))
                        fail_msg("fp32_to_fp16(just above %.9g) = 0x%04x, want 0x%04x", mid, fp32_to_fp16(nextafterf(mid, INFINITY)), i + 1);
        }
        /* Overflow: 65520 (midpoint between the largest half and 2^16) rounds to infinity. */
        assert_int_equal(fp32_to_fp16(65519.996f), 0x7bff);
        assert_int_equal(fp32_to_fp16(65520.0f), 0x7c00);
        assert_int_equal(fp32_to_fp16(1e10f), 0x7c00);
        assert_int_equal(fp32_to_fp16(-INFINITY), 0xfc00);
        assert_int_equal(fp32_to_fp16(1e-10f), 0x0000);
        assert_int_equal(fp32_to_fp16(-1e-10f), 0x8000);
#ifdef __FLT16_MAX__
        /* The compiler's own correctly-rounded conversion, over random float bit patterns. */
        for (int i = 0; i < 1000000; i++) {
                const uint32_t bits = (uint32_t)rng_next(&seed);
                float x;
                memcpy(&x, &bits, 4);
                if (isnan(x))
                        continue;
                const _Float16 hw = (_Float16)x;
                uint16_t want;
                memcpy(&want, &hw, 2);
                if (fp32_to_fp16(x) != want)
                        fail_msg("fp32_to_fp16(%.9g = 0x%08x) = 0x%04x, compiler says 0x%04x", x, bits, fp32_to_fp16(x), want);
        }
#else
        (void)seed;
#endif
}

static void test_bf16(void **state) {
        for (uint32_t i = 0; i < 65536; i++) {
                const float f = bf16_to_fp32((uint16_t)i);
                uint32_t bits;
                memcpy(&bits, &f, 4);
                assert_int_equal(bits, i << 16);
        }
}

/* ---------------------------------------------------------------------------------------
 * Block layouts: ggml's size formulas (ggml-common.h), derived independently here, must
 * match the structs' static_asserts and the traits table. */

static_assert(sizeof(BlockQ4_0) == sizeof(ggml_half) + QK4_0 / 2, "Q4_0");
static_assert(sizeof(BlockQ4_1) == 2 * sizeof(ggml_half) + QK4_1 / 2, "Q4_1");
static_assert(sizeof(BlockQ5_0) == sizeof(ggml_half) + sizeof(uint32_t) + QK5_0 / 2, "Q5_0");
static_assert(sizeof(BlockQ5_1) == 2 * sizeof(ggml_half) + sizeof(uint32_t) + QK5_1 / 2, "Q5_1");
static_assert(sizeof(BlockQ8_0) == sizeof(ggml_half) + QK8_0, "Q8_0");
static_assert(sizeof(BlockQ2_K) == 2 * sizeof(ggml_half) + QK_K / 16 + QK_K / 4, "Q2_K");
static_assert(sizeof(BlockQ3_K) == sizeof(ggml_half) + QK_K / 4 + QK_K / 8 + 12, "Q3_K");
static_assert(sizeof(BlockQ4_K) == 2 * sizeof(ggml_half) + K_SCALE_SIZE + QK_K / 2, "Q4_K");
static_assert(sizeof(BlockQ5_K) == 2 * sizeof(ggml_half) + K_SCALE_SIZE + QK_K / 2 + QK_K / 8, "Q5_K");
static_assert(sizeof(BlockQ6_K) == sizeof(ggml_half) + QK_K / 16 + 3 * QK_K / 4, "Q6_K");

static void test_block_sizes(void **state) {
        static const struct {
                uint32_t type;
                const char *name;
                uint32_t block_size;
                size_t type_size; /* from the struct */
                size_t ggml_size; /* the number ggml uses */
        } want[] = {
                { GGML_TYPE_F32,  "F32",  1,     sizeof(float),     4 },
                { GGML_TYPE_F16,  "F16",  1,     sizeof(ggml_half), 2 },
                { GGML_TYPE_BF16, "BF16", 1,     sizeof(uint16_t),  2 },
                { GGML_TYPE_Q4_0, "Q4_0", QK4_0, sizeof(BlockQ4_0), 18 },
                { GGML_TYPE_Q4_1, "Q4_1", QK4_1, sizeof(BlockQ4_1), 20 },
                { GGML_TYPE_Q5_0, "Q5_0", QK5_0, sizeof(BlockQ5_0), 22 },
                { GGML_TYPE_Q5_1, "Q5_1", QK5_1, sizeof(BlockQ5_1), 24 },
                { GGML_TYPE_Q8_0, "Q8_0", QK8_0, sizeof(BlockQ8_0), 34 },
                { GGML_TYPE_Q2_K, "Q2_K", QK_K,  sizeof(BlockQ2_K), 84 },
                { GGML_TYPE_Q3_K, "Q3_K", QK_K,  sizeof(BlockQ3_K), 110 },
                { GGML_TYPE_Q4_K, "Q4_K", QK_K,  sizeof(BlockQ4_K), 144 },
                { GGML_TYPE_Q5_K, "Q5_K", QK_K,  sizeof(BlockQ5_K), 176 },
                { GGML_TYPE_Q6_K, "Q6_K", QK_K,  sizeof(BlockQ6_K), 210 },
        };
        for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
                const QuantTraits *qt = quant_traits(want[i].type);
                if (!qt)
                        fail_msg("quant_traits(%s) is NULL", want[i].name);
                assert_string_equal(qt->name, want[i].name);
                assert_int_equal(qt->block_size, want[i].block_size);
                assert_int_equal(qt->type_size, want[i].type_size);
                assert_int_equal(qt->type_size, want[i].ggml_size);
                assert_non_null(qt->dequant);
                assert_non_null(qt->vec_dot);
                uint64_t bytes = 0;
                assert_int_equal(quant_row_bytes(want[i].type, 4ull * qt->block_size, &bytes), 0);
                assert_int_equal(bytes, 4ull * qt->type_size);
                if (qt->block_size > 1)
                        assert_int_equal(quant_row_bytes(want[i].type, qt->block_size + 1, &bytes), -EINVAL);
        }
        /* Unsupported or removed ids (Q4_2 = 4, Q4_3 = 5, Q8_1, Q8_K, out of range). */
        static const uint32_t unsupported[] = { 4, 5, GGML_TYPE_Q8_1, GGML_TYPE_Q8_K, 16, 29, 31, 39, 40, 99, UINT32_MAX };
        for (size_t i = 0; i < sizeof(unsupported) / sizeof(unsupported[0]); i++) {
                uint64_t bytes = 0;
                assert_null(quant_traits(unsupported[i]));
                assert_int_equal(quant_row_bytes(unsupported[i], 256, &bytes), -EINVAL);
        }
        /* Overflow of the row size. */
        uint64_t bytes = 0;
        assert_int_equal(quant_row_bytes(GGML_TYPE_F32, UINT64_MAX / 2, &bytes), -EOVERFLOW);
        assert_int_equal(quant_row_bytes(GGML_TYPE_Q8_0, (UINT64_MAX / 32) * 32, &bytes), -EOVERFLOW); /* 2^59 blocks x 34 */
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_block_sizes),
                cmocka_unit_test(test_fp16_round_trip),
                cmocka_unit_test(test_fp32_to_fp16_rounding),
                cmocka_unit_test(test_bf16),
                cmocka_unit_test(test_dequant_bit_exact),
                cmocka_unit_test(test_vec_dot),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
