#!/usr/bin/env python3
"""Calibration of the confidence verdict: for every case of a benchmark run, the verdict
of the answer against whether the answer was right.

    python benchmarks/confidence_table.py --out RUN_OUT [--method cryoalign] [--cases]

RUN_OUT is run_benchmark.py's --out folder (the scorer's `<method>__<set>.tsv` files and
the `runs/<method>/<set>/<case>/out.json` results).  Right: symmetry-aware CA RMSD under
3 Å; failure: over 10 Å or an error.  The verdict is recomputed from the stored
candidates with the current thresholds (`cryoalign.core.confidence`), so thresholds can be
tried without running the alignments again.  Prints, per set and in total, the answers
called high / medium / low and how many of each were right, and lists every failure and
every wrong "high" answer with its evidence.
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import os
from types import SimpleNamespace

from cryoalign.core.confidence import assess


def _candidates(doc):
    out = []
    for c in doc["candidates"]:
        t = c["score_terms"]
        score = SimpleNamespace(**t)
        score.value = c["score"]
        out.append(
            SimpleNamespace(score=score, copy_correlation=c.get("copy_correlation"), copy_shift_A=c.get("copy_shift_A"))
        )
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--method", default="cryoalign")
    ap.add_argument("--cases", action="store_true", help="print every case")
    a = ap.parse_args(argv)
    rows = []
    for tsv in sorted(glob.glob(os.path.join(a.out, f"{a.method}__*.tsv"))):
        set_name = os.path.basename(tsv)[len(a.method) + 2 : -4]
        with open(tsv) as fh:
            for r in csv.DictReader(fh, delimiter="\t"):
                path = os.path.join(a.out, "runs", a.method, set_name, r["case_id"], "out.json")
                ok = r["status"].startswith("ok") and r["rmsd_sym"] != "NA" and os.path.exists(path)
                rmsd = float(r["rmsd_sym"]) if ok else float("inf")
                if ok:
                    doc = json.load(open(path))
                    mode = doc["params"]["mode"]
                    conf = assess(_candidates(doc), mode)
                else:
                    conf = {"verdict": "low", "evidence": {"error": r["status"]}}
                rows.append((set_name, r["case_id"], rmsd, conf))
    sets = sorted({r[0] for r in rows})
    print("| set | pairs | high (right) | medium (right) | low (right) | failures (> 10 Å) and their verdicts |")
    print("|---|---|---|---|---|---|")
    for s in sets + ["all"]:
        sel = [r for r in rows if s in ("all", r[0])]
        cell = []
        for v in ("high", "medium", "low"):
            got = [r for r in sel if r[3]["verdict"] == v]
            cell.append(f"{len(got)} ({sum(r[2] < 3 for r in got)})")
        fails = [r for r in sel if r[2] > 10]
        fv = ", ".join(sorted({r[3]["verdict"] for r in fails})) or "-"
        print(f"| {s} | {len(sel)} | " + " | ".join(cell) + f" | {len(fails)}: {fv} |")
    high = [r for r in rows if r[3]["verdict"] == "high"]
    if high:
        print(
            f"\nhigh answers right: {sum(r[2] < 3 for r in high)}/{len(high)} "
            f"({100 * sum(r[2] < 3 for r in high) / len(high):.1f}%)"
        )
    print("\nwrong answers (>= 3 Å) and wrong 'high' answers:")
    for r in rows:
        if r[2] >= 3 or (a.cases):
            print(f"  {r[0]} {r[1]}: {r[2]:.2f} Å, {r[3]['verdict']} {r[3]['evidence']}")


if __name__ == "__main__":
    main()
