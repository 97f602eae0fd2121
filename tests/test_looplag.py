"""The event loop's lag (api/web/looplag.py): a blocked loop is measured, logged, and exported."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from api.metrics import LOOP_LAG
from api.web.looplag import watch_loop
from tests.test_api import make_settings


def lag_count() -> float:
    return next(s.value for m in LOOP_LAG.collect() for s in m.samples if s.name.endswith("_count"))


def lag_sum() -> float:
    return next(s.value for m in LOOP_LAG.collect() for s in m.samples if s.name.endswith("_sum"))


def test_a_blocked_loop_is_measured_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        watcher = asyncio.create_task(watch_loop(0.01, 0.1))
        await asyncio.sleep(0.05)  # a few wake-ups on time
        time.sleep(0.25)  # a synchronous call holding the loop
        await asyncio.sleep(0.05)
        watcher.cancel()

    count, total = lag_count(), lag_sum()
    with caplog.at_level(logging.WARNING, logger="kefu.api"):
        asyncio.run(scenario())
    assert lag_count() - count >= 4
    assert 0.2 <= lag_sum() - total < 0.5  # the blocked stretch, less the interval it was asleep anyway
    late = [r.getMessage() for r in caplog.records if "event loop" in r.getMessage()]
    assert len(late) == 1 and "ms late" in late[0]
    assert 200 <= int(late[0].split("event loop ")[1].split(" ms")[0]) < 500


def test_the_service_exports_its_loop_lag(tmp_path: Path) -> None:
    count = lag_count()
    with TestClient(create_app(make_settings(tmp_path, loop_lag_interval_ms=10), shops_service=False)) as c:
        time.sleep(0.3)
        text = c.get("/metrics").text
    assert "kefu_event_loop_lag_seconds_bucket" in text
    assert lag_count() - count >= 5


def test_off_when_the_interval_is_zero(tmp_path: Path) -> None:
    count = lag_count()
    with TestClient(create_app(make_settings(tmp_path, loop_lag_interval_ms=0), shops_service=False)):
        time.sleep(0.2)
    assert lag_count() == count
