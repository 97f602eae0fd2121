"""HTTP load with a compiled load generator: `kefu bench-http` drives real servers with wrk on loopback.

Per scenario it starts a server as a subprocess on a free 127.0.0.1 port (uvicorn, `--workers 2` by
default, httptools + uvloop, no access log: loadtest.Server), waits until every worker has started (and,
for the shop scenarios, until every worker serves the published KB), warms up with wrk, then runs wrk for
a bounded time and stops the server. wrk runs a Lua script (LUA below) that POSTs request bodies read from
a file and cycles through them, counts every non-2xx answer by status, and prints its figures as one JSON
line in `done()` (latency percentiles, requests, socket errors), which `parse_wrk_output` reads: no
parsing of wrk's text report.

Scenarios:

- `hello`: training/hello_app.py, a FastAPI hello-world POST: the ceiling of this HTTP stack here;
- `match-fast`: POST /v1/match on the demo KB's model built with `kefu build --fast` (no dense channel);
- `match-default`: the same with the default channels (dense included);
- `messages`: POST /v1/shops/{shop}/messages on PostgreSQL + Redis (a fresh database `kefu_load_*` and a
  unique Redis key prefix, both removed afterwards; builds on the Redis queue), the demo shop (demo
  catalog imported, demo KB published);
- `messages-sqlite`: the same on the embedded default (SQLite, no Redis).

The request bodies are the demo shop's message mix (`demo_mix`): customers' messages drawn, seeded, from
the demo KB's questions and paraphrases, varied the way customers write (openers and particles,
punctuation, a character dropped or typed twice, order numbers), with out-of-scope lines and small talk,
in conversations of 1-4 turns, and about 30% exact repeats of an earlier message. A run that sends more
requests than the mix holds starts it again (reported as passes); on a later pass every conversation id
gets a pass prefix, so no conversation grows past its turns.

Not a test: the machine's load shows in the figures, so the load average is printed beside them.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from engine.paraphrase import OPENERS, PARTICLES
from training.loadtest import (
    DEFAULT_PG,
    DEFAULT_REDIS,
    DEMO_KB,
    ROOT,
    LoadTestError,
    Server,
    _check,
    _free_port,
    _legacy_kb,
    fresh_database,
    redis_prefix,
    wait_served_everywhere,
)
from training.synthetic import synthetic_questions

Say = Callable[[str], None]

SCENARIOS = ("hello", "match-fast", "match-default", "messages", "messages-sqlite")
DESCRIPTIONS = {
    "hello": "FastAPI hello-world POST (the stack's ceiling)",
    "match-fast": "POST /v1/match, fast profile (kefu build --fast)",
    "match-default": "POST /v1/match, default channels",
    "messages": "POST /v1/shops/{shop}/messages, PostgreSQL + Redis",
    "messages-sqlite": "POST /v1/shops/{shop}/messages, SQLite (embedded)",
}
DEMO_CATALOG = ROOT / "models" / "demo-catalog.csv"
DEMO_CONVERSATIONS = ROOT / "models" / "demo-conversations.jsonl"
UVICORN_OPTIONS = ("--http", "httptools", "--loop", "uvloop")
# the limiter stays on the request path (as deployed) but never refuses the benchmark's single client
RATE_LIMIT = "10000000/minute"
WRK_TIMEOUT_S = 10  # a reply slower than this counts as a timeout error (and leaves the percentiles)
MARK = "KEFU_WRK "  # the line done() prints

# ------------------------------------------------------------------------------------------ wrk script

LUA = r"""
-- kefu bench-http (training/httpbench.py): POST the bodies of this thread's file (one JSON body a line)
-- in a cycle, count non-2xx answers by status, print the run's figures as one JSON line in done().
-- wrk ... -s this.lua URL -- BODIES_PREFIX PATH ["Header: value" ...]; thread i reads BODIES_PREFIX.i.jsonl
local threads = {}
local created = 0

function setup(thread)
   thread:set("id", created)
   created = created + 1
   table.insert(threads, thread)
end

