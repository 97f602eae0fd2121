"""State shared by the service's replicas: conversations, replay claims, counters and notifications.

Production runs several replicas behind a load balancer, so a customer's next message may reach
another replica: conversation state and replay claims live in Redis (`RedisStore`), and a model
hot-swap on one replica is announced to the others over Redis pub/sub. A laptop runs one process
without Redis: `MemoryStore` has the same API and semantics in-process (values are copied through
JSON, TTLs expire, notifications arrive on another thread), so code that works on one works on both.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import redis
from redis.client import PubSub, PubSubWorkerThread

log = logging.getLogger("kefu.stores")

Message = dict[str, Any]
Callback = Callable[[Message], None]

_SUBSCRIBE_CONFIRM_SECONDS = 2.0
_RECONNECT_PAUSE_SECONDS = 1.0


class Closeable(Protocol):
    def close(self) -> None: ...


class KeyValueStore(Protocol):
    """What conversation state and replay protection need; every key expires."""

    def get_json(self, key: str) -> Any | None: ...

    def set_json(self, key: str, value: Any, ttl_seconds: int) -> None: ...

    def delete(self, key: str) -> None: ...

    def set_if_absent(self, key: str, value: str, ttl_seconds: int) -> bool:
        """Atomically claim `key`; True for exactly one caller until the key expires."""
        ...

    def get_json_versioned(self, key: str) -> tuple[Any | None, str | None]:
        """The value and a token of what is stored (None: nothing is), for `set_json_if`."""
        ...

    def set_json_if(self, key: str, value: Any, ttl_seconds: int, token: str | None) -> bool:
        """Store `value` only if the key still holds what `token` was read from (None: still absent);
        atomic, so of two replicas that read the same state only one writes its successor."""
        ...

    def incr(self, key: str, ttl_seconds: int) -> int:
        """Add one; the count expires `ttl_seconds` after the first increment (a fixed window)."""
        ...


def _check_ttl(ttl_seconds: int) -> int:
    # Redis rejects EX 0 and negative values; a key that never expires is not offered on purpose
    if isinstance(ttl_seconds, bool) or not isinstance(ttl_seconds, int) or ttl_seconds < 1:
        raise ValueError(f"ttl_seconds must be a positive int, got {ttl_seconds!r}")
    return ttl_seconds


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _loads(key: str, raw: str) -> Any | None:
    try:
        return json.loads(raw)
    except ValueError:
        log.warning("value at %r is not JSON; treated as absent", key)
        return None


# ---------------------------------------------------------------------------------------------- Redis
# KEYS[1] is replaced by ARGV[2] (for ARGV[3] seconds) only while it still holds ARGV[1]
_SET_IF_EQUAL = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
  return 1
end
return 0
"""


