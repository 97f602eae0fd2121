"""JOS integration layer against a real fake gateway on a socket (tests/jos_fake.py); httpx is not mocked.

Backoff and rate-limit sleeps go through an injected recorder, so nothing here asserts wall-clock timing;
only the two timeout tests really wait (a 0.2 s client timeout).
"""

from __future__ import annotations

import hashlib
import logging
import pickle
import socket
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from api.jd import (
    JosApiError,
    JosAuthError,
    JosClient,
    JosError,
    JosParamError,
    JosProtocolError,
    JosRateLimitError,
    JosServerError,
    JosTransportError,
    StaleTimestamp,
    beijing_timestamp,
    check_timestamp,
    error_class_for,
    mask_secret,
    parse_beijing_timestamp,
    sign,
    verify,
)
from tests.jos_fake import FakeJos, FakeJosError

APP_KEY = "4F1C2A9E7B3D4C5E8F6A0B1C2D3E4F5A"
APP_SECRET = "sekret-9d8c7b6a5f4e3d2c1b0a"
TOKEN = "tok-0a1b2c3d4e5f6a7b8c9d"
METHOD = "jingdong.ware.read.findWareById"


def md5_upper(text: str) -> str:
    return hashlib.md5(text.encode("utf-8")).hexdigest().upper()


class SleepRecorder:
    """Stands in for time.sleep/time.monotonic: sleeping advances a fake clock instead of waiting."""

    def __init__(self, advance: bool = True) -> None:
        self.now = 1000.0
        self.calls: list[float] = []
        self.advance = advance
        self._lock = threading.Lock()

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.calls.append(seconds)
            if self.advance:
                self.now += seconds


@pytest.fixture
def fake() -> Iterator[FakeJos]:
    with FakeJos(APP_KEY, APP_SECRET, TOKEN, timeout_sleep=0.5) as f:
        f.handle(METHOD, lambda biz: {"ware": {"wareId": biz.get("wareId"), "title": "蓝牙耳机"}})
        yield f


@pytest.fixture
def sleeps() -> SleepRecorder:
    return SleepRecorder()


def make_client(fake: FakeJos, sleeps: SleepRecorder, **overrides: Any) -> JosClient:
    kwargs: dict[str, Any] = {
        "base_url": fake.url,
        "timeout": 2.0,
        "backoff_base": 0.01,
        "backoff_max": 0.05,
        "rate_per_second": None,
        "sleep": sleeps.sleep,
    }
    kwargs.update(overrides)
    secret = kwargs.pop("app_secret", APP_SECRET)
    token = kwargs.pop("access_token", TOKEN)
    return JosClient(APP_KEY, secret, token, **kwargs)


# -- signing ------------------------------------------------------------------------------------------


def test_sign_matches_hand_computed_md5() -> None:
    params = {
        "v": "2.0",
        "method": "jingdong.ware.read.findWareById",
        "timestamp": "2024-01-02 03:04:05",
        "app_key": "KEY123",
        "access_token": "",  # empty: skipped
        "360buy_param_json": '{"wareId":42,"note":"耳机"}',
        "sign": "IGNORED",  # never part of its own input
    }
    expected = md5_upper(
        "SECRET"
        '360buy_param_json{"wareId":42,"note":"耳机"}'
        "app_keyKEY123"
        "methodjingdong.ware.read.findWareById"
        "timestamp2024-01-02 03:04:05"
        "v2.0"
        "SECRET"
    )
    assert sign(params, "SECRET") == expected
    assert expected == expected.upper() and len(expected) == 32


def test_sign_skips_none_and_rejects_empty_secret() -> None:
    assert sign({"a": "1", "b": None, "c": ""}, "S") == md5_upper("Sa1S")
    with pytest.raises(ValueError):
        sign({"a": "1"}, "")


def test_verify_accepts_and_rejects() -> None:
    params = {"method": "jingdong.x.y", "app_key": "k", "timestamp": "2024-01-02 03:04:05", "v": "2.0"}
    signed = {**params, "sign": sign(params, APP_SECRET)}
    assert verify(signed, APP_SECRET)
    assert verify({**signed, "sign": signed["sign"].lower()}, APP_SECRET)
    assert not verify(signed, APP_SECRET + "x")
    assert not verify({**signed, "v": "2.1"}, APP_SECRET)
    assert not verify(params, APP_SECRET)  # no sign at all
    assert not verify({**params, "sign": ""}, APP_SECRET)
    assert not verify({**params, "sign": "签名"}, APP_SECRET)  # non-ASCII must not crash compare_digest