function init(args)
   path = args[2]
   wrk.headers["Content-Type"] = "application/json"
   for i = 3, #args do
      local name, value = string.match(args[i], "^([^:]+):%s*(.*)$")
      wrk.headers[name] = value
   end
   bodies, prepared = {}, {}
   local file = assert(io.open(args[1] .. "." .. id .. ".jsonl", "r"))
   for line in file:lines() do
      if #line > 0 then
         table.insert(bodies, line)
         table.insert(prepared, wrk.format("POST", path, nil, line))
      end
   end
   file:close()
   assert(#bodies > 0, "no request bodies for thread " .. id)
   n, passes, non2xx, statuses, first_error = 0, 0, 0, {}, ""
end

function request()
   n = n + 1
   if n > #bodies then
      n = 1
      passes = passes + 1
   end
   if passes == 0 then
      return prepared[n]
   end
   -- a later pass: conversations of their own, so none grows past the turns it was generated with
   local body = string.gsub(bodies[n], '"conversation_id":"', '"conversation_id":"p' .. passes .. '-', 1)
   return wrk.format("POST", path, nil, body)
end

function response(status, headers, body)
   if status < 200 or status > 299 then
      non2xx = non2xx + 1
      local key = tostring(status)
      statuses[key] = (statuses[key] or 0) + 1
      if first_error == "" then
         first_error = key .. " " .. string.sub(body or "", 1, 300)
      end
   end
end

function done(summary, latency, requests)
   local non2xx, passes, statuses, first = 0, 0, {}, ""
   for _, t in ipairs(threads) do
      non2xx = non2xx + t:get("non2xx")
      passes = math.max(passes, t:get("passes"))
      for code, count in pairs(t:get("statuses")) do
         statuses[code] = (statuses[code] or 0) + count
      end
      if first == "" then
         first = t:get("first_error")
      end
   end
   local codes = {}
   for code, count in pairs(statuses) do
      table.insert(codes, string.format('"%s":%d', code, count))
   end
   first = string.gsub(string.gsub(first, '[\\"]', '\\%0'), "%c", " ")
   local e = summary.errors
   io.write(string.format(
      'KEFU_WRK {"duration_us":%.0f,"requests":%.0f,"bytes":%.0f,' ..
      '"errors":{"connect":%.0f,"read":%.0f,"write":%.0f,"timeout":%.0f,"status":%.0f},' ..
      '"non2xx":%.0f,"statuses":{%s},"first_error":"%s","passes":%.0f,' ..
      '"latency_us":{"p50":%.1f,"p95":%.1f,"p99":%.1f,"max":%.1f,"mean":%.1f}}\n',
      summary.duration, summary.requests, summary.bytes,
      e.connect, e.read, e.write, e.timeout, e.status,
      non2xx, table.concat(codes, ","), first, passes,
      latency:percentile(50), latency:percentile(95), latency:percentile(99), latency.max, latency.mean))
end
"""


class BenchError(Exception):
    """A scenario could not be set up or measured (not a verdict on the service)."""


@dataclass
class WrkResult:
    """One wrk run's figures, from the JSON line the Lua `done()` prints."""

    seconds: float
    requests: int
    non2xx: int
    statuses: dict[int, int]  # non-2xx status -> count
    socket_errors: dict[str, int]  # connect, read, write, timeout
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float
    passes: int  # how often a thread started its share of the mix again
    first_error: str = ""

    @property
    def req_per_s(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    @property
    def errors(self) -> int:
        """Every request that did not get a 2xx: non-2xx answers plus socket errors."""
        return self.non2xx + sum(self.socket_errors.values())


def parse_wrk_output(stdout: str) -> WrkResult:
    """The figures from wrk's stdout: the `KEFU_WRK {...}` line our Lua `done()` writes."""
    lines = [line for line in stdout.splitlines() if line.startswith(MARK)]
    if not lines:
        raise BenchError(f"wrk printed no {MARK.strip()} line (did the Lua script run?):\n{stdout[-2000:]}")
    try:
        data = json.loads(lines[-1][len(MARK) :])
        errors = data["errors"]
        latency = data["latency_us"]
        return WrkResult(
            seconds=float(data["duration_us"]) / 1e6,
            requests=int(data["requests"]),
            non2xx=int(data["non2xx"]),
            statuses={int(k): int(v) for k, v in sorted(data["statuses"].items())},
            socket_errors={k: int(errors[k]) for k in ("connect", "read", "write", "timeout")},
            p50_ms=float(latency["p50"]) / 1000,
            p95_ms=float(latency["p95"]) / 1000,
            p99_ms=float(latency["p99"]) / 1000,
            max_ms=float(latency["max"]) / 1000,
            mean_ms=float(latency["mean"]) / 1000,
            passes=int(data["passes"]),
            first_error=str(data.get("first_error", "")).strip(),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise BenchError(f"unreadable wrk figures ({type(e).__name__}: {e}): {lines[-1][:500]}") from e


# ------------------------------------------------------------------------------------------ the mix


@dataclass(frozen=True)
class Message:
    conversation_id: str
    text: str
    kind: str  # question | out_of_scope | greeting | closing
    repeat: bool  # the same text was sent earlier in the mix


@dataclass(frozen=True)
class MixSources:
    questions: list[str]  # the KB's questions and paraphrases
    weights: np.ndarray  # how often each is asked: a few entries are asked far more than the rest
    out_of_scope: list[str]
    greetings: list[str]
    closings: list[str]


KINDS_SMALLTALK = {"greeting": ("greeting",), "closing": ("thanks", "goodbye", "ack", "praise")}
OUT_OF_SCOPE_SHARE = 0.12  # of the turns that are not small talk
GREETING_FIRST = 0.35  # a conversation of 2+ turns opens with small talk this often
CLOSING_LAST = 0.4  # ... and ends with thanks or goodbye this often
ORDER_SHARE = 0.08  # questions that carry an order number
PUNCTUATION = ("？", "?", "。", "！", "～", "??", " ")
STEERED = ("question", "out_of_scope")  # the kinds whose share of exact repeats is steered
EDITS_QUESTION = (0, 1, 1, 2, 2, 3)  # how many edits a fresh question gets, drawn uniformly


def mix_sources(kb: Path = DEMO_KB, conversations: Path = DEMO_CONVERSATIONS, seed: int = 0) -> MixSources:
    """What the mix draws from: the KB's questions, the demo conversations' small talk and out-of-scope
    lines, and seeded synthetic questions about products this shop does not sell (training/synthetic.py)."""
    from engine.kb import load_kb
    from training.conversations import load_conversations

    rng = np.random.default_rng(seed)
    entries = [e for e in load_kb(kb) if e.enabled]
    if not entries:
        raise BenchError(f"{kb} has no enabled entry")
    popularity = 1.0 / (1.0 + rng.permutation(len(entries)))  # Zipf-like: entry ranks in a seeded order
    questions: list[str] = []
    weights: list[float] = []
    for e, p in zip(entries, popularity, strict=True):
        texts = [e.question, *e.similar]
        questions += texts
        weights += [p / len(texts)] * len(texts)
    turns = [t for c in load_conversations(conversations) for t in c.turns]
    greetings = sorted({t.text for t in turns if t.category in KINDS_SMALLTALK["greeting"]})
    closings = sorted({t.text for t in turns if t.category in KINDS_SMALLTALK["closing"]})
    chats = sorted({t.text for t in turns if t.category == "out_of_scope"})
    if not greetings or not closings or not chats:
        raise BenchError(f"{conversations} has no greeting, closing or out_of_scope turns to draw from")
    others = synthetic_questions(len(chats) * 4, seed=seed, exclude=set(questions))
    w = np.asarray(weights)
    return MixSources(questions, w / w.sum(), [*chats, *others], greetings, closings)


def _vary(text: str, rng: np.random.Generator, edits: int, order: bool) -> str:
    """`text` as a customer might type it: `edits` of opener, particle, punctuation, a character dropped
    or typed twice; `order` adds an order number (PII the service masks)."""
    for edit in sorted(int(i) for i in rng.permutation(5)[:edits]):
        if edit == 0:
            sep = ("", "，", " ")[int(rng.integers(3))]
            text = f"{OPENERS[int(rng.integers(len(OPENERS)))]}{sep}{text}"
        elif edit == 1:
            text = text.rstrip("？?。！!～ ") + PARTICLES[int(rng.integers(len(PARTICLES)))]
        elif edit == 2:
            text = text + PUNCTUATION[int(rng.integers(len(PUNCTUATION)))]
        elif len(text) >= 4:
            i = int(rng.integers(len(text)))
            text = text[:i] + text[i + 1 :] if edit == 3 else text[: i + 1] + text[i:]
    if order:
        number = f"3{int(rng.integers(10**10, 10**11))}"
        form = int(rng.integers(3))
        text = (f"订单号{number} {text}", f"{text}，订单{number}", f"我的订单{number}，{text}")[form]
    return text


def _fresh(kind: str, src: MixSources, rng: np.random.Generator, cumulative: np.ndarray) -> tuple[str, bool]:
    """A new message of `kind`, and whether it carries an order number."""
    if kind == "question":
        i = min(int(np.searchsorted(cumulative, rng.random(), side="right")), len(src.questions) - 1)
        order = rng.random() < ORDER_SHARE
        return _vary(src.questions[i], rng, EDITS_QUESTION[int(rng.integers(6))], order), order
    if kind == "out_of_scope":
        base = src.out_of_scope[int(rng.integers(len(src.out_of_scope)))]
        return _vary(base, rng, int(rng.integers(3)), order=False), False
    pool = src.greetings if kind == "greeting" else src.closings
    text = pool[int(rng.integers(len(pool)))]
    return (text + PUNCTUATION[int(rng.integers(len(PUNCTUATION)))] if rng.random() < 0.3 else text), False


def _turn_kinds(turns: int, rng: np.random.Generator) -> list[str]:
    kinds = []
    for t in range(turns):
        if t == 0 and turns > 1 and rng.random() < GREETING_FIRST:
            kinds.append("greeting")
        elif t == turns - 1 and t > 0 and rng.random() < CLOSING_LAST:
            kinds.append("closing")
        else:
            kinds.append("out_of_scope" if rng.random() < OUT_OF_SCOPE_SHARE else "question")
    return kinds


def demo_mix(
    n: int,
    seed: int = 0,
    repeat_share: float = 0.3,
    sources: MixSources | None = None,
    tag: str = "c",
) -> list[Message]:
    """`n` customer messages in conversations of 1-4 turns, the same for the same seed.

    About `repeat_share` of the questions (in scope or not: what the matcher has to match) repeat the
    exact text of an earlier question of the same kind (any text sent before, equally likely: popular
    entries already have more texts) from another conversation, never one with an order number
    (customers do not share orders); the rest are fresh variations, not sent before. The share is
    steered message by message, so it holds for any prefix of the mix, not only on average. Small talk
    is drawn from a short list and repeats by nature (在吗, 谢谢): it is not steered.
    """
    if n < 1:
        raise ValueError(f"a mix needs at least one message, got {n}")
    if not 0.0 <= repeat_share < 1.0:
        raise ValueError(f"repeat_share must be in [0, 1), got {repeat_share}")
    src = sources or mix_sources(seed=seed)
    cumulative = np.cumsum(src.weights)
    rng = np.random.default_rng(seed)
    repeatable: dict[str, list[str]] = defaultdict(list)  # kind -> distinct texts another customer may send
    seen: set[str] = set()
    out: list[Message] = []
    repeats = questions = 0
    conversation = 0
    while len(out) < n:
        cid = f"{tag}{seed}-{conversation}"
        conversation += 1
        mine: set[str] = set()
        for kind in _turn_kinds(int(rng.integers(1, 5)), rng)[: n - len(out)]:
            pool = repeatable[kind]
            text = ""
            if kind in STEERED:
                questions += 1
                behind = repeat_share * questions - repeats  # repeats owed to reach the share
                text = pool[int(rng.integers(len(pool)))] if pool and rng.random() < behind else ""
            if not text or text in mine:
                for _ in range(20):
                    text, personal = _fresh(kind, src, rng, cumulative)
                    if text not in seen:
                        break
                if text not in seen and not personal:
                    pool.append(text)
            repeat = text in seen
            repeats += repeat and kind in STEERED
            seen.add(text)
            mine.add(text)
            out.append(Message(cid, text, kind, repeat))
    return out


def interleave(messages: Sequence[Message], threads: int, lanes: int) -> list[list[Message]]:
    """Each wrk thread's request order: conversations split over threads, and within a thread over
    `lanes` customers (its connections) sending in turn, so a conversation's next turn comes about `lanes`
    requests after its last one (the reply is usually back by then), never at the same time."""
    conversations: dict[str, list[Message]] = {}
    for m in messages:
        conversations.setdefault(m.conversation_id, []).append(m)
    out: list[list[Message]] = []
    for t in range(threads):
        mine = list(conversations.values())[t::threads]
        queues: list[list[Message]] = [[] for _ in range(max(1, lanes))]
        for turns in mine:
            min(queues, key=len).extend(turns)
        order: list[Message] = []
        for step in range(max((len(q) for q in queues), default=0)):
            order += [q[step] for q in queues if step < len(q)]
        out.append(order)
    return out


def repeat_share(messages: Sequence[Message]) -> float:
    """The share of questions (in scope or not) that repeat an earlier message's exact text."""
    asked = [m for m in messages if m.kind in STEERED]
    return round(sum(m.repeat for m in asked) / max(len(asked), 1), 4)


def mix_summary(messages: Sequence[Message]) -> dict[str, Any]:
    sizes = Counter(Counter(m.conversation_id for m in messages).values())
    return {
        "messages": len(messages),
        "conversations": sum(sizes.values()),
        "turns": {str(k): v for k, v in sorted(sizes.items())},
        "repeat_share": repeat_share(messages),
        "repeat_share_all": round(sum(m.repeat for m in messages) / max(len(messages), 1), 4),
        "kinds": dict(Counter(m.kind for m in messages).most_common()),
    }


def write_bodies(
    per_thread: Sequence[Sequence[Message]], prefix: Path, body: Callable[[Message], dict[str, Any]]
) -> None:
    """`prefix`.i.jsonl for thread i: one compact JSON body a line (the Lua script relies on the form
    `"conversation_id":"` to rename conversations on a later pass)."""
    for i, messages in enumerate(per_thread):
        lines = (json.dumps(body(m), ensure_ascii=False, separators=(",", ":")) for m in messages)
        Path(f"{prefix}.{i}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")


# ------------------------------------------------------------------------------------------ running wrk


def find_wrk() -> str:
    """wrk's path; BenchError saying how to install it when it is missing."""
    path = shutil.which("wrk")
    if path is None:
        raise BenchError(
            "wrk is not installed (no `wrk` on PATH): install Debian's package with "
            "`apt-get install -y wrk` (`make test-tools` does), then run this again"
        )
    return path


@dataclass
class BenchConfig:
    scenarios: tuple[str, ...] = SCENARIOS
    duration: int = 20  # seconds of measured load per scenario
    warmup: int = 5  # seconds of load before it, not counted (a worker's first dense match loads the encoder)
    connections: int = 16
    threads: int = 2
    workers: int = 2
    pg_url: str = DEFAULT_PG
    redis_url: str = DEFAULT_REDIS
    repeat_share: float = 0.3
    mix_size: int = 0  # messages in the mix; 0: enough for `duration` at 3,000 req/s
    seed: int = 0
    startup_timeout: float = 180.0
    ready_timeout: float = 600.0  # the demo KB's build and swap on every worker
    json_path: Path | None = None
    # models of the demo KB to serve on /v1/match instead of building them: "fast" and/or "default"
    models: dict[str, Path] = field(default_factory=dict)

    def check(self) -> None:
        unknown = [s for s in self.scenarios if s not in SCENARIOS]
        if unknown:
            raise BenchError(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
        if self.duration < 1 or self.warmup < 0:
            raise BenchError(
                f"--duration must be >= 1 s and --warmup >= 0 s (got {self.duration}, {self.warmup})"
            )
        if self.threads < 1 or self.connections < self.threads:
            raise BenchError(
                f"--threads must be >= 1 and --connections at least --threads "
                f"(got {self.threads} threads, {self.connections} connections)"
            )
        if self.workers < 1:
            raise BenchError(f"--workers must be >= 1, got {self.workers}")
        if not 0.0 <= self.repeat_share < 1.0:
            raise BenchError(f"--repeat-share must be in [0, 1), got {self.repeat_share}")


def run_wrk(
    wrk: str,
    url: str,
    headers: dict[str, str],
    bodies: Path,
    script: Path,
    seconds: int,
    cfg: BenchConfig,
) -> WrkResult:
    """wrk against `url` for `seconds`, POSTing the bodies under the prefix `bodies`."""
    path = httpx.URL(url).raw_path.decode()
    cmd = [
        wrk,
        f"--threads={cfg.threads}",
        f"--connections={cfg.connections}",
        f"--duration={seconds}s",
        f"--timeout={WRK_TIMEOUT_S}s",
        f"--script={script}",
        url,
        "--",
        str(bodies),
        path,
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=seconds + 60)
    except subprocess.TimeoutExpired as e:
        raise BenchError(f"wrk did not finish within {seconds + 60} s") from e
    if done.returncode != 0:
        raise BenchError(f"wrk exited with code {done.returncode}: {done.stderr.strip()[-1000:]}")
    return parse_wrk_output(done.stdout)


# ------------------------------------------------------------------------------------------ servers


@dataclass
class Target:
    """Where a scenario's load goes once its server is ready."""

    url: str  # including the path
    headers: dict[str, str]
    body: Callable[[Message], dict[str, Any]]
    note: str = ""


def _text(m: Message) -> dict[str, Any]:
    return {"text": m.text}


def _message(m: Message) -> dict[str, Any]:
    return {"conversation_id": m.conversation_id, "text": m.text}


def wait_workers_started(server: Server, workers: int, timeout: float) -> None:
    """Until every worker logged its startup: wrk keeps its connections, so connections opened while
    one worker is still starting would all stay on the other for the whole run."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise BenchError(f"uvicorn exited with code {server.proc.returncode}\n{server.log_tail()}")
        log = server.log_path.read_text("utf-8", errors="replace")
        if log.count("Application startup complete.") >= workers:
            return
        time.sleep(0.2)
    raise BenchError(f"not all {workers} workers started within {timeout:.0f} s\n{server.log_tail()}")


def _start(
    env: dict[str, str], cfg: BenchConfig, log: Path, stack: contextlib.ExitStack, app: str = "api.main:app"
) -> Server:
    server = Server(env, _free_port(), cfg.workers, log, app=app, options=UVICORN_OPTIONS)
    stack.callback(server.stop)
    try:
        server.wait_healthy(cfg.startup_timeout)
    except LoadTestError as e:
        raise BenchError(str(e)) from e
    wait_workers_started(server, cfg.workers, cfg.startup_timeout)
    return server


def _service_env(
    tmp: Path,
    database_url: str,
    *,
    model: Path,
    kb: Path | None,
    redis_url: str | None = None,
    prefix: str | None = None,
) -> tuple[dict[str, str], str]:
    """The service's environment (and its admin token): temporary data, the given database and Redis."""
    from cryptography.fernet import Fernet

    admin = secrets.token_urlsafe(24)
    (tmp / "prometheus").mkdir(exist_ok=True)
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("KEFU_")
    }  # nothing from the caller's setup
    env.update(
        {
            "KEFU_DATABASE_URL": database_url,
            "KEFU_DATA_DIR": str(tmp / "data"),
            "KEFU_ADMIN_TOKEN": admin,
            "KEFU_SECRET_KEY": Fernet.generate_key().decode(),
            "KEFU_DENSE": "false",  # only for a model built at start (the small /v1/match one)
            "KEFU_MODEL_PATH": str(model),
            "KEFU_EVALUATION_PULL_INTERVAL": "0",
            "KEFU_LOG_LEVEL": "INFO",
            "KEFU_RATE_LIMIT_SHOP": RATE_LIMIT,
            "KEFU_RATE_LIMIT_CLIENT": RATE_LIMIT,
            "PROMETHEUS_MULTIPROC_DIR": str(tmp / "prometheus"),
        }
    )
    if kb is not None:
        env["KEFU_KB_PATH"] = str(kb)
    if redis_url:
        env["KEFU_REDIS_URL"] = env["KEFU_QUEUE_URL"] = redis_url
        env["KEFU_REDIS_PREFIX"] = prefix or f"kefu-bench-{secrets.token_hex(5)}:"
    return env, admin


def build_model(kb: Path, out: Path, fast: bool, say: Say) -> Path:
    """`kefu build` in a child process (the encoder's memory stays out of this one)."""
    t = time.perf_counter()
    cmd = [
        sys.executable,
        "-m",
        "training.cli",
        "build",
        str(kb),
        "-o",
        str(out),
        *(["--fast"] if fast else []),
    ]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, errors="replace")
    if done.returncode != 0:
        raise BenchError(f"kefu build {kb.name} failed: {(done.stderr or done.stdout).strip()[-1500:]}")
    say(f"  model built ({'fast' if fast else 'default'} profile) in {time.perf_counter() - t:.1f} s")
    return out


@contextlib.contextmanager
def hello_target(cfg: BenchConfig, tmp: Path, say: Say) -> Iterator[Target]:
    with contextlib.ExitStack() as stack:
        env = {k: v for k, v in os.environ.items() if not k.startswith("KEFU_")}
        server = _start(env, cfg, tmp / "server.log", stack, app="training.hello_app:app")
        yield Target(f"{server.url}/hello", {}, _text)


@contextlib.contextmanager
def match_target(cfg: BenchConfig, tmp: Path, say: Say, fast: bool) -> Iterator[Target]:
    given = cfg.models.get("fast" if fast else "default")
    if given is not None:
        say(f"  serving the model at {given}")
    model = given or build_model(DEMO_KB, tmp / "model", fast, say)
    with contextlib.ExitStack() as stack:
        env, _ = _service_env(tmp, f"sqlite:///{tmp / 'kefu.db'}", model=model, kb=None)
        server = _start(env, cfg, tmp / "server.log", stack)
        yield Target(f"{server.url}/v1/match", {}, _text)


@contextlib.contextmanager
def messages_target(cfg: BenchConfig, tmp: Path, say: Say, embedded: bool) -> Iterator[Target]:
    """The demo shop on a fresh database: catalog imported, KB published and served by every worker."""
    with contextlib.ExitStack() as stack:
        if embedded:
            env, admin = _service_env(
                tmp,
                f"sqlite:///{tmp / 'kefu.db'}",
                model=tmp / "legacy-model",
                kb=_legacy_kb(DEMO_KB, tmp / "legacy-kb.csv"),
            )
            where = "SQLite"
        else:
            try:
                database_url = stack.enter_context(fresh_database(cfg.pg_url, say))
                prefix = stack.enter_context(redis_prefix(cfg.redis_url, say))
            except Exception as e:  # psycopg / redis connection errors: say which service and why
                raise BenchError(f"PostgreSQL ({cfg.pg_url}) or Redis ({cfg.redis_url}) unusable: {e}") from e
            env, admin = _service_env(
                tmp,
                database_url,
                model=tmp / "legacy-model",
                kb=_legacy_kb(DEMO_KB, tmp / "legacy-kb.csv"),
                redis_url=cfg.redis_url,
                prefix=prefix,
            )
            where = f"PostgreSQL ({database_url.rsplit('/', 1)[-1]}) + Redis ({prefix})"
        server = _start(env, cfg, tmp / "server.log", stack)
        shop = "demo"
        t = time.perf_counter()
        try:
            with httpx.Client(base_url=server.url, timeout=120) as c:
                r = c.post(
                    "/v1/admin/shops", json={"id": shop, "name": "演示店铺"}, headers={"X-Admin-Token": admin}
                )
                key = {"X-API-Key": _check(r, 201)["api_key"]}
                files = {"file": (DEMO_CATALOG.name, DEMO_CATALOG.read_bytes())}
                _check(c.post(f"/v1/shops/{shop}/catalog", headers=key, files=files), 200)
                files = {"file": (DEMO_KB.name, DEMO_KB.read_bytes())}
                up = _check(c.post(f"/v1/shops/{shop}/kb?publish=true", headers=key, files=files), 200)
            wait_served_everywhere(server.url, shop, key, int(up["version"]), cfg.workers, cfg.ready_timeout)
        except LoadTestError as e:
            raise BenchError(str(e)) from e
        say(f"  demo shop published and served by all workers in {time.perf_counter() - t:.1f} s ({where})")
        yield Target(f"{server.url}/v1/shops/{shop}/messages", key, _message, note=where)


def _target(name: str, cfg: BenchConfig, tmp: Path, say: Say) -> contextlib.AbstractContextManager[Target]:
    if name == "hello":
        return hello_target(cfg, tmp, say)
    if name in ("match-fast", "match-default"):
        return match_target(cfg, tmp, say, fast=name == "match-fast")
    return messages_target(cfg, tmp, say, embedded=name == "messages-sqlite")


# ------------------------------------------------------------------------------------------ the run


@dataclass
class ScenarioResult:
    name: str
    result: WrkResult | None = None
    error: str | None = None  # why it could not be measured
    load_average: tuple[float, float, float] = (0.0, 0.0, 0.0)  # right after the measured run

    @property
    def ok(self) -> bool:
        return self.result is not None and self.result.errors == 0 and self.result.requests > 0


@dataclass
class BenchReport:
    scenarios: list[ScenarioResult] = field(default_factory=list)
    mix: dict[str, Any] = field(default_factory=dict)
    load_start: tuple[float, float, float] = (0.0, 0.0, 0.0)
    load_end: tuple[float, float, float] = (0.0, 0.0, 0.0)

    @property
    def ok(self) -> bool:
        return bool(self.scenarios) and all(s.ok for s in self.scenarios)


def _mix_files(cfg: BenchConfig, say: Say) -> tuple[dict[str, list[list[Message]]], dict[str, Any]]:
    """The measured mix and a separate warm-up mix (another seed), each split per wrk thread."""
    sources = mix_sources(seed=cfg.seed)
    size = cfg.mix_size or max(2000, cfg.duration * 3000)
    mix = demo_mix(size, cfg.seed, cfg.repeat_share, sources)
    warm = demo_mix(max(500, cfg.warmup * 3000), cfg.seed + 1, cfg.repeat_share, sources, tag="w")
    lanes = -(-cfg.connections // cfg.threads)
    summary = mix_summary(mix)
    say(
        f"mix: {summary['messages']} messages in {summary['conversations']} conversations, "
        f"{summary['repeat_share']:.0%} of questions exact repeats ({summary['repeat_share_all']:.0%} of all "
        f"messages, small talk included), kinds {summary['kinds']}"
    )
    return {
        "measure": interleave(mix, cfg.threads, lanes),
        "warmup": interleave(warm, cfg.threads, lanes),
    }, summary


def run_scenario(
    name: str, cfg: BenchConfig, wrk: str, mixes: dict[str, list[list[Message]]], say: Say
) -> ScenarioResult:
    out = ScenarioResult(name)
    with tempfile.TemporaryDirectory(prefix=f"kefu-bench-{name}-") as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "data").mkdir()
        script = tmp / "bench.lua"
        script.write_text(LUA, encoding="utf-8")
        say(f"{name}: {DESCRIPTIONS[name]}")
        try:
            with _target(name, cfg, tmp, say) as target:
                for phase in ("warmup", "measure"):
                    write_bodies(mixes[phase], tmp / phase, target.body)
                if cfg.warmup:
                    warm = run_wrk(wrk, target.url, target.headers, tmp / "warmup", script, cfg.warmup, cfg)
                    say(f"  warm-up: {warm.requests} requests, {warm.errors} errors")
                out.result = run_wrk(
                    wrk, target.url, target.headers, tmp / "measure", script, cfg.duration, cfg
                )
                out.load_average = os.getloadavg()
                r = out.result
                say(
                    f"  {r.req_per_s:,.0f} req/s, p50 {r.p50_ms:.1f} ms, p99 {r.p99_ms:.1f} ms, "
                    f"{r.errors} errors; stopping the server"
                )
        except BenchError as e:
            out.error = str(e)
            say(f"  not measured: {e}")
    return out


def run(cfg: BenchConfig, say: Say = print) -> BenchReport:
    """Every chosen scenario in turn; BenchError when nothing can run (bad settings, no wrk)."""
    cfg.check()
    wrk = find_wrk()
    report = BenchReport(load_start=os.getloadavg())
    mixes, report.mix = _mix_files(cfg, say)
    for name in cfg.scenarios:
        report.scenarios.append(run_scenario(name, cfg, wrk, mixes, say))
    report.load_end = os.getloadavg()
    return report


def to_json(report: BenchReport, cfg: BenchConfig) -> dict[str, Any]:
    scenarios = []
    for s in report.scenarios:
        row: dict[str, Any] = {"scenario": s.name, "description": DESCRIPTIONS[s.name], "error": s.error}
        if s.result is not None:
            r = s.result
            row.update(asdict(r))
            row.update(req_per_s=round(r.req_per_s, 1), errors=r.errors, load_average=list(s.load_average))
        scenarios.append(row)
    settings = asdict(cfg)
    settings["json_path"] = str(cfg.json_path) if cfg.json_path else None
    settings["models"] = {k: str(v) for k, v in cfg.models.items()}
    settings["pg_url"] = _hide_password(cfg.pg_url)
    return {
        "tool": "wrk",
        "cpus": os.cpu_count(),
        "load_average": {"start": list(report.load_start), "end": list(report.load_end)},
        "settings": settings,
        "uvicorn": list(UVICORN_OPTIONS),
        "mix": report.mix,
        "scenarios": scenarios,
        "ok": report.ok,
    }


def _hide_password(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _fmt_errors(r: WrkResult) -> str:
    if not r.errors:
        return "0"
    parts = [f"{code}×{n}" for code, n in r.statuses.items()]
    parts += [f"{kind}×{n}" for kind, n in r.socket_errors.items() if n]
    return f"[bold red]{r.errors}[/] ({', '.join(parts)})"


def print_report(report: BenchReport, cfg: BenchConfig, console: Any) -> None:
    """One table, then every scenario with errors (in red) and the conditions of the run."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(
        "scenario",
        "req/s",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "errors",
        title=(
            f"wrk, {cfg.threads} threads, {cfg.connections} connections, {cfg.duration} s per scenario; "
            f"uvicorn --workers {cfg.workers} --http httptools --loop uvloop"
        ),
    )
    for s in report.scenarios:
        r = s.result
        if r is None:
            table.add_row(s.name, "[bold red]not measured[/]", "", "", "", "")
            continue
        table.add_row(
            s.name,
            f"{r.req_per_s:,.0f}",
            f"{r.p50_ms:.1f}",
            f"{r.p95_ms:.1f}",
            f"{r.p99_ms:.1f}",
            _fmt_errors(r),
        )
    console.print(table)
    m = report.mix
    console.print(
        f"mix: {m.get('messages')} messages, {m.get('conversations')} conversations of 1-4 turns, "
        f"{m.get('repeat_share', 0):.0%} of questions exact repeats ({m.get('repeat_share_all', 0):.0%} of "
        f"all messages), kinds {m.get('kinds')}"
    )
    for s in report.scenarios:
        if s.error:
            console.print(f"[bold red]{s.name}: not measured:[/] {escape(s.error)}")
        elif s.result is not None:
            r = s.result
            if r.passes:
                console.print(f"{s.name}: the mix ran out and was sent again ({r.passes} more pass(es))")
            if r.errors:
                console.print(
                    f"[bold red]{s.name}: {r.errors} errors[/]: {r.non2xx} non-2xx of {r.requests} answers, "
                    f"{sum(r.socket_errors.values())} socket errors; first non-2xx: "
                    f"{escape(r.first_error) or '-'}"
                )
            elif r.requests == 0:
                console.print(f"[bold red]{s.name}: no request completed[/]")
    ls, le = report.load_start, report.load_end
    console.print(
        f"load average {ls[0]:.2f} {ls[1]:.2f} {ls[2]:.2f} at the start, {le[0]:.2f} {le[1]:.2f} {le[2]:.2f} "
        f"at the end, {os.cpu_count()} CPUs (a shared machine's load shows in the figures)"
    )
    if report.ok:
        console.print("[bold green]no errors[/]")
    else:
        console.print("[bold red]the run had errors (see above)[/]")


def main(cfg: BenchConfig, console: Any = None) -> int:
    """Run and print; 0 when every scenario ran without an error, 1 with errors, 2 when it could not run."""
    from rich.console import Console
    from rich.markup import escape

    console = console or Console(highlight=False)

    def say(line: str) -> None:
        console.print(escape(line))

    try:
        report = run(cfg, say)
    except BenchError as e:
        console.print(f"[bold red]error:[/] {escape(str(e))}")
        return 2
    print_report(report, cfg, console)
    if cfg.json_path is not None:
        cfg.json_path.parent.mkdir(parents=True, exist_ok=True)
        cfg.json_path.write_text(
            json.dumps(to_json(report, cfg), ensure_ascii=False, indent=2), encoding="utf-8"
        )
        console.print(f"figures written to {escape(str(cfg.json_path))}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main(BenchConfig()))
