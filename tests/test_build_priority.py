"""A starving build's priority is raised step by step (api/kb/build_priority.py): the ladder and the guard's
decisions on a scripted clock, then a real SCHED_IDLE child on CPUs saturated by busy processes."""

from __future__ import annotations

import multiprocessing
import os
import time
from typing import Any

import pytest

from api.kb.build_child import start_lowered
from api.kb.build_priority import StarvationGuard, Step, apply_step, autogroup_nice, cpu_seconds, ladder
from tests.procs import running


def test_the_ladder_starts_from_how_the_build_was_born() -> None:
    assert ladder(10, cpu_idle=True) == [Step("batch", 10), Step("batch", 5), Step("batch", 0)]
    assert ladder(10, cpu_idle=False) == [Step("batch", 5), Step("batch", 0)]
    assert ladder(3, cpu_idle=True) == [Step("batch", 3), Step("batch", 0)]
    assert ladder(0, cpu_idle=False) == []


class Scripted:
    """CPU seconds the child 'used' by each look, and the steps applied."""

    def __init__(self, cpu: list[float], refuse: bool = False) -> None:
        self.cpu = list(cpu)
        self.applied: list[Step] = []
        self.refuse = refuse

    def read(self, pid: int) -> float | None:
        return self.cpu.pop(0) if self.cpu else None

    def apply(self, pid: int, step: Step) -> None:
        if self.refuse:
            raise PermissionError("Operation not permitted")
        self.applied.append(step)


def _guard(script: Scripted, min_share: float = 0.25, nice: int = 10) -> StarvationGuard:
    return StarvationGuard(
        1234, nice, True, min_share, window=2.0, read_cpu=script.read, apply=script.apply, now=0.0
    )


def test_a_build_that_gets_its_share_is_left_as_it_was_born() -> None:
    s = Scripted([0.0, 1.0, 2.0, 3.9])  # 50%, 50%, 95% of a CPU in each 2 s window
    g = _guard(s)
    assert [g.check(t) for t in (1.0, 2.0, 4.0, 6.0)] == [None, None, None, None]
    assert s.applied == [] and g.step_ is None and g.raised_ == 0


def test_a_starving_build_climbs_one_step_per_window_and_stops_at_the_top() -> None:
    # 0%, 5%, 20% (still under 25%), then 100%: three steps, then nothing left to climb
    s = Scripted([0.0, 0.0, 0.1, 0.5, 2.5, 2.5])
    g = _guard(s)
    taken = [g.check(t) for t in (2.0, 4.0, 6.0, 8.0, 10.0)]
    assert taken == [Step("batch", 10), Step("batch", 5), Step("batch", 0), None, None]
    assert g.step_ == Step("batch", 0) and g.raised_ == 3


def test_a_window_is_measured_from_the_last_look_not_from_the_start() -> None:
    s = Scripted([0.0, 0.0, 0.0])
    g = _guard(s)
    assert g.check(1.9) is None  # too early: the CPU time is not even read
    assert g.check(2.0) == Step("batch", 10)
    assert g.check(3.0) is None
    assert g.check(4.0) == Step("batch", 5)


def test_a_refused_raise_is_given_up_and_the_build_keeps_its_priority(caplog: Any) -> None:
    s = Scripted([0.0, 0.0, 0.0, 0.0], refuse=True)
    g = _guard(s)
    with caplog.at_level("WARNING", logger="kefu.builds"):
        assert g.check(2.0) is None
        assert g.check(4.0) is None
    assert g.step_ is None and g.raised_ == 0
    assert "CAP_SYS_NICE" in caplog.text and caplog.text.count("cannot be raised") == 1


def test_a_share_of_zero_never_raises() -> None:
    s = Scripted([0.0, 0.0, 0.0])
    g = _guard(s, min_share=0.0)
    assert g.check(2.0) is None and g.check(4.0) is None and s.applied == []


def _spin(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def _can_raise_priorities() -> bool:
    import resource

    return os.geteuid() == 0 or resource.getrlimit(resource.RLIMIT_NICE)[0] >= 20


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="SCHED_IDLE is Linux's")
@pytest.mark.skipif(not _can_raise_priorities(), reason="raising a priority needs CAP_SYS_NICE")
def test_a_real_idle_child_on_saturated_cpus_is_raised_and_then_runs() -> None:
    ctx = multiprocessing.get_context("spawn")
    cores = len(os.sched_getaffinity(0))
    hogs = [ctx.Process(target=_spin, args=(30.0,)) for _ in range(cores + 1)]
    for h in hogs:
        h.start()
    child = ctx.Process(target=_spin, args=(30.0,))
    try:
        start_lowered(child, nice=10, cpu_idle=True)
        assert child.pid is not None
        assert os.sched_getscheduler(child.pid) == os.SCHED_IDLE
        time.sleep(1.0)  # the child's interpreter start competes too
        # beside cores + 1 busy processes no step reaches 0.6 of a CPU (nice 0 gets about 0.5), so the guard
        # climbs the whole ladder whatever else the machine runs
        guard = StarvationGuard(child.pid, 10, True, min_share=0.6, window=1.0)
        deadline = time.monotonic() + 15
        while guard.step_ != Step("batch", 0) and time.monotonic() < deadline:
            guard.check(time.monotonic())
            time.sleep(0.05)
        assert guard.step_ == Step("batch", 0), f"raised {guard.raised_} step(s) in 15 s"
        assert os.sched_getscheduler(child.pid) == os.SCHED_BATCH
        assert os.getpriority(os.PRIO_PROCESS, child.pid) == 0
        # at nice 0 it now gets a real share of a CPU (under SCHED_IDLE it got about 0.3%)
        before, t0 = cpu_seconds(child.pid), time.monotonic()
        time.sleep(1.5)
        after = cpu_seconds(child.pid)
        assert before is not None and after is not None
        assert (after - before) / (time.monotonic() - t0) > 0.1
    finally:
        for p in [*hogs, child]:
            if p.is_alive():
                p.kill()
            p.join(5)


