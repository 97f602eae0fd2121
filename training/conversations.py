"""Evaluation on whole conversations: what the bot does with greetings, follow-ups, two-question messages,
personal data, pictures and out-of-scope talk, not only with FAQ questions.

A conversation set is JSONL, one conversation a line::

    {"id": "c1", "category": "smalltalk", "context": {"sku_id": "...", "customer_pin": "..."},
     "turns": [{"text": "在吗", "expect": "smalltalk", "category": "greeting"},
               {"text": "能开专票吗", "expect": "answer", "entry": "invoice-special"}]}

A turn's `category` (default: the conversation's) groups the figures. `expect` is one of:
`answer` (with `entry` and/or `contains`: strings the reply must hold), `answer_all` (with `entries`: every
one answered), `smalltalk`, `clarify`, `handoff`, `not_answered` (anything but an answer: out of scope),
`non_text` (asked for text, or handed off as non-text). `not_contains` lists strings the reply must never
hold (another customer's order). Each turn is judged right, wrong (answered with another entry, or a
forbidden string shown) or unresolved (clarified or handed off when an answer was expected).

The set is sent through the service's own HTTP API (`/v1/shops/{shop}/messages`), so the figures are what
a customer would get.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

EXPECTATIONS = ("answer", "answer_all", "smalltalk", "clarify", "handoff", "not_answered", "non_text")


class ConversationFileError(ValueError):
    """A conversation set that cannot be evaluated; the message names the file, line and field."""


@dataclass(frozen=True)
class ExpectedTurn:
    text: str
    expect: str
    category: str
    entry: str | None = None
    entries: tuple[str, ...] = ()
    contains: tuple[str, ...] = ()
    not_contains: tuple[str, ...] = ()


@dataclass(frozen=True)
class Conversation:
    id: str
    category: str
    turns: tuple[ExpectedTurn, ...]
    context: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TurnOutcome:
    conversation: str
    turn: int
    category: str
    text: str
    expect: str
    kind: str
    entry_id: str | None
    verdict: str  # right | wrong | unresolved
    handoff: bool
    why: str = ""


def _strings(value: Any, where: str, name: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ConversationFileError(f"{where}: {name} must be a string or a list of strings")


def load_conversations(path: str | Path) -> list[Conversation]:
    """Read and check a conversation set; every problem is reported with its line."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except OSError as e:
        raise ConversationFileError(f"{path}: cannot read ({e.strerror or e})") from e
    out: list[Conversation] = []
    problems: list[str] = []
    seen: set[str] = set()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path.name} line {number}"
        try:
            out.append(_conversation(json.loads(line), where, seen))
        except json.JSONDecodeError as e:
            problems.append(f"{where}: invalid JSON ({e.msg} at column {e.colno})")
        except ConversationFileError as e:
            problems.append(str(e))
    if problems:
        raise ConversationFileError("\n".join(problems))
    if not out:
        raise ConversationFileError(f"{path.name}: no conversations")
    return out


def _conversation(data: Any, where: str, seen: set[str]) -> Conversation:
    if not isinstance(data, dict):
        raise ConversationFileError(f"{where}: expected a JSON object")
    cid = data.get("id")
    if not isinstance(cid, str) or not cid:
        raise ConversationFileError(f"{where}: id must be a non-empty string")
    if cid in seen:
        raise ConversationFileError(f"{where}: duplicate conversation id {cid!r}")
    seen.add(cid)
    category = str(data.get("category") or "other")
    context = data.get("context") or {}
    if not isinstance(context, dict) or not all(isinstance(v, str) for v in context.values()):
        raise ConversationFileError(f"{where}: context must be an object of strings")
    turns = data.get("turns")
    if not isinstance(turns, list) or not turns:
        raise ConversationFileError(f"{where}: turns must be a non-empty list")
    parsed = []
    for i, turn in enumerate(turns, start=1):
        w = f"{where}, turn {i}"
        if not isinstance(turn, dict) or not isinstance(turn.get("text"), str):
            raise ConversationFileError(f"{w}: a turn is an object with a text")
        expect = turn.get("expect")
        if expect not in EXPECTATIONS:
            raise ConversationFileError(f"{w}: expect must be one of {', '.join(EXPECTATIONS)}")
        entries = _strings(turn.get("entries"), w, "entries")
        contains = _strings(turn.get("contains"), w, "contains")
        entry = turn.get("entry")
        if expect == "answer" and not entry and not contains:
            raise ConversationFileError(f"{w}: an expected answer needs an entry or contains")
        if expect == "answer_all" and len(entries) < 2:
            raise ConversationFileError(f"{w}: answer_all needs at least two entries")
        parsed.append(
            ExpectedTurn(
                text=turn["text"],
                expect=expect,
                category=str(turn.get("category") or category),
                entry=str(entry) if entry else None,
                entries=entries,
                contains=contains,
                not_contains=_strings(turn.get("not_contains"), w, "not_contains"),
            )
        )
    return Conversation(cid, category, tuple(parsed), dict(context))


