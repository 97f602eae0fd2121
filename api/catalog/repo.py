"""A shop's catalog in the database. Every function takes the shop id and filters on it."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from api.catalog.importer import Sku
from api.catalog.models import CatalogSku

# Session.info key: the shops whose catalog the session's transaction wrote; once it commits, the service
# drops what it caches of them (api/service.py)
CHANGED = "kefu.catalog_changed"
_SPEC = re.compile(r"^\d+(?:\.\d+)?[a-zA-Z]{1,3}$")  # 16G, 1TB, 2.8K: units, not names


def _sku(row: CatalogSku) -> Sku:
    return Sku(
        sku_id=row.sku_id,
        name=row.name,
        model=row.model or "",
        price=row.price,
        sales=row.sales,
        attributes={str(k): str(v) for k, v in (row.attributes or {}).items()},
    )


def replace_all(s: Session, shop: str, skus: Sequence[Sku]) -> None:
    """Swap the shop's whole catalog for validated SKUs, in the caller's transaction."""
    _changed(s, shop)
    s.execute(delete(CatalogSku).where(CatalogSku.shop_id == shop))
    s.add_all(
        CatalogSku(
            shop_id=shop,
            sku_id=k.sku_id,
            position=i,
            name=k.name,
            model=k.model,
            price=k.price,
            sales=k.sales,
            attributes=dict(k.attributes),
        )
        for i, k in enumerate(skus)
    )


def _changed(s: Session, shop: str) -> None:
    s.info.setdefault(CHANGED, set()).add(shop)


def all_skus(s: Session, shop: str) -> list[Sku]:
    """The catalog in import order."""
    q = select(CatalogSku).where(CatalogSku.shop_id == shop).order_by(CatalogSku.position, CatalogSku.sku_id)
    return [_sku(r) for r in s.scalars(q)]


def list_skus(s: Session, shop: str, offset: int, limit: int) -> tuple[list[Sku], int]:
    """One page of the catalog (import order) and the total number of SKUs."""
    total = s.scalar(select(func.count()).select_from(CatalogSku).where(CatalogSku.shop_id == shop)) or 0
    q = (
        select(CatalogSku)
        .where(CatalogSku.shop_id == shop)
        .order_by(CatalogSku.position, CatalogSku.sku_id)
        .offset(offset)
        .limit(limit)
    )
    return [_sku(r) for r in s.scalars(q)], int(total)


def get_sku(s: Session, shop: str, sku_id: str) -> Sku | None:
    row = s.get(CatalogSku, (shop, sku_id))
    return None if row is None else _sku(row)


def delete_sku(s: Session, shop: str, sku_id: str) -> bool:
    _changed(s, shop)
    result = s.execute(delete(CatalogSku).where(CatalogSku.shop_id == shop, CatalogSku.sku_id == sku_id))
    return bool(getattr(result, "rowcount", 0))


def revision(s: Session, shop: str) -> tuple[int, datetime | None]:
    """A cheap fingerprint of the stored catalog (count, last change): tells a cache to reload."""
    row = s.execute(
        select(func.count(), func.max(CatalogSku.updated_at)).where(CatalogSku.shop_id == shop)
    ).one()
    return int(row[0]), row[1]


def dictionary_words(s: Session, shop: str, limit: int = 5000) -> list[str]:
    """Model and product names of the catalog for the segmenter's dictionary, so "星曜14" stays one word.

    The segmenter cuts at spaces anyway, so each space-separated piece of a model or name is a word
    (2-20 characters, not a bare number or a spec like "16G" that jieba already handles).
    """
    words: dict[str, None] = {}
    q = select(CatalogSku.model, CatalogSku.name).where(CatalogSku.shop_id == shop)
    for model, name in s.execute(q.order_by(CatalogSku.position)):
        for text in (model, name):
            for piece in (text or "").split():
                named = not piece.isascii() or (any(c.isalpha() for c in piece) and not _SPEC.match(piece))
                if 2 <= len(piece) <= 20 and named:
                    words[piece] = None
    return list(words)[:limit]
