"""`kefu mine`: clusters of what the bot could not answer, proposed as new entries or paraphrases, in the
KB's own format; and the honest measurement (hidden entries found again)."""

from __future__ import annotations

import csv
from datetime import datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from engine import Matcher
from engine.kb import KBEntry, KBValidationError, load_kb
from training.cli import app
from training.mining import (
    Message,
    MessageFileError,
    evaluate_mining,
    mine,
    proposal_rows,
    read_messages,
    write_proposals,
)

ENGRAVING = ["能刻字吗", "电脑可以激光刻字吗", "支持定制刻字吗", "外壳上能刻个名字吗", "可以免费刻字吗"]
GIFT_WRAP = ["能帮忙包装成礼物吗", "有礼品包装吗", "可以送礼盒包装吗", "买来送人能包装一下吗"]
NOISE = ["今天天气真好", "你们老板是谁", "我想学做饭"]


def test_unanswered_messages_become_new_entries_with_their_examples(fast_matcher: Matcher) -> None:
    msgs = [Message(t) for t in [*ENGRAVING, *GIFT_WRAP, *NOISE]]
    proposals = mine(fast_matcher, msgs)
    by_size = sorted(proposals, key=lambda p: -p.size)
    engraving = next(p for p in proposals if set(p.examples) & set(ENGRAVING))
    wrap = next(p for p in proposals if set(p.examples) & set(GIFT_WRAP))
    assert engraving is not wrap and engraving.kind == wrap.kind == "new_entry"
    assert set(engraving.examples) <= set(ENGRAVING) and len(engraving.examples) >= 4
    assert set(wrap.examples) <= set(GIFT_WRAP) and len(wrap.examples) >= 3
    assert by_size[0].size >= by_size[-1].size
    assert not any(
        set(p.examples) & set(NOISE) and p.size > 1 and set(p.examples) & set(ENGRAVING) for p in proposals
    )


def test_paraphrases_of_an_existing_entry_are_proposed_for_it(fast_matcher: Matcher) -> None:
    # phrasings of "can I pay by instalments" the demo KB does not hold, close enough to be offered
    msgs = [
        Message(t) for t in ["白条能分几期呀", "能用白条分期付吗", "白条分期可以吗亲", "可以白条分三期吗"]
    ]
    (p,) = [p for p in mine(fast_matcher, msgs) if p.size >= 3]
    assert p.kind == "paraphrases" and p.entry_id is not None
    assert fast_matcher.entries[fast_matcher._index[p.entry_id]].category  # an entry of the KB


