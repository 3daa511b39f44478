"""The catalogue's storage: the SQLite database, its schema and upgrades, and `index`
(every map prepared once, stored as a row and a features file).  See the package's
docstring for the layout and the rules.

Over 500 lines: the schema, its upgrade and `index` are one storage contract (the row format,
the features file, the resume rule); the search and the vectors are in their own modules.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
import sqlite3
import time
from dataclasses import dataclass, field

import numpy as np

from ...config import AlignConfig
from ...errors import InputError
from ...executor import run_tasks
from ...io.files import check_writable_folder, file_sha256
from . import prefilter as prefilter_module
from .signature import SIGNATURE_VERSION, signature

log = logging.getLogger(__name__)
DB_FILE = "catalogue.sqlite"
FEATURES_DIR = "features"
FORMAT = "cryoalign-catalogue"
SCHEMA_VERSION = "2"  # 2 (0.4): the pre-filter vector column; 1 is upgraded by `index`
_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE entries (
    id INTEGER PRIMARY KEY,
    map TEXT NOT NULL,              -- the map as given to index (path or EMDB ID)
    path TEXT NOT NULL,             -- absolute path of the file that was read
    file_hash TEXT NOT NULL,        -- SHA-256 of the file's bytes
    params TEXT NOT NULL,           -- JSON: AlignConfig.prepare_params() (sampling resolved)
    params_hash TEXT NOT NULL,      -- SHA-256 of params + the contour asked for
    contour REAL NOT NULL,          -- the contour used
    contour_source TEXT NOT NULL,   -- given / emdb / estimated
    volume_A3 REAL NOT NULL,
    n_points INTEGER NOT NULL,
    signature TEXT NOT NULL,        -- JSON (see `signature`)
    features TEXT NOT NULL,         -- file name in DB/features/
    created TEXT NOT NULL,          -- UTC, ISO 8601
    version TEXT NOT NULL,          -- cryoalign version
    vector BLOB,                    -- prefilter.vector: VECTOR_LENGTH float32 (NULL: not yet computed)
    UNIQUE (file_hash, params_hash)
);
"""
_ENTRY_COLUMNS = (
    "id",
    "map",
    "path",
    "file_hash",
    "params",
    "params_hash",
    "contour",
    "contour_source",
    "volume_A3",
    "n_points",
    "signature",
    "features",
    "created",
    "version",
    "vector",
)


@dataclass(frozen=True)
class IndexSummary:
    """What `index` returns. errors: [(map, message)] of maps that could not be prepared
    (no row written: a rerun tries them again)."""

    maps: int  # distinct maps asked for
    indexed: int  # prepared and stored in this run
    skipped: int  # already in the catalogue with these parameters
    errors: list
    entries: int  # rows in the catalogue afterwards
    db: str
    time_s: float
    prepare_s: list = field(default_factory=list, repr=False)  # per indexed map, worker time

    def __repr__(self):
        return (
            f"<IndexSummary maps={self.maps} indexed={self.indexed} skipped={self.skipped} "
            f"errors={len(self.errors)} entries={self.entries} {self.time_s:.1f}s>"
        )


def catalogue_config(config: AlignConfig | None) -> AlignConfig:
    """The configuration entries are prepared with: the sampling interval fixed
    (`sampling_A`, else `default_sampling_A`), whatever the map's size."""
    config = config or AlignConfig()
    return config.replace(sampling_A=float(config.sampling_A or config.default_sampling_A), jobs=1)


def stored_params(config: AlignConfig) -> dict:
    """prepare_params() as stored (JSON types)."""
    return json.loads(json.dumps(config.prepare_params()))


