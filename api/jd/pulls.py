"""Incremental pulls of JOS lists with a time window (evaluations, chat logs): window by window, page by
page, from where the shop's last pull of that kind ended.

The cursor (table jd_pull_cursors, per shop and kind) moves after each whole window, so a pull that fails
halfway resumes there rather than starting over; it starts an hour early, for records JD lists late (the
stores de-duplicate). A backfill (`since` given) pulls a chosen period, at most a year back, and leaves
the cursor alone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from api.db.models import JdPullCursor
from api.jd import JosClient, beijing_timestamp
from api.jd.methods import CsMethod
from api.jd.records import first_records
from api.jd.shop import counted_call, shop_credentials

log = logging.getLogger("kefu.jd.pulls")

OVERLAP = timedelta(hours=1)  # a record JD lists late is still found by the next pull
MAX_BACKFILL = timedelta(days=366)  # one call per window of it: a year at most

Store = Callable[[Any, str, list[dict[str, Any]]], int]  # (service, shop, records) -> new ones stored


def aware(d: datetime) -> datetime:
    """In UTC; a naive value (a caller's bound) is taken as UTC."""
    return d.astimezone(UTC) if d.tzinfo is not None else d.replace(tzinfo=UTC)


def cursor(service: Any, shop_id: str, kind: str) -> datetime | None:
    with service.db.session() as s:
        row = s.get(JdPullCursor, (shop_id, kind))
        return aware(row.until) if row is not None else None


def _advance(service: Any, shop_id: str, kind: str, until: datetime) -> None:
    with service.db.session() as s:
        row = s.get(JdPullCursor, (shop_id, kind))
        if row is None:
            s.add(JdPullCursor(shop_id=shop_id, kind=kind, until=until))
        elif aware(row.until) < until:
            row.until, row.updated_at = until, datetime.now(UTC)


def pull_windows(
    service: Any,
    shop_id: str,
    *,
    kind: str,
    method: CsMethod,
    store: Store,
    since: datetime | None = None,
    until: datetime | None = None,
    page_size: int = 50,
    max_pages: int = 200,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Fetch one kind of record for a shop and store the new ones; counts and the period covered.

    Without `since`: from the shop's cursor (less OVERLAP) or KEFU_EVALUATION_BACKFILL_DAYS back, to
    now, and the cursor moves. With `since` (a backfill): that period only; the cursor stays."""
    creds = shop_credentials(service, shop_id)
    settings = service.settings
    now = aware(now or datetime.now(UTC))
    backfill = since is not None
    if since is not None and aware(since) < now - MAX_BACKFILL:
        raise ValueError(f"a backfill reaches back at most {MAX_BACKFILL.days} days")
    if since is None:
        last = cursor(service, shop_id, kind)
        since = last - OVERLAP if last else now - timedelta(days=settings.evaluation_backfill_days)
    since, end = aware(since), min(aware(until), now) if until else now
    name = method.configured_name(settings)
    window = timedelta(hours=settings.evaluation_window_hours)
    seen = new = windows = 0
    start = since
    with JosClient(*creds, base_url=settings.jos_url, rate_per_second=settings.jos_rate_per_second) as client:
        while start < end:
            stop = min(start + window, end)
            for page in range(1, max_pages + 1):
                biz = method.request(
                    startTime=beijing_timestamp(start),
                    endTime=beijing_timestamp(stop),
                    page=page,
                    pageSize=page_size,
                )
                records = first_records(counted_call(client, name, biz))
                seen += len(records)
                new += store(service, shop_id, records)
                if len(records) < page_size:
                    break
            windows += 1
            if not backfill:  # resumable: a pull that fails later starts again from here
                _advance(service, shop_id, kind, stop)
            start = stop
    log.info("shop %s: %d %s seen, %d new (%d windows)", shop_id, seen, kind, new, windows)
    return {"seen": seen, "new": new, "since": since.isoformat(), "until": end.isoformat()}
