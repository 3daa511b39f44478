"""Map- and model-building helpers shared by the test modules."""

import gzip
import math
import pathlib
import struct

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from cryoalign import transform as tf
from cryoalign.io import transform_model
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


C3_AXIS_OFFSET_A = 35.0


def moved_structure(st, T, name=None):
    """Copy of `st` moved by T (cryoalign's own transform_model), its chains renamed to `name`."""
    out = transform_model(st, T)
    if name is not None:
        for model in out:
            for chain in model:
                chain.name = name
    return out


def ca_coords(st, chain=None) -> np.ndarray:
    return np.array(
        [
            [a.pos.x, a.pos.y, a.pos.z]
            for ch in st[0]
            if chain in (None, ch.name)
            for res in ch
            for a in res
            if a.name == "CA" and a.element.name == "C"
        ]
    ).reshape(-1, 3)


def three_copies(data_dir):
    """Actin (3mfp) and three copies of it, chains A, B, C, related by a C3 turn about an axis
    C3_AXIS_OFFSET_A from the monomer's centre (touching, not clashing): (monomer structure,
    three-copy structure, C3 transform, monomer CA)."""
    import gemmi
    from scipy.spatial.transform import Rotation

    mono = gemmi.read_structure(str(data_dir / "3mfp.pdb.gz"))
    mono.setup_entities()
    assert [c.name for c in mono[0]] == ["A"]
    ca = ca_coords(mono)
    axis = np.array([1.0, 0.0, 0.0])
    perp = np.cross(axis, [0.3, 0.5, 0.8])
    point = ca.mean(0) + C3_AXIS_OFFSET_A * perp / np.linalg.norm(perp)
    R = Rotation.from_rotvec(axis * 2.0 * math.pi / 3.0).as_matrix()
    C3 = tf.make(R, point - R @ point)
    tri = gemmi.Structure()
    tri.cell = mono.cell
    model = gemmi.Model("1")
    for k, name in enumerate("ABC"):
        model.add_chain(moved_structure(mono, np.linalg.matrix_power(C3, k), name)[0][0])
    tri.add_model(model)
    tri.setup_entities()
    copies = [ca_coords(tri, c) for c in "ABC"]
    for i, j in ((0, 1), (0, 2), (1, 2)):
        closest = cKDTree(copies[i]).query(copies[j])[0].min()
        assert 3.0 < closest < 8.0, closest  # touching, not clashing
    return mono, tri, C3, ca


def file_bytes(path) -> bytes:
    """Uncompressed bytes of a (possibly gzipped) file."""
    raw = pathlib.Path(path).read_bytes()
    return gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw


def patched(raw: bytes, offset: int, fmt: str, *values) -> bytes:
    """`raw` with `values` packed (struct format `fmt`) at byte `offset`: one header field changed."""
    out = bytearray(raw)
    struct.pack_into(fmt, out, offset, *values)
    return bytes(out)
