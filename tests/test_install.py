"""What the Makefile installs: `make run` the runtime, `make test` the test tools, the backend on demand."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def installs(target: str, venv: Path, *args: str) -> list[str]:
    """The `pip install -e ...` requirement each step of `make -n TARGET` would install, in order."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    # under `make test WITH_ST=1` (CI) the variable reaches every make started below it, both as itself
    # and in MAKEFLAGS: the make run here sees only what this test passes
    dropped = ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "WITH_ST")
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    out = subprocess.run(
        ["make", "-n", "-C", str(ROOT), target, f"VENV={venv}", *args],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    ).stdout
    return [m.strip("'\"") for m in re.findall(r"pip install -q -e (\S+)", out)]


def test_make_run_installs_the_runtime_only(tmp_path: Path) -> None:
    assert installs("run", tmp_path / "venv") == ["."]


def test_make_test_adds_the_dev_extra_and_the_backend_only_when_asked(tmp_path: Path) -> None:
    assert installs("test", tmp_path / "venv") == [".", ".[dev]"]
    assert installs("test", tmp_path / "venv", "WITH_ST=1") == [".", ".[dev,st]"]


def test_ci_installs_the_backend_and_requires_its_tests() -> None:
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert re.search(r"^export KEFU_TEST_REQUIRE_ST=1$", ci, re.M)
    assert re.search(r"^make test WITH_ST=1$", ci, re.M)


def test_make_test_installs_chromium_and_wrk_when_missing_and_ci_requires_their_tests() -> None:
    """The console's browser tests use Debian's Chromium, `kefu bench-http`'s test Debian's wrk: `make test`
    installs them with apt-get when /usr/bin/chromium, the CJK font of the screenshots or /usr/bin/wrk is
    missing; CI fails rather than skips those tests (KEFU_TEST_REQUIRE_BROWSER covers both)."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    out = subprocess.run(
        ["make", "-n", "-C", str(ROOT), "test", "VENV=/nonexistent"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "test -x /usr/bin/chromium" in out and "test -x /usr/bin/wrk" in out
    assert "apt-get install -y -qq chromium fonts-wqy-microhei wrk" in out
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert re.search(r"^export KEFU_TEST_REQUIRE_BROWSER=1$", ci, re.M)
