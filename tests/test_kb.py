"""Tests for engine.kb: loading every format, validation, activity windows, export."""

from __future__ import annotations

import csv
import io
import json
import pickle
import re
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import openpyxl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openpyxl.utils.datetime import to_excel

from engine.kb import (
    KB_COLUMNS,
    KBEntry,
    KBIssue,
    KBTooLarge,
    KBValidationError,
    ReadLimits,
    dump_kb,
    kb_hash,
    load_kb,
    load_saved_kb,
    read_rows,
)
from engine.normalize import normalize

SH = ZoneInfo("Asia/Shanghai")
END_OF_JUNE = datetime(2025, 6, 30, 23, 59, 59, 999999, tzinfo=SH)

SAMPLE_ROWS: list[list[Any]] = [
    ["A1", "怎么退货", "如何退货|退货流程", "七天无理由退货", "售后", "", "", "true"],
    ["A2", "多久发货", "什么时候发货", "48小时内发货", "物流", "2025-01-01", "2025-06-30", "是"],
    ["A3", "可以开发票吗", "", "可以开电子发票", "", "", "", "否"],
]
EXPECTED = [
    KBEntry("A1", "怎么退货", "七天无理由退货", ("如何退货", "退货流程"), "售后"),
    KBEntry(
        "A2",
        "多久发货",
        "48小时内发货",
        ("什么时候发货",),
        "物流",
        valid_from=datetime(2025, 1, 1, tzinfo=SH),
        valid_to=END_OF_JUNE,
    ),
    KBEntry("A3", "可以开发票吗", "可以开电子发票", enabled=False),
]


