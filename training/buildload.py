"""Serving latency while shops publish: p99 of customer messages idle vs while ten shops build at once.

`kefu loadtest --publishers 10` (or `main()`) starts `uvicorn api.main:app --workers 2` on the embedded
default (a fresh SQLite database and SQLite task queue in a temporary directory, no Redis) unless
--database-url / --redis-url say otherwise. One shop's KB is published and served; ten other shops get
their KB uploaded. Then clients send POST /v1/shops/{shop}/messages at a fixed rate (real HTTP): first for
`idle` seconds with nothing building, then from the moment the ten shops publish at once until all ten
versions are finished (each serving process consumes the build queue and builds in a niced child process),
then idle again (with `rounds`, that many building phases each followed by an idle one: each round
after the first uploads the KB with one more entry and publishes it). With `build_worker` the serving
processes consume no builds (KEFU_BUILD_IN_PROCESS=false): a `kefu worker --queue builds` process beside
them does, as many at once as the serving workers would have (the deployment the README recommends where
serving must not feel builds). It prints p50/p99 of each
phase and the serving processes' CPU time per message in it, the ratio p99(builds) / p99(idle) over all
phases of each kind pooled (the issue's bar: <= 1.2) with a 90% block-bootstrap interval, how the builds
ended and the load average (the machine may be shared).

With `control`, a last phase as long as the builds took runs no build but one CPU-bound process per CPU
at the builds' priority (nice 19, SCHED_IDLE, its session lowered), each multiplying matrices and
sweeping an array larger than the caches: what any work sharing the CPUs costs serving, whatever it is.
Its ratio to idle is the floor a build can reach on this machine by scheduling alone; a builds ratio
near it says the builds add nothing of their own.

With `split_cpus`, serving (KEFU_SERVE_CPUS) and this process's clients run on the first half of the CPUs,
builds (KEFU_BUILD_CPUS: build children, the `kefu worker`) and the control's burners on the rest: the
deployment where priorities are not asked to keep builds off serving's tail (api/cpu_affinity.py).
"""

from __future__ import annotations

import contextlib
import csv
import gc
import io
import multiprocessing
import os
import re
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from api.cpu_affinity import pin_process
from training.loadtest import (
    DEMO_KB,
    ROOT,
    LoadTestError,
    Server,
    _check,
    _free_port,
    _legacy_kb,
    stop_group,
)

BAR = 1.2
# the serving processes watch their event loop every LOOP_CHECK_MS and log a wake-up STALL_MS late or more
# (api/web/looplag.py), unless KEFU_LOOP_LAG_* are set: a stall delays every message of its process at once
LOOP_CHECK_MS, STALL_MS = 10, 10
_STALL = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) WARNING kefu\.api: event loop (\d+) ms late")
PCT_LEVEL = 90  # the interval printed for the p99 ratio


@dataclass
class BuildLoadConfig:
    publishers: int = 10
    idle: float = 30.0  # seconds of each idle phase
    rate: float = 20.0  # messages per second, all clients together
    clients: int = 4
    workers: int = 2
    dense: bool = False
    kb: Path = DEMO_KB
    database_url: str | None = None  # default: a fresh SQLite file
    redis_url: str | None = None  # default: none (queue and state embedded)
    build_timeout: float = 1800.0
    startup_timeout: float = 180.0
    build_worker: bool = False  # builds in a `kefu worker` process instead of the serving processes
    control: bool = False  # a last phase with idle-priority CPU burners instead of builds
    burners: int = 0  # CPU burners in the control phase; 0: one per CPU (per build CPU with split_cpus)
    split_cpus: bool = False  # serving and this client on the first half of the CPUs, builds on the rest
    rounds: int = 1  # publish-all rounds, each followed by an idle phase (more messages for the p99s)


