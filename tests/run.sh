#!/usr/bin/env bash
# tests/run.sh — runs every test suite of the project and prints one closing line
# "N passed, M failed". Called by `make test` after the ASan+UBSan and optimized builds.
# Fixtures: $FIXTURES (default ../shared/fixtures). In CI (CI=true) a missing fixture is a
# failure; elsewhere the suites that need it are skipped with a loud message.
set -u
cd "$(dirname "$0")/.."
FIXTURES=${FIXTURES:-../shared/fixtures}
PYTHON=${PYTHON:-/usr/bin/python3}
ASAN=build/asan
REL=build/rel
export FIXTURES CI=${CI:-}
# Any sanitizer report makes the process exit with SANITIZER_EXIT, a status none of mixd's or
# mixctl's own (0-4, 130): a test expecting an error path's exit 1 then fails when that path
# also leaks or hits undefined behaviour. The caller's *SAN_OPTIONS come after ours and win.
export SANITIZER_EXIT=86
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:exitcode=$SANITIZER_EXIT${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:exitcode=$SANITIZER_EXIT${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"
export LSAN_OPTIONS="exitcode=$SANITIZER_EXIT${LSAN_OPTIONS:+:$LSAN_OPTIONS}"

passed=0 failed=0 skipped=0
failures=()

# Every suite runs under a time limit (SUITE_TIMEOUT seconds; `run -t SECONDS` for one suite):
# a suite that hangs (a lost reply, a daemon that never exits) is killed with its whole
# process group and fails, instead of hanging `make test`.
SUITE_TIMEOUT=${MIXD_SUITE_TIMEOUT:-1200}

run() { # run [-t SECONDS] NAME COMMAND...
        local limit=$SUITE_TIMEOUT
        if [ "$1" = -t ]; then
                limit=$2
                shift 2
        fi
        local name=$1; shift
        local log; log=$(mktemp)
        local t0=$SECONDS
        timeout --kill-after=10 "$limit" "$@" >"$log" 2>&1
        local rc=$?
        if [ "$rc" = 0 ]; then
                passed=$((passed + 1))
                printf 'PASS  %-34s (%ds) %s\n' "$name" $((SECONDS - t0)) "$(tail -n 1 "$log")"
                grep '^note: ' "$log" | sed 's/^/      | /' # what a passing suite wants said (coverage)
        else
                failed=$((failed + 1))
                failures+=("$name")
                printf 'FAIL  %-34s (%ds)\n' "$name" $((SECONDS - t0))
                tail -n 40 "$log" | sed 's/^/      | /'
                if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
                        echo "      | timed out after $limit s: killed"
                fi
        fi
        rm -f "$log"
}

# The time limit itself: a suite that hangs (with a child holding its output open) must fail
# within its limit, not hang.
check_suite_timeout() {
        local t0=$SECONDS out
        out=$(failed=0 passed=0 failures=(); run -t 2 "hang" bash -c 'sleep 300 & wait'; echo "failed=$failed")
        local dt=$((SECONDS - t0))
        if echo "$out" | grep -q '^FAIL  hang' && echo "$out" | grep -q 'timed out after 2 s' &&
                echo "$out" | grep -q '^failed=1$' && [ "$dt" -lt 20 ]; then
                passed=$((passed + 1))
                printf 'PASS  %-34s (%ds)\n' "suite time limit" "$dt"
        else
                failed=$((failed + 1))
                failures+=("suite time limit")
                printf 'FAIL  %-34s (%ds)\n' "suite time limit" "$dt"
                echo "$out" | sed 's/^/      | /'
        fi
}

# A prerequisite of some suites is missing ($1: what is missing, the failure's text; $2: what is skipped):
# a failure under CI=true, else a loud skip. Returns 1, for `have_X || ...`.
missing() {
        if [ "${CI:-}" = true ]; then
                failed=$((failed + 1))
                failures+=("$1")
                echo "FAIL  $1 (CI=true)"
        else
                skipped=$((skipped + 1))
                echo "!!!!! SKIPPING $2 !!!!!" >&2
        fi
        return 1
}

have_fixtures() {
        [ -f "$FIXTURES/tiny-moe-shakespeare/tiny-moe-f16.gguf" ] ||
                missing "fixtures missing at $FIXTURES" "fixture suites: no fixtures at $FIXTURES"
}

# The cluster mode needs Open MPI's mpirun and a mixd built with it (make deps installs both).
have_mpi() {
        { command -v mpirun >/dev/null 2>&1 && ldd "$REL/mixd" 2>/dev/null | grep -q 'libmpi'; } ||
                missing "Open MPI missing: no mpirun, or $REL/mixd built without it" \
                        "the cluster suite: no mpirun, or $REL/mixd built without Open MPI"
}

check_suite_timeout

# 0. the sanitizers' exit status: a deliberately leaking (overflowing, UB) error path
run "sanitizer reports exit $SANITIZER_EXIT, not 1" bash tests/sanitizers/test_exit_codes.sh "$ASAN/tests/sanitizer_probe"

# 1. cmocka unit tests, built with ASan+UBSan
for t in "$ASAN"/tests/test_*; do
        [ -x "$t" ] || continue
        run "unit $(basename "$t")" "$t"
done

# 1a. the unit tests' rules: a missing fixture is SKIPPED (FAILED under CI=true);
# MIXD_REQUIRE_ISA=avx512 (say) fails a run on a machine whose kernels it cannot cover
run "unit harness: fixtures, required ISAs" bash tests/unit/harness.sh "$ASAN"

# 1b. the forward pass on the portable scalar kernels (MIXD_ISA caps the instruction set)
# (the optimized build: the scalar kernels under ASan take ten minutes)
run "unit test_forward, MIXD_ISA=scalar" env MIXD_ISA=scalar "$REL/tests/test_forward"

# 2. command-line contract (exit codes, streams, determinism)
run "cli contract" bash tests/cli/test_cli.sh "$ASAN/mixctl"
run "mixctl against a misbehaving daemon" "$PYTHON" tests/cli/test_remote_errors.py "$ASAN/mixctl"
run "mixctl on a terminal" "$PYTHON" tests/cli/test_terminal.py "$ASAN/mixctl"
run "daemon end-to-end" "$PYTHON" tests/daemon/test_daemon.py "$ASAN/mixd" "$ASAN/mixctl" --quick
run "mixd checks its socket before the model" "$PYTHON" tests/daemon/test_startup.py "$ASAN/mixd"
run "systemd notify and activation" "$PYTHON" tests/service/test_notify.py "$ASAN/mixd" "$ASAN/mixctl"
run "daemon restarts, state files, reload" "$PYTHON" tests/lifecycle/test_lifecycle.py "$ASAN/mixd" "$ASAN/mixctl"
run "non-finite weights: clear errors, valid JSON" "$PYTHON" tests/python/check_nonfinite.py "$ASAN/mixd" "$ASAN/mixctl"
run "soak: 16 clients x 10 requests" "$PYTHON" tests/soak/soak.py "$ASAN/mixd" --clients 16 --requests 10
run "soak harness: lost reply, early errors" bash tests/soak/test_harness.sh
# RSS stays flat over 400 kill cycles, one client at a time (the optimized build: ASan's
# quarantine makes RSS meaningless)
run "RSS flat over 400 kill cycles" "$PYTHON" tests/daemon/rss_soak.py "$REL/mixd" "$REL/mixctl" --cycles 400 --rss-workers 1 --rss-limit 0.5
# the libFuzzer harnesses (built by make test) replay their seeds
run "fuzz harnesses replay their seeds" make --no-print-directory -C tests/fuzz replay FIXTURES="$FIXTURES" PYTHON="$PYTHON"

# 2b. the threaded parts under ThreadSanitizer (the daemon's loop, engine thread and pool)
TSAN=build/tsan
export TSAN_OPTIONS="halt_on_error=0:exitcode=$SANITIZER_EXIT:suppressions=$PWD/tests/tsan.supp${TSAN_OPTIONS:+:$TSAN_OPTIONS}"
run "TSan: unit test_pool" "$TSAN/tests/test_pool"
run "TSan: restarts, state files, reload" env MIXD_TEST_TSAN=1 "$PYTHON" tests/lifecycle/test_lifecycle.py "$TSAN/mixd" "$TSAN/mixctl"
run "TSan: frames, disconnects, sessions, cancel, queued jobs" "$PYTHON" tests/daemon/test_daemon.py "$TSAN/mixd" "$TSAN/mixctl" --quick --only 2,3,5,7,10
run "TSan: soak 8 clients x 5 requests" "$PYTHON" tests/soak/soak.py "$TSAN/mixd" --clients 8 --requests 5

# 2c. the Debian package and `make install` from a copy of the tracked files only (lintian: 0 errors)
run "package: make deb, lintian, make install" bash tests/package/test_package.sh

# 3. numerics against the fixtures' oracles
if have_fixtures; then
        F=$FIXTURES/tiny-moe-shakespeare
        run "numpy dequant vs quant-zoo" "$PYTHON" tests/python/test_quant_zoo_numpy.py "$FIXTURES"
        run "tokenizer vectors via mixctl" "$PYTHON" tests/python/check_tokenize_cli.py "$ASAN/mixctl" "$FIXTURES"
        # the cluster mode: 1-4 ranks over TCP on loopback and over shared memory give one
        # process's bits through the daemon (the optimized build: Open MPI's allocations at
        # exit are not ours to leak-check)
        if have_mpi; then
                run -t 240 "cluster: 1-4 MPI ranks, same bits" bash tests/mpi/test_cluster.sh "$REL/mixd" "$REL/mixctl" "$FIXTURES"
        fi
        # every fixture file on the default path (8-bit activations) and on the exact one
        for q in f16 q8_0 q4_k_m q4_0 q5_k_m q3_k_m q2_k; do
                run "golden logits $q" "$PYTHON" tests/python/check_golden.py "$ASAN/mixctl" "$FIXTURES" "$q"
                run "golden logits $q, exact" "$PYTHON" tests/python/check_golden.py "$REL/mixctl" "$FIXTURES" "$q" --extra=--exact
        done
        run "golden logits q4_k_m, MIXD_ISA=scalar" env MIXD_ISA=scalar "$PYTHON" tests/python/check_golden.py "$REL/mixctl" "$FIXTURES" q4_k_m
        run "golden logits past the window" "$PYTHON" tests/python/check_golden.py "$ASAN/mixctl" "$FIXTURES" long
        run "golden logits past the window, exact" "$PYTHON" tests/python/check_golden.py "$REL/mixctl" "$FIXTURES" long --extra=--exact
        run "greedy continuations f16" "$PYTHON" tests/python/check_greedy.py "$ASAN/mixctl" "$FIXTURES"
        for q in f16 q8_0 q4_k_m q4_0 q5_k_m q3_k_m q2_k; do
                run "perplexity ctx64 $q" "$PYTHON" tests/python/check_ppl.py "$REL/mixctl" "$FIXTURES" "$q"
                run "perplexity ctx64 $q, exact" "$PYTHON" tests/python/check_ppl.py "$REL/mixctl" "$FIXTURES" "$q" --extra=--exact
        done
        run "random models vs numpy oracle" "$PYTHON" tests/python/check_random_models.py "$ASAN/mixctl" "$FIXTURES"
fi

echo
if [ ${#failures[@]} -gt 0 ]; then
        printf 'failed: %s\n' "${failures[@]}"
fi
echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
