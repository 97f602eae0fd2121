"""What every console page needs: the session's shop, the language, CSRF checks and HTML rendering.

Routes stay thin: they take `ConsoleDep` (a logged-in session and its shop, fresh from the database) or
`CsrfDep` (the same, for a state-changing request whose CSRF token was checked) and render a template.
Every query a page makes is scoped by `console.shop.id`, the session's shop: never an id from the URL.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import Depends, HTTPException, Request, status
from fastapi.responses import RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from api.console.i18n import LANGS, Translator, lang_of
from api.console.reasons import reason_text
from api.console.sessions import COOKIE, ConsoleSession, Sessions
from api.db.models import Shop
from api.jd import BEIJING
from api.service import Service
from api.web.deps import ServiceDep

HERE = Path(__file__).resolve().parent
TEMPLATES = Jinja2Templates(directory=HERE / "templates")


def beijing_time(moment: datetime, fmt: str) -> str:
    """A stored moment (UTC) as the merchant's clock shows it: the console speaks Beijing time."""
    return moment.astimezone(BEIJING).strftime(fmt)


TEMPLATES.env.filters["beijing"] = beijing_time
PREFIX = "/console"
# console pages load nothing but the app's own CSS and JS; no inline script, no frames, forms post here
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
NAV = ("try", "kb", "conversations", "unanswered", "quality", "settings")


class LoginRequired(Exception):
    """No valid session: pages redirect to the login page, fetch calls get a 401."""


@dataclass
class Console:
    """A logged-in request: the service, the session and its shop (a detached row), the language."""

    service: Service
    session: ConsoleSession
    shop: Shop
    lang: str
    t: Translator


def sessions_of(service: Service) -> Sessions:
    return Sessions(service.store, service.settings.console_session_minutes)


def current(request: Request, service: ServiceDep) -> Console:
    """The session of the cookie and its shop; LoginRequired when there is none (or it expired)."""
    session = sessions_of(service).get(request.cookies.get(COOKIE))
    if session is None:
        raise LoginRequired
    with service.db.session() as s:
        shop = s.get(Shop, session.shop)
        if shop is not None:
            s.expunge(shop)
    if shop is None:  # the shop was deleted while logged in
        sessions_of(service).end(request.cookies.get(COOKIE))
        raise LoginRequired
    lang = lang_of(request)
    return Console(service=service, session=session, shop=shop, lang=lang, t=Translator(lang))


ConsoleDep = Annotated[Console, Depends(current)]


async def csrf_checked(request: Request, console: ConsoleDep) -> Console:
    """The session, once the request carries its CSRF token (X-CSRF-Token header or `csrf` form field)."""
    given = request.headers.get("x-csrf-token")
    if not given and request.method == "POST":
        kind = request.headers.get("content-type", "")
        if kind.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
            given_field = (await request.form()).get("csrf")
            given = given_field if isinstance(given_field, str) else None
    if not console.session.csrf_ok(given):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "the console's CSRF token is missing or wrong")
    return console


CsrfDep = Annotated[Console, Depends(csrf_checked)]


def render(
    request: Request, template: str, console: Console | None, status_code: int = 200, **context: Any
) -> Response:
    """A console page with the layout's context (nav, language toggle, CSRF token) and security headers."""
    lang = console.lang if console else lang_of(request)
    t = console.t if console else Translator(lang)
    page = context.pop("page", template.removesuffix(".html"))
    ctx = {
        "t": t,
        "why": lambda reason: reason_text(reason, t),  # a logged reason in the page's language
        "lang": lang,
        "langs": LANGS,
        "page": page,
        "nav": NAV,
        "console": console,
        "shop": console.shop if console else None,
        "csrf": console.session.csrf if console else context.pop("login_csrf", ""),
        "here": quote(request.url.path + (f"?{request.url.query}" if request.url.query else ""), safe="/?=&"),
        **context,
    }
    response = TEMPLATES.TemplateResponse(request, template, ctx, status_code=status_code)
    response.headers.update(SECURITY_HEADERS)
    return response


def see_other(path: str) -> RedirectResponse:
    """Post/redirect/get: a 303 to a console path (never elsewhere)."""
    if not path.startswith(PREFIX + "/") and path != PREFIX:
        path = PREFIX + "/try"
    return RedirectResponse(path, status_code=status.HTTP_303_SEE_OTHER)