@dataclass
class Phase:
    name: str
    latencies: list[float] = field(default_factory=list)
    # when each of `latencies` was sent, in seconds after the phase began: where the slow ones fall
    sent: list[float] = field(default_factory=list)
    errors: int = 0
    seconds: float = 0.0
    load: tuple[float, float, float] = (0.0, 0.0, 0.0)
    # CPU seconds the serving processes used during the phase (nan: not read). Per message, it tells a
    # phase in which serving did more work from one in which it only waited for a CPU
    serving_cpu: float = float("nan")
    # wall-clock bounds (time.time()), to place the serving processes' logged loop stalls in the phase
    started: float = 0.0
    ended: float = 0.0
    # the serving processes' event-loop wake-ups at least STALL_MS late in the phase (ms each)
    stalls: list[float] = field(default_factory=list)
    # for each of `latencies`, its Server-Timing header's durations (seconds; see `timings`): `app`, how
    # long the app held the message (the rest of a latency was spent outside it: socket, HTTP parsing,
    # waiting for a CPU or the event loop), and the stages of the turn inside it
    timings: list[dict[str, float]] = field(default_factory=list)
    # CPU time the virtual machine's host took from the serving CPUs during the phase (steal time of
    # /proc/stat, seconds; nan where not read): a vCPU the host did not run holds every thread on it
    steal: float = float("nan")

    @property
    def inside(self) -> list[float]:
        """How long the app held each message, seconds (nan without a Server-Timing header)."""
        return self.stage("app")

    def stage(self, name: str) -> list[float]:
        return [t.get(name, float("nan")) for t in self.timings]

    def pct(self, q: float) -> float:
        return float(np.percentile(np.asarray(self.latencies) * 1000, q)) if self.latencies else float("nan")

    def stage_pct(self, q: float, name: str = "app") -> float:
        """Percentile q of a Server-Timing stage, ms, over the messages that have it (nan if none)."""
        held = np.asarray(self.stage(name), dtype=float)
        held = held[~np.isnan(held)]
        return float(np.percentile(held * 1000, q)) if held.size else float("nan")

    def inside_pct(self, q: float) -> float:
        return self.stage_pct(q, "app")

    def cpu_ms_per_message(self) -> float:
        return self.serving_cpu * 1000 / len(self.latencies) if self.latencies else float("nan")

    def steal_ms_per_second(self) -> float:
        return self.steal * 1000 / self.seconds if self.seconds else float("nan")


PROC_STAT = "/proc/stat"


