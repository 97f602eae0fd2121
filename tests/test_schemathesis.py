"""Schemathesis against the OpenAPI schema: every operation, generated data, >= 2,000 cases, zero 5xx.

The app runs in-process (schemathesis's ASGI transport, lifespan included) with two shops, a published KB
for one of them, JD credentials and a fake JOS gateway, so generated requests get past auth and reach the
handlers: most cases carry the shop's real API key (and the admin token) and name the real shop, entry
ids, versions and exchange ids. Each response goes through schemathesis's `not_a_server_error` and
`response_schema_conformance` checks; an exception escaping the app counts as a 500. Generation is
derandomized, so a CI run is reproducible.

The same passes run on SQLite + the in-process store and on PostgreSQL + Redis (which catches what only a
real database refuses, e.g. NUL characters in text): at least 2,000 generated cases each (counted and
printed), then a stateful pass of scenarios that follow the schema's OpenAPI links (the explicit ones on
entry and publish responses, and those schemathesis infers). Every operation of the schema is run;
/metrics is not in it (include_in_schema=False).
"""

from __future__ import annotations

import json
import time
import traceback
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given
from hypothesis import seed as hypothesis_seed
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from hypothesis.errors import Flaky, Unsatisfiable
from pydantic import SecretStr
from schemathesis import Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.core.result import Ok
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import response_schema_conformance

from api.db.models import AgentTask
from api.jd import BEIJING, beijing_timestamp, sign
from api.main import create_app
from api.settings import Settings
from engine import Matcher
from tests.jos_fake import FakeJos
from tests.jos_wares import DEFAULT_WARE_METHOD, ware_page
from tests.test_service import ADMIN, KB, kb_csv, new_shop, publish_and_wait
from tests.test_service import client as client
from tests.test_service import settings as settings
from training.jos_sandbox import (
    install_chatlog,
    install_evaluations,
    install_groups,
    install_service_stats,
)

SHOP, OTHER = "shop-a", "shop-b"  # SHOP has a published KB and JD credentials; OTHER has neither
APP_KEY, APP_SECRET, TOKEN = "JDAPPKEY0001", "jd-secret-0123456789", "jd-token-abcdef"
EVAL_METHOD = "jingdong.fake.cs.evaluation.query"
ENTRY_IDS = [row[0] for row in KB]
CHECKS = [not_a_server_error, response_schema_conformance]

# Cases per operation and generation mode: 28 operations x (65 + 10), less the operations with nothing
# to negate, is about 2,100 per backend.
POSITIVE, NEGATIVE = 65, 10
MIN_CASES = 2000
# The stateful pass: scenarios that follow the schema's links (explicit and inferred by schemathesis)
SCENARIOS, STEPS = 60, 8
MIN_STATEFUL_STEPS = 100


def _settings(tmp_path: Path, jos_url: str, **backend: Any) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        admin_token=SecretStr(ADMIN),
        secret_key=SecretStr("ZmRhc2RmYXNkZmFzZGZhc2RmYXNkZmFzZGZhc2RmYXM="),
        dense=False,
        kb_path=None,
        model_path=tmp_path / "no-model",
        evaluation_pull_interval=0,
        jos_evaluation_method=EVAL_METHOD,
        jos_url=jos_url,
        # generated cases hit one shop from one client far faster than any real client: limits high
        # enough never to refuse, so every case reaches the handlers and the limiter still sees them all
        rate_limit_shop="1000000/minute",
        rate_limit_client="1000000/minute",
        **backend,
    )


@pytest.fixture
def fake_jos() -> Iterator[FakeJos]:
    with FakeJos(APP_KEY, APP_SECRET, TOKEN) as fake:
        install_evaluations(fake, [], list_method="jingdong.unused.list")  # the statistics method
        install_service_stats(fake, [])
        install_chatlog(fake, [])
        install_groups(fake)
        fake.handle(
            EVAL_METHOD,
            lambda biz: {
                "result": {
                    "list": [
                        {
                            "id": f"e{biz.get('page')}",
                            "score": 4,
                            "content": "耐心",
                            "createTime": "2026-01-02",
                        }
                    ]
                }
            },
        )
        fake.handle(DEFAULT_WARE_METHOD, ware_page)  # POST /v1/shops/{shop}/catalog/pull
        yield fake


