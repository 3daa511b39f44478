"""Stage-level tests: each pipeline stage (see cryoalign.core.pipeline) on inputs whose answer is known.

Analytic maps (sums of Gaussian blobs built directly as `DensityMap`s, with off-grid
centres, non-zero origins and anisotropic voxels so that axis-order mistakes show),
hand-made descriptors and correspondences, and the real 5 Å map EMD-3695
(tests/data/emd_3695_5A.mrc.gz) for the descriptor and ICP stages.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial import cKDTree
from scipy.spatial.distance import cdist

from _maps import resampled_map
from cryoalign import transform as tf
from cryoalign.core import features, keypoints, match, pointcloud, refine, register, score
from cryoalign.errors import InputError
from cryoalign.io import read_map
from cryoalign.types import DensityMap, Features, Matches, PointCloud

VOXEL_A = 5.0  # point-cloud sampling used with the 5 Å real map
VECTOR_SIGMA_A = 8.0  # AlignConfig.vector_sigma_A default
RADIUS_A = 35.0  # AlignConfig.descriptor_radius_A default (7 x 5 Å)


# --------------------------------------------------------------------------- helpers
def blob_map(centres, sigmas, amplitudes, shape_zyx, voxel, origin) -> DensityMap:
    """Sum of isotropic Gaussians (world Å centres) sampled on a [z, y, x] grid."""
    voxel = np.broadcast_to(np.asarray(voxel, float), (3,))
    origin = np.asarray(origin, float)
    nz, ny, nx = shape_zyx
    z, y, x = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")
    world = np.stack([x * voxel[0] + origin[0], y * voxel[1] + origin[1], z * voxel[2] + origin[2]], -1)
    data = np.zeros(shape_zyx)
    for c, s, a in zip(np.atleast_2d(centres), sigmas, amplitudes):
        data += a * np.exp(-((world - np.asarray(c, float)) ** 2).sum(-1) / (2.0 * s * s))
    return DensityMap(data=data.astype(np.float32), voxel_size_A=voxel, origin_A=origin)


def lattice_rotated_map(density: DensityMap, P: np.ndarray, new_origin) -> tuple[DensityMap, np.ndarray]:
    """The map rotated by the signed permutation matrix P (a rotation that maps the
    voxel lattice onto itself), placed at `new_origin`. Returns (map, T) with T the
    exact 4x4 transform from the input map's world coordinates to the new map's."""
    assert np.allclose(P @ P.T, np.eye(3)) and np.isclose(np.linalg.det(P), 1.0)
    v = float(density.voxel_size_A[0])
    assert np.allclose(density.voxel_size_A, v), "needs cubic voxels"
    n_xyz = density.shape_xyz
    offset = np.where((P < 0).any(1), (np.abs(P) @ (n_xyz - 1)), 0)  # keep indices >= 0
    new_n = np.abs(P) @ n_xyz
    idx = np.indices(new_n[::-1]).reshape(3, -1)[::-1].T  # (M, 3) new x, y, z
    old = (idx - offset) @ P  # P^T (i' - offset)
    data = density.data[old[:, 2], old[:, 1], old[:, 0]].reshape(tuple(new_n[::-1]))
    new_origin = np.asarray(new_origin, float)
    T = tf.make(P, -P @ density.origin_A + offset * v + new_origin)
    return DensityMap(np.ascontiguousarray(data), np.full(3, v), new_origin), T


def rotation_about(axis, angle_deg) -> np.ndarray:
    a = np.asarray(axis, float)
    a = a / np.linalg.norm(a)
    K = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    t = np.radians(angle_deg)
    return np.eye(3) + np.sin(t) * K + (1 - np.cos(t)) * K @ K


@pytest.fixture(scope="module")
def real_map(data_dir):
    """EMD-3695 on its 5 Å grid, with a contour at half the 1st percentile of its nonzero voxels."""
    m = read_map(data_dir / "emd_3695_5A.mrc.gz")
    contour = 0.5 * float(np.percentile(m.data[m.data > 0], 1))
    return m, contour


@pytest.fixture(scope="module")
def real_cloud(real_map):
    m, contour = real_map
    return pointcloud.sample_points(m, contour, VOXEL_A, VECTOR_SIGMA_A)


# --------------------------------------------------------------------------- stage 1: point cloud
BLOB_ORIGIN = np.array([-12.0, 7.5, 30.25])
BLOB_VOXEL = (1.0, 1.25, 0.8)  # anisotropic: x, y, z
BLOB_CENTRE = BLOB_ORIGIN + [21.3, 22.7, 19.1]


@pytest.fixture(scope="module")
def blob():
    return blob_map([BLOB_CENTRE], [4.0], [1.0], (50, 36, 44), BLOB_VOXEL, BLOB_ORIGIN)


def test_density_vectors_point_uphill_towards_blob_centre(blob):
    cloud = pointcloud.sample_points(blob, 0.1, 2.0, VECTOR_SIGMA_A)
    # density >= 0.1 means within 4 * sqrt(2 ln 10) = 8.58 Å of the centre: ~4/3 pi 8.58^3 / 8 points
    assert 250 < len(cloud) < 420
    assert cloud.points_A.shape == cloud.vectors.shape == (len(cloud), 3)
    assert cloud.density.shape == (len(cloud),) and np.all(cloud.density > 0)
    assert cloud.spacing_A == 2.0
    to_centre = BLOB_CENTRE - cloud.points_A
    r = np.linalg.norm(to_centre, axis=1)
    assert r.max() < 8.6 + 1e-6
    far = r > 0.5
    assert far.sum() > 0.95 * len(cloud)
    np.testing.assert_allclose(np.linalg.norm(cloud.vectors[far], axis=1), 1.0, atol=1e-5)
    dots = np.einsum("ij,ij->i", cloud.vectors[far], to_centre[far])
    assert np.all(dots > 0.9 * r[far])
    # the smoothed density is highest at the points closest to the centre
    assert np.corrcoef(r, cloud.density)[0, 1] < -0.9


def test_density_vectors_rotate_with_the_map(real_map, real_cloud):
    m, contour = real_map
    P = np.array([[0, 0, 1], [0, 1, 0], [-1, 0, 0]])  # 90 degrees about y
    rotated, T = lattice_rotated_map(m, P, (3.0, -7.0, 11.0))
    cloud_r = pointcloud.sample_points(rotated, contour, VOXEL_A, VECTOR_SIGMA_A)
    assert len(cloud_r) == len(real_cloud)
    d, j = cKDTree(cloud_r.points_A).query(tf.apply(T, real_cloud.points_A))
    assert d.max() < 1e-6
    cos = np.einsum("ij,ij->i", tf.rotate(T, real_cloud.vectors), cloud_r.vectors[j])
    assert cos.min() > 0.999


def test_grid_points_keeps_exactly_the_lattice_points_above_contour(blob):
    spacing, contour = 1.7, 0.3
    pts = pointcloud.grid_points(blob, contour, spacing)
    assert pts.ndim == 2 and pts.shape[1] == 3 and len(pts) > 50
    # on a lattice anchored at the map origin
    k = (pts - blob.origin_A) / spacing
    np.testing.assert_allclose(k, np.rint(k), atol=1e-6)

    def interp(p):
        f = (p - blob.origin_A) / blob.voxel_size_A
        return ndimage.map_coordinates(blob.data, [f[:, 2], f[:, 1], f[:, 0]], order=1, cval=-np.inf)

    assert np.all(interp(pts) >= contour)
    # and every lattice point inside the box whose density reaches the contour is kept
    hi = blob.index_to_world(blob.shape_xyz - 1)
    axes = [blob.origin_A[i] + spacing * np.arange(0, int((hi[i] - blob.origin_A[i]) / spacing) + 1) for i in range(3)]
    gx, gy, gz = np.meshgrid(*axes, indexing="ij")
    full = np.stack([gx.ravel(), gy.ravel(), gz.ravel()], 1)
    expected = full[interp(full) >= contour]
    assert len(expected) == len(pts)
    d, _ = cKDTree(pts).query(expected)
    assert d.max() < 1e-6
    # a higher contour keeps a strict subset
    assert len(pointcloud.grid_points(blob, 0.6, spacing)) < len(pts)


def test_estimate_contour_between_background_and_maximum():
    rng = np.random.default_rng(7)
    noise_sd = 0.05
    clean = blob_map([[20.3, 18.1, 21.7]], [4.0], [1.0], (40, 40, 40), 1.0, (0.0, 0.0, 0.0))
    noisy = DensityMap(
        (clean.data + rng.normal(0.0, noise_sd, clean.data.shape)).astype(np.float32),
        clean.voxel_size_A,
        clean.origin_A,
    )
    level = pointcloud.estimate_contour(noisy)
    # ~ background + 3 noise sd: clearly above the noise, far below the peak
    assert 2 * noise_sd < level < 5 * noise_sd
    assert level < 0.5 * float(noisy.data.max())
    # the noise-only voxels far from the blob are almost all below it
    corner = noisy.data[:8, :8, :8]
    assert (corner < level).mean() > 0.99
    # a masked map (background exactly 0) gets a positive level below its maximum
    masked = pointcloud.estimate_contour(clean)
    assert 0.0 < masked < float(clean.data.max())


def test_estimate_contour_rejects_a_constant_map():
    flat = DensityMap(np.full((8, 8, 8), 0.5, np.float32), np.ones(3), np.zeros(3))
    with pytest.raises(InputError, match="constant"):
        pointcloud.estimate_contour(flat)


def test_thresholded_crops_and_zeros_below_contour(blob):
    data, origin = pointcloud.thresholded(blob, 0.5)
    assert data.dtype == np.float32
    assert np.all((data == 0) | (data >= 0.5))
    assert np.isclose(data.sum(), blob.data[blob.data >= 0.5].sum(), rtol=1e-5)
    assert all(a < b for a, b in zip(data.shape, blob.data.shape))  # cropped on every axis
    lo = np.argwhere(blob.data >= 0.5).min(0)[::-1]
    np.testing.assert_allclose(origin, blob.origin_A + lo * blob.voxel_size_A)


def test_contour_above_maximum_raises_input_error(blob):
    top = float(blob.data.max())
    with pytest.raises(InputError, match="reaches the contour level"):
        pointcloud.thresholded(blob, top + 1.0)
    with pytest.raises(InputError, match="reaches the contour level"):
        pointcloud.grid_points(blob, top + 1.0, 2.0)
    with pytest.raises(InputError, match="reaches the contour level"):
        pointcloud.sample_points(blob, top * 1.01, 2.0, VECTOR_SIGMA_A)


def test_sample_points_needs_enough_points(blob):
    with pytest.raises(InputError, match=f"at least {pointcloud.MIN_POINTS}"):
        pointcloud.sample_points(blob, 0.9, 4.0, VECTOR_SIGMA_A)


# --------------------------------------------------------------------------- stage 2: key points
THREE_CENTRES = np.array([[10.3, 10.6, 10.2], [28.7, 12.1, 14.4], [16.2, 30.5, 22.9]]) + BLOB_ORIGIN


@pytest.fixture(scope="module", params=["cubic", "anisotropic"])
def three_blobs(request):
    if request.param == "cubic":
        m = blob_map(THREE_CENTRES, [2.0, 2.5, 2.0], [1.0, 0.7, 1.3], (40, 36, 44), 1.0, BLOB_ORIGIN)
    else:
        m = blob_map(THREE_CENTRES, [2.0, 2.5, 2.0], [1.0, 0.7, 1.3], (50, 36, 44), (0.8, 1.0, 1.25), BLOB_ORIGIN)
    contour = 0.05
    field = pointcloud.smooth_field(m, contour, 3.0 * pointcloud.KERNEL_TO_STD)
    cloud = pointcloud.sample_points(m, contour, 2.0, VECTOR_SIGMA_A)
    return m, field, cloud


def test_mean_shift_converges_onto_the_blob_maxima(three_blobs):
    _, field, cloud = three_blobs
    modes = keypoints.mean_shift(field, cloud.points_A)
    assert modes.shape == cloud.points_A.shape
    assert cdist(modes, THREE_CENTRES).min(1).max() < 0.5
    # every blob attracts its own basin: all three maxima are reached
    assert set(cdist(modes, THREE_CENTRES).argmin(1)) == {0, 1, 2}


def test_detect_finds_exactly_the_three_maxima(three_blobs):
    _, field, cloud = three_blobs
    kps = keypoints.detect(field, cloud.points_A, merge_eps_A=2.0)
    assert kps.shape == (3, 3)
    d = cdist(kps, THREE_CENTRES)
    assert sorted(d.argmin(1).tolist()) == [0, 1, 2]
    assert d.min(1).max() < 0.5
    np.testing.assert_array_equal(kps, keypoints.detect(field, cloud.points_A, merge_eps_A=2.0))


def test_merge_links_points_closer_than_eps_and_keeps_far_ones_apart():
    pts = np.array(
        [
            [0.0, 0.0, 0.0],
            [0.5, 0.0, 0.0],
            [1.0, 0.0, 0.0],  # a chain: one cluster
            [10.0, 0.0, 0.0],  # alone
            [5.0, 5.0, 5.0],
            [5.0, 5.0, 5.65],
        ]
    )  # just farther than eps
    out = keypoints.merge(pts, eps_A=0.6)
    expected = np.array([[0.5, 0.0, 0.0], [5.0, 5.0, 5.0], [5.0, 5.0, 5.65], [10.0, 0.0, 0.0]])
    np.testing.assert_allclose(out, expected)
    # input order does not change the result
    perm = np.random.default_rng(3).permutation(len(pts))
    np.testing.assert_allclose(keypoints.merge(pts[perm], eps_A=0.6), expected)
    # a larger eps also joins the last pair (0.65 Å apart) into its mean
    out2 = keypoints.merge(pts, eps_A=0.7)
    np.testing.assert_allclose(out2, [[0.5, 0.0, 0.0], [5.0, 5.0, 5.325], [10.0, 0.0, 0.0]])
    # a smaller one splits the chain
    assert len(keypoints.merge(pts, eps_A=0.4)) == len(pts)
    assert keypoints.merge(np.zeros((0, 3)), 1.0).shape == (0, 3)


def test_dense_keeps_all_points_under_max_and_thins_above():
    spacing = 2.0
    g = np.stack(np.meshgrid(*[np.arange(10)] * 3, indexing="ij"), -1).reshape(-1, 3)
    pts = g * spacing + np.array([3.0, -4.0, 7.5])  # 1000 lattice points
    np.testing.assert_array_equal(keypoints.dense(pts, spacing, 5000), pts)
    np.testing.assert_array_equal(keypoints.dense(pts, spacing, 1000), pts)
    thin = keypoints.dense(pts, spacing, 600)
    assert 0 < len(thin) <= 600
    assert len(thin) == 500  # i + j + k even
    # subset of the input, and every input point is within one lattice step of a key point
    assert cKDTree(pts).query(thin)[0].max() < 1e-9
    assert cKDTree(thin).query(pts)[0].max() <= spacing + 1e-9
    for max_points in (300, 100, 20):
        few = keypoints.dense(pts, spacing, max_points)
        assert 0 < len(few) <= max_points
        assert cKDTree(pts).query(few)[0].max() < 1e-9


# --------------------------------------------------------------------------- stage 3: descriptors
def test_descriptors_have_352_unit_entries(real_cloud):
    kps = real_cloud.points_A[::7]
    f = features.describe(kps, real_cloud, RADIUS_A)
    assert features.DESCRIPTOR_SIZE == 352
    assert f.descriptors.shape == (len(f), 352)
    assert len(f) > 0.95 * len(kps)
    np.testing.assert_allclose(np.linalg.norm(f.descriptors, axis=1), 1.0, atol=1e-9)
    assert np.all(f.descriptors >= 0)
    # the kept key points are a subset of those asked for, in order
    assert cKDTree(kps).query(f.keypoints_A)[0].max() == 0
    # different places get different descriptors
    assert np.median(np.linalg.norm(f.descriptors[1:] - f.descriptors[:-1], axis=1)) > 0.3
    # an isolated key point far from every sampled point is dropped
    far = features.describe(np.array([[1e4, 1e4, 1e4]]), real_cloud, RADIUS_A)
    assert len(far) == 0 and far.descriptors.shape == (0, 352)


@pytest.mark.parametrize(
    "P",
    [
        np.array([[0, -1, 0], [1, 0, 0], [0, 0, 1]]),  # 90 degrees about z
        np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]]),  # 90 degrees about x
        np.array([[0, 0, 1], [1, 0, 0], [0, 1, 0]]),  # 120 degrees about (1, 1, 1)
    ],
    ids=["z90", "x90", "diag120"],
)
def test_descriptors_invariant_under_lattice_rotation(real_map, real_cloud, P):
    m, contour = real_map
    rotated, T = lattice_rotated_map(m, P, (3.0, -7.0, 11.0))
    cloud_r = pointcloud.sample_points(rotated, contour, VOXEL_A, VECTOR_SIGMA_A)
    fa = features.describe(real_cloud.points_A, real_cloud, RADIUS_A)
    fb = features.describe(cloud_r.points_A, cloud_r, RADIUS_A)
    assert len(fa) == len(fb) > 2000
    d, j = cKDTree(fb.keypoints_A).query(tf.apply(T, fa.keypoints_A))
    assert d.max() < 1e-6  # same key points, moved
    dist = np.linalg.norm(fa.descriptors - fb.descriptors[j], axis=1)
    assert np.median(dist) < 0.01
    assert np.percentile(dist, 90) < 0.05
    nn = np.argmax(fa.descriptors @ fb.descriptors.T, axis=1)
    assert (nn == j).mean() > 0.95


def test_descriptors_match_across_a_general_rotation(real_map, real_cloud):
    """A general rotation moves the map off its lattice: resample it on a new 5 Å grid,
    describe both point clouds at their own sampled points, and check that descriptor
    nearest neighbours mostly land on the corresponding place (within one lattice step)."""
    m, contour = real_map
    rng = np.random.default_rng(3)
    T = tf.make(tf.random_rotation(rng), rng.uniform(-30, 30, 3))
    assert tf.rotation_angle_deg(T) > 30
    moved = resampled_map(m, T, VOXEL_A, rng)
    cloud_r = pointcloud.sample_points(moved, contour, VOXEL_A, VECTOR_SIGMA_A)
    fa = features.describe(real_cloud.points_A, real_cloud, RADIUS_A)
    fb = features.describe(cloud_r.points_A, cloud_r, RADIUS_A)
    expected = tf.apply(T, fa.keypoints_A)
    nn = np.argmax(fa.descriptors @ fb.descriptors.T, axis=1)
    accuracy = (np.linalg.norm(fb.keypoints_A[nn] - expected, axis=1) <= VOXEL_A + 1e-6).mean()
    assert accuracy > 0.5
    # descriptors at corresponding places are much closer than at random places
    d, j = cKDTree(fb.keypoints_A).query(expected)
    near = d < VOXEL_A * np.sqrt(3) / 2
    assert near.mean() > 0.95
    corresponding = np.median(np.linalg.norm(fa.descriptors[near] - fb.descriptors[j[near]], axis=1))
    shuffled = rng.permutation(len(fb))[: near.sum()]
    random = np.median(np.linalg.norm(fa.descriptors[near] - fb.descriptors[shuffled], axis=1))
    assert corresponding < 0.7 * random


# --------------------------------------------------------------------------- stage 4: matching
def _unit(v):
    v = np.asarray(v, float)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _hand_features():
    e = np.eye(5)
    c = np.array([0.011, 0.023, 0.037, 0.041, 0.053])  # small generic offset: no distance ties
    src = Features(
        keypoints_A=np.arange(12, dtype=float).reshape(4, 3),
        descriptors=_unit(np.array([e[0], e[1], e[0] + 0.3 * e[1], e[3] + 0.2 * e[4]]) + c),
    )
    tgt = Features(
        keypoints_A=100.0 + np.arange(12, dtype=float).reshape(4, 3),
        descriptors=_unit(np.array([e[0] + 0.05 * e[2], e[1] + 0.01 * e[2], e[3], e[2]]) + c[::-1]),
    )
    return src, tgt


def _brute_force_mutual(src, tgt, k):
    d = cdist(src.descriptors, tgt.descriptors)
    nn_t = np.argsort(d, axis=1, kind="stable")[:, :k]
    nn_s = np.argsort(d.T, axis=1, kind="stable")[:, :k]
    return {(i, j) for i in range(len(src)) for j in nn_t[i] if i in nn_s[j]}


def _pairs(m: Matches, src, tgt):
    i = [int(np.flatnonzero((src.keypoints_A == p).all(1))[0]) for p in m.source_A]
    j = [int(np.flatnonzero((tgt.keypoints_A == p).all(1))[0]) for p in m.target_A]
    return list(zip(i, j))


def test_mutual_nearest_returns_exactly_the_mutual_pairs():
    src, tgt = _hand_features()
    m = match.mutual_nearest(src, tgt, k=1)
    pairs = _pairs(m, src, tgt)
    # s0<->t0, s1<->t1, s3<->t2 are mutual; s2's nearest is t0 but t0's nearest is s0; t3 is nobody's
    assert set(pairs) == {(0, 0), (1, 1), (3, 2)} == _brute_force_mutual(src, tgt, 1)
    assert len(pairs) == 3
    expected_d = np.linalg.norm(src.descriptors[[i for i, _ in pairs]] - tgt.descriptors[[j for _, j in pairs]], axis=1)
    np.testing.assert_allclose(m.distance, expected_d, atol=1e-6)
    assert np.all(np.diff(m.distance) >= 0)  # sorted by distance


def test_mutual_nearest_with_k2_adds_second_neighbours():
    src, tgt = _hand_features()
    pairs1 = set(_pairs(match.mutual_nearest(src, tgt, k=1), src, tgt))
    pairs2 = _pairs(match.mutual_nearest(src, tgt, k=2), src, tgt)
    assert len(pairs2) == len(set(pairs2))
    assert set(pairs2) == _brute_force_mutual(src, tgt, 2)
    assert pairs1 < set(pairs2)  # strictly more
    assert (2, 0) in pairs2 and (2, 0) not in pairs1


def test_mutual_nearest_random_descriptors_agree_with_brute_force():
    rng = np.random.default_rng(11)
    src = Features(rng.normal(size=(60, 3)), _unit(np.abs(rng.normal(size=(60, 16)))))
    tgt = Features(rng.normal(size=(45, 3)) + 50, _unit(np.abs(rng.normal(size=(45, 16)))))
    for k in (1, 3):
        got = _pairs(match.mutual_nearest(src, tgt, k=k), src, tgt)
        assert set(got) == _brute_force_mutual(src, tgt, k)


def test_mutual_nearest_falls_back_to_one_way_and_handles_empty():
    e = np.eye(3)
    # every source picks t0, t0 picks s0: only one mutual pair, so all one-way pairs are returned
    src = Features(np.arange(9, dtype=float).reshape(3, 3), _unit([e[0], e[0] + 0.2 * e[1], e[0] + 0.2 * e[2]]))
    tgt = Features(np.arange(6, dtype=float).reshape(2, 3) + 10, _unit([e[0], e[1] + e[2]]))
    m = match.mutual_nearest(src, tgt, k=1)
    assert len(m) == 3
    np.testing.assert_array_equal(m.target_A, np.repeat(tgt.keypoints_A[:1], 3, axis=0))
    empty = match.mutual_nearest(Features(np.zeros((0, 3)), np.zeros((0, 352))), tgt)
    assert len(empty) == 0 and empty.source_A.shape == (0, 3)


# --------------------------------------------------------------------------- stage 5: coarse pose
def _correspondences(rng, n_in, n_out, noise=0.5, box=80.0):
    T = tf.make(tf.random_rotation(rng), rng.uniform(-50, 50, 3))
    src_in = rng.uniform(0, box, (n_in, 3))
    tgt_in = tf.apply(T, src_in) + rng.normal(0, noise / np.sqrt(3), (n_in, 3))
    src_out = rng.uniform(0, box, (n_out, 3))
    tgt_out = tf.apply(T, rng.uniform(0, box, (n_out, 3)))  # wrong partner, same region
    src = np.vstack([src_in, src_out])
    tgt = np.vstack([tgt_in, tgt_out])
    order = rng.permutation(len(src))  # inliers not first
    return T, src[order], tgt[order], src_in


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("path", ["exact", "greedy"])
def test_coarse_poses_recovers_pose_with_90_percent_outliers(seed, path):
    rng = np.random.default_rng(seed)
    if path == "exact":  # the whole graph fits the exact clique search
        n_in = max(5, register.EXACT_LIMIT // 10)
        n_out = register.EXACT_LIMIT - n_in
    else:  # too many matches for it: 30 inliers + 270 outliers
        n_in, n_out = 30, 270
    T, src, tgt, src_in = _correspondences(rng, n_in, n_out)
    n = len(src)
    assert (n <= register.EXACT_LIMIT) == (path == "exact")
    assert n_out >= 0.85 * n
    m = Matches(src, tgt, np.zeros(n))
    poses = register.coarse_poses(m, noise_A=1.0, count=4)
    assert 1 <= len(poses) <= 4
    best = poses[0]
    rot, trans = tf.pose_error(best.T_target_source, T, center_A=src_in.mean(0))
    assert rot < 2.0 and trans < 1.0
    assert n_in - 2 <= best.inliers <= n_in + 3
    assert best.inliers >= max(p.inliers for p in poses)
    R = best.T_target_source[:3, :3]
    np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-9)
    assert np.isclose(np.linalg.det(R), 1.0)


def test_max_cliques_are_disjoint_consistent_sets():
    rng = np.random.default_rng(5)
    T, src, tgt, _ = _correspondences(rng, 12, 48)
    adj = register.adjacency(src, tgt, 1.0)
    assert adj.dtype == bool and np.array_equal(adj, adj.T) and not adj.diagonal().any()
    cliques = register.max_cliques(adj, 3)
    assert len(cliques) >= 1
    seen = set()
    for c in cliques:
        assert len(c) >= register.MIN_CLIQUE
        assert adj[np.ix_(c, c)].sum() == len(c) * (len(c) - 1)  # a clique
        assert seen.isdisjoint(c.tolist())
        seen |= set(c.tolist())
    # the first is the true inlier set (12 consistent correspondences)
    inl = np.linalg.norm(tf.apply(T, src) - tgt, axis=1) < 2.0
    assert set(cliques[0].tolist()) == set(np.flatnonzero(inl).tolist())
    # the greedy peeling finds the same planted clique
    assert set(register._peeled_clique(adj).tolist()) == set(np.flatnonzero(inl).tolist())


def _random_graph(rng, n):
    adj = rng.random((n, n)) < rng.uniform(0.1, 0.95)
    if n > 4 and rng.random() < 0.5:  # a planted clique
        idx = rng.choice(n, int(rng.integers(3, n)), replace=False)
        adj[np.ix_(idx, idx)] = True
    adj = np.triu(adj, 1)
    adj = adj | adj.T
    return adj


def test_exact_clique_is_the_first_maximum_clique_by_brute_force():
    """Every vertex subset checked: the largest clique, the lexicographically first when tied."""
    rng = np.random.default_rng(11)
    for _ in range(150):
        n = int(rng.integers(0, 12))
        adj = _random_graph(rng, n)
        best = ()
        for mask in range(1, 1 << n):
            members = tuple(v for v in range(n) if mask >> v & 1)
            if adj[np.ix_(members, members)].sum() == len(members) * (len(members) - 1):
                if len(members) > len(best) or (len(members) == len(best) and members < best):
                    best = members
        assert register._exact_clique(adj).tolist() == list(best)


def test_exact_clique_agrees_with_igraph():
    igraph = pytest.importorskip("igraph")
    rng = np.random.default_rng(12)
    for _ in range(300):
        adj = _random_graph(rng, int(rng.integers(1, register.EXACT_LIMIT + 1)))
        iu = np.triu_indices(len(adj), 1)
        graph = igraph.Graph(n=len(adj), edges=np.stack([iu[0][adj[iu]], iu[1][adj[iu]]], 1).tolist())
        expected = min(sorted(c) for c in graph.largest_cliques())
        assert register._exact_clique(adj).tolist() == expected


def test_gnc_tls_is_exact_on_clean_data():
    rng = np.random.default_rng(2)
    T = tf.make(tf.random_rotation(rng), rng.uniform(-20, 20, 3))
    src = rng.uniform(-30, 30, (25, 3))
    pose = register.gnc_tls(src, tf.apply(T, src), noise_A=1.0)
    np.testing.assert_allclose(pose.T_target_source, T, atol=1e-6)
    assert pose.inliers == 25 and pose.rmse_A < 1e-6
    # outliers that leave the least-squares fit within the noise bound are cut off exactly
    tgt = tf.apply(T, src)
    tgt[0] += [2.0, 0.0, 0.0]
    pose = register.gnc_tls(src, tgt, noise_A=1.0)
    np.testing.assert_allclose(pose.T_target_source, T, atol=1e-6)
    assert pose.inliers == 24


def test_gnc_tls_rejects_a_few_gross_outliers():
    rng = np.random.default_rng(2)
    T = tf.make(tf.random_rotation(rng), rng.uniform(-20, 20, 3))
    src = rng.uniform(-30, 30, (25, 3))
    tgt = tf.apply(T, src)
    tgt[:5] += rng.uniform(15, 30, (5, 3))  # 20% gross outliers
    pose = register.gnc_tls(src, tgt, noise_A=1.0)
    assert pose.inliers == 20
    np.testing.assert_allclose(pose.T_target_source, T, atol=1e-6)


def test_coarse_poses_needs_three_matches():
    m = Matches(np.zeros((2, 3)), np.ones((2, 3)), np.zeros(2))
    assert register.coarse_poses(m, 1.0) == []


# --------------------------------------------------------------------------- stage 6: fine pose
def _perturbation(rng, centre, angle_deg=5.0, shift_A=3.0):
    """Rotation by angle_deg about a random axis through `centre`, then a shift_A Å translation."""
    R = rotation_about(_unit(rng.normal(size=3)), angle_deg)
    t = shift_A * _unit(rng.normal(size=3))
    return tf.make(R, centre - R @ centre + t)


@pytest.mark.parametrize("seed", [0, 1])
def test_robust_icp_converges_from_a_perturbed_pose(real_cloud, seed):
    """Sampled points of the real map against a rigidly moved copy of themselves."""
    rng = np.random.default_rng(seed)
    src = real_cloud.points_A
    centre = src.mean(0)
    T_true = tf.make(tf.random_rotation(rng), rng.uniform(-40, 40, 3))
    tree = cKDTree(tf.apply(T_true, src))
    T0 = tf.compose(T_true, _perturbation(rng, centre))
    rot0, trans0 = tf.pose_error(T0, T_true, center_A=centre)
    assert rot0 == pytest.approx(5.0, abs=1e-6) and trans0 == pytest.approx(3.0, abs=1e-6)
    assert tf.rmsd(T0, T_true, src) > 4.0
    pose = refine.robust_icp(src, tree, T0, scale_A=VOXEL_A, iterations=60)
    rot, trans = tf.pose_error(pose.T_target_source, T_true, center_A=centre)
    assert rot < 0.01 and trans < 0.01
    assert pose.converged
    assert pose.inliers == len(src) and pose.rmse_A < 1e-3


def test_robust_icp_improves_a_pose_against_an_independent_sampling(real_map, real_cloud):
    """The pipeline's situation: the target points come from another grid (the map moved
    and resampled at 2.5 Å, then sampled at 2.5 Å). Point-to-point ICP on volume-filling
    lattices only gets to lattice-level accuracy here (about 1-2 Å RMSD, see report), so
    this checks that it pulls a 5 degree / 3 Å error well in, not that it is exact."""
    m, contour = real_map
    rng = np.random.default_rng(2)
    src = real_cloud.points_A
    centre = src.mean(0)
    T_true = tf.make(tf.random_rotation(rng), rng.uniform(-40, 40, 3))
    moved = resampled_map(m, T_true, VOXEL_A / 2, rng, order=3)
    fine = pointcloud.sample_points(moved, contour, VOXEL_A / 2, VECTOR_SIGMA_A)
    T0 = tf.compose(T_true, _perturbation(rng, centre))
    before = tf.rmsd(T0, T_true, src)
    pose = refine.robust_icp(src, cKDTree(fine.points_A), T0, scale_A=VOXEL_A, iterations=60)
    after = tf.rmsd(pose.T_target_source, T_true, src)
    assert after < 0.6 * before
    assert after < 2.5
    rot, _ = tf.pose_error(pose.T_target_source, T_true, center_A=centre)
    assert rot < 2.5


# --------------------------------------------------------------------------- stage 7: score
def test_similarity_of_a_cloud_with_itself_is_high(real_cloud):
    s = score.similarity(real_cloud, real_cloud, np.eye(4), rng=np.random.default_rng(0))
    assert s.overlap == 1.0
    assert s.vector_agreement > 0.9
    assert abs(s.js_divergence) < 0.05
    assert s.similarity > 0.85
    assert np.isclose(s.similarity, (1 - s.js_divergence) * s.vector_agreement)


def test_similarity_is_zero_for_a_far_shifted_pose(real_cloud):
    T = tf.make(np.eye(3), [1000.0, 0.0, 0.0])
    s = score.similarity(real_cloud, real_cloud, T, rng=np.random.default_rng(0))
    assert s.overlap < 0.1
    assert s.similarity == 0.0


def test_similarity_drops_for_a_wrong_rotation(real_cloud):
    good = score.similarity(real_cloud, real_cloud, np.eye(4), rng=np.random.default_rng(0))
    centre = real_cloud.points_A.mean(0)
    R = rotation_about([1.0, 1.0, 0.0], 90.0)
    T = tf.make(R, centre - R @ centre)
    bad = score.similarity(real_cloud, real_cloud, T, rng=np.random.default_rng(0))
    assert bad.similarity < 0.6 * good.similarity
    assert bad.js_divergence > 0.1


def test_js_divergence_is_seeded_and_behaves(real_cloud):
    a = real_cloud.points_A
    b = a + np.array([4.0, 0.0, 0.0])
    js1 = score.js_divergence(a, b, samples=2000, rng=np.random.default_rng(9))
    js2 = score.js_divergence(a, b, samples=2000, rng=np.random.default_rng(9))
    assert js1 == js2
    assert 0.05 < js1 < 1.0
    assert score.js_divergence(a, a, samples=2000, rng=np.random.default_rng(9)) < 1e-9
    far = score.js_divergence(a, a + 500.0, samples=2000, rng=np.random.default_rng(9))
    assert far > 0.99


def test_vector_agreement_counts_flipped_vectors_as_disagreeing(real_cloud):
    flipped = PointCloud(real_cloud.points_A, -real_cloud.vectors, real_cloud.density, real_cloud.spacing_A)
    agree, overlap = score.vector_agreement(real_cloud, flipped, np.eye(4), cutoff_A=10.0, cos_min=0.6)
    assert overlap == 1.0 and agree == 0.0
    agree, _ = score.vector_agreement(real_cloud, real_cloud, np.eye(4), cutoff_A=10.0, cos_min=0.6)
    assert agree == 1.0


# --------------------------------------------------------------------------- transform helpers
def test_transform_identities():
    rng = np.random.default_rng(21)
    A = tf.make(tf.random_rotation(rng), rng.normal(size=3) * 10)
    B = tf.make(tf.random_rotation(rng), rng.normal(size=3) * 10)
    p = rng.normal(size=(20, 3)) * 30
    np.testing.assert_allclose(tf.compose(A, tf.invert(A)), np.eye(4), atol=1e-12)
    np.testing.assert_allclose(tf.compose(tf.invert(A), A), np.eye(4), atol=1e-12)
    np.testing.assert_allclose(tf.invert(tf.invert(A)), A, atol=1e-12)
    # compose(A, B): B first
    np.testing.assert_allclose(tf.apply(tf.compose(A, B), p), tf.apply(A, tf.apply(B, p)), atol=1e-9)
    np.testing.assert_allclose(tf.invert(tf.compose(A, B)), tf.compose(tf.invert(B), tf.invert(A)), atol=1e-12)
    np.testing.assert_allclose(tf.compose(), np.eye(4))
    # rotate ignores the translation
    np.testing.assert_allclose(tf.rotate(A, p), p @ A[:3, :3].T)
    R = A[:3, :3]
    np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
    assert np.isclose(np.linalg.det(R), 1.0)
    assert tf.pose_error(A, A) == pytest.approx((0.0, 0.0), abs=1e-4)  # arccos near 1
    assert tf.rmsd(A, tf.compose(tf.make(np.eye(3), [3.0, 4.0, 0.0]), A), p) == pytest.approx(5.0)


def test_kabsch_recovers_rotations_and_never_reflects():
    rng = np.random.default_rng(22)
    T = tf.make(tf.random_rotation(rng), rng.normal(size=3) * 10)
    src = rng.normal(size=(30, 3)) * 10
    np.testing.assert_allclose(tf.kabsch(src, tf.apply(T, src)), T, atol=1e-9)
    w = rng.uniform(0.1, 2.0, 30)
    np.testing.assert_allclose(tf.kabsch(src, tf.apply(T, src), w), T, atol=1e-9)
    # zero weight hides a gross outlier
    tgt = tf.apply(T, src)
    tgt[0] += 100.0
    w = np.ones(30)
    w[0] = 0.0
    np.testing.assert_allclose(tf.kabsch(src, tgt, w), T, atol=1e-9)
    # a mirrored target still gives a proper rotation
    mirrored = src * np.array([-1.0, 1.0, 1.0])
    R = tf.kabsch(src, mirrored)[:3, :3]
    assert np.isclose(np.linalg.det(R), 1.0)


@pytest.mark.parametrize("angle", [0.5, 30.0, 90.0, 179.0, 180.0])
def test_rotation_angle_and_axis(angle):
    rng = np.random.default_rng(int(angle * 10))
    axis = _unit(rng.normal(size=3))
    R = rotation_about(axis, angle)
    assert tf.rotation_angle_deg(R) == pytest.approx(angle, abs=1e-5)
    assert tf.rotation_angle_deg(tf.make(R, [1.0, 2.0, 3.0])) == pytest.approx(angle, abs=1e-5)
    got = tf.rotation_axis(R)
    assert np.linalg.norm(got) == pytest.approx(1.0)
    if angle < 180.0:
        np.testing.assert_allclose(got, axis, atol=1e-5)
    else:
        assert abs(got @ axis) == pytest.approx(1.0, abs=1e-6)  # sign is arbitrary at 180
    assert tf.rotation_angle_deg(np.eye(3)) == 0.0


def test_random_rotation_is_seeded_and_proper():
    a = tf.random_rotation(np.random.default_rng(1))
    b = tf.random_rotation(np.random.default_rng(1))
    c = tf.random_rotation(np.random.default_rng(2))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    np.testing.assert_allclose(a @ a.T, np.eye(3), atol=1e-12)
    assert np.isclose(np.linalg.det(a), 1.0)
