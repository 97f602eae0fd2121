"""`kefu report`: one self-contained HTML evaluation report, and the same figures as JSON.

A merchant (or whoever reviews a model before it goes live) should be able to open one file, offline, and
see what the model promised when it was built and what it delivered on labelled queries: ranking quality,
the precision/coverage trade-off with the thresholds in force, whether its confidence means what it says
(reliability diagram, expected calibration error), what customers would see (decisions by kind) and which
entries it mistakes for which. The numbers come from `training.evaluate` (one evaluation path, shared with
`kefu eval`); this module only regroups them, draws them and lays them out.

The document is a dict of sections (`model`, `labelled`, `traffic`); the HTML renders each section that
is present. `traffic` holds a shop's logged traffic over a period as the service computed it (fetched and
drawn by training.traffic), alone or beside a model's sections. Charts are PNGs inlined as data: URIs
and the page has no script, stylesheet or font to fetch, so it opens with no network; every text from a
user (queries, entry ids and questions, paths, logged customer messages) goes through Jinja2's
autoescaping.
"""

from __future__ import annotations

import base64
import io
import json
import os
from collections import Counter, defaultdict
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from engine.decide import precision_interval
from engine.results import Decision
from training.evaluate import (
    NEVER,
    EvalReport,
    QueryOutcome,
    precision_coverage_curve,
    threshold_cell,
    threshold_text,
    without_unknown,
)

__all__ = [
    "REPORT_FORMAT",
    "build_document",
    "labelled_figures",
    "model_figures",
    "render_html",
    "write_report",
]

REPORT_FORMAT = "kefu-report"
REPORT_VERSION = 1
RELIABILITY_BINS = 10
CONFUSION_PAIRS = 15  # pairs listed per kind of confusion: the head is what a merchant can act on
CONFUSION_EXAMPLES = 3


# --------------------------------------------------------------------------- figures


def model_figures(info: Mapping[str, Any], policy: Any, path: str | os.PathLike[str]) -> dict[str, Any]:
    """The model and what it promises: its thresholds and the calibration figures of its manifest.

    A recalibration on labelled logs (`kefu calibrate`) replaces the build's promise, so its figures are
    the ones in force when present.
    """
    cal: Mapping[str, Any] = info.get("calibration") or {}
    logs: Mapping[str, Any] = info.get("calibration_logs") or {}
    source = logs or cal
    promise = {
        "target_precision": logs.get("target_precision", info.get("target_precision")),
        "threshold_rule": source.get("threshold_rule"),
        "threshold_confidence": info.get("threshold_confidence"),
        "calibrated_on": source.get("calibrated_on"),
        "answer_precision": source.get("answer_precision", source.get("cv_answer_precision")),
        "answer_precision_interval_90": source.get("answer_precision_interval_90"),
        "answer_coverage": source.get("answer_coverage", source.get("cv_answer_coverage")),
        "top1_in_scope": cal.get("cv_top1_in_scope"),
        "examples": logs.get("examples")
        if logs
        else _sum_or_none(cal.get("examples_in_scope"), cal.get("examples_out_of_scope")),
    }
    t_answer = float(policy.t_answer)
    return {
        "path": str(path),
        "entries": info.get("entries"),
        "dense": bool(info.get("dense")),
        "t_answer": t_answer,
        "answers_on_confidence": t_answer <= NEVER,
        "t_clarify": float(policy.t_clarify),
        "clarify_k": int(policy.clarify_k),
        "promise": promise,
    }


def _sum_or_none(*values: Any) -> int | None:
    return None if any(v is None for v in values) else int(sum(values))


def matcher_figures(m: Any, report: EvalReport, queries_file: str = "") -> dict[str, Any]:
    """`labelled_figures` with a model's own thresholds and entry questions."""
    return labelled_figures(
        report,
        t_answer=m.policy.t_answer,
        t_clarify=m.policy.t_clarify,
        clarify_k=m.policy.clarify_k,
        titles={e.id: e.question for e in m.entries},
        queries_file=queries_file,
    )


