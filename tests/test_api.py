"""Tests for the HTTP service (api/): routes, limits, startup loading and a real uvicorn server."""

from __future__ import annotations

import csv
import logging
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient

from api.main import create_app
from api.settings import Settings
from api.web.schemas import CandidateOut, MatchResponse, ModelRef
from api.web.state import ModelHolder
from engine import Matcher
from engine.artifacts import MANIFEST

# id, standard question, three paraphrases, answer
KB: list[tuple[str, str, tuple[str, str, str], str]] = [
    (
        "invoice",
        "可以开发票吗",
        ("能开增值税发票吗", "发票怎么开", "我需要开发票"),
        "下单时在发票栏填写抬头即可开具电子发票。",
    ),
    (
        "delivery-time",
        "什么时候发货",
        ("多久能发货", "下单后几天发货", "今天能发出吗"),
        "付款后48小时内发货。",
    ),
    (
        "tracking",
        "快递到哪了",
        ("怎么查物流", "物流信息在哪看", "包裹什么时候到"),
        "在“我的订单”里点击“查看物流”即可。",
    ),
    (
        "warranty",
        "保修多久",
        ("质保期是多长时间", "坏了能保修吗", "有没有三包"),
        "整机保修一年，主要部件三年。",
    ),
    (
        "returns",
        "怎么退货",
        ("可以七天无理由退货吗", "退货流程是什么", "不想要了能退吗"),
        "签收后七天内可申请无理由退货。",
    ),
    (
        "refund",
        "退款多久到账",
        ("钱什么时候退回来", "退款进度怎么查", "退款还没收到"),
        "退款审核通过后1-7个工作日原路退回。",
    ),
    (
        "address",
        "可以修改收货地址吗",
        ("地址填错了怎么办", "能改地址吗", "想换个收货地址"),
        "发货前可在订单详情页修改收货地址。",
    ),
    (
        "coupon",
        "优惠券怎么用",
        ("优惠券用不了", "怎么领优惠券", "满减券怎么使用"),
        "结算页会自动选择可用的优惠券。",
    ),
]
ANSWERS = {entry_id: answer for entry_id, _, _, answer in KB}
DECISIONS = {"answer", "clarify", "handoff"}


def write_kb(path: Path) -> Path:
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "question", "similar", "answer", "category"])
        for entry_id, question, similar, answer in KB:
            w.writerow([entry_id, question, "|".join(similar), answer, ""])
    return path


def make_settings(tmp: Path, **overrides: Any) -> Settings:
    """Explicit values for every field, so a developer's KEFU_* env or .env cannot change the tests."""
    values: dict[str, Any] = {
        "model_path": tmp / "no-model-here",
        "kb_path": None,
        "dense": False,
        "max_top_k": 20,
        "max_text_chars": 2000,
        "log_level": "INFO",
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)


@pytest.fixture(scope="module")
def kb_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_kb(tmp_path_factory.mktemp("kb") / "kb.csv")


@pytest.fixture(scope="module")
def matcher(kb_file: Path) -> Matcher:
    return Matcher.build(kb_file, dense=False)


