"""Freezing a shop's editable KB as a version: the numbering transaction of a publish.

Kept apart from the publisher (which imports the engine and the model registry) so the KB process
(api/kb/parsing.py) can freeze a publish with the database layer alone: reading the KB back, validating,
hashing and numbering cost 10 ms of CPU per publish of the demo KB, which is KB work, not serving's.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, NamedTuple

from sqlalchemy.exc import IntegrityError

from api.catalog import repo as catalog_repo
from api.db.session import Database
from api.kb import repo as kb_repo
from engine.kb import kb_hash

log = logging.getLogger("kefu.publish")

ENGINE_OPTIONS = (
    "user_words",
    "synonyms",
    "stopwords",
    "human_phrases",
    "target_precision",
    "threshold_confidence",
)


def engine_options(settings: dict[str, Any] | None) -> dict[str, Any]:
    """The part of a shop's settings that shapes its model (passed to Matcher.build)."""
    return {k: v for k, v in (settings or {}).items() if k in ENGINE_OPTIONS and v is not None}


def with_catalog_words(options: dict[str, Any], words: Sequence[str]) -> dict[str, Any]:
    """The options with the catalog's model and product names added to the segmenter's dictionary, so a
    model name ("星曜14") is one word of the FAQ's index and of the customer's message."""
    if not words:
        return options
    own = list(options.get("user_words") or [])
    return {**options, "user_words": own + [w for w in words if w not in own]}


class Frozen(NamedTuple):
    """What a publish's numbering transaction decided (small: it crosses from the KB process)."""

    version: int
    reused_status: str | None  # the status of the version this publish repeats; None: a new version
    active: int | None  # the shop's active version when it froze


def freeze(db: Database, shop: str) -> Frozen:
    """A new version row (status building) for the shop's editable KB, or the building or ready version
    that froze the same KB with the same options (kb_repo.reusable_version), which is then asked for again.

    KBValidationError when the KB has problems (nothing is created). The shop row is locked (PostgreSQL)
    or the transaction holds SQLite's write lock from its start: publishes of one shop run one at a time
    across threads, processes and replicas."""
    for attempt in (1, 2):
        try:
            return _freeze_once(db, shop)
        except IntegrityError:  # the locks make this unreachable; a last guard, not the mechanism
            if attempt == 2:
                raise
            log.warning("version number of shop %s taken by a concurrent publish; numbering again", shop)
    raise AssertionError("unreachable")


def _freeze_once(db: Database, shop: str) -> Frozen:
    with db.session(write_lock=True) as s:
        shop_row = kb_repo.lock_shop(s, shop)  # before reading: a concurrent publish waits here
        entries = kb_repo.snapshot(s, shop)  # KBValidationError: nothing is created
        options = engine_options(shop_row.settings if shop_row else None)
        options = with_catalog_words(options, catalog_repo.dictionary_words(s, shop))
        active = shop_row.active_version if shop_row else None
        same = kb_repo.reusable_version(s, shop, kb_hash(entries), options)
        if same is not None:
            if same.status == "building":
                # asked for again, now: activated when built, even after a rollback (Publisher.activate)
                same.request_seq = kb_repo.next_request(s, shop)
            return Frozen(same.version, same.status, active)
        row = kb_repo.create_version(s, shop, entries, options)
        return Frozen(row.version, None, active)
