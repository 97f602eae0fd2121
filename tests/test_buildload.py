"""`kefu loadtest --publishers` (training/buildload.py) end to end on a tiny KB: a real uvicorn server, real
HTTP traffic, and with `build_worker` a real `kefu worker` process that builds every version instead of
the serving processes."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_service import kb_csv
from training.buildload import BuildLoadConfig, run


@pytest.mark.parametrize("build_worker", [False, True], ids=["in-servers", "kefu-worker"])
def test_publishers_build_where_the_deployment_says_and_serving_goes_on(
    tmp_path: Path, build_worker: bool
) -> None:
    kb = tmp_path / "kb.csv"
    kb.write_bytes(kb_csv())
    cfg = BuildLoadConfig(
        publishers=2, idle=1.0, rate=5.0, clients=2, workers=1, kb=kb, build_worker=build_worker
    )
    phases, outcome = run(cfg, say=lambda s: None)
    assert [p.name for p in phases] == ["idle", "2 shops building", "idle again"]
    assert all(p.latencies and p.errors == 0 for p in phases)
    assert {row["status"] for row in outcome["rows"].values()} == {"ready"}
    assert outcome["errors_logged"] == 0
    # the served shop's first build and the two publishes: all where the deployment puts them
    if build_worker:
        assert outcome["builds_logged"] == {"server": 0, "worker": 3}
    else:
        assert outcome["builds_logged"] == {"server": 3}
