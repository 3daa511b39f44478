"""Catalogue search on a synthetic database: is the query's molecule ranked first, how long
does a search take, and what does the signature pre-filter lose?

    python benchmarks/search_bench.py [--entries 1000] [--queries 40] [--full 2] [--jobs 2] [--cache DIR]

Database (simulated from /work/shared/data/models/*.pdb.gz, each in a seeded random pose):
for every model, the whole model and selections of its chains (single chains and
sub-complexes: random subsets of chains), each at --resolutions (6, 8, 10 Å), indexed
with `cryoalign.apps.catalogue.index`.  The entries of one (model, chain selection) share a
label; the near-duplicates (a complex and the same complex minus a small chain; the
related models 5NSR/5NSS, 5FKV/5FKW/5M1S, 5FWM/5FWP, 5U8S/5U8T) are the hard decoys.
Queries: selections that are in the database, simulated again at --query-resolution
(7 Å, not among the entries'), in another pose, with Gaussian noise; their contour is the
one enclosing the molecular volume of the clean map (as an EMDB recommended level would).
A query is right at rank 1 when the best hit carries its label; the pose of the best
hit with its label is checked against the known motion.

Generated maps, the catalogue and the per-query results live under --cache
(default ~/.cache/cryoalign-bench/search); reruns reuse them (indexing and searching resume).
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import time

import numpy as np

from cryoalign import transform as tf
from cryoalign.apps import simulate
from cryoalign.apps.catalogue import index, read_entries, search
from cryoalign.io import read_model, transform_model, write_map

MODELS = sorted(
    glob.glob(
        os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "models", "*.pdb.gz")
    )
)
RESOLUTIONS = (6.0, 8.0, 10.0)


def selections(st, count: int, rng) -> list:
    """(chains or None for all) selections of a model: the whole, its largest chains
    alone, then random sub-complexes (at least two chains, not all), distinct."""
    chains = simulate.chain_ids(st)
    out = [None]
    if len(chains) == 1:
        return out
    by_mass = sorted(chains, key=lambda c: -simulate.model_mass_Da(st, [c]))
    for c in by_mass[: max(1, count // 2)]:
        if len(out) < count:
            out.append((c,))
    tries = 0
    while len(out) < count and tries < 200 and len(chains) > 2:
        tries += 1
        k = int(rng.integers(2, len(chains)))
        subset = tuple(sorted(rng.choice(chains, k, replace=False)))
        if subset not in out:
            out.append(subset)
    return out


def label(model: str, chains) -> str:
    return os.path.basename(model).split(".")[0] + ":" + ("all" if chains is None else "".join(chains))


def random_pose(rng) -> np.ndarray:
    return tf.make(tf.random_rotation(rng), rng.uniform(-50.0, 50.0, 3))


def simulate_map(st, chains, resolution, T, path, rng=None, noise=0.0) -> float:
    """Write the map of `chains` moved by T; return its contour (the molecular volume's)."""
    density = simulate.simulate(
        transform_model(st, T), resolution, chains=list(chains) if chains else None, voxel_A=max(resolution / 3.0, 2.0)
    )
    contour = simulate.contour_for(density, simulate.model_mass_Da(st, list(chains) if chains else None))
    if noise > 0:
        data = density.data + rng.normal(0.0, noise * contour, density.data.shape).astype(np.float32)
        density = type(density)(data=data, voxel_size_A=density.voxel_size_A, origin_A=density.origin_A)
    write_map(density, path)
    return float(contour)


def build_database(args, folder) -> tuple[dict, dict]:
    """Simulate the entries (cached); returns ({path: info}, {path: contour})."""
    manifest_path = os.path.join(folder, "entries.json")
    if os.path.exists(manifest_path):
        manifest = json.load(open(manifest_path))
        if manifest["entries"] == args.entries:
            return manifest["maps"], {p: m["contour"] for p, m in manifest["maps"].items()}
    rng = np.random.default_rng(args.seed)
    per_model = max(1, round(args.entries / len(RESOLUTIONS) / len(MODELS)))
    plan = []
    for model in MODELS:
        st = read_model(model)
        for chains in selections(st, per_model + (per_model // 2 if len(simulate.chain_ids(st)) > 3 else 0), rng):
            plan.append((model, chains))
    plan = plan[: max(1, args.entries // len(RESOLUTIONS))] if len(plan) * len(RESOLUTIONS) > args.entries else plan
    maps = {}
    os.makedirs(os.path.join(folder, "maps"), exist_ok=True)
    for n, (model, chains) in enumerate(plan):
        st = read_model(model)
        for resolution in RESOLUTIONS:
            T = random_pose(rng)
            name = f"e{n:04d}_{label(model, chains).replace(':', '_')}_{resolution:g}A.mrc"
            path = os.path.join(folder, "maps", name)
            contour = simulate_map(st, chains, resolution, T, path)
            maps[path] = dict(
                label=label(model, chains),
                model=model,
                chains=chains,
                resolution=resolution,
                T_world_model=T.tolist(),
                contour=contour,
            )
    json.dump(dict(entries=args.entries, maps=maps), open(manifest_path, "w"))
    return maps, {p: m["contour"] for p, m in maps.items()}


def plan_queries(args, maps: dict) -> list:
    """Query selections: every whole model first, then parts, spread over the models."""
    seen, wholes, parts = set(), [], []
    for info in maps.values():
        if info["label"] in seen:
            continue
        seen.add(info["label"])
        (wholes if info["chains"] is None else parts).append(info)
    rng = np.random.default_rng(args.seed + 1)
    parts = [parts[i] for i in rng.permutation(len(parts))]
    return (wholes + parts)[: args.queries]


def run_queries(args, folder, maps, queries, db, prefilter, tag) -> list:
    rng = np.random.default_rng(args.seed + 2)
    out = []
    os.makedirs(os.path.join(folder, "queries"), exist_ok=True)
    for q, info in enumerate(queries):
        T = random_pose(rng)
        path = os.path.join(folder, "queries", f"q{q:03d}_{info['label'].replace(':', '_')}.mrc")
        noise_rng = np.random.default_rng(args.seed + 100 + q)
        st = read_model(info["model"])
        contour = simulate_map(st, info["chains"], args.query_resolution, T, path, noise_rng, args.noise)
        cached = os.path.join(folder, "queries", f"q{q:03d}_{tag}.json")
        if os.path.exists(cached):
            out.append(json.load(open(cached)))
            continue
        started = time.perf_counter()
        result = search(
            path, db, contour=contour, top=max(10, args.top), prefilter=prefilter, refine=args.refine, jobs=args.jobs
        )
        elapsed = time.perf_counter() - started
        record = dict(
            label=info["label"],
            time_s=elapsed,
            searched=result.searched,
            timings=result.timings_s,
            hits=[],
            pose_error=None,
        )
        for h in result.hits:
            record["hits"].append(
                dict(
                    label=maps[h.path]["label"],
                    score=h.score,
                    sig=h.signature_distance,
                    alignment_score=h.alignment_score,
                    coverage=h.coverage,
                    copy=equivalent_copy(info, T, maps[h.path], h.T_query_entry),
                )
            )
        for h in result.hits:
            if maps[h.path]["label"] == info["label"]:
                T_ref = T @ tf.invert(np.array(maps[h.path]["T_world_model"]))
                centre = np.array(_centre(h.path))
                record["pose_error"] = list(tf.pose_error(np.asarray(h.T_query_entry), T_ref, centre))
                break
        json.dump(record, open(cached, "w"))
        ok = record["hits"] and record["hits"][0]["label"] == info["label"]
        print(
            f"  [{tag}] q{q:03d} {info['label']:16s} rank1={'yes' if ok else 'NO '} "
            f"best={record['hits'][0]['label'] if record['hits'] else '-':16s} {elapsed:6.1f} s "
            f"pose err={record['pose_error']}",
            flush=True,
        )
        out.append(record)
    return out


def _ca(model: str, chains) -> np.ndarray:
    st = read_model(model)
    return np.array(
        [
            a.pos.tolist()
            for ch in st[0]
            if chains is None or ch.name in chains
            for r in ch
            for a in r
            if a.name in ("CA", "P")
        ]
    )


def equivalent_copy(query: dict, T_query: np.ndarray, entry: dict, T_query_entry) -> bool:
    """The entry, moved by the hit's T_query_entry, lies on the query's atoms (at least 80% of
    the CA/P atoms of each within 4 Å of the other's): the query's molecule under another label
    (an identical subunit, the same sub-complex of other copies, a related model) at the right pose."""
    from scipy.spatial import cKDTree

    a = tf.apply(T_query, _ca(query["model"], query["chains"]))
    b = tf.apply(np.asarray(T_query_entry) @ np.array(entry["T_world_model"]), _ca(entry["model"], entry["chains"]))
    if not 0.7 < len(b) / len(a) < 1.3:
        return False
    da, _ = cKDTree(b).query(a, distance_upper_bound=4.0)
    db, _ = cKDTree(a).query(b, distance_upper_bound=4.0)
    return bool(np.isfinite(da).mean() >= 0.8 and np.isfinite(db).mean() >= 0.8)


def same_structure(a: dict, b: dict, tolerance_A: float = 1.0) -> float | None:
    """CA RMSD (Å) after superposition between two single-chain selections with the same
    residue numbers (the same protein: a chain of a homo-oligomer, or of two models of one
    complex), else None.  Two such entries are the same molecule under two labels."""
    import gemmi

    if not (a["chains"] and b["chains"] and len(a["chains"]) == len(b["chains"]) == 1):
        return None
    cas = []
    for info in (a, b):
        chain = gemmi.read_structure(info["model"])[0][info["chains"][0]]
        cas.append({r.seqid.num: np.array(r["CA"][0].pos.tolist()) for r in chain if r.find_atom("CA", "*")})
    if set(cas[0]) != set(cas[1]):
        return None
    keys = sorted(cas[0])
    A, B = (np.array([c[k] for k in keys]) for c in cas)
    moved = tf.apply(tf.kabsch(A, B, np.ones(len(A))), A)
    rmsd = float(np.sqrt(((moved - B) ** 2).sum(1).mean()))
    return rmsd if rmsd < tolerance_A else None


def _centre(path):
    from cryoalign.io import read_map

    m = read_map(path)
    zyx = np.argwhere(m.data > np.percentile(m.data, 90))
    return m.index_to_world(zyx[:, ::-1]).mean(0)


def prefilter_recall(maps, queries, folder, db, args) -> list:
    """For each query (its pre-filter vector, from the query map prepared as search does):
    the pre-filter rank of the first entry carrying its label."""
    from cryoalign.apps.catalogue import catalogue_config, prefilter
    from cryoalign.core.prepare import prepare, resolve_contour
    from cryoalign.io import read_map

    entries = read_entries(db)
    matrix = np.stack([e["vector"] for e in entries])
    config = catalogue_config(None)
    ranks = []
    for q, info in enumerate(queries):
        path = os.path.join(folder, "queries", f"q{q:03d}_{info['label'].replace(':', '_')}.mrc")
        density = read_map(path)
        contour = simulate.contour_for(density, simulate.model_mass_Da(read_model(info["model"]), info["chains"]))
        region, _ = resolve_contour(density, contour, "contour")
        d = prefilter.distances(prefilter.vector(prepare(density, region.contour, config, region=region)), matrix)
        order = np.argsort(d, kind="stable")
        labels = [maps[entries[i]["path"]]["label"] for i in order]
        ranks.append(labels.index(info["label"]) + 1 if info["label"] in labels else None)
    return ranks


def _search_s(prepare_s, prefilter, align_s, refine_s, workers) -> float:
    """Projected wall time of one search: prepare the query, screen `prefilter` entries on
    `workers`, re-align the best 5 (measured on 2 workers)."""
    return prepare_s + prefilter * align_s / workers + refine_s * 2 / min(workers, 5)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entries", type=int, default=1000)
    ap.add_argument("--queries", type=int, default=40)
    ap.add_argument("--full", type=int, default=2, help="queries also run with prefilter=all (every entry aligned)")
    ap.add_argument("--prefilter", type=int, default=25)
    ap.add_argument("--top", type=int, default=5)
    ap.add_argument("--refine", type=int, default=3)
    ap.add_argument("--tag", default="", help="a name for this run's cached results (to compare code versions)")
    ap.add_argument("--query-resolution", type=float, default=7.0)
    ap.add_argument("--noise", type=float, default=0.3, help="noise sigma as a fraction of the query's contour")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", default=os.path.expanduser("~/.cache/cryoalign-bench/search"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    folder = os.path.join(args.cache, f"n{args.entries}")
    os.makedirs(folder, exist_ok=True)

    started = time.perf_counter()
    maps, contours = build_database(args, folder)
    simulate_s = time.perf_counter() - started
    db = os.path.join(folder, "db")
    started = time.perf_counter()
    summary = index(list(maps), db, contours=contours, jobs=args.jobs)
    index_s = time.perf_counter() - started
    timing_path = os.path.join(folder, "index_timing.json")
    if summary.indexed:  # keep the figures of the run that did the work
        json.dump(dict(wall_s=index_s, indexed=summary.indexed, prepare_s=summary.prepare_s), open(timing_path, "w"))
    timing = json.load(open(timing_path))
    print(
        f"database: {len(maps)} maps ({len({m['label'] for m in maps.values()})} labels), simulated in "
        f"{simulate_s:.0f} s; {summary}",
        flush=True,
    )

    queries = plan_queries(args, maps)
    tag = f"p{args.prefilter}-r{args.refine}" + (f"-{args.tag}" if args.tag else "")
    results = run_queries(args, folder, maps, queries, db, args.prefilter, tag)
    full = run_queries(args, folder, maps, queries[: args.full], db, None, "all") if args.full else []
    sig_ranks = prefilter_recall(maps, queries, folder, db, args)

    n = len(results)
    rank1 = sum(bool(r["hits"]) and r["hits"][0]["label"] == r["label"] for r in results)
    rank1_copy = sum(
        bool(r["hits"]) and (r["hits"][0]["label"] == r["label"] or r["hits"][0].get("copy", False)) for r in results
    )
    infos = {m["label"]: m for m in maps.values()}
    identical = []  # misses whose best hit is the query's chain under another label
    for r in results:
        if r["hits"] and r["hits"][0]["label"] != r["label"]:
            rmsd = same_structure(infos[r["label"]], infos[r["hits"][0]["label"]])
            if rmsd is not None:
                identical.append(f"{r['label']} -> {r['hits'][0]['label']} ({rmsd:.2f} Å)")
    by_alignment = [sorted(r["hits"], key=lambda h: -h["alignment_score"]) for r in results]
    rank1_alignment = sum(bool(h) and h[0]["label"] == r["label"] for h, r in zip(by_alignment, results))
    top5 = sum(any(h["label"] == r["label"] for h in r["hits"][: args.top]) for r in results)
    times = np.array([r["time_s"] for r in results])
    errors = np.array([r["pose_error"] for r in results if r["pose_error"] is not None])
    per_map = float(np.mean(timing["prepare_s"]))
    wall_per_map = timing["wall_s"] / timing["indexed"]
    align_per_entry = float(np.mean([r["timings"]["screen"] / r["searched"] for r in results])) * args.jobs
    refine_s = float(np.mean([r["timings"]["refine"] for r in results]))
    prep_query = float(np.mean([r["timings"]["prepare query"] for r in results]))
    within = sum(r is not None and r <= args.prefilter for r in sig_ranks)
    same_full = sum(
        bool(f["hits"]) and bool(r["hits"]) and f["hits"][0]["label"] == r["hits"][0]["label"]
        for f, r in zip(full, results)
    )
    full_rank1 = sum(bool(f["hits"]) and f["hits"][0]["label"] == f["label"] for f in full)

    scaled = args.prefilter * 30000 // len(maps)  # the true entry's signature rank grows with the catalogue
    rows = [
        ("entries (maps indexed)", f"{len(maps)}"),
        ("index: worker time per map", f"{per_map:.2f} s (wall {wall_per_map:.2f} s per map on {args.jobs} workers)"),
        ("queries", f"{n} (resolution {args.query_resolution:g} Å, noise {args.noise:g} x contour)"),
        ("true entry at rank 1", f"{rank1}/{n} = {100 * rank1 / n:.0f}%"),
        ("true entry or an equivalent copy at its pose at rank 1", f"{rank1_copy}/{n} = {100 * rank1_copy / n:.0f}%"),
        ("rank 1 wrong, but the same chain (CA RMSD < 1 Å)", f"{len(identical)}: " + ("; ".join(identical) or "-")),
        (f"true entry in top {args.top}", f"{top5}/{n} = {100 * top5 / n:.0f}%"),
        (
            "rank 1 right when ranked by the alignment score alone",
            f"{rank1_alignment}/{n} (the 10 best hits re-ranked without the coverage)",
        ),
        (
            "pose error of the best true hit (median / max)",
            f"{np.median(errors[:, 0]):.2f}° / {errors[:, 0].max():.2f}°, "
            f"{np.median(errors[:, 1]):.2f} Å / {errors[:, 1].max():.2f} Å"
            if len(errors)
            else "-",
        ),
        (
            "time per query (median / max)",
            f"{np.median(times):.1f} s / {times.max():.1f} s (prefilter {args.prefilter}, {args.jobs} workers)",
        ),
        (
            "signature: true entry within the prefilter",
            f"{within}/{n} (signature rank median "
            f"{np.median([r or 10**9 for r in sig_ranks]):.0f}, "
            f"max {max(r or 10**9 for r in sig_ranks)})",
        ),
        (
            "prefilter=all (every entry aligned)",
            f"{len(full)} queries: same rank-1 label {same_full}/{len(full)}, rank 1 right {full_rank1}/{len(full)}, "
            f"{np.median([f['time_s'] for f in full]):.0f} s per query"
            if full
            else "-",
        ),
        (
            "screen one entry (worker time)",
            f"{align_per_entry:.2f} s; re-align the best 5: {refine_s:.1f} s "
            f"(wall); prepare the query {prep_query:.2f} s",
        ),
        (
            "projected: index 30,000 maps",
            "; ".join(f"{30000 * per_map / w / 60:.0f} min on {w} workers" for w in (2, 16, 64))
            + " (simulated maps of 20-550 kDa; real maps are larger boxes)",
        ),
        (
            "projected: search 30,000 maps",
            "; ".join(
                f"{_search_s(prep_query, p, align_per_entry, refine_s, w):.0f} s"
                for p in (args.prefilter, scaled)
                for w in (2, 16, 64)
            )
            + f" on 2, 16, 64 workers with prefilter {args.prefilter}, then with it "
            f"scaled with the catalogue ({scaled})",
        ),
    ]
    width = max(len(k) for k, _ in rows)
    print()
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    json.dump(
        dict(rows=rows, results=results, full=full, sig_ranks=sig_ranks),
        open(os.path.join(folder, "report.json"), "w"),
        indent=1,
    )


if __name__ == "__main__":
    main()
