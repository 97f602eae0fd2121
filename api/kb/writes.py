"""A KB upload's and a publish's database writes, run in the KB process (api/kb/parsing.py).

Storing an uploaded KB (an ORM row per entry) and freezing a publish (api/kb/freeze.py) took 13-14 ms of
the serving process's CPU per upload-and-publish of the demo KB; ten shops uploading at once held a
serving CPU for 0.14 s and the customer messages that came meanwhile waited up to 116 ms (`kefu loadtest
--publishers 10 --split-cpus` on PostgreSQL + Redis). In the KB process (on KEFU_BUILD_CPUS when they are
set) the serving process only receives the file and queues the build. The process opens its own
connections to the same database; SQLite's write lock and PostgreSQL's row locks order its writes with
every other writer's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import text

from api.db.session import Database
from api.kb import repo as kb_repo
from api.kb.freeze import Frozen, freeze
from api.kb.parsing import parse_file
from engine.kb import KBEntry, KBIssue, ReadLimits

_databases: dict[str, Database] = {}


def database(url: str) -> Database:
    """This process's engine for `url`, made once (a connection pool per process)."""
    db = _databases.get(url)
    if db is None:
        db = _databases[url] = Database(url)
    return db


def warm(url: str) -> None:
    """Ready this process for uploads and publishes: unpickling this function imported what they run
    (SQLAlchemy, the ORM, the KB reader: about 0.7 s), and the query opens the database's pool."""
    with database(url).session() as s:
        s.execute(text("SELECT 1"))


@dataclass(frozen=True)
class Stored:
    """What an upload stored: the number of entries, the reader's warnings, the publish's freeze (None:
    the upload did not publish)."""

    entries: int
    warnings: list[KBIssue] = field(default_factory=list)
    frozen: Frozen | None = None


def store_entries(db: Database, shop: str, entries: list[KBEntry], publish: bool) -> Stored:
    """Replace the shop's editable KB with `entries` (all or nothing) and, with `publish`, freeze it."""
    with db.session(write_lock=True) as s:
        kb_repo.replace_all(s, shop, entries)
    frozen = freeze(db, shop) if publish else None
    # engine.kb.KBEntries: what loaded but deserves a look (ignored columns, hidden rows ...)
    return Stored(len(entries), list(getattr(entries, "warnings", ())), frozen)


def store_upload(
    url: str, shop: str, name: str, suffix: str, data: bytes, limits: ReadLimits, publish: bool
) -> Stored:
    """Read an uploaded file and store it (KBValidationError / KBTooLarge: nothing was stored)."""
    return store_entries(database(url), shop, parse_file(name, suffix, data, limits), publish)


def freeze_publish(url: str, shop: str) -> Frozen:
    """A publish's numbering transaction (api.kb.freeze.freeze) on the database at `url`."""
    return freeze(database(url), shop)
