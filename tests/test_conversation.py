"""The conversation policy on a real engine, and the shared state stores on real Redis and in memory."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import re
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from api.dialog.conversation import (
    CLARIFY_HEAD,
    HANDOFF_TEXT,
    REASON_ANGRY,
    REASON_HUMAN,
    REASON_OUT_OF_RANGE,
    REASON_REJECTED,
    REASON_REPEATED,
    REJECTED_HEAD,
    REJECTED_REPHRASE,
    REPHRASE_TEXT,
    ConversationPolicy,
    Conversations,
    ConversationState,
    Option,
    Reply,
    TurnContext,
    detect_mood,
    option_number,
    rejects_options,
    resolve_choice,
)
from api.store.kv import MemoryStore, RedisStore, make_store
from engine import Matcher

KB: dict[str, dict[str, Any]] = {
    "invoice": {
        "question": "可以开发票吗",
        "similar": ["能开增值税专票吗", "发票怎么开", "我要开发票", "公司报销需要发票"],
        "answer": "亲，支持开具电子普通发票和增值税专用发票，下单时在发票栏填写即可。",
    },
    "ship-time": {
        "question": "什么时候发货",
        "similar": ["多久能发货", "下单后几天发货", "今天能发出吗", "怎么还不发货"],
        "answer": "亲，现货商品下单后48小时内发货哦。",
    },
    "warranty": {
        "question": "保修多久",
        "similar": ["质保期是多长时间", "坏了能保修吗", "售后保修政策", "保修需要什么凭证"],
        "answer": "亲，本店商品全国联保一年，凭发票或订单号即可保修。",
    },
    "return": {
        "question": "怎么申请退货",
        "similar": ["不想要了能退吗", "七天无理由退货", "退货流程是什么", "收到货不满意想退"],
        "answer": "亲，签收后7天内可在订单详情页申请无理由退货。",
    },
    "freight": {
        "question": "运费怎么算",
        "similar": ["包邮吗", "邮费多少", "满多少包邮", "偏远地区要运费吗"],
        "answer": "亲，订单满99元包邮，不满收取6元运费。",
    },
    "address": {
        "question": "下单后能改地址吗",
        "similar": ["收货地址写错了", "怎么修改收货地址", "地址填错了怎么办", "能换个地址收货吗"],
        "answer": "亲，订单出库前可在订单详情页修改收货地址。",
    },
    "tracking": {
        "question": "怎么查物流",
        "similar": ["快递到哪了", "物流信息在哪看", "查一下快递单号", "包裹怎么一直没更新"],
        "answer": "亲，在我的订单-订单详情中可查看实时物流。",
    },
    "price-protect": {
        "question": "降价了能价保吗",
        "similar": ["买贵了能退差价吗", "价格保护怎么申请", "刚买就降价了", "保价多少天"],
        "answer": "亲，签收后30天内降价可申请价保退差价。",
    },
    "baitiao": {
        "question": "支持白条分期吗",
        "similar": ["可以分期付款吗", "白条免息吗", "能分几期", "信用卡分期可以吗"],
        "answer": "亲，支持京东白条3/6/12期分期。",
    },
}


def get_entry(entry_id: str) -> tuple[str, str] | None:
    e = KB.get(entry_id)
    return (e["question"], e["answer"]) if e else None


def mask_digits(text: str) -> str:
    return re.sub(r"\d", "*", text)


@pytest.fixture(scope="module")
def matcher() -> Matcher:
    """One small real engine for the module (dense off: fast, no model download)."""
    return Matcher.build([{"id": k, **v} for k, v in KB.items()], dense=False)


def with_thresholds(m: Matcher, t_answer: float, t_clarify: float) -> Matcher:
    """The same fitted engine with other decision thresholds, to force clarify or low-confidence handoff."""
    forced = copy.copy(m)
    forced.policy = dataclasses.replace(m.policy, t_answer=t_answer, t_clarify=t_clarify)
    return forced


def policy_for(m: Matcher, **kw: Any) -> ConversationPolicy:
    return ConversationPolicy(match=lambda t, **kw: m.match(t, top_k=5, **kw), get_entry=get_entry, **kw)


@pytest.fixture
def bot(matcher: Matcher) -> ConversationPolicy:
    """The engine's own thresholds: confident questions get answers."""
    return policy_for(matcher)


@pytest.fixture
def clarifying_bot(matcher: Matcher) -> ConversationPolicy:
    """Never confident enough to answer, always confident enough to offer options."""
    return policy_for(with_thresholds(matcher, t_answer=1.01, t_clarify=0.0))


@pytest.fixture
def unsure_bot(matcher: Matcher) -> ConversationPolicy:
    """Below the clarify threshold on every message: the engine hands off for low confidence."""
    return policy_for(with_thresholds(matcher, t_answer=1.01, t_clarify=1.01))


