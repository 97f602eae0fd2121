"""Why the bot decided what it did, in the merchant's language: the logged reason read back.

The engine and the dialog layer state their reasons in English (engine/matcher.py, api/dialog/*.py,
api/catalog, api/jd/queue.py), and the exchange log keeps those words. The console shows them on Try and
Conversations through the i18n table: each known pattern below is a "why." key whose English text is the
reason's own wording (tests/test_console.py renders every pattern back to the engine's exact words) and
whose Chinese text is what a Chinese console shows. A group named `inner` is itself a reason (the
engine's, inside a handoff's), `intent` a small-talk intent (an "intent." key); other groups are shown as
logged. A reason no pattern knows is shown as logged, so nothing is ever hidden.
"""

from __future__ import annotations

import re

from api.console.i18n import TABLE, Translator

_N = r"(?P<{}>\d+(?:\.\d+)?)"


def _p(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern.format(p=_N.format("p"), t=_N.format("t"), c=_N.format("c"), n=_N.format("n")))


# (key of the i18n table, the whole reason), most specific first: the first full match wins
PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    # engine/matcher.py
    ("why.verbatim", _p(r"the message is one of this entry's KB questions")),
    ("why.answer", _p(r"confidence {p} >= answer threshold {t}")),
    ("why.clarify", _p(r"confidence {p} between the clarify \({c}\) and answer \({t}\) thresholds")),
    ("why.below", _p(r"confidence {p} < clarify threshold {c}")),
    ("why.empty_message", _p(r"empty message: nothing to match after normalization")),
    ("why.human_phrase", _p(r"explicit request for a human agent \('(?P<phrase>.*)'\)")),
    ("why.smalltalk_entry", _p(r"small talk \((?P<intent>\w+)\) answered by the KB's own entry")),
    ("why.smalltalk", _p(r"small talk: (?P<intent>\w+)")),
    ("why.empty_kb", _p(r"empty knowledge base")),
    ("why.no_word", _p(r"no word of the message occurs in the knowledge base")),
    ("why.none_active", _p(r"no entry of the knowledge base is active now")),
    ("why.follow_up_none", _p(r"nothing in the knowledge base matches the follow-up")),
    # api/dialog/conversation.py and handle.py
    ("why.human", _p(r"customer asked for a human agent")),
    ("why.repeated", _p(r"repeated question")),
    ("why.angry", _p(r"angry customer and no confident answer")),
    ("why.venting", _p(r"the customer is upset and the bot has not helped yet")),
    ("why.non_text", _p(r"non-text message \((?P<kind>[^)]*)\)")),
    ("why.contact_only", _p(r"contact details only")),
    ("why.rejected", _p(r"the customer said none of the options fits")),
    ("why.out_of_range", _p(r"the customer picked an option number the list does not have")),
    ("why.no_words", _p(r"no words to match \(an empty message, or only punctuation\)")),
    ("why.mode_off", _p(r"the bot is off for this shop: a human agent answers")),
    ("why.mode_assist", _p(r"assist mode: a human agent answers, with suggestions from the bot")),
    ("why.no_model", _p(r"no KB version is published for this shop yet")),
    ("why.cannot_answer", _p(r"bot cannot answer: (?P<inner>.*)")),
    ("why.misses", _p(r"{n} misses in a row \((?P<inner>.*)\)")),
    ("why.follow_up", _p(r"follow-up to the previous question '(?P<context>.*?)': (?P<inner>.*)")),
    ("why.choice", _p(r"customer chose option {n}")),
    ("why.choice_gone", _p(r"chosen entry (?P<entry>.+) no longer exists")),
    ("why.several", _p(r"{n} questions in one message, (?P<k>\d+) answered")),
    ("why.one_of", _p(r"(?P<inner>.+) \(one of {n} questions in the message\)")),
    # api/dialog/orders_skill.py
    (
        "why.order_answered_missing",
        _p(r"dynamic entry (?P<entry>\S+): (?P<action>\S+) from JD \((?P<missing>.*)\)"),
    ),
    ("why.order_answered", _p(r"dynamic entry (?P<entry>\S+): (?P<action>\S+) from JD")),
    ("why.order_no_pin", _p(r"no customer pin: an order is shown to its buyer only")),
    ("why.order_ask", _p(r"order number needed for dynamic entry (?P<entry>\S+)")),
    ("why.order_not_configured", _p(r"the shop has no JD credentials for order lookups")),
    ("why.order_failed", _p(r"order lookup failed \((?P<kind>[^)]*)\): (?P<detail>.*)")),
    ("why.order_refused", _p(r"the order belongs to another customer: nothing shown")),
    ("why.order_refusals", _p(r"orders of other customers asked for repeatedly")),
    # api/catalog (skill.py, spec.py)
    ("why.which_product", _p(r"which product\? (?P<inner>.*)")),
    ("why.products_match", _p(r"{n} products match the name")),
    ("why.product_chosen", _p(r"customer chose (?P<sku>.+) for the pending (?P<attribute>.+) question")),
    ("why.product_named", _p(r"product (?P<sku>\S+) named")),
    ("why.not_spec", _p(r"not a spec value question \((?P<inner>.*)\)")),
    ("why.spec_not_named", _p(r"spec (?P<key>\S+) not named in the message")),
    ("why.spec_question", _p(r"spec question \((?P<key>[^)]*)\): (?P<inner>.*)")),
    ("why.spec", _p(r"spec (?P<key>\S+): (?P<inner>.*)")),
    # api/routes/messages.py (assist) and api/jd/queue.py
    ("why.suggestions", _p(r"{n} suggestion\(s\)")),
    ("why.not_delivered", _p(r"reply not delivered in time")),
    ("why.not_deliverable", _p(r"reply could not be delivered")),
)
MAX_DEPTH = 4  # reasons nest (an engine reason in a follow-up in a handoff): deeper is shown as logged


def render(reason: str, t: Translator, depth: int = 0) -> str:
    """`reason` in t's language by the first pattern that matches it whole; as logged if none does."""
    if depth > MAX_DEPTH:
        return reason
    for key, pattern in PATTERNS:
        m = pattern.fullmatch(reason)
        if m is None:
            continue
        values = {}
        for name, value in m.groupdict().items():
            if name == "inner":
                value = render(value, t, depth + 1)
            elif name == "intent" and f"intent.{value}" in TABLE:
                value = t(f"intent.{value}") if t.lang != "en" else value
            values[name] = value
        return t(key, **values)
    return reason


def reason_text(reason: str | None, t: Translator) -> str:
    """What the console shows for a logged reason: the engine's own words in English, else the table's
    rendering of a known pattern (the words as logged for an unknown one)."""
    if not reason:
        return ""
    return reason if t.lang == "en" else render(reason, t)
