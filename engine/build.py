"""Build-time code: fit every stage of a Matcher on a KB and calibrate it on the KB's own questions.

Cross-validation without extra data: each sampled KB question is matched against the index with itself
hidden (in scope: is its entry still found through the entry's other questions?) and with its whole
entry hidden (out of scope: whatever comes first is wrong). Those examples train the fusion weights, the
confidence calibrator and the thresholds. A KB without paraphrases has no in-scope examples of that kind;
then word-dropped copies of its questions stand in, and the manifest says so.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from engine import fusion
from engine.cascade import fit_cascade
from engine.decide import DEFAULT_HUMAN_PHRASES, DecisionPolicy, choose_thresholds, precision_interval
from engine.dense import DenseIndex
from engine.embed import CachedEmbedder, Embedder, encode_batched, make_embedder
from engine.followup import calibrate_follow_ups
from engine.fusion import LinearModel
from engine.kb import KBEntry, kb_hash, load_kb
from engine.matcher import Matcher, QueryRep, Ranking
from engine.normalize import normalize, strip_placeholders
from engine.paraphrase import ParaphraseGenerator
from engine.sparse import SparseIndex, query_terms
from engine.supervised import EntryClassifier
from engine.tokenize import Tokenizer, char_ngrams

log = logging.getLogger("kefu.build")

Progress = Callable[[str, float], None]

MIN_REAL_EXAMPLES = 40  # fewer held-out paraphrases than this: use default fusion weights
OOS_SHARE = 0.3  # assumed share of out-of-scope messages when choosing thresholds
MAX_CLASSIFIER_ENTRIES = 3000
MIN_LABELLED = 50  # labelled messages needed before they may replace the KB's own calibration
# the answer threshold must meet the target precision with this confidence (a Clopper-Pearson lower bound)
THRESHOLD_CONFIDENCE = 0.8
# a held-out paraphrase takes its near copies in its entry along (sparse cosine at least this): a message
# is never a near copy of a KB question the way paraphrases written together are of each other
CLUSTER_COSINE = 0.8


def build_matcher(
    kb: str | os.PathLike[str] | Iterable[Mapping[str, Any] | KBEntry],
    *,
    dense: bool = True,
    embedder: Embedder | str | None = None,
    user_words: Iterable[str] = (),
    synonyms: Mapping[str, Iterable[str]] | None = None,
    stopwords: Iterable[str] | None = None,
    human_phrases: Iterable[str] = DEFAULT_HUMAN_PHRASES,
    target_precision: float = 0.95,
    tokenizer_backend: str = "auto",
    max_examples: int = 1500,
    ann_threshold: int = 20_000,
    seed: int = 0,
    smalltalk: bool = True,
    threshold_confidence: float = THRESHOLD_CONFIDENCE,
    progress: Progress | None = None,
) -> Matcher:
    """Fit a Matcher; the KB is validated first and nothing is built from a bad file.

    `threshold_confidence`: the confidence with which answers must meet `target_precision` on the
    calibration examples (a Clopper-Pearson lower bound); 0 takes the examples' own precision."""
    if not 0.0 <= threshold_confidence < 1.0:
        raise ValueError(f"threshold_confidence must be in [0, 1), got {threshold_confidence}")
    t0 = time.perf_counter()
    say = progress or (lambda stage, frac: None)
    entries = load_kb(kb)
    m = Matcher()
    m.entries = entries
    texts: list[str] = []
    ptr = [0]
    for e in entries:
        texts.extend(e.questions())
        ptr.append(len(texts))
    m.row_ptr = np.asarray(ptr, np.int64)
    m.row_texts = texts
    say("tokenize", 0.05)
    m.tokenizer = Tokenizer(
        user_words=list(user_words),
        synonyms={k: list(v) for k, v in (synonyms or {}).items()},
        stopwords=stopwords,
        backend=tokenizer_backend,
    ).fit()
    norms = [normalize(t) for t in texts]
    canons = [m.tokenizer.canonical(n) for n in norms]
    row_terms = [query_terms(m.tokenizer.words(c), char_ngrams(c)) for c in canons]
    m.sparse = SparseIndex()
    X_sparse = m.sparse.fit_transform(row_terms)

    vectors = None
    m.dense_index, m.centroids, m.embedder = None, None, None
    if dense:
        say("embed", 0.1)
        emb = embedder if embedder is not None and not isinstance(embedder, str) else make_embedder(embedder)
        raw = encode_batched(
            emb, [strip_placeholders(n) for n in norms], lambda done: say("embed", 0.1 + 0.5 * done)
        )
        m.dense_index = DenseIndex(ann_threshold=ann_threshold).fit(raw)
        vectors = m.dense_index.vectors_
        m.centroids = _centroids(vectors, m.row_ptr)
        m.embedder = CachedEmbedder(emb)

    owner = np.repeat(np.arange(len(entries)), np.diff(m.row_ptr))
    multi = np.diff(m.row_ptr) >= 2
    m.classifier = None
    if _classifier_worthwhile(multi):
        say("classifier", 0.6)
        m.classifier = EntryClassifier().fit(X_sparse, vectors, owner, len(entries), _shared_terms(m))

    m.ranker = LinearModel(fusion.DEFAULT_WEIGHTS_DENSE if dense else fusion.DEFAULT_WEIGHTS_SPARSE)
    m.calibrator = LinearModel(np.zeros(len(fusion.CALIBRATION_FEATURES), np.float32), -5.0)
    m.policy = DecisionPolicy(human_phrases=list(human_phrases))
    m.info = {"smalltalk": smalltalk, "threshold_confidence": threshold_confidence}
    m._finalize()

    say("calibrate", 0.7)
    rng = np.random.default_rng(seed)
    report = calibrate_on_kb(m, say, X_sparse, owner, multi, rng, max_examples, target_precision)
    say("follow-ups", 0.95)
    follow_ups = calibrate_follow_ups(m, X_sparse, vectors, rng, target_precision, OOS_SHARE)
    m.info = {
        "kb_hash": kb_hash(entries),
        "entries": len(entries),
        "rows": len(texts),
        "dense": dense,
        "embedder": m.embedder.spec() if m.embedder else None,
        "classifier": m.classifier is not None,
        "dense_index": m.dense_index.kind_ if m.dense_index else None,
        "tokenizer": m.tokenizer.backend_,
        "target_precision": target_precision,
        "threshold_confidence": threshold_confidence,
        "calibration": report,
        "follow_up": follow_ups,
        "build_seconds": round(time.perf_counter() - t0, 3),
        "smalltalk": smalltalk,
    }
    say("done", 1.0)
    return m


