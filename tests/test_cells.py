"""engine.cells: no exported spreadsheet cell runs as a formula, and every text reads back unchanged."""

from __future__ import annotations

import csv
import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.cells import FORMULA_CHARS, escape_cell, unescape_cell

# texts that start like formulas (or like an escaped formula) come up often, not once in a million
_texts = st.one_of(
    st.text(),
    st.tuples(st.text("'", max_size=3), st.sampled_from(FORMULA_CHARS), st.text()).map("".join),
)


@pytest.mark.parametrize(
    ("text", "cell"),
    [
        ("=cmd|' /C calc'!A0", "'=cmd|' /C calc'!A0"),
        ("+86 138", "'+86 138"),
        ("-5元券", "'-5元券"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\t=1+1", "'\t=1+1"),
        ("\r=1", "'\r=1"),
        ("'=1", "''=1"),  # a quote already there is kept: one more is added, one is taken off
        ("'单引号", "'单引号"),  # not before a formula character: unchanged
        ("满300减40", "满300减40"),
        ("", ""),
    ],
)
def test_escape_examples(text: str, cell: str) -> None:
    assert escape_cell(text) == cell
    assert unescape_cell(cell) == text


@settings(max_examples=500, deadline=None)
@given(st.lists(_texts, min_size=1, max_size=4))
def test_property_any_text_survives_a_csv_and_no_cell_is_a_formula(texts: list[str]) -> None:
    out = io.StringIO()
    csv.writer(out).writerow([escape_cell(t) for t in texts])
    [cells] = list(csv.reader(io.StringIO(out.getvalue(), newline="")))
    assert not any(cell[:1] in set(FORMULA_CHARS) for cell in cells if cell)
    assert [unescape_cell(cell) for cell in cells] == texts
