"""Compare two maps after superposition: scale, difference blobs, FSC.

    result = compare("state1.mrc", "state2.mrc", source_contour=1.2, target_contour=0.7)
    result.difference["target_minus_source"].mass_kDa    # density the source lacks
    result.fsc.resolution_at_0143_A, result.scale.factor, result.to_json()

Steps (one function each, in `compare`):

1. pose: the given matrix, or `cryoalign.align` (mode from the config, default auto);
2. `resample_onto`: the moved source sampled on the target's grid (trilinear);
3. `fit_scale`: source densities put on the target's scale, ``s' = factor * s + offset``:
   the offset puts the source's background on the target's (empty solvent is never lifted
   into density), the factor is a least-squares slope over the voxels inside BOTH
   molecules (a chain present in one map only does not bias it; see `SCALE_METHODS` for
   the alternatives measured);
4. `difference`: ``target - s'`` and ``s' - target``; a voxel counts as difference when
   it exceeds ``level = max(fraction * target_contour, k * sigma)`` (fraction 1.0, k 3,
   sigma the larger robust standard deviation, 1.4826 x MAD, of the difference map outside
   the molecule and inside both molecules) and lies inside its own map's molecule (target
   - source above the target's contour, source - target above the source's), plus the
   blob's edge: voxels above COUNT_FRACTION x level within COUNT_SHELL_A of it;
   face-connected (6-connectivity) pieces joined by difference above MERGE_FRACTION x
   level, or closer than MERGE_GAP_A, are one blob; blobs smaller than `min_blob_A3` (default 1000 Å^3, about 7
   residues) are dust and dropped.  Volume = kept voxels x voxel volume; mass = volume x
   0.81 Da/Å^3 (protein).  A difference over more than half its map's molecule is warned
   about (`CompareResult.warnings`);
5. `fsc`: Fourier shell correlation in shells of physical spatial frequency (any box,
   anisotropic voxels), with an optional soft mask, and the correlation about the mean
   over the union of both contours.

Over 500 lines: `compare` and the measures only it uses (the density scale, the difference
blobs and their merge rule, the FSC, the masses), which share one set of masks and levels.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from ..errors import InputError
from ..io.maps import as_map, resample_onto
from ..types import DensityMap

log = logging.getLogger(__name__)

PROTEIN_DA_PER_A3 = 0.81  # 1.35 g/cm^3
DEFAULT_MIN_BLOB_A3 = 1000.0  # difference blobs smaller than this are dust
DIFFERENCE_FRACTION = 1.0  # level >= this x target contour ...
DIFFERENCE_NOISE_K = 3.0  # ... and >= this x robust sigma of the difference outside the molecule
MASK_DILATE_A = 6.0  # FSC mask: union of contours grown by this ...
MASK_SOFT_A = 3.0  # ... then softened by a Gaussian of this sigma
SCALE_METHODS = (
    "background_quantiles",
    "background_lsq",
    "background_median",
    "both_above_lsq",
    "both_above_lsq_raw",
    "contours",
    "quantiles",
    "either_above_lsq",
)
SCALE_SMOOTH_VOXELS = 2.0  # the *_lsq fits read maps low-passed by a Gaussian of this sigma
DEFAULT_SCALE_METHOD = "background_quantiles"
COUNT_FRACTION = 0.6  # a blob also counts its voxels above this x level ...
COUNT_SHELL_A = 2.0  # ... within this distance of its voxels above the level (the blurred edge)
MERGE_FRACTION = 0.5  # blobs joined by difference density above this x level are one blob ...
MERGE_GAP_A = 7.0  # ... and so are blobs whose voxels come within this distance
WARN_DIFFERENCE_SHARE = 0.5  # warn when a difference covers more than this share of its map's molecule
FSC_THRESHOLDS = (0.5, 0.143)


# ----------------------------------------------------------------------------- records
@dataclass(frozen=True)
class Scale:
    """Source densities on the target's scale: ``scaled = factor * source + offset``."""

    factor: float
    offset: float
    method: str

    def apply(self, data: np.ndarray) -> np.ndarray:
        return (data * np.float32(self.factor) + np.float32(self.offset)).astype(np.float32)

    def as_dict(self) -> dict:
        return {"factor": self.factor, "offset": self.offset, "method": self.method}


@dataclass(frozen=True)
class Blob:
    """One connected region of difference density. centre_A: (3,) target world x, y, z,
    the centroid weighted by the difference density."""

    mass_kDa: float
    volume_A3: float
    centre_A: tuple
    voxels: int
    pieces: int = 1

    def as_dict(self) -> dict:
        return {
            "mass_kDa": round(self.mass_kDa, 3),
            "volume_A3": round(self.volume_A3, 1),
            "centre_A": [round(float(v), 3) for v in self.centre_A],
            "voxels": self.voxels,
            "pieces": self.pieces,
        }


