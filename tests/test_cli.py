"""Tests for the `kefu` CLI (training.cli) and the evaluation metrics (training.evaluate).

Everything runs a real Matcher built from a tiny Chinese KB with `--fast` (sparse channels only), except
the metric-arithmetic tests, which feed `evaluate` a fixture of known results so the figures can be
checked by hand.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner, Result

from engine import Candidate, Decision, Matcher, MatchResult
from training.cli import app
from training.evaluate import (
    QueryFileError,
    evaluate,
    operating_point_label,
    plot_precision_coverage,
    precision_coverage_curve,
    read_labelled,
    read_queries,
    threshold_text,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# what each plot format's file starts with
SIGNATURES = {".png": PNG_SIGNATURE, ".svg": b"<?xml", ".pdf": b"%PDF-"}

KB_ROWS = [
    ("warranty", "保修多久", "保修期是多长时间|质保几年|坏了保修吗", "整机保修一年。", "售后"),
    ("invoice", "能开发票吗", "可以开发票吗|发票怎么开|有没有发票", "支持开具电子发票。", "发票"),
    ("ship-time", "什么时候发货", "几天发货|多久能发出|下单后多久发货", "16点前付款当天发货。", "物流"),
    ("return", "支持七天无理由退货吗", "能退货吗|不想要了可以退吗|怎么退货", "支持七天无理由退货。", "售后"),
    ("shipping-fee", "包邮吗", "运费多少|要付邮费吗|免运费吗", "全国包邮。", "物流"),
    (
        "address",
        "收货地址能改吗",
        "地址填错了怎么办|怎么修改收货地址|能换个地址吗",
        "出库前可改地址。",
        "物流",
    ),
    (
        "tracking",
        "我的快递到哪了",
        "怎么查物流|物流信息在哪看|快递单号是多少",
        "在订单详情查看物流。",
        "物流",
    ),
    (
        "price-protect",
        "买贵了能保价吗",
        "降价了能退差价吗|价保怎么申请|有没有价格保护",
        "7天内保价。",
        "售后",
    ),
    ("payment", "可以分期付款吗", "支持白条吗|能用信用卡吗|分期免息吗", "支持白条分期。", "支付"),
    ("stock", "还有货吗", "有现货吗|什么时候到货|缺货吗", "页面显示有货即可下单。", "商品"),
]

EVAL_QUERIES: list[tuple[str, str]] = [
    ("质保几年", "warranty"),  # verbatim KB paraphrase
    ("发票能开吗", "invoice"),
    ("几号发货", "ship-time"),
    ("能退吗", "return"),
    ("邮费多少钱", "shipping-fee"),
    ("地址写错了", "address"),
    ("物流到哪了", "tracking"),
    ("降价能补差价吗", "price-protect"),
    ("能用白条吗", "payment"),
    ("现在有货吗", "stock"),
    ("今天天气怎么样", ""),
    ("帮我订个外卖", ""),
    ("你们老板是谁", ""),
]
EVAL_KEYS = {
    "n_queries",
    "top1",
    "mrr",
    "recall_at_5",
    "coverage",
    "answer_precision",
    "clarify_share",
    "handoff_share",
    "oos_protected",
    "latency_p50_ms",
    "latency_p99_ms",
    "queries",
}

runner = CliRunner()


def write_csv(
    path: Path, header: Sequence[str], rows: Sequence[Sequence[str]], encoding: str = "utf-8"
) -> Path:
    with path.open("w", encoding=encoding, newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_kb(path: Path) -> Path:
    return write_csv(path, ["id", "question", "similar", "answer", "category"], KB_ROWS)


def write_queries(path: Path, pairs: Sequence[tuple[str, str]]) -> Path:
    return write_csv(path, ["query", "expected_id"], pairs)


def invoke(*args: str | os.PathLike[str], input: str | None = None) -> Result:
    return runner.invoke(app, [str(a) for a in args], input=input)


def assert_clean_failure(result: Result, *fragments: str) -> None:
    """Exit code != 0 through typer.Exit (not an escaped exception), message shown, no traceback."""
    assert result.exit_code != 0
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    assert "error:" in result.output
    for fragment in fragments:
        assert fragment in result.output


@dataclass(frozen=True)
class Built:
    path: Path
    output: str


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """One `kefu build --fast` shared by the read-only tests (building is the slow part)."""
    root = tmp_path_factory.mktemp("kefu")
    kb = write_kb(root / "kb.csv")
    result = invoke("build", kb, "-o", root / "model", "--fast")
    assert result.exit_code == 0, result.output
    return Built(root / "model", result.output)


@pytest.fixture
def model_copy(built: Built, tmp_path: Path) -> Path:
    """A private copy for tests that write into the model directory."""
    return Path(shutil.copytree(built.path, tmp_path / "model"))


# --------------------------------------------------------------------------- build


def test_build_creates_model_dir_and_prints_summary(built: Built) -> None:
    manifest = json.loads((built.path / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["format"] == "kefu-model"
    assert manifest["info"]["entries"] == len(KB_ROWS)
    assert manifest["info"]["dense"] is False
    for label in ("entries", "answer threshold", "CV top-1", "build seconds"):
        assert label in built.output


def test_build_missing_kb_file(tmp_path: Path) -> None:
    result = invoke("build", tmp_path / "nope.csv", "-o", tmp_path / "m", "--fast")
    assert_clean_failure(result, "not found", "nope.csv")
    assert not (tmp_path / "m").exists()


def test_build_bad_kb_lists_every_issue(tmp_path: Path) -> None:
    kb = write_csv(
        tmp_path / "bad.csv",
        ["id", "question", "answer"],
        [["A", "怎么退货", "退"], ["A", "多久发货", "发"], ["B", "", "x"]],
    )
    result = invoke("build", kb, "-o", tmp_path / "m", "--fast")
    assert_clean_failure(result, "2 problems", "row 3", "duplicate id 'A'", "row 4", "question is blank")
    assert not (tmp_path / "m").exists()


def test_build_prints_what_the_kb_warns_about(tmp_path: Path) -> None:
    header = ["id", "question", "similar", "answer", "category", "备注"]
    kb = write_csv(tmp_path / "kb.csv", header, [[*row, "内部备注"] for row in KB_ROWS])
    result = invoke("build", kb, "-o", tmp_path / "m", "--fast")
    assert result.exit_code == 0, result.output
    assert "warning: kb.csv row 1, column F: '备注' is not a knowledge-base column" in result.output
    assert (tmp_path / "m" / "manifest.json").exists()


def test_build_of_a_bad_kb_prints_its_warnings_too(tmp_path: Path) -> None:
    kb = write_csv(
        tmp_path / "bad.csv", ["id", "question", "answer", "valid_until"], [["A", "👍👍", "x", ""]]
    )
    result = invoke("build", kb, "-o", tmp_path / "m", "--fast")
    assert_clean_failure(result, "1 problem", "row 2", "no word or character the matcher can use")
    assert "warning: bad.csv row 1, column D: 'valid_until'" in result.output
    assert "did you mean 'valid_to'?" in result.output
    assert not (tmp_path / "m").exists()


def test_build_refuses_a_kb_over_the_row_limit(tmp_path: Path) -> None:
    result = invoke("build", write_kb(tmp_path / "kb.csv"), "-o", tmp_path / "m", "--fast", "--max-rows", "3")
    assert_clean_failure(result, "kb.csv: it has more than 3 rows", "--max-rows")
    assert not (tmp_path / "m").exists()


def test_build_rejects_bad_target_precision(tmp_path: Path) -> None:
    result = invoke("build", write_kb(tmp_path / "kb.csv"), "--fast", "--target-precision", "1.5")
    assert_clean_failure(result, "--target-precision")


# --------------------------------------------------------------------------- eval


def test_eval_prints_metrics_and_writes_png_and_json(built: Built, tmp_path: Path) -> None:
    queries = write_queries(tmp_path / "q.csv", EVAL_QUERIES)
    png, out = tmp_path / "curve.png", tmp_path / "report.json"
    result = invoke("eval", built.path, queries, "--plot", png, "--json", out)
    assert result.exit_code == 0, result.output
    assert "top-1" in result.output and "recall@5" in result.output
    assert png.read_bytes().startswith(PNG_SIGNATURE)
    report = json.loads(out.read_text(encoding="utf-8"))
    assert report.keys() >= EVAL_KEYS
    assert report["n_queries"] == len(EVAL_QUERIES)
    assert report["n_out_of_scope"] == 3
    assert 0.0 <= report["top1"] <= 1.0
    assert report["top1"] <= report["recall_at_5"] <= 1.0
    assert report["clarify_share"] + report["handoff_share"] + report["coverage"] == pytest.approx(1.0)
    assert report["latency_p50_ms"] <= report["latency_p99_ms"]
    verbatim = next(q for q in report["queries"] if q["query"] == "质保几年")
    assert verbatim["decision"] == "answer" or verbatim["rank"] == 1


def flat(text: str) -> str:
    """Output with rich's box characters and line wrapping taken out, to look for a phrase in it."""
    return " ".join(text.replace("│", " ").split())


