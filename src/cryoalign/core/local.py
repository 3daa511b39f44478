"""Local alignment: place a part (sub-complex, single chain) inside a larger map.

Matching the source's descriptors against the whole target fails when the
source is small: the target's many descriptors swamp the few source queries.
So, as in the published method, spherical masks slide over the target
(radius 1.1 x the source's diameter / 2, step radius / 2) and each mask is
solved as a small global problem.  What is done once rather than per mask:

- the source and target descriptors (the target's on the whole map, so key
  points near a mask's rim see their full neighbourhood);
- each source descriptor's `descriptor_top_k` most similar target descriptors, and each
  target descriptor's most similar source one (one blocked matrix product):
  a source key point's best match inside a mask is the first of those that
  lies in the mask (exact; only rows with none inside are recomputed), and the
  match is mutual when that target key point's best source is the same point;
- the k-d trees used by the refinement and the score.

Masks that cannot hold the source (fewer sampled points than a fraction of the
source's, or too few key points) are skipped.  Each kept mask gives a few
coarse poses (consistency-graph cliques, GNC-TLS), scored on a subsample of the
source by vector agreement; the best distinct ones over all masks are the
hypotheses handed to the ranking path (`rank.rank`, as for global alignment).
Masks run in worker processes; each mask's work depends only on its index, so
the results do not depend on how many run.  All parameters come from the
configuration (`mask_*`, `min_mask_*`, `descriptor_top_k`, `local_refine_min`).
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np

from ..config import AlignConfig
from ..executor import resolve_jobs
from ..timing import Timer
from ..types import Features, Matches, PointCloud
from . import register, score
from .match import nearest_tables
from .prepare import PreparedMap
from .rank import Hypothesis, distinct, subsample

log = logging.getLogger(__name__)


def source_diameter(points_A: np.ndarray, max_points: int = 3000) -> float:
    """Largest distance between two of the source's points (on a subsample)."""
    pts = subsample(points_A, max_points)
    centre = pts.mean(0)
    far = pts[np.argmax(((pts - centre) ** 2).sum(1))]
    far2 = pts[np.argmax(((pts - far) ** 2).sum(1))]
    # two sweeps give a good lower bound; finish with the exact value on the subsample in blocks
    best = float(np.linalg.norm(far2 - far))
    for s in range(0, len(pts), 1024):
        d2 = ((pts[s : s + 1024, None, :] - pts[None, :, :]) ** 2).sum(2)
        best = max(best, float(np.sqrt(d2.max())))
    return best


def mask_centres(target_points_A: np.ndarray, radius_A: float, step_A: float) -> np.ndarray:
    """Centres of a cubic grid (spacing step) covering the target points' bounding box."""
    lo, hi = target_points_A.min(0), target_points_A.max(0)
    n = np.maximum(1, np.ceil((hi - lo) / step_A).astype(int) + 1)
    start = (lo + hi) / 2.0 - (n - 1) * step_A / 2.0  # grid centred on the box
    axes = [start[a] + step_A * np.arange(n[a]) for a in range(3)]
    return np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)


@dataclass(frozen=True)
class MaskPlan:
    radius_A: float
    step_A: float
    centres_A: np.ndarray  # (M, 3) kept masks
    keypoint_index: list  # per kept mask: indices of target key points inside it
    considered: int  # masks on the grid before skipping


def plan_masks(src: PreparedMap, tgt: PreparedMap, config: AlignConfig) -> MaskPlan:
    """Mask radius and step from the source's size; keep the masks that could hold it."""
    from scipy.spatial import cKDTree

    radius = config.mask_radius_factor * source_diameter(src.cloud.points_A) / 2.0
    step = radius / 2.0
    centres = mask_centres(tgt.cloud.points_A, radius, step)
    counts = tgt.tree.query_ball_point(centres, radius, return_length=True)
    need = max(config.min_mask_points, config.min_mask_fraction * len(src.cloud))
    # a mask smaller than needed everywhere (tiny target): keep its fullest masks
    need = min(need, 0.9 * counts.max())
    ok = counts > need
    kp_tree = cKDTree(tgt.features.keypoints_A)
    kept_c, kept_i = [], []
    for c in centres[ok]:
        idx = np.array(sorted(kp_tree.query_ball_point(c, radius)), dtype=np.int64)
        if len(idx) > config.min_mask_keypoints:
            kept_c.append(c)
            kept_i.append(idx)
    return MaskPlan(
        radius_A=radius,
        step_A=step,
        centres_A=np.array(kept_c).reshape(-1, 3),
        keypoint_index=kept_i,
        considered=len(centres),
    )


@dataclass
class _Shared:
    """Read-only inputs of every mask's search (inherited by worker processes)."""

    src_cloud: PointCloud
    src_features: Features
    tgt_cloud: PointCloud
    tgt_features: Features
    tgt_tree: object  # cKDTree of the target's points
    top_index: np.ndarray  # (Ns, K) target descriptors by decreasing similarity
    top_similarity: np.ndarray  # (Ns, K) their similarities
    best_source_of_target: np.ndarray  # (Nt,) argmax over source descriptors
    plan: MaskPlan
    config: AlignConfig
    screen: np.ndarray  # indices of source points scoring each mask's poses


