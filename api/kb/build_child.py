"""One version's build in a child process: fit the model, check it, write it; report over a pipe.

The build is CPU-heavy for seconds to minutes. It runs in its own process, never in a thread of a serving
process, forked from a forkserver that has the engine and scikit-learn imported (`build_context`), and lowers
its CPU priority first (before numpy starts its threads, which inherit it), so request handling keeps the
cores. The parent (api/kb/builds.py) enforces the time limit by
killing this process, and records what it reports: ("progress", stage, fraction) messages, then exactly one
outcome: ("ok", figures), ("invalid", message) for a KB that does not validate, ("rejected", message) for a
model that failed its own checks, ("error", message) for any other exception. A child that dies without an
outcome (killed, out of memory) is the transient case the queue retries. A child whose parent vanished
(a `kefu worker` killed with SIGKILL, its host's OOM killer) ends at once (`exit_with_parent`), rather than
building on, unseen, beside the attempt the sweep queues again.

Nothing here imports numpy or the engine at module level: a spawned child (where there is no forkserver)
must be able to lower its priority before they load.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.context import ForkServerContext, SpawnContext
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING, Any

from api.cpu_affinity import pin_thread

if TYPE_CHECKING:
    from engine import Matcher
    from engine.kb import KBEntry

SELF_CHECK_SAMPLE = 500
PROGRESS_EVERY = 0.5  # seconds between two progress messages of one stage (a new stage is sent at once)


class BuildRejected(Exception):
    """A model that built but failed its own evaluation: it is not swapped in."""


@dataclass(frozen=True)
class BuildJob:
    """Everything the child needs, as plain data (pickled across the process boundary)."""

    shop: str
    version: int
    snapshot: list[dict[str, Any]]  # the version's frozen KB, as stored in kb_versions.snapshot
    options: dict[str, Any]  # engine options (Matcher.build keywords)
    dense: bool
    model_dir: str
    min_self_recall: float
    min_cv_top1: float
    nice: int
    cpu_idle: bool = False  # Linux SCHED_IDLE: the build runs only on CPU time nothing else wants
    cpus: tuple[int, ...] = ()  # the CPUs the build may run on (KEFU_BUILD_CPUS); empty: any


def evaluate_model(
    m: Matcher, entries: list[KBEntry], min_self_recall: float, min_cv_top1: float
) -> dict[str, Any]:
    """The checks a new model must pass before it serves customers."""
    import numpy as np

    rng = np.random.default_rng(0)
    pairs = [(q, e.id) for e in entries if e.enabled for q in e.questions()]
    if len(pairs) > SELF_CHECK_SAMPLE:
        pairs = [pairs[i] for i in rng.choice(len(pairs), SELF_CHECK_SAMPLE, replace=False)]
    hits = 0
    for q, eid in pairs:
        ranking = m.rank(m.represent(q), np.ones(len(m.entries), bool))
        top = [m.entries[i].id for i in ranking.cands[:3]]
        hits += eid in top
    self_recall = hits / len(pairs) if pairs else 1.0
    cal = m.info.get("calibration", {})
    cv = cal.get("cv_top1_in_scope") if not cal.get("synthetic_paraphrases") else None
    figures = {
        "self_recall_at_3": self_recall,
        "cv_top1": cv,
        "t_answer": m.policy.t_answer,
        "t_clarify": m.policy.t_clarify,
        "build_seconds": m.info.get("build_seconds"),
    }
    problems = []
    if self_recall < min_self_recall:
        problems.append(
            f"only {self_recall:.0%} of KB questions find their own entry (need {min_self_recall:.0%})"
        )
    if cv is not None and cv < min_cv_top1:
        problems.append(f"held-out paraphrase top-1 {cv:.2f} is below {min_cv_top1:.2f}")
    if problems:
        raise BuildRejected("; ".join(problems))
    return figures


def lower_priority(nice: int, cpu_idle: bool, cpus: tuple[int, ...] = ()) -> None:
    """Lower the calling thread's CPU priority and keep it to `cpus` (on Linux nice, the scheduling
    policy and the CPU affinity are per thread; a process started from the thread inherits them). Where it
    is not allowed the build runs at normal priority, or on any CPU, rather than not at all."""
    pin_thread(cpus)
    if nice > 0 and os.getpriority(os.PRIO_PROCESS, 0) < nice:
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, 0, nice)
    if cpu_idle and hasattr(os, "SCHED_IDLE"):
        with contextlib.suppress(OSError):
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))


AUTOGROUP = "/proc/self/autogroup"
AUTOGROUP_ENABLED = "/proc/sys/kernel/sched_autogroup_enabled"


def autogroups_on() -> bool:
    """Whether Linux groups processes by session for CPU sharing (autogroup)."""
    try:
        with open(AUTOGROUP_ENABLED) as f:
            return f.read().strip() == "1" and os.path.exists(AUTOGROUP)
    except OSError:
        return False


def lower_session(nice: int) -> bool:
    """Lower the CPU weight of this process's session, when it leads one of its own (`setsid kefu worker`,
    a supervisor that starts each program in a session of its own). Linux shares the CPUs between
    sessions first (autogroup; not inside a cgroup of its own such as a systemd unit or a container, where
    the cgroup's CPU weight does that): a build's nice and SCHED_IDLE count only against its own session,
    so a `kefu worker` in another session than the servers built at their weight whatever KEFU_BUILD_NICE
    said (measured: p99 while ten shops built 1.7x idle, 1.4x with the session lowered). A session shared
    with other programs is left alone: they would be lowered with it. True when lowered."""
    if nice <= 0 or os.getsid(0) != os.getpid() or not autogroups_on():
        return False
    try:
        with open(AUTOGROUP, "w") as f:
            f.write(str(min(19, nice)))
    except OSError:
        return False
    return True


def _in_lowered_thread(
    fn: Callable[[], object], nice: int, cpu_idle: bool, name: str, cpus: tuple[int, ...] = ()
) -> None:
    """Run `fn` in a short-lived thread that first lowers its own priority (a process it starts is born
    with that priority); an exception is re-raised in the caller's thread, whose priority is untouched."""
    failed: list[BaseException] = []

    def run() -> None:
        lower_priority(nice, cpu_idle, cpus)
        try:
            fn()
        except BaseException as e:
            failed.append(e)

    t = threading.Thread(target=run, name=name)
    t.start()
    t.join()
    if failed:
        raise failed[0]


def start_lowered(proc: BaseProcess, nice: int, cpu_idle: bool, cpus: tuple[int, ...] = ()) -> None:
    """Start `proc` with the lowered priority, so the child is born with it: a spawned child's
    interpreter start and imports (a second or more of CPU) do not compete with serving either. Measured:
    the child's start at normal priority was part of serving's p99 while shops built."""
    _in_lowered_thread(proc.start, nice, cpu_idle, "kefu-build-spawn", cpus)


PRELOAD = "api.kb.build_preload"


def build_context(nice: int, cpus: tuple[int, ...] = ()) -> ForkServerContext | SpawnContext:
    """The multiprocessing context builds start in: a forkserver that imported `PRELOAD`, where the
    platform has one ('spawn' elsewhere). A forked child skips the interpreter start and the imports, which
    no longer compete with serving either: the demo KB's build took 9.1-9.9 s spawned, 5.3-6.3 s forked.

    The server is started from a thread at nice `nice` but not SCHED_IDLE: it must get CPU to fork a build
    while the CPUs are saturated (the child sets SCHED_IDLE itself at once, and api/kb/build_priority.py
    raises it if it starves), and on the builds' CPUs. Checked before every build, so a server that died
    (killed, out of memory) is started again here at that priority."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    from multiprocessing import forkserver

    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([PRELOAD])  # read when a server starts; ensure_running has its own lock
    _in_lowered_thread(forkserver.ensure_running, nice, False, "kefu-build-forkserver", cpus)
    return ctx


ORPHANED_EXIT = 70  # the exit code of a build child whose parent died (EX_SOFTWARE)


def exit_with_parent(lifeline: Connection) -> threading.Thread:
    """End this process as soon as the parent is gone. `lifeline` is the reading end of a pipe whose only
    writing end the parent holds and never writes: it reads EOF when the parent closes it or dies, however
    it died. The build's own pipe cannot tell: a child learns of a dead reader only when it next sends,
    which a long stage (a large KB's classifier fit) does not for minutes."""

    def watch() -> None:
        with contextlib.suppress(OSError, EOFError):
            lifeline.poll(None)  # readable at EOF: nothing is ever sent
        os._exit(ORPHANED_EXIT)

    t = threading.Thread(target=watch, name="kefu-build-lifeline", daemon=True)
    t.start()
    return t


def build_in_child(job: BuildJob, conn: Connection, lifeline: Connection | None = None) -> None:
    """The child's entry point (module level, so 'spawn' can import it)."""
    lower_priority(job.nice, job.cpu_idle, job.cpus)  # where the start could not (or another start method)
    if lifeline is not None:
        exit_with_parent(lifeline)
    try:
        conn.send(("outcome", *_build(job, conn)))
    finally:
        conn.close()


def _build(job: BuildJob, conn: Connection) -> tuple[str, Any]:
    from engine import Matcher
    from engine.kb import KBValidationError, load_kb

    last_stage, last_at = [""], [0.0]

    def progress(stage: str, fraction: float) -> None:
        now = time.monotonic()
        if stage == last_stage[0] and now - last_at[0] < PROGRESS_EVERY:
            return
        last_stage[0], last_at[0] = stage, now
        conn.send(("progress", stage, float(min(1.0, max(0.0, fraction)))))

    try:
        entries = load_kb(job.snapshot, source_name=f"version {job.version}")
        progress("tokenize", 0.0)
        # the fit is 95% of the way; checking and writing the model the rest (1.0: only once ready)
        fit = lambda stage, fraction: progress(stage, 0.95 * fraction)  # noqa: E731
        matcher = Matcher.build(entries, dense=job.dense, progress=fit, **job.options)
        progress("evaluate", 0.97)
        figures = evaluate_model(matcher, entries, job.min_self_recall, job.min_cv_top1)
        progress("save", 0.99)
        matcher.save(job.model_dir)  # a temporary directory renamed into place (engine.artifacts)
    except KBValidationError as e:
        return "invalid", str(e)
    except BuildRejected as e:
        return "rejected", str(e)
    except Exception as e:  # a bug or a bad option: the same KB would fail again, so no retry
        return "error", f"{type(e).__name__}: {e}"
    return "ok", figures