def _row_matrix(m: Matcher) -> Any:
    """The KB questions' sparse rows, as the build computed them (for a model loaded from disk)."""
    canons = [m.tokenizer.canonical(normalize(t)) for t in m.row_texts]
    return m.sparse.transform([query_terms(m.tokenizer.words(c), char_ngrams(c)) for c in canons])


def _classifier_worthwhile(multi: np.ndarray) -> bool:
    """A classifier needs several examples per class: most entries must carry paraphrases.

    It is also capped in size: one weight vector per entry grows with the KB.
    """
    n = multi.size
    return n >= 2 and multi.sum() >= max(2, 0.5 * n) and n <= MAX_CLASSIFIER_ENTRIES


def _centroids(vectors: np.ndarray, ptr: np.ndarray) -> np.ndarray:
    if len(vectors) == 0:
        return np.zeros((0, vectors.shape[1]), np.float32)
    c = np.add.reduceat(vectors, ptr[:-1], axis=0)
    n = np.linalg.norm(c, axis=1, keepdims=True)
    n[n == 0] = 1.0
    return (c / n).astype(np.float32)


def _cluster_of(X_sparse: Any, r: int, lo: int, hi: int) -> np.ndarray:
    """Row r and its near copies among its entry's rows lo:hi, leaving at least one other row visible."""
    if CLUSTER_COSINE >= 1.0 or hi - lo <= 2:
        return np.array([r])
    sims = np.asarray((X_sparse[lo:hi] @ X_sparse[r].T).todense()).ravel()
    sims[r - lo] = 2.0
    near = np.flatnonzero(sims >= CLUSTER_COSINE)
    if near.size >= hi - lo:  # all near copies: keep the least similar visible
        far = int(np.argsort(sims, kind="stable")[0])
        near = near[near != far]
    return lo + near


