"""The exhaustive 6D scan (cryoalign.core.exhaustive): rotation grid, step rule, and a chain
planted in a simulated complex found by the scan alone.

The complex: three copies of actin (tests/data/3mfp.pdb.gz, related by a C3 turn, as in
test_fit) with chains B and C cut to their first half, so that only chain A holds the
whole subunit; simulated at 8 Å on 4 Å voxels (a small box, so the test is fast).  The
part: the actin monomer simulated alone and moved by a known rigid motion; the right
answer undoes it.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from _maps import moved_structure, three_copies
from cryoalign import transform as tf
from cryoalign.apps import simulate
from cryoalign.config import AlignConfig
from cryoalign.core import exhaustive
from cryoalign.core.pipeline import candidates_for
from cryoalign.core.prepare import prepare
from cryoalign.errors import InputError

RESOLUTION_A = 8.0
VOXEL_A = 4.0


def test_rotation_grid_covers_so3_at_its_step():
    grid = exhaustive.rotation_grid(20.0)
    assert np.allclose(grid[0], np.eye(3))
    assert np.allclose(np.einsum("kij,kil->kjl", grid, grid), np.eye(3), atol=1e-9)
    q = Rotation.from_matrix(grid).as_quat()
    probe = Rotation.random(500, random_state=3).as_quat()
    nearest = np.degrees(2 * np.arccos(np.clip(np.abs(probe @ q.T).max(1), -1, 1)))
    assert nearest.max() <= 20.0 * 1.05  # the step is the covering radius
    assert len(exhaustive.rotation_grid(10.0)) > 7 * len(grid)


def test_step_rule_follows_radius_and_resolution():
    c = AlignConfig()
    assert exhaustive.step_for(15.0, 6.0, c) > exhaustive.step_for(40.0, 6.0, c)
    assert exhaustive.step_for(200.0, 3.0, c) == c.exhaustive_min_step_deg
    assert exhaustive.step_for(2.0, 20.0, c) == c.exhaustive_max_step_deg
    assert exhaustive.step_for(30.0, 6.0, c.replace(exhaustive_step_deg=12.5)) == 12.5


def test_settings_are_checked():
    with pytest.raises(InputError, match="exhaustive must be"):
        AlignConfig(exhaustive="sometimes")
    with pytest.raises(InputError, match="descriptors=False"):
        AlignConfig(descriptors=False)
    assert exhaustive.wanted(AlignConfig(mode="local"), "low")
    assert not exhaustive.wanted(AlignConfig(mode="local"), "medium")
    assert not exhaustive.wanted(AlignConfig(mode="global"), "low")  # global: only "always"
    assert exhaustive.wanted(AlignConfig(mode="global", exhaustive="always"), "high")
    assert not exhaustive.wanted(AlignConfig(mode="local", exhaustive="never"), "low")
    assert exhaustive.wanted(AlignConfig(mode="local"), "low", 0.3)  # a part in a whole
    assert not exhaustive.wanted(AlignConfig(mode="local"), "low", 1.4)  # no part: the source is larger


@pytest.fixture(scope="module")
def planted(data_dir):
    mono, tri, _, ca = three_copies(data_dir)
    for chain in tri[0]:
        if chain.name != "A":
            for i in range(len(chain) - 1, len(chain) // 2 - 1, -1):
                del chain[i]
    tri.setup_entities()
    target = simulate.simulate(tri, RESOLUTION_A, voxel_A=VOXEL_A)
    tc = simulate.contour_for(target, simulate.model_mass_Da(tri))
    R = Rotation.from_euler("zyx", [37.0, -61.0, 113.0], degrees=True).as_matrix()
    move = tf.make(R, np.array([12.0, -7.0, 30.0]))
    part = moved_structure(mono, move)
    source = simulate.simulate(part, RESOLUTION_A, voxel_A=2.0)
    sc = simulate.contour_for(source, simulate.model_mass_Da(part))
    config = AlignConfig(
        mode="local",
        sampling_A=4.0,
        top=5,
        descriptors=False,
        exhaustive="always",
        exhaustive_resolution_A=RESOLUTION_A,
        exhaustive_step_deg=20.0,
        exhaustive_candidates=200,
        exhaustive_peaks=20,
        exhaustive_rescored=10,
        exhaustive_keep=5,
    )
    src = prepare(source, sc, config, name="part")
    tgt = prepare(target, tc, config, fine=True, name="complex")
    truth = tf.invert(move)  # part frame -> complex frame
    return src, tgt, config, tf.apply(move, ca), truth


def _rmsd(T, ca_part, truth):
    return float(np.sqrt(((tf.apply(T, ca_part) - tf.apply(truth, ca_part)) ** 2).sum(1).mean()))


def test_scan_alone_finds_the_planted_chain_the_same_for_1_and_2_workers(planted):
    src, tgt, config, ca_part, truth = planted
    one, stats1 = candidates_for(src, tgt, config.replace(jobs=1))
    two, stats2 = candidates_for(src, tgt, config.replace(jobs=2))
    assert stats1["exhaustive"]["ran"] and stats1["exhaustive"]["rotations"] > 1000 // 2
    assert all(c.found_by.startswith("exhaustive") for c in one)
    assert _rmsd(one[0].T_target_source, ca_part, truth) < 2.0
    assert len(one) == len(two)
    for a, b in zip(one, two):
        assert np.array_equal(a.T_target_source, b.T_target_source)
        assert a.score.value == b.score.value and a.found_by == b.found_by
    assert {k: v for k, v in stats1["exhaustive"].items() if k not in ("jobs", "scan_s", "time_s")} == {
        k: v for k, v in stats2["exhaustive"].items() if k not in ("jobs", "scan_s", "time_s")
    }
    assert math.isfinite(stats1["exhaustive"]["time_s"])


def test_scan_score_is_the_local_correlation_times_overlap_computed_directly(planted):
    """The pruned transforms and the shifted read-out (`_correlations`) give, at every allowed
    centre, the score written out in `_scan_rotation`'s docstring, summed voxel by voxel."""
    from scipy import ndimage

    src, tgt, config, _, _ = planted
    sh, plan = exhaustive.setup(src, tgt, config)
    i = 37
    R = sh.rotations[i]
    t = ndimage.map_coordinates(sh.source, (sh.centre_index + sh.offsets @ R)[:, ::-1].T, order=1)
    fp = t >= sh.footprint
    t = np.where(fp, t - t[fp].mean(), 0.0)
    t /= np.sqrt((t * t).sum())
    target = np.fft.irfftn(sh.spectra[0], s=sh.shape, axes=(0, 1, 2))
    mask = np.fft.irfftn(sh.spectra[2], s=sh.shape, axes=(0, 1, 2)) > 0.5
    o = sh.offsets.astype(int)
    peaks = exhaustive._scan_rotation(i, sh, np.zeros((2,) + sh.cube, np.float32))
    assert peaks
    for score, rot, flat in peaks:
        assert rot == i
        q = np.array(np.unravel_index(flat, sh.shape))  # (z, y, x)
        at = tuple(((q[::-1] + o) % np.array(sh.shape[::-1]))[:, a] for a in (2, 1, 0))
        T, M = target[at], mask[at]
        var = max(T[fp].var(), sh.floor2)
        direct = (t[fp] * T[fp]).sum() / np.sqrt(fp.sum() * var) * M[fp].mean()
        assert score == pytest.approx(direct, rel=1e-3, abs=1e-4)


