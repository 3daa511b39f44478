"""Does `compare` find a missing chain? For every chain of public complexes: simulate the
complex (target) and the complex without that chain (source, moved by a seeded random rigid
motion, on another density scale), add noise, compare, and print a table.

    python benchmarks/compare_chains.py [--models 5nsr,5nss,...] [--resolution 6] [--align]
                                        [--scale] [--variants] [--cache DIR]

--models: names in ../shared/data/models (default: every multi-chain model there, else
examples/5nsr); --align also runs compare through cryoalign.align (global mode); --scale
prints, for every scale method, the fitted factor (truth 1/GAIN) and the mass errors;
--variants prints the pass rate of the scale / merge / contour-restriction choices side
by side (the old rule: both_above_lsq, no merging, no restriction).  A case passes when
the total mass is within 15% of the chain's, the largest blob lies on the chain (its
centre within 5 Å of the chain's centre of mass or of a chain atom; a chain in two places, like 5FKV D with 18 residues
unmodelled between a body and a tail 31 Å away, is two blobs) and under 15% of the
chain's mass is found the other way.
"""

from __future__ import annotations

import argparse
import glob
import os
import time

import numpy as np

from cryoalign import transform as tf
from cryoalign.apps import simulate
from cryoalign.apps.comparison import SCALE_METHODS, compare
from cryoalign.io import read_model, transform_model
from cryoalign.types import DensityMap

GAIN, OFFSET = 2.5, 0.3
HERE = os.path.dirname(os.path.abspath(__file__))
SHARED_MODELS = os.path.join(HERE, "..", "..", "shared", "data", "models")
TOLERANCE, CENTRE_A = 0.15, 5.0
OLD = dict(
    scale_method="both_above_lsq", merge_fraction=None, within_contours=False, shared_sigma=False, count_fraction=1.0
)
LSQ = dict(scale_method="background_lsq")
VARIANTS = {  # name: compare keyword arguments, each row adding one change to the one above
    "old rule (offset free, no merge, unrestricted)": OLD,
    "+ background offset": dict(OLD, scale_method="background_lsq"),
    "+ within own contour": dict(LSQ, merge_fraction=None, shared_sigma=False, count_fraction=1.0),
    "+ level >= 3 sigma inside both": dict(LSQ, merge_fraction=None, count_fraction=1.0),
    "+ merge at 0.5 x level": dict(LSQ, count_fraction=1.0, merge_gap_A=0.0),
    "  merge at 0.75 x level instead": dict(LSQ, merge_fraction=0.75, count_fraction=1.0, merge_gap_A=0.0),
    "  merge at 0.25 x level instead": dict(LSQ, merge_fraction=0.25, count_fraction=1.0, merge_gap_A=0.0),
    "+ count down to 0.8 x level": dict(LSQ, count_fraction=0.8, merge_gap_A=0.0),
    "+ count down to 0.6 x level": dict(LSQ, merge_gap_A=0.0),
    "+ merge within 4 A": dict(LSQ, merge_gap_A=4.0),
    "+ merge within 7 A": dict(scale_method="background_lsq"),
    "  merge within 10 A instead": dict(scale_method="background_lsq", merge_gap_A=10.0),
    "  scale background_median instead": dict(scale_method="background_median"),
    "+ scale background_quantiles (default)": dict(),
}


