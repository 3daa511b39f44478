"""Map -> grid-sampled points above the contour, each with a density vector.

The density vector of the paper is one mean-shift step with a Gaussian kernel
k(p) = exp(-1.5 |p / sigma|^2) over the voxels above the contour.  For a
Gaussian kernel that step equals s^2 * grad(G) / G, where G is the thresholded
density convolved with a Gaussian of standard deviation s = sigma / sqrt(3).
So instead of a sum over a +-32 Å window for every point we smooth the map
once (on a grid coarsened to at most 0.7 s, which the smoothing makes lossless
in practice) and interpolate G and its gradient at the points.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..errors import InputError
from ..types import DensityMap, PointCloud

KERNEL_TO_STD = 1.0 / math.sqrt(3.0)  # exp(-1.5 (p/sigma)^2) == exp(-p^2 / (2 (sigma/sqrt3)^2))
MIN_POINTS = 20


@dataclass(frozen=True, eq=False)
class SmoothField:
    """G = Gaussian-smoothed thresholded density on a regular grid, with its gradient.

    values, grad: [z, y, x] and (3, z, y, x) arrays; spacing_A, origin_A: (3,) x, y, z.
    """

    values: np.ndarray
    grad: np.ndarray
    spacing_A: np.ndarray
    origin_A: np.ndarray
    std_A: float

    def _coords(self, points_A):
        f = (np.asarray(points_A, float) - self.origin_A) / self.spacing_A
        return [f[:, 2], f[:, 1], f[:, 0]]

    def sample(self, points_A: np.ndarray) -> np.ndarray:
        """G at (N, 3) world points (trilinear, 0 outside)."""
        return ndimage.map_coordinates(self.values, self._coords(points_A), order=1, cval=0.0)

    def shift(self, points_A: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean-shift vector m(y) - y = s^2 grad G / G at (N, 3) points, and G there."""
        c = self._coords(points_A)
        g = ndimage.map_coordinates(self.values, c, order=1, cval=0.0)
        d = np.stack([ndimage.map_coordinates(self.grad[i], c, order=1, cval=0.0) for i in range(3)], 1)
        safe = np.where(g > 1e-12, g, np.inf)
        return d * (self.std_A**2 / safe)[:, None], g


MAX_LATTICE_POINTS = 5e7  # candidate lattice points over the density's bounding box (~1.2 GB)
SLAB = 32  # z-sections per pass over a whole map (bounded temporaries for big maps)


@dataclass(frozen=True, eq=False)
class ContourRegion:
    """What one pass over a map finds at a contour level: the box of voxels at or above
    it, their count, and the map's range.  `crop()` is the map cut to that box plus one
    voxel of margin (everything the point stages read), so the whole map is swept once.

    lo, hi: [z, y, x] index bounds of the voxels above contour (hi exclusive)."""

    density: DensityMap
    contour: float
    lo: np.ndarray
    hi: np.ndarray
    count: int
    minimum: float
    maximum: float

    @property
    def volume_A3(self) -> float:
        return self.count * float(np.prod(self.density.voxel_size_A))

    def crop(self) -> DensityMap:
        d = self.density
        lo = np.maximum(self.lo - 1, 0)
        hi = np.minimum(self.hi + 1, d.data.shape)
        data = np.asarray(d.data[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]], dtype=np.float32)
        return DensityMap(data=data, voxel_size_A=d.voxel_size_A, origin_A=d.index_to_world(lo[::-1]), path=d.path)


def scan(density: DensityMap, contour: float, param: str = "contour", *, require: bool = True) -> ContourRegion:
    """One slab-by-slab pass: the box and count of the voxels at or above `contour` and the
    map's minimum and maximum.  Raises the clear error (naming `param`) when no voxel
    reaches the contour."""
    lo = np.array([np.iinfo(np.int64).max] * 3)
    hi = np.array([-1] * 3)
    count, minimum, maximum = 0, np.inf, -np.inf
    data = density.data
    for z0 in range(0, data.shape[0], SLAB):
        slab = data[z0 : z0 + SLAB]
        minimum = min(minimum, float(slab.min()))
        maximum = max(maximum, float(slab.max()))
        above = slab >= contour
        n = int(np.count_nonzero(above))
        if not n:
            continue
        count += n
        for axis in range(3):
            other = tuple(a for a in range(3) if a != axis)
            hit = np.flatnonzero(above.any(axis=other))
            offset = z0 if axis == 0 else 0
            lo[axis] = min(lo[axis], hit[0] + offset)
            hi[axis] = max(hi[axis], hit[-1] + offset + 1)
    if count == 0 and require:
        raise InputError(
            f"no voxel of {density.path or 'the map'} reaches the contour level {contour:g} "
            f"(map maximum {maximum:g}); pass a lower {param}, for example the EMDB recommended level"
        )
    return ContourRegion(
        density=density, contour=float(contour), lo=lo, hi=hi, count=count, minimum=minimum, maximum=maximum
    )


