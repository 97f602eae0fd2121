"""Time and peak memory of api.store.traffic.traffic_figures over a 92-day period of generated exchanges.

Not a test (pytest does not collect it): the figures quoted in api/store/traffic.py's docstring come from

    python -m tests.bench_traffic sqlite:////tmp/traffic-bench.db 200000
    python -m tests.bench_traffic postgresql+psycopg://postgres@127.0.0.1:5432/SCRATCH_DB 200000

The database's tables are dropped and created again: give it a scratch database.
"""

from __future__ import annotations

import random
import sys
import time
import tracemalloc
from datetime import UTC, datetime, timedelta

from sqlalchemy import create_engine, insert
from sqlalchemy.orm import Session

from api.db.models import Base, Exchange, Shop
from api.store.traffic import traffic_figures

DAYS = 92


def main(url: str, n: int) -> None:
    engine = create_engine(url)
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    start = datetime(2025, 1, 1, tzinfo=UTC)
    rng = random.Random(0)
    spacing = DAYS * 86400 / n
    kinds = ["answer"] * 6 + ["clarify", "handoff", "smalltalk"]
    with Session(engine) as s:
        s.add(Shop(id="s", api_key_hash="x"))
        s.commit()
        for lo in range(0, n, 50_000):
            rows = []
            for i in range(lo, min(n, lo + 50_000)):
                decision = rng.choice(kinds)
                rows.append(
                    {
                        "shop_id": "s",
                        "conversation_id": f"c{i // 5}",
                        "channel": "api",
                        "text_masked": f"问题{i % 500}",
                        "decision": decision,
                        "entry_id": f"e{i % 50}" if decision == "answer" else None,
                        "confidence": rng.random(),
                        "reason": "3 misses in a row (x)" if decision == "handoff" else "ok",
                        "latency_ms": rng.random() * 50,
                        "created_at": start + timedelta(seconds=i * spacing),
                    }
                )
            s.execute(insert(Exchange), rows)
            s.commit()
    for bucket in ("day", "hour"):
        with Session(engine) as s:
            t0 = time.perf_counter()
            out = traffic_figures(s, "s", start, start + timedelta(days=DAYS), bucket)
            seconds = time.perf_counter() - t0
        with Session(engine) as s:
            tracemalloc.start()
            traffic_figures(s, "s", start, start + timedelta(days=DAYS), bucket)
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        print(
            f"{engine.dialect.name}: {n} exchanges over {DAYS} days per {bucket} ({len(out['series'])} "
            f"buckets): {seconds:.2f} s, peak traced memory {peak / 1e6:.1f} MB"
        )


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
