#!/usr/bin/env python3
"""How the copy correlation (symmetry.py) separates symmetry mates from wrong poses.

    python benchmarks/unseen/symmetry_table.py --runs RUN_OUT [--runs ...] [--cases CASES]

For every candidate after the first of every case (runs made by this version: the JSON has
`copy_correlation` and `copy_shift_A`), by what the candidate is against the ground truth:

  equivalent    right (CA RMSD < 3 Å to T_gt or an alt_T_gt) while moving the source by at least
                10 Å from the best: another copy of the same answer (a symmetry of the target or
                the source, an identical chain)
  pseudo        one of the pseudo-symmetric poses of the case (`pseudo_T`, hard-pseudosym and the
                unseen pseudo sets: the other copies of a trimer whose copies differ)
  wrong         the rest, moving the source by at least 10 Å

and prints the copy correlations of each class (count, min, quartiles, max) and how many of
each a threshold would call mates.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "hard"))
from score_table import as4, ca_coords, rmsd  # noqa: E402


def classes(runs, cases, method="cryoalign"):
    out = {"equivalent": [], "pseudo": [], "wrong": []}
    root = os.path.join(runs, "runs", method)
    for s in sorted(os.listdir(root)):
        for cid in sorted(os.listdir(os.path.join(root, s))):
            path = os.path.join(root, s, cid, "out.json")
            cdir = os.path.join(cases, s, cid)
            if not os.path.exists(path) or not os.path.exists(os.path.join(cdir, "case.json")):
                continue
            doc = json.load(open(path))
            case = json.load(open(os.path.join(cdir, "case.json")))
            X = ca_coords(os.path.join(cdir, "source_model.pdb"))
            G = [as4(case["T_gt"])] + [as4(t) for t in case.get("alt_T_gt", [])]
            P = [as4(t) for t in case.get("pseudo_T", [])]
            for c in (doc.get("candidates") or [])[1:]:
                cc, shift = c.get("copy_correlation"), c.get("copy_shift_A")
                if cc is None or shift is None or shift < 10.0:
                    continue
                M = as4(c["matrix"])
                if min(rmsd(M, g, X) for g in G) < 3.0:
                    out["equivalent"].append((cc, s, cid))
                elif P and min(rmsd(M, p, X) for p in P) < 3.0:
                    out["pseudo"].append((cc, s, cid))
                else:
                    out["wrong"].append((cc, s, cid))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", action="append", required=True)
    ap.add_argument("--cases", default=os.path.join(os.path.expanduser("~/.cache/cryoalign-bench"), "cases"))
    ap.add_argument("--thresholds", default="0.4,0.5,0.6,0.7,0.8,0.9,0.95,0.97")
    a = ap.parse_args(argv)
    got = {"equivalent": [], "pseudo": [], "wrong": []}
    for r in a.runs:
        for k, v in classes(r, a.cases).items():
            got[k] += v
    th = [float(t) for t in a.thresholds.split(",")]
    print(
        "| candidates (shift >= 10 Å) | n | min | 25% | median | 75% | max | "
        + " | ".join(f">= {t:g}" for t in th)
        + " |"
    )
    print("|---|---|---|---|---|---|---|" + "---|" * len(th))
    for k, v in got.items():
        x = np.array([c for c, _, _ in v])
        if len(x) == 0:
            print(f"| {k} | 0 |" + " - |" * (5 + len(th)))
            continue
        q = np.percentile(x, [25, 50, 75])
        print(
            f"| {k} | {len(x)} | {x.min():.3f} | {q[0]:.3f} | {q[1]:.3f} | {q[2]:.3f} | {x.max():.3f} | "
            + " | ".join(str(int((x >= t).sum())) for t in th)
            + " |"
        )
    worst = sorted(got["wrong"], reverse=True)[:5]
    print("\nhighest copy correlations of wrong poses: " + "; ".join(f"{s}/{c} {v:.3f}" for v, s, c in worst))
    low = sorted(got["equivalent"])[:5]
    print("lowest copy correlations of equivalent poses: " + "; ".join(f"{s}/{c} {v:.3f}" for v, s, c in low))


if __name__ == "__main__":
    main()
