"""The last evaluation of a shop's model: the build-time figures its manifest states (engine/build.py)."""

from __future__ import annotations

from typing import Any

from api.console.web import Console


def last_evaluation(console: Console) -> dict[str, Any] | None:
    """The served model's build-time figures: thresholds, coverage, precision interval, coverage curve."""
    served = console.service.served(console.shop.id, console.shop.active_version)
    if served is None:
        return None
    info = served.matcher.info
    cal = info.get("calibration") or {}
    return {
        "version": served.version,
        "target_precision": info.get("target_precision"),
        "threshold_confidence": info.get("threshold_confidence"),
        "t_answer": cal.get("t_answer"),
        "t_clarify": cal.get("t_clarify"),
        "coverage": cal.get("cv_answer_coverage"),
        "precision": cal.get("cv_answer_precision"),
        "interval": cal.get("answer_precision_interval_90"),
        "top1": cal.get("cv_top1_in_scope"),
        "examples_in": cal.get("examples_in_scope"),
        "examples_out": cal.get("examples_out_of_scope"),
        "synthetic": cal.get("synthetic_paraphrases"),
        "rule": cal.get("threshold_rule"),
        "curve": cal.get("coverage_by_target") or [],
        "entries": info.get("entries"),
        "build_seconds": info.get("build_seconds"),
    }