def labelled_figures(
    report: EvalReport,
    *,
    t_answer: float,
    t_clarify: float,
    clarify_k: int = 3,
    titles: Mapping[str, str] | None = None,
    queries_file: str = "",
) -> dict[str, Any]:
    """Every figure of the labelled-set section, JSON-serialisable (plain floats, ints, str, None).

    With `titles` (the model's entries), queries whose expected id is not one of them are left out of
    every figure (they could never be matched: most likely a typo or an entry deleted since) and listed
    in `unknown_expected_ids`."""
    titles = titles or {}
    unknown: list[str] = []
    if titles:
        report, unknown = without_unknown(report, titles)
    return {
        "queries_file": queries_file,
        "ranking": ranking_figures(report),
        "delivered": delivered_figures(report),
        "curve": curve_figures(report, t_answer=t_answer, t_clarify=t_clarify, clarify_k=clarify_k),
        "reliability": reliability_figures(report),
        "decisions": decision_figures(report, clarify_k),
        "confusions": confusion_figures(report, titles),
        # expected ids the model does not know: their queries are not in the figures above
        "unknown_expected_ids": unknown,
    }


def ranking_figures(report: EvalReport) -> dict[str, Any]:
    """Whether the right entry is found at all, whatever is then decided (in-scope queries only)."""
    return {
        "n_queries": report.n_queries,
        "n_in_scope": report.n_in_scope,
        "n_out_of_scope": report.n_out_of_scope,
        "top1": report.top1,
        "mrr": report.mrr,
        "mrr_at": report.top_k,
        "recall_at_5": report.recall_at_5,
    }


def delivered_figures(report: EvalReport) -> dict[str, Any]:
    """What the model's own answer decisions achieved, with a 90% interval to set beside the promise.

    The interval is the same two-sided Clopper-Pearson interval the manifest states, so a delivered
    precision whose interval lies below the promised one is a broken promise, not bad luck.
    """
    answered = [o for o in report.outcomes if o.decision == Decision.ANSWER.value]
    hits = np.array([o.correct for o in answered], float)
    interval = precision_interval(hits, np.ones(hits.size), 0.9) if hits.size else None
    return {
        "answered": len(answered),
        "answered_right": int(hits.sum()),
        "coverage": report.coverage,
        "precision": report.answer_precision,
        "precision_interval_90": None if interval is None else [round(v, 4) for v in interval],
        "meets_target": None
        if report.answer_precision is None or report.target_precision is None
        else report.answer_precision >= report.target_precision,
        "oos_protected": report.oos_protected,
        "latency_p50_ms": report.latency_p50_ms,
        "latency_p99_ms": report.latency_p99_ms,
    }


def curve_figures(
    report: EvalReport, *, t_answer: float, t_clarify: float, clarify_k: int = 3
) -> dict[str, Any]:
    """The precision/coverage curve (training.evaluate) and the model's operating points on it.

    The answer point is what the model really did (its ANSWER decisions), not the curve read at t_answer:
    the two differ where a rule overrides the threshold (a KB question typed word for word, an explicit
    request for a human, the merchant's small-talk entries). The clarify point is where the curve would be
    if everything answered or offered were answered outright, with the share whose expected entry is among
    the offered questions (what t_clarify is chosen for).
    """
    thresholds, coverage, precision = precision_coverage_curve(report)
    n = report.n_queries
    answered = [o for o in report.outcomes if o.decision == Decision.ANSWER.value]
    shown = [o for o in report.outcomes if o.decision in (Decision.ANSWER.value, Decision.CLARIFY.value)]
    return {
        "points": [
            {"threshold": float(t), "coverage": float(c), "precision": float(p)}
            for t, c, p in zip(thresholds, coverage, precision, strict=True)
        ],
        "target_precision": report.target_precision,
        "operating_points": [
            {
                "name": "answer",
                "threshold": t_answer,
                "count": len(answered),
                "coverage": report.coverage,
                "precision": report.answer_precision,
            },
            {
                "name": "clarify",
                "threshold": t_clarify,
                "count": len(shown),
                "coverage": len(shown) / n,
                "precision": _share(sum(o.correct for o in shown), len(shown)),
                "expected_offered": _share(
                    sum(o.rank is not None and o.rank <= clarify_k for o in shown), len(shown)
                ),
            },
        ],
    }


