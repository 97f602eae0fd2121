"""Credentials encrypted at rest (shop API tokens, webhook secrets, ...).

Stored credentials are Fernet tokens (AES-128-CBC + HMAC-SHA256, from `cryptography`) under a key
that lives only in the environment (`KEFU_SECRET_KEY`), so a copied database or backup alone does
not reveal them. The variable may hold several comma-separated keys for rotation: the first one
encrypts, all of them decrypt, and `SecretBox.rotate` re-encrypts a stored value under the first.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

__all__ = ["ENV_VAR", "SecretBox", "SecretKeyError", "generate_key", "mask"]

ENV_VAR = "KEFU_SECRET_KEY"
GENERATE_HINT = 'python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"'
_DECRYPT_FAILED = f"cannot decrypt: wrong {ENV_VAR} or damaged value"


class SecretKeyError(RuntimeError):
    """A missing or invalid key, or a value that the configured keys cannot decrypt.

    Messages never contain a key or a token: they end up in logs and HTTP error bodies.
    """


def generate_key() -> str:
    """A fresh Fernet key (url-safe base64 of 32 random bytes) for `KEFU_SECRET_KEY`."""
    return Fernet.generate_key().decode("ascii")


class SecretBox:
    """Encrypts and decrypts short secrets with the key(s) from `KEFU_SECRET_KEY`."""

    def __init__(self, key: str | bytes) -> None:
        text = key.decode("ascii", errors="replace") if isinstance(key, bytes) else str(key)
        keys = [k.strip() for k in text.split(",") if k.strip()]
        if not keys:
            raise SecretKeyError(f"no secret key given; generate one with: {GENERATE_HINT}")
        fernets = []
        for i, k in enumerate(keys, start=1):
            try:
                fernets.append(Fernet(k))
            except (ValueError, TypeError):  # binascii.Error is a ValueError
                raise SecretKeyError(
                    f"{ENV_VAR} key #{i} of {len(keys)} is not a valid Fernet key (url-safe base64 of "
                    f"32 bytes); generate one with: {GENERATE_HINT}"
                ) from None
        self._fernet = MultiFernet(fernets)
        self._n_keys = len(fernets)
        # for keyed hashes: derived from the first key, never the key itself
        self._hash_key = hashlib.sha256(b"kefu keyed hash\x00" + keys[0].encode("ascii")).digest()

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> SecretBox:
        """The box for `KEFU_SECRET_KEY`; a clear error saying how to create one when it is unset."""
        value = env.get(ENV_VAR, "")
        if not value.strip():
            raise SecretKeyError(
                f"{ENV_VAR} is not set; stored credentials are encrypted with it. Generate a key with: "
                f"{GENERATE_HINT} and export {ENV_VAR}=<key> (keep it out of the repository)"
            )
        return cls(value)

    def encrypt(self, plain: str) -> str:
        """Token text (ASCII) for `plain`, encrypted with the first key."""
        return self._fernet.encrypt(plain.encode("utf-8")).decode("ascii")

    def decrypt(self, token: str) -> str:
        """The plain text of a token made with any of the keys; `SecretKeyError` otherwise."""
        try:
            return self._fernet.decrypt(token.encode("ascii")).decode("utf-8")
        except (InvalidToken, UnicodeError, TypeError, ValueError, AttributeError):
            # `from None`: a chained UnicodeEncodeError would quote the token.
            raise SecretKeyError(_DECRYPT_FAILED) from None

    def keyed_hash(self, value: str) -> str:
        """HMAC-SHA256 (hex) of an identifier such as a customer's pin: rows about the same customer can be
        joined without storing who the customer is, and without the key nobody can test a guessed pin.
        Hashes change with the first key: rows hashed before a rotation no longer join new ones."""
        return hmac.new(self._hash_key, value.encode("utf-8"), hashlib.sha256).hexdigest()

    def rotate(self, token: str) -> str:
        """Re-encrypt a stored token under the first key (after adding a new key in front)."""
        try:
            return self._fernet.rotate(token.encode("ascii")).decode("ascii")
        except (InvalidToken, UnicodeError, TypeError, ValueError, AttributeError):
            raise SecretKeyError(_DECRYPT_FAILED) from None

    def __repr__(self) -> str:
        return f"SecretBox(keys={self._n_keys})"


def mask(value: str | None) -> str:
    """A secret for display: enough to tell two apart ("sk-***9f"), too little to use."""
    if not value:
        return ""
    if len(value) < 8:
        return "***"
    return f"{value[:3]}***{value[-2:]}"