def case(st, chains, missing, resolution, voxel, seed, cache=None, tag=""):
    rng = np.random.default_rng(seed)
    T = tf.make(tf.random_rotation(rng), rng.uniform(-20.0, 20.0, 3))
    atoms = [
        (a.pos.x, a.pos.y, a.pos.z, a.element.weight)
        for r in st[0][missing]
        for a in r
        if a.element.name not in ("H", "D")
    ]
    a = np.array(atoms)
    centre = (a[:, :3] * a[:, 3:]).sum(0) / a[:, 3].sum()
    centre = (centre, a[:, :3])  # centre of mass and the atoms, for "on the chain"
    true_kDa = simulate.model_mass_Da(st, [missing]) / 1000.0
    path = os.path.join(cache, f"{tag}_{missing}_{resolution:g}_{voxel:g}_{seed}.npz") if cache else None
    if path and os.path.exists(path):
        z = np.load(path)
        source = DensityMap(z["s"], z["s_vox"], z["s_org"])
        target = DensityMap(z["t"], z["t_vox"], z["t_org"])
        return source, target, float(z["sc"]), float(z["tc"]), T, true_kDa, centre
    kept = [c for c in chains if c != missing]
    target = simulate.simulate(st, resolution, chains=chains, voxel_A=voxel)
    tc = simulate.contour_for(target, simulate.model_mass_Da(st, chains))
    source = simulate.simulate(transform_model(st, tf.invert(T)), resolution, chains=kept, voxel_A=voxel)
    sc = simulate.contour_for(source, simulate.model_mass_Da(st, kept)) * GAIN + OFFSET
    noisy = lambda m, s, g, o: DensityMap(
        (m.data * g + o + rng.normal(0, s, m.data.shape)).astype(np.float32), m.voxel_size_A, m.origin_A
    )
    source = noisy(source, 0.1 * sc, GAIN, OFFSET)
    target = noisy(target, 0.04 * tc, 1.0, 0.0)
    if path:
        os.makedirs(cache, exist_ok=True)
        np.savez(
            path,
            s=source.data,
            s_vox=source.voxel_size_A,
            s_org=source.origin_A,
            t=target.data,
            t_vox=target.voxel_size_A,
            t_org=target.origin_A,
            sc=sc,
            tc=tc,
        )
    return source, target, sc, tc, T, true_kDa, centre


def row(result, true_kDa, centre):
    """(found kDa, error %, largest blob kDa, largest error %, other kDa, distance from the largest
    blob's centre to the chain's centre of mass Å, pieces, to the chain's nearest atom Å)."""
    centre, atoms = centre
    d, o = result.difference["target_minus_source"], result.difference["source_minus_target"]
    big = d.blobs[0] if d.blobs else None
    dist = np.linalg.norm(np.array(big.centre_A) - centre) if big else float("nan")
    near = np.min(np.linalg.norm(atoms - np.array(big.centre_A), axis=1)) if big else float("nan")
    big_kDa = big.mass_kDa if big else 0.0
    return (
        d.mass_kDa,
        100.0 * (d.mass_kDa - true_kDa) / true_kDa,
        big_kDa,
        100.0 * (big_kDa - true_kDa) / true_kDa,
        o.mass_kDa,
        dist,
        big.pieces if big else 0,
        near,
    )


def passes(r):
    """Total mass within TOLERANCE, the largest blob on the chain (its centre within CENTRE_A of
    the chain's centre of mass or of a chain atom) and no more than TOLERANCE x the chain's mass
    found the other way."""
    true_kDa = r[0] / (1.0 + r[1] / 100.0)
    return abs(r[1]) <= 100 * TOLERANCE and min(r[5], r[7]) <= CENTRE_A and r[4] <= TOLERANCE * true_kDa


def default_models():
    found = sorted(glob.glob(os.path.join(SHARED_MODELS, "*.pdb.gz")))
    multi = [p for p in found if len(simulate.chain_ids(read_model(p))) > 1]
    return multi or [os.path.join(HERE, "..", "examples", "5nsr.pdb.gz")]


