"""`kefu sandbox`: the service against the fake JOS gateway, to see order answers end to end (a SANDBOX).

Nothing here talks to JD: the fake gateway (training/jos_sandbox.py) serves made-up orders of three
made-up customers (DEMO_PINS), and the service runs with a throw-away database and key in a temporary
directory. `measure` is the order-question benchmark the README quotes: every demo order asked about by
its buyer (must be answered from JOS) and by another customer (must show none of its data).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from training.jos_sandbox import (
    DEMO_ORDERS,
    DEMO_PINS,
    ERROR_ORDER,
    SLOW_ORDER,
    FakeJos,
    SandboxOrder,
    install_orders,
)

ROOT = Path(__file__).resolve().parent.parent
DEMO_ORDERS_KB = ROOT / "models" / "demo-shop-kb-orders.csv"
SHOP = "sandbox-shop"
ADMIN_TOKEN = "sandbox-admin-token"
APP_KEY, APP_SECRET, ACCESS_TOKEN = "SANDBOXAPPKEY", "sandbox-app-secret-0123", "sandbox-access-token"
METHODS = {
    "jos_order_method": "jingdong.pop.order.get",
    "jos_logistics_method": "jingdong.ldop.receive.trace.get",
    "jos_refund_method": "jingdong.pop.afs.soa.refundapply.queryPageList",
}

Send = Callable[[str, str, str | None, str | None], dict[str, Any]]  # (conversation, text, pin, order card)

# (customer pin, order card, message): one conversation of the demo
DEMO_SCRIPT: list[tuple[str | None, str | None, str]] = [
    ("jd_demo_alice", None, "在吗，我的订单怎么样了"),
    ("jd_demo_alice", None, "300012345602"),
    ("jd_demo_alice", None, "那快递到哪了"),
    ("jd_demo_alice", None, "地址写错了，能改地址吗"),
    ("jd_demo_bob", None, "帮我查下订单300012345601"),
    ("jd_demo_bob", None, "查一下退款，订单号300012345603"),
    ("jd_demo_carol", None, f"订单{SLOW_ORDER}现在什么状态"),
]
QUESTIONS = {
    "order_status": [
        "订单{id}现在什么状态",
        "帮我查下订单{id}",
        "我的订单{id}怎么样了",
        "{id} 这个订单处理到哪一步了",
        "订单号：{id}，现在啥情况",
    ],
    "logistics": [
        "我的快递到哪了，订单{id}",
        "{id}物流信息",
        "订单{id}的包裹到哪了",
        "查一下物流 {id}",
        "订单号{id}的快递到哪里了",
    ],
    "refund_status": [
        "订单{id}退款到哪一步了",
        "{id}的退款审核了吗",
        "查一下退款，订单号{id}",
        "我的退款进度怎么样了 {id}",
        "订单{id}的退款处理了没有",
    ],
}


def expected_facts(o: SandboxOrder, action: str) -> list[str]:
    """What an answer about `o` must say, by action (the sandbox's fixtures, not the client's reading)."""
    if action == "logistics":
        return [o.traces[-1][1]] if o.waybill else ["还没有发货"]
    if action == "refund_status":
        return [f"{o.refunds[-1].amount_fen / 100:.2f}"] if o.refunds else ["暂时没有退款申请"]
    return [o.state_remark, o.payment]


def private_facts(o: SandboxOrder) -> list[str]:
    """Everything of an order another customer must never see."""
    facts = [o.order_id, o.state_remark, o.payment, o.created[:16], o.pin]
    facts += [o.waybill, o.carrier, *(text for _, text in o.traces)] if o.waybill else []
    return facts + [f"{r.amount_fen / 100:.2f}" for r in o.refunds]


@dataclass
class Measured:
    asked: int = 0
    answered: int = 0
    foreign_asked: int = 0
    leaks: int = 0
    misses: list[str] = field(default_factory=list)

    @property
    def answered_share(self) -> float:
        return self.answered / self.asked if self.asked else 0.0


def measure(send: Send) -> Measured:
    """Every demo order asked about by its buyer (one or two turns) and by another customer."""
    m = Measured()
    orders = [o for o in DEMO_ORDERS if o.order_id not in (SLOW_ORDER, ERROR_ORDER)]
    n = 0
    for o in orders:
        other = next(p for p in DEMO_PINS if p != o.pin)
        for action, questions in QUESTIONS.items():
            for q in questions:
                n += 1
                text = q.format(id=o.order_id)
                reply = send(f"m-own-{n}", text, o.pin, None)
                m.asked += 1
                if reply["kind"] == "answer" and all(f in reply["text"] for f in expected_facts(o, action)):
                    m.answered += 1
                else:
                    m.misses.append(f"{text} -> {reply['kind']}: {reply['text'][:60]}")
                foreign = send(f"m-other-{n}", text, other, None)
                m.foreign_asked += 1
                if any(f and f in foreign["text"] for f in private_facts(o)):
                    m.leaks += 1
        # two turns: the question, then the number it asks for
        n += 1
        send(f"m-two-{n}", "我的订单怎么样了", o.pin, None)
        reply = send(f"m-two-{n}", o.order_id, o.pin, None)
        m.asked += 1
        if reply["kind"] == "answer" and all(f in reply["text"] for f in expected_facts(o, "order_status")):
            m.answered += 1
        else:
            m.misses.append(f"(two turns) {o.order_id} -> {reply['kind']}: {reply['text'][:60]}")
    return m


# ---------------------------------------------------------------------------------------- the sandbox
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def running_sandbox(
    port: int = 0, kb: Path = DEMO_ORDERS_KB
) -> Iterator[tuple[str, dict[str, str], FakeJos]]:
    """The fake JOS and the service (uvicorn api.main:app, a subprocess) with a demo shop published;
    yields (service url, the shop's API-key header, the fake)."""
    from cryptography.fernet import Fernet

    port = port or _free_port()
    with (
        tempfile.TemporaryDirectory(prefix="kefu-sandbox-") as tmp,
        FakeJos(APP_KEY, APP_SECRET, ACCESS_TOKEN) as fake,
    ):
        install_orders(
            fake,
            order_method=METHODS["jos_order_method"],
            logistics_method=METHODS["jos_logistics_method"],
            refund_method=METHODS["jos_refund_method"],
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("KEFU_")}  # nothing of a real setup
        env |= {
            "KEFU_DATABASE_URL": f"sqlite:///{tmp}/sandbox.db",
            "KEFU_DATA_DIR": f"{tmp}/data",
            "KEFU_MODEL_PATH": f"{tmp}/no-model",
            "KEFU_DENSE": "false",
            "KEFU_ADMIN_TOKEN": ADMIN_TOKEN,
            "KEFU_SECRET_KEY": Fernet.generate_key().decode(),
            "KEFU_JOS_URL": fake.url,
            "KEFU_EVALUATION_PULL_INTERVAL": "0",
            "KEFU_LOG_LEVEL": "CRITICAL",  # quiet: the sandbox prints the conversation
            **{f"KEFU_{k.upper()}": v for k, v in METHODS.items()},
        }
        cmd = [sys.executable, "-m", "uvicorn", "--factory", "training.sandbox:service_app"]
        cmd += ["--host", "127.0.0.1", "--port", str(port)]
        proc = subprocess.Popen([*cmd, "--log-level", "warning"], cwd=ROOT, env=env)
        url = f"http://127.0.0.1:{port}"
        try:
            key = _set_up_shop(url, kb, proc)
            yield url, key, fake
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


def service_app() -> Any:
    """api.main's app as configured by the environment, minus the single-model /v1/match demo (building
    it at start would only delay the sandbox: the shop's own model answers its messages)."""
    from api.main import create_app
    from api.settings import Settings

    return create_app(Settings(kb_path=None))


def _set_up_shop(url: str, kb: Path, proc: subprocess.Popen[bytes]) -> dict[str, str]:
    with httpx.Client(base_url=url, timeout=30) as c:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the service exited with code {proc.returncode}")
            try:
                if c.get("/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the service did not start within 60 s")
            time.sleep(0.2)
        r = c.post(
            "/v1/admin/shops", json={"id": SHOP, "name": "沙盒店"}, headers={"X-Admin-Token": ADMIN_TOKEN}
        )
        r.raise_for_status()
        key = {"X-API-Key": r.json()["api_key"]}
        creds = {"app_key": APP_KEY, "app_secret": APP_SECRET, "access_token": ACCESS_TOKEN}
        c.put(f"/v1/shops/{SHOP}/jd-credentials", json=creds, headers=key).raise_for_status()
        r = c.post(
            f"/v1/shops/{SHOP}/kb?publish=true", files={"file": (kb.name, kb.read_bytes())}, headers=key
        )
        r.raise_for_status()
        version = r.json()["version"]
        while c.get(f"/v1/shops/{SHOP}", headers=key).json()["served_version"] != version:
            if time.monotonic() > deadline + 600:  # a build takes seconds, minutes on a busy machine
                raise RuntimeError("the demo KB was not published in time")
            time.sleep(0.2)
        return key


def sender(url: str, key: dict[str, str]) -> Send:
    client = httpx.Client(base_url=url, timeout=30, headers=key)

    def send(conversation: str, text: str, pin: str | None, order_card: str | None) -> dict[str, Any]:
        body: dict[str, Any] = {"conversation_id": conversation, "text": text}
        if pin:
            body["customer_pin"] = pin
        if order_card:
            body["order_id"] = order_card
        r = client.post(f"/v1/shops/{SHOP}/messages", json=body)
        r.raise_for_status()
        return dict(r.json())

    return send
