"""PII masking for log lines and stored logs of Chinese customer-service messages.

Customers paste phone numbers, ID cards, bank cards, order numbers, e-mails and shipping addresses
into chat. None of that may reach a log file or a stored transcript, so every log record and every
stored message goes through `mask_pii`, which swaps each item for a typed placeholder (`[手机号]`,
`[地址]`, ...) that keeps the line readable for support staff and for debugging.

Design constraints, and how they are met:

* never raises: one bad line must not take logging down; on an internal error the whole text is
  replaced by `[脱敏失败]` rather than returned unmasked;
* linear time on any input: every repetition is bounded and every number/e-mail pattern may only
  start where a run of its characters starts, so no input can make the regexes backtrack;
* idempotent: placeholders contain none of the characters the patterns look for, and a match can
  start or end only where its neighbours cannot join it, so masking masked text changes nothing
  (the property tests check this on adversarial text);
* conservative with product talk: "16G内存", "i7-13700H", "5999元", "2026-11-25", "14:30", "7天无理由"
  and "预计25号发货" stay as they are; addresses need a road or two administrative areas *and* a
  house/building number, or a named residential compound (阳光花园, 幸福小区, 翠微苑) with a building
  or room number after it, before they are masked;
* product ids are no personal data: the id in a JD product link (item.jd.com/100012043978.html,
  item.m.jd.com/product/….html) or after a product label (商品编号：…, SKU …, ?sku=…, wareId=…) stays as
  written, because the bot looks products up by it and the agent taking a handoff must see which
  product was meant. Only the order-number reading is dropped: an id with the shape of a mobile, ID or
  card is masked as one, and order numbers (订单号 …, a bare long number, orderid=… in an order link)
  are masked as before;
* customers dodge filters: mobiles split by dots (138.1234.5678) or partly written in Chinese
  numerals (138一2345六789) are masked like any other mobile.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator, Mapping

from api.catalog.links import PRODUCT_LEAD

__all__ = ["MaskingFilter", "install_masking", "mask_pii"]

PHONE = "[手机号]"
LANDLINE = "[电话]"
ID_CARD = "[身份证号]"
BANK_CARD = "[银行卡号]"
ORDER = "[订单号]"
EMAIL = "[邮箱]"
ADDRESS = "[地址]"
_FAILED = "[脱敏失败]"

# --- numbers and e-mails (one left-to-right pass) ------------------------------------------------------
# `\d` is Unicode-aware, so full-width digits typed with a Chinese IME (１３８…) are covered too; the
# few literal digits below list their full-width twin for the same reason.
_SEP = r"[ \u3000\-－]"  # one space, ideographic space or dash between digit groups
_MSEP = r"[ \u3000\-－.．]"  # a mobile's groups may also be split by dots: 138.1234.5678
_CC = r"(?:[(（](?:[+＋]|[0０]{2})?[8８][6６][)）]|[+＋][8８][6６]|(?<!\d)(?:[0０]{2})?[8８][6６])"
# 11 digits starting 1[3-9], the 3-4-4 groups split by at most one separator each.
_MOBILE = rf"(?:{_CC}{_SEP}?|(?<!\d))[1１][3-9３-９]\d(?:{_MSEP}?\d{{4}}){{2}}(?!\d)"
# A product id (SKU): in a JD product link, or after a label that says it is one (the forms are shared
# with the orders and catalog skills: api.catalog.links). The id must end where no other number or
# e-mail could take it on (a separator and more digits, a landline extension, an e-mail local part):
# otherwise the text is read as without the label, so a label never hides part of a grouped card, ID or
# phone number.
_PRODUCT_END = r"(?![\dA-Za-z@＠]|[ \u3000\-－.．]\d|转|分机|[._%+\-][A-Za-z0-9._%+\-]{0,63}[@＠])"
_NUMBERS = re.compile(
    # Alternatives are tried in this order at each position; the leftmost match wins.
    # An e-mail local part may start after a digit (so a mail glued to a masked number is still
    # found) but not inside a word; its length is bounded (RFC 5321: 64) to keep the scan linear.
    r"(?P<email>(?<![A-Za-z])[A-Za-z0-9][A-Za-z0-9._%+\-]{0,63}[@＠]"
    r"[A-Za-z0-9][A-Za-z0-9\-]{0,62}(?:\.[A-Za-z0-9\-]{1,63}){0,8}\.[A-Za-z]{2,24}(?![A-Za-z0-9\-]))"
    # Any digits after an order keyword are the order number, whatever their length.
    r"|(?P<okw>订单编号|订单号|订单|单号)"
    r"(?P<osep>[ \u3000]{0,3}[:：#＃]?[ \u3000]{0,3}(?:是|为)?[ \u3000]{0,3})"
    r"(?P<onum>[A-Za-z]{0,4}\d{6,20})(?![\dA-Za-z@＠])"
    # A product id after its link or label: kept unless it has the shape of other PII (`_number_repl`).
    rf"|(?P<plead>{PRODUCT_LEAD})(?P<pid>\d{{4,20}}){_PRODUCT_END}"
    # 18-digit ID written in its natural groups: region, birth date, sequence + check.
    rf"|(?P<idsp>(?<!\d)\d{{6}}{_SEP}\d{{8}}{_SEP}\d{{3}}[\dXxＸｘ](?!\d))"
    # Bank card grouped by 4s; 16-19 digits.
    rf"|(?P<card>(?<!\d)\d{{4}}(?:{_SEP}\d{{4}}){{3}}(?:{_SEP}?\d{{1,3}})?(?!\d))"
    rf"|(?P<idx>(?<!\d)\d{{17}}[XxＸｘ](?!\d))"
    rf"|(?P<mobile>{_MOBILE})"
    rf"|(?P<landline>(?:[(（][0０]\d{{2,3}}[)）]{_SEP}?|(?<!\d)[0０]\d{{2,3}}{_SEP}?)"
    r"\d{3,4}" + _SEP + r"?\d{4}(?!\d)(?:(?:[\-－]|转|分机)\d{1,5}(?!\d))?)"
    # Any other run of 10-19 digits: classified by length and checksum in `_classify_run`.
    r"|(?P<run>(?<!\d)\d{10,19}(?!\d))"
)
_NUMBER_HINT = re.compile(r"[\d@＠]")
# Mobiles partly or wholly in Chinese numerals ("138一2345六789", "幺三八…"), as customers write them to
# get past filters: the same 3-4-4 shape over a digit class that includes the numerals, read on the
# text itself (so everything around a match stays as it was). 一 may also stand for a dash
# ("138一2345一6789"). Nothing that is a digit here may touch a match, so a replaced match can never
# let a neighbour match on a second pass.
_CN_DIGITS = "〇零一二三四五六七八九幺壹贰叁肆伍陆柒捌玖"
_CN_D = rf"[\d{_CN_DIGITS}]"
_CN_MOBILE = re.compile(
    rf"(?<!{_CN_D})[1１一幺壹][3-9３-９三四五六七八九叁肆伍陆柒捌玖]{_CN_D}"
    rf"(?:[ \u3000\-－.．一]?{_CN_D}{{4}}){{2}}(?!{_CN_D})"
)
_CN_DIGIT_HINT = re.compile(f"[{_CN_DIGITS}]")
_ID18_SHAPE = re.compile(r"[1-9]\d{5}(?:18|19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\d{3}[\dX]")
_ID15_SHAPE = re.compile(r"[1-9]\d{7}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\d{3}")
_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"


def _ascii_digits(text: str) -> str:
    """Digits (any script) as ASCII, plus a trailing X, so checksums see one alphabet."""
    out = []
    for ch in text:
        if ch.isdecimal():
            out.append(str(int(ch)))
        elif ch in "XxＸｘ":
            out.append("X")
    return "".join(out)


def _id_checksum_ok(digits: str) -> bool:
    """GB 11643 check character of an 18-character resident ID."""
    if len(digits) != 18 or not digits[:17].isdigit():
        return False
    total = sum(int(d) * w for d, w in zip(digits[:17], _ID_WEIGHTS, strict=True))
    return _ID_CHECK[total % 11] == digits[17]


def _luhn_ok(digits: str) -> bool:
    """Luhn check used by UnionPay and most other card schemes."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _classify_run(run: str) -> str:
    """Placeholder for a bare run of 10-19 digits (phones and landlines were matched before)."""
    digits = _ascii_digits(run)
    n = len(digits)
    if n == 18:
        if _id_checksum_ok(digits) or _ID18_SHAPE.fullmatch(digits):
            return ID_CARD
        return BANK_CARD
    if n == 15:
        if _ID15_SHAPE.fullmatch(digits):
            return ID_CARD
        return BANK_CARD if _luhn_ok(digits) else ORDER
    if n >= 16:
        return BANK_CARD
    return ORDER


