#!/usr/bin/env python
"""Fuzz cryoalign's input handling: many broken (and some valid) inputs through the real code.

    python benchmarks/fuzz.py --cases 10000 --seed 1 --jobs 2 --out /tmp/cryoalign-fuzz
    python benchmarks/fuzz.py --seed 1 --case 4711          # replay one case, keep its files

Every case is generated deterministically from (--seed, case index): a mutation family
(header fields, voxel data, gzip stream, random bytes, text, paths, contour options,
--source-model files, output locations, other options) applied to the small real maps
and models of tests/data.  Each case runs in a worker process, in-process through

  1. the library:  ``cryoalign.read_map(path)`` on the map under test must return a valid
     DensityMap (3D finite float data, positive finite voxel sizes, finite origin) or raise
     ``cryoalign.InputError``; anything else is a crash;
  2. the CLI:      ``cryoalign.cli.main(["align", ...])``.  Most cases ("check" mode) run the
     CLI's validation path: the other map gets a contour above its maximum (1e30), so the
     run stops with a clean error right after reading both maps and checking the contour
     of the map under test, and the expected outcome is exit 2.  A fraction (--full,
     default 6%) runs a whole alignment of small maps (mostly with --voxel 8, a few at the
     default sampling) and may end in exit 0 or exit 2.

Outcome of a case (the first that applies):
  hang            the case exceeded --timeout seconds (soft alarm, or killed 25 s later)
  crash           exit 1 / a traceback / an exception other than InputError from read_map /
                  any other exit code / the worker process died
  input modified  an input file changed, vanished or was replaced
  partial output  after a failed run: a new or changed file or folder anywhere in the case
                  folder (an output, an output folder, a temp file); after a success: temp
                  files (.tmp-*) left behind
  bad message     exit 2 but not exactly one 'cryoalign: error: ' line as the last stderr
                  line, or something on stdout
  bad result      exit 0 but no JSON, or its "matrix" is not a finite rigid 4x4
  ok              exit 0 with a valid finite 4x4 "matrix"
  clean error     exit 2, one 'cryoalign: error: ...' line, no traceback, nothing written,
                  inputs unchanged

Writes to --out: summary.md (the tables), failures.tsv (one row per failing case with the
reproduction: seed, case index, family, mutation, argv), cases.tsv (every case), and
failures/case-N/ (the inputs of the first failing cases of each signature).
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import datetime
import faulthandler
import gzip
import hashlib
import io
import json
import math
import os
import pathlib
import platform
import random
import re
import shlex
import shutil
import signal
import stat
import struct
import sys
import time
import traceback
import warnings

REPO = pathlib.Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data"

# Map under test: base maps (file, known contour level or None = estimated, weight).
BASE_MAPS = {
    "3695": ("emd_3695_5A.mrc.gz", 1.25, 5),            # 48^3 at 5 Å
    "1ake": ("1akeA_10A_simulated_odd_machine_stamp.mrc", 0.05, 3),  # 22^3 at 3 Å, odd stamp
    "5168": ("emd_5168_monomer.mrc.gz", 5.0, 2),          # 28x43x41 at 1.742 Å
    "3696": ("emd_3696_5A.mrc.gz", 0.69, 1),              # 64^3 at 5 Å
}
PARTNER = ("emd_3695_5A.mrc.gz", 1.25)                    # the other (valid) map of a run
MODELS = ("3mfp.pdb.gz", "3j6b_9.pdb.gz")
SENTINEL = "1e30"                                         # contour above any partner maximum

FAMILY_WEIGHTS = {"header": 30, "data": 18, "gzip": 10, "random": 8, "text": 5, "path": 4,
                  "contour": 9, "model": 7, "output": 7, "options": 2}
OUTCOMES = ("ok", "clean error", "crash", "hang", "partial output", "input modified",
            "bad message", "bad result")
FAILURES = OUTCOMES[2:]

# ----------------------------------------------------------------------------- MRC header layout
INT, FLOAT, BYTES = "i", "f", "4s"
FIELDS = {  # name: (byte offset, struct code); little-endian like the base maps
    "NX": (0, INT), "NY": (4, INT), "NZ": (8, INT), "MODE": (12, INT),
    "NXSTART": (16, INT), "NYSTART": (20, INT), "NZSTART": (24, INT),
    "MX": (28, INT), "MY": (32, INT), "MZ": (36, INT),
    "CELLA.x": (40, FLOAT), "CELLA.y": (44, FLOAT), "CELLA.z": (48, FLOAT),
    "CELLB.alpha": (52, FLOAT), "CELLB.beta": (56, FLOAT), "CELLB.gamma": (60, FLOAT),
    "MAPC": (64, INT), "MAPR": (68, INT), "MAPS": (72, INT),
    "DMIN": (76, FLOAT), "DMAX": (80, FLOAT), "DMEAN": (84, FLOAT),
    "ISPG": (88, INT), "NSYMBT": (92, INT), "EXTTYP": (104, BYTES), "NVERSION": (108, INT),
    "ORIGIN.x": (196, FLOAT), "ORIGIN.y": (200, FLOAT), "ORIGIN.z": (204, FLOAT),
    "MAP": (208, BYTES), "MACHST": (212, BYTES), "RMS": (216, FLOAT), "NLABL": (220, INT),
}
MODE_DTYPES = {0: "<i1", 1: "<i2", 2: "<f4", 6: "<u2", 12: "<f2"}
I32_MAX, I32_MIN = 2**31 - 1, -2**31


def get_field(raw, name):
    off, code = FIELDS[name]
    return struct.unpack_from("<" + code, raw, off)[0]


def set_field(raw: bytearray, name, value):
    off, code = FIELDS[name]
    if code == INT:
        value = max(I32_MIN, min(I32_MAX, int(value)))
    elif code == FLOAT:
        value = float(value)
        if math.isfinite(value) and abs(value) > 3.4028234663852886e38:
            value = math.copysign(math.inf, value)
    struct.pack_into("<" + code, raw, off, value)


def fmt(v):
    if isinstance(v, bytes):
        return repr(v)
    if isinstance(v, float):
        return f"{v:.7g}"
    return str(v)


def make_mrc(arr_zyx, *, mode=None, voxel=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), template=None):
    """Raw little-endian MRC bytes (MRC2014 header; a copy of `template`'s otherwise)."""
    import numpy as np

    if mode is None:
        mode = {np.dtype("<i1"): 0, np.dtype("<i2"): 1, np.dtype("<f4"): 2, np.dtype("<u2"): 6,
                np.dtype("<f2"): 12}[np.dtype(arr_zyx.dtype).newbyteorder("<")]
    arr = np.ascontiguousarray(arr_zyx, dtype=MODE_DTYPES[mode])
    nz, ny, nx = arr.shape
    h = bytearray(template[:1024]) if template is not None else bytearray(1024)
    if template is None:
        h[208:212], h[212:216] = b"MAP ", b"DD\x00\x00"
        for name, v in (("CELLB.alpha", 90.0), ("CELLB.beta", 90.0), ("CELLB.gamma", 90.0),
                        ("MAPC", 1), ("MAPR", 2), ("MAPS", 3), ("NVERSION", 20140)):
            set_field(h, name, v)
        for k, v in enumerate(origin):
            set_field(h, "ORIGIN." + "xyz"[k], v)
    set_field(h, "NSYMBT", 0)
    for name, v in zip(("NX", "NY", "NZ", "MX", "MY", "MZ"), (nx, ny, nz, nx, ny, nz)):
        set_field(h, name, v)
    set_field(h, "MODE", mode)
    if template is None or voxel is not None:
        for k, (n, v) in enumerate(zip((nx, ny, nz), voxel)):
            set_field(h, "CELLA." + "xyz"[k], n * v)
    return bytes(h) + arr.tobytes()


# ----------------------------------------------------------------------------- shared inputs
_CACHE = {}


def base_raw(key):
    """Decompressed bytes of a base map (cached per process)."""
    if key not in _CACHE:
        raw = (DATA / BASE_MAPS[key][0]).read_bytes()
        _CACHE[key] = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    return _CACHE[key]


def base_array(key):
    import numpy as np

    raw = base_raw(key)
    nx, ny, nz = (get_field(raw, n) for n in ("NX", "NY", "NZ"))
    off = 1024 + get_field(raw, "NSYMBT")
    return np.frombuffer(raw, "<f4", nx * ny * nz, off).reshape(nz, ny, nx).copy()


def model_text(name="3mfp.pdb.gz"):
    key = ("model", name)
    if key not in _CACHE:
        _CACHE[key] = gzip.decompress((DATA / name).read_bytes())
    return _CACHE[key]


def pick_base(r):
    keys = list(BASE_MAPS)
    return r.choices(keys, weights=[BASE_MAPS[k][2] for k in keys])[0]


# ----------------------------------------------------------------------------- a case
@dataclasses.dataclass
class Case:
    index: int
    family: str
    kind: str = ""
    desc: list = dataclasses.field(default_factory=list)   # human-readable mutation steps
    # relpath -> bytes | ("dir",) | ("ro-dir",) | ("symlink", target)
    files: dict = dataclasses.field(default_factory=dict)
    map_path: str | None = None      # relpath (or absolute) of the map under test, for read_map
    role: str = "source"             # which side of `align` the map under test is
    mode: str = "check"              # "check" (validation path) or "full" (a whole alignment)
    argv: list | None = None         # "{case}" is replaced by the case folder
    contour: str | None = None       # contour of the map under test (None: estimated)
    json_out: str | None = "out/r.json"
    inputs: list = dataclasses.field(default_factory=list)  # relpaths that must not change
    expect_ok: bool = False          # informational: the input is meant to be valid

    def note(self, text):
        self.desc.append(text)


def default_argv(case, r, voxel=None):
    """align argv around the map under test, with the partner map (tests/data) on the other side."""
    partner = str(DATA / PARTNER[0])
    mut = case.map_path if os.path.isabs(case.map_path or "") else "{case}/" + (case.map_path or "")
    src, tgt = (mut, partner) if case.role == "source" else (partner, mut)
    argv = ["align", src, tgt]
    mine, other = ("--source-contour", "--target-contour") if case.role == "source" else \
        ("--target-contour", "--source-contour")
    if case.mode == "check":
        if case.role == "source":
            if case.contour is not None:
                argv.append(f"{mine}={case.contour}")
            argv.append(f"{other}={SENTINEL}")           # stop after the source's contour check
        else:
            argv.append(f"{other}={SENTINEL}")           # stop after reading both maps
    else:
        if case.contour is not None:
            argv.append(f"{mine}={case.contour}")
        argv.append(f"{other}={PARTNER[1]}")
        if voxel is None:
            voxel = "8" if r.random() < 0.8 else None
        if voxel:
            argv += ["--voxel", voxel]
        argv += ["--jobs", "1"]
    if case.json_out:
        argv += ["--json", "{case}/" + case.json_out]
    if r.random() < 0.9:
        argv.append("--quiet")
    return argv


def choose_mode(r, p_full):
    return "full" if r.random() < p_full else "check"


# ----------------------------------------------------------------------------- families
def _float_values(orig):
    return [0.0, -0.0, -1.0, -abs(orig) if orig else -5.0, float("nan"), float("inf"), float("-inf"),
            1e38, 3.4028234663852886e38, 1e-38, 1e-45, orig * 0.001, orig * 0.1, orig * 0.5, orig * 2, orig * 10,
            orig * 100, 1e6]


def mutate_header(raw: bytearray, r, case):
    """One header mutation of `raw` (in place, or returns new bytes when the length changes)."""
    import numpy as np

    group = r.choices(
        ["dims", "mode", "nstart", "sampling", "cella", "cellb", "axes", "stats", "ispg", "nsymbt",
         "exttyp", "nversion", "origin", "maptag", "machst", "labels", "reshape", "exthdr"],
        weights=[12, 10, 6, 8, 12, 3, 10, 5, 2, 10, 4, 2, 10, 6, 6, 3, 5, 4])[0]
    case.kind = case.kind or group
    if group in ("dims", "nstart", "sampling"):
        names = {"dims": ("NX", "NY", "NZ"), "nstart": ("NXSTART", "NYSTART", "NZSTART"),
                 "sampling": ("MX", "MY", "MZ")}[group]
        name = r.choice(names) if r.random() < 0.7 else None
        targets = [name] if name else list(names)
        orig = get_field(raw, targets[0])
        if group == "nstart":
            value = r.choice([0, -1, 1, I32_MAX, I32_MIN, 10**9, -(get_field(raw, "NX")),
                              r.randint(-1000, 1000), r.randint(-10**6, 10**6)])
        else:
            value = r.choice([0, -1, 1, 2, orig - 1, orig + 1, orig * 2, max(orig // 2, 1), I32_MAX,
                              I32_MIN, 65536, 10**6, r.randint(1, 200), -orig])
        for t in targets:
            set_field(raw, t, value)
        case.note(f"{'/'.join(targets)} {orig}->{value}")
    elif group == "mode":
        orig = get_field(raw, "MODE")
        value = r.choice([0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 16, 101, -1, I32_MAX, 2 ** 24])
        set_field(raw, "MODE", value)
        case.note(f"MODE {orig}->{value}")
    elif group in ("cella", "cellb", "origin"):
        prefix, keys = {"cella": ("CELLA.", "xyz"), "cellb": ("CELLB.", ("alpha", "beta", "gamma")),
                        "origin": ("ORIGIN.", "xyz")}[group]
        names = [prefix + k for k in keys]
        targets = [r.choice(names)] if r.random() < 0.6 else names
        orig = get_field(raw, targets[0])
        if group == "origin":
            value = r.choice([0.0, float("nan"), float("inf"), float("-inf"), 1e38, -1e38, 3.4e38,
                              1e30, 1e15, 1e9, -1e9, 1e-40, r.uniform(-1e4, 1e4)])
        elif group == "cellb":
            value = r.choice([0.0, 90.0, float("nan"), -1.0, 180.0, 1e38, float("inf")])
        else:
            value = r.choice(_float_values(orig) + [r.uniform(1, 1000)])
        for t in targets:
            set_field(raw, t, value)
        case.note(f"{'/'.join(targets)} {fmt(orig)}->{fmt(value)}")
    elif group == "axes":
        orig = tuple(get_field(raw, n) for n in ("MAPC", "MAPR", "MAPS"))
        if r.random() < 0.4:
            value = tuple(r.sample([1, 2, 3], 3))
        else:
            value = r.choice([(1, 1, 3), (0, 1, 2), (2, 3, 4), (-1, 2, 3), (3, 3, 3), (0, 0, 0),
                              (I32_MAX, 2, 3), (1, 2, I32_MIN),
                              tuple(r.randint(-1, 5) for _ in range(3))])
        for n, v in zip(("MAPC", "MAPR", "MAPS"), value):
            set_field(raw, n, v)
        case.note(f"MAPC/MAPR/MAPS {orig}->{value}")
    elif group == "stats":
        name = r.choice(["DMIN", "DMAX", "DMEAN", "RMS"])
        value = r.choice([float("nan"), float("inf"), float("-inf"), 1e38, -1e38, 0.0,
                          r.uniform(-1e6, 1e6)])
        set_field(raw, name, value)
        case.note(f"{name}->{fmt(value)}")
    elif group == "ispg":
        value = r.choice([0, 1, 401, -1, I32_MAX, 230, 1000])
        set_field(raw, "ISPG", value)
        case.note(f"ISPG->{value}")
    elif group == "nsymbt":
        data_len = len(raw) - 1024
        value = r.choice([1, 4, 80, 1024, -1, -4, -1024, I32_MIN, I32_MAX, data_len, data_len + 1,
                          r.randint(1, 5000)])
        set_field(raw, "NSYMBT", value)
        case.note(f"NSYMBT 0->{value} (no extended header bytes added)")
    elif group == "exttyp":
        value = r.choice([b"CCP4", b"MRCO", b"SERI", b"AGAR", b"FEI1", b"FEI2", b"HDF5", b"\xff\xff\xff\xff",
                          bytes(r.getrandbits(8) for _ in range(4))])
        raw[104:108] = value
        case.note(f"EXTTYP->{value!r}")
        if r.random() < 0.5:
            n = r.choice([1, 100, 768, 1536, 5000])
            set_field(raw, "NSYMBT", n)
            raw[1024:1024] = bytes(r.getrandbits(8) for _ in range(n))
            case.note(f"+{n} random extended-header bytes, NSYMBT={n}")
    elif group == "nversion":
        value = r.choice([20140, 20141, 0, -1, I32_MAX, 20142])
        set_field(raw, "NVERSION", value)
        case.note(f"NVERSION->{value}")
    elif group == "maptag":
        value = r.choice([b"MAP ", b"MAP\x00", b"map ", b"\x00\x00\x00\x00", b"MAPP", b" MAP", b"PAM ",
                          bytes(r.getrandbits(8) for _ in range(4))])
        raw[208:212] = value
        case.note(f"MAP tag->{value!r}")
    elif group == "machst":
        value = r.choice([b"DD\x00\x00", b"DA\x00\x00", b"\x11\x11\x00\x00", b"\x00\x00\x00\x00",
                          b"\x00\x00DD", b"\xff\xff\xff\xff", b"\x11\x11\x11\x11",
                          bytes(r.getrandbits(8) for _ in range(4))])
        raw[212:216] = value
        case.note(f"MACHST->{value!r}")
    elif group == "labels":
        value = r.choice([0, 10, 11, -1, I32_MAX])
        set_field(raw, "NLABL", value)
        raw[224:1024] = bytes(r.getrandbits(8) for _ in range(800))
        case.note(f"NLABL->{value}, random label bytes")
    elif group == "reshape":      # NX/NY/NZ changed but consistent with the data size: a valid map
        n = get_field(raw, "NX") * get_field(raw, "NY") * get_field(raw, "NZ")
        if n <= 0:    # an earlier mutation broke the dimensions: use the data length
            n = max(1, (len(raw) - 1024) // 4)
        divisors = [d for d in range(1, min(n, 4096) + 1) if n % d == 0]
        a = r.choice(divisors)
        rest = n // a
        divs2 = [d for d in divisors if rest % d == 0] or [1]
        b = r.choice(divs2)
        dims = [a, b, rest // b]
        r.shuffle(dims)
        for k, name in enumerate(("NX", "NY", "NZ")):
            set_field(raw, name, dims[k])
        if r.random() < 0.5:
            for k, name in enumerate(("MX", "MY", "MZ")):
                set_field(raw, name, dims[k])
        case.note(f"NX/NY/NZ->{tuple(dims)} (same voxel count)")
    elif group == "exthdr":       # a real extended header: NSYMBT bytes inserted (valid)
        n = r.choice([4, 80, 1024, 3000])
        set_field(raw, "NSYMBT", get_field(raw, "NSYMBT") + n)
        raw[1024:1024] = bytes(np.random.default_rng(r.getrandbits(32)).integers(0, 256, n, dtype=np.uint8))
        case.note(f"+{n}-byte extended header (NSYMBT updated)")
    return raw


def gen_header(case, r, p_full):
    key = pick_base(r)
    raw = bytearray(base_raw(key))
    case.note(f"base {key}")
    for _ in range(r.choice([1, 1, 1, 2, 2, 3, 4])):
        raw = mutate_header(raw, r, case)
    name = "in/map.mrc"
    content = bytes(raw)
    if r.random() < 0.25:
        content, name = gzip.compress(content, mtime=0), "in/map.mrc.gz"
        case.note("gzipped")
    case.files[name] = content
    case.map_path = name
    case.contour = str(BASE_MAPS[key][1]) if r.random() < 0.6 else None
    case.mode = choose_mode(r, p_full)


def gen_data(case, r, p_full):
    import numpy as np

    key = pick_base(r)
    raw = base_raw(key)
    rng = np.random.default_rng(r.getrandbits(64))
    arr = base_array(key)
    kind = r.choices(["truncate", "append", "nonfinite", "zeros", "constant", "huge", "subnormal", "negate",
                      "noise", "spike", "dtype", "tiny", "offset", "sparse"],
                     weights=[10, 5, 8, 4, 5, 8, 4, 5, 5, 5, 8, 12, 4, 4])[0]
    case.kind = kind
    case.note(f"base {key}")
    contour = str(BASE_MAPS[key][1]) if r.random() < 0.5 else None
    content = None
    if kind == "truncate":
        k = r.choice([r.randint(0, len(raw) - 1), r.randint(1018, 1030), len(raw) - r.randint(1, 8),
                      r.randint(1024, len(raw) - 1)])
        content = raw[:k]
        case.note(f"truncated to {k} of {len(raw)} bytes")
    elif kind == "append":
        n = r.randint(1, 5000)
        extra = bytes(rng.integers(0, 256, n, dtype=np.uint8)) if r.random() < 0.7 else bytes(n)
        content = raw + extra
        case.note(f"+{n} trailing bytes")
    elif kind == "nonfinite":
        flat = arr.reshape(-1)
        count = r.choice([1, 3, 100, flat.size])
        idx = rng.choice(flat.size, count, replace=False)
        value = r.choice([np.nan, np.inf, -np.inf])
        flat[idx] = value
        case.note(f"{count} voxels -> {value}")
    elif kind == "zeros":
        arr[:] = 0
        case.note("all voxels 0")
    elif kind == "constant":
        c = r.choice([0.0, 1.0, -1.0, 1e38, -1e38, 1e-38, 1.25, r.uniform(-10, 10)])
        arr[:] = c
        case.note(f"all voxels {c:g}")
    elif kind == "huge":
        top = r.choice([1e38, 3.4e38, 1e30, 1e20])
        if r.random() < 0.5:
            arr = (arr / max(float(np.abs(arr).max()), 1e-30) * top).astype(np.float32)
            case.note(f"scaled to max |v| = {top:g}")
        else:
            flat = arr.reshape(-1)
            idx = rng.choice(flat.size, r.choice([1, 5, 50]), replace=False)
            flat[idx] = top * rng.choice([-1.0, 1.0], len(idx))
            case.note(f"{len(idx)} voxels -> +-{top:g}")
    elif kind == "subnormal":
        f = r.choice([1e-40, 1e-30, 1e-44])
        arr = (arr * np.float32(f)).astype(np.float32)
        case.note(f"scaled by {f:g}")
    elif kind == "negate":
        arr = -arr
        case.note("sign flipped")
    elif kind == "noise":
        arr = rng.normal(0, r.choice([1.0, 1e-3, 100.0]), arr.shape).astype(np.float32)
        case.note("replaced by Gaussian noise")
    elif kind == "spike":
        arr[:] = 0
        flat = arr.reshape(-1)
        flat[rng.choice(flat.size, r.choice([1, 2, 3, 20]), replace=False)] = 1.0
        case.note("zeros with a few voxels = 1")
    elif kind == "dtype":
        mode = r.choice([0, 1, 6, 12])
        top = float(np.abs(arr).max()) or 1.0
        scale = {0: 127, 1: 32767, 6: 65535, 12: 1000}[mode] / top
        conv = arr * scale
        if mode == 6:
            conv = np.abs(conv)
        content = make_mrc(conv.astype(MODE_DTYPES[mode]), mode=mode, template=raw, voxel=None)
        case.note(f"stored as MODE {mode} (scaled by {scale:.4g})")
        contour = None if r.random() < 0.7 else str(BASE_MAPS[key][1] * scale)
    elif kind == "tiny":
        shape = tuple(r.randint(1, 4) for _ in range(3))
        mode = r.choice([2, 2, 0, 1, 6, 12])
        fill = r.choice(["normal", "zeros", "constant", "spike", "ramp"])
        if fill == "normal":
            small = rng.normal(0, 1, shape)
        elif fill == "zeros":
            small = np.zeros(shape)
        elif fill == "constant":
            small = np.full(shape, 3.0)
        elif fill == "spike":
            small = np.zeros(shape)
            small.flat[rng.integers(small.size)] = 5.0
        else:
            small = np.arange(np.prod(shape), dtype=float).reshape(shape)
        if mode == 6:
            small = np.abs(small)
        voxel = r.choice([1.0, 5.0, 0.5, 100.0])
        content = make_mrc(small.astype(MODE_DTYPES[mode]), mode=mode, voxel=(voxel,) * 3,
                           origin=(r.uniform(-50, 50),) * 3)
        case.note(f"tiny {shape[::-1]} map (x,y,z), MODE {mode}, {fill}, voxel {voxel} Å")
        contour = r.choice([None, "0.5", "0", "-1"])
        case.desc[0] = "base none"
    elif kind == "offset":
        c = r.choice([1e6, -1e6, 1e3, 1e10])
        arr = (arr + np.float32(c)).astype(np.float32)
        case.note(f"+{c:g} to every voxel")
    elif kind == "sparse":
        arr = np.where(rng.random(arr.shape) < r.choice([0.001, 0.01, 0.1]), rng.random(arr.shape) * 3, 0)
        arr = arr.astype(np.float32)
        case.note("sparse random voxels")
    if content is None:
        content = make_mrc(arr.astype(np.float32), template=raw, voxel=None)
    name = "in/map.mrc"
    if r.random() < 0.2:
        content, name = gzip.compress(content, mtime=0), "in/map.mrc.gz"
        case.note("gzipped")
    case.files[name] = content
    case.map_path = name
    case.contour = contour
    case.role = "source" if r.random() < 0.75 else "target"
    case.mode = choose_mode(r, p_full)


def gen_gzip(case, r, p_full):
    import numpy as np

    key = pick_base(r)
    raw = base_raw(key)
    gz = gzip.compress(raw, mtime=0)
    rng = np.random.default_rng(r.getrandbits(64))
    kind = r.choice(["corrupt_stream", "truncated", "non_map", "trailing_garbage", "double", "multi_member",
                     "empty", "header_flags", "crc", "magic_only"])
    case.kind = kind
    case.note(f"base {key}")
    if kind == "corrupt_stream":
        b = bytearray(gz)
        n = r.choice([1, 2, 8, 64])
        for _ in range(n):
            b[r.randint(10, len(b) - 9)] = r.getrandbits(8)
        content = bytes(b)
        case.note(f"{n} random bytes of the deflate stream overwritten")
    elif kind == "truncated":
        k = r.choice([1, 2, 3, 10, 11, 20, r.randint(0, len(gz) - 1), len(gz) - r.randint(1, 8)])
        content = gz[:k]
        case.note(f"gzip cut to {k} of {len(gz)} bytes")
    elif kind == "non_map":
        payload = r.choice([b"hello world\n" * 200, model_text()[: r.randint(0, 20000)],
                            bytes(rng.integers(0, 256, r.randint(0, 5000), dtype=np.uint8)), b""])
        content = gzip.compress(payload, mtime=0)
        case.note(f"gzip of {len(payload)} bytes of non-map data")
    elif kind == "trailing_garbage":
        extra = bytes(rng.integers(0, 256, r.randint(1, 500), dtype=np.uint8)) if r.random() < 0.6 \
            else bytes(r.randint(1, 500))
        content = gz + extra
        case.note(f"+{len(extra)} bytes after the gzip member")
    elif kind == "double":
        content = gzip.compress(gz, mtime=0)
        case.note("gzipped twice")
    elif kind == "multi_member":
        k = r.randint(0, len(raw))
        content = gzip.compress(raw[:k], mtime=0) + gzip.compress(raw[k:], mtime=0)
        case.note(f"two gzip members split at {k} (valid)")
    elif kind == "empty":
        content = gzip.compress(b"", mtime=0)
        case.note("gzip of nothing")
    elif kind == "header_flags":
        b = bytearray(gz)
        b[3] = r.getrandbits(8)
        content = bytes(b)
        case.note(f"gzip FLG byte -> {b[3]:#04x}")
    elif kind == "crc":
        b = bytearray(gz)
        pos = len(b) - r.randint(1, 8)
        b[pos] ^= 1 + r.getrandbits(7)
        content = bytes(b)
        case.note(f"gzip trailer byte {pos} changed (CRC/ISIZE)")
    else:
        content = b"\x1f\x8b" + bytes(rng.integers(0, 256, r.choice([0, 1, 8, 100]), dtype=np.uint8))
        case.note("gzip magic followed by random bytes")
    name = r.choice(["in/map.mrc.gz", "in/map.mrc.gz", "in/map.mrc"])
    case.files[name] = content
    case.map_path = name
    case.contour = str(BASE_MAPS[key][1]) if r.random() < 0.5 else None
    case.role = "source" if r.random() < 0.7 else "target"
    case.mode = choose_mode(r, p_full)


def gen_random(case, r, p_full):
    import numpy as np

    rng = np.random.default_rng(r.getrandbits(64))
    n = r.choice([0, 1, 2, 211, 1023, 1024, 1025, r.randint(0, 5000), r.randint(0, 5000), r.randint(1024, 5000)])
    kind = r.choice(["bytes", "bytes", "map_tag", "header_fields", "zeros", "ones"])
    case.kind = kind
    if kind == "zeros":
        content = bytes(n)
    elif kind == "ones":
        content = b"\xff" * n
    else:
        content = bytearray(rng.integers(0, 256, n, dtype=np.uint8).tobytes())
        if kind in ("map_tag", "header_fields") and n >= 212:
            content[208:212] = b"MAP "
        if kind == "header_fields" and n >= 1024:
            # plausible small grid and a supported mode; the rest stays random
            set_field(content, "MODE", r.choice([0, 1, 2, 6, 12]))
            for name in ("NX", "NY", "NZ"):
                set_field(content, name, r.randint(1, 12))
            for name in ("MAPC", "MAPR", "MAPS"):
                set_field(content, name, r.choice([1, 2, 3]))
            set_field(content, "NSYMBT", 0)
            content[212:216] = b"DD\x00\x00"
        content = bytes(content)
    case.note(f"{len(content)} bytes ({kind})")
    name = r.choice(["in/rand.mrc", "in/rand.map", "in/rand.ccp4", "in/rand"])
    case.files[name] = content
    case.map_path = name
    case.role = "source" if r.random() < 0.7 else "target"
    case.mode = choose_mode(r, p_full)


def gen_text(case, r, p_full):
    kind = r.choice(["lorem", "pdb", "json", "csv", "empty", "whitespace", "utf16", "newline", "exact1024",
                     "text_with_tag"])
    case.kind = kind
    if kind == "lorem":
        content = ("Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * r.randint(1, 100)).encode()
    elif kind == "pdb":
        content = model_text()[: r.randint(0, 30000)]
    elif kind == "json":
        content = json.dumps({"matrix": [[1, 0, 0, 0]] * 4, "pad": "x" * r.randint(0, 3000)}).encode()
    elif kind == "csv":
        content = "\n".join(",".join(str(r.random()) for _ in range(8)) for _ in range(r.randint(1, 200))).encode()
    elif kind == "empty":
        content = b""
    elif kind == "whitespace":
        content = b" \t\n" * r.randint(1, 2000)
    elif kind == "utf16":
        content = ("density map ä ö ü " * r.randint(1, 200)).encode("utf-16")
    elif kind == "newline":
        content = b"\n"
    elif kind == "exact1024":
        content = b"x" * 1024
    else:
        t = bytearray(b"#" * r.randint(1024, 3000))
        t[208:212] = b"MAP "
        content = bytes(t)
    case.note(f"{kind} text, {len(content)} bytes")
    name = r.choice(["in/notes.mrc", "in/notes.map", "in/notes.txt", "in/notes.ccp4"])
    case.files[name] = content
    case.map_path = name
    case.role = "source" if r.random() < 0.7 else "target"
    case.mode = choose_mode(r, p_full)


def gen_path(case, r, p_full):
    kind = r.choice(["directory", "missing", "missing_parent", "trailing_slash", "dev_null", "broken_symlink",
                     "symlink_to_dir", "symlink_to_map", "empty_string", "dash", "spaces_unicode",
                     "dot", "symlink_loop"])
    case.kind = kind
    valid = base_raw("3695")
    if kind == "directory":
        case.files["in/adir.mrc"] = ("dir",)
        case.map_path = "in/adir.mrc"
    elif kind == "missing":
        case.map_path = "in/nope.mrc"
    elif kind == "missing_parent":
        case.map_path = "in/no/such/dir/map.mrc"
    elif kind == "trailing_slash":
        case.files["in/map.mrc"] = valid
        case.map_path = "in/map.mrc/"
    elif kind == "dev_null":
        case.map_path = "/dev/null"
    elif kind == "broken_symlink":
        case.files["in/link.mrc"] = ("symlink", "gone.mrc")
        case.map_path = "in/link.mrc"
    elif kind == "symlink_to_dir":
        case.files["in/d"] = ("dir",)
        case.files["in/link.mrc"] = ("symlink", "d")
        case.map_path = "in/link.mrc"
    elif kind == "symlink_to_map":
        case.files["in/real.mrc"] = valid
        case.files["in/link.mrc"] = ("symlink", "real.mrc")
        case.map_path = "in/link.mrc"
        case.contour = "1.25"
    elif kind == "empty_string":
        case.map_path = ""
    elif kind == "dash":
        case.map_path = "-"
    elif kind == "spaces_unicode":
        case.files["in/my map ä (1).mrc"] = valid
        case.map_path = "in/my map ä (1).mrc"
        case.contour = "1.25"
    elif kind == "dot":
        case.map_path = "."
    else:
        case.files["in/a.mrc"] = ("symlink", "b.mrc")
        case.files["in/b.mrc"] = ("symlink", "a.mrc")
        case.map_path = "in/a.mrc"
    case.note(f"map path {case.map_path!r} ({kind})")
    case.role = "source" if r.random() < 0.7 else "target"
    case.mode = choose_mode(r, p_full)
    if case.map_path in ("", "-", ".", "/dev/null"):
        # used verbatim (relative to the case folder, the worker's cwd)
        case.argv = default_argv(dataclasses.replace(case, map_path="@@"), r)
        case.argv = [a.replace("{case}/@@", case.map_path) for a in case.argv]


CONTOUR_VALUES = ["nan", "-nan", "inf", "-inf", "1e400", "-1e400", "0", "-0", "1e-30", "-1e-30", "-1",
                  "-1000", "1e38", "1e-320", "MAX", "MAX*0.999999", "MAX*1.0000001", "MIN", "MIN-1",
                  "UNIFORM", "KNOWN", "0.0001"]


def contour_value(r, key):
    data = base_array(key)
    top, low = float(data.max()), float(data.min())
    v = r.choice(CONTOUR_VALUES)
    value = {"MAX": repr(top), "MAX*0.999999": repr(top * 0.999999), "MAX*1.0000001": repr(top * 1.0000001),
             "MIN": repr(low), "MIN-1": repr(low - 1), "UNIFORM": repr(r.uniform(low, top)),
             "KNOWN": str(BASE_MAPS[key][1])}.get(v, v)
    return value


def gen_contour(case, r, p_full):
    key = r.choice(["3695", "3695", "1ake", "5168"])
    case.files["in/map.mrc"] = base_raw(key)
    case.map_path = "in/map.mrc"
    case.mode = "full" if r.random() < 2 * p_full else "check"
    case.role = "source" if case.mode == "check" or r.random() < 0.6 else "target"
    case.contour = contour_value(r, key)
    case.kind = next((k for k in CONTOUR_VALUES if not k.isupper() and k == case.contour), "level")
    case.note(f"base {key}, {case.role} contour {case.contour}")
    case.argv = default_argv(case, r, voxel="8")
    if case.mode == "full" and r.random() < 0.3:        # the partner's contour fuzzed too
        other = "--target-contour" if case.role == "source" else "--source-contour"
        value = contour_value(r, "3695")
        case.argv = [a if not a.startswith(other + "=") else f"{other}={value}" for a in case.argv]
        case.note(f"partner contour {value}")


def gen_model(case, r, p_full):
    import numpy as np

    rng = np.random.default_rng(r.getrandbits(64))
    text = model_text(r.choice(MODELS))
    kind = r.choice(["valid", "truncated", "truncated_gz", "random", "random_gz", "empty", "no_atoms",
                     "bad_atom_lines", "nan_coords", "huge_coords", "cif_garbage", "valid_cif", "txt_suffix",
                     "directory", "missing"])
    case.kind = kind
    name = "in/model.pdb"
    if kind == "valid":
        content = text
        name = r.choice(["in/model.pdb", "in/model.ent", "in/model.pdb.gz"])
        if name.endswith(".gz"):
            content = gzip.compress(content, mtime=0)
    elif kind == "truncated":
        k = r.randint(0, len(text))
        content = text[:k]
        case.note(f"PDB cut at byte {k} of {len(text)}")
    elif kind == "truncated_gz":
        gz = gzip.compress(text, mtime=0)
        k = r.randint(0, len(gz) - 1)
        content, name = gz[:k], "in/model.pdb.gz"
        case.note(f"gzipped PDB cut at byte {k} of {len(gz)}")
    elif kind in ("random", "random_gz"):
        content = bytes(rng.integers(0, 256, r.randint(0, 5000), dtype=np.uint8))
        name = r.choice(["in/model.pdb", "in/model.cif"])
        if kind == "random_gz":
            content, name = gzip.compress(content, mtime=0), name + ".gz"
    elif kind == "empty":
        content = b""
        name = r.choice(["in/model.pdb", "in/model.cif"])
    elif kind == "no_atoms":
        content = b"HEADER    NOTHING HERE\nREMARK   1 no coordinates\nEND\n"
    elif kind in ("bad_atom_lines", "nan_coords", "huge_coords"):
        lines = text.decode("latin-1").splitlines(True)
        atom_idx = [i for i, ln in enumerate(lines) if ln.startswith(("ATOM", "HETATM"))]
        for i in r.sample(atom_idx, min(len(atom_idx), r.choice([1, 5, 50]))):
            ln = lines[i].rstrip("\n").ljust(80)
            if kind == "bad_atom_lines":
                pos = r.randint(0, 79)
                ln = ln[:pos] + "".join(r.choice("#@!x9-. ") for _ in range(5)) + ln[pos + 5:]
            elif kind == "nan_coords":
                ln = ln[:30] + "     nan     nan     nan" + ln[54:]
            else:
                ln = ln[:30] + "99999999-9999999 9999999" + ln[54:]
            lines[i] = ln[:80] + "\n"
        content = "".join(lines).encode("latin-1")
    elif kind == "cif_garbage":
        content = b"data_x\nloop_\n_atom_site.id\n_atom_site.Cartn_x\n1 abc\n2\n" + bytes(
            rng.integers(32, 127, r.randint(0, 500), dtype=np.uint8))
        name = "in/model.cif"
    elif kind == "valid_cif":
        import gemmi

        st = gemmi.read_pdb_string(text.decode("latin-1"))
        content = st.make_mmcif_document().as_string().encode()
        name = "in/model.cif"
    elif kind == "txt_suffix":
        content, name = text, "in/model.txt"
    elif kind == "directory":
        content, name = ("dir",), "in/model.pdb"
    else:
        content, name = None, "in/missing.pdb"
    if content is not None:
        case.files[name] = content
    case.note(f"--source-model {name} ({kind})")
    key = r.choice(["3695", "1ake"])
    case.files["in/map.mrc"] = base_raw(key)
    case.map_path = "in/map.mrc"
    case.contour = str(BASE_MAPS[key][1])
    case.mode = choose_mode(r, 2 * p_full)
    case.json_out = "out/r.json" if r.random() < 0.5 else None
    case.argv = default_argv(case, r) + ["--out-dir", "{case}/out/dir", "--source-model", "{case}/" + name]


OUTPUT_KINDS = ["json_missing_folder", "json_parent_is_file", "json_is_dir", "json_readonly_folder",
                "json_is_source", "json_symlink_to_input", "out_dir_is_file", "out_dir_under_file",
                "out_dir_nested_new", "out_dir_existing_nonempty", "flipped_without_check_hand",
                "flipped_missing_folder", "out_dir_blocked_by_dir", "json_name_too_long_with_out_dir",
                "json_name_too_long", "out_dir_holds_input_name", "json_is_target", "json_and_out_dir_blocked"]
NEEDS_SUCCESS = {"json_readonly_folder", "out_dir_nested_new", "out_dir_existing_nonempty",
                 "out_dir_blocked_by_dir", "json_name_too_long_with_out_dir", "json_name_too_long",
                 "json_and_out_dir_blocked"}


def gen_output(case, r, p_full):
    kind = r.choice(OUTPUT_KINDS)
    case.kind = kind
    key = r.choice(["3695", "1ake"])
    case.files["in/map.mrc"] = base_raw(key)
    case.map_path = "in/map.mrc"
    case.contour = str(BASE_MAPS[key][1])
    case.mode = "full" if kind in NEEDS_SUCCESS else choose_mode(r, p_full)
    case.json_out = None
    argv = default_argv(case, r, voxel="8")
    extra = []
    if kind == "json_missing_folder":
        extra = ["--json", "{case}/out/nope/r.json"]
    elif kind == "json_parent_is_file":
        case.files["out/plain"] = b"keep me\n"
        extra = ["--json", "{case}/out/plain/r.json"]
    elif kind == "json_is_dir":
        case.files["out/adir"] = ("dir",)
        extra = ["--json", "{case}/out/adir"]
    elif kind == "json_readonly_folder":
        case.files["out/ro"] = ("ro-dir",)
        extra = ["--json", "{case}/out/ro/r.json"]
    elif kind == "json_is_source":
        extra = ["--json", "{case}/in/map.mrc"]
    elif kind == "json_is_target":
        argv[2] = "{case}/in/partner.mrc.gz"
        case.files["in/partner.mrc.gz"] = (DATA / PARTNER[0]).read_bytes()
        extra = ["--json", "{case}/in/partner.mrc.gz"]
    elif kind == "json_symlink_to_input":
        case.files["out/link.json"] = ("symlink", "../in/map.mrc")
        extra = ["--json", "{case}/out/link.json"]
    elif kind == "out_dir_is_file":
        case.files["out/plain"] = b"keep me\n"
        extra = ["--out-dir", "{case}/out/plain"]
    elif kind == "out_dir_under_file":
        case.files["out/plain"] = b"keep me\n"
        extra = ["--out-dir", "{case}/out/plain/sub/dir"]
    elif kind == "out_dir_nested_new":
        extra = ["--out-dir", "{case}/out/a/b/c"]
    elif kind == "out_dir_existing_nonempty":
        case.files["out/dir/old.txt"] = b"old\n"
        extra = ["--out-dir", "{case}/out/dir"]
    elif kind == "flipped_without_check_hand":
        extra = ["--flipped-out", "{case}/out/flip.mrc", "--json", "{case}/out/r.json"]
    elif kind == "flipped_missing_folder":
        extra = ["--check-hand", "--flipped-out", "{case}/out/nope/flip.mrc"]
    elif kind == "out_dir_blocked_by_dir":
        blocker = r.choice(["params.json", "source_on_target.mrc", "superposition.cxc", "result.json"])
        case.files[f"out/dir/{blocker}"] = ("dir",)
        extra = ["--out-dir", "{case}/out/dir"]
        case.note(f"a folder named {blocker} inside --out-dir")
    elif kind == "json_and_out_dir_blocked":
        blocker = r.choice(["params.json", "source_on_target.mrc", "superposition.cxc"])
        case.files[f"out/dir/{blocker}"] = ("dir",)
        extra = ["--json", "{case}/out/r.json", "--out-dir", "{case}/out/dir"]
        case.note(f"--json plus a folder named {blocker} inside --out-dir")
    elif kind == "json_name_too_long_with_out_dir":
        extra = ["--out-dir", "{case}/out/new", "--json", "{case}/out/" + "j" * 300 + ".json"]
    elif kind == "json_name_too_long":
        extra = ["--json", "{case}/out/" + "j" * 300 + ".json"]
    elif kind == "out_dir_holds_input_name":
        case.files["out/dir/source_on_target.mrc"] = base_raw(key)
        case.map_path = "out/dir/source_on_target.mrc"
        case.inputs.append("out/dir/source_on_target.mrc")
        argv[1] = "{case}/out/dir/source_on_target.mrc"
        extra = ["--out-dir", "{case}/out/dir"]
    case.note(f"{kind}: {' '.join(extra)}")
    case.argv = argv + extra


def gen_options(case, r, p_full):
    key = r.choice(["3695", "1ake"])
    case.files["in/map.mrc"] = base_raw(key)
    case.map_path = "in/map.mrc"
    case.contour = str(BASE_MAPS[key][1])
    case.mode = "full"
    case.argv = [a for a in default_argv(case, r, voxel="8")]
    choices = {
        "--seed": ["-1", str(-2**63), "0", str(2**64), str(r.randint(0, 10**9))],
        "--top": ["0", "-1", "1", "1000"],
        "--jobs": ["0", "-1", "1"],
        "--hypotheses": ["0", "-1", "1", "50"],
        "--voxel": ["0", "-1", "nan", "inf", "0.49", "30.01", "4", "8", "30", "1e-300"],
        "--keypoints": ["meanshift", "dense"],
        "mode": ["--local", "--global"],
        "flags": ["--check-hand", "--no-map-refine"],
    }
    picked = r.sample(sorted(choices), r.choice([1, 1, 2, 3]))
    case.kind = "+".join(picked)
    for opt in picked:
        value = r.choice(choices[opt])
        if opt in ("mode", "flags"):
            case.argv.append(value)
        else:
            if opt in case.argv:                  # replace --voxel / --jobs given by default_argv
                i = case.argv.index(opt)
                del case.argv[i:i + 2]
            case.argv.append(f"{opt}={value}")
        case.note(f"{opt} {value}")


GENERATORS = {"header": gen_header, "data": gen_data, "gzip": gen_gzip, "random": gen_random,
              "text": gen_text, "path": gen_path, "contour": gen_contour, "model": gen_model,
              "output": gen_output, "options": gen_options}


def make_case(seed, index, p_full, families=None) -> Case:
    r = random.Random(f"cryoalign-fuzz:{seed}:{index}")
    fams = families or list(FAMILY_WEIGHTS)
    family = r.choices(fams, weights=[FAMILY_WEIGHTS[f] for f in fams])[0]
    case = Case(index=index, family=family)
    GENERATORS[family](case, r, p_full)
    if case.argv is None:
        case.argv = default_argv(case, r)
    if case.map_path and case.map_path in case.files and not isinstance(case.files[case.map_path], tuple):
        case.inputs.append(case.map_path)
    for name, content in case.files.items():
        if name.startswith("in/") and not isinstance(content, tuple) and name not in case.inputs:
            case.inputs.append(name)
    return case


# ----------------------------------------------------------------------------- running a case
HARD_GRACE_S = 25.0   # the parent kills a worker this long after the soft timeout


class CaseTimeout(BaseException):
    """Raised by the soft alarm; a BaseException so that cli.main's `except Exception` lets it out."""


def _alarm(signum, frame):
    raise CaseTimeout()


def materialize(case, folder: pathlib.Path):
    if folder.exists():
        _rmtree(folder)
    (folder / "in").mkdir(parents=True)
    (folder / "out").mkdir()
    for name, content in case.files.items():
        p = folder / name
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, tuple):
            if content[0] == "dir":
                p.mkdir(parents=True, exist_ok=True)
            elif content[0] == "ro-dir":
                p.mkdir(parents=True, exist_ok=True)
                p.chmod(0o555)
            elif content[0] == "symlink":
                os.symlink(content[1], p)
        else:
            p.write_bytes(content)


def _rmtree(folder):
    for p in pathlib.Path(folder).rglob("*"):
        with contextlib.suppress(OSError):
            if p.is_dir() and not p.is_symlink():
                p.chmod(0o755)
    shutil.rmtree(folder, ignore_errors=True)


def snapshot(folder: pathlib.Path) -> dict:
    """relpath -> ('dir',) | ('link', target) | ('file', sha256) for everything under folder."""
    out = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            p = os.path.join(root, name)
            rel = os.path.relpath(p, folder)
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir",)
            else:
                with open(p, "rb") as fh:
                    out[rel] = ("file", hashlib.sha256(fh.read()).hexdigest())
    return out


_DATA_HASHES = {}


def data_hashes():
    """sha256 of the tests/data files that cases read directly (they must never change)."""
    names = sorted({v[0] for v in BASE_MAPS.values()} | {PARTNER[0]} | set(MODELS))
    return {n: hashlib.sha256((DATA / n).read_bytes()).hexdigest() for n in names}


def check_density(m):
    """Problems with a DensityMap returned by read_map (empty list when valid)."""
    import numpy as np

    import cryoalign

    bad = []
    if not isinstance(m, cryoalign.DensityMap):
        return [f"read_map returned {type(m).__name__}"]
    d = m.data
    if not isinstance(d, np.ndarray) or d.ndim != 3 or d.size == 0:
        bad.append(f"data shape {getattr(d, 'shape', None)}")
    elif not np.all(np.isfinite(d)):
        bad.append("non-finite data")
    vs, org = np.asarray(m.voxel_size_A, float), np.asarray(m.origin_A, float)
    if vs.shape != (3,) or not np.all(np.isfinite(vs)) or np.any(vs <= 0):
        bad.append(f"voxel size {vs.tolist()}")
    if org.shape != (3,) or not np.all(np.isfinite(org)):
        bad.append(f"origin {org.tolist()}")
    return bad


def check_matrix(doc):
    import numpy as np

    try:
        M = np.array(doc["matrix"], float)
    except Exception as exc:  # noqa: BLE001
        return f"no usable 'matrix' ({type(exc).__name__})"
    if M.shape != (4, 4):
        return f"matrix shape {M.shape}"
    if not np.all(np.isfinite(M)):
        return "non-finite matrix"
    R = M[:3, :3]
    if not np.allclose(M[3], [0, 0, 0, 1]) or not np.allclose(R @ R.T, np.eye(3), atol=1e-6) \
            or abs(np.linalg.det(R) - 1) > 1e-6:
        return "matrix is not a rigid transform"
    return None


TB_FRAME = re.compile(r'File "([^"]+)", line (\d+),? in (\S+)')   # traceback and faulthandler


def normalize(text: str) -> str:
    """A message with file paths replaced by PATH, for grouping."""
    return re.sub(r"(?<![\w.])/(?:[^\s:;,'/]+/)+[^\s:;,']*", "PATH", text)


def cryoalign_frames(tb_text: str, newest_first=False) -> list:
    """'module.py:function' of the cryoalign frames of a traceback, outermost first."""
    frames = [f"{os.path.basename(f)}:{func}" for f, _, func in TB_FRAME.findall(tb_text) if "/cryoalign/" in f]
    return frames[::-1] if newest_first else frames


def stage_of(frames: list) -> str:
    """The pipeline stage a stuck run was in: the frame called by pipeline.align (or the innermost)."""
    for outer in ("pipeline.py:align", "cli.py:_cmd_align"):
        if outer in frames:
            k = len(frames) - 1 - frames[::-1].index(outer)
            if k + 1 < len(frames):
                return frames[k + 1]
    return frames[-1] if frames else "?"


def crash_signature(tb_text: str) -> str:
    """'ExcType @ module.py:function' from the innermost cryoalign frame of a traceback."""
    skip = (" ", "\t", "Traceback", "cryoalign:", "During handling", "The above exception", "[")
    exc_lines = [ln for ln in tb_text.strip().splitlines() if ln.strip() and not ln.startswith(skip)]
    exc_type = exc_lines[-1].split(":")[0].strip().split(".")[-1] if exc_lines else "?"
    where = "?"
    for f, line, func in TB_FRAME.findall(tb_text):
        if "/cryoalign/" in f:
            where = f"{os.path.basename(f)}:{func}"
    return f"{exc_type} @ {where}"


def run_case(case: Case, folder: pathlib.Path, timeout: float) -> dict:
    """Materialize and run one case; the classification dict."""
    import cryoalign
    from cryoalign.cli import main

    materialize(case, folder)
    argv = [a.replace("{case}", str(folder)) for a in case.argv]
    before = snapshot(folder)
    res = dict(index=case.index, family=case.family, kind=case.kind, mode=case.mode, desc="; ".join(case.desc),
               argv=argv, api="", exit=None, outcome=None, problems=[], signature="", stderr="", seconds=0.0,
               warnings=0)
    t0 = time.perf_counter()
    old_cwd = os.getcwd()
    os.chdir(folder)
    signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    problems, crash_tb = [], ""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            # 1. the library
            if case.map_path is not None:
                path = case.map_path if os.path.isabs(case.map_path) or case.map_path in ("", "-", ".") \
                    else str(folder / case.map_path)
                try:
                    m = cryoalign.read_map(path)
                    bad = check_density(m)
                    res["api"] = "map" if not bad else "invalid map: " + ", ".join(bad)
                    if bad:
                        problems.append(("crash", "read_map returned an invalid map: " + ", ".join(bad)))
                    del m
                except cryoalign.InputError as exc:
                    res["api"] = "InputError"
                    msg = str(exc)
                    if not msg.strip():
                        problems.append(("bad message", "read_map: empty InputError message"))
                    elif "\n" in msg:
                        problems.append(("bad message", "read_map: multi-line InputError message"))
                    elif msg.rstrip().endswith(":") and not msg.endswith(": " + path):
                        problems.append(("bad message", "read_map: InputError message without a reason: '"
                                         + normalize(msg)[-60:] + "'"))
                except Exception:  # noqa: BLE001
                    crash_tb = traceback.format_exc()
                    res["api"] = "crash"
                    problems.append(("crash", "read_map raised " + crash_tb.strip().splitlines()[-1][:200]))
            # 2. the command line
            out, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                try:
                    code = main(argv)
                except SystemExit as exc:
                    code = exc.code if isinstance(exc.code, int) else 2
                except CaseTimeout:
                    raise
                except BaseException:  # noqa: BLE001  (main must not let anything out)
                    traceback.print_exc()
                    code = "escaped"
        res["warnings"] = len(caught)
        res["warning_text"] = " | ".join(sorted({f"{w.category.__name__}: {w.message} "
                                                 f"({os.path.basename(w.filename)}:{w.lineno})" for w in caught}))
    except CaseTimeout:
        signal.setitimer(signal.ITIMER_REAL, 0)
        os.chdir(old_cwd)
        frames = cryoalign_frames(traceback.format_exc())
        res.update(outcome="hang", seconds=time.perf_counter() - t0,
                   signature=f"timeout > {timeout:g} s in {stage_of(frames)}",
                   problems=[f"exceeded {timeout:g} s; interrupted in {' > '.join(frames[-4:]) or '?'}"])
        return res
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        os.chdir(old_cwd)
    res["seconds"] = time.perf_counter() - t0
    stdout, stderr = out.getvalue(), err.getvalue()
    res["exit"] = code
    res["stderr"] = stderr[-4000:]

    # exit code and messages
    if code not in (0, 2) or "Traceback" in stderr:
        tb = stderr if "Traceback" in stderr else crash_tb
        problems.append(("crash", f"exit {code}" + (" with a traceback" if "Traceback" in stderr else "")))
        crash_tb = tb or crash_tb
    elif code == 2:
        lines = stderr.strip().splitlines()
        errors = [ln for ln in lines if ln.startswith("cryoalign: error: ")]
        if len(errors) != 1:
            problems.append(("bad message", f"{len(errors)} 'cryoalign: error:' lines"))
        elif lines[-1] != errors[0]:
            problems.append(("bad message", f"multi-line error message ({len(lines) - 1 - lines.index(errors[0])} "
                                            f"more line(s) after it): '{normalize(errors[0])[-60:]}'"))
        elif len(errors[0]) <= len("cryoalign: error: ") + 3:
            problems.append(("bad message", "empty error message"))
        elif errors[0].rstrip().endswith(":") and case.map_path != "":
            problems.append(("bad message", "error message without a reason: '" + normalize(errors[0])[-60:] + "'"))
        if stdout.strip():
            problems.append(("bad message", "stdout not empty on error"))
    if code == 0:
        json_path = next((argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--json"), None)
        if json_path is None:
            od = next((argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--out-dir"), None)
            json_path = os.path.join(od, "result.json") if od else None
        if json_path is None:
            problems.append(("bad result", "exit 0 but no JSON requested (fuzzer bug)"))
        else:
            try:
                with open(json_path) as fh:
                    doc = json.load(fh)
                why = check_matrix(doc)
                if why:
                    problems.append(("bad result", why))
            except Exception as exc:  # noqa: BLE001
                problems.append(("bad result", f"JSON unreadable: {type(exc).__name__}: {exc}"))

    # files
    after = snapshot(folder)
    inputs = set(case.inputs)
    for rel in inputs:
        if before.get(rel) != after.get(rel):
            problems.append(("input modified", f"{rel} changed or vanished"))
    if _DATA_HASHES and data_hashes() != _DATA_HASHES:
        problems.append(("input modified", "a file in tests/data changed"))
    for rel, entry in before.items():
        if rel not in inputs and after.get(rel) != entry:
            problems.append(("partial output" if code != 0 else "input modified",
                             f"pre-existing {rel} changed or vanished"))
    new = sorted(set(after) - set(before))
    temps = [p for p in new if os.path.basename(p).startswith(".tmp-")]
    if code != 0 and new:
        problems.append(("partial output", "left after a failed run: " + ", ".join(new[:5])))
    elif temps:
        problems.append(("partial output", "temp files left: " + ", ".join(temps[:5])))

    kinds = [k for k, _ in problems]
    outcome = next((k for k in ("crash", "input modified", "partial output", "bad message", "bad result")
                    if k in kinds), None)
    if outcome is None:
        outcome = "ok" if code == 0 else "clean error"
    res["outcome"] = outcome
    res["problems"] = [f"{k}: {why}" for k, why in problems]
    if outcome == "crash":
        res["signature"] = crash_signature(crash_tb) if crash_tb else problems[0][1]
    elif outcome in FAILURES:
        why = next(why for k, why in problems if k == outcome)
        if outcome == "bad message":
            why = re.sub(r"\(\d+ more line", "(N more line", why)
            why = re.sub(r"'[^']*'$", "", why) if why.startswith("multi-line") else why
        res["signature"] = f"{case.family}/{case.kind}: " + re.sub(r"\d+", "#", why)[:110] \
            if outcome == "partial output" else why[:120]
    return res


# ----------------------------------------------------------------------------- workers
def _worker(conn, wid, opts):
    os.setpgrp()          # so that the parent can kill this worker and anything it started
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    if opts["mem_gb"] > 0:
        import resource

        lim = int(opts["mem_gb"] * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (lim, lim))
    import numpy  # noqa: F401

    import cryoalign  # noqa: F401
    from cryoalign.cli import main

    global _DATA_HASHES
    _DATA_HASHES = data_hashes()
    folder = pathlib.Path(opts["out"]) / "work" / f"w{wid}"
    folder.mkdir(parents=True, exist_ok=True)
    stack_file = open(folder / "stack.txt", "w+")      # where a stuck or dying worker is
    faulthandler.enable(file=stack_file)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        main(["align", str(DATA / PARTNER[0]), str(DATA / PARTNER[0]), "--source-contour=1.25",
              "--target-contour=1.25", "--voxel", "8", "--jobs", "1", "--quiet"])   # compile numba kernels
    conn.send(("ready", wid))
    while True:
        msg = conn.recv()
        if msg is None:
            break
        index = msg
        try:
            case = make_case(opts["seed"], index, opts["p_full"], opts["families"])
        except Exception:  # noqa: BLE001  (a fuzzer bug: report it, do not stop)
            conn.send(("result", dict(index=index, family="?", kind="generator", mode="", desc="",
                                      argv=[], outcome="crash", signature="fuzzer generator error",
                                      problems=[traceback.format_exc()[-500:]], exit=None, api="", stderr="",
                                      seconds=0.0, warnings=0)))
            continue
        conn.send(("started", dict(index=index, family=case.family, kind=case.kind, mode=case.mode,
                                   desc="; ".join(case.desc), argv=case.argv)))
        stack_file.seek(0)
        stack_file.truncate()
        faulthandler.dump_traceback_later(opts["timeout"] + HARD_GRACE_S - 5, file=stack_file)
        res = run_case(case, folder / "case", opts["timeout"])
        faulthandler.cancel_dump_traceback_later()
        if res["outcome"] in FAILURES:
            keep = pathlib.Path(opts["out"]) / "failures" / f"case-{index}"
            if opts["keep"] > 0 and not keep.exists():
                with contextlib.suppress(OSError):
                    shutil.copytree(folder / "case", keep, symlinks=True)
        conn.send(("result", res))


def run_pool(opts, indices, progress_every=500):
    import multiprocessing as mp
    from multiprocessing.connection import wait

    ctx = mp.get_context("spawn")
    hard = opts["timeout"] + HARD_GRACE_S
    results = {}
    kept = collections.Counter()
    pending = collections.deque(indices)
    workers = {}
    next_wid = [0]

    def spawn():
        parent, child = ctx.Pipe()
        wid = next_wid[0]
        next_wid[0] += 1
        p = ctx.Process(target=_worker, args=(child, wid, opts), daemon=True)
        p.start()
        child.close()
        workers[wid] = dict(proc=p, conn=parent, case=None, started=None, info=None, ready=False,
                            stack=pathlib.Path(opts["out"]) / "work" / f"w{wid}" / "stack.txt")

    def where(wid):
        """Innermost cryoalign frame of the faulthandler dump of a stuck or dead worker."""
        with contextlib.suppress(OSError):
            return stage_of(cryoalign_frames(workers[wid]["stack"].read_text(), newest_first=True))
        return "?"

    def kill(wid):
        w = workers.pop(wid)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(w["proc"].pid, signal.SIGKILL)
        w["proc"].join(5)
        w["conn"].close()

    for _ in range(opts["jobs"]):
        spawn()
    t0 = time.time()
    done_last = 0
    while pending or any(w["case"] is not None for w in workers.values()):
        for wid, w in list(workers.items()):
            if w["ready"] and w["case"] is None and pending:
                w["case"] = pending.popleft()
                w["started"], w["info"] = time.time(), None
                w["conn"].send(w["case"])
        conns = {w["conn"]: wid for wid, w in workers.items()}
        for conn in wait(list(conns), timeout=1.0):
            wid = conns[conn]
            w = workers[wid]
            try:
                kind, payload = conn.recv()
            except (EOFError, OSError):
                w["proc"].join(1)
                code = w["proc"].exitcode
                if w["case"] is not None:
                    info = w["info"] or dict(index=w["case"], family="?", kind="?", mode="", desc="", argv=[])
                    results[w["case"]] = dict(info, outcome="crash", exit=None, api="",
                                              signature=f"worker process died (exit code {code}) @ {where(wid)}",
                                              problems=[f"worker died, exit code {code}"], stderr="",
                                              seconds=time.time() - w["started"], warnings=0)
                elif not w["ready"]:
                    kill(wid)
                    raise SystemExit(f"fuzz worker failed to start (exit code {code})")
                kill(wid)
                spawn()
                continue
            if kind == "ready":
                w["ready"] = True
            elif kind == "started":
                w["info"] = payload
            else:
                results[payload["index"]] = payload
                if payload["outcome"] in FAILURES:
                    sig = payload["signature"]
                    kept[sig] += 1
                    if kept[sig] > opts["keep"]:
                        with contextlib.suppress(OSError):
                            _rmtree(pathlib.Path(opts["out"]) / "failures" / f"case-{payload['index']}")
                w["case"] = None
        now = time.time()
        for wid, w in list(workers.items()):
            if w["case"] is not None and now - w["started"] > hard:
                info = w["info"] or dict(index=w["case"], family="?", kind="?", mode="", desc="", argv=[])
                results[w["case"]] = dict(info, outcome="hang", exit=None, api="",
                                          signature=f"timeout > {opts['timeout']:g} s in {where(wid)} (killed)",
                                          problems=[f"killed after {now - w['started']:.0f} s"], stderr="",
                                          seconds=now - w["started"], warnings=0)
                kill(wid)
                spawn()
        if len(results) - done_last >= progress_every:
            done_last = len(results)
            c = collections.Counter(r["outcome"] for r in results.values())
            print(f"[{time.time() - t0:7.0f} s] {len(results)}/{len(indices)}  "
                  + "  ".join(f"{k}: {c[k]}" for k in OUTCOMES if c[k]), flush=True)
    for wid in list(workers):
        with contextlib.suppress(OSError, BrokenPipeError):
            workers[wid]["conn"].send(None)
        workers[wid]["proc"].join(10)
        kill(wid)
    return [results[i] for i in indices]


# ----------------------------------------------------------------------------- reports
def summary_tables(results, wall, opts) -> str:
    fams = [f for f in FAMILY_WEIGHTS if any(r["family"] == f for r in results)] + \
        sorted({r["family"] for r in results} - set(FAMILY_WEIGHTS))
    head = ["family", "cases", "full aligns", "ok", "clean error", "crash", "hang", "partial output",
            "input modified", "bad message", "bad result"]
    rows = []
    for fam in fams + ["total"]:
        rs = [r for r in results if fam == "total" or r["family"] == fam]
        c = collections.Counter(r["outcome"] for r in rs)
        rows.append([fam, len(rs), sum(r["mode"] == "full" for r in rs)] + [c[k] for k in OUTCOMES])
    lines = [f"cryoalign fuzz: {len(results)} cases, seed {opts['seed']}, {opts['jobs']} jobs, "
             f"timeout {opts['timeout']:g} s, memory limit {opts['mem_gb']:g} GB per worker, "
             f"wall time {wall:.0f} s ({wall / 60:.1f} min)",
             f"date {datetime.datetime.now().isoformat(timespec='seconds')}, {platform.node()}, "
             f"{os.cpu_count()} CPUs, Python {platform.python_version()}", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    fails = [r for r in results if r["outcome"] in FAILURES]
    if fails:
        lines += ["", "Distinct failures (grouped by outcome and signature):", "",
                  "| outcome | signature | cases | families / kinds | first case |", "|---|---|---|---|---|"]
        groups = collections.defaultdict(list)
        for r in fails:
            groups[(r["outcome"], r["signature"])].append(r)
        for (outcome, sig), rs in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])):
            kinds = collections.Counter(f"{r['family']}/{r['kind']}" for r in rs)
            kinds_s = ", ".join(f"{k} ({n})" for k, n in kinds.most_common(4)) + (" ..." if len(kinds) > 4 else "")
            first = rs[0]
            lines.append(f"| {outcome} | {sig.replace('|', '/')} | {len(rs)} | {kinds_s} | "
                         f"{first['index']}: {first['desc'].replace('|', '/')[:150]} |")
    slow = sorted(results, key=lambda r: -r["seconds"])[:5]
    lines += ["", "slowest cases: " + ", ".join(f"{r['index']} ({r['family']}/{r['kind']}, {r['mode']}, "
                                                 f"{r['seconds']:.1f} s)" for r in slow)]
    warned = sum(1 for r in results if r.get("warnings"))
    lines.append(f"cases in which Python warnings were emitted (not failures): {warned}")
    return "\n".join(lines) + "\n"


def tsv_cell(v, column="") -> str:
    if isinstance(v, (list, tuple)):
        v = shlex.join(str(a) for a in v) if column == "argv" else " | ".join(map(str, v))
    return str(v).replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")


def write_reports(results, wall, opts):
    out = pathlib.Path(opts["out"])
    text = summary_tables(results, wall, opts)
    (out / "summary.md").write_text(text)
    cols = ["index", "family", "kind", "mode", "outcome", "exit", "api", "seconds", "signature", "desc",
            "warning_text", "argv", "problems", "stderr"]
    with open(out / "failures.tsv", "w") as fh:
        fh.write("seed\t" + "\t".join(cols) + "\treplay\n")
        for r in results:
            if r["outcome"] in FAILURES:
                replay = f"python benchmarks/fuzz.py --seed {opts['seed']} --case {r['index']}"
                fh.write(f"{opts['seed']}\t" + "\t".join(tsv_cell(r.get(c, ""), c) for c in cols) + f"\t{replay}\n")
    with open(out / "cases.tsv", "w") as fh:
        fh.write("\t".join(cols[:11]) + "\n")
        for r in results:
            fh.write("\t".join(tsv_cell(r.get(c, ""), c) if c != "seconds" else f"{r['seconds']:.3f}"
                               for c in cols[:11]) + "\n")
    return text


def replay(opts, indices):
    """Run single cases in this process, print everything, keep the files."""
    global _DATA_HASHES
    _DATA_HASHES = data_hashes()
    for index in indices:
        case = make_case(opts["seed"], index, opts["p_full"], opts["families"])
        folder = pathlib.Path(opts["out"]) / "replay" / f"case-{index}"
        res = run_case(case, folder, opts["timeout"])
        print(f"case {index} (seed {opts['seed']}): family {case.family}, kind {case.kind}, mode {case.mode}")
        print(f"  mutation: {'; '.join(case.desc)}")
        print(f"  files in: {folder}")
        print(f"  command:  cryoalign {shlex.join(res['argv'])}")
        print(f"  read_map: {res['api'] or '-'}")
        sig = f" [{res['signature']}]" if res["signature"] else ""
        print(f"  exit {res['exit']} after {res['seconds']:.2f} s -> {res['outcome']}{sig}")
        for p in res["problems"]:
            print(f"  problem: {p}")
        if res["stderr"]:
            print("  stderr:\n    " + res["stderr"].rstrip().replace("\n", "\n    "))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", type=int, default=10000, help="number of cases (default 10000)")
    p.add_argument("--seed", type=int, default=1, help="seed of the case generator (default 1)")
    p.add_argument("--start", type=int, default=0, help="index of the first case (default 0)")
    p.add_argument("--timeout", type=float, default=60.0,
                   help="seconds per case before it counts as a hang (default 60; a full alignment of "
                        "these small maps takes 0.3-20 s)")
    p.add_argument("--out", default=os.path.join("/tmp", "cryoalign-fuzz"), help="scratch and report folder")
    p.add_argument("--jobs", type=int, default=2, help="worker processes (default 2)")
    p.add_argument("--full", type=float, default=0.06,
                   help="fraction of cases that run a whole alignment (default 0.08)")
    p.add_argument("--families", default=None, help=f"comma-separated subset of {','.join(FAMILY_WEIGHTS)}")
    p.add_argument("--mem-gb", type=float, default=4.0,
                   help="address-space limit per worker in GB, so that runaway allocations fail with "
                        "MemoryError instead of exhausting the machine (0: none; default 4)")
    p.add_argument("--keep", type=int, default=3, help="failing cases kept per signature in OUT/failures")
    p.add_argument("--case", type=int, nargs="+", default=None,
                   help="replay these case indices in-process (prints the details, keeps the files)")
    args = p.parse_args(argv)
    families = args.families.split(",") if args.families else None
    if families and set(families) - set(FAMILY_WEIGHTS):
        p.error(f"unknown families {sorted(set(families) - set(FAMILY_WEIGHTS))}")
    opts = dict(seed=args.seed, timeout=args.timeout, out=os.path.abspath(args.out), jobs=max(1, args.jobs),
                p_full=args.full, families=families, mem_gb=args.mem_gb, keep=args.keep)
    os.makedirs(opts["out"], exist_ok=True)
    if args.case is not None:
        replay(opts, args.case)
        return 0
    if (pathlib.Path(opts["out"]) / "failures").exists():
        _rmtree(pathlib.Path(opts["out"]) / "failures")
    t0 = time.time()
    results = run_pool(opts, list(range(args.start, args.start + args.cases)))
    wall = time.time() - t0
    text = write_reports(results, wall, opts)
    print()
    print(text)
    print(f"wrote {opts['out']}/summary.md, failures.tsv, cases.tsv")
    return 1 if any(r["outcome"] in FAILURES for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
