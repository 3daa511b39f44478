"""Invariance and equivariance properties of `cryoalign.align`.

One actin subunit (tests/data/3mfp.pdb.gz) is simulated at 6 Å on 2 Å voxels
(`cryoalign.apps.simulate.simulate`): the target from the model as deposited, the
source from the model moved by a known rigid motion.  Each test changes the
input in a way whose effect on the answer is known exactly and checks the
answer changes by exactly that:

- swapping source and target inverts the transform;
- storing the source with permuted MRC axes (MAPC/MAPR/MAPS) changes nothing;
- rotating the source grid by 90 degrees (a lossless relabelling of voxels) rotates
  the answer: T_new = T_old @ R^-1 (source side) or R @ T_old (target side);
- shifting an origin by d translates the answer: T_old @ translate(-d) (source)
  or translate(d) @ T_old (target);
- the same call is bitwise reproducible, local mode does not depend on `jobs`,
  and the seed (which only drives the Monte Carlo JS term) does not move the answer;
- writing the maps to MRC and reading them back does not change the answer.

Transforms are compared by the RMSD of the model's CA atoms moved by each
(in the frame the transforms act on).  "Exactly" means up to floating
point and the map refinement's stopping rule: changes that reorder the voxels
(grid rotations) agree to < 0.001 Å, origin shifts to < 1e-4 Å, relabellings
that leave the DensityMap identical bitwise; swapping the roles (a different
problem: the other map is sampled) to ~0.015 Å.  Tolerances are ~3-25 times the
worst of 6 measured pairs (noted at each; measured at commit c7e5687), far below
what a wrong answer gives (> 1 Å), and each test first checks that the change it
makes moves the expected answer far from the unchanged one, so a test that
ignored the change would fail.
"""

from __future__ import annotations

import gzip
import shutil

import numpy as np
import pytest

import cryoalign
from cryoalign import transform as tf
from cryoalign.apps import simulate as sim
from cryoalign.io import model_coordinates, read_map, read_model, transform_model, write_map
from cryoalign.types import DensityMap

RESOLUTION_A = 6.0
VOXEL_A = 2.0


def translate(d) -> np.ndarray:
    return tf.make(np.eye(3), np.asarray(d, float))


def rotation_90(axis: str, k: int = 1) -> np.ndarray:
    """4x4 rotation by k x 90 degrees about world axis 'x', 'y' or 'z' (through the world origin)."""
    a, b = [i for i in range(3) if i != "xyz".index(axis)]
    R = np.eye(3)
    R[a, a] = R[b, b] = 0.0
    R[b, a], R[a, b] = 1.0, -1.0  # e_a -> e_b
    return tf.make(np.linalg.matrix_power(R, k), np.zeros(3))


def rotated_grid(m: DensityMap, T_rot: np.ndarray) -> DensityMap:
    """The same density on the grid moved by an exact 90-degree rotation T_rot (4x4, signed
    permutation, cubic voxels): new(T_rot x) == old(x) for every voxel centre x.  The data is
    only relabelled (np.rot90-style), never interpolated."""
    R = T_rot[:3, :3]
    v = float(m.voxel_size_A[0])
    assert np.all(m.voxel_size_A == v)
    n = m.shape_xyz
    corners = np.array([[i, j, k] for i in (0, n[0] - 1) for j in (0, n[1] - 1) for k in (0, n[2] - 1)])
    origin = tf.apply(T_rot, m.index_to_world(corners)).min(0)
    old_xyz = np.indices(m.data.shape).reshape(3, -1)[::-1].T  # every voxel, (x, y, z)
    new_xyz = np.rint((tf.apply(T_rot, m.index_to_world(old_xyz)) - origin) / v).astype(int)
    new_n = np.rint(np.abs(R) @ n).astype(int)
    data = np.zeros(new_n[::-1], np.float32)
    data[new_xyz[:, 2], new_xyz[:, 1], new_xyz[:, 0]] = m.data[old_xyz[:, 2], old_xyz[:, 1], old_xyz[:, 0]]
    return DensityMap(data=data, voxel_size_A=m.voxel_size_A, origin_A=origin)


