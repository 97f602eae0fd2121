"""Messages that are not text: pictures, voice, video, stickers, files and cards, as JD's chat shows them.

JD's customer-service channel renders what it cannot pass as text as a bracketed tag ("[图片]", "[语音]";
the JD push shape uses "[商品]" for a product card it cannot place and "[未知消息]" for an unknown type),
sends stickers as emoticon codes ("/:)", "[微笑]") and links pictures by URL. Matching such a message can
only go wrong; the policy answers it with the shop's request for text, or hands it off, by setting.
"""

from __future__ import annotations

import re
import unicodedata

_TAGS = {
    "图片": "image",
    "照片": "image",
    "截图": "image",
    "语音": "voice",
    "视频": "video",
    "小视频": "video",
    "文件": "file",
    "表情": "sticker",
    "动画表情": "sticker",
    "自定义表情": "sticker",
    "位置": "location",
    "链接": "link",
    "商品": "product",  # a product card the channel could not pass on as a product we know
    "未知消息": "unknown",  # a message type the channel does not know
}
# JD / QQ-style emoticon names customers' clients send as text: [微笑], [大哭] ...
_EMOTICON_NAMES = (
    "微笑|撇嘴|色|发呆|得意|流泪|害羞|闭嘴|睡|大哭|尴尬|发怒|调皮|呲牙|惊讶|难过|酷|冷汗|抓狂|吐|偷笑|可爱|白眼|傲慢|"
    "饥饿|困|惊恐|流汗|憨笑|大兵|奋斗|咒骂|疑问|嘘|晕|折磨|衰|骷髅|敲打|再见|擦汗|抠鼻|鼓掌|糗大了|坏笑|左哼哼|"
    "右哼哼|哈欠|鄙视|委屈|快哭了|阴险|亲亲|吓|可怜|玫瑰|凋谢|爱心|心碎|蛋糕|强|弱|握手|胜利|抱拳|勾引|拳头|"
    "OK|ok|爱你|NO|no|太阳|月亮|拥抱|捂脸|奸笑|机智|皱眉|耶|红包|发|福|笑哭|赞|愉快|汗"
)
_TAG = re.compile(r"\[(" + "|".join(map(re.escape, sorted(_TAGS, key=len, reverse=True))) + r")\]")
_STICKERS = re.compile(r"(?:\[(?:" + _EMOTICON_NAMES + r")\]|/:[^\s/]{1,8}|\s)+")
_EMOJI_PARTS = frozenset("\u200d\ufe0e\ufe0f\u20e3")  # joiner, text/emoji presentation, keycap
_IMAGE_URL = re.compile(r"^\s*https?://\S+\.(?:jpe?g|png|gif|webp|bmp|heic)(?:\?\S*)?\s*$", re.IGNORECASE)


def non_text_kind(text: str) -> str | None:
    """The kind of a message that holds no text to match ("image", "voice", "sticker", ...), else None.

    A tag beside real words ("[图片] 这个划痕能换吗") is text: the words are matched.
    """
    if not text or not text.strip():
        return None
    if _IMAGE_URL.match(text):
        return "image"
    tags = _TAG.findall(text)
    if tags and not _STICKERS.sub("", _TAG.sub("", text)).strip():
        return _TAGS[tags[0]]
    if _STICKERS.fullmatch(text) or _only_emoji(text):
        return "sticker"
    return None


def _only_emoji(text: str) -> bool:
    """Emoji and their joiners, skin tones and variation selectors only (👍, 😡😡😡, 👨‍👩‍👧): a sticker typed
    from the keyboard. Punctuation alone is not one (？？？ is a customer waiting for an answer)."""
    seen = False
    for c in text:
        if unicodedata.category(c) == "So":
            seen = True
        elif not (c.isspace() or c in _EMOJI_PARTS or "\U0001f3fb" <= c <= "\U0001f3ff"):
            return False
    return seen


def strip_stickers(text: str) -> str:
    """The message without emoticon codes, so "能开专票吗[微笑]" is matched as its words."""
    return _STICKERS.sub(" ", text).strip() if ("[" in text or "/:" in text) else text
