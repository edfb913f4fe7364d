#!/usr/bin/python3
"""tools/bench/bench.py -- the driver behind `make bench` (see docs/BENCH.md).

Measures, in one run, on this machine:
  * memory read bandwidth, 1 thread and the engine's threads, best of several ways of reading
    (tools/bench/membw.c): the ceiling no decode run may exceed (checked; the run fails if one
    does);
  * OpenBLAS sgemm GFLOP/s, M=N=K=2048, all threads (tools/bench/sgemm.c);
  * per bench model: in-process prefill pp512, decode tg128 and the per-token prefill
    baseline (`mixctl bench`), bytes read per decoded token from the GGUF tensor table,
    the bandwidth roofline and the prefill GFLOP/s;
  * through the daemon (first bench model): aggregate decode tokens/s with 1, 2, 4 and 8
    concurrent sessions, peak RssAnon, KV bytes, time from exec to ready;
  * with --llama-bench: llama.cpp's llama-bench on the same files and thread count, rounds
    alternating with mixd's, and the ratios (pp512, tg128 after 512 and 4096 positions);
    with --llama-quantize the bench files are an F16 random model quantized by llama.cpp.

Bench models are random-weight GGUF files with real Mixtral 8x7B matrix shapes and 2 layers
(tools/gen_random_gguf.py), cached outside the repository in $XDG_CACHE_HOME/mixd-bench
(else ~/.cache/mixd-bench), one file per set of generator parameters.

Prints one JSON object on stdout and a short table on stderr; both are also written to
<bench-bin>/bench.json and <bench-bin>/bench.txt.
"""

import argparse
import hashlib
import json
import os
import platform
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TOOLS = os.path.dirname(HERE)
ROOT = os.path.dirname(TOOLS)
sys.path.insert(0, TOOLS)

import gguf_py as g  # noqa: E402

# Bumped when the meaning of the generator parameters changes (invalidates cached models).
MODEL_FORMAT = 1
CONCURRENCY = (1, 2, 4, 8)
# Default in-process time budget: MODEL_BUDGET_TOTAL seconds shared by the (model, numeric
# path) runs, at most MODEL_BUDGET_MAX each (2 models x 2 paths: 260 s each).
MODEL_BUDGET_TOTAL = 1040
MODEL_BUDGET_MAX = 260

T0 = time.monotonic()


def log(msg):
    sys.stderr.write("[bench %6.1fs] %s\n" % (time.monotonic() - T0, msg))
    sys.stderr.flush()


def rel(path):
    """A path as shown in the report: relative to the repository when inside it, ~ for home."""
    ap = os.path.abspath(path)
    if ap.startswith(ROOT + os.sep):
        return os.path.relpath(ap, ROOT)
    home = os.path.expanduser("~")
    if home not in ("", "/") and ap.startswith(home + os.sep):
        return "~" + ap[len(home):]
    return ap


def run_json(cmd, what, timeout=None):
    """Run a command whose last stdout line is a JSON object; stderr passes through."""
    log("%s: %s" % (what, " ".join(rel(c) if os.sep in c else c for c in cmd)))
    p = subprocess.run(cmd, stdout=subprocess.PIPE, timeout=timeout)
    if p.returncode == 130 or p.returncode == -signal.SIGINT:
        raise KeyboardInterrupt
    lines = [l for l in p.stdout.decode().splitlines() if l.strip()]
    if p.returncode != 0 or not lines:
        raise RuntimeError("%s failed (exit %d)" % (what, p.returncode))
    return json.loads(lines[-1])


# ----------------------------------------------------------------------------- machine

def machine_info():
    info = {"cpu_model": platform.processor() or "unknown"}
    flags = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                k, _, v = line.partition(":")
                k = k.strip()
                if k == "model name" and info["cpu_model"] in ("unknown", "x86_64", ""):
                    info["cpu_model"] = v.strip()
                elif k == "flags" and not flags:
                    flags = set(v.split())
    except OSError:
        pass
    info["online_cpus"] = info["threads"] = os.sysconf("SC_NPROCESSORS_ONLN")
    info["usable_cpus"] = len(os.sched_getaffinity(0))
    info["avx_flags"] = sorted(f for f in flags if f.startswith("avx") or f in ("fma", "f16c"))
    info["simd_best"] = ("avx512" if "avx512f" in flags else "avx2" if "avx2" in flags
                         else "avx" if "avx" in flags else "sse")
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    info["mem_total_gib"] = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    info["kernel"] = platform.release()
    return info


def loadavg():
    return [round(x, 2) for x in os.getloadavg()]


def git_describe():
    try:
        head = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL).stdout.decode().strip()
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL).stdout.decode().strip()
        return head + ("-dirty" if dirty else "") if head else None
    except OSError:
        return None


# ----------------------------------------------------------------------------- models

