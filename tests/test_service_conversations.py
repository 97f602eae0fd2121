"""Conversations beyond the FAQ through the service: small talk settings, handoff reasons in /metrics."""

from __future__ import annotations

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
