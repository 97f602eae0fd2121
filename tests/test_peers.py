"""`kefu eval --peers`: char TF-IDF, bm25s and e5-small scored on the model's KB and the same queries."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.test_cli import Built, assert_clean_failure, invoke, write_queries
from tests.test_cli import built as built
from training.peers import entry_ranks, peer_figures


def test_an_entry_scores_the_best_of_its_rows() -> None:
    # entries: rows 0-1, row 2, rows 3-5
    ptr = np.array([0, 2, 3, 6])
    scores = np.array(
        [
            [0.1, 0.9, 0.5, 0.2, 0.2, 0.2],  # entry 0 best (0.9)
            [0.1, 0.2, 0.5, 0.2, 0.7, 0.2],  # entry 2 (0.7), then 1 (0.5), then 0 (0.2)
            [0.3, 0.3, 0.3, 0.3, 0.3, 0.3],  # a three-way tie: nobody strictly above
        ]
    )
    assert entry_ranks(scores, ptr, np.array([0, 0, 1])).tolist() == [1, 3, 1]
    assert entry_ranks(scores, ptr, np.array([2, 1, 2])).tolist() == [3, 2, 1]


def test_char_tfidf_finds_a_question_asked_word_for_word() -> None:
    rows = ["保修多久", "质保几年", "能开发票吗", "什么时候发货", "几天发货"]
    ptr = np.array([0, 2, 3, 5])
    texts = ["能开发票吗", "几天发货", "保修多久", "发票"]
    gold = np.array([1, 2, 0, 2])  # the last one deliberately labelled with the wrong entry
    (f,) = peer_figures(rows, ptr, texts, gold, ["char-tfidf"], top_k=10)
    assert f.top1 == pytest.approx(3 / 4)
    assert f.recall_at_5 == pytest.approx(1.0)  # only three entries: all within five
    # MRR: three first places and the mislabelled one second behind the invoice entry
    assert f.mrr == pytest.approx((1 + 1 + 1 + 0.5) / 4)


def test_an_unknown_peer_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown peer 'bert'"):
        peer_figures(["a"], np.array([0, 1]), ["a"], np.array([0]), ["bert"])


def test_eval_prints_and_stores_the_peers_beside_kefu(built: Built, tmp_path: Path) -> None:
    queries = write_queries(
        tmp_path / "q.csv",
        [("质保几年", "warranty"), ("发票怎么开", "invoice"), ("运费谁出", "shipping-fee"), ("天气", "")],
    )
    out = tmp_path / "r.json"
    args = ("eval", built.path, queries, "--peers", "--peer", "char-tfidf", "--peer", "bm25s")
    result = invoke(*args, "--json", out, "--plot", tmp_path / "p.png")
    assert result.exit_code == 0, result.output
    assert "Kefu and peers" in result.output and "char-tfidf" in result.output and "bm25s" in result.output
    report = json.loads(out.read_text(encoding="utf-8"))
    names = [p["name"] for p in report["peers"]]
    assert names == ["char-tfidf", "bm25s"]
    tfidf = report["peers"][0]
    # two of the three in-scope queries are KB questions word for word: char TF-IDF ranks them first
    assert tfidf["top1"] >= 2 / 3 and tfidf["top1"] <= tfidf["recall_at_5"] <= 1.0


def test_eval_refuses_an_unknown_peer_before_matching(built: Built, tmp_path: Path) -> None:
    queries = write_queries(tmp_path / "q.csv", [("质保几年", "warranty")])
    assert_clean_failure(invoke("eval", built.path, queries, "--peer", "bert"), "unknown --peer bert")
