"""Async JD replies: signed pushes acknowledged at once, answered by the real queue (SQLite file and worker
threads, or Redis on the PostgreSQL variant) and sent back through a fake JOS on a real socket."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.jd import beijing_timestamp, sign
from api.jd.methods import CHAT_PUSH_ACCESS_FIELDS, CHAT_PUSH_MESSAGE_FIELDS
from api.jd.outbound import chat_push_params, upid_for
from api.main import create_app
from api.routes.jd import message_digest
from api.settings import Settings
from tests.conftest import ROOT
from tests.jos_fake import FakeJos
from tests.test_service import KB, kb_csv, new_shop, publish_and_wait, wait_for
from tests.test_service import settings as settings
from training.jos_sandbox import SentChatMessage, install_chat_push

APP_KEY, SECRET, TOKEN = "JDAPPKEY0001", "jd-secret-0123456789", "jd-token-abcdef"
PUSH = "jingdong.dongdong.packet.josChatMessage.push"
BUYER, BOT = "jd_buyer_0001", "kefu_bot_01"
WARRANTY = next(row[3] for row in KB if row[0] == "warranty")


def signed(message_id: str, text: str, **extra: str) -> dict[str, str]:
    params = {
        "app_key": APP_KEY,
        "timestamp": beijing_timestamp(),
        "message_id": message_id,
        "conversation_id": f"conv-{BUYER}",
        "text": text,
        "customer_pin": BUYER,
        **extra,
    }
    params["sign"] = sign(params, SECRET)
    return params


def metric(c: TestClient, sample: str) -> float:
    """A sample's value in /metrics (0 when absent)."""
    m = re.search(rf"^{re.escape(sample)} (\S+)$", c.get("/metrics").text, re.M)
    return float(m.group(1)) if m else 0.0


@pytest.fixture
def jd(settings: Settings) -> Iterator[tuple[TestClient, dict[str, str], FakeJos, list[SentChatMessage]]]:
    """An async shop against a fake JOS that serves the chat push."""
    with FakeJos(APP_KEY, SECRET, TOKEN) as fake:
        sent = install_chat_push(fake)
        settings.jos_url = fake.url
        settings.jd_bot_pin = BOT
        settings.jd_send_backoff = 0.1
        if settings.redis_url:  # the replicas' variant: the queue in Redis too
            settings.queue_url = settings.redis_url
        with TestClient(create_app(settings)) as c:
            key = new_shop(c)
            publish_and_wait(c, "shop-a", key, kb_csv(KB))
            creds = {"app_key": APP_KEY, "app_secret": SECRET, "access_token": TOKEN}
            assert c.put("/v1/shops/shop-a/jd-credentials", headers=key, json=creds).status_code == 200
            r = c.put("/v1/shops/shop-a/settings", headers=key, json={"jd_reply_mode": "async"})
            assert r.status_code == 200, r.text
            yield c, key, fake, sent


def pushes(fake: FakeJos) -> int:
    return sum(r.jos_method == PUSH for r in fake.requests)


def status(c: TestClient, message_id: str, text: str = "质保几年") -> dict[str, Any]:
    r = c.post("/jd/shop-a/messages", data=signed(message_id, text))
    assert r.status_code == 200 and r.headers["X-Kefu-Replay"] == "true", r.text
    return dict(r.json())


def test_async_shop_is_acknowledged_at_once_and_the_reply_arrives_through_jos(jd: Any) -> None:
    c, _, fake, sent = jd
    before = metric(c, 'kefu_jd_outbound_total{outcome="sent"}')
    r = c.post("/jd/shop-a/messages", data=signed("a-1", "质保几年"))
    assert r.status_code == 200, r.text
    assert r.json() == {"code": 0, "message_id": "a-1", "queued": True}
    wait_for(lambda: sent, timeout=20)
    (message,) = sent
    assert (message.to_pin, message.from_pin, message.body) == (BUYER, BOT, WARRANTY)
    assert message.upid == upid_for("shop-a", message_digest("a-1")) and "a-1" not in message.upid
    request = next(q for q in fake.requests if q.jos_method == PUSH)
    assert set(request.biz_params["param1"]) == {"@type", *CHAT_PUSH_ACCESS_FIELDS}
    assert request.biz_params["param1"]["accessToken"] == TOKEN
    assert set(request.biz_params["param2"]) == {"@type", *CHAT_PUSH_MESSAGE_FIELDS}
    done = wait_for(lambda: (s := status(c, "a-1"))["status"] == "sent" and s, timeout=10)
    assert done["queued"] is False and done["reply"]["entry_id"] == "warranty"
    assert metric(c, 'kefu_jd_outbound_total{outcome="sent"}') == before + 1
    assert metric(c, "kefu_jd_delivery_latency_seconds_count") >= 1


