#!/usr/bin/env bash
# tests/cli/test_cli.sh — mixctl's command-line contract: exit codes, stdin/argument rules,
# streaming to closed pipes, determinism, stop strings, chunked prefill, KV cache types. Uses
# the model in models/ (always in the repository). Usage: test_cli.sh PATH/TO/mixctl
set -u
MIXCTL=$1
MODEL=models/tiny-moe-q4_k_m.gguf
PYTHON=${PYTHON:-/usr/bin/python3}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
pass=0 fail=0

check() { # check NAME EXPECTED_STATUS ACTUAL_STATUS [extra condition result 0/1]
        local name=$1 want=$2 got=$3 cond=${4:-0}
        if [ "$got" = "$want" ] && [ "$cond" = 0 ]; then
                pass=$((pass + 1))
        else
                fail=$((fail + 1))
                echo "FAIL: $name (exit $got, wanted $want; condition $cond)"
                [ -s "$tmp/err" ] && sed 's/^/    stderr: /' "$tmp/err" | head -5
        fi
}
contains() { grep -q -- "$2" "$1"; echo $?; }

"$MIXCTL" >/dev/null 2>"$tmp/err"; check "no command" 2 $?
"$MIXCTL" frobnicate 2>"$tmp/err"; check "unknown command" 2 $?
MIXD_SOCKET="$tmp/no-daemon.sock" "$MIXCTL" generate "hi" 2>"$tmp/err"; check "no -m and no daemon: cannot connect" 3 $? "$(contains "$tmp/err" 'cannot connect')"
"$MIXCTL" --help >"$tmp/out" 2>"$tmp/err"; check "--help" 0 $? "$(contains "$tmp/out" generate)"

"$MIXCTL" generate -m "$tmp/nope.gguf" "hi" 2>"$tmp/err"; check "missing model" 1 $? "$(contains "$tmp/err" 'cannot load model')"
head -c 1000000 "$MODEL" >"$tmp/trunc.gguf"
"$MIXCTL" generate -m "$tmp/trunc.gguf" "hi" 2>"$tmp/err"; check "truncated model" 1 $? "$(contains "$tmp/err" 'past the end\|truncated')"
[ "$(wc -l <"$tmp/err")" = 1 ]; check "truncated model: one error line" 0 $?
printf 'this is not a model at all, just some text that is long enough\n' >"$tmp/text.gguf"
"$MIXCTL" tokenize -m "$tmp/text.gguf" </dev/null 2>"$tmp/err"; check "not a gguf" 1 $? "$(contains "$tmp/err" 'bad magic')"
"$MIXCTL" generate -m "$tmp" "hi" 2>"$tmp/err"; check "directory as model" 1 $?

printf 'caf\xc3' | "$MIXCTL" tokenize -m "$MODEL" >/dev/null 2>"$tmp/err"; check "tokenize invalid utf-8" 2 $? "$(contains "$tmp/err" 'UTF-8')"
printf 'ab\xff\xfe' | "$MIXCTL" generate -m "$MODEL" -n 3 >/dev/null 2>"$tmp/err"; check "generate invalid utf-8 stdin" 2 $?
"$MIXCTL" generate -m "$MODEL" -n 3 $'\xc0\xaf' >/dev/null 2>"$tmp/err"; check "generate invalid utf-8 argument" 2 $?

printf 'Hello world' | "$MIXCTL" tokenize -m "$MODEL" >"$tmp/out" 2>"$tmp/err"; check "tokenize" 0 $? "$([ "$(cat "$tmp/out")" = '[1,22557,1526]' ]; echo $?)"
printf 'Hello world' | "$MIXCTL" tokenize -m "$MODEL" --no-bos >"$tmp/out" 2>"$tmp/err"; check "tokenize --no-bos" 0 $? "$([ "$(cat "$tmp/out")" = '[22557,1526]' ]; echo $?)"
printf '<s>' | "$MIXCTL" tokenize -m "$MODEL" --no-bos >"$tmp/out" 2>"$tmp/err"; check "<s> is text" 0 $? "$(grep -q '^\[1\]$' "$tmp/out"; [ $? = 1 ]; echo $?)"
printf 'a\n' | "$MIXCTL" tokenize -m "$MODEL" --no-bos >"$tmp/out" 2>"$tmp/err"; check "stdin verbatim (newline kept)" 0 $? "$(contains "$tmp/out" '13\]')"