def test_eval_writes_no_plot_unless_asked_and_max_queries(
    model_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Was: reports/<model>-eval-<queries>.png written on every run, asked for or not."""
    monkeypatch.chdir(tmp_path)
    queries = write_queries(tmp_path / "shop-logs.csv", EVAL_QUERIES)
    out = tmp_path / "r.json"
    model_files = sorted(p.name for p in model_copy.iterdir())
    result = invoke("eval", model_copy, queries, "--max-queries", "4", "--json", out)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "r.json", "shop-logs.csv"]
    assert sorted(p.name for p in model_copy.iterdir()) == model_files
    assert "plot:" not in result.output
    assert json.loads(out.read_text(encoding="utf-8"))["n_queries"] == 4
    usage = flat(invoke("eval", "--help").output)
    assert "--plot" in usage and "without it no plot is written" in usage and ".png, .svg, .pdf" in usage


@pytest.mark.parametrize("name", ["curve.png", "curve.svg", "curve.pdf", "CURVE.SVG"])
def test_eval_plot_format_follows_the_suffix(built: Built, tmp_path: Path, name: str) -> None:
    """Was: PNG bytes whatever the suffix."""
    queries = write_queries(tmp_path / "q.csv", EVAL_QUERIES)
    plot = tmp_path / "plots" / name
    result = invoke("eval", built.path, queries, "--plot", plot)
    assert result.exit_code == 0, result.output
    data = plot.read_bytes()
    assert data.startswith(SIGNATURES[plot.suffix.lower()])
    if plot.suffix.lower() == ".svg":
        assert b"<svg" in data
    assert f"plot:{plot}" in "".join(result.output.split())  # rich wraps long paths anywhere


@pytest.mark.parametrize("name", ["curve.jpg", "curve", "curve.png.txt"])
def test_eval_refuses_an_unsupported_plot_suffix_before_any_work(tmp_path: Path, name: str) -> None:
    """Refused before the model and the queries are read (neither exists here), nothing written."""
    plot = tmp_path / name
    result = invoke("eval", tmp_path / "no-model", tmp_path / "no-queries.csv", "--plot", plot)
    assert_clean_failure(result, f"--plot {plot}:", "(supported: .png, .svg, .pdf")
    assert "not found" not in result.output and "no model directory" not in result.output
    assert list(tmp_path.iterdir()) == []


def test_bench_scale_refuses_an_unsupported_png_suffix_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from training import scale

    monkeypatch.setattr(scale, "run", lambda *a, **kw: pytest.fail("the benchmark ran"))
    plot = tmp_path / "scale.gif"
    result = invoke("bench", tmp_path, "--scale", "--png", plot)
    assert_clean_failure(result, f"--png {plot}:", "unsupported plot file type '.gif'", ".png, .svg, .pdf")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("suffix", [".png", ".svg", ".pdf"])
def test_bench_scale_plot_format_follows_the_suffix(tmp_path: Path, suffix: str) -> None:
    from training import scale

    cells = [scale.Cell("kefu-fast", n, build_s=n / 1000, p50_ms=n / 10000) for n in (1000, 10000)]
    report = scale.ScaleReport(sizes=[1000, 10000], queries=10, seed=0, cells=cells, machine={"cpus": 2})
    assert scale.plot(report, tmp_path / f"s{suffix}").read_bytes().startswith(SIGNATURES[suffix])


def test_eval_skips_and_reports_unknown_expected_ids(built: Built, tmp_path: Path) -> None:
    """A query whose expected id the model's KB lacks cannot be matched: listed and left out, not
    scored as a wrong answer (as calibrate does)."""
    unknown = [(f"问题{i}", f"gone-{i}") for i in range(12)]
    queries = write_queries(tmp_path / "q.csv", [*EVAL_QUERIES, *unknown])
    out = tmp_path / "r.json"
    result = invoke("eval", built.path, queries, "--json", out, "--plot", tmp_path / "c.png")
    assert result.exit_code == 0, result.output
    first = len(EVAL_QUERIES) + 2  # after the header row
    output = " ".join(result.output.split())
    assert f"skipped 12 rows of {queries}" in output
    assert f"row {first} ('gone-0')" in output and f"row {first + 9} ('gone-9')" in output
    assert "gone-10" not in output and "and 2 more" in output  # the first 10 are named
    report = json.loads(out.read_text(encoding="utf-8"))
    assert report["n_queries"] == len(EVAL_QUERIES)
    alone = tmp_path / "alone.json"
    clean = write_queries(tmp_path / "clean.csv", EVAL_QUERIES)
    assert invoke("eval", built.path, clean, "--json", alone, "--plot", tmp_path / "d.png").exit_code == 0
    assert report["answer_precision"] == json.loads(alone.read_text(encoding="utf-8"))["answer_precision"]
    only_unknown = write_queries(tmp_path / "none.csv", unknown)
    assert_clean_failure(invoke("eval", built.path, only_unknown), "no query of", "can be scored")


# --------------------------------------------------------------------------- the answer threshold shown


def with_threshold(model: Path, t_answer: float) -> Path:
    """The model with its manifest's answer threshold set (as a calibration or a build would leave it)."""
    manifest = model / "manifest.json"
    data = json.loads(manifest.read_text(encoding="utf-8"))
    data["policy"]["t_answer"] = t_answer
    manifest.write_text(json.dumps(data), encoding="utf-8")
    assert Matcher.load(model).policy.t_answer == t_answer
    return model


def svg_text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("t_answer", "legend", "table"),
    [
        (0.9996, "model (t_answer=0.9996)", "answer threshold 0.9996"),  # was t_answer=1.00, 1.000
        (0.919, "model (t_answer=0.919)", "answer threshold 0.919"),
        # the engine's "never" (engine.decide), as a build whose target no threshold met saves it
        (1.000000001, "model (never answers on confidence", "answer threshold never (target not met)"),
    ],
)
def test_eval_shows_the_answer_threshold_the_model_holds(
    model_copy: Path, tmp_path: Path, t_answer: float, legend: str, table: str
) -> None:
    import matplotlib

    with_threshold(model_copy, t_answer)
    queries = write_queries(tmp_path / "q.csv", EVAL_QUERIES)
    plot = tmp_path / "curve.svg"
    with matplotlib.rc_context({"svg.fonttype": "none"}):  # texts as <text>, not glyph paths
        result = invoke("eval", model_copy, queries, "--plot", plot)
    assert result.exit_code == 0, result.output
    assert table in flat(result.output)
    assert legend in svg_text(plot)
    assert "t_answer=1.00" not in svg_text(plot)


