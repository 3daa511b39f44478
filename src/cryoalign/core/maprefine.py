"""Map-level refinement: polish a pose on the densities themselves (like ChimeraX fitmap).

The point stages stop at the precision of their sampling lattice.  Here the
source map's voxels above its contour (at most `AlignConfig.map_points` of them) are moved by the pose, the target density is read there by
trilinear interpolation, and the pose is changed to maximise the correlation
about the mean (Pearson) between the source values and those target values:

    cam(T) = sum (u_i - u_mean)(v_i - v_mean) / (|u - u_mean| |v - v_mean|),
    v_i = target(T x_i)

The gradient is analytic: d cam / d v_i times the exact gradient of the
trilinear interpolant (one compiled pass gives value and gradient, reading the
target array in place), chained through a small rotation about the moved
source's centroid and a translation.  L-BFGS runs on those six numbers, with the rotation scaled
by the source's radius of gyration so one unit means about one Å of motion;
it is restarted from the new pose (where the small-angle gradient is exact)
until the pose stops moving.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

from .. import transform as tf
from ..config import AlignConfig
from ..types import DensityMap

try:
    from numba import njit
except ImportError:  # pragma: no cover - numba is a dependency; keep working without it
    njit = None  # type: ignore[assignment]

_SLAB = 32
FTOL = 1e-7  # stop when the correlation improves by less than this (relative) ...
GTOL = 1e-6  # ... or its gradient (per Å of motion) is this flat


@dataclass(frozen=True, eq=False)
class MapSample:
    """Source voxels above contour: world positions (N, 3) and values (N,), centred values."""

    points_A: np.ndarray
    values: np.ndarray

    @property
    def centred(self) -> np.ndarray:
        return self.values - self.values.mean()

    def thinned(self, max_points: int) -> MapSample:
        """Every k-th point, at most `max_points` (the sample itself when small enough)."""
        if len(self.values) <= max_points:
            return self
        k = -(-len(self.values) // max_points)
        return MapSample(points_A=self.points_A[::k], values=self.values[::k])


def sample_source(density: DensityMap, contour: float, max_points: int = AlignConfig.map_points) -> MapSample:
    """Voxels of `density` at or above `contour`; when there are more than `max_points`,
    every k-th of them in storage order (an even spread, and deterministic)."""
    data = density.data
    slabs = range(0, data.shape[0], _SLAB)
    counts = [int(np.count_nonzero(data[z : z + _SLAB] >= contour)) for z in slabs]  # no full-size mask
    step = max(1, -(-sum(counts) // max_points))
    parts, seen = [], 0
    for z, n in zip(slabs, counts):
        if n:
            idx = np.argwhere(data[z : z + _SLAB] >= contour)
            keep = idx[(seen + np.arange(n)) % step == 0]
            keep[:, 0] += z
            parts.append(keep)
            seen += n
    zyx = np.concatenate(parts) if parts else np.zeros((0, 3), np.int64)
    values = density.data[zyx[:, 0], zyx[:, 1], zyx[:, 2]].astype(float)
    return MapSample(points_A=density.index_to_world(zyx[:, ::-1]), values=values)


def _index(target: DensityMap, points_A: np.ndarray) -> np.ndarray:
    return (points_A - target.origin_A) / target.voxel_size_A


def _values(target: DensityMap, points_A: np.ndarray) -> np.ndarray:
    return _interpolate(target.data, _index(target, points_A))[:, 0]


def _values_and_gradient(target: DensityMap, points_A: np.ndarray):
    """Trilinear values and their exact gradient per Å at world points."""
    out = _interpolate(target.data, _index(target, points_A))
    return out[:, 0], out[:, 1:] / target.voxel_size_A


def _interpolate_py(data, f):
    """Trilinear interpolant of data[z, y, x] at fractional (x, y, z) indices f (N, 3) and its
    gradient in index units: (N, 4) = value, d/dx, d/dy, d/dz.  Voxels outside count as 0."""
    nz, ny, nx = data.shape
    out = np.zeros((len(f), 4))
    i0 = np.floor(f).astype(np.int64)
    t = f - i0
    for dz in (0, 1):
        for dy in (0, 1):
            for dx in (0, 1):
                x, y, z = i0[:, 0] + dx, i0[:, 1] + dy, i0[:, 2] + dz
                ok = (x >= 0) & (x < nx) & (y >= 0) & (y < ny) & (z >= 0) & (z < nz)
                wx = np.where(dx, t[:, 0], 1 - t[:, 0])
                wy = np.where(dy, t[:, 1], 1 - t[:, 1])
                wz = np.where(dz, t[:, 2], 1 - t[:, 2])
                c = np.zeros(len(f))
                c[ok] = data[z[ok], y[ok], x[ok]]
                out[:, 0] += wx * wy * wz * c
                out[:, 1] += (1.0 if dx else -1.0) * wy * wz * c
                out[:, 2] += wx * (1.0 if dy else -1.0) * wz * c
                out[:, 3] += wx * wy * (1.0 if dz else -1.0) * c
    return out


if njit is not None:

    @njit(cache=True, nogil=True)
    def _interpolate(data, f):  # pragma: no cover - compiled; same as _interpolate_py
        nz, ny, nx = data.shape
        out = np.zeros((f.shape[0], 4))
        for p in range(f.shape[0]):
            fx, fy, fz = f[p, 0], f[p, 1], f[p, 2]
            x0, y0, z0 = int(np.floor(fx)), int(np.floor(fy)), int(np.floor(fz))
            tx, ty, tz = fx - x0, fy - y0, fz - z0
            if x0 < -1 or y0 < -1 or z0 < -1 or x0 >= nx or y0 >= ny or z0 >= nz:
                continue
            for dz in range(2):
                z = z0 + dz
                if z < 0 or z >= nz:
                    continue
                wz = tz if dz else 1.0 - tz
                sz = 1.0 if dz else -1.0
                for dy in range(2):
                    y = y0 + dy
                    if y < 0 or y >= ny:
                        continue
                    wy = ty if dy else 1.0 - ty
                    sy = 1.0 if dy else -1.0
                    for dx in range(2):
                        x = x0 + dx
                        if x < 0 or x >= nx:
                            continue
                        wx = tx if dx else 1.0 - tx
                        sx = 1.0 if dx else -1.0
                        c = data[z, y, x]
                        out[p, 0] += wx * wy * wz * c
                        out[p, 1] += sx * wy * wz * c
                        out[p, 2] += wx * sy * wz * c
                        out[p, 3] += wx * wy * sz * c
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
    u = sample.centred
    return _cam(u, float(np.sqrt((u * u).sum())), _values(target, tf.apply(T, sample.points_A)))[0]


def source_blocks(sample: MapSample, per_axis: int = 3, min_points: int = 20) -> list[np.ndarray]:
    """The sample's points grouped by a per_axis^3 grid over their bounding box (in the
    source's own frame, so the blocks do not depend on the pose): index arrays of the
    blocks holding at least `min_points`."""
    p = sample.points_A
    lo, hi = p.min(0), p.max(0)
    cell = np.floor((p - lo) / np.maximum(hi - lo, 1e-9) * per_axis).clip(0, per_axis - 1).astype(np.int64)
    key = (cell[:, 0] * per_axis + cell[:, 1]) * per_axis + cell[:, 2]
    order = np.argsort(key, kind="stable")
    bounds = np.flatnonzero(np.diff(key[order])) + 1
    return [b for b in np.split(order, bounds) if len(b) >= min_points]


def _pearson(u, v) -> float:
    uc, vc = u - u.mean(), v - v.mean()
    den = float(np.sqrt((uc * uc).sum() * (vc * vc).sum()))
    return float((uc * vc).sum() / den) if den > 0 else 0.0


def correlation_terms(
    sample: MapSample, target: DensityMap, T: np.ndarray, target_contour: float, blocks: list, keep: float = 0.7
) -> dict:
    """Overlap-robust companions of the correlation about the mean at pose T:

    local: the correlation inside each source block, averaged (weighted by points) over the
        best blocks holding `keep` of the points, so a moved domain can fail locally
        without sinking the whole pose;
    shared: the correlation over the source voxels whose target density is above the
        target's contour (where both maps have density), and that share of voxels."""
    u = sample.values
    v = _values(target, tf.apply(T, sample.points_A))
    per = sorted(((_pearson(u[b], v[b]), len(b)) for b in blocks), key=lambda cb: -cb[0])
    total = sum(n for _, n in per)
    acc = num = 0.0
    for c, n in per:
        take = min(n, keep * total - acc)
        if take <= 0:
            break
        num += c * take
        acc += take
    both = v >= target_contour
    return {
        "local": num / acc if acc else 0.0,
        "shared": _pearson(u[both], v[both]) if both.sum() >= 10 else 0.0,
        "shared_fraction": float(both.mean()),
    }


