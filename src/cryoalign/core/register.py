"""Correspondences -> robust coarse poses, in the TEASER++ manner.

1. Pairwise consistency: matches i and j agree when the distance between their
   source points equals, within 2 x noise bound, the distance between their
   target points (a rigid motion keeps distances).
2. Maximum clique of that graph: the largest set of mutually consistent
   matches. Exact search (Bron-Kerbosch with pivoting) on small graphs; on large dense ones
   (where exact search can take exponential time) a greedy degree peeling that
   keeps the mutually consistent core. Deterministic, single-threaded.
3. Pose from the clique by graduated non-convexity with a truncated least
   squares cost (GNC-TLS, Yang et al. 2020), weighted Kabsch as inner solver.

Several hypotheses come from removing each clique's matches and searching
again, so a second, distinct consistent set (another copy, a symmetry mate)
is also refined and scored downstream.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.distance import cdist

from .. import transform as tf
from ..types import Matches, Pose

MIN_CLIQUE = 3


EXACT_LIMIT = 40  # vertices; exact search on dense graphs of 80+ vertices can take minutes


def adjacency(source_A: np.ndarray, target_A: np.ndarray, noise_A: float) -> np.ndarray:
    """(M, M) bool: matches i and j are length-consistent (no self loops)."""
    ds = cdist(source_A, source_A)
    ds -= cdist(target_A, target_A)
    adj = np.abs(ds) <= 2.0 * noise_A
    np.fill_diagonal(adj, False)
    return adj


def _exact_clique(adj: np.ndarray) -> np.ndarray:
    """The maximum clique of a small graph (the lexicographically first of the sorted
    maximum cliques when several tie): Bron-Kerbosch with Tomita pivoting on bit sets.
    Hand-written rather than python-igraph: importing igraph also imports
    matplotlib.pyplot (about 0.3 s of every run's start-up) for a search that takes
    milliseconds on the graphs it gets (EXACT_LIMIT vertices at most)."""
    n = len(adj)
    if n == 0:
        return np.zeros(0, int)
    neighbours = [sum(1 << int(j) for j in np.flatnonzero(row)) for row in adj]
    best: list = [()]

    def expand(clique: tuple, candidates: int, excluded: int) -> None:
        if candidates == 0 and excluded == 0:
            found = tuple(sorted(clique))
            if len(found) > len(best[0]) or (len(found) == len(best[0]) and found < best[0]):
                best[0] = found
            return
        if len(clique) + candidates.bit_count() < len(best[0]):
            return  # cannot reach the size of the best (ties still count)
        pivot = max(_bits(candidates | excluded), key=lambda u: (candidates & neighbours[u]).bit_count())
        for v in _bits(candidates & ~neighbours[pivot]):
            expand(clique + (v,), candidates & neighbours[v], excluded & neighbours[v])
            candidates &= ~(1 << v)
            excluded |= 1 << v

    expand((), (1 << n) - 1, 0)
    return np.array(best[0], int)


def _bits(mask: int) -> list[int]:
    """The set bits of mask, lowest first."""
    out = []
    while mask:
        low = mask & -mask
        out.append(low.bit_length() - 1)
        mask ^= low
    return out


def _clique(adj: np.ndarray) -> np.ndarray:
    """Largest clique found within bounded time.

    The greedy peeling gives a clique of size w; a larger clique can only use
    vertices of degree >= w, so those are searched exactly when few
    enough.  Otherwise the greedy clique stands."""
    if len(adj) <= EXACT_LIMIT:
        return _exact_clique(adj)
    greedy = _peeled_clique(adj)
    candidates = np.flatnonzero(adj.sum(1) >= max(len(greedy), 1))
    if len(candidates) <= EXACT_LIMIT:
        exact = candidates[_exact_clique(adj[np.ix_(candidates, candidates)])]
        if len(exact) > len(greedy):
            return np.sort(exact)
    return greedy


def _peeled_clique(adj: np.ndarray) -> np.ndarray:
    """Greedy clique for large dense graphs: repeatedly drop the vertex of least
    degree until the rest is a clique, then add any vertex adjacent to all of it.
    O(M^2); inliers of a rigid motion are all mutually consistent, so they are
    the last to go."""
    n = len(adj)
    alive = np.ones(n, bool)
    deg = adj.sum(1).astype(np.int64)
    big = np.iinfo(np.int64).max
    count = n
    while count > 1:
        masked = np.where(alive, deg, big)
        v = int(np.argmin(masked))
        if masked[v] >= count - 1:
            break
        alive[v] = False
        deg -= adj[v]
        count -= 1
    clique = np.flatnonzero(alive)
    for u in np.flatnonzero(~alive):
        if adj[u, clique].all():
            clique = np.append(clique, u)
    return np.sort(clique)


def max_cliques(adj: np.ndarray, count: int) -> list[np.ndarray]:
    """Up to `count` disjoint large cliques: the maximum clique, then the maximum
    clique of what remains, and so on.  Exact for small graphs, greedy
    peeling for large ones; deterministic either way."""
    remaining = np.arange(len(adj))
    out = []
    while len(out) < count and len(remaining) >= MIN_CLIQUE:
        sub = adj[np.ix_(remaining, remaining)]
        if not sub.any():
            break
        local = _clique(sub)
        if len(local) < MIN_CLIQUE:
            break
        out.append(remaining[local])
        keep = np.ones(len(remaining), bool)
        keep[local] = False
        remaining = remaining[keep]
    return out


def gnc_tls(
    source_A: np.ndarray, target_A: np.ndarray, noise_A: float, *, factor: float = 1.4, max_iter: int = 100
) -> Pose:
    """Rigid pose minimising sum min(|t_i - R s_i - t|^2, noise^2) by GNC-TLS."""
    n = len(source_A)
    w = np.ones(n)
    T = tf.kabsch(source_A, target_A, w)
    c2 = noise_A**2
    r2 = ((tf.apply(T, source_A) - target_A) ** 2).sum(1)
    if r2.max() > c2:
        # mu grows from a nearly convex surrogate (small mu) towards the TLS cost (mu -> inf)
        mu = 1.0 / max(2.0 * r2.max() / c2 - 1.0, 1e-6)
        for _ in range(max_iter):
            th_lo = mu / (mu + 1.0) * c2
            th_hi = (mu + 1.0) / mu * c2
            w = np.where(
                r2 <= th_lo, 1.0, np.where(r2 >= th_hi, 0.0, np.sqrt(c2 * mu * (mu + 1.0) / np.maximum(r2, 1e-12)) - mu)
            )
            if (w > 0).sum() < MIN_CLIQUE:
                break
            T = tf.kabsch(source_A, target_A, w)
            r2 = ((tf.apply(T, source_A) - target_A) ** 2).sum(1)
            if np.all((w < 1e-6) | (w > 1 - 1e-6)) and mu > 1.0:
                break
            mu *= factor
    inl = r2 <= c2
    if inl.sum() >= MIN_CLIQUE:
        T = tf.kabsch(source_A[inl], target_A[inl])
    rmse = float(np.sqrt(r2[inl].mean())) if inl.any() else float("nan")
    return Pose(T_target_source=T, inliers=int(inl.sum()), rmse_A=rmse)


def coarse_poses(matches: Matches, noise_A: float, *, count: int = 8, max_matches: int = 1500) -> list[Pose]:
    """Stage 5: up to `count` robust poses, largest consistent set first."""
    m = min(len(matches), max_matches)  # matches are sorted by descriptor distance
    if m < MIN_CLIQUE:
        return []
    src, tgt = matches.source_A[:m], matches.target_A[:m]
    poses = []
    for clique in max_cliques(adjacency(src, tgt, noise_A), count):
        poses.append(gnc_tls(src[clique], tgt[clique], noise_A))
    return poses
