"""The conversation policy: what the bot says next, given the engine's decision and the dialogue so far.

The engine decides one message at a time; a conversation needs more: a customer answers a clarify
list with "2" or "第二个", asks the same thing again when an answer did not help, gets annoyed, or
misses twice in a row. `ConversationPolicy.step` turns (state, message) into (reply, new state);
`Conversations` keeps the state per shop and conversation in a shared store so any replica can take
the next message.

What counts as a miss: a turn the bot cannot answer (it asks to rephrase, or the message is a reply to
an offered list that picks none and is again not answerable when matched afresh, or picks an entry that
left the KB). Offering a clarify list to a message that was not itself a reply to a list is not a miss:
the bot understood enough to narrow it down, and the customer's unrecognised reply to that list then
gets one more chance before the second miss hands off.
"""

from __future__ import annotations

import hashlib
import logging
import re
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal, Protocol
from urllib.parse import quote

from api.dialog.nontext import non_text_kind, strip_stickers
from api.dialog.privacy import ORDER as ORDER_MASK
from api.dialog.replies import Replies
from api.dialog.split import split_questions
from api.store.kv import KeyValueStore
from engine.followup import compose
from engine.normalize import normalize
from engine.results import Candidate, Decision, MatchResult

log = logging.getLogger("kefu.conversation")

Kind = Literal["answer", "clarify", "handoff", "smalltalk"]

HANDOFF_TEXT = "正在为您转接人工客服，请稍候。"
CLARIFY_HEAD = "您是想问："
REPHRASE_TEXT = "抱歉，我没有理解您的问题，可以换个说法吗？"
REPHRASE_OPTIONS_HEAD = "或者您是想问："
MAX_OPTIONS = 3
MAX_HANDOFF_MESSAGES = 10
HISTORY_MESSAGES = 10  # masked customer messages a conversation keeps
MAX_ANSWERED = 10  # entries answered earlier that a conversation remembers for the agent
REJECTED_HEAD = "抱歉，那您是想问："
REJECTED_REPHRASE = "抱歉，没有找到您要问的。可以换个说法描述一下吗？也可以回复“人工”转人工客服。"

REASON_HUMAN = "customer asked for a human agent"
REASON_NO_WORDS = "no words to match (an empty message, or only punctuation)"
REASON_REPEATED = "repeated question"
REASON_ANGRY = "angry customer and no confident answer"
REASON_VENTING = "the customer is upset and the bot has not helped yet"
REASON_NON_TEXT = "non-text message"  # followed by the kind in brackets
REASON_REJECTED = "the customer said none of the options fits"
REASON_OUT_OF_RANGE = "the customer picked an option number the list does not have"
# handoffs in which the bot did not match the message (api.dialog.handle)
REASON_MODE_OFF = "the bot is off for this shop: a human agent answers"
REASON_MODE_ASSIST = "assist mode: a human agent answers, with suggestions from the bot"
REASON_NO_MODEL = "no KB version is published for this shop yet"
# the starts of handoff reasons that carry more words after them (api.store.traffic reads them back)
REASON_CANNOT_ANSWER = "bot cannot answer:"  # followed by the engine's reason
REASON_MISSES = "misses in a row"  # after the count, followed by the last miss's reason
# why a conversation went to a human, as a bounded label for metrics and the exchange log
HandoffCode = Literal[
    "explicit_request",
    "low_confidence",
    "repeated_miss",
    "repeated_question",
    "mood",
    "dynamic_failure",
    "non_text",
    "mode_off",
    "mode_assist",
    "no_model",
    "not_delivered",  # an async JD reply that could not be sent in time (api.jd.queue)
]
MAX_QUESTIONS = 2  # questions of one message answered at most
FOLLOW_UP_REASON = "follow-up to the previous question"
CHOICE_REASON = "customer chose option"  # followed by the option's number
# engine reasons after which rephrasing cannot help: there is nothing to match against
_NOTHING_TO_MATCH = ("empty knowledge base", "no entry of the knowledge base")


@dataclass
class Option:
    entry_id: str
    question: str

    @classmethod
    def of(cls, c: Candidate) -> Option:
        return cls(c.entry_id, c.question)


@dataclass
class Suggestion:
    """An answer the bot proposes to the human agent, with its estimated P(right) (Candidate.confidence)."""

    entry_id: str
    question: str
    answer: str
    confidence: float


