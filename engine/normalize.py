"""Text normalization: the first stage of the pipeline, shared by the KB side and the query side.

Both sides go through the same function so that what a merchant typed in the KB and what a customer
types in the chat meet in one canonical form: half-width, lower case, simplified Chinese, no
punctuation or emoji, and long digit runs (order numbers, phones) turned into placeholders.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache
from importlib import resources
from typing import Any

#: placeholder words; ASCII so that jieba keeps each one as a single token
PLACEHOLDERS = {
    "email": "xxemail",
    "url": "xxurl",
    "phone": "xxphone",
    "order": "xxorder",
    "number": "xxnum",
}
PLACEHOLDER_WORDS = frozenset(PLACEHOLDERS.values())

_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+", re.ASCII)
_URL = re.compile(r"(?:https?://|www\.)\S+", re.ASCII)
# mainland mobile numbers; 1[3-9] and 11 digits, not inside a longer digit run
_PHONE = re.compile(r"(?<!\d)(?:\+?86)?1[3-9]\d{9}(?!\d)")
# JD order numbers are 10-13 digits; longer or shorter long runs are "some number"
_ORDER = re.compile(r"(?<!\d)\d{10,13}(?!\d)")
_LONGNUM = re.compile(r"(?<!\d)\d{6,}(?!\d)")
# everything that is not a letter/digit/CJK/whitespace: punctuation, symbols, emoji, controls
_JUNK = re.compile(r"[^\w\s]|_")
_SPACES = re.compile(r"\s+")
_DIGIT = re.compile(r"\d")


@lru_cache(maxsize=1)
def _t2s_table() -> dict[int, str]:
    """Single-character traditional->simplified table from OpenCC's dictionary.

    Phrase-level conversion is not needed for matching; a translate table keeps the hot path O(n).
    """
    import opencc  # opencc-python-reimplemented ships the dictionary files

    path = resources.files(opencc) / "dictionary" / "TSCharacters.txt"
    table: dict[int, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        src, _, dst = line.partition("\t")
        if len(src) == 1 and dst:
            table[ord(src)] = dst.split(" ")[0]
    return table


def normalize(text: Any) -> str:
    """Canonical form of a message or KB question; never raises, whatever the input."""
    if not isinstance(text, str):
        text = "" if text is None else str(text)
    text = unicodedata.normalize("NFKC", text).lower().translate(_t2s_table())
    if "@" in text:
        text = _EMAIL.sub(" xxemail ", text)
    if "www." in text or "://" in text:
        text = _URL.sub(" xxurl ", text)
    if _DIGIT.search(text):  # the digit patterns below match \d only: without one, none can
        text = _PHONE.sub(" xxphone ", text)
        text = _ORDER.sub(" xxorder ", text)
        text = _LONGNUM.sub(" xxnum ", text)
    text = _JUNK.sub(" ", text)
    return _SPACES.sub(" ", text).strip()


def strip_placeholders(normalized: str) -> str:
    """The normalized text without placeholder words and inner spaces, for the sentence encoder."""
    if not any(w in normalized for w in PLACEHOLDER_WORDS):
        return normalized
    return " ".join(w for w in normalized.split(" ") if w not in PLACEHOLDER_WORDS)