def test_threshold_text_tells_a_threshold_from_1_and_0() -> None:
    assert threshold_text(0.919) == "0.919"
    assert threshold_text(0.9996) == "0.9996"
    assert threshold_text(0.99999) == "0.99999"
    assert threshold_text(0.99949) == "0.999"  # below 1 at 3 decimals already
    assert threshold_text(1.0) == "1.000"
    assert threshold_text(0.0) == "0.000"
    assert threshold_text(0.0004) == "0.0004"
    assert float(threshold_text(1 - 1e-12)) < 1.0
    assert operating_point_label(None) == "model"
    assert operating_point_label(0.9996) == "model (t_answer=0.9996)"
    assert "never answers" in operating_point_label(1.000000001)


# --------------------------------------------------------------------------- broken query files


UNDECODABLE = "query,expected_id\n保修多久".encode() + b"\xff\xfe\x80\x81,\n"
BROKEN_QUERY_FILES: dict[str, tuple[bytes, tuple[str, ...]]] = {
    "missing-query-column": (
        "text,expected_id\n保修多久,warranty\n".encode(),
        ("row 1: no query column", "if column 'text' holds the customer messages, rename it query"),
    ),
    "blank-query": (
        "query,expected_id\n保修多久,warranty\n,invoice\n能开发票吗,invoice\n".encode(),
        ("row 3, column query: the query is blank", "delete the row"),
    ),
    "undecodable": (UNDECODABLE, ("could not detect the file encoding", "save it as UTF-8")),
    "unquoted-comma": (
        "query,expected_id\n保修多久,warranty\n你好,在吗,invoice\n".encode(),
        ("row 3: the row has 3 cells but the header has 2 columns", "'invoice'", "double quotes"),
    ),
    "expected-id-renamed": (
        "query,label\n保修多久,warranty\n".encode(),
        ("row 1: no expected_id column", "if column 'label' holds", "rename it expected_id"),
    ),
    "no-header": (
        "保修多久,warranty\n能开发票吗,invoice\n".encode(),
        ("row 1: no query column", "the first row must be the header query,expected_id"),
    ),
}


