"""`kefu bench-shops`: one replica serving many shops, each with its own model (issue 9 part 4).

Seeds a fresh SQLite database and data directory with N shops of Q questions each, then starts one real
server (one uvicorn worker: one replica's process) without warm-up and with a memory budget, and sends
every shop a first message (a cold load: the model is read from disk on that message), then a second
(warm), then messages to shops drawn at random (some still loaded, some evicted and loaded again).
Prints the replica's peak and final RSS, how many models it held and evicted, and the latencies of cold
and warm replies as the client saw them, beside the server's own model-load times.

Builds are the slow part of a 1,000-shop setup, so `--distinct` KBs (default 5) are built once, each
from real questions of the shared sets grown with seeded synthetic ones (training/scale.prepare), and
their model directories copied, one full copy per shop: every shop's model is its own files, loaded and
mapped on its own, exactly as if it had been built for that shop.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

Say = Callable[[str], None]


@dataclass
class ShopsConfig:
    data_dirs: Sequence[Path]
    shops: int = 1000
    questions: int = 1000
    distinct: int = 5
    dense: bool = False
    memory_mb: float = 3000.0
    random_messages: int = 1000
    seed: int = 0
    work_dir: Path | None = None  # kept (and reused for the built KBs) when given


@dataclass
class ShopsReport:
    shops: int
    questions: int
    profile: str
    memory_budget_mb: float
    seed_seconds: float
    rss_start_mb: float
    rss_peak_mb: float
    rss_end_mb: float
    models_loaded_end: float
    evictions: float
    cold_ms: dict[str, float]
    warm_ms: dict[str, float]
    random_ms: dict[str, float]
    server_load_ms: dict[str, float]
    errors: int
    machine: dict[str, Any] = field(default_factory=dict)


def _pcts(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {}
    a = np.asarray(values)
    return {
        "n": float(len(a)),
        "p50": float(np.percentile(a, 50)),
        "p95": float(np.percentile(a, 95)),
        "p99": float(np.percentile(a, 99)),
        "max": float(a.max()),
    }


def _tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and its children (uvicorn's workers, build children), in MB."""
    total = 0
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/status", encoding="ascii") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
            with open(f"/proc/{p}/task/{p}/children", encoding="ascii") as f:
                todo.extend(int(c) for c in f.read().split())
        except OSError:
            continue
    return total / 1024


class _RssPoller:
    def __init__(self, pid: int, every: float = 0.2) -> None:
        self.pid, self.every, self.peak = pid, every, 0.0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.peak = max(self.peak, _tree_rss_mb(self.pid))

    def stop(self) -> float:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, _tree_rss_mb(self.pid))
        return self.peak


def _build_models(cfg: ShopsConfig, work: Path, say: Say) -> list[tuple[Path, Path, list[str]]]:
    """`distinct` (KB file, model dir, queries) triples, built once and reused by later runs."""
    from engine import Matcher
    from training.scale import prepare

    out = []
    for k in range(cfg.distinct):
        kb, queries = prepare(cfg.questions, cfg.data_dirs, work / "kbs", 200, seed=cfg.seed + k)
        model = work / "models" / f"{'default' if cfg.dense else 'fast'}-{cfg.questions}-{k}"
        if not (model / "manifest.json").is_file():
            t0 = time.perf_counter()
            Matcher.build(kb, dense=cfg.dense).save(model)
            say(
                f"built model {k + 1}/{cfg.distinct} ({cfg.questions} questions) "
                f"in {time.perf_counter() - t0:.0f} s"
            )
        lines = [q for q in queries.read_text(encoding="utf-8").splitlines() if q.strip()]
        out.append((kb, model, lines))
    return out


