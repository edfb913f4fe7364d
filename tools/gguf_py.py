#!/usr/bin/python3
"""gguf_py.py -- small self-contained GGUF (v2/v3) library for mixd's test tooling.

This file owns:
  * the GGUF container constants (metadata value types, ggml tensor types and
    their block sizes / byte sizes);
  * GGUFReader  -- parses header, metadata and tensor infos, gives raw tensor
    bytes (memory-mapped, no copy) plus dims (ggml `ne` order) and type;
  * dequantize() -- NumPy-vectorised dequantizers for F32, F16, BF16, Q4_0,
    Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K.  Every arithmetic step
    is done in float32 in the same order as ggml's reference C functions
    (dequantize_row_*), with no fused multiply-add, so the results are
    bit-identical to ggml's (checked by tests/python/test_quant_zoo_numpy.py);
  * quantize_q8_0() / quantize_q4_0() -- simple float->quant helpers (used by
    the random-model generator; not required to be bit-exact with ggml);
  * GGUFWriter  -- writes a GGUF v3 file (typed metadata, tensor infos, data
    aligned to general.alignment = 32), streaming tensor data one at a time.

Only the Python standard library and NumPy are used.

Conventions:
  * `ne` is ggml's dimension order: ne[0] is the fastest-varying dimension.
    A tensor with ne = [a, b, c] corresponds to a row-major NumPy array of
    shape (c, b, a); e.g. a weight with ne = [n_in, n_out] is a matrix of
    shape [n_out, n_in] and y = W @ x.
"""

import mmap
import struct

import numpy as np

# --------------------------------------------------------------------------
# Container constants
# --------------------------------------------------------------------------

GGUF_MAGIC = b"GGUF"
GGUF_DEFAULT_ALIGNMENT = 32

# Metadata value types (gguf_type in ggml).
GT_UINT8, GT_INT8, GT_UINT16, GT_INT16 = 0, 1, 2, 3
GT_UINT32, GT_INT32, GT_FLOAT32, GT_BOOL = 4, 5, 6, 7
GT_STRING, GT_ARRAY, GT_UINT64, GT_INT64, GT_FLOAT64 = 8, 9, 10, 11, 12

# struct format / numpy dtype for each scalar metadata type
_GT_SCALAR = {
    GT_UINT8: ("<B", np.uint8), GT_INT8: ("<b", np.int8),
    GT_UINT16: ("<H", np.uint16), GT_INT16: ("<h", np.int16),
    GT_UINT32: ("<I", np.uint32), GT_INT32: ("<i", np.int32),
    GT_FLOAT32: ("<f", np.float32), GT_BOOL: ("<?", np.bool_),
    GT_UINT64: ("<Q", np.uint64), GT_INT64: ("<q", np.int64),
    GT_FLOAT64: ("<d", np.float64),
}
GT_NAMES = {
    GT_UINT8: "uint8", GT_INT8: "int8", GT_UINT16: "uint16", GT_INT16: "int16",
    GT_UINT32: "uint32", GT_INT32: "int32", GT_FLOAT32: "float32",
    GT_BOOL: "bool", GT_STRING: "string", GT_ARRAY: "array",
    GT_UINT64: "uint64", GT_INT64: "int64", GT_FLOAT64: "float64",
}

# ggml tensor types
GGML_TYPE_F32, GGML_TYPE_F16 = 0, 1
GGML_TYPE_Q4_0, GGML_TYPE_Q4_1 = 2, 3
GGML_TYPE_Q5_0, GGML_TYPE_Q5_1 = 6, 7
GGML_TYPE_Q8_0, GGML_TYPE_Q8_1 = 8, 9
GGML_TYPE_Q2_K, GGML_TYPE_Q3_K, GGML_TYPE_Q4_K = 10, 11, 12
GGML_TYPE_Q5_K, GGML_TYPE_Q6_K, GGML_TYPE_Q8_K = 13, 14, 15
GGML_TYPE_I8, GGML_TYPE_I16, GGML_TYPE_I32 = 24, 25, 26
GGML_TYPE_I64, GGML_TYPE_F64 = 27, 28
GGML_TYPE_BF16 = 30

QK_K = 256

