"""catalogue: index (resumable, keyed by file hash and parameters), search, bad input."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest

from _maps import resampled_map
from cryoalign import transform as tf
from cryoalign.apps import simulate
from cryoalign.apps.catalogue import (
    DB_FILE,
    FEATURES_DIR,
    format_table,
    index,
    open_db,
    prefilter,
    read_entries,
    search,
)
from cryoalign.apps.catalogue.signature import signature_distance
from cryoalign.config import AlignConfig
from cryoalign.errors import InputError
from cryoalign.io import read_map, read_model, write_map

CONTOURS = {"emd_3695_5A.mrc.gz": 1.25, "emd_3696_5A.mrc.gz": 0.69}
MAPS = ("emd_3695_5A.mrc.gz", "emd_3696_5A.mrc.gz", "emd_5168_monomer.mrc.gz", "emd_2566_crop.mrc.gz")
T_MOVE = tf.make(
    np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    @ np.array([[1.0, 0.0, 0.0], [0.0, 0.8, -0.6], [0.0, 0.6, 0.8]]),
    np.array([12.0, -7.0, 20.0]),
)


def _rows(db) -> list:
    conn = sqlite3.connect(os.path.join(db, DB_FILE))
    try:
        return conn.execute("SELECT map, file_hash, params_hash, features FROM entries ORDER BY id").fetchall()
    finally:
        conn.close()


def _mtimes(db) -> dict:
    folder = os.path.join(db, FEATURES_DIR)
    return {name: os.stat(os.path.join(folder, name)).st_mtime_ns for name in os.listdir(folder)}


@pytest.fixture(scope="module")
def built(tmp_path_factory, data_dir):
    """Four real maps indexed (two with given contours, two estimated) and a query: the
    EMD-3696 map moved by T_MOVE onto another grid."""
    folder = tmp_path_factory.mktemp("catalogue")
    maps = [str(data_dir / name) for name in MAPS]
    contours = {str(data_dir / k): v for k, v in CONTOURS.items()}
    db = str(folder / "db")
    summary = index(maps, db, contours=contours, jobs=1)
    moved = resampled_map(read_map(data_dir / "emd_3696_5A.mrc.gz"), T_MOVE, 4.0, np.random.default_rng(3))
    query = str(folder / "moved_3696.mrc")
    write_map(moved, query)
    result = search(query, db, contour=0.69, prefilter=2, refine=1, jobs=1)
    return dict(folder=folder, maps=maps, contours=contours, db=db, summary=summary, query=query, result=result)


def _copy_db(built, tmp_path) -> str:
    db = str(tmp_path / "db")
    shutil.copytree(built["db"], db, copy_function=shutil.copy2)
    return db


# ----------------------------------------------------------------------------- index
def test_index_stores_one_entry_per_map(built):
    summary, db = built["summary"], built["db"]
    assert (summary.maps, summary.indexed, summary.skipped, summary.errors, summary.entries) == (4, 4, 0, [], 4)
    entries = read_entries(db)
    assert [e["map"] for e in entries] == built["maps"]
    assert [e["contour_source"] for e in entries] == ["given", "given", "estimated", "estimated"]
    assert [e["contour"] for e in entries[:2]] == [1.25, 0.69]
    assert all(e["params"] == AlignConfig(sampling_A=5.0).prepare_params() for e in entries)
    for e in entries:
        assert e["features"] == f"{e['file_hash']}-{e['params_hash']}.npz"
        assert os.path.isfile(os.path.join(db, FEATURES_DIR, e["features"]))
        assert e["n_points"] > 0 and e["volume_A3"] > 0 and len(e["signature"]["d2_A"]) == 32
    conn = sqlite3.connect(os.path.join(db, DB_FILE))
    meta = dict(conn.execute("SELECT key, value FROM meta"))
    conn.close()
    assert meta == {
        "format": "cryoalign-catalogue",
        "schema_version": "2",
        "signature": "shape-1",
        "prefilter": "prefilter-1",
    }


def test_rerun_skips_finished_maps(built, tmp_path):
    db = _copy_db(built, tmp_path)
    rows, mtimes = _rows(db), _mtimes(db)
    summary = index(built["maps"], db, contours=built["contours"], jobs=1)
    assert (summary.indexed, summary.skipped, summary.entries) == (0, 4, 4)
    assert _rows(db) == rows and _mtimes(db) == mtimes


def test_changed_parameter_makes_new_entries(built, tmp_path):
    db = _copy_db(built, tmp_path)
    mtimes = _mtimes(db)
    small = built["maps"][2:]
    summary = index(small, db, config=AlignConfig(vector_sigma_A=7.0), jobs=1)
    assert (summary.indexed, summary.skipped, summary.entries) == (2, 0, 6)
    assert {k: v for k, v in _mtimes(db).items() if k in mtimes} == mtimes
    # and a changed contour is a new entry too
    level = read_entries(db)[2]["contour"] * 1.1
    summary = index(small[:1], db, contours={small[0]: level}, jobs=1)
    assert (summary.indexed, summary.entries) == (1, 7)
    assert read_entries(db)[-1]["contour"] == level


def test_index_results_do_not_depend_on_the_worker_count(built, tmp_path):
    db = str(tmp_path / "db2")
    index(built["maps"], db, contours=built["contours"], jobs=2)
    keep = (
        "map",
        "file_hash",
        "params_hash",
        "contour",
        "contour_source",
        "volume_A3",
        "n_points",
        "signature",
        "features",
    )
    one = [{k: e[k] for k in keep} for e in read_entries(built["db"])]
    two = sorted(({k: e[k] for k in keep} for e in read_entries(db)), key=lambda e: built["maps"].index(e["map"]))
    assert one == two


_KILLED_RUN = """
import json, sys
from cryoalign.apps.catalogue import index
args = json.loads(sys.argv[1])
index(args["maps"], args["db"], contours=args["contours"], jobs=1)
"""


def test_killed_index_run_resumes_without_repeating_work(built, tmp_path, data_dir):
    """A run killed (SIGKILL) after its first row: the rerun adds exactly the missing maps,
    never rewrites a finished entry's file, and no row appears twice."""
    st = read_model(data_dir / "3mfp.pdb.gz")
    maps = list(built["maps"][:2])
    for resolution in (6.0, 7.0, 8.0, 9.0):
        path = str(tmp_path / f"3mfp_{resolution:g}A.mrc")
        write_map(simulate.simulate(st, resolution), path)
        maps.append(path)
    db = str(tmp_path / "db")
    args = json.dumps(dict(maps=maps, db=db, contours=built["contours"]))
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED_RUN, args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 60
    rows = []
    while time.monotonic() < deadline and proc.poll() is None:
        if os.path.exists(os.path.join(db, DB_FILE)):
            try:
                rows = _rows(db)
            except sqlite3.OperationalError:  # the writer holds the lock
                rows = []
            if rows:
                break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    rows, mtimes = _rows(db), _mtimes(db)
    assert 1 <= len(rows) < len(maps), (len(rows), proc.stderr.read().decode()[-2000:])
    finished = {row[3] for row in rows}
    summary = index(maps, db, contours=built["contours"], jobs=1)
    assert (summary.skipped, summary.indexed, summary.entries) == (len(rows), len(maps) - len(rows), len(maps))
    after = _rows(db)
    assert after[: len(rows)] == rows
    assert sorted(row[0] for row in after) == sorted(maps)  # every map exactly once
    assert {k: v for k, v in _mtimes(db).items() if k in finished} == {k: mtimes[k] for k in finished}


