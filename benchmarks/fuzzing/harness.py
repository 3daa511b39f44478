"""Running cryoalign on a case and classifying the outcome.

A case runs in a worker process (spawned, single-threaded BLAS/numba, own process group,
RLIMIT_AS limit), in a fresh case folder (``in/`` inputs, ``out/`` outputs; the worker's cwd):

  1. the library: ``cryoalign.read_map`` on the map under test (a valid DensityMap or InputError);
  2. the CLI: ``cryoalign.cli.main(["align", ...])`` in-process, stdout/stderr captured, warnings
     recorded; or, for the `concurrent` family, two ``python -m cryoalign align ... --out-dir SAME``
     subprocesses started at once.

The case folder is snapshotted (sha256 of every file) before and after, to find modified inputs
and partial outputs; a soft timeout (SIGALRM) and a hard kill by the parent catch hangs.
"""

from __future__ import annotations

import collections
import contextlib
import faulthandler
import hashlib
import io
import json
import os
import pathlib
import re
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import time
import traceback
import warnings

from .generators import BASE_MAPS, DATA, MODELS, PARTNER, Case, make_case

OUTCOMES = (
    "ok",
    "clean error",
    "crash",
    "hang",
    "partial output",
    "input modified",
    "bad message",
    "bad result",
    "accepted bad map",
    "refused good map",
)
FAILURES = OUTCOMES[2:]
# the first that applies names the outcome of a case
PRECEDENCE = (
    "crash",
    "input modified",
    "partial output",
    "accepted bad map",
    "bad message",
    "bad result",
    "refused good map",
)

HARD_GRACE_S = 25.0  # the parent kills a worker this long after the soft timeout


def case_timeout(opts, mode):
    """Seconds a case may take: `--full-timeout` for a whole alignment (a small map placed locally
    into a large one can run the exhaustive scan: 35-40 s on a quiet machine), `--timeout` otherwise."""
    return opts.get("full_timeout", opts["timeout"]) if mode == "full" else opts["timeout"]


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


TEMP_NAME = re.compile(r"(^|\.)tmp-|\.old-[0-9a-f]{8}$")  # atomic_write / output_folder temporaries


def is_temp(rel: str) -> bool:
    return bool(TEMP_NAME.search(os.path.basename(rel)))


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
    if (
        not np.allclose(M[3], [0, 0, 0, 1])
        or not np.allclose(R @ R.T, np.eye(3), atol=1e-6)
        or abs(np.linalg.det(R) - 1) > 1e-6
    ):
        return "matrix is not a rigid transform"
    return None


TB_FRAME = re.compile(r'File "([^"]+)", line (\d+),? in (\S+)')  # traceback and faulthandler


def normalize(text: str) -> str:
    """A message with file paths replaced by PATH, for grouping."""
    return re.sub(r"(?<![\w.])/(?:[^\s:;,'/]+/)+[^\s:;,']*", "PATH", text)


def cryoalign_frames(tb_text: str, newest_first=False) -> list:
    """'module.py:function' of the cryoalign frames of a traceback, outermost first."""
    frames = [f"{os.path.basename(f)}:{func}" for f, _, func in TB_FRAME.findall(tb_text) if "/cryoalign/" in f]
    return frames[::-1] if newest_first else frames


def stage_of(frames: list) -> str:
    """The pipeline stage a stuck run was in: the frame called by pipeline.align (or the innermost)."""
    for outer in ("pipeline.py:align", "align.py:run"):
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
    for f, _line, func in TB_FRAME.findall(tb_text):
        if "/cryoalign/" in f:
            where = f"{os.path.basename(f)}:{func}"
    return f"{exc_type} @ {where}"


# ----------------------------------------------------------------------------- checks
ERROR_PREFIX = "cryoalign: error: "
# library parameter names that the CLI must show as flags ("--source-contour 35.5", not "source_contour=35.5")
PARAM_NAMES = re.compile(r"(?<![\w-])(source_contour|target_contour|sampling_A|voxel_A|max_hypotheses)(?![\w])")
WARNING_LINE = re.compile(r"\b[A-Z]\w*Warning\b:")
HIDDEN_BY_DEFAULT = ("DeprecationWarning", "PendingDeprecationWarning", "ImportWarning", "ResourceWarning")
OUT_DIR_FILES = (".cryoalign", "result.json", "params.json", "source_on_target.mrc", "superposition.cxc")
# written by newer versions (pictures): allowed in an --out-dir, not required
OPTIONAL_OUT_DIR_FILE = re.compile(r"^(report\.html|[\w-]+\.png)$")


