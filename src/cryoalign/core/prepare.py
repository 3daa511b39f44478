"""A map prepared once for alignment: stages 1-3 and what map refinement needs.

    region, estimated = resolve_contour(density, contour, "source_contour")
    prepared = prepare(density, region.contour, config, fine=True, region=region)
    prepared.save("emd_1234.prep.npz"); again = load("emd_1234.prep.npz", config)

A `PreparedMap` holds everything computed from one map at one contour with one
set of parameters: the point cloud with density vectors (stage 1), the fine
cloud that targets are refined against, key points and descriptors (stages
2-3), the source voxels used on the maps (map refinement), and the volume above
contour.  It can be stored and loaded again (one compressed file holding the
arrays, the parameters that shaped them and the map's content hash); loading
with other parameters is refused.  k-d trees are built once, when first used.
The map itself is swept once (`pointcloud.scan`); every later step reads only the
box around the density.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from ..config import AlignConfig
from ..errors import InputError
from ..timing import Timer
from ..types import DensityMap, Features, PointCloud
from . import features, keypoints, maprefine, pointcloud
from .pointcloud import ContourRegion

log = logging.getLogger(__name__)

FORMAT = "cryoalign-prepared-map/1"


def resolve_contour(density: DensityMap, contour: float | None, param: str) -> tuple[ContourRegion, bool]:
    """The contour to use (the given one, checked, or an estimate from the map's
    background) and what one pass over the map finds at it.  `param` names the
    parameter in messages ("source_contour")."""
    if contour is None:
        estimated = True
        level = pointcloud.estimate_contour(density)
        log.info("%s not given: estimated %.6g from the map's density", param, level)
        warning = pointcloud.contour_warning(density, level, param)
        if warning:
            log.warning("%s", warning)
    else:
        estimated = False
        level = float(contour)
        if not math.isfinite(level):
            raise InputError(f"{param}={contour} is not a finite number; pass the EMDB recommended level")
    region = pointcloud.scan(density, level, param, require=estimated)
    if not estimated and (level <= region.minimum or level >= region.maximum):
        suggestion = pointcloud.estimate_contour(density)
        where = (
            f"at or below the map's minimum {region.minimum:g}, so every voxel of the box would count as molecule"
            if level <= region.minimum
            else f"at or above the map's maximum {region.maximum:g}, so nothing would be kept"
        )
        raise InputError(f"{param}={level:g} is {where}; try {param}={suggestion:.4g} (or the EMDB recommended level)")
    return region, estimated


@dataclass(frozen=True, eq=False)
class PreparedMap:
    """Everything computed from one map for alignment (see the module docstring).

    cloud: sampled points with density vectors; fine: points at half the sampling
    interval (None unless prepared with fine=True; needed when this map is a target);
    features: key points and descriptors (float32); sample: source voxels above contour
    for map refinement; density: the map itself when it is at hand (map refinement
    reads the target's densities), None after `load` without a map."""

    name: str
    contour: float
    contour_estimated: bool
    volume_A3: float
    sampling_A: float
    cloud: PointCloud
    fine: PointCloud | None
    features: Features
    sample: maprefine.MapSample
    params: dict
    map_hash: str
    density: DensityMap | None = field(default=None, repr=False)

    @cached_property
    def tree(self):
        from scipy.spatial import cKDTree

        return cKDTree(self.cloud.points_A)

    @cached_property
    def fine_tree(self):
        from scipy.spatial import cKDTree

        if self.fine is None:
            raise InputError(
                f"the prepared map {self.name} has no fine point cloud: prepare it with fine=True to use it as a target"
            )
        return cKDTree(self.fine.points_A)

    @property
    def centre_A(self) -> np.ndarray:
        return self.cloud.points_A.mean(0)

    def with_density(self, density: DensityMap) -> PreparedMap:
        """The same prepared map, with its map attached (for use as a target)."""
        from dataclasses import replace

        return replace(self, density=density)

    def save(self, path) -> None:
        """Write to one compressed .npz file (atomically)."""
        from ..io.files import atomic_write

        meta = dict(
            format=FORMAT,
            name=self.name,
            contour=self.contour,
            contour_estimated=self.contour_estimated,
            volume_A3=self.volume_A3,
            sampling_A=self.sampling_A,
            params=self.params,
            map_hash=self.map_hash,
            has_fine=self.fine is not None,
        )
        arrays = dict(
            points=self.cloud.points_A,
            vectors=self.cloud.vectors,
            density=self.cloud.density,
            keypoints=self.features.keypoints_A,
            descriptors=self.features.descriptors,
            sample_points=self.sample.points_A,
            sample_values=self.sample.values,
            meta=np.frombuffer(json.dumps(meta).encode(), np.uint8),
        )
        if self.fine is not None:
            arrays.update(
                fine_points=self.fine.points_A, fine_vectors=self.fine.vectors, fine_density=self.fine.density
            )

        def _write(tmp):
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, **arrays)

        atomic_write(path, _write)

    def __repr__(self):
        return (
            f"<PreparedMap {self.name} contour={self.contour:g} sampling={self.sampling_A:g} Å "
            f"points={len(self.cloud)} keypoints={len(self.features)}>"
        )


