"""All alignment parameters and their defaults, in one place.

The resolved configuration (defaults plus what the user set, plus values chosen
from the data such as estimated contours) is saved with every result.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np

from .errors import InputError


@dataclass(frozen=True)
class AlignConfig:
    # mode: "global" (whole on whole), "local" (part inside a larger map, ranked
    # placements) or "auto" (local when the source's volume above contour is under
    # LOCAL_VOLUME_RATIO of the target's)
    mode: str = "auto"
    top: int = 10                        # candidates reported (local: placements)
    jobs: int | None = None              # local: worker processes (None: all cores); never changes results
    # point cloud (stage 1)
    voxel_A: float | None = None         # sampling interval; None -> 3 Å for small sources, else 5 Å
    vector_sigma_A: float = 8.0          # density-vector kernel: k(p) = exp(-1.5 |p/sigma|^2)
    # key points (stage 2)
    keypoints: str = "dense"             # "dense" (every sampled point) or "meanshift" (paper)
    max_keypoints: int = 12000           # dense: thin to a coarser sub-lattice above this
    keypoint_sigma_A: float = 3.0        # mean-shift kernel, same form ...
    keypoint_voxel_factor: float = 1.0   # ... but at least this many map voxels wide
    keypoint_merge_A: float | None = None  # DBSCAN eps; None -> voxel_A
    # descriptors (stage 3)
    descriptor_radius_factor: float = 7.0  # SHOT support radius = factor x voxel_A
    # matching (stage 4)
    match_k: int = 1                     # 1 = mutual nearest neighbours (paper)
    # robust coarse pose (stage 5)
    noise_bound_A: float | None = None   # TEASER noise bound; None -> voxel_A
    max_hypotheses: int = 8              # coarse poses refined and scored
    # fine pose (stage 6)
    icp_iterations: int = 60
    check_hand: bool = False             # also align the mirror image of the source and compare
    map_refine: bool = True              # polish on the maps themselves (correlation about the mean)
    # score (stage 7)
    score_pair_cutoff_A: float = 10.0
    score_vector_cos: float = 0.6
    js_samples: int = 4000
    seed: int = 0

    def __post_init__(self):
        if self.mode not in ("auto", "global", "local"):
            raise InputError(f"mode must be 'auto', 'global' or 'local', got {self.mode!r}")
        if not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise InputError(f"--seed must be a non-negative integer, got {self.seed}")
        if self.top < 1:
            raise InputError(f"--top must be at least 1, got {self.top}")
        if self.jobs is not None and self.jobs < 1:
            raise InputError(f"--jobs must be at least 1, got {self.jobs}")
        for name in ("vector_sigma_A", "keypoint_sigma_A", "descriptor_radius_factor",
                     "score_pair_cutoff_A"):
            value = getattr(self, name)
            if not (value > 0):
                raise InputError(f"{name} must be positive, got {value}")
        if self.voxel_A is not None and not 0.5 <= self.voxel_A <= 30:
            raise InputError(f"sampling interval --voxel {self.voxel_A} Å is outside 0.5-30 Å; "
                             "use 5 Å for complexes or 3 Å for single chains")
        if self.keypoints not in ("dense", "meanshift"):
            raise InputError(f"keypoints must be 'dense' or 'meanshift', got {self.keypoints!r}")
        if self.max_hypotheses < 1 or self.icp_iterations < 1:
            raise InputError("max_hypotheses and icp_iterations must be at least 1")

    @property
    def merge_eps_A(self) -> float:
        return self.keypoint_merge_A if self.keypoint_merge_A is not None else self.voxel_A

    @property
    def noise_A(self) -> float:
        return self.noise_bound_A if self.noise_bound_A is not None else self.voxel_A

    @property
    def descriptor_radius_A(self) -> float:
        return self.descriptor_radius_factor * self.voxel_A

    def replace(self, **changes) -> "AlignConfig":
        return replace(self, **changes)

    def as_dict(self) -> dict:
        return asdict(self)
