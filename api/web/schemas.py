"""Request and response bodies of the HTTP API."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from api.db.ids import ID_MAX
from api.dialog.conversation import HandoffCode
from engine.kb import MAX_ANSWER_CHARS, MAX_CATEGORY_CHARS, MAX_QUESTION_CHARS

# The largest value an INTEGER column holds (PostgreSQL's is 32-bit): ids, versions and offsets above it are
# refused with a 422 instead of failing in the database driver.
DB_INT_MAX = 2**31 - 1
# exchange ids are BIGINT, made by the service (api/db/ids.py): 63-bit
EXCHANGE_ID_MAX = ID_MAX
# PostgreSQL text cannot hold NUL characters: a field stored as given refuses them with a 422.
NO_NUL = r"^[^\x00]*$"


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
    decision: Literal["answer", "clarify", "handoff", "smalltalk"]
    entry_id: str | None = Field(description="best entry; also set on a low-confidence handoff")
    answer: str | None = Field(description="the entry's answer, only when decision is answer")
    confidence: float = Field(description="calibrated probability that entry_id is right")
    candidates: list[CandidateOut]
    options: list[CandidateOut] = Field(
        default_factory=list,
        description="On clarify: the closest questions to offer the customer, best first",
    )
    reason: str
    smalltalk: str | None = Field(
        default=None,
        description="on smalltalk: the intent (greeting, thanks, goodbye, ack, robot, praise, venting)",
    )
    smalltalk_around: list[str] = Field(
        default_factory=list, description="small-talk intents taken off around the question that was matched"
    )
    model: ModelRef


class HealthResponse(BaseModel):
    status: Literal["ok"] = "ok"
    model_loaded: bool
    entries: int
    kb_hash: str | None
    dense: bool


# ---------------------------------------------------------------- shops

Mode = Literal["auto", "assist", "off"]
SHOP_ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"


class ShopCreate(BaseModel):
    id: str = Field(pattern=SHOP_ID_PATTERN, description="lower-case letters, digits, - and _")
    name: str = Field(default="", max_length=200, pattern=NO_NUL)
    mode: Mode = "auto"


class ShopKey(BaseModel):
    id: str
    api_key: str = Field(description="shown once: only its digest is stored")


class ConsolePasswordIn(BaseModel):
    password: str = Field(
        min_length=10, max_length=200, pattern=NO_NUL, description="the merchant's console password"
    )


class JdCredentialsIn(BaseModel):
    app_key: str = Field(min_length=1, max_length=200)
    app_secret: str = Field(min_length=1, max_length=200)
    access_token: str | None = Field(default=None, max_length=500)


class JdCredentialsOut(BaseModel):
    configured: bool
    app_key: str = ""
    app_secret: str = ""
    access_token: str = ""


class ShopOut(BaseModel):
    id: str
    name: str
    mode: Mode
    active_version: int | None
    served_version: int | None  # what this replica answers the next message with (routes/shops.shop_out)
    loaded: bool = False  # the shop's model is in this replica's memory
    jd: JdCredentialsOut


class ModeIn(BaseModel):
    mode: Mode


# ---------------------------------------------------------------- KB


class EntryIn(BaseModel):
    # the engine's limits (engine.kb.FIELD_LIMITS), so the entry API refuses what an upload would
    question: str = Field(max_length=MAX_QUESTION_CHARS)
    similar: list[Annotated[str, Field(max_length=MAX_QUESTION_CHARS)]] | str = Field(default_factory=list)
    answer: str = Field(max_length=MAX_ANSWER_CHARS)
    category: str = Field(default="", max_length=MAX_CATEGORY_CHARS)
    valid_from: str | None = None
    valid_to: str | None = None
    enabled: bool = True
    action: str = Field(
        default="",
        max_length=40,
        description="dynamic entry: order_status, logistics or refund_status; the answer is then a template "
        "({order.state}, {logistics.latest}, {refund.amount} ...) filled from JD's order APIs",
    )
    notify: bool = Field(default=False, description="answer and also raise a task for the agents")
    answer_variants: list[str] | str = Field(
        default_factory=list, description='more wordings of the answer, rotated (a list, or "||"-separated)'
    )


class EntryOut(BaseModel):
    id: str
    question: str
    similar: list[str]
    answer: str
    category: str
    valid_from: str | None
    valid_to: str | None
    enabled: bool
    action: str = ""
    notify: bool = False
    answer_variants: list[str] = Field(default_factory=list)


class IssueOut(BaseModel):
    source: str
    row: int | None
    column: str | None
    message: str


class VersionOut(BaseModel):
    version: int
    status: Literal["building", "ready", "failed", "superseded"]
    active: bool
    state: Literal["building", "failed", "superseded", "live", "activating", "inactive"] = Field(
        description="what the version is to the shop: building, failed or superseded as `status` says; a "
        "ready one is live (served: `active`), activating (its build ended and is activating it, within "
        "2 minutes) or inactive (ready but not served: an older version, or one whose build ended after a "
        "rollback, which sticks: `metrics.not_activated` says so; activate it to serve it)"
    )
    entries: int
    kb_hash: str
    options: dict[str, Any] = Field(default_factory=dict, description="engine options it was built with")
    metrics: dict[str, Any]
    error: str | None = Field(
        description="why it failed; while building, what happened to an earlier attempt that is retried"
    )
    created_at: str
    finished_at: str | None
    stage: str | None = Field(
        default=None,
        description="the build's stage: queued (waiting for a worker), starting, tokenize, embed, "
        "classifier, calibrate, follow-ups, evaluate, save; after the build, the last stage it reached",
    )
    progress: float = Field(default=0.0, ge=0, le=1, description="fraction of the current build done")
    attempts: int = Field(default=0, ge=0, description="builds started (one whose process died is retried)")


class ActivateOut(VersionOut):
    draft: Literal["replaced", "kept"] = Field(
        description="replaced: the editable KB is now this version's KB, edits start from it; "
        "kept: the editable KB was left as it was (draft=keep)"
    )
    draft_note: str = Field(description="what happened to the editable KB, in words")


class PublishOut(VersionOut):
    reused: bool = Field(
        default=False,
        description="true: the KB and engine options equal this building or ready version's, so no new "
        "version was made and nothing is rebuilt (a ready one that was not active is activated)",
    )


class UploadOut(BaseModel):
    entries: int
    version: int | None = Field(
        default=None, description="the version being built (or reused, see `reused`), when publish=true"
    )
    reused: bool = Field(default=False, description="as in the publish response")
    warnings: list[IssueOut] = Field(
        default_factory=list,
        description="what loaded but deserves a look, located as problems are (source, row, column, "
        "message): columns that are not KB columns "
        "and were ignored (with the closest known name), hidden rows that were read, the sheet that was "
        "read, paraphrases dropped because the matcher could not use them",
    )


class MiningFigures(BaseModel):
    messages: int = Field(description="logged messages mined (each counted once, under its first reason)")
    by_reason: dict[str, int] = Field(
        description="messages by why they were mined: correction, thumbs_down, handoff, clarify, low_rating"
    )
    clusters: int = Field(description="clusters proposed (one row each)")
    clustered_messages: int
    new_entries: int
    paraphrases: int


class MiningOut(BaseModel):
    since: str
    until: str
    model_version: int | None = Field(description="the served version the messages were clustered with")
    figures: MiningFigures
    proposals: list[dict[str, str]] = Field(
        description="one row per cluster in the KB's columns (id, question, similar, answer, category) and "
        "proposal, cluster_size, new_paraphrases, closest_entry, last_seen; largest and most recent first"
    )


# ---------------------------------------------------------------- reports


class TrafficCounts(BaseModel):
    messages: int = Field(
        description="customer messages the bot replied to (answer, clarify, handoff, small talk)"
    )
    questions: int = Field(description="messages less small talk: what the rates are shares of")
    answer: int
    clarify: int
    handoff: int
    smalltalk: int
    answer_rate: float | None = Field(description="answer / questions (None: no question)")
    clarify_rate: float | None
    handoff_rate: float | None


class TrafficTotals(TrafficCounts):
    conversations: int
    smalltalk_share: float | None = Field(description="small talk / messages")
    assist_requests: int = Field(description="suggestions an agent asked for (assist), not in messages")


class Percentiles(BaseModel):
    p50: float | None
    p95: float | None
    p99: float | None


class TrafficBucket(TrafficCounts):
    start: str = Field(description="the hour or Beijing day the bucket begins (ISO 8601, +08:00)")
    latency_ms: Percentiles


class SkillCounts(BaseModel):
    answer: int
    clarify: int
    handoff: int


class HandoffReason(BaseModel):
    code: str = Field(description="a handoff code (HandoffCode), or other")
    count: int
    share: float | None = Field(description="of all handoffs")


class Latency(Percentiles):
    n: int
    mean: float | None
    max: float | None


class ConfidenceBin(BaseModel):
    lo: float
    hi: float
    answer: int
    clarify: int
    handoff: int


class ScoreFigures(BaseModel):
    ratings: int
    scores: dict[str, int] = Field(description="ratings by score")
    average: float | None
    dissatisfied_share: float | None = Field(description="share scored low_score or less")


class TrafficRatings(BaseModel):
    ratings: int = Field(description="JD ratings with a score made in the period")
    low_score: int
    by_outcome: dict[str, ScoreFigures] = Field(
        description="by what the bot did in the rated chat: answered, not_answered, handed_off, unmatched"
    )


class TrafficFeedback(BaseModel):
    up: int
    down: int
    correction: int
    correction_out_of_scope: int
    exchanges: int = Field(description="exchanges with any feedback")


class TopEntry(BaseModel):
    entry_id: str
    question: str | None = Field(description="its question in the live KB (None: no longer in it)")
    skill: str
    count: int
    share: float | None = Field(description="of all answers")
    last_seen: str


class HandedOffQuestion(BaseModel):
    text: str = Field(description="the latest masked text of the group")
    count: int
    last_seen: str
    codes: dict[str, int] = Field(description="handoffs of the group by code")


class TrafficOut(BaseModel):
    """A shop's logged traffic over a period (api/store/traffic.py); times are ISO 8601, Beijing time."""

    shop: str
    since: str
    until: str
    bucket: Literal["hour", "day"]
    excluded_channels: list[str] = Field(
        description="channels whose exchanges no figure counts (console: the merchant's tests in Try)"
    )
    totals: TrafficTotals
    by_skill: dict[str, SkillCounts] = Field(description="questions by who took them: faq, orders, products")
    series: list[TrafficBucket]
    handoff_reasons: list[HandoffReason]
    latency_ms: Latency
    confidence: list[ConfidenceBin]
    ratings: TrafficRatings
    feedback: TrafficFeedback
    top_entries: list[TopEntry]
    handed_off_questions: list[HandedOffQuestion]