def padded_to_lattice(m: DensityMap, spacing_A: float) -> DensityMap:
    """`m` with zero planes appended so that every box edge (n - 1) x voxel is a multiple of
    the point-sampling interval: the sampling lattice (anchored at the origin, i.e. a box
    corner) then maps onto itself under any 90-degree rotation of the box."""
    v = float(m.voxel_size_A[0])
    step = next(q for q in range(1, 100) if np.isclose(q * v / spacing_A, round(q * v / spacing_A)))
    extra = [(-(n - 1)) % step for n in m.data.shape]
    return DensityMap(data=np.pad(m.data, [(0, e) for e in extra]), voxel_size_A=m.voxel_size_A, origin_A=m.origin_A)


def float32_origin(m: DensityMap) -> DensityMap:
    """`m` with its origin rounded to float32 (what an MRC header can hold)."""
    return DensityMap(data=m.data, voxel_size_A=m.voxel_size_A, origin_A=m.origin_A.astype(np.float32).astype(float))


def assert_same_result(a, b):
    """Bitwise-identical matrices, scores and candidates."""
    np.testing.assert_array_equal(a.T_target_source, b.T_target_source)
    assert a.score == b.score
    assert len(a.candidates) == len(b.candidates)
    for x, y in zip(a.candidates, b.candidates):
        np.testing.assert_array_equal(x.T_target_source, y.T_target_source)
        assert x.score == y.score


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def pair(data_dir):
    """Target: actin as deposited; source: actin moved by T_move.  Both 6 Å maps on 2 Å
    voxels (origins differ by a sub-voxel amount, so the grids are unrelated)."""
    st = read_model(data_dir / "3mfp.pdb.gz")
    mass = sim.model_mass_Da(st)
    rng = np.random.default_rng(2026)
    T_move = tf.make(tf.random_rotation(rng), rng.uniform(-25.0, 25.0, 3))
    moved = transform_model(st, T_move)
    target = sim.simulate(st, RESOLUTION_A, voxel_A=VOXEL_A)
    source = sim.simulate(moved, RESOLUTION_A, voxel_A=VOXEL_A)
    ca_target = model_coordinates(st, selection="ca")
    ca_source = model_coordinates(moved, selection="ca")
    assert 300 < len(ca_source) < 400
    return dict(
        source=source,
        target=target,
        sc=sim.contour_for(source, mass),
        tc=sim.contour_for(target, mass),
        T_move=T_move,
        ca_source=ca_source,
        ca_target=ca_target,
    )


def run(pair, source=None, target=None, **overrides):
    return cryoalign.align(
        pair["source"] if source is None else source,
        pair["target"] if target is None else target,
        source_contour=pair["sc"],
        target_contour=pair["tc"],
        **overrides,
    )


@pytest.fixture(scope="module")
def base(pair):
    """The reference result (default settings: auto mode -> global, voxel_A auto -> 3 Å)."""
    result = run(pair)
    assert result.params["mode"] == "global" and result.params["sampling_A"] == 3.0
    return result


def test_reference_result_is_right(pair, base):
    expected = tf.invert(pair["T_move"])
    assert tf.rmsd(np.eye(4), expected, pair["ca_source"]) > 20.0
    assert tf.rmsd(base.T_target_source, expected, pair["ca_source"]) < 0.5  # measured <= 0.01 Å


# --------------------------------------------------------------------------- a. symmetry of the roles
def test_swapping_source_and_target_inverts_the_transform(pair, base):
    back = cryoalign.align(pair["target"], pair["source"], source_contour=pair["tc"], target_contour=pair["sc"])
    ca = pair["ca_target"]
    assert tf.rmsd(back.T_target_source, pair["T_move"], ca) < 0.5
    # T_ST @ T_TS takes the target frame back onto itself
    assert tf.rmsd(base.T_target_source @ back.T_target_source, np.eye(4), ca) < 0.05  # measured <= 0.014 Å


# --------------------------------------------------------------------------- b. grid relabelling
# (MAPC, MAPR, MAPS): which of x=1, y=2, z=3 runs along the file's columns, rows, sections
PERMUTED_AXES = [(3, 2, 1), (2, 3, 1), (1, 3, 2), (3, 1, 2)]


