"""Ware (商品) fixtures for the fake JOS gateway: register them with
`fake.handle(method, ware_page)` (tests/jos_fake.py stays generic)."""

from __future__ import annotations

from typing import Any

# the default of KEFU_JOS_WARE_METHOD
DEFAULT_WARE_METHOD = "jingdong.sku.read.searchSkuList"


def ware_page(biz: dict[str, Any], total: int = 7) -> dict[str, Any]:
    """A searchSkuList-like answer: page/pageSize paging, attributes as saleAttrs name/value pairs."""
    page, size = int(biz.get("page", 1)), int(biz.get("pageSize", 50))
    ids = range((page - 1) * size + 1, min(page * size, total) + 1)
    data = [
        {
            "skuId": 200000 + i,
            "skuName": f"云岫 测试本{i}号",
            "model": f"测试本{i}",
            "jdPrice": f"{3000 + i}.00",
            "saleCount": 1000 - i,
            "saleAttrs": [
                {"attrName": "颜色", "attrValue": ["银", "灰"]},
                {"attrName": "内存", "attrValue": f"{8 * i}GB"},
            ],
        }
        for i in ids
    ]
    return {"page": {"data": data, "totalItem": total, "pageNo": page}}
