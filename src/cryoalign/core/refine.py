"""Fine pose: robust point-to-point ICP on the sampled points (Welsch weights).

Each iteration pairs every moved source point with its nearest target point,
weights the pair by the Welsch function exp(-d^2 / (2 nu^2)), and solves the
weighted rigid fit in closed form.  The scale nu starts at the sampling
interval and shrinks to a quarter of it (graduated, as in robust ICP
practice), so poses a few Å off are pulled in before outliers are cut hard.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from .. import transform as tf
from ..types import Pose

QUERY_WORKERS = 1  # nearest-neighbour query threads (more only help on an idle machine)


def robust_icp(
    source_A: np.ndarray,
    target_tree: cKDTree,
    T_init: np.ndarray,
    *,
    scale_A: float,
    iterations: int = 60,
    tol_A: float = 1e-3,
    source_weights=None,
) -> Pose:
    """Refine T_init so that `source_A` (N, 3) lies on the target points in `target_tree`."""
    T = np.array(T_init, float)
    nu = scale_A
    nu_min = 0.25 * scale_A
    w0 = np.ones(len(source_A)) if source_weights is None else source_weights
    converged = False
    for _ in range(iterations):
        moved = tf.apply(T, source_A)
        d, j = target_tree.query(moved, distance_upper_bound=3.0 * nu, workers=QUERY_WORKERS)
        found = np.isfinite(d)
        if found.sum() < 3:
            break
        w = w0[found] * np.exp(-0.5 * (d[found] / nu) ** 2)
        step = tf.kabsch(moved[found], target_tree.data[j[found]], w)
        T = step @ T
        shift = np.abs(tf.apply(step, moved[found]) - moved[found]).max()
        if shift < tol_A:
            if nu <= nu_min + 1e-9:
                converged = True
                break
            nu = max(nu_min, nu * 0.5)
        elif shift < 0.1 * nu:
            nu = max(nu_min, nu * 0.8)
    moved = tf.apply(T, source_A)
    d, _ = target_tree.query(moved, distance_upper_bound=nu)
    inl = np.isfinite(d)
    rmse = float(np.sqrt((d[inl] ** 2).mean())) if inl.any() else float("nan")
    return Pose(T_target_source=T, inliers=int(inl.sum()), rmse_A=rmse, converged=converged)
