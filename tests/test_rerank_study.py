"""training/rerank_study.py: the measurement behind "no reranker ships" must measure honestly: its
top-1 counts what it says, and no feature tells a held-out question's entry by what was hidden."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engine.build import _row_matrix
from training import rerank_study as rs


def test_top1_takes_each_messages_best_scored_candidate_over_all_in_scope_messages() -> None:
    g = rs.Groups(
        X=np.zeros((5, rs.N_FEATURES), np.float32),
        right=np.array([False, True, True, False, False]),
        group=np.array([0, 0, 1, 1, 2]),
        n_messages=4,  # a fourth in-scope message had no candidate at all: it counts as missed
    )
    assert rs.top1(np.array([0.9, 0.1, 0.8, 0.2, 0.5]), g) == 0.25  # message 1 right
    assert rs.top1(np.array([0.1, 0.9, 0.8, 0.2, 0.5]), g) == 0.5  # messages 0 and 1 right


def test_missing_share_is_the_idf_share_the_other_side_lacks() -> None:
    idf = np.array([1.0, 3.0, 6.0], np.float32)
    other = np.array([True, False, True])
    assert rs._missing_share(np.array([0, 1, 2]), other, idf) == pytest.approx(0.3)
    assert rs._missing_share(np.array([], np.int64), other, idf) == 0.0


def test_held_out_features_count_an_entrys_hidden_questions_too(fast_matcher: Any) -> None:
    from engine.build import held_out_examples

    m = fast_matcher
    X_rows = _row_matrix(m)
    feats = rs.PairFeatures(m, X_rows, k=5)
    ex, gold, synthetic = rs.kb_examples(m, feats, X_rows, seed=1)
    assert not synthetic and ex.n_messages == len(gold) > 100 and ex.right.any()
    sizes = np.diff(m.row_ptr)
    multi = sizes >= 2
    examples, _, _ = held_out_examples(m, X_rows, m.row_owner, multi, np.random.default_rng(1), 40)
    for e in examples:
        ranking = e.rank(m)
        cands, X = feats(e.rep, ranking, e._masks(m)[1])
        # the entry's number of questions, hidden ones included: the held-out question's own entry
        # (one question short in the index) must not stand out by it
        assert (X[:, 22] == sizes[cands]).all()
        assert X.shape == (cands.size, rs.N_FEATURES) and np.isfinite(X).all()


def test_main_prints_every_reranker_beside_the_fused_ranking(tmp_path: Path, capsys: Any) -> None:
    from tests.test_service import KB

    with (tmp_path / "kb.csv").open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "question", "similar", "answer"])
        w.writerows(KB)
    with (tmp_path / "queries.csv").open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["query", "expected_id"])
        w.writerows([("发票能开吗", "invoice"), ("多久发货呀", "ship-time"), ("今天天气", "")] * 4)
    assert rs.main([str(tmp_path), "--top", "5"]) == 0
    out = capsys.readouterr().out
    assert "KB questions, cross-fitted by entry halves" in out and "real queries" in out
    assert out.count("labelled half") == 3
    assert "fused" in out