@pytest.fixture(scope="module")
def client(matcher: Matcher, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    app = create_app(make_settings(tmp_path_factory.mktemp("svc")), matcher=matcher)
    with TestClient(app) as c:
        yield c


def post_match(client: TestClient, text: str, **extra: Any) -> httpx.Response:
    return client.post("/v1/match", json={"text": text, **extra})


# ---------------------------------------------------------------------------- matching


@pytest.mark.parametrize(
    ("text", "entry_id"),
    [(similar[i], entry_id) for entry_id, _, similar, _ in KB for i in (0, 2)],
)
def test_verbatim_paraphrase_finds_its_entry(client: TestClient, text: str, entry_id: str) -> None:
    """A KB paraphrase must come back as its own entry, first, and never as a handoff."""
    r = post_match(client, text)
    assert r.status_code == 200
    body = r.json()
    assert body["decision"] in {"answer", "clarify"}, body["reason"]
    assert body["entry_id"] == entry_id
    assert body["candidates"][0]["entry_id"] == entry_id
    # the answer is served only when the engine is confident enough to answer
    assert body["answer"] == (ANSWERS[entry_id] if body["decision"] == "answer" else None)
    assert 0.0 <= body["confidence"] <= 1.0
    assert body["model"]["entries"] == len(KB)


def test_response_carries_model_identity(client: TestClient, matcher: Matcher) -> None:
    """kb_hash in every response lets a logged answer be traced to the KB version that produced it."""
    body = post_match(client, "怎么查物流").json()
    assert body["model"] == {"kb_hash": matcher.info["kb_hash"], "entries": len(KB)}
    assert set(body["candidates"][0]) == {"entry_id", "question", "score"}


@pytest.mark.parametrize("text", ["怎么退货", "发票", "你好", "谢谢 保修多久", "我要转人工", ""])
def test_response_is_the_documented_model_byte_for_byte(
    client: TestClient, matcher: Matcher, text: str
) -> None:
    """The route encodes its answer itself (no response-model pass): it must be exactly what FastAPI wrote
    from a MatchResponse, so a field added to the model and not to the route shows up here."""
    r = post_match(client, text, top_k=3)
    assert r.status_code == 200
    m = matcher.match(text, top_k=3)

    def out(cs: Any) -> list[CandidateOut]:
        return [CandidateOut(entry_id=c.entry_id, question=c.question, score=float(c.score)) for c in cs]

    expected = MatchResponse(
        decision=m.decision.value,
        entry_id=m.entry_id,
        answer=m.answer,
        confidence=float(m.confidence),
        candidates=out(m.candidates),
        options=out(m.options),
        reason=m.reason,
        smalltalk=m.smalltalk,
        smalltalk_around=m.smalltalk_around,
        model=ModelRef(kb_hash=matcher.info.get("kb_hash"), entries=len(matcher)),
    )
    assert r.content == expected.model_dump_json().encode()
    assert r.headers["content-type"] == "application/json"


def test_human_request_hands_off(client: TestClient) -> None:
    """An explicit ask for a human wins over any KB match, and the reason says so."""
    body = post_match(client, "转人工").json()
    assert body["decision"] == "handoff"
    assert "human" in body["reason"]
    assert body["entry_id"] is None and body["answer"] is None and body["candidates"] == []


@pytest.mark.parametrize("text", ["", "😀🎉👍"], ids=["empty", "emoji-only"])
def test_nothing_to_match_hands_off_with_200(client: TestClient, text: str) -> None:
    """Empty input is a normal customer message for the engine, not a client error."""
    r = post_match(client, text)
    assert r.status_code == 200
    body = r.json()
    assert body["decision"] == "handoff"
    assert body["confidence"] == 0.0 and body["candidates"] == []


@pytest.mark.parametrize("top_k", [1, 3])
def test_top_k_caps_candidates(client: TestClient, top_k: int) -> None:
    assert len(post_match(client, "退款进度怎么查", top_k=top_k).json()["candidates"]) == top_k


def test_top_k_at_the_configured_maximum_is_accepted(client: TestClient) -> None:
    """The bound is inclusive; the KB has fewer entries than that, so all of them may come back."""
    r = post_match(client, "退款进度怎么查", top_k=20)
    assert r.status_code == 200
    assert 1 <= len(r.json()["candidates"]) <= len(KB)


# ---------------------------------------------------------------------------- validation


def test_text_over_the_limit_is_422(client: TestClient) -> None:
    r = post_match(client, "怎么退货" * 2500)  # 10,000 characters
    assert r.status_code == 422
    [error] = r.json()["detail"]
    assert error["loc"] == ["body", "text"]
    assert error["type"] == "string_too_long"
    assert "10000" in error["msg"] and "2000" in error["msg"]


def test_raised_text_limit_accepts_long_text(matcher: Matcher, tmp_path: Path) -> None:
    """The limit comes from settings, not from the schema."""
    app = create_app(make_settings(tmp_path, max_text_chars=20_000), matcher=matcher)
    with TestClient(app) as c:
        r = post_match(c, "怎么退货" * 2500)
    assert r.status_code == 200
    assert r.json()["decision"] in DECISIONS


@pytest.mark.parametrize("top_k", [0, -1, 21, 1000])
def test_top_k_out_of_bounds_is_422(client: TestClient, top_k: int) -> None:
    r = post_match(client, "怎么退货", top_k=top_k)
    assert r.status_code == 422
    assert [e["loc"] for e in r.json()["detail"]] == [["body", "top_k"]]


def test_both_limits_are_reported_at_once(client: TestClient) -> None:
    """A client fixing one error should not discover the next one only on retry."""
    r = post_match(client, "x" * 2001, top_k=21)
    assert r.status_code == 422
    assert {tuple(e["loc"]) for e in r.json()["detail"]} == {("body", "text"), ("body", "top_k")}


@pytest.mark.parametrize("payload", [{}, {"top_k": 3}, {"text": None}, {"text": 42}])
def test_missing_or_mistyped_text_is_422(client: TestClient, payload: dict[str, Any]) -> None:
    r = client.post("/v1/match", json=payload)
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "text"]


# ---------------------------------------------------------------------------- health and model state


def test_healthz_reports_the_model(client: TestClient, matcher: Matcher) -> None:
    assert client.get("/healthz").json() == {
        "status": "ok",
        "model_loaded": True,
        "entries": len(KB),
        "kb_hash": matcher.info["kb_hash"],
        "dense": False,
    }


