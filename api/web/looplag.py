"""How late a serving process's event loop runs what it was asked to run.

A request's own latency says how long it took, not why: a loop held by a synchronous call, by another
thread keeping the interpreter lock, or by a garbage collection delays every request of the worker at
once, and shows here as one late wake-up. Exported as `kefu_event_loop_lag_seconds`; a wake-up later than
KEFU_LOOP_LAG_WARN_MS is also logged, with the loop's time, so a slow stretch in a load test or a
merchant's report can be told from slow work of the request itself.
"""

from __future__ import annotations

import asyncio
import logging

from api.metrics import LOOP_LAG

log = logging.getLogger("kefu.api")


async def watch_loop(interval: float, warn_after: float) -> None:
    """Sleep `interval` seconds, again and again, and record how much later than asked each wake-up came
    (cancelled at shutdown). `warn_after` seconds or more of lag is logged; 0: never."""
    loop = asyncio.get_running_loop()
    while True:
        asked = loop.time() + interval
        await asyncio.sleep(interval)
        lag = max(0.0, loop.time() - asked)
        LOOP_LAG.observe(lag)
        if warn_after and lag >= warn_after:
            log.warning("event loop %.0f ms late: every request of this process waited as long", lag * 1000)
