"""Per-shop and per-client request rate limits, so a noisy shop or a flood cannot starve the others.

Checked in an ASGI middleware before routing to a handler: no body is parsed, no API key hashed, no
database row read and no signature checked for a refused request, so an unauthenticated flood costs a
counter increment. The client limit (keyed on the client IP) comes first, then the shop limit (keyed on
the shop id in the path). /healthz and /metrics are never limited: probes and scrapes must get through.

Counters are fixed windows (`limits`' FixedWindowRateLimiter: one atomic increment per request and
limit, constant memory), in Redis when it is configured so every replica counts against the same
budget, else in-process. On Redis the middleware counts every window a request is checked against
(client and shop) in one script call, one round trip, where `limits` makes one per window; the keys,
TTLs and order are `limits`' own, so both read and write the same counters. If Redis fails, requests
pass unchecked for a few seconds with a warning: the limits protect the service and must not be what
takes it down.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import redis.asyncio
from limits import RateLimitItem, parse_many
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import FixedWindowRateLimiter
from limits.errors import StorageError
from pydantic import BaseModel
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from api.metrics import RATE_LIMIT_ERRORS, RATE_LIMITED
from api.settings import IPNetwork, Settings
from api.web.deps import SHOP_ID

log = logging.getLogger("kefu.ratelimit")

LimitScope = Literal["client", "shop"]
EXEMPT_PATHS = frozenset({"/healthz", "/metrics"})
FAIL_OPEN_SECONDS = 5.0  # after a store failure, how long requests pass without a check
STORE_TIMEOUT_SECONDS = 0.5  # a slow Redis must not add seconds to every request

# Fixed windows counted in one call, as `limits`' incr_expire.lua does for one: KEYS[i] is a window's
# counter, ARGV[2i-1] its length in seconds and ARGV[2i] its limit. Counts in order and stops at the first
# window over its limit (the later ones are not counted, as when they are checked one by one); returns
# {its 1-based index, its TTL in seconds}, or {0, 0} when every window had room.
_HIT_WINDOWS = """
for i, key in ipairs(KEYS) do
    local count = redis.call('INCRBY', key, 1)
    if count == 1 then
        redis.call('EXPIRE', key, ARGV[2 * i - 1])
    end
    if count > tonumber(ARGV[2 * i]) then
        return {i, redis.call('TTL', key)}
    end