class _RedisSubscription:
    """A listener thread for one channel; `close` stops it and releases its connection."""

    def __init__(self, pubsub: PubSub, thread: PubSubWorkerThread, stopped: threading.Event) -> None:
        self._pubsub = pubsub
        self._thread = thread
        self._stopped = stopped

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def close(self) -> None:
        self._stopped.set()  # wakes the error handler if it is pausing before a reconnect
        self._thread.stop()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=2.0)

    def __enter__(self) -> _RedisSubscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RedisStore:
    """`KeyValueStore` and pub/sub on Redis; keys and channels are prefixed so deployments can share it."""

    def __init__(self, url: str, prefix: str = "kefu:", **client_options: Any) -> None:
        options: dict[str, Any] = {
            "socket_connect_timeout": 2.0,
            "socket_timeout": 5.0,
            "health_check_interval": 30,
        }
        options.update(client_options)
        self.prefix = prefix
        self.client: redis.Redis = redis.Redis.from_url(url, decode_responses=True, **options)
        self._set_if_equal = self.client.register_script(_SET_IF_EQUAL)

    def key(self, key: str) -> str:
        """The key as stored in Redis."""
        return self.prefix + key

    def get_json(self, key: str) -> Any | None:
        raw = self.client.get(self.key(key))
        return None if raw is None else _loads(key, str(raw))

    def set_json(self, key: str, value: Any, ttl_seconds: int) -> None:
        self.client.set(self.key(key), _dumps(value), ex=_check_ttl(ttl_seconds))

    def delete(self, key: str) -> None:
        self.client.delete(self.key(key))

    def set_if_absent(self, key: str, value: str, ttl_seconds: int) -> bool:
        return bool(self.client.set(self.key(key), value, nx=True, ex=_check_ttl(ttl_seconds)))

    def get_json_versioned(self, key: str) -> tuple[Any | None, str | None]:
        raw = self.client.get(self.key(key))
        return (None, None) if raw is None else (_loads(key, str(raw)), str(raw))

    def set_json_if(self, key: str, value: Any, ttl_seconds: int, token: str | None) -> bool:
        ttl = _check_ttl(ttl_seconds)
        if token is None:
            return bool(self.client.set(self.key(key), _dumps(value), nx=True, ex=ttl))
        # one round trip, like the SET it replaces: the script runs atomically in Redis
        return bool(self._set_if_equal(keys=[self.key(key)], args=[token, _dumps(value), ttl]))

    def incr(self, key: str, ttl_seconds: int) -> int:
        ttl = _check_ttl(ttl_seconds)
        k = self.key(key)
        pipe = self.client.pipeline(transaction=True)
        pipe.incr(k)
        pipe.ttl(k)
        count, remaining = pipe.execute()
        # set on the first increment; also repairs a count left without TTL by a crash between calls
        if int(remaining) < 0:
            self.client.expire(k, ttl)
        return int(count)

    def ping(self) -> bool:
        try:
            return bool(self.client.ping())
        except redis.RedisError:
            return False

    def publish(self, channel: str, message: Message) -> int:
        """Send `message` (JSON-serializable) to every subscriber; returns how many received it."""
        return int(self.client.publish(self.key(channel), _dumps(message)))  # type: ignore[arg-type]

    def subscribe(self, channel: str, callback: Callback) -> _RedisSubscription:
        """Call `callback(message)` on a listener thread for each message published on `channel`.

        The subscription is confirmed by Redis before this returns, so a message published afterwards
        is not missed. A failing callback is logged and the listener goes on; a lost connection is
        logged and re-established (redis-py re-subscribes on reconnect). Messages published while the
        connection is down are lost: pub/sub is a notification, not a queue.
        """
        full = self.key(channel)
        stopped = threading.Event()

        def on_message(raw: dict[str, Any]) -> None:
            try:
                data = json.loads(raw["data"])
            except (ValueError, TypeError):
                log.warning("ignored a non-JSON message on %s", full)
                return
            try:
                callback(data)
            except Exception:
                log.exception("subscriber callback failed on %s", full)

        def on_error(exc: BaseException, pubsub: PubSub, thread: PubSubWorkerThread) -> None:
            if stopped.is_set():
                return
            log.warning("pub/sub listener on %s: %s; reconnecting", full, exc)
            stopped.wait(_RECONNECT_PAUSE_SECONDS)  # no busy loop while Redis is down

        pubsub = self.client.pubsub()
        pubsub.subscribe(**{full: on_message})
        deadline = time.monotonic() + _SUBSCRIBE_CONFIRM_SECONDS
        while time.monotonic() < deadline:
            reply = pubsub.get_message(timeout=0.1)
            if reply is not None and reply.get("type") == "subscribe":
                break
        else:
            log.warning("no subscribe confirmation on %s yet; listening anyway", full)
        thread = pubsub.run_in_thread(sleep_time=0.1, daemon=True, exception_handler=on_error)
        return _RedisSubscription(pubsub, thread, stopped)

    def close(self) -> None:
        self.client.close()


