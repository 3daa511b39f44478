#!/usr/bin/env python3
"""Choose the final ranking rule on the tuning part; judge it on the held-out part.

    python benchmarks/unseen/choose_ranking.py --dump CANDS.tsv [--cases CASES_DIR] [--held]

CANDS.tsv: benchmarks/hard/score_table.py --dump (one row per candidate of every case, with every
score term; run it over the tuning sets and the public and hard sets, never the held-out sets,
while choosing). Rules compared (a case counts when its rank-1 candidate under the rule is right):

  single terms and products      every column of the dump
  vote                           Borda count over correlation, similarity, agreement, local, shared
  logistic                       P(right) = sigmoid(w . x), x the candidate's terms relative to the
                                 case's best value of each term (so a weight reads as "a pose that
                                 trails the best by this much is less likely right"), fitted by
                                 L2-regularised maximum likelihood; on the tuning part reported
                                 leave-one-family-out (each family's cases ranked by weights fitted
                                 without it), then fitted on all of it (the weights printed)

--held adds the held-out sets' rows (a second dump: --held-dump) scored with the rule and weights
chosen on the tuning rows only. Families: case.json `family` (unseen corpus) or the set name.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
from collections import defaultdict

import numpy as np
from scipy.optimize import minimize

VOTE = ["correlation", "similarity", "agreement", "local", "shared"]
LEARN = ["correlation", "agreement", "similarity", "local", "shared", "shared_fraction", "overlap"]


def read(path, cases_dir):
    cases = defaultdict(list)
    with open(path) as fh:
        for r in csv.DictReader(fh, delimiter="\t"):
            cases[(r["set"], r["case"])].append(r)
    out = []
    for (s, c), rows in cases.items():
        cj = os.path.join(cases_dir, s, c, "case.json")
        fam = json.load(open(cj)).get("family", s) if os.path.exists(cj) else s
        feats = {}
        for k in rows[0]:
            if k in ("set", "case", "kind", "rank", "rmsd_sym", "right", "pseudo"):
                continue
            v = np.array([float(r[k]) for r in rows])
            feats[k] = np.where(np.isfinite(v), v, -1e9)
        out.append(
            dict(
                set=s,
                case=c,
                family=fam,
                right=np.array([r["right"] == "1" for r in rows]),
                rank=np.array([int(r["rank"]) for r in rows]),
                feats=feats,
            )
        )
    return out


def pick(values):
    return int(np.argmax(values))  # first maximum: the earlier reported rank


def vote(case):
    score = np.zeros(len(case["right"]))
    for k in VOTE:
        if k in case["feats"]:
            score += np.argsort(np.argsort(case["feats"][k], kind="stable"), kind="stable")
    return score - 1e-6 * np.arange(len(score))


def relative(case, keys):
    X = np.stack([case["feats"][k] for k in keys], 1)
    X = np.where(X < -1e8, np.nan, X)
    X = X - np.nanmax(X, axis=0, keepdims=True)
    return np.nan_to_num(X, nan=-1.0)


def fit(cases, keys, l2=1.0):
    X = np.concatenate([relative(c, keys) for c in cases])
    y = np.concatenate([c["right"] for c in cases]).astype(float)

    def nll(w):
        z = X @ w[1:] + w[0]
        return float(np.logaddexp(0, z).sum() - (y * z).sum() + l2 * (w[1:] ** 2).sum())

    return minimize(nll, np.zeros(len(keys) + 1), method="L-BFGS-B").x


def learned_score(case, w, keys):
    return relative(case, keys) @ w[1:]


def table(groups, rules):
    names = list(groups)
    out = ["| rule | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    out.append("| cases | " + " | ".join(str(len(groups[g])) for g in names) + " |")
    out.append(
        "| right candidate anywhere | "
        + " | ".join(str(sum(c["right"].any() for c in groups[g])) for g in names)
        + " |"
    )
    for name, fn in rules:
        out.append(
            f"| {name} | " + " | ".join(str(sum(bool(c["right"][fn(c)]) for c in groups[g])) for g in names) + " |"
        )
    return "\n".join(out)


def group(cases):
    g = defaultdict(list)
    for c in cases:
        part = (
            "held"
            if c["set"].startswith("unseen-held")
            else ("tune" if c["set"].startswith("unseen-tune") else "bench")
        )
        g[f"{part}:{c['set'].split('-')[-1] if part != 'bench' else c['set']}"].append(c)
        g[f"{part}: all"].append(c)
    return dict(sorted(g.items()))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dump", required=True, help="candidates of the tuning sets (and public / hard sets)")
    ap.add_argument("--held-dump", default=None, help="candidates of the held-out sets (judged, never fitted)")
    ap.add_argument("--cases", default=os.path.join(os.path.expanduser("~/.cache/cryoalign-bench"), "cases"))
    ap.add_argument("--keys", default=",".join(LEARN))
    ap.add_argument("--l2", type=float, default=1.0)
    a = ap.parse_args(argv)
    keys = a.keys.split(",")
    tune = read(a.dump, a.cases)
    assert not any(c["set"].startswith("unseen-held") for c in tune), "held-out rows in the tuning dump"
    keys = [k for k in keys if k in tune[0]["feats"]]
    # leave-one-family-out predictions on the tuning rows
    fams = sorted({c["family"] for c in tune})
    cv = {}
    for f in fams:
        w = fit([c for c in tune if c["family"] != f], keys, a.l2)
        for c in tune:
            if c["family"] == f:
                cv[(c["set"], c["case"])] = learned_score(c, w, keys)
    w_all = fit(tune, keys, a.l2)
    rules = [("reported", lambda c: 0)]
    for k in tune[0]["feats"]:
        if k != "reported":
            rules.append((k, lambda c, k=k: pick(c["feats"][k])))
    rules += [
        ("vote", lambda c: pick(vote(c))),
        (
            "logistic (leave-one-family-out)",
            lambda c: (
                pick(cv[(c["set"], c["case"])]) if (c["set"], c["case"]) in cv else pick(learned_score(c, w_all, keys))
            ),
        ),
    ]
    print("Tuning part (and public / hard sets): right at rank 1 by rule\n")
    print(table(group(tune), rules))
    print("\nlogistic weights fitted on all tuning rows (terms relative to the case's best):")
    print("  intercept %+.3f; " % w_all[0] + "; ".join(f"{k} {v:+.3f}" for k, v in zip(keys, w_all[1:])))
    if a.held_dump:
        held = read(a.held_dump, a.cases)
        rules_h = [r for r in rules if r[0] != "logistic (leave-one-family-out)"] + [
            ("logistic (fitted on tuning)", lambda c: pick(learned_score(c, w_all, keys)))
        ]
        print("\nHeld-out part: right at rank 1 by rule (nothing fitted here)\n")
        print(table(group(held), rules_h))


if __name__ == "__main__":
    main()
