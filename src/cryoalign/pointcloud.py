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

from .errors import InputError
from .types import DensityMap, PointCloud

KERNEL_TO_STD = 1.0 / math.sqrt(3.0)   # exp(-1.5 (p/sigma)^2) == exp(-p^2 / (2 (sigma/sqrt3)^2))
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
        return d * (self.std_A ** 2 / safe)[:, None], g


MAX_LATTICE_POINTS = 5e7   # candidate lattice points over the density's bounding box (~1.2 GB)
SLAB = 32   # z-sections per pass over a whole map (bounded temporaries for big maps)


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
        data = np.asarray(d.data[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]], dtype=np.float32)
        return DensityMap(data=data, voxel_size_A=d.voxel_size_A, origin_A=d.index_to_world(lo[::-1]),
                          path=d.path)


def scan(density: DensityMap, contour: float, param: str = "contour", *, require: bool = True) -> ContourRegion:
    """One slab-by-slab pass: the box and count of the voxels at or above `contour` and the
    map's minimum and maximum.  Raises the clear error (naming `param`) when no voxel
    reaches the contour."""
    lo = np.array([np.iinfo(np.int64).max] * 3)
    hi = np.array([-1] * 3)
    count, minimum, maximum = 0, np.inf, -np.inf
    data = density.data
    for z0 in range(0, data.shape[0], SLAB):
        slab = data[z0:z0 + SLAB]
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
            f"(map maximum {maximum:g}); pass a lower {param}, for example the EMDB recommended level")
    return ContourRegion(density=density, contour=float(contour), lo=lo, hi=hi, count=count,
                         minimum=minimum, maximum=maximum)


def above_box(density: DensityMap, contour: float) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) [z, y, x] index bounds (hi exclusive) of the voxels at or above `contour`."""
    region = scan(density, contour)
    return region.lo, region.hi


def thresholded(density: DensityMap, contour: float) -> tuple[np.ndarray, np.ndarray]:
    """Density above `contour` (zero below), cropped to the voxels above it.

    Returns (data [z, y, x] float32, origin_A of the crop).
    """
    lo, hi = above_box(density, contour)
    crop = np.asarray(density.data[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]], dtype=np.float32)
    data = np.where(crop >= contour, crop, np.float32(0.0)).astype(np.float32)
    origin = density.origin_A + lo[::-1] * density.voxel_size_A
    return data, origin


def smooth_field(density: DensityMap, contour: float, std_A: float, margin_std: float = 3.0) -> SmoothField:
    """Gaussian-smoothed thresholded density on a grid of spacing at most 0.7 std_A."""
    data, origin = thresholded(density, contour)
    vox = density.voxel_size_A
    block = np.maximum(1, np.floor(0.7 * std_A / vox).astype(int))       # x, y, z
    if np.any(block > 1):
        data, origin = _block_mean(data, origin, vox, block)
    spacing = vox * block
    pad = np.ceil(margin_std * std_A / spacing).astype(int)              # x, y, z
    data = np.pad(data, [(pad[2], pad[2]), (pad[1], pad[1]), (pad[0], pad[0])])
    origin = origin - pad * spacing
    sig = std_A / spacing
    values = ndimage.gaussian_filter(data, sigma=sig[::-1], mode="constant", truncate=3.5)
    grad = np.stack(np.gradient(values, *spacing[::-1]))[::-1]             # d/dx, d/dy, d/dz
    return SmoothField(values=values, grad=np.ascontiguousarray(grad), spacing_A=spacing,
                       origin_A=origin, std_A=float(std_A))


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
        raise InputError(f"the density of {density.path or 'the map'} above contour {contour:g} spans {span} Å: "
                         f"{count:.3g} lattice points at a {spacing_A:g} Å sampling interval (limit "
                         f"{MAX_LATTICE_POINTS:.0e}); check the voxel size in the header, the contour, or "
                         "use a larger sampling_A")
    axes = [density.origin_A[i] + spacing_A * np.arange(first[i], last[i] + 1) for i in range(3)]
    gz, gy, gx = np.meshgrid(axes[2], axes[1], axes[0], indexing="ij")
    pts = np.stack([gx.ravel(), gy.ravel(), gz.ravel()], 1)
    f = density.world_to_index(pts)
    val = ndimage.map_coordinates(density.data, [f[:, 2], f[:, 1], f[:, 0]], order=1, cval=-np.inf)
    return pts[val >= contour]


def sample_points(density: DensityMap, contour: float, spacing_A: float, vector_sigma_A: float,
                  field: SmoothField | None = None) -> PointCloud:
    """Stage 1: points on a `spacing_A` lattice above `contour` with unit density vectors."""
    pts = grid_points(density, contour, spacing_A)
    if len(pts) < MIN_POINTS:
        raise InputError(
            f"only {len(pts)} points of {density.path or 'the map'} lie above contour {contour:g} at a "
            f"{spacing_A:g} Å sampling interval (at least {MIN_POINTS} are needed); lower the contour "
            f"or use a smaller sampling_A")
    if field is None:
        field = smooth_field(density, contour, vector_sigma_A * KERNEL_TO_STD)
    shift, g = field.shift(pts)
    norm = np.linalg.norm(shift, axis=1)
    vectors = np.where(norm[:, None] > 1e-9, shift / np.maximum(norm, 1e-12)[:, None], 0.0)
    return PointCloud(points_A=pts, vectors=vectors, density=g, spacing_A=float(spacing_A))


def estimate_contour(density: DensityMap) -> float:
    """A contour level for a map whose recommended level the user did not give.

    Background noise is estimated robustly (median and MAD of all voxels); the level
    is 3 noise standard deviations above the background.  Masked maps (background
    exactly constant) get the lowest level just above the background.
    """
    d = density.data.ravel()
    if d.size > 4_000_000:
        d = d[:: d.size // 4_000_000 + 1]
    med = float(np.median(d))
    mad = float(np.median(np.abs(d - med))) * 1.4826
    top = float(density.data.max())
    if mad > 0:
        level = med + 3.0 * mad
        if level < top:
            return level
    above = d[d > med]
    if above.size == 0:
        raise InputError(f"{density.path or 'the map'} is constant ({med:g}); nothing to align")
    return float(np.percentile(above, 1.0))
