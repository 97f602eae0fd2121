"""Which CPUs serving and builds may run on (KEFU_SERVE_CPUS, KEFU_BUILD_CPUS).

Priorities alone do not keep a build off serving's tail on a small machine: with every CPU shared, any
neighbour at the lowest priority the kernel offers (nice 19, SCHED_IDLE, its session lowered) multiplied
serving's idle p99 by up to 6 on this project's 2-vCPU machines (`kefu loadtest --publishers 10
--control`). With serving on one CPU and builds or the same neighbours on the other, the control's factor
was 0.9-1.3 and ten builds finished four times sooner (README, "CPUs of their own"). Separate CPUs are
what a container's `--cpuset-cpus` or a systemd unit's `AllowedCPUs=` give; these settings give them to
the processes Kefu starts itself (uvicorn's workers, build children, `kefu worker`), where those knobs do
not reach.

A spec is a Linux CPU list: "1", "2-3", "0,2-3". Empty: no restriction.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger(__name__)


def parse_cpus(spec: str) -> tuple[int, ...]:
    """The CPUs a list names, sorted; ValueError saying what is wrong with it.

    Checked against the CPUs the machine has (os.cpu_count()), not this process's current affinity: a
    serving process pinned to CPU 0 still reads KEFU_BUILD_CPUS=1 for its builds."""
    spec = spec.strip()
    if not spec:
        return ()
    count = os.cpu_count() or 1
    cpus: set[int] = set()
    for part in spec.split(","):
        part = part.strip()
        lo_s, sep, hi_s = part.partition("-")
        try:
            lo = int(lo_s)
            hi = int(hi_s) if sep else lo
        except ValueError:
            raise ValueError(
                f"{part!r} is not a CPU number or range (a list looks like '1', '2-3' or '0,2-3')"
            ) from None
        if lo < 0 or hi < lo:
            raise ValueError(f"{part!r} is not a range of CPUs (write the lower number first)")
        if hi >= count:
            raise ValueError(f"CPU {hi} does not exist: this machine has CPUs 0-{count - 1}")
        cpus.update(range(lo, hi + 1))
    return tuple(sorted(cpus))


def supported() -> bool:
    return hasattr(os, "sched_setaffinity")


def pin_thread(cpus: Iterable[int]) -> bool:
    """Restrict the calling thread (Linux: affinity is per thread) and what it starts from now on to
    `cpus`. A mask the kernel refuses (a container's cpuset without them) is logged and skipped: the
    work runs unpinned rather than not at all. True when pinned."""
    if not cpus or not supported():
        return False
    try:
        os.sched_setaffinity(0, set(cpus))
    except OSError as e:
        log.warning("could not restrict to CPUs %s: %s; running on %s", _fmt(cpus), e, _fmt(_current()))
        return False
    return True


def pin_process(cpus: Iterable[int]) -> bool:
    """Restrict every thread of this process (those already running too, such as a BLAS or logging
    thread started at import) to `cpus`; threads started later inherit it. True when pinned."""
    if not cpus or not supported():
        return False
    ok = pin_thread(cpus)
    tasks = Path("/proc/self/task")
    if ok and tasks.is_dir():
        for task in tasks.iterdir():
            with contextlib.suppress(OSError, ValueError):  # a thread that ended meanwhile
                os.sched_setaffinity(int(task.name), set(cpus))
    return ok


def _current() -> set[int]:
    return os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()


def _fmt(cpus: Iterable[int]) -> str:
    return ",".join(str(c) for c in sorted(cpus))