# type -> (name, elements per block, bytes per block)
GGML_TYPES = {
    GGML_TYPE_F32: ("F32", 1, 4),
    GGML_TYPE_F16: ("F16", 1, 2),
    GGML_TYPE_Q4_0: ("Q4_0", 32, 2 + 16),
    GGML_TYPE_Q4_1: ("Q4_1", 32, 2 + 2 + 16),
    GGML_TYPE_Q5_0: ("Q5_0", 32, 2 + 4 + 16),
    GGML_TYPE_Q5_1: ("Q5_1", 32, 2 + 2 + 4 + 16),
    GGML_TYPE_Q8_0: ("Q8_0", 32, 2 + 32),
    GGML_TYPE_Q8_1: ("Q8_1", 32, 2 + 2 + 32),
    GGML_TYPE_Q2_K: ("Q2_K", QK_K, 16 + 64 + 2 + 2),
    GGML_TYPE_Q3_K: ("Q3_K", QK_K, 32 + 64 + 12 + 2),
    GGML_TYPE_Q4_K: ("Q4_K", QK_K, 2 + 2 + 12 + 128),
    GGML_TYPE_Q5_K: ("Q5_K", QK_K, 2 + 2 + 12 + 32 + 128),
    GGML_TYPE_Q6_K: ("Q6_K", QK_K, 128 + 64 + 16 + 2),
    GGML_TYPE_Q8_K: ("Q8_K", QK_K, 4 + QK_K + 2 * QK_K // 16),
    GGML_TYPE_I8: ("I8", 1, 1),
    GGML_TYPE_I16: ("I16", 1, 2),
    GGML_TYPE_I32: ("I32", 1, 4),
    GGML_TYPE_I64: ("I64", 1, 8),
    GGML_TYPE_F64: ("F64", 1, 8),
    GGML_TYPE_BF16: ("BF16", 1, 2),
}
TYPE_BY_NAME = {v[0]: k for k, v in GGML_TYPES.items()}


def type_name(t):
    """Human-readable name of a ggml type id."""
    return GGML_TYPES[t][0] if t in GGML_TYPES else "type%d" % t


def type_from_name(name):
    """ggml type id from a name such as 'q4_k' or 'Q8_0' or 'f16'."""
    return TYPE_BY_NAME[name.upper()]


def tensor_nbytes(ne, ggml_type):
    """Number of bytes of a tensor with dims `ne` and type `ggml_type`."""
    _, blck, tsize = GGML_TYPES[ggml_type]
    if ne[0] % blck != 0:
        raise ValueError("ne[0]=%d is not a multiple of the %s block size %d"
                         % (ne[0], type_name(ggml_type), blck))
    n = 1
    for d in ne:
        n *= int(d)
    return n // blck * tsize


def row_nbytes(n, ggml_type):
    """Bytes of one row of `n` elements."""
    _, blck, tsize = GGML_TYPES[ggml_type]
    assert n % blck == 0
    return n // blck * tsize


# --------------------------------------------------------------------------
# Reader
# --------------------------------------------------------------------------

class TensorInfo(object):
    """One tensor of a GGUF file.

    name   : str
    ne     : list of int, ggml order (ne[0] fastest)
    type   : ggml type id
    offset : byte offset relative to the start of the data section
    nbytes : size in bytes
    """
    __slots__ = ("name", "ne", "type", "offset", "nbytes", "_reader")

    @property
    def shape(self):
        """NumPy (row-major) shape = reversed ne."""
        return tuple(reversed(self.ne))

    @property
    def n_elements(self):
        n = 1
        for d in self.ne:
            n *= d
        return n

    def raw(self):
        """Raw bytes as a uint8 NumPy array (a view of the mapped file)."""
        return self._reader.raw(self.name)

    def __repr__(self):
        return "TensorInfo(%r, ne=%r, type=%s)" % (self.name, self.ne,
                                                   type_name(self.type))


class GGUFReader(object):
    """Parse a GGUF v2/v3 file.

    Attributes:
      version        : int
      metadata       : dict key -> value.  Scalars are Python int/float/bool/
                       str; arrays of strings are lists of str; numeric arrays
                       are NumPy arrays.
      metadata_types : dict key -> (gguf type, array element type or None)
      tensors        : list of TensorInfo in file order
      alignment      : data alignment
      data_offset    : absolute file offset of the tensor data section
    """

    def __init__(self, path):
        self.path = path
        with open(path, "rb") as f:
            self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self._buf = np.frombuffer(self._mm, dtype=np.uint8)
        self._pos = 0
        self._parse()

    # -- low-level cursor helpers -------------------------------------------
    def _read(self, fmt):
        v = struct.unpack_from(fmt, self._mm, self._pos)
        self._pos += struct.calcsize(fmt)
        return v[0]

    def _read_str(self):
        n = self._read("<Q")
        b = self._mm[self._pos:self._pos + n]
        self._pos += n
        # surrogateescape keeps arbitrary (non-UTF-8) bytes round-trippable
        return b.decode("utf-8", errors="surrogateescape")

    def _read_value(self, vtype):
        if vtype == GT_STRING:
            return self._read_str(), None
        if vtype == GT_ARRAY:
            etype = self._read("<I")
            n = self._read("<Q")
            if etype == GT_STRING:
                return [self._read_str() for _ in range(n)], etype
            if etype == GT_ARRAY:
                # nested arrays are legal but unused by models; keep as list
                return [self._read_value(GT_ARRAY)[0] for _ in range(n)], etype
            fmt, dt = _GT_SCALAR[etype]
            size = struct.calcsize(fmt)
            arr = np.frombuffer(self._mm, dtype=np.dtype(dt).newbyteorder("<"),
                                count=n, offset=self._pos).copy()
            self._pos += n * size
            return arr, etype
        fmt, _ = _GT_SCALAR[vtype]
        v = self._read(fmt)
        if vtype == GT_BOOL:
            v = bool(v)
        return v, None

    # -- parsing ---------------------------------------------------------------
    def _parse(self):
        magic = self._mm[0:4]
        if magic != GGUF_MAGIC:
            raise ValueError("%s: not a GGUF file (magic %r)" % (self.path, magic))
        self._pos = 4
        self.version = self._read("<I")
        if self.version not in (2, 3):
            raise ValueError("%s: unsupported GGUF version %d" % (self.path, self.version))
        n_tensors = self._read("<Q")
        n_kv = self._read("<Q")

        self.metadata = {}
        self.metadata_types = {}
        self.metadata_order = []
        for _ in range(n_kv):
            key = self._read_str()
            vtype = self._read("<I")
            val, etype = self._read_value(vtype)
            self.metadata[key] = val
            self.metadata_types[key] = (vtype, etype)
            self.metadata_order.append(key)

        self.tensors = []
        self._by_name = {}
        for _ in range(n_tensors):
            ti = TensorInfo()
            ti.name = self._read_str()
            n_dims = self._read("<I")
            ti.ne = [int(self._read("<Q")) for _ in range(n_dims)]
            ti.type = self._read("<I")
            ti.offset = self._read("<Q")
            ti.nbytes = tensor_nbytes(ti.ne, ti.type) if ti.type in GGML_TYPES else None
            ti._reader = self
            self.tensors.append(ti)
            self._by_name[ti.name] = ti

        self.alignment = int(self.metadata.get("general.alignment", GGUF_DEFAULT_ALIGNMENT))
        self.data_offset = _align(self._pos, self.alignment)
        for ti in self.tensors:
            if ti.nbytes is not None and self.data_offset + ti.offset + ti.nbytes > len(self._mm):
                raise ValueError("%s: tensor %s extends past end of file" % (self.path, ti.name))

    # -- accessors -------------------------------------------------------------
    def __contains__(self, name):
        return name in self._by_name

    def tensor(self, name):
        """TensorInfo by name (KeyError if absent)."""
        return self._by_name[name]

    def get(self, key, default=None):
        """Metadata value by key."""
        return self.metadata.get(key, default)

    def raw(self, name):
        """Raw bytes of tensor `name` as a uint8 array view (no copy)."""
        ti = self._by_name[name]
        start = self.data_offset + ti.offset
        return self._buf[start:start + ti.nbytes]

    def raw_rows(self, name, first, count, row_len=None):
        """Raw bytes of `count` consecutive rows starting at `first`.

        A 'row' has ne[0] elements, unless row_len (elements) is given, e.g.
        row_len = ne[0]*ne[1] selects one 2-D slice (one expert) of a 3-D
        tensor.
        """
        ti = self._by_name[name]
        rb = row_nbytes(row_len or ti.ne[0], ti.type)
        start = self.data_offset + ti.offset + first * rb
        return self._buf[start:start + count * rb]

    def dequantize(self, name):
        """Whole tensor as float32 with NumPy shape reversed(ne)."""
        ti = self._by_name[name]
        return dequantize(self.raw(name), ti.type, ti.n_elements).reshape(ti.shape)

    def close(self):
        self._buf = None
        try:
            self._mm.close()
        except BufferError:
            # views still alive elsewhere; the map is freed when they die
            pass


def _align(x, a):
    return (x + a - 1) // a * a


# --------------------------------------------------------------------------
# Dequantization
#
# Each dequantizer takes the raw bytes (uint8 array) and returns float32 of
# n_blocks * block_size elements.  Integers are converted to float32 exactly,
# and every float multiply/subtract is a separate float32 NumPy operation in
# the same order as in ggml's dequantize_row_* (C float semantics, no FMA).
# --------------------------------------------------------------------------

_F32 = np.float32


def _blocks(raw, ggml_type):
    """View raw bytes as [n_blocks, bytes_per_block]."""
    _, _, tsize = GGML_TYPES[ggml_type]
    raw = np.asarray(raw, dtype=np.uint8).reshape(-1)
    if raw.size % tsize != 0:
        raise ValueError("%s: %d bytes is not a whole number of blocks"
                         % (type_name(ggml_type), raw.size))
    return raw.reshape(-1, tsize)


def _f16(b, off):
    """fp16 field at byte `off` of every block -> float32 [nb, 1] (exact)."""
    return b[:, off:off + 2].copy().view("<f2").astype(_F32)


def _deq_f32(raw):
    return np.asarray(raw, dtype=np.uint8).view("<f4").astype(_F32)


def _deq_f16(raw):
    return np.asarray(raw, dtype=np.uint8).view("<f2").astype(_F32)


def _deq_bf16(raw):
    u = np.asarray(raw, dtype=np.uint8).view("<u2").astype(np.uint32) << 16
    return u.view(_F32)


def _deq_q4_0(raw):
    # block: half d; uint8 qs[16].  y[j] = (lo(qs[j]) - 8)*d, y[j+16] = (hi - 8)*d
    b = _blocks(raw, GGML_TYPE_Q4_0)
    d = _f16(b, 0)
    qs = b[:, 2:18]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.int16) - 8
    return (q.astype(_F32) * d).reshape(-1)


