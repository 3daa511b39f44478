"""`search`: the whole catalogue ranked by pre-filter vector, the closest screened from
their stored features, the best aligned fully.  See the package's docstring."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from typing import cast

import numpy as np

from ...config import AlignConfig
from ...errors import InputError
from ...executor import run_tasks
from . import prefilter as prefilter_module
from .store import (
    FEATURES_DIR,
    catalogue_config,
    entries_by_id,
    stored_params,
    usable_vectors,
)

log = logging.getLogger(__name__)

SCREEN_HYPOTHESES = 4  # search, first pass over the pre-filtered entries: coarse poses ...
PREFILTER = 25  # search: entries screened after the pre-filter (README: from its recall curve)
REFINE = 3  # ... and of them aligned with the full pipeline


@dataclass(frozen=True)
class Hit:
    """One aligned entry. T_query_entry: 4x4, entry world (Å) -> query world."""

    map: str
    path: str
    score: float  # alignment_score x coverage
    alignment_score: float  # the pipeline's score of the entry on the query (AlignResult.score.value)
    coverage: float  # fraction of the query's points the moved entry covers
    correlation: float | None
    T_query_entry: np.ndarray
    signature_distance: float
    contour: float
    entry_id: int

    def as_dict(self, rank: int) -> dict:
        return {
            "rank": rank,
            "map": self.map,
            "score": self.score,
            "alignment_score": self.alignment_score,
            "coverage": self.coverage,
            "correlation": self.correlation,
            "matrix": np.asarray(self.T_query_entry).tolist(),
            "signature_distance": self.signature_distance,
            "path": self.path,
            "contour": self.contour,
            "entry_id": self.entry_id,
        }


@dataclass(frozen=True)
class SearchResult:
    """What `search` returns: hits best first (at most `top`), how many entries were aligned
    (`searched`) and stored (`entries`), the query's contour and the parameters."""

    query: str
    hits: list
    searched: int
    entries: int
    params: dict
    timings_s: dict
    errors: list = field(default_factory=list)  # [(map, message)] of entries whose alignment failed

    def to_json(self) -> dict:
        from ... import __version__

        return {
            "version": __version__,
            "query": self.query,
            "hits": [h.as_dict(k) for k, h in enumerate(self.hits, 1)],
            "searched": self.searched,
            "entries": self.entries,
            "params": self.params,
            "errors": [{"map": m, "error": e} for m, e in self.errors],
            "timings_s": {k: round(v, 4) for k, v in self.timings_s.items()},
        }

    def __repr__(self):
        best = f" best={self.hits[0].map} score={self.hits[0].score:.3f}" if self.hits else ""
        return f"<SearchResult hits={len(self.hits)} searched={self.searched} entries={self.entries}{best}>"


def format_table(result: SearchResult) -> str:
    """The hits as a short text table (for the terminal)."""
    from ... import transform as tf

    lines = [
        f"query {result.query}: {result.searched} of {result.entries} entries aligned",
        "rank  score  coverage  correlation  sig.dist  rotation  translation (Å)             map",
    ]
    for k, h in enumerate(result.hits, 1):
        T = np.asarray(h.T_query_entry)
        corr = "       -" if h.correlation is None else f"{h.correlation:8.3f}"
        t = T[:3, 3]
        lines.append(
            f"{k:4d}  {h.score:5.3f}     {h.coverage:5.3f}     {corr}  {h.signature_distance:8.3f}  "
            f"{tf.rotation_angle_deg(T[:3, :3]):7.2f}°  ({t[0]:8.2f}, {t[1]:8.2f}, {t[2]:8.2f})  {h.map}"
        )
    if not result.hits:
        lines.append("(no entry could be aligned)")
    return "\n".join(lines)


