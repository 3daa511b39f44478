#!/usr/bin/env python3
"""Run cryoalign over the public (and the hard) benchmark and print one table row per set.

    python benchmarks/run_benchmark.py [--sets public-sim-global,public-real5A-global,public-local,public-chain]
        [--bench ../shared/bench] [--cases DIR] [--jobs 1] [--extra '--no-map-refine'] [--exe PATH]
        [--mode SET=local|global|auto ...] [--table-only]

--sets takes set names, or `public` (the four public sets), `hard` (the six hard sets made by
benchmarks/hard/make_hard_cases.py: hard-states, hard-partial, hard-pseudosym, hard-resgap,
hard-noise, hard-chain), `all` (public + hard), `tune` / `held` (the tuning / held-out part of
the unseen corpus, benchmarks/unseen/make_unseen_cases.py: unseen-tune-global, ...) or `unseen`
(both parts); they can be mixed: --sets public,hard-chain.
Alignment mode per set: the hard sets use the table MODES in make_hard_cases.py (hard-chain
--local, the others --global); any other set follows the old convention (sets named *local* or
*chain* get --local-flag, default --local; the rest run in automatic mode); --mode overrides.

--exe runs another cryoalign (e.g. a pristine worktree: --exe 'env PYTHONPATH=/tmp/pristine/src
.venv/bin/python -m cryoalign'); --table-only prints the table from the TSVs already in --out.
The per-candidate analysis of the runs (which score ranks a right pose first) is
benchmarks/hard/score_table.py --runs OUT.

Builds the cases with the benchmark's make_cases.py (public sets) or
benchmarks/hard/make_hard_cases.py (hard sets) when they are missing, then
runs the benchmark's own scorer (evaluate.py: symmetry-aware CA RMSD, wall time
and peak memory of the whole process tree, one fresh `cryoalign align` process
per pair, start-up included) and summarises its TSV:

    failures: RMSD > 10 Å, error or timeout;  success: RMSD < 3 Å
    local and chain sets (run with --local): placed right (< 5 Å) at rank 1, and
    within the top 5 candidates (any identical chain counts, as the scorer does)
Needs psutil (pip install -e .[bench]).
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
HARD = os.path.join(HERE, "hard")
UNSEEN = os.path.join(HERE, "unseen")
PUBLIC_SETS = ["public-sim-global", "public-real5A-global", "public-local", "public-chain"]
HARD_SETS = ["hard-states", "hard-partial", "hard-pseudosym", "hard-resgap", "hard-noise", "hard-chain"]
FLAGS = {"local": "--local", "global": "--global", "auto": ""}


def _maker(folder, module):
    sys.path.insert(0, folder)
    try:
        return __import__(module)
    finally:
        sys.path.remove(folder)


def unseen_sets(part=None):
    """The unseen corpus's sets (benchmarks/unseen): part 'tune', 'held' or both."""
    sets = _maker(UNSEEN, "make_unseen_cases").ALL_SETS
    return [s for s in sets if part is None or s.startswith(f"unseen-{part}-")]


def hard_modes():
    """The per-set mode tables of make_hard_cases.py and make_unseen_cases.py (local / global / auto)."""
    return dict(_maker(HARD, "make_hard_cases").MODES, **_maker(UNSEEN, "make_unseen_cases").MODES)


def expand_sets(spec):
    out = []
    for s in spec.split(","):
        s = s.strip()
        add = {
            "all": PUBLIC_SETS + HARD_SETS,
            "public": PUBLIC_SETS,
            "hard": HARD_SETS,
            "unseen": unseen_sets(),
            "tune": unseen_sets("tune"),
            "held": unseen_sets("held"),
        }.get(s, [s] if s else [])
        out += [x for x in add if x not in out]
    return out


