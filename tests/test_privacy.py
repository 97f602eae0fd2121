"""PII masking (corpus + properties), the logging filter, and encrypted credentials."""

from __future__ import annotations

import datetime
import io
import logging
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api.dialog.privacy import MaskingFilter, install_masking, mask_pii
from api.store.secrets import ENV_VAR, SecretBox, SecretKeyError, generate_key, mask

CORPUS = Path(__file__).with_name("pii_corpus.txt")
PLACEHOLDERS = ("[手机号]", "[电话]", "[身份证号]", "[银行卡号]", "[订单号]", "[邮箱]", "[地址]")


def _corpus() -> list[tuple[str, str]]:
    rows = []
    for line in CORPUS.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            source, expected = line.split("\t")
            rows.append((source, expected))
    return rows


CASES = _corpus()


# --- corpus ------------------------------------------------------------------------------------------
def test_corpus_is_broad() -> None:
    negatives = [s for s, e in CASES if s == e]
    assert len(CASES) >= 60
    assert len(negatives) >= 15
    masked = "".join(e for _, e in CASES)
    for placeholder in PLACEHOLDERS:
        assert masked.count(placeholder) >= 4, placeholder


@pytest.mark.parametrize(("source", "expected"), CASES, ids=[f"line{i}" for i in range(len(CASES))])
def test_corpus(source: str, expected: str) -> None:
    assert mask_pii(source) == expected
    assert mask_pii(expected) == expected  # masked text is a fixed point


# --- compounds, towers, dotted and Chinese-numeral mobiles (privacy audit) ---------------------------
AUDIT = [
    # the six messages the audit found passing unchanged
    ("我住北京朝阳区望京SOHO塔1 1201", "我住[地址]"),
    ("北京市朝阳区望京SOHO T1 1201", "[地址]"),
    ("我住阳光花园3栋1202，包邮吗？能开专票吗", "我住[地址]，包邮吗？能开专票吗"),
    ("送到幸福小区5栋2单元601", "送到[地址]"),
    ("138.1234.5678", "[手机号]"),
    ("138一2345六789", "[手机号]"),
]
COMPOUND_ADDRESSES = [
    ("幸福小区5号楼1201室", "[地址]"),
    ("寄到翠湖家园3号楼2单元501，谢谢", "寄到[地址]，谢谢"),
    ("阳光苑12-3-401", "[地址]"),
    ("我家在翠微苑 12-3-401", "我家在[地址]"),
    ("幸福新村12-3-401，放门口", "[地址]，放门口"),
    ("国贸大厦A座1502", "[地址]"),
    ("金色公馆B座1203", "[地址]"),
    ("世纪公寓2栋803，周末在家", "[地址]，周末在家"),
    ("万科城3栋2单元601", "[地址]"),
    ("滨江府5幢1102", "[地址]"),
    ("锦绣庭3栋601", "[地址]"),
    ("碧桂园5栋1201", "[地址]"),
    ("阳光花园3栋1202包邮吗", "[地址]包邮吗"),
    ("送到幸福小区5栋", "送到[地址]"),
    ("阳光花园1202，明天到吗", "[地址]，明天到吗"),
    # a room number after the compound or building with only a space between
    ("阳光花园 1202", "[地址]"),
    ("国贸大厦 1201室", "[地址]"),
    ("寄到阳光花园3号楼 1201", "寄到[地址]"),
    ("住在碧桂园T2 1501室", "住在[地址]"),
    ("碧桂园T2-1501", "[地址]"),
    # an area, then a building the segments do not know, its tower and the room
    ("北京市朝阳区望京SOHO A座 1502", "[地址]"),
    ("北京市朝阳区望京SOHO塔1 1201，包邮吗", "[地址]，包邮吗"),
    ("朝阳区望京SOHO T1 1201室，电话138.1234.5678", "[地址]，电话[手机号]"),
    # "花园路" is still a road, 88号 keeps a spaced number that is no room outside the address
    ("金水区花园路2号", "[地址]"),
    ("北京市朝阳区建国路88号 1230前送到", "[地址] 1230前送到"),
    ("地址：阳光花园", "地址：[地址]"),
]
MOBILES = [
    ("电话138.1234.5678，谢谢", "电话[手机号]，谢谢"),
    ("１３８．１２３４．５６７８", "[手机号]"),
    ("138 1234.5678", "[手机号]"),
    ("+86 138.1234.5678", "[手机号]"),
    ("一三八一二三四五六七八", "[手机号]"),
    ("电话：一三八 一二三四 五六七八。", "电话：[手机号]。"),
    ("幺三八〇〇〇〇一二三四", "[手机号]"),
    ("我的电话是138 一二三四 5678 谢谢", "我的电话是[手机号] 谢谢"),
    ("138一2345一6789", "[手机号]"),  # 一 written for a dash
    ("加微信13812345678一起聊", "加微信[手机号]一起聊"),
    ("13812345678一三八一二三四五六七八", "[手机号][手机号]"),
]
UNCHANGED = [
    # product and model names with digits
    "星曜15 Pro 32G+1T",
    "知书13",
    "i7-13700H",
    "RTX4060",
    "2.5K屏",
    "16英寸",
    "120Hz",
    "星曜15 Pro 32G+1T 12期免息，i7-13700H配RTX4060，2.5K屏16英寸120Hz",
    # prices and quantities
    "3999元",
    "买2台",
    "双11",
    "6.18",
    "知书13 6.18 买2台 3999元",
    # dates and times
    "11月11日",
    "2026-11-11",
    "12:30",
    "双11那天12:30下单，11月11日能到吗",
    # ordinary questions
    "花园里能用吗",
    "小区能送货上门吗",
    "这个型号有几个版本",
    "我们小区5栋能送吗",
    "送到阳光花园2-3天能到吗",
    "万科城3期开盘了吗",
    "电子城2楼有店吗",
    "国贸大厦 2000元",
    "国贸大厦 2026-11-11前到",
    "阳光花园 2026年",
    "京东商城618活动",
    "天猫商城3号发货吗",
    "人民公园3号门",
    "动物园2号门",
    "天府大道",
    "家庭3口人",
    # version strings, decimals, numbers that are no mobile
    "1.2.3",
    "版本1.2.3.4",
    "价格13912345.678",
    "IP 192.168.1.1",
    "138.1234.56789",
    # Chinese numerals in ordinary text
    "一五一十",
    "第一二三四五六七八九十",
    "一年365天",
    "三七二十一",
]


