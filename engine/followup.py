"""Follow-ups: a threshold for short messages read together with the previous question.

A follow-up (那拆封了呢 after 支持七天无理由退货吗) is matched as "previous question + the new words",
with the entry just answered excluded. Such a text does not look like the held-out paraphrases the
calibrator was fitted on: half of its words point at the excluded entry's neighbours, so the winner's
margin is small even when it is right, and the standalone answer threshold turns most follow-ups into
clarify lists. This module simulates follow-ups from the KB at build time and chooses an answer threshold
for them at the same target precision, on the same calibrated confidence:

- in scope: for an entry B with paraphrases, a neighbour A (same category, closest centroid) plays the
  previous question; the follow-up is B's held-out paraphrase without the words it shares with A, cut to
  a few words (那 … 呢 as customers write it). The paraphrase's row is hidden from the index, and the
  classifier channel comes from a model fitted without the held-out rows, so nothing has seen the text;
- out of scope: the same message with B hidden as well: whatever wins is wrong.

The threshold is stored in the policy (`t_follow_up`); models without one use the standalone threshold.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from engine.decide import choose_thresholds
from engine.fusion import fit_logistic
from engine.normalize import normalize
from engine.supervised import EntryClassifier

MAX_FRAGMENT_WORDS = 3  # what customers add after 那 ... 呢: a word or three
MIN_EXAMPLES = 30
MAX_EXAMPLES = 600  # simulated follow-ups per build (half in scope); each costs one ranking
DRAWS_PER_ENTRY = 3  # fewer simulated follow-ups than this: keep the standalone threshold
HELD_OUT_SHARE = 0.2  # of the rows of entries with paraphrases, held out of the simulation's classifier
FRAMES = ("那{}呢", "{}呢", "那{}", "那{}呢", "{}")  # as sent; normalization and stop words strip the frame


def compose(context: str, follow_up: str) -> str:
    """The text a follow-up is matched as: the previous question, then the follow-up's own words.

    Used both here (simulation) and by the dialog layer, so the threshold fits what is matched.
    """
    # the follow-up's words say what is asked, the context only narrows the topic: they count twice
    return f"{context} {follow_up} {follow_up}"


@dataclass
class FollowUpExample:
    context_row: int  # the previous question (a row of the neighbour A)
    row: int  # the held-out paraphrase of B the follow-up is cut from
    neighbour: int  # A: the entry just answered, excluded
    gold: int  # B, or -1 when B is hidden too (out of scope)
    text: str  # the previous question and the follow-up, composed as the matcher composes them
    fragment: str  # the follow-up alone


def _neighbours(m: Any, X_sparse: Any, entries: np.ndarray, k: int = 3) -> dict[int, np.ndarray]:
    """For each of `entries`, its k closest other entries in the same category (any category if none).

    Only the visited entries' rows of the similarity matrix are computed: a full entries x entries
    matrix is quadratic in the KB's size, and on a large KB few entries have paraphrases to visit."""
    n = len(m.entries)
    if m.centroids is not None and len(m.centroids) == n:
        sims = m.centroids[entries] @ m.centroids.T
    else:  # sparse: sum of the entry's row vectors
        owner = np.repeat(np.arange(n), np.diff(m.row_ptr))
        P = sp.csr_matrix((np.ones(len(owner)), (owner, np.arange(len(owner)))), shape=(n, len(owner)))
        C = (P @ X_sparse).tocsr()
        sims = np.asarray((C[entries] @ C.T).todense(), dtype=np.float64)
    sims = np.asarray(sims, dtype=np.float64)
    sims[np.arange(entries.size), entries] = -np.inf
    cats = np.asarray([e.category or "" for e in m.entries], dtype=object)
    out = {}
    for i, e in enumerate(entries.tolist()):
        same = np.flatnonzero((cats == cats[e]) & np.isfinite(sims[i]))
        pool = same if same.size else np.flatnonzero(np.isfinite(sims[i]))
        out[e] = pool[np.argsort(-sims[i, pool], kind="stable")[:k]]
    return out


