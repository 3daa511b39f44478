"""Odd maps at the reading and writing edge: images and thin slabs, skewed cells, values
that overflow single precision, single outlier voxels, bzip2/xz files, map suffixes.

One test per message of `read_map` / `write_map` for these inputs (the message is
checked in full), plus the `cryoalign.io.robust` helpers the level decisions rely on.
"""

from __future__ import annotations

import bz2
import logging
import lzma
import os
import pathlib
import re
import struct
import tracemalloc
import warnings

import numpy as np
import pytest

from _maps import file_bytes, patched
from cryoalign.errors import InputError
from cryoalign.io import check_map_suffix, read_map, write_map
from cryoalign.io import maps as cio
from cryoalign.io.robust import clip_outliers, count_outliers, describe_outliers, robust_range
from cryoalign.types import DensityMap

CELLB, ISPG, MZ = 52, 88, 36  # little-endian MRC2014 header offsets (bytes)
ODD_STAMP = "1akeA_10A_simulated_odd_machine_stamp.mrc"  # plain, 22^3, 3 Å, values 0..~0.5


def with_data(raw: bytes, data: np.ndarray) -> bytes:
    """`raw` (a plain little-endian mode-2 map) with its voxel values replaced."""
    return raw[:1024] + np.ascontiguousarray(data, "<f4").tobytes()


def voxels(raw: bytes) -> np.ndarray:
    nx, ny, nz = struct.unpack_from("<3i", raw, 0)
    return np.frombuffer(raw, "<f4", nx * ny * nz, 1024).reshape(nz, ny, nx).copy()


@pytest.fixture
def ake(data_dir) -> bytes:
    """The 1ake map with a standard little-endian machine stamp (so it can be memory-mapped)."""
    return patched(file_bytes(data_dir / ODD_STAMP), 212, "4s", b"DD\x00\x00")


def test_memory_mapped_reader_falls_back_on_an_odd_machine_stamp(data_dir, monkeypatch):
    monkeypatch.setattr(cio, "MEMMAP_BYTES", 0)  # used to raise ValueError from mrcfile
    m = read_map(data_dir / ODD_STAMP)
    assert not isinstance(m.data, np.memmap) and m.data.shape == (22, 22, 22)


@pytest.fixture(params=["read", "memory-mapped"])
def reader_path(request, monkeypatch):
    """Run a test through the general reader and through the memory-mapped one."""
    if request.param == "memory-mapped":
        monkeypatch.setattr(cio, "MEMMAP_BYTES", 0)
    return request.param


def put(tmp_path, raw: bytes, name="odd.mrc") -> pathlib.Path:
    path = tmp_path / name
    path.write_bytes(raw)
    return path


# ================================================================ 1. images and thin slabs
@pytest.mark.parametrize(
    "shape_zyx",
    [(1, 5, 6), (1, 64, 64), (3, 8, 8), (8, 2, 8), (8, 8, 1)],
    ids=["2D-image", "2D-64", "3-sections", "2-rows", "1-column"],
)
def test_image_or_thin_slab_is_refused(tmp_path, write_mrc, reader_path, shape_zyx):
    data = np.random.default_rng(0).random(shape_zyx).astype(np.float32)
    path = write_mrc(tmp_path / "thin.mrc", data, voxel=2.0)
    nz, ny, nx = shape_zyx
    with pytest.raises(InputError) as err:
        read_map(path)
    assert str(err.value) == (
        f"{path} is {nx} x {ny} x {nz} voxels: a 3D density map needs at least 4 "
        "voxels along every axis; pass a 3D map (not an image or a stack)"
    )


def test_2d_image_written_by_mrcfile_is_refused(tmp_path):
    mrcfile = pytest.importorskip("mrcfile")
    path = tmp_path / "image.mrc"
    with mrcfile.new(str(path)) as m:
        m.set_data(np.ones((30, 40), np.float32))  # a 2D image: NZ = 1, ISPG 0
    with pytest.raises(InputError, match=re.escape(f"{path} is 40 x 30 x 1 voxels: a 3D density map needs")):
        read_map(path)