# ---------------------------------------------------------------- conversations


class MessageIn(BaseModel):
    conversation_id: str = Field(min_length=1, max_length=200)
    text: str = Field(max_length=2000)
    sku_id: str | None = Field(
        default=None,
        max_length=32,
        pattern=r"^[0-9A-Za-z_-]+$",
        description="the product page the customer is on",
    )
    customer_pin: str | None = Field(
        default=None,
        max_length=100,
        pattern=NO_NUL,
        description="the customer's JD pin (orders are shown to them only)",
    )
    order_id: str | None = Field(
        default=None,
        max_length=32,
        pattern=r"^[0-9A-Za-z_-]+$",
        description="an order card the customer sent: the order an order question is about",
    )


class OptionOut(BaseModel):
    entry_id: str
    question: str


class Suggestion(BaseModel):
    entry_id: str
    question: str
    answer: str
    confidence: float = Field(
        description="estimated probability that this entry is right: calibrated for the first suggestion, "
        "for the others an estimate no higher than the one above it"
    )


class HandoffOut(BaseModel):
    reason: str
    code: HandoffCode = Field(description="why, as a fixed label (also in /metrics and the exchange log)")
    last_messages: list[str]
    candidates_tried: list[OptionOut]
    mood: str | None
    suggestions: list[Suggestion] = Field(
        default_factory=list,
        description="assist mode: answers the bot proposes to the agent taking over, best first",
    )
    sku_id: str | None = Field(
        default=None, description="the product the conversation is about (product page, link or catalog)"
    )
    answered: list[OptionOut] = Field(
        default_factory=list,
        description="entries the bot answered earlier in the conversation, oldest first: what the customer "
        "was already told",
    )


