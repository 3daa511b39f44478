#!/usr/bin/env python3
"""Deterministic generator of the UNSEEN validation corpus (reads only ../shared/data/more).

    python benchmarks/unseen/make_unseen_cases.py --out CASES_DIR [--only unseen-tune-global,...]
        [--seed 20261203] [--data /work/shared/data]

33 macromolecules the public and hard sets never used (../shared/data/more, its README and
SOURCES.tsv), in exactly the case format of ../shared/bench/make_cases.py (scored unchanged by
evaluate.py). Every case belongs to one molecule family, and every family to one part of the
fixed split in SPLIT (tune / held); the sets are named unseen-<part>-<kind>:

  global    whole models simulated at 4-10 A (random pose, mild noise); includes the symmetric
            assemblies (their symmetry operators give alt_T_gt)
  grid5     the same on coarse point-sampled 5 A grids, like the public real ones
  states    real state pairs (HIV-1 Env closed/open, adenylate kinase open/closed, haemoglobin
            models of one map) and states made by moving along the lowest normal modes of an
            anisotropic network model by 3-10 A CA RMSD; GT = the TM-score-maximising
            superposition of the source state onto the target state over the residues they
            share (the TM-score program's search with a fixed residue correspondence)
  partial   source and target each lack a different group of chains
  pseudo    C3 trimers of one chain whose copies differ by a few % of residues
  resgap    3.5 A against 10 A, and 5 A grids
  chain     single chains into their complexes' simulated maps (local mode)
  real      the real maps with their models: EMD-3488 (haemoglobin, full box), real crops and
            segments with their chains, EMD-11007 moved onto itself

Helpers (simulation, noise, contours, symmetry operators, trimers, chain cases) are those of
benchmarks/hard/make_hard_cases.py, so the maps are made exactly as the hard sets' are.
Every case is seeded by (seed, crc32(set/case)): byte-identical on every run.
"""

import argparse
import json
import os
import sys
import zlib

import gemmi
import numpy as np
from scipy import ndimage
from scipy.linalg import eigh
from scipy.spatial import cKDTree

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "hard"))
import make_hard_cases as mh  # noqa: E402

DEFAULT_DATA = os.path.normpath(os.path.join(HERE, "..", "..", "..", "shared", "data"))
MORE = os.path.join(DEFAULT_DATA, "more")

# ---------------------------------------------------------------- the molecules and the split
# model key -> (file under more/models or more/maps, family). A family is the unit of the split:
# related molecules (one complex in several states, one fold from several species) stay together.
MODELS = {
    "4zmj": ("models/hiv_env/4zmj_assembly1.cif.gz", "hiv_env"),
    "7txd": ("models/hiv_env/7txd.cif.gz", "hiv_env"),
    "5vn3": ("models/hiv_env/5vn3.pdb.gz", "hiv_env"),
    "4tvp": ("models/hiv_env/4tvp_assembly1.cif.gz", "hiv_env"),
    "8fad": ("models/hiv_env/8fad.cif.gz", "hiv_env"),
    "8fae": ("models/hiv_env/8fae.cif.gz", "hiv_env"),
    "adk_open": ("models/adk/adk_open_4AKE.pdb.gz", "adk"),
    "adk_closed": ("models/adk/adk_closed_1AKE.pdb.gz", "adk"),
    "5ni1": ("models/hemoglobin/5ni1_updated.cif.gz", "haemoglobin"),
    "5me2": ("models/hemoglobin/5me2.pdb.gz", "haemoglobin"),
    "1iok": ("models/chaperonin/1iok.pdb.gz", "chaperonin"),
    "1sjp": ("models/chaperonin/1sjp.pdb.gz", "chaperonin"),
    "1a6d": ("models/chaperonin/1a6d.pdb.gz", "chaperonin"),
    "1q3q": ("models/chaperonin/1q3q.pdb.gz", "chaperonin"),
    "7p6a": ("models/emmivox/7P6A_EMMIVox_cc1.0.pdb.gz", "7p6a"),
    "7w9w": ("models/emmivox/7W9W_EMMIVox_cc1.0.pdb.gz", "7w9w"),
    "7n00": ("models/emmivox/7N00_EMMIVox_cc1.0.pdb.gz", "7n00"),
    "7t4n": ("models/emmivox/7T4N_EMMIVox_cc1.0.pdb.gz", "7t4n"),
    "7b5o": ("models/emmivox/7B5O_EMMIVox_cc1.0.pdb.gz", "7b5o"),
    "7mjs": ("models/emmivox/7MJS_EMMIVox_cc1.0.pdb.gz", "7mjs"),
    "7lq6": ("models/emmivox/7LQ6_EMMIVox_cc1.0.pdb.gz", "7lq6"),
    "7nqk": ("models/emmivox/7NQK_EMMIVox_cc1.0.pdb.gz", "7nqk"),
    "6yeg": ("models/emmivox/6YEG_EMMIVox_cc1.0.pdb.gz", "6yeg"),
    "6gl7": ("models/cryoem_misc/6gl7.pdb.gz", "6gl7"),
    "6swy": ("models/cryoem_misc/6swy.pdb.gz", "6swy"),
    "6v8o": ("models/cryoem_misc/6v8o.pdb.gz", "6v8o"),
    "3j6r": ("models/misc/3J6R.pdb.gz", "3j6r"),
    "3sn6": ("models/misc/3sn6.pdb.gz", "3sn6"),
    "4yvs": ("models/misc/4YVS.cif.gz", "4yvs"),
    "1e6v": ("models/misc/1e6v.pdb.gz", "1e6v"),
    "1gyt": ("models/misc/1gyt.pdb.gz", "1gyt"),
    "1igt": ("models/misc/1igt.pdb.gz", "1igt"),
    "2bgj": ("models/misc/2bgj.pdb.gz", "2bgj"),
    "4zxb": ("models/misc/4zxb.pdb.gz", "4zxb"),
    "6msm": ("models/misc/6msm.pdb.gz", "6msm"),
    "2513A": ("maps/emd_2513_crop/2513A_native.pdb.gz", "emd_2513"),
    "1461": ("maps/emd_1461_crop/1461_DMM_rank1.pdb.gz", "emd_1461"),
    "6vyb_N": ("maps/emd_21457_seg/6vyb_Ndom.pdb.gz", "emd_21457"),
    "5778": ("maps/riken_segments/5778_native.pdb.gz", "emd_5778"),
    "5925": ("maps/riken_segments/5925_native.pdb.gz", "emd_5925"),
    "6374": ("maps/riken_segments/6374_native.pdb.gz", "emd_6374"),
    "6555": ("maps/riken_segments/6555_native.pdb.gz", "emd_6555"),
    "6272": ("maps/strudel_6272/6272_fragment.pdb.gz", "emd_6272"),
}

