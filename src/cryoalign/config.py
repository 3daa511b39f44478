"""Every alignment parameter and its default, in one place, grouped by stage.

The resolved configuration (defaults, what the user set, and values chosen from
the data such as the sampling interval) is saved with every result
(`params.json`), so a result can be reproduced from its parameters alone.
Field names are the library's names; the command line maps its own flags onto
them (`flags.FLAGS`), and error messages name the field (`sampling_A=3`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import cast

import numpy as np

from .errors import InputError


@dataclass(frozen=True)
class AlignConfig:
    # --- what to do
    # "global" (whole on whole), "local" (part inside a larger map, ranked placements)
    # or "auto" (local when the source's volume above contour is under local_volume_ratio
    # of the target's)
    mode: str = "auto"
    top: int = 10  # candidates reported (local: placements)
    jobs: int | None = None  # local: worker processes (None: all cores); never changes results
    seed: int = 0  # seed of every random choice
    check_hand: bool = False  # also align the mirror image of the source and compare
    map_refine: bool = True  # polish and rank on the maps themselves
    # --- mode and sampling choice (choose_mode_and_sampling)
    local_volume_ratio: float = 0.4  # auto mode: local below this source/target volume ratio
    sampling_A: float | None = None  # point-cloud sampling interval; None: chosen from the source's size
    default_sampling_A: float = 5.0  # ... for complexes (paper) ...
    small_source_sampling_A: float = 3.0  # ... and for small sources such as single chains (paper)
    small_source_A3: float = 187_500.0  # "small": under this volume above contour (~150 kDa of protein)
    # --- stage 1: point cloud
    vector_sigma_A: float = 8.0  # density-vector kernel: k(p) = exp(-1.5 |p/sigma|^2)
    # --- stage 2: key points
    keypoints: str = "dense"  # "dense" (every sampled point) or "meanshift" (paper)
    max_keypoints: int = 12000  # dense: thin to a coarser sub-lattice above this
    keypoint_sigma_A: float = 3.0  # mean-shift kernel, same form ...
    keypoint_voxel_factor: float = 1.0  # ... but at least this many map voxels wide
    keypoint_merge_A: float | None = None  # DBSCAN eps; None -> sampling_A
    # --- stage 3: descriptors
    descriptor_radius_factor: float = 7.0  # SHOT support radius = factor x sampling_A
    # --- stage 4: matching
    match_k: int = 1  # 1 = mutual nearest neighbours (paper)
    # --- stage 5: coarse poses
    noise_bound_A: float | None = None  # TEASER noise bound; None -> sampling_A
    max_hypotheses: int = 8  # global: coarse poses (distinct cliques) taken further
    # --- local search (replaces stages 4-5 for a part inside a whole)
    mask_radius_factor: float = 1.1  # mask radius = factor x source diameter / 2 (paper)
    min_mask_points: int = 100  # masks holding fewer sampled points are skipped ...
    min_mask_keypoints: int = 10  # ... or fewer key points ...
    min_mask_fraction: float = 0.3  # ... or fewer than this fraction of the source's points
    mask_hypotheses: int = 3  # coarse poses per mask
    mask_screen_points: int = 600  # source points scoring each mask's coarse poses
    descriptor_top_k: int = 64  # most similar target descriptors kept per source descriptor
    local_refine_min: int = 20  # distinct coarse poses refined: max(this, 2 x top)
    # --- stage 6: fine pose (ranking path)
    icp_iterations: int = 60  # ICP on all source points (the leaders) ...
    screen_iterations: int = 30  # ... and on the subsample every pose is screened with
    screen_points: int = 2000  # source points for refining every pose before ranking ...
    polish_top: int = 2  # ... of which the leaders are then refined on all points
    same_pose_A: float = 3.0  # poses closer than this at the source centre ...
    same_pose_deg: float = 10.0  # ... and this in rotation are the same pose
    # --- stage 7: point score
    score_pair_cutoff_A: float = 10.0
    score_vector_cos: float = 0.6
    js_samples: int = 4000
    # --- stage 8: map refinement and ranking
    map_refine_fraction: float = 0.5  # candidates whose point score is >= this x the best's are refined ...
    map_refine_max: int = 5  # ... at most this many; the others are scored on the maps as they are
    map_points: int = 20000  # source voxels above contour used on the maps
    map_coarse_points: int = 2000  # a refinement runs on this many first ...
    map_competitive: float = 0.8  # ... then on all when within this fraction of the best kept
    map_near_factor: float = 2.5  # poses this x same_pose_* from a refined one are its shoulders
    map_rounds: int = 4  # L-BFGS restarts from the new pose ...
    map_iterations: int = 40  # ... of at most this many iterations
    symmetry_margin: float = 0.03  # distinct poses within 3% of the best: an ambiguous answer ...
    tie_break_points: int = 2_000_000  # ... compared again on (up to) this many source voxels
    symmetry_points: int = 5000  # source voxels on which a pose is compared with the best (symmetry.py) ...
    symmetry_mate_cc: float = 0.60  # ... the target alike under both (copy correlation): a symmetry mate ...
    symmetry_exact_cc: float = 0.97  # ... so alike that nothing can tell them apart: no tie break
    symmetry_min_shift_A: float = 10.0  # a mate moves the source by at least this (RMS over its voxels)
    hand_margin: float = 0.10  # check_hand: one hand must score 10% better to decide
    # --- wider search when the answer is weak (recall.py)
    wide_search: str = "auto"  # "auto" (when the confidence is low), "always" or "never"
    wide_placements: int = 60  # random orientations optimised on the maps ...
    wide_keep: int = 6  # ... of which the best distinct ones join the candidates
    wide_sample_points: int = 1000  # source voxels used while optimising them ...
    wide_smoothing_A: float = 4.0  # ... against the target blurred by a Gaussian of this sigma
    wide_max_source_points: int = 20_000  # automatic wider search only up to this many source points ...
    wide_max_target_points: int = 400_000  # ... and fine target points (its cost scales with them)
    # --- exhaustive 6D search when the answer is weak (exhaustive.py)
    exhaustive: str = "auto"  # "auto" (local/fit answers called low), "always" or "never"
    descriptors: bool = True  # False: no descriptor search (the exhaustive scan alone; tests)
    exhaustive_step_deg: float | None = None  # rotation step; None: from the part's radius and the resolution ...
    exhaustive_min_step_deg: float = 10.0  # ... kept at least this ...
    exhaustive_max_step_deg: float = 30.0  # ... and at most this
    exhaustive_resolution_A: float | None = None  # the map's resolution (fit: --resolution); None: 2 x its voxel
    exhaustive_voxel_A: float | None = None  # coarse grid voxel; None: the target's voxel, >= resolution / 2 ...
    exhaustive_max_box: int = 80  # ... and coarser while the FFT box would exceed this along an axis
    exhaustive_max_work: int | None = 1_000_000_000  # rotations x FFT-box voxels at most: a larger scan gets a
    # coarser step (logged); None: no budget (see exhaustive.py "budget")
    exhaustive_per_rotation: int = 3  # best positions kept per rotation ...
    exhaustive_candidates: int = (
        400  # ... of which the best distinct poses over all rotations are scored on the maps ...
    )
    exhaustive_peaks: int = 100  # ... the best of them by the scan's score ...
    exhaustive_rescored: int = 30  # ... and by that correlation refined on the maps ...
    exhaustive_keep: int = 10  # ... and the best distinct of those ranked with the other candidates
    # --- chain fitting (fit.py)
    fit_sampling_A: float = 3.0  # sampling interval for chains (paper), unless sampling_A is set
    clash_distance_A: float = 3.0  # trace atoms (CA/P) closer than this to a placed chain's ...
    clash_fraction: float = 0.1  # ... in more than this fraction of the chain's trace: a clash

    def __post_init__(self):
        if self.mode not in ("auto", "global", "local"):
            raise InputError(f"mode must be 'auto', 'global' or 'local', got {self.mode!r}")
        if not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise InputError(f"seed={self.seed} is not allowed: give a non-negative integer")
        for name in (
            "top",
            "max_hypotheses",
            "icp_iterations",
            "screen_iterations",
            "mask_hypotheses",
            "screen_points",
            "mask_screen_points",
            "map_points",
            "map_coarse_points",
            "js_samples",
            "map_refine_max",
            "max_keypoints",
            "descriptor_top_k",
            "local_refine_min",
            "wide_placements",
            "wide_keep",
            "tie_break_points",
            "map_rounds",
            "map_iterations",
            "wide_max_source_points",
            "wide_max_target_points",
            "wide_sample_points",
            "symmetry_points",
            "exhaustive_max_box",
            "exhaustive_per_rotation",
            "exhaustive_peaks",
            "exhaustive_candidates",
            "exhaustive_rescored",
            "exhaustive_keep",
        ):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise InputError(f"{name}={value} is not allowed: give a whole number of at least 1")
        if self.jobs is not None and self.jobs < 1:
            raise InputError(f"jobs={self.jobs} is not allowed: give at least 1 (or leave it unset for all cores)")
        for name in (
            "vector_sigma_A",
            "keypoint_sigma_A",
            "descriptor_radius_factor",
            "score_pair_cutoff_A",
            "mask_radius_factor",
            "same_pose_A",
            "same_pose_deg",
            "default_sampling_A",
            "small_source_sampling_A",
            "fit_sampling_A",
            "clash_distance_A",
            "wide_smoothing_A",
            "symmetry_min_shift_A",
        ):
            value = getattr(self, name)
            if not (value > 0):
                raise InputError(f"{name}={value} is not allowed: give a positive number")
        for name in (
            "local_volume_ratio",
            "min_mask_fraction",
            "map_refine_fraction",
            "map_competitive",
            "symmetry_margin",
            "hand_margin",
            "score_vector_cos",
            "clash_fraction",
            "symmetry_mate_cc",
            "symmetry_exact_cc",
        ):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise InputError(f"{name}={value} is not allowed: give a number between 0 and 1")
        if self.sampling_A is not None and not 0.5 <= self.sampling_A <= 30:
            raise InputError(
                f"sampling_A={self.sampling_A} Å is outside 0.5-30 Å; use 5 Å for complexes or 3 Å for single chains"
            )
        if self.wide_search not in ("auto", "always", "never"):
            raise InputError(f"wide_search must be 'auto', 'always' or 'never', got {self.wide_search!r}")
        if self.exhaustive not in ("auto", "always", "never"):
            raise InputError(f"exhaustive must be 'auto', 'always' or 'never', got {self.exhaustive!r}")
        for name in ("exhaustive_step_deg", "exhaustive_resolution_A", "exhaustive_voxel_A", "exhaustive_max_work"):
            value = getattr(self, name)
            if value is not None and not (value > 0):
                raise InputError(f"{name}={value} is not allowed: give a positive number (or leave it unset)")
        if not 0 < self.exhaustive_min_step_deg <= self.exhaustive_max_step_deg <= 90:
            raise InputError(
                f"exhaustive_min_step_deg={self.exhaustive_min_step_deg} and exhaustive_max_step_deg="
                f"{self.exhaustive_max_step_deg} must satisfy 0 < min <= max <= 90"
            )
        if not self.descriptors and self.exhaustive != "always":
            raise InputError("descriptors=False leaves only the exhaustive scan: set exhaustive='always'")
        if self.keypoints not in ("dense", "meanshift"):
            raise InputError(f"keypoints must be 'dense' or 'meanshift', got {self.keypoints!r}")

    @property
    def merge_eps_A(self) -> float:
        return cast(float, self.keypoint_merge_A if self.keypoint_merge_A is not None else self.sampling_A)

    @property
    def noise_A(self) -> float:
        return cast(float, self.noise_bound_A if self.noise_bound_A is not None else self.sampling_A)

    @property
    def descriptor_radius_A(self) -> float:
        return self.descriptor_radius_factor * cast(float, self.sampling_A)

    def replace(self, **changes) -> AlignConfig:
        unknown = sorted(set(changes) - {f.name for f in fields(self)})
        if unknown:
            raise InputError(f"unknown parameter(s) {', '.join(unknown)}; see cryoalign.AlignConfig for the list")
        return replace(self, **changes)

    def as_dict(self) -> dict:
        return asdict(self)

    # the parameters that shape a prepared map (prepare.py): a stored map prepared with
    # other values is refused, never silently reused
    PREPARE_FIELDS = (
        "sampling_A",
        "vector_sigma_A",
        "keypoints",
        "max_keypoints",
        "keypoint_sigma_A",
        "keypoint_voxel_factor",
        "keypoint_merge_A",
        "descriptor_radius_factor",
        "map_points",
    )

    def prepare_params(self) -> dict:
        return {name: getattr(self, name) for name in self.PREPARE_FIELDS}
