"""One list of product links and labels (api.catalog.links), read alike by its three users: the privacy
layer keeps the id, the orders skill does not take it for an order number, the catalog finds the product."""

from __future__ import annotations

import pytest

from api.catalog.importer import Sku
from api.catalog.links import product_ids
from api.catalog.skill import Catalog
from api.dialog.orders_skill import find_order_id
from api.dialog.privacy import mask_pii

SKU = "100012043978"
NAMED = [
    f"https://item.jd.com/{SKU}.html",
    f"https://item.m.jd.com/{SKU}.html",
    f"https://item.m.jd.com/product/{SKU}.html",
    f"https://item.jd.hk/{SKU}.html",
    f"https://npcitem.jd.hk/{SKU}.html",
    f"https://item.m.jd.com/ware/view.action?wareId={SKU}",
    f"商品编号：{SKU}",
    f"商品编码 {SKU}",
    f"商品号{SKU}",
    f"商品ID：{SKU}",
    f"商品id是{SKU}",
    f"SKU {SKU}",
    f"sku编号{SKU}",
    f"skuId={SKU}",
    f"sku_id:{SKU}",
    f"SKU ID：{SKU}",
    # full-width letters and signs, as a Chinese IME types them (the privacy layer reads them as typed)
    f"ＳＫＵ：{SKU}",
    f"ｓｋｕ＝{SKU}",
    f"ｓｋｕＩｄ＝{SKU}",
    f"ＳＫＵ　ＩＤ：{SKU}",
    f"ＳＫＵ＿ＩＤ {SKU}",
    f"ｗａｒｅＩｄ＝{SKU}",
    f"商品ＩＤ：{SKU}",
]


@pytest.mark.parametrize("named", NAMED)
def test_the_three_readers_agree(named: str) -> None:
    text = f"{named} 这款有货吗"
    assert product_ids(text) == [SKU]
    assert mask_pii(text) == text
    assert find_order_id(text) is None
    found = Catalog.of([Sku(SKU, "星曜14 Air", "星曜14 Air"), Sku("100012043979", "逐风G16", "G16")]).find(
        text
    )
    assert found is not None and [s.sku_id for s in found.skus] == [SKU]


@pytest.mark.parametrize(
    ("text", "ids"),
    [
        (f"item.jd.com/{SKU}.html?sku={SKU}&spm=1", [SKU, SKU]),
        ("先看 item.jd.hk/1001.html 再看 商品编码:AB-2024", ["1001", "AB-2024"]),  # in the order written
        ("ＳＫＵ：１０００１２０４３９７８", [SKU]),  # full-width, as a Chinese IME types it
        (f"mysku {SKU}", []),  # not a label: the tail of a longer word
        (f"ｍｙｓｋｕ {SKU}", []),
        (f"myitem.jd.com/{SKU}.html", []),
        (f"https://details.jd.com/normal/item.action?orderid={SKU}", []),  # an order link
        (f"订单号 {SKU}", []),
        ("SKU是多少", []),
    ],
)
def test_product_ids(text: str, ids: list[str]) -> None:
    assert product_ids(text) == ids
