"""Runs last: no log line the test suite produced carries personal data.

The suite sends phone numbers, ID numbers, order numbers and e-mail addresses through the API on
purpose (tests/test_service.py, tests/test_api.py); here every line that was logged is searched for
them with detectors independent of the masking code.
"""

from __future__ import annotations

import logging
import re

DETECTORS = {
    "mobile": re.compile(r"(?<!\d)1[3-9]\d{9}(?!\d)"),
    "id card": re.compile(r"(?<!\d)\d{17}[\dXx](?!\d)"),
    "bank card": re.compile(r"(?<!\d)\d{16,19}(?!\d)"),
    "email": re.compile(r"[\w.+-]+@[\w-]+\.[\w.]+"),
}


def test_no_personal_data_in_any_log_line(audit_log):
    for h in logging.getLogger().handlers:
        h.flush()
    lines = audit_log.read_text(encoding="utf-8").splitlines()
    assert len(lines) > 20, "the audit log is suspiciously short: is logging captured?"
    assert any("audit canary" in line and "[手机号]" in line for line in lines)
    assert any(line.startswith("kefu.") for line in lines)
    leaks = [(kind, line) for line in lines for kind, rx in DETECTORS.items() if rx.search(line)]
    assert leaks == []
