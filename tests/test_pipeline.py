"""End-to-end tests of `cryoalign.align` on map pairs with a known answer.

Simulated pairs: density simulated from one actin subunit (tests/data/3mfp.pdb.gz) and
from a rigidly moved copy of it, on different grids (voxel size, origin); the aligner
must return the inverse of the move (T_target_source takes the moved model's frame
back onto the original).  Real pair: EMD-3695 (5 Å) moved by a known transform and
resampled onto a new grid, aligned back onto the original file.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import ndimage

import cryoalign
from _maps import resampled_map
from cryoalign import transform as tf
from cryoalign.core import pointcloud
from cryoalign.errors import InputError
from cryoalign.io import read_map
from cryoalign.types import AlignResult, DensityMap

RESOLUTION_A = 6.0
PROTEIN_DENSITY_A3_PER_DA = 1.21


# --------------------------------------------------------------------------- simulation
@pytest.fixture(scope="module")
def actin(data_dir):
    """Atoms of one actin subunit: coordinates (N, 3), atomic numbers, CA mask, mass (Da)."""
    import gemmi

    st = gemmi.read_structure(str(data_dir / "3mfp.pdb.gz"))
    xyz, z, is_ca = [], [], []
    for chain in st[0]:
        for res in chain:
            for atom in res:
                xyz.append((atom.pos.x, atom.pos.y, atom.pos.z))
                z.append(atom.element.atomic_number)
                is_ca.append(atom.name == "CA" and atom.element.name == "C")
    xyz = np.array(xyz)
    is_ca = np.array(is_ca)
    assert len(xyz) > 2000 and 300 < is_ca.sum() < 400
    return {"xyz": xyz, "z": np.array(z, float), "ca": is_ca, "mass": st[0].calculate_mass()}


def simulate(atoms, xyz, voxel, rng, *, resolution=RESOLUTION_A, pad=12.0, noise=0.0, origin=None):
    """Density of `xyz` (atomic numbers splatted trilinearly, Gaussian blur sigma =
    0.225 x resolution) on a grid of `voxel` Å whose origin is offset by a random
    sub-voxel amount (or placed at `origin`). Returns (map, contour) with the contour
    enclosing 1.21 Å^3/Da x mass."""
    lo = xyz.min(0) - pad - rng.uniform(0.0, voxel, 3) if origin is None else np.asarray(origin, float)
    n = np.ceil((xyz.max(0) + pad - lo) / voxel).astype(int) + 1
    assert np.all(n <= 80), n
    f = (xyz - lo) / voxel
    i0 = np.floor(f).astype(int)
    fr = f - i0
    data = np.zeros(n[::-1])
    for dx in (0, 1):
        for dy in (0, 1):
            for dz in (0, 1):
                w = (
                    np.where(dx, fr[:, 0], 1 - fr[:, 0])
                    * np.where(dy, fr[:, 1], 1 - fr[:, 1])
                    * np.where(dz, fr[:, 2], 1 - fr[:, 2])
                )
                np.add.at(data, (i0[:, 2] + dz, i0[:, 1] + dy, i0[:, 0] + dx), atoms["z"] * w)
    data = ndimage.gaussian_filter(data, 0.225 * resolution / voxel)
    if noise:
        data += rng.normal(0.0, noise * data.max(), data.shape)
    data = data.astype(np.float32)
    k = int(round(PROTEIN_DENSITY_A3_PER_DA * atoms["mass"] / voxel**3))
    contour = float(np.sort(data.ravel())[::-1][k])
    return DensityMap(data=data, voxel_size_A=np.full(3, voxel), origin_A=lo), contour


def simulated_pair(atoms, seed, *, noise=0.0):
    """(source map, source contour, target map, target contour, T_true, moved CA coords):
    target from the model at 1.5 Å voxels, source from the model moved by T_true at 2 Å."""
    rng = np.random.default_rng(seed)
    T_true = tf.make(tf.random_rotation(rng), rng.uniform(-30.0, 30.0, 3))
    target, tc = simulate(atoms, atoms["xyz"], 1.5, rng, noise=noise)
    moved = tf.apply(T_true, atoms["xyz"])
    source, sc = simulate(atoms, moved, 2.0, rng, noise=noise)
    return source, sc, target, tc, T_true, moved[atoms["ca"]]


@pytest.fixture(scope="module")
def pair0(actin):
    return simulated_pair(actin, 0)


@pytest.fixture(scope="module")
def result0(pair0):
    source, sc, target, tc, _, _ = pair0
    return cryoalign.align(source, target, source_contour=sc, target_contour=tc)


# --------------------------------------------------------------------------- accuracy
def test_simulation_contour_encloses_the_protein_volume(actin, pair0):
    source, sc, target, tc, _, _ = pair0
    for m, c in ((source, sc), (target, tc)):
        volume = (m.data > c).sum() * float(np.prod(m.voxel_size_A))
        assert volume == pytest.approx(PROTEIN_DENSITY_A3_PER_DA * actin["mass"], rel=0.01)
        assert 0 < c < float(m.data.max())
    assert not np.allclose(source.voxel_size_A, target.voxel_size_A)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_align_recovers_the_inverse_of_a_known_move(actin, seed, result0, pair0):
    source, sc, target, tc, T_true, moved_ca = simulated_pair(actin, seed) if seed else pair0
    result = result0 if seed == 0 else cryoalign.align(source, target, source_contour=sc, target_contour=tc)
    T_expected = tf.invert(T_true)  # moved frame (source) -> original (target)
    # sanity: the answer is far from the identity, so a do-nothing aligner fails
    assert tf.rmsd(np.eye(4), T_expected, moved_ca) > 20.0
    assert tf.rmsd(result.T_target_source, T_expected, moved_ca) < 3.0
    rot, _ = tf.pose_error(result.T_target_source, T_expected, center_A=moved_ca.mean(0))
    assert rot < 5.0
    assert result.score.similarity > 0.5
    assert result.score.overlap > 0.9


def test_align_with_estimated_contours_on_noisy_maps(actin):
    source, sc, target, tc, T_true, moved_ca = simulated_pair(actin, 3, noise=0.02)
    result = cryoalign.align(source, target)
    assert result.params["source_contour_estimated"] and result.params["target_contour_estimated"]
    for name, m in (("source", source), ("target", target)):
        level = result.params[f"{name}_contour"]
        assert level == pytest.approx(pointcloud.estimate_contour(m))
        assert 0 < level < float(m.data.max())
    assert tf.rmsd(result.T_target_source, tf.invert(T_true), moved_ca) < 3.0


def test_align_real_map_moved_by_a_known_transform(data_dir):
    path = data_dir / "emd_3695_5A.mrc.gz"
    original = read_map(path)
    contour = 0.5 * float(np.percentile(original.data[original.data > 0], 1))
    rng = np.random.default_rng(17)
    T_move = tf.make(tf.random_rotation(rng), rng.uniform(-50.0, 50.0, 3))
    moved = resampled_map(original, T_move, 4.0, rng)
    # the original file (a path) is the target; the moved copy (a DensityMap) the source
    result = cryoalign.align(moved, path, source_contour=contour, target_contour=contour)
    assert result.params["target"] == str(path) and result.params["source"] is None
    points = tf.apply(T_move, pointcloud.grid_points(original, contour, 5.0))  # in the source frame
    T_expected = tf.invert(T_move)
    assert tf.rmsd(np.eye(4), T_expected, points) > 20.0
    assert tf.rmsd(result.T_target_source, T_expected, points) < 3.0


# Point-to-point ICP alone snaps to the sampling lattice when both maps share a grid
# orientation (the source's points land exactly on the target's); map-level refinement
# (on by default) recovers the sub-lattice shift.
def test_align_recovers_a_sub_lattice_translation_between_maps_on_the_same_grid(actin):
    rng = np.random.default_rng(5)
    target, tc = simulate(actin, actin["xyz"], 1.5, rng)
    shift = np.array([1.1, 0.7, -0.9])
    moved = actin["xyz"] + shift
    source, sc = simulate(actin, moved, 1.5, rng, origin=target.origin_A)
    result = cryoalign.align(source, target, source_contour=sc, target_contour=tc)
    T_expected = tf.make(np.eye(3), -shift)
    assert tf.rmsd(result.T_target_source, T_expected, moved[actin["ca"]]) < 0.3
    assert result.score.correlation > result.candidates[0].correlation_before


# --------------------------------------------------------------------------- determinism, result
def test_align_is_deterministic(pair0, result0):
    source, sc, target, tc, _, _ = pair0
    again = cryoalign.align(source, target, source_contour=sc, target_contour=tc)
    np.testing.assert_array_equal(again.T_target_source, result0.T_target_source)
    assert again.score == result0.score
    assert len(again.candidates) == len(result0.candidates)
    for a, b in zip(again.candidates, result0.candidates):
        np.testing.assert_array_equal(a.T_target_source, b.T_target_source)
        assert a.score == b.score
    assert again.stats == result0.stats


def test_result_object(result0):
    r = result0
    assert isinstance(r, AlignResult)
    assert r.T_target_source.shape == (4, 4)
    np.testing.assert_array_equal(r.T_target_source[3], [0, 0, 0, 1])
    R = r.T_target_source[:3, :3]
    np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-9)
    assert np.linalg.det(R) == pytest.approx(1.0)
    assert len(r.candidates) >= 1
    sims = [c.score.value for c in r.candidates]
    refined = [c for c in r.candidates if c.score.correlation is not None]
    assert refined and refined == list(r.candidates[: len(refined)])  # map-refined ones first ...
    values = [c.score.value for c in refined]
    assert values == sorted(values, reverse=True)  # ... by correlation x agreement
    assert r.score.value == r.score.correlation * r.score.vector_agreement
    np.testing.assert_array_equal(r.candidates[0].T_target_source, r.T_target_source)
    assert r.score == r.candidates[0].score
    assert 0.0 <= r.score.similarity <= 1.0
    assert "total" in r.timings_s and all(v >= 0 for v in r.timings_s.values())
    for stage in ("source point cloud", "target descriptors", "matching", "coarse pose", "fine pose", "score"):
        assert stage in r.timings_s
    assert r.stats["matches"] >= 3 and r.stats["hypotheses"] >= 1
    assert r.stats["source_points"] > 0 and r.stats["target_points"] > 0

    j = r.to_json()
    assert {"matrix", "score", "candidates", "timings_s", "params", "version"} <= set(j)
    text = json.dumps(j)  # JSON-serialisable as is
    back = json.loads(text)
    np.testing.assert_allclose(back["matrix"], r.T_target_source)
    assert back["score"] == r.score.correlation * r.score.vector_agreement
    assert back["score_terms"]["similarity"] == r.score.similarity
    assert back["version"] == cryoalign.__version__
    assert len(back["candidates"]) == len(r.candidates)
    np.testing.assert_allclose(back["candidates"][0]["matrix"], r.T_target_source)
    assert [c["score"] for c in back["candidates"]] == sims
    assert back["params"]["seed"] == 0 and back["params"]["sampling_A"] in (3.0, 5.0)
    assert back["params"]["sampling_chosen"] is True and back["params"]["mode"] == "global"
    assert back["params"]["source_contour_estimated"] is False
    assert "total" in back["timings_s"]


def test_overrides_reach_the_recorded_params(pair0):
    source, sc, target, tc, _, _ = pair0
    r = cryoalign.align(source, target, source_contour=sc, target_contour=tc, max_hypotheses=2, sampling_A=4.0)
    assert r.params["max_hypotheses"] == 2 and r.params["sampling_A"] == 4.0
    assert r.stats["hypotheses"] <= 2
    assert r.params["source_contour"] == sc and r.params["target_contour"] == tc


# --------------------------------------------------------------------------- input errors
@pytest.mark.parametrize("side", ["source", "target"])
def test_contour_above_maximum_raises_input_error(pair0, side):
    source, sc, target, tc, _, _ = pair0
    top = float((source if side == "source" else target).data.max())
    kwargs = {"source_contour": sc, "target_contour": tc, f"{side}_contour": top * 2.0}
    with pytest.raises(InputError, match="maximum") as info:
        cryoalign.align(source, target, **kwargs)
    assert side in str(info.value)
    assert f"{top:g}" in str(info.value)


def test_non_finite_contour_and_bad_input_type(pair0):
    source, sc, target, tc, _, _ = pair0
    with pytest.raises(InputError, match="finite"):
        cryoalign.align(source, target, source_contour=math.nan, target_contour=tc)
    with pytest.raises(InputError, match="DensityMap"):
        cryoalign.align(np.zeros((4, 4, 4)), target)
    with pytest.raises(InputError):
        cryoalign.align(source, target, source_contour=sc, target_contour=tc, sampling_A=-1.0)