def _deq_q4_1(raw):
    # block: half d; half m; uint8 qs[16].  y = q*d + m
    b = _blocks(raw, GGML_TYPE_Q4_1)
    d = _f16(b, 0)
    m = _f16(b, 2)
    qs = b[:, 4:20]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=1)
    return (q.astype(_F32) * d + m).reshape(-1)


def _q5_high_bits(qh_bytes):
    """qh (4 bytes, little-endian uint32) -> the 32 fifth bits as 0/16 ints."""
    qh = qh_bytes.copy().view("<u4").astype(np.uint32)  # [nb, 1]
    j = np.arange(32, dtype=np.uint32)
    return (((qh >> j) & 1) << 4).astype(np.int16)  # [nb, 32]


def _deq_q5_0(raw):
    # block: half d; uint8 qh[4]; uint8 qs[16]
    # x0 = (lo(qs[j]) | bit j of qh << 4) - 16 ; x1 = (hi(qs[j]) | bit j+16 << 4) - 16
    b = _blocks(raw, GGML_TYPE_Q5_0)
    d = _f16(b, 0)
    hb = _q5_high_bits(b[:, 2:6])
    qs = b[:, 6:22]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.int16)
    q = (q | hb) - 16
    return (q.astype(_F32) * d).reshape(-1)


