#!/usr/bin/env python3
"""tests/lifecycle/test_lifecycle.py — mixd across stops and reloads: sessions saved at
SIGTERM and restored, continuing exactly as the in-process one-shot run (`mixctl generate -m`)
of the same text and with the logprobs of a session that was never saved; state files record their KV type, an
old (version 1, F32) file still restores exactly, one of another KV type is converted;
corrupt, truncated, half-written and
other-model state files skipped with a log line; a failed save (disk full, via an LD_PRELOAD
shim) leaves nothing behind; SIGHUP swaps the model without dropping the socket; the model
file truncated while mapped fails requests clearly instead of crashing the daemon.

Every daemon's exit status and log are checked: SIGTERM exits 0 (also after a failed save, as
docs/RELIABILITY.md says), no sanitizer report, and no error or warning line where nothing
went wrong; every socket read times out (READ_TIMEOUT), so a lost reply fails instead of hanging.

usage: test_lifecycle.py MIXD MIXCTL   (run from anywhere; the model is models/ in the repo)
Prints a PASS/FAIL line per check and `N passed, M failed`."""

import atexit
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

import msgpack

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODEL = os.path.join(ROOT, "models", "tiny-moe-q4_k_m.gguf")
SANITIZER_MARKS = ("ERROR: AddressSanitizer", "runtime error:", "LeakSanitizer", "WARNING: ThreadSanitizer")
READ_TIMEOUT = 120.0  # seconds a socket read may wait (sanitizer builds are slow)

passed = failed = 0


def check(name, ok, detail=""):
    global passed, failed
    if ok:
        passed += 1
        print("PASS  %s %s" % (name, detail))
    else:
        failed += 1
        print("FAIL  %s %s" % (name, detail))


STARTED = []  # every daemon, killed at exit if a failed check left it running


@atexit.register
def kill_leftovers():
    for p in STARTED:
        if p.poll() is None:
            p.kill()
            p.wait()


class Daemon:
    def __init__(self, mixd, sock, model=MODEL, state=None, env=None, kv_type=None):
        self.sock = sock
        args = [mixd, "--model", model, "--socket", sock, "--threads", "2"]
        if state:
            args += ["--state-dir", state]
        if kv_type:
            args += ["--kv-type", kv_type]
        self.log = tempfile.NamedTemporaryFile(mode="w+", suffix=".log", delete=False)
        e = dict(os.environ)
        e.update(env or {})
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, env=e)
        STARTED.append(self.proc)
        deadline = time.time() + 30
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("mixd exited early:\n" + self.text())
            try:
                s = socket.socket(socket.AF_UNIX)
                s.connect(sock)
                s.close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("mixd did not start listening")

    def text(self):
        with open(self.log.name) as f:
            return f.read()

    def stop(self, sig=signal.SIGTERM):
        """Exit status (None: still running after 60 s, then killed) and the whole log."""
        self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            rc = None
        out = self.text()
        os.unlink(self.log.name)
        return rc, out


def log_problems(log):
    """Error and warning lines (priority <0>..<4>) and sanitizer reports of a daemon's log."""
    return [l for l in log.splitlines() if l[:3] in ("<0>", "<1>", "<2>", "<3>", "<4>")
            or any(k in l for k in SANITIZER_MARKS)]


def stopped(d, name, want_rc=0, allowed=()):
    """Stops d and checks its exit status and that its log has no error, warning or sanitizer
    line other than those containing one of `allowed`. Returns (rc, log)."""
    rc, log = d.stop()
    bad = [l for l in log_problems(log) if not any(a in l for a in allowed) or any(k in l for k in SANITIZER_MARKS)]
    check("%s: exit %s, log clean" % (name, want_rc), rc == want_rc and not bad,
          "exit %s%s" % (rc, "; " + " | ".join(bad[:3]) if bad else ""))
    return rc, log


