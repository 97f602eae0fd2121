"""Cold start from chat history: the chat-log pull (paged, resumable, masked), the grouping by the agents'
replies into a first KB, paraphrases and labelled traffic, and the CLI and service around it."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from typer.testing import CliRunner

from api.jd.methods import CHAT_LOG
from api.main import create_app
from api.settings import Settings
from engine.coldstart import cold_start, recovered
from engine.kb import load_kb
from tests.conftest import ROOT
from tests.test_service import KB, kb_csv, new_shop, publish_and_wait
from tests.test_service import settings as settings
from training.cli import app
from training.coldstart import ChatFileError, chat_pairs, evaluate_cold_start, read_chat_records
from training.jos_sandbox import (
    DEMO_CHATLOG,
    DEMO_GROUPS,
    FakeJos,
    install_chatlog,
    install_groups,
    load_chatlog,
)

APP_KEY, SECRET, TOKEN = "JDAPPKEY0001", "jd-secret-0123456789", "jd-token-abcdef"
DEMO_KB = ROOT / "models" / "demo-shop-kb-orders.csv"


def demo_pairs() -> list[tuple[str, str]]:
    return [(q, a) for _, q, a in chat_pairs(load_chatlog())]


def test_the_demo_chat_history_is_big_enough() -> None:
    records = load_chatlog()
    assert sum(r["from"] == r["customer"] for r in records) >= 300
    assert len(demo_pairs()) >= 300


def test_a_shop_without_a_kb_gets_its_entries_back_from_the_agents_replies() -> None:
    entries = load_kb(DEMO_KB)
    result = cold_start(demo_pairs())
    assert result.labelled == [] and result.figures["paraphrase_sets"] == 0
    back = recovered(result.rows, entries)
    figures = evaluate_cold_start(load_chatlog(), entries, dense=False)  # recovery: no dense needed
    assert figures["recovered"] == len(back)
    # every entry customers asked about in two ways or more comes back as a proposed entry
    assert figures["recovered_of_asked_two_ways"] >= 0.9 * figures["entries_asked_two_ways"] > 30
    first = next(r for r in result.rows if r["proposal"] == "new_entry")
    assert first["answer"] and first["question"] and first["similar"]


def test_small_talk_and_short_replies_are_left_out() -> None:
    pairs = [
        ("在吗", "您好，欢迎光临，请问有什么可以帮您？"),
        ("好的谢谢", "不客气"),
        ("能开发票吗", "好的亲"),
    ]
    result = cold_start(pairs)
    assert result.figures["pairs_used"] == 0 and result.rows == []


def test_with_a_kb_the_chats_give_paraphrases_and_labelled_traffic() -> None:
    entries = load_kb(DEMO_KB)
    result = cold_start(demo_pairs(), entries)
    ids = {e.id for e in entries}
    assert result.labelled and {e for _, e in result.labelled} - {None} <= ids
    assert any(e is None for _, e in result.labelled)  # replies no entry says: out of scope for this KB
    para = [r for r in result.rows if r["proposal"] == "paraphrases"]
    assert para
    by_id = {e.id: e for e in entries}
    for r in para:
        known = set(by_id[r["id"]].questions())
        assert r["new_paraphrases"] and not set(r["new_paraphrases"].split("|")) & known


def test_calibrating_on_the_chats_protects_out_of_scope_questions() -> None:
    f = evaluate_cold_start(load_chatlog(), load_kb(DEMO_KB))
    assert f["labelled_calibrate"] > 50 and f["labelled_out_of_scope"] > 10
    assert f["after"]["out_of_scope_protected"] > f["before"]["out_of_scope_protected"]
    assert f["after"]["precision"] >= f["before"]["precision"]


@pytest.fixture
def client(settings: Settings) -> Iterator[tuple[TestClient, dict[str, str], FakeJos]]:
    with FakeJos(APP_KEY, SECRET, TOKEN) as fake:
        install_chatlog(fake, load_chatlog())
        install_groups(fake)
        settings.jos_url = fake.url
        with TestClient(create_app(settings)) as c:
            key = new_shop(c)
            publish_and_wait(c, "shop-a", key, kb_csv(KB))
            creds = {"app_key": APP_KEY, "app_secret": SECRET, "access_token": TOKEN}
            assert c.put("/v1/shops/shop-a/jd-credentials", headers=key, json=creds).status_code == 200
            yield c, key, fake


def test_the_service_pulls_the_chat_history_masked_and_proposes_from_it(
    client: Any, settings: Settings
) -> None:
    c, key, fake = client
    period = "since=2026-11-01T00:00:00&until=2026-11-28T00:00:00"
    r = c.post(f"/v1/shops/shop-a/jd/chatlog/pull?{period}", headers=key)
    assert r.status_code == 200, r.text
    assert (r.json()["seen"], r.json()["new"]) == (600, 600)
    assert r.json()["sessions"] == {"seen": 148, "new": 148}
    sent = [q.biz_params for q in fake.requests if q.jos_method == CHAT_LOG.name]
    assert all(set(b) <= set(CHAT_LOG.params) for b in sent) and len(sent) >= 27  # a window a day
    again = c.post(f"/v1/shops/shop-a/jd/chatlog/pull?{period}", headers=key)
    assert again.json()["new"] == 0 and again.json()["sessions"]["new"] == 0  # stored once
    out = c.get("/v1/shops/shop-a/jd/chatlog/coldstart", headers=key).json()
    assert out["figures"]["pairs"] == 300 and out["figures"]["new_entries"] >= 30
    assert {"id", "question", "similar", "answer", "category", "proposal"} <= set(out["proposals"][0])
    assert out["labelled"] and all(set(x) == {"query", "expected_id"} for x in out["labelled"])
    engine = create_engine(settings.database_url)
    with engine.connect() as conn:
        dump = " ".join(str(row) for row in conn.execute(text("SELECT * FROM jd_chat_messages")))
    engine.dispose()
    assert "jd_demo_buyer_" not in dump and "13612345678" not in dump  # pins hashed, phones masked
    assert "快递到哪了" in dump


def test_kefu_coldstart_writes_proposals_and_labels(tmp_path: Path) -> None:
    out, labels = tmp_path / "first.xlsx", tmp_path / "labelled.csv"
    result = CliRunner().invoke(
        app, ["coldstart", str(DEMO_CHATLOG), "--kb", str(DEMO_KB), "-o", str(out), "--labelled", str(labels)]
    )
    assert result.exit_code == 0, result.output
    assert out.is_file() and "paraphrase sets" in result.output
    with labels.open(encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f))
    assert rows and set(rows[0]) == {"query", "expected_id"}
    refused = CliRunner().invoke(app, ["coldstart", str(DEMO_CHATLOG), "--evaluate"])
    assert refused.exit_code != 0 and "--evaluate needs --kb" in refused.output
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"sid": "s1", "from": "a", "content": "x"}\nnot json\n', "utf-8")
    with pytest.raises(ChatFileError, match="line 2"):
        read_chat_records(bad)


def test_a_failed_chat_pull_resumes_and_agent_groups_are_listed(client: Any) -> None:
    c, key, fake = client
    fake.faults = [None, None, "jos:19"]  # two windows answer, the third is refused
    first = c.post("/v1/shops/shop-a/jd/chatlog/pull?since=2026-11-01T00:00:00", headers=key)
    fake.faults = []
    assert first.status_code == 502
    c.post("/v1/shops/shop-a/jd/chatlog/pull?since=2026-11-01T00:00:00", headers=key)  # a backfill
    groups = c.get("/v1/shops/shop-a/jd/groups", headers=key)
    assert groups.status_code == 200, groups.text
    assert [(g["name"], g["waiters"]) for g in groups.json()] == [
        (g["groupName"], g["waiters"]) for g in DEMO_GROUPS
    ]
