"""Word segmentation with the merchant's dictionary, synonyms and stop words.

jieba is the reference segmenter; rjieba (its Rust port) is the fast path and must produce the same
tokens (a parity test checks it on the shared data). Synonyms are rewritten on the normalized string,
before segmentation, so every surface form meets the same canonical word in every channel.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from engine.normalize import normalize

_STOP = """
的 了 吗 呢 啊 吧 呀 哦 嗯 哈 么 嘛 啦 哟 喔 呃 噢 诶 亲 您 你 你好 您好 在吗 在不在 请问 一下 麻烦 谢谢
是 有 和 与 或 就 都 也 还 又 这个 那个 这 那 个 把 被 让 给 哈哈
"""
DEFAULT_STOPWORDS = frozenset(_STOP.split())


class Tokenizer:
    """Segments normalized text into words; build-time `fit` loads the dictionary once per model."""

    def __init__(
        self,
        user_words: Sequence[str] = (),
        synonyms: Mapping[str, Sequence[str]] | None = None,
        stopwords: Iterable[str] | None = None,
        backend: str = "auto",
    ) -> None:
        self.user_words = list(user_words)
        self.synonyms = dict(synonyms or {})
        self.stopwords = DEFAULT_STOPWORDS if stopwords is None else frozenset(stopwords)
        self.backend = backend

    def fit(self, texts: Any = None) -> Tokenizer:
        """Build the segmenter: default jieba dictionary plus user words and canonical synonyms."""
        canon: dict[str, str] = {}
        for head, alts in self.synonyms.items():
            h = normalize(head)
            for alt in alts:
                a = normalize(alt)
                if a and a != h:
                    canon[a] = h
        self.synonym_map_ = canon
        self.synonym_re_ = (
            re.compile("|".join(re.escape(a) for a in sorted(canon, key=len, reverse=True)))
            if canon
            else None
        )
        words = {normalize(w) for w in self.user_words} | {normalize(h) for h in self.synonyms}
        words = {w for w in words if w}
        self.backend_ = self._resolve_backend()
        self.segmenter_ = _make_segmenter(self.backend_, sorted(words))
        self.stopwords_ = frozenset(normalize(w) for w in self.stopwords)
        return self

    def _resolve_backend(self) -> str:
        if self.backend != "auto":
            return self.backend
        try:
            import rjieba  # noqa: F401
        except ImportError:
            return "jieba"
        return "rjieba"

    def canonical(self, normalized: str) -> str:
        """Rewrite synonyms to their canonical word (longest match first)."""
        rx = self.synonym_re_
        return rx.sub(lambda m: self.synonym_map_[m.group(0)], normalized) if rx else normalized

    def segment(self, canonical: str) -> list[str]:
        """All words, stop words included (the parity test compares this)."""
        return [t for t in self.segmenter_(canonical) if t != " "]

    def words(self, canonical: str) -> list[str]:
        """Content words: segmented, without stop words."""
        stop = self.stopwords_
        return [t for t in self.segmenter_(canonical) if t != " " and t not in stop]

    def transform(self, texts: Iterable[str]) -> list[list[str]]:
        return [self.words(self.canonical(normalize(t))) for t in texts]

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("segmenter_", None)
        state.pop("synonym_re_", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if "synonym_map_" in state:
            self.fit()


def _make_segmenter(backend: str, words: Sequence[str]) -> Any:
    if backend == "rjieba":
        import rjieba

        rj = rjieba.Jieba()
        for w in words:
            rj.add_word(w, None, None)
        return lambda s: rj.cut(s, True)
    if backend == "jieba":
        import jieba

        jieba.setLogLevel(60)
        tk = jieba.Tokenizer()
        for w in words:
            tk.add_word(w)
        return lambda s: tk.lcut(s, HMM=True)
    raise ValueError(f"unknown tokenizer backend {backend!r} (expected 'auto', 'rjieba' or 'jieba')")


def char_ngrams(canonical: str) -> list[str]:
    """Character unigrams and bigrams of the text without spaces (spaces break bigrams)."""
    out: list[str] = []
    for chunk in canonical.split(" "):
        out.extend(chunk)
        out.extend(chunk[i : i + 2] for i in range(len(chunk) - 1))
    return out