def run(policy: ConversationPolicy, *messages: str) -> tuple[list[Reply], ConversationState]:
    state: ConversationState | None = None
    replies = []
    for text in messages:
        reply, state = policy.step(state, text)
        replies.append(reply)
    assert state is not None
    return replies, state


# ------------------------------------------------------------------------------------------ answering
def test_confident_question_is_answered_and_remembered(bot: ConversationPolicy) -> None:
    """The common case: one message, one answer from the KB; the state remembers what was answered."""
    reply, state = bot.step(None, "我要开发票")
    assert reply.kind == "answer"
    assert reply.entry_id == "invoice"
    assert reply.text == KB["invoice"]["answer"]
    assert reply.handoff is None and reply.options == []
    assert state.last_answered_entry == "invoice" and state.misses == 0
    assert state.history == ["我要开发票"]


@pytest.mark.parametrize("choice", ["2", "第二个", "就第二个吧", "<question text>"])
def test_clarify_then_choice_answers_the_chosen_entry(
    clarifying_bot: ConversationPolicy, choice: str
) -> None:
    """A clarify offers numbered options; the customer's pick (by number or by text) gets that answer."""
    first, state = clarifying_bot.step(None, "那发票应该怎么开呀")
    assert first.kind == "clarify"
    assert 2 <= len(first.options) <= 3
    assert first.text.startswith(CLARIFY_HEAD + "\n1. ")
    assert f"\n2. {first.options[1].question}" in first.text
    assert state.clarify_options == first.options and state.misses == 0  # a first list is not a miss

    picked = first.options[1]
    text = picked.question if choice == "<question text>" else choice
    reply, after = clarifying_bot.step(state, text)
    assert reply.kind == "answer"
    assert reply.entry_id == picked.entry_id
    assert reply.text == KB[picked.entry_id]["answer"]
    assert after.clarify_options == [] and after.misses == 0
    assert after.last_answered_entry == picked.entry_id


def test_a_choice_carries_the_question_the_list_was_offered_for(matcher: Matcher) -> None:
    """Labelled data needs the real question, not "第二个"; the masked one, kept in the state."""
    bot = ConversationPolicy(
        match=lambda t, **kw: with_thresholds(matcher, 1.01, 0.0).match(t, top_k=5, **kw),
        get_entry=get_entry,
        mask=lambda t: t.replace("13812345678", "[手机号]"),
    )
    first, state = bot.step(None, "13812345678 那发票应该怎么开呀")
    assert first.question is None and state.clarify_question == "[手机号] 那发票应该怎么开呀"
    restored = ConversationState.from_dict(json.loads(json.dumps(state.to_dict())))
    reply, after = bot.step(restored, "第二个")
    assert reply.kind == "answer" and reply.question == "[手机号] 那发票应该怎么开呀"
    assert "question" not in reply.to_dict() and after.clarify_question is None


def test_an_unrecognised_reply_to_a_list_gets_one_more_chance(clarifying_bot: ConversationPolicy) -> None:
    """A clarify answered with nonsense is the first miss, not a handoff: the bot offers a list again."""
    (first, second), state = run(clarifying_bot, "那发票应该怎么开呀", "都不是，我想问别的")
    assert first.kind == "clarify" and second.kind == "clarify"
    assert state.misses == 1 and state.clarify_options == second.options
    third, after = clarifying_bot.step(state, "1")
    assert third.kind == "answer" and third.entry_id == second.options[0].entry_id
    assert after.misses == 0


def test_two_misses_in_a_row_hand_off_with_what_was_tried(clarifying_bot: ConversationPolicy) -> None:
    """After a list, two replies in a row that pick nothing and cannot be answered hand off."""
    messages = ["那发票应该怎么开呀", "都不是，我想问别的", "还是不太清楚"]
    (first, second, third), state = run(clarifying_bot, *messages)
    assert [first.kind, second.kind] == ["clarify", "clarify"]
    assert third.kind == "handoff"
    assert third.text == HANDOFF_TEXT
    assert third.handoff is not None
    assert "2 misses" in third.handoff.reason and third.reason == third.handoff.reason
    tried = [o.entry_id for o in third.handoff.candidates_tried]
    assert tried and tried[: len(first.options)] == [o.entry_id for o in first.options]
    assert len(tried) == len(set(tried))
    assert third.handoff.last_messages == messages
    assert state.clarify_options == []


def test_fresh_lists_are_not_misses_but_rephrase_requests_are(matcher: Matcher) -> None:
    """A clarify list for a new question never counts; asking to rephrase always does."""
    clarifying = policy_for(with_thresholds(matcher, t_answer=1.01, t_clarify=0.0))
    _, state = clarifying.step(None, "那发票应该怎么开呀")
    assert state.misses == 0
    unsure = policy_for(with_thresholds(matcher, t_answer=1.01, t_clarify=1.01))
    first, state = unsure.step(None, "那发票应该怎么开呀")
    assert first.text.startswith(REPHRASE_TEXT) and state.misses == 1
    # after a request to rephrase, a list for the new wording is free; a miss on that list is the second
    replies, state = run(clarifying, "qwxz", "那发票应该怎么开呀")
    assert [r.text.startswith(REPHRASE_TEXT) for r in replies] == [True, False] and state.misses == 1
    last, _ = clarifying.step(state, "还是不太清楚")
    assert last.kind == "handoff" and last.handoff is not None and "2 misses" in last.handoff.reason


