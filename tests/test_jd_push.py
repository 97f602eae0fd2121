"""JD's own push shape (`jd_param_json`, api/jd/push.py): real signed requests through the app, against a
shop with a KB that has order entries, the demo catalog and the fake JOS of the sandbox."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from api.jd import beijing_timestamp, sign
from api.jd.push import PushError, parse
from api.main import create_app
from api.settings import Settings
from tests.test_service import new_shop, publish_and_wait
from tests.test_service import settings as settings
from tests.test_service_catalog import DEMO_CATALOG, upload
from tests.test_service_orders import ALICE, SHIPPED, kb_bytes
from training.jos_sandbox import FakeJos, install_orders

APP_KEY, SECRET, TOKEN = "JDAPPKEY0001", "jd-secret-0123456789", "jd-token-abcdef"
SKU = "100087650001"  # 星曜14 Pro, 16GB


@pytest.fixture
def jd_shop(settings: Settings) -> Iterator[tuple[TestClient, dict[str, str]]]:
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
            assert upload(c, "shop-a", key, DEMO_CATALOG).status_code == 200
            publish_and_wait(c, "shop-a", key, kb_bytes())
            yield c, key


def payload(msg_id: str, msg_type: str, content: Any, sid: str = "sid-1", **extra: Any) -> dict[str, Any]:
    return {
        "msgId": msg_id,
        "sid": sid,
        "venderId": 10086,
        "fromPin": ALICE,
        "waiter": "shop-a-agent",
        "msgType": msg_type,
        "content": content,
        "time": 1767225600000,
        **extra,
    }


def signed(business: dict[str, Any] | str, *, secret: str = SECRET) -> dict[str, str]:
    """The form JOS sends: system parameters, the payload as one JSON string, signed over all of them."""
    params = {
        "app_key": APP_KEY,
        "timestamp": beijing_timestamp(),
        "v": "2.0",
        "jd_param_json": business if isinstance(business, str) else json.dumps(business, ensure_ascii=False),
    }
    params["sign"] = sign(params, secret)
    return params


def push(c: TestClient, business: dict[str, Any] | str) -> Any:
    return c.post("/jd/shop-a/messages", data=signed(business))


def reply(c: TestClient, business: dict[str, Any]) -> dict[str, Any]:
    r = push(c, business)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["code"] == 0 and body["message_id"] == business["msgId"]
    return dict(body["reply"])


# ---------------------------------------------------------------- messages
def test_text_push_is_answered_and_logged_in_its_session(jd_shop: Any) -> None:
    c, key = jd_shop
    assert reply(c, payload("t-1", "text", "质保几年"))["entry_id"] == "warranty"
    log = c.get("/v1/shops/shop-a/exchanges", headers=key).json()
    assert [(e["channel"], e["conversation_id"]) for e in log] == [("jd", "sid-1")]


def test_image_push_gets_the_non_text_outcome(jd_shop: Any) -> None:
    c, _ = jd_shop
    got = reply(c, payload("i-1", "image", "https://img30.360buyimg.com/a/b.jpg"))
    assert got["kind"] == "smalltalk" and got["reason"] == "non-text message (image)"


def test_unknown_message_type_is_kept_as_non_text(jd_shop: Any) -> None:
    c, _ = jd_shop
    got = reply(c, payload("u-1", "voice", {"url": "https://x/1.amr"}))
    assert got["kind"] == "smalltalk" and got["reason"] == "non-text message (unknown)"


def test_sku_card_introduces_the_product_and_a_spec_question_is_answered_from_it(jd_shop: Any) -> None:
    c, _ = jd_shop
    card = {"skuId": SKU, "skuName": "云岫 星曜14 Pro"}
    intro = reply(c, payload("s-1", "sku", json.dumps(card, ensure_ascii=False), sid="sid-sku"))
    assert intro["kind"] == "answer" and intro["entry_id"] == f"sku:{SKU}" and "5999元" in intro["text"]
    spec = reply(c, payload("s-2", "text", "内存多大", sid="sid-sku"))
    assert spec["kind"] == "answer" and spec["entry_id"] == f"sku:{SKU}:内存" and "16GB" in spec["text"]
    state = c.app.state.service.conversations.load("shop-a", "sid-sku")  # type: ignore[attr-defined]
    assert state.sku_id == SKU and state.misses == 0
    # a card object (not a string) works the same
    again = reply(c, payload("s-3", "sku", {"skuId": 100087650007}, sid="sid-sku2"))
    assert again["entry_id"] == "sku:100087650007"


def test_sku_card_the_catalog_does_not_know_is_not_a_miss(jd_shop: Any) -> None:
    c, _ = jd_shop
    got = reply(c, payload("s-9", "sku", {"skuId": "999999999"}, sid="sid-unknown"))
    assert got["kind"] == "smalltalk" and got["reason"] == "non-text message (product)"
    state = c.app.state.service.conversations.load("shop-a", "sid-unknown")  # type: ignore[attr-defined]
    assert state.misses == 0 and state.sku_id == "999999999"


def test_order_card_answers_the_order_and_the_next_question_is_about_it(jd_shop: Any) -> None:
    c, _ = jd_shop
    card = reply(c, payload("o-1", "order", {"orderId": SHIPPED, "orderState": "等待确认收货"}, sid="sid-o"))
    assert card["kind"] == "answer" and card["entry_id"] == "order-status" and SHIPPED in card["text"]
    track = reply(c, payload("o-2", "text", "物流到哪了", sid="sid-o"))
    assert track["kind"] == "answer" and track["text"] == "京东快递配送中：您的快件正在派送中，请保持电话畅通"


def test_replay_of_a_msg_id_gets_the_first_reply(jd_shop: Any) -> None:
    c, key = jd_shop
    first = push(c, payload("r-1", "text", "包邮吗"))
    assert first.status_code == 200 and first.json()["reply"]["entry_id"] == "fee"
    # the same msgId again, even with other content: the first reply, processed once
    again = push(c, payload("r-1", "text", "质保几年"))
    assert again.status_code == 200 and again.headers["X-Kefu-Replay"] == "true"
    assert again.json() == first.json()
    assert [e["channel"] for e in c.get("/v1/shops/shop-a/exchanges", headers=key).json()].count("jd") == 1


# ---------------------------------------------------------------- refusals
@pytest.mark.parametrize(
    ("business", "detail"),
    [
        ("{not json", "jd_param_json is not valid JSON"),
        ("[1, 2]", "jd_param_json must be a JSON object"),
        (
            {k: v for k, v in payload("x", "text", "hi").items() if k != "msgId"},
            "jd_param_json.msgId missing",
        ),
        ({**payload("x", "text", "hi"), "sid": ""}, "jd_param_json.sid missing"),
        ({**payload("x", "text", "hi"), "fromPin": None}, "jd_param_json.fromPin missing"),
        ({**payload("x", "text", "hi"), "msgType": 3}, "jd_param_json.msgType must be a string"),
        (payload("x", "text", ""), "jd_param_json.content missing"),
        (payload("x", "text", ["hi"]), "jd_param_json.content must be a string"),
        (payload("x", "sku", {"skuName": "星曜"}), "jd_param_json.content.skuId missing"),
        (payload("x", "sku", "{oops"), "jd_param_json.content is not valid JSON"),
        (payload("x", "order", 42), "jd_param_json.content must be an object for msgType order"),
        (payload("x", "order", {"orderId": "abc"}), "jd_param_json.content.orderId must be digits"),
        (
            {**payload("x", "text", "hi"), "time": "yesterday"},
            "jd_param_json.time must be epoch milliseconds",
        ),
        (payload("m" * 1001, "text", "hi"), "jd_param_json.msgId is longer than 1000 characters"),
    ],
)
def test_bad_payloads_get_a_400_naming_the_field(jd_shop: Any, business: Any, detail: str) -> None:
    c, key = jd_shop
    r = push(c, business)
    assert r.status_code == 400, r.text
    assert r.json()["detail"].startswith(detail)
    assert c.get("/v1/shops/shop-a/exchanges", headers=key).json() == []


def test_payload_and_flat_fields_together_are_refused(jd_shop: Any) -> None:
    c, _ = jd_shop
    params = signed(payload("b-1", "text", "包邮吗"))
    params["text"] = "质保几年"
    params["sign"] = sign({k: v for k, v in params.items() if k != "sign"}, SECRET)
    r = c.post("/jd/shop-a/messages", data=params)
    assert r.status_code == 400 and "not both (text)" in r.json()["detail"]


def test_the_signature_covers_the_payload(jd_shop: Any) -> None:
    c, key = jd_shop
    forged = signed(payload("f-1", "text", "包邮吗"), secret="wrong-secret")
    assert c.post("/jd/shop-a/messages", data=forged).status_code == 401
    tampered = signed(payload("f-2", "text", "包邮吗"))
    tampered["jd_param_json"] = json.dumps(payload("f-2", "text", "质保几年"), ensure_ascii=False)
    r = c.post("/jd/shop-a/messages", data=tampered)
    assert r.status_code == 401 and r.json() == {"detail": "invalid app_key or signature"}
    # an unsigned payload is not even read: a broken one gets the 401, not a 400 about its fields
    broken = {**signed("{not json", secret="wrong-secret")}
    assert c.post("/jd/shop-a/messages", data=broken).status_code == 401
    assert c.get("/v1/shops/shop-a/exchanges", headers=key).json() == []


def test_text_longer_than_the_limit_is_refused(jd_shop: Any, settings: Settings) -> None:
    c, _ = jd_shop
    r = push(c, payload("l-1", "text", "包" * (settings.max_text_chars + 1)))
    assert r.status_code == 413 and "jd_param_json.content" in r.text


# ---------------------------------------------------------------- never a 500
_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=20)  # (a form field is UTF-8)
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | _text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
    max_leaves=8,
)
_field_values = st.one_of(_json, st.sampled_from(["text", "image", "sku", "order", "", "100087650001"]))
_payloads = st.one_of(
    st.text(st.characters(exclude_categories=("Cs",)), max_size=200),
    st.fixed_dictionaries(
        {},
        optional={
            "msgId": _field_values,
            "sid": _field_values,
            "fromPin": _field_values,
            "venderId": _field_values,
            "msgType": _field_values,
            "time": _field_values,
            "content": st.one_of(
                _json,
                st.dictionaries(
                    st.sampled_from(["skuId", "skuName", "orderId", "orderState"]), _field_values
                ),
            ),
        },
    ).map(lambda d: json.dumps(d, ensure_ascii=False)),
)


@given(raw=_payloads)
def test_the_parser_gives_a_push_or_a_push_error(raw: str) -> None:
    try:
        parsed = parse(raw)
    except PushError as e:
        assert str(e).startswith("jd_param_json")
    else:
        assert parsed.message_id and parsed.session_id and parsed.customer_pin


@hypothesis_settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(raw=_payloads)
def test_arbitrary_payloads_never_give_a_500(jd_shop: Any, raw: str) -> None:
    c, _ = jd_shop
    r = c.post("/jd/shop-a/messages", data=signed(raw))  # the test client raises on a server error
    assert r.status_code in (200, 400, 413), r.text
