"""The shop's catalog pulled from JOS (京东开放平台): every page first, then stored all or nothing.

The method is configuration (KEFU_JOS_WARE_METHOD, default jingdong.sku.read.searchSkuList), called with
{"page": n, "pageSize": size}. The records are the first list of objects in its answer, and each field is
looked up under the names JD's ware/SKU APIs use for it; attributes come as an object or as a list of
{attrName, attrValue} pairs (saleAttrs, props ...). A page that fails fails the pull: a catalog missing
some pages would answer customers about products that are not all there.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from api.catalog import repo
from api.catalog.importer import Sku, validate_records
from api.db.models import Shop
from api.jd import JosClient, JosError
from api.jd.records import first_records, first_value
from api.metrics import JOS_ERRORS

log = logging.getLogger("kefu.catalog")

ID_KEYS = ("skuId", "sku_id", "skuid", "wareId", "ware_id", "id")
NAME_KEYS = ("skuName", "sku_name", "name", "wareName", "title", "wareTitle")
MODEL_KEYS = ("model", "modelName", "model_name", "型号")
PRICE_KEYS = ("jdPrice", "price", "salePrice", "sale_price")
SALES_KEYS = ("sales", "saleCount", "salesCount", "sellCount", "sales_volume", "销量")
ATTRIBUTE_KEYS = ("attributes", "attrs", "saleAttrs", "props", "properties", "specs")
ATTR_NAME_KEYS = ("attrName", "attr_name", "name", "key", "attrKey")
ATTR_VALUE_KEYS = ("attrValue", "attr_value", "value", "attrValueAlias", "values", "attrValues")


class CatalogNotConfigured(RuntimeError):
    pass


def _value_text(value: Any) -> str:
    if isinstance(value, list):
        return "/".join(str(v) for v in value if v not in (None, ""))
    return "" if value is None else str(value)


def _attributes(record: Mapping[str, Any]) -> dict[str, str]:
    raw = first_value(record, ATTRIBUTE_KEYS)
    out: dict[str, str] = {}
    if isinstance(raw, Mapping):
        for k, v in raw.items():
            out[str(k)] = _value_text(v)
    elif isinstance(raw, list):
        for item in raw:
            if isinstance(item, Mapping):
                name, value = first_value(item, ATTR_NAME_KEYS), first_value(item, ATTR_VALUE_KEYS)
                if name is not None and value is not None:
                    text = _value_text(value)
                    out[str(name)] = f"{out[str(name)]}/{text}" if str(name) in out else text
    return out


def to_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """A JOS SKU as a catalog row (validated like a file's row)."""
    return {
        "sku_id": first_value(record, ID_KEYS),
        "name": first_value(record, NAME_KEYS),
        "model": first_value(record, MODEL_KEYS),
        "price": first_value(record, PRICE_KEYS),
        "sales": first_value(record, SALES_KEYS),
        "attributes": _attributes(record),
    }


def fetch(client: JosClient, method: str, page_size: int = 50, max_pages: int = 200) -> list[Sku]:
    """Every page of the method's SKUs, validated (KBValidationError names the page and record)."""
    records: list[dict[str, Any]] = []
    rows: list[int] = []
    for page in range(1, max_pages + 1):
        try:
            result = client.call(method, {"page": page, "pageSize": page_size})
        except JosError as e:
            JOS_ERRORS.labels(type(e).__name__).inc()
            raise
        found = first_records(result)
        records += [to_record(r) for r in found]
        rows += [(page - 1) * page_size + i for i in range(1, len(found) + 1)]
        if len(found) < page_size:
            break
    return validate_records(records, rows, f"JOS {method}")


def pull(service: Any, shop_id: str, page_size: int = 50, max_pages: int = 200) -> dict[str, int]:
    """Replace the shop's catalog with what JOS lists; returns how many SKUs were stored."""
    method = service.settings.jos_ware_method
    if not method:
        raise CatalogNotConfigured("set KEFU_JOS_WARE_METHOD to the JOS method that lists the shop's SKUs")
    with service.db.session() as s:
        shop = s.get(Shop, shop_id)
        if shop is None or not shop.jd_app_key or not shop.jd_app_secret:
            raise CatalogNotConfigured(f"shop {shop_id!r} has no JD credentials")
        box = service.secret_box
        creds = (
            box.decrypt(shop.jd_app_key),
            box.decrypt(shop.jd_app_secret),
            box.decrypt(shop.jd_access_token) if shop.jd_access_token else None,
        )
    with JosClient(*creds, base_url=service.settings.jos_url) as client:
        skus = fetch(client, method, page_size, max_pages)
    with service.db.session() as s:
        repo.replace_all(s, shop_id, skus)
    log.info("shop %s: %d SKUs pulled from JOS", shop_id, len(skus))
    return {"skus": len(skus)}
