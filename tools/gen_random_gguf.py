#!/usr/bin/python3
"""gen_random_gguf.py -- generator of random Mixtral / llama-arch GGUF models.

Owns: producing test models (random weights) with exactly the tensor names and
metadata keys that llama.cpp's convert_hf_to_gguf.py writes for arch `llama`:
MoE (merged blk.N.ffn_*_exps or legacy per-expert blk.N.ffn_*.E tensors) or
dense, tied or separate output head, optional sliding window, any weight type
supported by tools/gguf_py.py.  Tensors are produced and written one at a time
in bounded-size chunks, so real Mixtral 8x7B shapes (with few layers) need
little RAM.

Weights:
  * float types (F32/F16/BF16): normal(0, 1/sqrt(fan_in)), fan_in = ne[0];
  * Q8_0 / Q4_0: the same normals quantized by gguf_py's simple quantizers;
  * other quantized types: random quant bits with finite scales chosen so the
    dequantized weights have roughly zero mean and std ~ 1/sqrt(fan_in);
  * 1-D norm weights: F32 ~ 1 + 0.1*normal; router blk.N.ffn_gate_inp.weight:
    F32 normal(0, 1/sqrt(n_embd)).

Tokenizer: --tokenizer-from FILE copies every tokenizer.* key (types kept);
otherwise a SentencePiece-style vocab is synthesised: <unk>, <s>, </s>, the
256 byte tokens <0x00>..<0xFF>, then pieces (needs vocab >= 259).

Example (tiny):
  gen_random_gguf.py out.gguf --n-layer 2 --n-embd 64 --n-ff 128 --n-head 4 \
      --n-head-kv 2 --n-expert 4 --n-expert-used 2 --n-vocab 512 --type f16
Example (Mixtral 8x7B shapes, 1 layer, Q4_K):
  gen_random_gguf.py big.gguf --preset mixtral-8x7b --n-layer 1 --type q4_k
"""

import argparse
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import numpy as np  # noqa: E402
import gguf_py as g  # noqa: E402

# Elements generated per chunk when streaming a tensor (bounds RAM use).
CHUNK_ELEMS = 1 << 22

# llama.cpp's llama_ftype for a model whose weights are all of one type
# (general.file_type).  K-quant "pure" files map to the _S variants.
FILE_TYPE = {
    g.GGML_TYPE_F32: 0, g.GGML_TYPE_F16: 1, g.GGML_TYPE_Q4_0: 2,
    g.GGML_TYPE_Q4_1: 3, g.GGML_TYPE_Q8_0: 7, g.GGML_TYPE_Q5_0: 8,
    g.GGML_TYPE_Q5_1: 9, g.GGML_TYPE_Q2_K: 10, g.GGML_TYPE_Q3_K: 11,
    g.GGML_TYPE_Q4_K: 14, g.GGML_TYPE_Q5_K: 16, g.GGML_TYPE_Q6_K: 18,
    g.GGML_TYPE_BF16: 32,
}

PRESETS = {
    # Mixtral 8x7B v0.1 hyper-parameters
    "mixtral-8x7b": dict(n_embd=4096, n_ff=14336, n_head=32, n_head_kv=8,
                         n_expert=8, n_expert_used=2, n_vocab=32000,
                         n_ctx=32768, rope_theta=1e6, rms_eps=1e-5),
    # a small MoE like the tiny-moe-shakespeare fixture
    "tiny": dict(n_embd=256, n_ff=512, n_head=8, n_head_kv=2, n_expert=8,
                 n_expert_used=2, n_vocab=32000, n_ctx=4096, rope_theta=1e6,
                 rms_eps=1e-5, sliding_window=64, n_layer=4),
}


# --------------------------------------------------------------------------
# Random tensor data
# --------------------------------------------------------------------------

def _f16_bytes(x):
    """float array -> little-endian fp16 bytes [..., 2]."""
    return np.asarray(x, dtype="<f2").view(np.uint8).reshape(np.shape(x) + (2,))


def _to_bf16(x):
    """float32 -> bf16 (round to nearest even) as uint16."""
    u = np.asarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return u.astype("<u2")


def _pack_k4_scales(sc, mn):
    """Q4_K/Q5_K: 8 six-bit scales and mins [nb, 8] -> 12 packed bytes."""
    sc = sc.astype(np.uint8)
    mn = mn.astype(np.uint8)
    out = np.empty((sc.shape[0], 12), dtype=np.uint8)
    out[:, 0:4] = (sc[:, 0:4] & 63) | ((sc[:, 4:8] >> 4) << 6)
    out[:, 4:8] = (mn[:, 0:4] & 63) | ((mn[:, 4:8] >> 4) << 6)
    out[:, 8:12] = (sc[:, 4:8] & 0x0F) | ((mn[:, 4:8] & 0x0F) << 4)
    return out


