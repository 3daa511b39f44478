"""A wider search for when the descriptor candidates are weak: placements that do not
depend on descriptors at all.

Like ChimeraX's `fitmap ... search N`: `wide_placements` rotations, spread evenly over
all orientations (a seeded random set, so the same input gives the same set), each put
at a few places (global: the source centre on the target centre; local: on the centres
of the masks that could hold the source), and each pulled to the nearest optimum of
the map correlation on a thinned sample of the source's voxels.  The best distinct
optima become hypotheses beside the descriptor ones and go through the same ranking
(rank.rank), so every candidate is judged alike; `found_by` says which search found it.
"""
from __future__ import annotations

import logging

import numpy as np

from . import maprefine
from . import transform as tf
from .config import AlignConfig
from .prepare import PreparedMap
from .rank import Hypothesis, distinct

log = logging.getLogger(__name__)


def placements(src: PreparedMap, tgt: PreparedMap, config: AlignConfig, *,
               sites_A: np.ndarray | None = None) -> list[Hypothesis]:
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
    found = []
    for s, site in enumerate(sites):
        for k in range(per_site):
            R = tf.random_rotation(rng)
            T = tf.make(R, site - R @ centre)
            fit = maprefine.refine(sample, tgt.density, T, rounds=2, iterations=30)
            found.append((fit.correlation, (s, k), fit.T_target_source))
    found.sort(key=lambda f: (-f[0], f[1]))
    best = distinct(found, src.centre_A, config, pose=lambda f: f[2])[:config.wide_keep]
    log.info("wider search: %d map-optimised placements, best correlation %.3f",
             len(found), best[0][0] if best else float("nan"))
    return [Hypothesis(T_target_source=T, found_by=f"wide search {n + 1}", key=(1000 + n,))
            for n, (_, _, T) in enumerate(best)]
