"""Settings: the shop's mode, target precision (beside the coverage it implies), handoff phrases,
small-talk replies and JD credentials (the AppSecret is write-only: shown masked, never sent back).

Engine options are validated by the API's own ShopSettings model and apply from the next publish, as
with PUT /v1/shops/{shop}/settings.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import ValidationError

from api.console.evaluation import last_evaluation
from api.console.web import PREFIX, Console, ConsoleDep, CsrfDep, render
from api.db.models import Shop
from api.dialog.replies import DEFAULT_REPLIES
from api.store.secrets import SecretKeyError, mask
from api.web.schemas import ShopSettings
from api.web.strict_json import StrictJSONRoute
from engine.decide import DEFAULT_HUMAN_PHRASES

router = APIRouter(route_class=StrictJSONRoute, prefix=PREFIX, include_in_schema=False)
MODES = ("auto", "assist", "off")


def _jd(console: Console) -> dict[str, str] | None:
    shop = console.shop
    if not shop.jd_app_key:
        return None
    box = console.service.secret_box
    return {
        "app_key": mask(box.decrypt(shop.jd_app_key)),
        "app_secret": mask(box.decrypt(shop.jd_app_secret)) if shop.jd_app_secret else "",
        "access_token": mask(box.decrypt(shop.jd_access_token)) if shop.jd_access_token else "",
    }


def _page(request: Request, console: Console, status_code: int = 200, **extra: Any) -> Response:
    settings = ShopSettings(**(console.shop.settings or {}))
    try:
        jd = _jd(console)
        jd_error = ""
    except SecretKeyError as e:
        jd, jd_error = None, str(e)
    return render(
        request,
        "settings.html",
        console,
        status_code,
        modes=MODES,
        settings=settings,
        smalltalk_defaults=DEFAULT_REPLIES,
        default_phrases=DEFAULT_HUMAN_PHRASES,
        evaluation=last_evaluation(console),
        jd=jd,
        jd_error=jd_error,
        secret_key=console.service.settings.secret_key is not None,
        **extra,
    )


@router.get("/settings")
def settings_page(request: Request, console: ConsoleDep) -> Response:
    return _page(request, console)


def _save_shop(console: Console, **fields: Any) -> None:
    with console.service.db.session() as s:
        row = s.get(Shop, console.shop.id)
        assert row is not None
        for name, value in fields.items():
            setattr(row, name, value)
        s.flush()
        s.expunge(row)
    console.shop = row


@router.post("/settings/mode")
async def save_mode(request: Request, console: CsrfDep) -> Response:
    mode = (await request.form()).get("mode")
    if mode not in MODES:
        return _page(request, console, 400, error=console.t("settings.bad_mode"))
    _save_shop(console, mode=mode)
    return _page(request, console, notice=console.t("settings.saved_mode", mode=console.t(f"mode.{mode}")))


def _lines(text: Any) -> list[str]:
    return [line.strip() for line in str(text or "").splitlines() if line.strip()]


@router.post("/settings/engine")
async def save_engine(request: Request, console: CsrfDep) -> Response:
    """Target precision, handoff phrases and small-talk replies, checked by ShopSettings as a whole."""
    form = await request.form()
    current = dict(console.shop.settings or {})
    smalltalk = {}
    for intent in DEFAULT_REPLIES:
        reply = str(form.get(f"smalltalk_{intent}") or "").strip()
        smalltalk[intent] = {"enabled": form.get(f"enabled_{intent}") == "on", "reply": reply or None}
    phrases = _lines(form.get("human_phrases"))
    candidate = {
        **current,
        "target_precision": form.get("target_precision"),
        "human_phrases": phrases or None,
        "smalltalk": smalltalk,
    }
    try:
        checked = ShopSettings(**candidate)
    except ValidationError as e:
        problems = [f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors()]
        return _page(request, console, 400, error=console.t("settings.invalid"), problems=problems)
    _save_shop(console, settings=checked.model_dump())
    return _page(request, console, notice=console.t("settings.saved_engine"))


@router.post("/settings/jd")
async def save_jd(request: Request, console: CsrfDep) -> Response:
    """JD AppKey and AppSecret (and access token); a blank secret keeps the stored one."""
    form = await request.form()
    t = console.t
    app_key = str(form.get("app_key") or "").strip()
    app_secret = str(form.get("app_secret") or "").strip()
    token = str(form.get("access_token") or "").strip()
    if console.service.settings.secret_key is None:
        return _page(request, console, 503, error=t("settings.no_secret_key"))
    if not app_key and console.shop.jd_app_key is None:
        return _page(request, console, 400, error=t("settings.jd_key_needed"))
    if not app_secret and console.shop.jd_app_secret is None:
        return _page(request, console, 400, error=t("settings.jd_secret_needed"))
    if (
        any(len(v) > 200 for v in (app_key, app_secret))
        or len(token) > 500
        or "\x00" in app_key + app_secret + token
    ):
        return _page(request, console, 400, error=t("settings.jd_too_long"))
    box = console.service.secret_box
    fields: dict[str, Any] = {}
    if app_key:
        fields["jd_app_key"] = box.encrypt(app_key)
    if app_secret:
        fields["jd_app_secret"] = box.encrypt(app_secret)
    if token:
        fields["jd_access_token"] = box.encrypt(token)
    _save_shop(console, **fields)
    return _page(request, console, notice=t("settings.saved_jd"))
