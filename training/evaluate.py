"""Offline evaluation of a Matcher on labelled queries: ranking quality, decisions, latency.

The ranking figures (top-1, MRR, recall@5) say whether the right entry is found at all; the decision
figures say what customers would actually see (an answer, a clarify list or a human agent). The
per-query (confidence, correct) pairs give the precision/coverage trade-off behind the answer threshold.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

# read_table: the reader behind engine.kb.read_rows, for what read_rows does not return (the header
# row's number, the CSV rows wider than their header); ExcelError: a #N/A cell
from engine.kb import NO_LIMITS, ExcelError, KBIssue, read_table
from engine.results import Decision, MatchResult
from training.plots import plot_format, save_figure

__all__ = [
    "EvalReport",
    "QueryFileError",
    "QueryOutcome",
    "evaluate",
    "operating_point_label",
    "plot_precision_coverage",
    "precision_coverage_curve",
    "read_labelled",
    "read_queries",
    "split_known",
    "threshold_cell",
    "threshold_text",
    "unknown_ids_message",
    "without_unknown",
]

QUERY_COLUMNS = ("query", "expected_id")
QUERY_HEADER = ",".join(QUERY_COLUMNS)
RECALL_AT = 5
LISTED_ISSUES = 20  # problems of a query file listed in its error (the count says how many in all)
NEVER = 1.0  # a threshold above this is the engine's "never answer on confidence" (engine.decide)
# what people name the two columns instead: the error says which column to rename (never guessed, so a
# notes column is not scored as the expected ids)
COLUMN_ALIASES = {
    "query": (
        "question",
        "questions",
        "text",
        "message",
        "msg",
        "utterance",
        "sentence",
        "content",
        "queries",
        "q",
        "问题",
        "问句",
        "用户问题",
        "消息",
        "内容",
        "文本",
    ),
    "expected_id": (
        "expected",
        "expected id",
        "expected-id",
        "expectedid",
        "expected_entry",
        "id",
        "entry",
        "entry_id",
        "entry id",
        "label",
        "intent",
        "intent_id",
        "answer_id",
        "gold",
        "target",
        "标签",
        "意图",
        "条目id",
        "答案id",
        "标准问id",
    ),
}

EvalProgress = Callable[[int, int], None]  # (queries done, total)


class QueryFileError(ValueError):
    """A query file that cannot be used, with every problem found in it, each a KBIssue located as the
    file's user sees it (file, row as the spreadsheet numbers it: the header is row 1, column), so the
    file can be fixed in one pass."""

    def __init__(self, path: str | os.PathLike[str], issues: Iterable[KBIssue]) -> None:
        self.path = str(path)
        self.issues = list(issues)
        super().__init__(self.path, self.issues)  # the arguments of __init__: picklable

    def __str__(self) -> str:
        count = len(self.issues)
        if count == 1:
            return str(self.issues[0])
        lines = [f"{count} problems in the query file {self.path}:"]
        lines += [f"  {issue}" for issue in self.issues[:LISTED_ISSUES]]
        if count > LISTED_ISSUES:
            lines.append(f"  ... and {count - LISTED_ISSUES} more")
        return "\n".join(lines)


class SupportsMatch(Protocol):
    """What evaluation needs of a matcher: only `match` (so any matcher-like object can be scored)."""

    def match(self, text: Any, top_k: int = ...) -> MatchResult: ...


# --------------------------------------------------------------------------- reading


def read_queries(path: str | os.PathLike[str]) -> list[tuple[str, str | None]]:
    """(query, expected_id) pairs from a CSV (or xlsx) file; an empty expected_id means out of scope."""
    return [(query, expected) for _, query, expected in read_labelled(path)]


def read_labelled(path: str | os.PathLike[str]) -> list[tuple[int, str, str | None]]:
    """(row, query, expected_id) from a CSV (or xlsx) file, row as the spreadsheet numbers it.

    Reading goes through the KB reader (engine.kb) so query files get the same encoding handling as KBs
    (UTF-8 with or without BOM, GB18030 from Chinese Excel), the same row numbers, the same unquoting of
    formula-like cells (engine.cells) and the same problems: an undecodable file, a CSV row wider than its
    header (an unquoted comma inside a cell). Anything that would make the evaluation score something
    else than the file means (a missing or misnamed column, a blank query, such a row, an Excel error
    value for a query) raises QueryFileError listing every problem, before anything is evaluated.
    """
    file = Path(path)
    source = str(file)
    if not file.is_file():
        what = "is a directory, not a query file" if file.is_dir() else "query file not found"
        raise QueryFileError(file, [KBIssue(source, None, None, what)])
    table = read_table(file, source, NO_LIMITS)
    if table.issues:  # the file cannot be read as a table at all (encoding, type, broken CSV)
        raise QueryFileError(file, table.issues)
    header = (
        [name for _, name in table.header]
        if table.header_row is not None
        else list(dict.fromkeys(str(key) for record in table.records for key in record))
    )
    if not header:
        raise QueryFileError(
            file, [KBIssue(source, None, None, f"the file is empty; expected a header row '{QUERY_HEADER}'")]
        )
    columns, issues = _find_columns(source, table.header_row, header)
    issues += table.kb_issues  # rows wider than the header: cells would be lost
    pairs: list[tuple[int, str, str | None]] = []
    if columns is not None:
        query_key, expected_key = columns
        for record, row in zip(table.records, table.rows, strict=True):
            cell = record.get(query_key)
            query = _cell_text(cell)
            if isinstance(cell, ExcelError):
                message = (
                    f"the cell holds the Excel error {cell}, not a customer message; fix the formula or "
                    "paste the values"
                )
                issues.append(KBIssue(source, row, query_key, message))
            elif not query:
                message = "the query is blank; write the customer's message in it or delete the row"
                issues.append(KBIssue(source, row, query_key, message))
            else:
                pairs.append((row, query, _cell_text(record.get(expected_key)) or None))
        if not issues and not pairs:
            message = f"no queries: only the header row '{QUERY_HEADER}'; add one query per row below it"
            issues.append(KBIssue(source, None, None, message))
    if issues:
        issues.sort(key=lambda issue: issue.row or 0)
        raise QueryFileError(file, issues)
    return pairs


def _find_columns(
    source: str, header_row: int | None, header: list[str]
) -> tuple[tuple[str, str] | None, list[KBIssue]]:
    """The file's own header for each required column (matched case-insensitively), or the issues of
    the columns that are missing, each saying which column to rename when one looks like it."""
    by_key = {name.strip().lower(): name for name in reversed(header)}  # the first of equal names
    found = [by_key.get(column) for column in QUERY_COLUMNS]
    if found[0] is not None and found[1] is not None:
        return (found[0], found[1]), []
    taken = {name for name in found if name is not None}
    issues: list[KBIssue] = []
    for column, name in zip(QUERY_COLUMNS, found, strict=True):
        if name is not None:
            continue
        alike = [h for h in header if h not in taken and h.strip().lower() in COLUMN_ALIASES[column]]
        if alike:
            taken.add(alike[0])
            message = (
                f"no {column} column; if column '{alike[0]}' holds {_MEANING[column]}, rename it "
                f"{column} (the header row needs the columns {QUERY_HEADER})"
            )
        else:
            shown = ", ".join(f"'{h}'" for h in header)
            message = (
                f"no {column} column (the header row has {shown}); the first row must be the header "
                f"{QUERY_HEADER}, with {_MEANING[column]} in {column}"
            )
        issues.append(KBIssue(source, header_row, None, message))
    return None, issues


_MEANING = {
    "query": "the customer messages",
    "expected_id": "the id of the KB entry that answers each message (blank: out of scope)",
}


UNKNOWN_LISTED = 10  # rows named in the warning about expected ids the model does not know


def split_known(
    rows: Sequence[tuple[int, str, str | None]], known: Collection[str]
) -> tuple[list[tuple[str, str | None]], list[tuple[int, str]]]:
    """The (query, expected_id) pairs that can be scored against a model whose KB has the entries
    `known` (out-of-scope rows included), and the (row, expected_id) of those whose expected_id is not
    one of them (an entry deleted since, a typo, another version's feedback): they cannot be scored."""
    pairs = [(query, expected) for _, query, expected in rows if not expected or expected in known]
    unknown = [(row, expected) for row, _, expected in rows if expected and expected not in known]
    return pairs, unknown


def unknown_ids_message(unknown: Sequence[tuple[int, str]], source: str) -> str:
    """The warning for rows left out by split_known: how many, and the first rows and their ids."""
    listed = ", ".join(f"row {row} ({expected!r})" for row, expected in unknown[:UNKNOWN_LISTED])
    more = f" and {len(unknown) - UNKNOWN_LISTED} more" if len(unknown) > UNKNOWN_LISTED else ""
    return (
        f"skipped {len(unknown)} row{'s' if len(unknown) > 1 else ''} of {source} whose expected_id is "
        f"not an entry of the model's KB: {listed}{more}"
    )


def _cell_text(value: Any) -> str:
    """A cell as stripped text; Excel turns an id typed as 12 into 12.0."""
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


# --------------------------------------------------------------------------- evaluation


@dataclass(slots=True)
class QueryOutcome:
    """What happened to one query, kept so a report can be inspected query by query."""

    query: str
    expected_id: str | None
    decision: str
    entry_id: str | None
    confidence: float
    rank: int | None  # 1-based rank of the expected entry among the candidates; None if absent or OOS
    latency_ms: float

    @property
    def correct(self) -> bool:
        """The best entry is the expected one (always False for an out-of-scope query)."""
        return self.expected_id is not None and self.entry_id == self.expected_id


@dataclass
class EvalReport:
    """Evaluation figures; shares are fractions in [0, 1], None when their denominator is empty."""

    n_queries: int
    n_in_scope: int
    n_out_of_scope: int
    top_k: int
    top1: float | None
    mrr: float | None
    recall_at_5: float | None
    coverage: float
    answer_precision: float | None
    clarify_share: float
    handoff_share: float
    oos_protected: float | None  # out-of-scope queries handed off or clarified, not answered
    latency_p50_ms: float
    latency_p99_ms: float
    t_answer: float | None = None
    target_precision: float | None = None
    outcomes: list[QueryOutcome] = field(default_factory=list, repr=False)

    @property
    def pairs(self) -> list[tuple[float, bool]]:
        """Per-query (confidence, correct): the raw material of the precision/coverage curve."""
        return [(o.confidence, o.correct) for o in self.outcomes]

    def metrics(self) -> dict[str, Any]:
        """The summary figures only (no per-query detail)."""
        d = asdict(self)
        d.pop("outcomes")
        return d

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form: the figures plus every query's outcome."""
        d = self.metrics()
        d["queries"] = [{**asdict(o), "correct": o.correct} for o in self.outcomes]
        return d


def evaluate(
    matcher: SupportsMatch,
    queries: Sequence[tuple[str, str | None]],
    top_k: int = 10,
    progress: EvalProgress | None = None,
) -> EvalReport:
    """Match every query once and score the results.

    Each query is matched with at least RECALL_AT candidates so recall@5 is always measurable; MRR
    counts an expected entry outside that candidate list as reciprocal rank 0.
    """
    if not queries:
        raise ValueError("no queries to evaluate")
    k = max(int(top_k), RECALL_AT)
    outcomes: list[QueryOutcome] = []
    for i, (text, expected) in enumerate(queries, start=1):
        outcomes.append(_run_one(matcher, text, expected, k))
        if progress is not None:
            progress(i, len(queries))
    policy = getattr(matcher, "policy", None)
    info = getattr(matcher, "info", None)
    return _summarize(
        outcomes,
        k,
        t_answer=getattr(policy, "t_answer", None),
        target_precision=_target_precision(info),
    )


def without_unknown(report: EvalReport, known: Collection[str]) -> tuple[EvalReport, list[str]]:
    """The report scored again without the queries whose expected id is not in `known` (they could
    never be matched, so they would count as wrong answers), and those ids, sorted."""
    kept = [o for o in report.outcomes if o.expected_id is None or o.expected_id in known]
    unknown = sorted({o.expected_id for o in report.outcomes if o.expected_id and o.expected_id not in known})
    if not unknown:
        return report, []
    if not kept:
        raise ValueError(f"no query left to score: every expected id is unknown ({', '.join(unknown[:10])})")
    return _summarize(kept, report.top_k, report.t_answer, report.target_precision), unknown


def _target_precision(info: Any) -> float | None:
    """The target the thresholds in force were chosen for: a recalibration's, else the build's."""
    if not isinstance(info, dict):
        return None
    logs = info.get("calibration_logs") or {}
    return logs.get("target_precision", info.get("target_precision"))


def _run_one(matcher: SupportsMatch, text: str, expected: str | None, k: int) -> QueryOutcome:
    start = time.perf_counter()
    result = matcher.match(text, top_k=k)
    latency_ms = (time.perf_counter() - start) * 1000.0
    ids = [c.entry_id for c in result.candidates]
    rank = ids.index(expected) + 1 if expected is not None and expected in ids else None
    return QueryOutcome(
        query=text,
        expected_id=expected,
        decision=Decision(result.decision).value,
        entry_id=result.entry_id,
        confidence=float(result.confidence),
        rank=rank,
        latency_ms=latency_ms,
    )


def _share(hits: int, total: int) -> float | None:
    return hits / total if total else None


def _summarize(
    outcomes: list[QueryOutcome], k: int, t_answer: float | None, target_precision: float | None
) -> EvalReport:
    n = len(outcomes)
    inside = [o for o in outcomes if o.expected_id is not None]
    outside = [o for o in outcomes if o.expected_id is None]
    answered = [o for o in outcomes if o.decision == Decision.ANSWER.value]
    ranks = [o.rank for o in inside]
    latencies = np.array([o.latency_ms for o in outcomes])
    return EvalReport(
        n_queries=n,
        n_in_scope=len(inside),
        n_out_of_scope=len(outside),
        top_k=k,
        top1=_share(sum(r == 1 for r in ranks), len(inside)),
        mrr=sum(1.0 / r for r in ranks if r) / len(inside) if inside else None,
        recall_at_5=_share(sum(r is not None and r <= RECALL_AT for r in ranks), len(inside)),
        coverage=len(answered) / n,
        answer_precision=_share(sum(o.correct for o in answered), len(answered)),
        clarify_share=sum(o.decision == Decision.CLARIFY.value for o in outcomes) / n,
        handoff_share=sum(o.decision == Decision.HANDOFF.value for o in outcomes) / n,
        oos_protected=_share(sum(o.decision != Decision.ANSWER.value for o in outside), len(outside)),
        latency_p50_ms=float(np.percentile(latencies, 50)),
        latency_p99_ms=float(np.percentile(latencies, 99)),
        t_answer=t_answer,
        target_precision=target_precision,
        outcomes=outcomes,
    )


# --------------------------------------------------------------------------- precision / coverage


def precision_coverage_curve(report: EvalReport) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(thresholds, coverage, precision), one point per distinct confidence, highest threshold first.

    At threshold t every query with confidence >= t would be answered: coverage is their share of all
    queries, precision the share of them whose best entry is the expected one (out of scope: wrong).
    """
    if not report.outcomes:
        empty = np.empty(0)
        return empty, empty, empty
    conf = np.array([c for c, _ in report.pairs], float)
    correct = np.array([ok for _, ok in report.pairs], float)
    order = np.argsort(-conf, kind="stable")
    conf, correct = conf[order], correct[order]
    answered = np.arange(1, conf.size + 1)
    right = np.cumsum(correct)
    # with ties, a threshold answers every query of equal confidence: keep the last of each run
    last = np.r_[conf[1:] != conf[:-1], True]
    return conf[last], answered[last] / conf.size, right[last] / answered[last]


def plot_precision_coverage(report: EvalReport, path: str | os.PathLike[str]) -> Path:
    """Save the precision/coverage curve with the model's actual answer operating point marked, as PNG,
    SVG or PDF by the suffix of `path` (ValueError for another, before anything is drawn)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    plot_format(path)
    _, coverage, precision = precision_coverage_curve(report)
    fig = Figure(figsize=(6.4, 4.8), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(coverage, precision, marker=".", label="answer if confidence ≥ t")
    if report.target_precision is not None:
        ax.axhline(report.target_precision, color="grey", linestyle=":", label="target precision")
    _mark_operating_point(ax, report)
    ax.set_xlim(0.0, 1.02)
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel("coverage (share of queries answered)")
    ax.set_ylabel("answer precision")
    ax.set_title(f"Precision / coverage on {report.n_queries} queries")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower left")
    return save_figure(fig, path)


def threshold_text(value: float) -> str:
    """A threshold as text: 3 decimals, or as many more as it takes not to show a threshold below 1
    (0.9996) as 1.000 or one above 0 as 0.000. The caller says 'never' for one above NEVER."""
    for digits in range(3, 10):
        text = f"{value:.{digits}f}"
        shown = float(text)
        if (shown >= 1.0) == (value >= 1.0) and (shown <= 0.0) == (value <= 0.0):
            return text
    return f"{value:.12g}"


def threshold_cell(value: float | None) -> str:
    """A threshold in a table: "—" when there is none, "never (target not met)" above NEVER, else
    threshold_text."""
    if value is None:
        return "—"
    return "never (target not met)" if value > NEVER else threshold_text(value)


def operating_point_label(t_answer: float | None) -> str:
    """The legend of the model's answer point: its threshold, or that it answers on no confidence."""
    if t_answer is None:
        return "model"
    if t_answer > NEVER:
        return "model (never answers on confidence: no threshold met the target)"
    return f"model (t_answer={threshold_text(t_answer)})"


def _mark_operating_point(ax: Any, report: EvalReport) -> None:
    """The coverage and precision of the model's real answer decisions at its t_answer."""
    label = operating_point_label(report.t_answer)
    if report.answer_precision is None:
        ax.annotate(f"{label}: answers nothing", xy=(0.02, 0.05), xycoords="axes fraction", color="tab:red")
        return
    ax.plot([report.coverage], [report.answer_precision], "o", color="tab:red", markersize=8, label=label)
