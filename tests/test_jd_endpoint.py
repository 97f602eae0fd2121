"""The JD-facing endpoint (signed pushes) and the evaluation pull through a real fake JOS server."""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.jd import BEIJING, beijing_timestamp, sign
from api.main import create_app
from api.settings import Settings
from tests.jos_fake import FakeJos
from tests.test_service import KB, kb_csv, new_shop, publish_and_wait
from tests.test_service import settings as settings

APP_KEY, SECRET, TOKEN = "JDAPPKEY0001", "jd-secret-0123456789", "jd-token-abcdef"
METHOD = "jingdong.fake.cs.evaluation.query"


@pytest.fixture
def jd_client(settings: Settings) -> Any:
    settings.jos_evaluation_method = METHOD
    with TestClient(create_app(settings)) as c:
        key = new_shop(c)
        publish_and_wait(c, "shop-a", key, kb_csv(KB))
        creds = {"app_key": APP_KEY, "app_secret": SECRET, "access_token": TOKEN}
        assert c.put("/v1/shops/shop-a/jd-credentials", headers=key, json=creds).status_code == 200
        yield c, key


def signed(
    message_id: str, text: str, *, secret: str = SECRET, when: datetime | None = None
) -> dict[str, str]:
    params = {
        "app_key": APP_KEY,
        "timestamp": beijing_timestamp(when),
        "message_id": message_id,
        "conversation_id": "pin-abc",
        "text": text,
    }
    params["sign"] = sign(params, secret)
    return params


def test_signed_message_is_answered_once_and_replays_get_the_same_reply(jd_client: Any) -> None:
    c, key = jd_client
    first = c.post("/jd/shop-a/messages", data=signed("m-1", "质保几年"))
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["code"] == 0 and body["reply"]["entry_id"] == "warranty"
    again = c.post("/jd/shop-a/messages", data=signed("m-1", "质保几年"))
    assert again.status_code == 200 and again.headers["X-Kefu-Replay"] == "true"
    assert again.json() == body
    log = c.get("/v1/shops/shop-a/exchanges", headers=key).json()
    assert [e["channel"] for e in log].count("jd") == 1  # processed once
    assert 'kefu_auth_failures_total{reason="replay"}' in c.get("/metrics").text


def test_json_body_is_accepted_too(jd_client: Any) -> None:
    c, _ = jd_client
    r = c.post("/jd/shop-a/messages", json=signed("m-json", "包邮吗"))
    assert r.status_code == 200 and r.json()["reply"]["entry_id"] == "shipping-fee"


