"""The FastAPI application: `uvicorn api.main:app`, or `create_app(...)` in tests."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import engine
from api import stages
from api.cpu_affinity import pin_process
from api.kb.registry import ShopNotHeldError
from api.metrics import REQUEST_LATENCY, REQUESTS
from api.routes import catalog, health, jd, kb, match, messages, metrics, reports, shops, tasks
from api.settings import Settings, get_settings
from api.store.secrets import SecretKeyError
from api.web.errors import RequestErrors
from api.web.limits import BodySizeLimit, RouteLimit
from api.web.looplag import watch_loop
from api.web.ratelimit import RATE_LIMIT_RESPONSES, RateLimiter, RateLimitMiddleware
from api.web.state import ModelHolder, load_or_build
from api.web.strict_json import validation_errors
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


UNMATCHED_ROUTE = "unmatched"


def _route_template(scope: Scope) -> str:
    """The path template the router matched ("/v1/shops/{shop}/messages"), so label values stay bounded.

    Read from the ASGI scope after the request was handled: the router records the route it chose there
    (also for a 405 on a known path), whereas scanning the app's routes misses the included routers,
    which have no path of their own. Routers are included without an extra prefix (their prefix is set
    on the APIRouter), so the route's own template is the full one. Paths no route matched share one
    label rather than one per scanned URL.
    """
    route = scope.get("route")
    template = getattr(route, "path_format", None) or getattr(route, "path", None)
    return template if isinstance(template, str) and template else UNMATCHED_ROUTE


class CountRequests:
    """Pure ASGI middleware counting every request by route template, method and status, with its
    latency (to the last byte sent). Outermost, so it counts the 413s, 429s and 500s answered inside it;
    Starlette's BaseHTTPMiddleware did this before at the cost of a task and a stream per request."""

    def __init__(self, app: ASGIApp, server_timing: str = "stages") -> None:
        self.app = app
        self.server_timing = server_timing  # KEFU_SERVER_TIMING

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 500
        timed, token = stages.begin()

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if self.server_timing != "off":
                    shown = timed if self.server_timing == "stages" else {}
                    message = _with_server_timing(message, time.perf_counter() - t0, shown)
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            stages.end(token)
            route = _route_template(scope)  # set by the router while handling the request
            REQUESTS.labels(route, scope["method"], str(status)).inc()
            REQUEST_LATENCY.labels(route).observe(time.perf_counter() - t0)


def _with_server_timing(message: Message, seconds: float, timed: dict[str, float]) -> Message:
    """The response start with `Server-Timing: app;dur=MS` (W3C Server Timing) appended: how long the app
    held the request before answering, then the stages timed in it (api.stages: a turn's `turn`, `state`,
    `match`). A client's latency minus `app` is the time outside the app (the socket, the HTTP parser,
    waiting for a CPU or the event loop), which tells a slow handler from a starved process; browsers'
    developer tools show it too."""
    headers = list(message.get("headers", ()))
    headers.append((b"server-timing", stages.header(seconds, timed)))
    return {**message, "headers": headers}


def _route_limits(settings: Settings) -> list[RouteLimit]:
    """Routes whose bodies may be larger than the JSON/form default."""
    multipart_overhead = 64 * 1024  # boundaries, part headers and the form's other fields
    return [
        RouteLimit(
            "POST",
            re.compile(r"/v1/shops/[^/]+/(?:kb|catalog)"),
            settings.kb_max_upload_bytes + multipart_overhead,
        ),
        RouteLimit("PUT", re.compile(r"/v1/shops/[^/]+/settings"), settings.max_settings_body_bytes),
        RouteLimit(
            "POST", re.compile(r"/console/kb/upload"), settings.kb_max_upload_bytes + multipart_overhead
        ),
    ]


def freeze_start_up() -> None:
    """Collect once, then freeze what is left (gc.freeze): start-up's objects live as long as the process,
    and a full collection no longer walks them. Measured in a serving process with the demo model: 340k
    tracked objects, a full collection 220 ms before, under 1 ms after; a shop's model adds a few hundred
    tracked objects (its arrays are memory-mapped). Objects made later, models loaded on a shop's first
    message included, are collected as before."""
    gc.collect()
    gc.freeze()
    log.info("garbage collector: %d start-up objects frozen (KEFU_GC_FREEZE)", gc.get_freeze_count())


