"""The dense-skip cascade (engine.cascade): its learned threshold, what a skip does and does not do, and
that it survives save and load."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engine import Matcher
from engine.cascade import skip_threshold
from engine.normalize import strip_placeholders
from engine.results import Decision
from tests.conftest import shared_set


def test_the_skip_threshold_is_the_lowest_meeting_precision_and_agreement() -> None:
    p = np.array([0.5, 0.99, 0.97, 0.98, 0.96])
    correct = np.array([1, 1, 1, 1, 0])
    agree = np.array([0, 1, 1, 1, 1])
    w = np.ones(5)
    # sorted: .99 .98 .97 .96 .5 -> precision 1 1 1 .75 .8, agreement 1 1 1 1 .8
    assert skip_threshold(p, correct, agree, w, 0.75, None) == pytest.approx(0.96)
    assert skip_threshold(p, correct, agree, w, 0.9, None) == pytest.approx(0.97)
    assert skip_threshold(p, correct, agree, w, 0.75, None, min_agreement=0.8) == pytest.approx(0.5)
    assert skip_threshold(p, correct, np.zeros(5), w, 0.5, None) is None
    # with a lower confidence bound three right answers are not enough evidence for 0.9
    assert skip_threshold(p, correct, agree, w, 0.9, 0.8) is None


class CountingEmbedder:
    """Counts the texts the encoder really encodes (cache misses)."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.dim, self.texts = inner, inner.dim, []

    def encode(self, texts: Any) -> Any:
        self.texts.extend(texts)
        return self.inner.encode(texts)

    def spec(self) -> dict[str, Any]:
        return self.inner.spec()


@pytest.fixture(scope="module")
def smp(tmp_path_factory: pytest.TempPathFactory) -> tuple[Matcher, list[tuple[str, str]]]:
    data = shared_set("smp2017")
    path = Matcher.build(data / "kb.csv").save(tmp_path_factory.mktemp("smp") / "model")
    m = Matcher.load(path)
    with open(data / "queries.csv", encoding="utf-8") as f:
        queries = [(r["query"], r["expected_id"]) for r in csv.DictReader(f)][:300]
    return m, queries


def test_a_kb_whose_words_separate_its_entries_gets_a_cascade(smp: tuple[Matcher, Any]) -> None:
    m, _ = smp
    assert m.cascade_ is not None
    report = m.info["calibration"]["cascade"]
    assert report["t_skip"] == pytest.approx(m.cascade_.t_skip, abs=1e-4)
    assert 0 < report["skip_share"] < 1
    assert report["skip_agreement"] >= 0.995
    assert report["skip_precision"] >= m.info["target_precision"]


def test_skipped_messages_are_never_encoded_and_the_rest_are_unchanged(
    smp: tuple[Matcher, list[tuple[str, str]]],
) -> None:
    m, queries = smp
    assert m.embedder is not None
    counter = CountingEmbedder(m.embedder.inner)
    m.embedder.inner = counter
    try:
        m.embedder._cache.clear()
        with_cascade = [m.match(q, cascade=True) for q, _ in queries]
        first = set(counter.texts)
        m.embedder._cache.clear()
        full = [m.match(q, cascade=False) for q, _ in queries]
    finally:
        m.embedder.inner = counter.inner
    skipped = [r for r in with_cascade if r.dense_skipped]
    assert 0 < len(skipped) < len(queries)
    assert m.cascade_ is not None
    for r in skipped:
        assert r.decision is Decision.ANSWER and r.confidence >= m.cascade_.t_skip
        assert "encoder was skipped" in r.reason
    # what the first pass skipped it never encoded; the full pass encoded it
    skipped_texts = {strip_placeholders(r.normalized) for r in skipped if not r.smalltalk_around}
    assert skipped_texts and first.isdisjoint(skipped_texts)
    assert skipped_texts <= set(counter.texts)
    for a, b in zip(with_cascade, full, strict=True):
        if not a.dense_skipped:
            assert (a.decision, a.entry_id, a.confidence) == (b.decision, b.entry_id, b.confidence)
    # skipping changes top-1 on these real queries by at most one point
    top1 = [
        np.mean([(r.entry_id == g) for r, (_, g) in zip(rs, queries, strict=True)])
        for rs in (with_cascade, full)
    ]
    assert top1[0] >= top1[1] - 0.01


def test_the_cascade_is_off_unless_asked_and_a_cached_message_takes_the_full_path(
    smp: tuple[Matcher, list[tuple[str, str]]],
) -> None:
    m, queries = smp
    assert m.embedder is not None
    m.embedder._cache.clear()
    skipped = next(q for q, _ in queries if m.match(q, cascade=True).dense_skipped)
    assert not Matcher.use_cascade and not m.match(skipped).dense_skipped
    m.match(skipped, cascade=False)  # its vector is cached now: the full model costs nothing more
    assert not m.match(skipped, cascade=True).dense_skipped


def test_the_cascade_survives_save_and_load_and_old_models_have_none(
    smp: tuple[Matcher, Any], tmp_path: Path
) -> None:
    m, _ = smp
    assert m.cascade_ is not None
    path = m.save(tmp_path / "again")
    back = Matcher.load(path)
    assert back.cascade_ is not None
    assert back.cascade_.t_skip == m.cascade_.t_skip
    np.testing.assert_array_equal(back.cascade_.calibrator.weights, m.cascade_.calibrator.weights)
    manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
    del manifest["cascade"]  # as a model saved before the cascade existed
    (path / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    old = Matcher.load(path)
    assert old.cascade_ is None
    assert not any(old.match(q, cascade=True).dense_skipped for q in ("天气怎么样", "播放音乐"))


def test_a_fast_model_has_no_cascade(fast_matcher: Matcher) -> None:
    assert fast_matcher.cascade_ is None
    assert not fast_matcher.match("几天能送到", cascade=True).dense_skipped
