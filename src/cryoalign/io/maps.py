"""Density maps in and out: MRC/CCP4 (``.mrc``, ``.map``, ``.ccp4``, ``.mrcs``, ``.rec``; read also when
gzip, bzip2 or xz compressed, written gzipped when the name ends in ``.gz``). The
reader returns a `DensityMap` with data indexed ``[z, y, x]`` whatever the file's axis
order (MAPC/MAPR/MAPS), per-axis voxel sizes, and the world origin taken from
the ORIGIN field or, when that is zero, from NSTART x voxel size.

`read_map` refuses, with a message naming the problem and the fix:
  1. a missing path, a directory;
  2. a file shorter than the header, without the 'MAP ' tag, or a damaged gzip/bzip2/xz stream;
  3. fewer data bytes than the header's NX x NY x NZ claims (truncated);
  4. a header mrcfile cannot parse; a mode that is not real-valued (only 0, 1, 2, 6, 12);
  5. non-positive NX/NY/NZ; invalid MAPC/MAPR/MAPS;
  6. a stack of several volumes (ISPG 401-630 with NZ > MZ);
  7. fewer than 4 voxels along any axis (2D images, thin slabs);
  8. NaN or infinite voxels;
  9. bulk values beyond `OVERFLOW_LIMIT` (single precision overflows);
 10. non-positive or absurd voxel sizes (outside 0.05-100 Å);
 11. cell angles (CELLB) other than 90 degrees (within `ANGLE_TOLERANCE_DEG`; 0 means unset = 90);
 12. a non-finite ORIGIN.
It accepts a map with a few outlier voxels (see `cryoalign.io.robust`) and logs one warning
line about them on the ``cryoalign.io`` logger; the data are returned as stored.

`write_map` goes through `files.atomic_write`: the file appears complete or not at all.
"""

from __future__ import annotations

import bz2
import gzip
import io as _io
import logging
import lzma
import math
import os
import warnings
import zlib
from typing import Any

import numpy as np

from .. import transform as tf
from ..errors import InputError, one_line
from ..types import DensityMap
from . import robust
from .files import atomic_write

log = logging.getLogger("cryoalign.io")  # the name the README and the tests know

MAP_SUFFIXES = (".mrc", ".map", ".ccp4", ".mrcs", ".rec")
MIN_VOXEL_A, MAX_VOXEL_A = 0.05, 100.0  # outside this a header is broken, not a cryo-EM map
MEMMAP_BYTES = 512 * 2**20  # uncompressed float32 x,y,z maps above this are memory-mapped, not read
_SUPPORTED_MODES = {0: "int8", 1: "int16", 2: "float32", 6: "uint16", 12: "float16"}
MIN_VOXELS_PER_AXIS = 4  # fewer is an image, a thin slab or a line, not a 3D density
ANGLE_TOLERANCE_DEG = 0.01  # cell angles this close to 90 are rounding, not skew
# Sums of squares of up to 1e8 float32 voxels stay finite below this (sqrt(3.4e38 / 1e8)):
# a map whose bulk (robust range) is larger is refused; single outliers are only logged.
OVERFLOW_LIMIT = 1e15
_COMPRESSED = ((b"\x1f\x8b", "gzip"), (b"BZh", "bzip2"), (b"\xfd7zXZ\x00", "xz"))


# ----------------------------------------------------------------------------- maps
def read_map(path) -> DensityMap:
    """Read an MRC/CCP4 map (plain, gzip, bzip2 or xz) into a `DensityMap`.

    Raises `InputError` naming the problem and the fix for every refusal listed in the
    module docstring; logs a warning (``cryoalign.io``) when the map has outlier voxels.
    numpy and mrcfile warnings never escape: every finding is an error or a log line.
    """
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        density, outliers = _read_map(os.fspath(path))
    if outliers:
        log.warning("%s", outliers)
    return density


