#!/usr/bin/env python3
"""tests/service/test_notify.py — mixd's systemd contract, checked without systemd.

Usage: test_notify.py PATH/TO/mixd PATH/TO/mixctl [MODEL.gguf]

The test plays the service manager's part:
  notify      NOTIFY_SOCKET points at a datagram socket the test reads (with SO_PASSCRED, so
              each message's sender pid is known) and WATCHDOG_USEC is set. READY=1 must come
              from the main pid, with a STATUS= line, and only when the daemon's socket
              accepts connections; WATCHDOG=1 must follow every second or so (well within
              WATCHDOG_USEC/2), each with STATUS=; SIGHUP (what ExecReload= sends) must bring
              RELOADING=1, then READY=1 for the model now named in the config file; SIGTERM
              must bring STOPPING=1 and exit 0.
  activation  The test binds and listens on a Unix socket and execs mixd with it as fd 3,
              LISTEN_FDS=1 and LISTEN_PID=<mixd's own pid> (set in the forked child). A client
              that connects before the daemon is ready is answered once it is; --socket is
              ignored; the daemon leaves the socket file in place at exit, and a second daemon
              serves the same listening socket (what a service restart does).
  edge cases  LISTEN_PID naming another process: the fds are not ours, mixd binds --socket.
              LISTEN_FDS=2: mixd refuses to start (exit 1).
The last line is "N passed, M failed"; the exit status is 0 only when nothing failed.
"""
import os
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests", "python"))
import tally  # noqa: E402
from tally import check  # noqa: E402
START_TIMEOUT = 60.0      # seconds for the model to load (ASan builds are slow)
STOP_TIMEOUT = 30.0
WATCHDOG_USEC = 10_000_000




