"""Conversations beyond the FAQ through the service: small talk settings, handoff reasons in /metrics."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from tests.test_service import client as client
from tests.test_service import kb_csv, new_shop, publish_and_wait, say
from tests.test_service import settings as settings


def test_small_talk_replies_follow_the_shop_settings_at_once(client: TestClient) -> None:
    key = new_shop(client)
    publish_and_wait(client, "shop-a", key, kb_csv())
    first = say(client, "shop-a", key, "在吗", conv="g1")
    assert first["kind"] == "smalltalk" and first["smalltalk"] == "greeting"
    again = say(client, "shop-a", key, "你好", conv="g1")
    assert again["kind"] == "smalltalk"  # 在吗 then 你好: two greetings, no "2 misses in a row"
    settings = {"smalltalk": {"greeting": {"reply": "欢迎光临测试店！"}, "thanks": {"enabled": False}}}
    r = client.put("/v1/shops/shop-a/settings", headers=key, json=settings)
    assert r.status_code == 200, r.text
    assert say(client, "shop-a", key, "在吗", conv="g2")["text"] == "欢迎光临测试店！"
    assert say(client, "shop-a", key, "谢谢", conv="g2")["kind"] != "smalltalk"
    bad = client.put("/v1/shops/shop-a/settings", headers=key, json={"smalltalk": {"weather": {}}})
    assert bad.status_code == 422


def test_handoff_reasons_are_labelled_in_replies_and_metrics(client: TestClient) -> None:
    key = new_shop(client)
    publish_and_wait(client, "shop-a", key, kb_csv())
    human = say(client, "shop-a", key, "转人工", conv="h1")
    assert human["kind"] == "handoff" and human["handoff"]["code"] == "explicit_request"
    client.put("/v1/shops/shop-a/mode", headers=key, json={"mode": "off"})
    off = say(client, "shop-a", key, "能开发票吗", conv="h2")
    assert off["handoff"]["code"] == "mode_off"
    metrics = client.get("/metrics").text
    assert 'kefu_handoffs_total{reason="explicit_request",shop="shop-a"}' in metrics
    assert 'kefu_handoffs_total{reason="mode_off",shop="shop-a"}' in metrics


def test_a_handoff_carries_the_product_and_the_entries_answered(client: TestClient) -> None:
    """Through the API: the agent taking over sees the product page the customer is on and what the
    bot already answered; in assist mode too (the product), where the bot answers nothing itself."""
    key = new_shop(client)
    publish_and_wait(client, "shop-a", key, kb_csv())

    def post(text: str, conv: str) -> dict[str, Any]:
        body = {"conversation_id": conv, "text": text, "sku_id": "100012043978"}
        r = client.post("/v1/shops/shop-a/messages", headers=key, json=body)
        assert r.status_code == 200, r.text
        return r.json()

    assert post("质保几年", "p1")["kind"] == "answer"
    handoff = post("转人工", "p1")["handoff"]
    assert handoff["sku_id"] == "100012043978"
    assert [a["entry_id"] for a in handoff["answered"]] == ["warranty"]
    assert handoff["answered"][0]["question"]
    client.put("/v1/shops/shop-a/mode", headers=key, json={"mode": "assist"})
    assisted = post("质保几年", "p2")["handoff"]
    assert assisted["code"] == "mode_assist" and assisted["sku_id"] == "100012043978"
    assert assisted["answered"] == []