# The held-out families (13 of 34, 38 %): fixed once, before any run of the corpus, to spread the
# kinds over both parts (one real state pair, symmetric and asymmetric complexes, real maps).
# Never tune on them: every rule, weight and threshold is chosen on the tune part (and the
# public and hard sets); the held-out table is reported once per change.
HELD = {
    "adk",
    "7n00",
    "7nqk",
    "6yeg",
    "6swy",
    "3sn6",
    "1gyt",
    "1igt",
    "2bgj",
    "emd_1461",
    "emd_5778",
    "emd_6555",
    "emd_6272",
}
FAMILIES = sorted({fam for _, fam in MODELS.values()} | {"emd_11007"})
KINDS = ["global", "grid5", "states", "partial", "pseudo", "resgap", "chain", "real"]
MODE = {"chain": "local"}  # every other kind: --global (read by run_benchmark.py)


def part_of(family):
    return "held" if family in HELD else "tune"


def set_name(part, kind):
    return f"unseen-{part}-{kind}"


ALL_SETS = [set_name(p, k) for p in ("tune", "held") for k in KINDS]
MODES = {s: MODE.get(s.rsplit("-", 1)[1], "global") for s in ALL_SETS}


def load(name, chains=None):
    """A model of the corpus (hydrogens, waters and ligands removed; chains kept if given)."""
    st = gemmi.read_structure(os.path.join(MORE, MODELS[name][0]))
    if any(a.element.name == "X" for ch in st[0] for r in ch for a in r):
        # CHARMM files (adk, protein only) carry no element column: the element is the name's first letter
        for res in (r for ch in st[0] for r in ch):
            for a in res:
                a.element = gemmi.Element(a.name.lstrip("0123456789")[0])
    st.setup_entities()
    st.remove_hydrogens()
    st.remove_ligands_and_waters()
    for i in range(len(st) - 1, 0, -1):  # first model only
        del st[i]
    if chains is not None:
        for ch in list(st[0]):
            if ch.name not in chains:
                st[0].remove_chain(ch.name)
    st.remove_empty_chains()
    _number_copies_alike(st)
    return st


def _number_copies_alike(st):
    """Identical chains numbered through (1-397, 398-794, ... in the built EMD-1461 model) get
    each its own numbering from the same start, so the symmetry operators (matched by residue
    number) see them as the copies they are."""
    chains = list(st[0])
    seqs = [gemmi.one_letter_code([r.name for r in ch]) for ch in chains]
    if len(chains) < 2 or len(set(seqs)) != 1:
        return
    firsts = [ch[0].seqid.num for ch in chains]
    if len(set(firsts)) == len(firsts):
        for ch, first in zip(chains, firsts):
            for r in ch:
                r.seqid = gemmi.SeqId(r.seqid.num - first + firsts[0], r.seqid.icode)


mh.load_model = load  # the hard-set case builders load models through this name