@dataclass
class Run:
    """One fuzzing run against one app: what it knows about the shops, and what it saw."""

    client: asgi.ASGIClient
    keys: dict[str, str]  # shop id -> its current API key (rotated keys are picked up from responses)
    exchange_ids: list[int] = field(default_factory=lambda: [1])
    task_id: int = 1  # an agent task of SHOP
    cases: Counter[str] = field(default_factory=Counter)
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    failures: dict[tuple[str, str], str] = field(default_factory=dict)
    seconds: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))

    @property
    def total(self) -> int:
        return sum(self.cases.values())


@pytest.fixture
def start_app(fast_matcher: Matcher) -> Iterator[Callable[[Settings], tuple[schemathesis.BaseSchema, Run]]]:
    """Start an app (lifespan included) with the shops set up; every started app is shut down after.

    /v1/match serves the demo model (without one it answers 503 by design).
    """
    clients = ExitStack()

    def start(settings: Settings) -> tuple[schemathesis.BaseSchema, Run]:
        app = create_app(settings, matcher=fast_matcher)
        schema = schemathesis.openapi.from_asgi("/openapi.json", app)  # starts the app's lifespan
        client = clients.enter_context(asgi.get_client(cast(Any, app)))
        c = cast(Any, client)  # the helpers are written for TestClient; this is a requests.Session
        key = new_shop(c, SHOP)["X-API-Key"]
        other = new_shop(c, OTHER)["X-API-Key"]
        publish_and_wait(c, SHOP, {"X-API-Key": key}, kb_csv())
        creds = {"app_key": APP_KEY, "app_secret": APP_SECRET, "access_token": TOKEN}
        assert client.put(f"/v1/shops/{SHOP}/jd-credentials", headers={"X-API-Key": key}, json=creds).ok
        with app.state.service.db.session() as s:  # a task for the agents, as a notify entry raises one
            task = AgentTask(shop_id=SHOP, conversation_id="c-1", entry_id="address", context=["改地址"])
            s.add(task)
            s.flush()
            task_id = task.id
        return schema, Run(client=client, keys={SHOP: key, OTHER: other}, task_id=task_id)

    try:
        yield start
    finally:
        clients.close()
        asgi.shutdown_lifespans()  # the service's threads, database and store connections


# ---------------------------------------------------------------- steering generated cases

# What schemathesis rarely generates but clients do send: NUL, control characters, values longer than
# the database columns (VARCHAR(200)), padding, astral characters.
HOSTILE = st.sampled_from(
    ["a\x00b", "\x00", "x" * 201, "字" * 300, " padded ", "ab\x1f\x7f", "😀" * 60, "%00"]
)


def _steer(case: Case, run: Run, data: st.DataObject) -> dict[str, Any]:
    """Point most cases at real things (shop, key, entry, version, exchange); returns extra call kwargs."""
    params = case.path_parameters
    if params is not None and "shop" in params:
        params["shop"] = data.draw(st.sampled_from([SHOP] * 8 + [OTHER, params["shop"]]), label="shop")
        if "entry_id" in params:
            real = st.sampled_from([*ENTRY_IDS, "gift"])
            params["entry_id"] = data.draw(st.one_of(st.just(params["entry_id"]), real, HOSTILE))
        if "version" in params and data.draw(st.booleans(), label="real version"):
            params["version"] = data.draw(st.integers(1, 4), label="version")
        if "task_id" in params and data.draw(st.booleans(), label="real task"):
            params["task_id"] = run.task_id
    header_names = {p.name.lower() for p in case.operation.headers}
    if "x-api-key" in header_names:
        who = data.draw(st.sampled_from([SHOP] * 8 + [OTHER, ""]), label="api key of")
        if who:
            case.headers["x-api-key"] = run.keys[who]
    if "x-admin-token" in header_names and data.draw(st.integers(0, 9), label="admin") < 8:
        case.headers["x-admin-token"] = ADMIN
    body = case.body
    if isinstance(body, dict):
        if "exchange_id" in body and data.draw(st.booleans()):
            body["exchange_id"] = data.draw(st.sampled_from(run.exchange_ids[-20:]), label="exchange_id")
        if "correct_entry_id" in body and data.draw(st.booleans()):
            body["correct_entry_id"] = data.draw(st.sampled_from(ENTRY_IDS), label="correct_entry_id")
        texts = sorted(k for k, v in body.items() if isinstance(v, str))
        if texts and data.draw(st.integers(0, 9), label="hostile text") == 0:
            body[data.draw(st.sampled_from(texts))] = data.draw(HOSTILE)

    if case.operation.label == "POST /v1/shops/{shop}/kb" and data.draw(st.integers(0, 9)) < 6:
        return {"files": [("file", _kb_file(data))]}  # replaces the generated body
    if case.operation.label == "POST /jd/{shop}/messages" and data.draw(st.integers(0, 9)) < 8:
        return _jd_push(data)
    return {}


