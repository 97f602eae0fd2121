"""KEFU_SERVE_CPUS / KEFU_BUILD_CPUS (api/cpu_affinity.py): the lists are read strictly, and each process
Kefu starts lands on the CPUs it was given: serving's app, a build child from its first instruction, and
the caller keeps its own CPUs."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from api.cpu_affinity import parse_cpus
from api.kb.build_child import start_lowered
from api.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
CPUS = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
needs_two = pytest.mark.skipif(
    len(CPUS) < 2, reason="pinning to a subset of the CPUs needs Linux affinity and at least 2 CPUs"
)


def test_cpu_lists_are_read_as_linux_writes_them() -> None:
    n = os.cpu_count() or 1
    assert parse_cpus("") == ()
    assert parse_cpus(" 0 ") == (0,)
    assert parse_cpus(f"0-{n - 1}") == tuple(range(n))
    assert parse_cpus(f"{n - 1},0,0-0") == tuple(sorted({0, n - 1}))


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("one", "'one' is not a CPU number or range"),
        ("0,,1", "'' is not a CPU number or range"),
        ("1-0", "'1-0' is not a range of CPUs"),
        ("-1", "'-1' is not a CPU number or range"),
        ("999", "CPU 999 does not exist: this machine has CPUs 0-"),
        ("0-999", "CPU 999 does not exist"),
    ],
)
def test_a_bad_cpu_list_is_refused_saying_what_is_wrong(spec: str, says: str) -> None:
    with pytest.raises(ValueError, match=says.replace("(", r"\(")):
        parse_cpus(spec)


def test_a_bad_setting_names_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEFU_BUILD_CPUS", "2-x")
    with pytest.raises(ValidationError, match="KEFU_BUILD_CPUS '2-x': '2-x' is not a CPU number"):
        Settings()
    monkeypatch.setenv("KEFU_BUILD_CPUS", "0, 0")
    monkeypatch.setenv("KEFU_SERVE_CPUS", "")
    s = Settings()
    assert (s.build_cpus, s.build_cpu_set, s.serve_cpu_set) == ("0", (0,), ())


def _python(code: str, **env: str) -> str:
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@needs_two
def test_pinning_a_process_moves_the_threads_it_already_runs() -> None:
    last = CPUS[-1]
    code = f"""
import os, threading
from api.cpu_affinity import pin_process
ready, stop = threading.Event(), threading.Event()
t = threading.Thread(target=lambda: (ready.set(), stop.wait()))
t.start(); ready.wait()
assert pin_process({{{last}}})
masks = {{tid: sorted(os.sched_getaffinity(int(tid))) for tid in os.listdir('/proc/self/task')}}
stop.set(); t.join()
print(len(masks), sorted({{tuple(m) for m in masks.values()}}))
"""
    n_threads, masks = _python(code).split(" ", 1)
    assert int(n_threads) >= 2
    assert masks == f"[({last},)]"


@needs_two
def test_the_served_app_runs_on_the_serving_cpus() -> None:
    code = """
import os
from api.main import create_app
from api.settings import Settings
create_app(Settings(), shops_service=False)
print(sorted(os.sched_getaffinity(0)))
"""
    assert _python(code, KEFU_SERVE_CPUS=str(CPUS[0])) == f"[{CPUS[0]}]"
    assert _python(code, KEFU_SERVE_CPUS="") == str(CPUS)  # unset: every CPU it had


def _report_affinity(conn: Any) -> None:
    """A child that only says which CPUs it was born on (it pins nothing itself)."""
    conn.send(sorted(os.sched_getaffinity(0)))
    conn.close()


@needs_two
def test_a_build_child_is_born_on_the_build_cpus_and_the_caller_keeps_its_own() -> None:
    ctx = multiprocessing.get_context("spawn")
    reader, writer = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_report_affinity, args=(writer,))
    before = os.sched_getaffinity(0)
    start_lowered(proc, nice=0, cpu_idle=False, cpus=(CPUS[-1],))
    writer.close()
    assert reader.poll(60)
    assert reader.recv() == [CPUS[-1]]
    proc.join(10)
    assert os.sched_getaffinity(0) == before
