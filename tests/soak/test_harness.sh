#!/usr/bin/env bash
# tests/soak/test_harness.sh — soak.py must be able to fail: against tests/soak/fake_mixd.py it
# passes when nothing goes wrong, fails when the first requests (the warm-up) get errors, and
# fails within its read timeout, instead of hanging, when one reply never comes.
# Usage: test_harness.sh (from anywhere inside the repository).
set -u
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-/usr/bin/python3}
FAKE=tests/soak/fake_mixd.py
out=$(mktemp)
trap 'rm -f "$out"' EXIT
pass=0 fail=0
expect() { # expect NAME STATUS PATTERN FAULT SOAK-ARGS...
        local name=$1 want=$2 pattern=$3 fault=$4; shift 4
        FAKE_MIXD_FAULT=$fault timeout 60 "$PYTHON" tests/soak/soak.py "$FAKE" "$@" >"$out" 2>&1
        local got=$?
        if [ "$got" = "$want" ] && grep -q -- "$pattern" "$out"; then
                pass=$((pass + 1))
        else
                fail=$((fail + 1))
                echo "FAIL: $name: exit $got (wanted $want, output matching '$pattern')"
                sed 's/^/    | /' "$out" | head -n 12
        fi
}
expect "no fault: passes" 0 "lost 0, errors 0" "" --clients 4 --requests 10
expect "errors on the first requests (warm-up) fail it" 1 "lost 0, errors 3" error-first=3 --clients 4 --requests 10
expect "a lost reply fails it within the read timeout" 1 "lost 1, errors 0" lose=2 --clients 2 --requests 5 --read-timeout 2
echo "soak harness against a faulty fake daemon: $pass passed, $fail failed"
[ "$fail" = 0 ]
