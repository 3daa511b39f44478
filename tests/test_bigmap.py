"""Big maps are memory-mapped and swept slab by slab (benchmarks/bigmap.py measures the
1024^3 case); here the same code paths are forced on small files."""

from __future__ import annotations

import gzip
import shutil

import numpy as np
import pytest

import cryoalign
from cryoalign.core import maprefine, pointcloud
from cryoalign.errors import InputError
from cryoalign.io import maps as io


@pytest.fixture
def small_memmap_limit(monkeypatch):
    monkeypatch.setattr(io, "MEMMAP_BYTES", 0)


@pytest.fixture(scope="module")
def plain_map(data_dir, tmp_path_factory):
    """EMD-3695 (5 Å grid) uncompressed, as written by cryoalign (float32, x, y, z)."""
    path = tmp_path_factory.mktemp("big") / "emd_3695.mrc"
    with gzip.open(data_dir / "emd_3695_5A.mrc.gz") as src, open(path, "wb") as dst:
        shutil.copyfileobj(src, dst)
    return path


def test_big_float32_map_is_memory_mapped_with_the_same_geometry(plain_map, small_memmap_limit):
    mapped = io.read_map(plain_map)
    assert isinstance(mapped.data, np.memmap) and not mapped.data.flags.writeable
    io.MEMMAP_BYTES = 2**62  # the general reader, for comparison
    read = io.read_map(plain_map)
    assert not isinstance(read.data, np.memmap)
    np.testing.assert_array_equal(np.asarray(mapped.data), read.data)
    np.testing.assert_array_equal(mapped.voxel_size_A, read.voxel_size_A)
    np.testing.assert_array_equal(mapped.origin_A, read.origin_A)


def test_memory_mapped_map_aligns_like_a_read_one(plain_map, data_dir, small_memmap_limit):
    target = data_dir / "emd_3696_5A.mrc.gz"  # gzipped: read normally
    a = cryoalign.align(plain_map, target, source_contour=1.25, target_contour=0.69, mode="global")
    io.MEMMAP_BYTES = 2**62
    b = cryoalign.align(plain_map, target, source_contour=1.25, target_contour=0.69, mode="global")
    np.testing.assert_array_equal(a.T_target_source, b.T_target_source)


def test_non_float32_and_permuted_maps_use_the_general_reader(tmp_path, write_mrc, small_memmap_limit):
    data = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    m = io.read_map(write_mrc(tmp_path / "i16.mrc", data, voxel=2.0))
    assert not isinstance(m.data, np.memmap) and m.data.dtype == np.float32
    f = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    p = io.read_map(write_mrc(tmp_path / "zyx.mrc", f, axes=(3, 2, 1)))
    assert not isinstance(p.data, np.memmap)
    np.testing.assert_array_equal(p.data, np.transpose(f, (2, 1, 0)))


def test_memory_mapped_nan_and_truncation_get_the_usual_messages(tmp_path, write_mrc, small_memmap_limit):
    data = np.ones((40, 8, 8), np.float32)
    data[35, 1, 1] = np.nan  # in a later slab
    path = write_mrc(tmp_path / "nan.mrc", data)
    with pytest.raises(InputError, match=r"contains 1 NaN or infinite voxel values"):
        io.read_map(path)
    good = write_mrc(tmp_path / "ok.mrc", np.ones((40, 8, 8), np.float32))
    cut = tmp_path / "cut.mrc"
    cut.write_bytes(good.read_bytes()[: 1024 + 1000])
    with pytest.raises(InputError, match=r"is truncated"):
        io.read_map(cut)


def test_above_box_matches_the_full_mask():
    rng = np.random.default_rng(0)
    data = np.zeros((70, 30, 40), np.float32)  # more than two slabs deep
    data[5, 7, 9] = data[66, 20, 3] = data[33, 2, 38] = 2.0
    data += rng.uniform(0, 0.5, data.shape).astype(np.float32)
    m = cryoalign.DensityMap(data=data, voxel_size_A=np.ones(3), origin_A=np.zeros(3))
    lo, hi = pointcloud.above_box(m, 1.0)
    idx = np.argwhere(data >= 1.0)
    np.testing.assert_array_equal(lo, idx.min(0))
    np.testing.assert_array_equal(hi, idx.max(0) + 1)
    with pytest.raises(InputError, match="reaches the contour level 9"):
        pointcloud.above_box(m, 9.0)


def test_slab_wise_source_sample_equals_a_flat_stride():
    rng = np.random.default_rng(1)
    data = rng.normal(size=(75, 20, 20)).astype(np.float32)
    m = cryoalign.DensityMap(data=data, voxel_size_A=np.full(3, 1.5), origin_A=np.array([1.0, 2.0, 3.0]))
    for max_points in (100, 1000, 10**6):
        s = maprefine.sample_source(m, 0.5, max_points)
        zyx = np.argwhere(data >= 0.5)
        zyx = zyx[:: -(-len(zyx) // max_points)]
        np.testing.assert_array_equal(s.values, data[zyx[:, 0], zyx[:, 1], zyx[:, 2]])
        np.testing.assert_allclose(s.points_A, m.index_to_world(zyx[:, ::-1]))
        assert len(s.values) <= max_points
