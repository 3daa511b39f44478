"""cryoalign.executor.run_tasks: the same (index, result) pairs inline, in local worker
processes and on a Dask cluster, whatever order the tasks finish in."""

from __future__ import annotations

import logging
import sys
import time

import pytest

from cryoalign import InputError
from cryoalign.executor import available_cores, resolve_jobs, run_tasks

ITEMS = [(k, 0.05 * (5 - k)) for k in range(6)]  # later items finish first


def slow_square(item):
    value, delay = item
    time.sleep(delay)
    return {"square": value * value, "value": value}


EXPECTED = [(k, {"square": k * k, "value": k}) for k in range(6)]


def test_inline_gives_every_index_in_order():
    assert list(run_tasks(slow_square, ITEMS, jobs=1)) == EXPECTED


def test_processes_give_the_same_results_with_their_indices():
    got = list(run_tasks(slow_square, ITEMS, jobs=2))
    assert sorted(got, key=lambda pair: pair[0]) == EXPECTED


def test_dask_cluster_gives_the_same_results():
    distributed = pytest.importorskip("distributed")
    import cloudpickle

    # the workers cannot import this test module: send its functions by value
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        with distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster:
            got = list(run_tasks(slow_square, ITEMS, scheduler=cluster.scheduler_address))
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    assert sorted(got, key=lambda pair: pair[0]) == EXPECTED


def test_no_items_runs_nothing():
    assert list(run_tasks(slow_square, [], jobs=2)) == []


def test_jobs_above_the_core_count_are_capped(caplog):
    cores = available_cores()
    with caplog.at_level(logging.INFO, logger="cryoalign"):
        assert resolve_jobs(cores + 7) == cores
    assert f"{cores + 7} workers asked for but this machine has {cores} cores: using {cores}" in caplog.text
    assert resolve_jobs(None) == cores and resolve_jobs(1) == 1
    got = list(run_tasks(slow_square, ITEMS[:3], jobs=cores + 7))
    assert sorted(got, key=lambda pair: pair[0]) == EXPECTED[:3]


def test_jobs_below_one_are_refused():
    with pytest.raises(InputError, match="jobs must be at least 1, got 0"):
        resolve_jobs(0)


def test_a_task_error_that_is_not_caught_stops_the_run():
    with pytest.raises(ZeroDivisionError):
        list(run_tasks(lambda x: 1 / x, [1, 0], jobs=1))


# ----------------------------------------------------------------------------- workers die with their parent
import os  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402

psutil = pytest.importorskip("psutil")


@pytest.fixture(scope="module")
def series(tmp_path_factory, data_dir):
    """Six small maps (the monomer and copies moved by random motions) and pairs.tsv."""
    import numpy as np
    from scipy.spatial.transform import Rotation

    from _maps import resampled_map
    from cryoalign import read_map, write_map
    from cryoalign import transform as tf

    folder = tmp_path_factory.mktemp("orphans")
    monomer = read_map(data_dir / "emd_5168_monomer.mrc.gz")
    rng = np.random.default_rng(3)
    names = []
    for k in range(6):
        T = tf.make(Rotation.random(random_state=k).as_matrix(), rng.uniform(-10, 10, 3))
        write_map(resampled_map(monomer, T, 1.742, rng), folder / f"m{k}.mrc")
        names.append(f"m{k}.mrc")
    (folder / "pairs.tsv").write_text(
        "source\ttarget\n" + "".join(f"{a}\t{b}\n" for a, b in zip(names, names[1:] + names[:1]))
    )
    return folder, names


def _command(kind, folder, names, out):
    base = [sys.executable, "-m", "cryoalign"]
    if kind == "batch":
        return base + [
            "batch",
            str(folder / "pairs.tsv"),
            "--out",
            str(out / "results.tsv"),
            "--jobs",
            "2",
            "--global",
            "--sampling",
            "5",
        ]
    if kind == "align":  # local alignment's mask search runs in worker processes too
        return base + [
            "align",
            str(folder / names[0]),
            str(folder / names[1]),
            "--local",
            "--jobs",
            "2",
            "--sampling",
            "3",
            "--json",
            str(out / "r.json"),
        ]
    if kind == "index":
        return base + ["index", *[str(folder / n) for n in names], "--db", str(out / "db"), "--jobs", "2"]
    return base + [
        "variance",
        str(folder / names[0]),
        *[str(folder / n) for n in names[1:]],
        "--out-dir",
        str(out / "var"),
        "--jobs",
        "2",
        "--sampling",
        "5",
    ]


def _workers(proc) -> list:
    try:
        return [
            c
            for c in psutil.Process(proc.pid).children(recursive=True)
            if "resource_tracker" not in " ".join(c.cmdline())
        ]
    except psutil.Error:
        return []


@pytest.mark.parametrize(
    "kind,sig",
    [
        ("batch", signal.SIGKILL),
        ("index", signal.SIGKILL),
        ("variance", signal.SIGKILL),
        ("batch", signal.SIGTERM),
        ("variance", signal.SIGTERM),
        ("align", signal.SIGKILL),
    ],
)
def test_workers_end_when_the_parent_is_killed(series, tmp_path, kind, sig):
    """Issue 20.4: `kill -9` (or SIGTERM) of the command leaves no worker behind under PID 1."""
    folder, names = series
    proc = subprocess.Popen(
        _command(kind, folder, names, tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 90
        while len(workers := _workers(proc)) < 2:
            assert proc.poll() is None, f"{kind} ended before it had two workers: {proc.stderr.read()[-500:]}"
            assert time.monotonic() < deadline, "no two workers within 90 s"
            time.sleep(0.05)
        pids = [w.pid for w in workers]
        os.kill(proc.pid, sig)
        proc.wait(timeout=30)
        gone, alive = psutil.wait_procs([psutil.Process(p) for p in pids if psutil.pid_exists(p)], timeout=5)
        assert not alive, f"workers {[p.pid for p in alive]} outlived their parent ({kind}, {sig!r})"
        if sig == signal.SIGTERM:
            assert proc.returncode == 143
            assert proc.stderr.read().decode().strip().endswith("cryoalign: terminated")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for p in psutil.process_iter():  # never leave a stray worker on the shared machine
            try:
                if p.ppid() == 1 and str(tmp_path) in " ".join(p.cmdline()):
                    p.kill()
            except psutil.Error:
                pass


def test_an_interrupt_while_workers_are_forked_is_raised_afterwards_not_lost():
    """Found by the `signal` fuzz family: SIGTERM arriving while the pool forked its workers
    ran the handler inside logging's at-fork hook, where the exception is printed and
    dropped ("Exception ignored in: _releaseLock"), and the command went on.  Inside
    `signals_deferred` the handler's exception is kept and raised when the block ends."""
    from cryoalign.executor import defer, signals_deferred

    ran_on = []
    with pytest.raises(KeyboardInterrupt):
        with signals_deferred():
            assert defer(KeyboardInterrupt())  # what the handler does inside the block
            assert defer(KeyboardInterrupt())  # a second one is the same interrupt
            ran_on.append("rest of the block")
    assert ran_on == ["rest of the block"]
    assert not defer(KeyboardInterrupt())  # outside the block: the handler raises at once