def search(
    query,
    db,
    *,
    contour: float | None = None,
    top: int = 10,
    prefilter: int | None = PREFILTER,
    refine: int = REFINE,
    config: AlignConfig | None = None,
    jobs: int | None = None,
    scheduler: str | None = None,
    progress: bool = False,
) -> SearchResult:
    """Rank the catalogue's entries by how well they superimpose on `query` (a map path or
    EMDB ID; contour: given, else the EMDB header's, else estimated).  The `prefilter`
    entries closest by pre-filter vector (None: all) are screened (their best point pose
    from the stored descriptors: `screen_entry`), the `refine` best of them aligned with
    the full pipeline (`align_entry`); the `top` best are returned (the fully aligned ones
    first).  jobs / scheduler: see `executor.run_tasks`."""
    from ...core.prepare import prepare, resolve_contour
    from ...io import emdb
    from ...io.robust import without_outliers

    timings = {}
    started = time.perf_counter()
    if top < 1:
        raise InputError(f"top={top} is not allowed: give a whole number of at least 1")
    if refine < 1:
        raise InputError(f"refine={refine} is not allowed: give a whole number of at least 1")
    if prefilter is not None and prefilter < 1:
        raise InputError(f"prefilter={prefilter} is not allowed: give at least 1 (or None to align every entry)")
    db = os.fspath(db)
    config = catalogue_config(config)
    params = stored_params(config)
    ids, vectors, total = usable_vectors(db, config)
    timings["read catalogue"] = time.perf_counter() - started

    given = contour
    spec = os.fspath(query)
    read, contour = emdb.load_map(spec, contour, "contour")
    contour_source = "given" if given is not None else "emdb" if contour is not None else "estimated"
    path = read.path
    density = without_outliers(read)
    region, _ = resolve_contour(density, contour, "contour")
    query_prepared = prepare(density, region.contour, config, fine=True, region=region, name="query")
    query_vector = prefilter_module.vector(query_prepared)
    timings["prepare query"] = time.perf_counter() - started - timings["read catalogue"]

    ranked = time.perf_counter()
    distances = prefilter_module.distances(query_vector, vectors)
    order = np.lexsort((ids, distances))
    chosen = order if prefilter is None else order[:prefilter]
    rows = entries_by_id(db, [int(ids[i]) for i in chosen])
    distance_of = {int(ids[i]): float(distances[i]) for i in chosen}
    timings["prefilter"] = time.perf_counter() - ranked

    full_config = search_config(config)
    features = os.path.abspath(os.path.join(db, FEATURES_DIR))
    tmp = tempfile.mkdtemp(prefix=".search-", dir=db if os.access(db, os.W_OK) else None)
    try:
        query_npz = os.path.join(os.path.abspath(tmp), "query.npz")
        query_prepared.save(query_npz)
        # the workers find the query here (inherited when they are forked; else loaded once each)
        _QUERY_CACHE.clear()
        _QUERY_CACHE[(query_npz, os.path.abspath(path))] = query_prepared.with_density(density)

        def align_all(fn, picked, cfg, stage):
            tasks = [
                dict(
                    entry=os.path.join(features, rows[k]["features"]),
                    query=query_npz,
                    query_map=os.path.abspath(path),
                    config=cfg.as_dict(),
                )
                for k in picked
            ]
            outcomes = {}
            for n, outcome in run_tasks(fn, tasks, jobs=jobs, scheduler=scheduler, progress=progress, desc=stage):
                outcomes[picked[n]] = outcome
            return outcomes

        aligning = time.perf_counter()
        order_ids = list(rows)
        screened = align_all(screen_entry, order_ids, full_config, "screen")
        timings["screen"] = time.perf_counter() - aligning
        ok = [k for k in order_ids if screened[k]["status"] == "ok"]
        leaders = sorted(ok, key=lambda k: (-screened[k]["score"], distance_of[k], k))[:refine]
        aligning = time.perf_counter()
        final = dict(screened)
        final.update(
            {k: o for k, o in align_all(align_entry, leaders, full_config, "refine").items() if o["status"] == "ok"}
        )
        timings["refine"] = time.perf_counter() - aligning
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        _QUERY_CACHE.clear()

    hits, errors = [], []
    for k in order_ids:
        entry, outcome = rows[k], final[k]
        if outcome["status"] != "ok":
            errors.append((entry["map"], outcome["error"]))
            log.warning("%s: alignment failed: %s", entry["map"], outcome["error"])
            continue
        hits.append(
            Hit(
                map=entry["map"],
                path=entry["path"],
                score=outcome["score"],
                alignment_score=outcome["alignment_score"],
                coverage=outcome["coverage"],
                correlation=outcome["correlation"],
                T_query_entry=np.array(outcome["matrix"]).reshape(4, 4),
                signature_distance=distance_of[k],
                contour=entry["contour"],
                entry_id=k,
            )
        )
    # the fully aligned leaders first (their scores come from the full pipeline), then the screened others
    refined = set(leaders)
    hits.sort(key=lambda h: (h.entry_id not in refined, -h.score, h.signature_distance, h.entry_id))
    timings["total"] = time.perf_counter() - started
    run_params = dict(
        params,
        mode="global",
        wide_search=full_config.wide_search,
        contour=float(region.contour),
        contour_source=contour_source,
        top=top,
        prefilter=prefilter,
        refine=refine,
        screen={"max_hypotheses": min(SCREEN_HYPOTHESES, full_config.max_hypotheses), "map_refine": False},
        seed=config.seed,
        map_refine=config.map_refine,
        signature=prefilter_module.VERSION,
    )
    return SearchResult(
        query=spec,
        hits=hits[:top],
        searched=len(order_ids),
        entries=total,
        params=run_params,
        timings_s=timings,
        errors=errors,
    )


