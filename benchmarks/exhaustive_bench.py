"""The exhaustive scan beside PowerFit: chains fitted into maps they are deposited in.

    python benchmarks/exhaustive_bench.py [--cases 5nsr,public] [--chains A,E] [--powerfit PATH]
                                          [--jobs 2] [--angle 10] [--out results.tsv]

Cases (the models are the ones fitted in these maps, so the right placement is the
identity): the eight chains of PDB 5NSR into the EMD-3695 map on its 5 Å grid (contour
1.25, resolution 6 Å, as README "Fitting a model's chains"), and the public chain cases
of ../shared/bench (3J6B chain with the most residues into EMD-2566 (cropped), 3.2 Å;
5FWP chain A into EMD-3340 5 Å grid, 10 Å; 5U8T chain A into EMD-8519 5 Å grid, 10 Å;
5 Å-grid contours as the public benchmark sets them, 0.5 x the 1st percentile of the
nonzero voxels; the cropped map's contour estimated).

For each chain: `cryoalign fit` in this process with `--exhaustive never` and `auto`
(jobs as given), and PowerFit (`powerfit MAP RES MODEL -c CHAIN -a ANGLE -p JOBS`,
its defaults otherwise: Laplace filter, core-weighted LCC, resampling and trimming), each
timed from start to end of that chain.  Right = CA RMSD under 3 Å from the deposited
chain; the table gives the RMSD of rank 1, whether a right pose is in the top 5, the
confidence (cryoalign) and the time.  PowerFit lives in its own environment
(`python -m venv pf && pf/bin/pip install powerfit-em`); pass its `powerfit` with
--powerfit, or leave it out to run cryoalign alone.
"""

from __future__ import annotations

import argparse
import gzip
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def cases(which):
    out = []
    if "5nsr" in which:
        for ch in "ABCDEMFG":
            out.append(
                dict(
                    name=f"5nsr_{ch}",
                    model=ROOT / "examples/5nsr.pdb.gz",
                    chain=ch,
                    map=ROOT / "examples/emd_3695_5A.mrc.gz",
                    res=6.0,
                    contour=1.25,
                )
            )
    if "public" in which:
        out.append(
            dict(
                name="3j6b_9",
                model=DATA / "models/3j6b_9.pdb.gz",
                chain=None,
                map=DATA / "maps/emd_2566_crop.mrc.gz",
                res=3.2,
                contour=None,
            )
        )
        out.append(
            dict(
                name="5fwp_A",
                model=DATA / "models/5fwp.pdb.gz",
                chain="A",
                map=DATA / "maps/emd_3340_5A.mrc.gz",
                res=10.0,
                contour="small",
            )
        )
        out.append(
            dict(
                name="5u8t_A",
                model=DATA / "models/5u8t.pdb.gz",
                chain="A",
                map=DATA / "maps/emd_8519_5A.mrc.gz",
                res=10.0,
                contour="small",
            )
        )
    return out


def trace(st, chain):
    return np.array(
        [
            [a.pos.x, a.pos.y, a.pos.z]
            for ch in st[0]
            if ch.name == chain
            for res in ch
            for a in res
            if a.name in ("CA", "P")
        ]
    )


def rmsd(a, b):
    return float(np.sqrt(((a - b) ** 2).sum(1).mean()))


def contour_of(case, density):
    if case["contour"] == "small":
        v = density.data[density.data != 0]
        return float(0.5 * np.percentile(v, 1))
    return case["contour"]


def run_cryoalign(case, st, chain, exhaustive, jobs, angle):
    from cryoalign import transform as tf
    from cryoalign.apps import fit
    from cryoalign.core.pipeline import as_map

    density = as_map(str(case["map"]))
    t0 = time.perf_counter()
    r = fit.fit_model(
        st,
        density,
        resolution_A=case["res"],
        chains=[chain],
        contour=contour_of(case, density),
        jobs=jobs,
        exhaustive=exhaustive,
        exhaustive_min_step_deg=angle,
    )
    dt = time.perf_counter() - t0
    c = r.chains[0]
    ca = trace(st, chain)
    d = [rmsd(tf.apply(p.T_target_source, ca), ca) for p in c.placements]
    return dict(
        rank1=d[0] if d else float("nan"),
        top5=any(x < 3 for x in d[:5]),
        time=dt,
        verdict=c.confidence["verdict"] if c.confidence else "-",
        scan=r.timings_s.get("exhaustive scan", 0.0),
        found=c.placements[0].found_by if c.placements else "",
    )


