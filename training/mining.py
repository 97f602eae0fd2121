"""Mining what the bot could not answer: cluster the messages it handed off or clarified, and propose
new KB entries or paraphrases of existing ones, in the KB's own format.

Messages are read with the engine's own normalization and vectors (the model's sparse weights and, when
it has them, its dense embeddings), so 白条能分期吗 and 可以用白条分期付款吗 land together. Clusters are
formed by average-linkage agglomeration on cosine distance; a cluster whose messages mostly point at one
existing entry (the model's first candidate for most of them, confidently enough to be offered) becomes
paraphrases for that entry, any other cluster a new entry (its medoid as the question, the others as
paraphrases, the answer left for the merchant). Clusters rank by size, then recency.

`evaluate_mining` measures it honestly on a labelled set: entries are hidden from the KB, their queries
sent as traffic with the rest, the unanswered ones mined, and the figures say how many hidden entries come
back as clusters, how pure the clusters are, and how much coverage at the target precision rises on other
queries once the proposals (answered by the "merchant", here with the hidden entry's answer) are added.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from sklearn.cluster import AgglomerativeClustering
from sklearn.feature_extraction.text import TfidfVectorizer

from engine.cells import escape_cell
from engine.kb import KBEntry, KBValidationError, read_rows
from engine.normalize import normalize, strip_placeholders
from engine.results import Decision

MAX_MESSAGES = 5000  # agglomeration is quadratic in memory: the most recent ones beyond this
# clusters merge while their average similarity is above the KB-read bar (merge_bar), kept in these bounds
CROSS_QUANTILE = 0.99
MIN_BAR, MAX_BAR = 0.15, 0.8
MIN_CLUSTER = 2
MAX_EXAMPLES = 12  # paraphrases proposed per cluster
EXISTING_SHARE = 0.6  # this share of a cluster's messages offered one entry first: paraphrases of it


@dataclass
class Message:
    text: str  # masked, as logged
    at: datetime | None = None
    why: str = ""  # handoff, clarify, low rating, correction ...


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
        """A row in the KB's own format (extra columns are ignored when the file is uploaded back)."""
        existing = entries.get(self.entry_id or "") if self.kind == "paraphrases" else None
        if existing is not None:
            similar = [*existing.similar, *(e for e in self.examples if e not in existing.similar)]
            return {
                "id": existing.id,
                "question": existing.question,
                "similar": "|".join(similar),
                "answer": existing.answer,
                "category": existing.category or "",
                "proposal": "paraphrases",
                "cluster_size": str(self.size),
                "new_paraphrases": "|".join(e for e in self.examples if e not in existing.similar),
                "closest_entry": existing.id,
                "last_seen": self.last_seen.isoformat() if self.last_seen else "",
            }
        return {
            "id": f"mined-{number:03d}",
            "question": self.question,
            "similar": "|".join(e for e in self.examples if e != self.question),
            "answer": "",  # the merchant writes it; an upload without it is refused with the row named
            "category": "",
            "proposal": "new_entry",
            "cluster_size": str(self.size),
            "new_paraphrases": "",
            "closest_entry": self.entry_id or "",
            "last_seen": self.last_seen.isoformat() if self.last_seen else "",
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
    msgs = [x for x in messages if x.text and x.text.strip()]
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


TEXT_COLUMNS = ("text", "text_masked", "message", "query", "question", "消息", "内容", "问题")
TIME_COLUMNS = ("created_at", "time", "at", "时间")
ROW_COLUMNS = (
    "id",
    "question",
    "similar",
    "answer",
    "category",
    "proposal",
    "cluster_size",
    "new_paraphrases",
    "closest_entry",
    "last_seen",
)


class MessageFileError(ValueError):
    pass


def read_messages(path: str | Path) -> list[Message]:
    """Messages from a CSV/XLSX/JSON/JSONL file (an exchange-log export, or any file with a text column
    such as text, message, query or 消息; an optional created_at/time column orders them)."""
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
    out = []
    for record, row in zip(records, rows, strict=True):
        text = str(record.get(text_key) or "").strip()
        if not text:
            continue
        at = None
        raw = record.get(time_key) if time_key is not None else None
        if isinstance(raw, datetime):
            at = raw
        elif raw:
            try:
                at = datetime.fromisoformat(str(raw).strip())
            except ValueError:
                raise MessageFileError(f"{file} row {row}, column {time_key}: not a time: {raw!r}") from None
        out.append(Message(text, at.replace(tzinfo=None) if at else None))
    return out


def write_proposals(rows: Sequence[dict[str, str]], path: str | Path) -> Path:
    """The proposals as CSV (UTF-8 with BOM, for Excel) or XLSX, in the KB's own columns first."""
    import csv

    out = Path(path)
    if out.suffix.lower() == ".xlsx":
        import openpyxl

        book = openpyxl.Workbook()
        sheet = book.active
        sheet.append(list(ROW_COLUMNS))
        for r in rows:
            sheet.append([escape_cell(r[c]) for c in ROW_COLUMNS])
        book.save(out)
        return out
    with out.open("w", encoding="utf-8-sig", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(ROW_COLUMNS)
        writer.writerows([escape_cell(r[c]) for c in ROW_COLUMNS] for r in rows)
    return out


def proposal_rows(proposals: Sequence[Proposal], entries: Sequence[KBEntry]) -> list[dict[str, str]]:
    by_id = {e.id: e for e in entries}
    return [p.to_row(i, by_id) for i, p in enumerate(proposals, start=1)]


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