@dataclass
class Handoff:
    """What the human agent receives: why, the recent (masked) messages and what the bot already tried."""

    reason: str
    last_messages: list[str]  # masked customer messages, oldest first, at most 10
    candidates_tried: list[Option]
    mood: str | None = None  # "angry" or "upset" when detected
    code: HandoffCode = "low_confidence"
    suggestions: list[Suggestion] = field(default_factory=list)  # assist mode: answers to pick from
    sku_id: str | None = None  # the product the conversation is about (product page, link, catalog)
    # entries the bot answered earlier in the conversation, oldest first: what the customer was told
    answered: list[Option] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Reply:
    kind: Kind
    text: str  # what to send the customer
    entry_id: str | None = None
    confidence: float = 0.0
    options: list[Option] = field(default_factory=list)
    reason: str = ""
    handoff: Handoff | None = None
    smalltalk: str | None = None  # on kind "smalltalk": the intent replied to
    answers: list[PartAnswer] = field(default_factory=list)  # one per question when a message held several
    # the customer's (masked) question this reply answers when the message is not it: a clarify choice
    # like "第二个" answers the question the list was offered for. Logged for labelled data, not sent.
    question: str | None = None
    task_id: int | None = None  # a task raised for the agents beside this answer (an entry marked notify)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        del out["question"]
        return out

    def answered_entries(self) -> list[str]:
        """The entries this reply answers from: each answered question's of a message holding several,
        else its own (none unless it is an answer)."""
        if self.kind != "answer":
            return []
        ids = [a.entry_id for a in self.answers if a.kind == "answer"] or [self.entry_id]
        return [e for e in dict.fromkeys(ids) if e]


@dataclass
class PartAnswer:
    """One question of a message that held several, and what the bot did with it."""

    question: str  # masked
    kind: Kind
    entry_id: str | None
    confidence: float


@dataclass
class ConversationState:
    clarify_options: list[Option] = field(default_factory=list)  # pending: what the last clarify offered
    misses: int = 0  # misses in a row (see the module docstring: a first clarify list is not one)
    history: list[str] = field(default_factory=list)  # masked customer messages, oldest first
    tried: list[Option] = field(default_factory=list)  # candidates offered or considered, deduplicated
    # fingerprint of the last message that went to the matcher (see `_fingerprint`), never its text
    last_question: str | None = None
    last_answered_entry: str | None = None
    mood: str | None = None  # "upset" after venting, until the bot answers something
    sku_id: str | None = None  # the product the conversation is about (catalog skill)
    # what a skill waits for from the customer (a product to pick, an order number), owned by that skill
    pending: dict[str, Any] | None = None
    clarify_question: str | None = None  # masked message the pending clarify list was offered for
    # the masked question of the last turn that went to the matcher: what a follow-up is read with
    topic: str | None = None
    turns: int = 0  # messages so far: seeds the choice among an entry's answer variants
    # the order the conversation is about, encrypted (Fernet): never in clear in the shared store
    order_ref: str | None = None
    answered: list[Option] = field(default_factory=list)  # entries answered so far, at most 10

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ConversationState:
        """Inverse of to_dict; tolerant of missing keys so replicas on different versions can share state."""

        def options(items: Any) -> list[Option]:
            return [Option(str(o["entry_id"]), str(o["question"])) for o in items or ()]

        return cls(
            clarify_options=options(d.get("clarify_options")),
            misses=int(d.get("misses") or 0),
            history=[str(m) for m in d.get("history") or ()],
            tried=options(d.get("tried")),
            last_question=d.get("last_question"),
            last_answered_entry=d.get("last_answered_entry"),
            mood=d.get("mood"),
            sku_id=d.get("sku_id"),
            pending=d.get("pending") if isinstance(d.get("pending"), dict) else None,
            clarify_question=d.get("clarify_question"),
            topic=d.get("topic"),
            turns=int(d.get("turns") or 0),
            order_ref=d.get("order_ref") if isinstance(d.get("order_ref"), str) else None,
            answered=options(d.get("answered")),
        )


@dataclass(frozen=True)
class TurnContext:
    """What the channel knows beside the text: the product page the customer is on, who they are."""

    sku_id: str | None = None
    customer_pin: str | None = (
        None  # JD's buyer pin: orders are only described to the customer who placed them
    )
    order_id: str | None = None  # an order card the customer sent


@dataclass
class Turn:
    """One message as a skill sees it; a skill that replies may update `state` (the new state)."""

    text: str  # as the customer typed it
    question: str  # masked, without contact details and stickers
    context: TurnContext
    prev: ConversationState
    state: ConversationState
    result: MatchResult  # the KB's decision for `question`


class Skill(Protocol):
    """Knowledge beyond the FAQ (the catalog, orders): gets each question before the KB's answer is given.

    `respond` returns the reply, or None to leave the turn to the KB. It sees the KB's result, so it can
    take over a dynamic entry (an order question) or a spec question about a known product.
    """

    name: str

    def respond(self, turn: Turn) -> Reply | None: ...


