"""Spreadsheet cells that cannot run as formulas (CSV/formula injection), and their exact inverse.

A cell starting with = + - @ (or a tab or carriage return, which some spreadsheets skip before one of
those) is run as a formula when a merchant opens an export in Excel or WPS: a customer message like
`=cmd|' /C calc'!A0` in `labelled.csv` is an attack on the merchant's machine. Such a cell is written
with a leading single quote, which spreadsheets show as "text follows". So that every text survives a
write and read exactly, a cell that already starts with quotes before one of those characters gets one
more, and the reader takes exactly one off.
"""

from __future__ import annotations

import re

__all__ = ["FORMULA_CHARS", "escape_cell", "unescape_cell"]

FORMULA_CHARS = "=+-@\t\r"
_NEEDS_ESCAPE = re.compile(r"'*[=+\-@\t\r]")
_ESCAPED = re.compile(r"'+[=+\-@\t\r]")


def escape_cell(text: str) -> str:
    """`text` as a CSV cell that no spreadsheet runs as a formula (quote-prefixed when needed)."""
    return "'" + text if _NEEDS_ESCAPE.match(text) else text


def unescape_cell(text: str) -> str:
    """Inverse of escape_cell: the text a cell written by escape_cell was made from."""
    return text[1:] if _ESCAPED.match(text) else text
