#!/usr/bin/env bash
# tests/unit/harness.sh — the unit tests' own rules, checked from outside:
#  - a test whose fixture is missing is reported SKIPPED by cmocka (not PASSED), and FAILED
#    under CI=true (test_forward and test_numa with FIXTURES pointing nowhere);
#  - MIXD_REQUIRE_ISA fails a run that does not cover an instruction set: test_isa is run
#    requiring each set in turn and must pass exactly for the sets /proc/cpuinfo says this
#    CPU has (so a detection that misses one fails too), and must reject an unknown name.
# Usage: harness.sh BUILD_DIR (e.g. build/asan)
set -u
B=$1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
pass=0 fail=0
ok() { pass=$((pass + 1)); }
bad() {
        fail=$((fail + 1))
        echo "FAIL: $1"
        sed 's/^/    | /' "$tmp/out" | tail -n 8
}

for t in test_forward test_numa; do
        env -u CI FIXTURES="$tmp/none" "$B/tests/$t" >"$tmp/out" 2>&1
        rc=$?
        if [ "$rc" = 0 ] && grep -q '^\[  SKIPPED \]' "$tmp/out" && ! grep -q '^\[  FAILED  \]' "$tmp/out"; then
                ok
        else
                bad "$t without fixtures: exit $rc, wanted 0 with the fixture tests SKIPPED"
        fi
        CI=true FIXTURES="$tmp/none" "$B/tests/$t" >"$tmp/out" 2>&1
        rc=$?
        if [ "$rc" != 0 ] && grep -q 'CI=true: a missing fixture is a failure' "$tmp/out"; then
                ok
        else
                bad "$t without fixtures under CI=true: exit $rc, wanted a failure"
        fi
done

flags=" $(grep -m 1 '^flags' /proc/cpuinfo | cut -d: -f2) "
has() { for f in "$@"; do case $flags in *" $f "*) ;; *) return 1;; esac; done; }
covered="scalar"
has avx2 fma f16c && covered="$covered avx2"
has avx512f avx512bw avx512vl avx512dq fma f16c && covered="$covered avx512"
has avx512f avx512bw avx512vl avx512dq fma f16c avx512_vnni && covered="$covered avx512vnni"
for isa in scalar avx2 avx512 avx512vnni; do
        MIXD_REQUIRE_ISA=$isa "$B/tests/test_isa" >"$tmp/out" 2>&1
        rc=$?
        case " $covered " in
        *" $isa "*) if [ "$rc" = 0 ]; then ok; else bad "MIXD_REQUIRE_ISA=$isa: the CPU has it, exit $rc"; fi ;;
        *) if [ "$rc" != 0 ] && grep -q "cannot run the $isa kernels" "$tmp/out"; then ok
           else bad "MIXD_REQUIRE_ISA=$isa: the CPU lacks it, exit $rc (wanted a failure)"; fi ;;
        esac
done
MIXD_REQUIRE_ISA=avx2,sse9 "$B/tests/test_isa" >"$tmp/out" 2>&1
rc=$?
if [ "$rc" != 0 ] && grep -q "'sse9' is not one of" "$tmp/out"; then ok; else bad "MIXD_REQUIRE_ISA=avx2,sse9: exit $rc"; fi

echo "unit harness (fixtures skipped or failed in CI; ISAs covered here:$(printf ' %s' $covered)): $pass passed, $fail failed"
[ "$fail" = 0 ]
