"""Mining what the bot could not answer: cluster the messages it handed off or clarified, and propose
new KB entries or paraphrases of existing ones, in the KB's own format.

Messages are read with the engine's own normalization and vectors (the model's sparse weights and, when
it has them, its dense embeddings), so 白条能分期吗 and 可以用白条分期付款吗 land together. Clusters are
formed by average-linkage agglomeration on cosine distance; a cluster whose messages mostly point at one
existing entry (the model's first candidate for most of them, confidently enough to be offered) becomes
paraphrases for that entry, any other cluster a new entry (its medoid as the question, the others as
paraphrases, the answer left for the merchant). Clusters rank by size, then recency.

The proposals' file (CSV/XLSX in the KB's columns) is written here, for `kefu mine` and the service alike;
reading message files, the CLI and the measurement (hidden entries found again) are in training/mining.py.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from sklearn.cluster import AgglomerativeClustering
from sklearn.feature_extraction.text import TfidfVectorizer

from engine.cells import escape_cell
from engine.kb import EXTRA_COLUMNS, KB_COLUMNS, KBEntry
from engine.kb import _flat_row as kb_row  # the KB export's own cells, so a row merges back unchanged
from engine.normalize import normalize, strip_placeholders
from engine.results import Decision

MAX_MESSAGES = 5000  # agglomeration is quadratic in memory: the most recent ones beyond this
# clusters merge while their average similarity is above the KB-read bar (merge_bar), kept in these bounds
CROSS_QUANTILE = 0.99
MIN_BAR, MAX_BAR = 0.15, 0.8
MIN_CLUSTER = 2
MAX_EXAMPLES = 12  # paraphrases proposed per cluster
EXISTING_SHARE = 0.6  # this share of a cluster's messages offered one entry first: paraphrases of it
# a proposals file: every column of the KB export first (what an upload reads: a paraphrase row is the
# whole entry, action, validity window and all), then what the merchant reviews by
KB_FILE_COLUMNS = (*KB_COLUMNS, *EXTRA_COLUMNS)
REVIEW_COLUMNS = (
    "proposal",
    "cluster_size",
    "new_paraphrases",
    "closest_entry",
    "last_seen",
)
PROPOSAL_COLUMNS = (*KB_FILE_COLUMNS, *REVIEW_COLUMNS)
NUMBER_COLUMNS = frozenset({"cluster_size"})  # numbers in an XLSX file


@dataclass
class Message:
    text: str  # masked, as logged
    at: datetime | None = None
    why: str = ""  # handoff, clarify, low rating, correction ...


# the merchant's clock: China has one time zone and no daylight saving time since 1991
BEIJING = timezone(timedelta(hours=8), "Asia/Shanghai")


def beijing_time(at: datetime) -> str:
    """A time as merchants read it: Beijing time to the second, its offset written (+08:00) so nobody
    takes it for UTC or back; a time without an offset is UTC, as the service logs times."""
    aware = at if at.tzinfo is not None else at.replace(tzinfo=UTC)
    return aware.astimezone(BEIJING).replace(microsecond=0).isoformat()


@dataclass
class Proposal:
    """One cluster and what to do with it: a new entry, or paraphrases for an existing one."""

    kind: str  # "new_entry" | "paraphrases"
    question: str  # the cluster's medoid (new entry) or the existing entry's question
    examples: list[str]
    size: int
    last_seen: datetime | None
    entry_id: str | None = None  # the existing entry (paraphrases), or the closest one (new entry)
    members: list[int] = field(default_factory=list, repr=False)  # indices into the mined messages

    def to_row(self, number: int, entries: dict[str, KBEntry]) -> dict[str, str]:
        """A row in the KB's own format (extra columns are ignored when the file is uploaded back): a
        paraphrase row is the whole existing entry with the new paraphrases added, to replace it."""
        existing = entries.get(self.entry_id or "") if self.kind == "paraphrases" else None
        last_seen = beijing_time(self.last_seen) if self.last_seen else ""
        if existing is not None:
            known = {normalize(q) for q in existing.questions()}
            new = [e for e in dict.fromkeys(self.examples) if normalize(e) not in known]
            grown = replace(existing, similar=(*existing.similar, *new))
            return {
                **dict(zip(KB_FILE_COLUMNS, kb_row(grown, KB_FILE_COLUMNS), strict=True)),
                "proposal": "paraphrases",
                "cluster_size": str(self.size),
                "new_paraphrases": "|".join(new),
                "closest_entry": existing.id,
                "last_seen": last_seen,
            }
        # the answer is the merchant's to write; an upload without it is refused with the row named
        similar = tuple(e for e in dict.fromkeys(self.examples) if e != self.question)
        entry = KBEntry(f"mined-{number:03d}", self.question, "", similar=similar)
        return {
            **dict(zip(KB_FILE_COLUMNS, kb_row(entry, KB_FILE_COLUMNS), strict=True)),
            "proposal": "new_entry",
            "cluster_size": str(self.size),
            "new_paraphrases": "",
            "closest_entry": self.entry_id or "",
            "last_seen": last_seen,
        }


def _terms(m: Any, text: str) -> list[str]:
    """The engine's normalization and synonyms, its words without stop words, and the character bigrams
    and characters of what is left: what a message is about, not how it is asked."""
    canon = m.tokenizer.canonical(normalize(text))
    words = [w for w in m.tokenizer.words(canon) if w not in m.tokenizer.stopwords_]
    content = "".join(words)
    return [*(f"#{w}" for w in words), *(content[i : i + 2] for i in range(len(content) - 1)), *content]


class _Space:
    """Message vectors: TF-IDF over the KB's questions and the messages (the KB's vocabulary alone does
    not hold what the KB lacks), joined with the model's dense embeddings when it has them."""

    def __init__(self, m: Any, texts: Sequence[str]) -> None:
        self.m = m
        corpus = [_terms(m, t) for t in [*m.row_texts, *texts]]
        self.tfidf = TfidfVectorizer(analyzer=lambda t: t, sublinear_tf=True).fit(corpus)

    def __call__(self, texts: Sequence[str]) -> Any:
        m = self.m
        X = self.tfidf.transform([_terms(m, t) for t in texts])
        if m.dense_index is not None and m.embedder is not None:
            D = np.vstack(
                [
                    np.asarray(m.embedder.encode_one(strip_placeholders(normalize(t)) or t)).ravel()
                    for t in texts
                ]
            )
            D = D / np.maximum(np.linalg.norm(D, axis=1, keepdims=True), 1e-12)
            X = sp.hstack([X * np.sqrt(0.5), sp.csr_matrix(D * np.sqrt(0.5))]).tocsr()
        return X


