"""`kefu bench-http` (training/httpbench.py): the demo message mix, wrk's figures as our Lua `done()` prints
them, and short real runs with Debian's wrk against real uvicorn servers.

The real runs skip with a reason when wrk is missing, and fail instead when KEFU_TEST_REQUIRE_BROWSER=1
(CI: `make test` installs wrk with Chromium). They check that figures come back and errors are counted,
never how fast anything is.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import re
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from training import httpbench
from training.httpbench import (
    LUA,
    STEERED,
    BenchConfig,
    BenchError,
    BenchReport,
    Message,
    MixSources,
    ScenarioResult,
    demo_mix,
    find_wrk,
    hello_target,
    interleave,
    mix_sources,
    parse_wrk_output,
    print_report,
    run_wrk,
    write_bodies,
)

ORDER_NUMBER = re.compile(r"3\d{11}")


@pytest.fixture(scope="module")
def sources() -> MixSources:
    return mix_sources()


def _conversations(mix: list[Message]) -> dict[str, list[Message]]:
    out: dict[str, list[Message]] = {}
    for m in mix:
        out.setdefault(m.conversation_id, []).append(m)
    return out


def _repeat_share(mix: list[Message]) -> float:
    """Counted from the texts, not from the generator's own marks."""
    seen: set[str] = set()
    repeats = asked = 0
    for m in mix:
        if m.kind in STEERED:
            asked += 1
            repeats += m.text in seen
        seen.add(m.text)
    return repeats / asked


# ------------------------------------------------------------------------------------------ the mix


def test_the_mix_is_the_same_for_the_same_seed_and_differs_for_another(sources: MixSources) -> None:
    a = demo_mix(1500, seed=4, sources=sources)
    assert a == demo_mix(1500, seed=4, sources=sources)
    b = demo_mix(1500, seed=5, sources=sources)
    assert sum(x.text != y.text for x, y in zip(a, b, strict=True)) > 1000


@pytest.mark.parametrize("share", [0.0, 0.3, 0.6])
def test_the_mix_repeats_the_share_of_questions_asked_for(sources: MixSources, share: float) -> None:
    mix = demo_mix(3000, seed=1, repeat_share=share, sources=sources)
    assert _repeat_share(mix) == pytest.approx(share, abs=0.02)
    assert _repeat_share(mix[:300]) == pytest.approx(share, abs=0.05)  # any prefix, not only on average
    assert [m.repeat for m in mix] == [m.text in {x.text for x in mix[:i]} for i, m in enumerate(mix)]


def test_repeats_come_from_other_customers_and_never_carry_their_order_numbers(sources: MixSources) -> None:
    mix = demo_mix(3000, seed=2, sources=sources)
    with_orders = Counter(m.text for m in mix if ORDER_NUMBER.search(m.text))
    assert len(with_orders) > 50  # about 8% of the questions
    assert set(with_orders.values()) == {1}
    for turns in _conversations(mix).values():
        asked = [m.text for m in turns if m.kind in STEERED]
        assert len(asked) == len(set(asked)), turns


def test_the_mix_is_conversations_of_questions_varied_as_customers_type_them(sources: MixSources) -> None:
    mix = demo_mix(3000, seed=3, sources=sources)
    conversations = _conversations(mix)
    assert set(Counter(len(t) for t in conversations.values())) == {1, 2, 3, 4}
    ids = [m.conversation_id for m in mix]
    assert ids == sorted(ids, key=ids.index)  # a conversation's turns are together, in order
    for turns in conversations.values():
        kinds = [m.kind for m in turns]
        assert "greeting" not in kinds[1:] and "closing" not in kinds[:-1], kinds
        assert len(turns) > 1 or kinds[0] in STEERED, kinds

    kinds = Counter(m.kind for m in mix)
    assert 0.5 < kinds["question"] / len(mix) < 0.85
    assert 0.05 < kinds["out_of_scope"] / len(mix) < 0.2
    assert 0.1 < (kinds["greeting"] + kinds["closing"]) / len(mix) < 0.35

    kb = set(sources.questions)
    fresh = [m.text for m in mix if m.kind == "question" and not m.repeat]
    assert 0.05 < sum(t in kb for t in fresh) / len(fresh) < 0.4  # some exactly as in the KB, most varied
    dropped = {q[:i] + q[i + 1 :] for q in kb for i in range(len(q))} - kb
    doubled = {q[: i + 1] + q[i:] for q in kb for i in range(len(q))} - kb
    assert set(fresh) & dropped and set(fresh) & doubled  # typos: a character dropped, one typed twice
    particles = tuple(httpbench.PARTICLES)
    assert any(t.endswith(particles) and t[:-1] in kb for t in fresh)
    endings = ("", *httpbench.PUNCTUATION)
    for m in mix:
        if m.kind in ("greeting", "closing"):  # the demo conversations' small talk, maybe punctuated
            pool = sources.greetings if m.kind == "greeting" else sources.closings
            assert any(m.text.startswith(g) and m.text[len(g) :] in endings for g in pool), m