def params_hash(params: dict, contour: float | None) -> str:
    text = json.dumps({"params": params, "contour": contour}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _index_hint(db: str) -> str:
    return f"build one with `cryoalign index MAP... --db {db}` (cryoalign.index(maps, {db!r}))"


def open_db(db, *, create: bool) -> sqlite3.Connection:
    """Open (with create: make when absent or empty) the catalogue in folder `db`, checked."""
    db = os.fspath(db)
    path = os.path.join(db, DB_FILE)
    if not os.path.exists(db):
        if not create:
            raise InputError(f"catalogue not found: {db} does not exist; {_index_hint(db)}")
        parent = os.path.dirname(os.path.abspath(db))
        if os.path.exists(parent) and not os.path.isdir(parent):
            raise InputError(f"cannot create the catalogue {db}: {parent} is a file; choose another --db folder")
        if not os.path.isdir(parent):
            raise InputError(f"cannot create the catalogue {db}: folder {parent} does not exist; create it first")
        check_writable_folder(db, "--db")
        try:
            os.makedirs(db)
        except OSError as exc:
            raise InputError(
                f"cannot create the catalogue {db}: {exc.strerror}; choose a writable --db folder"
            ) from None
    elif create and os.path.isdir(db):
        check_writable_folder(db, "--db")
    elif not os.path.isdir(db):
        raise InputError(f"{db} is a file, not a catalogue folder; give a folder (new, empty, or made by index)")
    if not os.path.exists(path):
        if set(os.listdir(db)) - {FEATURES_DIR, DB_FILE + ".new"}:
            raise InputError(
                f"{db} is not a cryoalign catalogue (it holds files but no {DB_FILE}); give the folder "
                "index wrote, or a new or empty folder to build one"
            )
        if not create:
            raise InputError(f"the catalogue {db} is empty; {_index_hint(db)}")
        return _create(path)
    return _checked(path, upgrade=create)


def _create(path: str) -> sqlite3.Connection:
    tmp = path + ".new"
    if os.path.exists(tmp):
        os.remove(tmp)
    conn = sqlite3.connect(tmp)
    with conn:
        conn.executescript(_SCHEMA)
        conn.executemany(
            "INSERT INTO meta (key, value) VALUES (?, ?)",
            [
                ("format", FORMAT),
                ("schema_version", SCHEMA_VERSION),
                ("signature", SIGNATURE_VERSION),
                ("prefilter", prefilter_module.VERSION),
            ],
        )
    conn.close()
    os.replace(tmp, path)  # a catalogue file exists only with its schema
    os.makedirs(os.path.join(os.path.dirname(path), FEATURES_DIR), exist_ok=True)
    return _checked(path)


def _checked(path: str, *, upgrade: bool = False) -> sqlite3.Connection:
    """Open the catalogue file, checked.  A catalogue of schema 1 (cryoalign 0.3, no
    pre-filter vectors) or with vectors of another pre-filter version is brought up to
    date when `upgrade` (index: the column is added, the vectors are computed from the
    stored features by `_fill_vectors`), refused otherwise (search, batch)."""
    fix = "give the folder index wrote, or move the file away and index again"
    try:
        conn = sqlite3.connect(path, timeout=60)
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        columns = [row[1] for row in conn.execute("PRAGMA table_info(entries)")]
    except sqlite3.DatabaseError as exc:
        raise InputError(f"{path} is not a cryoalign catalogue ({exc}); {fix}") from None
    old_layout = meta.get("schema_version") == "1" and tuple(columns) == _ENTRY_COLUMNS[:-1]
    if meta.get("format") != FORMAT or not (tuple(columns) == _ENTRY_COLUMNS or old_layout):
        conn.close()
        raise InputError(
            f"{path} is not a cryoalign catalogue (format {meta.get('format')!r}, expected {FORMAT!r}); {fix}"
        )
    if meta.get("schema_version") not in ("1", SCHEMA_VERSION) or meta.get("signature") != SIGNATURE_VERSION:
        conn.close()
        raise InputError(
            f"{path} was written by another cryoalign version (schema {meta.get('schema_version')}, "
            f"signature {meta.get('signature')}; this version reads schema {SCHEMA_VERSION}, signature "
            f"{SIGNATURE_VERSION}); index the maps again into a new folder"
        )
    if old_layout or meta.get("prefilter") != prefilter_module.VERSION:
        if not upgrade:
            conn.close()
            db = os.path.dirname(path)
            raise InputError(
                f"the catalogue {db} was written by an earlier cryoalign (no pre-filter vectors of "
                f"version {prefilter_module.VERSION}); run `cryoalign index --db {db}` once to add them "
                "from the stored features (no map is read or prepared again)"
            )
        with conn:
            if old_layout:
                conn.execute("ALTER TABLE entries ADD COLUMN vector BLOB")
                conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (SCHEMA_VERSION,))
            else:
                conn.execute("UPDATE entries SET vector = NULL")
            conn.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('prefilter', ?)", (prefilter_module.VERSION,)
            )
        log.info(
            "%s: upgraded to schema %s; the pre-filter vectors are computed from the stored features",
            path,
            SCHEMA_VERSION,
        )
    return conn


def read_entries(db) -> list[dict]:
    """Every row of the catalogue in `db`, as dicts (params and signature decoded), by id."""
    conn = open_db(db, create=False)
    try:
        rows = conn.execute(f"SELECT {', '.join(_ENTRY_COLUMNS)} FROM entries ORDER BY id").fetchall()
    finally:
        conn.close()
    return [_decoded(row) for row in rows]


