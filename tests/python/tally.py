"""tally.py -- the pass/fail count of a scripted test suite.

Owns: printing one line per check ("ok   - NAME" or "FAIL - NAME: DETAIL") and the
suite's last line, "N passed, M failed", which tests/run.sh shows; the exit status
is 0 only when nothing failed. One suite per process, so the count is module state.
"""

passed = 0
failed = 0


def check(name, ok, detail=""):
    """Count and print one check; returns ok, so a suite can stop on what it needs."""
    global passed, failed
    if ok:
        passed += 1
        print("ok   - %s" % name, flush=True)
    else:
        failed += 1
        print("FAIL - %s%s" % (name, ": " + detail if detail else ""), flush=True)
    return ok


def summary():
    """Print the last line; return the exit status."""
    print("%d passed, %d failed" % (passed, failed), flush=True)
    return 0 if failed == 0 else 1
