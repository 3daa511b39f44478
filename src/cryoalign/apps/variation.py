"""Where does a series of maps differ? Align every map to a reference, then the voxel-wise
mean, variance and (optionally) principal components on the reference's grid.

    result = variance("ref.mrc", ["m1.mrc", "m2.mrc", ...], out_dir="var-out", jobs=2)
    result.variance.data, result.records[0]["score"], result.files

1. `align_to_reference` (one task per map, in worker processes via `executor.run_tasks`):
   align the map to the reference (`cryoalign.align`, default mode global), resample it
   on the reference's grid, scale it to the reference's densities (`compare.fit_scale`,
   the same method as `compare`), and store the scaled map (float32 .npy) and a small
   JSON record in ``out_dir/.work/`` (each written to a temporary file and renamed).
   A record is keyed by the map's path, its content hash, the reference's and every
   parameter, so a rerun skips finished maps and an interrupted run resumes.
2. outliers (`outlier_reasons`): a map is left out of the statistics when its alignment
   score (map correlation after refinement) is under SCORE_FLOOR, or more than
   max(OUTLIER_MADS x 1.4826 x MAD, OUTLIER_MIN_GAP) below the median score of the
   series; `keep_all` keeps every map.
3. `welford`: mean and population variance (ddof 0, as `np.var`) in float64, maps read
   one at a time IN INPUT ORDER (results do not depend on finishing order or worker
   count; memory does not grow with the number of maps).
4. components (K > 0): principal components of the kept maps inside the union of
   their contours: the maps' Gram matrix is built block by block from disk (a memory
   budget, not the series length, bounds the block), then each component map is
   ``sum_i u_ik (x_i - mean) / sqrt(n)``: the pattern of one standard deviation along it.

The series is `maps`; the reference only fixes the grid and frame, and counts in the
statistics only when it is also listed in `maps`.  At least two maps are needed.

Over 500 lines: the run (resume, workers, outlier rule), the streaming statistics and the
components share one folder layout and one record format, so they stay together.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import InputError
from ..types import DensityMap

log = logging.getLogger(__name__)

WORK_DIR = ".work"
SCORE_FLOOR = 0.2  # an alignment scoring under this failed, whatever the others
OUTLIER_MADS = 3.0  # robust standard deviations below the median score ...
OUTLIER_MIN_GAP = 0.1  # ... but never closer to the median than this
SLAB = 32  # z-slices per step when streaming maps
PCA_MEMORY_BYTES = 256 * 2**20  # masked maps held at once while building the Gram matrix
MAX_LISTED_PROBLEMS = 10  # problems of a contour table named in its error


@dataclass(frozen=True, eq=False)
class VarianceResult:
    """What `variance` returns. records: one dict per input map, input order (see
    alignments.tsv); components: [{"index", "share", "path"}]; files: paths written."""

    mean: DensityMap
    variance: DensityMap
    records: list
    components: list
    files: list
    params: dict
    timings_s: dict = field(default_factory=dict)

    @property
    def kept(self) -> list:
        return [r for r in self.records if not r["excluded"]]

    def to_json(self) -> dict:
        from .. import __version__

        return {
            "version": __version__,
            "maps": self.records,
            "kept": len(self.kept),
            "components": self.components,
            "params": self.params,
            "timings_s": {k: round(v, 4) for k, v in self.timings_s.items()},
        }

    def __repr__(self):
        return f"<VarianceResult maps={len(self.records)} kept={len(self.kept)} components={len(self.components)}>"


# ----------------------------------------------------------------------------- inputs
def read_contour_table(path) -> dict:
    """``map<TAB>contour`` lines (``#`` comments and blank lines allowed) -> {map: contour}.
    Relative map paths are taken relative to the table's folder.  Every problem of the
    table (with its line number) is reported in one InputError."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputError(f"contour table not found: {path}")
    if os.path.isdir(path):
        raise InputError(f"contour table {path} is a folder; give a TSV file of map<TAB>contour lines")
    folder = os.path.dirname(os.path.abspath(path))
    table, problems, line_of = {}, [], {}
    try:
        with open(path, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(
            f"cannot read the contour table {path} ({exc}); give a text file of map<TAB>contour lines"
        ) from None
    for number, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        parts = text.split("\t") if "\t" in text else text.split()
        parts = [p.strip() for p in parts if p.strip()]
        if len(parts) != 2:
            problems.append(f"line {number}: expected 'map<TAB>contour', got {line.strip()!r}")
            continue
        try:
            level = float(parts[1])
        except ValueError:
            level = None
            problems.append(f"line {number}: contour {parts[1]!r} is not a number")
        if level is not None and not math.isfinite(level):
            problems.append(f"line {number}: contour {parts[1]!r} is not a finite number")
            level = None
        name = parts[0] if os.path.isabs(parts[0]) else os.path.join(folder, parts[0])
        if not os.path.exists(name):
            problems.append(f"line {number}: map file not found: {parts[0]}")
            continue
        key = os.path.abspath(name)
        if key in line_of and level is not None and table.get(key, level) != level:
            problems.append(
                f"line {number}: {parts[0]} is already given on line {line_of[key]} with "
                f"another contour ({table[key]:g})"
            )
            continue
        line_of[key] = number
        if level is not None:
            table[key] = level
    if problems:
        shown = "; ".join(problems[:MAX_LISTED_PROBLEMS])
        more = f"; and {len(problems) - MAX_LISTED_PROBLEMS} more" if len(problems) > MAX_LISTED_PROBLEMS else ""
        raise InputError(f"contour table {path} has {len(problems)} problem(s): {shown}{more}; fix the table and rerun")
    return table


# ----------------------------------------------------------------------------- the run
def variance(
    reference,
    maps,
    *,
    contours=None,
    reference_contour=None,
    out_dir,
    jobs=None,
    scheduler=None,
    keep_all: bool = False,
    components: int = 0,
    config=None,
    progress: bool = False,
) -> VarianceResult:
    """Align `maps` (paths) to `reference` (path) and write mean.mrc, variance.mrc,
    alignments.tsv, variance.json, variance_slices.png, report.html (and
    component_<k>.mrc) into `out_dir` (created if missing; ``.work/`` inside holds the
    per-map results that make reruns resume).

    contours: {map path: contour or None} (see `read_contour_table`); missing maps get an
    estimated contour.  config: `AlignConfig` (default mode "global")."""
    from ..config import AlignConfig
    from ..executor import resolve_jobs
    from ..io.files import open_work_folder, remove_unused_work_folder
    from ..io.maps import read_map
    from .comparison import resolve_level

    t0 = time.perf_counter()
    paths = [_as_path(m, "map") for m in maps]
    if len(paths) < 2:
        raise InputError(
            f"variance needs at least two maps besides the reference, got {len(paths)}; "
            "list every map of the series (the reference may be one of them)"
        )
    if not isinstance(components, (int, np.integer)) or components < 0:
        raise InputError(f"components must be a non-negative integer, got {components!r}")
    ref_path = _as_path(reference, "reference")
    contours = {os.path.abspath(k): v for k, v in (contours or {}).items()}
    for p in paths:
        if not os.path.exists(p):
            raise InputError(f"map file not found: {p}")
    ref_map = read_map(ref_path)
    ref_contour, ref_est = resolve_level(ref_map, reference_contour, "reference_contour")
    config = config or AlignConfig(mode="global")
    config_dict = config.replace(jobs=1).as_dict()
    if scheduler is None:
        resolve_jobs(jobs)  # bad values fail before any work

    out_dir = os.fspath(out_dir)
    work = os.path.join(out_dir, WORK_DIR)
    created = open_work_folder(out_dir, work, "a cryoalign variance run (resumable)")
    try:
        return _run(
            paths,
            ref_path,
            ref_map,
            ref_contour,
            ref_est,
            contours,
            config_dict,
            out_dir,
            work,
            jobs,
            scheduler,
            keep_all,
            components,
            progress,
            t0,
        )
    except InputError:
        remove_unused_work_folder(out_dir, work, created)  # a refused run leaves nothing behind
        raise


def _run(
    paths,
    ref_path,
    ref_map,
    ref_contour,
    ref_est,
    contours,
    config_dict,
    out_dir,
    work,
    jobs,
    scheduler,
    keep_all,
    components,
    progress,
    t0,
) -> VarianceResult:
    from .. import __version__
    from ..executor import run_tasks
    from ..io import pictures
    from ..io.files import file_sha256, write_text
    from ..io.maps import write_map
    from ..io.report import variance_sections, write_report
    from .comparison import DEFAULT_SCALE_METHOD

    ref_hash = file_sha256(ref_path)
    items: list = []
    records: list[Any] = [None] * len(paths)
    first_of_hash = {}
    for index, p in enumerate(paths):
        digest = file_sha256(p)
        first = first_of_hash.setdefault(digest, p)
        if first != p:
            log.warning(
                "warning: %s and %s are the same file (SHA-256 %s...): the map is given twice and "
                "counts twice in the mean and variance; list each map once",
                first,
                p,
                digest[:12],
            )
        key_doc = {
            "map": os.path.abspath(p),
            "map_sha256": digest,
            "contour": contours.get(os.path.abspath(p)),
            "reference": os.path.abspath(ref_path),
            "reference_sha256": ref_hash,
            "reference_contour": ref_contour,
            "config": config_dict,
            "scale": DEFAULT_SCALE_METHOD,
            "version": __version__,
        }
        key = hashlib.sha256(json.dumps(key_doc, sort_keys=True).encode()).hexdigest()[:24]
        record_path = os.path.join(work, f"{key}.json")
        if os.path.exists(record_path) and os.path.exists(os.path.join(work, f"{key}.npy")):
            with open(record_path, encoding="utf-8") as fh:
                records[index] = json.load(fh)
            log.info(
                "map %d/%d %s: score %.3f (done earlier)",
                index + 1,
                len(paths),
                os.path.basename(p),
                records[index]["score"],
            )
            continue
        items.append((index, (p, contours.get(os.path.abspath(p)), ref_path, ref_contour, config_dict, work, key)))
    log.info("%d of %d maps to align (%d done earlier)", len(items), len(paths), len(paths) - len(items))
    done = len(paths) - len(items)
    for k, record in run_tasks(
        align_to_reference,
        [item for _, item in items],
        jobs=jobs,
        scheduler=scheduler,
        progress=progress,
        desc="aligning",
    ):
        index = items[k][0]
        records[index] = record
        done += 1
        log.info(
            "map %d/%d %s: score %.3f (%.1f s)",
            done,
            len(paths),
            os.path.basename(record["map"]),
            record["score"],
            record["seconds"],
        )
    timings = {"align": time.perf_counter() - t0}

    reasons = outlier_reasons([r["score"] for r in records])
    for r, reason in zip(records, reasons):
        r["excluded"] = bool(reason) and not keep_all
        r["reason"] = (reason + (" (kept: keep_all)" if keep_all else "")) if reason else ""
    kept = [r for r in records if not r["excluded"]]
    for r in records:
        if r["excluded"]:
            log.warning("%s left out: %s", r["map"], r["reason"])
    if len(kept) < 2:
        raise InputError(
            f"only {len(kept)} map(s) pass the outlier rule; check the maps' alignments in "
            "alignments.tsv or keep every map with keep_all (--keep-all)"
        )

    t = time.perf_counter()
    shape = ref_map.data.shape
    data_files = [os.path.join(work, f"{r['key']}.npy") for r in kept]
    mean, var, union = welford(data_files, shape, union_level=ref_contour)
    union |= ref_map.data > ref_contour
    timings["statistics"] = time.perf_counter() - t
    like = dict(voxel_size_A=ref_map.voxel_size_A.copy(), origin_A=ref_map.origin_A.copy())
    mean_map = DensityMap(data=mean.astype(np.float32), **like)
    var_map = DensityMap(data=var.astype(np.float32), **like)
    files = []

    def out(name):
        p = os.path.join(out_dir, name)
        files.append(p)
        return p

    write_map(mean_map, out("mean.mrc"))
    write_map(var_map, out("variance.mrc"))
    comps = []
    if components:
        t = time.perf_counter()
        for k, (share, pattern) in enumerate(principal_components(data_files, mean, union, components), 1):
            write_map(DensityMap(data=pattern, **like), out(f"component_{k}.mrc"))
            comps.append({"index": k, "share": round(float(share), 5), "path": files[-1]})
            log.info("component %d: %.1f%% of the variance", k, 100 * share)
        timings["components"] = time.perf_counter() - t
    write_text(out("alignments.tsv"), alignments_tsv(records))
    params = {
        "reference": ref_path,
        "reference_contour": ref_contour,
        "reference_contour_estimated": ref_est,
        "maps": paths,
        "keep_all": keep_all,
        "components": components,
        "config": config_dict,
        "scale_method": DEFAULT_SCALE_METHOD,
        "variance": "population (ddof 0), float64 Welford, input order",
        "outlier_rule": {"score_floor": SCORE_FLOOR, "mads": OUTLIER_MADS, "min_gap": OUTLIER_MIN_GAP},
    }
    timings["total"] = time.perf_counter() - t0
    result = VarianceResult(
        mean=mean_map,
        variance=var_map,
        records=records,
        components=comps,
        files=files,
        params=params,
        timings_s=timings,
    )
    write_text(out("variance.json"), json.dumps(result.to_json(), indent=1) + "\n")
    images = pictures.variance_slices(var_map, out("variance_slices.png"), mean=mean_map, contour=ref_contour)
    write_report(out("report.html"), "cryoalign variance", variance_sections(result, images))
    return result


def align_to_reference(item) -> dict:
    """Worker task. item: (map path, contour or None, reference path, reference contour,
    AlignConfig as dict, work folder, key).  Writes ``<key>.npy`` (the scaled map on the
    reference's grid, float32) then ``<key>.json`` (the record, returned)."""
    from ..config import AlignConfig
    from ..io.files import atomic_write
    from ..io.maps import read_map
    from .comparison import fit_scale, masked_correlation, resolve_level, superimpose

    map_path, contour, ref_path, ref_contour, config_dict, work, key = item
    t0 = time.perf_counter()
    density, ref = read_map(map_path), read_map(ref_path)
    try:
        level, estimated = resolve_level(density, contour, "contour")
        sup = superimpose(density, ref, level, ref_contour, config=AlignConfig(**config_dict))
        result, moved = sup.alignment, sup.moved
    except InputError as exc:
        raise InputError(f"{map_path}: {exc}") from None
    scale = fit_scale(moved.data, ref.data, level, ref_contour)
    scaled = scale.apply(moved.data)
    union = (moved.data > level) | (ref.data > ref_contour)
    score = result.score.correlation if result.score.correlation is not None else result.score.value
    record = {
        "map": map_path,
        "key": key,
        "contour": level,
        "contour_estimated": estimated,
        "matrix": np.asarray(result.T_target_source).tolist(),
        "score": float(score),
        "correlation_with_reference": masked_correlation(scaled, ref.data, union),
        "scale": scale.as_dict(),
        "seconds": 0.0,
    }
    atomic_write(os.path.join(work, f"{key}.npy"), lambda tmp: np.save(tmp, scaled), journal=False)
    record["seconds"] = time.perf_counter() - t0
    atomic_write(
        os.path.join(work, f"{key}.json"), lambda tmp: _write_bytes(tmp, json.dumps(record).encode()), journal=False
    )
    return record


def _write_bytes(path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)


def _as_path(m, what) -> str:
    if isinstance(m, (str, os.PathLike)):
        return os.fspath(m)
    raise InputError(
        f"variance needs file paths (the {what} is read in worker processes), "
        f"got {type(m).__name__}; write the map first (cryoalign.write_map)"
    )


# ----------------------------------------------------------------------------- statistics
def outlier_reasons(scores) -> list:
    """Per score: '' (kept) or why it is an outlier (see the module docstring)."""
    s = np.asarray(scores, float)
    med = float(np.median(s))
    spread = max(OUTLIER_MADS * 1.4826 * float(np.median(np.abs(s - med))), OUTLIER_MIN_GAP)
    out = []
    for v in s:
        if v < SCORE_FLOOR:
            out.append(f"score {v:.3f} under the floor {SCORE_FLOOR}")
        elif v < med - spread:
            out.append(f"score {v:.3f} more than {spread:.3f} below the median {med:.3f}")
        else:
            out.append("")
    return out


def welford(data_files, shape, *, union_level=None):
    """Mean and population variance (float64) of the .npy maps, read one at a time in the
    given order, slab by slab.  With union_level also the boolean union of voxels above it."""
    mean = np.zeros(shape, np.float64)
    m2 = np.zeros(shape, np.float64)
    union = np.zeros(shape, bool)
    for n, path in enumerate(data_files, 1):
        x_all = np.load(path, mmap_mode="r")
        if x_all.shape != tuple(shape):
            raise InputError(f"{path} has shape {x_all.shape}, expected {tuple(shape)}: delete the .work folder")
        for z in range(0, shape[0], SLAB):
            x = np.asarray(x_all[z : z + SLAB], np.float64)
            delta = x - mean[z : z + SLAB]
            mean[z : z + SLAB] += delta / n
            m2[z : z + SLAB] += delta * (x - mean[z : z + SLAB])
            if union_level is not None:
                union[z : z + SLAB] |= x > union_level
        del x_all
    return mean, m2 / max(len(data_files), 1), union


def principal_components(data_files, mean, mask, count: int, *, memory_bytes: int = PCA_MEMORY_BYTES):
    """[(share of the variance inside the mask, (nz, ny, nx) float32 pattern)] for the first
    `count` components, maps streamed from disk; sign: largest voxel positive."""
    n = len(data_files)
    index = np.flatnonzero(mask.ravel())
    mu = mean.ravel()[index]

    def load(i):
        return np.load(data_files[i], mmap_mode="r").ravel()[index].astype(np.float64) - mu

    block = max(1, int(memory_bytes // max(index.size * 8, 1)) // 2)
    gram = np.zeros((n, n))
    for a0 in range(0, n, block):
        A = np.stack([load(i) for i in range(a0, min(n, a0 + block))])
        for b0 in range(a0, n, block):
            B = A if b0 == a0 else np.stack([load(i) for i in range(b0, min(n, b0 + block))])
            g = A @ B.T
            gram[a0 : a0 + len(A), b0 : b0 + len(B)] = g
            gram[b0 : b0 + len(B), a0 : a0 + len(A)] = g.T
    values, vectors = np.linalg.eigh(gram)
    order = np.argsort(values)[::-1][: min(count, n)]
    total = float(values.clip(min=0).sum()) or 1.0
    patterns = np.zeros((len(order), index.size))
    for i in range(n):
        x = load(i)
        for k, j in enumerate(order):
            patterns[k] += vectors[i, j] * x
    out = []
    for k, j in enumerate(order):
        p = patterns[k] / math.sqrt(n)
        if p.size and p[np.argmax(np.abs(p))] < 0:
            p = -p
        full = np.zeros(mean.size, np.float32)
        full[index] = p
        out.append((max(float(values[j]), 0.0) / total, full.reshape(mean.shape)))
    return out


def alignments_tsv(records) -> str:
    head = (
        ["map", "contour", "contour_estimated"]
        + [f"m{r}{c}" for r in range(1, 4) for c in range(1, 5)]
        + ["score", "correlation_with_reference", "excluded", "reason"]
    )
    lines = ["\t".join(head)]
    for r in records:
        m = np.asarray(r["matrix"])[:3].ravel()
        lines.append(
            "\t".join(
                [r["map"], f"{r['contour']:.6g}", "yes" if r["contour_estimated"] else "no"]
                + [f"{v:.6f}" for v in m]
                + [
                    f"{r['score']:.4f}",
                    f"{r['correlation_with_reference']:.4f}",
                    "yes" if r["excluded"] else "no",
                    r["reason"],
                ]
            )
        )
    return "\n".join(lines) + "\n"