# ----------------------------------------------------------------------------------- choosing an option
_NUMERALS = {c: i for i, c in enumerate("一二三四五六七八九十", start=1)}
_LEAD = r"(?:那就|那|就|嗯|好的|好|我要|我选|我|选|要|是)*"
_TAIL = r"(?:问题|选项)?(?:吧|呀|啊|呢|哦|噢|的|了|嘛|谢谢)*"
_UNIT = r"(?:个|条|项|种|号)?"
_ORDINAL = re.compile(rf"^{_LEAD}(?P<back>倒数)?第?(?P<n>[0-9]{{1,2}}|[一二三四五六七八九十]){_UNIT}{_TAIL}$")
_LAST = re.compile(rf"^{_LEAD}最后(?:一|那)?{_UNIT}{_TAIL}$")
_MIN_OVERLAP = 4


def _compact(text: Any) -> str:
    return normalize(text).replace(" ", "")


# "none of these": the whole reply, or its head before a comma ("都不是，我想问退款")
_REJECT = re.compile(
    r"^(?:嗯|额|呃|啊)*(?:好像|感觉)?(?:以上|上面的?|这些|这几个|你说的)?"
    r"(?:都不是|都不对|都没有|都不太?对|全都不是|全不是|不是这些|不是这几个|不是这个|不是的?|不对|没有我要的"
    r"|没有我想问的|没有我要问的|没有想问的|没有)"
    r"(?:问题|选项)?(?:哦|呀|啊|呢|的|吧|啦|了)*$"
)
_CLAUSE = re.compile(r"[，,。.；;！!？?\s]+")
_NUMBER_ONLY = re.compile(rf"^{_LEAD}第?(?P<n>[0-9]{{1,2}}|[一二三四五六七八九十]){_UNIT}{_TAIL}$")


def rejects_options(text: str) -> str | None:
    """What is left of a reply that says none of the offered options fits ("都不是", "不是这个，我想问退款"
    gives "我想问退款", "都不对" gives ""), or None when the reply does not say so."""
    head, *rest = _CLAUSE.split(unicodedata.normalize("NFKC", text).strip(), maxsplit=1)
    if not _REJECT.match(_compact(head)):
        return None
    return rest[0].strip() if rest else ""


def option_number(text: str) -> int | None:
    """The number a reply that is only an option number gives ("5", "第五个"), in range or not; up to 10,
    as a list is never longer: 88 is a goodbye, 12 something else."""
    m = _NUMBER_ONLY.match(_compact(text))
    if m is None:
        return None
    raw = m.group("n")
    n = int(raw) if raw.isdigit() else _NUMERALS[raw]
    return n if n <= 10 else None


def resolve_choice(text: str, options: Sequence[Option]) -> Option | None:
    """The option a customer's reply to a clarify list picks, or None when it picks none.

    By position ("2", "第二个", "选2", "就第二个吧", "最后一个", "倒数第二个"; out of range gives None) or
    by the question's text: equal after normalization, or one containing the other when that is
    unambiguous among the options and at least 4 characters long.
    """
    if not options:
        return None
    t = _compact(text)
    if not t:
        return None
    if m := _ORDINAL.match(t):
        raw = m.group("n")
        n = int(raw) if raw.isdigit() else _NUMERALS[raw]
        if m.group("back"):
            n = len(options) + 1 - n
        return options[n - 1] if 1 <= n <= len(options) else None
    if _LAST.match(t):
        return options[-1]
    questions = [_compact(o.question) for o in options]
    for o, q in zip(options, questions, strict=True):
        if t == q:
            return o
    hits = [
        o
        for o, q in zip(options, questions, strict=True)
        if min(len(t), len(q)) >= _MIN_OVERLAP and (t in q or q in t)
    ]
    return hits[0] if len(hits) == 1 else None


# ----------------------------------------------------------------------------------------------- mood
_ANGRY_WORDS = (
    "垃圾",
    "骗子",
    "骗人",
    "坑人",
    "坑爹",
    "气死",
    "差评",
    "投诉",
    "什么破",
    "破玩意",
    "破东西",
    "太差",
    "废物",
    "无语",
    "搞什么",
    "等了半天",
    "什么玩意",
    "有病",
    "不要脸",
    "太过分",
    "忍无可忍",
)
_ANGRY_RE = re.compile(
    "|".join(re.escape(w) for w in _ANGRY_WORDS)
    # "滚" but not 滚筒/滚动/滚轮... (a 滚筒洗衣机 is a product, not an insult)
    + r"|滚(?![筒动轮珠刷梯烫压边落])"
    # a demand for money back, not the neutral "怎么退钱/能退钱吗"
    + r"|(?:给我|赶紧|马上|立刻|立即|快点?)退钱|退钱退钱"
    # asked/said many times: "反复问", "问了好几次", "多次反映" (but not "反复重启的问题")
    + r"|(?:多次|反复|好几次|好几遍|无数次|三番五次|多少遍|多少次).{0,8}(?:问(?!题)|说|反映|联系|咨询|催)"
    + r"|(?:问(?!题)|说|反映|联系|咨询|催)了?.{0,4}(?:多次|反复|好几次|好几遍|无数次|多少遍|多少次)"
)
_SHOUTING = re.compile(r"[!?]{3,}")


