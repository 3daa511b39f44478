"""Frozen records passed between pipeline stages.

Conventions: coordinates are world coordinates in Å (x, y, z); a map's data
array is indexed ``data[z, y, x]``; a transform is a 4x4 ``T_target_source``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import InputError


@dataclass(frozen=True, eq=False)
class DensityMap:
    """A 3D density on a regular grid.

    data: (nz, ny, nx) float32, indexed [z, y, x].
    voxel_size_A: (3,) voxel edge along x, y, z in Å.
    origin_A: (3,) world coordinates (x, y, z) of voxel (0, 0, 0) in Å.
    """

    data: np.ndarray
    voxel_size_A: np.ndarray
    origin_A: np.ndarray
    path: str | None = None

    def __post_init__(self):
        if self.data.ndim != 3:
            raise InputError(f"map data must be 3-dimensional, got shape {self.data.shape}")
        vs = np.asarray(self.voxel_size_A, float).reshape(3)
        if not np.all(np.isfinite(vs)) or np.any(vs <= 0):
            raise InputError(
                f"voxel size {tuple(vs)} Å is not positive{self._where()}; "
                "fix the cell dimensions (CELLA) in the header or pass a valid map"
            )
        org = np.asarray(self.origin_A, float).reshape(3)
        if not np.all(np.isfinite(org)):
            raise InputError(f"map origin {tuple(org)} is not finite{self._where()}")
        object.__setattr__(self, "voxel_size_A", vs)
        object.__setattr__(self, "origin_A", org)

    def _where(self):
        return f" in {self.path}" if self.path else ""

    @property
    def shape_xyz(self) -> np.ndarray:
        return np.array(self.data.shape[::-1])

    @property
    def extent_A(self) -> np.ndarray:
        return self.shape_xyz * self.voxel_size_A

    def world_to_index(self, xyz: np.ndarray) -> np.ndarray:
        """(N, 3) world Å -> (N, 3) fractional indices in (x, y, z) order."""
        return (np.asarray(xyz, float) - self.origin_A) / self.voxel_size_A

    def index_to_world(self, ijk: np.ndarray) -> np.ndarray:
        """(N, 3) indices in (x, y, z) order -> (N, 3) world Å."""
        return np.asarray(ijk, float) * self.voxel_size_A + self.origin_A

    def __repr__(self):
        nx, ny, nz = self.shape_xyz
        vs = ", ".join(f"{v:g}" for v in self.voxel_size_A)
        org = ", ".join(f"{v:.3f}" for v in self.origin_A)
        return f"<DensityMap {nx}x{ny}x{nz} voxel=({vs}) Å origin=({org}) Å{' ' + self.path if self.path else ''}>"


@dataclass(frozen=True, eq=False)
class PointCloud:
    """Grid-sampled points of a map above its contour.

    points_A: (N, 3) float64 world Å; vectors: (N, 3) unit density vectors
    (pointing up the smoothed density); density: (N,) smoothed density.
    """

    points_A: np.ndarray
    vectors: np.ndarray
    density: np.ndarray
    spacing_A: float

    def __len__(self):
        return len(self.points_A)


@dataclass(frozen=True, eq=False)
class Features:
    """Key points and their descriptors. keypoints_A: (K, 3); descriptors: (K, D)."""

    keypoints_A: np.ndarray
    descriptors: np.ndarray

    def __len__(self):
        return len(self.keypoints_A)


@dataclass(frozen=True, eq=False)
class Matches:
    """Putative correspondences: source key point i <-> target key point j.

    source_A, target_A: (M, 3) matched coordinates; distance: (M,) descriptor distance.
    """

    source_A: np.ndarray
    target_A: np.ndarray
    distance: np.ndarray

    def __len__(self):
        return len(self.source_A)


@dataclass(frozen=True)
class Pose:
    """A rigid transform with bookkeeping from the stage that produced it."""

    T_target_source: np.ndarray
    inliers: int = 0
    rmse_A: float = float("nan")
    converged: bool = True


@dataclass(frozen=True)
class Score:
    """How well a pose superimposes the maps.

    similarity: the paper's score ((1 - JS) x vector agreement; the agreement alone
    in local mode); correlation: correlation about the mean of the maps after
    map-level refinement.  `value`, the number candidates are ranked by and the
    JSON's "score", is correlation x vector agreement when the maps were used (a
    consensus: the pose must fit both the densities and the directions of their
    gradients; measured on the benchmarks it ranks a right pose first wherever the
    correlation alone does, and also where a wrong pose covering more density earns a
    slightly higher correlation), else the similarity.
    """

    similarity: float
    vector_agreement: float
    js_divergence: float | None  # None when not computed (local alignment)
    overlap: float
    correlation: float | None = None  # map correlation about the mean (after map refinement)
    local_correlation: float | None = None  # trimmed mean of the correlations of source blocks
    shared_correlation: float | None = None  # correlation where both maps are above contour
    shared_fraction: float | None = None  # share of source voxels inside the target's contour

    @property
    def value(self) -> float:
        if self.correlation is None:
            return self.similarity
        return self.correlation * self.vector_agreement

    def as_dict(self):
        return {
            "similarity": self.similarity,
            "vector_agreement": self.vector_agreement,
            "js_divergence": self.js_divergence,
            "overlap": self.overlap,
            "correlation": self.correlation,
            "local_correlation": self.local_correlation,
            "shared_correlation": self.shared_correlation,
            "shared_fraction": self.shared_fraction,
        }


@dataclass(frozen=True)
class Candidate:
    """A ranked pose.  found_by: the search that produced it ("clique 2 + map refinement",
    "mask 14 clique 1"); hypothesis: the coarse pose it was refined from."""

    T_target_source: np.ndarray
    score: Score
    found_by: str = ""
    mask_centre_A: tuple | None = None  # local alignment: centre of the mask it came from
    correlation_before: float | None = None  # map correlation before map refinement
    hypothesis: object = field(default=None, repr=False, compare=False)
    copy_correlation: float | None = None  # the target alike under this pose and the best's (symmetry.py)
    copy_shift_A: float | None = None  # RMS motion of the source's voxels between the two poses

    def as_dict(self):
        out = {
            "matrix": np.asarray(self.T_target_source).tolist(),
            "score": self.score.value,
            "score_terms": self.score.as_dict(),
            "found_by": self.found_by,
        }
        if self.correlation_before is not None:
            out["correlation_before"] = self.correlation_before
        if self.mask_centre_A is not None:
            out["mask_centre"] = [round(float(v), 3) for v in self.mask_centre_A]
        if self.copy_correlation is not None:
            out["copy_correlation"] = self.copy_correlation
            out["copy_shift_A"] = self.copy_shift_A
        return out


@dataclass(frozen=True)
class AlignResult:
    """What `align` returns. `candidates` are ranked best first; the first is the answer."""

    T_target_source: np.ndarray
    score: Score
    candidates: tuple
    timings_s: dict
    params: dict
    stats: dict = field(default_factory=dict)
    equivalent: tuple = ()  # ranks (1-based) of candidates scoring within the margin of the best
    hand: dict | None = None  # check_hand: verdict, score, mirrored_score
    mirrored_T_target_source: np.ndarray | None = None  # improper: source -> target when the mirror image fits
    confidence: dict | None = None  # {verdict: high / medium / low, evidence: {...}} (confidence.py)

    @property
    def ambiguous(self) -> bool:
        """True when other distinct poses score as well as the best (symmetry, identical chains)."""
        return bool(self.equivalent)

    def relation_to_best(self, candidate) -> dict:
        """The motion (in the target's frame) taking the best pose to `candidate`'s:
        rotation angle, axis, and the shift of the source centre it implies."""
        from . import transform as tf

        D = np.asarray(candidate.T_target_source) @ tf.invert(np.asarray(self.T_target_source))
        return {
            "angle_deg": round(tf.rotation_angle_deg(D), 3),
            "axis": [round(float(v), 5) for v in tf.rotation_axis(D)],
            "translation_A": [round(float(v), 3) for v in D[:3, 3]],
        }

    def to_json(self) -> dict:
        from . import __version__

        candidates = []
        for k, c in enumerate(self.candidates, 1):
            d = c.as_dict()
            d["rank"] = k
            if k > 1:
                d["relative_to_best"] = self.relation_to_best(c)
            d["equivalent_to_best"] = k == 1 or k in self.equivalent
            candidates.append(d)
        out = {
            "version": __version__,
            "matrix": np.asarray(self.T_target_source).tolist(),
            "score": self.score.value,
            "score_terms": self.score.as_dict(),
            "ambiguous": self.ambiguous,
            "equivalent_poses": [
                dict(rank=k, score=self.candidates[k - 1].score.value, **self.relation_to_best(self.candidates[k - 1]))
                for k in self.equivalent
            ],
            "confidence": self.confidence,
            "candidates": candidates,
            "timings_s": {k: round(v, 4) for k, v in self.timings_s.items()},
            "params": self.params,
            "stats": self.stats,
        }
        best = self.candidates[0] if self.candidates else None
        if best is not None and best.correlation_before is not None:
            out["map_refine"] = {
                "correlation_before": best.correlation_before,
                "correlation_after": best.score.correlation,
            }
        if self.hand is not None:
            out["hand"] = dict(self.hand)
            if self.mirrored_T_target_source is not None:
                out["mirrored_matrix"] = np.asarray(self.mirrored_T_target_source).tolist()
        return out

    def __repr__(self):
        return (
            f"<AlignResult score={self.score.value:.3f} "
            f"candidates={len(self.candidates)} total={self.timings_s.get('total', 0):.2f}s>"
        )
