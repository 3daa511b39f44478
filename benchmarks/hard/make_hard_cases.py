#!/usr/bin/env python3
"""Deterministic generator of the HARD benchmark sets (reads only ../shared/data).

    python benchmarks/hard/make_hard_cases.py --out CASES_DIR [--only hard-states,...] [--seed 20261124]
        [--data /work/shared/data]

Writes <out>/<set>/<case_id>/{source.mrc,target.mrc,source_model.pdb,case.json} in exactly the
format of ../shared/bench/make_cases.py, so ../shared/bench/evaluate.py scores them unchanged:
every map has NSTART = 0, axes x, y, z, world position of voxel (0,0,0) in ORIGIN; T_gt maps the
source map's world frame onto the target's; alt_T_gt lists symmetry-equivalent right answers.

Sets (see benchmarks/hard/README.md):
  hard-states     a rigid group of chains moved about a hinge between source and target state
                  (overlap of the source at the true pose 50-70 %), plus the real 5nss -> 5nsr pair
  hard-partial    source and target each lack a different group of subunits
  hard-pseudosym  C3 trimers of one chain whose copies differ by a few % of residues
                  (alt_T_gt empty; the 3-fold poses are recorded as pseudo_T)
  hard-resgap     3.5 A vs 10 A maps of related states, and maps resampled on 5 A grids
  hard-noise      band-limited noise at SNR 0.5-1 inside the molecule, and dust blobs
  hard-chain      single chains (100-300 residues) into 6-10 A simulated complexes, complexes on
                  5 A grids, and real 5 A EMDB grids (local mode)
Every case is seeded by (seed, crc32(set/case)), so the output is the same on every run.
Besides the make_cases.py fields each case.json records `overlap_at_gt` (fraction of the
source's above-contour volume inside the target's contour after T_gt), `overlap_at_gt_clean`
(same on the noise-free maps) and what was done to make it (`hard` dict).
"""

import argparse
import gzip
import io
import json
import os
import zlib

import gemmi
import mrcfile
import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_DATA = os.path.normpath(os.path.join(HERE, "..", "..", "..", "shared", "data"))
INP = DEFAULT_DATA
NOISE_TAPER = 8.0  # A, as make_cases.py
MAXDIM = 150  # box edge cap (voxels) for simulated maps
VOL_PER_DA = 1.21 * 1.08  # A^3 per Da of heavy-atom mass (+8 % for H), as make_cases.py
CHAIN_COPY_RMSD = 4.0  # hard-chain: a copy with the same sequence within this CA RMSD is an equivalent answer
# (make_cases.py uses 2 A; the 5nss / 5nsr copies differ by 3.5-4 A in conformation)

# local (--local) or global (--global) alignment per set; read by benchmarks/run_benchmark.py
MODES = {
    "hard-states": "global",
    "hard-partial": "global",
    "hard-pseudosym": "global",
    "hard-resgap": "global",
    "hard-noise": "global",
    "hard-chain": "local",
}

# ---------------------------------------------------------------- case lists
# states: (model, source res, target res); moved group 36-45 % of the CA, swung until the overlap at the
# true pose (3 A test maps) is under a per-case level drawn from U(0.50, 0.62)
STATES = [
    ("5fkv", 3.5, 6.5),
    ("5fwm", 5.0, 5.0),
    ("5m1s", 6.5, 4.0),
    ("5u8t", 4.0, 8.0),
    ("5nsr", 8.0, 5.0),
    ("5fkw", 5.0, 10.0),
    ("5u8s", 6.0, 6.0),
    ("5nss", 5.0, 8.0),
]
# bigger moved groups (41-46 % of the CA: the fixed part is only 54-59 %)
STATES_BIG = [("5u8t", 5.0, 6.5), ("5nsr", 6.5, 5.0), ("5m1s", 4.0, 8.0)]
STATES_REAL = [("3696-3695", 6.5, 8.0)]  # 5nss (more subunits) -> 5nsr, MM-align GT
PARTIAL = [
    ("5u8t", 5.0, 6.5),
    ("5nss", 6.5, 5.0),
    ("5fkv", 4.0, 8.0),
    ("5fwm", 8.0, 4.0),
    ("5m1s", 5.0, 5.0),
    ("5u8s", 10.0, 6.5),
]
# pseudosym: (model, chain, source res, target res, deleted fraction range in copies B and C, fraction of
# copy C's residues truncated to Ala)
PSEUDO = [
    ("3mfp", "A", 5.0, 6.5, (0.03, 0.06), 0.04),
    ("3mfp", "A", 8.0, 10.0, (0.015, 0.03), 0.0),
    ("3j6b_9", "9", 4.0, 6.0, (0.03, 0.06), 0.04),
    ("5fkv", "B", 10.0, 8.0, (0.015, 0.03), 0.0),
    ("5fwm", "E", 3.5, 8.0, (0.03, 0.06), 0.04),
    ("5u8s", "D", 6.0, 6.0, (0.03, 0.06), 0.04),
    ("5u8t", "A", 10.0, 10.0, (0.015, 0.03), 0.02),
    ("5nss", "F", 8.0, 6.5, (0.015, 0.03), 0.0),
]
# resgap: (gt pair, source res, target res, source on 5 A grid, target on 5 A grid)
RESGAP = [
    ("8518-8519", 3.5, 10.0, False, False),
    ("3342-3340", 10.0, 3.5, False, False),
    ("3202-3198", 3.5, 10.0, False, False),
    ("4141-3202", 10.0, 3.5, False, False),
    ("3696-3695", 3.5, 6.0, True, True),
    ("8518-8519", 3.5, 10.0, True, False),
    ("3342-3340", 10.0, 4.0, False, True),
    ("3695-3696", 3.5, 10.0, False, False),
    ("3696-3695", 10.0, 3.5, True, False),
    ("4141-3198", 3.5, 10.0, True, True),
]
# noise: (gt pair or model, source res, target res, source noise, target noise)
#   noise spec: None (mild, as make_cases) | dict(snr=S, dust=F): band-limited noise at SNR S inside the
#   molecule and/or dust blobs whose above-contour volume is F x the molecular volume
NOISE = [
    ("5fwm", 6.0, 6.0, dict(snr=0.5), dict(snr=0.5)),
    ("5u8t", 4.0, 8.0, None, dict(snr=0.7)),
    ("5m1s", 8.0, 5.0, dict(snr=1.0), None),
    ("5nsr", 5.0, 5.0, None, dict(dust=0.10)),
    ("5fkv", 6.5, 10.0, dict(snr=1.0, dust=0.06), dict(snr=1.0, dust=0.06)),
    ("8518-8519", 5.0, 6.5, dict(snr=0.7, dust=0.05), dict(snr=0.7, dust=0.05)),
    ("5fkw", 10.0, 10.0, dict(snr=0.5, dust=0.10), dict(snr=0.5, dust=0.10)),
    ("3696-3695", 6.0, 8.0, dict(snr=0.5), dict(snr=0.5)),
    ("5u8s", 8.0, 5.0, dict(snr=0.5, dust=0.10, grid5=True), dict(snr=0.7, grid5=True)),
]
# chain: (model, chain, source res, target: ("sim", res, on_5A_grid, model) | ("real", map file, model));
# when the target's model is another state, GT = superposition of the chain onto its namesake there
CHAIN = [
    ("5nss", "F", 4.0, ("sim", 8.0, False)),
    ("5u8t", "C", 3.5, ("sim", 10.0, False)),
    ("5fkv", "E", 5.0, ("sim", 6.0, False)),
    ("5fwm", "E", 6.0, ("sim", 6.5, True)),
    ("5m1s", "D", 4.0, ("sim", 7.0, True)),
    ("5nsr", "A", 4.0, ("real", "emd_3695_5A.mrc")),
    ("5u8s", "D", 5.0, ("real", "emd_8518_5A.mrc")),
    ("5fkv", "E", 10.0, ("sim", 10.0, True)),
    ("5u8s", "C", 6.0, ("sim", 8.0, False, "5u8t")),
    ("5fwm", "K", 5.0, ("sim", 8.0, False, "5fwp")),
    ("5nsr", "B", 6.0, ("real", "emd_3696_5A.mrc", "5nss")),
]


