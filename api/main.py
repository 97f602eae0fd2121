"""The FastAPI application: `uvicorn api.main:app`, or `create_app(...)` in tests."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

import engine
from api.routes import health, match
from api.settings import Settings, get_settings
from api.state import ModelHolder, load_or_build
from engine import Matcher

log = logging.getLogger("kefu.api")


def _configure_logging(level: str) -> None:
    """Make the `kefu.*` loggers (API and engine build) visible under uvicorn.

    uvicorn configures only its own loggers, so without a handler our INFO lines would be dropped. A
    handler is added once, and only when nothing upstream (e.g. the root logger) would print them.
    """
    kefu = logging.getLogger("kefu")
    kefu.setLevel(level)
    if not kefu.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        kefu.addHandler(handler)


def create_app(settings: Settings | None = None, matcher: Matcher | None = None) -> FastAPI:
    """Build the app; a given `matcher` is served as is and nothing is loaded at startup."""
    settings = settings or get_settings()
    _configure_logging(settings.log_level)
    holder = ModelHolder(matcher)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if holder.current is None:
            # loading or building is blocking work (a dense build takes tens of seconds)
            holder.swap(await run_in_threadpool(load_or_build, settings))
        yield

    app = FastAPI(title="Kefu", version=engine.__version__, lifespan=lifespan)
    app.state.settings = settings
    app.state.model_holder = holder
    app.include_router(health.router)
    app.include_router(match.router)
    return app


app = create_app()