def random_quant_blocks(rng, ggml_type, nb, std):
    """`nb` random blocks of a quantized type, weights ~ zero mean, ~std."""
    _, blck, tsize = g.GGML_TYPES[ggml_type]
    b = rng.integers(0, 256, size=(nb, tsize), dtype=np.uint8)  # random quant bits
    T = g
    if ggml_type == T.GGML_TYPE_Q4_0:         # q-8 in -8..7, std ~4.6
        b[:, 0:2] = _f16_bytes(np.full(nb, std / 4.6))
    elif ggml_type == T.GGML_TYPE_Q4_1:       # q*d + m, q in 0..15
        d = np.full(nb, std / 4.6, dtype=np.float32)
        b[:, 0:2] = _f16_bytes(d)
        b[:, 2:4] = _f16_bytes(-7.5 * d)
    elif ggml_type == T.GGML_TYPE_Q5_0:       # q-16 in -16..15, std ~9.2
        b[:, 0:2] = _f16_bytes(np.full(nb, std / 9.2))
    elif ggml_type == T.GGML_TYPE_Q5_1:
        d = np.full(nb, std / 9.2, dtype=np.float32)
        b[:, 0:2] = _f16_bytes(d)
        b[:, 2:4] = _f16_bytes(-15.5 * d)
    elif ggml_type == T.GGML_TYPE_Q8_0:       # int8 q, std ~74
        b[:, 0:2] = _f16_bytes(np.full(nb, std / 74.0))
    elif ggml_type == T.GGML_TYPE_Q2_K:
        # scales[16]: low nibble scale 1..15, high nibble min ~ scale*1.5*d/dmin
        s = rng.integers(1, 16, size=(nb, 16))
        d = std / (8.0 * 1.12)
        dmin = 1.5 * d
        m = np.clip(np.rint(s * 1.5 * d / dmin), 0, 15).astype(np.uint8)
        b[:, 0:16] = s.astype(np.uint8) | (m << 4)
        b[:, 80:82] = _f16_bytes(np.full(nb, d))
        b[:, 82:84] = _f16_bytes(np.full(nb, dmin))
    elif ggml_type == T.GGML_TYPE_Q3_K:
        # random packed 6-bit scales (scale-32 in -32..31, E|.| ~16), q ~ std 2.3
        b[:, 108:110] = _f16_bytes(np.full(nb, std / (16.0 * 2.3)))
    elif ggml_type in (T.GGML_TYPE_Q4_K, T.GGML_TYPE_Q5_K):
        q_mean, q_std = (7.5, 4.6) if ggml_type == T.GGML_TYPE_Q4_K else (15.5, 9.2)
        sc = rng.integers(16, 64, size=(nb, 8))
        d = std / (40.0 * q_std)
        dmin = d * (q_mean + 0.5)
        mn = np.clip(np.rint(sc * q_mean * d / dmin), 0, 63)
        b[:, 0:2] = _f16_bytes(np.full(nb, d))
        b[:, 2:4] = _f16_bytes(np.full(nb, dmin))
        b[:, 4:16] = _pack_k4_scales(sc, mn)
    elif ggml_type == T.GGML_TYPE_Q6_K:
        # int8 scales of magnitude 8..63 with random sign; q-32 ~ std 18.5
        sc = rng.integers(8, 64, size=(nb, 16)) * rng.choice([-1, 1], size=(nb, 16))
        b[:, 192:208] = sc.astype(np.int8).view(np.uint8)
        b[:, 208:210] = _f16_bytes(np.full(nb, std / (35.0 * 18.5)))
    else:
        raise NotImplementedError("random blocks for %s" % g.type_name(ggml_type))
    return b