class Client:
    def __init__(self, sock):
        self.s = socket.socket(socket.AF_UNIX)
        self.s.settimeout(READ_TIMEOUT)
        self.s.connect(sock)
        self.buf = b""
        self.next_id = 1

    def send(self, op, **fields):
        rid = self.next_id
        self.next_id += 1
        body = msgpack.packb(dict(id=rid, op=op, **fields))
        self.s.sendall(struct.pack(">I", len(body)) + body)
        return rid

    def recv(self):
        while len(self.buf) < 4 or len(self.buf) < 4 + struct.unpack(">I", self.buf[:4])[0]:
            chunk = self.s.recv(65536)
            if not chunk:
                raise EOFError("daemon closed the connection")
            self.buf += chunk
        n = struct.unpack(">I", self.buf[:4])[0]
        m = msgpack.unpackb(self.buf[4:4 + n], raw=False)
        self.buf = self.buf[4 + n:]
        return m

    def call(self, op, **fields):
        self.send(op, **fields)
        return self.recv()

    def generate(self, **fields):
        """Returns (tokens, logprobs, text, done_event_or_error)."""
        self.send("generate", **fields)
        toks, lps, text = [], [], ""
        while True:
            m = self.recv()
            if m.get("event") == "token":
                toks.append(m["token"])
                lps.append(m.get("logprob"))
                text += m["text"]
            else:
                return toks, lps, text, m

    def close(self):
        self.s.close()