def test_low_confidence_asks_to_rephrase_and_offers_candidates(unsure_bot: ConversationPolicy) -> None:
    """Below the clarify threshold the bot asks to rephrase, still listing candidates one can pick."""
    first, state = unsure_bot.step(None, "那发票应该怎么开呀")
    assert first.kind == "clarify"
    assert first.text.startswith(REPHRASE_TEXT)
    assert first.options and "\n1. " in first.text
    reply, _ = unsure_bot.step(state, "第一个")
    assert reply.kind == "answer" and reply.entry_id == first.options[0].entry_id


def test_emoji_only_messages_are_stickers_not_misses(bot: ConversationPolicy) -> None:
    """👍 or 🙏🙏 typed from the keyboard is a sticker: asked for text like [微笑], never counted as a miss
    (two thumbs-up in a row used to hand the customer off)."""
    (first, second), state = run(bot, "😀", "🙏🙏")
    assert first.kind == second.kind == "smalltalk" and "文字" in first.text
    assert state.misses == 0


def test_a_choice_whose_entry_vanished_is_a_miss(matcher: Matcher) -> None:
    """The KB may change between two turns: picking a removed entry must not answer with nothing."""
    forced = with_thresholds(matcher, t_answer=1.01, t_clarify=0.0)
    gone: set[str] = set()
    policy = ConversationPolicy(
        match=lambda t, **kw: forced.match(t, top_k=5, **kw),
        get_entry=lambda e: None if e in gone else get_entry(e),
    )
    first, state = policy.step(None, "那发票应该怎么开呀")
    gone.add(first.options[0].entry_id)
    reply, after = policy.step(state, "1")
    assert reply.kind == "clarify"
    assert after.misses == 1
    assert first.options[0].entry_id not in {o.entry_id for o in reply.options}


@pytest.mark.parametrize("none", ["都不是", "以上都不是哦", "不是这个", "都不对", "没有我要的"])
def test_none_of_these_offers_the_next_closest_questions(
    clarifying_bot: ConversationPolicy, none: str
) -> None:
    """ "都不是" after a list is a miss answered with the next closest entries for the same question, never
    the rejected ones again; picking one of them answers it."""
    (first, second), state = run(clarifying_bot, "那发票应该怎么开呀", none)
    assert first.kind == "clarify" and second.kind == "clarify"
    assert second.reason == REASON_REJECTED and state.misses == 1
    assert second.text.startswith(REJECTED_HEAD + "\n1. ")
    rejected = {o.entry_id for o in first.options}
    assert second.options and not rejected & {o.entry_id for o in second.options}
    assert state.clarify_question == "那发票应该怎么开呀"
    third, after = clarifying_bot.step(state, "1")
    assert third.kind == "answer" and third.entry_id == second.options[0].entry_id
    assert third.question == "那发票应该怎么开呀" and after.misses == 0


def test_none_of_these_with_nothing_left_asks_to_rephrase(matcher: Matcher) -> None:
    """When no other entry is close, "都不是" asks to rephrase, and it is a miss."""
    forced = with_thresholds(matcher, t_answer=1.01, t_clarify=0.0)
    few = ConversationPolicy(
        match=lambda t, **kw: (
            forced.match(t, top_k=5, **kw)
            if not kw.get("exclude")
            else dataclasses.replace(forced.match(t, top_k=5, **kw), options=[], candidates=[])
        ),
        get_entry=get_entry,
    )
    (first, second), state = run(few, "那发票应该怎么开呀", "都不是")
    assert first.kind == "clarify"
    assert second.kind == "clarify" and second.text == REJECTED_REPHRASE and second.options == []
    assert state.misses == 1 and state.clarify_options == []
    (third,), _ = run(ConversationPolicy(match=few.match, get_entry=get_entry, max_misses=1), "都不是")
    assert third.kind == "clarify"  # no list pending: "都不是" alone is matched as any message


def test_none_of_these_followed_by_a_question_matches_that_question(matcher: Matcher) -> None:
    """ "不是这个，我想问怎么退货": the words after the rejection are the customer's question."""
    clarifying = with_thresholds(matcher, t_answer=1.01, t_clarify=0.0)
    bot = ConversationPolicy(
        match=lambda t, **kw: (clarifying if "发票" in t else matcher).match(t, top_k=5, **kw),
        get_entry=get_entry,
    )
    (first, second), state = run(bot, "那发票应该怎么开呀", "不是这个，怎么申请退货")
    assert first.kind == "clarify"
    assert second.kind == "answer" and second.entry_id == "return"
    assert state.clarify_options == [] and state.history[-1] == "不是这个，怎么申请退货"