# ---------------------------------------------------------------- helpers (as make_cases.py)
def read_gt():
    gt = {}
    for line in open(f"{INP}/gt.tsv").read().splitlines()[1:]:
        c = line.split("\t")
        T = np.eye(4)
        T[:3, :] = np.array(c[4].split(), float).reshape(3, 4)
        gt[c[0][4:] + "-" + c[1][4:]] = dict(T=T, smodel=c[2], tmodel=c[3], note=c[5])
    return gt


def load_model(name, chains=None):
    st = gemmi.read_structure(f"{INP}/models/{name}.pdb.gz")
    st.remove_hydrogens()
    st.remove_waters()
    if chains is not None:
        for ch in list(st[0]):
            if ch.name not in chains:
                st[0].remove_chain(ch.name)
    st.remove_empty_chains()
    return st


def atoms(st):
    xyz, w = [], []
    for ch in st[0]:
        for r in ch:
            for a in r:
                xyz.append([a.pos.x, a.pos.y, a.pos.z])
                w.append(a.element.atomic_number)
    return np.array(xyz), np.array(w, float)


def mass(st):
    return sum(a.element.weight for ch in st[0] for r in ch for a in r)


def chain_ca(st):
    out = {}
    for ch in st[0]:
        d = {}
        for r in ch:
            a = r.find_atom("CA", "*") or r.find_atom("P", "*")
            if a is not None:
                d[(r.seqid.num, r.seqid.icode)] = (r.name, np.array([a.pos.x, a.pos.y, a.pos.z]))
        if len(d) >= 10:
            out[ch.name] = d
    return out


def all_ca(st):
    return np.array([v[1] for d in chain_ca(st).values() for v in d.values()])


def transform_st(st, T):
    st = st.clone()
    tr = gemmi.Transform(gemmi.Mat33(T[:3, :3].tolist()), gemmi.Vec3(*T[:3, 3]))
    st[0].transform_pos_and_adp(tr)
    return st


def transform_chains(st, T, names):
    """Copy of st with only chains `names` moved by T."""
    st = st.clone()
    for ch in st[0]:
        if ch.name not in names:
            continue
        for r in ch:
            for a in r:
                p = T[:3, :3] @ np.array([a.pos.x, a.pos.y, a.pos.z]) + T[:3, 3]
                a.pos = gemmi.Position(*p)
    return st


def kabsch(A, B):
    ca, cb = A.mean(0), B.mean(0)
    H = (A - ca).T @ (B - cb)
    U, S, Vt = np.linalg.svd(H)
    d = np.sign(np.linalg.det(Vt.T @ U.T))
    R = Vt.T @ np.diag([1, 1, d]) @ U.T
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = cb - R @ ca
    return T


def apply(T, X):
    return X @ T[:3, :3].T + T[:3, 3]


def chain_ops(cc, a, max_rmsd=2.0):
    """Superpositions of chain a onto every other chain with (nearly) the same sequence (CA RMSD < max_rmsd)."""
    ops = []
    for b, db in cc.items():
        if b == a:
            continue
        keys = [k for k in cc[a] if k in db and cc[a][k][0] == db[k][0]]
        if len(keys) < 0.8 * min(len(cc[a]), len(db)) or len(keys) < 10:
            continue
        A = np.array([cc[a][k][1] for k in keys])
        B = np.array([db[k][1] for k in keys])
        T = kabsch(A, B)
        if np.sqrt(((apply(T, A) - B) ** 2).sum(1).mean()) < max_rmsd:
            ops.append((b, T))
    return ops