def detect_mood(text: Any) -> str | None:
    """ "angry" when the message carries angry words or repeated !!!/???, else None (a small curated list)."""
    if not isinstance(text, str) or not text:
        return None
    if _SHOUTING.search(unicodedata.normalize("NFKC", text)):  # full-width ！？ fold to ASCII
        return "angry"
    return "angry" if _ANGRY_RE.search(_compact(text)) else None


# --------------------------------------------------------------------------------------------- policy
def _add_tried(tried: Iterable[Option], new: Iterable[Option]) -> list[Option]:
    out: list[Option] = []
    seen: set[str] = set()
    for o in (*tried, *new):
        if o.entry_id not in seen:
            seen.add(o.entry_id)
            out.append(Option(o.entry_id, o.question))
    return out


def _numbered(options: Sequence[Option]) -> str:
    return "\n".join(f"{i}. {o.question}" for i, o in enumerate(options, start=1))


def _identity(text: str) -> str:
    return text


def _fingerprint(normalized: str) -> str:
    """What the state keeps of the last question: enough to spot a repeat, nothing to read.

    The normalized text masks digit runs (phones, IDs) but keeps an address whole, so storing it put
    addresses into the shared store in clear.
    """
    return hashlib.sha256(normalized.encode("utf-8")).hexdigest()


def _raw_parts(parts: Sequence[str], text: str, mask: Callable[[str], str]) -> list[str]:
    """The masked parts of a message with its order numbers put back, for the skills to read: masking
    replaces an order number with a placeholder, and the orders skill needs the number itself."""
    numbers = [
        m.group()
        for m in _DIGIT_RUN.finditer(unicodedata.normalize("NFKC", text))
        if mask(m.group()) == ORDER_MASK
    ]
    out = []
    for part in parts:
        while ORDER_MASK in part and numbers:
            part = part.replace(ORDER_MASK, numbers.pop(0), 1)
        out.append(part)
    return out


# ------------------------------------------------------------------------------------------- follow-ups
_FOLLOW_UP_HEAD = r"(?:那么|那|那个|那这个|还有|这款|这个|那款|这台|那台|它的|它|换成|如果是|要是)"
_FOLLOW_UP = re.compile(rf"^{_FOLLOW_UP_HEAD}|(?:呢|的呢|咋样|怎么样)$")
_FOLLOW_UP_WORDS = re.compile(rf"^{_FOLLOW_UP_HEAD}|(?:呢)+$")
_DIGIT_RUN = re.compile(r"(?<!\d)\d{10,13}(?!\d)")
_SHORT = 4  # characters: a message this short says little on its own


def looks_like_follow_up(normalized: str) -> bool:
    """A message that only makes sense after the previous turn: 那保修呢, 这款呢, 多少钱, 拆封了呢."""
    compact = normalized.replace(" ", "")
    return bool(compact) and (len(compact) <= _SHORT or bool(_FOLLOW_UP.search(compact)))


def strip_follow_up_words(text: str) -> str:
    """The message without its 那 ... 呢 frame, to be read after the previous question."""
    compact = normalize(text).replace(" ", "")
    return _FOLLOW_UP_WORDS.sub("", compact) or compact