def _read_map(path: str) -> tuple[DensityMap, str | None]:
    import mrcfile

    if not os.path.exists(path):
        raise InputError(f"map file not found: {path}; check the path (or give an EMDB ID such as EMD-1234)")
    if os.path.isdir(path):
        raise InputError(f"{path} is a directory, not a map file; give the map file inside it")
    if os.path.getsize(path) > MEMMAP_BYTES:
        mapped = _memory_mapped(path)
        if mapped is not None:
            return mapped
    raw = _read_bytes(path)
    if len(raw) < 1024:
        raise InputError(
            f"{path} is not an MRC/CCP4 map: {len(raw)} bytes is shorter than "
            "the 1024-byte header; check that the download finished"
        )
    if raw[208:212] not in (b"MAP ", b"MAP\x00", b"MAP\x20"):
        raise InputError(
            f"{path} is not an MRC/CCP4 map (no 'MAP ' tag at byte 208); pass a .mrc/.map/.ccp4 density map"
        )
    _check_size_before_parsing(path, raw)
    try:
        mrc = mrcfile.mrcinterpreter.MrcInterpreter(_io.BytesIO(raw), permissive=True)
    except Exception as exc:  # mrcfile raises several types for corrupt headers
        raise InputError(
            f"{path} is not a readable MRC/CCP4 map ({one_line(exc, 200)}); check that it is a complete MRC/CCP4 file"
        ) from None
    h = mrc.header
    mode = int(h.mode)
    if mode not in _SUPPORTED_MODES:
        raise InputError(
            f"{path} uses MRC mode {mode}, which is not a real-valued density; "
            f"supported modes are {sorted(_SUPPORTED_MODES)} (convert it to mode 2, float32)"
        )
    n_crs = np.array([int(h.nx), int(h.ny), int(h.nz)])
    if np.any(n_crs <= 0):
        raise InputError(
            f"{path} has non-positive dimensions NX,NY,NZ = {tuple(n_crs.tolist())}; the header is "
            "damaged: download the map again"
        )
    data = mrc.data
    if data is not None and data.ndim == 4 and data.shape[0] > 1:  # volume stack (ISPG 401-630)
        n_vol, n_sec, n_row, n_col = data.shape
        raise InputError(
            f"{path} is a stack of {n_vol} volumes of {n_col} x {n_row} x {n_sec} voxels; "
            "pass a single 3D map (extract one volume from the stack)"
        )
    if data is not None and data.ndim != 3 and data.size == int(np.prod(n_crs)):
        data = np.asarray(data).reshape(tuple(n_crs[::-1]))  # 2D images, one-volume stacks
    expected = int(np.prod(n_crs)) * np.dtype(_SUPPORTED_MODES[mode]).itemsize
    if data is None or data.size != int(np.prod(n_crs)):
        got = len(raw) - 1024 - int(h.nsymbt)
        raise _truncated(path, n_crs, expected, got)
    axes = (int(h.mapc), int(h.mapr), int(h.maps))
    if sorted(axes) != [1, 2, 3]:
        raise InputError(f"{path} has invalid axis order MAPC/MAPR/MAPS = {axes}; it must be a permutation of 1, 2, 3")
    # stored array axes are (section, row, column) -> crystallographic axes (MAPS, MAPR, MAPC)
    stored_codes = [axes[2], axes[1], axes[0]]
    perm = [stored_codes.index(3), stored_codes.index(2), stored_codes.index(1)]
    data = np.ascontiguousarray(np.transpose(np.asarray(data), perm), dtype=np.float32)
    return _finish(path, data, h, axes)