def copy_rmsds(cc, a):
    """CA RMSD after superposition of chain a onto each chain with the same sequence."""
    out = {}
    for b, T in chain_ops(cc, a, max_rmsd=1e9):
        keys = [k for k in cc[a] if k in cc[b] and cc[a][k][0] == cc[b][k][0]]
        A = np.array([cc[a][k][1] for k in keys])
        B = np.array([cc[b][k][1] for k in keys])
        out[b] = round(float(np.sqrt(((apply(T, A) - B) ** 2).sum(1).mean())), 2)
    return out


def self_sym_ops(st, strict=0.95, loose=0.80, tol=6.0):
    cc = chain_ca(st)
    X = all_ca(st)
    tree = cKDTree(X)
    found, fr = [], []
    for a in cc:
        for _b, T in chain_ops(cc, a):
            if np.sqrt(((apply(T, X) - X) ** 2).sum(1).mean()) < 1.0:
                continue
            d, _ = tree.query(apply(T, X))
            f = (d < tol).mean()
            if f < loose:
                continue
            if any(np.sqrt(((apply(T, X) - apply(S, X)) ** 2).sum(1).mean()) < 2.0 for S in found):
                continue
            found.append(T)
            fr.append(f)
    return [T for T, f in zip(found, fr) if f >= strict], [T for T, f in zip(found, fr) if f < strict]


def rand_motion(rng, center, tmax=30.0):
    R = Rotation.random(random_state=int(rng.integers(1 << 31))).as_matrix()
    t = rng.uniform(-tmax, tmax, 3)
    M = np.eye(4)
    M[:3, :3] = R
    M[:3, 3] = center + t - R @ center
    return M


def write_map(path, data_zyx, vox, origin):
    with mrcfile.new(path, overwrite=True) as m:
        m.set_data(np.ascontiguousarray(data_zyx, dtype=np.float32))
        m.voxel_size = float(vox)
        m.header.origin.x, m.header.origin.y, m.header.origin.z = [float(v) for v in origin]
        m.header.nxstart = m.header.nystart = m.header.nzstart = 0
        m.update_header_stats()
        m.header.label[0] = b"cryoalign hard benchmark (make_hard_cases.py)".ljust(
            80
        )  # no time stamp: byte-identical reruns
        m.header.nlabl = 1


def read_map(name):
    with gzip.open(f"{INP}/maps/{name}.gz", "rb") as f:
        m = mrcfile.mrcinterpreter.MrcInterpreter(io.BytesIO(f.read()), permissive=True)
    h = m.header
    assert (int(h.mapc), int(h.mapr), int(h.maps)) == (1, 2, 3), name
    vox = float(m.voxel_size.x)
    org = np.array([h.origin.x, h.origin.y, h.origin.z], float)
    nst = np.array([h.nxstart, h.nystart, h.nzstart], float)
    if not org.any() and nst.any():
        org = nst * vox
    return np.asarray(m.data, np.float32).copy(), vox, org


def simulate(xyz, w, res, vox, origin, shape_xyz):
    """molmap-like: trilinear splat of atomic numbers, Gaussian sigma = 0.225*res (as make_cases.py)."""
    nx, ny, nz = shape_xyz
    f = (xyz - origin) / vox
    i0 = np.floor(f).astype(int)
    fr = f - i0
    grid = np.zeros(nx * ny * nz)
    for dx in (0, 1):
        for dy in (0, 1):
            for dz in (0, 1):
                ix, iy, iz = i0[:, 0] + dx, i0[:, 1] + dy, i0[:, 2] + dz
                ww = (
                    w
                    * np.where(dx, fr[:, 0], 1 - fr[:, 0])
                    * np.where(dy, fr[:, 1], 1 - fr[:, 1])
                    * np.where(dz, fr[:, 2], 1 - fr[:, 2])
                )
                ok = (ix >= 0) & (ix < nx) & (iy >= 0) & (iy < ny) & (iz >= 0) & (iz < nz)
                grid += np.bincount((iz[ok] * ny + iy[ok]) * nx + ix[ok], ww[ok], nx * ny * nz)
    grid = grid.reshape(nz, ny, nx)
    return ndimage.gaussian_filter(grid, 0.225 * res / vox, mode="constant", truncate=3.0)


def volume_contour(data, vox, vol):
    n = int(min(vol / vox**3, data.size - 1))
    return float(np.sort(data.ravel())[::-1][n])


def small_contour(data):
    nz = data[data > 0]
    return float(round(0.5 * np.percentile(nz, 1), 6))


def model_map_check(st, data, vox, org, contour):
    X = all_ca(st)
    f = np.round((X - org) / vox).astype(int)
    ok = (f >= 0).all(1) & (f < np.array(data.shape[::-1])).all(1)
    v = np.zeros(len(X))
    v[ok] = data[f[ok, 2], f[ok, 1], f[ok, 0]]
    return float(round((v >= contour).mean(), 3))


def write_case(d, case):
    case["T_gt"] = np.asarray(case["T_gt"]).round(6).tolist()
    case["alt_T_gt"] = [np.asarray(T).round(6).tolist() for T in case.get("alt_T_gt", [])]
    json.dump(case, open(f"{d}/case.json", "w"), indent=1)


# ---------------------------------------------------------------- new helpers
def taper(noise, vox):
    for ax in range(3):
        n = noise.shape[ax]
        k = np.arange(n) * vox
        dist = np.minimum(k, (n - 1) * vox - k)
        tp = np.clip(dist / NOISE_TAPER, 0, 1)
        tp = 0.5 - 0.5 * np.cos(np.pi * tp)
        shp = [1, 1, 1]
        shp[ax] = n
        noise = noise * tp.reshape(shp)
    return noise


def sample_grid(data, vox, org, vox_new, org_new, shape_new_xyz, order=1):
    """Values of a map at the points of another grid (trilinear; 0 outside)."""
    axes = [np.arange(n) * vox_new + org_new[i] for i, n in enumerate(shape_new_xyz)]
    zz, yy, xx = np.meshgrid(
        (axes[2] - org[2]) / vox, (axes[1] - org[1]) / vox, (axes[0] - org[0]) / vox, indexing="ij"
    )
    return ndimage.map_coordinates(data, [zz, yy, xx], order=order, cval=0.0)


