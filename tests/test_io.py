"""Tests for cryoalign.io: MRC maps and PDB/mmCIF models in and out.

Real EMDB/PDB files (tests/data, see README.md there) check the header conventions
found in the wild; small synthetic MRC files (conftest ``write_mrc``) check each
convention in isolation; corrupted copies (header bytes edited as mrcfile's own
tests do) check every error message of `read_map`.
"""

from __future__ import annotations

import gzip
import hashlib
import itertools
import os
import pathlib
import re
import shutil
import struct

import numpy as np
import pytest

from _maps import file_bytes, patched
from cryoalign.errors import InputError
from cryoalign.io import (
    atomic_write,
    check_writable,
    model_coordinates,
    model_suffix,
    read_map,
    read_model,
    transform_model,
    write_map,
    write_model,
    write_text,
)
from cryoalign.types import DensityMap

# Little-endian MRC2014 header offsets (bytes).
NX, MODE, NXSTART, CELLA, MAPC, NSYMBT, ORIGIN, MAP_TAG = 0, 12, 16, 40, 64, 92, 196, 208

ODD_STAMP = "1akeA_10A_simulated_odd_machine_stamp.mrc"  # plain, little-endian, 22^3, 3 Å
NSTART_MAP = "emd_5170_nstart_origin.map.gz"


def sha256(path) -> str:
    return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


def header_ints(raw: bytes, offset: int, n=3):
    return struct.unpack_from(f"<{n}i", raw, offset)


def header_floats(raw: bytes, offset: int, n=3):
    return struct.unpack_from(f"<{n}f", raw, offset)


def gt_transform(data_dir, source, target) -> np.ndarray:
    """4x4 ground truth from gt.tsv moving `source`'s world coordinates onto `target`'s."""
    lines = (data_dir / "gt.tsv").read_text().splitlines()
    header = lines[0].split("\t")
    for line in lines[1:]:
        row = dict(zip(header, line.split("\t")))
        if row["source_emd"] == source and row["target_emd"] == target:
            T = np.eye(4)
            T[:3, :] = np.array(row["gt_rowmajor_3x4"].split(), float).reshape(3, 4)
            return T
    raise KeyError((source, target))


def values_at(dm: DensityMap, xyz: np.ndarray) -> np.ndarray:
    """Nearest-voxel density at world points (0 outside the box)."""
    idx = np.round(dm.world_to_index(xyz)).astype(int)
    inside = np.all((idx >= 0) & (idx < dm.shape_xyz), axis=1)
    out = np.zeros(len(xyz), np.float32)
    out[inside] = dm.data[idx[inside, 2], idx[inside, 1], idx[inside, 0]]
    return out


def occupied_world(dm: DensityMap) -> np.ndarray:
    z, y, x = np.nonzero(dm.data > 0)
    return dm.index_to_world(np.stack([x, y, z], axis=1))


def rotation(axis, angle_deg) -> np.ndarray:
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    K = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    a = np.radians(angle_deg)
    return np.eye(3) + np.sin(a) * K + (1 - np.cos(a)) * K @ K


def pdb_atom_records(path):
    """(name, xyz) of every ATOM/HETATM record, parsed from the fixed PDB columns."""
    text = file_bytes(path).decode()
    out = []
    for line in text.splitlines():
        if line.startswith(("ATOM  ", "HETATM")):
            out.append((line[12:16].strip(), (float(line[30:38]), float(line[38:46]), float(line[46:54]))))
    return out


# ================================================================ real maps
def test_origin_from_nstart_when_origin_field_is_zero(data_dir):
    path = data_dir / NSTART_MAP
    raw = file_bytes(path)
    # the file really stores its position only in NSTART
    assert header_floats(raw, ORIGIN) == (0.0, 0.0, 0.0)
    assert header_ints(raw, NXSTART) == (-49, -49, -49)

    dm = read_map(path)

    assert dm.data.shape == (100, 100, 100)
    np.testing.assert_allclose(dm.voxel_size_A, [2.38] * 3, rtol=1e-6)
    np.testing.assert_allclose(dm.origin_A, [-116.62] * 3, rtol=1e-6)


