"""Schema migrations with Alembic, run at service start (idempotent) or with `kefu db upgrade`.

Several processes may start at once (`uvicorn --workers N`, replicas), and each runs `upgrade`. Without
a lock two of them both see an empty database and both create the tables: one dies with `table ...
already exists`. So the upgrade is serialized: a PostgreSQL advisory lock, or on SQLite a file lock
beside the database file (SQLite itself has no lock that spans the check and the DDL).
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

from alembic import command
from alembic.config import Config
from filelock import FileLock
from sqlalchemy import Engine

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
ADVISORY_LOCK_ID = 716255
LOCK_TIMEOUT_SECONDS = 600  # a long migration on a big database; past this, fail loudly


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def sqlite_lock_path(engine: Engine) -> Path | None:
    """The lock file beside a SQLite database file; None for an in-memory database (one process only)."""
    if engine.dialect.name != "sqlite":
        return None
    database = engine.url.database
    if not database or database == ":memory:" or database.startswith("file::memory:"):
        return None
    path = Path(database)
    return path.with_name(path.name + ".migrate.lock")


def _file_lock(engine: Engine) -> AbstractContextManager[object]:
    """Held around a SQLite upgrade: it spans processes, as the workers of one server are."""
    path = sqlite_lock_path(engine)
    if path is None:
        return nullcontext()
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(path, timeout=LOCK_TIMEOUT_SECONDS)


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the database to `revision`; safe when several processes run it at once, on any backend."""
    cfg = alembic_config(str(engine.url))
    with _file_lock(engine), engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({ADVISORY_LOCK_ID})")
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