def sim_map(rng, st, res, path, noise=None, vox_range=(1.5, 3.0), grid5=False, pad_extra=0.0):
    """Simulate `st` at `res` (voxel 1.5-3 A, box <= MAXDIM^3), contour from the model mass on the clean map
    (as make_cases.py), then noise: None -> mild make_cases-like noise (0.10-0.25 x contour, 1-voxel
    correlation); dict(snr=s) -> noise low-passed by the map's own Gaussian, variance = var(signal above
    contour) / s; dict(dust=F) -> Gaussian blobs (sigma 2-4.5 A, peak 1.3-3 x contour) centred > 10 A
    from every atom, added until their above-contour volume is F x the molecular volume. grid5: simulate at ~1.25 A, then sample (trilinear) on a 5 A grid; contour from the
    mass on the resampled clean map. Returns (info, data, clean, vox, origin)."""
    noise = noise or {}
    xyz, w = atoms(st)
    pad_base = 3 * 0.225 * res + 8.0 + pad_extra + (12.0 if noise.get("dust") else 0.0)
    lo = xyz.min(0) - pad_base - rng.uniform(0, 10, 3)
    hi = xyz.max(0) + pad_base + rng.uniform(0, 10, 3)
    if grid5:
        vox = max(1.25, (hi - lo).max() / 300)
    else:
        vox = max(float(rng.uniform(*vox_range)), (hi - lo).max() / MAXDIM)
    vox = round(vox, 3)
    shape = np.ceil((hi - lo) / vox).astype(int)
    clean = simulate(xyz, w, res, vox, lo, shape)
    vol = VOL_PER_DA * mass(st)
    contour = volume_contour(clean, vox, vol)
    info = dict(resolution=res)
    sig = clean[clean >= contour]
    if "snr" in noise:
        nz = ndimage.gaussian_filter(rng.standard_normal(clean.shape), 0.225 * res / vox)
        nz *= np.sqrt(sig.var() / noise["snr"]) / nz.std()
        info.update(noise="band-limited (same Gaussian as the map)", snr_target=noise["snr"])
    else:
        f = float(rng.uniform(0.10, 0.25))
        nz = ndimage.gaussian_filter(rng.standard_normal(clean.shape), 1.0)
        nz *= f * contour / nz.std()
        info.update(noise="mild (as make_cases.py)", noise_std_over_contour=round(f, 3))
    nz = taper(nz, vox)
    mask = clean >= contour
    if "snr" in noise:  # the SNR is set inside the molecule (the taper only touches the box faces)
        nz *= np.sqrt(sig.var() / noise["snr"]) / nz[mask].std()
    info["snr_in_mask"] = round(float(sig.var() / nz[mask].var()), 3)
    data = clean + nz
    if noise.get("dust"):  # blobs until their above-contour volume reaches dust x the molecular volume
        tree = cKDTree(xyz)
        dust = np.zeros_like(clean)
        placed = 0
        tries = 0
        ext = shape * vox
        while (dust >= contour).sum() * vox**3 < noise["dust"] * vol and tries < 5000:
            tries += 1
            c = lo + 10.0 + rng.uniform(0, 1, 3) * (ext - 20.0)
            if tree.query(c)[0] < 10.0:
                continue
            s = float(rng.uniform(2.0, 4.5))
            h = float(rng.uniform(1.3, 3.0)) * contour
            r = int(np.ceil(3 * s / vox))
            ci = np.round((c - lo) / vox).astype(int)
            sl = tuple(slice(max(ci[k] - r, 0), min(ci[k] + r + 1, shape[k])) for k in (2, 1, 0))
            zz, yy, xx = np.meshgrid(*[np.arange(s_.start, s_.stop) for s_ in sl], indexing="ij")
            d2 = (xx * vox + lo[0] - c[0]) ** 2 + (yy * vox + lo[1] - c[1]) ** 2 + (zz * vox + lo[2] - c[2]) ** 2
            dust[sl] += h * np.exp(-d2 / (2 * s * s))
            placed += 1
        data = data + dust
        info.update(
            dust_blobs=placed, dust_volume_over_molecule=round(float((dust >= contour).sum() * vox**3 / vol), 3)
        )
    if grid5:
        v5 = 5.0
        sh5 = np.floor((shape - 1) * vox / v5).astype(int) + 1
        clean = sample_grid(clean, vox, lo, v5, lo, sh5)
        data = sample_grid(data, vox, lo, v5, lo, sh5)
        info["grid"] = "simulated at %.2f A voxels, sampled (trilinear) on a 5 A grid" % (vox,)
        vox = v5
        shape = sh5
        contour = volume_contour(clean, vox, vol)
    outside = clean < 0.05 * contour
    info.update(
        contour=round(contour, 6),
        vox=vox,
        origin=lo.round(3).tolist(),
        shape=shape.tolist(),
        frac_background_above_contour=round(float((data[outside] >= contour).mean()), 4),
        volume_above_contour_over_molecule=round(float((data >= contour).sum() * vox**3 / vol), 3),
    )
    write_map(path, data, vox, lo)
    return info, data, clean, vox, lo


def overlap(sdat, svox, sorg, sc, tdat, tvox, torg, tc, T):
    """Fraction of the source's above-contour volume that lies inside the target's contour after T."""
    idx = np.argwhere(sdat >= sc)[:, ::-1]
    if len(idx) == 0:
        return float("nan")
    X = apply(T, idx * svox + sorg)
    f = (X - torg) / tvox
    v = ndimage.map_coordinates(tdat, [f[:, 2], f[:, 1], f[:, 0]], order=1, cval=0.0)
    return round(float((v >= tc).mean()), 4)