# ----------------------------------------------------------------------------- search
def test_search_finds_a_moved_copy_with_its_motion(built, data_dir):
    result = built["result"]
    best = result.hits[0]
    assert best.map == str(data_dir / "emd_3696_5A.mrc.gz")
    assert result.searched == 2 and result.entries == 4 and len(result.hits) == 2
    angle, shift = tf.pose_error(best.T_query_entry, T_MOVE, _centre(data_dir / "emd_3696_5A.mrc.gz", 0.69))
    assert angle < 3.0 and shift < 2.0, (angle, shift)
    assert best.score > 0.9 > result.hits[1].score


def _centre(path, contour):
    m = read_map(path)
    return m.index_to_world(np.argwhere(m.data >= contour)[:, ::-1]).mean(0)


def test_search_json_and_table(built):
    from cryoalign import __version__

    out = json.loads(json.dumps(built["result"].to_json()))
    assert out["version"] == __version__ and out["query"] == built["query"]
    assert (out["searched"], out["entries"]) == (2, 4)
    params = out["params"]
    assert (params["refine"], params["mode"], params["sampling_A"], params["contour"]) == (1, "global", 5.0, 0.69)
    hit = out["hits"][0]
    assert {"map", "score", "matrix", "signature_distance", "correlation", "rank"} <= set(hit)
    assert hit["rank"] == 1 and np.asarray(hit["matrix"]).shape == (4, 4)
    assert [h["rank"] for h in out["hits"]] == [1, 2]
    table = format_table(built["result"])
    assert "emd_3696_5A.mrc.gz" in table.splitlines()[2] and "2 of 4 entries aligned" in table


