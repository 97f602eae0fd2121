"""Synchronous JOS router client: signing, retries with backoff, client-side rate limiting, safe logging.

Sync on purpose: callers run it in a worker thread, and one blocking httpx.Client is simpler to reason
about (and to test against a real socket) than an async twin.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import httpx

from .errors import (
    JosApiError,
    JosError,
    JosProtocolError,
    JosRateLimitError,
    JosServerError,
    JosTransportError,
    error_from_payload,
)
from .signing import beijing_timestamp, sign

__all__ = ["API_VERSION", "DEFAULT_BASE_URL", "JosClient", "mask_secret"]

DEFAULT_BASE_URL = "https://api.jd.com/routerjson"
API_VERSION = "2.0"

log = logging.getLogger("kefu.jos")

# Errors where the request provably never reached JD's business logic, so repeating even a write is safe.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


def mask_secret(s: str | None) -> str:
    """`abc***yz` for identifiers worth recognising in logs; short or empty values are masked entirely,
    since showing 5 characters of a short value gives most of it away."""
    if not s or len(s) < 10:
        return "***"
    return f"{s[:3]}***{s[-2:]}"


class _TokenBucket:
    """Thread-safe token bucket; burst capacity is one second's worth of calls.

    A caller takes its token immediately (the count may go negative) and then sleeps outside the lock, so
    concurrent callers queue in order without holding the lock while sleeping.
    """

    def __init__(self, rate: float, clock: Callable[[], float]) -> None:
        self.rate = rate
        self.capacity = max(1.0, rate)
        self._clock = clock
        self._tokens = self.capacity
        self._last = clock()
        self._lock = threading.Lock()

    def reserve(self) -> float:
        """Take one token; return how many seconds the caller must wait before using it."""
        with self._lock:
            now = self._clock()
            elapsed = max(0.0, now - self._last)
            self._last = now
            self._tokens = min(self.capacity, self._tokens + elapsed * self.rate) - 1.0
            return 0.0 if self._tokens >= 0 else -self._tokens / self.rate


class JosClient:
    """Calls JOS router methods and returns the unwrapped `<method>_responce` object.

    `max_retries` counts retries, so up to `max_retries + 1` HTTP requests are made per call. Every
    attempt is re-signed with a fresh timestamp so a long backoff cannot push it out of JD's window.
    """

    def __init__(
        self,
        app_key: str,
        app_secret: str,
        access_token: str | None = None,
        *,
        base_url: str = DEFAULT_BASE_URL,
        timeout: float = 10.0,
        max_retries: int = 3,
        backoff_base: float = 0.5,
        backoff_max: float = 8.0,
        rate_per_second: float | None = 10.0,
        transport: httpx.BaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not app_key or not app_secret:
            raise ValueError("app_key and app_secret are required")
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        if backoff_base < 0 or backoff_max < 0:
            raise ValueError("backoff values must be >= 0")
        if rate_per_second is not None and rate_per_second <= 0:
            raise ValueError("rate_per_second must be positive (or None to disable)")
        self.app_key = app_key
        self._app_secret = app_secret
        self._access_token = access_token
        self.base_url = base_url
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self._clock = clock
        self._sleep = sleep
        self._bucket = _TokenBucket(rate_per_second, clock) if rate_per_second is not None else None
        self._random = random.Random()
        self._http = httpx.Client(
            timeout=timeout,
            transport=transport,
            follow_redirects=False,
            headers={"Accept": "application/json", "User-Agent": "kefu-jos/1"},
        )

    @property
    def access_token(self) -> str | None:
        return self._access_token

    @access_token.setter
    def access_token(self, value: str | None) -> None:
        """Swap in a refreshed token without rebuilding the client (JD tokens expire)."""
        self._access_token = value

    def __repr__(self) -> str:
        token = "<set>" if self._access_token else None
        key = mask_secret(self.app_key)
        return f"JosClient(app_key={key!r}, base_url={self.base_url!r}, access_token={token})"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> JosClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def call(
        self, method: str, params: Mapping[str, Any] | None = None, *, idempotent: bool = True
    ) -> dict[str, Any]:
        """Call `method` with business `params`; return the `..._responce` object or raise a JosError.

        Pass `idempotent=False` for writes (sending a message, changing stock): then only failures that
        provably never reached JD (connect errors, throttling) are retried, since a timed-out write may
        already have happened.
        """
        if not method or not isinstance(method, str):
            raise ValueError("method must be a non-empty string like 'jingdong.xxx.yyy.query'")
        # ASCII-only JSON: the signed string is then byte-identical whatever charset the gateway assumes
        # when decoding the form (servlet containers default to ISO-8859-1 without an explicit charset).
        biz_json = json.dumps(dict(params or {}), ensure_ascii=True, separators=(",", ":"))
        max_attempts = self.max_retries + 1
        protocol_retries_left = 1
        attempt = 0
        while True:
            attempt += 1
            if self._bucket is not None:
                wait = self._bucket.reserve()
                if wait > 0:
                    self._sleep(wait)
            form = self._signed_form(method, biz_json)
            started = self._clock()
            try:
                status, result = self._attempt(method, form)
            except JosError as err:
                elapsed_ms = (self._clock() - started) * 1000
                err.attempts = attempt
                self._scrub_error(err, form["sign"])
                retry = err.retryable and attempt < max_attempts and (idempotent or self._not_sent(err))
                if retry and isinstance(err, JosProtocolError):
                    # Garbage JSON is usually a proxy hiccup worth one more try, never a loop.
                    retry = protocol_retries_left > 0
                    protocol_retries_left -= 1
                log.warning(
                    "jos call method=%s attempt=%d/%d http=%s code=%s elapsed_ms=%.0f outcome=%s error=%s",
                    method,
                    attempt,
                    max_attempts,
                    err.http_status,
                    err.code,
                    elapsed_ms,
                    "retry" if retry else "fail",
                    type(err).__name__,
                )
                if not retry:
                    raise
                self._sleep(self._backoff(attempt))
                continue
            elapsed_ms = (self._clock() - started) * 1000
            log.info(
                "jos call method=%s attempt=%d/%d http=%s code=%s elapsed_ms=%.0f outcome=ok",
                method,
                attempt,
                max_attempts,
                status,
                result.get("code"),
                elapsed_ms,
            )
            return result

    def _signed_form(self, method: str, biz_json: str) -> dict[str, str]:
        form = {
            "method": method,
            "app_key": self.app_key,
            "timestamp": beijing_timestamp(),
            "v": API_VERSION,
            "360buy_param_json": biz_json,
        }
        if self._access_token:
            form["access_token"] = self._access_token
        form["sign"] = sign(form, self._app_secret)
        return form

    def _attempt(self, method: str, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        """One HTTP exchange. POST only: a GET would put the token and sign in the URL, where httpx's own
        request log line, proxies and access logs would record them."""
        try:
            resp = self._http.post(self.base_url, data=form)
        except httpx.UnsupportedProtocol as exc:
            raise JosTransportError(f"bad base_url: {exc}", method=method, retryable=False) from exc
        except httpx.TransportError as exc:
            raise JosTransportError(f"{type(exc).__name__}: {exc}", method=method) from exc
        except httpx.DecodingError as exc:
            raise JosProtocolError(f"undecodable response: {exc}", method=method, retryable=True) from exc
        except httpx.HTTPError as exc:
            raise JosTransportError(f"{type(exc).__name__}: {exc}", method=method, retryable=False) from exc

        status = resp.status_code
        try:
            body: Any = json.loads(resp.content.decode("utf-8-sig"))
            parsed = True
        except ValueError:  # JSONDecodeError and UnicodeDecodeError are both ValueErrors
            body, parsed = None, False

        if isinstance(body, dict) and isinstance(body.get("error_response"), Mapping):
            raise error_from_payload(
                body["error_response"], method=method, http_status=None if status == 200 else status
            )
        if status == 429:
            raise JosRateLimitError("HTTP throttling", method=method, http_status=status)
        if status >= 500:
            raise JosServerError(_preview(resp.content), method=method, http_status=status)
        if not 200 <= status < 300:
            raise JosApiError(_preview(resp.content), method=method, http_status=status)
        if not parsed:
            raise JosProtocolError(
                f"response is not valid JSON: {_preview(resp.content)}", method=method, retryable=True
            )
        if not isinstance(body, dict):
            raise JosProtocolError(f"expected a JSON object, got {type(body).__name__}", method=method)

        base = method.replace(".", "_")
        key = f"{base}_responce"
        inner = body.get(key, body.get(f"{base}_response"))
        if not isinstance(inner, dict):
            keys = ", ".join(list(map(str, body))[:5])
            raise JosProtocolError(f"expected key {key!r}, got keys [{keys}]", method=method)
        code = inner.get("code")
        if code is not None and str(code) != "0":
            raise error_from_payload(inner, method=method)
        return status, inner

    def _backoff(self, attempt: int) -> float:
        """Exponential backoff with 'equal jitter': at least half the step, so retries really back off,
        plus a random half so many workers hitting the same limit do not retry in lockstep."""
        step = min(self.backoff_max, self.backoff_base * 2 ** (attempt - 1))
        return step / 2 + self._random.uniform(0, step / 2)

    @staticmethod
    def _not_sent(err: JosError) -> bool:
        """Whether retrying cannot duplicate a write: JD throttled it at the gateway, or it never left."""
        return isinstance(err, JosRateLimitError) or isinstance(err.__cause__, _NOT_SENT)

    def _scrub_error(self, err: JosError, sign_value: str) -> None:
        """Mask our own secrets should anything (a gateway echo, an exception message) carry them."""
        secrets = [s for s in (self._app_secret, self._access_token, sign_value) if s and len(s) >= 4]
        for attr in ("detail", "zh_desc", "en_desc"):
            text = getattr(err, attr)
            if text:
                for s in secrets:
                    text = text.replace(s, "***")
                setattr(err, attr, text)
        err.args = (err.detail,)


def _preview(content: bytes, limit: int = 120) -> str:
    """Start of a response body, for diagnosing HTML error pages from proxies without flooding logs."""
    text = " ".join(content[: limit * 4].decode("utf-8", "replace").split())
    return repr(text[:limit] + ("..." if len(text) > limit else ""))