def _deq_q5_1(raw):
    # block: half d; half m; uint8 qh[4]; uint8 qs[16].  y = q*d + m
    b = _blocks(raw, GGML_TYPE_Q5_1)
    d = _f16(b, 0)
    m = _f16(b, 2)
    hb = _q5_high_bits(b[:, 4:8])
    qs = b[:, 8:24]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.int16) | hb
    return (q.astype(_F32) * d + m).reshape(-1)


def _deq_q8_0(raw):
    # block: half d; int8 qs[32].  y = q*d
    b = _blocks(raw, GGML_TYPE_Q8_0)
    d = _f16(b, 0)
    q = b[:, 2:34].view(np.int8)
    return (q.astype(_F32) * d).reshape(-1)


def _deq_q2_k(raw):
    # block: uint8 scales[16]; uint8 qs[64]; half d; half dmin.
    # For each 128-element half n (qs[32n..32n+32]) and shift step j (0..3):
    #   sub-block 2j   uses qs[l]    l<16, sub-block 2j+1 uses qs[l+16]
    #   dl = d*(sc & 0xF); ml = dmin*(sc >> 4); y = dl*q - ml, q = (qs >> 2j) & 3
    b = _blocks(raw, GGML_TYPE_Q2_K)
    nb = b.shape[0]
    sc = b[:, 0:16]
    qs = b[:, 16:80].reshape(nb, 2, 1, 32)          # [nb, half, 1, 32]
    d = _f16(b, 80)
    dmin = _f16(b, 82)
    shifts = np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 4, 1)
    q = (qs >> shifts) & 3                            # [nb, half, j, 32]
    q = q.reshape(nb, 16, 16).astype(_F32)            # sub-block index = 8*half+2j+(l>=16)
    dl = d * (sc & 0xF).astype(_F32)                  # [nb, 16]
    ml = dmin * (sc >> 4).astype(_F32)
    y = dl[:, :, None] * q - ml[:, :, None]
    return y.reshape(-1)