def _decoded(row) -> dict:
    """A row of `entries` as a dict: params and signature decoded, the vector as float32."""
    entry = dict(zip(_ENTRY_COLUMNS, row))
    entry["params"] = json.loads(entry["params"])
    entry["signature"] = json.loads(entry["signature"])
    entry["vector"] = None if entry["vector"] is None else np.frombuffer(entry["vector"], np.float32)
    return entry


def usable_entries(db, config: AlignConfig, *, user: str = "the search", retry: str = "search") -> tuple[list, int]:
    """(the catalogue's entries prepared with `config` (as `catalogue_config` gives it),
    the number of entries in all).
    Raises InputError: no catalogue, no entries, or none prepared with these parameters
    (the message names `user` and what to `retry`)."""
    db = os.fspath(db)
    entries = read_entries(db)
    if not entries:
        raise InputError(f"the catalogue {db} holds no entries; {_index_hint(db)}")
    params = stored_params(config)
    usable = [e for e in entries if e["params"] == params]
    if not usable:
        raise InputError(_params_mismatch(db, entries, params, user=user, retry=retry))
    if len(usable) < len(entries):
        log.warning(
            "%d of %d entries were prepared with other parameters: not used (index the maps again "
            "with these parameters to include them)",
            len(entries) - len(usable),
            len(entries),
        )
    return usable, len(entries)


def stored_features(db, config: AlignConfig) -> dict:
    """{(file_hash, params_hash): absolute .npz path} of the catalogue's entries prepared
    with `config`: what `batching.batch` looks its maps up in (`usable_entries`' errors)."""
    features = os.path.abspath(os.path.join(os.fspath(db), FEATURES_DIR))
    return {
        (e["file_hash"], e["params_hash"]): os.path.join(features, e["features"])
        for e in usable_entries(db, config, user="the batch", retry="run the batch")[0]
    }


def index(
    maps,
    db,
    *,
    contours: dict | None = None,
    config: AlignConfig | None = None,
    jobs: int | None = None,
    scheduler: str | None = None,
    progress: bool = False,
) -> IndexSummary:
    """Prepare every map of `maps` (paths or EMDB IDs) and store it in the catalogue folder
    `db` (created when missing).  contours: {map: contour} (keys as given, or absolute
    paths as `read_contour_table` gives them); a map without one gets the EMDB header's
    level (EMDB IDs), else an estimate.  Maps already stored with these parameters are
    skipped.  jobs / scheduler: see `executor.run_tasks` (Dask workers must see the same
    paths, the catalogue folder included)."""
    started = time.perf_counter()
    config = catalogue_config(config)
    params = stored_params(config)
    contours = {os.fspath(k): v for k, v in (contours or {}).items()}
    db = os.fspath(db)
    maps = [os.fspath(m) for m in maps]
    if not maps and os.path.isfile(os.path.join(db, DB_FILE)):
        specs = []  # no maps: only bring the catalogue up to date (its pre-filter vectors)
    else:
        specs = _resolve_maps(maps, contours)
    conn = open_db(db, create=True)
    try:
        _fill_vectors(conn, db, jobs, scheduler, progress)
        _fill_hashes(specs, jobs, scheduler, progress)
        for spec in specs:
            spec["params_hash"] = params_hash(params, spec["contour"])
        done = {tuple(row) for row in conn.execute("SELECT file_hash, params_hash FROM entries")}
        todo, seen, first_of_hash = [], set(), {}
        for spec in specs:
            first = first_of_hash.setdefault(spec["file_hash"], spec["map"])
            if first != spec["map"]:
                log.warning(
                    "warning: %s and %s are the same file (SHA-256 %s...): the map is given twice",
                    first,
                    spec["map"],
                    spec["file_hash"][:12],
                )
            key = (spec["file_hash"], spec["params_hash"])
            if key in done or key in seen:
                continue
            seen.add(key)
            todo.append(spec)
        skipped = len(specs) - len(todo)
        if skipped:
            log.info("%d of %d maps already in the catalogue with these parameters: skipped", skipped, len(specs))
        features = os.path.abspath(os.path.join(db, FEATURES_DIR))
        settings = config.as_dict()
        tasks = [
            dict(
                path=s["path"],
                name=s["map"],
                contour=s["contour"],
                contour_source=s["contour_source"],
                config=settings,
                features=os.path.join(features, f"{s['file_hash']}-{s['params_hash']}.npz"),
            )
            for s in todo
        ]
        indexed, errors, prepare_s = 0, [], []
        for i, outcome in run_tasks(
            prepare_entry, tasks, jobs=jobs, scheduler=scheduler, progress=progress, desc="maps"
        ):
            spec = todo[i]
            if outcome["status"] != "ok":
                errors.append((spec["map"], outcome["error"]))
                log.warning("%s: not indexed: %s", spec["map"], outcome["error"])
                continue
            _insert(conn, spec, outcome, params)
            indexed += 1
            prepare_s.append(outcome["time_s"])
            log.info(
                "%s: indexed (contour %g, %s; %.1f s)",
                spec["map"],
                outcome["contour"],
                outcome["contour_source"],
                outcome["time_s"],
            )
        entries = conn.execute("SELECT COUNT(*) FROM entries").fetchone()[0]
    finally:
        conn.close()
    return IndexSummary(
        maps=len(specs),
        indexed=indexed,
        skipped=skipped,
        errors=errors,
        entries=entries,
        db=db,
        time_s=time.perf_counter() - started,
        prepare_s=prepare_s,
    )


