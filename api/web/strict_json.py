"""JSON bodies as RFC 8259 defines them: no NaN or Infinity, no lone UTF-16 surrogates.

Python's `json.loads` accepts both, so without this a body such as `{"text": NaN}` or
`{"text": "\\ud800..."}` got past parsing and failed later, when the 422 that repeats the input, or the
reply that quotes the text, was rendered as UTF-8 JSON: a 500 for what is the caller's mistake. Every
router of the API uses `StrictJSONRoute`, so such a body is a 422 `json_invalid` naming the problem and
where it is, like any other malformed JSON.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute

_HIGH = r"\\u[dD][89abAB][0-9a-fA-F]{2}"
_LOW = r"\\u[dD][c-fC-F][0-9a-fA-F]{2}"
# where a lone surrogate escape stands, for the error's position (the parsed value decides, not this)
_LONE_ESCAPE = re.compile(rf"{_HIGH}(?!{_LOW})|(?<!{_HIGH}){_LOW}")


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def _lone_surrogate(value: Any) -> str | None:
    """The first string (key or value) in `value` that holds a lone surrogate, if any."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                return v
        elif isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return None


def strict_loads(body: bytes | str) -> Any:
    """`json.loads` that raises `json.JSONDecodeError` for NaN, Infinity and lone surrogates."""
    doc = body.decode("utf-8") if isinstance(body, bytes) else body
    try:
        value = json.loads(doc, parse_constant=_refuse_constant)
    except ValueError as e:
        if isinstance(e, json.JSONDecodeError):
            raise
        m = re.search(r"-?(?:NaN|Infinity)", doc)
        raise json.JSONDecodeError(str(e), doc, m.start() if m else 0) from None
    if "\\u" in doc and _lone_surrogate(value) is not None:
        m = _LONE_ESCAPE.search(doc)
        raise json.JSONDecodeError(
            "a string holds a lone UTF-16 surrogate escape (not a Unicode character)",
            doc,
            m.start() if m else 0,
        )
    return value


class StrictJSONRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = strict_loads(await self.body())
        return self._json


class StrictJSONRoute(APIRoute):
    """An APIRoute whose handler reads JSON bodies with `strict_loads`."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict_handler(request: Request) -> Response:
            return await handler(StrictJSONRequest(request.scope, request.receive))

        return strict_handler


def _renderable(value: Any, limit: int = 200) -> Any:
    """`value` made safe to write as JSON and short: non-finite floats, bytes and unencodable strings as
    text."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, bytes | bytearray):  # a body not sent as JSON reaches validation as bytes
        value = bytes(value).decode("utf-8", "backslashreplace")
    if isinstance(value, str):
        value = value.encode("utf-8", "backslashreplace").decode("utf-8")
        return value if len(value) <= limit else value[:limit] + "…"
    if isinstance(value, dict):
        return {str(_renderable(k, limit)): _renderable(v, limit) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_renderable(v, limit) for v in value]
    return value


def validation_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    """FastAPI's 422 detail with each error's `input` made renderable (and long texts cut to 200 chars)."""
    out = []
    for err in exc.errors():
        err = dict(err)
        if "input" in err:
            err["input"] = _renderable(err["input"])
        if "ctx" in err:
            err["ctx"] = _renderable({k: str(v) for k, v in err["ctx"].items()})
        out.append(err)
    return out
