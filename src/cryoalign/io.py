"""Maps and models in and out: the only module that knows file formats.

Maps: MRC/CCP4 (``.mrc``, ``.map``, ``.ccp4``, ``.mrcs``, ``.rec``; read also when
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
It accepts a map with a few outlier voxels (see `cryoalign.robust`) and logs one warning
line about them on the ``cryoalign.io`` logger; the data are returned as stored.

Models: PDB and mmCIF (optionally gzipped) through gemmi.

Every writer goes through `atomic_write`: the file appears complete or not at all.
"""
from __future__ import annotations

import bz2
import contextlib
import gzip
import io as _io
import logging
import lzma
import math
import os
import tempfile
import warnings
import zlib

import numpy as np

from . import robust
from .errors import InputError
from .types import DensityMap

log = logging.getLogger(__name__)

MAP_SUFFIXES = (".mrc", ".map", ".ccp4", ".mrcs", ".rec")
MIN_VOXEL_A, MAX_VOXEL_A = 0.05, 100.0   # outside this a header is broken, not a cryo-EM map
MEMMAP_BYTES = 512 * 2 ** 20   # uncompressed float32 x,y,z maps above this are memory-mapped, not read
_SUPPORTED_MODES = {0: "int8", 1: "int16", 2: "float32", 6: "uint16", 12: "float16"}
MIN_VOXELS_PER_AXIS = 4        # fewer is an image, a thin slab or a line, not a 3D density
ANGLE_TOLERANCE_DEG = 0.01     # cell angles this close to 90 are rounding, not skew
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
        raise InputError(f"{path} is not an MRC/CCP4 map: {len(raw)} bytes is shorter than "
                         "the 1024-byte header; check that the download finished")
    if raw[208:212] not in (b"MAP ", b"MAP\x00", b"MAP\x20"):
        raise InputError(f"{path} is not an MRC/CCP4 map (no 'MAP ' tag at byte 208); "
                         "pass a .mrc/.map/.ccp4 density map")
    _check_size_before_parsing(path, raw)
    try:
        mrc = mrcfile.mrcinterpreter.MrcInterpreter(_io.BytesIO(raw), permissive=True)
    except Exception as exc:  # mrcfile raises several types for corrupt headers
        raise InputError(f"{path} is not a readable MRC/CCP4 map ({_one_line(exc)}); "
                         "check that it is a complete MRC/CCP4 file") from None
    h = mrc.header
    mode = int(h.mode)
    if mode not in _SUPPORTED_MODES:
        raise InputError(f"{path} uses MRC mode {mode}, which is not a real-valued density; "
                         f"supported modes are {sorted(_SUPPORTED_MODES)} (convert it to mode 2, float32)")
    n_crs = np.array([int(h.nx), int(h.ny), int(h.nz)])
    if np.any(n_crs <= 0):
        raise InputError(f"{path} has non-positive dimensions NX,NY,NZ = {tuple(n_crs.tolist())}; the header is "
                         "damaged: download the map again")
    data = mrc.data
    if data is not None and data.ndim == 4 and data.shape[0] > 1:   # volume stack (ISPG 401-630)
        n_vol, n_sec, n_row, n_col = data.shape
        raise InputError(f"{path} is a stack of {n_vol} volumes of {n_col} x {n_row} x {n_sec} voxels; "
                         "pass a single 3D map (extract one volume from the stack)")
    if data is not None and data.ndim != 3 and data.size == int(np.prod(n_crs)):
        data = np.asarray(data).reshape(tuple(n_crs[::-1]))   # 2D images, one-volume stacks
    expected = int(np.prod(n_crs)) * np.dtype(_SUPPORTED_MODES[mode]).itemsize
    if data is None or data.size != int(np.prod(n_crs)):
        got = len(raw) - 1024 - int(h.nsymbt)
        raise _truncated(path, n_crs, expected, got)
    axes = (int(h.mapc), int(h.mapr), int(h.maps))
    if sorted(axes) != [1, 2, 3]:
        raise InputError(f"{path} has invalid axis order MAPC/MAPR/MAPS = {axes}; "
                         "it must be a permutation of 1, 2, 3")
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
        raise InputError(f"{path} is {nx} x {ny} x {nz} voxels: a 3D density map needs at least "
                         f"{MIN_VOXELS_PER_AXIS} voxels along every axis; pass a 3D map (not an image or a stack)")
    bad = _count_non_finite(data)
    if bad:
        raise InputError(f"{path} contains {bad} NaN or infinite voxel values; "
                         "replace them (for example with 0) before aligning")
    values = _check_values(path, data)
    sampling = np.array([int(h.mx), int(h.my), int(h.mz)], float)
    cell = np.array([float(h.cella.x), float(h.cella.y), float(h.cella.z)])
    with np.errstate(divide="ignore", invalid="ignore"):
        voxel = cell / sampling
    if not np.all(np.isfinite(voxel)) or np.any(voxel <= 0):
        raise InputError(f"{path} has voxel size {tuple(np.round(voxel, 4).tolist())} Å (CELLA {tuple(cell.tolist())} / "
                         f"MX,MY,MZ {tuple(sampling.astype(int).tolist())}); it must be positive: "
                         "fix the header's cell dimensions")
    if np.any(voxel < MIN_VOXEL_A) or np.any(voxel > MAX_VOXEL_A):
        raise InputError(f"{path} has voxel size {tuple(float(f'{v:.4g}') for v in voxel)} Å (CELLA "
                         f"{tuple(float(f'{c:.4g}') for c in cell)} / MX,MY,MZ {tuple(sampling.astype(int).tolist())}), "
                         f"outside {MIN_VOXEL_A}-{MAX_VOXEL_A:g} Å: fix the header's cell dimensions")
    _check_cell_angles(path, h)
    origin = np.array([float(h.origin.x), float(h.origin.y), float(h.origin.z)])
    if not np.all(np.isfinite(origin)):
        raise InputError(f"{path} has a non-finite ORIGIN {tuple(origin.tolist())}; fix the header's ORIGIN "
                         "(for example set it to 0)")
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
        raise InputError(f"{path}: values up to {top:.2g} overflow single-precision arithmetic; "
                         f"rescale the map (for example divide it by {factor:.0e})")
    return robust.summarize(data, bulk)


