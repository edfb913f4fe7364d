#!/usr/bin/env python3
"""tests/daemon/test_daemon.py — mixd end to end, over its real socket.

usage: test_daemon.py MIXD MIXCTL [--quick] [--only 1,4,...] [--cycles N] [--keep]

Starts mixd on a socket in a private temporary directory (--socket-mode 0666), waits for it,
runs the checks below, stops it with SIGTERM (or with root's `mixctl shutdown` when check 6
runs) and requires exit status 0 and, for sanitizer builds, a daemon stderr free of
AddressSanitizer / UBSan / LeakSanitizer reports. Every check prints one PASS/FAIL line with its
figures (problems are listed under a FAIL line); the last line is "N passed, M failed".

  1 determinism under load: 16 clients x 20 generations vs in-process and solo-daemon output
  2 bad frames (fatal: one error reply, then closed) and non-fatal request errors
  3 a client that disconnects mid-generation cancels it
  4 kill cycles: clients that close after one token; RSS growth on non-sanitizer builds
  5 sessions: continuation, busy, close, KV-budget eviction, per-uid limit
  6 two real uids (root only): no access to another uid's session, no shutdown
  7 the cancel op, and mixctl interrupted with SIGINT
  8 mixctl over the daemon: stdin, closed pipes, bad input, status/experts/sessions, no daemon

--quick skips only the RSS measurement of check 4 (which needs a non-sanitizer build anyway;
it runs 4 cycling clients against the daemon as it is configured by default). --only runs a subset; checks always run in the order 1 2 3 7 8 5 4 6 (6 last:
root's shutdown ends the daemon). `--only 4` on the rel build is the RSS soak (rss_soak.py).
Check 6 is skipped with a loud line when not root, unless CI=true (then it fails); the last
line then reads "N passed, M failed (K skipped)". The model is models/tiny-moe-q4_k_m.gguf of
this repository. MIXD_TEST_KEEP=1 (or --keep) keeps the temporary directory with the daemon
logs (kept anyway after a failure); the daemons run with MIXD_DEBUG=1.
"""
import argparse
import concurrent.futures as cf
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback

import msgpack

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
MODEL = os.path.join(ROOT, "models", "tiny-moe-q4_k_m.gguf")
SANITIZER_PATTERNS = ("ERROR: AddressSanitizer", "runtime error", "LeakSanitizer", "WARNING: ThreadSanitizer")
NOBODY = 65534
IO_TIMEOUT = 300.0          # seconds any single socket read may block (sanitizer builds are slow)

os.environ.setdefault("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0")
os.environ.setdefault("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1")
os.environ.pop("MIXD_SOCKET", None)
os.environ.pop("STATE_DIRECTORY", None)  # no saved sessions from or to anywhere else


def log(msg):
    print(msg, flush=True)


# ------------------------------------------------------------------------------------------
# protocol client


def pack(obj):
    body = msgpack.packb(obj, use_bin_type=True)
    return struct.pack(">I", len(body)) + body


def text_bytes(s):
    return s.encode("utf-8", "surrogateescape")


class Closed(Exception):
    pass


class Client:
    """One connection speaking the framed msgpack protocol."""

    def __init__(self, path, timeout=IO_TIMEOUT):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.settimeout(timeout)
        self.s.connect(path)
        self.buf = b""
        self.next_id = 1

    def close(self):
        if self.s is not None:
            self.s.close()
            self.s = None

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()

    def send_raw(self, data):
        self.s.sendall(data)

    def send(self, obj):
        self.s.sendall(pack(obj))

    def _fill(self, n):
        while len(self.buf) < n:
            chunk = self.s.recv(65536)
            if not chunk:
                raise Closed("connection closed by the daemon")
            self.buf += chunk

    def recv(self):
        self._fill(4)
        (n,) = struct.unpack(">I", self.buf[:4])
        self._fill(4 + n)
        body, self.buf = self.buf[4:4 + n], self.buf[4 + n:]
        return msgpack.unpackb(body, raw=False, unicode_errors="surrogateescape", strict_map_key=False)

    def wait_closed(self, timeout=5.0):
        """After a fatal error: True when the daemon closes the connection within timeout
        (anything still arriving before the end is returned as extra bytes)."""
        old = self.s.gettimeout()
        self.s.settimeout(timeout)
        extra = b""
        try:
            while True:
                chunk = self.s.recv(65536)
                if not chunk:
                    return True, extra
                extra += chunk
        except (socket.timeout, TimeoutError):
            return False, extra
        except ConnectionResetError:
            return True, extra
        finally:
            self.s.settimeout(old)

    def request(self, op, **fields):
        rid = self.next_id
        self.next_id += 1
        msg = {"id": rid, "op": op}
        msg.update(fields)
        self.send(msg)
        return rid

    def reply_to(self, rid):
        """The ok/error reply with this id (events of other requests are skipped)."""
        while True:
            m = self.recv()
            if m.get("id") == rid and ("ok" in m or "error" in m):
                return m

    def call(self, op, **fields):
        return self.reply_to(self.request(op, **fields))

    def collect(self, rid, max_tokens=None):
        """Events of generate rid until done / error (or max_tokens token events)."""
        res = {"text": b"", "tokens": [], "done": None, "error": None}
        while True:
            m = self.recv()
            if m.get("id") != rid:
                continue
            if "error" in m:
                res["error"] = m["error"]
                return res
            ev = m.get("event")
            if ev == "token":
                res["text"] += text_bytes(m.get("text", ""))
                res["tokens"].append(m.get("token"))
                if max_tokens is not None and len(res["tokens"]) >= max_tokens:
                    return res
            elif ev == "done":
                res["done"] = m
                return res

    def generate(self, prompt, **params):
        return self.collect(self.request("generate", prompt=prompt, **params))


def status(path):
    with Client(path, timeout=60) as c:
        r = c.call("status")
    if "error" in r:
        raise RuntimeError("status failed: %r" % (r,))
    return r


def wait_idle(path, timeout, want_conns=None):
    """Poll status until active_requests is 0 (and connections <= want_conns, counting the
    poller itself). Returns (seconds, last status) or (None, last status) on timeout."""
    t0 = time.monotonic()
    while True:
        st = status(path)
        ok = st["active_requests"] == 0 and (want_conns is None or st["connections"] <= want_conns)
        if ok:
            return time.monotonic() - t0, st
        if time.monotonic() - t0 > timeout:
            return None, st
        time.sleep(0.05)


