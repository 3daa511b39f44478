#!/usr/bin/env python3
"""Which score ranks the right pose first?  Re-rank each run's candidates by several rules.

    python benchmarks/hard/score_table.py --runs RUNS [--cases CASES_DIR] [--method cryoalign]
        [--sets hard-states,...] [--right 3.0] [--no-map-scores] [--dump candidates.tsv]

RUNS is a run_benchmark.py --out folder (or its runs/ sub-folder): runs/<method>/<set>/<case>/out.json,
as evaluate.py writes them. CASES_DIR defaults to $BENCH_HOME/cases (case.json, source_model.pdb and,
for the map scores, source.mrc / target.mrc).

For every candidate of every case: CA RMSD (P for nucleic acids) between the candidate's placement of
source_model.pdb and the true one, the minimum over T_gt and alt_T_gt exactly as evaluate.py does;
a candidate is RIGHT if that is under --right (3 Å). Then for each scoring rule the candidate with the
highest value is "rank 1 by that rule" (ties: the earlier reported rank wins), and the table counts the
cases where that candidate is right. The first rows are the ceiling (a right candidate is present at
all) and the reported order (cryoalign's own ranking).

Rules from the JSON (score_terms of each candidate; see cryoalign's score.py / maprefine.py):
  reported            cryoalign's order (candidates[0] first)
  correlation         map correlation about the mean after map refinement (score_terms.correlation)
  corr_before         correlation before map refinement (correlation_before)
  similarity          (1 - JS) x agreement
  agreement           vector_agreement: source points with a paired target point within 10 Å whose
                      density vectors agree (dot > 0.6), over ALL source points
  overlap             fraction of source points with a target point within 10 Å
  1-js                1 - Jensen-Shannon divergence of the point clouds
  agree/overlap       agreement among the paired points only (overlap-robust)
  overlap*agreement, corr*overlap, corr*agreement
Rules recomputed from the maps (unless --no-map-scores), on the source voxels above the source contour
moved by the candidate, target read by trilinear interpolation:
  map_cc              Pearson over all of them (~ correlation, but without any refinement of the pose)
  map_cc_inside       Pearson over those that land inside the target contour (overlap-robust)
  map_inside          fraction that lands inside the target contour (volume overlap)
  map_dice            2 |S in T| / (|S| + |T|) with the volumes above contour (penalises a small overlap
                      of the target as well, e.g. sub-complex placed on the wrong part)
  map_cc_inside*inside, map_cc_inside*sqrt(inside)
  map_cam             correlation about zero over all of them
  map_tm              a saturating per-voxel score (TM-score-like): the mean over the source voxels of
                      1 / (1 + (d / 3 Å)^2), d the distance to the nearest target voxel above contour:
                      how much of the source fits, however dense the target is there
  map_tm*corr         map_tm x correlation
JSON rules also: local (local_correlation), shared (shared_correlation), shared_fraction, and their
products with the agreement.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
JSON_RULES = [
    "reported",
    "correlation",
    "corr_before",
    "similarity",
    "agreement",
    "overlap",
    "1-js",
    "agree/overlap",
    "overlap*agreement",
    "corr*overlap",
    "corr*agreement",
    "local",
    "shared",
    "shared_fraction",
    "local*agreement",
    "shared*agreement",
]
MAP_RULES = [
    "map_cc",
    "map_cc_inside",
    "map_inside",
    "map_dice",
    "map_cc_inside*inside",
    "map_cc_inside*sqrt(inside)",
    "map_cam",
    "map_tm",
    "map_tm*corr",
]
TM_D0_A = 3.0  # map_tm: a source voxel d Å from the target's density counts 1 / (1 + (d / TM_D0_A)^2)
MAX_VOXELS = 400000  # source voxels used for the map scores (thinned evenly beyond)


def ca_coords(pdb):
    """Same atom choice as evaluate.py."""
    X = []
    for line in open(pdb):
        if line.startswith(("ATOM", "HETATM")):
            name, el, resn = line[12:16].strip(), line[76:78].strip().upper(), line[17:20].strip()
            if (name == "CA" and el in ("C", "") and resn != "CA") or (name == "P" and el in ("P", "")):
                X.append([float(line[30:38]), float(line[38:46]), float(line[46:54])])
    return np.array(X)


def as4(M):
    M = np.asarray(M, float)
    return np.vstack([M, [0, 0, 0, 1]]) if M.shape == (3, 4) else M


def rmsd(T1, T2, X):
    A = X @ T1[:3, :3].T + T1[:3, 3]
    B = X @ T2[:3, :3].T + T2[:3, 3]
    return float(np.sqrt(((A - B) ** 2).sum(1).mean()))


def read_map(path):
    import mrcfile

    with mrcfile.open(path, permissive=True) as m:
        h = m.header
        vox = float(m.voxel_size.x)
        org = np.array([h.origin.x, h.origin.y, h.origin.z], float)
        nst = np.array([h.nxstart, h.nystart, h.nzstart], float)
        if not org.any() and nst.any():
            org = nst * vox
        return np.asarray(m.data, np.float32).copy(), vox, org


class MapScorer:
    """Map-based scores of a pose (source voxels above contour, target by trilinear interpolation)."""

    def __init__(self, cdir, case):
        from scipy import ndimage

        self.nd = ndimage
        sd, sv, so = read_map(f"{cdir}/source.mrc")
        td, tv, to = read_map(f"{cdir}/target.mrc")
        sc, tc = float(case["source_contour"]), float(case["target_contour"])
        idx = np.argwhere(sd >= sc)  # z, y, x
        self.s_vol = len(idx) * sv**3
        self.t_vol = float((td >= tc).sum()) * tv**3
        if len(idx) > MAX_VOXELS:  # deterministic thinning
            idx = idx[np.linspace(0, len(idx) - 1, MAX_VOXELS).astype(int)]
        self.u = sd[idx[:, 0], idx[:, 1], idx[:, 2]].astype(float)
        self.X = idx[:, ::-1] * sv + so
        self.td, self.tv, self.to, self.tc = td, tv, to, tc
        self.edt = ndimage.distance_transform_edt(td < tc) * tv  # Å to the nearest target voxel above contour

    def __call__(self, T):
        Y = self.X @ T[:3, :3].T + T[:3, 3]
        f = (Y - self.to) / self.tv
        v = self.nd.map_coordinates(
            self.td, [f[:, 2], f[:, 1], f[:, 0]], order=1, mode="grid-constant", cval=0.0
        ).astype(float)  # 0 outside, interpolated up to the edge (as cryoalign)
        inside = v >= self.tc
        frac = float(inside.mean())

        def pearson(a, b):
            if len(a) < 10:
                return 0.0
            a = a - a.mean()
            b = b - b.mean()
            d = math.sqrt(float((a * a).sum() * (b * b).sum()))
            return float((a * b).sum() / d) if d > 0 else 0.0

        cc = pearson(self.u, v)
        cci = pearson(self.u[inside], v[inside])
        nv = math.sqrt(float((self.u**2).sum() * (v**2).sum()))
        cam = float((self.u * v).sum() / nv) if nv > 0 else 0.0
        dice = 2 * frac * self.s_vol / (self.s_vol + self.t_vol)
        d = self.nd.map_coordinates(self.edt, [f[:, 2], f[:, 1], f[:, 0]], order=1, mode="nearest")
        tm = float((1.0 / (1.0 + (d / TM_D0_A) ** 2)).mean())
        return {
            "map_tm": tm,
            "map_tm*corr": tm * cc,
            "map_cc": cc,
            "map_cc_inside": cci,
            "map_inside": frac,
            "map_dice": dice,
            "map_cc_inside*inside": cci * frac,
            "map_cc_inside*sqrt(inside)": cci * math.sqrt(frac),
            "map_cam": cam,
        }


def json_features(c, rank):
    t = c.get("score_terms") or {}

    def num(v):
        return float("nan") if v is None else float(v)

    corr = num(t.get("correlation", c.get("score")))
    sim, agr, ovl, js = (num(t.get(k)) for k in ("similarity", "vector_agreement", "overlap", "js_divergence"))
    loc, sh, shf = (num(t.get(k)) for k in ("local_correlation", "shared_correlation", "shared_fraction"))
    return {
        "local": loc,
        "shared": sh,
        "shared_fraction": shf,
        "local*agreement": loc * agr,
        "shared*agreement": sh * agr,
        "reported": -rank,
        "correlation": corr,
        "corr_before": num(c.get("correlation_before")),
        "similarity": sim,
        "agreement": agr,
        "overlap": ovl,
        "1-js": 1 - js,
        "agree/overlap": agr / ovl if ovl > 0 else 0.0,
        "overlap*agreement": ovl * agr,
        "corr*overlap": corr * ovl,
        "corr*agreement": corr * agr,
    }


def best_by(feats, rule):
    vals = [f.get(rule, float("nan")) for f in feats]
    vals = [(-np.inf if (v is None or not np.isfinite(v)) else v) for v in vals]
    return int(np.argmax(vals))  # first maximum = earliest reported rank


def analyse_case(cdir, out, right, map_scores):
    case = json.load(open(f"{cdir}/case.json"))
    X = ca_coords(f"{cdir}/source_model.pdb")
    G = [as4(case["T_gt"])] + [as4(t) for t in case.get("alt_T_gt", [])]
    P = [as4(t) for t in case.get("pseudo_T", [])]
    rec = dict(
        case=case["case_id"],
        set=case.get("set"),
        kind=(case.get("hard") or {}).get("kind", case["kind"]),
        mode=case.get("mode", ""),
        overlap_at_gt=case.get("overlap_at_gt"),
    )
    if not os.path.exists(out):
        rec.update(status="no output", cands=[], result_rmsd=float("inf"))
        return rec
    J = json.load(open(out))
    cands = J.get("candidates") or [
        {"matrix": J["matrix"], "score": J.get("score"), "score_terms": J.get("score_terms", {})}
    ]
    scorer = MapScorer(cdir, case) if map_scores else None
    rows = []
    for i, c in enumerate(cands):
        M = as4(c["matrix"])
        f = json_features(c, i)
        if scorer is not None:
            f.update(scorer(M))
        r = min(rmsd(M, g, X) for g in G)
        rows.append(
            dict(
                rank=i + 1,
                rmsd=r,
                right=r < right,
                pseudo=bool(P) and min(rmsd(M, p, X) for p in P) < right,
                feats=f,
                matrix=M,
            )
        )
    rec.update(status="ok", cands=rows, result_rmsd=min(rmsd(as4(J["matrix"]), g, X) for g in G))
    # what the truth would score (the correct pose itself, not a candidate): map scores only
    if scorer is not None:
        rec["truth_map"] = scorer(G[0])
    return rec


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", required=True)
    ap.add_argument(
        "--cases",
        default=os.path.join(os.environ.get("BENCH_HOME", os.path.expanduser("~/.cache/cryoalign-bench")), "cases"),
    )
    ap.add_argument("--method", default="cryoalign")
    ap.add_argument("--sets", default=None, help="comma list (default: every set in the runs folder)")
    ap.add_argument("--right", type=float, default=3.0, help="a candidate is right under this RMSD (Å)")
    ap.add_argument("--no-map-scores", action="store_true", help="only the JSON score terms (faster)")
    ap.add_argument("--dump", default=None, help="write one row per candidate (all features) to this TSV")
    a = ap.parse_args(argv)
    runs = a.runs if os.path.isdir(os.path.join(a.runs, a.method)) else os.path.join(a.runs, "runs")
    mroot = os.path.join(runs, a.method)
    sets = a.sets.split(",") if a.sets else sorted(os.listdir(mroot))
    rules = JSON_RULES + ([] if a.no_map_scores else MAP_RULES)
    recs = {}
    for s in sets:
        recs[s] = []
        for cid in sorted(os.listdir(os.path.join(mroot, s))):
            cdir = os.path.join(a.cases, s, cid)
            if not os.path.exists(f"{cdir}/case.json"):
                continue
            recs[s].append(analyse_case(cdir, os.path.join(mroot, s, cid, "out.json"), a.right, not a.no_map_scores))

    # ---- table 1: rule x set
    allr = [r for s in sets for r in recs[s]]
    cols = sets + ["all"]

    def count(rs, fn):
        return sum(1 for r in rs if r["cands"] and fn(r))

    lines = [
        f"Right = CA RMSD < {a.right:g} Å (min over T_gt and alt_T_gt). Cells: cases whose rank-1 candidate "
        f"under the rule is right.",
        "",
        "| rule | " + " | ".join(cols) + " |",
        "|---|" + "---|" * len(cols),
    ]
    grp = {s: recs[s] for s in sets}
    grp["all"] = allr
    lines.append("| cases | " + " | ".join(str(len(grp[c])) for c in cols) + " |")
    lines.append(
        "| mean candidates per case | "
        + " | ".join(f"{np.mean([len(r['cands']) for r in grp[c]]):.1f}" if grp[c] else "-" for c in cols)
        + " |"
    )
    lines.append(
        "| right candidate anywhere (ceiling) | "
        + " | ".join(str(count(grp[c], lambda r: any(x["right"] for x in r["cands"]))) for c in cols)
        + " |"
    )
    for rule in rules:
        lines.append(
            f"| {rule} | "
            + " | ".join(
                str(count(grp[c], lambda r: r["cands"][best_by([x["feats"] for x in r["cands"]], rule)]["right"]))
                for c in cols
            )
            + " |"
        )
    lines.append(
        "| right within reported top 5 | "
        + " | ".join(str(count(grp[c], lambda r: any(x["right"] for x in r["cands"][:5]))) for c in cols)
        + " |"
    )
    print("\n".join(lines))

    # ---- table 1b: margins. For cases with both right and wrong candidates: (best right - best wrong) under
    # the rule, relative to the spread of that rule's values over the case's candidates (max - min); > 0 = right wins
    mixed = [
        r
        for r in allr
        if r["cands"] and any(x["right"] for x in r["cands"]) and not all(x["right"] for x in r["cands"])
    ]
    print(
        f"\nMargins over the {len(mixed)} cases with both right and wrong candidates: (best right - best wrong) / "
        f"(max - min over the case's candidates); negative = a wrong candidate wins.\n"
    )
    print("| rule | right wins | median margin | min margin | worst case |")
    print("|---|---|---|---|---|")
    for rule in rules[1:]:
        ms = []
        for r in mixed:
            v = np.array([x["feats"].get(rule, np.nan) for x in r["cands"]], float)
            ok = np.array([x["right"] for x in r["cands"]])
            if not np.isfinite(v).all():
                continue
            spread = v.max() - v.min()
            ms.append(((v[ok].max() - v[~ok].max()) / spread if spread > 0 else 0.0, r["case"]))
        if ms:
            vals = np.array([m for m, _ in ms])
            worst = min(ms)
            print(
                f"| {rule} | {(vals > 0).sum()}/{len(ms)} | {np.median(vals):+.3f} | {vals.min():+.3f} | {worst[1]} |"
            )

    # ---- table 2: cases whose reported rank 1 is not right
    show = ["correlation", "corr_before", "similarity", "agreement", "overlap", "1-js"] + (
        [] if a.no_map_scores else ["map_cc", "map_cc_inside", "map_inside", "map_dice"]
    )
    print(f"\nCases whose reported rank 1 is not right (result RMSD >= {a.right:g} Å):\n")
    print(
        "| set | case | kind | overlap at GT | n cand | result RMSD (Å) | winner pseudo-sym? | right cand (rank, RMSD) | "
        "rules ranking a right cand first | winner: " + ", ".join(show) + " | best right: same |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")

    def fv(f):
        return ", ".join(f"{f.get(k, float('nan')):.3f}" for k in show)

    for r in allr:
        if r["status"] != "ok":
            print(f"| {r['set']} | {r['case']} | {r['kind']} | {r['overlap_at_gt']} | 0 | {r['status']} | | | | | |")
            continue
        if r["cands"] and r["cands"][0]["right"]:
            continue
        w = r["cands"][0]
        rights = [x for x in r["cands"] if x["right"]]
        br = min(rights, key=lambda x: x["rmsd"]) if rights else None
        good = [rule for rule in rules if r["cands"][best_by([x["feats"] for x in r["cands"]], rule)]["right"]]
        truth = r.get("truth_map")
        extra = (
            " (truth: "
            + ", ".join(f"{k}={truth[k]:.3f}" for k in ("map_cc", "map_cc_inside", "map_inside", "map_dice"))
            + ")"
            if truth
            else ""
        )
        print(
            f"| {r['set']} | {r['case']} | {r['kind']} | {r['overlap_at_gt']} | {len(r['cands'])} | {r['result_rmsd']:.1f} | "
            f"{'yes' if w['pseudo'] else 'no'} | "
            f"{'rank %d, %.2f' % (br['rank'], br['rmsd']) if br else 'none (best %.1f)' % min(x['rmsd'] for x in r['cands'])} | "
            f"{', '.join(good) if good else '-'} | {fv(w['feats'])} | {fv(br['feats']) if br else '-'}{extra} |"
        )

    if a.dump:
        keys = rules
        with open(a.dump, "w") as fh:
            fh.write("\t".join(["set", "case", "kind", "rank", "rmsd_sym", "right", "pseudo"] + keys) + "\n")
            for r in allr:
                for x in r["cands"]:
                    fh.write(
                        "\t".join(
                            [
                                str(r["set"]),
                                r["case"],
                                r["kind"],
                                str(x["rank"]),
                                f"{x['rmsd']:.3f}",
                                str(int(x["right"])),
                                str(int(x["pseudo"])),
                            ]
                            + [f"{x['feats'].get(k, float('nan')):.5f}" for k in keys]
                        )
                        + "\n"
                    )
        print(f"\nwrote {a.dump}", file=sys.stderr)


if __name__ == "__main__":
    main()
