"""The pre-filter at 30,000 entries: the 10,000-entry catalogue's vectors plus about 20,000
more, computed without indexing, and the rank of the first right entry for the same 60 queries.

    python benchmarks/prefilter_scale.py [--to 30000] [--entries 10000] [--jobs 2] [--cache DIR]

`search_scale.py` measures the whole search on an indexed catalogue of 10,460 entries; indexing
20,000 more (descriptors and all) would take about 4.5 hours on the 2-core machine. The
pre-filter needs only each map's vector (`prefilter.vector`: the sampled points above contour
and the volume), so this script adds entries to the pre-filter alone:

0. the catalogue's own vectors: read from the index when `search_scale.py` has built it, else
   computed here for the same seeded plan without writing the entries' maps (about 30 min on
   2 workers instead of the index's 73), the 60 queries simulated and written;

1. more selections of the same 47 models, none already in the catalogue (`search_corpus.
   selections` with a larger quota and another seed: contiguous sub-complexes of the
   multi-chain models), each simulated at three of the six resolutions in its own random pose,
   as the catalogue's are, until the total reaches --to;
2. each map simulated in a worker and its vector computed there as `index` computes it (the
   same point sampling; checked against the stored vectors of catalogue entries: equal), no map
   written; cached in chunks (resumable);
3. the 60 queries of the 10,000-entry corpus, their vectors as `search_scale.py` cached them;
   right = an entry of the query's equivalence class (`search_corpus.equivalence_classes`, over
   the old and the new labels together, so a new sub-complex that is a copy of the query's
   selection counts as right, and every other new entry is a decoy);
4. the table: recall@K and the worst rank, tune and held queries, at the catalogue's size and
   at every 5,000 entries added up to --to (the entries added in plan order), and the time of
   the distance computation over all rows.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import search_corpus as sc  # noqa: E402
from cryoalign.apps.catalogue import DB_FILE, catalogue_config, prefilter, read_entries  # noqa: E402
from search_scale import first_right_rank, folder_of, query_vectors  # noqa: E402

KS = (1, 5, 20, 25, 50, 100)
CHUNK = 500


def extra_plan(manifest: dict, to: int, seed: int) -> tuple[list, dict]:
    """(entries, molecules) to add: new selections, three resolutions each, in a seeded order."""
    catalogue = sc.models()
    have = set(manifest["molecules"])
    need = to - len(manifest["entries"])
    cas = {k: sc.chain_cas(sc.load(k, p)) for k, (p, _) in sorted(catalogue.items()) if k != "adk_closed"}
    rng = np.random.default_rng([seed, 30])
    new = {}
    # every multi-chain model's quota doubled in turns until there are enough new labels
    for quota in (8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096):
        if 3 * len(new) >= need:
            break
        for i, k in enumerate(sorted(cas)):
            if sum(len(v) > 0 for v in cas[k].values()) < 3:
                continue
            for chains in sc.selections(cas[k], quota, np.random.default_rng([seed, 31, i, quota])):
                lab = sc.label(k, chains)
                if chains is not None and lab not in have and lab not in new:
                    new[lab] = (k, chains)
    labels = sorted(new)
    labels = [labels[i] for i in rng.permutation(len(labels))]
    entries, molecules = [], {}
    for lab in labels:
        if len(entries) >= need:
            break
        k, chains = new[lab]
        ca = np.concatenate([cas[k][c] for c in chains if len(cas[k][c])])
        molecules[lab] = dict(key=k, chains=list(chains), family=catalogue[k][1], n_ca=len(ca))
        for r in sorted(rng.choice(sc.RESOLUTIONS, 3, replace=False).tolist()):
            entries.append(dict(label=lab, key=k, chains=list(chains), resolution=float(r)))
    entries = entries[:need]
    for n, e in enumerate(entries):
        e["T"] = sc.random_pose(np.random.default_rng([seed, 37, n])).tolist()
    return entries, molecules


def _vector(task: dict):
    """The pre-filter vector of one simulated entry, as `index` computes it (runs in a worker)."""
    from cryoalign.apps import simulate
    from cryoalign.core import pointcloud

    st = sc.load(task["key"], task["path"])
    chains = list(task["chains"]) if task["chains"] else None
    density = simulate.simulate(
        sc.transform_model(st, np.array(task["T"])),
        task["resolution"],
        chains=chains,
        voxel_A=max(task["resolution"] / 3.0, 2.0),
    )
    contour = float(simulate.contour_for(density, simulate.model_mass_Da(st, chains)))
    config = catalogue_config(None)
    region = pointcloud.scan(density, contour)
    crop = region.crop()
    field = pointcloud.smooth_field(crop, contour, config.vector_sigma_A * pointcloud.KERNEL_TO_STD)
    cloud = pointcloud.sample_points(crop, contour, config.sampling_A, config.vector_sigma_A, field=field)
    if len(cloud) < 20:  # `index` refuses such a map (too few points)
        return None
    return prefilter.vector(_Points(cloud, region.volume_A3))


class _Points:
    """What `prefilter.vector` reads of a PreparedMap."""

    def __init__(self, cloud, volume_A3):
        self.cloud, self.volume_A3 = cloud, volume_A3


def entry_vectors(folder: str, entries: list, jobs: int) -> tuple[np.ndarray, np.ndarray]:
    """(vectors, index into entries) of the entries that have a vector; cached per chunk."""
    catalogue = sc.models()
    os.makedirs(folder, exist_ok=True)
    started = time.perf_counter()
    out, kept = [], []
    with ProcessPoolExecutor(jobs) as pool:
        for start in range(0, len(entries), CHUNK):
            path = os.path.join(folder, f"vectors_{start:06d}.npz")
            if not os.path.exists(path):
                part = entries[start : start + CHUNK]
                tasks = [dict(e, path=catalogue[e["key"]][0]) for e in part]
                got = list(pool.map(_vector, tasks, chunksize=8))
                ok = np.array([g is not None for g in got])
                vec = (
                    np.stack([g for g in got if g is not None]) if ok.any() else np.zeros((0, prefilter.VECTOR_LENGTH))
                )
                tmp = path + ".tmp.npz"
                np.savez(tmp, vectors=vec.astype(np.float32), ok=ok)
                os.replace(tmp, path)
                print(
                    f"  {start + len(part)}/{len(entries)} vectors ({time.perf_counter() - started:.0f} s)",
                    flush=True,
                )
            z = np.load(path)
            out.append(z["vectors"])
            kept.extend((start + np.flatnonzero(z["ok"])).tolist())
    return np.concatenate(out), np.array(kept)


def catalogue_vectors(args, folder: str) -> tuple[tuple[np.ndarray, list], dict]:
    """((vectors, labels), manifest) of the --entries catalogue: the indexed catalogue's stored
    vectors when `search_scale.py` has indexed it, else the same plan's entries computed here
    without writing their maps (cached per chunk under `vectors/`), and the 60 queries
    simulated (written: their vectors are prepared from the map files as a search prepares them)."""
    db = os.path.join(folder, "db")
    manifest_path = os.path.join(folder, "corpus.json")
    if os.path.exists(manifest_path) and os.path.exists(os.path.join(db, DB_FILE)):
        manifest = json.load(open(manifest_path))
        by_path = {e["path"]: e for e in manifest["entries"]}
        stored = read_entries(db)
        return (np.stack([e["vector"] for e in stored]), [by_path[e["path"]]["label"] for e in stored]), manifest
    plan_path = os.path.join(folder, "vectors_plan.json")
    if os.path.exists(plan_path):
        manifest = json.load(open(plan_path))
    else:
        entries, queries, molecules = sc.plan(args)
        catalogue = sc.models()
        os.makedirs(os.path.join(folder, "queries"), exist_ok=True)
        for n, q in enumerate(queries):
            task = dict(
                key=q["key"],
                path=catalogue[q["key"]][0],
                chains=q["chains"],
                resolution=q["resolution"],
                T=q["T"],
                out=os.path.join(folder, "queries", q["name"]),
                noise=args.noise,
                seed=args.seed + 100 + n,
                anm=q["anm"],
            )
            info = sc._simulate(task)
            q["path"], q["contour"] = task["out"], info["contour"]
        manifest = dict(entries=entries, queries=queries, molecules=molecules)
        json.dump(manifest, open(plan_path, "w"))
    print(f"{len(manifest['entries'])} catalogue entries (vectors computed here, no index)")
    vectors, kept = entry_vectors(os.path.join(folder, "vectors"), manifest["entries"], args.jobs)
    return (vectors, [manifest["entries"][i]["label"] for i in kept]), manifest


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sc.add_corpus_arguments(ap)
    ap.add_argument("--to", type=int, default=30000, help="catalogue size to reach (default 30000)")
    args = ap.parse_args(argv)
    folder = folder_of(args)
    os.makedirs(folder, exist_ok=True)
    base_vectors, manifest = catalogue_vectors(args, folder)
    grow = os.path.join(folder, f"grow{args.to}")
    os.makedirs(grow, exist_ok=True)
    plan_path = os.path.join(grow, "plan.json")
    if os.path.exists(plan_path):
        plan = json.load(open(plan_path))
    else:
        entries, molecules = extra_plan(manifest, args.to, args.seed)
        plan = dict(entries=entries, molecules=molecules)
        json.dump(plan, open(plan_path, "w"))
    print(f"{len(plan['entries'])} entries to add ({len(plan['molecules'])} new labels)")
    t = time.perf_counter()
    vectors, kept = entry_vectors(grow, plan["entries"], args.jobs)
    build_s = time.perf_counter() - t

    base, base_labels = base_vectors
    both = dict(manifest, molecules={**manifest["molecules"], **plan["molecules"]})
    classes = sc.equivalence_classes(both, grow)
    names = sorted(set(classes.values()))
    code = {c: i for i, c in enumerate(names)}
    labels = base_labels + [plan["entries"][i]["label"] for i in kept]
    entry_classes = np.array([code[classes[lab]] for lab in labels])
    matrix = np.concatenate([base, vectors]).astype(np.float32)
    ids = np.arange(len(matrix))
    qv = query_vectors(manifest, folder)
    sizes = list(range(len(base), len(matrix), 5000)) + [len(matrix)]
    print(
        f"\npre-filter (shape + {prefilter.BLOCK_WEIGHTS['harmonics']:g} x harmonics): rank of the first right "
        f"entry; {len(base)} indexed entries + {len(kept)} added ({len(plan['entries']) - len(kept)} refused: "
        f"under 20 points), vectors of the added ones in {build_s:.0f} s"
    )
    print(f"{'entries':>8s} {'part':5s} " + " ".join(f"@{k:<4d}" for k in KS) + "  median  max  worst (query)")
    table = {}
    for n in sizes:
        sub = matrix[:n]
        ranks, spent = [], []
        for (vec, _), q in zip(qv, manifest["queries"]):
            t = time.perf_counter()
            d = prefilter.distances(vec, sub)
            order = np.lexsort((ids[:n], d))
            spent.append(time.perf_counter() - t)
            ranks.append(first_right_rank(order, entry_classes[:n], code[classes[q["label"]]]))
        table[n] = ranks
        for part in ("tune", "held"):
            r = [
                (x if x is not None else 10**9, q["name"])
                for x, q in zip(ranks, manifest["queries"])
                if q["part"] == part
            ]
            rr = np.array([x for x, _ in r])
            worst = max(r)
            print(
                f"{n:8d} {part:5s} "
                + " ".join(f"{np.mean(rr <= k):5.2f}" for k in KS)
                + f"  {np.median(rr):6.0f}  {rr.max():4d}  {worst[1]}"
            )
        print(f"{'':8s} distances and sort over {n} rows: median {1000 * np.median(spent):.1f} ms")
    json.dump({str(k): v for k, v in table.items()}, open(os.path.join(grow, "ranks.json"), "w"))


if __name__ == "__main__":
    main()