@pytest.fixture(scope="module")
def xyz_file_result(pair, tmp_path_factory, write_mrc):
    """The source written with the standard axes (1, 2, 3) by the conftest writer, read back,
    and its alignment (the reference for the permuted files: same float32 header origin)."""
    path = write_mrc(
        tmp_path_factory.mktemp("axes") / "xyz.mrc", pair["source"].data, voxel=VOXEL_A, origin=pair["source"].origin_A
    )
    m = read_map(path)
    return m, run(pair, source=m)


@pytest.mark.parametrize("axes", PERMUTED_AXES, ids=lambda a: "".join(map(str, a)))
def test_permuted_file_axes_give_the_same_map_and_transform(pair, xyz_file_result, tmp_path, write_mrc, axes):
    src = pair["source"]
    zyx_axis_of = {1: 2, 2: 1, 3: 0}  # crystallographic axis code -> data[z, y, x] axis
    stored = np.transpose(src.data, [zyx_axis_of[axes[2]], zyx_axis_of[axes[1]], zyx_axis_of[axes[0]]])
    assert stored.shape != src.data.shape  # the file really holds a transposed array
    path = write_mrc(tmp_path / "permuted.mrc", stored, voxel=VOXEL_A, origin=src.origin_A, axes=axes)
    reference_map, reference = xyz_file_result
    m = read_map(path)
    np.testing.assert_array_equal(m.data, reference_map.data)  # the same world density ...
    np.testing.assert_array_equal(m.data, src.data)
    np.testing.assert_array_equal(m.origin_A, reference_map.origin_A)
    np.testing.assert_array_equal(m.voxel_size_A, reference_map.voxel_size_A)
    result = run(pair, source=m)  # ... hence the same answer, exactly
    assert_same_result(result, reference)


def test_permuted_axes_with_anisotropic_voxels_and_nstart(tmp_path, write_mrc):
    """Grid geometry only (no alignment): per-axis voxel sizes and NSTART follow the axes."""
    rng = np.random.default_rng(3)
    data = rng.standard_normal((5, 6, 7)).astype(np.float32)  # [z, y, x]
    voxel, nstart_xyz = np.array([1.1, 1.3, 1.7]), np.array([-3, 4, 10])
    ref = read_map(write_mrc(tmp_path / "ref.mrc", data, voxel=voxel, nstart=tuple(nstart_xyz)))
    np.testing.assert_allclose(ref.origin_A, nstart_xyz * voxel, rtol=1e-6)
    for axes in PERMUTED_AXES:
        zyx = {1: 2, 2: 1, 3: 0}
        stored = np.transpose(data, [zyx[axes[2]], zyx[axes[1]], zyx[axes[0]]])
        nstart_crs = tuple(int(nstart_xyz[c - 1]) for c in axes)
        m = read_map(write_mrc(tmp_path / "p.mrc", stored, voxel=voxel, nstart=nstart_crs, axes=axes))
        np.testing.assert_array_equal(m.data, data)
        np.testing.assert_array_equal(m.voxel_size_A, ref.voxel_size_A)
        np.testing.assert_array_equal(m.origin_A, ref.origin_A)


@pytest.fixture(scope="module")
def lattice_source(pair):
    """The source padded so its sampling lattice (3 Å, auto) is invariant under 90-degree
    rotations of the box; and its alignment (the same as the unpadded one's)."""
    src = padded_to_lattice(pair["source"], 3.0)
    return src, run(pair, source=src)


ROTATIONS = [("x", 1), ("y", 2), ("z", 3), ("z", 1)]


