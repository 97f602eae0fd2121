"""Speed from 1k to 1M KB questions: Kefu (sparse only, default channels) against bm25s and TF-IDF.

Each (system, size) runs in its own process, so its build time and peak resident memory are its own and
one system's caches do not warm another's. The KB at a size is the shared sets' real questions, grown with
seeded synthetic e-commerce questions (training/synthetic.py); the queries are real customer queries from
the same sets and paraphrases of the KB's questions, so the terms a query touches follow the KB. Latency is
per message in-process, normalization and tokenization included, one at a time, after a warm-up.

For the default channels the dense index's top-5 is also compared with an exact inner-product search over
the same vectors (recall@5 of the ANN index), which is what "the ANN index keeps recall" means.
"""

from __future__ import annotations

import csv
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from training.plots import save_figure

SYSTEMS = ("kefu-fast", "kefu-default", "bm25s", "tfidf")
DEFAULT_SIZES = (1_000, 10_000, 100_000, 1_000_000)
# the bars, dense channel off (ms of p50 by size) and the ratio to bm25s at every size
TARGET_P50_MS = {10_000: 0.3, 100_000: 3.0, 1_000_000: 30.0}
TARGET_RATIO = 1.5
TARGET_BUILD_100K_S = 30.0
TARGET_BUILD_100K_MB = 2048.0
TARGET_ANN_RECALL = 0.99


@dataclass
class Cell:
    system: str
    size: int
    build_s: float | None = None
    peak_rss_mb: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    queries: int = 0
    ann_recall5: float | None = None
    index: str = ""
    load_s: float | None = None  # Matcher.load of the saved model (Kefu only)
    encode_s: float | None = None  # default channels: the encoder's share of build_s
    vectors_stored: int = 0  # of them, read from a vector store (training/vectorstore.py), not encoded
    error: str = ""


@dataclass
class ScaleReport:
    sizes: list[int]
    queries: int
    seed: int
    cells: list[Cell] = field(default_factory=list)
    machine: dict[str, Any] = field(default_factory=dict)

    def cell(self, system: str, size: int) -> Cell | None:
        return next((c for c in self.cells if c.system == system and c.size == size), None)

    def verdicts(self) -> list[tuple[str, bool | None]]:
        """The issue's bars as (description, met); None where the run did not measure it."""
        out: list[tuple[str, bool | None]] = []
        for size, target in TARGET_P50_MS.items():
            c = self.cell("kefu-fast", size)
            out.append(
                (
                    f"fast p50 <= {target} ms at {size:,}",
                    None if c is None or c.p50_ms is None else c.p50_ms <= target,
                )
            )
        for size in self.sizes:
            k, b = self.cell("kefu-fast", size), self.cell("bm25s", size)
            ok = (
                None
                if not k or not b or k.p50_ms is None or b.p50_ms is None
                else b.p50_ms / k.p50_ms >= TARGET_RATIO
            )
            out.append((f">= {TARGET_RATIO}x bm25s at {size:,}", ok))
        c = self.cell("kefu-fast", 100_000)
        out.append(
            (
                f"fast build of 100,000 <= {TARGET_BUILD_100K_S:.0f} s"
                f" and <= {TARGET_BUILD_100K_MB / 1024:.0f} GB",
                None
                if c is None or c.build_s is None or c.peak_rss_mb is None
                else c.build_s <= TARGET_BUILD_100K_S and c.peak_rss_mb <= TARGET_BUILD_100K_MB,
            )
        )
        for size in (100_000, 1_000_000):
            c = self.cell("kefu-default", size)
            out.append(
                (
                    f"ANN recall@5 >= {TARGET_ANN_RECALL} at {size:,}",
                    None if c is None or c.ann_recall5 is None else c.ann_recall5 >= TARGET_ANN_RECALL,
                )
            )
        return out


# --------------------------------------------------------------------------- data


