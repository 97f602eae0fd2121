import csv

import pytest

from engine.normalize import normalize
from engine.tokenize import USER_WORDS_DICTIONARY, USER_WORDS_SPLIT, Tokenizer, char_ngrams
from tests.conftest import shared_set


def test_synonyms_meet_one_canonical_word():
    tk = Tokenizer(synonyms={"专票": ["增值税专用发票", "增票"]}).fit()
    a, b, c = tk.transform(["能开增值税专用发票吗", "能开增票吗", "能开专票吗"])
    assert a == b == c
    assert "专票" in a


@pytest.mark.parametrize("mode", [USER_WORDS_SPLIT, USER_WORDS_DICTIONARY])
def test_user_dictionary_keeps_model_names_whole(mode):
    plain = Tokenizer().fit().transform(["拯救者Y9000P的内存"])[0]
    custom = Tokenizer(user_words=["拯救者Y9000P"], user_words_mode=mode).fit()
    assert "拯救者y9000p" not in plain
    assert "拯救者y9000p" in custom.transform(["拯救者Y9000P的内存"])[0]


def test_split_mode_keeps_every_user_word_whole_and_cuts_the_rest_as_usual():
    """The merchant's words are cut out (longest first where two start at one place), the text around
    them is segmented exactly as the shared default segmenter does."""
    base = Tokenizer().fit()
    tk = Tokenizer(user_words=["星曜14", "星曜14Pro", "小蓝盒"]).fit()
    text = normalize("星曜14Pro和星曜14哪个好，小蓝盒怎么用")
    got = tk.segment(text)
    assert [w for w in got if w in {"星曜14", "星曜14pro", "小蓝盒"}] == ["星曜14pro", "星曜14", "小蓝盒"]
    # between the words: the shared segmenter's own cut of each piece
    assert got[got.index("星曜14pro") + 1 : got.index("星曜14")] == base.segment("和")
    assert got[got.index("小蓝盒") + 1 :] == base.segment("怎么用")
    assert tk.segment(normalize("没有自定义词的句子")) == base.segment(normalize("没有自定义词的句子"))


def test_models_share_one_segmenter_of_the_default_dictionary(monkeypatch):
    """A private dictionary costs ~26 MB per model; split-mode tokenizers make none of their own."""
    from engine import tokenize

    Tokenizer().fit()  # the process's shared segmenter exists from here on
    made = []
    real = tokenize._make_segmenter
    monkeypatch.setattr(tokenize, "_make_segmenter", lambda *a: made.append(a) or real(*a))
    for words in (["甲乙丙"], ["丁戊己"], []):
        Tokenizer(user_words=words).fit()
    assert made == []
    Tokenizer(user_words=["甲乙丙"], user_words_mode=USER_WORDS_DICTIONARY).fit()
    assert len(made) == 1  # the older mode still builds its own (models saved before the split mode)


def test_unknown_user_words_mode_is_a_clear_error():
    with pytest.raises(ValueError, match="user_words_mode"):
        Tokenizer(user_words_mode="merge")


def test_stop_words_dropped_from_words_not_from_segmentation():
    tk = Tokenizer().fit()
    canon = tk.canonical(normalize("亲，请问保修多久呢"))
    assert "呢" in tk.segment(canon)
    assert "呢" not in tk.words(canon) and "保修" in tk.words(canon)


def test_char_ngrams_do_not_cross_spaces():
    assert char_ngrams("ab c") == ["a", "b", "ab", "c"]


def test_unknown_backend_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown tokenizer backend"):
        Tokenizer(backend="nope").fit()


@pytest.mark.parametrize("mode", [USER_WORDS_SPLIT, USER_WORDS_DICTIONARY])
@pytest.mark.parametrize("name", ["smp2017", "afqmc"])
def test_rjieba_fast_path_gives_jieba_tokens(name, mode):
    """The fast path must not change what the model sees: same tokens on every text of the set."""
    d = shared_set(name)
    texts = []
    with open(d / "kb.csv", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            texts.append(r["question"])
            texts.extend(x for x in (r["similar"] or "").split("|") if x)
    with open(d / "queries.csv", encoding="utf-8") as f:
        texts.extend(r["query"] for r in csv.DictReader(f))
    words = ["花呗", "借呗", "专票"]
    fast = Tokenizer(user_words=words, backend="rjieba", user_words_mode=mode).fit()
    ref = Tokenizer(user_words=words, backend="jieba", user_words_mode=mode).fit()
    mismatched = []
    for t in texts:
        c = fast.canonical(normalize(t))
        if fast.segment(c) != ref.segment(c):
            mismatched.append(t)
    assert len(texts) > 1000
    assert mismatched == []