for bad in "--temp -1" "--top-p 2" "--top-p 0" "-n abc" "--min-p 1.5" "--repeat-last-n -3" "--seed x" "--top-k 1.5" \
           "-n -5" "--temp abc" "--repeat-penalty 0"; do
        # shellcheck disable=SC2086
        "$MIXCTL" generate -m "$MODEL" $bad "hi" >/dev/null 2>"$tmp/err"; check "bad option $bad names it" 2 $? "$(contains "$tmp/err" "${bad%% *}")"
        # shellcheck disable=SC2086
        MIXD_SOCKET="$tmp/no-daemon.sock" "$MIXCTL" generate $bad "hi" >/dev/null 2>"$tmp/err"; check "bad option $bad (daemon) names it" 2 $? "$(contains "$tmp/err" "${bad%% *}")"
done
"$MIXCTL" generate -n -5 "hi" 2>"$tmp/err"; check "-n -5: the range" 2 $? "$(contains "$tmp/err" '-1\.\.2147483647')"

# help, version: generate and tokenize list their options of both modes; help CMD is CMD --help
"$MIXCTL" --version >"$tmp/out" 2>"$tmp/err"; check "--version" 0 $? "$(grep -q '^mixctl [0-9][0-9.]*$' "$tmp/out"; echo $?)"
"$MIXCTL" generate --help >"$tmp/gh" 2>"$tmp/err"; st=$?
for opt in '-m, --model' '--int8' '--threads' '--ctx' '--exact' '--socket' '--timeout' '--session' '--temp'; do
        check "generate --help (no -m) lists $opt" 0 $st "$(contains "$tmp/gh" "$opt")"
done
"$MIXCTL" generate -m "$MODEL" --help >"$tmp/gh2" 2>"$tmp/err"; check "generate --help is the same with -m" 0 $? "$(cmp -s "$tmp/gh" "$tmp/gh2"; echo $?)"
"$MIXCTL" help generate >"$tmp/gh3" 2>"$tmp/err"; check "help generate is generate --help" 0 $? "$(cmp -s "$tmp/gh" "$tmp/gh3"; echo $?)"
"$MIXCTL" tokenize --help >"$tmp/th" 2>"$tmp/err"; check "tokenize --help (no -m) lists -m" 0 $? "$(contains "$tmp/th" '-m, --model')"
"$MIXCTL" help status >"$tmp/out" 2>"$tmp/err"; check "help status" 0 $? "$(contains "$tmp/out" 'mixctl status')"
"$MIXCTL" help frobnicate >"$tmp/out" 2>"$tmp/err"; check "help of an unknown command" 2 $?
# every long option a command's --help shows is in the man page
man=docs/man/mixctl.1
missing=""
for cmd in generate chat tokenize score sessions session status experts shutdown logits perplexity bench; do
        "$MIXCTL" help "$cmd" >"$tmp/help-$cmd" 2>/dev/null
        for opt in $(grep -o -- '--[a-z][a-z0-9-]*' "$tmp/help-$cmd" | sort -u); do
                grep -q -- "$(printf '%s' "$opt" | sed 's/-/\\\\-/g')" "$man" || missing="$missing $cmd:$opt"
        done
done
[ -z "$missing" ]; check "every option of --help is in mixctl.1 (missing:$missing)" 0 $?
# and in the bash completion, for that command
compl=packaging/mixctl.bash-completion
missing=""
for cmd in generate chat tokenize score sessions session status experts shutdown logits perplexity bench; do
        # bash-completion's helpers, reduced to what the script uses (the package may be absent)
        words=$(bash -c '_init_completion() { words=("${COMP_WORDS[@]}"); cword=$COMP_CWORD
                        cur=${COMP_WORDS[COMP_CWORD]}; prev=${COMP_WORDS[COMP_CWORD - 1]}; }
                _filedir() { :; }
                source "$1"
                COMP_WORDS=(mixctl "$2" --); COMP_CWORD=2
                _mixctl mixctl -- "$2"; printf "%s\n" "${COMPREPLY[@]}"' _ "$compl" "$cmd" 2>/dev/null)
        for opt in $(grep -o -- '--[a-z][a-z0-9-]*' "$tmp/help-$cmd" | sort -u); do
                printf '%s\n' "$words" | grep -qx -- "$opt" || missing="$missing $cmd:$opt"
        done
done
[ -z "$missing" ]; check "every option of --help completes in bash (missing:$missing)" 0 $?