def _row_rep(m: Matcher, X_sparse: Any, vectors: np.ndarray | None, r: int, hidden: np.ndarray) -> QueryRep:
    """A KB question as a message would look with rows `hidden` gone from the index.

    Terms that occur only in hidden rows become unknown words: they are dropped and counted, exactly as
    `SparseIndex.vectorize` treats a customer's unknown words.
    """
    row = X_sparse[r]
    ids = row.indices.astype(np.int64)
    in_hidden = np.asarray((X_sparse[hidden][:, ids] != 0).sum(axis=0)).ravel()
    known = m.sparse.df_[ids] > in_hidden
    weights = row.data[known].astype(np.float32)
    norm2 = float(np.dot(weights, weights))
    if norm2 > 0:
        weights /= np.sqrt(norm2)
    text = normalize(m.row_texts[r])
    dense = None if vectors is None else vectors[r]
    unknown = 1.0 - known.mean() if ids.size else 1.0
    return QueryRep(text, ids[known], weights, float(unknown), len(text), dense)


def _synthetic_variant(
    m: Matcher, gen: ParaphraseGenerator, text: str, rng: np.random.Generator
) -> str | None:
    """A stand-in paraphrase of a KB question (engine.paraphrase): synonyms, drops, reordering,
    particles and homophone typos, as customers change a question."""
    words = m.tokenizer.segment(m.tokenizer.canonical(normalize(text)))
    return gen.generate(words, rng)


@dataclass
class Example:
    """A held-out KB question: how it looks as a message, what is hidden, and the right entry (-1: none).

    What is hidden is kept as row and entry numbers, and the masks are made when the example is ranked:
    3,000 examples each holding a mask per row and per entry took 4.5 GB at 1M questions."""

    rep: QueryRep
    hidden_rows: np.ndarray | None  # rows hidden from the index; None: nothing hidden
    hidden_entry: int  # the entry hidden (out-of-scope examples); -1: none
    probs: np.ndarray | None
    gold: int
    probs1: np.ndarray | None = None  # the classifier's output without the sentence vector (stage 1)

    def rank(self, m: Matcher) -> Ranking:
        return m.rank(self.rep, *self._masks(m), self.probs)

    def rank_stage1(self, m: Matcher) -> Ranking:
        """The ranking without the dense channel, as the cascade's first stage sees the message."""
        return m.rank(replace(self.rep, dense=None), *self._masks(m), self.probs1)

    def _masks(self, m: Matcher) -> tuple[np.ndarray, np.ndarray | None]:
        entry_ok = np.ones(len(m.entries), bool)
        if self.hidden_entry >= 0:
            entry_ok[self.hidden_entry] = False
        row_ok = None
        if self.hidden_rows is not None:
            row_ok = np.ones(len(m.row_texts), bool)
            row_ok[self.hidden_rows] = False
        return entry_ok, row_ok