def merge_bar(m: Any, space: _Space, max_rows: int = 1500, seed: int = 0) -> float:
    """The similarity two messages need to share a cluster, read off the KB itself: above what 99% of
    questions of different entries reach, and no higher than what paraphrases of one entry typically
    reach. So the bar follows the representation (sparse only, or with embeddings) and the shop's KB."""
    n_rows = len(m.row_texts)
    owner = np.repeat(np.arange(len(m.entries)), np.diff(m.row_ptr))
    rows = np.random.default_rng(seed).permutation(n_rows)[:max_rows]
    X = space([m.row_texts[i] for i in rows])
    S = (X @ X.T).toarray()
    same = owner[rows][:, None] == owner[rows][None, :]
    off = ~np.eye(len(rows), dtype=bool)
    cross, within = S[~same], S[same & off]
    bar = float(np.quantile(cross, CROSS_QUANTILE)) if cross.size else 0.5
    if within.size:
        bar = min(bar, float(np.median(within)))
    return min(max(bar, MIN_BAR), MAX_BAR)


def mine(
    m: Any,
    messages: Sequence[Message],
    bar: float | None = None,
    min_cluster: int = MIN_CLUSTER,
) -> list[Proposal]:
    """Proposals from the messages the bot did not answer, largest and most recent clusters first.

    `bar`: the similarity a cluster's messages must share on average (default: read off the KB)."""
    # a message that is a KB question or paraphrase word for word (after normalization) is nothing to add
    known = {normalize(q) for e in m.entries for q in e.questions()}
    msgs = [x for x in messages if x.text and x.text.strip() and normalize(x.text) not in known]
    msgs = sorted(msgs, key=lambda x: x.at or datetime.min)[-MAX_MESSAGES:]
    if len(msgs) < min_cluster:
        return []
    space = _Space(m, [x.text for x in msgs])
    bar = merge_bar(m, space) if bar is None else bar
    X = space([x.text for x in msgs])
    sims = (X @ X.T).toarray()
    np.clip(sims, -1.0, 1.0, out=sims)
    labels = AgglomerativeClustering(
        n_clusters=None, metric="precomputed", linkage="average", distance_threshold=1.0 - bar
    ).fit_predict(1.0 - sims)
    proposals = []
    for label, count in Counter(labels.tolist()).items():
        if count < min_cluster:
            continue
        idx = np.flatnonzero(labels == label)
        medoid = int(idx[np.argmax(sims[np.ix_(idx, idx)].sum(axis=1))])
        firsts: Counter[str] = Counter()
        for i in idx:
            r = m.match(msgs[i].text, top_k=3)
            if r.candidates and r.decision in (Decision.ANSWER, Decision.CLARIFY):
                firsts[r.candidates[0].entry_id] += 1
        top, hits = firsts.most_common(1)[0] if firsts else (None, 0)
        ordered = sorted(idx.tolist(), key=lambda i: -sims[medoid, i])
        examples = list(dict.fromkeys(msgs[i].text for i in ordered))[:MAX_EXAMPLES]
        seen: list[datetime] = [at for i in idx if (at := msgs[i].at) is not None]
        kind = "paraphrases" if top is not None and hits >= EXISTING_SHARE * len(idx) else "new_entry"
        proposals.append(
            Proposal(
                kind, msgs[medoid].text, examples, len(idx), max(seen) if seen else None, top, idx.tolist()
            )
        )
    proposals.sort(key=lambda p: (-p.size, -(p.last_seen.timestamp() if p.last_seen else 0)))
    return proposals


