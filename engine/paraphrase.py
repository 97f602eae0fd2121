"""Synthetic paraphrases of KB questions, for calibrating a KB that has none.

Many merchants write one question per entry. Calibration then has no held-out paraphrase to learn from,
and a copy of the question with one word dropped is far easier than a customer's message: thresholds
chosen on it promise a precision the bot does not deliver. The generator here writes a question the way
customers change it, two or three edits at a time (one edit, as before, left afqmc's real paraphrases
answered at 13% precision for a 95% promise; two or three at 21-25%):

- a word replaced by a synonym (the merchant's synonym list and a built-in e-commerce list);
- a content word dropped;
- the sentence turned around at a word boundary (退货怎么弄 / 怎么退货);
- colloquial openers and particles (亲, 请问, 我想问下 ... 呢, 啊, 呀);
- a character typed as a homophone (same pinyin, toneless), drawn from the KB's own characters, the
  slip a pinyin input method makes.

Each generated text is still about the same entry; how hard it is depends on how many edits land on the
words that matter, which is the spread calibration needs.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

# groups of words customers use for one another in shop chats; each group is interchangeable
ECOMMERCE_SYNONYMS: tuple[tuple[str, ...], ...] = (
    ("怎么", "如何", "咋", "怎样"),
    ("可以", "能", "能不能", "可不可以"),
    ("多久", "多长时间", "几天"),
    ("什么时候", "啥时候", "几时"),
    ("什么", "啥"),
    ("退货", "退掉", "退回"),
    ("退款", "退钱"),
    ("换货", "调换"),
    ("快递", "物流"),
    ("发货", "寄出", "发出"),
    ("收到", "到货", "拿到"),
    ("价格", "价钱", "多少钱"),
    ("优惠券", "券", "优惠"),
    ("便宜", "优惠点", "实惠"),
    ("保修", "质保", "保养"),
    ("坏了", "有问题", "出故障"),
    ("包装", "外包装", "盒子"),
    ("发票", "票"),
    ("尺码", "码数", "尺寸"),
    ("客服", "人工"),
    ("东西", "商品", "宝贝"),
    ("买", "购买", "下单"),
    ("订单", "单子"),
    ("地址", "收货地址"),
    ("修改", "改", "更改"),
    ("取消", "撤销"),
    ("已经", "都"),
    ("为什么", "为啥", "怎么回事"),
    ("没有", "没"),
    ("支持", "有"),
)
OPENERS = ("亲", "请问", "我想问下", "问一下", "那个", "麻烦问下", "客服")
PARTICLES = ("呢", "啊", "呀", "吗", "哈", "的", "啦")
EDITS = ("synonym", "drop", "reorder", "particle", "typo")


def _pinyin(chars: Sequence[str]) -> list[str]:
    """Toneless pinyin of each Chinese character (its most common reading)."""
    from pypinyin import Style, lazy_pinyin

    return [lazy_pinyin(c, style=Style.NORMAL)[0] for c in chars]


class ParaphraseGenerator:
    """`fit` on the KB's questions (homophones come from their characters), then `generate`."""

    def __init__(
        self, synonyms: Mapping[str, Sequence[str]] | None = None, edits: tuple[int, int] = (2, 3)
    ) -> None:
        """`edits`: each paraphrase takes between edits[0] and edits[1] edits (a spread of difficulty)."""
        self.synonyms = synonyms
        self.edits = edits

    def fit(self, texts: Iterable[str]) -> ParaphraseGenerator:
        groups = [list(g) for g in ECOMMERCE_SYNONYMS]
        for head, alts in (self.synonyms or {}).items():
            groups.append([head, *alts])
        alternatives: dict[str, list[str]] = defaultdict(list)
        for group in groups:
            for w in group:
                alternatives[w].extend(x for x in group if x != w)
        self.alternatives_ = dict(alternatives)
        chars = sorted({c for t in texts for c in t if "\u4e00" <= c <= "\u9fff"})
        by_sound: dict[str, list[str]] = defaultdict(list)
        for c, py in zip(chars, _pinyin(chars), strict=True):
            if py:
                by_sound[py].append(c)
        self.homophones_ = {c: [x for x in group if x != c] for group in by_sound.values() for c in group}
        self.homophones_ = {c: alts for c, alts in self.homophones_.items() if alts}
        return self

    def generate(self, words: Sequence[str], rng: np.random.Generator) -> str | None:
        """A paraphrase of a question given as words (segmented), or None if too short to edit."""
        if len(words) < 2 or len("".join(words)) < 3:
            return None
        out = list(words)
        n = int(rng.integers(self.edits[0], self.edits[1] + 1))
        chosen = rng.choice(len(EDITS), size=min(n, len(EDITS)), replace=False)
        for edit in (EDITS[i] for i in sorted(chosen)):  # a typo last: it joins the words
            out = getattr(self, f"_{edit}")(out, rng)
        text = "".join(out)
        return text if text and text != "".join(words) else None

    # ------------------------------------------------------------------ edits (each returns new words)
    def _synonym(self, words: list[str], rng: np.random.Generator) -> list[str]:
        spots = [i for i, w in enumerate(words) if w in self.alternatives_]
        if not spots:
            return self._drop(words, rng)
        i = int(rng.choice(spots))
        alts = self.alternatives_[words[i]]
        return [*words[:i], str(alts[int(rng.integers(len(alts)))]), *words[i + 1 :]]

    def _drop(self, words: list[str], rng: np.random.Generator) -> list[str]:
        content = [i for i, w in enumerate(words) if len(w) > 1 or "\u4e00" <= w <= "\u9fff"]
        if len(content) < 2:
            return words
        drop = int(rng.choice(content))
        return [w for i, w in enumerate(words) if i != drop]

    def _reorder(self, words: list[str], rng: np.random.Generator) -> list[str]:
        if len(words) < 3:
            return words
        cut = int(rng.integers(1, len(words)))
        return [*words[cut:], *words[:cut]]

    def _particle(self, words: list[str], rng: np.random.Generator) -> list[str]:
        if rng.random() < 0.5:
            return [str(OPENERS[int(rng.integers(len(OPENERS)))]), *words]
        return [*words, str(PARTICLES[int(rng.integers(len(PARTICLES)))])]

    def _typo(self, words: list[str], rng: np.random.Generator) -> list[str]:
        text = "".join(words)
        spots = [i for i, c in enumerate(text) if c in self.homophones_]
        if not spots:
            return self._particle(words, rng)
        i = int(rng.choice(spots))
        alts = self.homophones_[text[i]]
        typed = text[:i] + str(alts[int(rng.integers(len(alts)))]) + text[i + 1 :]
        return [typed]
