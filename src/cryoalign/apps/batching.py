"""Many alignments from a table: one result line per pair, appended as each pair finishes.

    summary = batch("pairs.tsv", "results.tsv", jobs=2)    # or scheduler="tcp://host:8786"
    summary.ok, summary.errors, summary.skipped

PAIRS.tsv is tab-separated with a header line naming its columns: `source` and `target`
(map paths, relative to the table's folder, or EMDB IDs such as EMD-1234) and optionally
`source_contour`, `target_contour` (blank: the EMDB header's recommended level for an
EMDB ID, else estimated). Other columns are ignored; blank lines and lines starting with
`#` are skipped. The whole table is checked before any work starts.

RESULTS.tsv gets one line per pair (columns: RESULT_COLUMNS), written with a single write
and fsync as the pair finishes, so a killed run leaves only whole lines. A rerun repairs a
cut last line, skips the pairs already listed (ok or error; `retry_errors=True` runs the
errors again) and appends the rest. A failing pair is recorded as status `error` with its
message and never stops the others. What a line holds depends only on its pair and the
configuration, never on the executor or the worker count (except `time_s`).

With a catalogue (`db=`, a folder written by `catalogue.index`), a map the catalogue holds
is loaded from its stored features instead of being prepared again. The batch then uses
the catalogue's parameters: the sampling interval is fixed as `catalogue_config` fixes it
(`sampling_A`, else `default_sampling_A`), and a catalogue without entries prepared with
these parameters is refused (InputError, as `catalogue.search` refuses it). A map is
looked up by the catalogue's own key: its file's SHA-256 and the hash of the parameters
and of the contour the alignment would use — the table's number; when blank, the EMDB
header's level for an EMDB ID, else "estimated" (only an entry indexed without a contour
matches then: an entry indexed at a given contour is never used for a blank cell). The
worker (`pipeline.align(..., stored=...)`) uses the entry only when it was prepared from
exactly the voxel values the alignment starts from (`prepare.map_hash`, after
`robust.without_outliers`) at the same contour; otherwise, and for every map the
catalogue does not hold, the map is prepared as usual. So a line is the
same with or without the catalogue (except `time_s` and `from_db`) when the batch without
it is given the same sampling interval.

Over 500 lines: reading the table, resuming RESULTS.tsv, the catalogue's prepared maps and the
workers share one line format and one resume rule; split, each part would need the others.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

from ..config import AlignConfig
from ..errors import InputError
from ..executor import run_tasks
from ..io import emdb
from ..io.files import file_sha256, write_text
from .catalogue.store import catalogue_config, params_hash, stored_features, stored_params

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("source", "target")
CONTOUR_COLUMNS = ("source_contour", "target_contour")
RESULT_COLUMNS = (
    "source",
    "target",
    "source_contour",
    "target_contour",  # the pair as written in PAIRS.tsv (the key)
    "status",  # ok / error
    "score",
    "correlation",
    "confidence",
    "ambiguous",
    "mode",
    "source_contour_used",
    "target_contour_used",  # given, from the EMDB header, or estimated
    "matrix",  # T_target_source, 16 numbers row-major
    "time_s",
    "error",
    "from_db",  # maps loaded from the catalogue: source,target /
    # source / target / - (none); blank without one
    "options",  # the options the line was made with (`options_text`)
)
MAX_LISTED_PROBLEMS = 10


@dataclass(frozen=True)
class Pair:
    line: int  # line number in PAIRS.tsv (1-based)
    source: str  # as written in the table
    target: str
    source_contour: float | None
    target_contour: float | None
    source_spec: str  # what is aligned: an absolute path or an EMDB ID
    target_spec: str

    @property
    def key(self) -> tuple:
        return (self.source, self.target, _cell(self.source_contour), _cell(self.target_contour))

    @property
    def maps(self) -> dict:
        """{"source": (spec, contour), "target": (spec, contour)}: what each map is aligned as."""
        return {"source": (self.source_spec, self.source_contour), "target": (self.target_spec, self.target_contour)}


@dataclass(frozen=True)
class BatchSummary:
    pairs: int  # distinct pairs in the table
    ran: int  # aligned in this run ...
    ok: int  # ... of which succeeded
    errors: int  # ... of which failed (status error)
    skipped: int  # already in RESULTS.tsv
    out_path: str
    time_s: float
    report: str | None = None  # the HTML report of the whole table (`write_report`), None when not written

    def __repr__(self):
        return (
            f"<BatchSummary pairs={self.pairs} ran={self.ran} ok={self.ok} errors={self.errors} "
            f"skipped={self.skipped} {self.time_s:.1f}s>"
        )


def batch(
    pairs_tsv,
    out_tsv,
    *,
    jobs: int | None = None,
    scheduler: str | None = None,
    config: AlignConfig | None = None,
    db=None,
    retry_errors: bool = False,
    progress: bool = False,
) -> BatchSummary:
    """Align every pair of `pairs_tsv`, appending one line per pair to `out_tsv`.

    jobs: local worker processes (None: all cores); scheduler: a Dask distributed
    scheduler address instead (the workers must see the same file paths). Each
    alignment runs single-process inside its worker (`config.jobs` is set to 1).
    db: a catalogue folder (`catalogue.index`): the maps it holds are not prepared
    again, and the pairs are aligned with its parameters (module docstring)."""
    started = time.perf_counter()
    pairs = _unique(read_pairs(pairs_tsv))
    config = (config or AlignConfig()).replace(jobs=1)
    stored = None
    if db is not None:
        config = catalogue_config(config)
        stored = stored_features(db, config)
        log.info(
            "catalogue %s: the maps it holds are loaded, not prepared; every pair is aligned with its "
            "parameters (sampling interval %g Å)",
            os.fspath(db),
            config.sampling_A,
        )
    out_tsv = os.fspath(out_tsv)
    options = options_text(config)
    finished = prepare_results(out_tsv, retry_errors=retry_errors, options=options)
    todo = [pair for pair in pairs if pair.key not in finished]
    if len(todo) < len(pairs):
        log.info("%d of %d pairs already in %s: skipped", len(pairs) - len(todo), len(pairs), out_tsv)
    found = None
    if stored is not None and todo:
        found = find_stored(todo, stored, config, jobs=jobs, scheduler=scheduler, progress=progress)
    settings = dataclasses.asdict(config)
    tasks = [
        dict(
            source=p.source_spec,
            target=p.target_spec,
            source_contour=p.source_contour,
            target_contour=p.target_contour,
            config=settings,
            features=None if found is None else {role: found.get(m) for role, m in p.maps.items()},
        )
        for p in todo
    ]
    ok = errors = 0
    fd = os.open(out_tsv, os.O_WRONLY | os.O_APPEND)
    try:
        for index, outcome in run_tasks(
            align_pair, tasks, jobs=jobs, scheduler=scheduler, progress=progress, desc="pairs"
        ):
            pair = todo[index]
            _append_line(fd, format_row(pair, dict(outcome, options=options)))
            if outcome["status"] == "ok":
                ok += 1
                log.info(
                    "line %d: %s -> %s: score %.3f (%.1f s%s)",
                    pair.line,
                    pair.source,
                    pair.target,
                    outcome["score"],
                    outcome["time_s"],
                    "" if outcome["from_db"] is None else f"; from the catalogue: {outcome['from_db']}",
                )
            else:
                errors += 1
                log.warning("line %d: %s -> %s failed: %s", pair.line, pair.source, pair.target, outcome["error"])
    finally:
        os.close(fd)
    report = write_report(out_tsv)
    return BatchSummary(
        pairs=len(pairs),
        ran=ok + errors,
        ok=ok,
        errors=errors,
        skipped=len(pairs) - len(todo),
        out_path=out_tsv,
        time_s=time.perf_counter() - started,
        report=report,
    )


REPORT_TITLE = "cryoalign batch"


def report_paths(out_tsv: str) -> tuple[str, str]:
    """(report.html, scores.png) beside RESULTS.tsv: RESULTS.html and RESULTS_scores.png."""
    stem = os.path.splitext(out_tsv)[0]
    return stem + ".html", stem + "_scores.png"


def write_report(out_tsv: str) -> str | None:
    """Write the HTML report of the whole results table (every line, this run's and earlier
    ones; scores by verdict as a picture) and return its path.  A file of that name that
    cryoalign did not write is left alone (warning; the table is the result)."""
    from ..io import pictures
    from ..io.report import batch_sections
    from ..io.report import write_report as write_page

    page, image = report_paths(out_tsv)
    ours = os.path.exists(page) and _our_page(page)
    for path in (page, image):
        if os.path.exists(path) and not ours:
            log.warning(
                "warning: %s exists and was not written by cryoalign batch: no report written (move it "
                "away to get one)",
                path,
            )
            return None
    with open(out_tsv, encoding="utf-8", errors="replace") as fh:
        lines = fh.read().splitlines()
    rows = [dict(zip(RESULT_COLUMNS, line.split("\t"))) for line in lines[1:] if line]
    try:
        pictures.batch_scores(rows, image)
        write_page(page, REPORT_TITLE, batch_sections(rows, [image], out_tsv=out_tsv))
    except InputError as exc:  # an unwritable folder: the table is written, the report is extra
        log.warning("warning: no report written: %s", exc)
        return None
    return page


def _our_page(path: str) -> bool:
    with open(path, "rb") as fh:
        return f"<title>{REPORT_TITLE}</title>".encode() in fh.read(600)


# ----------------------------------------------------------------------------- the task
def align_pair(task: dict) -> dict:
    """Align one pair (runs in a worker): task = {source, target, source_contour,
    target_contour, config (AlignConfig fields), features (None without a catalogue, else
    {"source": .npz path or None, "target": ...})} -> a small dict of plain values.
    Every exception becomes status "error" with a one-line message."""
    from ..core.pipeline import align

    started = time.perf_counter()
    try:
        result = align(
            task["source"],
            task["target"],
            source_contour=task["source_contour"],
            target_contour=task["target_contour"],
            config=AlignConfig(**task["config"]),
            stored=task["features"],
        )
        loaded = result.params.get("from_catalogue")
        from_db = None if loaded is None else ",".join(loaded) or "-"
        params = result.params
        return dict(
            status="ok",
            score=float(result.score.value),
            correlation=_optional_float(result.score.correlation),
            confidence=(result.confidence or {}).get("verdict"),
            ambiguous=bool(result.ambiguous),
            mode=params.get("mode"),
            source_contour_used=_optional_float(params.get("source_contour")),
            target_contour_used=_optional_float(params.get("target_contour")),
            matrix=[float(v) for row in result.T_target_source for v in row],
            time_s=round(time.perf_counter() - started, 3),
            error=None,
            from_db=from_db,
        )
    except Exception as exc:  # recorded on the pair's line; the other pairs go on
        message = " ".join(str(exc).split())
        if not isinstance(exc, InputError):
            message = f"{type(exc).__name__}: {message}"
        return dict(status="error", time_s=round(time.perf_counter() - started, 3), error=message)


def _optional_float(value) -> float | None:
    return None if value is None else float(value)


# ----------------------------------------------------------------------------- the catalogue lookup
def find_stored(
    pairs: list[Pair], stored: dict, config: AlignConfig, *, jobs=None, scheduler=None, progress=False
) -> dict:
    """{(map spec, contour as in the table): .npz path} of the pairs' maps that the
    catalogue holds (`stored`: `catalogue.stored_features`), looked up by its key: the
    file's hash (computed by the workers) and `params_hash` of the parameters and of the
    contour the alignment would use (the table's; blank: the EMDB header's, else None)."""
    params = stored_params(config)
    wanted = {m for p in pairs for m in p.maps.values()}
    specs = sorted({spec for spec, _ in wanted})
    keys = {}
    for i, key in run_tasks(map_key, specs, jobs=jobs, scheduler=scheduler, progress=progress, desc="hashing"):
        keys[specs[i]] = key
    found = {}
    for spec, contour in wanted:
        key = keys[spec]
        if key is None:
            continue
        asked = contour if contour is not None else key["recommended"]
        npz = stored.get((key["file_hash"], params_hash(params, asked)))
        if npz is not None:
            found[(spec, contour)] = npz
    log.info("%d of %d map(s) (at their contours) found in the catalogue", len(found), len(wanted))
    return found


def map_key(spec: str) -> dict | None:
    """One map's part of the catalogue key (runs in a worker): {file_hash, recommended (the
    EMDB header's contour, or None)}; None when the map cannot be had (its pairs say why)."""
    try:
        path, recommended, _ = emdb.resolve_map(spec)
        return dict(file_hash=file_sha256(path), recommended=recommended)
    except (InputError, OSError):
        return None


