"""POST /v1/match: one customer message in, a decision out."""

from __future__ import annotations

import logging
import time
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic_core import to_json
from starlette.concurrency import run_in_threadpool

from api.settings import Settings
from api.web.schemas import MatchRequest, MatchResponse
from api.web.state import ServingMatcher
from api.web.strict_json import StrictJSONRoute
from engine import Matcher
from engine.results import Candidate

log = logging.getLogger("kefu.api")
router = APIRouter(route_class=StrictJSONRoute, prefix="/v1", tags=["match"])


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


def _candidates(cs: list[Candidate]) -> list[dict[str, Any]]:
    return [{"entry_id": c.entry_id, "question": c.question, "score": float(c.score)} for c in cs]


def _decide(matcher: Matcher, body: MatchRequest, n_chars: int) -> bytes:
    """Match and encode the answer: the body MatchResponse documents, with the keys in its field order.

    Encoded here rather than by FastAPI from a MatchResponse: validating a model the route has just built
    from the engine's own result, then encoding it, was a fifth of a request's CPU. pydantic_core's
    encoder is the one FastAPI used, so the bytes are the same (NaN as null, as pydantic writes it).
    """
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
    kb_hash = matcher.info.get("kb_hash")
    return to_json(
        {
            "decision": r.decision.value,
            "entry_id": r.entry_id,
            "answer": r.answer,
            "confidence": float(r.confidence),
            "candidates": _candidates(r.candidates),
            "options": _candidates(r.options),
            "reason": r.reason,
            "smalltalk": r.smalltalk,
            "smalltalk_around": list(r.smalltalk_around),
            "model": {"kb_hash": None if kb_hash is None else str(kb_hash), "entries": len(matcher)},
        },
        inf_nan_mode="null",
    )


@router.post("/match", response_model=MatchResponse)
async def match(body: MatchRequest, request: Request, matcher: ServingMatcher) -> Response:
    """Match a message against the KB.

    A sparse-only model (the fast profile) is matched on the event loop: it takes a fraction of a
    millisecond of pure-Python work that holds the GIL, so the thread-pool hop cost more than it freed.
    A model with the dense channel runs its encoder for milliseconds, so it is matched in the thread
    pool and the loop keeps serving other requests. Matcher.match is safe for concurrent readers. The
    message text is never logged (customer PII), only its length.
    """
    # read from the app's state rather than through Depends: solving sub-dependencies is a measurable part
    # of a sub-millisecond request
    settings: Settings = request.app.state.settings
    n_chars = len(body.text)
    errors = _limit_errors(body, settings.max_text_chars, settings.max_top_k)
    if errors:
        log.info("match rejected: text_chars=%d top_k=%d (over the configured limits)", n_chars, body.top_k)
        raise RequestValidationError(errors)
    if matcher.dense_enabled:
        content = await run_in_threadpool(_decide, matcher, body, n_chars)
    else:
        content = _decide(matcher, body, n_chars)
    return Response(content, media_type="application/json")
