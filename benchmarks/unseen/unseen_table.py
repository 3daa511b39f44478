#!/usr/bin/env python3
"""Tables of a run over the unseen corpus (or any sets): results per set and per part, and the
confidence calibration, scored again from each case.json (so a case whose equivalent answers
were extended is scored as now defined) and from the run's out.json.

    python benchmarks/unseen/unseen_table.py --runs RUN_OUT [--runs RUN_OUT2 ...] [--cases CASES]
        [--method cryoalign] [--list]

RUN_OUT: run_benchmark.py --out folders (runs/<method>/<set>/<case>/out.json and the scorer's
TSVs, read for wall time and peak memory). Right: CA RMSD (min over T_gt and alt_T_gt, as
evaluate.py) under 3 Å; failure: over 10 Å, an error or no output. Rank 1 / top 5: the first
candidate / one of the first five is right. The confidence verdict is recomputed from the
stored candidates with the current rules (cryoalign.core.confidence), so thresholds can be tried
without running the alignments again (--reported: the verdicts as the run gave them).
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import sys
from types import SimpleNamespace

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "hard"))
from score_table import as4, ca_coords, rmsd  # noqa: E402


def candidates_of(doc):
    """The JSON candidates as objects with the fields confidence.assess reads."""
    out = []
    for c in doc.get("candidates") or []:
        score = SimpleNamespace(**c["score_terms"])
        score.value = c["score"]
        out.append(
            SimpleNamespace(score=score, copy_correlation=c.get("copy_correlation"), copy_shift_A=c.get("copy_shift_A"))
        )
    return out


def score_run(run, cases, method, reported=False):
    from cryoalign.core.confidence import assess

    rows = []
    for tsv in sorted(glob.glob(os.path.join(run, f"{method}__*.tsv"))):
        set_name = os.path.basename(tsv)[len(method) + 2 : -4]
        with open(tsv) as fh:
            meta = {r["case_id"]: r for r in csv.DictReader(fh, delimiter="\t")}
        for cid, r in sorted(meta.items()):
            cdir = os.path.join(cases, set_name, cid)
            case = json.load(open(os.path.join(cdir, "case.json")))
            X = ca_coords(os.path.join(cdir, "source_model.pdb"))
            G = [as4(case["T_gt"])] + [as4(t) for t in case.get("alt_T_gt", [])]
            out = os.path.join(run, "runs", method, set_name, cid, "out.json")
            rec = dict(
                set=set_name,
                case=cid,
                part=case.get("part", "bench"),
                wall=float(r["wall_s"]),
                peak=float(r["peak_rss_mb"]),
                rmsd=np.inf,
                top5=np.inf,
                verdict="low",
                evidence={},
            )
            if r["status"].startswith("ok") and os.path.exists(out):
                doc = json.load(open(out))
                cands = doc.get("candidates") or [{"matrix": doc["matrix"]}]
                rs = [min(rmsd(as4(c["matrix"]), g, X) for g in G) for c in cands]
                rec.update(rmsd=min(rmsd(as4(doc["matrix"]), g, X) for g in G), top5=min(rs[:5]))
                if reported and doc.get("confidence"):
                    rec.update(verdict=doc["confidence"]["verdict"], evidence=doc["confidence"]["evidence"])
                elif doc.get("candidates"):
                    conf = assess(candidates_of(doc), doc["params"]["mode"])
                    rec.update(verdict=conf["verdict"], evidence=conf["evidence"])
            else:
                rec["evidence"] = {"error": r["status"]}
            rows.append(rec)
    return rows


def results_table(rows, groups):
    out = [
        "| set | pairs | failures (> 10 Å) | under 3 Å | rank 1 right | top 5 right | median RMSD (Å) | "
        "median wall (s) | max wall (s) | median peak (MB) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, sel in groups:
        if not sel:
            continue
        r = np.array([x["rmsd"] for x in sel])
        t5 = np.array([x["top5"] for x in sel])
        w = np.array([x["wall"] for x in sel])
        out.append(
            f"| {name} | {len(sel)} | {(r > 10).sum()} ({100 * (r > 10).mean():.0f}%) | "
            f"{(r < 3).sum()} ({100 * (r < 3).mean():.0f}%) | {(r < 3).sum()} | {(t5 < 3).sum()} | "
            f"{np.median(r):.2f} | {np.median(w):.2f} | {w.max():.2f} | "
            f"{np.median([x['peak'] for x in sel]):.0f} |"
        )
    return "\n".join(out)


def confidence_table(rows, groups):
    out = [
        "| set | pairs | high (right < 3 Å) | medium (right) | low (right) | failures (> 10 Å): verdicts |",
        "|---|---|---|---|---|---|",
    ]
    for name, sel in groups:
        if not sel:
            continue
        cells = []
        for v in ("high", "medium", "low"):
            got = [x for x in sel if x["verdict"] == v]
            cells.append(f"{len(got)} ({sum(x['rmsd'] < 3 for x in got)})")
        fails = [x for x in sel if x["rmsd"] > 10]
        fv = (
            ", ".join(
                f"{v} {sum(x['verdict'] == v for x in fails)}"
                for v in ("high", "medium", "low")
                if any(x["verdict"] == v for x in fails)
            )
            or "-"
        )
        out.append(f"| {name} | {len(sel)} | " + " | ".join(cells) + f" | {len(fails)}: {fv} |")
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", action="append", required=True)
    ap.add_argument("--cases", default=os.path.join(os.path.expanduser("~/.cache/cryoalign-bench"), "cases"))
    ap.add_argument("--method", default="cryoalign")
    ap.add_argument("--list", action="store_true", help="list every answer that is not right")
    ap.add_argument(
        "--reported",
        action="store_true",
        help="the verdicts as the run reported them (default: recomputed with the current rules)",
    )
    a = ap.parse_args(argv)
    rows = [x for run in a.runs for x in score_run(run, a.cases, a.method, a.reported)]
    sets = sorted({x["set"] for x in rows}, key=lambda s: (s.split("-")[1] if s.startswith("unseen") else "", s))
    groups = [(s, [x for x in rows if x["set"] == s]) for s in sets]
    for part in ("tune", "held", "bench"):
        sel = [x for x in rows if x["part"] == part]
        if sel and part != "bench":
            groups.append((f"**{part}: all**", sel))
            groups.append((f"**{part}: local and chain**", [x for x in sel if x["set"].endswith("-chain")]))
    print(results_table(rows, groups))
    print()
    print(confidence_table(rows, groups))
    for part in ("tune", "held", "bench"):
        high = [x for x in rows if x["part"] == part and x["verdict"] == "high"]
        if high:
            print(f"\n{part}: high answers right {sum(x['rmsd'] < 3 for x in high)}/{len(high)}")
    if a.list:
        print("\nanswers not right (>= 3 Å):")
        for x in rows:
            if x["rmsd"] >= 3:
                print(
                    f"  {x['set']} {x['case']}: {x['rmsd']:.2f} Å (top 5 {x['top5']:.2f}), {x['verdict']} "
                    f"{x['evidence']}"
                )


if __name__ == "__main__":
    main()