def reliability_figures(report: EvalReport, bins: int = RELIABILITY_BINS) -> dict[str, Any]:
    """Confidence in equal-width bins against the share right in each: does 0.9 mean 90% right?

    Every query counts (out of scope: wrong), including those decided by a rule with confidence 0, so the
    bins add up to the whole set. The expected calibration error is the count-weighted mean gap.
    """
    conf = np.clip(np.array([o.confidence for o in report.outcomes], float), 0.0, 1.0)
    right = np.array([o.correct for o in report.outcomes], float)
    index = np.minimum((conf * bins).astype(int), bins - 1)
    rows: list[dict[str, Any]] = []
    ece = 0.0
    for b in range(bins):
        mask = index == b
        count = int(mask.sum())
        mean_conf = float(conf[mask].mean()) if count else None
        accuracy = float(right[mask].mean()) if count else None
        if mean_conf is not None and accuracy is not None:
            ece += count / conf.size * abs(mean_conf - accuracy)
        rows.append(
            {
                "lo": b / bins,
                "hi": (b + 1) / bins,
                "count": count,
                "mean_confidence": mean_conf,
                "accuracy": accuracy,
            }
        )
    return {"bins": rows, "ece": float(ece), "n": int(conf.size)}


def decision_figures(report: EvalReport, clarify_k: int = 3) -> dict[str, dict[str, Any]]:
    """For each decision kind: how many, and of those right, wrong (in scope) or out of scope.

    "Right" means the best entry is the expected one; for clarify, `expected_offered` also counts the
    lists that contain the expected entry among the questions offered.
    """
    out: dict[str, dict[str, Any]] = {}
    for kind in Decision:
        of_kind = [o for o in report.outcomes if o.decision == kind.value]
        row: dict[str, Any] = {
            "count": len(of_kind),
            "share": len(of_kind) / report.n_queries,
            "right": sum(o.correct for o in of_kind),
            "wrong": sum(o.expected_id is not None and not o.correct for o in of_kind),
            "out_of_scope": sum(o.expected_id is None for o in of_kind),
        }
        if kind is Decision.CLARIFY:
            row["expected_offered"] = sum(o.rank is not None and o.rank <= clarify_k for o in of_kind)
        out[kind.value] = row
    return out


def confusion_figures(
    report: EvalReport,
    titles: Mapping[str, str],
    limit: int = CONFUSION_PAIRS,
    examples: int = CONFUSION_EXAMPLES,
) -> dict[str, list[dict[str, Any]]]:
    """Which entries are mistaken for which, most frequent pairs first, with example queries.

    `answered_wrong`: wrong answers customers would have received (expected None: an out-of-scope query
    answered). `top1_wrong`: in-scope queries whose best entry is another one, whatever was decided: the
    ranking's confusions, most of them caught by the thresholds.
    """
    answered_wrong = [o for o in report.outcomes if o.decision == Decision.ANSWER.value and not o.correct]
    top1_wrong = [
        o
        for o in report.outcomes
        if o.expected_id is not None and o.entry_id is not None and o.entry_id != o.expected_id
    ]
    return {
        "answered_wrong": _pairs(answered_wrong, titles, limit, examples),
        "top1_wrong": _pairs(top1_wrong, titles, limit, examples),
    }