def csv_text(header: Sequence[Any], rows: Sequence[Sequence[Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def write_csv(path: Path, rows: Sequence[Sequence[Any]], header: Sequence[Any] = KB_COLUMNS) -> Path:
    path.write_text(csv_text(header, rows), encoding="utf-8", newline="")
    return path


def write_xlsx(path: Path, rows: Sequence[Sequence[Any]], header: Sequence[Any] = KB_COLUMNS) -> Path:
    workbook = openpyxl.Workbook()
    sheet = workbook.active
    sheet.append(list(header))
    for row in rows:
        sheet.append(list(row))
    workbook.save(path)
    return path


def sample_records() -> list[dict[str, Any]]:
    return [dict(zip(KB_COLUMNS, row, strict=True)) for row in SAMPLE_ROWS]


def issues_of(source: Any, **kwargs: Any) -> list[KBIssue]:
    with pytest.raises(KBValidationError) as info:
        load_kb(source, **kwargs)
    return info.value.issues


def where(issues: Sequence[KBIssue]) -> list[tuple[int | None, str | None]]:
    return [(issue.row, issue.column) for issue in issues]


# --------------------------------------------------------------------------- formats


def _csv_bytes(encoding: str) -> Callable[[Path], Path]:
    def write(directory: Path) -> Path:
        path = directory / "kb.csv"
        path.write_bytes(csv_text(KB_COLUMNS, SAMPLE_ROWS).encode(encoding))
        return path

    return write


def _xlsx(directory: Path) -> Path:
    return write_xlsx(directory / "kb.xlsx", SAMPLE_ROWS)


def _json(directory: Path) -> Path:
    records = sample_records()
    records[0]["similar"] = ["如何退货", "退货流程"]  # JSON may give a real list
    path = directory / "kb.json"
    path.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    return path


def _json_wrapped(directory: Path) -> Path:
    path = directory / "kb.json"
    path.write_text(json.dumps({"entries": sample_records()}, ensure_ascii=False), encoding="utf-8")
    return path


def _jsonl(directory: Path) -> Path:
    lines = [json.dumps(record, ensure_ascii=False) for record in sample_records()]
    path = directory / "kb.JSONL"  # suffix matching is case-insensitive
    path.write_text("\n".join([lines[0], "", lines[1], "   ", lines[2]]) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "make",
    [
        _csv_bytes("utf-8"),
        _csv_bytes("utf-8-sig"),
        _csv_bytes("gb18030"),
        _csv_bytes("gbk"),
        _xlsx,
        _json,
        _json_wrapped,
        _jsonl,
    ],
    ids=["csv-utf8", "csv-utf8-sig", "csv-gb18030", "csv-gbk", "xlsx", "json", "json-entries", "jsonl"],
)
def test_every_format_loads_the_same_kb(tmp_path: Path, make: Callable[[Path], Path]) -> None:
    assert load_kb(make(tmp_path)) == EXPECTED


def test_in_memory_dicts_and_entries_load(tmp_path: Path) -> None:
    assert load_kb(sample_records()) == EXPECTED
    assert load_kb(EXPECTED) == EXPECTED
    assert load_kb(iter(EXPECTED)) == EXPECTED


def test_short_gbk_text_is_not_mistaken_for_big5(tmp_path: Path) -> None:
    # charset-normalizer alone ranks these few GBK bytes as big5.
    path = tmp_path / "kb.csv"
    path.write_bytes("id,question,answer\n1,退,好\n".encode("gbk"))
    assert load_kb(path) == [KBEntry("1", "退", "好")]


def test_undecodable_csv_is_an_issue(tmp_path: Path) -> None:
    path = tmp_path / "kb.csv"
    path.write_bytes(bytes(range(128, 256)))
    [issue] = issues_of(path)
    assert "could not detect the file encoding" in issue.message
    assert issue.row is None


def test_similar_is_split_stripped_and_deduplicated(tmp_path: Path) -> None:
    similar = " 如何退货 | 退货流程\n怎么退货\r\n退货流程||\n  \n退款｜如何退货 "
    path = write_csv(tmp_path / "kb.csv", [["A1", "怎么退货", similar, "七天无理由"]])
    [entry] = load_kb(path)
    # "怎么退货" equals the question; repeats are dropped in order.
    assert entry.similar == ("如何退货", "退货流程", "退款")
    assert entry.questions() == ("怎么退货", "如何退货", "退货流程", "退款")


def test_text_fields_are_stripped_and_ids_converted() -> None:
    [entry] = load_kb([{"id": 7, "question": "  问题 \u3000", "answer": "\t答案\n", "category": None}])
    assert (entry.id, entry.question, entry.answer, entry.category) == ("7", "问题", "答案", "")


def test_chinese_header_aliases(tmp_path: Path) -> None:
    header = [" 编号 ", "标准问题", "相似问法", "回答", "类别", "开始时间", "结束时间", "是否启用", "备注"]
    rows = [
        ["A2", "多久发货", "什么时候发货", "48小时内发货", "物流", "2025/01/01", "2025/06/30", "启用", "x"]
    ]
    [entry] = load_kb(write_csv(tmp_path / "kb.csv", rows, header))
    assert entry == EXPECTED[1]

    other = ["ID", "问题", "相似问题", "答案", "分类", "生效时间", "失效时间", "启用"]
    rows = [["A3", "可以开发票吗", "", "可以开电子发票", "", "", "", "停用"]]
    assert load_kb(write_csv(tmp_path / "other.csv", rows, other)) == [EXPECTED[2]]


def test_quoted_newlines_stay_inside_one_csv_row(tmp_path: Path) -> None:
    rows = [["A1", "怎么退货", "", "第一步\n第二步"], ["A2", "多久发货", "", "很快"]]
    path = write_csv(tmp_path / "kb.csv", rows)
    assert [entry.answer for entry in load_kb(path)] == ["第一步\n第二步", "很快"]
    records, numbers = read_rows(path)
    assert numbers == [2, 3]  # spreadsheet rows, not physical lines
    assert records[0]["answer"] == "第一步\n第二步"


def test_xlsx_with_integer_id_and_real_datetime_cells(tmp_path: Path) -> None:
    workbook = openpyxl.Workbook()
    sheet = workbook.active
    sheet.append([])  # header is the first non-empty row
    sheet.append(["编号", "问题", "答案", "生效时间", "失效时间", "启用"])
    sheet.append([12, "多久发货", "48小时内发货", datetime(2025, 1, 1, 9, 30), date(2025, 6, 30), True])
    sheet.append([None, None, None, None, None, None])
    sheet.append([13.0, "能开发票吗", "能", None, datetime(2025, 6, 30), False])
    workbook.save(tmp_path / "kb.xlsx")

    first, second = load_kb(tmp_path / "kb.xlsx")
    assert (first.id, second.id) == ("12", "13")
    assert first.valid_from == datetime(2025, 1, 1, 9, 30, tzinfo=SH)
    assert first.valid_to == END_OF_JUNE  # a date cell covers the whole day
    assert second.valid_to == datetime(2025, 6, 30, 0, 0, tzinfo=SH)  # an explicit datetime is exact
    assert (first.enabled, second.enabled) == (True, False)
    assert read_rows(tmp_path / "kb.xlsx")[1] == [3, 5]


END_OF_PROMO = datetime(2026, 12, 13, 23, 59, 59, 999999, tzinfo=SH)
# date formats as Excel, WPS and Chinese Excel write them; openpyxl's own is_datetime misreads the last
# three (upper case; an "s"/"h" inside a locale tag) as formats with a time of day
XLSX_DATE_FORMATS = [
    "yyyy-mm-dd",
    "yyyy/m/d",
    "yyyy/m/d;@",
    "mm-dd-yy",
    "d-mmm-yy",
    'yyyy"年"m"月"d"日"',
    '[DBNum1][$-804]yyyy"年"m"月"d"日"',
    "YYYY-MM-DD",
    "[$-x-sysdate]dddd, mmmm dd, yyyy",
    '[$-zh-CN]yyyy"年"m"月"d"日";@',
]


def _promo_xlsx(path: Path, value: Any, number_format: str) -> Path:
    workbook = openpyxl.Workbook()
    sheet = workbook.active
    sheet.append(["id", "question", "answer", "valid_to"])
    sheet.append(["promo", "双十二有活动吗", "满300减40", value])
    sheet["D2"].number_format = number_format
    workbook.save(path)
    return path


def _with_builtin_format(path: Path, number_format_id: int) -> Path:
    """Rewrite a workbook's one custom number format as a built-in id, as Chinese Excel saves it.

    The cell must hold a day number (a datetime gets openpyxl's own default format as well)."""
    with zipfile.ZipFile(path) as source:
        parts = {name: source.read(name) for name in source.namelist()}
    styles = parts["xl/styles.xml"].decode("utf-8")
    styles = re.sub(r"<numFmts[^>]*>.*?</numFmts>", "", styles, flags=re.S)
    parts["xl/styles.xml"] = styles.replace('numFmtId="164"', f'numFmtId="{number_format_id}"').encode()
    with zipfile.ZipFile(path, "w") as target:
        for name, data in parts.items():
            target.writestr(name, data)
    return path


@pytest.mark.parametrize("number_format", XLSX_DATE_FORMATS)
def test_xlsx_date_cell_means_the_whole_day_like_csv(tmp_path: Path, number_format: str) -> None:
    csv_entry = load_kb([{"id": "p", "question": "q", "answer": "a", "valid_to": "2026-12-13"}])
    xlsx = _promo_xlsx(tmp_path / "kb.xlsx", datetime(2026, 12, 13), number_format)
    assert load_kb(xlsx)[0].valid_to == csv_entry[0].valid_to == END_OF_PROMO


@pytest.mark.parametrize("number_format_id", [14, 31, 57, 58])
def test_xlsx_builtin_date_formats_of_chinese_excel(tmp_path: Path, number_format_id: int) -> None:
    # 31 = yyyy"年"m"月"d"日", 57/58 = 年月 / 月日 in Chinese Excel: openpyxl gives their cells as day numbers
    xlsx = _promo_xlsx(tmp_path / "kb.xlsx", to_excel(datetime(2026, 12, 13)), 'yyyy"年"m"月"d"日"')
    _with_builtin_format(xlsx, number_format_id)
    assert load_kb(xlsx)[0].valid_to == END_OF_PROMO


@pytest.mark.parametrize("number_format", ["yyyy-mm-dd h:mm", "yyyy/m/d h:mm:ss", "YYYY-MM-DD HH:MM"])
def test_xlsx_midnight_shown_with_a_time_is_that_moment(tmp_path: Path, number_format: str) -> None:
    """A cell that shows "2026-12-13 0:00" means that minute, as the same text in a CSV does."""
    xlsx = _promo_xlsx(tmp_path / "kb.xlsx", datetime(2026, 12, 13), number_format)
    csv_entry = load_kb([{"id": "p", "question": "q", "answer": "a", "valid_to": "2026-12-13 00:00"}])
    assert load_kb(xlsx)[0].valid_to == csv_entry[0].valid_to == datetime(2026, 12, 13, tzinfo=SH)


def test_xlsx_real_time_is_kept_even_in_a_date_format(tmp_path: Path) -> None:
    xlsx = _promo_xlsx(tmp_path / "kb.xlsx", datetime(2026, 12, 13, 18, 30), "yyyy/m/d")
    assert load_kb(xlsx)[0].valid_to == datetime(2026, 12, 13, 18, 30, tzinfo=SH)
    _with_builtin_format(_promo_xlsx(xlsx, to_excel(datetime(2026, 12, 13, 18, 30)), "yyyy/m/d"), 31)
    assert load_kb(xlsx)[0].valid_to == datetime(2026, 12, 13, 18, 30, tzinfo=SH)


def test_xlsx_issue_rows_count_blank_rows(tmp_path: Path) -> None:
    rows: list[list[Any]] = [["A1", "问1", "", "答1"], [None] * 4, [None] * 4, ["A2", "问2", "", None]]
    [issue] = issues_of(write_xlsx(tmp_path / "shop.xlsx", rows))
    assert (issue.row, issue.column) == (5, "answer")
    assert str(issue).startswith("shop.xlsx row 5, column answer:")


def test_blank_rows_are_skipped_silently(tmp_path: Path) -> None:
    rows = [["", "", "", ""], ["A1", "问1", "", "答1"], [" ", "", "", ""]]
    path = write_csv(tmp_path / "kb.csv", rows)
    assert [entry.id for entry in load_kb(path)] == ["A1"]
    assert read_rows(path)[1] == [3]


def test_jsonl_bad_line_is_reported_with_its_line_number(tmp_path: Path) -> None:
    path = tmp_path / "kb.jsonl"
    good = json.dumps({"id": "A1", "question": "问1", "answer": "答1"}, ensure_ascii=False)
    no_answer = json.dumps({"id": "A2", "question": "问2"}, ensure_ascii=False)
    path.write_text(f"{good}\n\n{{not json\n{no_answer}\n[1, 2]\n", encoding="utf-8")
    issues = issues_of(path)
    assert where(issues) == [(3, None), (4, "answer"), (5, None)]
    assert "invalid JSON" in issues[0].message
    assert "got array" in issues[2].message
    assert str(issues[0]).startswith("kb.jsonl line 3:")


def test_json_with_wrong_top_level_is_an_issue(tmp_path: Path) -> None:
    path = tmp_path / "kb.json"
    path.write_text('{"faq": []}', encoding="utf-8")
    [issue] = issues_of(path)
    assert "expected a JSON array" in issue.message


def test_in_memory_item_of_wrong_type() -> None:
    issues = issues_of([{"id": "A1", "question": "问", "answer": "答"}, "A2"])
    assert where(issues) == [(2, None)]
    assert str(issues[0]) == "<entries> item 2: expected a mapping or KBEntry, got str"


def test_single_mapping_is_rejected_with_a_clear_error() -> None:
    wrapped: Any = {"entries": sample_records()}  # iterating a dict would yield its keys
    with pytest.raises(TypeError, match="iterable of entries"):
        load_kb(wrapped)


# --------------------------------------------------------------------------- validation


def test_all_issues_are_reported_at_once(tmp_path: Path) -> None:
    rows = [
        ["A1", "问1", "", "", "", "", "", ""],  # row 2: missing answer
        ["A2", "问2", "", "答2", "", "", "2025-13-01", ""],  # row 3: bad date
        ["A3", "问3", "", "答3", "", "", "", "maybe"],  # row 4: bad enabled value
        ["A1", "问4", "", "答4", "", "", "", ""],  # row 5: duplicate id
    ]
    with pytest.raises(KBValidationError) as info:
        load_kb(write_csv(tmp_path / "shop.csv", rows))
    issues = info.value.issues
    assert where(issues) == [(2, "answer"), (3, "valid_to"), (4, "enabled"), (5, "id")]
    text = str(info.value)
    assert text.splitlines()[0] == "4 problems in the knowledge base:"
    assert len(text.splitlines()) == 5
    assert "shop.csv row 4, column enabled: bad enabled value 'maybe'" in text


def test_missing_values_are_separate_issues() -> None:
    issues = issues_of([{"id": "", "question": " ", "answer": None, "category": "售后"}])
    assert where(issues) == [(1, "id"), (1, "question"), (1, "answer")]


def test_duplicate_id_names_the_first_row(tmp_path: Path) -> None:
    rows = [["x", "问1", "", "答1"], ["y", "问2", "", "答2"], ["x", "问3", "", "答3"]]
    [issue] = issues_of(write_csv(tmp_path / "kb.csv", rows))
    assert (issue.row, issue.column) == (4, "id")
    assert issue.message == "duplicate id 'x' (first used in row 2)"


def test_same_question_under_two_entries(tmp_path: Path) -> None:
    rows = [
        ["A", "怎么退货", "退款流程", "答1"],
        ["B", " 退款流程 ", "", "答2"],  # same as A's paraphrase once stripped
        ["C", "发货", "怎么退貨|ABC", "答3"],
        ["D", "abc", "", "答4"],  # casefold makes it C's paraphrase
    ]
    issues = issues_of(write_csv(tmp_path / "kb.csv", rows))
    assert where(issues) == [(3, "question"), (5, "question")]
    assert (
        issues[0].message == "entry 'B' repeats '退款流程', already a similar question of entry 'A' (row 2)"
    )
    assert "'D'" in issues[1].message and "'C' (row 4)" in issues[1].message


def test_questions_differing_in_inner_spaces_are_different(tmp_path: Path) -> None:
    """Real KBs (afqmc) hold "借呗 最高借多少" and "借呗最高借多少" as two entries."""
    rows = [["A", "借呗最高借多少", "", "答1"], ["B", "借呗 最高借多少", "", "答2"]]
    assert [e.id for e in load_kb(write_csv(tmp_path / "kb.csv", rows))] == ["A", "B"]


def test_bad_date_message(tmp_path: Path) -> None:
    rows = [[f"A{i}", f"问{i}", "", f"答{i}", "", "", "", ""] for i in range(1, 6)]
    rows.append(["A6", "问6", "", "答6", "", "", "2025-13-01", ""])  # the 6th data row is row 7
    workbook_path = write_xlsx(tmp_path / "shop.xlsx", rows)
    [issue] = issues_of(workbook_path)
    assert str(issue) == (
        "shop.xlsx row 7, column valid_to: bad date '2025-13-01' "
        "(expected YYYY-MM-DD or YYYY-MM-DD HH:MM[:SS])"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2025-06-01", datetime(2025, 6, 1, tzinfo=SH)),
        ("2025/6/1", datetime(2025, 6, 1, tzinfo=SH)),
        ("2025年6月1日", datetime(2025, 6, 1, tzinfo=SH)),
        ("2025-06-01 08:30", datetime(2025, 6, 1, 8, 30, tzinfo=SH)),
        ("2025-06-01 08:30:15", datetime(2025, 6, 1, 8, 30, 15, tzinfo=SH)),
        ("2025-06-01T08:30:15+08:00", datetime(2025, 6, 1, 8, 30, 15, tzinfo=SH)),
        ("2025-06-01T00:30:15Z", datetime(2025, 6, 1, 8, 30, 15, tzinfo=SH)),
    ],
)
def test_accepted_date_formats(text: str, expected: datetime) -> None:
    [entry] = load_kb([{"id": "A", "question": "问", "answer": "答", "valid_from": text}])
    assert entry.valid_from == expected
    assert entry.valid_from is not None and entry.valid_from.tzinfo == SH


@pytest.mark.parametrize("text", ["2025-02-30", "30/06/2025", "2025-06-01 25:00", "tomorrow", "45839"])
def test_rejected_dates(text: str) -> None:
    [issue] = issues_of([{"id": "A", "question": "问", "answer": "答", "valid_to": text}])
    assert (issue.column, issue.message.startswith(f"bad date '{text}'")) == ("valid_to", True)


def test_valid_from_after_valid_to_is_an_issue_on_valid_to() -> None:
    record = {
        "id": "A",
        "question": "问",
        "answer": "答",
        "valid_from": "2025-07-01",
        "valid_to": "2025-06-30",
    }
    [issue] = issues_of([record])
    assert (issue.row, issue.column) == (1, "valid_to")
    assert "'2025-06-30' is before valid_from '2025-07-01'" in issue.message
    # A one-day window (same date on both ends) is fine.
    record["valid_from"] = "2025-06-30"
    assert load_kb([record])[0].valid_to == END_OF_JUNE


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        *[(None, True), ("", True), ("TRUE", True), ("Yes", True), ("y", True), (1, True), ("是", True)],
        *[("否", False), ("禁用", False), ("N", False), (False, False), ("0", False), (0.0, False)],
    ],
)
def test_enabled_values(value: Any, expected: bool) -> None:
    [entry] = load_kb([{"id": "A", "question": "问", "answer": "答", "enabled": value}])
    assert entry.enabled is expected


