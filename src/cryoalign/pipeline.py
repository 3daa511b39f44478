"""align(source, target) -> AlignResult: the one place where the stage order lives.

    1 point cloud   pointcloud.sample_points   grid points above contour + density vectors
    2 key points    keypoints.dense / detect   sampled points, or mean-shift maxima (paper)
    3 descriptors   features.describe          SHOT-style histograms of density vectors
    4 matching      match.mutual_nearest       mutual nearest neighbours
    5 coarse pose   register.coarse_poses      consistency graph, max clique, GNC-TLS
    6 fine pose     refine.robust_icp          Welsch ICP on all sampled points
    7 score         score.similarity           vector agreement x (1 - JS divergence)
    8 map refine    maprefine.refine_distinct  correlation about the mean on the maps (ranks)

Local mode replaces 4-5 by local.search: the same steps inside spherical masks
slid over the target, then ranks the distinct placements (score without JS).
"""
from __future__ import annotations

import logging
import math
import os
import time

import numpy as np
from scipy.spatial import cKDTree

from . import features, keypoints, local, maprefine, match, pointcloud, refine, register, score
from . import transform as tf
from .config import AlignConfig
from .errors import InputError
from .io import read_map
from .types import AlignResult, Candidate, DensityMap, PointCloud, Score

log = logging.getLogger(__name__)

SCREEN_POINTS = 2000   # source points used to refine every hypothesis before ranking
POLISH_TOP = 2         # hypotheses then refined on all source points
MAP_REFINE_TOP = 3     # distinct global candidates scored on the maps ...
MAP_REFINE_FRACTION = 0.5  # ... and refined there when their point score is >= this x the best's
SYMMETRY_MARGIN = 0.03  # distinct poses within 3% of the best score: an ambiguous answer
HAND_MARGIN = 0.10      # --check-hand: one hand must score 10% better than the other to decide
LOCAL_VOLUME_RATIO = 0.4   # auto mode: local when source volume / target volume is below this
DEFAULT_VOXEL_A = 5.0      # sampling interval for complexes (paper) ...
SMALL_SOURCE_VOXEL_A = 3.0  # ... and for small sources such as single chains (paper: 3 Å)
SMALL_SOURCE_A3 = 187_500.0  # "small": fewer than 1500 points at 5 Å (about 150 kDa of protein)


class Timer:
    def __init__(self):
        self.timings = {}
        self._t0 = time.perf_counter()

    def stage(self, name):
        timer = self

        class _Ctx:
            def __enter__(self):
                self.t = time.perf_counter()
                log.debug("%s ...", name)

            def __exit__(self, *exc):
                dt = time.perf_counter() - self.t
                timer.timings[name] = timer.timings.get(name, 0.0) + dt
                if exc[0] is None:
                    log.info("%s done in %.2f s", name, dt)
        return _Ctx()

    def total(self):
        return time.perf_counter() - self._t0


def as_map(m) -> DensityMap:
    if isinstance(m, DensityMap):
        return m
    if isinstance(m, (str, os.PathLike)):
        return read_map(m)
    raise InputError(f"expected a map path or DensityMap, got {type(m).__name__}")


def resolve_contour(density: DensityMap, contour, name: str) -> tuple[float, bool]:
    if contour is None:
        level = pointcloud.estimate_contour(density)
        log.info("%s contour not given: estimated %.6g from the map's background noise", name, level)
        return level, True
    contour = float(contour)
    if not math.isfinite(contour):
        raise InputError(f"{name} contour {contour} is not a finite number")
    top = float(density.data.max())
    bottom = float(density.data.min())
    if contour <= bottom:
        suggestion = pointcloud.estimate_contour(density)
        raise InputError(f"{name} contour {contour:g} is at or below the map's minimum {bottom:g}, so "
                         f"every voxel of the box would count as molecule; try --{name}-contour "
                         f"{suggestion:.4g} (or the EMDB recommended level)")
    if contour >= top:
        suggestion = pointcloud.estimate_contour(density)
        raise InputError(f"{name} contour {contour:g} is at or above the map's maximum {top:g}, so "
                         f"nothing would be kept; try --{name}-contour {suggestion:.4g} "
                         "(or the EMDB recommended level)")
    return contour, False