@pytest.mark.parametrize(("source", "expected"), AUDIT + COMPOUND_ADDRESSES + MOBILES)
def test_masks_compound_addresses_and_disguised_mobiles(source: str, expected: str) -> None:
    assert mask_pii(source) == expected
    assert mask_pii(expected) == expected


@pytest.mark.parametrize("text", UNCHANGED)
def test_product_talk_stays(text: str) -> None:
    assert mask_pii(text) == text


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("订单号：250112345678", "订单号：[订单号]"),
        ("我的订单2501234567890和2501234567891都没发货", "我的订单[订单号]和[订单号]都没发货"),
        ("13812345678901", "[订单号]"),  # 14 digits: an order number, not a mobile
        ("退货的那单是289876543210", "退货的那单是[订单号]"),
    ],
)
def test_long_digit_runs_stay_order_numbers(source: str, expected: str) -> None:
    assert mask_pii(source) == expected


# --- product links and SKUs ---------------------------------------------------------------------------
# A product id is no personal data, and the bot (catalog skill) and the agent taking a handoff need it.
PRODUCTS_KEPT = [
    "看下这个 https://item.jd.com/100012043978.html 有货吗",
    "这款item.m.jd.com/product/100012043978.html还有吗",
    "https://item.jd.com/100012043978.html?sku=100012043978&spm=1.2.3 能便宜点吗",
    "链接 https://item.m.jd.com/100012043978.html，16G版本有吗",
    "https://item.m.jd.com/ware/view.action?wareId=10078934567890 这个呢",
    "https://item.jd.hk/100012043978.html 是正品吗",
    "https://item.jd.com/100012043978.html#crumb-wrap",
    "https://u.jd.com/AbC12x 这个活动还有吗",
    "商品编号：100012043978 有白色吗",
    "商品编号是100012043978，什么时候有货",
    "商品ID 100012043978",
    "SKU 100012043978",
    "sku：10078934567890 什么时候到货",
    "skuId=100012043978",
    "我要的是SKU100012043978这款",
    "商品编号：１０００１２０４３９７８",  # full-width digits from a Chinese IME
]
PRODUCTS_AMONG_PII = [
    (
        "https://item.jd.com/100012043978.html 电话13812345678",
        "https://item.jd.com/100012043978.html 电话[手机号]",
    ),
    ("https://item.jd.com/100012043978.html13812345678", "https://item.jd.com/100012043978.html[手机号]"),
    (
        "我买的是 https://item.jd.com/100012043978.html，订单 250112345678 一直没发货，电话138-1234-5678",
        "我买的是 https://item.jd.com/100012043978.html，订单 [订单号] 一直没发货，电话[手机号]",
    ),
    ("item.jd.com/100012043978.html订单号250112345678", "item.jd.com/100012043978.html订单号[订单号]"),
    ("商品编号100012043978和订单号250112345678", "商品编号100012043978和订单号[订单号]"),
    ("商品编号100012043978，退款到6222021234567890128", "商品编号100012043978，退款到[银行卡号]"),
    # an order-detail link names the customer's order: its id is masked
    (
        "https://details.jd.com/normal/item.action?orderid=123456789012&PassKey=ABC 这单怎么还没到",
        "https://details.jd.com/normal/item.action?orderid=[订单号]&PassKey=ABC 这单怎么还没到",
    ),
    (
        "https://item.jd.com/100012043978.html?orderid=250112345678",
        "https://item.jd.com/100012043978.html?orderid=[订单号]",
    ),
    # a long number with no product label or link is still an order number
    ("这个100012043978能退吗", "这个[订单号]能退吗"),
    ("编号100012043978", "编号[订单号]"),
    ("订单号SKU100012043978", "订单号[订单号]"),  # the order keyword wins
    # a labelled or linked "product id" with the shape of other PII is masked as that
    ("SKU 13812345678", "SKU [手机号]"),
    ("https://item.jd.com/13812345678.html", "https://item.jd.com/[手机号].html"),
    ("SKU 6222 0212 3456 7890 128", "SKU [银行卡号]"),
    ("sku=6222021234567890128", "sku=[银行卡号]"),
    ("商品编号 0571 88886666转8001", "商品编号 [电话]"),
    ("商品编号 110105199003071239", "商品编号 [身份证号]"),
    ("SKU 100012043978.zhang@example.com", "SKU [邮箱]"),
    ("SKU 1000 13812345678", "SKU 1000 [手机号]"),
]


