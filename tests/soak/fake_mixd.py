#!/usr/bin/python3
"""tests/soak/fake_mixd.py — a stand-in for mixd with injected faults, so that
tests/soak/test_harness.sh can show that soak.py fails when a reply is lost or a request fails.

usage: fake_mixd.py --socket PATH [any other mixd option, ignored]
Serves generate (n_predict token events, then done) and cancel (ok) on PATH, one thread per
connection, until SIGTERM (exit 0). FAKE_MIXD_FAULT in the environment injects one fault:
  error-first=N   the first N generate requests (counted over all connections) get an error
  lose=K          the K-th generate request gets no answer at all (its connection stays open)
"""
import os
import signal
import socket
import struct
import sys
import threading

import msgpack

lock = threading.Lock()
n_generate = 0


def fault():
    kind, _, n = os.environ.get("FAKE_MIXD_FAULT", "").partition("=")
    return kind, int(n or 0)


def send(s, obj):
    body = msgpack.packb(obj)
    s.sendall(struct.pack(">I", len(body)) + body)


def recv(s, buf):
    while len(buf) < 4 or len(buf) < 4 + struct.unpack(">I", buf[:4])[0]:
        chunk = s.recv(65536)
        if not chunk:
            return None, buf
        buf += chunk
    n = struct.unpack(">I", buf[:4])[0]
    return msgpack.unpackb(buf[4:4 + n], raw=False), buf[4 + n:]


def serve(s):
    global n_generate
    buf = b""
    kind, n = fault()
    try:
        while True:
            m, buf = recv(s, buf)
            if m is None:
                return
            rid = m.get("id")
            if m.get("op") == "cancel":
                send(s, {"id": rid, "ok": True})
                continue
            if m.get("op") != "generate":
                send(s, {"id": rid, "error": {"code": "bad_request", "message": "fake: generate and cancel only"}})
                continue
            with lock:
                n_generate += 1
                k = n_generate
            if kind == "error-first" and k <= n:
                send(s, {"id": rid, "error": {"code": "internal", "message": "fake: injected error %d" % k}})
                continue
            if kind == "lose" and k == n:
                continue  # no answer, ever
            count = m.get("n_predict", 4)
            for i in range(count):
                send(s, {"id": rid, "event": "token", "text": "x", "token": 100 + i})
            send(s, {"id": rid, "event": "done", "stop_reason": "length", "n_prompt": 2, "n_generated": count,
                     "prompt_ms": 0.0, "generate_ms": 0.0})
    except OSError:
        return
    finally:
        s.close()


def main():
    path = sys.argv[sys.argv.index("--socket") + 1]
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(path)
    srv.listen(128)
    signal.signal(signal.SIGTERM, lambda *a: os._exit(0))
    while True:
        c, _ = srv.accept()
        threading.Thread(target=serve, args=(c,), daemon=True).start()


if __name__ == "__main__":
    main()