def test_origin_field_used_on_5A_maps(data_dir):
    for name in ("emd_3695_5A.mrc.gz", "emd_3696_5A.mrc.gz"):
        raw = file_bytes(data_dir / name)
        assert header_ints(raw, NXSTART) == (0, 0, 0)
        dm = read_map(data_dir / name)
        np.testing.assert_array_equal(dm.voxel_size_A, [5.0, 5.0, 5.0])
        np.testing.assert_array_equal(dm.origin_A, np.array(header_floats(raw, ORIGIN), np.float32))
        assert np.any(dm.origin_A != 0)


def test_5A_maps_superpose_under_ground_truth_in_world_coordinates(data_dir):
    # gt.tsv is in the original maps' world coordinates: if the reader got the
    # origins wrong, the smaller map would not land on the larger one's density.
    small = read_map(data_dir / "emd_3695_5A.mrc.gz")
    large = read_map(data_dir / "emd_3696_5A.mrc.gz")
    T = gt_transform(data_dir, "emd_3695", "emd_3696")
    pts = occupied_world(small) @ T[:3, :3].T + T[:3, 3]
    hit = np.mean(values_at(large, pts) > 0)
    assert hit > 0.7, f"only {hit:.0%} of EMD-3695's density lands on EMD-3696's"


@pytest.mark.parametrize(
    "map_name, model_name",
    [
        ("emd_5168_monomer.mrc.gz", "3mfp.pdb.gz"),  # non-cubic box 28x43x41, negative origin
        ("emd_2566_crop.mrc.gz", "3j6b_9.pdb.gz"),  # crop far from 0: origin (356, 155, 159) Å
    ],
)
def test_fitted_model_sits_in_map_density(data_dir, map_name, model_name):
    dm = read_map(data_dir / map_name)
    xyz = model_coordinates(read_model(data_dir / model_name))
    at_atoms = values_at(dm, xyz)
    # essentially all atoms inside the box, and on density well above background
    idx = np.round(dm.world_to_index(xyz))
    assert np.mean(np.all((idx >= 0) & (idx < dm.shape_xyz), axis=1)) > 0.99
    z_score = (at_atoms.mean() - dm.data.mean()) / dm.data.std()
    assert z_score > 1.2


def test_odd_machine_stamp_file_opens_with_sane_values(data_dir):
    raw = file_bytes(data_dir / ODD_STAMP)
    assert raw[212:216] == b"\x00\x00DD"  # not a standard MRC machine stamp
    dm = read_map(data_dir / ODD_STAMP)
    assert dm.data.shape == (22, 22, 22)
    assert dm.data.dtype == np.float32
    np.testing.assert_array_equal(dm.voxel_size_A, [3.0, 3.0, 3.0])
    np.testing.assert_allclose(dm.origin_A, [-6.494, 13.381, -5.41], atol=1e-4)
    # right byte order: a simulated density in [0, ~0.5], not byte-swapped garbage
    assert dm.data.min() == 0.0
    assert 0.1 < dm.data.max() < 1.0


def test_gzipped_and_plain_files_read_identically(data_dir, tmp_path):
    plain = tmp_path / "monomer.mrc"
    plain.write_bytes(file_bytes(data_dir / "emd_5168_monomer.mrc.gz"))
    a = read_map(data_dir / "emd_5168_monomer.mrc.gz")
    b = read_map(plain)
    assert a.data.shape == (41, 43, 28)
    np.testing.assert_array_equal(a.data, b.data)
    np.testing.assert_array_equal(a.voxel_size_A, b.voxel_size_A)
    np.testing.assert_array_equal(a.origin_A, b.origin_A)


def test_reading_never_modifies_input_files(data_dir, tmp_path):
    files = sorted(p for p in data_dir.iterdir() if p.is_file())
    before = {p.name: sha256(p) for p in files}
    for p in files:
        if ".mrc" in p.name or ".map" in p.name:
            read_map(p)
        elif ".pdb" in p.name:
            read_model(p)
    assert {p.name: sha256(p) for p in files} == before


