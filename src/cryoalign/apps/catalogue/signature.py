"""The shape signature (version SIGNATURE_VERSION, still stored with every entry): volume,
radius of gyration, principal semi-axes, radial and D2 quantiles, as JSON; compared by
`signature_distance`.  The search ranks by the pre-filter vector (`prefilter`) instead."""

from __future__ import annotations

import math

import numpy as np

from . import prefilter as prefilter_module

SIGNATURE_VERSION = "shape-1"
SIGNATURE_POINTS = 2000  # points of the cloud used for the signature (seeded subset)
RADIAL_QUANTILES = 16
D2_QUANTILES = 32


def signature(prepared) -> dict:
    """The rotation-invariant shape signature of a `PreparedMap` (see the module docstring).
    points: the sampled cloud above contour, at most SIGNATURE_POINTS of them."""
    from scipy.spatial.distance import pdist

    points = prefilter_module.points_of(prepared, SIGNATURE_POINTS)
    centred = points - points.mean(0)
    eigenvalues = np.sort(np.linalg.eigvalsh(centred.T @ centred / len(centred)))[::-1]
    axes = np.sqrt(np.maximum(eigenvalues, 1e-6))
    radial = np.linalg.norm(centred, axis=1)
    pairs = pdist(points) if len(points) > 1 else np.zeros(1)
    return {
        "version": SIGNATURE_VERSION,
        "volume_A3": float(prepared.volume_A3),
        "rg_A": float(math.sqrt(max(eigenvalues.sum(), 1e-6))),
        "axes_A": [float(v) for v in axes],
        "radial_A": [float(v) for v in np.quantile(radial, _levels(RADIAL_QUANTILES))],
        "d2_A": [float(v) for v in np.quantile(pairs, _levels(D2_QUANTILES))],
    }


def _levels(n: int) -> np.ndarray:
    return (np.arange(n) + 0.5) / n


def signature_distance(query: dict, entries: list) -> np.ndarray:
    """Distances (module docstring formula) from the `query` signature to each of `entries`."""
    if not entries:
        return np.zeros(0)

    def stack(key):
        return np.array([e[key] for e in entries], float)

    volume, rg = stack("volume_A3"), stack("rg_A")
    axes, radial, d2 = stack("axes_A"), stack("radial_A"), stack("d2_A")
    scale = (query["rg_A"] + rg) / 2.0
    return (
        np.abs(np.log(query["volume_A3"]) - np.log(volume))
        + np.abs(np.log(query["axes_A"]) - np.log(axes)).mean(1)
        + (np.abs(np.asarray(query["d2_A"]) - d2).mean(1) + np.abs(np.asarray(query["radial_A"]) - radial).mean(1))
        / scale
    )
