"""Try: a customer message (or a short conversation, one message a line) through the shop's real path.

Each line goes through `handle_message` like a customer's (mode, model, conversation state), logged as
an exchange on the "console" channel, so a wrong answer can be flagged with the right entry: stored as
an agent's correction (feedback), the same label the API's /feedback stores.
"""

from __future__ import annotations

import secrets
from typing import Annotated, Any

from fastapi import APIRouter, Form, HTTPException, Request, status
from fastapi.responses import Response

from api.console.web import PREFIX, Console, ConsoleDep, CsrfDep, render
from api.dialog.handle import handle_message
from api.metrics import FEEDBACK
from api.store import exchanges
from api.web.schemas import EXCHANGE_ID_MAX
from api.web.strict_json import StrictJSONRoute

router = APIRouter(route_class=StrictJSONRoute, prefix=PREFIX, include_in_schema=False)
MAX_TURNS = 10
MAX_CHARS = 2000
OUT_OF_SCOPE = "__out_of_scope__"
MAX_CHOICES = 3000  # entries offered in the "right entry" list


def _entries(console: Console) -> list[tuple[str, str]]:
    """(id, question) of the served model's entries: what a flagged answer may be corrected to."""
    served = console.service.served(console.shop.id, console.shop.active_version)
    if served is None:
        return []
    return [(e.id, e.question) for e in served.matcher.entries[:MAX_CHOICES]]


def _candidates(console: Console, text: str) -> dict[str, Any] | None:
    """The model's own view of one message: its top candidates with scores, confidence and reason."""
    served = console.service.served(console.shop.id, console.shop.active_version)
    if served is None:
        return None
    r = served.matcher.match(text, top_k=5, candidate_confidence=True)
    return {
        "decision": r.decision.value,
        "confidence": r.confidence,
        "reason": r.reason,
        "candidates": [
            {"entry_id": c.entry_id, "question": c.question, "score": c.score, "confidence": c.confidence}
            for c in r.candidates
        ],
    }


@router.get("/try")
def try_form(request: Request, console: ConsoleDep) -> Response:
    return render(request, "try.html", console, messages="", turns=[], entries=[])


@router.post("/try")
def try_messages(
    request: Request, console: CsrfDep, messages: Annotated[str, Form(max_length=MAX_TURNS * MAX_CHARS)] = ""
) -> Response:
    t = console.t
    lines = [line.strip() for line in messages.splitlines() if line.strip()]
    if not lines:
        return render(request, "try.html", console, 400, messages=messages, turns=[], error=t("try.empty"))
    if len(lines) > MAX_TURNS or any(len(line) > MAX_CHARS for line in lines):
        error = t("try.too_long", turns=MAX_TURNS, chars=MAX_CHARS)
        return render(request, "try.html", console, 400, messages=messages, turns=[], error=error)
    conversation = f"console-{secrets.token_hex(6)}"
    turns = []
    for line in lines:
        reply = handle_message(
            console.service, console.shop, conversation, line, channel=exchanges.CONSOLE_CHANNEL
        )
        turns.append({"text": line, "reply": reply, "model": _candidates(console, line)})
    return render(
        request,
        "try.html",
        console,
        messages=messages,
        turns=turns,
        entries=_entries(console),
        oos=OUT_OF_SCOPE,
    )


@router.post("/try/flag")
def flag(
    request: Request,
    console: CsrfDep,
    exchange_id: Annotated[int, Form(ge=1, le=EXCHANGE_ID_MAX)],
    correct: Annotated[str, Form(max_length=200)] = "",
) -> Response:
    """A wrong answer and the entry that was right (or: none was): stored as a correction."""
    t = console.t
    if not correct:
        return render(request, "try.html", console, 400, messages="", turns=[], error=t("try.pick_entry"))
    oos = correct == OUT_OF_SCOPE
    console.service.exchange_log.sync(exchange_id)
    try:
        with console.service.db.session() as s:
            exchanges.add_feedback(
                s, console.shop.id, exchange_id, "correction", None if oos else correct, oos
            )
    except LookupError as e:  # another shop's exchange, or none: the same answer
        raise HTTPException(status.HTTP_404_NOT_FOUND, t("try.no_exchange")) from e
    except exchanges.UnknownEntryError as e:
        return render(request, "try.html", console, 400, messages="", turns=[], error=str(e))
    FEEDBACK.labels(console.shop.id, "correction").inc()
    notice = t("try.flagged_oos") if oos else t("try.flagged", entry=correct)
    return render(request, "try.html", console, messages="", turns=[], notice=notice)
