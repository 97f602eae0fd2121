"""The models each shop is served by, swapped atomically when a new version is activated.

A request reads a shop's `ServedModel` once and keeps it for its whole duration, so a swap never mixes
two models inside one request, and never makes one wait: the new model is fully loaded before the
dictionary entry is replaced (a single assignment).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine import Matcher
from engine.artifacts import ModelLoadError
from engine.kb import KBEntry

log = logging.getLogger("kefu.registry")

# returns a version's frozen KB and the engine options it was published with
Snapshot = Callable[[], tuple[list[KBEntry], dict[str, Any]]]


@dataclass(frozen=True)
class ServedModel:
    shop: str
    version: int
    matcher: Matcher


class ModelRegistry:
    """shop -> the model in service, plus where each version's files live."""

    def __init__(self, data_dir: Path, dense: bool = True) -> None:
        self.data_dir = data_dir
        self.dense = dense
        self._served: dict[str, ServedModel] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def model_dir(self, shop: str, version: int) -> Path:
        return self.data_dir / "shops" / shop / f"v{version}"

    def get(self, shop: str) -> ServedModel | None:
        return self._served.get(shop)

    def swap(self, shop: str, version: int, matcher: Matcher) -> ServedModel | None:
        """Serve `matcher` for `shop` from the next request on; returns what it replaced."""
        old = self._served.get(shop)
        self._served[shop] = ServedModel(shop, version, matcher)
        log.info("shop %s now served by version %d (was %s)", shop, version, old.version if old else None)
        return old

    def drop(self, shop: str) -> None:
        self._served.pop(shop, None)

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
            return Matcher.load(path)
        except ModelLoadError as e:
            log.info(
                "version %d of shop %s not loadable here (%s): rebuilding from its snapshot", version, shop, e
            )
        matcher = self.build(*snapshot())
        try:
            matcher.save(path)
        except OSError as e:
            log.warning("could not keep version %d of shop %s on disk: %s", version, shop, e)
        return matcher

    def ensure(self, shop: str, version: int, snapshot: Snapshot) -> ServedModel:
        """The served model of `shop` at `version`, loading it first if needed (one loader per shop)."""
        served = self._served.get(shop)
        if served is not None and served.version == version:
            return served
        with self.lock(shop):
            served = self._served.get(shop)
            if served is not None and served.version == version:
                return served
            self.swap(shop, version, self.load(shop, version, snapshot))
            return self._served[shop]
