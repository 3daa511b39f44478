"""`cryoalign align`: superimpose SOURCE on TARGET (global or local), print the matrix and its score."""

from __future__ import annotations

import json
import logging
import os
import time

from .common import (
    _alignment_config,
    _confidence_line,
    _refuse_overwriting_inputs,
    _rotation_text,
    _scan_note,
    _score_line,
    add_exhaustive,
    add_quiet,
    add_seed,
)


def add_parser(sub, d) -> None:
    a = sub.add_parser(
        "align",
        help="find T_target_source superimposing SOURCE on TARGET",
        description="Global or local alignment of two maps (CryoAlign method, then refinement on the maps).",
    )
    a.add_argument("source", help="moving map (.mrc/.map/.ccp4, optionally .gz/.bz2/.xz) or an EMDB ID (EMD-1234)")
    a.add_argument("target", help="fixed map or EMDB ID")
    a.add_argument(
        "--source-contour",
        type=float,
        default=None,
        help="source contour level (EMDB recommended level); estimated if omitted",
    )
    a.add_argument("--target-contour", type=float, default=None, help="target contour level; estimated if omitted")
    a.add_argument(
        "--sampling",
        "--voxel",
        dest="sampling",
        type=float,
        default=None,
        help="point-cloud sampling interval in Å (default: 3 for small sources such as "
        "single chains, 5 otherwise; --voxel is the old name)",
    )
    mode = a.add_mutually_exclusive_group()
    mode.add_argument(
        "--local",
        dest="mode",
        action="store_const",
        const="local",
        help="SOURCE is a part of TARGET: search spherical masks, report ranked placements "
        "(default: chosen automatically when SOURCE is under 40%% of TARGET's volume)",
    )
    mode.add_argument(
        "--global",
        dest="mode",
        action="store_const",
        const="global",
        help="whole-map alignment even when SOURCE is much smaller than TARGET",
    )
    a.add_argument("--top", type=int, default=d.top, help=f"candidates to report (default {d.top})")
    a.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="worker processes for the local search (default: all cores; results do not depend on it)",
    )
    a.add_argument(
        "--hypotheses",
        type=int,
        default=d.max_hypotheses,
        help=f"coarse poses (distinct consistent cliques) refined and scored (default {d.max_hypotheses})",
    )
    a.add_argument(
        "--check-hand",
        action="store_true",
        help="also align the mirror image of SOURCE and report whether it fits clearly better "
        "(a wrong-hand reconstruction)",
    )
    a.add_argument(
        "--flipped-out", default=None, help="with --check-hand: write the mirror image of SOURCE here (.mrc)"
    )
    a.add_argument(
        "--wide-search",
        choices=["auto", "always", "never"],
        default=d.wide_search,
        help="also search without descriptors (map-optimised random placements): when the "
        "answer is weak (auto, default), always, or never",
    )
    add_exhaustive(a, d)
    a.add_argument(
        "--no-map-refine",
        dest="map_refine",
        action="store_false",
        help="skip the final refinement on the maps (correlation about the mean)",
    )
    add_seed(a, d)
    a.add_argument(
        "--keypoints",
        choices=["dense", "meanshift"],
        default=d.keypoints,
        help="key points: every sampled point (default) or mean-shift maxima (paper)",
    )
    a.add_argument("--json", dest="json_out", default=None, help="write the result JSON here")
    a.add_argument(
        "--out-dir",
        default=None,
        help="write result.json, params.json, the source resampled on the target grid, "
        "the moved model and a ChimeraX script here",
    )
    a.add_argument(
        "--source-model",
        default=None,
        help="PDB/mmCIF model in the source map's frame to move onto the target (needs --out-dir)",
    )
    add_quiet(a, "answer")


