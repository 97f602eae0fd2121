"""How a customer's message names a product: JD product links and labelled product ids (SKUs).

Three readers must agree on it: the privacy layer (api.dialog.privacy) keeps such an id instead of
masking it as an order number, the orders skill (api.dialog.orders_skill) does not take it for an order
number, and the catalog skill (api.catalog.skill) looks the product up by it. With a list each they
drifted apart: an item.jd.hk link was kept by the privacy layer but not read by the catalog skill, so the
customer got no product answer, and an id after 商品编码 or skuId= was read as an order number. So the
link forms and the label words live here only; each reader builds its patterns from these fragments and
adds only its own rules (the privacy layer's rules for where an id must end, for instance).

The fragments are plain regex source, case-sensitive except where they say so, and each may be used as
one alternative (they are wrapped in a group).
"""

from __future__ import annotations

import re
import unicodedata

__all__ = ["CODE", "LABEL", "LABEL_SEP", "LINK", "PRODUCT_LEAD", "product_ids"]

# A JD product page whose next path segment is the product id: item.jd.com/100012043978.html,
# item.m.jd.com/100012043978.html, item.m.jd.com/product/100012043978.html, item.jd.hk/….html (JD
# International) and npcitem.jd.hk/….html. Not inside a longer host name ("myitem.jd.com").
LINK = r"(?<![A-Za-z0-9\-])(?:npc)?item(?:\.m)?\.jd\.(?:com|hk)/(?:product/)?"


def _any_width(word: str) -> str:
    """`word`'s letters in ASCII or full width (ｓｋｕ, as a Chinese IME types them), any case under (?i)."""
    return "".join(f"[{c}{chr(ord(c) + 0xFEE0)}]" for c in word)


# Words that say the id after them is a product's: SKU, skuId, sku_id, SKU ID, wareId (any case, in ASCII
# or full-width letters; also as a link's query key: ?sku=, &skuId=, wareId=), optionally with 编号/号
# after them, and 商品编号, 商品编码, 商品号, 商品ID. An English label may not be the tail of a longer
# word ("mysku"). Every reader sees the same forms: the privacy layer reads the text as typed, where
# ＳＫＵ：… is not SKU:…
_SKU, _ID, _WAREID = _any_width("sku"), _any_width("id"), _any_width("wareid")
LABEL = (
    rf"(?:(?<![A-Za-zＡ-Ｚａ-ｚ])(?i:{_SKU}(?:[_＿ \u3000]?{_ID})?|{_WAREID})(?:编号|号)?"
    rf"|商品(?:编号|编码|号|(?i:{_ID})))"
)
# Between a label and its id: a few spaces, one of :：#＃=＝, then 是/为 ("商品编号是100012043978").
LABEL_SEP = r"[ \u3000]{0,3}[:：#＃=＝]?[ \u3000]{0,3}(?:是|为)?[ \u3000]{0,3}"
# What stands right before a product id: a product link, or a label and its separator.
PRODUCT_LEAD = rf"(?:{LINK}|{LABEL}{LABEL_SEP})"
# A labelled id: a link's id is digits, but after a label it may also be a shop's own code (NB-1601).
CODE = r"[0-9A-Za-z_\-]{4,64}"

_PRODUCT_ID = re.compile(rf"{LINK}([0-9]{{4,20}})|{LABEL}{LABEL_SEP}({CODE})")


def product_ids(text: str) -> list[str]:
    """The product ids a message names by a link or a label, in the order they appear (repeats kept).

    Full-width characters typed with a Chinese IME (ＳＫＵ：１０００…) are read as their ASCII twins. An id is
    only what the message says; whether the shop sells such a product is the caller's question.
    """
    t = unicodedata.normalize("NFKC", text or "")
    return [m.group(1) or m.group(2) for m in _PRODUCT_ID.finditer(t)]