def readme_example():
    """The README's compare example with the ground-truth matrix, for every variant, and the
    yardsticks: the maps' own envelopes (voxels above one contour and not the other) and the
    models (5NSR fitted in EMD-3695, moved by the ground truth, and 5NSS fitted in EMD-3696,
    simulated at 8 Å and contoured at their molecular volume: what the models say differs)."""
    from scipy import ndimage

    from cryoalign.io import read_map
    from cryoalign.io.maps import resample_onto

    ex = os.path.join(HERE, "..", "examples")
    src, tgt = read_map(os.path.join(ex, "emd_3695_5A.mrc.gz")), read_map(os.path.join(ex, "emd_3696_5A.mrc.gz"))
    T = np.vstack([np.loadtxt(os.path.join(ex, "gt_3695_to_3696.txt")), [0, 0, 0, 1]])
    vox = float(np.prod(tgt.voxel_size_A))
    kda = lambda n: n * vox * 0.81 / 1000.0

    def parts(mask):
        lab, n = ndimage.label(mask)
        sizes = np.bincount(lab.ravel())[1:]
        return kda(mask.sum()), kda(sizes.max() if n else 0)

    s_mol = (
        resample_onto(DensityMap((src.data > 1.25).astype(np.float32), src.voxel_size_A, src.origin_A), tgt, T).data
        > 0.5
    )
    t_mol = tgt.data > 0.69
    models = []
    for name, M in (("5nsr", T), ("5nss", np.eye(4))):
        st = read_model(
            os.path.join(SHARED_MODELS, f"{name}.pdb.gz") if name == "5nss" else os.path.join(ex, "5nsr.pdb.gz")
        )
        m = simulate.simulate(st, 8.0, voxel_A=2.5)
        models.append(resample_onto(m, tgt, M).data > simulate.contour_for(m, simulate.model_mass_Da(st)))
    print("README example: EMD-3695 (source, contour 1.25) onto EMD-3696 (target, 0.69), ground-truth matrix")
    print(
        f"molecules on the target grid: source {kda(s_mol.sum()):.0f} kDa, target {kda(t_mol.sum()):.0f} kDa "
        "(volume x 0.81 Da/Å^3)"
    )
    print("yardstick                                 target-source total / largest   source-target total / largest")
    print(
        "envelopes (above one contour only)        %8.0f / %-8.0f              %8.0f / %.0f"
        % (*parts(t_mol & ~s_mol), *parts(s_mol & ~t_mol))
    )
    print(
        "models (5NSS only / 5NSR only)            %8.0f / %-8.0f              %8.0f / %.0f"
        % (*parts(models[1] & ~models[0]), *parts(models[0] & ~models[1]))
    )
    print(
        "\nvariant                                        factor  offset  target-source total / largest (pieces)"
        "   source-target total / largest   warnings"
    )
    for label, kw in VARIANTS.items():
        r = compare(src, tgt, source_contour=1.25, target_contour=0.69, matrix=T, fsc_mask=False, **kw)
        a, b = r.difference["target_minus_source"], r.difference["source_minus_target"]
        big = lambda d: (d.blobs[0].mass_kDa, d.blobs[0].pieces) if d.blobs else (0.0, 0)
        print(
            f"{label:<46} {r.scale.factor:6.3f}  {r.scale.offset:6.3f}  {a.mass_kDa:8.0f} / {big(a)[0]:.0f} "
            f"({big(a)[1]})".ljust(40)
            + f"   {b.mass_kDa:8.0f} / {big(b)[0]:<8.0f}        {len(r.warnings)}"
        )


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=None, help="comma-separated model names or paths")
    ap.add_argument("--model", default=None, help="one model path (old option)")
    ap.add_argument("--resolution", type=float, default=6.0)
    ap.add_argument("--voxel", type=float, default=2.0)
    ap.add_argument("--max-chains", type=int, default=None, help="at most this many chains per model")
    ap.add_argument("--align", action="store_true")
    ap.add_argument("--scale", action="store_true")
    ap.add_argument("--variants", action="store_true")
    ap.add_argument("--cache", default=None, help="keep the simulated cases here (reruns are faster)")
    ap.add_argument(
        "--example",
        action="store_true",
        help="only the README example (EMD-3695 vs EMD-3696), every variant, against what its models say differs",
    )
    args = ap.parse_args(argv)
    if args.example:
        return readme_example()
    if args.model:
        paths = [args.model]
    elif args.models:
        paths = [p if os.path.exists(p) else os.path.join(SHARED_MODELS, f"{p}.pdb.gz") for p in args.models.split(",")]
    else:
        paths = default_models()
    print(
        f"{args.resolution} Å, voxel {args.voxel} Å; source x{GAIN} +{OFFSET}, noise 0.1 x contour (source), "
        f"0.04 x contour (target); pass: total within {100 * TOLERANCE:.0f}%, largest blob's centre within "
        f"{CENTRE_A:g} Å of the chain's centre or an atom, other way under {100 * TOLERANCE:.0f}% of the chain"
    )
    head = (
        "model  chain  true kDa  found kDa  error %  largest kDa  error %  pieces  other kDa  centre dist Å  "
        "to atom Å  time s"
    )
    print(head + ("   | aligned: found kDa  error %  other kDa  dist Å  time s" if args.align else ""))
    scale_rows, variant_rows, all_rows = [], {k: [] for k in VARIANTS}, []
    for path in paths:
        st = read_model(path)
        chains = simulate.chain_ids(st)
        name = os.path.basename(path).split(".")[0]
        for seed, missing in enumerate(chains[: args.max_chains]):
            source, target, sc, tc, T, true_kDa, centre = case(
                st, chains, missing, args.resolution, args.voxel, seed, args.cache, name
            )
            t = time.perf_counter()
            r = compare(source, target, source_contour=sc, target_contour=tc, matrix=T, fsc_mask=False)
            v = row(r, true_kDa, centre)
            all_rows.append((name, missing, true_kDa, v))
            line = (
                f"{name:>6} {missing:>5}  {true_kDa:8.1f}  {v[0]:9.1f}  {v[1]:7.1f}  {v[2]:11.1f}  {v[3]:7.1f}  "
                f"{v[6]:6d}  {v[4]:9.1f}  {v[5]:13.2f}  {v[7]:9.2f}  {time.perf_counter() - t:6.2f}"
                + ("" if passes(v) else "  FAIL")
            )
            if args.align:
                from cryoalign.config import AlignConfig

                t = time.perf_counter()
                ra = compare(source, target, source_contour=sc, target_contour=tc, config=AlignConfig(mode="global"))
                va = row(ra, true_kDa, centre)
                line += f"   | {va[0]:17.1f}  {va[1]:7.1f}  {va[4]:9.1f}  {va[5]:6.2f}  {time.perf_counter() - t:6.2f}"
            print(line, flush=True)
            if args.scale:
                for method in SCALE_METHODS:
                    rm = compare(
                        source,
                        target,
                        source_contour=sc,
                        target_contour=tc,
                        matrix=T,
                        scale_method=method,
                        fsc_mask=False,
                    )
                    scale_rows.append((method, rm.scale.factor * GAIN, *row(rm, true_kDa, centre)))
            if args.variants:
                for label, kw in VARIANTS.items():
                    rv = compare(source, target, source_contour=sc, target_contour=tc, matrix=T, fsc_mask=False, **kw)
                    variant_rows[label].append(row(rv, true_kDa, centre))
    ok = sum(passes(v) for *_, v in all_rows)
    errs = np.abs([v[1] for *_, v in all_rows])
    print(f"\n{ok} of {len(all_rows)} cases pass; mean |error| {errs.mean():.1f}%, max {errs.max():.1f}%")
    if args.scale:
        print("\nscale method      factor/truth  mean |mass error| %  max |error| %  mean other kDa  pass")
        for method in SCALE_METHODS:
            rows = [r for r in scale_rows if r[0] == method]
            err = np.abs([r[3] for r in rows])
            print(
                f"{method:<18} {np.mean([r[1] for r in rows]):11.3f}  {err.mean():19.1f}  {err.max():13.1f}  "
                f"{np.mean([r[6] for r in rows]):14.1f}  {sum(passes(r[2:]) for r in rows)}/{len(rows)}"
            )
    if args.variants:
        print(
            "\nvariant                                          pass   mean |total err| %  max   "
            "mean |largest err| %  max   largest within 15%  mean other kDa"
        )
        for label, rows in variant_rows.items():
            e, b = np.abs([r[1] for r in rows]), np.abs([r[3] for r in rows])
            print(
                f"{label:<48} {sum(map(passes, rows)):3d}/{len(rows):<3d} {e.mean():17.1f}  {e.max():5.1f}  "
                f"{b.mean():19.1f}  {b.max():5.1f}  {int(np.sum(b <= 100 * TOLERANCE)):12d}/{len(rows):<5d} "
                f"{np.mean([r[4] for r in rows]):14.1f}"
            )


if __name__ == "__main__":
    main()
