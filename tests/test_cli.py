"""Tests for the command line, `cryoalign.cli.main(argv)`, called in-process.

The alignment case is real data moved by a known rigid transform: the 5 Å EMD-3695
map (tests/data) is the target and the source is the same density resampled
(`scipy.ndimage.map_coordinates`) onto a new, larger grid after a rotation plus
translation, so the true T_target_source is known exactly. Any model works for the
model outputs (it only has to be moved), so 3MFP stands in for a model in the
source frame.

The few full alignments (a couple of seconds each) are shared where possible: one
module-scoped run with --json, --out-dir and --source-model feeds most checks.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io as _io
import json
import os
import pathlib
import re
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.transform import Rotation

import cryoalign
from cryoalign.cli import main
from cryoalign.io import read_map, write_map

TARGET = "emd_3695_5A.mrc.gz"  # 48^3 at 5 Å, ORIGIN 15.68 Å
MODEL = "3mfp.pdb.gz"
EXIT_INPUT = 2
EXIT_INTERNAL = 1


# ----------------------------------------------------------------------------- helpers
def sha256(path) -> str:
    return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


def apply(T, X):
    T = np.asarray(T, float)
    return np.asarray(X, float) @ T[:3, :3].T + T[:3, 3]


def rigid(R, t) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = t
    return T


def rmsd(T_a, T_b, X) -> float:
    d = apply(T_a, X) - apply(T_b, X)
    return float(np.sqrt((d**2).sum(1).mean()))


def atoms(path, ca_only=False):
    """[(chain, seqnum, icode, atom name, altloc)], (N, 3) coordinates of the first model (gemmi)."""
    import gemmi

    st = gemmi.read_structure(str(path))
    keys, xyz = [], []
    for chain in st[0]:
        for res in chain:
            for a in res:
                if ca_only and not (
                    (a.name == "CA" and a.element.name == "C") or (a.name == "P" and a.element.name == "P")
                ):
                    continue
                keys.append((chain.name, res.seqid.num, res.seqid.icode, a.name, a.altloc))
                xyz.append((a.pos.x, a.pos.y, a.pos.z))
    return keys, np.array(xyz, float).reshape(-1, 3)


def write_moved_model(src, dst, T):
    """Move every atom of `src` by T with gemmi directly (independent of cryoalign.io)."""
    import gemmi

    st = gemmi.read_structure(str(src))
    for model in st:
        for chain in model:
            for res in chain:
                for a in res:
                    x, y, z = apply(T, [[a.pos.x, a.pos.y, a.pos.z]])[0]
                    a.pos = gemmi.Position(x, y, z)
    st.write_pdb(str(dst))


def temp_files(*folders):
    return [p for f in folders for p in pathlib.Path(f).rglob(".tmp-*")]


def run(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def error_line(err: str) -> str:
    """The one 'cryoalign: error: ...' line (progress lines may precede it); it must be the last."""
    lines = err.strip().splitlines()
    errors = [ln for ln in lines if ln.startswith("cryoalign: error: ")]
    assert len(errors) == 1, err
    assert lines[-1] == errors[0], err
    return errors[0][len("cryoalign: error: ") :]


def summary_matrix(out: str) -> np.ndarray:
    lines = out.splitlines()
    i = lines.index("T_target_source (source world Å -> target world Å):")
    return np.array([[float(v) for v in ln.split()] for ln in lines[i + 1 : i + 5]])


# ----------------------------------------------------------------------------- the case
@pytest.fixture(scope="module")
def case(data_dir, tmp_path_factory):
    """Source = target moved by a known T_true (source(x) = target(T_true x)), on a new grid."""
    folder = tmp_path_factory.mktemp("case")
    target_path = data_dir / TARGET
    tgt = read_map(target_path)
    R = Rotation.from_euler("zyx", [40.0, -25.0, 70.0], degrees=True).as_matrix()
    centre = tgt.origin_A + (np.array(tgt.data.shape[::-1]) - 1) * tgt.voxel_size_A / 2
    T_true = rigid(R, centre - R @ centre + np.array([12.3, -7.1, 5.4]))

    voxel, n = 5.0, 56
    origin = tgt.origin_A - 20.0
    z, y, x = np.meshgrid(np.arange(n), np.arange(n), np.arange(n), indexing="ij")
    grid = np.stack([x.ravel(), y.ravel(), z.ravel()], 1) * voxel + origin
    f = (apply(T_true, grid) - tgt.origin_A) / tgt.voxel_size_A
    data = ndimage.map_coordinates(tgt.data, [f[:, 2], f[:, 1], f[:, 0]], order=1, cval=0.0)
    data = data.reshape(n, n, n).astype(np.float32)
    # the moved density must fit in the new box, or the case would test clipping
    assert data.sum() == pytest.approx(tgt.data.sum(), rel=0.03)
    source_path = folder / "source_moved.mrc"
    write_map(data, source_path, voxel_size_A=voxel, origin_A=origin)

    src = read_map(source_path)
    # Both maps hold the same density, so both get the real map's level. (The 1st percentile
    # of the resampled copy's nonzero voxels is ~300x lower: trilinear fringe at the edges,
    # which triples the run time for nothing.)
    target_contour = 0.5 * float(np.percentile(tgt.data[tgt.data > 0], 1))
    source_contour = target_contour
    above = np.argwhere(src.data > source_contour)[:, ::-1]  # (x, y, z) indices
    points = above * src.voxel_size_A + src.origin_A  # source world Å

    model_path = data_dir / MODEL
    moved_model = folder / "model_fitted_in_target.pdb"
    write_moved_model(model_path, moved_model, T_true)
    return SimpleNamespace(
        folder=folder,
        source=source_path,
        target=target_path,
        T_true=T_true,
        source_contour=source_contour,
        target_contour=target_contour,
        points=points,
        model=model_path,
        moved_model=moved_model,
        target_map=tgt,
    )


def align_argv(case, *extra, contours=True):
    argv = ["align", case.source, case.target]
    if contours:
        argv += ["--source-contour", repr(case.source_contour), "--target-contour", repr(case.target_contour)]
    return argv + list(extra)


@pytest.fixture(scope="module")
def aligned(case, tmp_path_factory):
    """One full run with --json, --out-dir and --source-model (output captured by hand,
    since capsys is per test)."""
    folder = tmp_path_factory.mktemp("aligned")
    json_path, out_dir = folder / "result.json", folder / "out"
    inputs = [case.source, case.target, case.model]
    before = {p: sha256(p) for p in inputs}
    out, err = _io.StringIO(), _io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(
            [str(a) for a in align_argv(case, "--json", json_path, "--out-dir", out_dir, "--source-model", case.model)]
        )
    doc = json.loads(json_path.read_text()) if json_path.exists() else None
    return SimpleNamespace(
        code=code,
        out=out.getvalue(),
        err=err.getvalue(),
        json_path=json_path,
        out_dir=out_dir,
        doc=doc,
        folder=folder,
        hashes_before=before,
        hashes_after={p: sha256(p) for p in inputs},
    )


# ----------------------------------------------------------------------------- align: success
def test_align_exits_zero_and_writes_json(aligned):
    assert aligned.code == 0, aligned.err
    assert aligned.doc is not None


def test_align_json_fields(aligned, case):
    doc = aligned.doc
    M = np.array(doc["matrix"], float)
    assert M.shape == (4, 4)
    assert np.allclose(M[3], [0, 0, 0, 1])
    assert np.allclose(M[:3, :3] @ M[:3, :3].T, np.eye(3), atol=1e-9)
    assert np.linalg.det(M[:3, :3]) == pytest.approx(1.0, abs=1e-9)
    assert isinstance(doc["score"], float)
    assert doc["version"] == cryoalign.__version__

    cands = doc["candidates"]
    assert isinstance(cands, list) and cands
    for c in cands:
        assert np.array(c["matrix"], float).shape == (4, 4)
        assert isinstance(c["score"], float)
    scores = [c["score"] for c in cands]
    assert scores == sorted(scores, reverse=True)
    assert cands[0]["matrix"] == doc["matrix"]
    assert cands[0]["score"] == doc["score"]

    timings = doc["timings_s"]
    assert "total" in timings
    assert all(isinstance(v, (int, float)) and v >= 0 for v in timings.values())
    assert timings["total"] >= max(v for k, v in timings.items() if k != "total")

    p = doc["params"]
    assert p["sampling_A"] == 5.0
    assert p["seed"] == 0
    assert p["source_contour"] == case.source_contour
    assert p["target_contour"] == case.target_contour
    assert p["source_contour_estimated"] is False
    assert p["target_contour_estimated"] is False


def test_align_recovers_the_known_transform(aligned, case):
    M = np.array(aligned.doc["matrix"], float)
    assert len(case.points) > 500
    assert rmsd(M, case.T_true, case.points) < 3.0


def test_align_summary_on_stdout(aligned, case):
    out = aligned.out
    assert np.allclose(summary_matrix(out), aligned.doc["matrix"], atol=1e-5)
    assert f"score {aligned.doc['score']:.3f} = " in out
    assert f"source contour {case.source_contour:.5g}\n" in out
    assert f"target contour {case.target_contour:.5g}\n" in out
    assert "estimated" not in out
    assert f"wrote {aligned.json_path}\n" in out
    assert f"wrote {aligned.out_dir}/ (open superposition.cxc in ChimeraX)" in out
    assert "error" not in aligned.err


def test_align_leaves_inputs_unchanged(aligned):
    assert aligned.hashes_after == aligned.hashes_before


def test_out_dir_contents(aligned):
    names = sorted(os.listdir(aligned.out_dir))
    assert names == [
        ".cryoalign",
        "align_projections.png",
        "params.json",
        "report.html",
        "result.json",
        "source_model_on_target.pdb",
        "source_on_target.mrc",
        "superposition.cxc",
    ]
    assert temp_files(aligned.folder) == []
    assert json.loads((aligned.out_dir / "result.json").read_text()) == aligned.doc
    assert json.loads((aligned.out_dir / "params.json").read_text()) == aligned.doc["params"]


def test_out_dir_resampled_source_is_on_the_target_grid(aligned, case):
    moved = read_map(aligned.out_dir / "source_on_target.mrc")
    tgt = case.target_map
    assert moved.data.shape == tgt.data.shape
    assert np.allclose(moved.voxel_size_A, tgt.voxel_size_A)
    assert np.allclose(moved.origin_A, tgt.origin_A, atol=1e-4)
    # the source put back by the recovered matrix is the target again (up to interpolation)
    r = np.corrcoef(moved.data.ravel(), tgt.data.ravel())[0, 1]
    assert r > 0.8


def test_out_dir_moved_model_follows_the_matrix(aligned, case):
    M = np.array(aligned.doc["matrix"], float)
    keys_in, xyz_in = atoms(case.model)
    keys_out, xyz_out = atoms(aligned.out_dir / "source_model_on_target.pdb")
    assert keys_out == keys_in
    assert np.allclose(xyz_out, apply(M, xyz_in), atol=1e-3)


def test_out_dir_chimerax_script(aligned, case):
    text = (aligned.out_dir / "superposition.cxc").read_text()
    lines = text.splitlines()
    assert f"open {os.path.abspath(case.target)}" in lines
    assert f"open {os.path.abspath(case.source)}" in lines
    assert "open source_on_target.mrc" in lines
    assert "open source_model_on_target.pdb" in lines
    view = [ln for ln in lines if ln.startswith("view matrix models #2,")]
    assert len(view) == 1
    numbers = [float(v) for v in view[0][len("view matrix models #2,") :].split(",")]
    assert len(numbers) == 12
    M = np.array(aligned.doc["matrix"], float)
    assert np.allclose(numbers, M[:3, :].ravel(), atol=1e-6)


def test_contours_omitted_are_estimated(case, tmp_path, capsys):
    # the map on itself: the estimate on the moved copy lands in its interpolation fringe (slow)
    out_json = tmp_path / "r.json"
    code, out, err = run(["align", case.target, case.target, "--json", out_json], capsys)
    assert code == 0, err
    doc = json.loads(out_json.read_text())
    p = doc["params"]
    assert p["source_contour_estimated"] is True
    assert p["target_contour_estimated"] is True
    for side in ("source", "target"):
        level = p[f"{side}_contour"]
        assert np.isfinite(level) and level > 0
        assert f"{side} contour {level:.5g} (estimated" in out
    assert rmsd(np.array(doc["matrix"], float), np.eye(4), case.points) < 3.0


def test_same_command_twice_gives_the_same_matrix(case, tmp_path, capsys):
    out_json = tmp_path / "r.json"
    argv = align_argv(case, "--json", out_json, "--quiet")
    docs = []
    for _ in range(2):
        code, _, err = run(argv, capsys)
        assert code == 0, err
        docs.append(json.loads(out_json.read_text()))
    assert docs[0]["matrix"] == docs[1]["matrix"]
    assert [c["matrix"] for c in docs[0]["candidates"]] == [c["matrix"] for c in docs[1]["candidates"]]


def test_quiet_silences_progress_but_prints_the_answer(case, tmp_path, capsys):
    out_json = tmp_path / "r.json"
    code, out, err = run(align_argv(case, "--json", out_json, "--quiet"), capsys)
    assert code == 0
    assert err == ""
    M = json.loads(out_json.read_text())["matrix"]
    assert out.startswith("T_target_source (source world Å -> target world Å):\n")
    assert "  ".join(f"{v:11.5f}" for v in M[0]) in out  # the answer is never lost


# ----------------------------------------------------------------------------- rmsd
def test_rmsd_against_ground_truth_matrices(aligned, case, tmp_path, capsys):
    M = np.array(aligned.doc["matrix"], float)
    flip = rigid(Rotation.from_euler("z", 180, degrees=True).as_matrix(), [3.0, 0.0, 0.0])
    near = rigid(np.eye(3), [0.4, -0.3, 0.2]) @ M  # an alternative closer than T_gt
    T_gt = rigid(np.eye(3), [1.5, 0.0, -1.0]) @ case.T_true
    alts = [case.T_true @ flip, near]
    case_json = tmp_path / "case.json"
    case_json.write_text(json.dumps({"T_gt": T_gt.tolist(), "alt_T_gt": [a.tolist() for a in alts]}))
    out_json = tmp_path / "rmsd.json"
    code, out, err = run(
        ["rmsd", case.model, "--matrix", aligned.json_path, "--reference", case_json, "--json", out_json], capsys
    )
    assert code == 0, err

    _, ca = atoms(case.model, ca_only=True)
    expected = [rmsd(M, R, ca) for R in [T_gt] + alts]
    res = json.loads(out_json.read_text())
    assert res["atoms"] == len(ca)
    assert res["rmsd_A"] == pytest.approx(expected[0], abs=1e-6)
    assert res["rmsd_sym_A"] == pytest.approx(min(expected), abs=1e-6)
    assert res["all_references_A"] == pytest.approx(expected, abs=1e-6)
    assert res["rmsd_sym_A"] < res["rmsd_A"]
    assert out.startswith(f"RMSD {expected[0]:.3f} Å over {len(ca)} CA/P atoms")
    assert f"(best over 3 equivalent references: {min(expected):.3f} Å)" in out


def test_rmsd_prints_without_json(aligned, case, tmp_path, capsys):
    case_json = tmp_path / "case.json"
    case_json.write_text(json.dumps({"T_gt": case.T_true.tolist()}))
    code, out, err = run(["rmsd", case.model, "--matrix", aligned.json_path, "--reference", case_json], capsys)
    assert code == 0, err
    _, ca = atoms(case.model, ca_only=True)
    M = np.array(aligned.doc["matrix"], float)
    assert out == f"RMSD {rmsd(M, case.T_true, ca):.3f} Å over {len(ca)} CA/P atoms\n"
    assert os.listdir(tmp_path) == ["case.json"]


@pytest.mark.parametrize("fmt", ["result-json", "case-json", "text-12", "text-16"])
@pytest.mark.parametrize("atom_set", ["ca", "all"])
def test_rmsd_reference_model_under_the_true_transform_is_zero(case, tmp_path, capsys, fmt, atom_set):
    T = case.T_true
    matrix = tmp_path / "matrix.txt"
    if fmt == "result-json":
        matrix.write_text(json.dumps({"matrix": T.tolist()}))
    elif fmt == "case-json":
        matrix.write_text(json.dumps({"T_gt": T.tolist()}))
    elif fmt == "text-12":
        matrix.write_text("\n".join(" ".join(repr(float(v)) for v in row) for row in T[:3]) + "\n")
    else:
        matrix.write_text("\n".join(", ".join(repr(float(v)) for v in row) for row in T) + "\n")
    out_json = tmp_path / "rmsd.json"
    code, out, err = run(
        [
            "rmsd",
            case.model,
            "--matrix",
            matrix,
            "--reference-model",
            case.moved_model,
            "--atoms",
            atom_set,
            "--json",
            out_json,
        ],
        capsys,
    )
    assert code == 0, err
    res = json.loads(out_json.read_text())
    n = len(atoms(case.model, ca_only=atom_set == "ca")[0])
    assert res["atoms"] == n
    assert res["rmsd_A"] < 2e-3  # PDB coordinates are rounded to 0.001 Å
    kind = "CA/P atoms" if atom_set == "ca" else "atoms (all)"
    assert out == f"RMSD {res['rmsd_A']:.3f} Å over {n} paired {kind}\n"


def test_rmsd_reference_model_under_the_estimate(aligned, case, tmp_path, capsys):
    out_json = tmp_path / "rmsd.json"
    code, _, err = run(
        ["rmsd", case.model, "--matrix", aligned.json_path, "--reference-model", case.moved_model, "--json", out_json],
        capsys,
    )
    assert code == 0, err
    _, ca = atoms(case.model, ca_only=True)
    expected = rmsd(np.array(aligned.doc["matrix"], float), case.T_true, ca)
    assert json.loads(out_json.read_text())["rmsd_A"] == pytest.approx(expected, abs=2e-3)


# ----------------------------------------------------------------------------- bad input (exit 2)
@pytest.fixture
def bad(case, tmp_path, capsys):
    """Run argv (paths may refer to `out`, an empty output folder) and check the common
    contract of a bad-input failure: exit 2, one error line, nothing written, inputs unchanged.
    Returns the message (after 'cryoalign: error: ')."""
    out = tmp_path / "out"
    out.mkdir()
    inputs = [case.source, case.target, case.model, case.moved_model]

    def check(argv, watch=(), files_before=()):
        watched = list(inputs) + [pathlib.Path(w) for w in watch]
        before = {p: sha256(p) for p in watched}
        code, stdout, stderr = run(argv, capsys)
        assert code == EXIT_INPUT, stderr
        assert stdout == ""
        assert "Traceback" not in stderr
        assert [p for p in out.rglob("*") if p.is_file()] == list(files_before)
        assert temp_files(tmp_path, case.folder) == []
        assert {p: sha256(p) for p in watched} == before
        return error_line(stderr)

    check.out = out
    return check


def test_source_is_not_a_map(bad, case, tmp_path):
    text = tmp_path / "notes.mrc"
    text.write_text("this is a text file, not a density map\n" * 60)  # longer than the header
    msg = bad(["align", text, case.target, "--json", bad.out / "r.json"], watch=[text])
    assert msg == (f"{text} is not an MRC/CCP4 map (no 'MAP ' tag at byte 208); pass a .mrc/.map/.ccp4 density map")


def test_source_is_a_short_text_file(bad, case, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a map\n")
    msg = bad(["align", text, case.target, "--json", bad.out / "r.json"], watch=[text])
    assert msg.startswith(f"{text} is not an MRC/CCP4 map: 10 bytes is shorter than the 1024-byte header")


def test_truncated_source_map(bad, case, tmp_path):
    raw = case.source.read_bytes()
    cut = tmp_path / "cut.mrc"
    cut.write_bytes(raw[: 1024 + 100_000])
    msg = bad(["align", cut, case.target, "--json", bad.out / "r.json"], watch=[cut])
    assert msg == (
        f"{cut} is truncated: header says (56, 56, 56) voxels ({56**3 * 4} bytes of data) "
        "but the file holds 100000 bytes; download the map again"
    )


def test_truncated_gzipped_target_map(bad, case, tmp_path):
    raw = gzip.decompress(case.target.read_bytes())
    cut = tmp_path / "cut.mrc.gz"
    cut.write_bytes(gzip.compress(raw[:-4000]))
    msg = bad(["align", case.source, cut, "--json", bad.out / "r.json"], watch=[cut])
    assert msg.startswith(f"{cut} is truncated: header says (48, 48, 48) voxels")


def test_nan_voxels(bad, case, tmp_path, write_mrc):
    data = read_map(case.source).data.copy()
    data[10, 20, 30] = np.nan
    data[11, 20, 30] = np.inf
    data[12, 20, 30] = np.nan
    path = write_mrc(tmp_path / "nan.mrc", data, voxel=5.0)
    msg = bad(["align", path, case.target, "--json", bad.out / "r.json"], watch=[path])
    assert msg == (f"{path} contains 3 NaN or infinite voxel values; replace them (for example with 0) before aligning")


@pytest.mark.parametrize("side", ["source", "target"])
def test_contour_above_the_map_maximum(bad, case, side):
    top = float((read_map(case.source) if side == "source" else case.target_map).data.max())
    argv = align_argv(case, "--json", bad.out / "r.json")
    argv[argv.index(f"--{side}-contour") + 1] = repr(top * 2)
    msg = bad(argv)
    m = re.fullmatch(
        rf"--{side}-contour {top * 2:g} is at or above the map's maximum {top:g}, so "
        rf"nothing would be kept; try --{side}-contour (\S+) \(or the EMDB recommended level\)",
        msg,
    )
    assert m, msg
    assert 0 < float(m.group(1)) < top


def test_failed_alignment_leaves_no_output_folder(bad, case):
    top = float(case.target_map.data.max())
    argv = align_argv(case, "--out-dir", bad.out / "new")
    argv[argv.index("--target-contour") + 1] = repr(top * 2)
    assert bad(argv).startswith("--target-contour")
    assert not (bad.out / "new").exists()


def test_contour_keeping_too_few_points(bad, case):
    level = 0.95 * float(read_map(case.source).data.max())
    argv = align_argv(case, "--json", bad.out / "r.json")
    argv[argv.index("--source-contour") + 1] = repr(level)
    msg = bad(argv)
    assert re.fullmatch(
        rf"only \d+ points of {re.escape(str(case.source))} lie above contour {level:g} at a "
        r"[35] Å sampling interval \(at least 20 are needed\); lower the contour or use a "
        r"smaller --sampling",
        msg,
    ), msg


def test_non_finite_contour(bad, case):
    argv = align_argv(case, "--json", bad.out / "r.json")
    argv[argv.index("--source-contour") + 1] = "nan"
    assert bad(argv) == "--source-contour nan is not a finite number; pass the EMDB recommended level"


@pytest.mark.parametrize(
    "name, expected",
    [
        ("notes.txt", "cannot parse model {path}: "),
        ("notes.pdb", "model {path} contains no atoms; pass a PDB or mmCIF file with coordinates"),
    ],
)
def test_source_model_that_does_not_parse(bad, case, tmp_path, name, expected):
    path = tmp_path / name
    path.write_text("this is not a model\n" * 20)
    msg = bad(
        align_argv(case, "--out-dir", bad.out / "dir", "--json", bad.out / "r.json", "--source-model", path),
        watch=[path],
    )
    assert msg.startswith(expected.format(path=path))


def test_missing_source_model(bad, case, tmp_path):
    path = tmp_path / "nope.pdb"
    msg = bad(align_argv(case, "--out-dir", bad.out / "dir", "--source-model", path))
    assert msg == f"model file not found: {path}; check the path"


def test_json_into_a_missing_folder(bad, case, tmp_path):
    target = tmp_path / "no_such_dir" / "r.json"
    msg = bad(align_argv(case, "--json", target))
    assert msg == (f"cannot write {target}: folder {target.parent} does not exist; create it first")
    assert not target.parent.exists()


def test_json_into_a_read_only_folder(bad, case, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("running as root: a read-only folder is still writable")
        msg = bad(align_argv(case, "--json", ro / "r.json"))
        assert msg == f"cannot write {ro / 'r.json'}: folder {ro} is not writable; choose another location"
        assert os.listdir(ro) == []
    finally:
        ro.chmod(0o755)


def test_json_into_a_directory(bad, case):
    msg = bad(align_argv(case, "--json", bad.out))
    assert msg == f"cannot write {bad.out}: it is a directory; give a file name"


def test_out_dir_is_an_existing_file(bad, case, tmp_path):
    f = tmp_path / "a_file"
    f.write_text("keep me\n")
    msg = bad(align_argv(case, "--out-dir", f), watch=[f])
    assert msg == f"output folder {f} is a file; choose another --out-dir"


def test_source_model_without_out_dir(bad, case):
    msg = bad(align_argv(case, "--json", bad.out / "r.json", "--source-model", case.model))
    assert msg == "--source-model needs --out-dir (where the moved model is written)"


@pytest.mark.parametrize("side", ["source", "target"])
def test_missing_input_map(bad, case, tmp_path, side):
    missing = tmp_path / "missing.mrc"
    argv = align_argv(case, "--json", bad.out / "r.json")
    argv[1 if side == "source" else 2] = missing
    assert bad(argv) == f"map file not found: {missing}; check the path (or give an EMDB ID such as EMD-1234)"


def test_directory_as_input_map(bad, case, tmp_path):
    argv = align_argv(case, "--json", bad.out / "r.json")
    argv[1] = tmp_path
    assert bad(argv) == f"{tmp_path} is a directory, not a map file; give the map file inside it"


def test_voxel_out_of_range(bad, case):
    msg = bad(align_argv(case, "--json", bad.out / "r.json", "--voxel", "100"))
    assert msg.startswith("--sampling 100.0 Å is outside 0.5-30 Å")


def test_rmsd_missing_matrix_file(bad, case, tmp_path):
    missing = tmp_path / "nope.json"
    msg = bad(
        ["rmsd", case.model, "--matrix", missing, "--reference-model", case.moved_model, "--json", bad.out / "r.json"]
    )
    assert msg == f"matrix file not found: {missing}"


@pytest.mark.parametrize(
    "content, expected",
    [
        ("hello world\n", "no matrix found in {path}: "),
        ("1 2 3 4 5 6 7 8 9\n", "matrix in {path} has 9 numbers; expected 12 (3x4) or 16 (4x4)"),
        ('{"other": 1}', "no matrix found in {path}: "),
        ("nan " * 12, "matrix in {path} has non-finite values"),
    ],
)
def test_rmsd_bad_matrix_file(bad, case, tmp_path, content, expected):
    path = tmp_path / "m.txt"
    path.write_text(content)
    msg = bad(
        ["rmsd", case.model, "--matrix", path, "--reference-model", case.moved_model, "--json", bad.out / "r.json"],
        watch=[path],
    )
    assert msg.startswith(expected.format(path=path))


def test_rmsd_missing_model(bad, case, tmp_path):
    missing = tmp_path / "nope.pdb"
    matrix = tmp_path / "m.txt"
    matrix.write_text(" ".join(map(str, np.eye(4).ravel())))
    msg = bad(
        ["rmsd", missing, "--matrix", matrix, "--reference-model", case.moved_model, "--json", bad.out / "r.json"]
    )
    assert msg == f"model file not found: {missing}; check the path"


def test_rmsd_json_into_a_missing_folder(bad, case, tmp_path):
    matrix = tmp_path / "m.txt"
    matrix.write_text(" ".join(map(str, np.eye(4).ravel())))
    target = tmp_path / "no_such_dir" / "r.json"
    msg = bad(["rmsd", case.model, "--matrix", matrix, "--reference-model", case.moved_model, "--json", target])
    assert msg == f"cannot write {target}: folder {target.parent} does not exist; create it first"


# A --matrix file that is not text/JSON of the expected shape is bad input (exit 2), not a crash.
@pytest.mark.parametrize("kind", ["binary-map", "directory", "ragged-json", "string-json"])
def test_rmsd_unreadable_matrix_file_is_bad_input(bad, case, tmp_path, kind):
    if kind == "binary-map":
        path = case.target  # a gzipped map passed as --matrix by mistake
    elif kind == "directory":
        path = tmp_path / "adir"
        path.mkdir()
    else:
        path = tmp_path / "m.json"
        path.write_text('{"matrix": [[1, 2], [3]]}' if kind == "ragged-json" else '{"matrix": "identity"}')
    msg = bad(
        ["rmsd", case.model, "--matrix", path, "--reference-model", case.moved_model, "--json", bad.out / "r.json"]
    )
    assert str(path) in msg


def test_json_onto_an_input_file_is_refused(bad, case, tmp_path, monkeypatch):
    import cryoalign.core.pipeline

    def must_not_run(*args, **kwargs):  # like check_writable, this should fail before any work
        raise AssertionError("align ran although --json names the source map")

    monkeypatch.setattr(cryoalign.core.pipeline, "align", must_not_run)
    victim = tmp_path / "source_copy.mrc"
    shutil.copy(case.source, victim)
    argv = align_argv(case, "--json", victim)
    argv[1] = victim
    msg = bad(argv, watch=[victim])
    assert str(victim) in msg


def test_rmsd_column_major_matrix_is_refused(bad, case, tmp_path):
    path = tmp_path / "colmajor.txt"
    path.write_text(" ".join(repr(float(v)) for v in case.T_true.T.ravel()) + "\n")
    msg = bad(
        ["rmsd", case.model, "--matrix", path, "--reference-model", case.moved_model, "--json", bad.out / "r.json"],
        watch=[path],
    )
    assert str(path) in msg


# ----------------------------------------------------------------------------- internal errors
def test_internal_error_exits_1_with_traceback(case, tmp_path, capsys, monkeypatch):
    import cryoalign.core.pipeline

    def boom(*args, **kwargs):
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(cryoalign.core.pipeline, "align", boom)
    out_json = tmp_path / "r.json"
    code, out, err = run(align_argv(case, "--json", out_json), capsys)
    assert code == EXIT_INTERNAL
    assert "Traceback" in err and "RuntimeError: simulated bug" in err
    assert err.strip().splitlines()[-1] == "cryoalign: internal error (please report it with the traceback above)"
    assert not out_json.exists()
    assert temp_files(tmp_path) == []


def test_keyboard_interrupt_exits_130(case, tmp_path, capsys, monkeypatch):
    import cryoalign.core.pipeline

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cryoalign.core.pipeline, "align", interrupted)
    code, _, err = run(align_argv(case, "--json", tmp_path / "r.json"), capsys)
    assert code == 130
    assert err.strip().splitlines()[-1] == "cryoalign: interrupted"
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------- argparse usage (exit 2)
@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["frobnicate"],
        ["align"],
        ["align", "a.mrc"],
        ["align", "a.mrc", "b.mrc", "--voxel", "abc"],
        ["align", "a.mrc", "b.mrc", "--source-contour", "high"],
        ["align", "a.mrc", "b.mrc", "--seed", "1.5"],
        ["align", "a.mrc", "b.mrc", "--keypoints", "sift"],
        ["align", "a.mrc", "b.mrc", "--bogus"],
        ["rmsd", "m.pdb"],
        ["rmsd", "m.pdb", "--matrix", "r.json"],
        ["rmsd", "m.pdb", "--matrix", "r.json", "--reference", "c.json", "--reference-model", "f.pdb"],
        ["rmsd", "m.pdb", "--matrix", "r.json", "--reference", "c.json", "--atoms", "backbone"],
    ],
    ids=lambda a: " ".join(a) or "no-args",
)
def test_usage_errors_exit_2(argv, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert "usage: cryoalign" in err
    assert os.listdir(tmp_path) == []


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out == f"cryoalign {cryoalign.__version__}\n"


# ----------------------------------------------------------------------------- found by fuzzing
def test_out_dir_holding_other_files_is_refused_and_left_alone(bad, case):
    (bad.out / "dir" / "source_on_target.mrc").mkdir(parents=True)  # not written by cryoalign
    notes = bad.out / "dir" / "notes.txt"
    notes.write_text("mine\n")
    msg = bad(
        align_argv(case, "--out-dir", bad.out / "dir", "--json", bad.out / "r.json"),
        watch=[notes],
        files_before=[notes],
    )
    assert msg == (
        f"output folder {bad.out / 'dir'} holds files that cryoalign did not write (notes.txt, "
        "source_on_target.mrc); choose a new or empty folder (a run replaces the whole folder)"
    )
    assert sorted(p.name for p in (bad.out / "dir").iterdir()) == ["notes.txt", "source_on_target.mrc"]
    assert not (bad.out / "r.json").exists()


def test_negative_seed(bad, case):
    assert bad(align_argv(case, "--seed", "-1")) == "--seed -1 is not allowed: give a non-negative integer"


def test_contour_at_the_map_minimum(bad, case):
    argv = align_argv(case, "--json", bad.out / "r.json")
    argv[argv.index("--source-contour") + 1] = "-1000"
    msg = bad(argv)
    assert re.fullmatch(
        r"--source-contour -1000 is at or below the map's minimum \S+, so every voxel of the box "
        r"would count as molecule; try --source-contour \S+ \(or the EMDB recommended level\)",
        msg,
    )
