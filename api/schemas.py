"""Request and response bodies of the HTTP API."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class MatchRequest(BaseModel):
    """One customer message.

    `text` may be empty (the engine hands it off). Its maximum length and the upper bound of `top_k`
    come from the settings, so the route enforces them rather than this schema.
    """

    text: str = Field(description="the customer's message, as typed")
    top_k: int = Field(
        default=5, ge=1, description="how many candidate entries to return (at most KEFU_MAX_TOP_K)"
    )


class CandidateOut(BaseModel):
    entry_id: str
    question: str
    score: float = Field(description="fused ranking score: higher is better, not a probability")


class ModelRef(BaseModel):
    """Which model answered, so a logged response can be traced to a KB version."""

    kb_hash: str | None
    entries: int


class MatchResponse(BaseModel):
    decision: Literal["answer", "clarify", "handoff"]
    entry_id: str | None = Field(description="best entry; also set on a low-confidence handoff")
    answer: str | None = Field(description="the entry's answer, only when decision is answer")
    confidence: float = Field(description="calibrated probability that entry_id is right")
    candidates: list[CandidateOut]
    options: list[CandidateOut] = Field(
        default_factory=list,
        description="On clarify: the closest questions to offer the customer, best first",
    )
    reason: str
    model: ModelRef


class HealthResponse(BaseModel):
    status: Literal["ok"] = "ok"
    model_loaded: bool
    entries: int
    kb_hash: str | None
    dense: bool
