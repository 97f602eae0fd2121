"""The period a per-shop report covers ([since, until) in UTC), read from a route's query parameters.

Shared by the routes that read a period of the shop's log (kb/mining, report/traffic), so a merchant's
times mean the same everywhere: a time without a zone is Beijing time, as JD shows times to merchants.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from api.jd import BEIJING


class PeriodError(ValueError):
    """A period the caller must fix; `param` names the query parameter at fault."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


def period(
    since: datetime | None,
    until: datetime | None,
    now: datetime | None = None,
    *,
    default: timedelta,
    longest: timedelta,
    what: str = "read",
) -> tuple[datetime, datetime]:
    """[since, until) in UTC: times without a zone are Beijing time; until defaults to now, since to
    `default` before until; at most `longest` long (`what` says what is done with it, for the message)."""
    for name, t in (("since", since), ("until", until)):
        if t is not None and not 2000 <= t.year <= 2100:
            raise PeriodError(name, f"{name} must be a time between 2000 and 2100")
    end = (until.replace(tzinfo=BEIJING) if until.tzinfo is None else until) if until else now
    end = (end or datetime.now(UTC)).astimezone(UTC)
    start = (since.replace(tzinfo=BEIJING) if since.tzinfo is None else since) if since else None
    start = start.astimezone(UTC) if start is not None else end - default
    if start >= end:
        raise PeriodError("since", "since must be before until (until defaults to now)")
    if end - start > longest:
        days = (end - start) / timedelta(days=1)
        raise PeriodError(
            "since",
            f"since..until spans {days:.1f} days; at most {longest / timedelta(days=1):g} days are "
            f"{what} at once",
        )
    return start, end
