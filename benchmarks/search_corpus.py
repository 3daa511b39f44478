"""The archive-scale search corpus: about 10,000 simulated entries and 60 queries from every
model in ../shared/data (the public models and the 35 of more/), seeded and cached.

    python benchmarks/search_corpus.py [--entries 10000] [--queries 60] [--jobs 2] [--cache DIR]

Entries (what a catalogue of the archive holds): for every model, the whole model, each
chain alone (at most 16) and contiguous sub-complexes (a random seed chain grown by random
neighbours, chains whose CA atoms come within 8 Å), each simulated in its own seeded
random pose at three of the resolutions 4, 5, 6, 8, 10 and 12 Å (all six for a model of
one chain), voxel max(resolution / 3, 2 Å), contour enclosing the molecular volume (as an
EMDB recommended level would).  The number of sub-complexes per model is scaled so the
whole reaches --entries.

Queries (60 by default; each simulated again in a new pose with Gaussian noise of
0.3 x contour), three kinds:
* `present` (40): a selection that is in the catalogue, at 7 Å (no entry is at 7 Å);
* `resolution` (10): a selection whose entries are only at 10 and 12 Å, queried at 4.5 Å;
* `state` (10): the molecule in another state than every entry of it: adenylate kinase
  closed (1AKE) against entries of the open form only (4AKE), and whole models moved along
  their lowest normal modes (`make_unseen_cases.anm_state`) by 4-8 Å CA RMSD.
A query's `part` is `held` when its family is one of the unseen corpus's held-out families
(`benchmarks/unseen/make_unseen_cases.HELD`), else `tune`: the pre-filter and its K are
chosen on the tune queries and judged on the held ones.

A hit is right (`is_right`) when its entry carries the query's molecule label (model and
chain selection; both states of a molecule share it), or when the entry's CA atoms moved by
the hit's T_query_entry and the query's CA atoms cover each other (at least 80% of each
within 4 Å): an equivalent copy (a chain of a homo-oligomer, the same sub-complex of
another copy, the same complex from a related model).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import gemmi
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "unseen"))
import make_unseen_cases as mu  # noqa: E402

from cryoalign import transform as tf  # noqa: E402
from cryoalign.apps import simulate  # noqa: E402
from cryoalign.io import transform_model, write_map  # noqa: E402

DATA = os.path.normpath(os.path.join(HERE, "..", "..", "shared", "data"))
RESOLUTIONS = (4.0, 5.0, 6.0, 8.0, 10.0, 12.0)
PUBLIC_FAMILY = {
    "5nss": "5nsr",
    "5fkw": "5fkv",
    "5m1s": "5fkv",
    "5fwp": "5fwm",
    "5u8t": "5u8s",
    "1oel_crystal_frame": "chaperonin",
}
MAX_SINGLE_CHAINS = 16
CONTACT_A = 8.0


def models() -> dict:
    """key -> (path, family) of every model: the public ones, then the unseen corpus's."""
    out = {}
    for name in sorted(os.listdir(os.path.join(DATA, "models"))):
        key = name.split(".")[0]
        out[key] = (os.path.join(DATA, "models", name), PUBLIC_FAMILY.get(key, key))
    for key, (rel, family) in mu.MODELS.items():
        out[key] = (os.path.join(mu.MORE, rel), family)
    return out


_LOADED: dict = {}


def load(key: str, path: str):
    """The cleaned model (hydrogens, waters, ligands and later models removed), cached per process."""
    if key not in _LOADED:
        _LOADED.clear()  # tasks come grouped by model: keep one
        _LOADED[key] = _load(key, path)
    return _LOADED[key].clone()


def _load(key: str, path: str):
    if key in mu.MODELS:
        return mu.load(key)
    st = gemmi.read_structure(path)
    st.remove_hydrogens()
    st.remove_ligands_and_waters()
    for i in range(len(st) - 1, 0, -1):
        del st[i]
    st.remove_empty_chains()
    return st


