"""Descriptors -> putative correspondences by mutual nearest neighbours."""
from __future__ import annotations

import numpy as np

from .types import Features, Matches

_BLOCK = 4096


def _knn(a: np.ndarray, b: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """k nearest rows of b for each row of a (unit vectors: d^2 = 2 - 2 a.b), by blocks
    of rows so memory stays bounded; ties go to the lower index."""
    idx = np.empty((len(a), k), np.int64)
    sims = np.empty((len(a), k), np.float32)
    bt = np.ascontiguousarray(b.T, dtype=np.float32)
    for s in range(0, len(a), _BLOCK):
        sim = a[s:s + _BLOCK].astype(np.float32) @ bt
        if k == 1:
            part = np.argmax(sim, axis=1)[:, None]
        elif k < sim.shape[1]:
            part = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        else:
            part = np.tile(np.arange(sim.shape[1]), (len(sim), 1))
        psim = np.take_along_axis(sim, part, 1)
        order = np.argsort(-psim, axis=1, kind="stable")
        idx[s:s + _BLOCK] = np.take_along_axis(part, order, 1)
        sims[s:s + _BLOCK] = np.take_along_axis(psim, order, 1)
    return np.sqrt(np.maximum(0.0, 2.0 - 2.0 * sims.astype(float))), idx


def mutual_nearest(source: Features, target: Features, *, k: int = 1, min_matches: int = 3) -> Matches:
    """Stage 4: keep (i, j) when j is among i's `k` nearest target descriptors and
    i among j's `k` nearest source descriptors (Euclidean); k = 1 is the paper's
    mutual nearest neighbour.  With fewer than `min_matches` pairs, fall back to
    one-way nearest neighbours, as the original does.  Sorted by distance."""
    if len(source) == 0 or len(target) == 0:
        return Matches(np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0))
    ks, kt = min(k, len(target)), min(k, len(source))
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
