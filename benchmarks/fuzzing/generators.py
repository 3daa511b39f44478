"""How each kind of mutated input is made.

Every case is generated deterministically from (seed, case index) by `make_case`: a mutation
family is drawn by weight (`FAMILY_WEIGHTS`) and its generator ``gen_<family>(case, r, p_full)``
fills a `Case` (the files of its folder, the map under test, the `cryoalign align` argv, what
is expected of the map) from the seeded ``random.Random`` `r`.  Nothing here runs cryoalign.

Families: header, data, gzip, random, text, path, contour, model, output, options (the
original mix), and the odd-map families (thin/2D maps, volume stacks, cell angles, single
outlier voxels, overflow-scale values, bzip2/xz/gzip-compressed maps) and `concurrent`
(two `cryoalign align ... --out-dir SAME` processes at once).
"""

from __future__ import annotations

import bz2
import dataclasses
import gzip
import json
import lzma
import math
import os
import pathlib
import random
import struct

REPO = pathlib.Path(__file__).resolve().parents[2]
DATA = REPO / "tests" / "data"

# Map under test: base maps (file, known contour level or None = estimated, weight).
BASE_MAPS = {
    "3695": ("emd_3695_5A.mrc.gz", 1.25, 5),  # 48^3 at 5 Å
    "1ake": ("1akeA_10A_simulated_odd_machine_stamp.mrc", 0.05, 3),  # 22^3 at 3 Å, odd stamp
    "5168": ("emd_5168_monomer.mrc.gz", 5.0, 2),  # 28x43x41 at 1.742 Å
    "3696": ("emd_3696_5A.mrc.gz", 0.69, 1),  # 64^3 at 5 Å
}
PARTNER = ("emd_3695_5A.mrc.gz", 1.25)  # the other (valid) map of a run
MODELS = ("3mfp.pdb.gz", "3j6b_9.pdb.gz")
SENTINEL = "1e30"  # contour above any partner maximum

# Relative weights of the families (the original ten sum to 100; the odd-map families and
# `concurrent` were added on top, so a case index does not give the same case as before them).
FAMILY_WEIGHTS = {
    "header": 30,
    "data": 18,
    "gzip": 10,
    "random": 8,
    "text": 5,
    "path": 4,
    "contour": 9,
    "model": 7,
    "output": 7,
    "options": 2,
    "odd_thin": 3,
    "odd_stack": 1,
    "odd_cellb": 3,
    "odd_outlier": 3,
    "odd_overflow": 2,
    "odd_compressed": 3,
    "concurrent": 0.6,
    # opt-in (weight 0: the cases of every seed are unchanged; `--families signal,readonly`)
    "signal": 0,
    "readonly": 0,
}

# ----------------------------------------------------------------------------- MRC header layout
INT, FLOAT, BYTES = "i", "f", "4s"
FIELDS = {  # name: (byte offset, struct code); little-endian like the base maps
    "NX": (0, INT),
    "NY": (4, INT),
    "NZ": (8, INT),
    "MODE": (12, INT),
    "NXSTART": (16, INT),
    "NYSTART": (20, INT),
    "NZSTART": (24, INT),
    "MX": (28, INT),
    "MY": (32, INT),
    "MZ": (36, INT),
    "CELLA.x": (40, FLOAT),
    "CELLA.y": (44, FLOAT),
    "CELLA.z": (48, FLOAT),
    "CELLB.alpha": (52, FLOAT),
    "CELLB.beta": (56, FLOAT),
    "CELLB.gamma": (60, FLOAT),
    "MAPC": (64, INT),
    "MAPR": (68, INT),
    "MAPS": (72, INT),
    "DMIN": (76, FLOAT),
    "DMAX": (80, FLOAT),
    "DMEAN": (84, FLOAT),
    "ISPG": (88, INT),
    "NSYMBT": (92, INT),
    "EXTTYP": (104, BYTES),
    "NVERSION": (108, INT),
    "ORIGIN.x": (196, FLOAT),
    "ORIGIN.y": (200, FLOAT),
    "ORIGIN.z": (204, FLOAT),
    "MAP": (208, BYTES),
    "MACHST": (212, BYTES),
    "RMS": (216, FLOAT),
    "NLABL": (220, INT),
}
MODE_DTYPES = {0: "<i1", 1: "<i2", 2: "<f4", 6: "<u2", 12: "<f2"}
I32_MAX, I32_MIN = 2**31 - 1, -(2**31)


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
        mode = {np.dtype("<i1"): 0, np.dtype("<i2"): 1, np.dtype("<f4"): 2, np.dtype("<u2"): 6, np.dtype("<f2"): 12}[
            np.dtype(arr_zyx.dtype).newbyteorder("<")
        ]
    arr = np.ascontiguousarray(arr_zyx, dtype=MODE_DTYPES[mode])
    nz, ny, nx = arr.shape
    h = bytearray(template[:1024]) if template is not None else bytearray(1024)
    if template is None:
        h[208:212], h[212:216] = b"MAP ", b"DD\x00\x00"
        for name, v in (
            ("CELLB.alpha", 90.0),
            ("CELLB.beta", 90.0),
            ("CELLB.gamma", 90.0),
            ("MAPC", 1),
            ("MAPR", 2),
            ("MAPS", 3),
            ("NVERSION", 20140),
        ):
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
    desc: list = dataclasses.field(default_factory=list)  # human-readable mutation steps
    # relpath -> bytes | ("dir",) | ("ro-dir",) | ("symlink", target)
    files: dict = dataclasses.field(default_factory=dict)
    map_path: str | None = None  # relpath (or absolute) of the map under test, for read_map
    role: str = "source"  # which side of `align` the map under test is
    mode: str = "check"  # "check" (validation path) or "full" (a whole alignment)
    argv: list | None = None  # "{case}" is replaced by the case folder
    contour: str | None = None  # contour of the map under test (None: estimated)
    json_out: str | None = "out/r.json"
    inputs: list = dataclasses.field(default_factory=list)  # relpaths that must not change
    expect_ok: bool = False  # informational: the input is meant to be valid
    # what read_map (and the CLI) must do with the map under test: "refuse" (InputError, exit 2
    # naming the map), "accept" (read_map returns a map), or None (either is fine)
    expect: str | None = None
    # output folders (relpaths) that hold an earlier cryoalign run: a successful run replaces them
    # whole, so their old entries may change or vanish (a failed run must leave them unchanged)
    replaced_dirs: list = dataclasses.field(default_factory=list)
    # family "concurrent": the argv of each of the processes started at once, and their settings
    runs: list = dataclasses.field(default_factory=list)
    extra: dict = dataclasses.field(default_factory=dict)

    def note(self, text):
        self.desc.append(text)


