"""The multi-shop service end to end, on SQLite + in-process state and on PostgreSQL + Redis.

Every test runs against both backends: the embedded default and the multi-replica deployment.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from api.settings import Settings
from engine.kb import load_kb
from training.evaluate import read_queries

ADMIN = "admin-secret-token"

KB = [
    ("invoice", "能开发票吗", "可以开发票吗|发票怎么开|有没有发票|能开专票吗", "支持开具电子发票和专票。"),
    ("ship-time", "什么时候发货", "几天发货|多久能发出|下单后多久发货|今天能发吗", "16点前付款当天发货。"),
    ("warranty", "保修多久", "保修期是多长时间|质保几年|坏了保修吗|保修怎么算", "整机保修两年。"),
    (
        "return",
        "支持七天无理由退货吗",
        "能退货吗|不想要了可以退吗|怎么退货|七天能退吗",
        "支持七天无理由退货。",
    ),
    ("shipping-fee", "包邮吗", "运费多少|要付邮费吗|免运费吗|邮费谁出", "全国包邮。"),
    (
        "address",
        "收货地址能改吗",
        "地址填错了怎么办|怎么修改收货地址|能换个地址吗|改地址",
        "出库前可改地址。",
    ),
    ("tracking", "我的快递到哪了", "怎么查物流|物流信息在哪看|快递到哪里了|查快递", "在订单详情查看物流。"),
    (
        "price-protect",
        "买贵了能保价吗",
        "降价了能退差价吗|价保怎么申请|有没有价格保护|保价多久",
        "15天内保价。",
    ),
    ("payment", "可以分期付款吗", "支持白条吗|能用信用卡吗|分期免息吗|白条分期", "支持白条分期。"),
]


def kb_csv(rows: list[tuple[str, str, str, str]] = KB, extra: str = "") -> bytes:
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(["id", "question", "similar", "answer", "category", "valid_from", "valid_to"])
    for r in rows:
        w.writerow([*r, "", "", ""])
    return (out.getvalue() + extra).encode("utf-8")


def common_settings(tmp_path: Path) -> dict[str, Any]:
    """What every service test's settings share (other test files start services with them too)."""
    return {
        "data_dir": tmp_path / "data",
        "admin_token": ADMIN,
        "secret_key": "ZmRhc2RmYXNkZmFzZGZhc2RmYXNkZmFzZGZhc2RmYXM=",
        "dense": False,
        "kb_path": None,
        "model_path": tmp_path / "no-model",
        "evaluation_pull_interval": 0,
        # one test client hammers one shop here: limits stay in the request path, far above this traffic
        "rate_limit_shop": "100000/second",
        "rate_limit_client": "100000/second",
    }


@pytest.fixture(params=["sqlite+memory", "postgresql+redis"])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    common = common_settings(tmp_path)
    if request.param == "sqlite+memory":
        return Settings(database_url=f"sqlite:///{tmp_path}/kefu.db", redis_url=None, **common)
    db = request.getfixturevalue("pg_database")
    redis = request.getfixturevalue("redis_url")
    return Settings(
        database_url=db, redis_url=redis, redis_prefix=f"kefu-t-{uuid.uuid4().hex[:8]}:", **common
    )


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as c:
        yield c


def new_shop(client: TestClient, shop: str = "shop-a") -> dict[str, str]:
    r = client.post("/v1/admin/shops", json={"id": shop, "name": "测试店"}, headers={"X-Admin-Token": ADMIN})
    assert r.status_code == 201, r.text
    return {"X-API-Key": r.json()["api_key"]}