def held_out_examples(
    m: Matcher,
    X_sparse: Any,
    owner: np.ndarray,
    multi: np.ndarray,
    rng: np.random.Generator,
    max_examples: int,
) -> tuple[list[Example], list[Example], bool]:
    """In-scope examples (a paraphrase hidden), out-of-scope ones (its entry hidden), and whether the
    in-scope ones had to be synthetic."""
    n_rows = len(m.row_texts)
    vectors = m.dense_index.vectors_ if m.dense_index is not None else None
    in_rows = rng.permutation(np.flatnonzero(multi[owner]))[:max_examples]
    oos_rows = rng.permutation(n_rows)[:max_examples]
    ptr = m.row_ptr
    clusters = {
        int(r): _cluster_of(X_sparse, int(r), int(ptr[owner[r]]), int(ptr[owner[r] + 1])) for r in in_rows
    }
    fold_probs = (
        _out_of_fold_probs(m, X_sparse, vectors, owner, in_rows, rng, clusters) if m.classifier else {}
    )

    def examples(rows: np.ndarray, hide_entry: bool) -> list[Example]:
        out = []
        for r in rows:
            e = int(owner[r])
            lo, hi = int(m.row_ptr[e]), int(m.row_ptr[e + 1])
            hidden = np.arange(lo, hi) if hide_entry else clusters[int(r)]
            rep = _row_rep(m, X_sparse, vectors, int(r), hidden)
            probs, probs1 = fold_probs.get(int(r), (None, None))
            if hide_entry and m.classifier is not None:
                probs = _probs_without(m, rep, e, probs)
                probs1 = _probs_without(m, replace(rep, dense=None), e, probs1)
            out.append(Example(rep, hidden, e if hide_entry else -1, probs, -1 if hide_entry else e, probs1))
        return out

    in_ex = examples(in_rows, hide_entry=False)
    synthetic = len(in_ex) < MIN_REAL_EXAMPLES
    if synthetic:
        gen = ParaphraseGenerator(m.tokenizer.synonyms).fit(normalize(t) for t in m.row_texts)
        variants = [
            (r, _synthetic_variant(m, gen, m.row_texts[r], rng))
            for r in rng.permutation(n_rows)[:max_examples]
        ]
        kept = [(int(r), v) for r, v in variants if v is not None]
        for (r, _), rep in zip(kept, m.represent_many([v for _, v in kept]), strict=True):
            in_ex.append(Example(rep, None, -1, None, int(owner[r])))
    oos_ex = examples(oos_rows, hide_entry=True) if len(m.entries) > 1 else []
    return in_ex, oos_ex, synthetic


def calibrate_on_kb(
    m: Matcher,
    say: Progress,
    X_sparse: Any,
    owner: np.ndarray,
    multi: np.ndarray,
    rng: np.random.Generator,
    max_examples: int,
    target_precision: float,
) -> dict[str, Any]:
    """Learn fusion weights, the calibrator and thresholds from held-out KB questions."""
    say("calibrate", 0.7)
    in_ex, oos_ex, synthetic = held_out_examples(m, X_sparse, owner, multi, rng, max_examples)
    say("calibrate", 0.75)
    # 1. fusion weights from real held-out paraphrases (candidate level: is this the right entry?)
    learned = False
    if not synthetic and len(in_ex) >= MIN_REAL_EXAMPLES:
        Xc, yc = [], []
        for ex in in_ex:
            ranking = ex.rank(m)
            Xc.append(ranking.evidence)
            yc.append(ranking.cands == ex.gold)
        Xc_a, yc_a = np.vstack(Xc), np.concatenate(yc)
        if yc_a.any() and not yc_a.all():
            model = fusion.fit_logistic(Xc_a, yc_a.astype(int), C=1.0)
            m.ranker = LinearModel(model.weights, 0.0)
            learned = True

    # 2. calibrator and thresholds on the winners of the fused ranking
    feats, correct, top3, weights, is_in = [], [], [], [], []
    stage1: list[tuple[Any, bool, bool]] = []  # the cascade's first stage: features, right, same winner
    total = len(in_ex) + len(oos_ex)
    for group, w_group in ((in_ex, 1.0 - OOS_SHARE), (oos_ex, OOS_SHARE)):
        for ex in group:
            ranking = ex.rank(m)
            if ranking.cands.size:
                feats.append(ranking.calib)
                correct.append(ranking.cands[0] == ex.gold)
                top3.append(ex.gold in ranking.cands[:3])
                weights.append(w_group / len(group))
                is_in.append(ex.gold >= 0)
                if m.dense_index is not None:
                    stage1.append(_stage1_row(ex.rank_stage1(m), ex.gold, int(ranking.cands[0])))
            if len(is_in) % 200 == 0:
                say("calibrate", 0.75 + 0.2 * len(is_in) / max(1, total))
    if not feats:
        # a KB of one short entry: nothing to learn from, keep the cautious prior
        return {
            "examples_in_scope": 0,
            "examples_out_of_scope": 0,
            "synthetic_paraphrases": synthetic,
            "fusion": "default",
            "t_answer": m.policy.t_answer,
            "t_clarify": m.policy.t_clarify,
        }
    p, y, w, answered = fit_calibration(
        m, np.vstack(feats), np.asarray(correct), np.asarray(top3), np.asarray(weights), target_precision
    )
    in_mask = np.asarray(is_in)
    cascade = _fit_stage1(m, stage1, w, answered, target_precision) if stage1 else None
    return {
        "calibrated_on": "held-out KB questions (paraphrases hidden with their near copies, entries hidden)",
        "examples_in_scope": int(in_mask.sum()),
        "examples_out_of_scope": int((~in_mask).sum()),
        "synthetic_paraphrases": synthetic,
        "fusion": "learned" if learned else "default",
        "ranker_weights": [float(v) for v in m.ranker.weights],
        "t_answer": m.policy.t_answer,
        "t_clarify": m.policy.t_clarify,
        "cv_top1_in_scope": float(y[in_mask].mean()) if in_mask.any() else None,
        "cv_answer_precision": float((w * y * answered).sum() / max(1e-9, (w * answered).sum())),
        **_guarantee(m, y, w, answered),
        "cv_answer_coverage": float((w * answered).sum() / w.sum()),
        "coverage_by_target": coverage_by_target(m, p, np.asarray(correct), np.asarray(top3), w),
        "cascade": cascade,
    }


