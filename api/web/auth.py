"""Shop API keys: random tokens shown once, stored only as SHA-256 digests.

A key is 32 random bytes, so a plain digest is enough (no password-style stretching is needed); the
comparison is constant-time. The admin token that creates shops comes from the environment.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

KEY_PREFIX = "kf_"


def new_api_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def key_matches(key: str | None, digest: str) -> bool:
    if not key:
        return False
    return hmac.compare_digest(hash_key(key), digest)


def admin_token_matches(given: str | None, expected: str | None) -> bool:
    """No admin token configured means the admin API is closed, not open."""
    if not expected or not given:
        return False
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))
