"""The catalog table: one row per SKU of a shop, its attributes as a JSON object."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from api.db.models import Base, UtcDateTime, utcnow


class CatalogSku(Base):
    """One SKU of a shop's catalog, as imported (file or JOS); replaced whole on each import."""

    __tablename__ = "catalog_skus"
    __table_args__ = (Index("ix_catalog_skus_shop_sales", "shop_id", "sales"),)

    shop_id: Mapped[str] = mapped_column(ForeignKey("shops.id", ondelete="CASCADE"), primary_key=True)
    sku_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, default=0)  # row order of the import
    name: Mapped[str] = mapped_column(Text)
    model: Mapped[str] = mapped_column(String(100), default="")
    price: Mapped[float | None] = mapped_column(Float, nullable=True)  # yuan
    sales: Mapped[int | None] = mapped_column(Integer, nullable=True)  # units sold: best-sellers first
    # attribute name as the merchant wrote it (内存, 颜色 ...) -> its value as text
    attributes: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow, onupdate=utcnow)