def test_smallest_accepted_map_is_4_voxels_along_every_axis(tmp_path, write_mrc):
    data = np.random.default_rng(1).random((4, 4, 4)).astype(np.float32)
    np.testing.assert_array_equal(read_map(write_mrc(tmp_path / "m.mrc", data)).data, data)


def test_stack_of_several_volumes_is_refused(tmp_path, ake):
    raw = patched(patched(ake, ISPG, "<i", 401), MZ, "<i", 11)  # 22 sections = 2 volumes of 11
    path = put(tmp_path, raw)
    with pytest.raises(InputError) as err:
        read_map(path)
    assert str(err.value) == (
        f"{path} is a stack of 2 volumes of 22 x 22 x 11 voxels; "
        "pass a single 3D map (extract one volume from the stack)"
    )


# ================================================================ 2. cell angles
@pytest.mark.parametrize(
    "angles",
    [(90.0, 90.0, 120.0), (60.0, 90.0, 90.0), (90.0, 90.02, 90.0), (float("nan"), 90.0, 90.0)],
    ids=["hexagonal", "alpha60", "tiny-but-not", "nan"],
)
def test_skewed_cell_is_refused(tmp_path, ake, reader_path, angles):
    path = put(tmp_path, patched(ake, CELLB, "<3f", *angles))
    shown = ", ".join(f"{a:g}" for a in np.float32(angles))
    with pytest.raises(InputError) as err:
        read_map(path)
    assert str(err.value) == (
        f"{path} has cell angles alpha, beta, gamma = ({shown}) degrees: skewed (non-orthogonal) grids are "
        "not supported; resample the map onto an orthogonal grid, for example with ChimeraX 'volume resample'"
    )


@pytest.mark.parametrize(
    "angles",
    [(90.0, 90.0, 90.0), (0.0, 0.0, 0.0), (90.005, 89.995, 90.0), (0.0, 90.0, 0.0)],
    ids=["right", "unset", "rounding", "partly-unset"],
)
def test_right_tiny_deviation_or_unset_cell_angles_are_accepted(tmp_path, ake, angles):
    m = read_map(put(tmp_path, patched(ake, CELLB, "<3f", *angles)))
    np.testing.assert_array_equal(m.data, voxels(ake))


# ================================================================ 3. overflow
@pytest.mark.parametrize("top", [3.4e38, 1e30, 1e20])
def test_values_that_overflow_single_precision_are_refused(tmp_path, ake, reader_path, top):
    data = voxels(ake)
    data = (data / data.max() * np.float32(top)).astype(np.float32)
    path = put(tmp_path, with_data(ake, data))
    shown = f"{float(np.abs(data).max()):.2g}"
    with pytest.raises(InputError) as err:
        read_map(path)
    assert str(err.value).startswith(
        f"{path}: values up to {shown} overflow single-precision arithmetic; "
        "rescale the map (for example divide it by 1e+"
    )


def test_large_but_safe_values_are_read(tmp_path, ake):
    data = (voxels(ake) * np.float32(1e12)).astype(np.float32)
    np.testing.assert_array_equal(read_map(put(tmp_path, with_data(ake, data))).data, data)


# ================================================================ 4. outliers
def one_outlier(ake, value) -> np.ndarray:
    data = voxels(ake)
    data[11, 3, 7] = value
    return data


@pytest.mark.parametrize("factor", [1e4, 1e30, -1e4, -1e30])
def test_robust_range_ignores_a_single_extreme_voxel(ake, factor):
    clean = voxels(ake)
    data = one_outlier(ake, np.float32(factor * float(clean.max())))
    low, high = robust_range(data)
    assert clean.min() <= low <= high <= clean.max()
    assert high > 0.5 * clean.max()  # still the density's own top, not 0
    n, (low_cut, high_cut) = count_outliers(data)
    assert n == 1
    assert clean.max() < high_cut and low_cut < clean.min()
    assert count_outliers(clean).n == 0