@dataclass(frozen=True)
class MapFit:
    T_target_source: np.ndarray
    correlation_before: float
    correlation: float
    evaluations: int


def refine(
    sample: MapSample,
    target: DensityMap,
    T_init: np.ndarray,
    *,
    rounds: int = AlignConfig.map_rounds,
    iterations: int = AlignConfig.map_iterations,
    tol_A: float = 0.01,
) -> MapFit:
    """Maximise the correlation about the mean over rigid motions, starting from T_init."""
    from scipy import optimize

    T = np.array(T_init, float)
    u = sample.centred
    u_norm = float(np.sqrt((u * u).sum()))
    moved0 = tf.apply(T, sample.points_A)
    before = _cam(u, u_norm, _values(target, moved0))[0]
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
            v, g = _values_and_gradient(target, y)
            cam, vc, vn = _cam(u, u_norm, v)
            if vn == 0.0:
                return 0.0, np.zeros(6)
            dv = u / (u_norm * vn) - cam * vc / (vn * vn)  # d cam / d v_i
            G = dv[:, None] * g  # d cam / d y_i
            grad_t = G.sum(0)
            grad_w = np.cross(y - y.mean(0), G).sum(0) / lever  # small-angle rotation about the centroid
            return -cam, -np.concatenate([grad_w, grad_t])

        res = optimize.minimize(
            f_and_grad,
            np.zeros(6),
            jac=True,
            method="L-BFGS-B",
            options={"maxiter": iterations, "gtol": GTOL, "ftol": FTOL},
        )
        x = res.x
        R = Rotation.from_rotvec(x[:3] / lever).as_matrix()
        step = tf.make(R, centre + x[3:] - R @ centre)
        if -res.fun < _cam(u, u_norm, _values(target, base))[0]:
            break  # no gain: keep the current pose
        T = step @ T
        if np.abs(x).max() < tol_A:
            break
    after = _cam(u, u_norm, _values(target, tf.apply(T, sample.points_A)))[0]
    if after < before:
        T, after = np.array(T_init, float), before
    return MapFit(
        T_target_source=T, correlation_before=float(before), correlation=float(after), evaluations=evaluations
    )


