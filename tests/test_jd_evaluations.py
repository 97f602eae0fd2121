"""JD's evaluations by JD's method: incremental windows, paging, resumption, backfill, statistics, and
ratings joined to the chats they rate (bot-handled or human-handled); JD's daily service statistics beside
the bot's figures. Through a real fake JOS server."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from api.jd import BEIJING, beijing_timestamp, sign
from api.jd.methods import EVALUATION_LIST, EVALUATION_STAT
from api.main import create_app
from api.settings import Settings
from tests.test_service import KB, kb_csv, new_shop, publish_and_wait
from tests.test_service import settings as settings
from training.jos_sandbox import (
    FakeJos,
    SandboxEvaluation,
    SandboxServiceDay,
    install_evaluations,
    install_service_stats,
)

APP_KEY, SECRET, TOKEN = "JDAPPKEY0001", "jd-secret-0123456789", "jd-token-abcdef"
PIN_BOT, PIN_HUMAN, PIN_NOSID, PIN_ELSE = "jd_buyer_lin", "jd_buyer_wu", "jd_buyer_he", "jd_buyer_zhou"


def bj(t: datetime) -> str:
    return beijing_timestamp(t)


def ev(i: int, at: datetime, score: int = 5, *, pin: str = PIN_ELSE, sid: str = "", text_: str = "") -> Any:
    return SandboxEvaluation(f"ev-{i}", pin, "waiter_01", sid, score, text_ or "服务不错", bj(at))


@pytest.fixture
def fake() -> Iterator[FakeJos]:
    with FakeJos(APP_KEY, SECRET, TOKEN) as f:
        yield f


@pytest.fixture
def client(settings: Settings, fake: FakeJos) -> Iterator[tuple[TestClient, dict[str, str]]]:
    settings.jos_url = fake.url
    settings.evaluation_backfill_days = 3
    with TestClient(create_app(settings)) as c:
        key = new_shop(c)
        publish_and_wait(c, "shop-a", key, kb_csv(KB))
        creds = {"app_key": APP_KEY, "app_secret": SECRET, "access_token": TOKEN}
        assert c.put("/v1/shops/shop-a/jd-credentials", headers=key, json=creds).status_code == 200
        yield c, key


def calls(fake: FakeJos, method: str) -> list[dict[str, Any]]:
    return [r.biz_params for r in fake.requests if r.jos_method == method]


def test_the_default_method_is_jds_with_its_window_and_paging(client: Any, fake: FakeJos) -> None:
    c, key = client
    now = datetime.now(UTC)
    install_evaluations(fake, [ev(i, now - timedelta(hours=30, minutes=i)) for i in range(120)])
    r = c.post("/v1/shops/shop-a/jd/evaluations/pull", headers=key)
    assert r.status_code == 200, r.text
    assert (r.json()["seen"], r.json()["new"]) == (120, 120)
    sent = calls(fake, EVALUATION_LIST.name)
    assert sent and all(set(b) == {"startTime", "endTime", "page", "pageSize"} for b in sent)
    assert set(sent[0]) <= set(EVALUATION_LIST.params)
    # 3 days in 24-hour windows; the window holding all 120 is read in pages of 50
    assert len({b["startTime"] for b in sent}) == 3
    pages: dict[str, list[int]] = {}
    for b in sent:
        pages.setdefault(b["startTime"], []).append(b["page"])
    assert sorted(pages.values()) == [[1], [1], [1, 2, 3]]
    assert len(c.get("/v1/shops/shop-a/jd/evaluations?limit=1000", headers=key).json()) == 120


def test_pulls_continue_where_the_last_one_ended(client: Any, fake: FakeJos) -> None:
    c, key = client
    now = datetime.now(UTC)
    rows = [ev(1, now - timedelta(days=2)), ev(2, now - timedelta(hours=5))]
    install_evaluations(fake, rows)
    assert c.post("/v1/shops/shop-a/jd/evaluations/pull", headers=key).json()["new"] == 2
    fake.requests.clear()
    install_evaluations(fake, [*rows, ev(3, datetime.now(UTC) - timedelta(seconds=1))])
    time.sleep(1.1)
    again = c.post("/v1/shops/shop-a/jd/evaluations/pull", headers=key).json()
    assert (again["new"], again["seen"]) == (1, 1)  # only since the last pull, less an hour's overlap
    sent = calls(fake, EVALUATION_LIST.name)
    first_start = datetime.strptime(sent[0]["startTime"], "%Y-%m-%d %H:%M:%S").replace(tzinfo=BEIJING)
    assert now - timedelta(hours=1, minutes=5) < first_start < now - timedelta(minutes=55)


def test_a_failed_pull_resumes_from_the_last_whole_window(client: Any, fake: FakeJos) -> None:
    c, key = client
    now = datetime.now(UTC)
    start = now - timedelta(days=2, hours=12)
    install_evaluations(fake, [ev(i, start + timedelta(days=i)) for i in range(3)])
    fake.faults = [None, "jos:19"]  # the first window answers, the second is refused
    r = c.post("/v1/shops/shop-a/jd/evaluations/pull", headers=key)
    assert r.status_code == 502 and SECRET not in r.text and TOKEN not in r.text
    fake.faults = []
    fake.requests.clear()
    resumed = c.post("/v1/shops/shop-a/jd/evaluations/pull", headers=key).json()
    assert resumed["new"] == 2  # the first window's evaluation was stored before the failure
    sent = calls(fake, EVALUATION_LIST.name)
    assert len({b["startTime"] for b in sent}) == 3  # 2 days left (+1 hour's overlap): three windows
    assert len(c.get("/v1/shops/shop-a/jd/evaluations", headers=key).json()) == 3


def test_a_backfill_pulls_its_period_and_leaves_the_cursor(client: Any, fake: FakeJos) -> None:
    c, key = client
    now = datetime.now(UTC)
    old = now - timedelta(days=20)
    install_evaluations(fake, [ev(1, old), ev(2, now - timedelta(hours=2))])
    assert c.post("/v1/shops/shop-a/jd/evaluations/pull", headers=key).json()["new"] == 1  # 3 days back
    since = (old - timedelta(hours=1)).astimezone(BEIJING).strftime("%Y-%m-%dT%H:%M:%S")
    until = (old + timedelta(hours=1)).astimezone(BEIJING).strftime("%Y-%m-%dT%H:%M:%S")
    r = c.post(f"/v1/shops/shop-a/jd/evaluations/pull?since={since}&until={until}", headers=key)
    assert r.status_code == 200 and r.json()["new"] == 1, r.text
    fake.requests.clear()
    c.post("/v1/shops/shop-a/jd/evaluations/pull", headers=key)
    starts = [b["startTime"] for b in calls(fake, EVALUATION_LIST.name)]
    assert starts and min(starts) > bj(now - timedelta(hours=2))  # from the cursor, not the backfill
    bad = c.post(f"/v1/shops/shop-a/jd/evaluations/pull?until={until}", headers=key)
    assert bad.status_code == 400 and "until needs since" in bad.text
    backwards = c.post(f"/v1/shops/shop-a/jd/evaluations/pull?since={until}&until={since}", headers=key)
    assert backwards.status_code == 400 and "since must be before until" in backwards.text
    too_old = c.post("/v1/shops/shop-a/jd/evaluations/pull?since=2020-01-01T00:00:00", headers=key)
    assert too_old.status_code == 400 and "at most 366 days" in too_old.text
    odd = c.get("/v1/shops/shop-a/jd/evaluations/summary?since=0001-01-01T00:00:00", headers=key)
    assert odd.status_code == 400 and "between 2000 and 2100" in odd.text


def test_statistics_come_from_jds_stat_method(client: Any, fake: FakeJos) -> None:
    c, key = client
    now = datetime.now(UTC)
    install_evaluations(fake, [ev(1, now - timedelta(hours=3), 5), ev(2, now - timedelta(hours=2), 1)])
    since = (now - timedelta(days=1)).astimezone(BEIJING).strftime("%Y-%m-%dT%H:%M:%S")
    until = now.astimezone(BEIJING).strftime("%Y-%m-%dT%H:%M:%S")
    r = c.get(f"/v1/shops/shop-a/jd/evaluations/stats?since={since}&until={until}", headers=key)
    assert r.status_code == 200, r.text
    assert r.json() == {
        "method": EVALUATION_STAT.name,
        "total": 2,
        "satisfied": 1,
        "dissatisfied": 1,
        "average": 3.0,
    }
    assert set(calls(fake, EVALUATION_STAT.name)[0]) <= set(EVALUATION_STAT.params)
    assert c.get("/v1/shops/shop-a/jd/evaluations/stats", headers=key).status_code == 422


def signed(message_id: str, conversation: str, message: str, pin: str) -> dict[str, str]:
    params = {
        "app_key": APP_KEY,
        "timestamp": beijing_timestamp(),
        "message_id": message_id,
        "conversation_id": conversation,
        "text": message,
        "customer_pin": pin,
    }
    params["sign"] = sign(params, SECRET)
    return params


def test_ratings_are_joined_to_the_chats_and_who_handled_them(
    client: Any, fake: FakeJos, settings: Settings
) -> None:
    c, key = client
    chats = [
        ("m1", "sid-1001", "质保几年", PIN_BOT),
        ("m2", "sid-1001", "谢谢", PIN_BOT),
        ("m3", "sid-2002", "我要转人工", PIN_HUMAN),
        ("m4", "chat-x", "能开发票吗", PIN_NOSID),  # JD's evaluation carries no session id for this one
    ]
    for mid, conv, message, pin in chats:
        r = c.post("/jd/shop-a/messages", data=signed(mid, conv, message, pin))
        assert r.status_code == 200, r.text
    time.sleep(1.1)  # ratings come after the chats (JD's times are to the second)
    at = datetime.now(UTC)  # JD gives seconds: still after the chats
    install_evaluations(
        fake,
        [
            ev(1, at, 5, pin=PIN_BOT, sid="sid-1001"),
            ev(2, at, 1, pin=PIN_HUMAN, sid="sid-2002", text_="等太久了，电话13812345678"),
            ev(3, at, 4, pin=PIN_NOSID),
            ev(4, at, 3, pin=PIN_ELSE, sid="sid-9999"),  # a chat the bot never saw
        ],
    )
    time.sleep(1.1)
    assert c.post("/v1/shops/shop-a/jd/evaluations/pull", headers=key).json()["new"] == 4
    listed = {e["jd_id"]: e for e in c.get("/v1/shops/shop-a/jd/evaluations", headers=key).json()}
    assert {k: e["handled_by"] for k, e in listed.items()} == {
        "ev-1": "bot",
        "ev-2": "human",
        "ev-3": "bot",
        "ev-4": "unmatched",
    }
    assert listed["ev-3"]["conversation_id"] == "chat-x"
    assert "13812345678" not in listed["ev-2"]["content"]
    summary = c.get("/v1/shops/shop-a/jd/evaluations/summary", headers=key).json()
    assert summary["bot"] == {"evaluations": 2, "average_score": 4.5, "dissatisfied_share": 0.0}
    assert summary["human"] == {"evaluations": 1, "average_score": 1.0, "dissatisfied_share": 1.0}
    assert summary["unmatched"]["evaluations"] == 1
    # customers are stored as keyed hashes only: no pin anywhere in the tables
    engine = create_engine(settings.database_url)
    with engine.connect() as conn:
        for table in ("jd_evaluations", "exchanges"):
            dump = " ".join(str(row) for row in conn.execute(text(f"SELECT * FROM {table}")))
            assert not any(pin in dump for pin in (PIN_BOT, PIN_HUMAN, PIN_NOSID, PIN_ELSE)), table
        hashes = set(conn.execute(text("SELECT customer_hash FROM exchanges")).scalars())
    engine.dispose()
    assert len(hashes - {None}) == 3 and all(len(h) == 64 for h in hashes if h)


def test_service_statistics_per_day_beside_the_bots_figures(client: Any, fake: FakeJos) -> None:
    c, key = client
    today = datetime.now(BEIJING).date()
    yesterday = today - timedelta(days=1)
    install_service_stats(
        fake,
        [
            SandboxServiceDay(yesterday.isoformat(), 7, 42.5, 0.31, {"waiter_01": 3600, "waiter_02": 1800}),
            SandboxServiceDay(today.isoformat(), 2, 12.0, 0.25, {"waiter_01": 600}),
        ],
    )
    for i, message in enumerate(["质保几年", "能开发票吗", "我要转人工", "天气怎么样"]):
        assert (
            c.post("/jd/shop-a/messages", data=signed(f"s{i}", "sid-1", message, PIN_BOT)).status_code == 200
        )
    r = c.get(f"/v1/shops/shop-a/jd/service-stats?since={yesterday}&until={today}", headers=key)
    assert r.status_code == 200, r.text
    first, second = r.json()["days"]
    assert first == {
        "date": yesterday.isoformat(),
        "unreplied_sessions": 7.0,
        "avg_wait_seconds": 42.5,
        "ask_rate": 0.31,
        "agent_online_seconds": 5400.0,
        "bot": {"messages": 0, "answered": 0, "handoffs": 0, "answer_rate": None, "handoff_rate": None},
    }
    assert second["unreplied_sessions"] == 2.0 and second["agent_online_seconds"] == 600.0
    assert second["bot"]["messages"] == 4 and second["bot"]["handoffs"] >= 1
    assert second["bot"]["answered"] == 2 and second["bot"]["answer_rate"] == 0.5
    assert r.json()["bot"]["messages"] == 4
    days_sent = [b.get("date") for b in calls(fake, "jingdong.im.pop.consult.avgwaittime.get")]
    assert days_sent == [yesterday.isoformat(), today.isoformat()]
    too_long = c.get(
        f"/v1/shops/shop-a/jd/service-stats?since={today - timedelta(days=40)}&until={today}", headers=key
    )
    assert too_long.status_code == 400 and "31 days" in too_long.text
    fake.faults = ["jos:19"]
    refused = c.get(f"/v1/shops/shop-a/jd/service-stats?since={today}&until={today}", headers=key)
    fake.faults = []
    assert refused.status_code == 502
