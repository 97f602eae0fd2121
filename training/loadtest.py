"""Load test of the multi-shop service: hot swaps under traffic on PostgreSQL + Redis with several workers.

`kefu loadtest` (or `main()`) starts `uvicorn api.main:app --workers 2` on a fresh PostgreSQL database, a
unique Redis prefix and temporary data and metrics directories, creates a shop, uploads and publishes a KB
and waits until every worker serves it. Then clients send customer messages (the KB's own paraphrases,
each in a new conversation) while a republisher edits the KB and publishes it every few seconds.

The run passes when no request failed (any non-200 answer, timeout or connection error) and every reply
came from a complete model: its `model_version` reached status `ready`, an answered `entry_id` exists in
that version and the reply text is that version's answer (answers of a few "hot" entries carry a
per-version marker, so a reply mixing two versions shows), clarify/handoff options exist in that
version, replies' versions only move forward (beyond a short cross-worker propagation grace), and at
least `min_versions` versions were served. The API does not expose a version's entries, so what each
published version contained is recorded locally just before publishing (the editable KB, read back
through the API) and checked against the frozen version's `kb_hash`.
"""

from __future__ import annotations

import bisect
import contextlib
import csv
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DEMO_KB = ROOT / "models" / "demo-shop-kb.csv"
DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"

HOT_ENTRIES = 3  # entries whose answer carries the version marker
HOT_SHARE = 0.3  # share of messages asking about a hot entry
RECONNECT_EVERY = 50  # a client opens a new connection this often, so both workers get traffic
CONSECUTIVE = 20  # answers in a row that must show a version before it counts as served everywhere
SWAP_GRACE = 2.0  # seconds a worker may lag behind another one when a version is swapped in
LEGACY_KB_ENTRIES = 12  # /v1/match model built at each worker's start: kept tiny so startup is quick
EXTRA_ENTRY: dict[str, Any] = {
    "question": "可以在电脑上激光刻字吗",
    "similar": ["支持刻字定制吗", "能刻名字吗", "刻字要加钱吗", "外壳可以定制图案吗"],
    "answer": "亲，本店暂不提供激光刻字和外壳定制服务哦。",
    "category": "其他",
}
EXTRA_ID = "loadtest-extra"

Say = Callable[[str], None]


class LoadTestError(Exception):
    """The run could not be set up or carried out (not a verdict on the service)."""


@dataclass
class LoadConfig:
    duration: float = 60.0
    concurrency: int = 8
    every: float = 5.0
    workers: int = 2
    dense: bool = False
    kb: Path = DEMO_KB
    database_url: str | None = None  # use this database as is (nothing created or dropped)
    pg_url: str = DEFAULT_PG  # where the fresh database is created otherwise
    redis_url: str = DEFAULT_REDIS
    min_versions: int = 3
    request_timeout: float = 10.0
    ready_timeout: float = 600.0  # the first version's build and swap on every worker
    startup_timeout: float = 180.0
    seed: int = 0


@dataclass
class Reply:
    sent: float  # seconds since the load started
    done: float
    version: int | None
    kind: str
    entry_id: str | None
    text: str
    option_ids: list[str]


@dataclass
class Failure:
    at: float
    request: str
    detail: str


@dataclass
class Published:
    version: int
    at: float
    entries: dict[str, dict[str, Any]]  # entry id -> the entry as the API returned it before publishing
    change: str


@dataclass
class LoadReport:
    requests: int = 0
    failures: list[Failure] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    elapsed: float = 0.0
    replies: list[Reply] = field(default_factory=list)
    published: dict[int, Published] = field(default_factory=dict)
    statuses: dict[int, str] = field(default_factory=dict)
    problems: Counter[str] = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    server_errors: list[str] = field(default_factory=list)
    min_versions: int = 3
    ready_messages: int = 0  # sent by setup to have each worker load the shop (wait_served_everywhere)

    def problem(self, kind: str, example: str) -> None:
        self.problems[kind] += 1
        self.examples.setdefault(kind, example)

    @property
    def served(self) -> Counter[int]:
        return Counter(r.version for r in self.replies if r.version is not None)

    @property
    def ok(self) -> bool:
        return (
            not self.failures
            and not self.problems
            and len(self.served) >= self.min_versions
            and self.requests > 0
        )


