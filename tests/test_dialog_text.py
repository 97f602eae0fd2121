"""Taking a customer message apart before matching: several questions, personal data, non-text messages."""

from __future__ import annotations

import pytest

from api.dialog.nontext import non_text_kind, strip_stickers
from api.dialog.privacy import mask_pii
from api.dialog.split import split_questions


@pytest.mark.parametrize(
    ("text", "parts"),
    [
        ("能开专票吗？顺便问下几天能到", ["能开专票吗", "几天能到"]),
        ("能开专票吗，几天能到", ["能开专票吗", "几天能到"]),
        ("电池保修多久？另外能开发票吗", ["电池保修多久", "能开发票吗"]),
        ("支持七天无理由吗 还有运费谁出", ["支持七天无理由吗", "运费谁出"]),
        # one question with a comma inside stays whole
        ("发票什么时候开，在哪里下载", ["发票什么时候开，在哪里下载"]),
        ("怎么还没发货，能帮我催一下吗", ["怎么还没发货，能帮我催一下吗"]),
        # contact details around a question are dropped; an order number is what the question is about
        ("我电话13812345678，地址北京市朝阳区建国路88号院3号楼，能开专票吗", ["能开专票吗"]),
        ("我的手机号是13812345678 能开专票吗", ["能开专票吗"]),
        ("订单号 283746192837 物流到哪了", ["订单号 [订单号] 物流到哪了"]),
        ("我电话13812345678", []),
        # a link's "?" and "," are not sentence punctuation; a question right after it stays apart
        (
            "https://item.m.jd.com/product/100012043978.html?cover=1&a=2,3 续航怎么样",
            ["https://item.m.jd.com/product/100012043978.html?cover=1&a=2,3 续航怎么样"],
        ),
        (
            "item.jd.com/100012043978.html?x=1续航怎么样？能开发票吗",
            ["item.jd.com/100012043978.html?x=1续航怎么样", "能开发票吗"],
        ),
    ],
)
def test_split_questions(text: str, parts: list[str]) -> None:
    assert split_questions(mask_pii(text)) == parts


def test_split_keeps_at_most_max_parts() -> None:
    parts = split_questions("能开专票吗？几天能到？保修多久？有赠品吗？", max_parts=3)
    assert parts == ["能开专票吗", "几天能到", "保修多久，有赠品吗"]


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("[图片]", "image"),
        ("[语音]", "voice"),
        ("[视频]", "video"),
        ("[文件]", "file"),
        ("[商品]", "product"),  # the JD push's product card that the catalog cannot place
        ("[未知消息]", "unknown"),
        ("[微笑]", "sticker"),
        ("[表情][表情]", "sticker"),
        ("/:) /:D", "sticker"),
        ("https://img30.360buyimg.com/a/b.jpg", "image"),
        ("[图片] 这个划痕能换吗", None),
        ("能开专票吗[微笑]", None),
        ("https://item.jd.com/100012345.html", None),  # a product link: the product is the context
        ("好的", None),
        ("👍", "sticker"),  # emoji typed from the keyboard are stickers too
        ("😡😡😡", "sticker"),
        ("👍🏻 👨\u200d👩\u200d👧", "sticker"),  # skin tone, joiner, space
        ("能开专票吗👍", None),
        ("？？？", None),  # punctuation is not a sticker
        ("", None),
    ],
)
def test_non_text_kind(text: str, kind: str | None) -> None:
    assert non_text_kind(text) == kind


def test_stickers_are_stripped_from_text() -> None:
    assert strip_stickers("能开专票吗[微笑]") == "能开专票吗"
    assert strip_stickers("能开专票吗") == "能开专票吗"
