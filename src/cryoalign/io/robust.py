"""Value statistics that a few extreme voxels cannot move.

A single voxel 1e4 or 1e30 times the rest of a map (a corrupted value, a float-max
"missing" marker) makes ``data.max()`` useless for level decisions and dominates every
sum of squares.  These helpers give the range of the bulk of the voxels and find the
voxels far outside it:

    low, high = robust_range(density.data)        # level checks and estimates
    n, (low_cut, high_cut) = count_outliers(density.data)
    line = describe_outliers(density)             # None, or one log line
    clipped, n_clipped = clip_outliers(density)   # a copy with the outliers clipped

Definitions (all computed without a full-size temporary, memory-mapped maps included):

- robust range: the values at rank ``q`` from each end of the voxel values, with
  ``q = max(ceil(1e-5 x N), min(8, (N - 1) // 4))``: the 0.001 and 99.999 percentiles on
  big maps; on small maps at least the 8 most extreme voxels of each end are excluded
  (a percentile would interpolate into a single outlier there).  Maps above
  `SAMPLE_VOXELS` voxels use a strided subsample (every s-th voxel along each axis).
- outlier: a voxel above ``high + FACTOR x (high - low)`` or below
  ``low - FACTOR x (high - low)`` with FACTOR = 50: 50 robust widths outside the robust
  range.  The width of the whole range, not of one tail (``high - median``), is the
  scale: masked and simulated maps have a zero background (median = low), where a
  tail-based cut would call a -1e-5 voxel an outlier.  Real maps are far inside these
  cuts (the maps of tests/data and ../shared/data reach at most 0.2 widths beyond the
  robust range); a corrupted voxel 1e4 times the density's maximum is far outside.
  When the bulk is constant (``high == low``) nothing is an outlier.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import NamedTuple

import numpy as np

from ..types import DensityMap

SAMPLE_VOXELS = 2_000_000  # robust range of bigger maps from a strided subsample
SLAB_VOXELS = 2**22  # full passes read at most this many voxels at a time
TAIL_FRACTION = 1e-5  # 0.001 % of the voxels at each end
MIN_TAIL = 8  # ... but at least this many on small maps
FACTOR = 50.0  # outliers lie this many tail widths beyond the robust range


class Range(NamedTuple):
    low: float
    high: float


class Outliers(NamedTuple):
    """n: outlier voxels; threshold: (low, high) cuts, outliers lie strictly outside."""

    n: int
    threshold: Range


@dataclasses.dataclass(frozen=True)
class OutlierSummary:
    """Everything `read_map` and `describe_outliers` report, from one pass over the map."""

    robust: Range
    cuts: Range
    n_high: int
    n_low: int
    largest: float  # of the whole map, outliers included
    smallest: float

    @property
    def n(self) -> int:
        return self.n_high + self.n_low


def robust_range(data) -> Range:
    """(low, high): the range of a map's values without its few most extreme voxels.

    data: any-shape float array (also a read-only memory map), finite values.
    """
    return _range(data)


def count_outliers(data) -> Outliers:
    """Voxels far outside the robust range (definition in the module docstring)."""
    s = summarize(data)
    return Outliers(s.n, s.cuts)


def describe_outliers(density: DensityMap) -> str | None:
    """One log line about the map's outlier voxels, or None when it has none."""
    return format_outliers(summarize(density.data), density.path)


def clip_outliers(density: DensityMap) -> tuple[DensityMap, int]:
    """(map, n_clipped): outliers above the high cut set to the robust high, those below
    the low cut to the robust low; every other voxel unchanged.

    The input is never modified: the result is a copy, or the input itself when it has
    no outliers (so a big memory-mapped map is not copied for nothing).
    """
    s = summarize(density.data)
    if s.n == 0:
        return density, 0
    data = np.array(density.data, dtype=np.float32, copy=True)
    with np.errstate(all="ignore"):
        for z0, z1 in _slabs(data.shape):
            slab = data[z0:z1]
            high, low = _beyond(slab, s.cuts)
            slab[high] = np.float32(s.robust.high)
            slab[low] = np.float32(s.robust.low)
    return dataclasses.replace(density, data=data), s.n


