"""The orders skill through the conversation policy, against the fake JOS gateway on a socket."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from api.dialog.conversation import ConversationPolicy, ConversationState, Reply, TurnContext
from api.dialog.orders_skill import ASK_TEXT, NO_PIN_TEXT, REFUSED_TEXT, OrdersSkill, find_order_id
from api.dialog.privacy import mask_pii
from api.jd.orders import METHODS, OrderLookup
from api.store.secrets import SecretBox, generate_key
from engine import Matcher
from engine.kb import KBEntry
from training.jos_sandbox import DEMO_ORDERS, ERROR_ORDER, SLOW_ORDER, FakeJos, install_orders

APP_KEY, SECRET, TOKEN = "JDAPPKEY0001", "jd-secret-0123456789", "jd-token-abcdef"
NAMES = {m.setting: m.default for m in METHODS}
ALICE, BOB = "jd_demo_alice", "jd_demo_bob"
WAITING, SHIPPED, REFUNDED = "300012345601", "300012345602", "300012345603"  # alice, alice, bob

KB = [
    KBEntry(
        "order-status",
        "我的订单现在什么状态",
        "您的订单{order.id}当前状态：{order.state}，实付{order.amount}元。",
        similar=("订单状态", "查一下订单", "我的订单怎么样了", "订单处理到哪一步了"),
        action="order_status",
    ),
    KBEntry(
        "track",
        "我的快递到哪了",
        "您的包裹由{logistics.company}配送（运单号{logistics.waybill}），最新：{logistics.latest}",
        similar=("查物流", "物流信息", "快递到哪里了", "包裹到哪了"),
        action="logistics",
    ),
    KBEntry(
        "refund",
        "我的退款进度怎么样了",
        "您的退款{refund.amount}元：{refund.state}（{refund.time}）",
        similar=("退款到哪一步了", "退款审核了吗", "查一下退款", "退款处理了没有"),
        action="refund_status",
    ),
    KBEntry("invoice", "能开发票吗", "支持开具电子发票。", similar=("发票怎么开", "有发票吗", "能开专票吗")),
    KBEntry("fee", "包邮吗", "全国包邮。", similar=("运费多少", "要邮费吗", "免运费吗")),
    KBEntry("warranty", "保修多久", "整机保修两年。", similar=("质保几年", "保修期多长", "坏了保修吗")),
    KBEntry("pay", "可以分期吗", "支持白条分期。", similar=("能用白条吗", "分期免息吗", "信用卡可以吗")),
    KBEntry(
        "refund-time",
        "退款多久到账",
        "原路退回，1-7个工作日到账。",
        similar=("钱什么时候退回来", "退款几天到"),
    ),
]


@pytest.fixture(scope="module")
def matcher() -> Matcher:
    return Matcher.build(KB, dense=False)


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeJos]:
    with FakeJos(APP_KEY, SECRET, TOKEN) as f:
        install_orders(
            f,
            order_method=NAMES["jos_order_method"],
            logistics_method=NAMES["jos_logistics_method"],
            refund_method=NAMES["jos_refund_method"],
            slow_seconds=2.0,
        )
        yield f


@pytest.fixture
def box() -> SecretBox:
    return SecretBox(generate_key())


def policy(
    matcher: Matcher, fake: FakeJos | None, box: SecretBox | None = None, budget: float = 1.5
) -> ConversationPolicy:
    entries = {e.id: e for e in matcher.entries}

    def lookup() -> OrderLookup | None:
        if fake is None:
            return None
        return OrderLookup(APP_KEY, SECRET, TOKEN, base_url=fake.url, budget=budget)

    def get_entry(entry_id: str) -> tuple[str, str] | None:
        e = entries.get(entry_id)
        return (e.question, e.answer) if e else None

    return ConversationPolicy(
        match=lambda t, **kw: matcher.match(t, top_k=5, **kw),
        get_entry=get_entry,
        mask=mask_pii,
        skills=[OrdersSkill(entries, lookup, box=box)],
        dynamic=lambda e: bool(entries.get(e) and entries[e].action),
    )


def talk(
    p: ConversationPolicy, pin: str | None, *messages: str, order_card: str | None = None
) -> tuple[list[Reply], ConversationState]:
    state: ConversationState | None = None
    replies = []
    for text in messages:
        reply, state = p.step(state, text, TurnContext(customer_pin=pin, order_id=order_card))
        replies.append(reply)
    assert state is not None
    return replies, state


def talk_on(
    p: ConversationPolicy, state: ConversationState, pin: str | None, *messages: str
) -> tuple[list[Reply], ConversationState]:
    replies = []
    for text in messages:
        reply, state = p.step(state, text, TurnContext(customer_pin=pin))
        replies.append(reply)
    return replies, state


def order_data(order_id: str) -> list[str]:
    """Everything of an order that must not reach another customer."""
    o = next(o for o in DEMO_ORDERS if o.order_id == order_id)
    data = [o.order_id, o.state_remark, o.payment, o.created[:16], o.pin]
    data += [o.waybill, o.carrier] if o.waybill else []
    data += [text for _, text in o.traces]
    data += [f"{r.amount_fen / 100:.2f}" for r in o.refunds]
    return data


def test_an_owned_order_fills_the_merchants_template(matcher: Matcher, fake: FakeJos) -> None:
    (r,), _ = talk(policy(matcher, fake), ALICE, f"订单{WAITING}现在什么状态")
    assert r.kind == "answer" and r.entry_id == "order-status"
    assert r.text == f"您的订单{WAITING}当前状态：等待出库，实付5999.00元。"


def test_logistics_and_refund_templates(matcher: Matcher, fake: FakeJos) -> None:
    (r,), _ = talk(policy(matcher, fake), ALICE, f"我的快递到哪了 {SHIPPED}")
    assert (
        r.text == "您的包裹由京东快递配送（运单号JDVA20261118001），最新：您的快件正在派送中，请保持电话畅通"
    )
    (f,), _ = talk(policy(matcher, fake), BOB, f"查一下退款，订单号：{REFUNDED}")
    assert f.kind == "answer" and f.text == "您的退款199.00元：审核通过，退款处理中（2026-11-11 10:00）"


def test_not_shipped_and_no_refund_get_a_plain_reply(matcher: Matcher, fake: FakeJos) -> None:
    (r,), _ = talk(policy(matcher, fake), ALICE, f"{WAITING}我的快递到哪了")
    assert r.kind == "answer" and "还没有发货" in r.text and "等待出库" in r.text
    (f,), _ = talk(policy(matcher, fake), ALICE, f"{WAITING}退款到哪一步了")
    assert f.kind == "answer" and "暂时没有退款申请" in f.text


def test_without_an_order_number_the_bot_asks_and_remembers_it_encrypted(
    matcher: Matcher, fake: FakeJos, box: SecretBox
) -> None:
    (ask, answer, logistics), state = talk(
        policy(matcher, fake, box), ALICE, "我的订单怎么样了", f"{SHIPPED}", "那快递到哪了"
    )
    assert ask.kind == "clarify" and ask.text == ASK_TEXT
    assert answer.kind == "answer" and "等待确认收货" in answer.text
    assert (
        logistics.kind == "answer" and logistics.entry_id == "track" and "JDVA20261118001" in logistics.text
    )
    stored = str(state.to_dict())
    assert SHIPPED not in stored and state.order_ref and box.decrypt(state.order_ref) == SHIPPED
    assert state.pending is None


def test_without_a_key_nothing_is_remembered(matcher: Matcher, fake: FakeJos) -> None:
    (_, second), state = talk(policy(matcher, fake, None), ALICE, f"订单{SHIPPED}状态", "快递到哪了")
    assert state.order_ref is None
    assert second.kind == "clarify" and second.text == ASK_TEXT


def test_the_order_card_of_the_push_is_used(matcher: Matcher, fake: FakeJos) -> None:
    (r,), _ = talk(policy(matcher, fake), ALICE, "我的订单怎么样了", order_card=WAITING)
    assert r.kind == "answer" and WAITING in r.text


@pytest.mark.parametrize("order_id", [WAITING, SHIPPED])
def test_another_customers_order_is_refused_without_any_of_its_data(
    matcher: Matcher, fake: FakeJos, order_id: str
) -> None:
    before = len(fake.requests)
    (status, track, refund), state = talk(
        policy(matcher, fake), BOB, f"订单{order_id}什么状态", "我的快递到哪了", "退款到哪一步了"
    )
    assert status.kind == "clarify" and status.text == REFUSED_TEXT
    for r in (status, track, refund):
        assert not any(d and d in r.text for d in order_data(order_id)), r.text
        assert r.handoff is None or not any(d in str(r.handoff.to_dict()) for d in order_data(order_id)[1:])
    assert order_id not in str(state.to_dict())
    # only the order itself was read (to learn its owner): no logistics or refund call for it
    methods = {q.jos_method for q in fake.requests[before:]}
    assert methods <= {NAMES["jos_order_method"]}


def test_a_second_foreign_order_goes_to_a_person(matcher: Matcher, fake: FakeJos) -> None:
    (first, second), _ = talk(policy(matcher, fake), BOB, f"订单{WAITING}什么状态", f"{SHIPPED}")
    assert first.kind == "clarify"
    assert second.kind == "handoff" and second.handoff is not None
    assert second.handoff.code == "dynamic_failure" and "other customers" in second.handoff.reason


def test_no_customer_pin_is_a_refusal_and_jd_is_not_asked(matcher: Matcher, fake: FakeJos) -> None:
    before = len(fake.requests)
    (r,), _ = talk(policy(matcher, fake), None, f"订单{WAITING}什么状态")
    assert r.kind == "clarify" and r.text == NO_PIN_TEXT and len(fake.requests) == before


@pytest.mark.parametrize(
    ("text", "fault", "why"),
    [
        (f"订单{ERROR_ORDER}什么状态", None, "jos_error"),
        (f"订单{WAITING}什么状态", "jos:66", "jos_error"),
        (f"订单{WAITING}什么状态", "500", "jos_error"),
        (f"订单{WAITING}什么状态", "malformed", "jos_error"),
        (f"订单{SLOW_ORDER}什么状态", None, "timeout"),
        (f"订单{WAITING}什么状态", "slow:2", "timeout"),
        ("订单300099999999什么状态", None, "not_found"),
    ],
)
def test_jos_errors_timeouts_and_unknown_orders_hand_off(
    matcher: Matcher, fake: FakeJos, text: str, fault: str | None, why: str
) -> None:
    fake.faults = [fault] if fault else []
    try:
        (r,), state = talk(policy(matcher, fake, budget=0.5), "jd_demo_carol", text)
    finally:
        fake.faults = []
    assert r.kind == "handoff" and r.handoff is not None
    assert r.handoff.code == "dynamic_failure" and f"({why})" in r.handoff.reason
    assert state.pending is None and not any(c.isdigit() and len(c) > 9 for c in r.handoff.reason.split())


def test_a_timeout_on_the_second_call_is_over_the_budget(matcher: Matcher, fake: FakeJos) -> None:
    fake.faults = [None, "slow:2"]  # the order answers, the logistics trace is too slow
    try:
        (r,), _ = talk(policy(matcher, fake, budget=0.5), ALICE, f"我的快递到哪了 {SHIPPED}")
    finally:
        fake.faults = []
    assert r.kind == "handoff" and r.handoff is not None and "(timeout)" in r.handoff.reason


def test_a_shop_without_jd_credentials_hands_off(matcher: Matcher) -> None:
    (r,), _ = talk(policy(matcher, None), ALICE, f"订单{WAITING}什么状态")
    assert r.kind == "handoff" and r.handoff is not None and "credentials" in r.handoff.reason
    # nor does it ask for a number it could not look up
    (r,), state = talk(policy(matcher, None), ALICE, "我的快递到哪了")
    assert r.kind == "handoff" and r.handoff is not None and "credentials" in r.handoff.reason
    assert ASK_TEXT not in r.text and state.pending is None


def test_the_same_question_about_another_order_is_not_a_repeat(matcher: Matcher, fake: FakeJos) -> None:
    (a, b), _ = talk(policy(matcher, fake), ALICE, f"订单{WAITING}什么状态", f"订单{SHIPPED}什么状态")
    assert a.kind == b.kind == "answer" and "等待出库" in a.text and "等待确认收货" in b.text


def test_a_static_answer_is_left_to_the_kb_and_ends_the_wait(matcher: Matcher, fake: FakeJos) -> None:
    (ask, invoice), state = talk(policy(matcher, fake), ALICE, "我的订单怎么样了", "能开发票吗")
    assert ask.text == ASK_TEXT and invoice.kind == "answer" and invoice.entry_id == "invoice"
    assert state.pending is None


class Fixed:
    """A matcher stand-in: offers the dynamic entry in a clarify list, or answers two entries."""

    def __init__(self, m: Matcher) -> None:
        self.m = m

    def __call__(self, text: str) -> Any:
        from engine.results import Candidate, Decision, MatchResult

        if text == "那个单子":
            options = [Candidate("track", "我的快递到哪了", 1.0), Candidate("fee", "包邮吗", 0.5)]
            return MatchResult(Decision.CLARIFY, "close call", 0.5, options=options, candidates=options)
        return self.m.match(text)


def test_choosing_a_dynamic_option_is_answered_by_the_skill(matcher: Matcher, fake: FakeJos) -> None:
    p = policy(matcher, fake)
    p.match = Fixed(matcher)
    state: ConversationState | None = None
    ctx = TurnContext(customer_pin=ALICE, order_id=SHIPPED)
    first, state = p.step(state, "那个单子", TurnContext(customer_pin=ALICE))
    # the clarify's top option is dynamic: the skill asks for the order number instead of a list
    assert first.kind == "clarify" and first.text == ASK_TEXT
    state = ConversationState(clarify_options=[o for o in state.tried[:2]])
    chosen, _ = p.step(state, "1", ctx)
    assert chosen.kind == "answer" and chosen.entry_id == "track" and "{" not in chosen.text


def test_two_questions_with_an_order_question_answer_both(matcher: Matcher, fake: FakeJos) -> None:
    (r,), _ = talk(policy(matcher, fake), ALICE, f"包邮吗？还有订单{SHIPPED}现在什么状态")
    assert r.kind == "answer" and "{" not in r.text
    assert [(a.kind, a.entry_id) for a in r.answers] == [("answer", "fee"), ("answer", "order-status")]
    assert "全国包邮" in r.text and "等待确认收货" in r.text


def test_an_order_question_without_a_number_in_two_questions_asks_for_it(
    matcher: Matcher, fake: FakeJos
) -> None:
    (r,), state = talk(policy(matcher, fake), ALICE, "包邮吗？还有我的快递到哪了")
    assert [a.kind for a in r.answers] == ["answer", "clarify"] and ASK_TEXT in r.text
    (later,), _ = talk_on(policy(matcher, fake), state, ALICE, SHIPPED)
    assert later.kind == "answer" and later.entry_id == "track"


def test_a_failed_lookup_in_two_questions_hands_the_whole_message_off(
    matcher: Matcher, fake: FakeJos
) -> None:
    (r,), _ = talk(policy(matcher, fake), ALICE, f"包邮吗？还有订单{ERROR_ORDER}什么状态")
    assert r.kind == "handoff" and r.handoff is not None and r.handoff.code == "dynamic_failure"
    assert "one of 2 questions" in r.handoff.reason


def test_a_static_question_sharing_an_order_word_is_the_kbs(matcher: Matcher, fake: FakeJos) -> None:
    # 退款 is a refund-lookup word, but 退款多久到账 has its own static answer: no order number asked,
    # and without a pin no refusal either
    for pin in (ALICE, None):
        (r,), _ = talk(policy(matcher, fake), pin, "退款多久到账")
        assert r.kind == "answer" and r.entry_id == "refund-time", (pin, r)


def test_where_is_my_order_is_a_logistics_question(matcher: Matcher, fake: FakeJos) -> None:
    (r,), _ = talk(policy(matcher, fake), ALICE, f"订单{SHIPPED}什么时候能到")
    assert r.kind == "answer" and r.entry_id == "track" and "{" not in r.text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("订单号：300012345601", "300012345601"),
        ("订单号是 12345678", "12345678"),
        ("３０００１２３４５６０１到哪了", "300012345601"),
        ("我的手机13812345678", None),
        ("300012345601", "300012345601"),
        ("型号i7-13700H", None),
        ("商品编号：100087650001", None),  # a product's number, as a SKU card without a name reads
        ("https://item.jd.com/100087650001.html 这款有货吗", None),
    ],
)
def test_order_numbers_in_messages(text: str, expected: str | None) -> None:
    assert find_order_id(text) == expected


# every product label and link form of api.catalog.links, as customers write them
PRODUCT_NAMED = [
    "商品编号：100012043978",
    "商品编码：100012043978",
    "商品号 100012043978",
    "商品ID 100012043978",
    "商品编号是100012043978",
    "SKU 100012043978",
    "sku号100012043978",
    "skuId=100012043978",
    "sku_id: 100012043978",
    "SKU ID：100012043978",
    "wareId=100012043978",
    "ＳＫＵ：１０００１２０４３９７８",
    "https://item.jd.com/100012043978.html",
    "https://item.m.jd.com/product/100012043978.html",
    "https://item.jd.hk/100012043978.html",
    "https://npcitem.jd.hk/100012043978.html",
]


@pytest.mark.parametrize("named", PRODUCT_NAMED)
def test_a_labelled_or_linked_product_id_is_no_order_number(
    named: str, matcher: Matcher, fake: FakeJos
) -> None:
    assert find_order_id(f"{named} 这款有货吗") is None
    assert find_order_id("这款 100012043978 有货吗") == "100012043978"  # the same digits alone are one
    # asked about an order with only a product's id: the number is asked for, nothing is looked up
    (r,), _ = talk(policy(matcher, fake), ALICE, f"{named} 我的快递到哪了")
    assert r.kind == "clarify" and r.text == ASK_TEXT, r
