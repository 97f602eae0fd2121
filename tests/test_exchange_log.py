"""The exchange log off the reply path (api/store/exchange_log.py) and its ids (api/db/ids.py), on SQLite and
PostgreSQL: batches, nothing lost at close, a slow or failing database bounded and counted, ids unique
across processes, and readers that see the rows their process has not written yet."""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY
from sqlalchemy import event, func, select, text
from sqlalchemy.exc import DBAPIError

from api.db import ids
from api.db.ids import NODE_BITS, NODE_MASK, SEQ_BITS, IdGenerator
from api.db.migrate import upgrade
from api.db.models import Exchange, Shop
from api.db.session import Database
from api.main import create_app
from api.settings import Settings
from api.store.exchange_log import ExchangeLog, claim_node
from api.store.exchanges import recent

ADMIN = "admin-secret-token"


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    database = Database(db_url)
    upgrade(database.engine)
    with database.session() as s:
        s.add(Shop(id="s1", api_key_hash="h"))
    yield database
    database.dispose()


def fields(n: int = 0, shop: str = "s1") -> dict[str, Any]:
    return {
        "shop": shop,
        "conversation_id": f"c{n}",
        "channel": "api",
        "text": f"第{n}个问题 13812345678",
        "decision": "answer",
        "entry_id": "e1",
        "confidence": 0.9,
        "reason": "confident",
        "model_version": 1,
        "latency_ms": 1.5,
    }