def fragment(m: Any, text: str, context: str, rng: np.random.Generator) -> str | None:
    """The words of `text` that `context` does not have, in a customer's follow-up frame (那 … 呢).

    Stop words at either end are dropped, and a long remainder is cut to a few consecutive content
    words: customers add a word or three after a question, not a sentence.
    """
    tok = m.tokenizer
    seen = set(tok.segment(tok.canonical(normalize(context))))
    stop = tok.stopwords_
    words = [w for w in tok.segment(tok.canonical(normalize(text))) if w not in seen]
    while words and words[0] in stop:
        words.pop(0)
    while words and words[-1] in stop:
        words.pop()
    if not words:
        return None
    if len(words) > MAX_FRAGMENT_WORDS + 1:
        content = [w for w in words if w not in stop]
        start = int(rng.integers(max(1, len(content) - MAX_FRAGMENT_WORDS + 1)))
        words = content[start : start + MAX_FRAGMENT_WORDS]
    return FRAMES[int(rng.integers(len(FRAMES)))].format("".join(words))


def simulate(
    m: Any, X_sparse: Any, rng: np.random.Generator, max_examples: int = MAX_EXAMPLES
) -> list[FollowUpExample]:
    """Simulated follow-ups (one in scope and one out of scope per pair) from the KB's paraphrases.

    Entries with paraphrases are visited in random order, again and again (another paraphrase, another
    neighbour) until `max_examples` or DRAWS_PER_ENTRY rounds.
    """
    multi = np.flatnonzero(np.diff(m.row_ptr) >= 2)
    if multi.size == 0 or len(m.entries) < 3:
        return []
    near = _neighbours(m, X_sparse, multi)
    out: list[FollowUpExample] = []
    for _ in range(DRAWS_PER_ENTRY):
        for b in rng.permutation(multi):
            if len(out) >= max_examples:
                return out
            if near[b].size == 0:
                continue
            a = int(near[b][int(rng.integers(near[b].size))])
            row = int(rng.integers(int(m.row_ptr[b]), int(m.row_ptr[b + 1])))
            context_row = int(rng.integers(int(m.row_ptr[a]), int(m.row_ptr[a + 1])))
            context = m.row_texts[context_row]
            frag = fragment(m, m.row_texts[row], context, rng)
            if frag is None:
                continue
            text = compose(context, frag)
            out.append(FollowUpExample(context_row, row, a, int(b), text, frag))
            out.append(FollowUpExample(context_row, row, a, -1, text, frag))
    return out


def _logit(p: float) -> float:
    p = min(max(p, 1e-4), 1 - 1e-4)
    return float(np.log(p / (1 - p)))


FEATURES = ("logit_p_combined", "logit_p_alone", "alone_agrees", "alone_sparse_to_winner", "alone_unknown")


def follow_up_features(
    m: Any,
    combined: Any,
    alone: Any,
    entry_ok: np.ndarray,
    row_ok: np.ndarray | None = None,
    probs: tuple[np.ndarray | None, np.ndarray | None] = (None, None),
) -> tuple[Any, np.ndarray | None]:
    """The combined reading's ranking and the follow-up calibrator's features (None: no candidate).

    Besides the combined reading's calibrated confidence: the message's own reading (its confidence,
    whether it picks the same winner) and how much of the message's words the winner's questions hold,
    which tells a winner found for the follow-up from one found for the context's words.
    """
    ranking = m.rank(combined, entry_ok, row_ok, probs[0])
    if ranking.cands.size == 0:
        return ranking, None
    own = m.rank(alone, entry_ok, row_ok, probs[1]) if alone.ids.size or alone.dense is not None else None
    p_alone = m.calibrator.proba(own.calib) if own is not None and own.cands.size else 0.0
    winner = int(ranking.cands[0])
    rows = m.sparse.scores(alone.ids, alone.weights)
    if row_ok is not None:
        rows = np.where(row_ok, rows, 0.0)
    lo, hi = int(m.row_ptr[winner]), int(m.row_ptr[winner + 1])
    x = np.array(
        [
            _logit(m.calibrator.proba(ranking.calib)),
            _logit(p_alone),
            float(own is not None and own.cands.size > 0 and int(own.cands[0]) == winner),
            float(rows[lo:hi].max()) if hi > lo else 0.0,
            float(alone.unknown_share),
        ],
        np.float32,
    )
    return ranking, x


