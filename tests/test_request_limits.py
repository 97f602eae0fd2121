"""Hostile requests through the app: size limits (413), malformed input (4xx), and the last-resort 500.

The whole run against real uvicorn workers, with /healthz and RSS measured, is tests/test_hostile.py.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from starlette.types import Receive, Scope, Send

from api.main import create_app
from api.settings import Settings
from api.web.limits import BodySizeLimit
from tests.test_service import ADMIN, KB, kb_csv, new_shop
from training.hostile import csv_rows, deep_json, multipart_with_file, xlsx_bomb


def sqlite_settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": f"sqlite:///{tmp_path}/kefu.db",
        "redis_url": None,
        "data_dir": tmp_path / "data",
        "admin_token": ADMIN,
        "secret_key": "ZmRhc2RmYXNkZmFzZGZhc2RmYXNkZmFzZGZhc2RmYXM=",
        "dense": False,
        "kb_path": None,
        "model_path": tmp_path / "no-model",
        "evaluation_pull_interval": 0,
        **overrides,
    }
    return Settings(**values)


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    settings = sqlite_settings(tmp_path, kb_max_rows=100, kb_max_upload_bytes=200_000, max_body_bytes=1024)
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture
def default_client(tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(sqlite_settings(tmp_path))) as c:
        yield c


def upload(c: TestClient, key: dict[str, str], name: str, data: bytes) -> Any:
    return c.post("/v1/shops/shop-a/kb", headers=key, files={"file": (name, data)})


# ---------------------------------------------------------------- body size middleware


def counting_app(seen: list[int]) -> Any:
    """An ASGI app that reads the whole body and records how much it got."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        size, more = 0, True
        while more:
            message = await receive()
            size += len(message.get("body", b""))
            more = message.get("more_body", False)
        seen.append(size)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    return app


def test_declared_oversized_body_is_refused_before_the_app_runs() -> None:
    seen: list[int] = []
    c = TestClient(BodySizeLimit(counting_app(seen), default=1000))
    r = c.post("/anything", content=b"x" * 1001)
    assert r.status_code == 413 and r.json()["limit_bytes"] == 1000
    assert "1,000 bytes" in r.json()["detail"] and r.headers["connection"] == "close"
    assert seen == []
    assert c.post("/anything", content=b"x" * 1000).status_code == 200 and seen == [1000]


def test_streamed_body_without_length_is_cut_at_the_limit() -> None:
    seen: list[int] = []
    c = TestClient(BodySizeLimit(counting_app(seen), default=1000))
    r = c.post("/anything", content=iter([b"x" * 600, b"x" * 600, b"x" * 600]))  # chunked
    assert r.status_code == 413 and seen == []


def test_route_limits_override_the_default() -> None:
    import re

    from api.web.limits import RouteLimit

    seen: list[int] = []
    big = RouteLimit("POST", re.compile(r"/big"), 5000)
    app = BodySizeLimit(counting_app(seen), default=100, routes=[big])
    c = TestClient(app)
    assert c.post("/big", content=b"x" * 4000).status_code == 200
    assert c.put("/big", content=b"x" * 4000).status_code == 413
    assert c.post("/small", content=b"x" * 4000).status_code == 413


def test_unauthenticated_jd_push_with_a_huge_body_is_413(client: TestClient) -> None:
    declared = client.post("/jd/shop-a/messages", content=b"{" + b" " * 10_000 + b"}")
    assert declared.status_code == 413 and "1,024 bytes" in declared.json()["detail"]
    chunked = client.post(
        "/jd/shop-a/messages",
        content=iter([b'{"text": "', *[b"a" * 1000] * 10, b'"}']),
        headers={"Content-Type": "application/json"},
    )
    assert chunked.status_code == 413 and "1,024 bytes" in chunked.json()["detail"]


def test_kb_upload_route_gets_the_upload_limit_not_the_json_one(client: TestClient) -> None:
    key = new_shop(client)
    data = kb_csv()
    assert len(data) > 1024
    assert upload(client, key, "kb.csv", data).status_code == 200
    r = upload(client, key, "kb.csv", data + b"#" * 300_000)
    assert r.status_code == 413


# ---------------------------------------------------------------- KB uploads


def test_upload_over_the_row_limit_is_413_naming_the_limit(client: TestClient) -> None:
    key = new_shop(client)
    cases = [
        ("rows.csv", csv_rows(500), "it"),
        ("rows.xlsx", xlsx_bomb(500, wide=False), "xl/worksheets/sheet1.xml"),
    ]
    for name, data, where in cases:
        r = upload(client, key, name, data)
        assert r.status_code == 413, r.text
        body = r.json()
        assert body["limit"] == {"setting": "KEFU_KB_MAX_ROWS", "value": 100}
        assert body["detail"].startswith(f"{name}: {where} has more than 100 rows")
    assert client.get("/v1/shops/shop-a/entries", headers=key).json() == []


