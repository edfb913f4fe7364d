#!/usr/bin/env python3
"""tests/soak/soak.py — many clients, many requests, random cancels and disconnects.

usage: soak.py MIXD [--clients 64] [--requests 100] [--seed 1] [--read-timeout 120]
Starts MIXD on a temporary socket with the repository's default model. Each client runs its
requests one after another: most are plain generations; some send a cancel after a few
tokens; some drop the connection mid-stream (and reconnect). A request counts as lost when
its connection stayed open and it never got a done event or an error, or when a read waited
longer than --read-timeout seconds for the next event. Reports requests
completed/cancelled/abandoned/lost, protocol errors, and the daemon's RSS (VmRSS) after a
warm-up (a tenth of the requests) and at the end. Every count includes the warm-up: a request
lost or failed there fails the run too. The final line is `N passed, M failed` (checks: lost
== 0, errors == 0, daemon alive and stopping cleanly, RSS drift <= 2% when --rss-check is
given)."""

import argparse
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

import msgpack

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODEL = os.path.join(ROOT, "models", "tiny-moe-q4_k_m.gguf")
PROMPTS = ["ROMEO:", "JULIET: O", "To be, or not", "KING HENRY:", "First Citizen:", "My lord,", "HAMLET: Alas"]


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


READ_TIMEOUT = 120.0  # seconds a read may wait for the next event (--read-timeout)


class Conn:
    def __init__(self, path):
        self.s = socket.socket(socket.AF_UNIX)
        self.s.settimeout(READ_TIMEOUT)
        self.s.connect(path)
        self.buf = b""

    def send(self, m):
        b = msgpack.packb(m)
        self.s.sendall(struct.pack(">I", len(b)) + b)

    def recv(self):
        while len(self.buf) < 4 or len(self.buf) < 4 + struct.unpack(">I", self.buf[:4])[0]:
            c = self.s.recv(65536)
            if not c:
                raise EOFError
            self.buf += c
        n = struct.unpack(">I", self.buf[:4])[0]
        m = msgpack.unpackb(self.buf[4:4 + n], raw=False)
        self.buf = self.buf[4 + n:]
        return m


def client(path, n_requests, rng, stats, lock):
    conn = Conn(path)
    rid = 0
    for _ in range(n_requests):
        rid += 1
        gen_id, cancel_id = rid, None
        kind = rng.random()
        n_predict = rng.choice([4, 8, 16, 64])
        conn.send({"id": rid, "op": "generate", "prompt": rng.choice(PROMPTS), "n_predict": n_predict,
                   "seed": rng.randrange(1 << 32), "temperature": rng.choice([0.0, 0.8])})
        outcome = None
        tokens = 0

        def next_event():
            """The next message about this generation: a cancel's own reply (ok, or not_found
            when it came after the end) and late replies to earlier requests are skipped."""
            while True:
                m = conn.recv()
                if m.get("id") == gen_id:
                    return m
                if m.get("id") == cancel_id and (m.get("ok") or m.get("error", {}).get("code") == "not_found"):
                    continue
                if m.get("id") is not None and m.get("id") < gen_id:
                    continue
                return m  # anything else is a protocol error, counted below

        try:
            if kind < 0.15:  # disconnect mid-stream
                m = next_event()
                conn.s.close()
                conn = Conn(path)
                outcome = "abandoned" if m.get("event") == "token" else "error"
                if outcome == "error":
                    with lock:
                        stats["error_samples"].append(m)
            else:
                cancel_after = 2 if kind < 0.35 else None
                while outcome is None:
                    m = next_event()
                    if m.get("id") == gen_id and m.get("event") == "token":
                        tokens += 1
                        if cancel_after is not None and tokens == cancel_after:
                            rid += 1
                            cancel_id = rid
                            conn.send({"id": rid, "op": "cancel", "target": gen_id})
                    elif m.get("id") == gen_id and m.get("event") == "done":
                        outcome = "cancelled" if m.get("stop_reason") == "cancelled" else "completed"
                    elif m.get("id") == gen_id and m.get("event") == "progress":
                        continue
                    else:
                        outcome = "error"
                        with lock:
                            stats["error_samples"].append(m)
        except (EOFError, ConnectionError, OSError) as e:  # socket.timeout is an OSError
            outcome = "lost"
            with lock:
                stats["lost_samples"].append("%s: %s" % (type(e).__name__, e))
            conn.s.close()
            conn = Conn(path)
        with lock:
            stats[outcome] += 1
    conn.s.close()


