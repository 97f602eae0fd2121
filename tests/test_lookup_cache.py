"""What a conversation turn costs the database and Redis (issue 9, part 1): the API key's shop and the
catalog's revision are kept in the process for KEFU_LOOKUP_CACHE_SECONDS and dropped at once by this
process's writes; the rate-limit windows take one Redis round trip.

On SQLite + in-process state and on PostgreSQL + Redis, like the other service tests.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio.connection
from fastapi.testclient import TestClient
from sqlalchemy import event

from api.db.models import Shop
from api.main import create_app
from api.settings import Settings
from api.web.auth import hash_key
from api.web.keycache import ShopKeyCache
from tests.test_service import ADMIN, common_settings, kb_csv, new_shop, publish_and_wait, say, wait_for
from tests.test_service import settings as settings
from tests.test_service_catalog import DEMO_CATALOG, upload


# ---------------------------------------------------------------------------------------- the cache
class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def shop(shop_id: str) -> Shop:
    return Shop(id=shop_id, name=shop_id, api_key_hash=hash_key(f"key-{shop_id}"), mode="auto", settings={})


def test_a_lookup_is_kept_for_the_ttl_and_no_longer() -> None:
    clock = Clock()
    cache = ShopKeyCache(ttl=1.0, clock=clock)
    digest = hash_key("key-a")
    cache.put(digest, shop("a"), cache.generation)
    assert cache.get(digest) is not None and cache.get(hash_key("key-b")) is None
    clock.now += 0.99
    assert cache.get(digest) is not None
    clock.now += 0.02
    assert cache.get(digest) is None and len(cache) == 0


def test_only_a_row_naming_another_active_version_is_dropped_as_stale() -> None:
    cache = ShopKeyCache(ttl=60.0)
    current, other = shop("a"), shop("b")
    current.active_version, other.active_version = 2, 2
    cache.put(hash_key("key-a"), current, cache.generation)
    cache.put(hash_key("key-b"), other, cache.generation)
    assert not cache.invalidate_if_stale("a", 2) and cache.get(hash_key("key-a")) is current
    assert cache.invalidate_if_stale("a", 3) and cache.get(hash_key("key-a")) is None
    assert cache.get(hash_key("key-b")) is other  # another shop's row stays


def test_the_cache_is_keyed_on_digests_never_on_keys() -> None:
    cache = ShopKeyCache(ttl=1.0)
    cache.put(hash_key("kf_secret"), shop("a"), cache.generation)
    assert list(cache._entries) == [hash_key("kf_secret")]
    assert cache.get("kf_secret") is None


def test_the_cache_is_bounded_and_drops_the_oldest_first() -> None:
    clock = Clock()
    cache = ShopKeyCache(ttl=10.0, size=3, clock=clock)
    for i in range(5):
        clock.now += 1
        cache.put(hash_key(f"k{i}"), shop(f"s{i}"), cache.generation)
    assert len(cache) == 3
    assert [cache.get(hash_key(f"k{i}")) is not None for i in range(5)] == [False, False, True, True, True]
    # expired entries go as soon as the next lookup is kept (k2 and k3 read 10 s ago or more, not k4)
    clock.now += 9.5
    cache.put(hash_key("k5"), shop("s5"), cache.generation)
    assert list(cache._entries) == [hash_key("k4"), hash_key("k5")]


def test_invalidating_a_shop_forgets_its_keys_and_a_lookup_under_way() -> None:
    cache = ShopKeyCache(ttl=10.0)
    cache.put(hash_key("key-a"), shop("a"), cache.generation)
    cache.put(hash_key("key-b"), shop("b"), cache.generation)
    before = cache.generation  # a lookup reads the database ...
    cache.invalidate("a")  # ... while a write to the shop commits
    cache.put(hash_key("key-a2"), shop("a"), before)  # what it read may be the old row: not kept
    assert cache.get(hash_key("key-a")) is None and cache.get(hash_key("key-a2")) is None
    assert cache.get(hash_key("key-b")) is not None


def test_a_zero_ttl_keeps_nothing() -> None:
    cache = ShopKeyCache(ttl=0.0)
    cache.put(hash_key("key-a"), shop("a"), cache.generation)
    assert cache.get(hash_key("key-a")) is None and len(cache) == 0


# ---------------------------------------------------------------------------- the service's queries
@contextmanager
def lookups(app: Any) -> Iterator[list[str]]:
    """SQL statements reading the shops or catalog tables, issued by request threads (the service's own
    kefu-* threads, the reconciler among them, read shops on their own schedule)."""
    engine = app.state.service.db.engine
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if threading.current_thread().name.startswith("kefu-"):
            return
        if statement.lstrip().upper().startswith("SELECT") and (
            "FROM shops" in statement or "catalog_skus" in statement
        ):
            seen.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


@pytest.mark.parametrize("ttl", [30.0, 0.0])
def test_a_turn_reads_neither_the_key_nor_the_catalog_from_the_database(
    settings: Settings, ttl: float
) -> None:
    settings = settings.model_copy(update={"lookup_cache_seconds": ttl})
    with TestClient(create_app(settings)) as c:
        key = new_shop(c)
        publish_and_wait(c, "shop-a", key, kb_csv())
        time.sleep(0.5)  # the activation's notice drops the cached shop: let it arrive before the warm-up
        say(c, "shop-a", key, "质保几年", conv="warm")
        with lookups(c.app) as seen:
            for i in range(5):
                say(c, "shop-a", key, "质保几年", conv=f"c{i}")
    if ttl:
        assert seen == []
    else:  # as before the cache: the key's shop and the catalog's revision on every message
        assert len([q for q in seen if "FROM shops" in q]) == 5
        assert len([q for q in seen if "catalog_skus" in q]) == 5


# --------------------------------------------------------------------------- writes are seen at once
def long_ttl(settings: Settings) -> Settings:
    """A TTL far beyond the test: whatever a turn sees after a write here, it did not wait for."""
    return settings.model_copy(update={"lookup_cache_seconds": 60.0})


def test_a_revoked_key_stops_at_once_in_this_process(settings: Settings) -> None:
    with TestClient(create_app(long_ttl(settings))) as c:
        old = new_shop(c)
        assert say(c, "shop-a", old, "你好")["kind"]  # the key's shop is now cached
        r = c.post("/v1/admin/shops/shop-a/api-key", headers={"X-Admin-Token": ADMIN})
        new = {"X-API-Key": r.json()["api_key"]}
        body = {"conversation_id": "c1", "text": "你好"}
        assert c.post("/v1/shops/shop-a/messages", headers=old, json=body).status_code == 401
        assert c.post("/v1/shops/shop-a/assist", headers=old, json=body).status_code == 401
        assert c.post("/v1/shops/shop-a/messages", headers=new, json=body).status_code == 200


def test_a_revoked_key_stops_within_the_ttl_in_another_process(settings: Settings) -> None:
    """Two apps on one database: B learns of A's rotation only from the database, within the TTL; its
    other routes, and the new key, at once (a failed lookup is never kept)."""
    settings = settings.model_copy(update={"lookup_cache_seconds": 1.0})
    with TestClient(create_app(settings)) as a, TestClient(create_app(settings)) as b:
        old = new_shop(a)
        body = {"conversation_id": "c1", "text": "你好"}
        assert b.post("/v1/shops/shop-a/messages", headers=old, json=body).status_code == 200
        new = {
            "X-API-Key": a.post("/v1/admin/shops/shop-a/api-key", headers={"X-Admin-Token": ADMIN}).json()[
                "api_key"
            ]
        }
        rotated = time.monotonic()
        assert b.post("/v1/shops/shop-a/messages", headers=new, json=body).status_code == 200
        assert b.get("/v1/shops/shop-a", headers=old).status_code == 401
        wait_for(
            lambda: b.post("/v1/shops/shop-a/messages", headers=old, json=body).status_code == 401, timeout=10
        )
        assert time.monotonic() - rotated < 1.0 + 2.0  # the TTL, and a loaded machine's slack


def test_mode_and_catalog_changes_reach_the_next_message(settings: Settings) -> None:
    with TestClient(create_app(long_ttl(settings))) as c:
        key = new_shop(c)
        publish_and_wait(c, "shop-a", key, kb_csv())

        def spec(conv: str) -> dict[str, Any]:
            body = {"conversation_id": conv, "text": "这款内存多大", "sku_id": "100087650009"}
            r = c.post("/v1/shops/shop-a/messages", headers=key, json=body)
            assert r.status_code == 200, r.text
            return r.json()

        assert spec("p0")["entry_id"] != "sku:100087650009:内存"  # no catalog yet (and that is cached)
        assert upload(c, "shop-a", key, DEMO_CATALOG).status_code == 200
        assert spec("p1")["entry_id"] == "sku:100087650009:内存"
        assert c.delete("/v1/shops/shop-a/catalog/100087650009", headers=key).status_code == 204
        assert spec("p2")["entry_id"] != "sku:100087650009:内存"

        assert c.put("/v1/shops/shop-a/mode", headers=key, json={"mode": "off"}).status_code == 200
        off = say(c, "shop-a", key, "质保几年", conv="m1")
        assert off["kind"] == "handoff" and off["handoff"]["code"] == "mode_off"
        assert c.put("/v1/shops/shop-a/mode", headers=key, json={"mode": "auto"}).status_code == 200
        assert say(c, "shop-a", key, "质保几年", conv="m2")["entry_id"] == "warranty"


def test_an_activation_in_another_process_reaches_the_cached_shop(settings: Settings) -> None:
    """B keeps the shop's row (no active version yet); A publishes: the notice (Redis) or B's reconciler
    (in-process store) brings B the model, and B's turns use it before the TTL runs out."""
    with TestClient(create_app(long_ttl(settings))) as a, TestClient(create_app(long_ttl(settings))) as b:
        key = new_shop(a)
        assert say(b, "shop-a", key, "质保几年")["handoff"]["code"] == "no_model"
        v = publish_and_wait(a, "shop-a", key, kb_csv())
        wait_for(lambda: say(b, "shop-a", key, "质保几年", conv="c2").get("model_version") == v, timeout=30)


