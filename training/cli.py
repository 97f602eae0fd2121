"""The `kefu` command line: build, evaluate, calibrate and try out models, and serve the API.

User mistakes (a missing file, a bad KB, a model directory that is not a model, unusable labelled data)
end with a one-line `error:` message (a bad KB lists every issue) and exit code 1, never a traceback.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn

import numpy as np
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from engine.artifacts import ModelLoadError, check_destination, read_manifest
from engine.build import recalibrate
from engine.kb import KBEntry, KBIssue, KBTooLarge, KBValidationError, ReadLimits, load_kb
from engine.matcher import Matcher
from engine.results import Decision, MatchResult
from training.evaluate import (
    EvalReport,
    QueryFileError,
    evaluate,
    plot_precision_coverage,
    read_labelled,
    read_queries,
    split_known,
    threshold_cell,
    unknown_ids_message,
)
from training.plots import PLOT_FORMATS, check_plot_path

app = typer.Typer(
    help="Kefu: FAQ intent matching for JD merchants' customer service.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)

STAGES = {
    "tokenize": "tokenizing questions",
    "embed": "embedding questions",
    "classifier": "training the entry classifier",
    "calibrate": "calibrating on held-out questions",
    "done": "done",
}
DECISION_STYLE = {
    Decision.ANSWER: "bold green",
    Decision.CLARIFY: "bold yellow",
    Decision.HANDOFF: "bold red",
    Decision.SMALLTALK: "bold cyan",
}
EXIT_WORDS = frozenset({"exit", "quit"})
KB_LIMITS = ReadLimits()  # what `kefu build` reads of a KB file by default, as the service does


# --------------------------------------------------------------------------- helpers


def _fail(message: str) -> NoReturn:
    """Print a user error without a traceback and exit non-zero."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    raise typer.Exit(1)


@contextmanager
def _user_errors() -> Iterator[None]:
    """Turn the errors a user can cause (and fix) into clear messages."""
    try:
        yield
    except KBValidationError as e:
        count = f"{len(e.issues)} problem{'' if len(e.issues) == 1 else 's'}"
        _fail("\n  ".join([f"{count} in the knowledge base:", *map(str, e.issues)]))
    except (ModelLoadError, QueryFileError) as e:
        _fail(str(e))
    except KBTooLarge as e:
        _fail(f"{e}; see --max-rows, --max-cells, --max-inflated-mb")
    except FileNotFoundError as e:
        _fail(f"file not found: {e.filename or e}")
    except OSError as e:
        _fail(f"{e.strerror or e}: {e.filename}" if e.filename else str(e))


def _load_model(path: Path) -> Matcher:
    with _user_errors(), console.status(f"loading model {path}"):
        return Matcher.load(path)


def _load_queries(path: Path) -> list[tuple[str, str | None]]:
    with _user_errors():
        return read_queries(path)


def _skip_unknown(
    m: Matcher, rows: list[tuple[int, str, str | None]], source: Path
) -> list[tuple[str, str | None]]:
    """The (query, expected_id) pairs the model can be scored on; rows whose expected_id is not an entry
    of its KB (deleted since, a typo, another version's feedback) are skipped with a warning naming them."""
    pairs, unknown = split_known(rows, {e.id for e in m.entries})
    if unknown:
        err_console.print(
            f"[yellow]warning:[/] {escape(unknown_ids_message(unknown, str(source)))}", soft_wrap=True
        )
    return pairs


def _read_labelled(path: Path) -> list[tuple[int, str, str | None]]:
    """The (row, query, expected_id) of a labelled file; a file with any problem ends the command with
    every problem listed (file, row, column), before anything is loaded or written."""
    with _user_errors():
        return read_labelled(path)


def _known_pairs(
    m: Matcher, rows: list[tuple[int, str, str | None]], path: Path, max_queries: int | None
) -> list[tuple[str, str | None]]:
    """The first `max_queries` labelled queries of `path`, without those the model cannot score."""
    pairs = _skip_unknown(m, rows[:max_queries], path)
    if not pairs:
        _fail(f"no query of {path} can be scored: every expected_id is unknown to the model's KB")
    return pairs


def _check_precision(value: float | None) -> None:
    if value is not None and not 0.0 < value <= 1.0:
        _fail(f"--target-precision must be in (0, 1], got {value}")


def _progress() -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        console=console,
    )


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:.1%}"


def _check_plot(option: str, path: Path | None) -> None:
    """Refuse a plot file whose suffix names no supported format, before any work."""
    if path is not None and (problem := check_plot_path(option, path)):
        _fail(problem)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _write_json(data: Any, path: Path) -> None:
    with _user_errors():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            json.dumps(data, ensure_ascii=False, indent=2, default=_json_default), encoding="utf-8"
        )


# --------------------------------------------------------------------------- build


@app.command()
def build(
    kb: Annotated[Path, typer.Argument(help="Knowledge base: .csv, .xlsx, .json or .jsonl")],
    output: Annotated[
        Path | None,
        typer.Option(
            "-o",
            "--output",
            help="Model directory (default: models/<KB name>); a Kefu model already there is replaced, "
            "anything else is refused",
        ),
    ] = None,
    fast: Annotated[
        bool,
        typer.Option("--fast", "--no-dense", help="Skip the embedding channel: quick build, lower recall"),
    ] = False,
    target_precision: Annotated[
        float, typer.Option(help="Precision the answer threshold must reach on held-out questions")
    ] = 0.95,
    max_rows: Annotated[
        int | None, typer.Option(help="Refuse a KB file with more rows")
    ] = KB_LIMITS.max_rows,
    max_cells: Annotated[
        int | None, typer.Option(help="Refuse a KB file with more cells")
    ] = KB_LIMITS.max_cells,
    max_inflated_mb: Annotated[
        float, typer.Option(help="Refuse a KB file larger than this once decompressed (.xlsx) or read")
    ] = (KB_LIMITS.max_inflated_bytes or 0) / 2**20,
) -> None:
    """Validate a KB, fit a model on it and save the model directory."""
    _check_precision(target_precision)
    out = output or Path("models") / kb.stem
    limits = ReadLimits(max_rows, max_cells, int(max_inflated_mb * 2**20))
    with _user_errors():
        if not kb.is_file():
            raise FileNotFoundError(2, "not found", str(kb))
        check_destination(out)  # refused before the build, not after it
        # validated before the progress bar starts, so issues print cleanly
        try:
            entries = load_kb(kb, limits=limits)
        except KBValidationError as e:
            _print_kb_warnings(e.warnings)  # e.g. which sheet the row numbers are of
            raise
    _print_kb_warnings(entries.warnings)
    try:
        m = _build_with_progress(entries, dense=not fast, target_precision=target_precision)
    except ValueError as e:  # the engine's way of refusing a KB it cannot fit (e.g. far too small)
        _fail(f"could not build a model from {kb}: {e}")
    with _user_errors(), console.status(f"saving model to {out}"):
        saved = m.save(out)
    _print_build_summary(m, kb, saved)


def _print_kb_warnings(warnings: list[KBIssue]) -> None:
    """What loaded but deserves a look (ignored columns, hidden rows, dropped paraphrases ...)."""
    for warning in warnings:
        console.print(f"[bold yellow]warning:[/] {escape(str(warning))}", soft_wrap=True)


def _build_with_progress(entries: list[KBEntry], *, dense: bool, target_precision: float) -> Matcher:
    with _progress() as bar:
        task = bar.add_task("preparing", total=1.0)

        def report(stage: str, fraction: float) -> None:
            bar.update(task, completed=fraction, description=STAGES.get(stage, stage))

        return Matcher.build(entries, dense=dense, target_precision=target_precision, progress=report)