def test_a_transient_jos_fault_is_retried_and_sent_once(jd: Any) -> None:
    c, _, fake, sent = jd
    retries = metric(c, 'kefu_jd_outbound_total{outcome="retry"}')
    fake.faults = ["500", "jos:66"]  # an upstream error, then throttling: both worth another try
    assert c.post("/jd/shop-a/messages", data=signed("a-2", "质保几年")).json()["queued"] is True
    wait_for(lambda: status(c, "a-2")["status"] == "sent", timeout=30)
    assert [m.body for m in sent] == [WARRANTY]
    assert pushes(fake) == 3
    assert metric(c, 'kefu_jd_outbound_total{outcome="retry"}') == retries + 2


def test_a_replayed_message_id_is_not_sent_twice(jd: Any) -> None:
    c, _, fake, sent = jd
    assert c.post("/jd/shop-a/messages", data=signed("a-3", "质保几年")).json()["queued"] is True
    first = status(c, "a-3")  # JD retrying its push while the reply is on its way
    assert first["status"] in ("queued", "sent")
    wait_for(lambda: status(c, "a-3")["status"] == "sent", timeout=20)
    # a task delivered twice: both steps find their work done
    queue = c.app.state.service.jd_queue
    digest = message_digest("a-3")
    sealed = c.app.state.service.secret_box.encrypt('{"to": "x", "body": "y"}')
    queue._send("shop-a", digest, sealed)
    queue._answer("shop-a", digest, sealed)
    time.sleep(0.5)
    assert len(sent) == 1 and pushes(fake) == 1
    log = c.get("/v1/shops/shop-a/exchanges", headers=jd[1]).json()
    assert [e["channel"] for e in log].count("jd") == 1  # answered once


def test_a_reply_not_sent_by_its_deadline_becomes_a_recorded_handoff(jd: Any, settings: Settings) -> None:
    c, key, fake, sent = jd
    settings.jd_reply_deadline = 2.0
    expired = metric(c, 'kefu_jd_outbound_total{outcome="expired"}')
    handoffs = metric(c, 'kefu_handoffs_total{reason="not_delivered",shop="shop-a"}')
    fake.faults = ["503"] * 50  # JOS keeps failing
    assert c.post("/jd/shop-a/messages", data=signed("a-4", "质保几年")).json()["queued"] is True
    final = wait_for(lambda: (s := status(c, "a-4"))["status"] == "failed" and s, timeout=30)
    assert sent == []
    reply = final["reply"]
    assert reply["kind"] == "handoff" and reply["reason"] == "reply not delivered in time"
    assert reply["handoff"]["code"] == "not_delivered" and reply["undelivered"] == WARRANTY
    assert metric(c, 'kefu_jd_outbound_total{outcome="expired"}') == expired + 1
    assert metric(c, 'kefu_handoffs_total{reason="not_delivered",shop="shop-a"}') == handoffs + 1
    (exchange,) = [e for e in c.get("/v1/shops/shop-a/exchanges", headers=key).json() if e["channel"] == "jd"]
    assert exchange["decision"] == "handoff" and exchange["reason"] == "reply not delivered in time"
    requests_then = pushes(fake)
    time.sleep(1.5)
    assert pushes(fake) == requests_then  # nothing is sent late


def test_a_refused_send_fails_at_once_as_a_handoff(jd: Any) -> None:
    c, _, fake, sent = jd
    fake.faults = ["jos:22"]  # not authorised for the method: retrying cannot help
    assert c.post("/jd/shop-a/messages", data=signed("a-5", "质保几年")).json()["queued"] is True
    final = wait_for(lambda: (s := status(c, "a-5"))["status"] == "failed" and s, timeout=20)
    assert final["reply"]["kind"] == "handoff" and pushes(fake) == 1 and sent == []


def test_sync_shops_and_pushes_without_a_customer_are_answered_in_the_response(jd: Any) -> None:
    c, key, fake, sent = jd
    no_pin = {k: v for k, v in signed("s-1", "质保几年").items() if k not in ("customer_pin", "sign")}
    no_pin["sign"] = sign(no_pin, SECRET)
    r = c.post("/jd/shop-a/messages", data=no_pin)
    assert r.status_code == 200 and r.json()["reply"]["entry_id"] == "warranty"
    assert c.put("/v1/shops/shop-a/settings", headers=key, json={}).status_code == 200  # sync: the default
    r = c.post("/jd/shop-a/messages", data=signed("s-2", "包邮吗"))
    assert (
        r.status_code == 200 and r.json()["reply"]["entry_id"] == "shipping-fee" and "queued" not in r.json()
    )
    replay = c.post("/jd/shop-a/messages", data=signed("s-2", "包邮吗"))
    assert replay.json() == r.json()
    assert pushes(fake) == 0 and sent == []


def test_chat_push_objects_are_named_as_described() -> None:
    """The two objects carry exactly the fields api.jd.methods lists, in that order."""
    params = chat_push_params(
        Settings(), access_token="tok", upid="kefu-1", from_pin="bot", to_pin="buyer", body="你好"
    )
    assert list(params) == ["param1", "param2"]
    assert list(params["param1"])[1:] == list(CHAT_PUSH_ACCESS_FIELDS)
    assert list(params["param2"])[1:] == list(CHAT_PUSH_MESSAGE_FIELDS)
    assert (params["param2"]["toPin"], params["param2"]["body"]) == ("buyer", "你好")


