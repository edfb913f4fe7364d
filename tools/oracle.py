#!/usr/bin/python3
"""oracle.py -- independent NumPy forward pass of Mixtral/llama-arch GGUF models.

Owns: a reference implementation of HF MixtralForCausalLM (and dense llama)
semantics, reading weights with tools/gguf_py.py, used to validate the C
engine and the test fixtures.  It shares no code with the engine.

Computation: weights are dequantized to float32 (bit-exact with ggml) and then
all arithmetic is done in float64 by default (`--dtype float32` computes in
float32 instead, like the PyTorch reference oracle of the fixtures).

Semantics (one layer):
  h  = x + Wo · Attn(RoPE(Wq·n1), RoPE(Wk·n1), Wv·n1),   n1 = RMSNorm(x)·w_attn_norm
  x' = h + Σ_{e in top-k} p_e · Wd_e(silu(Wg_e·n2) ⊙ (Wu_e·n2)), n2 = RMSNorm(h)·w_ffn_norm
  RMSNorm(x) = x / sqrt(mean(x²) + eps)
  RoPE rotates ADJACENT pairs (x[2i], x[2i+1]) by pos·base^(-2i/n_rot) (the
  GGUF converter permuted Wq/Wk for this); GQA: query head h uses kv head
  h // (n_head / n_head_kv); causal attention with scale 1/sqrt(head_dim) and
  an optional sliding window W (query i sees keys max(0, i-W+1) .. i);
  optional rolling cache with attention sinks for full-attention models
  (sink_capacity C, like `mixctl --ctx C`): query i sees keys 0..3 (the
  sinks) and max(4, i-C+5) .. i; RoPE positions stay the absolute ones;
  router: softmax over W_gate_inp·n2, top-k, weights renormalised to sum 1.
  Dense models (no experts) use one SwiGLU FFN. Final RMSNorm, then the output
  head (output.weight, or token_embd.weight when absent).
A weight tensor with ggml ne = [in, out] is the row-major matrix [out, in].

CLI:  oracle.py MODEL --tokens 1,2,3 [--all] [--window-override N] [--sink-capacity C]
                [--dtype float32]
      prints one JSON line {"pos": P, "logits": [...]} for the last position
      (every position with --all).
Python: forward(model, tokens, sink_capacity=None, trace=None) -> np.ndarray
      [T, n_vocab]; model is a path or a Model instance; trace (a dict) receives
      "router_margin" [T]: per position, the smallest over MoE layers of
      (k-th - (k+1)-th router probability), inf for dense models / k = n_expert.
"""

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import numpy as np  # noqa: E402
import gguf_py as g  # noqa: E402

# Positions a rolling full-attention cache keeps forever (engine/engine_limits.h
# KV_ATTENTION_SINKS).
N_ATTENTION_SINKS = 4