def test_no_model_and_no_kb_gives_503_not_a_crash(tmp_path: Path) -> None:
    """The service starts and says what is wrong, instead of crash-looping under an orchestrator."""
    app = create_app(make_settings(tmp_path, model_path=tmp_path / "missing", kb_path=None))
    with TestClient(app) as c:
        health = c.get("/healthz")
        r = post_match(c, "怎么退货")
    assert health.status_code == 200
    assert health.json() == {
        "status": "ok",
        "model_loaded": False,
        "entries": 0,
        "kb_hash": None,
        "dense": False,
    }
    assert r.status_code == 503
    assert "no model is loaded" in r.json()["detail"]


def test_startup_builds_a_missing_model_then_reuses_it(
    kb_file: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """First start builds from the KB and saves; the second loads the saved model instead of rebuilding."""
    settings = make_settings(tmp_path, model_path=tmp_path / "model", kb_path=kb_file)
    with caplog.at_level(logging.INFO, logger="kefu.api"), TestClient(create_app(settings)) as c:
        assert c.get("/healthz").json()["entries"] == len(KB)
        assert post_match(c, "多久能发货").json()["entry_id"] == "delivery-time"
    assert "building" in api_log(caplog)
    assert (tmp_path / "model" / MANIFEST).is_file()

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="kefu.api"), TestClient(create_app(settings)) as c:
        assert c.get("/healthz").json()["model_loaded"] is True
    assert "building" not in api_log(caplog) and "loaded model" in api_log(caplog)


def api_log(caplog: pytest.LogCaptureFixture) -> str:
    """What the API's own logger said (other loggers, the build queue's, also say 'building')."""
    return "\n".join(r.getMessage() for r in caplog.records if r.name == "kefu.api")


def test_bad_kb_leaves_service_up_without_model(tmp_path: Path) -> None:
    """A KB that fails validation must not take the service down, nor leave a half-built model behind."""
    bad = tmp_path / "bad.csv"
    bad.write_text("id,question,answer\n,没有编号,\n", encoding="utf-8")
    app = create_app(make_settings(tmp_path, model_path=tmp_path / "model", kb_path=bad))
    with TestClient(app) as c:
        assert c.get("/healthz").json()["model_loaded"] is False
        assert post_match(c, "怎么退货").status_code == 503
    assert not (tmp_path / "model").exists()


def test_routes_read_the_holder_on_every_request(matcher: Matcher, tmp_path: Path) -> None:
    """What a future hot reload relies on: a swap is seen by the next request, without a restart."""
    app = create_app(make_settings(tmp_path), matcher=matcher)
    holder: ModelHolder = app.state.model_holder
    with TestClient(app) as c:
        assert holder.swap(None) is matcher
        assert c.get("/healthz").json()["model_loaded"] is False
        assert post_match(c, "怎么退货").status_code == 503
        assert holder.swap(matcher) is None
        assert post_match(c, "怎么退货").status_code == 200


