"""Logging in to the console (the shop's API key or its console password), logging out, the language.

The login form is protected by a double-submit token (a cookie and a hidden field that must match), as
there is no session yet. A failed login answers the same whether or not the shop exists, after the
same work (a password check against a dummy hash), and counts against the shop's and the client IP's
failed-login limits (KEFU_CONSOLE_LOGIN_LIMIT); over a limit, logins are refused before any check.
"""

from __future__ import annotations

import hmac
import logging
import secrets
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from api.console.i18n import LANGS, Translator, lang_of
from api.console.passwords import hash_password, verify_password
from api.console.sessions import COOKIE
from api.console.web import PREFIX, CsrfDep, render, see_other, sessions_of
from api.db.models import Shop
from api.metrics import AUTH_FAILURES
from api.service import Service
from api.web.auth import key_matches
from api.web.deps import SHOP_ID, ServiceDep
from api.web.ratelimit import RateLimiter, client_ip
from api.web.strict_json import StrictJSONRoute

log = logging.getLogger("kefu.console")
router = APIRouter(route_class=StrictJSONRoute, prefix=PREFIX, include_in_schema=False)
LOGIN_COOKIE = "kefu_console_login"
LANG_COOKIE = "kefu_lang"
_DUMMY_HASH = hash_password(secrets.token_urlsafe(16))  # same cost for a shop that does not exist


def _set_cookie(request: Request, response: Response, name: str, value: str, max_age: int | None) -> None:
    secure = request.app.state.settings.console_secure_cookie
    response.set_cookie(
        name, value, max_age=max_age, path=PREFIX, secure=secure, httponly=True, samesite="strict"
    )


def _verify(service: Service, shop_id: str, secret: str) -> str | None:
    """How the secret proves the shop ("api_key" or "password"), or None."""
    shop = None
    if SHOP_ID.match(shop_id):
        with service.db.session() as s:
            shop = s.scalar(select(Shop).where(Shop.id == shop_id))
    if shop is not None and key_matches(secret, shop.api_key_hash):
        return "api_key"
    stored = shop.console_password_hash if shop is not None else None
    if verify_password(secret, stored or _DUMMY_HASH) and stored:
        return "password"
    return None


def _login_page(request: Request, status_code: int = 200, error: str = "", shop_id: str = "") -> Response:
    token = secrets.token_urlsafe(24)
    response = render(
        request, "login.html", None, status_code, error=error, shop_id=shop_id, login_csrf=token
    )
    _set_cookie(request, response, LOGIN_COOKIE, token, 3600)
    return response


@router.get("")
def root() -> RedirectResponse:
    return see_other(PREFIX + "/try")


@router.get("/login")
def login_form(request: Request) -> Response:
    return _login_page(request)


@router.post("/login")
async def login(
    request: Request,
    service: ServiceDep,
    shop: Annotated[str, Form(max_length=64)] = "",
    secret: Annotated[str, Form(max_length=500)] = "",
    csrf: Annotated[str, Form(max_length=100)] = "",
) -> Response:
    t = Translator(lang_of(request))
    expected = request.cookies.get(LOGIN_COOKIE, "")
    if not expected or not hmac.compare_digest(expected.encode(), csrf.encode()):
        return _login_page(request, 403, t("login.expired"), shop)
    limiter: RateLimiter = request.app.state.console_login_limiter
    ip = client_ip(request.scope, limiter.trusted)
    shop_id = shop.strip().lower()
    if await limiter.exceeded("client", ip) or await limiter.exceeded("shop", shop_id):
        AUTH_FAILURES.labels("console_login_limited").inc()
        return _login_page(request, 429, t("login.limited"), shop)
    via = await run_in_threadpool(_verify, service, shop_id, secret)
    if via is None:
        await limiter.check("client", ip)
        if SHOP_ID.match(shop_id):
            await limiter.check("shop", shop_id)
        AUTH_FAILURES.labels("console_login").inc()
        return _login_page(request, 401, t("login.failed"), shop)
    token, _ = sessions_of(service).create(shop_id, via)
    log.info("console login of shop %s (%s)", shop_id, via)
    response = see_other(PREFIX + "/try")
    _set_cookie(request, response, COOKIE, token, None)  # a browser-session cookie; the server expires it
    response.delete_cookie(LOGIN_COOKIE, path=PREFIX)
    return response


@router.post("/logout")
def logout(request: Request, console: CsrfDep) -> Response:
    sessions_of(console.service).end(request.cookies.get(COOKIE))
    response = see_other(PREFIX + "/login")
    response.delete_cookie(COOKIE, path=PREFIX)
    return response


@router.get("/lang/{lang}")
def set_lang(request: Request, lang: str, next: str = PREFIX + "/try") -> Response:
    """Switch the console's language (a cookie), back to the page the toggle was on."""
    response = see_other(next if next.startswith(PREFIX + "/") and "//" not in next else PREFIX + "/try")
    if lang in LANGS:
        _set_cookie(request, response, LANG_COOKIE, lang, 365 * 86400)
    return response
