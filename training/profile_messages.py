"""Where one `/v1/shops/{shop}/messages` request's time goes, inside the app (issue 9 part 1).

`python -m training.profile_messages [--n 500] [--dense] [--database-url URL] [--redis-url URL]` builds
the demo shop in a fresh service (SQLite + in-process state by default), sends `n` messages of the
demo mix through the ASGI app in process (Starlette's TestClient: no socket, no HTTP server; the server's
own share is what `kefu bench-http`'s hello scenario measures), under cProfile, and prints the mean time
per request of each stage: the functions below, cumulative (a stage's callees are inside it).
"""

from __future__ import annotations

import argparse
import cProfile
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

# (label, module path fragment, function name): cumulative time of each, per request
STAGES: tuple[tuple[str, str, str], ...] = (
    ("auth: API key -> shop (cached for KEFU_LOOKUP_CACHE_SECONDS)", "api/web/deps.py", "require_turn_shop"),
    ("  database lookup (a miss)", "api/web/deps.py", "_lookup"),
    ("rate limit checks (client and shop, one call)", "api/web/ratelimit.py", "check_all"),
    ("route handler (everything below)", "api/routes/messages.py", "message"),
    ("handle_message (all below)", "api/dialog/handle.py", "handle_message"),
    ("  served model lookup", "api/service.py", "served"),
    ("  the shop's catalog (skills)", "api/dialog/handle.py", "_skills"),
    ("    catalog revision read (a miss)", "api/catalog/repo.py", "revision"),
    ("  agent tasks", "api/dialog/handle.py", "_raise_tasks"),
    ("  conversation state: load", "api/dialog/conversation.py", "load_versioned"),
    ("  conversation state: save", "api/dialog/conversation.py", "save_if"),
    ("  conversation policy step (matching inside)", "api/dialog/conversation.py", "step"),
    ("    Matcher.match", "engine/matcher.py", "match"),
    ("      normalize", "engine/normalize.py", "normalize"),
    ("      vectorize (tokenize, sparse, encode)", "engine/matcher.py", "_vectorize"),
    ("        sentence encoder", "engine/embed.py", "encode_one"),
    ("      rank (channels, fusion)", "engine/matcher.py", "rank"),
    ("    catalog skill", "api/catalog/skill.py", "respond"),
    ("  PII masking (all calls)", "api/dialog/privacy.py", "mask_pii"),
    ("  exchange log (buffered)", "api/store/exchange_log.py", "log"),
    ("  metrics (record_reply)", "api/metrics.py", "record_reply"),
    ("response model serialization", "fastapi/routing.py", "serialize_response"),
)


def _stage_times(before: dict[Any, Any], after: dict[Any, Any], n: int) -> list[tuple[str, float, int]]:
    out = []
    for label, path, name in STAGES:
        total, calls = 0.0, 0
        for key, (_cc, nc, _tt, ct, _callers) in after.items():
            filename, _line, func = key
            if func == name and filename.replace("\\", "/").endswith(path):
                prev = before.get(key)
                total += ct - (prev[3] if prev else 0.0)
                calls += nc - (prev[1] if prev else 0)
        out.append((label, 1000 * total / n, calls))
    return out


class _AllThreads:
    """cProfile in every thread started after `start()` (the app runs in TestClient's portal thread and
    sync routes in its worker threads, not in the caller's)."""

    def __init__(self) -> None:
        self.profiles: list[cProfile.Profile] = []

    def start(self) -> None:
        def begin(*_: Any) -> None:
            sys.setprofile(None)
            p = cProfile.Profile()
            self.profiles.append(p)
            p.enable()

        threading.setprofile(begin)
        main = cProfile.Profile()
        self.profiles.append(main)
        main.enable()

    def snapshot(self) -> dict[Any, Any]:
        merged: dict[Any, Any] = {}
        for p in list(self.profiles):
            p.snapshot_stats()  # type: ignore[attr-defined]
            for key, (cc, nc, tt, ct, callers) in p.stats.items():  # type: ignore[attr-defined]
                m = merged.get(key)
                merged[key] = (
                    (cc, nc, tt, ct, callers)
                    if m is None
                    else (m[0] + cc, m[1] + nc, m[2] + tt, m[3] + ct, callers)
                )
        return merged


