import csv

import pytest

from engine.normalize import normalize
from engine.tokenize import Tokenizer, char_ngrams
from tests.conftest import shared_set


def test_synonyms_meet_one_canonical_word():
    tk = Tokenizer(synonyms={"专票": ["增值税专用发票", "增票"]}).fit()
    a, b, c = tk.transform(["能开增值税专用发票吗", "能开增票吗", "能开专票吗"])
    assert a == b == c
    assert "专票" in a


def test_user_dictionary_keeps_model_names_whole():
    plain = Tokenizer().fit().transform(["拯救者Y9000P的内存"])[0]
    custom = Tokenizer(user_words=["拯救者Y9000P"]).fit().transform(["拯救者Y9000P的内存"])[0]
    assert "拯救者y9000p" not in plain
    assert "拯救者y9000p" in custom


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


@pytest.mark.parametrize("name", ["smp2017", "afqmc"])
def test_rjieba_fast_path_gives_jieba_tokens(name):
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
    fast = Tokenizer(user_words=words, backend="rjieba").fit()
    ref = Tokenizer(user_words=words, backend="jieba").fit()
    mismatched = []
    for t in texts:
        c = fast.canonical(normalize(t))
        if fast.segment(c) != ref.segment(c):
            mismatched.append(t)
    assert len(texts) > 1000
    assert mismatched == []