_SHARED: _Shared | None = None


def _init_worker(shared: _Shared | None, parent_pid: int | None = None) -> None:
    global _SHARED
    _SHARED = shared
    if parent_pid is not None:  # a worker process: it ends when the alignment's process does
        from ..executor import die_with_parent

        die_with_parent(parent_pid)


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
    if len(missing):  # none of the top K inside the mask: exact search over the mask
        sim = (
            sh.src_features.descriptors[missing].astype(np.float32)
            @ sh.tgt_features.descriptors[cols].astype(np.float32).T
        )
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


def _search_mask(k: int) -> list[tuple[float, int, int, np.ndarray]]:
    """Coarse poses of mask k scored on a subsample: [(agreement, k, h, T)].  (A short ICP
    per pose here gave the same placements on the public sets at twice the cost.)"""
    sh = _SHARED
    assert sh is not None, "_search_mask runs in a worker set up by _init"
    matches = _mask_matches(sh, k)
    c = sh.src_cloud
    screen = PointCloud(c.points_A[sh.screen], c.vectors[sh.screen], c.density[sh.screen], c.spacing_A)
    out = []
    for h, pose in enumerate(register.coarse_poses(matches, sh.config.noise_A, count=sh.config.mask_hypotheses)):
        agree = score.vector_agreement(
            screen,
            sh.tgt_cloud,
            pose.T_target_source,
            cutoff_A=sh.config.score_pair_cutoff_A,
            cos_min=sh.config.score_vector_cos,
            target_tree=sh.tgt_tree,
        )[0]
        out.append((agree, k, h, pose.T_target_source))
    return out


def _search_chunk(ks) -> list:
    out = []
    for k in ks:
        out.extend(_search_mask(int(k)))
    return out


def coarse_hypotheses(
    src: PreparedMap, tgt: PreparedMap, config: AlignConfig, timer: Timer | None = None
) -> tuple[list[Hypothesis], dict]:
    """The best distinct coarse placements of `src` over all masks of `tgt` (at most
    max(local_refine_min, 2 x top)), best first, and the search statistics."""
    timer = timer or Timer()
    with timer.stage("mask plan"):
        plan = plan_masks(src, tgt, config)
        log.info(
            "local search: mask radius %.1f Å, step %.1f Å, %d of %d masks can hold the source",
            plan.radius_A,
            plan.step_A,
            len(plan.centres_A),
            plan.considered,
        )
        top_i, top_s, best_src = nearest_tables(
            src.features.descriptors, tgt.features.descriptors, config.descriptor_top_k
        )
        n = len(src.cloud)
        screen = subsample(np.arange(n), config.mask_screen_points)
        shared = _Shared(
            src_cloud=src.cloud,
            src_features=src.features,
            tgt_cloud=tgt.cloud,
            tgt_features=tgt.features,
            tgt_tree=tgt.tree,
            top_index=top_i,
            top_similarity=top_s,
            best_source_of_target=best_src,
            plan=plan,
            config=config,
            screen=screen,
        )
    m = len(plan.centres_A)
    jobs = max(1, min(resolve_jobs(config.jobs), max(m, 1)))
    with timer.stage("mask search"):
        results = _run_masks(shared, m, jobs)
    results.sort(key=lambda r: (-r[0], r[1], r[2]))
    count = max(config.local_refine_min, 2 * config.top)
    with timer.stage("distinct poses"):
        coarse = distinct(results, src.cloud.points_A[screen].mean(0), config, pose=lambda r: r[3], limit=count)
    hypotheses = [
        Hypothesis(
            T_target_source=T,
            found_by=f"mask {k + 1} clique {h + 1}",
            key=(k, h),
            mask_centre_A=tuple(float(v) for v in plan.centres_A[k]),
        )
        for _, k, h, T in coarse
    ]
    stats = dict(
        mask_radius_A=plan.radius_A,
        mask_step_A=plan.step_A,
        masks_considered=plan.considered,
        masks_searched=m,
        coarse_poses=len(results),
        distinct_coarse_poses_kept=len(coarse),
        refined_poses=len(hypotheses),
        jobs=jobs,
    )
    return hypotheses, stats


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

    from ..executor import _stop_pool

    method = "fork" if "fork" in mp.get_all_start_methods() else None
    # interleaved chunks balance the load (neighbouring masks cost alike); order is restored below
    chunks = [list(range(s, m, jobs * 4)) for s in range(jobs * 4)]
    chunks = [c for c in chunks if c]
    pool = ProcessPoolExecutor(
        max_workers=jobs, mp_context=mp.get_context(method), initializer=_init_worker, initargs=(shared, os.getpid())
    )
    try:
        parts = list(pool.map(_search_chunk, chunks))
    finally:
        _stop_pool(pool)  # an interrupt ends the workers at once, not after their chunk
    return [r for part in parts for r in part]