def _check_cell_angles(path, h) -> None:
    """Only orthogonal grids are supported; 0 is 'unset' (some writers), taken as 90."""
    angles = [float(h.cellb.alpha), float(h.cellb.beta), float(h.cellb.gamma)]
    if all(a == 0.0 or abs(a - 90.0) < ANGLE_TOLERANCE_DEG for a in angles):   # NaN fails both
        return
    shown = ", ".join(f"{a:g}" for a in np.float32(angles))
    raise InputError(f"{path} has cell angles alpha, beta, gamma = ({shown}) degrees: skewed (non-orthogonal) "
                     "grids are not supported; resample the map onto an orthogonal grid, for example with "
                     "ChimeraX 'volume resample'")


def _check_size_before_parsing(path, raw: bytes) -> None:
    """Compare the size the header claims with the bytes present before any parser
    allocates it (a damaged NX/NY/NZ can claim terabytes)."""
    order = "<" if raw[212] in (0x44, 0x41) or raw[212] == 0 else ">"     # machine stamp
    nx, ny, nz, mode = np.frombuffer(raw[:16], dtype=f"{order}i4")
    nsymbt = int(np.frombuffer(raw[92:96], dtype=f"{order}i4")[0])
    if mode not in _SUPPORTED_MODES or min(nx, ny, nz) <= 0 or nsymbt < 0:
        return                                            # the general checks report these
    voxels = int(nx) * int(ny) * int(nz)
    expected = voxels * np.dtype(_SUPPORTED_MODES[int(mode)]).itemsize
    held = len(raw) - 1024 - nsymbt
    if held < expected:
        raise _truncated(path, (nx, ny, nz), expected, held)