# ----------------------------------------------------------------------------- Redis round trips
@contextmanager
def redis_round_trips(prefix: str) -> Iterator[list[str]]:
    """The first command of every write to a Redis socket that names a key under `prefix`: one write is
    one round trip (a pipeline or a script is one)."""
    sent: list[str] = []
    marker = prefix.encode()
    sync_send = redis.connection.AbstractConnection.send_packed_command
    async_send = redis.asyncio.connection.AbstractConnection.send_packed_command

    def note(command: Any) -> None:
        packed = command if isinstance(command, bytes | bytearray) else b"".join(command)
        if marker in packed:
            sent.append(bytes(packed).split(b"\r\n")[2].decode().upper())

    def sync_wrapper(self: Any, command: Any, check_health: bool = True) -> None:
        note(command)
        sync_send(self, command, check_health)

    async def async_wrapper(self: Any, command: Any, check_health: bool = True) -> None:
        note(command)
        await async_send(self, command, check_health)

    redis.connection.AbstractConnection.send_packed_command = sync_wrapper  # type: ignore[method-assign]
    redis.asyncio.connection.AbstractConnection.send_packed_command = async_wrapper  # type: ignore[method-assign]
    try:
        yield sent
    finally:
        redis.connection.AbstractConnection.send_packed_command = sync_send  # type: ignore[method-assign]
        redis.asyncio.connection.AbstractConnection.send_packed_command = async_send  # type: ignore[method-assign]


