#!/usr/bin/env python3
"""tests/cli/test_remote_errors.py — mixctl against daemons that misbehave, played by this script.

usage: test_remote_errors.py PATH/TO/mixctl

A fake mixd listens on a Unix socket in a temporary directory and, depending on the case,
never answers, answers with an id that was never sent, sends bytes that are no frame, sends a
frame that is no reply, closes the connection, answers only after a long pause (but answers
the hello mixctl sends to see whether it is alive), or never accepts the connection. mixctl
must never hang (every run has a 30 s limit), must say "mixd broke the protocol: ..." for a
protocol violation and "lost the connection to mixd" only for a lost connection, and must
honour --timeout / --connect-timeout. The last line is "N passed, M failed".
"""
import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

import msgpack

RUN_LIMIT = 30.0    # seconds any mixctl run may take before the test calls it hung

passed = failed = 0


def check(name, ok, detail=""):
    global passed, failed
    if ok:
        passed += 1
        print("ok   - %s" % name, flush=True)
    else:
        failed += 1
        print("FAIL - %s%s" % (name, ": " + detail if detail else ""), flush=True)


def frame(obj):
    body = msgpack.packb(obj, use_bin_type=True)
    return struct.pack(">I", len(body)) + body


class FakeDaemon:
    """Accepts connections and hands each to behave(conn, requests), where requests yields the
    decoded request maps as they arrive. Records every request seen."""

    def __init__(self, path, behave, backlog=16):
        self.path, self.behave = path, behave
        self.seen = []
        self.lock = threading.Lock()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(backlog)
        self.sock.settimeout(0.2)
        self.stop = False
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        while not self.stop:
            try:
                conn, _ = self.sock.accept()
            except (socket.timeout, TimeoutError):
                continue
            except OSError:
                return
            threading.Thread(target=self.handle, args=(conn,), daemon=True).start()

    def requests(self, conn):
        buf = b""
        while True:
            while len(buf) >= 4:
                (n,) = struct.unpack(">I", buf[:4])
                if len(buf) < 4 + n:
                    break
                req = msgpack.unpackb(buf[4:4 + n], raw=False)
                buf = buf[4 + n:]
                with self.lock:
                    self.seen.append(req)
                yield req
            try:
                chunk = conn.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            buf += chunk

    def handle(self, conn):
        conn.settimeout(RUN_LIMIT + 5)
        try:
            self.behave(conn, self.requests(conn))
        except OSError:
            pass
        finally:
            conn.close()

    def ops(self):
        with self.lock:
            return [r.get("op") for r in self.seen]

    def close(self):
        self.stop = True
        self.thread.join()
        self.sock.close()
        os.unlink(self.path)


def ok_reply(req, **fields):
    r = {"id": req["id"], "ok": True}
    r.update(fields)
    return r


STATUS = {"model": "fake", "sessions": 0, "active_requests": 0, "queue": 0, "connections": 1}

# --- behaviours ----------------------------------------------------------------------------


def silent(conn, reqs):
    for _ in reqs:
        pass


def wrong_id(conn, reqs):
    for req in reqs:
        conn.sendall(frame({"id": req["id"] + 1000, "ok": True}))


def garbage(conn, reqs):
    for _ in reqs:
        conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        return


def not_a_reply(conn, reqs):
    for req in reqs:
        conn.sendall(frame({"id": req["id"], "answer": 42}))   # neither ok, error nor event


def bare_ok(conn, reqs):
    """Every request answered {"id", "ok": true}, without the fields the op always carries."""
    for req in reqs:
        conn.sendall(frame(ok_reply(req)))


def zero_length(conn, reqs):
    for _ in reqs:
        conn.sendall(b"\x00\x00\x00\x00")
        return


def hang_up(conn, reqs):
    for _ in reqs:
        return


def slow_but_alive(conn, reqs):
    """Answers hello at once, anything else after 2 s: a daemon computing a long request."""
    pending = []
    lock = threading.Lock()

    def later(req):
        time.sleep(2.0)
        with lock:
            if req["op"] == "generate":
                conn.sendall(frame({"id": req["id"], "event": "token", "text": "ok", "token": 5}))
                conn.sendall(frame({"id": req["id"], "event": "done", "stop_reason": "length", "n_prompt": 1,
                                    "n_generated": 1, "prompt_ms": 1.0, "generate_ms": 1.0}))
            else:
                conn.sendall(frame(ok_reply(req, **STATUS)))

    for req in reqs:
        if req["op"] == "hello":
            with lock:
                conn.sendall(frame(ok_reply(req, version=1, server="fake")))
        else:
            t = threading.Thread(target=later, args=(req,), daemon=True)
            t.start()
            pending.append(t)
    for t in pending:
        t.join()


# --- runs ----------------------------------------------------------------------------------