def test_failed_read_does_not_modify_the_file(tmp_path, data_dir):
    bad = tmp_path / "bad.mrc"
    bad.write_bytes(patched(file_bytes(data_dir / ODD_STAMP), MODE, "<i", 4))
    before = sha256(bad)
    with pytest.raises(InputError):
        read_map(bad)
    assert sha256(bad) == before


# ================================================================ synthetic conventions
N_XYZ = (7, 5, 4)  # grid points along x, y, z: all different
VOXEL_XYZ = (1.5, 2.0, 2.5)  # non-cubic, exactly representable in float32
START_XYZ = (-3, 4, 10)  # NSTART along x, y, z
BRIGHT_XYZ = (5, 1, 2)  # index of the bright voxel along x, y, z


def volume_xyz(seed=0) -> np.ndarray:
    """Random background in [0, 1) with one bright voxel, indexed [x, y, z]."""
    vol = np.random.default_rng(seed).random(N_XYZ).astype(np.float32)
    vol[BRIGHT_XYZ] = 10.0
    return vol


def stored_order(vol_xyz: np.ndarray, axes) -> np.ndarray:
    """The (section, row, column) array a file with MAPC/MAPR/MAPS = `axes` holds."""
    mapc, mapr, maps = axes
    return vol_xyz.transpose(maps - 1, mapr - 1, mapc - 1)


def bright_world(dm: DensityMap) -> np.ndarray:
    z, y, x = np.unravel_index(np.argmax(dm.data), dm.data.shape)
    return dm.index_to_world([x, y, z])


AXIS_PERMUTATIONS = list(itertools.permutations((1, 2, 3)))


@pytest.mark.parametrize("axes", AXIS_PERMUTATIONS, ids=lambda a: "mapcrs=%d%d%d" % a)
def test_axis_order_noncubic_voxels_and_nstart(tmp_path, write_mrc, axes):
    vol = volume_xyz()
    nstart_crs = [START_XYZ[code - 1] for code in axes]
    path = write_mrc(tmp_path / "m.mrc", stored_order(vol, axes), voxel=VOXEL_XYZ, nstart=nstart_crs, axes=axes)

    dm = read_map(path)

    expected = (np.array(BRIGHT_XYZ) + START_XYZ) * VOXEL_XYZ  # (3, 10, 30) Å
    np.testing.assert_array_equal(bright_world(dm), expected)
    assert dm.data.shape == N_XYZ[::-1]
    np.testing.assert_array_equal(dm.voxel_size_A, VOXEL_XYZ)
    np.testing.assert_array_equal(dm.origin_A, np.multiply(START_XYZ, VOXEL_XYZ))
    np.testing.assert_array_equal(dm.data, vol.transpose(2, 1, 0))


@pytest.mark.parametrize("axes", [(1, 2, 3), (3, 1, 2)], ids=lambda a: "mapcrs=%d%d%d" % a)
def test_nonzero_origin_field_wins_over_nstart(tmp_path, write_mrc, axes):
    vol = volume_xyz()
    origin = (-20.5, 7.25, 300.0)
    path = write_mrc(
        tmp_path / "m.mrc", stored_order(vol, axes), voxel=VOXEL_XYZ, origin=origin, nstart=(5, 6, 7), axes=axes
    )
    dm = read_map(path)
    np.testing.assert_array_equal(dm.origin_A, origin)
    np.testing.assert_array_equal(bright_world(dm), np.multiply(BRIGHT_XYZ, VOXEL_XYZ) + origin)


