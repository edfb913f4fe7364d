#!/usr/bin/python3
"""check_greedy.py -- greedy-generation acceptance checker for mixctl.

Owns: for each line {"prompt", "n", "text", "ids"} of
tiny-moe-shakespeare/golden/greedy-public.jsonl, running
  MIXCTL generate -m tiny-moe-f16.gguf -n N --temp 0 "PROMPT"
and comparing its stdout byte for byte with "text" (UTF-8; the prompt is not
echoed).  Only the F16 file is used: quantized files legitimately diverge.

Usage:
  /usr/bin/python3 tests/python/check_greedy.py MIXCTL FIXTURES_DIR [--timeout SEC]
        [--extra ARG ...] [--allow-trailing-newline]
--allow-trailing-newline accepts stdout = text + "\\n" (off by default: the
comparison is exact).  Prints a line per prompt and "N passed, M failed";
exits 1 on any failure.
"""

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from checker_common import MixctlError, check_binary, require_files, run_mixctl, flush  # noqa: E402


def first_diff(a, b):
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def main(argv):
    ap = argparse.ArgumentParser(description="Check mixctl greedy generation against the golden texts.")
    ap.add_argument("mixctl")
    ap.add_argument("fixtures")
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--extra", action="append", default=[],
                    help="extra argument inserted before the prompt (repeatable)")
    ap.add_argument("--allow-trailing-newline", action="store_true")
    a = ap.parse_args(argv)

    base = os.path.join(a.fixtures, "tiny-moe-shakespeare")
    jl = os.path.join(base, "golden", "greedy-public.jsonl")
    model = os.path.join(base, "tiny-moe-f16.gguf")
    rc = require_files([jl, model])
    if rc is not None:
        return rc
    cases = [json.loads(l) for l in open(jl, encoding="utf-8") if l.strip()]

    try:
        check_binary(a.mixctl)
    except MixctlError as e:
        print("ERROR: %s" % e)
        print("0 passed, %d failed" % len(cases))
        return 1

    passed = failed = 0
    for c in cases:
        want = c["text"].encode("utf-8")
        label = "%r (n=%d)" % (c["prompt"], c["n"])
        try:
            got = run_mixctl(a.mixctl, ["generate", "-m", model, "-n", str(c["n"]),
                                        "--temp", "0"] + a.extra + [c["prompt"]], a.timeout)
        except MixctlError as e:
            print("FAIL %s\n  ERROR: %s" % (label, e))
            failed += 1
            flush()
            continue
        if a.allow_trailing_newline and got == want + b"\n":
            got = want
        if got == want:
            print("ok   %s: %d bytes identical" % (label, len(want)))
            passed += 1
        else:
            i = first_diff(got, want)
            print("FAIL %s: output differs at byte %d (got %d bytes, want %d)"
                  % (label, i, len(got), len(want)))
            print("  want: %r" % want[max(0, i - 20):i + 40])
            print("  got : %r" % got[max(0, i - 20):i + 40])
            if got == want + b"\n":
                print("  (only difference: a trailing newline; see --allow-trailing-newline)")
            failed += 1
        flush()
    print("%d passed, %d failed" % (passed, failed))
    return 0 if failed == 0 and passed > 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