def test_json_body_with_an_overlong_number_is_a_400(jd_client: Any) -> None:
    """json.loads refuses integers over 4300 digits with a plain ValueError: that was a 500."""
    c, _ = jd_client
    body = '{"message_id": "m-big", "text": ' + "1" * 5000 + "}"
    r = c.post("/jd/shop-a/messages", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json() == {"detail": "body is not valid JSON"}


@pytest.mark.parametrize(
    ("make", "status", "reason"),
    [
        (lambda: signed("m-2", "质保几年", secret="wrong-secret"), 401, "bad_signature"),
        (lambda: {**signed("m-3", "质保几年"), "text": "篡改的内容"}, 401, "bad_signature"),
        (
            lambda: signed("m-4", "质保几年", when=datetime.now(BEIJING) - timedelta(minutes=6)),
            401,
            "stale_timestamp",
        ),
        (
            lambda: signed("m-5", "质保几年", when=datetime.now(BEIJING) + timedelta(minutes=6)),
            401,
            "stale_timestamp",
        ),
        (lambda: {**signed("m-6", "质保几年"), "app_key": "OTHERKEY"}, 401, "bad_app_key"),
    ],
)
def test_forged_or_stale_messages_are_refused_and_counted(
    jd_client: Any, make: Any, status: int, reason: str
) -> None:
    c, key = jd_client
    r = c.post("/jd/shop-a/messages", data=make())
    assert r.status_code == status
    if reason != "stale_timestamp":  # (a stale timestamp is only seen by someone who can sign)
        assert r.json() == {"detail": "invalid app_key or signature"}
    assert f'kefu_auth_failures_total{{reason="{reason}"}}' in c.get("/metrics").text
    assert all(e["channel"] != "jd" for e in c.get("/v1/shops/shop-a/exchanges", headers=key).json())


def test_refusals_do_not_tell_which_shops_exist(jd_client: Any) -> None:
    """Unknown shop (404) and shop without JD credentials (403) were told apart from a bad signature."""
    c, _ = jd_client
    new_shop(c, "shop-nojd")
    forged = signed("m-7", "hi", secret="wrong-secret")
    answers = {
        shop: c.post(f"/jd/{shop}/messages", data=forged) for shop in ("shop-a", "nope", "shop-nojd", "Bad!")
    }
    assert {(r.status_code, r.text) for r in answers.values()} == {
        (401, '{"detail":"invalid app_key or signature"}')
    }
    metrics = c.get("/metrics").text
    for reason in ("unknown_shop", "jd_not_configured", "bad_signature"):
        assert f'kefu_auth_failures_total{{reason="{reason}"}}' in metrics


def test_missing_parameters(jd_client: Any) -> None:
    c, _ = jd_client
    partial = signed("m-8", "hi")
    del partial["message_id"]
    r = c.post("/jd/shop-a/messages", data=partial)
    assert r.status_code == 400 and "message_id" in r.text


def test_evaluations_pulled_through_jos_with_faults(jd_client: Any, settings: Settings) -> None:
    c, key = jd_client
    pages = [
        {
            "code": "0",
            "result": {
                "list": [
                    {
                        "id": "e1",
                        "score": 5,
                        "content": "客服很耐心，电话13812345678",
                        "createTime": "2026-11-20 10:00:00",
                    },
                    {"id": "e2", "score": 2, "content": "回复太慢", "createTime": "2026-11-21 11:30:00"},
                ]
            },
        },
    ]
    with FakeJos(APP_KEY, SECRET, TOKEN) as fake:
        fake.handle(
            METHOD, lambda biz: pages[0] if biz.get("page") == 1 else {"code": "0", "result": {"list": []}}
        )
        fake.faults = ["500", "jos:66"]  # retried by the client, then answered
        settings.jos_url = fake.url
        settings.evaluation_backfill_days = 1  # one window: this handler answers every window alike
        r = c.post("/v1/shops/shop-a/jd/evaluations/pull", headers=key)
        assert r.status_code == 200, r.text
        assert (r.json()["seen"], r.json()["new"]) == (2, 2)
        again = c.post("/v1/shops/shop-a/jd/evaluations/pull", headers=key)
        assert again.json()["new"] == 0
        fake.faults = ["jos:19"]
        refused = c.post("/v1/shops/shop-a/jd/evaluations/pull", headers=key)
        assert refused.status_code == 502 and SECRET not in refused.text and TOKEN not in refused.text
    stored = c.get("/v1/shops/shop-a/jd/evaluations", headers=key).json()
    assert {e["jd_id"]: e["score"] for e in stored} == {"e1": 5, "e2": 2}
    assert all("13812345678" not in e["content"] for e in stored)
    assert 'kefu_jos_errors_total{kind="JosAuthError"}' in c.get("/metrics").text


def test_pull_without_access_token_says_so_before_calling_jos(jd_client: Any, settings: Settings) -> None:
    """Without a token JOS answers "bad credentials": the merchant is told what is missing instead."""
    c, key = jd_client
    creds = {"app_key": APP_KEY, "app_secret": SECRET}
    assert c.put("/v1/shops/shop-a/jd-credentials", headers=key, json=creds).status_code == 200
    with FakeJos(APP_KEY, SECRET, TOKEN) as fake:
        fake.handle(METHOD, lambda biz: {"code": "0", "result": {"list": []}})
        settings.jos_url = fake.url
        r = c.post("/v1/shops/shop-a/jd/evaluations/pull", headers=key)
    assert r.status_code == 409, r.text
    assert r.json()["detail"] == (
        "shop 'shop-a' has no JD access token; set it with PUT /v1/shops/shop-a/jd-credentials"
    )
    assert fake.requests == []


def test_evaluations_are_pulled_on_a_schedule(settings: Settings) -> None:
    """With a pull interval set, evaluations arrive without anyone asking."""
    with FakeJos(APP_KEY, SECRET, TOKEN) as fake:
        fake.handle(METHOD, lambda biz: {"code": "0", "list": [{"id": f"s{biz.get('page')}", "score": 4}]})
        settings.jos_evaluation_method = METHOD
        settings.jos_url = fake.url
        settings.evaluation_pull_interval = 1
        with TestClient(create_app(settings)) as c:
            key = new_shop(c)
            creds = {"app_key": APP_KEY, "app_secret": SECRET, "access_token": TOKEN}
            assert c.put("/v1/shops/shop-a/jd-credentials", headers=key, json=creds).status_code == 200
            deadline = time.monotonic() + 20
            stored: list[dict[str, Any]] = []
            while time.monotonic() < deadline and not stored:
                time.sleep(0.2)
                stored = c.get("/v1/shops/shop-a/jd/evaluations", headers=key).json()
    assert [e["jd_id"] for e in stored] == ["s1"]
    assert any(r.jos_method == METHOD for r in fake.requests)


def test_a_message_that_failed_can_be_retried(jd_client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A crash while answering releases the message id: JD's retry is processed, not parked."""
    import api.routes.jd as jd_route

    real = jd_route.handle_message
    calls = {"n": 0}

    def fail_once(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("injected failure while answering")
        return real(*args, **kwargs)

    monkeypatch.setattr(jd_route, "handle_message", fail_once)
    c, _ = jd_client
    nonraising = TestClient(c.app, raise_server_exceptions=False)
    assert nonraising.post("/jd/shop-a/messages", data=signed("m-retry", "质保几年")).status_code == 500
    again = c.post("/jd/shop-a/messages", data=signed("m-retry", "质保几年"))
    assert again.status_code == 200 and "X-Kefu-Replay" not in again.headers
    assert again.json()["reply"]["entry_id"] == "warranty"


def test_text_longer_than_the_limit_is_refused(jd_client: Any, settings: Settings) -> None:
    """A signed text is capped like the shop API's: nothing of an oversized one is processed or stored."""
    c, key = jd_client
    limit = settings.max_text_chars
    r = c.post("/jd/shop-a/messages", data=signed("m-long", "包" * (limit + 1)))
    assert r.status_code == 413 and str(limit) in r.text
    assert all(e["channel"] != "jd" for e in c.get("/v1/shops/shop-a/exchanges", headers=key).json())
    assert c.post("/jd/shop-a/messages", data=signed("m-at-limit", "包" * limit)).status_code == 200


def test_message_ids_sharing_a_long_prefix_do_not_collide(jd_client: Any) -> None:
    """Ids were cut to 200 characters: the second of two ids with a common prefix got the first's reply."""
    c, _ = jd_client
    prefix = "m" * 250
    first = c.post("/jd/shop-a/messages", data=signed(prefix + "-1", "质保几年"))
    second = c.post("/jd/shop-a/messages", data=signed(prefix + "-2", "包邮吗"))
    assert first.status_code == 200 and second.status_code == 200
    assert "X-Kefu-Replay" not in second.headers
    assert second.json()["reply"]["entry_id"] == "shipping-fee"
    assert second.json()["message_id"] == prefix + "-2"  # echoed whole, as given
    replay = c.post("/jd/shop-a/messages", data=signed(prefix + "-1", "质保几年"))
    assert replay.headers["X-Kefu-Replay"] == "true" and replay.json() == first.json()


def test_message_id_is_not_stored_readable(jd_client: Any) -> None:
    """Personal data inside a message id must not reach the database (neither the key nor the reply)."""
    from sqlalchemy import select

    from api.db.models import JdMessage

    c, _ = jd_client
    message_id = "order-13812345678-110101199003071234"
    assert c.post("/jd/shop-a/messages", data=signed(message_id, "质保几年")).status_code == 200
    with c.app.state.service.db.session() as s:
        rows = [(m.message_digest, m.reply) for m in s.scalars(select(JdMessage))]
    assert rows and "13812345678" not in repr(rows) and "110101199003071234" not in repr(rows)


def test_absurdly_long_message_id_is_refused(jd_client: Any) -> None:
    c, _ = jd_client
    r = c.post("/jd/shop-a/messages", data=signed("m" * 1001, "质保几年"))
    assert r.status_code == 400 and "1000" in r.text


def _jd_rows(service: Any) -> set[str]:
    from sqlalchemy import select

    from api.db.models import JdMessage

    with service.db.session() as s:
        return set(s.scalars(select(JdMessage.message_digest)))


def _service_with_old_and_fresh_ids(settings: Settings, old: int) -> Any:
    """A service whose jd_messages holds `old` ids past the retention and one fresh id."""
    from api.db.models import JdMessage, Shop, utcnow
    from api.service import Service

    service = Service(settings)
    expired = utcnow() - timedelta(seconds=settings.jd_message_retention + 60)
    with service.db.session() as s:
        s.add(Shop(id="shop-p", api_key_hash="h"))
        s.flush()
        s.add_all(
            JdMessage(shop_id="shop-p", message_digest=f"old{i}", created_at=expired) for i in range(old)
        )
        s.add(JdMessage(shop_id="shop-p", message_digest="fresh", reply={"code": 0}))
    return service


def test_expired_message_ids_are_pruned_in_batches(settings: Settings) -> None:
    """jd_messages grew forever: ids older than the retention are deleted, newer ones kept."""
    service = _service_with_old_and_fresh_ids(settings, old=5)
    try:
        assert service.prune_jd_messages(batch=2) == 5
        assert _jd_rows(service) == {"fresh"}
        assert service.prune_jd_messages() == 0
    finally:
        service.close()


def test_the_reconciler_prunes_expired_message_ids(settings: Settings) -> None:
    from tests.test_service import wait_for

    service = _service_with_old_and_fresh_ids(settings, old=3)
    try:
        service.start_reconciler(every=0.05, prune_every=0.05)
        wait_for(lambda: _jd_rows(service) == {"fresh"}, timeout=20)
    finally:
        service.close()


def test_retention_must_outlast_the_replay_window() -> None:
    """An id pruned while its signed timestamp is still accepted could be replayed."""
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="jd_message_retention"):
        Settings(jd_timestamp_window=300, jd_message_retention=600)
    assert Settings(jd_timestamp_window=300, jd_message_retention=601).jd_message_retention == 601
