"""An exhaustive 6D search for when the descriptors have no right candidate at all.

Descriptor matching proposes few poses and is nearly always right on large parts; when
none of its poses is right nothing behind it recovers.  This module scans every
orientation instead, as PowerFit, pyTME and VESPER do, but only where the answer is weak
(`exhaustive`: "auto" runs it on a local alignment or chain fit whose confidence is
`low`; "always"; "never"), and hands what it finds to the same ranking (rank.rank) and
confidence (confidence.assess) as every other candidate.

    grid       a uniform rotation set: the Hopf-fibration parametrisation of SO(3)
               (Yershova et al. 2010) R = Rz(phi) Ry(theta) Rz(psi), the directions
               (theta, phi) a Fibonacci point set on the sphere and psi uniform in
               [0, 2 pi), both at spacing 1.22 x step, so that `step` is the covering
               radius (no rotation farther than it from the nearest grid rotation), as for
               PowerFit's --angle and Karney's sets: 10° gives 8,341 rotations (PowerFit's
               nearest set, 9.72°, has 7,416); deterministic (`rotation_grid`)
    step       from the part's radius r and the map's resolution d: the angle that moves
               the part's rim by d / 2, 2 asin(d / (4 r)), kept within
               [`exhaustive_min_step_deg`, `exhaustive_max_step_deg`] (the Crowther-style
               rule PowerFit and pyTME recommend; `exhaustive_step_deg` overrides it)
    maps       both resampled on one cubic coarse grid (the target's voxel, at least half
               the resolution, coarser while the FFT box would exceed `exhaustive_max_box`),
               low-passed only as far as the coarsening needs (a Gaussian of sigma half the
               extra voxel size: a target already on that grid is not blurred; blurred, no
               right pose of 5NSR chain A was among the 400 best distinct peaks, unblurred
               one was, 309th by the scan and 1st by the map correlation); the target
               cut to its density and zero-padded by the part's radius (linear, not
               circular, correlation)
    score      PowerFit's local cross-correlation (LCC): the Pearson correlation between the
               rotated part and the target over the part's footprint (its voxels above its
               contour), from three FFT correlations (part x target, footprint x target,
               footprint x target^2), times the share of the footprint lying over target
               density above its contour (one more).  The footprint normalisation means a
               dense region does not win by mass alone; the overlap factor stops poses that
               hang over the molecule's edge from winning on the shape of the edge (on maps
               zeroed below their contour, as EMDB grids shipped by the CryoAlign authors
               are, the edge is the strongest feature).  Not taken: pyTME's FLC with a
               spherical mask (one FFT pair per rotation, but normalised over a sphere that
               holds the neighbouring chains: the right pose of 5NSR chain A came 6th of
               the positions of its own rotation, first with the LCC), PowerFit's core
               weighting, and a Laplacian pre-filter (PowerFit's default, pyTME's LCC): on
               contour-zeroed maps it turns the contour's edge into the main feature
    FFT        real transforms (scipy.fft, float32): the target's three transforms (map,
               square, mask) computed once and reused for every rotation; per rotation the
               part and its footprint are transformed from their small cube (2m + 1 voxels a
               side, m the part's radius in voxels) transforming only the lines that hold
               data, and the four correlations are transformed back keeping only the lines
               over the target's density box (together 40% less work than full transforms).
               The box is the target's density box plus m voxels of zeros after it along
               each axis: a centre over the density then never wraps the part onto density
               (linear correlation, with the padding on one side only; 2m before: 2.2x the
               voxels for a 5NSR chain in EMD-3695)
    budget     the scan's work is rotations x box voxels ("voxel-rotations"); when it exceeds
               `exhaustive_max_work` (default 1e9) the step is raised in 10% steps until it
               fits (at most `exhaustive_max_step_deg`), with a log line.  A voxel-rotation
               costs about 80 ns on one core of the 2-core benchmark machine, so the default
               bounds the FFT part of a scan to about 80 s of one core (40 s on 2): the
               largest 5NSR chain (M, 8.7e8 at 10°) still gets its 10° step.  The budget
               depends on the maps and the step only, never on the number of workers, so
               the answer does not either
    peaks      the best `exhaustive_per_rotation` positions of every rotation (at least
               two coarse voxels apart); over all rotations the best distinct poses
               (`exhaustive_candidates`; "distinct": centre 2 coarse voxels or rotation
               1.5 steps apart); the coarse score is a filter, so the best
               `exhaustive_peaks` of them by it and the best `exhaustive_rescored` by the
               ranking's own map correlation at the coarse pose are refined on the map
               (maprefine.refine, on the map itself: a blurred target pulled the elongated
               chain M of 5NSR off its site), and the best distinct `exhaustive_keep` of
               those are ranked by rank.rank beside the descriptor candidates; `found_by`
               says "exhaustive k"
    workers    `jobs` processes take interleaved shares of the rotations; each rotation's
               peaks depend on that rotation alone and the merge sorts by (score,
               rotation, position), so the result does not depend on their number.
               Memory: the target's three transforms (shared), plus one rotated part's
               cube and its four product spectra at a time per worker.

Over 500 lines: the plan (step, box, budget), the rotation grid, the FFT scan and the peak
refinement are one algorithm whose parts share the scan's state; split, they would pass it
around.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np

from .. import transform as tf
from ..config import AlignConfig
from ..timing import Timer
from ..types import DensityMap
from . import maprefine
from .prepare import PreparedMap
from .rank import Hypothesis, distinct, rank

log = logging.getLogger(__name__)


def wanted(
    config: AlignConfig, verdict: str, volume_ratio: float | None = None, radius_ratio: float | None = None
) -> bool:
    """Whether the scan runs: always, or (auto) on a local answer called low whose source is
    smaller than the target (`volume_ratio`: source / target volume above contour; a source as
    large as the target is no part to place, and the scan would only cost time) and fits in it
    (`radius_ratio`: the source's radius about its centre over the target's; a part wider than
    the whole has no placement inside it; above `MAX_RADIUS_RATIO`, which leaves room for a long
    thin part spanning the target and for the sampling of both)."""
    if config.exhaustive == "always":
        return True
    if config.exhaustive != "auto" or config.mode != "local" or verdict != "low":
        return False
    if volume_ratio is not None and volume_ratio >= 1.0:
        return False
    if radius_ratio is not None and radius_ratio > MAX_RADIUS_RATIO:
        log.info(
            "the answer is weak, but the source (radius %.2f x the target's) cannot lie inside the "
            "target: no exhaustive scan",
            radius_ratio,
        )
        return False
    return True


def radius_ratio(src: PreparedMap, tgt: PreparedMap) -> float:
    """The source's radius about its centre (its farthest sample point) over the target's."""

    def radius(points):
        return float(np.sqrt(((points - points.mean(0)) ** 2).sum(1).max()))

    return radius(src.sample.points_A) / max(radius(tgt.cloud.points_A), 1e-6)


MAX_RADIUS_RATIO = 1.2


# grid spacing per degree of covering radius: the Hopf grid below at spacing 12° leaves no
# rotation farther than 9.9° from its nearest grid rotation (10°: 8.2°; 15°: 12.1°; measured on
# 4,000 random rotations), so a step is given, like PowerFit's --angle (Karney's sets), as
# the covering radius
SPACING_PER_COVERING = 1.22
FOOTPRINT = 1.0  # template voxels at or above this x the source's contour are the part's footprint
OVERLAP_POWER = 1.0  # the correlation is weighted by (share of the footprint over target density) ** this


def rotation_grid(step_deg: float) -> np.ndarray:
    """(N, 3, 3) rotations spread evenly over SO(3), no rotation farther than about `step_deg`
    from the nearest of them: R = Rz(phi) Ry(theta) Rz(psi) with (theta, phi) a Fibonacci set on
    the sphere and psi uniform, both at spacing `SPACING_PER_COVERING` x step (a Hopf-
    fibration grid, about 8 pi^2 / spacing^3 rotations); the identity is the first."""
    from scipy.spatial.transform import Rotation

    step = math.radians(step_deg * SPACING_PER_COVERING)
    n_dir = max(2, int(math.ceil(4.0 * math.pi / step**2)))
    n_psi = max(1, int(math.ceil(2.0 * math.pi / step)))
    k = np.arange(n_dir) + 0.5
    theta = np.arccos(1.0 - 2.0 * k / n_dir)
    phi = np.mod(math.pi * (1.0 + math.sqrt(5.0)) * k, 2.0 * math.pi)
    psi = 2.0 * math.pi * np.arange(n_psi) / n_psi
    angles = np.stack(np.broadcast_arrays(phi[:, None], theta[:, None], psi[None, :]), -1).reshape(-1, 3)
    R = Rotation.from_euler("ZYZ", angles).as_matrix()
    return np.concatenate([np.eye(3)[None], R])


def step_for(radius_A: float, resolution_A: float, config: AlignConfig) -> float:
    """The rotation step (degrees): the angle moving the part's rim by half the resolution,
    within the configured bounds (or `exhaustive_step_deg` when set)."""
    if config.exhaustive_step_deg is not None:
        return float(config.exhaustive_step_deg)
    ratio = min(1.0, resolution_A / (4.0 * max(radius_A, 1e-6)))
    step = math.degrees(2.0 * math.asin(ratio))
    return float(np.clip(step, config.exhaustive_min_step_deg, config.exhaustive_max_step_deg))


@dataclass
class _Scan:
    """What every worker needs (inherited by fork; nothing per rotation travels)."""

    spectra: np.ndarray  # (3, ...) rfftn of the target, its square and its mask above contour (complex64)
    shape: tuple  # the FFT box (z, y, x)
    allowed: np.ndarray  # flat box positions where the part's centre may go (over the target's density box)
    read_at: tuple  # per axis (z, y, x): the box indices holding the allowed centres' values (shifted by m)
    floor2: float  # the local variance is taken at least this (no division by a flat region)
    source: np.ndarray  # low-passed source on the coarse grid (z, y, x), float32
    centre_index: np.ndarray  # the source's centre in that grid's (x, y, z) index units
    offsets: np.ndarray  # (K, 3) template offsets in voxels (x, y, z), inside the radius
    cube: tuple  # the template's small box (z, y, x): 2m + 1 a side
    cube_flat: np.ndarray  # the offsets' flat positions in it (offset o at index o + m)
    footprint: float  # template voxels at or above this count as the part
    rotations: np.ndarray  # (N, 3, 3)
    per_rotation: int


_SHARED: _Scan | None = None


def _init_worker(shared):
    global _SHARED
    _SHARED = shared


def _template_spectra(cube: np.ndarray, shape: tuple) -> np.ndarray:
    """rfftn over the last three axes of `cube` (..., 2m+1, 2m+1, 2m+1) zero-padded to `shape`,
    transforming only the lines that hold data (the template fills a small corner of the box:
    about a third of the work of a full transform)."""
    from scipy import fft

    out = fft.rfft(cube, n=shape[2], axis=-1)
    out = fft.fft(out, n=shape[1], axis=-2)
    return fft.fft(out, n=shape[0], axis=-3)


def _scan_rotation(i: int, sh: _Scan, cubes: np.ndarray) -> list[tuple[float, int, int]]:
    """The best `per_rotation` distinct positions of rotation i: [(score, i, flat box index)].

    score(q) = LCC(q) x overlap(q), over the rotated part's footprint F (n voxels) centred at q:
    LCC = sum_F t (T - mean_F T) / (|t| sqrt(n var_F T)), t centred and normalised on F;
    overlap = share of F over target voxels above contour; the four sums over F (t.T, T, T^2,
    mask) are correlations, computed by FFT."""
    from scipy import ndimage

    R = sh.rotations[i]
    # template value at offset o: the source at its centre + R^T o (a pose maps source x to R x + t)
    idx = sh.centre_index + sh.offsets @ R  # rows: R^T o
    t = ndimage.map_coordinates(sh.source, idx[:, ::-1].T, order=1, mode="constant", cval=0.0)
    fp = t >= sh.footprint
    n = int(fp.sum())
    if n < 4:
        return []
    t = np.where(fp, t - t[fp].mean(), 0.0)
    norm = float(np.sqrt((t * t).sum()))
    if norm == 0.0:
        return []
    cubes[0].flat[sh.cube_flat] = t / norm
    cubes[1].flat[sh.cube_flat] = fp
    spec = _template_spectra(cubes, sh.shape)
    np.conjugate(spec, out=spec)
    products = np.empty((4,) + spec.shape[1:], spec.dtype)
    np.multiply(spec[0], sh.spectra[0], out=products[0])
    np.multiply(spec[1], sh.spectra, out=products[1:])
    num, mean, mean2, inside = _correlations(products, sh)
    mean *= 1.0 / n
    mean2 *= 1.0 / n
    mean2 -= mean * mean  # the variance under the footprint
    np.maximum(mean2, sh.floor2, out=mean2)
    mean2 *= n
    score = num
    score /= np.sqrt(mean2, out=mean2)
    inside *= 1.0 / n
    np.clip(inside, 0.0, 1.0, out=inside)
    score *= inside if OVERLAP_POWER == 1.0 else inside**OVERLAP_POWER
    want = sh.per_rotation
    a = sh.allowed
    top = np.argpartition(score, -8 * want)[-8 * want :]
    top = top[np.argsort(-score[top], kind="stable")]
    zyx = np.stack(np.unravel_index(a[top], sh.shape), 1)
    out, kept = [], []
    for j, p in zip(top, zyx):
        if score[j] <= 0:
            break
        if any(np.abs(p - q).max() < 2 for q in kept):
            continue
        kept.append(p)
        out.append((float(score[j]), i, int(a[j])))
        if len(out) >= want:
            break
    return out


def _correlations(products: np.ndarray, sh: _Scan) -> np.ndarray:
    """(4, allowed) the inverse transforms of the (4, ...) spectra at the allowed centres only:
    the part's value at offset o sits at o + m in its cube, so the correlation at box index p
    is the sum over the part centred at p + m (`read_at`: the allowed centres - m along each
    axis); the lines not needed are dropped after each axis's transform (a quarter of the work)."""
    from scipy import fft

    z, y, x = sh.read_at
    out = fft.ifft(products, axis=1).take(z, axis=1)
    out = fft.ifft(out, axis=2).take(y, axis=2)
    return fft.irfft(out, n=sh.shape[2], axis=3).take(x, axis=3).reshape(len(products), -1)