def test_a_scan_over_the_work_budget_gets_a_coarser_step(planted, caplog):
    src, tgt, config, _, _ = planted
    free, _ = exhaustive.setup(src, tgt, config.replace(exhaustive_max_work=None))
    work = len(free.rotations) * int(np.prod(free.shape))
    with caplog.at_level("INFO", logger="cryoalign.core.exhaustive"):
        cut, plan = exhaustive.setup(src, tgt, config.replace(exhaustive_max_work=work // 3))
    assert plan["budget_cut"] and plan["step"] > config.exhaustive_step_deg
    assert len(cut.rotations) * int(np.prod(cut.shape)) <= work // 3
    assert any("exceed the budget" in r.getMessage() for r in caplog.records)
    same, plan = exhaustive.setup(src, tgt, config.replace(exhaustive_max_work=work))
    assert not plan["budget_cut"] and len(same.rotations) == len(free.rotations)


def test_auto_skips_a_source_wider_than_the_target():
    assert exhaustive.wanted(AlignConfig(mode="local"), "low", 0.3, 0.6)
    assert not exhaustive.wanted(AlignConfig(mode="local"), "low", 0.3, 1.5)  # cannot lie inside it
    assert exhaustive.wanted(AlignConfig(mode="local", exhaustive="always"), "low", 0.3, 1.3)
