"""Variance of a series where one chain comes and goes, in random poses: wall time, peak
memory, and whether the top variance lies on the changing chain.

    python benchmarks/variance_bench.py [--maps 20] [--voxel 1.2] [--resolution 6] [--jobs 2] [--out DIR]

Maps are simulated from 5NSR (chain M present in every other map), each in a seeded random
pose, on boxes of about (extent / voxel)^3 voxels (voxel 1.2 Å: about 200^3).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import tempfile
import time

import numpy as np
from scipy.spatial import cKDTree

from cryoalign import transform as tf
from cryoalign.apps import simulate
from cryoalign.apps.variation import variance
from cryoalign.io import read_model, transform_model, write_map

MODEL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples", "5nsr.pdb.gz")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--maps", type=int, default=20)
    ap.add_argument("--voxel", type=float, default=1.2)
    ap.add_argument("--resolution", type=float, default=6.0)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--changing", default="M")
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    st = read_model(MODEL)
    chains = simulate.chain_ids(st)
    kept = [c for c in chains if c != args.changing]
    folder = args.out or tempfile.mkdtemp(prefix="variance-bench-")
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    paths, contours = [], {}
    t = time.perf_counter()
    for i in range(args.maps):
        use = chains if i % 2 == 0 else kept
        T = np.eye(4) if i == 0 else tf.make(tf.random_rotation(rng), rng.uniform(-10, 10, 3))
        m = simulate.simulate(transform_model(st, T), args.resolution, chains=use, voxel_A=args.voxel)
        paths.append(os.path.join(folder, f"map{i:02d}.mrc"))
        write_map(m, paths[-1])
        contours[paths[-1]] = simulate.contour_for(m, simulate.model_mass_Da(st, use))
    box = "x".join(str(n) for n in m.data.shape[::-1])
    print(f"simulated {args.maps} maps ({box} voxels, {args.voxel} Å) in {time.perf_counter() - t:.1f} s")
    out = os.path.join(folder, "out")
    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    result = variance(
        paths[0], paths, contours=contours, reference_contour=contours[paths[0]], out_dir=out, jobs=args.jobs
    )
    wall = time.perf_counter() - t
    peak_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    peak_children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    var = result.variance
    top = np.argsort(var.data.ravel())[-500:]
    xyz = var.index_to_world(np.array(np.unravel_index(top, var.data.shape))[::-1].T)
    near = lambda cs: cKDTree(np.array([[a.pos.x, a.pos.y, a.pos.z] for c in cs for r in st[0][c] for a in r])).query(
        xyz
    )[0]
    on_changing = float(np.mean(near([args.changing]) < near(kept)))
    t = time.perf_counter()
    variance(paths[0], paths, contours=contours, reference_contour=contours[paths[0]], out_dir=out, jobs=args.jobs)
    rerun = time.perf_counter() - t
    print(
        "maps  box          jobs  wall s  rerun s  peak RSS main MB  peak RSS worker MB  top-500 variance voxels on chain "
        f"{args.changing}"
    )
    print(
        f"{args.maps:4d}  {box:<11}  {args.jobs:4d}  {wall:6.1f}  {rerun:7.1f}  {peak_self:16.0f}  {peak_children:18.0f}  "
        f"{100 * on_changing:.0f}%"
    )
    print(
        f"kept {len(result.kept)}/{len(result.records)}; scores "
        f"{min(r['score'] for r in result.records):.3f}-{max(r['score'] for r in result.records):.3f}; outputs in {out}"
    )


if __name__ == "__main__":
    main()