def option(argv, name):
    """The value of the last `name VALUE` / `name=VALUE` in argv (None when absent)."""
    value = None
    for i, a in enumerate(argv):
        if a == name and i + 1 < len(argv):
            value = argv[i + 1]
        elif a.startswith(name + "="):
            value = a[len(name) + 1 :]
    return value


def check_library(case, folder, res, problems) -> str:
    """1. read_map on the map under test; returns the traceback text of a crash ('' otherwise)."""
    import cryoalign

    if case.map_path is None:
        return ""
    path = (
        case.map_path
        if os.path.isabs(case.map_path) or case.map_path in ("", "-", ".")
        else str(folder / case.map_path)
    )
    try:
        m = cryoalign.read_map(path)
        bad = check_density(m)
        res["api"] = "map" if not bad else "invalid map: " + ", ".join(bad)
        if bad:
            problems.append(("crash", "read_map returned an invalid map: " + ", ".join(bad)))
        elif case.expect == "refuse":
            problems.append(("accepted bad map", f"read_map accepted it ({case.kind})"))
        del m
    except cryoalign.InputError as exc:
        res["api"] = "InputError"
        msg = str(exc)
        res["api_message"] = msg
        if not msg.strip():
            problems.append(("bad message", "read_map: empty InputError message"))
        elif "\n" in msg:
            problems.append(("bad message", "read_map: multi-line InputError message"))
        elif msg.rstrip().endswith(":") and not msg.endswith(": " + path):
            problems.append(
                ("bad message", "read_map: InputError message without a reason: '" + normalize(msg)[-60:] + "'")
            )
        if case.expect == "accept":
            problems.append(
                (
                    "refused good map",
                    f"read_map refused it ({case.kind}): "
                    + re.sub(r"\d+(\.\d+)?(e[+-]?\d+)?", "#", normalize(msg))[:100],
                )
            )
    except Exception:  # noqa: BLE001
        res["api"] = "crash"
        tb = traceback.format_exc()
        problems.append(("crash", "read_map raised " + tb.strip().splitlines()[-1][:200]))
        return tb
    return ""


def run_cli_inprocess(argv):
    """2. cryoalign.cli.main(argv) with stdout/stderr captured: (code, stdout, stderr, warnings)."""
    from cryoalign.cli import main

    out, err = io.StringIO(), io.StringIO()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
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
    return code, out.getvalue(), err.getvalue(), list(caught)


def check_messages(case, code, stdout, stderr, caught, problems, map_arg=None):
    """Exit code, the one error line, stdout on error, leaked warnings, parameter names instead of
    flags; and, for a map that must be refused, an error that names it."""
    if code not in (0, 2) or "Traceback" in stderr:
        problems.append(("crash", f"exit {code}" + (" with a traceback" if "Traceback" in stderr else "")))
        return
    lines = stderr.strip().splitlines()
    if code == 2:
        errors = [ln for ln in lines if ln.startswith(ERROR_PREFIX)]
        if len(errors) != 1:
            problems.append(("bad message", f"{len(errors)} 'cryoalign: error:' lines"))
        elif lines[-1] != errors[0]:
            problems.append(
                (
                    "bad message",
                    f"multi-line error message ({len(lines) - 1 - lines.index(errors[0])} "
                    f"more line(s) after it): '{normalize(errors[0])[-60:]}'",
                )
            )
        elif len(errors[0]) <= len(ERROR_PREFIX) + 3:
            problems.append(("bad message", "empty error message"))
        elif errors[0].rstrip().endswith(":") and case.map_path != "":
            problems.append(("bad message", "error message without a reason: '" + normalize(errors[0])[-60:] + "'"))
        elif PARAM_NAMES.search(errors[0]):
            problems.append(
                (
                    "bad message",
                    "error names a parameter, not its flag: '" + PARAM_NAMES.search(errors[0]).group(1) + "'",
                )
            )
        if stdout.strip():
            problems.append(("bad message", "stdout not empty on error"))
        if case.expect == "refuse" and map_arg is not None and errors and map_arg not in errors[-1]:
            why = re.sub(r"\d+(\.\d+)?(e[+-]?\d+)?", "#", normalize(errors[-1][len(ERROR_PREFIX) :]))[:80]
            problems.append(("accepted bad map", f"exit 2 for another reason ({why})"))
    elif case.expect == "refuse":
        problems.append(("accepted bad map", f"exit 0 ({case.kind})"))
    leaked = sorted(
        {f"{w.category.__name__}: {w.message}" for w in caught if w.category.__name__ not in HIDDEN_BY_DEFAULT}
    )
    if leaked:
        problems.append(("bad message", "warning leaked: " + normalize(leaked[0])[:100]))
    shown = [ln for ln in lines if WARNING_LINE.search(ln)]
    if shown:
        problems.append(("bad message", "warning on stderr: " + normalize(shown[0])[:100]))