@pytest.mark.parametrize("text", PRODUCTS_KEPT)
def test_product_links_and_skus_stay(text: str) -> None:
    assert mask_pii(text) == text


@pytest.mark.parametrize(("source", "expected"), PRODUCTS_AMONG_PII)
def test_pii_next_to_products_is_masked(source: str, expected: str) -> None:
    assert mask_pii(source) == expected
    assert mask_pii(expected) == expected


def test_which_building_may_go_either_way() -> None:
    """ "几号楼发货" names no building; masking it or not are both fine, but it must be stable."""
    once = mask_pii("几号楼发货")
    assert once in ("几号楼发货", "[地址]发货")
    assert mask_pii(once) == once


# --- properties --------------------------------------------------------------------------------------
ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)

chinese = st.text(
    alphabet=st.one_of(
        st.characters(min_codepoint=0x4E00, max_codepoint=0x9FA5), st.sampled_from("，。！？、：；　 ")
    ),
    max_size=20,
)


@st.composite
def phones(draw: st.DrawFn) -> str:
    digits = "1" + draw(st.sampled_from("3456789")) + draw(st.text("0123456789", min_size=9, max_size=9))
    style = draw(st.sampled_from(["plain", "dash", "space", "dot", "+86", "86"]))
    if style == "dash":
        return f"{digits[:3]}-{digits[3:7]}-{digits[7:]}"
    if style == "dot":
        return f"{digits[:3]}.{digits[3:7]}.{digits[7:]}"
    if style == "space":
        return f"{digits[:3]} {digits[3:7]} {digits[7:]}"
    if style == "+86":
        return "+86 " + digits
    return ("86" if style == "86" else "") + digits


@st.composite
def id_cards(draw: st.DrawFn) -> str:
    region = draw(st.integers(110000, 659999))
    birth = draw(st.dates(min_value=datetime.date(1920, 1, 1))).strftime("%Y%m%d")
    body = f"{region}{birth}{draw(st.integers(0, 999)):03d}"
    check = "10X98765432"[sum(int(d) * w for d, w in zip(body, ID_WEIGHTS, strict=True)) % 11]
    return body + check


@st.composite
def bank_cards(draw: st.DrawFn) -> str:
    n = draw(st.integers(16, 19))
    body = draw(st.sampled_from(["62", "4", "5", "3"])) + draw(st.text("0123456789", min_size=n, max_size=n))
    body = body[: n - 1]
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch)
        if i % 2 == 0:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    card = body + str(-total % 10)
    if draw(st.booleans()):
        card = " ".join(card[i : i + 4] for i in range(0, n, 4))
    return card


