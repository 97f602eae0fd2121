"""Tests for `kefu report` (training.report): the figures against independent recounts, the page's
self-containment and escaping, the JSON, and the command's files and errors.

A real model is built once (`kefu build --fast` on the CLI tests' small KB) and scored on a labelled set
made to contain right answers, a deliberate confusion (KB questions of `shipping-fee` labelled `return`),
out-of-scope queries (one of them a KB question, so it is answered) and markup in user text. The
arithmetic of bins and ECE is checked on fixed results whose figures are worked out by hand.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from markupsafe import escape

from engine import Decision, Matcher
from tests.test_cli import (
    EVAL_QUERIES,
    KnownResults,
    assert_clean_failure,
    invoke,
    known,
    write_csv,
    write_kb,
    write_queries,
)
from training.evaluate import evaluate, read_queries
from training.report import (
    build_document,
    confusion_figures,
    matcher_figures,
    model_figures,
    reliability_figures,
    render_html,
)

MARKUP = "<script>alert('x')</script>包邮吗"
BAD_ID = "<b>no-such-entry</b>"
LABELLED: list[tuple[str, str]] = [
    ("保修多久", "warranty"),  # KB questions word for word: answered right
    ("能开发票吗", "invoice"),
    ("什么时候发货", "ship-time"),
    ("包邮吗", "return"),  # shipping-fee's own questions labelled return: the deliberate confusion
    ("运费多少", "return"),
    ("还有货吗", ""),  # a KB question labelled out of scope: answered, and wrong
    (MARKUP, BAD_ID),  # user text with markup, expected id unknown to the model
    *EVAL_QUERIES,  # paraphrases and out-of-scope messages: whatever the model decides
]


@dataclass(frozen=True)
class Scored:
    model_path: Path
    matcher: Matcher
    queries: Path
    document: dict[str, Any]
    html: str


@pytest.fixture(scope="module")
def scored(tmp_path_factory: pytest.TempPathFactory) -> Scored:
    root = tmp_path_factory.mktemp("report")
    result = invoke("build", write_kb(root / "kb.csv"), "-o", root / "model", "--fast")
    assert result.exit_code == 0, result.output
    m = Matcher.load(root / "model")
    queries = write_queries(root / "labelled.csv", LABELLED)
    report = evaluate(m, read_queries(queries))
    labelled = matcher_figures(m, report, queries.name)
    document = build_document(model_figures(m.info, m.policy, root / "model"), labelled)
    return Scored(root / "model", m, queries, document, render_html(document))


def recount(m: Matcher) -> list[tuple[str, str | None, Any]]:
    """Each labelled query matched directly, without training.evaluate."""
    return [(q, e or None, m.match(q, top_k=10)) for q, e in LABELLED]


# --------------------------------------------------------------------------- figures on a real model


def test_ranking_matches_a_direct_recount(scored: Scored) -> None:
    ranking = scored.document["labelled"]["ranking"]
    rows = recount(scored.matcher)
    inside = [(e, r) for _, e, r in rows if e is not None]
    ranked = [[c.entry_id for c in r.candidates] for _, r in inside]
    top1 = sum(ids[:1] == [e] for (e, _), ids in zip(inside, ranked, strict=True)) / len(inside)
    mrr = sum(1 / (ids.index(e) + 1) if e in ids else 0 for (e, _), ids in zip(inside, ranked, strict=True))
    recall = sum(e in ids[:5] for (e, _), ids in zip(inside, ranked, strict=True)) / len(inside)
    assert (ranking["n_queries"], ranking["n_in_scope"]) == (len(LABELLED), len(inside))
    assert ranking["n_out_of_scope"] == len(LABELLED) - len(inside)
    assert ranking["top1"] == pytest.approx(top1)
    assert ranking["mrr"] == pytest.approx(mrr / len(inside))
    assert ranking["recall_at_5"] == pytest.approx(recall)
    assert 0 < top1 < 1  # the set has right and wrong top-1s, so the figure can be off either way


def test_decisions_and_operating_point_match_what_the_model_did(scored: Scored) -> None:
    labelled = scored.document["labelled"]
    rows = recount(scored.matcher)
    answered = [(e, r) for _, e, r in rows if r.decision is Decision.ANSWER]
    right = sum(r.entry_id == e for e, r in answered)
    point = labelled["curve"]["operating_points"][0]
    assert point["name"] == "answer" and point["threshold"] == scored.matcher.policy.t_answer
    assert point["count"] == len(answered) == labelled["delivered"]["answered"]
    assert point["coverage"] == pytest.approx(len(answered) / len(rows))
    assert point["precision"] == pytest.approx(right / len(answered))
    assert labelled["delivered"]["precision"] == point["precision"]
    decisions = labelled["decisions"]
    assert sum(d["count"] for d in decisions.values()) == len(rows)
    assert decisions["answer"] | {"share": 0} == {
        "count": len(answered),
        "share": 0,
        "right": right,
        "wrong": sum(e is not None and r.entry_id != e for e, r in answered),
        "out_of_scope": sum(e is None for e, _ in answered),
    }
    # "还有货吗" is a KB question labelled out of scope: answered, counted out of scope
    assert decisions["answer"]["out_of_scope"] >= 1


def test_reliability_bins_cover_every_query(scored: Scored) -> None:
    rel = scored.document["labelled"]["reliability"]
    assert len(rel["bins"]) == 10 and rel["n"] == len(LABELLED)
    assert sum(b["count"] for b in rel["bins"]) == len(LABELLED)
    for b in rel["bins"]:
        if b["count"]:
            assert b["lo"] <= b["mean_confidence"] <= b["hi"]
            assert 0.0 <= b["accuracy"] <= 1.0
    assert 0.0 <= rel["ece"] <= 1.0


def test_confusions_contain_the_constructed_pair(scored: Scored) -> None:
    confusions = scored.document["labelled"]["confusions"]
    for kind in ("answered_wrong", "top1_wrong"):
        pairs = {(c["expected_id"], c["predicted_id"]): c for c in confusions[kind]}
        pair = pairs[("return", "shipping-fee")]
        assert pair["count"] >= 2
        assert {"包邮吗", "运费多少"} <= {e["query"] for e in pair["examples"]}
        assert pair["expected_question"] == "支持七天无理由退货吗" and pair["predicted_question"] == "包邮吗"
    answered_wrong = {(c["expected_id"], c["predicted_id"]) for c in confusions["answered_wrong"]}
    assert (None, "stock") in answered_wrong  # an out-of-scope query answered
    assert scored.document["labelled"]["unknown_expected_ids"] == [BAD_ID]


def test_promise_is_the_manifest_s(scored: Scored) -> None:
    model = scored.document["model"]
    cal = scored.matcher.info["calibration"]
    assert model["promise"]["target_precision"] == scored.matcher.info["target_precision"]
    assert model["promise"]["threshold_rule"] == cal["threshold_rule"]
    assert model["promise"]["answer_precision_interval_90"] == cal["answer_precision_interval_90"]
    assert model["t_answer"] == scored.matcher.policy.t_answer
    assert model["t_clarify"] == scored.matcher.policy.t_clarify


# --------------------------------------------------------------------------- HTML and JSON


def test_html_loads_nothing_and_escapes_user_text(scored: Scored) -> None:
    html = scored.html
    lowered = html.lower()
    for fetch in ("http://", "https://", "<script", "<link", "url(", "@import", "<iframe"):
        assert fetch not in lowered, fetch
    # every image is inline
    sources = re.findall(r'src="([^"]*)"', html)
    assert len(sources) == 2 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;包邮吗" in html
    assert "&lt;b&gt;no-such-entry&lt;/b&gt;" in html and BAD_ID not in html


def test_html_shows_the_figures(scored: Scored) -> None:
    labelled = scored.document["labelled"]
    html = scored.html
    assert f"{labelled['ranking']['top1']:.1%}" in html
    assert f"{labelled['ranking']['mrr']:.3f}" in html
    assert f"{labelled['reliability']['ece']:.3f}" in html
    assert f"{labelled['delivered']['coverage']:.1%}" in html
    rule = scored.document["model"]["promise"]["threshold_rule"]
    assert "What the model promises" in html and str(escape(rule)) in html
    assert "支持七天无理由退货吗" in html  # the confused entries are named by their questions


def test_document_is_json_as_is(scored: Scored) -> None:
    assert json.loads(json.dumps(scored.document)) == scored.document
    assert scored.document["traffic"] is None


# --------------------------------------------------------------------------- arithmetic on fixed results


def test_reliability_and_ece_by_hand() -> None:
    results = KnownResults(
        {
            "q1": known(Decision.ANSWER, 0.9, "A"),  # right
            "q2": known(Decision.CLARIFY, 0.6, "A"),  # expected B: wrong
            "q3": known(Decision.HANDOFF, 0.2, "A"),  # expected C: wrong
            "q4": known(Decision.ANSWER, 0.85, "A"),  # out of scope: wrong
            "q5": known(Decision.ANSWER, 0.8, "B"),  # expected A: wrong
            "q6": known(Decision.CLARIFY, 0.1, "A"),  # out of scope: wrong
        }
    )
    queries = [("q1", "A"), ("q2", "B"), ("q3", "C"), ("q4", None), ("q5", "A"), ("q6", None)]
    report = evaluate(results, queries)
    rel = reliability_figures(report)
    counts = [b["count"] for b in rel["bins"]]
    assert counts == [0, 1, 1, 0, 0, 0, 1, 0, 2, 1]
    assert rel["bins"][8]["mean_confidence"] == pytest.approx(0.825)
    assert rel["bins"][9]["accuracy"] == 1.0 and rel["bins"][8]["accuracy"] == 0.0
    assert rel["ece"] == pytest.approx((0.1 + 0.2 + 0.6 + 2 * 0.825 + 0.1) / 6)
    confusions = confusion_figures(report, {})
    assert [(c["expected_id"], c["predicted_id"], c["count"]) for c in confusions["answered_wrong"]] == [
        ("A", "B", 1),
        (None, "A", 1),
    ]
    assert {(c["expected_id"], c["predicted_id"]) for c in confusions["top1_wrong"]} == {
        ("A", "B"),
        ("B", "A"),
        ("C", "A"),
    }


# --------------------------------------------------------------------------- the command


def test_cli_writes_html_and_json(scored: Scored, tmp_path: Path) -> None:
    html, js = tmp_path / "out" / "r.html", tmp_path / "r.json"
    result = invoke("report", scored.model_path, scored.queries, "-o", html, "--json", js)
    assert result.exit_code == 0, result.output
    data = json.loads(js.read_text(encoding="utf-8"))
    assert data["format"] == "kefu-report"
    for section in ("ranking", "reliability", "decisions", "confusions"):
        assert data["labelled"][section] == scored.document["labelled"][section], section
    assert f"{data['labelled']['ranking']['top1']:.1%}" in result.output
    assert f"{data['labelled']['reliability']['ece']:.3f}" in result.output
    assert BAD_ID in result.output  # the unknown expected id is warned about
    page = html.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and "https://" not in page


def test_cli_bad_query_file_names_file_and_row(scored: Scored, tmp_path: Path) -> None:
    queries = write_csv(tmp_path / "bad.csv", ["query", "expected_id"], [["保修多久", "warranty"], ["", "x"]])
    out = tmp_path / "r.html"
    assert_clean_failure(invoke("report", scored.model_path, queries, "-o", out), "bad.csv", "row 3", "blank")
    assert not out.exists()
    missing = write_csv(tmp_path / "cols.csv", ["text"], [["保修多久"]])
    assert_clean_failure(invoke("report", scored.model_path, missing, "-o", out), "cols.csv", "expected_id")