def search_config(config: AlignConfig) -> AlignConfig:
    """The configuration of the entry-on-query alignments: global mode, and no wider search
    (a pipeline stage that retries weak answers from many random orientations: in a
    catalogue most entries are not the query's molecule, and every one of them would
    pay for it)."""
    return config.replace(mode="global", wide_search="never")


_QUERY_CACHE: dict = {}


def _query(npz: str, map_path: str, config: AlignConfig):
    """The query's prepared map with its density (loaded once per worker process)."""
    from ...core.prepare import load
    from ...io.maps import read_map
    from ...io.robust import without_outliers

    key = (npz, map_path)
    if key not in _QUERY_CACHE:
        _QUERY_CACHE.clear()
        _QUERY_CACHE[key] = load(npz, config, density=without_outliers(read_map(map_path)))
    return _QUERY_CACHE[key]


def coverage(entry, query, T_query_entry: np.ndarray, radius_A: float) -> float:
    """Fraction of the query's sampled points within `radius_A` of the entry's points moved
    by T_query_entry.  The alignment score is taken over the entry's points, so an entry
    that is only a part of the query (a sub-complex) scores as well as the whole; the
    coverage is what tells them apart."""
    from scipy.spatial import cKDTree

    from ... import transform as tf

    moved = cKDTree(tf.apply(T_query_entry, entry.cloud.points_A))
    d, _ = moved.query(query.cloud.points_A, distance_upper_bound=radius_A)
    return float(np.isfinite(d).mean())


def align_entry(task: dict) -> dict:
    """Align one stored entry onto the query (runs in a worker): task = {entry (npz),
    query (npz), query_map (path), config (AlignConfig fields, mode global)} -> a small
    dict with the search score, the alignment score, the coverage, the correlation and
    T_query_entry (16 numbers)."""
    from ...core.pipeline import align_prepared
    from ...core.prepare import load

    package_log = logging.getLogger("cryoalign")
    level = package_log.level
    package_log.setLevel(logging.ERROR)  # most entries are another molecule: their warnings are noise
    try:
        config = AlignConfig(**task["config"])
        query = _query(task["query"], task["query_map"], config)
        entry = load(task["entry"], config)
        result = align_prepared(entry, query, config)
        covered = coverage(entry, query, result.T_target_source, cast(float, config.sampling_A))
        return dict(
            status="ok",
            score=float(result.score.value) * covered,
            alignment_score=float(result.score.value),
            coverage=covered,
            correlation=None if result.score.correlation is None else float(result.score.correlation),
            matrix=[float(v) for v in np.asarray(result.T_target_source).ravel()],
        )
    except InputError as exc:
        return dict(status="error", error=" ".join(str(exc).split()))
    finally:
        package_log.setLevel(level)


def screen_entry(task: dict) -> dict:
    """The first, cheap look at one stored entry on the query (runs in a worker): its
    coarse poses from the stored descriptors (at most SCREEN_HYPOTHESES), each refined on
    the points (`rank.screen_poses`), the best by vector agreement; score = the map
    correlation of the entry's stored voxels on the query map at that pose x that
    agreement x the coverage.  No map refinement: an entry that is not the query's
    molecule stops here.  task as `align_entry`'s -> a dict of the same keys."""
    from ...core import maprefine
    from ...core.pipeline import coarse_hypotheses
    from ...core.prepare import load
    from ...core.rank import screen_poses
    from ...timing import Timer

    package_log = logging.getLogger("cryoalign")
    level = package_log.level
    package_log.setLevel(logging.ERROR)
    try:
        config = AlignConfig(**task["config"])
        config = config.replace(max_hypotheses=min(SCREEN_HYPOTHESES, config.max_hypotheses))
        query = _query(task["query"], task["query_map"], config)
        entry = load(task["entry"], config)
        hypotheses, _ = coarse_hypotheses(entry, query, config, Timer())
        agreement, T, _ = screen_poses(entry, query, hypotheses, config)[0]
        covered = coverage(entry, query, T, cast(float, config.sampling_A))
        # the ranking's own score (correlation x agreement) at the screen pose, so that the
        # leaders are the entries the full alignment is likely to rank first
        correlation = max(0.0, float(maprefine.correlation(entry.sample, query.density, T)))
        return dict(
            status="ok",
            score=correlation * float(agreement) * covered,
            alignment_score=correlation * float(agreement),
            coverage=covered,
            correlation=correlation,
            matrix=[float(v) for v in np.asarray(T).ravel()],
        )
    except InputError as exc:
        return dict(status="error", error=" ".join(str(exc).split()))
    finally:
        package_log.setLevel(level)
