#!/usr/bin/python3
"""check_tokenize_cli.py -- `mixctl tokenize` against the SentencePiece vectors.

Owns: for each line {"text", "ids", "pieces"} of
FIXTURES_DIR/mistral-v1-tokenizer-vectors.jsonl (made by the real
SentencePiece library with Mistral's v1 tokenizer.model; ids carry no BOS):
  * MIXCTL tokenize -m FIXTURES_DIR/tiny-moe-shakespeare/tiny-moe-f16.gguf --no-bos
    with the text as stdin (UTF-8 bytes, verbatim) must print a JSON array
    equal to "ids";
  * the same without --no-bos must print [1] + ids (BOS first).
One unit per vector (both checks).

Usage:
  /usr/bin/python3 tests/python/check_tokenize_cli.py MIXCTL FIXTURES_DIR [--timeout SEC] [-v]
Prints a line per failing vector (every vector with -v) and a final line
"N passed, M failed"; exits 1 on any failure.  Missing fixtures: failure when
CI=true, else a loud skip.
"""

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from checker_common import MixctlError, check_binary, require_files, flush  # noqa: E402

BOS = 1


def tokenize(mixctl, model, data, no_bos, timeout):
    """Run mixctl tokenize with `data` (bytes) on stdin; return the parsed id list."""
    cmd = [mixctl, "tokenize", "-m", model] + (["--no-bos"] if no_bos else [])
    try:
        p = subprocess.run(cmd, input=data, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           timeout=timeout)
    except subprocess.TimeoutExpired:
        raise MixctlError("timed out after %ss: %s" % (timeout, " ".join(cmd)))
    except OSError as e:
        raise MixctlError("cannot execute %s: %s" % (mixctl, e))
    if p.returncode != 0:
        err = p.stderr.decode("utf-8", "replace").strip().splitlines()
        how = ("killed by signal %d" % -p.returncode) if p.returncode < 0 else \
              ("exit status %d" % p.returncode)
        raise MixctlError("%s: %s; stderr: %s" % (" ".join(cmd), how,
                                                  " | ".join(err[-5:]) or "(none)"))
    out = p.stdout.decode("utf-8", "replace").strip()
    try:
        ids = json.loads(out)
    except ValueError:
        raise MixctlError("stdout is not a JSON array: %r" % out[:200])
    if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool)
                                            for i in ids):
        raise MixctlError("stdout is not a JSON array of integers: %r" % out[:200])
    return ids


def first_diff(a, b):
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def describe(got, want, pieces):
    i = first_diff(got, want)
    ctx = slice(max(0, i - 2), i + 3)
    s = "first difference at index %d: got %s, want %s" % (i, got[ctx], want[ctx])
    if pieces is not None and i < len(pieces):
        s += " (expected piece %r)" % pieces[i]
    return s + "; got %d ids, want %d" % (len(got), len(want))


def main(argv):
    ap = argparse.ArgumentParser(description="Check mixctl tokenize against the tokenizer vectors.")
    ap.add_argument("mixctl", help="path of the mixctl binary")
    ap.add_argument("fixtures", help="fixtures directory")
    ap.add_argument("--timeout", type=float, default=120, help="seconds per mixctl run")
    ap.add_argument("-v", "--verbose", action="store_true", help="a line per vector")
    a = ap.parse_args(argv)

    vectors = os.path.join(a.fixtures, "mistral-v1-tokenizer-vectors.jsonl")
    model = os.path.join(a.fixtures, "tiny-moe-shakespeare", "tiny-moe-f16.gguf")
    rc = require_files([vectors, model])
    if rc is not None:
        return rc
    cases = []
    with open(vectors, "rb") as f:
        for ln, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            d = json.loads(raw.decode("utf-8"))
            cases.append((ln, d["text"], [int(i) for i in d["ids"]], d.get("pieces")))

    try:
        check_binary(a.mixctl)
    except MixctlError as e:
        print("ERROR: %s" % e)
        print("0 passed, %d failed" % len(cases))
        return 1

    passed = failed = 0
    for ln, text, want, pieces in cases:
        data = text.encode("utf-8")
        label = "line %d %s" % (ln, json.dumps(text, ensure_ascii=False)[:60])
        problems = []
        try:
            got = tokenize(a.mixctl, model, data, True, a.timeout)
            if got != want:
                problems.append("--no-bos: " + describe(got, want, pieces))
        except MixctlError as e:
            problems.append("--no-bos: ERROR: %s" % e)
        try:
            got = tokenize(a.mixctl, model, data, False, a.timeout)
            if got != [BOS] + want:
                problems.append("with BOS: " + describe(got, [BOS] + want,
                                                        None if pieces is None else ["<s>"] + pieces))
        except MixctlError as e:
            problems.append("with BOS: ERROR: %s" % e)
        if problems:
            failed += 1
            print("FAIL %s" % label)
            for p in problems:
                print("     %s" % p)
        else:
            passed += 1
            if a.verbose:
                print("ok   %s -> %d ids" % (label, len(want)))
        flush()
    print("%d passed, %d failed" % (passed, failed))
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
