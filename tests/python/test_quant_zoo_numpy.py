#!/usr/bin/python3
"""test_quant_zoo_numpy.py -- bit-exactness test of tools/gguf_py.py's dequantizers.

Owns: checking that, for every type T in quant-zoo.gguf, dequantizing tensor
`zoo.T` with gguf_py gives exactly the bits of `zoo.T.f32` (ggml's own C
dequantization).

Usage: /usr/bin/python3 tests/python/test_quant_zoo_numpy.py FIXTURES_DIR
Prints one line per type and a final "N passed, M failed"; exits 1 on any
mismatch.  A missing fixture is a failure when CI=true, else a loud skip.
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tools"))

import numpy as np  # noqa: E402
import gguf_py  # noqa: E402


def main(argv):
    if len(argv) != 2:
        print("usage: %s FIXTURES_DIR" % argv[0], file=sys.stderr)
        return 2
    path = os.path.join(argv[1], "quant-zoo.gguf")
    if not os.path.exists(path):
        msg = "quant-zoo.gguf not found in %s" % argv[1]
        if os.environ.get("CI") == "true":
            print("FAIL: " + msg)
            print("0 passed, 1 failed")
            return 1
        print("SKIP (loud): " + msg)
        print("0 passed, 0 failed")
        return 0

    r = gguf_py.GGUFReader(path)
    passed = failed = 0
    names = [t.name for t in r.tensors if t.name.startswith("zoo.") and not t.name.endswith(".f32")]
    for name in names:
        tname = name[len("zoo."):]
        try:
            got = r.dequantize(name)
            ref = r.dequantize(name + ".f32")
            gb = got.view(np.uint32)
            rb = ref.view(np.uint32)
            nbad = int(np.count_nonzero(gb != rb))
            if got.shape != ref.shape:
                raise ValueError("shape %s vs %s" % (got.shape, ref.shape))
        except Exception as e:  # report and count as failure
            print("FAIL %-5s error: %s" % (tname, e))
            failed += 1
            continue
        if nbad == 0:
            print("ok   %-5s %s bit-identical (%d values)" % (tname, got.shape, got.size))
            passed += 1
        else:
            i = int(np.flatnonzero(gb.ravel() != rb.ravel())[0])
            print("FAIL %-5s %d of %d values differ; first at %d: got %r want %r"
                  % (tname, nbad, got.size, i, float(got.ravel()[i]), float(ref.ravel()[i])))
            failed += 1
    print("%d passed, %d failed" % (passed, failed))
    return 0 if failed == 0 and passed > 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