def test_empty_kb(tmp_path: Path) -> None:
    header_only = write_csv(tmp_path / "kb.csv", [])
    empty_json = tmp_path / "kb.json"
    empty_json.write_text("[]", encoding="utf-8")
    for source in (header_only, empty_json, [], [{"id": " ", "question": ""}]):
        [issue] = issues_of(source)
        assert issue.message == "the knowledge base has no entries"


def test_unsupported_suffix(tmp_path: Path) -> None:
    path = tmp_path / "kb.txt"
    path.write_text("id,question,answer\n", encoding="utf-8")
    [issue] = issues_of(path)
    assert ".csv, .xlsx, .json, .jsonl" in issue.message and "'.txt'" in issue.message
    [legacy] = issues_of(tmp_path / "kb.xls")
    assert "save .xls workbooks as .xlsx" in legacy.message


def test_missing_file_raises_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        load_kb(tmp_path / "nope.csv")
    assert str(tmp_path / "nope.csv") in str(info.value)


def test_missing_required_column_is_one_issue(tmp_path: Path) -> None:
    rows = [["A1", "问1"], ["A2", "问2"], ["A3", "问3"]]
    [issue] = issues_of(write_csv(tmp_path / "kb.csv", rows, ["id", "question"]))
    assert (issue.row, issue.column) == (None, "answer")
    assert "required column 'answer' is missing" in issue.message and "答案" in issue.message


