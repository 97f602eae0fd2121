"""The Quality page's figures: the shop's traffic (api.store.traffic, the project's one source of them,
as GET /v1/shops/{shop}/report/traffic serves it) over the period the merchant picks, drawn as charts.

The console's own Try messages are the merchant's tests: left out (TEST_CHANNELS), as the endpoint does
by default.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from markupsafe import Markup

from api.console.charts import bar_chart, line_chart
from api.console.i18n import Translator
from api.jd import BEIJING
from api.store.exchanges import TEST_CHANNELS
from api.store.traffic import OUTCOMES, QUESTIONS, traffic_figures, traffic_period
from api.store.traffic import PERCENTILES as LATENCY_PERCENTILES

PERIODS: dict[str, timedelta] = {
    "24h": timedelta(hours=24),
    "7d": timedelta(days=7),
    "30d": timedelta(days=30),
}
DEFAULT_PERIOD = "7d"
TOP = 10  # entries and handed-off questions listed
SCORES = ("1", "2", "3", "4", "5")


def figures(service: Any, shop_id: str, period: str, now: datetime | None = None) -> dict[str, Any]:
    """The shop's traffic figures for the last `period` (a key of PERIODS) up to `now`, Try left out."""
    end = now or datetime.now(UTC)
    since, until = traffic_period(end - PERIODS[period], end)
    service.exchange_log.sync()
    with service.db.session() as s:
        return traffic_figures(s, shop_id, since, until, top=TOP, exclude_channels=TEST_CHANNELS)


def bucket_label(start: str, bucket: str) -> str:
    """A bucket's start as the axis shows it: the Beijing hour ("14:00") or day ("03-10")."""
    t = datetime.fromisoformat(start).astimezone(BEIJING)
    return t.strftime("%H:00") if bucket == "hour" else t.strftime("%m-%d")


def charts(t: Translator, data: dict[str, Any]) -> list[tuple[str, Markup]]:
    """The page's charts, (title, svg) each: rates, messages and latency over time; handoffs by reason;
    the confidence the bot decided with; JD ratings by what the bot did in the rated chat."""
    series, bucket = data["series"], data["bucket"]
    labels = [bucket_label(b["start"], bucket) for b in series]
    handoffs = data["handoff_reasons"]
    bins = data["confidence"]
    outcomes = data["ratings"]["by_outcome"]
    none = t("quality.no_data")
    titles = [
        t(k)
        for k in (
            "quality.rates",
            "quality.messages",
            "quality.latency",
            "quality.handoff_reasons",
            "quality.confidence",
            "quality.ratings",
        )
    ]
    rates, messages, latency, reasons, confidence, ratings = titles
    drawn = [
        line_chart(
            rates,
            labels,
            [(t("decision." + k), [b[f"{k}_rate"] for b in series]) for k in QUESTIONS],
            y_max=1.0,
        ),
        line_chart(messages, labels, [(messages, [b["messages"] for b in series])], unit=""),
        line_chart(
            latency,
            labels,
            [(t(f"quality.p{p}"), [b["latency_ms"][f"p{p}"] for b in series]) for p in LATENCY_PERCENTILES],
            unit=" ms",
        ),
        bar_chart(
            reasons,
            [t("code." + h["code"]) for h in handoffs],
            [(t("decision.handoff"), [h["count"] for h in handoffs])],
            empty=none,
        ),
        bar_chart(
            confidence,
            [f"{b['lo']:.1f}–{b['hi']:.1f}" for b in bins],
            [(t("decision." + k), [b[k] for b in bins]) for k in QUESTIONS],
            empty=none,
        ),
        bar_chart(
            ratings,
            [t("outcome." + o) for o in OUTCOMES],
            [(t("quality.score", n=n), [outcomes[o]["scores"].get(n, 0) for o in OUTCOMES]) for n in SCORES],
            empty=none,
        ),
    ]
    return list(zip(titles, drawn, strict=True))
