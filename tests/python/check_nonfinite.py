#!/usr/bin/python3
"""tests/python/check_nonfinite.py — non-finite weights give a clear error, never garbage
and never invalid JSON. Copies of the repository's default model with one scale patched:
- a NaN block scale in blk.0.attn_q.weight (Q4_K) or an infinite one in output.weight
  (Q6_K): tensors every token reads whole, checked at load, so mixctl and mixd refuse the
  file and name the tensor;
- a NaN scale in the first block of every expert's gate of layer 0 (not read at load): the
  logits of the first token are NaN, so in-process generate and logits, and through mixd
  generate (--json --logprobs) and score (--json), fail with "non-finite logits"; whatever
  they print on stdout is valid JSON without NaN or Infinity.

usage: check_nonfinite.py MIXD MIXCTL   (run from anywhere; prints `N passed, M failed`)"""

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests", "python"))
import tally  # noqa: E402
from tally import check  # noqa: E402
sys.path.insert(0, os.path.join(ROOT, "tools"))
import gguf_py  # noqa: E402

MODEL = os.path.join(ROOT, "models", "tiny-moe-q4_k_m.gguf")
NAN16, INF16 = 0x7E00, 0x7C00
SANITIZER_MARKS = ("ERROR: AddressSanitizer", "runtime error:", "LeakSanitizer", "WARNING: ThreadSanitizer")



def patched(path, patches):
    """A copy of MODEL at path with fp16 values written at (tensor, byte offset in it)."""
    r = gguf_py.GGUFReader(MODEL)
    spots = [(r.data_offset + r.tensor(name).offset + off, value) for name, off, value in patches]
    r.close()
    data = bytearray(open(MODEL, "rb").read())
    for pos, value in spots:
        data[pos:pos + 2] = struct.pack("<H", value)
    with open(path, "wb") as f:
        f.write(data)
    return path


def strict_json_lines(text):
    """True if every line of text is JSON without NaN/Infinity (which Python would accept)."""
    def refuse(c):
        raise ValueError("non-JSON constant " + c)
    try:
        for line in text.splitlines():
            json.loads(line, parse_constant=refuse)
        return True
    except ValueError:
        return False


class Ran:
    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def run(args, timeout=60):
    """The command's exit status and output; one still running after timeout seconds is
    killed and reported as exit None (a check then fails instead of the script)."""
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = p.communicate(timeout=timeout)
        return Ran(p.returncode, out, err)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        return Ran(None, out, err + "(killed after %d s)" % timeout)


def main():
    mixd, mixctl = sys.argv[1], sys.argv[2]
    tmp = tempfile.mkdtemp(prefix="mixd-nonfinite-")
    r = gguf_py.GGUFReader(MODEL)
    gate = r.tensor("blk.0.ffn_gate_exps.weight")
    ne = gate.ne  # [cols, rows, experts]
    expert_bytes = gguf_py.row_nbytes(ne[0], gate.type) * ne[1]
    r.close()
    q6k_d = 128 + 64 + 16  # BlockQ6_K: ql, qh, scales, then d
    at_load = [("blk.0.attn_q.weight", "NaN", [("blk.0.attn_q.weight", 0, NAN16)]),
               ("output.weight", "+inf", [("output.weight", 5 * 210 + q6k_d, INF16)])]
    experts = patched(os.path.join(tmp, "experts.gguf"),
                      [("blk.0.ffn_gate_exps.weight", e * expert_bytes, NAN16) for e in range(ne[2])])

    p = run([mixctl, "generate", "-m", MODEL, "-n", "3", "--temp", "0", "ROMEO:"])
    check("control: the unpatched model generates", p.returncode == 0 and p.stdout != "", "exit %s" % p.returncode)

    for tensor, what, patches in at_load:
        path = patched(os.path.join(tmp, "load.gguf"), patches)
        p = run([mixctl, "generate", "-m", path, "-n", "3", "--temp", "0", "ROMEO:"])
        check("a %s scale in %s: mixctl refuses the file at load, naming the tensor" % (what, tensor),
              p.returncode == 1 and tensor in p.stderr and "non-finite" in p.stderr and p.stdout == "",
              "exit %s: %s" % (p.returncode, p.stderr.strip()[-160:]))
    sock = os.path.join(tmp, "mixd.sock")
    p = run([mixd, "--model", path, "--socket", sock], timeout=20)
    check("a +inf scale in output.weight: mixd refuses to start, naming the tensor",
          p.returncode == 1 and "output.weight" in p.stdout + p.stderr and not os.path.exists(sock),
          "exit %s" % p.returncode)

    # experts: not read at load; the first token's logits are NaN
    p = run([mixctl, "generate", "-m", experts, "-n", "5", "--temp", "0", "ROMEO:"])
    check("NaN expert scales: in-process generate fails with a clear error",
          p.returncode == 1 and "non-finite logits" in p.stderr and p.stdout == "",
          "exit %s, stdout %r: %s" % (p.returncode, p.stdout[:40], p.stderr.strip()[-160:]))
    p = run([mixctl, "logits", "-m", experts, "--tokens", "1,4205,16334"])
    check("NaN expert scales: logits fails, prints no nan",
          p.returncode == 1 and "non-finite logits" in p.stderr and strict_json_lines(p.stdout)
          and "nan" not in p.stdout, "exit %s, stdout %r" % (p.returncode, p.stdout[:60]))

    log = open(os.path.join(tmp, "mixd.log"), "w+")
    d = subprocess.Popen([mixd, "--model", experts, "--socket", sock, "--threads", "2"], stdout=log,
                         stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and d.poll() is None:
            try:
                s = socket.socket(socket.AF_UNIX)
                s.connect(sock)
                s.close()
                break
            except OSError:
                time.sleep(0.05)
        p = run([mixctl, "generate", "--socket", sock, "--json", "--logprobs", "-n", "5", "--temp", "0", "ROMEO:"])
        check("NaN expert scales through mixd: generate --json --logprobs fails clearly, valid JSON",
              p.returncode == 1 and "non-finite logits" in p.stdout + p.stderr and strict_json_lines(p.stdout),
              "exit %s, stdout %r, stderr %r" % (p.returncode, p.stdout[-120:], p.stderr.strip()[-120:]))
        p = run([mixctl, "score", "--socket", sock, "ROMEO: What light"])
        check("NaN expert scales through mixd: score fails clearly, prints no nan",
              p.returncode == 1 and "non-finite logits" in p.stderr and strict_json_lines(p.stdout)
              and "nan" not in p.stdout, "exit %s, stdout %r" % (p.returncode, p.stdout[:80]))
        p = run([mixctl, "status", "--socket", sock])
        check("mixd still serves after those errors", p.returncode == 0, "exit %s" % p.returncode)
    finally:
        d.send_signal(signal.SIGTERM)
        rc = d.wait(timeout=60)
        log.seek(0)
        text = log.read()
    check("mixd stops cleanly", rc == 0 and not any(k in text for k in SANITIZER_MARKS), "exit %d" % rc)
    return tally.summary()


if __name__ == "__main__":
    sys.exit(main())
