#!/usr/bin/env python3
"""Peak memory and time of aligning into a big map (default 1024^3 float32, 4 GiB).

    python benchmarks/bigmap.py [--size 1024] [--workdir DIR] [--keep]

Builds, without ever holding the whole map in memory, a SIZE^3 float32 MRC
(1 Å voxels, x,y,z order) that is empty except for a density simulated from
PDB 5NSR (examples/5nsr.pdb.gz, 6 Å) placed in the box, and a small source map
of the same model moved by a known rigid motion.  Then runs `cryoalign align
SOURCE BIG` (global) and `cryoalign align BIG SOURCE --global` (the big map as
the source) in fresh processes, sampling the process's resident memory
(psutil) every 50 ms, and prints a table: wall time, peak RSS, CA RMSD of the
answer.  Needs psutil (pip install -e .[bench]).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def build(workdir: str, size: int):
    import mrcfile

    import cryoalign
    from cryoalign import transform as tf
    from cryoalign.apps import simulate

    st = cryoalign.read_model(os.path.join(ROOT, "examples", "5nsr.pdb.gz"))
    sim = simulate.simulate(st, 6.0, voxel_A=1.0)
    contour = simulate.contour_for(sim, simulate.model_mass_Da(st))
    big = os.path.join(workdir, f"big_{size}.mrc")
    # place the simulated box at a fixed offset inside the big box (origin 0, 1 Å voxels)
    nz, ny, nx = sim.data.shape
    offset = (size - np.array([nx, ny, nz])) // np.array([3, 2, 4])  # x, y, z voxels
    assert np.all(offset + [nx, ny, nz] < size), "box too small for the molecule"
    with mrcfile.new_mmap(big, shape=(size, size, size), mrc_mode=2, overwrite=True) as m:
        m.voxel_size = 1.0
        for z in range(0, size, 64):  # zero in slabs
            m.data[z : z + 64] = 0.0
        m.data[offset[2] : offset[2] + nz, offset[1] : offset[1] + ny, offset[0] : offset[0] + nx] = sim.data
        m.header.origin.x = m.header.origin.y = m.header.origin.z = 0.0
        m.update_header_stats()
    # world position of the model in the big map: shifted so sim's origin lands at `offset`
    T_place = tf.make(np.eye(3), offset - sim.origin_A)
    rng = np.random.default_rng(7)
    T_move = tf.make(tf.random_rotation(rng), rng.uniform(-20.0, 20.0, 3))
    moved = cryoalign.transform_model(st, T_move)
    src = simulate.simulate(moved, 6.0, voxel_A=2.0)
    source = os.path.join(workdir, "source.mrc")
    cryoalign.write_map(src, source)
    ca = cryoalign.io.model_coordinates(moved, selection="ca")
    T_true = T_place @ tf.invert(T_move)  # source world -> big world
    return big, source, contour, simulate.contour_for(src, simulate.model_mass_Da(moved)), T_true, ca


def run(argv, out_json):
    import psutil

    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    ps = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        try:
            peak = max(peak, ps.memory_info().rss)
        except psutil.Error:
            pass
        time.sleep(0.05)
    err = proc.stderr.read()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}):\n{err}")
    return wall, peak / 2**20, json.load(open(out_json))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--keep", action="store_true", help="keep the generated maps")
    a = ap.parse_args(argv)
    from cryoalign import transform as tf

    work = a.workdir or tempfile.mkdtemp(prefix="cryoalign-bigmap-")
    os.makedirs(work, exist_ok=True)
    try:
        t = time.perf_counter()
        big, source, big_contour, src_contour, T_true, ca = build(work, a.size)
        print(
            f"built {big} ({os.path.getsize(big) / 2**30:.2f} GiB) in {time.perf_counter() - t:.0f} s", file=sys.stderr
        )
        exe = shutil.which("cryoalign") or f"{sys.executable} -m cryoalign"
        rows = []
        out = os.path.join(work, "r.json")
        cases = [
            ("source -> big", [source, big, "--source-contour", src_contour, "--target-contour", big_contour], T_true),
            (
                "big -> source",
                [big, source, "--source-contour", big_contour, "--target-contour", src_contour, "--global"],
                tf.invert(T_true),
            ),
        ]
        for name, args, T_ref in cases:
            cmd = exe.split() + ["align"] + [str(x) for x in args] + ["--json", out, "--quiet"]
            wall, peak, doc = run(cmd, out)
            M = np.array(doc["matrix"])
            pts = ca if name.startswith("source") else tf.apply(T_true, ca)
            rows.append((name, wall, peak, tf.rmsd(M, T_ref, pts), doc["params"]["mode"]))
            print(f"{name}: {wall:.1f} s, peak {peak:.0f} MiB", file=sys.stderr)
        print(
            f"| case ({a.size}^3 float32 map, {os.path.getsize(big) / 2**30:.1f} GiB) | mode | wall (s) "
            "| peak RSS (MiB) | CA RMSD (Å) |"
        )
        print("|---|---|---|---|---|")
        for name, wall, peak, rms, mode in rows:
            print(f"| {name} | {mode} | {wall:.1f} | {peak:.0f} | {rms:.2f} |")
    finally:
        if not a.keep and not a.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
