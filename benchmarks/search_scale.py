"""Search at archive scale: a catalogue of about 10,000 entries, 60 queries, the pre-filter's
recall and the whole search's rank 1, time and memory.

    python benchmarks/search_scale.py [--entries 10000] [--jobs 2] [--prefilter 20] [--refine 3]
                                      [--variants] [--searches] [--cache DIR]

The corpus (entries, queries, the right-hit rule, the tune / held split of the queries) is
`search_corpus.py`'s.  Steps, each cached under --cache and resumable:
1. simulate the corpus, index it with `cryoalign.index` (--jobs workers);
2. --variants: the pre-filter candidates on the tune and the held queries: the rank of the
   first right entry (label or equivalent copy, `search_corpus.equivalence_classes`) among
   all entries, for the shape block alone, the harmonic block alone, their sum with
   several weights, and the shape signature of cryoalign 0.3; recall@1/5/20/50;
3. --searches: `cryoalign.search` for every query (--prefilter, --refine, --jobs), the
   right-hit rule on rank 1 and the top 5, the time of each (start-up of the search call
   included, the interpreter's not: see the README for `cryoalign search` from the shell),
   the peak memory;
4. the table: both parts, and the per-part costs for the projection to 30,000 entries.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import search_corpus as sc  # noqa: E402
from cryoalign.apps.catalogue import (  # noqa: E402
    DB_FILE,
    catalogue_config,
    index,
    prefilter,  # noqa: E402
    read_entries,
    search,
)
from cryoalign.apps.catalogue.signature import signature, signature_distance  # noqa: E402

KS = (1, 5, 20, 50)


def folder_of(args) -> str:
    return os.path.join(args.cache, f"scale{args.entries}")


def build_and_index(args) -> tuple[dict, str]:
    manifest = sc.build(args)
    folder = folder_of(args)
    db = os.path.join(folder, "db")
    timing_path = os.path.join(folder, "index_timing.json")
    started = time.perf_counter()
    summary = index(
        [e["path"] for e in manifest["entries"]],
        db,
        contours={e["path"]: e["contour"] for e in manifest["entries"]},
        jobs=args.jobs,
    )
    if summary.indexed or not os.path.exists(timing_path):
        json.dump(
            dict(wall_s=time.perf_counter() - started, indexed=summary.indexed, prepare_s=summary.prepare_s),
            open(timing_path, "w"),
        )
    return manifest, db


def query_vectors(manifest, folder) -> list:
    """(pre-filter vector, shape signature) of every query, prepared as search prepares it (cached)."""
    from cryoalign.core.prepare import prepare, resolve_contour
    from cryoalign.io import read_map
    from cryoalign.io.robust import without_outliers

    path = os.path.join(folder, "query_vectors.json")
    if os.path.exists(path):
        cached = json.load(open(path))
        if cached.get("version") == prefilter.VERSION:
            return [(np.array(v, np.float32), s) for v, s in cached["queries"]]
    config = catalogue_config(None)
    out = []
    for q in manifest["queries"]:
        density = without_outliers(read_map(q["path"]))
        region, _ = resolve_contour(density, q["contour"], "contour")
        p = prepare(density, region.contour, config, region=region)
        out.append((prefilter.vector(p), signature(p)))
        np.save(q["path"] + ".descriptors.npy", p.features.descriptors)
    json.dump(dict(version=prefilter.VERSION, queries=[(v.tolist(), s) for v, s in out]), open(path, "w"))
    return out


BOW_WORDS = 64
TRAINING_MAPS = {
    "emd_3695_5A.mrc.gz": 1.25,
    "emd_3696_5A.mrc.gz": 0.69,
    "emd_5168_monomer.mrc.gz": None,
    "emd_2566_crop.mrc.gz": None,
}


def bow_codebook(folder) -> np.ndarray:
    """A fixed codebook of BOW_WORDS descriptor words (k-means, seeded) learned from real
    EMDB maps of tests/data, none of which (nor any map simulated from them) is in the
    catalogue: an entry's histogram never depends on the indexed maps."""
    from scipy.cluster.vq import kmeans2

    from cryoalign.core.prepare import prepare, resolve_contour
    from cryoalign.io import read_map

    path = os.path.join(folder, "codebook.npy")
    if os.path.exists(path):
        return np.load(path)
    config = catalogue_config(None)
    data = os.path.join(HERE, "..", "tests", "data")
    descriptors = []
    for name, contour in TRAINING_MAPS.items():
        density = read_map(os.path.join(data, name))
        region, _ = resolve_contour(density, contour, "contour")
        descriptors.append(prepare(density, region.contour, config, region=region).features.descriptors)
    words, _ = kmeans2(np.concatenate(descriptors).astype(np.float64), BOW_WORDS, seed=0, minit="++")
    np.save(path, words.astype(np.float32))
    return words.astype(np.float32)