def _pairs(
    outcomes: list[QueryOutcome], titles: Mapping[str, str], limit: int, examples: int
) -> list[dict[str, Any]]:
    groups: dict[tuple[str | None, str | None], list[QueryOutcome]] = defaultdict(list)
    for o in outcomes:
        groups[(o.expected_id, o.entry_id)].append(o)
    counts = Counter({pair: len(group) for pair, group in groups.items()})
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0][0]), str(kv[0][1])))
    return [
        {
            "expected_id": expected,
            "expected_question": titles.get(expected) if expected else None,
            "predicted_id": predicted,
            "predicted_question": titles.get(predicted) if predicted else None,
            "count": count,
            "examples": [
                {"query": o.query, "decision": o.decision, "confidence": round(o.confidence, 4)}
                for o in sorted(groups[(expected, predicted)], key=lambda o: -o.confidence)[:examples]
            ],
        }
        for (expected, predicted), count in ranked[:limit]
    ]


def _share(hits: int, total: int) -> float | None:
    return hits / total if total else None


def build_document(
    model: dict[str, Any] | None,
    labelled: dict[str, Any] | None = None,
    traffic: dict[str, Any] | None = None,
    generated_at: datetime | None = None,
) -> dict[str, Any]:
    """The whole report as one JSON-able dict: the HTML is rendered from exactly this."""
    return {
        "format": REPORT_FORMAT,
        "version": REPORT_VERSION,
        "generated_at": (generated_at or datetime.now(UTC)).isoformat(timespec="seconds"),
        "model": model,
        "labelled": labelled,
        "traffic": traffic,  # a shop's logged traffic over a period (GET /v1/shops/{shop}/report/traffic)
    }


# --------------------------------------------------------------------------- charts


def _png_data_uri(fig: Any) -> str:
    """A figure as a data: URI, so the page needs no file beside it and nothing from the network."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _figure(width: float = 6.4, height: float = 4.4) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def curve_chart(curve: Mapping[str, Any]) -> str:
    """Precision against coverage, the target line and the model's operating points."""
    fig = _figure()
    ax = fig.add_subplot()
    points = curve["points"]
    ax.plot(
        [p["coverage"] for p in points],
        [p["precision"] for p in points],
        marker=".",
        markersize=3,
        label="answer if confidence ≥ t",
    )
    if curve.get("target_precision") is not None:
        ax.axhline(curve["target_precision"], color="grey", linestyle=":", label="target precision")
    styles = {"answer": ("o", "tab:red"), "clarify": ("s", "tab:orange")}
    for op in curve["operating_points"]:
        if op["precision"] is None:
            continue
        marker, color = styles.get(op["name"], ("^", "black"))
        t = op["threshold"]
        where = "never" if t > NEVER else threshold_text(t)  # 0.9996 is not 1.00
        ax.plot(
            [op["coverage"]],
            [op["precision"]],
            marker,
            color=color,
            markersize=8,
            label=f"{op['name']} (t={where})",
        )
    ax.set_xlim(0.0, 1.02)
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel("coverage (share of queries)")
    ax.set_ylabel("precision (best entry right)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower left", fontsize="small")
    return _png_data_uri(fig)


def reliability_chart(reliability: Mapping[str, Any]) -> str:
    """Observed share right against mean confidence per bin; the diagonal is perfect calibration."""
    fig = _figure()
    ax = fig.add_subplot()
    filled = [b for b in reliability["bins"] if b["count"]]
    width = 1.0 / max(len(reliability["bins"]), 1)
    ax.bar(
        [b["lo"] for b in filled],
        [b["accuracy"] for b in filled],
        width=width,
        align="edge",
        edgecolor="white",
        alpha=0.8,
        label="share right in bin",
    )
    ax.plot(
        [b["mean_confidence"] for b in filled],
        [b["accuracy"] for b in filled],
        "o",
        color="tab:red",
        label="bin: mean confidence, share right",
    )
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    for b in filled:
        ax.annotate(str(b["count"]), (b["lo"] + width / 2, 0.01), ha="center", fontsize="x-small")
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel("confidence (numbers: queries per bin)")
    ax.set_ylabel("share right")
    ax.set_title(f"ECE {reliability['ece']:.3f}")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", fontsize="small")
    return _png_data_uri(fig)