@pytest.mark.parametrize(("pick", "n"), [("5", 5), ("第九个", 9)])
def test_a_number_the_list_does_not_have_gets_the_list_again(
    clarifying_bot: ConversationPolicy, pick: str, n: int
) -> None:
    """ "5" for a list of three is not matched as a question: the same list again, saying which numbers
    exist; it counts as a miss, and a valid number then answers."""
    (first, second), state = run(clarifying_bot, "那发票应该怎么开呀", pick)
    k = len(first.options)
    assert second.kind == "clarify" and second.options == first.options
    assert second.text.startswith(f"没有第{n}个选项哦，请回复1到{k}之间的数字")
    assert second.reason == REASON_OUT_OF_RANGE and state.misses == 1
    third, _ = clarifying_bot.step(state, "2")
    assert third.kind == "answer" and third.entry_id == first.options[1].entry_id


@pytest.mark.parametrize(
    ("text", "rest"),
    [
        ("都不是", ""),
        ("都不是，我想问别的", "我想问别的"),
        ("不是这个 我要开专票", "我要开专票"),
        ("以上都不是哦", ""),
        ("不对", ""),
        ("不是很清楚", None),
        ("没有收到货", None),
        ("可以开发票吗", None),
    ],
)
def test_rejects_options(text: str, rest: str | None) -> None:
    assert rejects_options(text) == rest


def test_option_number() -> None:
    got = [option_number(t) for t in ("5", "第五个", "选十", "12", "88", "12345", "发票", "")]
    assert got == [5, 5, 10, None, None, None, None, None]


def test_88_after_a_list_is_a_goodbye_not_an_option(clarifying_bot: ConversationPolicy) -> None:
    (_, second), _ = run(clarifying_bot, "那发票应该怎么开呀", "88")
    assert second.kind == "smalltalk" and second.smalltalk == "goodbye"


# ---------------------------------------------------------------------------------------------- handoff
@pytest.mark.parametrize(
    "text", ["转人工", "我要人工客服！", "人工", "人工！", "人工 人工", "不要机器人", "叫人工出来"]
)
def test_explicit_human_request_hands_off_at_once(bot: ConversationPolicy, text: str) -> None:
    """Asking for a person is honoured immediately, even with no miss so far."""
    reply, state = bot.step(None, text)
    assert reply.kind == "handoff"
    assert reply.handoff is not None and reply.handoff.reason == REASON_HUMAN
    assert reply.handoff.last_messages == [text]
    assert state.misses == 0


def test_a_handoff_tells_the_agent_the_product_and_what_was_answered(bot: ConversationPolicy) -> None:
    """The agent sees the product the customer is on and the entries the bot answered before, oldest
    first, so the customer is not asked again."""
    ctx = TurnContext(sku_id="100012043978")
    state: ConversationState | None = None
    for text in ("我要开发票", "运费怎么算", "可以开发票吗", "转人工"):
        reply, state = bot.step(state, text, ctx)
    assert reply.kind == "handoff" and reply.handoff is not None
    assert reply.handoff.sku_id == "100012043978"
    assert [o.entry_id for o in reply.handoff.answered] == ["freight", "invoice"]
    assert reply.handoff.answered[0].question == KB["freight"]["question"]
    assert state is not None and ConversationState.from_dict(json.loads(json.dumps(state.to_dict()))) == state


def test_human_inside_a_longer_message_is_a_product_word(bot: ConversationPolicy) -> None:
    """人工 alone asks for a person; in 人工智能 or 人工费 it is what the customer asks about."""
    for text in ("人工智能的功能有吗", "安装要人工费吗"):
        reply, _ = bot.step(None, text)
        assert reply.handoff is None or reply.handoff.reason != REASON_HUMAN, text


def test_human_request_wins_over_a_pending_clarify(clarifying_bot: ConversationPolicy) -> None:
    """Mid-clarify, "转人工" is not read as a (failed) choice but as the request it is."""
    (first, second), _ = run(clarifying_bot, "运费到底怎么算", "转人工")
    assert first.kind == "clarify"
    assert second.kind == "handoff" and second.reason == REASON_HUMAN


@pytest.mark.parametrize("again", ["可以开发票吗？", "我要开发票"])
def test_asking_the_same_thing_again_hands_off(bot: ConversationPolicy, again: str) -> None:
    """The same question (verbatim or another wording of the same entry) means the answer did not help."""
    (first, second), _ = run(bot, "可以开发票吗", again)
    assert first.kind == "answer" and first.entry_id == "invoice"
    assert second.kind == "handoff"
    assert second.handoff is not None and second.handoff.reason == REASON_REPEATED
    assert "invoice" in {o.entry_id for o in second.handoff.candidates_tried}


def test_a_different_question_after_an_answer_is_answered(bot: ConversationPolicy) -> None:
    """The repeat rule must not fire on a new topic."""
    replies, _ = run(bot, "可以开发票吗", "运费怎么算", "怎么查物流")
    assert [r.kind for r in replies] == ["answer"] * 3
    assert [r.entry_id for r in replies] == ["invoice", "freight", "tracking"]


