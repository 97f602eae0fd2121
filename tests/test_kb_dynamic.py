"""KB columns for conversations beyond the FAQ: action (dynamic entries), notify, answer variants."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import openpyxl
import pytest

from engine.kb import ACTIONS, KB_COLUMNS, KBEntry, KBValidationError, dump_kb, kb_hash, load_kb

HEADER = ["编号", "问题", "答案", "动作", "通知人工", "备选答案"]
ROWS: list[list[Any]] = [
    [
        "track",
        "我的快递到哪了",
        "您的订单{order.id}由{logistics.company}配送，最新：{logistics.latest}",
        "物流",
        "",
        "",
    ],
    ["refund", "退款到哪一步了", "退款{refund.amount}元，{refund.state}", "refund_status", "否", ""],
    [
        "addr",
        "能改地址吗",
        "好的，已通知同事为您修改地址",
        "",
        "是",
        "收到，马上帮您改||已记录，稍后为您修改",
    ],
]
EXPECTED = [
    KBEntry(
        "track",
        "我的快递到哪了",
        "您的订单{order.id}由{logistics.company}配送，最新：{logistics.latest}",
        action="logistics",
    ),
    KBEntry("refund", "退款到哪一步了", "退款{refund.amount}元，{refund.state}", action="refund_status"),
    KBEntry(
        "addr",
        "能改地址吗",
        "好的，已通知同事为您修改地址",
        notify=True,
        answer_variants=("收到，马上帮您改", "已记录，稍后为您修改"),
    ),
]


def write(path: Path, header: list[str], rows: list[list[Any]]) -> Path:
    if path.suffix == ".csv":
        out = io.StringIO()
        w = csv.writer(out)
        w.writerow(header)
        w.writerows(rows)
        path.write_text(out.getvalue(), encoding="utf-8")
    elif path.suffix == ".xlsx":
        wb = openpyxl.Workbook()
        wb.active.append(header)
        for r in rows:
            wb.active.append(r)
        wb.save(path)
    else:
        records = [dict(zip(header, r, strict=True)) for r in rows]
        for rec in records:  # JSON gives variants as a list
            rec["备选答案"] = [v for v in str(rec["备选答案"]).split("||") if v]
        if path.suffix == ".json":
            path.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
        else:
            path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in records), encoding="utf-8")
    return path


@pytest.mark.parametrize("suffix", [".csv", ".xlsx", ".json", ".jsonl"])
def test_new_columns_load_from_every_format_and_round_trip(tmp_path: Path, suffix: str) -> None:
    loaded = load_kb(write(tmp_path / f"kb{suffix}", HEADER, ROWS))
    assert loaded == EXPECTED
    out = tmp_path / f"out{suffix}"
    dump_kb(loaded, out)
    assert load_kb(out) == EXPECTED
    assert kb_hash(load_kb(out)) == kb_hash(EXPECTED)


@pytest.mark.parametrize("suffix", [".csv", ".xlsx", ".json", ".jsonl"])
def test_bad_values_are_row_level_issues_in_every_format(tmp_path: Path, suffix: str) -> None:
    rows = [
        ["a", "问题一", "天气{order.state}", "weather", "", ""],
        ["b", "问题二", "状态{order.stat}", "order_status", "maybe", ""],
        ["c", "问题三", "退款{refund.amount}", "", "", ""],
        ["d", "问题四", "好的", "logistics", "", "另一个{refund.state}"],
    ]
    with pytest.raises(KBValidationError) as e:
        load_kb(write(tmp_path / f"kb{suffix}", HEADER, rows))
    found = {(i.row, i.column): i.message for i in e.value.issues}
    first = 2 if suffix in (".csv", ".xlsx") else 1
    assert "unknown action 'weather'" in found[(first, "action")]
    assert all(a in found[(first, "action")] for a in ACTIONS)
    assert "unknown placeholder {order.stat}" in found[(first + 1, "answer")]
    assert "{order.state}" in found[(first + 1, "answer")]  # the allowed ones are listed
    assert "bad notify value 'maybe'" in found[(first + 1, "notify")]
    assert "no action to fill it" in found[(first + 2, "action")]
    assert "unknown placeholder {refund.state} for action logistics" in found[(first + 3, "answer_variants")]
    source = e.value.issues[0].source
    assert source == f"kb{suffix}"


def test_a_kb_without_the_new_columns_keeps_its_files_and_hash(tmp_path: Path) -> None:
    plain = [KBEntry("a", "问题", "答案")]
    assert list(plain[0].to_dict()) == list(KB_COLUMNS)
    dump_kb(plain, tmp_path / "kb.csv")
    header = (tmp_path / "kb.csv").read_text(encoding="utf-8-sig").splitlines()[0]
    assert header == ",".join(KB_COLUMNS)
    assert kb_hash(plain) != kb_hash([KBEntry("a", "问题", "答案", notify=True)])


def test_variants_are_split_on_double_bars_only_and_deduplicated() -> None:
    (e,) = load_kb([{"id": "a", "question": "q", "answer": "A", "answer_variants": "B|C｜｜A||B || D||B"}])
    assert e.answer_variants == ("B|C", "B", "D")
    assert e.answers() == ("A", "B|C", "B", "D")
    (j,) = load_kb([{"id": "a", "question": "q", "answer": "A", "answer_variants": ["X", "Y||Z"]}])
    assert j.answer_variants == ("X", "Y", "Z")


def test_literal_braces_in_answers_are_left_alone() -> None:
    (e,) = load_kb([{"id": "a", "question": "q", "answer": "格式 {如下} 与 {x}", "action": "order_status"}])
    assert e.action == "order_status"


def test_a_model_saved_with_the_new_fields_loads_them(tmp_path: Path) -> None:
    from engine import Matcher

    m = Matcher.build(EXPECTED, dense=False)
    back = Matcher.load(m.save(tmp_path / "model"))
    assert back.entries == EXPECTED
