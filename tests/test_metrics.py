"""/metrics of the real app: requests labelled by route template, feedback counted by kind."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from api.main import create_app
from api.settings import Settings
from tests.test_service import client as client
from tests.test_service import kb_csv, new_shop, publish_and_wait, say
from tests.test_service import settings as settings
from training.buildload import app_seconds, timings


def samples(c: TestClient, metric: str) -> dict[tuple[tuple[str, str], ...], float]:
    """One metric's samples from the scraped text, keyed by their sorted labels."""
    out: dict[tuple[tuple[str, str], ...], float] = {}
    for family in text_string_to_metric_families(c.get("/metrics").text):
        for s in family.samples:
            if s.name == metric:
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


def requests_by_route(c: TestClient) -> dict[tuple[str, str, str], float]:
    counts: dict[tuple[str, str, str], float] = {}
    for labels, value in samples(c, "kefu_requests_total").items():
        d = dict(labels)
        counts[d["route"], d["method"], d["status"]] = value
    return counts


def test_requests_are_labelled_by_route_template(client: TestClient) -> None:
    """Included routers' routes get their template; unknown paths share one label, not one per URL."""
    before = requests_by_route(client)
    key = new_shop(client, "shop-m")
    say(client, "shop-m", key, "保修多久", conv="m1")
    say(client, "shop-m", key, "保修多久", conv="m2")
    assert client.get("/v1/shops/shop-m", headers=key).status_code == 200
    assert client.get("/v1/shops/shop-m/messages", headers=key).status_code == 405
    assert client.get("/healthz").status_code == 200
    assert client.get("/no/such/path-1").status_code == 404
    assert client.get("/no/such/path-2").status_code == 404
    after = requests_by_route(client)

    def delta(route: str, method: str, status: str) -> float:
        return after.get((route, method, status), 0.0) - before.get((route, method, status), 0.0)

    assert delta("/v1/admin/shops", "POST", "201") == 1
    assert delta("/v1/shops/{shop}/messages", "POST", "200") == 2
    assert delta("/v1/shops/{shop}", "GET", "200") == 1
    assert delta("/v1/shops/{shop}/messages", "GET", "405") == 1
    assert delta("/healthz", "GET", "200") == 1
    assert delta("unmatched", "GET", "404") == 2
    assert not any("shop-m" in route or "/no/such" in route for route, _, _ in after)
    latency = samples(client, "kefu_request_latency_seconds_count")
    assert latency[(("route", "/v1/shops/{shop}/messages"),)] >= 2


def test_every_response_says_how_long_the_app_held_it(client: TestClient) -> None:
    """Server-Timing `app;dur=MS` on answers and errors alike, and never more than the client waited."""
    key = new_shop(client, "shop-t")
    t = time.perf_counter()
    r = client.post(
        "/v1/shops/shop-t/messages", headers=key, json={"conversation_id": "t1", "text": "保修多久"}
    )
    waited_ms = (time.perf_counter() - t) * 1000
    assert r.status_code == 200
    held = app_seconds(r.headers.get("server-timing")) * 1000
    assert 0 < held <= waited_ms
    for got in (client.get("/no/such/path"), client.get("/v1/shops/shop-t", headers={"X-API-Key": "wrong"})):
        assert got.status_code in (401, 404)
        assert app_seconds(got.headers.get("server-timing")) >= 0


def test_a_turns_stages_are_in_its_server_timing(client: TestClient) -> None:
    """A served shop's turn: the conversation state's load and save and the matcher inside the turn,
    the turn inside the app's time; a request without a turn has only the app's."""
    key = new_shop(client, "shop-s")
    publish_and_wait(client, "shop-s", key, kb_csv())
    r = client.post(
        "/v1/shops/shop-s/messages", headers=key, json={"conversation_id": "s1", "text": "保修多久"}
    )
    assert r.status_code == 200 and r.json()["kind"] == "answer"
    got = timings(r.headers.get("server-timing"))
    assert {"app", "turn", "state", "match", "outside turn"} <= set(got)
    assert 0 < got["state"] + got["match"] <= got["turn"] <= got["app"]
    assert set(timings(client.get("/v1/shops/shop-s", headers=key).headers.get("server-timing"))) == {"app"}


@pytest.mark.parametrize(("setting", "names"), [("app", {"app"}), ("off", None)])
def test_server_timing_says_only_what_the_setting_allows(
    settings: Settings, setting: str, names: set[str] | None
) -> None:
    """KEFU_SERVER_TIMING=app keeps a turn's stages to the service, =off sends no header at all."""
    settings.server_timing = setting  # type: ignore[assignment]
    with TestClient(create_app(settings)) as c:
        key = new_shop(c, "shop-h")
        publish_and_wait(c, "shop-h", key, kb_csv())
        turn = {"conversation_id": "h1", "text": "保修多久"}
        r = c.post("/v1/shops/shop-h/messages", headers=key, json=turn)
        assert r.status_code == 200 and r.json()["kind"] == "answer"
        header = r.headers.get("server-timing")
        assert (set(timings(header)) - {"outside turn"} if header else None) == names


def test_feedback_is_counted_by_kind(client: TestClient) -> None:
    key = new_shop(client, "shop-f")
    exchange = say(client, "shop-f", key, "保修多久", conv="f1")["exchange_id"]
    before = samples(client, "kefu_feedback_total")
    sent = [
        {"kind": "up"},
        {"kind": "down"},
        {"kind": "down"},
        {"kind": "correction", "out_of_scope": True},
        {"kind": "correction"},  # refused (422): no entry and not out of scope
    ]
    for body in sent:
        client.post("/v1/shops/shop-f/feedback", headers=key, json={"exchange_id": exchange, **body})
    unknown = {"exchange_id": 999999, "kind": "up"}  # refused (404) and not counted
    assert client.post("/v1/shops/shop-f/feedback", headers=key, json=unknown).status_code == 404
    after = samples(client, "kefu_feedback_total")
    got = {
        kind: after.get((("kind", kind), ("shop", "shop-f")), 0.0)
        - before.get((("kind", kind), ("shop", "shop-f")), 0.0)
        for kind in ("up", "down", "correction")
    }
    assert got == {"up": 1, "down": 2, "correction": 1}