def test_angry_customer_is_handed_off_instead_of_clarified(clarifying_bot: ConversationPolicy) -> None:
    """The same unsure question gets a list when calm, a human when angry."""
    calm, _ = clarifying_bot.step(None, "发货到底要多久")
    assert calm.kind == "clarify"
    angry, state = clarifying_bot.step(None, "什么破客服，发货到底要多久")
    assert angry.kind == "handoff"
    assert angry.handoff is not None
    assert angry.handoff.reason == REASON_ANGRY
    assert angry.handoff.mood == "angry"
    assert state.clarify_options == []


def test_angry_customer_still_gets_a_confident_answer(matcher: Matcher) -> None:
    """Anger only replaces lists: when the bot knows the answer it gives it."""
    confident = policy_for(with_thresholds(matcher, t_answer=0.0, t_clarify=0.0))
    reply, _ = confident.step(None, "什么破店，运费怎么算")
    assert reply.kind == "answer" and reply.entry_id == "freight"


def test_mood_of_earlier_messages_reaches_the_agent(bot: ConversationPolicy) -> None:
    """An angry message two turns back still flags the handoff as angry."""
    replies, _ = run(bot, "垃圾，运费怎么算", "怎么查物流", "转人工")
    assert replies[-1].handoff is not None and replies[-1].handoff.mood == "angry"
    calm, _ = run(bot, "运费怎么算", "转人工")
    assert calm[-1].handoff is not None and calm[-1].handoff.mood is None


def test_history_is_masked_and_capped(matcher: Matcher) -> None:
    """Only masked messages are kept and handed over, and at most the last 10 of them."""
    policy = policy_for(matcher, mask=mask_digits)
    phone = "13812345678"
    messages = [f"我的手机号{phone}，快递到哪了", *[f"第{i}条消息 运费" for i in range(10)], "转人工"]
    replies, state = run(policy, *messages)
    handoff = replies[-1].handoff
    assert handoff is not None and handoff.reason == REASON_HUMAN
    assert len(handoff.last_messages) == 10 and len(state.history) == 10
    assert handoff.last_messages[-1] == "转人工"
    everything = json.dumps([state.to_dict(), replies[0].to_dict(), handoff.to_dict()], ensure_ascii=False)
    assert phone not in everything and not re.search(r"\d", "".join(state.history))
    first, state1 = policy.step(None, messages[0])
    assert (first.entry_id or first.options[0].entry_id) == "tracking"  # masking does not change matching
    assert state1.history == ["我的手机号***********，快递到哪了"]


def _raw_value(store: MemoryStore | RedisStore, key: str) -> str:
    """The stored bytes themselves, not a decoded view."""
    if isinstance(store, RedisStore):
        return str(store.client.get(store.key(key)))
    return str(store._data[key][0])


def test_no_address_reaches_the_stored_state(store: MemoryStore | RedisStore, matcher: Matcher) -> None:
    """The state kept the normalized last question, in which phones are masked but an address is not."""
    from api.dialog.privacy import mask_pii

    policy = policy_for(matcher, mask=mask_pii)
    convs = Conversations(store, ttl_seconds=60)
    text = "快递寄到北京市朝阳区建国路88号，电话13812345678，到哪了"
    _, state = policy.step(None, text)
    convs.save("shop-1", "c-addr", state)
    raw = _raw_value(store, Conversations.key("shop-1", "c-addr"))
    for secret in ("建国路", "朝阳区", "88号", "13812345678"):
        assert secret not in raw
    # the same message again is still recognised as a repeat
    again, _ = policy.step(convs.load("shop-1", "c-addr"), text)
    assert again.kind == "handoff" and again.reason == REASON_REPEATED


def test_step_does_not_mutate_the_input_state(clarifying_bot: ConversationPolicy) -> None:
    """State is updated purely, so a caller can retry a turn or compare before/after."""
    _, state = clarifying_bot.step(None, "那发票应该怎么开呀")
    before = copy.deepcopy(state)
    _, after = clarifying_bot.step(state, "2")
    assert state == before
    assert after is not state and after != state


def test_state_round_trips_through_json(clarifying_bot: ConversationPolicy) -> None:
    """State crosses replicas as JSON: to_dict -> json -> from_dict gives the same state."""
    _, state = run(clarifying_bot, "那发票应该怎么开呀")
    assert state.clarify_options and state.tried and state.last_question
    again = ConversationState.from_dict(json.loads(json.dumps(state.to_dict(), ensure_ascii=False)))
    assert again == state
    assert ConversationState.from_dict({}) == ConversationState()