def contiguous_group(rng, cc, lo_frac, hi_frac, exclude=(), max_chain_frac=None):
    """A spatially contiguous group of chains holding lo_frac..hi_frac of the CA (grown from a random seed
    chain by nearest centroid). Returns (chains, fraction)."""
    names = sorted(cc)
    n_all = sum(len(v) for v in cc.values())
    cen = {c: np.array([v[1] for v in cc[c].values()]).mean(0) for c in names}
    cap = max_chain_frac or hi_frac
    best = None
    order = list(
        rng.permutation(
            [c for c in names if c not in exclude and len(cc[c]) <= cap * n_all]
            or [c for c in names if c not in exclude]
        )
    )
    for seed in order:
        goal = rng.uniform(lo_frac, hi_frac) * n_all
        sub = [seed]
        n = len(cc[seed])
        rest = sorted(
            (c for c in names if c != seed and c not in exclude), key=lambda c: np.linalg.norm(cen[c] - cen[seed])
        )
        for c in rest:
            if n >= lo_frac * n_all and n + len(cc[c]) > goal:
                break
            if n + len(cc[c]) > hi_frac * n_all:
                continue
            sub.append(c)
            n += len(cc[c])
        fr = n / n_all
        if lo_frac <= fr <= hi_frac:
            return sorted(sub), fr
        if best is None or abs(fr - (lo_frac + hi_frac) / 2) < abs(best[1] - (lo_frac + hi_frac) / 2):
            best = (sorted(sub), fr)
    return best


def rot_about(axis, angle_deg, point):
    R = Rotation.from_rotvec(np.radians(angle_deg) * axis / np.linalg.norm(axis)).as_matrix()
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = point - R @ point
    return T


def rand_unit(rng):
    v = rng.standard_normal(3)
    return v / np.linalg.norm(v)


def finish(case, d, si, sd, sv, so, ti, td, tv, to, sclean=None, tclean=None):
    T = np.asarray(case["T_gt"])
    case["overlap_at_gt"] = overlap(sd, sv, so, si["contour"], td, tv, to, ti["contour"], T)
    if sclean is not None:
        case["overlap_at_gt_clean"] = overlap(sclean, sv, so, si["contour"], tclean, tv, to, ti["contour"], T)
    return case


# ---------------------------------------------------------------- case builders
def global_case(si, ti, rs, rt, T, sym, pseudo, *, molecules, hard, notes):
    """The record of a global pair: the ground truth T, the answers equivalent to it under
    the target's symmetry operators `sym`, the near-equivalent ones under `pseudo`."""
    return dict(
        kind="global",
        source_contour=si["contour"],
        target_contour=ti["contour"],
        source_resolution=rs,
        target_resolution=rt,
        T_gt=T,
        alt_T_gt=[S @ T for S in sym],
        pseudo_alt_T_gt=[(S @ T).round(4).tolist() for S in pseudo],
        molecules=molecules,
        hard=hard,
        notes=notes,
        source_info=si,
        target_info=ti,
    )


def case_states(rng, d, model, rs, rt, frac_range=(0.36, 0.45)):
    full = load_model(model)
    cc = chain_ca(full)
    X = all_ca(full)
    M = rand_motion(rng, X.mean(0))
    src_m = transform_st(full, M)
    si, sd, sc_, sv, so = sim_map(rng, src_m, rs, f"{d}/source.mrc")
    grp, frac = contiguous_group(rng, cc, *frac_range, max_chain_frac=frac_range[1])
    ov_max = max(float(rng.uniform(0.50, 0.62)), 1.02 - frac)  # cannot go much below 1 - moved fraction
    G = np.array([v[1] for c in grp for v in cc[c].values()])
    R_ = np.array([v[1] for c in cc if c not in grp for v in cc[c].values()])
    dg, _ = cKDTree(R_).query(G)
    hinge = G[dg < 8.0].mean(0) if (dg < 8.0).any() else G[np.argmin(dg)]
    arm = G.mean(0) - hinge
    arm /= np.linalg.norm(arm) + 1e-9
    axis = np.cross(arm, rand_unit(rng))
    axis /= np.linalg.norm(axis)  # swing the group sideways
    # smallest swing (deg, from 15 on) whose overlap at the true pose is <= ov_max (measured on 3 A test maps)
    xs, ws = atoms(full)
    ingrp = np.array([ch.name in grp for ch in full[0] for r in ch for a in r])
    lo = xs.min(0) - 40
    sh = np.ceil((xs.max(0) - lo + 40) / 3.0).astype(int)
    base = simulate(xs, ws, rs, 3.0, lo, sh)
    vol = VOL_PER_DA * mass(full)
    c0 = volume_contour(base, 3.0, vol)
    chosen = None
    steps = [(ang, 0.0) for ang in range(15, 91, 5)] + [(90, sh_) for sh_ in np.arange(2.0, 61.0, 2.0)]
    for ang, shift in steps:  # swing up to 90 deg, then also slide the group away along the arm
        H = rot_about(axis, ang, hinge)
        H[:3, 3] += shift * arm
        xm = xs.copy()
        xm[ingrp] = apply(H, xs[ingrp])
        m = simulate(xm, ws, rt, 3.0, lo, sh)
        cm = volume_contour(m, 3.0, vol)
        ov = overlap(base, 3.0, lo, c0, m, 3.0, lo, cm, np.eye(4))
        chosen = (ang, H, ov, float(shift))
        if ov <= ov_max:
            break
    ang, H, ov_test, shift = chosen
    tgt = transform_chains(full, H, set(grp))
    ti, td, tc_, tv, to = sim_map(rng, tgt, rt, f"{d}/target.mrc")
    src_m.write_minimal_pdb(f"{d}/source_model.pdb")
    T = np.linalg.inv(M)
    ss, ps = self_sym_ops(full)
    case = global_case(
        si,
        ti,
        rs,
        rt,
        T,
        ss,
        ps,
        molecules=[model],
        hard=dict(
            kind="hinge",
            moved_chains=grp,
            moved_frac_CA=round(frac, 3),
            hinge_A=hinge.round(2).tolist(),
            axis=axis.round(4).tolist(),
            angle_deg=ang,
            shift_along_arm_A=shift,
            overlap_test_3A=ov_test,
            overlap_goal=round(ov_max, 3),
            T_moved_group_on_target=(H @ T).round(5).tolist(),
        ),
        notes=f"simulated {model} (moved) -> simulated {model} with chains {','.join(grp)} ({frac:.0%} of CA) "
        f"swung {ang} deg about a hinge at their interface and slid {shift:g} A away; GT = fixed part (motion^-1)",
    )
    return finish(case, d, si, sd, sv, so, ti, td, tv, to)


