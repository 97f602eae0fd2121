"""One customer message through the shop's mode, model and conversation state, logged and counted.

Shared by the shop API (`/v1/shops/{shop}/messages`) and the JD-facing endpoint, so both channels
behave the same way.
"""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Collection, Mapping
from dataclasses import replace
from typing import Any

from api import stages
from api.db.models import AgentTask, Shop
from api.dialog.conversation import (
    HANDOFF_TEXT,
    HISTORY_MESSAGES,
    MAX_HANDOFF_MESSAGES,
    REASON_MODE_ASSIST,
    REASON_MODE_OFF,
    REASON_NO_MODEL,
    ConversationPolicy,
    ConversationState,
    Handoff,
    HandoffCode,
    Reply,
    Skill,
    Suggestion,
    TurnContext,
)
from api.dialog.orders_skill import OrdersSkill
from api.dialog.privacy import mask_pii
from api.dialog.replies import Replies
from api.jd.orders import OrderLookup
from api.metrics import AGENT_TASKS, DENSE_SKIPPED, MATCH_LATENCY, STATE_CONFLICTS, record_reply
from api.service import Service
from engine.kb import KBEntry
from engine.results import MatchResult

log = logging.getLogger("kefu.conversation")

# Steps of one message against the conversation's state before the last one wins regardless: each retry
# follows a message of the same conversation processed at the same moment (a customer sending several
# short messages in a row), so more than a few means a flood, not a conversation.
STATE_ATTEMPTS = 8


def _handoff(
    reason: str,
    history: list[str],
    code: HandoffCode,
    suggested: list[Suggestion] | None = None,
    context: TurnContext | None = None,
) -> Reply:
    suggested = suggested or []
    return Reply(
        kind="handoff",
        text=HANDOFF_TEXT,
        entry_id=None,
        confidence=suggested[0].confidence if suggested else 0.0,
        options=[],
        reason=reason,
        handoff=Handoff(
            reason=reason,
            last_messages=history[-MAX_HANDOFF_MESSAGES:],
            candidates_tried=[],
            mood=None,
            code=code,
            suggestions=suggested,
            sku_id=context.sku_id if context else None,
        ),
    )


def _record_turn(service: Service, shop: Shop, conversation_id: str, text: str) -> list[str]:
    """A message the bot does not answer (assist, off, no model) still joins the conversation's history:
    the agent sees what came before it, and the bot reads follow-ups with it once back in auto mode."""
    masked = mask_pii(text)
    for _ in range(STATE_ATTEMPTS):
        state, token = service.conversations.load_versioned(shop.id, conversation_id)
        prev = state or ConversationState()
        st = replace(prev, history=[*prev.history, masked][-HISTORY_MESSAGES:], turns=prev.turns + 1)
        if service.conversations.save_if(shop.id, conversation_id, st, token):
            return st.history
        STATE_CONFLICTS.labels(shop.id).inc()
    service.conversations.save(shop.id, conversation_id, st)
    return st.history


def pick_answer(entry: KBEntry, conversation_id: str, turn: int) -> str:
    """One of the entry's answer and its variants: random-looking across conversations and turns, but
    seeded by (conversation, turn) so a replayed turn says the same thing."""
    answers = entry.answers()
    if len(answers) == 1:
        return entry.answer
    return answers[zlib.crc32(f"{conversation_id}\x00{turn}".encode()) % len(answers)]


def _secret_box(service: Service) -> Any:
    """The service's key, if one is configured (it encrypts the order number a conversation remembers)."""
    if service.settings.secret_key is None:
        return None
    return service.secret_box


def _raise_tasks(
    service: Service,
    shop: Shop,
    conversation_id: str,
    reply: Reply,
    entries: Mapping[str, KBEntry],
    history: list[str],
) -> None:
    """An answer from an entry marked notify also becomes a task for the agents (not a handoff)."""
    notify = [e for e in reply.answered_entries() if e in entries and entries[e].notify]
    if not notify:
        return
    with service.db.session() as s:
        tasks = [
            AgentTask(
                shop_id=shop.id,
                conversation_id=conversation_id,
                entry_id=e,
                context=list(history),
                status="open",
            )
            for e in notify
        ]
        s.add_all(tasks)
        s.flush()
        reply.task_id = tasks[0].id
    AGENT_TASKS.labels(shop.id).inc(len(tasks))


def _skills(service: Service, shop: Shop) -> list[Skill]:
    """The skills that get each question before the KB answers it: the shop's catalog, if it has one."""
    from api.catalog.skill import CatalogSkill

    settings = shop.settings or {}
    catalog = service.catalogs.get(shop.id, float(settings.get("target_precision") or 0.95))
    return [CatalogSkill(catalog)] if catalog is not None else []


