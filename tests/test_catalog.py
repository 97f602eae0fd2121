"""The catalog (商品知识): importing it, recognising spec questions, and the skill in conversations.

The conversations run through ConversationPolicy with the demo shop's FAQ (dense channel off) and the
demo catalog (models/demo-catalog.csv), as a JD shop would be served.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import openpyxl
import pytest

from api.catalog.importer import Sku, load_catalog
from api.catalog.skill import Catalog, CatalogSkill
from api.catalog.spec import answer, concept_of
from api.dialog.conversation import ConversationPolicy, ConversationState, Reply, TurnContext
from api.kb.publisher import with_catalog_words
from engine import Matcher
from engine.kb import KBValidationError

ROOT = Path(__file__).resolve().parent.parent
DEMO_CATALOG = ROOT / "models" / "demo-catalog.csv"
PRO_16G, AIR, G16, BOOK13 = "100087650001", "100087650003", "100087650007", "100087650009"


def write_csv(path: Path, rows: list[list[Any]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)
    return path


def write_xlsx(path: Path, rows: list[list[Any]]) -> Path:
    wb = openpyxl.Workbook()
    ws = wb.active
    assert ws is not None
    for row in rows:
        ws.append(row)
    wb.save(path)
    return path


HEADER = ["商品编号", "商品名称", "型号", "价格", "销量", "内存", "颜色"]


# ------------------------------------------------------------------------------------------- import
def test_demo_catalog_imports_with_attributes_named_by_their_headers() -> None:
    skus = load_catalog(DEMO_CATALOG)
    assert len(skus) == 20 and len({s.sku_id for s in skus}) == 20
    pro = next(s for s in skus if s.sku_id == PRO_16G)
    assert pro.model == "星曜14 Pro" and pro.price == 5999 and pro.sales == 18600
    assert pro.attributes["颜色"] == "星空灰/月光银" and "雷电4" in pro.attributes["接口"]
    assert {"商品编号", "价格", "型号"}.isdisjoint(pro.attributes)


def test_csv_with_english_headers_and_price_text(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "c.csv",
        [
            ["sku_id", "name", "model", "price", "sales", "RAM", "接口"],
            ["A1", "本子", "N1", "¥1,299.50", "", "8G", ""],
        ],
    )
    (sku,) = load_catalog(path)
    assert sku == Sku("A1", "本子", "N1", 1299.5, None, {"RAM": "8G"})  # empty cells say nothing


def test_csv_row_problems_are_all_listed_with_row_and_column(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "shop-catalog.csv",
        [
            HEADER,
            ["1001", "好本子", "N1", "3999", "10", "16G", "银"],
            ["", "没有编号", "N2", "100", "1", "", ""],
            ["1001", "重复的编号", "N3", "100", "1", "", ""],
            ["1004", "价格不对", "N4", "三千", "1", "", ""],
            ["1005", "", "N5", "-5", "很多", "", ""],
            ["10 06", "编号有空格", "N6", "1", "1", "", ""],
        ],
    )
    with pytest.raises(KBValidationError) as e:
        load_catalog(path)
    found = {(i.row, i.column) for i in e.value.issues}
    assert found == {
        (3, "商品编号"),
        (4, "商品编号"),
        (5, "价格"),
        (6, "商品名称"),
        (6, "价格"),
        (6, "销量"),
        (7, "商品编号"),
    }
    assert all(i.source == "shop-catalog.csv" for i in e.value.issues)
    dup = next(i for i in e.value.issues if i.row == 4)
    assert "first in row 2" in dup.message


def test_xlsx_numbers_and_row_problems(tmp_path: Path) -> None:
    good = write_xlsx(
        tmp_path / "good.xlsx",
        [
            HEADER,
            [100012345678, "好本子", "N1", 3999.0, 120, "16G", "银/灰"],
            [2002, "另一个", None, 12.5, None, None, "黑"],
        ],
    )
    skus = load_catalog(good)
    assert [s.sku_id for s in skus] == ["100012345678", "2002"]  # Excel numbers, not 100012345678.0
    assert skus[0].price == 3999 and skus[0].sales == 120 and skus[1].attributes == {"颜色": "黑"}
    bad = write_xlsx(
        tmp_path / "bad.xlsx",
        [
            HEADER,
            [1, "a", "m", 10, 1, "", ""],
            [1, "b", "m", "贵", 1.5, "", ""],
            [None, "c", "m", 1, 1, "", ""],
        ],
    )
    with pytest.raises(KBValidationError) as e:
        load_catalog(bad, source_name="商品.xlsx")
    assert {(i.source, i.row, i.column) for i in e.value.issues} == {
        ("商品.xlsx", 3, "商品编号"),
        ("商品.xlsx", 3, "价格"),
        ("商品.xlsx", 3, "销量"),
        ("商品.xlsx", 4, "商品编号"),
    }


def test_missing_columns_and_empty_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(KBValidationError) as e:
        load_catalog(write_csv(tmp_path / "x.csv", [["型号", "内存"], ["N1", "8G"]]))
    assert {i.column for i in e.value.issues} == {"sku_id", "name"}
    with pytest.raises(KBValidationError) as e:
        load_catalog(write_csv(tmp_path / "y.csv", [HEADER]))
    assert "no products" in str(e.value)


def test_json_rows_may_carry_attributes_as_an_object(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text(
        json.dumps([{"sku_id": "9", "name": "本子", "attributes": {"内存": "8G", "重量": 1.2}}]), "utf-8"
    )
    (sku,) = load_catalog(path)
    assert sku.attributes == {"内存": "8G", "重量": "1.2"}


# ------------------------------------------------------------------------------------------- answers
def test_attribute_names_map_to_concepts_through_synonyms() -> None:
    assert concept_of("运行内存").key == concept_of("RAM").key == concept_of("内存").key == "内存"
    assert concept_of("电源适配器").key == "电源" and concept_of("机身颜色").key == "颜色"
    assert concept_of("保修政策").key == "保修政策"  # unknown: a concept of its own


def test_templates_yes_no_and_listing() -> None:
    pro = next(s for s in load_catalog(DEMO_CATALOG) if s.sku_id == PRO_16G)
    said = lambda q: answer(pro, concept_of(k[q]), q).text  # noqa: E731
    k = {
        "有几个颜色": "颜色",
        "支持雷电4吗": "接口",
        "有网口吗": "接口",
        "有独显吗": "显卡",
        "重量多少": "重量",
    }
    assert said("有几个颜色") == "星曜14 Pro有2种颜色可选：星空灰、月光银。"
    assert said("支持雷电4吗").startswith("支持的，星曜14 Pro的接口有：雷电4×2")
    assert said("有网口吗").startswith("参数里没有写网口")
    assert said("有独显吗").startswith("参数里没有写独显")  # an Iris Xe is not a discrete GPU
    assert said("重量多少") == "星曜14 Pro的重量约1.35kg。"


# ------------------------------------------------------------------------------------------- the skill
@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog.of(load_catalog(DEMO_CATALOG))


def policy_for(matcher: Matcher, catalog: Catalog) -> ConversationPolicy:
    entries = {e.id: e for e in matcher.entries}
    return ConversationPolicy(
        match=lambda t, **kw: matcher.match(t, top_k=5, **kw),
        get_entry=lambda i: (entries[i].question, entries[i].answer) if i in entries else None,
        skills=[CatalogSkill(catalog)],
    )


@pytest.fixture
def policy(fast_matcher: Matcher, catalog: Catalog) -> ConversationPolicy:
    return policy_for(fast_matcher, catalog)


def talk(
    policy: ConversationPolicy, messages: list[str], context: TurnContext | None = None
) -> tuple[list[Reply], ConversationState]:
    state: ConversationState | None = None
    replies = []
    for m in messages:
        reply, state = policy.step(state, m, context)
        replies.append(reply)
    assert state is not None
    return replies, state


def test_product_from_the_jd_push_answers_spec_questions(policy: ConversationPolicy) -> None:
    ctx = TurnContext(sku_id=BOOK13)
    replies, state = talk(policy, ["这款内存多大", "有几个颜色", "重量多少", "支持雷电4吗"], ctx)
    assert [r.kind for r in replies] == ["answer"] * 4
    assert [r.entry_id for r in replies] == [f"sku:{BOOK13}:{a}" for a in ("内存", "颜色", "重量", "接口")]
    assert "16GB LPDDR4x" in replies[0].text and "3种颜色" in replies[1].text
    assert "约1.1kg" in replies[2].text and replies[3].text.startswith("参数里没有写雷电4")
    assert all(r.confidence >= 0.8 for r in replies) and state.sku_id == BOOK13


def test_catalog_answer_wins_over_the_faq_generic_spec_entry(
    policy: ConversationPolicy, fast_matcher: Matcher
) -> None:
    assert fast_matcher.match("有哪些颜色可以选").entry_id == "spec-color"  # the FAQ has a generic answer
    (reply,), _ = talk(policy, ["有哪些颜色可以选"], TurnContext(sku_id=G16))
    assert reply.entry_id == f"sku:{G16}:颜色" and "暗夜黑、冰川白" in reply.text


def test_faq_questions_stay_with_the_faq_while_a_product_is_known(policy: ConversationPolicy) -> None:
    ctx = TurnContext(sku_id=G16)
    replies, _ = talk(policy, ["能开专票吗", "内存能不能自己加", "支持七天无理由退货吗"], ctx)
    assert [r.entry_id for r in replies] == ["invoice-special", "spec-ram-upgrade", "return-7days"]


def test_a_product_link_alone_introduces_the_product(policy: ConversationPolicy) -> None:
    replies, state = talk(policy, [f"https://item.jd.com/{AIR}.html", "续航怎么样"])
    intro, battery = replies
    assert intro.kind == "answer" and intro.entry_id == f"sku:{AIR}"
    assert "星曜14 Air" in intro.text and "4299元" in intro.text
    assert battery.entry_id == f"sku:{AIR}:续航" and "约10小时" in battery.text
    assert state.sku_id == AIR


@pytest.mark.parametrize(
    "link",
    [
        f"item.jd.hk/{AIR}.html",  # JD International, pasted without its scheme
        f"npcitem.jd.hk/{AIR}.html",
        f"https://item.jd.hk/{AIR}.html",
        f"https://item.m.jd.com/product/{AIR}.html",
        f"item.m.jd.com/{AIR}.html",
    ],
)
def test_every_product_link_form_names_the_product(policy: ConversationPolicy, link: str) -> None:
    # the link is taken out of the question asked with it
    (battery,), state = talk(policy, [f"{link} 续航怎么样"])
    assert battery.entry_id == f"sku:{AIR}:续航" and "约10小时" in battery.text and state.sku_id == AIR


@pytest.mark.parametrize(
    "message",
    [
        f"https://item.m.jd.com/product/{AIR}.html?cover=1&from=share 续航怎么样",  # its "?" ends no sentence
        f"https://item.jd.com/{AIR}.html续航怎么样",  # the question typed right after the link
    ],
)
def test_a_question_beside_a_shared_link_is_answered(policy: ConversationPolicy, message: str) -> None:
    (battery,), state = talk(policy, [message])
    assert battery.entry_id == f"sku:{AIR}:续航" and "约10小时" in battery.text and state.sku_id == AIR


@pytest.mark.parametrize(
    "label", ["商品编码：", "商品编号是", "商品ID ", "SKU号", "skuId=", "sku_id: ", "wareId=", "ＳＫＵ："]
)
def test_a_labelled_shop_code_names_the_product(fast_matcher: Matcher, label: str) -> None:
    # a shop whose SKU ids are its own codes: only the label says the code is a product's
    skus = [
        Sku("NB-1401", "轻薄本14", "N14", 3999, 10, {"内存": "16GB"}),
        Sku("NB-1601", "轻薄本16", "N16", 4999, 5, {"内存": "32GB"}),
    ]
    (reply,), state = talk(policy_for(fast_matcher, Catalog.of(skus)), [f"{label}NB-1601 内存多大"])
    assert reply.entry_id == "sku:NB-1601:内存" and "32GB" in reply.text and state.sku_id == "NB-1601"


def test_a_model_name_in_the_message_sets_the_product(policy: ConversationPolicy) -> None:
    (reply,), state = talk(policy, ["逐风G16的显卡是什么"])
    assert reply.entry_id == f"sku:{G16}:显卡" and "RTX 4070" in reply.text and state.sku_id == G16


def test_unknown_product_offers_best_sellers_and_the_choice_answers(policy: ConversationPolicy) -> None:
    replies, state = talk(policy, ["这台电脑有多重", "第二个"])
    ask, chosen = replies
    assert ask.kind == "clarify" and [o.entry_id for o in ask.options] == [
        "sku:100087650010",  # 知书14: the best-seller (31500 sold)
        f"sku:{BOOK13}",
        f"sku:{AIR}",
    ]
    assert chosen.kind == "answer" and chosen.entry_id == f"sku:{BOOK13}:重量" and "约1.1kg" in chosen.text
    assert state.sku_id == BOOK13 and state.pending is None


def test_the_pending_question_is_answered_for_a_model_or_a_link(policy: ConversationPolicy) -> None:
    (ask, by_model), _ = talk(policy, ["有哪些颜色可以选", "逐风G16"])
    assert ask.kind == "clarify" and by_model.entry_id == f"sku:{G16}:颜色"  # not among the three offered
    (_, by_link), state = talk(policy, ["接口有哪些", f"这个 https://item.m.jd.com/product/{AIR}.html"])
    assert by_link.entry_id == f"sku:{AIR}:接口" and state.sku_id == AIR


def test_a_model_sold_in_several_configurations_is_asked_about(policy: ConversationPolicy) -> None:
    (ask, chosen), state = talk(policy, ["星曜14 Pro 内存多大", "2"])
    assert state.sku_id == "100087650002"
    assert ask.kind == "clarify" and len(ask.options) == 2 and "32G" in ask.options[1].question
    assert chosen.entry_id == "sku:100087650002:内存" and "32GB" in chosen.text


def test_configurations_that_agree_are_answered_without_asking(policy: ConversationPolicy) -> None:
    # both 星曜14 Pro configurations have the same keyboard: nothing to ask; their memory differs: ask
    (backlight, memory), state = talk(policy, ["星曜14 Pro键盘有背光吗", "星曜14 Pro 内存多大"])
    assert backlight.kind == "answer" and backlight.entry_id == "sku:100087650001:键盘背光"
    assert "白色背光" in backlight.text and memory.kind == "clarify" and state.sku_id is None


def test_a_shop_wide_spec_question_goes_to_the_faq_only_when_all_products_agree(
    fast_matcher: Matcher, catalog: Catalog
) -> None:
    win = "Windows 11 家庭中文版"
    same = [replace(s, attributes={**s.attributes, "操作系统": win}) for s in catalog.skus]
    uniform = policy_for(fast_matcher, Catalog.of(same))
    assert fast_matcher.match("预装什么系统").entry_id == "spec-windows"
    (faq,), _ = talk(uniform, ["预装什么系统"])
    assert faq.kind == "answer" and faq.entry_id == "spec-windows"
    (this_one,), _ = talk(uniform, ["这款预装什么系统"])  # 这款: the customer means one product
    assert this_one.kind == "clarify" and this_one.options[0].entry_id.startswith("sku:")
    # the demo catalog sells 专业版 on some models: which one is asked
    (differs,), _ = talk(policy_for(fast_matcher, catalog), ["预装什么系统"])
    assert differs.kind == "clarify" and differs.options[0].entry_id.startswith("sku:")


# ------------------------------------------------------------------------------------------- figures
# Spec questions written for this test (not the phrasings of the built-in table), each with the SKU
# attribute it asks about; and questions that must not be taken by the catalog.
SPEC_SET = [
    ("内存是几个G的", "内存"),
    ("运行内存有多少", "内存"),
    ("这个RAM是多大的", "内存"),
    ("固态硬盘有多大", "硬盘"),
    ("存储空间是多少", "硬盘"),
    ("用的是独显还是集显", "显卡"),
    ("显卡是啥型号", "显卡"),
    ("cpu用的哪款", "处理器"),
    ("处理器是i几", "处理器"),
    ("屏幕分辨率多少", "屏幕"),
    ("屏幕刷新率是多少hz", "屏幕"),
    ("电脑几斤重啊", "重量"),
    ("机器重不重", "重量"),
    ("都有什么颜色", "颜色"),
    ("有白色的吗", "颜色"),
    ("电池续航多长时间", "续航"),
    ("充一次电能用多久", "续航"),
    ("有几个usb接口", "接口"),
    ("能接hdmi吗", "接口"),
    ("摄像头是多少像素的", "摄像头"),
    ("键盘带背光吗", "键盘背光"),
    ("充电器功率多少", "电源适配器"),
    ("预装的是什么系统", "操作系统"),
    ("现在多少钱", "价格"),
]
NOT_SPEC = ["能开专票吗", "保修多久", "怎么申请价保", "几天能到", "可以用白条分期吗", "电脑开不了机怎么办"]


def test_share_of_spec_questions_answered_right(policy: ConversationPolicy) -> None:
    right = []
    for q, attribute in SPEC_SET:
        (reply,), _ = talk(policy, [q], TurnContext(sku_id=PRO_16G))
        right.append(reply.entry_id == f"sku:{PRO_16G}:{attribute}")
    wrong = [q for (q, _), ok in zip(SPEC_SET, right, strict=True) if not ok]
    assert sum(right) / len(right) >= 0.8, wrong
    for q in NOT_SPEC:
        (reply,), _ = talk(policy, [q], TurnContext(sku_id=PRO_16G))
        assert not (reply.entry_id or "").startswith("sku:"), (q, reply)


def test_catalog_words_join_the_shops_dictionary() -> None:
    options = with_catalog_words({"user_words": ["专票"], "target_precision": 0.9}, ["星曜14", "专票"])
    assert options == {"user_words": ["专票", "星曜14"], "target_precision": 0.9}
    assert with_catalog_words({}, []) == {}


def test_bad_cells_are_reported_not_raised(tmp_path: Path) -> None:
    data = io.StringIO()
    csv.writer(data).writerows([["sku", "name", "价格"], ["x\x01y", "名", "1e400"]])
    path = tmp_path / "c.csv"
    path.write_text(data.getvalue(), "utf-8")
    with pytest.raises(KBValidationError) as e:
        load_catalog(path)
    assert {i.column for i in e.value.issues} == {"价格"}  # control characters are dropped from the id