def above_box(density: DensityMap, contour: float) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) [z, y, x] index bounds (hi exclusive) of the voxels at or above `contour`."""
    region = scan(density, contour)
    return region.lo, region.hi


def thresholded(density: DensityMap, contour: float) -> tuple[np.ndarray, np.ndarray]:
    """Density above `contour` (zero below), cropped to the voxels above it.

    Returns (data [z, y, x] float32, origin_A of the crop).
    """
    lo, hi = above_box(density, contour)
    crop = np.asarray(density.data[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]], dtype=np.float32)
    data = np.where(crop >= contour, crop, np.float32(0.0)).astype(np.float32)
    origin = density.origin_A + lo[::-1] * density.voxel_size_A
    return data, origin


def smooth_field(density: DensityMap, contour: float, std_A: float, margin_std: float = 3.0) -> SmoothField:
    """Gaussian-smoothed thresholded density on a grid of spacing at most 0.7 std_A."""
    data, origin = thresholded(density, contour)
    vox = density.voxel_size_A
    block = np.maximum(1, np.floor(0.7 * std_A / vox).astype(int))  # x, y, z
    if np.any(block > 1):
        data, origin = _block_mean(data, origin, vox, block)
    spacing = vox * block
    pad = np.ceil(margin_std * std_A / spacing).astype(int)  # x, y, z
    data = np.pad(data, [(pad[2], pad[2]), (pad[1], pad[1]), (pad[0], pad[0])])
    origin = origin - pad * spacing
    sig = std_A / spacing
    values = ndimage.gaussian_filter(data, sigma=sig[::-1], mode="constant", truncate=3.5)
    grad = np.stack(np.gradient(values, *spacing[::-1]))[::-1]  # d/dx, d/dy, d/dz
    return SmoothField(
        values=values, grad=np.ascontiguousarray(grad), spacing_A=spacing, origin_A=origin, std_A=float(std_A)
    )


def _block_mean(data, origin, vox, block):
    bz, by, bx = block[2], block[1], block[0]
    nz, ny, nx = data.shape
    pz, py, px = (-nz) % bz, (-ny) % by, (-nx) % bx
    data = np.pad(data, [(0, pz), (0, py), (0, px)])
    nz, ny, nx = data.shape
    out = data.reshape(nz // bz, bz, ny // by, by, nx // bx, bx).mean(axis=(1, 3, 5), dtype=np.float64)
    return out.astype(np.float32), origin + (block - 1) / 2.0 * vox


def grid_points(density: DensityMap, contour: float, spacing_A: float) -> np.ndarray:
    """World points of a lattice anchored at the map origin, spacing `spacing_A`,
    whose trilinearly interpolated density is >= contour. (N, 3) float64."""
    lo, hi = above_box(density, contour)
    lo_w = density.index_to_world(lo[::-1] - 1)
    hi_w = density.index_to_world(hi[::-1])
    first = np.ceil((lo_w - density.origin_A) / spacing_A - 1e-9)
    last = np.floor((hi_w - density.origin_A) / spacing_A + 1e-9)
    count = float(np.prod(np.maximum(last - first + 1, 0)))
    if count > MAX_LATTICE_POINTS:
        span = " x ".join(f"{v:.0f}" for v in hi_w - lo_w)
        raise InputError(
            f"the density of {density.path or 'the map'} above contour {contour:g} spans {span} Å: "
            f"{count:.3g} lattice points at a {spacing_A:g} Å sampling interval (limit "
            f"{MAX_LATTICE_POINTS:.0e}); check the voxel size in the header, the contour, or "
            "use a larger sampling_A"
        )
    axes = [density.origin_A[i] + spacing_A * np.arange(first[i], last[i] + 1) for i in range(3)]
    gz, gy, gx = np.meshgrid(axes[2], axes[1], axes[0], indexing="ij")
    pts = np.stack([gx.ravel(), gy.ravel(), gz.ravel()], 1)
    f = density.world_to_index(pts)
    val = ndimage.map_coordinates(density.data, [f[:, 2], f[:, 1], f[:, 0]], order=1, cval=-np.inf)
    return pts[val >= contour]


def sample_points(
    density: DensityMap, contour: float, spacing_A: float, vector_sigma_A: float, field: SmoothField | None = None
) -> PointCloud:
    """Stage 1: points on a `spacing_A` lattice above `contour` with unit density vectors."""
    pts = grid_points(density, contour, spacing_A)
    if len(pts) < MIN_POINTS:
        raise InputError(
            f"only {len(pts)} points of {density.path or 'the map'} lie above contour {contour:g} at a "
            f"{spacing_A:g} Å sampling interval (at least {MIN_POINTS} are needed); lower the contour "
            f"or use a smaller sampling_A"
        )
    if field is None:
        field = smooth_field(density, contour, vector_sigma_A * KERNEL_TO_STD)
    shift, g = field.shift(pts)
    norm = np.linalg.norm(shift, axis=1)
    vectors = np.where(norm[:, None] > 1e-9, shift / np.maximum(norm, 1e-12)[:, None], 0.0)
    return PointCloud(points_A=pts, vectors=vectors, density=g, spacing_A=float(spacing_A))


# Contour estimation (measured: README "Estimated contours"); see estimate_contour.
CONTOUR_NOISE_K = 3.0  # noisy maps: background + this x robust sigma ...
PLATEAU_FRACTION = 0.6  # ... and at least this x the median density above the level (self-consistent)
PLATEAU_SMOOTH_A = 1.5  # the plateau rule reads the map low-passed by a Gaussian of this sigma (Å)
CONSTANT_SHARE = 0.05  # a value held exactly by this share of voxels is a masked/empty background
TIGHT_MASK_RATIO = 1.45  # support (voxels above background) under this x the plateau volume: a segment
IMPLAUSIBLE_BOX_SHARE = 0.5  # warn when the contour encloses more than this share of the box ...
IMPLAUSIBLE_PLATEAU_RATIO = (0.5, 1.5)  # ... or a volume outside this range x the plateau volume


def _sample(values: np.ndarray, n: int = 4_000_000) -> np.ndarray:
    values = values.ravel()
    return values[:: values.size // n + 1] if values.size > n else values


def constant_background(sample: np.ndarray) -> float | None:
    """The value (0 or the median) that at least CONSTANT_SHARE of the voxels hold exactly
    (a masked or noise-free map's empty background), else None."""
    best, share = None, 0.0
    for value in (0.0, float(np.median(sample))):
        s = float(np.count_nonzero(sample == value)) / sample.size
        if s > share:
            best, share = value, s
    return best if share >= CONSTANT_SHARE else None


def plateau_level(density: DensityMap, background: float, above: float | None = None) -> float | None:
    """The level enclosing the volume where the low-passed map exceeds PLATEAU_FRACTION x the
    median of its values above that level (a blurred uniform-density object is cut at about
    half its interior density, where its true boundary is).  The map is low-passed by a
    Gaussian of PLATEAU_SMOOTH_A, which makes the rule nearly independent of resolution (4-15 Å);
    the level returned is the one of the ORIGINAL map enclosing the same voxel count.
    Computed on the box of the voxels above `above` (default `background`); None when empty."""
    data = density.data
    sigma = PLATEAU_SMOOTH_A / np.asarray(density.voxel_size_A, float)[::-1]
    mask = data > (background if above is None else above)
    idx = [np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != ax))) for ax in range(3)]
    del mask
    if any(i.size == 0 for i in idx):
        return None
    pad = np.ceil(3 * sigma).astype(int) + 1
    lo = np.maximum([i[0] for i in idx] - pad, 0)
    hi = np.minimum([i[-1] + 1 for i in idx] + pad, data.shape)
    crop = np.asarray(data[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]], np.float32) - np.float32(background)
    smooth = ndimage.gaussian_filter(crop, sigma, mode="constant")
    v = _sample(smooth)
    v = v[v > 0]
    if v.size == 0:
        return None
    top = float(v.max())
    level = 0.05 * top
    for _ in range(100):
        sel = v[v > level]
        if sel.size == 0:
            break
        nxt = PLATEAU_FRACTION * float(np.median(sel))
        done = abs(nxt - level) <= 1e-6 * top
        level = nxt
        if done:
            break
    n = int(np.count_nonzero(smooth > level))
    if not 0 < n < crop.size:
        return None
    k = crop.size - n
    part = np.partition(crop.ravel(), [k - 1, k])
    return float(0.5 * (part[k - 1] + part[k])) + float(background)