def _cn_mobile_repl(m: re.Match[str]) -> str:
    # All-ASCII numbers were left by `_NUMBERS` for a reason (a digit next to them): keep them.
    return PHONE if _CN_DIGIT_HINT.search(m.group()) else m.group()


def _number_repl(m: re.Match[str]) -> str:
    kind = m.lastgroup
    if kind == "email":
        return EMAIL
    if kind == "onum":  # lastgroup is the last *closed* group of the okw branch
        return m.group("okw") + m.group("osep") + ORDER
    if kind == "pid":
        # The digits masked as if they stood alone (they cannot match this branch again): a product id
        # only loses its order-number reading, so "SKU 13812345678" is still a phone.
        masked = _NUMBERS.sub(_number_repl, m.group("pid"))
        return m.group() if masked == ORDER else m.group("plead") + masked
    if kind in ("idsp", "idx"):
        return ID_CARD
    if kind == "card":
        return BANK_CARD
    if kind == "mobile":
        return PHONE
    if kind == "landline":
        return LANDLINE
    return _classify_run(m.group())


# --- addresses ---------------------------------------------------------------------------------------
# Characters that end an address run: particles, pronouns and verbs of the sentence around it
# ("我住在…", "…的", "寄到…", "地址是…"). Kept small: many characters occur in real place names.
_STOP = (
    "的了吗呢吧啊呀嘛么哦是在到从给把被请您你我他她它们这那哪谁啥什怎想还就也很没不已再又才刚址住寄送往改为话"
)