@dataclass(frozen=True, eq=False)
class Difference:
    """Difference density one way. labels: (nz, ny, nx) int32, 0 outside kept blobs,
    k for the k-th largest blob."""

    level: float
    volume_A3: float
    mass_kDa: float
    blobs: tuple
    labels: np.ndarray
    molecule_volume_A3: float | None = None

    def as_dict(self) -> dict:
        return {
            "level": self.level,
            "volume_A3": round(self.volume_A3, 1),
            "mass_kDa": round(self.mass_kDa, 3),
            "blobs": [b.as_dict() for b in self.blobs],
            "molecule_volume_A3": None if self.molecule_volume_A3 is None else round(self.molecule_volume_A3, 1),
        }


@dataclass(frozen=True, eq=False)
class FSC:
    """Fourier shell correlation. frequency_per_A, fsc: (S,) per shell (DC left out)."""

    frequency_per_A: np.ndarray
    fsc: np.ndarray
    resolution_at_05_A: float | None
    resolution_at_0143_A: float | None
    masked: bool

    @property
    def resolution_A(self) -> np.ndarray:
        return 1.0 / self.frequency_per_A

    def as_dict(self) -> dict:
        return {
            "curve": [[round(float(r), 3), round(float(c), 5)] for r, c in zip(self.resolution_A, self.fsc)],
            "resolution_at_0.5_A": _round(self.resolution_at_05_A),
            "resolution_at_0.143_A": _round(self.resolution_at_0143_A),
            "masked": self.masked,
        }


@dataclass(frozen=True, eq=False)
class CompareResult:
    """What `compare` returns.

    source_on_target: the source moved by T, resampled on the target's grid and scaled
    to the target's densities.  difference_maps: {"target_minus_source",
    "source_minus_target"}: the difference density inside the kept blobs, 0 elsewhere
    (so any positive contour shows exactly what was counted).  source, target: the
    input maps (for pictures)."""

    T_target_source: np.ndarray
    scale: Scale
    correlation: float
    fsc: FSC
    difference: dict
    source_on_target: DensityMap
    difference_maps: dict
    source: DensityMap
    target: DensityMap
    alignment: Any
    params: dict
    timings_s: dict = field(default_factory=dict)
    warnings: tuple = ()

    def to_json(self) -> dict:
        from .. import __version__

        return {
            "version": __version__,
            "matrix": np.asarray(self.T_target_source).tolist(),
            "scale": self.scale.as_dict(),
            "correlation": round(self.correlation, 5),
            "fsc": self.fsc.as_dict(),
            "difference": {k: v.as_dict() for k, v in self.difference.items()},
            "alignment": self.alignment.to_json() if self.alignment is not None else None,
            "params": self.params,
            "warnings": list(self.warnings),
            "timings_s": {k: round(v, 4) for k, v in self.timings_s.items()},
        }

    def __repr__(self):
        d = self.difference["target_minus_source"]
        return (
            f"<CompareResult correlation={self.correlation:.3f} scale={self.scale.factor:.3g} "
            f"target_minus_source={d.mass_kDa:.1f} kDa in {len(d.blobs)} blob(s)>"
        )


# ----------------------------------------------------------------------------- the steps
@dataclass
class Superposition:
    """The source on the target's grid (`superimpose`)."""

    T_target_source: np.ndarray
    moved: DensityMap  # the source resampled onto the target's grid
    alignment: Any  # the `AlignResult`; None when the matrix was given
    seconds: dict  # "align" (0 with a matrix) and "resample"


def superimpose(
    src_map: DensityMap,
    tgt_map: DensityMap,
    source_contour: float,
    target_contour: float,
    *,
    matrix=None,
    config=None,
    source_background: float = 0.0,
) -> Superposition:
    """The first half of every comparison (`compare`, and each map of `variance`): align
    the source on the target with `cryoalign.align` (`config`) unless `matrix` is given,
    resample it onto the target's grid about `source_background` (so the target grid
    outside the source's box reads background, not 0), and check that the two overlap
    (`InputError` when they do not)."""
    t0 = time.perf_counter()
    alignment = None
    if matrix is None:
        from ..core.pipeline import align

        alignment = align(src_map, tgt_map, source_contour=source_contour, target_contour=target_contour, config=config)
        T = np.asarray(alignment.T_target_source, float)
    else:
        T = as_rigid_matrix(matrix)
    t1 = time.perf_counter()
    bg = np.float32(source_background)
    if bg:
        shifted = DensityMap(data=src_map.data - bg, voxel_size_A=src_map.voxel_size_A, origin_A=src_map.origin_A)
        moved = resample_onto(shifted, tgt_map, T)
        np.add(moved.data, bg, out=moved.data)
    else:  # no full-size copy of the source (variance, every map of the series)
        moved = resample_onto(src_map, tgt_map, T)
    seconds = {"align": t1 - t0 if alignment is not None else 0.0, "resample": time.perf_counter() - t1}
    check_overlap(moved.data, tgt_map.data, source_contour, target_contour)
    return Superposition(T_target_source=T, moved=moved, alignment=alignment, seconds=seconds)


