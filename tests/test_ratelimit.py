"""Rate limits: 429 + Retry-After per shop and per client, on the in-process store and on Redis."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from api.jd import sign
from api.main import create_app
from api.settings import Settings
from api.web.ratelimit import client_ip
from tests.test_service import new_shop
from tests.test_service import settings as settings

PROXY = "10.0.0.1"


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def bare_settings(tmp_path: Path, **overrides: Any) -> Settings:
    """For an app without the shop service: the middleware runs before any handler needs it."""
    base: dict[str, Any] = {
        "kb_path": None,
        "model_path": tmp_path / "no-model",
        "redis_url": None,
        "rate_limit_shop": None,
        "rate_limit_client": None,
    }
    return Settings(**{**base, **overrides})


# ------------------------------------------------------------------------------------------ settings
@pytest.mark.parametrize(
    ("given", "stored"),
    [("50/second", "50/second"), (" 600 ", "600/minute"), ("0", None), ("off", None), ("", None)],
)
def test_limit_settings_are_normalized(given: str, stored: str | None) -> None:
    assert Settings(rate_limit_shop=given).rate_limit_shop == stored


@pytest.mark.parametrize("bad", ["fast", "0/second", "-1/minute"])
def test_a_malformed_limit_is_refused_at_startup(bad: str) -> None:
    with pytest.raises(ValueError, match=r"rate limit|at least 1"):
        Settings(rate_limit_client=bad)


def test_a_malformed_trusted_proxy_is_refused_at_startup() -> None:
    with pytest.raises(ValueError):
        Settings(trusted_proxies="10.0.0.1,proxy.internal")


# ------------------------------------------------------------------------------------------ client IP
def scope(peer: str, *forwarded: str) -> dict[str, Any]:
    return {"client": (peer, 1234), "headers": [(b"x-forwarded-for", f.encode()) for f in forwarded]}


def test_x_forwarded_for_is_ignored_without_trusted_proxies() -> None:
    assert client_ip(scope(PROXY, "203.0.113.5"), ()) == PROXY


def test_x_forwarded_for_is_ignored_from_an_untrusted_peer() -> None:
    trusted = Settings.networks("10.0.0.0/24")
    assert client_ip(scope("198.51.100.7", "203.0.113.5"), trusted) == "198.51.100.7"


def test_behind_trusted_proxies_the_rightmost_untrusted_hop_is_the_client() -> None:
    trusted = Settings.networks("10.0.0.0/24")
    # the leftmost entry is the client's own claim; 10.0.0.2 is a second proxy of ours
    assert client_ip(scope(PROXY, "192.0.2.1, 203.0.113.5", "10.0.0.2"), trusted) == "203.0.113.5"
    assert client_ip(scope(PROXY, "10.0.0.3"), trusted) == "10.0.0.3"  # only proxies: the farthest one
    assert client_ip(scope(PROXY), trusted) == PROXY
    assert client_ip(scope(PROXY, "garbage, 10.0.0.2"), trusted) == "10.0.0.2"


# ------------------------------------------------------------------------------------------ per shop
def test_a_noisy_shop_gets_429_and_another_shop_does_not(settings: Settings) -> None:
    settings = settings.model_copy(update={"rate_limit_shop": "3/minute", "rate_limit_client": None})
    limited = {"scope": "shop", "route": "/v1/shops/{shop}"}
    before = sample("kefu_rate_limited_total", **limited)
    with TestClient(create_app(settings)) as c:
        a, b = new_shop(c, "shop-a"), new_shop(c, "shop-b")  # admin routes: no shop in the path
        assert [c.get("/v1/shops/shop-a", headers=a).status_code for _ in range(3)] == [200] * 3
        r = c.get("/v1/shops/shop-a", headers=a)
        assert r.status_code == 429
        assert r.json() == {"detail": "rate limit of 3 requests per 60 s for shop shop-a exceeded"}
        assert 1 <= int(r.headers["Retry-After"]) <= 60
        # the shop's other routes share its budget; the other shop has its own
        assert c.get("/v1/shops/shop-a/entries", headers=a).status_code == 429
        assert c.get("/v1/shops/shop-b", headers=b).status_code == 200
        assert c.get("/healthz").status_code == 200
        metrics = c.get("/metrics").text
    assert sample("kefu_rate_limited_total", **limited) == before + 1
    assert 'status="429"' in metrics  # counted with the other requests too
    if settings.redis_url:  # counted in Redis, under this deployment's prefix
        keys = redis.Redis.from_url(settings.redis_url).keys(f"{settings.redis_prefix}ratelimit:*")
        assert any(b"shop-a" in k for k in keys) and any(b"shop-b" in k for k in keys)


def test_replicas_share_the_shop_budget_through_redis(redis_url: str, tmp_path: Path) -> None:
    settings = bare_settings(
        tmp_path,
        redis_url=redis_url,
        redis_prefix=f"kefu-t-{uuid.uuid4().hex[:8]}:",
        rate_limit_shop="3/minute",
    )
    one = TestClient(create_app(settings, shops_service=False))
    two = TestClient(create_app(settings, shops_service=False))
    with one, two:
        # no shop service here: 503 from the handler, but the request was counted before it
        assert [c.get("/v1/shops/shop-a").status_code for c in (one, two, one)] == [503] * 3
        assert two.get("/v1/shops/shop-a").status_code == 429
        assert one.get("/v1/shops/shop-b").status_code == 503


@pytest.mark.parametrize("store", ["memory", "redis"])
def test_a_request_refused_for_its_client_is_not_counted_against_its_shop(
    store: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Client and shop windows are counted in turn (on Redis in one script call): a request over its
    client's limit stops there, and of several windows the one exceeded is named, with its own wait."""
    settings = bare_settings(
        tmp_path,
        redis_url=request.getfixturevalue("redis_url") if store == "redis" else None,
        redis_prefix=f"kefu-t-{uuid.uuid4().hex[:8]}:",
        rate_limit_client="2/minute",
        rate_limit_shop="10/minute;3/hour",
        trusted_proxies=f"{PROXY}/32",
    )
    with TestClient(create_app(settings, shops_service=False), client=(PROXY, 5000)) as c:

        def get(client: str) -> Any:
            return c.get("/v1/shops/shop-a", headers={"X-Forwarded-For": client})

        assert [get("203.0.113.5").status_code for _ in range(4)] == [503, 503, 429, 429]
        # the two refused requests did not use the shop's budget: one is left for another client
        assert get("203.0.113.6").status_code == 503
        r = get("203.0.113.7")
        assert r.status_code == 429
        assert r.json()["detail"] == "rate limit of 3 requests per 3600 s for shop shop-a exceeded"
        assert 60 < int(r.headers["Retry-After"]) <= 3600