def _cjk_class_without(stop: str) -> str:
    """Regex ranges for CJK U+4E00..U+9FFF minus the given characters (no class subtraction in `re`)."""
    ranges: list[str] = []
    start = 0x4E00
    for cp in sorted({ord(c) for c in stop}):
        if cp > start:
            ranges.append(f"\\u{start:04x}-\\u{cp - 1:04x}")
        start = cp + 1
    ranges.append(f"\\u{start:04x}-\\u9fff")
    return "".join(ranges)


_A = "[" + _cjk_class_without(_STOP) + r"\dA-Za-zＡ-Ｚａ-ｚ#＃\-－]"
# Residential compounds and buildings (阳光花园, 幸福小区, 国贸大厦, 翠微苑…). The one-character ones are
# common word endings (天府大道, 新城路, 商城, 家庭, 公园), so they end a segment only when a building or
# room number follows: "翠微苑12-3-401", "万科城 T2 1502".
_SUF = (
    r"(?:单元|小区|大厦|花园|家园|新村|公寓|公馆|广场|胡同|自治州"
    r"|[苑府城庭园](?=[ \u3000]?[\dA-Za-zＡ-Ｚａ-ｚ])|[省市区县镇乡村路街道巷弄号楼室栋幢座层院])"
)
_AREA_SUF = frozenset("省市区县镇乡") | {"自治州"}
_ROAD_SUF = frozenset("路街道巷弄村") | {"胡同"}
_UNIT_SUF = frozenset("号楼室栋幢座层") | {"单元"}
_COMPOUND_SUF = frozenset("苑府城庭园") | {"小区", "大厦", "花园", "家园", "新村", "公寓", "公馆"}
# After a compound, these (with a number or letter: 3栋, 5号楼, A座, 2单元, 601室) name a home; a floor
# alone ("电子城2楼", "花园3层") names a shop just as well and does not count.
_HOME_SUF = frozenset("号室栋幢座") | {"单元"}
_BUILDING_SUF = frozenset("楼栋幢座") | {"单元"}
# Compound-looking words that name a shop or a public place, not a home ("京东商城618", "人民公园2号门").
_NOT_HOME = ("商城", "公园", "乐园", "校园", "物园", "儿园", "果园", "菜园", "陵园", "墓园")
# A room number must not run on into a price, quantity, time or decimal ("大厦 2000元", "1230前").
_MEASURE = "元块台件个只次天年月日时分秒期折倍寸斤克米"
_ROOM_END = rf"(?![\dA-Za-zＡ-Ｚａ-ｚ.．:：%％/／\-－{_MEASURE}])"
_ADDRESS = re.compile(
    # An ASCII letter/digit may start an address only at the start of its ASCII run (never mid-number).
    r"(?:(?<![\dA-Za-z])|(?![\dA-Za-z]))"
    rf"(?P<p0>{_A}{{0,12}}?){_SUF}"  # first segment: up to 12 characters, then a unit (省/市/路/号…)
    rf"(?:[ \u3000]?{_A}{{0,12}}?{_SUF}){{0,19}}"  # more segments, one optional space between
    r"(?:"
    # a building without a suffix the segments know, then its tower/block and the room, at least one
    # space or dash between the tower and the room: "望京SOHO T1 1201", "望京SOHO塔1 1201",
    # "国贸 A座 1502", "3号楼-1201"
    rf"(?P<bldg>[ \u3000]?{_A}{{0,12}}?[ \u3000]?"
    r"(?:(?:(?<![\dA-Za-z])[A-Za-z]{1,2}|塔)\d{1,2}[ \u3000\-－]"
    r"|(?<![\dA-Za-z])[A-Za-z\d]{1,2}(?:座|栋|幢|号楼)[ \u3000\-－]?)"
    rf"\d{{3,5}}[室号]?{_ROOM_END})"
    r"|(?P<room>\d{1,6}(?:[\-－]\d{1,6}){0,3}(?![\dA-Za-z]))"  # trailing room number: "3单元301", "2-1-502"
    # room after one space: "阳光花园 1202", "翠微苑 12-3-401" (not a date: its last group is short)
    rf"|[ \u3000](?P<sroom>(?:\d{{1,3}}(?:[\-－]\d{{1,3}}){{0,2}}[\-－])?\d{{3,5}}[室号]?){_ROOM_END}"
    r")?"
)
_SEGMENT = re.compile(rf"(?P<p>{_A}{{0,12}}?)(?P<s>{_SUF})")
_ALNUM = re.compile(r"[\dA-Za-zＡ-Ｚａ-ｚ]")
_DASHED_ROOM = re.compile(r"\d{1,6}(?:[\-－]\d{1,6}){1,3}")
_ROOM_END_RE = re.compile(_ROOM_END)
_ADDRESS_HINT = re.compile(_SUF)
_ADDRESS_KEYWORD = re.compile(r"(?:地址|住址)[ \u3000:：是为]{0,3}$")
_DIGIT = re.compile(r"\d")
# Provinces and big cities: an address starts at the first of these in its first segment.
_PLACE = re.compile(
    "北京|天津|上海|重庆|河北|山西|辽宁|吉林|黑龙江|江苏|浙江|安徽|福建|"
    "江西|山东|河南|湖北|湖南|广东|海南|四川|贵州|云南|陕西|甘肃|青海|台湾|"
    "内蒙古|广西|西藏|宁夏|新疆|香港|澳门|广州|深圳|珠海|汕头|佛山|东莞|"
    "中山|惠州|江门|湛江|杭州|宁波|温州|嘉兴|湖州|绍兴|金华|台州|南京|苏州|"
    "无锡|常州|南通|徐州|扬州|镇江|盐城|合肥|芜湖|福州|厦门|泉州|漳州|南昌|"
    "赣州|济南|青岛|烟台|潍坊|临沂|淄博|威海|郑州|洛阳|武汉|宜昌|襄阳|长沙|"
    "株洲|湘潭|衡阳|成都|绵阳|贵阳|遵义|昆明|大理|丽江|西安|咸阳|兰州|西宁|"
    "银川|乌鲁木齐|拉萨|呼和浩特|包头|南宁|桂林|柳州|海口|三亚|石家庄|唐山|"
    "保定|廊坊|太原|大同|沈阳|大连|长春|哈尔滨|大庆"
)


