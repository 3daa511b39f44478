"""True RMSD of a model under an estimated transform (the paper's accuracy metric).

Reference either as transforms (ground truth, plus symmetry-equivalent
alternatives: the best is reported too) or as the same model fitted in the
target map (atoms paired by chain, residue number, insertion code, atom name).
"""

from __future__ import annotations

import json
import os

import numpy as np

from .. import transform as tf
from ..errors import InputError
from ..io.models import is_trace_atom, model_coordinates, read_model


def load_matrices(path) -> list[np.ndarray]:
    """4x4 matrices from a file: a cryoalign result JSON ("matrix"), a benchmark
    case.json ("T_gt" and "alt_T_gt"), or text with 12 (3x4) or 16 (4x4) numbers.
    The first is the primary one; the rest are equivalent alternatives."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputError(f"matrix file not found: {path}")
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(
            f"cannot read matrix file {path} ({exc.__class__.__name__}); give a JSON or text file with the matrix"
        ) from None
    mats = []
    try:
        doc = json.loads(text)
    except json.JSONDecodeError:
        doc = None
    if isinstance(doc, dict):
        for key in ("matrix", "T_gt", "T_target_source"):
            if key in doc:
                mats.append(doc[key])
                break
        mats += list(doc.get("alt_T_gt", []))
    elif isinstance(doc, list):
        mats.append(doc)
    else:
        try:
            mats.append([float(v) for v in text.replace(",", " ").split()])
        except ValueError:
            mats = []
    out = [as_rigid(m, f" in {path}") for m in mats]
    if not out:
        raise InputError(
            f"no matrix found in {path}: give a cryoalign result JSON (key 'matrix'), "
            "a case.json ('T_gt'), or 12/16 numbers in row-major order"
        )
    return out


def as_rigid(m, where: str = "") -> np.ndarray:
    """`m` (12 or 16 numbers, row-major) as a 4x4 rigid transform; InputError naming the
    problem otherwise.  where: " in FILE" for messages."""
    try:
        a = np.asarray(m, float)
    except (ValueError, TypeError):
        raise InputError(f"matrix{where} is not a list of numbers; give a 4x4 (or 3x4) rigid transform") from None
    if a.size == 12:
        a = np.vstack([a.reshape(3, 4), [0, 0, 0, 1]])
    elif a.size == 16:
        a = a.reshape(4, 4)
    else:
        raise InputError(f"matrix{where} has {a.size} numbers; expected 12 (3x4) or 16 (4x4)")
    if not np.all(np.isfinite(a)):
        raise InputError(f"matrix{where} has non-finite values")
    if not np.allclose(a[3], [0, 0, 0, 1], atol=1e-6):
        raise InputError(
            f"matrix{where} has last row {a[3].tolist()}, not 0 0 0 1; give it in row-major order (rows of R | t)"
        )
    R = a[:3, :3]
    if not np.allclose(R @ R.T, np.eye(3), atol=2e-3) or np.linalg.det(R) < 0:
        raise InputError(
            f"matrix{where} is not a rigid transform (its 3x3 part is not a proper "
            "rotation); give it in row-major order (rows of R | t)"
        )
    return a


def rmsd_to_matrices(model_path, T_est: np.ndarray, references: list[np.ndarray], *, atoms: str = "ca") -> dict:
    """RMSD between the model moved by T_est and by each reference transform."""
    X, kind = _coords(model_path, atoms)
    values = [tf.rmsd(T_est, R, X) for R in references]
    return {
        "rmsd_A": values[0],
        "rmsd_sym_A": min(values),
        "atoms": len(X),
        "atom_kind": kind,
        "all_references_A": values,
    }


def rmsd_to_model(model_path, T_est: np.ndarray, reference_model_path, *, atoms: str = "ca") -> dict:
    """RMSD between the model moved by T_est and the same model fitted in the target."""
    a = _keyed(read_model(model_path), atoms)
    b = _keyed(read_model(reference_model_path), atoms)
    keys = sorted(set(a) & set(b))
    if len(keys) < 3:
        raise InputError(
            f"only {len(keys)} atoms of {model_path} match {reference_model_path} by chain, "
            "residue number and atom name; the reference must be the same model fitted in the target"
        )
    X = np.array([a[k][0] for k in keys])
    Y = np.array([b[k][0] for k in keys])
    renamed = sum(1 for k in keys if a[k][1] != b[k][1])
    d = tf.apply(T_est, X) - Y
    return {
        "rmsd_A": float(np.sqrt((d**2).sum(1).mean())),
        "atoms": len(keys),
        "atom_kind": "CA/P" if atoms == "ca" else "all",
        "model_atoms": len(a),
        "paired_fraction": len(keys) / len(a),
        "residue_name_mismatches": renamed,
    }


def _coords(path, atoms):
    """Coordinates and what they are: CA/P trace atoms (all atoms when the model has none)."""
    st = read_model(path)
    if atoms == "ca":
        X = model_coordinates(st, selection="ca")
        if len(X):
            return X, "CA/P"
    return model_coordinates(st, selection="all"), "all"


def _keyed(st, atoms):
    out = {}
    for chain in st[0]:
        for res in chain:
            for atom in res:
                if atoms == "ca" and not is_trace_atom(res, atom):
                    continue
                out[(chain.name, res.seqid.num, res.seqid.icode, atom.name, atom.altloc)] = (
                    (atom.pos.x, atom.pos.y, atom.pos.z),
                    res.name,
                )
    return out