def test_beijing_timestamp_roundtrip() -> None:
    utc_midnight = datetime(2024, 1, 1, 0, 0, 0, tzinfo=UTC)
    assert beijing_timestamp(utc_midnight) == "2024-01-01 08:00:00"
    parsed = parse_beijing_timestamp("2024-01-01 08:00:00")
    assert parsed == utc_midnight and parsed.utcoffset() == timedelta(hours=8)
    with pytest.raises(ValueError):
        beijing_timestamp(datetime(2024, 1, 1))  # naive: zone unknown
    with pytest.raises(ValueError):
        parse_beijing_timestamp("2024/01/01 08:00")
    # Current time: parses back to within a second or two of now.
    assert abs(parse_beijing_timestamp(beijing_timestamp()) - datetime.now(UTC)) < timedelta(seconds=5)


def test_check_timestamp_window() -> None:
    now = datetime(2024, 6, 1, 4, 0, 0, tzinfo=UTC)  # 12:00 in Beijing
    check_timestamp("2024-06-01 12:04:59", now=now)
    check_timestamp("2024-06-01 11:55:01", now=now)
    with pytest.raises(StaleTimestamp, match="behind"):
        check_timestamp("2024-06-01 11:54:00", now=now)
    with pytest.raises(StaleTimestamp, match="ahead of"):
        check_timestamp("2024-06-01 12:06:00", now=now)
    check_timestamp("2024-06-01 12:09:00", window=timedelta(minutes=10), now=now)
    with pytest.raises(StaleTimestamp, match="malformed") as info:
        check_timestamp("not a time", now=now)
    assert isinstance(info.value, ValueError)


# -- error mapping ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "desc", "cls"),
    [
        ("11", None, JosAuthError),
        ("12", None, JosAuthError),
        ("19", None, JosAuthError),
        ("20", None, JosAuthError),
        ("21", None, JosAuthError),
        ("22", None, JosAuthError),
        ("66", None, JosRateLimitError),
        ("67", None, JosRateLimitError),
        ("9999", "接口调用频率过高", JosRateLimitError),
        ("9998", "API call limit reached", JosRateLimitError),
        ("1", None, JosServerError),
        ("2", None, JosServerError),
        ("3", None, JosServerError),
        ("63", None, JosServerError),
        ("30", None, JosParamError),
        ("49", "page size limit exceeded", JosParamError),  # explicit code beats wording
        ("50", None, JosApiError),
        (None, None, JosApiError),
    ],
)
def test_error_class_for(code: str | None, desc: str | None, cls: type[JosError]) -> None:
    assert error_class_for(code, desc) is cls
    assert cls(code=code).retryable == (cls in (JosRateLimitError, JosServerError))


def test_errors_pickle_and_keep_attributes() -> None:
    err = JosRateLimitError(code="66", zh_desc="调用频率超限", method=METHOD, attempts=3)
    copy = pickle.loads(pickle.dumps(err))
    assert type(copy) is JosRateLimitError
    assert (copy.code, copy.method, copy.attempts, copy.retryable) == ("66", METHOD, 3, True)
    assert str(copy) == str(err) and "after 3 attempts" in str(err)


# -- client against the fake --------------------------------------------------------------------------


def test_successful_call_is_unwrapped_and_correctly_signed(fake: FakeJos, sleeps: SleepRecorder) -> None:
    with make_client(fake, sleeps) as client:
        result = client.call(METHOD, {"wareId": 42, "note": "加急"})
    assert result == {"code": "0", "ware": {"wareId": 42, "title": "蓝牙耳机"}}

    (req,) = fake.requests
    assert req.http_method == "POST"  # token and sign stay out of URLs
    p = req.params
    assert "sign" not in req.path and "access_token" not in req.path
    assert (p["method"], p["app_key"], p["access_token"], p["v"]) == (METHOD, APP_KEY, TOKEN, "2.0")
    assert req.biz_params == {"wareId": 42, "note": "加急"}
    assert p["360buy_param_json"].isascii() and " " not in p["360buy_param_json"]
    check_timestamp(p["timestamp"], window=timedelta(minutes=1))
    expected = md5_upper(
        APP_SECRET
        + "360buy_param_json"
        + p["360buy_param_json"]
        + "access_token"
        + TOKEN
        + "app_key"
        + APP_KEY
        + "method"
        + METHOD
        + "timestamp"
        + p["timestamp"]
        + "v2.0"
        + APP_SECRET
    )
    assert p["sign"] == expected
    assert sleeps.calls == []