def _segments(text: str, start: int, end: int) -> Iterator[re.Match[str]]:
    """The segments of `text[start:end]`, read in the whole text so that a one-character compound
    suffix at the end still sees the number after it (its lookahead needs at most two characters)."""
    for seg in _SEGMENT.finditer(text, start, min(len(text), end + 2)):
        if seg.end() > end:
            return
        yield seg


def _address_ok(text: str, start: int, end: int, after_keyword: bool, building: bool, room: bool) -> bool:
    """Whether the run of address segments `text[start:end]` is specific enough to be someone's address.

    A road (文三路) or two administrative areas (杭州市西湖区) plus a number (100号, 2单元, 1203室)
    make an address; one area plus a number ("新品上市3号发货") does not. A named compound plus a
    home number after it (阳光花园3栋1202, 幸福小区5号, 翠微苑12-3-401, 国贸大厦 1201) is one, and so
    is an area plus a tower and room (`building`: 朝阳区望京SOHO T1 1201). `room` says the run ends
    in a room number that may count as a home number (see `_mask_addresses`). Right after
    地址/住址 any single feature is enough ("地址：2号楼1203室").
    """
    areas = 0
    road = unit = home = False
    compound = False  # a named compound (阳光花园), not a shop or park (京东商城, 人民公园)
    glued = prev_end = 0  # glued: length of the compound segment ending right where this one starts
    for seg in _segments(text, start, end):
        prefix, suffix = len(seg.group("p")), seg.group("s")
        if seg.start() != prev_end:
            glued = 0
        if suffix in _AREA_SUF and prefix >= 1:
            areas += 1
        elif suffix in _ROAD_SUF and max(prefix, glued) >= 2:  # 2+: "知道", "味道", "一路" are not roads
            road = True  # ... but "花园路" is one
        elif suffix in _UNIT_SUF and prefix >= 1:
            unit = True
        if suffix in _COMPOUND_SUF:
            compound = compound or (prefix >= 2 and not seg.group().endswith(_NOT_HOME))
        elif compound and suffix in _HOME_SUF and _ALNUM.search(seg.group("p")):
            home = True  # 3栋, 5号(楼), A座, 2单元, 601室 after the compound
        glued = len(seg.group()) if suffix in _COMPOUND_SUF else 0
        prev_end = seg.end()
    number = unit or _DIGIT.search(text, start, end) is not None
    if after_keyword:
        return number or road or areas > 0 or compound
    if compound and (home or building or room):
        return True
    return (number and (road or areas >= 2)) or (building and areas >= 1)


