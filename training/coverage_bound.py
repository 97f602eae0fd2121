"""How much answered coverage a better confidence could buy on a labelled set: an upper bound.

The issue asks for more coverage at the promised precision. Coverage depends on two things: how well the
confidence orders right answers above wrong ones, and where the threshold is put. This script takes the
threshold rule out (an oracle threshold on the set itself) and then the calibration data too (a calibrator
cross-fitted on half of the set's own labelled queries, scored on the other half, with more features than
the engine's calibrator reads). Neither is available to a real build; both bound what any calibrator over
these channels can reach. Usage:

    python -m training.coverage_bound ../shared/data/smp2017 [--max-queries 3000] [--precision 0.94]

It prints the coverage at the precision for: the model's own decisions, an oracle threshold on its
confidence, and cross-fitted logistic and gradient-boosted calibrators on the engine's 10 calibration
features and on those plus extra pair features (per-channel margins and ranks, character overlap with the
winner's closest question, characters only one side has, a negation mismatch, length ratio).
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np

NEGATIONS = frozenset("不没别未无非")


def oracle_coverage(score: np.ndarray, right: np.ndarray, precision: float) -> float:
    """The largest share of all queries answerable, by descending score, at `precision` or better."""
    order = np.argsort(-score, kind="stable")
    cum = np.cumsum(right[order]) / np.arange(1, len(order) + 1)
    ok = np.flatnonzero(cum >= precision)
    return float((ok.max() + 1) / len(order)) if ok.size else 0.0


def features(data_dir: Path, max_queries: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per query: (features, top-1 right, model confidence, answered by the model)."""
    from engine import Matcher
    from engine.normalize import normalize

    with open(data_dir / "queries.csv", encoding="utf-8", newline="") as f:
        queries = list(csv.DictReader(f))[:max_queries]
    m = Matcher.build(data_dir / "kb.csv")
    ids = [e.id for e in m.entries]
    ok = m.entry_ok()
    X, right, conf, answered = [], [], [], []
    for q in queries:
        rep = m.represent(q["query"])
        r = m.rank(rep, ok)
        if r.cands.size == 0:
            continue
        best = int(r.cands[0])
        texts = [normalize(t) for t in m.row_texts[m.row_ptr[best] : m.row_ptr[best + 1]]]
        chars = set(rep.normalized)
        overlap = [len(chars & set(t)) / max(1, len(chars | set(t))) for t in texts]
        closest = texts[int(np.argmax(overlap))]
        extra: list[float] = []
        for c in range(r.evidence.shape[1]):
            col = r.evidence[:, c]
            others = np.delete(col, 0)
            extra += [float(col[0] - (others.max() if others.size else 0.0)), float((col > col[0]).sum())]
        extra += [
            max(overlap),
            len(chars - set(closest)),
            len(set(closest) - chars),
            float(bool(NEGATIONS & chars) != bool(NEGATIONS & set(closest))),
            len(closest) / max(1, len(rep.normalized)),
            float(r.cands.size),
        ]
        X.append(np.concatenate([r.calib, extra]))
        right.append(bool(q["expected_id"]) and ids[best] == q["expected_id"])
        result = m.match(q["query"])
        conf.append(result.confidence)
        answered.append(str(result.decision).lower().endswith("answer"))
    return np.asarray(X, float), np.asarray(right), np.asarray(conf), np.asarray(answered)


def cross_fit(X: np.ndarray, y: np.ndarray, kind: str, seed: int = 0) -> np.ndarray:
    """Each query's probability from a model fitted on the other half."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    fold = np.random.default_rng(seed).integers(2, size=len(y))
    p = np.zeros(len(y))
    for f in range(2):
        model = (
            make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
            if kind == "logistic"
            else HistGradientBoostingClassifier(max_iter=200, learning_rate=0.05, max_leaf_nodes=15)
        )
        model.fit(X[fold != f], y[fold != f])
        p[fold == f] = model.predict_proba(X[fold == f])[:, 1]
    return p


def main(argv: list[str]) -> int:
    if not argv or argv[0].startswith("-"):
        print(__doc__)
        return 2
    data = Path(argv[0])
    max_q = int(argv[argv.index("--max-queries") + 1]) if "--max-queries" in argv else 3000
    precision = float(argv[argv.index("--precision") + 1]) if "--precision" in argv else 0.94
    X, right, conf, answered = features(data, max_q)
    print(f"{data.name}: {len(right)} queries, top-1 right {right.mean():.3f} of all")
    print(f"the model's decisions: answered {answered.mean():.3f} at precision {right[answered].mean():.3f}")
    print(f"perfect ordering at {precision}: {min(1.0, right.sum() / precision / len(right)):.3f}")
    oracle = oracle_coverage(conf, right, precision)
    print(f"oracle threshold on the model's confidence at {precision}: {oracle:.3f}")
    sets = (("the 10 calibration features", slice(0, 10)), ("those and pair features", slice(None)))
    for name, cols in sets:
        for kind in ("logistic", "boosted"):
            p = cross_fit(X[:, cols], right, kind)
            print(f"cross-fitted {kind} on {name}: {oracle_coverage(p, right, precision):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
