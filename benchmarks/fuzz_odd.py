#!/usr/bin/env python
"""Fuzz generators for odd maps: 2D images and thin slabs, skewed cells, single outlier
voxels, overflow-scale values, bzip2/xz-compressed maps.

Each ``gen_odd_*(case, r, p_full)`` has the signature of the generators in
benchmarks/fuzz.py: it fills `case` (files, map_path, contour, role, mode, kind, notes,
expect_ok) from the seeded ``random.Random`` `r`, and also returns
``(content, expected)``: the map file's bytes and what ``cryoalign.read_map`` must do
with them, ``"refuse"`` (raise InputError) or ``"accept"`` (return a DensityMap).
To plug them into fuzz.py:

    from fuzz_odd import ODD_GENERATORS, ODD_FAMILY_WEIGHTS
    GENERATORS.update(ODD_GENERATORS); FAMILY_WEIGHTS.update(ODD_FAMILY_WEIGHTS)

This file does not import fuzz.py (which runs as __main__) and builds its own MRC
bytes.  ``python benchmarks/fuzz_odd.py --cases 300`` runs every generator through
``read_map`` and reports any case whose outcome differs from the expected one.
"""
from __future__ import annotations

import argparse
import bz2
import collections
import gzip
import lzma
import pathlib
import random
import struct
import sys
import tempfile
import types

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data"
BASES = {  # key: (file, EMDB-style contour or None)
    "3695": ("emd_3695_5A.mrc.gz", 1.25),        # 48^3 at 5 Å, values 0..18.5
    "1ake": ("1akeA_10A_simulated_odd_machine_stamp.mrc", 0.05),  # 22^3 at 3 Å, 0..0.48
    "5168": ("emd_5168_monomer.mrc.gz", 5.0),    # 28x43x41 at 1.742 Å, 0..40
}
CELLB = 52
_CACHE: dict = {}


# ----------------------------------------------------------------------------- MRC bytes
def mrc_bytes(data_zyx, *, voxel=(1.0, 1.0, 1.0), angles=(90.0, 90.0, 90.0), origin=(0.0, 0.0, 0.0),
              ispg=1, mz=None) -> bytes:
    """Little-endian MRC2014 bytes of a mode-2 map (a 2D array is written as NZ = 1)."""
    arr = np.asarray(data_zyx, dtype="<f4")
    if arr.ndim == 2:
        arr = arr[None]
    nz, ny, nx = arr.shape
    h = bytearray(1024)
    struct.pack_into("<4i", h, 0, nx, ny, nz, 2)
    struct.pack_into("<3i", h, 28, nx, ny, nz if mz is None else mz)
    cell_z = (nz if mz is None else mz) * voxel[2]
    struct.pack_into("<3f", h, 40, nx * voxel[0], ny * voxel[1], cell_z)
    struct.pack_into("<3f", h, CELLB, *angles)
    struct.pack_into("<3i", h, 64, 1, 2, 3)
    with np.errstate(all="ignore"):
        stats = (float(arr.min()), float(arr.max()), float(arr.astype(np.float64).mean()))
    struct.pack_into("<3f", h, 76, *(np.float32(v) for v in stats))
    struct.pack_into("<2i", h, 88, ispg, 0)
    struct.pack_into("<i", h, 108, 20140)
    struct.pack_into("<3f", h, 196, *origin)
    h[208:212], h[212:216] = b"MAP ", b"DD\x00\x00"
    return bytes(h) + arr.tobytes()


def base(key) -> tuple[bytes, np.ndarray]:
    """(plain bytes, [z, y, x] float32 voxels) of a tests/data map (cached)."""
    if key not in _CACHE:
        raw = (DATA / BASES[key][0]).read_bytes()
        raw = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
        nx, ny, nz = struct.unpack_from("<3i", raw, 0)
        arr = np.frombuffer(raw, "<f4", nx * ny * nz, 1024 + struct.unpack_from("<i", raw, 92)[0])
        _CACHE[key] = (raw, arr.reshape(nz, ny, nx).copy())
    raw, arr = _CACHE[key]
    return raw, arr.copy()


def with_voxels(raw: bytes, arr: np.ndarray) -> bytes:
    """`raw`'s header (no extended header) with new voxel values of the same shape."""
    return raw[:1024] + np.ascontiguousarray(arr, "<f4").tobytes()