def _keypoint_std_A(density: DensityMap, config: AlignConfig) -> float:
    # The original's 3 Å kernel is narrower than coarse maps' voxels, where mean shift
    # then stalls on single voxels: never go below the map's own voxel size.
    return max(config.keypoint_sigma_A, config.keypoint_voxel_factor * float(density.voxel_size_A.max())) \
        * pointcloud.KERNEL_TO_STD


class Side:
    """Everything computed from one map (kept together for reuse by local search)."""

    def __init__(self, density, contour, config, timer, name, fine_target=False):
        self.density, self.contour, self.name = density, contour, name
        with timer.stage(f"{name} point cloud"):
            vec_field = pointcloud.smooth_field(density, contour, config.vector_sigma_A * pointcloud.KERNEL_TO_STD)
            self.cloud = pointcloud.sample_points(density, contour, config.voxel_A, config.vector_sigma_A,
                                                  field=vec_field)
            self.fine = None
            if fine_target:
                self.fine = pointcloud.sample_points(density, contour, config.voxel_A / 2.0,
                                                     config.vector_sigma_A, field=vec_field)
        with timer.stage(f"{name} key points"):
            if config.keypoints == "meanshift":
                key_field = pointcloud.smooth_field(density, contour, _keypoint_std_A(density, config))
                kps = keypoints.detect(key_field, self.cloud.points_A, config.merge_eps_A)
            else:
                kps = keypoints.dense(self.cloud.points_A, config.voxel_A, config.max_keypoints)
        with timer.stage(f"{name} descriptors"):
            self.features = features.describe(kps, self.cloud, config.descriptor_radius_A)
        if len(self.features) < 3:
            raise InputError(
                f"only {len(self.features)} key points found in the {name} map above its contour "
                f"({len(self.cloud)} sampled points); lower the contour or use a smaller --voxel")


def align(source, target, *, source_contour: float | None = None, target_contour: float | None = None,
          config: AlignConfig | None = None, **overrides) -> AlignResult:
    """Find the rigid transform T_target_source superimposing `source` on `target`.

    source, target: map paths or `DensityMap`s. Contours default to an estimate
    from each map's background (pass EMDB's recommended levels when you have them).
    config / overrides: `AlignConfig` fields (mode, voxel_A, top, jobs, seed, ...).
    With mode "local" (or "auto" and a source much smaller than the target) the
    candidates are ranked placements of the source inside the target.
    """
    config = (config or AlignConfig()).replace(**overrides) if overrides else (config or AlignConfig())
    timer = Timer()
    with timer.stage("read maps"):
        src_map, tgt_map = as_map(source), as_map(target)
    sc, sc_est = resolve_contour(src_map, source_contour, "source")
    tc, tc_est = resolve_contour(tgt_map, target_contour, "target")
    rng = np.random.default_rng(config.seed)

    src_volume, tgt_volume = _volume_A3(src_map, sc), _volume_A3(tgt_map, tc)
    ratio = src_volume / tgt_volume
    mode = config.mode
    if mode == "auto":
        mode = "local" if ratio < LOCAL_VOLUME_RATIO else "global"
        if mode == "local":
            log.info("source volume above contour is %.0f%% of the target's (< %.0f%%): local alignment "
                     "(ranked placements; pass --global to force a whole-map alignment)",
                     100 * ratio, 100 * LOCAL_VOLUME_RATIO)
    voxel_auto = config.voxel_A is None
    if voxel_auto:
        voxel = SMALL_SOURCE_VOXEL_A if src_volume < SMALL_SOURCE_A3 else DEFAULT_VOXEL_A
        log.info("sampling interval %.0f Å chosen from the source's volume above contour (%.0f Å^3)",
                 voxel, src_volume)
        config = config.replace(voxel_A=voxel)

    src = Side(src_map, sc, config, timer, "source")
    tgt = Side(tgt_map, tc, config, timer, "target", fine_target=True)
    stats = dict(source_points=len(src.cloud), target_points=len(tgt.cloud),
                 source_keypoints=len(src.features), target_keypoints=len(tgt.features),
                 source_volume_A3=src_volume, target_volume_A3=tgt_volume, volume_ratio=ratio)

    if mode == "local":
        candidates, local_stats = local.search(src, tgt, config=config, timer=timer)
        stats.update(local_stats)
        if not candidates:
            raise InputError(
                f"no region of the target can hold the source ({local_stats['masks_considered']} masks "
                "tried, each with fewer points than the source): check the contours, or align globally "
                "with --global")
    else:
        with timer.stage("matching"):
            matches = match.mutual_nearest(src.features, tgt.features, k=config.match_k)
        with timer.stage("coarse pose"):
            poses = register.coarse_poses(matches, config.noise_A, count=config.max_hypotheses)
            if not poses:
                log.warning("no consistent correspondences; starting from the centroid alignment")
                T0 = tf.make(np.eye(3), tgt.cloud.points_A.mean(0) - src.cloud.points_A.mean(0))
                poses = [register.Pose(T_target_source=T0)]
        candidates = _refine_and_rank(src.cloud, tgt, poses, config, timer, rng)
        if config.map_refine:
            candidates = _map_refine(candidates, src, tgt, config, timer)
        candidates = candidates[:config.top]
        stats.update(matches=len(matches), hypotheses=len(poses), coarse_inliers=[p.inliers for p in poses])
    best = candidates[0]
    equivalent = _equivalent_ranks(candidates)
    if equivalent:
        log.info("ambiguous: %d other distinct pose(s) score within %.0f%% of the best (symmetry or "
                 "identical copies); all are listed in the candidates", len(equivalent), 100 * SYMMETRY_MARGIN)
    params = dict(config.as_dict(), source_contour=sc, target_contour=tc,
                  source_contour_estimated=sc_est, target_contour_estimated=tc_est,
                  voxel_estimated=voxel_auto, source=src_map.path, target=tgt_map.path, mode=mode)
    hand, mirrored_T = None, None
    if config.check_hand:
        hand, mirrored_T = _check_hand(src_map, tgt_map, sc, tc, config.replace(mode=mode), best, timer)
    timer.timings["total"] = timer.total()
    return AlignResult(T_target_source=best.T_target_source, score=best.score,
                       candidates=tuple(candidates), timings_s=dict(timer.timings), params=params, stats=stats,
                       equivalent=equivalent, hand=hand, mirrored_T=mirrored_T)


