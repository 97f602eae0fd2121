"""Request ids and the last-resort answer to an unexpected error.

Every response carries `X-Request-ID` (a sane incoming one is kept, so a caller's id follows the request
through). An exception no handler turned into an answer becomes one JSON 500 naming the request id and
one log line with the same id and where it was raised: a request that can be repeated at will (e.g. a
hostile body on an unauthenticated route) must not be able to fill the log with tracebacks.
HTTPException and validation errors never get here; FastAPI's handlers answer them further in.
"""

from __future__ import annotations

import json
import logging
import re
import traceback
import uuid

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUEST_ID_HEADER = "X-Request-ID"
_SANE_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")
# the log's masking reads a run of 10 or more digits as a phone, card or ID number: about one random hex
# id in twelve holds one (258 of 3,000 measured), and its log line would then name another id than the
# response did
_DIGIT_RUN = re.compile(r"\d{10}")
_MAX_MESSAGE = 300
_PROJECT_DIRS = ("/api/", "/engine/")

log = logging.getLogger("kefu.api")


def request_id(scope: Scope) -> str:
    """The id this request goes by (set by RequestErrors)."""
    return str(scope.get("state", {}).get("request_id", ""))


def new_request_id() -> str:
    """A random hex id that the log's masking leaves as it is (no run of 10 digits)."""
    while _DIGIT_RUN.search(rid := uuid.uuid4().hex):
        pass
    return rid


class RequestErrors:
    """Pure ASGI middleware: X-Request-ID on every response, one JSON 500 + one log line per crash."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = _incoming_id(scope) or new_request_id()
        scope.setdefault("state", {})["request_id"] = rid
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = rid
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            log.error(
                "unhandled %s in %s %s (request %s, raised at %s): %s",
                type(exc).__name__,
                scope["method"],
                scope["path"],
                rid,
                _origin(exc),
                str(exc)[:_MAX_MESSAGE],
            )
            if started:  # too late for another answer; the server closes the connection
                return
            body = json.dumps({"detail": "internal error", "request_id": rid}).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 500,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                        (REQUEST_ID_HEADER.lower().encode(), rid.encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})


def _incoming_id(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"x-request-id" and _SANE_ID.fullmatch(value):
            return value.decode("ascii")
    return None


def _origin(exc: BaseException) -> str:
    """Where it was raised (and the innermost project frame on the way), so one line says where to look."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return "?"
    where = [frames[-1]]
    ours = [f for f in frames if any(part in f.filename for part in _PROJECT_DIRS)]
    if ours and ours[-1] is not frames[-1]:
        where.append(ours[-1])
    return " via ".join(f"{f.filename}:{f.lineno} ({f.name})" for f in where)
