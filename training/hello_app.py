"""A FastAPI hello-world POST app: the ceiling of the HTTP stack, for `kefu bench-http`'s `hello` scenario.

Served exactly as the benchmark serves the service (uvicorn, same workers, httptools + uvloop), it takes
the same request bodies and validates them with pydantic, so the gap between its figures and the service's
is the service's own work, not the server's.
"""

from __future__ import annotations

from fastapi import FastAPI
from pydantic import BaseModel


class Hello(BaseModel):
    text: str


app = FastAPI(title="hello")


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    """What the benchmark's readiness check polls, as on the service."""
    return {"status": "ok"}


@app.post("/hello")
async def hello(body: Hello) -> dict[str, int]:
    return {"chars": len(body.text)}
