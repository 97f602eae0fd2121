"""Would a reranker over pair features rank better than the engine's linear fusion? A measurement.

Issue 8 asks for a learned reranker over the top candidates, "a gradient-boosted model or a linear model,
whichever measures better". This script measures it before anything ships: for each message it takes the
fused ranking's top candidates and describes each (query, candidate) pair by the channels' evidence, the
candidate's rank and gap to the best in each channel, and pair features read off the candidate's closest
question: the IDF share of the message's words and characters the question lacks and of the question's
words and characters the message lacks (the words only one side has), a negation mismatch
(不 没 无 别 未 非 否), a number mismatch, the length ratio, and the number of questions of the
entry (all of them: counting only the visible ones would tell a held-out question's entry by the one it
lacks). A logistic regression and a histogram gradient-boosted model then rerank on those features, trained:

- on the KB's own held-out questions (what a build has: the paraphrases the calibration hides, or
  synthetic ones for a KB without paraphrases), scored two ways: cross-fitted across two halves of the
  entries, and on the set's real queries when the set has them;
- on half of the set's labelled real queries, scored on the other half (what labelled logs could buy),
  three random halvings.

It prints top-1 of the fused ranking and of each reranker on the same messages. Usage:

    python -m training.rerank_study ../shared/data/smp2017 [--max-queries 3000] [--top 10]
    python -m training.rerank_study models/demo-shop-kb.csv            # a KB alone: the KB's own questions
"""

from __future__ import annotations

import csv
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

NEGATION = re.compile("[不没无别未非否]")
NUMBER = re.compile(r"\d+")
CHANNEL_COLS = 4  # fusion.CANDIDATE_FEATURES
PAIR_FEATURES = 9  # the last columns: what the pair says beyond the channels' scores
N_FEATURES = CHANNEL_COLS + 3 + 2 * CHANNEL_COLS + PAIR_FEATURES


@dataclass
class Groups:
    """Candidates of many messages: features, whether each is the right entry, and its message."""

    X: np.ndarray
    right: np.ndarray
    group: np.ndarray
    n_messages: int  # messages whose right entry is in the KB (the top-1 denominator)

    def subset(self, keep_groups: np.ndarray, n_messages: int) -> Groups:
        mask = np.isin(self.group, keep_groups)
        return Groups(self.X[mask], self.right[mask], self.group[mask], n_messages)


def top1(score: np.ndarray, g: Groups) -> float:
    """Share of messages (in scope) whose best-scored candidate is right."""
    order = np.lexsort((-score, g.group))
    first = np.r_[True, g.group[order][1:] != g.group[order][:-1]]
    return float(g.right[order][first].sum() / max(1, g.n_messages))