end
return {0, 0}
"""


class RateLimited(BaseModel):
    detail: str


# merged into the OpenAPI responses of every limited route
RATE_LIMIT_RESPONSES: dict[int | str, dict[str, Any]] = {
    429: {
        "model": RateLimited,
        "description": "a per-client or per-shop rate limit was exceeded",
        "headers": {
            "Retry-After": {"description": "seconds until a retry can pass", "schema": {"type": "integer"}}
        },
    }
}


@dataclass(frozen=True)
class Refusal:
    scope: LimitScope
    subject: str  # the shop id or the client IP
    limit: RateLimitItem
    retry_after: int  # whole seconds, at least 1

    @property
    def detail(self) -> str:
        return (
            f"rate limit of {self.limit.amount} requests per {self.limit.get_expiry()} s "
            f"for {self.scope} {self.subject} exceeded"
        )


def client_ip(scope: Scope, trusted: Sequence[IPNetwork]) -> str:
    """The peer's address, or the one a trusted proxy in front of us says it forwarded for.

    X-Forwarded-For is read only when the peer is a trusted proxy, from the right: the first hop that is
    not itself a trusted proxy was written by one and is the client; anything left of it is the client's
    own claim. Without trusted proxies the header is ignored (anyone can send it).
    """
    peer = scope.get("client")
    host = str(peer[0]) if peer else "unknown"
    if not trusted or not _within(host, trusted):
        return host
    hops = [
        hop.strip()
        for name, value in scope.get("headers", ())
        if name == b"x-forwarded-for"
        for hop in value.decode("latin-1").split(",")
    ]
    client = host
    for hop in reversed(hops):
        if not hop:
            continue
        try:
            ip = ipaddress.ip_address(hop)
        except ValueError:
            return client  # a trusted proxy would not write this: keep the last address we can vouch for
        client = str(ip)
        if not any(ip in net for net in trusted):
            return client
    return client


def _within(host: str, networks: Sequence[IPNetwork]) -> bool:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(ip in net for net in networks)


class RouteTable:
    """The app's documented path templates, matched against a request path before routing.

    Read from the OpenAPI schema, which is public and stable, where FastAPI's router internals are not.
    The template is a bounded metric label; the path parameters give the shop id.
    """

    def __init__(self, templates: Iterable[str]) -> None:
        compiled = []
        for template in templates:
            parts = []
            for segment in template.split("/"):
                param = re.fullmatch(r"\{(\w+)\}", segment)
                parts.append(f"(?P<{param.group(1)}>[^/]+)" if param else re.escape(segment))
            compiled.append((template, re.compile("/".join(parts))))
        # literal segments win over parameters, as a more specific route would be declared first
        compiled.sort(key=lambda tp: (tp[1].groups, -len(tp[0])))
        self._compiled = compiled

    @classmethod
    def of(cls, app: Any) -> RouteTable:
        return cls(app.openapi().get("paths", {}))

    def match(self, path: str) -> tuple[str, dict[str, str]]:
        for template, pattern in self._compiled:
            if m := pattern.fullmatch(path):
                return template, m.groupdict()
        return "other", {}


class RateLimiter:
    """The configured limits and their counters; one per app.

    The async counter store belongs to the event loop it was made in, so it is (re)made on the first
    check in a new loop (one loop per worker in production; tests start a loop per client).
    """

    def __init__(
        self,
        shop: str | None,
        client: str | None,
        redis_url: str | None = None,
        prefix: str = "kefu:",
        trusted_proxies: Sequence[IPNetwork] = (),
    ) -> None:
        self.limits: dict[LimitScope, list[RateLimitItem]] = {
            "client": parse_many(client) if client else [],
            "shop": parse_many(shop) if shop else [],
        }
        self.trusted = tuple(trusted_proxies)
        self._redis_url = redis_url
        self._key_prefix = f"{prefix}ratelimit"  # limits adds ":" and its own key
        self._loop: asyncio.AbstractEventLoop | None = None
        self._strategy: FixedWindowRateLimiter | None = None
        self._pool: redis.asyncio.ConnectionPool | None = None
        self._hit_windows: Any = None  # the script above on this loop's Redis client; None: in memory
        self._open_until = 0.0

    @classmethod
    def from_settings(cls, settings: Settings) -> RateLimiter:
        return cls(
            shop=settings.rate_limit_shop,
            client=settings.rate_limit_client,
            redis_url=settings.redis_url,
            prefix=settings.redis_prefix,
            trusted_proxies=settings.trusted_proxy_networks,
        )

    @property
    def enabled(self) -> bool:
        return any(self.limits.values())

    def _strategy_here(self) -> FixedWindowRateLimiter:
        loop = asyncio.get_running_loop()
        if self._strategy is None or self._loop is not loop:
            storage: Storage
            url = (self._redis_url or "").strip()
            if url and not url.startswith("memory:"):
                self._pool = redis.asyncio.ConnectionPool.from_url(
                    url,
                    socket_connect_timeout=STORE_TIMEOUT_SECONDS,
                    socket_timeout=STORE_TIMEOUT_SECONDS,
                )
                # our own pool, so `aclose` can release it (limits' storages have no close); limits
                # types its client options as scalars, hence the untyped mapping
                pool: dict[str, Any] = {"connection_pool": self._pool}
                storage = RedisStorage(
                    f"async+{url}",
                    implementation="redispy",
                    key_prefix=self._key_prefix,
                    wrap_exceptions=True,
                    **pool,
                )
                client = redis.asyncio.Redis(connection_pool=self._pool)
                self._hit_windows = client.register_script(_HIT_WINDOWS)
            else:
                storage = MemoryStorage()
                self._hit_windows = None
            self._loop, self._strategy = loop, FixedWindowRateLimiter(storage)
        return self._strategy

    async def check(self, scope: LimitScope, subject: str) -> Refusal | None:
        """Count one request of `subject`; a Refusal when that goes over one of the scope's limits."""
        return await self.check_all([(scope, subject)])

    async def check_all(self, subjects: Sequence[tuple[LimitScope, str]]) -> Refusal | None:
        """Count one request against each (scope, subject)'s limits in turn, stopping at the first one it
        goes over, which is returned; later ones are not counted. On Redis: one round trip for all."""
        windows = [(scope, subject, item) for scope, subject in subjects for item in self.limits[scope]]
        if not windows or time.monotonic() < self._open_until:
            return None
        strategy = self._strategy_here()
        try:
            if self._hit_windows is not None:
                return await self._hit_in_redis(windows)
            for scope, subject, item in windows:
                if not await strategy.hit(item, scope, subject):
                    stats = await strategy.get_window_stats(item, scope, subject)
                    retry = max(1, math.ceil(stats.reset_time - time.time()))
                    return Refusal(scope, subject, item, retry)
        except (StorageError, redis.RedisError, OSError) as e:
            self._open_until = time.monotonic() + FAIL_OPEN_SECONDS
            RATE_LIMIT_ERRORS.inc()
            log.warning(
                "rate limit store unavailable (%s: %s); requests pass unchecked for %.0f s",
                type(e).__name__,
                e,
                FAIL_OPEN_SECONDS,
            )
        return None

    async def _hit_in_redis(self, windows: list[tuple[LimitScope, str, RateLimitItem]]) -> Refusal | None:
        keys = [f"{self._key_prefix}:{item.key_for(scope, subject)}" for scope, subject, item in windows]
        args = [n for _, _, item in windows for n in (item.get_expiry(), item.amount)]
        over, ttl = await self._hit_windows(keys=keys, args=args)
        if not over:
            return None
        scope, subject, item = windows[int(over) - 1]
        return Refusal(scope, subject, item, max(1, int(ttl)))

    async def exceeded(self, scope: LimitScope, subject: str) -> bool:
        """Whether `subject` has used up one of the scope's limits, without counting a request: a failed
        console login is counted with `check`, and the next attempt is refused before it is verified."""
        items = self.limits[scope]
        if not items or time.monotonic() < self._open_until:
            return False
        strategy = self._strategy_here()
        try:
            for item in items:
                if not await strategy.test(item, scope, subject):
                    return True
        except (StorageError, OSError) as e:
            self._open_until = time.monotonic() + FAIL_OPEN_SECONDS
            RATE_LIMIT_ERRORS.inc()
            log.warning("rate limit store unavailable (%s: %s)", type(e).__name__, e)
        return False

    async def aclose(self) -> None:
        """Release the Redis connections (call in the loop that used them)."""
        pool, self._pool, self._strategy, self._loop = self._pool, None, None, None
        self._hit_windows = None
        if pool is not None:
            await pool.aclose()