def fnv1a(data):
    h = 0xcbf29ce484222325
    for b in data:
        h = ((h ^ b) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return h


def as_version1(b):
    """A version-2 F32 state file rewritten as version 1 wrote it: version 1, 0 (reserved)
    where the KV type is, the checksum over the changed bytes."""
    b = b[:8] + struct.pack("<II", 1, 0) + b[16:-8]
    return b + struct.pack("<Q", fnv1a(b))


def clear(state):
    for f in os.listdir(state):
        os.unlink(os.path.join(state, f))


FIRST_PROMPT, FIRST_N = "ROMEO: What light", 4


def two_turns(c, sid):
    """The first turn of a session (its text is returned); the second one is SECOND."""
    a = c.generate(prompt=FIRST_PROMPT, session=sid, n_predict=FIRST_N, temperature=0.0, logprobs=True)
    check("first turn ends by length", a[3].get("stop_reason") == "length", str(a[3]))
    return a[2]


def one_shot(mixctl, n, kv_type=None):
    """The in-process greedy continuation of FIRST_PROMPT (bytes): what a session's first
    turn and its SECOND one (an empty prompt: no new text) give together."""
    args = [mixctl, "generate", "-m", MODEL, "--temp", "0", "-n", str(n), FIRST_PROMPT]
    if kv_type:
        args += ["--kv-type", kv_type]
    p = subprocess.run(args, capture_output=True, timeout=600)
    check("in-process one-shot run (kv %s)" % (kv_type or "f16"), p.returncode == 0 and p.stdout,
          p.stderr.decode(errors="replace")[-300:])
    return p.stdout


def preload_env(mixd, shim):
    """LD_PRELOAD for a test shim (the ASan runtime must come first in an ASan build)."""
    env = {"LD_PRELOAD": shim}
    if "asan" in mixd:
        libasan = subprocess.run(["gcc", "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
        env["LD_PRELOAD"] = libasan + ":" + shim
    return env


def late_wakeup(mixd, sock, tmp, rounds=3, delay_ms=300):
    shim = os.path.join(tmp, "async_delay.so")
    subprocess.run(["gcc", "-shared", "-fPIC", "-O1", "-o", shim,
                    os.path.join(ROOT, "tests", "lifecycle", "async_delay_shim.c"), "-ldl"], check=True)
    env = preload_env(mixd, shim)
    env["MIXD_TEST_ASYNC_DELAY_MS"] = str(delay_ms)
    codes = []
    for i in range(rounds):
        d = Daemon(mixd, sock, env=env)
        c = Client(sock)
        c.send("generate", prompt="ROMEO:", n_predict=100000, seed=1 + i)
        first = c.recv()
        rc, log = d.stop()
        c.close()
        codes.append(rc)
        if rc != 0 or first.get("event") != "token" or any(k in log for k in SANITIZER_MARKS):
            print(log[-3000:])
            break
    check("shutdown with the engine's last wake-up %d ms late: exit 0 (%d rounds)" % (delay_ms, rounds),
          codes == [0] * rounds, "exit statuses %s" % codes)


def main():
    mixd, mixctl = sys.argv[1], sys.argv[2]
    tmp = tempfile.mkdtemp(prefix="mixd-life-")
    sock = os.path.join(tmp, "mixd.sock")
    state = os.path.join(tmp, "state")
    os.mkdir(state)
    # the second turn adds no text, so it continues the first turn's generation: the two turns
    # together must be the in-process one-shot run of FIRST_PROMPT (also after a restart)
    second = dict(prompt="", n_predict=10, temperature=0.0, logprobs=True)
    reference = one_shot(mixctl, FIRST_N + second["n_predict"])

    # --- control: two turns on one session, no restart
    d = Daemon(mixd, sock, state=None)
    c = Client(sock)
    sid = c.call("session.open")["session"]
    first = two_turns(c, sid)
    control = c.generate(session=sid, **second)
    c.close()
    stopped(d, "control daemon")
    check("two turns without a restart equal the in-process one-shot run",
          (first + control[2]).encode() == reference, "%r vs %r" % (first + control[2], reference))

    # --- the same with a restart between the turns
    d = Daemon(mixd, sock, state=state)
    c = Client(sock)
    sid = c.call("session.open")["session"]
    first = two_turns(c, sid)
    c.close()
    rc, log = stopped(d, "saving daemon")
    files = os.listdir(state)
    check("SIGTERM saves the session", files == ["session-%s.state" % sid] and "saved 1 session" in log,
          "files %s" % files)
    saved = open(os.path.join(state, files[0]), "rb").read() if files else b""

    d = Daemon(mixd, sock, state=state)
    c = Client(sock)
    after = c.generate(session=sid, **second)
    c.close()
    rc, log = stopped(d, "restoring daemon")
    check("restored session continues as the in-process one-shot run", (first + after[2]).encode() == reference,
          "%r vs %r" % (first + after[2], reference))
    check("restored session: the tokens and logprobs of the session never saved",
          after[0] == control[0] and after[1] == control[1] and after[0] != [],
          "tokens %s; logprobs equal: %s" % (after[0], after[1] == control[1]))
    check("restore logged", "restored 1 session" in log)
    version, kv_type = struct.unpack("<II", saved[8:16]) if len(saved) >= 16 else (0, -1)
    check("state file records its KV type (version 2, f16 by default)", version == 2 and kv_type == 1,
          "version %d, kv type %d" % (version, kv_type))

    # --- KV types: an old F32 file restores exactly; another type is converted
    d = Daemon(mixd, sock, state=None, kv_type="f32")
    c = Client(sock)
    sid_f = c.call("session.open")["session"]
    two_turns(c, sid_f)
    control_f32 = c.generate(session=sid_f, **second)
    st = c.call("status")
    c.close()
    stopped(d, "f32 daemon")
    check("status reports the KV type and bytes per position",
          st.get("kv_type") == "f32" and st.get("kv_bytes_per_pos") == 4 * 2 * (2 * 32) * 4,  # layers x K,V x kv_dim x f32
          "%s, %s" % (st.get("kv_type"), st.get("kv_bytes_per_pos")))
    clear(state)
    d = Daemon(mixd, sock, state=state, kv_type="f32")
    c = Client(sock)
    sid_f = c.call("session.open")["session"]
    first_f32 = two_turns(c, sid_f)
    c.close()
    stopped(d, "f32 daemon saving")
    files = os.listdir(state)
    f32_file = open(os.path.join(state, files[0]), "rb").read() if files else b""
    check("f32 daemon saves a KV type 0 file", f32_file[12:16] == struct.pack("<I", 0))
    old = as_version1(f32_file) if f32_file else b""
    clear(state)
    with open(os.path.join(state, "session-%s.state" % sid_f), "wb") as f:
        f.write(old)
    d = Daemon(mixd, sock, state=state, kv_type="f32")
    c = Client(sock)
    after = c.generate(session=sid_f, **second)
    c.close()
    rc, log = stopped(d, "f32 daemon restoring a version 1 file")
    reference_f32 = one_shot(mixctl, FIRST_N + second["n_predict"], "f32")
    check("version 1 (F32) state file restores: continues as the in-process one-shot run (kv f32)",
          "restored 1 session" in log and (first_f32 + after[2]).encode() == reference_f32,
          "%r vs %r" % (first_f32 + after[2], reference_f32))
    check("version 1 (F32) state file restores with the tokens and logprobs of the session never saved",
          after[0] == control_f32[0] and after[1] == control_f32[1] and after[0] != [], "tokens %s" % after[0])
    for name, data, kv, frm, to in (("version 1 f32 file", old, None, "f32", "f16"),
                                     ("f16 file", saved, "q8_0", "f16", "q8_0")):
        clear(state)
        file_id = struct.unpack("24s", data[24:48])[0].rstrip(b"\0").decode() if data else "s-0"
        with open(os.path.join(state, "session-%s.state" % file_id), "wb") as f:
            f.write(data)
        d = Daemon(mixd, sock, state=state, kv_type=kv)
        c = Client(sock)
        r = c.generate(session=file_id, **second)
        c.close()
        rc, log = stopped(d, "%s daemon converting a %s" % (to, name))
        check("%s restored by a %s daemon: converted, the session continues" % (name, to),
              "restored 1 session" in log and "converted from %s to %s" % (frm, to) in log
              and r[3].get("event") == "done" and len(r[0]) == second["n_predict"], str(r[3]))

    # --- bad state files are skipped with a log line, never a crash
    bad_cases = {
        "corrupt": lambda b: b[:200] + bytes([b[200] ^ 0xFF]) + b[201:],
        "truncated": lambda b: b[:len(b) // 2],
        "empty": lambda b: b"",
        "other version": lambda b: b[:8] + struct.pack("<I", 99) + b[12:],
        "garbage": lambda b: os.urandom(4096),
    }
    bad_cases["unknown KV type"] = lambda b: b[:12] + struct.pack("<I", 7) + b[16:]
    for name, mutate in bad_cases.items():
        for f in os.listdir(state):
            os.unlink(os.path.join(state, f))
        bad_id = "s-%016x" % 0xabc
        with open(os.path.join(state, "session-%s.state" % bad_id), "wb") as f:
            f.write(mutate(saved))
        # a half-written temporary file, as a kill -9 during a save leaves
        with open(os.path.join(state, ".tmp-%s" % bad_id), "wb") as f:
            f.write(saved[:1000])
        d = Daemon(mixd, sock, state=state)
        c = Client(sock)
        listed = c.call("session.list")["sessions"]
        st = c.call("status")
        c.close()
        rc, log = stopped(d, "daemon given the %s state file" % name,
                          allowed=("skipping session state", "left by an interrupted save"))
        check("state file %s: skipped, daemon serves" % name,
              listed == [] and st.get("ok") and "skipping session state" in log)
        check("half-written save (%s run) removed" % name, not os.path.exists(os.path.join(state, ".tmp-%s" % bad_id)))

    # --- a state file of another model is skipped
    for f in os.listdir(state):
        os.unlink(os.path.join(state, f))
    with open(os.path.join(state, "session-%s.state" % sid), "wb") as f:
        f.write(saved)
    other = os.path.join(tmp, "other.gguf")
    with open(MODEL, "rb") as src, open(other, "wb") as dst:
        dst.write(src.read())  # same bytes, another file: another size/mtime identity
    os.utime(other, (time.time() - 3600, time.time() - 3600))
    d = Daemon(mixd, sock, model=other, state=state)
    rc, log = stopped(d, "daemon with another model's state file", allowed=("saved with another model file",))
    check("state of another model file: skipped", "saved with another model file" in log)

    # --- disk full while saving: error logged, nothing half-written left, clean exit
    shim = os.path.join(tmp, "enospc.so")
    subprocess.run(["gcc", "-shared", "-fPIC", "-O1", "-o", shim,
                    os.path.join(ROOT, "tests", "lifecycle", "enospc_shim.c"), "-ldl"], check=True)
    for f in os.listdir(state):
        os.unlink(os.path.join(state, f))
    env = {"LD_PRELOAD": shim}
    if "asan" in mixd:  # the ASan runtime must come first
        libasan = subprocess.run(["gcc", "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
        env["LD_PRELOAD"] = libasan + ":" + shim
    d = Daemon(mixd, sock, state=state, env=env)
    c = Client(sock)
    sid2 = c.call("session.open")["session"]
    two_turns(c, sid2)
    c.close()
    # docs/RELIABILITY.md: "error logged, no partial file left, exit 0"
    rc, log = stopped(d, "disk-full daemon", want_rc=0, allowed=("cannot save session",))
    left = os.listdir(state)
    err = [l for l in log.splitlines() if "cannot save session %s" % sid2 in l]
    check("disk full on save: logged as an error, no partial file, no success claimed",
          len(err) == 1 and err[0].startswith("<3>") and "No space left on device" in err[0]
          and left == [] and "saved 1 session" not in log, "left %s; %s" % (left, err))

    # --- state-dir = none: nothing is saved even where systemd sets $STATE_DIRECTORY
    for f in os.listdir(state):
        os.unlink(os.path.join(state, f))
    d = Daemon(mixd, sock, state="none", env={"STATE_DIRECTORY": state})
    c = Client(sock)
    c.call("session.open")
    c.close()
    stopped(d, "state-dir none daemon")
    check("state-dir none: nothing saved under $STATE_DIRECTORY", os.listdir(state) == [],
          "files %s" % os.listdir(state))

    # --- SIGHUP: the model is swapped, the socket stays, sessions are closed with a reason
    d = Daemon(mixd, sock, state=None)
    c = Client(sock)
    sid3 = c.call("session.open")["session"]
    rid = c.send("generate", prompt="ROMEO:", n_predict=100000, seed=1)
    first = c.recv()
    d.proc.send_signal(signal.SIGHUP)
    events = [first]
    while events[-1].get("event") == "token":
        events.append(c.recv())
    done = events[-1]
    check("reload cancels in-flight generation", done.get("event") == "done" and done.get("stop_reason") == "cancelled",
          str({k: done.get(k) for k in ("event", "stop_reason", "n_generated")}))
    time.sleep(0.5)
    r = c.generate(session=sid3, prompt="x", n_predict=2)[3]
    check("old session closed with a reason", "reloaded its model" in str(r.get("error", {}).get("message", "")),
          str(r.get("error")))
    fresh = Client(sock)
    r = fresh.generate(prompt="ROMEO:", n_predict=3, seed=1)
    check("new connections served after reload", r[3].get("event") == "done" and len(r[0]) == 3)
    fresh.close()
    c.close()
    rc, log = stopped(d, "reloaded daemon")
    check("reload logged", "reloaded: serving" in log)

    # --- shutdown while the engine thread's last wake-up of the loop is late: an LD_PRELOAD
    # shim delays every uv_async_send of a non-main thread, so the loop finishes the last job
    # (and, unless it joins the engine thread first, closes its handles and the loop) before
    # that send happens; a send into a closed loop aborts the daemon
    late_wakeup(mixd, sock, tmp)

    # --- the model file truncated while mapped: a clear error, the daemon lives, reload heals
    # (not under ThreadSanitizer: the guard swaps a page under a reader by design, which TSan
    # reports as a race it cannot attribute)
    if os.environ.get("MIXD_TEST_TSAN"):
        print("%d passed, %d failed" % (passed, failed))
        return 1 if failed else 0
    copy = os.path.join(tmp, "copy.gguf")
    with open(MODEL, "rb") as src, open(copy, "wb") as dst:
        dst.write(src.read())
    d = Daemon(mixd, sock, model=copy)
    c = Client(sock)
    ok_before = c.generate(prompt="ROMEO:", n_predict=3, seed=1)
    os.truncate(copy, 2000000)
    r = c.generate(prompt="ROMEO:", n_predict=3, seed=1)[3]
    check("truncated model: clear error", r.get("error", {}).get("code") == "unavailable"
          and "changed on disk" in r["error"]["message"], str(r.get("error")))
    check("truncated model: daemon still answers", c.call("status").get("ok") is True)
    with open(MODEL, "rb") as src, open(copy, "wb") as dst:
        dst.write(src.read())
    d.proc.send_signal(signal.SIGHUP)
    time.sleep(1.0)
    r = c.generate(prompt="ROMEO:", n_predict=3, seed=1)
    check("reload after the file is restored heals", r[0] == ok_before[0], "%s vs %s" % (r[0], ok_before[0]))
    c.close()
    rc, log = stopped(d, "truncated-model daemon", allowed=("shrank while mapped", "changed on disk"))
    check("truncated model logged", "shrank while mapped" in log)

    print("%d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
