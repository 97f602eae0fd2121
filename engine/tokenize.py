"""Word segmentation with the merchant's dictionary, synonyms and stop words.

jieba is the reference segmenter; rjieba (its Rust port) is the fast path and must produce the same
tokens (a parity test checks it on the shared data). Synonyms are rewritten on the normalized string,
before segmentation, so every surface form meets the same canonical word in every channel.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from engine.normalize import normalize

_STOP = """
的 了 吗 呢 啊 吧 呀 哦 嗯 哈 么 嘛 啦 哟 喔 呃 噢 诶 亲 您 你 你好 您好 在吗 在不在 请问 一下 麻烦 谢谢
是 有 和 与 或 就 都 也 还 又 这个 那个 这 那 个 把 被 让 给 哈哈
"""
DEFAULT_STOPWORDS = frozenset(_STOP.split())


# How the merchant's words reach the segmenter. "split" (models built from now on): the text is cut at
# the merchant's words, which stay whole, and the pieces between them go to one segmenter of the default
# dictionary shared by every model in the process. "dictionary" (models saved before): each model adds its
# words to a private copy of the dictionary, about 26 MB and 0.13 s per model: a thousand shops' models
# would need 26 GB.
USER_WORDS_SPLIT = "split"
USER_WORDS_DICTIONARY = "dictionary"


class Tokenizer:
    """Segments normalized text into words: one shared segmenter of the default dictionary, the
    merchant's words kept whole around it (see USER_WORDS_SPLIT)."""

    def __init__(
        self,
        user_words: Sequence[str] = (),
        synonyms: Mapping[str, Sequence[str]] | None = None,
        stopwords: Iterable[str] | None = None,
        backend: str = "auto",
        user_words_mode: str = USER_WORDS_SPLIT,
    ) -> None:
        self.user_words = list(user_words)
        self.synonyms = dict(synonyms or {})
        self.stopwords = DEFAULT_STOPWORDS if stopwords is None else frozenset(stopwords)
        self.backend = backend
        if user_words_mode not in (USER_WORDS_SPLIT, USER_WORDS_DICTIONARY):
            raise ValueError(
                f"unknown user_words_mode {user_words_mode!r} (expected {USER_WORDS_SPLIT!r} or "
                f"{USER_WORDS_DICTIONARY!r})"
            )
        self.user_words_mode = user_words_mode

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
        if self.user_words_mode == USER_WORDS_DICTIONARY:
            self.segmenter_ = _make_segmenter(self.backend_, sorted(words))
        else:
            self.segmenter_ = _split_at_words(shared_segmenter(self.backend_), words)
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


_SHARED: dict[str, Callable[[str], list[str]]] = {}
_SHARED_LOCK = threading.Lock()


def shared_segmenter(backend: str) -> Callable[[str], list[str]]:
    """The process's one segmenter of the default dictionary for `backend` (jieba's and rjieba's cut
    are safe to call from several threads: neither changes the dictionary while cutting)."""
    with _SHARED_LOCK:
        seg = _SHARED.get(backend)
        if seg is None:
            seg = _SHARED[backend] = _make_segmenter(backend, ())
        return seg


def _split_at_words(cut: Callable[[str], list[str]], words: Iterable[str]) -> Callable[[str], list[str]]:
    """`cut` with `words` kept whole: at each position the longest of them that starts there is one
    token, the text between them is cut as usual. Positions are found with one regex over the words'
    first characters, so a message without them costs one search."""
    by_first: dict[str, list[str]] = {}
    for w in words:
        by_first.setdefault(w[0], []).append(w)
    if not by_first:
        return cut
    for ws in by_first.values():
        ws.sort(key=len, reverse=True)
    first = re.compile("[" + "".join(re.escape(c) for c in sorted(by_first)) + "]")

    def segment(s: str) -> list[str]:
        out: list[str] = []
        start = i = 0
        while (m := first.search(s, i)) is not None:
            i = m.start()
            w = next((w for w in by_first[s[i]] if s.startswith(w, i)), None)
            if w is None:
                i += 1
                continue
            if start < i:
                out.extend(cut(s[start:i]))
            out.append(w)
            i = start = i + len(w)
        if start < len(s):
            out.extend(cut(s[start:]))
        return out

    return segment


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
