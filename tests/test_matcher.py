"""The public API end to end on the demo shop: decisions, bad input, windows, save/load."""

from __future__ import annotations

import json
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from engine import Decision, KBValidationError, Matcher
from engine.artifacts import ModelLoadError

BJ = ZoneInfo("Asia/Shanghai")


def test_invoice_question_is_answered_with_the_invoice_entry(demo_matcher):
    r = demo_matcher.match("笔记本能开专票吗", top_k=5)
    assert r.decision == Decision.ANSWER
    assert r.entry_id == "invoice-special"
    assert r.answer and "专" in r.answer
    assert 0.0 <= r.confidence <= 1.0
    assert r.candidates[0].entry_id == "invoice-special"
    assert len(r.candidates) == 5
    assert r.candidates[0].score >= r.candidates[1].score


def test_fast_profile_answers_it_too(fast_matcher):
    r = fast_matcher.match("笔记本能开专票吗")
    assert r.entry_id == "invoice-special"
    assert not fast_matcher.dense_enabled


@pytest.mark.parametrize("text", ["转人工", "我要投诉你们", "人工客服在吗", "轉人工！！"])
def test_explicit_request_for_a_human_hands_off_at_once(demo_matcher, text):
    r = demo_matcher.match(text)
    assert r.decision == Decision.HANDOFF
    assert "human" in r.reason


@pytest.mark.parametrize(
    "text",
    ["", "   ", "😀😀😀", "\x00\x01\x02", "a" * 10_000, "笔记本" * 4000, "Привет 你好 مرحبا 🙂", None, 12345],
)
def test_bad_input_gives_a_clear_decision_never_an_exception(demo_matcher, fast_matcher, text):
    for m in (demo_matcher, fast_matcher):
        r = m.match(text)
        assert r.decision in set(Decision)
        assert r.reason


def test_empty_and_emoji_only_hand_off(demo_matcher):
    for text in ["", "😀😀", "！！！"]:
        r = demo_matcher.match(text)
        assert r.decision == Decision.HANDOFF
        assert "empty" in r.reason


def test_off_topic_message_is_not_answered(demo_matcher):
    r = demo_matcher.match("今天天气怎么样")
    assert r.decision != Decision.ANSWER


def test_order_number_does_not_change_the_match(demo_matcher):
    plain = demo_matcher.match("我的订单怎么还没发货")
    numbered = demo_matcher.match("我的订单 8812345678 怎么还没发货")
    assert plain.entry_id == numbered.entry_id


def test_promotions_follow_their_window(fast_matcher):
    """promo-618 is valid 2027-06-01..2027-06-18: never offered outside, found inside."""
    inside = datetime(2027, 6, 10, 12, tzinfo=BJ)
    outside = datetime(2026, 12, 1, 12, tzinfo=BJ)
    entry = next(e for e in fast_matcher.entries if e.id == "promo-618")
    text = entry.similar[0]
    assert fast_matcher.match(text, now=inside).candidates[0].entry_id == "promo-618"
    assert "promo-618" not in [c.entry_id for c in fast_matcher.match(text, top_k=20, now=outside).candidates]


def test_disabled_entry_is_never_offered(fast_matcher):
    entry = next(e for e in fast_matcher.entries if not e.enabled)
    r = fast_matcher.match(entry.question, top_k=20)
    assert entry.id not in [c.entry_id for c in r.candidates]


def test_thresholds_come_from_calibration(demo_matcher):
    cal = demo_matcher.info["calibration"]
    assert 0 < cal["t_clarify"] <= cal["t_answer"] <= 1.0 + 1e-6
    assert cal["examples_in_scope"] > 100 and cal["examples_out_of_scope"] > 100
    assert cal["fusion"] == "learned"


def test_paraphrase_held_out_accuracy_beats_chance(demo_matcher):
    assert demo_matcher.info["calibration"]["cv_top1_in_scope"] > 0.6


def test_build_from_a_list_of_entries():
    m = Matcher.build(
        [
            {"id": "a", "question": "保修多久", "answer": "两年"},
            {"id": "b", "question": "什么时候发货", "answer": "当天"},
        ],
        dense=False,
    )
    assert m.match("保修多久啊").candidates[0].entry_id == "a"


def test_bad_kb_builds_nothing(tmp_path):
    bad = tmp_path / "kb.csv"
    bad.write_text("id,question,answer\n1,保修多久,两年\n1,发货,当天\n2,,x\n", encoding="utf-8")
    with pytest.raises(KBValidationError) as err:
        Matcher.build(bad, dense=False)
    assert len(err.value.issues) == 2
    assert {i.row for i in err.value.issues} == {3, 4}


def test_save_load_round_trip_gives_identical_results(demo_matcher, tmp_path):
    path = demo_matcher.save(tmp_path / "shop-1")
    manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["format_version"] == 2
    assert manifest["kb_hash"] == demo_matcher.info["kb_hash"]
    assert manifest["policy"]["t_answer"] == demo_matcher.policy.t_answer
    loaded = Matcher.load(path)
    for text in ["笔记本能开专票吗", "保修多久", "能用白条分期吗", "随便问问"]:
        a, b = demo_matcher.match(text), loaded.match(text)
        assert (a.decision, a.entry_id) == (b.decision, b.entry_id)
        assert a.confidence == pytest.approx(b.confidence, abs=1e-5)


