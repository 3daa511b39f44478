#!/usr/bin/env python
"""Fuzz cryoalign's input handling: many broken (and some valid) inputs through the real code.

    python benchmarks/fuzz.py --cases 10000 --seed 1 --jobs 2 --out /tmp/cryoalign-fuzz
    python benchmarks/fuzz.py --seed 1 --case 4711          # replay one case, keep its files

The code lives in benchmarks/fuzzing/ (generators.py: the cases; harness.py: running and
classifying them; report.py: the tables); this file is the command line.

Every case is generated deterministically from (--seed, case index): a mutation family
(header fields, voxel data, gzip stream, random bytes, text, paths, contour options,
--source-model files, output locations, other options; odd maps: 2D/thin, stacks, cell
angles, outlier voxels, overflow-scale values, bzip2/xz; concurrent runs into one --out-dir) applied to the small real maps
and models of tests/data.  Each case runs in a worker process, in-process through

  1. the library:  ``cryoalign.read_map(path)`` on the map under test must return a valid
     DensityMap (3D finite float data, positive finite voxel sizes, finite origin) or raise
     ``cryoalign.InputError``; anything else is a crash;
  2. the CLI:      ``cryoalign.cli.main(["align", ...])``.  Most cases ("check" mode) run the
     CLI's validation path: the other map gets a contour above its maximum (1e30), so the
     run stops with a clean error right after reading both maps and checking the contour
     of the map under test, and the expected outcome is exit 2.  A fraction (--full,
     default 6%) runs a whole alignment of small maps (mostly with --voxel 8, a few at the
     default sampling) and may end in exit 0 or exit 2.

Outcome of a case (the first that applies):
  hang            the case exceeded --timeout seconds (soft alarm, or killed 25 s later)
  crash           exit 1 / a traceback / an exception other than InputError from read_map /
                  any other exit code / the worker process died
  input modified  an input file changed, vanished or was replaced
  partial output  after a failed run: a new or changed file or folder anywhere in the case
                  folder (an output, an output folder, a temp file); after a success: temp
                  files (.tmp-*) left behind
  accepted bad map  a map that must be refused (2D/thin, skewed cell, bulk overflow, ...) was
                  read by read_map, or the CLI exited 0 or exited 2 for another reason
  bad message     exit 2 but not exactly one 'cryoalign: error: ' line as the last stderr
                  line, something on stdout, a library parameter name instead of its flag;
                  or a Python/numpy warning that would reach the terminal
  bad result      exit 0 but no JSON, or its "matrix" is not a finite rigid 4x4, or an
                  --out-dir that does not hold exactly the files of one complete run
  refused good map  read_map refused a map that must be accepted (outlier voxels, bz2/xz, ...)
  ok              exit 0 with a valid finite 4x4 "matrix"
  clean error     exit 2, one 'cryoalign: error: ...' line, no traceback, nothing written,
                  inputs unchanged

Writes to --out: summary.md (the tables), failures.tsv (one row per failing case with the
reproduction: seed, case index, family, mutation, argv), cases.tsv (every case), and
failures/case-N/ (the inputs of the first failing cases of each signature).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))  # benchmarks/: the fuzzing package

from fuzzing.generators import FAMILY_WEIGHTS  # noqa: E402
from fuzzing.harness import FAILURES, _rmtree, replay, run_pool  # noqa: E402
from fuzzing.report import write_reports  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--cases", type=int, default=10000, help="number of cases (default 10000)")
    p.add_argument("--seed", type=int, default=1, help="seed of the case generator (default 1)")
    p.add_argument("--start", type=int, default=0, help="index of the first case (default 0)")
    p.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        help="seconds per case before it counts as a hang (default 60; a full alignment of "
        "these small maps takes 0.3-20 s)",
    )
    p.add_argument(
        "--full-timeout",
        type=float,
        default=150.0,
        help="seconds for a case that runs a whole alignment (default 150: a small map placed "
        "locally into a large one may run the exhaustive scan, 35-40 s on a quiet machine "
        "and over 60 s with both cores busy)",
    )
    p.add_argument("--out", default=os.path.join("/tmp", "cryoalign-fuzz"), help="scratch and report folder")
    p.add_argument("--jobs", type=int, default=2, help="worker processes (default 2)")
    p.add_argument(
        "--full", type=float, default=0.06, help="fraction of cases that run a whole alignment (default 0.06)"
    )
    p.add_argument("--families", default=None, help=f"comma-separated subset of {','.join(FAMILY_WEIGHTS)}")
    p.add_argument(
        "--mem-gb",
        type=float,
        default=4.0,
        help="address-space limit per worker in GB, so that runaway allocations fail with "
        "MemoryError instead of exhausting the machine (0: none; default 4)",
    )
    p.add_argument("--keep", type=int, default=3, help="failing cases kept per signature in OUT/failures")
    p.add_argument(
        "--case",
        type=int,
        nargs="+",
        default=None,
        help="replay these case indices in-process (prints the details, keeps the files)",
    )
    args = p.parse_args(argv)
    families = args.families.split(",") if args.families else None
    if families and set(families) - set(FAMILY_WEIGHTS):
        p.error(f"unknown families {sorted(set(families) - set(FAMILY_WEIGHTS))}")
    opts = dict(
        seed=args.seed,
        timeout=args.timeout,
        full_timeout=args.full_timeout,
        out=os.path.abspath(args.out),
        jobs=max(1, args.jobs),
        p_full=args.full,
        families=families,
        mem_gb=args.mem_gb,
        keep=args.keep,
    )
    os.makedirs(opts["out"], exist_ok=True)
    if args.case is not None:
        replay(opts, args.case)
        return 0
    if (pathlib.Path(opts["out"]) / "failures").exists():
        _rmtree(pathlib.Path(opts["out"]) / "failures")
    t0 = time.time()
    results = run_pool(opts, list(range(args.start, args.start + args.cases)))
    wall = time.time() - t0
    text = write_reports(results, wall, opts)
    print()
    print(text)
    print(f"wrote {opts['out']}/summary.md, failures.tsv, cases.tsv")
    return 1 if any(r["outcome"] in FAILURES for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
