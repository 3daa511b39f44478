"""`cryoalign search`: rank the maps of a catalogue by how well they superimpose on a query."""

from __future__ import annotations

import json
import os

from .common import _refuse_overwriting_inputs, add_quiet, add_workers


def _catalogue_default(name: str) -> int:
    from ..apps import catalogue

    return getattr(catalogue, name)


def add_parser(sub, d) -> None:
    se = sub.add_parser(
        "search",
        help="rank the maps of a catalogue by how well they superimpose on QUERY",
        description="Prepare QUERY, rank the whole catalogue by a rotation-invariant shape "
        "vector, screen the closest entries on the query from their stored "
        "features, align the best of them fully and rank them by score = alignment "
        "score (map correlation x vector agreement) x coverage (the share of the "
        "query the entry covers), so a part of the query that fits well ranks "
        "below the whole.",
    )
    se.add_argument("query", help="query map (.mrc/.map/.ccp4, optionally .gz/.bz2/.xz, or an EMDB ID)")
    se.add_argument("--db", required=True, help="catalogue folder made by cryoalign index")
    se.add_argument(
        "--contour", type=float, default=None, help="query contour (EMDB header level or estimated if omitted)"
    )
    se.add_argument("--top", type=int, default=10, help="hits to report (default 10)")
    se.add_argument(
        "--prefilter",
        type=int,
        default=_catalogue_default("PREFILTER"),
        help=f"entries screened after the pre-filter (default {_catalogue_default('PREFILTER')}; "
        "0 screens every entry)",
    )
    se.add_argument(
        "--refine",
        type=int,
        default=_catalogue_default("REFINE"),
        help=f"of them, aligned with the full pipeline (default {_catalogue_default('REFINE')})",
    )
    se.add_argument("--sampling", type=float, default=None, help="sampling interval in Å (as the index)")
    add_workers(se)
    se.add_argument("--json", dest="json_out", default=None, help="write the hits as JSON here")
    se.add_argument(
        "--out-dir",
        default=None,
        help="write hits.json, search_hits.png (the best hits moved onto the query) and report.html here",
    )
    add_quiet(se, "table")


def run(args) -> int:
    from .. import io
    from ..apps.catalogue import format_table, search
    from ..config import AlignConfig

    if args.json_out:
        io.check_writable(args.json_out)
        _refuse_overwriting_inputs([args.json_out], [args.query])
    if args.out_dir:
        _refuse_overwriting_inputs([], [args.query], folder=args.out_dir)
        io.check_output_folder(args.out_dir)
    result = search(
        args.query,
        args.db,
        contour=args.contour,
        top=args.top,
        prefilter=args.prefilter or None,
        refine=args.refine,
        config=AlignConfig(sampling_A=args.sampling),
        jobs=args.jobs,
        scheduler=args.scheduler,
        progress=not args.quiet,
    )
    text = json.dumps(result.to_json(), indent=1) + "\n"
    if args.json_out:
        io.write_text(args.json_out, text)
    if args.out_dir:
        from ..io import outputs

        with io.output_folder(args.out_dir, "cryoalign search") as tmp:
            io.write_text(os.path.join(tmp, "hits.json"), text)
            outputs.write_search_pictures(tmp, result, args.query)
    print(format_table(result) + (f"\nwrote {args.out_dir}/ (hits.json; open report.html)" if args.out_dir else ""))
    return 0