def _truncated(path, n_xyz, expected: int, held: int) -> InputError:
    return InputError(f"{path} is truncated: header says {tuple(int(n) for n in n_xyz)} voxels "
                      f"({expected} bytes of data) but the file holds {max(held, 0)} bytes; "
                      "download the map again")


def _one_line(exc, limit: int = 200) -> str:
    """A library's exception as one short line (never empty)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
    except ValueError:                               # odd machine stamp: the general reader guesses
        return None
    need = offset + int(np.prod(shape, dtype=np.int64)) * 4
    if int(h.nsymbt) < 0 or os.path.getsize(path) < need:
        return None                                  # the general reader reports the truncation
    if dtype != np.dtype(np.float32):
        return None                                  # foreign byte order: read and convert
    return _finish(path, np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape), h, axes)


def _read_bytes(path) -> bytes:
    """The file's bytes, decompressed when it starts with a gzip, bzip2 or xz magic number."""
    openers = {"gzip": lambda fh: gzip.GzipFile(fileobj=fh), "bzip2": bz2.BZ2File, "xz": lzma.LZMAFile}
    with open(path, "rb") as fh:
        head = fh.read(8)
        fh.seek(0)
        for magic, kind in _COMPRESSED:
            if head.startswith(magic):
                try:
                    with openers[kind](fh) as stream:
                        return stream.read()
                except (OSError, EOFError, zlib.error, lzma.LZMAError, ValueError) as exc:
                    raise InputError(f"{path} is a damaged {kind} file ({_one_line(exc)}); "
                                     "download it again") from None
        return fh.read()


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
        with warnings.catch_warnings(), np.errstate(all="ignore"):   # header stats of extreme maps
            warnings.simplefilter("ignore")
            with mrcfile.new(tmp, overwrite=True) as m:
                m.set_data(data)
                m.voxel_size = tuple(float(v) for v in vs)
                m.header.origin.x, m.header.origin.y, m.header.origin.z = (float(v) for v in org)
                m.header.nxstart = m.header.nystart = m.header.nzstart = 0
                m.update_header_stats()
        if compress:
            with open(tmp, "rb") as fh:
                packed = gzip.compress(fh.read(), compresslevel=6, mtime=0)   # mtime 0: same bytes every run
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
    raise InputError(f"cannot write {path}: {why}; give the map file name one of the suffixes "
                     f"{', '.join(MAP_SUFFIXES)} (optionally followed by .gz)")


# ----------------------------------------------------------------------------- outputs
def atomic_write(path, write_fn, *, journal: bool = True) -> None:
    """Call ``write_fn(tmp_path)`` then rename tmp onto `path`; no partial file on failure."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise InputError(f"cannot write {path}: folder {folder} does not exist; create it first")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.basename(path), dir=folder)
    except OSError as exc:
        raise InputError(f"cannot write {path}: {exc.strerror}; choose a writable location") from None
    os.close(fd)
    try:
        write_fn(tmp)
        os.chmod(tmp, 0o666 & ~_current_umask())  # mkstemp makes 0600; give the usual mode
        os.replace(tmp, path)
        if _JOURNAL is not None and journal:
            _JOURNAL.append(path)
    except OSError as exc:
        raise InputError(f"cannot write {path}: {exc.strerror or exc}; choose a writable location") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


_JOURNAL: list | None = None


@contextlib.contextmanager
def output_journal():
    """Record every file (and folder, via `made_dir`) written inside the block; when the
    block raises, remove them all, so a failed command leaves no partial set of outputs."""
    global _JOURNAL
    previous, _JOURNAL = _JOURNAL, []
    try:
        yield _JOURNAL
    except BaseException:
        for path in reversed(_JOURNAL):
            with contextlib.suppress(OSError):
                if os.path.isdir(path) and not os.path.islink(path):
                    os.rmdir(path)            # only when empty
                else:
                    os.remove(path)
        raise
    finally:
        _JOURNAL = previous


def made_dir(path) -> None:
    """Tell the journal that `path` was created by this command."""
    if _JOURNAL is not None:
        _JOURNAL.append(os.fspath(path))


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_text(path, text: str, *, journal: bool = True) -> None:
    def _write(tmp):
        with open(tmp, "w") as fh:
            fh.write(text)
    atomic_write(path, _write, journal=journal)


def check_writable(path) -> None:
    """Fail early (before any work) when `path` cannot be created."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        probe = folder
        while not os.path.exists(probe):
            probe = os.path.dirname(probe)
        if not os.path.isdir(probe):
            raise InputError(f"cannot write {path}: {probe} is a file, not a folder; choose another location")
        raise InputError(f"cannot write {path}: folder {folder} does not exist; create it first")
    if not os.access(folder, os.W_OK):
        raise InputError(f"cannot write {path}: folder {folder} is not writable; choose another location")
    if os.path.isdir(path):
        raise InputError(f"cannot write {path}: it is a directory; give a file name")