def test_robust_range_of_plain_maps_is_the_value_range_up_to_a_few_voxels(data_dir):
    for name in ("emd_3695_5A.mrc.gz", "emd_5168_monomer.mrc.gz", ODD_STAMP, "emd_2566_crop.mrc.gz"):
        d = read_map(data_dir / name).data
        low, high = robust_range(d)
        ranked = np.sort(d, axis=None)
        assert ranked[0] <= low <= ranked[20] and ranked[-21] <= high <= ranked[-1], name
        assert count_outliers(d).n == 0, name  # real maps: no false alarms
        assert describe_outliers(read_map(data_dir / name)) is None


def test_zero_background_maps_have_no_outliers_from_tiny_negative_values(ake):
    data = voxels(ake)  # simulated: background exactly 0
    data[0, 0, 0] = -1e-5
    data[5, 5, 5] = -0.05  # a tenth of the maximum below 0
    assert count_outliers(data).n == 0


def test_describe_outliers_names_the_count_and_the_robust_maximum(ake):
    data = one_outlier(ake, 1e30)
    m = DensityMap(data=data, voxel_size_A=np.full(3, 3.0), origin_A=np.zeros(3), path="x.mrc")
    text = describe_outliers(m)
    high = robust_range(data).high
    assert re.fullmatch(
        r"map x\.mrc has 1 outlier voxel\(s\) above \S+ \(largest 1e\+30; robust maximum "
        + re.escape(f"{high:.3g}")
        + r"\); they are ignored by the level estimates",
        text,
    ), text
    low_side = describe_outliers(
        DensityMap(data=one_outlier(ake, -1e30), voxel_size_A=np.ones(3), origin_A=np.zeros(3))
    )
    assert (
        low_side.startswith("the map has 1 outlier voxel(s) below ") and "(smallest -1e+30; robust minimum " in low_side
    )


def test_read_map_logs_outliers_as_a_warning(tmp_path, ake, reader_path, caplog):
    path = put(tmp_path, with_data(ake, one_outlier(ake, 3.4e38)))
    with caplog.at_level(logging.WARNING, logger="cryoalign.io"):
        m = read_map(path)
    assert m.data[11, 3, 7] == np.float32(3.4e38)  # read as stored: the caller decides
    records = [r for r in caplog.records if r.name == "cryoalign.io"]
    assert len(records) == 1 and records[0].levelno == logging.WARNING
    assert records[0].getMessage().startswith(f"map {path} has 1 outlier voxel(s) above ")


def test_plain_maps_log_nothing(data_dir, caplog):
    with caplog.at_level(logging.DEBUG, logger="cryoalign.io"):
        read_map(data_dir / "emd_3695_5A.mrc.gz")
    assert [r for r in caplog.records if r.name == "cryoalign.io"] == []


def test_clip_outliers_returns_a_clipped_copy_and_leaves_the_input_alone(ake):
    data = one_outlier(ake, 1e30)
    data[0, 0, 0] = -1e30
    before = data.copy()
    m = DensityMap(data=data, voxel_size_A=np.full(3, 3.0), origin_A=np.array([1.0, 2.0, 3.0]), path="x.mrc")
    low, high = robust_range(data)

    clipped, n = clip_outliers(m)

    assert n == 2
    np.testing.assert_array_equal(m.data, before)
    assert clipped.data[11, 3, 7] == np.float32(high) and clipped.data[0, 0, 0] == np.float32(low)
    untouched = np.ones(data.shape, bool)
    untouched[11, 3, 7] = untouched[0, 0, 0] = False
    np.testing.assert_array_equal(clipped.data[untouched], before[untouched])
    np.testing.assert_array_equal(clipped.voxel_size_A, m.voxel_size_A)
    np.testing.assert_array_equal(clipped.origin_A, m.origin_A)
    assert clipped.path == m.path and clipped.data.dtype == np.float32