def test_request_log_has_length_not_text(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    """Customer messages may hold phone numbers and addresses: the log gets their length only."""
    text = "我的手机号13800138000地址填错了怎么办"
    with caplog.at_level(logging.INFO, logger="kefu.api"):
        decision = post_match(client, text).json()["decision"]
        post_match(client, text * 1000)  # rejected as too long: still not logged
    lines = [r.getMessage() for r in caplog.records if r.name == "kefu.api"]
    assert any(
        f"decision={decision}" in m and f"text_chars={len(text)}" in m and "latency_ms=" in m for m in lines
    )
    assert any("rejected" in m for m in lines)
    assert not any("13800138000" in m for m in lines)


# ---------------------------------------------------------------------------- over the network


def test_real_uvicorn_server_answers_over_http(matcher: Matcher, tmp_path: Path) -> None:
    """The app works under a real ASGI server and socket, not only through the in-process test client."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))  # the server takes this socket: no race for a "free" port
    port = sock.getsockname()[1]
    app = create_app(make_settings(tmp_path), matcher=matcher)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            assert time.monotonic() < deadline, "uvicorn did not start within 10 s"
            time.sleep(0.02)
        r = httpx.post(
            f"http://127.0.0.1:{port}/v1/match", json={"text": "坏了能保修吗", "top_k": 2}, timeout=10
        )
        assert r.status_code == 200
        body = r.json()
        assert body["decision"] in {"answer", "clarify"}
        assert body["entry_id"] == "warranty"
        assert len(body["candidates"]) == 2
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
    assert not thread.is_alive()


# JSON that Python's parser takes but RFC 8259 does not: refused as malformed, never a 500 while the 422
# (which repeats the input) or the reply (which quotes the text) is rendered
@pytest.mark.parametrize(
    ("body", "says"),
    [
        ('{"text": NaN}', "NaN is not a number JSON allows"),
        ('{"text": "ok", "top_k": Infinity}', "Infinity is not a number JSON allows"),
        ('{"text": "ok", "top_k": -Infinity}', "-Infinity is not a number JSON allows"),
        ('{"text": "\\ud800能开专票吗"}', "lone UTF-16 surrogate"),
        ('{"text": "能开专票吗\\udfff"}', "lone UTF-16 surrogate"),
        ('{"\\udfff": 1, "text": "能开专票吗"}', "lone UTF-16 surrogate"),
    ],
)
def test_json_outside_the_standard_is_a_422_that_says_why(client: TestClient, body: str, says: str) -> None:
    r = client.post("/v1/match", content=body.encode(), headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    [error] = r.json()["detail"]
    assert error["type"] == "json_invalid"
    assert says in error["ctx"]["error"]
    assert error["loc"][0] == "body" and isinstance(error["loc"][1], int)


@pytest.mark.parametrize("headers", [{}, {"content-type": "text/plain"}])
def test_a_body_not_sent_as_json_is_a_422_that_repeats_it(
    client: TestClient, headers: dict[str, str]
) -> None:
    """Without `Content-Type: application/json` the body reaches validation as bytes: the 422 repeats them
    as text (it was a 500: bytes are not JSON)."""
    body = '{"text": "能开专票吗", "junk": "\xff"}'.encode() + b"\xff"
    r = client.post("/v1/match", content=body, headers=headers)
    assert r.status_code == 422, r.text
    [error] = r.json()["detail"]
    assert error["loc"] == ["body"]
    assert error["input"].startswith('{"text": "能开专票吗"') and error["input"].endswith("\\xff")


def test_escaped_surrogate_pairs_are_characters_and_pass(client: TestClient) -> None:
    """An emoji written as its escaped UTF-16 pair is valid JSON: only lone halves are refused."""
    r = client.post(
        "/v1/match",
        content='{"text": "\\ud83d\\ude00 怎么退货"}'.encode(),
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 200, r.text


def test_a_422_cuts_long_inputs_it_repeats(client: TestClient) -> None:
    r = client.post("/v1/match", json={"text": ["怎么退货" * 2500, 7]})
    assert r.status_code == 422
    [error] = r.json()["detail"]
    assert error["loc"] == ["body", "text"]
    long_text, number = error["input"]
    assert number == 7
    assert len(long_text) == 201 and long_text.startswith("怎么退货") and long_text.endswith("…")


def test_every_api_route_reads_json_strictly(client: TestClient) -> None:
    """A router added without `route_class=StrictJSONRoute` would bring the 500s back for its routes."""
    from fastapi.routing import APIRoute

    from api.web.strict_json import StrictJSONRoute

    def api_routes(routes: list[Any]) -> Iterator[APIRoute]:
        for r in routes:
            if isinstance(r, APIRoute):
                yield r
            inner = getattr(r, "original_router", None)  # FastAPI keeps an included router as one entry
            if inner is not None:
                yield from api_routes(inner.routes)

    routes = list(api_routes(client.app.routes))  # type: ignore[attr-defined]
    assert len(routes) > 40
    assert [r.path for r in routes if not isinstance(r, StrictJSONRoute)] == []


@pytest.mark.parametrize("freeze", [True, False])
def test_start_up_objects_are_frozen_out_of_the_collector(
    matcher: Matcher, tmp_path: Path, freeze: bool
) -> None:
    """KEFU_GC_FREEZE: once started, a full collection no longer walks what start-up made (a 220 ms
    pause of the worker's requests with the demo model); off, nothing is frozen."""
    import gc

    gc.unfreeze()
    try:
        with TestClient(
            create_app(make_settings(tmp_path, gc_freeze=freeze), matcher=matcher, shops_service=False)
        ) as c:
            frozen = gc.get_freeze_count()
            assert post_match(c, "多久能发货").json()["entry_id"] == "delivery-time"
        if freeze:  # the test process's own objects too, here: every module imported so far
            assert frozen > 10_000 and frozen > 10 * len(gc.get_objects())
        else:
            assert frozen == 0
    finally:
        gc.unfreeze()  # back to the oldest generation: collected as before


def test_the_openapi_schema_is_made_at_start_up_not_on_a_first_request(
    matcher: Matcher, tmp_path: Path
) -> None:
    """The rate limiter's route table is read from the schema: made on a worker's first request, it held
    the event loop (and every request of the worker) for 190-270 ms."""
    app = create_app(make_settings(tmp_path), matcher=matcher, shops_service=False)
    assert app.openapi_schema is None
    with TestClient(app):
        assert app.openapi_schema is not None and "/v1/match" in app.openapi_schema["paths"]