def _channels(info: dict[str, Any]) -> str:
    parts = [f"sparse ({info.get('tokenizer')})"]
    if info.get("dense"):
        emb = info.get("embedder") or {}
        parts.append(f"dense ({emb.get('model', emb.get('backend', '?'))}, {info.get('dense_index')} index)")
    if info.get("classifier"):
        parts.append("classifier")
    return " + ".join(parts)


def _interval(cal: dict[str, Any]) -> str:
    iv = cal.get("answer_precision_interval_90")
    return f" (90% interval {_pct(iv[0])} - {_pct(iv[1])})" if iv else ""


def _cascade(info: dict[str, Any], cal: dict[str, Any]) -> str:
    """The cascade's learned rule in a line (engine.cascade; used with KEFU_CASCADE / match(cascade=))."""
    if not info.get("dense"):
        return "n/a (no dense channel)"
    c = cal.get("cascade")
    if not c:
        return "none: the sparse and classifier channels never decide alone on this KB"
    return (
        f"answers alone from confidence {c['t_skip']:.3f}: {_pct(c['skip_share'])} of CV examples, "
        f"precision {_pct(c['skip_precision'])}, same answer as the full model {_pct(c['skip_agreement'])}"
    )


def _print_build_summary(m: Matcher, kb: Path, saved: Path) -> None:
    info = m.info
    cal: dict[str, Any] = info.get("calibration", {})
    table = Table(title="Model built", show_header=False)
    table.add_column("", style="bold")
    table.add_column("")
    rows = [
        ("knowledge base", str(kb)),
        ("entries", str(info.get("entries"))),
        ("question rows", str(info.get("rows"))),
        ("channels", _channels(info)),
        ("fusion weights", f"{cal.get('fusion')} {[round(w, 3) for w in cal.get('ranker_weights', [])]}"),
        ("answer threshold", threshold_cell(cal.get("t_answer"))),
        ("clarify threshold", threshold_cell(cal.get("t_clarify"))),
        ("target precision", _pct(info.get("target_precision"))),
        (
            "CV examples",
            f"{cal.get('examples_in_scope')} in scope, {cal.get('examples_out_of_scope')} out of scope",
        ),
        ("CV top-1 (in scope)", _pct(cal.get("cv_top1_in_scope"))),
        ("CV answer precision", _pct(cal.get("cv_answer_precision")) + _interval(cal)),
        ("CV answer coverage", _pct(cal.get("cv_answer_coverage"))),
        ("dense-skip cascade", _cascade(info, cal)),
        ("build seconds", f"{info.get('build_seconds', 0.0):.1f}"),
        ("saved to", str(saved)),
    ]
    for key, value in rows:
        table.add_row(key, escape(value))
    console.print(table)
    if cal.get("synthetic_paraphrases"):
        console.print(
            "[yellow]note:[/] few paraphrases in the KB; calibration used word-dropped copies instead"
        )
    if (cal.get("t_answer") or 0.0) > 1.0:
        console.print(
            "[yellow]warning:[/] no confidence level reached the target precision with the threshold's "
            "confidence on these calibration examples: this model answers only a KB question asked word for "
            "word and offers the closest questions otherwise. Add similar questions to the KB, calibrate on "
            "labelled messages (kefu calibrate) or lower --target-precision."
        )


# --------------------------------------------------------------------------- eval


@app.command("eval")
def eval_command(
    model: Annotated[Path, typer.Argument(help="Model directory")],
    queries: Annotated[
        Path, typer.Argument(help="CSV with columns query,expected_id (empty id: out of scope)")
    ],
    plot: Annotated[
        Path | None,
        typer.Option(
            help="Write the precision/coverage plot to this file, in the format of its suffix "
            f"({', '.join(PLOT_FORMATS)}); without it no plot is written"
        ),
    ] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the full report as JSON")] = None,
    max_queries: Annotated[int | None, typer.Option(help="Evaluate only the first N queries")] = None,
    top_k: Annotated[int, typer.Option(help="Candidates per query for MRR (at least 5)")] = 10,
    peers: Annotated[
        bool, typer.Option("--peers", help="Also score char TF-IDF, bm25s and e5-small on the same queries")
    ] = False,
    peer: Annotated[
        list[str] | None, typer.Option("--peer", help="With --peers: only these (repeat the option)")
    ] = None,
) -> None:
    """Score a model on labelled queries: ranking, decisions, latency, and a precision/coverage plot
    with --plot (only then)."""
    from training.peers import PEERS

    if max_queries is not None and max_queries < 1:
        _fail(f"--max-queries must be at least 1, got {max_queries}")
    unknown = [p for p in peer or [] if p not in PEERS]
    if unknown:
        _fail(f"unknown --peer {', '.join(unknown)} (known: {', '.join(PEERS)})")
    _check_plot("--plot", plot)
    rows = _read_labelled(queries)  # a bad file fails before the model is loaded
    m = _load_model(model)
    pairs = _known_pairs(m, rows, queries, max_queries)
    report = _evaluate_with_progress(m, pairs, top_k)
    _print_eval(report, model, queries)
    doc = report.to_dict()
    if peers or peer:
        doc["peers"] = _print_peers(m, report, pairs, peer or list(PEERS), top_k)
    if plot is not None:
        with _user_errors():
            plot_precision_coverage(report, plot)
        console.print(f"plot: {escape(str(plot))}")
    if json_out is not None:
        _write_json(doc, json_out)
        console.print(f"report: {escape(str(json_out))}")


def _print_peers(
    m: Matcher, report: EvalReport, pairs: list[tuple[str, str | None]], names: list[str], top_k: int
) -> list[dict[str, Any]]:
    """The peers on the model's KB and the same in-scope queries, in a table beside Kefu's figures."""
    from training.peers import peer_figures

    index = {e.id: i for i, e in enumerate(m.entries)}
    scoped = [(q, index[e]) for q, e in pairs if e is not None and e in index]
    with console.status(f"scoring {len(names)} peer(s) on {len(scoped)} in-scope queries"):
        gold = np.array([g for _, g in scoped], int)
        figures = peer_figures(m.row_texts, m.row_ptr, [q for q, _ in scoped], gold, names, top_k)
    table = Table(title="Kefu and peers on the same in-scope queries")
    for col in ("matcher", "top-1", f"MRR@{top_k}", "recall@5", ""):
        table.add_column(col, justify="left" if col in ("matcher", "") else "right")
    mrr = "—" if report.mrr is None else f"{report.mrr:.3f}"
    table.add_row("kefu", _pct(report.top1), mrr, _pct(report.recall_at_5), "")
    for f in figures:
        peer_mrr = "—" if f.mrr is None else f"{f.mrr:.3f}"
        table.add_row(f.name, _pct(f.top1), peer_mrr, _pct(f.recall_at_5), escape(f.note))
    console.print(table)
    return [f.to_dict() for f in figures]