@pytest.mark.parametrize("command", ["eval", "calibrate", "report"])
@pytest.mark.parametrize("case", list(BROKEN_QUERY_FILES))
def test_a_broken_query_file_is_refused_naming_file_row_and_field(
    built: Built, tmp_path: Path, command: str, case: str
) -> None:
    """Was: an unquoted comma accepted silently, other problems without the column or the fix; now
    refused before the model is loaded, and nothing is written."""
    data, fragments = BROKEN_QUERY_FILES[case]
    queries = tmp_path / f"{case}.csv"
    queries.write_bytes(data)
    model_files = {p.name: p.read_bytes() for p in built.path.iterdir() if p.is_file()}
    out = tmp_path / "out"
    args: dict[str, list[Any]] = {
        "eval": ["--plot", out / "c.png", "--json", out / "r.json"],
        "calibrate": ["-o", out / "model"],
        "report": ["-o", out / "r.html", "--json", out / "r.json"],
    }
    result = invoke(command, built.path, queries, *args[command])
    assert_clean_failure(result, str(queries), *fragments)
    assert result.exit_code == 1
    assert not out.exists()
    assert {p.name: p.read_bytes() for p in built.path.iterdir() if p.is_file()} == model_files


def test_a_query_file_s_problems_are_listed_together(tmp_path: Path) -> None:
    path = tmp_path / "q.csv"
    path.write_text(
        "query,expected_id\n保修多久,warranty\n,invoice\n你好,在吗,invoice\n\n能开发票吗,invoice\n,x\n",
        encoding="utf-8",
    )
    with pytest.raises(QueryFileError) as err:
        read_labelled(path)
    assert [(i.row, i.column) for i in err.value.issues] == [(3, "query"), (4, None), (7, "query")]
    text = str(err.value)
    assert text.startswith(f"3 problems in the query file {path}:")
    assert f"{path} row 7, column query: the query is blank" in text