def test_immediate_mode_runs_the_tasks_inline(settings: Settings) -> None:
    """Without the queue in between (huey's immediate mode): the enqueue itself answers and sends."""
    with FakeJos(APP_KEY, SECRET, TOKEN) as fake:
        sent = install_chat_push(fake)
        settings.jos_url, settings.jd_bot_pin, settings.queue_workers = fake.url, BOT, 0
        with TestClient(create_app(settings)) as c:
            key = new_shop(c)
            publish_and_wait(c, "shop-a", key, kb_csv(KB))
            creds = {"app_key": APP_KEY, "app_secret": SECRET, "access_token": TOKEN}
            assert c.put("/v1/shops/shop-a/jd-credentials", headers=key, json=creds).status_code == 200
            body = {"jd_reply_mode": "async", "jd_bot_pin": "shop_bot"}
            assert c.put("/v1/shops/shop-a/settings", headers=key, json=body).status_code == 200
            c.app.state.service.jd_queue.huey.immediate = True
            r = c.post("/jd/shop-a/messages", data=signed("i-1", "质保几年"))
            assert r.json()["queued"] is True
            assert [(m.from_pin, m.body) for m in sent] == [("shop_bot", WARRANTY)]


def test_a_separate_worker_process_sends_the_replies(settings: Settings) -> None:
    """`kefu worker` beside a service started with KEFU_QUEUE_WORKERS=0: the same queue, another process."""
    with FakeJos(APP_KEY, SECRET, TOKEN) as fake:
        sent = install_chat_push(fake)
        settings.jos_url, settings.jd_bot_pin, settings.queue_workers = fake.url, BOT, 0
        settings.queue_url = settings.redis_url or f"sqlite:///{settings.data_dir}/queue.db"
        assert settings.secret_key is not None
        env = {
            **os.environ,
            "KEFU_DATABASE_URL": settings.database_url,
            "KEFU_DATA_DIR": str(settings.data_dir),
            "KEFU_QUEUE_URL": settings.queue_url,
            "KEFU_REDIS_PREFIX": settings.redis_prefix,
            "KEFU_SECRET_KEY": settings.secret_key.get_secret_value(),
            "KEFU_JOS_URL": fake.url,
            "KEFU_JD_BOT_PIN": BOT,
            "KEFU_DENSE": "false",
            "KEFU_EVALUATION_PULL_INTERVAL": "0",
        }
        if settings.redis_url:
            env["KEFU_REDIS_URL"] = settings.redis_url
        with TestClient(create_app(settings)) as c:
            key = new_shop(c)
            publish_and_wait(c, "shop-a", key, kb_csv(KB))
            creds = {"app_key": APP_KEY, "app_secret": SECRET, "access_token": TOKEN}
            assert c.put("/v1/shops/shop-a/jd-credentials", headers=key, json=creds).status_code == 200
            assert (
                c.put("/v1/shops/shop-a/settings", headers=key, json={"jd_reply_mode": "async"}).status_code
                == 200
            )
            assert c.post("/jd/shop-a/messages", data=signed("w-1", "质保几年")).json()["queued"] is True
            time.sleep(0.5)
            assert sent == []  # nobody in this process consumes the queue
            worker = subprocess.Popen(
                [sys.executable, "-m", "training.cli", "worker", "--threads", "1"],
                cwd=ROOT,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            try:
                wait_for(lambda: sent or worker.poll() is not None, timeout=60)
                assert [(m.to_pin, m.body) for m in sent] == [(BUYER, WARRANTY)], worker.stderr
            finally:
                worker.send_signal(signal.SIGINT)
                worker.wait(timeout=20)
            wait_for(lambda: status(c, "w-1")["status"] == "sent", timeout=10)


def test_a_reply_left_in_work_by_a_lost_worker_is_swept_into_a_handoff(jd: Any, settings: Settings) -> None:
    from datetime import timedelta

    from sqlalchemy import update

    from api.db.models import JdMessage, utcnow

    c, _, _, sent = jd
    service = c.app.state.service  # type: ignore[attr-defined]
    service.jd_queue.stop()  # no worker: the message stays queued, as if its worker died
    assert c.post("/jd/shop-a/messages", data=signed("a-9", "质保几年")).json()["queued"] is True
    assert service.jd_queue.sweep() == 0  # within its deadline: left alone
    digest = message_digest("a-9")
    with service.db.session() as s:
        s.execute(
            update(JdMessage)
            .where(JdMessage.message_digest == digest)
            .values(created_at=utcnow() - timedelta(seconds=settings.jd_reply_deadline + 120))
        )
    assert service.jd_queue.sweep() == 1
    final = status(c, "a-9")
    assert final["status"] == "failed" and final["reply"]["handoff"]["code"] == "not_delivered"
    assert service.jd_queue.sweep() == 0 and sent == []