def bow_histogram(descriptors: np.ndarray, words: np.ndarray) -> np.ndarray:
    """The share of the descriptors nearest to each word, square-rooted (Hellinger)."""
    if not len(descriptors):
        return np.zeros(len(words), np.float32)
    d = (
        ((descriptors[:, None, :] - words[None, :, :]) ** 2).sum(-1)
        if len(descriptors) < 2000
        else np.concatenate(
            [((c[:, None, :] - words[None, :, :]) ** 2).sum(-1) for c in np.array_split(descriptors, 8)]
        )
    )
    counts = np.bincount(d.argmin(1), minlength=len(words))
    return np.sqrt(counts / counts.sum()).astype(np.float32)


def _entry_bow(task):
    npz, words = task
    return bow_histogram(np.load(npz)["descriptors"], words)


def entry_bows(folder, db, entries, words) -> np.ndarray:
    from concurrent.futures import ProcessPoolExecutor

    path = os.path.join(folder, "entry_bows.npy")
    if os.path.exists(path):
        return np.load(path)
    tasks = [(os.path.join(db, "features", e["features"]), words) for e in entries]
    with ProcessPoolExecutor(2) as pool:
        out = np.stack(list(pool.map(_entry_bow, tasks, chunksize=50)))
    np.save(path, out)
    return out


def first_right_rank(order, entry_classes, want) -> int | None:
    hits = np.flatnonzero(entry_classes[order] == want)
    return int(hits[0]) + 1 if len(hits) else None


def variants(args, manifest, db):
    folder = folder_of(args)
    entries = read_entries(db)
    by_path = {e["path"]: e for e in manifest["entries"]}
    classes = sc.equivalence_classes(manifest, folder)
    labels = [by_path[e["path"]]["label"] for e in entries]
    names = sorted(set(classes.values()))
    code = {c: i for i, c in enumerate(names)}
    entry_classes = np.array([code[classes[lab]] for lab in labels])
    matrix = np.stack([e["vector"] for e in entries])
    ids = np.array([e["id"] for e in entries])
    sigs = [e["signature"] for e in entries]
    qv = query_vectors(manifest, folder)
    options = {
        "0.3 signature": None,
        "shape": {"shape": 1.0, "harmonics": 0.0},
        "harmonics": {"shape": 0.0, "harmonics": 1.0},
    }
    for w in (0.05, 0.1, 0.2, 0.5, 1.0, 2.0):
        options[f"shape + {w:g} x harmonics"] = {"shape": 1.0, "harmonics": w}
    words = bow_codebook(folder)
    bows = entry_bows(folder, db, entries, words)
    qbows = [bow_histogram(np.load(q["path"] + ".descriptors.npy"), words) for q in manifest["queries"]]
    for w in (0.0, 1.0, 3.0):
        options["bow" if w == 0 else f"shape + harmonics + {w:g} x bow"] = ("bow", w)
    table = {}
    for name, weights in options.items():
        ranks = []
        for (vec, sig), q, qb in zip(qv, manifest["queries"], qbows):
            if isinstance(weights, tuple):
                bow_d = np.abs(bows - qb).sum(1)
                d = bow_d if weights[1] == 0 else prefilter.distances(vec, matrix) + weights[1] * bow_d
            else:
                d = signature_distance(sig, sigs) if weights is None else prefilter.distances(vec, matrix, weights)
            order = np.lexsort((ids, d))
            ranks.append(first_right_rank(order, entry_classes, code[classes[q["label"]]]))
        table[name] = ranks
    print(
        f"\npre-filter: rank of the first right entry among {len(entries)} (recall@K = share of queries with "
        "it in the first K)"
    )
    print(f"{'variant':28s} {'part':5s} " + " ".join(f"@{k:<4d}" for k in KS) + "  median  max")
    for name, ranks in table.items():
        for part in ("tune", "held"):
            r = [x if x is not None else 10**9 for x, q in zip(ranks, manifest["queries"]) if q["part"] == part]
            print(
                f"{name:28s} {part:5s} "
                + " ".join(f"{np.mean(np.array(r) <= k):5.2f}" for k in KS)
                + f"  {np.median(r):6.0f}  {max(r)}"
            )
    json.dump(table, open(os.path.join(folder, "variants.json"), "w"))
    return table


def searches(args, manifest, db) -> list:
    folder = folder_of(args)
    by_path = {e["path"]: e for e in manifest["entries"]}
    out = []
    tag = f"p{args.prefilter}-r{args.refine}-j{args.jobs}" + (f"-{args.tag}" if args.tag else "")
    os.makedirs(os.path.join(folder, "results"), exist_ok=True)
    for n, q in enumerate(manifest["queries"]):
        cached = os.path.join(folder, "results", f"q{n:03d}_{tag}.json")
        if os.path.exists(cached):
            out.append(json.load(open(cached)))
            continue
        started = time.perf_counter()
        result = search(
            q["path"], db, contour=q["contour"], top=10, prefilter=args.prefilter, refine=args.refine, jobs=args.jobs
        )
        elapsed = time.perf_counter() - started
        rights = [sc.is_right(manifest, q, by_path[h.path], h.T_query_entry) for h in result.hits]
        record = dict(
            query=q["name"],
            kind=q["kind"],
            part=q["part"],
            label=q["label"],
            time_s=elapsed,
            timings=result.timings_s,
            rights=rights,
            hits=[dict(label=by_path[h.path]["label"], score=h.score, d=h.signature_distance) for h in result.hits],
            maxrss_MB=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        )
        json.dump(record, open(cached, "w"))
        print(
            f"  q{n:03d} {q['kind']:10s} {q['part']:4s} {q['label'][:30]:30s} rank1={'yes' if rights[:1] == [True] else 'NO '} "
            f"top5={'yes' if any(rights[:5]) else 'NO '} best={record['hits'][0]['label'][:30] if record['hits'] else '-':30s} "
            f"{elapsed:5.1f} s",
            flush=True,
        )
        out.append(record)
    return out


