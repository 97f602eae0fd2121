"""Benchmarks: does fusion help, how fast is the hot path, what does a build cost.

The channel ablation reuses the model's own candidate set and evidence and swaps only the ranking
weights, so "sparse alone", "dense alone", "classifier alone" and "fused" are compared on exactly the
same messages and candidates. Latency is per message in-process, normalization and tokenization
included; peak memory is the process's resident high-water mark, read from the OS.
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine import Matcher
from engine.fusion import CANDIDATE_FEATURES

Progress = Callable[[int, int], None]


@dataclass
class AblationRow:
    name: str
    top1: float
    mrr: float
    recall5: float


@dataclass
class BenchReport:
    data: str
    entries: int = 0
    queries: int = 0
    build_seconds: dict[str, float] = field(default_factory=dict)
    peak_rss_mb: dict[str, float] = field(default_factory=dict)
    latency_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    ablation: dict[str, list[AblationRow]] = field(default_factory=dict)
    # the default profile with its dense-skip cascade off and on (cascade_effect)
    cascade: dict[str, dict[str, float]] = field(default_factory=dict)


def peak_rss_mb() -> float:
    """The process's peak resident memory so far (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def channel_variants(m: Matcher) -> dict[str, np.ndarray]:
    """Ranking weights to compare: each channel alone (where the model has it) and the model's fusion."""
    variants: dict[str, np.ndarray] = {}
    present = {
        "sparse": True,
        "dense": m.dense_enabled,
        "centroid": m.dense_enabled,
        "classifier": m.classifier,
    }
    for i, name in enumerate(CANDIDATE_FEATURES):
        if present[name]:
            w = np.zeros(len(CANDIDATE_FEATURES), np.float32)
            w[i] = 1.0
            variants[f"{name} alone"] = w
    variants[f"fused ({m.info.get('calibration', {}).get('fusion', 'default')})"] = m.ranker.weights
    return variants


def ablation(
    m: Matcher, queries: Sequence[tuple[str, str | None]], progress: Progress | None = None
) -> list[AblationRow]:
    """Top-1 / MRR / recall@5 of each ranking variant over the in-scope queries."""
    ids = {e.id: i for i, e in enumerate(m.entries)}
    inscope = [(q, ids[e]) for q, e in queries if e and e in ids]
    variants = channel_variants(m)
    ranks: dict[str, list[int]] = {name: [] for name in variants}
    ok = m.entry_ok()
    original = m.ranker
    try:
        for n, (text, gold) in enumerate(inscope):
            rep = m.represent(text)
            m.ranker = original
            ranking = m.rank(rep, ok)
            for name, w in variants.items():
                fused = ranking.evidence @ w
                order = ranking.cands[np.argsort(-fused, kind="stable")]
                hit = np.flatnonzero(order == gold)
                ranks[name].append(int(hit[0]) + 1 if hit.size else 10**6)
            if progress:
                progress(n + 1, len(inscope))
    finally:
        m.ranker = original
    rows = []
    for name, r in ranks.items():
        a = np.asarray(r, dtype=float)
        rows.append(AblationRow(name, float(np.mean(a == 1)), float(np.mean(1 / a)), float(np.mean(a <= 5))))
    return rows


def latency(m: Matcher, texts: Sequence[str], warmup: int = 50) -> dict[str, float]:
    """p50 / p99 / mean milliseconds per `match` call."""
    for t in texts[:warmup]:
        m.match(t, top_k=5)
    out = np.empty(len(texts))
    for i, t in enumerate(texts):
        t0 = time.perf_counter()
        m.match(t, top_k=5)
        out[i] = time.perf_counter() - t0
    ms = out * 1e3
    return {"p50": float(np.median(ms)), "p99": float(np.percentile(ms, 99)), "mean": float(ms.mean())}


def cascade_effect(m: Matcher, queries: Sequence[tuple[str, str | None]]) -> dict[str, dict[str, float]]:
    """The model's dense-skip cascade (engine.cascade) off and on over the same messages, each pass with
    an empty encoder cache: top-1 (in scope), answered share, answer precision, share of messages that
    skipped the encoder, and p50 / p99 / mean milliseconds per match."""
    out: dict[str, dict[str, float]] = {}
    for name, on in (("full", False), ("cascade", True)):
        if m.embedder is not None:
            m.embedder._cache.clear()
        ms, hits, n_in, answered, right, skipped = [], 0, 0, 0, 0, 0
        for text, gold in queries:
            t0 = time.perf_counter()
            r = m.match(text, top_k=5, cascade=on)
            ms.append((time.perf_counter() - t0) * 1e3)
            best = r.candidates[0].entry_id if r.candidates else None
            n_in += bool(gold)
            hits += bool(gold) and best == gold
            if r.decision.value == "answer":
                answered += 1
                right += bool(gold) and r.entry_id == gold
            skipped += r.dense_skipped
        a = np.asarray(ms)
        out[name] = {
            "top1": hits / max(n_in, 1),
            "answered": answered / max(len(queries), 1),
            "precision": right / max(answered, 1),
            "skipped": skipped / max(len(queries), 1),
            "p50": float(np.median(a)),
            "p99": float(np.percentile(a, 99)),
            "mean": float(a.mean()),
        }
    return out


def run(
    data_dir: str | Path,
    queries: Sequence[tuple[str, str | None]],
    *,
    profiles: Sequence[str] = ("fast", "default"),
    latency_queries: int = 2000,
    say: Callable[[str], Any] = print,
) -> BenchReport:
    """Build each profile on `data_dir/kb.csv`, then time it and ablate its channels."""
    kb = Path(data_dir) / "kb.csv"
    report = BenchReport(str(data_dir), queries=len(queries))
    texts = [q for q, _ in queries][:latency_queries]
    for profile in profiles:
        say(f"building {profile} profile on {kb} ...")
        t0 = time.perf_counter()
        m = Matcher.build(kb, dense=profile != "fast")
        report.build_seconds[profile] = time.perf_counter() - t0
        report.peak_rss_mb[profile] = peak_rss_mb()
        report.entries = len(m)
        say(f"timing {profile} profile on {len(texts)} messages ...")
        report.latency_ms[profile] = latency(m, texts)
        if profile == "default":
            say(f"default profile with and without its cascade on {len(texts)} messages ...")
            report.cascade = cascade_effect(m, list(queries)[:latency_queries])
        say(f"ablating {profile} profile ...")
        report.ablation[profile] = ablation(m, queries)
        del m
    return report
