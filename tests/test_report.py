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
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from markupsafe import escape

import tests.test_traffic as traffic_tests
from api.db.models import JdEvaluation
from api.main import create_app
from api.settings import Settings
from engine import Decision, Matcher
from tests.test_cli import (
    EVAL_QUERIES,
    KnownResults,
    assert_clean_failure,
    invoke,
    known,
    runner,
    write_csv,
    write_kb,
    write_queries,
)
from tests.test_service import ADMIN, kb_csv, new_shop, publish_and_wait
from training.cli import app
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
    (MARKUP, "return"),  # the same text scored: in the confusions, escaped
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


# the queries the figures are of: one whose expected id is not an entry of the model is left out
SCORED = [(q, e) for q, e in LABELLED if e != BAD_ID]


def recount(m: Matcher) -> list[tuple[str, str | None, Any]]:
    """Each scored labelled query matched directly, without training.evaluate."""
    return [(q, e or None, m.match(q, top_k=10)) for q, e in SCORED]


# --------------------------------------------------------------------------- figures on a real model


def test_ranking_matches_a_direct_recount(scored: Scored) -> None:
    ranking = scored.document["labelled"]["ranking"]
    rows = recount(scored.matcher)
    inside = [(e, r) for _, e, r in rows if e is not None]
    ranked = [[c.entry_id for c in r.candidates] for _, r in inside]
    top1 = sum(ids[:1] == [e] for (e, _), ids in zip(inside, ranked, strict=True)) / len(inside)
    mrr = sum(1 / (ids.index(e) + 1) if e in ids else 0 for (e, _), ids in zip(inside, ranked, strict=True))
    recall = sum(e in ids[:5] for (e, _), ids in zip(inside, ranked, strict=True)) / len(inside)
    assert (ranking["n_queries"], ranking["n_in_scope"]) == (len(SCORED), len(inside))
    assert ranking["n_out_of_scope"] == len(SCORED) - len(inside)
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
    assert len(rel["bins"]) == 10 and rel["n"] == len(SCORED)
    assert sum(b["count"] for b in rel["bins"]) == len(SCORED)
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


@pytest.mark.parametrize(
    ("t_answer", "shown"), [(0.9996, "0.9996"), (0.919, "0.919"), (1.000000001, "never (target not met)")]
)
def test_html_answer_threshold_is_told_from_1(scored: Scored, t_answer: float, shown: str) -> None:
    """Was: 1.000 for a threshold of 0.9996 (3 decimals), which reads as 'answers at certainty only'."""
    document = json.loads(json.dumps(scored.document))
    document["model"]["t_answer"] = t_answer
    html = render_html(document)
    assert f'<th>answer threshold</th><td class="n">{escape(shown)}</td>' in html


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
    row = LABELLED.index((MARKUP, BAD_ID)) + 2  # after the header row
    assert f"skipped 1 row of {scored.queries}" in " ".join(result.output.split())
    assert f"row {row} ('{BAD_ID}')" in " ".join(result.output.split())
    assert data["labelled"]["ranking"]["n_queries"] == len(SCORED)  # not scored as a wrong answer
    page = html.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and "https://" not in page


def test_cli_bad_query_file_names_file_and_row(scored: Scored, tmp_path: Path) -> None:
    queries = write_csv(tmp_path / "bad.csv", ["query", "expected_id"], [["保修多久", "warranty"], ["", "x"]])
    out = tmp_path / "r.html"
    assert_clean_failure(invoke("report", scored.model_path, queries, "-o", out), "bad.csv", "row 3", "blank")
    assert not out.exists()
    missing = write_csv(tmp_path / "cols.csv", ["text"], [["保修多久"]])
    assert_clean_failure(invoke("report", scored.model_path, missing, "-o", out), "cols.csv", "expected_id")


# --------------------------------------------------------------------------- a shop's traffic, over HTTP


