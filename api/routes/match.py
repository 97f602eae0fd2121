"""POST /v1/match: one customer message in, a decision out."""

from __future__ import annotations

import logging
import time
from typing import Any

from fastapi import APIRouter
from fastapi.exceptions import RequestValidationError

from api.web.schemas import CandidateOut, MatchRequest, MatchResponse, ModelRef
from api.web.state import MatcherDep, SettingsDep
from engine.results import Candidate

log = logging.getLogger("kefu.api")
router = APIRouter(prefix="/v1", tags=["match"])


def _limit_errors(body: MatchRequest, max_text_chars: int, max_top_k: int) -> list[dict[str, Any]]:
    """Limits that come from settings, reported like FastAPI's own 422s so clients parse one format."""
    errors: list[dict[str, Any]] = []
    n_chars = len(body.text)
    if n_chars > max_text_chars:
        errors.append(
            {
                "type": "string_too_long",
                "loc": ("body", "text"),
                "msg": f"text has {n_chars} characters; at most {max_text_chars} are accepted",
                "ctx": {"max_length": max_text_chars},
            }
        )
    if body.top_k > max_top_k:
        errors.append(
            {
                "type": "less_than_equal",
                "loc": ("body", "top_k"),
                "msg": f"top_k must be at most {max_top_k}",
                "ctx": {"le": max_top_k},
            }
        )
    return errors


def _out(c: Candidate) -> CandidateOut:
    return CandidateOut(entry_id=c.entry_id, question=c.question, score=float(c.score))


@router.post("/match", response_model=MatchResponse)
def match(body: MatchRequest, matcher: MatcherDep, settings: SettingsDep) -> MatchResponse:
    """Match a message against the KB.

    A plain `def`: matching is CPU-bound, so FastAPI runs it in its thread pool, and Matcher.match is
    safe for concurrent readers. The message text is never logged (customer PII), only its length.
    """
    n_chars = len(body.text)
    errors = _limit_errors(body, settings.max_text_chars, settings.max_top_k)
    if errors:
        log.info("match rejected: text_chars=%d top_k=%d (over the configured limits)", n_chars, body.top_k)
        raise RequestValidationError(errors)
    t0 = time.perf_counter()
    r = matcher.match(body.text, top_k=body.top_k)
    latency_ms = (time.perf_counter() - t0) * 1000
    log.info(
        "match decision=%s confidence=%.3f entry_id=%s candidates=%d text_chars=%d latency_ms=%.1f",
        r.decision.value,
        r.confidence,
        r.entry_id,
        len(r.candidates),
        n_chars,
        latency_ms,
    )
    return MatchResponse(
        decision=r.decision.value,
        entry_id=r.entry_id,
        answer=r.answer,
        confidence=float(r.confidence),
        candidates=[
            CandidateOut(entry_id=c.entry_id, question=c.question, score=float(c.score)) for c in r.candidates
        ],
        options=[
            CandidateOut(entry_id=c.entry_id, question=c.question, score=float(c.score)) for c in r.options
        ],
        reason=r.reason,
        smalltalk=r.smalltalk,
        smalltalk_around=r.smalltalk_around,
        model=ModelRef(kb_hash=matcher.info.get("kb_hash"), entries=len(matcher)),
    )
