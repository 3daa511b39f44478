"""Atomic models in and out: PDB and mmCIF (optionally gzipped) through gemmi."""

from __future__ import annotations

import os

import numpy as np

from ..errors import InputError, one_line
from .files import atomic_write


def read_model(path):
    """Read a PDB or mmCIF model (optionally gzipped) as a `gemmi.Structure`.

    Hydrogens and waters are kept as in the file; an empty or unparseable file
    raises `InputError`.
    """
    import gemmi

    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputError(f"model file not found: {path}; check the path")
    try:
        st = gemmi.read_structure(path)
    except Exception as exc:  # gemmi raises RuntimeError/ValueError with a parser message
        raise InputError(f"cannot parse model {path}: {one_line(exc, 200)}; pass a PDB or mmCIF file") from None
    if len(st) == 0 or st[0].count_atom_sites() == 0:
        raise InputError(f"model {path} contains no atoms; pass a PDB or mmCIF file with coordinates")
    st.setup_entities()
    return st


def model_coordinates(st, *, selection: str = "all") -> np.ndarray:
    """(N, 3) coordinates (Å) of the first model's atoms.

    selection: "all", or "ca" (CA of amino acids and P of nucleotides).
    """
    out = []
    for chain in st[0]:
        for res in chain:
            for atom in res:
                if selection == "ca" and not is_trace_atom(res, atom):
                    continue
                out.append((atom.pos.x, atom.pos.y, atom.pos.z))
    return np.array(out, float).reshape(-1, 3)


def is_trace_atom(res, atom) -> bool:
    return (atom.name == "CA" and atom.element.name == "C") or (atom.name == "P" and atom.element.name == "P")


def chain_trace(st, chain_name) -> np.ndarray:
    """CA/P coordinates of a chain (all atoms if it has no trace atoms, e.g. a ligand)."""
    pts, all_pts = [], []
    for chain in st[0]:
        if chain.name != chain_name:
            continue
        for res in chain:
            for atom in res:
                all_pts.append(atom.pos.tolist())
                if is_trace_atom(res, atom):
                    pts.append(atom.pos.tolist())
    return np.array(pts or all_pts, float).reshape(-1, 3)


def transform_model(st, T_target_source: np.ndarray):
    """Return a copy of `st` with every model's atoms moved by the 4x4 transform."""
    import gemmi

    T = np.asarray(T_target_source, float)
    moved = st.clone()
    tr = gemmi.Transform(gemmi.Mat33(T[:3, :3].tolist()), gemmi.Vec3(*T[:3, 3]))
    for model in moved:
        model.transform_pos_and_adp(tr)
    return moved


def write_model(st, path) -> None:
    """Write PDB (``.pdb``/``.ent``) or mmCIF (``.cif``/``.mmcif``) by suffix."""
    path = os.fspath(path)
    lower = path.lower()
    if lower.endswith((".cif", ".mmcif")):

        def _write(tmp):
            st.make_mmcif_document().write_file(tmp)
    elif lower.endswith((".pdb", ".ent")):

        def _write(tmp):
            st.write_pdb(tmp)
    else:
        raise InputError(f"cannot tell the model format of {path}: use a .pdb or .cif suffix")
    atomic_write(path, _write)


def model_suffix(path) -> str:
    """Suffix for writing a model that was read from `path` (keeps PDB vs mmCIF)."""
    lower = os.fspath(path).lower()
    if lower.endswith(".gz"):
        lower = lower[:-3]
    return ".cif" if lower.endswith((".cif", ".mmcif")) else ".pdb"