# ----------------------------------------------------------------------------- the pairs table
def read_pairs(pairs_tsv) -> list[Pair]:
    """Read and check PAIRS.tsv; every problem (missing columns, unknown files, bad
    contours) is reported at once, with its line number, in one InputError."""
    path = Path(pairs_tsv)
    if not path.is_file():
        raise InputError(f"pairs table not found: {path}")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read the pairs table {path} ({exc}); give a tab-separated text file") from None
    numbered = [(n, line) for n, line in enumerate(lines, 1) if line.strip() and not line.lstrip().startswith("#")]
    if not numbered:
        raise InputError(f"{path} is empty; its first line must name the tab-separated columns source and target")
    columns = [name.strip() for name in numbered[0][1].split("\t")]
    missing = [name for name in REQUIRED_COLUMNS if name not in columns]
    if missing:
        raise InputError(
            f"{path}: the header line lacks the column(s) {', '.join(missing)} (found: "
            f"{', '.join(columns)}); the first line must name the tab-separated columns source "
            "and target, optionally source_contour and target_contour"
        )
    folder = path.resolve().parent
    pairs, problems = [], []
    for n, line in numbered[1:]:
        fields = [value.strip() for value in line.split("\t")]
        if len(fields) > len(columns):
            problems.append(f"line {n}: {len(fields)} tab-separated fields, the header names {len(columns)}")
            continue
        row = dict(zip(columns, fields + [""] * (len(columns) - len(fields))))
        specs = {name: _map_spec(row[name], name, n, folder, problems) for name in REQUIRED_COLUMNS}
        contours = {name: _contour(row.get(name, ""), name, n, problems) for name in CONTOUR_COLUMNS}
        pairs.append(
            Pair(
                line=n,
                source=row["source"],
                target=row["target"],
                source_spec=specs["source"],
                target_spec=specs["target"],
                **contours,
            )
        )
    if problems:
        listed = "; ".join(problems[:MAX_LISTED_PROBLEMS])
        more = f"; and {len(problems) - MAX_LISTED_PROBLEMS} more" if len(problems) > MAX_LISTED_PROBLEMS else ""
        raise InputError(f"{path} has {len(problems)} problem(s): {listed}{more}; fix the table and rerun")
    if not pairs:
        raise InputError(f"{path} lists no pairs below its header line")
    return pairs