def test_same_column_twice_in_header_is_an_issue(tmp_path: Path) -> None:
    rows = [["A1", "问1", "问一", "答1"]]
    [issue] = issues_of(write_csv(tmp_path / "kb.csv", rows, ["id", "问题", "question", "answer"]))
    assert (issue.row, issue.column) == (1, "question")
    assert "B '问题' and C 'question'" in issue.message


def test_error_listing_is_capped_and_picklable() -> None:
    issues = issues_of([{"id": f"A{i}", "question": f"问{i}", "answer": ""} for i in range(250)])
    assert len(issues) == 250
    error = KBValidationError(issues)
    lines = str(error).splitlines()
    assert lines[0] == "250 problems in the knowledge base:"
    assert len(lines) == 202 and lines[-1].strip() == "... and 50 more"
    assert pickle.loads(pickle.dumps(error)).issues == issues


def test_long_bad_values_are_truncated() -> None:
    [issue] = issues_of([{"id": "A", "question": "问", "answer": "答", "enabled": "x" * 80}])
    assert "'" + "x" * 50 + "...'" in issue.message and "x" * 51 not in issue.message


# --------------------------------------------------------------------------- activity


def test_is_active_windows_use_beijing_time() -> None:
    entry = KBEntry(
        "A",
        "问",
        "答",
        valid_from=datetime(2025, 6, 1, tzinfo=SH),
        valid_to=END_OF_JUNE,
    )
    [loaded] = load_kb(
        [{"id": "A", "question": "问", "answer": "答", "valid_from": "2025-06-01", "valid_to": "2025-06-30"}]
    )
    assert loaded == entry
    assert not loaded.is_active(datetime(2025, 5, 31, 23, 59, 59, tzinfo=SH))
    assert loaded.is_active(datetime(2025, 6, 1, 0, 0, tzinfo=SH))
    assert loaded.is_active(datetime(2025, 6, 30, 23, 59, 59, tzinfo=SH))  # whole last day
    assert not loaded.is_active(datetime(2025, 7, 1, 0, 0, tzinfo=SH))
    # 15:59:59 UTC is 23:59:59 in Beijing, still inside; 16:00 UTC is already July 1st there.
    assert loaded.is_active(datetime(2025, 6, 30, 15, 59, 59, tzinfo=UTC))
    assert not loaded.is_active(datetime(2025, 6, 30, 16, 0, tzinfo=UTC))


def test_open_windows_and_disabled_entries() -> None:
    now = datetime(2025, 6, 15, 12, 0, tzinfo=SH)
    assert KBEntry("A", "问", "答").is_active(now)
    assert KBEntry("A", "问", "答", valid_to=END_OF_JUNE).is_active(now)
    assert not KBEntry("A", "问", "答", enabled=False).is_active(now)
    [disabled] = load_kb([{"id": "A", "question": "问", "answer": "答", "enabled": "停用"}])
    assert not disabled.is_active(now)


def test_is_active_refuses_naive_now() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        KBEntry("A", "问", "答").is_active(datetime(2025, 6, 15, 12, 0))


# --------------------------------------------------------------------------- export


ROUND_TRIP = [
    *EXPECTED,
    KBEntry(
        "007",
        "=SUM(1,2) 会被当成公式吗",
        '不会\n第二行，含逗号,和"引号"',
        ("单引号'", "1"),
        "测试",
        valid_from=datetime(2025, 3, 1, 8, 30, 15, tzinfo=SH),
        valid_to=datetime(2025, 3, 2, 0, 0, tzinfo=SH),
    ),
    KBEntry(
        "12",
        "微秒",
        "答",
        valid_from=datetime(2025, 3, 1, 8, 30, 15, 123456, tzinfo=SH),
        valid_to=datetime(2025, 3, 1, 23, 59, 59, 999999, tzinfo=SH),
        enabled=False,
    ),
]