def test_call_without_access_token_omits_it(sleeps: SleepRecorder) -> None:
    with FakeJos(APP_KEY, APP_SECRET, access_token=None) as fake:
        fake.handle("jingdong.public.query", lambda biz: {"ok": True})
        with make_client(fake, sleeps, access_token=None) as client:
            assert client.call("jingdong.public.query")["ok"] is True
    assert "access_token" not in fake.requests[0].params


def test_retries_http_500_then_succeeds(fake: FakeJos, sleeps: SleepRecorder) -> None:
    fake.faults = ["500", "500", None]
    with make_client(fake, sleeps) as client:
        assert client.call(METHOD, {"wareId": 1})["ware"]["wareId"] == 1
    assert len(fake.requests) == 3
    # Two backoffs, exponential with jitter: step 0.01 then 0.02, each in [step/2, step].
    assert len(sleeps.calls) == 2
    assert 0.005 <= sleeps.calls[0] <= 0.01 and 0.01 <= sleeps.calls[1] <= 0.02
    # Each attempt is freshly signed (and the signs all verify).
    assert all(verify(r.params, APP_SECRET) for r in fake.requests)


def test_timeout_then_ok(fake: FakeJos, sleeps: SleepRecorder) -> None:
    fake.faults = ["timeout", None]
    with make_client(fake, sleeps, timeout=0.2) as client:
        assert client.call(METHOD, {"wareId": 7})["ware"]["wareId"] == 7
    assert len(fake.requests) == 2


def test_slow_but_within_timeout_is_not_retried(fake: FakeJos, sleeps: SleepRecorder) -> None:
    fake.faults = ["slow:0.05"]
    with make_client(fake, sleeps, timeout=2.0) as client:
        assert client.call(METHOD, {"wareId": 3})["ware"]["wareId"] == 3
    assert len(fake.requests) == 1


def test_malformed_json_is_retried_once_then_protocol_error(fake: FakeJos, sleeps: SleepRecorder) -> None:
    fake.faults = ["malformed", "malformed", "malformed", "malformed"]
    with make_client(fake, sleeps, max_retries=3) as client, pytest.raises(JosProtocolError) as info:
        client.call(METHOD, {"wareId": 1})
    assert len(fake.requests) == 2  # one retry only, despite max_retries=3
    assert info.value.attempts == 2
    assert "not valid JSON" in str(info.value)


def test_malformed_once_then_ok(fake: FakeJos, sleeps: SleepRecorder) -> None:
    fake.faults = ["malformed", None]
    with make_client(fake, sleeps) as client:
        assert client.call(METHOD, {"wareId": 2})["code"] == "0"
    assert len(fake.requests) == 2


def test_unexpected_shape_is_protocol_error_without_retry(fake: FakeJos, sleeps: SleepRecorder) -> None:
    fake.faults = ["wrong-shape", None]
    with make_client(fake, sleeps) as client, pytest.raises(JosProtocolError, match="findWareById_responce"):
        client.call(METHOD)
    assert len(fake.requests) == 1


def test_sign_error_is_auth_error_without_retry(fake: FakeJos, sleeps: SleepRecorder) -> None:
    fake.faults = ["jos:19", None]
    with make_client(fake, sleeps) as client, pytest.raises(JosAuthError) as info:
        client.call(METHOD)
    assert info.value.code == "19" and info.value.zh_desc == "签名无效"
    assert info.value.retryable is False and info.value.attempts == 1
    assert len(fake.requests) == 1 and sleeps.calls == []