def case_states_real(rng, d, pair, rs, rt, gt):
    g = gt[pair]
    src = load_model(g["smodel"])
    tgt = load_model(g["tmodel"])
    M = rand_motion(rng, all_ca(src).mean(0))
    src_m = transform_st(src, M)
    si, sd, _, sv, so = sim_map(rng, src_m, rs, f"{d}/source.mrc")
    ti, td, _, tv, to = sim_map(rng, tgt, rt, f"{d}/target.mrc")
    src_m.write_minimal_pdb(f"{d}/source_model.pdb")
    T = g["T"] @ np.linalg.inv(M)
    ss, ps = self_sym_ops(tgt)
    case = global_case(
        si,
        ti,
        rs,
        rt,
        T,
        ss,
        ps,
        molecules=[g["smodel"], g["tmodel"]],
        hard=dict(kind="real-states"),
        notes=f"simulated {g['smodel']} (moved) -> simulated {g['tmodel']} (different state/composition); GT = {g['note']} o motion^-1",
    )
    return finish(case, d, si, sd, sv, so, ti, td, tv, to)


def case_partial(rng, d, model, rs, rt):
    full = load_model(model)
    cc = chain_ca(full)
    gx, fx = contiguous_group(rng, cc, 0.18, 0.32, max_chain_frac=0.32)
    gy, fy = contiguous_group(rng, cc, 0.18, 0.32, exclude=set(gx), max_chain_frac=0.32)
    keep_s = set(cc) - set(gx)
    keep_t = set(cc) - set(gy)
    s_st = load_model(model, chains=keep_s)
    t_st = load_model(model, chains=keep_t)
    M = rand_motion(rng, all_ca(s_st).mean(0))
    s_m = transform_st(s_st, M)
    si, sd, _, sv, so = sim_map(rng, s_m, rs, f"{d}/source.mrc")
    ti, td, _, tv, to = sim_map(rng, t_st, rt, f"{d}/target.mrc")
    s_m.write_minimal_pdb(f"{d}/source_model.pdb")
    T = np.linalg.inv(M)
    # equivalent answers: symmetry ops of the full model that keep the source's model on itself and the target's
    ss, ps = self_sym_ops(t_st)
    case = global_case(
        si,
        ti,
        rs,
        rt,
        T,
        ss,
        ps,
        molecules=[model],
        hard=dict(
            kind="partial",
            source_lacks=gx,
            source_lacks_frac_CA=round(fx, 3),
            target_lacks=gy,
            target_lacks_frac_CA=round(fy, 3),
        ),
        notes=f"simulated {model} without chains {','.join(gx)} ({fx:.0%} of CA), moved -> simulated {model} "
        f"without chains {','.join(gy)} ({fy:.0%}); GT = motion^-1",
    )
    return finish(case, d, si, sd, sv, so, ti, td, tv, to)


def make_trimer(rng, model, chain, del_range=(0.03, 0.06), trim_frac=0.04):
    """Three copies of one chain about a 3-fold axis; copies B and C differ from A (deletions / truncations)."""
    one = load_model(model, chains={chain})
    ch0 = one[0][chain]
    X = all_ca(one)
    c = X.mean(0)
    u = rand_unit(rng)
    v = np.cross(u, rand_unit(rng))
    v /= np.linalg.norm(v)
    tree = cKDTree(X)
    for R0 in np.arange(12.0, 80.0, 1.0):  # closest axis distance with no CA-CA contact < 4.5 A between copies
        p = c + R0 * v
        S = rot_about(u, 120.0, p)
        if tree.query(apply(S, X))[0].min() >= 4.5:
            break
    S1, S2 = rot_about(u, 120.0, p), rot_about(u, 240.0, p)
    res_list = [r for r in ch0 if r.find_atom("CA", "*") is not None]
    n = len(res_list)
    edits = {}
    st = gemmi.Structure()
    st.cell = one.cell
    mdl = gemmi.Model("1")
    for k, (name, T) in enumerate([("A", np.eye(4)), ("B", S1), ("C", S2)]):
        ch = gemmi.Chain(name)
        if k == 0:
            delete, trim = set(), set()
        else:
            L = max(2, int(round(n * rng.uniform(*del_range))))
            s0 = int(rng.integers(5, n - L - 5))
            delete = set(range(s0, s0 + L))
            trim = (
                set(int(i) for i in rng.choice(n, int(round(trim_frac * n)), replace=False)) - delete
                if k == 2
                else set()
            )
            edits[name] = dict(
                deleted_residues=[res_list[s0].seqid.num, res_list[s0 + L - 1].seqid.num],
                n_deleted=L,
                frac_deleted=round(L / n, 3),
                n_truncated_to_ala=len(trim),
            )
        for i, r in enumerate(res_list):
            if i in delete:
                continue
            r2 = r.clone()
            if i in trim:
                for j in reversed(range(len(r2))):
                    if r2[j].name not in ("N", "CA", "C", "O", "CB"):
                        del r2[j]
                r2.name = "ALA"
            for a in r2:
                q = T[:3, :3] @ np.array([a.pos.x, a.pos.y, a.pos.z]) + T[:3, 3]
                a.pos = gemmi.Position(*q)
            ch.add_residue(r2)
        mdl.add_chain(ch)
    st.add_model(mdl)
    st.setup_entities()
    return (
        st,
        [S1, S2],
        dict(
            axis=u.round(4).tolist(),
            axis_point=p.round(2).tolist(),
            axis_distance_A=float(R0),
            n_residues=n,
            edits=edits,
        ),
    )


