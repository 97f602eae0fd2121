"""JOS request signing and timestamps.

Kept free of client concerns because the same rules authenticate messages JD pushes to us: an inbound
endpoint calls `verify` and `check_timestamp` on the form fields it received.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = [
    "BEIJING",
    "TIMESTAMP_FORMAT",
    "StaleTimestamp",
    "beijing_timestamp",
    "check_timestamp",
    "parse_beijing_timestamp",
    "sign",
    "verify",
]

TIMESTAMP_FORMAT = "%Y-%m-%d %H:%M:%S"


def _beijing_tz() -> tzinfo:
    """Asia/Shanghai from the tz database; China has had no DST since 1991, so +08:00 is an exact fallback
    on slim images that ship without zoneinfo files."""
    try:
        return ZoneInfo("Asia/Shanghai")
    except ZoneInfoNotFoundError:
        return timezone(timedelta(hours=8), "Asia/Shanghai")


BEIJING: tzinfo = _beijing_tz()


class StaleTimestamp(ValueError):
    """A JOS timestamp that is malformed or too far from our clock (replay protection / clock skew)."""


def _signing_string(params: Mapping[str, str | None], app_secret: str) -> str:
    """secret + name1 value1 name2 value2 ... + secret, names in byte order, without `sign` and empty values.

    Python sorts `str` by code point, which is the same order as UTF-8 bytes, so no encoding step is needed
    for the sort itself.
    """
    body = "".join(k + v for k, v in sorted(params.items()) if k != "sign" and v is not None and v != "")
    return app_secret + body + app_secret


def sign(params: Mapping[str, str | None], app_secret: str) -> str:
    """The JOS `sign` value: upper-case hex MD5 of the signing string, UTF-8 encoded."""
    if not app_secret:
        raise ValueError("app_secret must not be empty")
    return hashlib.md5(_signing_string(params, app_secret).encode("utf-8")).hexdigest().upper()


def verify(params: Mapping[str, str | None], app_secret: str) -> bool:
    """True when `params["sign"]` matches; constant-time so a forger learns nothing from response timing.

    Hex case is ignored (some senders lower-case it); a missing or empty sign is simply invalid.
    """
    given = params.get("sign")
    if not given or not app_secret:
        return False
    expected = sign(params, app_secret)
    return hmac.compare_digest(expected.encode("ascii"), given.strip().upper().encode("utf-8"))


def beijing_timestamp(now: datetime | None = None) -> str:
    """`now` (default: current time) as JOS wants it: Beijing wall-clock time, `YYYY-MM-DD HH:MM:SS`.

    Naive datetimes are rejected: guessing their zone is how 8-hour skew bugs happen.
    """
    if now is None:
        now = datetime.now(UTC)
    elif now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("beijing_timestamp needs an aware datetime (or None for now)")
    return now.astimezone(BEIJING).strftime(TIMESTAMP_FORMAT)


def parse_beijing_timestamp(s: str) -> datetime:
    """Parse a JOS timestamp into an aware Asia/Shanghai datetime; ValueError when malformed."""
    if not isinstance(s, str):
        raise ValueError(f"JOS timestamp must be a string, got {type(s).__name__}")
    try:
        naive = datetime.strptime(s.strip(), TIMESTAMP_FORMAT)
    except ValueError:
        raise ValueError(f"malformed JOS timestamp {s[:40]!r}: expected YYYY-MM-DD HH:MM:SS") from None
    return naive.replace(tzinfo=BEIJING)


def check_timestamp(s: str, window: timedelta = timedelta(minutes=5), now: datetime | None = None) -> None:
    """Raise StaleTimestamp unless `s` is within `window` of `now`, either way: clocks drift both ways."""
    try:
        ts = parse_beijing_timestamp(s)
    except ValueError as exc:
        raise StaleTimestamp(str(exc)) from None
    if now is None:
        now = datetime.now(UTC)
    elif now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("check_timestamp needs an aware `now` (or None for the current time)")
    skew = ts - now
    if abs(skew) > window:
        direction = "ahead of" if skew > timedelta(0) else "behind"
        raise StaleTimestamp(
            f"JOS timestamp {s!r} is {abs(skew).total_seconds():.0f}s {direction} our clock; "
            f"allowed window is ±{window.total_seconds():.0f}s"
        )