def judge(turn: ExpectedTurn, reply: dict[str, Any]) -> tuple[str, str]:
    """(verdict, why) of one reply against what the turn expects."""
    kind = reply.get("kind", "")
    text = str(reply.get("text", ""))
    leaked = [s for s in turn.not_contains if s in text or s in json.dumps(reply, ensure_ascii=False)]
    if leaked:
        return "wrong", f"shows {leaked[0]!r}"
    answered = {a.get("entry_id") for a in reply.get("answers") or () if a.get("kind") == "answer"}
    if kind == "answer" and reply.get("entry_id"):
        answered.add(reply["entry_id"])
    if turn.expect == "answer":
        if kind != "answer":
            return "unresolved", f"{kind}"
        if turn.entry and turn.entry not in answered:
            return "wrong", f"answered {sorted(a for a in answered if a)}"
        missing = [s for s in turn.contains if s not in text]
        return ("wrong", f"answer lacks {missing[0]!r}") if missing else ("right", "")
    if turn.expect == "answer_all":
        if kind != "answer":
            return "unresolved", kind
        extra = answered - set(turn.entries)
        if extra:
            return "wrong", f"answered {sorted(e for e in extra if e)}"
        got = [e for e in turn.entries if e in answered]
        return ("right", "") if len(got) == len(turn.entries) else ("unresolved", f"answered {got} only")
    if turn.expect == "non_text":
        code = (reply.get("handoff") or {}).get("code")
        return ("right", "") if kind == "smalltalk" or code == "non_text" else ("wrong", kind)
    if turn.expect == "not_answered":
        return ("wrong", f"answered {reply.get('entry_id')}") if kind == "answer" else ("right", "")
    if kind == turn.expect:
        return "right", ""
    return ("wrong" if kind == "answer" else "unresolved"), kind


def run(
    conversations: Iterable[Conversation], send: Callable[[str, str, dict[str, str]], dict[str, Any]]
) -> list[TurnOutcome]:
    """Send every turn in order (`send(conversation_id, text, context)` returns the reply) and judge it."""
    outcomes = []
    for c in conversations:
        for i, turn in enumerate(c.turns, start=1):
            reply = send(c.id, turn.text, c.context)
            verdict, why = judge(turn, reply)
            if verdict != "right" and reply.get("reason"):
                why = f"{why} ({reply['reason']})"
            outcomes.append(
                TurnOutcome(
                    c.id,
                    i,
                    turn.category,
                    turn.text,
                    turn.expect,
                    str(reply.get("kind")),
                    reply.get("entry_id"),
                    verdict,
                    reply.get("kind") == "handoff",
                    why,
                )
            )
    return outcomes


@dataclass
class CategoryFigures:
    turns: int = 0
    right: int = 0
    wrong: int = 0
    handoffs: int = 0

    @property
    def right_rate(self) -> float:
        return self.right / self.turns if self.turns else 0.0

    @property
    def handoff_rate(self) -> float:
        return self.handoffs / self.turns if self.turns else 0.0


def summarize(outcomes: Iterable[TurnOutcome]) -> dict[str, CategoryFigures]:
    """Figures per category, plus "all"."""
    figures: dict[str, CategoryFigures] = defaultdict(CategoryFigures)
    for o in outcomes:
        for key in (o.category, "all"):
            f = figures[key]
            f.turns += 1
            f.right += o.verdict == "right"
            f.wrong += o.verdict == "wrong"
            f.handoffs += o.handoff
    return dict(sorted(figures.items(), key=lambda kv: (kv[0] == "all", kv[0])))


