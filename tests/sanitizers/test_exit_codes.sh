#!/usr/bin/env bash
# tests/sanitizers/test_exit_codes.sh — a sanitizer report must change a program's exit status
# to SANITIZER_EXIT (set by tests/run.sh through ASAN_OPTIONS, UBSAN_OPTIONS and LSAN_OPTIONS),
# so that a test expecting an error path's exit 1 fails when that path also leaks, overflows a
# buffer or hits undefined behaviour. Runs the deliberately defective tests/sanitizers/probe.c
# built with the project's ASan+UBSan flags. Usage: test_exit_codes.sh PATH/TO/sanitizer_probe
set -u
PROBE=$1
want=${SANITIZER_EXIT:?SANITIZER_EXIT is not set (tests/run.sh sets it)}
pass=0 fail=0
case $want in 0|1|2|3|4|130) echo "FAIL: SANITIZER_EXIT=$want is one of mixd's and mixctl's own exit codes"; exit 1;; esac
err=$(mktemp)
trap 'rm -f "$err"' EXIT
for m in clean:1:- leak:$want:LeakSanitizer ub:$want:'runtime error' overflow:$want:heap-buffer-overflow; do
        mode=${m%%:*} rest=${m#*:}
        code=${rest%%:*} report=${rest#*:}
        "$PROBE" "$mode" 2>"$err"
        got=$?
        if [ "$got" = "$code" ] && { [ "$report" = - ] || grep -q -- "$report" "$err"; }; then
                pass=$((pass + 1))
        else
                fail=$((fail + 1))
                echo "FAIL: $mode: exit $got, wanted $code${report:+ with '$report' on stderr}"
                head -n 3 "$err" | sed 's/^/    stderr: /'
        fi
done
echo "sanitizer reports exit $want, a clean error path 1: $pass passed, $fail failed"
[ "$fail" = 0 ]
