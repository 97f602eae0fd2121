"""The KB process (api/kb/parsing.py, api/kb/writes.py): where it runs, an upload read and stored there
with its problems coming back whole, and a publish frozen there that survives the process's death."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from api.db.models import Shop
from api.kb import repo as kb_repo
from api.kb.parsing import UploadParser
from engine.kb import KBValidationError, ReadLimits
from tests.procs import running

ROWS = [
    {"id": "q1", "question": "包邮吗", "answer": "包邮"},
    {"id": "q2", "question": "几天发货", "answer": "48小时内"},
]


@pytest.fixture
def parser() -> Iterator[UploadParser]:
    p = UploadParser()
    yield p
    p.close()


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="CPU affinity is Linux only")
def test_the_child_runs_on_the_cpus_it_is_given() -> None:
    cpus = sorted(os.sched_getaffinity(0))
    last = (cpus[-1],)
    p = UploadParser(last)
    try:
        assert p.call(os.sched_getaffinity, 0) == set(last)
        assert os.sched_getaffinity(0) == set(cpus)  # the caller's own CPUs are left as they were
    finally:
        p.close()


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Any]:
    from api.service import Service
    from api.settings import Settings
    from tests.test_service import common_settings

    service = Service(
        Settings(database_url=f"sqlite:///{tmp_path}/kefu.db", redis_url=None, **common_settings(tmp_path))
    )
    with service.db.session() as s:
        s.add(Shop(id="s", name="s", mode="auto", api_key_hash="x" * 64, settings={}))
    yield service
    service.close()


def csv_bytes(rows: list[dict[str, str]]) -> bytes:
    lines = ["id,question,answer"] + [f"{r['id']},{r['question']},{r['answer']}" for r in rows]
    return "\n".join(lines).encode()


def stored_ids(service: Any) -> list[str]:
    with service.db.session() as s:
        return [e["id"] for e in kb_repo.list_entries(s, "s")]


def test_an_upload_is_read_and_stored_in_the_kb_process(service: Any, monkeypatch: Any) -> None:
    import api.kb.writes as writes

    def not_here(*args: Any) -> None:
        raise AssertionError("stored in the serving process")

    # the writer of this process fails: what follows can only have been stored in the KB process
    monkeypatch.setattr(writes, "store_entries", not_here)
    limits = ReadLimits()
    stored = asyncio.run(service.store_upload("s", "kb.csv", ".csv", csv_bytes(ROWS), limits, True))
    assert stored.entries == 2 and stored.frozen is not None and stored.frozen.reused_status is None
    assert stored_ids(service) == ["q1", "q2"]
    assert service.upload_parser.call(os.getpid) != os.getpid()
    with service.db.session() as s:
        row = kb_repo.get_version(s, "s", stored.frozen.version)
        assert row is not None and row.status == "building" and row.entries == 2
    # a file with problems: every one comes back with its row, and what was stored stays as it was
    bad = [*ROWS, {"id": "q1", "question": "", "answer": "x"}]
    with pytest.raises(KBValidationError) as err:
        asyncio.run(service.store_upload("s", "kb.csv", ".csv", csv_bytes(bad), limits, True))
    assert {i.row for i in err.value.issues} == {4} and len(err.value.issues) >= 2
    assert all(i.source == "kb.csv" for i in err.value.issues)
    assert stored_ids(service) == ["q1", "q2"]


def test_a_publish_is_frozen_in_the_kb_process_and_survives_its_death(service: Any, monkeypatch: Any) -> None:
    import api.kb.writes as writes

    queued: list[tuple[str, int]] = []
    service.publisher.enqueue = lambda shop, v: queued.append((shop, v))
    with service.db.session() as s:
        kb_repo.replace_all(s, "s", kb_repo.validated(ROWS, "t"))
    real = writes.freeze
    monkeypatch.setattr(writes, "freeze", lambda *a: (_ for _ in ()).throw(AssertionError("frozen here")))
    first = service.publisher.publish("s")
    assert (first.version, first.reused) == (1, False) and queued == [("s", 1)]
    assert service.publisher.publish("s").reused  # the same KB again: that version, no new build
    monkeypatch.setattr(writes, "freeze", real)
    pool = service.upload_parser._pool
    assert pool is not None
    for pid in list(pool._processes):  # the KB process dies (out of memory, say)
        os.kill(pid, signal.SIGKILL)
    with service.db.session() as s:
        kb_repo.replace_all(
            s, "s", kb_repo.validated([*ROWS, {"id": "q3", "question": "退货", "answer": "7天"}], "t")
        )
    # the next publish notices, freezes here, and the one after starts a new KB process
    assert service.publisher.publish("s").version == 2
    with service.db.session() as s:
        kb_repo.replace_all(s, "s", kb_repo.validated(ROWS[:1], "t"))
    assert service.publisher.publish("s").version == 3
    assert service.upload_parser._pool is not None and service.upload_parser._pool is not pool
    assert queued == [("s", 1), ("s", 2), ("s", 3)]
    # a KB with problems: the publish raises them (from the KB process) and numbers nothing
    with service.db.session() as s:
        kb_repo.replace_all(s, "s", [])
    with pytest.raises(KBValidationError):
        service.publisher.publish("s")
    with service.db.session() as s:
        assert kb_repo.latest_version(s, "s") == 3


def test_start_brings_the_child_up_in_the_background() -> None:
    import time

    p = UploadParser()
    try:
        p.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (p._pool is not None and p._pool._processes):
            time.sleep(0.05)
        assert p._pool is not None and len(p._pool._processes) == 1
        child = next(iter(p._pool._processes))
        assert p.call(os.getpid) == child  # the first call goes to the child already running
    finally:
        p.close()


def test_the_kb_process_is_readied_for_uploads_when_it_starts(service: Any) -> None:
    """Started by the service, the child imports what an upload runs and opens the database's pool
    (a shop's first upload took 0.3-0.5 s more than the next ones before)."""
    import time

    url = service.settings.database_url
    # eval of a string: a builtin, so asking the child imports nothing itself
    ready = f"{url!r} in getattr(__import__('sys').modules.get('api.kb.writes'), '_databases', {{}})"
    service.start_kb_process()
    deadline = time.monotonic() + 60
    parser = service.upload_parser
    while time.monotonic() < deadline and not (parser._pool and parser.call(eval, ready)):
        time.sleep(0.05)
    assert parser.call(eval, ready)
    stored = asyncio.run(service.store_upload("s", "kb.csv", ".csv", csv_bytes(ROWS), ReadLimits(), False))
    assert stored.entries == 2 and stored_ids(service) == ["q1", "q2"]


_ORPHAN = """
import os, sys, time
from api.kb.parsing import UploadParser
p = UploadParser()
print(p.call(os.getpid), flush=True)
time.sleep(600)
"""


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")
def test_the_kb_process_stops_when_its_serving_process_dies() -> None:
    """A serving worker killed (out of memory) left its KB process waiting for work for good, with its
    database connections; it now notices its parent is gone and stops."""
    import subprocess
    import sys
    import time

    root = Path(__file__).resolve().parents[1]
    server = subprocess.Popen([sys.executable, "-c", _ORPHAN], cwd=root, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        child = int(server.stdout.readline())
        assert running(child)
        os.kill(server.pid, signal.SIGKILL)
        server.wait()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and running(child):
            time.sleep(0.1)
        assert not running(child)
    finally:
        if server.poll() is None:
            server.kill()