def test_upload_of_deeply_nested_json_is_422(client: TestClient) -> None:
    key = new_shop(client)
    r = upload(client, key, "deep.json", deep_json())
    assert r.status_code == 422
    assert "nested too deeply" in r.json()["issues"][0]["message"]


def test_upload_is_read_and_stored_off_the_serving_process(client: TestClient, monkeypatch: Any) -> None:
    import api.routes.kb as kb_route

    on_loop: list[bool] = []

    def running_loop() -> bool:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return False
        return True

    def spy(real: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            on_loop.append(running_loop())
            return real(*args, **kwargs)

        return wrapper

    import api.kb.parsing as parsing

    parsed_here: list[bool] = []
    monkeypatch.setattr(parsing, "load_kb", lambda *a, **kw: parsed_here.append(True))
    monkeypatch.setattr(kb_route.kb_repo, "replace_all", spy(kb_route.kb_repo.replace_all))
    key = new_shop(client)
    assert upload(client, key, "kb.csv", kb_csv()).status_code == 200
    # the file was read and stored in the KB process (the patched reader and writer of this process never
    # ran); an upload holding the interpreter lock here would delay the worker's other requests
    assert parsed_here == [] and on_loop == []
    assert len(client.get("/v1/shops/shop-a/entries", headers=key).json()) == len(KB)


# ---------------------------------------------------------------- malformed JD pushes


def test_jd_push_with_a_file_part_is_400_not_500(default_client: TestClient) -> None:
    body, content_type = multipart_with_file()
    r = default_client.post("/jd/shop-a/messages", content=body, headers={"Content-Type": content_type})
    assert r.status_code == 400 and "file parts are not accepted (text)" in r.json()["detail"]


def test_jd_push_of_deeply_nested_json_is_400(default_client: TestClient) -> None:
    r = default_client.post(
        "/jd/shop-a/messages", content=deep_json(200_000), headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 400 and r.json()["detail"] == "body JSON is nested too deeply"


# ---------------------------------------------------------------- request ids and the last-resort 500


def test_every_response_carries_a_request_id(client: TestClient) -> None:
    generated = client.get("/healthz")
    assert len(generated.headers["X-Request-ID"]) == 32
    assert client.get("/healthz", headers={"X-Request-ID": "abc-123"}).headers["X-Request-ID"] == "abc-123"
    spoofed = client.get("/healthz", headers={"X-Request-ID": "bad id <script>"})
    assert spoofed.headers["X-Request-ID"] != "bad id <script>"
    not_found = client.get("/v1/shops/nope", headers={"X-API-Key": "x"})
    assert not_found.status_code in (401, 404) and "X-Request-ID" in not_found.headers
    invalid = client.post("/v1/admin/shops", json={"id": "BAD ID"}, headers={"X-Admin-Token": ADMIN})
    assert invalid.status_code == 422 and "X-Request-ID" in invalid.headers  # not turned into a 500


def test_generated_request_ids_survive_the_log_masking() -> None:
    """The id a 500 names is the id its log line shows: the masking never reads one as a number."""
    from api.dialog.privacy import mask_pii
    from api.web.errors import new_request_id

    ids = [new_request_id() for _ in range(3000)]
    assert len(set(ids)) == len(ids) and all(len(rid) == 32 for rid in ids)
    assert [rid for rid in ids if mask_pii(rid) != rid] == []


def test_unexpected_error_is_one_json_500_and_one_log_line(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    def boom() -> None:
        raise RuntimeError("something broke")

    client.app.add_api_route("/boom", boom)  # type: ignore[attr-defined]
    with caplog.at_level(logging.INFO):
        r = client.get("/boom", headers={"X-Request-ID": "req-42"})
    assert r.status_code == 500
    assert r.json() == {"detail": "internal error", "request_id": "req-42"}
    assert r.headers["X-Request-ID"] == "req-42"
    errors = [rec for rec in caplog.records if rec.levelno >= logging.ERROR]
    assert len(errors) == 1, [rec.getMessage() for rec in errors]
    [record] = errors
    message = record.getMessage()
    assert record.exc_info is None and "Traceback" not in message
    assert "RuntimeError" in message and "req-42" in message and "something broke" in message
    assert "test_request_limits.py" in message  # where it was raised