def _unpack_q3_k_scales(s):
    """12 packed bytes -> 16 signed 6-bit scales (already minus 32), int16.

    Mirrors ggml's aux[] shuffling: scale i (i<8 in aux[0..1], i>=8 in aux[2..3])
    low 4 bits come from byte (i mod 8) low nibble (i<8) or high nibble (i>=8),
    high 2 bits come from byte 8 + (i mod 4), bits 2*(i div 4).
    """
    s = s.astype(np.int16)
    i = np.arange(16)
    low = np.where(i < 8, s[:, i % 8] & 0x0F, s[:, i % 8] >> 4)
    high = (s[:, 8 + (i % 4)] >> (2 * (i // 4))) & 3
    return (low | (high << 4)) - 32


def _deq_q3_k(raw):
    # block: uint8 hmask[32]; uint8 qs[64]; uint8 scales[12]; half d.
    # Same traversal as Q2_K; the third bit is hmask[l(+16)] bit m where
    # m = 4*half + j; dl = d*(scale-32); y = dl*(q - (hbit ? 0 : 4)).
    b = _blocks(raw, GGML_TYPE_Q3_K)
    nb = b.shape[0]
    hm = b[:, 0:32]
    qs = b[:, 32:96].reshape(nb, 2, 1, 32)
    scales = _unpack_q3_k_scales(b[:, 96:108])        # [nb, 16]
    d = _f16(b, 108)
    shifts = np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 4, 1)
    q = ((qs >> shifts) & 3).astype(np.int16)          # [nb, 2, 4, 32]
    mbit = np.arange(8, dtype=np.uint8).reshape(1, 2, 4, 1)
    h = (hm.reshape(nb, 1, 1, 32) >> mbit) & 1          # [nb, 2, 4, 32]
    q = q - np.where(h != 0, 0, 4).astype(np.int16)
    q = q.reshape(nb, 16, 16).astype(_F32)
    dl = d * scales.astype(_F32)
    y = dl[:, :, None] * q
    return y.reshape(-1)


def _k4_scales_mins(s):
    """Q4_K/Q5_K packed 12 bytes -> (scales[8], mins[8]) as uint8 (6 bits).

    ggml's get_scale_min_k4(j):
      j < 4 : sc = q[j] & 63,                       m = q[j+4] & 63
      j >= 4: sc = (q[j+4] & 0xF) | ((q[j-4] >> 6) << 4),
              m  = (q[j+4] >> 4)  | ((q[j]   >> 6) << 4)
    """
    sc = np.empty((s.shape[0], 8), dtype=np.uint8)
    mn = np.empty((s.shape[0], 8), dtype=np.uint8)
    sc[:, 0:4] = s[:, 0:4] & 63
    mn[:, 0:4] = s[:, 4:8] & 63
    sc[:, 4:8] = (s[:, 8:12] & 0x0F) | ((s[:, 0:4] >> 6) << 4)
    mn[:, 4:8] = (s[:, 8:12] >> 4) | ((s[:, 4:8] >> 6) << 4)
    return sc, mn


def _deq_q4_k(raw):
    # block: half d; half dmin; uint8 scales[12]; uint8 qs[128].
    # 4 chunks of 64: sub-block 2c uses low nibbles of qs[32c..], 2c+1 high.
    # d1 = d*sc; m1 = dmin*m; y = d1*q - m1
    b = _blocks(raw, GGML_TYPE_Q4_K)
    nb = b.shape[0]
    d = _f16(b, 0)
    dmin = _f16(b, 2)
    sc, mn = _k4_scales_mins(b[:, 4:16])
    qs = b[:, 16:144].reshape(nb, 4, 1, 32)
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=2).reshape(nb, 8, 32).astype(_F32)
    d1 = d * sc.astype(_F32)
    m1 = dmin * mn.astype(_F32)
    y = d1[:, :, None] * q - m1[:, :, None]
    return y.reshape(-1)


def _deq_q5_k(raw):
    # block: half d; half dmin; uint8 scales[12]; uint8 qh[32]; uint8 qs[128].
    # Like Q4_K; sub-block s gets fifth bit (qh[l] >> s) & 1 (worth 16).
    b = _blocks(raw, GGML_TYPE_Q5_K)
    nb = b.shape[0]
    d = _f16(b, 0)
    dmin = _f16(b, 2)
    sc, mn = _k4_scales_mins(b[:, 4:16])
    qh = b[:, 16:48].reshape(nb, 1, 32)
    qs = b[:, 48:176].reshape(nb, 4, 1, 32)
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=2).reshape(nb, 8, 32)
    sbit = np.arange(8, dtype=np.uint8).reshape(1, 8, 1)
    q = (q | (((qh >> sbit) & 1) << 4)).astype(_F32)
    d1 = d * sc.astype(_F32)
    m1 = dmin * mn.astype(_F32)
    y = d1[:, :, None] * q - m1[:, :, None]
    return y.reshape(-1)


