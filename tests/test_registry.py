"""Shops' models in memory: loaded on first message, evicted least-recently-used under a budget, held
by shard; through the registry and through a running service."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.kb.registry import Holding, ModelRegistry, ShopNotHeldError, shard_of
from api.main import create_app
from api.settings import Settings
from tests.test_service import common_settings, kb_csv, new_shop, open_files_under, publish_and_wait, say


def test_least_recently_used_models_are_evicted_over_the_budget(fast_matcher, tmp_path):
    size = fast_matcher.memory_bytes()
    reg = ModelRegistry(tmp_path, memory_mb=2.5 * size / 2**20)  # room for two models
    for shop in ("a", "b"):
        reg.swap(shop, 1, fast_matcher)
    assert reg.get("a") is not None  # a is now used more recently than b
    reg.swap("c", 1, fast_matcher)
    assert reg.peek("b") is None and reg.peek("a") is not None and reg.peek("c") is not None
    assert reg.loaded_bytes == 2 * size and len(reg) == 2 and reg.evictions == 1
    reg.swap("c", 2, fast_matcher)  # a new version replaces, it does not add
    assert reg.loaded_bytes == 2 * size and reg.peek("a") is not None


def test_a_model_alone_above_the_budget_is_still_served(fast_matcher, tmp_path):
    reg = ModelRegistry(tmp_path, memory_mb=0.001)
    reg.swap("a", 1, fast_matcher)
    assert reg.peek("a") is not None and not reg.has_room()
    reg.swap("b", 1, fast_matcher)
    assert reg.peek("a") is None and reg.peek("b") is not None


def test_memory_estimate_grows_with_the_model(fast_matcher, demo_matcher):
    """The budget counts what a model holds: the dense vectors make the default profile bigger."""
    assert 0 < fast_matcher.memory_bytes() < demo_matcher.memory_bytes()
    assert demo_matcher.dense_index is not None
    assert demo_matcher.memory_bytes() > demo_matcher.dense_index.vectors_.nbytes


def test_shards_split_the_shops_and_lists_add_to_them():
    shops = [f"shop-{i}" for i in range(200)]
    owners = [[s for s in shops if Holding((i, 3)).holds(s)] for i in range(3)]
    assert sorted(s for o in owners for s in o) == sorted(shops)  # each shop held by exactly one of three
    assert all(len(o) > 40 for o in owners)  # and spread
    assert all(shard_of(s, 3) == i for i, o in enumerate(owners) for s in o)
    listed = Holding(shops=["vip"])
    assert listed.holds("vip") and not listed.holds("shop-1")
    both = Holding((0, 3), ["vip"])
    assert both.holds("vip") and both.holds(owners[0][0]) and not both.holds(owners[1][0])
    assert Holding().holds("anything")


def test_a_shop_outside_the_shard_is_refused_by_ensure(tmp_path):
    other = next(s for s in (f"s{i}" for i in range(50)) if shard_of(s, 2) == 1)
    reg = ModelRegistry(tmp_path, holding=Holding((0, 2)))
    with pytest.raises(ShopNotHeldError, match="shard 1/2"):
        reg.ensure(other, 1, lambda: ([], {}))


@pytest.mark.parametrize("shard", ["1", "2/2", "a/b", "-1/2"])
def test_a_malformed_shard_setting_fails_at_startup(shard):
    with pytest.raises(ValueError, match="KEFU_SHARD"):
        Settings(shard=shard)


def _settings(tmp_path: Path, **extra: Any) -> Settings:
    return Settings(**(common_settings(tmp_path) | {"database_url": f"sqlite:///{tmp_path}/kefu.db"} | extra))


def _served(c: TestClient, shop: str, key: dict[str, str]) -> int | None:
    """The version of the shop's model in this replica's memory, None when none is loaded."""
    info = c.get(f"/v1/shops/{shop}", headers=key).json()
    return info["served_version"] if info["loaded"] else None


def test_a_replica_loads_models_on_first_message_holds_its_shard_and_evicts(tmp_path):
    """Two shops published; a restarted replica without warm-up holds none in memory until a shop's
    first message; one holding shard 0/2 refuses the other shard's shop with 421; under a budget of one
    model, answering the other shop evicts the first, which loads again on its next message."""
    mine = next(s for s in (f"shop-{i}" for i in range(50)) if shard_of(s, 2) == 0)
    theirs = next(s for s in (f"shop-{i}" for i in range(50)) if shard_of(s, 2) == 1)
    keys = {}
    with TestClient(create_app(_settings(tmp_path))) as c:
        for shop in (mine, theirs):
            keys[shop] = new_shop(c, shop)
            publish_and_wait(c, shop, keys[shop], kb_csv())

    with TestClient(create_app(_settings(tmp_path, warm_up=False, shard="0/2"))) as c:
        assert _served(c, mine, keys[mine]) is None  # nothing loaded at startup
        assert say(c, mine, keys[mine], "保修多久")["entry_id"] == "warranty"
        assert _served(c, mine, keys[mine]) == 1
        r = c.post(
            f"/v1/shops/{theirs}/messages",
            headers=keys[theirs],
            json={"conversation_id": "x", "text": "包邮吗"},
        )
        assert r.status_code == 421 and "shard 1/2" in r.json()["detail"]
        assert c.get(f"/v1/shops/{theirs}", headers=keys[theirs]).status_code == 200  # the KB API still works

    with TestClient(create_app(_settings(tmp_path, warm_up=False, model_memory_mb=0.001))) as c:
        assert say(c, mine, keys[mine], "保修多久")["entry_id"] == "warranty"
        assert say(c, theirs, keys[theirs], "包邮吗")["entry_id"] == "shipping-fee"
        assert _served(c, mine, keys[mine]) is None and _served(c, theirs, keys[theirs]) == 1
        gc.collect()
        assert open_files_under(tmp_path, f"/{mine}/") == []  # evicted: its mapped arrays are let go
        assert open_files_under(tmp_path, f"/{theirs}/") != []
        assert say(c, mine, keys[mine], "能开发票吗")["entry_id"] == "invoice"
        metrics = c.get("/metrics").text
        assert "kefu_model_evictions_total" in metrics and "kefu_models_loaded" in metrics


def test_kefu_cascade_turns_the_loaded_models_cascade_on(fast_matcher, tmp_path):
    fast_matcher.save(tmp_path / "shops" / "s1" / "v1")
    snapshot = lambda: pytest.fail("the saved model loads; nothing is rebuilt")  # noqa: E731
    assert ModelRegistry(tmp_path, cascade=True).load("s1", 1, snapshot).use_cascade
    assert not ModelRegistry(tmp_path).load("s1", 1, snapshot).use_cascade
