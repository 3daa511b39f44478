"""cryoalign.batch: a table of pairs in, one RESULTS.tsv line per pair, resumable.

Tiny real maps from tests/data (the EMD-5168 actin monomer against a copy of itself moved
by a known motion, EMD-3695 against EMD-3696) and one broken map that must give an
error line without stopping the others."""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from _maps import resampled_map
from cryoalign import AlignConfig, InputError, read_map, write_map
from cryoalign import transform as tf
from cryoalign.apps.batching import RESULT_COLUMNS, batch
from cryoalign.apps.catalogue import index
from test_emdb import V3_HEADER, archive, map_gz  # noqa: F401  (local EMDB server fixtures)

T_KNOWN = tf.make(
    Rotation.from_rotvec(np.deg2rad(25.0) * np.array([0.6, -0.48, 0.64])).as_matrix(), np.array([12.0, -7.0, 5.0])
)
MAP_COLUMNS = [c for c in RESULT_COLUMNS if c != "time_s"]  # everything but the time is reproducible


def fast_config() -> AlignConfig:
    """Whole-map alignment at a 5 Å sampling interval (auto mode would align EMD-3695
    locally in EMD-3696, several times slower)."""
    return AlignConfig(mode="global", sampling_A=5.0)


@pytest.fixture(scope="module")
def maps(tmp_path_factory, data_dir):
    """maps/ with the monomer, the monomer moved by T_KNOWN, the two 5 Å maps and a broken map."""
    folder = tmp_path_factory.mktemp("batch") / "maps"
    folder.mkdir()
    for name in ("emd_5168_monomer.mrc.gz", "emd_3695_5A.mrc.gz", "emd_3696_5A.mrc.gz"):
        shutil.copy(data_dir / name, folder / name)
    monomer = read_map(data_dir / "emd_5168_monomer.mrc.gz")
    write_map(resampled_map(monomer, T_KNOWN, 1.742, np.random.default_rng(0)), folder / "moved.mrc")
    (folder / "broken.mrc").write_bytes(b"this is not a map\n" * 100)
    return folder


def _table(folder, rows, header="source\ttarget\tsource_contour\ttarget_contour"):
    path = folder / "pairs.tsv"
    path.write_text(header + "\n" + "".join("\t".join(r) + "\n" for r in rows))
    return path


PAIRS = [
    ("maps/emd_5168_monomer.mrc.gz", "maps/moved.mrc", "", ""),
    ("maps/emd_3695_5A.mrc.gz", "maps/emd_3696_5A.mrc.gz", "1.25", "0.69"),
    ("maps/broken.mrc", "maps/emd_5168_monomer.mrc.gz", "", ""),
]


@pytest.fixture
def work(tmp_path, maps):
    """A fresh folder holding maps/ (linked) and pairs.tsv."""
    (tmp_path / "maps").symlink_to(maps, target_is_directory=True)
    return tmp_path


def _rows(path) -> list[dict]:
    lines = path.read_text().splitlines()
    assert lines[0].split("\t") == list(RESULT_COLUMNS)
    return [dict(zip(RESULT_COLUMNS, line.split("\t"))) for line in lines[1:]]


def _matrix(row) -> np.ndarray:
    return np.array([float(v) for v in row["matrix"].split(",")]).reshape(4, 4)