def steal_seconds(cpus: tuple[int, ...] = (), path: str = PROC_STAT) -> float:
    """Steal time so far of `cpus` (every CPU when empty), seconds: the time a virtual machine's host ran
    something else while the CPU had work (Linux /proc/stat, 8th value of a cpuN line; nan where there is
    no such file). On a shared host it delays whatever runs on the CPU, which no code of ours causes."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError:
        return float("nan")
    wanted = {f"cpu{c}" for c in cpus}
    ticks = 0
    for line in lines:
        name, *values = line.split()
        if name.startswith("cpu") and name != "cpu" and (not wanted or name in wanted) and len(values) >= 8:
            ticks += int(values[7])
    return ticks / os.sysconf("SC_CLK_TCK")


def _traffic(url: str, shop: str, key: dict[str, str], cfg: BuildLoadConfig, stop: threading.Event) -> Phase:
    """Messages at cfg.rate per second from cfg.clients threads until `stop`; latencies in seconds."""
    phase = Phase("")
    lock = threading.Lock()
    texts = ["质保几年", "什么时候发货", "能开发票吗", "支持七天无理由退货吗", "包邮吗", "我的快递到哪了"]
    interval = cfg.clients / cfg.rate
    t0 = time.perf_counter()
    phase.started = time.time()

    def client(n: int) -> None:
        with httpx.Client(base_url=url, headers=key, timeout=30) as http:
            i, next_at = 0, time.monotonic() + n * interval / cfg.clients
            while not stop.is_set():
                time.sleep(max(0.0, next_at - time.monotonic()))
                next_at += interval
                body = {"conversation_id": f"b{n}-{i}", "text": texts[i % len(texts)]}
                t = time.perf_counter()
                held: dict[str, float] = {}
                try:
                    r = http.post(f"/v1/shops/{shop}/messages", json=body)
                    ok = r.status_code == 200
                    held = timings(r.headers.get("server-timing"))
                except httpx.HTTPError:
                    ok = False
                took = time.perf_counter() - t
                with lock:
                    if ok:
                        phase.latencies.append(took)
                        phase.sent.append(t - t0)
                        phase.timings.append(held)
                    else:
                        phase.errors += 1
                i += 1

    with ThreadPoolExecutor(cfg.clients) as pool:
        for f in [pool.submit(client, n) for n in range(cfg.clients)]:
            f.result()
    phase.seconds = time.perf_counter() - t0
    phase.ended = time.time()
    phase.load = os.getloadavg()
    return phase


_DUR = re.compile(r"(?:^|,)\s*([A-Za-z0-9_-]+);dur=([0-9.]+)")


def timings(header: str | None) -> dict[str, float]:
    """A Server-Timing header's durations in seconds by name (api.stages: `app`, and a turn's `turn`,
    `state`, `match`), plus `outside turn` (`app` - `turn`: body, API key, thread hops, reply)."""
    out = {m.group(1): float(m.group(2)) / 1000 for m in _DUR.finditer(header or "")}
    if "app" in out and "turn" in out:
        out["outside turn"] = max(0.0, out["app"] - out["turn"])
    return out


def app_seconds(header: str | None) -> float:
    """The `app` duration of a Server-Timing header in seconds (nan when absent)."""
    return timings(header).get("app", float("nan"))


def _timed(
    url: str,
    shop: str,
    key: dict[str, str],
    cfg: BuildLoadConfig,
    name: str,
    until: Any,
    cpu: Callable[[], float],
    serve_cpus: tuple[int, ...] = (),
) -> Phase:
    """Messages while `until()` runs, and the phase's share of `cpu` (the serving processes' CPU
    seconds so far) and of the host's steal time on `serve_cpus` (every CPU when empty). This process
    collects no garbage meanwhile: a full collection here paused the clients' threads for 30-100 ms,
    which the messages in flight would have counted."""
    stop = threading.Event()
    result: list[Phase] = []
    gc.collect()  # the clients' own collections would be timed as serving's latency: none in a phase
    gc.disable()
    cpu_before, steal_before = cpu(), steal_seconds(serve_cpus)
    t = threading.Thread(target=lambda: result.append(_traffic(url, shop, key, cfg, stop)))
    t.start()
    try:
        until()
    finally:
        stop.set()
        t.join()
        gc.enable()
    result[0].name, result[0].serving_cpu = name, cpu() - cpu_before
    result[0].steal = steal_seconds(serve_cpus) - steal_before
    return result[0]


def _wait_versions_in_db(database_url: str, shops: list[tuple[str, int]], timeout: float) -> dict[str, Any]:
    """Until every (shop, version) finished building; their final rows. Read from the service's
    database, not its API: while the builds run the measurement must not add requests of its own (ten
    shops polled twice a second over HTTP were 20 requests/s on serving's CPUs that the idle phases did
    not have)."""
    from sqlalchemy import create_engine, select

    from api.db.models import KBVersion

    engine = create_engine(database_url)
    wanted = {(shop, v) for shop, v in shops}
    cols = (KBVersion.shop_id, KBVersion.version, KBVersion.status, KBVersion.attempts, KBVersion.error)
    deadline = time.monotonic() + timeout
    done: dict[str, Any] = {}
    try:
        while len(done) < len(shops):
            if time.monotonic() > deadline:
                raise LoadTestError(f"builds not finished after {timeout:.0f} s: {len(done)}/{len(shops)}")
            with engine.connect() as conn:
                rows = conn.execute(select(*cols).where(KBVersion.shop_id.in_([s for s, _ in shops])))
                for shop, version, status, attempts, error in rows:
                    if (shop, version) in wanted and status != "building" and shop not in done:
                        done[shop] = dict(version=version, status=status, attempts=attempts, error=error)
            time.sleep(0.5)
    finally:
        engine.dispose()
    return done


def run(cfg: BuildLoadConfig, say: Any = print) -> tuple[list[Phase], dict[str, Any]]:
    from cryptography.fernet import Fernet

    kb = cfg.kb.resolve()
    data = kb.read_bytes()
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="kefu-buildload-")))
        admin = secrets.token_urlsafe(24)
        env = {
            **os.environ,
            "KEFU_DATABASE_URL": cfg.database_url or f"sqlite:///{tmp}/kefu.db",
            "KEFU_DATA_DIR": str(tmp / "data"),
            "KEFU_ADMIN_TOKEN": admin,
            "KEFU_SECRET_KEY": Fernet.generate_key().decode(),
            "KEFU_DENSE": "true" if cfg.dense else "false",
            "KEFU_KB_PATH": str(_legacy_kb(kb, tmp / "legacy-kb.csv")),
            "KEFU_MODEL_PATH": str(tmp / "legacy-model"),
            "KEFU_EVALUATION_PULL_INTERVAL": "0",
            "KEFU_RATE_LIMIT_SHOP": "0",
            "KEFU_RATE_LIMIT_CLIENT": "0",
            "KEFU_REDIS_PREFIX": f"kefu-buildload-{secrets.token_hex(4)}:",
            "KEFU_LOOP_LAG_INTERVAL_MS": os.environ.get("KEFU_LOOP_LAG_INTERVAL_MS", str(LOOP_CHECK_MS)),
            "KEFU_LOOP_LAG_WARN_MS": os.environ.get("KEFU_LOOP_LAG_WARN_MS", str(STALL_MS)),
            "KEFU_SERVER_TIMING": "stages",  # what the phases' "in app" and stage figures read
        }
        for name in ("KEFU_REDIS_URL", "KEFU_QUEUE_URL", "KEFU_BUILD_IN_PROCESS"):
            env.pop(name, None)
        if cfg.redis_url:
            env["KEFU_REDIS_URL"] = env["KEFU_QUEUE_URL"] = cfg.redis_url
        if cfg.build_worker:
            env["KEFU_BUILD_IN_PROCESS"] = "false"
        serve_cpus, build_cpus = split(cfg)
        if serve_cpus:
            env["KEFU_SERVE_CPUS"] = ",".join(map(str, serve_cpus))
            env["KEFU_BUILD_CPUS"] = ",".join(map(str, build_cpus))
            before = os.sched_getaffinity(0)
            pin_process(serve_cpus)  # the clients measure latency: they run where serving runs
            stack.callback(pin_process, before)
        else:
            for name in ("KEFU_SERVE_CPUS", "KEFU_BUILD_CPUS"):
                env.pop(name, None)
        server = Server(env, _free_port(), cfg.workers, tmp / "server.log")
        stack.callback(server.stop)
        server.wait_healthy(cfg.startup_timeout)
        logs = [server.log_path]
        if cfg.build_worker:
            worker = BuildWorker(env, cfg.workers, tmp / "worker.log")
            stack.callback(worker.stop)
            logs.append(worker.log_path)
        say(
            f"server {server.url}: {cfg.workers} uvicorn workers, database "
            f"{'SQLite (embedded)' if not cfg.database_url else 'as given'}, queue "
            f"{'Redis' if cfg.redis_url else 'SQLite (embedded)'}, KB {kb.name}, "
            f"dense {'on' if cfg.dense else 'off'}, builds "
            + (
                f"in a `kefu worker` process ({cfg.workers} at once)"
                if cfg.build_worker
                else "in the servers"
            )
            + (
                f"; serving and clients on CPUs {env['KEFU_SERVE_CPUS']}, builds on {env['KEFU_BUILD_CPUS']}"
                if serve_cpus
                else ""
            )
        )
        keys: dict[str, dict[str, str]] = {}
        with httpx.Client(base_url=server.url, timeout=60) as http:
            for shop in ["served", *[f"pub-{i}" for i in range(cfg.publishers)]]:
                r = http.post(
                    "/v1/admin/shops", json={"id": shop, "name": shop}, headers={"X-Admin-Token": admin}
                )
                keys[shop] = {"X-API-Key": _check(r, 201)["api_key"]}
                publish = "true" if shop == "served" else "false"
                r = http.post(
                    f"/v1/shops/{shop}/kb?publish={publish}",
                    headers=keys[shop],
                    files={"file": (kb.name, data)},
                )
                _check(r, 200)
            t = time.perf_counter()
            _wait_versions_in_db(env["KEFU_DATABASE_URL"], [("served", 1)], cfg.build_timeout)
            say(f"shop 'served' built in {time.perf_counter() - t:.1f} s; warming up both workers")
            deadline, answered = time.monotonic() + 120, 0
            while time.monotonic() < deadline and answered < 40:  # both workers serve the model
                body = {"conversation_id": f"w{answered}", "text": "你好"}
                r = http.post("/v1/shops/served/messages", headers=keys["served"], json=body)
                answered += r.status_code == 200 and r.json().get("model_version") == 1
                time.sleep(0.05)
        url, key, cpu = server.url, keys["served"], server.cpu_seconds
        phases = [_timed(url, "served", key, cfg, "idle", lambda: time.sleep(cfg.idle), cpu, serve_cpus)]
        say(f"idle: {len(phases[0].latencies)} messages in {phases[0].seconds:.0f} s")
        pubs = [s for s in keys if s != "served"]
        outcome: dict[str, Any] = {"rows": {}, "seconds": []}
        # the merchants publishing: a process of their own, on the build CPUs with --split-cpus
        merchants = stack.enter_context(Merchants(build_cpus))

        def publish_all(round_no: int) -> None:
            done = merchants.publish(
                url, keys, pubs, kb.name, data, round_no, env["KEFU_DATABASE_URL"], cfg.build_timeout
            )
            outcome["publish_cpus"], outcome["publish_pid"] = done["cpus"], done["pid"]
            outcome["seconds"].append(done["seconds"])
            outcome["rows"].update({f"{shop}#{round_no}": row for shop, row in done["rows"].items()})

        for n in range(1, cfg.rounds + 1):
            suffix = f" (round {n})" if cfg.rounds > 1 else ""
            building = f"{cfg.publishers} shops building{suffix}"
            phases.append(
                _timed(url, "served", key, cfg, building, lambda n=n: publish_all(n), cpu, serve_cpus)
            )
            say(f"builds{suffix}: {len(phases[-1].latencies)} messages in {phases[-1].seconds:.0f} s")
            phases.append(
                _timed(
                    url,
                    "served",
                    key,
                    cfg,
                    f"idle again{suffix}",
                    lambda: time.sleep(cfg.idle),
                    cpu,
                    serve_cpus,
                )
            )
        builds = [p for p in phases if "building" in p.name]
        if cfg.control:
            n = cfg.burners or len(build_cpus) or os.cpu_count() or 1
            span = max(max(p.seconds for p in builds), cfg.idle)
            with Burners(n, tmp / "burners.log", build_cpus):
                phases.append(
                    _timed(
                        url,
                        "served",
                        key,
                        cfg,
                        f"control: {n} CPU burners",
                        lambda: time.sleep(span),
                        cpu,
                        serve_cpus,
                    )
                )
            say(f"control: {len(phases[-1].latencies)} messages in {phases[-1].seconds:.0f} s")
        texts = {log.stem: log.read_text("utf-8", errors="replace").splitlines() for log in logs}
        place_stalls(phases, texts.get("server", []))
        outcome["errors_logged"] = sum(
            " ERROR " in line or "Traceback" in line for lines in texts.values() for line in lines
        )
        # what the processes say of their CPUs (KEFU_SERVE_CPUS / KEFU_BUILD_CPUS), per log
        outcome["cpus_logged"] = {
            name: sorted({line.split("CPUs ", 1)[1] for line in lines if "_CPUS)" in line})
            for name, lines in texts.items()
        }
        # where the builds ran: "building version N of shop S" lines per log (server, worker)
        outcome["builds_logged"] = {
            name: sum("building version" in line for line in lines) for name, lines in texts.items()
        }
    return phases, outcome


def place_stalls(phases: list[Phase], lines: list[str]) -> None:
    """Each logged event-loop stall of the serving processes into the phase it fell in (local times, as
    both this process and the server's log write them)."""
    for line in lines:
        m = _STALL.match(line)
        if m is None:
            continue
        at = datetime.strptime(m[1], "%Y-%m-%d %H:%M:%S,%f").timestamp()
        for p in phases:
            if p.started <= at <= p.ended:
                p.stalls.append(float(m[2]))
                break


# a turn's stages in the server's Server-Timing header (api.stages), and what the rest of `app` was
STAGES = ("turn", "state", "match", "outside turn")


def pooled(name: str, phases: list[Phase]) -> Phase:
    """One phase of all messages of `phases` (a p99 of one phase rests on a handful of messages)."""
    return Phase(
        name, [x for p in phases for x in p.latencies], timings=[t for p in phases for t in p.timings]
    )


def _slowest_means(phase: Phase, share: float) -> dict[str, float]:
    """Mean ms of `app` and each stage over the slowest `share` of the phase's messages (by latency)."""
    if not phase.latencies:
        return {}
    lat = np.asarray(phase.latencies)
    slow = np.argsort(lat, kind="stable")[-max(1, round(len(lat) * share)) :]
    out = {}
    for name in ("app", *STAGES):
        got = np.asarray([phase.timings[i].get(name, np.nan) for i in slow], dtype=float)
        got = got[~np.isnan(got)]
        out[name] = float(got.mean() * 1000) if got.size else float("nan")
    return out


def by_stage(building: Phase, idle: Phase) -> str:
    """Where in the app the building phases' extra time went: each stage's p99, and the mean of each
    stage over the slowest 1% of messages, building / idle."""
    if not any("turn" in t for t in building.timings):
        return "in the app by stage: the server's Server-Timing has no stages"
    p99 = ", ".join(f"{s} {building.stage_pct(99, s):.1f} / {idle.stage_pct(99, s):.1f}" for s in STAGES)
    b, i = _slowest_means(building, 0.01), _slowest_means(idle, 0.01)
    means = ", ".join(f"{s} {b[s]:.1f} / {i[s]:.1f}" for s in ("app", *STAGES))
    return (
        f"in the app by stage, building / idle: p99 ms {p99}; the slowest 1% of messages, mean ms {means} "
        "(turn: the conversation turn in its worker thread; state: the conversation state's load and save; "
        "match: the matcher; outside turn: the body, the API key, the thread hop and the reply)"
    )


def slowest(phases: list[Phase], n: int) -> str:
    """The n slowest messages of the phases, each with its phase and when in it it was sent: slow
    messages at a building phase's very start come from the publish requests, later ones from the builds."""
    found = sorted(
        ((took, p.name, at) for p in phases for took, at in zip(p.latencies, p.sent, strict=False)),
        reverse=True,
    )[:n]
    listed = "; ".join(f"{took * 1000:.0f} ms at {at:.1f} s of {name}" for took, name, at in found)
    return f"slowest messages while building: {listed or 'none'}"


def round_kb(data: bytes, round_no: int) -> bytes:
    """The KB CSV with one entry added for `round_no`: a new kb_hash, so publishing it builds."""
    text = data.decode("utf-8-sig")
    header = next(csv.reader(io.StringIO(text)))
    if "id" not in header or "question" not in header:
        raise LoadTestError(
            "--rounds needs a CSV KB with id and question columns (a KB in another format "
            "cannot be changed for each round)"
        )
    row = {name: "" for name in header}
    row.update(id=f"loadtest-round-{round_no}", question=f"压测第{round_no}轮新增的问题")
    if "answer" in header:
        row["answer"] = f"压测第{round_no}轮的回答"
    out = io.StringIO()
    writer = csv.DictWriter(out, header, lineterminator="\n")
    writer.writerow(row)
    return (text.rstrip("\r\n") + "\n" + out.getvalue()).encode("utf-8")


def p99_ratio_interval(
    building: list[list[float]],
    idle: list[list[float]],
    block: int,
    level: float = 0.9,
    reps: int = 2000,
    seed: int = 0,
) -> tuple[float, float]:
    """A `level` interval of p99(building) / p99(idle) by a block bootstrap over the phases' messages.

    Slow messages come in bursts (a sweep, a build starting), so messages are resampled in runs of
    `block` consecutive ones (about a second of traffic) within each phase, not one by one: resampling
    single messages would treat a burst of slow ones as independent luck and give too narrow a range."""

    def blocks(phases: list[list[float]]) -> list[np.ndarray]:
        return [np.asarray(p[i : i + block]) for p in phases for i in range(0, len(p), block)]

    b, i = blocks(building), blocks(idle)
    if not b or not i:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    ratios = np.empty(reps)
    for k in range(reps):
        bs = np.concatenate([b[j] for j in rng.integers(0, len(b), len(b))])
        ids = np.concatenate([i[j] for j in rng.integers(0, len(i), len(i))])
        ratios[k] = np.percentile(bs, 99) / np.percentile(ids, 99)
    tail = (1.0 - level) / 2
    lo, hi = np.quantile(ratios, [tail, 1.0 - tail])
    return float(lo), float(hi)


def split(cfg: BuildLoadConfig) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(serving's CPUs, builds' CPUs) of this process's CPUs with `split_cpus`; ((), ()) without."""
    if not cfg.split_cpus:
        return (), ()
    if not hasattr(os, "sched_getaffinity"):
        raise LoadTestError("--split-cpus needs Linux CPU affinity (os.sched_setaffinity)")
    cpus = tuple(sorted(os.sched_getaffinity(0)))
    if len(cpus) < 2:
        raise LoadTestError(f"--split-cpus needs at least 2 CPUs; this process may run on {len(cpus)}")
    half = len(cpus) // 2
    return cpus[:half], cpus[half:]


def _merchants_start(cpus: tuple[int, ...]) -> None:
    if cpus:
        pin_process(cpus)
    import sqlalchemy  # noqa: F401  (imported now, not during the first building phase)

    import api.db.models  # noqa: F401


def publish_round(
    url: str,
    keys: dict[str, dict[str, str]],
    pubs: list[str],
    kb_name: str,
    data: bytes,
    round_no: int,
    database_url: str,
    timeout: float,
) -> dict[str, Any]:
    """Every shop of `pubs` publishes at once (round 1: the KB uploaded at setup; later rounds upload it
    with one more entry, since an unchanged KB builds nothing), then waits until each version finished
    building. Run in the Merchants process."""
    with httpx.Client(base_url=url, timeout=60) as http, ThreadPoolExecutor(len(pubs)) as pool:
        if round_no == 1:
            answers = list(pool.map(lambda s: http.post(f"/v1/shops/{s}/kb/publish", headers=keys[s]), pubs))
        else:
            changed = round_kb(data, round_no)
            answers = list(
                pool.map(
                    lambda s: http.post(
                        f"/v1/shops/{s}/kb?publish=true", headers=keys[s], files={"file": (kb_name, changed)}
                    ),
                    pubs,
                )
            )
    versions = [(s, int(_check(r, 200, 202)["version"])) for s, r in zip(pubs, answers, strict=True)]
    t = time.perf_counter()
    rows = _wait_versions_in_db(database_url, versions, timeout)
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    return {"rows": rows, "seconds": time.perf_counter() - t, "cpus": cpus, "pid": os.getpid()}


class Merchants:
    """The publishing merchants, in a process of their own (their browsers are elsewhere): as threads of
    the measuring process they held its interpreter lock while uploading and polling, and the messages in
    flight counted the wait as serving's latency, in building phases only. Started (and its imports done)
    before the first phase; with `cpus` (--split-cpus: the build CPUs) it runs there."""

    def __init__(self, cpus: tuple[int, ...] = ()) -> None:
        self.pool = ProcessPoolExecutor(
            max_workers=1,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_merchants_start,
            initargs=(cpus,),
        )

    def __enter__(self) -> Merchants:
        self.pool.submit(int).result()
        return self

    def __exit__(self, *exc: object) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    def publish(self, *args: Any) -> dict[str, Any]:
        """publish_round(*args) in the merchants' process."""
        return dict(self.pool.submit(publish_round, *args).result())


class BuildWorker:
    """`kefu worker --queue builds --builds N` with the server's environment, logging to a file."""

    def __init__(self, env: dict[str, str], builds: int, log_path: Path) -> None:
        self.log_path = log_path
        self._log = log_path.open("wb")
        cmd = [sys.executable, "-m", "training.cli", "worker", "--queue", "builds", "--builds", str(builds)]
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (a running build is put back on the queue), then SIGKILL to the process group."""
        stop_group(self.proc, timeout)
        self._log.close()


# A build's kind of work at a build's priority: matrix products (CPU) and a sweep over 256 MB (caches and
# memory bandwidth), one BLAS thread each, until killed.
_BURN = """
import os
os.nice(19)
if hasattr(os, "SCHED_IDLE"):
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
try:  # a session of its own: lower the session's weight too, as `kefu worker` does (autogroup)
    with open("/proc/self/autogroup", "w") as f:
        f.write("19")
except OSError:
    pass
import numpy as np
a = np.random.default_rng(0).random((384, 384))
big = np.ones(32 * 1024 * 1024)
print("burning", os.getpid(), flush=True)
while True:
    for _ in range(20):
        a = a @ a
        a /= np.abs(a).max()
    big += 1.0
"""


class Burners:
    """`n` CPU-bound processes at a build's priority while the context is open (the control phase)."""

    def __init__(self, n: int, log_path: Path, cpus: tuple[int, ...] = ()) -> None:
        self.n, self.log_path, self.cpus = n, log_path, cpus
        self.procs: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> Burners:
        env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        with self.log_path.open("ab") as log:
            for _ in range(self.n):
                self.procs.append(
                    subprocess.Popen(
                        [sys.executable, "-c", _BURN],
                        env=env,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                        preexec_fn=(lambda: pin_process(self.cpus)) if self.cpus else None,
                    )
                )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # every burner is running its loop (numpy imported)
            if self.log_path.read_text("utf-8", errors="replace").count("burning") >= self.n:
                return self
            if any(p.poll() is not None for p in self.procs):
                break
            time.sleep(0.05)
        self.__exit__()
        raise LoadTestError(f"CPU burners did not start; see {self.log_path}")

    def __exit__(self, *exc: object) -> None:
        for p in self.procs:
            stop_group(p, timeout=2.0)
        self.procs = []


def main(cfg: BuildLoadConfig | None = None, say: Any = None) -> int:
    """Run and print the figures; 0 when p99 during builds is within the bar, 1 when not, 2 on error."""
    cfg = cfg or BuildLoadConfig()
    say = say or (lambda s: print(s, flush=True))
    say(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")
    try:
        phases, outcome = run(cfg, say)
    except LoadTestError as e:
        say(f"could not run: {e}")
        return 2
    rows = outcome["rows"]
    statuses: dict[str, int] = {}
    for row in rows.values():
        statuses[row["status"]] = statuses.get(row["status"], 0) + 1
    say(
        f"\n{cfg.publishers} publishes"
        + (f" x {cfg.rounds} rounds" if cfg.rounds > 1 else "")
        + " finished in "
        + ", ".join(f"{t:.1f}" for t in outcome["seconds"])
        + " s: "
        + ", ".join(f"{n} {s}" for s, n in sorted(statuses.items()))
        + f"; build attempts {sum(r['attempts'] for r in rows.values())}"
        + f"; log errors {outcome['errors_logged']}"
        + "; builds logged by "
        + ", ".join(f"{name} {n}" for name, n in outcome["builds_logged"].items())
    )
    say(
        f"{'phase':<32}{'messages':>9}{'errors':>8}{'p50 ms':>9}{'p99 ms':>9}{'in app p99':>12}"
        f"{'serving CPU':>13}{'loop stalls':>13}{'steal':>11}  load average (1/5/15 min)"
    )
    for p in phases:
        load = " ".join(f"{x:.2f}" for x in p.load)
        stalls = f"{len(p.stalls)}, {max(p.stalls):.0f} ms" if p.stalls else "0"
        say(
            f"{p.name:<32}{len(p.latencies):>9}{p.errors:>8}{p.pct(50):>9.1f}{p.pct(99):>9.1f}"
            f"{p.inside_pct(99):>12.1f}{p.cpu_ms_per_message():>10.2f} ms{stalls:>13}"
            f"{p.steal_ms_per_second():>6.1f} ms/s  {load}"
        )
    say(
        "(in app: the time the app held a message, from its Server-Timing header; the rest of a latency "
        "is outside it: the socket, HTTP parsing, waiting for a CPU or the event loop. "
        "Serving CPU: the serving processes' CPU time in the phase per message sent, the publishes' "
        "requests included: more while building means serving did more, not only waited. Loop stalls: "
        "the serving processes' event-loop wake-ups logged as late by KEFU_LOOP_LAG_WARN_MS or more (count, "
        "the longest): a stall delays every message of its process at once. Steal: per second of the phase, "
        "the time the virtual machine's host kept the serving CPUs from running (/proc/stat), which holds "
        "whatever they run)"
    )
    building = [p for p in phases if "building" in p.name]
    idle = [p for p in phases if p.name.startswith("idle")]
    # a p99 of one phase rests on a handful of messages (30 s at 20/s: the 6 slowest), and two idle
    # phases of one run differ by more than the bar: the headline pools every phase of a kind
    b_pool, i_pool = pooled("building, pooled", building), pooled("idle, pooled", idle)
    ratio = b_pool.pct(99) / i_pool.pct(99)
    lo, hi = p99_ratio_interval(
        [p.latencies for p in building],
        [p.latencies for p in idle],
        block=max(1, round(cfg.rate)),
        level=PCT_LEVEL / 100,
    )
    verdict = "OK" if ratio <= BAR else "OVER"
    say(
        f"p99 while {cfg.publishers} shops build ({len(b_pool.latencies)} messages) "
        f"{b_pool.pct(99):.1f} ms / "
        f"p99 idle ({len(i_pool.latencies)} messages, {len(idle)} phases) {i_pool.pct(99):.1f} ms = "
        f"{ratio:.2f} (bar <= {BAR}): {verdict}"
    )
    if hi <= BAR:
        told = f"within the bar with {PCT_LEVEL}% confidence"
    elif lo > BAR:
        told = f"over the bar with {PCT_LEVEL}% confidence"
    else:
        told = "this run cannot tell it from the bar: run longer (--idle, --rounds) or again"
    say(f"{PCT_LEVEL}% interval of that ratio {lo:.2f} - {hi:.2f} (1 s runs of messages resampled): {told}")
    say(
        f"in the app (Server-Timing), p99 while building {b_pool.inside_pct(99):.1f} ms / idle "
        f"{i_pool.inside_pct(99):.1f} ms = {b_pool.inside_pct(99) / i_pool.inside_pct(99):.2f}; p50 "
        f"{b_pool.inside_pct(50):.1f} / {i_pool.inside_pct(50):.1f} ms: where the builds' extra latency is"
    )
    say(by_stage(b_pool, i_pool))
    say(
        f"first idle phase alone: p99 {phases[0].pct(99):.1f} ms; first building phase / it = "
        f"{phases[1].pct(99) / phases[0].pct(99):.2f} (the ratio as earlier runs printed it)"
    )
    say(slowest(building, 8))
    if cfg.control:
        floor = phases[-1].pct(99) / i_pool.pct(99)
        say(
            f"p99 with {phases[-1].name.split(': ')[1]} at the builds' priority (no build) / p99 idle = "
            f"{floor:.2f}: what sharing the CPUs costs serving on this machine, whatever runs beside it"
        )
    return 0 if ratio <= BAR and not any(p.errors for p in phases) else 1