class PartAnswerOut(BaseModel):
    question: str
    kind: Literal["answer", "clarify", "handoff", "smalltalk"]
    entry_id: str | None
    confidence: float


class ReplyOut(BaseModel):
    kind: Literal["answer", "clarify", "handoff", "smalltalk"]
    text: str
    entry_id: str | None
    confidence: float
    options: list[OptionOut]
    reason: str
    handoff: HandoffOut | None
    smalltalk: str | None = Field(default=None, description="on smalltalk: the intent replied to")
    answers: list[PartAnswerOut] = Field(
        default_factory=list, description="when the message held several questions: one per question"
    )
    task_id: int | None = Field(
        default=None, description="a task raised for the agents beside this answer (entry marked notify)"
    )
    exchange_id: int | None = Field(default=None, description="for feedback on this reply")
    model_version: int | None


class TaskOut(BaseModel):
    """Something an agent must do after the bot answered (改地址, 修改订单 ...)."""

    id: int
    conversation_id: str
    entry_id: str
    context: list[str] = Field(description="the customer's last messages, masked")
    status: Literal["open", "done"]
    created_at: str
    done_at: str | None


class AssistOut(BaseModel):
    suggestions: list[Suggestion]
    model_version: int | None
    exchange_id: int | None


class FeedbackIn(BaseModel):
    exchange_id: int = Field(ge=1, le=EXCHANGE_ID_MAX)
    kind: Literal["up", "down", "correction"]
    correct_entry_id: str | None = Field(
        default=None, max_length=200, pattern=NO_NUL, description="for a correction: the right entry"
    )
    out_of_scope: bool = Field(default=False, description="for a correction: no entry could answer it")


