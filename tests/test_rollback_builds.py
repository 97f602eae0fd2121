"""A rollback made while a version builds sticks: the build ends ready but is not served (issue: the build
finishing after `activate?draft=discard` brought its version back, serving a model that no longer matched
the editable KB). Versions published after the rollback, or published again while they build, are served;
replicas finishing builds out of order still keep the newest.

Deterministic: the service only enqueues (KEFU_BUILD_IN_PROCESS=false, nothing consumes the queue) and the
tests run each build themselves, with the real claim, child process and completion of api/kb/builds.py,
on SQLite + in-process state and on PostgreSQL + Redis.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.kb import repo as kb_repo
from api.kb.publisher import NOT_ACTIVATED
from api.main import create_app
from api.settings import Settings
from tests.test_service import common_settings, kb_csv, new_shop, say, v2_kb, wait_for

SHOP = "shop-a"
GIFT = {"question": "有没有赠品", "similar": "送什么礼物|买电脑送鼠标吗|赠品有哪些", "answer": "送鼠标。"}


@pytest.fixture(params=["sqlite+memory", "postgresql+redis"])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    common = common_settings(tmp_path) | {"build_in_process": False}
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


def service_of(client: TestClient) -> Any:
    return client.app.state.service  # type: ignore[attr-defined]


def build(client: TestClient, version: int) -> None:
    """The queue task of `version`, run here to its end (claim, child process, ready, activation)."""
    service_of(client).builds.build_version(SHOP, version)


def claim(client: TestClient, version: int) -> tuple[Any, int]:
    """The start of a build on this replica: the version claimed (its build is under way)."""
    claimed = service_of(client).builds._claim(SHOP, version)
    assert claimed is not None
    return claimed


def finish(client: TestClient, claimed: tuple[Any, int]) -> None:
    """The rest of a claimed build: its child process, then the version ready and (maybe) activated."""
    builds = service_of(client).builds
    job, attempt = claimed
    builds._settle(job, attempt, builds._run_child(job, attempt), 0.0, None)


def publish(client: TestClient, key: dict[str, str], data: bytes = b"") -> dict[str, Any]:
    if data:
        r = client.post(f"/v1/shops/{SHOP}/kb", headers=key, files={"file": ("kb.csv", data)})
        assert r.status_code == 200, r.text
    r = client.post(f"/v1/shops/{SHOP}/kb/publish", headers=key)
    assert r.status_code == 202, r.text
    return dict(r.json())


def shop_info(client: TestClient, key: dict[str, str]) -> dict[str, Any]:
    return dict(client.get(f"/v1/shops/{SHOP}", headers=key).json())


def versions(client: TestClient, key: dict[str, str]) -> dict[int, dict[str, Any]]:
    return {v["version"]: v for v in client.get(f"/v1/shops/{SHOP}/kb/versions", headers=key).json()}


def wait_served(client: TestClient, key: dict[str, str], version: int) -> None:
    wait_for(lambda: shop_info(client, key)["served_version"] == version, timeout=60)


def two_ready_versions(client: TestClient, key: dict[str, str]) -> tuple[int, int]:
    """v1 (the test KB) and v2 (warranty three years) built, v2 served."""
    v1 = publish(client, key, kb_csv())["version"]
    build(client, v1)
    v2 = publish(client, key, v2_kb())["version"]
    build(client, v2)
    wait_served(client, key, v2)
    return v1, v2


def test_a_rollback_made_while_a_version_builds_sticks(client: TestClient) -> None:
    key = new_shop(client)
    v1, v2 = two_ready_versions(client, key)
    listed = versions(client, key)  # a normal publish ends live; the version it replaced is inactive
    assert (listed[v2]["state"], listed[v2]["active"], listed[v1]["state"]) == ("live", True, "inactive")
    assert client.put(f"/v1/shops/{SHOP}/entries/gift", headers=key, json=GIFT).status_code == 200
    published = publish(client, key)  # building (nobody consumes the queue)
    v3 = published["version"]
    assert (published["status"], published["state"]) == ("building", "building")

    r = client.post(f"/v1/shops/{SHOP}/kb/versions/{v1}/activate?draft=discard", headers=key)
    assert r.status_code == 200, r.text
    assert f"the editable KB is now version {v1}'s KB" in r.json()["draft_note"]
    assert f"version {v3}, still building, will end ready but not served" in r.json()["draft_note"]
    wait_served(client, key, v1)

    build(client, v3)  # the build finishes after the rollback
    listed = versions(client, key)
    assert (listed[v3]["status"], listed[v3]["active"], listed[v3]["progress"]) == ("ready", False, 1.0)
    assert listed[v1]["active"] and not listed[v2]["active"]
    # `state` tells this ready version, held back by the rollback, from one being activated by its build
    assert [listed[v]["state"] for v in (v1, v2, v3)] == ["live", "inactive", "inactive"]
    one = client.get(f"/v1/shops/{SHOP}/kb/versions/{v3}", headers=key).json()
    assert (one["status"], one["active"], one["state"]) == ("ready", False, "inactive")
    assert client.get(f"/v1/shops/{SHOP}/kb/versions/{v1}", headers=key).json()["state"] == "live"
    note = listed[v3]["metrics"][NOT_ACTIVATED]
    assert f"version {v1} was activated explicitly" in note and f"kb/versions/{v3}/activate" in note
    assert listed[v3]["metrics"]["self_recall_at_3"] >= 0.9  # the build's own figures are kept
    assert shop_info(client, key)["active_version"] == v1
    reply = say(client, SHOP, key, "保修多久", conv="r1")
    assert (reply["model_version"], reply["text"]) == (v1, "整机保修两年。")
    assert client.get(f"/v1/shops/{SHOP}/entries/gift", headers=key).status_code == 404  # v1's KB

    # the merchant may serve it later: then it is active and the note is gone
    r = client.post(f"/v1/shops/{SHOP}/kb/versions/{v3}/activate", headers=key)
    assert r.status_code == 200 and r.json()["active"] and NOT_ACTIVATED not in r.json()["metrics"]
    assert r.json()["state"] == "live" and "still building" not in r.json()["draft_note"]
    wait_served(client, key, v3)
    assert say(client, SHOP, key, "买电脑送鼠标吗", conv="r2")["entry_id"] == "gift"


def test_a_version_published_after_the_rollback_is_served(client: TestClient) -> None:
    key = new_shop(client)
    v1, _ = two_ready_versions(client, key)
    client.put(f"/v1/shops/{SHOP}/entries/gift", headers=key, json=GIFT)
    v3 = publish(client, key)["version"]
    v3_build = claim(client, v3)  # under way when the merchant rolls back
    r = client.post(f"/v1/shops/{SHOP}/kb/versions/{v1}/activate?draft=discard", headers=key)
    assert r.status_code == 200, r.text

    edit = {"question": "可以分期付款吗", "similar": "支持白条吗", "answer": "支持白条12期免息。"}
    assert client.put(f"/v1/shops/{SHOP}/entries/payment", headers=key, json=edit).status_code == 200
    v4 = publish(client, key)["version"]
    assert v4 == v3 + 1
    finish(client, v3_build)  # v3 ends first: held back by the rollback
    assert shop_info(client, key)["active_version"] == v1
    assert NOT_ACTIVATED in versions(client, key)[v3]["metrics"]
    build(client, v4)  # published after the rollback: served
    wait_served(client, key, v4)
    listed = versions(client, key)
    assert listed[v4]["active"] and NOT_ACTIVATED not in listed[v4]["metrics"]
    assert say(client, SHOP, key, "支持白条吗", conv="p1")["text"] == "支持白条12期免息。"


def test_publishing_the_building_kb_again_after_a_rollback_serves_it(client: TestClient) -> None:
    """After the rollback the merchant publishes the KB that is building again: the publish repeats that
    version (no new build), and it is served once ready, since the merchant asked for it again."""
    key = new_shop(client)
    v1, _ = two_ready_versions(client, key)
    client.put(f"/v1/shops/{SHOP}/entries/gift", headers=key, json=GIFT)
    v3 = publish(client, key)["version"]
    r = client.post(f"/v1/shops/{SHOP}/kb/versions/{v1}/activate?draft=discard", headers=key)
    assert r.status_code == 200, r.text
    v3_kb = client.get(f"/v1/shops/{SHOP}/kb/versions/{v3}/export", headers=key)  # v3's KB, uploaded back
    assert v3_kb.status_code == 200, v3_kb.text
    again = publish(client, key, v3_kb.content)
    assert (again["version"], again["reused"], again["status"]) == (v3, True, "building")

    build(client, v3)
    wait_served(client, key, v3)
    listed = versions(client, key)
    assert listed[v3]["active"] and NOT_ACTIVATED not in listed[v3]["metrics"]
    assert len(listed) == 3
    assert say(client, SHOP, key, "买电脑送鼠标吗", conv="g1")["entry_id"] == "gift"


def test_a_rollback_with_draft_keep_sticks_too(client: TestClient) -> None:
    key = new_shop(client)
    v1, _ = two_ready_versions(client, key)
    client.put(f"/v1/shops/{SHOP}/entries/gift", headers=key, json=GIFT)
    v3 = publish(client, key)["version"]
    r = client.post(f"/v1/shops/{SHOP}/kb/versions/{v1}/activate?draft=keep", headers=key)
    assert r.status_code == 200 and r.json()["draft"] == "kept", r.text
    assert f"version {v3}, still building" in r.json()["draft_note"]
    build(client, v3)
    assert shop_info(client, key)["active_version"] == v1
    assert versions(client, key)[v3]["status"] == "ready"
    # the kept draft is v3's KB: publishing it repeats the ready v3 and serves it
    again = publish(client, key)
    assert (again["version"], again["reused"], again["active"]) == (v3, True, True)
    wait_served(client, key, v3)


def test_replicas_finishing_builds_out_of_order_still_serve_the_newest(settings: Settings) -> None:
    """Two replicas: A claims v2, v3 is published and B builds it first; A's v2 finishing last is not
    served (and carries no rollback note). In order, each finished build is served in turn. A rollback
    while both replicas build holds both back."""
    with TestClient(create_app(settings)) as a, TestClient(create_app(settings)) as b:
        key = new_shop(a)
        v1 = publish(a, key, kb_csv())["version"]
        build(a, v1)
        wait_served(b, key, v1)

        a.put(f"/v1/shops/{SHOP}/entries/gift", headers=key, json=GIFT)
        v2 = publish(a, key)["version"]
        v2_build = claim(a, v2)
        v3 = publish(b, key, v2_kb())["version"]
        build(b, v3)
        wait_served(a, key, v3)
        finish(a, v2_build)
        listed = versions(a, key)
        assert listed[v2]["status"] == "ready" and not listed[v2]["active"] and listed[v3]["active"]
        assert NOT_ACTIVATED not in listed[v2]["metrics"]

        # in order: v4 on A ends before v5 on B; each is served when it ends
        a.put(f"/v1/shops/{SHOP}/entries/gift", headers=key, json=GIFT)
        v4 = publish(a, key)["version"]
        v4_build = claim(a, v4)
        b.delete(f"/v1/shops/{SHOP}/entries/gift", headers=key)
        b.put(f"/v1/shops/{SHOP}/entries/gift2", headers=key, json={"question": "送不送礼品", "answer": "送"})
        v5 = publish(b, key)["version"]
        v5_build = claim(b, v5)
        finish(a, v4_build)
        assert shop_info(a, key)["active_version"] == v4
        finish(b, v5_build)
        assert shop_info(a, key)["active_version"] == v5
        wait_served(a, key, v5)
        wait_served(b, key, v5)

        # both replicas building (v6 on A, v7 on B) when the merchant rolls back to v1: neither is served
        a.put(f"/v1/shops/{SHOP}/entries/gift3", headers=key, json={"question": "有发票袋吗", "answer": "有"})
        v6 = publish(a, key)["version"]
        v6_build = claim(a, v6)
        b.put(f"/v1/shops/{SHOP}/entries/gift4", headers=key, json={"question": "送贺卡吗", "answer": "送"})
        v7 = publish(b, key)["version"]
        v7_build = claim(b, v7)
        r = b.post(f"/v1/shops/{SHOP}/kb/versions/{v1}/activate?draft=discard", headers=key)
        assert r.status_code == 200 and f"versions {v6}, {v7}, still building" in r.json()["draft_note"]
        finish(b, v7_build)
        finish(a, v6_build)
        listed = versions(a, key)
        assert [listed[v]["status"] for v in (v6, v7)] == ["ready", "ready"]
        assert all(NOT_ACTIVATED in listed[v]["metrics"] for v in (v6, v7))
        assert shop_info(a, key)["active_version"] == v1
        wait_served(a, key, v1)
        wait_served(b, key, v1)


def test_publishes_and_explicit_activations_are_numbered_in_turn(client: TestClient) -> None:
    key = new_shop(client)
    v1, v2 = two_ready_versions(client, key)
    service = service_of(client)
    with service.db.session() as s:
        seqs = {v: kb_repo.get_version(s, SHOP, v).request_seq for v in (v1, v2)}  # type: ignore[union-attr]
    assert seqs[v1] < seqs[v2]
    assert client.post(f"/v1/shops/{SHOP}/kb/versions/{v1}/activate", headers=key).status_code == 200
    with service.db.session() as s:
        row = kb_repo.get_version(s, SHOP, v1)
        assert row is not None and row.request_seq > seqs[v2]
        assert kb_repo.next_request(s, SHOP) == row.request_seq + 1