def _scan_chunk(rotation_indices) -> list:
    sh = _SHARED
    assert sh is not None, "_scan_chunk runs in a worker set up by _init"
    cubes = np.zeros((2,) + sh.cube, np.float32)
    out = []
    for i in rotation_indices:
        out.extend(_scan_rotation(int(i), sh, cubes))
    return out


def _low_pass_resample(density: DensityMap, voxel_A: float, lo_A: np.ndarray, shape_xyz: np.ndarray):
    """The map blurred by a Gaussian of sigma voxel/2 (anti-aliasing), read on the cubic grid
    of `voxel_A` starting at world `lo_A` ((z, y, x) float32)."""
    from scipy import ndimage

    # anti-aliasing only for the coarsening itself: a map already on the grid is not blurred
    sigma = 0.5 * np.sqrt(np.maximum(voxel_A**2 - density.voxel_size_A[::-1] ** 2, 0.0)) / density.voxel_size_A[::-1]
    data = np.asarray(density.data, dtype=np.float32)
    if sigma.max() > 0.05:
        data = ndimage.gaussian_filter(data, sigma=sigma, mode="constant")
    axes = [lo_A[a] + voxel_A * np.arange(shape_xyz[a]) for a in range(3)]
    z, y, x = np.meshgrid(
        *[(axes[a] - density.origin_A[a]) / density.voxel_size_A[a] for a in (2, 1, 0)], indexing="ij"
    )
    return ndimage.map_coordinates(data, [z, y, x], order=1, mode="constant", cval=0.0).astype(np.float32)