def _deq_q6_k(raw):
    # block: uint8 ql[128]; uint8 qh[64]; int8 scales[16]; half d.
    # Two halves of 128; in half n with ql = ql[64n..], qh = qh[32n..], l<32:
    #   q1 = (ql[l]    & 0xF) | ((qh[l] >> 0) & 3) << 4   -> y[l]
    #   q2 = (ql[l+32] & 0xF) | ((qh[l] >> 2) & 3) << 4   -> y[l+32]
    #   q3 = (ql[l]    >> 4)  | ((qh[l] >> 4) & 3) << 4   -> y[l+64]
    #   q4 = (ql[l+32] >> 4)  | ((qh[l] >> 6) & 3) << 4   -> y[l+96]
    # minus 32; y = (d*sc[8n + l/16 + 2k]) * q  (16-element sub-blocks).
    b = _blocks(raw, GGML_TYPE_Q6_K)
    nb = b.shape[0]
    ql = b[:, 0:128].reshape(nb, 2, 2, 32)     # [nb, half, l>=32, l]
    qh = b[:, 128:192].reshape(nb, 2, 1, 32)
    sc = b[:, 192:208].view(np.int8)
    d = _f16(b, 208)
    lo = ql & 0x0F                              # q1, q2
    hi = ql >> 4                                # q3, q4
    nib = np.concatenate([lo, hi], axis=2)      # [nb, half, 4, 32]  (k = 0..3)
    shifts = np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 4, 1)
    h = (qh >> shifts) & 3
    q = (nib | (h << 4)).astype(np.int16) - 32  # [nb, 2, 4, 32]
    q = q.reshape(nb, 16, 16).astype(_F32)      # sub-block = 8*half + 2k + l/16
    ds = d * sc.astype(_F32)                    # [nb, 16]
    y = ds[:, :, None] * q
    return y.reshape(-1)


_DEQUANTIZERS = {
    GGML_TYPE_F32: _deq_f32,
    GGML_TYPE_F16: _deq_f16,
    GGML_TYPE_BF16: _deq_bf16,
    GGML_TYPE_Q4_0: _deq_q4_0,
    GGML_TYPE_Q4_1: _deq_q4_1,
    GGML_TYPE_Q5_0: _deq_q5_0,
    GGML_TYPE_Q5_1: _deq_q5_1,
    GGML_TYPE_Q8_0: _deq_q8_0,
    GGML_TYPE_Q2_K: _deq_q2_k,
    GGML_TYPE_Q3_K: _deq_q3_k,
    GGML_TYPE_Q4_K: _deq_q4_k,
    GGML_TYPE_Q5_K: _deq_q5_k,
    GGML_TYPE_Q6_K: _deq_q6_k,
}
SUPPORTED_TYPES = sorted(_DEQUANTIZERS)


def dequantize(raw, ggml_type, n_elements=None, chunk_blocks=1 << 16):
    """Dequantize raw bytes of type `ggml_type` to a flat float32 array.

    Large inputs are processed in chunks of `chunk_blocks` blocks to bound the
    temporary memory of the vectorised code.
    """
    if ggml_type not in _DEQUANTIZERS:
        raise NotImplementedError("dequantize: unsupported type %s" % type_name(ggml_type))
    fn = _DEQUANTIZERS[ggml_type]
    raw = np.asarray(raw, dtype=np.uint8).reshape(-1)
    _, blck, tsize = GGML_TYPES[ggml_type]
    nblocks = raw.size // tsize
    if n_elements is not None and n_elements != nblocks * blck:
        raise ValueError("dequantize: %d bytes of %s hold %d elements, expected %d"
                         % (raw.size, type_name(ggml_type), nblocks * blck, n_elements))
    if nblocks <= chunk_blocks:
        return fn(raw)
    out = np.empty(nblocks * blck, dtype=_F32)
    for b0 in range(0, nblocks, chunk_blocks):
        b1 = min(nblocks, b0 + chunk_blocks)
        out[b0 * blck:b1 * blck] = fn(raw[b0 * tsize:b1 * tsize])
    return out


# --------------------------------------------------------------------------
# Simple quantizers (float32 -> raw bytes).  Straightforward round-to-nearest
# schemes in the spirit of ggml's reference ones; used to make plausible
# random weights, not guaranteed bit-identical to llama-quantize.
# --------------------------------------------------------------------------

