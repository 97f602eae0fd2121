import unicodedata

from hypothesis import given
from hypothesis import strategies as st

from engine.normalize import PLACEHOLDER_WORDS, normalize, strip_placeholders


def test_full_width_case_and_traditional():
    assert normalize("ＡＢＣ１２３，電腦發票！") == "abc123 电脑发票"


def test_order_number_becomes_placeholder_so_messages_meet():
    with_number = normalize("订单 8812345678 怎么还没到")
    assert with_number == "订单 xxorder 怎么还没到"
    assert strip_placeholders(with_number).replace(" ", "") == normalize("订单怎么还没到")


def test_phone_email_url_and_long_numbers():
    assert normalize("我的手机13812345678") == "我的手机 xxphone"
    assert normalize("邮箱 a.b@x.com") == "邮箱 xxemail"
    assert normalize("看 https://item.jd.com/100.html") == "看 xxurl"
    assert normalize("编号 1234567") == "编号 xxnum"


def test_short_numbers_stay_meaningful():
    # model names, memory sizes and day counts carry meaning and are kept
    assert normalize("i7 16G内存 7天无理由") == "i7 16g内存 7天无理由"


def test_punctuation_emoji_and_controls_removed():
    assert normalize("好的😀！！\x00\x07…") == "好的"
    assert normalize("😀😀") == ""
    assert normalize(None) == ""
    assert normalize("   \t\n") == ""


@given(st.text(max_size=200))
def test_never_raises_and_is_idempotent(text):
    once = normalize(text)
    assert normalize(once) == once
    assert once == once.strip()
    assert "  " not in once
    assert all(unicodedata.category(c)[0] not in "PSC" for c in once if c != " ")


def test_placeholders_are_plain_words():
    assert all(w.isascii() and w.isalpha() for w in PLACEHOLDER_WORDS)