def mode_flag(s, modes, local_flag):
    if s in modes:
        return FLAGS[modes[s]]
    return local_flag if ("local" in s or "chain" in s) else ""


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", default="public-sim-global,public-real5A-global,public-local,public-chain")
    ap.add_argument(
        "--bench", default=os.path.join(ROOT, "..", "shared", "bench"), help="folder with make_cases.py and evaluate.py"
    )
    ap.add_argument("--cases", default=None, help="case folder (default: $BENCH_HOME/cases)")
    ap.add_argument("--out", default=os.path.join(HERE, "results"), help="runs and TSVs go here")
    ap.add_argument("--method", default="cryoalign")
    ap.add_argument("--extra", default="", help="extra options for cryoalign align")
    ap.add_argument(
        "--local-flag",
        default="--local",
        help="added for sets named *local* or *chain* (default --local; '' for auto mode)",
    )
    ap.add_argument(
        "--mode",
        action="append",
        default=[],
        metavar="SET=local|global|auto",
        help="alignment mode for one set (repeatable); overrides the tables above",
    )
    ap.add_argument(
        "--exe",
        default=None,
        help="cryoalign executable to run (default: the one on PATH, else this Python's -m cryoalign), "
        "e.g. a pristine worktree's .venv/bin/cryoalign",
    )
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument(
        "--table-only", action="store_true", help="run nothing: print the table from the TSVs already in --out"
    )
    a = ap.parse_args(argv)
    modes = hard_modes()
    for m in a.mode:
        k, _, v = m.partition("=")
        if v not in FLAGS:
            ap.error(f"--mode {m}: the mode must be local, global or auto")
        modes[k] = v

    bench = os.path.abspath(a.bench)
    home = os.environ.get("BENCH_HOME", os.path.expanduser("~/.cache/cryoalign-bench"))
    cases = os.path.abspath(a.cases or os.path.join(home, "cases"))
    sets = expand_sets(a.sets)
    missing = [] if a.table_only else [s for s in sets if not os.path.isdir(os.path.join(cases, s))]
    for maker, group in (
        (os.path.join(bench, "make_cases.py"), [s for s in missing if s.startswith("public-")]),
        (os.path.join(HARD, "make_hard_cases.py"), [s for s in missing if s.startswith("hard-")]),
        (os.path.join(UNSEEN, "make_unseen_cases.py"), [s for s in missing if s.startswith("unseen-")]),
    ):
        if group:
            print(f"building cases {','.join(group)} in {cases} ...", file=sys.stderr, flush=True)
            subprocess.run(
                [sys.executable, maker, "--out", cases, "--only", ",".join(group)],
                check=True,
                stdout=subprocess.DEVNULL,
            )
    exe = a.exe or shutil.which("cryoalign") or f"{sys.executable} -m cryoalign"
    rows = []
    for s in sets:
        extra = (a.extra + " " + mode_flag(s, modes, a.local_flag)).strip()
        cmd = (
            f"{exe} align {{source}} {{target}} --source-contour {{sc}} --target-contour {{tc}} "
            f"--json {{out}} --quiet {extra}"
        ).strip()
        if not a.table_only:
            subprocess.run(
                [
                    sys.executable,
                    os.path.join(bench, "evaluate.py"),
                    "--set",
                    s,
                    "--method",
                    a.method,
                    "--cmd",
                    cmd,
                    "--cases",
                    cases,
                    "--runs",
                    os.path.join(a.out, "runs"),
                    "--results",
                    a.out,
                    "--jobs",
                    str(a.jobs),
                    "--timeout",
                    str(a.timeout),
                ],
                check=True,
                stdout=sys.stderr,
            )
        rows.append((s, summarise(os.path.join(a.out, f"{a.method}__{s}.tsv"))))
    print(table(rows))


def summarise(tsv):
    with open(tsv) as fh:
        recs = list(csv.DictReader(fh, delimiter="\t"))
    rms = np.array(
        [float(r["rmsd_sym"]) if r["status"].startswith("ok") and r["rmsd_sym"] != "NA" else np.inf for r in recs]
    )
    top5 = np.array(
        [float(r["top5_rmsd"]) if r["status"].startswith("ok") and r["top5_rmsd"] != "NA" else np.inf for r in recs]
    )
    strict = np.array(
        [float(r["rmsd"]) if r["status"].startswith("ok") and r["rmsd"] != "NA" else np.inf for r in recs]
    )
    wall = np.array([float(r["wall_s"]) for r in recs])
    mem = np.array([float(r["peak_rss_mb"]) for r in recs])
    return dict(
        n=len(recs),
        fail=float((rms > 10).mean() * 100),
        under3=float((rms < 3).mean() * 100),
        rank1_5=float((rms < 5).mean() * 100),
        top5_5=float((top5 < 5).mean() * 100),
        median_rmsd=float(np.median(rms)),
        median_strict=float(np.median(strict)),
        median_wall=float(np.median(wall)),
        max_wall=float(wall.max()),
        median_mem=float(np.median(mem)),
        max_mem=float(mem.max()),
        cases=[
            (r["case_id"], r["rmsd"], r["rmsd_sym"], r["top5_rmsd"], r["wall_s"], r["peak_rss_mb"], r["status"])
            for r in recs
        ],
    )


def table(rows):
    out = [
        "| set | pairs | failures (>10 Å) | under 3 Å | rank 1 < 5 Å | top 5 < 5 Å | median RMSD sym (Å) "
        "| median RMSD strict (Å) | median wall (s) | max wall (s) | median peak (MB) | max peak (MB) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s, r in rows:
        out.append(
            f"| {s} | {r['n']} | {r['fail']:.0f}% | {r['under3']:.0f}% | {r['rank1_5']:.0f}% | "
            f"{r['top5_5']:.0f}% | {r['median_rmsd']:.2f} | {r['median_strict']:.2f} | "
            f"{r['median_wall']:.2f} | {r['max_wall']:.2f} | {r['median_mem']:.0f} | {r['max_mem']:.0f} |"
        )
    out += [
        "",
        "| set | case | RMSD strict (Å) | RMSD sym (Å) | best of top 5 (Å) | wall (s) | peak (MB) | status |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s, r in rows:
        for c in r["cases"]:
            out.append(f"| {s} | " + " | ".join(c) + " |")
    return "\n".join(out)


if __name__ == "__main__":
    main()