@pytest.mark.parametrize("suffix", [".csv", ".xlsx", ".json", ".jsonl"])
def test_dump_then_load_round_trips(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"kb{suffix}"
    dump_kb(ROUND_TRIP, path)
    loaded = load_kb(path)
    assert loaded == ROUND_TRIP
    assert kb_hash(loaded) == kb_hash(ROUND_TRIP)
    dump_kb(loaded, path)  # overwriting an existing file works too
    assert load_kb(path) == ROUND_TRIP
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary files left


def test_dumped_csv_is_readable_by_chinese_excel(tmp_path: Path) -> None:
    dump_kb(EXPECTED, tmp_path / "kb.csv")
    data = (tmp_path / "kb.csv").read_bytes()
    assert data.startswith(b"\xef\xbb\xbfid,question,similar,answer,")  # BOM, canonical header
    assert ",2025-01-01,2025-06-30,true" in data.decode("utf-8-sig")  # dates stay date-only


def test_dump_rejects_unsupported_suffix(tmp_path: Path) -> None:
    with pytest.raises(KBValidationError, match=r"unsupported file type '\.txt'"):
        dump_kb(EXPECTED, tmp_path / "kb.txt")


def test_to_dict_is_json_able() -> None:
    data = EXPECTED[1].to_dict()
    assert list(data) == list(KB_COLUMNS)
    assert data["similar"] == ["什么时候发货"]
    assert data["valid_from"] == "2025-01-01T00:00:00+08:00"
    assert data["valid_to"] == "2025-06-30T23:59:59.999999+08:00"
    assert json.loads(json.dumps(data)) == data


def _question_key(text: str) -> str:
    return "".join(text.casefold().split())


# format characters (Cf: BOM, zero-width, bidi marks) are dropped by the loader, so not round-tripped
_clean_text = (
    st.text(st.characters(exclude_categories=("Cs", "Cc", "Cf")), min_size=1, max_size=12)
    .map(str.strip)
    .filter(bool)
)
# questions and paraphrases: no separator, and something the matcher can use (load_kb refuses a question
# of punctuation or emoji only, and drops such a paraphrase)
_phrase = _clean_text.filter(lambda text: "|" not in text and "｜" not in text and bool(normalize(text)))
_moments = st.datetimes(min_value=datetime(1900, 1, 2), max_value=datetime(2100, 1, 1)).map(
    lambda naive: naive.replace(tzinfo=UTC).astimezone(SH)
)


@st.composite
def kb_entries(draw: st.DrawFn) -> list[KBEntry]:
    count = draw(st.integers(min_value=1, max_value=5))
    ids = draw(st.lists(_clean_text, min_size=count, max_size=count, unique=True))
    phrases = draw(st.lists(_phrase, min_size=count, max_size=count * 3, unique_by=_question_key))
    entries = []
    for index, entry_id in enumerate(ids):
        start, end = draw(st.one_of(st.none(), _moments)), draw(st.one_of(st.none(), _moments))
        if start is not None and end is not None and start > end:
            start, end = end, start
        entries.append(
            KBEntry(
                id=entry_id,
                question=phrases[index],
                answer=draw(_clean_text),
                similar=tuple(phrases[count + index :: count]),
                category=draw(st.one_of(st.just(""), _clean_text)),
                valid_from=start,
                valid_to=end,
                enabled=draw(st.booleans()),
            )
        )
    return entries


@settings(max_examples=150, deadline=None)
@given(kb_entries())
def test_property_csv_round_trip(entries: list[KBEntry]) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "kb.csv"
        dump_kb(entries, path)
        assert load_kb(path) == entries


@settings(max_examples=150, deadline=None)
@given(kb_entries())
def test_a_saved_kb_reads_back_as_load_kb_reads_it(entries: list[KBEntry]) -> None:
    """A model's own kb.jsonl is read without validating it again, into the very entries load_kb gives."""
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "kb.jsonl"
        dump_kb(entries, path)
        assert load_saved_kb(path) == load_kb(path) == entries


def test_the_demo_kb_reads_back_alike_with_actions_and_variants(tmp_path: Path) -> None:
    demo = load_kb(Path(__file__).resolve().parent.parent / "models" / "demo-shop-kb-orders.csv")
    assert any(e.action for e in demo) and any(e.valid_to for e in demo)
    for entries in (demo, ROUND_TRIP):
        path = tmp_path / "kb.jsonl"
        dump_kb(entries, path)
        assert load_saved_kb(path) == load_kb(path) == entries


_formula_text = st.tuples(st.text("'", max_size=2), st.sampled_from("=+-@"), _phrase).map("".join)


@settings(max_examples=100, deadline=None)
@given(st.lists(_formula_text, min_size=3, max_size=3, unique=True), st.sampled_from([".csv", ".xlsx"]))
def test_property_formula_like_text_is_inert_and_round_trips(texts: list[str], suffix: str) -> None:
    """Excel runs a CSV cell starting with = + - @ as a formula: exports quote it, load_kb unquotes."""
    record = {"id": texts[0], "question": texts[1], "answer": texts[2], "similar": texts[1] + "吗"}
    [entry] = load_kb([{**record, "category": texts[2]}])
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / f"kb{suffix}"
        dump_kb([entry], path)
        assert load_kb(path) == [entry]
        if suffix == ".csv":
            rows = csv.reader(io.StringIO(path.read_text("utf-8-sig"), newline=""))
            cells = [cell for row in rows for cell in row]
            assert cells and not any(cell[:1] in ("=", "+", "-", "@", "\t", "\r") for cell in cells)
        else:
            workbook = openpyxl.load_workbook(path)
            cells = [cell for row in workbook.active.iter_rows(min_row=2) for cell in row if cell.value]
            assert all(cell.data_type == "s" for cell in cells)  # text, never a formula
            assert all(cell.quotePrefix for cell in cells[:4])  # id, question, similar, answer


def test_csv_exports_quote_formula_cells(tmp_path: Path) -> None:
    entry = KBEntry("=1+1", "@SUM(A1) 是什么", "-5元券", similar=("+86 的电话",))
    dump_kb([entry], tmp_path / "kb.csv")
    text = (tmp_path / "kb.csv").read_text("utf-8-sig")
    assert text.splitlines()[1] == "'=1+1,'@SUM(A1) 是什么,'+86 的电话,'-5元券,,,,true"
    assert load_kb(tmp_path / "kb.csv") == [entry]


PINNED_HASH = "fc2c24834c2f881c11c13ff0726ad0eb6b39704c49b96290201179753cbf3a20"


def test_kb_hash_is_stable_and_content_sensitive() -> None:
    digest = kb_hash(EXPECTED)
    assert len(digest) == 64 and digest == kb_hash(load_kb(sample_records()))
    # Pinned: the hash must not depend on the process (dict order, hash seeds, ...).
    # If KBEntry.to_dict changes on purpose, every stored index is stale: update this.
    assert digest == PINNED_HASH
    changed = [EXPECTED[0], KBEntry(**{**_fields(EXPECTED[1]), "answer": "24小时内发货"}), EXPECTED[2]]
    assert kb_hash(changed) != digest
    assert kb_hash(list(reversed(EXPECTED))) != digest  # order-sensitive


def _fields(entry: KBEntry) -> dict[str, Any]:
    return {name: getattr(entry, name) for name in KB_COLUMNS}


# --------------------------------------------------------------------------- invisible characters, sizes


def test_bom_in_the_middle_of_a_csv_never_reaches_ids_or_questions(tmp_path: Path) -> None:
    """Two exports concatenated: the second file's BOM starts a data row and sat inside its id."""
    path = tmp_path / "kb.csv"
    first = csv_text(KB_COLUMNS, SAMPLE_ROWS[:2])
    row = "\ufeffA3,\ufeff可以开发票吗\u200b,,可以开电子发票,,,,\ufeff否\r\n"
    path.write_bytes(("\ufeff" + first + row).encode("utf-8"))
    entries = load_kb(path)
    assert entries == EXPECTED
    assert all("\ufeff" not in repr(e.to_dict()) and "\u200b" not in repr(e.to_dict()) for e in entries)


def test_bom_before_the_header_of_a_later_part_and_in_jsonl_lines(tmp_path: Path) -> None:
    """A header cell with a BOM is still the header's column; a JSONL line may start with a BOM."""
    path = write_csv(tmp_path / "kb.csv", SAMPLE_ROWS, header=["\ufeffid", *KB_COLUMNS[1:]])
    assert load_kb(path) == EXPECTED
    lines = ["\ufeff" + json.dumps(record, ensure_ascii=False) for record in sample_records()]
    jsonl = tmp_path / "kb.jsonl"
    jsonl.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert load_kb(jsonl) == EXPECTED


def test_ids_and_categories_lose_every_format_character() -> None:
    entries = load_kb(
        [{"id": "\u200eA\u200d1\u202e", "question": "怎么退货", "answer": "退", "category": "售\u2066后"}]
    )
    assert (entries[0].id, entries[0].category) == ("A1", "售后")
    # an invisible-only id is blank, not an id nobody can see
    assert where(issues_of([{"id": "\ufeff\u200b", "question": "q", "answer": "a"}])) == [(1, "id")]


@pytest.mark.parametrize(
    ("column", "value", "limit"),
    [
        ("question", "问" * 2001, 2000),
        ("similar", "短的|" + "问" * 2001, 2000),
        ("answer", "答" * 20001, 20000),
        ("id", "i" * 201, 200),
        ("category", "c" * 201, 200),
    ],
)
@pytest.mark.parametrize("suffix", [".csv", ".xlsx", ".json", ".jsonl", "memory"])
def test_every_way_in_has_the_same_size_limits(
    tmp_path: Path, column: str, value: str, limit: int, suffix: str
) -> None:
    """A 20 MB JSONL answer passed while the entry API capped answers at 20,000 characters."""
    record = {**sample_records()[0], column: value}
    good = {**sample_records()[1]}
    if suffix == "memory":
        source: Any = [good, record]
    elif suffix in (".csv", ".xlsx"):
        rows = [[r[c] for c in KB_COLUMNS] for r in (good, record)]
        source = (write_csv if suffix == ".csv" else write_xlsx)(tmp_path / f"kb{suffix}", rows)
    elif suffix == ".json":
        source = tmp_path / "kb.json"
        source.write_text(json.dumps([good, record], ensure_ascii=False), encoding="utf-8")
    else:
        source = tmp_path / "kb.jsonl"
        lines = [json.dumps(r, ensure_ascii=False) for r in (good, record)]
        source.write_text("\n".join(lines), encoding="utf-8")
    issues = issues_of(source)
    row = {".csv": 3, ".xlsx": 3}.get(suffix, 2)
    assert where(issues) == [(row, column)]
    assert f"limit is {limit}" in issues[0].message
    at_limit = {**record, column: value[: limit if column != "similar" else len("短的|") + limit]}
    assert len(load_kb([good, at_limit])) == 2


def test_api_schemas_use_the_engine_limits() -> None:
    from api.web.schemas import EntryIn
    from engine.kb import FIELD_LIMITS

    fields = EntryIn.model_fields
    for column in ("question", "answer", "category"):
        assert any(getattr(m, "max_length", None) == FIELD_LIMITS[column] for m in fields[column].metadata)


# ---------------------------------------------------------------- read limits (hostile or mistaken files)


def many_entries(n: int) -> list[KBEntry]:
    return [KBEntry(f"e{i}", f"第{i}个问题", f"第{i}个答案") for i in range(n)]


@pytest.mark.parametrize("suffix", [".csv", ".xlsx", ".json", ".jsonl"])
def test_row_limit_stops_every_format(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"kb{suffix}"
    dump_kb(many_entries(30), path)
    assert len(load_kb(path, limits=ReadLimits(max_rows=31))) == 30  # header row + 30 fits
    with pytest.raises(KBTooLarge) as caught:
        load_kb(path, limits=ReadLimits(max_rows=20))
    assert caught.value.what == "rows" and caught.value.limit == 20
    sheet = "xl/worksheets/sheet1.xml" if suffix == ".xlsx" else "it"
    assert str(caught.value).startswith(f"kb{suffix}: {sheet} has more than 20 rows")


def test_xlsx_rows_are_counted_before_openpyxl_whatever_the_namespace_prefix(tmp_path: Path) -> None:
    path = tmp_path / "kb.xlsx"
    dump_kb(many_entries(30), path)
    with zipfile.ZipFile(path) as z:
        parts = {i.filename: z.read(i) for i in z.infolist()}
    sheet = parts["xl/worksheets/sheet1.xml"].decode()
    sheet = sheet.replace(
        "<worksheet ", '<x:worksheet xmlns:x="http://schemas.openxmlformats.org/spreadsheetml/2006/main" '
    )
    for tag in (
        "sheetData",
        "row",
        "c",
        "v",
        "is",
        "t",
        "dimension",
        "sheetViews",
        "sheetView",
        "selection",
        "sheetFormatPr",
        "pageMargins",
        "cols",
        "col",
        "sheetPr",
        "outlinePr",
        "pageSetUpPr",
    ):
        sheet = sheet.replace(f"<{tag}>", f"<x:{tag}>").replace(f"<{tag} ", f"<x:{tag} ")
        sheet = sheet.replace(f"</{tag}>", f"</x:{tag}>")
    sheet = sheet.replace("</worksheet>", "</x:worksheet>")
    parts["xl/worksheets/sheet1.xml"] = sheet.encode()
    with zipfile.ZipFile(path, "w") as z:
        for name, data in parts.items():
            z.writestr(name, data)
    assert len(load_kb(path)) == 30  # still a workbook openpyxl reads
    with pytest.raises(KBTooLarge, match=r"sheet1\.xml has more than 20 rows"):
        load_kb(path, limits=ReadLimits(max_rows=20))


@pytest.mark.parametrize("suffix", [".csv", ".xlsx"])
def test_cell_limit_counts_cells_as_they_stream(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"kb{suffix}"
    dump_kb(many_entries(30), path)  # 8 columns a row
    with pytest.raises(KBTooLarge) as caught:
        load_kb(path, limits=ReadLimits(max_rows=None, max_cells=100))
    assert caught.value.what == "cells" and "has more than 100 cells" in str(caught.value)


def test_xlsx_is_refused_on_its_declared_inflated_size_before_parsing(tmp_path: Path) -> None:
    from training.hostile import xlsx_bomb

    path = tmp_path / "bomb.xlsx"
    path.write_bytes(xlsx_bomb(20_000))  # ~4.7 MB of sheet XML in ~30 KB
    assert path.stat().st_size < 100_000
    with pytest.raises(KBTooLarge) as caught:
        load_kb(path, limits=ReadLimits(max_rows=None, max_cells=None, max_inflated_bytes=1_000_000))
    assert caught.value.what == "bytes" and "the workbook inflates to" in str(caught.value)


def test_xlsx_whose_headers_understate_sizes_is_a_damaged_file_not_a_bomb(tmp_path: Path) -> None:
    from training.hostile import understate_sizes, xlsx_bomb

    path = tmp_path / "liar.xlsx"
    path.write_bytes(understate_sizes(xlsx_bomb(20_000)))
    with pytest.raises(KBValidationError) as caught:
        load_kb(path, limits=ReadLimits(max_inflated_bytes=1_000_000))
    [issue] = caught.value.issues
    assert "BadZipFile" in issue.message


def test_text_file_over_the_byte_limit_is_refused_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "kb.csv"
    dump_kb(many_entries(50), path)
    with pytest.raises(KBTooLarge) as caught:
        load_kb(path, limits=ReadLimits(max_inflated_bytes=1024))
    assert caught.value.what == "bytes"


def test_deeply_nested_json_is_a_kb_issue_not_a_crash(tmp_path: Path) -> None:
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 200_000)
    with pytest.raises(KBValidationError) as caught:
        load_kb(deep)
    assert [i.message for i in caught.value.issues] == [
        "the JSON is nested too deeply to be a knowledge base (expected flat objects)"
    ]
    lines = tmp_path / "deep.jsonl"
    lines.write_text('{"id": "1", "question": "问", "answer": "答"}\n' + "[" * 200_000 + "\n")
    with pytest.raises(KBValidationError) as caught:
        load_kb(lines)
    [issue] = caught.value.issues
    assert issue.row == 2 and "nested too deeply" in issue.message


# ---------------------------------------------------------------- columns, Excel cells, sheets, matcher


def _patch_xlsx(path: Path, member: str, edit: Callable[[str], str]) -> Path:
    """Rewrite one member of a workbook (for what openpyxl does not write: cached formula errors)."""
    with zipfile.ZipFile(path) as archive:
        parts = {info.filename: archive.read(info) for info in archive.infolist()}
    parts[member] = edit(parts[member].decode("utf-8")).encode("utf-8")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in parts.items():
            archive.writestr(name, data)
    return path


@pytest.mark.parametrize(
    ("start", "end"),
    [("生效日期", "失效日期"), ("起始时间", "有效期至"), ("开始时间", "截止时间"), ("生效时间", "截止日期")],
)
def test_chinese_validity_window_headers(tmp_path: Path, start: str, end: str) -> None:
    """A validity window under its common Chinese names is read, not dropped (an expired promotion
    answered forever)."""
    header = ["编号", "问题", "答案", start, end]
    rows = [["A2", "多久发货", "48小时内发货", "2025-01-01", "2025-06-30"]]
    entries = load_kb(write_csv(tmp_path / "kb.csv", rows, header))
    assert [(e.valid_from, e.valid_to) for e in entries] == [(datetime(2025, 1, 1, tzinfo=SH), END_OF_JUNE)]
    assert entries.warnings == []


def test_numbered_paraphrase_columns_merge_into_similar_in_column_order(tmp_path: Path) -> None:
    header = ["id", "question", "相似问题2", "answer", "相似问题1", "similar_3", "Similar4", "相似问法 5"]
    rows = [["A", "怎么退货", "退货流程", "七天无理由", "如何退货", "", "退货 怎么弄|能退吗", "退货流程"]]
    entries = load_kb(write_csv(tmp_path / "kb.csv", rows, header))
    assert entries[0].similar == ("退货流程", "如何退货", "退货 怎么弄", "能退吗")
    assert entries.warnings == []
    # with the plain column too, in an .xlsx, and as JSON keys
    header = ["编号", "问题", "相似问题", "相似问题2", "相似问题3", "答案"]
    rows = [["A", "怎么退货", "如何退货|退货流程", "能退吗", 12, "七天无理由"]]
    [entry] = load_kb(write_xlsx(tmp_path / "kb.xlsx", rows, header))
    assert entry.similar == ("如何退货", "退货流程", "能退吗", "12")
    record = {"id": "A", "question": "怎么退货", "similar": ["如何退货"], "similar2": "能退吗", "answer": "x"}
    path = tmp_path / "kb.json"
    path.write_text(json.dumps([record], ensure_ascii=False), encoding="utf-8")
    assert load_kb(path)[0].similar == ("如何退货", "能退吗")


def test_two_unnumbered_paraphrase_columns_are_still_an_issue(tmp_path: Path) -> None:
    rows = [["A", "怎么退货", "如何退货", "退货流程", "x"]]
    [issue] = issues_of(
        write_csv(tmp_path / "kb.csv", rows, ["id", "question", "similar", "相似问法", "answer"])
    )
    assert (issue.row, issue.column) == (1, "similar") and "appears twice" in issue.message


def test_unknown_headers_are_warnings_naming_column_and_closest_name(tmp_path: Path) -> None:
    header = ["id", "question", "answer", "valid_until", "备注", "有效期", "", "questoin"]
    rows = [["A", "怎么退货", "七天无理由", "2025-06-30", "老客户", "x", "", "y"]]
    entries = load_kb(write_csv(tmp_path / "kb.csv", rows, header))
    assert [e.valid_to for e in entries] == [None]  # still ignored: a warning, not a guess
    assert where(entries.warnings) == [(1, "D"), (1, "E"), (1, "F"), (1, "H")]
    d, e, f, h = map(str, entries.warnings)
    assert d == (
        "kb.csv row 1, column D: 'valid_until' is not a knowledge-base column; its values are ignored "
        "(did you mean 'valid_to'?)"
    )
    assert e == "kb.csv row 1, column E: '备注' is not a knowledge-base column; its values are ignored"
    assert f.endswith("(did you mean '有效期至', i.e. valid_to?)")
    assert h.endswith("(did you mean 'question'?)")
    # the same file with a real problem: the warnings travel with the error
    rows[0][1] = ""
    with pytest.raises(KBValidationError) as caught:
        load_kb(write_csv(tmp_path / "bad.csv", rows, header))
    assert where(caught.value.warnings) == [(1, "D"), (1, "E"), (1, "F"), (1, "H")]


def test_unknown_json_keys_are_warnings(tmp_path: Path) -> None:
    records = [
        {"id": "A", "question": "怎么退货", "answer": "x", "valid_until": "2025-06-30"},
        {"id": "B", "question": "多久发货", "answer": "y", "valid_until": "2025-06-30", "remark": "n"},
    ]
    path = tmp_path / "kb.json"
    path.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    assert [str(w) for w in load_kb(path).warnings] == [
        "kb.json record 1: 'valid_until' is not a knowledge-base column; it is ignored (in 2 records) "
        "(did you mean 'valid_to'?)",
        "kb.json record 2: 'remark' is not a knowledge-base column; it is ignored (in 1 record)",
    ]
    lines = tmp_path / "kb.jsonl"
    lines.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in records), encoding="utf-8")
    assert where(load_kb(lines).warnings) == [(1, None), (2, None)]