def proposal_rows(proposals: Sequence[Proposal], entries: Sequence[KBEntry]) -> list[dict[str, str]]:
    by_id = {e.id: e for e in entries}
    return [p.to_row(i, by_id) for i, p in enumerate(proposals, start=1)]


def proposals_file(rows: Sequence[dict[str, str]], fmt: str) -> bytes:
    """The proposals as a "csv" (UTF-8 with BOM, for Excel) or "xlsx" file, PROPOSAL_COLUMNS in order;
    no cell can run as a formula (customer text goes to a merchant's spreadsheet). As the KB export does:
    CSV cells escaped (engine.cells, undone when read back), XLSX cells stored as text, unchanged, a
    formula-like one marked quote-prefixed; cluster_size is a number."""
    table = [[str(r.get(c, "")) for c in PROPOSAL_COLUMNS] for r in rows]
    if fmt == "xlsx":
        import openpyxl
        from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE

        book = openpyxl.Workbook()
        sheet = book.active
        assert sheet is not None
        sheet.append(list(PROPOSAL_COLUMNS))
        for row in table:
            # a logged message may carry control characters, which .xlsx cannot store (openpyxl raises):
            # dropped, as a KB upload drops them from its cells
            values: list[str | int] = []
            for column, cell in zip(PROPOSAL_COLUMNS, row, strict=True):
                text = ILLEGAL_CHARACTERS_RE.sub("", cell)
                values.append(int(text) if column in NUMBER_COLUMNS and text.isdigit() else text)
            sheet.append(values)
            for written in sheet[sheet.max_row]:
                if isinstance(written.value, str):
                    written.data_type = "s"  # openpyxl makes text starting with "=" a formula
                    if written.value != escape_cell(written.value):
                        written.quotePrefix = True
        out = io.BytesIO()
        book.save(out)
        return out.getvalue()
    if fmt != "csv":
        raise ValueError(f"unknown proposals format {fmt!r} (csv or xlsx)")
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(PROPOSAL_COLUMNS)
    writer.writerows([escape_cell(cell) for cell in row] for row in table)
    return text.getvalue().encode("utf-8-sig")


def write_proposals(rows: Sequence[dict[str, str]], path: str | Path) -> Path:
    """The proposals file at `path`: XLSX for a .xlsx suffix, else CSV."""
    out = Path(path)
    out.write_bytes(proposals_file(rows, "xlsx" if out.suffix.lower() == ".xlsx" else "csv"))
    return out