class RateLimitMiddleware:
    """Answers 429 with Retry-After before the request reaches authentication or a handler."""

    def __init__(self, app: ASGIApp, limiter: RateLimiter) -> None:
        self.app = app
        self.limiter = limiter
        self._routes: RouteTable | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.limiter.enabled:
            await self.app(scope, receive, send)
            return
        path, root = scope["path"], scope.get("root_path", "")
        if root and path.startswith(root):  # mounted under a prefix (--root-path): routes are below it
            path = path[len(root) :] or "/"
        if path in EXEMPT_PATHS:
            await self.app(scope, receive, send)
            return
        if self._routes is None:  # the schema is complete once the app serves requests
            self._routes = RouteTable.of(scope["app"])
        route, params = self._routes.match(path)
        subjects: list[tuple[LimitScope, str]] = [("client", client_ip(scope, self.limiter.trusted))]
        shop = params.get("shop")
        # an id that cannot be a shop is answered 404 without a lookup: no counter for it
        if isinstance(shop, str) and SHOP_ID.match(shop):
            subjects.append(("shop", shop))
        refusal = await self.limiter.check_all(subjects)  # the shop is not counted if the client is over
        if refusal is None:
            await self.app(scope, receive, send)
            return
        RATE_LIMITED.labels(refusal.scope, route).inc()
        response = JSONResponse(
            {"detail": refusal.detail}, status_code=429, headers={"Retry-After": str(refusal.retry_after)}
        )
        await response(scope, receive, send)
