"""Dependencies of the shop routes: the service, the shop named in the path, and its API key."""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import Depends, Header, HTTPException, Path, Request, status
from sqlalchemy import select

from api.db.models import Shop
from api.metrics import AUTH_FAILURES
from api.service import Service
from api.web.auth import admin_token_matches, hash_key, key_matches

SHOP_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


def get_service(request: Request) -> Service:
    service: Service | None = getattr(request.app.state, "service", None)
    if service is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "the shop service is not running")
    return service


ServiceDep = Annotated[Service, Depends(get_service)]


def require_admin(
    service: ServiceDep, x_admin_token: Annotated[str | None, Header(description="operator token")] = None
) -> None:
    expected = service.settings.admin_token
    if not admin_token_matches(x_admin_token, expected.get_secret_value() if expected else None):
        AUTH_FAILURES.labels("bad_admin_token").inc()
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "a valid X-Admin-Token header is required")


def require_shop(
    service: ServiceDep,
    shop: Annotated[str, Path(description="shop id", max_length=64)],
    x_api_key: Annotated[str | None, Header(description="the shop's API key")] = None,
) -> Shop:
    """The shop, if the key is its own: 401 no/invalid key, 403 another shop's key.

    Neither answer depends on whether the shop in the path exists, so an outsider cannot probe for shop
    ids; only the metric's reason tells the cases apart.
    """
    owner = None
    exists = False
    with service.db.session() as s:
        if x_api_key:
            owner = s.scalar(select(Shop).where(Shop.api_key_hash == hash_key(x_api_key)))
        if owner is not None and owner.id == shop and key_matches(x_api_key, owner.api_key_hash):
            s.expunge(owner)
            return owner
        exists = bool(SHOP_ID.match(shop)) and s.get(Shop, shop) is not None
    if owner is not None:
        AUTH_FAILURES.labels("other_shop_key" if exists else "unknown_shop").inc()
        raise HTTPException(status.HTTP_403_FORBIDDEN, "this API key belongs to another shop")
    AUTH_FAILURES.labels("bad_api_key" if exists else "unknown_shop").inc()
    raise HTTPException(status.HTTP_401_UNAUTHORIZED, "a valid X-API-Key header is required")


ShopDep = Annotated[Shop, Depends(require_shop)]

# documented on every route that takes the shop's key, so clients (and schema checkers) know them
SHOP_AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"description": "no X-API-Key, or not a valid key (whether or not the shop exists)"},
    403: {"description": "the key belongs to another shop (whether or not the shop in the path exists)"},
    404: {"description": "no such entry, version or exchange in the shop"},
}
AdminDep = Annotated[None, Depends(require_admin)]