# ---------------------------------------------------------------------------------------- choices, mood
OPTIONS = [
    Option("invoice", "可以开发票吗"),
    Option("ship-time", "什么时候发货"),
    Option("warranty", "保修多久"),
]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1", "invoice"),
        ("2", "ship-time"),
        ("2.", "ship-time"),
        ("２", "ship-time"),
        (" 3 ", "warranty"),
        ("第2个", "ship-time"),
        ("第二个", "ship-time"),
        ("第二條", "ship-time"),
        ("第二条", "ship-time"),
        ("二", "ship-time"),
        ("三", "warranty"),
        ("选2", "ship-time"),
        ("就第二个吧", "ship-time"),
        ("第一个吧", "invoice"),
        ("我选第三个", "warranty"),
        ("最后一个", "warranty"),
        ("最后那个", "warranty"),
        ("倒数第二个", "ship-time"),
        ("①", "invoice"),
        ("4", None),
        ("0", None),
        ("第五个", None),
        ("十", None),
        ("12", None),
        ("可以开发票吗", "invoice"),
        ("可以开发票吗？", "invoice"),
        ("保修多久", "warranty"),
        ("我想问什么时候发货呀", "ship-time"),
        ("什么时候", "ship-time"),
        ("开发票", None),
        ("今天天气不错", None),
        ("", None),
        ("第二个订单怎么查物流", None),
    ],
)
def test_resolve_choice(text: str, expected: str | None) -> None:
    """Numbers, ordinals and question text pick an option; anything else or out of range picks none."""
    got = resolve_choice(text, OPTIONS)
    assert (got.entry_id if got else None) == expected


def test_resolve_choice_refuses_ambiguous_text_and_empty_lists() -> None:
    """Text matching two options is no choice; with no pending options nothing resolves."""
    opts = [Option("a", "发票怎么开"), Option("b", "发票怎么开专票")]
    assert resolve_choice("请问发票怎么开专票呢", opts) is None
    assert resolve_choice("发票怎么开", opts) == opts[0]  # exact equality is not ambiguous
    assert resolve_choice("1", []) is None


@pytest.mark.parametrize(
    "text",
    [
        "垃圾客服",
        "你们是骗子吧",
        "氣死我了",
        "给你们差评",
        "我要投诉",
        "什么破手机",
        "服务太差了",
        "滚",
        "无语了",
        "搞什么啊",
        "等了半天没人理",
        "我已经反复问了这个问题",
        "问了好几次了还没解决",
        "赶紧给我退钱",
        "为什么还不发货！！！",
        "到底发没发???",
    ],
)
def test_detect_mood_angry(text: str) -> None:
    """Curated angry words (traditional and full-width forms too) and shouting punctuation."""
    assert detect_mood(text) == "angry"


@pytest.mark.parametrize(
    "text",
    [
        "滚筒洗衣机保修多久",
        "怎么退钱",
        "能退钱吗",
        "手机反复重启的问题怎么办",
        "谢谢",
        "发货了吗？",
        "好的！！",
        "",
    ],
)
def test_detect_mood_calm(text: str) -> None:
    """Product words and neutral refund questions are not anger."""
    assert detect_mood(text) is None


# ---------------------------------------------------------------------------------------------- stores
def _redis_url() -> tuple[str, bool]:
    url = os.environ.get("KEFU_TEST_REDIS_URL")
    return (url, True) if url else ("redis://127.0.0.1:6379/15", False)


@pytest.fixture
def redis_store() -> Iterator[RedisStore]:
    """A RedisStore under a random prefix; only that prefix's keys are deleted afterwards."""
    url, explicit = _redis_url()
    store = RedisStore(
        url, prefix=f"kefu-test:{uuid.uuid4().hex}:", client_name=f"kefu-test-{uuid.uuid4().hex}"
    )
    if not store.ping():
        store.close()
        if explicit:
            pytest.fail(f"KEFU_TEST_REDIS_URL={url} is set but Redis does not answer")
        pytest.skip(f"no Redis at {url} (set KEFU_TEST_REDIS_URL to test against another one)")
    yield store
    keys = list(store.client.scan_iter(match=store.prefix + "*"))
    if keys:
        store.client.delete(*keys)
    store.close()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> Iterator[MemoryStore | RedisStore]:
    """Both stores must behave the same: every store test runs on each."""
    if request.param == "redis":
        yield request.getfixturevalue("redis_store")
    else:
        mem = MemoryStore()
        yield mem
        mem.close()


def test_conversations_save_load_end(
    store: MemoryStore | RedisStore, clarifying_bot: ConversationPolicy
) -> None:
    """A state saved by one replica is what the next replica loads; end forgets it."""
    convs = Conversations(store, ttl_seconds=60)
    _, state = clarifying_bot.step(None, "那发票应该怎么开呀")
    assert convs.load("shop-1", "c1") is None
    convs.save("shop-1", "c1", state)
    assert convs.load("shop-1", "c1") == state
    reply, _ = clarifying_bot.step(convs.load("shop-1", "c1"), "2")  # the conversation goes on elsewhere
    assert reply.kind == "answer"
    convs.end("shop-1", "c1")
    assert convs.load("shop-1", "c1") is None