def _finish(path, data, h, axes) -> tuple[DensityMap, str | None]:
    """Checks and geometry common to read and memory-mapped maps (data already [z, y, x]):
    the map and the outlier log line (None without outliers)."""
    if min(data.shape) < MIN_VOXELS_PER_AXIS:
        nz, ny, nx = data.shape
        raise InputError(
            f"{path} is {nx} x {ny} x {nz} voxels: a 3D density map needs at least "
            f"{MIN_VOXELS_PER_AXIS} voxels along every axis; pass a 3D map (not an image or a stack)"
        )
    bad = _count_non_finite(data)
    if bad:
        raise InputError(
            f"{path} contains {bad} NaN or infinite voxel values; replace them (for example with 0) before aligning"
        )
    values = _check_values(path, data)
    sampling = np.array([int(h.mx), int(h.my), int(h.mz)], float)
    cell = np.array([float(h.cella.x), float(h.cella.y), float(h.cella.z)])
    with np.errstate(divide="ignore", invalid="ignore"):
        voxel = cell / sampling
    if not np.all(np.isfinite(voxel)) or np.any(voxel <= 0):
        raise InputError(
            f"{path} has voxel size {tuple(np.round(voxel, 4).tolist())} Å (CELLA {tuple(cell.tolist())} / "
            f"MX,MY,MZ {tuple(sampling.astype(int).tolist())}); it must be positive: "
            "fix the header's cell dimensions"
        )
    if np.any(voxel < MIN_VOXEL_A) or np.any(voxel > MAX_VOXEL_A):
        raise InputError(
            f"{path} has voxel size {tuple(float(f'{v:.4g}') for v in voxel)} Å (CELLA "
            f"{tuple(float(f'{c:.4g}') for c in cell)} / MX,MY,MZ {tuple(sampling.astype(int).tolist())}), "
            f"outside {MIN_VOXEL_A}-{MAX_VOXEL_A:g} Å: fix the header's cell dimensions"
        )
    _check_cell_angles(path, h)
    origin = np.array([float(h.origin.x), float(h.origin.y), float(h.origin.z)])
    if not np.all(np.isfinite(origin)):
        raise InputError(
            f"{path} has a non-finite ORIGIN {tuple(origin.tolist())}; fix the header's ORIGIN "
            "(for example set it to 0)"
        )
    if not np.any(origin):
        starts_crs = (int(h.nxstart), int(h.nystart), int(h.nzstart))  # column, row, section
        start_xyz = np.zeros(3)
        for start, code in zip(starts_crs, axes):
            start_xyz[code - 1] = start
        origin = start_xyz * voxel
    density = DensityMap(data=data, voxel_size_A=voxel, origin_A=origin, path=path)
    return density, robust.format_outliers(values, path)


def _check_values(path, data) -> robust.OutlierSummary:
    """Refuse a map whose bulk overflows single precision; summarize its outliers."""
    bulk = robust.robust_range(data)
    magnitude = max(abs(bulk.low), abs(bulk.high))
    if magnitude > OVERFLOW_LIMIT:
        summary = robust.summarize(data, bulk)
        top = max(abs(summary.largest), abs(summary.smallest))
        factor = 10.0 ** math.ceil(math.log10(magnitude))
        raise InputError(
            f"{path}: values up to {top:.2g} overflow single-precision arithmetic; "
            f"rescale the map (for example divide it by {factor:.0e})"
        )
    return robust.summarize(data, bulk)


def _check_cell_angles(path, h) -> None:
    """Only orthogonal grids are supported; 0 is 'unset' (some writers), taken as 90."""
    angles = [float(h.cellb.alpha), float(h.cellb.beta), float(h.cellb.gamma)]
    if all(a == 0.0 or abs(a - 90.0) < ANGLE_TOLERANCE_DEG for a in angles):  # NaN fails both
        return
    shown = ", ".join(f"{a:g}" for a in np.asarray(angles, np.float32))
    raise InputError(
        f"{path} has cell angles alpha, beta, gamma = ({shown}) degrees: skewed (non-orthogonal) "
        "grids are not supported; resample the map onto an orthogonal grid, for example with "
        "ChimeraX 'volume resample'"
    )


def announced_bytes(head: bytes) -> tuple[int, int] | None:
    """(extended-header bytes, data bytes) that an MRC header (its first 1024 bytes)
    announces; None when its grid, mode or extended-header size is invalid (`read_map`
    names those problems).  The one size rule: `read_map` and the EMDB download check use it."""
    order = _byte_order(head)
    nx, ny, nz, mode = np.frombuffer(head[:16], dtype=f"{order}i4")
    nsymbt = int(np.frombuffer(head[92:96], dtype=f"{order}i4")[0])
    if mode not in _SUPPORTED_MODES or min(nx, ny, nz) <= 0 or nsymbt < 0:
        return None
    return nsymbt, int(nx) * int(ny) * int(nz) * np.dtype(_SUPPORTED_MODES[int(mode)]).itemsize


