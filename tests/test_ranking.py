"""The final ranking's companions: the confidence verdict, the wider search that does not
use descriptors, and the tie break at full resolution."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

import cryoalign
from _maps import resampled_map
from cryoalign import transform as tf
from cryoalign.config import AlignConfig
from cryoalign.core import prepare as prep
from cryoalign.core import recall
from cryoalign.core.confidence import assess


def _cand(corr, agree, overlap=1.0, similarity=None, local=None):
    s = SimpleNamespace(
        correlation=corr,
        vector_agreement=agree,
        overlap=overlap,
        similarity=agree if similarity is None else similarity,
        local_correlation=corr if local is None else local,
    )
    s.value = corr * agree
    return SimpleNamespace(score=s)


def test_a_strong_clear_answer_is_high():
    c = assess([_cand(0.8, 0.9), _cand(0.3, 0.4)], "global")
    assert c["verdict"] == "high" and "advice" not in c
    assert c["evidence"]["margin"] == pytest.approx((0.72 - 0.12) / 0.72, abs=1e-4)


def test_a_pose_the_other_terms_reject_is_low():
    # the r5_3696-3695 situation: a slightly better correlation, every other term against it
    c = assess([_cand(0.249, 0.186, overlap=0.49, local=0.18), _cand(0.244, 0.499, local=0.51)], "global")
    assert c["verdict"] == "low" and c["evidence"]["terms_agree"] is False
    assert "mode='local'" in c["advice"]


def test_a_weak_score_is_low_unless_it_leads_clearly_and_ties_are_medium():
    assert assess([_cand(0.2, 0.4), _cand(0.15, 0.4)], "global")["verdict"] == "low"  # 0.08 < 0.10, lead 25%
    assert assess([_cand(0.2, 0.8), _cand(0.15, 0.8)], "local")["verdict"] == "low"  # 0.16 < 0.20, lead 25%
    clear = assess([_cand(0.2, 0.4), _cand(0.05, 0.2)], "global")  # 0.08, lead 88%
    assert clear["verdict"] == "medium" and clear["evidence"]["margin"] > 0.4
    tie = assess([_cand(0.9, 0.95), _cand(0.89, 0.95)], "global")
    assert tie["verdict"] == "medium" and tie["evidence"]["margin"] < 0.03


@pytest.fixture(scope="module")
def monomer(data_dir):
    m = cryoalign.read_map(data_dir / "emd_5168_monomer.mrc.gz")
    return m, 9.78


def test_the_wider_search_finds_a_pose_without_descriptors(monomer):
    target, contour = monomer
    rng = np.random.default_rng(5)
    centre = target.index_to_world(np.array(target.data.shape[::-1]) / 2.0)
    R = tf.random_rotation(rng)
    M = tf.make(R, centre - R @ centre + rng.uniform(-5, 5, 3))  # a motion about the map's centre
    source = resampled_map(target, M, 1.742, rng)  # the target moved by M
    T_true = tf.invert(M)
    config = AlignConfig(sampling_A=3.0, mode="global", wide_placements=60)
    src = prep.prepare(source, contour, config, name="source")
    tgt = prep.prepare(target, contour, config, fine=True, name="target")
    found = recall.placements(src, tgt, config)
    assert 1 <= len(found) <= config.wide_keep and all(h.found_by.startswith("wide search") for h in found)
    pts = src.sample.points_A
    assert min(tf.rmsd(h.T_target_source, T_true, pts) for h in found) < 2.0
    again = recall.placements(src, tgt, config)  # seeded: the same set again
    assert all(np.array_equal(a.T_target_source, b.T_target_source) for a, b in zip(found, again))


def test_a_weak_answer_widens_the_search_and_says_so(monomer):
    target, contour = monomer
    r = cryoalign.align(
        target, target, source_contour=contour, target_contour=contour, mode="global", wide_search="always", top=12
    )
    assert r.stats["wide_search"]["ran"] is True and r.stats["wide_search"]["kept"] >= 1
    assert any(c.found_by.startswith("wide search") for c in r.candidates)
    np.testing.assert_allclose(r.T_target_source, np.eye(4), atol=0.05)
    never = cryoalign.align(
        target, target, source_contour=contour, target_contour=contour, mode="global", wide_search="never"
    )
    assert "wide_search" not in never.stats