def test_one_line_per_pair_with_known_motion_recovered_and_errors_recorded(work):
    out = work / "results.tsv"
    summary = batch(_table(work, PAIRS), out, jobs=1, config=fast_config())
    assert (summary.pairs, summary.ran, summary.ok, summary.errors, summary.skipped) == (3, 3, 2, 1, 0)
    rows = {(r["source"], r["target"]): r for r in _rows(out)}
    assert len(rows) == 3

    moved = rows[PAIRS[0][:2]]
    assert moved["status"] == "ok" and moved["error"] == ""
    angle_err, shift_err = tf.pose_error(_matrix(moved), T_KNOWN, read_map(work / PAIRS[0][0]).origin_A)
    assert angle_err < 2.0 and shift_err < 1.5, (angle_err, shift_err)
    assert float(moved["score"]) > 0.9
    assert moved["source_contour"] == "" and float(moved["source_contour_used"]) > 0  # estimated

    real = rows[PAIRS[1][:2]]
    assert real["status"] == "ok"
    assert (real["source_contour"], real["target_contour"]) == ("1.25", "0.69")
    assert (real["source_contour_used"], real["target_contour_used"]) == ("1.25", "0.69")
    assert float(real["correlation"]) > 0.5 and float(real["score"]) > 0.3  # score = correlation x agreement
    assert len(real["matrix"].split(",")) == 16 and _matrix(real)[3].tolist() == [0, 0, 0, 1]

    broken = rows[PAIRS[2][:2]]
    assert broken["status"] == "error" and broken["matrix"] == "" and broken["score"] == ""
    assert "is not an MRC/CCP4 map" in broken["error"] and "broken.mrc" in broken["error"]

    before = out.read_bytes()
    again = batch(work / "pairs.tsv", out, jobs=1, config=fast_config())
    assert (again.ran, again.skipped) == (0, 3)
    assert out.read_bytes() == before


def test_rerun_cuts_a_partial_last_line_and_finishes_the_rest(work):
    out = work / "results.tsv"
    pairs = _table(work, [PAIRS[0], PAIRS[2]])
    batch(pairs, out, jobs=1, config=fast_config())
    header, first, second = out.read_text().splitlines()
    out.write_text(header + "\n" + first + "\n" + second[:25])  # killed while writing the second line
    summary = batch(pairs, out, jobs=1, config=fast_config())
    assert (summary.ran, summary.skipped) == (1, 1)
    rows = _rows(out)
    assert sorted((r["source"], r["status"]) for r in rows) == [
        ("maps/broken.mrc", "error"),
        ("maps/emd_5168_monomer.mrc.gz", "ok"),
    ]
    assert out.read_text().endswith("\n")


def test_a_table_written_before_the_from_db_column_is_resumed(work):
    # 0.2.0 wrote RESULTS.tsv without from_db: the column is added and the finished pairs kept
    out = work / "results.tsv"
    pairs = _table(work, [PAIRS[0], PAIRS[2]])
    batch(pairs, out, jobs=1, config=fast_config())
    header, first, _ = out.read_text().splitlines()
    assert header.endswith("\tfrom_db\toptions") and first.endswith(
        "\t" + json.dumps({"mode": "global", "sampling_A": 5.0}, separators=(",", ":"))
    )
    old_first = first[: first.rindex("\t")]  # without the options
    out.write_text(header[: -len("\tfrom_db\toptions")] + "\n" + old_first[:-1] + "\n")  # as 0.2.0 left it
    summary = batch(pairs, out, jobs=1, config=fast_config())
    assert (summary.ran, summary.skipped) == (1, 1)
    assert out.read_text().splitlines()[:2] == [header, old_first + "\t"]  # options unknown: blank
    assert sorted(r["status"] for r in _rows(out)) == ["error", "ok"]


def test_the_confidence_column_holds_the_verdict(work):
    """Issue 20.6: it held the whole confidence JSON object."""
    out = work / "results.tsv"
    batch(_table(work, [PAIRS[0]]), out, jobs=1, config=fast_config())
    assert _rows(out)[0]["confidence"] in ("high", "medium", "low")