class PairFeatures:
    """(message, candidate) features for the top `k` candidates of a fused ranking."""

    def __init__(self, m: Any, X_rows: Any, k: int) -> None:
        from engine.normalize import normalize

        self.m, self.X_rows, self.k = m, X_rows.tocsr(), k
        vocab = m.sparse.vocabulary_
        self.is_word = np.zeros(len(vocab), bool)
        self.is_char = np.zeros(len(vocab), bool)
        for term, i in vocab.items():
            self.is_word[i] = term.startswith("#")
            self.is_char[i] = not term.startswith("#") and len(term) == 1
        self.idf = m.sparse.idf_
        self.rows = [normalize(t) for t in m.row_texts]

    def __call__(
        self, rep: Any, ranking: Any, row_ok: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        m, k = self.m, self.k
        cands, ev, fused = ranking.cands[:k], ranking.evidence[:k], ranking.fused[:k]
        n = cands.size
        out = np.zeros((n, N_FEATURES), np.float32)
        out[:, :CHANNEL_COLS] = ev
        out[:, 4], out[:, 5], out[:, 6] = fused, fused - fused[0], np.arange(n)
        for j in range(CHANNEL_COLS):
            out[:, 7 + j] = ev[:, j] - ev[:, j].max()
            out[:, 11 + j] = np.argsort(np.argsort(-ev[:, j], kind="stable"), kind="stable")
        row_scores = m.sparse.scores(rep.ids, rep.weights) if rep.ids.size else np.zeros(len(m.row_texts))
        q_terms = np.zeros(len(self.idf), bool)
        q_terms[rep.ids] = True
        q_neg, q_num = set(NEGATION.findall(rep.normalized)), set(NUMBER.findall(rep.normalized))
        for c, e in enumerate(cands):
            rows = np.arange(m.row_ptr[e], m.row_ptr[e + 1])
            if row_ok is not None:
                rows = rows[row_ok[rows]]
            if rows.size == 0:
                continue
            r = int(rows[np.argmax(row_scores[rows])])
            r_ids = self.X_rows.indices[self.X_rows.indptr[r] : self.X_rows.indptr[r + 1]]
            r_terms = np.zeros(len(self.idf), bool)
            r_terms[r_ids] = True
            col = 15
            for kind in (self.is_word, self.is_char):
                q_kind, r_kind = rep.ids[kind[rep.ids]], r_ids[kind[r_ids]]
                out[c, col] = _missing_share(q_kind, r_terms, self.idf)
                out[c, col + 1] = _missing_share(r_kind, q_terms, self.idf)
                col += 2
            text = self.rows[r]
            out[c, 19] = float(set(NEGATION.findall(text)) != q_neg)
            r_num = set(NUMBER.findall(text))
            out[c, 20] = float(bool(r_num or q_num) and r_num != q_num)
            out[c, 21] = np.log((1 + len(rep.normalized)) / (1 + len(text)))
            out[c, 22] = m.row_ptr[e + 1] - m.row_ptr[e]  # all its questions: hidden ones are no hint
            out[c, 23] = row_scores[r]
        return cands, out


def _missing_share(ids: np.ndarray, other: np.ndarray, idf: np.ndarray) -> float:
    """IDF share of `ids` the other side does not have."""
    if ids.size == 0:
        return 0.0
    w = idf[ids]
    return float(w[~other[ids]].sum() / w.sum())


def _stack(parts: list[tuple[np.ndarray, np.ndarray, int]], n_messages: int) -> Groups:
    X = np.vstack([p[1] for p in parts]) if parts else np.zeros((0, N_FEATURES), np.float32)
    right = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, bool)
    group = np.concatenate([np.full(p[1].shape[0], p[2]) for p in parts]) if parts else np.zeros(0, int)
    return Groups(X, right, group, n_messages)


def kb_examples(m: Any, feats: PairFeatures, X_rows: Any, seed: int) -> tuple[Groups, np.ndarray, bool]:
    """The build's in-scope held-out examples as candidate groups; each example's right entry."""
    from engine.build import held_out_examples

    multi = np.diff(m.row_ptr) >= 2
    in_ex, _, synthetic = held_out_examples(m, X_rows, m.row_owner, multi, np.random.default_rng(seed), 1500)
    parts, gold = [], []
    for i, ex in enumerate(in_ex):
        ranking = ex.rank(m)
        gold.append(ex.gold)
        if ranking.cands.size:
            cands, X = feats(ex.rep, ranking, ex._masks(m)[1])
            parts.append((cands == ex.gold, X, i))
    return _stack(parts, len(in_ex)), np.asarray(gold), synthetic


def query_groups(m: Any, feats: PairFeatures, queries: list[dict[str, str]]) -> Groups:
    index = {e.id: i for i, e in enumerate(m.entries)}
    reps = m.represent_many([q["query"] for q in queries])
    ok = m.entry_ok()
    parts = []
    for i, (q, rep) in enumerate(zip(queries, reps, strict=True)):
        gold = index.get(q.get("expected_id") or "", -1)
        if gold < 0:
            continue
        ranking = m.rank(rep, ok)
        if ranking.cands.size:
            cands, X = feats(rep, ranking)
            parts.append((cands == gold, X, i))
    return _stack(parts, sum(1 for q in queries if q.get("expected_id")))