emails = st.builds(
    "{}@{}.{}".format,
    st.from_regex(r"[a-z0-9]{1,10}(\.[a-z0-9]{1,6})?", fullmatch=True),
    st.from_regex(r"[a-z0-9]{1,10}(\.[a-z]{2,6})?", fullmatch=True),
    st.sampled_from(["com", "cn", "net", "org", "com.cn"]),
)

# Adversarial fragments: the characters the patterns key on, glued in random order.
# fmt: off
FRAGMENTS = (
    "1", "3", "8", "0", "6", "9", "X", "x", "-", " ", "+", "(", ")", "@", ".", "_", "com", "a", "１", "３",
    "订单号", "单号", "：", "是", "北京", "市", "区", "路", "号", "楼", "室", "单元", "地址", "的", "住",
    "[", "]", "[手机号]", "[地址]", "13812345678", "0571-", "6222 ",
    "一", "三", "八", "幺", "小区", "花园", "苑", "城", "栋", "座", "塔", "T", "A", "商", "．",
    "SKU", "sku=", "商品编号", "item.jd.com/", ".html", "转",
)
# fmt: on
fragments = st.lists(st.sampled_from(FRAGMENTS), max_size=40).map("".join)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(), fragments))
def test_mask_never_raises_and_is_idempotent(text: str) -> None:
    once = mask_pii(text)
    assert isinstance(once, str)
    assert mask_pii(once) == once


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(chinese, st.one_of(phones(), id_cards(), bank_cards(), emails), chinese)
def test_embedded_pii_disappears(before: str, pii: str, after: str) -> None:
    out = mask_pii(before + pii + after)
    assert pii not in out
    digits = "".join(ch for ch in pii if ch.isdigit())
    if len(digits) >= 11:
        assert digits not in "".join(ch for ch in out if ch.isdigit())
    assert any(p in out for p in PLACEHOLDERS)


