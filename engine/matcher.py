"""The `Matcher` facade: build from a KB, match messages, save and load.

Query-time code lives here; build-time code (fitting, cross-validation, calibration) lives in
`engine.build`, and the artifact format in `engine.artifacts`. The per-query path is
normalize -> tokenize -> vectorize -> score -> decide, with numpy over whole arrays and no Python loop
over KB rows or entries.
"""

from __future__ import annotations

import os
import time
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from engine import kernels
from engine.cascade import Cascade
from engine.decide import DecisionPolicy
from engine.dense import DenseIndex
from engine.embed import CachedEmbedder, Embedder, encode_batched
from engine.fusion import LinearModel
from engine.kb import KBEntry
from engine.normalize import normalize, strip_placeholders
from engine.results import Candidate, Decision, MatchResult
from engine.smalltalk import INTENTS, SmallTalk, SmallTalkDetector
from engine.sparse import SparseIndex, query_terms
from engine.supervised import EntryClassifier
from engine.tokenize import Tokenizer, char_ngrams

MAX_MESSAGE_CHARS = 1000  # a customer message longer than this is cut: matching needs the gist only
SPARSE_ENTRIES = 20
DENSE_ROWS = 30
CLASSIFIER_ENTRIES = 10
EXACT_COSINE = 0.9999  # sparse cosine of a message whose words and characters are a KB question's
EXACT_CONFIDENCE = 0.99


@dataclass
class QueryRep:
    """One message, vectorized for every channel."""

    normalized: str
    ids: np.ndarray
    weights: np.ndarray
    unknown_share: float
    n_chars: int
    dense: np.ndarray | None


@dataclass
class Ranking:
    cands: np.ndarray  # entry indices, best first
    fused: np.ndarray  # fused score per candidate, same order
    calib: np.ndarray  # calibration features of the best candidate
    evidence: np.ndarray  # per-candidate channel evidence (fusion.CANDIDATE_FEATURES), same order
    sparse_part: tuple[np.ndarray, np.ndarray] | None = None  # the sparse channel's (scores, top entries)


