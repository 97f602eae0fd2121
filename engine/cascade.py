"""The dense-skip cascade: answer without the sentence encoder when the other channels already decide.

Encoding a new message costs about 8 ms here; everything else in a match costs well under one. Stage 1
ranks with the sparse channel and the classifier's sparse part only, and its own calibrator (fitted at
build time on the same held-out examples as the full model's) gives P(stage 1's best entry is right).
From `t_skip` up the message is answered from stage 1; below it, the full model runs. The rule is
learned, never set by hand: `t_skip` is the lowest threshold at which the calibration examples stage 1
would answer both keep the answer promise (the precision's lower bound meets the target, as for the
full model's threshold) and are answered by the full model too, with the same entry, at least
`MIN_AGREEMENT` of the time: skipping changes a decision or a top-1 entry for at most that share of the
skipped messages. Where no threshold qualifies
(a KB whose words do not separate its entries) the model has no cascade and every message is encoded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engine.decide import precision_bound
from engine.fusion import LinearModel

MIN_AGREEMENT = 0.995  # share of skipped calibration examples the full model answers the same way


@dataclass
class Cascade:
    """Stage 1's calibrator and the confidence from which it answers alone."""

    calibrator: LinearModel
    t_skip: float
    report: dict[str, Any] = field(default_factory=dict)

    def skips(self, calib: np.ndarray) -> tuple[bool, float]:
        """Whether stage 1 answers a message with these calibration features, and its confidence."""
        p = self.calibrator.proba(calib)
        return p >= self.t_skip, p

    def to_dict(self) -> dict[str, Any]:
        return {"calibrator": self.calibrator.to_dict(), "t_skip": self.t_skip, "report": self.report}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Cascade:
        return cls(LinearModel.from_dict(d["calibrator"]), float(d["t_skip"]), dict(d.get("report", {})))


def skip_threshold(
    p: np.ndarray,
    correct: np.ndarray,
    agree: np.ndarray,
    weights: np.ndarray,
    target_precision: float,
    confidence: float | None,
    min_agreement: float = MIN_AGREEMENT,
) -> float | None:
    """The lowest stage-1 confidence whose answers (examples at or above it) meet the precision target
    (its lower bound with `confidence`, else the point estimate) and agree with the full model's answer
    at least `min_agreement` of the time (weighted); None when no threshold does."""
    order = np.argsort(-p, kind="stable")
    w = weights[order]
    w_sum = np.cumsum(w)
    ok = correct[order].astype(float)
    prec = precision_bound(ok, w, confidence) if confidence else np.cumsum(w * ok) / w_sum
    agreement = np.cumsum(w * agree[order]) / w_sum
    good = np.flatnonzero((prec >= target_precision) & (agreement >= min_agreement))
    if good.size == 0:
        return None
    return float(p[order][good[-1]])


def fit_cascade(
    X1: np.ndarray,
    correct1: np.ndarray,
    agree: np.ndarray,
    weights: np.ndarray,
    target_precision: float,
    confidence: float | None,
    calibrator_and_oof: tuple[LinearModel, np.ndarray],
) -> Cascade | None:
    """The cascade for stage-1 features `X1` of the calibration examples, given whether stage 1's
    winner was right (`correct1`) and whether the full model answered with it (`agree`), and stage 1's
    calibrator with its out-of-fold probabilities (thresholds chosen on in-sample ones would be too
    low). None: stage 1 never decides alone."""
    calibrator, p = calibrator_and_oof
    t = skip_threshold(p, correct1, agree, weights, target_precision, confidence)
    if t is None:
        return None
    skipped = p >= t
    w = weights / weights.sum()
    report = {
        "rule": (
            f"answer from the sparse and classifier channels alone when their calibrated confidence is at "
            f"least t_skip; chosen on the calibration examples: answers meet the target precision and name "
            f"what the full model answers at least {MIN_AGREEMENT:.1%} of the time"
        ),
        "t_skip": round(t, 4),
        "skip_share": round(float(w[skipped].sum()), 4),
        "skip_precision": round(float((w * correct1)[skipped].sum() / max(w[skipped].sum(), 1e-12)), 4),
        "skip_agreement": round(float((w * agree)[skipped].sum() / max(w[skipped].sum(), 1e-12)), 4),
        "examples": len(p),
    }
    return Cascade(calibrator, t, report)
