"""Alembic migrations on both backends: a database with data at an old revision upgrades in place."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, text

from api.db.migrate import alembic_config, upgrade
from api.db.models import Base

ROOT = Path(__file__).resolve().parent.parent


def test_upgrade_keeps_rows_and_reaches_the_models(db_url: str) -> None:
    engine = create_engine(db_url)
    try:
        upgrade(engine, "0001")
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO shops (id, name, api_key_hash, mode, settings, created_at) "
                    "VALUES ('s1', 'old shop', 'h', 'auto', '{}', CURRENT_TIMESTAMP)"
                )
            )
            conn.execute(
                text(
                    "INSERT INTO kb_versions (shop_id, version, status, kb_hash, entries, snapshot, metrics, "
                    "created_at) VALUES ('s1', 1, 'ready', 'x', 0, '[]', '{}', CURRENT_TIMESTAMP)"
                )
            )
        upgrade(engine)
        upgrade(engine)  # idempotent: a second replica starting finds nothing to do
        with engine.connect() as conn:
            options = conn.execute(text("SELECT options FROM kb_versions WHERE shop_id = 's1'")).scalar_one()
            name = conn.execute(text("SELECT name FROM shops WHERE id = 's1'")).scalar_one()
        assert name == "old shop"
        assert options in ({}, "{}")
        insp = inspect(engine)
        for table in Base.metadata.sorted_tables:
            assert {c["name"] for c in insp.get_columns(table.name)} == {c.name for c in table.columns}
    finally:
        engine.dispose()


def test_jd_message_ids_become_digests(db_url: str) -> None:
    """0003: stored ids are replaced by their SHA-256 and stored replies lose their copy of the id."""
    import hashlib
    import json

    engine = create_engine(db_url)
    try:
        upgrade(engine, "0002")
        reply = {"code": 0, "message_id": "order-13812345678", "reply": {"kind": "answer"}}
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO shops (id, name, api_key_hash, mode, settings, created_at) "
                    "VALUES ('s1', 'old shop', 'h', 'auto', '{}', CURRENT_TIMESTAMP)"
                )
            )
            conn.execute(
                text(
                    "INSERT INTO jd_messages (shop_id, message_id, reply, created_at) VALUES "
                    "('s1', 'order-13812345678', :reply, CURRENT_TIMESTAMP), "
                    "('s1', 'in-work', NULL, CURRENT_TIMESTAMP)"
                ),
                {"reply": json.dumps(reply)},
            )
        upgrade(engine)
        with engine.connect() as conn:
            rows = dict(conn.execute(text("SELECT message_digest, reply FROM jd_messages")).all())
    finally:
        engine.dispose()
    digest = hashlib.sha256(b"order-13812345678").hexdigest()
    stored = rows[digest]
    stored = json.loads(stored) if isinstance(stored, str) else stored
    assert stored == {"code": 0, "reply": {"kind": "answer"}}
    assert rows[hashlib.sha256(b"in-work").hexdigest()] is None
    assert "13812345678" not in repr(rows)


def test_existing_versions_are_ordered_by_their_number(db_url: str) -> None:
    """0013: request_seq (the order the merchant asked for versions) starts as the version number, the
    order finished builds were activated in until then."""
    engine = create_engine(db_url)
    try:
        upgrade(engine, "0012")
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO shops (id, name, api_key_hash, mode, settings, created_at) "
                    "VALUES ('s1', 'old shop', 'h', 'auto', '{}', CURRENT_TIMESTAMP)"
                )
            )
            for version, status in ((1, "ready"), (2, "ready"), (3, "building")):
                conn.execute(
                    text(
                        "INSERT INTO kb_versions (shop_id, version, status, kb_hash, entries, snapshot, "
                        "options, metrics, created_at, progress, attempts) VALUES ('s1', :v, :status, 'x', "
                        "0, '[]', '{}', '{}', CURRENT_TIMESTAMP, 0, 0)"
                    ),
                    {"v": version, "status": status},
                )
        upgrade(engine)
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT version, request_seq FROM kb_versions ORDER BY version")).all()
        assert [tuple(r) for r in rows] == [(1, 1), (2, 2), (3, 3)]
    finally:
        engine.dispose()


# ---------------------------------------------------------------- several processes starting at once


def _upgrade_in_process(url: str, barrier: Any) -> None:
    """One process (as one uvicorn worker) running the upgrade: starts with the others, as workers do."""
    engine = create_engine(url)
    try:
        barrier.wait(timeout=60)
        upgrade(engine)
    finally:
        engine.dispose()


def _schema_matches_models(url: str) -> None:
    engine = create_engine(url)
    try:
        insp = inspect(engine)
        for table in Base.metadata.sorted_tables:
            assert {c["name"] for c in insp.get_columns(table.name)} == {c.name for c in table.columns}
        with engine.connect() as conn:
            head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()
            assert conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all() == [head]
    finally:
        engine.dispose()


def test_concurrent_upgrades_of_a_new_database_all_succeed(db_url: str) -> None:
    """Was `table shops already exists` on SQLite for all but one of the processes upgrading at once."""
    ctx = multiprocessing.get_context("spawn")
    n = 4
    barrier = ctx.Barrier(n)
    procs = [ctx.Process(target=_upgrade_in_process, args=(db_url, barrier)) for _ in range(n)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * n
    _schema_matches_models(db_url)


def _free_socket_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_two_workers(tmp: Path, model: Path) -> tuple[subprocess.Popen[bytes], Path, int]:
    port = _free_socket_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEFU_")}
    env.update(
        KEFU_DATABASE_URL=f"sqlite:///{tmp}/kefu.db",
        KEFU_DATA_DIR=str(tmp / "data"),
        KEFU_MODEL_PATH=str(model),
        KEFU_KB_PATH=str(tmp / "no-kb.csv"),  # never read: the model is there
        KEFU_DENSE="false",
        KEFU_EVALUATION_PULL_INTERVAL="0",
    )
    log = tmp / "uvicorn.log"
    cmd = [sys.executable, "-m", "uvicorn", "api.main:app", "--workers", "2", "--port", str(port)]
    cmd += ["--host", "127.0.0.1", "--no-access-log"]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    return proc, log, port


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(20)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)


def test_two_uvicorn_workers_start_on_a_new_sqlite_database(tmp_path: Path, fast_matcher: Any) -> None:
    """Was: about half the starts lost a worker to `table shops already exists` (both migrated at once)."""
    model = tmp_path / "model"
    fast_matcher.save(model)
    for attempt in range(3):
        run = tmp_path / f"run{attempt}"
        run.mkdir()
        proc, log, port = _start_two_workers(run, model)
        try:
            deadline = time.monotonic() + 90
            while True:
                text_ = log.read_text("utf-8", errors="replace")
                assert proc.poll() is None, f"uvicorn exited with {proc.returncode}\n{text_}"
                if text_.count("Application startup complete") >= 2:
                    break
                assert "Traceback" not in text_, text_
                assert time.monotonic() < deadline, f"both workers did not start in time\n{text_}"
                time.sleep(0.2)
            r = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10)
            assert r.status_code == 200 and r.json()["model_loaded"], r.text
        finally:
            _stop(proc)
        text_ = log.read_text("utf-8", errors="replace")
        assert "already exists" not in text_ and "Traceback" not in text_, text_
        _schema_matches_models(f"sqlite:///{run}/kefu.db")
