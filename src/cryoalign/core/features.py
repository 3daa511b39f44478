"""Key points -> SHOT-style descriptors built on density vectors (352 numbers).

For each key point: a local reference frame (LRF) from the distance-weighted
covariance of the sampled points within the support radius, with the SHOT sign
disambiguation; then 32 spatial sectors (8 azimuth x 2 elevation x 2 radial)
each holding an 11-bin histogram of cos(angle between a neighbour's density
vector and the LRF's z axis), filled with quadrilinear interpolation and
L2-normalised (Tombari et al. 2010, with density vectors in place of normals).

The sampled points lie on a lattice, so a key point's neighbours are found by
scanning the lattice cells of its support cube (no tree); the per-neighbour
loop is compiled with numba.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from ..types import Features, PointCloud

N_AZIMUTH, N_ELEVATION, N_RADIAL, N_COS = 8, 2, 2, 11
DESCRIPTOR_SIZE = N_AZIMUTH * N_ELEVATION * N_RADIAL * N_COS  # 352
MIN_NEIGHBOURS = 5


def lattice_index(cloud: PointCloud):
    """Integer lattice of the cloud: (index volume [x, y, z] -> point or -1, origin_A, spacing)."""
    h = cloud.spacing_A
    origin = cloud.points_A.min(0)
    ijk = np.rint((cloud.points_A - origin) / h).astype(np.int64)
    shape = ijk.max(0) + 1
    volume = -np.ones(tuple(shape), np.int64)
    volume[ijk[:, 0], ijk[:, 1], ijk[:, 2]] = np.arange(len(ijk))
    return volume, origin, h


@njit(cache=True)
def _two_bins(u, n, circular):
    base = math.floor(u - 0.5)
    frac = u - 0.5 - base
    lo = int(base)
    hi = lo + 1
    w_lo = 1.0 - frac
    w_hi = frac
    if circular:
        return lo % n, hi % n, w_lo, w_hi
    if lo < 0:
        return 0, 0, 0.0, 1.0
    if hi > n - 1:
        return n - 1, n - 1, 1.0, 0.0
    return lo, hi, w_lo, w_hi


@njit(cache=True)
def _describe_kernel(keypoints, points, vectors, volume, origin, h, radius, min_neighbours, out, valid):
    nx, ny, nz = volume.shape
    reach = int(math.ceil(radius / h))
    r2max = radius * radius
    nbr = np.empty(volume.size if volume.size < 200000 else 200000, np.int64)
    for k in range(keypoints.shape[0]):
        kp = keypoints[k]
        c0 = int(round((kp[0] - origin[0]) / h))
        c1 = int(round((kp[1] - origin[1]) / h))
        c2 = int(round((kp[2] - origin[2]) / h))
        cnt = 0
        cov = np.zeros((3, 3))
        wsum = 0.0
        for i in range(max(0, c0 - reach), min(nx, c0 + reach + 1)):
            for j in range(max(0, c1 - reach), min(ny, c1 + reach + 1)):
                for l in range(max(0, c2 - reach), min(nz, c2 + reach + 1)):
                    p = volume[i, j, l]
                    if p < 0:
                        continue
                    dx = points[p, 0] - kp[0]
                    dy = points[p, 1] - kp[1]
                    dz = points[p, 2] - kp[2]
                    d2 = dx * dx + dy * dy + dz * dz
                    if d2 > r2max or d2 < 1e-12:
                        continue
                    if cnt < nbr.shape[0]:
                        nbr[cnt] = p
                        cnt += 1
                    w = radius - math.sqrt(d2)
                    wsum += w
                    cov[0, 0] += w * dx * dx
                    cov[0, 1] += w * dx * dy
                    cov[0, 2] += w * dx * dz
                    cov[1, 1] += w * dy * dy
                    cov[1, 2] += w * dy * dz
                    cov[2, 2] += w * dz * dz
        if cnt < min_neighbours or wsum <= 0:
            continue
        cov[1, 0] = cov[0, 1]
        cov[2, 0] = cov[0, 2]
        cov[2, 1] = cov[1, 2]
        _, vecs = np.linalg.eigh(cov / wsum)
        xa = vecs[:, 2].copy()
        za = vecs[:, 0].copy()
        vx = 0.0
        vz = 0.0
        for q in range(cnt):
            p = nbr[q]
            dx = points[p, 0] - kp[0]
            dy = points[p, 1] - kp[1]
            dz = points[p, 2] - kp[2]
            sx = dx * xa[0] + dy * xa[1] + dz * xa[2]
            sz = dx * za[0] + dy * za[1] + dz * za[2]
            vx += 1.0 if sx > 0 else (-1.0 if sx < 0 else 0.0)
            vz += 1.0 if sz > 0 else (-1.0 if sz < 0 else 0.0)
        if vx < 0:
            xa = -xa
        if vz < 0:
            za = -za
        ya = np.array([za[1] * xa[2] - za[2] * xa[1], za[2] * xa[0] - za[0] * xa[2], za[0] * xa[1] - za[1] * xa[0]])
        for q in range(cnt):
            p = nbr[q]
            dx = points[p, 0] - kp[0]
            dy = points[p, 1] - kp[1]
            dz = points[p, 2] - kp[2]
            lx = dx * xa[0] + dy * xa[1] + dz * xa[2]
            ly = dx * ya[0] + dy * ya[1] + dz * ya[2]
            lz = dx * za[0] + dy * za[1] + dz * za[2]
            dist = math.sqrt(lx * lx + ly * ly + lz * lz)
            cosv = vectors[p, 0] * za[0] + vectors[p, 1] * za[1] + vectors[p, 2] * za[2]
            cosv = min(1.0, max(-1.0, cosv))
            az = math.atan2(ly, lx)
            a0, a1, wa0, wa1 = _two_bins((az + math.pi) / (2 * math.pi) * 8, 8, True)
            e0, e1, we0, we1 = _two_bins((lz / dist + 1.0) / 2.0 * 2, 2, False)
            r0, r1, wr0, wr1 = _two_bins(dist / radius * 2, 2, False)
            b0, b1, wb0, wb1 = _two_bins((cosv + 1.0) / 2.0 * 11, 11, False)
            for a, wa in ((a0, wa0), (a1, wa1)):
                for e, we in ((e0, we0), (e1, we1)):
                    for r, wr in ((r0, wr0), (r1, wr1)):
                        base = ((a * 2 + e) * 2 + r) * 11
                        wsec = wa * we * wr
                        out[k, base + b0] += wsec * wb0
                        out[k, base + b1] += wsec * wb1
        valid[k] = True


def describe(keypoints_A: np.ndarray, cloud: PointCloud, radius_A: float) -> Features:
    """Stage 3: descriptors (K, 352) for key points; key points with too few
    neighbours are dropped."""
    keypoints_A = np.ascontiguousarray(np.asarray(keypoints_A, float).reshape(-1, 3))
    K = len(keypoints_A)
    out = np.zeros((K, DESCRIPTOR_SIZE))
    if K == 0:
        return Features(keypoints_A, out)
    volume, origin, h = lattice_index(cloud)
    valid = np.zeros(K, np.bool_)
    _describe_kernel(
        keypoints_A,
        np.ascontiguousarray(cloud.points_A),
        np.ascontiguousarray(cloud.vectors),
        volume,
        origin,
        float(h),
        float(radius_A),
        MIN_NEIGHBOURS,
        out,
        valid,
    )
    norm = np.linalg.norm(out, axis=1)
    valid &= norm > 0
    return Features(keypoints_A[valid], out[valid] / norm[valid, None])