def _byte_order(head: bytes) -> str:
    """numpy's byte-order mark for an MRC header, from its machine stamp (byte 212)."""
    return "<" if head[212] in (0x44, 0x41) or head[212] == 0 else ">"


def _check_size_before_parsing(path, raw: bytes) -> None:
    """Compare the size the header claims with the bytes present before any parser
    allocates it (a damaged NX/NY/NZ can claim terabytes)."""
    sizes = announced_bytes(raw)
    if sizes is None:
        return  # the general checks report these
    nsymbt, expected = sizes
    held = len(raw) - 1024 - nsymbt
    if held < expected:
        raise _truncated(path, np.frombuffer(raw[:12], dtype=f"{_byte_order(raw)}i4"), expected, held)


def _truncated(path, n_xyz, expected: int, held: int) -> InputError:
    return InputError(
        f"{path} is truncated: header says {tuple(int(n) for n in n_xyz)} voxels "
        f"({expected} bytes of data) but the file holds {max(held, 0)} bytes; "
        "download the map again"
    )


def _count_non_finite(data) -> int:
    """NaN/inf voxels, counted slab by slab (no full-size temporary for big maps)."""
    return sum(int(np.count_nonzero(~np.isfinite(data[z0:z1]))) for z0, z1 in robust._slabs(data.shape))


def _memory_mapped(path) -> tuple[DensityMap, str | None] | None:
    """A big uncompressed float32 map in x, y, z order, memory-mapped read-only (pages are
    read on demand, nothing is copied); None when the file needs the general reader."""
    import mrcfile

    with open(path, "rb") as fh:
        head = fh.read(8)
    if any(head.startswith(magic) for magic, _ in _COMPRESSED):
        return None
    try:
        with mrcfile.open(path, header_only=True, permissive=True) as mrc:
            h = mrc.header.copy()
    except Exception:  # noqa: BLE001 - the general reader gives the clear message
        return None
    axes = (int(h.mapc), int(h.mapr), int(h.maps))
    if int(h.mode) != 2 or axes != (1, 2, 3) or bytes(h.map) not in (b"MAP ", b"MAP\x00"):
        return None
    shape = (int(h.nz), int(h.ny), int(h.nx))
    if min(shape) <= 0:
        return None
    offset = 1024 + int(h.nsymbt)
    try:
        dtype = np.dtype(np.float32).newbyteorder(mrcfile.utils.byte_order_from_machine_stamp(h.machst))
    except ValueError:  # odd machine stamp: the general reader guesses
        return None
    need = offset + int(np.prod(shape, dtype=np.int64)) * 4
    if int(h.nsymbt) < 0 or os.path.getsize(path) < need:
        return None  # the general reader reports the truncation
    if dtype != np.dtype(np.float32):
        return None  # foreign byte order: read and convert
    return _finish(path, np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape), h, axes)


def _read_bytes(path) -> bytes:
    """The file's bytes, decompressed when it starts with a gzip, bzip2 or xz magic number."""
    openers: dict[str, Any] = {"gzip": lambda fh: gzip.GzipFile(fileobj=fh), "bzip2": bz2.BZ2File, "xz": lzma.LZMAFile}
    with open(path, "rb") as fh:
        head = fh.read(8)
        fh.seek(0)
        for magic, kind in _COMPRESSED:
            if head.startswith(magic):
                try:
                    with openers[kind](fh) as stream:
                        return stream.read()
                except (OSError, EOFError, zlib.error, lzma.LZMAError, ValueError) as exc:
                    raise InputError(
                        f"{path} is a damaged {kind} file ({one_line(exc, 200)}); download it again"
                    ) from None
        return fh.read()