@dataclass(frozen=True)
class Served:
    url: str
    key: str
    other_key: str


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The service under a real uvicorn server on 127.0.0.1 (SQLite) with the known day of
    tests/test_traffic.py logged for SHOP, a thumbs-down, a JD rating and a handed-off text with markup."""
    tmp = tmp_path_factory.mktemp("traffic")
    settings = Settings(
        _env_file=None,
        database_url=f"sqlite:///{tmp}/kefu.db",
        redis_url=None,
        data_dir=tmp / "data",
        admin_token=ADMIN,
        dense=False,
        kb_path=None,
        model_path=tmp / "no-model",
        evaluation_pull_interval=0,
    )
    api_app = create_app(settings)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))  # the server takes this socket: no race for a "free" port
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(api_app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            assert time.monotonic() < deadline, "uvicorn did not start within 20 s"
            time.sleep(0.02)
        url = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=url, timeout=30) as c:
            key = new_shop(c, traffic_tests.SHOP)
            other = new_shop(c, traffic_tests.OTHER)
            version = publish_and_wait(c, traffic_tests.SHOP, key, kb_csv())
            service = api_app.state.service
            ids = [traffic_tests._log(service, traffic_tests.SHOP, version, row) for row in traffic_tests.LOG]
            markup = (
                traffic_tests.at(12, 30),
                "c-x",
                "handoff",
                None,
                0.1,
                7,
                "bot cannot answer: z",
                MARKUP,
                None,
            )
            traffic_tests._log(service, traffic_tests.SHOP, version, markup)
            r = c.post(
                f"/v1/shops/{traffic_tests.SHOP}/feedback",
                headers=key,
                json={"exchange_id": ids[1], "kind": "down"},
            )
            assert r.status_code == 201, r.text
        with service.db.session() as s:
            s.add(
                JdEvaluation(
                    shop_id=traffic_tests.SHOP,
                    jd_id="e1",
                    score=1,
                    session_id="c-handoff",
                    evaluated_at=traffic_tests.at(11, 30).astimezone(UTC),
                )
            )
        yield Served(url, key["X-API-Key"], other["X-API-Key"])
    finally:
        server.should_exit = True
        thread.join(timeout=20)
        sock.close()


def _period() -> list[str]:
    since, until = traffic_tests.SINCE, traffic_tests.UNTIL
    return ["--since", since.strftime("%Y-%m-%dT%H:%M:%S"), "--until", until.strftime("%Y-%m-%dT%H:%M:%S")]


def _traffic_args(served: Served, *extra: str) -> list[str]:
    return ["--traffic-url", served.url, "--shop", traffic_tests.SHOP, "--api-key", served.key, *extra]


def test_cli_traffic_report_from_a_real_server(served: Served, tmp_path: Path) -> None:
    html, js = tmp_path / "t.html", tmp_path / "t.json"
    result = invoke("report", *_traffic_args(served, *_period()), "-o", html, "--json", js)
    assert result.exit_code == 0, result.output
    data = json.loads(js.read_text(encoding="utf-8"))
    assert data["model"] is None and data["labelled"] is None
    traffic = data["traffic"]
    # the figures are the service's own, for the period asked (naive times: Beijing)
    expected = httpx.get(
        f"{served.url}/v1/shops/{traffic_tests.SHOP}/report/traffic",
        params={"since": traffic_tests.SINCE.isoformat(), "until": traffic_tests.UNTIL.isoformat()},
        headers={"X-API-Key": served.key},
    ).json()
    assert traffic == expected
    totals = traffic["totals"]
    assert (totals["messages"], totals["answer"], totals["clarify"], totals["handoff"]) == (12, 4, 2, 5)
    assert totals["answer_rate"] == round(4 / 11, 4) and totals["smalltalk"] == 1
    assert traffic["ratings"]["by_outcome"]["handed_off"]["ratings"] == 1
    assert traffic["feedback"]["down"] == 1
    assert "36.4%" in result.output  # the headline answer rate
    page = html.read_text(encoding="utf-8")
    lowered = page.lower()
    for fetch in ("http://", "https://", "<script", "<link", "url(", "@import", "<iframe"):
        assert fetch not in lowered, fetch
    sources = re.findall(r'src="([^"]*)"', page)
    assert len(sources) == 5 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "Kefu traffic report" in page and "What the model promises" not in page
    assert "36.4%" in page and "保修多久" in page  # an entry answered most, by its question
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;包邮吗" in page  # a handed-off text, escaped


def test_cli_traffic_beside_the_model_with_the_key_from_the_environment(
    scored: Scored, served: Served, tmp_path: Path
) -> None:
    html, js = tmp_path / "both.html", tmp_path / "both.json"
    args = [scored.model_path, scored.queries, "--traffic-url", served.url, "--shop", traffic_tests.SHOP]
    result = runner.invoke(
        app,
        ["report", *map(str, args), *_period(), "--bucket", "day", "-o", str(html), "--json", str(js)],
        env={"KEFU_API_KEY": served.key},
    )
    assert result.exit_code == 0, result.output
    data = json.loads(js.read_text(encoding="utf-8"))
    assert data["labelled"]["ranking"] == scored.document["labelled"]["ranking"]
    assert data["traffic"]["bucket"] == "day" and len(data["traffic"]["series"]) == 1
    page = html.read_text(encoding="utf-8")
    assert "What the model promises" in page and "Traffic of shop" in page
    assert len(re.findall(r'src="data:image/png;base64,', page)) == 2 + 5


def test_cli_traffic_errors_say_what_to_fix(served: Served, tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    shop = traffic_tests.SHOP
    bad_key = ["--traffic-url", served.url, "--shop", shop, "--api-key", "wrong"]
    assert_clean_failure(invoke("report", *bad_key, "-o", out), "401", "--api-key", "KEFU_API_KEY")
    other = ["--traffic-url", served.url, "--shop", shop, "--api-key", served.other_key]
    assert_clean_failure(invoke("report", *other, "-o", out), "another shop", "403")
    wrong_base = _traffic_args(served)
    wrong_base[1] = f"{served.url}/not-kefu"
    assert_clean_failure(invoke("report", *wrong_base, "-o", out), "404", "not found")
    inverted = ["--since", "2025-03-05T14:00:00", "--until", "2025-03-05T10:00:00"]
    assert_clean_failure(invoke("report", *_traffic_args(served, *inverted), "-o", out), "400", "since")
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    unreachable = ["--traffic-url", closed, "--shop", shop, "--api-key", served.key]
    assert_clean_failure(invoke("report", *unreachable, "-o", out), "cannot reach", closed)
    not_url = ["--traffic-url", "ftp://x", "--shop", shop, "--api-key", served.key]
    assert_clean_failure(invoke("report", *not_url, "-o", out), "http://")
    assert_clean_failure(invoke("report", "--traffic-url", served.url, "--shop", shop), "--api-key")
    assert_clean_failure(invoke("report", "-o", out), "MODEL", "--traffic-url")
    assert_clean_failure(invoke("report", *_traffic_args(served, "--bucket", "week")), "--bucket")
    assert not out.exists()