"$MIXCTL" generate -m "$MODEL" -n 24 --seed 7 "ROMEO:" >"$tmp/a" 2>"$tmp/err"; check "generate seed 7" 0 $? "$([ -s "$tmp/a" ]; echo $?)"
"$MIXCTL" generate -m "$MODEL" -n 24 --seed 7 "ROMEO:" >"$tmp/b" 2>"$tmp/err"; check "same seed, same text" 0 $? "$(cmp -s "$tmp/a" "$tmp/b"; echo $?)"
"$MIXCTL" generate -m "$MODEL" -n 24 --seed 8 "ROMEO:" >"$tmp/c" 2>"$tmp/err"; check "other seed, other text" 0 $? "$(cmp -s "$tmp/a" "$tmp/c"; [ $? = 1 ]; echo $?)"
echo "ignored stdin" | "$MIXCTL" generate -m "$MODEL" -n 24 --seed 7 "ROMEO:" >"$tmp/d" 2>"$tmp/err"; check "argument wins over stdin" 0 $? "$(cmp -s "$tmp/a" "$tmp/d"; echo $?)"
printf 'ROMEO:' | "$MIXCTL" generate -m "$MODEL" -n 24 --seed 7 >"$tmp/e" 2>"$tmp/err"; check "prompt from stdin" 0 $? "$(cmp -s "$tmp/a" "$tmp/e"; echo $?)"
[ "$(tail -c 1 "$tmp/a" | od -An -c | tr -d ' ')" != '\n' ] || [ "$(wc -c <"$tmp/a")" -lt 2 ]; check "no trailing newline added to a pipe" 0 $?

"$MIXCTL" generate -m "$MODEL" -n 40 --temp 0 "ROMEO:" >"$tmp/g" 2>"$tmp/err"; check "greedy" 0 $?
"$MIXCTL" generate -m "$MODEL" -n 40 --temp 0 "ROMEO:" >"$tmp/g2" 2>"$tmp/err"; check "greedy is deterministic" 0 $? "$(cmp -s "$tmp/g" "$tmp/g2"; echo $?)"
stop=$("$PYTHON" -c 'import sys; t=open(sys.argv[1]).read(); print(t[len(t)//2:len(t)//2+3], end="")' "$tmp/g")
"$MIXCTL" generate -m "$MODEL" -n 40 --temp 0 --stop "$stop" "ROMEO:" >"$tmp/s" 2>"$tmp/err"; st=$?
"$PYTHON" -c 'import sys; g=open(sys.argv[1]).read(); s=open(sys.argv[2]).read(); stop=sys.argv[3]; sys.exit(0 if s == g[:g.index(stop)] else 1)' "$tmp/g" "$tmp/s" "$stop"
check "stop string ends output before it" 0 $st $?

"$MIXCTL" generate -m "$MODEL" -n 400 --seed 1 "ROMEO:" 2>"$tmp/err" | head -c 5 >/dev/null; check "closed stdout exits 0" 0 "${PIPESTATUS[0]}"
"$MIXCTL" logits -m "$MODEL" --tokens 1,2,3 --all 2>"$tmp/err" | head -c 5 >/dev/null; check "logits: closed stdout exits 0" 0 "${PIPESTATUS[0]}"
# any other write error is exit 1 with the reason (only EPIPE means "the reader left")
wfail='cannot write to standard output'
"$MIXCTL" generate -m "$MODEL" -n 8 --seed 1 "ROMEO:" >/dev/full 2>"$tmp/err"; check "generate > /dev/full" 1 $? "$(contains "$tmp/err" "$wfail")"
printf 'hi' | "$MIXCTL" tokenize -m "$MODEL" >/dev/full 2>"$tmp/err"; check "tokenize > /dev/full" 1 $? "$(contains "$tmp/err" "$wfail")"
"$MIXCTL" logits -m "$MODEL" --tokens 1,2 >/dev/full 2>"$tmp/err"; check "logits > /dev/full" 1 $? "$(contains "$tmp/err" "$wfail")"
"$MIXCTL" --help >/dev/full 2>"$tmp/err"; check "--help > /dev/full" 1 $? "$(contains "$tmp/err" "$wfail")"
"$MIXCTL" generate --help >/dev/full 2>"$tmp/err"; check "generate --help > /dev/full" 1 $? "$(contains "$tmp/err" "$wfail")"
[ "$(grep -c "$wfail" "$tmp/err")" = 1 ]; check "the write error is reported once" 0 $?

