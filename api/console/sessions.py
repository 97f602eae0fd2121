"""Console sessions: a random token in an HttpOnly cookie, its state server-side in the service's store.

The store is the one conversations use (Redis when configured, so every replica knows the session; else
in-process). The key is a digest of the token, so a dump of the store holds no usable cookie. A session
ends `minutes` after its last request (each request renews it) and MAX_AGE after login at most; logout
deletes it at once. Each session has its own CSRF token, required on every state-changing request.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Any

from api.store.kv import KeyValueStore

COOKIE = "kefu_console"
MAX_AGE = 24 * 3600  # seconds after login, however active the session is
_PREFIX = "console:session:"


@dataclass(frozen=True)
class ConsoleSession:
    shop: str
    csrf: str
    created: float  # time.time() at login
    via: str  # "password" or "api_key": how the merchant logged in

    def csrf_ok(self, given: str | None) -> bool:
        return bool(given) and hmac.compare_digest(str(given).encode(), self.csrf.encode())


def _key(token: str) -> str:
    return _PREFIX + hashlib.sha256(token.encode("utf-8")).hexdigest()


class Sessions:
    """Create, look up (renewing) and end console sessions."""

    def __init__(self, store: KeyValueStore, minutes: int, clock: Any = time.time) -> None:
        self.store = store
        self.ttl = minutes * 60
        self.clock = clock

    def create(self, shop: str, via: str) -> tuple[str, ConsoleSession]:
        """A new session of `shop`; returns the token for the cookie (never stored as such)."""
        token = secrets.token_urlsafe(32)
        session = ConsoleSession(shop=shop, csrf=secrets.token_urlsafe(32), created=self.clock(), via=via)
        self.store.set_json(_key(token), session.__dict__, self.ttl)
        return token, session

    def get(self, token: str | None) -> ConsoleSession | None:
        """The session of a cookie, renewed for another `minutes`; None when unknown or expired."""
        if not token or len(token) > 100:
            return None
        raw = self.store.get_json(_key(token))
        if not isinstance(raw, dict):
            return None
        try:
            session = ConsoleSession(
                shop=str(raw["shop"]),
                csrf=str(raw["csrf"]),
                created=float(raw["created"]),
                via=str(raw["via"]),
            )
        except (KeyError, TypeError, ValueError):
            return None
        age = self.clock() - session.created
        if age >= MAX_AGE:
            self.store.delete(_key(token))
            return None
        self.store.set_json(_key(token), raw, max(1, min(self.ttl, int(MAX_AGE - age))))
        return session

    def end(self, token: str | None) -> None:
        if token and len(token) <= 100:
            self.store.delete(_key(token))