def _finish(case, r, content: bytes, expected: str, name="in/map.mrc", contour=None, p_full=0.0):
    """Fill the fields fuzz.py's make_case and default_argv read; return (content, expected)."""
    case.files[name] = content
    case.map_path = name
    case.contour = contour
    case.role = "source" if r.random() < 0.75 else "target"
    case.mode = "full" if (expected == "accept" and r.random() < p_full) else "check"
    case.expect_ok = expected == "accept"
    case.note(f"expected: read_map must {expected}")
    return content, expected


def _pick(r):
    key = r.choice(sorted(BASES))
    return key, BASES[key][1]


# ----------------------------------------------------------------------------- generators
def gen_odd_thin(case, r, p_full):
    """2D images (NZ = 1), slabs 1-3 voxels thick along a random axis: refused; 4 voxels
    thick: accepted."""
    thick = r.choice([1, 1, 2, 3, 4])
    axis = r.randrange(3)
    shape = [r.randint(4, 40) for _ in range(3)]
    shape[axis] = thick
    rng = np.random.default_rng(r.getrandbits(64))
    arr = rng.normal(0.0, 1.0, shape).astype(np.float32)
    case.kind = f"thin{thick}"
    case.note(f"{shape[2]} x {shape[1]} x {shape[0]} voxels (x, y, z)")
    content = mrc_bytes(arr, voxel=(r.choice([1.0, 2.0, 5.0]),) * 3, ispg=0 if thick == 1 else 1)
    return _finish(case, r, content, "accept" if thick >= 4 else "refuse", contour=r.choice([None, "1.0"]))


def gen_odd_stack(case, r, p_full):
    """A stack of 2-4 volumes (ISPG 401, NZ = k x MZ): refused; a one-volume stack: accepted."""
    k = r.choice([1, 2, 3, 4])
    mz = r.randint(4, 12)
    arr = np.random.default_rng(r.getrandbits(64)).random((k * mz, 16, 16)).astype(np.float32)
    case.kind = f"stack{k}"
    case.note(f"ISPG 401, {k} volume(s) of 16 x 16 x {mz}")
    return _finish(case, r, mrc_bytes(arr, ispg=401, mz=mz), "accept" if k == 1 else "refuse")


def gen_odd_cellb(case, r, p_full):
    """Cell angles: skewed (refused) or right / unset / rounding-level (accepted)."""
    key, contour = _pick(r)
    raw, _ = base(key)
    kind = r.choice(["skewed", "skewed", "nan", "near", "right", "unset", "partly_unset"])
    angles = {
        "skewed": lambda: tuple(r.choice([90.0, 90.0, 60.0, 120.0, 89.9, 90.02, 109.47]) for _ in range(3)),
        "nan": lambda: (float("nan"), 90.0, 90.0),
        "near": lambda: tuple(90.0 + r.uniform(-0.009, 0.009) for _ in range(3)),
        "right": lambda: (90.0, 90.0, 90.0),
        "unset": lambda: (0.0, 0.0, 0.0),
        "partly_unset": lambda: (0.0, 90.0, 0.0),
    }[kind]()
    if kind == "skewed" and all(a == 90.0 for a in angles):
        angles = (90.0, 90.0, 120.0)
    b = bytearray(raw)
    struct.pack_into("<3f", b, CELLB, *angles)
    case.kind = f"cellb_{kind}"
    case.note(f"base {key}, CELLB {angles}")
    expected = "refuse" if kind in ("skewed", "nan") else "accept"
    return _finish(case, r, bytes(b), expected, contour=str(contour))


def gen_odd_outlier(case, r, p_full):
    """1-3 voxels 1e4..FLT_MAX times the map's maximum (either sign): accepted (logged as
    outliers); a map's own values are not touched."""
    key, contour = _pick(r)
    raw, arr = base(key)
    flat = arr.reshape(-1)
    top = float(np.abs(flat).max())
    n = r.choice([1, 1, 2, 3])
    rng = np.random.default_rng(r.getrandbits(64))
    idx = rng.choice(flat.size, n, replace=False)
    factor = r.choice([1e4, 1e6, 1e30, "max"])
    value = 3.4e38 if factor == "max" else min(3.4e38, factor * top)
    flat[idx] = np.float32(value) * np.float32(r.choice([1.0, -1.0]))
    case.kind = "outlier"
    case.note(f"base {key}, {n} voxel(s) -> +-{value:.3g}")
    return _finish(case, r, with_voxels(raw, arr), "accept", contour=str(contour), p_full=p_full)