def stored(db: Database) -> list[int]:
    with db.session() as s:
        return list(s.scalars(select(Exchange.id).order_by(Exchange.id)))


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def wait_for(predicate: Any, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


def count_inserts(db: Database) -> list[int]:
    """Row counts of each INSERT INTO exchanges the engine sends (an executemany is one)."""
    seen: list[int] = []

    @event.listens_for(db.engine, "before_cursor_execute")
    def _count(conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO EXCHANGES"):
            seen.append(len(params) if many else 1)

    return seen


# ---------------------------------------------------------------- batching, close


def test_rows_are_written_in_batches_of_the_configured_size(db: Database) -> None:
    inserts = count_inserts(db)
    batches = metric("kefu_exchange_log_batches_total")
    written = metric("kefu_exchange_log_rows_total", path="batch")
    log = ExchangeLog(db, flush_ms=3_600_000, batch=50)  # only a full batch (or a reader) triggers a write
    try:
        got = [log.log(**fields(i)) for i in range(120)]
        wait_for(lambda: log.pending() == 20)
        assert inserts == [50, 50] and len(stored(db)) == 100
        assert log.sync() and log.pending() == 0
        assert inserts == [50, 50, 20]
        assert stored(db) == sorted(got) and len(set(got)) == 120
        assert metric("kefu_exchange_log_batches_total") - batches == 3
        assert metric("kefu_exchange_log_rows_total", path="batch") - written == 120
    finally:
        log.close()
    with db.session() as s:
        row = s.get(Exchange, got[0])
        assert row is not None and row.text_masked == "第0个问题 [手机号]"  # masked before it was buffered


def test_the_interval_writes_what_waits_without_a_reader(db: Database) -> None:
    inserts = count_inserts(db)
    log = ExchangeLog(db, flush_ms=50, batch=500)
    try:
        got = [log.log(**fields(i)) for i in range(7)]
        wait_for(lambda: len(stored(db)) == 7)
        assert sum(inserts) == 7 and len(inserts) <= 2  # one batch, two if the interval fell between
        assert stored(db) == got
    finally:
        log.close()


def test_close_writes_every_buffered_row_then_writes_directly(db: Database) -> None:
    log = ExchangeLog(db, flush_ms=3_600_000, batch=10_000)
    got = [log.log(**fields(i)) for i in range(37)]
    assert stored(db) == []
    assert log.close() == 0
    assert stored(db) == got
    direct = metric("kefu_exchange_log_rows_total", path="direct")
    late = log.log(**fields(99))  # after close (a request finishing during shutdown): written at once
    assert stored(db) == [*got, late]
    assert metric("kefu_exchange_log_rows_total", path="direct") - direct == 1


def test_flush_ms_0_writes_each_row_before_returning(db: Database) -> None:
    log = ExchangeLog(db, flush_ms=0)
    first = log.log(**fields(1))
    assert stored(db) == [first]
    second = log.log(**fields(2))
    assert stored(db) == [first, second] and log.pending() == 0


# ---------------------------------------------------------------- a slow or failing database


def _hold_write_lock(db: Database, url: str) -> tuple[Any, Any]:
    """Another client holding the lock every insert into exchanges waits for (a slow database)."""
    if db.engine.dialect.name == "sqlite":
        conn = sqlite3.connect(url.split("///", 1)[1], isolation_level=None, check_same_thread=False)
        conn.execute("BEGIN IMMEDIATE")  # the database's write lock: writers wait (busy_timeout)
        return conn, lambda: (conn.execute("ROLLBACK"), conn.close())
    import psycopg

    pg = psycopg.connect(db.engine.url.set(drivername="postgresql").render_as_string(hide_password=False))
    pg.execute("LOCK TABLE exchanges IN ACCESS EXCLUSIVE MODE")
    return pg, lambda: (pg.rollback(), pg.close())


def test_a_slow_database_bounds_the_buffer_and_the_overflow_is_written_not_dropped(
    db: Database, db_url: str
) -> None:
    overflow = metric("kefu_exchange_log_rows_total", path="overflow")
    log = ExchangeLog(db, flush_ms=10, batch=5, capacity=20)
    _, release = _hold_write_lock(db, db_url)
    try:
        got = [log.log(**fields(i)) for i in range(20)]  # nothing can be written: the buffer fills
        assert log.pending() == 20
        assert metric("kefu_exchange_log_pending") == 20
        late: list[int] = []
        # the 21st reply finds the buffer full: it writes its own row, waiting for the database
        t = threading.Thread(target=lambda: late.append(log.log(**fields(20))))
        t.start()
        assert log.pending() == 20  # never more than the bound
    finally:
        release()
    t.join(60)
    assert late and metric("kefu_exchange_log_rows_total", path="overflow") - overflow == 1
    assert log.sync(timeout=60)
    assert stored(db) == sorted([*got, *late])
    assert log.close() == 0


def _rename(db: Database, old: str, new: str) -> None:
    with db.engine.begin() as conn:
        conn.execute(text(f"ALTER TABLE {old} RENAME TO {new}"))


def test_failed_batches_are_kept_retried_and_counted(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("api.store.exchange_log.FIRST_BACKOFF", 0.05)
    monkeypatch.setattr("api.store.exchange_log.MAX_BACKOFF", 0.2)
    failures = metric("kefu_exchange_log_flush_failures_total")
    log = ExchangeLog(db, flush_ms=10, batch=10, capacity=1000)
    _rename(db, "exchanges", "exchanges_away")  # every insert fails: the table is not there
    try:
        got = [log.log(**fields(i)) for i in range(25)]
        wait_for(lambda: metric("kefu_exchange_log_flush_failures_total") - failures >= 2)
        assert log.pending() == 25  # nothing dropped
        assert not log.sync(timeout=0.1)  # a reader does not wait forever: it reads without them
    finally:
        _rename(db, "exchanges_away", "exchanges")
    assert log.sync(timeout=60)
    assert stored(db) == got
    assert log.close() == 0


def test_close_reports_what_a_database_down_for_good_kept_from_being_written(db: Database) -> None:
    log = ExchangeLog(db, flush_ms=3_600_000, batch=100)
    _rename(db, "exchanges", "exchanges_away")
    try:
        for i in range(3):
            log.log(**fields(i))
        assert log.close(timeout=1) == 3
        assert log.pending() == 0
    finally:
        _rename(db, "exchanges_away", "exchanges")


def test_a_refused_row_is_dropped_alone_and_a_row_already_there_is_not_written_twice(db: Database) -> None:
    rejected = metric("kefu_exchange_log_rejected_total")
    log = ExchangeLog(db, flush_ms=3_600_000, batch=1000)
    try:
        good = log.log(**fields(1))
        orphan = log.log(**fields(2, shop="no-such-shop"))  # the shop was deleted meanwhile (foreign key)
        twice = log.log(**fields(3))
        with db.session() as s:  # as if a batch's commit went through but its reply was lost
            s.add(Exchange(id=twice, shop_id="s1", conversation_id="c3", text_masked="x", decision="answer"))
        last = log.log(**fields(4))
        assert log.sync()
        assert stored(db) == [good, twice, last] and orphan not in stored(db)
        assert metric("kefu_exchange_log_rejected_total") - rejected == 1
    finally:
        log.close()


# ---------------------------------------------------------------- ids


def test_ids_increase_when_the_clock_steps_back_or_a_millisecond_runs_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [(ids.EPOCH_MS + 1_000_000) * 1_000_000]
    monkeypatch.setattr(ids.time, "time_ns", lambda: now[0])
    gen = IdGenerator(node=5)
    first = [gen.next_id() for _ in range(600)]  # 600 ids in one millisecond: 256 per millisecond
    assert first == sorted(set(first))
    assert {i >> (NODE_BITS + SEQ_BITS) for i in first} == {1_000_000, 1_000_001, 1_000_002}
    now[0] -= 5_000 * 1_000_000  # the wall clock steps back 5 s
    after = gen.next_id()
    assert after > first[-1]
    gen.set_node(9)
    assert gen.next_id() > after
    assert all((i >> SEQ_BITS) & NODE_MASK == 5 for i in first)
    assert first[-1] < 2**63


def _log_from_process(url: str, n: int, barrier: Any, out: Any) -> None:
    """One replica's writer: claims its node, logs n rows while the others do, returns its ids."""
    db = Database(url)
    node = claim_node(db)
    log = ExchangeLog(db, flush_ms=20, batch=50)
    barrier.wait(timeout=60)
    got = [log.log(**fields(i)) for i in range(n)]
    assert log.close() == 0
    db.dispose()
    out.put((node, got))


def test_ids_are_unique_and_time_ordered_across_processes(db: Database, db_url: str) -> None:
    ctx = multiprocessing.get_context("spawn")
    barrier, out = ctx.Barrier(2), ctx.Queue()
    n = 400
    procs = [ctx.Process(target=_log_from_process, args=(db_url, n, barrier, out)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    (node_a, ids_a), (node_b, ids_b) = results
    assert node_a != node_b  # claimed from the database: no two live processes share one
    assert ids_a == sorted(ids_a) and ids_b == sorted(ids_b) and len(set(ids_a + ids_b)) == 2 * n
    assert {(i >> SEQ_BITS) & NODE_MASK for i in ids_a} == {node_a & NODE_MASK}
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(Exchange)) == 2 * n
    # an id made later, in another process, sorts after all of them: newest first is ORDER BY id DESC
    claim_node(db)
    later = ExchangeLog(db, flush_ms=0).log(**fields(0))
    assert later > max(ids_a + ids_b)


def test_ids_past_32_bits_are_stored_and_refused_past_63(db: Database) -> None:
    log = ExchangeLog(db, flush_ms=0)
    exchange_id = log.log(**fields(0))
    assert exchange_id > 2**31
    with db.session() as s:
        s.execute(
            text(
                "INSERT INTO feedback (shop_id, exchange_id, kind, out_of_scope, created_at) "
                "VALUES ('s1', :id, 'up', false, CURRENT_TIMESTAMP)"
            ),
            {"id": exchange_id},
        )
        assert s.scalar(text("SELECT exchange_id FROM feedback")) == exchange_id


# ---------------------------------------------------------------- the service: readers see their writes


@pytest.fixture
def client(db_url: str, tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(
        database_url=db_url,
        data_dir=tmp_path / "data",
        admin_token=ADMIN,
        kb_path=None,
        model_path=tmp_path / "no-model",
        evaluation_pull_interval=0,
        exchange_log_flush_ms=60_000,  # in a test: written only when a reader asks, or at shutdown
    )
    with TestClient(create_app(settings)) as c:
        yield c


def _shop(client: TestClient) -> dict[str, str]:
    r = client.post("/v1/admin/shops", json={"id": "shop-a", "name": "店"}, headers={"X-Admin-Token": ADMIN})
    assert r.status_code == 201, r.text
    return {"X-API-Key": r.json()["api_key"]}


def _say(client: TestClient, key: dict[str, str], text: str) -> int:
    r = client.post("/v1/shops/shop-a/messages", headers=key, json={"conversation_id": "c1", "text": text})
    assert r.status_code == 200, r.text
    return int(r.json()["exchange_id"])


def test_feedback_and_the_log_see_a_reply_not_yet_written(client: TestClient, db_url: str) -> None:
    key = _shop(client)
    first = _say(client, key, "有发票吗")  # no KB yet: a handoff, logged all the same
    service = client.app.state.service  # type: ignore[attr-defined]
    assert service.exchange_log.pending() == 1 and first > 2**31
    r = client.post("/v1/shops/shop-a/feedback", headers=key, json={"exchange_id": first, "kind": "down"})
    assert r.status_code == 201, r.text
    assert r.json()["exchange_id"] == first
    second = _say(client, key, "包邮吗")
    listed = client.get("/v1/shops/shop-a/exchanges", headers=key).json()
    assert [e["id"] for e in listed] == [second, first]  # newest first, by id
    assert (
        client.post(
            "/v1/shops/shop-a/feedback", headers=key, json={"exchange_id": 2**63, "kind": "up"}
        ).status_code
        == 422
    )


def test_the_service_writes_its_buffer_when_it_stops(db_url: str, tmp_path: Path) -> None:
    settings = Settings(
        database_url=db_url,
        data_dir=tmp_path / "data",
        admin_token=ADMIN,
        kb_path=None,
        model_path=tmp_path / "no-model",
        evaluation_pull_interval=0,
        exchange_log_flush_ms=60_000,
    )
    with TestClient(create_app(settings)) as c:
        key = _shop(c)
        sent = [_say(c, key, f"问题{i}") for i in range(12)]
        assert c.app.state.service.exchange_log.pending() == 12  # type: ignore[attr-defined]
    db = Database(db_url)
    try:
        assert stored(db) == sent
    finally:
        db.dispose()


def test_a_full_buffer_is_not_an_error_for_the_reply(db: Database) -> None:
    """With capacity 1 and no writer progress, each further reply writes its own row."""
    log = ExchangeLog(db, flush_ms=3_600_000, batch=1000, capacity=1)
    try:
        got = [log.log(**fields(i)) for i in range(4)]
        assert log.pending() == 1 and len(stored(db)) == 3
        assert log.sync() and stored(db) == sorted(got)
    finally:
        log.close()


def test_a_row_the_database_cannot_take_fails_the_reply_that_writes_it(db: Database) -> None:
    log = ExchangeLog(db, flush_ms=0)
    with pytest.raises(DBAPIError):
        log.log(**fields(0, shop="no-such-shop"))


def test_0012_widens_the_ids_and_keeps_the_old_exchanges_before_the_new(db_url: str) -> None:
    database = Database(db_url)
    try:
        upgrade(database.engine, "0011")
        with database.engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO shops (id, name, api_key_hash, mode, settings, created_at) "
                    "VALUES ('s1', 'old shop', 'h', 'auto', '{}', CURRENT_TIMESTAMP)"
                )
            )
            conn.execute(
                text(
                    "INSERT INTO exchanges (shop_id, conversation_id, channel, text_masked, decision, "
                    "confidence, reason, latency_ms, created_at) "
                    "VALUES ('s1', 'c', 'api', '旧的', 'answer', 0.5, '', 1, CURRENT_TIMESTAMP)"
                )
            )
            old = conn.execute(text("SELECT id FROM exchanges")).scalar_one()
            conn.execute(
                text(
                    "INSERT INTO feedback (shop_id, exchange_id, kind, out_of_scope, created_at) "
                    "VALUES ('s1', :id, 'up', false, CURRENT_TIMESTAMP)"
                ),
                {"id": old},
            )
        upgrade(database.engine)
        if database.engine.dialect.name == "postgresql":
            columns = "('exchanges', 'id'), ('feedback', 'exchange_id')"
            query = (
                "SELECT table_name || '.' || column_name, data_type FROM information_schema.columns "
                f"WHERE (table_name, column_name) IN ({columns})"
            )
            with database.engine.connect() as conn:
                types = dict(conn.execute(text(query)).all())
            assert types == {"exchanges.id": "bigint", "feedback.exchange_id": "bigint"}
        new = ExchangeLog(database, flush_ms=0).log(**fields(1))
        assert new > old
        with database.session() as s:
            assert [e.id for e in recent(s, "s1")] == [new, old]
            assert s.scalar(text("SELECT exchange_id FROM feedback")) == old
    finally:
        database.dispose()


def test_old_node_claims_are_pruned(db: Database) -> None:
    """Each process start adds a row to id_writers; only the last `keep` can matter, older ones go."""
    from api.db.models import IdWriter

    nodes = [claim_node(db, keep=3) for _ in range(6)]
    assert nodes == sorted(set(nodes))
    with db.session() as s:
        assert s.scalars(select(IdWriter.id).order_by(IdWriter.id)).all() == nodes[-3:]