def test_rate_limited_then_ok(fake: FakeJos, sleeps: SleepRecorder) -> None:
    fake.faults = ["jos:66", None]
    with make_client(fake, sleeps) as client:
        assert client.call(METHOD, {"wareId": 5})["code"] == "0"
    assert len(fake.requests) == 2 and len(sleeps.calls) == 1


def test_param_error_is_not_retried(fake: FakeJos, sleeps: SleepRecorder) -> None:
    fake.faults = ["jos:40", None]
    with make_client(fake, sleeps) as client, pytest.raises(JosParamError):
        client.call(METHOD)
    assert len(fake.requests) == 1


def test_http_4xx_is_not_retried(fake: FakeJos, sleeps: SleepRecorder) -> None:
    fake.faults = ["404", None]
    with make_client(fake, sleeps) as client, pytest.raises(JosApiError) as info:
        client.call(METHOD)
    assert info.value.http_status == 404 and len(fake.requests) == 1


def test_business_error_inside_responce_is_mapped(fake: FakeJos, sleeps: SleepRecorder) -> None:
    fake.handle("jingdong.biz.query", lambda biz: {"code": "41", "zh_desc": "skuId不能为空"})
    with make_client(fake, sleeps) as client, pytest.raises(JosParamError, match="skuId不能为空"):
        client.call("jingdong.biz.query")


def test_all_attempts_fail_with_server_error(fake: FakeJos, sleeps: SleepRecorder) -> None:
    fake.faults = ["500", "jos:2", "503", "500", None]
    with make_client(fake, sleeps, max_retries=3) as client, pytest.raises(JosServerError) as info:
        client.call(METHOD)
    assert len(fake.requests) == 4
    assert info.value.attempts == 4 and info.value.http_status == 500
    assert "after 4 attempts" in str(info.value)
    assert len(sleeps.calls) == 3


def test_all_attempts_fail_with_transport_error(fake: FakeJos, sleeps: SleepRecorder) -> None:
    fake.faults = ["drop", "timeout", "drop"]
    with (
        make_client(fake, sleeps, max_retries=2, timeout=0.2) as client,
        pytest.raises(JosTransportError) as info,
    ):
        client.call(METHOD)
    assert len(fake.requests) == 3 and info.value.attempts == 3
    assert isinstance(info.value.__cause__, httpx.TransportError)


def test_connection_refused_is_transport_error(sleeps: SleepRecorder) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again before the client connects: nothing listens there
    client = JosClient(
        APP_KEY, APP_SECRET, TOKEN, base_url=f"http://127.0.0.1:{port}/routerjson", max_retries=1,
        backoff_base=0.01, rate_per_second=None, sleep=sleeps.sleep,
    )  # fmt: skip
    with client, pytest.raises(JosTransportError) as info:
        client.call(METHOD)
    assert info.value.attempts == 2 and isinstance(info.value.__cause__, httpx.ConnectError)


def test_wrong_secret_token_or_clock_is_auth_error(fake: FakeJos, sleeps: SleepRecorder) -> None:
    with (
        make_client(fake, sleeps, app_secret="not-the-secret") as client,
        pytest.raises(JosAuthError) as info,
    ):
        client.call(METHOD)
    assert info.value.code == "19"
    with (
        make_client(fake, sleeps, access_token="tok-expired-000000") as client,
        pytest.raises(JosAuthError) as info,
    ):
        client.call(METHOD)
    assert info.value.code == "11"
    fake.clock_skew = timedelta(minutes=11)  # the gateway's clock is 11 minutes ahead of ours
    with make_client(fake, sleeps) as client, pytest.raises(JosAuthError) as info:
        client.call(METHOD)
    assert info.value.code == "21"
    assert len(fake.requests) == 3 and sleeps.calls == []


def test_non_idempotent_calls_only_retry_what_was_never_processed(
    fake: FakeJos, sleeps: SleepRecorder
) -> None:
    fake.faults = ["timeout", None]
    with make_client(fake, sleeps, timeout=0.2) as client:
        with pytest.raises(JosTransportError):
            client.call(METHOD, {"wareId": 1}, idempotent=False)
        assert len(fake.requests) == 1
        fake.faults = ["500", None]
        with pytest.raises(JosServerError):
            client.call(METHOD, {"wareId": 1}, idempotent=False)
        assert len(fake.requests) == 2  # a 5xx may come after the write happened: not repeated
        fake.faults = ["jos:66", None]  # throttled at the gateway: safe to repeat
        assert client.call(METHOD, {"wareId": 1}, idempotent=False)["code"] == "0"
        assert len(fake.requests) == 4