@pytest.mark.parametrize("axes", AXIS_PERMUTATIONS, ids=lambda a: "mapcrs=%d%d%d" % a)
def test_synthetic_files_agree_with_gemmi(tmp_path, write_mrc, axes):
    # An independent reader: gemmi expands the map onto its unit cell in x, y, z
    # order, placing stored voxel i at cell index (i + NSTART) mod N.
    gemmi = pytest.importorskip("gemmi")
    vol = volume_xyz(seed=1)
    path = write_mrc(
        tmp_path / "m.mrc", stored_order(vol, axes), voxel=VOXEL_XYZ, nstart=[START_XYZ[c - 1] for c in axes], axes=axes
    )
    ccp4 = gemmi.read_ccp4_map(str(path))
    ccp4.setup(float("nan"))
    theirs = np.array(ccp4.grid, copy=False)
    ours = read_map(path).data.transpose(2, 1, 0)
    np.testing.assert_array_equal(theirs, np.roll(ours, START_XYZ, axis=(0, 1, 2)))


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.uint16, np.float16])
def test_integer_and_half_modes_read_as_float32(tmp_path, write_mrc, dtype):
    values = np.arange(120).reshape(4, 5, 6).astype(dtype)  # maps need >= 4 voxels per axis
    dm = read_map(write_mrc(tmp_path / "m.mrc", values, voxel=2.0))
    assert dm.data.dtype == np.float32
    np.testing.assert_array_equal(dm.data, values.astype(np.float32))


# ================================================================ writing
def test_write_read_round_trip_is_exact(tmp_path):
    data = np.random.default_rng(2).normal(size=(4, 5, 6)).astype(np.float32)
    dm = DensityMap(data=data, voxel_size_A=np.array([1.25, 0.5, 2.0]), origin_A=np.array([-10.5, 3.25, 100.0]))
    write_map(dm, tmp_path / "out.mrc")
    back = read_map(tmp_path / "out.mrc")
    np.testing.assert_array_equal(back.data, data)
    np.testing.assert_array_equal(back.voxel_size_A, [1.25, 0.5, 2.0])
    np.testing.assert_array_equal(back.origin_A, [-10.5, 3.25, 100.0])


def test_write_read_round_trip_of_a_real_map(data_dir, tmp_path):
    dm = read_map(data_dir / NSTART_MAP)  # origin from NSTART in the input
    write_map(dm, tmp_path / "out.mrc")
    back = read_map(tmp_path / "out.mrc")
    np.testing.assert_array_equal(back.data, dm.data)
    np.testing.assert_allclose(back.voxel_size_A, dm.voxel_size_A, rtol=1e-6)
    np.testing.assert_allclose(back.origin_A, dm.origin_A, rtol=1e-6)


def test_write_map_from_array_with_scalar_voxel(tmp_path):
    mrcfile = pytest.importorskip("mrcfile")
    data = np.arange(120, dtype=np.float64).reshape(4, 5, 6)
    write_map(data, tmp_path / "out.mrc", voxel_size_A=1.5, origin_A=(1.0, 2.0, 3.0))
    back = read_map(tmp_path / "out.mrc")
    np.testing.assert_array_equal(back.data, data.astype(np.float32))
    np.testing.assert_array_equal(back.voxel_size_A, [1.5, 1.5, 1.5])
    np.testing.assert_array_equal(back.origin_A, [1.0, 2.0, 3.0])
    with open(os.devnull, "w") as quiet:
        assert mrcfile.validate(str(tmp_path / "out.mrc"), print_file=quiet)


def test_atomic_write_leaves_nothing_when_writer_fails(tmp_path):
    target = tmp_path / "out.mrc"

    def failing_writer(tmp):
        with open(tmp, "wb") as fh:
            fh.write(b"half a file")
        raise RuntimeError("writer crashed")

    with pytest.raises(RuntimeError, match="writer crashed"):
        atomic_write(target, failing_writer)
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_keeps_previous_file_when_writer_fails(tmp_path):
    target = tmp_path / "result.txt"
    target.write_text("previous result")

    def failing_writer(tmp):
        with open(tmp, "w") as fh:
            fh.write("partial")
        raise PermissionError(13, "Permission denied")

    with pytest.raises(
        InputError, match=re.escape(f"cannot write {target}: Permission denied; choose a writable location")
    ):
        atomic_write(target, failing_writer)
    assert target.read_text() == "previous result"
    assert [p.name for p in tmp_path.iterdir()] == ["result.txt"]