@pytest.mark.parametrize("axis,k", ROTATIONS, ids=lambda v: str(v))
def test_rotating_the_source_grid_by_90_degrees_rotates_the_answer(pair, lattice_source, axis, k):
    src, old = lattice_source
    R = rotation_90(axis, k)
    rotated = rotated_grid(src, R)
    # the relabelling is exact: the rotated map's voxel at R x holds the old voxel at x
    probe = np.array([[3, 5, 7], [10, 20, 15]])
    new_idx = np.rint(rotated.world_to_index(tf.apply(R, src.index_to_world(probe)))).astype(int)
    for (i, j, l), (a, b, c) in zip(probe, new_idx):
        assert rotated.data[c, b, a] == src.data[l, j, i]
    if axis == "z" and k == 1:
        np.testing.assert_array_equal(rotated.data, np.rot90(src.data, 1, axes=(2, 1)))
    ca = tf.apply(R, pair["ca_source"])  # CA in the rotated source's frame
    expected = old.T_target_source @ tf.invert(R)
    assert tf.rmsd(old.T_target_source, expected, ca) > 20.0  # the rotation matters ...
    new = run(pair, source=rotated)
    # ... by exactly R, up to rounding: the voxels are visited in another order, so the
    # optimisers stop at slightly different points (measured <= 4e-4 Å over 6 pairs)
    assert tf.rmsd(new.T_target_source, expected, ca) < 0.01


def test_rotating_the_source_grid_off_the_sampling_lattice(pair, base):
    """Box edges of (3k + 1) voxels: the rotated box's sampling lattice is offset by 2 Å from
    the rotated points, so the point stages see other points; the map refinement still lands
    on the same pose (measured <= 3e-4 Å over 6 pairs)."""
    src = pair["source"]
    off = DensityMap(
        data=np.pad(src.data, [(0, (1 - (n - 1)) % 3) for n in src.data.shape]),
        voxel_size_A=src.voxel_size_A,
        origin_A=src.origin_A,
    )
    assert all((n - 1) % 3 == 1 for n in off.data.shape)  # (n - 1) x 2 Å is not a multiple of 3 Å
    R = rotation_90("y", 1)
    new = run(pair, source=rotated_grid(off, R))
    ca = tf.apply(R, pair["ca_source"])
    assert tf.rmsd(new.T_target_source, base.T_target_source @ tf.invert(R), ca) < 0.01


def test_rotating_the_target_grid_by_90_degrees_rotates_the_answer(pair):
    tgt = padded_to_lattice(pair["target"], 3.0)
    old = run(pair, target=tgt)
    R = rotation_90("x", 3)
    new = run(pair, target=rotated_grid(tgt, R))
    expected = R @ old.T_target_source
    ca = pair["ca_source"]
    assert tf.rmsd(old.T_target_source, expected, ca) > 20.0
    assert tf.rmsd(new.T_target_source, expected, ca) < 0.01  # as for the source (measured 1e-5 Å)


# --------------------------------------------------------------------------- c. origin shifts
SHIFTS = [(13.37, -5.21, 8.93), (0.7, 0.3, -1.1), (101.5, -300.25, 250.0)]


@pytest.mark.parametrize("d", SHIFTS, ids=["13A", "subvoxel", "300A"])
def test_shifting_the_source_origin_translates_the_answer(pair, base, d):
    d = np.array(d)
    src = pair["source"]
    shifted = DensityMap(data=src.data, voxel_size_A=src.voxel_size_A, origin_A=src.origin_A + d)
    new = run(pair, source=shifted)
    ca = pair["ca_source"] + d  # CA in the shifted source's frame
    expected = base.T_target_source @ translate(-d)
    assert tf.rmsd(base.T_target_source, expected, ca) > 1.0
    # exact up to rounding of origin + d (measured <= 6e-5 Å over 6 pairs, often 1e-13 Å)
    assert tf.rmsd(new.T_target_source, expected, ca) < 1e-3


def test_shifting_the_target_origin_translates_the_answer(pair, base):
    d = np.array([-17.3, 6.1, 22.45])
    tgt = pair["target"]
    shifted = DensityMap(data=tgt.data, voxel_size_A=tgt.voxel_size_A, origin_A=tgt.origin_A + d)
    new = run(pair, target=shifted)
    expected = translate(d) @ base.T_target_source
    ca = pair["ca_source"]
    assert tf.rmsd(base.T_target_source, expected, ca) > 20.0
    assert tf.rmsd(new.T_target_source, expected, ca) < 1e-3  # measured <= 1e-12 Å over 6 pairs