def run_powerfit(case, st, chain, powerfit, jobs, angle):
    import gemmi

    with tempfile.TemporaryDirectory() as tmp:
        mp = Path(tmp) / "map.mrc"
        with gzip.open(case["map"]) as fin, open(mp, "wb") as fout:
            shutil.copyfileobj(fin, fout)
        model = Path(tmp) / "model.pdb"
        one = st.clone()
        one.remove_ligands_and_waters()
        one.write_pdb(str(model))
        out = Path(tmp) / "out"
        t0 = time.perf_counter()
        proc = subprocess.run(
            [
                powerfit,
                str(mp),
                str(case["res"]),
                str(model),
                "-c",
                chain,
                "-a",
                str(angle),
                "-p",
                str(jobs),
                "-d",
                str(out),
                "-n",
                "5",
            ],
            capture_output=True,
            text=True,
        )
        dt = time.perf_counter() - t0
        if proc.returncode != 0:
            return dict(rank1=float("nan"), top5=False, time=dt, verdict="error: " + proc.stderr.strip()[-200:])
        ca = trace(st, chain)
        d = []
        for k in range(1, 6):
            f = out / f"fit_{k}.pdb"
            if f.exists():
                moved = gemmi.read_structure(str(f))
                got = np.array(
                    [[a.pos.x, a.pos.y, a.pos.z] for ch in moved[0] for res in ch for a in res if a.name in ("CA", "P")]
                )
                d.append(rmsd(got, ca) if len(got) == len(ca) else float("nan"))
        return dict(rank1=d[0] if d else float("nan"), top5=any(x < 3 for x in d[:5]), time=dt, verdict="")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", default="5nsr,public")
    ap.add_argument("--chains", default=None, help="only these 5NSR chains (comma-separated)")
    ap.add_argument("--powerfit", default=None, help="the powerfit executable (its own environment)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--angle", type=float, default=10.0, help="rotation step, both tools (default 10°)")
    ap.add_argument("--modes", default="never,auto", help="cryoalign --exhaustive settings to run")
    ap.add_argument("--out", default=None, help="also write the rows here (TSV)")
    args = ap.parse_args(argv)
    import gemmi

    sys.path.insert(0, str(ROOT / "src"))
    rows = ["case\ttool\trank1_rmsd_A\tright_at_1\tright_in_top5\tverdict\ttime_s\tscan_s\tfound_by"]
    print(rows[0], flush=True)
    for case in cases(args.cases):
        if args.chains and case["name"].startswith("5nsr") and case["chain"] not in args.chains.split(","):
            continue
        st = gemmi.read_structure(str(case["model"]))
        st.setup_entities()
        chain = case["chain"] or max((c.name for c in st[0]), key=lambda n: len(trace(st, n)))
        runs = [
            (f"cryoalign {m}", lambda m=m: run_cryoalign(case, st, chain, m, args.jobs, args.angle))
            for m in args.modes.split(",")
        ]
        if args.powerfit:
            runs.append(("powerfit", lambda: run_powerfit(case, st, chain, args.powerfit, args.jobs, args.angle)))
        for tool, fn in runs:
            r = fn()
            row = (
                f"{case['name']}\t{tool}\t{r['rank1']:.1f}\t{'yes' if r['rank1'] < 3 else 'no'}\t"
                f"{'yes' if r['top5'] else 'no'}\t{r['verdict']}\t{r['time']:.1f}\t{r.get('scan', 0.0):.1f}\t"
                f"{r.get('found', '')}"
            )
            rows.append(row)
            print(row, flush=True)
    if args.out:
        Path(args.out).write_text("\n".join(rows) + "\n")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
