"""Exchange ids made in the process, before the row is written: 63-bit, time-ordered, unique.

An id is known the moment a reply is made, so the reply can carry it while the row waits in the
exchange log's buffer (api/store/exchange_log.py). Layout, most significant bit first:

    0 | 41 bits: milliseconds since EPOCH | 14 bits: node | 8 bits: sequence

- milliseconds since 2025-01-01 UTC: ids sort by time across processes (to within the clocks' skew), so
  "newest first" is still ORDER BY id DESC; 41 bits last until 2094. Ids of rows written before
  migration 0012 (1, 2, 3 ... from the old autoincrement) all sort before them.
- node: the generating process. A Service claims one at start (`claim_node`: a row in `id_writers`, one
  INSERT per process, never per id), so two live processes have the same node only after 16,384 process
  starts in between. Random node bits are not enough: two of 8 processes drawing the same 14 bits is a
  0.2% chance per deployment, and then their ids collide on every millisecond both are busy; random
  bits per id (no node) collide by the birthday bound, about every 2 hours at 1,000 messages a second.
  A process that claims nothing (a script, a test inserting rows) draws a random node.
- sequence: 256 ids per millisecond per process; the 257th borrows the next millisecond (the clock
  part runs ahead, never back), so ids of one process are strictly increasing even when the wall
  clock steps back.

Ids exceed 2**53: JavaScript clients must read them as strings or BigInt, not as Number.
"""

from __future__ import annotations

import secrets
import threading
import time

EPOCH_MS = 1_735_689_600_000  # 2025-01-01T00:00:00Z
NODE_BITS = 14
SEQ_BITS = 8
NODE_MASK = (1 << NODE_BITS) - 1
SEQ_MAX = (1 << SEQ_BITS) - 1
ID_MAX = 2**63 - 1  # the largest BIGINT: exchange ids in requests are bounded by it


class IdGenerator:
    """Strictly increasing ids of one process (thread-safe)."""

    def __init__(self, node: int | None = None) -> None:
        self._lock = threading.Lock()
        self._node = secrets.randbits(NODE_BITS) if node is None else node & NODE_MASK
        self._ms = 0
        self._seq = 0

    @property
    def node(self) -> int:
        return self._node

    def set_node(self, node: int) -> None:
        """Use `node` from now on; the next id starts a new millisecond, so ids keep increasing."""
        with self._lock:
            self._node = node & NODE_MASK
            self._ms += 1
            self._seq = -1

    def next_id(self) -> int:
        with self._lock:
            ms = max(time.time_ns() // 1_000_000 - EPOCH_MS, self._ms)
            if ms == self._ms:
                self._seq += 1
                if self._seq > SEQ_MAX:  # this millisecond is used up: borrow the next one
                    ms += 1
                    self._seq = 0
            else:
                self._seq = 0
            self._ms = ms
            return (ms << (NODE_BITS + SEQ_BITS)) | (self._node << SEQ_BITS) | self._seq


GENERATOR = IdGenerator()


def next_exchange_id() -> int:
    """The process's next exchange id (also the column default of Exchange.id)."""
    return GENERATOR.next_id()