class ConversationPolicy:
    """answer / clarify / hand off over a conversation, on top of one-message engine decisions.

    `match` is the engine (message, exclude=entry ids -> MatchResult); `get_entry` gives (question,
    answer) of an entry id or None when it no longer exists (a KB can change between two turns);
    `mask` removes personal data from what is kept in the state and handed to the agent;
    `match_follow_up` reads a short message with the previous question (engine's calibrated reading).
    """

    def __init__(
        self,
        match: Callable[..., MatchResult],
        get_entry: Callable[[str], tuple[str, str] | None],
        mask: Callable[[str], str] = _identity,
        max_misses: int = 2,
        history: int = HISTORY_MESSAGES,
        replies: Replies | None = None,
        skills: Sequence[Skill] = (),
        dynamic: Callable[[str], bool] | None = None,
        match_follow_up: Callable[..., MatchResult] | None = None,
    ) -> None:
        if max_misses < 1 or history < 1:
            raise ValueError("max_misses and history must be at least 1")
        self.match = match
        self.get_entry = get_entry
        self.mask = mask
        self.max_misses = max_misses
        self.history = history
        self.replies = replies or Replies()
        self.skills = list(skills)
        # entries whose answer only a skill can give (an order template): never answered as one part of a
        # message holding several questions, where no skill sees them
        self.dynamic = dynamic or (lambda entry_id: False)
        # (previous question, message, exclude=ids) -> MatchResult: Matcher.match_follow_up
        self.match_follow_up = match_follow_up

    def step(
        self, state: ConversationState | None, text: str, context: TurnContext | None = None
    ) -> tuple[Reply, ConversationState]:
        """The reply to one customer message and the conversation's new state (the input is not changed).

        A handoff carries the product the conversation is about and the entries answered before it;
        an answer joins those entries."""
        reply, st = self._step(state, text, context)
        if reply.handoff is not None:
            reply.handoff.sku_id = reply.handoff.sku_id or st.sku_id
            reply.handoff.answered = [Option(o.entry_id, o.question) for o in st.answered]
        new = [
            Option(entry_id, entry[0])
            for entry_id in reply.answered_entries()
            if (entry := self.get_entry(entry_id)) is not None
        ]
        if new:
            ids = {o.entry_id for o in new}
            kept = [o for o in st.answered if o.entry_id not in ids]
            st = replace(st, answered=[*kept, *new][-MAX_ANSWERED:])
        return reply, st

    def _step(
        self, state: ConversationState | None, text: str, context: TurnContext | None
    ) -> tuple[Reply, ConversationState]:
        prev = state or ConversationState()
        context = context or TurnContext()
        text = text if isinstance(text, str) else ("" if text is None else str(text))
        st = replace(
            prev,
            clarify_options=list(prev.clarify_options),
            history=[*prev.history, self.mask(text)][-self.history :],
            tried=list(prev.tried),
            sku_id=context.sku_id or prev.sku_id,
        )
        angry = detect_mood(text) == "angry"

        # 1. an answer to the pending clarify list
        choice = resolve_choice(text, prev.clarify_options) if prev.clarify_options else None
        if choice is not None:
            entry = self.get_entry(choice.entry_id)
            if entry is not None:
                why = f"{CHOICE_REASON} {prev.clarify_options.index(choice) + 1}"
                chosen = MatchResult(Decision.ANSWER, why, 1.0, choice.entry_id, entry[1])
                st = replace(st, clarify_options=[], clarify_question=None)
                by_skill = self._skills(Turn(text, self.mask(text), context, prev, st, chosen))
                if by_skill is not None:  # a dynamic entry (an order question) is answered by its skill
                    return by_skill
                st = replace(st, misses=0, last_answered_entry=choice.entry_id)
                reply = Reply("answer", entry[1], entry_id=choice.entry_id, confidence=1.0, reason=why)
                reply.question = prev.clarify_question
                return reply, st
            # the entry left the KB since the list was shown: a miss; offer what is still there
            left = [o for o in prev.clarify_options if o is not choice and self.get_entry(o.entry_id)]
            why = f"chosen entry {choice.entry_id} no longer exists"
            return self._miss(st, angry, why, left, 0.0, question=prev.clarify_question)
        if prev.clarify_options:
            rest = rejects_options(text)
            if rest is not None and split_questions(strip_stickers(self.mask(rest))):
                text = rest  # "不是这个，我想问退款": the rest is the question, matched as a new one
            elif rest is not None:
                return self._rejected(prev, st, angry)
            elif (n := option_number(text)) is not None:  # a number the list does not have
                k = len(prev.clarify_options)
                head = f"没有第{n}个选项哦，请回复1到{k}之间的数字，或直接描述您的问题："
                options = list(prev.clarify_options)
                return self._miss(
                    st,
                    angry,
                    REASON_OUT_OF_RANGE,
                    options,
                    0.0,
                    rephrase=False,
                    question=prev.clarify_question,
                    head=head,
                )

        # 2. what is not a question: a picture, a sticker, bare contact details
        kind = non_text_kind(text)
        if kind is not None:
            if self.replies.non_text == "handoff":
                return self._handoff(st, f"{REASON_NON_TEXT} ({kind})", None, code="non_text")
            return self._smalltalk(st, f"non-text message ({kind})", self.replies.non_text_reply, None)
        questions = split_questions(strip_stickers(self.mask(text)))
        if not questions:
            masked = self.mask(text)
            why = "contact details only" if masked != text and masked.strip() else REASON_NO_WORDS
            return self._smalltalk(st, why, self.replies.contact_only, None)

        # 3. several questions in one message: each from its own entry
        if len(questions) > 1:
            several = self._several(prev, st, questions, text, context)
            if several is not None:
                return several

        # 4. the engine
        r = self.match("，".join(questions))
        if r.decision is Decision.SMALLTALK and r.smalltalk:
            return self._on_smalltalk(prev, st, r.smalltalk)
        norm = r.normalized or normalize(text)
        fingerprint = _fingerprint(norm) if norm else None
        repeated = fingerprint is not None and fingerprint == prev.last_question
        if fingerprint is not None:
            st.last_question = fingerprint
        st.topic = "，".join(questions)  # already masked; a follow-up is read with it
        considered = [Option.of(c) for c in r.options[:MAX_OPTIONS]] + [
            Option.of(c) for c in r.candidates[:MAX_OPTIONS]
        ]
        st.tried = _add_tried(st.tried, considered)

        if r.decision is Decision.HANDOFF and "human" in r.reason:
            return self._handoff(st, REASON_HUMAN, r, code="explicit_request")
        if r.decision is not Decision.ANSWER and prev.topic and looks_like_follow_up(norm):
            r = self._follow_up(prev, "，".join(questions), r)
            if r.reason.startswith(FOLLOW_UP_REASON):  # the next follow-up reads on from both
                st.topic = f"{prev.topic} {strip_follow_up_words('，'.join(questions))}"
        if repeated or (
            r.decision is Decision.ANSWER and r.entry_id and r.entry_id == prev.last_answered_entry
        ):
            return self._handoff(st, REASON_REPEATED, r, code="repeated_question")

        # 5. skills (catalog, orders) before the KB's own answer
        by_skill = self._skills(Turn(text, "，".join(questions), context, prev, st, r))
        if by_skill is not None:
            return by_skill

        if r.decision is Decision.ANSWER and r.entry_id:
            answer = r.answer
            if answer is None:
                entry = self.get_entry(r.entry_id)
                answer = entry[1] if entry else None
            if answer is not None:
                st = replace(
                    st,
                    clarify_options=[],
                    clarify_question=None,
                    misses=0,
                    last_answered_entry=r.entry_id,
                    mood=None,
                )
                return Reply("answer", answer, r.entry_id, r.confidence, reason=r.reason), st

        if r.decision is Decision.HANDOFF and r.reason.startswith(_NOTHING_TO_MATCH):
            return self._handoff(st, f"{REASON_CANNOT_ANSWER} {r.reason}", r, code="low_confidence")

        offered = r.options if r.decision is Decision.CLARIFY and r.options else r.candidates
        options = [Option.of(c) for c in offered[:MAX_OPTIONS]]
        rephrase = r.decision is not Decision.CLARIFY or not options
        # a list offered to a fresh message narrows it down; only a reply to a list that is again not
        # answerable, or a request to rephrase, counts against the customer
        counts = rephrase or bool(prev.clarify_options)
        return self._miss(
            st,
            angry,
            r.reason,
            options,
            r.confidence,
            rephrase=rephrase,
            result=r,
            question=st.history[-1],
            counts=counts,
        )

    def _rejected(
        self, prev: ConversationState, st: ConversationState, angry: bool
    ) -> tuple[Reply, ConversationState]:
        """The customer said none of the offered questions fits: a miss. The question the list was
        offered for is matched again without the rejected entries and the next closest are offered;
        with none left, the customer is asked to rephrase."""
        rejected = [o.entry_id for o in prev.clarify_options]
        question = prev.clarify_question or ""
        r = self.match(question, exclude=rejected) if question else None
        offered = [] if r is None else [*r.options, *r.candidates]
        options = _add_tried([], [Option.of(c) for c in offered if c.entry_id not in rejected])[:MAX_OPTIONS]
        return self._miss(
            st,
            angry,
            REASON_REJECTED,
            options,
            r.confidence if r is not None else 0.0,
            rephrase=not options,
            result=r,
            question=question or None,
            head=REJECTED_HEAD,
            rephrase_text=REJECTED_REPHRASE,
        )

    def _miss(
        self,
        st: ConversationState,
        angry: bool,
        why: str,
        options: list[Option],
        confidence: float,
        *,
        rephrase: bool = True,
        result: MatchResult | None = None,
        question: str | None = None,
        counts: bool = True,
        head: str | None = None,
        rephrase_text: str = REPHRASE_TEXT,
    ) -> tuple[Reply, ConversationState]:
        """A turn the bot could not answer: clarify (or ask to rephrase) until too many misses in a row.

        `question` is the (masked) customer question the options are offered for: a choice among them
        answers that question, not the words "第二个". `counts` is False for a clarify list offered to a
        fresh message, which is not a miss.
        """
        misses = st.misses + int(counts)
        st = replace(st, misses=misses)
        if misses >= self.max_misses:
            return self._handoff(st, f"{misses} {REASON_MISSES} ({why})", result, code="repeated_miss")
        if angry:  # an angry customer is not made to pick from a list
            return self._handoff(st, REASON_ANGRY, result, code="mood")
        if rephrase:
            text = rephrase_text + (f"\n{REPHRASE_OPTIONS_HEAD}\n{_numbered(options)}" if options else "")
        else:
            text = f"{head or CLARIFY_HEAD}\n{_numbered(options)}"
        st = replace(
            st,
            clarify_options=list(options),
            clarify_question=question if options else None,
            tried=_add_tried(st.tried, options),
        )
        reply = Reply("clarify", text, None, confidence, options=list(options), reason=why)
        return reply, st

    def _skills(self, turn: Turn) -> tuple[Reply, ConversationState] | None:
        """The first skill's reply to the turn, or None when every skill leaves it to the KB."""
        for skill in self.skills:
            reply = skill.respond(turn)
            if reply is not None:
                if reply.kind == "handoff" and reply.handoff is None:
                    return self._handoff(turn.state, reply.reason, turn.result, code="dynamic_failure")
                return reply, turn.state
        return None

    def _follow_up(self, prev: ConversationState, question: str, alone: MatchResult) -> MatchResult:
        """A short message leaning on the previous turn (那保修呢, 拆封了呢): matched again with that turn's
        question, not offering the entry just answered (the customer asks about something else).

        The first confident result of (the message alone, the message with the previous question) is
        answered; else the combined clarify list is offered. The reason says that context was used.
        """
        exclude = [prev.last_answered_entry] if prev.last_answered_entry else []
        context = prev.topic or ""
        tries = [self.match(question, exclude=exclude)] if exclude else [alone]
        # read with the previous question, by the engine's follow-up calibration when it has one
        if self.match_follow_up is not None:
            tries.append(self.match_follow_up(context, strip_follow_up_words(question), exclude=exclude))
        else:
            tries.append(self.match(compose(context, strip_follow_up_words(question)), exclude=exclude))
        chosen = next((t for t in tries if t.decision is Decision.ANSWER), None)
        if chosen is None:
            chosen = tries[-1] if tries[-1].decision is Decision.CLARIFY else None
        if chosen is None:
            return alone
        chosen.reason = f"{FOLLOW_UP_REASON} '{context}': {chosen.reason}"
        chosen.normalized = alone.normalized
        return chosen

    def _on_smalltalk(
        self, prev: ConversationState, st: ConversationState, intent: str
    ) -> tuple[Reply, ConversationState]:
        """Small talk is never a miss: it neither counts nor clears the misses, and a pending list stays.

        Venting sets the mood; venting again before the bot has helped goes to a person.
        """
        if intent == "venting":
            if prev.mood == "upset" or prev.misses:
                return self._handoff(st, REASON_VENTING, None, code="mood")
            st = replace(st, mood="upset")
        after_answer = prev.last_answered_entry is not None and not prev.clarify_options
        text = self.replies.text(intent, after_answer=after_answer)
        return self._smalltalk(st, f"small talk: {intent}", text, intent)

    def _smalltalk(
        self, st: ConversationState, reason: str, text: str, intent: str | None
    ) -> tuple[Reply, ConversationState]:
        return Reply("smalltalk", text, reason=reason, smalltalk=intent), st

    def _several(
        self,
        prev: ConversationState,
        st: ConversationState,
        questions: list[str],
        text: str,
        context: TurnContext,
    ) -> tuple[Reply, ConversationState] | None:
        """Answer up to two questions of one message, each from its own entry or skill (an order, a
        product's spec); if only one is confident, answer it and offer the closest entries for the other.
        None: no question was answered (the message is then matched whole).

        A skill that hands off (an order lookup failed) hands off the whole message: the agent reads both.
        """
        matched = [(q, self.match(q)) for q in questions]
        asked = [(q, r) for q, r in matched if r.decision is not Decision.SMALLTALK][:MAX_QUESTIONS]
        if len(asked) < 2:
            return None
        raw = _raw_parts([q for q, _ in asked], text, self.mask)
        parts: list[PartAnswer] = []
        texts: list[str] = []
        seen: set[str] = set()
        pending: list[Option] = []
        for (q, r), q_raw in zip(asked, raw, strict=True):
            by_skill = self._skill_reply(Turn(q_raw, q, context, prev, st, r)) if self.skills else None
            if by_skill is not None and by_skill.kind == "handoff":
                why = f"{by_skill.reason} (one of {len(asked)} questions in the message)"
                return self._handoff(st, why, r, code="dynamic_failure")
            if by_skill is not None and by_skill.kind == "answer":
                parts.append(PartAnswer(q, "answer", by_skill.entry_id, by_skill.confidence))
                texts.append(f"关于“{q}”：{by_skill.text}")
                continue
            if by_skill is not None:  # the skill asks (which order, which product)
                parts.append(PartAnswer(q, "clarify", None, by_skill.confidence or r.confidence))
                texts.append(f"关于“{q}”，{by_skill.text}")
                continue
            entry = self.get_entry(r.entry_id) if r.decision is Decision.ANSWER and r.entry_id else None
            if entry is not None and r.entry_id not in seen and not self.dynamic(r.entry_id or ""):
                seen.add(r.entry_id)  # type: ignore[arg-type]
                parts.append(PartAnswer(q, "answer", r.entry_id, r.confidence))
                texts.append(f"关于“{q}”：{r.answer or entry[1]}")
                continue
            parts.append(PartAnswer(q, "clarify", None, r.confidence))
            options = [Option.of(c) for c in (r.options or r.candidates)[:MAX_OPTIONS]]
            if options and not pending:
                pending = options
                texts.append(f"关于“{q}”，{CLARIFY_HEAD}\n{_numbered(options)}")
            else:
                texts.append(f"关于“{q}”，能再具体描述一下吗？")
        answered = [p for p in parts if p.kind == "answer"]
        if not answered:
            return None
        st.tried = _add_tried(
            st.tried, [*(Option.of(c) for _, r in asked for c in r.candidates[:1]), *pending]
        )
        st.last_question = _fingerprint(normalize(" ".join(q for q, _ in asked)))
        st.topic = asked[-1][0]
        st = replace(
            st, clarify_options=pending, misses=0, last_answered_entry=answered[-1].entry_id, mood=None
        )
        reason = f"{len(asked)} questions in one message, {len(answered)} answered"
        first = answered[0]
        reply = Reply(
            "answer",
            "\n\n".join(texts),
            first.entry_id,
            first.confidence,
            options=pending,
            reason=reason,
            answers=parts,
        )
        return reply, st

    def _skill_reply(self, turn: Turn) -> Reply | None:
        """The first skill's reply to one question, as the skill gave it (None: the KB's)."""
        for skill in self.skills:
            reply = skill.respond(turn)
            if reply is not None:
                return reply
        return None

    def _handoff(
        self,
        st: ConversationState,
        reason: str,
        result: MatchResult | None,
        *,
        code: HandoffCode = "low_confidence",
    ) -> tuple[Reply, ConversationState]:
        last = st.history[-MAX_HANDOFF_MESSAGES:]
        if any(detect_mood(m) == "angry" for m in last):
            mood: str | None = "angry"
        else:
            mood = st.mood
        handoff = Handoff(
            reason, list(last), [Option(o.entry_id, o.question) for o in st.tried], mood, code=code
        )
        # the human takes over: nothing is pending and the miss count starts again if the bot resumes
        st = replace(st, clarify_options=[], clarify_question=None, misses=0)
        confidence = result.confidence if result is not None else 0.0
        return Reply("handoff", HANDOFF_TEXT, None, confidence, reason=reason, handoff=handoff), st


