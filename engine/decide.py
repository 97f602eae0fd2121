"""Threshold policy: answer, offer the closest questions, or hand off to a human agent."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from engine.normalize import normalize

DEFAULT_HUMAN_PHRASES = (
    "转人工",
    "人工客服",
    "人工服务",
    "找人工",
    "要人工",
    "真人",
    "投诉",
    "客服经理",
    "你们领导",
    "换人工",
    "叫人工",
    "接人工",
    "人工呢",
    "不要机器人",
)
# A whole message of only these asks for a human too; inside a longer one they are product words
# (人工智能笔记本, 人工费).
HUMAN_WORDS_ALONE = frozenset({"人工", "人工人工"})
# 要人工 in 安装要人工费吗 is a fee, not a request: a phrase ending in 人工 followed by these is a word
_PRODUCT_WORD_ENDINGS = ("费", "智能", "成本")


@dataclass
class DecisionPolicy:
    """Thresholds on the calibrated confidence plus the explicit-human-request rule."""

    t_answer: float = 0.8
    t_clarify: float = 0.3
    clarify_k: int = 3
    human_phrases: Sequence[str] = field(default_factory=lambda: list(DEFAULT_HUMAN_PHRASES))
    # answer threshold for a follow-up read with the previous question (engine.followup); None: t_answer
    t_follow_up: float | None = None

    def __post_init__(self) -> None:
        words = sorted({normalize(p) for p in self.human_phrases if normalize(p)}, key=len, reverse=True)
        self._human_re = re.compile("|".join(re.escape(w) for w in words)) if words else None

    def human_request(self, normalized: str) -> str | None:
        """The phrase that asks for a human, if any (matched on normalized text)."""
        alone = normalized.replace(" ", "")
        if alone in HUMAN_WORDS_ALONE:
            return alone
        if self._human_re is None:
            return None
        for m in self._human_re.finditer(normalized):
            if m.group(0).endswith("人工") and normalized.startswith(_PRODUCT_WORD_ENDINGS, m.end()):
                continue
            return m.group(0)
        return None

    def to_dict(self) -> dict:
        return {
            "t_answer": self.t_answer,
            "t_clarify": self.t_clarify,
            "clarify_k": self.clarify_k,
            "human_phrases": list(self.human_phrases),
            "t_follow_up": self.t_follow_up,
        }


def precision_bound(hits: np.ndarray, weights: np.ndarray, confidence: float) -> np.ndarray:
    """One-sided Clopper-Pearson lower bounds on precision, one per prefix of weighted examples.

    Weighted examples carry less information than as many unweighted ones: the bound uses Kish's
    effective sample size (sum w)^2 / sum w^2 of each prefix, so a threshold chosen on a handful of
    heavy examples is not trusted as if they were many.
    """
    from scipy.stats import beta

    w_sum = np.cumsum(weights)
    w2_sum = np.cumsum(weights * weights)
    n_eff = w_sum * w_sum / np.maximum(w2_sum, 1e-12)
    prec = np.cumsum(weights * hits) / np.maximum(w_sum, 1e-12)
    k = prec * n_eff
    lower = beta.ppf(1.0 - confidence, np.maximum(k, 1e-9), n_eff - k + 1.0)
    return np.where(k > 0, np.nan_to_num(lower), 0.0)


def precision_interval(hits: np.ndarray, weights: np.ndarray, level: float = 0.9) -> tuple[float, float]:
    """Two-sided Clopper-Pearson interval of a weighted precision (Kish effective sample size)."""
    from scipy.stats import beta

    if hits.size == 0:
        return 0.0, 1.0
    w_sum, w2_sum = float(weights.sum()), float((weights * weights).sum())
    n = w_sum * w_sum / max(w2_sum, 1e-12)
    k = float((weights * hits).sum()) / max(w_sum, 1e-12) * n
    alpha = (1.0 - level) / 2
    lo = float(beta.ppf(alpha, k, n - k + 1)) if k > 0 else 0.0
    hi = float(beta.ppf(1 - alpha, k + 1, n - k)) if k < n else 1.0
    return lo, hi


def choose_thresholds(
    p: np.ndarray,
    correct: np.ndarray,
    in_top3: np.ndarray,
    weights: np.ndarray,
    target_precision: float = 0.95,
    target_top3: float = 0.8,
    confidence: float | None = None,
) -> tuple[float, float]:
    """Lowest thresholds whose weighted precision on the calibration set meets the targets.

    t_answer: answered examples (P >= t) are right at least `target_precision` of the time; with
    `confidence` (say 0.8), the Clopper-Pearson lower bound of that precision must meet the target, so
    a small calibration set yields a cautious threshold instead of a lucky one.
    t_clarify: among examples with P >= t, the right entry is in the offered top 3 at least
    `target_top3` of the time (so a clarify list is worth showing).
    """

    def lowest(ok: np.ndarray, target: float, bound: float | None) -> float:
        order = np.argsort(-p, kind="stable")
        w = weights[order]
        if bound is None:
            prec = np.cumsum(w * ok[order]) / np.cumsum(w)
        else:
            prec = precision_bound(ok[order], w, bound)
        good = np.flatnonzero(prec >= target)
        if good.size == 0:
            return 1.0 + 1e-9  # never reached: nothing met the target
        # the largest prefix that still meets the target; its last score is the threshold
        return float(p[order][good[-1]])

    t_answer = lowest(correct.astype(float), target_precision, confidence)
    t_clarify = min(lowest(in_top3.astype(float), target_top3, None), t_answer)
    return t_answer, t_clarify