def test_a_query_file_with_only_its_header_or_nothing(tmp_path: Path) -> None:
    header = tmp_path / "header.csv"
    header.write_text("query,expected_id\n", encoding="utf-8")
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    with pytest.raises(QueryFileError, match=r"header\.csv: no queries: only the header row"):
        read_labelled(header)
    with pytest.raises(QueryFileError, match=r"empty\.csv: the file is empty"):
        read_labelled(empty)


def test_an_excel_error_is_not_a_query(tmp_path: Path) -> None:
    import openpyxl

    wb = openpyxl.Workbook()
    ws = wb.active
    assert ws is not None
    ws.append(["Query", "Expected_ID"])
    ws.append(["保修多久", 12])
    ws.append(["#N/A", "warranty"])
    wb.save(tmp_path / "q.xlsx")
    with pytest.raises(
        QueryFileError, match=r"q\.xlsx row 3, column Query: the cell holds the Excel error #N/A"
    ):
        read_labelled(tmp_path / "q.xlsx")
    ws.delete_rows(3)
    wb.save(tmp_path / "q.xlsx")
    assert read_labelled(tmp_path / "q.xlsx") == [(2, "保修多久", "12")]


def test_eval_missing_columns(built: Built, tmp_path: Path) -> None:
    queries = write_csv(tmp_path / "q.csv", ["text", "id"], [["保修多久", "warranty"]])
    assert_clean_failure(invoke("eval", built.path, queries), "q.csv", "query", "expected_id")


def test_eval_missing_query_file(built: Built, tmp_path: Path) -> None:
    assert_clean_failure(invoke("eval", built.path, tmp_path / "none.csv"), "none.csv", "not found")