# ------------------------------------------------------------------------------------------ per client
def test_an_unauthenticated_flood_on_the_jd_endpoint_is_cut_before_any_lookup(settings: Settings) -> None:
    settings = settings.model_copy(update={"rate_limit_shop": None, "rate_limit_client": "5/minute"})
    params = {"app_key": "k", "timestamp": "2026-01-01 00:00:00", "message_id": "m", "conversation_id": "c"}
    params = {**params, "text": "质保几年", "sign": sign({**params, "text": "质保几年"}, "not-the-secret")}
    client_limited = {"scope": "client", "route": "/jd/{shop}/messages"}
    limited_before = sample("kefu_rate_limited_total", **client_limited)
    with TestClient(create_app(settings)) as c:
        refused = sample("kefu_auth_failures_total", reason="unknown_shop")
        codes = [c.post("/jd/no-such-shop/messages", data=params).status_code for _ in range(12)]
        assert codes == [401] * 5 + [429] * 7  # one 401 for unknown shops too: ids cannot be probed
        # the 429s never reached the shop lookup (which counts an unknown shop)
        assert sample("kefu_auth_failures_total", reason="unknown_shop") == refused + 5
        r = c.post("/jd/no-such-shop/messages", data=params)
        assert r.json()["detail"] == "rate limit of 5 requests per 60 s for client testclient exceeded"
        assert int(r.headers["Retry-After"]) >= 1
        # probes and scrapes are never limited, and the client's other requests are
        assert c.get("/healthz").status_code == 200 and c.get("/metrics").status_code == 200
        assert c.get("/v1/shops/shop-a").status_code == 429
    assert sample("kefu_rate_limited_total", **client_limited) == limited_before + 8


