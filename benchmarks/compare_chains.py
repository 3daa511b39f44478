"""Does `compare` find a missing chain? For every chain of a public complex: simulate the
complex (target) and the complex without that chain (source, moved by a seeded random rigid
motion, on another density scale), add noise, compare, and print a table.

    python benchmarks/compare_chains.py [--model 5nsr] [--resolution 6] [--align] [--scale]

--align also runs compare through cryoalign.align (global mode); --scale prints, for
every scale method, the fitted factor (truth 1/GAIN) and the mass error.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

from cryoalign import simulate
from cryoalign import transform as tf
from cryoalign.comparison import SCALE_METHODS, compare
from cryoalign.io import read_model, transform_model
from cryoalign.types import DensityMap

GAIN, OFFSET = 2.5, 0.3


def case(st, chains, missing, resolution, voxel, seed):
    rng = np.random.default_rng(seed)
    T = tf.make(tf.random_rotation(rng), rng.uniform(-20.0, 20.0, 3))
    kept = [c for c in chains if c != missing]
    target = simulate.simulate(st, resolution, chains=chains, voxel_A=voxel)
    tc = simulate.contour_for(target, simulate.model_mass_Da(st, chains))
    source = simulate.simulate(transform_model(st, tf.invert(T)), resolution, chains=kept, voxel_A=voxel)
    sc = simulate.contour_for(source, simulate.model_mass_Da(st, kept)) * GAIN + OFFSET
    noisy = lambda m, s, g, o: DensityMap((m.data * g + o + rng.normal(0, s, m.data.shape)).astype(np.float32),
                                          m.voxel_size_A, m.origin_A)
    source = noisy(source, 0.1 * sc, GAIN, OFFSET)
    target = noisy(target, 0.04 * tc, 1.0, 0.0)
    atoms = [(a.pos.x, a.pos.y, a.pos.z, a.element.weight) for r in st[0][missing] for a in r
             if a.element.name not in ("H", "D")]
    a = np.array(atoms)
    centre = (a[:, :3] * a[:, 3:]).sum(0) / a[:, 3].sum()
    return source, target, sc, tc, T, simulate.model_mass_Da(st, [missing]) / 1000.0, centre


def row(result, true_kDa, centre):
    d, o = result.difference["target_minus_source"], result.difference["source_minus_target"]
    dist = np.linalg.norm(np.array(d.blobs[0].centre_A) - centre) if d.blobs else float("nan")
    return d.mass_kDa, 100.0 * (d.mass_kDa - true_kDa) / true_kDa, o.mass_kDa, dist


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples", "5nsr.pdb.gz"))
    ap.add_argument("--resolution", type=float, default=6.0)
    ap.add_argument("--voxel", type=float, default=2.0)
    ap.add_argument("--align", action="store_true")
    ap.add_argument("--scale", action="store_true")
    args = ap.parse_args(argv)
    st = read_model(args.model)
    chains = simulate.chain_ids(st)
    print(f"model {args.model}: chains {','.join(chains)}; {args.resolution} Å, voxel {args.voxel} Å; "
          f"source x{GAIN} +{OFFSET}, noise 0.1 x contour (source), 0.04 x contour (target)")
    head = "chain  true kDa  found kDa  error %  other kDa  centre dist Å  time s"
    print(head + ("   | aligned: found kDa  error %  other kDa  dist Å  time s" if args.align else ""))
    scale_rows = []
    for seed, missing in enumerate(chains):
        source, target, sc, tc, T, true_kDa, centre = case(st, chains, missing, args.resolution, args.voxel, seed)
        t = time.perf_counter()
        r = compare(source, target, source_contour=sc, target_contour=tc, matrix=T)
        line = f"{missing:>5}  {true_kDa:8.1f}  {'%9.1f  %7.1f  %9.1f  %13.2f' % row(r, true_kDa, centre)}  " \
               f"{time.perf_counter() - t:6.2f}"
        if args.align:
            from cryoalign.config import AlignConfig
            t = time.perf_counter()
            ra = compare(source, target, source_contour=sc, target_contour=tc, config=AlignConfig(mode="global"))
            line += "   | %17.1f  %7.1f  %9.1f  %6.2f" % row(ra, true_kDa, centre) + f"  {time.perf_counter() - t:6.2f}"
        print(line, flush=True)
        if args.scale:
            for method in SCALE_METHODS:
                rm = compare(source, target, source_contour=sc, target_contour=tc, matrix=T, scale_method=method,
                             fsc_mask=False)
                scale_rows.append((missing, method, rm.scale.factor * GAIN, *row(rm, true_kDa, centre)))
    if args.scale:
        print("\nscale method      factor/truth  mean |mass error| %  max |error| %  mean other kDa")
        for method in SCALE_METHODS:
            rows = [r for r in scale_rows if r[1] == method]
            ratio = np.mean([r[2] for r in rows])
            err = np.abs([r[4] for r in rows])
            print(f"{method:<18} {ratio:11.3f}  {err.mean():19.1f}  {err.max():13.1f}  "
                  f"{np.mean([r[5] for r in rows]):14.1f}")


if __name__ == "__main__":
    main()
