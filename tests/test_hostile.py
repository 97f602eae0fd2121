"""`kefu hostile` at a small scale: two real uvicorn workers, every hostile request answered 4xx.

The payloads are 1% of the issue's sizes and the server's limits are lowered to match, so each request
still crosses the limit it is meant to cross. Latency and RSS are measured and printed but their bars are
not asserted here (a shared CI machine's timing is not a property of the code); the full-scale run is
`kefu hostile`.
"""

from __future__ import annotations

from training.hostile import HostileConfig, run

EXPECTED = {
    "control: the demo KB": 200,
    "xlsx 4,250 rows, 1 MB XML": 413,  # over KEFU_KB_MAX_INFLATED_BYTES (declared sizes)
    "xlsx 4,250 short rows": 413,  # over KEFU_KB_MAX_ROWS
    "xlsx, sizes understated": 422,  # damaged file
    "csv 2,000 rows": 413,
    "json KB, [ x 200,000": 422,
    "KB upload of 2 MB": 413,  # over KEFU_KB_MAX_UPLOAD_BYTES, refused on Content-Length
    "JD push, 2 MB JSON": 413,
    "JD push, 2 MB JSON chunked": 413,
    "JD push, [ x 200,000": 400,
    "JD push, multipart file part": 400,
}


def test_hostile_requests_against_two_workers_are_all_refused_cleanly() -> None:
    lines: list[str] = []
    cfg = HostileConfig(
        scale=0.01,
        healthz_p99_ms=float("inf"),
        rss_ceiling_mb=float("inf"),
        idle_seconds=0.5,
        startup_timeout=120,
        server_env={
            "KEFU_KB_MAX_ROWS": "1000",
            "KEFU_KB_MAX_INFLATED_BYTES": str(512 * 1024),
            "KEFU_KB_MAX_UPLOAD_BYTES": str(1024 * 1024),
        },
    )
    report = run(cfg, say=lines.append)
    output = "\n".join(lines)
    assert {o.name: o.status for o in report.outcomes} == EXPECTED, output
    assert report.tracebacks == 0 and not report.log_errors, output
    assert len(report.healthz_ms) == 2 and all(report.healthz_ms.values()), output
    assert not any(report.healthz_errors.values()), output
    assert report.ok and lines[-1] == "verdict: OK", output
    assert "p99" in output and "peak" in output