def _plan(src: PreparedMap, tgt: PreparedMap, config: AlignConfig, resolution_A: float):
    pts = src.sample.points_A
    centre = pts.mean(0)
    radius = float(np.sqrt(((pts - centre) ** 2).sum(1).max()))
    tpts = tgt.cloud.points_A
    t_lo, t_hi = tpts.min(0), tpts.max(0)
    voxel = max(float(tgt.density.voxel_size_A.max()), 0.5 * resolution_A, float(config.exhaustive_voxel_A or 0))
    while True:
        m = int(math.ceil(radius / voxel)) + 1
        density_extent = np.ceil((t_hi - t_lo) / voxel).astype(int) + 1
        extent = np.maximum(density_extent + m, 2 * m + 1)  # zeros after the density: see `setup`
        if extent.max() <= config.exhaustive_max_box:
            break
        voxel *= 1.1
    return centre, radius, voxel, m, t_lo, extent, density_extent


def scan_work(step_deg: float, extent) -> int:
    """The scan's work in voxel-rotations: rotations x voxels of the FFT box (each rotation
    costs six FFTs of the box)."""
    from scipy import fft

    box = np.prod([int(fft.next_fast_len(int(e), real=True)) for e in extent])
    return int(len(rotation_grid(step_deg))) * int(box)


