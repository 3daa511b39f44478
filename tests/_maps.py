"""Map-building helpers shared by the test modules."""
import numpy as np
from scipy import ndimage

from cryoalign import transform as tf
from cryoalign.types import DensityMap


def resampled_map(density: DensityMap, T: np.ndarray, voxel: float, rng, margin=20.0, order=1) -> DensityMap:
    """The map moved by T (world -> world), interpolated onto a new, unrelated grid."""
    occupied = density.index_to_world(np.argwhere(density.data > 0)[:, ::-1])
    moved = tf.apply(T, occupied)
    lo = moved.min(0) - margin + rng.uniform(0.0, voxel, 3)
    n = np.ceil((moved.max(0) + margin - lo) / voxel).astype(int) + 1
    gz, gy, gx = np.meshgrid(*[lo[i] + voxel * np.arange(n[i]) for i in (2, 1, 0)], indexing="ij")
    grid = np.stack([gx.ravel(), gy.ravel(), gz.ravel()], 1)
    f = density.world_to_index(tf.apply(tf.invert(T), grid))
    vals = ndimage.map_coordinates(density.data, [f[:, 2], f[:, 1], f[:, 0]], order=order, cval=0.0)
    return DensityMap(vals.reshape(gz.shape).astype(np.float32), np.full(3, voxel), lo)