def _evaluate_with_progress(m: Matcher, pairs: list[tuple[str, str | None]], top_k: int) -> EvalReport:
    with _progress() as bar:
        task = bar.add_task("matching queries", total=len(pairs))

        def report(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        return evaluate(m, pairs, top_k=top_k, progress=report)


def _print_eval(report: EvalReport, model: Path, queries: Path) -> None:
    table = Table(title=f"{model.name} on {queries.name}", show_header=False)
    table.add_column("", style="bold")
    table.add_column("", justify="right")
    rows = [
        (
            "queries",
            f"{report.n_queries} ({report.n_in_scope} in scope, {report.n_out_of_scope} out of scope)",
        ),
        ("top-1 accuracy (in scope)", _pct(report.top1)),
        (f"MRR@{report.top_k} (in scope)", "—" if report.mrr is None else f"{report.mrr:.3f}"),
        ("recall@5 (in scope)", _pct(report.recall_at_5)),
        ("answered (coverage)", _pct(report.coverage)),
        ("answer precision", _pct(report.answer_precision)),
        ("clarify", _pct(report.clarify_share)),
        ("handoff", _pct(report.handoff_share)),
        ("out of scope not answered", _pct(report.oos_protected)),
        ("latency p50 / p99", f"{report.latency_p50_ms:.1f} / {report.latency_p99_ms:.1f} ms"),
        ("answer threshold", threshold_cell(report.t_answer)),
    ]
    for key, value in rows:
        table.add_row(key, value)
    console.print(table)


# --------------------------------------------------------------------------- calibrate


# --------------------------------------------------------------------------- report


@app.command("report")
def report_command(
    model: Annotated[Path | None, typer.Argument(help="Model directory")] = None,
    queries: Annotated[
        Path | None, typer.Argument(help="CSV with columns query,expected_id (empty id: out of scope)")
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "-o",
            "--output",
            help="HTML file (default: reports/<MODEL name>-report-<QUERIES name>.html, or "
            "reports/<SHOP>-traffic.html)",
        ),
    ] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the figures as JSON")] = None,
    max_queries: Annotated[int | None, typer.Option(help="Report on the first N queries only")] = None,
    top_k: Annotated[int, typer.Option(help="Candidates per query for MRR (at least 5)")] = 10,
    traffic_url: Annotated[
        str | None,
        typer.Option(help="Add a shop's logged traffic, from the Kefu service at this URL (with --shop)"),
    ] = None,
    shop: Annotated[str | None, typer.Option(help="The shop whose traffic is reported")] = None,
    api_key: Annotated[
        str | None, typer.Option(envvar="KEFU_API_KEY", help="The shop's API key", show_default=False)
    ] = None,
    since: Annotated[
        datetime | None, typer.Option(help="Traffic from (Beijing time; default: until - 7 days)")
    ] = None,
    until: Annotated[datetime | None, typer.Option(help="Traffic to, excluded (default: now)")] = None,
    bucket: Annotated[
        str | None, typer.Option(help="Traffic per hour or day (default: hours up to 3 days)")
    ] = None,
) -> None:
    """One self-contained HTML report (opens offline): for a model on labelled queries (promise vs
    delivery, ranking, precision/coverage, calibration, decisions, confusions), for a shop's logged
    traffic over a period (--traffic-url, --shop, --api-key), or both."""
    from training.report import build_document, matcher_figures, model_figures, write_report

    if model is None and traffic_url is None:
        _fail("give MODEL and QUERIES, or --traffic-url with --shop (or both)")
    if model is not None and queries is None:
        _fail("QUERIES is required with MODEL: the labelled set the model is scored on")
    if traffic_url is not None and not (shop and api_key):
        _fail("--traffic-url needs --shop and --api-key (or $KEFU_API_KEY)")
    if traffic_url is None and (shop or since or until or bucket):
        _fail("--shop, --since, --until and --bucket report traffic: give --traffic-url too")
    if bucket is not None and bucket not in ("hour", "day"):
        _fail(f"--bucket must be hour or day, got {bucket!r}")
    if max_queries is not None and max_queries < 1:
        _fail(f"--max-queries must be at least 1, got {max_queries}")
    model_doc = labelled = traffic = None
    if model is not None and queries is not None:
        rows = _read_labelled(queries)  # a bad file fails before the model is loaded
        m = _load_model(model)
        pairs = _known_pairs(m, rows, queries, max_queries)
        report = _evaluate_with_progress(m, pairs, top_k)
        labelled = matcher_figures(m, report, queries.name)
        model_doc = model_figures(m.info, m.policy, model)
    if traffic_url is not None:
        traffic = _fetch_traffic(traffic_url, str(shop), str(api_key), since, until, bucket)
    document = build_document(model_doc, labelled, traffic)
    if output is not None:
        html = output
    elif model is not None and queries is not None:
        html = Path("reports") / f"{model.name}-report-{queries.stem}.html"
    else:
        html = Path("reports") / f"{shop}-traffic.html"
    with _user_errors(), console.status(f"writing {html}"):
        write_report(document, html, json_out)
    if labelled is not None:
        _print_report(document)
    if traffic is not None:
        _print_traffic(traffic)
    console.print(f"report: {escape(str(html))}")
    if json_out is not None:
        console.print(f"figures: {escape(str(json_out))}")


def _fetch_traffic(
    url: str, shop: str, api_key: str, since: datetime | None, until: datetime | None, bucket: str | None
) -> dict[str, Any]:
    from training.traffic import TrafficFetchError, fetch_traffic

    try:
        with console.status(f"fetching the traffic of shop {shop} from {url}"):
            return fetch_traffic(url, shop, api_key, since, until, bucket)
    except TrafficFetchError as e:
        _fail(str(e))


def _print_traffic(traffic: dict[str, Any]) -> None:
    """The traffic section's headline figures, as the HTML shows them."""
    t, lat = traffic["totals"], traffic["latency_ms"]
    table = Table(title=f"traffic: shop {escape(traffic['shop'])}, {traffic['since']} to {traffic['until']}")
    table.add_column("", style="bold")
    table.add_column("", justify="right")
    reasons = ", ".join(f"{r['code']} {r['count']}" for r in traffic["handoff_reasons"][:4])
    rows = [
        ("messages", f"{t['messages']} in {t['conversations']} conversations"),
        ("questions (small talk apart)", str(t["questions"])),
        ("answered", f"{_pct(t['answer_rate'])} ({t['answer']})"),
        ("clarified", f"{_pct(t['clarify_rate'])} ({t['clarify']})"),
        ("handed off", f"{_pct(t['handoff_rate'])} ({t['handoff']})" + (f": {reasons}" if reasons else "")),
        ("small talk", f"{_pct(t['smalltalk_share'])} ({t['smalltalk']})"),
        ("latency p50 / p95 / p99", " / ".join(_ms(lat[p]) for p in ("p50", "p95", "p99"))),
        ("JD ratings", str(traffic["ratings"]["ratings"])),
    ]
    for key, value in rows:
        table.add_row(key, escape(value))
    console.print(table)


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f} ms"


def _print_report(document: dict[str, Any]) -> None:
    """The headline figures of the report, as the HTML shows them."""
    model, labelled = document["model"], document["labelled"]
    promise, delivered, ranking = model["promise"], labelled["delivered"], labelled["ranking"]
    table = Table(title=f"report: {escape(model['path'])} on {escape(labelled['queries_file'])}")
    table.add_column("", style="bold")
    table.add_column("promised", justify="right")
    table.add_column("delivered", justify="right")
    iv = delivered["precision_interval_90"]
    rows = [
        (
            "queries",
            "",
            f"{ranking['n_queries']} ({ranking['n_in_scope']} in scope, {ranking['n_out_of_scope']} out)",
        ),
        ("top-1 (in scope)", _pct(promise["top1_in_scope"]), _pct(ranking["top1"])),
        (f"MRR@{ranking['mrr_at']}", "", "—" if ranking["mrr"] is None else f"{ranking['mrr']:.3f}"),
        ("recall@5", "", _pct(ranking["recall_at_5"])),
        ("answered", _pct(promise["answer_coverage"]), _pct(delivered["coverage"])),
        (
            "answer precision",
            f"{_pct(promise['target_precision'])} target" + _interval(promise),
            _pct(delivered["precision"]) + (f" (90% {_pct(iv[0])} - {_pct(iv[1])})" if iv else ""),
        ),
        ("calibration error (ECE)", "", f"{labelled['reliability']['ece']:.3f}"),
        ("answer threshold", threshold_cell(model["t_answer"]), ""),
    ]
    for key, promised, got in rows:
        table.add_row(key, escape(promised), escape(got))
    console.print(table)
    unknown = labelled["unknown_expected_ids"]
    if unknown:
        console.print(
            f"[yellow]warning:[/] {len(unknown)} expected id(s) are not entries of this model: "
            + escape(", ".join(unknown[:10]))
        )


