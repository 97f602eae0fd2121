"""The KB parser's child process (api/kb/parsing.py): where it runs, what comes back, and a publish's
validation done there without losing the KB's problems or surviving a dead child."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from api.kb import repo as kb_repo
from api.kb.parsing import UploadParser, validate_entries
from engine.kb import KBValidationError

ROWS = [
    {"id": "q1", "question": "包邮吗", "answer": "包邮"},
    {"id": "q2", "question": "几天发货", "answer": "48小时内"},
]


@pytest.fixture
def parser() -> Iterator[UploadParser]:
    p = UploadParser()
    yield p
    p.close()


def test_validation_runs_in_another_process_and_problems_come_back_whole(parser: UploadParser) -> None:
    assert parser.call(os.getpid) != os.getpid()
    # the same entries and the same problems as the validator a publish used to run in process
    assert parser.call(validate_entries, ROWS, "shop s") == kb_repo.validated(ROWS, "shop s")
    entries = parser.call(validate_entries, ROWS, "shop s")
    assert [e.id for e in entries] == ["q1", "q2"] and entries[1].answer == "48小时内"
    bad = [*ROWS, {"id": "q1", "question": "", "answer": "x"}]
    with pytest.raises(KBValidationError) as err:
        parser.call(validate_entries, bad, "shop s")
    text = str(err.value) + " ".join(i.message for i in err.value.issues)
    assert "q1" in text or "duplicate" in text.lower()
    assert len(err.value.issues) >= 2  # the duplicate id and the empty question, both named


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


def test_a_publish_validates_in_the_child_and_survives_its_death(tmp_path: Path) -> None:
    from api.service import Service
    from api.settings import Settings
    from tests.test_service import common_settings

    service = Service(
        Settings(database_url=f"sqlite:///{tmp_path}/kefu.db", redis_url=None, **common_settings(tmp_path))
    )
    try:
        assert service.publisher.validate is not None
        assert [e.id for e in service.publisher.validate(ROWS, "shop s")] == ["q1", "q2"]
        pool = service.upload_parser._pool
        assert pool is not None  # the validation above ran in the child
        for pid in list(pool._processes):  # the child dies (out of memory, say)
            os.kill(pid, signal.SIGKILL)
        # the next validation notices, does the work here, and the one after starts a new child
        assert [e.id for e in service.publisher.validate(ROWS, "shop s")] == ["q1", "q2"]
        assert [e.id for e in service.publisher.validate(ROWS, "shop s")] == ["q1", "q2"]
        assert service.upload_parser._pool is not None and service.upload_parser._pool is not pool
    finally:
        service.close()


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