# ------------------------------------------------------------------------------------------
# processes


class Daemon:
    def __init__(self, mixd, tmpdir, name, extra=(), debug=True, env=None):
        self.mixd, self.tmpdir, self.name, self.extra = mixd, tmpdir, name, list(extra)
        self.env = env or {}
        self.sock = os.path.join(tmpdir, name + ".sock")
        self.logpath = os.path.join(tmpdir, name + ".log")
        self.debug = debug
        self.proc = None
        self.rc = None

    def start(self, timeout=60):
        env = dict(os.environ)
        if self.debug:
            env["MIXD_DEBUG"] = "1"
        env.update(self.env)
        self.logf = open(self.logpath, "wb")
        cmd = [self.mixd, "--config", os.devnull, "--model", MODEL, "--socket", self.sock,
               "--socket-mode", "0666"] + self.extra
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self.logf, stderr=subprocess.STDOUT,
                                     env=env, cwd=self.tmpdir)
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError("%s exited with %s at start:\n%s" % (self.name, self.proc.returncode, self.log_tail()))
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                    s.connect(self.sock)
                return time.monotonic() - t0
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("%s: no socket after %d s:\n%s" % (self.name, timeout, self.log_tail()))

    @property
    def pid(self):
        return self.proc.pid

    def rss_kib(self):
        with open("/proc/%d/status" % self.pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def wait_exit(self, timeout=60):
        try:
            self.rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.rc = self.proc.wait()
            return None
        return self.rc

    def stop(self, timeout=60):
        """SIGTERM (unless it already exited); returns a list of problems."""
        if self.proc is None:
            return ["never started"]
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        rc = self.wait_exit(timeout)
        self.logf.close()
        return self.exit_problems(rc)

    def exit_problems(self, rc):
        problems = []
        if rc is None:
            problems.append("%s did not exit within the timeout (killed)" % self.name)
        elif rc != 0:
            problems.append("%s exited with status %d" % (self.name, rc))
        reports = self.sanitizer_reports()
        if reports:
            problems.append("%s stderr has sanitizer reports:\n%s" % (self.name, reports))
        return problems

    def sanitizer_reports(self):
        text = self.log_text()
        lines = text.splitlines()
        for i, line in enumerate(lines):
            if any(p in line for p in SANITIZER_PATTERNS):
                return "\n".join("        " + x for x in lines[max(0, i - 2):i + 30])
        return ""

    def log_text(self):
        try:
            with open(self.logpath, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def log_tail(self, n=20):
        return "\n".join("        | " + x for x in self.log_text().splitlines()[-n:])


def sanitizer_in(text):
    return any(p in text for p in SANITIZER_PATTERNS)


class Tools:
    def __init__(self, mixd, mixctl, tmpdir):
        self.mixd, self.mixctl, self.tmpdir = mixd, mixctl, tmpdir
        self.lock = threading.Lock()
        self.cache = {}
        self.tool_problems = []     # sanitizer reports from mixctl runs

    def run(self, args, input=None, timeout=600, env=None, prefix=()):
        e = dict(os.environ)
        if env:
            e.update(env)
        p = subprocess.run(list(prefix) + [self.mixctl] + list(args), input=input, capture_output=True,
                           timeout=timeout, env=e, cwd=self.tmpdir)
        err = p.stderr.decode("utf-8", "replace")
        if sanitizer_in(err):
            with self.lock:
                self.tool_problems.append("mixctl %s: %s" % (" ".join(args[:2]), err[:2000]))
        return p

    def inproc(self, prompt, seed, temp, n, stdin=None):
        """In-process continuation (bytes), cached per parameters."""
        key = (prompt, seed, temp, n, stdin)
        with self.lock:
            if key in self.cache:
                return self.cache[key]
        args = ["generate", "-m", MODEL, "--seed", str(seed), "--temp", repr(temp), "-n", str(n)]
        if prompt is not None:
            args.append(prompt)
        p = self.run(args, input=stdin if stdin is not None else b"")
        if p.returncode != 0:
            raise RuntimeError("in-process generate failed (%d): %s" % (p.returncode, p.stderr.decode(errors="replace")))
        with self.lock:
            self.cache[key] = p.stdout
        return p.stdout


# ------------------------------------------------------------------------------------------
# checks


class Check:
    def __init__(self, num, title):
        self.num, self.title = num, title
        self.problems, self.figures = [], []
        self.skipped = None

    def expect(self, cond, msg):
        if not cond:
            self.problems.append(msg)
        return bool(cond)

    def fig(self, fmt, *a):
        self.figures.append(fmt % a if a else fmt)


PROMPTS = [
    "ROMEO:",
    "JULIET:\nO Romeo, Romeo!",
    "First Citizen:\nBefore we proceed any further",
    "To be, or not to be",
    "KING HENRY:",
    "All:\nSpeak, speak.",
    "MENENIUS:\nWhy, masters,",
    "The quality of mercy",
]
# (prompt, seed, temperature): 4 greedy, 8 sampled at two temperatures
LOAD_SPECS = [(PROMPTS[i], 1 + i, 0.0) for i in range(4)] + \
             [(PROMPTS[i], 101 + i, 0.8 if i % 2 == 0 else 1.1) for i in range(8)]
LOAD_CLIENTS, LOAD_REQUESTS, LOAD_N = 16, 20, 12


def gen_params(seed, temp, n):
    return {"seed": seed, "temperature": float(temp), "n_predict": n}


def check_load(ctx, ck):
    d, tools = ctx.main, ctx.tools
    specs = LOAD_SPECS
    # references: in-process (2 at a time) while the solo daemon run goes on
    pool = cf.ThreadPoolExecutor(2)
    refs = {i: pool.submit(tools.inproc, p, s, t, LOAD_N) for i, (p, s, t) in enumerate(specs)}
    solo = {}
    t0 = time.monotonic()
    with Client(d.sock) as c:
        for i, (p, s, t) in enumerate(specs):
            solo[i] = c.generate(p, **gen_params(s, t, LOAD_N))
    solo_s = time.monotonic() - t0
    refs = {i: f.result() for i, f in refs.items()}
    pool.shutdown()
    for i, r in solo.items():
        if not ck.expect(r["done"] is not None, "solo spec %d failed: %r" % (i, r["error"])):
            return
        ck.expect(r["text"] == refs[i], "solo spec %d %r: daemon text %r != in-process %r"
                  % (i, specs[i], r["text"], refs[i]))

    results, errors = [], []
    lock = threading.Lock()
    barrier = threading.Barrier(LOAD_CLIENTS)

    def client(ci):
        try:
            with Client(d.sock) as c:
                barrier.wait(60)
                for ri in range(LOAD_REQUESTS):
                    si = (ci * 5 + ri * 7) % len(specs)
                    p, s, t = specs[si]
                    t1 = time.monotonic()
                    r = c.generate(p, **gen_params(s, t, LOAD_N))
                    with lock:
                        results.append((ci, ri, si, r, time.monotonic() - t1))
        except Exception as e:  # noqa: BLE001 — reported as a failure of the check
            with lock:
                errors.append("client %d: %s: %s" % (ci, type(e).__name__, e))

    threads = [threading.Thread(target=client, args=(ci,)) for ci in range(LOAD_CLIENTS)]
    t0 = time.monotonic()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.monotonic() - t0
    for e in errors:
        ck.expect(False, e)
    completed = [x for x in results if x[3]["done"] is not None]
    ck.expect(len(completed) == LOAD_CLIENTS * LOAD_REQUESTS, "%d of %d requests completed"
              % (len(completed), LOAD_CLIENTS * LOAD_REQUESTS))
    bad_text = bad_tok = 0
    for ci, ri, si, r, _ in results:
        if r["done"] is None:
            ck.expect(False, "client %d request %d: error %r" % (ci, ri, r["error"]))
            continue
        if r["text"] != refs[si]:
            bad_text += 1
            if bad_text <= 3:
                ck.expect(False, "client %d request %d spec %d: text %r != in-process %r"
                          % (ci, ri, si, r["text"], refs[si]))
        if r["tokens"] != solo[si]["tokens"]:
            bad_tok += 1
            if bad_tok <= 3:
                ck.expect(False, "client %d request %d spec %d: tokens %r != solo %r"
                          % (ci, ri, si, r["tokens"], solo[si]["tokens"]))
    ck.expect(bad_text == 0, "%d outputs differ from the in-process text" % bad_text)
    ck.expect(bad_tok == 0, "%d outputs differ from the solo token ids" % bad_tok)
    n_tok = sum(x[3]["done"]["n_generated"] for x in completed)
    lat = sorted(x[4] for x in completed) or [0.0]
    ck.fig("%d/%d done in %.1f s, %d tokens, %.1f tok/s aggregate; latency p50 %.2f s p95 %.2f s; "
           "%d specs, solo pass %.1f s", len(completed), LOAD_CLIENTS * LOAD_REQUESTS, wall, n_tok,
           n_tok / wall if wall > 0 else 0.0, lat[len(lat) // 2], lat[int(len(lat) * 0.95) - 1 if len(lat) > 1 else 0],
           len(specs), solo_s)


def check_bad_frames(ctx, ck):
    d, tools = ctx.main, ctx.tools
    with Client(d.sock) as c:
        hello = c.call("hello", version=1)
    if not ck.expect(hello.get("ok") is True, "hello failed: %r" % (hello,)):
        return
    lim = hello["limits"]
    max_frame, max_depth, max_new = lim["max_frame"], lim["max_depth"], lim["max_new_tokens"]

    # a generation that must complete while the bad clients come and go
    bg_prompt, bg_seed, bg_n = PROMPTS[2], 77, 24
    bg_ref = cf.ThreadPoolExecutor(1).submit(tools.inproc, bg_prompt, bg_seed, 0.8, bg_n)
    bg = {}

    def background():
        try:
            with Client(d.sock) as c:
                bg["r"] = c.generate(bg_prompt, **gen_params(bg_seed, 0.8, bg_n))
        except Exception as e:  # noqa: BLE001
            bg["exc"] = e

    bgt = threading.Thread(target=background)
    bgt.start()

    def nest(depth):  # a map at depth 1 holding arrays down to `depth`
        v = 1
        for _ in range(depth - 1):
            v = [v]
        return {"id": 5, "op": "status", "x": v}

    one = msgpack.packb({"id": 1, "op": "status"})
    two_objects = struct.pack(">I", 2 * len(one)) + one + one
    fatal_cases = [
        ("garbage bytes", b"GET / HTTP/1.1\r\nHost: mixd\r\n\r\n", ("bad_frame", "too_large")),
        ("header 4 GiB-1", struct.pack(">I", 0xFFFFFFFF), ("too_large",)),
        ("header max_frame+1", struct.pack(">I", max_frame + 1), ("too_large",)),
        ("zero-length header", struct.pack(">I", 0), ("bad_frame",)),
        ("non-msgpack body", struct.pack(">I", 4) + b"\xc1\xc1\xc1\xc1", ("bad_frame",)),
        ("truncated msgpack body", struct.pack(">I", 3) + b"\x82\xa2i", ("bad_frame",)),
        ("msgpack non-map", pack([1, 2, 3]), ("bad_frame",)),
        ("msgpack string", pack("hello"), ("bad_frame",)),
        ("two objects in one body", two_objects, ("bad_frame",)),
        ("nesting depth %d" % (max_depth + 1), pack(nest(max_depth + 1)), ("too_large",)),
        ("hello version 2", pack({"id": 9, "op": "hello", "version": 2}), ("unsupported_version",)),
    ]
    n_fatal_ok = 0
    for name, data, codes in fatal_cases:
        try:
            with Client(d.sock, timeout=60) as c:
                c.send_raw(data)
                m = c.recv()
                code = m.get("error", {}).get("code")
                good = ck.expect(code in codes, "%s: reply %r, wanted code %s" % (name, m, "/".join(codes)))
                if name != "hello version 2":
                    good &= ck.expect("id" in m and m["id"] is None, "%s: error reply id should be nil: %r" % (name, m))
                closed, extra = c.wait_closed(10)
                good &= ck.expect(closed and not extra, "%s: connection not closed after the error (extra %r)"
                                  % (name, extra[:40]))
                n_fatal_ok += good
        except Exception as e:  # noqa: BLE001
            ck.expect(False, "%s: %s: %s" % (name, type(e).__name__, e))

    # truncated frames, then the client goes away (half-close: nothing may come back but the end)
    for name, data in [("truncated frame, then EOF", struct.pack(">I", 100) + b"\x85\xa2id\x01"),
                       ("partial header, then EOF", b"\x00\x00")]:
        with Client(d.sock, timeout=60) as c:
            c.send_raw(data)
            c.s.shutdown(socket.SHUT_WR)
            closed, extra = c.wait_closed(10)
            ok = closed
            if extra:  # one error reply is acceptable, nothing else
                try:
                    (n,) = struct.unpack(">I", extra[:4])
                    m = msgpack.unpackb(extra[4:4 + n], raw=False)
                    ok &= m.get("error", {}).get("code") == "bad_frame" and len(extra) == 4 + n
                except Exception:  # noqa: BLE001
                    ok = False
            ck.expect(ok, "%s: closed %s, extra %r" % (name, closed, extra[:60]))
    # and the plain abrupt close in the middle of a frame
    for _ in range(5):
        c = Client(d.sock)
        c.send_raw(struct.pack(">I", 1000) + b"\x81" * 10)
        c.close()

    nonfatal = [
        ("unknown op", {"op": "frobnicate"}, "unknown_op"),
        ("unknown field", {"op": "status", "bogus": 1}, "bad_request"),
        ("n_predict over the limit", {"op": "generate", "prompt": "x", "n_predict": max_new + 1}, "bad_request"),
        ("n_predict -2", {"op": "generate", "prompt": "x", "n_predict": -2}, "bad_request"),
        ("temperature out of range", {"op": "generate", "prompt": "x", "temperature": -1.0}, "bad_request"),
        ("prompt of the wrong type", {"op": "generate", "prompt": 5}, "bad_request"),
        ("seed of the wrong type", {"op": "generate", "prompt": "x", "seed": "7"}, "bad_request"),
        ("missing prompt", {"op": "generate"}, "bad_request"),
        ("nesting depth %d (allowed) in an unknown field" % max_depth,
         {k: v for k, v in nest(max_depth).items() if k != "id"}, "bad_request"),
        ("cancel of no request", {"op": "cancel", "target": 424242}, "not_found"),
        ("close of an unknown session", {"op": "session.close", "session": "s-0000000000000000"}, "not_found"),
    ]
    n_nonfatal_ok = 0
    with Client(d.sock, timeout=60) as c:
        for i, (name, msg, code) in enumerate(nonfatal):
            rid = 1000 + i
            m = dict(msg)
            m["id"] = rid
            c.send(m)
            try:
                r = c.reply_to(rid)
                h = c.call("hello", version=1)
            except Exception as e:  # noqa: BLE001
                ck.expect(False, "%s: connection lost: %s" % (name, e))
                break
            good = ck.expect(r.get("error", {}).get("code") == code, "%s: reply %r, wanted %s" % (name, r, code))
            good &= ck.expect(h.get("ok") is True, "%s: hello afterwards failed: %r" % (name, h))
            n_nonfatal_ok += good

    bgt.join()
    if "exc" in bg:
        ck.expect(False, "background generation: %s" % bg["exc"])
    else:
        r = bg["r"]
        ck.expect(r["done"] is not None and r["done"]["n_generated"] == bg_n,
                  "background generation did not complete: %r" % (r["error"] or r["done"]))
        ck.expect(r["text"] == bg_ref.result(), "background generation text %r != in-process %r"
                  % (r["text"], bg_ref.result()))
    st = status(d.sock)
    ck.expect(st.get("ok") is True, "status afterwards: %r" % (st,))
    ck.fig("%d/%d fatal frames answered once then closed, %d/%d non-fatal errors kept the connection; "
           "background generation %s; status ok (%d connections)", n_fatal_ok, len(fatal_cases), n_nonfatal_ok,
           len(nonfatal), "ok" if "r" in bg and bg["r"]["done"] else "FAILED", st["connections"])


def check_disconnect(ctx, ck):
    d = ctx.main
    c = Client(d.sock)
    rid = c.request("generate", prompt=PROMPTS[0], n_predict=2000, temperature=0.0, seed=1)
    r = c.collect(rid, max_tokens=2)
    ck.expect(len(r["tokens"]) == 2 and r["done"] is None, "did not get two tokens first: %r" % (r,))
    st = status(d.sock)
    ck.expect(st["active_requests"] == 1, "before the close: active_requests %d" % st["active_requests"])
    c.close()
    t, st = wait_idle(d.sock, 10)
    ck.expect(t is not None and t <= 2.0, "active_requests still %d after %s s" % (st["active_requests"],
                                                                               "10" if t is None else "%.2f" % t))
    ck.fig("2 tokens read, socket closed; active_requests 0 after %s s (limit 2 s)",
           "?" if t is None else "%.3f" % t)


KILL_PROMPTS = ["ROMEO:", "A", "KING:", "To be"]
KILL_WORKERS = int(os.environ.get("MIXD_TEST_KILL_WORKERS", "16"))  # concurrent cycling clients
RSS_WORKERS = 4
# The daemon fixes glibc's mmap threshold itself (daemon/main.c), so session buffers are
# returned when freed; the RSS check runs it with its defaults.
RSS_MALLOC_ENV = {}


def kill_cycles(sock, n, first, workers=KILL_WORKERS):
    """n cycles of connect / generate 64 / read one token / close. Returns the failures."""
    failures = []
    lock = threading.Lock()

    def one(k):
        try:
            c = Client(sock, timeout=120)
            try:
                rid = c.request("generate", prompt=KILL_PROMPTS[k % len(KILL_PROMPTS)], n_predict=64, seed=k)
                r = c.collect(rid, max_tokens=1)
                if len(r["tokens"]) != 1:
                    with lock:
                        failures.append("cycle %d: %r" % (k, r["error"] or r["done"]))
            finally:
                c.close()
        except Exception as e:  # noqa: BLE001
            with lock:
                failures.append("cycle %d: %s: %s" % (k, type(e).__name__, e))

    with cf.ThreadPoolExecutor(workers) as ex:
        list(ex.map(one, range(first, first + n)))
    return failures


def check_kill_cycles(ctx, ck):
    d, tools = ctx.main, ctx.tools
    total = ctx.cycles
    warm = min(100, total)
    measure_rss = ctx.measure_rss
    # a few clients when RSS is measured (the heap's high-water mark follows the number of
    # generations in flight); more on sanitizer builds, where batching them is what keeps it quick
    workers = RSS_WORKERS if measure_rss else KILL_WORKERS
    base = status(d.sock)
    t0 = time.monotonic()
    fails = kill_cycles(d.sock, warm, 0, workers)
    t_idle, st = wait_idle(d.sock, 30, want_conns=1)
    time.sleep(0.3)
    rss0 = d.rss_kib() if measure_rss else None
    fails += kill_cycles(d.sock, total - warm, warm, workers)
    wall = time.monotonic() - t0
    t_idle, st = wait_idle(d.sock, 30, want_conns=1)
    time.sleep(0.3)
    rss1 = d.rss_kib() if measure_rss else None
    for f in fails[:5]:
        ck.expect(False, f)
    ck.expect(not fails, "%d of %d cycles failed" % (len(fails), total))
    ck.expect(t_idle is not None, "not idle 30 s after the cycles: %r" % (st,))
    ck.expect(st["kv_bytes_used"] == base["kv_bytes_used"], "kv_bytes_used %d after the cycles, %d before"
              % (st["kv_bytes_used"], base["kv_bytes_used"]))
    ck.expect(st["sessions"] == base["sessions"], "named sessions %d after, %d before" % (st["sessions"], base["sessions"]))
    # still serves, and correctly
    p, s, t = LOAD_SPECS[5]
    with Client(d.sock) as c:
        r = c.generate(p, **gen_params(s, t, LOAD_N))
    ck.expect(r["done"] is not None and r["text"] == tools.inproc(p, s, t, LOAD_N),
              "generation after the cycles: %r" % (r,))
    ck.fig("%d cycles (%d clients) in %.1f s (%.1f/s), %d failed; idle afterwards: %d connections, kv_bytes_used %d",
           total, workers, wall, total / wall, len(fails), st["connections"], st["kv_bytes_used"])
    if measure_rss:
        growth = (rss1 - rss0) / rss0
        ck.expect(growth <= 0.02, "RSS grew %.2f%% (limit 2%%)" % (100 * growth))
        ck.fig("RSS after %d cycles %d KiB, after %d cycles %d KiB, growth %+.2f%% (limit 2%%; %s)", warm, rss0, total,
               rss1, 100 * growth, " ".join("%s=%s" % kv for kv in RSS_MALLOC_ENV.items()) or "daemon defaults")
    else:
        ck.fig("RSS not measured (%s)", "--quick" if ctx.quick else "sanitizer build")
    ctx.rss = (rss0, rss1)


def session_tokens(sock, sid):
    with Client(sock) as c:
        r = c.call("session.list")
    for s in r.get("sessions", []):
        if s["session"] == sid:
            return s
    return None


def check_sessions(ctx, ck):
    d, tools = ctx.main, ctx.tools
    # aux daemons are started now so their start overlaps the work on the main one
    c = Client(d.sock)
    o = c.call("session.open")
    if not ck.expect(o.get("ok") is True, "session.open: %r" % (o,)):
        return
    sid, kv = o["session"], o["kv_bytes"]
    ck.expect(o.get("evicted") == 0, "session.open evicted %r" % (o.get("evicted"),))

    # continuation: the session's n_tokens grows by prompt + generated tokens (+1 after an EOS)
    p1, p2 = "ROMEO:", "\nJULIET:"
    g1 = c.generate(p1, session=sid, n_predict=8, temperature=0.0, seed=1)
    if not ck.expect(g1["done"] is not None, "first session generate: %r" % (g1["error"],)):
        return
    ck.expect(g1["done"].get("session") == sid, "done event without the session id: %r" % (g1["done"],))
    s1 = session_tokens(d.sock, sid)
    want1 = g1["done"]["n_prompt"] + g1["done"]["n_generated"] + (g1["done"]["stop_reason"] == "eos")
    ck.expect(s1 is not None and s1["n_tokens"] == want1, "after turn 1: session %r, wanted n_tokens %d" % (s1, want1))
    ck.expect(g1["text"] == tools.inproc(p1, 1, 0.0, 8), "turn 1 text %r != in-process %r"
              % (g1["text"], tools.inproc(p1, 1, 0.0, 8)))
    g2 = c.generate(p2, session=sid, n_predict=8, temperature=0.0, seed=1)
    if not ck.expect(g2["done"] is not None, "second session generate: %r" % (g2["error"],)):
        return
    s2 = session_tokens(d.sock, sid)
    # n_prompt counts the tokens fed, n_dropped the positions of turn 1 its re-tokenization replaced
    want2 = (want1 - g2["done"].get("n_dropped", 0) + g2["done"]["n_prompt"] + g2["done"]["n_generated"]
             + (g2["done"]["stop_reason"] == "eos"))
    ck.expect(s2 is not None and s2["n_tokens"] == want2, "after turn 2: session %r, wanted n_tokens %d" % (s2, want2))
    ck.expect(s2 is not None and s2["requests"] == 2, "session requests %r, wanted 2" % (s2,))
    ck.expect(g2["done"]["n_prompt"] >= 1, "turn 2 n_prompt %r" % (g2["done"]["n_prompt"],))
    concat = p1 + g1["text"].decode("utf-8", "replace") + p2
    one_shot = tools.inproc(concat, 1, 0.0, 8)
    fresh2 = tools.inproc(p2, 1, 0.0, 8)
    ck.fig("turns: n_tokens %d -> %d (+%d prompt +%d generated); turn 2 %s the one-shot in-process run of the "
           "concatenated text, %s a fresh run of its prompt", s1["n_tokens"] if s1 else -1,
           s2["n_tokens"] if s2 else -1, g2["done"]["n_prompt"], g2["done"]["n_generated"],
           "equals" if g2["text"] == one_shot else "differs from", "equals" if g2["text"] == fresh2 else "differs from")

    # busy: a second generate on a session in use
    a = Client(d.sock)
    rid = a.request("generate", prompt=" And", session=sid, n_predict=500, temperature=0.0)
    ra = a.collect(rid, max_tokens=1)
    ck.expect(len(ra["tokens"]) == 1, "long session generate did not start: %r" % (ra,))
    b = c.generate(" But", session=sid, n_predict=4)
    ck.expect(b["error"] is not None and b["error"]["code"] == "busy", "concurrent generate on the session: %r" % (b,))
    pm = tools.run(["generate", "--socket", d.sock, "--session", sid, "-n", "4", "x"])
    ck.expect(pm.returncode == 4, "mixctl generate on a busy session exited %d (wanted 4): %s"
              % (pm.returncode, pm.stderr.decode(errors="replace").strip()))
    a.request("cancel", target=rid)
    ra = a.collect(rid)
    ck.expect(ra["done"] is not None and ra["done"]["stop_reason"] == "cancelled", "cancel of the long one: %r"
              % (ra["done"] or ra["error"],))
    a.close()

    # close, then use
    r = c.call("session.close", session=sid)
    ck.expect(r.get("ok") is True, "session.close: %r" % (r,))
    r = c.generate("x", session=sid, n_predict=2)
    ck.expect(r["error"] is not None and r["error"]["code"] == "not_found", "generate on a closed session: %r" % (r,))
    ck.expect(session_tokens(d.sock, sid) is None, "closed session still listed")
    c.close()

    # KV budget eviction. mixd's --kv-budget has a floor of 1 MiB, so "exactly n sessions" is the
    # smallest whole number of sessions at or above max(2 sessions, 1 MiB).
    n_fit = max(2, -(-(1 << 20) // kv))
    budget = n_fit * kv
    ev = Daemon(ctx.mixd, ctx.tmpdir, "evict", ["--kv-budget", str(budget), "--max-sessions-per-uid", str(n_fit + 8),
                                                "--max-sessions", str(n_fit + 8)])
    lim = Daemon(ctx.mixd, ctx.tmpdir, "peruid", ["--max-sessions-per-uid", "2"])
    try:
        ev.start()
        lim.start()
        with Client(ev.sock) as c:
            # a burst: every open in one write, so they share a millisecond of last use
            ids = list(range(100, 100 + n_fit))
            c.send_raw(b"".join(pack({"id": i, "op": "session.open"}) for i in ids))
            replies = [c.reply_to(i) for i in ids]
            ck.expect(all(o.get("ok") is True for o in replies), "opens within the budget: %r" % (replies,))
            opened = [o.get("session") for o in replies]
            ck.expect(all(o.get("evicted") == 0 for o in replies), "evictions within the budget: %r"
                      % ([o.get("evicted") for o in replies],))
            o = c.call("session.open")
            ck.expect(o.get("ok") is True and o.get("evicted") == 1, "open over the budget: %r" % (o,))
            listed = {s["session"] for s in c.call("session.list")["sessions"]}
            gone = [s for s in opened if s not in listed]
            ck.expect(gone == [opened[0]], "evicted %r (#%s of the burst); wanted the least recently used: #0 %s, "
                      "opened first" % (gone, ",".join(str(opened.index(g)) for g in gone), opened[0]))
            r = c.generate("x", session=opened[0], n_predict=2)
            msg = (r["error"] or {}).get("message", "")
            ck.expect(r["error"] is not None and r["error"]["code"] == "not_found" and "evict" in msg,
                      "generate on the evicted session: %r" % (r["error"] or r["done"],))
            # LRU by use, not by creation: use every live session, the newest first, then open one more
            live = [s for s in [o.get("session")] + opened[::-1] if s in listed]
            for sid_ in live:
                r = c.generate("x", session=sid_, n_predict=1, seed=3)
                ck.expect(r["done"] is not None, "generate on a surviving session: %r" % (r["error"],))
                time.sleep(0.003)
            o2 = c.call("session.open")
            listed2 = {s["session"] for s in c.call("session.list")["sessions"]}
            gone2 = [s for s in live if s not in listed2]
            ck.expect(o2.get("evicted") == 1 and gone2 == [live[0]], "after using the sessions: evicted %r, wanted %s "
                      "(used longest ago)" % (gone2, live[0]))
            st = c.call("status")
            ck.expect(st["sessions_evicted"] == 2 and st["kv_bytes_used"] == budget,
                      "status after eviction: evicted %r, kv %r of %r" % (st["sessions_evicted"], st["kv_bytes_used"], budget))
        ck.fig("kv_bytes %d/session; --kv-budget %d (= %d sessions; the option's floor is 1 MiB): open #%d evicted 1, "
               "the LRU one answers not_found (\"%s\"); LRU by last use also holds", kv, budget, n_fit, n_fit + 1, msg[:60])

        # --max-sessions-per-uid 2
        with Client(lim.sock) as c:
            r1, r2, r3 = c.call("session.open"), c.call("session.open"), c.call("session.open")
            ck.expect(r1.get("ok") and r2.get("ok"), "two opens under the per-uid limit: %r %r" % (r1, r2))
            ck.expect(r3.get("error", {}).get("code") == "over_limit", "third open: %r" % (r3,))
            pm = tools.run(["session", "open", "--socket", lim.sock])
            ck.expect(pm.returncode == 4, "mixctl session open over the limit exited %d (wanted 4)" % pm.returncode)
            r = c.call("session.close", session=r1["session"])
            r4 = c.call("session.open")
            ck.expect(r.get("ok") and r4.get("ok"), "open after a close: %r %r" % (r, r4))
        ck.fig("--max-sessions-per-uid 2: third open over_limit, mixctl exit %d", pm.returncode)
    finally:
        for dd in (ev, lim):
            if dd.proc is not None:
                for p in dd.stop():
                    ck.expect(False, p)


def check_two_uids(ctx, ck):
    d, tools = ctx.main, ctx.tools
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            ck.expect(False, "CI=true but not running as root: the two-uid check cannot run")
        else:
            ck.skipped = "not root: cannot run clients as another uid"
        return
    if shutil.which("setpriv"):
        as_nobody = ["setpriv", "--reuid=%d" % NOBODY, "--regid=%d" % NOBODY, "--clear-groups"]
    else:
        as_nobody = ["runuser", "-u", "nobody", "--"]
    with Client(d.sock) as c:
        o = c.call("session.open")
        sid = o["session"]
        g = c.generate("ROMEO:", session=sid, n_predict=4, temperature=0.0)
        ck.expect(g["done"] is not None, "root's session generate: %r" % (g["error"],))
    before = session_tokens(d.sock, sid)
    sock = ["--socket", d.sock]

    def nobody(*args, input=b""):
        p = tools.run(list(args), input=input, prefix=as_nobody)
        return p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")

    rc, out, err = nobody("generate", *sock, "-n", "3", "--seed", "1", "hello")
    ck.expect(rc == 0, "nobody's own one-shot generate exited %d: %s" % (rc, err.strip()))
    figs = []
    for what, args in [("continue", ["generate", *sock, "--session", sid, "-n", "3", "x"]),
                       ("read (n 0)", ["generate", *sock, "--session", sid, "-n", "0", "x"]),
                       ("close", ["session", "rm", sid, *sock])]:
        rc, out, err = nobody(*args)
        ck.expect(rc == 4 and "permission_denied" in err, "nobody %s root's session: exit %d, %s" % (what, rc, err.strip()))
        figs.append("%s %d" % (what, rc))
    rc, out, err = nobody("sessions", "--json", *sock)
    ck.expect(rc == 0 and sid not in out, "nobody's session list: exit %d, %s" % (rc, out.strip()))
    rc2, out2, err2 = nobody("shutdown", *sock)
    ck.expect(rc2 == 4, "nobody's shutdown exited %d (wanted 4): %s" % (rc2, err2.strip()))
    after = session_tokens(d.sock, sid)
    ck.expect(after is not None and before is not None and after["n_tokens"] == before["n_tokens"],
              "root's session changed: %r -> %r" % (before, after))
    ck.expect(status(d.sock)["ok"] is True, "daemon not serving after nobody's shutdown")
    # root's shutdown ends the daemon (this check runs last)
    p = tools.run(["shutdown", *sock])
    ck.expect(p.returncode == 0, "root's shutdown exited %d: %s" % (p.returncode, p.stderr.decode(errors="replace")))
    rc = d.wait_exit(60)
    ctx.main_stopped_by_shutdown = True
    ck.expect(rc == 0, "daemon exit status after root's shutdown: %r" % (rc,))
    ck.fig("uid %d: %s, list hides it, shutdown exit %d; root's shutdown exit %d, daemon exited %r",
           NOBODY, ", ".join(figs), rc2, p.returncode, rc)


def check_cancel(ctx, ck):
    d, tools = ctx.main, ctx.tools
    with Client(d.sock) as c:
        rid = c.request("generate", prompt=PROMPTS[0], n_predict=100000, temperature=0.0)
        r = c.collect(rid, max_tokens=1)
        ck.expect(len(r["tokens"]) == 1, "generation did not start: %r" % (r,))
        cid = c.request("cancel", target=rid)
        got_ok, done, n_after = None, None, 0
        while done is None or got_ok is None:
            m = c.recv()
            if m.get("id") == cid:
                got_ok = m
            elif m.get("id") == rid and m.get("event") == "token":
                n_after += 1
            elif m.get("id") == rid:
                done = m
        ck.expect(got_ok.get("ok") is True, "cancel reply: %r" % (got_ok,))
        ck.expect(done.get("event") == "done" and done.get("stop_reason") == "cancelled", "after cancel: %r" % (done,))
        h = c.call("hello", version=1)
        ck.expect(h.get("ok") is True, "connection unusable after cancel: %r" % (h,))
    ck.fig("cancel op: ok reply, done stop_reason %s after %d more token(s)", done.get("stop_reason"), n_after)

    # mixctl interrupted by SIGINT: exit 130, the daemon stops the request
    for seed in (3, 4, 5):
        env = dict(os.environ)
        proc = subprocess.Popen([tools.mixctl, "generate", "--socket", d.sock, "-n", "100000", "--seed", str(seed),
                                 "--temp", "0.7", "ROMEO:"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                stdin=subprocess.DEVNULL, env=env, cwd=ctx.tmpdir)
        first = proc.stdout.read(1)  # the stream has started
        proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        if sanitizer_in(err.decode(errors="replace")):
            ck.expect(False, "mixctl sanitizer report: %s" % err.decode(errors="replace")[:2000])
        if proc.returncode != 0:
            break
        # exit 0: the generation ended by itself (EOS) before the signal; try another seed
    ck.expect(first != b"", "mixctl printed nothing before the signal")
    ck.expect(proc.returncode == 130, "mixctl after SIGINT exited %d (wanted 130): %s"
              % (proc.returncode, err.decode(errors="replace").strip()))
    t, st = wait_idle(d.sock, 10)
    ck.expect(t is not None and t <= 2.0, "active_requests %d after SIGINT" % st["active_requests"])
    ck.fig("mixctl SIGINT: exit %d, active_requests 0 after %s s", proc.returncode,
           "?" if t is None else "%.2f" % t)


def check_mixctl(ctx, ck):
    d, tools = ctx.main, ctx.tools
    sock = ["--socket", d.sock]
    stdin = b"To be, or not to be\n"
    ref = tools.inproc(None, 5, 0.8, 8, stdin=stdin)
    p = tools.run(["generate", *sock, "--seed", "5", "-n", "8"], input=stdin)
    ck.expect(p.returncode == 0 and p.stdout == ref, "stdin prompt: exit %d, %r vs in-process %r"
              % (p.returncode, p.stdout, ref))
    p2 = tools.run(["generate", "--seed", "5", "-n", "8"], input=stdin, env={"MIXD_SOCKET": d.sock})
    ck.expect(p2.returncode == 0 and p2.stdout == ref, "$MIXD_SOCKET: exit %d, %r" % (p2.returncode, p2.stdout))
    # closed stdout: exit 0, and the daemon stops the generation
    sh = subprocess.run(["bash", "-c", '"$0" generate --socket "$1" -n 400 --seed 1 "ROMEO:" | head -c 3 >/dev/null; '
                         'exit "${PIPESTATUS[0]}"', tools.mixctl, d.sock], capture_output=True, timeout=300,
                        cwd=ctx.tmpdir)
    ck.expect(sh.returncode == 0, "generate | head -c 3: mixctl exited %d: %s"
              % (sh.returncode, sh.stderr.decode(errors="replace").strip()))
    if sanitizer_in(sh.stderr.decode(errors="replace")):
        ck.expect(False, "mixctl sanitizer report: %s" % sh.stderr.decode(errors="replace")[:2000])
    t, st = wait_idle(d.sock, 10)
    ck.expect(t is not None, "active_requests %d after the closed pipe" % st["active_requests"])
    p3 = tools.run(["generate", *sock, "-n", "3"], input=b"ab\xff\xfe")
    ck.expect(p3.returncode == 2, "invalid UTF-8 stdin: exit %d (wanted 2)" % p3.returncode)
    codes = {}
    for cmd in ("status", "experts", "sessions"):
        p = tools.run([cmd, *sock])
        pj = tools.run([cmd, "--json", *sock])
        codes[cmd] = p.returncode
        ck.expect(p.returncode == 0 and p.stdout, "mixctl %s: exit %d" % (cmd, p.returncode))
        try:
            j = json.loads(pj.stdout)
            ck.expect(pj.returncode == 0 and j.get("ok") is True, "mixctl %s --json: %r" % (cmd, j))
            if cmd == "experts":
                routed = sum(sum(row) for row in j["counts"])
                ck.expect(routed > 0, "experts: no routed tokens counted")
            if cmd == "status":
                ck.expect(j["tokens_generated"] > 0, "status: tokens_generated %r" % j["tokens_generated"])
                size = os.path.getsize(MODEL)
                ck.expect(j["model_bytes"] == size and 0 <= j["model_huge_page_bytes"] <= size,
                          "status: model_bytes %r (file %d), model_huge_page_bytes %r"
                          % (j["model_bytes"], size, j["model_huge_page_bytes"]))
        except (ValueError, KeyError, TypeError) as e:
            ck.expect(False, "mixctl %s --json: %s: %r" % (cmd, e, pj.stdout[:200]))
    p4 = tools.run(["status", "--socket", os.path.join(ctx.tmpdir, "nonexistent", "mixd.sock")])
    p5 = tools.run(["generate", "--socket", os.path.join(ctx.tmpdir, "nonexistent.sock"), "hi"])
    ck.expect(p4.returncode == 3 and p5.returncode == 3, "no daemon: status exit %d, generate exit %d (wanted 3)"
              % (p4.returncode, p5.returncode))
    ck.fig("stdin generate == in-process (%d bytes); | head -c 3 exit %d; bad UTF-8 exit %d; status/experts/sessions "
           "%s; no socket exit %d", len(ref), sh.returncode, p3.returncode,
           "/".join(str(codes[k]) for k in ("status", "experts", "sessions")), p5.returncode)


CHECKS = [
    (1, "determinism under load", check_load),
    (2, "bad frames and request errors", check_bad_frames),
    (3, "disconnect cancels", check_disconnect),
    (7, "cancel op and SIGINT", check_cancel),
    (8, "mixctl over the daemon", check_mixctl),
    (5, "sessions", check_sessions),
    (4, "kill cycles", check_kill_cycles),
    (6, "two uids", check_two_uids),        # last: root's shutdown ends the daemon
]


class Ctx:
    pass


def main(argv=None):
    ap = argparse.ArgumentParser(description="mixd end-to-end tests")
    ap.add_argument("mixd")
    ap.add_argument("mixctl")
    ap.add_argument("--quick", action="store_true", help="skip the RSS measurement of check 4")
    ap.add_argument("--only", default="", help="comma-separated check numbers")
    ap.add_argument("--cycles", type=int, default=1000, help="kill cycles of check 4")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    a = ap.parse_args(argv)
    only = {int(x) for x in a.only.split(",") if x.strip()}

    ctx = Ctx()
    ctx.mixd, ctx.mixctl = os.path.abspath(a.mixd), os.path.abspath(a.mixctl)
    ctx.quick, ctx.cycles = a.quick, a.cycles
    ctx.main_stopped_by_shutdown = False
    with open(ctx.mixd, "rb") as f:
        image = f.read()
    ctx.sanitized = b"__asan_init" in image or b"__tsan_init" in image
    ctx.tmpdir = tempfile.mkdtemp(prefix="mixd-e2e-")
    os.chmod(ctx.tmpdir, 0o755)  # clients of another uid must reach the socket
    ctx.tools = Tools(ctx.mixd, ctx.mixctl, ctx.tmpdir)
    keep = a.keep or os.environ.get("MIXD_TEST_KEEP") == "1"
    passed = failed = skipped = 0
    t_start = time.monotonic()
    ctx.measure_rss = not ctx.quick and not ctx.sanitized and (not only or 4 in only)
    ctx.main = Daemon(ctx.mixd, ctx.tmpdir, "mixd", env=RSS_MALLOC_ENV if ctx.measure_rss else None)
    try:
        t = ctx.main.start()
        log("mixd %s build, pid %d, ready in %.2f s; temp dir %s"
            % ("sanitizer" if ctx.sanitized else "optimized", ctx.main.pid, t, ctx.tmpdir))
        for num, title, fn in CHECKS:
            if only and num not in only:
                continue
            ck = Check(num, title)
            t0 = time.monotonic()
            if ctx.main.proc.poll() is not None:
                ck.expect(False, "the daemon is gone (exit %r)" % ctx.main.proc.returncode)
            else:
                try:
                    fn(ctx, ck)
                except Exception as e:  # noqa: BLE001
                    ck.expect(False, "%s: %s\n%s" % (type(e).__name__, e, traceback.format_exc()))
            dt = time.monotonic() - t0
            if ck.skipped and not ck.problems:
                skipped += 1
                log("!!!!! SKIP %d %s: %s !!!!!" % (num, title, ck.skipped))
                continue
            tag = "PASS" if not ck.problems else "FAIL"
            log("%s %d %s (%.1f s): %s" % (tag, num, title, dt, "; ".join(ck.figures) or "-"))
            for p in ck.problems:
                log("    - " + p.replace("\n", "\n      "))
            if ck.problems:
                failed += 1
                log(ctx.main.log_tail(15))
            else:
                passed += 1
    except Exception as e:  # noqa: BLE001 — the daemon would not start
        log("FAIL start: %s" % e)
        failed += 1
    finally:
        ck = Check(0, "daemon exit")
        if ctx.main.proc is not None:
            if ctx.main_stopped_by_shutdown:
                ctx.main.logf.close()
                for p in ctx.main.exit_problems(ctx.main.rc):
                    ck.expect(False, p)
                how = "mixctl shutdown"
            else:
                for p in ctx.main.stop():
                    ck.expect(False, p)
                how = "SIGTERM"
            for p in ctx.tools.tool_problems:
                ck.expect(False, p)
            n_req = ctx.main.log_text().count("connection ")
            tag = "PASS" if not ck.problems else "FAIL"
            log("%s daemon exit: stopped by %s, exit status %r, sanitizer reports: %s (log %d lines, %d connection "
                "notes)" % (tag, how, ctx.main.rc, "yes" if ctx.main.sanitizer_reports() else "none",
                            len(ctx.main.log_text().splitlines()), n_req))
            for p in ck.problems:
                log("    - " + p.replace("\n", "\n      "))
            if ck.problems:
                failed += 1
            else:
                passed += 1
        if keep or failed:
            log("logs kept in %s" % ctx.tmpdir)
        else:
            shutil.rmtree(ctx.tmpdir, ignore_errors=True)
    log("total %.1f s" % (time.monotonic() - t_start))
    log("%d passed, %d failed%s" % (passed, failed, " (%d skipped)" % skipped if skipped else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