def _equivalent_ranks(candidates) -> tuple:
    """1-based ranks of the distinct candidates whose score (of the same kind as the best's)
    is within SYMMETRY_MARGIN (relative) of the best."""
    best = candidates[0].score
    floor = best.value - SYMMETRY_MARGIN * abs(best.value)
    return tuple(k for k, c in enumerate(candidates[1:], 2)
                 if (c.score.correlation is None) == (best.correlation is None) and c.score.value >= floor)


def mirror(density: DensityMap) -> tuple[DensityMap, np.ndarray]:
    """The map reflected through the plane x = its box centre, and the (improper) 4x4
    F taking a point of the original map's world frame to its image in the mirrored map."""
    flipped = DensityMap(data=np.ascontiguousarray(density.data[:, :, ::-1]),
                         voxel_size_A=density.voxel_size_A.copy(), origin_A=density.origin_A.copy(),
                         path=density.path)
    centre_x = density.origin_A[0] + (density.data.shape[2] - 1) * density.voxel_size_A[0] / 2.0
    F = np.eye(4)
    F[0, 0] = -1.0
    F[0, 3] = 2.0 * centre_x
    return flipped, F


def _check_hand(src_map, tgt_map, sc, tc, config, best, timer):
    """Align the mirror image of the source too; compare the scores."""
    log.info("hand check: aligning the mirror image of the source ...")
    flipped, F = mirror(src_map)
    t0 = time.perf_counter()
    sub = align(flipped, tgt_map, source_contour=sc, target_contour=tc,
                config=config.replace(check_hand=False))
    timer.timings["hand check"] = time.perf_counter() - t0
    same, mirrored = best.score.value, sub.score.value
    gap = HAND_MARGIN * max(abs(same), abs(mirrored))
    verdict = "mirrored" if mirrored > same + gap else "same" if same > mirrored + gap else "unclear"
    log.info("hand: %s (score %.3f, mirrored %.3f)", verdict, same, mirrored)
    hand = {"verdict": verdict, "score": same, "mirrored_score": mirrored, "margin": HAND_MARGIN}
    return hand, (sub.T_target_source @ F if verdict == "mirrored" else None)


def _volume_A3(density: DensityMap, contour: float) -> float:
    """Volume (Å^3) enclosed by the contour."""
    count = 0
    for z in range(0, density.data.shape[0], 64):        # by slabs: no full-size boolean copy
        count += int(np.count_nonzero(density.data[z:z + 64] >= contour))
    return count * float(np.prod(density.voxel_size_A))


