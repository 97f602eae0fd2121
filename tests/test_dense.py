"""The dense channel's exact search of a large KB in two passes (int8 codes, then float32): the same
rows as one float32 product, on both kernel backends, and codes that are saved and reloaded."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engine import Matcher, kernels
from engine.dense import INT8_MIN_ROWS, DenseIndex, quantize_rows


def clustered(n: int, d: int, seed: int = 0) -> np.ndarray:
    """Unit vectors in tight groups, as paraphrases of one question are: near-ties everywhere."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((n // 8, d)).astype(np.float32)
    x = centers[rng.integers(0, len(centers), n)] + 0.25 * rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def exact(index: DenseIndex, q: np.ndarray, k: int) -> np.ndarray:
    sims = np.asarray(index.vectors_ @ q)
    return np.argsort(-sims, kind="stable")[:k]


@pytest.mark.parametrize("d", [64, 384])
def test_two_passes_return_the_exact_top_k(d: int) -> None:
    x = clustered(INT8_MIN_ROWS + 1500, d)
    index = DenseIndex().fit(x)
    assert index.kind_ == "flat" and index.codes_ is not None and index.codes_.dtype == np.int8
    rng = np.random.default_rng(1)
    queries = [x[i] + 0.1 * rng.standard_normal(d).astype(np.float32) for i in rng.integers(0, len(x), 150)]
    queries += list(rng.standard_normal((50, d)).astype(np.float32))
    for q in queries:
        q = index.prepare(q)
        for k in (5, 30):
            rows, sims = index.search(q, k)
            np.testing.assert_array_equal(rows, exact(index, q.reshape(-1), k))
            np.testing.assert_allclose(sims, np.asarray(index.vectors_ @ q.reshape(-1))[rows], rtol=1e-6)


def test_a_small_index_keeps_one_float32_pass() -> None:
    index = DenseIndex().fit(clustered(INT8_MIN_ROWS - 1, 32))
    assert index.codes_ is None and index.code_scale_ is None


def test_codes_reconstruct_the_vectors_within_half_a_step() -> None:
    x = clustered(3000, 48)
    codes, scale = quantize_rows(x)
    assert codes.dtype == np.int8 and np.abs(codes).max() == 127
    assert np.all(np.abs(codes * scale - x) <= scale / 2 + 1e-7)


def test_int8_kernels_agree() -> None:
    rng = np.random.default_rng(2)
    codes = rng.integers(-127, 128, (2000, 384)).astype(np.int8)
    q = rng.standard_normal(384).astype(np.float32)
    ref = kernels.int8_scores(codes, q, use="numpy")
    np.testing.assert_allclose(ref, codes.astype(np.float64) @ q, rtol=1e-4, atol=1e-3)
    if kernels._HAVE_NUMBA:
        codes.flags.writeable = False  # as a loaded model maps them
        np.testing.assert_allclose(kernels.int8_scores(codes, q, use="numba"), ref, rtol=1e-4, atol=1e-3)


class HashEmbedder:
    """Character-bigram hashing vectors: cheap, deterministic, different texts differ."""

    name = "hash"
    dim = 64

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), np.float32)
        for i, t in enumerate(texts):
            for a, b in zip(t, t[1:] + " ", strict=True):
                out[i, int.from_bytes(hashlib.md5((a + b).encode()).digest()[:4], "little") % self.dim] += 1
            out[i] /= max(float(np.linalg.norm(out[i])), 1e-6)
        return out

    def spec(self) -> dict[str, Any]:
        return {"backend": self.name}


def test_codes_are_saved_and_a_model_saved_without_them_gets_them_on_load(tmp_path: Path) -> None:
    kb = [
        {"id": f"e{i}", "question": f"第{i}号商品的{w}怎么样", "answer": "好"}
        for i, w in enumerate(["电池", "屏幕", "发货", "保修", "颜色", "尺寸"] * (INT8_MIN_ROWS // 6 + 50))
    ]
    emb = HashEmbedder()
    m = Matcher.build(kb, embedder=emb)
    assert m.dense_index is not None and m.dense_index.codes_ is not None
    path = m.save(tmp_path / "model")
    assert (path / "dense_codes.npy").is_file()
    again = Matcher.load(path, embedder=emb)
    assert again.dense_index is not None and again.dense_index.codes_ is not None
    np.testing.assert_array_equal(again.dense_index.codes_, m.dense_index.codes_)
    # an older model: no codes in its directory
    import json

    manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
    manifest["arrays"] = [a for a in manifest["arrays"] if not a.startswith("dense_code")]
    for name in ("dense_codes", "dense_code_scale"):
        manifest["files"].pop(f"{name}.npy")
        (path / f"{name}.npy").unlink()
    (path / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    old = Matcher.load(path, embedder=emb)
    assert old.dense_index is not None and old.dense_index.codes_ is not None
    for q in ["第12号商品的电池怎么样", "屏幕好不好", "保修多久"]:
        assert [c.entry_id for c in old.match(q).candidates] == [c.entry_id for c in m.match(q).candidates]