def test_signature_is_rotation_invariant(built):
    entries = read_entries(built["db"])
    query_sig = [e for e in entries if e["map"].endswith("emd_3696_5A.mrc.gz")][0]["signature"]
    d = signature_distance(query_sig, [e["signature"] for e in entries])
    assert d[1] == 0.0 and np.all(d[[0, 2, 3]] > 0.3)


def test_prefilter_vector_is_rotation_invariant(built):
    """The pre-filter vector of the moved, regridded copy is nearest to its original's, and
    by far: under half the distance of the next entry (a rotated grid changes the vector
    only by resampling)."""
    hits = built["result"].hits
    assert hits[0].map.endswith("emd_3696_5A.mrc.gz")
    assert hits[0].signature_distance < 0.5 * hits[1].signature_distance
    entries = read_entries(built["db"])
    matrix = np.stack([e["vector"] for e in entries])
    assert matrix.shape == (4, prefilter.VECTOR_LENGTH) and matrix.dtype == np.float32
    d = prefilter.distances(matrix[1], matrix)
    assert d[1] == 0.0 and np.all(d[[0, 2, 3]] > 0)


def _as_schema_1(db):
    """Turn a catalogue into what cryoalign 0.3 wrote: no vector column, schema 1."""
    conn = sqlite3.connect(os.path.join(db, DB_FILE))
    with conn:
        conn.execute("ALTER TABLE entries DROP COLUMN vector")
        conn.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
        conn.execute("DELETE FROM meta WHERE key = 'prefilter'")
    conn.close()


def test_a_catalogue_of_0_3_is_upgraded_by_index_without_preparing_again(built, tmp_path):
    db = _copy_db(built, tmp_path)
    _as_schema_1(db)
    mtimes = _mtimes(db)
    with pytest.raises(InputError) as err:
        search(built["query"], db, contour=0.69, prefilter=2, refine=1, jobs=1)
    assert str(err.value) == (
        f"the catalogue {db} was written by an earlier cryoalign (no pre-filter vectors of "
        f"version {prefilter.VERSION}); run `cryoalign index --db {db}` once to add them from "
        "the stored features (no map is read or prepared again)"
    )
    summary = index([], db, jobs=1)
    assert (summary.indexed, summary.entries) == (0, 4)
    assert _mtimes(db) == mtimes  # no entry prepared again
    assert [e["vector"].tolist() for e in read_entries(db)] == [e["vector"].tolist() for e in read_entries(built["db"])]
    again = search(built["query"], db, contour=0.69, prefilter=2, refine=1, jobs=1)
    assert _hits(again) == _hits(built["result"])


def test_an_interrupted_upgrade_is_named_and_finished_by_the_next_index(built, tmp_path):
    db = _copy_db(built, tmp_path)
    conn = sqlite3.connect(os.path.join(db, DB_FILE))
    with conn:
        conn.execute("UPDATE entries SET vector = NULL WHERE id > 2")
    conn.close()
    with pytest.raises(InputError) as err:
        search(built["query"], db, contour=0.69, jobs=1)
    assert str(err.value) == (
        f"some entries of the catalogue {db} have no pre-filter vector (an interrupted "
        f"upgrade); run `cryoalign index --db {db}` once to add them"
    )
    index([], db, jobs=2)
    assert [e["vector"].tolist() for e in read_entries(db)] == [e["vector"].tolist() for e in read_entries(built["db"])]


