"""What `batch --db` saves: the same pairs aligned with and without a catalogue's
prepared maps, one table.

    python benchmarks/batch_db_bench.py [--pairs 24] [--jobs 2] [--cache DIR]

Uses the search benchmark's catalogue (run benchmarks/search_bench.py first; default
--cache ~/.cache/cryoalign-bench/search/n1000): pairs of entries of one label at two
resolutions (source the finer map, target the coarser), the --pairs largest by source
file size (preparation matters most for large maps), every map indexed.  Both runs
use the catalogue's sampling interval, so their lines must be equal but for time_s and
from_db; the table says whether they are.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import time

from cryoalign import AlignConfig
from cryoalign.apps.batching import RESULT_COLUMNS, batch


def pairs_table(folder: str, count: int, path: str) -> None:
    maps = json.load(open(os.path.join(folder, "entries.json")))["maps"]
    by_label = {}
    for p, info in sorted(maps.items()):
        by_label.setdefault(info["label"], []).append((info["resolution"], p, info["contour"]))
    rows = []
    for label in sorted(by_label):
        entries = sorted(by_label[label])
        if len(entries) >= 2:
            (_, src, sc), (_, tgt, tc) = entries[0], entries[-1]
            rows.append((-os.path.getsize(src), f"{src}\t{tgt}\t{sc!r}\t{tc!r}"))
    rows = [line for _, line in sorted(rows)[:count]]
    with open(path, "w") as fh:
        fh.write("source\ttarget\tsource_contour\ttarget_contour\n" + "\n".join(rows) + "\n")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=24)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--cache", default=os.path.expanduser("~/.cache/cryoalign-bench/search/n1000"))
    args = ap.parse_args(argv)
    work = os.path.join(args.cache, "batch_db")
    os.makedirs(work, exist_ok=True)
    table = os.path.join(work, "pairs.tsv")
    pairs_table(args.cache, args.pairs, table)
    config = AlignConfig(sampling_A=5.0)
    walls, lines = {}, {}
    for name, db in (("without --db", None), ("with --db", os.path.join(args.cache, "db"))):
        out = os.path.join(work, f"results_{'db' if db else 'plain'}.tsv")
        if os.path.exists(out):
            os.remove(out)
        started = time.perf_counter()
        summary = batch(table, out, jobs=args.jobs, config=config, db=db)
        walls[name] = time.perf_counter() - started
        with open(out) as fh:
            rows = list(csv.DictReader(fh, delimiter="\t"))
        lines[name] = [{c: r[c] for c in RESULT_COLUMNS if c not in ("time_s", "from_db")} for r in rows]
        lines[name + " from_db"] = [r["from_db"] for r in rows]
        print(f"{name}: {summary}", flush=True)
    same = sorted(map(json.dumps, lines["without --db"])) == sorted(map(json.dumps, lines["with --db"]))
    n = len(lines["with --db"])
    print(f"\n| run | pairs | wall (s) | per pair (s, {args.jobs} workers) |\n|---|---|---|---|")
    for name in ("without --db", "with --db"):
        print(f"| {name} | {n} | {walls[name]:.1f} | {walls[name] / n:.2f} |")
    loaded = sum(v == "source,target" for v in lines["with --db from_db"])
    print(f"\nboth maps loaded from the catalogue: {loaded}/{n}; lines identical but for time_s and from_db: {same}")


if __name__ == "__main__":
    main()
