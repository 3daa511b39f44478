"""Similarity of a superposition (the paper's formula, both terms reported).

Pair each moved source point with its nearest target point within a cut-off
(10 Å).  If under 10% of the source points pair, the similarity is 0.
Otherwise similarity = (1 - JS) x agreement, where
- agreement: fraction of source points whose pair's density vectors have a
  dot product above `cos_min` (0.6), so that poor overlap lowers it too;
- JS: Jensen-Shannon divergence (base 2, in [0, 1]) between the two point
  clouds seen as equal-weight Gaussian mixtures (variance 3.5 Å^2), estimated
  by Monte Carlo with a seeded generator.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from .. import transform as tf
from ..types import PointCloud, Score

GMM_VARIANCE_A2 = 3.5
MIN_OVERLAP = 0.1


def vector_agreement(
    source: PointCloud,
    target: PointCloud,
    T: np.ndarray,
    *,
    cutoff_A: float,
    cos_min: float,
    target_tree: cKDTree | None = None,
) -> tuple[float, float]:
    """(agreement, overlap) of the moved source on the target."""
    tree = target_tree if target_tree is not None else cKDTree(target.points_A)
    moved = tf.apply(T, source.points_A)
    d, j = tree.query(moved, distance_upper_bound=cutoff_A)
    found = np.isfinite(d)
    overlap = float(found.mean())
    vs = tf.rotate(T, source.vectors[found])
    dots = np.einsum("ij,ij->i", vs, target.vectors[j[found]])
    return float((dots > cos_min).sum() / len(source)), overlap


def _gmm_log_density(tree: cKDTree, n: int, x: np.ndarray, var: float) -> np.ndarray:
    radius = 5.0 * np.sqrt(var)
    k = min(n, 32)
    d, _ = tree.query(x, k=k, distance_upper_bound=radius)
    d = np.atleast_2d(d.T).T if k == 1 else d
    dens = np.exp(-0.5 * np.where(np.isfinite(d), d, np.inf) ** 2 / var).sum(1)
    norm = n * (2 * np.pi * var) ** 1.5
    return np.log(np.maximum(dens, 1e-300) / norm)


def js_divergence(
    a_A: np.ndarray,
    b_A: np.ndarray,
    *,
    samples: int,
    rng: np.random.Generator,
    variance_A2: float = GMM_VARIANCE_A2,
    b_tree: cKDTree | None = None,
) -> float:
    """Monte Carlo Jensen-Shannon divergence (bits) between two equal-weight isotropic GMMs
    (b_tree: a k-d tree of b_A when the caller has one)."""
    ta, tb = cKDTree(a_A), (b_tree if b_tree is not None else cKDTree(b_A))
    sd = np.sqrt(variance_A2)
    total = 0.0
    for pts, own in ((a_A, 0), (b_A, 1)):
        idx = rng.integers(0, len(pts), samples)
        x = pts[idx] + rng.standard_normal((samples, 3)) * sd
        la = _gmm_log_density(ta, len(a_A), x, variance_A2)
        lb = _gmm_log_density(tb, len(b_A), x, variance_A2)
        lp = la if own == 0 else lb
        lm = np.logaddexp(la, lb) - np.log(2.0)
        total += 0.5 * float(np.mean(lp - lm))
    return float(np.clip(total / np.log(2.0), 0.0, 1.0))


def similarity(
    source: PointCloud,
    target: PointCloud,
    T: np.ndarray,
    *,
    cutoff_A: float = 10.0,
    cos_min: float = 0.6,
    js_samples: int = 4000,
    use_js: bool = True,
    rng: np.random.Generator | None = None,
    target_tree: cKDTree | None = None,
) -> Score:
    """Stage 7: the similarity score of source moved by T onto target."""
    agreement, overlap = vector_agreement(
        source, target, T, cutoff_A=cutoff_A, cos_min=cos_min, target_tree=target_tree
    )
    if overlap < MIN_OVERLAP:
        return Score(similarity=0.0, vector_agreement=agreement, js_divergence=1.0, overlap=overlap)
    js = 0.0
    if use_js:
        rng = rng if rng is not None else np.random.default_rng(0)
        js = js_divergence(
            tf.apply(T, source.points_A), target.points_A, samples=js_samples, rng=rng, b_tree=target_tree
        )
    return Score(similarity=(1.0 - js) * agreement, vector_agreement=agreement, js_divergence=js, overlap=overlap)
