"""Prometheus metrics of the service, served at /metrics.

With several worker processes set PROMETHEUS_MULTIPROC_DIR (a writable, emptied directory) and every
worker's samples are aggregated at scrape time; without it, the process's own registry is served.
Label values are bounded: routes are path templates, shops are known shop ids, reasons a fixed set.
"""

from __future__ import annotations

import os
import threading
from collections import deque

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

REQUESTS = Counter("kefu_requests_total", "HTTP requests", ["route", "method", "status"])
REQUEST_LATENCY = Histogram(
    "kefu_request_latency_seconds",
    "HTTP request latency",
    ["route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
LOOP_LAG = Histogram(
    "kefu_event_loop_lag_seconds",
    "How much later than asked the serving process's event loop woke up (api/web/looplag.py)",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
MATCH_LATENCY = Histogram(
    "kefu_match_latency_seconds",
    "Engine match latency (normalize to decide)",
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25),
)
DECISIONS = Counter("kefu_decisions_total", "Replies by kind", ["shop", "decision"])
DENSE_SKIPPED = Counter(
    "kefu_dense_skipped_total",
    "Messages answered by a model's cascade without the sentence encoder (KEFU_CASCADE)",
    ["shop"],
)
HANDOFF_RATE = Gauge(
    "kefu_handoff_rate",
    "Share of handoffs among this process's last 500 replies",
    ["shop"],
    multiprocess_mode="liveall",
)
MODELS_LOADED = Gauge(
    "kefu_models_loaded", "Shops' models held in memory by this process", multiprocess_mode="liveall"
)
MODEL_MEMORY = Gauge(
    "kefu_model_memory_bytes",
    "Estimated memory of the models this process holds (budget: KEFU_MODEL_MEMORY_MB)",
    multiprocess_mode="liveall",
)
MODEL_EVICTIONS = Counter("kefu_model_evictions_total", "Models evicted to stay within the memory budget")
MODEL_LOAD_SECONDS = Histogram(
    "kefu_model_load_seconds",
    "Loading a shop's model on its first message (or after an eviction or a new version)",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1, 2, 5, 10, 30),
)
MODEL_VERSION = Gauge("kefu_model_version", "KB version in service", ["shop"], multiprocess_mode="liveall")
BUILD_SECONDS = Histogram(
    "kefu_build_seconds",
    "Model build duration",
    ["outcome"],
    buckets=(0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600),
)
BUILD_PRIORITY_RAISED = Counter(
    "kefu_build_priority_raised_total",
    "Steps a starving build's CPU priority was raised (api/kb/build_priority.py)",
    ["nice"],
)
FEEDBACK = Counter(
    "kefu_feedback_total", "Feedback on replies: thumbs up, thumbs down, corrections", ["shop", "kind"]
)
JOS_ERRORS = Counter("kefu_jos_errors_total", "JOS call errors", ["kind"])
ORDER_LOOKUPS = Counter(
    "kefu_order_lookups_total",
    "Order questions (dynamic entries) by outcome: ok, refused (not the customer's order), or the failure",
    ["outcome"],
)
STATE_CONFLICTS = Counter(
    "kefu_conversation_state_conflicts_total",
    "Messages stepped again because another message of the same conversation saved its state first",
    ["shop"],
)
AGENT_TASKS = Counter("kefu_agent_tasks_total", "Tasks raised for agents beside an answer", ["shop"])
JD_OUTBOUND = Counter(
    "kefu_jd_outbound_total",
    "Async JD replies by send outcome: sent, retry (a failed attempt to be repeated), expired (not sent "
    "within KEFU_JD_REPLY_DEADLINE), failed (JD refused it for good)",
    ["outcome"],
)
JD_DELIVERY_LATENCY = Histogram(
    "kefu_jd_delivery_latency_seconds",
    "From JD's push to the reply sent back through JOS (async replies)",
    buckets=(0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 20, 30, 60),
)
AUTH_FAILURES = Counter("kefu_auth_failures_total", "Refused requests", ["reason"])
RATE_LIMITED = Counter("kefu_rate_limited_total", "Requests refused by a rate limit", ["scope", "route"])
RATE_LIMIT_ERRORS = Counter(
    "kefu_rate_limit_errors_total", "Rate limit checks skipped because the counter store failed"
)
# the exchange log (api/store/exchange_log.py): rows batched off the reply path
EXCHANGE_LOG_ROWS = Counter(
    "kefu_exchange_log_rows_total",
    "Exchange rows written, by path: batch (by the writer thread), direct (KEFU_EXCHANGE_LOG_FLUSH_MS=0), "
    "overflow (the buffer was full: the reply wrote its own row, waiting for the database)",
    ["path"],
)
EXCHANGE_LOG_BATCHES = Counter("kefu_exchange_log_batches_total", "Batches of exchange rows written")
EXCHANGE_LOG_FLUSH_SECONDS = Histogram(
    "kefu_exchange_log_flush_seconds",
    "Time to write one batch of exchange rows",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
EXCHANGE_LOG_PENDING = Gauge(
    "kefu_exchange_log_pending", "Exchange rows waiting in the buffer", multiprocess_mode="livesum"
)
EXCHANGE_LOG_FAILURES = Counter(
    "kefu_exchange_log_flush_failures_total", "Failed writes of a batch (its rows are kept and retried)"
)
EXCHANGE_LOG_REJECTED = Counter(
    "kefu_exchange_log_rejected_total",
    "Exchange rows the database refused one by one (e.g. their shop was deleted meanwhile): dropped, logged",
)

_recent: dict[str, deque[bool]] = {}
_recent_lock = threading.Lock()


HANDOFFS = Counter(
    "kefu_handoffs_total",
    "Replies handing the conversation to a human, by reason",
    ["shop", "reason"],
)


def record_reply(shop: str, decision: str, handoff_reason: str | None = None) -> None:
    """Count a reply (small talk apart from answers) and, for a handoff, its reason code."""
    DECISIONS.labels(shop, decision).inc()
    if decision == "handoff":
        HANDOFFS.labels(shop, handoff_reason or "low_confidence").inc()
    with _recent_lock:
        window = _recent.setdefault(shop, deque(maxlen=500))
        window.append(decision == "handoff")
        rate = sum(window) / len(window)
    HANDOFF_RATE.labels(shop).set(rate)


def render() -> tuple[bytes, str]:
    """The exposition text, aggregated over worker processes when running multi-process."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