"$MIXCTL" generate -m "$MODEL" -n -1 --seed 3 --temp 1 "ROMEO:" >/dev/null 2>"$tmp/err" &
pid=$!; sleep 1.5; kill -INT $pid; wait $pid; check "SIGINT exits 130" 130 $?

# chunked prefill gives the same bits as one chunk, on the exact path: the first 64 tokens
# (the model's window, so the most one chunk can hold) in one chunk against chunks of 7 and of
# 1; past the window (chunks then straddle the rolling cache) chunks of 7 against the largest
toks=$(printf 'First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\nFirst Citizen:\nYou are all resolved rather to die than to famish?\n\nAll:\nResolved. resolved.\n\nFirst Citizen:\nFirst, you know Caius Marcius is chief enemy to the people.' | "$MIXCTL" tokenize -m "$MODEL" | tr -d '[]\n')
toks64=$(echo "$toks" | cut -d, -f1-64)
"$MIXCTL" logits -m "$MODEL" --tokens "$toks64" --all --exact >"$tmp/one" 2>"$tmp/err"; check "logits, 64 tokens in one chunk" 0 $?
"$MIXCTL" logits -m "$MODEL" --tokens "$toks64" --all --chunk 1 --exact >"$tmp/l1" 2>"$tmp/err"; check "logits chunk 1" 0 $?
"$MIXCTL" logits -m "$MODEL" --tokens "$toks" --all --chunk 64 --exact >"$tmp/l64" 2>"$tmp/err"; check "logits chunk 64" 0 $?
"$MIXCTL" logits -m "$MODEL" --tokens "$toks" --all --chunk 7 --exact >"$tmp/l7" 2>"$tmp/err"; check "logits chunk 7" 0 $?
"$MIXCTL" logits -m "$MODEL" --tokens "$toks" --exact >"$tmp/last" 2>"$tmp/err"; check "logits last" 0 $?
"$PYTHON" - "$tmp/one" "$tmp/l1" "$tmp/l64" "$tmp/l7" "$tmp/last" <<'PY'
import json, sys
one, l1, a, b, last = ([json.loads(l) for l in open(p)] for p in sys.argv[1:6])
assert len(one) == len(l1) == 64 and len(a) == len(b) > 64, (len(one), len(l1), len(a), len(b))
# every logit printed with 9 significant digits: equal text is equal float32 bits
diff = lambda xs, ys: [x["pos"] for x, y in zip(xs, ys) if x["pos"] != y["pos"] or x["logits"] != y["logits"]]
bad = {"chunks of 1 vs one chunk": diff(l1, one), "chunks of 7 vs one chunk": diff(b[:64], one),
       "chunks of 7 vs 64 (whole prompt)": diff(b, a), "64-token prefix of the whole prompt vs one chunk": diff(a[:64], one)}
assert len(last) == 1 and last[0]["pos"] == a[-1]["pos"] and last[0]["logits"] == a[-1]["logits"]
print("same bits: " + "; ".join("%s: %s" % (k, "yes" if not v else "no, positions %s" % v[:8]) for k, v in bad.items()))
sys.exit(1 if any(bad.values()) else 0)
PY
check "chunked prefill: the same bits as one chunk" 0 $?
# the same on the default path (8-bit activations): chunking still changes nothing, it stays
# close to the exact path, and position 0 (FORWARD_EXACT_POSITIONS) is the exact path's bit for bit
"$MIXCTL" logits -m "$MODEL" --tokens "$toks" --all --chunk 64 >"$tmp/i64" 2>"$tmp/err"; check "int8 logits chunk 64" 0 $?
"$MIXCTL" logits -m "$MODEL" --tokens "$toks" --all --chunk 7 --int8 >"$tmp/i7" 2>"$tmp/err"; check "int8 logits chunk 7 (--int8: the default)" 0 $?
"$PYTHON" - "$tmp/i64" "$tmp/i7" "$tmp/l64" <<'PY'
import json, sys
import numpy as np
a = [json.loads(l) for l in open(sys.argv[1])]
b = [json.loads(l) for l in open(sys.argv[2])]
f = [json.loads(l) for l in open(sys.argv[3])]
assert len(a) == len(b) == len(f) > 64
same = all(x["logits"] == y["logits"] for x, y in zip(a, b))
rel = [float(np.max(np.abs(np.array(x["logits"]) - np.array(y["logits"]))) / np.max(np.abs(np.array(y["logits"]))))
       for x, y in zip(a, f)]
