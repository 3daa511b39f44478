"""Issue 20.6: what a user meets at the command line (real subprocesses): bad places for
outputs are one line with exit code 2 and leave nothing behind, duplicates are named."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

READ_ONLY_CAPS = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--"]


def _cryoalign(*args, read_only_respected=False, cwd=None):
    """Run the command line; with read_only_respected, root loses its permission override
    (so a read-only folder is read-only for it too)."""
    prefix = []
    if read_only_respected and os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("running as root without setpriv: read-only folders cannot be tested")
        prefix = READ_ONLY_CAPS
    return subprocess.run(
        prefix + [sys.executable, "-m", "cryoalign", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )


def _error_line(proc) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-800:])
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


@pytest.fixture
def places(tmp_path):
    ro = tmp_path / "read-only"
    ro.mkdir()
    (tmp_path / "a-file").write_text("x\n")
    os.chmod(ro, 0o555)
    yield tmp_path
    os.chmod(ro, 0o755)


@pytest.fixture
def monomer(data_dir):
    return data_dir / "emd_5168_monomer.mrc.gz"


def test_variance_out_dir_in_a_read_only_place(places, monomer):
    proc = _cryoalign(
        "variance", monomer, monomer, monomer, "--out-dir", places / "read-only" / "v", read_only_respected=True
    )
    assert _error_line(proc) == (
        f"cryoalign: error: --out-dir {places}/read-only/v: cannot create it: "
        f"{places}/read-only is not writable; choose a writable location for --out-dir"
    )
    assert os.listdir(places / "read-only") == []


def test_variance_out_dir_that_is_a_file(places, monomer):
    proc = _cryoalign("variance", monomer, monomer, monomer, "--out-dir", places / "a-file")
    assert _error_line(proc) == (
        f"cryoalign: error: --out-dir {places}/a-file is a file, not a folder; give a new "
        "folder or one this command wrote"
    )
    proc = _cryoalign("variance", monomer, monomer, monomer, "--out-dir", places / "a-file" / "v")
    assert _error_line(proc) == (
        f"cryoalign: error: cannot create --out-dir {places}/a-file/v: {places}/a-file is "
        "a file; choose another --out-dir"
    )


def test_index_db_in_a_read_only_place(places, monomer):
    proc = _cryoalign("index", monomer, "--db", places / "read-only" / "db", read_only_respected=True)
    assert _error_line(proc) == (
        f"cryoalign: error: --db {places}/read-only/db: cannot create it: "
        f"{places}/read-only is not writable; choose a writable location for --db"
    )
    proc = _cryoalign("index", monomer, "--db", places / "read-only", read_only_respected=True)
    assert _error_line(proc) == (
        f"cryoalign: error: --db {places}/read-only: folder is not writable; choose a writable location for --db"
    )
    assert os.listdir(places / "read-only") == []


def test_index_db_below_a_file(places, monomer):
    proc = _cryoalign("index", monomer, "--db", places / "a-file" / "db")
    assert _error_line(proc) == (
        f"cryoalign: error: cannot create the catalogue {places}/a-file/db: "
        f"{places}/a-file is a file; choose another --db folder"
    )


def test_a_refused_variance_leaves_no_folder_behind(tmp_path, monomer):
    out = tmp_path / "var"
    proc = _cryoalign("variance", monomer, monomer, "--out-dir", out)
    assert _error_line(proc).startswith("cryoalign: error: variance needs at least two maps")
    assert not out.exists()
    table = tmp_path / "contours.tsv"
    table.write_text(f"{monomer}\tlow\n")
    proc = _cryoalign("variance", monomer, monomer, monomer, "--contour-table", table, "--out-dir", out)
    assert "contour 'low' is not a number" in _error_line(proc)
    assert not out.exists()


def test_a_refusal_after_the_folder_exists_removes_the_work_mark(tmp_path, data_dir, monomer):
    # the folder is made, then the map cannot be aligned (not a map): no finished work, nothing kept
    broken = tmp_path / "broken.mrc"
    broken.write_bytes(b"not a map\n" * 50)
    out = tmp_path / "var"
    proc = _cryoalign("variance", monomer, broken, broken, "--out-dir", out, "--jobs", "1")
    assert proc.returncode == 2, proc.stderr
    assert not out.exists(), sorted(os.listdir(out))


def test_the_same_map_twice_is_named(tmp_path, monomer):
    copy = tmp_path / "copy.mrc.gz"
    shutil.copy(monomer, copy)
    proc = _cryoalign("index", monomer, copy, "--db", tmp_path / "db", "--jobs", "1")
    assert proc.returncode == 0, proc.stderr
    assert (
        f"warning: {monomer} and {copy} are the same file (SHA-256 " in proc.stderr
        and "the map is given twice" in proc.stderr
    )
    proc = _cryoalign(
        "variance", monomer, monomer, copy, "--out-dir", tmp_path / "var", "--jobs", "1", "--sampling", "5"
    )
    assert proc.returncode == 0, proc.stderr
    assert (
        f"warning: {monomer} and {copy} are the same file (SHA-256 " in proc.stderr
        and "counts twice in the mean and variance; list each map once" in proc.stderr
    )


def test_a_closed_pipe_is_no_traceback_and_the_outputs_stay(tmp_path, monomer):
    """`cryoalign compare ... | head`: the reader goes away before the summary is printed."""
    matrix = tmp_path / "identity.txt"
    matrix.write_text("1 0 0 0\n0 1 0 0\n0 0 1 0\n")
    out = tmp_path / "compare.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "cryoalign", "compare", monomer, monomer, "--matrix", matrix, "--json", out],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    proc.stdout.close()  # as `head` does once it has read its lines
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 0, err
    assert "Traceback" not in err and "BrokenPipeError" not in err and "internal error" not in err
    assert out.exists()  # written, and not removed as a failed command's output


@pytest.mark.parametrize("mode,hinted", [("local", True), ("global", False), ("auto", False)])
def test_the_swap_hint_only_for_a_local_alignment(caplog, mode, hinted):
    """Issue 20.6: the hint ("did you mean to swap the two maps?") was printed in global mode."""
    import logging

    from cryoalign import AlignConfig
    from cryoalign.core.pipeline import choose_mode_and_sampling

    with caplog.at_level(logging.INFO, logger="cryoalign"):
        config, _ = choose_mode_and_sampling(3.0e6, 1.0e6, AlignConfig(mode=mode))
    assert config.mode == ("local" if mode == "local" else "global")
    assert ("did you mean to swap the two maps?" in caplog.text) == hinted


def test_compare_prints_the_alignments_matrix_and_confidence(monomer):
    """Issue 20.6: compare printed neither the matrix nor the alignment's confidence."""
    proc = _cryoalign("compare", monomer, monomer, "--global", "--sampling", "5", "--quiet")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "T_target_source (source world Å -> target world Å, found by the alignment):"
    import numpy as np

    T = np.array([[float(v) for v in line.split()] for line in lines[1:5]])
    assert np.allclose(T, np.eye(4), atol=0.05)  # the map on itself
    assert any(line.startswith("score ") and "vector agreement" in line for line in lines)
    assert any(line.startswith("confidence high") for line in lines), proc.stdout