def create_app(
    settings: Settings | None = None, matcher: Matcher | None = None, shops_service: bool = True
) -> FastAPI:
    """Build the app; a given `matcher` is served as is on /v1/match and nothing is loaded for it.

    `shops_service` starts the multi-shop service (database, shared state, per-shop models).
    """
    settings = settings or get_settings()
    _configure_logging(settings.log_level)
    # read by the engine when it creates the process's encoder (at the first model with the dense channel)
    os.environ["KEFU_EMBED_QUERY_THREADS"] = str(settings.embed_query_threads)
    if settings.serve_cpu_set and pin_process(settings.serve_cpu_set):  # each uvicorn worker builds its app
        logging.getLogger("kefu.api").info("serving on CPUs %s (KEFU_SERVE_CPUS)", settings.serve_cpus)
    holder = ModelHolder(matcher)
    limiter = RateLimiter.from_settings(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if shops_service:
            from api.dialog.privacy import install_masking
            from api.service import Service

            install_masking()
            app.state.service = await run_in_threadpool(Service, settings)
            if settings.warm_up:
                app.state.service.warm_up()
            if settings.demo_shop:
                from api.demo import seed_demo_shop

                await run_in_threadpool(seed_demo_shop, app.state.service)
            app.state.service.start_schedules()
            app.state.service.start_reconciler()
            if settings.build_cpu_set:  # KB work has CPUs of its own: start its process now
                app.state.service.start_kb_process()
            await run_in_threadpool(app.state.service.start_jd_queue)
            await run_in_threadpool(app.state.service.start_builds)
        if holder.current is None:
            # loading or building is blocking work (a dense build takes tens of seconds)
            holder.swap(await run_in_threadpool(load_or_build, settings))
        # the OpenAPI schema, which the rate limiter reads its route table from (api/web/ratelimit.py), made
        # now: made on a worker's first request, it held the event loop for 190-270 ms
        app.openapi()
        if settings.gc_freeze:
            freeze_start_up()
        watcher = None
        if settings.loop_lag_interval_ms:
            interval, warn = settings.loop_lag_interval_ms / 1000, settings.loop_lag_warn_ms / 1000
            watcher = asyncio.create_task(watch_loop(interval, warn), name="kefu-loop-lag")
        try:
            yield
        finally:
            if watcher is not None:
                watcher.cancel()
            await limiter.aclose()
            console_limiter = getattr(app.state, "console_login_limiter", None)
            if console_limiter is not None:
                await console_limiter.aclose()
            service = getattr(app.state, "service", None)
            if service is not None:
                service.close()

    app = FastAPI(title="Kefu", version=engine.__version__, lifespan=lifespan)
    app.state.settings = settings
    app.state.model_holder = holder
    app.state.service = None
    app.state.rate_limiter = limiter
    # added before count_requests, so it runs inside it: refused requests are counted as 429s
    app.add_middleware(RateLimitMiddleware, limiter=limiter)

    @app.exception_handler(SecretKeyError)
    async def secrets_unavailable(request: Request, exc: SecretKeyError) -> JSONResponse:
        """JD credentials cannot be read or stored without the key: a configuration problem, not a crash."""
        log.error("JD credentials unavailable: %s", exc)
        return JSONResponse(status_code=503, content={"detail": str(exc)})

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        """FastAPI's 422, with inputs it could not write back as JSON (NaN, lone surrogates) and long
        texts made printable instead of a 500 while rendering the error."""
        return JSONResponse(status_code=422, content={"detail": validation_errors(exc)})

    @app.exception_handler(ShopNotHeldError)
    async def shop_not_held(request: Request, exc: ShopNotHeldError) -> JSONResponse:
        """A shop outside this replica's shard (KEFU_SHARD): the router's mistake, said as such."""
        return JSONResponse(status_code=421, content={"detail": str(exc)})

    # Pure ASGI middlewares, innermost first; CountRequests (added last) is outermost, so it counts the
    # 413s and 500s they answer.
    app.add_middleware(BodySizeLimit, default=settings.max_body_bytes, routes=_route_limits(settings))
    app.add_middleware(RequestErrors)
    app.add_middleware(CountRequests, server_timing=settings.server_timing)

    for module in (health, metrics):  # never rate limited
        app.include_router(module.router)
    limited = (match, shops, kb, catalog, messages, reports, tasks, jd)
    for router in (*(m.router for m in limited), jd.shop_router):
        app.include_router(router, responses=RATE_LIMIT_RESPONSES)
    if shops_service:
        from api.console import mount

        mount(app, settings)
    return app


app = create_app()
