#!/usr/bin/python3
"""check_ppl.py -- perplexity acceptance checker for mixctl.

Owns: for each model file (f16, q8_0, q4_k_m; default all three), running
  MIXCTL perplexity -m tiny-moe-<q>.gguf -f ppl-text-public.txt --ctx 64
parsing the LAST non-empty stdout line, which must be `ppl <value>`, and
comparing it with "<q>_ctx64" (llama-perplexity's value) of golden/ppl-public.json
(f16, q8_0, q4_k_m) or golden/ppl-extra-public.json (q4_0, q5_k_m, q3_k_m, q2_k):
pass when |value - ref| <= 0.3% of ref.

Usage:
  /usr/bin/python3 tests/python/check_ppl.py MIXCTL FIXTURES_DIR [f16 q8_0 q4_k_m q4_0 q5_k_m q3_k_m q2_k]
        [--timeout SEC] [--extra ARG ...]
Prints a line per file and "N passed, M failed"; exits 1 on any failure.
"""

import argparse
import json
import math
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from checker_common import MixctlError, check_binary, require_files, run_mixctl, flush  # noqa: E402

REL_TOL = 0.003
CTX = 64
MODELS = ("f16", "q8_0", "q4_k_m", "q4_0", "q5_k_m", "q3_k_m", "q2_k")
EXTRA = ("q4_0", "q5_k_m", "q3_k_m", "q2_k")  # their values are in ppl-extra-public.json


def parse_ppl(out):
    lines = [l.strip() for l in out.decode("utf-8", "replace").splitlines() if l.strip()]
    if not lines:
        raise MixctlError("no output on stdout")
    parts = lines[-1].split()
    if len(parts) != 2 or parts[0] != "ppl":
        raise MixctlError("last stdout line is not `ppl <value>`: %r" % lines[-1][:100])
    try:
        v = float(parts[1])
    except ValueError:
        raise MixctlError("cannot parse perplexity value in %r" % lines[-1])
    if not math.isfinite(v):
        raise MixctlError("perplexity is not finite: %r" % lines[-1])
    return v


def main(argv):
    ap = argparse.ArgumentParser(description="Check mixctl perplexity against llama-perplexity's values.")
    ap.add_argument("mixctl")
    ap.add_argument("fixtures")
    ap.add_argument("models", nargs="*", help=" ".join(MODELS) + " (default: all)")
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--extra", action="append", default=[],
                    help="extra argument appended to each mixctl command (repeatable)")
    a = ap.parse_args(argv)
    models = a.models or list(MODELS)
    for q in models:
        if q not in MODELS:
            ap.error("unknown model %r (choose from %s)" % (q, ", ".join(MODELS)))

    base = os.path.join(a.fixtures, "tiny-moe-shakespeare")
    ref_paths = [os.path.join(base, "golden", "ppl-public.json")]
    if any(q in EXTRA for q in models):
        ref_paths.append(os.path.join(base, "golden", "ppl-extra-public.json"))
    text = os.path.join(base, "ppl-text-public.txt")
    files = {q: os.path.join(base, "tiny-moe-%s.gguf" % q) for q in models}
    rc = require_files(ref_paths + [text] + list(files.values()))
    if rc is not None:
        return rc
    refs = {}
    for path in ref_paths:
        refs.update(json.load(open(path)))

    try:
        check_binary(a.mixctl)
    except MixctlError as e:
        print("ERROR: %s" % e)
        print("0 passed, %d failed" % len(models))
        return 1

    passed = failed = 0
    for q in models:
        key = "%s_ctx%d" % (q, CTX)
        ref = float(refs[key])
        try:
            out = run_mixctl(a.mixctl, ["perplexity", "-m", files[q], "-f", text,
                                        "--ctx", str(CTX)] + a.extra, a.timeout)
            v = parse_ppl(out)
        except MixctlError as e:
            print("FAIL %-6s ERROR: %s" % (q, e))
            failed += 1
            flush()
            continue
        rel = abs(v - ref) / ref
        ok = rel <= REL_TOL
        print("%s %-6s ppl %.6f vs llama.cpp %.6f: rel diff %.4f%% (limit %.1f%%)"
              % ("ok  " if ok else "FAIL", q, v, ref, 100 * rel, 100 * REL_TOL))
        passed += ok
        failed += not ok
        flush()
    print("%d passed, %d failed" % (passed, failed))
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
