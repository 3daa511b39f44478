"""Symmetry is not doubt: candidates that place the source on an equivalent copy.

When the target (or the source) maps onto itself under a rotation, or the target holds
several copies of the source, distinct poses score alike because the maps are alike there,
not because the evidence is weak. For each candidate i the copy correlation is

    copy_correlation_i = Pearson( target(T_1 x_k), target(T_i x_k) )

over the source's voxels above contour x_k (`symmetry_points` of them): how alike the target
density is under the best pose T_1 and under T_i at every source voxel. It is high exactly
when the two placements land on the same density: a symmetry of the target, a symmetry of the
source (T_i = T_1 S with S mapping the source onto itself reads the target at the same set
of points), or identical copies in a larger map. A pose is a symmetry mate of the best when

    copy_correlation >= symmetry_mate_cc  and  the source moves by >= symmetry_min_shift_A
                                            (RMS over its voxels between the two poses)

(the second condition keeps a near neighbour of the best pose in a smooth map from passing:
two distinct poses of a blurred map can correlate highly over a short shift). A mate with
copy_correlation >= symmetry_exact_cc is an exact copy: nothing can tell the two apart, so
no tie break is needed; below it the copies can differ (pseudo-symmetry), so the tie break
compares them on every source voxel.

Both thresholds were chosen on the tuning part of the unseen corpus and the public and
hard sets (README, "Molecules it was never tuned on"; benchmarks/unseen/symmetry_table.py).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from .. import transform as tf
from . import maprefine


def annotate(src, tgt, candidates: list, config) -> list:
    """`candidates` with `copy_correlation` set relative to the first (1.0 for it); unchanged
    when the target's map is not at hand."""
    if not candidates or tgt.density is None:
        return candidates
    sample = src.sample.thinned(config.symmetry_points)
    pts = sample.points_A
    moved_best = tf.apply(candidates[0].T_target_source, pts)
    at_best = maprefine._values(tgt.density, moved_best)
    out = [replace(candidates[0], copy_correlation=1.0, copy_shift_A=0.0)]
    for c in candidates[1:]:
        moved = tf.apply(c.T_target_source, pts)
        cc = maprefine._pearson(at_best, maprefine._values(tgt.density, moved))
        shift = float(np.sqrt(((moved - moved_best) ** 2).sum(1).mean()))
        out.append(replace(c, copy_correlation=round(float(cc), 4), copy_shift_A=round(shift, 2)))
    return out


def is_mate(candidate, config) -> bool:
    """A symmetry mate of the best candidate (see the module docstring)."""
    cc = getattr(candidate, "copy_correlation", None)  # None: not compared with the best
    return (
        cc is not None
        and cc >= config.symmetry_mate_cc
        and (getattr(candidate, "copy_shift_A", None) or 0.0) >= config.symmetry_min_shift_A
    )


def is_exact(candidate, config) -> bool:
    return is_mate(candidate, config) and candidate.copy_correlation >= config.symmetry_exact_cc


def mate_ranks(candidates: list, config) -> tuple:
    """1-based ranks of the candidates that are symmetry mates of the first."""
    return tuple(k for k, c in enumerate(candidates[1:], 2) if is_mate(c, config))
