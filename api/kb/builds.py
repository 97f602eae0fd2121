"""KB builds on the task queue: a publish enqueues `build_version(shop, version)`, a consumer builds it.

The queue is huey (api/store/queue.py), queue `{prefix}builds` in the storage the JD replies use: a SQLite
file by default, the replicas' Redis with KEFU_QUEUE_URL=redis://. Whoever consumes it (the serving process
itself by default, KEFU_BUILD_IN_PROCESS; `kefu worker` processes otherwise) runs the same task: claim the
version, build it in a child process (api/kb/build_child.py; lower CPU priority, killed after
KEFU_BUILD_TIME_LIMIT seconds), record progress in the version row, then mark it ready and activate it (the
store's pub/sub tells every replica) or failed with the reason.

The version row is the source of truth, not the queue: a task claims a version with a conditional UPDATE
on its attempt count, so a task delivered twice builds once, and a task for a version that is finished,
being built by a live worker, or overtaken by a newer publish does nothing. Activation is forward only: an
older build finishing last never replaces a newer served version, and a build running when the merchant
rolled back ends ready without undoing the rollback (Publisher.activate).

Failures: a bad KB, a model failing its own checks or an exception in the build fail at once (the same KB
would fail again). A child that died without a result (killed, out of memory) or a database error is
retried KEFU_BUILD_RETRIES times after KEFU_BUILD_RETRY_DELAY seconds (huey's retries). A consumer shutting
down kills its child and puts the version back on the queue (that attempt is not counted). A worker that
vanished (host lost, SIGKILL) leaves a claim whose heartbeat stops: `sweep` (run at start and every minute
by every serving process) puts such versions back on the queue, or fails them once their attempts are spent.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from huey import Huey
from sqlalchemy import func, select, update

from api.db.models import KBVersion, utcnow
from api.db.session import Database
from api.kb import repo as kb_repo
from api.kb.build_child import BuildJob, build_context, build_in_child, start_lowered
from api.kb.build_priority import StarvationGuard
from api.kb.registry import ModelRegistry
from api.metrics import BUILD_PRIORITY_RAISED, BUILD_SECONDS
from api.store.queue import make_huey, start_thread_consumer

log = logging.getLogger("kefu.builds")

TASK_NAME = "kefu.kb.build_version"
QUEUED = "queued"  # the stage of a version waiting for a worker (also between attempts)
STARTING = "starting"  # claimed; the child process is starting
HEARTBEAT_EVERY = 5.0  # seconds: a building worker touches its version's row at least this often
STALE_AFTER = 60.0  # seconds without a heartbeat: the worker holding the build is gone
REQUEUE_AFTER = 600.0  # a version queued this long without a worker taking it is enqueued again
POLL = 0.2  # seconds between two looks at the child (time limit, shutdown)
ACTIVATE_TRIES = 3


@dataclass(frozen=True)
class Outcome:
    """How one attempt ended: ok, invalid, rejected, error, timeout (final); died (retried); stopped."""

    kind: str
    detail: Any = None


class BuildInterrupted(Exception):
    """The attempt ended for a transient reason (the child died): raised so that huey retries the task."""


class BuildQueue:
    """The build queue of one process: the huey task, its consumer threads and the sweep."""

    def __init__(
        self,
        db: Database,
        settings: Any,
        registry: ModelRegistry,
        activate: Callable[..., bool],
        huey: Huey | None = None,
    ) -> None:
        self.db = db
        self.settings = settings
        self.registry = registry
        self.activate = activate  # Publisher.activate
        self.huey = huey if huey is not None else make_huey(settings, "builds", results=False)
        self.task = self.huey.task(
            name=TASK_NAME,
            retries=settings.build_retries,
            retry_delay=settings.build_retry_delay,
            context=True,
        )(self.build_version)
        self._consumer: Any = None
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    @property
    def max_attempts(self) -> int:
        return 1 + int(self.settings.build_retries)

    def enqueue(self, shop: str, version: int) -> None:
        """Put a version on the queue (a duplicate is harmless: only one task claims it)."""
        self.task(shop, version)

    # -- consumer -------------------------------------------------------------------------------------
    def start(self, workers: int) -> None:
        """`workers` threads that wait on the queue, each handing a build to its own child process, and the
        scheduler that releases delayed retries. Started by hand rather than with Consumer.run(), which
        wants the main thread for its signal handlers (`kefu worker` installs its own)."""
        with self._lock:
            if workers <= 0 or self.huey.immediate or self._consumer is not None:
                return
            self._stopping.clear()
            # an idle worker looks for a build at least once a second
            self._consumer = start_thread_consumer(self.huey, workers, max_delay=1.0, shutdown_timeout=10.0)
        log.info("KB build queue: %d worker(s), each building in a child process", workers)

    def stop(self) -> None:
        """Kill running builds' children and put their versions back on the queue, then stop."""
        self._stopping.set()
        with self._lock:
            consumer, self._consumer = self._consumer, None
        if consumer is not None:
            consumer.stop(graceful=True)
        self.huey.storage.close()  # its connection (a SQLite file's three descriptors); reopened on use

    def _should_stop(self) -> bool:
        consumer = self._consumer
        return self._stopping.is_set() or (consumer is not None and consumer.stop_flag.is_set())

    # -- the task -------------------------------------------------------------------------------------
    def build_version(self, shop: str, version: int, task: Any = None) -> None:
        """Build one version unless it is finished, built elsewhere right now, or overtaken."""
        claimed = self._claim(shop, version)
        if claimed is None:
            return
        job, attempt = claimed
        t0 = time.perf_counter()
        outcome = self._run_child(job, attempt)
        self._settle(job, attempt, outcome, time.perf_counter() - t0, task)

    def _claim(self, shop: str, version: int) -> tuple[BuildJob, int] | None:
        now = utcnow()
        with self.db.session() as s:
            row = kb_repo.get_version(s, shop, version)
            if row is None or row.status != "building":
                log.info(
                    "build of version %d of shop %s: nothing to do (%s)", version, shop, row and row.status
                )
                return None
            seen = row.attempts
            beat = row.heartbeat_at
            if row.stage != QUEUED and beat is not None and beat > now - timedelta(seconds=STALE_AFTER):
                log.info(
                    "version %d of shop %s is being built by %s: not built twice", version, shop, row.worker
                )
                return None
            newer = kb_repo.latest_version(s, shop)
            if newer > version:  # publishes outpaced builds: only the newest KB is worth building
                self._finish(s, row.id, seen, "superseded", {}, f"version {newer} was published first")
                log.info("version %d of shop %s superseded by %d before its build", version, shop, newer)
                return None
            if seen >= self.max_attempts:
                self._finish(
                    s,
                    row.id,
                    seen,
                    "failed",
                    {"outcome": "failed"},
                    f"gave up after {seen} attempts: {row.error}",
                )
                return None
            claimed = s.execute(
                update(KBVersion)
                .where(KBVersion.id == row.id, KBVersion.status == "building", KBVersion.attempts == seen)
                .values(attempts=seen + 1, stage=STARTING, progress=0.0, worker=self._me(), heartbeat_at=now)
            )
            if not getattr(claimed, "rowcount", 0):
                log.info("version %d of shop %s claimed by another task: not built twice", version, shop)
                return None
            job = BuildJob(
                shop=shop,
                version=version,
                snapshot=list(row.snapshot),
                options=dict(row.options or {}),
                dense=bool(self.settings.dense),
                model_dir=str(self.registry.model_dir(shop, version)),
                min_self_recall=float(self.settings.min_self_recall),
                min_cv_top1=float(self.settings.min_cv_top1),
                nice=int(self.settings.build_nice),
                cpu_idle=bool(self.settings.build_cpu_idle),
                cpus=self.settings.build_cpu_set,
            )
        log.info("building version %d of shop %s (attempt %d)", version, shop, seen + 1)
        return job, seen + 1

    @staticmethod
    def _me(pid: int | None = None) -> str:
        return f"{socket.gethostname()}:{pid or os.getpid()}"[:100]

    def _touch(self, job: BuildJob, attempt: int, **values: Any) -> bool:
        """Update this attempt's row (progress, heartbeat); False when the attempt no longer holds it."""
        with self.db.session() as s:
            done = s.execute(
                update(KBVersion)
                .where(
                    KBVersion.shop_id == job.shop,
                    KBVersion.version == job.version,
                    KBVersion.status == "building",
                    KBVersion.attempts == attempt,
                )
                .values(heartbeat_at=utcnow(), **values)
            )
        return bool(getattr(done, "rowcount", 0))

    def _run_child(self, job: BuildJob, attempt: int) -> Outcome:
        """Run the build in a child process; watch its messages, the time limit and shutdown."""
        ctx = build_context(job.nice, job.cpus)
        reader, writer = ctx.Pipe(duplex=False)
        # only this process holds the lifeline's writing end: the child reads EOF when this one is gone
        lifeline, holder = ctx.Pipe(duplex=False)
        proc = ctx.Process(
            target=build_in_child,
            args=(job, writer, lifeline),
            name=f"kefu-build-{job.shop}-v{job.version}",
        )
        if ctx.get_start_method() == "spawn":
            # born lowered and on its CPUs: its interpreter start and imports too
            start_lowered(proc, job.nice, job.cpu_idle, job.cpus)
        else:
            proc.start()  # forked by the forkserver (born at its nice): build_in_child lowers itself at once
        writer.close()  # the child holds the only writing end: EOF when it exits
        lifeline.close()
        assert proc.pid is not None
        guard = StarvationGuard(proc.pid, job.nice, job.cpu_idle, float(self.settings.build_min_cpu_share))
        limit = float(self.settings.build_time_limit)
        deadline = time.monotonic() + limit
        next_beat = time.monotonic() + HEARTBEAT_EVERY
        try:
            self._safely(self._touch, job, attempt, worker=self._me(proc.pid))
            while True:
                now = time.monotonic()
                if now >= deadline:
                    return Outcome("timeout", f"build exceeded the time limit of {limit:g} s")
                if self._should_stop():
                    return Outcome("stopped", "the worker was shut down")
                if (step := guard.check(now)) is not None:
                    BUILD_PRIORITY_RAISED.labels(str(step.nice)).inc()
                if reader.poll(POLL):
                    try:
                        message = reader.recv()
                    except EOFError:
                        break
                    if message[0] == "outcome":
                        return Outcome(message[1], message[2])
                    _, stage, fraction = message
                    self._safely(self._touch, job, attempt, stage=stage, progress=fraction)
                    next_beat = time.monotonic() + HEARTBEAT_EVERY
                elif not proc.is_alive() and not reader.poll(0):
                    break
                elif now >= next_beat:
                    self._safely(self._touch, job, attempt)
                    next_beat = now + HEARTBEAT_EVERY
            proc.join(5)
            code = proc.exitcode
            how = (
                f"killed by {signal.Signals(-code).name}"
                if code is not None and code < 0
                else f"exit code {code}"
            )
            return Outcome("died", f"the build process ended without a result ({how})")
        finally:
            if proc.is_alive():
                proc.kill()
            proc.join(10)
            reader.close()
            holder.close()

    def _safely(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Progress and heartbeats are best effort: a database hiccup must not end a build."""
        try:
            fn(*args, **kwargs)
        except Exception as e:
            log.warning("build progress not recorded: %s", e)

    def _settle(self, job: BuildJob, attempt: int, outcome: Outcome, seconds: float, task: Any) -> None:
        """Record how the attempt ended; activate a ready version; raise for huey to retry a died one."""
        shop, version = job.shop, job.version
        kind = outcome.kind
        if kind == "stopped":
            # not the build's fault: put it back without counting the attempt, for the next consumer
            self._release(job, attempt, attempt - 1, None)
            self.enqueue(shop, version)
            log.info("build of version %d of shop %s interrupted by shutdown; queued again", version, shop)
            return
        if kind == "died":
            retries_left = task is None or getattr(task, "retries", 0) > 0
            if attempt < self.max_attempts and retries_left:
                delay = float(self.settings.build_retry_delay)
                note = f"attempt {attempt} failed: {outcome.detail}; retrying in {delay:g} s"
                self._release(job, attempt, attempt, note)
                log.warning("version %d of shop %s: %s", version, shop, note)
                raise BuildInterrupted(note)
            BUILD_SECONDS.labels("failed").observe(seconds)
            error = f"the build failed {attempt} time(s); last: {outcome.detail}"
            self._finish_attempt(job, attempt, "failed", {"outcome": "failed"}, error)
            return
        if kind != "ok":
            label = "rejected" if kind == "rejected" else "failed"
            BUILD_SECONDS.labels(label).observe(seconds)
            log.warning("version %d of shop %s %s: %s", version, shop, kind, outcome.detail)
            self._finish_attempt(job, attempt, "failed", {"outcome": kind}, str(outcome.detail)[:2000])
            return
        BUILD_SECONDS.labels("ok").observe(seconds)
        if not self._finish_attempt(job, attempt, "ready", dict(outcome.detail), None):
            return
        for n in range(1, ACTIVATE_TRIES + 1):
            try:
                self.activate(shop, version, forward_only=True)
                return
            except Exception as e:
                log.error("activating version %d of shop %s failed (try %d): %s", version, shop, n, e)
                time.sleep(n)

    def _release(self, job: BuildJob, attempt: int, attempts: int, note: str | None) -> None:
        with self.db.session() as s:
            s.execute(
                update(KBVersion)
                .where(
                    KBVersion.shop_id == job.shop,
                    KBVersion.version == job.version,
                    KBVersion.status == "building",
                    KBVersion.attempts == attempt,
                )
                .values(
                    attempts=attempts,
                    stage=QUEUED,
                    progress=0.0,
                    worker=None,
                    heartbeat_at=utcnow(),
                    error=note,
                )
            )

    def _finish_attempt(
        self, job: BuildJob, attempt: int, status: str, metrics: dict[str, Any], error: str | None
    ) -> bool:
        with self.db.session() as s:
            row = kb_repo.get_version(s, job.shop, job.version)
            if row is None:
                return False
            done = self._finish(s, row.id, attempt, status, metrics, error)
        if not done:
            log.warning(
                "version %d of shop %s was taken over by another worker: result dropped",
                job.version,
                job.shop,
            )
        return done

    @staticmethod
    def _finish(
        s: Any, row_id: int, attempts: int, status: str, metrics: dict[str, Any], error: str | None
    ) -> bool:
        """Finish a building version held at `attempts` (conditional: exactly one finisher)."""
        values: dict[str, Any] = {
            "status": status,
            "metrics": metrics,
            "error": error,
            "finished_at": utcnow(),
        }
        if status == "ready":
            values["progress"] = 1.0
        done = s.execute(
            update(KBVersion)
            .where(KBVersion.id == row_id, KBVersion.status == "building", KBVersion.attempts == attempts)
            .values(**values)
        )
        return bool(getattr(done, "rowcount", 0))

    # -- recovery -------------------------------------------------------------------------------------
    def sweep(self) -> int:
        """Put back on the queue the versions whose worker vanished (no heartbeat for STALE_AFTER s), fail
        those that used all their attempts, and enqueue again a version queued for REQUEUE_AFTER s (its task
        may be lost with a queue's storage). Safe on every process at once. Returns how many it touched."""
        now = utcnow()
        last_sign = func.coalesce(KBVersion.heartbeat_at, KBVersion.created_at)
        with self.db.session() as s:
            rows = s.execute(
                select(
                    KBVersion.id,
                    KBVersion.shop_id,
                    KBVersion.version,
                    KBVersion.stage,
                    KBVersion.attempts,
                    last_sign,
                ).where(KBVersion.status == "building", last_sign < now - timedelta(seconds=STALE_AFTER))
            ).all()
        touched = 0
        for row_id, shop, version, stage, attempts, seen_at in rows:
            if stage == QUEUED and seen_at > now - timedelta(seconds=REQUEUE_AFTER):
                continue  # waiting in the queue: its task is there
            with self.db.session() as s:
                if stage != QUEUED and attempts >= self.max_attempts:
                    error = f"the worker building it stopped; gave up after {attempts} attempt(s)"
                    if self._finish(s, row_id, attempts, "failed", {"outcome": "failed"}, error):
                        log.warning("version %d of shop %s: %s", version, shop, error)
                        touched += 1
                    continue
                values: dict[str, Any] = {"stage": QUEUED, "heartbeat_at": now}
                if stage != QUEUED:
                    values |= {"progress": 0.0, "worker": None}
                    values["error"] = f"attempt {attempts}: the worker building it stopped; queued again"
                moved = s.execute(
                    update(KBVersion)
                    .where(
                        KBVersion.id == row_id,
                        KBVersion.status == "building",
                        KBVersion.attempts == attempts,
                        KBVersion.stage.is_(None) if stage is None else KBVersion.stage == stage,
                    )
                    .values(**values)
                )
            if getattr(moved, "rowcount", 0):
                self.enqueue(shop, version)
                log.warning("version %d of shop %s (%s) queued again by the sweep", version, shop, stage)
                touched += 1
        return touched