# ------------------------------------------------------------------------------------------ resources


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def fresh_database(pg_url: str, say: Say) -> Iterator[str]:
    """A new PostgreSQL database `kefu_load_<random>`, dropped afterwards."""
    import psycopg
    from sqlalchemy.engine import make_url

    name = f"kefu_load_{secrets.token_hex(5)}"
    admin = make_url(pg_url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(pg_url).set(database=name).render_as_string(hide_password=False)
    finally:
        try:
            with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        except Exception as e:
            say(f"warning: could not drop database {name}: {e}")


@contextlib.contextmanager
def redis_prefix(url: str, say: Say) -> Iterator[str]:
    """A unique key prefix; every key under it is deleted afterwards."""
    import redis

    prefix = f"kefu-load-{secrets.token_hex(5)}:"
    client = redis.Redis.from_url(url, socket_connect_timeout=5)
    client.ping()
    try:
        yield prefix
    finally:
        try:
            keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
            for i in range(0, len(keys), 500):
                client.delete(*keys[i : i + 500])
        except Exception as e:
            say(f"warning: could not delete Redis keys {prefix}*: {e}")
        finally:
            client.close()


class Server:
    """`uvicorn api.main:app --workers N` in its own process group, logging to a file.

    `app` and `options` (more uvicorn arguments, e.g. `--http httptools`) let a benchmark serve another
    app the same way (training/httpbench.py).
    """

    def __init__(
        self,
        env: dict[str, str],
        port: int,
        workers: int,
        log_path: Path,
        app: str = "api.main:app",
        options: Sequence[str] = (),
    ) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        cmd = [
            sys.executable,
            "-m",
            "uvicorn",
            app,
            *options,
            "--workers",
            str(workers),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--no-access-log",
            "--timeout-graceful-shutdown",
            "10",
        ]
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise LoadTestError(f"uvicorn exited with code {self.proc.returncode}\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise LoadTestError(f"/healthz did not answer within {timeout:.0f} s\n{self.log_tail()}")

    def cpu_seconds(self) -> float:
        """CPU time (user + system) the serving processes used so far: uvicorn and its workers, not the
        processes the workers start (the KB process, build children: they run on the build CPUs when
        those are set). Linux /proc; nan elsewhere. Per phase, it says whether a slower phase made
        serving do more or only made it wait."""
        return process_tree_cpu_seconds(self.proc.pid, depth=1)

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text("utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (uvicorn passes it on to its workers), then SIGKILL to the process group."""
        stop_group(self.proc, timeout)
        self._log.close()


def process_tree_cpu_seconds(pid: int, depth: int | None = None) -> float:
    """User + system CPU seconds of `pid` and its live descendants down to `depth` generations (None:
    all), from /proc (nan where there is no /proc). Children that ended are not counted: a phase's figure
    is the live processes' difference."""
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    total, todo, seen = 0, [(pid, 0)], set()
    while todo:
        p, generation = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            stat = Path(f"/proc/{p}/stat").read_text()
        except OSError:
            if p == pid:
                return float("nan")
            continue  # ended between the listing and now
        fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": state is fields[0]
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
        if depth is not None and generation >= depth:
            continue
        for task in Path(f"/proc/{p}/task").glob("*/children"):
            try:
                todo.extend((int(c), generation + 1) for c in task.read_text().split())
            except OSError:
                continue
    return total / tick


def stop_group(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """SIGTERM to `proc` (started with start_new_session), then SIGKILL to its process group: children
    still busy (e.g. mid-build) go too."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)


# ------------------------------------------------------------------------------------------ the API


def _check(r: httpx.Response, *expected: int) -> Any:
    if r.status_code not in expected:
        raise LoadTestError(f"{r.request.method} {r.request.url.path}: {r.status_code} {r.text[:500]}")
    return r.json() if r.content else None


def fetch_entries(client: httpx.Client, shop: str) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    offset = 0
    while True:
        page = _check(client.get(f"/v1/shops/{shop}/entries", params={"offset": offset, "limit": 1000}), 200)
        out.update((e["id"], e) for e in page)
        if len(page) < 1000:
            return out
        offset += len(page)


def recorded_hash(entries: dict[str, dict[str, Any]]) -> str:
    """The kb_hash of the recorded entries, to compare with the version the publish froze."""
    from engine.kb import kb_hash, load_kb

    return kb_hash(load_kb(list(entries.values()), source_name="recorded entries"))


def scrape(url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """/metrics as {sample name: [(labels, value)]}."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url}/metrics", timeout=10).text
    out: dict[str, list[tuple[dict[str, str], float]]] = defaultdict(list)
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[s.name].append((dict(s.labels), float(s.value)))
    return out


def worker_versions(url: str, shop: str) -> dict[str, int]:
    """Each worker's served version (pid -> version), from the per-process kefu_model_version gauge."""
    samples = scrape(url).get("kefu_model_version", [])
    return {labels.get("pid", "?"): int(v) for labels, v in samples if labels.get("shop") == shop}


def wait_served_everywhere(
    url: str, shop: str, key: dict[str, str], version: int, workers: int, timeout: float
) -> int:
    """Until `version` is ready and every worker serves it; returns how many messages that took.

    A worker cannot be addressed directly: each GET /v1/shops/{shop} goes over a new connection (so the
    kernel hands it to either worker) and CONSECUTIVE answers in a row must show the version, and the
    per-process kefu_model_version gauge must show it for `workers` processes. A worker loads a shop's
    model on the shop's first message there (a publish does not make every process load every shop), so
    while fewer show it, a message (over a new connection, to either worker) asks for it.
    """
    deadline = time.monotonic() + timeout
    in_a_row = 0
    asked = 0
    while time.monotonic() < deadline:
        status = _check(
            httpx.get(f"{url}/v1/shops/{shop}/kb/versions/{version}", headers=key, timeout=10), 200
        )
        if status["status"] == "failed":
            raise LoadTestError(f"version {version} failed to build: {status['error']}")
        info = _check(httpx.get(f"{url}/v1/shops/{shop}", headers=key, timeout=10), 200)
        in_a_row = in_a_row + 1 if info["served_version"] == version else 0
        if in_a_row >= CONSECUTIVE:
            per_worker = worker_versions(url, shop)
            if sum(v == version for v in per_worker.values()) >= workers:
                return asked
            asked += 1
            body = {"conversation_id": f"loadtest-ready-{version}-{asked}", "text": "你好"}
            _check(httpx.post(f"{url}/v1/shops/{shop}/messages", headers=key, json=body, timeout=30), 200)
        time.sleep(0.05 if in_a_row else 0.5)
    raise LoadTestError(
        f"version {version} not served by all {workers} workers within {timeout:.0f} s "
        f"(per worker: {worker_versions(url, shop)})"
    )


# ------------------------------------------------------------------------------------------ the run


class Run:
    def __init__(self, cfg: LoadConfig, url: str, shop: str, key: dict[str, str], say: Say) -> None:
        self.cfg, self.url, self.shop, self.key, self.say = cfg, url, shop, key, say
        self.report = LoadReport(min_versions=cfg.min_versions)
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.t0 = 0.0

    def now(self) -> float:
        return time.perf_counter() - self.t0

    def fail(self, request: str, detail: str) -> None:
        with self.lock:
            self.report.failures.append(Failure(self.now(), request, detail))

    def setup(self, kb: Path) -> tuple[list[tuple[str, str]], list[tuple[str, str]], list[dict[str, Any]]]:
        """Upload and publish the KB, wait for it everywhere; the question pools and the hot entries."""
        with httpx.Client(base_url=self.url, headers=self.key, timeout=60) as c:
            t = time.perf_counter()
            up = _check(
                c.post(
                    f"/v1/shops/{self.shop}/kb",
                    params={"publish": "true"},
                    files={"file": (kb.name, kb.read_bytes())},
                ),
                200,
            )
            entries = fetch_entries(c, self.shop)
            version = int(up["version"])
            self.record(c, version, entries, "initial upload", at=0.0)
            self.report.ready_messages += wait_served_everywhere(
                self.url, self.shop, self.key, version, self.cfg.workers, self.cfg.ready_timeout
            )
        self.say(
            f"shop {self.shop}: {up['entries']} entries uploaded as v{version}, built and served by "
            f"all {self.cfg.workers} workers in {time.perf_counter() - t:.1f} s"
        )
        live = [
            e
            for e in entries.values()
            if e["enabled"] and not e["valid_from"] and not e["valid_to"] and e["similar"]
        ]
        if not live:
            raise LoadTestError(f"{kb} has no enabled entry with paraphrases (similar) to ask")
        hot = live[:HOT_ENTRIES]
        pool = [(q, e["id"]) for e in live for q in e["similar"]]
        hot_pool = [(q, e["id"]) for e in hot for q in e["similar"]]
        return pool, hot_pool, hot

    def record(
        self, c: httpx.Client, version: int, entries: dict[str, dict[str, Any]], change: str, at: float
    ) -> None:
        row = _check(c.get(f"/v1/shops/{self.shop}/kb/versions/{version}"), 200)
        if row["kb_hash"] != recorded_hash(entries):
            self.report.problem(
                "recorded entries differ from what the publish froze",
                f"v{version}: kb_hash {row['kb_hash'][:12]} != recorded {recorded_hash(entries)[:12]}",
            )
        with self.lock:
            self.report.published[version] = Published(version, at, entries, change)

    def client(self, idx: int, pool: list[tuple[str, str]], hot_pool: list[tuple[str, str]]) -> None:
        rng = random.Random(self.cfg.seed * 1000 + idx)
        replies: list[Reply] = []
        latencies: list[float] = []
        c: httpx.Client | None = None
        n = 0
        path = f"/v1/shops/{self.shop}/messages"
        try:
            while not self.stop.is_set():
                if c is None or n % RECONNECT_EVERY == 0:
                    if c is not None:
                        c.close()
                    c = httpx.Client(base_url=self.url, headers=self.key, timeout=self.cfg.request_timeout)
                text, _ = rng.choice(hot_pool if rng.random() < HOT_SHARE else pool)
                body = {"conversation_id": f"load-{idx}-{n}", "text": text}
                n += 1
                sent = self.now()
                try:
                    r = c.post(path, json=body)
                except httpx.HTTPError as e:
                    self.fail(f"POST {path}", f"{type(e).__name__}: {e}")
                    c.close()
                    c = None
                    continue
                done = self.now()
                latencies.append((done - sent) * 1000)
                if r.status_code != 200:
                    self.fail(f"POST {path}", f"{r.status_code} {r.text[:300]}")
                    continue
                try:
                    out = r.json()
                    options = [o["entry_id"] for o in out.get("options") or []]
                    handoff = out.get("handoff") or {}
                    options += [o["entry_id"] for o in handoff.get("candidates_tried") or []]
                    replies.append(
                        Reply(
                            sent,
                            done,
                            out.get("model_version"),
                            out["kind"],
                            out.get("entry_id"),
                            out["text"],
                            options,
                        )
                    )
                except (ValueError, KeyError, TypeError) as e:
                    self.fail(f"POST {path}", f"unreadable reply ({e}): {r.text[:300]}")
        finally:
            if c is not None:
                c.close()
            with self.lock:
                self.report.replies.extend(replies)
                self.report.latencies_ms.extend(latencies)
                self.report.requests += n

    def republisher(self, hot: list[dict[str, Any]]) -> None:
        """Every `every` seconds: edit the hot entries' answers (marked with the version they will be in)
        and every second time add or remove an extra entry, then publish.

        Each round opens a new connection, so publishes (and the builds they start) land on either
        worker, as publishes from several admins or pages would: builds then run in parallel and may
        finish out of order.
        """
        cycle = 0
        while not self.stop.wait(self.cfg.every):
            cycle += 1
            with httpx.Client(base_url=self.url, headers=self.key, timeout=self.cfg.request_timeout) as c:
                requests = self.republish_once(c, cycle, hot)
            with self.lock:
                self.report.requests += requests

    def republish_once(self, c: httpx.Client, cycle: int, hot: list[dict[str, Any]]) -> int:
        """One round of edits and a publish; returns how many requests it made."""
        requests = 0

        def call(method: str, path: str, *expected: int, **kw: Any) -> Any:
            nonlocal requests
            requests += 1
            try:
                r = c.request(method, path, **kw)
            except httpx.HTTPError as e:
                self.fail(f"{method} {path}", f"{type(e).__name__}: {e}")
                return None
            if r.status_code not in expected:
                self.fail(f"{method} {path}", f"{r.status_code} {r.text[:300]}")
                return None
            return r.json() if r.content else {}

        with self.lock:
            expected = max(self.report.published) + 1
        base = f"/v1/shops/{self.shop}"
        for e in hot:
            body = {k: v for k, v in e.items() if k != "id"}
            body["answer"] = f"{e['answer']}〔load v{expected}〕"
            call("PUT", f"{base}/entries/{e['id']}", 200, json=body)
        change = f"hot answers marked v{expected}"
        if cycle % 4 == 2:
            call("PUT", f"{base}/entries/{EXTRA_ID}", 200, json=EXTRA_ENTRY)
            change += f", {EXTRA_ID} added"
        elif cycle % 4 == 0:
            call("DELETE", f"{base}/entries/{EXTRA_ID}", 204)
            change += f", {EXTRA_ID} removed"
        requests += 1
        try:
            entries = fetch_entries(c, self.shop)
        except (httpx.HTTPError, LoadTestError) as err:
            self.fail(f"GET {base}/entries", str(err))
            return requests
        at = self.now()
        out = call("POST", f"{base}/kb/publish", 202)
        if out is None:
            return requests
        requests += 1
        try:
            self.record(c, int(out["version"]), entries, change, at)
        except (httpx.HTTPError, LoadTestError) as err:
            self.fail(f"GET {base}/kb/versions/{out['version']}", str(err))
        return requests

    def go(
        self, pool: list[tuple[str, str]], hot_pool: list[tuple[str, str]], hot: list[dict[str, Any]]
    ) -> None:
        self.t0 = time.perf_counter()
        threads = [
            threading.Thread(target=self.client, args=(i, pool, hot_pool), name=f"load-client-{i}")
            for i in range(self.cfg.concurrency)
        ]
        threads.append(threading.Thread(target=self.republisher, args=(hot,), name="load-republisher"))
        for t in threads:
            t.start()
        try:
            self.stop.wait(self.cfg.duration)
        finally:
            self.stop.set()
            for t in threads:
                t.join()
        self.report.elapsed = self.now()


def verify(report: LoadReport) -> None:
    """Every reply against the version it names; versions only move forward."""
    for r in report.replies:
        v = r.version
        if v is None:
            report.problem("reply without model_version", f"{r.kind} at {r.sent:.2f} s")
            continue
        status = report.statuses.get(v)
        if status != "ready":
            report.problem(
                "reply from a version that is not ready", f"v{v} is {status or 'unknown'} ({r.kind})"
            )
        published = report.published.get(v)
        if published is None:
            report.problem("reply from a version this run did not publish", f"v{v}")
            continue
        entries = published.entries
        if r.kind == "answer":
            entry = entries.get(r.entry_id or "")
            if entry is None:
                report.problem("answer with an entry_id not in its version", f"v{v}: {r.entry_id}")
            elif r.text != entry["answer"]:
                report.problem(
                    "answer text differs from its version's answer",
                    f"v{v} {r.entry_id}: got {r.text[-40:]!r}, v{v} has {entry['answer'][-40:]!r}",
                )
        missing = [o for o in r.option_ids if o not in entries]
        if missing:
            report.problem("options not in their version", f"v{v} {r.kind}: {missing}")

    # forward only: a reply sent SWAP_GRACE after another reply came back with version w must be >= w
    by_done = sorted(report.replies, key=lambda r: r.done)
    done_times = [r.done for r in by_done]
    running_max: list[int] = []
    best = 0
    for r in by_done:
        best = max(best, r.version or 0)
        running_max.append(best)
    for r in report.replies:
        i = bisect.bisect_right(done_times, r.sent - SWAP_GRACE)
        if i and r.version is not None and r.version < running_max[i - 1]:
            report.problem(
                "model_version went backwards",
                f"v{r.version} sent at {r.sent:.2f} s, v{running_max[i - 1]} already served "
                f"{SWAP_GRACE:.0f}+ s earlier",
            )


# ------------------------------------------------------------------------------------------ output


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def print_report(report: LoadReport, cfg: LoadConfig, shop: str, say: Say) -> None:
    failures = report.failures
    msgs = len(report.replies)
    lat = report.latencies_ms
    say("")
    say(f"requests      {report.requests} ({msgs} replies to messages, the rest setup/republishing)")
    say(f"failures      {len(failures)}")
    for f in failures[:20]:
        say(f"  {f.at:7.2f} s  {f.request}: {f.detail}")
    if len(failures) > 20:
        say(f"  ... and {len(failures) - 20} more")
    say(f"throughput    {report.requests / max(report.elapsed, 1e-9):.1f} req/s over {report.elapsed:.1f} s")
    say(
        f"latency ms    p50 {_pct(lat, 50):.1f}  p95 {_pct(lat, 95):.1f}  p99 {_pct(lat, 99):.1f}  "
        f"max {max(lat, default=float('nan')):.1f}  (POST /messages)"
    )
    statuses = Counter(report.statuses.values())
    served = report.served
    say(
        f"versions      published {len(report.published)}, ready {statuses['ready']}, "
        f"failed {statuses['failed']}, still building {statuses['building']}, "
        f"served {len(served)} ({' '.join(f'v{v}' for v in sorted(served))}; need >= {cfg.min_versions})"
    )
    first: dict[int, float] = {}
    last: dict[int, float] = {}
    for r in sorted(report.replies, key=lambda r: r.sent):
        if r.version is not None:
            first.setdefault(r.version, r.sent)
            last[r.version] = r.done
    for v, p in sorted(report.published.items()):
        line = f"  v{v:<3} {report.statuses.get(v, '?'):<9} published {p.at:6.1f} s  {p.change}"
        if v in served:
            line += f"; served {first[v]:.1f}-{last[v]:.1f} s, {served[v]} replies"
        say(line)
    kinds = Counter(r.kind for r in report.replies)
    marked = sum(1 for r in report.replies if r.kind == "answer" and "〔load v" in r.text)
    say(
        "replies       "
        + ", ".join(f"{k} {n}" for k, n in kinds.most_common())
        + f"; {marked} answers carried a version marker"
    )
    if report.problems:
        say(f"completeness  {sum(report.problems.values())} problem(s):")
        for kind, n in report.problems.most_common():
            say(f"  {n} x {kind}; e.g. {report.examples[kind]}")
    else:
        say("completeness  every reply matches the entries and answers of the version it names")
    m = report.metrics
    if m:
        say(f"workers       final served version per worker pid: {m.get('per_worker')}")
        say(f"              pids that answered messages: {m.get('answering_pids')}")
        say(
            f"              swaps logged {m.get('swaps_logged')}, builds finished after a newer version "
            f"and not activated {m.get('superseded')}"
        )
        say(f"metrics       kefu_build_seconds_count {m.get('build_counts')}")
        say(
            "              kefu_build_priority_raised_total (starving builds raised, by nice) "
            f"{m.get('priority_raised')}"
        )
        say(
            f"              kefu_decisions_total{{shop={shop}}} {m.get('decisions')} "
            f"sum {m.get('decisions_sum')} (client received {msgs}, setup sent {report.ready_messages})"
        )
    if report.server_errors:
        say(f"server log    {len(report.server_errors)} error line(s), first ones:")
        for line in report.server_errors[:10]:
            say(f"  {line}")
    say(f"verdict       {'OK' if report.ok else 'FAIL'}")


def collect_metrics(url: str, shop: str, report: LoadReport) -> None:
    samples = scrape(url)
    builds = {labels.get("outcome", "?"): int(v) for labels, v in samples.get("kefu_build_seconds_count", [])}
    decisions = {
        labels["decision"]: int(v)
        for labels, v in samples.get("kefu_decisions_total", [])
        if labels.get("shop") == shop
    }
    raised: dict[str, int] = {}
    for labels, v in samples.get("kefu_build_priority_raised_total", []):
        raised[labels.get("nice", "?")] = raised.get(labels.get("nice", "?"), 0) + int(v)
    report.metrics = {
        "build_counts": builds,
        "priority_raised": raised,
        "decisions": decisions,
        "decisions_sum": sum(decisions.values()),
        "per_worker": {
            labels.get("pid"): int(v)
            for labels, v in samples.get("kefu_model_version", [])
            if labels.get("shop") == shop
        },
        "answering_pids": sorted(
            labels.get("pid", "?")
            for labels, _ in samples.get("kefu_handoff_rate", [])
            if labels.get("shop") == shop
        ),
    }
    expected = len(report.replies) + report.ready_messages
    if sum(decisions.values()) != expected:
        report.problem(
            "kefu_decisions_total does not add up over workers",
            f"/metrics counts {sum(decisions.values())}, the client received {len(report.replies)} replies "
            f"and setup sent {report.ready_messages} messages",
        )


def _legacy_kb(src: Path, dest: Path) -> Path:
    """The first LEGACY_KB_ENTRIES entries of `src` as CSV: what each worker builds for /v1/match."""
    from engine.cells import escape_cell
    from engine.kb import load_kb

    with dest.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "question", "similar", "answer"])
        for e in [e for e in load_kb(src) if e.enabled][:LEGACY_KB_ENTRIES]:
            w.writerow([escape_cell(x) for x in (e.id, e.question, "|".join(e.similar), e.answer)])
    return dest


def run(cfg: LoadConfig, say: Say = print) -> LoadReport:
    """Set everything up, load the service, verify, clean up; LoadTestError when it cannot be run."""
    from cryptography.fernet import Fernet

    kb = cfg.kb.resolve()
    if not kb.is_file():
        raise LoadTestError(f"no KB at {kb}")
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="kefu-load-")))
        database_url = cfg.database_url or stack.enter_context(fresh_database(cfg.pg_url, say))
        prefix = stack.enter_context(redis_prefix(cfg.redis_url, say))
        (tmp / "data").mkdir()
        (tmp / "prometheus").mkdir()
        admin = secrets.token_urlsafe(24)
        env = {
            **os.environ,
            "KEFU_DATABASE_URL": database_url,
            "KEFU_REDIS_URL": cfg.redis_url,
            "KEFU_REDIS_PREFIX": prefix,
            "KEFU_DATA_DIR": str(tmp / "data"),
            "KEFU_ADMIN_TOKEN": admin,
            "KEFU_SECRET_KEY": Fernet.generate_key().decode(),
            "KEFU_DENSE": "true" if cfg.dense else "false",
            "KEFU_KB_PATH": str(_legacy_kb(kb, tmp / "legacy-kb.csv")),
            "KEFU_MODEL_PATH": str(tmp / "legacy-model"),
            "KEFU_EVALUATION_PULL_INTERVAL": "0",
            "KEFU_LOG_LEVEL": "INFO",
            # every request comes from one client for one shop: well above what the run can send, so
            # the limiter (on Redis) is on the path but does not refuse
            "KEFU_RATE_LIMIT_SHOP": "100000/minute",
            "KEFU_RATE_LIMIT_CLIENT": "100000/minute",
            "PROMETHEUS_MULTIPROC_DIR": str(tmp / "prometheus"),
        }
        port = _free_port()
        db_name = database_url.rsplit("/", 1)[-1]
        say(
            f"kefu load test: {cfg.workers} uvicorn workers on PostgreSQL ({db_name}) + Redis "
            f"(prefix {prefix}), dense {'on' if cfg.dense else 'off'}, KB {kb.name}"
        )
        t = time.perf_counter()
        server = Server(env, port, cfg.workers, tmp / "server.log")
        stack.callback(server.stop)
        server.wait_healthy(cfg.startup_timeout)
        say(f"server {server.url} answering /healthz after {time.perf_counter() - t:.1f} s")

        shop = f"load-{secrets.token_hex(4)}"
        r = httpx.post(
            f"{server.url}/v1/admin/shops",
            json={"id": shop, "name": "压测店铺"},
            headers={"X-Admin-Token": admin},
            timeout=30,
        )
        key = {"X-API-Key": _check(r, 201)["api_key"]}
        load = Run(cfg, server.url, shop, key, say)
        pool, hot_pool, hot = load.setup(kb)
        say(
            f"load: {cfg.duration:.0f} s, {cfg.concurrency} clients asking {len(pool)} paraphrases "
            f"({HOT_SHARE:.0%} about the {len(hot)} entries whose answers carry a version marker), "
            f"republishing every {cfg.every:g} s"
        )
        load.go(pool, hot_pool, hot)
        report = load.report
        versions = _check(
            httpx.get(f"{server.url}/v1/shops/{shop}/kb/versions", headers=key, timeout=30), 200
        )
        report.statuses = {int(v["version"]): v["status"] for v in versions}
        verify(report)
        collect_metrics(server.url, shop, report)
        log = server.log_path.read_text("utf-8", errors="replace").splitlines()
        report.server_errors = [
            line for line in log if " ERROR " in line or "Traceback" in line or "CRITICAL" in line
        ]
        report.metrics["swaps_logged"] = sum("now served by version" in line for line in log)
        report.metrics["superseded"] = sum("not activated" in line for line in log)
        print_report(report, cfg, shop, say)
        say("cleaning up: stopping uvicorn, dropping the database, deleting the Redis keys")
    return report


def main(config: LoadConfig | None = None, say: Say | None = None) -> int:
    """Run the load test and print its report; 0 on OK, 1 on FAIL, 2 when it could not run."""
    say = say or (lambda s: print(s, flush=True))
    try:
        report = run(config or LoadConfig(), say)
    except LoadTestError as e:
        say(f"error: {e}")
        say("verdict       FAIL")
        return 2
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
