"""api.kb.publisher.version_state: what a version is to the merchant, from its row and the active one's
(the rule the console's pages and the API's `state` share with Publisher.activate's `follows`)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from api.db.models import KBVersion
from api.kb.publisher import ACTIVATION_GRACE, NOT_ACTIVATED, follows, version_state

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


def row(version: int, seq: int, status: str = "ready", ago: float | None = 1.0, **metrics: Any) -> KBVersion:
    """A version row; its build ended `ago` seconds before NOW (None: no end recorded), aware in UTC as
    every database gives it back (api.db.models.UtcDateTime)."""
    finished = None if ago is None else NOW - timedelta(seconds=ago)
    return KBVersion(version=version, request_seq=seq, status=status, metrics=metrics, finished_at=finished)


LIVE = row(2, 4, ago=86400)


@pytest.mark.parametrize("status", ["building", "failed", "superseded"])
def test_a_version_not_ready_is_its_status(status: str) -> None:
    assert version_state(row(3, 5, status), LIVE, NOW) == status
    assert version_state(row(3, 5, status), None, NOW) == status


def test_the_active_version_is_live() -> None:
    assert version_state(LIVE, LIVE, NOW) == "live"
    assert version_state(row(2, 1), row(2, 9), NOW) == "live"  # whatever the request numbers


def test_a_ready_version_its_build_is_activating() -> None:
    assert version_state(row(3, 5), LIVE, NOW) == "activating"  # asked for after the live one
    assert version_state(row(3, 4), LIVE, NOW) == "activating"  # the same request (published again)
    assert version_state(row(1, 1), None, NOW) == "activating"  # the shop's first version
    assert version_state(row(3, 5, ago=None), LIVE, NOW) == "activating"  # no end recorded yet
    aware = row(3, 5)
    aware.finished_at = NOW - timedelta(seconds=1)  # PostgreSQL gives back aware datetimes
    assert version_state(aware, LIVE, NOW) == "activating"


def test_a_ready_version_not_served_is_inactive() -> None:
    assert version_state(row(1, 1), LIVE, NOW) == "inactive"  # an older version
    assert version_state(row(3, 3), row(1, 6), NOW) == "inactive"  # built after the rollback to 1
    held = row(3, 5, **{NOT_ACTIVATED: "ready but not activated"})
    assert version_state(held, LIVE, NOW) == "inactive"  # held back by a rollback, whatever the numbers
    late = ACTIVATION_GRACE.total_seconds() + 1
    assert version_state(row(3, 5, ago=late), LIVE, NOW) == "inactive"  # an activation that never came
    assert version_state(row(3, 5, ago=late), None, NOW) == "inactive"


def test_follows_is_publisher_activates_rule() -> None:
    assert follows(row(3, 5), LIVE) and follows(row(3, 4), LIVE) and follows(row(1, 1), None)
    assert not follows(row(3, 3), LIVE)


def test_now_defaults_to_the_current_time() -> None:
    fresh = KBVersion(version=3, request_seq=5, status="ready", metrics={}, finished_at=datetime.now(UTC))
    assert version_state(fresh, LIVE) == "activating"