def case_pseudo(rng, d, model, chain, rs, rt, del_range, trim_frac):
    tri, S, info = make_trimer(rng, model, chain, del_range, trim_frac)
    M = rand_motion(rng, all_ca(tri).mean(0))
    src_m = transform_st(tri, M)
    si, sd, _, sv, so = sim_map(rng, src_m, rs, f"{d}/source.mrc")
    ti, td, _, tv, to = sim_map(rng, tri, rt, f"{d}/target.mrc")
    src_m.write_minimal_pdb(f"{d}/source_model.pdb")
    T = np.linalg.inv(M)
    X = all_ca(src_m)
    pse = [Sk @ T for Sk in S]
    case = dict(
        kind="global",
        source_contour=si["contour"],
        target_contour=ti["contour"],
        source_resolution=rs,
        target_resolution=rt,
        T_gt=T,
        alt_T_gt=[],
        pseudo_T=[P.round(6).tolist() for P in pse],
        pseudo_T_rmsd_A=[round(float(np.sqrt(((apply(P, X) - apply(T, X)) ** 2).sum(1).mean())), 2) for P in pse],
        molecules=[model],
        hard=dict(kind="pseudosym", chain=chain, **info),
        notes=f"C3 trimer of {model} chain {chain}; copies B, C lack {del_range[0]:.1%}-{del_range[1]:.1%} of the residues "
        f"(C also {trim_frac:.0%} truncated to Ala), "
        f"so the answer is unique; pseudo_T = the 3-fold poses (wrong)",
        source_info=si,
        target_info=ti,
    )
    case = finish(case, d, si, sd, sv, so, ti, td, tv, to)
    case["overlap_at_pseudo_T"] = [overlap(sd, sv, so, si["contour"], td, tv, to, ti["contour"], P) for P in pse]
    return case


def case_resgap(rng, d, pair, rs, rt, g5s, g5t, gt):
    g = gt[pair]
    src = load_model(g["smodel"])
    tgt = load_model(g["tmodel"])
    M = rand_motion(rng, all_ca(src).mean(0))
    src_m = transform_st(src, M)
    si, sd, _, sv, so = sim_map(rng, src_m, rs, f"{d}/source.mrc", grid5=g5s)
    ti, td, _, tv, to = sim_map(rng, tgt, rt, f"{d}/target.mrc", grid5=g5t)
    src_m.write_minimal_pdb(f"{d}/source_model.pdb")
    T = g["T"] @ np.linalg.inv(M)
    ss, ps = self_sym_ops(tgt)
    case = global_case(
        si,
        ti,
        rs,
        rt,
        T,
        ss,
        ps,
        molecules=[g["smodel"], g["tmodel"]],
        hard=dict(kind="resgap", source_grid=5.0 if g5s else si["vox"], target_grid=5.0 if g5t else ti["vox"]),
        notes=f"simulated {g['smodel']} at {rs} A{' on a 5 A grid' if g5s else ''} (moved) -> simulated {g['tmodel']} "
        f"at {rt} A{' on a 5 A grid' if g5t else ''}; GT = {g['note']} o motion^-1",
    )
    return finish(case, d, si, sd, sv, so, ti, td, tv, to)


def case_noise(rng, d, name, rs, rt, ns, nt, gt):
    if "-" in name:
        g = gt[name]
        src = load_model(g["smodel"])
        tgt = load_model(g["tmodel"])
        G = g["T"]
        mols = [g["smodel"], g["tmodel"]]
        gn = g["note"]
    else:
        src = tgt = load_model(name)
        G = np.eye(4)
        mols = [name]
        gn = "identity"
    M = rand_motion(rng, all_ca(src).mean(0))
    src_m = transform_st(src, M)
    si, sd, scl, sv, so = sim_map(rng, src_m, rs, f"{d}/source.mrc", noise=ns, grid5=bool((ns or {}).get("grid5")))
    ti, td, tcl, tv, to = sim_map(rng, tgt, rt, f"{d}/target.mrc", noise=nt, grid5=bool((nt or {}).get("grid5")))
    src_m.write_minimal_pdb(f"{d}/source_model.pdb")
    T = G @ np.linalg.inv(M)
    ss, ps = self_sym_ops(tgt)
    case = global_case(
        si,
        ti,
        rs,
        rt,
        T,
        ss,
        ps,
        molecules=mols,
        hard=dict(kind="noise", source_noise=ns or "mild", target_noise=nt or "mild"),
        notes=f"simulated {mols[0]} (moved; noise {ns or 'mild'}) -> simulated {mols[-1]} (noise {nt or 'mild'}); "
        f"contours from the model mass on the clean maps; GT = {gn} o motion^-1",
    )
    return finish(case, d, si, sd, sv, so, ti, td, tv, to, scl, tcl)


def chain_superposition(src_st, tgt_st, chain):
    """Kabsch superposition of `chain` of src_st onto the chain of the same name in tgt_st (CA of the residues
    with the same number and name) and its CA RMSD."""
    a, b = chain_ca(src_st)[chain], chain_ca(tgt_st)[chain]
    keys = [k for k in a if k in b and a[k][0] == b[k][0]]
    A = np.array([a[k][1] for k in keys])
    B = np.array([b[k][1] for k in keys])
    K = kabsch(A, B)
    return K, float(np.sqrt(((apply(K, A) - B) ** 2).sum(1).mean())), len(keys)


def target_model_of(tspec):
    n = 4 if tspec[0] == "sim" else 3
    return tspec[n - 1] if len(tspec) >= n else None