class Matcher:
    """Ranks KB entries for a message and decides: answer, clarify or hand off."""

    # let a fitted cascade answer without the encoder (engine.cascade); off by default: on real queries
    # its first stage answers some messages the full model would only clarify (see README)
    use_cascade: bool = False

    # fitted state, set by engine.build or engine.artifacts
    entries: list[KBEntry]
    row_ptr: np.ndarray  # rows of entry e are row_ptr[e]:row_ptr[e+1]
    row_texts: list[str]
    tokenizer: Tokenizer
    sparse: SparseIndex
    dense_index: DenseIndex | None
    centroids: np.ndarray | None
    classifier: EntryClassifier | None
    ranker: LinearModel
    calibrator: LinearModel
    policy: DecisionPolicy
    info: dict[str, Any]

    def __init__(self) -> None:
        self.embedder: CachedEmbedder | None = None
        # P(right) of a follow-up read with the previous question (engine.followup); None: not fitted
        self.follow_up_: LinearModel | None = None
        # answer without the encoder when the other channels decide (engine.cascade); None: always encode
        self.cascade_: Cascade | None = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def build(
        cls,
        kb: str | os.PathLike[str] | Iterable[Mapping[str, Any] | KBEntry],
        *,
        dense: bool = True,
        embedder: Embedder | str | None = None,
        **options: Any,
    ) -> Matcher:
        """Fit every stage on a KB file (csv/xlsx/json/jsonl) or a list of entries."""
        from engine.build import build_matcher

        return build_matcher(kb, dense=dense, embedder=embedder, **options)

    def save(self, path: str | os.PathLike[str]) -> Path:
        from engine.artifacts import save_matcher

        return save_matcher(self, path)

    @classmethod
    def load(cls, path: str | os.PathLike[str], embedder: Embedder | None = None) -> Matcher:
        from engine.artifacts import load_matcher

        return load_matcher(path, embedder=embedder)

    def _finalize(self, smalltalk_entries: dict[str, int] | None = None) -> None:
        """Derived query-time arrays (not stored: cheap to recompute from the fitted state).
        `smalltalk_entries`: the saved intent -> entry map, else found again over every question."""
        n = len(self.entries)
        self.row_owner = np.repeat(np.arange(n), np.diff(self.row_ptr))
        inf = float("inf")
        self._enabled = np.array([e.enabled for e in self.entries], bool)
        self._from = np.array([e.valid_from.timestamp() if e.valid_from else -inf for e in self.entries])
        self._to = np.array([e.valid_to.timestamp() if e.valid_to else inf for e in self.entries])
        self._windowed = bool(np.isfinite(self._from).any() or np.isfinite(self._to).any())
        self._all_ok = self._enabled.copy()
        self._index = {e.id: i for i, e in enumerate(self.entries)}
        kernels.warm_up()  # compile or load the query loop now, not on a customer's first message
        # small talk: on unless the model was built without it; a KB entry whose question is pure small
        # talk of an intent (the merchant's own "你好" entry) answers that intent instead of the default
        self.smalltalk_ = SmallTalkDetector() if self.info.get("smalltalk", True) else None
        self.smalltalk_entries_: dict[str, int] = {}
        if self.smalltalk_ is not None and smalltalk_entries is not None:
            self.smalltalk_entries_ = {k: int(v) for k, v in smalltalk_entries.items()}
        elif self.smalltalk_ is not None:
            for e, entry in enumerate(self.entries):
                for intent in self.smalltalk_.intents_of(normalize(q) for q in entry.questions()):
                    self.smalltalk_entries_.setdefault(intent, e)

    @property
    def dense_enabled(self) -> bool:
        return self.dense_index is not None

    @property
    def entries_by_id(self) -> Mapping[str, KBEntry]:
        """The entries by id, read-only, over the id index the model already keeps: callers that look up a
        reply's entry per message need no dict of their own (building one per message cost O(entries))."""
        return _EntriesById(self._index, self.entries)

    # ------------------------------------------------------------------ query path
    def represent(self, text: Any) -> QueryRep:
        """Normalize, tokenize and vectorize a message for every channel."""
        text = _clip(text)
        return self._vectorize(normalize(text))

    def represent_many(self, texts: Sequence[Any]) -> list[QueryRep]:
        """`represent` for many messages, the encoder called once per batch (builds, evaluations): one
        text at a time it pays its per-call cost for each."""
        norms = [normalize(_clip(t)) for t in texts]
        reps = [self._vectorize(n, dense=False) for n in norms]
        if self.dense_index is not None and self.embedder is not None:
            dense_texts = [strip_placeholders(n) for n in norms]
            vectors = encode_batched(self.embedder, dense_texts)
            for rep, text, v in zip(reps, dense_texts, vectors, strict=True):
                if text:
                    rep.dense = self.dense_index.prepare(v)
        return reps

    def _vectorize(self, norm: str, dense: bool = True) -> QueryRep:
        canon = self.tokenizer.canonical(norm)
        terms = query_terms(self.tokenizer.words(canon), char_ngrams(canon))
        ids, weights, unknown = self.sparse.vectorize(terms)
        vec = None
        if dense and self.dense_index is not None and self.embedder is not None:
            dense_text = strip_placeholders(norm)
            if dense_text:
                vec = self.dense_index.prepare(self.embedder.encode_one(dense_text))
        return QueryRep(norm, ids, weights, unknown, len(norm), vec)

    def entry_ok(self, now: datetime | float | None = None) -> np.ndarray:
        """Entries that may be offered now: enabled and inside their validity window."""
        if not self._windowed:
            return self._all_ok
        ts = time.time() if now is None else (now if isinstance(now, float | int) else now.timestamp())
        return self._enabled & (self._from <= ts) & (ts <= self._to)

    def rank(
        self,
        rep: QueryRep,
        entry_ok: np.ndarray,
        row_ok: np.ndarray | None = None,
        clf_probs: np.ndarray | None = None,
        sparse_part: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> Ranking:
        """Fuse the channels into one ordering of candidate entries.

        `row_ok` and `clf_probs` exist for build-time cross-validation, which hides the held-out
        question from the index and passes the out-of-fold classifier output. `sparse_part`: the
        sparse channel's (entry scores, top entries) for this message and `entry_ok`, when the cascade's
        first stage already computed them.
        """
        s_entry, top = sparse_part if sparse_part is not None else self._sparse_part(rep, entry_ok, row_ok)
        pools = [top]
        if rep.dense is not None and self.dense_index is not None:
            rows, _ = self.dense_index.search(rep.dense, DENSE_ROWS, row_ok)
            pools.append(self.row_owner[rows])
        if self.classifier is not None and clf_probs is None:
            clf_probs = self.classifier.predict_proba_one(rep.ids, rep.weights, rep.dense)
        if clf_probs is not None:
            pools.append(_top(np.where(entry_ok, clf_probs, -1.0), CLASSIFIER_ENTRIES))
        cands = np.unique(np.concatenate(pools)) if len(pools) > 1 else np.sort(pools[0])
        cands = cands[entry_ok[cands]]
        if cands.size == 0:
            return Ranking(
                cands,
                np.empty(0, np.float32),
                np.empty(0, np.float32),
                np.empty((0, 4), np.float32),
                (s_entry, top),
            )

        F = np.zeros((cands.size, 4), np.float32)
        F[:, 0] = s_entry[cands]
        if rep.dense is not None and self.dense_index is not None:
            F[:, 1], F[:, 2] = self._dense_features(rep.dense, cands, row_ok)
        if clf_probs is not None:
            F[:, 3] = clf_probs[cands]
        fused = self.ranker.score(F)
        order = np.argsort(-fused, kind="stable")
        cands, fused, F = cands[order], fused[order], F[order]

        best = cands[0]
        s_best = int(np.argmax(F[:, 0]))
        d_best = int(np.argmax(F[:, 1])) if rep.dense is not None else -1
        calib = np.array(
            [
                fused[0],
                fused[0] - (fused[1] if fused.size > 1 else 0.0),
                *F[0],
                float(cands[s_best] == best),
                float(d_best >= 0 and cands[d_best] == best),
                np.log1p(rep.n_chars),
                rep.unknown_share,
            ],
            np.float32,
        )
        return Ranking(cands, fused, calib, F, (s_entry, top))

    def _sparse_part(
        self, rep: QueryRep, entry_ok: np.ndarray, row_ok: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The sparse channel's best score per entry and its top entries."""
        row_scores = self.sparse.scores(rep.ids, rep.weights)
        if row_ok is not None:
            row_scores = np.where(row_ok, row_scores, 0.0)
        return kernels.entry_scores_top(row_scores, self.row_ptr, entry_ok, SPARSE_ENTRIES)

    def _dense_features(
        self, q: np.ndarray, cands: np.ndarray, row_ok: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Max cosine over each candidate's questions, and cosine with its centroid."""
        assert self.dense_index is not None and self.centroids is not None
        starts = self.row_ptr[cands]
        lens = self.row_ptr[cands + 1] - starts
        offsets = np.cumsum(lens) - lens
        rows = np.repeat(starts - offsets, lens) + np.arange(int(lens.sum()))
        V = self.dense_index.vectors_[rows]
        sims = V @ q
        if row_ok is None:
            return np.maximum.reduceat(sims, offsets), self.centroids[cands] @ q
        ok = row_ok[rows]
        d_max = np.maximum.reduceat(np.where(ok, sims, -2.0), offsets)
        cen = np.add.reduceat(V * ok[:, None], offsets, axis=0)
        norms = np.linalg.norm(cen, axis=1)
        norms[norms == 0] = 1.0
        return d_max, (cen @ q) / norms

    def match(
        self,
        text: Any,
        top_k: int = 5,
        now: datetime | float | None = None,
        smalltalk: bool | Collection[str] = True,
        exclude: Collection[str] = (),
        candidate_confidence: bool = False,
        cascade: bool | None = None,
    ) -> MatchResult:
        """Rank the KB for one customer message and decide what to do with it.

        `smalltalk`: recognise the built-in small-talk intents (all, none, or the ones named): a message
        that is only small talk gets Decision.SMALLTALK, and small talk around a question is taken off
        before the question is matched. `exclude`: entry ids not to offer (a follow-up asks about
        something else than the entry just answered). `candidate_confidence`: estimate P(right) for every
        runner-up too (assist suggestions); otherwise only the best candidate and clarify options carry one,
        which keeps the estimate off the hot path. `cascade`: let the model's dense-skip cascade answer
        without the encoder where its first stage decides (engine.cascade); None: the model's
        `use_cascade`.
        """
        top_k = max(1, int(top_k))
        text = _clip(text)
        norm = normalize(text)
        if not norm:
            return MatchResult(Decision.HANDOFF, "empty message: nothing to match after normalization")
        st = self._smalltalk(norm, smalltalk)
        if st.pure and st.intent is not None:
            return self._smalltalk_result(norm, st.intent, now)
        phrase = self.policy.human_request(norm)
        if phrase:
            return MatchResult(
                Decision.HANDOFF, f"explicit request for a human agent ('{phrase}')", normalized=norm
            )
        result = self._match_question(
            st.rest if st.intents else norm,
            top_k,
            now,
            exclude,
            candidate_confidence,
            self.use_cascade if cascade is None else cascade,
        )
        result.normalized = norm
        result.smalltalk_around = list(st.intents)
        return result

    def _smalltalk(self, norm: str, enabled: bool | Collection[str]) -> SmallTalk:
        if self.smalltalk_ is None or enabled is False:
            return SmallTalk((), norm)
        if enabled is True or set(enabled) >= set(INTENTS):
            return self.smalltalk_.parse(norm)
        return SmallTalkDetector(enabled=enabled).parse(norm)

    def _smalltalk_result(self, norm: str, intent: str, now: datetime | float | None) -> MatchResult:
        """Pure small talk: the merchant's own entry for the intent if the KB has one, else SMALLTALK."""
        e = self.smalltalk_entries_.get(intent)
        if e is not None and self.entry_ok(now)[e]:
            entry = self.entries[e]
            return MatchResult(
                Decision.ANSWER,
                f"small talk ({intent}) answered by the KB's own entry",
                confidence=EXACT_CONFIDENCE,
                entry_id=entry.id,
                answer=entry.answer,
                candidates=[
                    Candidate(entry.id, entry.question, 1.0, entry.answer, entry.category, EXACT_CONFIDENCE)
                ],
                normalized=norm,
                smalltalk=intent,
            )
        return MatchResult(Decision.SMALLTALK, f"small talk: {intent}", normalized=norm, smalltalk=intent)

    def _match_question(
        self,
        norm: str,
        top_k: int,
        now: datetime | float | None,
        exclude: Collection[str] = (),
        candidate_confidence: bool = False,
        cascade: bool = False,
    ) -> MatchResult:
        """Rank and decide for a normalized question (small talk and human requests already handled)."""
        rep = self._vectorize(norm, dense=False)
        ok = self.entry_ok(now)
        if exclude:
            ok = ok.copy()
            ok[[self._index[i] for i in exclude if i in self._index]] = False
        if not self.entries:
            return MatchResult(Decision.HANDOFF, "empty knowledge base", normalized=rep.normalized)
        embedder = self.embedder if self.dense_index is not None else None
        dense_text = strip_placeholders(norm) if embedder is not None else ""
        if rep.ids.size == 0 and not dense_text:
            return MatchResult(
                Decision.HANDOFF,
                "no word of the message occurs in the knowledge base",
                normalized=rep.normalized,
            )
        sparse_part = None
        if embedder is not None and dense_text:
            vec = embedder.cached(dense_text)
            if vec is None and cascade and self.cascade_ is not None and rep.ids.size:
                first = self._first_stage(rep, ok, top_k, candidate_confidence, self.cascade_)
                if isinstance(first, MatchResult):
                    return first
                sparse_part = first
            assert self.dense_index is not None
            rep.dense = self.dense_index.prepare(vec if vec is not None else embedder.encode_one(dense_text))
        ranking = self.rank(rep, ok, sparse_part=sparse_part)
        if ranking.cands.size == 0:
            return MatchResult(
                Decision.HANDOFF, "no entry of the knowledge base is active now", normalized=rep.normalized
            )
        p = self.calibrator.proba(ranking.calib)
        return self._decide(
            rep, ranking, p, self.policy.t_answer, top_k, candidate_confidence, _verbatim(ranking)
        )

    def _first_stage(
        self, rep: QueryRep, ok: np.ndarray, top_k: int, candidate_confidence: bool, cascade: Cascade
    ) -> MatchResult | tuple[np.ndarray, np.ndarray] | None:
        """The cascade's first stage: the decision when it answers alone (the message is one of an
        entry's KB questions, or stage 1's own calibrated confidence reaches t_skip), else the sparse
        part it computed, for the full ranking to reuse."""
        ranking = self.rank(rep, ok)
        if ranking.cands.size == 0:
            return ranking.sparse_part
        verbatim = _verbatim(ranking)
        skip, p = cascade.skips(ranking.calib)
        if not (skip or verbatim):
            return ranking.sparse_part
        result = self._decide(
            rep, ranking, p, cascade.t_skip, top_k, candidate_confidence, verbatim, cascade.calibrator
        )
        result.reason += " (the sparse and classifier channels decided: the encoder was skipped)"
        result.dense_skipped = True
        return result

    def match_follow_up(
        self,
        context: str,
        text: Any,
        top_k: int = 5,
        now: datetime | float | None = None,
        exclude: Collection[str] = (),
    ) -> MatchResult:
        """A short message read after the previous question `context` (那保修呢 after 电池能用多久).

        The previous question plus the message is ranked (the entries in `exclude`, the one just answered,
        left out) and the follow-up calibrator fitted at build time on simulated follow-ups gives P(right),
        from that reading, the message's own reading and how well the winner covers the message's words.
        A model without that calibrator reads the combined text as any message.
        """
        from engine.followup import compose, follow_up_features

        norm = normalize(text)
        combined = compose(context, norm)
        if self.follow_up_ is None or not norm or self.policy.t_follow_up is None:
            return self.match(combined, top_k=top_k, now=now, exclude=exclude, smalltalk=False)
        ok = self.entry_ok(now)
        if exclude:
            ok = ok.copy()
            ok[[self._index[i] for i in exclude if i in self._index]] = False
        rep_c = self._vectorize(normalize(combined))
        rep_f = self._vectorize(norm)
        ranking, x = follow_up_features(self, rep_c, rep_f, ok)
        if x is None:
            return MatchResult(
                Decision.HANDOFF, "nothing in the knowledge base matches the follow-up", normalized=norm
            )
        p = self.follow_up_.proba(x)
        result = self._decide(rep_c, ranking, p, self.policy.t_follow_up, top_k, False, False)
        result.normalized = norm
        return result

    def _decide(
        self,
        rep: QueryRep,
        ranking: Ranking,
        p: float,
        t_answer: float,
        top_k: int,
        candidate_confidence: bool,
        verbatim: bool,
        calibrator: LinearModel | None = None,
    ) -> MatchResult:
        """The decision for a ranking with calibrated confidence p, and its candidates and options
        (runners-up estimated by `calibrator`, by default the full model's)."""
        pol = self.policy
        best = self.entries[ranking.cands[0]]
        if verbatim:
            p = max(p, EXACT_CONFIDENCE)
            decision, reason = Decision.ANSWER, "the message is one of this entry's KB questions"
        elif p >= t_answer:
            decision, reason = Decision.ANSWER, f"confidence {p:.2f} >= answer threshold {t_answer:.2f}"
        elif p >= pol.t_clarify:
            decision = Decision.CLARIFY
            reason = (
                f"confidence {p:.2f} between the clarify ({pol.t_clarify:.2f}) "
                f"and answer ({t_answer:.2f}) thresholds"
            )
        else:
            decision, reason = Decision.HANDOFF, f"confidence {p:.2f} < clarify threshold {pol.t_clarify:.2f}"
        shown = min(ranking.cands.size, max(top_k, pol.clarify_k))
        if candidate_confidence or decision is Decision.CLARIFY:
            conf = self._candidate_confidences(rep, ranking, shown, p, calibrator or self.calibrator)
        else:  # the best only: runners-up are estimated on request (see `match`)
            conf = np.zeros(shown)
            conf[0] = p
        candidates = self._candidates(ranking, min(top_k, shown), conf)
        return MatchResult(
            decision,
            reason,
            confidence=p,
            entry_id=best.id,
            answer=best.answer if decision is Decision.ANSWER else None,
            candidates=candidates,
            options=self._candidates(ranking, min(pol.clarify_k, shown), conf)
            if decision is Decision.CLARIFY
            else [],
            normalized=rep.normalized,
        )

    def _candidate_confidences(
        self, rep: QueryRep, ranking: Ranking, n: int, p_best: float, calibrator: LinearModel
    ) -> np.ndarray:
        """An estimated P(right) for each of the first n candidates, so no runner-up shows a bare 0.

        The best candidate keeps the calibrated confidence p_best. Each runner-up is scored by the same
        calibrator on the features it would have as the winner (its evidence, its negative margin to the
        best, whether each channel ranks it first); the calibrator was fitted on winners only, so this is
        an estimate, kept coherent with the ranking: no higher than the candidate above it, and the
        runners-up together at most 1 - p_best (at most one entry is right). Costs one small matrix.
        """
        conf = np.full(n, p_best)
        if n <= 1:
            return conf
        # the winner's calibration row, with each runner-up's own evidence, margin and agreement in it
        X = np.tile(ranking.calib, (n - 1, 1))
        fused = ranking.fused[1:n]
        X[:, 0] = fused
        X[:, 1] = fused - ranking.fused[0]
        X[:, 2:6] = ranking.evidence[1:n]
        X[:, 6:8] = 0.0
        s_best = int(np.argmax(ranking.evidence[:, 0]))
        if 0 < s_best < n:
            X[s_best - 1, 6] = 1.0
        if rep.dense is not None:
            d_best = int(np.argmax(ranking.evidence[:, 1]))
            if 0 < d_best < n:
                X[d_best - 1, 7] = 1.0
        rest = np.minimum.accumulate(np.minimum(calibrator.proba_many(X), p_best))
        total = float(rest.sum())
        if total > 1.0 - p_best:
            rest *= (1.0 - p_best) / total
        conf[1:] = rest
        return conf

    def _candidates(self, ranking: Ranking, n: int, confidence: np.ndarray) -> list[Candidate]:
        """The first n candidates as results (plain Python numbers: one conversion per array, not one
        numpy scalar per field)."""
        entries = self.entries
        return [
            Candidate(entry.id, entry.question, score, entry.answer, entry.category, conf)
            for entry, score, conf in zip(
                map(entries.__getitem__, ranking.cands[:n].tolist()),
                ranking.fused[:n].tolist(),
                confidence[:n].tolist(),
                strict=True,
            )
        ]

    def memory_bytes(self) -> int:
        """About how much memory the model holds once its queries have touched it: every array
        (memory-mapped ones in full), the HNSW graph, and the texts, entries and vocabulary as Python
        objects. A replica's model budget (KEFU_MODEL_MEMORY_MB) is counted in these."""
        seen: set[int] = set()
        total = 0
        for obj in (self, self.sparse, self.dense_index, self.classifier):
            for value in vars(obj).values() if obj is not None else ():
                if isinstance(value, np.ndarray) and id(value) not in seen:
                    seen.add(id(value))
                    total += value.nbytes
        di = self.dense_index
        if di is not None and di.index_ is not None:  # HNSW: its own copy of the vectors and the graph
            total += di.vectors_.nbytes + len(di.vectors_) * di.hnsw_m * 2 * 4
        texts = sum(len(t) for t in self.row_texts) + sum(len(e.answer) for e in self.entries)
        # str objects (4 bytes per CJK character plus headers), KBEntry objects, vocabulary dict entries
        return (
            total
            + 4 * texts
            + 120 * len(self.row_texts)
            # Python objects: about 1.1 MB in all for a 1,000-question model (measured with tracemalloc)
            + 600 * len(self.entries)
            + 80 * len(self.sparse.vocabulary_)
        )

    def __len__(self) -> int:
        return len(self.entries)

    def __repr__(self) -> str:
        return f"Matcher(entries={len(self.entries)}, rows={len(self.row_texts)}, dense={self.dense_enabled})"


class _EntriesById(Mapping[str, KBEntry]):
    __slots__ = ("_entries", "_index")

    def __init__(self, index: dict[str, int], entries: list[KBEntry]) -> None:
        self._index, self._entries = index, entries

    def __getitem__(self, entry_id: str) -> KBEntry:
        return self._entries[self._index[entry_id]]

    def __contains__(self, entry_id: object) -> bool:
        return entry_id in self._index

    def __iter__(self) -> Iterator[str]:
        return iter(self._index)

    def __len__(self) -> int:
        return len(self._index)


def _clip(text: Any) -> Any:
    """A message cut to MAX_MESSAGE_CHARS (non-text passes through: normalize says what is wrong)."""
    return text[:MAX_MESSAGE_CHARS] if isinstance(text, str) and len(text) > MAX_MESSAGE_CHARS else text


def _verbatim(ranking: Ranking) -> bool:
    """The best candidate is the only one with one of its KB questions word for word: the merchant's own
    question for this entry. Held-out calibration never sees such a message (the question is hidden), so
    the rule answers it rather than the calibrator."""
    exact = ranking.evidence[:, 0] >= EXACT_COSINE
    return bool(exact[0] and not exact[1:].any())


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest scores (unordered)."""
    if scores.size <= k:
        return np.arange(scores.size)
    return np.argpartition(-scores, k - 1)[:k]
