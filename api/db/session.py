"""Engines and sessions: SQLite embedded by default, PostgreSQL for multi-replica deployments."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker


def make_engine(url: str) -> Engine:
    """An engine for `url`; SQLite gets WAL and foreign keys, so concurrent readers never block a writer."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=10)


class Database:
    """One engine and its session factory."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self, *, write_lock: bool = False) -> Iterator[Session]:
        """A transaction: committed when the block ends, rolled back on error.

        `write_lock`: on SQLite, start with BEGIN IMMEDIATE, taking the database's write lock before the
        first read, so a read-then-write transaction (numbering a version) runs alone across threads and
        processes sharing the file; SQLite ignores SELECT ... FOR UPDATE and would otherwise let two of
        them read the same state. On PostgreSQL nothing changes: such transactions lock rows FOR UPDATE.
        """
        with self.sessions() as s, s.begin():
            if write_lock and self.engine.dialect.name == "sqlite":
                # pysqlite opens transactions lazily (before the first write), so this is the first
                # statement of the connection's transaction; it waits up to busy_timeout for the lock
                s.connection().exec_driver_sql("BEGIN IMMEDIATE")
            yield s

    def dispose(self) -> None:
        self.engine.dispose()