def run(mixctl, args, cwd):
    t0 = time.monotonic()
    try:
        p = subprocess.run([mixctl] + args, capture_output=True, timeout=RUN_LIMIT, stdin=subprocess.DEVNULL, cwd=cwd)
    except subprocess.TimeoutExpired:
        return None, "", time.monotonic() - t0
    return p.returncode, p.stderr.decode("utf-8", "replace") + p.stdout.decode("utf-8", "replace"), time.monotonic() - t0


def main(argv):
    if len(argv) != 2:
        print(__doc__)
        return 2
    mixctl = os.path.abspath(argv[1])
    tmp = tempfile.mkdtemp(prefix="mixctl-remote-")
    path = os.path.join(tmp, "fake.sock")
    env_free = dict(os.environ)
    env_free.pop("MIXD_SOCKET", None)

    # (name, behaviour, mixctl arguments, wanted exit, wanted text in stderr, most seconds)
    cases = [
        ("silent daemon: status times out", silent, ["status", "--timeout", "1"], 1, "did not answer within 1 s", 4),
        ("silent daemon: generate times out", silent, ["generate", "--timeout", "1", "hi"], 1,
         "did not answer within 1 s", 4),
        ("wrong id: status", wrong_id, ["status"], 1, "mixd broke the protocol: a reply for request 1001", 8),
        ("wrong id: generate", wrong_id, ["generate", "hi"], 1, "mixd broke the protocol: a reply for request", 8),
        ("garbage bytes: status", garbage, ["status"], 1, "mixd broke the protocol: frame of", 8),
        ("frame length 0: sessions", zero_length, ["sessions"], 1, "mixd broke the protocol: frame length 0", 8),
        ("a frame that is no reply: status", not_a_reply, ["status"], 1, "mixd broke the protocol:", 8),
        ("a frame that is no reply: generate", not_a_reply, ["generate", "hi"], 1, "mixd broke the protocol:", 8),
        ("score reply without tokens and logprobs", bare_ok, ["score", "hi"], 1,
         "mixd broke the protocol: its score reply has no 'tokens' array", 8),
        ("tokenize reply without tokens", bare_ok, ["tokenize"], 1,
         "mixd broke the protocol: its tokenize reply has no 'tokens' array", 8),
        ("session.open reply without a session", bare_ok, ["session", "open"], 1,
         "mixd broke the protocol: its session.open reply has no 'session' string", 8),
        ("chat: session.open reply without a session", bare_ok, ["chat"], 1,
         "mixd broke the protocol: its session.open reply has no 'session' string", 8),
        ("connection closed: status", hang_up, ["status"], 1, "lost the connection to mixd", 8),
        ("connection closed: generate", hang_up, ["generate", "hi"], 1, "lost the connection to mixd", 8),
        ("slow but alive: status --timeout 1 waits 2 s", slow_but_alive, ["status", "--timeout", "1"], 0, "model", 8),
        ("slow but alive: generate --timeout 1 waits 2 s", slow_but_alive, ["generate", "--timeout", "1", "hi"], 0,
         "ok", 8),
    ]
    for name, behave, args, want_rc, want_text, most_s in cases:
        fake = FakeDaemon(path, behave)
        try:
            rc, out, dt = run(mixctl, args + ["--socket", path], tmp)
        finally:
            fake.close()
        if rc is None:
            check(name, False, "mixctl hung (no exit within %.0f s)" % RUN_LIMIT)
            continue
        good = rc == want_rc and want_text in out and dt <= most_s and "runtime error" not in out \
            and "Sanitizer" not in out
        if "broke the protocol" in want_text or "did not answer" in want_text:
            good &= "lost the connection" not in out
        if behave is slow_but_alive:
            good &= "hello" in fake.ops()   # it asked whether the daemon was alive, then waited
        check(name, good, "exit %r (wanted %d), %.1f s (most %d), ops %s, output %r"
              % (rc, want_rc, dt, most_s, fake.ops(), out.strip()[-300:]))
        if rc == 0 and behave is slow_but_alive:
            print("     %.1f s, ops %s" % (dt, fake.ops()))

    # a daemon that never accepts: its backlog (0) holds one connection, the next waits
    lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lst.bind(path)
    lst.listen(0)
    queued = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    queued.connect(path)
    rc, out, dt = run(mixctl, ["status", "--socket", path, "--connect-timeout", "1"], tmp)
    check("backlog full: status --connect-timeout 1", rc == 3 and "accepted no connection within 1 s" in out and dt <= 6,
          "exit %r, %.1f s, %r" % (rc, dt, out.strip()[-300:]))
    queued.close()
    lst.close()
    os.unlink(path)

    for bad in (["--timeout", "abc"], ["--timeout", "-1"], ["--connect-timeout", "1e9"]):
        rc, out, dt = run(mixctl, ["status", "--socket", path] + bad, tmp)
        check("bad value: status %s" % " ".join(bad), rc == 2 and bad[0] in out, "exit %r, %r" % (rc, out.strip()))

    os.rmdir(tmp)
    print("%d passed, %d failed" % (passed, failed))
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
