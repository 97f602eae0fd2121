"""Publishing a shop's KB: freeze it as a version, have it built on the task queue, then swap it in.

The request that publishes returns at once with the new version number: it writes the version row (status
building; api/kb/freeze.py, in the service's KB process) and enqueues its build (api/kb/builds.py). A
queue worker builds the model in a child process from the frozen snapshot, checks it (every KB question
must find its own entry, and the model's held-out paraphrase accuracy must clear a floor), writes it under
the shop's data directory, records the version as ready and activates it. Activation is a database update
plus a notification on the store's pub/sub channel: every replica, this one included, then loads that
version and swaps.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, Literal

from sqlalchemy.orm import Session

from api.db.models import KBVersion, Shop
from api.db.session import Database
from api.kb import repo as kb_repo
from api.kb.build_child import BuildRejected, evaluate_model
from api.kb.freeze import Frozen, engine_options, freeze, with_catalog_words
from api.kb.registry import ModelRegistry
from api.metrics import MODEL_VERSION
from engine import Matcher

log = logging.getLogger("kefu.publish")

CHANNEL = "models"
# the key of a ready version's metrics that says why its build did not activate it (a rollback came after
# its publish); dropped when the version is activated
NOT_ACTIVATED = "not_activated"
# a ready version not yet active whose build will activate it (version_state "activating"): after this
# long it is counted as not active (the build's activation failed; the merchant can activate it)
ACTIVATION_GRACE = timedelta(minutes=2)
VersionState = Literal["building", "failed", "superseded", "live", "activating", "inactive"]
__all__ = [
    "ACTIVATION_GRACE",
    "CHANNEL",
    "NOT_ACTIVATED",
    "BuildRejected",
    "Publication",
    "Publisher",
    "VersionState",
    "engine_options",
    "evaluate_model",
    "follows",
    "version_state",
    "with_catalog_words",
]


@dataclass(frozen=True)
class Publication:
    """What a publish did: `version` is new and queued for its build, or an existing one (`reused`)."""

    version: int
    reused: bool  # the KB and options equal this building or ready version's: nothing new was made


def follows(row: KBVersion, active_row: KBVersion | None) -> bool:
    """Whether the build of `row` may replace the active version (`active_row`, None: no version is
    active): yes unless the merchant asked for the active version (published it, published its KB again,
    or activated it: KBVersion.request_seq) after this one. Publisher.activate's rule for a finished build."""
    return active_row is None or (active_row.request_seq or 0) <= (row.request_seq or 0)


def version_state(row: KBVersion, active_row: KBVersion | None, now: datetime | None = None) -> VersionState:
    """What a version is to the merchant: building, failed or superseded as its status says; a ready
    one is `live` (the shop's active version, `active_row`), `activating` (its build finished and is
    activating it: the merchant asked for no other version since, see `follows`), or `inactive` (ready
    but not served: an older version, or one whose build ended after a rollback, which stuck). An
    activation that has not come ACTIVATION_GRACE after the build ended counts as not coming. Pure: reads
    the two rows only (`now` defaults to the current time)."""
    if row.status != "ready":
        return row.status  # type: ignore[return-value]  # building, failed or superseded
    if active_row is not None and active_row.version == row.version:
        return "live"
    if NOT_ACTIVATED in (row.metrics or {}):
        return "inactive"
    finished = row.finished_at
    recent = finished is None or finished > (now or datetime.now(UTC)) - ACTIVATION_GRACE
    return "activating" if recent and follows(row, active_row) else "inactive"