def estimate_contour(density: DensityMap) -> float:
    """A contour level for a map whose recommended level the user did not give.

    Three kinds of map (measured on simulated maps of every public model at 4-15 Å and
    on the shared real maps; README "Contours"):

    - noisy (no exactly constant background, or one with values on both sides of it):
      the larger of background + 3 robust sigma (median and MAD of all voxels) and the
      plateau rule (`plateau_level`): a 3-sigma level alone lies far outside the molecule
      when the noise is low;
    - masked at a contour (a constant background, nothing below it, and a jump from it to
      the lowest density): the 1st percentile of the density above the background;
    - noise-free or masked to zero outside (simulated, segmented): the plateau rule, or the
      1st percentile above the background when the non-background voxels are hardly more
      than the plateau volume (a tight segment: everything in it is molecule).
    """
    data = density.data
    d = _sample(data)
    top = float(data.max())
    med = float(np.median(d))
    mad = float(np.median(np.abs(d - med))) * 1.4826
    bg = constant_background(d)
    rest = d if bg is None else d[d != bg]
    noisy = bg is None or (rest.size > 0 and np.count_nonzero(rest < bg) >= 0.05 * rest.size)
    if noisy and mad > 0 and med + CONTOUR_NOISE_K * mad < top:
        level = med + CONTOUR_NOISE_K * mad
        plateau = plateau_level(density, med, above=level)
        return max(level, plateau) if plateau is not None and plateau < top else level
    above = d[d > med]
    if above.size == 0:
        raise InputError(f"{density.path or 'the map'} is constant ({med:g}); nothing to align")
    lowest = float(np.percentile(above, 1.0))
    base = med if bg is None else bg
    if rest.size == 0 or float(np.percentile(rest, 0.1)) - base > 0.05 * (float(np.median(rest)) - base):
        return lowest
    plateau = plateau_level(density, base)
    if plateau is None or not base < plateau < top:
        return lowest
    support = np.count_nonzero(data > base)
    if support < TIGHT_MASK_RATIO * np.count_nonzero(data > plateau):
        return lowest
    return plateau