def test_clip_outliers_without_outliers_changes_nothing(ake):
    m = DensityMap(data=voxels(ake), voxel_size_A=np.ones(3), origin_A=np.zeros(3))
    clipped, n = clip_outliers(m)
    assert n == 0
    np.testing.assert_array_equal(clipped.data, m.data)


def test_robust_helpers_work_on_memory_mapped_maps_with_bounded_memory(tmp_path):
    shape = (160, 160, 160)  # 16 MB of float32, more voxels than the sample
    path = tmp_path / "big.f32"
    data = np.memmap(path, dtype=np.float32, mode="w+", shape=shape)
    rng = np.random.default_rng(3)
    for z in range(shape[0]):
        data[z] = rng.normal(0.0, 1.0, shape[1:])
    data[80, 80, 80] = 1e30
    data.flush()
    mapped = np.memmap(path, dtype=np.float32, mode="r", shape=shape)

    tracemalloc.start()
    low, high = robust_range(mapped)
    n, _ = count_outliers(mapped)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()

    assert n == 1
    assert -6.0 < low < -3.5 and 3.5 < high < 6.0  # ~0.001/99.999 percentiles of N(0, 1)
    assert peak < 12 * 2**20, f"peak {peak / 2**20:.1f} MB for a 16 MB map"


# ================================================================ 5. no numpy warnings
@pytest.mark.parametrize("kind", ["outlier", "negative outlier", "overflow", "two extremes"])
def test_reading_extreme_values_never_warns(tmp_path, ake, reader_path, kind, capfd):
    data = voxels(ake)
    if kind == "outlier":
        data[1, 1, 1] = 3.4e38
    elif kind == "negative outlier":
        data[1, 1, 1] = -3.4e38
    elif kind == "overflow":
        data = np.where(data > 0.1, np.float32(3.4e38), np.float32(-3.4e38))
    else:
        data[1, 1, 1], data[2, 2, 2] = 3.4e38, -3.4e38
    path = put(tmp_path, with_data(ake, data))
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        try:
            m = read_map(path)
        except InputError:
            m = None
        if m is not None:
            describe_outliers(m)
            clip_outliers(m)
    captured = capfd.readouterr()
    assert captured.out == "" and "Warning" not in captured.err


# ================================================================ 6. bzip2 and xz
@pytest.mark.parametrize("suffix, compress", [(".mrc.bz2", bz2.compress), (".map.xz", lzma.compress)])
def test_bzip2_and_xz_maps_read_like_plain_ones(tmp_path, data_dir, suffix, compress):
    raw = file_bytes(data_dir / "emd_5168_monomer.mrc.gz")
    path = put(tmp_path, compress(raw), "m" + suffix)
    a, b = read_map(path), read_map(data_dir / "emd_5168_monomer.mrc.gz")
    np.testing.assert_array_equal(a.data, b.data)
    np.testing.assert_array_equal(a.origin_A, b.origin_A)
    np.testing.assert_array_equal(a.voxel_size_A, b.voxel_size_A)


