"""The exchange log written off the reply path: rows buffered in memory, inserted in batches by one thread.

A reply masks and builds its row (api.store.exchanges.exchange_row), takes the row's id at once (made in
the process: api/db/ids.py) and hands the row to a bounded buffer; it never waits for the database. A
writer thread inserts what is waiting every KEFU_EXCHANGE_LOG_FLUSH_MS milliseconds, or as soon as
KEFU_EXCHANGE_LOG_BATCH rows wait: one INSERT (executemany) in one transaction per batch.

Guarantees:
- Nothing is lost on a clean shutdown: close() writes every buffered row before the service ends (it
  keeps trying for CLOSE_TIMEOUT seconds while the database is down, then logs how many rows it lost).
- Readers in the same process see their own writes: sync() returns once every row logged before it is in
  the database (at once when none waits); feedback, the exchange list, the console and the reports call
  it. Another process or replica sees a row within one flush interval.
- Bounded: at most KEFU_EXCHANGE_LOG_BUFFER rows wait. When the buffer is full (the database is slow or
  down), the reply writes its own row synchronously, as every reply did before: back-pressure, not a
  silent drop; such rows are counted (kefu_exchange_log_rows_total{path="overflow"}) and a reply fails,
  as before, if its row cannot be written.
- A failed batch is kept and retried with backoff (FIRST_BACKOFF doubling to MAX_BACKOFF seconds). A
  batch the database refuses for its data (IntegrityError / DataError: the shop was deleted meanwhile, or
  a row already written by an attempt whose commit reply was lost) is written row by row, and only the
  refused rows are dropped, logged and counted (kefu_exchange_log_rejected_total).

KEFU_EXCHANGE_LOG_FLUSH_MS=0 turns the buffer off: each reply inserts its row before it returns.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.exc import DataError, IntegrityError

from api.db.ids import GENERATOR, NODE_MASK, next_exchange_id
from api.db.models import Exchange, IdWriter
from api.db.session import Database
from api.metrics import (
    EXCHANGE_LOG_BATCHES,
    EXCHANGE_LOG_FAILURES,
    EXCHANGE_LOG_FLUSH_SECONDS,
    EXCHANGE_LOG_PENDING,
    EXCHANGE_LOG_REJECTED,
    EXCHANGE_LOG_ROWS,
)
from api.store.exchanges import exchange_row, insert_rows

log = logging.getLogger("kefu.exchange_log")

FIRST_BACKOFF = 0.2  # seconds before the first retry of a failed batch
MAX_BACKOFF = 5.0
CLOSE_TIMEOUT = 30.0  # seconds close() keeps trying to write what is left
SYNC_TIMEOUT = 5.0  # seconds a reader waits for its rows before it reads without them


def claim_node(db: Database, keep: int = NODE_MASK + 1) -> int:
    """Make this process's exchange ids with a node no live process has (one row in `id_writers`).

    Only the last `keep` claims can matter (the node is the row number modulo 16,384), so older rows are
    deleted here: the table stays bounded however often processes restart."""
    with db.session() as s:
        row = IdWriter(host=socket.gethostname()[:255], pid=os.getpid())
        s.add(row)
        s.flush()
        node = row.id
        s.execute(delete(IdWriter).where(IdWriter.id <= node - keep))
    GENERATOR.set_node(node)
    return node


def _why(e: BaseException) -> str:
    """The driver's one-line reason, without the statement and its parameters (customer text, masked or not,
    stays out of the log)."""
    cause = getattr(e, "orig", None) or e
    lines = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {lines[0][:200] if lines else ''}"


class ExchangeLog:
    """The service's exchange writer: log() on the reply path, sync() before reading, close() at the end."""

    def __init__(
        self, db: Database, *, flush_ms: int = 200, batch: int = 500, capacity: int = 10_000
    ) -> None:
        self.db = db
        self.interval = flush_ms / 1000
        self.batch = max(1, batch)
        self.capacity = max(1, capacity)
        # waiting rows, oldest first, with the monotonic time each was logged; ids are made under the lock,
        # so they increase along the list
        self._rows: list[tuple[float, dict[str, Any]]] = []
        self._cond = threading.Condition()
        self._logged = 0  # rows ever put in the buffer
        self._done = 0  # rows ever taken out of it (written, or refused by the database)
        self._urgent = False  # a reader waits: write now, not at the end of the interval
        self._closing = False
        self._thread: threading.Thread | None = None
        if self.interval > 0:
            self._thread = threading.Thread(target=self._run, name="kefu-exchange-log", daemon=True)
            self._thread.start()

    def log(self, **fields: Any) -> int:
        """Log one exchange (api.store.exchanges.exchange_row's fields); returns its id at once."""
        row = exchange_row(**fields)  # masking, the costly part, outside the lock
        path = "direct"
        if self._thread is not None:
            with self._cond:
                if not self._closing:
                    if len(self._rows) < self.capacity:
                        row["id"] = next_exchange_id()
                        self._rows.append((time.monotonic(), row))
                        self._logged += 1
                        if len(self._rows) in (1, self.batch):  # the interval starts, or a batch is full
                            self._cond.notify_all()
                        EXCHANGE_LOG_PENDING.set(len(self._rows))
                        return int(row["id"])
                    path = "overflow"
        row["id"] = next_exchange_id()
        with self.db.engine.begin() as conn:  # the database's slowness reaches this reply: back-pressure
            insert_rows(conn, [row])
        EXCHANGE_LOG_ROWS.labels(path).inc()
        return int(row["id"])

    def pending(self) -> int:
        """Rows waiting for the writer."""
        return self._logged - self._done

    def sync(self, exchange_id: int | None = None, timeout: float = SYNC_TIMEOUT) -> bool:
        """Wait until the rows logged before this call are in the database (with `exchange_id`: only if
        that exchange is one of them); True when they are, False after `timeout` (the database is down)."""
        if self._done >= self._logged:  # nothing waits: no lock, no wait
            return True
        with self._cond:
            if exchange_id is not None and not (self._rows and self._rows[0][1]["id"] <= exchange_id):
                return True
            target = self._logged
            self._urgent = True
            self._cond.notify_all()
            ok = self._cond.wait_for(lambda: self._done >= target, timeout)
        if not ok:
            log.warning("exchange log: rows still unwritten after %.1f s; reading without them", timeout)
        return ok

    def close(self, timeout: float = CLOSE_TIMEOUT) -> int:
        """Write every buffered row, then stop the writer; returns how many rows could not be written
        (0 unless the database stayed unreachable for `timeout` seconds). Later log() calls write directly."""
        thread = self._thread
        if thread is None:
            return 0
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        thread.join(timeout)
        with self._cond:
            self._thread = None
            lost = len(self._rows)
            self._rows.clear()
            self._done = self._logged
            self._cond.notify_all()
        EXCHANGE_LOG_PENDING.set(0)
        if lost:
            log.error("exchange log: %d exchanges not written at shutdown (the database stayed down)", lost)
        return lost

    # ------------------------------------------------------------------ the writer thread

    def _run(self) -> None:
        retry_at = 0.0
        backoff = 0.0
        while True:
            with self._cond:
                while True:
                    if self._thread is None:  # close() gave up waiting and counted the rest as lost
                        return
                    if not self._rows:
                        if self._closing:
                            return
                        self._cond.wait()
                        continue
                    now = time.monotonic()
                    if now < retry_at:  # a failed batch: not retried before its backoff is over
                        self._cond.wait(retry_at - now)
                        continue
                    due = self._rows[0][0] + self.interval - now
                    if self._closing or self._urgent or len(self._rows) >= self.batch or due <= 0:
                        break
                    self._cond.wait(due)
                taken = [row for _, row in self._rows[: self.batch]]
            done, failed = self._write(taken)
            with self._cond:
                if self._thread is None:
                    return
                del self._rows[:done]
                self._done += done
                if not self._rows:
                    self._urgent = False
                EXCHANGE_LOG_PENDING.set(len(self._rows))
                self._cond.notify_all()
            if failed:
                backoff = min(MAX_BACKOFF, backoff * 2 or FIRST_BACKOFF)
                retry_at = time.monotonic() + backoff
            else:
                backoff = 0.0

    def _write(self, rows: list[dict[str, Any]]) -> tuple[int, bool]:
        """Insert `rows` in one transaction: (rows taken care of, whether the database failed)."""
        t0 = time.perf_counter()
        try:
            with self.db.engine.begin() as conn:
                insert_rows(conn, rows)
        except (IntegrityError, DataError) as e:
            log.warning(
                "exchange log: a batch of %d was refused (%s); writing it row by row", len(rows), _why(e)
            )
            return self._write_each(rows)
        except Exception as e:
            EXCHANGE_LOG_FAILURES.inc()
            log.warning("exchange log: writing %d rows failed, kept for a retry: %s", len(rows), _why(e))
            return 0, True
        EXCHANGE_LOG_FLUSH_SECONDS.observe(time.perf_counter() - t0)
        EXCHANGE_LOG_BATCHES.inc()
        EXCHANGE_LOG_ROWS.labels("batch").inc(len(rows))
        return len(rows), False

    def _write_each(self, rows: list[dict[str, Any]]) -> tuple[int, bool]:
        """A refused batch one row at a time: only the rows the database refuses are dropped (a row already
        there, from an attempt whose commit went through unacknowledged, counts as written)."""
        for i, row in enumerate(rows):
            try:
                with self.db.engine.begin() as conn:
                    insert_rows(conn, [row])
                EXCHANGE_LOG_ROWS.labels("batch").inc()
            except (IntegrityError, DataError) as e:
                try:
                    with self.db.engine.connect() as conn:
                        there = conn.scalar(select(Exchange.id).where(Exchange.id == row["id"]))
                except Exception:
                    EXCHANGE_LOG_FAILURES.inc()
                    return i, True
                if there is None:
                    EXCHANGE_LOG_REJECTED.inc()
                    log.error(
                        "exchange log: exchange %s of shop %r dropped, the database refuses it: %s",
                        row["id"],
                        row["shop_id"],
                        _why(e),
                    )
            except Exception as e:
                EXCHANGE_LOG_FAILURES.inc()
                log.warning("exchange log: writing row by row failed, kept for a retry: %s", _why(e))
                return i, True
        return len(rows), False
