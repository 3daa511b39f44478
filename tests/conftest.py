"""Shared fixtures: the real test data folder and a writer for small synthetic MRC files."""

from __future__ import annotations

import pathlib
import warnings

import numpy as np
import pytest

DATA_DIR = pathlib.Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="session")
def data_dir() -> pathlib.Path:
    """Folder of small real EMDB/PDB files (see tests/data/README.md). Treat as read-only."""
    return DATA_DIR


def _write_mrc(path, data_zyx, *, voxel=1.0, origin=(0.0, 0.0, 0.0), nstart=(0, 0, 0), axes=(1, 2, 3)):
    """Write `data_zyx` to an MRC file exactly as given and return the path.

    data_zyx: 3D array in the file's stored order (section, row, column). With the
        default ``axes=(1, 2, 3)`` that is [z, y, x]; with other axes the array is
        written raw, so axis-permutation files can be built. The dtype sets the MRC
        mode (float32 -> 2, int8 -> 0, int16 -> 1, uint16 -> 6, float16 -> 12,
        complex64 -> 4).
    voxel: voxel edge along x, y, z in Å (a scalar for cubic voxels).
    origin: the ORIGIN field (x, y, z) in Å.
    nstart: NXSTART, NYSTART, NZSTART, i.e. the start index of the column, row and
        section axes (not x, y, z unless ``axes=(1, 2, 3)``).
    axes: MAPC, MAPR, MAPS (which of x=1, y=2, z=3 runs along column, row, section).

    MX/MY/MZ are the grid size along x, y, z and CELLA = MX/MY/MZ * voxel, as in
    EMDB maps.
    """
    import mrcfile

    data = np.asarray(data_zyx)
    if data.ndim != 3:
        raise ValueError(f"data must be 3D, got shape {data.shape}")
    axes = tuple(int(a) for a in axes)
    voxel_xyz = np.broadcast_to(np.asarray(voxel, float), (3,))
    n_sections, n_rows, n_columns = data.shape
    n_xyz = [1, 1, 1]
    if sorted(axes) == [1, 2, 3]:
        for n, code in zip((n_columns, n_rows, n_sections), axes):
            n_xyz[code - 1] = n
    else:  # deliberately invalid axes (for error tests): keep the grid size as stored
        n_xyz = [n_columns, n_rows, n_sections]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. NaN in header statistics
        with mrcfile.new(str(path), overwrite=True) as m:
            m.set_data(data)
            h = m.header
            h.mapc, h.mapr, h.maps = axes
            h.mx, h.my, h.mz = n_xyz
            h.cella.x, h.cella.y, h.cella.z = (float(n * v) for n, v in zip(n_xyz, voxel_xyz))
            h.nxstart, h.nystart, h.nzstart = (int(s) for s in nstart)
            h.origin.x, h.origin.y, h.origin.z = (float(o) for o in origin)
            m.update_header_stats()
    return pathlib.Path(path)


@pytest.fixture(scope="session")
def write_mrc():
    """``write_mrc(path, data_zyx, voxel=(x,y,z), origin=(x,y,z), nstart=(c,r,s),
    axes=(mapc,mapr,maps))`` writes a raw MRC file and returns its path."""
    return _write_mrc
