"""Chain fitting (cryoalign.apps.fit, `cryoalign fit`) and `cryoalign simulate`.

The case: a model of three identical actin subunits (tests/data/3mfp.pdb.gz chain A,
copied to chains A, B, C by a C3 rotation about an axis 35 Å from its centroid, so
the copies touch without clashing) and the map simulated from it at 6 Å (2 Å voxels).
Fitting the deposited model into its own map must put every chain onto one of the
three copies, and the assembled model must use each copy once.
"""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial import cKDTree

import cryoalign
from _maps import ca_coords as ca_of
from _maps import three_copies
from cryoalign import transform as tf
from cryoalign.apps import fit, simulate
from cryoalign.cli import main
from cryoalign.types import Candidate, Score

RESOLUTION_A = 6.0
VOXEL_A = 2.0
CHAINS = ["A", "B", "C"]


# --------------------------------------------------------------------------- helpers
def density_at(density, xyz) -> np.ndarray:
    """Trilinear interpolation of the map at world positions (0 outside), with scipy."""
    f = (np.asarray(xyz, float) - density.origin_A) / density.voxel_size_A
    return ndimage.map_coordinates(density.data, [f[:, 2], f[:, 1], f[:, 0]], order=1, cval=0.0)


def run(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def case(data_dir, tmp_path_factory):
    import gemmi

    _, tri, _, _ = three_copies(data_dir)
    folder = tmp_path_factory.mktemp("fit")
    model_path = folder / "three.pdb"
    tri.write_pdb(str(model_path))
    tri = gemmi.read_structure(str(model_path))  # as the fit reads it (3-decimal coordinates)
    copies = [ca_of(tri, c) for c in CHAINS]
    for i, j in ((0, 1), (0, 2), (1, 2)):
        assert 3.0 < cKDTree(copies[i]).query(copies[j])[0].min() < 8.0  # touching, not clashing
    target = simulate.simulate(tri, RESOLUTION_A, voxel_A=VOXEL_A)
    tc = simulate.contour_for(target, simulate.model_mass_Da(tri))
    map_path = folder / "three.mrc"
    cryoalign.write_map(target, map_path)
    return SimpleNamespace(tri=tri, model=model_path, map=map_path, target=target, tc=tc, copies=copies, folder=folder)


def copy_hit(T, ca, copies) -> tuple[int, float]:
    """(index of the copy that CA moved by T lands on, RMSD to it)."""
    moved = tf.apply(T, ca)
    d = [float(np.sqrt(((moved - c) ** 2).sum(1).mean())) for c in copies]
    return int(np.argmin(d)), min(d)


# --------------------------------------------------------------------------- fit_model
@pytest.fixture(scope="module")
def fitted(case):
    return fit.fit_model(str(case.model), case.target, resolution_A=RESOLUTION_A, top=3, contour=case.tc, jobs=1)


def test_fit_places_every_chain_onto_a_distinct_copy(fitted, case):
    r = fitted
    assert [c.chain for c in r.chains] == CHAINS
    assert r.left_out == [] and sorted(r.assembled) == CHAINS
    used = []
    for c in r.chains:
        assert 1 <= len(c.placements) <= 3
        assert c.atoms == len(case.copies[0])  # CA trace of one subunit
        T = c.placements[r.assembled[c.chain]].T_target_source
        k, err = copy_hit(T, ca_of(case.tri, c.chain), case.copies)
        assert err < 2.0, (c.chain, err)
        used.append(k)
    assert sorted(used) == [0, 1, 2]  # each copy once: no clash
    placed = fit.assembled_structure(case.tri, r)
    assert [ch.name for ch in placed[0]] == CHAINS
    xyz = [ca_of(placed, n) for n in CHAINS]
    for i, j in ((0, 1), (0, 2), (1, 2)):
        assert cKDTree(xyz[i]).query(xyz[j])[0].min() > 3.0


def test_fit_placements_cover_the_identical_copies(fitted, case):
    # the three copies are equally good, so each chain's top 3 holds all of them, best first
    for c in fitted.chains:
        assert len(c.placements) == 3
        hits = [copy_hit(p.T_target_source, ca_of(case.tri, c.chain), case.copies) for p in c.placements]
        assert sorted(k for k, _ in hits) == [0, 1, 2] and max(e for _, e in hits) < 2.0
        values = [p.score.value for p in c.placements]
        assert values == sorted(values, reverse=True)
        assert all(p.score.js_divergence is None and p.mask_centre_A is not None for p in c.placements)


def test_fit_result_json(fitted, case):
    r = fitted
    doc = json.loads(json.dumps(r.to_json()))
    assert doc["resolution_A"] == RESOLUTION_A and doc["version"] == cryoalign.__version__
    assert doc["target_contour"] == case.tc and doc["target_contour_estimated"] is False
    assert [c["chain"] for c in doc["chains"]] == CHAINS and doc["left_out"] == []
    for c, cj in zip(r.chains, doc["chains"]):
        assert [p["rank"] for p in cj["placements"]] == list(range(1, len(c.placements) + 1))
        for p, pj in zip(c.placements, cj["placements"]):
            np.testing.assert_array_equal(pj["matrix"], p.T_target_source)
            assert pj["score"] == p.score.value and len(pj["mask_centre"]) == 3
        assert cj["assembled_rank"] == r.assembled[c.chain] + 1
        assert cj["source_contour"] == c.source_contour > 0
    p = doc["params"]
    assert p["mode"] == "local" and p["sampling_A"] == 3.0 and p["top"] == 3
    assert p["chains"] == CHAINS and p["resolution_A"] == RESOLUTION_A
    assert "total" in doc["timings_s"]
    table = fit.placement_table(r).splitlines()
    assert len(table) == 1 + sum(len(c.placements) for c in r.chains)
    assert sum(row.endswith("\tyes") for row in table) == 3


def test_fit_unknown_chain_is_an_input_error(case):
    with pytest.raises(cryoalign.InputError, match=r"Z.*A, B, C"):
        fit.fit_model(case.tri, case.target, resolution_A=RESOLUTION_A, chains=["Z"], contour=case.tc)


# --------------------------------------------------------------------------- assemble
def _line_model(names, n=10):
    """Chains of n ALA residues (CA only) on the x axis, 3.8 Å apart, all at the same place."""
    import gemmi

    st = gemmi.Structure()
    model = gemmi.Model("1")
    for name in names:
        chain = gemmi.Chain(name)
        for i in range(n):
            res = gemmi.Residue()
            res.name = "ALA"
            res.seqid = gemmi.SeqId(i + 1, " ")
            atom = gemmi.Atom()
            atom.name = "CA"
            atom.element = gemmi.Element("C")
            atom.pos = gemmi.Position(3.8 * i, 0.0, 0.0)
            res.add_atom(atom)
            chain.add_residue(res)
        model.add_chain(chain)
    st.add_model(model)
    return st


def _chain_fit(name, score, shifts):
    """ChainFit whose placements translate the chain by `shifts`; scores fall from `score`."""
    placements = [
        Candidate(
            T_target_source=tf.make(np.eye(3), s),
            score=Score(
                similarity=score - 0.01 * k,
                vector_agreement=score - 0.01 * k,
                js_divergence=None,
                overlap=1.0,
                correlation=score - 0.01 * k,
            ),
            mask_centre_A=(0.0, 0.0, 0.0),
        )
        for k, s in enumerate(shifts)
    ]
    return fit.ChainFit(chain=name, placements=placements, atoms=10, source_contour=1.0)


def test_assemble_skips_clashing_placements():
    st = _line_model("ABCDE")
    fits = [  # listed worst first: assemble must go by score, not list order
        _chain_fit("E", 0.0, []),  # no placement at all
        _chain_fit(
            "D",
            0.6,
            [
                [32.4, 0, 0],  # 2 of 10 atoms within 3 Å of A: clash
                [36.0, 0, 0],
            ],
        ),  # 1 of 10 (not more than 10%): kept
        _chain_fit("C", 0.7, [[0, 0, 0], [0, 10.0, 0], [1.0, 10.5, 0.5]]),  # onto A, onto B, onto B
        _chain_fit("B", 0.8, [[0, 0, 0], [0, 10.0, 0]]),  # onto A (clash), then free
        _chain_fit("A", 0.9, [[0, 0, 0]]),
    ]
    chosen, left_out = fit.assemble(st, fits)
    assert chosen == {"A": 0, "B": 1, "D": 1}
    assert left_out == ["C", "E"]  # by score; a chain without placements last

    result = fit.FitResult(
        chains=fits,
        assembled=chosen,
        left_out=left_out,
        target_contour=1.0,
        target_contour_estimated=False,
        resolution_A=6.0,
    )
    placed = fit.assembled_structure(st, result)
    assert sorted(ch.name for ch in placed[0]) == ["A", "B", "D"]
    np.testing.assert_allclose(ca_of(placed, "B")[:, 1], 10.0, atol=1e-3)
    np.testing.assert_allclose(ca_of(placed, "D")[:, 0], 36.0 + 3.8 * np.arange(10), atol=1e-3)
    doc = result.to_json()
    assert {c["chain"]: c["assembled_rank"] for c in doc["chains"]} == {"E": None, "D": 2, "C": None, "B": 2, "A": 1}


def test_assemble_places_identical_chains_in_turn():
    # two chains with the same two placements: the better-scoring one takes the first
    st = _line_model("AB")
    fits = [_chain_fit("A", 0.5, [[0, 0, 0], [0, 0, 20.0]]), _chain_fit("B", 0.6, [[0, 0, 0], [0, 0, 20.0]])]
    chosen, left_out = fit.assemble(st, fits)
    assert chosen == {"B": 0, "A": 1} and left_out == []


# --------------------------------------------------------------------------- command line
@pytest.fixture(scope="module")
def cli_fit(case, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("cli_fit") / "out"
    code = main(
        [
            "fit",
            str(case.model),
            str(case.map),
            "--resolution",
            "6",
            "--top",
            "2",
            "--chains",
            "B,C",
            "--contour",
            str(case.tc),
            "--out-dir",
            str(out_dir),
            "--jobs",
            "1",
            "--quiet",
        ]
    )
    return SimpleNamespace(code=code, out=out_dir)


def test_cli_fit_writes_every_output(cli_fit):
    assert cli_fit.code == 0
    out = cli_fit.out
    doc = json.loads((out / "fit.json").read_text())
    assert [c["chain"] for c in doc["chains"]] == ["B", "C"] and doc["left_out"] == []
    expected = {f"chain_{c['chain']}_rank{p['rank']}.pdb" for c in doc["chains"] for p in c["placements"]}
    assert all(1 <= len(c["placements"]) <= 2 for c in doc["chains"])
    assert {p.name for p in out.glob("chain_*_rank*.pdb")} == expected  # no chain A files
    assert {p.name for p in out.iterdir()} == expected | {
        ".cryoalign",
        "assembled.pdb",
        "placements.tsv",
        "fit.json",
        "fit.cxc",
        "report.html",
        "fit_placements.png",
    }
    rows = (out / "placements.tsv").read_text().splitlines()
    assert rows[0].split("\t")[:3] == ["chain", "rank", "score"]
    assert len(rows) == 1 + len(expected)
    assert sorted(r.split("\t")[0] for r in rows[1:] if r.endswith("\tyes")) == ["B", "C"]
    script = (out / "fit.cxc").read_text()
    assert "three.mrc" in script and "assembled.pdb" in script and "level" in script
    assert "open chain_B_rank1.pdb" in script and "open chain_C_rank1.pdb" in script  # every rank-1 chain


def test_cli_fit_models_sit_on_the_density(cli_fit, case):
    import gemmi

    out = cli_fit.out
    for path in out.glob("chain_*_rank*.pdb"):
        st = gemmi.read_structure(str(path))
        name = path.name.split("_")[1]
        assert [ch.name for ch in st[0]] == [name]
        assert st[0].count_atom_sites() == case.tri[0][name].count_atom_sites()
        values = density_at(case.target, ca_of(st))
        assert values.mean() > case.tc, path.name  # every top-2 placement is on a copy
    placed = gemmi.read_structure(str(out / "assembled.pdb"))
    assert [ch.name for ch in placed[0]] == ["B", "C"]
    values = density_at(case.target, ca_of(placed))
    assert values.mean() > case.tc
    assert (values > case.tc / 2).mean() >= 0.9
    b, c = ca_of(placed, "B"), ca_of(placed, "C")
    assert cKDTree(b).query(c)[0].min() > 3.0  # different copies


def test_cli_fit_unknown_chain_names_the_available_ones(case, tmp_path, capsys):
    code, _, err = run(
        [
            "fit",
            case.model,
            case.map,
            "--resolution",
            6,
            "--chains",
            "Z",
            "--contour",
            case.tc,
            "--out-dir",
            tmp_path / "out",
            "--jobs",
            1,
        ],
        capsys,
    )
    assert code == 2
    line = [ln for ln in err.splitlines() if ln.startswith("cryoalign: error:")]
    assert len(line) == 1 and "Z" in line[0] and "A, B, C" in line[0]
    assert not (tmp_path / "out").exists()  # no empty output folder left


def test_fit_a_chain_named_twice_is_fitted_once(case):
    r = fit.fit_model(
        case.tri, case.target, resolution_A=RESOLUTION_A, chains=["B", "B"], top=1, contour=case.tc, jobs=1
    )
    assert [c.chain for c in r.chains] == ["B"] and list(r.assembled) == ["B"]


def test_cli_fit_needs_the_resolution(case, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["fit", str(case.model), str(case.map), "--out-dir", str(tmp_path / "out")])
    assert info.value.code == 2
    assert "--resolution" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_cli_simulate_writes_a_map_and_suggests_a_contour(case, tmp_path, capsys):
    out_map = tmp_path / "sim.mrc"
    code, out, err = run(["simulate", case.model, "--resolution", 6, "-o", out_map], capsys)
    assert code == 0, err
    m = cryoalign.read_map(out_map)
    np.testing.assert_allclose(m.voxel_size_A, 2.0)
    np.testing.assert_allclose(m.data, case.target.data, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(m.origin_A, case.target.origin_A, atol=1e-3)
    assert "suggested contour" in out
    level = float(re.search(r"suggested contour ([0-9.eE+-]+)", out).group(1))
    assert level == pytest.approx(case.tc, rel=1e-4)
    assert 0 < level < float(m.data.max())