# ------------------------------------------------------------------------------------------ persistence
class Conversations:
    """Conversation state per shop and conversation id in a shared store, expiring after inactivity."""

    def __init__(self, store: KeyValueStore, ttl_seconds: int = 1800) -> None:
        self.store = store
        self.ttl_seconds = ttl_seconds

    @staticmethod
    def key(shop: str, conversation_id: str) -> str:
        # ids are percent-encoded so that no (shop, id) pair can spell another shop's key ("a:b", "c")
        return f"conv:{quote(str(shop), safe='')}:{quote(str(conversation_id), safe='')}"

    def load(self, shop: str, conversation_id: str) -> ConversationState | None:
        data = self.store.get_json(self.key(shop, conversation_id))
        if data is None:
            return None
        try:
            return ConversationState.from_dict(data)
        except (TypeError, KeyError, ValueError, AttributeError):
            log.warning("unreadable state of conversation %s/%s; starting afresh", shop, conversation_id)
            return None

    def save(self, shop: str, conversation_id: str, state: ConversationState) -> None:
        """Store the state; every save restarts the inactivity TTL."""
        self.store.set_json(self.key(shop, conversation_id), state.to_dict(), self.ttl_seconds)

    def load_versioned(self, shop: str, conversation_id: str) -> tuple[ConversationState | None, str | None]:
        """The state (as `load`) and a token of what was stored, for `save_if`."""
        data, token = self.store.get_json_versioned(self.key(shop, conversation_id))
        if data is None:
            return None, token
        try:
            return ConversationState.from_dict(data), token
        except (TypeError, KeyError, ValueError, AttributeError):
            log.warning("unreadable state of conversation %s/%s; starting afresh", shop, conversation_id)
            return None, token

    def save_if(self, shop: str, conversation_id: str, state: ConversationState, token: str | None) -> bool:
        """Store the state only if the conversation still holds what `token` was read from: a message
        processed at the same time (another thread or replica) saved first, and this turn must be
        stepped again from that state, or its turn would be lost."""
        return self.store.set_json_if(
            self.key(shop, conversation_id), state.to_dict(), self.ttl_seconds, token
        )

    def end(self, shop: str, conversation_id: str) -> None:
        self.store.delete(self.key(shop, conversation_id))