def handle_message(
    service: Service,
    shop: Shop,
    conversation_id: str,
    text: str,
    channel: str,
    context: TurnContext | None = None,
) -> dict[str, Any]:
    """The reply to one message, as the JSON the channels send back (with its exchange id)."""
    t0 = time.perf_counter()
    version: int | None = None
    if shop.mode == "off":
        history = _record_turn(service, shop, conversation_id, text)
        reply = _handoff(REASON_MODE_OFF, history, "mode_off", context=context)
    elif shop.mode == "assist":
        # the agent who takes the message gets the bot's suggestions with it, not in a second call
        suggested, version = suggestions(service, shop, text)
        history = _record_turn(service, shop, conversation_id, text)
        reply = _handoff(REASON_MODE_ASSIST, history, "mode_assist", suggested, context)
    else:
        served = service.served(shop.id, shop.active_version)
        if served is None:
            history = _record_turn(service, shop, conversation_id, text)
            reply = _handoff(REASON_NO_MODEL, history, "no_model", context=context)
        else:
            version = served.version
            matcher = served.matcher
            entries = matcher.entries_by_id
            replies = Replies.from_settings(shop.settings)
            turn = 0

            def choose(e: KBEntry) -> str:
                return pick_answer(e, conversation_id, turn)

            def match(t: str, exclude: Collection[str] = ()) -> MatchResult:
                m0 = time.perf_counter()
                try:
                    r = matcher.match(t, top_k=5, smalltalk=replies.enabled, exclude=exclude)
                finally:
                    took = time.perf_counter() - m0
                    MATCH_LATENCY.observe(took)
                    stages.add("match", took)
                if r.dense_skipped:
                    DENSE_SKIPPED.labels(shop.id).inc()
                e = entries.get(r.entry_id) if r.entry_id and r.answer is not None else None
                return replace(r, answer=choose(e)) if e is not None and e.answer_variants else r

            def match_follow_up(context: str, t: str, exclude: Collection[str] = ()) -> MatchResult:
                r = matcher.match_follow_up(context, t, top_k=5, exclude=exclude)
                e = entries.get(r.entry_id) if r.entry_id and r.answer is not None else None
                return replace(r, answer=choose(e)) if e is not None and e.answer_variants else r

            def get_entry(entry_id: str) -> tuple[str, str] | None:
                e = entries.get(entry_id)
                return (e.question, choose(e)) if e else None

            orders = OrdersSkill(
                entries, lambda: OrderLookup.for_shop(service, shop), box=_secret_box(service), choose=choose
            )
            policy = ConversationPolicy(
                match=match,
                get_entry=get_entry,
                mask=mask_pii,
                replies=replies,
                skills=[orders, *_skills(service, shop)],
                dynamic=lambda entry_id: bool(entry_id in entries and entries[entry_id].action),
                match_follow_up=match_follow_up,
            )
            for attempt in range(1, STATE_ATTEMPTS + 1):
                with stages.timed("state"):
                    prev, token = service.conversations.load_versioned(shop.id, conversation_id)
                turn = prev.turns if prev is not None else 0
                reply, state = policy.step(prev, text, context)
                state.turns = turn + 1
                if attempt == STATE_ATTEMPTS:
                    with stages.timed("state"):
                        service.conversations.save(shop.id, conversation_id, state)
                    log.warning(
                        "conversation %s/%s: %d messages overtook this one; its state was saved over theirs",
                        shop.id,
                        conversation_id,
                        STATE_ATTEMPTS - 1,
                    )
                else:
                    with stages.timed("state"):
                        saved = service.conversations.save_if(shop.id, conversation_id, state, token)
                    if saved:
                        break
                STATE_CONFLICTS.labels(shop.id).inc()
            _raise_tasks(service, shop, conversation_id, reply, entries, state.history)
    latency_ms = (time.perf_counter() - t0) * 1000
    stages.add("turn", latency_ms / 1000)
    # buffered, written by the exchange log's thread: the reply does not wait for the database
    exchange_id = service.exchange_log.log(
        shop=shop.id,
        conversation_id=conversation_id,
        channel=channel,
        text=text,
        decision=reply.kind,
        entry_id=reply.entry_id,
        confidence=reply.confidence,
        reason=reply.reason,
        model_version=version,
        latency_ms=latency_ms,
        question=reply.question,
        customer_hash=service.customer_hash(context.customer_pin if context else None),
    )
    record_reply(shop.id, reply.kind, reply.handoff.code if reply.handoff else None)
    out = reply.to_dict()
    out["exchange_id"] = exchange_id
    out["model_version"] = version
    return out


def suggestions(service: Service, shop: Shop, text: str, k: int = 3) -> tuple[list[Suggestion], int | None]:
    """Assist mode: up to k answers for the human agent; nothing is matched when the bot is off.

    Each carries the engine's estimated P(right): calibrated for the first, an estimate bounded by the
    ranking for the others (Candidate.confidence), so the agent can weigh a runner-up too.
    """
    if shop.mode == "off":
        return [], None
    served = service.served(shop.id, shop.active_version)
    if served is None:
        return [], None
    r = served.matcher.match(text, top_k=k, candidate_confidence=True)
    entries = served.matcher.entries_by_id
    found = [
        Suggestion(c.entry_id, c.question, entries[c.entry_id].answer, c.confidence) for c in r.candidates[:k]
    ]
    return found, served.version
