"""The merchant console: server-rendered pages at /console on the service's own functions.

Jinja2 templates, hand-written CSS and a little vanilla JS served by the app itself (no build step, no
CDN), charts as inline SVG drawn on the server. Sessions live in the service's store (see sessions.py);
every page is scoped to the session's shop. `mount(app)` adds it to the FastAPI app.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.console import auth_routes, kb_routes, logs_routes, settings_routes, try_routes
from api.console.web import HERE, PREFIX, LoginRequired, render, see_other
from api.settings import Settings
from api.web.ratelimit import RateLimiter

ROUTERS = (auth_routes, try_routes, kb_routes, logs_routes, settings_routes)


def login_limiter(settings: Settings) -> RateLimiter:
    """Failed console logins per shop and per client IP (KEFU_CONSOLE_LOGIN_LIMIT)."""
    return RateLimiter(
        shop=settings.console_login_limit,
        client=settings.console_login_limit,
        redis_url=settings.redis_url,
        prefix=f"{settings.redis_prefix}console-login:",
        trusted_proxies=settings.trusted_proxy_networks,
    )


def mount(app: FastAPI, settings: Settings) -> None:
    """Add the console's routes, static files and error pages to `app`."""
    app.state.console_login_limiter = login_limiter(settings)
    for module in ROUTERS:
        app.include_router(module.router)
    app.mount(f"{PREFIX}/static", StaticFiles(directory=HERE / "static"), name="console-static")

    @app.exception_handler(LoginRequired)
    async def login_required(request: Request, exc: LoginRequired) -> Response:
        if request.headers.get("accept", "").startswith("application/json"):
            return JSONResponse({"detail": "log in to the console first"}, status_code=401)
        return see_other(f"{PREFIX}/login")

    @app.exception_handler(StarletteHTTPException)
    async def console_errors(request: Request, exc: StarletteHTTPException) -> Response:
        """Console pages get an HTML error page; the API keeps FastAPI's JSON answers."""
        path = request.url.path
        wants_html = "text/html" in request.headers.get("accept", "")
        if (path == PREFIX or path.startswith(PREFIX + "/")) and wants_html:
            return render(request, "error.html", None, exc.status_code, page="error", detail=str(exc.detail))
        return await http_exception_handler(request, exc)
