#!/usr/bin/env python3
"""tests/cli/test_terminal.py — mixctl on a terminal (a pseudo-terminal this script drives).

usage: test_terminal.py PATH/TO/mixctl

  - Ctrl-C (SIGINT) ends an in-process generation with the line ended, so the shell's prompt
    starts on a new line; the same for a generation through a daemon left with a second
    Ctrl-C (the daemon is played by tests/cli/test_remote_errors.py's FakeDaemon);
  - Ctrl-D at chat's prompt ends the chat with the line ended;
  - generate and tokenize reading a terminal say so on stderr (and that Ctrl-D ends the
    input); reading a pipe, they say nothing.
Every run has a time limit. The last line is "N passed, M failed".
"""
import os
import pty
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
MODEL = os.path.join(ROOT, "models", "tiny-moe-q4_k_m.gguf")
sys.path.insert(0, HERE)
from test_remote_errors import FakeDaemon, frame, ok_reply  # noqa: E402

RUN_LIMIT = 60.0
HINT = "reading the %s from the terminal"

passed = failed = 0


def check(name, ok, detail=""):
    global passed, failed
    if ok:
        passed += 1
        print("ok   - %s" % name, flush=True)
    else:
        failed += 1
        print("FAIL - %s%s" % (name, ": " + detail if detail else ""), flush=True)


class Term:
    """mixctl with a pseudo-terminal as its stdin, stdout and stderr (and controlling terminal)."""

    def __init__(self, argv):
        env = dict(os.environ, TERM="dumb")
        env.pop("MIXD_SOCKET", None)
        self.pid, self.fd = pty.fork()
        if self.pid == 0:
            try:
                os.execve(argv[0], argv, env)
            finally:
                os._exit(127)
        self.out = b""

    def read_until(self, pred, timeout):
        """Read output until pred(output) holds; False on timeout or end of output."""
        end = time.monotonic() + timeout
        while not pred(self.out):
            left = end - time.monotonic()
            if left <= 0:
                return False
            r, _, _ = select.select([self.fd], [], [], left)
            if not r:
                continue
            try:
                chunk = os.read(self.fd, 65536)
            except OSError:     # EIO: the child closed the terminal
                return pred(self.out)
            if not chunk:
                return pred(self.out)
            self.out += chunk
        return True

    def write(self, data):
        os.write(self.fd, data)

    def finish(self, timeout=RUN_LIMIT):
        """Read to the end and reap: the exit status (128 + signal when killed), or None if it
        had to be killed for running past timeout."""
        self.read_until(lambda _: False, timeout)
        end = time.monotonic() + timeout
        while True:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > end:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
                os.close(self.fd)
                return None
            time.sleep(0.05)
        os.close(self.fd)
        return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)

    def text(self):
        return self.out.decode("utf-8", "replace").replace("\r\n", "\n")


def streaming_ignoring_cancel(conn, reqs):
    """A daemon that streams tokens without a newline and pays no heed to cancel."""
    stop = threading.Event()

    def stream(rid):
        while not stop.is_set():
            try:
                conn.sendall(frame({"id": rid, "event": "token", "text": "x", "token": 5}))
            except OSError:
                return
            time.sleep(0.02)

    for req in reqs:
        if req["op"] == "generate":
            threading.Thread(target=stream, args=(req["id"],), daemon=True).start()
        elif req["op"] == "cancel":
            conn.sendall(frame(ok_reply(req)))
        elif req["op"] == "hello":
            conn.sendall(frame(ok_reply(req, version=1, server="fake")))
    stop.set()


def sessions_only(conn, reqs):
    """Enough of a daemon for a chat that ends before its first turn."""
    for req in reqs:
        if req["op"] == "session.open":
            conn.sendall(frame(ok_reply(req, session="s-fake", capacity=64, kv_bytes=0, evicted=0)))
        else:
            conn.sendall(frame(ok_reply(req)))


def one_token(conn, reqs):
    for req in reqs:
        if req["op"] in ("generate",):
            conn.sendall(frame({"id": req["id"], "event": "token", "text": "ok", "token": 5}))
            conn.sendall(frame({"id": req["id"], "event": "done", "stop_reason": "length", "n_prompt": 1,
                                "n_generated": 1, "prompt_ms": 1.0, "generate_ms": 1.0}))
        else:
            conn.sendall(frame(ok_reply(req, tokens=[1, 5], logprobs=[-1.0], total_logprob=-1.0)))