def use_more_bits(i_layer, n_layer):
    """llama.cpp's rule (llama-quant.cpp) for the layers a _M k-quant mix gives more bits."""
    return (i_layer < n_layer // 8 or i_layer >= 7 * n_layer // 8
            or (i_layer - n_layer // 8) % 3 == 2)


def bench_model_specs(n_layer):
    """name -> generator arguments (without the output path)."""
    base = ["--preset", "mixtral-8x7b", "--n-layer", str(n_layer), "--seed", "0"]
    more = [i for i in range(n_layer) if use_more_bits(i, n_layer)]
    layers = "|".join(str(i) for i in more)
    # Q4_K_M as llama.cpp mixes it: Q4_K, with Q6_K for output.weight and, in the
    # use_more_bits layers, attn_v and ffn_down (llama_ftype 15 = MOSTLY_Q4_K_M)
    q4km = base + ["--type", "q4_k", "--type-output", "q6_k", "--file-type", "15",
                   "--name", "mixd-bench-q4_k_m"]
    if more:
        q4km += ["--tensor-type", r"^blk\.(%s)\.attn_v\.=q6_k" % layers,
                 "--tensor-type", r"^blk\.(%s)\.ffn_down=q6_k" % layers]
    q80 = base + ["--type", "q8_0", "--name", "mixd-bench-q8_0"]
    return {"q4_k_m": q4km, "q8_0": q80}


def cache_dir(override):
    if override:
        return override
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "mixd-bench")


def expected_size(args):
    """Bytes of tensor data the generator will write for these arguments."""
    import gen_random_gguf as gen
    a = gen.parse_args(["unused.gguf"] + args)
    return sum(g.tensor_nbytes(ne, t) for _, ne, t, _ in gen.tensor_plan(a))


def ensure_model(name, args, cdir):
    """Path of the cached model for these generator arguments, generating it if absent."""
    key = hashlib.sha256(json.dumps([MODEL_FORMAT] + args).encode()).hexdigest()[:12]
    path = os.path.join(cdir, "mixtral-8x7b-shapes-%s-%s.gguf" % (name, key))
    if os.path.exists(path):
        try:
            g.GGUFReader(path)
            log("%s: reusing %s" % (name, rel(path)))
            return path, False
        except (ValueError, OSError) as e:
            log("%s: cached file unreadable (%s); generating again" % (name, e))
            os.unlink(path)
    os.makedirs(cdir, exist_ok=True)
    total = expected_size(args)
    free = shutil.disk_usage(cdir).free
    if free < total + (256 << 20):
        raise SystemExit("bench: %s needs %.1f GiB in %s, %.1f GiB free"
                         % (name, total / 2**30, rel(cdir), free / 2**30))
    tmp = "%s.tmp-%d" % (path, os.getpid())
    cmd = [sys.executable, os.path.join(TOOLS, "gen_random_gguf.py"), tmp] + args
    log("%s: generating %.2f GiB (once; cached in %s)" % (name, total / 2**30, rel(cdir)))
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    tty = sys.stderr.isatty()
    shown = -1
    try:
        while p.poll() is None:
            time.sleep(1.0)
            try:
                done = os.path.getsize(tmp)
            except OSError:
                done = 0
            el = time.monotonic() - t0
            frac = min(done / total, 1.0) if total else 0
            eta = el / frac - el if frac > 0.02 else float("nan")
            msg = "generating %s: %5.1f%% (%d/%d MiB), %.0f s elapsed, ~%.0f s left" % (
                name, 100 * frac, done >> 20, total >> 20, el, eta)
            if tty:  # one line, rewritten in place
                sys.stderr.write("\r[bench] " + msg + "\033[K")
                sys.stderr.flush()
            elif int(frac * 10) > shown:  # a line per 10% in a log
                shown = int(frac * 10)
                log(msg)
        if tty:
            sys.stderr.write("\n")
        if p.returncode != 0:
            raise SystemExit("bench: generating %s failed (exit %d)" % (name, p.returncode))
        os.rename(tmp, path)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        if os.path.exists(tmp):
            os.unlink(tmp)
    log("%s: generated in %.0f s" % (name, time.monotonic() - t0))
    return path, True


# llama.cpp quantizations the side-by-side mode makes with --llama-quantize (llama-quantize's
# type names); the first is also the daemon's model, as q4_k_m is in the default set.
LLAMA_QUANT_TYPES = ("Q4_K_M", "Q4_0", "Q5_K_M", "Q8_0", "Q3_K_M")


def f16_model_spec(n_layer):
    """Generator arguments of the F16 random model that llama-quantize starts from."""
    return ["--preset", "mixtral-8x7b", "--n-layer", str(n_layer), "--seed", "0", "--type", "f16",
            "--name", "mixd-bench-f16"]


def file_identity(path):
    """sha256 of a file's contents (hex, first 16 digits)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def tool_identity(path):
    """What identifies a llama.cpp tool build: the executable's contents and, for a build with
    shared libraries, name, size and mtime of the libraries next to it."""
    path = os.path.realpath(path)
    ident = {"path": rel(path), "sha256": file_identity(path)}
    libs = []
    d = os.path.dirname(path)
    for n in sorted(os.listdir(d)):
        if n.startswith("lib") and ".so" in n:
            st = os.stat(os.path.join(d, n))
            libs.append([n, st.st_size, int(st.st_mtime)])
    if libs:
        ident["libs"] = libs
    return ident


def ensure_quantized(qbin, cdir, n_layer, threads, qtypes=LLAMA_QUANT_TYPES):
    """name -> (path, made, info) of the F16 bench model quantized by llama-quantize into each
    of qtypes (LLAMA_QUANT_TYPES); cached like the generated models, keyed on the F16 model's
    generator arguments, the type and the quantizer's identity."""
    src_args = f16_model_spec(n_layer)
    src, _ = ensure_model("f16", src_args, cdir)
    ident = tool_identity(qbin)
    out = {}
    for qtype in qtypes:
        name = qtype.lower()
        key_ident = {k: v for k, v in ident.items() if k != "path"}  # the contents, wherever the binary is
        key = hashlib.sha256(json.dumps([MODEL_FORMAT, src_args, qtype, key_ident]).encode()).hexdigest()[:12]
        path = os.path.join(cdir, "mixtral-8x7b-shapes-llama-%s-%s.gguf" % (name, key))
        info = {"quantizer": ident, "quant_type": qtype, "source_gen_args": src_args}
        if os.path.exists(path):
            try:
                g.GGUFReader(path)
                log("%s: reusing %s" % (name, rel(path)))
                out[name] = (path, False, info)
                continue
            except (ValueError, OSError) as e:
                log("%s: cached file unreadable (%s); quantizing again" % (name, e))
                os.unlink(path)
        free = shutil.disk_usage(cdir).free
        if free < os.path.getsize(src) + (256 << 20):  # no quantization is larger than F16
            raise SystemExit("bench: quantizing %s needs up to %.1f GiB in %s, %.1f GiB free"
                             % (name, os.path.getsize(src) / 2**30, rel(cdir), free / 2**30))
        tmp = "%s.tmp-%d" % (path, os.getpid())
        cmd = [qbin, src, tmp, qtype, str(threads)]
        log("%s: llama-quantize %s -> %s (once; cached)" % (name, rel(src), rel(path)))
        t0 = time.monotonic()
        try:
            p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            if p.returncode == 130 or p.returncode == -signal.SIGINT:
                raise KeyboardInterrupt
            if p.returncode != 0:
                tail = "\n  ".join(p.stdout.decode(errors="replace").splitlines()[-15:])
                raise SystemExit("bench: llama-quantize %s failed (exit %d):\n  %s" % (qtype, p.returncode, tail))
            g.GGUFReader(tmp)
            os.rename(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        log("%s: quantized in %.0f s" % (name, time.monotonic() - t0))
        out[name] = (path, True, info)
    return out


# ----------------------------------------------------------------------------- bytes per token

def model_traffic(path, pp, tg, kv_elem_bytes=4.0):
    """Bytes one decoded token reads, and the weights one prefill token multiplies by,
    from the GGUF tensor table. kv_elem_bytes: bytes of one cached key or value element
    (4: F32, as mixd keeps them; 2: F16, llama.cpp's default)."""
    r = g.GGUFReader(path)
    arch = r.get("general.architecture", "llama")
    n_layer = int(r.get(arch + ".block_count"))
    n_embd = int(r.get(arch + ".embedding_length"))
    n_head = int(r.get(arch + ".attention.head_count"))
    n_head_kv = int(r.get(arch + ".attention.head_count_kv", n_head))
    n_expert = int(r.get(arch + ".expert_count", 0))
    k = int(r.get(arch + ".expert_used_count", 0))
    kv_dim = n_embd // n_head * n_head_kv
    window = int(r.get(arch + ".attention.sliding_window", 0) or 0)
    frac = (k / n_expert) if n_expert else 1.0

    parts = {"attention": 0, "router": 0, "experts": 0, "output_head": 0, "embedding_row": 0, "norms": 0}
    elems = {"attention": 0, "router": 0, "experts": 0, "output_head": 0}
    types = {}
    file_tensor_bytes = 0
    have_output = "output.weight" in r
    for t in r.tensors:
        nm, nb, ne = t.name, t.nbytes, t.n_elements
        file_tensor_bytes += nb
        types[g.type_name(t.type)] = types.get(g.type_name(t.type), 0) + 1
        if nm == "token_embd.weight":
            parts["embedding_row"] += g.row_nbytes(t.ne[0], t.type)
            if not have_output:  # tied: the embedding is the output head
                parts["output_head"] += nb
                elems["output_head"] += ne
        elif nm == "output.weight":
            parts["output_head"] += nb
            elems["output_head"] += ne
        elif nm.endswith("norm.weight"):
            parts["norms"] += nb
        elif ".attn_" in nm:
            parts["attention"] += nb
            elems["attention"] += ne
        elif ".ffn_gate_inp." in nm:
            parts["router"] += nb
            elems["router"] += ne
        elif ".ffn_" in nm:  # merged *_exps, per-expert .E, or a dense FFN
            parts["experts"] += nb * frac
            elems["experts"] += ne * frac
    # keys/values a decode token reads, averaged over the tg tokens (at most the window)
    avg_positions = sum(min(pp + i + 1, window or pp + tg) for i in range(tg)) / float(tg) if tg else pp
    kv = n_layer * avg_positions * kv_dim * kv_elem_bytes * 2
    weights = sum(parts.values())
    return {
        "n_layer": n_layer, "n_expert": n_expert, "n_expert_used": k, "kv_dim": kv_dim, "sliding_window": window,
        "tensor_types": types,
        "file_tensor_bytes": file_tensor_bytes,
        "bytes_per_token": int(weights + kv),
        "bytes_per_token_weights": int(weights),
        "bytes_per_token_kv": int(kv),
        "kv_bytes_per_pos": int(n_layer * kv_dim * kv_elem_bytes * 2),
        "kv_avg_positions": avg_positions,
        "kv_elem_bytes": kv_elem_bytes,
        "bytes_per_token_parts": {k2: int(v) for k2, v in parts.items()},
        # multiply-adds per prefill token: every matrix a token goes through; the output
        # head runs once per chunk (logits of the last token only), so it is amortized
        "prefill_weights_per_token": int(elems["attention"] + elems["router"] + elems["experts"]
                                         + elems["output_head"] / pp),
    }


# ----------------------------------------------------------------------------- daemon

class Client(object):
    """A minimal mixd protocol client: 4-byte big-endian length + one msgpack map."""

    def __init__(self, path, timeout=600):
        import msgpack
        self.msgpack = msgpack
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.buf = b""
        self.next_id = 1

    def send(self, op, **fields):
        rid = self.next_id
        self.next_id += 1
        body = self.msgpack.packb(dict(id=rid, op=op, **fields), use_bin_type=True)
        self.sock.sendall(struct.pack(">I", len(body)) + body)
        return rid

    def recv(self):
        while True:
            if len(self.buf) >= 4:
                n = struct.unpack(">I", self.buf[:4])[0]
                if len(self.buf) >= 4 + n:
                    body, self.buf = self.buf[4:4 + n], self.buf[4 + n:]
                    return self.msgpack.unpackb(body, raw=False)
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError("daemon closed the connection")
            self.buf += chunk

    def call(self, op, **fields):
        rid = self.send(op, **fields)
        while True:
            m = self.recv()
            if m.get("id") != rid:
                continue
            if "error" in m:
                raise RuntimeError("%s: %s" % (op, m["error"]))
            return m

    def close(self):
        self.sock.close()


class RssSampler(object):
    """Samples RssAnon (and RssFile) of a process every `period` seconds; tracks peaks."""

    def __init__(self, pid, period=0.1):
        self.pid, self.period = pid, period
        self.peak_anon = self.peak_file = 0
        self.window_anon = 0
        self.stop = threading.Event()
        self.t = threading.Thread(target=self.loop, daemon=True)
        self.t.start()

    def sample(self):
        anon = fil = None
        try:
            with open("/proc/%d/status" % self.pid) as f:
                for line in f:
                    if line.startswith("RssAnon:"):
                        anon = int(line.split()[1]) * 1024
                    elif line.startswith("RssFile:"):
                        fil = int(line.split()[1]) * 1024
        except OSError:
            return
        if anon is not None:
            self.peak_anon = max(self.peak_anon, anon)
            self.window_anon = max(self.window_anon, anon)
        if fil is not None:
            self.peak_file = max(self.peak_file, fil)

    def loop(self):
        while not self.stop.is_set():
            self.sample()
            self.stop.wait(self.period)

    def take_window(self):
        """Peak RssAnon since the last call."""
        self.sample()
        w, self.window_anon = self.window_anon, 0
        return w

    def close(self):
        self.stop.set()
        self.t.join()


class Daemon(object):
    def __init__(self, mixd, model, sock, extra):
        self.sock = sock
        self.ready_log_ms = None
        self.log_lines = []
        cmd = [mixd, "--model", model, "--socket", sock] + extra
        self.t_exec = time.monotonic()
        self.p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE)
        self.reader = threading.Thread(target=self.read_log, daemon=True)
        self.reader.start()

    def read_log(self):
        for raw in self.p.stderr:
            line = raw.decode(errors="replace").rstrip("\n")
            self.log_lines.append(line)
            if "ready in " in line and self.ready_log_ms is None:
                try:
                    self.ready_log_ms = float(line.split("ready in ", 1)[1].split()[0])
                except (IndexError, ValueError):
                    pass

    def wait_ready(self, timeout=300):
        """Seconds from exec until the socket accepts a connection."""
        while time.monotonic() - self.t_exec < timeout:
            if self.p.poll() is not None:
                raise SystemExit("bench: mixd exited (%d) before ready:\n%s"
                                 % (self.p.returncode, "\n".join(self.log_lines[-10:])))
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(self.sock)
                dt = time.monotonic() - self.t_exec
                s.close()
                return dt
            except OSError:
                s.close()
                time.sleep(0.002)
        raise SystemExit("bench: mixd not ready after %d s" % timeout)

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.reader.join(timeout=5)


def concurrency_level(sock, n, n_predict, limit_s):
    """n clients, each with its own session, generate n_predict tokens greedily at once.
    Requests still running limit_s seconds after the start are cancelled (their `done`
    event then counts the tokens generated so far)."""
    try:
        clients = [Client(sock) for _ in range(n)]
    except OSError as e:
        raise RuntimeError("connecting %d clients: %s" % (n, e))
    sessions, kv_bytes = [], 0
    try:
        for c in clients:
            c.call("hello", version=1)
            o = c.call("session.open")
            sessions.append(o["session"])
            kv_bytes += int(o.get("kv_bytes", 0))
    except (OSError, ConnectionError) as e:
        raise RuntimeError("hello / session.open: %s" % e)
    results = [None] * n
    rids = [None] * n
    barrier = threading.Barrier(n + 1)
    words = ["quick", "brown", "sly", "red", "grey", "small", "old", "young"]

    def worker(i):
        c = clients[i]
        prompt = "Tale %d: the %s fox" % (i + 1, words[i % 8])  # ~11 tokens, different for each client
        barrier.wait()
        t_first = None
        tokens = 0
        try:
            rid = rids[i] = c.send("generate", prompt=prompt, session=sessions[i], n_predict=n_predict,
                                   temperature=0.0, seed=1234 + i)
            while True:
                m = c.recv()
                if m.get("id") != rid:
                    continue
                if "error" in m:
                    results[i] = {"error": m["error"]}
                    return
                if m.get("event") == "token":
                    tokens += 1
                    if t_first is None:
                        t_first = time.monotonic()
                elif m.get("event") == "done":
                    results[i] = {"t_end": time.monotonic(), "t_first": t_first, "tokens": tokens,
                                  "n_generated": int(m.get("n_generated", tokens)),
                                  "n_prompt": int(m.get("n_prompt", 0)), "stop_reason": m.get("stop_reason"),
                                  "prompt_ms": m.get("prompt_ms"), "generate_ms": m.get("generate_ms")}
                    return
        except (OSError, ConnectionError) as e:
            results[i] = {"error": "client %d after %d tokens: %s" % (i, tokens, e)}

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.monotonic()
    cancelled = 0
    for t in threads:
        t.join(max(0.0, t0 + limit_s - time.monotonic()) if limit_s else None)
        if t.is_alive():
            break
    if any(t.is_alive() for t in threads):  # past the level's limit: cancel what still runs
        for j, c in enumerate(clients):
            if results[j] is None and rids[j] is not None:
                try:
                    c.send("cancel", target=rids[j])
                    cancelled += 1
                except OSError:
                    pass
    for t in threads:
        t.join(300)
    try:
        status = clients[0].call("status")
    except (OSError, ConnectionError, RuntimeError) as e:
        status = {"error": str(e)}
    for c, sid in zip(clients, sessions):
        try:
            c.call("session.close", session=sid)
        except (RuntimeError, OSError):
            pass
        c.close()
    bad = [r for r in results if not r or "error" in r]
    if bad:
        raise RuntimeError("daemon generate failed: %r" % bad[:2])
    t_end = max(r["t_end"] for r in results)
    total = sum(r["n_generated"] for r in results)
    wall = t_end - t0
    gen_ms = max(r["generate_ms"] or 0 for r in results)
    return {
        "sessions": n, "tokens_per_session": n_predict, "generated": total, "wall_s": round(wall, 3),
        "aggregate_tok_s": round(total / wall, 3),
        "per_session_tok_s": round(total / wall / n, 3),
        "first_token_s_max": round(max((r["t_first"] or r["t_end"]) - t0 for r in results), 3),
        "prompt_tokens": [r["n_prompt"] for r in results],
        "generated_per_session": [r["n_generated"] for r in results],
        "stop_reasons": sorted(set(r["stop_reason"] for r in results)),
        "cancelled_at_limit": cancelled,
        "decode_only_tok_s": round(total / (gen_ms / 1000.0), 3) if gen_ms else None,
        "kv_bytes_sessions": kv_bytes,
        "status_kv_bytes_used": int(status.get("kv_bytes_used", 0)),
        "status_error": status.get("error"),
        "status_tokens_per_s": status.get("tokens_per_s"),
    }


# Expected cost of a level relative to one session's run, used only to size the run to the
# budget (1 = perfect batching, N = none); a level still running after three times its
# share of the remaining budget (at least 60 s) is cancelled.
LEVEL_WEIGHT = {1: 1.0, 2: 1.5, 4: 2.5, 8: 4.5}
CALIBRATION_TOKENS = 8


def daemon_bench(mixd, model, traffic, budget_s, extra):
    out = {"model": rel(model), "mixd_args": extra}
    tmpdir = tempfile.mkdtemp(prefix="mixd-bench-")
    sock = os.path.join(tmpdir, "mixd.sock")
    d = rss = None
    try:
        ready = []
        for run in range(2):
            d = Daemon(mixd, model, sock, extra)
            dt = d.wait_ready()
            ready.append({"socket_s": round(dt, 4), "log_ms": d.ready_log_ms})
            log("mixd start %d: socket accepting %.3f s after exec (log: ready in %s ms)"
                % (run + 1, dt, d.ready_log_ms))
            if run == 0:
                d.stop()
                d = None
        out["ready_first"] = ready[0]
        out["ready_s"] = ready[1]["socket_s"]
        out["ready_log_ms"] = ready[1]["log_ms"]
        rss = RssSampler(d.p.pid)
        c = Client(sock)
        hello = c.call("hello", version=1)
        st = c.call("status")
        c.close()
        out["server"] = hello.get("server")
        out["threads"] = st.get("threads")
        out["rss_anon_idle_bytes"] = rss.take_window()

        # calibration (also the warm-up: the daemon's first pass over the mapped weights):
        # one session, a few tokens; its rate sizes the levels to the budget
        log("daemon: calibration, 1 session x %d tokens" % CALIBRATION_TOKENS)
        cal = concurrency_level(sock, 1, CALIBRATION_TOKENS, 0)
        out["calibration"] = {"tokens": cal["generated"], "wall_s": cal["wall_s"], "tok_s": cal["aggregate_tok_s"]}
        n_predict = 64
        weights = sum(LEVEL_WEIGHT[n] for n in CONCURRENCY)
        if budget_s and cal["aggregate_tok_s"] > 0:
            est = 64 / cal["aggregate_tok_s"] * weights
            if est > budget_s:
                n_predict = max(8, int(64 * budget_s / est))
        out["tokens_per_session"] = n_predict
        levels = {}
        t_start = time.monotonic()
        for idx, n in enumerate(CONCURRENCY):
            limit = 0
            if budget_s:
                left = max(budget_s - (time.monotonic() - t_start), 0)
                share = LEVEL_WEIGHT[n] / sum(LEVEL_WEIGHT[m] for m in CONCURRENCY[idx:])
                limit = max(3 * left * share, 60)
            log("daemon: %d concurrent session(s) x %d tokens%s"
                % (n, n_predict, " (cancelled after %.0f s)" % limit if limit else ""))
            try:
                lv = concurrency_level(sock, n, n_predict, limit)
            except RuntimeError as e:  # once more on fresh connections, then give up
                log("daemon: the %d-session level failed (%s); once more" % (n, e))
                lv = concurrency_level(sock, n, n_predict, limit)
                lv["retried_after"] = str(e)
            lv["rss_anon_peak_bytes"] = rss.take_window()
            # KV memory the level's sessions actually wrote: prompt + generated positions
            win = traffic["sliding_window"]
            positions = sum(min(p + g2, win) if win else p + g2
                            for p, g2 in zip(lv["prompt_tokens"], lv["generated_per_session"]))
            lv["kv_bytes_written"] = int(positions * traffic["kv_bytes_per_pos"])
            levels[str(n)] = lv
            log("daemon: %d session(s): %.2f tok/s aggregate (%d tokens in %.1f s), RssAnon peak %.0f MiB"
                % (n, lv["aggregate_tok_s"], lv["generated"], lv["wall_s"], lv["rss_anon_peak_bytes"] / 2**20))
        rss.close()
        out["levels"] = levels
        out["aggregate_tok_s"] = {k: v["aggregate_tok_s"] for k, v in levels.items()}
        first, last = levels[str(CONCURRENCY[0])]["aggregate_tok_s"], levels[str(CONCURRENCY[-1])]["aggregate_tok_s"]
        out["scaling_8_over_1"] = round(last / first, 3) if first else None
        out["rss_anon_peak_bytes"] = rss.peak_anon
        out["rss_file_peak_bytes"] = rss.peak_file
        out["kv_bytes_reserved_max"] = max(v["kv_bytes_sessions"] for v in levels.values())
        out["kv_bytes_written_max"] = max(v["kv_bytes_written"] for v in levels.values())
        out["rss_anon_minus_kv_written_bytes"] = out["rss_anon_peak_bytes"] - out["kv_bytes_written_max"]
    except BaseException:
        if rss is not None:
            rss.close()
        if d is not None:
            d.stop()
            log("mixd exit status %s; last log lines:\n  %s" % (d.p.returncode, "\n  ".join(d.log_lines[-15:])))
            d = None
        raise
    finally:
        if d is not None:
            d.stop()
        shutil.rmtree(tmpdir, ignore_errors=True)
    return out


# ----------------------------------------------------------------------------- the probe as a ceiling

PROBE_KEYS = ("threads", "plain", "kernel", "buffer_mib", "passes", "extra_passes", "finalists", "huge_page_bytes",
              "elapsed_s", "thread_counts")


def probe_summary(runs):
    """The probe's figures from one or more membw runs of the same variants: each variant's best
    pass over all of them (more passes can only bring the ceiling nearer the truth)."""
    first = runs[0]
    nc = len(first["thread_counts"])
    variants = []
    for i, v in enumerate(first["variants"]):
        variants.append(dict(v, gbs=[max(r["variants"][i]["gbs"][c] for r in runs) for c in range(nc)]))
    out = {k: first[k] for k in PROBE_KEYS}

    def best(c):
        return max(variants, key=lambda v: v["gbs"][c])
    plain = next(v for v in variants if v["name"] == first["plain"])
    out.update({"1_thread": best(0)["gbs"][0], "best_1_thread": best(0)["name"],
                "all_threads": best(nc - 1)["gbs"][nc - 1], "best_all_threads": best(nc - 1)["name"],
                "plain_1_thread": plain["gbs"][0], "plain_all_threads": plain["gbs"][nc - 1],
                "probe_runs": len(runs), "all_threads_per_run": [r["all_threads"] for r in runs],
                "variants": variants})
    return out


def recheck(c, probe):
    """A probe_check again against another probe result."""
    c["probe_gbs"] = probe["all_threads"]
    c["ratio"] = round(c["implied_gbs"] / probe["all_threads"], 4)
    c["exceeded"] = c["implied_gbs"] > probe["all_threads"]


def probe_check(label, rates, bytes_per_token, probe):
    """Does any run imply more bytes/s than the bandwidth probe measured? rates: tokens/s of
    each run; bytes_per_token: what one token reads (model_traffic)."""
    top = max(rates)
    gbs = top * bytes_per_token / 1e9
    return {"run": label, "max_run_tok_s": round(top, 4), "bytes_per_token": int(bytes_per_token),
            "implied_gbs": round(gbs, 3), "probe_gbs": probe["all_threads"],
            "ratio": round(gbs / probe["all_threads"], 4), "exceeded": gbs > probe["all_threads"]}


def mixd_kv_elem_bytes(b):
    """Bytes of one cached key/value element in mixd, from `mixctl bench`'s kv_bytes_per_pos
    (keys and values of every layer; else kv_bytes over all slots); 4 (F32) when it cannot be
    told."""
    try:
        kv_dim = b["n_embd"] // b["n_head"] * b["n_head_kv"]
        if b.get("kv_bytes_per_pos"):
            e = float(b["kv_bytes_per_pos"]) / (b["n_layer"] * kv_dim * 2)
        else:
            e = float(b["kv_bytes"]) / (b["kv_slots"] * b["n_layer"] * kv_dim * 2)
        if 0.25 <= e <= 4.0:
            return round(e, 4)
    except (KeyError, TypeError, ZeroDivisionError):
        pass
    return 4.0


def run_tg_rates(b):
    """Decode tokens/s of every run of a `mixctl bench` result."""
    return [b["tg_tokens"] / x for x in b.get("tg_s_runs", []) if x > 0]


# ----------------------------------------------------------------------------- llama.cpp side by side

PEER_PP = 512
PEER_TG = 128
LLAMA_REPS = 3
# bytes of a cached key/value element for llama.cpp's cache types
LLAMA_KV_BYTES = {"f32": 4.0, "f16": 2.0, "bf16": 2.0, "q8_0": 34 / 32.0, "q5_1": 24 / 32.0, "q5_0": 22 / 32.0,
                  "q4_1": 20 / 32.0, "q4_0": 18 / 32.0, "iq4_nl": 18 / 32.0}


def median(v):
    s = sorted(v)
    n = len(s)
    return s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])


