"""Local alignment: place a part (sub-complex, single chain) inside a larger map.

Matching the source's descriptors against the whole target fails when the
source is small: the target's many descriptors swamp the few source queries.
So, as in the published method, spherical masks slide over the target
(radius 1.1 x the source's diameter / 2, step radius / 2) and each mask is
solved as a small global problem.  What is done once rather than per mask:

- the source and target descriptors (the target's on the whole map, so key
  points near a mask's rim see their full neighbourhood);
- each source descriptor's TOP_K most similar target descriptors, and each
  target descriptor's most similar source one (one blocked matrix product):
  a source key point's best match inside a mask is the first of its TOP_K that
  lies in the mask (exact; only rows with none inside are recomputed), and the
  match is mutual when that target key point's best source is the same point;
- the k-d trees used by the refinement and the score.

Masks that cannot hold the source (fewer sampled points than a fraction of the
source's, or too few key points) are skipped.  Each kept mask gives a few
coarse poses (consistency-graph cliques, GNC-TLS), each pulled in by a short
ICP on a subsample and scored; the best distinct poses over all masks are then
refined on all points and ranked by vector agreement (no JS term: the target
holds more than the source).  Masks run in worker processes; each mask's work
depends only on its index, so the results do not depend on how many run.
"""
from __future__ import annotations

import logging
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from . import maprefine, refine, register, score
from . import transform as tf
from .types import Candidate, Features, Matches, PointCloud, Score

log = logging.getLogger(__name__)

RADIUS_FACTOR = 1.1           # mask radius = factor x source diameter / 2 (paper)
MIN_MASK_POINTS = 100         # paper's code skips masks with <= 100 points ...
MIN_MASK_KEYPOINTS = 10       # ... or <= 10 key points
MIN_MASK_FRACTION = 0.3       # and we skip masks holding < 30% of the source's point count
MASK_HYPOTHESES = 3           # coarse poses per mask
SCREEN_POINTS = 600           # source points for scoring each mask's coarse poses
FINAL_SCREEN_POINTS = 2000    # source points for refining the best distinct poses ...
POLISH_TOP = 2                # ... of which the leaders are then refined on all points
MAP_REFINE_FRACTION = 0.8     # placements refined on the maps: agreement >= this x the best's,
MAP_REFINE_MAX = 5            # at most this many (the others are scored on the maps where they are)
DEDUP_A = 3.0                 # poses closer than this (centroid shift) ...
DEDUP_DEG = 10.0              # ... and this (rotation angle) are merged
TOP_K = 64                    # most similar target descriptors kept per source descriptor
_BLOCK = 2048