def _ends_in_building(text: str, start: int, end: int) -> bool:
    """Whether the last segment of `text[start:end]` names a compound or a building (花园, 大厦, 3栋,
    5号楼, A座)."""
    suffix = ""
    for seg in _segments(text, start, end):
        suffix = seg.group("s")
    return suffix in _COMPOUND_SUF or suffix in _BUILDING_SUF


def _mask_addresses(text: str) -> str:
    """Replace address runs, trying every candidate start so a rejected run never hides a later one.

    Each candidate costs a bounded amount of work (at most 20 segments of 13 characters), so the
    loop stays linear in the length of the text.
    """
    out: list[str] = []
    last = pos = 0
    while True:
        m = _ADDRESS.search(text, pos)
        if m is None:
            break
        start = m.start()
        # Start at the first known province/city inside the first segment ("麻烦发北京市…").
        place = _PLACE.search(m.group("p0"))
        if place is not None:
            start += place.start()
        after_keyword = _ADDRESS_KEYWORD.search(text, max(0, start - 8), start) is not None
        end = m.end()
        room = m.group("room")
        if room is not None:
            # A number glued to the last segment is a room when it has a dash (12-3-401) or 3+ digits
            # and is not a price, time or quantity; without a dash only punctuation or the end may
            # follow it ("阳光花园1202，"; not "万科城3期", "阳光花园2-3天", "星河湾1299元").
            after = text[end : end + 1]
            if _DASHED_ROOM.fullmatch(room):
                room_ok = _ROOM_END_RE.match(text, end) is not None
            else:
                room_ok = len(room) >= 3 and not (after and (after.isalnum() or after in ".．:：%％"))
        else:
            room_ok = m.group("sroom") is not None
        if m.group("sroom") is not None and not _ends_in_building(text, start, m.start("sroom") - 1):
            # A spaced number only belongs to a compound or building ("花园 1202", "3号楼 1201"), never
            # to a street number ("建国路88号 1230前送到"): leave it outside the address.
            end = m.start("sroom") - 1
            room_ok = False
        if _address_ok(text, start, end, after_keyword, m.group("bldg") is not None, room_ok):
            out.append(text[last:start])
            out.append(ADDRESS)
            last = pos = end
        else:
            pos = m.start() + 1
    out.append(text[last:])
    return "".join(out)


