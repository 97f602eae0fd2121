"""Searches log lines for personal data with detectors independent of the masking code.

Used by tests/test_zz_log_audit.py (the lines of its own test process) and, under pytest-xdist, by the
controller's session finish in tests/conftest.py (the lines of every worker, after all have finished).
"""

from __future__ import annotations

import re

DETECTORS = {
    "mobile": re.compile(r"(?<!\d)1[3-9]\d{9}(?!\d)"),
    "id card": re.compile(r"(?<!\d)\d{17}[\dXx](?!\d)"),
    "bank card": re.compile(r"(?<!\d)\d{16,19}(?!\d)"),
    "email": re.compile(r"[\w.+-]+@[\w-]+\.[\w.]+"),
}


def leaks(lines: list[str]) -> list[tuple[str, str]]:
    """(kind, line) for every line a detector fires on."""
    return [(kind, line) for line in lines for kind, rx in DETECTORS.items() if rx.search(line)]


def audit(lines: list[str]) -> list[str]:
    """What is wrong with a test run's log lines: too few to trust, no masked canary, no service line, or
    personal data; empty when the log is clean."""
    problems = []
    if len(lines) <= 20:
        problems.append(f"the audit log is suspiciously short ({len(lines)} lines): is logging captured?")
    if not any("audit canary" in line and "[手机号]" in line for line in lines):
        problems.append("the masked audit canary is missing")
    if not any(line.startswith("kefu.") for line in lines):
        problems.append("no line from a kefu.* logger")
    problems += [f"{kind}: {line}" for kind, line in leaks(lines)]
    return problems
