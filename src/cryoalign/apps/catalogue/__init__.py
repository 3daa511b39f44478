"""A catalogue of prepared maps, and search: which stored maps are the query's molecule?

    summary = index(["a.mrc", "b.mrc", "EMD-1234"], "db", contours={"a.mrc": 0.3}, jobs=2)
    result = search("query.mrc", "db", contour=0.5, top=10)
    result.hits[0].map, result.hits[0].T_query_entry, format_table(result)

index: each map is prepared once (stages 1-3, `prepare.prepare`, fine=True, at the
catalogue's fixed sampling interval: `sampling_A`, else `default_sampling_A`) and
stored.  An entry is keyed by the map FILE's content hash (SHA-256 of its bytes) and
`params_hash`: the hash of the parameters that shaped it (`AlignConfig.prepare_params()`)
and of the contour asked for (a number, or null: the EMDB header's / estimated).  A
changed parameter therefore makes a new entry, never reuses a stale one.

Layout of the catalogue folder DB:

    DB/catalogue.sqlite                    table `entries` (one row per prepared map) and
                                           table `meta` (format, schema_version, signature)
    DB/features/<filehash>-<paramshash>.npz  the prepared map (`PreparedMap.save`)

An entry is written in two steps: the worker writes its .npz (temporary file, then
rename), then the main process inserts the row in one transaction; so a row exists only
when its file is complete, SQLite has one writer, and a rerun skips the maps whose
(file hash, params hash) row exists: a killed run continues where it stopped.

The pre-filter vector (`prefilter.vector`, version `prefilter.VERSION`, a BLOB column of
float32) is what search ranks the whole catalogue by: rotation-invariant, from the
entry's own point cloud (see `prefilter`).  The older shape signature (`signature`,
version SIGNATURE_VERSION: volume, radius of gyration, principal semi-axes, radial and D2
quantiles, JSON) is still stored.  A catalogue of schema 1 (cryoalign 0.3) has no vector
column: `index` (with or without maps) adds it and computes the vectors from the stored
features in the workers, committed in chunks (an interrupted upgrade continues); search
and batch refuse it with a message saying so.

search: one read of the catalogue (`usable_vectors`: the ids and vectors of the entries
prepared with the search's parameters, as one array), the query prepared once (as a
target, fine=True), every entry's pre-filter distance at once (numpy), and the
`prefilter` closest taken further, their rows read in one query (`entries_by_id`).  Two
stages, in the workers (which inherit the prepared query when forked, else load it once):
1. screen (`screen_entry`): the entry's coarse poses from the stored descriptors (at
   most SCREEN_HYPOTHESES), refined on the points; the best by vector agreement; screen
   score = the correlation of the entry's stored voxels on the query map at that pose x
   the agreement x coverage (the final score's form, without map refinement: the leaders
   are the entries the full alignment would rank first; with agreement x coverage alone
   identical copies tied and the refined ones were the wrong copies' at other resolutions).
   No map refinement: a hopeless entry stops here.
2. refine (`align_entry`): the `refine` best screened entries aligned with the full
   pipeline (`pipeline.align_prepared`, entry = source, query = target, GLOBAL mode at the
   catalogue's sampling interval, no wider search); search score = the alignment score
   (`AlignResult.score.value`, taken over the entry's points) x the coverage (the fraction
   of the query's points within one sampling interval of the moved entry's points), so
   that a part of the query (a sub-complex) ranks below the whole.
Hits: the fully aligned ones first, by score, then the screened ones by screen score
(correlation: at the screen pose).  No entry map is read again.  Global mode because the question is
"which entries are the query's molecule": the pre-filter compares whole shapes; to place
a query inside a larger entry, align the two with `cryoalign.align(..., mode="local")`.

Bad input raises `InputError` (the messages are tested one by one):
1. index: a map file that does not exist (all are listed, before any work starts).
2. DB is a folder that is not a catalogue: it holds files but no catalogue.sqlite.
3. DB/catalogue.sqlite is not an SQLite file, or not a cryoalign catalogue (wrong
   format or schema version); search or batch on a catalogue without pre-filter vectors
   (schema 1, or an interrupted upgrade): run index on it once.
4. search (and batch with a catalogue, `stored_features`): DB does not exist, or holds
   no entries.
5. search (and batch): the entries were prepared with other parameters than the
   search's (the parameter and both values are named): index again or search with the
   same ones.

The package: `store` (the database, `index`), `prefilter` (the vectors search ranks by),
`signature` (the older shape signature, still stored), `search`.
"""

from .search import PREFILTER, REFINE, SCREEN_HYPOTHESES, Hit, SearchResult, format_table, search
from .store import (
    DB_FILE,
    FEATURES_DIR,
    FORMAT,
    SCHEMA_VERSION,
    IndexSummary,
    catalogue_config,
    index,
    open_db,
    read_entries,
    stored_features,
    stored_params,
    usable_entries,
    usable_vectors,
)

__all__ = [
    "DB_FILE",
    "FEATURES_DIR",
    "FORMAT",
    "PREFILTER",
    "REFINE",
    "SCHEMA_VERSION",
    "SCREEN_HYPOTHESES",
    "Hit",
    "IndexSummary",
    "SearchResult",
    "catalogue_config",
    "format_table",
    "index",
    "open_db",
    "read_entries",
    "search",
    "stored_features",
    "stored_params",
    "usable_entries",
    "usable_vectors",
]
