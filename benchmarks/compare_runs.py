#!/usr/bin/env python3
"""How far apart two benchmark runs' answers are: per case, the CA RMSD between the
source model moved by run A's matrix and by run B's (0 = the same answer).

    python benchmarks/compare_runs.py RUNS_A RUNS_B [--cases DIR]

RUNS_A, RUNS_B: the `runs/<method>` folders that run_benchmark.py leaves under --out
(one `<set>/<case>/out.json` per case).  Used to check that a refactoring gives the
same answers (issue: within 0.01 Å).
"""

from __future__ import annotations

import argparse
import glob
import json
import os

import numpy as np


def ca_coordinates(pdb_path: str) -> np.ndarray:
    import gemmi

    st = gemmi.read_structure(pdb_path)
    out = [
        a.pos.tolist()
        for ch in st[0]
        for r in ch
        for a in r
        if (a.name == "CA" and a.element.name == "C") or (a.name == "P" and a.element.name == "P")
    ]
    return np.array(out, float)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs_a")
    ap.add_argument("runs_b")
    ap.add_argument("--cases", default=os.path.expanduser("~/.cache/cryoalign-bench/cases"))
    a = ap.parse_args(argv)
    print("| set | case | RMSD between the two answers (Å) |")
    print("|---|---|---|")
    worst = 0.0
    for path in sorted(glob.glob(os.path.join(a.runs_a, "*", "*", "out.json"))):
        case = os.path.basename(os.path.dirname(path))
        set_name = os.path.basename(os.path.dirname(os.path.dirname(path)))
        other = os.path.join(a.runs_b, set_name, case, "out.json")
        if not os.path.exists(other):
            print(f"| {set_name} | {case} | missing in B |")
            continue
        Ta = np.array(json.load(open(path))["matrix"], float)
        Tb = np.array(json.load(open(other))["matrix"], float)
        X = ca_coordinates(os.path.join(a.cases, set_name, case, "source_model.pdb"))
        d = (X @ Ta[:3, :3].T + Ta[:3, 3]) - (X @ Tb[:3, :3].T + Tb[:3, 3])
        r = float(np.sqrt((d**2).sum(1).mean()))
        worst = max(worst, r)
        print(f"| {set_name} | {case} | {r:.4f} |")
    print(f"\nlargest difference: {worst:.4f} Å")


if __name__ == "__main__":
    main()
