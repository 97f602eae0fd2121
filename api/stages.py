"""Where one request's time went, by stage, for its `Server-Timing` header.

The app's total (`app`) says whether a slow reply was held inside the process or waited outside it; the
stages say where inside: `turn` (the whole conversation turn in its worker thread), `state` (the
conversation state's load and save, Redis or the database), `match` (the matcher, every call of the
turn). `app` minus `turn` is the rest: reading and checking the body, the API key, the hop to the
worker thread and back, writing the reply. A load test that reads these per message tells a slower
Redis from a slower matcher from a starved event loop without a profiler attached.

A request's stages live in a context variable set by the outermost middleware; Starlette runs worker
threads in a copy of the request's context, which shares the same dict, so a stage timed in the thread is
seen by the middleware. Outside a request (scripts, tests calling the turn directly) nothing is kept.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token

_STAGES: ContextVar[dict[str, float] | None] = ContextVar("kefu_request_stages", default=None)


def begin() -> tuple[dict[str, float], Token[dict[str, float] | None]]:
    """A fresh record of stages for the request now starting, and the token that ends it."""
    stages: dict[str, float] = {}
    return stages, _STAGES.set(stages)


def end(token: Token[dict[str, float] | None]) -> None:
    _STAGES.reset(token)


def add(stage: str, seconds: float) -> None:
    """Add `seconds` to the current request's `stage` (a stage met twice in a turn is summed)."""
    stages = _STAGES.get()
    if stages is not None:
        stages[stage] = stages.get(stage, 0.0) + seconds


@contextmanager
def timed(stage: str) -> Iterator[None]:
    t0 = time.perf_counter()
    try:
        yield
    finally:
        add(stage, time.perf_counter() - t0)


def header(app_seconds: float, stages: dict[str, float]) -> bytes:
    """`app;dur=MS` then each stage's, in the order they were first met (W3C Server Timing)."""
    parts = [f"app;dur={app_seconds * 1000:.2f}"]
    parts += [f"{name};dur={seconds * 1000:.2f}" for name, seconds in stages.items()]
    return ", ".join(parts).encode()