def read_json(path):
    try:
        with open(path) as fh:
            return json.load(fh), None
    except Exception as exc:  # noqa: BLE001
        return None, f"JSON unreadable: {type(exc).__name__}: {exc}"


def expected_out_dir_files(doc, argv) -> set:
    """The files of a complete `align --out-dir` run (result.json `doc`, the run's argv)."""
    names = set(OUT_DIR_FILES)
    model = option(argv, "--source-model")
    if model:
        low = model.lower()[:-3] if model.lower().endswith(".gz") else model.lower()
        suffix = ".cif" if low.endswith((".cif", ".mmcif")) else ".pdb"
        names.add("source_model_on_target" + suffix)
        if doc.get("params", {}).get("mode") == "local":
            names |= {f"source_model_rank{k}{suffix}" for k in range(2, len(doc.get("candidates", [])) + 1)}
    return names


def check_result(argv, code, problems):
    """Exit 0: the JSON (--json, else OUT/result.json) holds a finite rigid 4x4 matrix; an --out-dir
    holds exactly the files of one complete run."""
    if code != 0:
        return
    json_path = option(argv, "--json")
    out_dir = option(argv, "--out-dir")
    if json_path is None and out_dir:
        json_path = os.path.join(out_dir, "result.json")
    if json_path is None:
        problems.append(("bad result", "exit 0 but no JSON requested (fuzzer bug)"))
        return
    doc, why = read_json(json_path)
    why = why or check_matrix(doc)
    if why:
        problems.append(("bad result", why))
        return
    if out_dir:
        present = set(os.listdir(out_dir)) if os.path.isdir(out_dir) else set()
        expected = expected_out_dir_files(doc, argv)
        if not same_files(present, expected):
            problems.append(("bad result", "--out-dir holds " + describe_difference(present, expected)))


def same_files(present, expected) -> bool:
    """The files of an --out-dir are the expected ones, plus optional pictures/report."""
    return expected <= present and all(p in expected or OPTIONAL_OUT_DIR_FILE.match(p) for p in present)


def describe_difference(present, expected) -> str:
    extra = sorted(p for p in present - expected if not OPTIONAL_OUT_DIR_FILE.match(p))
    missing = sorted(expected - present)
    parts = ([f"extra {', '.join(extra[:4])}"] if extra else []) + (
        [f"missing {', '.join(missing[:4])}"] if missing else []
    )
    return "; ".join(parts) or "the expected files"


def check_files(case, before, after, code, problems):
    """Inputs unchanged; after a failure nothing new or changed; after a success no temp left
    (folders of an earlier run, `case.replaced_dirs`, may be replaced on success)."""
    inputs = set(case.inputs)
    for rel in inputs:
        if before.get(rel) != after.get(rel):
            problems.append(("input modified", f"{rel} changed or vanished"))
    if _DATA_HASHES and data_hashes() != _DATA_HASHES:
        problems.append(("input modified", "a file in tests/data changed"))
    replaced = tuple(d + os.sep for d in case.replaced_dirs)
    for rel, entry in before.items():
        if rel in inputs or after.get(rel) == entry:
            continue
        if code == 0 and (rel + os.sep).startswith(replaced):
            continue
        problems.append(
            ("partial output" if code != 0 else "input modified", f"pre-existing {rel} changed or vanished")
        )
    new = sorted(set(after) - set(before))
    temps = [p for p in new if is_temp(p)]
    if code != 0 and new:
        problems.append(("partial output", "left after a failed run: " + ", ".join(new[:5])))
    elif temps:
        problems.append(("partial output", "temp files left: " + ", ".join(temps[:5])))