def _resolve_maps(maps: list, contours: dict) -> list[dict]:
    """Each distinct map -> {map, path, contour, contour_source}; every missing file in one error."""
    from ...io import emdb

    if not maps:
        raise InputError("no maps to index; give at least one map file or EMDB ID")
    specs, missing, seen = [], [], set()
    for name in maps:
        if name in seen:
            log.warning("warning: %s is given twice: indexed once", name)
            continue
        seen.add(name)
        given = contours.get(name, contours.get(os.path.abspath(name)))
        if emdb.is_emdb_id(name) and not os.path.exists(name):
            path, recommended, _ = emdb.resolve_map(name)
        elif not os.path.isfile(name):
            missing.append(name)
            continue
        else:
            path, recommended = name, None
        if given is not None:
            contour, source = float(given), "given"
        elif recommended is not None:
            contour, source = float(recommended), "emdb"
        else:
            contour, source = None, "estimated"
        specs.append(dict(map=name, path=os.path.abspath(str(path)), contour=contour, contour_source=source))
    if missing:
        listed = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise InputError(f"map file(s) not found: {listed}; check the path(s) (nothing was indexed)")
    return specs


VECTOR_COMMIT = 200  # vectors written per transaction when filled in from stored features


def _fill_vectors(conn: sqlite3.Connection, db: str, jobs, scheduler, progress) -> None:
    """Compute the pre-filter vector of every row that has none (a catalogue of an earlier
    version) from its stored features, in the workers; committed in chunks, so a killed
    run keeps what it did and the rerun does the rest."""
    rows = conn.execute("SELECT id, features FROM entries WHERE vector IS NULL ORDER BY id").fetchall()
    if not rows:
        return
    log.info("computing the pre-filter vectors of %d entries from their stored features", len(rows))
    features = os.path.abspath(os.path.join(db, FEATURES_DIR))
    tasks = [os.path.join(features, name) for _, name in rows]
    pending = []
    try:
        for i, blob in run_tasks(
            vector_of_features, tasks, jobs=jobs, scheduler=scheduler, progress=progress, desc="vectors"
        ):
            pending.append((blob, rows[i][0]))
            if len(pending) >= VECTOR_COMMIT:
                with conn:
                    conn.executemany("UPDATE entries SET vector = ? WHERE id = ?", pending)
                pending = []
    finally:
        if pending:
            with conn:
                conn.executemany("UPDATE entries SET vector = ? WHERE id = ?", pending)


def vector_of_features(npz: str) -> bytes:
    """The pre-filter vector (float32 bytes) of a stored entry (runs in a worker)."""
    from ...core.prepare import load

    return prefilter_module.vector(load(npz)).tobytes()  # load names an unreadable file (InputError)


def _fill_hashes(specs: list, jobs, scheduler, progress) -> None:
    """The file hash of every map, computed by the workers (reading 30,000 maps is the
    cost; the main process only collects)."""
    paths = [s["path"] for s in specs]
    for i, digest in run_tasks(file_sha256, paths, jobs=jobs, scheduler=scheduler, progress=progress, desc="hashing"):
        specs[i]["file_hash"] = digest


def _insert(conn: sqlite3.Connection, spec: dict, outcome: dict, params: dict) -> None:
    from ... import __version__

    row = dict(
        map=spec["map"],
        path=spec["path"],
        file_hash=spec["file_hash"],
        params=json.dumps(params, sort_keys=True),
        params_hash=spec["params_hash"],
        contour=outcome["contour"],
        contour_source=outcome["contour_source"],
        volume_A3=outcome["volume_A3"],
        n_points=outcome["n_points"],
        signature=json.dumps(outcome["signature"]),
        features=outcome["features"],
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        version=__version__,
        vector=outcome["vector"],
    )
    names = list(row)
    with conn:  # one transaction per entry: the row appears whole, after its file
        conn.execute(
            f"INSERT OR IGNORE INTO entries ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
            [row[n] for n in names],
        )


