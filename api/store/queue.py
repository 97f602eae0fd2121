"""The task queue's storage (huey), shared by the JD replies and the KB builds.

One engine for the project: huey runs on what the service already has, a SQLite file on one host or the
Redis the replicas share, with retries, delays and a consumer of worker threads. Each use is its own named
queue in that storage, so a long build never waits in line behind replies, nor replies behind builds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from huey import Huey, MemoryHuey, RedisHuey, SqliteHuey


def make_huey(settings: Any, queue: str, **options: Any) -> Huey:
    """Queue `queue` (prefixed with KEFU_REDIS_PREFIX) in the storage of KEFU_QUEUE_URL: unset or
    sqlite:///path a SQLite file (default data_dir/queue.db), redis://... a Redis shared by replicas,
    memory:// this process only."""
    url = settings.queue_url or ""
    name = f"{settings.redis_prefix}{queue}"
    if url.startswith(("redis://", "rediss://", "unix://")):
        return RedisHuey(name, url=url, **options)
    if url.startswith("memory://"):
        return MemoryHuey(name, **options)
    if url and not url.startswith("sqlite:///"):
        raise ValueError(f"KEFU_QUEUE_URL {url!r}: expected sqlite:///path, redis://... or memory://")
    path = Path(url.removeprefix("sqlite:///")) if url else Path(settings.data_dir) / "queue.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    return SqliteHuey(name, filename=str(path), **options)


def start_thread_consumer(huey: Huey, workers: int, max_delay: float, shutdown_timeout: float) -> Any:
    """A huey consumer of `workers` threads (and the scheduler that releases delayed retries), started in
    this process. Started by hand rather than with Consumer.run(), which wants the main thread for its
    signal handlers. `max_delay`: the longest an idle worker waits before it looks at the queue again."""
    consumer = huey.create_consumer(
        workers=workers,
        worker_type="thread",
        periodic=False,
        initial_delay=max_delay / 10,
        max_delay=max_delay,
        check_worker_health=False,
        shutdown_timeout=shutdown_timeout,
    )
    consumer.scheduler.start()
    for _, thread in consumer.worker_threads:
        thread.start()
    return consumer