def main():
    global READ_TIMEOUT
    ap = argparse.ArgumentParser()
    ap.add_argument("mixd")
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--requests", type=int, default=100)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--rss-check", action="store_true", help="require RSS drift <= 2%% (optimized builds)")
    ap.add_argument("--read-timeout", type=float, default=READ_TIMEOUT, help="seconds a read may wait")
    a = ap.parse_args()
    READ_TIMEOUT = a.read_timeout

    tmp = tempfile.mkdtemp(prefix="mixd-soak-")
    path = os.path.join(tmp, "mixd.sock")
    log = open(os.path.join(tmp, "mixd.log"), "w+")
    proc = subprocess.Popen([a.mixd, "--model", MODEL, "--socket", path, "--max-connections", "1024"],
                            stdout=log, stderr=subprocess.STDOUT)
    for _ in range(600):
        try:
            Conn(path).s.close()
            break
        except OSError:
            time.sleep(0.05)

    stats = {"completed": 0, "cancelled": 0, "abandoned": 0, "lost": 0, "error": 0, "error_samples": [],
             "lost_samples": []}
    lock = threading.Lock()
    rng = random.Random(a.seed)

    # warm-up: a tenth of the load, then the baseline RSS (the counts go on from here)
    n_warm = max(1, a.requests // 10)
    warm = [threading.Thread(target=client, args=(path, n_warm, random.Random(rng.random()), stats, lock))
            for _ in range(a.clients)]
    [t.start() for t in warm]
    [t.join() for t in warm]
    rss_warm = rss_kib(proc.pid) if proc.poll() is None else 0

    t0 = time.time()
    threads = [threading.Thread(target=client, args=(path, a.requests, random.Random(rng.random()), stats, lock))
               for _ in range(a.clients)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    wall = time.time() - t0
    time.sleep(0.5)
    alive = proc.poll() is None
    rss_end = rss_kib(proc.pid) if alive else 0
    if alive:
        proc.send_signal(signal.SIGTERM)
    try:
        rc = proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        rc = None
    log.seek(0)
    text = log.read()
    sanitizer = any(k in text for k in ("ERROR: AddressSanitizer", "runtime error:", "LeakSanitizer", "WARNING: ThreadSanitizer"))

    total = a.clients * (n_warm + a.requests)
    drift = (rss_end - rss_warm) / rss_warm * 100 if rss_warm else 0.0
    print("requests %d (%d of them warm-up), the last %d in %.1f s: completed %d, cancelled %d, abandoned by client %d, "
          "lost %d, errors %d" % (total, a.clients * n_warm, a.clients * a.requests, wall, stats["completed"],
                                  stats["cancelled"], stats["abandoned"], stats["lost"], stats["error"]))
    print("daemon RSS after warm-up %d KiB, at the end %d KiB (drift %+.2f%%); exit %s" % (rss_warm, rss_end, drift, rc))
    if stats["error_samples"]:
        print("error samples:", stats["error_samples"][:3])
    if stats["lost_samples"]:
        print("lost samples:", stats["lost_samples"][:3])
    checks = [("no request lost", stats["lost"] == 0), ("no errors", stats["error"] == 0),
              ("every request accounted", sum(stats[k] for k in ("completed", "cancelled", "abandoned", "lost", "error")) == total),
              ("daemon alive", alive), ("clean stop", rc == 0 and not sanitizer)]
    if a.rss_check:
        checks.append(("RSS drift <= 2%", drift <= 2.0))
    failed = [n for n, ok in checks if not ok]
    for n, ok in checks:
        print("%s  %s" % ("PASS" if ok else "FAIL", n))
    print("%d passed, %d failed" % (len(checks) - len(failed), len(failed)))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
