"""A short run of `kefu loadtest`: two uvicorn workers on PostgreSQL + Redis, the KB republished under load.

The shop's KB is a 12-entry slice of the demo KB so each version builds in well under a second (the whole
demo KB takes ~20 s per build): versions must be built, swapped in on both workers and served within 8 s.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from engine.kb import KBEntry, load_kb
from training.loadtest import LoadConfig, _legacy_kb, run


def small_kb(src: Path, dest: Path, n: int = 12) -> Path:
    entries = [e for e in load_kb(src) if e.enabled and not e.valid_from and not e.valid_to][:n]
    with dest.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "question", "similar", "answer"])
        for e in entries:
            w.writerow([e.id, e.question, "|".join(e.similar), e.answer])
    return dest


def test_legacy_kb_quotes_formula_cells_and_loads_back(tmp_path: Path) -> None:
    entries = [KBEntry("=1", "'=2 是什么", "-3元", ("@4 呢",)), KBEntry("b", "+5", "'+6")]
    (tmp_path / "kb.json").write_text(json.dumps([e.to_dict() for e in entries]), encoding="utf-8")
    legacy = _legacy_kb(tmp_path / "kb.json", tmp_path / "legacy.csv")
    cells = [cell for row in csv.reader(legacy.open(encoding="utf-8", newline="")) for cell in row]
    assert not [cell for cell in cells if cell[:1] in ("=", "+", "-", "@")]
    assert load_kb(legacy) == entries


def test_hot_swaps_under_load_on_two_workers(
    pg_admin_url: str, redis_url: str, demo_kb: Path, tmp_path: Path
) -> None:
    lines: list[str] = []
    cfg = LoadConfig(
        duration=60,
        concurrency=2,
        every=2,
        kb=small_kb(demo_kb, tmp_path / "kb.csv"),
        pg_url=pg_admin_url,
        redis_url=redis_url,
        min_versions=2,
        ready_timeout=60,
        startup_timeout=60,
    )
    report = run(cfg, say=lines.append)
    output = "\n".join(lines)
    assert report.failures == [], output
    assert not report.problems, output
    assert report.replies, output
    assert len(report.served) >= 2, output
    assert all(report.statuses[v] == "ready" for v in report.served), output
    assert report.ok and output.rstrip().splitlines()[-2].endswith("OK"), output
    assert report.metrics["decisions_sum"] == len(report.replies) + report.ready_messages, output
