"""Shared fixtures: the demo shop's KB and models built from it once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEMO_KB = ROOT / "models" / "demo-shop-kb.csv"
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def demo_kb() -> Path:
    return DEMO_KB


@pytest.fixture(scope="session")
def demo_matcher():
    """The default profile (dense channel on), as `make run` serves it."""
    from engine import Matcher

    return Matcher.build(DEMO_KB)


@pytest.fixture(scope="session")
def fast_matcher():
    """The fast profile: dense channel off."""
    from engine import Matcher

    return Matcher.build(DEMO_KB, dense=False)


def shared_set(name: str) -> Path:
    """A public data set beside the project; tests that need one skip with a reason when it is absent."""
    path = SHARED_DATA / name
    if not (path / "kb.csv").is_file():
        pytest.skip(f"shared data set {path} is not present on this machine")
    return path


os.environ.setdefault("KEFU_EMBED_THREADS", "2")