def compare(
    source,
    target,
    *,
    source_contour=None,
    target_contour=None,
    matrix=None,
    config=None,
    density_Da_per_A3: float = PROTEIN_DA_PER_A3,
    min_blob_A3: float | None = None,
    fsc_mask: bool = True,
    scale_method: str = DEFAULT_SCALE_METHOD,
    difference_fraction: float = DIFFERENCE_FRACTION,
    merge_fraction: float | None = MERGE_FRACTION,
    within_contours: bool = True,
    shared_sigma: bool = True,
    count_fraction: float = COUNT_FRACTION,
    merge_gap_A: float = MERGE_GAP_A,
) -> CompareResult:
    """Superimpose `source` on `target` (or use `matrix`) and compare them.

    source, target: map paths or `DensityMap`s.  matrix: 4x4 `T_target_source`
    (array, nested list or a path to a result JSON / 12 or 16 numbers); None aligns
    first with `cryoalign.align` (`config`: an `AlignConfig`, default mode auto).
    Contours default to an estimate from each map (`pointcloud.estimate_contour`).
    merge_fraction: blobs connected through difference density above this fraction of the
    level, or whose voxels come within merge_gap_A, are reported as one (None: no merging).  within_contours: a voxel of
    target - source must be above the target's contour, one of source - target above the
    source's (so neither difference can exceed its map's molecule).  shared_sigma: the level
    is also at least k x the robust spread of the difference over the voxels inside both
    molecules (maps that disagree voxel by voxel need a larger difference to count).
    Raises `InputError` for a non-rigid matrix or maps that do not overlap."""
    from ..core.pointcloud import contour_warning

    t0 = time.perf_counter()
    timings = {}
    warnings = []
    src_map, tgt_map = as_map(source), as_map(target)
    sc, sc_est = resolve_level(src_map, source_contour, "source_contour")
    tc, tc_est = resolve_level(tgt_map, target_contour, "target_contour")
    for density, level, est, param in (
        (src_map, sc, sc_est, "source_contour"),
        (tgt_map, tc, tc_est, "target_contour"),
    ):
        message = contour_warning(density, level, param) if est else None
        if message:
            warnings.append(message)
    _check_positive(density_Da_per_A3, "density_Da_per_A3", "0.81 Da/Å^3 for protein")
    min_blob = DEFAULT_MIN_BLOB_A3 if min_blob_A3 is None else float(min_blob_A3)
    if not (min_blob >= 0 and math.isfinite(min_blob)):
        raise InputError(f"min_blob_A3 must be a non-negative number of Å^3, got {min_blob_A3}")
    _check_positive(difference_fraction, "difference_fraction", "1.0")
    if merge_fraction is not None and not (isinstance(merge_fraction, (int, float)) and 0 < merge_fraction <= 1):
        raise InputError(f"merge_fraction must be a number in (0, 1] or None, got {merge_fraction!r}; e.g. 0.5")
    if scale_method not in SCALE_METHODS:
        raise InputError(f"scale_method must be one of {', '.join(SCALE_METHODS)}, got {scale_method!r}")

    s_bg, t_bg = map_background(src_map.data, sc), map_background(tgt_map.data, tc)
    t = time.perf_counter()
    sup = superimpose(src_map, tgt_map, sc, tc, matrix=matrix, config=config, source_background=s_bg)
    alignment, T, moved = sup.alignment, sup.T_target_source, sup.moved
    if alignment is not None:
        timings["align"] = t - t0 + sup.seconds["align"]
    timings["resample"] = sup.seconds["resample"]

    t = time.perf_counter()
    t_mol = tgt_map.data > tc
    # the source's molecule on the target grid: its above-contour mask resampled (> 0.5), which keeps
    # its volume (thresholding the resampled density grows a masked map by up to a voxel all round)
    s_mol = (
        resample_onto(
            DensityMap(
                data=(src_map.data > sc).astype(np.float32),
                voxel_size_A=src_map.voxel_size_A,
                origin_A=src_map.origin_A,
            ),
            tgt_map,
            T,
        ).data
        > 0.5
    )
    scale = fit_scale(
        moved.data, tgt_map.data, sc, tc, method=scale_method, backgrounds=(s_bg, t_bg), masks=(s_mol, t_mol)
    )
    scaled = DensityMap(
        data=scale.apply(moved.data), voxel_size_A=tgt_map.voxel_size_A.copy(), origin_A=tgt_map.origin_A.copy()
    )
    timings["scale"] = time.perf_counter() - t
    log.info("scale (%s): source x %.4g %+.4g", scale.method, scale.factor, scale.offset)

    t = time.perf_counter()
    molecule = s_mol | t_mol
    diff = tgt_map.data - scaled.data
    sigma = background_sigma(diff, molecule)
    shared = s_mol & t_mol
    sigma_shared = robust_sigma(diff[shared]) if shared_sigma and np.count_nonzero(shared) >= 1000 else 0.0
    level = max(difference_fraction * tc, DIFFERENCE_NOISE_K * max(sigma, sigma_shared))
    voxel_A3 = float(np.prod(tgt_map.voxel_size_A))
    differences, diff_maps = {}, {}
    for name, values, own, who in (
        ("target_minus_source", diff, t_mol, "target"),
        ("source_minus_target", -diff, s_mol, "source"),
    ):
        d = difference_blobs(
            values,
            level,
            tgt_map.voxel_size_A,
            tgt_map.origin_A,
            min_blob_A3=min_blob,
            density_Da_per_A3=density_Da_per_A3,
            within=own if within_contours else None,
            merge_fraction=merge_fraction,
            count_fraction=count_fraction,
            merge_gap_A=merge_gap_A,
        )
        own_volume = float(np.count_nonzero(own)) * voxel_A3
        d = Difference(
            level=d.level,
            volume_A3=d.volume_A3,
            mass_kDa=d.mass_kDa,
            blobs=d.blobs,
            labels=d.labels,
            molecule_volume_A3=own_volume,
        )
        differences[name] = d
        diff_maps[name] = DensityMap(
            data=np.where(d.labels > 0, values, 0).astype(np.float32),
            voxel_size_A=tgt_map.voxel_size_A.copy(),
            origin_A=tgt_map.origin_A.copy(),
        )
        log.info("%s: %.1f kDa in %d blob(s) above %.4g", name, d.mass_kDa, len(d.blobs), level)
        message = difference_warning(name, who, d.volume_A3, own_volume)
        if message:
            warnings.append(message)
            log.warning("%s", message)  # (an estimated contour's warning: logged by resolve_contour)
    del diff
    timings["difference"] = time.perf_counter() - t

    t = time.perf_counter()
    correlation = masked_correlation(scaled.data, tgt_map.data, molecule)
    mask = soft_mask(molecule, tgt_map.voxel_size_A) if fsc_mask else None
    curve = fsc(scaled.data, tgt_map.data, tgt_map.voxel_size_A, mask=mask)
    timings["fsc"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0

    params = {
        "source": src_map.path,
        "target": tgt_map.path,
        "source_contour": sc,
        "target_contour": tc,
        "source_contour_estimated": sc_est,
        "target_contour_estimated": tc_est,
        "source_background": s_bg,
        "target_background": t_bg,
        "density_Da_per_A3": density_Da_per_A3,
        "min_blob_A3": min_blob,
        "difference_fraction": difference_fraction,
        "difference_noise_k": DIFFERENCE_NOISE_K,
        "difference_sigma": sigma,
        "difference_sigma_shared": sigma_shared,
        "connectivity": 6,
        "blob_centre": "difference-density weighted",
        "merge_fraction": merge_fraction,
        "merge_gap_A": merge_gap_A,
        "count_fraction": count_fraction,
        "count_shell_A": COUNT_SHELL_A,
        "within_contours": within_contours,
        "shared_sigma": shared_sigma,
        "scale_method": scale_method,
        "fsc_mask": fsc_mask,
        "fsc_mask_dilate_A": MASK_DILATE_A if fsc_mask else None,
        "fsc_mask_soft_A": MASK_SOFT_A if fsc_mask else None,
        "aligned": alignment is not None,
    }
    return CompareResult(
        T_target_source=T,
        scale=scale,
        correlation=correlation,
        fsc=curve,
        difference=differences,
        source_on_target=scaled,
        difference_maps=diff_maps,
        source=src_map,
        target=tgt_map,
        alignment=alignment,
        params=params,
        timings_s=timings,
        warnings=tuple(warnings),
    )


def difference_warning(name: str, who: str, volume_A3: float, own_volume_A3: float) -> str | None:
    """The warning when a difference covers more than WARN_DIFFERENCE_SHARE of its own map's
    volume above contour (the maps then differ over most of the molecule: a wrong
    superposition, or contours that enclose very different volumes), else None."""
    if own_volume_A3 <= 0 or volume_A3 <= WARN_DIFFERENCE_SHARE * own_volume_A3:
        return None
    return (
        f"{name} is {volume_A3:,.0f} Å^3, {100.0 * volume_A3 / own_volume_A3:.0f}% of the {who}'s "
        f"{own_volume_A3:,.0f} Å^3 above its contour: the maps differ over most of the molecule; check the "
        "superposition and that the two contours enclose comparable volumes"
    )


def map_background(data: np.ndarray, contour: float, *, margin_voxels: int = 2) -> float:
    """The background density of a map: the median of its voxels outside the molecule (the
    voxels above contour grown by a margin), or of those below contour when fewer than 1000
    lie outside; 0 for a map masked to 0."""
    outside = ~ndimage.binary_dilation(data > contour, iterations=margin_voxels)
    sample = data[outside] if np.count_nonzero(outside) >= 1000 else data[data < contour]
    if sample.size > 4_000_000:
        sample = sample[:: sample.size // 4_000_000 + 1]
    return float(np.median(sample)) if sample.size else 0.0


def resolve_level(density: DensityMap, contour, param: str) -> tuple[float, bool]:
    """(contour level, estimated?): the given level checked against the map, or an
    estimate from its background (the alignment's own rule)."""
    from ..core.prepare import resolve_contour

    region, estimated = resolve_contour(density, contour, param)
    return float(region.contour), bool(estimated)


def as_rigid_matrix(matrix) -> np.ndarray:
    """A 4x4 rigid transform from an array, nested list or a matrix file (see
    `rmsd.load_matrices`); raises `InputError` when it is not one."""
    from .rmsd import as_rigid, load_matrices

    if isinstance(matrix, (str, os.PathLike)):
        return load_matrices(matrix)[0]
    return as_rigid(matrix)


def check_overlap(
    source_on_target: np.ndarray, target: np.ndarray, source_contour: float, target_contour: float
) -> None:
    """InputError when no voxel of the target grid is above both contours."""
    both = np.count_nonzero((source_on_target > source_contour) & (target > target_contour))
    if both == 0:
        raise InputError(
            f"the maps do not overlap after superposition: no voxel is above both the source contour "
            f"{source_contour:.4g} and the target contour {target_contour:.4g}; check that the matrix moves "
            "source world coordinates onto the target's (not the inverse), or the contours"
        )


def fit_scale(
    source: np.ndarray,
    target: np.ndarray,
    source_contour: float,
    target_contour: float,
    method: str = DEFAULT_SCALE_METHOD,
    backgrounds: tuple | None = None,
    masks: tuple | None = None,
) -> Scale:
    """Linear map ``factor * source + offset`` onto the target's densities.

    source, target: same-shape arrays on one grid (source already resampled).
    backgrounds: (source, target) background densities (`map_background`; default 0, 0).
    masks: (source, target) boolean molecule masks to use instead of ``> contour``.
    Methods (measured in benchmarks/compare_chains.py --scale):
      background_quantiles  the offset is fixed so that the source's background lands on
                        the target's (empty solvent cannot be lifted into density); the
                        factor is the least-squares slope through that point between the
                        5-95% quantiles (91) of the two maps over the voxels inside both
                        molecules, both low-passed by a Gaussian of SCALE_SMOOTH_VOXELS
                        voxels (default);
      background_lsq    the same offset; the slope fitted voxel by voxel;
      background_median the same offset; the ratio of the medians, raw voxels;
      both_above_lsq    least squares (slope and offset) over the voxels above both contours
                        on the low-passed maps: trilinear resampling lowers the source's
                        peaks, which tilts a fit on the raw voxels, and the low-pass gives
                        both maps the same blur; its free offset can lift the source's
                        background to about the target's contour (README example: +0.69);
      both_above_lsq_raw  the same on the raw voxels;
      contours          source contour -> target contour, source median -> target median;
      quantiles         least squares between the 200 quantiles of the voxels above each
                        map's own contour;
      either_above_lsq  least squares over voxels above either contour."""
    s_bg, t_bg = (0.0, 0.0) if backgrounds is None else (float(backgrounds[0]), float(backgrounds[1]))
    s_above, t_above = (source > source_contour, target > target_contour) if masks is None else masks
    if method == "contours":
        s_med, t_med = float(np.median(source)), float(np.median(target))
        span = source_contour - s_med
        factor = (target_contour - t_med) / span if span > 0 else target_contour / source_contour
        return Scale(float(factor), float(t_med - factor * s_med), method)
    if method.startswith("background_"):
        sel = s_above & t_above
        if method == "background_median":
            xs, ys = (source[sel] - s_bg).astype(float), (target[sel] - t_bg).astype(float)
        else:
            xs = ndimage.gaussian_filter(source - np.float32(s_bg), SCALE_SMOOTH_VOXELS, mode="constant")[sel]
            ys = ndimage.gaussian_filter(target - np.float32(t_bg), SCALE_SMOOTH_VOXELS, mode="constant")[sel]
            xs, ys = xs.astype(float), ys.astype(float)
        if method == "background_quantiles" and xs.size:
            q = np.linspace(0.05, 0.95, 91)
            xs, ys = np.quantile(xs, q), np.quantile(ys, q)
        if method == "background_median" and xs.size:
            xs, ys = np.array([np.median(xs)]), np.array([np.median(ys)])
        den = float(xs @ xs)
        factor = float(xs @ ys) / den if den > 0 else 0.0
        if not (factor > 0 and math.isfinite(factor)):
            span = source_contour - s_bg
            factor = (target_contour - t_bg) / span if span > 0 and target_contour > t_bg else 1.0
        return Scale(float(factor), float(t_bg - factor * s_bg), method)
    if method == "quantiles":
        q = np.linspace(0.0, 1.0, 201)
        xs, ys = np.quantile(source[s_above], q), np.quantile(target[t_above], q)
    elif method == "either_above_lsq":
        sel = s_above | t_above
        xs, ys = source[sel].astype(float), target[sel].astype(float)
    else:
        sel = s_above & t_above
        if method == "both_above_lsq":
            source = ndimage.gaussian_filter(source, SCALE_SMOOTH_VOXELS, mode="constant")
            target = ndimage.gaussian_filter(target, SCALE_SMOOTH_VOXELS, mode="constant")
        xs, ys = source[sel].astype(float), target[sel].astype(float)
    if xs.size < 2 or np.ptp(xs) == 0:
        return Scale(float(target_contour / source_contour), 0.0, method)
    factor, offset = np.polyfit(xs, ys, 1)
    return Scale(float(factor), float(offset), method)


def robust_sigma(values: np.ndarray) -> float:
    """1.4826 x the median absolute deviation of `values` about their median."""
    sample = values.ravel()
    if sample.size > 4_000_000:
        sample = sample[:: sample.size // 4_000_000 + 1]
    med = float(np.median(sample))
    return float(1.4826 * np.median(np.abs(sample - med)))


def background_sigma(values: np.ndarray, molecule: np.ndarray, *, margin_voxels: int = 2) -> float:
    """Robust standard deviation (1.4826 x MAD) of `values` outside the molecule (grown by
    a margin); over all voxels when fewer than 1000 lie outside."""
    outside = ~ndimage.binary_dilation(molecule, iterations=margin_voxels)
    sample = values[outside] if np.count_nonzero(outside) >= 1000 else values.ravel()
    if sample.size > 4_000_000:
        sample = sample[:: sample.size // 4_000_000 + 1]
    med = float(np.median(sample))
    return float(1.4826 * np.median(np.abs(sample - med)))


def difference_blobs(
    values: np.ndarray,
    level: float,
    voxel_size_A,
    origin_A,
    *,
    min_blob_A3: float,
    density_Da_per_A3: float = PROTEIN_DA_PER_A3,
    within: np.ndarray | None = None,
    merge_fraction: float | None = MERGE_FRACTION,
    count_fraction: float = COUNT_FRACTION,
    merge_gap_A: float = MERGE_GAP_A,
) -> Difference:
    """Regions of `values` > level, dust (< min_blob_A3) dropped, largest first.

    values: (nz, ny, nx) difference density; voxel_size_A, origin_A: (3,) x, y, z.
    within: boolean mask a counted voxel must also lie in (the map's own molecule).
    Merge rule: face-connected pieces above the level that are joined by face-connected
    voxels above merge_fraction x level (hysteresis, as in edge detection), or whose voxels
    come within merge_gap_A (on grids finer than merge_gap_A / 2), are one blob;
    its volume and mass count only the voxels above the level, `pieces` says how many
    pieces it joined.  None: every face-connected piece is its own blob."""
    voxel_A3 = float(np.prod(voxel_size_A))
    above = values > level
    if within is not None:
        above &= within
    steps = int(math.floor(COUNT_SHELL_A / float(np.max(voxel_size_A)) + 1e-9))
    if count_fraction < 1.0 and steps > 0:  # the edge: voxels above count_fraction x level next to the blob
        edge = ndimage.binary_dilation(above, iterations=steps) & (values > count_fraction * level)
        above |= edge if within is None else edge & within
        del edge
    pieces, n_pieces = ndimage.label(above)  # default structure: 6-connectivity
    if merge_fraction is not None and n_pieces > 1:
        joined = (values > merge_fraction * level) | above
        if merge_gap_A > 0:
            joined |= ndimage.binary_dilation(above, structure=_ball(0.5 * merge_gap_A, voxel_size_A))
        groups, count = ndimage.label(joined)
        del joined
        labels = np.where(above, groups, 0)
        present = np.zeros(count + 1, bool)
        present[labels.ravel()] = True
        present[0] = False
        remap = np.cumsum(present) * present  # labels without gaps
        labels = remap[labels].astype(np.int32)
        count = int(present[1:].sum())
        # pieces per group: each piece lies in exactly one group
        piece_group = np.zeros(n_pieces + 1, np.int64)
        piece_group[pieces.ravel()] = labels.ravel()
        per_group = np.bincount(piece_group[1:], minlength=count + 1)
    else:
        labels, count = pieces, n_pieces
        per_group = np.ones(count + 1, np.int64)
    del pieces
    out = np.zeros(values.shape, np.int32)
    blobs = []
    if count:
        sizes = np.bincount(labels.ravel(), minlength=count + 1)
        sizes[0] = 0
        keep = np.flatnonzero(sizes * voxel_A3 >= max(min_blob_A3, voxel_A3 * 0.5))
        keep = keep[np.argsort(-sizes[keep], kind="stable")]
        if keep.size:
            idx = np.arange(1, keep.size + 1)
            weights = np.where(labels > 0, np.maximum(values, 0), 0).astype(np.float64)
            centres = np.array(ndimage.center_of_mass(weights, labels, keep)).reshape(-1, 3)
            rank_of = np.zeros(count + 1, np.int32)
            rank_of[keep] = idx
            out = rank_of[labels]
            for label, zyx in zip(keep, centres):
                volume = float(sizes[label]) * voxel_A3
                centre = np.asarray(origin_A, float) + zyx[::-1] * np.asarray(voxel_size_A, float)
                blobs.append(
                    Blob(
                        mass_kDa=volume * density_Da_per_A3 / 1000.0,
                        volume_A3=volume,
                        centre_A=tuple(float(v) for v in centre),
                        voxels=int(sizes[label]),
                        pieces=int(per_group[label]),
                    )
                )
    volume = sum(b.volume_A3 for b in blobs)
    return Difference(
        level=float(level),
        volume_A3=volume,
        mass_kDa=volume * density_Da_per_A3 / 1000.0,
        blobs=tuple(blobs),
        labels=out,
    )


def _ball(radius_A: float, voxel_size_A) -> np.ndarray:
    """Boolean (z, y, x) ellipsoid of `radius_A` on a grid of these voxel sizes (at least the centre)."""
    vs_zyx = np.asarray(voxel_size_A, float)[::-1]
    r = np.floor(radius_A / vs_zyx + 1e-9).astype(int)
    grid = np.meshgrid(*[np.arange(-k, k + 1) * v for k, v in zip(r, vs_zyx)], indexing="ij")
    return sum(g**2 for g in grid) <= radius_A**2 + 1e-9


def masked_correlation(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    """Correlation about the mean of a and b over the voxels of a boolean mask."""
    x, y = a[mask].astype(float), b[mask].astype(float)
    if x.size < 2:
        return float("nan")
    x -= x.mean()
    y -= y.mean()
    den = math.sqrt(float(x @ x) * float(y @ y))
    return float(x @ y / den) if den > 0 else float("nan")


def soft_mask(
    binary: np.ndarray, voxel_size_A, *, dilate_A: float = MASK_DILATE_A, soft_A: float = MASK_SOFT_A
) -> np.ndarray:
    """Binary mask grown by `dilate_A` (ellipsoidal, per-axis voxel sizes) and smoothed by
    a Gaussian of sigma `soft_A`; float32 in [0, 1]."""
    vs_zyx = np.asarray(voxel_size_A, float)[::-1]
    r = np.ceil(dilate_A / vs_zyx).astype(int)
    grid = np.meshgrid(*[np.arange(-k, k + 1) * v for k, v in zip(r, vs_zyx)], indexing="ij")
    ball = sum(g**2 for g in grid) <= dilate_A**2
    grown = ndimage.binary_dilation(binary, structure=ball)
    soft = ndimage.gaussian_filter(grown.astype(np.float32), sigma=soft_A / vs_zyx, mode="constant")
    return np.clip(soft, 0.0, 1.0)


def fsc(a: np.ndarray, b: np.ndarray, voxel_size_A, *, mask: np.ndarray | None = None) -> FSC:
    """Fourier shell correlation of two maps on one grid.

    a, b: (nz, ny, nx); voxel_size_A: (3,) x, y, z (anisotropic allowed).  Shells are
    rings of physical spatial frequency |k| (1/Å), of width the coarsest frequency step
    among the axes (1 / the shortest box edge in Å), up to the Nyquist frequency of the
    coarsest axis; each shell sums Re(A B*), |A|^2, |B|^2 over the half-space of
    `rfftn` (coefficients with a conjugate twin counted twice).  Crossings of 0.5 and
    0.143 are interpolated linearly in frequency; None when the curve never falls below."""
    vx, vy, vz = (float(v) for v in voxel_size_A)
    nz, ny, nx = a.shape
    if mask is not None:
        a, b = a * mask, b * mask
    A = np.fft.rfftn(a.astype(np.float64))
    B = np.fft.rfftn(b.astype(np.float64))
    kz = np.fft.fftfreq(nz, vz)[:, None, None]
    ky = np.fft.fftfreq(ny, vy)[None, :, None]
    kx = np.fft.rfftfreq(nx, vx)[None, None, :]
    step = max(1.0 / (nx * vx), 1.0 / (ny * vy), 1.0 / (nz * vz))
    nyquist = min(0.5 / vx, 0.5 / vy, 0.5 / vz)
    n_shells = int(math.floor(nyquist / step + 1e-9)) + 1
    shell = np.rint(np.sqrt(kz**2 + ky**2 + kx**2) / step).astype(np.int64)
    twin = np.full(kx.shape[-1], 2.0)
    twin[0] = 1.0
    if nx % 2 == 0:
        twin[-1] = 1.0
    weight = np.broadcast_to(twin, A.shape)
    inside = shell < n_shells
    s, w = shell[inside], weight[inside]
    cross = np.bincount(s, w * (A[inside] * np.conj(B[inside])).real, minlength=n_shells)
    pa = np.bincount(s, w * np.abs(A[inside]) ** 2, minlength=n_shells)
    pb = np.bincount(s, w * np.abs(B[inside]) ** 2, minlength=n_shells)
    with np.errstate(invalid="ignore", divide="ignore"):
        curve = cross / np.sqrt(pa * pb)
    curve = np.nan_to_num(curve[1:], nan=0.0)
    freq = np.arange(1, n_shells) * step
    return FSC(
        frequency_per_A=freq,
        fsc=curve,
        resolution_at_05_A=_crossing(freq, curve, 0.5),
        resolution_at_0143_A=_crossing(freq, curve, 0.143),
        masked=mask is not None,
    )


def _crossing(freq: np.ndarray, curve: np.ndarray, threshold: float) -> float | None:
    """Resolution (Å) where the curve first falls below `threshold`, linear in frequency."""
    below = np.flatnonzero(curve < threshold)
    if below.size == 0:
        return None
    i = int(below[0])
    if i == 0:
        return float(1.0 / freq[0])
    f0, f1, c0, c1 = freq[i - 1], freq[i], curve[i - 1], curve[i]
    f = f0 + (c0 - threshold) / (c0 - c1) * (f1 - f0)
    return float(1.0 / f)


def _round(v, digits=3):
    return None if v is None else round(float(v), digits)


def _check_positive(value, name, example):
    if not (isinstance(value, (int, float, np.floating, np.integer)) and math.isfinite(value) and value > 0):
        raise InputError(f"{name} must be a positive number, got {value!r}; e.g. {example}")


# ----------------------------------------------------------------------------- outputs
def write_compare_outputs(
    result: CompareResult, out_dir, target_map_path=None, *, pictures: bool = True, report: bool = True
) -> list:
    """Write compare.json, target_minus_source.mrc, source_minus_target.mrc,
    source_on_target.mrc, PNG pictures and report.html into the EXISTING folder
    `out_dir`; return the paths written (each written atomically)."""
    import json

    from ..io.files import write_text
    from ..io.maps import write_map

    out_dir = os.fspath(out_dir)
    if not os.path.isdir(out_dir):
        raise InputError(f"output folder {out_dir} does not exist; create it first")
    written = []

    def path(name):
        p = os.path.join(out_dir, name)
        written.append(p)
        return p

    doc = result.to_json()
    if target_map_path is not None:
        doc["params"] = dict(doc["params"], target=os.fspath(target_map_path))
    write_text(path("compare.json"), json.dumps(doc, indent=1) + "\n")
    for name, density in result.difference_maps.items():
        write_map(density, path(f"{name}.mrc"))
    write_map(result.source_on_target, path("source_on_target.mrc"))
    if pictures or report:
        from ..io import pictures as pics

        images = pics.compare_pictures(result, out_dir)
        written += images
        if report:
            from ..io.report import compare_sections, write_report

            title = "cryoalign compare"
            write_report(path("report.html"), title, compare_sections(result, images))
    return written