def _map_spec(text: str, column: str, line: int, folder: Path, problems: list) -> str:
    if not text:
        problems.append(f"line {line}: no {column}")
        return ""
    if emdb.is_emdb_id(text) and not (folder / text).exists():
        return text
    path = folder / text
    if not path.exists():
        problems.append(f"line {line}: {column} file not found: {text}")
    elif path.is_dir():
        problems.append(f"line {line}: {column} {text} is a folder, not a map file")
    return str(path)


def _contour(text: str, column: str, line: int, problems: list) -> float | None:
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        problems.append(f"line {line}: {column} {text!r} is not a number")
        return None
    return value


def _unique(pairs: list[Pair]) -> list[Pair]:
    first_line, unique = {}, []
    for pair in pairs:
        if pair.key in first_line:
            log.info("line %d repeats the pair on line %d: aligned once", pair.line, first_line[pair.key])
            continue
        first_line[pair.key] = pair.line
        unique.append(pair)
    return unique


# ----------------------------------------------------------------------------- the results table
def options_text(config: AlignConfig) -> str:
    """What a line records of the options it was made with: the configuration's fields
    that differ from the defaults (`jobs` aside: it never changes a result), compact JSON
    ("{}": the defaults)."""
    defaults, mine = dataclasses.asdict(AlignConfig()), dataclasses.asdict(config)
    changed = {k: v for k, v in mine.items() if k != "jobs" and v != defaults.get(k)}
    return json.dumps(changed, sort_keys=True, separators=(",", ":"))


