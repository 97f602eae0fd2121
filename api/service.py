"""The multi-shop service: database, shared state, model registry and publisher, wired once per app."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool
from datetime import timedelta
from functools import partial
from typing import Any

from sqlalchemy import delete, event, select, tuple_
from sqlalchemy.orm import Session

from api.db.migrate import upgrade
from api.db.models import JdMessage, Shop, utcnow
from api.db.session import Database
from api.kb import repo as kb_repo
from api.kb import writes as kb_writes
from api.kb.builds import QUEUED, STARTING, BuildQueue
from api.kb.freeze import Frozen, freeze
from api.kb.parsing import UploadParser
from api.kb.publisher import CHANNEL, Publisher
from api.kb.registry import Holding, ModelRegistry, ServedModel
from api.metrics import MODEL_VERSION
from api.settings import Settings
from api.store.exchange_log import ExchangeLog, claim_node
from api.store.kv import make_store
from api.web.keycache import ShopKeyCache
from engine.kb import ReadLimits

log = logging.getLogger("kefu.service")


CHANGED_SHOPS = "kefu.shops_changed"  # Session.info key: the shop rows a transaction wrote
PRUNE_BATCH = 1000  # rows per delete: short transactions, no long lock on a big backlog
BUILD_SWEEP_EVERY = 60.0  # seconds between two looks for builds whose worker vanished


class Service:
    """Everything a shop request needs; created in the app's lifespan."""

    def __init__(self, settings: Settings) -> None:
        from api.catalog.skill import Catalogs
        from api.dialog.conversation import Conversations

        self.settings = settings
        self.db = Database(settings.database_url)
        upgrade(self.db.engine)
        self.store = make_store(settings.redis_url, prefix=settings.redis_prefix)
        self.registry = ModelRegistry(
            settings.data_dir,
            dense=settings.dense,
            memory_mb=settings.model_memory_mb,
            holding=Holding(settings.shard_pair, settings.shard_shop_ids),
            cascade=settings.cascade,
        )
        # uploads are read and stored, and publishes frozen, in a child process (the KB process), on the
        # build CPUs when they are set (api/kb/parsing.py, api/kb/writes.py)
        self.upload_parser = UploadParser(settings.build_cpu_set)
        self.publisher = Publisher(
            self.db,
            self.registry,
            self.store.publish,
            enqueue=lambda shop, v: self.builds.enqueue(shop, v),
            freezer=self._freeze_in_kb_process,
        )
        # the KB build queue (huey); consumed here when KEFU_BUILD_IN_PROCESS, else by `kefu worker`
        self.builds = BuildQueue(self.db, settings, self.registry, self.publisher.activate)
        self.conversations = Conversations(self.store, ttl_seconds=settings.conversation_ttl)
        # what a conversation turn reads of a shop without asking the database every time (issue 9)
        self.shop_keys = ShopKeyCache(settings.lookup_cache_seconds)
        self.catalogs = Catalogs(self.db, ttl=settings.lookup_cache_seconds)
        self._watch_writes()
        # exchange ids made here need a node of their own among live processes (api/db/ids.py)
        claim_node(self.db)
        self.exchange_log = ExchangeLog(
            self.db,
            flush_ms=settings.exchange_log_flush_ms,
            batch=settings.exchange_log_batch,
            capacity=settings.exchange_log_buffer,
        )
        self._subscription = self.store.subscribe(CHANNEL, self._on_notice)
        self._secret_box: Any = None
        self._stopping = threading.Event()
        self._jd_queue: Any = None
        self._jd_queue_lock = threading.Lock()

    def start_kb_process(self) -> None:
        """Start the KB process in the background, ready for the first upload (imports, database pool)."""
        self.upload_parser.start(kb_writes.warm, self.settings.database_url)

    def _freeze_in_kb_process(self, shop: str) -> Frozen:
        """A publish's numbering transaction in the KB process: off the serving CPUs. A process that died
        (out of memory) is not the KB's fault: frozen here then, and the next call starts a new one."""
        try:
            return self.upload_parser.call(kb_writes.freeze_publish, self.settings.database_url, shop)
        except BrokenProcessPool:
            log.warning("the KB process died; freezing the publish of shop %s in this process", shop)
            return freeze(self.db, shop)

    async def store_upload(
        self, shop: str, name: str, suffix: str, data: bytes, limits: ReadLimits, publish: bool
    ) -> kb_writes.Stored:
        """Read, validate and store an uploaded KB file in the KB process, and with `publish` freeze it
        (queue the build with publisher.queue_frozen). KBValidationError / KBTooLarge: nothing was
        stored. A file that kills the process (BrokenProcessPool) is not read here instead."""
        return await self.upload_parser.run(
            kb_writes.store_upload, self.settings.database_url, shop, name, suffix, data, limits, publish
        )

    def _watch_writes(self) -> None:
        """Drop the cached lookups of a shop once a transaction of this process that wrote its row or its
        catalog commits: every ORM write to `shops` (key rotation, mode, settings, credentials, an
        activation), and the catalog's writes, which api.catalog.repo marks. Dropped after the commit,
        not before, so a turn cannot read the old row again and keep it."""
        from api.catalog.repo import CHANGED as CHANGED_CATALOGS

        def after_flush(session: Session, _context: Any) -> None:
            rows = [o for o in (*session.new, *session.dirty, *session.deleted) if isinstance(o, Shop)]
            if rows:
                session.info.setdefault(CHANGED_SHOPS, set()).update(row.id for row in rows)

        def after_commit(session: Session) -> None:
            for shop in session.info.pop(CHANGED_SHOPS, ()):
                self.shop_keys.invalidate(shop)
            for shop in session.info.pop(CHANGED_CATALOGS, ()):
                self.catalogs.invalidate(shop)

        def after_rollback(session: Session) -> None:
            session.info.pop(CHANGED_SHOPS, None)
            session.info.pop(CHANGED_CATALOGS, None)

        self._session_listeners: list[tuple[str, Callable[..., None]]] = [
            ("after_flush", after_flush),
            ("after_commit", after_commit),
            ("after_rollback", after_rollback),
        ]
        for name, fn in self._session_listeners:
            event.listen(self.db.sessions, name, fn)

    def _on_notice(self, message: dict[str, Any]) -> None:
        """A version was activated (by any process): the shop's cached row names the old active version.
        (A notice missed is caught up by the reconciler, seconds later: by then the TTL has run out.)"""
        self.shop_keys.invalidate(str(message.get("shop")))
        self.publisher.on_notice(message)

    @property
    def jd_queue(self) -> Any:
        """The queue of async JD replies (api.jd.queue.JdQueue), opened on first use."""
        with self._jd_queue_lock:
            if self._jd_queue is None:
                from api.jd.queue import JdQueue

                self._jd_queue = JdQueue(self)
            return self._jd_queue

    def start_jd_queue(self) -> None:
        """Run the reply queue's workers in this process (KEFU_QUEUE_WORKERS threads; 0: none)."""
        self.jd_queue.start(self.settings.queue_workers)

    def start_builds(self) -> None:
        """Put back on the queue the builds a stopped worker left (a restart of this very process too),
        then, with KEFU_BUILD_IN_PROCESS, consume the build queue here: KEFU_BUILD_WORKERS threads that
        each wait for a build and run it in a child process (never in this process's threads)."""
        self.sweep_builds()
        if self.settings.build_in_process:
            self.builds.start(self.settings.build_workers)

    def start_builds_here(self, workers: int) -> None:
        """Consume the build queue in this process whatever KEFU_BUILD_IN_PROCESS says (`kefu worker`)."""
        self.sweep_builds()
        self.builds.start(workers)

    def sweep_builds(self) -> None:
        """BuildQueue.sweep, logged rather than raised (a database hiccup: the next sweep retries)."""
        try:
            self.builds.sweep()
        except Exception as e:
            log.warning("sweeping left-over builds failed: %s", e)

    def build_progress(self, shop: str, version: int) -> dict[str, Any] | None:
        """Where a version's build is: {"stage", "fraction", "status", "attempts", "error"}; None while it
        waits for a worker (or for a version that does not exist). After the build, the last stage it
        reported, with fraction 1.0 once ready."""
        with self.db.session() as s:
            row = kb_repo.get_version(s, shop, version)
            if row is None or row.stage in (None, QUEUED, STARTING):
                return None
            return {
                "stage": row.stage,
                "fraction": float(row.progress or 0.0),
                "status": row.status,
                "attempts": row.attempts,
                "error": row.error,
            }

    def warm_up(self) -> threading.Thread:
        """Load the active models of the shops this replica holds in the background, so first requests
        find them ready; stops before the memory budget would evict one it loaded (KEFU_WARM_UP=false:
        none, every model waits for its shop's first message)."""

        def run() -> None:
            with self.db.session() as s:
                active = [
                    (sh.id, sh.active_version)
                    for sh in s.scalars(select(Shop).order_by(Shop.id))
                    if sh.active_version and self.registry.holds(sh.id)
                ]
            for shop, version in active:
                if self._stopping.is_set():
                    return
                if not self.registry.has_room():
                    log.info("warm-up stopped at %d models: the memory budget is full", len(self.registry))
                    return
                try:
                    self.served(shop, version)
                except Exception as e:
                    log.error("could not load shop %s version %s: %s", shop, version, e)

        t = threading.Thread(target=run, name="kefu-warm-up", daemon=True)
        t.start()
        return t

    def start_reconciler(self, every: float = 5.0, prune_every: float = 600.0) -> threading.Thread:
        """Catch up with activations this replica missed (pub/sub is a notification, not a queue), put
        back on the queue builds whose worker vanished (every minute), and prune expired JD message ids
        every `prune_every` seconds."""
        next_prune = time.monotonic()
        next_sweep = time.monotonic() + BUILD_SWEEP_EVERY
        seen: dict[str, int | None] = {}  # each shop's active version at the last round

        def run() -> None:
            nonlocal next_prune, next_sweep, seen
            while not self._stopping.wait(every):
                if time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + BUILD_SWEEP_EVERY
                    self.sweep_builds()
                if time.monotonic() >= next_prune:
                    next_prune = time.monotonic() + prune_every
                    try:
                        self.prune_jd_messages()
                        if self._jd_queue is not None:
                            self._jd_queue.sweep()
                    except Exception as e:  # as below: retried at the next turn
                        log.warning("pruning JD message ids failed: %s", e)
                try:
                    with self.db.session() as s:
                        active = {sh.id: sh.active_version for sh in s.scalars(select(Shop))}
                    for shop, version in active.items():
                        if not version:
                            continue
                        notice = {"shop": shop, "version": version}
                        if seen.get(shop) != version:
                            # an activation since the last round, its notice perhaps missed: a cached shop
                            # row naming the old version is stale too (a shop not loaded here loads the
                            # new version on its next message)
                            self.shop_keys.invalidate_if_stale(shop, version)
                            self.publisher.on_notice(notice)
                        elif (served := self.registry.peek(shop)) is not None and served.version != version:
                            self.publisher.on_notice(notice)  # a load that failed: tried again
                    seen = active
                except Exception as e:  # a database hiccup must not end the loop
                    log.warning("reconcile failed: %s", e)

        t = threading.Thread(target=run, name="kefu-reconcile", daemon=True)
        t.start()
        return t

    def prune_jd_messages(self, batch: int = PRUNE_BATCH) -> int:
        """Forget JD message ids older than `jd_message_retention`, in batches; returns how many.

        Safe on every replica at once: each batch deletes whatever rows are still there.
        """
        cutoff = utcnow() - timedelta(seconds=self.settings.jd_message_retention)
        key = tuple_(JdMessage.shop_id, JdMessage.message_digest)
        total = 0
        while not self._stopping.is_set():
            with self.db.session() as s:
                old = (
                    select(JdMessage.shop_id, JdMessage.message_digest)
                    .where(JdMessage.created_at < cutoff)
                    .limit(batch)
                )
                keys = s.execute(old).all()
                if keys:
                    s.execute(delete(JdMessage).where(key.in_([tuple(k) for k in keys])))
            total += len(keys)
            if len(keys) < batch:
                break
        if total:
            log.info("pruned %d expired JD message ids", total)
        return total

    def start_schedules(self) -> threading.Thread | None:
        """Pull every configured shop's JD evaluations every `evaluation_pull_interval` seconds."""
        interval = self.settings.evaluation_pull_interval
        if not interval:
            return None

        def run() -> None:
            from api.jd.evaluations import pull

            while not self._stopping.wait(interval):
                with self.db.session() as s:
                    shops = [sh.id for sh in s.scalars(select(Shop)) if sh.jd_app_key and sh.jd_app_secret]
                for shop in shops:
                    try:
                        pull(self, shop)
                    except Exception as e:  # one shop's failure must not stop the others
                        log.warning("evaluation pull for shop %s failed: %s", shop, e)

        t = threading.Thread(target=run, name="kefu-evaluations", daemon=True)
        t.start()
        return t

    def served(self, shop: str, version: int | None) -> ServedModel | None:
        """The shop's model in service; loaded on its first message here (after a restart, an eviction).
        Raises ShopNotHeldError for a shop outside this replica's shard."""
        served = self.registry.get(shop)
        if served is not None or version is None:
            return served

        served = self.registry.ensure(
            shop, version, partial(kb_repo.snapshot_of_version, self.db, shop, version)
        )
        MODEL_VERSION.labels(shop).set(version)
        return served

    @property
    def secret_box(self) -> Any:
        """Encrypts JD credentials; configured from KEFU_SECRET_KEY on first use."""
        if self._secret_box is None:
            from api.store.secrets import SecretBox, SecretKeyError

            key = self.settings.secret_key
            if key is None:
                raise SecretKeyError(
                    "KEFU_SECRET_KEY is not set: generate one with python -c 'from cryptography.fernet "
                    "import Fernet; print(Fernet.generate_key().decode())'"
                )
            self._secret_box = SecretBox(key.get_secret_value())
        return self._secret_box

    def customer_hash(self, pin: str | None) -> str | None:
        """The keyed hash a customer's pin is stored as (exchanges, evaluations, chat logs); None without a
        pin or without KEFU_SECRET_KEY (then nothing about the customer is stored at all)."""
        if not pin or self.settings.secret_key is None:
            return None
        return str(self.secret_box.keyed_hash(pin))

    def close(self) -> None:
        self._stopping.set()
        if self._jd_queue is not None:
            self._jd_queue.stop()
        self.builds.stop()
        self.exchange_log.close()  # after the JD queue's workers, whose replies log exchanges too
        close = getattr(self._subscription, "close", None)
        if close:
            close()
        self.publisher.shutdown()
        self.upload_parser.close()
        # SQLAlchemy keeps listeners in a registry keyed weakly by the session class, but these closures
        # hold the service, which holds that class: unless removed, a closed service (its models' mapped
        # arrays, its queues' files) is never freed
        for name, fn in self._session_listeners:
            event.remove(self.db.sessions, name, fn)
        self.store.close()  # the in-process store's dispatcher thread, or the Redis client's connections
        self.db.dispose()
