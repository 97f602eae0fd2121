"""kefu bench-shops end to end on a few small shops: a real server, cold and warm replies, evictions."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import shared_set
from training import shopsbench


def test_bench_shops_serves_every_shop_and_evicts_under_a_tiny_budget(tmp_path: Path) -> None:
    cfg = shopsbench.ShopsConfig(
        data_dirs=[shared_set("smp2017")],
        shops=6,
        questions=60,
        distinct=2,
        memory_mb=0.001,  # room for one model: every other shop's message evicts the last one
        random_messages=6,
        work_dir=tmp_path,
    )
    said: list[str] = []
    rep = shopsbench.run(cfg, say=said.append)
    assert rep.errors == 0
    assert rep.cold_ms["n"] == 6 and rep.warm_ms["n"] == 6 and rep.random_ms["n"] == 6
    assert rep.models_loaded_end == 1
    assert rep.evictions >= 5  # the first pass alone evicts five
    assert rep.server_load_ms["n"] >= 6  # every shop loaded at least once, evicted ones again
    assert rep.rss_peak_mb >= rep.rss_start_mb > 0
    assert len(list((tmp_path / "data" / "shops").iterdir())) == 6  # one model directory per shop
    shopsbench.print_report(rep, said.append)
    assert any(s.startswith("bars:") and "cold first reply" in s for s in said)
