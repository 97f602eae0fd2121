"""The traffic figures (api/store/traffic.py) and GET /v1/shops/{shop}/report/traffic, on SQLite and on
PostgreSQL + Redis (the `settings` fixture of tests/test_service.py).

A day of known exchanges is written through the store (so they can be spread over the hours of a past
day), with feedback given through the API and JD ratings stored as api.jd.evaluations stores them; every
figure is checked against counts worked out by hand below. Messages sent through the public API now are
checked in the default period (the last 7 days), where the past day is not.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.db.models import Exchange, JdEvaluation
from api.dialog.conversation import REASON_HUMAN
from api.jd import BEIJING
from api.store import exchanges
from api.store.traffic import handoff_code, percentiles, skill_of, traffic_figures
from tests.test_service import client as client
from tests.test_service import kb_csv, new_shop, publish_and_wait, say
from tests.test_service import settings as settings

SHOP, OTHER = "shop-a", "shop-b"
URL = f"/v1/shops/{SHOP}/report/traffic"
DAY = datetime(2025, 3, 5, tzinfo=BEIJING)
SINCE, UNTIL = DAY.replace(hour=10), DAY.replace(hour=14)


def at(hour: int, minute: int = 0) -> datetime:
    return DAY.replace(hour=hour, minute=minute)


# (Beijing time, conversation, decision, entry, confidence, latency ms, reason, text, customer hash)
LOG: list[tuple[datetime, str, str, str | None, float, float, str, str, str | None]] = [
    (at(10, 5), "c-answer", "answer", "warranty", 0.95, 10, "confident", "质保几年", None),
    (at(10, 20), "c-answer", "answer", "warranty", 0.92, 20, "confident", "保修多久啊", None),
    (at(10, 30), "c-answer", "smalltalk", None, 0.0, 5, "small talk: greeting", "你好", None),
    (at(10, 40), "c-clarify", "clarify", None, 0.55, 30, "low confidence", "发票", None),
    (at(11, 10), "c-handoff", "handoff", None, 0.21, 40, "3 misses in a row (x)", "以旧换新可以吗", None),
    (at(11, 15), "c-handoff", "handoff", None, 0.0, 50, "bot cannot answer: y", "以旧换新 可以吗？", None),
    (at(11, 20), "c-handoff", "handoff", None, 0.3, 60, REASON_HUMAN, "转人工", None),
    (
        at(11, 30),
        "c-skills",
        "answer",
        "order-status",
        1.0,
        70,
        "dynamic entry order-status: order_status from JD",
        "我的订单到哪了",
        "h-skills",
    ),
    (at(11, 40), "c-skills", "answer", "sku:100:颜色", 0.8, 80, "spec", "什么颜色", "h-skills"),
    (at(11, 45), "c-skills", "clarify", None, 1.0, 90, "which product? 2 match", "这款呢", "h-skills"),
    (at(13, 10), "c-fail", "handoff", None, 1.0, 100, "order lookup failed (timeout): slow", "查订单", None),
    (at(13, 20), "c-assist", "assist", "warranty", 0.9, 0, "1 suggestion(s)", "保修呢", None),
    # outside the period: just before it, and at its (excluded) end
    (at(9, 59), "c-before", "answer", "warranty", 0.9, 1, "confident", "保修", None),
    (at(14, 0), "c-after", "answer", "warranty", 0.9, 1, "confident", "保修", None),
]


def _log(service: Any, shop: str, version: int, row: tuple[Any, ...], channel: str = "api") -> int:
    when, conv, decision, entry, conf, ms, reason, text, customer = row
    with service.db.session() as s:
        exchange_id = exchanges.log_exchange(
            s,
            shop=shop,
            conversation_id=conv,
            channel=channel,
            text=text,
            decision=decision,
            entry_id=entry,
            confidence=conf,
            reason=reason,
            model_version=version,
            latency_ms=ms,
            customer_hash=customer,
        )
        s.get(Exchange, exchange_id).created_at = when.astimezone(UTC)  # type: ignore[union-attr]
    return exchange_id


@pytest.fixture
def day(client: TestClient) -> tuple[TestClient, dict[str, str], list[int]]:
    """SHOP with the test KB published, the day of LOG, feedback and JD ratings; OTHER with one exchange
    in the same hours (which SHOP's figures must not count)."""
    key = new_shop(client, SHOP)
    new_shop(client, OTHER)
    version = publish_and_wait(client, SHOP, key, kb_csv())
    # in the editable KB only (not published): its question is still the live KB's
    r = client.put(
        f"/v1/shops/{SHOP}/entries/order-status", headers=key, json={"question": "订单到哪了", "answer": "x"}
    )
    assert r.status_code == 200, r.text
    service = client.app.state.service  # type: ignore[attr-defined]
    ids = [_log(service, SHOP, version, row) for row in LOG]
    _log(service, OTHER, version, (at(10, 10), "o", "handoff", None, 0.1, 1, REASON_HUMAN, "x", None))
    for index, body in [
        (0, {"kind": "up"}),
        (0, {"kind": "down"}),
        (1, {"kind": "down"}),
        (8, {"kind": "correction", "out_of_scope": True}),
        (3, {"kind": "correction", "correct_entry_id": "invoice"}),
        (12, {"kind": "down"}),  # on an exchange before the period: not counted
    ]:
        r = client.post(f"/v1/shops/{SHOP}/feedback", headers=key, json={"exchange_id": ids[index], **body})
        assert r.status_code == 201, r.text
    ratings = [
        ("e1", 1, "c-handoff", None, at(11, 30)),  # after the handoffs: handed off
        ("e2", 5, "c-answer", None, at(10, 35)),  # answered
        ("e3", 2, "c-clarify", None, at(12)),  # only clarified: not answered
        ("e4", 3, "no-such-chat", None, at(12)),  # a chat the bot never saw
        ("e5", 4, None, "h-skills", at(11, 50)),  # joined by the customer: answered before the rating
        ("e6", 3, "c-handoff", None, at(11, 5)),  # before the handoffs: nothing answered yet
        ("e7", 1, "c-handoff", None, at(14, 30)),  # after the period
        ("e8", None, "c-answer", None, at(11)),  # no score
    ]
    with service.db.session() as s:  # as api.jd.evaluations stores pulled ratings
        for jd_id, score, session, customer, when in ratings:
            s.add(
                JdEvaluation(
                    shop_id=SHOP,
                    jd_id=jd_id,
                    score=score,
                    session_id=session,
                    customer_hash=customer,
                    evaluated_at=when.astimezone(UTC),
                )
            )
        s.add(
            JdEvaluation(
                shop_id=OTHER, jd_id="o1", score=1, session_id="o", evaluated_at=at(11).astimezone(UTC)
            )
        )
    return client, key, ids


def _get(c: TestClient, key: dict[str, str], **params: str) -> dict[str, Any]:
    r = c.get(URL, headers=key, params=params)
    assert r.status_code == 200, r.text
    return r.json()


def _naive(t: datetime) -> str:
    """A Beijing time as a merchant types it: no zone."""
    return t.replace(tzinfo=None).isoformat()


def test_the_figures_of_a_known_day(day: Any) -> None:
    c, key, _ = day
    out = _get(c, key, since=_naive(SINCE), until=_naive(UNTIL))
    assert (out["shop"], out["bucket"]) == (SHOP, "hour")  # 4 hours: per hour
    assert (out["since"], out["until"]) == (SINCE.isoformat(), UNTIL.isoformat())
    assert out["totals"] == {
        "messages": 11,
        "questions": 10,
        "answer": 4,
        "clarify": 2,
        "handoff": 4,
        "smalltalk": 1,
        "answer_rate": 0.4,
        "clarify_rate": 0.2,
        "handoff_rate": 0.4,
        "conversations": 5,
        "smalltalk_share": round(1 / 11, 4),
        "assist_requests": 1,
    }
    assert out["by_skill"] == {
        "faq": {"answer": 2, "clarify": 1, "handoff": 3},
        "orders": {"answer": 1, "clarify": 0, "handoff": 1},
        "products": {"answer": 1, "clarify": 1, "handoff": 0},
    }
    series = {b["start"]: b for b in out["series"]}
    assert list(series) == [at(h).isoformat() for h in (10, 11, 12, 13)]
    ten, eleven, noon, one = series.values()
    assert (ten["messages"], ten["answer"], ten["clarify"], ten["handoff"], ten["smalltalk"]) == (
        4,
        2,
        1,
        0,
        1,
    )
    assert (ten["answer_rate"], ten["clarify_rate"], ten["handoff_rate"]) == (0.6667, 0.3333, 0.0)
    assert ten["latency_ms"] == {"p50": 10, "p95": 30, "p99": 30}  # of 5, 10, 20, 30 by nearest rank
    assert (eleven["messages"], eleven["answer"], eleven["clarify"], eleven["handoff"]) == (6, 2, 1, 3)
    assert eleven["handoff_rate"] == 0.5 and eleven["latency_ms"] == {"p50": 60, "p95": 90, "p99": 90}
    assert noon["messages"] == 0 and noon["answer_rate"] is None and noon["latency_ms"]["p50"] is None
    assert (one["handoff"], one["handoff_rate"], one["latency_ms"]["p99"]) == (1, 1.0, 100)
    assert out["latency_ms"] == {"n": 11, "p50": 50, "p95": 100, "p99": 100, "mean": 50.455, "max": 100}
    assert out["handoff_reasons"] == [
        {"code": code, "count": 1, "share": 0.25}
        for code in ("dynamic_failure", "explicit_request", "low_confidence", "repeated_miss")
    ]
    bins = {b["lo"]: (b["answer"], b["clarify"], b["handoff"]) for b in out["confidence"]}
    assert len(bins) == 10
    assert {lo: n for lo, n in bins.items() if any(n)} == {
        0.0: (0, 0, 1),
        0.2: (0, 0, 1),
        0.3: (0, 0, 1),
        0.5: (0, 1, 0),
        0.8: (1, 0, 0),
        0.9: (3, 1, 1),
    }
    assert out["feedback"] == {
        "up": 1,
        "down": 2,
        "correction": 2,
        "correction_out_of_scope": 1,
        "exchanges": 4,
    }
    assert [
        (e["entry_id"], e["question"], e["skill"], e["count"], e["share"]) for e in out["top_entries"]
    ] == [
        ("warranty", "保修多久", "faq", 2, 0.5),  # the published version's question
        ("order-status", "订单到哪了", "faq", 1, 0.25),  # the editable KB's
        ("sku:100:颜色", None, "products", 1, 0.25),
    ]
    assert out["top_entries"][0]["last_seen"] == at(10, 20).isoformat()
    assert out["handed_off_questions"] == [
        {
            "text": "以旧换新 可以吗？",  # the latest of the two, which normalize alike
            "count": 2,
            "last_seen": at(11, 15).isoformat(),
            "codes": {"low_confidence": 1, "repeated_miss": 1},
        },
        {"text": "查订单", "count": 1, "last_seen": at(13, 10).isoformat(), "codes": {"dynamic_failure": 1}},
    ]  # 转人工 is a request for a person, not a question


def test_ratings_beside_what_the_bot_did(day: Any) -> None:
    c, key, _ = day
    ratings = _get(c, key, since=_naive(SINCE), until=_naive(UNTIL))["ratings"]
    assert ratings["ratings"] == 6 and ratings["low_score"] == 2
    assert ratings["by_outcome"] == {
        "answered": {"ratings": 2, "scores": {"4": 1, "5": 1}, "average": 4.5, "dissatisfied_share": 0.0},
        "not_answered": {"ratings": 2, "scores": {"2": 1, "3": 1}, "average": 2.5, "dissatisfied_share": 0.5},
        "handed_off": {"ratings": 1, "scores": {"1": 1}, "average": 1.0, "dissatisfied_share": 1.0},
        "unmatched": {"ratings": 1, "scores": {"3": 1}, "average": 3.0, "dissatisfied_share": 0.0},
    }


def test_days_and_the_function_agree_with_the_route(day: Any) -> None:
    c, key, _ = day
    by_day = _get(c, key, since=_naive(DAY), until=_naive(DAY + timedelta(days=1)), bucket="day")
    assert [b["start"] for b in by_day["series"]] == [DAY.isoformat()]
    (only,) = by_day["series"]
    assert (only["messages"], only["answer"]) == (13, 6)  # the whole day: with 9:59 and 14:00
    assert by_day["totals"]["messages"] == 13 and by_day["bucket"] == "day"
    # a week is shown per day, without being asked
    week = _get(c, key, since=_naive(DAY - timedelta(days=6)), until=_naive(DAY + timedelta(days=1)))
    assert week["bucket"] == "day" and len(week["series"]) == 7
    assert [b["messages"] for b in week["series"]] == [0] * 6 + [13]
    service = c.app.state.service  # type: ignore[attr-defined]
    with service.db.session() as s:
        direct = traffic_figures(s, SHOP, SINCE, UNTIL)
    assert direct == _get(c, key, since=SINCE.isoformat(), until=UNTIL.isoformat())


def test_default_period_holds_the_messages_sent_now(day: Any) -> None:
    c, key, _ = day
    replies = [say(c, SHOP, key, text, conv="live") for text in ("质保几年", "你好", "转人工")]
    assert [r["kind"] for r in replies] == ["answer", "smalltalk", "handoff"]
    out = _get(c, key)  # the last 7 days: not the day of LOG
    totals = out["totals"]
    assert (totals["messages"], totals["answer"], totals["smalltalk"], totals["handoff"]) == (3, 1, 1, 1)
    assert out["bucket"] == "day" and len(out["series"]) == 8  # 7 days from now span 8 Beijing days
    assert out["handoff_reasons"] == [{"code": "explicit_request", "count": 1, "share": 1.0}]
    assert out["top_entries"][0]["entry_id"] == "warranty" and out["latency_ms"]["n"] == 3
    since = datetime.fromisoformat(out["since"])
    assert timedelta(days=7) == datetime.fromisoformat(out["until"]) - since


def test_the_consoles_tries_are_left_out_unless_asked_for(day: Any) -> None:
    """The merchant's own tests in the console's Try (channel console) are no customer's: no figure
    counts them by default, in the route or the function; include_console=true counts them."""
    c, key, _ = day
    period = {"since": _naive(SINCE), "until": _naive(UNTIL)}
    before = _get(c, key, **period)
    assert before["excluded_channels"] == ["console"]
    service = c.app.state.service  # type: ignore[attr-defined]
    tries = [
        (at(10, 50), "console-1", "answer", "warranty", 0.95, 500, "confident", "保修多久", None),
        (at(11, 50), "console-1", "handoff", None, 0.1, 700, "bot cannot answer: y", "能送火星吗", None),
    ]
    ids = [_log(service, SHOP, 1, row, channel="console") for row in tries]
    r = c.post(f"/v1/shops/{SHOP}/feedback", headers=key, json={"exchange_id": ids[0], "kind": "down"})
    assert r.status_code == 201, r.text
    assert _get(c, key, **period) == before
    with service.db.session() as s:
        assert traffic_figures(s, SHOP, SINCE, UNTIL) == before
        everything = traffic_figures(s, SHOP, SINCE, UNTIL, exclude_channels=())
    counted = _get(c, key, **period, include_console="true")
    assert counted == everything and counted["excluded_channels"] == []
    totals, was = counted["totals"], before["totals"]
    assert (totals["messages"], totals["answer"], totals["handoff"], totals["conversations"]) == (
        was["messages"] + 2,
        was["answer"] + 1,
        was["handoff"] + 1,
        was["conversations"] + 1,
    )
    assert (
        counted["latency_ms"]["max"] == 700 and counted["feedback"]["down"] == before["feedback"]["down"] + 1
    )
    assert counted["top_entries"][0] == {
        **before["top_entries"][0],
        "count": 3,
        "share": 0.6,
        "last_seen": at(10, 50).isoformat(),
    }
    assert "能送火星吗" in [q["text"] for q in counted["handed_off_questions"]]
    assert "能送火星吗" not in [q["text"] for q in before["handed_off_questions"]]


def test_bad_periods_and_keys_are_refused(day: Any) -> None:
    c, key, _ = day
    for params, words in [
        ({"since": _naive(UNTIL), "until": _naive(SINCE)}, "since must be before until"),
        ({"since": "2025-01-01T00:00:00", "until": "2025-06-01T00:00:00"}, "at most 92 days"),
        ({"since": "1999-12-31T00:00:00"}, "between 2000 and 2100"),
    ]:
        r = c.get(URL, headers=key, params=params)
        assert r.status_code == 400 and words in r.json()["detail"], (params, r.text)
    assert c.get(URL, headers=key, params={"bucket": "week"}).status_code == 422
    assert c.get(URL, headers=key, params={"since": "yesterday"}).status_code == 422
    assert c.get(URL).status_code == 401
    other = new_shop(c, "shop-c")
    assert c.get(URL, headers=other).status_code == 403


# --------------------------------------------------------------------------- reading the log back


def test_logged_reasons_read_back_as_codes_and_skills() -> None:
    from api.dialog.conversation import (
        REASON_MODE_ASSIST,
        REASON_MODE_OFF,
        REASON_NO_MODEL,
        REASON_NON_TEXT,
        REASON_REPEATED,
        REASON_VENTING,
    )
    from api.dialog.orders_skill import REASON_NOT_CONFIGURED, REASON_REFUSALS
    from api.jd.queue import NOT_DELIVERABLE, NOT_DELIVERED

    assert [
        handoff_code(r)
        for r in (
            REASON_REPEATED,
            REASON_VENTING,
            f"{REASON_NON_TEXT} (image)",
            REASON_MODE_OFF,
            REASON_MODE_ASSIST,
            REASON_NO_MODEL,
            NOT_DELIVERED,
            NOT_DELIVERABLE,
            REASON_REFUSALS,
            f"{REASON_NOT_CONFIGURED} (one of 2 questions in the message)",
            "12 misses in a row (no entry close enough)",
            "something new",
        )
    ] == [
        "repeated_question",
        "mood",
        "non_text",
        "mode_off",
        "mode_assist",
        "no_model",
        "not_delivered",
        "not_delivered",
        "dynamic_failure",
        "dynamic_failure",
        "repeated_miss",
        "other",
    ]
    assert skill_of("sku:1", "product 1 named") == "products"
    assert skill_of(None, "order number needed for dynamic entry logistics") == "orders"
    assert skill_of("warranty", "confident") == "faq"
    assert percentiles([]) == {"p50": None, "p95": None, "p99": None}
    assert percentiles([3.0, 1.0, 2.0]) == {"p50": 2.0, "p95": 3.0, "p99": 3.0}
