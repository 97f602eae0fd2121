"""The benchmark's vector store (training/vectorstore.py): it returns the encoder's own vectors, reads them
back in a later process without encoding, keeps the recorded encoding time, refuses another embedder's
vectors, and a default build served from it is the build the encoder gives."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engine import Matcher
from training.vectorstore import StoredVectors, build_texts, fill

DEMO_KB = Path(__file__).resolve().parents[1] / "models" / "demo-shop-kb.csv"


class HashEmbedder:
    """Deterministic character-bigram hashing vectors: cheap, and different texts differ."""

    dim = 64

    def __init__(self, name: str = "hash", delay: float = 0.0) -> None:
        self.name, self.delay, self.texts = name, delay, []

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        self.texts.extend(texts)
        if self.delay:
            time.sleep(self.delay)
        out = np.zeros((len(texts), self.dim), np.float32)
        for i, t in enumerate(texts):
            for a, b in zip(t, t[1:] + " ", strict=True):
                h = int.from_bytes(hashlib.md5((a + b).encode()).digest()[:4], "little")
                out[i, h % self.dim] += 1.0
            n = np.linalg.norm(out[i])
            out[i] /= n if n else 1.0
        return out

    def spec(self) -> dict[str, Any]:
        return {"backend": self.name}


def test_vectors_come_back_from_disk_without_encoding(tmp_path: Path) -> None:
    texts = ["能开专票吗", "多久发货", "能开专票吗", "退货运费谁出"]
    first = HashEmbedder(delay=0.01)
    store = StoredVectors(tmp_path, inner=first)
    got = store.encode(texts)
    np.testing.assert_array_equal(got, HashEmbedder().encode(texts))
    assert store.encoded_ == 3 and store.fresh_seconds_ > 0
    store.flush()

    second = HashEmbedder()
    again = StoredVectors(tmp_path, inner=second)
    assert len(again) == 3  # the repeated text is stored once
    np.testing.assert_array_equal(again.encode(texts), got)
    assert second.texts == [] and again.fresh_seconds_ == 0
    # the recorded encoding time is carried: three stored vectors, one of them asked for twice
    assert again.used_seconds_ == pytest.approx(store.fresh_seconds_ * 4 / 3, rel=0.01)
    assert again.used_seconds_ > 0


def test_a_store_of_another_embedders_vectors_is_refused(tmp_path: Path) -> None:
    StoredVectors(tmp_path, inner=HashEmbedder("a")).encode(["x"])
    with pytest.raises(ValueError, match=str(tmp_path)):
        StoredVectors(tmp_path, inner=HashEmbedder("b"))


def test_an_unflushed_store_loses_nothing_it_wrote_and_fill_resumes(tmp_path: Path) -> None:
    store = StoredVectors(tmp_path, inner=HashEmbedder())
    store.encode(["a 1", "b 2"])  # never flushed: a stopped fill loses only this
    assert not list(tmp_path.glob("chunk-*"))
    filled = fill(DEMO_KB, tmp_path, inner=HashEmbedder())
    n = len(set(build_texts(DEMO_KB)))
    assert len(filled) == n and len(list(tmp_path.glob("chunk-*.npz"))) == 1
    inner = HashEmbedder()
    again = fill(DEMO_KB, tmp_path, inner=inner)  # a second fill has nothing to do
    assert len(again) == n and again.encoded_ == 0 and inner.texts == []


def test_a_build_from_the_store_equals_the_encoders_build(tmp_path: Path) -> None:
    fill(DEMO_KB, tmp_path, inner=HashEmbedder())
    counting = HashEmbedder()
    stored = Matcher.build(DEMO_KB, embedder=StoredVectors(tmp_path, inner=counting))
    direct = Matcher.build(DEMO_KB, embedder=HashEmbedder())
    assert not set(counting.texts) & set(build_texts(DEMO_KB))  # no KB question was encoded again
    assert stored.dense_index is not None and direct.dense_index is not None
    np.testing.assert_array_equal(stored.dense_index.vectors_, direct.dense_index.vectors_)
    for q in ["能开专票吗", "几天能到货", "怎么退货"]:
        a, b = stored.match(q), direct.match(q)
        assert [c.entry_id for c in a.candidates] == [c.entry_id for c in b.candidates]


def test_the_scale_benchmark_reads_the_store_and_counts_its_encoding_time(tmp_path: Path) -> None:
    from training.scale import _kefu

    queries = ["能开专票吗", "几天能到货", "怎么退货", "你们是正品吗"]
    first = _kefu(DEMO_KB, queries, dense=True, store_dir=tmp_path / "store")
    second = _kefu(DEMO_KB, queries, dense=True, store_dir=tmp_path / "store")
    n = len(build_texts(DEMO_KB))
    assert first["vectors_stored"] < n <= second["vectors_stored"]
    # the second build encoded nothing itself, yet reports the stored vectors' encoding time
    assert second["encode_s"] == pytest.approx(first["encode_s"], rel=0.05)
    assert second["build_s"] >= second["encode_s"]
    assert len(second["latency_ms"]) == len(queries) and second["ann_recall5"] == 1.0
