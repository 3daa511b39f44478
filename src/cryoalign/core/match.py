"""Descriptors -> putative correspondences by mutual nearest neighbours."""

from __future__ import annotations

import numpy as np

from ..types import Features, Matches

_BLOCK = 4096
_TABLE_BLOCK = 2048


def _knn(a: np.ndarray, b: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """k nearest rows of b for each row of a (unit vectors: d^2 = 2 - 2 a.b), by blocks
    of rows so memory stays bounded; ties go to the lower index."""
    idx = np.empty((len(a), k), np.int64)
    sims = np.empty((len(a), k), np.float32)
    bt = np.ascontiguousarray(b.T, dtype=np.float32)
    for s in range(0, len(a), _BLOCK):
        sim = a[s : s + _BLOCK].astype(np.float32) @ bt
        if k == 1:
            part = np.argmax(sim, axis=1)[:, None]
        elif k < sim.shape[1]:
            part = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        else:
            part = np.tile(np.arange(sim.shape[1]), (len(sim), 1))
        psim = np.take_along_axis(sim, part, 1)
        order = np.argsort(-psim, axis=1, kind="stable")
        idx[s : s + _BLOCK] = np.take_along_axis(part, order, 1)
        sims[s : s + _BLOCK] = np.take_along_axis(psim, order, 1)
    return np.sqrt(np.maximum(0.0, 2.0 - 2.0 * sims.astype(float))), idx


def nearest_tables(a: np.ndarray, b: np.ndarray, k: int):
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
    for s in range(0, len(a), _TABLE_BLOCK):
        sim = a[s : s + _TABLE_BLOCK] @ b.T
        if k == 1:
            part = np.argmax(sim, axis=1)[:, None]  # first (lowest) column on ties
        elif k < sim.shape[1]:
            part = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        else:
            part = np.tile(np.arange(sim.shape[1]), (len(sim), 1))
        psim = np.take_along_axis(sim, part, 1)
        order = np.lexsort((part, -psim), axis=1)
        top_i[s : s + _TABLE_BLOCK] = np.take_along_axis(part, order, 1)
        top_s[s : s + _TABLE_BLOCK] = np.take_along_axis(psim, order, 1)
        col = np.argmax(sim, axis=0)  # first (lowest) row on ties
        val = sim[col, np.arange(sim.shape[1])]
        better = val > best_val
        best_src[better] = col[better] + s
        best_val[better] = val[better]
    return top_i, top_s, best_src


def mutual_nearest(source: Features, target: Features, *, k: int = 1, min_matches: int = 3) -> Matches:
    """Stage 4: keep (i, j) when j is among i's `k` nearest target descriptors and
    i among j's `k` nearest source descriptors (Euclidean); k = 1 is the paper's
    mutual nearest neighbour.  With fewer than `min_matches` pairs, fall back to
    one-way nearest neighbours, as the original does.  Sorted by distance."""
    if len(source) == 0 or len(target) == 0:
        return Matches(np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0))
    ks, kt = min(k, len(target)), min(k, len(source))
    if k == 1:  # both directions from one blocked product
        j_of_i, sims, best_source = nearest_tables(source.descriptors, target.descriptors, 1)
        d_st = np.sqrt(np.maximum(0.0, 2.0 - 2.0 * sims.astype(float)))
        i_of_j = best_source[:, None]
    else:
        d_st, j_of_i = _knn(source.descriptors, target.descriptors, ks)
        _, i_of_j = _knn(target.descriptors, source.descriptors, kt)
    i = np.repeat(np.arange(len(source)), ks)
    j, d = j_of_i.ravel(), d_st.ravel()
    mutual = (i_of_j[j] == i[:, None]).any(1)
    if mutual.sum() < min_matches:
        mutual = np.zeros(len(i), bool)
        mutual[::ks] = True
    i, j, d = i[mutual], j[mutual], d[mutual]
    order = np.lexsort((j, i, d))
    return Matches(source.keypoints_A[i[order]], target.keypoints_A[j[order]], d[order])