def _report_policy(conn: Any) -> None:
    conn.send((os.getpriority(os.PRIO_PROCESS, 0), os.sched_getscheduler(0)))
    conn.close()


@pytest.mark.skipif(
    "forkserver" not in multiprocessing.get_all_start_methods() or not hasattr(os, "SCHED_IDLE"),
    reason="the build forkserver and SCHED_IDLE are Linux's",
)
def test_a_killed_build_forkserver_is_started_again_at_the_builds_nice_and_not_idle() -> None:
    import signal
    from multiprocessing import forkserver

    from api.kb.build_child import build_context

    build_context(7)
    old = forkserver._forkserver._forkserver_pid  # type: ignore[attr-defined]  # no public accessor
    assert old is not None
    assert os.getpriority(os.PRIO_PROCESS, old) >= 7
    os.kill(old, signal.SIGKILL)
    deadline = time.monotonic() + 10  # dead, not reaped: multiprocessing reaps it when it looks
    while time.monotonic() < deadline and running(old):
        time.sleep(0.05)
    ctx = build_context(7)
    new = forkserver._forkserver._forkserver_pid  # type: ignore[attr-defined]
    assert new not in (None, old)
    # started again from the build's thread at nice 7, not from a SCHED_IDLE thread
    assert os.sched_getscheduler(new) != os.SCHED_IDLE
    assert os.getpriority(os.PRIO_PROCESS, new) == max(7, os.getpriority(os.PRIO_PROCESS, 0))
    reader, writer = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_report_policy, args=(writer,))
    start_lowered(child, nice=7, cpu_idle=True)
    writer.close()
    assert reader.poll(60)
    nice, policy = reader.recv()
    child.join(10)
    assert nice >= 7 and policy != os.SCHED_IDLE  # born as the server is; the build sets SCHED_IDLE itself


_AUTOGROUP = os.path.exists("/proc/self/autogroup")


def _lower_own_session(conn: Any, setsid: bool, nice: int) -> None:
    from api.kb.build_child import lower_session

    if setsid:
        os.setsid()
    lowered = lower_session(nice)
    conn.send((lowered, autogroup_nice(os.getpid())))
    conn.close()


@pytest.mark.skipif(not _AUTOGROUP, reason="Linux autogroup (/proc/self/autogroup) is not on here")
def test_a_worker_leading_its_session_lowers_the_sessions_weight_and_a_shared_one_is_left_alone() -> None:
    """The kernel shares the CPUs between sessions first: a `kefu worker` in a session of its own keeps its
    nice only by lowering the session's group; a process sharing its session lowers nobody else."""
    ctx = multiprocessing.get_context("spawn")
    mine = autogroup_nice(os.getpid())
    for setsid, expected in ((True, (True, 15)), (False, (False, mine))):
        reader, writer = ctx.Pipe(duplex=False)
        child = ctx.Process(target=_lower_own_session, args=(writer, setsid, 15))
        child.start()
        writer.close()
        assert reader.poll(60)
        assert reader.recv() == expected
        child.join(10)
    assert autogroup_nice(os.getpid()) == mine  # this session was not touched


def _sleep_in_own_lowered_session(conn: Any) -> None:
    from api.kb.build_child import lower_session

    os.setsid()
    conn.send(lower_session(19))
    conn.close()
    time.sleep(30)


@pytest.mark.skipif(not _AUTOGROUP, reason="Linux autogroup (/proc/self/autogroup) is not on here")
@pytest.mark.skipif(not _can_raise_priorities(), reason="raising a priority needs CAP_SYS_NICE")
def test_a_step_raises_a_lowered_session_with_the_build() -> None:
    """In a lowered session the threads' nice counts only inside it: a starving build's step raises the
    session's weight too (never lowers it)."""
    ctx = multiprocessing.get_context("spawn")
    reader, writer = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_sleep_in_own_lowered_session, args=(writer,))
    child.start()
    writer.close()
    try:
        assert reader.poll(60) and reader.recv() is True
        assert child.pid is not None and autogroup_nice(child.pid) == 19
        apply_step(child.pid, Step("batch", 10))
        assert autogroup_nice(child.pid) == 10
        assert os.getpriority(os.PRIO_PROCESS, child.pid) == 10
        apply_step(child.pid, Step("batch", 0))
        assert autogroup_nice(child.pid) == 0
    finally:
        child.kill()
        child.join(5)
