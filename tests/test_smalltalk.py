"""Small talk: recognised on its own, taken off around a question, overridable by the merchant's KB."""

from __future__ import annotations

import pytest

from engine import Decision, Matcher
from engine.normalize import normalize
from engine.smalltalk import INTENTS, SmallTalkDetector

DETECTOR = SmallTalkDetector()


@pytest.mark.parametrize(
    ("text", "intent"),
    [
        ("在吗", "greeting"),
        ("亲在吗？", "greeting"),
        ("你好，在吗", "greeting"),
        ("有人吗", "greeting"),
        ("在不在啊", "greeting"),
        ("谢谢", "thanks"),
        ("谢谢亲！", "thanks"),
        ("好的谢谢", "thanks"),
        ("嗯嗯好的谢谢", "thanks"),
        ("拜拜", "goodbye"),
        ("好的 再见", "goodbye"),
        ("好的", "ack"),
        ("嗯嗯", "ack"),
        ("OK", "ack"),
        ("你是机器人吗", "robot"),
        ("是真人吗？", "robot"),
        ("你真棒", "praise"),
        ("烦死了", "venting"),
        ("垃圾客服", "venting"),
        ("客服太垃圾了！", "venting"),
        ("什么破客服", "venting"),
        ("太差了", "venting"),
        ("骗子", "venting"),
    ],
)
def test_pure_small_talk_is_recognised(text: str, intent: str) -> None:
    st = DETECTOR.parse(normalize(text))
    assert st.pure and st.intent == intent, st


@pytest.mark.parametrize(
    ("text", "intents", "rest"),
    [
        ("在吗 能开专票吗", ("greeting",), "能开专票吗"),
        ("在吗能开专票吗", ("greeting",), "能开专票吗"),
        ("你好，请问保修多久", ("greeting",), "请问保修多久"),
        ("你好我想看电影", ("greeting",), "我想看电影"),
        ("能开专票吗？谢谢", ("thanks",), "能开专票吗"),
        ("好的，那保修呢", ("ack",), "那保修呢"),
        ("垃圾客服，我要退货", ("venting",), "我要退货"),
    ],
)
def test_small_talk_around_a_question_is_taken_off(text: str, intents: tuple[str, ...], rest: str) -> None:
    st = DETECTOR.parse(normalize(text))
    assert (st.intents, st.rest) == (intents, rest)


@pytest.mark.parametrize(
    "text",
    [
        "你好丑用英文怎么说",
        "你好像没理解我",
        "好用吗",
        "这个好吗",
        "可以开专票吗",
        "你好好看",
        "在线支付",
        "垃圾袋多少钱",
        "垃圾桶有货吗",
        "差评怎么删",
    ],
)
def test_sentences_that_merely_start_like_small_talk_are_left_whole(text: str) -> None:
    st = DETECTOR.parse(normalize(text))
    assert st.intents == () and st.rest == normalize(text)


def test_disabled_intents_are_not_recognised() -> None:
    only_thanks = SmallTalkDetector(enabled=["thanks"])
    assert not only_thanks.parse("在吗").pure
    assert only_thanks.parse("谢谢").intent == "thanks"
    with pytest.raises(ValueError, match="unknown small-talk intent"):
        SmallTalkDetector(enabled=["weather"])


def test_matcher_answers_small_talk_apart_and_the_question_beside_it(fast_matcher: Matcher) -> None:
    r = fast_matcher.match("在吗")
    assert r.decision is Decision.SMALLTALK and r.smalltalk == "greeting" and r.entry_id is None
    alone = fast_matcher.match("能开专票吗")
    both = fast_matcher.match("在吗 能开专票吗")
    assert both.decision is alone.decision and both.entry_id == alone.entry_id
    assert both.smalltalk_around == ["greeting"] and both.smalltalk is None
    assert abs(both.confidence - alone.confidence) < 1e-6


def test_small_talk_can_be_switched_off_per_call(fast_matcher: Matcher) -> None:
    assert fast_matcher.match("谢谢", smalltalk=False).decision is not Decision.SMALLTALK
    assert fast_matcher.match("谢谢", smalltalk=["greeting"]).decision is not Decision.SMALLTALK
    assert fast_matcher.match("在吗", smalltalk=["greeting"]).decision is Decision.SMALLTALK


def test_a_kb_entry_overrides_a_small_talk_intent_and_models_can_be_built_without_it(tmp_path) -> None:
    kb = [
        {"id": "hello", "question": "你好", "answer": "欢迎光临星辰数码！", "similar": "您好"},
        {"id": "invoice", "question": "能开发票吗", "answer": "可以开发票", "similar": "可以开票吗|开发票"},
        {"id": "ship", "question": "几天能到", "answer": "一般两天", "similar": "多久到货|什么时候到"},
    ]
    m = Matcher.build(kb, dense=False)
    r = m.match("在吗？")  # another greeting phrase: the merchant's greeting entry answers it
    assert r.decision is Decision.ANSWER and r.entry_id == "hello" and r.smalltalk == "greeting"
    assert m.match("谢谢").decision is Decision.SMALLTALK  # no entry of its own: the built-in intent
    loaded = Matcher.load(m.save(tmp_path / "m"))
    assert loaded.match("在吗？").entry_id == "hello"
    off = Matcher.build(kb, dense=False, smalltalk=False)
    assert off.match("谢谢").decision is not Decision.SMALLTALK
    assert Matcher.load(off.save(tmp_path / "off")).match("谢谢").decision is not Decision.SMALLTALK


def test_every_intent_has_phrases() -> None:
    from engine.smalltalk import _LEXICON

    assert set(_LEXICON) == set(INTENTS)