def prepare_entry(task: dict) -> dict:
    """Prepare one map and write its .npz (runs in a worker): task = {path, name, contour
    (None: estimate), contour_source, config (AlignConfig fields), features (npz path)}
    -> a small dict.  A bad map becomes status "error" with a one-line message."""
    from ...core.prepare import prepare, resolve_contour
    from ...io.maps import read_map
    from ...io.robust import without_outliers

    started = time.perf_counter()
    try:
        config = AlignConfig(**task["config"])
        density = without_outliers(read_map(task["path"]))  # as every alignment reads a map
        region, estimated = resolve_contour(density, task["contour"], "contour")
        prepared = prepare(
            density,
            region.contour,
            config,
            fine=True,
            region=region,
            name=task["name"],
            contour_estimated=estimated,
            with_hash=True,
        )
        prepared.save(task["features"])
        return dict(
            status="ok",
            contour=float(region.contour),
            contour_source="estimated" if estimated else task["contour_source"],
            volume_A3=float(prepared.volume_A3),
            n_points=len(prepared.cloud),
            signature=signature(prepared),
            vector=prefilter_module.vector(prepared).tobytes(),
            features=os.path.basename(task["features"]),
            time_s=round(time.perf_counter() - started, 3),
        )
    except InputError as exc:
        return dict(status="error", error=" ".join(str(exc).split()))


def usable_vectors(db, config: AlignConfig) -> tuple[np.ndarray, np.ndarray, int]:
    """(entry ids, their pre-filter vectors as one (n, VECTOR_LENGTH) float32 array, the
    number of entries in all) of the entries prepared with `config`: one read of the
    catalogue.  Raises InputError as `usable_entries` does, and for rows without a vector."""
    db = os.fspath(db)
    params_text = json.dumps(stored_params(config), sort_keys=True)
    conn = open_db(db, create=False)
    try:
        total = conn.execute("SELECT COUNT(*) FROM entries").fetchone()[0]
        rows = conn.execute("SELECT id, vector FROM entries WHERE params = ? ORDER BY id", (params_text,)).fetchall()
    finally:
        conn.close()
    if not total:
        raise InputError(f"the catalogue {db} holds no entries; {_index_hint(db)}")
    if not rows:
        raise InputError(_params_mismatch(db, read_entries(db), stored_params(config)))
    if any(blob is None for _, blob in rows):
        raise InputError(
            f"some entries of the catalogue {db} have no pre-filter vector (an interrupted "
            f"upgrade); run `cryoalign index --db {db}` once to add them"
        )
    if len(rows) < total:
        log.warning(
            "%d of %d entries were prepared with other parameters: not used (index the maps again "
            "with these parameters to include them)",
            total - len(rows),
            total,
        )
    ids = np.array([r[0] for r in rows], np.int64)
    vectors = np.frombuffer(b"".join(r[1] for r in rows), np.float32).reshape(len(rows), -1)
    return ids, vectors, total


def entries_by_id(db, ids: list) -> dict:
    """{id: entry dict (as `read_entries` gives it)} for the given ids, in their order: one query."""
    conn = open_db(db, create=False)
    try:
        found = {}
        for start in range(0, len(ids), 900):  # SQLite's bound-parameter limit
            chunk = ids[start : start + 900]
            found.update(
                {
                    row[0]: row
                    for row in conn.execute(
                        f"SELECT {', '.join(_ENTRY_COLUMNS)} FROM entries WHERE id IN ({', '.join('?' * len(chunk))})",
                        chunk,
                    )
                }
            )
    finally:
        conn.close()
    return {i: _decoded(found[i]) for i in ids}


def _params_mismatch(db: str, entries: list, params: dict, *, user: str = "the search", retry: str = "search") -> str:
    """The message for a search (or another `user` of the catalogue) whose parameters no
    entry was prepared with."""
    counts = {}
    for e in entries:
        key = json.dumps(e["params"], sort_keys=True)
        counts[key] = counts.get(key, 0) + 1
    stored = json.loads(max(counts, key=lambda k: counts[k]))
    diff = ", ".join(f"{k}={stored.get(k)!r} ({user} uses {v!r})" for k, v in params.items() if stored.get(k) != v)
    return (
        f"the catalogue {db} was built with other parameters: {diff}; {retry} with the same parameters, or "
        "index the maps again with these ones"
    )
