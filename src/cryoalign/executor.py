"""Run many independent tasks: in this process, in local worker processes, or on a Dask cluster.

    for index, result in run_tasks(fn, items, jobs=2):          # local worker processes
    for index, result in run_tasks(fn, items, scheduler="tcp://host:8786"):   # Dask distributed

`fn` is a module-level function of one small argument (file paths, numbers: never big
arrays) returning a small result. Results arrive as tasks finish, each with the index of
its item, so callers can record them at once (resumable runs) and order them afterwards:
what a task returns depends only on its item, never on the executor or the worker count.
`fn` should catch the errors it wants recorded per item; any other exception stops the run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from .errors import InputError, one_line

log = logging.getLogger(__name__)


def available_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def resolve_jobs(jobs: int | None, *, what: str = "jobs") -> int:
    """Worker count: all cores when None; capped at the number of cores (logged)."""
    cores = available_cores()
    if jobs is None:
        return cores
    if jobs < 1:
        raise InputError(f"{what} must be at least 1, got {jobs}")
    if jobs > cores:
        log.info("%d workers asked for but this machine has %d cores: using %d", jobs, cores, cores)
        return cores
    return jobs


def run_tasks(
    fn: Callable,
    items: Iterable,
    *,
    jobs: int | None = None,
    scheduler: str | None = None,
    progress: bool = False,
    desc: str = "tasks",
) -> Iterator[tuple[int, Any]]:
    """Yield (index, fn(items[index])) as tasks finish.

    scheduler: address of a Dask distributed scheduler ("tcp://host:8786"); None runs
    locally in `jobs` worker processes (one: in this process).  progress: show a
    progress bar on stderr (tqdm)."""
    items = list(items)
    if not items:
        return
    bar = _bar(len(items), desc, progress)
    try:
        if scheduler:
            source = _dask(fn, items, scheduler)
        else:
            jobs = min(resolve_jobs(jobs), len(items))
            source = _inline(fn, items) if jobs == 1 else _processes(fn, items, jobs)
        for index, result in source:
            bar.update(1)
            yield index, result
    finally:
        bar.close()


def _bar(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(
        total=total, desc=desc, unit="task", file=sys.stderr, leave=False, disable=not (enabled and sys.stderr.isatty())
    )


def _inline(fn, items):
    for index, item in enumerate(items):
        yield index, fn(item)


def _processes(fn, items, jobs: int):
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    method = "fork" if "fork" in mp.get_all_start_methods() else None
    pool = ProcessPoolExecutor(
        max_workers=jobs, mp_context=mp.get_context(method), initializer=die_with_parent, initargs=(os.getpid(),)
    )
    try:
        with signals_deferred():  # submit() forks the workers: no interrupt inside a fork hook
            pending = {pool.submit(fn, item): index for index, item in enumerate(items)}
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in sorted(done, key=lambda f: pending[f]):
                index = pending.pop(future)
                yield index, future.result()
    finally:
        _stop_pool(pool)


_DEFERRED: dict[str, Any] = {"depth": 0, "pending": None}


@contextlib.contextmanager
def signals_deferred():
    """Hold back the exception of an interrupt (Ctrl-C, SIGTERM) that arrives inside the
    block and raise it when the block ends.  Around forks: Python runs signal handlers in
    the at-fork hooks too (logging's lock release), where an exception is printed and
    dropped, so the interrupt would be lost.  Handlers take part through `defer`."""
    _DEFERRED["depth"] += 1
    try:
        yield
    finally:
        _DEFERRED["depth"] -= 1
        if _DEFERRED["depth"] == 0 and _DEFERRED["pending"] is not None:
            exc, _DEFERRED["pending"] = _DEFERRED["pending"], None
            raise exc


def defer(exc: BaseException) -> bool:
    """For signal handlers: inside `signals_deferred`, keep `exc` for the block's end and
    return True; outside it return False (the handler raises it now)."""
    if _DEFERRED["depth"]:
        if _DEFERRED["pending"] is None:
            _DEFERRED["pending"] = exc
        return True
    return False


PR_SET_PDEATHSIG = 1  # linux/prctl.h
WATCH_INTERVAL_S = 0.5


def die_with_parent(parent_pid: int) -> None:
    """Worker initializer: the worker ends when its parent does, however the parent ends
    (kill -9, SIGTERM, a crash), so no worker lives on under PID 1 holding its memory.

    On Linux the kernel sends SIGKILL when the parent dies (prctl PR_SET_PDEATHSIG);
    everywhere a daemon thread also checks the parent's pid every WATCH_INTERVAL_S (the
    prctl signal follows the parent *thread* that started the worker).  Ctrl-C is left to
    the parent (it stops the pool) and SIGTERM has its default meaning in a worker."""
    import signal
    import threading

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):  # no prctl: the watchdog below still works
            pass
    if os.getppid() != parent_pid:  # the parent died before the prctl call
        os._exit(1)

    def watch():
        while True:
            time.sleep(WATCH_INTERVAL_S)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watch, name="cryoalign-parent-watch", daemon=True).start()


def _stop_pool(pool) -> None:
    """Shut a process pool down at once: queued tasks cancelled, running workers ended
    (an interrupt must not wait for the tasks in flight)."""
    processes = list(getattr(pool, "_processes", {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in processes:
        if proc.is_alive():
            proc.terminate()
    for proc in processes:
        proc.join(timeout=5)


def _dask(fn, items, scheduler: str):
    try:
        from distributed import Client, as_completed
    except ImportError:
        raise InputError(
            "--scheduler needs Dask distributed: pip install 'cryoalign[dask]', "
            "or leave out --scheduler to use local worker processes"
        ) from None
    try:
        client = Client(scheduler, timeout="10s", set_as_default=False)
    except (OSError, TimeoutError, ValueError) as exc:
        raise InputError(
            f"cannot reach the Dask scheduler at {scheduler} ({one_line(exc)}); start one "
            "(`dask scheduler`, then `dask worker ADDRESS`) or leave out --scheduler"
        ) from None
    try:
        futures = client.map(fn, items, pure=False)
        index_of = {f.key: i for i, f in enumerate(futures)}
        for future in as_completed(futures, loop=client.loop):  # no default client is set
            yield index_of[future.key], future.result()
    finally:
        client.close()