def _kb_file(data: st.DataObject) -> tuple[str, bytes]:
    """A KB upload with a name the server accepts: a real KB, an edited one, or junk in a known format."""
    suffix = data.draw(st.sampled_from([".csv", ".json", ".jsonl", ".xlsx", ".txt", ""]), label="suffix")
    text = st.text(max_size=30) | HOSTILE
    kind = data.draw(st.sampled_from(["kb", "edited", "rows", "bytes"]), label="upload")
    if kind == "kb":
        content = kb_csv()
    elif kind == "edited":
        extra = data.draw(st.lists(st.tuples(text, text, text, text), max_size=3), label="extra rows")
        content = kb_csv([*KB[: data.draw(st.integers(0, len(KB)))], *extra])
    elif kind == "rows":
        columns = st.sampled_from(["id", "question", "answer", "similar", "category", "valid_to"])
        rows = data.draw(st.lists(st.dictionaries(columns, text), max_size=4), label="rows")
        items: Any = (rows[0] if rows else {}) if suffix == ".jsonl" else rows
        content = json.dumps(items, ensure_ascii=False).encode()
    else:
        content = data.draw(st.binary(max_size=200), label="bytes")
    return f"kb{suffix}", content


def _jd_push(data: st.DataObject) -> dict[str, Any]:
    """A JD push signed with the shop's AppSecret, or one thing wrong with it; ids repeat (replays)."""
    fault = data.draw(st.sampled_from([None] * 6 + ["secret", "app_key", "stale", "future", "drop"]))
    skew = {"stale": -400, "future": 400}.get(fault or "", 0)
    text = st.text(min_size=1, max_size=250) | HOSTILE
    params: dict[str, Any] = {
        "app_key": "OTHERKEY" if fault == "app_key" else APP_KEY,
        "timestamp": beijing_timestamp(datetime.now(BEIJING) + timedelta(seconds=skew)),
        "message_id": data.draw(st.sampled_from(["m-1", "m-2"]) | text, label="message_id"),
        "conversation_id": data.draw(text, label="conversation_id"),
        "text": data.draw(st.sampled_from(["质保几年", "包邮吗"]) | text, label="text"),
    }
    if fault == "drop":
        del params[data.draw(st.sampled_from(sorted(params)), label="dropped")]
    params["sign"] = sign(params, "wrong-secret" if fault == "secret" else APP_SECRET)
    return {"json": params} if data.draw(st.booleans(), label="as json") else {"data": params}


def _learn(case: Case, run: Run, status: int, body: Any) -> None:
    """Keep what later cases need: rotated API keys, exchange ids."""
    label = case.operation.label
    if label == "POST /v1/admin/shops/{shop}/api-key" and status == 200:
        shop = (case.path_parameters or {}).get("shop")
        if shop in run.keys:
            run.keys[shop] = body["api_key"]
    if isinstance(body, dict) and isinstance(body.get("exchange_id"), int):
        run.exchange_ids.append(body["exchange_id"])
    if label == "PUT /v1/shops/{shop}/jd-credentials" and status == 200:
        # keep the credentials the JD pushes are signed with and the fake JOS accepts
        creds = {"app_key": APP_KEY, "app_secret": APP_SECRET, "access_token": TOKEN}
        headers = {"X-API-Key": run.keys[SHOP]}
        assert run.client.put(f"/v1/shops/{SHOP}/jd-credentials", headers=headers, json=creds).ok