def _stage1_row(r1: Ranking, gold: int, full_best: int) -> tuple[Any, bool, bool]:
    """A calibration example as the cascade's first stage saw it: its features (None: no candidate),
    whether its best entry is right, and whether the full model named the same one."""
    best = int(r1.cands[0]) if r1.cands.size else -2
    return (r1.calib if r1.cands.size else None, best == gold, best == full_best)


def _fit_stage1(
    m: Matcher,
    stage1: list[tuple[Any, bool, bool]],
    weights: np.ndarray,
    answered: np.ndarray,
    target_precision: float,
) -> dict[str, Any] | None:
    """Fit the dense-skip cascade (engine.cascade) on the calibration examples' stage-1 rankings and set
    it on the model; returns its report (None: stage 1 never decides alone on this KB).

    Stage 1 agrees with the full model on an example when both name the same entry and the full model
    answers it (`answered`: its out-of-fold confidence reaches t_answer): a skip must not turn a clarify
    or a handoff into an answer, since stage 1's confidence is measured on the same easy examples."""
    m.cascade_ = None
    keep = np.array([x is not None for x, _, _ in stage1])
    if keep.sum() < 20:
        return None
    X1 = np.vstack([x for x, _, _ in stage1 if x is not None])
    right = np.array([r for (x, r, _) in stage1 if x is not None])
    agree = np.array([a for (x, _, a) in stage1 if x is not None]) & answered[keep]
    w = weights[keep]
    if right.all() or not right.any():
        return None
    m.cascade_ = fit_cascade(
        X1, right, agree, w, target_precision, _confidence(m), _fit_with_oof(X1, right.astype(int), w)
    )
    return None if m.cascade_ is None else m.cascade_.report


COVERAGE_TARGETS = (0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99)


def coverage_by_target(
    m: Matcher, p: np.ndarray, correct: np.ndarray, top3: np.ndarray, w: np.ndarray
) -> list[dict[str, float]]:
    """The share of calibration examples each target precision would answer, under the model's threshold
    rule: what a merchant trades when moving the target (shown by the console beside the setting)."""
    out = []
    for target in COVERAGE_TARGETS:
        t, _ = choose_thresholds(p, correct, top3, w, target, confidence=_confidence(m))
        out.append({"target": target, "t_answer": t, "coverage": float((w * (p >= t)).sum() / w.sum())})
    return out