def classify(case, res, problems, crash_tb):
    kinds = [k for k, _ in problems]
    outcome = next((k for k in PRECEDENCE if k in kinds), None)
    if outcome is None:
        outcome = "ok" if res["exit"] == 0 else "clean error"
    res["outcome"] = outcome
    res["problems"] = [f"{k}: {why}" for k, why in problems]
    if outcome == "crash":
        res["signature"] = crash_signature(crash_tb) if crash_tb else problems[0][1]
    elif outcome in FAILURES:
        why = next(why for k, why in problems if k == outcome)
        if outcome == "bad message":
            why = re.sub(r"\(\d+ more line", "(N more line", why)
            why = re.sub(r"'[^']*'$", "", why) if why.startswith("multi-line") else why
        if outcome in ("partial output", "bad result"):
            res["signature"] = f"{case.family}/{case.kind}: " + re.sub(r"\d+", "#", why)[:110]
        elif outcome in ("accepted bad map", "refused good map"):
            res["signature"] = f"{case.family}: " + re.sub(r"\(\w+\)$", "", why)[:120]
        else:
            res["signature"] = why[:120]
    return res


# ----------------------------------------------------------------------------- one case
def new_result(case, argv):
    return dict(
        index=case.index,
        family=case.family,
        kind=case.kind,
        mode=case.mode,
        desc="; ".join(case.desc),
        argv=argv,
        api="",
        exit=None,
        outcome=None,
        problems=[],
        signature="",
        stderr="",
        seconds=0.0,
        warnings=0,
        expect=case.expect or "",
    )


def run_case(case: Case, folder: pathlib.Path, timeout: float) -> dict:
    """Materialize and run one case; the classification dict."""
    if case.family == "concurrent":
        return run_concurrent(case, folder, timeout)
    if case.family == "signal":
        return run_signal(case, folder, timeout)
    if case.family == "readonly":
        return run_readonly(case, folder, timeout)
    materialize(case, folder)
    argv = [a.replace("{case}", str(folder)) for a in case.argv]
    map_arg = None
    if case.map_path is not None:
        map_arg = case.map_path if os.path.isabs(case.map_path) else str(folder / case.map_path)
    before = snapshot(folder)
    res = new_result(case, argv)
    t0 = time.perf_counter()
    old_cwd = os.getcwd()
    os.chdir(folder)
    signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    problems = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            crash_tb = check_library(case, folder, res, problems)  # 1. the library
        code, stdout, stderr, caught = run_cli_inprocess(argv)  # 2. the command line
    except CaseTimeout:
        signal.setitimer(signal.ITIMER_REAL, 0)
        os.chdir(old_cwd)
        frames = cryoalign_frames(traceback.format_exc())
        res.update(
            outcome="hang",
            seconds=time.perf_counter() - t0,
            signature=f"timeout > {timeout:g} s in {stage_of(frames)}",
            problems=[f"exceeded {timeout:g} s; interrupted in {' > '.join(frames[-4:]) or '?'}"],
        )
        return res
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        os.chdir(old_cwd)
    res["seconds"] = time.perf_counter() - t0
    res["exit"] = code
    res["stderr"] = stderr[-4000:]
    res["warnings"] = len(caught)
    res["warning_text"] = " | ".join(
        sorted({f"{w.category.__name__}: {w.message} ({os.path.basename(w.filename)}:{w.lineno})" for w in caught})
    )
    error = [ln for ln in stderr.strip().splitlines() if ln.startswith(ERROR_PREFIX)]
    res["message"] = error[-1][len(ERROR_PREFIX) :] if code == 2 and error else ""
    if "Traceback" in stderr:
        crash_tb = stderr
    check_messages(case, code, stdout, stderr, caught, problems, map_arg)
    with contextlib.suppress(OSError):
        os.chdir(folder)  # relative --json / --out-dir paths
        check_result(argv, code, problems)
    os.chdir(old_cwd)
    check_files(case, before, snapshot(folder), code, problems)
    return classify(case, res, problems, crash_tb)


# ----------------------------------------------------------------------------- concurrent runs
def subprocess_env():
    env = dict(os.environ)
    src = str(pathlib.Path(__file__).resolve().parents[2] / "src")
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        env.setdefault(var, "1")
    return env