def test_proposals_go_back_into_the_kb_format(fast_matcher: Matcher, tmp_path: Path) -> None:
    msgs = [Message(t) for t in [*ENGRAVING, "白条能分几期呀", "能用白条分期付吗", "白条分期可以吗亲"]]
    rows = proposal_rows(mine(fast_matcher, msgs), fast_matcher.entries)
    for suffix in (".csv", ".xlsx"):
        path = write_proposals(rows, tmp_path / f"proposals{suffix}")
        with pytest.raises(KBValidationError) as err:
            load_kb(path)  # a new entry has no answer yet: the merchant writes it
        new_rows = [i + 2 for i, r in enumerate(rows) if r["proposal"] == "new_entry"]
        assert {i.row for i in err.value.issues} == set(new_rows)
        assert all(i.column == "answer" for i in err.value.issues)
    with (tmp_path / "proposals.csv").open(encoding="utf-8-sig") as f:
        table = list(csv.DictReader(f))
    for r in table:
        if r["proposal"] == "new_entry":
            r["answer"] = "支持激光刻字，下单时备注内容即可。"
    with (tmp_path / "answered.csv").open("w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(table[0]))
        w.writeheader()
        w.writerows(table)
    loaded = load_kb(tmp_path / "answered.csv")  # the extra columns are ignored
    assert {e.id for e in loaded} == {r["id"] for r in table}


def test_control_characters_of_logged_messages_do_not_break_the_xlsx(tmp_path: Path) -> None:
    """Was a 500 on GET kb/mining?format=xlsx (found by tests/test_schemathesis.py): openpyxl refuses
    control characters, which a customer's message may carry into a proposal."""
    import openpyxl

    row = {"id": "mined-1", "question": "能刻字吗\x1f\x7f", "similar": "刻\x01字", "proposal": "new_entry"}
    path = write_proposals([row], tmp_path / "proposals.xlsx")
    sheet = openpyxl.load_workbook(path).active
    assert sheet is not None
    values = [[c.value for c in r] for r in sheet.iter_rows()]
    assert values[1][:3] == ["mined-1", "能刻字吗\x7f", "刻字"]  # DEL is stored; C0 controls are dropped


def test_message_files_are_read_with_clear_errors(tmp_path: Path) -> None:
    good = tmp_path / "log.csv"
    good.write_text("created_at,text_masked\n2026-11-30T10:00:00,能刻字吗\n2026-11-30T11:00:00,\n", "utf-8")
    (msg,) = read_messages(good)
    assert msg.text == "能刻字吗" and msg.at is not None and msg.at.hour == 10
    bad = tmp_path / "bad.csv"
    bad.write_text("foo,bar\n1,2\n", "utf-8")
    with pytest.raises(MessageFileError, match="no text column"):
        read_messages(bad)
    when = tmp_path / "when.csv"
    when.write_text("time,text\nyesterday,能刻字吗\n", "utf-8")
    with pytest.raises(MessageFileError, match="row 2, column time"):
        read_messages(when)


def test_kefu_mine_writes_proposals(tmp_path: Path, fast_matcher: Matcher) -> None:
    model = fast_matcher.save(tmp_path / "model")
    log = tmp_path / "log.csv"
    log.write_text("text\n" + "\n".join([*ENGRAVING, *GIFT_WRAP]) + "\n", "utf-8")
    out = tmp_path / "p.xlsx"
    result = CliRunner().invoke(app, ["mine", str(model), str(log), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "new entries" in result.output and out.is_file()
    missing = CliRunner().invoke(app, ["mine", str(model)])
    assert missing.exit_code != 0 and "message file" in missing.output


@pytest.mark.parametrize(
    "latest",
    [
        "2026-11-29T18:30:00",  # the service's log: naive UTC (the exchange export on SQLite)
        "2026-11-29T18:30:00.250000",
        "2026-11-29T18:30:00+00:00",  # the export on PostgreSQL
        "2026-11-29T18:30:00Z",
        "2026-11-30T02:30:00+08:00",  # a file written in Beijing time, with its offset
    ],
)
def test_kefu_mine_writes_last_seen_in_beijing_time_with_its_offset(
    tmp_path: Path, fast_matcher: Matcher, latest: str
) -> None:
    """Was: 2026-11-29T18:30:00, the logged naive UTC time written as it is, which a merchant reads as
    Beijing time (8 hours early); an offset in the file was dropped, not converted."""
    model = fast_matcher.save(tmp_path / "model")
    times = [
        "2026-11-29T10:00:00",
        "2026-11-29T12:00:00",
        latest,
        "2026-11-28T09:00:00",
        "2026-11-29T01:00:00",
    ]
    log = tmp_path / "log.csv"
    log.write_text(
        "created_at,text\n" + "".join(f"{t},{q}\n" for t, q in zip(times, ENGRAVING, strict=True)), "utf-8"
    )
    out = tmp_path / "p.csv"
    result = CliRunner().invoke(app, ["mine", str(model), str(log), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "Beijing time, +08:00" in " ".join(result.output.split())
    with out.open(encoding="utf-8-sig") as f:
        (row,) = [r for r in csv.DictReader(f) if set(r["similar"].split("|")) & set(ENGRAVING)]
    assert row["last_seen"] == "2026-11-30T02:30:00+08:00"


def test_message_times_are_read_as_naive_utc(tmp_path: Path) -> None:
    log = tmp_path / "log.csv"
    log.write_text("time,text\n2026-11-30T02:30:00+08:00,能刻字吗\n2026-11-29T18:30:00,可以刻字吗\n", "utf-8")
    assert [m.at for m in read_messages(log)] == [datetime(2026, 11, 29, 18, 30)] * 2


def test_hidden_entries_are_found_again(smp2017: Path) -> None:
    from training.evaluate import read_queries

    f = evaluate_mining(load_kb(smp2017 / "kb.csv"), read_queries(smp2017 / "queries.csv")[:1500])
    assert f.hidden >= 3 and f.recovered >= f.hidden // 2
    assert f.purity >= 0.7
    assert f.after["top1"] is not None and f.before["top1"] is not None
    assert f.after["top1"] > f.before["top1"]
    assert f.after["coverage_at_0.9"] > f.before["coverage_at_0.9"]  # type: ignore[operator]


@pytest.fixture
def smp2017() -> Path:
    from tests.conftest import shared_set

    return shared_set("smp2017")


def _shop_kb(tmp_path: Path) -> Path:
    """The demo KB with a lookup entry (action, placeholder) and a promotion with a validity window."""
    from dataclasses import replace
    from datetime import datetime

    from engine.kb import SHANGHAI, dump_kb

    entries = [
        replace(
            e, action="logistics", answer="亲，您的包裹由{logistics.company}配送，最新：{logistics.latest}"
        )
        if e.id == "tracking"
        else e
        for e in load_kb(Path(__file__).resolve().parent.parent / "models" / "demo-shop-kb.csv")
    ]
    window = (datetime(2026, 11, 1, tzinfo=SHANGHAI), datetime(2026, 11, 11, 23, 59, 59, 999999, SHANGHAI))
    entries.append(
        KBEntry(
            "promo-1111",
            "双十一有什么优惠",
            "双十一全场满1000减100。",
            similar=("双11活动",),
            valid_from=window[0],
            valid_to=window[1],
            notify=True,
            answer_variants=("11.11 满1000减100哦。",),
        )
    )
    path = tmp_path / "kb.csv"
    dump_kb(entries, path)
    return path


def test_paraphrase_rows_are_the_whole_entry_and_merge_back(tmp_path: Path) -> None:
    """README: paste a paraphrase row over its entry and upload; the action, the validity window,
    notify and the answer variants come along, and the entry's own question is no new paraphrase."""
    from engine.mining import KB_FILE_COLUMNS, Proposal

    kb = _shop_kb(tmp_path)
    m = Matcher.build(kb, dense=False)
    proposals = [
        Proposal(
            "paraphrases",
            "我的快递到哪了",
            ["我的快递到哪了", "快递到哪儿了呀", "查一下物流"],
            3,
            None,
            "tracking",
        ),
        Proposal(
            "paraphrases", "双十一有什么优惠", ["双十一有啥优惠", "双十一有什么优惠！"], 2, None, "promo-1111"
        ),
    ]
    rows = proposal_rows(proposals, m.entries)
    assert rows[0]["new_paraphrases"] == "快递到哪儿了呀"  # not the question, not a paraphrase it has
    assert rows[1]["new_paraphrases"] == "双十一有啥优惠"  # the question with a "！" normalizes to it
    assert rows[0]["action"] == "logistics" and rows[1]["valid_to"] and rows[1]["notify"] == "true"
    for suffix in (".csv", ".xlsx"):
        proposals_path = write_proposals(rows, tmp_path / f"proposals{suffix}")
        mined = {e.id: e for e in load_kb(proposals_path)}  # the review columns are ignored
        before = {e.id: e for e in load_kb(kb)}
        merged = [mined.get(i, e) for i, e in before.items()]  # each paraphrase row replaces its entry
        out = tmp_path / f"merged{suffix}"
        from engine.kb import dump_kb

        dump_kb(merged, out)
        back = {e.id: e for e in Matcher.build(out, dense=False).entries}
        tracking, promo = back["tracking"], back["promo-1111"]
        assert tracking.action == "logistics" and "{logistics.company}" in tracking.answer
        assert tracking.similar == (*before["tracking"].similar, "快递到哪儿了呀")
        assert tracking.question not in tracking.similar
        assert (promo.valid_from, promo.valid_to) == (
            before["promo-1111"].valid_from,
            before["promo-1111"].valid_to,
        )
        assert promo.notify and promo.answer_variants == before["promo-1111"].answer_variants
        assert promo.similar == ("双11活动", "双十一有啥优惠")
    with (tmp_path / "proposals.csv").open(encoding="utf-8-sig") as f:
        header = next(csv.reader(f))
    assert tuple(header[: len(KB_FILE_COLUMNS)]) == KB_FILE_COLUMNS


def test_messages_that_are_kb_questions_are_not_mined(fast_matcher: Matcher) -> None:
    question = fast_matcher.entries[0].question
    paraphrase = next(s for e in fast_matcher.entries for s in e.similar)
    msgs = [Message(t) for t in [question, f" {question}！", paraphrase, paraphrase, *ENGRAVING]]
    for p in mine(fast_matcher, msgs):
        assert not {question, f" {question}！", paraphrase} & set(p.examples)


def test_an_exchange_log_export_is_mined_for_what_was_not_answered(tmp_path: Path) -> None:
    """`GET /v1/shops/{shop}/exchanges` holds answered messages too: only handoffs and clarifications
    are mined, not a customer's request for a person (nor answered messages)."""
    import json

    from api.dialog.conversation import REASON_CANNOT_ANSWER, REASON_HUMAN

    def ex(i: int, text: str, decision: str, reason: str) -> dict[str, object]:
        return {
            "id": i,
            "conversation_id": "c",
            "channel": "jd",
            "text": text,
            "decision": decision,
            "entry_id": None,
            "confidence": 0.1,
            "reason": reason,
            "model_version": 1,
            "latency_ms": 1.0,
            "created_at": f"2026-11-30T10:00:0{i}",
        }

    log = tmp_path / "exchanges.json"
    log.write_text(
        json.dumps(
            [
                ex(1, "客服几点上班", "answer", "confident"),
                ex(2, "能刻字吗", "handoff", f"{REASON_CANNOT_ANSWER} low confidence"),
                ex(3, "转人工", "handoff", REASON_HUMAN),
                ex(4, "能包装成礼物吗", "clarify", "two entries close"),
                ex(5, "你好", "smalltalk", "greeting"),
            ],
            ensure_ascii=False,
        ),
        "utf-8",
    )
    msgs = read_messages(log)
    assert [(m.text, m.why) for m in msgs] == [("能刻字吗", "handoff"), ("能包装成礼物吗", "clarify")]
    assert msgs.note is not None and "kept 2 of 5" in msgs.note and "1 asked for a person" in msgs.note
    plain = tmp_path / "plain.csv"
    plain.write_text("text\n能刻字吗\n", "utf-8")
    assert read_messages(plain).note is None  # any other file: every message, as before


def test_kefu_mine_says_what_it_kept_of_an_exchange_log(tmp_path: Path, fast_matcher: Matcher) -> None:
    model = fast_matcher.save(tmp_path / "model")
    log = tmp_path / "log.csv"
    rows = [f"{t},handoff,bot cannot answer: low" for t in [*ENGRAVING, *GIFT_WRAP]]
    log.write_text("text,decision,reason\n" + "\n".join([*rows, "保修多久,answer,ok"]) + "\n", "utf-8")
    result = CliRunner().invoke(app, ["mine", str(model), str(log), "-o", str(tmp_path / "p.csv")])
    assert result.exit_code == 0, result.output
    assert f"kept {len(rows)} of {len(rows) + 1} messages" in " ".join(result.output.split())


def test_mined_xlsx_cells_read_back_unchanged(tmp_path: Path) -> None:
    """As the KB export: text cells stored as they are (quote-prefixed, no visible apostrophe), numbers
    as numbers."""
    import openpyxl

    row = {
        "id": "mined-001",
        "question": "=能开收据吗",
        "similar": "+1能开吗|-开票|@客服",
        "answer": "可以",
        "proposal": "new_entry",
        "cluster_size": "3",
    }
    path = write_proposals([row], tmp_path / "proposals.xlsx")
    (entry,) = load_kb(path)
    assert entry.question == "=能开收据吗" and entry.similar == ("+1能开吗", "-开票", "@客服")
    sheet = openpyxl.load_workbook(path).active
    assert sheet is not None
    header = [c.value for c in sheet[1]]
    cells = {h: c for h, c in zip(header, sheet[2], strict=True)}
    assert cells["question"].value == "=能开收据吗" and cells["question"].data_type == "s"
    assert cells["question"].quotePrefix
    assert cells["cluster_size"].value == 3


def test_proposal_rows_give_last_seen_in_beijing_time_for_the_service_too() -> None:
    """engine.mining writes the rows of both `kefu mine` and the service's mining file: a logged time
    (naive UTC, or aware in any zone) comes out as Beijing time with its offset."""
    from datetime import UTC, datetime, timedelta, timezone

    from engine.mining import Proposal

    for at in (
        datetime(2026, 11, 29, 18, 30, 5, 999),
        datetime(2026, 11, 29, 18, 30, 5, tzinfo=UTC),
        datetime(2026, 11, 29, 13, 30, 5, tzinfo=timezone(timedelta(hours=-5))),
    ):
        row = Proposal("new_entry", "能开专票吗", ["能开专票吗"], 1, at).to_row(1, {})
        assert row["last_seen"] == "2026-11-30T02:30:05+08:00", at
    assert Proposal("new_entry", "能开专票吗", [], 1, None).to_row(1, {})["last_seen"] == ""
