"""Spec questions (这款内存多大, 有几个颜色, 支持雷电4吗) recognised with calibrated confidence, and answered
from a SKU's attributes.

The shop's catalog names its attributes as the merchant likes (内存, 运行内存, RAM ...). Each attribute is
mapped to a concept of a built-in synonym table; one KB entry per concept present in the catalog is
generated from the table's phrasings, beside a few "not a spec value" entries (upgrades, usage, after-
sales) that compete for questions that mention a spec but do not ask for its value. An engine Matcher
built on that KB gives the calibrated confidence and applies the shop's thresholds, like any answer.
A concept is only answered when the message also names it (one of its cue words): a frame shared by all
entries ("...多少") is no evidence of which spec is asked.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from api.catalog.importer import Sku
from engine import Matcher
from engine.normalize import normalize
from engine.results import Decision

PRICE = "价格"
MODEL = "型号"
NONE_PREFIX = "none:"
ATTR_PREFIX = "attr:"


@dataclass(frozen=True)
class Concept:
    """A kind of spec: what attribute headers and customers call it, and how its value is told."""

    key: str
    aliases: tuple[str, ...]  # attribute headers meaning this concept (longest match wins)
    cues: tuple[str, ...]  # words in a message that name it (besides the aliases)
    questions: tuple[str, ...]  # how customers ask for it
    template: str = "{product}的{attr}是{value}。"
    listing: bool = False  # several values ("星空灰/月光银"): "有几个颜色" lists them


CONCEPTS: tuple[Concept, ...] = (
    Concept(
        "内存",
        ("内存", "运行内存", "ram", "内存容量", "运存", "内存条"),
        ("内存", "运存", "ram", "几个g", "多少g"),
        (
            "这款内存多大",
            "内存是多少",
            "内存多少g",
            "几个g内存",
            "运行内存多大",
            "ram多大",
            "内存有多大",
            "内存是几g的",
            "内存是什么规格",
            "内存频率多少",
            "运存多少",
            "内存够用吗",
        ),
    ),
    Concept(
        "硬盘",
        ("硬盘", "固态硬盘", "固态", "ssd", "存储", "存储容量", "硬盘容量", "储存"),
        ("硬盘", "固态", "ssd", "存储", "容量", "储存", "几个t"),
        (
            "硬盘多大",
            "硬盘是多少g的",
            "固态多大",
            "存储空间多大",
            "ssd多大",
            "容量多大",
            "几个t的硬盘",
            "是固态硬盘吗",
            "硬盘是什么规格",
            "存储是多少",
            "硬盘是512还是1t",
        ),
    ),
    Concept(
        "显卡",
        ("显卡", "gpu", "显卡型号"),
        ("显卡", "独显", "集显", "gpu", "显存", "rtx", "独立显卡", "集成显卡"),
        (
            "这款是什么显卡",
            "显卡是什么",
            "有独显吗",
            "是独立显卡吗",
            "显卡型号是什么",
            "gpu是什么",
            "显存多大",
            "是集成显卡吗",
            "显卡是rtx4060吗",
            "显卡怎么样",
            "是独显还是集显",
        ),
    ),
    Concept(
        "处理器",
        ("处理器", "cpu", "芯片", "处理器型号"),
        ("处理器", "cpu", "芯片", "酷睿", "锐龙", "i5", "i7", "i9", "ultra"),
        (
            "用的什么处理器",
            "cpu是什么",
            "处理器型号是什么",
            "是i7吗",
            "是酷睿还是锐龙",
            "什么芯片",
            "处理器是几代的",
            "cpu是几核的",
            "处理器怎么样",
        ),
    ),
    Concept(
        "屏幕",
        ("屏幕", "显示屏", "屏", "屏幕尺寸", "分辨率", "刷新率", "显示器"),
        ("屏幕", "显示屏", "分辨率", "刷新率", "寸", "oled", "高刷", "k屏", "色域", "hz", "尼特", "亮度"),
        (
            "屏幕多大",
            "屏幕分辨率是多少",
            "刷新率多少",
            "是高刷屏吗",
            "多少寸的",
            "多少寸",
            "屏幕多少寸",
            "屏幕是oled吗",
            "色域怎么样",
            "是几k屏",
            "显示屏怎么样",
            "屏幕尺寸是多少",
            "屏幕是多少hz的",
            "屏幕亮度多少",
        ),
    ),
    Concept(
        "重量",
        ("重量", "整机重量", "机身重量", "净重"),
        ("重量", "多重", "几斤", "公斤", "kg", "重不重", "轻不轻", "重吗", "有多重", "沉不沉", "千克"),
        (
            "这台电脑有多重",
            "重量多少",
            "几斤重",
            "多少公斤",
            "重不重",
            "带出门重吗",
            "轻不轻",
            "机身重量是多少",
            "沉不沉",
            "有几斤",
        ),
        template="{product}的重量{value}。",
    ),
    Concept(
        "颜色",
        ("颜色", "配色", "机身颜色", "外观颜色"),
        ("颜色", "配色", "色"),
        (
            "有几个颜色",
            "有哪些颜色可以选",
            "什么颜色",
            "颜色有哪些",
            "有黑色吗",
            "有银色的吗",
            "配色有哪些",
            "有粉色吗",
            "有几种配色",
            "是什么颜色的",
        ),
        listing=True,
    ),
    Concept(
        "续航",
        ("续航", "电池续航", "续航时间", "电池"),
        ("续航", "电池", "能用多久", "用多久", "几个小时", "待机"),
        (
            "续航多久",
            "电池能用多久",
            "充满电能用几个小时",
            "待机时间多长",
            "续航怎么样",
            "电池耐用吗",
            "不插电能用多久",
            "续航能撑一天吗",
        ),
        template="{product}的续航{value}。",
    ),
    Concept(
        "接口",
        ("接口", "端口", "扩展接口", "io接口"),
        (
            "接口",
            "端口",
            "雷电",
            "usb",
            "type-c",
            "typec",
            "hdmi",
            "网口",
            "读卡器",
            "耳机孔",
            "外接显示器",
            "几个口",
            "sd卡",
        ),
        (
            "都有哪些接口",
            "接口有哪些",
            "支持雷电4吗",
            "有hdmi接口吗",
            "有hdmi吗",
            "带不带usb口",
            "有几个usb口",
            "有网口吗",
            "有type-c接口吗",
            "能外接显示器吗",
            "有读卡器吗",
            "有耳机孔吗",
            "接口多不多",
            "雷电接口有几个",
        ),
        template="{product}的接口有：{value}。",
    ),
    Concept(
        "摄像头",
        ("摄像头", "前置摄像头", "相机"),
        ("摄像头", "像素", "人脸识别", "红外"),
        (
            "摄像头多少像素",
            "摄像头怎么样",
            "支持人脸识别吗",
            "有摄像头吗",
            "摄像头是1080p吗",
            "摄像头清楚吗",
        ),
    ),
    Concept(
        "键盘背光",
        ("键盘背光", "背光", "键盘灯", "背光键盘"),
        ("背光", "键盘灯", "键盘会亮"),
        ("键盘有背光吗", "有键盘灯吗", "背光是什么颜色", "键盘会亮吗", "是背光键盘吗", "键盘灯能开吗"),
    ),
    Concept(
        "电源",
        ("电源适配器", "充电器", "适配器", "电源", "充电功率", "功率"),
        ("充电器", "适配器", "电源", "功率", "多少瓦", "几瓦", "多少w"),
        (
            "充电器是多少瓦的",
            "充电器多少w",
            "适配器功率多大",
            "电源适配器是什么口的",
            "用的什么充电器",
            "充电功率多大",
        ),
    ),
    Concept(
        "系统",
        ("操作系统", "系统", "预装系统"),
        ("系统", "windows", "win11", "win10"),
        ("是什么系统", "预装什么系统", "是win11吗", "是专业版系统吗", "操作系统是什么", "预装的是windows吗"),
    ),
    Concept(
        "尺寸",
        ("尺寸", "机身尺寸", "长宽高", "厚度", "大小"),
        ("尺寸", "长宽高", "厚度", "多厚", "多薄", "大小"),
        ("尺寸是多少", "机身多厚", "长宽高是多少", "有多薄", "厚度多少", "机器多大尺寸"),
    ),
)
_PRICE_CONCEPT = Concept(
    PRICE,
    (PRICE,),
    ("多少钱", "价格", "价钱", "售价", "卖多少", "几块钱", "啥价"),
    ("这款多少钱", "价格是多少", "现在卖多少钱", "售价多少", "什么价格", "价钱多少", "现在什么价"),
    template="{product}现在的售价是{value}元，以下单页面显示为准。",
)
_MODEL_CONCEPT = Concept(
    MODEL,
    (MODEL,),
    ("型号",),
    ("这款是什么型号", "型号是多少", "具体型号是什么", "是哪个型号"),
    template="这款的型号是{value}。",
)
# questions that name a spec but do not ask for its value: they stay with the FAQ
_NOT_A_VALUE: dict[str, tuple[str, ...]] = {
    "upgrade": (
        "内存能不能自己加",
        "内存可以升级吗",
        "硬盘能扩展吗",
        "能加装硬盘吗",
        "可以自己换内存条吗",
        "能加内存条吗",
        "硬盘能换大的吗",
    ),
    "usage": (
        "能玩游戏吗",
        "适合编程吗",
        "适合做设计和剪视频吗",
        "剪视频卡不卡",
        "散热怎么样",
        "这几款有什么区别",
        "该怎么选",
        "推荐哪一款",
        "性能怎么样",
        "学生用哪款好",
    ),
    "service": (
        "保修多久",
        "电池保修多久",
        "屏幕有坏点怎么办",
        "屏幕碎了保修吗",
        "包邮吗",
        "运费多少",
        "能开发票吗",
        "怎么退货",
        "什么时候发货",
        "有优惠吗",
        "能分期吗",
        "是正品吗",
        "有赠品吗",
        "降价了能退差价吗",
        "能便宜点吗",
        "电池第一次要充满吗",
        "系统怎么重装",
        "驱动在哪下载",
        "京豆能抵扣吗",
        "优惠券能减多少钱",
    ),
    "order": ("下单后能换型号吗", "能改订单吗", "收到货少了充电器", "配件少了怎么办", "没有电源线"),
    "fault": (
        "开不了机怎么办",
        "按开机键没反应",
        "屏幕不亮了",
        "黑屏了怎么办",
        "电池充不进电",
        "插着电用伤电池吗",
        "电池怎么保养",
        "接口松了怎么办",
    ),
}
_ALIAS_INDEX = sorted(((normalize(a), c) for c in CONCEPTS for a in c.aliases), key=lambda x: -len(x[0]))
_NEGATIVE_VALUES = frozenset({"无", "没有", "不支持", "否", "不带", "none", "no"})
_LIST_SEPARATORS = re.compile(r"[/、,，;；|｜]+")
_YES_NO = re.compile(
    r"(?P<verb>支持|有没有|带不带|有|带|是不是|是|能不能|能|可以)(?P<thing>.+?)(?:吗|么|嘛|不|没有|没)?$"
)
_NOT_YES_NO = re.compile(r"多少|几|多大|什么|哪|怎么|多久|多重|多长|多厚|啥")
_FILLERS = re.compile(r"^(?:这款|这个|这台|它|的)+|(?:的|呀|啊|呢|哦|接口|功能)+$")
# what a customer may call a thing, and how a value writes it (looked up after the thing itself)
_SAME_THING: dict[str, tuple[str, ...]] = {
    "独立显卡": ("独显", "rtx", "geforce", "radeon rx"),
    "独显": ("独显", "rtx", "geforce", "radeon rx"),
    "集成显卡": ("集成", "集显", "iris", "uhd", "780m", "arc"),
    "集显": ("集成", "集显", "iris", "uhd", "780m", "arc"),
    "固态硬盘": ("固态", "ssd", "pcie", "nvme"),
    "固态": ("固态", "ssd", "pcie", "nvme"),
    "typec": ("usb-c", "type-c", "雷电"),
    "type-c": ("usb-c", "type-c", "雷电"),
    "雷电4": ("雷电4", "thunderbolt4", "thunderbolt 4"),
    "雷电": ("雷电", "thunderbolt"),
    "人脸识别": ("人脸识别", "红外"),
    "高刷": ("90hz", "120hz", "144hz", "165hz", "240hz"),
    "高刷屏": ("90hz", "120hz", "144hz", "165hz", "240hz"),
    "触屏": ("触控", "触屏"),
    "网口": ("rj45", "网口"),
    "读卡器": ("读卡器", "sd"),
    "外接显示器": ("hdmi", "雷电", "dp", "usb-c"),
    "windows": ("windows",),
    "win11": ("windows 11", "win11"),
    "专业版": ("专业版",),
}


def compact(text: Any) -> str:
    """Normalized text without spaces: what names, models and values are compared on."""
    return normalize(text).replace(" ", "")


def concept_of(attribute: str) -> Concept:
    """The concept an attribute header means; an unknown header is a concept of its own."""
    a = normalize(attribute)
    for alias, concept in _ALIAS_INDEX:
        if a == alias:
            return concept
    for alias, concept in _ALIAS_INDEX:
        if len(alias) >= 2 and alias in a:
            return concept
    name = attribute.strip()
    return Concept(
        name,
        (name,),
        (a,),
        (
            f"{name}是什么",
            f"{name}是多少",
            f"这款的{name}怎么样",
            f"有{name}吗",
            f"支持{name}吗",
            f"{name}参数",
        ),
    )


# ----------------------------------------------------------------------------------- the spec KB
def spec_concepts(attributes: Iterable[str], has_price: bool, has_model: bool) -> list[Concept]:
    """The concepts a catalog can answer, in a stable order (one per concept even if headers repeat it)."""
    out: dict[str, Concept] = {}
    for attribute in sorted(set(attributes)):
        c = concept_of(attribute)
        out.setdefault(c.key, c)
    if has_price:
        out.setdefault(PRICE, _PRICE_CONCEPT)
    if has_model:
        out.setdefault(MODEL, _MODEL_CONCEPT)
    return [out[k] for k in sorted(out)]


def spec_kb(concepts: Sequence[Concept]) -> list[dict[str, Any]]:
    """KB entries for the concepts and the not-a-value groups; a phrasing is kept by its first owner."""
    seen: set[str] = set()
    entries: list[dict[str, Any]] = []

    def unique(questions: Iterable[str]) -> list[str]:
        kept = []
        for q in questions:
            key = compact(q)
            if key and key not in seen:
                seen.add(key)
                kept.append(q)
        return kept

    for c in concepts:
        qs = unique(c.questions)
        if qs:
            entries.append({"id": ATTR_PREFIX + c.key, "question": qs[0], "similar": qs[1:], "answer": c.key})
    for group, questions in _NOT_A_VALUE.items():
        qs = unique(questions)
        if qs:
            entries.append({"id": NONE_PREFIX + group, "question": qs[0], "similar": qs[1:], "answer": "-"})
    return entries


def spec_synonyms(concepts: Sequence[Concept]) -> dict[str, list[str]]:
    """Aliases as tokenizer synonyms, so 运行内存 and RAM count as 内存 in the index."""
    out: dict[str, list[str]] = {}
    for c in concepts:
        alts = [a for a in c.aliases if normalize(a) != normalize(c.key) and " " not in a]
        if alts and " " not in c.key:
            out[c.key] = alts
    return out


@dataclass(frozen=True)
class SpecMatch:
    """What the spec matcher made of a message."""

    concept: Concept | None  # None: not a spec value question (or not confident)
    confidence: float
    reason: str


class SpecMatcher:
    """The calibrated recogniser of spec questions for one set of concepts."""

    def __init__(self, concepts: Sequence[Concept], target_precision: float = 0.95) -> None:
        self.concepts = {c.key: c for c in concepts}
        self.matcher = Matcher.build(
            spec_kb(concepts),
            dense=False,
            smalltalk=False,
            synonyms=spec_synonyms(concepts),
            target_precision=target_precision,
            max_examples=600,
        )

    def match(self, text: str) -> SpecMatch:
        r = self.matcher.match(text, top_k=3, smalltalk=False)
        if r.entry_id is None or not r.entry_id.startswith(ATTR_PREFIX):
            return SpecMatch(None, r.confidence, f"not a spec value question ({r.reason})")
        concept = self.concepts[r.entry_id[len(ATTR_PREFIX) :]]
        if r.decision is not Decision.ANSWER:
            return SpecMatch(None, r.confidence, f"spec {concept.key}: {r.reason}")
        t = compact(text)
        if not any(compact(w) in t for w in (*concept.cues, *concept.aliases)):
            return SpecMatch(None, r.confidence, f"spec {concept.key} not named in the message")
        return SpecMatch(concept, r.confidence, f"spec question ({concept.key}): {r.reason}")


_SPEC_CACHE: dict[str, SpecMatcher] = {}
_SPEC_LOCK = threading.Lock()
_SPEC_CACHE_SIZE = 64


def spec_matcher(concepts: Sequence[Concept], target_precision: float) -> SpecMatcher:
    """The spec matcher for a set of concepts, built once per process (a build takes about a second).

    Keyed by the generated KB and the precision: shops whose catalogs name the same specs share it (it
    holds no shop data, only the built-in phrasings of those concept names).
    """
    payload = json.dumps([spec_kb(concepts), target_precision], ensure_ascii=False, sort_keys=True)
    key = hashlib.sha256(payload.encode("utf-8")).hexdigest()
    with _SPEC_LOCK:
        found = _SPEC_CACHE.get(key)
        if found is None:
            found = SpecMatcher(concepts, target_precision)
            if len(_SPEC_CACHE) >= _SPEC_CACHE_SIZE:
                _SPEC_CACHE.pop(next(iter(_SPEC_CACHE)))
            _SPEC_CACHE[key] = found
    return found


# ----------------------------------------------------------------------------------- answering
@dataclass(frozen=True)
class SpecAnswer:
    text: str
    attribute: str  # the catalog's attribute name ("价格"/"型号" for those columns)


def value_of(sku: Sku, concept: Concept) -> tuple[str, str] | None:
    """(attribute name, value) of the SKU for a concept, or None when the catalog does not say."""
    if concept.key == PRICE:
        return (PRICE, f"{sku.price:g}") if sku.price is not None else None
    if concept.key == MODEL:
        return (MODEL, sku.model) if sku.model else None
    for name, value in sku.attributes.items():
        if concept_of(name).key == concept.key and value:
            return name, value
    return None


def answer(sku: Sku, concept: Concept, question: str) -> SpecAnswer | None:
    """The answer to a spec question about one SKU, through the concept's template; None if unknown."""
    found = value_of(sku, concept)
    if found is None:
        return None
    attribute, value = found
    product = sku.label
    statement = _statement(product, concept, attribute, value)
    q = compact(question)
    yes_no = _YES_NO.search(q) if not _NOT_YES_NO.search(q) else None
    if yes_no is None:
        return SpecAnswer(statement, attribute)
    verb = {"支持": "支持", "带": "有", "带不带": "有", "有": "有", "有没有": "有"}.get(yes_no["verb"], "是")
    v = compact(value)
    if v in _NEGATIVE_VALUES:
        return SpecAnswer(f"不{verb}哦，{product}没有{attribute}。", attribute)
    thing = _asked_thing(yes_no["thing"], concept)
    if not thing:
        return SpecAnswer(f"{verb}的，{statement}", attribute)
    if any(w in v for w in (thing, *_SAME_THING.get(thing, ()))):
        return SpecAnswer(f"{verb}的，{statement}", attribute)
    return SpecAnswer(f"参数里没有写{thing}哦，{statement}", attribute)


def _asked_thing(thing: str, concept: Concept) -> str:
    """What a yes/no question asks about, without the fillers and the concept's own name."""
    t = _FILLERS.sub("", thing)
    for alias in sorted((compact(a) for a in concept.aliases), key=len, reverse=True):
        if t != alias and t.endswith(alias) and len(t) > len(alias):
            t = t[: -len(alias)]
    t = _FILLERS.sub("", t)
    return "" if t in {compact(a) for a in concept.aliases} else t


def _statement(product: str, concept: Concept, attribute: str, value: str) -> str:
    if concept.listing:
        values = [v.strip() for v in _LIST_SEPARATORS.split(value) if v.strip()]
        if len(values) > 1:
            return f"{product}有{len(values)}种{attribute}可选：{'、'.join(values)}。"
        return f"{product}的{attribute}是{value}，只有这一种哦。"
    return concept.template.format(product=product, attr=attribute, value=value)
