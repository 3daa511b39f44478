"""Map-level refinement: polish a pose on the densities themselves (like ChimeraX fitmap).

The point stages stop at the precision of their sampling lattice.  Here the
source map's voxels above its contour (at most `MAX_POINTS` of them) are moved by the pose, the target density is read there by
trilinear interpolation, and the pose is changed to maximise the correlation
about the mean (Pearson) between the source values and those target values:

    cam(T) = sum (u_i - u_mean)(v_i - v_mean) / (|u - u_mean| |v - v_mean|),
    v_i = target(T x_i)

The gradient is analytic: d cam / d v_i times the target's gradient (central
differences of a crop of the target around the moved source, interpolated the
same way), chained through a small rotation about the moved source's centroid
and a translation.  L-BFGS runs on those six numbers, with the rotation scaled
by the source's radius of gyration so one unit means about one Å of motion;
it is restarted from the new pose (where the small-angle gradient is exact)
until the pose stops moving.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import optimize
from scipy.spatial.transform import Rotation

from . import transform as tf
from .types import DensityMap

try:
    from numba import njit
except ImportError:  # pragma: no cover - numba is a dependency; keep working without it
    njit = None

MAX_POINTS = 10000
MARGIN_A = 12.0          # crop margin around the moved source (covers the motion of a refinement)
OUTER_ROUNDS = 4
INNER_ITERATIONS = 40


@dataclass(frozen=True, eq=False)
class MapSample:
    """Source voxels above contour: world positions (N, 3) and values (N,), centred values."""
    points_A: np.ndarray
    values: np.ndarray

    @property
    def centred(self) -> np.ndarray:
        return self.values - self.values.mean()


def sample_source(density: DensityMap, contour: float, max_points: int = MAX_POINTS) -> MapSample:
    """Voxels of `density` at or above `contour`; when there are more than `max_points`,
    every k-th of them in storage order (an even spread, and deterministic)."""
    zyx = np.argwhere(density.data >= contour)
    if len(zyx) > max_points:
        zyx = zyx[:: -(-len(zyx) // max_points)]
    values = density.data[zyx[:, 0], zyx[:, 1], zyx[:, 2]].astype(float)
    return MapSample(points_A=density.index_to_world(zyx[:, ::-1]), values=values)


class _TargetCrop:
    """The target density around a set of world points, with its gradient (per Å),
    stacked as (nz, ny, nx, 4) = value, d/dx, d/dy, d/dz for one interpolation pass."""

    def __init__(self, target: DensityMap, points_A: np.ndarray, margin_A: float):
        lo = np.floor(target.world_to_index(points_A.min(0) - margin_A)).astype(int)
        hi = np.ceil(target.world_to_index(points_A.max(0) + margin_A)).astype(int) + 1
        shape = target.shape_xyz
        lo = np.clip(lo, 0, shape - 1)
        hi = np.clip(hi, lo + 1, shape)
        data = np.asarray(target.data[lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]], dtype=np.float32)
        self.origin_A = target.origin_A + lo * target.voxel_size_A
        self.voxel_A = target.voxel_size_A
        stack = np.zeros(data.shape + (4,), np.float32)
        stack[..., 0] = data
        for axis, k in ((2, 1), (1, 2), (0, 3)):          # x, y, z gradients
            if data.shape[axis] >= 2:
                stack[..., k] = np.gradient(data, axis=axis) / self.voxel_A[k - 1]
        self.stack = stack

    def _index(self, points_A):
        return (points_A - self.origin_A) / self.voxel_A

    def values(self, points_A):
        return _interpolate(self.stack, self._index(points_A))[:, 0]

    def values_and_gradient(self, points_A):
        out = _interpolate(self.stack, self._index(points_A))
        return out[:, 0], out[:, 1:]


def _interpolate_py(stack, f):
    """Trilinear interpolation of the 4 channels at fractional (x, y, z) indices; 0 outside."""
    nz, ny, nx, _ = stack.shape
    out = np.zeros((len(f), 4))
    i0 = np.floor(f).astype(np.int64)
    t = f - i0
    for dz in (0, 1):
        for dy in (0, 1):
            for dx in (0, 1):
                x, y, z = i0[:, 0] + dx, i0[:, 1] + dy, i0[:, 2] + dz
                ok = (x >= 0) & (x < nx) & (y >= 0) & (y < ny) & (z >= 0) & (z < nz)
                w = (np.where(dx, t[:, 0], 1 - t[:, 0]) * np.where(dy, t[:, 1], 1 - t[:, 1])
                     * np.where(dz, t[:, 2], 1 - t[:, 2]))
                out[ok] += w[ok, None] * stack[z[ok], y[ok], x[ok]]
    return out


if njit is not None:
    @njit(cache=True, nogil=True)
    def _interpolate(stack, f):  # pragma: no cover - compiled; same as _interpolate_py
        nz, ny, nx, nc = stack.shape
        out = np.zeros((f.shape[0], nc))
        for p in range(f.shape[0]):
            fx, fy, fz = f[p, 0], f[p, 1], f[p, 2]
            x0, y0, z0 = int(np.floor(fx)), int(np.floor(fy)), int(np.floor(fz))
            tx, ty, tz = fx - x0, fy - y0, fz - z0
            for dz in range(2):
                z = z0 + dz
                if z < 0 or z >= nz:
                    continue
                wz = tz if dz else 1.0 - tz
                for dy in range(2):
                    y = y0 + dy
                    if y < 0 or y >= ny:
                        continue
                    wy = ty if dy else 1.0 - ty
                    for dx in range(2):
                        x = x0 + dx
                        if x < 0 or x >= nx:
                            continue
                        w = wz * wy * (tx if dx else 1.0 - tx)
                        for c in range(nc):
                            out[p, c] += w * stack[z, y, x, c]
        return out
else:  # pragma: no cover
    _interpolate = _interpolate_py


def _cam(u_centred, u_norm, v):
    vc = v - v.mean()
    vn = float(np.sqrt((vc * vc).sum()))
    if vn == 0.0 or u_norm == 0.0:
        return 0.0, vc, vn
    return float((u_centred * vc).sum() / (u_norm * vn)), vc, vn


def correlation(sample: MapSample, target: DensityMap, T: np.ndarray) -> float:
    """Correlation about the mean of the source sample and the target under T."""
    moved = tf.apply(T, sample.points_A)
    crop = _TargetCrop(target, moved, 2.0 * float(target.voxel_size_A.max()))
    u = sample.centred
    return _cam(u, float(np.sqrt((u * u).sum())), crop.values(moved))[0]


@dataclass(frozen=True)
class MapFit:
    T_target_source: np.ndarray
    correlation_before: float
    correlation: float
    evaluations: int


def refine(sample: MapSample, target: DensityMap, T_init: np.ndarray, *, rounds: int = OUTER_ROUNDS,
           iterations: int = INNER_ITERATIONS, tol_A: float = 0.01) -> MapFit:
    """Maximise the correlation about the mean over rigid motions, starting from T_init."""
    T = np.array(T_init, float)
    u = sample.centred
    u_norm = float(np.sqrt((u * u).sum()))
    moved0 = tf.apply(T, sample.points_A)
    crop = _TargetCrop(target, moved0, MARGIN_A)
    before = _cam(u, u_norm, crop.values(moved0))[0]
    lever = max(1.0, float(np.sqrt(((moved0 - moved0.mean(0)) ** 2).sum(1).mean())))
    evaluations = 0

    for _ in range(rounds):
        base = tf.apply(T, sample.points_A)
        centre = base.mean(0)
        rel = base - centre

        def moved_by(x):
            R = Rotation.from_rotvec(x[:3] / lever).as_matrix()
            return rel @ R.T + centre + x[3:]

        def f_and_grad(x):
            nonlocal evaluations
            evaluations += 1
            y = moved_by(x)
            v, g = crop.values_and_gradient(y)
            cam, vc, vn = _cam(u, u_norm, v)
            if vn == 0.0:
                return 0.0, np.zeros(6)
            dv = u / (u_norm * vn) - cam * vc / (vn * vn)       # d cam / d v_i
            G = dv[:, None] * g                                  # d cam / d y_i
            grad_t = G.sum(0)
            grad_w = np.cross(y - y.mean(0), G).sum(0) / lever  # small-angle rotation about the centroid
            return -cam, -np.concatenate([grad_w, grad_t])

        res = optimize.minimize(f_and_grad, np.zeros(6), jac=True, method="L-BFGS-B",
                                options={"maxiter": iterations, "gtol": 1e-9, "ftol": 1e-12})
        x = res.x
        R = Rotation.from_rotvec(x[:3] / lever).as_matrix()
        step = tf.make(R, centre + x[3:] - R @ centre)
        if -res.fun < _cam(u, u_norm, crop.values(base))[0]:
            break                                   # no gain: keep the current pose
        T = step @ T
        if np.abs(x).max() < tol_A:
            break
    after = _cam(u, u_norm, crop.values(tf.apply(T, sample.points_A)))[0]
    if after < before:
        T, after = np.array(T_init, float), before
    return MapFit(T_target_source=T, correlation_before=float(before), correlation=float(after),
                  evaluations=evaluations)


def refine_distinct(poses, sample: MapSample, target: DensityMap, centre_A: np.ndarray, *, want: int,
                    max_shift_A: float, max_angle_deg: float) -> list[tuple[int, MapFit]]:
    """Refine `poses` (best first by the point score) one by one until `want` distinct
    results; a result that lands on an earlier one (same pose within the tolerances at
    `centre_A`) is dropped, so near-identical optima never compete on noise.  Returns
    (index into poses, fit), best correlation first (ties: earlier pose first)."""
    kept = []
    for i, T in enumerate(poses):
        fit = refine(sample, target, T)
        if not any(tf.same_pose(fit.T_target_source, other.T_target_source, centre_A,
                                max_shift_A=max_shift_A, max_angle_deg=max_angle_deg) for _, other in kept):
            kept.append((i, fit))
            if len(kept) >= want:
                break
    kept.sort(key=lambda item: (-item[1].correlation, item[0]))
    return kept