def _real_rows(data_dirs: Sequence[Path]) -> tuple[list[dict[str, str]], list[str]]:
    rows: list[dict[str, str]] = []
    queries: list[str] = []
    for d in data_dirs:
        with open(d / "kb.csv", encoding="utf-8", newline="") as f:
            rows.extend(dict(r) for r in csv.DictReader(f))
        with open(d / "queries.csv", encoding="utf-8", newline="") as f:
            queries.extend(r["query"] for r in csv.DictReader(f) if r.get("query"))
    return rows, queries


def _questions(row: dict[str, str]) -> list[str]:
    return [row["question"], *[s for s in (row.get("similar") or "").split("|") if s]]


def prepare(
    size: int, data_dirs: Sequence[Path], out_dir: Path, n_queries: int, seed: int
) -> tuple[Path, Path]:
    """Write kb.csv (`size` questions) and queries.txt for one size; reused when already there."""
    import jieba

    from engine.paraphrase import ParaphraseGenerator
    from training.synthetic import iter_rows, synthetic_questions

    d = out_dir / f"kb-{size}-seed{seed}"
    kb_path, q_path = d / "kb.csv", d / "queries.txt"
    if kb_path.exists() and q_path.exists():
        return kb_path, q_path
    d.mkdir(parents=True, exist_ok=True)
    real, real_queries = _real_rows(data_dirs)
    rng = random.Random(seed)
    rng.shuffle(real)
    rows: list[dict[str, str]] = []
    count = 0
    for r in real:  # real entries first, whole, while they fit
        n = len(_questions(r))
        if count + n > size:
            continue
        rows.append(r)
        count += n
    existing = {q for r in rows for q in _questions(r)}
    rows.extend(iter_rows(synthetic_questions(size - count, seed=seed, exclude=existing)))
    tmp = kb_path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["id", "question", "similar", "answer", "category"])
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in w.fieldnames})
    os.replace(tmp, kb_path)
    # half real customer queries, half paraphrases of questions drawn from the KB itself
    qs = list(real_queries)
    rng.shuffle(qs)
    queries = qs[: n_queries // 2]
    questions = [q for r in rows for q in _questions(r)]
    picks = [questions[rng.randrange(len(questions))] for _ in range(4 * n_queries)]
    jieba.setLogLevel(60)
    gen = ParaphraseGenerator().fit(picks)
    nrng = np.random.default_rng(seed)
    for q in picks:
        if len(queries) >= n_queries:
            break
        p = gen.generate(jieba.lcut(q), nrng)
        queries.append(p or q)
    q_path.write_text("\n".join(q.replace("\n", " ") for q in queries) + "\n", encoding="utf-8")
    return kb_path, q_path


# --------------------------------------------------------------------------- one cell, in its own process


def _peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def _time_queries(fn: Callable[[str], Any], queries: Sequence[str], warmup: int = 50) -> np.ndarray:
    for q in queries[:warmup]:
        fn(q)
    out = np.empty(len(queries))
    for i, q in enumerate(queries):
        t = time.perf_counter()
        fn(q)
        out[i] = time.perf_counter() - t
    return out * 1e3


def _kefu(kb: Path, queries: list[str], dense: bool, store_dir: Path | None = None) -> dict[str, Any]:
    from engine import Matcher
    from engine.embed import CachedEmbedder

    store = None
    if dense and store_dir is not None:
        from training.vectorstore import StoredVectors

        store = StoredVectors(store_dir)
    t = time.perf_counter()
    # from the file, as `kefu build` does: reading and checking included
    m = Matcher.build(kb, dense=dense, embedder=store)
    build = time.perf_counter() - t
    extra: dict[str, Any] = {}
    if store is not None:
        store.flush()
        # what a build from scratch costs: this run's wall time, with the stored vectors' recorded
        # encoding time in place of reading them
        build += store.used_seconds_ - store.fresh_seconds_
        extra = {"encode_s": store.used_seconds_, "vectors_stored": store.stored_}
        m.embedder = CachedEmbedder(store.inner)  # messages are encoded as served, never read from the store
    lat = _time_queries(lambda q: m.match(q, top_k=5), queries)
    out: dict[str, Any] = {"build_s": build, "latency_ms": lat.tolist(), **extra}
    if dense and m.dense_index is not None:
        out["index"] = m.dense_index.kind_
        out["ann_recall5"] = _ann_recall(m, queries)
    out["peak_rss_mb"] = _peak_rss_mb()  # the build's and the queries', before the load below adds to it
    with tempfile.TemporaryDirectory(prefix="kefu-scale-") as d:
        m.save(d)
        t = time.perf_counter()
        Matcher.load(d)  # what a replica pays to serve this shop after a restart
        out["load_s"] = time.perf_counter() - t
    return out


def _ann_recall(m: Any, queries: Sequence[str], k: int = 5) -> float:
    """Share of the exact top-k rows (brute-force inner product) the served index also returns."""
    index = m.dense_index
    vecs = index.vectors_
    hits = total = 0
    for q in queries:
        rep = m.represent(q)
        if rep.dense is None:
            continue
        v = np.asarray(rep.dense, np.float32).reshape(-1)
        ann, _ = index.search(v, k)
        exact = np.argpartition(-(vecs @ v), k)[:k]
        hits += len(set(ann.tolist()) & set(exact.tolist()))
        total += k
    return hits / total if total else float("nan")


def _bm25s(kb: Path, queries: list[str]) -> dict[str, Any]:
    import bm25s
    import jieba

    jieba.setLogLevel(60)
    docs = _kb_questions(kb)
    t = time.perf_counter()
    ret = bm25s.BM25()
    ret.index([jieba.lcut(s) for s in docs], show_progress=False)
    build = time.perf_counter() - t
    lat = _time_queries(
        lambda q: ret.retrieve([jieba.lcut(q)], k=5, show_progress=False, n_threads=1), queries
    )
    return {"build_s": build, "latency_ms": lat.tolist()}


def _tfidf(kb: Path, queries: list[str]) -> dict[str, Any]:
    import jieba
    from sklearn.feature_extraction.text import TfidfVectorizer

    jieba.setLogLevel(60)
    docs = _kb_questions(kb)
    t = time.perf_counter()
    vec = TfidfVectorizer(tokenizer=jieba.lcut, token_pattern=None, lowercase=False, sublinear_tf=True)
    X = vec.fit_transform(docs).T.tocsr()  # terms x docs: a query's product touches its terms' rows

    def top5(q: str) -> np.ndarray:
        s = (vec.transform([q]) @ X).toarray().ravel()
        return np.argpartition(-s, 5)[:5] if s.size > 5 else np.argsort(-s)

    build = time.perf_counter() - t
    lat = _time_queries(top5, queries)
    return {"build_s": build, "latency_ms": lat.tolist()}


def _kb_questions(kb: Path) -> list[str]:
    with open(kb, encoding="utf-8", newline="") as f:
        return [q for r in csv.DictReader(f) for q in _questions(r)]


def run_cell(system: str, kb: Path, queries_file: Path, store_dir: Path | None = None) -> dict[str, Any]:
    """Measure one system on one KB in this process (called in a child process by `run`); `store_dir`:
    the default channels' KB vectors are read from (and added to) this vector store."""
    queries = [q for q in queries_file.read_text(encoding="utf-8").splitlines() if q]
    if system == "kefu-fast":
        out = _kefu(kb, queries, dense=False)
    elif system == "kefu-default":
        out = _kefu(kb, queries, dense=True, store_dir=store_dir)
    elif system == "bm25s":
        out = _bm25s(kb, queries)
    elif system == "tfidf":
        out = _tfidf(kb, queries)
    else:
        raise ValueError(f"unknown system {system!r} (expected one of {', '.join(SYSTEMS)})")
    out.setdefault("peak_rss_mb", _peak_rss_mb())
    return out


# --------------------------------------------------------------------------- the run


def run(
    sizes: Sequence[int],
    systems: Sequence[str],
    data_dirs: Sequence[Path],
    work_dir: Path,
    n_queries: int = 1000,
    seed: int = 0,
    default_max_size: int = 100_000,
    timeout_s: float = 3600.0,
    say: Callable[[str], None] = lambda s: None,
    vector_store: Path | None = None,
) -> ScaleReport:
    """Every system at every size, each in a child process; the default channels up to `default_max_size`
    (encoding a million questions on a 2-core machine takes hours: ask for it explicitly, and fill a
    `vector_store` ahead with `python -m training.vectorstore fill`)."""
    report = ScaleReport(sizes=list(sizes), queries=n_queries, seed=seed, machine=_machine())
    for size in sizes:
        say(f"preparing {size:,} questions")
        kb, qf = prepare(size, data_dirs, work_dir, n_queries, seed)
        for system in systems:
            if system == "kefu-default" and size > default_max_size:
                continue
            say(f"{system} at {size:,}")
            cell = Cell(system=system, size=size)
            cmd = [sys.executable, "-m", "training.scale", system, str(kb), str(qf)]
            if vector_store is not None:
                cmd.append(str(vector_store))
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
            except subprocess.TimeoutExpired:
                cell.error = f"timed out after {timeout_s:.0f} s"
            else:
                if proc.returncode != 0:
                    cell.error = (proc.stderr.strip().splitlines() or ["failed"])[-1][:300]
                else:
                    res = json.loads(proc.stdout.strip().splitlines()[-1])
                    lat = np.asarray(res["latency_ms"])
                    cell.build_s = res["build_s"]
                    cell.peak_rss_mb = res["peak_rss_mb"]
                    cell.p50_ms = float(np.median(lat))
                    cell.p99_ms = float(np.percentile(lat, 99))
                    cell.queries = int(lat.size)
                    cell.ann_recall5 = res.get("ann_recall5")
                    cell.index = res.get("index", "")
                    cell.load_s = res.get("load_s")
                    cell.encode_s = res.get("encode_s")
                    cell.vectors_stored = int(res.get("vectors_stored", 0))
            report.cells.append(cell)
    return report


def _machine() -> dict[str, Any]:
    import platform

    return {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def to_json(report: ScaleReport) -> dict[str, Any]:
    doc = asdict(report)
    doc["verdicts"] = [{"bar": b, "met": ok} for b, ok in report.verdicts()]
    return doc


def plot(report: ScaleReport, path: Path) -> Path:
    """p50 latency and build time against KB size, log-log, one line per system; the file's suffix
    (.png, .svg or .pdf) chooses its format."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for system in SYSTEMS:
        cells = [c for c in report.cells if c.system == system and c.p50_ms is not None]
        if not cells:
            continue
        xs = [c.size for c in cells]
        axes[0].plot(xs, [c.p50_ms for c in cells], marker="o", label=system)
        axes[1].plot(xs, [c.build_s for c in cells], marker="o", label=system)
    for size, target in TARGET_P50_MS.items():
        axes[0].plot([size], [target], marker="_", markersize=18, color="grey")
    for ax, title in zip(axes, ("p50 latency per message (ms)", "build (s)"), strict=True):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("KB questions")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend()
    fig.suptitle(f"kefu bench --scale ({report.machine.get('cpus')} CPUs, {report.queries} queries per size)")
    fig.tight_layout()
    try:
        return save_figure(fig, path, dpi=110)  # .png, .svg or .pdf, by the suffix
    finally:
        plt.close(fig)


def main(argv: Sequence[str]) -> int:
    """Child-process entry: `python -m training.scale SYSTEM KB QUERIES [VECTOR_STORE]` prints a JSON line."""
    system, kb, queries, *store = argv
    print(json.dumps(run_cell(system, Path(kb), Path(queries), Path(store[0]) if store else None)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