def test_a_conditional_save_loses_to_a_save_made_since_the_load(store: MemoryStore | RedisStore) -> None:
    """Two replicas load the same state; only the first to save writes, the second must step again."""
    convs = Conversations(store, ttl_seconds=60)
    assert convs.load_versioned("s", "c") == (None, None)
    assert convs.save_if("s", "c", ConversationState(history=["a"]), None)
    assert not convs.save_if("s", "c", ConversationState(history=["b"]), None)  # no longer absent
    first, token_1 = convs.load_versioned("s", "c")
    second, token_2 = convs.load_versioned("s", "c")
    assert first == second == ConversationState(history=["a"]) and token_1 == token_2 is not None
    assert first is not None and second is not None
    assert convs.save_if("s", "c", dataclasses.replace(first, history=["a", "x"]), token_1)
    assert not convs.save_if("s", "c", dataclasses.replace(second, history=["a", "y"]), token_2)
    again, token_3 = convs.load_versioned("s", "c")
    assert again is not None and again.history == ["a", "x"]
    assert convs.save_if("s", "c", dataclasses.replace(again, history=["a", "x", "y"]), token_3)
    assert convs.load("s", "c") == ConversationState(history=["a", "x", "y"])
    convs.end("s", "c")
    assert not convs.save_if("s", "c", ConversationState(history=["z"]), token_3)  # it ended meanwhile
    assert convs.load("s", "c") is None


def test_conversations_are_isolated_by_shop(store: MemoryStore | RedisStore) -> None:
    """The same conversation id in two shops is two conversations, even with ':' inside the ids."""
    convs = Conversations(store, ttl_seconds=60)
    convs.save("shop-a", "c1", ConversationState(history=["a"]))
    convs.save("shop-b", "c1", ConversationState(history=["b"]))
    convs.save("x:y", "z", ConversationState(history=["xy/z"]))
    convs.save("x", "y:z", ConversationState(history=["x/yz"]))
    loaded = {k: convs.load(*k) for k in [("shop-a", "c1"), ("shop-b", "c1"), ("x:y", "z"), ("x", "y:z")]}
    assert {k: s.history if s else None for k, s in loaded.items()} == {
        ("shop-a", "c1"): ["a"],
        ("shop-b", "c1"): ["b"],
        ("x:y", "z"): ["xy/z"],
        ("x", "y:z"): ["x/yz"],
    }
    convs.end("shop-a", "c1")
    assert convs.load("shop-a", "c1") is None and convs.load("shop-b", "c1") is not None
    assert convs.load("shop-c", "c1") is None


def test_redis_conversation_ttl_is_set(redis_store: RedisStore) -> None:
    """Redis expires idle conversations itself: the key carries the TTL."""
    convs = Conversations(redis_store, ttl_seconds=1)
    convs.save("shop-1", "c1", ConversationState())
    ttl = redis_store.client.ttl(redis_store.key(Conversations.key("shop-1", "c1")))
    assert 0 < int(ttl) <= 1  # type: ignore[arg-type]


def test_memory_conversation_ttl_expires_and_save_refreshes_it() -> None:
    """In memory the TTL runs on the injected clock; each save restarts it (inactivity timeout)."""
    clock = FakeClock()
    convs = Conversations(MemoryStore(clock=clock), ttl_seconds=1800)
    convs.save("shop-1", "c1", ConversationState(misses=1))
    clock.now += 1000
    convs.save("shop-1", "c1", ConversationState(misses=1))
    clock.now += 1000
    assert convs.load("shop-1", "c1") == ConversationState(misses=1)
    clock.now += 801
    assert convs.load("shop-1", "c1") is None


