#!/usr/bin/env python3
"""Alignment accuracy of cryoalign as noise grows and resolution degrades.

    python benchmarks/robustness.py [--models DIR] [--molecules 3j6b_9,3mfp,5fkv,5nsr]
        [--repeats 3] [--seed 2026] [--workers 2] [--png benchmarks/robustness.png] [--raw cases.tsv]
        [--noise band|white] [--quick]

Cases.  For each molecule (public PDB models, see /work/shared/data/SOURCES.tsv) and
each of `--repeats` random rigid motions (uniform rotation, translation uniform in
+-30 Å per axis; seeded by (seed, molecule, repeat), so every condition sees the same
motions), the target is the model as deposited and the source the moved model, both
simulated with `cryoalign.apps.simulate.simulate` (molmap-style Gaussians) on a box padded
by 20 Å of solvent, voxel = resolution / 3 but at least 1.5 Å (and coarser if the box
would exceed 160^3 voxels).  `cryoalign.align(..., mode="global")` then recovers the
motion; the error is the CA RMSD (P for nucleotides) of the moved model between the
estimated transform and the true inverse motion.  Success: RMSD < 3 Å.  An alignment
that raises (e.g. too few points above the contour) counts as a failure (RMSD inf).

Noise.  SNR = variance of the noise-free map inside the molecule's mask / noise variance,
the mask being the voxels above the noise-free map's `contour_for` level (the model's
volume at 1.21 Å^3/Da).  The noise is Gaussian and, by default ("band"), band-limited
like the map: white noise blurred by the same Gaussian as the atoms (sigma = 0.225 x
resolution) and rescaled to the wanted variance, so the SNR means the same at every
voxel size and the noise looks like density blobs of the map's resolution.  With
--noise white it is i.i.d. per voxel (much easier: the pipeline's smoothing averages it).
Both maps get independent noise at the same SNR.

Contours.  "oracle": the noise-free map's `contour_for` level (encloses the molecular
volume on the clean map; the stand-in for a well-chosen recommended contour), used on the
noisy map.  "estimated": cryoalign's own `pointcloud.estimate_contour` on the noisy map
(what `align` does when no contour is given).

Sweeps (one markdown table each; rows: condition; success rate, median RMSD, median
alignment time, successes per molecule):
  noise, oracle contour     both maps at 6 Å, SNR inf (no noise), 10, 5, 2, 1, 0.5, 0.2, 0.1
  noise, estimated contour  the same cases with the estimated contours
  resolution, same          both maps at r = 3, 4, 6, 8, 10, 12, 15, 20 Å, SNR 10, oracle contour
  resolution, estimated     the same cases with the estimated contours
  resolution, source 6 Å    target at r, source at 6 Å, SNR 10, oracle contour
(SNR 0.2/0.1 and 15/20 Å extend the requested ranges, looking for the failure point.)

Times are wall-clock seconds of `align` alone (simulation excluded) in a worker process;
with --workers 2 two alignments run at once, one per core.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # one core per worker

import numpy as np
from scipy import ndimage

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "src"))

import cryoalign  # noqa: E402
from cryoalign import transform as tf  # noqa: E402
from cryoalign.apps import simulate as sim  # noqa: E402
from cryoalign.core import pointcloud  # noqa: E402
from cryoalign.io import model_coordinates, read_model, transform_model  # noqa: E402
from cryoalign.types import DensityMap  # noqa: E402

MOLECULES = ("3j6b_9", "3mfp", "5fkv", "5nsr")
SNRS = (math.inf, 10.0, 5.0, 2.0, 1.0, 0.5, 0.2, 0.1)
RESOLUTIONS = (3.0, 4.0, 6.0, 8.0, 10.0, 12.0, 15.0, 20.0)
NOISE_RESOLUTION_A = 6.0
RESOLUTION_SWEEP_SNR = 10.0
FIXED_SOURCE_RESOLUTION_A = 6.0
SUCCESS_A = 3.0
PADDING_A = 20.0
MIN_VOXEL_A = 1.5
MAX_BOX_VOXELS = 160**3
MAX_TRANSLATION_A = 30.0
FAIL_DRAWN_A = 300.0  # where an infinite median RMSD (alignments raised) is drawn

# sweep name -> (title, condition label, x values)
SWEEPS = {
    "noise-oracle": "Noise sweep, oracle contour (both maps 6 Å)",
    "noise-estimated": "Noise sweep, estimated contour (both maps 6 Å)",
    "resolution-same": f"Resolution sweep, both maps at r (SNR {RESOLUTION_SWEEP_SNR:g}, oracle contour)",
    "resolution-same-estimated": f"Resolution sweep, both maps at r (SNR {RESOLUTION_SWEEP_SNR:g}, estimated contour)",
    "resolution-src6": f"Resolution sweep, target at r, source at 6 Å (SNR {RESOLUTION_SWEEP_SNR:g}, oracle contour)",
}

_MODELS: dict = {}


def _model(models_dir, name):
    if name not in _MODELS:
        st = read_model(os.path.join(models_dir, f"{name}.pdb.gz"))
        _MODELS[name] = (st, sim.model_mass_Da(st))
    return _MODELS[name]


def motion(seed, mol_index, repeat):
    rng = np.random.default_rng([seed, mol_index, repeat])
    return tf.make(tf.random_rotation(rng), rng.uniform(-MAX_TRANSLATION_A, MAX_TRANSLATION_A, 3))


def voxel_for(st, resolution):
    xyz = model_coordinates(st)
    box = np.ptp(xyz, axis=0) + 2 * PADDING_A
    voxel = max(resolution / 3.0, MIN_VOXEL_A)
    return max(voxel, float(np.prod(box) / MAX_BOX_VOXELS) ** (1 / 3) * 1.01)


def noisy_map(st, mass, resolution, snr, rng, noise_kind):
    """(noisy map, oracle contour = the clean map's contour_for level)."""
    clean = sim.simulate(st, resolution, voxel_A=voxel_for(st, resolution), padding_A=PADDING_A)
    level = sim.contour_for(clean, mass)
    if math.isinf(snr):
        return clean, level
    signal_var = float(clean.data[clean.data >= level].astype(float).var())
    noise = rng.standard_normal(clean.data.shape)
    if noise_kind == "band":
        noise = ndimage.gaussian_filter(
            noise, sim.SIGMA_PER_RESOLUTION * resolution / clean.voxel_size_A[0], mode="wrap"
        )
    noise *= math.sqrt(signal_var / snr) / noise.std()
    data = (clean.data + noise).astype(np.float32)
    return DensityMap(data=data, voxel_size_A=clean.voxel_size_A, origin_A=clean.origin_A), level


def warm_up(models_dir):
    """One small alignment so that imports and numba compilation are not timed."""
    st, mass = _model(models_dir, "3mfp") if os.path.exists(os.path.join(models_dir, "3mfp.pdb.gz")) else (None, 0)
    if st is None:
        return
    m = sim.simulate(st, 8.0, voxel_A=2.7)
    level = sim.contour_for(m, mass)
    cryoalign.align(m, m, source_contour=level, target_contour=level, mode="global")


def run_case(args):
    """One alignment. args: (sweep, x, molecule, mol_index, repeat, models_dir, seed, noise_kind)."""
    sweep, x, name, mi, rep, models_dir, seed, noise_kind = args
    st, mass = _model(models_dir, name)
    T = motion(seed, mi, rep)
    moved = transform_model(st, T)
    if sweep.startswith("noise"):
        snr, r_tgt, r_src = x, NOISE_RESOLUTION_A, NOISE_RESOLUTION_A
    else:
        snr, r_tgt = RESOLUTION_SWEEP_SNR, x
        r_src = FIXED_SOURCE_RESOLUTION_A if sweep == "resolution-src6" else x
    # the noise depends on the case and the condition, not on the contour policy
    if sweep.startswith("noise"):
        cond = SNRS.index(x)
    else:
        cond = 100 + RESOLUTIONS.index(x) + (50 if sweep == "resolution-src6" else 0)
    rng = np.random.default_rng([seed, mi, rep, cond])
    target, tc = noisy_map(st, mass, r_tgt, snr, rng, noise_kind)
    source, sc = noisy_map(moved, mass, r_src, snr, rng, noise_kind)
    if sweep.endswith("estimated"):
        sc, tc = pointcloud.estimate_contour(source), pointcloud.estimate_contour(target)
    ca = model_coordinates(moved, selection="ca")
    t0 = time.perf_counter()
    try:
        result = cryoalign.align(source, target, source_contour=sc, target_contour=tc, mode="global")
        rmsd, error = tf.rmsd(result.T_target_source, tf.invert(T), ca), ""
    except Exception as exc:  # an InputError (too few points, ...) is a failed alignment
        rmsd, error = math.inf, f"{type(exc).__name__}: {exc}"[:120]
    return dict(
        sweep=sweep,
        x=x,
        molecule=name,
        repeat=rep,
        rmsd=rmsd,
        time_s=time.perf_counter() - t0,
        error=error,
        voxel_src=float(source.voxel_size_A[0]),
        voxel_tgt=float(target.voxel_size_A[0]),
        box_tgt="x".join(map(str, target.data.shape[::-1])),
    )


def cases(molecules, repeats, models_dir, seed, noise_kind, snrs, resolutions):
    out = []
    for sweep in SWEEPS:
        xs = snrs if sweep.startswith("noise") else resolutions
        for x in xs:
            for mi, name in enumerate(molecules):
                for rep in range(repeats):
                    out.append(
                        (
                            sweep,
                            x,
                            name,
                            MOLECULES.index(name) if name in MOLECULES else 10 + mi,
                            rep,
                            models_dir,
                            seed,
                            noise_kind,
                        )
                    )
    # the costly ones (fine grids, big molecules) first, for load balance
    return sorted(out, key=lambda c: (c[0].startswith("noise"), -(1.0 / c[1] if c[0].startswith("res") else 0)))


def label(sweep, x):
    if sweep.startswith("noise"):
        return "no noise" if math.isinf(x) else f"SNR {x:g}"
    return f"{x:g} Å"


def summarise(rows, molecules):
    """{sweep: [(x, success rate, n_ok, n, median rmsd, median time, per-molecule string)]}"""
    out = {}
    for sweep in SWEEPS:
        sub = [r for r in rows if r["sweep"] == sweep]
        xs = sorted({r["x"] for r in sub}, key=lambda v: -v if sweep.startswith("noise") else v)
        table = []
        for x in xs:
            cell = [r for r in sub if r["x"] == x]
            ok = [r["rmsd"] < SUCCESS_A for r in cell]
            per_mol = " ".join(
                f"{sum(r['rmsd'] < SUCCESS_A for r in cell if r['molecule'] == m)}/"
                f"{sum(r['molecule'] == m for r in cell)}"
                for m in molecules
            )
            table.append(
                dict(
                    x=x,
                    rate=float(np.mean(ok)),
                    ok=int(sum(ok)),
                    n=len(cell),
                    median_rmsd=float(np.median([r["rmsd"] for r in cell])),
                    median_time=float(np.median([r["time_s"] for r in cell])),
                    errors=sum(bool(r["error"]) for r in cell),
                    per_molecule=per_mol,
                )
            )
        out[sweep] = table
    return out


def fmt_rmsd(v):
    return "fail (inf)" if math.isinf(v) else f"{v:.2f}" if v < 10 else f"{v:.0f}"


def markdown(summary, molecules):
    parts = []
    for sweep, title in SWEEPS.items():
        lines = [
            f"**{title}**",
            "",
            f"| condition | success (< {SUCCESS_A:g} Å) | median CA RMSD (Å) | median time (s) | "
            f"successes per molecule ({', '.join(molecules)}) |",
            "|---|---|---|---|---|",
        ]
        for c in summary[sweep]:
            err = f", {c['errors']} raised" if c["errors"] else ""
            lines.append(
                f"| {label(sweep, c['x'])} | {c['ok']}/{c['n']} ({100 * c['rate']:.0f}%{err}) | "
                f"{fmt_rmsd(c['median_rmsd'])} | {c['median_time']:.1f} | {c['per_molecule']} |"
            )
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def plot(summary, path, title_note=""):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    inf_x = 30.0  # where "no noise" is drawn on the SNR axis
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5), sharex="col")
    styles = {
        "noise-oracle": ("oracle contour", "C0", "o", "-"),
        "noise-estimated": ("estimated contour", "C1", "s", "--"),
        "resolution-same": ("both maps at r, oracle contour", "C2", "o", "-"),
        "resolution-same-estimated": ("both maps at r, estimated contour", "C1", "s", "--"),
        "resolution-src6": ("source at 6 Å, oracle contour", "C3", "^", ":"),
    }
    for sweep, table in summary.items():
        col = 0 if sweep.startswith("noise") else 1
        name, colour, marker, ls = styles[sweep]
        xs = np.array([inf_x if math.isinf(c["x"]) else c["x"] for c in table])
        rate = [100 * c["rate"] for c in table]
        med = np.array([c["median_rmsd"] for c in table])
        axes[0, col].plot(xs, rate, marker=marker, color=colour, ls=ls, label=name)
        shown = np.where(np.isfinite(med), med, FAIL_DRAWN_A)
        axes[1, col].plot(xs, shown, marker=marker, color=colour, ls=ls, label=name)
    for col in (0, 1):
        axes[0, col].set_ylabel(f"success rate (%, RMSD < {SUCCESS_A:g} Å)")
        axes[0, col].set_ylim(-5, 105)
        axes[1, col].set_ylabel(f"median CA RMSD (Å; none found: {FAIL_DRAWN_A:g})")
        axes[1, col].set_yscale("log")
        axes[1, col].axhline(SUCCESS_A, color="grey", ls="--", lw=1)
        axes[1, col].text(
            0.01, SUCCESS_A * 1.1, f"{SUCCESS_A:g} Å", color="grey", transform=axes[1, col].get_yaxis_transform()
        )
        for row in (0, 1):
            axes[row, col].grid(alpha=0.3)
            axes[row, col].legend(loc="best", fontsize=8)
    axes[0, 0].set_xscale("log")
    axes[0, 0].invert_xaxis()
    ticks = [inf_x, 10, 5, 2, 1, 0.5, 0.2, 0.1]
    axes[1, 0].set_xticks(ticks)
    axes[1, 0].set_xticklabels(["∞"] + [f"{t:g}" for t in ticks[1:]])
    axes[1, 0].minorticks_off()
    axes[1, 0].set_xlabel("SNR (signal variance in the mask / noise variance; 6 Å maps)")
    axes[1, 1].set_xlabel(f"resolution r (Å; SNR {RESOLUTION_SWEEP_SNR:g})")
    axes[0, 0].set_title("noise")
    axes[0, 1].set_title("resolution")
    fig.suptitle("cryoalign robustness on simulated maps" + title_note, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--models", default=os.path.join(ROOT, "..", "shared", "data", "models"), help="folder with <id>.pdb.gz models"
    )
    ap.add_argument("--molecules", default=",".join(MOLECULES))
    ap.add_argument("--repeats", type=int, default=3, help="random motions per molecule and condition")
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--workers", type=int, default=2, help="alignments run in parallel (one per core)")
    ap.add_argument("--noise", choices=("band", "white"), default="band")
    ap.add_argument("--png", default=os.path.join(HERE, "robustness.png"))
    ap.add_argument("--raw", default=None, help="also write one TSV line per alignment here")
    ap.add_argument("--quick", action="store_true", help="smoke test: 1 molecule, 1 motion, 3 conditions per sweep")
    a = ap.parse_args(argv)

    molecules = a.molecules.split(",")
    snrs, resolutions, repeats = SNRS, RESOLUTIONS, a.repeats
    if a.quick:
        molecules, snrs, resolutions, repeats = molecules[:1], (math.inf, 1.0, 0.1), (4.0, 10.0, 20.0), 1
    todo = cases(molecules, repeats, os.path.abspath(a.models), a.seed, a.noise, snrs, resolutions)
    print(
        f"{len(todo)} alignments: {len(molecules)} molecules x {repeats} motions; workers {a.workers}",
        file=sys.stderr,
        flush=True,
    )
    t0 = time.perf_counter()
    rows = []
    if a.workers > 1:
        with ProcessPoolExecutor(
            max_workers=a.workers, initializer=warm_up, initargs=(os.path.abspath(a.models),)
        ) as pool:
            for k, row in enumerate(pool.map(run_case, todo, chunksize=1), 1):
                rows.append(row)
                if k % 20 == 0:
                    print(f"  {k}/{len(todo)} done, {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    else:
        warm_up(os.path.abspath(a.models))
        rows = [run_case(c) for c in todo]
    wall = time.perf_counter() - t0
    summary = summarise(rows, molecules)
    print(markdown(summary, molecules))
    print(f"\n{len(rows)} alignments in {wall / 60:.1f} min wall ({a.workers} workers); seed {a.seed}; noise {a.noise}")
    failures = [r for r in rows if r["error"]]
    for r in failures[:10]:
        print(f"  raised: {r['sweep']} {label(r['sweep'], r['x'])} {r['molecule']} #{r['repeat']}: {r['error']}")
    if a.png:
        plot(summary, a.png, f" ({', '.join(molecules)}; {repeats} motions each; {a.noise} noise)")
        print(f"plot: {a.png}")
    if a.raw:
        keys = list(rows[0])
        with open(a.raw, "w") as fh:
            fh.write("\t".join(keys) + "\n")
            for r in rows:
                fh.write("\t".join(str(r[k]) for k in keys) + "\n")


if __name__ == "__main__":
    main()