def test_write_text_replaces_content(tmp_path):
    target = tmp_path / "a.json"
    write_text(target, "first")
    write_text(target, "second")
    assert target.read_text() == "second"
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_written_files_get_normal_permissions(tmp_path):
    # tempfile.mkstemp creates files 0600; outputs must follow the umask like open() does
    old = os.umask(0o022)
    try:
        write_text(tmp_path / "a.txt", "x")
        write_map(np.zeros((2, 2, 2), np.float32), tmp_path / "m.mrc", voxel_size_A=1.0, origin_A=0.0)
    finally:
        os.umask(old)
    assert oct(os.stat(tmp_path / "a.txt").st_mode & 0o777) == oct(0o644)
    assert oct(os.stat(tmp_path / "m.mrc").st_mode & 0o777) == oct(0o644)


@pytest.mark.parametrize("writer", ["write_map", "write_text", "write_model", "atomic_write"])
def test_writing_into_missing_folder(tmp_path, data_dir, writer):
    folder = tmp_path / "no" / "such"
    target = folder / ("out.pdb" if writer == "write_model" else "out.mrc")
    call = {
        "write_map": lambda: write_map(np.zeros((2, 2, 2), np.float32), target, voxel_size_A=1.0, origin_A=0.0),
        "write_text": lambda: write_text(target, "x"),
        "write_model": lambda: write_model(read_model(data_dir / "3j6b_9.pdb.gz"), target),
        "atomic_write": lambda: atomic_write(target, lambda tmp: open(tmp, "w").close()),
    }[writer]
    with pytest.raises(InputError) as err:
        call()
    assert str(err.value) == f"cannot write {target}: folder {folder} does not exist; create it first"
    assert not (tmp_path / "no").exists()


def test_check_writable(tmp_path):
    check_writable(tmp_path / "fine.mrc")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(InputError) as err:
        check_writable(tmp_path / "missing" / "x.mrc")
    assert str(err.value) == (
        f"cannot write {tmp_path / 'missing' / 'x.mrc'}: folder {tmp_path / 'missing'} does not exist; create it first"
    )
    with pytest.raises(InputError, match="it is a directory; give a file name"):
        check_writable(tmp_path)


# ================================================================ read_map errors
@pytest.fixture
def real_map_bytes(data_dir) -> bytes:
    """Plain little-endian MRC bytes of a small real map (22^3 voxels, 3 Å)."""
    return file_bytes(data_dir / ODD_STAMP)


def write_bytes(tmp_path, raw: bytes, name="bad.mrc"):
    path = tmp_path / name
    path.write_bytes(raw)
    return path


def test_missing_map_file(tmp_path):
    path = tmp_path / "nope.mrc"
    with pytest.raises(InputError) as err:
        read_map(path)
    assert str(err.value) == f"map file not found: {path}; check the path (or give an EMDB ID such as EMD-1234)"


def test_directory_as_map(tmp_path):
    with pytest.raises(InputError) as err:
        read_map(tmp_path)
    assert str(err.value) == f"{tmp_path} is a directory, not a map file; give the map file inside it"


@pytest.mark.parametrize("size", [0, 500, 1023])
def test_file_shorter_than_header(tmp_path, real_map_bytes, size):
    path = write_bytes(tmp_path, real_map_bytes[:size])
    with pytest.raises(InputError, match=f"{size} bytes is shorter than the 1024-byte header"):
        read_map(path)


@pytest.mark.parametrize("kind", ["text", "pdb", "tag_overwritten"])
def test_not_an_mrc_file(tmp_path, data_dir, real_map_bytes, kind):
    raw = {
        "text": b"density map goes here\n" * 100,
        "pdb": file_bytes(data_dir / "3mfp.pdb.gz"),
        "tag_overwritten": patched(real_map_bytes, MAP_TAG, "4s", b"XXXX"),
    }[kind]
    path = write_bytes(tmp_path, raw)
    with pytest.raises(InputError, match=re.escape(f"{path} is not an MRC/CCP4 map (no 'MAP ' tag at byte 208)")):
        read_map(path)


