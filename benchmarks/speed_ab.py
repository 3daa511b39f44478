#!/usr/bin/env python3
"""Whole-process wall time of two cryoalign versions, run back to back (A B A B ...).

    python benchmarks/speed_ab.py --old-src /tmp/old/src [--sets public-sim-global,public-real5A-global]
        [--cases CASES_DIR] [--rounds 2] [--only case_a,case_b]

A: this checkout (the venv's `python -m cryoalign`); B: the same command with PYTHONPATH set to
--old-src (a worktree of the older commit: `git worktree add /tmp/old 82a0b7d`). Every pair
runs in a fresh process per version per round, alternating, so machine load drifts hit both
alike; the table gives each version's median over the rounds, the ratio new / old, and the
set medians. The alignment mode is each set's (run_benchmark.py's tables).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import run_benchmark  # noqa: E402


def timed(cmd, env):
    t = time.perf_counter()
    subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old-src", required=True)
    ap.add_argument("--sets", default="public-sim-global,public-real5A-global")
    ap.add_argument("--cases", default=os.path.join(os.path.expanduser("~/.cache/cryoalign-bench"), "cases"))
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--only", default=None)
    a = ap.parse_args(argv)
    modes = run_benchmark.hard_modes()
    new_env = dict(os.environ)
    new_env.pop("PYTHONPATH", None)
    old_env = dict(new_env, PYTHONPATH=os.path.abspath(a.old_src))
    rows = []
    for s in run_benchmark.expand_sets(a.sets):
        flag = run_benchmark.mode_flag(s, modes, "--local")
        for cid in sorted(os.listdir(os.path.join(a.cases, s))):
            if a.only and cid not in a.only.split(","):
                continue
            d = os.path.join(a.cases, s, cid)
            c = json.load(open(os.path.join(d, "case.json")))
            cmd = [
                sys.executable,
                "-m",
                "cryoalign",
                "align",
                f"{d}/source.mrc",
                f"{d}/target.mrc",
                "--source-contour",
                str(c["source_contour"]),
                "--target-contour",
                str(c["target_contour"]),
                "--quiet",
                "--json",
                os.devnull,
            ] + ([flag] if flag else [])
            new, old = [], []
            for _ in range(a.rounds):
                new.append(timed(cmd, new_env))
                old.append(timed(cmd, old_env))
            rows.append((s, cid, float(np.median(new)), float(np.median(old))))
            print(
                f"{s}\t{cid}\tnew {rows[-1][2]:.2f} s\told {rows[-1][3]:.2f} s\tratio {rows[-1][2] / rows[-1][3]:.2f}",
                file=sys.stderr,
                flush=True,
            )
    print("| set | case | new (s) | old (s) | new / old |")
    print("|---|---|---|---|---|")
    for s, cid, n, o in rows:
        print(f"| {s} | {cid} | {n:.2f} | {o:.2f} | {n / o:.2f} |")
    for s in sorted({r[0] for r in rows}):
        sel = [r for r in rows if r[0] == s]
        print(
            f"| {s} | **median** | {np.median([r[2] for r in sel]):.2f} | {np.median([r[3] for r in sel]):.2f} | "
            f"{np.median([r[2] / r[3] for r in sel]):.2f} |"
        )


if __name__ == "__main__":
    main()
