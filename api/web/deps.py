"""Dependencies of the shop routes: the service, the shop named in the path, and its API key."""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import Depends, Header, HTTPException, Path, Request, status
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import select

from api.db.models import Shop
from api.metrics import AUTH_FAILURES
from api.service import Service
from api.web.auth import admin_token_matches, hash_key, key_matches

SHOP_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


# The dependencies that neither block nor take long are `async def`: FastAPI runs a plain `def` one in a
# worker thread, and each such hop hands the interpreter lock between the event loop's thread and a
# worker twice. A message's turn took three hops (service, shop, route); on a busy CPU the loop's thread
# was seen descheduled while holding the lock for 20-44 ms in that handoff, stalling every request of
# its process (py-spy --gil during `kefu loadtest --publishers`).


async def get_service(request: Request) -> Service:
    service: Service | None = getattr(request.app.state, "service", None)
    if service is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "the shop service is not running")
    return service


ServiceDep = Annotated[Service, Depends(get_service)]


async def require_admin(
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
    ids; only the metric's reason tells the cases apart. Read from the database on every request, so a
    merchant's change made through another process is seen at once (see `require_turn_shop`).
    """
    return _lookup(service, shop, x_api_key, remember=False)


async def require_turn_shop(
    service: ServiceDep,
    shop: Annotated[str, Path(description="shop id", max_length=64)],
    x_api_key: Annotated[str | None, Header(description="the shop's API key")] = None,
) -> Shop:
    """`require_shop` for a conversation turn (messages, assist), the hot path: a key this process
    accepted less than KEFU_LOOKUP_CACHE_SECONDS ago is not looked up again (api/web/keycache.py).

    Only an accepted key is kept, under its digest; any other answer is looked up as `require_shop`
    does. The row may be that old when another process changed it (mode, settings, a revoked key).
    """
    cache = service.shop_keys
    if x_api_key and cache.enabled:
        hit = cache.get(hash_key(x_api_key))
        if hit is not None and hit.id == shop:
            return hit  # the hot path: answered on the event loop, no worker thread
    return await run_in_threadpool(_lookup, service, shop, x_api_key, remember=True)


def _lookup(service: Service, shop: str, x_api_key: str | None, *, remember: bool) -> Shop:
    generation = service.shop_keys.generation  # before the read: see ShopKeyCache.generation
    owner = None
    exists = False
    with service.db.session() as s:
        digest = hash_key(x_api_key) if x_api_key else None
        if digest is not None:
            owner = s.scalar(select(Shop).where(Shop.api_key_hash == digest))
        if owner is not None and owner.id == shop and key_matches(x_api_key, owner.api_key_hash):
            s.expunge(owner)
            if remember and digest is not None:
                service.shop_keys.put(digest, owner, generation)
            return owner
        exists = bool(SHOP_ID.match(shop)) and s.get(Shop, shop) is not None
    if owner is not None:
        AUTH_FAILURES.labels("other_shop_key" if exists else "unknown_shop").inc()
        raise HTTPException(status.HTTP_403_FORBIDDEN, "this API key belongs to another shop")
    AUTH_FAILURES.labels("bad_api_key" if exists else "unknown_shop").inc()
    raise HTTPException(status.HTTP_401_UNAUTHORIZED, "a valid X-API-Key header is required")


ShopDep = Annotated[Shop, Depends(require_shop)]
# a conversation turn's shop: the key's lookup may be up to KEFU_LOOKUP_CACHE_SECONDS old
TurnShopDep = Annotated[Shop, Depends(require_turn_shop)]

# documented on every route that takes the shop's key, so clients (and schema checkers) know them
SHOP_AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"description": "no X-API-Key, or not a valid key (whether or not the shop exists)"},
    403: {"description": "the key belongs to another shop (whether or not the shop in the path exists)"},
    404: {"description": "no such entry, version or exchange in the shop"},
}
AdminDep = Annotated[None, Depends(require_admin)]