def _execute(case: Case, run: Run, data: st.DataObject) -> None:
    label = case.operation.label
    run.cases[label] += 1
    extra = _steer(case, run, data)
    try:
        response = case.call(session=run.client, **extra)
    except Exception as exc:  # raised out of the app: a 500 for a real client
        where = "".join(traceback.format_exception(exc)[-6:])
        run.statuses[label, 500] += 1
        run.failures.setdefault((label, f"{type(exc).__name__}: {exc}"[:200]), where)
        return
    run.statuses[label, response.status_code] += 1
    try:
        case.validate_response(response, checks=CHECKS)
    except FailureGroup as group:
        for failure in group.exceptions:
            run.failures.setdefault((label, failure.title), str(group)[:3000])
    try:
        body = response.json()
    except ValueError:
        body = None
    _learn(case, run, response.status_code, body)


def fuzz(schema: schemathesis.BaseSchema, run: Run, positive: int, negative: int) -> None:
    """Every operation, `positive` + `negative` generated cases each."""
    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result  # the schema loads whole
        operations.append(result.ok())
    assert len(operations) >= 20
    for operation in operations:
        for mode, examples in ((GenerationMode.POSITIVE, positive), (GenerationMode.NEGATIVE, negative)):
            strategy = operation.as_strategy(generation_mode=mode)

            @hypothesis_settings(
                max_examples=examples,
                derandomize=True,
                database=None,
                deadline=None,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            @given(case=strategy, data=st.data())
            def one(case: Case, data: st.DataObject) -> None:
                _execute(case, run, data)

            t0 = time.perf_counter()
            try:
                one()
            except Unsatisfiable:
                # nothing to negate (e.g. GET /healthz has no parameters): only positive cases exist
                if mode is GenerationMode.POSITIVE:
                    raise
            run.seconds[operation.label] += time.perf_counter() - t0
    assert set(run.cases) == {operation.label for operation in operations}  # nothing left out


def stateful(schema: schemathesis.BaseSchema, run: Run) -> None:
    """Scenarios along the schema's links (e.g. PUT an entry, then GET or DELETE it by the returned id;
    publish, then GET or activate the returned version), with the shops' keys; counted in `run`."""
    steps = iter(range(10**9))  # steers deterministically: no Hypothesis draw is available here

    class Machine(schema.as_state_machine()):  # type: ignore[misc]
        def before_call(self, case: Case) -> None:
            n = next(steps)
            params = case.path_parameters
            if params is not None and "shop" in params and params["shop"] not in run.keys and n % 5:
                params["shop"] = SHOP
            shop = (params or {}).get("shop", SHOP)
            names = {p.name.lower() for p in case.operation.headers}
            if "x-api-key" in names and n % 7:
                case.headers["x-api-key"] = run.keys.get(shop, run.keys[SHOP])
            if "x-admin-token" in names and n % 7:
                case.headers["x-admin-token"] = ADMIN

        def get_call_kwargs(self, case: Case) -> dict[str, Any]:
            return {"session": run.client}

        def after_call(self, response: Any, case: Case) -> None:
            label = f"stateful {case.operation.label}"
            run.cases[label] += 1
            run.statuses[label, response.status_code] += 1
            try:
                body = response.json()
            except ValueError:
                body = None
            _learn(case, run, response.status_code, body)

        def validate_response(self, response: Any, case: Case, *args: Any, **kwargs: Any) -> None:
            try:
                case.validate_response(response, checks=CHECKS)
            except FailureGroup as group:
                for failure in group.exceptions:
                    run.failures.setdefault(
                        (f"stateful {case.operation.label}", failure.title), str(group)[:3000]
                    )

    t0 = time.perf_counter()
    settings = hypothesis_settings(
        max_examples=SCENARIOS,
        stateful_step_count=STEPS,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    # The app keeps its state between scenarios, so Hypothesis may find a replayed prefix behaving
    # differently and stop a suite with Flaky (schemathesis's own runner restarts the suite then too).
    # Failures are collected in `run`, never raised, so Flaky only means "start another suite". Seeded
    # suites, not derandomize: a fixed seed per suite keeps runs reproducible up to the app's timing.
    for suite in range(6):
        try:
            hypothesis_seed(suite)(Machine).run(settings=settings)
        except Flaky:
            run.statuses["stateful suites cut short (Flaky)", 0] += 1
        if sum(n for label, n in run.cases.items() if label.startswith("stateful")) >= MIN_STATEFUL_STEPS:
            break
    run.seconds["stateful"] += time.perf_counter() - t0


def _report(run: Run) -> str:
    lines = [f"{run.total} cases"]
    for label in sorted(run.cases):
        seen = {s: n for (op, s), n in sorted(run.statuses.items()) if op == label}
        lines.append(f"  {run.cases[label]:4d} {run.seconds[label]:5.1f}s  {label}  {seen}")
    for (label, title), detail in run.failures.items():
        lines.append(f"\n=== {label}: {title}\n{detail}")
    return "\n".join(lines)


def _assert_clean(run: Run) -> None:
    report = _report(run)
    print(report)
    assert not run.failures, report
    stateless = sum(n for label, n in run.cases.items() if not label.startswith("stateful"))
    assert stateless >= MIN_CASES, report
    assert run.total - stateless >= MIN_STATEFUL_STEPS, report
    # the links were followed: publish -> GET the version it returned
    assert run.statuses["stateful GET /v1/shops/{shop}/kb/versions/{version}", 200], report
    # the steering works: every shop operation got past auth at least once
    for label in (label for label in run.cases if not label.startswith("stateful")):
        reached = sum(n for (op, s), n in run.statuses.items() if op == label and s not in (401, 403, 404))
        assert reached, f"{label} never got past auth/lookup\n{report}"


def test_schemathesis_sqlite(tmp_path: Path, fake_jos: FakeJos, start_app: Any) -> None:
    settings = _settings(tmp_path, fake_jos.url, database_url=f"sqlite:///{tmp_path}/kefu.db", redis_url=None)
    schema, run = start_app(settings)
    t0 = time.perf_counter()
    fuzz(schema, run, POSITIVE, NEGATIVE)
    stateful(schema, run)
    print(f"\nsqlite + in-process store: {time.perf_counter() - t0:.1f}s")
    _assert_clean(run)


def test_schemathesis_postgres_redis(
    tmp_path: Path, pg_database: str, redis_url: str, fake_jos: FakeJos, start_app: Any
) -> None:
    # fixtures are torn down in reverse: the app stops before its database is dropped
    settings = _settings(
        tmp_path,
        fake_jos.url,
        database_url=pg_database,
        redis_url=redis_url,
        redis_prefix=f"kefu-t-{uuid.uuid4().hex[:8]}:",
    )
    schema, run = start_app(settings)
    t0 = time.perf_counter()
    fuzz(schema, run, POSITIVE, NEGATIVE)
    stateful(schema, run)
    print(f"\npostgresql + redis: {time.perf_counter() - t0:.1f}s")
    _assert_clean(run)


# ---------------------------------------------------------------- regressions for what the runs found
# On both backends (the `settings` fixture of tests/test_service.py); most only failed on PostgreSQL.

BIG = 2**70


def test_out_of_range_integers_are_refused_not_sent_to_the_database(client: TestClient) -> None:
    """Were 500s: OverflowError in the SQLite driver, `integer out of range` in PostgreSQL."""
    key = new_shop(client, SHOP)
    for method, url, body in [
        ("GET", f"/v1/shops/{SHOP}/entries?offset={BIG}", None),
        ("GET", f"/v1/shops/{SHOP}/exchanges?offset={BIG}", None),
        ("GET", f"/v1/shops/{SHOP}/kb/versions/{2**31}", None),
        ("GET", f"/v1/shops/{SHOP}/kb/versions/-{BIG}", None),
        ("POST", f"/v1/shops/{SHOP}/kb/versions/{BIG}/activate", None),
        ("POST", f"/v1/shops/{SHOP}/feedback", {"exchange_id": BIG, "kind": "up"}),
        ("POST", f"/v1/shops/{SHOP}/feedback", {"exchange_id": -BIG, "kind": "up"}),
    ]:
        r = client.request(method, url, headers=key, json=body)
        assert r.status_code == 422, (method, url, r.text)


def test_entry_ids_are_stored_and_answered_as_the_kb_normalises_them(client: TestClient) -> None:
    """Were 500s: StopIteration (control character in the id) and `assert saved` (padded id)."""
    key = new_shop(client, SHOP)
    url = f"/v1/shops/{SHOP}/entries"
    r = client.put(f"{url}/gift%03", headers=key, json={"question": "有没有赠品", "answer": "送鼠标。"})
    assert r.status_code == 200 and r.json()["id"] == "gift", r.text
    r = client.put(f"{url}/%20gift2%1f", headers=key, json={"question": "送什么", "answer": "鼠标。"})
    assert r.status_code == 200 and r.json()["id"] == "gift2", r.text
    dup = client.put(f"{url}/gift%07", headers=key, json={"question": "别的问题", "answer": "x"})
    assert dup.status_code == 422 and dup.json()["issues"][0]["column"] == "id"
    assert client.get(f"{url}/gift", headers=key).json()["question"] == "有没有赠品"
    assert [e["id"] for e in client.get(url, headers=key).json()] == ["gift", "gift2"]
    # NUL in an id (PostgreSQL cannot even compare it) and an id longer than its column
    assert client.get(f"{url}/gift%00", headers=key).status_code == 404
    assert client.delete(f"{url}/gift%00", headers=key).status_code == 404
    long = client.put(f"{url}/{'e' * 201}", headers=key, json={"question": "第三个问题", "answer": "x"})
    assert long.status_code == 422 and long.json()["issues"][0]["column"] == "id"


def test_correction_without_a_target_is_a_documented_validation_error(client: TestClient) -> None:
    """Was a 422 whose `detail` was a string, not the HTTPValidationError the schema documents."""
    key = new_shop(client, SHOP)
    r = client.post(f"/v1/shops/{SHOP}/feedback", headers=key, json={"exchange_id": 1, "kind": "correction"})
    assert r.status_code == 422
    (error,) = r.json()["detail"]
    assert error["loc"] == ["body", "correct_entry_id"] and "out_of_scope" in error["msg"]


def test_nul_and_oversized_values_never_reach_the_database(client: TestClient) -> None:
    """Were 500s on PostgreSQL, which refuses NUL in text and values longer than a VARCHAR(200)."""
    key = new_shop(client, SHOP)
    publish_and_wait(client, SHOP, key, kb_csv())
    shop = f"/v1/shops/{SHOP}"
    # a customer's message is answered and logged without its NUL characters
    r = client.post(
        f"{shop}/messages", headers=key, json={"conversation_id": "c\x00", "text": "质保\x00几年"}
    )
    best = r.json()["entry_id"] or r.json()["options"][0]["entry_id"]  # this small KB offers what it is
    assert r.status_code == 200 and best == "warranty", r.text  # not sure enough to answer
    r = client.post(f"{shop}/assist", headers=key, json={"conversation_id": "c", "text": "包邮\x00吗"})
    assert r.status_code == 200, r.text
    assert all("\x00" not in e["text"] for e in client.get(f"{shop}/exchanges", headers=key).json())
    # values stored as given are refused
    admin = {"X-Admin-Token": ADMIN}
    assert (
        client.post("/v1/admin/shops", headers=admin, json={"id": "nul", "name": "a\x00"}).status_code == 422
    )
    assert client.post("/v1/admin/shops/a%00/api-key", headers=admin).status_code == 404
    for target in ("x" * 201, "x\x00"):
        fix = {"exchange_id": 1, "kind": "correction", "correct_entry_id": target}
        assert client.post(f"{shop}/feedback", headers=key, json=fix).status_code == 422
    for column, row in (("id", f"{'i' * 201},问题,答,\n"), ("category", f"x,问题,答,{'c' * 201}\n")):
        data = ("id,question,answer,category\n" + row).encode()
        r = client.post(f"{shop}/kb", headers=key, files={"file": ("kb.csv", data)})
        assert r.status_code == 422 and r.json()["issues"][0]["column"] == column, r.text
    # JD pushes: NUL refused like a malformed parameter, a long conversation id cut to its column
    creds = {"app_key": APP_KEY, "app_secret": APP_SECRET, "access_token": TOKEN}
    assert client.put(f"{shop}/jd-credentials", headers=key, json=creds).status_code == 200
    for conversation, text, status in (("c", "质保\x00几年", 400), ("c" * 250, "质保几年", 200)):
        params = {
            "app_key": APP_KEY,
            "timestamp": beijing_timestamp(),
            "message_id": uuid.uuid4().hex,
            "conversation_id": conversation,
            "text": text,
        }
        params["sign"] = sign(params, APP_SECRET)
        r = client.post(f"/jd/{SHOP}/messages", data=params)
        assert r.status_code == status, r.text