def without_outliers(density: DensityMap) -> DensityMap:
    """`clip_outliers`, logged: what every alignment starts from (one extreme voxel would
    otherwise dominate the smoothed density vectors and the map correlation)."""
    clipped, n = clip_outliers(density)
    if n:
        logging.getLogger("cryoalign").warning(
            "%s: %d outlier voxel(s) set to the map's robust range for the alignment", density.path or "map", n
        )
    return clipped


# ----------------------------------------------------------------------------- internals
def summarize(data, robust: Range | None = None) -> OutlierSummary:
    """Robust range (computed unless given), outlier cuts and counts, and the true
    extremes (one full pass, slab by slab)."""
    with np.errstate(all="ignore"):
        if robust is None:
            robust = _range(data)
        cuts = _cuts(robust)
        n_high = n_low = 0
        largest, smallest = -math.inf, math.inf
        for z0, z1 in _slabs(np.shape(data)):
            slab = np.asarray(data[z0:z1])
            if slab.size == 0:
                continue
            largest = max(largest, float(slab.max()))
            smallest = min(smallest, float(slab.min()))
            if largest > cuts.high or smallest < cuts.low:
                high, low = _beyond(slab, cuts)
                n_high += int(np.count_nonzero(high))
                n_low += int(np.count_nonzero(low))
    return OutlierSummary(robust, cuts, n_high, n_low, largest, smallest)


def format_outliers(s: OutlierSummary, path=None) -> str | None:
    if s.n == 0:
        return None
    parts = []
    if s.n_high:
        parts.append(
            f"{s.n_high} outlier voxel(s) above {s.cuts.high:.3g} (largest {s.largest:.3g}; "
            f"robust maximum {s.robust.high:.3g})"
        )
    if s.n_low:
        parts.append(
            f"{s.n_low} outlier voxel(s) below {s.cuts.low:.3g} (smallest {s.smallest:.3g}; "
            f"robust minimum {s.robust.low:.3g})"
        )
    name = f"map {path}" if path else "the map"
    return f"{name} has {' and '.join(parts)}; they are ignored by the level estimates"


def _range(data) -> Range:
    sample = _sample(data)
    m = sample.size
    if m == 0:
        return Range(0.0, 0.0)
    q = max(math.ceil(TAIL_FRACTION * m), min(MIN_TAIL, (m - 1) // 4))
    q = min(q, (m - 1) // 2)
    part = np.partition(sample, sorted({q, m - 1 - q}))
    return Range(float(part[q]), float(part[m - 1 - q]))


def _sample(data) -> np.ndarray:
    """The voxel values as a flat float32 array, every s-th voxel along each axis for big
    maps (a strided view: memory bounded by the sample, pages of memory maps read lazily)."""
    arr = data if isinstance(data, np.ndarray) else np.asarray(data)
    if arr.size > SAMPLE_VOXELS and arr.ndim >= 1:
        step = math.ceil((arr.size / SAMPLE_VOXELS) ** (1.0 / arr.ndim))
        arr = arr[(slice(None, None, step),) * arr.ndim]
    return np.array(arr, dtype=np.float32, copy=True).reshape(-1)


_F32_MAX = float(np.finfo(np.float32).max)


def _beyond(slab: np.ndarray, cuts: Range) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks of the voxels above cuts.high and below cuts.low, compared in the
    slab's own float32 (no float64 copy); a cut beyond the float32 range excludes all."""
    none = np.zeros(slab.shape, bool)
    high = slab > np.float32(cuts.high) if cuts.high < _F32_MAX else none
    low = slab < np.float32(cuts.low) if cuts.low > -_F32_MAX else none
    return high, low


def _cuts(robust: Range) -> Range:
    width = robust.high - robust.low
    if not width > 0:
        return Range(-math.inf, math.inf)  # constant bulk: no scale to judge by
    return Range(robust.low - FACTOR * width, robust.high + FACTOR * width)


def _slabs(shape):
    """(start, stop) along the first axis, each slab at most SLAB_VOXELS voxels (>= 1 section)."""
    if len(shape) == 0:
        yield 0, 1
        return
    per_section = max(1, int(np.prod(shape[1:], dtype=np.int64)))
    step = max(1, SLAB_VOXELS // per_section)
    for z in range(0, shape[0], step):
        yield z, min(z + step, shape[0])
