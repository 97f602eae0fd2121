"""A real service on 127.0.0.1 for the console's browser tests: uvicorn on a socket the test bound, SQLite
in a temp directory, two shops with a small KB published (fast profile: no dense channel)."""

from __future__ import annotations

import csv
import io
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import uvicorn

from api.main import create_app
from api.settings import Settings

ADMIN = "console-admin-token"
SECRET_KEY = "ZmRhc2RmYXNkZmFzZGZhc2RmYXNkZmFzZGZhc2RmYXM="
PASSWORD = "店铺密码 correct horse"
KB = [
    ("invoice", "能开发票吗", "可以开发票吗|发票怎么开|有没有发票|能开专票吗", "支持开具电子发票和专票。"),
    ("ship-time", "什么时候发货", "几天发货|多久能发出|下单后多久发货|今天能发吗", "16点前付款当天发货。"),
    ("warranty", "保修多久", "保修期是多长时间|质保几年|坏了保修吗|保修怎么算", "整机保修两年。"),
    (
        "return",
        "支持七天无理由退货吗",
        "能退货吗|不想要了可以退吗|怎么退货|七天能退吗",
        "支持七天无理由退货。",
    ),
    ("shipping-fee", "包邮吗", "运费多少|要付邮费吗|免运费吗|邮费谁出", "全国包邮。"),
    (
        "address",
        "收货地址能改吗",
        "地址填错了怎么办|怎么修改收货地址|能换个地址吗|改地址",
        "出库前可改地址。",
    ),
    ("tracking", "我的快递到哪了", "怎么查物流|物流信息在哪看|快递到哪里了|查快递", "在订单详情查看物流。"),
    ("payment", "可以分期付款吗", "支持白条吗|能用信用卡吗|分期免息吗|白条分期", "支持白条分期。"),
]


def kb_csv(rows: list[tuple[str, str, str, str]] = KB) -> bytes:
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(["id", "question", "similar", "answer"])
    w.writerows(rows)
    return out.getvalue().encode("utf-8")


@dataclass
class Server:
    url: str
    keys: dict[str, str]  # shop -> API key

    def api(self, shop: str) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"X-API-Key": self.keys[shop]}, timeout=60)


def settings_for(tmp: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "database_url": f"sqlite:///{tmp}/kefu.db",
        "data_dir": tmp / "data",
        "admin_token": ADMIN,
        "secret_key": SECRET_KEY,
        "dense": False,
        "kb_path": None,
        "model_path": tmp / "no-model",
        "evaluation_pull_interval": 0,
        "queue_workers": 0,
        "rate_limit_shop": "100000/second",
        "rate_limit_client": "100000/second",
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


def publish(server: Server, shop: str, data: bytes) -> int:
    """Upload and publish a KB through the API, and wait until the version serves."""
    with server.api(shop) as c:
        r = c.post(f"/v1/shops/{shop}/kb?publish=true", files={"file": ("kb.csv", data)})
        assert r.status_code == 200, r.text
        version = int(r.json()["version"])
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            body = c.get(f"/v1/shops/{shop}").json()
            if body["served_version"] == version:
                return version
            assert c.get(f"/v1/shops/{shop}/kb/versions/{version}").json()["status"] != "failed"
            time.sleep(0.1)
    raise AssertionError(f"version {version} of {shop} did not serve in time")


@contextmanager
def running(
    tmp: Path, shops: tuple[str, ...] = ("shop-a", "shop-b"), **overrides: object
) -> Iterator[Server]:
    """The service on 127.0.0.1 with `shops` created (console password PASSWORD) and KB published."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))  # the server takes this socket: no race for a "free" port
    port = sock.getsockname()[1]
    app = create_app(settings_for(tmp, **overrides))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline, "uvicorn did not start within 30 s"
            time.sleep(0.02)
        url = f"http://127.0.0.1:{port}"
        keys = {}
        admin = {"X-Admin-Token": ADMIN}
        for shop in shops:
            r = httpx.post(f"{url}/v1/admin/shops", json={"id": shop, "name": shop}, headers=admin)
            assert r.status_code == 201, r.text
            keys[shop] = r.json()["api_key"]
            r = httpx.put(
                f"{url}/v1/admin/shops/{shop}/console-password", json={"password": PASSWORD}, headers=admin
            )
            assert r.status_code == 204, r.text
            # a small KB: trust the calibration examples' own precision, so paraphrases are answered
            r = httpx.put(
                f"{url}/v1/shops/{shop}/settings",
                json={"threshold_confidence": 0},
                headers={"X-API-Key": keys[shop]},
            )
            assert r.status_code == 200, r.text
        running_server = Server(url, keys)
        for shop in shops:
            publish(running_server, shop, kb_csv())
        yield running_server
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()
