"""A shop's product catalog: upload (CSV/XLSX/JSON, all or nothing), list, get, delete, pull from JOS.

A bad upload answers 422 with every problem (file, row, column) and leaves the stored catalog as it was.
Conversations see a change at their next message.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, status
from fastapi import Path as PathParam
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from api.catalog import repo
from api.catalog.importer import Sku, parse_catalog_file
from api.routes.kb import issues_response, read_limits, too_large_response
from api.web.deps import SHOP_AUTH_RESPONSES, ServiceDep, ShopDep
from api.web.schemas import DB_INT_MAX
from api.web.strict_json import StrictJSONRoute
from api.web.uploads import read_upload, upload_body, upload_name
from engine.kb import KBTooLarge, KBValidationError

router = APIRouter(
    route_class=StrictJSONRoute,
    prefix="/v1/shops/{shop}/catalog",
    responses=SHOP_AUTH_RESPONSES,
    tags=["catalog"],
)
SkuId = Annotated[str, PathParam(pattern=r"^[0-9A-Za-z_-]{1,64}$", description="the SKU id (商品编号)")]


class SkuOut(BaseModel):
    sku_id: str
    name: str
    model: str
    price: float | None
    sales: int | None
    attributes: dict[str, str]


class CatalogPage(BaseModel):
    total: int
    offset: int
    items: list[SkuOut]


class CatalogImported(BaseModel):
    skus: int = Field(description="SKUs in the catalog now")


def _out(sku: Sku) -> SkuOut:
    return SkuOut(**sku.to_dict())


def _warm(service: Any, shop: Any) -> None:
    precision = float((shop.settings or {}).get("target_precision") or 0.95)
    service.catalogs.warm(shop.id, precision)


@router.post(
    "",
    response_model=CatalogImported,
    responses={
        413: {"description": "the file, or what it inflates to (rows, cells, bytes), is over a limit"},
        422: {"description": "the file has problems; every one is listed with row and column"},
    },
    openapi_extra=upload_body("file", "the catalog: .csv, .xlsx, .json or .jsonl, one SKU a row"),
)
async def upload_catalog(request: Request, shop: ShopDep, service: ServiceDep) -> Any:
    """Replace the shop's catalog with a file (all or nothing).

    As for the KB: the form is parsed in a thread and the file read in the parsing child process, within
    the KB's read limits, so a large file never stalls the worker's other requests.
    """
    filename, data = await read_upload(request, "file", service.settings.kb_max_upload_bytes)
    name, suffix = upload_name(filename, "catalog.csv")
    limits = read_limits(service.settings)
    try:
        skus = await service.upload_parser.run(parse_catalog_file, name, suffix, data, limits)
    except KBValidationError as e:
        return issues_response(e, "catalog")
    except KBTooLarge as e:
        return too_large_response(e)
    await run_in_threadpool(_store, service, shop.id, skus)
    _warm(service, shop)
    return CatalogImported(skus=len(skus))


def _store(service: ServiceDep, shop: str, skus: list[Sku]) -> None:
    with service.db.session() as s:
        repo.replace_all(s, shop, skus)


@router.get("", response_model=CatalogPage)
def list_catalog(
    shop: ShopDep,
    service: ServiceDep,
    offset: Annotated[int, Query(ge=0, le=DB_INT_MAX)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> CatalogPage:
    with service.db.session() as s:
        skus, total = repo.list_skus(s, shop.id, offset, limit)
    return CatalogPage(total=total, offset=offset, items=[_out(k) for k in skus])


@router.get("/{sku_id}", response_model=SkuOut)
def get_sku(sku_id: SkuId, shop: ShopDep, service: ServiceDep) -> SkuOut:
    with service.db.session() as s:
        sku = repo.get_sku(s, shop.id, sku_id)
    if sku is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no SKU {sku_id!r} in shop {shop.id!r}")
    return _out(sku)


@router.delete("/{sku_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_sku(sku_id: SkuId, shop: ShopDep, service: ServiceDep) -> None:
    with service.db.session() as s:
        if not repo.delete_sku(s, shop.id, sku_id):
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no SKU {sku_id!r} in shop {shop.id!r}")


@router.post(
    "/pull",
    response_model=CatalogImported,
    responses={
        409: {"description": "no JOS method configured, or the shop has no JD credentials"},
        422: {"description": "JOS listed SKUs that are not usable; every problem is listed"},
        502: {"description": "the JOS call failed (nothing was changed)"},
    },
)
def pull_catalog(shop: ShopDep, service: ServiceDep) -> Any:
    """Replace the shop's catalog with the SKUs JOS lists for it (every page, all or nothing)."""
    from api.catalog.jos import CatalogNotConfigured, pull
    from api.jd import JosAuthError, JosError

    try:
        result = pull(service, shop.id)
    except CatalogNotConfigured as e:
        raise HTTPException(status.HTTP_409_CONFLICT, str(e)) from e
    except KBValidationError as e:
        return issues_response(e, "catalog")
    except JosAuthError as e:
        raise HTTPException(status.HTTP_502_BAD_GATEWAY, f"JOS refused the shop's credentials: {e}") from e
    except JosError as e:
        raise HTTPException(status.HTTP_502_BAD_GATEWAY, f"JOS call failed: {e}") from e
    _warm(service, shop)
    return CatalogImported(skus=result["skus"])
