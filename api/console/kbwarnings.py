"""What an uploaded KB file loaded with but deserves a look (engine.kb's warnings), in the page's language.

engine.kb returns warnings as KBIssues (file, row, column, message) whose message is English: a column
that is not a KB column (with the closest known header), hidden rows, the sheet of a workbook that was
read, a paraphrase that was dropped, two questions the matcher cannot tell apart. As with logged reasons
(api/console/reasons.py), each known wording below is a "kbw." key of the i18n table whose English text is
the engine's own wording (tests/test_console.py renders every pattern back to the engine's exact words)
and whose Chinese text is what a Chinese console shows. Quoted values (a header, a sheet name, a
paraphrase) are shown as the file has them; a group named `unit` (row, line, record, item), `role` or
`target` (a KB column) is translated. A warning no pattern knows is shown as the engine wrote it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from api.console.i18n import TABLE, Translator
from engine.kb import KBIssue

_Q = r"'.*'"  # a value as engine.kb quotes it (_quote): in single quotes, which it does not escape
_HIDDEN = (
    r"sheet (?P<sheet>{q}) has (?P<n>\d+) hidden {rows} \(hidden by a filter or by hand\), read like the "
    r"others: {rows} (?P<rows>\d+(?:, \d+)*){more}; unhide them to check them, and delete any that should "
    r"not be in the knowledge base"
)
_COLUMN = r"(?P<name>{q}) is not a knowledge-base column; its values are ignored"
_KEY = r"(?P<name>{q}) is not a knowledge-base column; it is ignored \(in (?P<count>\d+) (?P<unit>[a-z]+)\)"
_CLOSE = r" \(did you mean (?P<close>{q})\?\)"
_TARGET = r" \(did you mean (?P<close>{q}), i\.e\. (?P<target>\w+)\?\)"
_SHEET = r"read sheet (?P<sheet>{q}), the first visible one"


def _p(pattern: str, **parts: str) -> re.Pattern[str]:
    return re.compile(pattern.format(q=_Q, **parts))


# (key of the i18n table, the whole message), most specific first: the first full match wins
PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    # _first_visible_sheet: which sheet of a workbook was read
    (
        "kbw.sheet_others_skipped",
        _p(_SHEET + r"; other sheets ignored: (?P<others>{q}); hidden sheets skipped: (?P<skipped>{q})"),
    ),
    ("kbw.sheet_others", _p(_SHEET + r"; other sheets ignored: (?P<others>{q})")),
    ("kbw.sheet_skipped", _p(_SHEET + r"; hidden sheets skipped: (?P<skipped>{q})")),
    # _hidden_rows_message
    ("kbw.hidden_row", _p(_HIDDEN, rows="row", more="")),
    ("kbw.hidden_rows_more", _p(_HIDDEN, rows="rows", more=r" and (?P<more>\d+) more")),
    ("kbw.hidden_rows", _p(_HIDDEN, rows="rows", more="")),
    # _unknown_column_warnings: a spreadsheet header, or a JSON key, that is not a KB column
    ("kbw.column_target", _p(_COLUMN + _TARGET)),
    ("kbw.column_close", _p(_COLUMN + _CLOSE)),
    ("kbw.column", _p(_COLUMN)),
    ("kbw.key_target", _p(_KEY + _TARGET)),
    ("kbw.key_close", _p(_KEY + _CLOSE)),
    ("kbw.key", _p(_KEY)),
    # _matchable_similar
    (
        "kbw.dropped",
        _p(
            r"paraphrase (?P<text>{q}) has no word or character the matcher can use \(only emoji, "
            r"punctuation or symbols\); it was dropped"
        ),
    ),
    # _joined_rows_warnings (CSV): a stray quote that joined rows into one cell
    (
        "kbw.joined_rows",
        _p(
            r"this cell runs over (?P<lines>\d+) lines, and (?P<n>\d+) of them look like rows of their own "
            r"\(as many comma-separated values as the header, such as (?P<line>{q})\): a double quote that "
            r"opens the cell and is closed only by a stray quote further down joins the rows between into "
            r"it, and their entries are missing; if so, close the quote after the cell's text"
        ),
    ),
    # _check_matcher_duplicates
    (
        "kbw.same_to_matcher",
        _p(
            r"entry (?P<entry>{q}) repeats (?P<text>{q}) to the matcher: it is the same question as "
            r"(?P<other>{q}), a (?P<role>standard question|similar question) of entry (?P<other_entry>{q}) "
            r"\((?P<unit>[a-z]+) (?P<row>\d+)\), but for punctuation, emoji, width, traditional/simplified "
            r"characters or case; the matcher cannot tell them apart, so merge the two entries or reword one"
        ),
    ),
)
# groups whose value is itself a word to translate: the i18n key it is looked up under
_TRANSLATED: dict[str, Callable[[str], str]] = {
    "unit": lambda v: f"kbw.unit.{v}",
    "role": lambda v: "kbw.role." + v.replace(" ", "_"),
    "target": lambda v: f"field.{v}",
}
_LISTS = {"rows": ", ", "others": "', '", "skipped": "', '"}  # lists, with a Chinese enumeration comma
MAX_SHOWN = 500  # warnings a page lists (a file can drop thousands of paraphrases); the rest are counted


def render(message: str, t: Translator) -> str:
    """`message` in t's language by the first pattern that matches it whole; as written if none does."""
    for key, pattern in PATTERNS:
        m = pattern.fullmatch(message)
        if m is None:
            continue
        values = {}
        for name, value in m.groupdict().items():
            word = _TRANSLATED.get(name)
            if word is not None and t.lang != "en" and word(value) in TABLE:
                value = t(word(value))
            elif name in _LISTS and t.lang != "en":
                value = value.replace(_LISTS[name], _LISTS[name].replace(", ", "、"))
            values[name] = value
        return t(key, **values)
    return message


def warning_text(message: str, t: Translator) -> str:
    """What the console shows for a warning: the engine's own words in English, else the table's
    rendering of a known wording (the words as written for an unknown one)."""
    return message if t.lang == "en" else render(message, t)


def stored(warnings: Iterable[KBIssue]) -> dict[str, Any]:
    """Warnings as JSON for the store (the page after an upload's redirect reads them): at most
    MAX_SHOWN of them, and how many there were."""
    listed = list(warnings)
    return {
        "total": len(listed),
        "warnings": [
            {"source": w.source, "row": w.row, "column": w.column, "message": w.message}
            for w in listed[:MAX_SHOWN]
        ],
    }


def shown(data: Any, t: Translator) -> tuple[list[dict[str, Any]], int]:
    """The rows a page lists for `stored(...)` data, the message in t's language, and how many were
    left out; ([], 0) for anything else (an expired or foreign key)."""
    if not isinstance(data, dict) or not isinstance(data.get("warnings"), list):
        return [], 0
    rows = []
    for w in data["warnings"][:MAX_SHOWN]:
        if not isinstance(w, dict):
            continue
        row = w.get("row")
        rows.append(
            {
                "source": str(w.get("source") or ""),
                "row": row if isinstance(row, int) else None,
                "column": str(w["column"]) if w.get("column") is not None else None,
                "message": warning_text(str(w.get("message") or ""), t),
            }
        )
    total = data.get("total")
    return rows, max(0, (total if isinstance(total, int) else len(rows)) - len(rows))


def listed(warnings: Sequence[KBIssue], t: Translator) -> tuple[list[dict[str, Any]], int]:
    """The rows a page lists for warnings at hand (an upload refused for its problems)."""
    return shown(stored(warnings), t)