def test_a_message_takes_three_redis_round_trips(pg_database: str, redis_url: str, tmp_path: Path) -> None:
    """The rate-limit windows (client and shop) in one script call, then the conversation's GET and SET:
    the policy step needs the state in between, and the step's result is what is saved."""
    prefix = f"kefu-t-{uuid.uuid4().hex[:8]}:"
    settings = Settings(
        database_url=pg_database, redis_url=redis_url, redis_prefix=prefix, **common_settings(tmp_path)
    )
    with TestClient(create_app(settings)) as c:
        key = new_shop(c)
        publish_and_wait(c, "shop-a", key, kb_csv())
        say(c, "shop-a", key, "质保几年", conv="warm")  # loads the limit script into Redis
        with redis_round_trips(prefix) as sent:
            for i in range(4):
                say(c, "shop-a", key, "质保几年", conv=f"c{i}")
    assert sent == ["EVALSHA", "GET", "SET"] * 4


# ---------------------------------------------------------------------------------- worker threads
@contextmanager
def thread_hops(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The functions handed to a worker thread (anyio.to_thread.run_sync, which Starlette's and FastAPI's
    run_in_threadpool call) while the block runs."""
    import functools

    import anyio.to_thread

    seen: list[str] = []
    real = anyio.to_thread.run_sync

    async def counting(func: Any, *args: Any, **kwargs: Any) -> Any:
        inner = func.func if isinstance(func, functools.partial) else func
        seen.append(getattr(inner, "__qualname__", repr(inner)))
        return await real(func, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(anyio.to_thread, "run_sync", counting)
        yield seen


def test_a_turn_takes_one_worker_thread_hop(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each hop hands the interpreter lock between the loop's thread and a worker twice; a plain `def`
    route with a response model took two (the route, then FastAPI's check of its reply)."""
    with TestClient(create_app(long_ttl(settings))) as c:
        key = new_shop(c)
        publish_and_wait(c, "shop-a", key, kb_csv())
        time.sleep(0.5)  # the activation's notice drops the cached shop: let it arrive before the warm-up
        say(c, "shop-a", key, "质保几年", conv="warm")
        with thread_hops(monkeypatch) as hops:
            for i in range(3):
                reply = say(c, "shop-a", key, "质保几年", conv=f"c{i}")
                assert reply["kind"] == "answer" and reply["entry_id"] == "warranty"
        assert hops == ["handle_message"] * 3
        body = {"conversation_id": "c9", "text": "质保几年"}
        with thread_hops(monkeypatch) as hops:
            r = c.post("/v1/shops/shop-a/assist", headers=key, json=body)
        assert r.status_code == 200 and r.json()["suggestions"][0]["entry_id"] == "warranty"
        assert hops == ["_assist"]
