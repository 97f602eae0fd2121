"""Request body limits, enforced before any route reads or parses a body.

An unauthenticated endpoint (the JD push) used to read and parse a body of any size, so a single 200 MB
request could take a worker's memory. This pure ASGI middleware refuses a declared Content-Length over
the route's limit at once (nothing is read), and counts the chunks of a body sent without one, stopping
at the limit: either way the answer is 413 with the limit in the message, and at most `limit` bytes
are ever buffered.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

from fastapi import HTTPException, status
from starlette.types import ASGIApp, Message, Receive, Scope, Send


@dataclass(frozen=True, slots=True)
class RouteLimit:
    """A limit other than the default for the requests whose method and path match."""

    method: str
    path: re.Pattern[str]
    limit: int


class BodyTooLarge(HTTPException):
    """Raised from `receive` when a streamed body passes its limit.

    An HTTPException, so FastAPI's body parsing and the routes pass it through as a 413 answer.
    """

    def __init__(self, limit: int) -> None:
        # the rest of the body is not read, so the connection cannot carry another request
        super().__init__(
            status.HTTP_413_CONTENT_TOO_LARGE,
            too_large_message(limit),
            headers={"Connection": "close"},
        )
        self.limit = limit


def too_large_message(limit: int) -> str:
    return f"request body is larger than the limit of {limit:,} bytes for this route"


class BodySizeLimit:
    """Pure ASGI middleware: 413 for bodies over the route's limit, checked before they are read."""

    def __init__(self, app: ASGIApp, default: int, routes: Sequence[RouteLimit] = ()) -> None:
        self.app, self.default, self.routes = app, default, tuple(routes)

    def limit_for(self, method: str, path: str) -> int:
        for r in self.routes:
            if r.method == method and r.path.fullmatch(path):
                return r.limit
        return self.default

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["method"], scope["path"])
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await _refuse(send, limit)
            return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if started:
                raise
            await _refuse(send, limit)


def _content_length(scope: Scope) -> int | None:
    """The declared Content-Length; an unreadable one counts as none (the stream is counted instead)."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _refuse(send: Send, limit: int) -> None:
    body = json.dumps({"detail": too_large_message(limit), "limit_bytes": limit}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status.HTTP_413_CONTENT_TOO_LARGE,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