def profile(
    n: int,
    dense: bool = False,
    database_url: str | None = None,
    redis_url: str | None = None,
    warm: int = 100,
) -> tuple[float, list[tuple[str, float, int]]]:
    """Send `warm` then `n` messages of the demo mix to a fresh demo shop under cProfile: the client's
    wall seconds per request and, per stage of STAGES, (label, ms per request, calls) over the `n`."""
    from fastapi.testclient import TestClient
    from pydantic import SecretStr

    from api.main import create_app
    from api.settings import Settings
    from training.httpbench import demo_mix, mix_sources

    with tempfile.TemporaryDirectory(prefix="kefu-profile-") as tmp:
        t = Path(tmp)
        settings = Settings(
            database_url=database_url or f"sqlite:///{t}/kefu.db",
            redis_url=redis_url,
            redis_prefix=f"kefu-profile-{time.time_ns()}:",
            data_dir=t / "data",
            admin_token=SecretStr("profile-admin"),
            dense=dense,
            kb_path=None,
            model_path=t / "none",
            evaluation_pull_interval=0,
            rate_limit_shop="1000000/second",
            rate_limit_client="1000000/second",
            build_in_process=True,
        )
        messages = demo_mix(n + warm, seed=0, sources=mix_sources())
        prof = _AllThreads()
        prof.start()
        with TestClient(create_app(settings)) as c:
            admin = {"X-Admin-Token": "profile-admin"}
            key = {
                "X-API-Key": c.post(
                    "/v1/admin/shops", json={"id": "demo", "name": "demo"}, headers=admin
                ).json()["api_key"]
            }
            kb = Path(__file__).resolve().parents[1] / "models" / "demo-shop-kb.csv"
            r = c.post(
                "/v1/shops/demo/kb?publish=true", headers=key, files={"file": ("kb.csv", kb.read_bytes())}
            )
            r.raise_for_status()
            version = r.json()["version"]
            deadline = time.monotonic() + 900
            while c.get("/v1/shops/demo", headers=key).json()["served_version"] != version:
                if time.monotonic() > deadline:
                    raise SystemExit("the demo shop's model was not served within 15 minutes")
                c.post(
                    "/v1/shops/demo/messages", headers=key, json={"conversation_id": "warm", "text": "你好"}
                )
                time.sleep(0.5)

            def send(m: Any) -> None:
                body = {"conversation_id": m.conversation_id, "text": m.text}
                c.post("/v1/shops/demo/messages", headers=key, json=body).raise_for_status()

            for m in messages[:warm]:
                send(m)
            before = prof.snapshot()
            t0 = time.perf_counter()
            for m in messages[warm:]:
                send(m)
            wall = time.perf_counter() - t0
            after = prof.snapshot()
        threading.setprofile(None)
        sys.setprofile(None)
    return wall / n, _stage_times(before, after, n)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=500, help="messages profiled (after 100 unprofiled)")
    ap.add_argument("--dense", action="store_true", help="default channels (sentence encoder on)")
    ap.add_argument("--database-url", default=None)
    ap.add_argument("--redis-url", default=None)
    args = ap.parse_args(argv)

    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False)
    wall, stages = profile(args.n, args.dense, args.database_url, args.redis_url)
    table = Table(
        title=f"/v1/shops/demo/messages in process, {args.n} messages, "
        f"{'default' if args.dense else 'fast'} profile, cProfile on"
    )
    table.add_column("stage")
    table.add_column("ms / request", justify="right")
    table.add_column("calls", justify="right")
    table.add_row("client call (TestClient, in process)", f"{1000 * wall:.2f}", str(args.n))
    for label, ms, calls in stages:
        table.add_row(label, f"{ms:.3f}", str(calls))
    console.print(table)
    console.print(
        "cProfile roughly doubles Python-heavy stages: compare stages with each other, not with wrk's."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