def source_diameter(points_A: np.ndarray, max_points: int = 3000) -> float:
    """Largest distance between two of the source's points (on a subsample)."""
    pts = points_A[:: max(1, -(-len(points_A) // max_points))]
    centre = pts.mean(0)
    far = pts[np.argmax(((pts - centre) ** 2).sum(1))]
    far2 = pts[np.argmax(((pts - far) ** 2).sum(1))]
    # two sweeps give a good lower bound; finish with the exact value on the subsample in blocks
    best = float(np.linalg.norm(far2 - far))
    for s in range(0, len(pts), 1024):
        d2 = ((pts[s:s + 1024, None, :] - pts[None, :, :]) ** 2).sum(2)
        best = max(best, float(np.sqrt(d2.max())))
    return best


def mask_centres(target_points_A: np.ndarray, radius_A: float, step_A: float) -> np.ndarray:
    """Centres of a cubic grid (spacing step) covering the target points' bounding box."""
    lo, hi = target_points_A.min(0), target_points_A.max(0)
    n = np.maximum(1, np.ceil((hi - lo) / step_A).astype(int) + 1)
    start = (lo + hi) / 2.0 - (n - 1) * step_A / 2.0     # grid centred on the box
    axes = [start[a] + step_A * np.arange(n[a]) for a in range(3)]
    g = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    return g


@dataclass(frozen=True)
class MaskPlan:
    radius_A: float
    step_A: float
    centres_A: np.ndarray        # (M, 3) kept masks
    keypoint_index: list         # per kept mask: indices of target key points inside it
    considered: int              # masks on the grid before skipping


def plan_masks(src_cloud: PointCloud, tgt_cloud: PointCloud, tgt_features: Features) -> MaskPlan:
    """Mask radius and step from the source's size; keep the masks that could hold it."""
    radius = RADIUS_FACTOR * source_diameter(src_cloud.points_A) / 2.0
    step = radius / 2.0
    centres = mask_centres(tgt_cloud.points_A, radius, step)
    counts = cKDTree(tgt_cloud.points_A).query_ball_point(centres, radius, return_length=True)
    need = max(MIN_MASK_POINTS, MIN_MASK_FRACTION * len(src_cloud))
    # a mask smaller than needed everywhere (tiny target): keep its fullest masks
    need = min(need, 0.9 * counts.max())
    ok = counts > need
    kp_tree = cKDTree(tgt_features.keypoints_A)
    kept_c, kept_i = [], []
    for c in centres[ok]:
        idx = np.array(sorted(kp_tree.query_ball_point(c, radius)), dtype=np.int64)
        if len(idx) > MIN_MASK_KEYPOINTS:
            kept_c.append(c)
            kept_i.append(idx)
    return MaskPlan(radius_A=radius, step_A=step, centres_A=np.array(kept_c).reshape(-1, 3),
                    keypoint_index=kept_i, considered=len(centres))


@dataclass
class _Shared:
    """Read-only inputs of every mask's search (inherited by worker processes)."""
    src_cloud: PointCloud
    src_features: Features
    tgt_cloud: PointCloud
    tgt_features: Features
    tgt_fine_tree: cKDTree
    tgt_tree: cKDTree
    top_index: np.ndarray             # (Ns, K) target descriptors by decreasing similarity
    top_similarity: np.ndarray        # (Ns, K) their similarities
    best_source_of_target: np.ndarray  # (Nt,) argmax over source descriptors
    plan: MaskPlan
    noise_A: float
    voxel_A: float
    cutoff_A: float
    cos_min: float
    screen: np.ndarray                # indices of source points used per mask


_SHARED: _Shared | None = None


def _init_worker(shared: _Shared) -> None:
    global _SHARED
    _SHARED = shared


def nearest_tables(a: np.ndarray, b: np.ndarray, k: int = TOP_K):
    """For unit descriptors a (Ns, D), b (Nt, D): each row of a's k most similar rows of b
    (sorted by decreasing similarity, ties to the lower index) with the similarities,
    and each row of b's most similar row of a."""
    a = a.astype(np.float32)
    b = b.astype(np.float32)
    k = min(k, len(b))
    top_i = np.empty((len(a), k), np.int64)
    top_s = np.empty((len(a), k), np.float32)
    best_src = np.zeros(len(b), np.int64)
    best_val = np.full(len(b), -np.inf, np.float32)
    for s in range(0, len(a), _BLOCK):
        sim = a[s:s + _BLOCK] @ b.T
        part = np.argpartition(-sim, k - 1, axis=1)[:, :k] if k < sim.shape[1] else \
            np.tile(np.arange(sim.shape[1]), (len(sim), 1))
        psim = np.take_along_axis(sim, part, 1)
        order = np.lexsort((part, -psim), axis=1)
        top_i[s:s + _BLOCK] = np.take_along_axis(part, order, 1)
        top_s[s:s + _BLOCK] = np.take_along_axis(psim, order, 1)
        col = np.argmax(sim, axis=0)                      # first (lowest) row on ties
        val = sim[col, np.arange(sim.shape[1])]
        better = val > best_val
        best_src[better] = col[better] + s
        best_val[better] = val[better]
    return top_i, top_s, best_src


def _mask_matches(sh: _Shared, k: int) -> Matches:
    """Mutual nearest neighbours between the source and the target key points in mask k."""
    cols = sh.plan.keypoint_index[k]
    inside = np.zeros(len(sh.tgt_features), bool)
    inside[cols] = True
    hit = inside[sh.top_index]
    first = np.argmax(hit, axis=1)
    rows = np.arange(len(hit))
    j = sh.top_index[rows, first]
    best = sh.top_similarity[rows, first].astype(np.float32)
    missing = np.flatnonzero(~hit[rows, first])
    if len(missing):      # none of the top K inside the mask: exact search over the mask
        sim = sh.src_features.descriptors[missing].astype(np.float32) @ \
            sh.tgt_features.descriptors[cols].astype(np.float32).T
        jl = np.argmax(sim, axis=1)
        j[missing] = cols[jl]
        best[missing] = sim[np.arange(len(missing)), jl]
    i = rows
    mutual = sh.best_source_of_target[j] == i
    if mutual.sum() < register.MIN_CLIQUE:
        mutual[:] = True
    i, j, best = i[mutual], j[mutual], best[mutual]
    d = np.sqrt(np.maximum(0.0, 2.0 - 2.0 * best.astype(float)))
    order = np.lexsort((j, i, d))
    return Matches(sh.src_features.keypoints_A[i[order]], sh.tgt_features.keypoints_A[j[order]], d[order])


def _agreement(sh: _Shared, T: np.ndarray, idx=None) -> float:
    cloud = sh.src_cloud
    if idx is not None:
        cloud = PointCloud(cloud.points_A[idx], cloud.vectors[idx], cloud.density[idx], cloud.spacing_A)
    return score.vector_agreement(cloud, sh.tgt_cloud, T, cutoff_A=sh.cutoff_A, cos_min=sh.cos_min,
                                  target_tree=sh.tgt_tree)[0]


def _search_mask(k: int) -> list[tuple[float, int, int, np.ndarray]]:
    """Coarse poses of mask k scored on a subsample: [(agreement, k, h, T)].  (A short ICP
    per pose here gave the same placements on the public sets at twice the cost.)"""
    sh = _SHARED
    matches = _mask_matches(sh, k)
    return [(_agreement(sh, pose.T_target_source, sh.screen), k, h, pose.T_target_source)
            for h, pose in enumerate(register.coarse_poses(matches, sh.noise_A, count=MASK_HYPOTHESES))]


def _search_chunk(ks) -> list:
    out = []
    for k in ks:
        out.extend(_search_mask(int(k)))
    return out


def default_jobs() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def distinct(poses, probe_A: np.ndarray, *, max_shift_A: float = DEDUP_A, max_angle_deg: float = DEDUP_DEG):
    """Keep poses (sorted best first; items (..., T) with T last) that differ from every
    kept one by more than `max_shift_A` at the probe centroid or `max_angle_deg`."""
    centre = probe_A.mean(0)
    kept = []
    for item in poses:
        if not any(tf.same_pose(item[-1], other[-1], centre, max_shift_A=max_shift_A,
                                max_angle_deg=max_angle_deg) for other in kept):
            kept.append(item)
    return kept


def search(src, tgt, *, config, timer) -> tuple[list[Candidate], dict]:
    """Ranked local placements of side `src` inside side `tgt` (pipeline.Side objects:
    cloud, features, density, contour; tgt also its fine cloud).  At most `config.top`
    candidates, best first, and search statistics."""
    top, jobs = config.top, config.jobs
    src_cloud, tgt_cloud = src.cloud, tgt.cloud
    with timer.stage("mask plan"):
        plan = plan_masks(src_cloud, tgt_cloud, tgt.features)
        log.info("local search: mask radius %.1f Å, step %.1f Å, %d of %d masks can hold the source",
                 plan.radius_A, plan.step_A, len(plan.centres_A), plan.considered)
        top_i, top_s, best_src = nearest_tables(src.features.descriptors, tgt.features.descriptors)
        n = len(src_cloud)
        screen = np.arange(0, n, max(1, -(-n // SCREEN_POINTS)))
        shared = _Shared(src_cloud=src_cloud, src_features=src.features, tgt_cloud=tgt_cloud,
                         tgt_features=tgt.features, tgt_fine_tree=cKDTree(tgt.fine.points_A),
                         tgt_tree=cKDTree(tgt_cloud.points_A), top_index=top_i, top_similarity=top_s,
                         best_source_of_target=best_src,
                         plan=plan, noise_A=config.noise_A, voxel_A=config.voxel_A,
                         cutoff_A=config.score_pair_cutoff_A, cos_min=config.score_vector_cos, screen=screen)

    m = len(plan.centres_A)
    jobs = max(1, min(jobs or default_jobs(), max(m, 1)))
    with timer.stage("mask search"):
        results = _run_masks(shared, m, jobs)
    results.sort(key=lambda r: (-r[0], r[1], r[2]))
    probe = src_cloud.points_A[screen]
    coarse = distinct(results, probe)
    n_refine = max(2 * top, 20)
    with timer.stage("fine pose"):
        _init_worker(shared)
        pts = src_cloud.points_A
        final_screen = pts[:: max(1, -(-len(pts) // FINAL_SCREEN_POINTS))]
        refined = []
        for agree, k, h, T in coarse[:n_refine]:
            T = refine.robust_icp(final_screen, shared.tgt_fine_tree, T, scale_A=config.voxel_A,
                                  iterations=config.icp_iterations).T_target_source
            refined.append([_agreement(shared, T), k, h, T])
        refined.sort(key=lambda r: (-r[0], r[1], r[2]))
        if not config.map_refine and len(final_screen) < len(pts):   # polish the leaders on all points
            for r in refined[:POLISH_TOP]:
                r[3] = refine.robust_icp(pts, shared.tgt_fine_tree, r[3], scale_A=config.voxel_A,
                                         iterations=config.icp_iterations).T_target_source
                r[0] = _agreement(shared, r[3])
            refined.sort(key=lambda r: (-r[0], r[1], r[2]))
        refined = distinct(refined, probe)
    # [agreement, k, h, correlation before, correlation, T]
    ranked = [[agree, k, h, None, None, T] for agree, k, h, T in refined]
    if config.map_refine and ranked:
        with timer.stage("map refine"):
            sample = maprefine.sample_source(src.density, src.contour)
            floor = MAP_REFINE_FRACTION * ranked[0][0]
            fits = maprefine.refine_distinct([r[-1] for r in ranked], sample, tgt.density, probe.mean(0),
                                             want=top, max_shift_A=DEDUP_A, max_angle_deg=DEDUP_DEG,
                                             refine_mask=[r[0] >= floor for r in ranked],
                                             max_refined=MAP_REFINE_MAX)
            ranked = [ranked[i][:3] + [f.correlation_before, f.correlation, f.T_target_source]
                      for i, f in fits]
            for r in ranked:
                r[0] = _agreement(shared, r[-1])
    ranked = ranked[:top]
    candidates = []
    with timer.stage("score"):
        for agree, k, h, before, corr, T in ranked:
            _, overlap = score.vector_agreement(src_cloud, tgt_cloud, T, cutoff_A=config.score_pair_cutoff_A,
                                                cos_min=config.score_vector_cos, target_tree=shared.tgt_tree)
            s = Score(similarity=agree, vector_agreement=agree, js_divergence=None, overlap=overlap,
                      correlation=corr)
            candidates.append(Candidate(T_target_source=T, score=s, source=f"mask {k + 1} clique {h + 1}",
                                        mask_centre_A=tuple(float(v) for v in plan.centres_A[k]),
                                        correlation_before=before))
    _init_worker(None)
    stats = dict(mask_radius_A=plan.radius_A, mask_step_A=plan.step_A, masks_considered=plan.considered,
                 masks_searched=m, coarse_poses=len(results), distinct_coarse_poses=len(coarse),
                 refined_poses=min(n_refine, len(coarse)), jobs=jobs)
    return candidates, stats


def _run_masks(shared: _Shared, m: int, jobs: int) -> list:
    if m == 0:
        return []
    if jobs == 1:
        _init_worker(shared)
        try:
            return _search_chunk(range(m))
        finally:
            _init_worker(None)
    import multiprocessing as mp

    method = "fork" if "fork" in mp.get_all_start_methods() else None
    ctx = mp.get_context(method)
    # interleaved chunks balance the load (neighbouring masks cost alike); order is restored below
    chunks = [list(range(s, m, jobs * 4)) for s in range(jobs * 4)]
    chunks = [c for c in chunks if c]
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_init_worker,
                             initargs=(shared,)) as pool:
        parts = list(pool.map(_search_chunk, chunks))
    return [r for part in parts for r in part]
