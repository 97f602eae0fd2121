"""`kefu loadtest --publishers` (training/buildload.py) end to end on a tiny KB: a real uvicorn server, real
HTTP traffic, and with `build_worker` a real `kefu worker` process that builds every version instead of
the serving processes."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.procs import running
from tests.test_service import kb_csv
from training.buildload import (
    BuildLoadConfig,
    Burners,
    Phase,
    app_seconds,
    by_stage,
    p99_ratio_interval,
    place_stalls,
    pooled,
    round_kb,
    run,
    slowest,
    steal_seconds,
    timings,
)
from training.loadtest import LoadTestError, process_tree_cpu_seconds


@pytest.mark.parametrize(
    ("build_worker", "split_cpus", "rounds"),
    [(False, False, 1), (True, False, 2), (True, True, 1)],
    ids=["in-servers", "kefu-worker-two-rounds", "kefu-worker-own-cpus"],
)
def test_publishers_build_where_the_deployment_says_and_serving_goes_on(
    tmp_path: Path, build_worker: bool, split_cpus: bool, rounds: int
) -> None:
    if split_cpus and len(os.sched_getaffinity(0)) < 2:
        pytest.skip("serving and builds on CPUs of their own needs at least 2 CPUs")
    kb = tmp_path / "kb.csv"
    kb.write_bytes(kb_csv())
    cfg = BuildLoadConfig(
        publishers=2,
        idle=1.0,
        rate=5.0,
        clients=2,
        workers=1,
        kb=kb,
        build_worker=build_worker,
        control=True,
        burners=1,
        split_cpus=split_cpus,
        rounds=rounds,
    )
    before = os.sched_getaffinity(0)
    phases, outcome = run(cfg, say=lambda s: None)
    assert os.sched_getaffinity(0) == before  # the clients' pinning is undone
    if rounds == 1:
        names = ["idle", "2 shops building", "idle again"]
    else:
        names = ["idle"] + [f"{p} (round {n})" for n in (1, 2) for p in ("2 shops building", "idle again")]
    assert [p.name for p in phases] == [*names, "control: 1 CPU burners"]
    assert phases[-1].seconds >= max(p.seconds for p in phases if "building" in p.name) - 0.5
    assert all(p.latencies and p.errors == 0 for p in phases)
    # each message's send time, within its phase: where the slow ones fall
    assert all(len(p.sent) == len(p.latencies) for p in phases)
    assert all(0 <= at <= p.seconds for p in phases for at in p.sent)
    # and how long the app held each (Server-Timing): some of the latency, never more
    assert all(len(p.inside) == len(p.latencies) for p in phases)
    assert all(0 < held <= took for p in phases for held, took in zip(p.inside, p.latencies, strict=True))
    # the serving processes' CPU time is read per phase: they answered messages in each
    if Path("/proc/self/stat").exists():
        assert all(p.serving_cpu > 0 and p.cpu_ms_per_message() > 0 for p in phases)
    # every round built a new version of each publishing shop (the later rounds' KB has one more entry)
    assert sorted(outcome["rows"]) == sorted(f"pub-{i}#{n}" for i in range(2) for n in range(1, rounds + 1))
    assert {row["status"] for row in outcome["rows"].values()} == {"ready"}
    assert len({row["version"] for row in outcome["rows"].values()}) == rounds
    assert len(outcome["seconds"]) == rounds
    assert outcome["errors_logged"] == 0
    # the served shop's first build and each round's publishes: all where the deployment puts them
    builds = 1 + 2 * rounds
    if build_worker:
        assert outcome["builds_logged"] == {"server": 0, "worker": builds}
    else:
        assert outcome["builds_logged"] == {"server": builds}
    if split_cpus:  # serving on the first half of the CPUs, the worker and its builds on the rest
        cpus = sorted(before)
        half = len(cpus) // 2
        serve, build = ",".join(map(str, cpus[:half])), ",".join(map(str, cpus[half:]))
        assert outcome["cpus_logged"] == {
            "server": [f"{serve} (KEFU_SERVE_CPUS)"],
            "worker": [f"{build} (KEFU_BUILD_CPUS)"],
        }
        # the publishing clients (merchants elsewhere) run beside the builds, not beside serving
        assert outcome["publish_cpus"] == cpus[half:]
    else:
        assert outcome["cpus_logged"] == {name: [] for name in outcome["builds_logged"]}
    # the merchants publish from a process of their own, not from threads beside the measuring clients
    assert outcome["publish_pid"] != os.getpid()


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="SCHED_IDLE is Linux only")
def test_control_burners_run_at_a_builds_priority_and_stop(tmp_path: Path) -> None:
    """The control phase's neighbours: CPU-bound, nice 19 and SCHED_IDLE like a build, gone afterwards."""
    with Burners(2, tmp_path / "burners.log") as burners:
        pids = [p.pid for p in burners.procs]
        assert all(os.sched_getscheduler(pid) == os.SCHED_IDLE for pid in pids)
        assert all(os.getpriority(os.PRIO_PROCESS, pid) == 19 for pid in pids)
        before = [process_tree_cpu_seconds(pid, depth=0) for pid in pids]
        time.sleep(0.5)
        after = [process_tree_cpu_seconds(pid, depth=0) for pid in pids]
        assert all(a > b for a, b in zip(after, before, strict=True))  # burning
    assert burners.procs == []
    for pid in pids:
        assert not running(pid)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs at least 2 CPUs to pin to one")