def test_output_over_something_else_is_refused_and_left_alone(built: Built, tmp_path: Path) -> None:
    """`-o` replaces a model there, never a directory or file of something else (was: deleted)."""
    kb = write_kb(tmp_path / "kb.csv")
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "notes.txt").write_text("x", encoding="utf-8")
    afile = tmp_path / "afile"
    afile.write_text("keep me", encoding="utf-8")
    labelled = write_queries(tmp_path / "labelled.csv", labelled_rows())
    for result in (
        invoke("build", kb, "--fast", "-o", victim),
        invoke("build", kb, "--fast", "-o", afile),
        invoke("calibrate", built.path, labelled, "-o", victim),
    ):
        assert_clean_failure(result, "is not a Kefu model" if "victim" in result.output else "is a file")
        assert "choose another output path or remove it" in " ".join(result.output.split())
        assert result.exit_code == 1
    assert (victim / "notes.txt").read_text(encoding="utf-8") == "x"
    assert [p.name for p in victim.iterdir()] == ["notes.txt"]
    assert afile.read_text(encoding="utf-8") == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "kb.csv", "labelled.csv", "victim"]
    model = tmp_path / "model"
    assert invoke("build", kb, "--fast", "-o", model).exit_code == 0
    assert invoke("build", kb, "--fast", "-o", model).exit_code == 0  # a model there is replaced
    assert Matcher.load(model).entries


# --------------------------------------------------------------------------- calibrate


def labelled_rows() -> list[tuple[str, str]]:
    """KB questions, new phrasings and out-of-scope messages: enough (>= 50, both kinds) to recalibrate."""
    kb = [(q, eid) for eid, question, similar, *_ in KB_ROWS for q in [question, *similar.split("|")]]
    off_topic = ["今天天气怎么样", "讲个笑话", "你是机器人吗", "附近有什么好吃的", "股票会涨吗", "帮我订机票"]
    return kb + EVAL_QUERIES + [(text, "") for text in off_topic]


def test_calibrate_saves_new_thresholds(built: Built, tmp_path: Path) -> None:
    labelled = write_queries(tmp_path / "labelled.csv", labelled_rows())
    out = tmp_path / "recalibrated"
    result = invoke("calibrate", built.path, labelled, "-o", out, "--target-precision", "0.9")
    assert result.exit_code == 0, result.output
    assert "before" in result.output and "after" in result.output
    new = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    logs = new["info"]["calibration_logs"]
    assert logs["examples"] == len(labelled_rows())
    assert logs["target_precision"] == 0.9
    assert (new["policy"]["t_answer"], new["policy"]["t_clarify"]) == (logs["t_answer"], logs["t_clarify"])
    old = json.loads((built.path / "manifest.json").read_text(encoding="utf-8"))
    assert "calibration_logs" not in old["info"]  # -o leaves the source model alone


def test_calibrate_warns_when_the_labelled_messages_support_no_answer_threshold(
    built: Built, tmp_path: Path
) -> None:
    """A few dozen messages cannot show 99.9% precision with 80% confidence: the saved model would answer
    only verbatim questions, and the merchant is told so instead of reading it off a threshold."""
    labelled = write_queries(tmp_path / "labelled.csv", labelled_rows())
    out = tmp_path / "recalibrated"
    result = invoke("calibrate", built.path, labelled, "-o", out, "--target-precision", "0.999")
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())
    assert "never (target not met)" in output
    assert "no confidence level meets the target precision" in output


def test_calibrate_in_place(model_copy: Path, tmp_path: Path) -> None:
    labelled = write_queries(tmp_path / "labelled.csv", labelled_rows())
    result = invoke("calibrate", model_copy, labelled)
    assert result.exit_code == 0, result.output
    m = Matcher.load(model_copy)
    assert m.policy.t_answer == m.info["calibration_logs"]["t_answer"]


def test_calibrate_too_few_messages(built: Built, tmp_path: Path) -> None:
    labelled = write_queries(tmp_path / "few.csv", EVAL_QUERIES[:5])
    assert_clean_failure(invoke("calibrate", built.path, labelled), "cannot calibrate", "at least 50")


def test_calibrate_skips_and_reports_unknown_expected_ids(built: Built, tmp_path: Path) -> None:
    """An id the model does not know (deleted entry, another version's feedback) is listed, not fatal."""
    rows = [*labelled_rows(), ("保修多久", "no-such-entry"), ("能开发票吗", "gone")]
    labelled = write_queries(tmp_path / "bad.csv", rows)
    out = tmp_path / "recalibrated"
    result = invoke("calibrate", built.path, labelled, "-o", out)
    assert result.exit_code == 0, result.output
    first = len(labelled_rows()) + 2  # after the header row
    output = " ".join(result.output.split())
    assert f"skipped 2 rows of {labelled}" in output
    assert f"row {first} ('no-such-entry'), row {first + 1} ('gone')" in output
    logs = json.loads((out / "manifest.json").read_text(encoding="utf-8"))["info"]["calibration_logs"]
    assert logs["examples"] == len(labelled_rows())