def chain_cas(st) -> dict:
    return {
        ch.name: np.array([a.pos.tolist() for r in ch for a in r if a.name in ("CA", "P")]).reshape(-1, 3)
        for ch in st[0]
    }


def contacts(cas: dict) -> dict:
    from scipy.spatial import cKDTree

    names = [c for c in cas if len(cas[c])]
    trees = {c: cKDTree(cas[c]) for c in names}
    out = {c: set() for c in names}
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            if trees[a].count_neighbors(trees[b], CONTACT_A) > 0:
                out[a].add(b)
                out[b].add(a)
    return out


def selections(cas: dict, quota: int, rng) -> list:
    """None (the whole), single chains, then contiguous sub-complexes, distinct, at most quota."""
    names = [c for c in cas if len(cas[c])]
    out = [None]
    if len(names) == 1:
        return out
    for c in sorted(names, key=lambda c: -len(cas[c]))[:MAX_SINGLE_CHAINS]:
        if len(out) < quota:
            out.append((c,))
    near = contacts(cas)
    seen = set(out)
    for _ in range(40 * quota):
        if len(out) >= quota or len(names) < 3:
            break
        size = int(rng.integers(2, len(names)))
        chosen = [names[int(rng.integers(len(names)))]]
        while len(chosen) < size:
            frontier = sorted(set().union(*(near[c] for c in chosen)) - set(chosen))
            if not frontier:
                break
            chosen.append(frontier[int(rng.integers(len(frontier)))])
        key = tuple(sorted(chosen))
        if len(key) >= 2 and key not in seen:
            seen.add(key)
            out.append(key)
    return out


def label(key: str, chains) -> str:
    return key + ":" + ("all" if chains is None else "+".join(chains))


def random_pose(rng) -> np.ndarray:
    return tf.make(tf.random_rotation(rng), rng.uniform(-50.0, 50.0, 3))


def _simulate(task: dict) -> dict:
    """Write one map (runs in a worker). task: key, path, chains, resolution, T, out, noise, seed, anm."""
    if os.path.exists(task["out"]) and os.path.exists(task["out"] + ".json"):
        return json.load(open(task["out"] + ".json"))
    st = load(task["key"], task["path"])
    if task.get("anm"):
        st, _ = mu.anm_state(np.random.default_rng(task["seed"]), st, task["anm"])
    chains = list(task["chains"]) if task["chains"] else None
    T = np.array(task["T"])
    density = simulate.simulate(
        transform_model(st, T), task["resolution"], chains=chains, voxel_A=max(task["resolution"] / 3.0, 2.0)
    )
    contour = float(simulate.contour_for(density, simulate.model_mass_Da(st, chains)))
    if task["noise"] > 0:
        rng = np.random.default_rng(task["seed"])
        data = density.data + rng.normal(0.0, task["noise"] * contour, density.data.shape).astype(np.float32)
        density = type(density)(data=data, voxel_size_A=density.voxel_size_A, origin_A=density.origin_A)
    tmp = task["out"] + ".tmp.mrc"
    write_map(density, tmp)
    os.replace(tmp, task["out"])
    info = dict(contour=contour, shape=list(density.data.shape))
    if task.get("anm"):  # the moved CA atoms, for the right-hit test
        np.save(task["out"] + ".ca.npy", np.concatenate([v for v in chain_cas(st).values() if len(v)]))
    json.dump(info, open(task["out"] + ".json", "w"))
    return info