@pytest.mark.parametrize("damage", ["cut_short", "garbage", "magic_only"])
def test_damaged_bzip2(tmp_path, ake, damage):
    bz = bz2.compress(ake)
    raw = {"cut_short": bz[: len(bz) // 2], "garbage": bz[:60] + bytes(200) + bz[260:], "magic_only": b"BZh9"}[damage]
    path = put(tmp_path, raw, "damaged.mrc.bz2")
    with pytest.raises(InputError) as err:
        read_map(path)
    msg = str(err.value)
    assert msg.startswith(f"{path} is a damaged bzip2 file (") and msg.endswith("); download it again")
    assert "\n" not in msg


def test_damaged_xz(tmp_path, ake):
    xz = lzma.compress(ake)
    path = put(tmp_path, xz[: len(xz) // 2], "damaged.map.xz")
    with pytest.raises(InputError, match=re.escape(f"{path} is a damaged xz file (") + r".*\); download it again$"):
        read_map(path)


# ================================================================ 7. writing: suffixes and gzip
@pytest.mark.parametrize("name", ["x.map.gz", "x.mrc.gz", "X.MRC.GZ", "x.ccp4.gz"])
def test_write_map_gzips_when_the_name_ends_in_gz(tmp_path, name):
    data = np.random.default_rng(4).normal(size=(5, 6, 7)).astype(np.float32)
    dm = DensityMap(data=data, voxel_size_A=np.array([1.0, 1.5, 2.0]), origin_A=np.array([-3.0, 4.0, 5.5]))
    write_map(dm, tmp_path / name)
    raw = (tmp_path / name).read_bytes()
    assert raw[:2] == b"\x1f\x8b"
    back = read_map(tmp_path / name)
    np.testing.assert_array_equal(back.data, data)
    np.testing.assert_array_equal(back.voxel_size_A, dm.voxel_size_A)
    np.testing.assert_array_equal(back.origin_A, dm.origin_A)
    assert [p.name for p in tmp_path.iterdir()] == [name]


def test_gzipped_output_is_the_same_bytes_every_time(tmp_path):
    data = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    write_map(data, tmp_path / "a.mrc.gz", voxel_size_A=1.0, origin_A=0.0)
    write_map(data, tmp_path / "b.mrc.gz", voxel_size_A=1.0, origin_A=0.0)
    assert (tmp_path / "a.mrc.gz").read_bytes() == (tmp_path / "b.mrc.gz").read_bytes()


@pytest.mark.parametrize("name", ["x.mrc", "x.map", "x.ccp4", "x.mrcs", "x.rec", "X.Map", "a.b.mrc"])
def test_write_map_plain_suffixes(tmp_path, name):
    write_map(np.ones((4, 4, 4), np.float32), tmp_path / name, voxel_size_A=1.0, origin_A=0.0)
    assert (tmp_path / name).read_bytes()[208:212] == b"MAP "


UNKNOWN_SUFFIX = (
    "cannot write {path}: {why}; give the map file name one of the suffixes "
    ".mrc, .map, .ccp4, .mrcs, .rec (optionally followed by .gz)"
)


@pytest.mark.parametrize(
    "name, why",
    [
        ("x.pdb", "'.pdb' is not a map suffix"),
        ("x.mrc.bz2", "'.bz2' is not a map suffix"),
        ("x.gz", "'.gz' is not a map suffix"),
        ("x.json.gz", "'.json.gz' is not a map suffix"),
        ("map", "the name has no suffix"),
        ("x.mrc.", "'.' is not a map suffix"),
    ],
)
def test_write_map_refuses_unknown_suffixes_and_writes_nothing(tmp_path, name, why):
    path = tmp_path / name
    expected = UNKNOWN_SUFFIX.format(path=path, why=why)
    with pytest.raises(InputError) as err:
        check_map_suffix(path)
    assert str(err.value) == expected
    with pytest.raises(InputError) as err:
        write_map(np.ones((4, 4, 4), np.float32), path, voxel_size_A=1.0, origin_A=0.0)
    assert str(err.value) == expected
    assert list(tmp_path.iterdir()) == []


def test_check_map_suffix_accepts_every_map_suffix():
    for base in cio.MAP_SUFFIXES:
        check_map_suffix("out" + base)
        check_map_suffix(os.path.join("some.dir", "out" + base.upper() + ".gz"))


def test_gzip_write_failure_leaves_no_file(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cio.gzip, "compress", broken)
    with pytest.raises(InputError, match="No space left on device"):
        write_map(np.ones((4, 4, 4), np.float32), tmp_path / "x.mrc.gz", voxel_size_A=1.0, origin_A=0.0)
    assert list(tmp_path.iterdir()) == []