def test_save_replaces_an_older_model_atomically(fast_matcher, tmp_path):
    dest = tmp_path / "m"
    fast_matcher.save(dest)
    (dest / "stale.txt").write_text("old", encoding="utf-8")
    fast_matcher.save(dest)
    assert not (dest / "stale.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


def test_save_never_replaces_what_is_not_a_model(fast_matcher, tmp_path):
    """Matcher.save replaces a Kefu model (or an empty directory) only: anything else is refused,
    unchanged, with no temporary directory left beside it."""
    from engine.artifacts import ModelPathError

    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "notes.txt").write_text("x", encoding="utf-8")
    afile = tmp_path / "afile"
    afile.write_text("keep", encoding="utf-8")
    webapp = tmp_path / "webapp"
    webapp.mkdir()
    (webapp / "manifest.json").write_text('{"name": "app"}', encoding="utf-8")  # not a Kefu manifest
    for dest, what in ((victim, "not a Kefu model"), (afile, "is a file"), (webapp, "not a Kefu model")):
        with pytest.raises(ModelPathError, match=what) as err:
            fast_matcher.save(dest)
        assert isinstance(err.value, ValueError) and isinstance(err.value, ModelLoadError)
        assert "choose another output path or remove it" in str(err.value)
    assert (victim / "notes.txt").read_text(encoding="utf-8") == "x"
    assert afile.read_text(encoding="utf-8") == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "victim", "webapp"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert Matcher.load(fast_matcher.save(empty)).entries  # an empty directory loses nothing
    damaged = fast_matcher.save(tmp_path / "damaged")
    (damaged / "manifest.json").write_text("{not json", encoding="utf-8")
    assert Matcher.load(fast_matcher.save(damaged)).entries  # a damaged model is rebuilt in place


def test_damaged_or_incompatible_model_is_refused(fast_matcher, tmp_path):
    path = fast_matcher.save(tmp_path / "m")
    with pytest.raises(ModelLoadError, match="no model directory"):
        Matcher.load(tmp_path / "missing")
    arrays = path / "sparse_idf.npy"
    arrays.write_bytes(arrays.read_bytes()[:-10])
    with pytest.raises(ModelLoadError, match="damaged"):
        Matcher.load(path)
    path = fast_matcher.save(tmp_path / "m2")
    mf = path / "manifest.json"
    manifest = json.loads(mf.read_text(encoding="utf-8"))
    manifest["format_version"] = 99
    mf.write_text(json.dumps(manifest), encoding="utf-8")
    with pytest.raises(ModelLoadError, match="rebuild"):
        Matcher.load(path)


def test_clarify_offers_the_closest_questions(demo_matcher):
    """Between the thresholds the result carries up to 3 options to offer, best first."""
    pol = demo_matcher.policy
    for text in ["发票", "电脑", "快递", "退", "价格", "屏幕", "电池", "系统", "内存多大", "售后"]:
        r = demo_matcher.match(text, top_k=1)
        if r.decision == Decision.CLARIFY:
            assert pol.t_clarify <= r.confidence < pol.t_answer
            assert len(r.options) == 3 and r.options[0].entry_id == r.entry_id
            assert len(r.candidates) == 1
            return
        assert r.options == []
    pytest.fail("none of the short, vague messages was clarified")


def test_a_kb_question_typed_verbatim_is_answered(fast_matcher):
    """Every question the merchant wrote answers its own entry, whatever the thresholds."""
    for entry in fast_matcher.entries[:20]:
        if not entry.enabled or entry.valid_to is not None:
            continue
        for q in entry.questions():
            r = fast_matcher.match(q)
            assert (r.decision, r.entry_id) == (Decision.ANSWER, entry.id), q
            assert r.confidence >= 0.99


def test_large_kb_index_is_approximate_and_survives_save_load(demo_kb, tmp_path):
    """Above the size threshold the dense channel uses HNSW; the saved index loads and answers alike."""
    m = Matcher.build(demo_kb, ann_threshold=100)
    assert m.info["dense_index"] == "hnsw"
    loaded = Matcher.load(m.save(tmp_path / "hnsw"))
    assert loaded.dense_index is not None and loaded.dense_index.kind_ == "hnsw"
    for text in ["笔记本能开专票吗", "保修多久", "能用白条分期吗"]:
        a, b = m.match(text), loaded.match(text)
        assert (a.decision, a.entry_id) == (b.decision, b.entry_id)
    assert m.match("笔记本能开专票吗").entry_id == "invoice-special"


