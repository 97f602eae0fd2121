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


@pytest.mark.parametrize("build_worker", [False, True], ids=["in-servers", "kefu-worker"])
def test_publishers_build_where_the_deployment_says_and_serving_goes_on(
    tmp_path: Path, build_worker: bool
) -> None:
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
    )
    phases, outcome = run(cfg, say=lambda s: None)
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


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