def run_subprocesses(argvs, cwd, timeout, delays):
    """Start `python -m cryoalign ARGV` for each argv (the k-th `delays[k]` s after the first),
    wait for all; [(code, stdout, stderr, seconds)] (code None: killed after `timeout`)."""
    procs, t0 = [], time.perf_counter()
    env = subprocess_env()
    for argv, delay in zip(argvs, delays):
        wait = t0 + delay - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        procs.append(
            (
                subprocess.Popen(
                    [sys.executable, "-m", "cryoalign", *argv],
                    cwd=cwd,
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    start_new_session=True,
                ),
                time.perf_counter(),
            )
        )
    out = []
    for p, started in procs:
        try:
            so, se = p.communicate(timeout=max(1.0, t0 + timeout - time.perf_counter()))
            out.append((p.returncode, so, se, time.perf_counter() - started))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGKILL)
            so, se = p.communicate()
            out.append((None, so, se, time.perf_counter() - started))
    return out


def check_concurrent_folder(folder, runs, codes, problems):
    """The --out-dir of concurrent runs holds exactly one complete run's files, and they belong
    together: result.json is that run's (its --json), params.json matches, source_on_target.mrc is
    that run's source moved by that matrix onto the target, superposition.cxc holds that matrix and
    opens that run's source map."""
    import numpy as np

    import cryoalign
    from cryoalign.io.maps import resample_onto

    out_dir = option(runs[0], "--out-dir")
    if not os.path.isdir(out_dir):
        problems.append(("bad result", "no --out-dir after the runs"))
        return
    present = set(os.listdir(out_dir))
    doc, why = read_json(os.path.join(out_dir, "result.json"))
    if why:
        problems.append(("bad result", f"result.json in --out-dir: {why}"))
        return
    own = []
    for argv, code in zip(runs, codes):
        run_doc = read_json(option(argv, "--json"))[0] if code == 0 else None
        own.append(run_doc)
    matches = [
        k
        for k, d in enumerate(own)
        if d is not None and d.get("matrix") == doc.get("matrix") and d.get("params") == doc.get("params")
    ]
    if not matches:
        problems.append(("bad result", "result.json in --out-dir is not the result of a successful run"))
        return
    k = matches[-1]
    argv = runs[k]
    expected = expected_out_dir_files(doc, argv)
    if not same_files(present, expected):
        problems.append(
            ("bad result", "--out-dir holds " + describe_difference(present, expected) + f" for run {'AB'[k]}")
        )
    params, why = read_json(os.path.join(out_dir, "params.json"))
    if why or params != doc["params"]:
        problems.append(("bad result", "params.json is not result.json's params"))
    try:
        src = cryoalign.read_map(argv[1])
        tgt = cryoalign.read_map(argv[2])
        expect = resample_onto(src, tgt, np.array(doc["matrix"], float)).data
        got = cryoalign.read_map(os.path.join(out_dir, "source_on_target.mrc")).data
        if got.shape != expect.shape or not np.allclose(
            got, expect, rtol=1e-4, atol=1e-4 * float(np.abs(expect).max())
        ):
            problems.append(("bad result", "source_on_target.mrc is not result.json's run"))
    except Exception as exc:  # noqa: BLE001
        problems.append(("bad result", f"source_on_target.mrc unreadable: {type(exc).__name__}"))
    report = os.path.join(out_dir, "report.html")
    if os.path.exists(report):  # newer versions: the translation is shown as "x, y, z"
        html = open(report, errors="replace").read()

        def shown(d):
            return ", ".join(f"{row[3]:.2f}" for row in d["matrix"][:3])

        others = [d for j, d in enumerate(own) if j != k and d is not None and shown(d) != shown(doc)]
        if shown(doc) not in html and any(shown(d) in html for d in others):
            problems.append(("bad result", "report.html is the other run's"))
    try:
        cxc = open(os.path.join(out_dir, "superposition.cxc")).read()
        M = np.array(doc["matrix"], float)
        flat = ",".join(f"{v:.6f}" for v in M[:3, :].ravel())
        if flat not in cxc or os.path.basename(argv[1]) not in cxc:
            problems.append(("bad result", "superposition.cxc is not result.json's run"))
    except OSError as exc:
        problems.append(("bad result", f"superposition.cxc unreadable: {exc.strerror}"))