class Notifier:
    """The service manager's end of NOTIFY_SOCKET: a datagram socket with SO_PASSCRED."""

    def __init__(self, path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.messages = []   # (time, sender pid or None, {key: value})

    def receive(self, timeout):
        """Read one datagram within timeout seconds; returns the message or None."""
        self.sock.settimeout(max(timeout, 0.001))
        try:
            data, anc, _flags, _addr = self.sock.recvmsg(4096, socket.CMSG_SPACE(struct.calcsize("3i")))
        except socket.timeout:
            return None
        pid = None
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = struct.unpack("3i", payload[: struct.calcsize("3i")])[0]
        fields = {}
        for line in data.decode("utf-8", "replace").split("\n"):
            if "=" in line:
                k, v = line.split("=", 1)
                fields[k] = v
        msg = (time.monotonic(), pid, fields)
        self.messages.append(msg)
        return msg

    def wait_for(self, key, timeout, proc=None):
        """Receive until a message with key arrives; None on timeout or when proc exits."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = self.receive(min(0.2, deadline - time.monotonic()))
            if msg and key in msg[2]:
                return msg
            if msg is None and proc is not None and proc.poll() is not None:
                # the process is gone: drain what it sent, then give up
                while True:
                    m = self.receive(0.05)
                    if m is None:
                        return None
                    if key in m[2]:
                        return m
        return None

    def drain(self, timeout=0.3):
        while self.receive(timeout):
            pass

    def close(self):
        self.sock.close()


def can_connect(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


def mixctl_status(mixctl, path, timeout=START_TIMEOUT):
    return subprocess.run([mixctl, "status", "--socket", path], capture_output=True, text=True, timeout=timeout)


class Daemon:
    """mixd started by fork+exec, optionally with a listening socket as fd 3."""

    def __init__(self, mixd, args, env_extra, log_path, listen_fd=None, listen_fds="1", listen_pid="self"):
        self.log_path = log_path
        log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        env = dict(os.environ)
        for k in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES",
                  "STATE_DIRECTORY"):
            env.pop(k, None)
        env.update(env_extra)
        pid = os.fork()
        if pid == 0:  # child: only async-signal-safe-ish work, then exec
            try:
                os.dup2(log, 1)
                os.dup2(log, 2)
                devnull = os.open(os.devnull, os.O_RDONLY)
                os.dup2(devnull, 0)
                if listen_fd is not None:
                    if listen_fd != 3:
                        os.dup2(listen_fd, 3)  # dup2 clears FD_CLOEXEC on the copy
                    else:
                        os.set_inheritable(3, True)
                    env["LISTEN_FDS"] = listen_fds
                    env["LISTEN_PID"] = str(os.getpid()) if listen_pid == "self" else listen_pid
                os.execve(mixd, [mixd] + args, env)
            finally:
                os._exit(127)
        os.close(log)
        self.pid = pid
        self.status = None

    def poll(self):
        if self.status is None:
            pid, st = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = st
        return self.status

    def wait(self, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.poll() is not None:
                return self.exit_code()
            time.sleep(0.05)
        return None

    def exit_code(self):
        st = self.status
        if st is None:
            return None
        return os.WEXITSTATUS(st) if os.WIFEXITED(st) else -os.WTERMSIG(st)

    def terminate(self):
        if self.poll() is None:
            os.kill(self.pid, signal.SIGTERM)

    def kill(self):
        if self.poll() is None:
            os.kill(self.pid, signal.SIGKILL)
            self.wait(5)

    def log(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()[-3000:]
        except OSError:
            return ""


def show_log(d):
    text = d.log().strip()
    if text:
        print("    | " + text.replace("\n", "\n    | "))


def write_config(path, model, sock_path):
    with open(path, "w") as f:
        f.write(f"# written by test_notify.py\nmodel = {model}\nsocket = {sock_path}\nthreads = 2\n")


def test_notify(mixd, mixctl, model, tmp):
    print("# notify protocol (NOTIFY_SOCKET, WATCHDOG_USEC), daemon binds its socket, SIGHUP reload")
    sock_path = os.path.join(tmp, "n.sock")
    conf = os.path.join(tmp, "mixd.conf")
    write_config(conf, model, sock_path)
    n = Notifier(os.path.join(tmp, "notify"))
    d = Daemon(mixd, ["--config", conf],
               {"NOTIFY_SOCKET": n.path, "WATCHDOG_USEC": str(WATCHDOG_USEC)}, os.path.join(tmp, "notify.log"))
    try:
        ready = n.wait_for("READY", START_TIMEOUT, proc=d)
        # the moment READY=1 arrives the socket must accept connections: no retries here
        accepting = can_connect(sock_path)
        if not check("READY=1 arrives", ready is not None and ready[2].get("READY") == "1"):
            show_log(d)
            return
        check("READY=1 sent by the main pid", ready[1] == d.pid, f"sender {ready[1]}, mixd {d.pid}")
        check("socket accepts connections when READY=1 arrives", accepting)
        check("READY=1 carries STATUS=", bool(ready[2].get("STATUS")), repr(ready[2]))
        early = [m for m in n.messages if m[0] < ready[0]]
        # progress while loading (STATUS=) is welcome; READY, WATCHDOG and the rest are not
        check("only STATUS= before READY=1", all(set(m[2]) == {"STATUS"} for m in early),
              repr([m[2] for m in early]))

        r = mixctl_status(mixctl, sock_path)
        check("mixctl status answers after READY=1", r.returncode == 0 and "model" in r.stdout,
              f"exit {r.returncode}: {r.stderr.strip()}")

        # watchdog: collect pings for a few seconds
        t_end = time.monotonic() + 4.5
        while time.monotonic() < t_end:
            n.receive(t_end - time.monotonic())
        pings = [m for m in n.messages if m[2].get("WATCHDOG") == "1"]
        gaps = [b[0] - a[0] for a, b in zip(pings, pings[1:])]
        check("WATCHDOG=1 arrives periodically (>= 3 in 4.5 s)", len(pings) >= 3, f"{len(pings)} pings")
        check("WATCHDOG=1 interval within WATCHDOG_USEC/2",
              gaps and max(gaps) < WATCHDOG_USEC / 2e6 and min(gaps) > 0.2,
              "gaps " + ", ".join(f"{g:.2f}" for g in gaps))
        check("every WATCHDOG=1 from the main pid", all(m[1] == d.pid for m in pings))
        statuses = [m[2].get("STATUS", "") for m in pings]
        check("WATCHDOG=1 messages carry STATUS=", statuses and all(statuses), repr(statuses[:2]))
        check("STATUS= names the model", statuses and all(model in s for s in statuses), repr(statuses[:1]))
        check("READY=1 sent once", sum(1 for m in n.messages if "READY" in m[2]) == 1)

        # reload (ExecReload= sends SIGHUP): the model setting is re-read from the file
        model2 = os.path.join(tmp, "model-reloaded.gguf")
        os.symlink(model, model2)
        write_config(conf, model2, sock_path)
        n.messages.clear()
        t_hup = time.monotonic()
        os.kill(d.pid, signal.SIGHUP)
        reloading = n.wait_for("RELOADING", START_TIMEOUT, proc=d)
        ready2 = n.wait_for("READY", START_TIMEOUT, proc=d)
        check("RELOADING=1 after SIGHUP", reloading is not None and reloading[0] >= t_hup
              and reloading[2].get("RELOADING") == "1" and reloading[1] == d.pid)
        check("READY=1 after RELOADING=1", ready2 is not None and reloading is not None and ready2[0] >= reloading[0])
        check("READY=1 after reload names the new model", ready2 is not None and model2 in ready2[2].get("STATUS", ""),
              repr(ready2 and ready2[2]))
        r = mixctl_status(mixctl, sock_path)
        check("serving the reloaded model on the same socket", r.returncode == 0 and model2 in r.stdout,
              f"exit {r.returncode}: {r.stdout.strip()[:80]} {r.stderr.strip()}")
        ping = n.wait_for("WATCHDOG", 3.0, proc=d)
        check("WATCHDOG=1 continues after reload", ping is not None)

        t_term = time.monotonic()
        d.terminate()
        stopping = n.wait_for("STOPPING", STOP_TIMEOUT, proc=d)
        code = d.wait(STOP_TIMEOUT)
        check("STOPPING=1 after SIGTERM", stopping is not None and stopping[0] >= t_term
              and stopping[2].get("STOPPING") == "1")
        check("exit status 0 after SIGTERM", code == 0, f"exit {code}")
        if code != 0:
            show_log(d)
        check("own socket removed at exit", not os.path.exists(sock_path))
    finally:
        d.kill()
        n.close()


def listening_socket(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.listen(16)
    return s


def test_activation(mixd, mixctl, model, tmp):
    print("# socket activation (LISTEN_FDS=1, LISTEN_PID, fd 3)")
    act_path = os.path.join(tmp, "act.sock")
    ignored = os.path.join(tmp, "ignored.sock")
    lsock = listening_socket(act_path)
    n = Notifier(os.path.join(tmp, "notify-act"))
    args = ["--model", model, "--socket", ignored, "--threads", "2"]
    env = {"NOTIFY_SOCKET": n.path}
    d = Daemon(mixd, args, env, os.path.join(tmp, "act.log"), listen_fd=lsock.fileno())
    early = None
    try:
        # a client arriving before the daemon is ready waits in the listen backlog
        early = subprocess.Popen([mixctl, "status", "--socket", act_path], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        ready = n.wait_for("READY", START_TIMEOUT, proc=d)
        if not check("READY=1 with a passed socket", ready is not None):
            show_log(d)
            return
        out, err = early.communicate(timeout=START_TIMEOUT)
        check("client connected before READY=1 is answered", early.returncode == 0 and "model" in out,
              f"exit {early.returncode}: {err.strip()}")
        r = mixctl_status(mixctl, act_path)
        check("mixctl status over the passed socket", r.returncode == 0 and "model" in r.stdout,
              f"exit {r.returncode}: {r.stderr.strip()}")
        r = subprocess.run([mixctl, "generate", "--socket", act_path, "-n", "4", "--seed", "1", "ROMEO:"],
                           capture_output=True, text=True, timeout=START_TIMEOUT)
        check("mixctl generate over the passed socket", r.returncode == 0 and r.stdout != "",
              f"exit {r.returncode}: {r.stderr.strip()}")
        check("--socket ignored under activation", not os.path.exists(ignored))
        check("log says the socket came from the service manager", "service manager" in d.log())

        d.terminate()
        stopping = n.wait_for("STOPPING", STOP_TIMEOUT, proc=d)
        code = d.wait(STOP_TIMEOUT)
        check("STOPPING=1 after SIGTERM (activated)", stopping is not None)
        check("exit status 0 (activated)", code == 0, f"exit {code}")
        if code != 0:
            show_log(d)
        st = os.lstat(act_path) if os.path.lexists(act_path) else None
        check("passed socket's path not unlinked at exit", st is not None and stat.S_ISSOCK(st.st_mode))

        # what a restart by the service manager does: the same listening socket, a new daemon
        n.drain(0.05)
        d = Daemon(mixd, args, env, os.path.join(tmp, "act2.log"), listen_fd=lsock.fileno())
        ready = n.wait_for("READY", START_TIMEOUT, proc=d)
        r = mixctl_status(mixctl, act_path)
        check("second daemon serves the same listening socket", ready is not None and r.returncode == 0,
              f"exit {r.returncode}: {r.stderr.strip()}")
        d.terminate()
        code = d.wait(STOP_TIMEOUT)
        check("exit status 0 (second daemon)", code == 0, f"exit {code}")
        if code != 0:
            show_log(d)
    finally:
        if early and early.poll() is None:
            early.kill()
            early.wait()
        d.kill()
        lsock.close()
        n.close()


def test_edge_cases(mixd, mixctl, model, tmp):
    print("# activation edge cases")
    # LISTEN_PID names another process: the descriptors are not for mixd
    other_path = os.path.join(tmp, "other.sock")
    own_path = os.path.join(tmp, "own.sock")
    lsock = listening_socket(other_path)
    n = Notifier(os.path.join(tmp, "notify-edge"))
    d = Daemon(mixd, ["--model", model, "--socket", own_path, "--threads", "1"], {"NOTIFY_SOCKET": n.path},
               os.path.join(tmp, "edge1.log"), listen_fd=lsock.fileno(), listen_pid="1")
    try:
        ready = n.wait_for("READY", START_TIMEOUT, proc=d)
        check("LISTEN_PID of another process: mixd binds its own --socket",
              ready is not None and can_connect(own_path))
        d.terminate()
        code = d.wait(STOP_TIMEOUT)
        check("exit status 0 (foreign LISTEN_PID)", code == 0, f"exit {code}")
        if code != 0:
            show_log(d)
    finally:
        d.kill()
        lsock.close()
    # two sockets announced: refused
    n.drain(0.05)
    n.messages.clear()
    lsock = listening_socket(os.path.join(tmp, "two.sock"))
    d = Daemon(mixd, ["--model", model, "--threads", "1"], {"NOTIFY_SOCKET": n.path},
               os.path.join(tmp, "edge2.log"), listen_fd=lsock.fileno(), listen_fds="2")
    try:
        code = d.wait(START_TIMEOUT)
        check("LISTEN_FDS=2: mixd exits with status 1", code == 1, f"exit {code}")
        check("LISTEN_FDS=2: the reason is logged", "expected one socket" in d.log(), d.log()[-300:])
        n.drain(0.1)
        check("LISTEN_FDS=2: no READY=1", not any("READY" in m[2] for m in n.messages))
    finally:
        d.kill()
        lsock.close()
        n.close()


def main():
    if len(sys.argv) not in (3, 4):
        print(__doc__.strip().split("\n")[2], file=sys.stderr)
        return 2
    mixd, mixctl = (os.path.abspath(p) for p in sys.argv[1:3])
    model = os.path.abspath(sys.argv[3] if len(sys.argv) == 4 else os.path.join(ROOT, "models/tiny-moe-q4_k_m.gguf"))
    for p in (mixd, mixctl, model):
        if not os.path.exists(p):
            check("exists: %s" % p, False)
            return tally.summary()
    with tempfile.TemporaryDirectory(prefix="mixd-svc-") as tmp:
        for t in (test_notify, test_activation, test_edge_cases):
            try:
                t(mixd, mixctl, model, tmp)
            except Exception as e:  # a harness error is a failure, not a crash
                check(f"{t.__name__} ran to completion", False, f"{type(e).__name__}: {e}")
    return tally.summary()


if __name__ == "__main__":
    sys.exit(main())