def rerankers() -> dict[str, Any]:
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression

    return {
        "logistic": lambda: LogisticRegression(C=1.0, max_iter=3000),
        "boosted": lambda: HistGradientBoostingClassifier(
            max_iter=200, learning_rate=0.05, max_leaf_nodes=15, min_samples_leaf=20, random_state=0
        ),
    }


def scores(train: Groups, test: Groups) -> dict[str, float]:
    """top-1 on `test` of the fused ranking and of each reranker trained on `train`, with and without the
    pair features."""
    out = {"fused": top1(-test.X[:, 6], test)}
    if not train.right.any() or train.right.all():
        return out
    for cols_name, cols in (("channels", slice(0, N_FEATURES - PAIR_FEATURES)), ("+pair", slice(None))):
        Xa = train.X[:, cols]
        mu, sd = Xa.mean(0), Xa.std(0) + 1e-9
        for name, make in rerankers().items():
            model = make().fit((Xa - mu) / sd, train.right)
            s = model.predict_proba((test.X[:, cols] - mu) / sd)[:, 1]
            out[f"{name} {cols_name}"] = top1(s, test)
    return out


def _row(label: str, result: dict[str, float], n: int) -> str:
    cells = "  ".join(f"{k} {v:.3f}" for k, v in result.items())
    return f"{label:<44} n={n:<5} {cells}"


def main(argv: list[str] | None = None) -> int:
    import warnings

    warnings.filterwarnings("ignore")
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0].startswith("-"):
        print(__doc__)
        return 2
    max_q = int(args[args.index("--max-queries") + 1]) if "--max-queries" in args else 3000
    k = int(args[args.index("--top") + 1]) if "--top" in args else 10
    src = Path(args[0])
    kb, qfile = (src / "kb.csv", src / "queries.csv") if src.is_dir() else (src, None)
    from engine import Matcher
    from engine.build import _row_matrix

    m = Matcher.build(kb)
    X_rows = _row_matrix(m)
    feats = PairFeatures(m, X_rows, k)
    ex, gold, synthetic = kb_examples(m, feats, X_rows, seed=1)
    print(
        f"{kb}: {len(m.entries)} entries, {len(m.row_texts)} questions; {ex.n_messages} held-out KB "
        f"questions{' (synthetic paraphrases)' if synthetic else ''}; top {k} candidates reranked"
    )
    # 1. the KB's own questions, cross-fitted over two halves of the entries
    rng = np.random.default_rng(0)
    entries = rng.permutation(len(m.entries))
    half = set(entries[: len(entries) // 2].tolist())
    in_a = np.array([g in half for g in gold])
    ids = np.arange(len(gold))
    a, b = ids[in_a], ids[~in_a]
    res_ab = scores(ex.subset(a, len(a)), ex.subset(b, len(b)))
    res_ba = scores(ex.subset(b, len(b)), ex.subset(a, len(a)))
    both = {key: (res_ab[key] * len(b) + res_ba[key] * len(a)) / len(gold) for key in res_ab if key in res_ba}
    print(_row("KB questions, cross-fitted by entry halves", both, len(gold)))
    if qfile is None or not qfile.exists():
        return 0
    with qfile.open(encoding="utf-8") as f:
        queries = list(csv.DictReader(f))[:max_q]
    real = query_groups(m, feats, queries)
    # 2. trained on the KB's questions, scored on real queries
    print(_row("trained on KB questions, real queries", scores(ex, real), real.n_messages))
    # 3. trained on half of the labelled queries, scored on the other half
    groups = np.unique(real.group)
    for i in range(3):
        perm = np.random.default_rng(10 + i).permutation(groups)
        train_g, test_g = perm[: len(perm) // 2], perm[len(perm) // 2 :]
        res = scores(real.subset(train_g, len(train_g)), real.subset(test_g, len(test_g)))
        print(_row(f"trained on labelled half {i + 1}, other half", res, len(test_g)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
