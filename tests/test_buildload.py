"""`kefu loadtest --publishers` (training/buildload.py) end to end on a tiny KB: a real uvicorn server, real
HTTP traffic, and with `build_worker` a real `kefu worker` process that builds every version instead of
the serving processes."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.test_service import kb_csv
from training.buildload import BuildLoadConfig, Burners, run


@pytest.mark.parametrize(
    ("build_worker", "split_cpus"),
    [(False, False), (True, False), (True, True)],
    ids=["in-servers", "kefu-worker", "kefu-worker-own-cpus"],
)
def test_publishers_build_where_the_deployment_says_and_serving_goes_on(
    tmp_path: Path, build_worker: bool, split_cpus: bool
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
    )
    before = os.sched_getaffinity(0)
    phases, outcome = run(cfg, say=lambda s: None)
    assert os.sched_getaffinity(0) == before  # the clients' pinning is undone
    assert [p.name for p in phases] == ["idle", "2 shops building", "idle again", "control: 1 CPU burners"]
    assert phases[3].seconds >= phases[1].seconds - 0.5  # as long as the builds took
    assert all(p.latencies and p.errors == 0 for p in phases)
    assert {row["status"] for row in outcome["rows"].values()} == {"ready"}
    assert outcome["errors_logged"] == 0
    # the served shop's first build and the two publishes: all where the deployment puts them
    if build_worker:
        assert outcome["builds_logged"] == {"server": 0, "worker": 3}
    else:
        assert outcome["builds_logged"] == {"server": 3}
    if split_cpus:  # serving on the first half of the CPUs, the worker and its builds on the rest
        cpus = sorted(before)
        half = len(cpus) // 2
        serve, build = ",".join(map(str, cpus[:half])), ",".join(map(str, cpus[half:]))
        assert outcome["cpus_logged"] == {
            "server": [f"{serve} (KEFU_SERVE_CPUS)"],
            "worker": [f"{build} (KEFU_BUILD_CPUS)"],
        }
    else:
        assert outcome["cpus_logged"] == {name: [] for name in outcome["builds_logged"]}


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="SCHED_IDLE is Linux only")
def test_control_burners_run_at_a_builds_priority_and_stop(tmp_path: Path) -> None:
    """The control phase's neighbours: CPU-bound, nice 19 and SCHED_IDLE like a build, gone afterwards."""
    with Burners(2, tmp_path / "burners.log") as burners:
        pids = [p.pid for p in burners.procs]
        assert all(os.sched_getscheduler(pid) == os.SCHED_IDLE for pid in pids)
        assert all(os.getpriority(os.PRIO_PROCESS, pid) == 19 for pid in pids)
        before = [_cpu_seconds(pid) for pid in pids]
        time.sleep(0.5)
        assert all(_cpu_seconds(pid) > b for pid, b in zip(pids, before, strict=True))  # burning
    assert burners.procs == []
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or _state(pid) == "Z"


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs at least 2 CPUs to pin to one")
def test_control_burners_run_on_the_builds_cpus_when_given(tmp_path: Path) -> None:
    last = max(os.sched_getaffinity(0))
    with Burners(1, tmp_path / "burners.log", cpus=(last,)) as burners:
        assert [os.sched_getaffinity(p.pid) for p in burners.procs] == [{last}]


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
