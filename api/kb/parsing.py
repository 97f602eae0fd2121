"""Uploaded KB files parsed in a separate process.

Reading a large file (decoding, CSV or XLSX parsing, validation) holds the interpreter lock for stretches of
a tenth of a second: in a thread of the serving process that still delayed the worker's other requests
(/healthz p99 118 ms during a 12 MB upload). In a child process it delays nothing; only the file's bytes go
in and the validated entries (or the problems) come back. The same child, the service's KB process, also
stores uploads and freezes publishes (api/kb/writes.py). With KEFU_BUILD_CPUS it runs on the build CPUs,
beside the builds it starts.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, TypeVar

from api.cpu_affinity import pin_process, pin_thread
from engine.kb import KBEntry, ReadLimits, load_kb

T = TypeVar("T")
log = logging.getLogger("kefu.kb")


def parse_file(name: str, suffix: str, data: bytes, limits: ReadLimits) -> list[KBEntry]:
    """The validated entries of an uploaded file (KBValidationError / KBTooLarge as load_kb raises them)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"upload{suffix}"
        path.write_bytes(data)
        return load_kb(path, source_name=name, limits=limits)


def _start_child(cpus: tuple[int, ...], parent: int) -> None:
    if cpus:
        pin_process(cpus)
    threading.Thread(target=_exit_with_parent, args=(parent,), name="kefu-parent-watch", daemon=True).start()


def _exit_with_parent(parent: int, every: float = 1.0) -> None:
    """A serving process that dies (killed, out of memory) cannot stop its KB process, which would wait
    for work forever, holding its database connections: once its parent is gone, it stops itself."""
    while os.getppid() == parent:
        time.sleep(every)
    os._exit(0)


def _spawn_on(pool: ProcessPoolExecutor, cpus: tuple[int, ...]) -> None:
    """Start the pool's child from this thread, pinned to `cpus` first: a child inherits its
    starter's CPUs. `submit` starts the child in the calling thread; not waiting for it keeps the caller
    (the event loop, for an upload) from waiting on the child's start-up."""
    pin_thread(cpus)
    pool.submit(int)


class UploadParser:
    """One child process, started on the first upload and again after a crash (e.g. out of memory).

    `cpus`: where the child runs (the build CPUs: reading and checking a KB is KB work, not serving's);
    empty: wherever the serving process runs."""

    def __init__(self, cpus: tuple[int, ...] = ()) -> None:
        self.cpus = cpus
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()

    def _executor(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                # spawn: forking a process that runs threads (builds, reconciler) can copy a held lock
                self._pool = ProcessPoolExecutor(
                    max_workers=1,
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=_start_child,  # pinned wherever it was started from
                    initargs=(self.cpus, os.getpid()),
                )
                if self.cpus:  # started from a thread on those CPUs: its start-up (imports) runs there too
                    pool = self._pool
                    starter = threading.Thread(target=_spawn_on, args=(pool, self.cpus), name="kefu-parser")
                    starter.start()
                    starter.join()
            return self._pool

    async def parse(self, name: str, suffix: str, data: bytes, limits: ReadLimits) -> list[KBEntry]:
        """An uploaded KB file's validated entries, read in the child."""
        return await self.run(parse_file, name, suffix, data, limits)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` in the child (a module-level function: it is pickled by name, as are its args)."""
        pool = self._executor()
        try:
            return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)
        except BrokenProcessPool:
            self._forget(pool)
            raise

    def _forget(self, pool: ProcessPoolExecutor) -> None:
        """A dead child's pool: the next call starts a new child."""
        with self._lock:
            if self._pool is pool:
                self._pool = None

    def start(self, warm: Callable[..., object] = int, *args: Any) -> None:
        """Start the child in the background now and run `warm(*args)` in it: the first upload or publish
        then waits neither for its start nor for its first use (interpreter, imports and the database's
        connection pool: 0.3-0.5 s of a shop's first upload before, on the child's CPUs)."""
        threading.Thread(
            target=self._start_quietly, args=(warm, *args), name="kefu-parser-start", daemon=True
        ).start()

    def _start_quietly(self, warm: Callable[..., object], *args: Any) -> None:
        try:
            self.call(warm, *args)
        except Exception as e:  # the first upload tries again and reports it
            log.warning("the KB parser process did not start: %s", e)

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` in the child, waiting for it (from a worker thread, not the event loop)."""
        pool = self._executor()
        try:
            return pool.submit(fn, *args).result()
        except BrokenProcessPool:
            self._forget(pool)
            raise

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = None
