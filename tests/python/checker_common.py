"""checker_common.py -- helpers shared by the mixctl acceptance checkers.

Owns: running the mixctl binary robustly (clear messages when it is missing,
crashes, times out or prints something unexpected) and the fixture-missing
policy (CI=true -> failure, otherwise a loud skip).
Used by check_golden.py, check_greedy.py and check_ppl.py in this folder.
"""

import json
import os
import subprocess
import sys

import numpy


class MixctlError(Exception):
    """mixctl could not be run or did not succeed."""


def check_binary(path):
    """Raise MixctlError unless `path` is an executable file."""
    if not os.path.exists(path):
        raise MixctlError("mixctl binary not found: %s" % path)
    if not os.path.isfile(path) or not os.access(path, os.X_OK):
        raise MixctlError("mixctl is not an executable file: %s" % path)


def run_mixctl(mixctl, args, timeout):
    """Run mixctl with `args`; return stdout as bytes.

    Raises MixctlError with the command line, exit status and the tail of
    stderr when the process cannot start, times out or exits non-zero.
    """
    cmd = [mixctl] + list(args)
    shown = " ".join(_quote(c) for c in cmd)
    if len(shown) > 300:
        shown = shown[:300] + " ..."
    try:
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           stdin=subprocess.DEVNULL, timeout=timeout)
    except FileNotFoundError:
        raise MixctlError("cannot execute %s (not found)" % mixctl)
    except PermissionError:
        raise MixctlError("cannot execute %s (permission denied)" % mixctl)
    except OSError as e:
        raise MixctlError("cannot execute %s: %s" % (mixctl, e))
    except subprocess.TimeoutExpired:
        raise MixctlError("timed out after %ss: %s" % (timeout, shown))
    if p.returncode != 0:
        err = p.stderr.decode("utf-8", "replace").strip().splitlines()
        tail = "\n    ".join(err[-10:]) if err else "(no stderr)"
        how = ("killed by signal %d" % -p.returncode) if p.returncode < 0 else \
              ("exit status %d" % p.returncode)
        raise MixctlError("%s: %s\n  stderr:\n    %s" % (shown, how, tail))
    return p.stdout


def _quote(s):
    if s and all(c.isalnum() or c in "-_./,=:+" for c in s):
        return s
    return "'" + s.replace("'", "'\\''") + "'"


def require_files(paths):
    """Check fixture files exist. Returns None if all do; otherwise prints the
    policy message and returns the exit code the checker should use."""
    missing = [p for p in paths if not os.path.exists(p)]
    if not missing:
        return None
    for p in missing:
        print("missing fixture: %s" % p)
    if os.environ.get("CI") == "true":
        print("FAIL: fixtures missing (CI=true)")
        print("0 passed, %d failed" % len(missing))
        return 1
    print("SKIP (loud): fixtures missing; nothing was checked")
    print("0 passed, 0 failed")
    return 0


def flush():
    sys.stdout.flush()


def parse_logits(out, n_pos, n_vocab):
    """Parse mixctl's JSON lines into an array [n_pos, n_vocab] (float64).

    Lines not starting with '{' are ignored (so stray log lines on stdout do
    not break parsing); every position 0..n_pos-1 must appear exactly once.
    """
    E = numpy.full((n_pos, n_vocab), numpy.nan)
    seen = set()
    for ln, line in enumerate(out.decode("utf-8", "replace").splitlines(), 1):
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            d = json.loads(line)
            p = int(d["pos"])
            lg = d["logits"]
        except (ValueError, KeyError, TypeError) as e:
            raise MixctlError("stdout line %d is not {\"pos\":P,\"logits\":[...]}: %s (%s)"
                              % (ln, line[:80], e))
        if not 0 <= p < n_pos:
            raise MixctlError("stdout line %d: pos %d out of range 0..%d" % (ln, p, n_pos - 1))
        if p in seen:
            raise MixctlError("stdout: pos %d printed twice" % p)
        if len(lg) != n_vocab:
            raise MixctlError("stdout pos %d: %d logits, expected %d" % (p, len(lg), n_vocab))
        seen.add(p)
        E[p] = numpy.asarray(lg, dtype=numpy.float64)
    if len(seen) != n_pos:
        missing = sorted(set(range(n_pos)) - seen)
        raise MixctlError("stdout has %d of %d positions (missing e.g. %s)"
                          % (len(seen), n_pos, missing[:5]))
    return E
