"""Reading a shop's catalog from CSV/XLSX/JSON: one row per SKU, every problem reported at once.

Wide format, as merchants keep it in Excel: the columns sku_id/商品编号, name/商品名称, model/型号,
price/价格 and sales/销量 are known; every other column is an attribute named by its header (内存, 颜色,
接口 ...). A JSON row may also carry its attributes as an object under "attributes". The file is read by
engine.kb.read_rows (encodings, Excel cells, merchant-visible row numbers), and problems are KBIssues
located by file, row and the column header as the merchant wrote it. A catalog with any problem is
refused whole, so a half-imported catalog never answers customers.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

from engine.kb import NO_LIMITS, KBIssue, KBValidationError, ReadLimits, read_rows

__all__ = ["Sku", "load_catalog", "validate_records"]

SKU_ID = re.compile(r"^[0-9A-Za-z_-]{1,64}$")
MAX_NAME = 300
MAX_MODEL = 100
MAX_ATTRIBUTE_NAME = 50
MAX_VALUE = 500
MAX_ATTRIBUTES = 100
MAX_SKUS = 20_000
MAX_PRICE = 10_000_000
MAX_SALES = 2_000_000_000  # fits a 32-bit INTEGER column

# header (lower-cased, spaces removed) -> field
_FIELDS: dict[str, str] = {
    **dict.fromkeys(
        ("sku_id", "skuid", "sku", "sku编号", "商品编号", "商品id", "商品sku", "编号", "id"), "sku_id"
    ),
    **dict.fromkeys(("name", "商品名称", "名称", "商品名", "商品标题", "标题", "title"), "name"),
    **dict.fromkeys(("model", "型号", "商品型号", "机型"), "model"),
    **dict.fromkeys(("price", "价格", "售价", "京东价", "单价", "价格(元)", "价格（元）"), "price"),
    **dict.fromkeys(("sales", "销量", "月销量", "销售量"), "sales"),
}
_REQUIRED = ("sku_id", "name")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_PRICE_TEXT = re.compile(r"^[¥￥]?\s*(\d+(?:\.\d{1,2})?)\s*元?$")


@dataclass(frozen=True)
class Sku:
    """One product of the catalog, validated."""

    sku_id: str
    name: str
    model: str = ""
    price: float | None = None
    sales: int | None = None
    attributes: dict[str, str] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """How the bot names the product to a customer: the model when there is one (names are long)."""
        return self.model or self.name

    def to_dict(self) -> dict[str, Any]:
        return {
            "sku_id": self.sku_id,
            "name": self.name,
            "model": self.model,
            "price": self.price,
            "sales": self.sales,
            "attributes": dict(self.attributes),
        }


def load_catalog(
    path: str | os.PathLike[str], source_name: str | None = None, limits: ReadLimits = NO_LIMITS
) -> list[Sku]:
    """The SKUs of a catalog file; raises KBValidationError listing every problem (file, row, column)."""
    file_path = Path(path)
    source = source_name or file_path.name
    try:
        records, rows = read_rows(file_path, limits=limits)
    except KBValidationError as e:  # the reader names the file it read: give the merchant's name
        raise KBValidationError(KBIssue(source, i.row, i.column, i.message) for i in e.issues) from None
    return validate_records(records, rows, source)


def parse_catalog_file(name: str, suffix: str, data: bytes, limits: ReadLimits) -> list[Sku]:
    """An uploaded catalog file's SKUs (run in the upload parsing process, see api.kb.parsing)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"upload{suffix}"
        path.write_bytes(data)
        return load_catalog(path, source_name=name, limits=limits)


def validate_records(records: Sequence[Mapping[str, Any]], rows: Sequence[int], source: str) -> list[Sku]:
    """Raw rows (header -> cell) to SKUs; KBValidationError with every problem when any row is bad."""
    issues: list[KBIssue] = []
    if not records:
        raise KBValidationError([KBIssue(source, None, None, "the catalog has no products")])
    if len(records) > MAX_SKUS:
        raise KBValidationError(
            [KBIssue(source, None, None, f"{len(records)} products; at most {MAX_SKUS} per import")]
        )
    headers = {str(k) for r in records for k in r}
    present = {_FIELDS.get(_key(h)) for h in headers}
    for name in _REQUIRED:
        if name not in present:
            known = ", ".join(h for h, f in _FIELDS.items() if f == name and not h.isascii())
            issues.append(
                KBIssue(source, None, name, f"no {name} column (name one {name} or {known.split(', ')[0]})")
            )
    if issues:
        raise KBValidationError(issues)

    skus: list[Sku] = []
    first_row: dict[str, int] = {}
    for record, row in zip(records, rows, strict=True):
        sku, row_issues = _parse(record, row, source)
        if sku is not None and sku.sku_id in first_row:
            row_issues.append(
                KBIssue(
                    source,
                    row,
                    _header(record, "sku_id"),
                    f"SKU {sku.sku_id} appears twice (first in row {first_row[sku.sku_id]})",
                )
            )
        if sku is not None:
            first_row.setdefault(sku.sku_id, row)
        if row_issues:
            issues += row_issues
        elif sku is not None:
            skus.append(sku)
    if issues:
        raise KBValidationError(issues)
    return skus