def _refine_coarse_to_fine(sample, target, T, kept, c: AlignConfig) -> MapFit:
    """Refine on a thinned sample first; polish on the whole sample only when the result
    can compete with what is already kept (a poor placement is not worth the full cost)."""
    coarse = refine(sample.thinned(c.map_coarse_points), target, T, rounds=2, iterations=30)
    best = max((f.correlation for _, f in kept), default=-1.0)
    fine_before = correlation(sample, target, T)
    if coarse.correlation < c.map_competitive * best:
        at_coarse = correlation(sample, target, coarse.T_target_source)
        if at_coarse < fine_before:
            return MapFit(
                T_target_source=np.array(T, float),
                correlation_before=fine_before,
                correlation=fine_before,
                evaluations=coarse.evaluations,
            )
        return MapFit(
            T_target_source=coarse.T_target_source,
            correlation_before=fine_before,
            correlation=at_coarse,
            evaluations=coarse.evaluations,
        )
    fine = refine(sample, target, coarse.T_target_source, rounds=c.map_rounds, iterations=c.map_iterations)
    if fine.correlation < fine_before:
        return MapFit(
            T_target_source=np.array(T, float),
            correlation_before=fine_before,
            correlation=fine_before,
            evaluations=coarse.evaluations + fine.evaluations,
        )
    return MapFit(
        T_target_source=fine.T_target_source,
        correlation_before=fine_before,
        correlation=fine.correlation,
        evaluations=coarse.evaluations + fine.evaluations,
    )


def refine_distinct(
    poses,
    sample: MapSample,
    target: DensityMap,
    centre_A: np.ndarray,
    *,
    want: int,
    config: AlignConfig = AlignConfig(),
    refine_mask=None,
    max_refined: int | None = None,
) -> list[tuple[int, MapFit]]:
    """Refine `poses` (best first by the point score) one by one until `want` distinct
    results; a result that lands on an earlier one (same pose within the tolerances at
    `centre_A`: `config.same_pose_*`) is dropped, so near-identical optima never compete on noise.  Poses
    whose `refine_mask` entry is False (weak point scores), and all after the first
    `max_refined` refinements, are not refined, only scored where they are.  Poses that start within
    `config.map_near_factor` x the tolerances of a
    pose already refined are shoulders of the same optimum (refining them mostly lands
    on it) and are dropped without refinement.  Returns (index into poses, fit), best
    correlation first (ties: earlier pose first)."""
    s = config
    kept = []
    for i, T in enumerate(poses):
        if any(
            f.evaluations
            and tf.same_pose(
                T,
                f.T_target_source,
                centre_A,
                max_shift_A=s.map_near_factor * s.same_pose_A,
                max_angle_deg=s.map_near_factor * s.same_pose_deg,
            )
            for _, f in kept
        ):
            continue
        refined = len([f for _, f in kept if f.evaluations])
        if (refine_mask is None or refine_mask[i]) and (max_refined is None or refined < max_refined):
            fit = _refine_coarse_to_fine(sample, target, T, kept, s)
        else:
            c = correlation(sample, target, T)
            fit = MapFit(T_target_source=np.array(T, float), correlation_before=c, correlation=c, evaluations=0)
        if not any(
            tf.same_pose(
                fit.T_target_source,
                other.T_target_source,
                centre_A,
                max_shift_A=s.same_pose_A,
                max_angle_deg=s.same_pose_deg,
            )
            for _, other in kept
        ):
            kept.append((i, fit))
            if len(kept) >= want:
                break
    kept.sort(key=lambda item: (-item[1].correlation, item[0]))
    return kept