@app.command("eval-conversations")
def eval_conversations(
    conversations: Annotated[
        Path, typer.Argument(help="conversation set (.jsonl), e.g. models/demo-conversations.jsonl")
    ],
    kb: Annotated[Path, typer.Option(help="the shop's KB, published in a temporary service")] = Path(
        "models/demo-shop-kb-orders.csv"
    ),
    catalog: Annotated[Path | None, typer.Option(help="the shop's product catalog (CSV/XLSX)")] = Path(
        "models/demo-catalog.csv"
    ),
    dense: Annotated[bool, typer.Option(help="default channels (on) or the fast profile")] = True,
    jos: Annotated[
        bool, typer.Option(help="answer order questions from the sandbox's fake JOS gateway (made-up orders)")
    ] = True,
    show_wrong: Annotated[bool, typer.Option(help="list every wrong or unresolved turn")] = False,
    json_out: Annotated[Path | None, typer.Option("--json", help="also write the figures as JSON")] = None,
) -> None:
    """Whole conversations through the service: handoff rate, right answers and wrong answers per category."""
    from training.conversations import (
        ConversationFileError,
        evaluate_with_service,
        load_conversations,
        summarize,
    )

    with _user_errors():
        try:
            convs = load_conversations(conversations)
        except ConversationFileError as e:
            _fail(str(e))
        with console.status("publishing the KB and running the conversations"):
            outcomes = evaluate_with_service(convs, kb, catalog=catalog, dense=dense, jos=jos)
    figures = summarize(outcomes)
    table = Table("category", "turns", "right", "handoff", "wrong")
    for name, f in figures.items():
        table.add_row(name, str(f.turns), _pct(f.right_rate), _pct(f.handoff_rate), str(f.wrong))
    console.print(table)
    if show_wrong:
        for o in outcomes:
            if o.verdict != "right":
                style = "red" if o.verdict == "wrong" else "yellow"
                got = f"{o.kind} {o.entry_id or ''} {o.why}"
                console.print(
                    f"[{style}]{o.verdict}[/] {escape(o.conversation)}#{o.turn} [{escape(o.category)}] "
                    f"{escape(o.text)!r}: expected {o.expect}, got {escape(got)}"
                )
    if json_out:
        _write_json(
            {
                "figures": {
                    k: {**vars(v), "right_rate": v.right_rate, "handoff_rate": v.handoff_rate}
                    for k, v in figures.items()
                },
                "turns": [vars(o) for o in outcomes],
            },
            json_out,
        )


@app.command()
def calibrate(
    model: Annotated[Path, typer.Argument(help="Model directory")],
    labelled: Annotated[
        Path, typer.Argument(help="CSV with columns query,expected_id (empty id: out of scope)")
    ],
    target_precision: Annotated[
        float | None, typer.Option(help="Answer precision to reach (default: the model's build target)")
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "-o",
            "--output",
            help="Save here (default: in place); a Kefu model already there is replaced, anything else "
            "is refused",
        ),
    ] = None,
) -> None:
    """Refit confidence and thresholds on labelled real messages and save the model.

    Rows whose expected_id the model's KB does not have (an entry deleted since, or feedback for another
    version) are listed and skipped: they cannot be scored, and the rest is still worth using.
    """
    _check_precision(target_precision)
    rows = _read_labelled(labelled)  # a bad file fails before the model is loaded
    m = _load_model(model)
    pairs = _skip_unknown(m, rows, labelled)
    out = output or model
    with _user_errors():
        check_destination(out)  # refused before the work, not after it
    texts, expected = [q for q, _ in pairs], [e for _, e in pairs]
    before = (m.policy.t_answer, m.policy.t_clarify)
    try:
        with console.status("recalibrating"):
            report = recalibrate(m, texts, expected, target_precision=target_precision)
    except ValueError as e:
        _fail(f"cannot calibrate on {labelled}: {e}")
    with _user_errors(), console.status(f"saving model to {out}"):
        saved = m.save(out)
    _print_calibration(before, report, saved)


def _print_calibration(before: tuple[float, float], report: dict[str, Any], saved: Path) -> None:
    table = Table(title="Thresholds")
    table.add_column("threshold", style="bold")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    table.add_row("answer", threshold_cell(before[0]), threshold_cell(report["t_answer"]))
    table.add_row("clarify", threshold_cell(before[1]), threshold_cell(report["t_clarify"]))
    console.print(table)
    console.print(
        f"{report['examples']} labelled messages used; on them: answer precision "
        f"{_pct(report['answer_precision'])}{_interval(report)}, coverage {_pct(report['answer_coverage'])} "
        f"(target {_pct(report['target_precision'])}; {report.get('threshold_rule', '')})"
    )
    if report["t_answer"] > 1.0:
        console.print(
            "[yellow]warning:[/] on these labelled messages no confidence level meets the target precision "
            "with the threshold's confidence: the saved model answers only KB questions asked word for word "
            "and offers the closest questions otherwise. Keep the previous model, label more messages or "
            "lower --target-precision."
        )
    console.print(f"saved to {escape(str(saved))}")


# --------------------------------------------------------------------------- shell and match


@app.command()
def mine(
    model: Annotated[Path | None, typer.Argument(help="Model directory (not with --evaluate)")] = None,
    messages: Annotated[
        Path | None,
        typer.Argument(
            help="Messages the bot did not answer: CSV/XLSX/JSON with a text column (and optionally "
            "created_at: times without an offset are UTC, as the service logs them)"
        ),
    ] = None,
    output: Annotated[
        Path, typer.Option("-o", "--output", help="Proposals, .csv or .xlsx, in the KB's columns")
    ] = Path("proposals.csv"),
    evaluate_on: Annotated[
        Path | None,
        typer.Option(
            "--evaluate", help="Measure mining on a labelled set (a directory with kb.csv, queries.csv)"
        ),
    ] = None,
    dense: Annotated[bool, typer.Option(help="With --evaluate: default channels (slower) or sparse")] = False,
    max_queries: Annotated[int, typer.Option(help="With --evaluate: first N queries of the set")] = 3000,
) -> None:
    """Cluster what the bot could not answer and propose new entries or paraphrases, in the KB's format.

    With --evaluate DATA: hide a fifth of the set's entries, send their queries with the rest as traffic,
    mine what was not answered, add the proposals back and print what came back and what it gained.
    """
    from training.mining import (
        MessageFileError,
        evaluate_mining,
        mine,
        proposal_rows,
        read_messages,
        write_proposals,
    )

    if evaluate_on is not None:
        with _user_errors():
            entries = load_kb(evaluate_on / "kb.csv")
            queries = read_queries(evaluate_on / "queries.csv")[:max_queries]
        with console.status("hiding entries, mining the traffic, rebuilding"):
            f = evaluate_mining(entries, queries, dense=dense)
        console.print(
            f"{evaluate_on.name}: {f.recovered}/{f.hidden} hidden entries recovered as clusters; "
            f"{f.clusters} clusters, purity {f.purity:.3f}, from {f.mined_messages} unanswered messages"
        )
        table = Table("held-out queries", "top-1", "answered", "precision", "coverage at 0.9 precision")
        for name, figs in (
            ("KB without the hidden entries", f.before),
            ("with the proposals added", f.after),
        ):
            table.add_row(
                name,
                _pct(figs["top1"]),
                _pct(figs["answered"]),
                _pct(figs["precision"]),
                _pct(figs["coverage_at_0.9"]),
            )
        console.print(table)
        return
    if model is None or messages is None:
        _fail("give a model directory and a message file, or --evaluate DATA")
    m = _load_model(model)
    try:
        msgs = read_messages(messages)
    except MessageFileError as e:
        _fail(str(e))
    if msgs.note:
        console.print(escape(msgs.note), soft_wrap=True)
    with console.status(f"clustering {len(msgs)} messages"):
        proposals = mine(m, msgs)
    with _user_errors():
        saved = write_proposals(proposal_rows(proposals, m.entries), output)
    new = sum(p.kind == "new_entry" for p in proposals)
    console.print(
        f"{len(proposals)} clusters from {len(msgs)} messages: {new} new entries, "
        f"{len(proposals) - new} paraphrase sets; written to {escape(str(saved))} "
        "(last_seen in Beijing time, +08:00; write the new entries' answers, then merge the rows into "
        "the KB and upload it)"
    )


