"""cryoalign.executor.run_tasks: the same (index, result) pairs inline, in local worker
processes and on a Dask cluster, whatever order the tasks finish in."""
from __future__ import annotations

import logging
import sys
import time

import pytest

from cryoalign import InputError
from cryoalign.executor import available_cores, resolve_jobs, run_tasks

ITEMS = [(k, 0.05 * (5 - k)) for k in range(6)]     # later items finish first


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
        with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                      dashboard_address=None) as cluster:
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