def _shown_options(text: str) -> str:
    try:
        changed = json.loads(text)
    except ValueError:
        return text
    return ", ".join(f"{k}={v!r}" for k, v in sorted(changed.items())) or "the defaults"


def prepare_results(out_tsv: str, *, retry_errors: bool = False, options: str | None = None) -> set:
    """Make `out_tsv` ready for appending and return the keys of the pairs it already holds.

    Creates it with the header line; cuts away a last line without its newline (a
    run killed while writing); with `retry_errors` drops the error lines so those
    pairs run again.  options (`options_text` of this run): lines made with other
    options are refused (InputError) rather than silently reused; lines written before
    the options were recorded are reused, with a warning."""
    folder = os.path.dirname(os.path.abspath(out_tsv))
    if not os.path.isdir(folder):
        raise InputError(f"cannot write {out_tsv}: folder {folder} does not exist; create it first")
    header = "\t".join(RESULT_COLUMNS) + "\n"
    if not os.path.exists(out_tsv) or os.path.getsize(out_tsv) == 0:
        write_text(out_tsv, header, journal=False)  # resumable: kept when the run stops
        return set()
    with open(out_tsv, "rb") as fh:
        raw = fh.read()
    if not raw.endswith(b"\n"):
        keep = raw.rfind(b"\n") + 1
        log.warning("%s ends with an incomplete line (a run stopped while writing it): removed", out_tsv)
        os.truncate(out_tsv, keep)
        raw = raw[:keep]
        if not raw:
            write_text(out_tsv, header, journal=False)  # resumable: kept when the run stops
            return set()
    lines = raw.decode("utf-8", errors="replace").splitlines()
    for missing in (2, 1):  # written by 0.2.0 (no from_db, no options) or before the options column
        if lines[0] == "\t".join(RESULT_COLUMNS[:-missing]):
            added = RESULT_COLUMNS[-missing:]
            log.info("%s: written before the %s column(s); added (blank on its lines)", out_tsv, ", ".join(added))
            lines = [lines[0] + "".join("\t" + c for c in added)] + [
                line + "\t" * missing if line else line for line in lines[1:]
            ]
            write_text(out_tsv, "".join(line + "\n" for line in lines), journal=False)
            break
    if lines[0] + "\n" != header:
        raise InputError(
            f"{out_tsv} is not a cryoalign batch results table (its first line is not the expected "
            "header); give another output file or move it away"
        )
    rows = [dict(zip(RESULT_COLUMNS, line.split("\t"))) for line in lines[1:] if line]
    if options is not None:
        _check_options(out_tsv, rows, options)
    if retry_errors and any(row.get("status") != "ok" for row in rows):
        kept = [line for line, row in zip(lines[1:], rows) if row.get("status") == "ok"]
        log.info("%d error line(s) removed from %s: those pairs run again", len(rows) - len(kept), out_tsv)
        write_text(out_tsv, header + "".join(line + "\n" for line in kept), journal=False)
        rows = [row for row in rows if row.get("status") == "ok"]
    return {
        (row.get("source"), row.get("target"), row.get("source_contour", ""), row.get("target_contour", ""))
        for row in rows
    }


