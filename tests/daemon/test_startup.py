#!/usr/bin/env python3
"""tests/daemon/test_startup.py — mixd checks its socket before it maps the model.

usage: test_startup.py PATH/TO/mixd

Each case starts mixd with a socket it cannot use and requires: a non-zero exit within a few
seconds, a message that says what is wrong (a missing directory is not "permission denied"),
and no "loading" line, i.e. the model was never mapped (a large model takes minutes). Cases:
a socket in a directory that does not exist, a socket another daemon listens on, a regular
file in the way, a directory that is a file, and, run as nobody when the test runs as root
(else as the caller), no --socket with XDG_RUNTIME_DIR unset, and a directory the user may
not write. A last case has a good socket and a missing model: the model error comes, after
the socket checks. The last line is "N passed, M failed".
"""
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODEL = os.path.join(ROOT, "models", "tiny-moe-q4_k_m.gguf")
NOBODY = 65534
RUN_LIMIT = 60.0     # seconds; a refused start takes well under one

passed = failed = 0


def check(name, ok, detail=""):
    global passed, failed
    if ok:
        passed += 1
        print("ok   - %s" % name, flush=True)
    else:
        failed += 1
        print("FAIL - %s%s" % (name, ": " + detail if detail else ""), flush=True)


def start(mixd, args, prefix=(), env=None):
    e = dict(os.environ)
    e.pop("LISTEN_FDS", None)
    e.pop("LISTEN_PID", None)
    e.pop("NOTIFY_SOCKET", None)
    if env is not None:
        e = env
    t0 = time.monotonic()
    try:
        p = subprocess.run(list(prefix) + [mixd, "--config", os.devnull] + args, capture_output=True,
                           timeout=RUN_LIMIT, stdin=subprocess.DEVNULL, env=e)
    except subprocess.TimeoutExpired:
        return None, "", RUN_LIMIT
    return p.returncode, p.stderr.decode("utf-8", "replace") + p.stdout.decode("utf-8", "replace"), \
        time.monotonic() - t0


def refused(name, rc, out, dt, want):
    check(name, rc not in (None, 0) and want in out and "loading" not in out and "AddressSanitizer" not in out,
          "exit %r after %.1f s (wanted non-zero, %r, no model loaded): %r" % (rc, dt, want, out.strip()[-400:]))


def main(argv):
    if len(argv) != 2:
        print(__doc__)
        return 2
    mixd = os.path.abspath(argv[1])
    tmp = tempfile.mkdtemp(prefix="mixd-startup-")
    os.chmod(tmp, 0o755)
    model = ["--model", MODEL]

    missing = os.path.join(tmp, "no-such-dir", "mixd.sock")
    refused("socket in a missing directory", *start(mixd, model + ["--socket", missing]),
            "the directory %s does not exist" % os.path.dirname(missing))

    busy = os.path.join(tmp, "busy.sock")
    lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lst.bind(busy)
    lst.listen(8)
    refused("socket another daemon listens on", *start(mixd, model + ["--socket", busy]),
            "another daemon is listening there")
    lst.close()
    check("the other daemon's socket is left alone", os.path.exists(busy))

    plain = os.path.join(tmp, "plain.sock")
    with open(plain, "w") as f:
        f.write("not a socket\n")
    refused("a regular file in the way", *start(mixd, model + ["--socket", plain]), "not a socket")
    check("the file in the way is left alone", open(plain).read() == "not a socket\n")
    refused("a directory that is a file", *start(mixd, model + ["--socket", os.path.join(plain, "mixd.sock")]),
            "is not a directory")

    if os.geteuid() == 0:
        as_user = ["setpriv", "--reuid=%d" % NOBODY, "--regid=%d" % NOBODY, "--clear-groups"] \
            if shutil.which("setpriv") else ["runuser", "-u", "nobody", "--"]
        who = "nobody"
    else:
        as_user, who = [], "the caller"
    env = {k: v for k, v in os.environ.items() if k not in ("XDG_RUNTIME_DIR", "LISTEN_FDS", "LISTEN_PID",
                                                            "NOTIFY_SOCKET")}
    if os.geteuid() != 0 or as_user:
        refused("as %s, no --socket and XDG_RUNTIME_DIR unset" % who, *start(mixd, model, prefix=as_user, env=env),
                "XDG_RUNTIME_DIR")
        locked = os.path.join(tmp, "locked")
        os.mkdir(locked, 0o555)
        if os.geteuid() == 0 or not os.access(locked, os.W_OK):
            refused("as %s, a directory without write permission" % who,
                    *start(mixd, model + ["--socket", os.path.join(locked, "mixd.sock")], prefix=as_user, env=env),
                    "no permission to create files in %s" % locked)

    good = os.path.join(tmp, "good.sock")
    rc, out, dt = start(mixd, ["--model", os.path.join(tmp, "missing.gguf"), "--socket", good])
    check("good socket, missing model: the model error", rc not in (None, 0) and "cannot load model" in out
          and not os.path.exists(good), "exit %r: %r" % (rc, out.strip()[-400:]))

    shutil.rmtree(tmp, ignore_errors=True)
    print("%d passed, %d failed" % (passed, failed))
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