def contour_warning(density: DensityMap, level: float, param: str = "contour") -> str | None:
    """A warning when the volume above `level` is implausible for a molecule in this map:
    more than half the box, or outside IMPLAUSIBLE_PLATEAU_RATIO of the plateau volume (the
    volume above `plateau_level`: about the molecular volume on simulated maps).  None when
    plausible."""
    data = density.data
    n = int(np.count_nonzero(data > level))
    voxel = float(np.prod(density.voxel_size_A))
    what = (
        f"{param} {level:.4g} encloses {n * voxel:,.0f} Å^3 (about {n * voxel / 1.21 / 1000:,.0f} kDa "
        "of protein at 1.21 Å^3/Da)"
    )
    if n > IMPLAUSIBLE_BOX_SHARE * data.size:
        return (
            f"{what}, {100.0 * n / data.size:.0f}% of the box: background counted as molecule; "
            f"pass {param} (e.g. the EMDB recommended level)"
        )
    d = _sample(data)
    bg = constant_background(d)
    plateau = plateau_level(density, float(np.median(d)) if bg is None else bg)
    if plateau is None:
        return None
    m = int(np.count_nonzero(data > plateau))
    lo, hi = IMPLAUSIBLE_PLATEAU_RATIO
    if m and not lo <= n / m <= hi:
        return (
            f"{what}, {n / m:.2f} x the molecule's volume by the plateau rule ({m * voxel:,.0f} Å^3 above "
            f"{plateau:.4g}); pass {param} (e.g. the EMDB recommended level)"
        )
    return None
