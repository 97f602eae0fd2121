"""The traffic section of `kefu report`: a shop's logged traffic, fetched from the service and drawn.

The service owns the exchange log, so it computes the figures (GET /v1/shops/{shop}/report/traffic,
api/store/traffic.py); this module only fetches them over HTTP (training never imports api) and draws
them as PNGs for training.report's page: answer / clarify / handoff rates over time with the messages,
handoffs by reason, latency percentiles over time, the confidence the bot decided with, and JD ratings by
what the bot did in the rated chat.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import httpx

__all__ = [
    "API_KEY_ENV",
    "TrafficFetchError",
    "confidence_chart",
    "fetch_traffic",
    "handoff_chart",
    "latency_chart",
    "rates_chart",
    "ratings_chart",
    "traffic_charts",
]

API_KEY_ENV = "KEFU_API_KEY"
TIMEOUT_S = 60.0  # a 92-day period of a busy shop is one pass over its log on the server
COLORS = {"answer": "tab:green", "clarify": "tab:orange", "handoff": "tab:red", "smalltalk": "tab:cyan"}
OUTCOMES = {
    "answered": "bot answered",
    "not_answered": "bot did not answer",
    "handed_off": "handed off",
    "unmatched": "not seen by the bot",
}


class TrafficFetchError(Exception):
    """The figures could not be fetched; the message says what to fix."""


def fetch_traffic(
    url: str,
    shop: str,
    api_key: str,
    since: datetime | None = None,
    until: datetime | None = None,
    bucket: str | None = None,
    timeout: float = TIMEOUT_S,
) -> dict[str, Any]:
    """The shop's traffic figures from a running service (times without a zone are Beijing time)."""
    base = url.rstrip("/")
    endpoint = f"{base}/v1/shops/{shop}/report/traffic"
    params = {
        name: value
        for name, value in (
            ("since", since.isoformat() if since else None),
            ("until", until.isoformat() if until else None),
            ("bucket", bucket),
        )
        if value is not None
    }
    try:
        with httpx.Client(timeout=timeout) as client:
            r = client.get(endpoint, params=params, headers={"X-API-Key": api_key})
    except httpx.InvalidURL as e:
        raise TrafficFetchError(f"--traffic-url {url!r} is not a URL: {e}") from e
    except httpx.UnsupportedProtocol as e:
        raise TrafficFetchError(f"--traffic-url {url!r} must start with http:// or https://") from e
    except httpx.TimeoutException as e:
        raise TrafficFetchError(f"{base} did not answer within {timeout:g} s ({type(e).__name__})") from e
    except httpx.HTTPError as e:
        raise TrafficFetchError(f"cannot reach the Kefu service at {base}: {e}") from e
    detail = _detail(r)
    if r.status_code == 401:
        raise TrafficFetchError(
            f"{base} refused the API key of shop {shop!r} (401): check --api-key or ${API_KEY_ENV}"
        )
    if r.status_code == 403:
        raise TrafficFetchError(f"the API key belongs to another shop than {shop!r} (403)")
    if r.status_code == 404:
        raise TrafficFetchError(
            f"{endpoint} was not found (404): is {base} the Kefu service (and up to date)? {detail}".strip()
        )
    if r.status_code in (400, 422):
        raise TrafficFetchError(f"the service refused the request ({r.status_code}): {detail}")
    if r.status_code != 200:
        raise TrafficFetchError(f"{endpoint} answered {r.status_code}: {detail}")
    try:
        figures = r.json()
    except ValueError as e:
        raise TrafficFetchError(f"{endpoint} did not answer JSON: {r.text[:200]!r}") from e
    if not isinstance(figures, dict) or "totals" not in figures or "series" not in figures:
        raise TrafficFetchError(f"{endpoint} did not answer traffic figures: {r.text[:200]!r}")
    return figures


def _detail(r: httpx.Response) -> str:
    """The service's `detail`: a message, or FastAPI's validation errors as `where: what`."""
    try:
        detail = r.json().get("detail")
    except (ValueError, AttributeError):
        return r.text[:200]
    if isinstance(detail, list):
        return "; ".join(
            f"{'.'.join(str(p) for p in d.get('loc', ())[1:])}: {d.get('msg', '')}"
            for d in detail
            if isinstance(d, dict)
        )
    return str(detail or "")


# --------------------------------------------------------------------------- charts


def _labels(series: Sequence[Mapping[str, Any]], bucket: str) -> list[str]:
    fmt = "%m-%d" if bucket == "day" else "%m-%d %H:00"
    return [datetime.fromisoformat(b["start"]).strftime(fmt) for b in series]