def _within_budget(step_deg: float, extent, config: AlignConfig) -> tuple[float, bool]:
    """The step, raised (in 10% steps) while the scan's work exceeds `exhaustive_max_work`;
    and whether it was raised."""
    budget = config.exhaustive_max_work
    step = step_deg
    if budget is None:
        return step, False
    while scan_work(step, extent) > budget and step < config.exhaustive_max_step_deg:
        step = min(step * 1.1, config.exhaustive_max_step_deg)
    if step != step_deg:
        log.info(
            "exhaustive scan: %s voxel-rotations at a %.1f° step exceed the budget of %s "
            "(exhaustive_max_work): step raised to %.1f° (%s)",
            f"{scan_work(step_deg, extent):,}",
            step_deg,
            f"{budget:,}",
            step,
            f"{scan_work(step, extent):,}",
        )
    return step, step != step_deg


def setup(src: PreparedMap, tgt: PreparedMap, config: AlignConfig) -> tuple[_Scan, dict]:
    """The scan's shared state (maps on the coarse grid, the target's transforms, the rotation
    grid) and its plan (centre, radius, voxel, step, box, ...)."""
    from scipy import fft

    assert tgt.density is not None and src.density is not None, "the scan needs both maps (PreparedMap.with_density)"
    resolution = config.exhaustive_resolution_A or max(
        2.0 * float(tgt.density.voxel_size_A.max()), float(config.sampling_A or 0.0)
    )
    centre, radius, voxel, m, lo, extent, density_extent = _plan(src, tgt, config, resolution)
    step = step_for(radius, resolution, config)
    step, cut = _within_budget(step, extent, config)
    rotations = rotation_grid(step)
    shape = tuple(int(fft.next_fast_len(int(e), real=True)) for e in extent[::-1])  # (z, y, x)
    target = np.zeros(shape, np.float32)
    t_part = _low_pass_resample(tgt.density, voxel, lo, density_extent)
    target[: t_part.shape[0], : t_part.shape[1], : t_part.shape[2]] = t_part
    # the source on its own coarse grid around its centre
    s_shape = np.full(3, 2 * m + 3)
    s_lo = centre - (m + 1) * voxel
    source = _low_pass_resample(src.density, voxel, s_lo, s_shape)
    centre_index = (centre - s_lo) / voxel
    g = np.arange(-m, m + 1)
    offsets = np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3).astype(float)
    offsets = offsets[(offsets**2).sum(1) <= (radius / voxel + 0.5) ** 2]
    o = offsets.astype(int) + m
    cube = (2 * m + 1,) * 3
    cube_flat = np.ravel_multi_index((o[:, 2], o[:, 1], o[:, 0]), cube)
    footprint = FOOTPRINT * float(src.contour)
    # the part's centre must sit over the target's density box; the box holds that box and at
    # least the part's radius of zeros after it, so that the circular correlation of a
    # centre in the density box never wraps the part onto density (linear correlation with
    # the padding on one side only: offsets below zero wrap into the zeros at the far end)
    allowed = np.zeros(shape, bool)
    allowed[: t_part.shape[0], : t_part.shape[1], : t_part.shape[2]] = True
    allowed = np.flatnonzero(allowed)
    read_at = tuple((np.arange(e) - m) % n for e, n in zip(t_part.shape, shape))
    inside = t_part[t_part >= tgt.contour]
    floor = 0.25 * float(inside.std()) if len(inside) > 1 else 0.0
    spectra = fft.rfftn(np.stack([target, target * target, (target >= tgt.contour).astype(np.float32)]), axes=(1, 2, 3))
    shared = _Scan(
        spectra=spectra,
        shape=shape,
        allowed=allowed,
        read_at=read_at,
        floor2=max(floor * floor, 1e-12),
        source=source,
        centre_index=centre_index,
        offsets=offsets,
        cube=cube,
        cube_flat=cube_flat,
        footprint=footprint,
        rotations=rotations,
        per_rotation=config.exhaustive_per_rotation,
    )
    plan = dict(
        centre=centre, radius=radius, voxel=voxel, lo=lo, step=step, resolution=resolution, shape=shape, budget_cut=cut
    )
    return shared, plan