def table(args, manifest, db, results):
    folder = folder_of(args)
    timing = json.load(open(os.path.join(folder, "index_timing.json")))
    features = os.path.join(db, "features")
    disk = sum(os.path.getsize(os.path.join(features, f)) for f in os.listdir(features))
    n = len(manifest["entries"])
    sqlite_size = os.path.getsize(os.path.join(db, DB_FILE))
    print(
        f"\n{n} entries ({len({e['label'] for e in manifest['entries']})} labels), {len(results)} queries; "
        f"prefilter {args.prefilter}, refine {args.refine}, {args.jobs} workers"
    )
    print(f"{'part':10s} {'queries':>7s} {'rank 1':>8s} {'top 5':>8s} {'time median':>12s} {'max':>7s}")
    for part in ("tune", "held", "all"):
        rs = [r for r in results if part == "all" or r["part"] == part]
        if not rs:
            continue
        t = [r["time_s"] for r in rs]
        print(
            f"{part:10s} {len(rs):7d} {sum(r['rights'][:1] == [True] for r in rs):4d}/{len(rs):<3d} "
            f"{sum(any(r['rights'][:5]) for r in rs):4d}/{len(rs):<3d} {np.median(t):10.1f} s {max(t):5.1f} s"
        )
    for kind in ("present", "resolution", "state"):
        rs = [r for r in results if r["kind"] == kind]
        print(
            f"  {kind:10s} {len(rs):3d} queries: rank 1 {sum(r['rights'][:1] == [True] for r in rs)}, top 5 "
            f"{sum(any(r['rights'][:5]) for r in rs)}"
        )
    stages = {}
    for r in results:
        for k, v in r["timings"].items():
            stages.setdefault(k, []).append(v)
    print("per-stage median (s): " + ", ".join(f"{k} {np.median(v):.2f}" for k, v in stages.items()))
    print(
        f"index: {timing['indexed']} maps in {timing['wall_s'] / 60:.0f} min on {args.jobs} workers "
        f"({np.mean(timing['prepare_s']) if timing['prepare_s'] else float('nan'):.2f} s worker time per map); "
        f"disk {disk / n / 1e6:.2f} MB per entry (features) + {sqlite_size / n / 1e3:.1f} kB (SQLite row)"
    )
    print(f"peak memory of the search process: {max(r['maxrss_MB'] for r in results):.0f} MB")
    opened = []
    for _ in range(3):
        t = time.perf_counter()
        from cryoalign.apps.catalogue import usable_vectors

        usable_vectors(db, catalogue_config(None))
        opened.append(time.perf_counter() - t)
    print(f"catalogue read for a search ({n} entries): {min(opened):.3f} s")


def executors(args, manifest, db, count: int) -> None:
    """The first `count` queries searched with 1 worker, 2 workers and a Dask LocalCluster
    of 2 workers: the same hits (maps, scores, matrices) every time."""
    from distributed import LocalCluster

    def hits(**kw):
        out = []
        for q in manifest["queries"][:count]:
            r = search(q["path"], db, contour=q["contour"], top=10, prefilter=args.prefilter, refine=args.refine, **kw)
            out.append([(h.map, h.score, np.asarray(h.T_query_entry).tolist()) for h in r.hits])
        return out

    one, two = hits(jobs=1), hits(jobs=2)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        dask = hits(scheduler=cluster.scheduler_address)
    print(f"executors: {count} queries, the same hits for jobs 1 and 2: {one == two}; jobs 1 and Dask: {one == dask}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sc.add_corpus_arguments(ap)
    ap.add_argument("--prefilter", type=int, default=25)
    ap.add_argument("--refine", type=int, default=3)
    ap.add_argument("--tag", default="", help="a name for this run's cached results (to compare code versions)")
    ap.add_argument("--variants", action="store_true")
    ap.add_argument("--searches", action="store_true")
    ap.add_argument("--executors", type=int, default=0, help="check this many queries on 1, 2 workers and Dask")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    manifest, db = build_and_index(args)
    if args.variants:
        variants(args, manifest, db)
    if args.searches:
        results = searches(args, manifest, db)
        table(args, manifest, db, results)
    if args.executors:
        executors(args, manifest, db, args.executors)


if __name__ == "__main__":
    main()
