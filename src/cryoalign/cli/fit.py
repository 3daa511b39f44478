"""`cryoalign fit`: place each chain of a model into a map (ranked placements, one assembled model)."""

from __future__ import annotations

import json
import os

from .common import _refuse_overwriting_inputs, _scan_note, _split_chains, add_exhaustive, add_quiet, add_seed


def add_parser(sub, d) -> None:
    f = sub.add_parser(
        "fit",
        help="place each chain of MODEL into MAP (ranked placements)",
        description="Simulate each chain's density at the map's resolution, align it "
        "locally into MAP, and write the top placements of every chain, "
        "a score table and one assembled model without clashes.",
    )
    f.add_argument("model", help="PDB/mmCIF model (its chains are placed one by one)")
    f.add_argument("map", help="map to fit into (file or EMDB ID)")
    f.add_argument("--resolution", type=float, required=True, help="the map's resolution in Å")
    f.add_argument("--chains", default=None, help="comma-separated chain names (default: all)")
    f.add_argument("--top", type=int, default=5, help="placements kept per chain (default 5)")
    f.add_argument(
        "--contour",
        type=float,
        default=None,
        help="the map's contour level (EMDB recommended level); estimated if omitted",
    )
    f.add_argument("--jobs", type=int, default=None, help="worker processes (default: all cores)")
    f.add_argument(
        "--sampling",
        type=float,
        default=None,
        help=f"point-cloud sampling interval in Å (default {d.fit_sampling_A:g})",
    )
    add_seed(f, d)
    add_exhaustive(f, d)
    f.add_argument("--out-dir", default=None, help="output folder (default: MODELNAME_fit)")
    add_quiet(f, "table")


def run(args) -> int:
    from .. import io
    from ..config import AlignConfig
    from ..io.emdb import load_map

    model_stem = os.path.basename(args.model)
    for ext in (".gz", ".pdb", ".ent", ".cif", ".mmcif"):
        if model_stem.lower().endswith(ext):
            model_stem = model_stem[: -len(ext)]
    out = args.out_dir or f"{model_stem}_fit"
    config = AlignConfig(
        top=args.top, jobs=args.jobs, seed=args.seed, sampling_A=args.sampling, exhaustive=args.exhaustive
    )
    _refuse_overwriting_inputs([out], [args.model, args.map], folder=out)
    io.check_output_folder(out)
    st = io.read_model(args.model)
    density, contour = load_map(args.map, args.contour, "contour", progress=True)

    from ..apps import fit
    from ..io import outputs

    result = fit.fit_model(
        st, density, resolution_A=args.resolution, chains=_split_chains(args.chains), contour=contour, config=config
    )
    suffix = io.model_suffix(args.model)
    written, names = [], {}
    with io.output_folder(out, "cryoalign fit") as tmp:
        for c in result.chains:
            for k, cand in enumerate(c.placements, 1):
                path = os.path.join(tmp, f"chain_{c.chain}_rank{k}{suffix}")
                io.write_model(fit.chain_structure(st, c.chain, cand.T_target_source), path)
                written.append(path)
                names[(c.chain, k)] = os.path.basename(path)
        assembled = f"assembled{suffix}"
        if result.assembled:
            io.write_model(fit.assembled_structure(st, result), os.path.join(tmp, assembled))
        io.write_text(os.path.join(tmp, "placements.tsv"), fit.placement_table(result))
        io.write_text(os.path.join(tmp, "fit.json"), json.dumps(result.to_json(), indent=1) + "\n")
        final = os.path.abspath(out)
        outputs.fit_script(
            os.path.join(tmp, "fit.cxc"),
            map_path=density.path,
            contour=result.target_contour,
            assembled=os.path.join(final, assembled) if result.assembled else None,
            folder=final,
            best=[(c.chain, os.path.join(final, names[(c.chain, 1)])) for c in result.chains if c.placements],
        )
        outputs.write_fit_pictures(tmp, result, st, density, model=args.model, map_path=args.map, written=names)
    lines = ["chain  rank  score  agreement  confidence  (score = map correlation x vector agreement)"]
    for c in result.chains:
        for k, cand in enumerate(c.placements, 1):
            mark = "  <- assembled" if result.assembled.get(c.chain) == k - 1 else ""
            verdict = c.confidence["verdict"] if k == 1 and c.confidence else ""
            lines.append(
                f"{c.chain:>5}  {k:4d}  {cand.score.value:5.3f}  "
                f"{cand.score.vector_agreement:9.3f}  {verdict:>10}{mark}"
            )
    if result.left_out:
        lines.append(f"left out of the assembled model (every placement clashes): {', '.join(result.left_out)}")
    fewer = [f"{c.chain} ({len(c.placements)})" for c in result.chains if 0 < len(c.placements) < args.top]
    if fewer:
        lines.append(
            f"fewer placements than --top {args.top} for chain(s) {', '.join(fewer)}: the other coarse "
            "placements converged onto these poses when refined (placements are distinct poses, "
            f"{config.same_pose_A:g} Å or {config.same_pose_deg:g}° apart)"
        )
    lines.append(f"time {result.timings_s['total']:.2f} s" + _scan_note(result.timings_s))
    lines.append(
        f"wrote {out}/ ({len(written)} placed chain models, assembled{suffix}, "
        "placements.tsv, fit.json, fit_placements.png; open report.html, or fit.cxc in ChimeraX)"
    )
    print("\n".join(lines))
    return 0