def quantize_q8_0(x):
    """float array (size multiple of 32) -> Q8_0 raw bytes (uint8 array)."""
    x = np.asarray(x, dtype=np.float32).reshape(-1, 32)
    amax = np.abs(x).max(axis=1, keepdims=True)
    d = amax / 127.0
    inv = np.where(d > 0, 1.0 / np.where(d > 0, d, 1), 0).astype(np.float32)
    q = np.clip(np.rint(x * inv), -127, 127).astype(np.int8)
    out = np.empty((x.shape[0], 34), dtype=np.uint8)
    out[:, 0:2] = d.astype("<f2").view(np.uint8)
    out[:, 2:34] = q.view(np.uint8)
    return out.reshape(-1)


def quantize_q4_0(x):
    """float array (size multiple of 32) -> Q4_0 raw bytes (uint8 array)."""
    x = np.asarray(x, dtype=np.float32).reshape(-1, 32)
    # ggml: d = max / -8 where max is the signed value of largest magnitude
    idx = np.abs(x).argmax(axis=1)
    mx = x[np.arange(x.shape[0]), idx][:, None]
    d = mx / -8.0
    inv = np.where(d != 0, 1.0 / np.where(d != 0, d, 1), 0).astype(np.float32)
    q = np.clip(np.floor(x * inv + 8.5), 0, 15).astype(np.uint8)
    out = np.empty((x.shape[0], 18), dtype=np.uint8)
    out[:, 0:2] = d.astype("<f2").view(np.uint8)
    out[:, 2:18] = q[:, 0:16] | (q[:, 16:32] << 4)
    return out.reshape(-1)


# --------------------------------------------------------------------------
# Writer
# --------------------------------------------------------------------------

class GGUFWriter(object):
    """Write a GGUF v3 file, streaming tensor data.

    Usage:
        w = GGUFWriter(path)
        w.add_string("general.architecture", "llama")
        w.add_uint32("llama.block_count", 2)
        w.add_tensor_info("token_embd.weight", [n_embd, n_vocab], GGML_TYPE_F16)
        ...
        w.write_header()                         # header + metadata + infos
        w.write_tensor_data("token_embd.weight", raw_bytes)   # in declared order
        ...
        w.close()

    Metadata values are typed: add_kv(key, gtype, value[, elem_type]).
    general.alignment (uint32 32) is always written first.
    """

    def __init__(self, path, alignment=GGUF_DEFAULT_ALIGNMENT):
        self.path = path
        self.alignment = alignment
        self.kv = []            # (key, gtype, value, etype)
        self._keys = set()
        self.tinfos = []        # (name, ne, type, offset, nbytes)
        self._data_size = 0
        self._next = 0          # index of the next tensor to write
        self._f = None
        self.add_uint32("general.alignment", alignment)

    # -- metadata ----------------------------------------------------------
    def add_kv(self, key, gtype, value, etype=None):
        if key in self._keys:
            raise ValueError("duplicate metadata key %s" % key)
        if gtype == GT_ARRAY and etype is None:
            raise ValueError("array key %s needs an element type" % key)
        self._keys.add(key)
        self.kv.append((key, gtype, value, etype))

    def add_uint32(self, k, v): self.add_kv(k, GT_UINT32, int(v))
    def add_int32(self, k, v): self.add_kv(k, GT_INT32, int(v))
    def add_uint64(self, k, v): self.add_kv(k, GT_UINT64, int(v))
    def add_float32(self, k, v): self.add_kv(k, GT_FLOAT32, float(v))
    def add_bool(self, k, v): self.add_kv(k, GT_BOOL, bool(v))
    def add_string(self, k, v): self.add_kv(k, GT_STRING, v)
    def add_array(self, k, etype, values): self.add_kv(k, GT_ARRAY, values, etype)

    def add_from_reader(self, reader, key):
        """Copy one metadata key with its exact type from a GGUFReader."""
        gtype, etype = reader.metadata_types[key]
        self.add_kv(key, gtype, reader.metadata[key], etype)

    # -- tensors -----------------------------------------------------------
    def add_tensor_info(self, name, ne, ggml_type):
        ne = [int(d) for d in ne]
        nbytes = tensor_nbytes(ne, ggml_type)
        off = _align(self._data_size, self.alignment)
        self.tinfos.append((name, ne, ggml_type, off, nbytes))
        self._data_size = off + nbytes

    # -- serialisation -----------------------------------------------------
    @staticmethod
    def _str(s):
        b = s.encode("utf-8", errors="surrogateescape") if isinstance(s, str) else bytes(s)
        return struct.pack("<Q", len(b)) + b

    def _value(self, gtype, v, etype=None):
        if gtype == GT_STRING:
            return self._str(v)
        if gtype == GT_ARRAY:
            n = len(v)
            head = struct.pack("<IQ", etype, n)
            if etype == GT_STRING:
                return head + b"".join(self._str(s) for s in v)
            if etype == GT_ARRAY:
                raise NotImplementedError("nested arrays")
            _, dt = _GT_SCALAR[etype]
            return head + np.asarray(v, dtype=np.dtype(dt).newbyteorder("<")).tobytes()
        fmt, _ = _GT_SCALAR[gtype]
        return struct.pack(fmt, v)

    def write_header(self):
        """Write header, metadata and tensor infos, padded to the alignment."""
        self._f = open(self.path, "wb")
        parts = [GGUF_MAGIC, struct.pack("<IQQ", 3, len(self.tinfos), len(self.kv))]
        for key, gtype, v, etype in self.kv:
            parts.append(self._str(key) + struct.pack("<I", gtype) + self._value(gtype, v, etype))
        for name, ne, t, off, _ in self.tinfos:
            parts.append(self._str(name) + struct.pack("<I", len(ne))
                         + b"".join(struct.pack("<Q", d) for d in ne)
                         + struct.pack("<IQ", t, off))
        head = b"".join(parts)
        head += b"\0" * (_align(len(head), self.alignment) - len(head))
        self._f.write(head)
        self._data_start = len(head)

    def write_tensor_data(self, name, data):
        """Write the next tensor's raw bytes (must follow declaration order).

        `data` is a NumPy array / bytes object holding the whole tensor, or an
        iterable of such chunks (written in order) so that huge tensors can be
        produced piecewise without holding them in memory.
        """
        tname, ne, t, off, nbytes = self.tinfos[self._next]
        if tname != name:
            raise ValueError("expected data for %s, got %s" % (tname, name))
        pos = self._f.tell() - self._data_start
        assert pos <= off
        self._f.write(b"\0" * (off - pos))
        chunks = [data] if isinstance(data, (np.ndarray, bytes, bytearray, memoryview)) else data
        total = 0
        for c in chunks:
            if isinstance(c, (bytes, bytearray, memoryview)):
                c = np.frombuffer(c, dtype=np.uint8)
            buf = np.ascontiguousarray(c).view(np.uint8).reshape(-1)
            total += buf.size
            if total > nbytes:
                raise ValueError("%s: more than %d bytes given" % (name, nbytes))
            self._f.write(memoryview(buf))
        if total != nbytes:
            raise ValueError("%s: %d bytes given, %d expected" % (name, total, nbytes))
        self._next += 1

    def close(self):
        if self._f is None:
            return
        if self._next != len(self.tinfos):
            raise ValueError("only %d of %d tensors written" % (self._next, len(self.tinfos)))
        # pad the file end to the alignment too (as ggml does)
        pos = self._f.tell() - self._data_start
        self._f.write(b"\0" * (_align(pos, self.alignment) - pos))
        self._f.close()
        self._f = None