# --------------------------------------------------------------------------- HTML


def _pct(value: Any) -> str:
    return "—" if value is None else f"{value:.1%}"


def _num(value: Any, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _interval(value: Any) -> str:
    return "—" if not value else f"{value[0]:.1%} – {value[1]:.1%}"


def render_html(document: Mapping[str, Any]) -> str:
    """The document as one HTML page: autoescaped, no script, charts inlined, nothing to fetch."""
    from jinja2 import Environment

    env = Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(pct=_pct, num=_num, threshold=threshold_cell, interval=_interval)
    charts: dict[str, str] = {}
    labelled = document.get("labelled")
    if labelled:
        charts["curve"] = curve_chart(labelled["curve"])
        charts["reliability"] = reliability_chart(labelled["reliability"])
    traffic = document.get("traffic")
    if traffic:
        from training.traffic import OUTCOMES, traffic_charts

        charts.update({f"traffic_{name}": uri for name, uri in traffic_charts(traffic).items()})
        env.globals["outcomes"] = OUTCOMES
    return env.from_string(TEMPLATE).render(doc=document, charts=charts)


def write_report(
    document: Mapping[str, Any],
    html_path: str | os.PathLike[str],
    json_path: str | os.PathLike[str] | None = None,
) -> tuple[Path, Path | None]:
    """Write the HTML page and, if asked, the same figures as JSON (UTF-8, Chinese kept readable)."""
    html = Path(html_path)
    html.parent.mkdir(parents=True, exist_ok=True)
    html.write_text(render_html(document), encoding="utf-8")
    out_json = None
    if json_path is not None:
        out_json = Path(json_path)
        out_json.parent.mkdir(parents=True, exist_ok=True)
        out_json.write_text(json.dumps(document, ensure_ascii=False, indent=2), encoding="utf-8")
    return html, out_json


TEMPLATE = """<!DOCTYPE html>
<html lang="zh">
<head>
<meta charset="utf-8">
<title>Kefu report: {{ doc.model.path if doc.model else "traffic of " ~ doc.traffic.shop }}</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 70em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
.cols { display: flex; gap: 2em; flex-wrap: wrap; }
.warn { color: #a40; }
small { color: #666; }
</style>
</head>
<body>
{% if doc.model %}
<h1>Kefu evaluation report</h1>
<p>Model <code>{{ doc.model.path }}</code> ({{ doc.model.entries }} entries{% if doc.model.dense %}, dense
channel on{% endif %}){% if doc.labelled %} on <code>{{ doc.labelled.queries_file }}</code>{% endif %};
generated {{ doc.generated_at }}.</p>

{% set p = doc.model.promise %}
<div class="cols">
<div>
<h2>What the model promises</h2>
<table>
<tr><th>target precision</th><td class="n">{{ p.target_precision | pct }}</td></tr>
<tr><th>threshold rule</th><td>{{ p.threshold_rule or "—" }}</td></tr>
<tr><th>calibrated on</th><td>{{ p.calibrated_on or "—" }}{% if p.examples %} ({{ p.examples }}
examples){% endif %}</td></tr>
<tr><th>answer precision there</th><td class="n">{{ p.answer_precision | pct }}
(90% interval {{ p.answer_precision_interval_90 | interval }})</td></tr>
<tr><th>answered there</th><td class="n">{{ p.answer_coverage | pct }}</td></tr>
<tr><th>top-1 there (in scope)</th><td class="n">{{ p.top1_in_scope | pct }}</td></tr>
<tr><th>answer threshold</th><td class="n">{{ doc.model.t_answer | threshold }}</td></tr>
<tr><th>clarify threshold</th><td class="n">{{ doc.model.t_clarify | threshold }}</td></tr>
</table>
</div>
{% if doc.labelled %}
{% set d = doc.labelled.delivered %}
<div>
<h2>What it delivered on this set</h2>
<table>
<tr><th>answer precision</th><td class="n">{{ d.precision | pct }}
(90% interval {{ d.precision_interval_90 | interval }})</td></tr>
<tr><th>answered</th><td class="n">{{ d.coverage | pct }} ({{ d.answered }} queries,
{{ d.answered_right }} right)</td></tr>
<tr><th>meets the target</th><td>{{ "—" if d.meets_target is none else ("yes" if d.meets_target
else "no") }}</td></tr>
<tr><th>out of scope not answered</th><td class="n">{{ d.oos_protected | pct }}</td></tr>
<tr><th>latency p50 / p99</th><td class="n">{{ d.latency_p50_ms | num(1) }} /
{{ d.latency_p99_ms | num(1) }} ms</td></tr>
</table>
</div>
{% endif %}
</div>
{% if not doc.model.answers_on_confidence %}
<p class="warn">No confidence level met the target precision when this model was calibrated: it answers
only a KB question typed word for word (and the merchant's small-talk entries).</p>
{% endif %}
{% else %}
<h1>Kefu traffic report</h1>
<p>Generated {{ doc.generated_at }}.</p>
{% endif %}

{% if doc.labelled %}
{% set l = doc.labelled %}
{% if l.unknown_expected_ids %}
<p class="warn">{{ l.unknown_expected_ids | length }} expected id(s) are not entries of this model and can
never be matched; their queries are left out of the figures:
{{ l.unknown_expected_ids[:20] | join(", ") }}</p>
{% endif %}
<h2>Ranking</h2>
{% set r = l.ranking %}
<table>
<tr><th>queries</th><td class="n">{{ r.n_queries }} ({{ r.n_in_scope }} in scope,
{{ r.n_out_of_scope }} out of scope)</td></tr>
<tr><th>top-1 (in scope)</th><td class="n">{{ r.top1 | pct }}</td></tr>
<tr><th>MRR@{{ r.mrr_at }} (in scope)</th><td class="n">{{ r.mrr | num }}</td></tr>
<tr><th>recall@5 (in scope)</th><td class="n">{{ r.recall_at_5 | pct }}</td></tr>
</table>

<div class="cols">
<div>
<h2>Precision / coverage</h2>
<img alt="precision against coverage" src="{{ charts.curve }}">
<table>
<tr><th>operating point</th><th>threshold</th><th>queries</th><th>coverage</th><th>precision</th>
<th>expected offered</th></tr>
{% for op in l.curve.operating_points %}
<tr><td>{{ op.name }}</td><td class="n">{{ op.threshold | threshold }}</td><td class="n">{{ op.count }}</td>
<td class="n">{{ op.coverage | pct }}</td><td class="n">{{ op.precision | pct }}</td>
<td class="n">{{ op.expected_offered | pct if "expected_offered" in op else "" }}</td></tr>
{% endfor %}
</table>
<small>answer: the model's real answers; clarify: answered or offered, as if all were answered.</small>
</div>
<div>
<h2>Calibration</h2>
<img alt="reliability diagram" src="{{ charts.reliability }}">
<table>
<tr><th>confidence</th><th>queries</th><th>mean confidence</th><th>share right</th></tr>
{% for b in l.reliability.bins %}
<tr><td>{{ b.lo | num(1) }} – {{ b.hi | num(1) }}</td><td class="n">{{ b.count }}</td>
<td class="n">{{ b.mean_confidence | num }}</td><td class="n">{{ b.accuracy | pct }}</td></tr>
{% endfor %}
</table>
<p>Expected calibration error: <b>{{ l.reliability.ece | num }}</b></p>
</div>
</div>

<h2>Decisions by kind</h2>
<table>
<tr><th>decision</th><th>queries</th><th>share</th><th>right</th><th>wrong</th><th>out of scope</th>
<th>expected offered</th></tr>
{% for kind, row in l.decisions.items() %}
<tr><td>{{ kind }}</td><td class="n">{{ row.count }}</td><td class="n">{{ row.share | pct }}</td>
<td class="n">{{ row.right }}</td><td class="n">{{ row.wrong }}</td><td class="n">{{ row.out_of_scope }}</td>
<td class="n">{{ row.expected_offered if "expected_offered" in row else "" }}</td></tr>
{% endfor %}
</table>

{% for key, title in [("answered_wrong", "Wrong answers: expected → answered"),
                      ("top1_wrong", "Ranking confusions: expected → ranked first")] %}
<h2>{{ title }}</h2>
{% if l.confusions[key] %}
<table>
<tr><th>expected</th><th>mistaken for</th><th>queries</th><th>examples</th></tr>
{% for c in l.confusions[key] %}
<tr><td>{% if c.expected_id %}<code>{{ c.expected_id }}</code><br>{{ c.expected_question or "" }}
{% else %}<i>out of scope</i>{% endif %}</td>
<td>{% if c.predicted_id %}<code>{{ c.predicted_id }}</code><br>{{ c.predicted_question or "" }}
{% else %}<i>none</i>{% endif %}</td>
<td class="n">{{ c.count }}</td>
<td>{% for e in c.examples %}{{ e.query }} <small>({{ e.decision }}, {{ e.confidence | num(2) }})</small>
{% if not loop.last %}<br>{% endif %}{% endfor %}</td></tr>
{% endfor %}
</table>
{% else %}
<p>None.</p>
{% endif %}
{% endfor %}
{% endif %}

{% if doc.traffic %}
{% set t = doc.traffic %}
{% set n = t.totals %}
<h2 id="traffic">Traffic of shop <code>{{ t.shop }}</code></h2>
<p>{{ t.since }} to {{ t.until }} (Beijing time), per {{ t.bucket }}. Rates are shares of the customers'
questions: small talk is counted apart, and so are an agent's requests for suggestions.</p>
<table>
<tr><th>messages</th><td class="n">{{ n.messages }} in {{ n.conversations }} conversations</td></tr>
<tr><th>questions</th><td class="n">{{ n.questions }}</td></tr>
<tr><th>answered</th><td class="n">{{ n.answer_rate | pct }} ({{ n.answer }})</td></tr>
<tr><th>clarified</th><td class="n">{{ n.clarify_rate | pct }} ({{ n.clarify }})</td></tr>
<tr><th>handed off</th><td class="n">{{ n.handoff_rate | pct }} ({{ n.handoff }})</td></tr>
<tr><th>small talk</th><td class="n">{{ n.smalltalk_share | pct }} of messages ({{ n.smalltalk }})</td></tr>
<tr><th>latency p50 / p95 / p99</th><td class="n">{{ t.latency_ms.p50 | num(1) }} /
{{ t.latency_ms.p95 | num(1) }} / {{ t.latency_ms.p99 | num(1) }} ms</td></tr>
<tr><th>agent requests for suggestions</th><td class="n">{{ n.assist_requests }}</td></tr>
</table>

<h3>Answer, clarify and handoff rates per {{ t.bucket }}</h3>
<img alt="rates over time" src="{{ charts.traffic_rates }}">

<h3>Who took the questions</h3>
<table>
<tr><th></th><th>answered</th><th>clarified</th><th>handed off</th></tr>
{% for skill, row in t.by_skill.items() %}
<tr><td>{{ {"faq": "knowledge base", "orders": "orders (from JD)",
"products": "products (catalog)"}.get(skill, skill) }}</td><td class="n">{{ row.answer }}</td>
<td class="n">{{ row.clarify }}</td><td class="n">{{ row.handoff }}</td></tr>
{% endfor %}
</table>

<div class="cols">
<div>
<h3>Handoffs by reason</h3>
{% if t.handoff_reasons %}
<img alt="handoffs by reason" src="{{ charts.traffic_handoffs }}">
<table>
<tr><th>reason</th><th>handoffs</th><th>share</th></tr>
{% for r in t.handoff_reasons %}
<tr><td>{{ r.code }}</td><td class="n">{{ r.count }}</td><td class="n">{{ r.share | pct }}</td></tr>
{% endfor %}
</table>
{% else %}
<p>None.</p>
{% endif %}
</div>
<div>
<h3>Confidence of the decisions</h3>
{% if charts.traffic_confidence %}
<img alt="confidence by decision" src="{{ charts.traffic_confidence }}">
{% else %}
<p>No question.</p>
{% endif %}
</div>
</div>

<h3>Latency per {{ t.bucket }}</h3>
<img alt="latency over time" src="{{ charts.traffic_latency }}">

<h3>JD ratings by what the bot did in the chat</h3>
{% if t.ratings.ratings %}
<img alt="ratings by what the bot did" src="{{ charts.traffic_ratings }}">
<table>
<tr><th>chat</th><th>ratings</th><th>average</th><th>score {{ t.ratings.low_score }} or less</th>
<th>by score</th></tr>
{% for outcome, row in t.ratings.by_outcome.items() %}
<tr><td>{{ outcomes.get(outcome, outcome) }}</td><td class="n">{{ row.ratings }}</td>
<td class="n">{{ row.average | num(2) }}</td><td class="n">{{ row.dissatisfied_share | pct }}</td>
<td>{% for score, count in row.scores.items() %}{{ score }}: {{ count }}{% if not loop.last %}, {% endif %}
{% endfor %}</td></tr>
{% endfor %}
</table>
{% else %}
<p>No rating from JD in this period.</p>
{% endif %}

<h3>Feedback on these replies</h3>
{% set f = t.feedback %}
<table>
<tr><th>thumbs up</th><td class="n">{{ f.up }}</td></tr>
<tr><th>thumbs down</th><td class="n">{{ f.down }}</td></tr>
<tr><th>agent corrections</th><td class="n">{{ f.correction }} ({{ f.correction_out_of_scope }} out of
scope)</td></tr>
<tr><th>replies with feedback</th><td class="n">{{ f.exchanges }}</td></tr>
</table>

<h3>Entries answered most</h3>
{% if t.top_entries %}
<table>
<tr><th>entry</th><th>question</th><th>answers</th><th>share</th><th>last</th></tr>
{% for e in t.top_entries %}
<tr><td><code>{{ e.entry_id }}</code></td><td>{{ e.question or "—" }}</td><td class="n">{{ e.count }}</td>
<td class="n">{{ e.share | pct }}</td><td>{{ e.last_seen }}</td></tr>
{% endfor %}
</table>
{% else %}
<p>None.</p>
{% endif %}

<h3>Questions handed off most</h3>
{% if t.handed_off_questions %}
<table>
<tr><th>question (masked)</th><th>handoffs</th><th>why</th><th>last</th></tr>
{% for q in t.handed_off_questions %}
<tr><td>{{ q.text }}</td><td class="n">{{ q.count }}</td>
<td>{% for code, count in q.codes.items() %}{{ code }} ({{ count }}){% if not loop.last %}, {% endif %}
{% endfor %}</td><td>{{ q.last_seen }}</td></tr>
{% endfor %}
</table>
{% else %}
<p>None.</p>
{% endif %}
{% endif %}
<p><small>{{ doc.format }} v{{ doc.version }}: the same figures are available as JSON
(<code>kefu report --json</code>).</small></p>
</body>
</html>
"""
