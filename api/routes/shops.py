"""Shops: created by the operator (admin token), then managed with the shop's own API key."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Response, status
from sqlalchemy.exc import IntegrityError

from api.db.models import Shop
from api.service import Service
from api.web.auth import hash_key, new_api_key
from api.web.deps import SHOP_AUTH_RESPONSES, SHOP_ID, AdminDep, ServiceDep, ShopDep
from api.web.schemas import (
    ConsolePasswordIn,
    JdCredentialsIn,
    JdCredentialsOut,
    ModeIn,
    ShopCreate,
    ShopKey,
    ShopOut,
    ShopSettings,
)
from api.web.strict_json import StrictJSONRoute

router = APIRouter(route_class=StrictJSONRoute, tags=["shops"])


def shop_out(service: Service, shop: Shop) -> ShopOut:
    """`served_version`: the version this replica answers the shop's next message with: its loaded
    model's, or, where none is loaded and the replica holds the shop, the active version (that message
    loads it). A publish is live once it equals the published version; `loaded` says whether the model is
    in this replica's memory now."""
    served = service.registry.peek(shop.id)  # a look, not a use: the LRU order stays
    if served is not None:
        served_version: int | None = served.version
    elif service.registry.holds(shop.id):
        served_version = shop.active_version
    else:
        served_version = None
    return ShopOut(
        id=shop.id,
        name=shop.name,
        mode=shop.mode,  # type: ignore[arg-type]
        active_version=shop.active_version,
        served_version=served_version,
        loaded=served is not None,
        jd=jd_out(service, shop),
    )


def jd_out(service: Service, shop: Shop) -> JdCredentialsOut:
    """JD credentials as the merchant may see them: masked, never decrypted into a response."""
    if not shop.jd_app_key:
        return JdCredentialsOut(configured=False)
    from api.store.secrets import mask

    box = service.secret_box
    return JdCredentialsOut(
        configured=True,
        app_key=mask(box.decrypt(shop.jd_app_key)),
        app_secret=mask(box.decrypt(shop.jd_app_secret or "")) if shop.jd_app_secret else "",
        access_token=mask(box.decrypt(shop.jd_access_token)) if shop.jd_access_token else "",
    )


ADMIN_RESPONSES: dict[int | str, dict[str, Any]] = {401: {"description": "no valid X-Admin-Token"}}


@router.post(
    "/v1/admin/shops",
    status_code=status.HTTP_201_CREATED,
    response_model=ShopKey,
    responses={**ADMIN_RESPONSES, 409: {"description": "a shop with this id exists"}},
)
def create_shop(body: ShopCreate, service: ServiceDep, _: AdminDep) -> ShopKey:
    key = new_api_key()
    try:
        with service.db.session() as s:
            s.add(Shop(id=body.id, name=body.name, mode=body.mode, api_key_hash=hash_key(key), settings={}))
    except IntegrityError as e:
        raise HTTPException(status.HTTP_409_CONFLICT, f"shop {body.id!r} already exists") from e
    return ShopKey(id=body.id, api_key=key)


@router.post(
    "/v1/admin/shops/{shop}/api-key",
    response_model=ShopKey,
    responses={**ADMIN_RESPONSES, 404: {"description": "no such shop"}},
)
def rotate_key(shop: str, service: ServiceDep, _: AdminDep) -> ShopKey:
    if not SHOP_ID.match(shop):  # e.g. a NUL, which the database cannot even compare
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no shop {shop!r}")
    key = new_api_key()
    with service.db.session() as s:
        row = s.get(Shop, shop)
        if row is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no shop {shop!r}")
        row.api_key_hash = hash_key(key)
    return ShopKey(id=shop, api_key=key)


@router.put(
    "/v1/admin/shops/{shop}/console-password",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses={**ADMIN_RESPONSES, 404: {"description": "no such shop"}},
)
def set_console_password(shop: str, body: ConsolePasswordIn, service: ServiceDep, _: AdminDep) -> Response:
    """Set the password the merchant logs in to the console with (/console); stored as a scrypt hash,
    never shown. The shop's API key is accepted at the console's login as well."""
    from api.console.passwords import hash_password

    if not SHOP_ID.match(shop):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no shop {shop!r}")
    digest = hash_password(body.password)
    with service.db.session() as s:
        row = s.get(Shop, shop)
        if row is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no shop {shop!r}")
        row.console_password_hash = digest
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/v1/shops/{shop}", response_model=ShopOut, responses=SHOP_AUTH_RESPONSES)
def get_shop(shop: ShopDep, service: ServiceDep) -> ShopOut:
    return shop_out(service, shop)


@router.put("/v1/shops/{shop}/mode", response_model=ShopOut, responses=SHOP_AUTH_RESPONSES)
def set_mode(body: ModeIn, shop: ShopDep, service: ServiceDep) -> ShopOut:
    """auto: the bot answers; assist: it only suggests to the agent; off: everything goes to humans."""
    with service.db.session() as s:
        row = s.get(Shop, shop.id)
        assert row is not None
        row.mode = body.mode
        s.flush()
        s.expunge(row)
    return shop_out(service, row)


@router.put(
    "/v1/shops/{shop}/jd-credentials",
    response_model=JdCredentialsOut,
    responses={**SHOP_AUTH_RESPONSES, 503: {"description": "KEFU_SECRET_KEY is not configured"}},
)
def set_jd_credentials(body: JdCredentialsIn, shop: ShopDep, service: ServiceDep) -> JdCredentialsOut:
    box = service.secret_box
    with service.db.session() as s:
        row = s.get(Shop, shop.id)
        assert row is not None
        row.jd_app_key = box.encrypt(body.app_key)
        row.jd_app_secret = box.encrypt(body.app_secret)
        row.jd_access_token = box.encrypt(body.access_token) if body.access_token else None
        s.flush()
        s.expunge(row)
    return jd_out(service, row)


@router.get("/v1/shops/{shop}/settings", response_model=ShopSettings, responses=SHOP_AUTH_RESPONSES)
def get_settings(shop: ShopDep) -> ShopSettings:
    return ShopSettings(**(shop.settings or {}))


@router.put("/v1/shops/{shop}/settings", response_model=ShopSettings, responses=SHOP_AUTH_RESPONSES)
def put_settings(body: ShopSettings, shop: ShopDep, service: ServiceDep) -> ShopSettings:
    """Dictionary, synonyms, human phrases and target precision for the shop's next publish."""
    with service.db.session() as s:
        row = s.get(Shop, shop.id)
        assert row is not None
        row.settings = body.model_dump()
    return body