# --------------------------------------------------------------------------- d. determinism
def test_the_same_call_twice_is_bitwise_identical(pair, base):
    again = run(pair)
    assert_same_result(again, base)
    assert again.stats == base.stats


@pytest.fixture(scope="module")
def local_one(pair):
    return run(pair, mode="local", jobs=1)


def test_local_mode_does_not_depend_on_the_number_of_jobs(pair, local_one):
    one = local_one
    two = run(pair, mode="local", jobs=2)
    assert one.params["mode"] == two.params["mode"] == "local"
    assert two.stats["jobs"] == 2 and two.stats["masks_searched"] >= 4  # the masks really were split
    assert_same_result(one, two)
    assert tf.rmsd(one.T_target_source, tf.invert(pair["T_move"]), pair["ca_source"]) < 0.5


def test_local_mode_shifting_the_target_origin_translates_the_answer(pair, local_one):
    """Local mode places its masks from the target's points: they move with the target."""
    d = np.array([-17.3, 6.1, 22.45])
    tgt = pair["target"]
    shifted = DensityMap(data=tgt.data, voxel_size_A=tgt.voxel_size_A, origin_A=tgt.origin_A + d)
    new = run(pair, target=shifted, mode="local", jobs=1)
    assert new.stats["masks_searched"] == local_one.stats["masks_searched"]
    ca = pair["ca_source"]
    expected = translate(d) @ local_one.T_target_source
    assert tf.rmsd(local_one.T_target_source, expected, ca) > 20.0
    assert tf.rmsd(new.T_target_source, expected, ca) < 1e-3  # measured 1e-13 Å


def test_the_seed_only_changes_the_js_term(pair, base):
    """Global mode: the seed drives the Monte Carlo JS estimate (so the similarity changes)
    but the map-refined answer is bitwise the same (measured; the brief asks < 0.1 Å)."""
    for seed in (1, 12345):
        other = run(pair, seed=seed)
        assert other.params["seed"] == seed
        assert other.score.js_divergence != base.score.js_divergence
        np.testing.assert_array_equal(other.T_target_source, base.T_target_source)
        assert other.score.correlation == base.score.correlation
        assert tf.rmsd(other.T_target_source, base.T_target_source, pair["ca_source"]) < 0.1


# --------------------------------------------------------------------------- e. file round trip
def test_write_read_round_trip_gives_the_identical_result(pair, tmp_path):
    """MRC headers hold the origin as float32: with float32-exact origins the round trip is
    lossless and the answer bitwise identical (also through a gzipped copy)."""
    src, tgt = float32_origin(pair["source"]), float32_origin(pair["target"])
    in_memory = run(pair, source=src, target=tgt)
    write_map(src, tmp_path / "source.mrc")
    write_map(tgt, tmp_path / "target.mrc")
    with open(tmp_path / "target.mrc", "rb") as fin, gzip.open(tmp_path / "target.mrc.gz", "wb") as fout:
        shutil.copyfileobj(fin, fout)
    for original, path in ((src, "source.mrc"), (tgt, "target.mrc"), (tgt, "target.mrc.gz")):
        back = read_map(tmp_path / path)
        np.testing.assert_array_equal(back.data, original.data)
        np.testing.assert_array_equal(back.voxel_size_A, original.voxel_size_A)
        np.testing.assert_array_equal(back.origin_A, original.origin_A)
    from_files = run(pair, source=str(tmp_path / "source.mrc"), target=str(tmp_path / "target.mrc.gz"))
    assert_same_result(from_files, in_memory)
    assert from_files.params["target"] == str(tmp_path / "target.mrc.gz")


def test_round_trip_of_arbitrary_origins_is_within_float32_precision(pair, base, tmp_path):
    write_map(pair["source"], tmp_path / "s.mrc")
    write_map(pair["target"], tmp_path / "t.mrc")
    back = read_map(tmp_path / "s.mrc")
    assert np.abs(back.origin_A - pair["source"].origin_A).max() < 1e-4
    result = run(pair, source=tmp_path / "s.mrc", target=tmp_path / "t.mrc")
    assert tf.rmsd(result.T_target_source, base.T_target_source, pair["ca_source"]) < 1e-3  # measured <= 6e-6 Å
