#!/usr/bin/env python3
"""tests/daemon/rss_soak.py — the RSS soak of check 4 of test_daemon.py on its own.

usage: rss_soak.py MIXD MIXCTL [--cycles N] [--rss-workers W] [--rss-limit PERCENT]
(MIXD/MIXCTL: an optimized build, e.g. build/rel)

Runs N (default 1000) kill cycles — connect, generate 64 tokens, read one, close — from W
(default 4) concurrent clients against a fresh daemon, samples its VmRSS (idle) after a
100-cycle warm-up and after each tenth of the rest, and fails when the median of the last
three samples exceeds that of the first three by more than PERCENT (default 2). With 4
clients a sample swings by about 1.5% (the heap's high-water mark follows the generations in
flight); with one client RSS is flat to the KiB, so `make test` runs
`--cycles 600 --rss-workers 1 --rss-limit 0.5`. A sanitizer build is refused: its allocator
quarantine makes RSS meaningless.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_daemon  # noqa: E402

if __name__ == "__main__":
    args = sys.argv[1:]
    if len(args) < 2:
        sys.exit(__doc__)
    with open(args[0], "rb") as f:
        if b"__asan_init" in f.read():
            sys.exit("rss_soak.py: %s is a sanitizer build; use the optimized one (make MODE=rel)" % args[0])
    sys.exit(test_daemon.main(args + ["--only", "4"]))
