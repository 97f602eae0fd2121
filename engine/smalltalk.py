"""Small talk (寒暄): greetings, thanks, goodbyes, acknowledgements and the like, told apart from questions.

在吗 is the most common first message of a JD chat, and 你好 / 谢谢 / 好的 carry no question at all: matched
against the KB they can only produce a wrong answer or a miss. A short built-in lexicon per intent
recognises them on the normalized text; a message that is small talk around a question ("在吗 能开专票吗",
"能开专票吗 谢谢") is split into the intents and the question, and only the question is matched.

Phrases that could begin an ordinary sentence ("你好像没理解", "你好丑用英文怎么说", "好用吗") are only peeled
off at a boundary: the end of the message, a space (punctuation becomes a space in normalization), or a
word that starts a request (请问, 我想, ...). Phrases that cannot (在吗, 有人吗, 谢谢) need no boundary.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

INTENTS = ("greeting", "thanks", "goodbye", "ack", "robot", "praise", "venting")
# when a message is only small talk of several intents, the reply is for the first of these it holds
_PRIORITY = ("robot", "venting", "goodbye", "thanks", "praise", "greeting", "ack")

# phrases in normalized form (lower case, simplified, no punctuation); "*" marks a phrase that needs no
# boundary after it as a prefix (or before it as a suffix)
_LEXICON: dict[str, tuple[str, ...]] = {
    "greeting": (
        "在吗*",
        "在么*",
        "在嘛*",
        "在不在*",
        "在没*",
        "有人吗*",
        "有人在吗*",
        "有没有人*",
        "有人没*",
        "亲在吗*",
        "亲在么*",
        "客服在吗*",
        "客服在不在*",
        "老板在吗*",
        "掌柜在吗*",
        "店家在吗*",
        "请问在吗*",
        "你好",
        "您好",
        "你好吗",
        "你们好",
        "哈喽",
        "哈罗",
        "嗨",
        "hi",
        "hello",
        "hey",
        "早上好",
        "上午好",
        "中午好",
        "下午好",
        "晚上好",
        "早安",
        "早",
        "亲",
        "亲亲",
        "亲爱的",
        "客服",
        "老板",
        "在",
        "在的吧",
        "打扰了",
        "打扰一下",
    ),
    "thanks": (
        "谢谢*",
        "谢谢你*",
        "谢谢您*",
        "谢谢啦*",
        "谢谢了*",
        "谢了*",
        "谢啦*",
        "多谢*",
        "感谢*",
        "非常感谢*",
        "十分感谢*",
        "太感谢了*",
        "感谢感谢*",
        "谢谢亲*",
        "辛苦了*",
        "辛苦啦*",
        "麻烦了*",
        "麻烦你了*",
        "thx",
        "thanks",
        "thank you",
        "3q",
        "蟹蟹",
    ),
    "goodbye": (
        "拜拜*",
        "再见*",
        "回头见*",
        "下次见*",
        "88",
        "886",
        "bye",
        "byebye",
        "bye bye",
        "先这样",
        "就这样",
        "没事了",
        "没有了",
        "没别的了",
        "没其他问题了",
        "没问题了",
        "晚安",
    ),
    "ack": (
        "好的",
        "好",
        "好吧",
        "好滴",
        "好哒",
        "好嘞",
        "好叻",
        "好勒",
        "嗯",
        "嗯嗯",
        "嗯呢",
        "恩",
        "恩恩",
        "哦",
        "噢",
        "哦哦",
        "喔",
        "ok",
        "okay",
        "okk",
        "k",
        "行",
        "行吧",
        "行的",
        "可以",
        "可以的",
        "知道了",
        "知道啦",
        "明白",
        "明白了",
        "了解",
        "了解了",
        "收到",
        "收到了",
        "懂了",
        "是的",
        "是",
        "对",
        "对的",
        "对呀",
        "没问题",
        "哈哈",
        "哈哈哈",
        "呵呵",
        "嘿嘿",
        "嗯好",
        "嗯好的",
    ),
    "robot": (
        "你是机器人吗",
        "是机器人吗",
        "是不是机器人",
        "机器人吗",
        "你是机器人",
        "你是不是机器人",
        "你是ai吗",
        "是ai吗",
        "你是真人吗",
        "是真人吗",
        "真人吗",
        "你是人吗",
        "是人吗",
        "你是真人还是机器人",
        "是自动回复吗",
        "自动回复吗",
        "你是谁",
        "机器人",
        "是机器人回复吗",
    ),
    "praise": (
        "你真棒",
        "真棒",
        "太棒了",
        "棒",
        "棒棒哒",
        "厉害",
        "真厉害",
        "好厉害",
        "好评",
        "服务很好",
        "服务真好",
        "服务不错",
        "态度很好",
        "态度真好",
        "给你点赞",
        "点赞",
        "赞",
        "真聪明",
        "好聪明",
        "满意",
        "很满意",
        "非常满意",
        "真贴心",
        "客服真好",
    ),
    "venting": (
        "烦死了",
        "好烦",
        "烦",
        "郁闷",
        "无语",
        "无语了",
        "崩溃",
        "崩溃了",
        "气死了",
        "气死我了",
        "服了",
        "醉了",
        "心累",
        "唉",
        "哎",
        "哎呀",
        "算了",
        "太失望了",
        "失望",
        # insults of the service: a message that is only one gets an apology, never an FAQ answer that
        # happens to share a word (垃圾客服 is not a question about the service hours)
        "垃圾",
        "真垃圾",
        "太垃圾",
        "垃圾客服",
        "客服垃圾",
        "客服太垃圾",
        "垃圾机器人",
        "机器人垃圾",
        "垃圾服务",
        "服务太差",
        "垃圾店",
        "破客服",
        "什么破客服",
        "太差",
        "太差劲",
        "差劲",
        "坑人",
        "坑爹",
        "骗子",
        "骗人",
    ),
}
# words that start a request: a greeting right before one is peeled even without a boundary
_CONTINUATIONS = ("请问", "我想", "我要", "问下", "问一下", "想问", "咨询", "麻烦", "帮我", "能不能", "可以")
_PARTICLES = "啊呀呢哦吧啦嘛哈呐么吗的了噢喔哇鸭"

# phrase -> (intent, needs_no_boundary)
_PHRASES: dict[str, tuple[str, bool]] = {
    p.rstrip("*"): (intent, p.endswith("*")) for intent, ps in _LEXICON.items() for p in ps
}
_ALTERNATION = "|".join(re.escape(p) for p in sorted(_PHRASES, key=len, reverse=True))
_HEAD = re.compile(rf" *({_ALTERNATION})([{_PARTICLES}]*)")
_TAIL = re.compile(rf"({_ALTERNATION})([{_PARTICLES}]*) *$")
_ONLY_PARTICLES = re.compile(rf"^[{_PARTICLES} ]*$")
_PURE = re.compile(rf"(?: *(?:{_ALTERNATION})[{_PARTICLES}]*)+ *")
_PURE_MAX_CHARS = 40  # small talk is short; the bound also keeps the backtracking regex cheap


@dataclass(frozen=True, slots=True)
class SmallTalk:
    """What small talk a normalized message holds, and the question left once it is taken off."""

    intents: tuple[str, ...] = ()  # in the order they were found (head first, then tail)
    rest: str = ""  # the normalized text without the small talk; "" when the message is only small talk

    @property
    def pure(self) -> bool:
        """The message is small talk and nothing else."""
        return bool(self.intents) and not self.rest

    @property
    def intent(self) -> str | None:
        """The intent a reply to a pure small-talk message is for (robot before venting before goodbye...)."""
        return next((i for i in _PRIORITY if i in self.intents), None)


@dataclass
class SmallTalkDetector:
    """Recognises built-in small-talk intents; `enabled` limits it to some of them."""

    enabled: Collection[str] = field(default_factory=lambda: INTENTS)

    def __post_init__(self) -> None:
        unknown = set(self.enabled) - set(INTENTS)
        if unknown:
            raise ValueError(f"unknown small-talk intent(s) {sorted(unknown)}; known: {', '.join(INTENTS)}")
        self.enabled = frozenset(self.enabled)

    def parse(self, normalized: str) -> SmallTalk:
        """Split a normalized message into small-talk intents and the rest (see the module docstring)."""
        text = normalized.strip()
        if not text or not self.enabled:
            return SmallTalk((), text)
        if len(text) <= _PURE_MAX_CHARS and _PURE.fullmatch(text):
            found = [_PHRASES[m.group(1)][0] for m in _HEAD.finditer(text)]
            if all(i in self.enabled for i in found):
                return SmallTalk(tuple(found), "")
        intents: list[str] = []
        pos = 0
        while pos < len(text):
            m = _HEAD.match(text, pos)
            if m is None:
                break
            intent, strong = _PHRASES[m.group(1)]
            end = m.end()
            after = text[end:]
            if intent not in self.enabled:
                break
            if not (strong or not after or after[0] == " " or after.startswith(_CONTINUATIONS)):
                break
            intents.append(intent)
            pos = end
        rest = text[pos:].strip()
        tail: list[str] = []
        while rest:
            m = _TAIL.search(rest)
            if m is None:
                break
            intent, strong = _PHRASES[m.group(1)]
            before = rest[: m.start()]
            if intent not in self.enabled:
                break
            if not (strong or not before or before.endswith(" ")):
                break
            tail.append(intent)
            rest = before.strip()
        if _ONLY_PARTICLES.match(rest):
            rest = ""
        return SmallTalk(tuple(intents + tail[::-1]), rest)

    def intents_of(self, questions: Iterable[str]) -> set[str]:
        """The intents that some of these (normalized) questions are purely about."""
        found = set()
        for q in questions:
            st = self.parse(q)
            if st.pure and st.intent is not None:
                found.add(st.intent)
        return found
