"""JD's service statistics per day beside the bot's own figures: what the bot takes off the agents.

Per day (Beijing time, as JD counts): unreplied sessions (jingdong.im.pop.unreplystat.get), the average
wait before an agent's reply (jingdong.im.pop.consult.avgwaittime.get), the ask rate
(jingdong.im.pop.askRate.get) and the agents' online time (jingdong.im.pop.waiter.onlinetime.stat.get,
summed over agents), read live from JOS; and from the exchange log, the customer messages the bot saw,
the share it answered and the share it handed to a person.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import select

from api.db.models import Exchange
from api.jd import BEIJING, JosClient, beijing_timestamp
from api.jd.methods import ASK_RATE, AVG_WAIT, GROUP_INFO, UNREPLY_STAT, WAITER_ONLINE, field_value, fields_of
from api.jd.records import first_records
from api.jd.shop import counted_call, shop_credentials

MAX_DAYS = 31  # four JOS calls a day: a month at most per request


def _number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _bot_by_day(service: Any, shop_id: str, first: date, last: date) -> dict[date, Counter[str]]:
    start = datetime.combine(first, time(), BEIJING).astimezone(UTC)
    end = datetime.combine(last + timedelta(days=1), time(), BEIJING).astimezone(UTC)
    days: dict[date, Counter[str]] = defaultdict(Counter)
    service.exchange_log.sync()
    with service.db.session() as s:
        rows = s.execute(
            select(Exchange.created_at, Exchange.decision).where(
                Exchange.shop_id == shop_id, Exchange.created_at >= start, Exchange.created_at < end
            )
        )
        for created, decision in rows:
            days[created.astimezone(BEIJING).date()][decision] += 1
    return days


def daily(service: Any, shop_id: str, first: date, last: date) -> dict[str, Any]:
    """Per day from `first` to `last` (inclusive): JD's service statistics and the bot's figures."""
    if not (2000 <= first.year <= 2100 and 2000 <= last.year <= 2100):
        raise ValueError("days must be between 2000 and 2100")
    if last < first:
        raise ValueError("the last day is before the first")
    if (last - first).days + 1 > MAX_DAYS:
        raise ValueError(f"at most {MAX_DAYS} days at once")
    creds = shop_credentials(service, shop_id)
    settings = service.settings
    bot = _bot_by_day(service, shop_id, first, last)
    out: list[dict[str, Any]] = []
    total: Counter[str] = Counter()
    with JosClient(*creds, base_url=settings.jos_url) as client:
        day = first
        while day <= last:
            start = datetime.combine(day, time(), BEIJING)
            window = {
                "startTime": beijing_timestamp(start),
                "endTime": beijing_timestamp(start + timedelta(days=1)),
            }
            unreplied = fields_of(
                counted_call(client, UNREPLY_STAT.configured_name(settings), UNREPLY_STAT.request(**window)),
                UNREPLY_STAT,
            )
            wait = fields_of(
                counted_call(
                    client, AVG_WAIT.configured_name(settings), AVG_WAIT.request(date=day.isoformat())
                ),
                AVG_WAIT,
            )
            ask = fields_of(
                counted_call(client, ASK_RATE.configured_name(settings), ASK_RATE.request(**window)), ASK_RATE
            )
            online = first_records(
                counted_call(client, WAITER_ONLINE.configured_name(settings), WAITER_ONLINE.request(**window))
            )
            seconds = [_number(field_value(r, WAITER_ONLINE, "seconds")) for r in online]
            counts = bot.get(day, Counter())
            out.append(
                {
                    "date": day.isoformat(),
                    "unreplied_sessions": _number(unreplied["unreplied"]),
                    "avg_wait_seconds": _number(wait["seconds"]),
                    "ask_rate": _number(ask["rate"]),
                    "agent_online_seconds": sum(x for x in seconds if x is not None) if online else None,
                    "bot": _bot_figures(counts),
                }
            )
            total.update(counts)
            day += timedelta(days=1)
    return {"days": out, "bot": _bot_figures(total)}


def _bot_figures(counts: Counter[str]) -> dict[str, Any]:
    messages = sum(counts.values())
    return {
        "messages": messages,
        "answered": counts["answer"],
        "handoffs": counts["handoff"],
        "answer_rate": round(counts["answer"] / messages, 4) if messages else None,
        "handoff_rate": round(counts["handoff"] / messages, 4) if messages else None,
    }


def groups(service: Any, shop_id: str) -> list[dict[str, Any]]:
    """The shop's agent groups: id, name and the agents' pins."""
    creds = shop_credentials(service, shop_id)
    with JosClient(*creds, base_url=service.settings.jos_url) as client:
        result = counted_call(client, GROUP_INFO.configured_name(service.settings), GROUP_INFO.request())
    out = []
    for r in first_records(result):
        waiters = field_value(r, GROUP_INFO, "waiters") or []
        out.append(
            {
                "group": field_value(r, GROUP_INFO, "group"),
                "name": field_value(r, GROUP_INFO, "name"),
                "waiters": [str(w) for w in waiters] if isinstance(waiters, list) else [str(waiters)],
            }
        )
    return out