def plan(args) -> tuple[list, list, dict]:
    """(entries, queries, molecules): the seeded plan, no map written."""
    rng = np.random.default_rng(args.seed)
    catalogue = models()
    cas = {}
    for key, (path, _) in catalogue.items():
        cas[key] = chain_cas(load(key, path))
    # sub-complex quota per model: scaled until the entries reach the target
    n_chains = {k: sum(len(v) > 0 for v in c.values()) for k, c in cas.items()}
    scale = 1.0
    for _ in range(40):
        per_model = {k: (1 if n == 1 else max(3, int(round(scale * n)))) for k, n in n_chains.items()}
        sels = {
            k: selections(cas[k], per_model[k], np.random.default_rng([args.seed, i]))
            for i, k in enumerate(sorted(cas))
        }
        total = sum(6 if len(s) == 1 else 3 * len(s) for s in sels.values())
        if total >= args.entries:
            break
        scale *= 1.25
    molecules = {}
    for k, chosen in sels.items():
        for chains in chosen:
            ca = np.concatenate([cas[k][c] for c in (chains or cas[k]) if len(cas[k][c])])
            molecules[label(k, chains)] = dict(key=k, chains=chains, family=catalogue[k][1], n_ca=len(ca))

    # queries: pick labels first (the resolution-gap labels change what the catalogue holds)
    qrng = np.random.default_rng(args.seed + 1)
    labels = sorted(molecules)
    order = [labels[i] for i in qrng.permutation(len(labels))]
    queries, used_models = [], {}
    n_state = args.queries // 6
    n_res = args.queries // 6
    n_present = args.queries - n_state - n_res
    # states: ADK closed against the open form only, then ANM states of whole models of 150-2500 residues
    queries.append(dict(kind="state", label=label("adk_open", None), key="adk_closed", chains=None, anm=None))
    used_models["adk_open"] = 1
    anm_models = [
        k
        for k in sorted(cas)
        if 150 <= molecules[label(k, None)]["n_ca"] <= 2500 and k not in ("adk_open", "adk_closed")
    ]
    for k in [anm_models[i] for i in qrng.permutation(len(anm_models))][: n_state - 1]:
        queries.append(
            dict(kind="state", label=label(k, None), key=k, chains=None, anm=float(np.round(qrng.uniform(4.0, 8.0), 1)))
        )
        used_models[k] = used_models.get(k, 0) + 1
    held_share = {"resolution": n_res // 3, "present": n_present // 3}  # a third from held-out families
    for kind, count in (("resolution", n_res), ("present", n_present)):
        for lab in order:
            mine = [q for q in queries if q["kind"] == kind]
            if len(mine) >= count:
                break
            m = molecules[lab]
            held = sum(molecules[q["label"]]["family"] in mu.HELD for q in mine)
            if (m["family"] in mu.HELD) != (held < held_share[kind]):
                continue
            if (
                used_models.get(m["key"], 0) >= 2
                or any(q["label"] == lab for q in queries)
                or m["key"] == "adk_closed"
                or m["n_ca"] < 60
            ):
                continue
            queries.append(dict(kind=kind, label=lab, key=m["key"], chains=m["chains"], anm=None))
            used_models[m["key"]] = used_models.get(m["key"], 0) + 1
    gap = {q["label"] for q in queries if q["kind"] == "resolution"}

    entries = []
    for k in sorted(sels):
        if k == "adk_closed":
            continue  # the catalogue holds adenylate kinase open only
        for chains in sels[k]:
            lab = label(k, chains)
            if lab in gap:
                res = [10.0, 12.0]
            elif len(sels[k]) == 1:
                res = list(RESOLUTIONS)
            else:
                res = sorted(rng.choice(RESOLUTIONS, 3, replace=False).tolist())
            for r in res:
                entries.append(dict(label=lab, key=k, chains=chains, resolution=float(r)))
    for n, e in enumerate(entries):
        e["T"] = random_pose(np.random.default_rng([args.seed, 7, n])).tolist()
        e["name"] = f"e{n:05d}_{e['label'].replace(':', '_').replace('+', '')}_{e['resolution']:g}A.mrc"
    for q, query in enumerate(queries):
        query["resolution"] = 4.5 if query["kind"] == "resolution" else 7.0
        query["T"] = random_pose(np.random.default_rng([args.seed, 11, q])).tolist()
        query["name"] = f"q{q:03d}_{query['kind']}_{query['label'].replace(':', '_').replace('+', '')}.mrc"
        query["family"] = molecules[query["label"]]["family"]
        query["part"] = "held" if query["family"] in mu.HELD else "tune"
    return entries, queries, molecules


def build(args) -> dict:
    """Simulate (cached, resumable) and return the manifest."""
    folder = os.path.join(args.cache, f"scale{args.entries}")
    manifest_path = os.path.join(folder, "corpus.json")
    if os.path.exists(manifest_path):
        return json.load(open(manifest_path))
    started = time.perf_counter()
    entries, queries, molecules = plan(args)
    catalogue = models()
    os.makedirs(os.path.join(folder, "maps"), exist_ok=True)
    os.makedirs(os.path.join(folder, "queries"), exist_ok=True)
    tasks = [
        dict(
            key=e["key"],
            path=catalogue[e["key"]][0],
            chains=e["chains"],
            resolution=e["resolution"],
            T=e["T"],
            out=os.path.join(folder, "maps", e["name"]),
            noise=0.0,
            seed=0,
        )
        for e in entries
    ]
    tasks += [
        dict(
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
        for n, q in enumerate(queries)
    ]
    infos = [None] * len(tasks)
    with ProcessPoolExecutor(args.jobs) as pool:
        for n, info in enumerate(pool.map(_simulate, tasks, chunksize=64)):
            infos[n] = info
            if n % 500 == 0:
                print(f"  simulated {n}/{len(tasks)} maps ({time.perf_counter() - started:.0f} s)", flush=True)
    for item, task, info in zip(entries + queries, tasks, infos):
        item["path"] = task["out"]
        item["contour"] = info["contour"]
    manifest = dict(
        entries=entries,
        queries=queries,
        molecules=molecules,
        simulate_s=time.perf_counter() - started,
        args=dict(entries=args.entries, queries=args.queries, seed=args.seed, noise=args.noise),
    )
    tmp = manifest_path + ".tmp"
    json.dump(manifest, open(tmp, "w"))
    os.replace(tmp, manifest_path)
    return manifest


_CA_CACHE: dict = {}


def molecule_ca(manifest: dict, lab: str) -> np.ndarray:
    """CA/P atoms of a catalogue molecule in its model's frame."""
    if lab not in _CA_CACHE:
        m = manifest["molecules"][lab]
        path = models()[m["key"]][0]
        cas = chain_cas(load(m["key"], path))
        _CA_CACHE[lab] = np.concatenate([cas[c] for c in (m["chains"] or cas) if len(cas[c])])
    return _CA_CACHE[lab]


def query_ca(manifest: dict, query: dict) -> np.ndarray:
    """The query's CA atoms in the query map's world."""
    moved = query["path"] + ".ca.npy"
    if os.path.exists(moved):
        ca = np.load(moved)
    elif query["key"] != manifest["molecules"][query["label"]]["key"]:  # the other state (ADK closed)
        cas = chain_cas(load(query["key"], models()[query["key"]][0]))
        ca = np.concatenate([v for v in cas.values() if len(v)])
    else:
        ca = molecule_ca(manifest, query["label"])
    return tf.apply(np.array(query["T"]), ca)


def is_right(
    manifest: dict, query: dict, entry: dict, T_query_entry, cover: float = 0.8, within_A: float = 4.0
) -> bool:
    """The module docstring's rule."""
    from scipy.spatial import cKDTree

    if entry["label"] == query["label"]:
        return True
    a = query_ca(manifest, query)
    b = tf.apply(np.asarray(T_query_entry) @ np.array(entry["T"]), molecule_ca(manifest, entry["label"]))
    if not 0.7 < len(b) / len(a) < 1.3:
        return False
    da, _ = cKDTree(b).query(a, distance_upper_bound=within_A)
    db, _ = cKDTree(a).query(b, distance_upper_bound=within_A)
    return bool(np.isfinite(da).mean() >= cover and np.isfinite(db).mean() >= cover)


def add_corpus_arguments(ap) -> None:
    """The options that name a corpus (shared with search_scale.py)."""
    ap.add_argument("--entries", type=int, default=10000)
    ap.add_argument("--queries", type=int, default=60)
    ap.add_argument("--noise", type=float, default=0.3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--cache", default=os.path.expanduser("~/.cache/cryoalign-bench/search"))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_corpus_arguments(ap)
    ap.add_argument("--plan-only", action="store_true", help="print the plan's counts, write nothing")
    args = ap.parse_args(argv)
    if args.plan_only:
        entries, queries, molecules = plan(args)
        print(f"{len(entries)} entries, {len({e['label'] for e in entries})} labels, {len(queries)} queries")
        for kind in ("present", "resolution", "state"):
            qs = [q for q in queries if q["kind"] == kind]
            print(f"  {kind}: {len(qs)} ({sum(q['part'] == 'held' for q in qs)} held)")
        return
    manifest = build(args)
    print(
        f"{len(manifest['entries'])} entries and {len(manifest['queries'])} queries "
        f"(simulated in {manifest['simulate_s']:.0f} s)"
    )


if __name__ == "__main__":
    main()


def _chain_info(key: str) -> dict:
    """chain -> (sequence, CA/P atoms) of a model."""
    st = load(key, models()[key][0])
    out = {}
    for ch in st[0]:
        residues = [r for r in ch if r.find_atom("CA", "*") or r.find_atom("P", "*")]
        atoms = [(r.find_atom("CA", "*") or r.find_atom("P", "*")).pos.tolist() for r in residues]
        out[ch.name] = (gemmi.one_letter_code([r.name for r in residues]), np.array(atoms).reshape(-1, 3))
    return out


def equivalence_classes(manifest: dict, folder: str, rmsd_A: float = 3.0) -> dict:
    """label -> class: labels of one model family with the same chain sequences that are
    the same shape are one class (cached in the folder).  Same shape: every chain of one
    superimposes on a chain of the same sequence of the other within `rmsd_A` (CA RMSD,
    the chains paired in sequence order), and the chains' centres are arranged alike (the
    sorted distances between centres, per pair of sequences, within `rmsd_A`)."""
    path = os.path.join(folder, "classes.json")
    if os.path.exists(path):
        return json.load(open(path))
    mols = manifest["molecules"]
    info = {k: _chain_info(k) for k in sorted({m["key"] for m in mols.values()})}

    def described(lab):
        m = mols[lab]
        chains = [c for c in (m["chains"] or info[m["key"]]) if len(info[m["key"]][c][1])]
        chains.sort(key=lambda c: info[m["key"]][c][0])
        seqs = [info[m["key"]][c][0] for c in chains]
        cas = [info[m["key"]][c][1] for c in chains]
        centres = [c.mean(0) for c in cas]
        pairs = {}
        for i in range(len(chains)):
            for j in range(i + 1, len(chains)):
                pairs.setdefault((seqs[i], seqs[j]), []).append(float(np.linalg.norm(centres[i] - centres[j])))
        return tuple(seqs), cas, {k: np.sort(v) for k, v in pairs.items()}

    def same(a, b):
        (_, cas_a, pairs_a), (_, cas_b, pairs_b) = a, b
        for A, B in zip(cas_a, cas_b):
            if len(A) != len(B):
                return False
            moved = tf.apply(tf.kabsch(A, B, np.ones(len(A))), A)
            if np.sqrt(((moved - B) ** 2).sum(1).mean()) >= rmsd_A:
                return False
        return all(np.abs(pairs_a[k] - pairs_b[k]).max() < rmsd_A for k in pairs_a)

    groups = {}
    for lab in sorted(mols):
        d = described(lab)
        groups.setdefault((mols[lab]["family"], d[0]), []).append((lab, d))
    classes = {}
    for members in groups.values():
        reps = []
        for lab, d in members:
            found = next((rep for rep, rd in reps if same(d, rd)), None)
            if found is None:
                reps.append((lab, d))
            classes[lab] = found or lab
    json.dump(classes, open(path, "w"))
    return classes
