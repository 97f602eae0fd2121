"""Runs last: no log line the test suite produced carries personal data.

The suite sends phone numbers, ID numbers, order numbers and e-mail addresses through the API on
purpose (tests/test_service.py, tests/test_api.py); here every line that was logged is searched for
them with detectors independent of the masking code (tests/log_audit.py). Under pytest-xdist this test
audits its own worker's lines, and the controller audits every worker's once all have finished.
"""

from __future__ import annotations

import logging
import os

import pytest

from tests.log_audit import audit, leaks


def test_no_personal_data_in_any_log_line(audit_log):
    for h in logging.getLogger().handlers:
        h.flush()
    lines = audit_log.read_text(encoding="utf-8").splitlines()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # this worker may have run few tests; the controller audits all workers' lines in full at the end
        assert leaks(lines) == []
    else:
        assert audit(lines) == []


@pytest.mark.parametrize(
    ("line", "kind"),
    [
        ("kefu.api INFO customer 13912345678 asked", "mobile"),
        ("kefu.api INFO id 11010519491231002X", "id card"),
        ("kefu.api INFO card 6222020200112233445", "bank card"),
        ("kefu.api INFO mail a.b@example.com", "email"),
    ],
)
def test_the_detectors_fire_on_personal_data(line: str, kind: str) -> None:
    assert kind in {k for k, _ in leaks([line])}
    assert leaks(["kefu.api INFO customer [手机号] asked"]) == []


def test_under_xdist_the_controller_audits_every_workers_log(tmp_path) -> None:
    """A leak written to one worker's log fails the run, and the report names it."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    (tmp_path / "test_plant.py").write_text(
        "import logging\n\n"
        "def test_clean(audit_log):\n"
        "    logging.getLogger('kefu.t').info('fine')\n\n"
        "def test_leak(audit_log):\n"
        "    with audit_log.open('a', encoding='utf-8') as f:\n"
        "        f.write('kefu.t INFO unmasked 13800001111\\n')\n",
        encoding="utf-8",
    )
    config = ["-c", str(root / "pyproject.toml"), "--rootdir", str(root), "-p", "tests.conftest"]
    plant = str(tmp_path / "test_plant.py")
    out = subprocess.run(
        [sys.executable, "-m", "pytest", *config, "-p", "no:cacheprovider", "-n", "2", plant],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
        env={k: v for k, v in os.environ.items() if k != "KEFU_TEST_LOG"},
    )
    assert out.returncode == 1, out.stdout + out.stderr
    assert "log audit of 2 worker logs FAILED" in out.stdout, out.stdout
    assert "mobile: kefu.t INFO unmasked 13800001111" in out.stdout, out.stdout
    assert "2 passed" in out.stdout, out.stdout