top1 = sum(int(np.argmax(x["logits"]) == np.argmax(y["logits"])) for x, y in zip(a, f)) / len(a)
first_exact = a[0]["logits"] == f[0]["logits"]
later_differ = any(x["logits"] != y["logits"] for x, y in zip(a[1:], f[1:]))
print("int8: chunk 7 == chunk 64: %s; vs float: median relative max-diff %.3g, top-1 agreement %.0f%%; "
      "position 0 exact: %s; later positions on the 8-bit path: %s"
      % (same, float(np.median(rel)), 100 * top1, first_exact, later_differ))
sys.exit(0 if same and float(np.median(rel)) < 0.05 and top1 >= 0.9 and first_exact and later_differ else 1)
PY
check "int8: chunking changes nothing, close to float" 0 $?
# KV cache types: q8_0 keys and values, chunking still changes nothing and it stays close to f16
"$MIXCTL" logits -m "$MODEL" --tokens "$toks" --all --chunk 64 --kv-type q8_0 >"$tmp/q64" 2>"$tmp/err"; check "q8_0 KV logits chunk 64" 0 $?
"$MIXCTL" logits -m "$MODEL" --tokens "$toks" --all --chunk 7 --kv-type q8_0 >"$tmp/q7" 2>"$tmp/err"; check "q8_0 KV logits chunk 7" 0 $?
"$MIXCTL" logits -m "$MODEL" --tokens "$toks" --all --chunk 7 --kv-type f32 >"$tmp/f7" 2>"$tmp/err"; check "f32 KV logits chunk 7" 0 $?
"$PYTHON" - "$tmp/q64" "$tmp/q7" "$tmp/l64" "$tmp/f7" <<'PY'
import json, sys
import numpy as np
q64, q7, f16, f32 = ([json.loads(l) for l in open(p)] for p in sys.argv[1:5])
assert len(q64) == len(q7) == len(f16) == len(f32) > 64
same = all(x["logits"] == y["logits"] for x, y in zip(q64, q7))
def rel(a, b):
    return float(np.median([np.max(np.abs(np.array(x["logits"]) - np.array(y["logits"]))) / np.max(np.abs(np.array(y["logits"])))
                            for x, y in zip(a, b)]))
r8, r32 = rel(q64, f16), rel(f32, f16)
differ = any(x["logits"] != y["logits"] for x, y in zip(q64, f16))
print("q8_0 KV: chunk 7 == chunk 64: %s; vs f16 KV: median relative max-diff %.3g; f32 vs f16 %.3g" % (same, r8, r32))
sys.exit(0 if same and differ and r8 < 0.05 and r32 < 0.01 else 1)
PY
check "q8_0 KV: chunking changes nothing, close to f16; f32 close too" 0 $?
"$MIXCTL" logits -m "$MODEL" --tokens "1,2" --kv-type q4 2>"$tmp/err"; check "bad --kv-type" 2 $? "$(contains "$tmp/err" 'kv-type')"
"$MIXCTL" bench -m "$MODEL" --pp 8 --tg 2 --repeat 1 --no-per-token --kv-type q8_0 >"$tmp/bq" 2>"$tmp/err"; check "bench --kv-type q8_0" 0 $?
"$MIXCTL" bench -m "$MODEL" --pp 8 --tg 2 --repeat 1 --no-per-token >"$tmp/bf" 2>"$tmp/err"; check "bench" 0 $?
# tiny model: 4 layers, 2 KV heads of 32; K and V: f16 2 bytes a number, q8_0 34 bytes per 32
"$PYTHON" -c 'import json,sys; q=json.load(open(sys.argv[1])); f=json.load(open(sys.argv[2])); sys.exit(0 if (q["kv_type"], q["kv_bytes_per_pos"], f["kv_type"], f["kv_bytes_per_pos"]) == ("q8_0", 4*2*2*34, "f16", 4*2*64*2) and q["kv_bytes"] == q["kv_slots"] * q["kv_bytes_per_pos"] else 1)' "$tmp/bq" "$tmp/bf"
check "bench JSON: kv_type and kv_bytes_per_pos" 0 $?
"$MIXCTL" logits -m "$MODEL" --tokens "1,99999999" 2>"$tmp/err"; check "token id out of range" 2 $?
"$MIXCTL" logits -m "$MODEL" --tokens "1,,2" 2>"$tmp/err"; check "malformed token list" 2 $?

echo "$pass passed, $fail failed"
[ "$fail" = 0 ]