@pytest.mark.parametrize("profile", ["demo_matcher", "fast_matcher"])
def test_every_candidate_carries_an_estimated_confidence(profile, request):
    """The best keeps the calibrated confidence; runners-up get estimates ordered like the ranking,
    never a bare 0, and together no more than what the best leaves (at most one entry is right)."""
    m = request.getfixturevalue(profile)
    runner_up_seen = 0.0
    texts = ["保修", "发票", "多久发货", "能便宜点吗", "屏幕坏了怎么办", "今天天气怎么样", "笔记本能开专票吗"]
    for text in texts:
        r = m.match(text, top_k=5, candidate_confidence=True)
        conf = [c.confidence for c in r.candidates]
        assert len(conf) == 5, text
        plain = m.match(text, top_k=5)  # the default path estimates the best only (and clarify options)
        assert plain.candidates[0].confidence == pytest.approx(r.confidence)
        assert [c.entry_id for c in plain.candidates] == [c.entry_id for c in r.candidates]
        assert conf[0] == pytest.approx(r.confidence), text
        assert all(0.0 < x <= 1.0 for x in conf), (text, conf)
        assert conf == sorted(conf, reverse=True), (text, conf)
        assert sum(conf[1:]) <= 1.0 - conf[0] + 1e-6, (text, conf)
        runner_up_seen = max(runner_up_seen, conf[1])
        options = {o.entry_id: o.confidence for o in r.options}
        assert all(options[c.entry_id] == c.confidence for c in r.candidates if c.entry_id in options)
    assert runner_up_seen > 0.05  # on vague messages a runner-up is a real possibility, and says so


def _as_format_1(path):
    """Rewrite a saved model the way format 1 stored it: one arrays.npz, no saved small-talk entries."""
    import hashlib

    import numpy as np

    manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
    names = manifest.pop("arrays")
    manifest.pop("smalltalk_entries")
    manifest["tokenizer"].pop("user_words_mode")
    np.savez(path / "arrays.npz", **{k: np.load(path / f"{k}.npy") for k in names})
    for k in names:
        (path / f"{k}.npy").unlink()
    manifest["format_version"] = 1
    manifest["files"] = {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.iterdir())
        if p.name != "manifest.json"
    }
    (path / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False), encoding="utf-8")


def test_a_format_1_model_still_loads_and_answers_alike(demo_matcher, tmp_path):
    path = demo_matcher.save(tmp_path / "v1")
    _as_format_1(path)
    old = Matcher.load(path)
    assert old.tokenizer.user_words_mode == "dictionary"  # its words were in its own dictionary
    assert old.smalltalk_entries_ == demo_matcher.smalltalk_entries_
    for text in ["笔记本能开专票吗", "保修多久", "能用白条分期吗", "你好", "随便问问"]:
        a, b = demo_matcher.match(text), old.match(text)
        assert (a.decision, a.entry_id) == (b.decision, b.entry_id)


def test_loaded_arrays_are_mapped_and_models_share_one_encoder(demo_matcher, tmp_path):
    """A replica holding many shops maps their arrays instead of reading them, and encodes messages
    with one shared encoder and cache; the query path only reads the mapped arrays."""
    import numpy as np

    path = demo_matcher.save(tmp_path / "m")
    a, b = Matcher.load(path), Matcher.load(path)
    assert a.dense_index is not None and b.dense_index is not None
    for arr in (a.dense_index.vectors_, a.sparse.post_vals_, a.sparse.dense_rows_, a.row_ptr):
        # a plain view (np.memmap's hooks would run on every slice) of a read-only map of the file
        assert type(arr) is np.ndarray and not arr.flags.writeable
        assert isinstance(arr.base, np.memmap) and str(arr.base.filename).endswith(".npy")
    assert a.embedder is b.embedder
    r = a.match("笔记本能开专票吗")
    assert r.entry_id == demo_matcher.match("笔记本能开专票吗").entry_id == "invoice-special"


def test_exact_dense_search_matches_a_faiss_flat_index():
    """Below the ANN threshold the dense channel searches with one product instead of a faiss copy of
    the vectors: the same rows, in the same order, as faiss's exact inner-product index."""
    import faiss
    import numpy as np

    from engine.dense import DenseIndex

    rng = np.random.default_rng(7)
    index = DenseIndex().fit(rng.normal(size=(500, 32)).astype(np.float32))
    assert index.kind_ == "flat" and index.index_ is None
    ref = faiss.IndexFlatIP(32)
    ref.add(index.vectors_)
    for _ in range(20):
        q = index.prepare(rng.normal(size=32).astype(np.float32))
        for k in (1, 10, 500, 900):
            rows, sims = index.search(q, k)
            want_s, want_r = ref.search(q.reshape(1, -1), min(k, 500))
            assert rows.tolist() == want_r[0].tolist()
            np.testing.assert_allclose(sims, want_s[0], rtol=1e-5, atol=1e-6)


def test_entries_by_id_is_the_models_entries_under_their_ids(fast_matcher):
    by_id = fast_matcher.entries_by_id
    assert len(by_id) == len(fast_matcher.entries)
    assert list(by_id) == [e.id for e in fast_matcher.entries]
    for e in fast_matcher.entries[:5]:
        assert e.id in by_id and by_id[e.id] is e and by_id.get(e.id) is e
    assert "no-such-entry" not in by_id and by_id.get("no-such-entry") is None
    with pytest.raises(KeyError):
        by_id["no-such-entry"]