def test_valid_kbs_load_without_warnings_and_warnings_survive_pickling(tmp_path: Path) -> None:
    for make in (_xlsx, _json, _jsonl, _csv_bytes("gbk")):
        assert load_kb(make(tmp_path)).warnings == []
    assert load_kb(sample_records()).warnings == []
    demo = load_kb(Path(__file__).resolve().parent.parent / "models" / "demo-shop-kb.csv")
    assert demo.warnings == [] and len(demo) == 90
    entries = load_kb(write_csv(tmp_path / "kb.csv", SAMPLE_ROWS, [*KB_COLUMNS[:-1], "备注"]))
    copy = pickle.loads(pickle.dumps(entries))  # uploads are parsed in a child process
    assert copy == entries and copy.warnings == entries.warnings and len(copy.warnings) == 1
    error = KBValidationError([KBIssue("kb.csv", 2, "id", "x")], entries.warnings)
    assert pickle.loads(pickle.dumps(error)).warnings == entries.warnings


@pytest.mark.parametrize("code", ["#REF!", "#N/A", "#VALUE!", "#DIV/0!", "#NAME?", "#NULL!", "#NUM!"])
def test_xlsx_excel_error_cells_are_issues(tmp_path: Path, code: str) -> None:
    rows = [["A", "怎么退货", "", code], ["B", "多久发货", code, "48小时"]]
    path = write_xlsx(tmp_path / "kb.xlsx", rows, ["id", "question", "similar", "answer"])
    issues = issues_of(path)
    assert [str(i) for i in issues] == [
        f"kb.xlsx row 2, column answer: the cell shows the Excel error {code} (a broken formula); "
        "put the text itself in the cell",
        f"kb.xlsx row 3, column similar: the cell shows the Excel error {code} (a broken formula); "
        "put the text itself in the cell",
    ]
    records, _ = read_rows(path)  # other tables (catalogs, query files) read the text as before
    assert records[0]["answer"] == code


