"""What a match returns: a decision, the best entry, a calibrated confidence and the candidates."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any


class Decision(StrEnum):
    ANSWER = "answer"
    CLARIFY = "clarify"
    HANDOFF = "handoff"
    SMALLTALK = "smalltalk"  # greeting, thanks, goodbye ...: the reply comes from the caller's settings


@dataclass(slots=True)
class Candidate:
    entry_id: str
    question: str
    score: float  # fused ranking score (higher is better; not a probability)
    answer: str = ""
    category: str = ""
    # estimated P(this entry is right): the calibrated confidence for the best candidate; for the others
    # the same calibrator with the candidate in first place, capped by rank (see Matcher.match)
    confidence: float = 0.0


@dataclass(slots=True)
class MatchResult:
    decision: Decision
    reason: str
    confidence: float = 0.0  # calibrated P(best entry is right)
    entry_id: str | None = None
    answer: str | None = None
    candidates: list[Candidate] = field(default_factory=list)
    options: list[Candidate] = field(default_factory=list)  # on clarify: the questions to offer, best first
    normalized: str = ""
    smalltalk: str | None = None  # on SMALLTALK: the intent to reply to (engine.smalltalk.INTENTS)
    # small talk taken off around the question that was matched ("在吗 能开专票吗" -> ["greeting"])
    smalltalk_around: list[str] = field(default_factory=list)
    features: dict[str, float] = field(default_factory=dict)
    dense_skipped: bool = False  # answered by the cascade's first stage, without the encoder

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["decision"] = self.decision.value
        return d