def test_set_if_absent_claims_once(store: MemoryStore | RedisStore) -> None:
    """Replay protection: of many concurrent claims of one id exactly one wins."""
    results: list[bool] = []
    lock = threading.Lock()

    def claim() -> None:
        ok = store.set_if_absent("replay:req-1", "1", 60)
        with lock:
            results.append(ok)

    threads = [threading.Thread(target=claim) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(True) == 1 and len(results) == 16
    assert store.set_if_absent("replay:req-2", "1", 60) is True


def test_set_if_absent_and_incr_expire(store: MemoryStore | RedisStore) -> None:
    """Claims and counters carry their TTL: both stores set it on the key."""
    assert [store.incr("rate:shop-1", 60) for _ in range(3)] == [1, 2, 3]
    store.set_if_absent("replay:req-1", "1", 30)
    if isinstance(store, RedisStore):
        assert 0 < int(store.client.ttl(store.key("rate:shop-1"))) <= 60  # type: ignore[arg-type]
        assert 0 < int(store.client.ttl(store.key("replay:req-1"))) <= 30  # type: ignore[arg-type]
    else:
        assert 0 < (store.ttl("rate:shop-1") or 0) <= 60
        assert 0 < (store.ttl("replay:req-1") or 0) <= 30


def test_memory_counter_window_restarts_after_expiry() -> None:
    """A counter's window is fixed from its first increment and restarts once it expired."""
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    assert [store.incr("k", 10) for _ in range(2)] == [1, 2]
    clock.now += 9
    assert store.incr("k", 10) == 3  # later increments do not extend the window
    clock.now += 1
    assert store.incr("k", 10) == 1
    assert store.set_if_absent("claim", "x", 5) and not store.set_if_absent("claim", "x", 5)
    clock.now += 5
    assert store.set_if_absent("claim", "x", 5)


def test_values_are_copies_and_ttl_must_be_positive(store: MemoryStore | RedisStore) -> None:
    """A loaded value is independent of the stored one, and a key that never expires is refused."""
    value: dict[str, Any] = {"a": [1, 2], "中": "文"}
    store.set_json("v", value, 60)
    value["a"].append(3)
    assert store.get_json("v") == {"a": [1, 2], "中": "文"}
    store.delete("v")
    assert store.get_json("v") is None
    with pytest.raises(ValueError):
        store.set_json("v", 1, 0)


def _wait_for(event: threading.Event, what: str) -> None:
    assert event.wait(5.0), f"{what} did not arrive within 5 s"


def test_publish_subscribe_round_trip(store: MemoryStore | RedisStore) -> None:
    """A model swap notice published by one replica reaches the subscribers, on another thread."""
    got: list[dict[str, Any]] = []
    threads: list[threading.Thread] = []
    arrived = threading.Event()

    def on_message(msg: dict[str, Any]) -> None:
        got.append(msg)
        threads.append(threading.current_thread())
        arrived.set()

    sub = store.subscribe("model-swapped", on_message)
    try:
        notice = {"shop": "shop-1", "version": 7, "note": "热更新"}
        assert store.publish("model-swapped", notice) == 1
        _wait_for(arrived, "the notice")
        assert got == [notice]
        assert threads[0] is not threading.current_thread()
    finally:
        sub.close()


def test_a_failing_callback_does_not_stop_the_listener(store: MemoryStore | RedisStore) -> None:
    """One bad notice must not silence a replica for the rest of its life."""
    seen: list[int] = []
    second = threading.Event()

    def on_message(msg: dict[str, Any]) -> None:
        seen.append(msg["n"])
        if msg["n"] == 1:
            raise RuntimeError("boom")
        second.set()

    sub = store.subscribe("ch", on_message)
    try:
        store.publish("ch", {"n": 1})
        store.publish("ch", {"n": 2})
        _wait_for(second, "the second message")
        assert seen == [1, 2]
    finally:
        sub.close()


def test_closed_subscription_receives_nothing(store: MemoryStore | RedisStore) -> None:
    """After close the callback is gone (a replica shutting down stops listening)."""
    calls: list[dict[str, Any]] = []
    sub = store.subscribe("ch", calls.append)
    sub.close()
    deadline = time.monotonic() + 5
    while store.publish("ch", {"n": 1}) and time.monotonic() < deadline:
        time.sleep(0.05)  # Redis drops the subscriber when the listener's connection closes
    assert store.publish("ch", {"n": 2}) == 0
    time.sleep(0.2)
    assert calls == []


def test_redis_listener_survives_a_dropped_connection(redis_store: RedisStore) -> None:
    """Kill only our own pub/sub connection: the listener reconnects, re-subscribes and delivers again."""
    arrived = threading.Event()
    sub = redis_store.subscribe("ch", lambda msg: arrived.set())
    try:
        name = redis_store.client.client_getname()
        clients: list[dict[str, Any]] = redis_store.client.client_list()  # type: ignore[assignment]
        ours = [c for c in clients if c.get("name") == name and int(c.get("sub", 0)) > 0]
        assert len(ours) == 1
        redis_store.client.client_kill_filter(_id=ours[0]["id"])
        deadline = time.monotonic() + 5
        while not arrived.is_set() and time.monotonic() < deadline:
            redis_store.publish("ch", {"after": "reconnect"})
            arrived.wait(0.2)
        assert arrived.is_set(), "no message after the connection was dropped"
        assert sub.alive
    finally:
        sub.close()


def test_make_store_picks_the_backend() -> None:
    """No URL is a single-process setup (memory); a URL is Redis, not silently replaced by memory."""
    assert isinstance(make_store(None), MemoryStore)
    assert isinstance(make_store(""), MemoryStore)
    url, _ = _redis_url()
    redis_store = make_store(url)
    assert isinstance(redis_store, RedisStore)
    redis_store.close()


def test_store_keys_do_not_leak_between_prefixes(redis_store: RedisStore) -> None:
    """Two deployments sharing a Redis under different prefixes do not see each other's keys."""
    other = RedisStore(_redis_url()[0], prefix=redis_store.prefix + "other:")
    try:
        redis_store.set_json("k", {"who": "first"}, 60)
        assert other.get_json("k") is None
        other.set_json("k", {"who": "second"}, 60)
        assert redis_store.get_json("k") == {"who": "first"}
    finally:
        other.close()
