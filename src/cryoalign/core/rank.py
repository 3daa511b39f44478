"""Coarse poses -> ranked candidates: the one ranking path of global alignment, local
alignment and chain fitting (they differ only in where the coarse poses come from).

    screen    every hypothesis refined by ICP on a subsample (`screen_points`) of the
              source, ranked by vector agreement; the leaders (`polish_top`) refined
              on all source points
    distinct  one pose kept per optimum (`same_pose`: within `same_pose_A` at the
              source centre and `same_pose_deg` in rotation)
    score     the point score: (1 - JS) x agreement (global), agreement alone (local:
              the target holds more than the source)
    maps      every distinct candidate scored on the maps (correlation about the mean);
              those whose point score is at least `map_refine_fraction` of the best's
              refined there (at most `map_refine_max`); ranked by correlation x vector
              agreement (`Score.value`)
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .. import transform as tf
from ..config import AlignConfig
from ..timing import Timer
from ..types import Candidate, Score
from . import maprefine, refine, score
from .prepare import PreparedMap


@dataclass(frozen=True)
class Hypothesis:
    """A coarse pose and where it came from.

    found_by: "clique 2" or "mask 14 clique 1"; key: deterministic tie-break among
    equal scores; mask_centre_A: local search only."""

    T_target_source: np.ndarray
    found_by: str
    key: tuple
    mask_centre_A: tuple | None = None


def same_pose(T1: np.ndarray, T2: np.ndarray, centre_A: np.ndarray, config: AlignConfig) -> bool:
    """The one rule for "the same pose"."""
    return tf.same_pose(T1, T2, centre_A, max_shift_A=config.same_pose_A, max_angle_deg=config.same_pose_deg)


def distinct(
    items, centre_A: np.ndarray, config: AlignConfig, pose=lambda item: item.T_target_source, limit: int | None = None
):
    """Keep the items (best first) whose pose differs from every kept one's; stop once
    `limit` are kept (the later ones would not be used)."""
    kept = []
    for item in items:
        if limit is not None and len(kept) >= limit:
            break
        if not any(same_pose(pose(item), pose(other), centre_A, config) for other in kept):
            kept.append(item)
    return kept


def subsample(points_A: np.ndarray, count: int) -> np.ndarray:
    """Every k-th point, at most `count` (deterministic, evenly spread)."""
    return points_A[:: max(1, -(-len(points_A) // count))]


def agreement(src: PreparedMap, tgt: PreparedMap, T: np.ndarray, config: AlignConfig) -> float:
    return score.vector_agreement(
        src.cloud,
        tgt.cloud,
        T,
        cutoff_A=config.score_pair_cutoff_A,
        cos_min=config.score_vector_cos,
        target_tree=tgt.tree,
    )[0]


def rank(
    src: PreparedMap,
    tgt: PreparedMap,
    hypotheses: list[Hypothesis],
    config: AlignConfig,
    *,
    with_js: bool,
    timer: Timer | None = None,
) -> list[Candidate]:
    """Ranked candidates (best first, at most `config.top`) from coarse hypotheses."""
    timer = timer or Timer()
    centre = src.centre_A
    with timer.stage("fine pose"):
        screened = screen_poses(src, tgt, hypotheses, config)
        screened = distinct(screened, centre, config, pose=lambda item: item[1])
    with timer.stage("score"):
        candidates = [_point_candidate(src, tgt, T, hyp, config, with_js) for _, T, hyp in screened]
        candidates.sort(key=lambda c: -c.score.similarity)
    if config.map_refine and candidates:
        candidates = _on_the_maps(src, tgt, candidates, config, with_js, timer)
    return candidates[: config.top]


def screen_poses(src, tgt, hypotheses, config):
    """[(agreement, T, hypothesis)] best first: ICP on a subsample, leaders on all points."""
    pts = src.cloud.points_A
    screen = subsample(pts, config.screen_points)
    out = []
    for hyp in hypotheses:
        T = refine.robust_icp(
            screen, tgt.fine_tree, hyp.T_target_source, scale_A=config.sampling_A, iterations=config.screen_iterations
        ).T_target_source
        out.append((agreement(src, tgt, T, config), T, hyp))
    order = lambda item: (-item[0], item[2].key)  # noqa: E731
    out.sort(key=order)
    if len(screen) < len(pts):
        for n, (_, T, hyp) in enumerate(out[: config.polish_top]):
            T = refine.robust_icp(
                pts, tgt.fine_tree, T, scale_A=config.sampling_A, iterations=config.icp_iterations
            ).T_target_source
            out[n] = (agreement(src, tgt, T, config), T, hyp)
        out.sort(key=order)
    return out


def _point_candidate(
    src, tgt, T, hyp: Hypothesis, config, with_js, correlation=None, before=None, found_by=None
) -> Candidate:
    s = score.similarity(
        src.cloud,
        tgt.cloud,
        T,
        cutoff_A=config.score_pair_cutoff_A,
        cos_min=config.score_vector_cos,
        js_samples=config.js_samples,
        use_js=with_js,
        rng=np.random.default_rng([config.seed, *hyp.key]),
        target_tree=tgt.tree,
    )
    if not with_js:
        s = Score(
            similarity=s.vector_agreement, vector_agreement=s.vector_agreement, js_divergence=None, overlap=s.overlap
        )
    if correlation is not None:
        s = Score(
            similarity=s.similarity,
            vector_agreement=s.vector_agreement,
            js_divergence=s.js_divergence,
            overlap=s.overlap,
            correlation=correlation,
        )
    return Candidate(
        T_target_source=T,
        score=s,
        found_by=found_by or hyp.found_by,
        mask_centre_A=hyp.mask_centre_A,
        correlation_before=before,
        hypothesis=hyp,
    )


def _on_the_maps(src, tgt, candidates, config, with_js, timer):
    """Score every candidate on the maps, refine the plausible ones there, rank by correlation."""
    if tgt.density is None:
        raise ValueError("map refinement needs the target's map: PreparedMap.with_density(map)")
    with timer.stage("map refine"):
        floor = config.map_refine_fraction * candidates[0].score.similarity
        fits = maprefine.refine_distinct(
            [c.T_target_source for c in candidates],
            src.sample,
            tgt.density,
            src.centre_A,
            want=len(candidates),
            config=config,
            refine_mask=[c.score.similarity >= floor for c in candidates],
            max_refined=config.map_refine_max,
        )
    with timer.stage("score"):
        out = []
        blocks = maprefine.source_blocks(src.sample)
        for i, fit in fits:
            c = candidates[i]
            if fit.evaluations:  # moved: its point score is taken again where it landed
                out.append(
                    _point_candidate(
                        src,
                        tgt,
                        fit.T_target_source,
                        c.hypothesis,
                        config,
                        with_js,
                        correlation=fit.correlation,
                        before=fit.correlation_before,
                        found_by=c.found_by + " + map refinement",
                    )
                )
            else:
                out.append(
                    replace(
                        c,
                        score=replace(c.score, correlation=fit.correlation),
                        correlation_before=fit.correlation_before,
                    )
                )
            terms = maprefine.correlation_terms(src.sample, tgt.density, fit.T_target_source, tgt.contour, blocks)
            out[-1] = replace(
                out[-1],
                score=replace(
                    out[-1].score,
                    local_correlation=terms["local"],
                    shared_correlation=terms["shared"],
                    shared_fraction=terms["shared_fraction"],
                ),
            )
    out.sort(key=lambda c: -c.score.value)  # stable: equal scores keep the refinement order
    return out
