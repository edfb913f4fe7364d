#!/usr/bin/env bash
# tests/mpi/test_cluster.sh — mixd --cluster under mpirun gives the same bits as one process.
# usage: test_cluster.sh MIXD MIXCTL FIXTURES
# For N = 1, 2, 3 and 4 ranks over TCP (loopback only), and N = 2 over shared memory, one
# mixd job serves a fixture model; through the daemon, `mixctl score` (every position's
# log-probability, printed to float precision) and greedy generations of two sessions run
# at once (their rows share batches, so requests carry several sessions' rows) must match a
# single-process mixd's byte for byte (md5); each worker must have had resident only its own
# experts' pages, and `mixctl status --json` must list the ranks. Also once on the exact path (every row's floats
# travel) and once on a 32-wide quant type (the other activation format). Every byte stays on
# this machine's loopback interface. Then a worker is killed, and another stopped, during a
# generation: the client gets an error within 10 s and the job exits non-zero. Needs Open
# MPI's mpirun and a mixd built with it.
set -u
MIXD=$1 MIXCTL=$2 FIX=$3
PYTHON=${PYTHON:-/usr/bin/python3}
F=$FIX/tiny-moe-shakespeare
TMP=$(mktemp -d "${TMPDIR:-/tmp}/mixd-mpi-XXXXXX")
pids=()
cleanup() {
        for p in "${pids[@]}"; do kill -9 -- "$p" 2>/dev/null; done
        rm -rf "$TMP"
}
trap cleanup EXIT
fail() {
        echo "FAIL: $*"
        for l in "$TMP"/*.log; do [ -f "$l" ] && { echo "--- $l"; tail -n 30 "$l"; }; done
        exit 1
}

# MPI_TCP: TCP between ranks, on loopback only (the launcher's own channel too)
MPI_TCP=(--mca pml ob1 --mca btl self,tcp --mca btl_tcp_if_include lo --mca oob_tcp_if_include lo)
MPI_SHM=(--mca pml ob1 --mca btl self,vader --mca oob_tcp_if_include lo)
MPIRUN=(mpirun --oversubscribe --bind-to none)
[ "$(id -u)" = 0 ] && MPIRUN+=(--allow-run-as-root)

# A worker's resident pages of the model file beyond its experts' bytes: the pages at the
# edges of its experts (shared with a neighbour) and the kernel's fault-around within them
# (100-250 KiB measured on the fixtures; a worker that kept what loading mapped had 4.3 MiB)
RESIDENT_SLACK_KIB=512

TEXT="ROMEO: But soft, what light through yonder window breaks? It is the east, and Juliet is the sun."
P1="ROMEO: But soft, what light"
P2="JULIET: O Romeo, Romeo"

# wait_socket SOCK PID: until the daemon listens (or its launcher ended)
wait_socket() {
        for _ in $(seq 300); do
                [ -S "$1" ] && return 0
                kill -0 "$2" 2>/dev/null || return 1
                sleep 0.1
        done
        return 1
}

# results SOCK NAME: NAME.score, NAME.g1, NAME.g2 from one daemon (the two generations at once)
results() {
        local s=$1 n=$2
        "$MIXCTL" score --socket "$s" "$TEXT" >"$TMP/$n.score" || fail "$n: score failed"
        "$MIXCTL" generate --socket "$s" -n 24 --temp 0 "$P1" >"$TMP/$n.g1" &
        local a=$!
        "$MIXCTL" generate --socket "$s" -n 24 --temp 0 "$P2" >"$TMP/$n.g2" &
        local b=$!
        wait $a || fail "$n: generate 1 failed"
        wait $b || fail "$n: generate 2 failed"
        [ -s "$TMP/$n.g1" ] && [ -s "$TMP/$n.g2" ] || fail "$n: empty generation"
}

# single NAME MODEL [ARGS...]: the single-process reference
single() {
        local n=$1 model=$2; shift 2
        local s=$TMP/$n.sock
        "$MIXD" --model "$model" --socket "$s" --threads 1 --state-dir none "$@" >"$TMP/$n.log" 2>&1 &
        local p=$!
        pids+=($p)
        wait_socket "$s" $p || fail "$n: the daemon did not start"
        results "$s" "$n"
        "$MIXCTL" shutdown --socket "$s" >/dev/null || fail "$n: shutdown failed"
        wait $p || fail "$n: the daemon exited with $?"
}

# cluster NAME RANKS REF MODEL MCA... -- [ARGS...]: an mpirun job of RANKS ranks, compared with REF
cluster() {
        local n=$1 np=$2 ref=$3 model=$4; shift 4
        local mca=()
        while [ "$1" != -- ]; do mca+=("$1"); shift; done
        shift
        local s=$TMP/$n.sock t0=$SECONDS
        "${MPIRUN[@]}" -np "$np" "${mca[@]}" "$MIXD" --cluster --model "$model" --socket "$s" --threads 1 \
                --state-dir none "$@" >"$TMP/$n.log" 2>&1 &
        local p=$!
        pids+=($p)
        wait_socket "$s" $p || fail "$n: the cluster did not start"
        grep -q "cluster: front of $np rank(s)" "$TMP/$n.log" || fail "$n: not a front of $np ranks"
        results "$s" "$n"
        # status --json: "ranks", one object per rank, the plan's experts all placed, every
        # rank having computed some rows
        "$MIXCTL" status --json --socket "$s" >"$TMP/$n.status" || fail "$n: status failed"
        "$PYTHON" - "$TMP/$n.status" "$np" <<'PY' || fail "$n: status ranks: $(cat "$TMP/$n.status")"
import json, sys
d = json.load(open(sys.argv[1]))
np = int(sys.argv[2])
ranks = d["ranks"]
assert len(ranks) == np, len(ranks)
assert [r["rank"] for r in ranks] == list(range(np))
assert sum(r["experts"] for r in ranks) == 32, "experts of the 4 x 8 fixture"
for r in ranks:
    assert r["host"] and r["expert_bytes"] > 0 and r["rows"] > 0 and r["ms_per_token"] > 0, r
    assert r["rank"] == 0 or (r["sent_bytes"] > 0 and r["received_bytes"] > 0 and r["resident_bytes"] > 0), r
PY
        "$MIXCTL" shutdown --socket "$s" >/dev/null || fail "$n: shutdown failed"
        wait $p || fail "$n: mpirun exited with $?"
        # each worker had resident only its experts' pages: at most RESIDENT_SLACK_KIB more
        local w=0 line res=""
        while read -r line; do
                w=$((w + 1))
                local rss exp
                rss=$(echo "$line" | sed -E 's/.*resident: ([0-9]+) KiB of.*/\1/')
                exp=$(echo "$line" | sed -E 's/.*its experts: ([0-9]+) KiB.*/\1/')
                [ "$rss" -le $((exp + RESIDENT_SLACK_KIB)) ] || fail "$n: a worker read more than its experts: $line"
                res="$res $rss/$exp"
        done < <(grep -o 'rank [0-9]*: model pages resident: .*' "$TMP/$n.log")
        [ "$w" = $((np - 1)) ] || fail "$n: $w of $((np - 1)) workers reported their resident pages"
        for k in score g1 g2; do
                local a b
                a=$(md5sum <"$TMP/$ref.$k" | cut -c1-32)
                b=$(md5sum <"$TMP/$n.$k" | cut -c1-32)
                [ "$a" = "$b" ] || { diff "$TMP/$ref.$k" "$TMP/$n.$k" | head -5; fail "$n: $k differs from one process ($b vs $a)"; }
        done
        printf '%-26s score %s  gen %s %s  (%ds)%s\n' "$n" "$(md5sum <"$TMP/$n.score" | cut -c1-12)" \
                "$(md5sum <"$TMP/$n.g1" | cut -c1-12)" "$(md5sum <"$TMP/$n.g2" | cut -c1-12)" $((SECONDS - t0)) \
                "${res:+  workers resident/expert KiB:$res}"
}