def gen_odd_overflow(case, r, p_full):
    """The whole map scaled so that its values overflow single precision (bulk above 1e15):
    refused; scaled to 1e12 (large but safe): accepted."""
    key, _ = _pick(r)
    raw, arr = base(key)
    top = r.choice([3.4e38, 1e38, 1e30, 1e20, 1e16, 1e12])
    scale = top / float(np.abs(arr).max())
    with np.errstate(all="ignore"):
        arr = (arr.astype(np.float64) * scale).astype(np.float32)
    if r.random() < 0.3:
        arr = -arr
    case.kind = f"overflow_{top:g}"
    case.note(f"base {key}, scaled to max |v| = {top:g}")
    # the robust maximum of the base maps is 0.86-0.94 of their maximum: 1e16 -> bulk above 1e15
    return _finish(case, r, with_voxels(raw, arr), "refuse" if top > 1e15 else "accept")


def gen_odd_compressed(case, r, p_full):
    """bzip2 / xz / gzip-compressed maps (accepted) and damaged streams (refused)."""
    key, contour = _pick(r)
    raw, _ = base(key)
    kind = r.choice(["bz2", "xz", "gz"])
    pack = {"bz2": bz2.compress, "xz": lzma.compress, "gz": lambda b: gzip.compress(b, mtime=0)}[kind]
    content = pack(raw)
    damage = r.choice([None, None, "cut", "garbage"])
    if damage == "cut":
        content = content[: r.randint(3, len(content) - 1)]
    elif damage == "garbage":
        b = bytearray(content)
        start = r.randint(40, max(41, len(b) - 300))
        b[start:start + 200] = bytes(r.getrandbits(8) for _ in range(200))
        content = bytes(b)
    case.kind = f"{kind}_{damage or 'ok'}"
    case.note(f"base {key}, {kind}" + (f", {damage}" if damage else ""))
    name = {"bz2": "in/map.mrc.bz2", "xz": "in/map.map.xz", "gz": "in/map.mrc.gz"}[kind]
    return _finish(case, r, content, "refuse" if damage else "accept", name=name, contour=str(contour),
                   p_full=p_full)


ODD_GENERATORS = {"odd_thin": gen_odd_thin, "odd_stack": gen_odd_stack, "odd_cellb": gen_odd_cellb,
                  "odd_outlier": gen_odd_outlier, "odd_overflow": gen_odd_overflow,
                  "odd_compressed": gen_odd_compressed}
ODD_FAMILY_WEIGHTS = {"odd_thin": 3, "odd_stack": 1, "odd_cellb": 3, "odd_outlier": 3, "odd_overflow": 2,
                      "odd_compressed": 3}


# ----------------------------------------------------------------------------- self-check
class _Case(types.SimpleNamespace):
    def note(self, text):
        self.desc.append(text)


def new_case(index, family) -> _Case:
    """A stand-in for fuzz.py's Case with the fields the generators fill."""
    return _Case(index=index, family=family, kind="", desc=[], files={}, map_path=None, role="source",
                 mode="check", argv=None, contour=None, json_out="out/r.json", inputs=[], expect_ok=False)


def read_outcome(content: bytes, name: str, folder: pathlib.Path) -> str:
    """'accept', 'refuse', or 'crash: ...' for read_map on these bytes."""
    import cryoalign

    path = folder / pathlib.Path(name).name
    path.write_bytes(content)
    try:
        cryoalign.read_map(path)
        return "accept"
    except cryoalign.InputError:
        return "refuse"
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        return f"crash: {type(exc).__name__}: {exc}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=300)
    ap.add_argument("--seed", type=int, default=1)
    opts = ap.parse_args(argv)
    import logging
    logging.getLogger("cryoalign").setLevel(logging.ERROR)   # outlier warnings are expected here
    tally, bad = collections.Counter(), []
    families = list(ODD_GENERATORS)
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(opts.cases):
            r = random.Random(f"cryoalign-fuzz-odd:{opts.seed}:{i}")
            family = r.choices(families, weights=[ODD_FAMILY_WEIGHTS[f] for f in families])[0]
            case = new_case(i, family)
            content, expected = ODD_GENERATORS[family](case, r, 0.0)
            got = read_outcome(content, case.map_path, pathlib.Path(tmp))
            tally[(family, case.kind, expected, got)] += 1
            if got != expected:
                bad.append((i, family, case.kind, expected, got, "; ".join(case.desc)))
    for (family, kind, expected, got), n in sorted(tally.items()):
        print(f"{family:15s} {kind:22s} expected {expected:6s} got {got[:60]:60s} {n}")
    for row in bad:
        print("MISMATCH", *row, sep="\t")
    print(f"{opts.cases} cases, {len(bad)} mismatches")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
