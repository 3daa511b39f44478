"""Property-based fuzz tests of the input contract, and regression tests for the bugs that
benchmarks/fuzz.py found (see benchmarks/FUZZING.md).

The contract: `cryoalign.read_map` returns a valid DensityMap or raises InputError, never
anything else; `cryoalign align` exits 0 with a JSON holding a finite 4x4 "matrix", or 2
with one 'cryoalign: error: ...' line on stderr, no traceback, no output file (not even a
temp file or an empty output folder) and unchanged inputs.

The inputs are the small real maps of tests/data with mutated MRC header fields, voxel
data, gzip streams, or random bytes. Hypothesis runs derandomized (the same examples on
every run) without an example database, so the suite is deterministic.

Bugs found by the fuzzer have a regression test each below (numbered as in FUZZING.md);
all are fixed. The generic properties still leave out the inputs that used to trigger the
slow ones (`SIZE_HIGH_BYTES`, `SANE_VOXEL_FACTORS`, the bounded size values in
`_int_values`) to keep this file fast; the dedicated tests cover them.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import math
import os
import pathlib
import resource
import struct
import subprocess
import sys
import tempfile
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cryoalign
from cryoalign.cli import main

DATA = pathlib.Path(__file__).resolve().parent / "data"
BASES = {
    "3695": "emd_3695_5A.mrc.gz",
    "1ake": "1akeA_10A_simulated_odd_machine_stamp.mrc",
    "5168": "emd_5168_monomer.mrc.gz",
}
TARGET = DATA / "emd_3695_5A.mrc.gz"  # 48^3 at 5 Å; its EMDB-style contour is 1.25
TARGET_CONTOUR = "1.25"
EXIT_INPUT = 2

FUZZ = settings(
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)

# ----------------------------------------------------------------------------- MRC bytes
INT_FIELDS = {
    "NX": 0,
    "NY": 4,
    "NZ": 8,
    "MODE": 12,
    "NXSTART": 16,
    "NYSTART": 20,
    "NZSTART": 24,
    "MX": 28,
    "MY": 32,
    "MZ": 36,
    "MAPC": 64,
    "MAPR": 68,
    "MAPS": 72,
    "ISPG": 88,
    "NSYMBT": 92,
    "NVERSION": 108,
    "NLABL": 220,
}
FLOAT_FIELDS = {
    "CELLA.x": 40,
    "CELLA.y": 44,
    "CELLA.z": 48,
    "CELLB.alpha": 52,
    "CELLB.beta": 56,
    "CELLB.gamma": 60,
    "DMIN": 76,
    "DMAX": 80,
    "DMEAN": 84,
    "ORIGIN.x": 196,
    "ORIGIN.y": 200,
    "ORIGIN.z": 204,
    "RMS": 216,
}
TAG_FIELDS = {"EXTTYP": 104, "MAP": 208, "MACHST": 212}
I32 = st.integers(-(2**31), 2**31 - 1)
_RAW = {}


def base_raw(key) -> bytes:
    if key not in _RAW:
        raw = (DATA / BASES[key]).read_bytes()
        _RAW[key] = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    return _RAW[key]


def get_int(raw, name):
    return struct.unpack_from("<i", raw, INT_FIELDS[name])[0]


def set_int(raw: bytearray, name, value):
    struct.pack_into("<i", raw, INT_FIELDS[name], value)


def set_float(raw: bytearray, name, value):
    struct.pack_into("<f", raw, FLOAT_FIELDS[name], value)


def sha256(path) -> str:
    return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


def assert_valid_map(m):
    assert isinstance(m, cryoalign.DensityMap)
    assert isinstance(m.data, np.ndarray) and m.data.ndim == 3 and m.data.size > 0
    assert np.all(np.isfinite(m.data))
    vs, org = np.asarray(m.voxel_size_A, float), np.asarray(m.origin_A, float)
    assert vs.shape == (3,) and np.all(np.isfinite(vs)) and np.all(vs > 0)
    assert org.shape == (3,) and np.all(np.isfinite(org))


def check_read(content: bytes, name="map.mrc"):
    """read_map on `content` written to a file: a valid map or InputError, file unchanged."""
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / name
        path.write_bytes(content)
        before = sha256(path)
        try:
            m = cryoalign.read_map(path)
        except cryoalign.InputError as exc:
            assert str(exc).strip()
            m = None
        if m is not None:
            assert_valid_map(m)
        assert sha256(path) == before
        return m


# ----------------------------------------------------------------------------- strategies
def _int_values(name):
    if name in ("NX", "NY", "NZ", "MX", "MY", "MZ"):
        # small, or absurd (fails at once); not 1e5-1e8, which makes mrcfile allocate GBs (bug 5)
        return st.one_of(st.integers(-3, 130), st.sampled_from([-(2**31), 2**31 - 1, 4096, 2**30]))
    if name == "MODE":
        return st.one_of(st.integers(-2, 20), st.sampled_from([101, 2**31 - 1, -(2**31)]))
    if name in ("MAPC", "MAPR", "MAPS"):
        return st.integers(-2, 5)
    if name == "ISPG":
        return st.one_of(st.integers(-1, 3), st.integers(399, 632), st.sampled_from([230, 2**31 - 1, -(2**31)]))
    if name == "NSYMBT":
        return st.one_of(st.integers(-5000, 5000), st.sampled_from([-(2**31), 10**6, 10**7]))
    return I32


header_mutation = st.one_of(
    st.sampled_from(sorted(INT_FIELDS)).flatmap(lambda n: st.tuples(st.just(n), _int_values(n))),
    st.tuples(st.sampled_from(sorted(FLOAT_FIELDS)), st.floats(width=32)),
    st.tuples(
        st.sampled_from(sorted(TAG_FIELDS)),
        st.one_of(
            st.binary(min_size=4, max_size=4),
            st.sampled_from(
                [
                    b"MAP ",
                    b"MAP\x00",
                    b"DD\x00\x00",
                    b"DA\x00\x00",
                    b"\x11\x11\x00\x00",
                    b"\x00\x00DD",
                    b"FEI1",
                    b"CCP4",
                ]
            ),
        ),
    ),
)


def apply_header(raw: bytearray, mutations):
    for name, value in mutations:
        if name in INT_FIELDS:
            set_int(raw, name, value)
        elif name in FLOAT_FIELDS:
            set_float(raw, name, value)
        else:
            raw[TAG_FIELDS[name] : TAG_FIELDS[name] + 4] = value
    return raw


# ----------------------------------------------------------------------------- read_map properties
@settings(FUZZ, max_examples=250)
@given(
    base=st.sampled_from(sorted(BASES)), mutations=st.lists(header_mutation, min_size=1, max_size=4), gz=st.booleans()
)
def test_read_map_on_mutated_headers(base, mutations, gz):
    raw = apply_header(bytearray(base_raw(base)), mutations)
    content = gzip.compress(bytes(raw), mtime=0) if gz else bytes(raw)
    check_read(content, "map.mrc.gz" if gz else "map.mrc")


data_mutation = st.one_of(
    st.tuples(st.just("truncate"), st.floats(0, 1)),
    st.tuples(st.just("append"), st.binary(min_size=1, max_size=3000)),
    st.tuples(st.just("nonfinite"), st.tuples(st.integers(1, 50), st.sampled_from([np.nan, np.inf, -np.inf]))),
    st.tuples(st.just("scale"), st.sampled_from([0.0, -1.0, 1e-40, 1e-30, 1e30, 1e38, 3.4e38])),
    st.tuples(st.just("flip"), st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), min_size=1, max_size=6)),
    st.tuples(st.just("gzip_truncate"), st.floats(0, 1)),
    st.tuples(
        st.just("gzip_corrupt"), st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), min_size=1, max_size=4)
    ),
)


# High bytes of NX, NY, NZ and NSYMBT: flipping them makes mrcfile allocate up to GBs (bug 5).
SIZE_HIGH_BYTES = {off + k for off in (0, 4, 8, 92) for k in (1, 2, 3)}


def apply_data(raw: bytes, op, arg, seed=0):
    """(content, file name) after one data / stream mutation of an uncompressed map."""
    if op == "truncate":
        return raw[: int(arg * len(raw))], "map.mrc"
    if op == "append":
        return raw + arg, "map.mrc"
    if op in ("nonfinite", "scale"):
        nx, ny, nz = get_int(raw, "NX"), get_int(raw, "NY"), get_int(raw, "NZ")
        arr = np.frombuffer(raw, "<f4", nx * ny * nz, 1024).copy()
        if op == "nonfinite":
            count, value = arg
            arr[np.random.default_rng(seed).choice(arr.size, count, replace=False)] = value
        else:
            with np.errstate(over="ignore", under="ignore"):
                arr = (arr.astype(np.float64) * arg).astype(np.float32)
        return raw[:1024] + arr.tobytes(), "map.mrc"
    if op == "flip":
        b = bytearray(raw)
        for pos, value in arg:
            i = min(int(pos * 1200), len(b) - 1)  # mostly in the header ...
            if i in SIZE_HIGH_BYTES:  # ... but not GB-sized claims (bug 5)
                i -= i % 4
            b[i] = value
        return bytes(b), "map.mrc"
    gz = gzip.compress(raw, mtime=0)
    if op == "gzip_truncate":
        return gz[: int(arg * len(gz))], "map.mrc.gz"
    b = bytearray(gz)
    for pos, value in arg:
        b[10 + int(pos * (len(b) - 11))] = value
    return bytes(b), "map.mrc.gz"


@settings(FUZZ, max_examples=200)
@given(base=st.sampled_from(sorted(BASES)), mutation=data_mutation)
def test_read_map_on_mutated_data_and_streams(base, mutation):
    content, name = apply_data(base_raw(base), *mutation)
    m = check_read(content, name)
    if mutation[0] == "nonfinite":
        assert m is None  # NaN/inf voxels are always refused


@settings(FUZZ, max_examples=200)
@given(
    content=st.binary(max_size=5000),
    tag=st.booleans(),
    plausible=st.booleans(),
    dims=st.tuples(st.integers(1, 8), st.integers(1, 8), st.integers(1, 8)),
    mode=st.sampled_from([0, 1, 2, 6, 12]),
)
def test_read_map_on_random_bytes(content, tag, plausible, dims, mode):
    b = bytearray(content)
    if tag and len(b) >= 212:
        b[208:212] = b"MAP "
    if plausible and len(b) >= 1024:  # get past the first checks: parse deeper
        for name, v in zip(("NX", "NY", "NZ", "MODE", "NSYMBT"), dims + (mode, 0)):
            set_int(b, name, v)
        b[212:216] = b"DD\x00\x00"
    check_read(bytes(b), "random.mrc")


def test_read_map_on_paths_that_are_not_files(tmp_path):
    (tmp_path / "adir.mrc").mkdir()
    (tmp_path / "link.mrc").symlink_to("gone.mrc")
    for p in [
        tmp_path / "adir.mrc",
        tmp_path / "missing.mrc",
        tmp_path / "link.mrc",
        "/dev/null",
        tmp_path / "no" / "such" / "map.mrc",
    ]:
        with pytest.raises(cryoalign.InputError):
            cryoalign.read_map(p)


# ----------------------------------------------------------------------------- CLI property
def run_cli(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exc:
            code = exc.code
    return code, out.getvalue(), err.getvalue()


def assert_contract(code, stdout, stderr, folder, json_path, inputs_before):
    """exit 0 + valid JSON, or exit 2 + one error line and nothing written; inputs unchanged."""
    assert code in (0, EXIT_INPUT), stderr
    assert "Traceback" not in stderr, stderr
    assert {p: sha256(p) for p in inputs_before} == inputs_before
    files = sorted(str(p.relative_to(folder)) for p in pathlib.Path(folder).rglob("*"))
    if code == 0:
        M = np.array(json.loads(pathlib.Path(json_path).read_text())["matrix"], float)
        assert M.shape == (4, 4) and np.all(np.isfinite(M))
        assert not [f for f in files if os.path.basename(f).startswith(".tmp-")]
    else:
        lines = stderr.strip().splitlines()
        errors = [ln for ln in lines if ln.startswith("cryoalign: error: ")]
        assert len(errors) == 1 and lines[-1] == errors[0], stderr
        assert len(errors[0]) > len("cryoalign: error: ") + 3
        assert stdout == ""
        assert not os.path.exists(json_path)
        assert [f for f in files if not f.startswith("in")] == [], files


# CELLA scale factors for the 5 Å map. read_map refuses voxels outside 0.05-100 Å (0.001, 1000,
# 0, -1, nan, inf); 10-20 (50-100 Å voxels, a 2400-4800 Å box) are accepted but need GBs and
# minutes in the point cloud before bug 2b was fixed (test below), so they are left out here.
SANE_VOXEL_FACTORS = [0.001, 0.5, 1.0, 2.0, 1000.0, 0.0, -1.0, math.nan, math.inf]

cli_source_mutation = st.one_of(
    st.tuples(
        st.just("header"),
        st.lists(
            header_mutation.filter(lambda m: not m[0].startswith("CELLA") and m[0] not in ("MX", "MY", "MZ")),
            min_size=1,
            max_size=2,
        ),
    ),
    st.tuples(st.just("cella"), st.sampled_from(SANE_VOXEL_FACTORS)),
    st.tuples(st.just("data"), data_mutation),
)


@settings(FUZZ, max_examples=25)
@given(
    mutation=cli_source_mutation,
    contour=st.sampled_from([None, "1.25", "2.5", "nan", "-inf", "1e30"]),
    side=st.sampled_from(["source", "target"]),
)
def test_cli_align_on_a_mutated_map(mutation, contour, side):
    raw = bytearray(base_raw("3695"))
    kind, arg = mutation
    name = "map.mrc"
    if kind == "header":
        content = bytes(apply_header(raw, arg))
    elif kind == "cella":
        for axis in "xyz":
            set_float(raw, "CELLA." + axis, 240.0 * arg)
        content = bytes(raw)
    else:
        content, name = apply_data(bytes(raw), *arg)
    with tempfile.TemporaryDirectory() as tmp:
        folder = pathlib.Path(tmp)
        (folder / "in").mkdir()
        mutated = folder / "in" / name
        mutated.write_bytes(content)
        json_path = folder / "out.json"
        src, tgt = (mutated, TARGET) if side == "source" else (TARGET, mutated)
        other = "--target-contour" if side == "source" else "--source-contour"
        argv = [
            "align",
            src,
            tgt,
            f"{other}={TARGET_CONTOUR}",
            "--voxel",
            "8",
            "--jobs",
            "1",
            "--quiet",
            "--json",
            json_path,
        ]
        if contour is not None:
            argv.append(f"--{side}-contour={contour}")
        inputs = {mutated: sha256(mutated), TARGET: sha256(TARGET)}
        code, out, err = run_cli(argv)
        assert_contract(code, out, err, folder, json_path, inputs)


# ----------------------------------------------------------------------------- regression tests
# Each one is a minimal reproduction of a failure found by benchmarks/fuzz.py (FUZZING.md).
# Bugs 1-4, 6 and 7 were fixed in 44462e5; 2b (lattice bound) and 5 (size checked before parsing) later.


def _map_file(tmp_path, raw, name="map.mrc"):
    path = tmp_path / name
    path.write_bytes(bytes(raw))
    return path


def _cli_bad_input(tmp_path, argv, inputs=()):
    """Run argv; assert the bad-input contract (exit 2, one error line, nothing new in tmp_path)."""
    before_files = {p for p in tmp_path.rglob("*")}
    hashes = {p: sha256(p) for p in inputs}
    code, out, err = run_cli(argv)
    assert code == EXIT_INPUT, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    errors = [ln for ln in lines if ln.startswith("cryoalign: error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    assert {p: sha256(p) for p in inputs} == hashes
    assert sorted(map(str, set(tmp_path.rglob("*")) - before_files)) == []
    return errors[0]


# bug 1 (fixed): io.read_map assumed mrcfile returns a 3D array ---------------------------
def test_single_section_map_is_read_or_refused(tmp_path):
    ake = base_raw("1ake")  # 22^3 at 3 Å, ISPG 0
    raw = bytearray(ake[:1024]) + ake[1024 : 1024 + 22 * 22 * 4]
    set_int(raw, "NZ", 1)
    set_int(raw, "MZ", 1)
    check_read(bytes(raw))


@pytest.mark.parametrize("ispg", [401, 630])
def test_volume_stack_space_group_is_read_or_refused(tmp_path, ispg):
    raw = bytearray(base_raw("1ake"))
    set_int(raw, "ISPG", ispg)
    check_read(bytes(raw))


def test_cli_reads_a_volume_stack_source(tmp_path):
    raw = bytearray(base_raw("1ake"))
    set_int(raw, "ISPG", 401)
    path = _map_file(tmp_path, raw)
    # the target's contour is above its maximum: the run stops right after reading both maps
    msg = _cli_bad_input(
        tmp_path, ["align", path, TARGET, "--target-contour=1e30", "--json", tmp_path / "r.json"], inputs=[path]
    )
    assert msg.startswith("cryoalign: error: --target-contour 1e+30 is at or above")


@settings(FUZZ, max_examples=20)
@given(base=st.sampled_from(sorted(BASES)), ispg=st.integers(401, 630), single=st.booleans())
def test_read_map_on_single_section_and_volume_stack_headers(base, ispg, single):
    raw = bytearray(base_raw(base))
    if single:
        set_int(raw, "ISPG", 0)
        set_int(raw, "NZ", 1)
        set_int(raw, "MZ", 1)
    else:
        set_int(raw, "ISPG", ispg)
        set_int(raw, "MZ", get_int(raw, "NZ"))
    check_read(bytes(raw))


# bugs 2 and 2b (fixed): absurd voxel sizes crash the point cloud --------------------
@pytest.mark.parametrize("cella", [1e38, 1e-30, 0.048, 24000.0], ids=["1e38", "1e-30", "0.001A", "500A"])
def test_absurd_voxel_size_is_bad_input(tmp_path, cella):
    raw = bytearray(base_raw("3695"))
    for axis in "xyz":
        set_float(raw, "CELLA." + axis, cella)
    path = _map_file(tmp_path, raw)
    _cli_bad_input(
        tmp_path,
        [
            "align",
            path,
            TARGET,
            "--source-contour=1.25",
            "--target-contour=1.25",
            "--voxel",
            "8",
            "--jobs",
            "1",
            "--quiet",
            "--json",
            tmp_path / "r.json",
        ],
        inputs=[path],
    )


def _limited_memory():  # for the child process only
    resource.setrlimit(resource.RLIMIT_AS, (3 * 2**30, 3 * 2**30))


def test_huge_box_is_refused_quickly(tmp_path):
    raw = bytearray(base_raw("3695"))
    for axis in "xyz":
        set_float(raw, "CELLA." + axis, 4800.0)  # 48 voxels of 100 Å
    path = _map_file(tmp_path, raw)
    # a subprocess with a 3 GB address-space limit: without one this would eat the machine
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "cryoalign",
            "align",
            str(path),
            str(TARGET),
            "--source-contour=1.25",
            "--target-contour=1.25",
            "--voxel",
            "8",
            "--jobs",
            "1",
            "--quiet",
            "--json",
            str(tmp_path / "r.json"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=_limited_memory,
    )
    assert proc.returncode == EXIT_INPUT, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("cryoalign: error: ")
    assert not (tmp_path / "r.json").exists()


# bug 3 (fixed): a negative --seed -------------------------------------------------------
def test_negative_seed_is_bad_input(tmp_path):
    _cli_bad_input(
        tmp_path,
        [
            "align",
            TARGET,
            TARGET,
            "--source-contour=1.25",
            "--target-contour=1.25",
            "--voxel",
            "8",
            "--jobs",
            "1",
            "--seed",
            "-1",
            "--json",
            tmp_path / "r.json",
        ],
    )


# bug 4 (fixed): the model parser's message spanned two lines ----------------------------
def test_truncated_model_gives_one_error_line(tmp_path):
    text = gzip.decompress((DATA / "3mfp.pdb.gz").read_bytes()).decode()
    lines = text.splitlines(True)
    first = next(k for k, ln in enumerate(lines) if ln.startswith("ATOM"))
    model = tmp_path / "cut.pdb"
    model.write_text("".join(lines[: first + 3]) + lines[first + 3][:30])  # download cut mid-line
    with pytest.raises(cryoalign.InputError) as exc:
        cryoalign.read_model(model)
    assert "\n" not in str(exc.value)


# bug 5 (fixed): header sizes were allocated before they were checked against the file -------
def test_header_claiming_a_huge_grid_allocates_little(tmp_path):
    raw = bytearray(base_raw("3695"))  # a 442 kB file ...
    set_int(raw, "NZ", 20000)  # ... claiming 184 MB of voxels
    path = _map_file(tmp_path, raw)
    tracemalloc.start()
    try:
        with pytest.raises(cryoalign.InputError, match="truncated"):
            cryoalign.read_map(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50e6, f"read_map allocated {peak / 1e6:.0f} MB for a 442 kB file"


def test_header_claiming_terabytes_names_the_problem(tmp_path):
    raw = bytearray(base_raw("3695"))
    set_int(raw, "NZ", 2**31 - 1)
    path = _map_file(tmp_path, raw)
    with pytest.raises(cryoalign.InputError) as exc:
        cryoalign.read_map(path)
    assert not str(exc.value).rstrip().endswith(":")
    assert "truncated" in str(exc.value) and "MemoryError" not in str(exc.value)


# bugs 6, 7 (fixed): outputs of a failed run were left behind ----------------------------
def test_failed_out_dir_write_leaves_no_partial_output(tmp_path):
    out = tmp_path / "out"
    (out / "params.json").mkdir(parents=True)  # makes writing params.json fail
    _cli_bad_input(
        tmp_path,
        [
            "align",
            TARGET,
            TARGET,
            "--source-contour=1.25",
            "--target-contour=1.25",
            "--voxel",
            "8",
            "--jobs",
            "1",
            "--quiet",
            "--json",
            tmp_path / "r.json",
            "--out-dir",
            out,
        ],
    )


def test_overlong_json_name_leaves_no_output_folder(tmp_path):
    _cli_bad_input(
        tmp_path,
        [
            "align",
            TARGET,
            TARGET,
            "--source-contour=1.25",
            "--target-contour=1.25",
            "--voxel",
            "8",
            "--jobs",
            "1",
            "--quiet",
            "--json",
            tmp_path / ("j" * 300 + ".json"),
            "--out-dir",
            tmp_path / "new",
        ],
    )


# ----------------------------------------------------------------------------- passing edge cases
@pytest.mark.parametrize(
    "kind",
    [
        "json_in_missing_folder",
        "json_parent_is_a_file",
        "json_is_a_folder",
        "out_dir_under_a_file",
        "json_is_the_source",
    ],
)
def test_unwritable_outputs_are_bad_input(tmp_path, kind):
    src = tmp_path / "src.mrc"
    src.write_bytes(base_raw("3695"))
    plain = tmp_path / "plain"
    plain.write_text("keep me\n")
    extra = {
        "json_in_missing_folder": ["--json", tmp_path / "nope" / "r.json"],
        "json_parent_is_a_file": ["--json", plain / "r.json"],
        "json_is_a_folder": ["--json", tmp_path],
        "out_dir_under_a_file": ["--out-dir", plain / "sub"],
        "json_is_the_source": ["--json", src],
    }[kind]
    _cli_bad_input(
        tmp_path,
        [
            "align",
            src,
            TARGET,
            "--source-contour=1.25",
            "--target-contour=1.25",
            "--voxel",
            "8",
            "--jobs",
            "1",
            "--quiet",
        ]
        + extra,
        inputs=[src, plain],
    )


@pytest.mark.parametrize(
    "content",
    [b"", b"\x1f\x8b", b"not a model\n" * 50, b"HEADER    X\nEND\n"],
    ids=["empty", "gzip-magic", "text", "no-atoms"],
)
def test_unusable_source_models_are_bad_input(tmp_path, content):
    model = tmp_path / "m.pdb"
    model.write_bytes(content)
    _cli_bad_input(
        tmp_path,
        [
            "align",
            TARGET,
            TARGET,
            "--source-contour=1.25",
            "--target-contour=1.25",
            "--voxel",
            "8",
            "--jobs",
            "1",
            "--quiet",
            "--out-dir",
            tmp_path / "out",
            "--source-model",
            model,
        ],
        inputs=[model],
    )