# --------------------------------------------------------------------------------------------- memory
class _MemorySubscription:
    def __init__(self, store: MemoryStore, channel: str, callback: Callback) -> None:
        self._store, self._channel, self._callback = store, channel, callback

    def close(self) -> None:
        self._store._unsubscribe(self._channel, self._callback)

    def __enter__(self) -> _MemorySubscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class MemoryStore:
    """In-process `KeyValueStore` and pub/sub for a single process; thread-safe.

    Values go through JSON like in Redis (a caller never shares a mutable object with the store);
    TTLs are measured on `clock` (time.monotonic, injectable for tests). Published messages are
    delivered on a dispatcher thread, in order, never in the publisher's thread, as with Redis.
    """

    _SWEEP_EVERY = 1024

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._data: dict[str, tuple[str, float]] = {}  # key -> (stored string, expiry on clock)
        self._writes = 0
        self._subs: dict[str, list[Callback]] = {}
        self._queue: queue.SimpleQueue[tuple[str, str] | None] = queue.SimpleQueue()
        self._dispatcher: threading.Thread | None = None

    # ---- key/value
    def _live(self, key: str) -> str | None:
        item = self._data.get(key)
        if item is None:
            return None
        if item[1] <= self._clock():
            del self._data[key]
            return None
        return item[0]

    def _put(self, key: str, raw: str, ttl_seconds: int) -> None:
        now = self._clock()
        self._data[key] = (raw, now + ttl_seconds)
        self._writes += 1
        if self._writes % self._SWEEP_EVERY == 0:
            for k in [k for k, (_, exp) in self._data.items() if exp <= now]:
                del self._data[k]

    def get_json(self, key: str) -> Any | None:
        with self._lock:
            raw = self._live(key)
        return None if raw is None else _loads(key, raw)

    def set_json(self, key: str, value: Any, ttl_seconds: int) -> None:
        raw = _dumps(value)
        with self._lock:
            self._put(key, raw, _check_ttl(ttl_seconds))

    def delete(self, key: str) -> None:
        with self._lock:
            self._data.pop(key, None)

    def get_json_versioned(self, key: str) -> tuple[Any | None, str | None]:
        with self._lock:
            raw = self._live(key)
        return (None, None) if raw is None else (_loads(key, raw), raw)

    def set_json_if(self, key: str, value: Any, ttl_seconds: int, token: str | None) -> bool:
        raw = _dumps(value)
        ttl = _check_ttl(ttl_seconds)
        with self._lock:
            if self._live(key) != token:
                return False
            self._put(key, raw, ttl)
        return True

    def set_if_absent(self, key: str, value: str, ttl_seconds: int) -> bool:
        ttl = _check_ttl(ttl_seconds)
        with self._lock:
            if self._live(key) is not None:
                return False
            self._put(key, str(value), ttl)
            return True

    def incr(self, key: str, ttl_seconds: int) -> int:
        ttl = _check_ttl(ttl_seconds)
        with self._lock:
            raw = self._live(key)
            if raw is None:
                self._put(key, "1", ttl)
                return 1
            count = int(raw) + 1  # a non-integer value raises, as INCR does in Redis
            self._data[key] = (str(count), self._data[key][1])
            return count

    def ttl(self, key: str) -> float | None:
        """Seconds left before `key` expires, None when absent (for tests and diagnostics)."""
        with self._lock:
            if self._live(key) is None:
                return None
            return self._data[key][1] - self._clock()

    def ping(self) -> bool:
        return True

    # ---- pub/sub
    def publish(self, channel: str, message: Message) -> int:
        raw = _dumps(message)  # fails here, like with Redis, when the message is not JSON-serializable
        with self._lock:
            n = len(self._subs.get(channel, ()))
        if n:
            self._queue.put((channel, raw))
        return n

    def subscribe(self, channel: str, callback: Callback) -> _MemorySubscription:
        with self._lock:
            self._subs.setdefault(channel, []).append(callback)
            if self._dispatcher is None:
                self._dispatcher = threading.Thread(
                    target=self._dispatch, name="kefu-memory-pubsub", daemon=True
                )
                self._dispatcher.start()
        return _MemorySubscription(self, channel, callback)

    def _unsubscribe(self, channel: str, callback: Callback) -> None:
        with self._lock:
            subs = self._subs.get(channel, [])
            if callback in subs:
                subs.remove(callback)

    def _dispatch(self) -> None:
        while (item := self._queue.get()) is not None:
            channel, raw = item
            with self._lock:
                callbacks = list(self._subs.get(channel, ()))
            for cb in callbacks:
                try:
                    cb(json.loads(raw))  # each subscriber gets its own copy
                except Exception:
                    log.exception("subscriber callback failed on %s", channel)

    def close(self) -> None:
        """Stop the dispatcher thread (messages already queued are delivered first)."""
        with self._lock:
            dispatcher, self._dispatcher = self._dispatcher, None
        if dispatcher is not None:
            self._queue.put(None)
            if dispatcher is not threading.current_thread():
                dispatcher.join(timeout=2.0)


def make_store(url: str | None, prefix: str = "kefu:") -> RedisStore | MemoryStore:
    """Redis when a URL is configured, else the in-process store (one process only).

    A configured but unreachable Redis is not silently replaced by memory: with several replicas that
    would split conversation state; the caller reports it through `ping()` on its health check.
    """
    if url and url.strip() and not url.startswith("memory:"):
        return RedisStore(url.strip(), prefix=prefix)
    return MemoryStore()
