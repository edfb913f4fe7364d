#!/usr/bin/python3
"""check_golden.py -- logits acceptance checker for the C engine (mixctl).

Owns: applying the agreement rule of the tiny-moe-shakespeare fixture README
to `mixctl logits` output, for the golden files
  f16    -> golden/lc-f16-public.npz     with tiny-moe-f16.gguf
  q8_0   -> golden/lc-q8_0-public.npz    with tiny-moe-q8_0.gguf
  q4_k_m -> golden/lc-q4_k_m-public.npz  with tiny-moe-q4_k_m.gguf
  q4_0, q5_k_m, q3_k_m, q2_k -> golden/lc-<q>-public.npz with tiny-moe-<q>.gguf
  long   -> golden/torch-long-public.npz with tiny-moe-f16.gguf (reference
            oracle only; the sliding window is active)

Usage:
  /usr/bin/python3 tests/python/check_golden.py MIXCTL FIXTURES_DIR [f16 q8_0 q4_k_m q4_0 ... long]
        [--timeout SEC] [--extra ARG ...] [-v]
(default: all eight).  For every prompt i it runs
  MIXCTL logits -m MODEL --tokens <tok_i comma-joined> --all
which must print one JSON line {"pos":P,"logits":[n_vocab floats]} per
position, then applies the rule (pooled over all prompts of a file):

  tol = 2e-2 * scale.  A position agrees when the engine is within tol of
  EITHER oracle (prefix "" = llama.cpp, "r" = reference):
    * every position: the oracle's top-16 logits (its topid/topval),
      scale = max |value| of those 16;
    * stored positions (pos_i): all n_vocab logits (lg_i),
      scale = max |logit| of that oracle's row.
  Top-1: at positions where at least one oracle's top1-top2 gap exceeds its
  (top-16) tolerance, the engine's argmax must equal the top-1 of such an
  oracle (one whose gap exceeds its tolerance).
  Required: >= 95% of positions, >= 90% of stored positions, top-1 >= 98%.

Prints the figures per file and a final line "N passed, M failed" (one unit
per file); exits 1 on any failure.
"""

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import numpy as np  # noqa: E402
from checker_common import MixctlError, check_binary, require_files, run_mixctl, flush, parse_logits  # noqa: E402

REL_TOL = 2e-2
NEED_POS = 0.95
NEED_STORED = 0.90
NEED_TOP1 = 0.98

FILES = {
    "f16": ("lc-f16-public.npz", "tiny-moe-f16.gguf", ("", "r")),
    "q8_0": ("lc-q8_0-public.npz", "tiny-moe-q8_0.gguf", ("", "r")),
    "q4_k_m": ("lc-q4_k_m-public.npz", "tiny-moe-q4_k_m.gguf", ("", "r")),
    "q4_0": ("lc-q4_0-public.npz", "tiny-moe-q4_0.gguf", ("", "r")),
    "q5_k_m": ("lc-q5_k_m-public.npz", "tiny-moe-q5_k_m.gguf", ("", "r")),
    "q3_k_m": ("lc-q3_k_m-public.npz", "tiny-moe-q3_k_m.gguf", ("", "r")),
    "q2_k": ("lc-q2_k-public.npz", "tiny-moe-q2_k.gguf", ("", "r")),
    "long": ("torch-long-public.npz", "tiny-moe-f16.gguf", ("r",)),
}


def prompt_indices(z):
    idx = []
    i = 0
    while "tok_%d" % i in z.files:
        idx.append(i)
        i += 1
    return idx


class Tally(object):
    """Pooled counts for one golden file."""

    def __init__(self, prefixes):
        self.pos_ok = self.pos_n = 0
        self.st_ok = self.st_n = 0
        self.t1_ok = self.t1_n = 0
        self.per = {P: dict(pos_ok=0, st_ok=0, maxdiff16=0.0, maxdiff_full=0.0)
                    for P in prefixes}


def score_prompt(E, z, i, prefixes, tally, verbose):
    """Apply the agreement rule to engine logits E [T, V] of prompt i."""
    T = E.shape[0]
    pos = np.asarray(z["pos_%d" % i], dtype=np.int64)
    any16 = np.zeros(T, dtype=bool)
    anyfull = np.zeros(len(pos), dtype=bool)
    decisive_any = np.zeros(T, dtype=bool)
    top1_match = np.zeros(T, dtype=bool)
    e_top1 = np.argmax(E, axis=1)
    for P in prefixes:
        tid = np.asarray(z["%stopid_%d" % (P, i)], dtype=np.int64)       # [T, 16]
        tv = np.asarray(z["%stopval_%d" % (P, i)], dtype=np.float64)     # [T, 16]
        scale = np.max(np.abs(tv), axis=1)
        tol = REL_TOL * scale
        d16 = np.max(np.abs(np.take_along_axis(E, tid, axis=1) - tv), axis=1)
        ok16 = d16 <= tol                                                 # NaN -> False
        any16 |= ok16
        # full rows at the stored positions
        lg = np.asarray(z["%slg_%d" % (P, i)], dtype=np.float64)         # [S, V]
        tolf = REL_TOL * np.max(np.abs(lg), axis=1)
        dfull = np.max(np.abs(E[pos] - lg), axis=1)
        okf = dfull <= tolf
        anyfull |= okf
        # top-1 where this oracle is decisive
        gap = np.asarray(z["%sgap_%d" % (P, i)], dtype=np.float64)
        top1 = np.asarray(z["%stop1_%d" % (P, i)], dtype=np.int64)
        dec = gap > tol
        decisive_any |= dec
        top1_match |= dec & (e_top1 == top1)
        st = tally.per[P]
        st["pos_ok"] += int(ok16.sum())
        st["st_ok"] += int(okf.sum())
        st["maxdiff16"] = max(st["maxdiff16"], float(np.nanmax(d16)) if np.isfinite(d16).any() else np.inf)
        st["maxdiff_full"] = max(st["maxdiff_full"], float(np.nanmax(dfull)) if np.isfinite(dfull).any() else np.inf)
        if verbose:
            bad = np.flatnonzero(~ok16)
            print("    prompt %d oracle %-2s: top16 ok %d/%d (first bad pos %s), stored ok %d/%d, "
                  "max|diff| top16 %.4g full %.4g"
                  % (i, P or '""', ok16.sum(), T, bad[:5].tolist(), okf.sum(), len(pos),
                     np.nanmax(d16), np.nanmax(dfull)))
    tally.pos_ok += int(any16.sum())
    tally.pos_n += T
    tally.st_ok += int(anyfull.sum())
    tally.st_n += len(pos)
    tally.t1_ok += int(top1_match[decisive_any].sum())
    tally.t1_n += int(decisive_any.sum())


