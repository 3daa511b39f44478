"""Symmetry is not doubt: poses that land on copies of the same density are symmetry mates
(symmetry.py); they do not count against the answer's confidence, do not start the wider
search, and are compared again on the full map only when the copies can differ."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

import cryoalign
from cryoalign import transform as tf
from cryoalign.config import AlignConfig
from cryoalign.core import symmetry
from cryoalign.core.confidence import assess
from test_pipeline import actin, simulate  # noqa: F401  (fixture)

C3_AXIS = np.array([0.3, 0.2, 1.0]) / np.linalg.norm([0.3, 0.2, 1.0])


def _cand(value, similarity=0.9, local=0.8, copy=None, shift=60.0):
    s = SimpleNamespace(
        value=value,
        correlation=value,
        vector_agreement=1.0,
        overlap=1.0,
        similarity=similarity,
        local_correlation=local,
    )
    return SimpleNamespace(score=s, copy_correlation=copy, copy_shift_A=None if copy is None else shift)


def test_mates_do_not_count_as_disagreement_or_against_the_lead():
    # three copies of a symmetric assembly: the second copy's similarity happens to be higher
    c = [
        _cand(0.80, similarity=0.90, copy=1.0, shift=0.0),
        _cand(0.799, similarity=0.91, copy=0.98),
        _cand(0.798, copy=0.975),
        _cand(0.30, similarity=0.5, local=0.3, copy=0.2),
    ]
    a = assess(c, "global")
    assert a["evidence"]["symmetry_mates"] == 2 and a["evidence"]["terms_agree"] is True
    assert a["evidence"]["margin"] == pytest.approx((0.80 - 0.30) / 0.80, abs=1e-4)
    assert a["verdict"] == "high" and a["evidence"]["pseudo_symmetric_ties"] == 0
    # the same scores without the copy evidence: the old reading, doubt
    plain = assess([_cand(x.score.value, x.score.similarity, x.score.local_correlation) for x in c], "global")
    assert plain["verdict"] == "low" and plain["evidence"]["symmetry_mates"] == 0


def test_a_pseudo_symmetric_tie_is_medium_and_a_near_neighbour_is_not_a_mate():
    tie = assess([_cand(0.80, copy=1.0, shift=0.0), _cand(0.795, copy=0.85), _cand(0.2, copy=0.1)], "global")
    assert tie["evidence"]["pseudo_symmetric_ties"] == 1 and tie["verdict"] == "medium"
    config = AlignConfig()
    near = _cand(0.79, copy=0.99, shift=config.symmetry_min_shift_A - 1.0)  # a shoulder of the best pose
    assert not symmetry.is_mate(near, config)
    assert symmetry.is_mate(_cand(0.79, copy=config.symmetry_mate_cc, shift=30.0), config)
    assert not symmetry.is_exact(_cand(0.79, copy=config.symmetry_exact_cc - 0.01, shift=30.0), config)


def _trimer(actin, delete=(), seed=3):  # noqa: F811
    """A C3 trimer of actin (copies B and C without the residues in `delete`, one range each),
    simulated without noise as the target, and moved as the source. Returns the maps, their
    contours, the right answer (copy A on copy A) and the source-frame CA."""
    rng = np.random.default_rng(seed)
    base = actin["xyz"] - actin["xyz"].mean(0)
    side = np.cross(C3_AXIS, [1.0, 0.0, 0.0])
    base = base + 32.0 * side / np.linalg.norm(side)
    rots = [Rotation.from_rotvec(C3_AXIS * np.radians(120.0 * k)).as_matrix() for k in range(3)]
    keep = [np.ones(len(base), bool)] * 3
    for k, (lo, hi) in enumerate(delete, 1):
        keep[k] = ~((actin["resnum"] >= lo) & (actin["resnum"] < hi))
    xyz = np.vstack([base[m] @ R.T for R, m in zip(rots, keep)])
    atoms = {
        "xyz": xyz,
        "z": np.concatenate([actin["z"][m] for m in keep]),
        "ca": np.concatenate([actin["ca"][m] for m in keep]),
        "mass": 3 * actin["mass"],
    }
    T_move = tf.make(tf.random_rotation(rng), rng.uniform(-20.0, 20.0, 3))
    target, tc = simulate(atoms, xyz, 2.0, rng, pad=10.0)
    source, sc = simulate(atoms, tf.apply(T_move, xyz), 2.5, rng, pad=10.0)
    return source, sc, target, tc, tf.invert(T_move), tf.apply(T_move, xyz[atoms["ca"]])


@pytest.fixture(scope="module")
def actin_numbered(actin, data_dir):  # noqa: F811
    import gemmi

    st = gemmi.read_structure(str(data_dir / "3mfp.pdb.gz"))
    nums = np.array([res.seqid.num for ch in st[0] for res in ch for _ in res])
    assert len(nums) == len(actin["xyz"])
    return dict(actin, resnum=nums)


def test_an_exact_trimer_is_answered_without_doubt_or_wider_search(actin_numbered):
    source, sc, target, tc, T_true, ca = _trimer(actin_numbered)
    r = cryoalign.align(source, target, source_contour=sc, target_contour=tc, mode="global")
    assert r.confidence["verdict"] != "low" and r.confidence["evidence"]["symmetry_mates"] == 2
    assert "wide_search" not in r.stats  # the auto wider search did not start
    mates = [c for c in r.candidates[1:] if symmetry.is_mate(c, AlignConfig())]
    assert len(mates) == 2
    assert all(c.copy_correlation > 0.95 and c.copy_shift_A > 50.0 for c in mates)  # copies 63 Å apart
    assert r.candidates[0].copy_correlation == 1.0
    j = r.to_json()
    assert j["candidates"][1]["copy_correlation"] == mates[0].copy_correlation
    assert j["confidence"]["evidence"]["symmetry_mates"] == 2


def test_pseudo_symmetric_copies_are_told_apart(actin_numbered):
    # copies B and C each lack 20 residues (5 %) in different places: only copy A on A is right
    source, sc, target, tc, T_true, ca = _trimer(actin_numbered, delete=((50, 70), (200, 220)))
    r = cryoalign.align(source, target, source_contour=sc, target_contour=tc, mode="global")
    assert tf.rmsd(r.T_target_source, T_true, ca) < 1.0
    others = r.candidates[1:]
    assert others and all(
        AlignConfig().symmetry_mate_cc <= c.copy_correlation < AlignConfig().symmetry_exact_cc
        for c in others
        if c.copy_shift_A > 50
    )  # mates whose copies differ