def as_map(m) -> DensityMap:
    """A `DensityMap` from a map path or a `DensityMap`."""
    if isinstance(m, DensityMap):
        return m
    if isinstance(m, (str, os.PathLike)):
        return read_map(m)
    raise InputError(f"expected a map path or DensityMap, got {type(m).__name__}")


def resample_onto(source: DensityMap, target: DensityMap, T_target_source: np.ndarray) -> DensityMap:
    """Source density moved by T and sampled (trilinear) on the target's grid:
    out(y) = source(T^-1 y) for every target voxel centre y; 0 outside the source box."""
    from scipy import ndimage

    nz, ny, nx = target.data.shape
    T_inv = tf.invert(np.asarray(T_target_source, float))
    out = np.empty((nz, ny, nx), np.float32)
    ix = np.arange(nx) * target.voxel_size_A[0] + target.origin_A[0]
    iy = np.arange(ny) * target.voxel_size_A[1] + target.origin_A[1]
    gy, gx = np.meshgrid(iy, ix, indexing="ij")
    plane = np.stack([gx.ravel(), gy.ravel(), np.zeros(gx.size)], 1)
    for k in range(nz):  # slab by slab: memory stays at one plane
        plane[:, 2] = k * target.voxel_size_A[2] + target.origin_A[2]
        f = source.world_to_index(tf.apply(T_inv, plane))
        out[k] = ndimage.map_coordinates(source.data, [f[:, 2], f[:, 1], f[:, 0]], order=1, cval=0.0).reshape(ny, nx)
    return DensityMap(data=out, voxel_size_A=target.voxel_size_A.copy(), origin_A=target.origin_A.copy())


def write_map(density: DensityMap | np.ndarray, path, *, voxel_size_A=None, origin_A=None) -> None:
    """Write a map as MRC (mode 2, axes x, y, z, NSTART 0, world position in ORIGIN),
    gzipped when `path` ends in ``.gz``.

    `path` must end in one of `MAP_SUFFIXES`, optionally followed by ``.gz``
    (`check_map_suffix`); nothing is written otherwise.
    """
    import mrcfile

    compress = check_map_suffix(path)
    if isinstance(density, DensityMap):
        data, voxel_size_A, origin_A = density.data, density.voxel_size_A, density.origin_A
    else:
        data = density
    data = np.ascontiguousarray(data, dtype=np.float32)
    vs = np.broadcast_to(np.asarray(voxel_size_A, float), (3,))
    org = np.broadcast_to(np.asarray(origin_A, float), (3,))

    def _write(tmp):
        with warnings.catch_warnings(), np.errstate(all="ignore"):  # header stats of extreme maps
            warnings.simplefilter("ignore")
            with mrcfile.new(tmp, overwrite=True) as m:
                m.set_data(data)
                m.voxel_size = tuple(float(v) for v in vs)
                m.header.origin.x, m.header.origin.y, m.header.origin.z = (float(v) for v in org)
                m.header.nxstart = m.header.nystart = m.header.nzstart = 0
                m.update_header_stats()
        if compress:
            with open(tmp, "rb") as fh:
                packed = gzip.compress(fh.read(), compresslevel=6, mtime=0)  # mtime 0: same bytes every run
            with open(tmp, "wb") as fh:
                fh.write(packed)

    atomic_write(path, _write)


def check_map_suffix(path) -> bool:
    """Raise `InputError` unless `path` ends in a map suffix (`MAP_SUFFIXES`, any case),
    optionally followed by ``.gz``; return whether it is to be gzipped.  Call it before
    any work so that a bad output name fails at once."""
    path = os.fspath(path)
    stem, last = os.path.splitext(os.path.basename(path))
    gz = last.lower() == ".gz"
    if gz:
        stem, last = os.path.splitext(stem)
    if last.lower() in MAP_SUFFIXES:
        return gz
    shown = last + (".gz" if gz else "")
    why = f"'{shown}' is not a map suffix" if shown else "the name has no suffix"
    raise InputError(
        f"cannot write {path}: {why}; give the map file name one of the suffixes "
        f"{', '.join(MAP_SUFFIXES)} (optionally followed by .gz)"
    )