# --------------------------------------------------------------------------- shell, match, serve


def test_shell_prints_decision_and_candidates(built: Built) -> None:
    result = invoke("shell", built.path, input="保修多久\nexit\n")
    assert result.exit_code == 0, result.output
    assert "answer" in result.output or "clarify" in result.output
    assert "warranty" in result.output
    assert "reason:" in result.output


def test_shell_ends_on_eof_and_handles_human_request(built: Built) -> None:
    result = invoke("shell", built.path, input="转人工\n")
    assert result.exit_code == 0, result.output
    assert "handoff" in result.output
    assert "human agent" in result.output


def test_match_prints_json(built: Built) -> None:
    result = invoke("match", built.path, "保修多久", "--top-k", "3")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["decision"] in {"answer", "clarify", "handoff"}
    assert data["entry_id"] == "warranty"
    assert data["candidates"][0]["entry_id"] == "warranty"
    assert len(data["candidates"]) == 3


@pytest.mark.parametrize("command", ["match", "shell", "eval", "calibrate"])
def test_bad_model_dir(command: str, tmp_path: Path) -> None:
    not_a_model = tmp_path / "empty"
    not_a_model.mkdir()
    queries = write_queries(tmp_path / "q.csv", EVAL_QUERIES)
    extras: dict[str, list[str | Path]] = {
        "match": ["hi"],
        "shell": [],
        "eval": [queries],
        "calibrate": [queries],
    }
    extra = extras[command]
    assert_clean_failure(invoke(command, not_a_model, *extra), "not a Kefu model")


def test_missing_model_dir(tmp_path: Path) -> None:
    assert_clean_failure(invoke("match", tmp_path / "gone", "hi"), "no model directory")


def test_damaged_model_dir(model_copy: Path) -> None:
    (model_copy / "row_ptr.npy").write_bytes(b"garbage")
    assert_clean_failure(invoke("match", model_copy, "保修多久"), "damaged")


def test_serve_passes_model_path_to_uvicorn(built: Built, monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    calls: list[tuple[str, dict[str, Any]]] = []
    monkeypatch.delenv("KEFU_MODEL_PATH", raising=False)  # restored after the test
    monkeypatch.setattr(uvicorn, "run", lambda target, **kw: calls.append((target, kw)))
    result = invoke("serve", "--model", built.path, "--host", "0.0.0.0", "--port", "9123")
    assert result.exit_code == 0, result.output
    assert calls == [("api.main:app", {"host": "0.0.0.0", "port": 9123})]
    assert os.environ["KEFU_MODEL_PATH"] == str(built.path.resolve())


def test_serve_refuses_missing_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda *a, **kw: pytest.fail("server started without a model"))
    assert_clean_failure(invoke("serve", "--model", tmp_path / "gone"), "no model directory")


# --------------------------------------------------------------------------- training.evaluate


def test_read_queries_encodings_and_out_of_scope(tmp_path: Path) -> None:
    rows = [("保修多久", "warranty"), ("今天天气怎么样", "")]
    for encoding in ("utf-8", "utf-8-sig", "gb18030"):
        path = write_csv(tmp_path / f"q-{encoding}.csv", ["query", "expected_id"], rows, encoding)
        assert read_queries(path) == [("保修多久", "warranty"), ("今天天气怎么样", None)]


def test_read_queries_names_blank_query_row(tmp_path: Path) -> None:
    path = write_queries(tmp_path / "q.csv", [("保修多久", "warranty"), ("", "invoice")])
    with pytest.raises(QueryFileError, match=r"q\.csv row 3, column query: the query is blank"):
        read_queries(path)


def test_read_queries_missing_column(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "q.csv", ["query"], [["保修多久"]])
    with pytest.raises(QueryFileError, match=r"q\.csv row 1: no expected_id column"):
        read_queries(path)


