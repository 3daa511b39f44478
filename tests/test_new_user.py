"""What a new user trips on: outliers, folders that mix runs, the summary under --quiet,
swapped arguments, Ctrl-C, and the small print."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import cryoalign
from cryoalign import transform as tf
from cryoalign.cli import main
from cryoalign.io import read_map, write_map

SRC, TGT = "emd_3695_5A.mrc.gz", "emd_3696_5A.mrc.gz"
SC, TC = 1.25, 0.69
GT = np.array(
    [
        [0.975612, 0.130945, -0.176163, 54.826950],
        [-0.154253, 0.979986, -0.125831, 25.835114],
        [0.156160, 0.149936, 0.976286, -33.810238],
        [0, 0, 0, 1.0],
    ]
)  # tests/data/gt.tsv


def _density_points(m, contour):
    return m.index_to_world(np.argwhere(m.data >= contour)[:, ::-1])


@pytest.mark.parametrize("factor", [1e4, 1e30])
def test_a_single_extreme_voxel_does_not_ruin_the_alignment(data_dir, factor, caplog):
    src = read_map(data_dir / SRC)
    data = src.data.copy()
    data[2, 2, 2] = factor * float(data.max())  # one voxel in a corner, far from the molecule
    bad = cryoalign.DensityMap(data=data, voxel_size_A=src.voxel_size_A, origin_A=src.origin_A, path="bad.mrc")
    tgt = read_map(data_dir / TGT)
    with caplog.at_level("WARNING", logger="cryoalign"):
        r = cryoalign.align(bad, tgt, source_contour=SC, target_contour=TC, mode="global", top=3)
    assert tf.rmsd(r.T_target_source, GT, _density_points(src, SC)) < 3.0
    assert "bad.mrc: 1 outlier voxel(s) set to the map's robust range for the alignment" in caplog.text
    assert bad.data[2, 2, 2] == np.float32(factor * float(src.data.max()))  # the input is untouched


def _run(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_identity_is_printed_as_no_rotation(data_dir, capsys, tmp_path):
    code, out, err = _run(
        [
            "align",
            data_dir / SRC,
            data_dir / SRC,
            "--source-contour",
            SC,
            "--target-contour",
            SC,
            "--global",
            "--json",
            tmp_path / "r.json",
        ],
        capsys,
    )
    assert code == 0, err
    assert "\nno rotation; translation (" in out
    assert "rotation 0.00 deg" not in out
    assert "read maps done in" not in err and "read maps in " in err


def test_a_source_larger_than_the_target_is_pointed_out(data_dir, capsys, tmp_path):
    code, _, err = _run(
        [
            "align",
            data_dir / TGT,
            data_dir / SRC,
            "--source-contour",
            TC,
            "--target-contour",
            SC,
            "--local",
            "--top",
            2,
            "--jobs",
            1,
            "--json",
            tmp_path / "r.json",
        ],
        capsys,
    )
    assert code == 0, err
    assert "did you mean to swap the two maps?" in err
    assert "mode=" not in err and "sampling_A" not in err  # flags, not API names


def test_jobs_above_the_core_count_are_capped(data_dir, capsys, tmp_path):
    many = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()) + 5
    code, _, err = _run(
        [
            "align",
            data_dir / SRC,
            data_dir / TGT,
            "--source-contour",
            SC,
            "--target-contour",
            TC,
            "--local",
            "--top",
            2,
            "--jobs",
            many,
            "--json",
            tmp_path / "r.json",
        ],
        capsys,
    )
    assert code == 0, err
    assert f"{many} workers asked for but this machine has" in err
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["stats"]["jobs"] < many


def test_chimerax_scripts_start_from_an_empty_session(data_dir, capsys, tmp_path):
    code, _, err = _run(
        [
            "align",
            data_dir / SRC,
            data_dir / TGT,
            "--source-contour",
            SC,
            "--target-contour",
            TC,
            "--global",
            "--top",
            2,
            "--out-dir",
            tmp_path / "o",
        ],
        capsys,
    )
    assert code == 0, err
    lines = (tmp_path / "o" / "superposition.cxc").read_text().splitlines()
    first = next(i for i, line in enumerate(lines) if not line.startswith("#"))
    assert lines[first] == "close session"
    assert any("closes whatever is open" in line for line in lines[:first])


def _align_argv(data_dir, out_dir, *extra):
    return [
        sys.executable,
        "-m",
        "cryoalign",
        "align",
        str(data_dir / SRC),
        str(data_dir / TGT),
        "--source-contour",
        str(SC),
        "--target-contour",
        str(TC),
        "--global",
        "--out-dir",
        str(out_dir),
        "--quiet",
        *extra,
    ]


def test_two_runs_into_one_folder_at_once_leave_one_runs_files(data_dir, tmp_path):
    out = tmp_path / "out"
    model = tmp_path / "m.pdb"
    st = cryoalign.read_model(data_dir / "3mfp.pdb.gz")
    cryoalign.write_model(st, model)
    runs = [
        subprocess.Popen(_align_argv(data_dir, out, *extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for extra in ([], ["--source-model", str(model), "--top", "3"])
    ]
    results = [p.communicate(timeout=300) for p in runs]
    assert [p.returncode for p in runs] == [0, 0], results
    names = sorted(os.listdir(out))
    one = [
        ".cryoalign",
        "align_projections.png",
        "params.json",
        "report.html",
        "result.json",
        "source_on_target.mrc",
        "superposition.cxc",
    ]
    assert names in (one, sorted(one + ["source_model_on_target.pdb"]))
    doc = json.loads((out / "result.json").read_text())
    assert (doc["params"]["top"] == 3) == ("source_model_on_target.pdb" in names)  # all from one run
    assert [p for p in os.listdir(tmp_path) if p.startswith(".")] == []  # no temporary folder left


def test_a_rerun_replaces_the_folder_whole(data_dir, tmp_path, capsys):
    out = tmp_path / "out"
    model = tmp_path / "m.pdb"
    cryoalign.write_model(cryoalign.read_model(data_dir / "3mfp.pdb.gz"), model)
    base = [
        "align",
        data_dir / SRC,
        data_dir / TGT,
        "--source-contour",
        SC,
        "--target-contour",
        TC,
        "--global",
        "--top",
        3,
        "--out-dir",
        out,
    ]
    assert _run(base + ["--source-model", model], capsys)[0] == 0
    assert (out / "source_model_on_target.pdb").exists()
    assert _run(base, capsys)[0] == 0
    assert sorted(os.listdir(out)) == [
        ".cryoalign",
        "align_projections.png",
        "params.json",
        "report.html",
        "result.json",
        "source_on_target.mrc",
        "superposition.cxc",
    ]


def test_ctrl_c_during_the_mask_search_stops_at_once_and_leaves_no_worker(data_dir, tmp_path):
    argv = [
        sys.executable,
        "-m",
        "cryoalign",
        "align",
        str(data_dir / SRC),
        str(data_dir / TGT),
        "--source-contour",
        str(SC),
        "--target-contour",
        str(TC),
        "--local",
        "--jobs",
        "2",
        "--json",
        str(tmp_path / "r.json"),
    ]
    # SIGINT back to its default in the child, as in a terminal: a test run started in the
    # background of a non-interactive shell inherits SIGINT ignored, and Python then never
    # installs its Ctrl-C handler
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    seen = threading.Event()
    lines = []

    def read():
        for line in proc.stderr:
            lines.append(line)
            if "local search:" in line:
                seen.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert seen.wait(120), "".join(lines)
    time.sleep(0.5)  # workers are busy with masks now
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole group
    t0 = time.perf_counter()
    proc.wait(timeout=30)
    took = time.perf_counter() - t0
    reader.join(5)
    assert proc.returncode == 130, "".join(lines)
    assert took < 1.5, took
    time.sleep(0.2)
    with pytest.raises(ProcessLookupError):
        os.killpg(proc.pid, 0)  # no process of the group is left
    assert "cryoalign: interrupted" in "".join(lines)
    assert "Traceback" not in "".join(lines)
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("name, compressed", [("x.map.gz", True), ("x.mrc", False)])
def test_simulate_writes_what_the_name_says(data_dir, tmp_path, capsys, name, compressed):
    out = tmp_path / name
    code, _, err = _run(["simulate", data_dir / "3mfp.pdb.gz", "--resolution", 8, "-o", out], capsys)
    assert code == 0, err
    assert (out.read_bytes()[:2] == b"\x1f\x8b") == compressed
    assert read_map(out).data.shape[0] > 4


def test_simulate_refuses_a_model_suffix(data_dir, tmp_path, capsys):
    code, out, err = _run(["simulate", data_dir / "3mfp.pdb.gz", "--resolution", 8, "-o", tmp_path / "x.pdb"], capsys)
    assert code == 2 and out == ""
    assert "'.pdb' is not a map suffix" in err
    assert os.listdir(tmp_path) == []


def test_rmsd_says_which_atoms_and_warns_on_partial_pairing(data_dir, tmp_path, capsys):
    st = cryoalign.read_model(data_dir / "3mfp.pdb.gz")
    full = tmp_path / "full.pdb"
    cryoalign.write_model(st, full)
    part = st.clone()
    chain = part[0][0]
    for i in range(len(chain) - 1, len(chain) // 2, -1):  # half the residues gone
        del chain[i]
    chain[0].name = "GLY" if chain[0].name != "GLY" else "ALA"
    half = tmp_path / "half.pdb"
    cryoalign.write_model(part, half)
    matrix = tmp_path / "m.txt"
    matrix.write_text("1 0 0 0\n0 1 0 0\n0 0 1 0\n")
    code, out, err = _run(["rmsd", full, "--matrix", matrix, "--reference-model", half], capsys)
    assert code == 0, err
    assert out.startswith("RMSD 0.000 Å over ") and out.rstrip().endswith("paired CA/P atoms")
    assert "pairs only" in err and "of the model's" in err
    assert "residues whose names differ" in err


def test_fit_on_a_ligand_only_chain_says_so(data_dir, tmp_path, capsys):
    import gemmi

    st = gemmi.read_structure(str(data_dir / "3mfp.pdb.gz"))
    ligand_only = [
        c.name
        for c in st[0]
        if not any(
            r.name in gemmi.find_tabulated_residue(r.name).name and gemmi.find_tabulated_residue(r.name).is_amino_acid()
            for r in c
            if gemmi.find_tabulated_residue(r.name)
        )
    ]
    model = gemmi.Structure()
    m = gemmi.Model("1")
    ch = gemmi.Chain("L")
    res = gemmi.Residue()
    res.name = "ATP"
    res.seqid = gemmi.SeqId(1, " ")
    for k, (name, el) in enumerate([("PG", "P"), ("O1G", "O"), ("C1'", "C"), ("N9", "N")]):
        a = gemmi.Atom()
        a.name, a.element, a.pos = name, gemmi.Element(el), gemmi.Position(k * 1.5, 0, 0)
        res.add_atom(a)
    ch.add_residue(res)
    m.add_chain(ch)
    model.add_model(m)
    path = tmp_path / "lig.pdb"
    model.write_pdb(str(path))
    code, out, err = _run(
        ["fit", path, data_dir / "emd_5168_monomer.mrc.gz", "--resolution", 6.6, "--out-dir", tmp_path / "o"], capsys
    )
    assert code == 2 and ligand_only == ligand_only
    assert "chain(s) L hold only ligands or waters (no protein or nucleic-acid residue)" in err
    assert "--chains" in err and "points of the map" not in err


def test_a_bzip2_map_is_read(data_dir, tmp_path):
    import bz2

    raw = gzip.decompress((data_dir / SRC).read_bytes())
    path = tmp_path / "m.map.bz2"
    path.write_bytes(bz2.compress(raw))
    a, b = read_map(path), read_map(data_dir / SRC)
    np.testing.assert_array_equal(a.data, b.data)


def test_written_maps_keep_their_values(data_dir, tmp_path):
    m = read_map(data_dir / SRC)
    write_map(m, tmp_path / "m.mrc.gz")
    np.testing.assert_array_equal(read_map(tmp_path / "m.mrc.gz").data, m.data)


def test_a_users_file_added_to_an_output_folder_is_never_deleted(data_dir, tmp_path, capsys):
    out = tmp_path / "out"
    base = [
        "align",
        data_dir / SRC,
        data_dir / TGT,
        "--source-contour",
        SC,
        "--target-contour",
        TC,
        "--global",
        "--top",
        2,
        "--out-dir",
        out,
    ]
    assert _run(base, capsys)[0] == 0
    (out / "notes.txt").write_text("mine\n")
    code, stdout, err = _run(base, capsys)
    assert code == 2 and stdout == ""
    assert f"output folder {out} holds files that cryoalign did not write (notes.txt)" in err
    assert (out / "notes.txt").read_text() == "mine\n"
    assert (out / "result.json").exists()


def test_the_command_skips_the_teardown_but_not_its_outputs(data_dir, tmp_path):
    # `cryoalign` (cli.run) leaves with os._exit after main(): everything printed to a pipe and
    # every file written must be complete, and the exit codes kept
    argv = [
        sys.executable,
        "-m",
        "cryoalign",
        "align",
        str(data_dir / SRC),
        str(data_dir / TGT),
        "--source-contour",
        str(SC),
        "--target-contour",
        str(TC),
        "--global",
        "--json",
        str(tmp_path / "r.json"),
    ]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("T_target_source") and proc.stdout.rstrip().endswith(f"wrote {tmp_path / 'r.json'}")
    assert json.loads((tmp_path / "r.json").read_text())["matrix"]
    assert "map refine done in" in proc.stderr  # the log reached its pipe
    bad = subprocess.run(
        argv[:4] + [str(tmp_path / "missing.mrc")] + argv[5:], capture_output=True, text=True, timeout=60
    )
    assert bad.returncode == 2
    assert bad.stderr.strip().endswith(
        f"map file not found: {tmp_path / 'missing.mrc'}; check the path (or give an EMDB ID such as EMD-1234)"
    )
