"""The models each shop is served by: loaded on a shop's first message, swapped atomically when a new
version is activated, evicted least-recently-used under a memory budget.

A request reads a shop's `ServedModel` once and keeps it for its whole duration, so a swap or an eviction
never changes the model under a request, and never makes one wait: the new model is fully loaded before
the dictionary entry is replaced (a single assignment). An evicted model's memory is freed when the last
request holding it ends.

A replica can hold a share of the shops (KEFU_SHARD "i/n" or KEFU_SHARD_SHOPS): a router in front sends
each shop to the replica that holds it; `shard_of` is the rule it must follow.
"""

from __future__ import annotations

import logging
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from api.metrics import MODEL_EVICTIONS, MODEL_LOAD_SECONDS, MODEL_MEMORY, MODELS_LOADED
from engine import Matcher
from engine.artifacts import ModelLoadError
from engine.kb import KBEntry

log = logging.getLogger("kefu.registry")

# returns a version's frozen KB and the engine options it was published with
Snapshot = Callable[[], tuple[list[KBEntry], dict[str, Any]]]


def shard_of(shop: str, shards: int) -> int:
    """The shard (0 .. shards-1) that holds `shop`: CRC-32 of its id in UTF-8, modulo `shards`. A router
    computes the same (e.g. nginx/OpenResty `ngx.crc32_long`, Envoy Lua, or any language's zlib)."""
    return zlib.crc32(shop.encode("utf-8")) % shards


class ShopNotHeldError(LookupError):
    """A message for a shop this replica does not hold: the router sent it to the wrong replica."""

    def __init__(self, shop: str, reason: str) -> None:
        super().__init__(f"shop {shop} is not served by this replica: {reason}")
        self.shop = shop


class Holding:
    """Which shops this replica holds: all (default), shard i of n, or a list of shop ids."""

    def __init__(self, shard: tuple[int, int] | None = None, shops: Collection[str] = ()) -> None:
        self.shard = shard
        self.shops = frozenset(shops)

    def holds(self, shop: str) -> bool:
        if self.shops and shop in self.shops:
            return True
        if self.shard is not None:
            return shard_of(shop, self.shard[1]) == self.shard[0]
        return not self.shops

    def why_not(self, shop: str) -> str:
        parts = []
        if self.shard is not None:
            i, n = self.shard
            parts.append(
                f"this replica is shard {i}/{n} (KEFU_SHARD), "
                f"the shop belongs to shard {shard_of(shop, n)}/{n}"
            )
        if self.shops:
            parts.append("the shop is not in KEFU_SHARD_SHOPS")
        return "; ".join(parts) + "; send it to the replica that holds it"


@dataclass(frozen=True)
class ServedModel:
    shop: str
    version: int
    matcher: Matcher
    nbytes: int = 0  # the model's memory as Matcher.memory_bytes estimates it