def run(args) -> int:
    from .. import io
    from ..errors import InputError
    from ..io.emdb import load_map

    config = _alignment_config(
        args,
        keypoints=args.keypoints,
        top=args.top,
        jobs=args.jobs,
        map_refine=args.map_refine,
        check_hand=args.check_hand,
        max_hypotheses=args.hypotheses,
        wide_search=args.wide_search,
        exhaustive=args.exhaustive,
    )
    if args.flipped_out and not args.check_hand:
        raise InputError("--flipped-out needs --check-hand")
    if args.source_model and not args.out_dir:
        raise InputError("--source-model needs --out-dir (where the moved model is written)")
    for path in (args.json_out, args.flipped_out):
        if path:
            io.check_writable(path)
    _refuse_overwriting_inputs(
        [p for p in (args.json_out, args.flipped_out) if p],
        [args.source, args.target, args.source_model],
        folder=args.out_dir,
    )
    if args.out_dir:
        io.check_output_folder(args.out_dir)
    if args.flipped_out:
        io.check_map_suffix(args.flipped_out)
    source_model = io.read_model(args.source_model) if args.source_model else None
    t0 = time.perf_counter()
    src_map, source_contour = load_map(args.source, args.source_contour, "source_contour", progress=True)
    tgt_map, target_contour = load_map(args.target, args.target_contour, "target_contour", progress=True)
    logging.getLogger("cryoalign").info("read maps in %.2f s", time.perf_counter() - t0)

    from ..core.pipeline import align, mirror

    result = align(src_map, tgt_map, source_contour=source_contour, target_contour=target_contour, config=config)
    text = json.dumps(result.to_json(), indent=1) + "\n"
    if args.flipped_out:
        io.write_map(mirror(src_map)[0], args.flipped_out)
    if args.json_out:
        io.write_text(args.json_out, text)
    if args.out_dir:
        from ..io import outputs

        logging.getLogger("cryoalign").info("writing %s/ ...", args.out_dir)
        with io.output_folder(args.out_dir, "cryoalign align") as tmp:
            outputs.write_align_folder(
                tmp,
                result,
                src_map,
                tgt_map,
                source_path=src_map.path,
                target_path=tgt_map.path,
                source_model=source_model,
                model_suffix=io.model_suffix(args.source_model or ".pdb"),
                final_folder=os.path.abspath(args.out_dir),
            )
    _print_summary(result, args)
    return 0


def _print_summary(result, args) -> None:
    from .. import transform as tf

    T = result.T_target_source
    p = result.params
    s = result.score
    lines = ["T_target_source (source world Å -> target world Å):"]
    lines += ["  " + "  ".join(f"{v:11.5f}" for v in row) for row in T]
    lines.append(f"{_rotation_text(T)}; translation ({T[0, 3]:.2f}, {T[1, 3]:.2f}, {T[2, 3]:.2f}) Å")
    lines.append(_score_line(s, p["mode"]) + f"; {len(result.candidates)} candidate(s)")
    if result.confidence:
        lines.append(_confidence_line(result, "align"))
    if p["mode"] == "local" and len(result.candidates) < args.top:
        lines.append(
            f"{len(result.candidates)} distinct placement(s), fewer than --top {args.top}: the other coarse "
            "placements converged onto these poses when refined (placements are distinct poses, "
            f"{p.get('same_pose_A', 3):g} Å or {p.get('same_pose_deg', 10):g}° apart)"
        )
    if p["mode"] == "local":
        lines.append("rank  score  agreement  rotation  translation (Å)            mask centre (Å)")
        for k, c in enumerate(result.candidates, 1):
            M = c.T_target_source
            centre = ", ".join(f"{v:.1f}" for v in c.mask_centre_A) if c.mask_centre_A else "-"
            lines.append(
                f"{k:4d}  {c.score.value:5.3f}  {c.score.vector_agreement:9.3f}  "
                f"{tf.rotation_angle_deg(M):7.2f}°  ({M[0, 3]:7.2f}, {M[1, 3]:7.2f}, {M[2, 3]:7.2f})"
                f"  ({centre})"
            )
    if result.ambiguous:
        lines.append(
            f"ambiguous: {len(result.equivalent)} other pose(s) score within "
            f"{100 * p['symmetry_margin']:.0f}% of the best (symmetric assembly or identical copies):"
        )
        for k in result.equivalent:
            rel = result.relation_to_best(result.candidates[k - 1])
            ax = rel["axis"]
            lines.append(
                f"  rank {k}: score {result.candidates[k - 1].score.value:.3f}, {rel['angle_deg']:.1f} deg "
                f"about ({ax[0]:.3f}, {ax[1]:.3f}, {ax[2]:.3f}) from the best"
            )
    if result.hand is not None:
        h = result.hand
        meaning = {
            "same": "the source has the target's hand",
            "mirrored": "the mirror image fits clearly better: the source is likely the wrong hand "
            "(mirrored_matrix in the JSON)",
            "unclear": "neither hand fits clearly better",
        }[h["verdict"]]
        lines.append(f"hand: {h['verdict']} (score {h['score']:.3f}, mirrored {h['mirrored_score']:.3f}): {meaning}")
    for side in ("source", "target"):
        est = " (estimated; pass the EMDB recommended level if known)" if p[f"{side}_contour_estimated"] else ""
        lines.append(f"{side} contour {p[f'{side}_contour']:.5g}{est}")
    lines.append(
        f"mode {p['mode']}, sampling interval {p['sampling_A']:g} Å"
        + (" (chosen from the source's size)" if p.get("sampling_chosen") else "")
    )
    lines.append(f"time {result.timings_s['total']:.2f} s" + _scan_note(result.timings_s))
    if args.json_out:
        lines.append(f"wrote {args.json_out}")
    if args.out_dir:
        lines.append(f"wrote {args.out_dir}/ (open superposition.cxc in ChimeraX)")
    print("\n".join(lines))
