"""The compare, variance and batch commands: thin layers over the library, each writing
what its README section promises."""

from __future__ import annotations

import json
import os

import numpy as np

from cryoalign.cli import main
from cryoalign.io import read_map

SRC = "emd_3695_5A.mrc.gz"
SC = 1.25


def _run(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_compare_of_a_map_with_itself(data_dir, tmp_path, capsys):
    identity = tmp_path / "identity.txt"
    identity.write_text("1 0 0 0\n0 1 0 0\n0 0 1 0\n")
    code, out, err = _run(
        [
            "compare",
            data_dir / SRC,
            data_dir / SRC,
            "--source-contour",
            SC,
            "--target-contour",
            SC,
            "--matrix",
            identity,
            "--out-dir",
            tmp_path / "o",
            "--json",
            tmp_path / "c.json",
        ],
        capsys,
    )
    assert code == 0, err
    assert sorted(os.listdir(tmp_path / "o")) == sorted(
        [
            ".cryoalign",
            "compare.json",
            "target_minus_source.mrc",
            "source_minus_target.mrc",
            "source_on_target.mrc",
            "projections.png",
            "fsc.png",
            "difference_blobs.png",
            "report.html",
        ]
    )
    doc = json.loads((tmp_path / "c.json").read_text())
    assert doc == json.loads((tmp_path / "o" / "compare.json").read_text())
    assert doc["correlation"] > 0.999
    assert all(f > 0.999 for _, f in doc["fsc"]["curve"])
    for side in ("target_minus_source", "source_minus_target"):
        assert doc["difference"][side]["mass_kDa"] == 0.0 and doc["difference"][side]["blobs"] == []
    assert "target minus source: 0.0 kDa" in out and "wrote" in out
    assert np.abs(read_map(tmp_path / "o" / "target_minus_source.mrc").data).max() == 0.0


def test_compare_refuses_a_matrix_that_is_not_rigid(data_dir, tmp_path, capsys):
    sheared = tmp_path / "m.txt"
    sheared.write_text("1 0.5 0 0\n0 1 0 0\n0 0 1 0\n")
    code, out, err = _run(
        [
            "compare",
            data_dir / SRC,
            data_dir / SRC,
            "--source-contour",
            SC,
            "--target-contour",
            SC,
            "--matrix",
            sheared,
            "--out-dir",
            tmp_path / "o",
        ],
        capsys,
    )
    assert code == 2 and out == ""
    assert "rotation" in err.lower() or "rigid" in err.lower()
    assert not (tmp_path / "o").exists()


def test_variance_command_writes_its_outputs(data_dir, tmp_path, capsys):
    maps = []
    for k in range(3):
        path = tmp_path / f"m{k}.mrc.gz"
        path.write_bytes((data_dir / SRC).read_bytes())
        maps.append(path)
    table = tmp_path / "contours.tsv"
    table.write_text("".join(f"{m.name}\t{SC}\n" for m in maps))
    code, out, err = _run(
        [
            "variance",
            maps[0],
            *maps,
            "--reference-contour",
            SC,
            "--contour-table",
            table,
            "--out-dir",
            tmp_path / "v",
            "--jobs",
            1,
            "--quiet",
        ],
        capsys,
    )
    assert code == 0, err
    names = set(os.listdir(tmp_path / "v"))
    assert {"mean.mrc", "variance.mrc", "alignments.tsv", "variance_slices.png", "report.html"} <= names
    assert "3 of 3 maps in the variance" in out
    var = read_map(tmp_path / "v" / "variance.mrc").data
    mean = read_map(tmp_path / "v" / "mean.mrc").data
    assert var.max() <= 1e-6 * max(1.0, float(mean.max()) ** 2)


def test_variance_names_a_missing_map_of_the_table(data_dir, tmp_path, capsys):
    table = tmp_path / "contours.tsv"
    table.write_text(f"missing.mrc\t{SC}\n")
    code, out, err = _run(
        [
            "variance",
            data_dir / SRC,
            data_dir / SRC,
            data_dir / SRC,
            "--contour-table",
            table,
            "--out-dir",
            tmp_path / "v",
        ],
        capsys,
    )
    assert code == 2 and out == ""
    assert "missing.mrc" in err


def test_batch_command(data_dir, tmp_path, capsys):
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text(
        "source\ttarget\tsource_contour\ttarget_contour\n"
        f"{data_dir / SRC}\t{data_dir / SRC}\t{SC}\t{SC}\n"
        f"{data_dir / SRC}\tnot_there.mrc\t{SC}\t{SC}\n"
    )
    code, out, err = _run(["batch", pairs, "--out", tmp_path / "r.tsv", "--global", "--jobs", 1], capsys)
    assert code == 2 and "not_there.mrc" in err and "line 3" in err  # the table is checked first
    pairs.write_text(
        f"source\ttarget\tsource_contour\ttarget_contour\n{data_dir / SRC}\t{data_dir / SRC}\t{SC}\t{SC}\n"
    )
    code, out, err = _run(["batch", pairs, "--out", tmp_path / "r.tsv", "--global", "--jobs", 1], capsys)
    assert code == 0, err
    assert out.startswith("1 pair(s): 1 run now (1 ok, 0 error), 0 finished earlier")
    code, out, err = _run(["batch", pairs, "--out", tmp_path / "r.tsv", "--global", "--jobs", 1], capsys)
    assert code == 0 and "0 run now" in out and "1 finished earlier" in out


def test_index_then_search(data_dir, tmp_path, capsys):
    table = tmp_path / "contours.tsv"
    table.write_text(f"{data_dir / SRC}\t{SC}\n{data_dir / 'emd_3696_5A.mrc.gz'}\t0.69\n")
    argv = [
        "index",
        data_dir / SRC,
        data_dir / "emd_3696_5A.mrc.gz",
        "--db",
        tmp_path / "db",
        "--contour-table",
        table,
        "--jobs",
        1,
        "--quiet",
    ]
    code, out, err = _run(argv, capsys)
    assert code == 0, err
    assert out.startswith("2 indexed, 0 already in") and "2 entries" in out
    code, out, err = _run(argv, capsys)
    assert code == 0 and out.startswith("0 indexed, 2 already in")
    code, out, err = _run(
        [
            "search",
            data_dir / SRC,
            "--db",
            tmp_path / "db",
            "--contour",
            SC,
            "--top",
            2,
            "--jobs",
            1,
            "--json",
            tmp_path / "s.json",
            "--quiet",
        ],
        capsys,
    )
    assert code == 0, err
    doc = json.loads((tmp_path / "s.json").read_text())
    assert [h["rank"] for h in doc["hits"]] == [1, 2]
    assert os.path.basename(doc["hits"][0]["map"]) == SRC
    np.testing.assert_allclose(doc["hits"][0]["matrix"], np.eye(4), atol=1e-3)
    assert SRC in out.splitlines()[2]


def test_search_names_a_folder_that_is_not_a_catalogue(data_dir, tmp_path, capsys):
    (tmp_path / "notdb").mkdir()
    code, out, err = _run(["search", data_dir / SRC, "--db", tmp_path / "notdb", "--contour", SC], capsys)
    assert code == 2 and out == ""
    assert "notdb" in err and "cryoalign index" in err


def test_batch_command_with_a_catalogue(data_dir, tmp_path, capsys):
    table = tmp_path / "contours.tsv"
    table.write_text(f"{data_dir / SRC}\t{SC}\n")
    code, out, err = _run(
        ["index", data_dir / SRC, "--db", tmp_path / "db", "--contour-table", table, "--jobs", 1, "--quiet"], capsys
    )
    assert code == 0, err
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text(
        f"source\ttarget\tsource_contour\ttarget_contour\n{data_dir / SRC}\t{data_dir / SRC}\t{SC}\t{SC}\n"
    )
    argv = ["batch", pairs, "--out", tmp_path / "r.tsv", "--global", "--jobs", 1, "--db", tmp_path / "db", "--quiet"]
    code, out, err = _run(argv + ["--sampling", 3], capsys)
    assert code == 2 and out == ""
    assert err == (
        f"cryoalign: error: the catalogue {tmp_path / 'db'} was built with other parameters: --sampling 5.0 "
        "(the batch uses 3.0); run the batch with the same parameters, or index the maps again with these "
        "ones\n"
    )
    code, out, err = _run(argv, capsys)
    assert code == 0, err
    header, line = (tmp_path / "r.tsv").read_text().splitlines()
    row = dict(zip(header.split("\t"), line.split("\t")))
    assert (row["status"], row["from_db"]) == ("ok", "source,target")
