"""The multi-shop service: database, shared state, model registry and publisher, wired once per app."""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta
from functools import partial
from typing import Any

from sqlalchemy import delete, select, tuple_

from api.db.migrate import upgrade
from api.db.models import JdMessage, Shop, utcnow
from api.db.session import Database
from api.kb import repo as kb_repo
from api.kb.parsing import UploadParser
from api.kb.publisher import CHANNEL, Publisher
from api.kb.registry import ModelRegistry, ServedModel
from api.metrics import MODEL_VERSION
from api.settings import Settings
from api.store.kv import make_store

log = logging.getLogger("kefu.service")


def build_progress_key(shop: str, version: int) -> str:
    return f"build:{shop}:{version}"


PRUNE_BATCH = 1000  # rows per delete: short transactions, no long lock on a big backlog


class Service:
    """Everything a shop request needs; created in the app's lifespan."""

    def __init__(self, settings: Settings) -> None:
        from api.catalog.skill import Catalogs
        from api.dialog.conversation import Conversations

        self.settings = settings
        self.db = Database(settings.database_url)
        upgrade(self.db.engine)
        self.store = make_store(settings.redis_url, prefix=settings.redis_prefix)
        self.registry = ModelRegistry(settings.data_dir, dense=settings.dense)
        self.publisher = Publisher(
            self.db,
            self.registry,
            self.store.publish,
            min_self_recall=settings.min_self_recall,
            min_cv_top1=settings.min_cv_top1,
            progress=self._build_progress,
        )
        self.conversations = Conversations(self.store, ttl_seconds=settings.conversation_ttl)
        self.catalogs = Catalogs(self.db)
        self._subscription = self.store.subscribe(CHANNEL, self.publisher.on_notice)
        self._secret_box: Any = None
        self.upload_parser = UploadParser()
        self._stopping = threading.Event()
        self._jd_queue: Any = None
        self._jd_queue_lock = threading.Lock()

    def _build_progress(self, shop: str, version: int, stage: str, fraction: float) -> None:
        """A building version's stage, in the shared store so any replica can show it (the console)."""
        self.store.set_json(build_progress_key(shop, version), {"stage": stage, "fraction": fraction}, 3600)

    def build_progress(self, shop: str, version: int) -> dict[str, Any] | None:
        """The last stage a version's build reported ({"stage", "fraction"}), if any in the last hour."""
        value = self.store.get_json(build_progress_key(shop, version))
        return value if isinstance(value, dict) else None

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

    def warm_up(self) -> threading.Thread:
        """Load every shop's active model in the background, so first requests find it ready."""

        def run() -> None:
            with self.db.session() as s:
                active = [(sh.id, sh.active_version) for sh in s.scalars(select(Shop)) if sh.active_version]
            for shop, version in active:
                try:
                    self.served(shop, version)
                except Exception as e:
                    log.error("could not load shop %s version %s: %s", shop, version, e)

        t = threading.Thread(target=run, name="kefu-warm-up", daemon=True)
        t.start()
        return t

    def start_reconciler(self, every: float = 5.0, prune_every: float = 600.0) -> threading.Thread:
        """Catch up with activations this replica missed (pub/sub is a notification, not a queue), and
        prune expired JD message ids every `prune_every` seconds."""
        next_prune = time.monotonic()

        def run() -> None:
            nonlocal next_prune
            while not self._stopping.wait(every):
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
                        served = self.registry.get(shop)
                        if version and (served is None or served.version != version):
                            self.publisher.on_notice({"shop": shop, "version": version})
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
        """The shop's model in service; loaded on first use after a restart."""
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
        close = getattr(self._subscription, "close", None)
        if close:
            close()
        self.publisher.shutdown()
        self.upload_parser.close()
        self.db.dispose()
