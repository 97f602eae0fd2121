"""A process's state as Linux tells it (/proc/PID/stat), for tests that start and stop processes."""

from __future__ import annotations


def state(pid: int) -> str | None:
    """The process's state letter (R, S, Z ...); None when there is no such process (or no /proc)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0].decode()
    except OSError:
        return None


def running(pid: int) -> bool:
    """There, and not a zombie waiting to be reaped."""
    return state(pid) not in (None, "Z")
