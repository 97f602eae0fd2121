"""A build child's CPU priority after its start: raised step by step while the CPUs leave it starving.

A build is born low (api/kb/build_child.py: nice KEFU_BUILD_NICE and SCHED_IDLE), so serving keeps the
cores. SCHED_IDLE runs only on CPU time nothing else wants: on a replica whose CPUs stay saturated (a sale's
peak, a load test of closed-loop clients) the build got none at all, and every publish waited until the
peak ended or the time limit killed it (measured: `kefu loadtest --duration 30`, 8 clients, 5 of 6 versions
still "building" at the end).

`StarvationGuard` bounds that wait. The parent watching the child looks at the child's CPU time every
`window` seconds; when it got less than `min_share` of one CPU, its threads move up one step of a ladder:
SCHED_BATCH at the build's own nice, then nice 5, then nice 0 (SCHED_BATCH marks it CPU-bound, so the
scheduler disfavours it at wake-ups against request handlers). It never goes back down: a build is finite,
and one that starved once would starve again. On a machine with idle CPU the build gets its share in the
first window and nothing changes, so this costs serving nothing where builds did not starve.

Measured (`kefu loadtest --duration 60`, 8 closed-loop clients on 2 workers, a publish every 5 s): with
the guard off (KEFU_BUILD_MIN_CPU_SHARE=0) no version after the first was served in 60 s; with it, the
second and third were (p99 of the messages 115 ms without, 140 ms with: the price of publishes landing).

Raising a priority needs CAP_SYS_NICE (or RLIMIT_NICE): where it is refused, the guard logs once and stops
trying, and the build keeps waiting for idle CPU as before. Linux only (/proc); elsewhere it does nothing.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("kefu.builds")

WINDOW = 2.0  # seconds between two looks at the child's CPU time
LADDER_NICE = (5, 0)  # nice values after the first step (SCHED_BATCH at the build's own nice)


@dataclass(frozen=True)
class Step:
    policy: str  # "batch" (SCHED_BATCH)
    nice: int


def ladder(nice: int, cpu_idle: bool) -> list[Step]:
    """The steps a starving build climbs, from how it started (`nice`, SCHED_IDLE or not)."""
    steps = [Step("batch", nice)] if cpu_idle else []
    steps += [Step("batch", n) for n in LADDER_NICE if n < nice]
    return steps


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of process `pid` (all its threads), or None when it cannot be read."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # the command name (field 2) may hold spaces: the fields after it start after the last ')'
    fields = stat[stat.rindex(b")") + 2 :].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime: fields 14 and 15 of proc(5)
    return ticks / os.sysconf("SC_CLK_TCK")


def apply_step(pid: int, step: Step) -> None:
    """Move every thread of `pid` to `step` (threads started later inherit it from their creator).
    Raises PermissionError where the process may not raise priorities."""
    policy = getattr(os, "SCHED_BATCH", 3)
    for tid in sorted(int(t) for t in os.listdir(f"/proc/{pid}/task")):
        try:
            os.sched_setscheduler(tid, policy, os.sched_param(0))
            os.setpriority(os.PRIO_PROCESS, tid, step.nice)
        except ProcessLookupError:  # the thread ended meanwhile
            continue
    # a `kefu worker` that lowered its whole session (build_child.lower_session): the threads' nice counts
    # only inside the session, so the session's weight comes up to the step too
    group = autogroup_nice(pid)
    if group is not None and group > step.nice:
        with open(f"/proc/{pid}/autogroup", "w") as f:
            f.write(str(step.nice))


def autogroup_nice(pid: int) -> int | None:
    """The nice of `pid`'s session group (autogroup: "/autogroup-42 nice 19"), None where there is none."""
    try:
        with open(f"/proc/{pid}/autogroup") as f:
            return int(f.read().split()[-1])
    except (OSError, ValueError, IndexError):
        return None


class StarvationGuard:
    """Raises a build child's priority one step each `window` in which it got < `min_share` of a CPU.

    `check(now)` is called from the parent's watch loop; `raised_` counts the steps taken, `step_` is the
    child's current step (None: as it was born)."""

    def __init__(
        self,
        pid: int,
        nice: int,
        cpu_idle: bool,
        min_share: float,
        window: float = WINDOW,
        read_cpu: Callable[[int], float | None] = cpu_seconds,
        apply: Callable[[int, Step], None] = apply_step,
        now: float | None = None,
    ) -> None:
        self.pid = pid
        self.min_share = min_share
        self.window = window
        self._read_cpu, self._apply = read_cpu, apply
        self._steps = ladder(nice, cpu_idle) if min_share > 0 else []
        self._since = time.monotonic() if now is None else now
        self._cpu = read_cpu(pid) if self._steps else None
        self.step_: Step | None = None
        self.raised_ = 0
        if self._cpu is None:
            self._steps = []  # no /proc, or the child is gone: nothing to watch

    def check(self, now: float) -> Step | None:
        """The step taken now, if any."""
        if not self._steps or now - self._since < self.window:
            return None
        cpu = self._read_cpu(self.pid)
        if cpu is None or self._cpu is None:
            self._steps = []
            return None
        share = (cpu - self._cpu) / (now - self._since)
        self._since, self._cpu = now, cpu
        if share >= self.min_share:
            return None
        step = self._steps.pop(0)
        try:
            self._apply(self.pid, step)
        except PermissionError as e:
            log.warning(
                "build process %d got %.0f%% of a CPU but its priority cannot be raised (%s): it waits for "
                "idle CPU. Give the service CAP_SYS_NICE, or run `kefu worker` on other machines",
                self.pid,
                100 * share,
                e,
            )
            self._steps = []
            return None
        except (FileNotFoundError, ProcessLookupError):
            self._steps = []
            return None
        self.step_ = step
        self.raised_ += 1
        log.info(
            "build process %d got %.0f%% of a CPU in %.0f s: raised to SCHED_BATCH nice %d",
            self.pid,
            100 * share,
            self.window,
            step.nice,
        )
        return step
