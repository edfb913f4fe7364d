#!/usr/bin/env python3
"""make_seeds.py -- writes small valid GGUF files as the seed corpus of tests/fuzz/fuzz_gguf.

Owns: the seed corpus (generated, never committed as binaries). Standard library only.

Usage: make_seeds.py OUTDIR
Writes a dozen files of at most a few KB each: every metadata value type, every array
element type, one tensor of every supported ggml type, GGUF v2 and v3, several
alignments, 1-4 dimensions, a miniature llama-style header, and edge cases that are
still valid (empty strings and arrays, no tensors, no general.alignment key).
"""

import os
import random
import struct
import sys

# Metadata value types.
U8, I8, U16, I16, U32, I32, F32, BOOL, STR, ARR, U64, I64, F64 = range(13)
SCALAR_FMT = {U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i",
              F32: "<f", BOOL: "<B", U64: "<Q", I64: "<q", F64: "<d"}

# ggml tensor types: id -> (weights per block, bytes per block).
GGML = {
    "F32": (0, 1, 4), "F16": (1, 1, 2), "Q4_0": (2, 32, 18), "Q4_1": (3, 32, 20),
    "Q5_0": (6, 32, 22), "Q5_1": (7, 32, 24), "Q8_0": (8, 32, 34), "Q2_K": (10, 256, 84),
    "Q3_K": (11, 256, 110), "Q4_K": (12, 256, 144), "Q5_K": (13, 256, 176),
    "Q6_K": (14, 256, 210), "BF16": (30, 1, 2),
}


def gguf_string(s):
    b = s.encode("utf-8") if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


def value(vtype, v):
    if vtype == STR:
        return gguf_string(v)
    if vtype == ARR:
        etype, items = v
        out = struct.pack("<IQ", etype, len(items))
        return out + b"".join(value(etype, x) for x in items)
    return struct.pack(SCALAR_FMT[vtype], v)


def tensor_bytes(tname, ne):
    _, block, size = GGML[tname]
    n = 1
    for d in ne:
        n *= d
    assert ne[0] % block == 0
    return n // block * size


