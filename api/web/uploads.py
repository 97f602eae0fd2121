"""File uploads read without stalling the event loop.

Starlette parses a multipart form on the event loop: a 12 MB upload kept every other request of that worker
(its /healthz included) waiting about 0.2 s. Here the body is only spooled on the loop, chunk by chunk as it
arrives (BodySizeLimit has capped it already), and the multipart parsing runs in a worker thread.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import IO, Any

import python_multipart
from fastapi import HTTPException, Request, status
from fastapi.exceptions import RequestValidationError
from starlette.concurrency import run_in_threadpool

from engine.kb import SUPPORTED_SUFFIXES

SPOOL_IN_MEMORY = 1 << 20  # bytes of a body kept in memory before it spills to a temporary file


def upload_body(field: str, description: str) -> dict[str, Any]:
    """The OpenAPI requestBody of a route that takes one file in the multipart field `field`."""
    schema = {
        "type": "object",
        "required": [field],
        "properties": {field: {"type": "string", "format": "binary", "description": description}},
    }
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}}


def _missing(field: str, why: str) -> RequestValidationError:
    # reported like FastAPI's own 422s (the documented HTTPValidationError), so clients parse one format
    return RequestValidationError([{"type": "missing", "loc": ("body", field), "msg": why, "input": None}])


def _file_part(
    body: IO[bytes], size: int, content_type: str, field: str, max_bytes: int
) -> tuple[str, bytes]:
    """(file name, content) of the part named `field`; blocking, run in a worker thread."""
    found: list[tuple[str, bytes]] = []
    too_large: list[str] = []

    def on_file(f: Any) -> None:
        if f.field_name != field.encode() or found:
            return
        name = (f.file_name or b"").decode("utf-8", "replace")
        f.file_object.seek(0, 2)
        if f.file_object.tell() > max_bytes:
            too_large.append(name)
            return
        f.file_object.seek(0)
        found.append((name, f.file_object.read()))

    headers = {"Content-Type": content_type.encode("latin-1"), "Content-Length": str(size).encode()}
    try:
        python_multipart.parse_form(headers, body, on_field=lambda f: None, on_file=on_file)
    except (python_multipart.exceptions.FormParserError, ValueError) as e:
        raise _missing(field, f"the body is not a readable multipart form ({e})") from e
    if too_large:
        raise HTTPException(
            status.HTTP_413_CONTENT_TOO_LARGE,
            f"{Path(too_large[0]).name or field} is larger than the limit of {max_bytes:,} bytes "
            "(KEFU_KB_MAX_UPLOAD_BYTES)",
        )
    if not found:
        raise _missing(field, f"a file in the multipart field '{field}' is required")
    return found[0]


def upload_name(filename: str, default: str) -> tuple[str, str]:
    """(file name, lower-case suffix) of an upload; 422 when its type is not one the KB reader takes."""
    name = Path(filename or default).name or default
    suffix = Path(name).suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise HTTPException(
            422,
            f"{name}: unsupported file type {suffix or '(none)'}; use one of {', '.join(SUPPORTED_SUFFIXES)}",
        )
    return name, suffix


async def read_upload(request: Request, field: str, max_bytes: int) -> tuple[str, bytes]:
    """(file name, content) of the uploaded file in `field`: spooled on the loop, parsed in a thread."""
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise _missing(field, "send the file as multipart/form-data")
    body = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)  # noqa: SIM115 (closed below)
    try:
        size = 0
        async for chunk in request.stream():
            body.write(chunk)
            size += len(chunk)
        body.seek(0)
        return await run_in_threadpool(_file_part, body, size, content_type, field, max_bytes)
    finally:
        body.close()
