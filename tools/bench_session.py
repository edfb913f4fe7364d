#!/usr/bin/env python3
"""tools/bench_session.py — what continuing a session costs as its history grows.

A benchmark, not a test: it generates (once, into a temporary directory) a random
full-attention MoE model with Mixtral-like proportions, starts the optimized daemon, opens a
session, and measures the wall time of one new token (a 1-token prompt plus 1 generated
token, from the request to its done event) at about 20 tokens of history and again at about
2000, medians over repeats. The ratio shows the cost is O(new tokens), not O(history): only
attention grows with history, and it is a small part of a token's work.

usage: bench_session.py [--bin build/rel] [--repeats 15] [--history 2000] [--model FILE] [--int8]
(--model: bench a full-attention GGUF of your own, e.g. make bench's cached Mixtral-shaped one)
"""

import argparse
import os
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time

import msgpack

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Client:
    def __init__(self, path):
        self.s = socket.socket(socket.AF_UNIX)
        self.s.connect(path)
        self.buf = b""
        self.rid = 0

    def call(self, op, **f):
        self.rid += 1
        b = msgpack.packb(dict(id=self.rid, op=op, **f))
        self.s.sendall(struct.pack(">I", len(b)) + b)
        while True:
            while len(self.buf) < 4 or len(self.buf) < 4 + struct.unpack(">I", self.buf[:4])[0]:
                self.buf += self.s.recv(1 << 20)
            n = struct.unpack(">I", self.buf[:4])[0]
            m = msgpack.unpackb(self.buf[4:4 + n], raw=False)
            self.buf = self.buf[4 + n:]
            if m.get("event") in ("token", "progress"):
                continue
            return m


def one_token(c, sid):
    t0 = time.perf_counter()
    r = c.call("generate", session=sid, prompt=" a", n_predict=1, temperature=0.0)
    assert r.get("event") == "done", r
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(ROOT, "build", "rel"))
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--history", type=int, default=2000)
    ap.add_argument("--model")
    ap.add_argument("--int8", action="store_true")
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="mixd-session-bench-")
    model = a.model or os.path.join(tmp, "model.gguf")
    if not a.model:
        print("generating a random full-attention model (hidden 2048, FFN 8192, 16/4 heads, 8 experts top-2, "
              "2 layers, Q4_K)...", file=sys.stderr)
        subprocess.run([sys.executable, os.path.join(ROOT, "tools", "gen_random_gguf.py"), model,
                        "--n-layer", "2", "--n-embd", "2048", "--n-ff", "8192", "--n-head", "16", "--n-head-kv", "4",
                        "--n-expert", "8", "--n-expert-used", "2", "--n-ctx", "8192", "--sliding-window", "0",
                        "--type", "q4_k", "--seed", "1"], check=True, stdout=subprocess.DEVNULL)
    sock = os.path.join(tmp, "mixd.sock")
    args = [os.path.join(a.bin, "mixd"), "--model", model, "--socket", sock] + (["--int8", "1"] if a.int8 else [])
    d = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(600):
            try:
                c = Client(sock)
                break
            except OSError:
                time.sleep(0.05)
        sid = c.call("session.open")["session"]
        c.call("generate", session=sid, prompt="x" * 18, n_predict=1, temperature=0.0)
        # warm-up on another session: touch every expert's pages (faulted in lazily from the mmap)
        other = c.call("session.open")["session"]
        c.call("generate", session=other, prompt="z" * 200, n_predict=16, temperature=0.8, seed=1)
        c.call("session.close", session=other)
        one_token(c, sid)
        short = [one_token(c, sid) for _ in range(a.repeats)]
        n_short = [s for s in c.call("session.list")["sessions"] if s["session"] == sid][0]["n_tokens"]
        print("feeding %d tokens of history..." % a.history, file=sys.stderr)
        c.call("generate", session=sid, prompt=" y" * (a.history - n_short - 1), n_predict=1, temperature=0.0)
        long_ = [one_token(c, sid) for _ in range(a.repeats)]
        n_long = [s for s in c.call("session.list")["sessions"] if s["session"] == sid][0]["n_tokens"]
        # short history again, on a fresh session, after the long run: a control for drift
        sid2 = c.call("session.open")["session"]
        c.call("generate", session=sid2, prompt="x" * 18, n_predict=1, temperature=0.0)
        again = [one_token(c, sid2) for _ in range(a.repeats)]
        ms, ml = statistics.median(short), statistics.median(long_)
        print("one new token at %d tokens of history: %.1f ms (median of %d)" % (n_short, ms * 1000, a.repeats))
        print("one new token at %d tokens of history: %.1f ms (median of %d)" % (n_long, ml * 1000, a.repeats))
        print("again at short history on a new session: %.1f ms (median of %d)" % (statistics.median(again) * 1000,
                                                                                 a.repeats))
        print("ratio %.3f (within 10%%: %s)" % (ml / ms, "yes" if ml / ms <= 1.10 else "no"))
    finally:
        d.terminate()
        d.wait()


if __name__ == "__main__":
    main()