def tensor_data(tname, nbytes, rng):
    """Plausible bytes: small finite fp16 scales where the format has them."""
    if tname == "F32":
        return b"".join(struct.pack("<f", rng.uniform(-1, 1)) for _ in range(nbytes // 4))
    if tname in ("F16", "BF16"):
        # 0x3c00 = 1.0 in F16; 0x3f80 = 1.0 in BF16; vary the low bits
        base = 0x3c00 if tname == "F16" else 0x3f80
        return b"".join(struct.pack("<H", base ^ rng.randrange(0, 0x3ff)) for _ in range(nbytes // 2))
    return bytes(rng.randrange(256) for _ in range(nbytes))


def gguf(kvs, tensors, version=3, alignment=32, write_alignment_key=True, seed=0):
    """kvs: [(key, vtype, value)]; tensors: [(name, type name, ne)]."""
    rng = random.Random(seed)
    kvs = list(kvs)
    if write_alignment_key:
        kvs.insert(0, ("general.alignment", U32, alignment))
    out = bytearray(b"GGUF")
    out += struct.pack("<IQQ", version, len(tensors), len(kvs))
    for key, vtype, v in kvs:
        out += gguf_string(key) + struct.pack("<I", vtype) + value(vtype, v)
    offset, layout = 0, []
    for name, tname, ne in tensors:
        offset = (offset + alignment - 1) // alignment * alignment
        nbytes = tensor_bytes(tname, ne)
        layout.append((offset, nbytes, tname))
        out += gguf_string(name) + struct.pack("<I", len(ne))
        out += b"".join(struct.pack("<Q", d) for d in ne)
        out += struct.pack("<IQ", GGML[tname][0], offset)
        offset += nbytes
    if tensors:
        out += bytes(-len(out) % alignment)
        data = bytearray(offset)
        for off, nbytes, tname in layout:
            data[off:off + nbytes] = tensor_data(tname, nbytes, rng)
        out += data
    return bytes(out)


def seeds():
    every_scalar = [
        ("t.u8", U8, 200), ("t.i8", I8, -5), ("t.u16", U16, 60000), ("t.i16", I16, -300),
        ("t.u32", U32, 4000000000), ("t.i32", I32, -7), ("t.f32", F32, 1.5), ("t.bool", BOOL, 1),
        ("t.str", STR, "hello"), ("t.u64", U64, 1 << 40), ("t.i64", I64, -1), ("t.f64", F64, 0.25),
    ]
    every_array = [
        ("a.u8", ARR, (U8, [1, 2, 3])), ("a.i8", ARR, (I8, [-1, 1])), ("a.u16", ARR, (U16, [7])),
        ("a.i16", ARR, (I16, [-2, 2])), ("a.u32", ARR, (U32, [1, 2])), ("a.i32", ARR, (I32, [-3, 3, 0])),
        ("a.f32", ARR, (F32, [0.5, -2.0])), ("a.bool", ARR, (BOOL, [0, 1, 1])),
        ("a.str", ARR, (STR, ["a", "", "ccc"])), ("a.u64", ARR, (U64, [2 ** 64 - 1])),
        ("a.i64", ARR, (I64, [-(2 ** 63)])), ("a.f64", ARR, (F64, [1e300])), ("a.empty", ARR, (U32, [])),
        ("a.empty_str", ARR, (STR, [])),
    ]
    yield "header-only-v3", gguf([], [], write_alignment_key=False)
    yield "header-only-v2", gguf([], [], version=2, write_alignment_key=False)
    yield "scalars", gguf(every_scalar, [])
    yield "arrays", gguf(every_array, [], version=2)
    yield "empty-strings", gguf([("", STR, ""), ("e", STR, "")], [], write_alignment_key=False)
    # One single-row tensor per supported type.
    all_types = [("w.%s" % t, t, [GGML[t][1] if GGML[t][1] > 1 else 16]) for t in GGML]
    yield "every-type", gguf([("general.architecture", STR, "zoo")], all_types, seed=1)
    yield "align-8", gguf([("k", U8, 1)], [("x", "F32", [3]), ("y", "F16", [5]), ("z", "Q8_0", [32])],
                          alignment=8, seed=2)
    yield "align-64-v2", gguf([("k", U8, 1)], [("x", "Q4_K", [256]), ("y", "F32", [2, 3])],
                              version=2, alignment=64, seed=3)
    yield "no-align-key", gguf([("k", STR, "v")], [("x", "F32", [4]), ("y", "BF16", [4, 2])],
                               write_alignment_key=False, seed=4)
    yield "dims-1-to-4", gguf([], [("d1", "F32", [4]), ("d2", "Q4_0", [32, 2]), ("d3", "F16", [2, 3, 2]),
                                   ("d4", "Q8_0", [32, 1, 2, 1])], seed=5)
    tokens = ["<unk>", "<s>", "</s>"] + ["<0x%02X>" % i for i in range(8)] + ["\u2581the", "\u2581a", "s"]
    llama = [
        ("general.architecture", STR, "llama"), ("general.name", STR, "tiny"),
        ("llama.block_count", U32, 1), ("llama.context_length", U32, 64),
        ("llama.embedding_length", U32, 32), ("llama.feed_forward_length", U32, 64),
        ("llama.attention.head_count", U32, 2), ("llama.attention.head_count_kv", U32, 1),
        ("llama.rope.freq_base", F32, 1e6), ("llama.attention.layer_norm_rms_epsilon", F32, 1e-5),
        ("llama.expert_count", U32, 2), ("llama.expert_used_count", U32, 1),
        ("llama.attention.sliding_window", U32, 16), ("general.file_type", U32, 7),
        ("tokenizer.ggml.model", STR, "llama"), ("tokenizer.ggml.tokens", ARR, (STR, tokens)),
        ("tokenizer.ggml.scores", ARR, (F32, [-float(i) for i in range(len(tokens))])),
        ("tokenizer.ggml.token_type", ARR, (I32, [2, 3, 3] + [6] * 8 + [1] * 3)),
        ("tokenizer.ggml.bos_token_id", U32, 1), ("tokenizer.ggml.eos_token_id", U32, 2),
        ("tokenizer.ggml.add_bos_token", BOOL, 1),
    ]
    llama_tensors = [
        ("token_embd.weight", "Q8_0", [32, len(tokens)]), ("output_norm.weight", "F32", [32]),
        ("blk.0.attn_q.weight", "Q8_0", [32, 32]), ("blk.0.ffn_gate_inp.weight", "F32", [32, 2]),
        ("blk.0.ffn_up_exps.weight", "Q8_0", [32, 4, 2]),
    ]
    yield "mini-llama", gguf(llama, llama_tensors, seed=6)


def main(argv):
    if len(argv) != 2:
        print("usage: %s OUTDIR" % argv[0], file=sys.stderr)
        return 2
    os.makedirs(argv[1], exist_ok=True)
    for name, data in seeds():
        with open(os.path.join(argv[1], name + ".gguf"), "wb") as fp:
            fp.write(data)
        print("%-16s %5d bytes" % (name, len(data)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