@app.command()
def coldstart(
    chats: Annotated[
        Path, typer.Argument(help="Chat history, JSONL as jingdong.im.pop.chatlog.get lists it")
    ],
    kb: Annotated[
        Path | None, typer.Option(help="The shop's KB, if it has one (paraphrases, labels)")
    ] = None,
    output: Annotated[
        Path, typer.Option("-o", "--output", help="Proposals, .csv or .xlsx, in the KB's columns")
    ] = Path("coldstart.csv"),
    labelled: Annotated[
        Path | None, typer.Option(help="Also write labelled traffic (query,expected_id) for kefu calibrate")
    ] = None,
    evaluate_it: Annotated[
        bool,
        typer.Option("--evaluate", help="Measure it against --kb: entries recovered, coverage calibrated"),
    ] = False,
) -> None:
    """A first KB (or paraphrases and labelled traffic for an existing one) from a shop's chat history."""
    import csv

    from engine.coldstart import cold_start
    from training.coldstart import ChatFileError, chat_pairs, evaluate_cold_start, read_chat_records
    from training.mining import write_proposals

    try:
        records = read_chat_records(chats)
    except ChatFileError as e:
        _fail(str(e))
    entries: list[KBEntry] = []
    if kb is not None:
        with _user_errors():
            entries = load_kb(kb)
    if evaluate_it:
        if not entries:
            _fail("--evaluate needs --kb: the KB the chats are measured against")
        with console.status("grouping the chats, calibrating on half the sessions"):
            f = evaluate_cold_start(records, entries)
        console.print(
            f"{f['customer_turns_with_replies']} customer turns with agents' replies; a shop without a KB "
            f"gets {f['first_kb']['new_entries']} proposed entries back, recovering {f['recovered']} of the "
            f"{f['entries_answered_in_chats']} KB entries the agents answered "
            f"({f['recovered_of_asked_two_ways']} of the {f['entries_asked_two_ways']} asked in two ways "
            f"or more; {f['kb_entries']} in the KB)"
        )
        table = Table("held-out sessions", "answered", "precision", "out of scope protected")
        for name, key in (
            ("model as built", "before"),
            (f"after calibrating on {f['labelled_calibrate']}", "after"),
        ):
            g = f[key]
            table.add_row(name, _pct(g["answered"]), _pct(g["precision"]), _pct(g["out_of_scope_protected"]))
        console.print(table)
        return
    result = cold_start([(q, a) for _, q, a in chat_pairs(records)], entries)
    with _user_errors():
        saved = write_proposals(result.rows, output)
        if labelled is not None:
            with labelled.open("w", encoding="utf-8-sig", newline="") as fh:
                writer = csv.writer(fh)
                writer.writerow(["query", "expected_id"])
                writer.writerows([(q, e or "") for q, e in result.labelled])
    fig = result.figures
    console.print(
        f"{fig['pairs_used']} of {fig['pairs']} customer turns used: {fig['new_entries']} proposed entries, "
        f"{fig['paraphrase_sets']} paraphrase sets -> {escape(str(saved))}"
        + (f"; {len(result.labelled)} labelled -> {escape(str(labelled))}" if labelled is not None else "")
    )


@app.command()
def shell(
    model: Annotated[Path, typer.Argument(help="Model directory")],
    top_k: Annotated[int, typer.Option(help="Candidates to show")] = 5,
) -> None:
    """Type customer messages and see what the model would do ('exit', 'quit' or Ctrl-D to leave)."""
    m = _load_model(model)
    console.print(f"{m!r} — type a message; 'exit', 'quit' or Ctrl-D to leave.")
    _repl(lambda text: _show_result(m.match(text, top_k=top_k)))


def _repl(handle: Callable[[str], None]) -> None:
    while True:
        try:
            line = input("kefu> ")
        except (EOFError, KeyboardInterrupt):
            console.print()
            return
        text = line.strip()
        if text.lower() in EXIT_WORDS:
            return
        if text:
            handle(text)


def _show_result(r: MatchResult) -> None:
    decision = Decision(r.decision)
    style = DECISION_STYLE[decision]
    console.print(
        f"[{style}]{decision.value}[/]  confidence {r.confidence:.3f}  entry {escape(r.entry_id or '—')}"
    )
    console.print(f"  reason: {escape(r.reason)}")
    if decision is Decision.ANSWER and r.answer:
        console.print(f"  answer: {escape(r.answer)}")
    if r.candidates:
        table = Table("#", "entry", "question", "score", "category")
        for i, c in enumerate(r.candidates, start=1):
            table.add_row(
                str(i), escape(c.entry_id), escape(c.question), f"{c.score:.3f}", escape(c.category)
            )
        console.print(table)


@app.command()
def match(
    model: Annotated[Path, typer.Argument(help="Model directory")],
    text: Annotated[str, typer.Argument(help="Customer message")],
    top_k: Annotated[int, typer.Option(help="Candidates to return")] = 5,
) -> None:
    """Match one message and print the result as JSON (for scripts)."""
    m = _load_model(model)
    typer.echo(json.dumps(m.match(text, top_k=top_k).to_dict(), ensure_ascii=False, default=_json_default))


# --------------------------------------------------------------------------- bench