# ---------------------------------------------------------------- normal modes and TM-align
def anm_state(rng, st, rmsd_goal, modes=(0, 1, 2), max_nodes=900, cutoff=15.0):
    """`st` moved along a random mix of its lowest anisotropic-network-model modes until the CA
    RMSD to the start is `rmsd_goal` (the nodes are every k-th CA, at most `max_nodes`; every
    atom follows its nearest node). Returns the moved copy and the mode info."""
    X = mh.all_ca(st)
    nodes = X[:: max(1, -(-len(X) // max_nodes))]
    n = len(nodes)
    d = nodes[:, None, :] - nodes[None, :, :]
    r2 = (d**2).sum(-1)
    near = np.argsort(r2, axis=1)[:, 1:7]  # and each node's 6 nearest, so no node is floppy
    k = r2 < cutoff**2
    k[np.repeat(np.arange(n), 6), near.ravel()] = True
    k = (k | k.T) & (r2 > 0)
    H = np.zeros((3 * n, 3 * n))
    blocks = -np.where(
        k[..., None, None], d[..., :, None] * d[..., None, :] / np.where(r2 > 0, r2, 1)[..., None, None], 0
    )
    H[:] = blocks.transpose(0, 2, 1, 3).reshape(3 * n, 3 * n)
    for i in range(n):
        H[3 * i : 3 * i + 3, 3 * i : 3 * i + 3] = -blocks[i].sum(0)
    vals, vecs = eigh(H)
    ok = np.flatnonzero(vals > 1e-6 * vals.max())[: max(modes) + 1]  # skip the rigid-body (zero) modes
    vals, vecs = vals[ok], vecs[:, ok]
    w = rng.standard_normal(len(modes)) / np.sqrt(vals[list(modes)])
    disp = (vecs[:, list(modes)] @ w).reshape(n, 3)
    _, idx = cKDTree(nodes).query(X)
    scale = rmsd_goal / np.sqrt((disp[idx] ** 2).sum(1).mean())
    disp *= scale
    out = st.clone()
    tree = cKDTree(nodes)
    for ch in out[0]:
        for res in ch:
            for a in res:
                p = np.array([a.pos.x, a.pos.y, a.pos.z])
                a.pos = gemmi.Position(*(p + disp[tree.query(p)[1]]))
    return out, dict(
        anm_modes=[int(m) + 1 for m in modes],
        anm_nodes=n,
        anm_cutoff_A=cutoff,
        anm_weights=np.round(w / np.linalg.norm(w), 4).tolist(),
        ca_rmsd_A=round(float(rmsd_goal), 2),
    )


def tm_score_superposition(A, B, *, fragments=(1.0, 0.5, 0.25, 0.125), iterations=20):
    """The superposition of CA set A onto B (same length, pair i <-> i) that maximises the
    TM-score normalised by len(A), by the TM-score program's search: Kabsch on seed fragments
    of several lengths, then repeatedly on the pairs within d0 (growing), keeping the best.
    Returns (4x4 T, TM-score, RMSD of the pairs within 5 A after T)."""
    n = len(A)
    d0 = max(0.5, 1.24 * np.cbrt(max(n, 19) - 15) - 1.8)
    best = (-1.0, np.eye(4))
    for frac in fragments:
        L = max(4, int(n * frac))
        for start in range(0, n - L + 1, max(1, L // 2)):
            sel = np.arange(start, start + L)
            for _ in range(iterations):
                T = mh.kabsch(A[sel], B[sel])
                d = np.linalg.norm(mh.apply(T, A) - B, axis=1)
                tm = float((1 / (1 + (d / d0) ** 2)).sum() / n)
                if tm > best[0]:
                    best = (tm, T)
                cut = d0
                new = np.flatnonzero(d < cut)
                while len(new) < 3 and cut < 50:
                    cut += 0.5
                    new = np.flatnonzero(d < cut)
                if np.array_equal(new, sel):
                    break
                sel = new
    tm, T = best
    d = np.linalg.norm(mh.apply(T, A) - B, axis=1)
    core = d < 5.0
    return T, tm, float(np.sqrt((d[core] ** 2).mean())) if core.any() else float("nan")


def paired_ca(src_st, tgt_st, src_chains=None, tgt_chains=None):
    """CA pairs of two models of one molecule, matched by chain (in the given orders, else by name)
    and residue number and name."""
    a, b = mh.chain_ca(src_st), mh.chain_ca(tgt_st)
    src_chains = src_chains or [c for c in a if c in b]
    tgt_chains = tgt_chains or src_chains
    A, B = [], []
    for ca, cb in zip(src_chains, tgt_chains):
        for k, (name, xyz) in a.get(ca, {}).items():
            if k in b.get(cb, {}) and b[cb][k][0] == name:
                A.append(xyz)
                B.append(b[cb][k][1])
    return np.array(A), np.array(B)


def tm_superposition(src_st, tgt_st, src_groups=None, tgt_groups=None):
    """The TM-score-maximising superposition of the source state's CA onto the target state's,
    over the residues both share (chain, number, name): (4x4 T, TM-score normalised by the
    shared residues, RMSD of the core within 5 A). src_groups / tgt_groups: the protomers of
    an assembly as lists of chains (protomer k of one model holds the chains that correspond,
    in order, to those of a protomer of the other); every pairing of the protomers is tried."""
    import itertools

    pairings = [(None, None)]
    if src_groups is not None:
        pairings = [
            (sum(src_groups, []), sum((tgt_groups[i] for i in perm), []))
            for perm in itertools.permutations(range(len(tgt_groups)))
        ]
    best = None
    for sc, tc in pairings:
        A, B = paired_ca(src_st, tgt_st, sc, tc)
        if len(A) < 50:
            raise ValueError("fewer than 50 shared residues: give the chain correspondence")
        fit = tm_score_superposition(A, B)
        if best is None or fit[1] > best[1]:
            best = fit
    return best


# ---------------------------------------------------------------- case builders
def moved_pair(rng, d, src_st, tgt_st, rs, rt, K=None, g5s=False, g5t=False):
    """The source model moved by a random motion and simulated at rs, the target model simulated
    at rt (5 A grids when asked), the moved source model written; T_gt = K o motion^-1 (K: the
    superposition of the source state onto the target state, identity when None).
    Returns (source info, data, voxel, origin), (target the same), T_gt."""
    M = mh.rand_motion(rng, mh.all_ca(src_st).mean(0))
    src = mh.transform_st(src_st, M)
    si, sd, _, sv, so = mh.sim_map(rng, src, rs, f"{d}/source.mrc", grid5=g5s)
    ti, td, _, tv, to = mh.sim_map(rng, tgt_st, rt, f"{d}/target.mrc", grid5=g5t)
    src.write_minimal_pdb(f"{d}/source_model.pdb")
    T = (np.eye(4) if K is None else K) @ np.linalg.inv(M)
    return (si, sd, sv, so), (ti, td, tv, to), T


def case_global(rng, d, model, rs, rt, grid5=False):
    st = load(model)
    (si, sd, sv, so), (ti, td, tv, to), T = moved_pair(rng, d, st, st, rs, rt, g5s=grid5, g5t=grid5)
    ss, ps = mh.self_sym_ops(st)
    case = mh.global_case(
        si,
        ti,
        rs,
        rt,
        T,
        ss,
        ps,
        molecules=[model],
        hard=dict(kind="grid5" if grid5 else "global", symmetry_operators=len(ss)),
        notes=f"simulated {model} (moved){' on 5 A grids' if grid5 else ''}; GT = motion^-1",
    )
    return mh.finish(case, d, si, sd, sv, so, ti, td, tv, to)


def case_states_anm(rng, d, model, rs, rt, amplitude):
    st = load(model)
    moved, info = anm_state(rng, st, amplitude)
    K, tm, core = tm_superposition(st, moved)
    (si, sd, sv, so), (ti, td, tv, to), T = moved_pair(rng, d, st, moved, rs, rt, K)
    ss, ps = mh.self_sym_ops(moved)
    case = mh.global_case(
        si,
        ti,
        rs,
        rt,
        T,
        ss,
        ps,
        molecules=[model],
        hard=dict(kind="anm-state", tm_score=round(tm, 4), core_rmsd_A=round(core, 2), **info),
        notes=f"simulated {model} (moved) -> {model} moved along ANM modes by {amplitude:.1f} A CA RMSD; "
        "GT = TM-score-maximising superposition of the source state onto the target state o motion^-1",
    )
    return mh.finish(case, d, si, sd, sv, so, ti, td, tv, to)


def case_states_real(rng, d, smodel, tmodel, rs, rt, sgroups=None, tgroups=None):
    s_st, t_st = load(smodel), load(tmodel)
    K, tm, core = tm_superposition(s_st, t_st, sgroups, tgroups)
    (si, sd, sv, so), (ti, td, tv, to), T = moved_pair(rng, d, s_st, t_st, rs, rt, K)
    ss, ps = mh.self_sym_ops(t_st)
    case = mh.global_case(
        si,
        ti,
        rs,
        rt,
        T,
        ss,
        ps,
        molecules=[smodel, tmodel],
        hard=dict(kind="real-states", tm_score=round(tm, 4), core_rmsd_A=round(core, 2), protomers=[sgroups, tgroups]),
        notes=f"simulated {smodel} (moved) -> simulated {tmodel} (another state); GT = TM-score-maximising "
        f"superposition (TM-score {tm:.3f}, core RMSD {core:.2f} A) o motion^-1",
    )
    return mh.finish(case, d, si, sd, sv, so, ti, td, tv, to)


def case_resgap(rng, d, smodel, tmodel, rs, rt, g5s, g5t):
    s_st, t_st = load(smodel), load(tmodel)
    K = None if smodel == tmodel else tm_superposition(s_st, t_st, ENV.get(smodel), ENV.get(tmodel))[0]
    (si, sd, sv, so), (ti, td, tv, to), T = moved_pair(rng, d, s_st, t_st, rs, rt, K, g5s, g5t)
    ss, ps = mh.self_sym_ops(t_st)
    case = mh.global_case(
        si,
        ti,
        rs,
        rt,
        T,
        ss,
        ps,
        molecules=sorted({smodel, tmodel}),
        hard=dict(kind="resgap", source_grid=5.0 if g5s else si["vox"], target_grid=5.0 if g5t else ti["vox"]),
        notes=f"simulated {smodel} at {rs} A{' on a 5 A grid' if g5s else ''} (moved) -> simulated "
        f"{tmodel} at {rt} A{' on a 5 A grid' if g5t else ''}",
    )
    return mh.finish(case, d, si, sd, sv, so, ti, td, tv, to)


def read_real(rel):
    """A real map as (data zyx, voxel, origin) in x, y, z axis order (cryoalign's reader honours
    MAPC/MAPR/MAPS and the origin rules)."""
    from cryoalign.io import read_map

    m = read_map(os.path.join(MORE, "maps", rel))
    return np.asarray(m.data, np.float32), float(m.voxel_size_A[0]), np.asarray(m.origin_A, float)


def moved_map(rng, data, vox, org, contour, M, vox_new=None):
    """`data` moved by the rigid motion M and resampled (trilinear) on a grid of `vox_new` that
    holds the moved density above contour (+ 10 A)."""
    vox_new = vox_new or vox
    idx = np.argwhere(data >= contour)[:, ::-1] * vox + org
    P = mh.apply(M, idx)
    lo = P.min(0) - 10 - rng.uniform(0, 5, 3)
    hi = P.max(0) + 10 + rng.uniform(0, 5, 3)
    shape = np.ceil((hi - lo) / vox_new).astype(int) + 1
    axes = [np.arange(n) * vox_new + lo[i] for i, n in enumerate(shape)]
    zz, yy, xx = np.meshgrid(axes[2], axes[1], axes[0], indexing="ij")
    Y = np.stack([xx.ravel(), yy.ravel(), zz.ravel()], 1)
    Minv = np.linalg.inv(M)
    X = (Y @ Minv[:3, :3].T + Minv[:3, 3] - org) / vox
    v = ndimage.map_coordinates(data, [X[:, 2], X[:, 1], X[:, 0]], order=1, cval=0.0)
    return v.reshape(zz.shape).astype(np.float32), vox_new, lo


def pseudo_model(rng, data, vox, org, contour, path, n=400):
    """For a map with no model: CA atoms at `n` voxels above contour (the RMSD is measured on them)."""
    idx = np.argwhere(data >= contour)
    pick = idx[np.sort(rng.choice(len(idx), size=min(n, len(idx)), replace=False))]
    st = gemmi.Structure()
    mdl = gemmi.Model("1")
    ch = gemmi.Chain("A")
    for i, (z, y, x) in enumerate(pick):
        r = gemmi.Residue()
        r.name = "GLY"
        r.seqid = gemmi.SeqId(i + 1, " ")
        a = gemmi.Atom()
        a.name = "CA"
        a.element = gemmi.Element("C")
        a.pos = gemmi.Position(*(np.array([x, y, z]) * vox + org))
        r.add_atom(a)
        ch.add_residue(r)
    mdl.add_chain(ch)
    st.add_model(mdl)
    st.write_minimal_pdb(path)
    return st


def copy_sym_ops(st, copy_rmsd=mh.CHAIN_COPY_RMSD, strict=0.95, tol=6.0):
    """Symmetry operators of a model whose copies are built, not deposited (they differ by up to
    `copy_rmsd` CA RMSD, as hard-chain's identical chains): superpositions of one chain onto a
    copy that put `strict` of all CA within `tol` of a CA. The real maps' models use these."""
    cc = mh.chain_ca(st)
    X = mh.all_ca(st)
    tree = cKDTree(X)
    found = []
    for a in cc:
        for _, T in mh.chain_ops(cc, a, max_rmsd=copy_rmsd):
            moved = mh.apply(T, X)
            if np.sqrt(((moved - X) ** 2).sum(1).mean()) < 1.0 or (tree.query(moved)[0] < tol).mean() < strict:
                continue
            if not any(np.sqrt(((moved - mh.apply(S, X)) ** 2).sum(1).mean()) < 2.0 for S in found):
                found.append(T)
    return found


def real_contour(data, vox, volume_A3):
    """The level enclosing `volume_A3`, or 0.7 x the volume of the positive voxels when that is less
    (masked segments and tight crops hold less than their model's volume above zero)."""
    return mh.volume_contour(data, vox, min(volume_A3, 0.7 * float((data > 0).sum()) * vox**3))


def real_info(data, vox, org, contour, what):
    return dict(
        contour=round(float(contour), 6),
        vox=vox,
        origin=np.round(org, 3).tolist(),
        shape=list(data.shape[::-1]),
        real_map=what,
    )


def case_real_model_into_map(rng, d, model, rel, rs, contour_rule="mass"):
    """A model simulated at rs (moved) -> the real map it was fitted in; contour from the model's mass."""
    st = load(model)
    td, tv, to = read_real(rel)
    # "mass": the level enclosing the model's volume; "crop": 2.5 x the chain's volume (a crop holds the
    # chain and its neighbours)
    vol = mh.VOL_PER_DA * mh.mass(st) * (2.5 if contour_rule == "crop" else 1.0)
    tc = real_contour(td, tv, vol)
    mh.write_map(f"{d}/target.mrc", td, tv, to)
    M = mh.rand_motion(rng, mh.all_ca(st).mean(0))
    src = mh.transform_st(st, M)
    si, sd, _, sv, so = mh.sim_map(rng, src, rs, f"{d}/source.mrc")
    src.write_minimal_pdb(f"{d}/source_model.pdb")
    ti = real_info(td, tv, to, tc, rel)
    ss, ps = copy_sym_ops(st), []
    case = mh.global_case(
        si,
        ti,
        rs,
        None,
        np.linalg.inv(M),
        ss,
        ps,
        molecules=[model],
        hard=dict(kind="real-map", contour_rule=contour_rule),
        notes=f"simulated {model} at {rs} A (moved) -> real map {rel} (its deposited/built model's frame); "
        f"target contour encloses {'2.5 x ' if contour_rule == 'crop' else ''}the model's volume "
        "(at most 0.7 x the volume above zero)",
    )
    case["checks_frac_CA_inside_contour"] = dict(model_in_target=mh.model_map_check(st, td, tv, to, tc))
    return mh.finish(case, d, si, sd, sv, so, ti, td, tv, to)


def case_real_chain_into_map(rng, d, model, rel, rs):
    """A chain simulated at rs (moved) -> a real map holding it and more (local mode)."""
    case = case_real_model_into_map(rng, d, model, rel, rs, contour_rule="crop")
    case["kind"] = "chain"
    case["hard"]["kind"] = "real-chain"
    return case


def case_real_moved(rng, d, rel, model, vox_new=None, grid5=False):
    """The real map moved by a random motion and resampled (source) -> the real map (target), like
    the public real 5 A set; grid5: both on 5 A grids (trilinear, no pre-filter)."""
    td, tv, to = read_real(rel)
    st = load(model) if model else None
    vol = mh.VOL_PER_DA * mh.mass(st) if st is not None else 0.03 * td.size * tv**3
    tc = real_contour(td, tv, vol)
    if grid5:
        sh5 = np.floor((np.array(td.shape[::-1]) - 1) * tv / 5.0).astype(int) + 1
        td = mh.sample_grid(td, tv, to, 5.0, to, sh5).astype(np.float32)
        tv = 5.0
        tc = real_contour(td, tv, vol)
    centre = (np.argwhere(td >= tc)[:, ::-1] * tv + to).mean(0)
    M = mh.rand_motion(rng, centre)
    sd, sv, so = moved_map(rng, td, tv, to, tc, M, vox_new=5.0 if grid5 else vox_new)
    mh.write_map(f"{d}/source.mrc", sd, sv, so)
    mh.write_map(f"{d}/target.mrc", td, tv, to)
    if st is not None:
        mh.transform_st(st, M).write_minimal_pdb(f"{d}/source_model.pdb")
        ss, ps = copy_sym_ops(st), []
    else:
        pseudo_model(rng, sd, sv, so, tc, f"{d}/source_model.pdb")
        ss, ps = [], []
    si = real_info(sd, sv, so, tc, f"{rel} moved and resampled")
    ti = real_info(td, tv, to, tc, rel + (" on a 5 A grid" if grid5 else ""))
    case = mh.global_case(
        si,
        ti,
        None,
        None,
        np.linalg.inv(M),
        ss,
        ps,
        molecules=[model or rel],
        hard=dict(kind="real-moved", grid5=grid5, source_voxel=sv),
        notes=f"real map {rel} moved by a random motion and resampled at {sv:g} A -> itself"
        f"{' (both on 5 A grids)' if grid5 else ''}; contour encloses "
        f"{'the model volume' if st is not None else '3 % of the box'}",
    )
    return mh.finish(case, d, si, sd, sv, so, ti, td, tv, to)


# ---------------------------------------------------------------- the case lists
def res(rng, lo=4.0, hi=10.0):
    return float(np.round(rng.uniform(lo, hi) * 2) / 2)


GLOBAL = [
    "4zmj",
    "7txd",
    "5vn3",
    "4tvp",
    "8fad",
    "8fae",
    "adk_open",
    "5ni1",
    "1iok",
    "1sjp",
    "1a6d",
    "1q3q",
    "7p6a",
    "7w9w",
    "7n00",
    "7t4n",
    "7b5o",
    "7mjs",
    "7lq6",
    "7nqk",
    "6yeg",
    "6gl7",
    "6swy",
    "6v8o",
    "3j6r",
    "3sn6",
    "4yvs",
    "1e6v",
    "1gyt",
    "1igt",
    "2bgj",
    "4zxb",
    "6msm",
]
GRID5 = [
    "4zmj",
    "7txd",
    "4tvp",
    "8fae",
    "5ni1",
    "1iok",
    "1q3q",
    "7p6a",
    "7w9w",
    "7n00",
    "7t4n",
    "7lq6",
    "7nqk",
    "6yeg",
    "6gl7",
    "6swy",
    "6v8o",
    "3sn6",
    "1e6v",
    "1gyt",
    "1igt",
    "2bgj",
    "4zxb",
    "6msm",
]
ENV = {
    "4zmj": [["G", "B"], ["E", "F"], ["K", "L"]],
    "7txd": [["A", "B"], ["C", "D"], ["E", "F"]],
    "5vn3": [["G", "A"], ["I", "B"], ["J", "D"]],
}  # Env protomers: gp120, gp41 (HXB2 numbering)
REAL_STATES = [
    ("4zmj", "7txd", ENV["4zmj"], ENV["7txd"]),
    ("7txd", "4zmj", ENV["7txd"], ENV["4zmj"]),
    ("5vn3", "4zmj", ENV["5vn3"], ENV["4zmj"]),
    ("8fad", "8fae", None, None),
    ("adk_open", "adk_closed", None, None),
    ("adk_closed", "adk_open", None, None),
    ("5ni1", "5me2", None, None),
]
ANM = [
    "7txd",
    "8fad",
    "1sjp",
    "1a6d",
    "7t4n",
    "7b5o",
    "7lq6",
    "6gl7",
    "6v8o",
    "4zxb",
    "6msm",
    "3j6r",
    "7n00",
    "7nqk",
    "6swy",
    "1igt",
    "3sn6",
    "adk_open",
]
PARTIAL = [
    "6gl7",
    "6v8o",
    "1e6v",
    "4zxb",
    "7txd",
    "5vn3",
    "4tvp",
    "7b5o",
    "1q3q",
    "3j6r",
    "7mjs",
    "6swy",
    "3sn6",
    "1igt",
    "7n00",
]
PSEUDO = [
    ("7lq6", "X"),
    ("2bgj", "A"),
    ("7t4n", "A"),
    ("5ni1", "A"),
    ("6gl7", "D"),
    ("1sjp", "A"),
    ("4zxb", "E"),
    ("adk_open", "A"),
    ("3sn6", "A"),
    ("7nqk", "A"),
    ("1igt", "B"),
]
RESGAP = [
    ("7txd", "7txd", 3.5, 10.0, False, False),
    ("4zmj", "7txd", 10.0, 3.5, False, False),
    ("1q3q", "1q3q", 3.5, 10.0, True, False),
    ("6v8o", "6v8o", 10.0, 4.0, False, True),
    ("7t4n", "7t4n", 3.5, 10.0, False, False),
    ("6gl7", "6gl7", 3.5, 6.0, True, True),
    ("7w9w", "7w9w", 10.0, 3.5, True, False),
    ("1e6v", "1e6v", 3.5, 10.0, True, True),
    ("7n00", "7n00", 3.5, 10.0, False, False),
    ("6swy", "6swy", 10.0, 3.5, False, True),
    ("1gyt", "1gyt", 3.5, 10.0, True, False),
    ("adk_open", "adk_closed", 3.5, 10.0, False, False),
]
# (model, chain, source res, target (sim res, on 5 A grid))
CHAIN = [
    ("4zmj", "G", 5.0, (8.0, False)),
    ("7txd", "G", 4.0, (6.0, False)),
    ("5vn3", "C", 6.0, (10.0, True)),
    ("4tvp", "D", 4.0, (8.0, False)),
    ("8fad", "C", 5.0, (6.5, True)),
    ("1iok", "A", 4.0, (10.0, False)),
    ("1q3q", "B", 6.0, (8.0, True)),
    ("7p6a", "A", 4.0, (6.0, False)),
    ("7w9w", "B", 5.0, (8.0, False)),
    ("7b5o", "B", 4.0, (6.5, False)),
    ("7mjs", "C", 5.0, (8.0, True)),
    ("6gl7", "F", 4.0, (7.0, False)),
    ("6v8o", "N", 5.0, (8.0, False)),
    ("6v8o", "I", 4.0, (6.0, True)),
    ("3j6r", "B", 6.0, (9.0, False)),
    ("4yvs", "A", 4.0, (6.0, False)),
    ("1e6v", "C", 5.0, (8.0, True)),
    ("4zxb", "A", 4.0, (7.0, False)),
    ("5ni1", "B", 4.0, (6.0, False)),
    ("7n00", "A", 5.0, (8.0, False)),
    ("7nqk", "B", 4.0, (6.5, False)),
    ("6yeg", "C", 4.0, (8.0, True)),
    ("6swy", "8", 5.0, (7.0, False)),
    ("3sn6", "R", 4.0, (8.0, False)),
    ("1gyt", "D", 5.0, (10.0, False)),
    ("1igt", "A", 4.0, (6.0, True)),
    ("2bgj", "B", 6.0, (8.0, False)),
    ("7t4n", "B", 5.0, (9.0, False)),
]
# real maps: ("model", model, map, source res) | ("chain", model, map, source res) | ("moved", map, model, vox, grid5)
REAL = [
    ("model", "5ni1", "emd_3488/emd_3488.mrc.gz", 4.0),
    ("model", "5me2", "emd_3488/emd_3488.mrc.gz", 8.0),
    ("moved", "emd_3488/emd_3488.mrc.gz", "5ni1", 2.0, False),
    ("moved", "emd_3488/emd_3488.mrc.gz", "5ni1", None, True),
    ("moved", "emd_11007/emd_11007.map.gz", None, 2.5, False),
    ("moved", "emd_11007/emd_11007.map.gz", None, None, True),
    ("chain", "2513A", "emd_2513_crop/emd_2513_crop.mrc.gz", 5.0),
    ("model", "2513A", "riken_segments/emd_2513A_segment.mrc.gz", 6.0),
    ("model", "1461", "emd_1461_crop/emd_1461_crop.mrc.gz", 6.0),
    ("model", "6vyb_N", "emd_21457_seg/emd_21457_seg.mrc.gz", 5.0),
    ("model", "5778", "riken_segments/emd_5778_segment.mrc.gz", 5.0),
    ("model", "5925", "riken_segments/emd_5925_segment.mrc.gz", 4.0),
    ("model", "6374", "riken_segments/emd_6374_segment.mrc.gz", 6.0),
    ("model", "6555", "riken_segments/emd_6555_segment.mrc.gz", 5.0),
    ("chain", "6272", "strudel_6272/emd_6272_crop.mrc.gz", 4.0),
    ("moved", "emd_1461_crop/emd_1461_crop.mrc.gz", "1461", 2.0, False),
    ("moved", "riken_segments/emd_6374_segment.mrc.gz", "6374", 2.0, False),
    ("moved", "riken_segments/emd_5778_segment.mrc.gz", "5778", None, True),
]


def family(model):
    return MODELS[model][1] if model in MODELS else "emd_11007"


def all_cases():
    """[(set, case_id, builder, args, resolution draw)] in a fixed order."""
    out = []

    def add(kind, model, cid, builder, args):
        out.append((set_name(part_of(family(model)), kind), cid, builder, args))

    for m in GLOBAL:
        add("global", m, f"global_{m}", "global", (m,))
    for m in GRID5:
        add("grid5", m, f"grid5_{m}", "grid5", (m,))
    for s, t, sc, tc in REAL_STATES:
        add("states", s, f"states_{s}_to_{t}", "states_real", (s, t, sc, tc))
    for m in ANM:
        add("states", m, f"anm_{m}", "anm", (m,))
    for m in PARTIAL:
        add("partial", m, f"partial_{m}", "partial", (m,))
    for m, c in PSEUDO:
        add("pseudo", m, f"c3_{m}_{c}", "pseudo", (m, c))
    for s, t, rs, rt, g5s, g5t in RESGAP:
        add(
            "resgap",
            s,
            f"gap_{s}_{rs:g}{'g5' if g5s else ''}_to_{t}_{rt:g}{'g5' if g5t else ''}",
            "resgap",
            (s, t, rs, rt, g5s, g5t),
        )
    for m, c, rs, (rt, g5) in CHAIN:
        add("chain", m, f"chain_{m}_{c}_{rs:g}_sim{rt:g}{'g5' if g5 else ''}", "chain", (m, c, rs, ("sim", rt, g5)))
    for spec in REAL:
        if spec[0] == "moved":
            _, rel, model, vox, g5 = spec
            tag = os.path.basename(rel).split(".")[0]
            add("real", model or "emd_11007", f"moved_{tag}{'_g5' if g5 else ''}", "moved", (rel, model, vox, g5))
        else:
            what, model, rel, rs = spec
            tag = os.path.basename(rel).split(".")[0]
            kind = "chain" if what == "chain" else "real"
            add(kind, model, f"real_{what}_{model}_into_{tag}", "real_" + what, (model, rel, rs))
    return out


def build(rng, builder, args):
    if builder in ("global", "grid5"):
        return case_global(rng, d_, args[0], res(rng), res(rng), grid5=builder == "grid5")
    if builder == "states_real":
        s, t, sc, tc = args
        return case_states_real(rng, d_, s, t, res(rng, 4, 8), res(rng, 4, 8), sc, tc)
    if builder == "anm":
        return case_states_anm(rng, d_, args[0], res(rng, 4, 8), res(rng, 4, 8), float(rng.uniform(3, 10)))
    if builder == "partial":
        return mh.case_partial(rng, d_, args[0], res(rng, 4, 8), res(rng, 4, 8))
    if builder == "pseudo":
        m, c = args
        wide = rng.uniform() < 0.5
        return mh.case_pseudo(
            rng,
            d_,
            m,
            c,
            res(rng, 4, 8),
            res(rng, 5, 10),
            (0.03, 0.06) if wide else (0.015, 0.03),
            0.04 if wide else 0.0,
        )
    if builder == "resgap":
        return case_resgap(rng, d_, *args)
    if builder == "chain":
        return mh.case_chain(rng, d_, *args)
    if builder == "real_model":
        return case_real_model_into_map(rng, d_, *args)
    if builder == "real_chain":
        return case_real_chain_into_map(rng, d_, *args)
    if builder == "moved":
        return case_real_moved(rng, d_, *args)
    raise ValueError(builder)


d_ = None


def add_full_symmetry(case, model):
    """Partial complexes of a symmetric assembly: S o T_gt for every symmetry operator S of the
    whole assembly is right too. Under it every chain of the source lands on an identical chain
    of the target's complex, and where S maps the chains the source lacks onto those the target
    lacks, it superimposes more than T_gt does, so no density score can prefer T_gt; the
    count is recorded as `full_symmetry_ops` (evaluate.py's strict `rmsd` column still scores
    T_gt alone)."""
    ss, _ = mh.self_sym_ops(load(model))
    T = np.asarray(case["T_gt"], float)
    case["alt_T_gt"] = [np.asarray(A, float) for A in case["alt_T_gt"]] + [S @ T for S in ss]
    case["full_symmetry_ops"] = len(ss)
    return case


def add_source_symmetry(d, case):
    """Equivalent answers through the source's own symmetry: T_gt o S for every operator S that
    maps the source model onto itself (the target's are in alt_T_gt already); recorded as
    `source_symmetry_ops` (how many)."""
    if case["kind"] != "global":
        case["source_symmetry_ops"] = 0
        return case
    st = gemmi.read_structure(f"{d}/source_model.pdb")
    ss, _ = mh.self_sym_ops(st) if len(mh.chain_ca(st)) > 1 else ([], [])
    T = np.asarray(case["T_gt"], float)
    case["alt_T_gt"] = [np.asarray(A, float) for A in case["alt_T_gt"]] + [T @ S for S in ss]
    case["source_symmetry_ops"] = len(ss)
    return case


def main(argv=None):
    global d_
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--only", default=None, help="comma list of set names (unseen-tune-global, ...)")
    ap.add_argument("--seed", type=int, default=20261203)
    ap.add_argument("--list", action="store_true", help="print the cases and their parts, build nothing")
    a = ap.parse_args(argv)
    only = set(a.only.split(",")) if a.only else None
    for sname, cid, builder, args in all_cases():
        if only and sname not in only:
            continue
        if a.list:
            print(f"{sname}\t{cid}")
            continue
        d_ = f"{a.out}/{sname}/{cid}"
        if os.path.exists(f"{d_}/case.json"):
            case = json.load(open(f"{d_}/case.json"))
            if "source_symmetry_ops" not in case:  # built before the source's symmetry was added
                case = add_source_symmetry(d_, case)
            if builder == "partial" and "full_symmetry_ops" not in case:
                case = add_full_symmetry(case, args[0])
            mh.write_case(d_, case)
            continue
        os.makedirs(d_, exist_ok=True)
        seed = [a.seed, zlib.crc32(f"{sname}/{cid}".encode())]
        case = build(np.random.default_rng(seed), builder, args)
        molecule = args[0] if builder != "moved" else (args[1] or "emd_11007")
        case.update(
            case_id=cid,
            set=sname,
            seed=seed,
            mode=MODES[sname],
            family=family(molecule),
            part=part_of(family(molecule)),
        )
        case = add_source_symmetry(d_, case)
        if builder == "partial":
            case = add_full_symmetry(case, args[0])
        mh.write_case(d_, case)
        print(
            f"{sname}\t{cid}\t{case['kind']}\tsc={case['source_contour']:.4g}\ttc={case['target_contour']:.4g}\t"
            f"alt={len(case['alt_T_gt'])}\toverlap={case['overlap_at_gt']}",
            flush=True,
        )


if __name__ == "__main__":
    main()
