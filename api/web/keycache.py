"""API key -> shop, kept in the process for a moment, so a conversation turn does not read the database
to learn whose key it carries (issue 9: the lookup cost more than matching the message).

Keyed on the key's SHA-256 digest, as the database stores it: the plaintext key is never kept. Only
successful lookups are kept; a refused key is looked up again on its next use, so a key created or
rotated a moment ago is never locked out. Entries expire `ttl` seconds after they were read from the
database, and a write to a shop in this process drops its entries at once (`invalidate`, called by the
service after the transaction commits); a write by another process is seen within `ttl`.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from api.db.models import Shop

MAX_ENTRIES = 10_000  # keys held at most: one per shop sending messages to this process


class ShopKeyCache:
    """Key digest -> the shop it opens (a detached row, shared by requests: read it, never change it).

    Entries are kept in the order they were read, which with one TTL is also the order they expire: the
    oldest is dropped first, whether expired or over `size`.
    """

    def __init__(
        self, ttl: float, size: int = MAX_ENTRIES, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl = ttl
        self.size = size
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, tuple[Shop, float]] = OrderedDict()  # digest -> (shop, expiry)
        self._generation = 0

    @property
    def enabled(self) -> bool:
        return self.ttl > 0

    @property
    def generation(self) -> int:
        """Read before a database lookup and handed to `put`: a lookup that overlapped an invalidation
        may have read what the invalidating write replaced, so it is not kept."""
        return self._generation

    def get(self, digest: str) -> Shop | None:
        """The shop of a key digest read less than `ttl` seconds ago, or None."""
        if not self.enabled:
            return None
        with self._lock:
            hit = self._entries.get(digest)
            if hit is None:
                return None
            if hit[1] <= self._clock():
                del self._entries[digest]
                return None
            return hit[0]

    def put(self, digest: str, shop: Shop, generation: int) -> None:
        """Keep a successful lookup, unless the cache was invalidated since `generation` was read."""
        if not self.enabled:
            return
        with self._lock:
            if generation != self._generation:
                return
            now = self._clock()
            self._entries.pop(digest, None)
            self._entries[digest] = (shop, now + self.ttl)
            while self._entries:
                oldest, (_, expiry) = next(iter(self._entries.items()))
                if expiry > now and len(self._entries) <= self.size:
                    break
                del self._entries[oldest]

    def invalidate(self, shop_id: str | None = None) -> None:
        """Forget the shop's keys (None: every key); lookups under way when this is called are not kept."""
        with self._lock:
            self._generation += 1
            if shop_id is None:
                self._entries.clear()
                return
            for digest in [d for d, (shop, _) in self._entries.items() if shop.id == shop_id]:
                del self._entries[digest]

    def invalidate_if_stale(self, shop_id: str, active_version: int | None) -> bool:
        """Forget the shop's keys if a cached row names another active version (an activation whose
        notice this process missed); True when it did. A row that is current stays cached."""
        with self._lock:
            stale = any(
                s.id == shop_id and s.active_version != active_version for s, _ in self._entries.values()
            )
        if stale:
            self.invalidate(shop_id)
        return stale

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)
