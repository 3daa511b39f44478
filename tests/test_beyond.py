"""What goes beyond the published method: map-level refinement, symmetry-equivalent
answers flagged as ambiguous, and the mirrored-hand check.

Maps are simulated from actin (tests/data/3mfp.pdb.gz) with the helpers of
test_pipeline; the symmetric case is a C3 trimer of actin built here.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

import cryoalign
from cryoalign import transform as tf
from cryoalign.cli import main
from cryoalign.core.pipeline import mirror
from test_pipeline import actin, pair0, result0, simulate  # noqa: F401  (fixtures)

C3_AXIS = np.array([0.3, 0.2, 1.0]) / np.linalg.norm([0.3, 0.2, 1.0])


# --------------------------------------------------------------------------- symmetry
@pytest.fixture(scope="module")
def trimer(actin):  # noqa: F811
    """A C3 trimer of actin about C3_AXIS through the origin (copies do not clash), the
    trimer moved by T_move as the source map; returns maps, contours, the three right
    answers and the source-frame CA coordinates."""
    rng = np.random.default_rng(3)
    base = actin["xyz"] - actin["xyz"].mean(0)
    side = np.cross(C3_AXIS, [1.0, 0.0, 0.0])
    base = base + 32.0 * side / np.linalg.norm(side)
    rots = [Rotation.from_rotvec(C3_AXIS * np.radians(120.0 * k)).as_matrix() for k in range(3)]
    xyz = np.vstack([base @ R.T for R in rots])
    atoms = {"xyz": xyz, "z": np.tile(actin["z"], 3), "ca": np.tile(actin["ca"], 3), "mass": 3 * actin["mass"]}
    T_move = tf.make(tf.random_rotation(rng), rng.uniform(-20.0, 20.0, 3))
    target, tc = simulate(atoms, xyz, 2.0, rng, pad=10.0)
    source, sc = simulate(atoms, tf.apply(T_move, xyz), 2.5, rng, pad=10.0)
    answers = [tf.make(R, np.zeros(3)) @ tf.invert(T_move) for R in rots]
    ca = tf.apply(T_move, xyz[atoms["ca"]])
    return source, sc, target, tc, answers, ca


@pytest.fixture(scope="module")
def trimer_result(trimer):
    source, sc, target, tc, _, _ = trimer
    return cryoalign.align(source, target, source_contour=sc, target_contour=tc)


def test_symmetric_assembly_is_flagged_ambiguous_with_the_three_c3_poses(trimer, trimer_result):
    *_, answers, ca = trimer
    r = trimer_result
    assert r.params["mode"] == "global"
    assert r.ambiguous and len(r.equivalent) == 2
    # the best and its equivalents are the three right answers, one each
    found = set()
    for k in (1, *r.equivalent):
        errs = [tf.rmsd(r.candidates[k - 1].T_target_source, A, ca) for A in answers]
        assert min(errs) < 1.0, errs
        found.add(int(np.argmin(errs)))
    assert found == {0, 1, 2}
    # each relates to the best by a 120-degree turn about the C3 axis
    for k in r.equivalent:
        rel = r.relation_to_best(r.candidates[k - 1])
        assert rel["angle_deg"] == pytest.approx(120.0, abs=2.0)
        assert abs(np.dot(rel["axis"], C3_AXIS)) > 0.999
        assert r.candidates[k - 1].score.value >= r.score.value * 0.97
    # the three ties were compared again on every source voxel, and still tie: kept and flagged
    assert r.stats["tie_break"]["poses"] == 3
    assert r.stats["tie_break"]["voxels"] == int((trimer[0].data >= trimer[1]).sum())  # all source voxels
    assert r.confidence["verdict"] == "medium"


def test_ambiguity_in_the_json(trimer_result):
    j = json.loads(json.dumps(trimer_result.to_json()))
    assert j["ambiguous"] is True
    assert [e["rank"] for e in j["equivalent_poses"]] == list(trimer_result.equivalent)
    for e in j["equivalent_poses"]:
        assert e["angle_deg"] == pytest.approx(120.0, abs=2.0) and len(e["axis"]) == 3
    assert j["candidates"][0]["rank"] == 1 and j["candidates"][0]["equivalent_to_best"] is True
    assert "relative_to_best" not in j["candidates"][0]
    for c in j["candidates"][1:]:
        assert c["equivalent_to_best"] == (c["rank"] in trimer_result.equivalent)
        assert set(c["relative_to_best"]) == {"angle_deg", "axis", "translation_A"}


def test_asymmetric_pair_is_not_ambiguous(result0):  # noqa: F811
    assert not result0.ambiguous and result0.equivalent == ()
    j = result0.to_json()
    assert j["ambiguous"] is False and j["equivalent_poses"] == []
    assert "hand" not in j and "mirrored_matrix" not in j


# --------------------------------------------------------------------------- hand
def test_mirror_reflects_world_coordinates_through_the_box_centre(pair0):  # noqa: F811
    source = pair0[0]
    flipped, F = mirror(source)
    assert np.linalg.det(F[:3, :3]) == pytest.approx(-1.0)
    rng = np.random.default_rng(0)
    ijk = rng.integers(0, source.shape_xyz, (50, 3))
    world = source.index_to_world(ijk)
    image = flipped.world_to_index(tf.apply(F, world))
    np.testing.assert_allclose(image, np.round(image), atol=1e-9)  # lands on voxels
    im = np.round(image).astype(int)
    np.testing.assert_array_equal(
        flipped.data[im[:, 2], im[:, 1], im[:, 0]], source.data[ijk[:, 2], ijk[:, 1], ijk[:, 0]]
    )
    np.testing.assert_allclose(F @ F, np.eye(4), atol=1e-12)  # an involution


def test_check_hand_calls_a_mirrored_source_mirrored_and_gives_the_improper_matrix(pair0):  # noqa: F811
    source, sc, target, tc, T_true, moved_ca = pair0
    flipped, F = mirror(source)
    r = cryoalign.align(flipped, target, source_contour=sc, target_contour=tc, check_hand=True)
    assert r.hand["verdict"] == "mirrored"
    assert r.hand["mirrored_score"] > r.hand["score"] * 1.1
    M = r.mirrored_T_target_source
    assert np.linalg.det(M[:3, :3]) == pytest.approx(-1.0, abs=1e-6)
    # the mirror-image model in the flipped map's frame goes back onto the original atoms
    original = tf.apply(tf.invert(T_true), moved_ca)
    rms = np.sqrt(((tf.apply(M, tf.apply(F, moved_ca)) - original) ** 2).sum(1).mean())
    assert rms < 1.0
    R = r.T_target_source[:3, :3]  # `matrix` stays a proper rotation
    assert np.linalg.det(R) == pytest.approx(1.0)
    j = r.to_json()
    assert j["hand"]["verdict"] == "mirrored" and np.allclose(j["mirrored_matrix"], M)
    assert "hand check" in r.timings_s


def test_check_hand_on_an_unflipped_pair_says_same(pair0):  # noqa: F811
    source, sc, target, tc, _, _ = pair0
    r = cryoalign.align(source, target, source_contour=sc, target_contour=tc, check_hand=True)
    assert r.hand["verdict"] == "same"
    assert r.hand["score"] > r.hand["mirrored_score"] * 1.1
    assert r.mirrored_T_target_source is None and "mirrored_matrix" not in r.to_json()


# --------------------------------------------------------------------------- map refinement
def test_map_refinement_raises_the_correlation_and_can_be_switched_off(pair0, result0):  # noqa: F811
    source, sc, target, tc, T_true, moved_ca = pair0
    best = result0.candidates[0]
    assert best.score.correlation is not None and best.correlation_before is not None
    assert best.score.correlation >= best.correlation_before
    assert result0.timings_s["map refine"] > 0
    plain = cryoalign.align(source, target, source_contour=sc, target_contour=tc, map_refine=False)
    assert all(c.score.correlation is None and c.correlation_before is None for c in plain.candidates)
    assert plain.score.value == plain.score.similarity
    assert "map refine" not in plain.timings_s and "map_refine" not in plain.to_json()
    j = result0.to_json()
    assert j["map_refine"] == {
        "correlation_before": best.correlation_before,
        "correlation_after": best.score.correlation,
    }
    T_expected = tf.invert(T_true)
    assert (
        tf.rmsd(result0.T_target_source, T_expected, moved_ca)
        <= tf.rmsd(plain.T_target_source, T_expected, moved_ca) + 0.05
    )


# --------------------------------------------------------------------------- command line
def _write(m, path):
    cryoalign.write_map(m, str(path))
    return str(path)


def test_cli_check_hand_writes_the_flipped_map_and_the_hand_verdict(pair0, tmp_path, capsys):  # noqa: F811
    source, sc, target, tc, _, _ = pair0
    src = _write(source, tmp_path / "source.mrc")
    tgt = _write(target, tmp_path / "target.mrc")
    out_json, flipped = tmp_path / "r.json", tmp_path / "flipped.mrc"
    code = main(
        [
            "align",
            src,
            tgt,
            "--source-contour",
            repr(sc),
            "--target-contour",
            repr(tc),
            "--check-hand",
            "--flipped-out",
            str(flipped),
            "--json",
            str(out_json),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    j = json.loads(out_json.read_text())
    assert j["hand"]["verdict"] == "same" and "mirrored_matrix" not in j
    assert "hand: same" in out
    written = cryoalign.read_map(str(flipped))
    np.testing.assert_array_equal(written.data, source.data[:, :, ::-1])
    np.testing.assert_allclose(written.origin_A, source.origin_A, atol=1e-4)


def test_cli_flipped_out_needs_check_hand(pair0, tmp_path, capsys):  # noqa: F811
    source, sc, target, tc, _, _ = pair0
    src = _write(source, tmp_path / "source.mrc")
    tgt = _write(target, tmp_path / "target.mrc")
    code = main(["align", src, tgt, "--flipped-out", str(tmp_path / "f.mrc")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip() == "cryoalign: error: --flipped-out needs --check-hand"
    assert not (tmp_path / "f.mrc").exists()


def test_cli_no_map_refine_reports_the_point_score(pair0, tmp_path, capsys):  # noqa: F811
    source, sc, target, tc, _, _ = pair0
    src = _write(source, tmp_path / "source.mrc")
    tgt = _write(target, tmp_path / "target.mrc")
    out_json = tmp_path / "r.json"
    code = main(
        [
            "align",
            src,
            tgt,
            "--source-contour",
            repr(sc),
            "--target-contour",
            repr(tc),
            "--no-map-refine",
            "--json",
            str(out_json),
            "--quiet",
        ]
    )
    assert code == 0
    j = json.loads(out_json.read_text())
    assert j["params"]["map_refine"] is False
    assert j["score_terms"]["correlation"] is None
    assert j["score"] == j["score_terms"]["similarity"]
