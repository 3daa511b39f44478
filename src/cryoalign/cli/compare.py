"""`cryoalign compare`: difference maps, FSC and correlation of two maps."""

from __future__ import annotations

import json

from .common import (
    _alignment_config,
    _confidence_line,
    _refuse_overwriting_inputs,
    _rotation_text,
    _score_line,
    add_alignment_options,
    add_quiet,
)


def add_parser(sub, d) -> None:
    c = sub.add_parser(
        "compare",
        help="difference maps (kDa per blob), FSC and correlation of two maps",
        description="Superimpose SOURCE on TARGET (or take --matrix), put both on one density "
        "scale, and report the differences both ways (volume, mass, blobs), the "
        "FSC and the correlation; pictures and report.html with --out-dir.",
    )
    c.add_argument("source", help="map (file or EMDB ID)")
    c.add_argument("target", help="map (file or EMDB ID); differences are on its grid")
    c.add_argument("--source-contour", type=float, default=None, help="source contour (estimated if omitted)")
    c.add_argument("--target-contour", type=float, default=None, help="target contour (estimated if omitted)")
    c.add_argument(
        "--matrix", default=None, help="use this transform (a result JSON, or 12/16 numbers) instead of aligning"
    )
    c.add_argument(
        "--density",
        type=float,
        default=0.81,
        help="Da per Å^3 of difference volume (default 0.81, protein; use a higher value for RNA-rich maps)",
    )
    c.add_argument("--min-blob", type=float, default=None, help="smallest difference blob kept, Å^3 (default 1000)")
    c.add_argument("--no-fsc-mask", dest="fsc_mask", action="store_false", help="FSC without the soft mask")
    add_alignment_options(c, d)
    c.add_argument("--jobs", type=int, default=None, help="worker processes for a local alignment")
    c.add_argument("--json", dest="json_out", default=None, help="write compare.json here")
    c.add_argument(
        "--out-dir", default=None, help="write compare.json, the difference maps, pictures and report.html here"
    )
    add_quiet(c, "summary")


def run(args) -> int:
    from .. import io
    from ..io.emdb import load_map

    config = _alignment_config(args, jobs=args.jobs)
    if args.json_out:
        io.check_writable(args.json_out)
    _refuse_overwriting_inputs(
        [p for p in (args.json_out,) if p], [args.source, args.target, args.matrix], folder=args.out_dir
    )
    if args.out_dir:
        io.check_output_folder(args.out_dir)
    src_map, source_contour = load_map(args.source, args.source_contour, "source_contour", progress=True)
    tgt_map, target_contour = load_map(args.target, args.target_contour, "target_contour", progress=True)

    from ..apps.comparison import compare, write_compare_outputs

    result = compare(
        src_map,
        tgt_map,
        source_contour=source_contour,
        target_contour=target_contour,
        matrix=args.matrix,
        config=config,
        density_Da_per_A3=args.density,
        min_blob_A3=args.min_blob,
        fsc_mask=args.fsc_mask,
    )
    text = json.dumps(result.to_json(), indent=1) + "\n"
    if args.json_out:
        io.write_text(args.json_out, text)
    if args.out_dir:
        with io.output_folder(args.out_dir, "cryoalign compare") as tmp:
            write_compare_outputs(result, tmp, target_map_path=tgt_map.path)
    T = result.T_target_source
    aligned = result.alignment
    lines = [
        "T_target_source (source world Å -> target world Å"
        + (", found by the alignment):" if aligned is not None else ", as given by --matrix):")
    ]
    lines += ["  " + "  ".join(f"{v:11.5f}" for v in row) for row in T]
    lines.append(f"{_rotation_text(T)}; translation ({T[0, 3]:.2f}, {T[1, 3]:.2f}, {T[2, 3]:.2f}) Å")
    if aligned is not None:
        lines.append(_score_line(aligned.score, aligned.params["mode"]))
        if aligned.confidence:
            lines.append(_confidence_line(aligned, "compare"))
    lines.append(
        f"scale: source x {result.scale.factor:.4g} + {result.scale.offset:.4g} ({result.scale.method}); "
        f"correlation {result.correlation:.3f}"
    )
    f = result.fsc
    lines.append(
        "FSC: 0.5 at "
        + (f"{f.resolution_at_05_A:.1f} Å" if f.resolution_at_05_A else "-")
        + ", 0.143 at "
        + (f"{f.resolution_at_0143_A:.1f} Å" if f.resolution_at_0143_A else "-")
        + (" (masked)" if f.masked else "")
    )
    for name, d in result.difference.items():
        lines.append(
            f"{name.replace('_', ' ')}: {d.mass_kDa:.1f} kDa ({d.volume_A3:.0f} Å^3) in "
            f"{len(d.blobs)} blob(s) above {d.level:.4g}"
        )
        for k, blob in enumerate(d.blobs[:5], 1):
            c = blob.centre_A
            lines.append(f"  {k}: {blob.mass_kDa:7.1f} kDa at ({c[0]:.1f}, {c[1]:.1f}, {c[2]:.1f}) Å")
    if args.json_out:
        lines.append(f"wrote {args.json_out}")
    if args.out_dir:
        lines.append(f"wrote {args.out_dir}/ (open report.html)")
    print("\n".join(lines))
    return 0
