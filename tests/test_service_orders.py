"""Order answers, agent tasks and answer variants through the service, on both backends."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from api.settings import Settings
from tests.test_service import new_shop, publish_and_wait
from tests.test_service import settings as settings
from training.jos_sandbox import FakeJos, install_orders

APP_KEY, SECRET, TOKEN = "JDAPPKEY0001", "jd-secret-0123456789", "jd-token-abcdef"
ALICE, BOB = "jd_demo_alice", "jd_demo_bob"
SHIPPED = "300012345602"  # alice's, shipped by 京东快递
ADDRESS_ANSWERS = ("好的，已通知同事为您修改地址。", "收到，马上安排修改地址。", "已记下，稍后为您改好地址。")
ROWS = [
    ("invoice", "能开发票吗", "发票怎么开|有发票吗|能开专票吗", "支持开具电子发票。", "", "", ""),
    ("fee", "包邮吗", "运费多少|要邮费吗|免运费吗", "全国包邮。", "", "", ""),
    ("warranty", "保修多久", "质保几年|保修期多长|坏了保修吗", "整机保修两年。", "", "", ""),
    ("pay", "可以分期吗", "能用白条吗|分期免息吗|信用卡可以吗", "支持白条分期。", "", "", ""),
    (
        "order-status",
        "我的订单现在什么状态",
        "订单状态|查一下订单|我的订单怎么样了",
        "您的订单{order.id}：{order.state}，实付{order.amount}元。",
        "order_status",
        "",
        "",
    ),
    (
        "track",
        "我的快递到哪了",
        "查物流|物流信息|快递到哪里了|包裹到哪了",
        "{logistics.company}配送中：{logistics.latest}",
        "物流",
        "",
        "",
    ),
    (
        "address",
        "收货地址能改吗",
        "改地址|地址写错了怎么办|怎么修改收货地址|能换个地址吗",
        ADDRESS_ANSWERS[0],
        "",
        "是",
        "||".join(ADDRESS_ANSWERS[1:]),
    ),
]


def kb_bytes() -> bytes:
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(["id", "question", "similar", "answer", "动作", "通知人工", "备选答案"])
    w.writerows(ROWS)
    return out.getvalue().encode("utf-8")


@pytest.fixture
def shop(settings: Settings) -> Iterator[tuple[TestClient, dict[str, str], FakeJos]]:
    with FakeJos(APP_KEY, SECRET, TOKEN) as fake:
        install_orders(
            fake,
            order_method=settings.jos_order_method,
            logistics_method=settings.jos_logistics_method,
            refund_method=settings.jos_refund_method,
        )
        settings.jos_url = fake.url
        with TestClient(create_app(settings)) as c:
            key = new_shop(c)
            creds = {"app_key": APP_KEY, "app_secret": SECRET, "access_token": TOKEN}
            assert c.put("/v1/shops/shop-a/jd-credentials", headers=key, json=creds).status_code == 200
            publish_and_wait(c, "shop-a", key, kb_bytes())
            yield c, key, fake


def say(c: TestClient, key: dict[str, str], conv: str, text: str, **extra: Any) -> dict[str, Any]:
    r = c.post(
        "/v1/shops/shop-a/messages", headers=key, json={"conversation_id": conv, "text": text, **extra}
    )
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_order_conversation_through_the_service(shop: Any) -> None:
    c, key, _ = shop
    ask = say(c, key, "c1", "我的订单怎么样了", customer_pin=ALICE)
    assert ask["kind"] == "clarify" and "订单号" in ask["text"]
    answer = say(c, key, "c1", SHIPPED, customer_pin=ALICE)
    assert (
        answer["kind"] == "answer" and answer["text"] == f"您的订单{SHIPPED}：等待确认收货，实付6499.00元。"
    )
    track = say(c, key, "c1", "那快递到哪了", customer_pin=ALICE)
    assert track["kind"] == "answer" and track["text"] == "京东快递配送中：您的快件正在派送中，请保持电话畅通"
    card = say(c, key, "c2", "我的订单怎么样了", customer_pin=ALICE, order_id=SHIPPED)
    assert card["kind"] == "answer" and SHIPPED in card["text"]

    # the order number is stored masked in the exchange log and encrypted in the conversation state
    log = c.get("/v1/shops/shop-a/exchanges", headers=key).json()
    assert log and all(SHIPPED not in e["text"] for e in log)
    service = c.app.state.service  # type: ignore[attr-defined]
    raw = service.store.get_json(service.conversations.key("shop-a", "c1"))
    assert raw is not None and raw["order_ref"] and SHIPPED not in json.dumps(raw)


def test_another_customers_order_is_refused_and_failures_hand_off(shop: Any) -> None:
    c, key, fake = shop
    refused = say(c, key, "c3", f"订单{SHIPPED}现在什么状态", customer_pin=BOB)
    assert refused["kind"] == "clarify" and refused["handoff"] is None
    assert all(d not in refused["text"] for d in (SHIPPED, "等待确认收货", "6499", "京东快递"))
    nopin = say(c, key, "c4", f"订单{SHIPPED}现在什么状态")
    assert nopin["kind"] == "clarify" and SHIPPED not in nopin["text"]
    fake.faults = ["500"]
    failed = say(c, key, "c5", f"订单{SHIPPED}现在什么状态", customer_pin=ALICE)
    assert failed["kind"] == "handoff" and failed["handoff"]["code"] == "dynamic_failure"
    unknown = say(c, key, "c6", "订单300099999999现在什么状态", customer_pin=ALICE)
    assert unknown["kind"] == "handoff" and "not_found" in unknown["handoff"]["reason"]
    metrics = c.get("/metrics").text
    assert 'kefu_handoffs_total{reason="dynamic_failure",shop="shop-a"}' in metrics
    assert 'kefu_order_lookups_total{outcome="refused"}' in metrics


def test_the_jd_push_carries_the_order_card_and_stores_its_reply_masked(shop: Any) -> None:
    from api.db.models import JdMessage
    from api.jd import beijing_timestamp, sign

    c, _, _ = shop
    params = {
        "app_key": APP_KEY,
        "timestamp": beijing_timestamp(),
        "message_id": "m-order",
        "conversation_id": "pin-alice",
        "text": "我的订单怎么样了",
        "customer_pin": ALICE,
        "order_id": SHIPPED,
    }
    params["sign"] = sign(params, SECRET)
    r = c.post("/jd/shop-a/messages", data=params)
    assert r.status_code == 200 and SHIPPED in r.json()["reply"]["text"]
    with c.app.state.service.db.session() as s:  # type: ignore[attr-defined]
        stored = s.get(JdMessage, ("shop-a", hashlib.sha256(b"m-order").hexdigest()))
        assert stored is not None and SHIPPED not in json.dumps(stored.reply, ensure_ascii=False)


def metric(c: TestClient, sample: str) -> float:
    """One sample of /metrics (0 when absent); counters are per process, so tests compare values."""
    for line in c.get("/metrics").text.splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_notify_entries_answer_and_raise_a_task(shop: Any) -> None:
    c, key, _ = shop
    tasks_before = metric(c, 'kefu_agent_tasks_total{shop="shop-a"}')
    answers_before = metric(c, 'kefu_decisions_total{decision="answer",shop="shop-a"}')
    handoffs_before = metric(c, 'kefu_decisions_total{decision="handoff",shop="shop-a"}')
    r = say(c, key, "c7", "地址写错了怎么办，我电话13812345678", customer_pin=ALICE)
    assert r["kind"] == "answer" and r["entry_id"] == "address" and r["task_id"]
    assert r["text"] in ADDRESS_ANSWERS
    tasks = c.get("/v1/shops/shop-a/tasks", headers=key).json()
    assert [(t["id"], t["entry_id"], t["status"]) for t in tasks] == [(r["task_id"], "address", "open")]
    assert tasks[0]["conversation_id"] == "c7" and "13812345678" not in str(tasks[0]["context"])
    plain = say(c, key, "c8", "包邮吗")
    assert plain["task_id"] is None
    done = c.post(f"/v1/shops/shop-a/tasks/{r['task_id']}/done", headers=key)
    assert done.status_code == 200 and done.json()["status"] == "done" and done.json()["done_at"]
    assert c.get("/v1/shops/shop-a/tasks", headers=key).json() == []
    assert len(c.get("/v1/shops/shop-a/tasks?status=all", headers=key).json()) == 1
    assert c.post("/v1/shops/shop-a/tasks/999999/done", headers=key).status_code == 404
    other = new_shop(c, "shop-b")
    assert c.post(f"/v1/shops/shop-b/tasks/{r['task_id']}/done", headers=other).status_code == 404
    assert metric(c, 'kefu_agent_tasks_total{shop="shop-a"}') == tasks_before + 1
    assert metric(c, 'kefu_decisions_total{decision="answer",shop="shop-a"}') == answers_before + 2
    assert metric(c, 'kefu_decisions_total{decision="handoff",shop="shop-a"}') == handoffs_before


def test_answer_variants_rotate_across_conversations(shop: Any) -> None:
    c, key, _ = shop
    texts = [say(c, key, f"v{i}", "能改地址吗")["text"] for i in range(12)]
    assert set(texts) <= set(ADDRESS_ANSWERS) and len(set(texts)) > 1
    again = [say(c, key, f"v{i}-again", "能改地址吗")["text"] for i in range(12)]
    assert again != texts or len(set(texts)) == len(ADDRESS_ANSWERS)  # seeded by the conversation id


def test_entry_api_carries_the_new_fields_and_refuses_bad_ones(shop: Any) -> None:
    c, key, _ = shop
    body = {
        "question": "退款到哪一步了",
        "answer": "退款{refund.amount}元：{refund.state}",
        "action": "refund_status",
        "notify": True,
        "answer_variants": ["退款状态：{refund.state}"],
    }
    r = c.put("/v1/shops/shop-a/entries/refund", headers=key, json=body)
    assert r.status_code == 200, r.text
    got = c.get("/v1/shops/shop-a/entries/refund", headers=key).json()
    assert (got["action"], got["notify"], got["answer_variants"]) == (
        "refund_status",
        True,
        ["退款状态：{refund.state}"],
    )
    bad = c.put(
        "/v1/shops/shop-a/entries/bad",
        headers=key,
        json={**body, "question": "另一个", "answer": "{order.foo}"},
    )
    assert bad.status_code == 422
    assert [
        (i["column"], "unknown placeholder {order.foo}" in i["message"]) for i in bad.json()["issues"]
    ] == [("answer", True)]
    assert c.get("/v1/shops/shop-a/entries/bad", headers=key).status_code == 404