def test_interleave_spreads_a_conversations_turns_over_the_lanes_of_one_thread(sources: MixSources) -> None:
    mix = demo_mix(900, seed=3, sources=sources)
    lanes = 8
    per_thread = interleave(mix, threads=2, lanes=lanes)
    assert Counter(m for t in per_thread for m in t) == Counter(mix)
    owner = {m.conversation_id: i for i, t in enumerate(per_thread) for m in t}
    assert all(owner[m.conversation_id] == i for i, t in enumerate(per_thread) for m in t)
    for order in per_thread:
        assert abs(len(order) - len(mix) / 2) < 30
        position: dict[str, list[int]] = {}
        for i, m in enumerate(order):
            position.setdefault(m.conversation_id, []).append(i)
        for cid, where in position.items():
            assert [order[i] for i in where] == _conversations(mix)[cid]  # turns keep their order
            for a, b in itertools.pairwise(where):
                if b < len(order) - 4 * lanes:  # the tail, where lanes run out, is tighter
                    assert b - a == lanes, (cid, where)


def test_bodies_are_one_compact_json_line_per_message(sources: MixSources, tmp_path: Path) -> None:
    per_thread = interleave(demo_mix(50, seed=0, sources=sources), threads=2, lanes=2)
    write_bodies(per_thread, tmp_path / "b", httpbench._message)
    for i, messages in enumerate(per_thread):
        lines = (tmp_path / f"b.{i}.jsonl").read_text(encoding="utf-8").splitlines()
        assert [json.loads(line) for line in lines] == [
            {"conversation_id": m.conversation_id, "text": m.text} for m in messages
        ]
        assert all(line.startswith('{"conversation_id":"') for line in lines)  # what the Lua renames


# ------------------------------------------------------------------------------------------ wrk's figures

WRK_STDOUT = """Running 2s test @ http://127.0.0.1:40123/v1/match
  2 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    12.34ms    3.01ms  88.20ms   73.11%
    Req/Sec   640.12    101.55     0.90k    70.00%
  2560 requests in 2.00s, 1.23MB read
  Socket errors: connect 0, read 1, write 0, timeout 2
  Non-2xx or 3xx responses: 3
Requests/sec:   1280.00
Transfer/sec:    625.21KB
KEFU_WRK {"duration_us":2000000,"requests":2560,"bytes":1289748,"errors":{"connect":0,"read":1,"write":0,\
"timeout":2,"status":3},"non2xx":3,"statuses":{"503":2,"429":1},\
"first_error":"503 {\\"detail\\":\\"no model\\"}","passes":1,\
"latency_us":{"p50":11800.0,"p95":19000.5,"p99":31000.0,"max":88200.0,"mean":12340.0}}
"""


def test_the_figures_are_read_from_the_json_line_of_done() -> None:
    r = parse_wrk_output(WRK_STDOUT)
    assert r.requests == 2560 and r.seconds == 2.0 and r.req_per_s == 1280.0
    assert (r.p50_ms, r.p95_ms, r.p99_ms, r.max_ms) == (11.8, 19.0005, 31.0, 88.2)
    assert r.statuses == {429: 1, 503: 2} and r.non2xx == 3
    assert r.socket_errors == {"connect": 0, "read": 1, "write": 0, "timeout": 2}
    assert r.errors == 6
    assert r.first_error == '503 {"detail":"no model"}' and r.passes == 1


@pytest.mark.parametrize(
    ("stdout", "problem"),
    [
        ("Running 2s test @ http://127.0.0.1:1/\n  0 requests in 2.00s\n", "printed no KEFU_WRK line"),
        ('KEFU_WRK {"duration_us":1,"requests":', "unreadable wrk figures"),
        ('KEFU_WRK {"duration_us":1,"requests":5}', "unreadable wrk figures"),
    ],
)
def test_output_without_readable_figures_is_an_error_that_shows_it(stdout: str, problem: str) -> None:
    with pytest.raises(BenchError, match=problem):
        parse_wrk_output(stdout)