def scan(src: PreparedMap, tgt: PreparedMap, config: AlignConfig) -> tuple[list[Hypothesis], dict]:
    """The best distinct placements of the exhaustive scan (at most `exhaustive_keep`), as
    map-refined hypotheses, and the scan's statistics."""
    from ..executor import resolve_jobs

    t0 = time.perf_counter()
    shared, plan = setup(src, tgt, config)
    rotations, shape = shared.rotations, shared.shape
    centre, radius, voxel, lo, step, resolution = (
        plan[k] for k in ("centre", "radius", "voxel", "lo", "step", "resolution")
    )
    jobs = max(1, min(resolve_jobs(config.jobs), len(rotations)))
    log.info(
        "exhaustive scan: %d rotations (step %.1f°, part radius %.0f Å, resolution %.1f Å), "
        "box %s of %.2f Å voxels, %d job(s)",
        len(rotations),
        step,
        radius,
        resolution,
        "x".join(map(str, shape[::-1])),
        voxel,
        jobs,
    )
    peaks = _run(shared, len(rotations), jobs)
    peaks.sort(key=lambda p: (-p[0], p[1], p[2]))
    scan_s = time.perf_counter() - t0

    def pose(p):
        R = rotations[p[1]]
        zyx = np.array(np.unravel_index(p[2], shape))
        where = lo + voxel * zyx[::-1]
        return tf.make(R, where - R @ centre)

    found = _distinct_peaks(
        peaks,
        rotations,
        shape,
        lo,
        voxel,
        centre,
        max(config.same_pose_A, 2.0 * voxel),
        max(config.same_pose_deg, 1.5 * step),
        config.exhaustive_candidates,
    )
    assert tgt.density is not None, "the scan needs the target's map (PreparedMap.with_density)"
    sample = src.sample.thinned(config.wide_sample_points)
    # the coarse score is a filter: the best distinct peaks by it, and the best by the ranking's
    # correlation on the maps themselves at the coarse pose, are refined on the maps
    again = sorted(
        ((maprefine.correlation(sample, tgt.density, pose(p)), n) for n, p in enumerate(found)),
        key=lambda r: (-r[0], r[1]),
    )
    chosen = sorted(
        set(range(min(len(found), config.exhaustive_peaks))) | {n for _, n in again[: config.exhaustive_rescored]}
    )
    # on the map itself (a blurred target pulls elongated parts off their site), in the workers
    fits = _refine_all(sample, tgt.density, [pose(found[n]) for n in chosen], jobs)
    refined = [(c, n, T) for n, (c, T) in zip(chosen, fits)]
    refined.sort(key=lambda r: (-r[0], r[1]))
    kept = distinct(refined, src.centre_A, config, pose=lambda r: r[2], limit=config.exhaustive_keep)
    hyps = [
        Hypothesis(T_target_source=T, found_by=f"exhaustive {k + 1}", key=(2000 + k,))
        for k, (_, _, T) in enumerate(kept)
    ]
    stats = {
        "ran": True,
        "rotations": int(len(rotations)),
        "step_deg": round(step, 3),
        "budget_cut": bool(plan["budget_cut"]),
        "voxel_A": round(voxel, 3),
        "box": [int(s) for s in shape[::-1]],
        "resolution_A": round(float(resolution), 3),
        "part_radius_A": round(radius, 2),
        "jobs": jobs,
        "distinct_peaks": len(found),
        "refined": len(chosen),
        "kept": len(hyps),
        "scan_s": round(scan_s, 3),
        "score": "local correlation over the footprint x overlap",
    }
    log.info(
        "exhaustive scan: %d distinct peaks, %d refined placements kept (scan %.1f s)", len(found), len(hyps), scan_s
    )
    return hyps, stats