def write_gguf(path, metadata, tensors):
    """One-shot convenience writer.

    metadata : list of (key, gtype, value) or (key, gtype, value, etype)
    tensors  : list of (name, ne, ggml_type, raw_bytes)
    """
    w = GGUFWriter(path)
    for item in metadata:
        w.add_kv(*item)
    for name, ne, t, _ in tensors:
        w.add_tensor_info(name, ne, t)
    w.write_header()
    for name, _, _, data in tensors:
        w.write_tensor_data(name, data)
    w.close()


# --------------------------------------------------------------------------
# Command line: dump a file's metadata and tensor table
# --------------------------------------------------------------------------

def _describe_value(v, gtype, etype):
    if gtype == GT_ARRAY:
        n = len(v)
        head = list(v[:5]) if etype == GT_STRING else [x.item() for x in v[:5]]
        return "[%s x %d] %r%s" % (GT_NAMES.get(etype, etype), n, head, " ..." if n > 5 else "")
    return "%s %r" % (GT_NAMES.get(gtype, gtype), v)


def main(argv):
    import argparse
    ap = argparse.ArgumentParser(description="Dump a GGUF file's metadata and tensors.")
    ap.add_argument("file")
    ap.add_argument("--no-tensors", action="store_true")
    a = ap.parse_args(argv)
    r = GGUFReader(a.file)
    print("GGUF v%d, %d metadata keys, %d tensors, alignment %d, data at %d"
          % (r.version, len(r.metadata), len(r.tensors), r.alignment, r.data_offset))
    for k in r.metadata_order:
        gtype, etype = r.metadata_types[k]
        print("  %-45s %s" % (k, _describe_value(r.metadata[k], gtype, etype)))
    if not a.no_tensors:
        for t in r.tensors:
            print("  %-40s %-6s ne=%s" % (t.name, type_name(t.type), t.ne))
    return 0


if __name__ == "__main__":
    import sys
    sys.exit(main(sys.argv[1:]))