@pytest.mark.parametrize("cut", [1, 1000, 42592])
def test_truncated_data(tmp_path, real_map_bytes, cut):
    assert len(real_map_bytes) == 1024 + 22**3 * 4
    path = write_bytes(tmp_path, real_map_bytes[:-cut])
    with pytest.raises(
        InputError,
        match=re.escape(
            f"is truncated: header says (22, 22, 22) voxels (42592 bytes of data) "
            f"but the file holds {42592 - cut} bytes"
        ),
    ):
        read_map(path)


def test_truncated_gzipped_map_contents(tmp_path, data_dir):
    raw = file_bytes(data_dir / "emd_3695_5A.mrc.gz")
    path = write_bytes(tmp_path, gzip.compress(raw[:-4000]), "cut.mrc.gz")
    with pytest.raises(InputError, match=r"is truncated: header says \(48, 48, 48\) voxels"):
        read_map(path)


@pytest.mark.parametrize("mode", [3, 4, 101])
def test_unsupported_mode_by_header_edit(tmp_path, real_map_bytes, mode):
    path = write_bytes(tmp_path, patched(real_map_bytes, MODE, "<i", mode))
    with pytest.raises(InputError, match=f"uses MRC mode {mode}, which is not a real-valued density"):
        read_map(path)


def test_unsupported_mode_complex_file(tmp_path, write_mrc):
    path = write_mrc(tmp_path / "c.mrc", np.ones((3, 4, 5), np.complex64))
    with pytest.raises(InputError, match="uses MRC mode 4, which is not a real-valued density"):
        read_map(path)


def test_non_finite_voxels(tmp_path, write_mrc):
    data = np.zeros((4, 5, 6), np.float32)
    data[1, 2, 3] = np.nan
    data[2, 0, 0] = np.inf
    path = write_mrc(tmp_path / "nan.mrc", data)
    with pytest.raises(InputError, match="contains 2 NaN or infinite voxel values"):
        read_map(path)


@pytest.mark.parametrize(
    "cella, shown",
    [
        ((0.0, 66.0, 66.0), "(0.0, 3.0, 3.0)"),
        ((0.0, 0.0, 0.0), "(0.0, 0.0, 0.0)"),
        ((66.0, -66.0, 66.0), "(3.0, -3.0, 3.0)"),
    ],
)
def test_non_positive_voxel_size(tmp_path, real_map_bytes, cella, shown):
    path = write_bytes(tmp_path, patched(real_map_bytes, CELLA, "<3f", *cella))
    with pytest.raises(InputError, match=re.escape(f"has voxel size {shown} Å") + ".*must be positive"):
        read_map(path)


def test_zero_grid_sampling(tmp_path, real_map_bytes):
    path = write_bytes(tmp_path, patched(real_map_bytes, 28, "<3i", 0, 22, 22))  # MX, MY, MZ
    with pytest.raises(InputError, match=re.escape("MX,MY,MZ (0, 22, 22)); it must be positive")):
        read_map(path)


@pytest.mark.parametrize("axes", [(1, 1, 3), (0, 1, 2), (2, 3, 4)])
def test_invalid_axis_order(tmp_path, real_map_bytes, axes):
    path = write_bytes(tmp_path, patched(real_map_bytes, MAPC, "<3i", *axes))
    with pytest.raises(
        InputError, match=re.escape(f"invalid axis order MAPC/MAPR/MAPS = {axes}; it must be a permutation of 1, 2, 3")
    ):
        read_map(path)


def test_non_positive_dimensions(tmp_path, real_map_bytes):
    path = write_bytes(tmp_path, patched(real_map_bytes, NX, "<i", 0))
    with pytest.raises(InputError, match=re.escape("non-positive dimensions NX,NY,NZ = (0, 22, 22)")):
        read_map(path)