def load(path, config: AlignConfig | None = None, *, density: DensityMap | None = None) -> PreparedMap:
    """Read a prepared map written by `PreparedMap.save`.  With `config`, refuse a file
    prepared with other parameters (it would give other answers)."""
    path = os.fspath(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(bytes(z["meta"]).decode())
            arrays = {k: z[k] for k in z.files if k != "meta"}
    except FileNotFoundError:
        raise InputError(f"prepared map not found: {path}") from None
    except (OSError, ValueError, KeyError, EOFError) as exc:
        raise InputError(f"{path} is not a readable prepared map ({exc}); prepare the map again") from None
    if meta.get("format") != FORMAT:
        raise InputError(
            f"{path} is not a cryoalign prepared map (format {meta.get('format')!r}); prepare the map again"
        )
    if config is not None:
        want = _resolved_params(config, meta["sampling_A"])
        if want != meta["params"]:
            diff = ", ".join(
                f"{k}={meta['params'].get(k)!r} (now {v!r})" for k, v in want.items() if meta["params"].get(k) != v
            )
            raise InputError(
                f"{path} was prepared with other parameters: {diff}; prepare it again with the current parameters"
            )
    spacing = float(meta["sampling_A"])
    cloud = PointCloud(arrays["points"], arrays["vectors"], arrays["density"], spacing)
    fine = (
        PointCloud(arrays["fine_points"], arrays["fine_vectors"], arrays["fine_density"], spacing / 2.0)
        if meta.get("has_fine")
        else None
    )
    return PreparedMap(
        name=meta["name"],
        contour=float(meta["contour"]),
        contour_estimated=bool(meta["contour_estimated"]),
        volume_A3=float(meta["volume_A3"]),
        sampling_A=spacing,
        cloud=cloud,
        fine=fine,
        features=Features(arrays["keypoints"], arrays["descriptors"]),
        sample=maprefine.MapSample(points_A=arrays["sample_points"], values=arrays["sample_values"]),
        params=meta["params"],
        map_hash=meta["map_hash"],
        density=density,
    )


def _resolved_params(config: AlignConfig, sampling_A: float) -> dict:
    params = config.replace(sampling_A=sampling_A).prepare_params()
    return json.loads(json.dumps(params))  # as stored (JSON types)


def map_hash(density: DensityMap) -> str:
    """SHA-256 of the map's values, voxel size and origin (the content, not the file)."""
    h = hashlib.sha256()
    h.update(np.asarray(density.data.shape, np.int64).tobytes())
    h.update(np.asarray(density.voxel_size_A, np.float64).tobytes())
    h.update(np.asarray(density.origin_A, np.float64).tobytes())
    for z in range(0, density.data.shape[0], 32):
        h.update(np.ascontiguousarray(density.data[z : z + 32], dtype=np.float32).tobytes())
    return h.hexdigest()


def keypoint_std_A(density: DensityMap, config: AlignConfig) -> float:
    # The original's 3 Å kernel is narrower than coarse maps' voxels, where mean shift
    # then stalls on single voxels: never go below the map's own voxel size.
    return (
        max(config.keypoint_sigma_A, config.keypoint_voxel_factor * float(density.voxel_size_A.max()))
        * pointcloud.KERNEL_TO_STD
    )


def prepare(
    density: DensityMap,
    contour: float,
    config: AlignConfig,
    *,
    fine: bool = False,
    region: ContourRegion | None = None,
    name: str = "map",
    contour_estimated: bool = False,
    timer: Timer | None = None,
    with_hash: bool = False,
) -> PreparedMap:
    """Stages 1-3 of one map at `contour` with `config.sampling_A` (resolved, not None).

    fine: also sample the half-interval cloud a target is refined against.
    region: the result of `pointcloud.scan` at this contour when the caller has it.
    with_hash: record the map's content hash (`map_hash`; for stored maps)."""
    if config.sampling_A is None:
        raise InputError("prepare needs a sampling interval: set sampling_A (3 Å for single chains, 5 Å for complexes)")
    timer = timer or Timer()
    sampling = float(config.sampling_A)
    with timer.stage(f"{name} point cloud"):
        region = region if region is not None else pointcloud.scan(density, contour)
        crop = region.crop()
        vec_field = pointcloud.smooth_field(crop, contour, config.vector_sigma_A * pointcloud.KERNEL_TO_STD)
        cloud = pointcloud.sample_points(crop, contour, sampling, config.vector_sigma_A, field=vec_field)
        fine_cloud = (
            pointcloud.sample_points(crop, contour, sampling / 2.0, config.vector_sigma_A, field=vec_field)
            if fine
            else None
        )
        sample = maprefine.sample_source(crop, contour, config.map_points)
    with timer.stage(f"{name} key points"):
        if config.keypoints == "meanshift":
            key_field = pointcloud.smooth_field(crop, contour, keypoint_std_A(density, config))
            kps = keypoints.detect(key_field, cloud.points_A, config.merge_eps_A)
        else:
            kps = keypoints.dense(cloud.points_A, sampling, config.max_keypoints)
    with timer.stage(f"{name} descriptors"):
        feats = features.describe(kps, cloud, config.descriptor_radius_A)
        feats = Features(feats.keypoints_A, feats.descriptors.astype(np.float32))
    if len(feats) < 3:
        label = name if "map" in name else f"the {name} map"
        raise InputError(
            f"only {len(feats)} key points found in {label} above its contour "
            f"({len(cloud)} sampled points); lower the contour or use a smaller sampling_A"
        )
    return PreparedMap(
        name=name,
        contour=float(contour),
        contour_estimated=contour_estimated,
        volume_A3=region.volume_A3,
        sampling_A=sampling,
        cloud=cloud,
        fine=fine_cloud,
        features=feats,
        sample=sample,
        params=_resolved_params(config, sampling),
        map_hash=map_hash(density) if with_hash else "",
        density=density,
    )
