"""`cryoalign variance`: mean, variance and principal components over many aligned maps."""

from __future__ import annotations

from .common import _alignment_config, _refuse_overwriting_inputs, add_alignment_options, add_quiet, add_workers


def add_parser(sub, d) -> None:
    v = sub.add_parser(
        "variance",
        help="mean, variance and principal components over many aligned maps",
        description="Align every MAP to REFERENCE, resample and scale it onto the reference's "
        "grid, and accumulate the mean and variance (streaming, float64). "
        "Interrupted runs continue where they stopped.",
    )
    v.add_argument("reference", help="reference map (its grid and frame are used)")
    v.add_argument("maps", nargs="+", help="the series of maps (at least two)")
    v.add_argument("--reference-contour", type=float, default=None, help="reference contour (estimated if omitted)")
    v.add_argument("--contour-table", default=None, help="TSV of map<TAB>contour lines (others are estimated)")
    v.add_argument("--out-dir", default="variance_out", help="output folder (default variance_out)")
    add_workers(v)
    v.add_argument("--keep-all", action="store_true", help="keep maps whose alignment score is an outlier")
    v.add_argument("--components", type=int, default=0, help="principal components to write (default 0)")
    add_alignment_options(v, d, "global", part="each MAP is a part of REFERENCE")
    add_quiet(v, "summary")


def run(args) -> int:
    from ..apps.variation import read_contour_table, variance
    from ..io.files import check_work_folder

    config = _alignment_config(args, jobs=1)
    contours = read_contour_table(args.contour_table) if args.contour_table else None
    _refuse_overwriting_inputs([], [args.reference, *args.maps, args.contour_table], folder=args.out_dir)
    check_work_folder(args.out_dir, "--out-dir")  # a file, an unwritable place, someone else's files: refused
    result = variance(
        args.reference,
        args.maps,
        contours=contours,
        reference_contour=args.reference_contour,
        out_dir=args.out_dir,
        jobs=args.jobs,
        scheduler=args.scheduler,
        keep_all=args.keep_all,
        components=args.components,
        config=config,
        progress=not args.quiet,
    )

    kept = [r for r in result.records if not r.get("excluded")]
    lines = [f"{len(kept)} of {len(result.records)} maps in the variance"]
    for r in result.records:
        if r.get("excluded"):
            lines.append(f"  left out: {r['map']} ({r.get('reason')})")
    for comp in getattr(result, "components", []) or []:
        lines.append(f"  component {comp['index']}: {100 * comp['share']:.1f}% of the variance")
    lines.append(f"wrote {args.out_dir}/ (mean.mrc, variance.mrc, alignments.tsv; open report.html)")
    print("\n".join(lines))
    return 0