def test_hostile_input_is_linear() -> None:
    """Long runs of the characters the patterns key on must not make the regexes backtrack.

    Compared by growth, not against a clock: four times the text may take at most eight times as long
    (linear is four, quadratic backtracking sixteen), best of three runs each, in the thread's own CPU
    time: on a busy machine (the suite runs on two workers, CI beside other jobs) a wall clock also counts
    the time the thread waited for a core, which a long run meets more often than a short one."""
    hostile = ["1", "a.", "a", "路", "北京市朝阳区", "1-", "订单号"]
    hostile += ["苑1 ", "城T1 ", "138.一", "一三八"]  # compounds, towers, disguised mobiles
    hostile += ["SKU 1", "sku=1.", "item.jd.com/1", "商品编号1-a"]  # product ids
    tails = {"a": "@"}

    def best(text: str) -> float:
        times = []
        for _ in range(3):
            started = time.thread_time()
            mask_pii(text)
            times.append(time.thread_time() - started)
        return min(times)

    for unit in hostile:
        reps = max(1, 3_000 // len(unit))
        short = best(unit * reps + tails.get(unit, ""))
        long = best(unit * (4 * reps) + tails.get(unit, ""))
        assert long < 8 * short + 0.002, (unit, short, long)


# --- logging -----------------------------------------------------------------------------------------
@pytest.fixture
def logger_and_stream() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    handler.addFilter(MaskingFilter())
    logger = logging.getLogger(f"kefu.test.privacy.{uuid.uuid4().hex}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    yield logger, stream
    logger.removeHandler(handler)


def test_filter_masks_args(logger_and_stream: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = logger_and_stream
    logger.info("customer %s asked about order %s", "13812345678", 250112345678)
    out = stream.getvalue()
    assert "13812345678" not in out
    assert "250112345678" not in out
    assert out == "INFO customer [手机号] asked about order [订单号]\n"


def test_filter_masks_exception_text(logger_and_stream: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = logger_and_stream
    try:
        raise ValueError("refund to 6222021234567890128 failed for zhangsan@example.com")
    except ValueError:
        logger.exception("refund failed")
    out = stream.getvalue()
    assert "Traceback" in out
    assert "ValueError: refund to [银行卡号] failed for [邮箱]" in out
    assert "6222021234567890128" not in out
    assert "zhangsan@example.com" not in out


def test_filter_keeps_uvicorn_access_args() -> None:
    """uvicorn's AccessFormatter unpacks `args`; they stay a tuple, each string masked."""
    from uvicorn.logging import AccessFormatter

    record = logging.LogRecord(
        "uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", "GET", "/v1/match?q=13812345678", "1.1", 200), None,
    )  # fmt: skip
    assert MaskingFilter().filter(record)
    formatter = AccessFormatter("%(client_addr)s %(request_line)s %(status_code)s", use_colors=False)
    line = formatter.format(record)
    assert line == "127.0.0.1:5000 GET /v1/match?q=[手机号] HTTP/1.1 200 OK"


@pytest.fixture
def restore_filters() -> Iterator[list[logging.Logger]]:
    """install_masking touches the root logger's handlers: put every filter list back afterwards."""
    names = [f"kefu.test.install.{uuid.uuid4().hex}"]
    loggers = [logging.getLogger(), *(logging.getLogger(n) for n in names)]
    targets: list[logging.Logger | logging.Handler] = []
    for lg in loggers:
        targets.append(lg)
        targets.extend(lg.handlers)
    saved = [(t, list(t.filters)) for t in targets]
    yield loggers
    for target, filters in saved:
        target.filters[:] = filters


def test_install_masking_is_idempotent_and_masks(restore_filters: list[logging.Logger]) -> None:
    root, logger = restore_filters
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    try:
        install_masking((logger.name,))
        install_masking((logger.name,))
        for target in (logger, handler, *root.handlers):
            assert sum(isinstance(f, MaskingFilter) for f in target.filters) == 1
        logging.getLogger(logger.name + ".child").info("call %s", "139-1234-5678")  # propagated
        logger.info("mail %s", "li.si@example.org")  # created at the logger itself
        assert stream.getvalue() == "call [手机号]\nmail [邮箱]\n"
    finally:
        logger.removeHandler(handler)


# --- secrets -----------------------------------------------------------------------------------------
def test_secretbox_round_trip() -> None:
    box = SecretBox(generate_key())
    token = box.encrypt("shop-api-token-密钥")
    assert token != "shop-api-token-密钥"
    assert "shop-api-token" not in token
    assert box.decrypt(token) == "shop-api-token-密钥"
    assert "key" not in repr(box).lower().replace("keys=", "")


def test_wrong_key_raises_without_echoing_token() -> None:
    token = SecretBox(generate_key()).encrypt("secret")
    with pytest.raises(SecretKeyError) as info:
        SecretBox(generate_key()).decrypt(token)
    message = str(info.value)
    assert message == "cannot decrypt: wrong KEFU_SECRET_KEY or damaged value"
    assert token not in message
    assert info.value.__cause__ is None and info.value.__suppress_context__


@pytest.mark.parametrize("damaged", ["", "not-a-token", "gAAAAA" + "x" * 40, "密文"])
def test_damaged_token_raises(damaged: str) -> None:
    with pytest.raises(SecretKeyError, match="cannot decrypt") as info:
        SecretBox(generate_key()).decrypt(damaged)
    assert damaged == "" or damaged not in str(info.value)


def test_key_rotation() -> None:
    old, new = generate_key(), generate_key()
    token = SecretBox(old).encrypt("webhook-secret")
    rotated_box = SecretBox(f"{new}, {old}")
    assert rotated_box.decrypt(token) == "webhook-secret"
    fresh = rotated_box.encrypt("webhook-secret")
    assert SecretBox(new).decrypt(fresh) == "webhook-secret"  # encrypts with the first key
    with pytest.raises(SecretKeyError):
        SecretBox(old).decrypt(fresh)
    assert SecretBox(new).decrypt(rotated_box.rotate(token)) == "webhook-secret"


def test_bytes_key() -> None:
    key = generate_key()
    assert SecretBox(key.encode()).decrypt(SecretBox(key).encrypt("x")) == "x"


def test_from_env() -> None:
    key = generate_key()
    box = SecretBox.from_env({ENV_VAR: key})
    assert SecretBox(key).decrypt(box.encrypt("v")) == "v"
    with pytest.raises(SecretKeyError) as info:
        SecretBox.from_env({})
    message = str(info.value)
    assert ENV_VAR in message
    assert "Fernet.generate_key()" in message


@pytest.mark.parametrize("bad", ["", " , ", "too-short", "a" * 44])
def test_invalid_key_is_explained_not_echoed(bad: str) -> None:
    with pytest.raises(SecretKeyError) as info:
        SecretBox.from_env({ENV_VAR: bad})
    message = str(info.value)
    assert "generate_key" in message
    assert not bad.strip() or bad not in message


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (None, ""),
        ("", ""),
        ("abc", "***"),
        ("1234567", "***"),
        ("12345678", "123***78"),
        ("sk-live-abcdef9f", "sk-***9f"),
    ],
)
def test_mask(value: str | None, shown: str) -> None:
    assert mask(value) == shown
