"""Mining through the service: GET /v1/shops/{shop}/kb/mining clusters the shop's logged messages the bot
did not answer well (handed off, clarified, corrected, thumbed down, or answered in a chat rated badly on
JD) into new entries or paraphrases, as JSON or as a CSV/XLSX in the KB's columns that uploads back."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from typing import Any

import openpyxl
import pytest
from fastapi.testclient import TestClient

from api.db.models import JdEvaluation
from engine.mining import PROPOSAL_COLUMNS
from tests.test_service import client as client
from tests.test_service import kb_csv, new_shop, publish_and_wait, say
from tests.test_service import settings as settings

SHOP = "shop-a"
URL = f"/v1/shops/{SHOP}/kb/mining"
# questions the test KB (tests/test_service.KB) has no entry for, each asked several ways
TRADE_IN = ["可以以旧换新吗", "旧手机能换新的吗", "以旧换新怎么弄", "旧机能抵钱吗", "以旧换新能抵多少钱"]
INSTALL = ["能上门安装吗", "包安装吗", "安装师傅什么时候来", "需要自己安装吗", "送货上门安装吗"]
GIFT = ["有赠品吗", "送什么赠品", "赠品怎么领", "赠品没收到"]
ANSWERED = ["质保几年", "能开发票吗", "怎么查物流", "七天能退吗"]
PHONE = "13912345678"
KB_COLUMNS = ["id", "question", "similar", "answer", "category"]


def _send(c: TestClient, key: dict[str, str], text: str, conv: str) -> dict[str, Any]:
    return say(c, SHOP, key, text, conv=conv)


def _feedback(c: TestClient, key: dict[str, str], exchange_id: int, kind: str, **extra: Any) -> None:
    body = {"exchange_id": exchange_id, "kind": kind, **extra}
    r = c.post(f"/v1/shops/{SHOP}/feedback", headers=key, json=body)
    assert r.status_code == 201, r.text


@pytest.fixture
def shop(client: TestClient) -> tuple[TestClient, dict[str, str], dict[str, Any]]:
    """A shop with the test KB and a day of traffic: three new questions it cannot answer, questions it
    answers, and the labels a shop collects (agent corrections, thumbs, a bad and a good JD rating)."""
    key = new_shop(client, SHOP)
    # this 9-entry KB cannot promise 95% with the default 80% confidence (it would answer only its own
    # questions word for word); the shop trusts its calibration examples instead, so paraphrases answer
    r = client.put(f"/v1/shops/{SHOP}/settings", headers=key, json={"threshold_confidence": 0})
    assert r.status_code == 200, r.text
    publish_and_wait(client, SHOP, key, kb_csv())
    sent: dict[str, Any] = {"unanswered": [], "answered": []}
    for i, text in enumerate([*TRADE_IN, *INSTALL]):  # each in its own chat: clarified or handed off
        reply = _send(client, key, text, f"new-{i}")
        assert reply["kind"] in ("clarify", "handoff"), (text, reply)
        sent["unanswered"].append(text)
    for text in GIFT:  # one chat: the bot misses again and again, and hands off
        sent["unanswered"].append(text)
        assert _send(client, key, text, "gift")["kind"] in ("clarify", "handoff")
    # with a phone number in it: logged masked, and mined masked
    phone = _send(client, key, f"以旧换新可以吗 我电话{PHONE}", "phone")
    assert phone["kind"] in ("clarify", "handoff")
    answered = {text: _send(client, key, text, f"ok-{i}") for i, text in enumerate(ANSWERED)}
    assert all(r["kind"] == "answer" for r in answered.values()), answered
    sent["answered"] = ANSWERED
    # asking for a person is handed off, but is no question for the KB
    assert _send(client, key, "转人工", "human")["kind"] == "handoff"
    # answered wrongly by the bot; an agent marks it out of scope: mined as a correction
    wrong = _send(client, key, "支持以旧换新活动吗", "corrected")
    assert wrong["kind"] == "answer"
    _feedback(client, key, wrong["exchange_id"], "correction", out_of_scope=True)
    # answered, and the customer rated the chat 1 of 5 on JD: mined as a low rating
    rated = _send(client, key, "免费安装吗", "rated-bad")
    assert rated["kind"] == "answer"
    # answered and rated 5: not mined
    assert _send(client, key, "包邮吗", "rated-good")["kind"] == "answer"
    # labels that do not mine a message: a thumbs-up, a correction confirming the bot's entry
    _feedback(client, key, answered["能开发票吗"]["exchange_id"], "up")
    _feedback(client, key, answered["质保几年"]["exchange_id"], "correction", correct_entry_id="warranty")
    # a thumbs-down mines an answered message (alone it makes no cluster, but it is counted)
    _feedback(client, key, answered["怎么查物流"]["exchange_id"], "down")
    service = client.app.state.service  # type: ignore[attr-defined]
    now = datetime.now(UTC)
    with service.db.session() as s:  # as api.jd.evaluations stores pulled ratings
        s.add(JdEvaluation(shop_id=SHOP, jd_id="e1", score=1, session_id="rated-bad", evaluated_at=now))
        s.add(JdEvaluation(shop_id=SHOP, jd_id="e2", score=5, session_id="rated-good", evaluated_at=now))
    sent["corrected"], sent["rated"] = "支持以旧换新活动吗", "免费安装吗"
    return client, key, sent


def _examples(p: dict[str, str]) -> set[str]:
    return {p["question"], *(x for x in p["similar"].split("|") if x)}


def _topics(sent: dict[str, Any]) -> dict[str, set[str]]:
    """Every mined message by the new question it asks (the corrected and the badly rated answers were
    about trade-in and installation; the phone number is logged masked)."""
    return {
        "trade-in": {*TRADE_IN, sent["corrected"], "以旧换新可以吗 我电话[手机号]"},
        "install": {*INSTALL, sent["rated"]},
        "gift": set(GIFT),
    }


def test_unanswered_questions_come_back_as_new_entries(shop: Any) -> None:
    c, key, sent = shop
    r = c.get(URL, headers=key)
    assert r.status_code == 200, r.text
    out = r.json()
    proposals = out["proposals"]
    topics = _topics(sent)
    # every cluster is one new question, proposed as a new entry with no answer yet
    of: dict[str, list[dict[str, str]]] = {name: [] for name in topics}
    for p in proposals:
        (name,) = [name for name, texts in topics.items() if _examples(p) <= texts]
        of[name].append(p)
        assert p["proposal"] == "new_entry" and p["answer"] == "" and p["id"].startswith("mined-")
        assert int(p["cluster_size"]) == len(_examples(p))
    # and every phrasing comes back: installation and gifts as one cluster each; trade-in as the
    # questions saying 以旧换新 (with the corrected answer and the masked phone message) and, apart,
    # those that only say 旧手机/旧机 (sparse vectors alone do not tie them to 以旧换新)
    assert [_examples(p) for p in of["install"]] == [topics["install"]]
    assert [_examples(p) for p in of["gift"]] == [topics["gift"]]
    assert set().union(*(_examples(p) for p in of["trade-in"])) == topics["trade-in"]
    main = max(of["trade-in"], key=lambda p: int(p["cluster_size"]))
    assert {sent["corrected"], "以旧换新可以吗 我电话[手机号]", "可以以旧换新吗"} <= _examples(main)
    assert len(of["trade-in"]) <= 2
    # what the bot answered (and nobody objected to) is not mined, nor a request for a person
    mined = set().union(*(_examples(p) for p in proposals))
    assert not mined & {"质保几年", "能开发票吗", "七天能退吗", "包邮吗", "怎么查物流", "转人工"}
    assert PHONE not in r.text  # texts are returned as logged: masked
    figures = out["figures"]
    assert figures["by_reason"]["correction"] == 1
    assert figures["by_reason"]["low_rating"] == 1
    assert figures["by_reason"]["thumbs_down"] == 1  # 怎么查物流: counted, alone in its cluster
    assert figures["by_reason"]["clarify"] + figures["by_reason"]["handoff"] == len(sent["unanswered"]) + 1
    assert figures["by_reason"]["handoff"] >= 1  # the gift chat ended in a handoff
    assert figures["messages"] == sum(figures["by_reason"].values()) == len(sent["unanswered"]) + 4
    assert figures["clustered_messages"] == figures["messages"] - 1  # all but the thumbs-down
    assert figures["new_entries"] == figures["clusters"] == len(proposals)
    assert figures["paraphrases"] == 0 and out["model_version"] == 1
    sizes = [int(p["cluster_size"]) for p in proposals]
    assert sizes == sorted(sizes, reverse=True)  # largest first


def test_the_consoles_tries_are_never_mined(shop: Any) -> None:
    """What the merchant typed in the console's Try (channel console) is a test, not a customer's
    unanswered question: handed off, clarified, corrected or in a badly rated chat, it is not mined."""
    from api.kb.mining import mined_messages, period
    from api.store import exchanges

    c, key, _ = shop
    before = c.get(URL, headers=key).json()
    service = c.app.state.service  # type: ignore[attr-defined]
    tries = ["火星能送货吗", "火星上能送到吗", "送到火星要几天", "火星包邮吗"]
    with service.db.session() as s:
        ids = [
            exchanges.log_exchange(
                s,
                shop=SHOP,
                conversation_id="console-try",
                channel=exchanges.CONSOLE_CHANNEL,
                text=text,
                decision=decision,
                entry_id=None if decision != "answer" else "warranty",
                confidence=0.3,
                reason="confidence 0.30 < clarify threshold 0.40" if decision == "handoff" else "x",
                model_version=1,
                latency_ms=5,
            )
            for text, decision in zip(tries, ("handoff", "clarify", "answer", "answer"), strict=True)
        ]
        s.add(
            JdEvaluation(
                shop_id=SHOP, jd_id="e3", score=1, session_id="console-try", evaluated_at=datetime.now(UTC)
            )
        )
    _feedback(c, key, ids[2], "correction", out_of_scope=True)
    _feedback(c, key, ids[3], "down")
    after = c.get(URL, headers=key).json()
    assert after["figures"] == before["figures"] and after["proposals"] == before["proposals"]
    assert not any("火星" in p["question"] + p["similar"] for p in after["proposals"])
    with service.db.session() as s:  # mined when every channel is asked for: the rule is the channel
        start, end = period(None, None)
        everything = {m.text for m in mined_messages(s, SHOP, start, end, exclude_channels=())}
    assert set(tries) <= everything


def test_the_downloads_are_in_the_kb_format_and_upload_back(shop: Any) -> None:
    c, key, _ = shop
    rows = c.get(URL, headers=key).json()["proposals"]
    r = c.get(URL, headers=key, params={"format": "csv"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert "attachment" in r.headers["content-disposition"]
    assert PHONE not in r.content.decode("utf-8-sig")
    table = list(csv.reader(io.StringIO(r.content.decode("utf-8-sig"))))
    assert tuple(table[0]) == PROPOSAL_COLUMNS and table[0][:5] == KB_COLUMNS
    assert [dict(zip(table[0], t, strict=True)) for t in table[1:]] == rows
    x = c.get(URL, headers=key, params={"format": "xlsx"})
    assert x.status_code == 200 and x.content[:2] == b"PK"
    book = openpyxl.load_workbook(io.BytesIO(x.content))
    sheet = book.active
    assert sheet is not None
    cells = [["" if v is None else str(v) for v in row] for row in sheet.iter_rows(values_only=True)]
    assert cells == table

    # as downloaded, the new entries have no answer: the upload names each of those rows
    refused = c.post(f"/v1/shops/{SHOP}/kb", headers=key, files={"file": ("mined.csv", r.content)})
    assert refused.status_code == 422
    assert {i["row"] for i in refused.json()["issues"]} == set(range(2, len(rows) + 2))
    assert {i["column"] for i in refused.json()["issues"]} == {"answer"}

    # the merchant answers them in the XLSX and uploads it: accepted as the editable KB
    answer = PROPOSAL_COLUMNS.index("answer") + 1
    for n in range(2, sheet.max_row + 1):
        sheet.cell(row=n, column=answer, value="亲，支持的，详情请咨询客服。")
    edited = io.BytesIO()
    book.save(edited)
    up = c.post(f"/v1/shops/{SHOP}/kb", headers=key, files={"file": ("mined.xlsx", edited.getvalue())})
    assert up.status_code == 200 and up.json()["entries"] == len(rows), up.text

    # or pastes them, answered, under the KB's own export, uploads and publishes: the new questions are
    # answered by the new entries, the old ones as before
    publish_and_wait(c, SHOP, key, kb_csv())  # the KB again (the XLSX above replaced the draft)
    export = c.get(f"/v1/shops/{SHOP}/kb/export", headers=key)
    kb = list(csv.DictReader(io.StringIO(export.content.decode("utf-8-sig"))))
    header = list(kb[0])
    for t in table[1:]:
        row = dict(zip(table[0], t, strict=True))
        row["answer"] = f"亲，关于{row['question']}：请联系客服。"
        kb.append(row)
    merged = io.StringIO()
    w = csv.DictWriter(merged, fieldnames=header, extrasaction="ignore")
    w.writeheader()
    w.writerows(kb)
    publish_and_wait(c, SHOP, key, merged.getvalue().encode("utf-8"))
    assert say(c, SHOP, key, "质保几年", conv="after-1")["entry_id"] == "warranty"
    new_ids = {row["id"] for row in rows}
    for i, text in enumerate(["以旧换新怎么弄", "能上门安装吗", "赠品怎么领"]):
        reply = say(c, SHOP, key, text, conv=f"after-new-{i}")
        assert reply["kind"] == "answer" and reply["entry_id"] in new_ids, (text, reply)


def test_an_empty_or_unpublished_shop_gets_an_empty_result(client: TestClient) -> None:
    key = new_shop(client, SHOP)
    r = client.get(URL, headers=key)  # no version published: nothing to mine against, not an error
    assert r.status_code == 200, r.text
    assert r.json()["proposals"] == [] and r.json()["model_version"] is None
    publish_and_wait(client, SHOP, key, kb_csv())
    r = client.get(URL, headers=key)
    assert r.status_code == 200 and r.json()["proposals"] == [] and r.json()["figures"]["messages"] == 0
    for fmt in ("csv", "xlsx"):
        assert client.get(URL, headers=key, params={"format": fmt}).status_code == 200
    just = {"since": "2025-10-01T00:00:00+00:00", "until": "2026-01-01T00:00:00+00:00"}  # 92 days
    assert client.get(URL, headers=key, params=just).status_code == 200
    empty = client.get(URL, headers=key, params={"format": "csv"}).content.decode("utf-8-sig")
    assert [tuple(t) for t in csv.reader(io.StringIO(empty))] == [PROPOSAL_COLUMNS]


def test_only_the_period_is_mined(shop: Any) -> None:
    c, key, _ = shop
    before = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    r = c.get(URL, headers=key, params={"until": before})
    assert r.status_code == 200, r.text
    assert r.json()["figures"]["messages"] == 0 and r.json()["proposals"] == []
    # a period given in Beijing time (no zone) that holds the traffic
    now_bj = datetime.now(UTC) + timedelta(hours=8)
    params = {"since": f"{now_bj - timedelta(days=1):%Y-%m-%dT%H:%M:%S}"}
    day, default = c.get(URL, headers=key, params=params).json(), c.get(URL, headers=key).json()
    assert day["figures"]["messages"] > 0
    assert (day["figures"], day["proposals"]) == (default["figures"], default["proposals"])


def test_auth_is_required(shop: Any) -> None:
    c, _, _ = shop
    assert c.get(URL).status_code == 401
    assert c.get(URL, headers={"X-API-Key": "not-a-key"}).status_code == 401
    other = new_shop(c, "shop-b")
    assert c.get(URL, headers=other).status_code == 403
    assert c.get(URL, headers=other, params={"format": "csv"}).status_code == 403


@pytest.mark.parametrize(
    ("params", "says"),
    [
        ({"since": "2026-11-20T00:00:00", "until": "2026-11-10T00:00:00"}, "since must be before until"),
        ({"since": "2026-01-01T00:00:00", "until": "2026-11-10T00:00:00"}, "since..until spans 313.0 days"),
        ({"until": "2026-01-01T00:00:00+00:00", "since": "2025-09-30T23:00:00+00:00"}, "at most 92 days"),
        ({"since": "1999-12-31T00:00:00"}, "since must be a time between 2000 and 2100"),
        ({"until": "2101-01-01T00:00:00"}, "until must be a time between 2000 and 2100"),
        ({"since": "2999-01-01T00:00:00"}, "since must be a time between 2000 and 2100"),
    ],
)
def test_bad_periods_are_refused_naming_the_parameter(
    client: TestClient, params: dict[str, str], says: str
) -> None:
    key = new_shop(client, SHOP)
    r = client.get(URL, headers=key, params=params)
    assert r.status_code == 400, r.text
    assert says in r.json()["detail"], r.text
    bad = client.get(URL, headers=key, params={"since": "yesterday"})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["query", "since"]
    assert client.get(URL, headers=key, params={"format": "pdf"}).status_code == 422