def pct(a, b):
    return 100.0 * a / b if b else 100.0


def check_file(key, mixctl, fixtures, timeout, extra, verbose):
    npz_name, model_name, prefixes = FILES[key]
    base = os.path.join(fixtures, "tiny-moe-shakespeare")
    npz = os.path.join(base, "golden", npz_name)
    model = os.path.join(base, model_name)
    z = np.load(npz)
    tally = Tally(prefixes)
    n_vocab = z["%slg_0" % prefixes[0]].shape[1]
    for i in prompt_indices(z):
        toks = [int(t) for t in z["tok_%d" % i]]
        args = ["logits", "-m", model, "--tokens", ",".join(map(str, toks)), "--all"] + extra
        out = run_mixctl(mixctl, args, timeout)
        E = parse_logits(out, len(toks), n_vocab)
        score_prompt(E, z, i, prefixes, tally, verbose)

    ok_pos = tally.pos_ok >= NEED_POS * tally.pos_n
    ok_st = tally.st_ok >= NEED_STORED * tally.st_n
    ok_t1 = tally.t1_ok >= NEED_TOP1 * tally.t1_n
    print("  positions agreeing (top-16, either oracle): %d/%d = %.1f%% (need >= %.0f%%) %s"
          % (tally.pos_ok, tally.pos_n, pct(tally.pos_ok, tally.pos_n), 100 * NEED_POS,
             "ok" if ok_pos else "FAIL"))
    print("  stored positions agreeing (all logits):     %d/%d = %.1f%% (need >= %.0f%%) %s"
          % (tally.st_ok, tally.st_n, pct(tally.st_ok, tally.st_n), 100 * NEED_STORED,
             "ok" if ok_st else "FAIL"))
    print("  top-1 at decisive positions:                %d/%d = %.1f%% (need >= %.0f%%) %s"
          % (tally.t1_ok, tally.t1_n, pct(tally.t1_ok, tally.t1_n), 100 * NEED_TOP1,
             "ok" if ok_t1 else "FAIL"))
    for P in prefixes:
        st = tally.per[P]
        print("  vs %-9s: top-16 ok %d/%d, stored ok %d/%d, max|diff| top-16 %.4g, full %.4g"
              % ("llama.cpp" if P == "" else "reference", st["pos_ok"], tally.pos_n,
                 st["st_ok"], tally.st_n, st["maxdiff16"], st["maxdiff_full"]))
    return ok_pos and ok_st and ok_t1


def main(argv):
    ap = argparse.ArgumentParser(description="Check mixctl logits against the golden files.")
    ap.add_argument("mixctl", help="path of the mixctl binary")
    ap.add_argument("fixtures", help="fixtures directory (holds tiny-moe-shakespeare/)")
    ap.add_argument("files", nargs="*",
                    help="which golden files: %s (default: all)" % " ".join(FILES))
    ap.add_argument("--timeout", type=float, default=600, help="seconds per mixctl run")
    ap.add_argument("--extra", action="append", default=[],
                    help="extra argument appended to each mixctl command (repeatable)")
    ap.add_argument("-v", "--verbose", action="store_true", help="per-prompt figures")
    a = ap.parse_args(argv)
    files = a.files or list(FILES)
    for k in files:
        if k not in FILES:
            ap.error("unknown golden file %r (choose from %s)" % (k, ", ".join(sorted(FILES))))

    base = os.path.join(a.fixtures, "tiny-moe-shakespeare")
    need = []
    for k in files:
        need += [os.path.join(base, "golden", FILES[k][0]), os.path.join(base, FILES[k][1])]
    rc = require_files(need)
    if rc is not None:
        return rc

    passed = failed = 0
    try:
        check_binary(a.mixctl)
    except MixctlError as e:
        print("ERROR: %s" % e)
        print("0 passed, %d failed" % len(files))
        return 1
    for k in files:
        print("%s (%s, model %s):" % (k, FILES[k][0], FILES[k][1]))
        flush()
        try:
            ok = check_file(k, a.mixctl, a.fixtures, a.timeout, a.extra, a.verbose)
        except MixctlError as e:
            print("  ERROR: %s" % e)
            ok = False
        print("  => %s" % ("PASS" if ok else "FAIL"))
        flush()
        passed += ok
        failed += not ok
    print("%d passed, %d failed" % (passed, failed))
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