def test_xlsx_formula_with_a_cached_error_is_an_issue(tmp_path: Path) -> None:
    path = write_xlsx(tmp_path / "kb.xlsx", [["A", "怎么退货", "x"]], ["id", "question", "answer"])

    def broken(xml: str) -> str:
        cell = re.search(r'<c r="C2"[^>]*>.*?</c>', xml)
        assert cell is not None
        return xml.replace(cell[0], '<c r="C2" t="e"><f>#REF!&amp;"元"</f><v>#REF!</v></c>')

    _patch_xlsx(path, "xl/worksheets/sheet1.xml", broken)
    [issue] = issues_of(path)
    assert (issue.row, issue.column) == (2, "answer") and "Excel error #REF!" in issue.message


def test_csv_row_with_more_cells_than_the_header_is_an_issue(tmp_path: Path) -> None:
    path = tmp_path / "kb.csv"
    path.write_text(
        "id,question,answer\n"
        "A,怎么退货,七天无理由退货,运费自理\n"  # an unquoted comma in the answer
        "B,多久发货,48小时内发货,,\n"  # trailing empty cells: accepted
        'C,能开发票吗,"可以,电子发票"\n',
        encoding="utf-8",
    )
    [issue] = issues_of(path)
    assert (issue.row, issue.column) == (2, None)
    assert issue.message.startswith("the row has 4 cells but the header has 3 columns, so '运费自理'")
    assert "comma inside a cell that is not quoted" in issue.message
    path.write_text(
        "id,question,answer,,\nA,怎么退货,七天无理由退货,,\nB,多久发货,48小时,\n", encoding="utf-8"
    )
    entries = load_kb(path)
    assert [e.answer for e in entries] == ["七天无理由退货", "48小时"] and entries.warnings == []


def test_a_quote_never_closed_is_an_issue_not_rows_lost(tmp_path: Path) -> None:
    """An opening quote with no mate made the lenient CSV reader read the rest of the file into one
    cell: three entries loaded as one whose answer held the other two rows. Now it is a problem naming
    the row and the cell; a quoted cell spanning lines, closed, still loads."""
    path = tmp_path / "kb.csv"
    path.write_text('id,question,answer\nA,保修多久,"两年\nB,怎么退货,七天\nC,运费,包邮\n', encoding="utf-8")
    [issue] = issues_of(path)
    assert (issue.row, issue.column) == (2, "answer")
    assert "never closed" in issue.message and "2 more line(s)" in issue.message
    path.write_text('id,question,answer\nA,保修多久,"两年\n全国联保"\nB,怎么退货,七天\n', encoding="utf-8")
    assert [e.answer for e in load_kb(path)] == ["两年\n全国联保", "七天"]


