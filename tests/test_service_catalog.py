"""The catalog through the service, on SQLite + in-process state and on PostgreSQL + Redis: upload (all or
nothing), list, get, delete, shop isolation, the JOS pull against the fake gateway, and spec answers in
conversations."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from api.settings import Settings
from tests.jos_fake import FakeJos
from tests.jos_wares import ware_page
from tests.test_service import client as client
from tests.test_service import kb_csv, new_shop, publish_and_wait, wait_for
from tests.test_service import settings as settings

ROOT = Path(__file__).resolve().parent.parent
DEMO_CATALOG = (ROOT / "models" / "demo-catalog.csv").read_bytes()
APP_KEY, SECRET, TOKEN = "JDAPPKEY0001", "jd-secret-0123456789", "jd-token-abcdef"
WARE_METHOD = "jingdong.fake.sku.search"


def catalog_csv(rows: list[list[Any]]) -> bytes:
    out = io.StringIO()
    csv.writer(out).writerows([["商品编号", "商品名称", "型号", "价格", "销量", "内存", "颜色"], *rows])
    return out.getvalue().encode("utf-8")


def upload(client: TestClient, shop: str, key: dict[str, str], data: bytes, name: str = "catalog.csv") -> Any:
    return client.post(f"/v1/shops/{shop}/catalog", headers=key, files={"file": (name, data)})


def jd_shop(client: TestClient) -> dict[str, str]:
    key = new_shop(client)
    creds = {"app_key": APP_KEY, "app_secret": SECRET, "access_token": TOKEN}
    assert client.put("/v1/shops/shop-a/jd-credentials", headers=key, json=creds).status_code == 200
    return key


# ---------------------------------------------------------------- tests
def test_upload_list_get_delete_and_isolation(client: TestClient) -> None:
    a = new_shop(client, "shop-a")
    b = new_shop(client, "shop-b")
    r = upload(client, "shop-a", a, DEMO_CATALOG)
    assert r.status_code == 200, r.text
    assert r.json() == {"skus": 20}
    page = client.get("/v1/shops/shop-a/catalog?offset=18&limit=5", headers=a).json()
    assert page["total"] == 20 and [s["sku_id"] for s in page["items"]] == ["100087650019", "100087650020"]
    one = client.get("/v1/shops/shop-a/catalog/100087650001", headers=a).json()
    assert (
        one["model"] == "星曜14 Pro" and one["price"] == 5999 and one["attributes"]["颜色"] == "星空灰/月光银"
    )
    # another shop sees none of it, and cannot reach it with its own key
    assert client.get("/v1/shops/shop-b/catalog", headers=b).json() == {"total": 0, "offset": 0, "items": []}
    assert client.get("/v1/shops/shop-b/catalog/100087650001", headers=b).status_code == 404
    assert client.get("/v1/shops/shop-a/catalog", headers=b).status_code == 403
    assert client.delete("/v1/shops/shop-b/catalog/100087650001", headers=b).status_code == 404
    assert client.delete("/v1/shops/shop-a/catalog/100087650001", headers=a).status_code == 204
    assert client.get("/v1/shops/shop-a/catalog/100087650001", headers=a).status_code == 404
    assert client.get("/v1/shops/shop-a/catalog", headers=a).json()["total"] == 19
    assert client.get("/v1/shops/shop-a/catalog/a%00b", headers=a).status_code == 422


def test_bad_upload_lists_every_problem_and_changes_nothing(client: TestClient) -> None:
    key = new_shop(client)
    assert upload(client, "shop-a", key, DEMO_CATALOG).status_code == 200
    bad = catalog_csv(
        [
            ["1", "好本子", "N1", "3999", "1", "8G", "银"],
            ["1", "重复", "N2", "1", "1", "", ""],
            ["2", "贵", "N3", "很贵", "", "", ""],
        ]
    )
    r = upload(client, "shop-a", key, bad, "我的商品.csv")
    assert r.status_code == 422
    issues = r.json()["issues"]
    assert {(i["source"], i["row"], i["column"]) for i in issues} == {
        ("我的商品.csv", 3, "商品编号"),
        ("我的商品.csv", 4, "价格"),
    }
    assert client.get("/v1/shops/shop-a/catalog", headers=key).json()["total"] == 20
    assert upload(client, "shop-a", key, b"x", "catalog.txt").status_code == 422


def test_spec_questions_answered_from_the_product_of_the_message(client: TestClient) -> None:
    key = new_shop(client)
    assert upload(client, "shop-a", key, DEMO_CATALOG).status_code == 200
    publish_and_wait(client, "shop-a", key, kb_csv())

    def say(text: str, conv: str, sku: str | None = None) -> dict[str, Any]:
        body = {"conversation_id": conv, "text": text, "sku_id": sku}
        r = client.post("/v1/shops/shop-a/messages", headers=key, json=body)
        assert r.status_code == 200, r.text
        return r.json()

    pushed = say("这款内存多大", "p1", sku="100087650009")
    assert pushed["kind"] == "answer" and pushed["entry_id"] == "sku:100087650009:内存"
    intro = say("https://item.jd.com/100087650007.html", "p2")
    assert intro["entry_id"] == "sku:100087650007" and "10999元" in intro["text"]
    assert "暗夜黑、冰川白" in say("有几个颜色", "p2")["text"]
    ask = say("重量多少", "p3")
    assert ask["kind"] == "clarify" and len(ask["options"]) == 3
    assert say("1", "p3")["entry_id"] == "sku:100087650010:重量"
    assert say("质保几年", "p3")["entry_id"] == "warranty"  # the FAQ still answers the rest
    log = client.get("/v1/shops/shop-a/exchanges", headers=key).json()
    assert {e["entry_id"] for e in log} >= {"sku:100087650009:内存", "sku:100087650010:重量"}


def test_catalog_names_join_the_dictionary_of_the_next_publish(client: TestClient) -> None:
    key = new_shop(client)
    assert upload(client, "shop-a", key, DEMO_CATALOG).status_code == 200
    publish_and_wait(client, "shop-a", key, kb_csv())
    (version,) = client.get("/v1/shops/shop-a/kb/versions", headers=key).json()
    assert {"星曜14", "逐风G16", "知书13"} <= set(version["options"]["user_words"])


def test_pull_from_jos_pages_through_and_survives_a_fault(client: TestClient, settings: Settings) -> None:
    key = jd_shop(client)
    with FakeJos(APP_KEY, SECRET, TOKEN) as fake:
        settings.jos_url = fake.url
        settings.jos_ware_method = WARE_METHOD
        # 50 a page: two full pages, then a short one ends the pull
        fake.handle(WARE_METHOD, lambda biz: ware_page(biz, total=120))
        fake.faults = ["500"]  # retried by the client
        r = client.post("/v1/shops/shop-a/catalog/pull", headers=key)
        assert r.status_code == 200, r.text
        assert r.json() == {"skus": 120}
        pages = [q.biz_params["page"] for q in fake.requests if q.jos_method == WARE_METHOD]
        assert sorted(set(pages)) == [1, 2, 3]
        sku = client.get("/v1/shops/shop-a/catalog/200007", headers=key).json()
        assert sku["attributes"] == {"颜色": "银/灰", "内存": "56GB"} and sku["price"] == 3007
        # a refused call on a later page changes nothing
        fake.faults = [None, "jos:19"]
        fake.handle(WARE_METHOD, lambda biz: ware_page(biz, total=60))
        refused = client.post("/v1/shops/shop-a/catalog/pull", headers=key)
        assert refused.status_code == 502 and SECRET not in refused.text and TOKEN not in refused.text
        assert client.get("/v1/shops/shop-a/catalog", headers=key).json()["total"] == 120
        # bad records are listed like a file's rows, and change nothing either
        fake.handle(WARE_METHOD, lambda biz: {"page": {"data": [{"skuId": "", "skuName": "x"}]}})
        bad = client.post("/v1/shops/shop-a/catalog/pull", headers=key)
        assert bad.status_code == 422 and bad.json()["issues"][0]["row"] == 1
        assert client.get("/v1/shops/shop-a/catalog", headers=key).json()["total"] == 120


def test_pull_without_configuration_is_a_conflict(client: TestClient, settings: Settings) -> None:
    key = new_shop(client)
    r = client.post("/v1/shops/shop-a/catalog/pull", headers=key)
    assert r.status_code == 409 and "credentials" in r.text
    settings.jos_ware_method = ""
    creds = {"app_key": APP_KEY, "app_secret": SECRET, "access_token": TOKEN}
    client.put("/v1/shops/shop-a/jd-credentials", headers=key, json=creds)
    r = client.post("/v1/shops/shop-a/catalog/pull", headers=key)
    assert r.status_code == 409 and "KEFU_JOS_WARE_METHOD" in r.text


def test_demo_shop_is_seeded_when_configured(settings: Settings) -> None:
    from pydantic import SecretStr

    from api.main import create_app

    settings.demo_shop = "demo"
    settings.demo_api_key = SecretStr("kf_demo_test_key")
    with TestClient(create_app(settings)) as c:
        key = {"X-API-Key": "kf_demo_test_key"}
        assert c.get("/v1/shops/demo/catalog", headers=key).json()["total"] == 20
        wait_for(lambda: c.get("/v1/shops/demo", headers=key).json()["served_version"] == 1, 300)
        r = c.post(
            "/v1/shops/demo/messages",
            headers=key,
            json={"conversation_id": "d1", "text": "https://item.jd.com/100087650001.html"},
        )
        assert r.json()["entry_id"] == "sku:100087650001"


def test_a_second_worker_seeding_the_demo_shop_at_the_same_moment_starts(
    settings: Settings, monkeypatch: Any
) -> None:
    """Two workers on a fresh database both find no demo shop and both insert it: the one whose insert
    loses (a unique violation) must start anyway, not stop the server (seen with uvicorn --workers 2 on
    PostgreSQL). The race is replayed: the shop exists, but the lookup before the insert misses it."""
    from pydantic import SecretStr
    from sqlalchemy.orm import Session

    from api.db.models import Shop
    from api.demo import seed_demo_shop
    from api.main import create_app

    settings.demo_shop = "demo"
    settings.demo_api_key = SecretStr("kf_demo_test_key")
    with TestClient(create_app(settings)) as c:
        service = c.app.state.service  # type: ignore[attr-defined]
        real_get = Session.get

        def missed(self: Session, entity: Any, ident: Any, **kw: Any) -> Any:
            return None if entity is Shop else real_get(self, entity, ident, **kw)

        monkeypatch.setattr(Session, "get", missed)
        assert seed_demo_shop(service) is True
        monkeypatch.setattr(Session, "get", real_get)
        with service.db.session() as s:
            assert s.get(Shop, "demo") is not None
        assert c.get("/v1/shops/demo/catalog", headers={"X-API-Key": "kf_demo_test_key"}).status_code == 200