def mean_sd(v):
    m = sum(v) / len(v)
    sd = (sum((x - m) ** 2 for x in v) / (len(v) - 1)) ** 0.5 if len(v) > 1 else 0.0
    return m, sd


def run_quiet_json(cmd, what):
    """Run a command that prints JSON on stdout; its stderr is shown only when it fails."""
    log("%s: %s" % (what, " ".join(rel(c) if os.sep in c else c for c in cmd)))
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if p.returncode == 130 or p.returncode == -signal.SIGINT:
        raise KeyboardInterrupt
    if p.returncode != 0:
        tail = p.stderr.decode(errors="replace").splitlines()[-12:]
        raise RuntimeError("%s failed (exit %d): %s" % (what, p.returncode, " | ".join(tail)))
    try:
        return json.loads(p.stdout.decode())
    except ValueError as e:
        raise RuntimeError("%s: output is not JSON (%s)" % (what, e))


def llama_bench_check(lbin):
    """The llama-bench given: runnable, with -d/--n-depth (decode after a filled cache)."""
    if not os.access(lbin, os.X_OK):
        raise SystemExit("bench: --llama-bench %s is not an executable" % lbin)
    p = subprocess.run([lbin, "--help"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    text = p.stdout.decode(errors="replace")
    if "--n-depth" not in text:
        raise SystemExit("bench: %s has no -d/--n-depth option (too old a llama-bench)" % lbin)


def mixd_peer_round(mixctl, name, path, threads, flags, depths, deep_repeat):
    """mixd's figures for one round: test -> {"tok_s", "samples", ...}."""
    res = {}
    base = [mixctl, "bench", "-m", path, "--no-per-token", "--threads", str(threads)] + flags
    tg = PEER_TG if PEER_PP in depths else 0
    b = run_json(base + ["--pp", str(PEER_PP), "--tg", str(tg), "--repeat", str(LLAMA_REPS)],
                 "%s mixd pp%d%s" % (name, PEER_PP, " + tg%d" % tg if tg else ""))
    res["pp%d" % PEER_PP] = {"tok_s": b["pp_tok_s"], "samples": [round(PEER_PP / x, 4) for x in b["pp_s_runs"]]}
    runs = [(PEER_PP, b)] if tg else []
    for d in depths:
        if d == PEER_PP:
            continue
        bd = run_json(base + ["--pp", str(d), "--tg", str(PEER_TG), "--repeat", str(deep_repeat)],
                      "%s mixd tg%d after %d positions" % (name, PEER_TG, d))
        runs.append((d, bd))
    for d, x in runs:
        res["tg%d@d%d" % (PEER_TG, d)] = {"tok_s": x["tg_tok_s"], "samples": [round(r, 4) for r in run_tg_rates(x)],
                                          "kv_elem_bytes": mixd_kv_elem_bytes(x), "dot_kernel": x.get("dot_kernel"),
                                          "int8": x.get("int8"), "threads": x.get("threads")}
    return res


def llama_entry(t):
    samples = [float(v) for v in t.get("samples_ts") or []]
    return {"tok_s": round(median(samples), 4) if samples else float(t["avg_ts"]), "samples": samples,
            "avg_ts": t.get("avg_ts"), "stddev_ts": t.get("stddev_ts"),
            "kv_elem_bytes": LLAMA_KV_BYTES.get(str(t.get("type_k", "f16")).lower(), 2.0),
            "type_k": t.get("type_k"), "type_v": t.get("type_v"), "flash_attn": t.get("flash_attn"),
            "threads": t.get("n_threads"), "n_batch": t.get("n_batch"), "n_ubatch": t.get("n_ubatch"),
            "use_mmap": t.get("use_mmap"), "load_mode": t.get("load_mode")}


def llama_peer_round(lbin, name, path, threads, depths):
    """llama-bench's figures for one round (same tests), and its build description."""
    res, meta = {}, {}
    common = [lbin, "-m", path, "-t", str(threads), "-r", str(LLAMA_REPS), "-o", "json"]
    out = run_quiet_json(common + ["-p", str(PEER_PP), "-n", "0"], "%s llama-bench pp%d" % (name, PEER_PP))
    out += run_quiet_json(common + ["-p", "0", "-n", str(PEER_TG), "-d", ",".join(str(d) for d in depths)],
                          "%s llama-bench tg%d after %s positions" % (name, PEER_TG, "/".join(str(d) for d in depths)))
    for t in out:
        for k in ("build_commit", "build_number", "cpu_info", "backends", "model_type", "model_size"):
            if k in t:
                meta[k] = t[k]
        if int(t.get("n_prompt", 0)) == PEER_PP and int(t.get("n_gen", 0)) == 0:
            res["pp%d" % PEER_PP] = llama_entry(t)
        elif int(t.get("n_prompt", 0)) == 0 and int(t.get("n_gen", 0)) == PEER_TG:
            res["tg%d@d%d" % (PEER_TG, int(t.get("n_depth", 0)))] = llama_entry(t)
    return res, meta


def peer_summary(mx, ll, tol):
    """One test of one model over the rounds: each side's figures, and mixd / llama.cpp."""
    pairs = [(m, l) for m, l in zip(mx, ll) if m and l]
    out = {"mixd_tok_s_rounds": [m["tok_s"] if m else None for m in mx],
           "llama_tok_s_rounds": [l["tok_s"] if l else None for l in ll]}
    if not pairs:
        return out
    mv = [m["tok_s"] for m, _ in pairs]
    lv = [l["tok_s"] for _, l in pairs]
    ratios = [a / b for a, b in zip(mv, lv)]
    mm, msd = mean_sd(mv)
    lm, lsd = mean_sd(lv)
    rm, rsd = mean_sd(ratios)
    out.update({
        "mixd_tok_s_best": round(max(mv), 3), "mixd_tok_s_mean": round(mm, 3), "mixd_tok_s_sd": round(msd, 3),
        "llama_tok_s_best": round(max(lv), 3), "llama_tok_s_mean": round(lm, 3), "llama_tok_s_sd": round(lsd, 3),
        # noise on a shared machine only slows a run down: each side's best round is its figure
        "ratio": round(max(mv) / max(lv), 4),
        "ratio_rounds": [round(r, 4) for r in ratios], "ratio_mean": round(rm, 4), "ratio_sd": round(rsd, 4),
        # rounds more than the tolerance below that side's best: noise, recorded, not counted
        "mixd_off_rounds": [i + 1 for i, x in enumerate(mv) if x < (1 - tol) * max(mv)],
        "llama_off_rounds": [i + 1 for i, x in enumerate(lv) if x < (1 - tol) * max(lv)],
    })
    return out


def peer_bench(a, models, mixctl, threads, flags, probe, checks, notes):
    """mixd and llama-bench in alternation (per model: mixd, then llama-bench), a.peer_rounds rounds;
    then, up to a.peer_max_rounds, more rounds of the models one of whose figures (either side,
    any test) spreads over the rounds by more than a.peer_tolerance."""
    depths = a.peer_depths
    tests = ["pp%d" % PEER_PP] + ["tg%d@d%d" % (PEER_TG, d) for d in depths]
    rounds = {name: {"mixd": [], "llama": []} for name in models}
    errors, meta = {}, {}
    todo = list(models)
    n = 0
    while todo:
        n += 1
        log("side by side: round %d (%s)" % (n, ", ".join(todo)))
        for name in todo:
            path = models[name]["path"]
            try:
                m = mixd_peer_round(mixctl, name, path, threads, flags, depths, a.peer_deep_repeat)
            except RuntimeError as e:
                errors[name] = "mixd: %s" % e
                continue
            try:
                l, lm = llama_peer_round(a.llama_bench, name, path, threads, depths)
            except RuntimeError as e:
                errors[name] = "llama-bench: %s" % e
                continue
            meta.update(lm)
            rounds[name]["mixd"].append(m)
            rounds[name]["llama"].append(l)
            log("side by side: round %d, %s: %s" % (n, name, "; ".join(
                "%s %.2f / %.2f = %.2fx" % (t, m[t]["tok_s"], l[t]["tok_s"], m[t]["tok_s"] / l[t]["tok_s"])
                for t in tests if t in m and t in l and l[t]["tok_s"])))
        todo = [name for name in todo if name not in errors]
        if n < a.peer_rounds:
            continue
        spread = {}
        for name in todo:
            for side in ("mixd", "llama"):
                for t in tests:
                    v = [x[t]["tok_s"] for x in rounds[name][side] if t in x]
                    if len(v) > 1 and min(v) < (1 - a.peer_tolerance) * max(v):
                        spread.setdefault(name, []).append("%s %s" % (side, t))
        todo = [name for name in todo if name in spread]
        if not todo:
            break
        what = "; ".join("%s: %s" % (k, ", ".join(v)) for k, v in spread.items())
        if n >= a.peer_max_rounds:
            notes.append("side by side: still spread by more than %.0f%% after %d rounds (%s): noisy machine"
                         % (100 * a.peer_tolerance, n, what))
            break
        log("side by side: figures spread by more than %.0f%% (%s): one more round"
            % (100 * a.peer_tolerance, what))

    out = {"llama_bench": tool_identity(a.llama_bench), "llama_build": meta, "threads": threads,
           "mixd_flags": flags, "rounds": max(len(r["mixd"]) for r in rounds.values()),
           "tolerance": a.peer_tolerance, "depths": depths,
           "llama_reps": LLAMA_REPS, "mixd_deep_repeat": a.peer_deep_repeat, "models": {}}
    for name, info in models.items():
        r = rounds[name]
        x = {"path": rel(info["path"]), "rounds": len(r["mixd"]), "rounds_mixd": r["mixd"],
             "rounds_llama": r["llama"], "tests": {}}
        if name in errors:
            x["error"] = errors[name]
            notes.append("side by side, %s: %s" % (name, errors[name]))
        for t in tests:
            x["tests"][t] = peer_summary([m.get(t) for m in r["mixd"]], [l.get(t) for l in r["llama"]],
                                         a.peer_tolerance)
        # the probe as a ceiling, for both programs' decode runs
        for d in depths:
            t = "tg%d@d%d" % (PEER_TG, d)
            for side, runs in (("mixd", r["mixd"]), ("llama.cpp", r["llama"])):
                for i, res in enumerate(runs):
                    if t not in res or not res[t]["samples"]:
                        continue
                    tr = model_traffic(info["path"], d, PEER_TG, res[t]["kv_elem_bytes"])
                    c = probe_check("%s %s %s round %d" % (name, side, t, i + 1), res[t]["samples"],
                                    tr["bytes_per_token"], probe)
                    checks.append(c)
                    k = "implied_gbs_max_" + ("mixd" if side == "mixd" else "llama")
                    x["tests"][t][k] = max(x["tests"][t].get(k, 0), c["implied_gbs"])
        out["models"][name] = x
    return out


# ----------------------------------------------------------------------------- report

def fmt_bytes(b):
    return "%.0f MiB" % (b / 2**20) if b < 2**30 else "%.2f GiB" % (b / 2**30)


def table(rep):
    m = rep["machine"]
    bw = rep["bandwidth_gbs"]
    lines = []
    lines.append("mixd bench: %s, %d CPUs (%s), load %s at start / %s at end"
                 % (m["cpu_model"], m["online_cpus"], m["simd_best"],
                    m["loadavg_start"][0], m["loadavg_end"][0]))
    lines.append("memory read, best of %d ways: %.1f GB/s 1 thread (%s), %.1f GB/s %d threads (%s); a plain loop "
                 "%.1f / %.1f" % (len(bw["variants"]), bw["1_thread"], bw["best_1_thread"], bw["all_threads"],
                                  bw["threads"], bw["best_all_threads"], bw["plain_1_thread"], bw["plain_all_threads"]))
    lines.append("OpenBLAS sgemm %.1f GFLOP/s (%d threads)" % (rep["sgemm_gflops"], rep["sgemm"]["threads"]))
    hdr = ("model", "pp512 t/s", "per-tok t/s", "speedup", "tg128 t/s", "MB/token", "roofline t/s", "roofline %",
           "pp GFLOP/s", "vs sgemm")
    rows = []
    for name, x in rep["models"].items():
        if "error" in x:
            rows.append((name, "error") + ("",) * (len(hdr) - 2))
            continue
        rows.append((name, "%.2f" % x["pp512_tok_s"], "%.2f%s" % (x["pp512_per_token_tok_s"],
                                                                   "*" if x["bench"].get("pp_per_token_truncated") else ""),
                     "%.1fx" % x["prefill_speedup"],
                     "%.2f%s" % (x["tg128_tok_s"], "*" if x["bench"].get("tg_truncated") else ""),
                     "%.0f" % (x["bytes_per_token"] / 1e6), "%.1f" % x["roofline_tok_s"],
                     "%.1f%%" % (100 * x["roofline_ratio"]), "%.1f" % x["prefill_gflops"],
                     "%.0f%%" % (100 * x["prefill_gflops_vs_sgemm"])))
    w = [max(len(str(r[i])) for r in [hdr] + rows) for i in range(len(hdr))]
    for r in ([hdr] + rows) if rows else []:  # none under --no-in-process
        lines.append("  ".join(str(c).rjust(w[i]) if i else str(c).ljust(w[i]) for i, c in enumerate(r)).rstrip())
    if any(x.get("bench", {}).get("tg_truncated") or x.get("bench", {}).get("pp_per_token_truncated")
           for x in rep["models"].values()):
        lines.append("  * timed over fewer tokens than the target to fit the time budget (see JSON)")
    pe = rep.get("side_by_side")
    if pe:
        lb = pe["llama_build"]
        lines.append("side by side with llama.cpp (build %s, %d threads, %d rounds alternating; t/s = each side's "
                     "best round, ratio = their quotient; mean +- sd of the per-round ratios):"
                     % (lb.get("build_commit", "?"), pe["threads"], pe["rounds"]))
        hdr = ("model", "test", "mixd t/s", "llama t/s", "mixd/llama", "per round", "rounds (mixd / llama)")
        rows = []
        for name, x in pe["models"].items():
            if "error" in x and not x["rounds_mixd"]:
                rows.append((name, "error") + ("",) * (len(hdr) - 2))
                continue
            for t, y in x["tests"].items():
                if "ratio" not in y:
                    rows.append((name, t, "-", "-", "-", "-", ""))
                    continue
                rr = " ".join("%.1f/%.1f" % (m, l) for m, l in zip(y["mixd_tok_s_rounds"], y["llama_tok_s_rounds"])
                              if m and l)
                off = y["mixd_off_rounds"] + y["llama_off_rounds"]
                rows.append((name, t, "%.2f" % y["mixd_tok_s_best"], "%.2f" % y["llama_tok_s_best"],
                             "%.3f" % y["ratio"], "%.3f+-%.3f" % (y["ratio_mean"], y["ratio_sd"]),
                             rr + (" (noisy)" if off else "")))
        w = [max(len(str(r[i])) for r in [hdr] + rows) for i in range(len(hdr))]
        for r in [hdr] + rows:
            lines.append("  " + "  ".join(str(c).rjust(w[i]) if 1 < i < 6 else str(c).ljust(w[i])
                                          for i, c in enumerate(r)).rstrip())
    pc = rep.get("probe_check")
    if pc:
        bad = [c for c in pc["runs"] if c["exceeded"]]
        top = max(pc["runs"], key=lambda c: c["ratio"]) if pc["runs"] else None
        if top and not bad:
            lines.append("probe check: no run beats the probe (highest: %s at %.1f GB/s, %.0f%% of %.1f GB/s)"
                         % (top["run"], top["implied_gbs"], 100 * top["ratio"], top["probe_gbs"]))
        for c in bad:
            lines.append("FAILED probe check: %s implies %.1f GB/s (%.0f%% of the probe's %.1f GB/s)"
                         % (c["run"], c["implied_gbs"], 100 * c["ratio"], c["probe_gbs"]))
    d = rep.get("daemon")
    if d and "error" in d:
        lines.append("daemon (%s): %s" % (d["model_name"], d["error"]))
    elif d:
        agg = d["aggregate_tok_s"]
        lines.append("daemon (%s, %s threads, %d tokens/session): aggregate tok/s %s; 8/1 = %.2fx"
                     % (d["model_name"] + ("" if d.get("int8") else "+exact"), d["threads"], d["tokens_per_session"],
                        "  ".join("%s: %.2f" % (k, v) for k, v in agg.items()), d["scaling_8_over_1"] or 0))
        lines.append("  peak RssAnon %s (KV reserved %s, KV written %s); ready %.3f s after exec (2nd start)"
                     % (fmt_bytes(d["rss_anon_peak_bytes"]), fmt_bytes(d["kv_bytes_reserved_max"]),
                        fmt_bytes(d["kv_bytes_written_max"]), d["ready_s"]))
    for n in rep["notes"]:
        lines.append("note: " + n)
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main

def parse_depths(text):
    try:
        v = sorted(set(int(x) for x in text.split(",") if x.strip()))
    except ValueError:
        raise argparse.ArgumentTypeError("a comma-separated list of positions, e.g. 512,4096")
    if not v or v[0] < 1:
        raise argparse.ArgumentTypeError("positions must be positive")
    return v


def parse_llama_types(text):
    v = [x.strip().upper() for x in text.split(",") if x.strip()]
    bad = [x for x in v if x not in LLAMA_QUANT_TYPES]
    if not v or bad:
        raise argparse.ArgumentTypeError("a comma-separated list of %s" % ",".join(LLAMA_QUANT_TYPES))
    return list(dict.fromkeys(v))  # in the order given, each once


def main(argv):
    ap = argparse.ArgumentParser(description="mixd benchmark driver (make bench)")
    ap.add_argument("--bin", default=os.path.join(ROOT, "build", "rel"), help="directory of mixctl and mixd")
    ap.add_argument("--bench-bin", default=os.path.join(ROOT, "build", "bench"), help="directory of membw and sgemm")
    ap.add_argument("--model", action="append", default=[], help="bench this GGUF instead of the generated ones")
    ap.add_argument("--cache-dir", help="where generated models live (default $XDG_CACHE_HOME/mixd-bench)")
    ap.add_argument("--n-layer", type=int, default=2, help="layers of the generated models")
    ap.add_argument("--pp", type=int, default=512)
    ap.add_argument("--tg", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=3, help="runs per in-process figure (median)")
    ap.add_argument("--threads", type=int, default=0, help="engine threads (default: online CPUs)")
    ap.add_argument("--model-budget", type=float, default=None,
                    help="seconds of in-process measurement per model and numeric path (decode and the "
                         "per-token baseline stop early past their share; 0 = no limit; default: %d s shared "
                         "by all, at most %d s each)" % (MODEL_BUDGET_TOTAL, MODEL_BUDGET_MAX))
    ap.add_argument("--daemon-budget", type=float, default=240, help="seconds for the daemon levels (0 = no limit)")
    ap.add_argument("--no-daemon", action="store_true")
    ap.add_argument("--no-in-process", action="store_true",
                    help="skip the in-process figures of every model (e.g. to run only the side by side)")
    ap.add_argument("--no-exact", action="store_true", help="skip the exact-path (--exact) in-process runs")
    ap.add_argument("--no-int8", action="store_true",
                    help="measure the exact path only: in-process, side by side and the daemon (exact = 1)")
    ap.add_argument("--membw-mib", type=int, default=4096)
    ap.add_argument("--membw-passes", type=int, default=5, help="passes of each way of reading (best kept)")
    ap.add_argument("--llama-bench", metavar="PATH",
                    help="a llama.cpp llama-bench: run it on the same files, alternating with mixd (make bench "
                         "LLAMA_BENCH=PATH)")
    ap.add_argument("--llama-quantize", metavar="PATH",
                    help="a llama.cpp llama-quantize: the bench files are an F16 random model quantized by it "
                         "into %s (make bench LLAMA_QUANTIZE=PATH)" % ", ".join(LLAMA_QUANT_TYPES))
    ap.add_argument("--llama-types", type=parse_llama_types, default=list(LLAMA_QUANT_TYPES),
                    help="with --llama-quantize: these of its files only (default %s; the first is the "
                         "daemon's model)" % ",".join(LLAMA_QUANT_TYPES))
    ap.add_argument("--peer-rounds", type=int, default=2, help="side by side: rounds (at least 2)")
    ap.add_argument("--peer-max-rounds", type=int, default=4,
                    help="side by side: most rounds, while a side's figures spread by more than the tolerance")
    ap.add_argument("--peer-tolerance", type=float, default=0.10,
                    help="side by side: a round this far below a side's best is noise (default 0.10)")
    ap.add_argument("--peer-depths", type=parse_depths, default=[512, 4096],
                    help="side by side: positions in the cache before the tg%d decode (default 512,4096)" % PEER_TG)
    ap.add_argument("--peer-deep-repeat", type=int, default=1,
                    help="side by side: mixd runs per round of a decode after more than %d positions (each "
                         "prefills them again)" % PEER_PP)
    a = ap.parse_args(argv)
    if a.peer_rounds < 2:
        ap.error("--peer-rounds must be at least 2")
    a.peer_max_rounds = max(a.peer_max_rounds, a.peer_rounds)
    if a.llama_bench:
        a.llama_bench = os.path.abspath(a.llama_bench)
        llama_bench_check(a.llama_bench)
    if a.llama_quantize:
        a.llama_quantize = os.path.abspath(a.llama_quantize)
        if not os.access(a.llama_quantize, os.X_OK):
            raise SystemExit("bench: --llama-quantize %s is not an executable" % a.llama_quantize)
        if a.model:
            raise SystemExit("bench: --llama-quantize makes the bench files; it does not go with --model")

    mixctl = os.path.join(a.bin, "mixctl")
    mixd = os.path.join(a.bin, "mixd")
    for b in (mixctl, mixd, os.path.join(a.bench_bin, "membw"), os.path.join(a.bench_bin, "sgemm")):
        if not os.access(b, os.X_OK):
            raise SystemExit("bench: %s is missing (run `make bench`)" % rel(b))
    # run copies, so that a rebuild during the run cannot mix two versions in one report
    snap = os.path.join(a.bench_bin, "bin")
    os.makedirs(snap, exist_ok=True)
    for b in (mixctl, mixd):
        shutil.copy2(b, os.path.join(snap, os.path.basename(b)))
    mixctl, mixd = os.path.join(snap, "mixctl"), os.path.join(snap, "mixd")

    notes = []
    failed = False
    rep = {"schema": 2, "git": git_describe(), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    rep["machine"] = machine_info()
    rep["machine"]["loadavg_start"] = loadavg()
    if rep["machine"]["loadavg_start"][0] > 0.5:
        notes.append("load average %.2f before measuring: other work shared the CPUs, figures are low and noisy"
                     % rep["machine"]["loadavg_start"][0])
    threads = a.threads or rep["machine"]["online_cpus"]

    # models first (generation is long and noisy), then the quiet measurements
    models = {}
    if a.model:
        for p in a.model:
            name = os.path.splitext(os.path.basename(p))[0]
            models[name] = {"path": p, "generated": False, "gen_args": None}
    elif a.llama_quantize:
        for name, (path, made, info) in ensure_quantized(a.llama_quantize, cache_dir(a.cache_dir), a.n_layer,
                                                         threads, a.llama_types).items():
            models[name] = {"path": path, "generated": made, "gen_args": None, "llama_quantize": info}
    else:
        cdir = cache_dir(a.cache_dir)
        for name, args in bench_model_specs(a.n_layer).items():
            path, made = ensure_model(name, args, cdir)
            models[name] = {"path": path, "generated": made, "gen_args": args}

    # the bandwidth probe, with as many threads as the engine runs: the ceiling of every decode
    membw_cmd = [os.path.join(a.bench_bin, "membw"), "--mib", str(a.membw_mib), "--passes", str(a.membw_passes),
                 "--threads", str(threads)]
    membw_runs = [run_json(membw_cmd, "memory bandwidth (every way of reading)")]
    membw = rep["bandwidth_gbs"] = probe_summary(membw_runs)
    log("memory read: %.1f GB/s 1 thread (%s), %.1f GB/s %d threads (%s)"
        % (membw["1_thread"], membw["best_1_thread"], membw["all_threads"], membw["threads"],
           membw["best_all_threads"]))
    if membw["huge_page_bytes"] >= 0 and membw["huge_page_bytes"] < 0.9 * (membw["buffer_mib"] << 20):
        notes.append("bandwidth probe: only %.0f%% of its buffer in huge pages (transparent huge pages off?): "
                     "its figure may be low" % (100.0 * membw["huge_page_bytes"] / (membw["buffer_mib"] << 20)))
    sg = run_json([os.path.join(a.bench_bin, "sgemm"), "--n", "2048", "--reps", "5"], "OpenBLAS sgemm")
    rep["sgemm_gflops"] = sg["gflops"]
    rep["sgemm"] = sg
    checks = []

    rep["models"] = {}
    # every model twice: the default path (8-bit activations) and the exact one (--exact)
    variants = [] if a.no_int8 else [(name, info, []) for name, info in models.items()]
    if a.no_int8 or not a.no_exact:
        variants += [(name + "+exact", info, ["--exact"]) for name, info in models.items()]
    if a.no_in_process:
        variants = []
    budget = a.model_budget
    if budget is None:
        budget = round(min(MODEL_BUDGET_MAX, MODEL_BUDGET_TOTAL / max(len(variants), 1)), 1)
    rep["model_budget_s"] = budget
    for name, info, flags in variants:
        path = info["path"]
        cmd = [mixctl, "bench", "-m", path, "--pp", str(a.pp), "--tg", str(a.tg), "--repeat", str(a.repeat),
               "--budget", str(budget)] + flags
        if a.threads:
            cmd += ["--threads", str(a.threads)]
        try:
            b = run_json(cmd, "%s in-process" % name)
        except RuntimeError as e:
            rep["models"][name] = {"path": rel(path), "error": str(e)}
            notes.append("%s: %s" % (name, e))
            failed = True
            continue
        b["model"] = rel(b["model"])
        tr = model_traffic(path, a.pp, a.tg, mixd_kv_elem_bytes(b))
        tg_rate = b.get("tg_tok_s") or 0
        roof = membw["all_threads"] * 1e9 / tr["bytes_per_token"]
        gflops = 2.0 * tr["prefill_weights_per_token"] * b["pp_tok_s"] / 1e9
        x = {
            "path": rel(path), "generated_this_run": info["generated"], "gen_args": info["gen_args"],
            "file_bytes": os.path.getsize(path), "threads": b["threads"],
            "pp512_tok_s": b["pp_tok_s"], "tg128_tok_s": tg_rate,
            "pp512_per_token_tok_s": b.get("pp_per_token_tok_s"), "prefill_speedup": b.get("prefill_speedup"),
            "roofline_tok_s": round(roof, 3), "roofline_ratio": round(tg_rate / roof, 4) if roof else None,
            "prefill_gflops": round(gflops, 3), "prefill_gflops_vs_sgemm": round(gflops / sg["gflops"], 4),
            "decode_gbs_effective": round(tg_rate * tr["bytes_per_token"] / 1e9, 3),
            "huge_page_share": (round(b["model_huge_page_bytes"] / b["model_bytes"], 4)
                                if b.get("model_bytes") else None),
        }
        if info.get("llama_quantize"):
            x["llama_quantize"] = info["llama_quantize"]
        x.update(tr)
        x["bench"] = b
        rates = run_tg_rates(b)
        if rates:
            x["probe_check"] = probe_check("%s tg%d" % (name, a.tg), rates, tr["bytes_per_token"], membw)
            checks.append(x["probe_check"])
        if b.get("tg_truncated"):
            notes.append("%s: decode timed over %d of %d tokens (time budget)" % (name, b["tg_tokens"], b["tg_tokens_target"]))
        if x["huge_page_share"] is not None and x["huge_page_share"] < 0.9:
            notes.append("%s: only %.0f%% of the model mapped with 2 MiB pages: decode is slower than it can be"
                         % (name, 100 * x["huge_page_share"]))
        if b.get("pp_per_token_truncated"):
            notes.append("%s: per-token prefill timed over the first %d of %d tokens (time budget)"
                         % (name, b["pp_per_token_tokens"], b["pp_per_token_target"]))
        rep["models"][name] = x
        log("%s: pp %.2f tok/s, tg %.2f tok/s, per-token %.2f tok/s; %.0f MB/token, roofline %.1f tok/s"
            % (name, b["pp_tok_s"], tg_rate, b.get("pp_per_token_tok_s") or 0, tr["bytes_per_token"] / 1e6, roof))

    if a.llama_bench:
        flags = ["--exact"] if a.no_int8 else []  # the default, as llama.cpp's: 8-bit activations
        rep["side_by_side"] = peer_bench(a, models, mixctl, threads, flags, membw, checks, notes)

    name = next(iter(models))
    if not a.no_daemon and "error" not in rep["models"].get(name, {}):
        extra = ["--threads", str(a.threads)] if a.threads else []
        if a.no_int8:
            extra += ["--exact", "1"]
        traffic = rep["models"].get(name) or model_traffic(models[name]["path"], a.pp, a.tg)
        try:
            d = daemon_bench(mixd, models[name]["path"], traffic, a.daemon_budget, extra)
        except (RuntimeError, OSError, SystemExit) as e:
            d = {"error": str(e), "levels": {}, "tokens_per_session": 64}
            notes.append("daemon: %s" % e)
            failed = True
        d["model_name"] = name
        d["int8"] = not a.no_int8
        rep["daemon"] = d
        if d["tokens_per_session"] < 64:
            notes.append("daemon: %d tokens per session instead of 64 (time budget)" % d["tokens_per_session"])
        for k, lv in d["levels"].items():
            if lv.get("retried_after"):
                notes.append("daemon: the %s-session level failed once (%s) and was run again"
                             % (k, lv["retried_after"]))
            if lv.get("status_error"):
                notes.append("daemon: status after the %s-session level failed: %s" % (k, lv["status_error"]))
            if lv["cancelled_at_limit"]:
                notes.append("daemon: %d of the %s-session requests cancelled at the level's time limit"
                             % (lv["cancelled_at_limit"], k))

    # the probe is a ceiling: a run that reads faster than it means the probe (or the count of
    # bytes per token) is wrong, and every ratio to it with it
    bad = [c for c in checks if c["exceeded"]]
    if bad:  # other work during the probe makes it low: measure it once more before failing
        log("%d run(s) read faster than the probe measured: measuring it once more" % len(bad))
        membw_runs.append(run_json(membw_cmd, "memory bandwidth, again"))
        membw = rep["bandwidth_gbs"] = probe_summary(membw_runs)
        for c in checks:
            recheck(c, membw)
        for x in rep["models"].values():
            if x.get("roofline_tok_s"):
                roof = membw["all_threads"] * 1e9 / x["bytes_per_token"]
                x["roofline_tok_s"] = round(roof, 3)
                x["roofline_ratio"] = round(x["tg128_tok_s"] / roof, 4)
        notes.append("bandwidth probe measured twice, as a run exceeded the first figure (%s GB/s, %d threads); "
                     "each variant's best of both kept" % (" then ".join("%.2f" % v for v in
                                                                       membw["all_threads_per_run"]), threads))
        bad = [c for c in checks if c["exceeded"]]
    rep["probe_check"] = {"probe_gbs": membw["all_threads"], "probe_variant": membw["best_all_threads"],
                          "threads": membw["threads"], "runs": checks, "exceeded": bool(bad)}
    rep["probe_exceeded"] = bool(bad)
    for c in bad:
        notes.append("PROBE EXCEEDED: %s implies %.2f GB/s (%.0f MB/token x %.2f tok/s), more than the bandwidth "
                     "probe's %.2f GB/s: the probe is not a ceiling, or bytes per token are miscounted"
                     % (c["run"], c["implied_gbs"], c["bytes_per_token"] / 1e6, c["max_run_tok_s"], c["probe_gbs"]))
    if bad:
        failed = True

    rep["machine"]["loadavg_end"] = loadavg()
    rep["elapsed_s"] = round(time.monotonic() - T0, 1)
    rep["notes"] = notes

    text = json.dumps(rep, indent=1, sort_keys=False)
    tab = table(rep)
    try:
        os.makedirs(a.bench_bin, exist_ok=True)
        with open(os.path.join(a.bench_bin, "bench.json"), "w") as f:
            f.write(text + "\n")
        with open(os.path.join(a.bench_bin, "bench.txt"), "w") as f:
            f.write(tab + "\n")
    except OSError as e:
        log("cannot save the report: %s" % e)
    sys.stdout.write(text + "\n")
    sys.stdout.flush()
    sys.stderr.write("\n" + tab + "\n")
    if bad:
        sys.stderr.write("\nbench: FAILED: %d run(s) read faster than the bandwidth probe allows (%.2f GB/s, %d "
                         "threads); see probe_check in the JSON:\n  %s\n"
                         % (len(bad), membw["all_threads"], membw["threads"],
                            "\n  ".join("%s: %.2f GB/s" % (c["run"], c["implied_gbs"]) for c in bad)))
    return 1 if failed else 0


def on_sigterm(signum, frame):
    raise KeyboardInterrupt  # unwind: stop mixd, delete a half-written model


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        log("interrupted")
        sys.exit(130)