# fault NAME SIGNAL: a worker gets SIGNAL (KILL: it dies; STOP: it stops answering) during
# a generation; the client must get an error within FAULT_CLIENT_S seconds, the front must
# name the rank (STOP) and the job must end with a non-zero status.
FAULT_CLIENT_S=10
fault() {
        local n=$1 sig=$2 np=3
        local s=$TMP/$n.sock
        "${MPIRUN[@]}" -np $np "${MPI_TCP[@]}" "$MIXD" --cluster --model "$F/tiny-moe-q4_k_m.gguf" --socket "$s" \
                --threads 1 --state-dir none >"$TMP/$n.log" 2>&1 &
        local p=$!
        pids+=($p)
        wait_socket "$s" $p || fail "$n: the cluster did not start"
        "$MIXCTL" generate --socket "$s" -n 100000 --temp 0 "$P1" >"$TMP/$n.out" 2>"$TMP/$n.err" &
        local g=$!
        pids+=($g)
        sleep 1
        local w="" q
        for q in $(pgrep -f -- "--socket $s"); do
                tr '\0' '\n' <"/proc/$q/environ" 2>/dev/null | grep -qx 'OMPI_COMM_WORLD_RANK=2' && w=$q
        done
        [ -n "$w" ] || fail "$n: no rank 2 process"
        kill -0 $g 2>/dev/null || fail "$n: the generation ended before the fault"
        local t0=$SECONDS
        kill -"$sig" "$w"
        pids+=($w)
        local rc=0 i
        for i in $(seq $((FAULT_CLIENT_S * 10 + 20))); do
                kill -0 $g 2>/dev/null || break
                sleep 0.1
        done
        kill -0 $g 2>/dev/null && fail "$n: no error for the client $((SECONDS - t0)) s after the fault"
        wait $g || rc=$?
        local dt=$((SECONDS - t0))
        [ "$rc" != 0 ] || fail "$n: the client saw no error"
        [ "$dt" -le $FAULT_CLIENT_S ] || fail "$n: the client's error came after $dt s"
        rc=0
        timeout 30 tail --pid=$p -f /dev/null || fail "$n: the job did not end"
        wait $p || rc=$?
        [ "$rc" != 0 ] || fail "$n: the job ended with status 0"
        if [ "$sig" = STOP ]; then
                grep -q 'cluster: rank 2 failed' "$TMP/$n.log" || fail "$n: the front did not name rank 2"
        fi
        kill -9 "$w" 2>/dev/null
        printf '%-26s client error after %ds (%s), job status %d, %ds in all\n' "$n" $dt \
                "$(tail -n 1 "$TMP/$n.err")" "$rc" $((SECONDS - t0))
}