def test_control_burners_run_on_the_builds_cpus_when_given(tmp_path: Path) -> None:
    last = max(os.sched_getaffinity(0))
    with Burners(1, tmp_path / "burners.log", cpus=(last,)) as burners:
        assert [os.sched_getaffinity(p.pid) for p in burners.procs] == [{last}]


def test_the_p99_ratio_interval_holds_an_equal_tail_and_excludes_a_doubled_one() -> None:
    rng = np.random.default_rng(3)
    idle = [list(rng.gamma(4.0, 2.0, 1800)), list(rng.gamma(4.0, 2.0, 1800))]
    same = [list(rng.gamma(4.0, 2.0, 1800))]
    lo, hi = p99_ratio_interval(same, idle, block=20)
    assert lo < 1.0 < hi and hi - lo < 0.4
    doubled = [list(2.0 * rng.gamma(4.0, 2.0, 1800))]
    lo, hi = p99_ratio_interval(doubled, idle, block=20)
    assert 1.2 < lo < 2.0 < hi
    # a burst of slow messages counts as one event, not as many independent ones: wider than one by one
    bursty = [list(np.r_[rng.gamma(4.0, 2.0, 1780), np.full(20, 60.0)])]
    lo_b, hi_b = p99_ratio_interval(bursty, idle, block=20)
    lo_1, hi_1 = p99_ratio_interval(bursty, idle, block=1)
    assert hi_b - lo_b > hi_1 - lo_1
    assert np.isnan(p99_ratio_interval([], idle, block=20)).all()  # no building messages: no interval


def test_a_round_kb_adds_one_entry_and_keeps_the_rest(tmp_path: Path) -> None:
    data = "\ufeffid,question,similar,answer\nq1,包邮吗,,包邮\n".encode()
    out = round_kb(data, 3).decode("utf-8")
    lines = out.splitlines()
    assert lines[:2] == ["id,question,similar,answer", "q1,包邮吗,,包邮"]
    assert lines[2].startswith("loadtest-round-3,") and len(lines) == 3
    assert round_kb(data, 2) != round_kb(data, 3)
    with pytest.raises(LoadTestError, match="id and question"):
        round_kb(b"a,b\n1,2\n", 2)


def test_the_slowest_messages_are_listed_slowest_first_with_their_phase_and_time() -> None:
    a = Phase("building (round 1)", latencies=[0.005, 0.116, 0.006], sent=[3.0, 0.2, 9.5])
    b = Phase("building (round 2)", latencies=[0.077, 0.004], sent=[0.3, 1.0])
    assert slowest([a, b], 2) == (
        "slowest messages while building: 116 ms at 0.2 s of building (round 1); "
        "77 ms at 0.3 s of building (round 2)"
    )
    assert slowest([Phase("building")], 3) == "slowest messages while building: none"


