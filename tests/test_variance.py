"""variance(): a series aligned to a reference, Welford statistics, resume, bad input."""

from __future__ import annotations

import os
import pathlib

import numpy as np
import pytest

from cryoalign import transform as tf
from cryoalign.apps import simulate
from cryoalign.apps.variation import WORK_DIR, read_contour_table, variance, welford
from cryoalign.errors import InputError
from cryoalign.io import read_map, read_model, transform_model, write_map

MODEL = pathlib.Path(__file__).resolve().parents[1] / "examples" / "5nsr.pdb.gz"  # PDB 5NSR, see examples/README.md
CHAINS = ["A", "B", "M"]
CHANGING = "M"
RESOLUTION_A, VOXEL_A = 10.0, 2.5  # smooth enough that trilinear resampling is faithful


def _series(folder, pattern, seed):
    """Simulated maps of 5NSR chains A, B (+ M when pattern has 1) in seeded random poses;
    returns (paths, {path: contour})."""
    if not MODEL.exists():
        pytest.skip("shared model 5nsr not available")
    st = read_model(MODEL)
    rng = np.random.default_rng(seed)
    paths, contours = [], {}
    for i, with_changing in enumerate(pattern):
        chains = CHAINS if with_changing else [c for c in CHAINS if c != CHANGING]
        T = np.eye(4) if i == 0 else tf.make(tf.random_rotation(rng), rng.uniform(-10.0, 10.0, 3))
        density = simulate.simulate(transform_model(st, T), RESOLUTION_A, chains=chains, voxel_A=VOXEL_A)
        path = str(folder / f"map{i}.mrc")
        write_map(density, path)
        paths.append(path)
        contours[path] = simulate.contour_for(density, simulate.model_mass_Da(st, chains))
    return paths, contours


@pytest.fixture(scope="module")
def coming_and_going(tmp_path_factory):
    folder = tmp_path_factory.mktemp("series")
    paths, contours = _series(folder, [1, 0, 1, 0], seed=11)
    out = folder / "out"
    result = variance(
        paths[0], paths, contours=contours, reference_contour=contours[paths[0]], out_dir=out, jobs=2, components=1
    )
    return dict(paths=paths, contours=contours, out=out, result=result, folder=folder)


def test_largest_variance_lies_on_the_changing_chain(coming_and_going):
    result = coming_and_going["result"]
    st = read_model(MODEL)
    var = result.variance
    changing = np.array([[a.pos.x, a.pos.y, a.pos.z] for res in st[0][CHANGING] for a in res])
    others = np.array([[a.pos.x, a.pos.y, a.pos.z] for c in CHAINS if c != CHANGING for res in st[0][c] for a in res])
    from scipy.spatial import cKDTree

    top = np.argsort(var.data.ravel())[-200:]
    xyz = var.index_to_world(np.array(np.unravel_index(top, var.data.shape))[::-1].T)
    near_changing = cKDTree(changing).query(xyz)[0]
    near_others = cKDTree(others).query(xyz)[0]
    assert np.mean(near_changing < near_others) > 0.9
    assert all(not r["excluded"] for r in result.records)
    assert result.components[0]["share"] > 0.7


def test_files_written(coming_and_going):
    out = coming_and_going["out"]
    for name in (
        "mean.mrc",
        "variance.mrc",
        "alignments.tsv",
        "variance.json",
        "variance_slices.png",
        "report.html",
        "component_1.mrc",
    ):
        assert (out / name).is_file(), name
    lines = (out / "alignments.tsv").read_text().splitlines()
    assert lines[0].split("\t")[:3] == ["map", "contour", "contour_estimated"]
    assert len(lines) == 5 and all(len(line.split("\t")) == 19 for line in lines)


def test_rerun_resumes_without_redoing_finished_alignments(coming_and_going, tmp_path):
    """An interrupted run (here: the records of two maps exist, as a killed run leaves them)
    resumes: finished records are not rewritten and variance.mrc is the same."""
    import shutil

    case = coming_and_going
    out = tmp_path / "out"
    (out / WORK_DIR).mkdir(parents=True)
    work = case["out"] / WORK_DIR
    finished = [r["key"] for r in case["result"].records[:2]]
    for key in finished:
        for suffix in (".json", ".npy"):
            shutil.copy2(work / f"{key}{suffix}", out / WORK_DIR / f"{key}{suffix}")
    before = {k: os.stat(out / WORK_DIR / f"{k}.json") for k in finished}
    variance(
        case["paths"][0],
        case["paths"],
        contours=case["contours"],
        reference_contour=case["contours"][case["paths"][0]],
        out_dir=out,
        jobs=1,
    )
    for key, st in before.items():
        now = os.stat(out / WORK_DIR / f"{key}.json")
        assert (now.st_ino, now.st_mtime_ns) == (st.st_ino, st.st_mtime_ns)
    assert len(list((out / WORK_DIR).glob("*.json"))) == 4
    np.testing.assert_array_equal(read_map(out / "variance.mrc").data, read_map(case["out"] / "variance.mrc").data)