def _confidence(m: Matcher) -> float | None:
    """The model's threshold confidence (older models: the default); None for the point estimate."""
    return float(m.info.get("threshold_confidence", THRESHOLD_CONFIDENCE)) or None


def _guarantee(m: Matcher, y: np.ndarray, w: np.ndarray, answered: np.ndarray) -> dict[str, Any]:
    """The answer threshold's promise, as the manifest states it: how it was chosen and the 90% interval
    of the precision its answers had on the (out-of-fold) calibration examples."""
    lo, hi = precision_interval(y[answered].astype(float), w[answered], 0.9)
    return {
        "threshold_rule": (
            f"lowest threshold whose precision's Clopper-Pearson lower bound meets the target "
            f"with {_confidence(m):.0%} confidence"
            if _confidence(m)
            else "lowest threshold whose precision meets the target"
        ),
        "answer_precision_interval_90": [round(lo, 4), round(hi, 4)],
    }


def _out_of_fold_probs(
    m: Matcher,
    X_sparse: Any,
    vectors: np.ndarray | None,
    owner: np.ndarray,
    rows: np.ndarray,
    rng: np.random.Generator,
    clusters: Mapping[int, np.ndarray] | None = None,
    folds: int = 0,
) -> dict[int, tuple[np.ndarray, np.ndarray | None]]:
    """Classifier probabilities for held-out rows from models that never saw them, with and (for the
    cascade's first stage; None without a dense channel) without the sentence vector.

    Ten folds keep each fold's model close to the final one (few paraphrases per entry: holding out a
    fifth of them understates the classifier); large KBs use five, as each fold is a full fit.
    """
    out: dict[int, tuple[np.ndarray, np.ndarray | None]] = {}
    n_rows = len(owner)
    folds = folds or (10 if n_rows <= 1000 else 5)
    assignment = rng.integers(folds, size=rows.size)
    for f in range(folds):
        test = rows[assignment == f]
        if test.size == 0:
            continue
        train = np.ones(n_rows, bool)
        train[test] = False
        for r in test:
            if clusters is not None:  # the held-out row's near copies are hidden with it
                train[clusters[int(r)]] = False
        clf = EntryClassifier().fit(
            X_sparse[train],
            None if vectors is None else vectors[train],
            owner[train],
            len(m.entries),
            _shared_terms(m),
        )
        P = clf.predict_proba(X_sparse[test], None if vectors is None else vectors[test])
        P1 = clf.predict_proba(X_sparse[test], None) if vectors is not None else [None] * len(test)
        for r, p, p1 in zip(test, P, P1, strict=True):
            out[int(r)] = (p, p1)
    return out


def _shared_terms(m: Matcher) -> np.ndarray:
    """Terms in two or more KB questions: a term of one question only cannot generalize to a new
    message, and dropping those cuts the classifier's size (and fit time) by more than half."""
    return np.flatnonzero(m.sparse.df_ >= 2)


def _probs_without(m: Matcher, rep: QueryRep, e: int, probs: np.ndarray | None) -> np.ndarray:
    """Classifier output with entry e removed: what a message about an unknown topic would get."""
    assert m.classifier is not None
    p = m.classifier.predict_proba_one(rep.ids, rep.weights, rep.dense) if probs is None else probs.copy()
    p[e] = 0.0
    total = p.sum()
    return p / total if total > 0 else p


