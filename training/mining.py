"""`kefu mine`: reading message files, and measuring mining honestly.

The clustering itself and the proposals file it writes are engine.mining (the service mines a shop's log
with them too). `evaluate_mining` measures it on a labelled set: entries are hidden from the KB, their
queries sent as traffic with the rest, the unanswered ones mined, and the figures say how many hidden
entries come back as clusters, how pure the clusters are, and how much coverage at the target precision
rises on other queries once the proposals (answered by the "merchant", here with the hidden entry's
answer) are added.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from engine.kb import KBEntry, KBValidationError, read_rows
from engine.mining import BEIJING, PROPOSAL_COLUMNS, Message, Proposal, mine, proposal_rows, write_proposals
from engine.results import Decision

__all__ = [
    "BEIJING",
    "Message",
    "MessageFileError",
    "Messages",
    "MiningFigures",
    "Proposal",
    "evaluate_mining",
    "mine",
    "proposal_rows",
    "read_messages",
    "write_proposals",
]


TEXT_COLUMNS = ("text", "text_masked", "message", "query", "question", "消息", "内容", "问题")
TIME_COLUMNS = ("created_at", "time", "at", "时间")
ROW_COLUMNS = PROPOSAL_COLUMNS  # the name this module gave them


DECISION_COLUMN = "decision"
REASON_COLUMN = "reason"
FEEDBACK_COLUMNS = ("feedback", "feedback_kind", "rating")
MINED_DECISIONS = ("handoff", "clarify")  # what the bot did not answer (api/kb/mining.py mines these too)
BAD_FEEDBACK = frozenset({"down", "thumbs_down", "correction", "bad", "wrong", "差评"})


class MessageFileError(ValueError):
    pass


def as_utc(at: datetime) -> datetime:
    """A message time as naive UTC, what the service logs: a time with an offset (+08:00, Z ...) is
    converted, one without is taken as UTC already (the service's exchange-log export on SQLite)."""
    return at.astimezone(UTC).replace(tzinfo=None) if at.tzinfo is not None else at


class Messages(list[Message]):
    """The messages of a file, with what was left out of it and why (`note`, None when nothing was)."""

    note: str | None = None


def _not_a_miss() -> dict[str, str]:
    """The handoff reasons that say nothing about what the KB lacks (the service's own list), each with
    how it is counted when left out."""
    from api.dialog.conversation import REASON_HUMAN
    from api.kb.mining import NOT_A_MISS

    return {r: "asked for a person" if r == REASON_HUMAN else f"handoff: {r}" for r in NOT_A_MISS}


def read_messages(path: str | Path) -> Messages:
    """Messages from a CSV/XLSX/JSON/JSONL file (an exchange-log export, or any file with a text column
    such as text, message, query or 消息; an optional created_at/time column orders them). Times are
    kept as naive UTC, as the service logs them: a time with an offset is converted, one without is
    taken as UTC (the exchange-log export writes UTC, without an offset on SQLite).

    A file with a `decision` column (the service's exchange log, `GET /v1/shops/{shop}/exchanges`) holds
    answered messages too: only handoffs and clarifications are kept (and any row whose feedback column
    says down or correction), and of the handoffs not those that say nothing about the KB (the customer
    asked for a person, was venting, sent a picture; the bot was off; see api/kb/mining.py). What was
    left out is counted in the result's `note`."""
    file = Path(path)
    if not file.is_file():
        raise MessageFileError(f"message file not found: {file}")
    try:
        records, rows = read_rows(file)
    except KBValidationError as e:
        raise MessageFileError(f"{file}: " + "; ".join(i.message for i in e.issues)) from e
    if not records:
        raise MessageFileError(f"{file} has no messages (expected a header row with a text column)")
    keys = {str(k).strip().lower(): k for k in records[0]}
    text_key = next((keys[c] for c in TEXT_COLUMNS if c in keys), None)
    if text_key is None:
        found = ", ".join(map(str, records[0])) or "(none)"
        raise MessageFileError(
            f"{file} header row: no text column (one of {', '.join(TEXT_COLUMNS)}; found {found})"
        )
    time_key = next((keys[c] for c in TIME_COLUMNS if c in keys), None)
    decision_key = keys.get(DECISION_COLUMN)
    reason_key = keys.get(REASON_COLUMN)
    feedback_key = next((keys[c] for c in FEEDBACK_COLUMNS if c in keys), None)
    not_a_miss = _not_a_miss() if decision_key is not None else {}
    dropped: Counter[str] = Counter()
    out = Messages()
    for record, row in zip(records, rows, strict=True):
        text = str(record.get(text_key) or "").strip()
        if not text:
            continue
        why = ""
        if decision_key is not None:
            decision = str(record.get(decision_key) or "").strip().lower()
            reason = str(record.get(reason_key) or "") if reason_key is not None else ""
            feedback = str(record.get(feedback_key) or "") if feedback_key is not None else ""
            if feedback.strip().lower() in BAD_FEEDBACK:
                why = "bad feedback"
            elif decision not in MINED_DECISIONS:
                dropped[f"{decision or 'no decision'} (answered or not a question)"] += 1
                continue
            elif decision == "handoff" and (hit := next((r for r in not_a_miss if r in reason), None)):
                dropped[not_a_miss[hit]] += 1
                continue
            else:
                why = decision
        at = None
        raw = record.get(time_key) if time_key is not None else None
        if isinstance(raw, datetime):
            at = raw
        elif raw:
            try:
                at = datetime.fromisoformat(str(raw).strip())
            except ValueError:
                raise MessageFileError(f"{file} row {row}, column {time_key}: not a time: {raw!r}") from None
        out.append(Message(text, as_utc(at) if at else None, why))
    if decision_key is not None:
        kept = Counter(m.why for m in out)
        said = ", ".join(f"{n} {w}" for w, n in sorted(kept.items())) or "none"
        left = ", ".join(f"{n} {w}" for w, n in dropped.most_common()) or "none"
        out.note = (
            f"{file} is an exchange log ({DECISION_COLUMN} column): kept {len(out)} of "
            f"{len(out) + sum(dropped.values())} messages ({said}); left out: {left}"
        )
    return out


# ------------------------------------------------------------------------------------------ evaluation
@dataclass
class MiningFigures:
    hidden: int  # entries hidden from the KB
    recovered: int  # hidden entries that came back as a new-entry cluster (their queries the majority)
    clusters: int
    purity: float  # size-weighted share of each cluster's majority entry
    mined_messages: int  # traffic the bot did not answer
    before: dict[str, float | None]  # answered share and precision on held-out queries, KB without them
    after: dict[str, float | None]  # the same once the proposals are added back

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class _Renamed:
    """A matcher whose mined entries answer as the entry they stand for (for scoring only)."""

    def __init__(self, m: Any, names: dict[str, str]) -> None:
        self.m, self.names = m, names
        self.policy, self.info = m.policy, m.info

    def match(self, text: Any, top_k: int = 5) -> Any:
        r = self.m.match(text, top_k=top_k)
        rename = self.names.get
        cands = [replace(c, entry_id=rename(c.entry_id, c.entry_id)) for c in r.candidates]
        entry = rename(r.entry_id, r.entry_id) if r.entry_id else r.entry_id
        return replace(r, entry_id=entry, candidates=cands)


def evaluate_mining(
    entries: Sequence[KBEntry],
    queries: Sequence[tuple[str, str | None]],
    hide_share: float = 0.2,
    seed: int = 0,
    dense: bool = False,
    min_queries: int = 2,
    target: float = 0.9,
) -> MiningFigures:
    """Hide entries, mine the traffic the bot could not answer, add the proposals back, and measure."""
    from engine import Matcher
    from training.evaluate import evaluate

    rng = np.random.default_rng(seed)
    by_entry: dict[str | None, list[str]] = {}
    for text, gold in queries:
        by_entry.setdefault(gold, []).append(text)
    eligible = sorted(e.id for e in entries if len(by_entry.get(e.id, [])) >= min_queries)
    if not eligible:
        raise ValueError(f"no entry has {min_queries} queries or more: nothing to hide and find again")
    hidden = set(rng.choice(eligible, size=max(1, round(hide_share * len(eligible))), replace=False).tolist())
    traffic: list[tuple[str, str | None]] = []
    test: list[tuple[str, str | None]] = []
    for gold, texts in sorted(by_entry.items(), key=lambda kv: str(kv[0])):
        order = rng.permutation(len(texts))
        half = len(texts) // 2
        traffic += [(texts[i], gold) for i in order[:half]]
        test += [(texts[i], gold) for i in order[half:]]
    kept = [e for e in entries if e.id not in hidden]
    m = Matcher.build(kept, dense=dense)
    missed = [(t, g) for t, g in traffic if m.match(t).decision is not Decision.ANSWER]
    proposals = mine(m, [Message(t) for t, _ in missed])
    answers = {e.id: e for e in entries}
    recovered: set[str] = set()
    majority_total = 0
    # the merchant's review, simulated with the labels: each cluster goes to the entry that answers most
    # of it (a proposed paraphrase set for the wrong entry is moved, not accepted); clusters of one hidden
    # entry become one new entry, answered with its answer; out-of-scope clusters are dropped
    paraphrases: dict[str, list[str]] = {}
    mined: dict[str, list[str]] = {}
    for p in proposals:
        golds = Counter(missed[j][1] for j in p.members)
        gold, count = golds.most_common(1)[0]
        majority_total += count
        if gold is None:
            continue
        if gold in hidden:
            if p.kind == "new_entry" and count * 2 > len(p.members):
                recovered.add(gold)
            mined.setdefault(gold, []).extend(p.examples)
        else:
            paraphrases.setdefault(gold, []).extend(p.examples)
    grown = [replace(e, similar=(*e.similar, *dict.fromkeys(paraphrases.get(e.id, ())))) for e in kept]
    added = [
        KBEntry(f"mined-{i:03d}", texts[0], answers[gold].answer, similar=tuple(dict.fromkeys(texts[1:])))
        for i, (gold, texts) in enumerate(sorted(mined.items()), start=1)
    ]
    names = {f"mined-{i:03d}": gold for i, gold in enumerate(sorted(mined), start=1)}
    before = _figures(evaluate(m, test), target)
    after = _figures(evaluate(_Renamed(Matcher.build([*grown, *added], dense=dense), names), test), target)
    sizes = sum(len(p.members) for p in proposals)
    return MiningFigures(
        hidden=len(hidden),
        recovered=len(recovered),
        clusters=len(proposals),
        purity=majority_total / sizes if sizes else 0.0,
        mined_messages=len(missed),
        before=before,
        after=after,
    )


def _figures(report: Any, target: float) -> dict[str, float | None]:
    """Top-1, what the model's own threshold answers, and the coverage any threshold could reach at
    `target` precision on these queries (the curve's best point), which compares two models fairly."""
    from training.evaluate import precision_coverage_curve

    _, coverage, precision = precision_coverage_curve(report)
    ok = precision >= target
    return {
        "top1": report.top1,
        "answered": report.coverage,
        "precision": report.answer_precision,
        f"coverage_at_{target:g}": float(coverage[ok].max()) if ok.any() else 0.0,
    }