def case_chain(rng, d, model, chain, rs, tspec):
    tmodel = target_model_of(tspec) or model
    full = load_model(tmodel)
    cc = chain_ca(full)
    ch = load_model(model, chains={chain})
    M = rand_motion(rng, all_ca(ch).mean(0))
    ch_m = transform_st(ch, M)
    si, sd, _, sv, so = sim_map(rng, ch_m, rs, f"{d}/source.mrc")
    if tspec[0] == "sim":
        ti, td, _, tv, to = sim_map(rng, full, tspec[1], f"{d}/target.mrc", grid5=tspec[2])
        tc = ti["contour"]
        rt = tspec[1]
        tnote = f"simulated full {tmodel} at {rt} A" + (" on a 5 A grid" if tspec[2] else "")
    else:
        td, tv, to = read_map(tspec[1])
        write_map(f"{d}/target.mrc", td, tv, to)
        tc = small_contour(td)
        rt = 5.0
        ti = dict(contour=tc, vox=tv, real_map=tspec[1])
        tnote = f"real 5 A grid {tspec[1]} (contour 0.5 x 1st pct of nonzero voxels)"
    ch_m.write_minimal_pdb(f"{d}/source_model.pdb")
    if tmodel == model:
        K = np.eye(4)
        knote = ""
        kinfo = {}
    else:  # another state: the right placement is the chain's superposition onto its namesake in the target model
        K, krmsd, nk = chain_superposition(ch, full, chain)
        knote = f"; GT = superposition onto chain {chain} of {tmodel} (CA RMSD {krmsd:.2f} A over {nk} CA) o motion^-1"
        kinfo = dict(target_model=tmodel, chain_superposition_rmsd_A=round(krmsd, 3), chain_superposition_n_CA=nk)
    T = K @ np.linalg.inv(M)
    ops = chain_ops(cc, chain, max_rmsd=CHAIN_COPY_RMSD)
    alts = [S @ T for b, S in ops]
    case = dict(
        kind="chain",
        source_contour=si["contour"],
        target_contour=tc,
        source_resolution=rs,
        target_resolution=rt,
        T_gt=T,
        alt_T_gt=alts,
        molecules=[model] + ([tmodel] if tmodel != model else []),
        source_info=si,
        target_info=ti,
        checks_frac_CA_inside_contour=dict(chain_in_target=model_map_check(transform_st(ch, K), td, tv, to, tc)),
        hard=dict(
            kind="chain" if tmodel == model else "chain-xstate",
            chain=chain,
            n_residues=len(chain_ca(ch)[chain]),
            chain_frac_of_complex_CA=round(len(cc[chain]) / sum(len(v) for v in cc.values()), 3),
            equivalent_copies=[b for b, _ in ops],
            copy_rmsd_A=copy_rmsds(cc, chain),
            **kinfo,
        ),
        notes=f"chain {chain} of {model} ({len(chain_ca(ch)[chain])} residues) simulated at {rs} A, moved -> {tnote}{knote}",
    )
    return finish(case, d, si, sd, sv, so, ti, td, tv, to)


# ---------------------------------------------------------------- main
def all_sets():
    s = {}
    s["hard-states"] = (
        [(f"hinge_{m}", "states", (m, a, b)) for m, a, b in STATES]
        + [(f"hinge_{m}_big", "states", (m, a, b, (0.41, 0.46))) for m, a, b in STATES_BIG]
        + [(f"real_{p}", "statesreal", (p, a, b)) for p, a, b in STATES_REAL]
    )
    s["hard-partial"] = [(f"part_{m}", "partial", (m, a, b)) for m, a, b in PARTIAL]
    s["hard-pseudosym"] = [
        (f"c3_{m}_{c}_{i}", "pseudo", (m, c, a, b, dr, tf)) for i, (m, c, a, b, dr, tf) in enumerate(PSEUDO)
    ]
    s["hard-resgap"] = [
        (f"gap_{p}_{a:g}{'g5' if x else ''}_to_{b:g}{'g5' if y else ''}", "resgap", (p, a, b, x, y))
        for p, a, b, x, y in RESGAP
    ]
    s["hard-noise"] = [(f"noise_{i}_{n}", "noise", (n, a, b, x, y)) for i, (n, a, b, x, y) in enumerate(NOISE)]

    def chain_id(m, c, r, t):
        tm = target_model_of(t)
        tail = ("real" if t[0] == "real" else f"sim{t[1]:g}{'g5' if t[2] else ''}") + (f"_{tm}" if tm else "")
        return f"chain_{m}_{c}_{r:g}_{tail}"

    s["hard-chain"] = [(chain_id(m, c, r, t), "chain", (m, c, r, t)) for m, c, r, t in CHAIN]
    return s


def main():
    global INP
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--only", default=None, help="comma list of set names")
    ap.add_argument("--seed", type=int, default=20261124)
    ap.add_argument("--data", default=DEFAULT_DATA, help="folder with maps/, models/, gt.tsv")
    a = ap.parse_args()
    INP = os.path.abspath(a.data)
    gt = read_gt()
    only = set(a.only.split(",")) if a.only else None
    for sname, cases in all_sets().items():
        if only and sname not in only:
            continue
        for cid, kind, p in cases:
            d = f"{a.out}/{sname}/{cid}"
            os.makedirs(d, exist_ok=True)
            seed = [a.seed, zlib.crc32(f"{sname}/{cid}".encode())]
            rng = np.random.default_rng(seed)
            if kind == "states":
                case = case_states(rng, d, *p)
            elif kind == "statesreal":
                case = case_states_real(rng, d, *p, gt)
            elif kind == "partial":
                case = case_partial(rng, d, *p)
            elif kind == "pseudo":
                case = case_pseudo(rng, d, *p)
            elif kind == "resgap":
                case = case_resgap(rng, d, *p, gt)
            elif kind == "noise":
                case = case_noise(rng, d, *p, gt)
            else:
                case = case_chain(rng, d, *p)
            case.update(case_id=cid, set=sname, seed=seed, mode=MODES[sname])
            write_case(d, case)
            sz = sum(os.path.getsize(f"{d}/{f}") for f in ("source.mrc", "target.mrc")) / 2**20
            print(
                f"{sname}\t{cid}\t{case['kind']}\tsc={case['source_contour']:.4g}\ttc={case['target_contour']:.4g}\t"
                f"alt={len(case['alt_T_gt'])}\toverlap={case['overlap_at_gt']}\t{sz:.1f}MB",
                flush=True,
            )


if __name__ == "__main__":
    main()