def test_access_token_can_be_swapped(fake: FakeJos, sleeps: SleepRecorder) -> None:
    with make_client(fake, sleeps, access_token="tok-old-0000000000") as client:
        with pytest.raises(JosAuthError):
            client.call(METHOD)
        client.access_token = TOKEN
        assert client.call(METHOD)["code"] == "0"


# -- rate limiting ------------------------------------------------------------------------------------


def test_rate_limiter_spaces_calls(fake: FakeJos) -> None:
    clock = SleepRecorder()
    with make_client(fake, clock, rate_per_second=5, clock=clock.clock) as client:
        for i in range(10):
            client.call(METHOD, {"wareId": i})
    # Burst of 5 (one second's worth), then one call per 0.2 s: 5 waits of 0.2 s.
    assert sum(clock.calls) == pytest.approx(1.0)
    assert len(clock.calls) == 5 and all(c == pytest.approx(0.2) for c in clock.calls)
    assert len(fake.requests) == 10


def test_rate_limiter_is_thread_safe(fake: FakeJos) -> None:
    frozen = SleepRecorder(advance=False)  # time never passes, so every reservation queues further back
    with make_client(fake, frozen, rate_per_second=5, clock=frozen.clock) as client:
        threads = [threading.Thread(target=client.call, args=(METHOD, {"wareId": i})) for i in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(fake.requests) == 20
    # 5 free tokens, then waits of 0.2, 0.4, ... 3.0 s: each reservation handed out exactly once.
    assert sorted(frozen.calls) == pytest.approx([0.2 * k for k in range(1, 16)])


# -- nothing secret leaks -----------------------------------------------------------------------------


def test_no_secrets_in_logs_errors_or_repr(
    fake: FakeJos, sleeps: SleepRecorder, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)

    # A gateway that echoes the token back in its error text must not smuggle it into our exception.
    def echo(biz: Any) -> dict[str, Any]:
        raise FakeJosError("50", f"bad token {TOKEN}")

    fake.handle("jingdong.echo.query", echo)
    # With max_retries=1: server error, protocol error, auth error, transport error, API error, success.
    fake.faults = ["500", "500", "malformed", "malformed", "jos:19", "drop", "timeout", "jos:66", "404", None]
    errors: list[JosError] = []
    with make_client(fake, sleeps, max_retries=1, timeout=0.2) as client:
        for method in [METHOD] * 6 + ["jingdong.echo.query"]:
            try:
                client.call(method, {"wareId": 1})
            except JosError as exc:
                errors.append(exc)
        client_repr = repr(client)
    with make_client(fake, sleeps, app_secret="wrong-secret-123456") as client:
        try:
            client.call(METHOD)
        except JosError as exc:
            errors.append(exc)

    assert {type(e) for e in errors} >= {JosServerError, JosProtocolError, JosAuthError, JosTransportError}
    signs = {r.params["sign"] for r in fake.requests}
    assert len(fake.requests) == 12 and signs  # same params within one second sign identically
    forbidden = [APP_SECRET, TOKEN, "wrong-secret-123456", *signs]

    texts = [client_repr]
    texts += [f"{e!s} {e!r} {e.args!r}" for e in errors]
    texts += [r.getMessage() for r in caplog.records]
    texts += [str(r.args) for r in caplog.records]
    assert any(r.name == "kefu.jos" for r in caplog.records)
    for text in texts:
        for secret in forbidden:
            assert secret not in text, f"secret leaked into: {text[:200]}"
    echoed = errors[-2]
    assert echoed.code == "50" and "***" in str(echoed)
    assert client_repr == f"JosClient(app_key='4F1***5A', base_url='{fake.url}', access_token=<set>)"


def test_mask_secret() -> None:
    assert mask_secret("abcdefghxyz") == "abc***yz"
    assert mask_secret("short") == "***"
    assert mask_secret("") == "***"
    assert mask_secret(None) == "***"
