"""`kefu coldstart`: a first KB, paraphrases and labelled traffic from a shop's chat history, and its
measurement on the demo shop's chat history (models/demo-chatlog.jsonl, the fake JOS fixture).

The grouping is engine.coldstart (the service runs it on the chat logs it pulled). Measured: how many of
the KB's entries a shop without a KB gets back as proposed entries, and how much a model's coverage at
its target precision changes after `kefu calibrate` on the labelled traffic the chats give (calibrated
on half the sessions, scored on the other half).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from engine.coldstart import _entry_for, cold_start, recovered
from engine.kb import KBEntry

__all__ = ["ChatFileError", "chat_pairs", "evaluate_cold_start", "read_chat_records"]


class ChatFileError(ValueError):
    pass


def read_chat_records(path: str | Path) -> list[dict[str, Any]]:
    """Chat messages as jingdong.im.pop.chatlog.get lists them, one JSON object a line (sid, customer,
    from, content, time ...); a line that is not such an object is refused with its number."""
    file = Path(path)
    if not file.is_file():
        raise ChatFileError(f"chat file not found: {file}")
    out = []
    with file.open(encoding="utf-8-sig") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ChatFileError(f"{file} line {n}: not JSON ({e.msg})") from None
            missing = [
                k for k in ("sid", "from", "content") if not isinstance(record, dict) or k not in record
            ]
            if missing:
                raise ChatFileError(f"{file} line {n}: missing {', '.join(missing)}")
            out.append(record)
    return out


def chat_pairs(records: Iterable[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """(session, customer message, the agent's next reply) in time order within each session."""
    sessions: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        sessions[str(r["sid"])].append(r)
    out = []
    for sid in sorted(sessions):
        waiting: list[str] = []
        for r in sorted(sessions[sid], key=lambda r: (str(r.get("time", "")), str(r.get("msgId", "")))):
            customer = r.get("customer")
            is_customer = r["from"] == customer if customer else r["from"] != r.get("waiter")
            if is_customer:
                waiting.append(str(r["content"]))
            elif waiting:
                out += [(sid, q, str(r["content"])) for q in waiting]
                waiting = []
    return out


def evaluate_cold_start(
    records: Sequence[dict[str, Any]], entries: Sequence[KBEntry], dense: bool = True
) -> dict[str, Any]:
    """Entries recovered without a KB, and coverage before and after calibrating on the chats' labels
    (the model as a shop serves it by default: dense channel on)."""
    from engine import Matcher
    from engine.build import recalibrate
    from training.evaluate import evaluate

    triples = chat_pairs(records)
    pairs = [(q, a) for _, q, a in triples]
    first_kb = cold_start(pairs)
    asked: dict[str, set[str]] = defaultdict(set)
    for q, a in pairs:
        if (e := _entry_for(a, entries)) is not None:
            asked[e.id].add(q)
    back = recovered(first_kb.rows, entries)
    sessions = sorted({s for s, _, _ in triples})
    calib_sessions = set(sessions[::2])
    labelled_by_half: dict[bool, list[tuple[str, str | None]]] = {True: [], False: []}
    for half in (True, False):
        half_pairs = [(q, a) for s, q, a in triples if (s in calib_sessions) == half]
        labelled_by_half[half] = cold_start(half_pairs, entries).labelled
    m = Matcher.build(list(entries), dense=dense)
    test = labelled_by_half[False]
    before = evaluate(m, [(q, e) for q, e in test])
    fit = labelled_by_half[True]
    recalibrate(m, [q for q, _ in fit], [e for _, e in fit])
    after = evaluate(m, [(q, e) for q, e in test])
    return {
        "customer_turns_with_replies": len(pairs),
        "first_kb": first_kb.figures,
        "entries_answered_in_chats": len(asked),
        "entries_asked_two_ways": sum(len(v) >= 2 for v in asked.values()),
        "recovered": len(back),
        "recovered_of_asked_two_ways": len(back & {k for k, v in asked.items() if len(v) >= 2}),
        "kb_entries": len(entries),
        "labelled_calibrate": len(fit),
        "labelled_out_of_scope": sum(e is None for _, e in fit),
        "labelled_test": len(test),
        "target_precision": m.info.get("target_precision"),
        "before": _figures(before),
        "after": _figures(after),
    }


def _figures(report: Any) -> dict[str, float | None]:
    return {
        "answered": report.coverage,
        "precision": report.answer_precision,
        "top1": report.top1,
        "out_of_scope_protected": report.oos_protected,
    }
