"""Targets for tests/test_builds.py's lifeline test, in a module of their own so the build forkserver's
children import little (not collected: no test_ prefix)."""

from __future__ import annotations

import os
import time
from multiprocessing.connection import Connection

from api.kb.build_child import exit_with_parent


def sleep_tied(lifeline: Connection, ready: Connection) -> None:
    """A child that would run for two minutes, tied to its parent as a build child is."""
    exit_with_parent(lifeline)
    ready.send(os.getpid())
    ready.close()
    time.sleep(120)


def sleep_untied(ready: Connection) -> None:
    """The same child without a lifeline: the control."""
    ready.send(os.getpid())
    ready.close()
    time.sleep(120)