def test_evaluate_real_matcher_ranks_kb_questions_first(built: Built) -> None:
    m = Matcher.load(built.path)
    report = evaluate(m, [(question, entry_id) for entry_id, question, *_ in KB_ROWS])
    assert report.top1 == 1.0
    assert report.mrr == 1.0
    assert report.t_answer == m.policy.t_answer
    assert report.n_out_of_scope == 0 and report.oos_protected is None


class KnownResults:
    """Fixture of known results (not a matcher): fixed MatchResults, to check the metric arithmetic."""

    def __init__(self, results: dict[str, MatchResult]) -> None:
        self.results = results
        self.policy = SimpleNamespace(t_answer=0.8)

    def match(self, text: Any, top_k: int = 5) -> MatchResult:
        return self.results[text]


def known(decision: Decision, confidence: float, ranked: str) -> MatchResult:
    candidates = [Candidate(entry_id, entry_id, 1.0) for entry_id in ranked.split()]
    return MatchResult(decision, "fixture", confidence, candidates[0].entry_id, None, candidates)


@pytest.fixture
def known_report() -> Any:
    results = KnownResults(
        {
            "q1": known(Decision.ANSWER, 0.9, "A B C"),  # expected A: rank 1, answered right
            "q2": known(Decision.CLARIFY, 0.6, "A B C"),  # expected B: rank 2
            "q3": known(Decision.HANDOFF, 0.2, "A B D E F C"),  # expected C: rank 6 (beyond recall@5)
            "q4": known(Decision.ANSWER, 0.85, "A B"),  # out of scope, answered: wrong
            "q5": known(Decision.CLARIFY, 0.1, "A B"),  # out of scope, clarified (not answered: protected)
            "q6": known(Decision.ANSWER, 0.8, "A B"),  # expected D, not among candidates: rank 0
        }
    )
    queries = [("q1", "A"), ("q2", "B"), ("q3", "C"), ("q4", None), ("q5", None), ("q6", "D")]
    return evaluate(results, queries, top_k=10)


def test_evaluate_metric_arithmetic(known_report: Any) -> None:
    r = known_report
    assert (r.n_queries, r.n_in_scope, r.n_out_of_scope) == (6, 4, 2)
    assert r.top1 == pytest.approx(1 / 4)
    assert r.mrr == pytest.approx((1 + 1 / 2 + 1 / 6 + 0) / 4)
    assert r.recall_at_5 == pytest.approx(2 / 4)
    assert r.coverage == pytest.approx(3 / 6)
    assert r.answer_precision == pytest.approx(1 / 3)
    assert r.clarify_share == pytest.approx(2 / 6)
    assert r.handoff_share == pytest.approx(1 / 6)
    assert r.oos_protected == pytest.approx(1 / 2)
    assert r.pairs == [(0.9, True), (0.6, False), (0.2, False), (0.85, False), (0.1, False), (0.8, False)]
    assert r.t_answer == 0.8


def test_precision_coverage_curve(known_report: Any) -> None:
    thresholds, coverage, precision = precision_coverage_curve(known_report)
    np.testing.assert_allclose(thresholds, [0.9, 0.85, 0.8, 0.6, 0.2, 0.1])
    np.testing.assert_allclose(coverage, np.arange(1, 7) / 6)
    np.testing.assert_allclose(precision, [1, 1 / 2, 1 / 3, 1 / 4, 1 / 5, 1 / 6])


def test_curve_ties_answer_together() -> None:
    results = KnownResults({"a": known(Decision.ANSWER, 0.7, "A"), "b": known(Decision.ANSWER, 0.7, "A")})
    thresholds, coverage, precision = precision_coverage_curve(evaluate(results, [("a", "A"), ("b", "B")]))
    assert thresholds.tolist() == [0.7] and coverage.tolist() == [1.0] and precision.tolist() == [0.5]


def test_plot_and_to_dict(known_report: Any, tmp_path: Path) -> None:
    png = plot_precision_coverage(known_report, tmp_path / "sub" / "curve.png")
    assert png.read_bytes().startswith(PNG_SIGNATURE)
    data = json.loads(json.dumps(known_report.to_dict()))
    assert data["mrr"] == pytest.approx(known_report.mrr)
    assert [q["correct"] for q in data["queries"]] == [True, False, False, False, False, False]
    assert data["queries"][2]["rank"] == 6


def test_evaluate_refuses_no_queries() -> None:
    with pytest.raises(ValueError, match="no queries"):
        evaluate(KnownResults({}), [])