def test_a_rerun_with_other_options_is_refused_naming_them(work):
    """Issue 20.6: a rerun with other options silently reused the old lines."""
    out = work / "results.tsv"
    pairs = _table(work, [PAIRS[0], PAIRS[2]])
    command = [sys.executable, "-m", "cryoalign", "batch", str(pairs), "--out", str(out), "--jobs", "1"]
    first = subprocess.run(command + ["--global", "--sampling", "5"], capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    before = out.read_bytes()
    again = subprocess.run(command + ["--global", "--sampling", "4"], capture_output=True, text=True)
    assert again.returncode == 2
    assert again.stderr.strip().splitlines() == [
        f"cryoalign: error: {out} holds 2 line(s) made with other options (--global, --sampling 5.0) than this "
        "run (--global, --sampling 4.0); rerun with the options of those lines, or give another --out (one "
        "results table holds one set of options)"
    ]
    assert out.read_bytes() == before
    same = subprocess.run(command + ["--global", "--sampling", "5", "--jobs", "2"], capture_output=True, text=True)
    assert same.returncode == 0 and "0 run now" in same.stdout and "2 finished earlier" in same.stdout


def test_retry_errors_runs_failed_pairs_again_keeping_one_line_each(work):
    out = work / "results.tsv"
    pairs = _table(work, [PAIRS[0], PAIRS[2]])
    batch(pairs, out, jobs=1, config=fast_config())
    summary = batch(pairs, out, jobs=1, config=fast_config(), retry_errors=True)
    assert (summary.ran, summary.errors, summary.skipped) == (1, 1, 1)
    assert sorted(r["status"] for r in _rows(out)) == ["error", "ok"]


def _wait_for_a_result_line(proc, out, seconds, what):
    """Until the batch in `proc` has written the header and one result line to `out`."""
    deadline = time.monotonic() + seconds
    while not (out.exists() and out.read_text().count("\n") >= 2):  # header and one result
        assert proc.poll() is None, f"the batch ended before it could be {what}"
        assert time.monotonic() < deadline, f"no result line within {seconds} s"
        time.sleep(0.02)


def test_killed_run_resumes_without_repeating_a_pair(work):
    # a quick pair first (its line is the signal to kill), then a slower one (killed in flight)
    rows = [
        PAIRS[0],
        PAIRS[1],
        ("maps/moved.mrc", "maps/emd_5168_monomer.mrc.gz", "", ""),
        ("maps/emd_5168_monomer.mrc.gz", "maps/emd_5168_monomer.mrc.gz", "", ""),
    ]
    pairs, out = _table(work, rows), work / "results.tsv"
    settings = json.dumps(dataclasses.asdict(fast_config()))
    code = textwrap.dedent("""
        import json, sys
        from cryoalign import AlignConfig
        from cryoalign.apps.batching import batch
        batch(sys.argv[1], sys.argv[2], jobs=1, config=AlignConfig(**json.loads(sys.argv[3])))
    """)
    proc = subprocess.Popen([sys.executable, "-c", code, str(pairs), str(out), settings])
    try:
        _wait_for_a_result_line(proc, out, 60, "killed")
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    done_before = len(_rows(out))
    assert 1 <= done_before < 4
    summary = batch(pairs, out, jobs=1, config=fast_config())
    assert summary.skipped == done_before and summary.ran == 4 - done_before
    keys = [(r["source"], r["target"]) for r in _rows(out)]
    assert sorted(keys) == sorted(r[:2] for r in rows)  # every pair exactly once
    assert all(r["status"] == "ok" for r in _rows(out))


# ----------------------------------------------------------------------------- bad tables
def test_missing_column_is_named(work):
    path = _table(work, [("maps/moved.mrc", "1.0")], header="source\tsource_contour")
    with pytest.raises(InputError) as err:
        batch(path, work / "results.tsv")
    assert str(err.value) == (
        f"{path}: the header line lacks the column(s) target (found: source, source_contour); the first "
        "line must name the tab-separated columns source and target, optionally source_contour and target_contour"
    )
    assert not (work / "results.tsv").exists()


def test_every_bad_row_is_listed_with_its_line_number(work):
    path = work / "pairs.tsv"
    path.write_text(
        "# a comment line\nsource\ttarget\tsource_contour\n"
        "maps/moved.mrc\tmaps/missing.mrc\t\n"
        "\n"
        "maps/nowhere.mrc\tmaps/moved.mrc\tabc\n"
        "maps/moved.mrc\tEMD-1234\tnan\n"
        "maps\tmaps/moved.mrc\t1\textra\n"
        "\tmaps/moved.mrc\n"
    )
    with pytest.raises(InputError) as err:
        batch(path, work / "results.tsv")
    assert str(err.value) == (
        f"{path} has 6 problem(s): line 3: target file not found: maps/missing.mrc; "
        "line 5: source file not found: maps/nowhere.mrc; line 5: source_contour 'abc' is not a number; "
        "line 6: source_contour 'nan' is not a number; line 7: 4 tab-separated fields, the header names 3; "
        "line 8: no source; fix the table and rerun"
    )


def test_long_problem_lists_are_cut_after_ten(work):
    path = _table(work, [(f"maps/missing_{k}.mrc", "maps/moved.mrc", "", "") for k in range(13)])
    with pytest.raises(
        InputError,
        match=r"has 13 problem\(s\): line 2: .* line 11: source file not found: "
        r"maps/missing_9.mrc; and 3 more; fix the table and rerun$",
    ):
        batch(path, work / "results.tsv")


def test_a_results_file_of_another_kind_is_refused(work):
    out = work / "results.tsv"
    out.write_text("something\telse\n")
    with pytest.raises(InputError, match="is not a cryoalign batch results table"):
        batch(_table(work, [PAIRS[0]]), out)
    assert out.read_text() == "something\telse\n"


# ----------------------------------------------------------------------------- executors
def test_dask_cluster_gives_the_same_lines_as_local_processes(work):
    distributed = pytest.importorskip("distributed")
    pairs = _table(work, [PAIRS[0], PAIRS[2], ("maps/moved.mrc", "maps/emd_5168_monomer.mrc.gz", "", "")])
    local_out, dask_out = work / "local.tsv", work / "dask.tsv"
    batch(pairs, local_out, jobs=2, config=fast_config())
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        summary = batch(pairs, dask_out, scheduler=cluster.scheduler_address, config=fast_config())
    assert (summary.ran, summary.ok, summary.errors) == (3, 2, 1)

    def key(row):
        return row["source"], row["target"]

    local_rows = sorted(({c: r[c] for c in MAP_COLUMNS} for r in _rows(local_out)), key=key)
    dask_rows = sorted(({c: r[c] for c in MAP_COLUMNS} for r in _rows(dask_out)), key=key)
    assert dask_rows == local_rows  # matrices identical to the last digit


def test_unreachable_scheduler_is_an_input_error(work):
    pytest.importorskip("distributed")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    with pytest.raises(InputError, match=f"cannot reach the Dask scheduler at {address}"):
        batch(_table(work, [PAIRS[0]]), work / "results.tsv", scheduler=address, config=fast_config())


# ----------------------------------------------------------------------------- EMDB IDs
def test_emdb_ids_in_the_table_use_the_header_contour(work, archive, map_gz, monkeypatch):  # noqa: F811
    archive.add(1234, map_bytes=map_gz, header=V3_HEADER.replace("0.0123", "0.1"))
    monkeypatch.setenv("CRYOALIGN_EMDB_SERVER", archive.url)
    monkeypatch.setenv("CRYOALIGN_CACHE", str(work / "cache"))
    out = work / "results.tsv"
    summary = batch(
        _table(work, [("EMD-1234", "EMD-1234", "", ""), ("emd:1234", "EMD-1234", "0.15", "")]),
        out,
        jobs=1,
        config=fast_config(),
    )
    assert (summary.ok, summary.errors) == (2, 0), _rows(out)
    rows = {r["source"]: r for r in _rows(out)}
    assert (rows["EMD-1234"]["source_contour"], rows["EMD-1234"]["source_contour_used"]) == ("", "0.1")
    assert (rows["emd:1234"]["source_contour"], rows["emd:1234"]["source_contour_used"]) == ("0.15", "0.15")
    assert rows["emd:1234"]["target_contour_used"] == "0.1"
    assert os.path.exists(work / "cache" / "emdb" / "EMD-1234" / "emd_1234.map.gz")


# ----------------------------------------------------------------------------- a catalogue (db=, --db)
# The catalogue holds the monomer (contour estimated), EMD-3695 at 1.25 and EMD-3696 at 0.69.
INDEXED = {"emd_5168_monomer.mrc.gz": None, "emd_3695_5A.mrc.gz": 1.25, "emd_3696_5A.mrc.gz": 0.69}
DB_PAIRS = [
    PAIRS[0],  # source indexed
    PAIRS[1],  # both, at the table's contours
    ("maps/moved.mrc", "maps/emd_5168_monomer.mrc.gz", "", ""),  # target indexed
    ("maps/emd_3695_5A.mrc.gz", "maps/emd_3696_5A.mrc.gz", "", "0.69"),  # blank: estimated, not 1.25
    PAIRS[2],
]  # broken source: an error line
FROM_DB = ["source", "source,target", "target", "target", ""]
KEY_COLUMNS = ["source", "target", "source_contour", "target_contour"]


@pytest.fixture(scope="module")
def db(maps, tmp_path_factory):
    """The catalogue of INDEXED, prepared at fast_config's sampling interval (5 Å, the catalogue's default)."""
    folder = tmp_path_factory.mktemp("catalogue") / "db"
    contours = {str(maps / name): c for name, c in INDEXED.items() if c is not None}
    summary = index([str(maps / name) for name in INDEXED], folder, contours=contours, config=fast_config(), jobs=1)
    assert summary.indexed == 3 and not summary.errors
    return folder


def _prepared_maps(monkeypatch) -> list:
    """The file names of the maps prepared (stages 1-3) from now on in this process (jobs=1 runs the
    pairs here): the real `prepare`, counted."""
    prepare_module = importlib.import_module("cryoalign.core.prepare")
    pipeline = importlib.import_module("cryoalign.core.pipeline")
    real, names = prepare_module.prepare, []

    def counted(density, *args, **kwargs):
        names.append(os.path.basename(density.path))
        return real(density, *args, **kwargs)

    monkeypatch.setattr(prepare_module, "prepare", counted)
    monkeypatch.setattr(pipeline, "prepare", counted)
    return names


def _lines(path, columns=MAP_COLUMNS) -> list[dict]:
    """The rows of a results table (only `columns`), sorted by the pair's key."""
    return sorted(({c: r[c] for c in columns} for r in _rows(path)), key=lambda r: [r[c] for c in KEY_COLUMNS])


def test_catalogue_maps_are_loaded_not_prepared_and_the_lines_are_unchanged(work, db, monkeypatch):
    pairs = _table(work, DB_PAIRS)
    plain, stored = work / "plain.tsv", work / "stored.tsv"
    batch(pairs, plain, jobs=1, config=fast_config())  # the catalogue's sampling interval, without it
    prepared = _prepared_maps(monkeypatch)
    summary = batch(pairs, stored, jobs=1, config=fast_config(), db=db)
    assert (summary.ran, summary.ok, summary.errors) == (5, 4, 1)
    assert sorted(prepared) == ["emd_3695_5A.mrc.gz", "moved.mrc", "moved.mrc"]  # only what is not indexed
    assert [r["from_db"] for r in _rows(stored)] == FROM_DB
    assert all(r["from_db"] == "" for r in _rows(plain))
    same = [c for c in MAP_COLUMNS if c != "from_db"]
    assert _lines(stored, same) == _lines(plain, same)  # matrices identical to the last digit

    # a rerun with the catalogue skips the finished pairs and writes the others as before
    before = _lines(stored)
    header, *lines = stored.read_text().splitlines()
    stored.write_text("\n".join([header] + lines[:2]) + "\n")
    again = batch(pairs, stored, jobs=1, config=fast_config(), db=db)
    assert (again.ran, again.skipped) == (3, 2)
    assert _lines(stored) == before


def _spiky(work, tmp_path):
    """The monomer with one voxel a million times its maximum (alignment clips it)."""
    monomer = read_map(work / "maps" / "emd_5168_monomer.mrc.gz")
    data = monomer.data.copy()
    data[0, 0, 0] = 1e6 * data.max()
    write_map(dataclasses.replace(monomer, data=data), tmp_path / "spiky.mrc")
    return tmp_path / "spiky.mrc"


def test_a_map_with_outliers_is_indexed_as_alignment_reads_it(work, tmp_path, monkeypatch):
    # index clips outlier voxels as every alignment does, so the entry is used and the line unchanged
    spiky = _spiky(work, tmp_path)
    assert index([str(spiky)], tmp_path / "db", config=fast_config(), jobs=1).indexed == 1
    pairs = _table(work, [("spiky.mrc", "maps/moved.mrc", "", "")])
    batch(pairs, work / "plain.tsv", jobs=1, config=fast_config())
    prepared = _prepared_maps(monkeypatch)
    batch(pairs, work / "stored.tsv", jobs=1, config=fast_config(), db=tmp_path / "db")
    assert prepared == ["moved.mrc"]
    (plain,), (stored,) = _rows(work / "plain.tsv"), _rows(work / "stored.tsv")
    assert stored["status"] == "ok" and stored["from_db"] == "source"
    assert {c: stored[c] for c in MAP_COLUMNS if c != "from_db"} == {c: plain[c] for c in MAP_COLUMNS if c != "from_db"}


def test_stored_features_of_other_voxel_values_or_contour_are_prepared_again(work, tmp_path, caplog):
    # features saved from the map before its outliers were clipped (as catalogues before 0.2.1 did),
    # or at another contour, would give another answer: align prepares the map again
    from cryoalign.core.pipeline import align
    from cryoalign.core.prepare import prepare, resolve_contour

    spiky = read_map(_spiky(work, tmp_path))
    moved = work / "maps" / "moved.mrc"
    plain = align(spiky.path, moved, config=fast_config())
    region, _ = resolve_contour(spiky, None, "contour")
    prepare(spiky, region.contour, fast_config(), fine=True, region=region, with_hash=True).save(tmp_path / "raw.npz")
    with caplog.at_level(logging.INFO, logger="cryoalign"):
        again = align(spiky.path, moved, config=fast_config(), stored={"source": str(tmp_path / "raw.npz")})
    assert (
        "source: its stored features were prepared from other voxel values or at another contour: "
        "prepared again" in caplog.messages
    )
    assert again.params["from_catalogue"] == []
    np.testing.assert_array_equal(again.T_target_source, plain.T_target_source)
    # the right values at another contour: not used either
    from cryoalign.io.robust import without_outliers

    fixed = without_outliers(spiky)
    prepare(fixed, 1.1 * plain.params["source_contour"], fast_config(), fine=True, with_hash=True).save(
        tmp_path / "other.npz"
    )
    other = align(spiky.path, moved, config=fast_config(), stored={"source": str(tmp_path / "other.npz")})
    assert other.params["from_catalogue"] == []
    np.testing.assert_array_equal(other.T_target_source, plain.T_target_source)
    # and at the same contour it is used, with the same answer
    prepare(fixed, plain.params["source_contour"], fast_config(), fine=True, with_hash=True).save(tmp_path / "ok.npz")
    used = align(spiky.path, moved, config=fast_config(), stored={"source": str(tmp_path / "ok.npz")})
    assert used.params["from_catalogue"] == ["source"]
    np.testing.assert_array_equal(used.T_target_source, plain.T_target_source)


def test_dask_cluster_with_a_catalogue_gives_the_same_lines_as_local_processes(work, db):
    distributed = pytest.importorskip("distributed")
    pairs = _table(work, DB_PAIRS[:3])
    local_out, dask_out = work / "local.tsv", work / "dask.tsv"
    batch(pairs, local_out, jobs=2, config=fast_config(), db=db)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        summary = batch(pairs, dask_out, scheduler=cluster.scheduler_address, config=fast_config(), db=db)
    assert (summary.ran, summary.ok) == (3, 3)
    assert _lines(dask_out) == _lines(local_out)
    assert sorted(r["from_db"] for r in _lines(local_out)) == sorted(FROM_DB[:3])


def test_a_folder_that_is_not_a_catalogue_is_refused(work):
    folder = work / "notes"
    folder.mkdir()
    (folder / "notes.txt").write_text("not a catalogue\n")
    with pytest.raises(InputError) as err:
        batch(_table(work, [PAIRS[0]]), work / "results.tsv", config=fast_config(), db=folder)
    assert str(err.value) == (
        f"{folder} is not a cryoalign catalogue (it holds files but no catalogue.sqlite); "
        "give the folder index wrote, or a new or empty folder to build one"
    )
    assert not (work / "results.tsv").exists()


def test_a_missing_catalogue_is_refused(work):
    nowhere = work / "nowhere"
    with pytest.raises(InputError) as err:
        batch(_table(work, [PAIRS[0]]), work / "results.tsv", config=fast_config(), db=nowhere)
    assert str(err.value) == (
        f"catalogue not found: {nowhere} does not exist; build one with `cryoalign index "
        f"MAP... --db {nowhere}` (cryoalign.index(maps, '{nowhere}'))"
    )


def test_a_catalogue_of_other_parameters_is_refused(work, db):
    with pytest.raises(InputError) as err:
        batch(_table(work, [PAIRS[0]]), work / "results.tsv", config=fast_config().replace(sampling_A=3.0), db=db)
    assert str(err.value) == (
        f"the catalogue {db} was built with other parameters: sampling_A=5.0 (the batch uses "
        "3.0); run the batch with the same parameters, or index the maps again with these ones"
    )
    assert not (work / "results.tsv").exists()


def test_emdb_ids_are_found_in_the_catalogue_at_the_header_contour(work, archive, map_gz, monkeypatch):  # noqa: F811
    archive.add(1234, map_bytes=map_gz, header=V3_HEADER.replace("0.0123", "0.1"))
    monkeypatch.setenv("CRYOALIGN_EMDB_SERVER", archive.url)
    monkeypatch.setenv("CRYOALIGN_CACHE", str(work / "cache"))
    index(["EMD-1234"], work / "db", config=fast_config(), jobs=1)  # stored at the header's 0.1
    pairs = _table(work, [("EMD-1234", "EMD-1234", "", ""), ("emd:1234", "EMD-1234", "0.15", "")])
    batch(pairs, work / "plain.tsv", jobs=1, config=fast_config())
    batch(pairs, work / "stored.tsv", jobs=1, config=fast_config(), db=work / "db")
    rows = {r["source"]: r for r in _rows(work / "stored.tsv")}
    assert (rows["EMD-1234"]["from_db"], rows["emd:1234"]["from_db"]) == ("source,target", "target")
    same = [c for c in MAP_COLUMNS if c != "from_db"]
    assert _lines(work / "stored.tsv", same) == _lines(work / "plain.tsv", same)


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_ctrl_c_on_a_first_run_keeps_the_finished_lines_and_a_rerun_resumes(work, jobs):
    """Issue 20.3: Ctrl-C used to delete RESULTS.tsv (the header was a journaled output)."""
    rows = [
        PAIRS[0],
        ("maps/moved.mrc", "maps/emd_5168_monomer.mrc.gz", "", ""),
        PAIRS[1],
        ("maps/emd_3696_5A.mrc.gz", "maps/emd_3695_5A.mrc.gz", "0.69", "1.25"),
    ]
    pairs, out = _table(work, rows), work / "results.tsv"
    command = [
        sys.executable,
        "-m",
        "cryoalign",
        "batch",
        str(pairs),
        "--out",
        str(out),
        "--jobs",
        jobs,
        "--global",
        "--sampling",
        "5",
    ]
    # SIGINT at its default in the child: a shell's background job inherits it ignored, and Python
    # then installs no KeyboardInterrupt handler (the run would ignore the Ctrl-C under test)
    proc = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        _wait_for_a_result_line(proc, out, 90, "interrupted")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130 and err.decode().strip().endswith("cryoalign: interrupted")
    assert out.exists(), "Ctrl-C deleted RESULTS.tsv"
    text = out.read_text()
    assert text.endswith("\n")
    done = _rows(out)
    assert 1 <= len(done) < 4 and all(r["status"] == "ok" for r in done)
    summary = batch(pairs, out, jobs=1, config=fast_config())
    assert (summary.skipped, summary.ran) == (len(done), 4 - len(done))
    assert out.read_text().startswith(text)  # the kept lines are untouched
    assert sorted((r["source"], r["target"]) for r in _rows(out)) == sorted(r[:2] for r in rows)