def test_rows_joined_by_a_stray_quote_pair_are_warned_about(tmp_path: Path) -> None:
    """A quote opened in a cell and closed by a stray quote rows later reads the rows between into that
    cell: the file loaded with entries missing and nothing said. Now a warning names the row and cell; a
    multi-line answer whose lines are not shaped like rows is not warned about."""
    path = tmp_path / "kb.csv"
    path.write_text(
        'id,question,answer\nA,保修多久,"两年\nB,怎么退货,七天\nC,运费,包邮"\nD,几天发货,当天\n',
        encoding="utf-8",
    )
    entries = load_kb(path)
    assert [e.id for e in entries] == ["A", "D"]
    [warning] = entries.warnings
    assert (warning.row, warning.column) == (2, "answer")
    assert warning.message.startswith("this cell runs over 3 lines, and 2 of them look like rows")
    assert "'B,怎么退货,七天'" in warning.message
    path.write_text(
        'id,question,answer\nA,怎么退货,"步骤如下:\n1. 进入订单,点申请售后\n2. 填写原因，提交\n3. 寄回,'
        ',"\nB,运费,包邮\n',
        encoding="utf-8",
    )
    entries = load_kb(path)
    assert [e.id for e in entries] == ["A", "B"] and entries.warnings == []


def test_read_rows_keeps_accepting_wide_rows(tmp_path: Path) -> None:
    """Catalogs and query files are read by read_rows: the width check is the KB's own."""
    path = tmp_path / "q.csv"
    path.write_text("query,expected_id\n怎么退货,A,x\n", encoding="utf-8")
    assert read_rows(path) == ([{"query": "怎么退货", "expected_id": "A"}], [2])


def _workbook(path: Path, sheets: Sequence[tuple[str, str, Sequence[Sequence[Any]]]]) -> Path:
    workbook = openpyxl.Workbook()
    workbook.remove(workbook.active)
    for title, state, rows in sheets:
        sheet = workbook.create_sheet(title)
        sheet.sheet_state = state
        for row in rows:
            sheet.append(list(row))
    workbook.save(path)
    return path


KB_SHEET = [["id", "question", "answer"], ["A", "怎么退货", "七天无理由"], ["B", "多久发货", "48小时"]]
OLD_SHEET = [["id", "question", "answer"], ["X", "旧问题", "旧答案"]]


def test_xlsx_reads_the_first_visible_sheet_and_names_it(tmp_path: Path) -> None:
    path = _workbook(
        tmp_path / "kb.xlsx",
        [("Old", "hidden", OLD_SHEET), ("KB2", "visible", KB_SHEET), ("Empty", "visible", [])],
    )
    entries = load_kb(path)
    assert [e.id for e in entries] == ["A", "B"]
    assert [str(w) for w in entries.warnings] == [
        "kb.xlsx: read sheet 'KB2', the first visible one; hidden sheets skipped: 'Old'"
    ]
    path = _workbook(tmp_path / "two.xlsx", [("KB2", "visible", KB_SHEET), ("Notes", "visible", OLD_SHEET)])
    assert [str(w) for w in load_kb(path).warnings] == [
        "two.xlsx: read sheet 'KB2', the first visible one; other sheets ignored: 'Notes'"
    ]
    # an error names rows of that sheet: the note comes with it
    bad = [*KB_SHEET, ["A", "重复", "x"]]
    path = _workbook(tmp_path / "bad.xlsx", [("KB2", "visible", bad), ("Notes", "visible", OLD_SHEET)])
    with pytest.raises(KBValidationError) as caught:
        load_kb(path)
    assert where(caught.value.issues) == [(4, "id")]
    assert "read sheet 'KB2'" in caught.value.warnings[0].message
    path = _workbook(tmp_path / "hidden.xlsx", [("KB", "visible", KB_SHEET), ("KB3", "veryHidden", KB_SHEET)])
    # openpyxl refuses to write a workbook with no visible sheet; other tools do not
    _patch_xlsx(path, "xl/workbook.xml", lambda xml: xml.replace('state="visible"', 'state="hidden"'))
    [issue] = issues_of(path)
    assert (
        issue.message
        == "every worksheet is hidden ('KB', 'KB3'); unhide the sheet that holds the knowledge base"
    )


def test_xlsx_hidden_rows_are_read_with_one_warning(tmp_path: Path) -> None:
    rows = [["id", "question", "answer"], *([f"E{i}", f"问题{i}", f"答{i}"] for i in range(1, 31))]
    workbook = openpyxl.Workbook()
    sheet = workbook.active
    sheet.title = "KB"
    for row in rows:
        sheet.append(row)
    for number in (3, *range(6, 30)):  # 25 hidden rows, all read
        sheet.row_dimensions[number].hidden = True
    path = tmp_path / "kb.xlsx"
    workbook.save(path)
    entries = load_kb(path)
    assert len(entries) == 30
    [warning] = entries.warnings
    listed = ", ".join(map(str, [3, *range(6, 25)]))
    assert warning.message == (
        f"sheet 'KB' has 25 hidden rows (hidden by a filter or by hand), read like the others: rows {listed} "
        "and 5 more; unhide them to check them, and delete any that should not be in the knowledge base"
    )


@pytest.mark.parametrize("question", ["👍👍", "？？？", "!!!", "🙂 ~~"])
def test_question_the_matcher_cannot_use_is_an_issue(tmp_path: Path, question: str) -> None:
    rows = [["A", "怎么退货", "", "x"], ["B", question, "好评怎么返现", "y"]]
    [issue] = issues_of(write_csv(tmp_path / "kb.csv", rows))
    assert str(issue) == (
        f"kb.csv row 3, column question: '{question}' has no word or character the matcher can use "
        "(only emoji, punctuation or symbols)"
    )


def test_paraphrase_the_matcher_cannot_use_is_dropped_with_a_warning(tmp_path: Path) -> None:
    rows = [["A", "怎么退货", "如何退货|👍👍|？？", "x"]]
    entries = load_kb(write_csv(tmp_path / "kb.csv", rows))
    assert entries[0].similar == ("如何退货",)
    assert [str(w) for w in entries.warnings] == [
        "kb.csv row 2, column similar: paraphrase '👍👍' has no word or character the matcher can use "
        "(only emoji, punctuation or symbols); it was dropped",
        "kb.csv row 2, column similar: paraphrase '？？' has no word or character the matcher can use "
        "(only emoji, punctuation or symbols); it was dropped",
    ]


def test_questions_the_matcher_cannot_tell_apart_are_reported_with_both_rows(tmp_path: Path) -> None:
    rows = [
        ["A", "怎么退货？", "能开发票吗", "答1"],
        ["B", "怎么退货!!", "", "答2"],  # punctuation
        ["C", "怎麼退貨", "", "答3"],  # traditional characters
        ["D", "能开发票吗😊", "", "答4"],  # emoji, against A's paraphrase
        ["E", "ＡＢＣ多少钱", "", "答5"],
        ["F", "发货", "abc多少钱", "答6"],  # full width and case
        ["G", "怎么换货", "怎么换货？|怎么换货啊", "答7"],  # within one entry: not a duplicate
    ]
    entries = load_kb(write_csv(tmp_path / "kb.csv", rows))
    assert len(entries) == 7
    assert where(entries.warnings) == [(3, "question"), (4, "question"), (5, "question"), (7, "similar")]
    assert str(entries.warnings[0]) == (
        "kb.csv row 3, column question: entry 'B' repeats '怎么退货!!' to the matcher: it is the same "
        "question as '怎么退货？', a standard question of entry 'A' (row 2), but for punctuation, emoji, "
        "width, traditional/simplified characters or case; the matcher cannot tell them apart, so merge "
        "the two entries or reword one"
    )
    assert "'能开发票吗', a similar question of entry 'A' (row 2)" in entries.warnings[2].message
    assert "entry 'F' repeats 'abc多少钱'" in entries.warnings[3].message
    assert "of entry 'E' (row 6)" in entries.warnings[3].message