def _check_options(out_tsv: str, rows: list, options: str) -> None:
    other = [row for row in rows if row.get("options") and row["options"] != options]
    if other:
        raise InputError(
            f"{out_tsv} holds {len(other)} line(s) made with other options "
            f"({_shown_options(other[0]['options'])}) than this run ({_shown_options(options)}); "
            "rerun with the options of those lines, or give another --out (one results table holds "
            "one set of options)"
        )
    unknown = sum(1 for row in rows if not row.get("options"))
    if unknown:
        log.warning(
            "warning: %d line(s) of %s were written before the options were recorded: reused as they "
            "are (give another --out to align those pairs with this run's options)",
            unknown,
            out_tsv,
        )


def format_row(pair: Pair, outcome: dict) -> str:
    """One RESULTS.tsv line (with its newline) for a pair and its task's outcome."""
    values = dict(
        outcome,
        source=pair.source,
        target=pair.target,
        source_contour=pair.source_contour,
        target_contour=pair.target_contour,
    )
    return "\t".join(_cell(values.get(name)) for name in RESULT_COLUMNS) + "\n"


def _cell(value) -> str:
    """Text of one field: floats with repr (round-trips exactly), lists comma-separated."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(float(value))  # numpy floats too, without their type name
    if isinstance(value, (list, tuple)):
        return ",".join(_cell(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    return " ".join(str(value).split())  # no tab or newline may break the line


def _append_line(fd: int, line: str) -> None:
    """One write, then fsync: a run killed at any moment leaves only whole lines
    (at worst a last line without its newline, cut away by the next run)."""
    data = line.encode("utf-8")
    written = os.write(fd, data)
    if written != len(data):
        raise OSError(f"short write to the results table ({written} of {len(data)} bytes)")
    os.fsync(fd)