def test_identical_maps_in_random_poses_have_near_zero_variance(tmp_path):
    paths, contours = _series(tmp_path, [1, 1, 1], seed=5)
    result = variance(
        paths[0], paths, contours=contours, reference_contour=contours[paths[0]], out_dir=tmp_path / "out", jobs=1
    )
    inside = result.mean.data > contours[paths[0]]
    relative = result.variance.data[inside].mean() / result.mean.data[inside].var()
    assert relative < 0.05


def test_welford_matches_numpy_var(tmp_path):
    rng = np.random.default_rng(2)
    stack = rng.normal(3.0, 2.0, size=(5, 40, 6, 7)).astype(np.float32)
    files = []
    for i, x in enumerate(stack):
        files.append(tmp_path / f"{i}.npy")
        np.save(files[-1], x)
    mean, var, _ = welford(files, stack.shape[1:])
    np.testing.assert_allclose(mean, stack.astype(np.float64).mean(0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(var, stack.astype(np.float64).var(0), rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------- bad input
def test_contour_table(tmp_path):
    (tmp_path / "a.mrc").write_bytes(b"")
    (tmp_path / "b.mrc").write_bytes(b"")
    table = tmp_path / "contours.tsv"
    table.write_text("# map\tcontour\n\na.mrc\t0.5\nb.mrc\t1.25  # EMDB level\n")
    assert read_contour_table(table) == {str(tmp_path / "a.mrc"): 0.5, str(tmp_path / "b.mrc"): 1.25}


def test_contour_table_errors(tmp_path):
    with pytest.raises(InputError) as err:
        read_contour_table(tmp_path / "none.tsv")
    assert str(err.value) == f"contour table not found: {tmp_path / 'none.tsv'}"
    (tmp_path / "a.mrc").write_bytes(b"")
    table = tmp_path / "t.tsv"
    table.write_text("a.mrc\t0.5\nmissing.mrc\t0.7\n")
    with pytest.raises(InputError) as err:
        read_contour_table(table)
    assert str(err.value) == (
        f"contour table {table} has 1 problem(s): line 2: map file not found: missing.mrc; fix the table and rerun"
    )
    table.write_text("# header\na.mrc 0.5 extra\n")
    with pytest.raises(InputError) as err:
        read_contour_table(table)
    assert str(err.value) == (
        f"contour table {table} has 1 problem(s): line 2: expected 'map<TAB>contour', got "
        "'a.mrc 0.5 extra'; fix the table and rerun"
    )
    table.write_text("a.mrc\thigh\n")
    with pytest.raises(InputError) as err:
        read_contour_table(table)
    assert str(err.value) == (
        f"contour table {table} has 1 problem(s): line 1: contour 'high' is not a number; fix the table and rerun"
    )


def test_a_broken_contour_table_reports_every_problem_with_its_line(tmp_path):
    """Issue 20.6: only the first problem was reported."""
    (tmp_path / "a.mrc").write_bytes(b"")
    table = tmp_path / "t.tsv"
    table.write_text("# map\tcontour\na.mrc\thigh\nmissing.mrc\t0.7\n\nb.mrc 1 2\na.mrc\tinf\n")
    with pytest.raises(InputError) as err:
        read_contour_table(table)
    assert str(err.value) == (
        f"contour table {table} has 4 problem(s): line 2: contour 'high' is not a number; line 3: map file not "
        "found: missing.mrc; line 5: expected 'map<TAB>contour', got 'b.mrc 1 2'; line 6: contour 'inf' is not a "
        "finite number; fix the table and rerun"
    )


def test_fewer_than_two_maps(tmp_path, data_dir):
    ref = data_dir / "emd_3695_5A.mrc.gz"
    with pytest.raises(InputError) as err:
        variance(ref, [ref], out_dir=tmp_path / "out")
    assert str(err.value) == (
        "variance needs at least two maps besides the reference, got 1; list every map "
        "of the series (the reference may be one of them)"
    )
    assert not (tmp_path / "out").exists()