def _ticks(ax: Any, labels: Sequence[str], most: int = 12) -> None:
    step = max(1, -(-len(labels) // most))
    ax.set_xticks(range(0, len(labels), step))
    ax.set_xticklabels(labels[::step], rotation=45, ha="right", fontsize="small")


def rates_chart(traffic: Mapping[str, Any]) -> str:
    """Answer / clarify / handoff as stacked shares of the questions per bucket, messages on the right."""
    from training.report import _figure, _png_data_uri

    series, bucket = traffic["series"], traffic["bucket"]
    fig = _figure(9.6, 4.4)
    ax = fig.add_subplot()
    x = range(len(series))
    bottom = [0.0] * len(series)
    for kind in ("answer", "clarify", "handoff"):
        values = [b[f"{kind}_rate"] or 0.0 for b in series]
        ax.bar(x, values, bottom=bottom, color=COLORS[kind], width=0.9, label=f"{kind} rate")
        bottom = [a + b for a, b in zip(bottom, values, strict=True)]
    ax.set_ylim(0.0, 1.2)  # room for the legend above the bars
    ax.set_yticks([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.set_ylabel("share of questions (small talk apart)")
    counts = ax.twinx()
    counts.plot(list(x), [b["messages"] for b in series], color="black", marker=".", label="messages")
    counts.plot(
        list(x), [b["smalltalk"] for b in series], color="tab:cyan", linestyle="--", label="small talk"
    )
    counts.set_ylabel("messages")
    counts.set_ylim(0, max([b["messages"] for b in series], default=0) * 1.2 or 1)
    _ticks(ax, _labels(series, bucket))
    handles = ax.get_legend_handles_labels()[0] + counts.get_legend_handles_labels()[0]
    ax.legend(handles, [str(h.get_label()) for h in handles], loc="upper left", fontsize="small", ncol=5)
    fig.tight_layout()
    return _png_data_uri(fig)


def handoff_chart(traffic: Mapping[str, Any]) -> str:
    """Handoffs by reason code, most frequent on top."""
    from training.report import _figure, _png_data_uri

    reasons = list(reversed(traffic["handoff_reasons"]))
    fig = _figure(6.4, 0.6 + 0.35 * max(len(reasons), 1))
    ax = fig.add_subplot()
    ax.barh([r["code"] for r in reasons], [r["count"] for r in reasons], color=COLORS["handoff"])
    for i, r in enumerate(reasons):
        ax.annotate(f" {r['count']}", (r["count"], i), va="center", fontsize="small")
    ax.set_xlabel("handoffs")
    fig.tight_layout()
    return _png_data_uri(fig)


def latency_chart(traffic: Mapping[str, Any]) -> str:
    """Reply latency p50 / p95 / p99 per bucket (gaps where there was no message)."""
    from training.report import _figure, _png_data_uri

    series, bucket = traffic["series"], traffic["bucket"]
    fig = _figure(9.6, 3.6)
    ax = fig.add_subplot()
    for p, style in (("p50", "-"), ("p95", "--"), ("p99", ":")):
        values = [b["latency_ms"][p] if b["latency_ms"][p] is not None else float("nan") for b in series]
        ax.plot(range(len(series)), values, style, marker=".", label=p)
    ax.set_ylabel("ms")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", fontsize="small")
    _ticks(ax, _labels(series, bucket))
    fig.tight_layout()
    return _png_data_uri(fig)


def confidence_chart(traffic: Mapping[str, Any]) -> str:
    """Questions per confidence bin, stacked by what the bot decided."""
    from training.report import _figure, _png_data_uri

    bins = traffic["confidence"]
    fig = _figure(6.4, 3.6)
    ax = fig.add_subplot()
    bottom = [0] * len(bins)
    width = 1.0 / max(len(bins), 1)
    for kind in ("answer", "clarify", "handoff"):
        values = [b[kind] for b in bins]
        ax.bar(
            [b["lo"] for b in bins],
            values,
            bottom=bottom,
            width=width,
            align="edge",
            edgecolor="white",
            color=COLORS[kind],
            label=kind,
        )
        bottom = [a + b for a, b in zip(bottom, values, strict=True)]
    ax.set_xlim(0.0, 1.0)
    ax.set_xlabel("confidence")
    ax.set_ylabel("questions")
    ax.legend(loc="upper left", fontsize="small")
    fig.tight_layout()
    return _png_data_uri(fig)


def ratings_chart(traffic: Mapping[str, Any]) -> str:
    """JD ratings by what the bot did in the rated chat: the share of each score, stacked."""
    from training.report import _figure, _png_data_uri

    by_outcome = traffic["ratings"]["by_outcome"]
    names = [o for o in OUTCOMES if o in by_outcome]
    scores = sorted({int(k) for o in names for k in by_outcome[o]["scores"]})
    fig = _figure(6.4, 3.2)
    ax = fig.add_subplot()
    left = [0.0] * len(names)
    palette = ["#d73027", "#fc8d59", "#fee08b", "#91cf60", "#1a9850"]  # JD scores 1 (bad) to 5
    for score in scores:
        shares = [by_outcome[o]["scores"].get(str(score), 0) / (by_outcome[o]["ratings"] or 1) for o in names]
        color = palette[min(max(score - 1, 0), len(palette) - 1)]
        ax.barh([OUTCOMES[o] for o in names], shares, left=left, color=color, label=f"score {score}")
        left = [a + b for a, b in zip(left, shares, strict=True)]
    for j, o in enumerate(names):
        ax.annotate(f" n={by_outcome[o]['ratings']}", (1.0, j), va="center", fontsize="small")
    ax.set_xlim(0.0, 1.15)
    ax.set_xlabel("share of the ratings")
    if scores:
        ax.legend(loc="lower right", fontsize="x-small", ncol=len(scores))
    fig.tight_layout()
    return _png_data_uri(fig)


def traffic_charts(traffic: Mapping[str, Any]) -> dict[str, str]:
    """Every chart of the section that has something to show, by name."""
    charts = {"rates": rates_chart(traffic), "latency": latency_chart(traffic)}
    if traffic["handoff_reasons"]:
        charts["handoffs"] = handoff_chart(traffic)
    if any(b["answer"] + b["clarify"] + b["handoff"] for b in traffic["confidence"]):
        charts["confidence"] = confidence_chart(traffic)
    if traffic["ratings"]["ratings"]:
        charts["ratings"] = ratings_chart(traffic)
    return charts