_LAUNCH = "import subprocess, sys; subprocess.run(sys.argv[1:])"
_GRANDCHILD = """
import sys, time
t = time.process_time()
while time.process_time() - t < 0.5:
    pass
open(sys.argv[1], "w").close()
time.sleep(60)
"""


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads Linux's /proc")
def test_a_process_trees_cpu_time_counts_its_live_descendants(tmp_path: Path) -> None:
    done = tmp_path / "burnt"
    parent = subprocess.Popen(
        [
            *(sys.executable, "-c", _LAUNCH),  # the parent
            *(sys.executable, "-c", _LAUNCH),  # its child
            *(sys.executable, "-c", _GRANDCHILD, str(done)),
        ],
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not done.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert done.exists()
        # the grandchild's 0.5 s of CPU, which the parent (waiting) does not have in its own counters
        assert process_tree_cpu_seconds(parent.pid) >= 0.45
        assert process_tree_cpu_seconds(parent.pid, depth=2) >= 0.45
        # the parent and its child (depth 1), not the child's child
        assert process_tree_cpu_seconds(parent.pid, depth=1) < 0.3
    finally:
        os.killpg(parent.pid, signal.SIGKILL)
        parent.wait()
    assert np.isnan(process_tree_cpu_seconds(parent.pid))  # gone: nan, not 0


def test_the_apps_time_is_read_from_server_timing() -> None:
    assert app_seconds("app;dur=12.5") == pytest.approx(0.0125)
    assert app_seconds("db;dur=3, app;dur=7") == pytest.approx(0.007)
    assert math.isnan(app_seconds(None)) and math.isnan(app_seconds("db;dur=3"))
    held = Phase("p", latencies=[0.01, 0.02, 0.03], timings=[{"app": 0.004}, {}, {"app": 0.006}])
    assert held.inside_pct(50) == pytest.approx(5.0)
    assert math.isnan(Phase("none").inside_pct(99))


def test_a_turns_stages_are_read_from_server_timing_and_compared() -> None:
    got = timings("app;dur=9.50, match;dur=2.25, state;dur=1.00, turn;dur=4.00")
    assert got == pytest.approx(
        {"app": 0.0095, "match": 0.00225, "state": 0.001, "turn": 0.004, "outside turn": 0.0055}
    )
    assert timings("app;dur=3") == {"app": 0.003} and timings(None) == {}

    # the slowest 1% of the building messages held their extra time in `state`; idle's did not
    def phase(slow: dict[str, float]) -> Phase:
        fast = {"app": 0.004, "turn": 0.003, "state": 0.001, "match": 0.001, "outside turn": 0.001}
        return Phase("p", latencies=[0.005] * 99 + [0.03], timings=[fast] * 99 + [slow])

    building = phase({"app": 0.025, "turn": 0.024, "state": 0.02, "match": 0.002, "outside turn": 0.001})
    idle = phase({"app": 0.009, "turn": 0.004, "state": 0.001, "match": 0.002, "outside turn": 0.005})
    line = by_stage(pooled("b", [building]), pooled("i", [idle]))
    assert "app 25.0 / 9.0" in line and "state 20.0 / 1.0" in line and "outside turn 1.0 / 5.0" in line
    old = Phase("p", latencies=[0.01], timings=[{"app": 0.004}])
    assert by_stage(old, old).endswith("has no stages")


def test_logged_loop_stalls_are_placed_in_their_phase() -> None:
    """The serving log's "event loop N ms late" warnings land in the phase whose wall-clock span holds
    them; other lines, and stalls outside every phase (start-up), are left out."""
    from datetime import datetime

    def at(text: str) -> float:
        return datetime.strptime(text, "%Y-%m-%d %H:%M:%S,%f").timestamp()

    idle = Phase("idle", started=at("2026-12-06 10:00:00,000"), ended=at("2026-12-06 10:00:30,000"))
    build = Phase("building", started=at("2026-12-06 10:00:30,500"), ended=at("2026-12-06 10:01:00,000"))
    late = "WARNING kefu.api: event loop {} ms late: every request of this process waited as long"
    place_stalls(
        [idle, build],
        [
            f"2026-12-06 09:59:59,000 {late.format(300)}",  # start-up: no phase
            f"2026-12-06 10:00:12,250 {late.format(14)}",
            "2026-12-06 10:00:40,000 INFO kefu.api: event loop 99 ms late",  # not the warning
            f"2026-12-06 10:00:31,000 {late.format(23)}",
            f"2026-12-06 10:00:59,999 {late.format(11)}",
        ],
    )
    assert idle.stalls == [14.0] and build.stalls == [23.0, 11.0]


def test_the_hosts_steal_time_is_read_per_cpu(tmp_path: Path) -> None:
    """/proc/stat's 8th value of each cpuN line, in seconds, for the CPUs asked (all when none); the
    machine-wide `cpu` line is not counted twice; nan where there is no such file."""
    stat = tmp_path / "stat"
    stat.write_text(
        "cpu  100 0 50 900 5 0 2 70 0 0\n"
        "cpu0 50 0 25 450 2 0 1 30 0 0\n"
        "cpu1 50 0 25 450 3 0 1 40 0 0\n"
        "intr 12345 0 0\n"
        "ctxt 999\n"
    )
    hz = os.sysconf("SC_CLK_TCK")
    assert steal_seconds((0,), str(stat)) == pytest.approx(30 / hz)
    assert steal_seconds((1,), str(stat)) == pytest.approx(40 / hz)
    assert steal_seconds((), str(stat)) == pytest.approx(70 / hz)
    assert math.isnan(steal_seconds((), str(tmp_path / "missing")))
    phase = Phase("p", seconds=2.0, steal=0.05)
    assert phase.steal_ms_per_second() == pytest.approx(25.0)