def _hits(result):
    return [{k: v for k, v in h.items()} for h in result.to_json()["hits"]]


def test_search_does_not_depend_on_the_executor(built):
    two = search(built["query"], built["db"], contour=0.69, prefilter=2, refine=1, jobs=2)
    assert _hits(two) == _hits(built["result"])


def test_search_on_a_dask_cluster(built):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        result = search(
            built["query"], built["db"], contour=0.69, prefilter=2, refine=1, scheduler=cluster.scheduler_address
        )
    assert _hits(result) == _hits(built["result"])


# ----------------------------------------------------------------------------- bad input
def test_missing_map_file(tmp_path, built):
    missing = str(tmp_path / "nowhere.mrc")
    with pytest.raises(InputError) as err:
        index([built["maps"][0], missing], str(tmp_path / "db"))
    assert str(err.value) == (f"map file(s) not found: {missing}; check the path(s) (nothing was indexed)")
    assert not (tmp_path / "db").exists()


def test_folder_that_is_not_a_catalogue(tmp_path, built):
    folder = tmp_path / "other"
    folder.mkdir()
    (folder / "notes.txt").write_text("hello")
    expected = (
        f"{folder} is not a cryoalign catalogue (it holds files but no catalogue.sqlite); give the "
        "folder index wrote, or a new or empty folder to build one"
    )
    with pytest.raises(InputError) as err:
        index(built["maps"][:1], str(folder))
    assert str(err.value) == expected
    with pytest.raises(InputError) as err:
        search(built["query"], str(folder))
    assert str(err.value) == expected


def test_catalogue_file_that_is_not_sqlite(tmp_path, built):
    db = tmp_path / "db"
    db.mkdir()
    (db / DB_FILE).write_bytes(b"not a database at all, just some text " * 100)
    with pytest.raises(InputError) as err:
        search(built["query"], str(db))
    assert str(err.value) == (
        f"{db / DB_FILE} is not a cryoalign catalogue (file is not a database); give the "
        "folder index wrote, or move the file away and index again"
    )


def test_catalogue_with_the_wrong_schema(tmp_path, built):
    db = tmp_path / "db"
    db.mkdir()
    conn = sqlite3.connect(db / DB_FILE)
    with conn:
        conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
        conn.execute("INSERT INTO meta VALUES ('format', 'someone-else')")
    conn.close()
    with pytest.raises(InputError) as err:
        index(built["maps"][:1], str(db))
    assert str(err.value) == (
        f"{db / DB_FILE} is not a cryoalign catalogue (format 'someone-else', expected "
        "'cryoalign-catalogue'); give the folder index wrote, or move the file away and "
        "index again"
    )


def test_search_with_other_parameters(built):
    with pytest.raises(InputError) as err:
        search(built["query"], built["db"], contour=0.69, config=AlignConfig(sampling_A=6.0, vector_sigma_A=7.0))
    assert str(err.value) == (
        f"the catalogue {built['db']} was built with other parameters: sampling_A=5.0 (the "
        "search uses 6.0), vector_sigma_A=8.0 (the search uses 7.0); search with the same "
        "parameters, or index the maps again with these ones"
    )


def test_search_an_empty_or_missing_catalogue(tmp_path, built):
    db = str(tmp_path / "db")
    open_db(db, create=True).close()
    with pytest.raises(InputError) as err:
        search(built["query"], db)
    assert str(err.value) == (
        f"the catalogue {db} holds no entries; build one with `cryoalign index MAP... "
        f"--db {db}` (cryoalign.index(maps, '{db}'))"
    )
    nowhere = str(tmp_path / "nowhere")
    with pytest.raises(InputError) as err:
        search(built["query"], nowhere)
    assert str(err.value) == (
        f"catalogue not found: {nowhere} does not exist; build one with `cryoalign index "
        f"MAP... --db {nowhere}` (cryoalign.index(maps, '{nowhere}'))"
    )