def _refine_and_rank(src_cloud: PointCloud, tgt: Side, poses, config: AlignConfig, timer, rng):
    """Stages 6-7 for every coarse hypothesis; candidates ranked best first, near-duplicates merged."""
    tree_fine = cKDTree(tgt.fine.points_A)
    tree = cKDTree(tgt.cloud.points_A)
    refined = []
    pts = src_cloud.points_A
    screen = pts[:: max(1, -(-len(pts) // SCREEN_POINTS))]

    def agreement(T):
        return score.vector_agreement(src_cloud, tgt.cloud, T, cutoff_A=config.score_pair_cutoff_A,
                                      cos_min=config.score_vector_cos, target_tree=tree)[0]

    with timer.stage("fine pose"):
        # every hypothesis on a subsample, then the best few polished on all points
        for i, pose in enumerate(poses):
            fine = refine.robust_icp(screen, tree_fine, pose.T_target_source, scale_A=config.voxel_A,
                                     iterations=config.icp_iterations)
            refined.append([agreement(fine.T_target_source), i, fine.T_target_source])
        refined.sort(key=lambda r: (-r[0], r[1]))
        if len(screen) < len(pts):
            for r in refined[:POLISH_TOP]:
                r[2] = refine.robust_icp(pts, tree_fine, r[2], scale_A=config.voxel_A,
                                         iterations=config.icp_iterations).T_target_source
                r[0] = agreement(r[2])
    refined.sort(key=lambda r: (-r[0], r[1]))
    kept = []
    probe = src_cloud.points_A[:: max(1, len(src_cloud) // 500)]
    for agree, i, T in refined:
        if any(tf.rmsd(T, K, probe) < 2.0 for _, _, K in kept):
            continue
        kept.append((agree, i, T))
    candidates = []
    with timer.stage("score"):
        for agree, i, T in kept:
            s = score.similarity(src_cloud, tgt.cloud, T, cutoff_A=config.score_pair_cutoff_A,
                                 cos_min=config.score_vector_cos, js_samples=config.js_samples,
                                 rng=np.random.default_rng([config.seed, i]), target_tree=tree)
            candidates.append(Candidate(T_target_source=T, score=s, source=f"clique {i + 1}"))
    candidates.sort(key=lambda c: -c.score.similarity)
    return candidates


def _map_refine(candidates, src: Side, tgt: Side, config: AlignConfig, timer):
    """Take the first MAP_REFINE_TOP distinct candidates to the maps (refined there when their
    point score is at least MAP_REFINE_FRACTION of the best's, else only scored); they come
    first, best correlation first (those landing on an earlier one are dropped); the rest
    follow in point-score order, without a correlation."""
    with timer.stage("map refine"):
        sample = maprefine.sample_source(src.density, src.contour)
        centre = src.cloud.points_A.mean(0)
        floor = MAP_REFINE_FRACTION * candidates[0].score.similarity
        fits = maprefine.refine_distinct([c.T_target_source for c in candidates], sample, tgt.density, centre,
                                         want=MAP_REFINE_TOP, max_shift_A=local.DEDUP_A,
                                         max_angle_deg=local.DEDUP_DEG,
                                         refine_mask=[c.score.similarity >= floor for c in candidates])
        tree = cKDTree(tgt.cloud.points_A)
        out = []
        for i, fit in fits:
            T = fit.T_target_source
            s = score.similarity(src.cloud, tgt.cloud, T, cutoff_A=config.score_pair_cutoff_A,
                                 cos_min=config.score_vector_cos, js_samples=config.js_samples,
                                 rng=np.random.default_rng([config.seed, i]), target_tree=tree)
            s = Score(similarity=s.similarity, vector_agreement=s.vector_agreement,
                      js_divergence=s.js_divergence, overlap=s.overlap, correlation=fit.correlation)
            out.append(Candidate(T_target_source=T, score=s, source=candidates[i].source + " + map",
                                 correlation_before=fit.correlation_before))
        tried = max(i for i, _ in fits) + 1 if fits else 0
        out += [c for c in candidates[tried:]
                if not any(tf.same_pose(c.T_target_source, o.T_target_source, centre,
                                        max_shift_A=local.DEDUP_A, max_angle_deg=local.DEDUP_DEG) for o in out)]
    return out