class Model(object):
    """Hyper-parameters and (lazily dequantized) weights of a GGUF model.

    cache: keep dequantized weights in memory (default: only if the file is
    smaller than 2 GiB).  Without the cache each weight is dequantized when a
    forward pass needs it and dropped afterwards, so models with big shapes
    work in bounded memory (only the experts that tokens are routed to are
    dequantized).
    """

    def __init__(self, path, cache=None, window_override=None):
        self.path = path
        self.r = g.GGUFReader(path)
        md = self.r.metadata
        arch = md.get("general.architecture", "llama")
        self.arch = arch

        def hp(key, default=None, required=True):
            full = "%s.%s" % (arch, key)
            if full in md:
                return md[full]
            if required and default is None:
                raise KeyError("missing metadata key %s" % full)
            return default

        self.n_layer = int(hp("block_count"))
        self.n_embd = int(hp("embedding_length"))
        self.n_head = int(hp("attention.head_count"))
        self.n_head_kv = int(hp("attention.head_count_kv", self.n_head))
        self.head_dim = int(hp("attention.key_length", self.n_embd // self.n_head))
        self.n_rot = int(hp("rope.dimension_count", self.head_dim))
        self.rope_base = float(hp("rope.freq_base", 10000.0))
        self.eps = float(hp("attention.layer_norm_rms_epsilon", 1e-5))
        self.n_expert = int(hp("expert_count", 0, required=False) or 0)
        self.n_expert_used = int(hp("expert_used_count", 0, required=False) or 0)
        self.window = int(hp("attention.sliding_window", 0, required=False) or 0)
        if window_override is not None:
            self.window = int(window_override)
        emb = self.r.tensor("token_embd.weight")
        self.n_vocab = emb.ne[1]
        self.tied = "output.weight" not in self.r
        # expert storage layout: merged 3-D tensors or legacy per-expert 2-D ones
        self.merged = "blk.0.ffn_gate_exps.weight" in self.r
        self.legacy = "blk.0.ffn_gate.0.weight" in self.r
        if self.n_expert and not (self.merged or self.legacy):
            raise ValueError("expert_count > 0 but no expert tensors found")
        if cache is None:
            # cache when all weights dequantized to float32 fit in ~2 GiB
            n_f32 = sum(t.n_elements for t in self.r.tensors) * 4
            cache = n_f32 < 2 * 2**30
        self.cache = cache
        self._cache = {}

    # -- weight access -----------------------------------------------------
    def weight(self, name):
        """Dequantized float32 array of a tensor, NumPy shape reversed(ne)."""
        if name in self._cache:
            return self._cache[name]
        w = self.r.dequantize(name)
        if self.cache:
            self._cache[name] = w
        return w

    def expert(self, layer, kind, e):
        """Matrix of expert e, kind in gate/up/down -> float32 [out, in]."""
        if self.legacy:
            return self.weight("blk.%d.ffn_%s.%d.weight" % (layer, kind, e))
        name = "blk.%d.ffn_%s_exps.weight" % (layer, kind)
        key = (name, e)
        if key in self._cache:
            return self._cache[key]
        ti = self.r.tensor(name)
        n = ti.ne[0] * ti.ne[1]
        raw = self.r.raw_rows(name, e, 1, row_len=n)
        w = g.dequantize(raw, ti.type, n).reshape(ti.ne[1], ti.ne[0])
        if self.cache:
            self._cache[key] = w
        return w

    def embed(self, tokens):
        """Rows of token_embd for the given ids, float32 [T, n_embd]."""
        ti = self.r.tensor("token_embd.weight")
        out = np.empty((len(tokens), self.n_embd), dtype=np.float32)
        for i, t in enumerate(tokens):
            if not 0 <= t < self.n_vocab:
                raise ValueError("token id %d out of range [0, %d)" % (t, self.n_vocab))
            out[i] = g.dequantize(self.r.raw_rows("token_embd.weight", t, 1), ti.type)
        return out


def rms_norm(x, w, eps):
    """x / sqrt(mean(x^2) + eps) * w, row-wise."""
    ms = np.mean(x * x, axis=-1, keepdims=True)
    return x * (1.0 / np.sqrt(ms + eps)) * w


def rope(x, pos, n_rot, base, dt):
    """Rotate adjacent pairs of the first n_rot dims. x: [T, H, D]."""
    i = np.arange(n_rot // 2, dtype=np.float64)
    inv_freq = base ** (-2.0 * i / n_rot)                     # [n_rot/2]
    ang = np.asarray(pos, dtype=np.float64)[:, None] * inv_freq[None, :]
    cos = np.cos(ang).astype(dt)[:, None, :]                  # [T, 1, n_rot/2]
    sin = np.sin(ang).astype(dt)[:, None, :]
    out = x.copy()
    x0 = x[..., 0:n_rot:2]
    x1 = x[..., 1:n_rot:2]
    out[..., 0:n_rot:2] = x0 * cos - x1 * sin
    out[..., 1:n_rot:2] = x0 * sin + x1 * cos
    return out


def silu(x):
    return x / (1.0 + np.exp(-x))


def softmax(x, axis=-1):
    m = np.max(x, axis=axis, keepdims=True)
    e = np.exp(x - m)
    return e / np.sum(e, axis=axis, keepdims=True)


def attention_mask(T, window=0, sink_capacity=None):
    """Boolean [T, T]: query i may attend key j.

    window > 0: sliding window (keys max(0, i-W+1)..i; sink_capacity ignored).
    Otherwise, with sink_capacity C: a rolling cache of C positions keeping the
    first N_ATTENTION_SINKS forever: keys 0..3 and max(4, i-C+5)..i.
    """
    i = np.arange(T)[:, None]
    j = np.arange(T)[None, :]
    mask = j <= i
    if window and window > 0:
        mask &= j >= i - window + 1
    elif sink_capacity is not None:
        S = N_ATTENTION_SINKS
        mask &= (j < S) | (j >= i - (int(sink_capacity) - S) + 1)
    return mask


def attention(q, k, v, window, dt, sink_capacity=None):
    """q: [T, H, D], k/v: [T, Hkv, D] -> [T, H*D] (causal, GQA, window/sinks)."""
    T, H, D = q.shape
    Hkv = k.shape[1]
    group = H // Hkv
    mask = attention_mask(T, window, sink_capacity)
    scale = dt(1.0 / np.sqrt(D))
    out = np.empty((T, H, D), dtype=dt)
    for h in range(H):
        kh = k[:, h // group, :]
        vh = v[:, h // group, :]
        s = (q[:, h, :] @ kh.T) * scale                       # [T, T]
        s = np.where(mask, s, -np.inf)
        p = softmax(s, axis=-1)
        out[:, h, :] = p @ vh
    return out.reshape(T, H * D)


def swiglu(x, wg, wu, wd, dt):
    return (silu(x @ wg.astype(dt).T) * (x @ wu.astype(dt).T)) @ wd.astype(dt).T


def forward(model, tokens, positions=None, dtype=np.float64, return_hidden=False,
            sink_capacity=None, trace=None):
    """Logits [T, n_vocab] (float32) for the token sequence.

    model: Model or path.  positions default to 0..T-1.
    dtype: computation precision (np.float64 default, or np.float32).
    sink_capacity: C (>= N_ATTENTION_SINKS + 1) for a full-attention model's
    rolling cache with attention sinks (ignored for sliding-window models).
    trace: optional dict, receives "router_margin" (see the module doc).
    """
    if sink_capacity is not None and int(sink_capacity) < N_ATTENTION_SINKS + 1:
        raise ValueError("sink_capacity must be >= %d" % (N_ATTENTION_SINKS + 1))
    if not isinstance(model, Model):
        model = Model(model)
    m = model
    dt = np.dtype(dtype).type
    tokens = [int(t) for t in tokens]
    T = len(tokens)
    pos = np.arange(T) if positions is None else np.asarray(positions)
    x = m.embed(tokens).astype(dt)
    margin = np.full(T, np.inf)

    def W(name):
        return m.weight(name).astype(dt)

    for L in range(m.n_layer):
        p = "blk.%d." % L
        # --- attention ---------------------------------------------------
        hn = rms_norm(x, W(p + "attn_norm.weight"), dt(m.eps))
        q = (hn @ W(p + "attn_q.weight").T).reshape(T, m.n_head, m.head_dim)
        k = (hn @ W(p + "attn_k.weight").T).reshape(T, m.n_head_kv, m.head_dim)
        v = (hn @ W(p + "attn_v.weight").T).reshape(T, m.n_head_kv, m.head_dim)
        q = rope(q, pos, m.n_rot, m.rope_base, dt)
        k = rope(k, pos, m.n_rot, m.rope_base, dt)
        a = attention(q, k, v, m.window, dt, sink_capacity)
        x = x + a @ W(p + "attn_output.weight").T
        # --- feed-forward ------------------------------------------------
        hn = rms_norm(x, W(p + "ffn_norm.weight"), dt(m.eps))
        if m.n_expert == 0:
            x = x + swiglu(hn, m.weight(p + "ffn_gate.weight"), m.weight(p + "ffn_up.weight"),
                           m.weight(p + "ffn_down.weight"), dt)
            continue
        logits = hn @ W(p + "ffn_gate_inp.weight").T            # [T, n_expert]
        probs = softmax(logits, axis=-1)
        k_used = m.n_expert_used
        # top-k by probability (ties -> lower expert index first)
        top = np.argsort(-probs, axis=-1, kind="stable")[:, :k_used]
        topw = np.take_along_axis(probs, top, axis=-1)
        if k_used < m.n_expert:
            ps = -np.sort(-probs, axis=-1)
            margin = np.minimum(margin, ps[:, k_used - 1] - ps[:, k_used])
        topw = topw / np.sum(topw, axis=-1, keepdims=True)
        moe = np.zeros_like(x)
        for e in range(m.n_expert):
            rows, slot = np.nonzero(top == e)
            if rows.size == 0:
                continue
            y = swiglu(hn[rows], m.expert(L, "gate", e), m.expert(L, "up", e),
                       m.expert(L, "down", e), dt)
            moe[rows] += topw[rows, slot][:, None] * y
        x = x + moe

    x = rms_norm(x, W("output_norm.weight"), dt(m.eps))
    head = "token_embd.weight" if m.tied else "output.weight"
    out = (x @ m.weight(head).astype(dt).T).astype(np.float32)
    if trace is not None:
        trace["router_margin"] = margin
    if return_hidden:
        return out, x
    return out


def parse_tokens(s):
    return [int(t) for t in s.replace(" ", "").split(",") if t != ""]


def format_line(pos, logits):
    """JSON line {"pos":P,"logits":[...]} with float32 round-trip precision."""
    vals = ",".join("%.9g" % v for v in np.asarray(logits, dtype=np.float32).tolist())
    return '{"pos":%d,"logits":[%s]}' % (pos, vals)


def main(argv):
    ap = argparse.ArgumentParser(description="NumPy reference forward pass (logits as JSON lines).")
    ap.add_argument("model")
    ap.add_argument("--tokens", required=True, help="comma-separated token ids")
    ap.add_argument("--all", action="store_true", help="print every position, not only the last")
    ap.add_argument("--window-override", type=int, default=None,
                    help="sliding window to use instead of the file's (0 = none)")
    ap.add_argument("--sink-capacity", type=int, default=None, metavar="C",
                    help="full-attention models: rolling cache of C positions keeping "
                         "the first %d forever (like mixctl --ctx C)" % N_ATTENTION_SINKS)
    ap.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    a = ap.parse_args(argv)
    toks = parse_tokens(a.tokens)
    if not toks:
        ap.error("no tokens")
    if a.sink_capacity is not None and a.sink_capacity < N_ATTENTION_SINKS + 1:
        ap.error("--sink-capacity must be >= %d" % (N_ATTENTION_SINKS + 1))
    m = Model(a.model, window_override=a.window_override)
    lg = forward(m, toks, dtype=np.float64 if a.dtype == "float64" else np.float32,
                 sink_capacity=a.sink_capacity)
    out = sys.stdout
    for p in (range(len(toks)) if a.all else [len(toks) - 1]):
        out.write(format_line(p, lg[p]) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
