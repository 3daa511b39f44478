"""align(source, target) -> AlignResult: the one place where the stage order lives.

prepare        prepare.prepare        stages 1-3 of each map: point cloud with density
                                      vectors, key points, descriptors (+ map sample)
choose         choose_mode_and_sampling   global or local; sampling interval
coarse poses   coarse_hypotheses      global: mutual nearest neighbours, consistency
                                      graph, max cliques, GNC-TLS (stages 4-5);
                                      local: the same inside spherical masks (local.py)
rank           rank.rank              ICP, point score, map refinement, one rule for
                                      "the same pose" (stages 6-8)
hand check     check_hand             the mirror image aligned the same way
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace

import numpy as np

from .. import transform as tf
from ..config import AlignConfig
from ..errors import InputError
from ..io.robust import without_outliers
from ..timing import Timer
from ..types import AlignResult, DensityMap
from . import symmetry
from .confidence import assess
from .prepare import PreparedMap, prepare, resolve_contour
from .rank import Hypothesis, distinct, rank

log = logging.getLogger(__name__)


def align(
    source,
    target,
    *,
    source_contour: float | None = None,
    target_contour: float | None = None,
    config: AlignConfig | None = None,
    stored: dict | None = None,
    **overrides,
) -> AlignResult:
    """Find the rigid transform T_target_source superimposing `source` on `target`.

    source, target: map paths or `DensityMap`s. Contours default to an estimate
    from each map's background (pass EMDB's recommended levels when you have them).
    config / overrides: `AlignConfig` fields (mode, sampling_A, top, jobs, seed, ...).
    With mode "local" (or "auto" and a source much smaller than the target) the
    candidates are ranked placements of the source inside the target.
    stored: {"source": .npz, "target": .npz} (either may be None): maps already prepared
    (a catalogue's entries, `PreparedMap.save`), loaded instead of prepared again when
    they were prepared from exactly these voxel values with these parameters; the roles
    loaded are listed in `params["from_catalogue"]`.
    """
    config = (config or AlignConfig()).replace(**overrides)
    timer = Timer()
    if isinstance(source, DensityMap) and isinstance(target, DensityMap):
        src_map, tgt_map = source, target
    else:
        from ..io.emdb import load_map

        with timer.stage("read maps"):
            src_map, source_contour = load_map(_checked(source), source_contour, "source_contour")
            tgt_map, target_contour = load_map(_checked(target), target_contour, "target_contour")
    src_map, tgt_map = without_outliers(src_map), without_outliers(tgt_map)
    src_region, sc_estimated = resolve_contour(src_map, source_contour, "source_contour")
    tgt_region, tc_estimated = resolve_contour(tgt_map, target_contour, "target_contour")
    config, chosen = choose_mode_and_sampling(src_region.volume_A3, tgt_region.volume_A3, config)
    stored = stored or {}
    src_stored = _stored(stored.get("source"), src_map, src_region.contour, "source", config)
    tgt_stored = _stored(stored.get("target"), tgt_map, tgt_region.contour, "target", config)
    src = src_stored or prepare(
        src_map,
        src_region.contour,
        config,
        region=src_region,
        name="source",
        contour_estimated=sc_estimated,
        timer=timer,
    )
    tgt = tgt_stored or prepare(
        tgt_map,
        tgt_region.contour,
        config,
        region=tgt_region,
        name="target",
        contour_estimated=tc_estimated,
        fine=True,
        timer=timer,
    )
    result = align_prepared(src, tgt, config, timer=timer, sampling_chosen=chosen)
    if config.check_hand:
        result = check_hand(result, src_map, tgt, config, timer)
    if stored:
        loaded = [role for role, p in (("source", src_stored), ("target", tgt_stored)) if p is not None]
        result = replace(result, params=dict(result.params, from_catalogue=loaded))
    return result


def _stored(npz: str | None, density: DensityMap, contour: float, role: str, config: AlignConfig) -> PreparedMap | None:
    """The prepared map saved in `npz` with `density` attached, or None when there is none or
    it was prepared from other voxel values (a catalogue entry whose map had outliers
    that alignment clips) or at another contour: then the map is prepared again."""
    if npz is None:
        return None
    from .prepare import load, map_hash

    prepared = load(npz, config, density=density)
    if prepared.map_hash != map_hash(density) or prepared.contour != contour:
        log.info(
            "%s: its stored features were prepared from other voxel values or at another contour: prepared again", role
        )
        return None
    return replace(prepared, name=role)


def align_prepared(
    src: PreparedMap,
    tgt: PreparedMap,
    config: AlignConfig,
    *,
    timer: Timer | None = None,
    sampling_chosen: bool = False,
) -> AlignResult:
    """Align two prepared maps (`config.mode` "global" or "local"; the target prepared
    with fine=True and its map attached when map refinement is on)."""
    timer = timer or Timer()
    if config.mode not in ("global", "local"):
        raise InputError(f"align_prepared needs mode 'global' or 'local', got {config.mode!r}")
    candidates, stats = candidates_for(src, tgt, config, timer)
    return _result(src, tgt, candidates, config, timer, stats, sampling_chosen)


def candidates_for(
    src: PreparedMap, tgt: PreparedMap, config: AlignConfig, timer: Timer | None = None
) -> tuple[list, dict]:
    """Coarse poses, ranked; and a wider search when the answer is weak (`wide_search`).
    Shared by `align` and chain fitting."""
    timer = timer or Timer()
    from . import exhaustive

    if not config.descriptors:  # the exhaustive scan alone
        candidates, scanned = exhaustive.widen(src, tgt, [], config, timer)
        return candidates, {"exhaustive": scanned}
    hypotheses, stats = coarse_hypotheses(src, tgt, config, timer)
    candidates = rank(src, tgt, hypotheses, config, with_js=config.mode == "global", timer=timer)
    candidates = symmetry.annotate(src, tgt, candidates, config)
    verdict = assess(candidates, config.mode, config)["verdict"]
    if config.wide_search == "always" or (config.wide_search == "auto" and verdict == "low"):
        if config.wide_search == "auto" and _too_big_to_widen(src, tgt, config):
            log.info(
                "the answer is weak, but the maps are too large for the wider search (over %d source "
                "points or %d fine target points); try a larger sampling_A",
                config.wide_max_source_points,
                config.wide_max_target_points,
            )
            stats["wide_search"] = {"ran": False, "reason": "maps too large"}
        else:
            candidates, stats["wide_search"] = _wider(src, tgt, candidates, config, timer, verdict)
            candidates = symmetry.annotate(src, tgt, candidates, config)
    if exhaustive.wanted(
        config,
        assess(candidates, config.mode, config)["verdict"],
        src.volume_A3 / tgt.volume_A3,
        exhaustive.radius_ratio(src, tgt),
    ):
        candidates, stats["exhaustive"] = exhaustive.widen(src, tgt, candidates, config, timer)
        candidates = symmetry.annotate(src, tgt, candidates, config)
    tied = _equivalent_ranks(candidates, config.symmetry_margin)
    exact = [k for k in tied if symmetry.is_exact(candidates[k - 1], config)]
    if exact:
        stats["symmetry"] = {"exact_mates": exact}
    if config.map_refine and len(exact) < len(tied) and src.density is not None:
        with timer.stage("tie break"):
            candidates, stats["tie_break"] = _break_ties(src, tgt, candidates, config)
        candidates = symmetry.annotate(src, tgt, candidates, config)
    elif exact:
        log.info(
            "%d pose(s) tie with the best on exact copies of the same density (symmetry): "
            "equivalent answers, no tie break",
            len(exact),
        )
    return candidates, stats


def _break_ties(src, tgt, candidates, config):
    """Distinct poses scoring within the ambiguity margin of the best: compare them again
    on every source voxel above contour (up to `tie_break_points`), refined there, and reorder them
    by that correlation.  Whatever still ties stays flagged."""
    from . import maprefine

    tied = [0] + [k - 1 for k in _equivalent_ranks(candidates, config.symmetry_margin)]
    full = maprefine.sample_source(src.density, src.contour, max_points=config.tie_break_points)
    rescored = []
    for i in tied:
        c = candidates[i]
        fit = maprefine.refine(full, tgt.density, c.T_target_source, rounds=2, iterations=20)
        rescored.append(
            replace(c, T_target_source=fit.T_target_source, score=replace(c.score, correlation=fit.correlation))
        )
    rescored.sort(key=lambda c: -c.score.value)
    rest = [c for i, c in enumerate(candidates) if i not in tied]
    log.info(
        "tie break: %d poses within %.0f%% of the best compared on all %d source voxels above contour",
        len(tied),
        100 * config.symmetry_margin,
        len(full.values),
    )
    return rescored + rest, {
        "poses": len(tied),
        "voxels": int(len(full.values)),
        "winner_changed": rescored[0].found_by != candidates[0].found_by,
    }


def _too_big_to_widen(src, tgt, config) -> bool:
    return len(src.cloud) > config.wide_max_source_points or len(tgt.fine) > config.wide_max_target_points


def _wider(src, tgt, candidates, config, timer, verdict):
    """Add map-optimised placements found without descriptors (recall.py) and rank again."""
    from . import recall

    if verdict == "low":
        log.info("the best candidate is weak (confidence low): searching more widely")
    sites = None
    if config.mode == "local":
        pts = tgt.cloud.points_A
        sites = pts[np.linspace(0, len(pts) - 1, num=min(8, len(pts))).astype(int)]
    with timer.stage("wide search"):
        extra = recall.placements(src, tgt, config, sites_A=sites)
    if not extra:
        return candidates, {"ran": True, "kept": 0}
    more = rank(src, tgt, extra, config, with_js=config.mode == "global", timer=timer)
    merged = sorted(candidates + more, key=lambda c: -c.score.value)
    merged = distinct(merged, src.centre_A, config, limit=config.top)
    won = merged[0].found_by.startswith("wide search")
    if won:
        log.info(
            "the wider search found a better pose (score %.3f, was %.3f)",
            merged[0].score.value,
            candidates[0].score.value,
        )
    return merged, {"ran": True, "kept": len(more), "answer_from_wide_search": won}


def choose_mode_and_sampling(
    src_volume_A3: float, tgt_volume_A3: float, config: AlignConfig
) -> tuple[AlignConfig, bool]:
    """The configuration with `mode` decided (auto: local when the source's volume above
    contour is under `local_volume_ratio` of the target's) and `sampling_A` set (when not
    given: `small_source_sampling_A` for sources under `small_source_A3`, else
    `default_sampling_A`); and whether the sampling was chosen here."""
    ratio = src_volume_A3 / tgt_volume_A3
    mode = config.mode
    if mode == "auto":
        mode = "local" if ratio < config.local_volume_ratio else "global"
        if mode == "local":
            log.info(
                "source volume above contour is %.0f%% of the target's (< %.0f%%): local alignment "
                "(ranked placements; pass mode='global' to force a whole-map alignment)",
                100 * ratio,
                100 * config.local_volume_ratio,
            )
    if ratio > 1.0 and mode == "local":  # a whole-map alignment has no part and whole to swap
        log.warning(
            "the source's volume above contour is %.1f times the target's: a local alignment "
            "places the source (the part) inside the target (the whole); did you mean to swap "
            "the two maps?",
            ratio,
        )
    chosen = config.sampling_A is None
    if chosen:
        small = src_volume_A3 < config.small_source_A3
        sampling = config.small_source_sampling_A if small else config.default_sampling_A
        log.info(
            "sampling interval %g Å chosen from the source's volume above contour (%.0f Å^3)", sampling, src_volume_A3
        )
        config = config.replace(sampling_A=sampling)
    return config.replace(mode=mode), chosen


def coarse_hypotheses(
    src: PreparedMap, tgt: PreparedMap, config: AlignConfig, timer: Timer
) -> tuple[list[Hypothesis], dict]:
    """Coarse poses: from descriptor matches over the whole maps (global) or inside
    spherical masks over the target (local)."""
    if config.mode == "local":
        from . import local

        hypotheses, stats = local.coarse_hypotheses(src, tgt, config, timer)
        if not hypotheses:
            raise InputError(
                f"no region of the target can hold the source ({stats['masks_considered']} masks tried, "
                "each with fewer points than the source): check the contours, or align globally "
                "(mode='global')"
            )
        return hypotheses, stats
    from . import match, register

    with timer.stage("matching"):
        matches = match.mutual_nearest(src.features, tgt.features, k=config.match_k)
    with timer.stage("coarse pose"):
        poses = register.coarse_poses(matches, config.noise_A, count=config.max_hypotheses)
    if not poses:
        log.warning("no consistent correspondences; starting from the centroid alignment")
        poses = [register.Pose(T_target_source=tf.make(np.eye(3), tgt.centre_A - src.centre_A))]
    hypotheses = [
        Hypothesis(T_target_source=p.T_target_source, found_by=f"clique {i + 1}", key=(i,)) for i, p in enumerate(poses)
    ]
    return hypotheses, dict(matches=len(matches), hypotheses=len(poses), coarse_inliers=[p.inliers for p in poses])


def _result(src, tgt, candidates, config, timer, search_stats, sampling_chosen) -> AlignResult:
    best = candidates[0]
    equivalent = _equivalent_ranks(candidates, config.symmetry_margin)
    if equivalent:
        log.info(
            "ambiguous: %d other distinct pose(s) score within %.0f%% of the best (symmetry or "
            "identical copies); all are listed in the candidates",
            len(equivalent),
            100 * config.symmetry_margin,
        )
    stats = dict(
        source_points=len(src.cloud),
        target_points=len(tgt.cloud),
        source_keypoints=len(src.features),
        target_keypoints=len(tgt.features),
        source_volume_A3=src.volume_A3,
        target_volume_A3=tgt.volume_A3,
        volume_ratio=src.volume_A3 / tgt.volume_A3,
        **search_stats,
    )
    params = dict(
        config.as_dict(),
        source_contour=src.contour,
        target_contour=tgt.contour,
        source_contour_estimated=src.contour_estimated,
        target_contour_estimated=tgt.contour_estimated,
        sampling_chosen=sampling_chosen,
        source=_path(src),
        target=_path(tgt),
    )
    timer.timings["total"] = timer.total()
    return AlignResult(
        T_target_source=best.T_target_source,
        score=best.score,
        candidates=tuple(candidates),
        timings_s=dict(timer.timings),
        params=params,
        stats=stats,
        equivalent=equivalent,
        confidence=assess(candidates, config.mode, config),
    )


def _path(prepared: PreparedMap):
    return prepared.density.path if prepared.density is not None else prepared.name


def _equivalent_ranks(candidates, margin: float) -> tuple:
    """1-based ranks of the distinct candidates whose score (of the same kind as the best's)
    is within `margin` (relative) of the best."""
    best = candidates[0].score
    floor = best.value - margin * abs(best.value)
    return tuple(
        k
        for k, c in enumerate(candidates[1:], 2)
        if (c.score.correlation is None) == (best.correlation is None) and c.score.value >= floor
    )


def _checked(m):
    if isinstance(m, (DensityMap, str, os.PathLike)):
        return m
    raise InputError(f"expected a map path, an EMDB ID or a DensityMap, got {type(m).__name__}")


def as_map(m) -> DensityMap:
    """A map path, an EMDB ID ("EMD-1234") or a `DensityMap`, as a `DensityMap`."""
    from ..io.emdb import load_map

    return load_map(_checked(m))[0]


def mirror(density: DensityMap) -> tuple[DensityMap, np.ndarray]:
    """The map reflected through the plane x = its box centre, and the (improper) 4x4
    F taking a point of the original map's world frame to its image in the mirrored map."""
    flipped = DensityMap(
        data=np.ascontiguousarray(density.data[:, :, ::-1]),
        voxel_size_A=density.voxel_size_A.copy(),
        origin_A=density.origin_A.copy(),
        path=density.path,
    )
    centre_x = density.origin_A[0] + (density.data.shape[2] - 1) * density.voxel_size_A[0] / 2.0
    F = np.eye(4)
    F[0, 0] = -1.0
    F[0, 3] = 2.0 * centre_x
    return flipped, F


def check_hand(
    result: AlignResult, src_map: DensityMap, tgt: PreparedMap, config: AlignConfig, timer: Timer
) -> AlignResult:
    """Align the mirror image of the source the same way and compare the scores: the
    verdict is "mirrored" when it scores `hand_margin` better, "same" when worse, else
    "unclear"."""
    log.info("hand check: aligning the mirror image of the source ...")
    flipped, F = mirror(src_map)
    with timer.stage("hand check"):
        src = prepare(flipped, result.params["source_contour"], config, name="mirrored source", timer=Timer())
        sub = align_prepared(src, tgt, config, timer=Timer())
    same, mirrored = result.score.value, sub.score.value
    gap = config.hand_margin * max(abs(same), abs(mirrored))
    verdict = "mirrored" if mirrored > same + gap else "same" if same > mirrored + gap else "unclear"
    log.info("hand: %s (score %.3f, mirrored %.3f)", verdict, same, mirrored)
    hand = {"verdict": verdict, "score": same, "mirrored_score": mirrored, "margin": config.hand_margin}
    timings = dict(result.timings_s, **{"hand check": timer.timings["hand check"]})
    timings["total"] = timer.total()
    return replace(
        result,
        hand=hand,
        timings_s=timings,
        mirrored_T_target_source=sub.T_target_source @ F if verdict == "mirrored" else None,
    )