def test_non_finite_origin(tmp_path, real_map_bytes):
    path = write_bytes(tmp_path, patched(real_map_bytes, ORIGIN, "<f", np.inf))
    with pytest.raises(InputError, match="has a non-finite ORIGIN"):
        read_map(path)


def test_unreadable_header(tmp_path, real_map_bytes):
    path = write_bytes(tmp_path, patched(real_map_bytes, NSYMBT, "<i", -1))
    with pytest.raises(InputError) as info:
        read_map(path)
    msg = str(info.value)
    assert msg.startswith(f"{path} is not a readable MRC/CCP4 map (") and "\n" not in msg
    assert msg.endswith("); check that it is a complete MRC/CCP4 file")


@pytest.mark.parametrize("damage", ["cut_short", "deflate_block", "crc"])
def test_damaged_gzip(tmp_path, data_dir, damage):
    gz = (data_dir / "emd_3695_5A.mrc.gz").read_bytes()
    raw = {
        "cut_short": gz[: len(gz) // 2],
        "deflate_block": gz[:100] + bytes(200) + gz[300:],  # garbage inside the stream
        "crc": gz[:-8] + bytes(8),
    }[damage]
    path = write_bytes(tmp_path, raw, "damaged.mrc.gz")
    with pytest.raises(InputError, match=re.escape(f"{path} is a damaged gzip file (")):
        read_map(path)


# ================================================================ models
def test_read_gzipped_pdb(data_dir):
    path = data_dir / "3mfp.pdb.gz"
    records = pdb_atom_records(path)
    st = read_model(path)
    xyz = model_coordinates(st)
    assert len(xyz) == len(records) > 0
    np.testing.assert_allclose(xyz, [r[1] for r in records], atol=5e-4)


def test_ca_selection(data_dir):
    path = data_dir / "3j6b_9.pdb.gz"
    ca_records = [xyz for name, xyz in pdb_atom_records(path) if name == "CA"]
    ca = model_coordinates(read_model(path), selection="ca")
    assert 0 < len(ca) == len(ca_records) < len(model_coordinates(read_model(path)))
    np.testing.assert_allclose(ca, ca_records, atol=5e-4)


def test_transform_model_moves_coordinates_exactly(data_dir):
    st = read_model(data_dir / "3mfp.pdb.gz")
    before = model_coordinates(st)
    T = np.eye(4)
    T[:3, :3] = rotation((1.0, -2.0, 0.5), 73.0)
    T[:3, 3] = (12.5, -40.0, 7.25)

    moved = transform_model(st, T)

    expected = before @ T[:3, :3].T + T[:3, 3]
    np.testing.assert_allclose(model_coordinates(moved), expected, atol=1e-9)
    np.testing.assert_array_equal(model_coordinates(st), before)  # input untouched
    back = transform_model(moved, np.linalg.inv(T))
    np.testing.assert_allclose(model_coordinates(back), before, atol=1e-9)


@pytest.mark.parametrize("suffix", [".pdb", ".cif"])
def test_write_model_round_trip(data_dir, tmp_path, suffix):
    st = read_model(data_dir / "3j6b_9.pdb.gz")
    T = np.eye(4)
    T[:3, :3] = rotation((0.0, 0.0, 1.0), 90.0)
    T[:3, 3] = (100.0, 0.0, -50.0)
    moved = transform_model(st, T)
    out = tmp_path / f"moved{suffix}"

    write_model(moved, out)

    back = read_model(out)
    np.testing.assert_allclose(model_coordinates(back), model_coordinates(moved), atol=1e-3)
    assert [c.name for c in back[0]] == [c.name for c in st[0]]
    assert len(model_coordinates(back, selection="ca")) == len(model_coordinates(st, selection="ca"))
    assert [p.name for p in tmp_path.iterdir()] == [out.name]


def test_read_gzipped_mmcif(data_dir, tmp_path):
    st = read_model(data_dir / "3j6b_9.pdb.gz")
    write_model(st, tmp_path / "m.cif")
    (tmp_path / "m.cif.gz").write_bytes(gzip.compress((tmp_path / "m.cif").read_bytes()))
    back = read_model(tmp_path / "m.cif.gz")
    np.testing.assert_allclose(model_coordinates(back), model_coordinates(st), atol=1e-3)


def test_write_model_unknown_suffix(data_dir, tmp_path):
    st = read_model(data_dir / "3j6b_9.pdb.gz")
    with pytest.raises(InputError, match="use a .pdb or .cif suffix"):
        write_model(st, tmp_path / "model.xyz")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "name, suffix",
    [
        ("a.pdb", ".pdb"),
        ("a.pdb.gz", ".pdb"),
        ("A.ENT", ".pdb"),
        ("a.cif", ".cif"),
        ("a.cif.gz", ".cif"),
        ("a.mmCIF", ".cif"),
        ("a.mmcif.gz", ".cif"),
    ],
)
def test_model_suffix(name, suffix):
    assert model_suffix(name) == suffix