def tensor_chunks(rng, ne, ggml_type, kind):
    """Yield raw-byte chunks of a random tensor.

    kind: 'weight' (normal, std 1/sqrt(ne[0])), 'norm' (1 + 0.1*normal).
    """
    n_total = 1
    for d in ne:
        n_total *= d
    _, blck, _ = g.GGML_TYPES[ggml_type]
    row = ne[0]
    rows_per_chunk = max(1, CHUNK_ELEMS // row)
    n_rows = n_total // row
    std = 1.0 / np.sqrt(ne[0])
    for r0 in range(0, n_rows, rows_per_chunk):
        n = min(rows_per_chunk, n_rows - r0) * row
        if ggml_type in (g.GGML_TYPE_F32, g.GGML_TYPE_F16, g.GGML_TYPE_BF16,
                         g.GGML_TYPE_Q8_0, g.GGML_TYPE_Q4_0) or kind == "norm":
            x = rng.standard_normal(n, dtype=np.float32)
            if kind == "norm":
                x = 1.0 + 0.1 * x
            else:
                x *= np.float32(std)
            if ggml_type == g.GGML_TYPE_F32:
                yield x.astype("<f4")
            elif ggml_type == g.GGML_TYPE_F16:
                yield x.astype("<f2")
            elif ggml_type == g.GGML_TYPE_BF16:
                yield _to_bf16(x)
            elif ggml_type == g.GGML_TYPE_Q8_0:
                yield g.quantize_q8_0(x)
            else:
                yield g.quantize_q4_0(x)
        else:
            yield random_quant_blocks(rng, ggml_type, n // blck, std)


# --------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------

def synth_vocab(n_vocab):
    """SentencePiece-like vocab: specials, 256 byte tokens, then pieces."""
    if n_vocab < 259 + 1:
        raise SystemExit("synthesised vocab needs --n-vocab >= 260")
    tokens = ["<unk>", "<s>", "</s>"] + ["<0x%02X>" % i for i in range(256)]
    types = [2, 3, 3] + [6] * 256
    seen = set(tokens)
    letters = "etaoinshrdlcumwfgypbvkjxqz"
    chars = letters + letters.upper() + "0123456789.,;:!?'\"-()"

    def pieces():
        yield "\u2581"
        for c in chars:
            yield c
        for c in chars:
            yield "\u2581" + c
        for a in letters:
            for b2 in letters:
                yield a + b2
                yield "\u2581" + a + b2
        k = 0
        while True:  # endless supply of unique 3+ letter pieces
            k += 1
            s = ""
            v = k
            while v > 0:
                s = letters[v % 26] + s
                v //= 26
            yield "\u2581" + s + "e"
            yield s + "ng"

    for p in pieces():
        if len(tokens) >= n_vocab:
            break
        if p in seen:
            continue
        seen.add(p)
        tokens.append(p)
        types.append(1)
    scores = [0.0] * 259 + [-float(i) for i in range(len(tokens) - 259)]
    return tokens, np.array(scores, dtype=np.float32), np.array(types, dtype=np.int32)


# --------------------------------------------------------------------------
# Model description
# --------------------------------------------------------------------------

def tensor_plan(a):
    """List of (name, ne, type, kind) in the order llama.cpp's converter writes."""
    wt = a.type_id
    hd = a.n_embd // a.n_head
    plan = [("token_embd.weight", [a.n_embd, a.n_vocab], a.type_embd_id, "weight")]
    for i in range(a.n_layer):
        p = "blk.%d." % i
        plan += [
            (p + "attn_norm.weight", [a.n_embd], g.GGML_TYPE_F32, "norm"),
            (p + "attn_q.weight", [a.n_embd, a.n_head * hd], wt, "weight"),
            (p + "attn_k.weight", [a.n_embd, a.n_head_kv * hd], wt, "weight"),
            (p + "attn_v.weight", [a.n_embd, a.n_head_kv * hd], wt, "weight"),
            (p + "attn_output.weight", [a.n_head * hd, a.n_embd], wt, "weight"),
            (p + "ffn_norm.weight", [a.n_embd], g.GGML_TYPE_F32, "norm"),
        ]
        if a.n_expert == 0:
            plan += [
                (p + "ffn_gate.weight", [a.n_embd, a.n_ff], wt, "weight"),
                (p + "ffn_up.weight", [a.n_embd, a.n_ff], wt, "weight"),
                (p + "ffn_down.weight", [a.n_ff, a.n_embd], wt, "weight"),
            ]
            continue
        plan.append((p + "ffn_gate_inp.weight", [a.n_embd, a.n_expert], g.GGML_TYPE_F32, "weight"))
        if a.moe_layout == "merged":
            plan += [
                (p + "ffn_gate_exps.weight", [a.n_embd, a.n_ff, a.n_expert], wt, "weight"),
                (p + "ffn_down_exps.weight", [a.n_ff, a.n_embd, a.n_expert], wt, "weight"),
                (p + "ffn_up_exps.weight", [a.n_embd, a.n_ff, a.n_expert], wt, "weight"),
            ]
        else:
            for e in range(a.n_expert):
                plan += [
                    (p + "ffn_gate.%d.weight" % e, [a.n_embd, a.n_ff], wt, "weight"),
                    (p + "ffn_down.%d.weight" % e, [a.n_ff, a.n_embd], wt, "weight"),
                    (p + "ffn_up.%d.weight" % e, [a.n_embd, a.n_ff], wt, "weight"),
                ]
    plan.append(("output_norm.weight", [a.n_embd], g.GGML_TYPE_F32, "norm"))
    if not a.tied:
        plan.append(("output.weight", [a.n_embd, a.n_vocab], a.type_output_id, "weight"))
    if a.tensor_type_ids:
        # --tensor-type overrides of 2-D/3-D weights (router and norms stay F32);
        # the first matching pattern wins
        def override(name, t):
            for pat, tid in a.tensor_type_ids:
                if pat.search(name):
                    return tid
            return t
        plan = [(n, ne, override(n, t) if (kind == "weight" and len(ne) > 1
                                            and "ffn_gate_inp" not in n) else t, kind)
                for n, ne, t, kind in plan]
    return plan


def parse_args(argv):
    ap = argparse.ArgumentParser(
        description="Write a random Mixtral/llama-arch GGUF model.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("out", help="output .gguf path")
    ap.add_argument("--preset", choices=sorted(PRESETS),
                    help="start from a preset; explicit options override it")
    ap.add_argument("--n-layer", type=int)
    ap.add_argument("--n-embd", type=int)
    ap.add_argument("--n-ff", type=int)
    ap.add_argument("--n-head", type=int)
    ap.add_argument("--n-head-kv", type=int)
    ap.add_argument("--n-expert", type=int, help="0 = dense model")
    ap.add_argument("--n-expert-used", type=int)
    ap.add_argument("--n-vocab", type=int,
                    help="vocab size (default: the --tokenizer-from vocab, else 512)")
    ap.add_argument("--n-ctx", type=int, help="llama.context_length")
    ap.add_argument("--sliding-window", type=int, help="0 = omit the key")
    ap.add_argument("--rope-theta", type=float)
    ap.add_argument("--rms-eps", type=float)
    ap.add_argument("--type", default="f16",
                    help="type of the 2-D/3-D weights: f32 f16 bf16 q4_0 q4_1 q5_0 "
                         "q5_1 q8_0 q2_k q3_k q4_k q5_k q6_k")
    ap.add_argument("--type-embd", help="type of token_embd.weight (default --type)")
    ap.add_argument("--type-output", help="type of output.weight (default --type)")
    ap.add_argument("--tensor-type", action="append", default=[], metavar="REGEX=TYPE",
                    help="type of the weights whose name matches REGEX (re.search; "
                         "repeatable, first match wins), e.g. 'blk\\.1\\.ffn_down=q6_k'")
    ap.add_argument("--file-type", type=int,
                    help="general.file_type (llama_ftype) to write, e.g. 15 = Q4_K_M "
                         "(default: from --type)")
    ap.add_argument("--moe-layout", choices=["merged", "legacy"], default="merged")
    ap.add_argument("--tied", action="store_true",
                    help="no output.weight (output head = token_embd.weight)")
    ap.add_argument("--tokenizer-from", metavar="FILE",
                    help="copy tokenizer.* keys from this GGUF")
    ap.add_argument("--name", default="random-mixd-test")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)

    defaults = dict(n_layer=2, n_embd=64, n_ff=128, n_head=4, n_head_kv=2,
                    n_expert=4, n_expert_used=2, n_vocab=None, n_ctx=2048,
                    sliding_window=0, rope_theta=10000.0, rms_eps=1e-5)
    if a.preset:
        defaults.update(PRESETS[a.preset])
    for k, v in defaults.items():
        if getattr(a, k) is None:
            setattr(a, k, v)

    try:
        a.type_id = g.type_from_name(a.type)
        a.type_embd_id = g.type_from_name(a.type_embd or a.type)
        a.type_output_id = g.type_from_name(a.type_output or a.type)
    except KeyError as e:
        ap.error("unknown type %s" % e)
    a.tensor_type_ids = []
    for spec in a.tensor_type:
        pat, sep, tname = spec.rpartition("=")
        if not sep or not pat:
            ap.error("--tensor-type wants REGEX=TYPE, got %r" % spec)
        try:
            a.tensor_type_ids.append((re.compile(pat), g.type_from_name(tname)))
        except KeyError:
            ap.error("unknown type %s" % tname)
        except re.error as e:
            ap.error("bad --tensor-type pattern %r: %s" % (pat, e))
    for t in [a.type_id, a.type_embd_id, a.type_output_id] + [t for _, t in a.tensor_type_ids]:
        if t not in FILE_TYPE:
            ap.error("unsupported weight type %s" % g.type_name(t))
    if a.n_embd % a.n_head or a.n_head % a.n_head_kv:
        ap.error("n_embd must be divisible by n_head and n_head by n_head_kv")
    if (a.n_embd // a.n_head) % 2:
        ap.error("head_dim must be even (RoPE pairs)")
    if a.n_expert and not (1 <= a.n_expert_used <= a.n_expert):
        ap.error("need 1 <= n_expert_used <= n_expert")
    return a


def main(argv):
    a = parse_args(argv)
    rng = np.random.default_rng(a.seed)

    # --- tokenizer -------------------------------------------------------
    tok_reader = None
    if a.tokenizer_from:
        tok_reader = g.GGUFReader(a.tokenizer_from)
        nv = len(tok_reader.get("tokenizer.ggml.tokens", []))
        if a.n_vocab is None:
            a.n_vocab = nv
        elif a.n_vocab != nv:
            raise SystemExit("--n-vocab %d differs from the tokenizer's %d tokens" % (a.n_vocab, nv))
    elif a.n_vocab is None:
        a.n_vocab = 512

    plan = tensor_plan(a)
    for name, ne, t, _ in plan:
        blck = g.GGML_TYPES[t][1]
        if ne[0] % blck:
            raise SystemExit("%s: ne[0]=%d not a multiple of the %s block size %d"
                             % (name, ne[0], g.type_name(t), blck))

    hd = a.n_embd // a.n_head
    arch = "llama"
    w = g.GGUFWriter(a.out)
    # metadata in the order llama.cpp's converter writes it
    w.add_string("general.architecture", arch)
    w.add_string("general.type", "model")
    w.add_string("general.name", a.name)
    w.add_uint32(arch + ".block_count", a.n_layer)
    w.add_uint32(arch + ".context_length", a.n_ctx)
    w.add_uint32(arch + ".embedding_length", a.n_embd)
    w.add_uint32(arch + ".feed_forward_length", a.n_ff)
    w.add_uint32(arch + ".attention.head_count", a.n_head)
    w.add_uint32(arch + ".attention.head_count_kv", a.n_head_kv)
    w.add_float32(arch + ".rope.freq_base", a.rope_theta)
    w.add_float32(arch + ".attention.layer_norm_rms_epsilon", a.rms_eps)
    if a.n_expert > 0:
        w.add_uint32(arch + ".expert_count", a.n_expert)
        w.add_uint32(arch + ".expert_used_count", a.n_expert_used)
    w.add_uint32(arch + ".attention.key_length", hd)
    w.add_uint32(arch + ".attention.value_length", hd)
    w.add_uint32("general.file_type", a.file_type if a.file_type is not None else FILE_TYPE[a.type_id])
    w.add_uint32(arch + ".vocab_size", a.n_vocab)
    w.add_uint32(arch + ".rope.dimension_count", hd)
    w.add_uint32("general.quantization_version", 2)
    if tok_reader is not None:
        for k in tok_reader.metadata_order:
            if k.startswith("tokenizer."):
                w.add_from_reader(tok_reader, k)
    else:
        tokens, scores, types = synth_vocab(a.n_vocab)
        w.add_string("tokenizer.ggml.model", "llama")
        w.add_string("tokenizer.ggml.pre", "default")
        w.add_array("tokenizer.ggml.tokens", g.GT_STRING, tokens)
        w.add_array("tokenizer.ggml.scores", g.GT_FLOAT32, scores)
        w.add_array("tokenizer.ggml.token_type", g.GT_INT32, types)
        w.add_uint32("tokenizer.ggml.bos_token_id", 1)
        w.add_uint32("tokenizer.ggml.eos_token_id", 2)
        w.add_bool("tokenizer.ggml.add_bos_token", True)
        w.add_bool("tokenizer.ggml.add_eos_token", False)
    if a.sliding_window > 0:
        w.add_uint32(arch + ".attention.sliding_window", a.sliding_window)

    for name, ne, t, _ in plan:
        w.add_tensor_info(name, ne, t)
    w.write_header()
    total = 0
    for name, ne, t, kind in plan:
        w.write_tensor_data(name, tensor_chunks(rng, ne, t, kind))
        total += g.tensor_nbytes(ne, t)
    w.close()
    print("wrote %s: %d tensors, %.1f MiB of tensor data" % (a.out, len(plan), total / 2**20))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