def default_argv(case, r, voxel=None):
    """align argv around the map under test, with the partner map (tests/data) on the other side."""
    partner = str(DATA / PARTNER[0])
    mut = case.map_path if os.path.isabs(case.map_path or "") else "{case}/" + (case.map_path or "")
    src, tgt = (mut, partner) if case.role == "source" else (partner, mut)
    argv = ["align", src, tgt]
    mine, other = (
        ("--source-contour", "--target-contour") if case.role == "source" else ("--target-contour", "--source-contour")
    )
    if case.mode == "check":
        if case.role == "source":
            if case.contour is not None:
                argv.append(f"{mine}={case.contour}")
            argv.append(f"{other}={SENTINEL}")  # stop after the source's contour check
        else:
            argv.append(f"{other}={SENTINEL}")  # stop after reading both maps
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


def _map_under_test(case, r, p_full, name, content, contour=None):
    """`content` written at `name` as the map under test, at `contour`, on the source side
    in 70% of cases, its mode drawn (the random draws in this order: role, mode)."""
    case.files[name] = content
    case.map_path = name
    case.contour = contour
    case.role = "source" if r.random() < 0.7 else "target"
    case.mode = choose_mode(r, p_full)


# ----------------------------------------------------------------------------- families
def _float_values(orig):
    return [
        0.0,
        -0.0,
        -1.0,
        -abs(orig) if orig else -5.0,
        float("nan"),
        float("inf"),
        float("-inf"),
        1e38,
        3.4028234663852886e38,
        1e-38,
        1e-45,
        orig * 0.001,
        orig * 0.1,
        orig * 0.5,
        orig * 2,
        orig * 10,
        orig * 100,
        1e6,
    ]