def run_concurrent(case: Case, folder: pathlib.Path, timeout: float) -> dict:
    """Family `concurrent`: the runs of `case.runs` as subprocesses at once into one --out-dir."""
    materialize(case, folder)
    runs = [[a.replace("{case}", str(folder)) for a in argv] for argv in case.runs]
    before = snapshot(folder)
    res = new_result(case, runs[0])
    res["argv2"] = runs[1:]
    t0 = time.perf_counter()
    delays = [0.0] + [case.extra.get("delay_s", 0.0)] * (len(runs) - 1)
    outs = run_subprocesses(runs, str(folder), timeout, delays)
    res["seconds"] = time.perf_counter() - t0
    codes = [o[0] for o in outs]
    res["exit"] = "/".join(str(c) for c in codes)
    res["stderr"] = "\n".join(
        f"--- run {'AB'[k]}: exit {o[0]}, {o[3]:.1f} s\n{o[2][-1500:]}" for k, o in enumerate(outs)
    )
    if any(c is None for c in codes):
        res.update(
            outcome="hang",
            signature=f"timeout > {timeout:g} s (concurrent runs)",
            problems=[f"run {'AB'[k]} killed after {timeout:g} s" for k, c in enumerate(codes) if c is None],
        )
        return res
    problems, crash_tb = [], ""
    for code, stdout, stderr, _ in outs:
        if "Traceback" in stderr:
            crash_tb = stderr
        check_messages(case, code, stdout, stderr, [], problems)
    if all(c == 2 for c in codes):
        problems.append(("bad result", "both concurrent runs failed"))
    for argv, code in zip(runs, codes):
        if code == 0:
            doc, why = read_json(option(argv, "--json"))
            why = why or check_matrix(doc)
            if why:
                problems.append(("bad result", f"--json of a successful run: {why}"))
    if any(c == 0 for c in codes):
        check_concurrent_folder(folder, runs, codes, problems)
    code = 0 if any(c == 0 for c in codes) else 2
    check_files(case, before, snapshot(folder), code, problems)
    res["exit"] = "/".join(str(c) for c in codes)
    res_exit = res["exit"]
    res["exit"] = code
    classify(case, res, problems, crash_tb)
    res["exit"] = res_exit
    return res


# ----------------------------------------------------------------------------- signals
SIGNAL_EXIT = {"SIGINT": 130, "SIGTERM": 143, "SIGKILL": -signal.SIGKILL}
ORPHAN_GRACE_S = 5.0  # workers must be gone this long after their parent


def _children(pid) -> list:
    import psutil

    try:
        return [
            c for c in psutil.Process(pid).children(recursive=True) if "resource_tracker" not in " ".join(c.cmdline())
        ]
    except psutil.Error:
        return []