def test_clients_behind_a_trusted_proxy_are_limited_one_by_one(tmp_path: Path) -> None:
    settings = bare_settings(tmp_path, rate_limit_client="2/minute", trusted_proxies=f"{PROXY}/32")
    with TestClient(create_app(settings, shops_service=False), client=(PROXY, 5000)) as c:

        def get(forwarded: str) -> int:
            return c.get("/openapi.json", headers={"X-Forwarded-For": forwarded}).status_code

        assert [get("203.0.113.5") for _ in range(2)] == [200, 200]
        assert get("203.0.113.6, 203.0.113.5") == 429  # a forged leftmost hop does not change the client
        assert get("203.0.113.6") == 200


def test_without_trusted_proxies_x_forwarded_for_does_not_evade_the_limit(tmp_path: Path) -> None:
    settings = bare_settings(tmp_path, rate_limit_client="2/minute")
    with TestClient(create_app(settings, shops_service=False), client=(PROXY, 5000)) as c:
        codes = [c.get("/openapi.json", headers={"X-Forwarded-For": f"203.0.113.{i}"}) for i in range(3)]
        assert [r.status_code for r in codes] == [200, 200, 429]
        assert codes[-1].json()["detail"].endswith(f"for client {PROXY} exceeded")


def test_probes_are_not_limited_under_a_root_path(tmp_path: Path) -> None:
    settings = bare_settings(tmp_path, rate_limit_client="1/minute", rate_limit_shop="1/minute")
    # as behind a proxy serving the app under /kefu (uvicorn --root-path): the path keeps the prefix
    with TestClient(create_app(settings, shops_service=False), root_path="/kefu") as c:
        assert [c.get("/kefu/healthz").status_code for _ in range(3)] == [200] * 3
        assert [c.get("/kefu/v1/shops/shop-a").status_code for _ in range(2)] == [503, 429]
        assert c.get("/kefu/metrics").status_code == 200


def test_disabled_limits_never_refuse(tmp_path: Path) -> None:
    with TestClient(create_app(bare_settings(tmp_path), shops_service=False)) as c:
        assert {c.get("/openapi.json").status_code for _ in range(20)} == {200}


# ------------------------------------------------------------------------------------------ failures
def test_an_unreachable_redis_lets_requests_through_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = bare_settings(tmp_path, redis_url="redis://127.0.0.1:1/0", rate_limit_client="1/minute")
    errors = sample("kefu_rate_limit_errors_total")
    with (
        caplog.at_level(logging.WARNING, "kefu.ratelimit"),
        TestClient(create_app(settings, shops_service=False)) as c,
    ):
        assert [c.get("/openapi.json").status_code for _ in range(3)] == [200] * 3
    assert sample("kefu_rate_limit_errors_total") > errors
    assert "rate limit store unavailable" in caplog.text


# ------------------------------------------------------------------------------------------ schema
def test_429_is_documented_on_limited_routes_only(tmp_path: Path) -> None:
    paths = create_app(bare_settings(tmp_path), shops_service=False).openapi()["paths"]
    for path, method in [
        ("/jd/{shop}/messages", "post"),
        ("/v1/shops/{shop}/messages", "post"),
        ("/v1/match", "post"),
        ("/v1/admin/shops", "post"),
    ]:
        doc = paths[path][method]["responses"]["429"]
        assert "Retry-After" in doc["headers"], path
    assert "429" not in paths["/healthz"]["get"]["responses"]


def test_admin_token_guessing_is_limited_per_client(settings: Settings) -> None:
    """Guessing the operator's token costs a counter increment once over the limit, not a comparison."""
    settings = settings.model_copy(update={"rate_limit_shop": None, "rate_limit_client": "2/minute"})
    with TestClient(create_app(settings)) as c:
        refused = sample("kefu_auth_failures_total", reason="bad_admin_token")
        codes = [
            c.post("/v1/admin/shops", json={"id": "x"}, headers={"X-Admin-Token": "guess"}).status_code
            for _ in range(4)
        ]
        assert codes == [401, 401, 429, 429]
        assert sample("kefu_auth_failures_total", reason="bad_admin_token") == refused + 2