def wait_for(predicate: Any, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def publish_and_wait(client: TestClient, shop: str, key: dict[str, str], data: bytes = b"") -> int:
    if data:
        r = client.post(f"/v1/shops/{shop}/kb?publish=true", headers=key, files={"file": ("kb.csv", data)})
        assert r.status_code == 200, r.text
        version = r.json()["version"]
    else:
        r = client.post(f"/v1/shops/{shop}/kb/publish", headers=key)
        assert r.status_code == 202, r.text
        version = r.json()["version"]

    def served() -> bool:
        info = client.get(f"/v1/shops/{shop}", headers=key).json()
        return info["served_version"] == version

    wait_for(served)
    return version


def say(client: TestClient, shop: str, key: dict[str, str], text: str, conv: str = "c1") -> dict[str, Any]:
    r = client.post(f"/v1/shops/{shop}/messages", headers=key, json={"conversation_id": conv, "text": text})
    assert r.status_code == 200, r.text
    return r.json()


def test_upload_publish_and_answer(client: TestClient) -> None:
    key = new_shop(client)
    version = publish_and_wait(client, "shop-a", key, kb_csv())
    reply = say(client, "shop-a", key, "质保几年")
    assert reply["kind"] == "answer" and reply["entry_id"] == "warranty"
    assert reply["text"] == "整机保修两年。" and reply["model_version"] == version
    versions = client.get("/v1/shops/shop-a/kb/versions", headers=key).json()
    assert versions[0]["status"] == "ready" and versions[0]["active"]
    assert versions[0]["metrics"]["self_recall_at_3"] >= 0.9


def test_bad_upload_lists_every_problem_and_changes_nothing(client: TestClient) -> None:
    key = new_shop(client)
    publish_and_wait(client, "shop-a", key, kb_csv())
    bad = kb_csv([*KB[:2], ("invoice", "重复的编号", "", "答"), ("x", "", "", "答")])
    r = client.post("/v1/shops/shop-a/kb", headers=key, files={"file": ("shop.csv", bad)})
    assert r.status_code == 422
    issues = r.json()["issues"]
    assert {(i["row"], i["column"]) for i in issues} == {(4, "id"), (5, "question")}
    assert all(i["source"] == "shop.csv" for i in issues)
    entries = client.get("/v1/shops/shop-a/entries", headers=key).json()
    assert len(entries) == len(KB)


def test_an_upload_has_the_entry_api_size_limits(client: TestClient) -> None:
    """A JSONL answer of any size was accepted by upload while the entry API capped answers at 20,000."""
    key = new_shop(client)
    big = {"id": "big", "question": "说明书", "answer": "长" * 20001}
    data = (json.dumps(big, ensure_ascii=False) + "\n").encode()
    r = client.post("/v1/shops/shop-a/kb", headers=key, files={"file": ("kb.jsonl", data)})
    assert r.status_code == 422, r.text
    assert [(i["row"], i["column"]) for i in r.json()["issues"]] == [(1, "answer")]
    r = client.put(
        "/v1/shops/shop-a/entries/big", headers=key, json={"question": "说明书", "answer": "长" * 20001}
    )
    assert r.status_code == 422
    assert client.get("/v1/shops/shop-a/entries", headers=key).json() == []


def test_entry_crud_versions_and_rollback(client: TestClient) -> None:
    key = new_shop(client)
    v1 = publish_and_wait(client, "shop-a", key, kb_csv())
    body = {"question": "有没有赠品", "similar": "送什么礼物|买电脑送鼠标吗|赠品有哪些", "answer": "送鼠标。"}
    r = client.put("/v1/shops/shop-a/entries/gift", headers=key, json=body)
    assert r.status_code == 200, r.text
    assert r.json()["similar"] == ["送什么礼物", "买电脑送鼠标吗", "赠品有哪些"]
    dup = client.put(
        "/v1/shops/shop-a/entries/gift2", headers=key, json={"question": "包邮吗", "answer": "x"}
    )
    assert dup.status_code == 422 and "shipping-fee" in dup.text
    v2 = publish_and_wait(client, "shop-a", key)
    assert v2 == v1 + 1
    assert say(client, "shop-a", key, "买电脑送鼠标吗", conv="g1")["entry_id"] == "gift"
    r = client.post(f"/v1/shops/shop-a/kb/versions/{v1}/activate", headers=key)
    assert r.status_code == 200 and r.json()["active"]
    wait_for(lambda: client.get("/v1/shops/shop-a", headers=key).json()["served_version"] == v1)
    assert say(client, "shop-a", key, "买电脑送鼠标吗", conv="g2")["entry_id"] != "gift"
    assert r.json()["draft"] == "replaced"  # the rollback reached the editable KB too
    assert client.get("/v1/shops/shop-a/entries/gift", headers=key).status_code == 404
    assert client.delete("/v1/shops/shop-a/entries/invoice", headers=key).status_code == 204
    assert client.get("/v1/shops/shop-a/entries/invoice", headers=key).status_code == 404


def answer_of(client: TestClient, key: dict[str, str], entry_id: str) -> str:
    r = client.get(f"/v1/shops/shop-a/entries/{entry_id}", headers=key)
    assert r.status_code == 200, r.text
    return str(r.json()["answer"])


def served_version(client: TestClient, key: dict[str, str]) -> int:
    return int(client.get("/v1/shops/shop-a", headers=key).json()["served_version"])


def v2_kb() -> bytes:
    return kb_csv([(*r[:3], "整机保修三年。") if r[0] == "warranty" else r for r in KB])


def test_rollback_makes_that_version_the_kb_edits_start_from(client: TestClient) -> None:
    """Activate v1, edit one entry, publish: the new version is v1 plus the edit, not v2's content."""
    key = new_shop(client)
    v1 = publish_and_wait(client, "shop-a", key, kb_csv())
    publish_and_wait(client, "shop-a", key, v2_kb())
    r = client.post(f"/v1/shops/shop-a/kb/versions/{v1}/activate", headers=key)
    assert r.status_code == 200, r.text
    assert (r.json()["version"], r.json()["draft"]) == (v1, "replaced")
    assert f"version {v1}'s KB" in r.json()["draft_note"]
    assert answer_of(client, key, "warranty") == "整机保修两年。"
    edit = {"question": "可以分期付款吗", "similar": "支持白条吗", "answer": "支持白条12期免息。"}
    assert client.put("/v1/shops/shop-a/entries/payment", headers=key, json=edit).status_code == 200
    v3 = publish_and_wait(client, "shop-a", key)
    assert say(client, "shop-a", key, "保修多久", conv="r1")["text"] == "整机保修两年。"
    assert say(client, "shop-a", key, "支持白条吗", conv="r2")["text"] == "支持白条12期免息。"
    versions = {v["version"]: v for v in client.get("/v1/shops/shop-a/kb/versions", headers=key).json()}
    assert versions[v3]["entries"] == len(KB)


def test_rollback_never_drops_unpublished_edits_silently(client: TestClient) -> None:
    key = new_shop(client)
    v1 = publish_and_wait(client, "shop-a", key, kb_csv())
    v2 = publish_and_wait(client, "shop-a", key, v2_kb())
    edit = {"question": "保修多久", "answer": "整机保修五年。"}
    assert client.put("/v1/shops/shop-a/entries/warranty", headers=key, json=edit).status_code == 200
    before = client.get("/v1/shops/shop-a/entries", headers=key).json()

    refused = client.post(f"/v1/shops/shop-a/kb/versions/{v1}/activate", headers=key)
    assert refused.status_code == 409, refused.text
    detail = refused.json()["detail"]
    for words in ("unpublished edits", "nothing was changed", "kb/publish", "kb/export", "draft=discard"):
        assert words in detail
    assert "draft=keep" in detail
    assert client.get("/v1/shops/shop-a", headers=key).json()["active_version"] == v2
    assert client.get("/v1/shops/shop-a/entries", headers=key).json() == before

    kept = client.post(f"/v1/shops/shop-a/kb/versions/{v1}/activate?draft=keep", headers=key)
    assert kept.status_code == 200 and kept.json()["draft"] == "kept"
    wait_for(lambda: served_version(client, key) == v1)
    assert client.get("/v1/shops/shop-a/entries", headers=key).json() == before

    # v1 is active, the draft still differs from it: refused again until the edits are discarded
    assert client.post(f"/v1/shops/shop-a/kb/versions/{v2}/activate", headers=key).status_code == 409
    dropped = client.post(f"/v1/shops/shop-a/kb/versions/{v2}/activate?draft=discard", headers=key)
    assert dropped.status_code == 200 and dropped.json()["draft"] == "replaced"
    assert "unpublished edits were discarded" in dropped.json()["draft_note"]
    assert answer_of(client, key, "warranty") == "整机保修三年。"
    assert (
        client.post("/v1/shops/shop-a/kb/versions/99/activate?draft=discard", headers=key).status_code == 404
    )
    bad = client.post(f"/v1/shops/shop-a/kb/versions/{v1}/activate?draft=maybe", headers=key)
    assert bad.status_code == 422


@pytest.mark.parametrize("fmt", ["csv", "xlsx"])
def test_versions_and_the_draft_export_as_files_that_load_back(
    client: TestClient, tmp_path: Path, fmt: str
) -> None:
    key = new_shop(client)
    formula = ("formula", "=1+1 是什么", "@SUM(A1)|-5元券", "+86 热线。")
    v1 = publish_and_wait(client, "shop-a", key, kb_csv([*KB, formula]))
    promo = {"question": "双十二有活动吗", "answer": "满300减40", "valid_to": "2026-12-13"}
    assert client.put("/v1/shops/shop-a/entries/promo", headers=key, json=promo).status_code == 200

    r = client.get(f"/v1/shops/shop-a/kb/versions/{v1}/export?format={fmt}", headers=key)
    assert r.status_code == 200, r.text
    assert r.headers["content-disposition"] == f'attachment; filename="shop-a-kb-v{v1}.{fmt}"'
    (tmp_path / f"v1.{fmt}").write_bytes(r.content)
    exported = load_kb(tmp_path / f"v1.{fmt}")
    assert [e.id for e in exported] == [*(row[0] for row in KB), "formula"]
    assert exported[-1].question == "=1+1 是什么" and exported[-1].similar == ("@SUM(A1)", "-5元券")

    r = client.get(f"/v1/shops/shop-a/kb/export?format={fmt}", headers=key)
    assert r.status_code == 200 and 'filename="shop-a-kb-draft.' in r.headers["content-disposition"]
    (tmp_path / f"draft.{fmt}").write_bytes(r.content)
    draft = load_kb(tmp_path / f"draft.{fmt}")
    assert draft[:-1] == exported and draft[-1].id == "promo"
    assert draft[-1].valid_to is not None and draft[-1].valid_to.isoformat().startswith("2026-12-13T23:59:59")

    # uploading the export back changes nothing: the same KB, entry for entry
    with (tmp_path / f"draft.{fmt}").open("rb") as f:
        assert (
            client.post("/v1/shops/shop-a/kb", headers=key, files={"file": (f"kb.{fmt}", f)}).status_code
            == 200
        )
    r = client.get(f"/v1/shops/shop-a/kb/export?format={fmt}", headers=key)
    (tmp_path / f"again.{fmt}").write_bytes(r.content)
    assert load_kb(tmp_path / f"again.{fmt}") == draft
    assert client.get("/v1/shops/shop-a/kb/versions/9/export", headers=key).status_code == 404
    assert client.get("/v1/shops/shop-a/kb/export?format=xls", headers=key).status_code == 422


def test_auth_refusals_and_isolation(client: TestClient) -> None:
    a = new_shop(client, "shop-a")
    b = new_shop(client, "shop-b")
    publish_and_wait(client, "shop-a", a, kb_csv())
    assert client.post("/v1/admin/shops", json={"id": "x"}).status_code == 401
    assert (
        client.post("/v1/admin/shops", json={"id": "shop-a"}, headers={"X-Admin-Token": ADMIN}).status_code
        == 409
    )
    assert client.get("/v1/shops/shop-a").status_code == 401
    assert client.get("/v1/shops/shop-a", headers={"X-API-Key": "kf_wrong"}).status_code == 401
    assert client.get("/v1/shops/no-such-shop", headers={"X-API-Key": "kf_wrong"}).status_code == 401
    assert client.get("/v1/shops/shop-b/entries", headers=a).status_code == 403
    assert client.get("/v1/shops/shop-b/entries", headers=b).json() == []
    say(client, "shop-a", a, "保修多久")
    assert client.get("/v1/shops/shop-b/exchanges", headers=b).json() == []
    metrics = client.get("/metrics").text
    for reason in ("unknown_shop", "bad_api_key", "other_shop_key", "bad_admin_token"):
        assert f'kefu_auth_failures_total{{reason="{reason}"}}' in metrics


def test_status_codes_do_not_tell_which_shops_exist(client: TestClient) -> None:
    """An unknown shop got 404 where an existing one got 401/403: shop ids could be enumerated."""
    a = new_shop(client, "shop-a")
    new_shop(client, "shop-b")
    for headers in ({}, {"X-API-Key": "kf_wrong"}):
        existing = client.get("/v1/shops/shop-b/entries", headers=headers)
        for path in ("/v1/shops/nope/entries", "/v1/shops/NOT_A_SHOP/entries"):
            missing = client.get(path, headers=headers)
            assert (
                (missing.status_code, missing.json())
                == (existing.status_code, existing.json())
                == (
                    401,
                    {"detail": "a valid X-API-Key header is required"},
                )
            )
    existing = client.get("/v1/shops/shop-b/entries", headers=a)
    missing = client.get("/v1/shops/nope/entries", headers=a)
    assert (missing.status_code, missing.json()) == (existing.status_code, existing.json())
    assert existing.status_code == 403
    assert client.get("/v1/shops/shop-a/entries", headers=a).status_code == 200


def test_no_address_is_stored_anywhere(client: TestClient) -> None:
    """An address with a phone: neither may reach the conversation state, the exchange log or a handoff."""
    from api.dialog.conversation import Conversations

    key = new_shop(client)
    publish_and_wait(client, "shop-a", key, kb_csv())
    text = "寄到北京市朝阳区建国路88号，电话13812345678，什么时候发货"
    say(client, "shop-a", key, text, conv="c-addr")
    handoff = say(client, "shop-a", key, "转人工", conv="c-addr")  # the handoff carries the history
    assert handoff["kind"] == "handoff" and len(handoff["handoff"]["last_messages"]) >= 2
    store = client.app.state.service.store  # type: ignore[attr-defined]
    state = store.get_json(Conversations.key("shop-a", "c-addr"))
    logged = client.get("/v1/shops/shop-a/exchanges", headers=key).json()
    for where in (state, handoff, logged):
        stored = json.dumps(where, ensure_ascii=False)
        assert "建国路" not in stored and "13812345678" not in stored, stored


def test_modes_off_assist_auto(client: TestClient) -> None:
    key = new_shop(client)
    publish_and_wait(client, "shop-a", key, kb_csv())
    assert client.put("/v1/shops/shop-a/mode", headers=key, json={"mode": "off"}).json()["mode"] == "off"
    reply = say(client, "shop-a", key, "保修多久")
    assert reply["kind"] == "handoff" and "off" in reply["reason"] and reply["entry_id"] is None
    r = client.post("/v1/shops/shop-a/assist", headers=key, json={"conversation_id": "c", "text": "保修多久"})
    assert r.json()["suggestions"] == []
    client.put("/v1/shops/shop-a/mode", headers=key, json={"mode": "assist"})
    handed = say(client, "shop-a", key, "保修多久", conv="c2")
    assert handed["kind"] == "handoff" and handed["model_version"] is not None
    # the agent taking over gets the suggestions with the handoff
    with_handoff = handed["handoff"]["suggestions"]
    assert with_handoff[0]["entry_id"] == "warranty" and with_handoff[0]["answer"] == "整机保修两年。"
    r = client.post(
        "/v1/shops/shop-a/assist", headers=key, json={"conversation_id": "c2", "text": "质保几年"}
    )
    suggestions = r.json()["suggestions"]
    assert len(suggestions) == 3 and suggestions[0]["entry_id"] == "warranty"
    assert suggestions[0]["answer"] == "整机保修两年。"
    confidences = [s["confidence"] for s in suggestions]
    assert all(c > 0 for c in confidences) and confidences == sorted(confidences, reverse=True)
    client.put("/v1/shops/shop-a/mode", headers=key, json={"mode": "auto"})
    assert say(client, "shop-a", key, "保修多久", conv="c3")["kind"] == "answer"
    assert client.put("/v1/shops/shop-a/mode", headers=key, json={"mode": "sometimes"}).status_code == 422


def test_conversation_handoff_carries_context(client: TestClient) -> None:
    key = new_shop(client)
    publish_and_wait(client, "shop-a", key, kb_csv())
    reply = say(client, "shop-a", key, "我的手机13812345678，转人工", conv="h1")
    assert reply["kind"] == "handoff"
    assert reply["handoff"]["last_messages"] and "13812345678" not in str(reply["handoff"])
    log = client.get("/v1/shops/shop-a/exchanges", headers=key).json()
    assert log[0]["decision"] == "handoff" and "13812345678" not in log[0]["text"]


def test_feedback_becomes_labelled_data(client: TestClient) -> None:
    key = new_shop(client)
    publish_and_wait(client, "shop-a", key, kb_csv())
    good = say(client, "shop-a", key, "质保几年", conv="f1")
    other = say(client, "shop-a", key, "邮费谁出", conv="f2")
    assert (
        client.post(
            "/v1/shops/shop-a/feedback", headers=key, json={"exchange_id": good["exchange_id"], "kind": "up"}
        ).status_code
        == 201
    )
    fix = {"exchange_id": other["exchange_id"], "kind": "correction", "correct_entry_id": "payment"}
    assert client.post("/v1/shops/shop-a/feedback", headers=key, json=fix).status_code == 201
    bad = {"exchange_id": other["exchange_id"], "kind": "correction"}
    assert client.post("/v1/shops/shop-a/feedback", headers=key, json=bad).status_code == 422
    b = new_shop(client, "shop-b")
    assert (
        client.post(
            "/v1/shops/shop-b/feedback", headers=b, json={"exchange_id": good["exchange_id"], "kind": "up"}
        ).status_code
        == 404
    )
    rows = list(
        csv.reader(io.StringIO(client.get("/v1/shops/shop-a/feedback/labelled.csv", headers=key).text))
    )
    assert rows[0] == ["query", "expected_id"]
    assert sorted(rows[1:]) == sorted([["质保几年", "warranty"], ["邮费谁出", "payment"]])


def test_correction_must_name_an_entry_of_the_version_that_answered(client: TestClient) -> None:
    key = new_shop(client)
    publish_and_wait(client, "shop-a", key, kb_csv())
    asked = say(client, "shop-a", key, "邮费谁出", conv="v1")
    assert asked["model_version"] == 1
    fix = {"exchange_id": asked["exchange_id"], "kind": "correction", "correct_entry_id": "shipping-fee"}
    assert client.post("/v1/shops/shop-a/feedback", headers=key, json=fix).status_code == 201
    # v2 drops "payment" and adds "gift": labels of v1's exchanges are checked against v1
    gift = ("gift", "有赠品吗", "送什么赠品|有没有礼品", "下单送鼠标。")
    publish_and_wait(client, "shop-a", key, kb_csv([r for r in KB if r[0] != "payment"] + [gift]))
    for wrong in ("no-such-entry", "gift"):
        bad = {**fix, "correct_entry_id": wrong}
        r = client.post("/v1/shops/shop-a/feedback", headers=key, json=bad)
        assert r.status_code == 422, r.text
        [error] = r.json()["detail"]
        assert error["loc"] == ["body", "correct_entry_id"]
        assert f"{wrong!r} is not an entry of KB version 1" in error["msg"]
    ok = {**fix, "correct_entry_id": "payment"}  # gone from v2, but v1 answered
    assert client.post("/v1/shops/shop-a/feedback", headers=key, json=ok).status_code == 201
    labelled = client.get("/v1/shops/shop-a/feedback/labelled.csv", headers=key).text
    assert list(csv.reader(io.StringIO(labelled)))[1:] == [["邮费谁出", "payment"]]


def test_clarify_choice_is_labelled_with_the_real_question(client: TestClient) -> None:
    """A thumbs-up on the answer to "第二个" labels the question the list was offered for."""
    key = new_shop(client)
    publish_and_wait(client, "shop-a", key, kb_csv())
    say(client, "shop-a", key, "你好", conv="load")  # the shop's first message here loads its model
    served = client.app.state.service.registry.get("shop-a")  # type: ignore[attr-defined]
    served.matcher.policy = dataclasses.replace(served.matcher.policy, t_answer=1.01, t_clarify=0.0)
    offered = say(client, "shop-a", key, "那发票应该怎么开呀", conv="k1")
    assert offered["kind"] == "clarify" and len(offered["options"]) >= 2
    chosen = say(client, "shop-a", key, "第二个", conv="k1")
    assert chosen["kind"] == "answer" and chosen["entry_id"] == offered["options"][1]["entry_id"]
    assert "question" not in chosen  # internal: logged, not sent
    up = {"exchange_id": chosen["exchange_id"], "kind": "up"}
    assert client.post("/v1/shops/shop-a/feedback", headers=key, json=up).status_code == 201
    labelled = client.get("/v1/shops/shop-a/feedback/labelled.csv", headers=key).text
    assert list(csv.reader(io.StringIO(labelled)))[1:] == [["那发票应该怎么开呀", chosen["entry_id"]]]


FORMULAS = ["=cmd|' /C calc'!A0", "+1+cmd|' /C calc'!A0", "-2+3 能分期吗", "@SUM(1+1)*cmd|' /C calc'!A0"]


def test_labelled_csv_cells_never_run_as_formulas(client: TestClient, tmp_path: Path) -> None:
    """Customer text in labelled.csv is quoted for Excel, and `kefu calibrate` reads it back unchanged."""
    key = new_shop(client)
    publish_and_wait(client, "shop-a", key, kb_csv())
    for i, text in enumerate(FORMULAS):
        exchange_id = say(client, "shop-a", key, text, conv=f"x{i}")["exchange_id"]
        fix = {"exchange_id": exchange_id, "kind": "correction", "correct_entry_id": "payment"}
        assert client.post("/v1/shops/shop-a/feedback", headers=key, json=fix).status_code == 201
    text = client.get("/v1/shops/shop-a/feedback/labelled.csv", headers=key).text
    cells = [cell for row in csv.reader(io.StringIO(text)) for cell in row]
    assert not [cell for cell in cells if cell[:1] in ("=", "+", "-", "@", "\t", "\r")]
    (tmp_path / "labelled.csv").write_text(text, encoding="utf-8")
    assert read_queries(tmp_path / "labelled.csv") == [(t, "payment") for t in FORMULAS]


def test_promotion_window_switches_by_clock_without_rebuild(client: TestClient) -> None:
    key = new_shop(client)
    rows = [*KB, ("promo-old", "双十一有什么活动", "双11优惠|双十一满减|11.11活动", "满5000减500。")]
    data = kb_csv(rows).decode("utf-8").replace("满5000减500。,,,", "满5000减500。,,2025-11-01,2025-11-12")
    publish_and_wait(client, "shop-a", key, data.encode("utf-8"))
    reply = say(client, "shop-a", key, "双十一有什么活动", conv="p1")
    assert reply["entry_id"] != "promo-old"
    assert all(o["entry_id"] != "promo-old" for o in reply["options"])


def test_hot_swap_while_messages_flow(client: TestClient) -> None:
    """Publishing new versions under load: no request fails, every reply comes from a complete model."""
    key = new_shop(client)
    v1 = publish_and_wait(client, "shop-a", key, kb_csv())
    stop = threading.Event()
    seen: list[tuple[int, int | None, str | None]] = []

    def talk() -> None:
        i = 0
        while not stop.is_set():
            r = client.post(
                "/v1/shops/shop-a/messages",
                headers=key,
                json={"conversation_id": f"l{i}", "text": "质保几年"},
            )
            body = r.json()
            seen.append((r.status_code, body.get("model_version"), body.get("entry_id")))
            i += 1

    t = threading.Thread(target=talk)
    t.start()
    try:
        versions = [v1]
        for n in range(2):
            client.put(
                f"/v1/shops/shop-a/entries/extra{n}",
                headers=key,
                json={"question": f"问题{n}号", "answer": "答"},
            )
            versions.append(publish_and_wait(client, "shop-a", key))
    finally:
        stop.set()
        t.join()
    assert len(seen) > 10
    assert {s for s, _, _ in seen} == {200}
    assert {v for _, v, _ in seen} <= set(versions)
    assert {e for _, _, e in seen} == {"warranty"}


def test_second_replica_swaps_through_notifications(settings: Settings) -> None:
    """Two apps on one database and one store: a publish on A is served by B too. B, which has never
    served the shop, loads it on the shop's first message there (a notice does not make every replica
    load every published shop); once B holds the shop's model, the next publish on A swaps it on B."""
    with TestClient(create_app(settings)) as a, TestClient(create_app(settings)) as b:
        key = new_shop(a)
        v = publish_and_wait(a, "shop-a", key, kb_csv())
        time.sleep(1.0)  # the notice has long arrived
        info = b.get("/v1/shops/shop-a", headers=key).json()
        assert not info["loaded"] and info["served_version"] == v  # not in memory; its next message loads v
        assert say(b, "shop-a", key, "质保几年")["model_version"] == v
        assert b.get("/v1/shops/shop-a", headers=key).json()["loaded"]
        rows = [*KB, ("gift", "有赠品吗", "送什么赠品|有没有礼物", "下单送保温杯。")]
        v2 = publish_and_wait(a, "shop-a", key, kb_csv(rows))
        assert v2 == v + 1
        wait_for(lambda: b.get("/v1/shops/shop-a", headers=key).json()["served_version"] == v2, timeout=30)
        assert say(b, "shop-a", key, "有赠品吗", conv="c2")["model_version"] == v2


def test_jd_credentials_are_stored_encrypted_and_shown_masked(client: TestClient, settings: Settings) -> None:
    key = new_shop(client)
    creds = {
        "app_key": "APPKEY1234567",
        "app_secret": "SECRET-abcdefghijkl",
        "access_token": "TOKEN-0987654321",
    }
    r = client.put("/v1/shops/shop-a/jd-credentials", headers=key, json=creds)
    assert r.status_code == 200
    shown = r.json()
    assert shown["configured"] and "SECRET-abcdefghijkl" not in r.text and "TOKEN-0987654321" not in r.text
    assert shown["app_key"].startswith("APP") and "***" in shown["app_key"]
    from sqlalchemy import create_engine, text

    engine = create_engine(settings.database_url)
    with engine.connect() as conn:
        row = conn.execute(text("SELECT jd_app_key, jd_app_secret, jd_access_token FROM shops")).one()
    engine.dispose()
    assert all(v and "SECRET" not in v and "TOKEN" not in v and "APPKEY" not in v for v in row)


def test_shop_settings_shape_the_next_publish(client: TestClient) -> None:
    """Synonyms and human phrases set by the merchant take effect with the next version, and stay with it."""
    key = new_shop(client)
    publish_and_wait(client, "shop-a", key, kb_csv())
    before = say(client, "shop-a", key, "京东信用付", conv="s0")
    settings = {
        "synonyms": {"白条": ["京东信用付"]},
        "human_phrases": ["找店长"],
        "user_words": ["京东信用付"],
    }
    r = client.put("/v1/shops/shop-a/settings", headers=key, json=settings)
    assert r.status_code == 200 and r.json()["target_precision"] == 0.95
    assert client.get("/v1/shops/shop-a/settings", headers=key).json()["synonyms"] == {"白条": ["京东信用付"]}
    v2 = publish_and_wait(client, "shop-a", key)
    after = say(client, "shop-a", key, "京东信用付", conv="s1")
    # the variant now reads as the KB's own word: first, and far more confident (this KB is too small for
    # an answer threshold at 95% with 80% confidence, so the bot offers it rather than answers it)
    assert after["kind"] in ("answer", "clarify")
    assert (after["entry_id"] or after["options"][0]["entry_id"]) == "payment"
    assert after["confidence"] > before["confidence"] + 0.2
    assert say(client, "shop-a", key, "我要找店长", conv="s2")["kind"] == "handoff"
    version = client.get(f"/v1/shops/shop-a/kb/versions/{v2}", headers=key).json()
    assert version["options"]["synonyms"] == {"白条": ["京东信用付"]}
    bad = client.put("/v1/shops/shop-a/settings", headers=key, json={"target_precision": 2})
    assert bad.status_code == 422


# ---------------------------------------------------------------- concurrent publishes

RETRY_MESSAGE = "numbering again"  # logged when the IntegrityError guard had to act


def _publish_at_once(client: TestClient, key: dict[str, str], n: int, before: Any = None) -> list[Any]:
    """`n` threads released together, each POSTing kb/publish (after `before(i)`); their responses."""
    barrier = threading.Barrier(n)
    responses: list[Any] = [None] * n

    def one(i: int) -> None:
        barrier.wait(timeout=30)
        if before is not None:
            before(i)
        responses[i] = client.post("/v1/shops/shop-a/kb/publish", headers=key)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return responses


def test_the_same_kb_published_at_once_makes_one_version(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    """Was a 500 on SQLite (UNIQUE constraint failed: kb_versions.shop_id, kb_versions.version), and a
    build per publish everywhere."""
    key = new_shop(client)
    r = client.post("/v1/shops/shop-a/kb", headers=key, files={"file": ("kb.csv", kb_csv())})
    assert r.status_code == 200, r.text
    responses = _publish_at_once(client, key, 6)
    assert [r.status_code for r in responses] == [202] * 6, [r.text for r in responses]
    bodies = [r.json() for r in responses]
    assert {b["version"] for b in bodies} == {1}
    assert sorted(b["reused"] for b in bodies) == [False] + [True] * 5
    assert [v["version"] for v in client.get("/v1/shops/shop-a/kb/versions", headers=key).json()] == [1]
    wait_for(lambda: client.get("/v1/shops/shop-a", headers=key).json()["served_version"] == 1)
    # once ready and served, publishing it again still builds nothing
    again = client.post("/v1/shops/shop-a/kb/publish", headers=key).json()
    assert (again["version"], again["reused"], again["status"], again["active"]) == (1, True, "ready", True)
    file = {"file": ("kb.csv", kb_csv())}
    upload = client.post("/v1/shops/shop-a/kb?publish=true", headers=key, files=file)
    assert upload.json() == {"entries": len(KB), "version": 1, "reused": True, "warnings": []}
    assert len(client.get("/v1/shops/shop-a/kb/versions", headers=key).json()) == 1
    assert RETRY_MESSAGE not in caplog.text


def test_concurrent_publishes_of_changing_kbs_number_versions_in_turn(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    """Threads released at once each edit the KB and publish: every publish is answered, and new versions
    get consecutive numbers without ever colliding (the IntegrityError guard never acts)."""
    key = new_shop(client)
    publish_and_wait(client, "shop-a", key, kb_csv())

    for round_ in range(2):

        def edit(i: int, round_: int = round_) -> None:
            body = {"question": f"第{round_}轮第{i}个新问题是什么", "answer": f"答案{i}"}
            assert client.put(f"/v1/shops/shop-a/entries/new{i}", headers=key, json=body).status_code == 200

        responses = _publish_at_once(client, key, 6, before=edit)
        assert [r.status_code for r in responses] == [202] * 6, [r.text for r in responses]
    rows = client.get("/v1/shops/shop-a/kb/versions", headers=key).json()
    numbers = sorted(v["version"] for v in rows)
    assert numbers == list(range(1, len(numbers) + 1))
    assert len(numbers) >= 3  # each round changed the KB before its first publish
    assert RETRY_MESSAGE not in caplog.text


def test_a_publish_that_loses_its_number_is_numbered_again(
    client: TestClient, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last guard: a version number taken in between (IntegrityError) gets one more try, not a 500.
    (Called here: a publish freezes in the KB process, which this test's patch does not reach.)"""
    from api.kb import repo
    from api.kb.freeze import freeze

    key = new_shop(client)
    publish_and_wait(client, "shop-a", key, kb_csv())
    real, calls = repo.latest_version, []

    def stale_once(s: Any, shop: str) -> int:
        calls.append(shop)
        return 0 if len(calls) == 1 else real(s, shop)  # as if version 1 were not there yet

    monkeypatch.setattr(repo, "latest_version", stale_once)
    client.put("/v1/shops/shop-a/entries/gift", headers=key, json={"question": "有没有赠品", "answer": "有"})
    frozen = freeze(client.app.state.service.db, "shop-a")  # type: ignore[attr-defined]
    assert frozen.version == 2 and frozen.reused_status is None and len(calls) == 2
    assert RETRY_MESSAGE in caplog.text


def test_republishing_a_rolled_back_kb_activates_its_version(client: TestClient) -> None:
    """v1 and v2 ready, rolled back to v1, the KB edited back to v2's: the publish serves v2, no build."""
    key = new_shop(client)
    v1 = publish_and_wait(client, "shop-a", key, kb_csv())
    body = {"question": "有没有赠品", "answer": "送鼠标。"}
    client.put("/v1/shops/shop-a/entries/gift", headers=key, json=body)
    v2 = publish_and_wait(client, "shop-a", key)
    assert client.post(f"/v1/shops/shop-a/kb/versions/{v1}/activate", headers=key).status_code == 200
    # the rollback made v1's KB the draft: publishing it now repeats v1, the served version
    r = client.post("/v1/shops/shop-a/kb/publish", headers=key)
    assert r.status_code == 202 and r.json()["version"] == v1 and r.json()["reused"], r.text
    client.put("/v1/shops/shop-a/entries/gift", headers=key, json=body)  # the KB edited back to v2's
    r = client.post("/v1/shops/shop-a/kb/publish", headers=key)
    assert r.status_code == 202 and r.json()["version"] == v2 and r.json()["reused"], r.text
    assert r.json()["active"]
    wait_for(lambda: client.get("/v1/shops/shop-a", headers=key).json()["served_version"] == v2)
    assert len(client.get("/v1/shops/shop-a/kb/versions", headers=key).json()) == 2


def test_versions_are_listed_a_page_at_a_time(client: TestClient) -> None:
    """Newest first, `limit` per page, the next page in a `Link` header (rel="next") until the last; the
    active version is `live` on whichever page it falls, and bad paging parameters are a 422 naming them."""
    from api.kb import repo
    from engine.kb import load_kb

    key = new_shop(client)
    v1 = publish_and_wait(client, "shop-a", key, kb_csv())
    entries = load_kb([{"id": "a", "question": "问题", "answer": "答"}], source_name="test")
    with client.app.state.service.db.session(write_lock=True) as s:  # type: ignore[attr-defined]
        for _ in range(4):
            repo.create_version(s, "shop-a", entries)
    url: str | None = "/v1/shops/shop-a/kb/versions?limit=2"
    pages = []
    while url:
        r = client.get(url, headers=key)
        assert r.status_code == 200, r.text
        pages.append([(v["version"], v["state"]) for v in r.json()])
        url = r.links.get("next", {}).get("url")
    assert pages == [[(5, "building"), (4, "building")], [(3, "building"), (2, "building")], [(v1, "live")]]
    whole = client.get("/v1/shops/shop-a/kb/versions", headers=key)
    assert [v["version"] for v in whole.json()] == [5, 4, 3, 2, 1] and "link" not in whole.headers
    below = client.get("/v1/shops/shop-a/kb/versions?before=3", headers=key).json()
    assert [v["version"] for v in below] == [2, 1]
    for query, field in (("limit=0", "limit"), ("limit=1001", "limit"), ("before=x", "before")):
        r = client.get(f"/v1/shops/shop-a/kb/versions?{query}", headers=key)
        assert r.status_code == 422 and field in r.text, (query, r.text)


def _number_versions_in_another_process(url: str, proc: int, rounds: int, barrier: Any) -> None:
    """One replica (its own process and engine) numbering versions in a tight loop, as publish does."""
    from api.db.session import Database
    from api.kb import repo
    from engine.kb import load_kb

    entries = load_kb([{"id": "a", "question": "问题", "answer": "答"}], source_name="test")
    db = Database(url)
    barrier.wait(timeout=60)
    for i in range(rounds):
        with db.session(write_lock=True) as s:
            repo.create_version(s, "shop-a", entries, {"process": proc, "round": i})
    db.dispose()


def test_two_processes_number_versions_in_turn(client: TestClient, settings: Settings) -> None:
    """Two replicas (processes, as two uvicorn workers sharing one SQLite file) numbering at once: on
    SQLite only a lock taken at BEGIN keeps them apart (without it: UNIQUE constraint failed)."""
    import multiprocessing

    key = new_shop(client)
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    rounds = 40
    procs = [
        ctx.Process(
            target=_number_versions_in_another_process, args=(settings.database_url, p, rounds, barrier)
        )
        for p in range(2)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    numbers = sorted(v["version"] for v in client.get("/v1/shops/shop-a/kb/versions", headers=key).json())
    assert numbers == list(range(1, 2 * rounds + 1))


def test_concurrent_kb_edits_are_all_answered(client: TestClient) -> None:
    """Were 500s on PostgreSQL: two uploads at once both deleted, then both inserted the same ids."""
    key = new_shop(client)
    barrier = threading.Barrier(6)
    statuses: list[int] = []

    def edit(i: int) -> None:
        barrier.wait(timeout=30)
        if i % 2:
            extra = [(f"x{i}", f"第{i}个额外问题", "", "答")]
            r = client.post(
                "/v1/shops/shop-a/kb", headers=key, files={"file": ("kb.csv", kb_csv(KB + extra))}
            )
        else:
            body = {"question": "有没有赠品", "answer": f"送鼠标{i}。"}
            r = client.put("/v1/shops/shop-a/entries/gift", headers=key, json=body)
        statuses.append(r.status_code)

    threads = [threading.Thread(target=edit, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(statuses) == [200] * 6


def open_files_under(root: Path, part: str = "") -> list[str]:
    """This process's open descriptors on files under `root` whose path contains `part`."""
    import os

    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(root.resolve())) and part in target:
            found.append(target)
    return found


def test_a_closed_service_lets_go_of_its_models_files_and_threads(settings: Settings) -> None:
    """Shutting an app down frees its service: the models' mapped arrays, the queues' database files and
    the store's threads. (Its session listeners once kept every closed service alive: a test run reached
    thousands of open descriptors.)"""
    import gc
    import weakref

    data_dir = Path(settings.data_dir)
    services = []
    for i in range(2):
        with TestClient(create_app(settings)) as c:
            key = new_shop(c, f"closed-{i}")
            publish_and_wait(c, f"closed-{i}", key, kb_csv())
            assert say(c, f"closed-{i}", key, "质保几年")["entry_id"] == "warranty"
            assert any(p.endswith(".npy") for p in open_files_under(data_dir))  # the served model's arrays
            services.append(weakref.ref(c.app.state.service))  # type: ignore[attr-defined]
        del c
    gc.collect()
    assert [s() for s in services] == [None, None]
    assert open_files_under(data_dir) == []
    assert not [t for t in threading.enumerate() if t.name == "kefu-memory-pubsub"]


def test_messages_sent_at_once_in_one_conversation_are_all_kept(client: TestClient) -> None:
    """A customer sending several short messages in a row: every turn lands in the conversation's state,
    whichever order the threads (or replicas) finish in; none overwrites another's."""
    key = new_shop(client)
    publish_and_wait(client, "shop-a", key, kb_csv())
    texts = [
        "能开发票吗",
        "什么时候发货",
        "保修多久",
        "能退货吗",
        "包邮吗",
        "收货地址能改吗",
        "怎么查物流",
        "支持白条吗",
    ]
    start = threading.Barrier(len(texts))

    def one(text: str) -> None:
        start.wait()
        say(client, "shop-a", key, text, conv="burst")

    threads = [threading.Thread(target=one, args=(t,)) for t in texts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    handoff = say(client, "shop-a", key, "转人工", conv="burst")["handoff"]
    assert sorted(handoff["last_messages"][:-1]) == sorted(texts)
    assert handoff["last_messages"][-1] == "转人工"


def test_assist_and_off_turns_join_the_handoff_context(client: TestClient) -> None:
    """The agent sees what the customer said while the bot only assisted or was off, and so does the bot
    once it is back in auto mode."""
    key = new_shop(client)
    publish_and_wait(client, "shop-a", key, kb_csv())

    def mode(m: str) -> None:
        assert client.put("/v1/shops/shop-a/mode", headers=key, json={"mode": m}).status_code == 200

    assert say(client, "shop-a", key, "能开发票吗", conv="m")["kind"] == "answer"
    mode("assist")
    handed = say(client, "shop-a", key, "我的手机13812345678，保修多久", conv="m")["handoff"]
    assert handed["last_messages"] == ["能开发票吗", "我的手机[手机号]，保修多久"]
    mode("off")
    handed = say(client, "shop-a", key, "包邮吗", conv="m")["handoff"]
    assert handed["last_messages"] == ["能开发票吗", "我的手机[手机号]，保修多久", "包邮吗"]
    mode("auto")
    handed = say(client, "shop-a", key, "转人工", conv="m")["handoff"]
    assert handed["last_messages"] == ["能开发票吗", "我的手机[手机号]，保修多久", "包邮吗", "转人工"]
