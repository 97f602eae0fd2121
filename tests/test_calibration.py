"""The answer threshold's promise: bounds that account for the calibration set's size, harder held-out
examples, and synthetic paraphrases for KBs that have none."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import Matcher
from engine.decide import choose_thresholds, precision_bound, precision_interval
from engine.paraphrase import ParaphraseGenerator
from engine.tokenize import Tokenizer


def test_the_bound_grows_with_the_evidence() -> None:
    # 20 right answers out of 20 do not prove 95% precision at 80% confidence; 400 out of 400 do
    small = precision_bound(np.ones(20), np.ones(20), 0.8)[-1]
    large = precision_bound(np.ones(400), np.ones(400), 0.8)[-1]
    assert small < 0.95 < large
    assert small == pytest.approx(0.2 ** (1 / 20), abs=1e-6)  # Clopper-Pearson for k = n


@given(
    hits=st.lists(st.booleans(), min_size=1, max_size=200),
    conf=st.floats(0.5, 0.99),
)
@settings(max_examples=60, deadline=None)
def test_the_bound_never_exceeds_the_observed_precision(hits: list[bool], conf: float) -> None:
    h = np.asarray(hits, float)
    w = np.ones(h.size)
    bound = precision_bound(h, w, conf)
    observed = np.cumsum(h) / np.arange(1, h.size + 1)
    assert np.all(bound <= observed + 1e-9)
    assert np.all((bound >= 0) & (bound <= 1))
    lo, hi = precision_interval(h, w, 0.9)
    assert lo - 1e-9 <= h.mean() <= hi + 1e-9


def test_weights_shrink_the_effective_sample() -> None:
    # the same precision carried by a few heavy examples is less certain than by many even ones
    h = np.r_[np.ones(95), np.zeros(5)]
    even = precision_bound(h, np.ones(100), 0.8)[-1]
    skewed = precision_bound(h, np.r_[np.full(10, 10.0), np.full(90, 0.1)], 0.8)[-1]
    assert skewed < even


def test_a_bounded_threshold_is_never_below_the_point_estimate_one() -> None:
    rng = np.random.default_rng(0)
    p = rng.random(300)
    correct = rng.random(300) < p  # calibrated scores
    w = np.ones(300)
    loose, _ = choose_thresholds(p, correct, correct, w, 0.9)
    strict, _ = choose_thresholds(p, correct, correct, w, 0.9, confidence=0.8)
    assert strict >= loose
    answered = p >= strict
    assert (
        precision_bound(correct[answered][np.argsort(-p[answered])].astype(float), w[answered], 0.8)[-1]
        >= 0.9
    )


def _generator(synonyms: dict[str, list[str]] | None = None) -> tuple[ParaphraseGenerator, Tokenizer]:
    texts = [
        "花呗怎么还款",
        "借呗额度怎么提升",
        "快递多久能到",
        "发票在哪里开",
        "还款日是哪天",
        "得到的确实是",
    ]
    tok = Tokenizer(synonyms=synonyms).fit()
    return ParaphraseGenerator(synonyms, edits=(2, 2)).fit(texts), tok


def test_paraphrases_differ_from_the_question_and_are_reproducible() -> None:
    gen, tok = _generator()
    words = tok.segment("花呗怎么还款")
    a = [gen.generate(words, np.random.default_rng(7)) for _ in range(3)]
    assert len(set(a)) == 1  # same seed, same text
    rng = np.random.default_rng(1)
    variants = {gen.generate(words, rng) for _ in range(40)}
    assert None not in variants and "花呗怎么还款" not in variants
    assert len(variants) >= 10


def test_each_edit_does_what_it_says() -> None:
    gen, tok = _generator({"开票": ["开发票"]})
    rng = np.random.default_rng(0)
    words = tok.segment("快递多久能到")
    assert "物流" in "".join(gen._synonym(words, rng)) or "多长时间" in "".join(gen._synonym(words, rng))
    assert "".join(gen._synonym(["开票"], rng)) == "开发票"  # the merchant's synonyms are used too
    assert len("".join(gen._drop(words, rng))) < len("快递多久能到")
    assert sorted("".join(gen._reorder(words, rng))) == sorted("快递多久能到")
    # a homophone typo: one character replaced by a KB character that sounds the same (的 / 得)
    from pypinyin import lazy_pinyin

    typed = "".join(gen._typo(tok.segment("我的快递"), rng))
    changed = [(a, b) for a, b in zip("我的快递", typed, strict=True) if a != b]
    assert changed == [("的", "得")]
    assert lazy_pinyin(typed) == lazy_pinyin("我的快递")


def test_too_short_questions_are_left_alone() -> None:
    gen, _ = _generator()
    assert gen.generate(["好"], np.random.default_rng(0)) is None


def test_a_kb_without_paraphrases_states_its_promise_and_how_it_was_made() -> None:
    entries = [
        {"id": f"e{i}", "question": q, "answer": f"答{i}"}
        for i, q in enumerate(
            [
                "花呗怎么还款",
                "借呗额度怎么提升",
                "快递多久能到",
                "发票在哪里开",
                "还款日是哪天",
                "怎么申请退货退款",
                "运费谁来承担",
                "订单怎么取消",
                "收货地址能改吗",
                "商品有质量问题怎么办",
                "优惠券怎么使用",
                "会员积分有什么用",
            ]
        )
    ]
    m = Matcher.build(entries, dense=False)
    cal = m.info["calibration"]
    assert cal["synthetic_paraphrases"] is True
    assert cal["examples_in_scope"] > 0
    lo, hi = cal["answer_precision_interval_90"]
    assert 0 <= lo <= hi <= 1
    assert "Clopper-Pearson" in cal["threshold_rule"]


def test_the_coverage_bound_answers_the_most_confident_while_precision_holds() -> None:
    import numpy as np

    from training.coverage_bound import oracle_coverage

    # by descending score: right, right, wrong, right, wrong
    score = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    right = np.array([True, True, False, True, False])
    assert oracle_coverage(score, right, 1.0) == 0.4  # the first two
    assert oracle_coverage(score, right, 0.75) == 0.8  # 3 of the first 4
    assert oracle_coverage(-score, right, 0.9) == 0.0  # worst first: no prefix reaches 0.9