single ref "$F/tiny-moe-q4_k_m.gguf"
printf '%-26s score %s  gen %s %s\n' "one process, q4_k_m" "$(md5sum <"$TMP/ref.score" | cut -c1-12)" \
        "$(md5sum <"$TMP/ref.g1" | cut -c1-12)" "$(md5sum <"$TMP/ref.g2" | cut -c1-12)"
for np in 1 2 3 4; do
        cluster "np$np-tcp-q4_k_m" $np ref "$F/tiny-moe-q4_k_m.gguf" "${MPI_TCP[@]}" --
done
cluster "np2-shm-q4_k_m" 2 ref "$F/tiny-moe-q4_k_m.gguf" "${MPI_SHM[@]}" --
single ref-exact "$F/tiny-moe-q4_k_m.gguf" --exact
cluster "np3-tcp-q4_k_m-exact" 3 ref-exact "$F/tiny-moe-q4_k_m.gguf" "${MPI_TCP[@]}" -- --exact
single ref-q4_0 "$F/tiny-moe-q4_0.gguf"
cluster "np2-tcp-q4_0" 2 ref-q4_0 "$F/tiny-moe-q4_0.gguf" "${MPI_TCP[@]}" --
fault "rank 2 killed" KILL
fault "rank 2 stopped" STOP
echo "cluster: logits of 1-4 ranks (TCP on loopback, shared memory) equal to one process; a dead or silent rank: client error"