def test_the_align_report_has_the_confidence_advice_version_and_agreement(tmp_path, monomer):
    """Issue 20.6: the report lacked the low-confidence advice, the version and the agreement."""
    import dataclasses
    import re

    from cryoalign import AlignConfig, __version__
    from cryoalign.core.confidence import ADVICE
    from cryoalign.core.pipeline import align
    from cryoalign.io.report import align_sections, write_report

    result = align(str(monomer), str(monomer), config=AlignConfig(mode="global", sampling_A=5.0))
    low = dataclasses.replace(result, confidence=dict(result.confidence, verdict="low", advice=ADVICE))
    page = pathlib_text(write_report(tmp_path / "report.html", "cryoalign superposition", align_sections(low, [])))
    text = re.sub(r"<[^>]+>", " ", page)
    assert "Confidence: low" in text
    assert "What to try: check the contours" in text and "--local" in text and "--wide-search always" in text
    assert f"written by cryoalign {__version__}" in text
    assert "vector agreement" in text and f"{result.score.vector_agreement:.4g}" in text


def pathlib_text(path) -> str:
    import pathlib

    return pathlib.Path(path).read_text()


def test_a_forked_worker_does_not_inherit_sigterm_as_an_exception():
    """SIGTERM of the command is handled like Ctrl-C (cli._catch_sigterm); a worker forked
    from it (a local alignment's pool) must still die of SIGTERM when its pool ends it,
    not raise Terminated and print a traceback."""
    import signal

    from cryoalign import cli

    previous = cli._catch_sigterm()
    try:
        pid = os.fork()
        if pid == 0:  # the worker
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                import time

                time.sleep(5)
            finally:
                os._exit(3)  # reached only when SIGTERM raised or was ignored
        _, status = os.waitpid(pid, 0)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM, status