def mutate_header(raw: bytearray, r, case):
    """One header mutation of `raw` (in place, or returns new bytes when the length changes)."""
    import numpy as np

    group = r.choices(
        [
            "dims",
            "mode",
            "nstart",
            "sampling",
            "cella",
            "cellb",
            "axes",
            "stats",
            "ispg",
            "nsymbt",
            "exttyp",
            "nversion",
            "origin",
            "maptag",
            "machst",
            "labels",
            "reshape",
            "exthdr",
        ],
        weights=[12, 10, 6, 8, 12, 3, 10, 5, 2, 10, 4, 2, 10, 6, 6, 3, 5, 4],
    )[0]
    case.kind = case.kind or group
    if group in ("dims", "nstart", "sampling"):
        names = {
            "dims": ("NX", "NY", "NZ"),
            "nstart": ("NXSTART", "NYSTART", "NZSTART"),
            "sampling": ("MX", "MY", "MZ"),
        }[group]
        name = r.choice(names) if r.random() < 0.7 else None
        targets = [name] if name else list(names)
        orig = get_field(raw, targets[0])
        if group == "nstart":
            value = r.choice(
                [
                    0,
                    -1,
                    1,
                    I32_MAX,
                    I32_MIN,
                    10**9,
                    -(get_field(raw, "NX")),
                    r.randint(-1000, 1000),
                    r.randint(-(10**6), 10**6),
                ]
            )
        else:
            value = r.choice(
                [
                    0,
                    -1,
                    1,
                    2,
                    orig - 1,
                    orig + 1,
                    orig * 2,
                    max(orig // 2, 1),
                    I32_MAX,
                    I32_MIN,
                    65536,
                    10**6,
                    r.randint(1, 200),
                    -orig,
                ]
            )
        for t in targets:
            set_field(raw, t, value)
        case.note(f"{'/'.join(targets)} {orig}->{value}")
    elif group == "mode":
        orig = get_field(raw, "MODE")
        value = r.choice([0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 16, 101, -1, I32_MAX, 2**24])
        set_field(raw, "MODE", value)
        case.note(f"MODE {orig}->{value}")
    elif group in ("cella", "cellb", "origin"):
        prefix, keys = {
            "cella": ("CELLA.", "xyz"),
            "cellb": ("CELLB.", ("alpha", "beta", "gamma")),
            "origin": ("ORIGIN.", "xyz"),
        }[group]
        names = [prefix + k for k in keys]
        targets = [r.choice(names)] if r.random() < 0.6 else names
        orig = get_field(raw, targets[0])
        if group == "origin":
            value = r.choice(
                [
                    0.0,
                    float("nan"),
                    float("inf"),
                    float("-inf"),
                    1e38,
                    -1e38,
                    3.4e38,
                    1e30,
                    1e15,
                    1e9,
                    -1e9,
                    1e-40,
                    r.uniform(-1e4, 1e4),
                ]
            )
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
            value = r.choice(
                [
                    (1, 1, 3),
                    (0, 1, 2),
                    (2, 3, 4),
                    (-1, 2, 3),
                    (3, 3, 3),
                    (0, 0, 0),
                    (I32_MAX, 2, 3),
                    (1, 2, I32_MIN),
                    tuple(r.randint(-1, 5) for _ in range(3)),
                ]
            )
        for n, v in zip(("MAPC", "MAPR", "MAPS"), value):
            set_field(raw, n, v)
        case.note(f"MAPC/MAPR/MAPS {orig}->{value}")
    elif group == "stats":
        name = r.choice(["DMIN", "DMAX", "DMEAN", "RMS"])
        value = r.choice([float("nan"), float("inf"), float("-inf"), 1e38, -1e38, 0.0, r.uniform(-1e6, 1e6)])
        set_field(raw, name, value)
        case.note(f"{name}->{fmt(value)}")
    elif group == "ispg":
        value = r.choice([0, 1, 401, -1, I32_MAX, 230, 1000])
        set_field(raw, "ISPG", value)
        case.note(f"ISPG->{value}")
    elif group == "nsymbt":
        data_len = len(raw) - 1024
        value = r.choice([1, 4, 80, 1024, -1, -4, -1024, I32_MIN, I32_MAX, data_len, data_len + 1, r.randint(1, 5000)])
        set_field(raw, "NSYMBT", value)
        case.note(f"NSYMBT 0->{value} (no extended header bytes added)")
    elif group == "exttyp":
        value = r.choice(
            [
                b"CCP4",
                b"MRCO",
                b"SERI",
                b"AGAR",
                b"FEI1",
                b"FEI2",
                b"HDF5",
                b"\xff\xff\xff\xff",
                bytes(r.getrandbits(8) for _ in range(4)),
            ]
        )
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
        value = r.choice(
            [
                b"MAP ",
                b"MAP\x00",
                b"map ",
                b"\x00\x00\x00\x00",
                b"MAPP",
                b" MAP",
                b"PAM ",
                bytes(r.getrandbits(8) for _ in range(4)),
            ]
        )
        raw[208:212] = value
        case.note(f"MAP tag->{value!r}")
    elif group == "machst":
        value = r.choice(
            [
                b"DD\x00\x00",
                b"DA\x00\x00",
                b"\x11\x11\x00\x00",
                b"\x00\x00\x00\x00",
                b"\x00\x00DD",
                b"\xff\xff\xff\xff",
                b"\x11\x11\x11\x11",
                bytes(r.getrandbits(8) for _ in range(4)),
            ]
        )
        raw[212:216] = value
        case.note(f"MACHST->{value!r}")
    elif group == "labels":
        value = r.choice([0, 10, 11, -1, I32_MAX])
        set_field(raw, "NLABL", value)
        raw[224:1024] = bytes(r.getrandbits(8) for _ in range(800))
        case.note(f"NLABL->{value}, random label bytes")
    elif group == "reshape":  # NX/NY/NZ changed but consistent with the data size: a valid map
        n = get_field(raw, "NX") * get_field(raw, "NY") * get_field(raw, "NZ")
        if n <= 0:  # an earlier mutation broke the dimensions: use the data length
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
    elif group == "exthdr":  # a real extended header: NSYMBT bytes inserted (valid)
        n = r.choice([4, 80, 1024, 3000])
        set_field(raw, "NSYMBT", get_field(raw, "NSYMBT") + n)
        raw[1024:1024] = bytes(np.random.default_rng(r.getrandbits(32)).integers(0, 256, n, dtype=np.uint8))
        case.note(f"+{n}-byte extended header (NSYMBT updated)")
    return raw


ANGLE_TOLERANCE_DEG = 0.01  # as cryoalign.io: closer to 90 is rounding, 0 means unset


def skewed_angles(raw) -> bool:
    """The header's CELLB holds an angle that is neither 0 (unset) nor 90 (NaN counts as skewed)."""
    if len(raw) < 64 or bytes(raw[212:214]) not in (b"DD", b"DA"):  # not a little-endian header
        return False
    angles = [get_field(raw, "CELLB." + k) for k in ("alpha", "beta", "gamma")]
    return not all(a == 0.0 or abs(a - 90.0) < ANGLE_TOLERANCE_DEG for a in angles)


def gen_header(case, r, p_full):
    key = pick_base(r)
    raw = bytearray(base_raw(key))
    case.note(f"base {key}")
    for _ in range(r.choice([1, 1, 1, 2, 2, 3, 4])):
        raw = mutate_header(raw, r, case)
    name = "in/map.mrc"
    content = bytes(raw)
    if skewed_angles(raw):
        case.expect = "refuse"
        case.note("expected: refused (skewed cell)")
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
    kind = r.choices(
        [
            "truncate",
            "append",
            "nonfinite",
            "zeros",
            "constant",
            "huge",
            "subnormal",
            "negate",
            "noise",
            "spike",
            "dtype",
            "tiny",
            "offset",
            "sparse",
        ],
        weights=[10, 5, 8, 4, 5, 8, 4, 5, 5, 5, 8, 12, 4, 4],
    )[0]
    case.kind = kind
    case.note(f"base {key}")
    contour = str(BASE_MAPS[key][1]) if r.random() < 0.5 else None
    content = None
    if kind == "truncate":
        k = r.choice(
            [
                r.randint(0, len(raw) - 1),
                r.randint(1018, 1030),
                len(raw) - r.randint(1, 8),
                r.randint(1024, len(raw) - 1),
            ]
        )
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
        if abs(c) > 1e15:
            case.expect = "refuse"
    elif kind == "huge":
        top = r.choice([1e38, 3.4e38, 1e30, 1e20])
        if r.random() < 0.5:
            arr = (arr / max(float(np.abs(arr).max()), 1e-30) * top).astype(np.float32)
            case.note(f"scaled to max |v| = {top:g}")
            case.expect = "refuse"  # the bulk overflows (> 1e15)
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
        content = make_mrc(
            small.astype(MODE_DTYPES[mode]), mode=mode, voxel=(voxel,) * 3, origin=(r.uniform(-50, 50),) * 3
        )
        case.note(f"tiny {shape[::-1]} map (x,y,z), MODE {mode}, {fill}, voxel {voxel} Å")
        if min(shape) < 4:
            case.expect = "refuse"  # fewer than 4 voxels along an axis
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
    kind = r.choice(
        [
            "corrupt_stream",
            "truncated",
            "non_map",
            "trailing_garbage",
            "double",
            "multi_member",
            "empty",
            "header_flags",
            "crc",
            "magic_only",
        ]
    )
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
        payload = r.choice(
            [
                b"hello world\n" * 200,
                model_text()[: r.randint(0, 20000)],
                bytes(rng.integers(0, 256, r.randint(0, 5000), dtype=np.uint8)),
                b"",
            ]
        )
        content = gzip.compress(payload, mtime=0)
        case.note(f"gzip of {len(payload)} bytes of non-map data")
    elif kind == "trailing_garbage":
        extra = (
            bytes(rng.integers(0, 256, r.randint(1, 500), dtype=np.uint8))
            if r.random() < 0.6
            else bytes(r.randint(1, 500))
        )
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
    contour = str(BASE_MAPS[key][1]) if r.random() < 0.5 else None
    _map_under_test(case, r, p_full, name, content, contour)


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
    _map_under_test(case, r, p_full, r.choice(["in/rand.mrc", "in/rand.map", "in/rand.ccp4", "in/rand"]), content)


def gen_text(case, r, p_full):
    kind = r.choice(
        ["lorem", "pdb", "json", "csv", "empty", "whitespace", "utf16", "newline", "exact1024", "text_with_tag"]
    )
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
    _map_under_test(
        case, r, p_full, r.choice(["in/notes.mrc", "in/notes.map", "in/notes.txt", "in/notes.ccp4"]), content
    )


def gen_path(case, r, p_full):
    kind = r.choice(
        [
            "directory",
            "missing",
            "missing_parent",
            "trailing_slash",
            "dev_null",
            "broken_symlink",
            "symlink_to_dir",
            "symlink_to_map",
            "empty_string",
            "dash",
            "spaces_unicode",
            "dot",
            "symlink_loop",
        ]
    )
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


CONTOUR_VALUES = [
    "nan",
    "-nan",
    "inf",
    "-inf",
    "1e400",
    "-1e400",
    "0",
    "-0",
    "1e-30",
    "-1e-30",
    "-1",
    "-1000",
    "1e38",
    "1e-320",
    "MAX",
    "MAX*0.999999",
    "MAX*1.0000001",
    "MIN",
    "MIN-1",
    "UNIFORM",
    "KNOWN",
    "0.0001",
]


def contour_value(r, key):
    data = base_array(key)
    top, low = float(data.max()), float(data.min())
    v = r.choice(CONTOUR_VALUES)
    value = {
        "MAX": repr(top),
        "MAX*0.999999": repr(top * 0.999999),
        "MAX*1.0000001": repr(top * 1.0000001),
        "MIN": repr(low),
        "MIN-1": repr(low - 1),
        "UNIFORM": repr(r.uniform(low, top)),
        "KNOWN": str(BASE_MAPS[key][1]),
    }.get(v, v)
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
    if case.mode == "full" and r.random() < 0.3:  # the partner's contour fuzzed too
        other = "--target-contour" if case.role == "source" else "--source-contour"
        value = contour_value(r, "3695")
        case.argv = [a if not a.startswith(other + "=") else f"{other}={value}" for a in case.argv]
        case.note(f"partner contour {value}")


def gen_model(case, r, p_full):
    import numpy as np

    rng = np.random.default_rng(r.getrandbits(64))
    text = model_text(r.choice(MODELS))
    kind = r.choice(
        [
            "valid",
            "truncated",
            "truncated_gz",
            "random",
            "random_gz",
            "empty",
            "no_atoms",
            "bad_atom_lines",
            "nan_coords",
            "huge_coords",
            "cif_garbage",
            "valid_cif",
            "txt_suffix",
            "directory",
            "missing",
        ]
    )
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
                ln = ln[:pos] + "".join(r.choice("#@!x9-. ") for _ in range(5)) + ln[pos + 5 :]
            elif kind == "nan_coords":
                ln = ln[:30] + "     nan     nan     nan" + ln[54:]
            else:
                ln = ln[:30] + "99999999-9999999 9999999" + ln[54:]
            lines[i] = ln[:80] + "\n"
        content = "".join(lines).encode("latin-1")
    elif kind == "cif_garbage":
        content = b"data_x\nloop_\n_atom_site.id\n_atom_site.Cartn_x\n1 abc\n2\n" + bytes(
            rng.integers(32, 127, r.randint(0, 500), dtype=np.uint8)
        )
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


OUTPUT_KINDS = [
    "json_missing_folder",
    "json_parent_is_file",
    "json_is_dir",
    "json_readonly_folder",
    "json_is_source",
    "json_symlink_to_input",
    "out_dir_is_file",
    "out_dir_under_file",
    "out_dir_nested_new",
    "out_dir_existing_nonempty",
    "flipped_without_check_hand",
    "flipped_missing_folder",
    "out_dir_blocked_by_dir",
    "json_name_too_long_with_out_dir",
    "json_name_too_long",
    "out_dir_holds_input_name",
    "json_is_target",
    "json_and_out_dir_blocked",
    "out_dir_previous_run",
    "out_dir_previous_run_plus_foreign",
]
NEEDS_SUCCESS = {
    "json_readonly_folder",
    "out_dir_nested_new",
    "out_dir_existing_nonempty",
    "out_dir_blocked_by_dir",
    "json_name_too_long_with_out_dir",
    "json_name_too_long",
    "json_and_out_dir_blocked",
    "out_dir_previous_run",
    "out_dir_previous_run_plus_foreign",
}


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
    elif kind in ("out_dir_previous_run", "out_dir_previous_run_plus_foreign"):
        # a folder written by an earlier run (marked .cryoalign): replaced whole on success, so a
        # file this run does not write (a rank-7 model) must be gone afterwards.  "_plus_foreign":
        # the user also put notes.txt in it, a file cryoalign did not write: the contract ("an
        # --out-dir holding files cryoalign did not write is refused") says it must survive
        # the mark lists the files that run wrote (notes.txt, added later, is not among them)
        case.files["out/dir/.cryoalign"] = b"written by cryoalign align\nresult.json\nsource_model_rank7.pdb\n"
        case.files["out/dir/result.json"] = json.dumps(
            {"matrix": [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], "old": True}
        ).encode()
        case.files["out/dir/source_model_rank7.pdb"] = b"END\n"
        if kind.endswith("foreign"):
            case.files["out/dir/notes.txt"] = b"my notes\n"
            case.inputs.append("out/dir/notes.txt")
        case.replaced_dirs.append("out/dir")
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
        "--seed": ["-1", str(-(2**63)), "0", str(2**64), str(r.randint(0, 10**9))],
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
            if opt in case.argv:  # replace --voxel / --jobs given by default_argv
                i = case.argv.index(opt)
                del case.argv[i : i + 2]
            case.argv.append(f"{opt}={value}")
        case.note(f"{opt} {value}")


GENERATORS = {
    "header": gen_header,
    "data": gen_data,
    "gzip": gen_gzip,
    "random": gen_random,
    "text": gen_text,
    "path": gen_path,
    "contour": gen_contour,
    "model": gen_model,
    "output": gen_output,
    "options": gen_options,
}


# ----------------------------------------------------------------------------- odd maps
# 2D images and thin slabs, volume stacks, cell angles, single outlier voxels, overflow-scale
# values, bzip2/xz/gzip-compressed maps (merged from benchmarks/fuzz_odd.py).  Each generator
# sets `case.expect`: "refuse" (read_map raises InputError; the CLI exits 2 naming the map) or
# "accept" (read_map returns a map).
ODD_BASES = ("1ake", "3695", "5168")
CELLB = 52


def odd_mrc_bytes(
    data_zyx, *, voxel=(1.0, 1.0, 1.0), angles=(90.0, 90.0, 90.0), origin=(0.0, 0.0, 0.0), ispg=1, mz=None
) -> bytes:
    """Little-endian MRC2014 bytes of a mode-2 map (a 2D array is written as NZ = 1)."""
    import numpy as np

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


def with_voxels(raw: bytes, arr) -> bytes:
    """`raw`'s header (no extended header) with new voxel values of the same shape."""
    import numpy as np

    return raw[:1024] + np.ascontiguousarray(arr, "<f4").tobytes()


def _odd_finish(case, r, content: bytes, expected: str, name="in/map.mrc", contour=None, p_full=0.0):
    case.files[name] = content
    case.map_path = name
    case.contour = contour
    case.role = "source" if r.random() < 0.75 else "target"
    case.mode = "full" if (expected == "accept" and r.random() < p_full) else "check"
    case.expect = expected
    case.expect_ok = expected == "accept"
    case.note(f"expected: read_map must {expected}")


def _odd_pick(r):
    key = r.choice(sorted(ODD_BASES))
    return key, BASE_MAPS[key][1]


def gen_odd_thin(case, r, p_full):
    """2D images (NZ = 1), slabs 1-3 voxels thick along a random axis: refused; 4 voxels
    thick: accepted."""
    import numpy as np

    thick = r.choice([1, 1, 2, 3, 4])
    axis = r.randrange(3)
    shape = [r.randint(4, 40) for _ in range(3)]
    shape[axis] = thick
    rng = np.random.default_rng(r.getrandbits(64))
    arr = rng.normal(0.0, 1.0, shape).astype(np.float32)
    case.kind = f"thin{thick}"
    case.note(f"{shape[2]} x {shape[1]} x {shape[0]} voxels (x, y, z)")
    content = odd_mrc_bytes(arr, voxel=(r.choice([1.0, 2.0, 5.0]),) * 3, ispg=0 if thick == 1 else 1)
    _odd_finish(case, r, content, "accept" if thick >= 4 else "refuse", contour=r.choice([None, "1.0"]))


def gen_odd_stack(case, r, p_full):
    """A stack of 2-4 volumes (ISPG 401, NZ = k x MZ): refused; a one-volume stack: accepted."""
    import numpy as np

    k = r.choice([1, 2, 3, 4])
    mz = r.randint(4, 12)
    arr = np.random.default_rng(r.getrandbits(64)).random((k * mz, 16, 16)).astype(np.float32)
    case.kind = f"stack{k}"
    case.note(f"ISPG 401, {k} volume(s) of 16 x 16 x {mz}")
    _odd_finish(case, r, odd_mrc_bytes(arr, ispg=401, mz=mz), "accept" if k == 1 else "refuse")


def gen_odd_cellb(case, r, p_full):
    """Cell angles: skewed (refused) or right / unset / rounding-level (accepted)."""
    key, contour = _odd_pick(r)
    raw = base_raw(key)
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
    _odd_finish(case, r, bytes(b), expected, contour=str(contour), p_full=p_full)


def gen_odd_outlier(case, r, p_full):
    """1-3 voxels 1e4..FLT_MAX times the map's maximum (either sign): accepted (logged as
    outliers)."""
    import numpy as np

    key, contour = _odd_pick(r)
    raw, arr = base_raw(key), base_array(key)
    flat = arr.reshape(-1)
    top = float(np.abs(flat).max())
    n = r.choice([1, 1, 2, 3])
    rng = np.random.default_rng(r.getrandbits(64))
    idx = rng.choice(flat.size, n, replace=False)
    factor = r.choice([1e4, 1e6, 1e30, "max"])
    value = 3.4e38 if factor == "max" else min(3.4e38, factor * top)
    flat[idx] = np.float32(value) * np.float32(r.choice([1.0, -1.0]))
    case.kind = f"outlier_{factor if factor == 'max' else f'{factor:g}'}"
    case.note(f"base {key}, {n} voxel(s) -> +-{value:.3g}")
    _odd_finish(case, r, with_voxels(raw, arr), "accept", contour=str(contour), p_full=2 * p_full)


def gen_odd_overflow(case, r, p_full):
    """The whole map scaled so that its values overflow single precision (bulk above 1e15):
    refused; scaled to 1e12 (large but safe): accepted."""
    import numpy as np

    key, _ = _odd_pick(r)
    raw, arr = base_raw(key), base_array(key)
    top = r.choice([3.4e38, 1e38, 1e30, 1e20, 1e16, 1e12])
    scale = top / float(np.abs(arr).max())
    with np.errstate(all="ignore"):
        arr = (arr.astype(np.float64) * scale).astype(np.float32)
    if r.random() < 0.3:
        arr = -arr
    case.kind = f"overflow_{top:g}"
    case.note(f"base {key}, scaled to max |v| = {top:g}")
    # the robust maximum of the base maps is 0.86-0.94 of their maximum: 1e16 -> bulk above 1e15
    _odd_finish(case, r, with_voxels(raw, arr), "refuse" if top > 1e15 else "accept", p_full=p_full)


def gen_odd_compressed(case, r, p_full):
    """bzip2 / xz / gzip-compressed maps (accepted) and damaged streams (refused)."""
    key, contour = _odd_pick(r)
    raw = base_raw(key)
    kind = r.choice(["bz2", "xz", "gz"])
    pack = {"bz2": bz2.compress, "xz": lzma.compress, "gz": lambda b: gzip.compress(b, mtime=0)}[kind]
    content = pack(raw)
    damage = r.choice([None, None, "cut", "garbage"])
    if damage == "cut":
        content = content[: r.randint(3, len(content) - 1)]
    elif damage == "garbage":
        b = bytearray(content)
        start = r.randint(40, max(41, len(b) - 300))
        b[start : start + 200] = bytes(r.getrandbits(8) for _ in range(200))
        content = bytes(b)
    case.kind = f"{kind}_{damage or 'ok'}"
    case.note(f"base {key}, {kind}" + (f", {damage}" if damage else ""))
    name = {"bz2": "in/map.mrc.bz2", "xz": "in/map.map.xz", "gz": "in/map.mrc.gz"}[kind]
    _odd_finish(case, r, content, "refuse" if damage else "accept", name=name, contour=str(contour), p_full=2 * p_full)


# ----------------------------------------------------------------------------- concurrent runs
CONCURRENT_KINDS = ["new_folder", "previous_run", "model_vs_none", "staggered", "same_inputs"]


def gen_concurrent(case, r, p_full):
    """Two `cryoalign align ... --out-dir SAME` processes started at once (subprocesses).

    Run A aligns emd_3695 onto itself (the partner); run B aligns a different source: emd_3695
    with its values doubled and its ORIGIN moved, so its matrix (translation) and its resampled
    map (values x2) both differ from A's.  Each run also writes its own --json outside the
    folder.  Afterwards the folder must hold exactly the files of one complete run (the harness
    checks result.json's matrix, params.json, source_on_target.mrc and superposition.cxc against
    the run whose --json has the same matrix, and that nothing of the other run is left)."""
    import numpy as np

    kind = r.choice(CONCURRENT_KINDS)
    case.kind = kind
    case.mode = "full"
    case.json_out = None
    raw = base_raw("3695")
    case.files["in/a.mrc"] = raw
    if kind == "same_inputs":  # both runs identical: the folder is that run's
        case.files["in/b.mrc"] = raw
        b_contour = "1.25"
    else:
        arr = base_array("3695") * np.float32(2.0)
        b = bytearray(with_voxels(raw, arr))
        shift = [r.choice([-1, 1]) * r.uniform(5, 20) for _ in range(3)]
        for k, v in zip("xyz", shift):
            set_field(b, "ORIGIN." + k, v)
        case.files["in/b.mrc"] = bytes(b)
        b_contour = "2.5"
        case.note(f"run B: values x2, ORIGIN ({shift[0]:.2f}, {shift[1]:.2f}, {shift[2]:.2f}) Å")
    partner = str(DATA / PARTNER[0])
    models = [None, None]
    if kind == "model_vs_none":
        case.files["in/model.pdb"] = model_text("3mfp.pdb.gz")
        models[r.randrange(2)] = "{case}/in/model.pdb"
    if kind == "previous_run":
        case.files["out/dir/.cryoalign"] = b"written by cryoalign align\nresult.json\nsource_model_rank7.pdb\n"
        case.files["out/dir/result.json"] = b'{"matrix": "old"}\n'
        case.files["out/dir/source_model_rank7.pdb"] = b"END\n"
        case.replaced_dirs.append("out/dir")
    runs = []
    for k, (src, contour) in enumerate((("{case}/in/a.mrc", "1.25"), ("{case}/in/b.mrc", b_contour))):
        argv = [
            "align",
            src,
            partner,
            f"--source-contour={contour}",
            f"--target-contour={PARTNER[1]}",
            "--sampling",
            "8",
            "--global",
            "--jobs",
            "1",
            "--json",
            f"{{case}}/out/run{k}.json",
            "--out-dir",
            "{case}/out/dir",
        ]
        if models[k]:
            argv += ["--source-model", models[k]]
        if r.random() < 0.5:
            argv.append("--quiet")
        runs.append(argv)
    case.runs = runs
    case.argv = runs[0]
    case.extra["delay_s"] = (
        r.choice([0.0, 0.0, 0.0, r.uniform(0.0, 1.5)]) if kind != "staggered" else r.uniform(0.5, 3.0)
    )
    case.map_path = None
    case.note(
        f"{kind}: 2 processes into out/dir, second started {case.extra['delay_s']:.2f} s after the first"
        + (f"; --source-model on run {'AB'[models.index(models[0] or models[1])]}" if kind == "model_vs_none" else "")
    )


# ----------------------------------------------------------------------------- signals and read-only places
SIGNAL_COMMANDS = ["batch", "index", "variance"]
SIGNALS = ["SIGINT", "SIGTERM", "SIGKILL"]


def _series_files(case, r, n=4):
    """n small valid maps (the 5168 monomer with shifted ORIGINs: distinct files, same molecule)."""
    raw = base_raw("5168")
    names = []
    for k in range(n):
        b = bytearray(raw)
        for axis in "xyz":
            set_field(b, "ORIGIN." + axis, get_field(raw, "ORIGIN." + axis) + r.uniform(-8, 8))
        case.files[f"in/m{k}.mrc"] = bytes(b)
        names.append(f"m{k}.mrc")
    return names


def _signal_argv(command, names):
    maps = ["{case}/in/" + n for n in names]
    if command == "batch":
        return [
            "batch",
            "{case}/in/pairs.tsv",
            "--out",
            "{case}/out/results.tsv",
            "--jobs",
            "2",
            "--global",
            "--sampling",
            "5",
            "--quiet",
        ]
    if command == "index":
        return ["index", *maps, "--db", "{case}/out/db", "--jobs", "2", "--quiet"]
    return ["variance", maps[0], *maps[1:], "--out-dir", "{case}/out/var", "--jobs", "2", "--sampling", "5", "--quiet"]


def gen_signal(case, r, p_full):
    """`batch`, `index` or `variance` with 2 workers (a subprocess) stopped by SIGINT, SIGTERM or
    SIGKILL once its workers exist, or after a random delay.  The harness checks the exit code
    (130 / 143 / killed, or 0 when it finished first), that no worker outlives the parent, that
    RESULTS.tsv holds only whole lines, and that a rerun finishes (each pair once)."""
    command = r.choice(SIGNAL_COMMANDS)
    sig = r.choice(SIGNALS)
    case.kind = f"{command}/{sig}"
    case.mode = "full"
    case.json_out = None
    names = _series_files(case, r, n=r.choice([3, 4]))
    case.files["in/pairs.tsv"] = (
        "source\ttarget\n" + "".join(f"{a}\t{b}\n" for a, b in zip(names, names[1:] + names[:1]))
    ).encode()
    case.files["out"] = ("dir",)
    case.argv = _signal_argv(command, names)
    case.extra.update(
        signal=sig, when=r.choice(["workers", "workers", "delay"]), delay_s=r.uniform(0.3, 4.0), pairs=len(names)
    )
    case.map_path = None
    case.note(
        f"{command} killed by {sig} "
        + ("once its workers exist" if case.extra["when"] == "workers" else f"after {case.extra['delay_s']:.2f} s")
    )


READONLY_KINDS = ["variance", "index", "batch", "align_json", "align_out_dir", "compare_out_dir", "fit_out_dir"]
READONLY_PLACES = ["read-only folder", "below a read-only folder", "a file", "below a file"]


def gen_readonly(case, r, p_full):
    """An output in a place that cannot take it: a read-only folder (root loses its override:
    the harness runs the command under `setpriv`), a new folder below one, an existing file, or
    a path below a file.  Expected: exit 2, one error line, nothing written, inputs unchanged."""
    kind = r.choice(READONLY_KINDS)
    place = r.choice(READONLY_PLACES)
    case.kind = f"{kind}: {place}"
    case.mode = "check"
    case.json_out = None
    names = _series_files(case, r, n=3)
    case.files["in/pairs.tsv"] = (
        "source\ttarget\n" + "".join(f"{a}\t{b}\n" for a, b in zip(names, names[1:]))
    ).encode()
    case.files["out/ro"] = ("ro-dir",)
    case.files["out/a-file"] = b"not a folder\n"
    case.inputs.append("out/a-file")
    target = {
        "read-only folder": "{case}/out/ro",
        "below a read-only folder": "{case}/out/ro/new",
        "a file": "{case}/out/a-file",
        "below a file": "{case}/out/a-file/new",
    }[place]
    if kind not in ("variance", "index", "batch"):
        # a folder the run replaces whole may be an empty read-only one (its parent is writable),
        # and --json may overwrite an existing file: use the places nothing can be written to
        target = {"{case}/out/ro": "{case}/out/ro/new", "{case}/out/a-file": "{case}/out/a-file/new"}.get(
            target, target
        )
    maps = ["{case}/in/" + n for n in names]
    if kind == "variance":
        argv = ["variance", *maps, "--out-dir", target, "--jobs", "1"]
    elif kind == "index":
        argv = ["index", *maps, "--db", target, "--jobs", "1"]
    elif kind == "batch":
        argv = [
            "batch",
            "{case}/in/pairs.tsv",
            "--out",
            target + ("/r.tsv" if "file" not in place else ""),
            "--jobs",
            "1",
        ]
    elif kind == "align_json":
        argv = ["align", *maps[:2], "--json", target + "/r.json"]
    elif kind == "compare_out_dir":
        argv = ["compare", *maps[:2], "--out-dir", target]
    elif kind == "fit_out_dir":
        case.files["in/model.pdb"] = model_text("3mfp.pdb.gz")
        argv = ["fit", "{case}/in/model.pdb", maps[0], "--resolution", "6", "--out-dir", target]
    else:
        argv = ["align", *maps[:2], "--out-dir", target]
    if kind in ("variance", "index") and place == "read-only folder":
        case.note("the read-only folder exists (empty): it cannot take the run's files")
    case.argv = argv + (["--quiet"] if r.random() < 0.5 else [])
    case.extra["place"] = place
    case.map_path = None
    case.note(f"{kind} into {place}")


GENERATORS.update(
    {
        "odd_thin": gen_odd_thin,
        "odd_stack": gen_odd_stack,
        "odd_cellb": gen_odd_cellb,
        "odd_outlier": gen_odd_outlier,
        "odd_overflow": gen_odd_overflow,
        "odd_compressed": gen_odd_compressed,
        "concurrent": gen_concurrent,
        "signal": gen_signal,
        "readonly": gen_readonly,
    }
)


# ----------------------------------------------------------------------------- a case from (seed, index)
def make_case(seed, index, p_full, families=None) -> Case:
    """Case `index` of `seed`: generated from (seed, index) only, so any case can be replayed alone."""
    r = random.Random(f"cryoalign-fuzz:{seed}:{index}")
    fams = families or list(FAMILY_WEIGHTS)
    weights = [FAMILY_WEIGHTS[f] or (1 if families else 0) for f in fams]  # opt-in ones when named
    family = r.choices(fams, weights=weights)[0]
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