def _distinct_peaks(peaks, rotations, shape, lo, voxel, centre, tol_A, tol_deg, limit):
    """The peaks (best first) whose pose differs from every kept one's: the part's centre
    farther than tol_A or its rotation farther than tol_deg (vectorised `rank.distinct`)."""
    if not peaks:
        return []
    rot = np.array([p[1] for p in peaks])
    where = lo + voxel * np.stack(np.unravel_index(np.array([p[2] for p in peaks]), shape), 1)[:, ::-1]
    cos_tol = math.cos(math.radians(tol_deg))
    kept, kept_R, kept_x = [], np.zeros((limit, 3, 3)), np.zeros((limit, 3))
    for k, p in enumerate(peaks):
        n = len(kept)
        if n:
            near = ((kept_x[:n] - where[k]) ** 2).sum(1) <= tol_A * tol_A
            if near.any():
                # cos of the angle between the rotations: (trace(Ra^T Rb) - 1) / 2
                tr = np.einsum("kij,ij->k", kept_R[:n][near], rotations[rot[k]])
                if ((tr - 1.0) / 2.0 >= cos_tol).any():
                    continue
        kept_R[n], kept_x[n] = rotations[rot[k]], where[k]
        kept.append(p)
        if len(kept) >= limit:
            break
    return kept