def test_missing_model_file(tmp_path):
    path = tmp_path / "nope.pdb"
    with pytest.raises(InputError) as err:
        read_model(path)
    assert str(err.value) == f"model file not found: {path}; check the path"


@pytest.mark.parametrize("name", ["notes.txt", "notes.cif"])
def test_garbage_model_file(tmp_path, name):
    path = tmp_path / name
    path.write_text("this is not a model\n" * 20)
    with pytest.raises(InputError, match=re.escape(f"cannot parse model {path}: ")):
        read_model(path)


@pytest.mark.parametrize("content", ["", "HEADER    EMPTY\nEND\n", "this is not a model\n" * 20])
def test_model_without_atoms(tmp_path, content):
    path = tmp_path / "empty.pdb"
    path.write_text(content)
    with pytest.raises(InputError, match=re.escape(f"model {path} contains no atoms")):
        read_model(path)


def test_map_passed_as_model(tmp_path, data_dir):
    path = tmp_path / "map.mrc"
    shutil.copy(data_dir / ODD_STAMP, path)
    with pytest.raises(InputError, match="cannot parse model"):
        read_model(path)


# ----------------------------------------------------------------------------- found by fuzzing
def test_single_section_map_is_refused_as_an_image(tmp_path, write_mrc):
    # once reshaped to 1 x 5 x 6 and aligned with score 0; now refused (test_odd_maps.py)
    data = np.arange(5 * 6, dtype=np.float32).reshape(1, 5, 6)
    path = write_mrc(tmp_path / "one.mrc", data, voxel=2.0)
    with pytest.raises(InputError, match=re.escape(f"{path} is 6 x 5 x 1 voxels: a 3D density map needs")):
        read_map(path)


def test_image_stack_space_group_reads_as_3d(tmp_path, write_mrc, real_map_bytes):
    raw = bytearray(real_map_bytes)
    raw[88:92] = np.int32(401).tobytes()  # ISPG 401: mrcfile would return a 4D stack
    path = tmp_path / "stack.mrc"
    path.write_bytes(bytes(raw))
    m = read_map(path)
    assert m.data.ndim == 3


@pytest.mark.parametrize("cell", [1e-38, 1e6])
def test_absurd_voxel_size_is_an_input_error(tmp_path, real_map_bytes, cell):
    raw = bytearray(real_map_bytes)
    raw[40:52] = np.array([cell] * 3, np.float32).tobytes()  # CELLA
    path = tmp_path / "cell.mrc"
    path.write_bytes(bytes(raw))
    with pytest.raises(InputError, match=r"outside 0\.05-100 Å: fix the header's cell dimensions$"):
        read_map(path)


def test_model_parse_error_is_one_line(tmp_path, data_dir):
    import gzip as _gzip

    text = _gzip.decompress((data_dir / "3mfp.pdb.gz").read_bytes())[:42192]
    path = tmp_path / "cut.pdb"
    path.write_bytes(text)
    try:
        read_model(path)
    except InputError as exc:
        assert "\n" not in str(exc) and str(exc).endswith("; pass a PDB or mmCIF file")