@app.command()
def bench(
    data: Annotated[Path, typer.Argument(help="Data set directory with kb.csv and queries.csv")],
    max_queries: Annotated[int, typer.Option(help="Use the first N queries")] = 3000,
    profile: Annotated[list[str] | None, typer.Option(help="fast and/or default (repeatable)")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the figures as JSON")] = None,
    scale: Annotated[
        bool, typer.Option("--scale", help="Latency, build and memory from 1k to 1M questions, against peers")
    ] = False,
    also: Annotated[
        list[Path] | None,
        typer.Option(help="With --scale: more real sets to draw questions from (repeatable)"),
    ] = None,
    sizes: Annotated[
        str, typer.Option(help="With --scale: KB sizes, comma-separated")
    ] = "1000,10000,100000,1000000",
    system: Annotated[
        list[str] | None,
        typer.Option(help="With --scale: kefu-fast, kefu-default, bm25s, tfidf (repeatable; default all)"),
    ] = None,
    default_max_size: Annotated[
        int, typer.Option(help="With --scale: largest size for the default channels (encoding is slow)")
    ] = 100_000,
    png: Annotated[
        Path,
        typer.Option(
            help="With --scale: where to write the plot, in the format of its suffix "
            f"({', '.join(PLOT_FORMATS)})"
        ),
    ] = Path("bench-scale.png"),
    work_dir: Annotated[
        Path, typer.Option(help="With --scale: where generated KBs are kept between runs")
    ] = Path(".bench-scale"),
    seed: Annotated[int, typer.Option(help="With --scale: seed of the synthetic questions")] = 0,
    vector_store: Annotated[
        Path | None,
        typer.Option(
            help="With --scale: read and keep the default channels' KB vectors here (fill it ahead, in "
            "pieces, with `python -m training.vectorstore fill KB.csv DIR`); build s then counts each "
            "stored vector's recorded encoding time"
        ),
    ] = None,
) -> None:
    """Channel ablation (does fusion help?), latency, build time and peak memory on a data set.

    With --scale: the same message latency (p50/p99), build time and peak memory at 1k to 1M KB questions
    (the set's real questions grown with seeded synthetic ones), Kefu beside bm25s and TF-IDF, with a PNG."""
    if scale:
        _check_plot("--png", png)
        _bench_scale(
            [data, *(also or [])],
            sizes,
            system,
            max_queries,
            default_max_size,
            png,
            json_out,
            work_dir,
            seed,
            vector_store,
        )
        return
    from training.benchmark import run

    profiles = profile or ["fast", "default"]
    if unknown := sorted(set(profiles) - {"fast", "default"}):
        _fail(f"unknown profile {', '.join(unknown)} (expected fast or default)")
    with _user_errors():
        pairs = _load_queries(data / "queries.csv")[:max_queries]
        report = run(data, pairs, profiles=profiles, say=lambda s: console.print(f"[dim]{escape(s)}[/]"))
    table = Table(title=f"{data.name}: {report.entries} entries, {report.queries} queries")
    for col in ("profile", "ranking", "top-1", "MRR", "R@5"):
        table.add_column(col)
    for prof, rows in report.ablation.items():
        for row in rows:
            table.add_row(prof, row.name, f"{row.top1:.3f}", f"{row.mrr:.3f}", f"{row.recall5:.3f}")
    console.print(table)
    cost = Table(title="cost")
    for col in ("profile", "build s", "peak RSS MB", "p50 ms", "p99 ms"):
        cost.add_column(col)
    for prof in report.build_seconds:
        lat = report.latency_ms[prof]
        cost.add_row(
            prof,
            f"{report.build_seconds[prof]:.1f}",
            f"{report.peak_rss_mb[prof]:.0f}",
            f"{lat['p50']:.3f}",
            f"{lat['p99']:.3f}",
        )
    console.print(cost)
    if report.cascade:
        casc = Table(title="default profile: dense-skip cascade off / on (empty encoder cache)")
        for col in ("", "top-1", "answered", "precision", "encoder skipped", "p50 ms", "p99 ms", "mean ms"):
            casc.add_column(col)
        for name, c in report.cascade.items():
            casc.add_row(
                name,
                f"{c['top1']:.4f}",
                f"{c['answered']:.4f}",
                f"{c['precision']:.4f}",
                f"{c['skipped']:.3f}",
                f"{c['p50']:.2f}",
                f"{c['p99']:.2f}",
                f"{c['mean']:.2f}",
            )
        console.print(casc)
    if json_out:
        from dataclasses import asdict

        _write_json(asdict(report), json_out)


def _bench_scale(
    data_dirs: list[Path],
    sizes_text: str,
    systems: list[str] | None,
    max_queries: int,
    default_max_size: int,
    png: Path,
    json_out: Path | None,
    work_dir: Path,
    seed: int,
    vector_store: Path | None = None,
) -> None:
    from training import scale as sc

    try:
        sizes = [int(x.replace("_", "")) for x in sizes_text.split(",") if x.strip()]
    except ValueError:
        _fail(f"--sizes must be comma-separated integers, got {sizes_text!r}")
    if not sizes or min(sizes) < 10:
        _fail(f"--sizes must name sizes of at least 10 questions, got {sizes_text!r}")
    chosen = systems or list(sc.SYSTEMS)
    if unknown := sorted(set(chosen) - set(sc.SYSTEMS)):
        _fail(f"unknown system {', '.join(unknown)} (expected {', '.join(sc.SYSTEMS)})")
    for d in data_dirs:
        if not (d / "kb.csv").is_file() or not (d / "queries.csv").is_file():
            _fail(f"{d}: expected a directory with kb.csv and queries.csv")
    n_queries = min(max_queries, 1000)
    report = sc.run(
        sizes,
        chosen,
        data_dirs,
        work_dir,
        n_queries=n_queries,
        seed=seed,
        default_max_size=default_max_size,
        say=lambda s: console.print(f"[dim]{escape(s)}[/]"),
        vector_store=vector_store,
    )
    table = Table(title=f"message latency, build and memory by KB size ({n_queries} queries per size)")
    for col in (
        "system",
        "questions",
        "p50 ms",
        "p99 ms",
        "build s",
        "peak RSS MB",
        "load s",
        "ANN recall@5",
        "encode s",
        "note",
    ):
        table.add_column(col)
    for c in report.cells:
        table.add_row(
            c.system,
            f"{c.size:,}",
            "" if c.p50_ms is None else f"{c.p50_ms:.3f}",
            "" if c.p99_ms is None else f"{c.p99_ms:.3f}",
            "" if c.build_s is None else f"{c.build_s:.1f}",
            "" if c.peak_rss_mb is None else f"{c.peak_rss_mb:.0f}",
            "" if c.load_s is None else f"{c.load_s:.1f}",
            "" if c.ann_recall5 is None else f"{c.ann_recall5:.4f} ({c.index})",
            "" if c.encode_s is None else f"{c.encode_s:.0f}",
            escape(c.error or (f"{c.vectors_stored:,} vectors from the store" if c.vectors_stored else "")),
        )
    console.print(table)
    for size in report.sizes:
        k, b = report.cell("kefu-fast", size), report.cell("bm25s", size)
        if k and b and k.p50_ms and b.p50_ms:
            console.print(f"{size:,}: kefu-fast is {b.p50_ms / k.p50_ms:.2f}x bm25s at p50")
    for bar, ok in report.verdicts():
        mark = "[green]met[/]" if ok else "[red]not met[/]" if ok is not None else "[dim]not measured[/]"
        console.print(f"{mark}  {bar}")
    console.print(f"plot: {sc.plot(report, png)}")
    if json_out:
        _write_json(sc.to_json(report), json_out)


# --------------------------------------------------------------------------- serve


@app.command()
def serve(
    model: Annotated[Path, typer.Option(help="Model directory the API loads")] = Path("models/demo"),
    host: Annotated[str, typer.Option(help="Interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on")] = 8000,
) -> None:
    """Run the HTTP API (api.main:app) on a model; the API reads the path from KEFU_MODEL_PATH."""
    with _user_errors():
        read_manifest(model)  # fail here, clearly, rather than inside the server's startup
    os.environ["KEFU_MODEL_PATH"] = str(model.resolve())
    import uvicorn

    console.print(f"serving {escape(str(model))} on http://{host}:{port}")
    uvicorn.run("api.main:app", host=host, port=port)


@app.command()
def worker(
    queue: Annotated[
        str, typer.Option(help="What to consume: builds (KB publishes), replies (async JD replies) or all")
    ] = "all",
    threads: Annotated[int, typer.Option(help="Worker threads for the JD replies")] = 2,
    builds: Annotated[
        int | None, typer.Option(help="Builds at once, each in a child process (default KEFU_BUILD_WORKERS)")
    ] = None,
) -> None:
    """Consume the task queue in this process, beside services started with KEFU_BUILD_IN_PROCESS=false
    (builds) or KEFU_QUEUE_WORKERS=0 (replies), with the same KEFU_* settings (database, KEFU_QUEUE_URL,
    KEFU_DATA_DIR, KEFU_SECRET_KEY). Ctrl-C or SIGTERM stops: a running build is put back on the queue."""
    import logging
    import signal
    import threading

    from api.cpu_affinity import pin_process
    from api.kb.build_child import autogroups_on, lower_session
    from api.service import Service
    from api.settings import get_settings

    if queue not in ("builds", "replies", "all"):
        console.print(f"[red]--queue {escape(queue)}: expected builds, replies or all[/]")
        raise typer.Exit(2)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    settings = get_settings()
    service = Service(settings)
    try:
        if queue in ("replies", "all"):
            service.jd_queue.start(threads)
            console.print(f"JD reply queue: {threads} worker thread(s)")
        # a builds-only worker runs on the builds' CPUs, and its children with it
        if queue == "builds" and settings.build_cpu_set and pin_process(settings.build_cpu_set):
            console.print(f"on CPUs {settings.build_cpus} (KEFU_BUILD_CPUS)")
        # a builds-only worker leading its own session lowers the session: nice counts only inside it
        if queue == "builds" and lower_session(int(settings.build_nice)):
            console.print(f"this session's CPU weight lowered to nice {settings.build_nice} (autogroup)")
        elif queue == "builds" and autogroups_on() and int(settings.build_nice) > 0:
            console.print(
                "[yellow]this worker shares its session with other programs: Linux shares the CPUs between "
                "sessions first, so its builds rank below serving processes of another session only when "
                "it is started in a session of its own (`setsid kefu worker ...`); see README[/]"
            )
        if queue in ("builds", "all"):
            workers = builds or settings.build_workers
            service.start_builds_here(workers)
            console.print(f"KB build queue: {workers} build(s) at once, each in a child process")
        console.print("Ctrl-C stops")
        while not stop.wait(60.0):
            if queue in ("builds", "all"):
                service.sweep_builds()
    finally:
        service.close()


# --------------------------------------------------------------------------- sandbox


@app.command()
def sandbox(
    port: Annotated[int, typer.Option(help="Port of the service (0: any free port)")] = 8010,
    once: Annotated[
        bool, typer.Option(help="Play the demo conversation, measure order answers and exit")
    ] = False,
    kb: Annotated[Path, typer.Option(help="KB of the demo shop (with dynamic entries)")] = Path(
        "models/demo-shop-kb-orders.csv"
    ),
) -> None:
    """SANDBOX: the service against a fake JD (JOS) with made-up orders; nothing reaches JD.

    Starts the fake JOS gateway with the demo orders, the service (uvicorn api.main:app) pointed at it with
    a throw-away database and key, and a demo shop whose KB has order, logistics and refund entries.
    """
    from training import sandbox as sb

    with _user_errors():
        load_kb(kb)
    console.print("[bold yellow]SANDBOX[/]: fake JD orders, throw-away database; nothing reaches JD")
    try:
        with sb.running_sandbox(port, kb) as (url, key, fake):
            send = sb.sender(url, key)
            console.print(f"service {url}, fake JOS {fake.url}, shop {sb.SHOP}")
            if not once:
                _print_sandbox_help(url, key, sb)
                console.print("Ctrl-C stops the sandbox")
                try:
                    while True:
                        time.sleep(3600)
                except KeyboardInterrupt:
                    return
            _play_demo(send, sb)
            m = sb.measure(send)
            console.print(
                f"\norder questions answered from the fake JOS: {m.answered}/{m.asked} "
                f"({m.answered_share:.1%}); "
                f"another customer's order: {m.foreign_asked} asked, {m.leaks} replies with any of its data"
            )
            for miss in m.misses:
                console.print(f"  missed: {escape(miss)}", soft_wrap=True)
    except RuntimeError as e:
        _fail(str(e))


def _play_demo(send: Any, sb: Any) -> None:
    for pin, card, text in sb.DEMO_SCRIPT:
        r = send(f"demo-{pin}", text, pin, card)
        extra = f" task {r['task_id']}" if r.get("task_id") else ""
        if r.get("handoff"):
            extra += f" ({r['handoff']['code']}: {r['handoff']['reason']})"
        console.print(f"[bold]{escape(str(pin))}[/]: {escape(text)}")
        label = escape(f"[{r['kind']}{extra}]")
        console.print(f"  bot {label}: {escape(r['text'])}", soft_wrap=True)


def _print_sandbox_help(url: str, key: dict[str, str], sb: Any) -> None:
    api_key = key["X-API-Key"]
    console.print(
        f"customers: {', '.join(sb.DEMO_PINS)}; orders: "
        + ", ".join(f"{o.order_id} ({o.pin[8:]}, {o.state_remark})" for o in sb.DEMO_ORDERS)
        + f"; {sb.SLOW_ORDER} is too slow, {sb.ERROR_ORDER} fails"
    )
    body = '{"conversation_id":"c1","customer_pin":"jd_demo_alice","text":"订单300012345602的快递到哪了"}'
    console.print("send a message:", soft_wrap=True)
    console.print(
        escape(
            f"  curl -s {url}/v1/shops/{sb.SHOP}/messages -H 'X-API-Key: {api_key}' "
            f"-H 'Content-Type: application/json' -d '{body}'"
        ),
        soft_wrap=True,
    )
    console.print(
        escape(f"  tasks: curl -s {url}/v1/shops/{sb.SHOP}/tasks -H 'X-API-Key: {api_key}'"), soft_wrap=True
    )


# --------------------------------------------------------------------------- loadtest


@app.command()
def loadtest(
    duration: Annotated[float, typer.Option(help="Seconds of load")] = 60.0,
    concurrency: Annotated[int, typer.Option(help="Concurrent clients sending messages")] = 8,
    every: Annotated[float, typer.Option(help="Seconds between republishes of the KB")] = 5.0,
    workers: Annotated[int, typer.Option(help="uvicorn worker processes")] = 2,
    dense: Annotated[bool, typer.Option("--dense/--no-dense", help="Build with the dense channel")] = False,
    kb: Annotated[Path | None, typer.Option(help="The shop's KB (default: models/demo-shop-kb.csv)")] = None,
    database_url: Annotated[
        str | None,
        typer.Option(help="Use this PostgreSQL database as is instead of a fresh kefu_load_* one"),
    ] = None,
    pg_url: Annotated[
        str | None, typer.Option(help="PostgreSQL where the fresh database is created and dropped")
    ] = None,
    redis_url: Annotated[str | None, typer.Option(help="Redis (a unique key prefix is used)")] = None,
    min_versions: Annotated[int, typer.Option(help="Distinct versions that must serve replies")] = 3,
    publishers: Annotated[
        int,
        typer.Option(
            help="Instead: serving p99 idle vs while this many shops publish at once (embedded SQLite "
            "default unless --database-url / --redis-url; training/buildload.py)"
        ),
    ] = 0,
    idle: Annotated[float, typer.Option(help="With --publishers: seconds of each idle phase")] = 30.0,
    rounds: Annotated[
        int,
        typer.Option(
            min=1,
            help="With --publishers: publish-all rounds, each followed by an idle phase (later rounds "
            "upload the KB with one entry added); more messages behind each p99",
        ),
    ] = 1,
    rate: Annotated[float, typer.Option(help="With --publishers: messages per second")] = 20.0,
    build_worker: Annotated[
        bool,
        typer.Option(
            help="With --publishers: builds in a separate `kefu worker` process (KEFU_BUILD_IN_PROCESS="
            "false), as many at once as the serving workers would run, instead of in the serving processes"
        ),
    ] = False,
    control: Annotated[
        bool,
        typer.Option(
            help="With --publishers: a last phase, as long as the builds took, with one CPU-bound process "
            "per CPU at the builds' priority instead of builds: the p99 any neighbour costs on this machine"
        ),
    ] = False,
    split_cpus: Annotated[
        bool,
        typer.Option(
            help="With --publishers: serving (and this client) on the first half of the CPUs, builds and "
            "the control's burners on the rest (KEFU_SERVE_CPUS / KEFU_BUILD_CPUS)"
        ),
    ] = False,
) -> None:
    """Hot swaps under load: N workers on PostgreSQL + Redis, KB republished while clients send messages.
    With --publishers N: serving latency while N shops build at once, against idle."""
    from training.loadtest import DEFAULT_PG, DEFAULT_REDIS, DEMO_KB, LoadConfig, main

    if publishers:
        from training import buildload

        build_cfg = buildload.BuildLoadConfig(
            publishers=publishers,
            idle=idle,
            rate=rate,
            clients=min(concurrency, 8),
            workers=workers,
            dense=dense,
            kb=kb or DEMO_KB,
            database_url=database_url,
            redis_url=redis_url,
            build_worker=build_worker,
            control=control,
            split_cpus=split_cpus,
            rounds=rounds,
        )
        raise typer.Exit(buildload.main(build_cfg))

    config = LoadConfig(
        duration=duration,
        concurrency=concurrency,
        every=every,
        workers=workers,
        dense=dense,
        kb=kb or DEMO_KB,
        database_url=database_url,
        pg_url=pg_url or DEFAULT_PG,
        redis_url=redis_url or DEFAULT_REDIS,
        min_versions=min_versions,
    )
    raise typer.Exit(main(config))


@app.command("bench-shops")
def bench_shops(
    data: Annotated[
        list[Path] | None, typer.Argument(help="Shared sets whose real questions seed the KBs")
    ] = None,
    shops: Annotated[int, typer.Option(help="Shops on the replica")] = 1000,
    questions: Annotated[int, typer.Option(help="KB questions per shop")] = 1000,
    distinct: Annotated[int, typer.Option(help="Distinct KBs built (each shop gets its own copy)")] = 5,
    dense: Annotated[bool, typer.Option("--dense/--no-dense", help="Default channels (dense on)")] = False,
    memory_mb: Annotated[float, typer.Option(help="KEFU_MODEL_MEMORY_MB of the replica")] = 3000.0,
    random_messages: Annotated[
        int, typer.Option(help="Messages to random shops after the first pass")
    ] = 1000,
    work_dir: Annotated[
        Path | None, typer.Option(help="Keep the built KBs and models here and reuse them next run")
    ] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the figures as JSON")] = None,
) -> None:
    """Thousands of shops on one replica: RSS under the model budget, cold and warm first replies."""
    from training import shopsbench

    dirs = data or [Path("../shared/data/afqmc"), Path("../shared/data/smp2017")]
    for d in dirs:
        if not (d / "kb.csv").is_file():
            _fail(f"{d} has no kb.csv: give shared sets (e.g. ../shared/data/afqmc)")
    cfg = shopsbench.ShopsConfig(
        data_dirs=dirs,
        shops=shops,
        questions=questions,
        distinct=distinct,
        dense=dense,
        memory_mb=memory_mb,
        random_messages=random_messages,
        work_dir=work_dir,
    )
    report = shopsbench.run(cfg, say=console.print)
    shopsbench.print_report(report, console.print)
    if json_out is not None:
        shopsbench.write_json(report, json_out)
    if report.errors:
        raise typer.Exit(1)


# --------------------------------------------------------------------------- hostile


@app.command()
def hostile(
    workers: Annotated[int, typer.Option(help="uvicorn worker processes")] = 2,
    scale: Annotated[float, typer.Option(help="Payload size factor (1: the sizes in the issue)")] = 1.0,
    rss_ceiling_mb: Annotated[float, typer.Option(help="Peak RSS no worker may reach")] = 600.0,
    healthz_p99_ms: Annotated[float, typer.Option(help="/healthz p99 no worker may reach")] = 100.0,
) -> None:
    """Hostile uploads and bodies against real workers while /healthz and RSS are measured."""
    from training.hostile import HostileConfig, main

    config = HostileConfig(
        workers=workers, scale=scale, rss_ceiling_mb=rss_ceiling_mb, healthz_p99_ms=healthz_p99_ms
    )
    raise typer.Exit(main(config))


# --------------------------------------------------------------------------- bench-http


@app.command("bench-http")
def bench_http(
    scenario: Annotated[
        list[str] | None,
        typer.Option(
            help="hello, match-fast, match-default, messages (PostgreSQL + Redis) or messages-sqlite; "
            "repeatable (default: all)"
        ),
    ] = None,
    duration: Annotated[int, typer.Option(help="Seconds of measured load per scenario")] = 20,
    warmup: Annotated[int, typer.Option(help="Seconds of load before it, not counted")] = 5,
    connections: Annotated[int, typer.Option(help="wrk's open connections")] = 16,
    threads: Annotated[int, typer.Option(help="wrk's threads")] = 2,
    workers: Annotated[int, typer.Option(help="uvicorn worker processes")] = 2,
    pg_url: Annotated[
        str | None,
        typer.Option(
            help="messages: PostgreSQL where a fresh database is created and dropped "
            "(default postgresql+psycopg://postgres@127.0.0.1:5432/test)"
        ),
    ] = None,
    redis_url: Annotated[
        str | None,
        typer.Option(
            help="messages: Redis, a unique key prefix deleted after (default redis://127.0.0.1:6379/0)"
        ),
    ] = None,
    repeat_share: Annotated[float, typer.Option(help="Share of questions that repeat an earlier one")] = 0.3,
    seed: Annotated[int, typer.Option(help="Seed of the message mix")] = 0,
    model_fast: Annotated[
        Path | None, typer.Option(help="match-fast serves this model of the demo KB instead of building one")
    ] = None,
    model_default: Annotated[
        Path | None, typer.Option(help="match-default serves this one (e.g. models/demo from `make demo`)")
    ] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the figures here")] = None,
) -> None:
    """HTTP load with wrk on loopback: req/s and p50/p95/p99 per scenario, real servers, the demo mix."""
    from training.httpbench import SCENARIOS, BenchConfig, main
    from training.loadtest import DEFAULT_PG, DEFAULT_REDIS

    config = BenchConfig(
        scenarios=tuple(scenario or SCENARIOS),
        duration=duration,
        warmup=warmup,
        connections=connections,
        threads=threads,
        workers=workers,
        pg_url=pg_url or DEFAULT_PG,
        redis_url=redis_url or DEFAULT_REDIS,
        repeat_share=repeat_share,
        seed=seed,
        json_path=json_out,
        models={k: v for k, v in (("fast", model_fast), ("default", model_default)) if v is not None},
    )
    for option, path in (("--model-fast", model_fast), ("--model-default", model_default)):
        if path is not None and not (path / "manifest.json").is_file():
            _fail(f"{option} {path}: not a model directory (no manifest.json); build one with `kefu build`")
    raise typer.Exit(main(config, console))


if __name__ == "__main__":
    app()