def _seed(
    cfg: ShopsConfig, work: Path, built: list[tuple[Path, Path, list[str]]], say: Say
) -> dict[str, str]:
    """A fresh database with the shops, their one ready and active version, and each shop's own copy of
    its model under the data directory; returns shop -> API key."""
    from api.db.migrate import upgrade
    from api.db.models import KBVersion, Shop, utcnow
    from api.db.session import Database
    from api.web.auth import hash_key, new_api_key
    from engine.kb import kb_hash, load_kb

    db_path, data = work / "kefu.db", work / "data"
    if db_path.exists():
        db_path.unlink()
    shutil.rmtree(data, ignore_errors=True)
    db = Database(f"sqlite:///{db_path}")
    upgrade(db.engine)
    kbs = [load_kb(kb) for kb, _, _ in built]
    snapshots = [[e.to_dict() for e in entries] for entries in kbs]
    keys: dict[str, str] = {}
    for i in range(cfg.shops):
        shop, group = f"shop-{i:05d}", i % len(built)
        key = new_api_key()
        keys[shop] = key
        with db.session() as s:
            s.add(Shop(id=shop, name=shop, mode="auto", api_key_hash=hash_key(key), settings={}))
            s.flush()
            s.add(
                KBVersion(
                    shop_id=shop,
                    version=1,
                    status="ready",
                    kb_hash=kb_hash(kbs[group]),
                    entries=len(kbs[group]),
                    snapshot=snapshots[group],
                    options={},
                    metrics={},
                    stage=None,
                    finished_at=utcnow(),
                    heartbeat_at=utcnow(),
                )
            )
            s.flush()
            row = s.get(Shop, shop)
            assert row is not None
            row.active_version = 1
        shutil.copytree(built[group][1], data / "shops" / shop / "v1")
        if (i + 1) % 200 == 0:
            say(f"seeded {i + 1}/{cfg.shops} shops")
    db.dispose()
    return keys


def _scrape(url: str) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    text = httpx.get(f"{url}/metrics", timeout=30).text
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name in (
                "kefu_models_loaded",
                "kefu_model_evictions_total",
                "kefu_model_load_seconds_count",
            ):
                out[s.name] = out.get(s.name, 0.0) + s.value
    return out


def run(cfg: ShopsConfig, say: Say = print) -> ShopsReport:
    from training.loadtest import Server, _free_port

    with contextlib.ExitStack() as stack:
        if cfg.work_dir is not None:
            work = cfg.work_dir
            work.mkdir(parents=True, exist_ok=True)
        else:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="kefu-shops-")))
        built = _build_models(cfg, work, say)
        t0 = time.perf_counter()
        keys = _seed(cfg, work, built, say)
        seed_seconds = time.perf_counter() - t0
        say(f"seeded {cfg.shops} shops in {seed_seconds:.0f} s")
        env = {
            **os.environ,
            "KEFU_DATABASE_URL": f"sqlite:///{work / 'kefu.db'}",
            "KEFU_DATA_DIR": str(work / "data"),
            "KEFU_ADMIN_TOKEN": secrets.token_urlsafe(24),
            "KEFU_KB_PATH": "",
            "KEFU_MODEL_PATH": str(work / "no-legacy-model"),
            "KEFU_EVALUATION_PULL_INTERVAL": "0",
            "KEFU_WARM_UP": "false",
            "KEFU_MODEL_MEMORY_MB": str(cfg.memory_mb),
            "KEFU_RATE_LIMIT_SHOP": "0",
            "KEFU_RATE_LIMIT_CLIENT": "0",
            "KEFU_LOG_LEVEL": "WARNING",
        }
        env.pop("KEFU_REDIS_URL", None)
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        server = Server(env, _free_port(), 1, work / "server.log")
        stack.callback(server.stop)
        server.wait_healthy(120)
        rss_start = _tree_rss_mb(server.proc.pid)
        poller = _RssPoller(server.proc.pid)
        rng = random.Random(cfg.seed)
        shops = sorted(keys)
        errors = 0
        cold: list[float] = []
        warm: list[float] = []
        rand: list[float] = []
        with httpx.Client(base_url=server.url, timeout=60) as client:

            def send(shop: str, text: str, into: list[float]) -> None:
                nonlocal errors
                t = time.perf_counter()
                r = client.post(
                    f"/v1/shops/{shop}/messages",
                    headers={"X-API-Key": keys[shop]},
                    json={"conversation_id": f"c{rng.randrange(10**9)}", "text": text},
                )
                into.append((time.perf_counter() - t) * 1000)
                if r.status_code != 200:
                    errors += 1
                    if errors <= 3:
                        say(f"{shop}: {r.status_code} {r.text[:200]}")

            def text_for(shop: str) -> str:
                lines = built[int(shop.split("-")[1]) % len(built)][2]
                return lines[rng.randrange(len(lines))]

            for i, shop in enumerate(shops):
                send(shop, text_for(shop), cold)
                send(shop, text_for(shop), warm)
                if (i + 1) % 200 == 0:
                    say(
                        f"{i + 1}/{len(shops)} shops answered; "
                        f"replica RSS {_tree_rss_mb(server.proc.pid):.0f} MB"
                    )
            for _ in range(cfg.random_messages):
                shop = shops[rng.randrange(len(shops))]
                send(shop, text_for(shop), rand)
        metrics = _scrape(server.url)
        peak = poller.stop()
        rss_end = _tree_rss_mb(server.proc.pid)
        loads = _server_load_ms(server.url)
    import platform

    return ShopsReport(
        shops=cfg.shops,
        questions=cfg.questions,
        profile="default" if cfg.dense else "fast",
        memory_budget_mb=cfg.memory_mb,
        seed_seconds=seed_seconds,
        rss_start_mb=rss_start,
        rss_peak_mb=peak,
        rss_end_mb=rss_end,
        models_loaded_end=metrics.get("kefu_models_loaded", 0.0),
        evictions=metrics.get("kefu_model_evictions_total", 0.0),
        cold_ms=_pcts(cold),
        warm_ms=_pcts(warm),
        random_ms=_pcts(rand),
        server_load_ms=loads,
        errors=errors,
        machine={"cpus": os.cpu_count(), "load_avg": os.getloadavg(), "python": platform.python_version()},
    )


