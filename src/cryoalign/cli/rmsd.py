"""`cryoalign rmsd`: the true RMSD of a model under an estimated transform."""

from __future__ import annotations

import json
import logging

from .common import _refuse_overwriting_inputs


def add_parser(sub, d) -> None:
    r = sub.add_parser(
        "rmsd",
        help="true RMSD of a model under an estimated transform",
        description="RMSD (Å) of MODEL moved by the estimated matrix against a reference: "
        "ground-truth matrices (the best over alternatives is also "
        "reported) or the same model fitted in the target map.",
    )
    r.add_argument("model", help="model in the source map's frame (PDB/mmCIF)")
    r.add_argument(
        "--matrix", required=True, help="estimated transform: cryoalign result JSON, or 12/16 numbers in a text file"
    )
    g = r.add_mutually_exclusive_group(required=True)
    g.add_argument("--reference", help="ground truth: JSON with 'matrix' or 'T_gt' (+ 'alt_T_gt'), or a text matrix")
    g.add_argument("--reference-model", help="the same model as fitted in the target map")
    r.add_argument("--atoms", choices=["ca", "all"], default="ca", help="CA/P trace atoms (default) or all atoms")
    r.add_argument("--json", dest="json_out", default=None, help="also write the numbers as JSON")


def run(args) -> int:
    from .. import io
    from ..apps.rmsd import load_matrices, rmsd_to_matrices, rmsd_to_model

    if args.json_out:
        io.check_writable(args.json_out)
    _refuse_overwriting_inputs(
        [args.json_out] if args.json_out else [], [args.model, args.matrix, args.reference, args.reference_model]
    )
    T_est = load_matrices(args.matrix)[0]
    if args.reference:
        res = rmsd_to_matrices(args.model, T_est, load_matrices(args.reference), atoms=args.atoms)
        print(
            f"RMSD {res['rmsd_A']:.3f} Å over {res['atoms']} {_atom_words(res['atom_kind'])}"
            + (
                f" (best over {len(res['all_references_A'])} equivalent references: {res['rmsd_sym_A']:.3f} Å)"
                if len(res["all_references_A"]) > 1
                else ""
            )
        )
    else:
        res = rmsd_to_model(args.model, T_est, args.reference_model, atoms=args.atoms)
        log = logging.getLogger("cryoalign")
        if res["paired_fraction"] < 0.95:
            log.warning(
                "warning: the reference model pairs only %d of the model's %d %s atoms (%.0f%%) by "
                "chain, residue number and atom name; the RMSD covers those only",
                res["atoms"],
                res["model_atoms"],
                res["atom_kind"],
                100 * res["paired_fraction"],
            )
        if res["residue_name_mismatches"]:
            log.warning(
                "warning: %d paired atoms belong to residues whose names differ between the two "
                "models; check that the reference is the same model",
                res["residue_name_mismatches"],
            )
        print(f"RMSD {res['rmsd_A']:.3f} Å over {res['atoms']} paired {_atom_words(res['atom_kind'])}")
    if args.json_out:
        io.write_text(args.json_out, json.dumps(res, indent=1) + "\n")
    return 0


def _atom_words(kind: str) -> str:
    return "CA/P atoms" if kind == "CA/P" else "atoms (all)"