def calibrate_follow_ups(
    m: Any,
    X_sparse: Any,
    vectors: np.ndarray | None,
    rng: np.random.Generator,
    target_precision: float,
    oos_share: float,
    max_examples: int = MAX_EXAMPLES,
) -> dict[str, Any]:
    """Fit `m.follow_up_` and choose `m.policy.t_follow_up` on simulated follow-ups (manifest report)."""
    m.follow_up_ = None
    m.policy.t_follow_up = None
    examples = simulate(m, X_sparse, rng, max_examples)
    report: dict[str, Any] = {"examples": len(examples), "t_follow_up": None}
    if len(examples) < MIN_EXAMPLES:
        return report
    n_rows = len(m.row_texts)
    owner = np.repeat(np.arange(len(m.entries)), np.diff(m.row_ptr))
    held = np.zeros(n_rows, bool)
    held[[ex.row for ex in examples]] = True
    clf = None
    if m.classifier is not None:  # a classifier that never saw the paraphrases the follow-ups come from
        clf = EntryClassifier().fit(
            X_sparse[~held],
            None if vectors is None else vectors[~held],
            owner[~held],
            len(m.entries),
            np.flatnonzero(m.sparse.df_ >= 2),
        )
    feats, correct, top3, weights, is_in = [], [], [], [], []
    n_in = sum(ex.gold >= 0 for ex in examples)
    n_out = len(examples) - n_in
    reps: dict[str, Any] = {}

    def rep(text: str) -> Any:
        if text not in reps:
            reps[text] = m.represent(text)
        return reps[text]

    for ex in examples:
        combined, alone = rep(ex.text), rep(ex.fragment)
        entry_ok = np.ones(len(m.entries), bool)
        entry_ok[ex.neighbour] = False
        if ex.gold < 0:
            entry_ok[int(owner[ex.row])] = False
        row_ok = np.ones(n_rows, bool)
        row_ok[ex.row] = False
        probs: tuple[np.ndarray | None, np.ndarray | None] = (None, None)
        if clf is not None:
            probs = (
                clf.predict_proba_one(combined.ids, combined.weights, combined.dense),
                clf.predict_proba_one(alone.ids, alone.weights, alone.dense),
            )
        ranking, x = follow_up_features(m, combined, alone, entry_ok, row_ok, probs)
        if x is None:
            continue
        feats.append(x)
        correct.append(ranking.cands[0] == ex.gold)
        top3.append(ex.gold in ranking.cands[:3])
        is_in.append(ex.gold >= 0)
        weights.append((1.0 - oos_share) / max(1, n_in) if ex.gold >= 0 else oos_share / max(1, n_out))
    y = np.asarray(correct)
    if len(feats) < MIN_EXAMPLES or y.all() or not y.any():
        return report
    X, w = np.vstack(feats), np.asarray(weights)
    w = w / w.mean()
    model = fit_logistic(X, y.astype(int), sample_weight=w)
    # the threshold is chosen on out-of-fold probabilities, as for the main calibrator
    oof = model.proba_many(X)
    folds = np.random.default_rng(0).integers(5, size=len(y))
    for f in range(5):
        train, test = folds != f, folds == f
        if test.any() and y[train].any() and not y[train].all():
            fold = fit_logistic(X[train], y[train].astype(int), sample_weight=w[train])
            oof[test] = fold.proba_many(X[test])
    t_answer, _ = choose_thresholds(oof, y, np.asarray(top3), w, target_precision)
    m.follow_up_ = model
    m.policy.t_follow_up = t_answer
    answered = oof >= t_answer
    in_scope = np.asarray(is_in)
    report.update(
        t_follow_up=t_answer,
        features=list(FEATURES),
        top1_in_scope=float(y[in_scope].mean()) if in_scope.any() else None,
        cv_answer_precision=float((w * y * answered).sum() / max(1e-9, (w * answered).sum())),
        cv_answer_coverage_in_scope=float(answered[in_scope].mean()) if in_scope.any() else None,
    )
    return report