def _server_load_ms(url: str) -> dict[str, float]:
    """The server's model-load histogram: count, mean, and the share of loads within 100 and 300 ms."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url}/metrics", timeout=30).text
    buckets: dict[float, float] = {}
    total = count = 0.0
    for fam in text_string_to_metric_families(text):
        if fam.name != "kefu_model_load_seconds":
            continue
        for s in fam.samples:
            if s.name.endswith("_bucket"):
                le = float(s.labels["le"])
                buckets[le] = buckets.get(le, 0.0) + s.value
            elif s.name.endswith("_sum"):
                total += s.value
            elif s.name.endswith("_count"):
                count += s.value
    if not count:
        return {}
    return {
        "n": count,
        "mean": 1000 * total / count,
        "within_100ms": buckets.get(0.1, 0.0) / count,
        "within_300ms": buckets.get(0.3, 0.0) / count,
    }


def print_report(rep: ShopsReport, say: Say) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(
        title=f"{rep.shops} shops x {rep.questions} questions, {rep.profile} profile, one replica (1 worker)"
    )
    t.add_column("figure")
    t.add_column("value", justify="right")
    t.add_row("memory budget (KEFU_MODEL_MEMORY_MB)", f"{rep.memory_budget_mb:.0f} MB")
    t.add_row(
        "replica RSS: start / peak / end",
        f"{rep.rss_start_mb:.0f} / {rep.rss_peak_mb:.0f} / {rep.rss_end_mb:.0f} MB",
    )
    t.add_row("models loaded at the end / evictions", f"{rep.models_loaded_end:.0f} / {rep.evictions:.0f}")
    for name, d in (
        ("cold first reply", rep.cold_ms),
        ("warm reply", rep.warm_ms),
        ("random shop", rep.random_ms),
    ):
        if d:
            t.add_row(
                f"{name}: p50 / p95 / p99 / max",
                f"{d['p50']:.1f} / {d['p95']:.1f} / {d['p99']:.1f} / {d['max']:.1f} ms",
            )
    if rep.server_load_ms:
        s = rep.server_load_ms
        t.add_row(
            "server model loads: n, mean, within 300 ms",
            f"{s['n']:.0f}, {s['mean']:.1f} ms, {100 * s['within_300ms']:.1f}%",
        )
    t.add_row("errors", str(rep.errors))
    t.add_row("load average at the end", ", ".join(f"{x:.2f}" for x in rep.machine.get("load_avg", ())))
    Console().print(t)
    ok_rss = rep.rss_peak_mb <= 4096
    cold99 = rep.cold_ms.get("p99", float("nan"))
    ok_cold = cold99 <= 300
    say(
        f"bars: peak RSS <= 4 GB: {'OK' if ok_rss else 'NOT MET'} ({rep.rss_peak_mb:.0f} MB); "
        f"cold first reply p99 <= 300 ms: {'OK' if ok_cold else 'NOT MET'} ({cold99:.1f} ms)"
    )


def to_json(rep: ShopsReport) -> dict[str, Any]:
    return asdict(rep)


def write_json(rep: ShopsReport, path: Path) -> None:
    path.write_text(json.dumps(to_json(rep), indent=2), encoding="utf-8")