def stdin_terminal(argv, typed):
    """Run with a pseudo-terminal as stdin only, type `typed`, then Ctrl-D: (status, stdout, stderr)."""
    master, slave = pty.openpty()
    p = subprocess.Popen(argv, stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    os.close(slave)
    time.sleep(0.2)
    os.write(master, typed + b"\n")
    os.write(master, b"\x04")
    try:
        out, err = p.communicate(timeout=RUN_LIMIT)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        os.close(master)
        return None, out, err.decode("utf-8", "replace")
    os.close(master)
    return p.returncode, out, err.decode("utf-8", "replace")


def main(argv):
    if len(argv) != 2:
        print(__doc__)
        return 2
    mixctl = os.path.abspath(argv[1])
    tmp = tempfile.mkdtemp(prefix="mixctl-term-")
    sock = os.path.join(tmp, "fake.sock")

    # Ctrl-C during an in-process prefill (deterministic: nothing is generated yet; the progress
    # line on the terminal is left unfinished unless mixctl ends the line)
    t = Term([mixctl, "generate", "-m", MODEL, "-n", "4", "--temp", "0", "a " * 6000])
    started = t.read_until(lambda o: b"prefill" in o, RUN_LIMIT)
    os.kill(t.pid, signal.SIGINT)
    rc = t.finish()
    txt = t.text()
    check("in-process generate, Ctrl-C during prefill: exit 130, the line ended",
          started and rc == 130 and txt.endswith("\n") and "prefill" in txt,
          "progress seen %s, exit %r, output ends %r" % (started, rc, txt[-60:]))

    # a generation through the daemon, left with a second Ctrl-C
    fake = FakeDaemon(sock, streaming_ignoring_cancel)
    try:
        t = Term([mixctl, "generate", "--socket", sock, "hi"])
        started = t.read_until(lambda o: o.count(b"x") >= 3, RUN_LIMIT)
        os.kill(t.pid, signal.SIGINT)
        time.sleep(0.5)
        os.kill(t.pid, signal.SIGINT)
        rc = t.finish()
    finally:
        fake.close()
    txt = t.text()
    check("daemon generate, second Ctrl-C: exit 130, the line ended",
          started and rc == 130 and txt.endswith("\n") and "cancel" in fake.ops(),
          "tokens seen %s, exit %r, ops %s, output ends %r" % (started, rc, fake.ops()[:4], txt[-60:]))

    # Ctrl-D at chat's prompt
    fake = FakeDaemon(sock, sessions_only)
    try:
        t = Term([mixctl, "chat", "--socket", sock])
        prompted = t.read_until(lambda o: b"> " in o, RUN_LIMIT)
        # the line editor may discard input typed before it set the terminal up: type again
        for _ in range(10):
            time.sleep(0.3)
            t.write(b"\x04")
            if t.read_until(lambda o: b"session.close" in " ".join(fake.ops()).encode(), 2.0):
                break
        rc = t.finish()
    finally:
        fake.close()
    txt = t.text()
    check("chat, Ctrl-D at the prompt: exit 0, the line ended",
          prompted and rc == 0 and txt.endswith("\n") and "session.close" in fake.ops(),
          "prompt seen %s, exit %r, ops %s, output ends %r" % (prompted, rc, fake.ops(), txt[-60:]))

    # a terminal on stdin: the hint; a pipe: no hint
    rc, out, err = stdin_terminal([mixctl, "generate", "-m", MODEL, "-n", "2", "--seed", "1"], b"ROMEO:")
    check("in-process generate reading a terminal: the hint", rc == 0 and HINT % "prompt" in err and "Ctrl-D" in err
          and out, "exit %r, stderr %r, stdout %r" % (rc, err[-300:], out[:60]))
    rc, out, err = stdin_terminal([mixctl, "tokenize", "-m", MODEL], b"hello")
    check("in-process tokenize reading a terminal: the hint", rc == 0 and HINT % "text" in err
          and out.startswith(b"[1,"), "exit %r, stderr %r, stdout %r" % (rc, err[-300:], out[:60]))
    fake = FakeDaemon(sock, one_token)
    try:
        rc, out, err = stdin_terminal([mixctl, "generate", "--socket", sock], b"hi")
        check("daemon generate reading a terminal: the hint", rc == 0 and HINT % "prompt" in err and out == b"ok",
              "exit %r, stderr %r, stdout %r" % (rc, err[-300:], out[:60]))
        rc, out, err = stdin_terminal([mixctl, "score", "--socket", sock], b"hi")
        check("score reading a terminal: the hint", rc == 0 and HINT % "text" in err and out.startswith(b'{"tokens":[1,5]'),
              "exit %r, stderr %r, stdout %r" % (rc, err[-300:], out[:60]))
        p = subprocess.run([mixctl, "generate", "--socket", sock], input=b"hi", capture_output=True, timeout=RUN_LIMIT)
        check("daemon generate reading a pipe: no hint", p.returncode == 0 and b"reading the" not in p.stderr,
              "exit %r, stderr %r" % (p.returncode, p.stderr[-300:]))
    finally:
        fake.close()

    os.rmdir(tmp)
    print("%d passed, %d failed" % (passed, failed))
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
