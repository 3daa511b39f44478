"""A wider search for when the descriptor candidates are weak: placements that do not
depend on descriptors at all.

Like ChimeraX's `fitmap ... search N`: `wide_placements` rotations, spread evenly over
all orientations (a seeded random set, so the same input gives the same set), each put
at a few places (global: the source centre on the target centre; local: on sites spread
over the target), and each pulled to the nearest optimum of the map correlation on a
thinned sample of the source's voxels, against the target blurred by `wide_smoothing_A`
(which widens each optimum's basin; the ranking then refines on the map itself).  The best distinct
optima become hypotheses beside the descriptor ones and go through the same ranking
(rank.rank), so every candidate is judged alike; `found_by` says which search found it.
"""

from __future__ import annotations

import logging

import numpy as np

from .. import transform as tf
from ..config import AlignConfig
from . import maprefine
from .prepare import PreparedMap
from .rank import Hypothesis, distinct

log = logging.getLogger(__name__)


def placements(
    src: PreparedMap, tgt: PreparedMap, config: AlignConfig, *, sites_A: np.ndarray | None = None
) -> list[Hypothesis]:
    """The best distinct map-optimised placements (at most `wide_keep`), best first.

    sites_A: (K, 3) target positions to put the source's centre on (default: the
    target's centre)."""
    if tgt.density is None:
        return []
    rng = np.random.default_rng([config.seed, 7])
    sample = src.sample.thinned(config.wide_sample_points)
    centre = sample.points_A.mean(0)
    sites = np.atleast_2d(tgt.centre_A if sites_A is None else sites_A)
    per_site = max(1, config.wide_placements // len(sites))
    smooth = _low_pass(tgt.density, config.wide_smoothing_A)  # a wider basin around each optimum
    found = []
    for s, site in enumerate(sites):
        for k in range(per_site):
            R = tf.random_rotation(rng)
            T = tf.make(R, site - R @ centre)
            fit = maprefine.refine(sample, smooth, T, rounds=2, iterations=30)
            found.append((fit.correlation, (s, k), fit.T_target_source))
    found.sort(key=lambda f: (-f[0], f[1]))
    best = distinct(found, src.centre_A, config, pose=lambda f: f[2], limit=config.wide_keep)
    log.info(
        "wider search: %d map-optimised placements, best correlation %.3f",
        len(found),
        best[0][0] if best else float("nan"),
    )
    return [
        Hypothesis(T_target_source=T, found_by=f"wide search {n + 1}", key=(1000 + n,))
        for n, (_, _, T) in enumerate(best)
    ]


def _low_pass(density, sigma_A: float):
    """The map blurred by a Gaussian of sigma_A (on the box around its density)."""
    from scipy import ndimage

    from ..types import DensityMap

    sigma = sigma_A / density.voxel_size_A[::-1]
    data = ndimage.gaussian_filter(np.asarray(density.data, dtype=np.float32), sigma=sigma, mode="constant")
    return DensityMap(data=data, voxel_size_A=density.voxel_size_A, origin_A=density.origin_A, path=density.path)