def mask_pii(text: str) -> str:
    """Return `text` with phones, IDs, cards, order numbers, e-mails and addresses replaced.

    Numbers and e-mails are masked first, so an address pass never sees (or swallows) them. Product ids
    in JD product links and after a product label (商品编号, SKU) are no order numbers and stay.
    """
    try:
        if not isinstance(text, str):
            text = str(text)
        if _NUMBER_HINT.search(text):
            text = _NUMBERS.sub(_number_repl, text)
        if _CN_DIGIT_HINT.search(text):
            text = _CN_MOBILE.sub(_cn_mobile_repl, text)
        if _ADDRESS_HINT.search(text):
            text = _mask_addresses(text)
        return text
    except Exception:  # pragma: no cover - a log line must never break logging, nor leak
        return _FAILED


# --- logging -----------------------------------------------------------------------------------------
class MaskingFilter(logging.Filter):
    """Masks a record's rendered message, traceback and stack text before any handler writes it.

    The message is rendered (`getMessage()`), masked and stored back with empty `args`, because PII
    mostly arrives through the arguments. Records of loggers in `keep_args` (default:
    `uvicorn.access`, whose formatter unpacks `args`) keep their `args` tuple with each string
    argument masked instead. The traceback is rendered here with the standard formatter so the
    handler's formatter finds `exc_text` already masked; a formatter that reads `exc_info` itself
    (some JSON formatters) bypasses this.
    """

    def __init__(self, name: str = "", keep_args: Iterable[str] = ("uvicorn.access",)) -> None:
        super().__init__(name)
        self.keep_args = tuple(keep_args)

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_kefu_masked", False):  # already seen by the logger or another handler
            return True
        if record.name in self.keep_args and record.args:
            record.msg = mask_pii(str(record.msg))
            record.args = _mask_args(record.args)
        else:
            try:
                message = record.getMessage()
            except Exception:  # bad format/args: keep everything, but masked
                message = f"{record.msg} {record.args!r}"
            record.msg = mask_pii(message)
            record.args = ()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask_pii(record.exc_text)
        if record.stack_info:
            record.stack_info = mask_pii(record.stack_info)
        setattr(record, "_kefu_masked", True)  # noqa: B010 - LogRecord has no such declared attribute
        return True


def _mask_args(args: tuple[object, ...] | Mapping[str, object]) -> tuple[object, ...] | Mapping[str, object]:
    if isinstance(args, Mapping):
        return {k: mask_pii(v) if isinstance(v, str) else v for k, v in args.items()}
    return tuple(mask_pii(a) if isinstance(a, str) else a for a in args)


def _add_once(target: logging.Logger | logging.Handler, flt: MaskingFilter) -> None:
    if not any(isinstance(f, MaskingFilter) for f in target.filters):
        target.addFilter(flt)


def install_masking(
    logger_names: Iterable[str] = ("", "uvicorn", "uvicorn.access", "uvicorn.error", "kefu"),
) -> None:
    """Attach a `MaskingFilter` to the named loggers, their handlers and the root logger's handlers.

    Idempotent. A filter on a *logger* only sees records created at that very logger, not those
    propagated from children ("kefu.api" → "kefu"), hence the handler filters, which see everything
    they write. Limitation: handlers added or replaced after this call (e.g. by a later
    `logging.config.dictConfig`, which uvicorn runs at startup) and handlers of loggers not listed
    here are not covered; call it after logging is configured (in the app's startup).
    """
    flt = MaskingFilter()
    root = logging.getLogger()
    for name in dict.fromkeys(logger_names):
        logger = logging.getLogger(name) if name else root
        _add_once(logger, flt)
        for handler in logger.handlers:
            _add_once(handler, flt)
    for handler in root.handlers:
        _add_once(handler, flt)
