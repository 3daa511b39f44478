"""Rotation-invariant vectors of a prepared map, for ranking a whole catalogue at once.

    v = vector(prepared)                  # 1-D float32, VECTOR_LENGTH numbers
    d = distances(v, matrix)              # one distance per row of `matrix` (numpy, no loop)

Each vector is computed from the map's sampled point cloud above contour alone (what
preparation already has), so an entry never depends on the other entries and nothing is
learned from the indexed maps.  Two parts, each a fixed-length block:

* shape: the volume above contour, the three principal semi-axes, and the distributions
  of the point-to-centre distances (RADIAL_QUANTILES quantiles) and of the pairwise
  distances (the D2 shape distribution, D2_QUANTILES quantiles), as logarithms of Å
  lengths (so a difference is a ratio);
* harmonics: the spherical-harmonic energy descriptor (Kazhdan, Funkhouser and
  Rusinkiewicz 2003; the rotation-invariant family 3D Zernike descriptors belong to):
  the points are binned into spherical shells SHELL_A thick around their centre, and for
  every shell and degree l = 0..DEGREES-1 the energy |sum_m c_lm|, where c_lm sums the
  spherical harmonic Y_lm over the shell's points, per sampled point of the whole map
  (so the sampling interval cancels).  The energy of a degree does not change when the
  map turns, so neither does the vector.

`distances` is the L1 distance with each block weighted (BLOCK_WEIGHTS): fixed constants
chosen by the pre-filter's recall on the tuning queries of benchmarks/search_corpus.py
(README "Search at archive scale").
"""

from __future__ import annotations

import numpy as np

VERSION = "prefilter-1"
SIGNATURE_POINTS = 4000  # at most this many points (a seeded subset) per map
RADIAL_QUANTILES = 16
D2_QUANTILES = 32
SHELL_A = 8.0
SHELLS = 24  # 0-192 Å; points further out count in the last shell
DEGREES = 8  # l = 0..7
SHAPE_LENGTH = 1 + 3 + RADIAL_QUANTILES + D2_QUANTILES
HARMONIC_LENGTH = SHELLS * DEGREES
VECTOR_LENGTH = SHAPE_LENGTH + HARMONIC_LENGTH
BLOCK_WEIGHTS = {"shape": 1.0, "harmonics": 0.5}


def points_of(prepared, count: int = SIGNATURE_POINTS) -> np.ndarray:
    """The cloud's points, at most `count` of them (a seeded subset, in cloud order)."""
    points = np.asarray(prepared.cloud.points_A, float)
    if len(points) > count:
        keep = np.random.default_rng(0).choice(len(points), count, replace=False)
        points = points[np.sort(keep)]
    return points


def shape_block(points: np.ndarray, volume_A3: float) -> np.ndarray:
    from scipy.spatial.distance import pdist

    centred = points - points.mean(0)
    eigenvalues = np.sort(np.linalg.eigvalsh(centred.T @ centred / len(centred)))[::-1]
    axes = np.sqrt(np.maximum(eigenvalues, 1e-6))
    radial = np.linalg.norm(centred, axis=1)
    pairs = pdist(points) if len(points) > 1 else np.zeros(1)
    levels = lambda n: (np.arange(n) + 0.5) / n  # noqa: E731
    return np.concatenate(
        [
            [np.log(max(volume_A3, 1.0))],
            np.log(axes),
            np.log(np.maximum(np.quantile(radial, levels(RADIAL_QUANTILES)), 1.0)),
            np.log(np.maximum(np.quantile(pairs, levels(D2_QUANTILES)), 1.0)),
        ]
    )


def _harmonics(l_degree: int, polar: np.ndarray, azimuth: np.ndarray) -> np.ndarray:
    """Y_lm for m = -l..l at the given angles: (2l+1, n) complex."""
    try:
        from scipy.special import sph_harm_y

        return np.array([sph_harm_y(l_degree, m, polar, azimuth) for m in range(-l_degree, l_degree + 1)])
    except ImportError:  # scipy < 1.15
        from scipy.special import sph_harm

        return np.array([sph_harm(m, l_degree, azimuth, polar) for m in range(-l_degree, l_degree + 1)])


def harmonic_block(points: np.ndarray) -> np.ndarray:
    centred = points - points.mean(0)
    r = np.linalg.norm(centred, axis=1)
    polar = np.arccos(np.clip(centred[:, 2] / np.maximum(r, 1e-9), -1.0, 1.0))
    azimuth = np.arctan2(centred[:, 1], centred[:, 0])
    shell = np.minimum((r / SHELL_A).astype(int), SHELLS - 1)
    out = np.zeros((SHELLS, DEGREES))
    for degree in range(DEGREES):
        Y = _harmonics(degree, polar, azimuth)  # (2l+1, n)
        sums = np.zeros((SHELLS, 2 * degree + 1), complex)
        for m in range(2 * degree + 1):
            sums[:, m] = np.bincount(shell, weights=Y[m].real, minlength=SHELLS) + 1j * np.bincount(
                shell, weights=Y[m].imag, minlength=SHELLS
            )
        out[:, degree] = np.sqrt((np.abs(sums) ** 2).sum(1))
    return np.sqrt(out / len(points)).ravel()  # the square root evens out the shells' weights


def vector(prepared) -> np.ndarray:
    """The pre-filter vector of a `PreparedMap` (module docstring)."""
    points = points_of(prepared)
    return np.concatenate([shape_block(points, prepared.volume_A3), harmonic_block(points)]).astype(np.float32)


def distances(query: np.ndarray, matrix: np.ndarray, weights: dict | None = None) -> np.ndarray:
    """Weighted L1 distance from `query` to each row of `matrix` (module docstring)."""
    weights = weights or BLOCK_WEIGHTS
    diff = np.abs(np.asarray(matrix, np.float32) - np.asarray(query, np.float32)[None, :])
    shape = diff[:, :SHAPE_LENGTH]
    # volume, mean axis, mean radial quantile, mean D2 quantile: each counts once
    shape_d = (
        shape[:, 0]
        + shape[:, 1:4].mean(1)
        + shape[:, 4 : 4 + RADIAL_QUANTILES].mean(1)
        + shape[:, 4 + RADIAL_QUANTILES :].mean(1)
    )
    harmonic_d = diff[:, SHAPE_LENGTH:].sum(1)
    return weights["shape"] * shape_d + weights["harmonics"] * harmonic_d