def evaluate_with_service(
    conversations: list[Conversation],
    kb: Path,
    *,
    catalog: Path | None = None,
    dense: bool = True,
    timeout: float = 600.0,
    jos: bool = True,
) -> list[TurnOutcome]:
    """Stand the service up in process on a temporary SQLite database, import `catalog` (if any), publish
    `kb` for one shop and run the conversations through its HTTP API.

    With `jos` the shop's JD credentials point at the fake JOS gateway of the sandbox (training/
    jos_sandbox.py, made-up orders of made-up customers), so order, logistics and refund questions are
    answered from it, as `kefu sandbox` shows them.
    """
    import tempfile
    import time
    from contextlib import ExitStack

    from cryptography.fernet import Fernet
    from fastapi.testclient import TestClient
    from pydantic import SecretStr

    from api.main import create_app
    from api.settings import Settings
    from training.jos_sandbox import FakeJos, install_orders
    from training.sandbox import ACCESS_TOKEN, APP_KEY, APP_SECRET, METHODS

    admin = "eval-admin-token"
    with tempfile.TemporaryDirectory(prefix="kefu-conv-") as tmp, ExitStack() as stack:
        jd: dict[str, Any] = {}
        if jos:
            fake = stack.enter_context(FakeJos(APP_KEY, APP_SECRET, ACCESS_TOKEN))
            install_orders(
                fake,
                order_method=METHODS["jos_order_method"],
                logistics_method=METHODS["jos_logistics_method"],
                refund_method=METHODS["jos_refund_method"],
            )
            jd = {"jos_url": fake.url, "secret_key": SecretStr(Fernet.generate_key().decode()), **METHODS}
        settings = Settings(
            database_url=f"sqlite:///{tmp}/kefu.db",
            data_dir=Path(tmp) / "data",
            admin_token=SecretStr(admin),
            dense=dense,
            kb_path=None,
            model_path=Path(tmp) / "no-model",
            evaluation_pull_interval=0,
            rate_limit_shop=None,  # one client replaying a whole set is not a flood
            rate_limit_client=None,
            **jd,
        )
        with TestClient(create_app(settings, shops_service=True)) as client:
            r = client.post("/v1/admin/shops", json={"id": "eval"}, headers={"X-Admin-Token": admin})
            r.raise_for_status()
            key = {"X-API-Key": r.json()["api_key"]}
            if jos:
                creds = {"app_key": APP_KEY, "app_secret": APP_SECRET, "access_token": ACCESS_TOKEN}
                client.put("/v1/shops/eval/jd-credentials", json=creds, headers=key).raise_for_status()
            if catalog is not None:  # first: its model names join the segmenter's dictionary at publish
                with catalog.open("rb") as f:
                    r = client.post("/v1/shops/eval/catalog", headers=key, files={"file": (catalog.name, f)})
                if r.status_code != 200:
                    raise ConversationFileError(f"{catalog}: the service refused the catalog: {r.text[:500]}")
            with kb.open("rb") as f:
                r = client.post("/v1/shops/eval/kb?publish=true", headers=key, files={"file": (kb.name, f)})
            if r.status_code != 200:
                raise ConversationFileError(f"{kb}: the service refused the KB: {r.text[:500]}")
            version = r.json()["version"]
            deadline = time.monotonic() + timeout
            while client.get("/v1/shops/eval", headers=key).json().get("served_version") != version:
                status = client.get(f"/v1/shops/eval/kb/versions/{version}", headers=key).json()
                if status.get("status") == "failed" or time.monotonic() > deadline:
                    raise RuntimeError(f"version {version} was not served: {status.get('error')}")
                time.sleep(0.2)

            def send(conversation: str, text: str, context: dict[str, str]) -> dict[str, Any]:
                body = {"conversation_id": conversation, "text": text, **context}
                r = client.post("/v1/shops/eval/messages", headers=key, json=body)
                r.raise_for_status()
                return dict(r.json())

            return run(conversations, send)