def test_fewer_placements_than_top_are_explained(monomer):
    """Issue 20.6: `--top 5` gave 4 placements without a word: placements are distinct
    poses, and coarse placements that converge onto one pose when refined count once."""
    proc = _cryoalign(
        "align",
        monomer,
        monomer,
        "--local",
        "--top",
        "40",
        "--sampling",
        "5",
        "--jobs",
        "1",
        "--quiet",
        "--wide-search",
        "never",
    )
    assert proc.returncode == 0, proc.stderr
    line = next(line for line in proc.stdout.splitlines() if "fewer than --top 40" in line)
    assert line.endswith(
        "the other coarse placements converged onto these poses when refined (placements are "
        "distinct poses, 3 Å or 10° apart)"
    )
    count = int(line.split()[0])
    ranks = [line for line in proc.stdout.splitlines() if line[:4].strip().isdigit()]
    assert 1 <= count < 40 and len(ranks) == count


def test_help_texts_name_each_commands_own_maps():
    """Issue 20.6: `variance --local` named SOURCE/TARGET, search's ranking and .xz were missing."""
    import contextlib
    import io as _io

    from cryoalign.cli import _parser

    def help_of(command):
        text = _io.StringIO()
        with contextlib.redirect_stdout(text), pytest.raises(SystemExit):
            _parser().parse_args([command, "--help"])
        return " ".join(text.getvalue().split())

    variance = help_of("variance")
    assert "SOURCE" not in variance and "TARGET" not in variance
    assert "--local each MAP is a part of REFERENCE (local alignment) instead of the default whole-map" in variance
    assert "--global whole-map alignment (default)" in variance
    assert "each source is a part of its target" in help_of("batch")
    assert "x coverage (the share of the query the entry covers)" in help_of("search")
    assert ".gz/.bz2/.xz" in help_of("align") and ".gz/.bz2/.xz" in help_of("search")


def test_the_readme_examples_outputs_are_ignored_by_git():
    """Issue 20.6: `example-out/` (the quick start's folder) showed up in `git status`."""
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[1]
    if not (root / ".git").exists() or not shutil.which("git"):
        pytest.skip("not a git checkout")
    for folder in ("example-out", "compare-out", "var-out", "fit-out"):
        proc = subprocess.run(["git", "check-ignore", "-q", f"{folder}/result.json"], cwd=root)
        assert proc.returncode == 0, f"{folder}/ is not in .gitignore"


def test_an_output_below_a_file_names_the_file(places, monomer):
    """Found by the `readonly` fuzz family: `--json a-file/new/r.json` said "folder
    a-file/new does not exist; create it first", which cannot be done."""
    proc = _cryoalign("align", monomer, monomer, "--json", places / "a-file" / "new" / "r.json")
    assert _error_line(proc) == (
        f"cryoalign: error: cannot write {places}/a-file/new/r.json: {places}/a-file is a "
        "file, not a folder; choose another location"
    )