def _key(header: str) -> str:
    return re.sub(r"\s+", "", header).lower()


def _header(record: Mapping[str, Any], field_name: str) -> str:
    """The merchant's header for a known field (for issue locations)."""
    return next((str(k) for k in record if _FIELDS.get(_key(str(k))) == field_name), field_name)


def _text(value: Any) -> str:
    """A cell as text: Excel numbers without a spurious .0, dates as ISO, control characters removed."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "是" if value else "否"
    if isinstance(value, float):
        if math.isfinite(value) and value.is_integer():
            return str(int(value))
        return repr(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    return _CONTROL.sub("", str(value)).strip()


def _parse(record: Mapping[str, Any], row: int, source: str) -> tuple[Sku | None, list[KBIssue]]:
    issues: list[KBIssue] = []
    known: dict[str, tuple[str, Any]] = {}  # field -> (header, value)
    attributes: dict[str, str] = {}

    def problem(column: str, message: str) -> None:
        issues.append(KBIssue(source, row, column, message))

    for raw_header, value in record.items():
        header = _text(raw_header)
        field_name = _FIELDS.get(_key(header))
        if field_name is not None:
            if field_name in known:
                problem(header, f"both '{known[field_name][0]}' and '{header}' give the {field_name}")
            else:
                known[field_name] = (header, value)
            continue
        if header == "attributes" and isinstance(value, Mapping):  # JSON rows
            for k, v in value.items():
                _add_attribute(attributes, _text(k), v, problem)
            continue
        _add_attribute(attributes, header, value, problem)

    sku_header, sku_value = known.get("sku_id", ("sku_id", None))
    sku_id = _text(sku_value)
    if not sku_id:
        problem(sku_header, "missing SKU id")
    elif not SKU_ID.match(sku_id):
        problem(sku_header, f"SKU id {sku_id[:30]!r} must be 1-64 letters, digits, '-' or '_'")
    name_header, name_value = known.get("name", ("name", None))
    name = _text(name_value)
    if not name:
        problem(name_header, "missing product name")
    elif len(name) > MAX_NAME:
        problem(name_header, f"name is longer than {MAX_NAME} characters")
    model_header, model_value = known.get("model", ("model", None))
    model = _text(model_value)
    if len(model) > MAX_MODEL:
        problem(model_header, f"model is longer than {MAX_MODEL} characters")
    price = _price(*known.get("price", ("price", None)), problem)
    sales = _sales(*known.get("sales", ("sales", None)), problem)
    if len(attributes) > MAX_ATTRIBUTES:
        problem("", f"{len(attributes)} attributes; at most {MAX_ATTRIBUTES}")
    if issues:
        return (Sku(sku_id, name) if sku_id and SKU_ID.match(sku_id) else None), issues
    return Sku(sku_id, name, model, price, sales, attributes), issues


def _add_attribute(attributes: dict[str, str], header: str, value: Any, problem: Any) -> None:
    text = _text(value)
    if not text:
        return  # an empty cell: this SKU does not say
    if not header:
        problem("", f"value {text[:20]!r} is in a column without a header; name the attribute")
    elif len(header) > MAX_ATTRIBUTE_NAME:
        problem(header[:20], f"attribute name is longer than {MAX_ATTRIBUTE_NAME} characters")
    elif len(text) > MAX_VALUE:
        problem(header, f"value is longer than {MAX_VALUE} characters")
    else:
        attributes[header] = text


def _price(header: str, value: Any, problem: Any) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
    else:
        m = _PRICE_TEXT.match(_text(value).replace(",", ""))
        if m is None:
            problem(header, f"price {_text(value)[:20]!r} is not a number (e.g. 5999 or 5999.00)")
            return None
        number = float(m.group(1))
    if not math.isfinite(number) or number < 0 or number > MAX_PRICE:
        problem(header, f"price {value!r} must be between 0 and {MAX_PRICE}")
        return None
    return round(number, 2)


def _sales(header: str, value: Any, problem: Any) -> int | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    text = _text(value).replace(",", "")
    if not text.isascii() or not text.isdigit() or int(text) > MAX_SALES:
        problem(header, f"sales {_text(value)[:20]!r} must be a whole number of units sold (0 or more)")
        return None
    return int(text)
