"""The order benchmark of `kefu sandbox`, in process: the demo orders KB against the fake JOS."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from api.main import create_app
from api.settings import Settings
from tests.test_service import ADMIN, new_shop, publish_and_wait
from training import sandbox as sb
from training.jos_sandbox import FakeJos, install_orders


def test_order_questions_are_answered_and_no_foreign_order_is_shown(tmp_path: Path) -> None:
    settings = Settings(
        database_url=f"sqlite:///{tmp_path}/kefu.db",
        redis_url=None,
        data_dir=tmp_path / "data",
        admin_token=ADMIN,
        secret_key="ZmRhc2RmYXNkZmFzZGZhc2RmYXNkZmFzZGZhc2RmYXM=",
        dense=False,
        kb_path=None,
        model_path=tmp_path / "no-model",
        evaluation_pull_interval=0,
        **sb.METHODS,
    )
    with FakeJos(sb.APP_KEY, sb.APP_SECRET, sb.ACCESS_TOKEN) as fake:
        install_orders(
            fake,
            order_method=settings.jos_order_method,
            logistics_method=settings.jos_logistics_method,
            refund_method=settings.jos_refund_method,
        )
        settings.jos_url = fake.url
        with TestClient(create_app(settings)) as c:
            key = new_shop(c, sb.SHOP)
            creds = {"app_key": sb.APP_KEY, "app_secret": sb.APP_SECRET, "access_token": sb.ACCESS_TOKEN}
            assert c.put(f"/v1/shops/{sb.SHOP}/jd-credentials", headers=key, json=creds).status_code == 200
            publish_and_wait(c, sb.SHOP, key, sb.DEMO_ORDERS_KB.read_bytes())

            def send(conv: str, text: str, pin: str | None, card: str | None) -> dict[str, Any]:
                body = {"conversation_id": conv, "text": text, "customer_pin": pin, "order_id": card}
                r = c.post(f"/v1/shops/{sb.SHOP}/messages", headers=key, json=body)
                assert r.status_code == 200, r.text
                return dict(r.json())

            m = sb.measure(send)
    assert m.asked >= 90 and m.foreign_asked >= 90
    assert m.answered_share >= 0.95, m.misses
    assert m.leaks == 0
