"""The FastAPI application: `uvicorn api.main:app`, or `create_app(...)` in tests."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.routing import Match

import engine
from api.metrics import REQUEST_LATENCY, REQUESTS
from api.routes import health, jd, kb, match, messages, metrics, shops, tasks
from api.settings import Settings, get_settings
from api.store.secrets import SecretKeyError
from api.web.state import ModelHolder, load_or_build
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


def _route_template(request: Request) -> str:
    """The matched path template (bounded label values), not the raw path."""
    for route in request.app.router.routes:
        if route.matches(request.scope)[0] == Match.FULL:
            return str(getattr(route, "path", "unmatched"))
    return "unmatched"


def create_app(
    settings: Settings | None = None, matcher: Matcher | None = None, shops_service: bool = True
) -> FastAPI:
    """Build the app; a given `matcher` is served as is on /v1/match and nothing is loaded for it.

    `shops_service` starts the multi-shop service (database, shared state, per-shop models).
    """
    settings = settings or get_settings()
    _configure_logging(settings.log_level)
    holder = ModelHolder(matcher)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if shops_service:
            from api.dialog.privacy import install_masking
            from api.service import Service

            install_masking()
            app.state.service = await run_in_threadpool(Service, settings)
            app.state.service.warm_up()
            app.state.service.start_schedules()
            app.state.service.start_reconciler()
        if holder.current is None:
            # loading or building is blocking work (a dense build takes tens of seconds)
            holder.swap(await run_in_threadpool(load_or_build, settings))
        try:
            yield
        finally:
            service = getattr(app.state, "service", None)
            if service is not None:
                service.close()

    app = FastAPI(title="Kefu", version=engine.__version__, lifespan=lifespan)
    app.state.settings = settings
    app.state.model_holder = holder
    app.state.service = None

    @app.exception_handler(SecretKeyError)
    async def secrets_unavailable(request: Request, exc: SecretKeyError) -> JSONResponse:
        """JD credentials cannot be read or stored without the key: a configuration problem, not a crash."""
        log.error("JD credentials unavailable: %s", exc)
        return JSONResponse(status_code=503, content={"detail": str(exc)})

    @app.middleware("http")
    async def count_requests(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        t0 = time.perf_counter()
        route = _route_template(request)
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            REQUESTS.labels(route, request.method, str(status)).inc()
            REQUEST_LATENCY.labels(route).observe(time.perf_counter() - t0)

    for module in (health, match, shops, kb, messages, tasks, jd, metrics):
        app.include_router(module.router)
    app.include_router(jd.shop_router)
    return app


app = create_app()