def fit_calibration(
    m: Matcher,
    X: np.ndarray,
    correct: np.ndarray,
    top3: np.ndarray,
    weights: np.ndarray,
    target_precision: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Fit the calibrator and choose thresholds; returns (P, correct, weights, answered) on the examples.

    Thresholds are chosen on out-of-fold probabilities: in-sample ones flatter the calibrator and
    would set the answer threshold too low for the target precision.
    """
    w = weights / weights.mean()
    y = correct.astype(int)
    if y.min() == y.max():
        log.warning(
            "calibration examples are all %s; confidence stays at its prior", "right" if y[0] else "wrong"
        )
        p = m.calibrator.proba_many(X)
    else:
        m.calibrator, p = _fit_with_oof(X, y, w)
    m.policy.t_answer, m.policy.t_clarify = choose_thresholds(
        p, correct, top3, w, target_precision, confidence=_confidence(m)
    )
    return p, correct, w, p >= m.policy.t_answer


def _fit_with_oof(X: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[LinearModel, np.ndarray]:
    """A logistic calibrator on all examples, and each example's probability from a fit without its
    fold (five folds)."""
    model = fusion.fit_logistic(X, y, sample_weight=w)
    p = model.proba_many(X)
    folds = np.random.default_rng(0).integers(5, size=len(y))
    for f in range(5):
        train, test = folds != f, folds == f
        if test.any() and y[train].min() != y[train].max():
            p[test] = fusion.fit_logistic(X[train], y[train], sample_weight=w[train]).proba_many(X[test])
    return model, p


def recalibrate(
    m: Matcher,
    texts: list[str],
    expected: list[str | None],
    target_precision: float | None = None,
) -> dict[str, Any]:
    """Refit the calibrator and thresholds on labelled messages (expected None: out of scope).

    Labelled logs reflect real traffic, including its share of out-of-scope messages, so the examples
    are weighted equally.
    """
    target = target_precision if target_precision is not None else m.info.get("target_precision", 0.95)
    ids = {e.id: i for i, e in enumerate(m.entries)}
    unknown = sorted({x for x in expected if x and x not in ids})
    if unknown:
        raise ValueError(f"expected ids not in the model's KB: {', '.join(unknown[:10])}")
    all_ok = np.ones(len(m.entries), bool)
    feats, correct, top3 = [], [], []
    stage1: list[tuple[Any, bool, bool]] = []
    for text, exp in zip(texts, expected, strict=True):
        rep = m.represent(text)
        if not rep.normalized or m.policy.human_request(rep.normalized):
            continue
        ranking = m.rank(rep, all_ok)
        if ranking.cands.size == 0:
            continue
        gold = ids[exp] if exp else -1
        feats.append(ranking.calib)
        correct.append(ranking.cands[0] == gold)
        top3.append(gold in ranking.cands[:3])
        if m.dense_index is not None:
            stage1.append(_stage1_row(m.rank(replace(rep, dense=None), all_ok), gold, int(ranking.cands[0])))
    n_right = int(sum(correct))
    if len(feats) < MIN_LABELLED or n_right < 5 or len(feats) - n_right < 5:
        raise ValueError(
            f"{len(feats)} usable labelled messages ({n_right} matched right, {len(feats) - n_right} not): "
            f"calibration needs at least {MIN_LABELLED}, with 5 or more of each kind"
        )
    _, y, w, answered = fit_calibration(
        m, np.vstack(feats), np.asarray(correct), np.asarray(top3), np.ones(len(feats)), target
    )
    report = {
        "calibrated_on": "labelled messages",
        "examples": len(feats),
        "t_answer": m.policy.t_answer,
        "t_clarify": m.policy.t_clarify,
        "answer_precision": float(y[answered].mean()) if answered.any() else None,
        **_guarantee(m, y, w, answered),
        "answer_coverage": float(answered.mean()),
        "target_precision": target,
        # the cascade's first stage answers on the same promise: learned again from the same messages
        "cascade": _fit_stage1(m, stage1, w, answered, target) if stage1 else None,
    }
    # the follow-up threshold is a threshold on the calibrator's output: choose it again for the new one
    vectors = m.dense_index.vectors_ if m.dense_index is not None else None
    m.info["follow_up"] = calibrate_follow_ups(
        m, _row_matrix(m), vectors, np.random.default_rng(0), target, OOS_SHARE
    )
    report["t_follow_up"] = m.policy.t_follow_up
    m.info["calibration_logs"] = report
    m.info["target_precision"] = target
    m.info.setdefault("calibration", {}).update(t_answer=m.policy.t_answer, t_clarify=m.policy.t_clarify)
    return report
