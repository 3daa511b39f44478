#!/usr/bin/env python3
"""Effect of each step beyond the published method, on the public sets, and the hand check.

    python benchmarks/ablations.py [--cases DIR] [--sets ...] [--bench ../shared/bench]

Runs `cryoalign.align` in this process (no start-up cost; numba warmed up on the
first case) under several configurations and prints, per set and configuration:
failures (> 10 Å), share under 3 Å (global) or right at rank 1 (< 5 Å, local and
chain sets), median strict RMSD (against T_gt only), median symmetry-aware RMSD
(best over the listed equivalent answers), pairs flagged ambiguous, and median
time per alignment.  Configurations:

    full              defaults (map refinement, 8 hypotheses)
    no-map-refine     --no-map-refine: point-based result only
    one-hypothesis    --hypotheses 1: only the largest consistent clique
    paper-like        both off

Then the hand check: every pair aligned with --check-hand, once as is and once
with the source replaced by its mirror image; the verdicts are tabulated
(a mirrored source must be called "mirrored", an unflipped one never).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

CONFIGS = {
    "full": {},
    "no-map-refine": {"map_refine": False},
    "one-hypothesis": {"max_hypotheses": 1},
    "paper-like": {"map_refine": False, "max_hypotheses": 1},
}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", default="public-sim-global,public-real5A-global,public-local,public-chain")
    ap.add_argument("--bench", default=os.path.join(ROOT, "..", "shared", "bench"))
    ap.add_argument("--cases", default=None, help="case folder (default: $BENCH_HOME/cases)")
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--no-hand", action="store_true", help="skip the hand-check table")
    a = ap.parse_args(argv)

    sys.path.insert(0, os.path.abspath(a.bench))
    import evaluate  # the benchmark's own CA reader and RMSD

    import cryoalign
    from cryoalign.core.pipeline import mirror

    home = os.environ.get("BENCH_HOME", os.path.expanduser("~/.cache/cryoalign-bench"))
    cases_dir = os.path.abspath(a.cases or os.path.join(home, "cases"))
    sets = a.sets.split(",")
    cases = []
    for s in sets:
        for d in sorted(glob.glob(os.path.join(cases_dir, s, "*", "case.json"))):
            d = os.path.dirname(d)
            c = json.load(open(os.path.join(d, "case.json")))
            cases.append((s, d, c, evaluate.ca_coords(os.path.join(d, "source_model.pdb"))))
    if not cases:
        sys.exit(f"no cases under {cases_dir}: build them with benchmarks/run_benchmark.py first")

    def run(d, c, s, src=None, **kw):
        mode = "local" if ("local" in s or "chain" in s) else "global"
        t = time.perf_counter()
        r = cryoalign.align(
            src if src is not None else os.path.join(d, "source.mrc"),
            os.path.join(d, "target.mrc"),
            source_contour=c["source_contour"],
            target_contour=c["target_contour"],
            mode=mode,
            **kw,
        )
        return r, time.perf_counter() - t

    run(*cases[0][1:3], cases[0][0])  # warm up numba's caches
    rows = []
    for name in a.configs.split(","):
        for s in sets:
            recs = []
            for s2, d, c, ca in cases:
                if s2 != s:
                    continue
                r, dt = run(d, c, s, **CONFIGS[name])
                gts = [np.array(c["T_gt"])] + [np.array(t) for t in c.get("alt_T_gt", [])]
                strict = evaluate.rmsd(r.T_target_source, gts[0], ca)
                sym = min(evaluate.rmsd(r.T_target_source, g, ca) for g in gts)
                recs.append((strict, sym, r.ambiguous, dt))
                print(
                    f"{name:15s} {c['case_id']:20s} strict {strict:7.2f} sym {sym:7.2f} "
                    f"{'ambiguous ' if r.ambiguous else ''}{dt:6.2f} s",
                    file=sys.stderr,
                    flush=True,
                )
            rows.append((name, s, recs))
    print(ablation_table(rows))

    if not a.no_hand:
        hand = []
        for s, d, c, _ in cases:
            src = cryoalign.read_map(os.path.join(d, "source.mrc"))
            r, dt = run(d, c, s, src=src, check_hand=True)
            rf, _ = run(d, c, s, src=mirror(src)[0], check_hand=True)
            hand.append((s, c["case_id"], r.hand, rf.hand, dt))
            print(
                f"hand {c['case_id']:20s} as is {r.hand['verdict']:8s} mirrored source {rf.hand['verdict']:8s}",
                file=sys.stderr,
                flush=True,
            )
        print()
        print(hand_table(hand))


def ablation_table(rows):
    out = [
        "| configuration | set | pairs | failures (>10 Å) | under 3 Å | rank 1 < 5 Å | median RMSD strict (Å) "
        "| median RMSD sym (Å) | flagged ambiguous | median time (s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s, recs in rows:
        st = np.array([r[0] for r in recs])
        sy = np.array([r[1] for r in recs])
        out.append(
            f"| {name} | {s} | {len(recs)} | {(sy > 10).sum()} | {(sy < 3).mean() * 100:.0f}% | "
            f"{(sy < 5).mean() * 100:.0f}% | {np.median(st):.2f} | {np.median(sy):.2f} | "
            f"{sum(r[2] for r in recs)} | {np.median([r[3] for r in recs]):.2f} |"
        )
    return "\n".join(out)


def hand_table(hand):
    out = [
        "| set | case | as is: verdict (score / mirrored) | mirrored source: verdict (score / mirrored) "
        "| time with --check-hand (s) |",
        "|---|---|---|---|---|",
    ]
    for s, cid, h, hf, dt in hand:
        out.append(
            f"| {s} | {cid} | {h['verdict']} ({h['score']:.3f} / {h['mirrored_score']:.3f}) | "
            f"{hf['verdict']} ({hf['score']:.3f} / {hf['mirrored_score']:.3f}) | {dt:.2f} |"
        )
    n = len(hand)
    right = sum(hf["verdict"] == "mirrored" for *_, hf, _ in hand)
    wrong = sum(h["verdict"] == "mirrored" for _, _, h, _, _ in hand)
    out.append("")
    out.append(f"mirrored sources called mirrored: {right}/{n}; unflipped sources called mirrored: {wrong}/{n}")
    return "\n".join(out)


if __name__ == "__main__":
    main()