class Publisher:
    """Numbers versions, hands their builds to the queue, activates and loads versions."""

    def __init__(
        self,
        db: Database,
        registry: ModelRegistry,
        notify: Any,
        enqueue: Callable[[str, int], None],
        freezer: Callable[[str], Frozen] | None = None,
    ) -> None:
        self.db = db
        # where a publish's numbering transaction runs (the service passes the KB process); here by default
        self.freezer: Callable[[str], Frozen] = freezer or partial(freeze, db)
        self.registry = registry
        self.notify = notify  # callable(channel, message)
        self.enqueue = enqueue  # puts (shop, version) on the build queue (api.kb.builds.BuildQueue.enqueue)
        # loads are separate from builds: a long build must not delay another shop's swap
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kefu-load")
        self._pending: set[tuple[str, int]] = set()
        self._pending_lock = threading.Lock()

    def publish(self, shop: str) -> Publication:
        """Freeze the shop's KB as a new version and enqueue its build.

        If the shop's latest building-or-ready version froze the same KB (kb_hash) with the same engine
        options, that version is returned instead (`reused`): no row, no build. A ready one that is not
        the active version (the merchant rolled back) is activated, and a building one is asked for again
        (activated when ready, even if the merchant rolled back meanwhile), so a publish always ends with
        this KB served. Publishes of one shop run one at a time on every backend and across processes
        (api.kb.freeze.freeze). KBValidationError when the KB has problems: nothing is created.
        """
        return self.queue_frozen(shop, self.freezer(shop))

    def queue_frozen(self, shop: str, frozen: Frozen) -> Publication:
        """The rest of a publish once frozen (here or in the KB process): queue the new version's build,
        or activate the ready version it repeats if that is not the one served."""
        if frozen.reused_status is None:
            try:
                self.enqueue(shop, frozen.version)
            except Exception as e:  # the queue's storage is down: no build will come, say so on the version
                with self.db.session() as s:
                    reason = f"the build could not be queued: {type(e).__name__}: {e}"[:2000]
                    kb_repo.finish_version(s, shop, frozen.version, "failed", {"outcome": "failed"}, reason)
                raise
            return Publication(frozen.version, False)
        log.info("publish of shop %s repeats version %d (%s)", shop, frozen.version, frozen.reused_status)
        if frozen.reused_status == "ready" and frozen.active != frozen.version:
            self.activate(shop, frozen.version)
        return Publication(frozen.version, True)

    def activate(
        self,
        shop: str,
        version: int,
        matcher: Matcher | None = None,
        *,
        forward_only: bool = False,
        with_locked: Callable[[Session, KBVersion, int | None], None] | None = None,
    ) -> bool:
        """Make `version` the shop's served version everywhere (also used for rollback).

        An explicit activation (not `forward_only`: a rollback, or a publish repeating a ready version)
        sticks: it gives the version the shop's next request number (KBVersion.request_seq), so the
        builds still running for versions asked for before it finish ready without being activated.

        `forward_only` (a finished build): activate only if the merchant asked for this version (published
        it, or published its KB again while it built) after the active one. Replicas build in parallel and
        finish out of order; an older build finishing last must not bring its KB back, nor a build that was
        running when the merchant rolled back undo the rollback (its metrics then say so under
        NOT_ACTIVATED). The shop row is locked (SQLite: the write lock), so two replicas activating at once
        cannot both pass the check. `with_locked(session, version row, active version)` runs in the same
        transaction with the shop row locked (a rollback restores the editable KB there); if it raises,
        nothing changes.
        """
        with self.db.session(write_lock=True) as s:
            shop_row = kb_repo.lock_shop(s, shop)  # first: the version is read as the last activation left it
            row = kb_repo.get_version(s, shop, version)
            if row is None or row.status != "ready":
                raise ValueError(f"version {version} of shop {shop} is not a ready version")
            assert shop_row is not None
            active = shop_row.active_version
            if forward_only and not self._follows_active(s, shop, row, active):
                return False
            if with_locked is not None:
                with_locked(s, row, active)
            if not forward_only:
                row.request_seq = kb_repo.next_request(s, shop)
                if NOT_ACTIVATED in (row.metrics or {}):
                    row.metrics = {k: v for k, v in row.metrics.items() if k != NOT_ACTIVATED}
            shop_row.active_version = version
        if matcher is not None:
            self.registry.swap(shop, version, matcher)
        MODEL_VERSION.labels(shop).set(version)
        self.notify(CHANNEL, {"shop": shop, "version": version})
        return True

    @staticmethod
    def _follows_active(s: Session, shop: str, row: KBVersion, active: int | None) -> bool:
        """Whether a finished build may replace the active version (in activate's locked transaction):
        yes unless the merchant asked for the active version after this one. When a rollback is why not,
        the version's metrics say so (NOT_ACTIVATED)."""
        active_row = kb_repo.get_version(s, shop, active) if active is not None else None
        if active_row is None or follows(row, active_row):
            return True
        version = row.version
        if active_row.version > version:
            log.info("version %d of shop %s is ready; not activated, %d is newer", version, shop, active)
            return False
        row.metrics = {
            **(row.metrics or {}),
            NOT_ACTIVATED: f"ready but not activated: version {active} was activated explicitly (rolled back "
            f"to) after version {version} was published, and stays served; to serve version {version}, "
            f"activate it (kb/versions/{version}/activate)",
        }
        log.info(
            "version %d of shop %s is ready; not activated: version %d was activated explicitly after it was "
            "published (a rollback), and stays served",
            version,
            shop,
            active,
        )
        return False

    def on_notice(self, message: dict[str, Any]) -> None:
        """Another replica (or this one) activated a version: load it, then swap, if this replica has
        the shop's model loaded; otherwise nothing: the version loads on the shop's next message.

        A shop not loaded here is not preloaded (KEFU_WARM_UP preloads at start only): ten shops publishing
        at once had every serving process load ten models on its own CPUs, the p99 of every other shop's
        messages up by a third while they did (`kefu loadtest --publishers 10 --split-cpus`)."""
        shop, version = str(message.get("shop")), int(message.get("version", 0))
        served = self.registry.peek(shop)
        if served is None or served.version == version:
            return

        snapshot = partial(kb_repo.snapshot_of_version, self.db, shop, version)
        with self._pending_lock:
            if (shop, version) in self._pending:
                return
            self._pending.add((shop, version))
        self._loader.submit(self._load_and_swap, shop, version, snapshot)

    def _load_and_swap(self, shop: str, version: int, snapshot: Any) -> None:
        try:
            matcher = self.registry.load(shop, version, snapshot)
            with self.db.session() as s:
                row = s.get(Shop, shop)
                current = row.active_version if row is not None else None
            if current != version:  # a later activation overtook this notice
                return
            self.registry.swap(shop, version, matcher)
            MODEL_VERSION.labels(shop).set(version)
        except Exception as e:
            log.error("could not load version %d of shop %s: %s", version, shop, e)
        finally:
            with self._pending_lock:
                self._pending.discard((shop, version))

    def shutdown(self) -> None:
        self._loader.shutdown(wait=False, cancel_futures=True)