class ExchangeOut(BaseModel):
    id: int
    conversation_id: str
    channel: str
    text: str
    decision: str
    entry_id: str | None
    confidence: float
    reason: str
    model_version: int | None
    latency_ms: float
    created_at: str


SmallTalkIntent = Literal["greeting", "thanks", "goodbye", "ack", "robot", "praise", "venting"]


class SmallTalkSetting(BaseModel):
    enabled: bool = True
    reply: str | None = Field(default=None, max_length=500, pattern=NO_NUL, description="None: the default")


class ShopSettings(BaseModel):
    """The shop's engine options, used by its next publish (a published version keeps its own)."""

    user_words: list[Annotated[str, Field(min_length=1, max_length=100)]] = Field(
        default_factory=list,
        max_length=20000,
        description="product and model names kept whole by the segmenter",
    )
    synonyms: dict[str, list[Annotated[str, Field(min_length=1, max_length=100)]]] = Field(
        default_factory=dict,
        description='canonical word -> its variants, e.g. {"专票": ["增值税专用发票", "增票"]}',
    )
    human_phrases: list[Annotated[str, Field(min_length=1, max_length=50)]] | None = Field(
        default=None, description="phrases that hand off at once (default: 转人工, 人工客服, 投诉, ...)"
    )
    target_precision: float = Field(default=0.95, ge=0.5, le=0.999, description="answer precision to aim for")
    threshold_confidence: float = Field(
        default=0.8,
        ge=0.0,
        le=0.99,
        description="confidence that answers meet target_precision (a lower bound on the calibration "
        "examples' precision, so a small KB answers cautiously); 0 trusts the examples' own precision",
    )
    smalltalk: dict[SmallTalkIntent, SmallTalkSetting] = Field(
        default_factory=dict,
        description="per small-talk intent: switch it off or word its reply (defaults apply to the rest)",
    )
    non_text: Literal["ask", "handoff"] = Field(
        default="ask", description="pictures, voice, stickers: ask for text, or hand off to a person"
    )
    non_text_reply: str | None = Field(default=None, max_length=500, pattern=NO_NUL)
    jd_reply_mode: Literal["sync", "async"] = Field(
        default="sync",
        description="JD pushes: sync answers in the HTTP response; async acknowledges at once and sends the "
        "reply through JOS (needs the push's customer_pin and a bot pin)",
    )
    jd_bot_pin: str | None = Field(
        default=None,
        max_length=100,
        pattern=NO_NUL,
        description="the waiter account async replies are sent from (default KEFU_JD_BOT_PIN)",
    )