def check_writable_folder(path, flag: str) -> None:
    """Fail before any work when `path` cannot be (or become) a folder this command adds
    files to (a resumable run's folder, a catalogue): a file, below a file, or in a place
    that is not writable.  `flag` names the option in the message (--out-dir, --db)."""
    path = os.fspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise InputError(f"{flag} {path} is a file, not a folder; give a new folder or one this command wrote")
    probe = os.path.abspath(path)
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise InputError(f"cannot create {flag} {path}: {probe} is a file; choose another {flag}")
    if not os.access(probe, os.W_OK | os.X_OK):
        what = "folder" if probe == os.path.abspath(path) else f"cannot create it: {probe}"
        raise InputError(f"{flag} {path}: {what} is not writable; choose a writable location for {flag}")


def file_sha256(path, chunk: int = 2 ** 22) -> str:
    """SHA-256 of a file's bytes (read in chunks)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


FOLDER_MARK = ".cryoalign"      # in every output folder: its contents are one cryoalign run's
WORK_MARK = ".cryoalign-work"   # in a resumable run's folder (variance): kept between runs


def check_output_folder(path) -> None:
    """Fail before any work when `path` cannot become an output folder: a file, an
    unwritable location, or a folder holding files cryoalign did not write (a run
    replaces the whole folder, so it never mixes runs and never deletes others' files)."""
    path = os.fspath(path)
    if os.path.exists(path):
        if not os.path.isdir(path):
            raise InputError(f"output folder {path} is a file; choose another --out-dir")
        foreign = foreign_files(path)
        if foreign:
            shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
            raise InputError(f"output folder {path} holds files that cryoalign did not write ({shown}); choose "
                             "a new or empty folder (a run replaces the whole folder)")
    probe = os.path.abspath(path)
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise InputError(f"cannot create output folder {path}: {probe} is a file; choose a writable location")
    if not os.access(probe, os.W_OK):
        raise InputError(f"cannot create output folder {path}: {probe} is not writable; "
                         "choose a writable location")


def foreign_files(path) -> list[str]:
    """Entries of folder `path` that no cryoalign run wrote: all of them when it has no
    FOLDER_MARK, else those the mark does not list (a user's file added afterwards)."""
    entries = sorted(os.listdir(path))
    mark = os.path.join(path, FOLDER_MARK)
    if not os.path.isfile(mark):
        return entries
    with open(mark, errors="replace") as fh:
        listed = {line.rstrip("\n") for line in fh.readlines()[1:]}
    return [e for e in entries if e != FOLDER_MARK and e not in listed]


def mark_folder(path, what: str) -> None:
    """Write FOLDER_MARK: who wrote the folder, then the name of every entry in it."""
    names = sorted(e for e in os.listdir(path) if e != FOLDER_MARK)
    write_text(os.path.join(path, FOLDER_MARK), f"written by {what}\n" + "".join(f"{n}\n" for n in names),
               journal=False)


@contextlib.contextmanager
def output_folder(path, what: str = "cryoalign"):
    """Yield a new temporary folder beside `path`; when the block succeeds it replaces
    `path` whole (a folder written by an earlier run is removed), so the folder only ever
    holds the files of one complete run, even when two runs write to it at once.  When
    the block fails, nothing is left."""
    import shutil
    import uuid

    path = os.path.abspath(os.fspath(path))
    check_output_folder(path)
    parent = os.path.dirname(path)
    try:
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.tmp-", dir=parent)
    except OSError as exc:
        raise InputError(f"cannot create output folder {path}: {exc.strerror}; choose a writable location") from None
    try:
        yield tmp
        mark_folder(tmp, what)
        os.chmod(tmp, 0o777 & ~_current_umask())
        for _ in range(100):
            try:
                os.rename(tmp, path)           # onto nothing, or onto an empty folder
                break
            except OSError:
                if not os.path.isdir(path) or foreign_files(path):
                    raise InputError(f"output folder {path} was changed by something other than cryoalign "
                                     "during the run; choose a new folder") from None
                old = f"{path}.old-{uuid.uuid4().hex[:8]}"
                try:
                    os.rename(path, old)       # another run's complete folder: set aside, then removed
                except FileNotFoundError:
                    continue
                shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ----------------------------------------------------------------------------- models
def read_model(path):
    """Read a PDB or mmCIF model (optionally gzipped) as a `gemmi.Structure`.

    Hydrogens and waters are kept as in the file; an empty or unparseable file
    raises `InputError`.
    """
    import gemmi

    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputError(f"model file not found: {path}; check the path")
    try:
        st = gemmi.read_structure(path)
    except Exception as exc:  # gemmi raises RuntimeError/ValueError with a parser message
        raise InputError(f"cannot parse model {path}: {_one_line(exc)}; pass a PDB or mmCIF file") from None
    if len(st) == 0 or st[0].count_atom_sites() == 0:
        raise InputError(f"model {path} contains no atoms; pass a PDB or mmCIF file with coordinates")
    st.setup_entities()
    return st


def model_coordinates(st, *, selection: str = "all") -> np.ndarray:
    """(N, 3) coordinates (Å) of the first model's atoms.

    selection: "all", or "ca" (CA of amino acids and P of nucleotides).
    """
    out = []
    for chain in st[0]:
        for res in chain:
            for atom in res:
                if selection == "ca" and not is_trace_atom(res, atom):
                    continue
                out.append((atom.pos.x, atom.pos.y, atom.pos.z))
    return np.array(out, float).reshape(-1, 3)


def is_trace_atom(res, atom) -> bool:
    return (atom.name == "CA" and atom.element.name == "C") or (atom.name == "P" and atom.element.name == "P")


def transform_model(st, T_target_source: np.ndarray):
    """Return a copy of `st` with every model's atoms moved by the 4x4 transform."""
    import gemmi

    T = np.asarray(T_target_source, float)
    moved = st.clone()
    tr = gemmi.Transform(gemmi.Mat33(T[:3, :3].tolist()), gemmi.Vec3(*T[:3, 3]))
    for model in moved:
        model.transform_pos_and_adp(tr)
    return moved


def write_model(st, path) -> None:
    """Write PDB (``.pdb``/``.ent``) or mmCIF (``.cif``/``.mmcif``) by suffix."""
    path = os.fspath(path)
    lower = path.lower()
    if lower.endswith((".cif", ".mmcif")):
        def _write(tmp):
            st.make_mmcif_document().write_file(tmp)
    elif lower.endswith((".pdb", ".ent")):
        def _write(tmp):
            st.write_pdb(tmp)
    else:
        raise InputError(f"cannot tell the model format of {path}: use a .pdb or .cif suffix")
    atomic_write(path, _write)


def model_suffix(path) -> str:
    """Suffix for writing a model that was read from `path` (keeps PDB vs mmCIF)."""
    lower = os.fspath(path).lower()
    if lower.endswith(".gz"):
        lower = lower[:-3]
    return ".cif" if lower.endswith((".cif", ".mmcif")) else ".pdb"