def run_signal(case: Case, folder: pathlib.Path, timeout: float) -> dict:
    """Family `signal`: the command as a subprocess, stopped by case.extra["signal"] once two
    workers exist (or after a delay); then the checks of `gen_signal`, and a rerun."""
    import psutil

    materialize(case, folder)
    argv = [a.replace("{case}", str(folder)) for a in case.argv]
    res = new_result(case, argv)
    problems, crash_tb = [], ""
    sig = getattr(signal, case.extra["signal"])
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "cryoalign", *argv],
        cwd=folder,
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    workers, sent = [], False
    try:
        while proc.poll() is None and time.perf_counter() - t0 < timeout:
            workers = _children(proc.pid) or workers
            if (case.extra["when"] == "workers" and len(workers) >= 2) or (
                case.extra["when"] == "delay" and time.perf_counter() - t0 >= case.extra["delay_s"]
            ):
                proc.send_signal(sig)
                sent = True
                break
            time.sleep(0.02)
        _, stderr = proc.communicate(timeout=max(5.0, timeout - (time.perf_counter() - t0)))
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        res.update(outcome="hang", signature=f"timeout > {timeout:g} s (signal {case.kind})", seconds=timeout)
        return res
    res["seconds"] = time.perf_counter() - t0
    res["exit"] = code = proc.returncode
    res["stderr"] = stderr[-4000:]
    _, alive = psutil.wait_procs([w for w in workers if w.is_running()], timeout=ORPHAN_GRACE_S)
    if alive:
        problems.append(("crash", f"{len(alive)} worker(s) outlived the parent ({case.kind})"))
        for w in alive:
            with contextlib.suppress(psutil.Error):
                w.kill()
    if "Traceback" in stderr:
        crash_tb = stderr
        problems.append(("crash", "traceback after the signal"))
    expected = SIGNAL_EXIT[case.extra["signal"]] if sent else 0
    if code not in (expected, 0):
        problems.append(("crash", f"exit {code} after {case.extra['signal']} (expected {expected})"))
    results = folder / "out" / "results.tsv"
    if results.exists():
        text = results.read_text(errors="replace")
        if case.extra["signal"] != "SIGKILL" and text and not text.endswith("\n"):
            problems.append(("partial output", "results.tsv ends inside a line after a catchable signal"))
    elif (
        case.kind.startswith("batch")
        and case.extra["signal"] != "SIGKILL"
        and sent
        and code == expected
        and "pairs" in case.extra
    ):
        pass  # stopped before the first line: nothing to keep
    # the rerun finishes the work
    rerun = subprocess.run(
        [sys.executable, "-m", "cryoalign", *argv],
        cwd=folder,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    res["stderr"] += f"\n--- rerun: exit {rerun.returncode}\n" + rerun.stderr[-1500:]
    if rerun.returncode != 0:
        problems.append(("bad result", f"the rerun after {case.extra['signal']} exited {rerun.returncode}"))
        if "Traceback" in rerun.stderr:
            crash_tb = rerun.stderr
    elif case.kind.startswith("batch"):
        lines = [ln for ln in results.read_text().splitlines()[1:] if ln]
        keys = [tuple(ln.split("\t")[:2]) for ln in lines]
        if len(keys) != case.extra["pairs"] or len(set(keys)) != len(keys):
            problems.append(
                (
                    "bad result",
                    f"after the rerun results.tsv holds {len(keys)} line(s) "
                    f"({len(set(keys))} pairs) for {case.extra['pairs']} pairs",
                )
            )
    elif case.kind.startswith("variance") and not (folder / "out" / "var" / "variance.mrc").exists():
        problems.append(("bad result", "no variance.mrc after the rerun"))
    res_exit = res["exit"]
    res["exit"] = 0 if not problems else 2
    classify(case, res, problems, crash_tb)
    res["exit"] = res_exit
    return res


# ----------------------------------------------------------------------------- read-only places
READ_ONLY_CAPS = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--"]


def run_readonly(case: Case, folder: pathlib.Path, timeout: float) -> dict:
    """Family `readonly`: the command as a subprocess (under `setpriv` without the permission
    override when run as root, so a read-only folder is read-only); it must exit 2 with one
    error line, write nothing and change no input."""
    materialize(case, folder)
    argv = [a.replace("{case}", str(folder)) for a in case.argv]
    res = new_result(case, argv)
    prefix = READ_ONLY_CAPS if os.geteuid() == 0 and shutil.which("setpriv") else []
    before = snapshot(folder)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            prefix + [sys.executable, "-m", "cryoalign", *argv],
            cwd=folder,
            env=subprocess_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        res.update(outcome="hang", signature=f"timeout > {timeout:g} s (readonly {case.kind})", seconds=timeout)
        return res
    res["seconds"] = time.perf_counter() - t0
    res["exit"] = proc.returncode
    res["stderr"] = proc.stderr[-4000:]
    problems = []
    check_messages(case, proc.returncode, proc.stdout, proc.stderr, [], problems)
    if proc.returncode == 0 and not (os.geteuid() == 0 and not prefix):
        problems.append(("bad result", f"exit 0 writing into {case.extra['place']}"))
    check_files(case, before, snapshot(folder), proc.returncode, problems)
    return classify(case, res, problems, proc.stderr if "Traceback" in proc.stderr else "")


# ----------------------------------------------------------------------------- workers
def _worker(conn, wid, opts):
    os.setpgrp()  # so that the parent can kill this worker and anything it started
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
    stack_file = open(folder / "stack.txt", "w+")  # where a stuck or dying worker is
    faulthandler.enable(file=stack_file)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        main(
            [
                "align",
                str(DATA / PARTNER[0]),
                str(DATA / PARTNER[0]),
                "--source-contour=1.25",
                "--target-contour=1.25",
                "--voxel",
                "8",
                "--jobs",
                "1",
                "--quiet",
            ]
        )  # compile numba kernels
    conn.send(("ready", wid))
    while True:
        msg = conn.recv()
        if msg is None:
            break
        index = msg
        try:
            case = make_case(opts["seed"], index, opts["p_full"], opts["families"])
        except Exception:  # noqa: BLE001  (a fuzzer bug: report it, do not stop)
            conn.send(
                (
                    "result",
                    dict(
                        index=index,
                        family="?",
                        kind="generator",
                        mode="",
                        desc="",
                        argv=[],
                        outcome="crash",
                        signature="fuzzer generator error",
                        problems=[traceback.format_exc()[-500:]],
                        exit=None,
                        api="",
                        stderr="",
                        seconds=0.0,
                        warnings=0,
                    ),
                )
            )
            continue
        conn.send(
            (
                "started",
                dict(
                    index=index,
                    family=case.family,
                    kind=case.kind,
                    mode=case.mode,
                    desc="; ".join(case.desc),
                    argv=case.argv,
                ),
            )
        )
        stack_file.seek(0)
        stack_file.truncate()
        limit = case_timeout(opts, case.mode)
        faulthandler.dump_traceback_later(limit + HARD_GRACE_S - 5, file=stack_file)
        res = run_case(case, folder / "case", limit)
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
        workers[wid] = dict(
            proc=p,
            conn=parent,
            case=None,
            started=None,
            info=None,
            ready=False,
            stack=pathlib.Path(opts["out"]) / "work" / f"w{wid}" / "stack.txt",
        )

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
        for w in list(workers.values()):
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
                    results[w["case"]] = dict(
                        info,
                        outcome="crash",
                        exit=None,
                        api="",
                        signature=f"worker process died (exit code {code}) @ {where(wid)}",
                        problems=[f"worker died, exit code {code}"],
                        stderr="",
                        seconds=time.time() - w["started"],
                        warnings=0,
                    )
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
                if payload["outcome"] == "hang":
                    # the soft timeout interrupted the main thread only: threads the case started may
                    # still run (a segfault in one was blamed on the next case in run 5): start afresh
                    kill(wid)
                    spawn()
        now = time.time()
        for wid, w in list(workers.items()):
            # the mode is known once the worker said "started"; until then the longer limit holds
            limit = case_timeout(opts, (w["info"] or dict(mode="full"))["mode"])
            if w["case"] is not None and now - w["started"] > limit + HARD_GRACE_S:
                info = w["info"] or dict(index=w["case"], family="?", kind="?", mode="", desc="", argv=[])
                results[w["case"]] = dict(
                    info,
                    outcome="hang",
                    exit=None,
                    api="",
                    signature=f"timeout > {limit:g} s in {where(wid)} (killed)",
                    problems=[f"killed after {now - w['started']:.0f} s"],
                    stderr="",
                    seconds=now - w["started"],
                    warnings=0,
                )
                kill(wid)
                spawn()
        if len(results) - done_last >= progress_every:
            done_last = len(results)
            c = collections.Counter(r["outcome"] for r in results.values())
            print(
                f"[{time.time() - t0:7.0f} s] {len(results)}/{len(indices)}  "
                + "  ".join(f"{k}: {c[k]}" for k in OUTCOMES if c[k]),
                flush=True,
            )
    for wid in list(workers):
        with contextlib.suppress(OSError, BrokenPipeError):
            workers[wid]["conn"].send(None)
        workers[wid]["proc"].join(10)
        kill(wid)
    return [results[i] for i in indices]


# ----------------------------------------------------------------------------- replay
def replay(opts, indices):
    """Run single cases in this process, print everything, keep the files."""
    global _DATA_HASHES
    _DATA_HASHES = data_hashes()
    for index in indices:
        case = make_case(opts["seed"], index, opts["p_full"], opts["families"])
        folder = pathlib.Path(opts["out"]) / "replay" / f"case-{index}"
        res = run_case(case, folder, case_timeout(opts, case.mode))
        print(f"case {index} (seed {opts['seed']}): family {case.family}, kind {case.kind}, mode {case.mode}")
        print(f"  mutation: {'; '.join(case.desc)}")
        print(f"  files in: {folder}")
        print(f"  command:  cryoalign {shlex.join(res['argv'])}")
        for argv in res.get("argv2", []):
            print(f"  at once:  cryoalign {shlex.join(argv)}  (started {case.extra.get('delay_s', 0):.2f} s later)")
        if case.expect:
            print(f"  expected: read_map must {case.expect} the map")
        print(f"  read_map: {res['api'] or '-'}")
        sig = f" [{res['signature']}]" if res["signature"] else ""
        print(f"  exit {res['exit']} after {res['seconds']:.2f} s -> {res['outcome']}{sig}")
        for p in res["problems"]:
            print(f"  problem: {p}")
        if res["stderr"]:
            print("  stderr:\n    " + res["stderr"].rstrip().replace("\n", "\n    "))
