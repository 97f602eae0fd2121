"""KB builds on the task queue (api/kb/builds.py): real huey queues (a SQLite file, and Redis when
KEFU_TEST_REDIS_URL answers), real child processes, a real `kefu worker` subprocess."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import inspect, update

from api.db.models import KBVersion, utcnow
from api.kb import repo as kb_repo
from api.kb.build_child import start_lowered
from api.main import create_app
from api.settings import Settings
from tests.conftest import ROOT
from tests.test_service import ADMIN, kb_csv, new_shop, wait_for

BUILD_STAGES = {"tokenize", "embed", "classifier", "calibrate", "follow-ups", "done", "evaluate", "save"}


def _settings(tmp_path: Path, **extra: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "database_url": f"sqlite:///{tmp_path}/kefu.db",
        "admin_token": ADMIN,
        "secret_key": "ZmRhc2RmYXNkZmFzZGZhc2RmYXNkZmFzZGZhc2RmYXM=",
        "dense": False,
        "kb_path": None,
        "model_path": tmp_path / "no-model",
        "evaluation_pull_interval": 0,
        "rate_limit_shop": None,
        "rate_limit_client": None,
        "build_retry_delay": 0.2,
    }
    return Settings(**(values | extra))


@pytest.fixture(params=["sqlite", "redis"])
def queue_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """The embedded default (a SQLite queue file under data_dir, in-process store), or the queue and the
    store on Redis, as replicas share them."""
    if request.param == "sqlite":
        return _settings(tmp_path)
    redis = request.getfixturevalue("redis_url")
    return _settings(
        tmp_path, queue_url=redis, redis_url=redis, redis_prefix=f"kefu-t-{uuid.uuid4().hex[:8]}:"
    )


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return _settings(tmp_path)


def version_row(client: TestClient, version: int = 1, shop: str = "shop-a") -> dict[str, Any]:
    service = client.app.state.service  # type: ignore[attr-defined]
    with service.db.session() as s:
        row = kb_repo.get_version(s, shop, version)
        assert row is not None
        return {c: getattr(row, c) for c in ("status", "stage", "progress", "attempts", "worker", "error")}


def served(client: TestClient, key: dict[str, str], shop: str = "shop-a") -> int | None:
    return client.get(f"/v1/shops/{shop}", headers=key).json()["served_version"]


def upload_and_publish(client: TestClient, key: dict[str, str]) -> int:
    r = client.post("/v1/shops/shop-a/kb?publish=true", headers=key, files={"file": ("kb.csv", kb_csv())})
    assert r.status_code == 200, r.text
    return int(r.json()["version"])


def child_pid(client: TestClient, attempt: int) -> int:
    """The pid of the build process of `attempt`, once it started (recorded as host:pid)."""

    def started() -> int | None:
        row = version_row(client)
        if row["attempts"] == attempt and row["worker"] and row["stage"] not in ("queued",):
            pid = int(row["worker"].rsplit(":", 1)[1])
            return pid if pid != os.getpid() else None
        return None

    return int(wait_for(started, timeout=60))


def test_a_separate_worker_process_builds_the_publish(queue_settings: Settings) -> None:
    """KEFU_BUILD_IN_PROCESS=false: the API only enqueues; `kefu worker --queue builds` (a real subprocess
    on the same database and queue) builds, and the API serves the result."""
    settings = queue_settings
    settings.build_in_process = False
    env = {
        **os.environ,
        "KEFU_DATABASE_URL": settings.database_url,
        "KEFU_DATA_DIR": str(settings.data_dir),
        "KEFU_REDIS_PREFIX": settings.redis_prefix,
        "KEFU_DENSE": "false",
        "KEFU_EVALUATION_PULL_INTERVAL": "0",
        "KEFU_BUILD_IN_PROCESS": "false",  # the worker consumes anyway: that is what it is for
    }
    for name, value in (("KEFU_QUEUE_URL", settings.queue_url), ("KEFU_REDIS_URL", settings.redis_url)):
        if value:
            env[name] = value
        else:
            env.pop(name, None)
    with TestClient(create_app(settings)) as c:
        key = new_shop(c)
        v = upload_and_publish(c, key)
        time.sleep(1.5)
        row = version_row(c, v)
        assert (row["status"], row["stage"], row["attempts"]) == ("building", "queued", 0)  # nobody consumes
        worker = subprocess.Popen(
            [sys.executable, "-m", "training.cli", "worker", "--queue", "builds"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            wait_for(lambda: served(c, key) == v or worker.poll() is not None, timeout=120)
            assert served(c, key) == v
        finally:
            worker.send_signal(signal.SIGINT)
            _, err = worker.communicate(timeout=30)
        assert worker.returncode == 0, err[-3000:]
        assert f"building version {v} of shop shop-a (attempt 1)" in err
        body = c.get(f"/v1/shops/shop-a/kb/versions/{v}", headers=key).json()
        assert (body["status"], body["active"], body["attempts"], body["progress"]) == ("ready", True, 1, 1.0)
        reply = c.post(
            "/v1/shops/shop-a/messages", headers=key, json={"conversation_id": "w", "text": "质保几年"}
        )
        assert reply.json()["entry_id"] == "warranty"


def test_progress_is_visible_through_the_api_while_building(queue_settings: Settings) -> None:
    with TestClient(create_app(queue_settings)) as c:
        key = new_shop(c)
        v = upload_and_publish(c, key)
        seen: list[tuple[str, str | None, float, int]] = []
        deadline = time.monotonic() + 120
        while True:
            b = c.get(f"/v1/shops/shop-a/kb/versions/{v}", headers=key).json()
            seen.append((b["status"], b["stage"], b["progress"], b["attempts"]))
            if b["status"] != "building":
                break
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert seen[-1][:3] == ("ready", "save", 1.0)
        building = [s for s in seen if s[0] == "building"]
        stages = [stage for _, stage, _, _ in building if stage in BUILD_STAGES]
        assert len(set(stages)) >= 2, seen  # seen moving while it built
        assert all(0.0 <= p < 1.0 for _, _, p, _ in building)
        service = c.app.state.service  # type: ignore[attr-defined]
        assert service.build_progress("shop-a", v)["stage"] == "save"  # the console's helper


def test_a_build_over_the_time_limit_is_killed_and_reported_failed(settings: Settings) -> None:
    settings.build_time_limit = 0.05  # less than any build takes
    with TestClient(create_app(settings)) as c:
        key = new_shop(c)
        v = upload_and_publish(c, key)
        wait_for(lambda: version_row(c, v)["status"] != "building", timeout=60)
        row = version_row(c, v)
        assert (row["status"], row["error"], row["attempts"]) == (
            "failed",
            "build exceeded the time limit of 0.05 s",
            1,  # not retried
        )
        # the child was killed and reaped (the upload parser has a process of its own)
        assert [p for p in multiprocessing.active_children() if p.name.startswith("kefu-build")] == []
        assert served(c, key) is None


def test_a_build_whose_process_dies_is_retried(settings: Settings) -> None:
    """The child killed (as by the OOM killer): the transient case, built again after the retry delay."""
    with TestClient(create_app(settings)) as c:
        key = new_shop(c)
        v = upload_and_publish(c, key)
        os.kill(child_pid(c, 1), signal.SIGKILL)
        wait_for(lambda: served(c, key) == v, timeout=120)
        row = version_row(c, v)
        assert (row["status"], row["attempts"], row["error"]) == ("ready", 2, None)


def test_a_build_that_keeps_dying_is_reported_failed_after_its_retries(settings: Settings) -> None:
    settings.build_retries = 1
    with TestClient(create_app(settings)) as c:
        key = new_shop(c)
        v = upload_and_publish(c, key)
        os.kill(child_pid(c, 1), signal.SIGKILL)
        wait_for(lambda: version_row(c, v)["attempts"] == 2, timeout=60)
        assert "attempt 1 failed: the build process ended without a result (killed by SIGKILL)" in str(
            c.get(f"/v1/shops/shop-a/kb/versions/{v}", headers=key).json()["error"]
        )
        os.kill(child_pid(c, 2), signal.SIGKILL)
        wait_for(lambda: version_row(c, v)["status"] != "building", timeout=60)
        body = c.get(f"/v1/shops/shop-a/kb/versions/{v}", headers=key).json()
        assert (body["status"], body["attempts"]) == ("failed", 2)
        assert body["error"] == (
            "the build failed 2 time(s); last: the build process ended without a result (killed by SIGKILL)"
        )


def test_a_model_failing_its_checks_is_not_retried(settings: Settings) -> None:
    settings.min_cv_top1 = 1.0  # no model of this KB gets every held-out paraphrase right
    with TestClient(create_app(settings)) as c:
        key = new_shop(c)
        v = upload_and_publish(c, key)
        wait_for(lambda: version_row(c, v)["status"] != "building", timeout=120)
        row = version_row(c, v)
        assert (row["status"], row["attempts"]) == ("failed", 1)
        assert "held-out paraphrase top-1" in row["error"]


def test_two_tasks_for_one_version_build_once(settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    settings.build_in_process = False
    with TestClient(create_app(settings)) as c:
        service = c.app.state.service  # type: ignore[attr-defined]
        key = new_shop(c)
        v = upload_and_publish(c, key)
        service.builds.enqueue("shop-a", v)  # the same version delivered twice
        service.builds.start(2)  # two consumer threads take both tasks at once
        wait_for(lambda: served(c, key) == v, timeout=120)
        wait_for(
            lambda: "not built twice" in caplog.text or "nothing to do (ready)" in caplog.text, timeout=30
        )
        assert version_row(c, v)["attempts"] == 1
        assert caplog.text.count(f"building version {v} of shop shop-a") == 1


def test_a_shutdown_puts_the_running_build_back_on_the_queue(settings: Settings) -> None:
    """The serving process stops mid-build: the version is queued again (the attempt not counted), and the
    next start builds it."""
    with TestClient(create_app(settings)) as c:
        key = new_shop(c)
        v = upload_and_publish(c, key)
        pid = child_pid(c, 1)
    with TestClient(create_app(settings)) as c:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # the old child is gone
        wait_for(lambda: served(c, key) == v, timeout=120)
        assert version_row(c, v)["attempts"] == 1  # the interrupted attempt was given back


def test_a_build_left_by_a_vanished_worker_is_swept(settings: Settings) -> None:
    """A claim whose heartbeat stopped (the worker's host died) is queued again; one that used all its
    attempts is failed. Fresh claims and recently queued versions are left alone."""
    settings.build_in_process = False
    with TestClient(create_app(settings)) as c:
        service = c.app.state.service  # type: ignore[attr-defined]
        key = new_shop(c)
        v = upload_and_publish(c, key)
        assert service.builds.sweep() == 0  # queued just now: its task is in the queue

        def claim(attempts: int, age: float) -> None:
            with service.db.session() as s:
                s.execute(
                    update(KBVersion)
                    .where(KBVersion.shop_id == "shop-a", KBVersion.version == v)
                    .values(
                        stage="calibrate",
                        attempts=attempts,
                        worker="lost-host:1",
                        heartbeat_at=utcnow() - timedelta(seconds=age),
                    )
                )

        claim(1, 5)
        assert service.builds.sweep() == 0  # a live worker
        claim(1, 120)
        assert service.builds.sweep() == 1
        row = version_row(c, v)
        assert (row["stage"], row["worker"], row["attempts"]) == ("queued", None, 1)
        assert "the worker building it stopped" in row["error"]
        claim(settings.build_retries + 1, 120)
        assert service.builds.sweep() == 1
        row = version_row(c, v)
        assert row["status"] == "failed" and "gave up after 3 attempt(s)" in row["error"]

        # and a queued one is built once a worker runs
        c.put("/v1/shops/shop-a/entries/gift", headers=key, json={"question": "有没有赠品", "answer": "有"})
        v2 = c.post("/v1/shops/shop-a/kb/publish", headers=key).json()["version"]
        claim_v2 = update(KBVersion).where(KBVersion.shop_id == "shop-a", KBVersion.version == v2)
        with service.db.session() as s:
            s.execute(
                claim_v2.values(stage="embed", attempts=1, heartbeat_at=utcnow() - timedelta(seconds=120))
            )
        assert service.builds.sweep() == 1
        service.builds.start(1)
        wait_for(lambda: served(c, key) == v2, timeout=120)
        assert version_row(c, v2)["attempts"] == 2


def _report_priority(conn: Any) -> None:
    """A child that only says what it was born with (it lowers nothing itself)."""
    conn.send((os.getpriority(os.PRIO_PROCESS, 0), os.sched_getscheduler(0)))
    conn.close()


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="SCHED_IDLE is Linux's")
def test_a_build_child_is_born_with_its_lowered_priority_and_the_caller_keeps_its_own() -> None:
    ctx = multiprocessing.get_context("spawn")
    reader, writer = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_report_priority, args=(writer,))
    before = (os.getpriority(os.PRIO_PROCESS, 0), os.sched_getscheduler(0))
    start_lowered(proc, nice=7, cpu_idle=True)
    writer.close()
    assert reader.poll(60)
    nice, policy = reader.recv()
    proc.join(10)
    assert policy == os.SCHED_IDLE
    assert nice >= 7
    assert (os.getpriority(os.PRIO_PROCESS, 0), os.sched_getscheduler(0)) == before


_TIED_PARENT = """
import sys, time
from api.kb.build_child import build_context
from tests.build_lifeline_child import sleep_tied, sleep_untied
ctx = build_context(0)  # the context builds start in: a forkserver where Linux has one
lifeline, holder = ctx.Pipe(duplex=False)
pids = []
for target, args in ((sleep_tied, (lifeline,)), (sleep_untied, ())):
    reader, writer = ctx.Pipe(duplex=False)
    ctx.Process(target=target, args=(*args, writer)).start()
    writer.close()
    pids.append(reader.recv())
lifeline.close()
print(*pids, flush=True)
time.sleep(120)
"""


def _gone(pid: int) -> bool:
    """No such process, or only its exit status left (a zombie nobody reaped yet)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from /proc")
def test_a_build_child_ends_when_its_parent_is_killed() -> None:
    """A `kefu worker` killed with SIGKILL cannot stop its build child: the child's lifeline (a pipe only
    the parent can write) reads EOF and the child ends at once. The control, the same child without one,
    runs on: the parent's death alone does not end it."""
    parent = subprocess.Popen(
        [sys.executable, "-c", _TIED_PARENT], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    untied = 0
    try:
        assert parent.stdout is not None
        tied, untied = map(int, parent.stdout.readline().split())
        assert not _gone(tied) and not _gone(untied)
        parent.kill()
        parent.wait(10)
        wait_for(lambda: _gone(tied), timeout=10)
        time.sleep(0.5)
        assert not _gone(untied)
    finally:
        parent.kill()
        if untied:
            with contextlib.suppress(ProcessLookupError):
                os.kill(untied, signal.SIGKILL)


def test_a_versions_frozen_kb_is_read_only_where_it_is_used(settings: Settings) -> None:
    """Status reads, publish answers and version lists do not load the frozen KB (deferred); a read in
    the session still gets it, and the build that used it served the KB."""
    with TestClient(create_app(settings)) as client:
        key = new_shop(client)
        version = upload_and_publish(client, key)
        wait_for(lambda: served(client, key) == version)
        service = client.app.state.service  # type: ignore[attr-defined]
        with service.db.session() as s:
            row = kb_repo.get_version(s, "shop-a", version)
            assert row is not None and "snapshot" in inspect(row).unloaded
            listed = kb_repo.list_versions(s, "shop-a")
            assert all("snapshot" in inspect(r).unloaded for r in listed)
            entries, _options = kb_repo.snapshot_of_version(service.db, "shop-a", version)
            assert {str(item["id"]) for item in row.snapshot} == {e.id for e in entries} != set()