class ModelRegistry:
    """shop -> the model in service (least recently used first), plus where each version's files live."""

    def __init__(
        self,
        data_dir: Path,
        dense: bool = True,
        memory_mb: float = 0.0,
        holding: Holding | None = None,
        cascade: bool = False,
    ) -> None:
        self.data_dir = data_dir
        self.dense = dense
        self.cascade = cascade  # models answer through their dense-skip cascade (KEFU_CASCADE)
        self.memory_budget = int(memory_mb * 1024 * 1024)  # 0: no budget
        self.holding = holding or Holding()
        self._served: OrderedDict[str, ServedModel] = OrderedDict()
        self._bytes = 0
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self.evictions = 0

    def model_dir(self, shop: str, version: int) -> Path:
        return self.data_dir / "shops" / shop / f"v{version}"

    @property
    def loaded_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._served)

    def holds(self, shop: str) -> bool:
        return self.holding.holds(shop)

    def has_room(self) -> bool:
        """Whether loading one more model ahead of need is welcome: no budget, or under 90% of it (a
        preload must not evict a model a shop is using)."""
        return not self.memory_budget or self._bytes < 0.9 * self.memory_budget

    def peek(self, shop: str) -> ServedModel | None:
        """The shop's model if loaded here, without counting as a use (background checks)."""
        return self._served.get(shop)

    def get(self, shop: str) -> ServedModel | None:
        """The shop's model if loaded here, marked as the most recently used."""
        served = self._served.get(shop)
        if served is not None:
            with self._guard:
                if shop in self._served:
                    self._served.move_to_end(shop)
        return served

    def swap(self, shop: str, version: int, matcher: Matcher) -> ServedModel | None:
        """Serve `matcher` for `shop` from the next request on; returns what it replaced. Then evicts the
        least recently used other shops while the models exceed the memory budget."""
        return self._install(ServedModel(shop, version, matcher, matcher.memory_bytes()))

    def _install(self, new: ServedModel) -> ServedModel | None:
        shop, version = new.shop, new.version
        with self._guard:
            old = self._served.pop(shop, None)
            self._served[shop] = new
            self._bytes += new.nbytes - (old.nbytes if old else 0)
            evicted = self._evict_over_budget(keep=shop)
        log.info("shop %s now served by version %d (was %s)", shop, version, old.version if old else None)
        for gone in evicted:
            log.info("shop %s evicted (least recently used; models over KEFU_MODEL_MEMORY_MB)", gone.shop)
        self._changed()
        return old

    def _evict_over_budget(self, keep: str) -> list[ServedModel]:
        evicted: list[ServedModel] = []
        while self.memory_budget and self._bytes > self.memory_budget:
            oldest = next((s for s in self._served if s != keep), None)
            if oldest is None:  # one model alone above the budget: it is served anyway
                break
            gone = self._served.pop(oldest)
            self._bytes -= gone.nbytes
            evicted.append(gone)
        self.evictions += len(evicted)
        MODEL_EVICTIONS.inc(len(evicted))
        return evicted

    def drop(self, shop: str) -> None:
        with self._guard:
            gone = self._served.pop(shop, None)
            if gone is not None:
                self._bytes -= gone.nbytes
        self._changed()

    def _changed(self) -> None:
        MODELS_LOADED.set(len(self._served))
        MODEL_MEMORY.set(self._bytes)

    def lock(self, shop: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(shop, threading.Lock())

    def build(
        self,
        entries: list[KBEntry],
        options: dict[str, Any] | None = None,
        progress: Callable[[str, float], None] | None = None,
    ) -> Matcher:
        """A model of `entries` with the shop's engine options (dictionary, synonyms, ...); `progress`
        hears the build's stages (engine.build's callback)."""
        extra: dict[str, Any] = {"progress": progress} if progress is not None else {}
        return Matcher.build(entries, dense=self.dense, **(options or {}), **extra)

    def load(self, shop: str, version: int, snapshot: Snapshot) -> Matcher:
        """A version's model from disk; rebuilt from its KB snapshot when this replica has no copy.

        Replicas on other hosts need not share a disk: the snapshot in the database is enough to
        rebuild the same model (builds are deterministic).
        """
        path = self.model_dir(shop, version)
        try:
            t0 = time.perf_counter()
            matcher = Matcher.load(path)
            matcher.use_cascade = self.cascade
            seconds = time.perf_counter() - t0
            MODEL_LOAD_SECONDS.observe(seconds)
            log.info("loaded version %d of shop %s in %.0f ms", version, shop, seconds * 1e3)
            return matcher
        except ModelLoadError as e:
            log.info(
                "version %d of shop %s not loadable here (%s): rebuilding from its snapshot", version, shop, e
            )
        matcher = self.build(*snapshot())
        matcher.use_cascade = self.cascade
        try:
            matcher.save(path)
        except OSError as e:
            log.warning("could not keep version %d of shop %s on disk: %s", version, shop, e)
        return matcher

    def ensure(self, shop: str, version: int, snapshot: Snapshot) -> ServedModel:
        """The served model of `shop` at `version`, loading it first if needed (one loader per shop).
        Raises ShopNotHeldError for a shop outside this replica's shard."""
        if not self.holds(shop):
            raise ShopNotHeldError(shop, self.holding.why_not(shop))
        served = self.get(shop)
        if served is not None and served.version == version:
            return served
        with self.lock(shop):
            served = self._served.get(shop)
            if served is not None and served.version == version:
                return served
            matcher = self.load(shop, version, snapshot)
            served = ServedModel(shop, version, matcher, matcher.memory_bytes())
            self._install(served)
            return served