def test_a_bad_map_is_reported_and_tried_again(tmp_path, built):
    bad = tmp_path / "bad.mrc"
    bad.write_bytes(b"\x00" * 100)
    db = str(tmp_path / "db")
    summary = index([str(bad), built["maps"][2]], db, jobs=1)
    assert (summary.indexed, summary.entries) == (1, 1)
    assert [m for m, _ in summary.errors] == [str(bad)] and "bad.mrc" in summary.errors[0][1]
    again = index([str(bad), built["maps"][2]], db, jobs=1)
    assert (again.indexed, again.skipped, len(again.errors)) == (0, 1, 1)


def test_a_part_of_the_query_ranks_below_the_whole_by_its_coverage(tmp_path, data_dir):
    # the alignment score is taken over the entry's points: two of three copies fit the
    # three-copy query as well as all three do; the coverage of the query tells them apart
    from _maps import three_copies

    _, tri, c3, _ = three_copies(data_dir)
    paths, contours = {}, {}
    for name, chains, resolution, T in (
        ("three", None, 8.0, np.eye(4)),
        ("two", ["A", "B"], 8.0, np.eye(4)),
        ("query", None, 7.0, T_MOVE),
    ):
        from _maps import moved_structure

        density = simulate.simulate(moved_structure(tri, T), resolution, chains=chains, voxel_A=2.5)
        paths[name] = str(tmp_path / f"{name}.mrc")
        write_map(density, paths[name])
        contours[paths[name]] = simulate.contour_for(density, simulate.model_mass_Da(tri, chains))
    index([paths["three"], paths["two"]], tmp_path / "db", contours=contours, jobs=1)
    result = search(paths["query"], tmp_path / "db", contour=contours[paths["query"]], prefilter=None, jobs=1)
    three, two = result.hits
    assert (three.map, two.map) == (paths["three"], paths["two"])
    assert three.coverage > 0.9 and 0.5 < two.coverage < 0.8, (three.coverage, two.coverage)
    assert two.alignment_score > 0.9 * three.alignment_score  # the part fits as well ...
    for hit in result.hits:  # ... and is ranked down by its coverage
        assert hit.score == pytest.approx(hit.alignment_score * hit.coverage, rel=1e-12)
    centre = _centre(paths["three"], contours[paths["three"]])
    errors = [tf.pose_error(three.T_query_entry, T_MOVE @ np.linalg.matrix_power(c3, k), centre) for k in range(3)]
    angle, shift = min(errors)  # up to the C3 turn
    assert angle < 2.0 and shift < 1.5, errors


def test_the_screen_ranks_by_the_final_score_so_the_closer_resolution_is_refined(tmp_path, data_dir):
    # one molecule stored at 6 Å and at 12 Å; a 6 Å query: the vector agreement of the two
    # at the screen pose is alike (0.91-0.96), the map correlation is not, and the screen
    # score carries it (the final score's form), so the one entry aligned fully (refine=1)
    # is the 6 Å one and the screened one reports its correlation (None before)
    from _maps import moved_structure

    mono = read_model(data_dir / "3mfp.pdb.gz")
    paths, contours = {}, {}
    for name, resolution, T in (("fine", 6.0, np.eye(4)), ("coarse", 12.0, tf.make(np.eye(3), [30.0, 0, 0]))):
        density = simulate.simulate(moved_structure(mono, T), resolution, voxel_A=2.5)
        paths[name] = str(tmp_path / f"{name}.mrc")
        write_map(density, paths[name])
        contours[paths[name]] = simulate.contour_for(density, simulate.model_mass_Da(mono))
    query = simulate.simulate(moved_structure(mono, T_MOVE), 6.0, voxel_A=2.5)
    query_path = str(tmp_path / "query.mrc")
    write_map(query, query_path)
    index(list(paths.values()), tmp_path / "db", contours=contours, jobs=1)
    result = search(
        query_path, tmp_path / "db", contour=simulate.contour_for(query, simulate.model_mass_Da(mono)), refine=1, jobs=1
    )
    best, screened = result.hits
    assert best.map == paths["fine"], [(h.map, h.score) for h in result.hits]
    assert screened.correlation is not None and 0.0 < screened.correlation < best.correlation
    assert screened.score == pytest.approx(screened.alignment_score * screened.coverage, rel=1e-12)