_REFINE = None


def _refine_one(T):
    sample, target = _REFINE
    fit = maprefine.refine(sample, target, T, rounds=2, iterations=20)
    return maprefine.correlation(sample, target, fit.T_target_source), fit.T_target_source


def _refine_chunk(poses):
    return [_refine_one(T) for T in poses]


def _init_refine(state):
    global _REFINE
    _REFINE = state


def _refine_all(sample, target, poses, jobs):
    """(correlation, refined pose) for every pose; each depends on its pose alone."""
    if jobs == 1 or len(poses) < 2 * jobs:
        _init_refine((sample, target))
        try:
            return _refine_chunk(poses)
        finally:
            _init_refine(None)
    import multiprocessing as mp

    from ..executor import _stop_pool

    method = "fork" if "fork" in mp.get_all_start_methods() else None
    chunks = [poses[s :: jobs * 2] for s in range(jobs * 2)]
    pool = ProcessPoolExecutor(
        max_workers=jobs, mp_context=mp.get_context(method), initializer=_init_refine, initargs=((sample, target),)
    )
    try:
        parts = list(pool.map(_refine_chunk, chunks))
    finally:
        _stop_pool(pool)
    out = [None] * len(poses)
    for s, part in enumerate(parts):
        out[s :: jobs * 2] = part
    return out


def _run(shared: _Scan, n: int, jobs: int) -> list:
    chunks = [list(range(s, n, 64)) for s in range(64)]
    chunks = [c for c in chunks if c]
    bar = _bar(n)
    out = []
    try:
        if jobs == 1:
            _init_worker(shared)
            try:
                for c in chunks:
                    out.extend(_scan_chunk(c))
                    bar.update(len(c))
            finally:
                _init_worker(None)
            return out
        import multiprocessing as mp

        from ..executor import _stop_pool

        method = "fork" if "fork" in mp.get_all_start_methods() else None
        pool = ProcessPoolExecutor(
            max_workers=jobs, mp_context=mp.get_context(method), initializer=_init_worker, initargs=(shared,)
        )
        try:
            for c, part in zip(chunks, pool.map(_scan_chunk, chunks)):
                out.extend(part)
                bar.update(len(c))
        finally:
            _stop_pool(pool)
        return out
    finally:
        bar.close()


def _bar(total: int):
    from tqdm import tqdm

    quiet = not sys.stderr.isatty() or logging.getLogger("cryoalign").getEffectiveLevel() > logging.INFO
    return tqdm(total=total, desc="exhaustive scan", unit="rot", disable=quiet, leave=False)


def widen(src: PreparedMap, tgt: PreparedMap, candidates: list, config: AlignConfig, timer: Timer) -> tuple[list, dict]:
    """Candidates with the exhaustive scan's placements ranked in (rank.rank) and merged."""
    if tgt.density is None or src.density is None:
        return candidates, {"ran": False, "reason": "no map at hand"}
    t0 = time.perf_counter()
    with timer.stage("exhaustive scan"):
        hyps, stats = scan(src, tgt, config)
        more = (
            rank(
                src,
                tgt,
                hyps,
                config.replace(map_refine_max=max(config.map_refine_max, len(hyps))),
                with_js=config.mode == "global",
                timer=Timer(),
            )
            if hyps
            else []
        )
    merged = sorted(list(candidates) + more, key=lambda c: -c.score.value)
    merged = distinct(merged, src.centre_A, config, limit=config.top)
    won = bool(merged) and merged[0].found_by.startswith("exhaustive")
    if won and candidates:
        log.info(
            "the exhaustive scan found a better pose (score %.3f, was %.3f)",
            merged[0].score.value,
            candidates[0].score.value,
        )
    stats.update(answer_from_exhaustive=won, time_s=round(time.perf_counter() - t0, 3))
    return merged, stats