def test_a_missing_wrk_is_said_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(httpbench.shutil, "which", lambda name: None)
    with pytest.raises(BenchError, match=r"wrk is not installed.*apt-get install -y wrk"):
        find_wrk()
    console = Console(file=io.StringIO(), width=200)
    assert httpbench.main(BenchConfig(scenarios=("hello",)), console) == 2
    assert "wrk is not installed" in console.file.getvalue()  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"scenarios": ("hello", "helo")}, "unknown scenario.*helo"),
        ({"connections": 1, "threads": 2}, "--connections at least --threads"),
        ({"duration": 0}, "--duration must be >= 1"),
        ({"repeat_share": 1.0}, "--repeat-share"),
    ],
)
def test_bad_settings_are_refused_before_anything_starts(changes: dict[str, Any], problem: str) -> None:
    with pytest.raises(BenchError, match=problem):
        BenchConfig(**changes).check()


# ------------------------------------------------------------------------------------------ real runs


def _need_wrk() -> None:
    if shutil.which("wrk") is None:
        problem = "wrk is not installed (make test-tools installs Debian's wrk)"
        if os.environ.get("KEFU_TEST_REQUIRE_BROWSER") == "1":
            pytest.fail(f"KEFU_TEST_REQUIRE_BROWSER=1 but {problem}")
        pytest.skip(problem)


def test_a_short_real_run_of_hello_and_match_fast(fast_matcher: Any, tmp_path: Path) -> None:
    _need_wrk()
    model = fast_matcher.save(tmp_path / "fast-model")
    cfg = BenchConfig(
        scenarios=("hello", "match-fast"),
        duration=2,
        warmup=1,
        mix_size=3000,
        models={"fast": model},
        json_path=tmp_path / "bench.json",
    )
    console = Console(file=io.StringIO(), width=200)
    code = httpbench.main(cfg, console)
    out = console.file.getvalue()  # type: ignore[attr-defined]
    assert code == 0, out
    data = json.loads((tmp_path / "bench.json").read_text(encoding="utf-8"))
    rows = {row["scenario"]: row for row in data["scenarios"]}
    assert list(rows) == ["hello", "match-fast"], out
    for name, row in rows.items():
        assert row["error"] is None, out
        assert row["requests"] > 20 and row["errors"] == 0 and row["statuses"] == {}, (name, row)
        assert 0 < row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"] <= row["max_ms"], (name, row)
        assert row["req_per_s"] == pytest.approx(row["requests"] / row["seconds"], rel=0.01)
        assert f"│ {name} " in out
    assert data["mix"]["messages"] == 3000 and data["settings"]["models"] == {"fast": str(model)}
    assert "no errors" in out and "load average" in out


def test_non_2xx_answers_are_counted_by_status_and_shown_in_red(sources: MixSources, tmp_path: Path) -> None:
    _need_wrk()
    cfg = BenchConfig(duration=1, warmup=0)
    per_thread = interleave(demo_mix(200, seed=0, sources=sources), cfg.threads, lanes=8)
    write_bodies(per_thread, tmp_path / "bad", lambda m: {"txt": m.text})  # the hello app wants "text"
    script = tmp_path / "bench.lua"
    script.write_text(LUA, encoding="utf-8")
    with hello_target(cfg, tmp_path, lambda line: None) as target:
        r = run_wrk(find_wrk(), target.url, {"X-Bench": "1"}, tmp_path / "bad", script, 1, cfg)
    assert r.requests > 0 and r.non2xx == r.requests and r.statuses == {422: r.requests}, r
    assert r.first_error.startswith('422 {"detail":[{"type":"missing"'), r.first_error  # escaped, read back
    assert r.passes >= 1  # 100 bodies a thread: sent again

    console = Console(file=io.StringIO(), width=200, force_terminal=True, color_system="standard")
    print_report(BenchReport([ScenarioResult("hello", r)]), cfg, console)
    out = console.file.getvalue()  # type: ignore[attr-defined]
    assert f"422×{r.requests}" in out
    assert re.search(r"\x1b\[1;31m(the run had errors|hello: \d+ errors)", out), out
