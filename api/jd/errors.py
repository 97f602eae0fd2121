"""JOS error hierarchy and the mapping from JOS error codes to it.

Callers branch on the class (re-authorize, back off, fix the request, page someone) rather than on JD's
numeric codes. Messages and reprs carry only the API method, JOS code/descriptions, HTTP status and attempt
count: never the app secret, access token, sign or request parameters, so an exception can be logged or
shown as-is.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

__all__ = [
    "JosApiError",
    "JosAuthError",
    "JosError",
    "JosParamError",
    "JosProtocolError",
    "JosRateLimitError",
    "JosServerError",
    "JosTransportError",
    "error_class_for",
    "error_from_payload",
]


class JosError(Exception):
    """Base of every JOS failure. `retryable` says whether the same call may succeed later unchanged."""

    default_retryable: ClassVar[bool] = False

    def __init__(
        self,
        detail: str = "",
        *,
        code: str | None = None,
        zh_desc: str | None = None,
        en_desc: str | None = None,
        method: str | None = None,
        retryable: bool | None = None,
        http_status: int | None = None,
        attempts: int = 1,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.code = code
        self.zh_desc = zh_desc
        self.en_desc = en_desc
        self.method = method
        self.retryable = self.default_retryable if retryable is None else retryable
        self.http_status = http_status
        # Set by the client once it gives up, so the final error says how hard it tried.
        self.attempts = attempts

    def __str__(self) -> str:
        parts: list[str] = []
        if self.method:
            parts.append(f"{self.method}:")
        if self.code is not None:
            parts.append(f"JOS error {self.code}")
        if self.http_status is not None:
            parts.append(f"HTTP {self.http_status}")
        descs = [d for d in (self.zh_desc, self.en_desc) if d]
        if descs:
            parts.append(" / ".join(dict.fromkeys(descs)))
        if self.detail:
            parts.append(self.detail)
        if self.attempts > 1:
            parts.append(f"(after {self.attempts} attempts)")
        return " ".join(parts) or type(self).__name__

    def __repr__(self) -> str:
        fields = {
            "method": self.method,
            "code": self.code,
            "http_status": self.http_status,
            "zh_desc": self.zh_desc,
            "en_desc": self.en_desc,
            "retryable": self.retryable,
            "attempts": self.attempts,
        }
        shown = ", ".join(f"{k}={v!r}" for k, v in fields.items() if v is not None)
        return f"{type(self).__name__}({shown})"


class JosAuthError(JosError):
    """Credentials, signature, timestamp or API permission rejected; retrying the same request cannot help."""


class JosRateLimitError(JosError):
    """JD throttled us; retry after backing off."""

    default_retryable = True


class JosServerError(JosError):
    """JD-side failure (system busy, internal error, HTTP 5xx); usually transient."""

    default_retryable = True


class JosParamError(JosError):
    """JD rejected the business/system parameters; the request itself must change."""


class JosApiError(JosError):
    """Any other JOS error code (including business-level ones we do not classify)."""


class JosTransportError(JosError):
    """The request never got a JOS answer (connect failure, timeout, dropped connection); `__cause__` holds
    the underlying httpx exception."""

    default_retryable = True


class JosProtocolError(JosError):
    """The answer was not the JSON shape JOS promises (invalid JSON, missing `..._responce` key)."""


_AUTH_CODES = frozenset({"11", "12", "19", "20", "21", "22"})
_RATE_CODES = frozenset({"66", "67"})
_SERVER_CODES = frozenset({"1", "2", "3", "63"})
_PARAM_CODES = frozenset(str(n) for n in range(30, 50))
_RATE_WORDS = ("频率", "流控", "限流", "limit")


def error_class_for(
    code: str | None, zh_desc: str | None = None, en_desc: str | None = None
) -> type[JosError]:
    """Pick the exception class for a JOS error code.

    Explicit codes win over wording, so a parameter error that says "page size limit" stays a param error;
    only otherwise-unknown codes fall back to the rate-limit keywords, because JD adds new throttling codes
    over time but words them consistently.
    """
    c = (code or "").strip()
    if c in _AUTH_CODES:
        return JosAuthError
    if c in _RATE_CODES:
        return JosRateLimitError
    if c in _SERVER_CODES:
        return JosServerError
    if c in _PARAM_CODES:
        return JosParamError
    text = f"{zh_desc or ''} {en_desc or ''}".lower()
    if any(w in text for w in _RATE_WORDS):
        return JosRateLimitError
    return JosApiError


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def error_from_payload(
    payload: Mapping[str, Any], *, method: str | None = None, http_status: int | None = None
) -> JosError:
    """Build the mapped exception from an `error_response` body (or a non-zero `..._responce` body).

    Business-level bodies sometimes use `errorMessage`/`msg` instead of `zh_desc`, so those are accepted too.
    """
    code = _text(payload.get("code"))
    zh = _text(payload.get("zh_desc") or payload.get("errorMessage") or payload.get("msg"))
    en = _text(payload.get("en_desc"))
    cls = error_class_for(code, zh, en)
    return cls(code=code, zh_desc=zh, en_desc=en, method=method, http_status=http_status)
