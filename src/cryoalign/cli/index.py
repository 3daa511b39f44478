"""`cryoalign index`: prepare many maps once and store them in a searchable catalogue."""

from __future__ import annotations

import sys

from ..flags import flagged
from .common import EXIT_INPUT, add_quiet, add_workers


def add_parser(sub, d) -> None:
    ix = sub.add_parser(
        "index",
        help="prepare many maps once and store them in a searchable catalogue",
        description="Prepare every MAP (file or EMDB ID) once and store it in DIR (SQLite "
        "catalogue + compressed arrays). A rerun skips what is stored; an "
        "interrupted run continues where it stopped.",
    )
    ix.add_argument(
        "maps",
        nargs="*",
        help="maps (files or EMDB IDs); none: bring an existing catalogue up to "
        "date (the pre-filter vectors of an earlier version)",
    )
    ix.add_argument("--db", required=True, help="catalogue folder (created when missing)")
    ix.add_argument(
        "--contour-table", default=None, help="TSV of map<TAB>contour lines (others: EMDB header level, else estimated)"
    )
    ix.add_argument("--sampling", type=float, default=None, help="sampling interval in Å (default 5)")
    add_workers(ix)
    add_quiet(ix, "summary")


def run(args) -> int:
    from ..apps.catalogue import index
    from ..apps.variation import read_contour_table
    from ..config import AlignConfig

    contours = read_contour_table(args.contour_table) if args.contour_table else None
    summary = index(
        args.maps,
        args.db,
        contours=contours,
        config=AlignConfig(sampling_A=args.sampling),
        jobs=args.jobs,
        scheduler=args.scheduler,
        progress=not args.quiet,
    )
    for name, message in summary.errors:
        print(f"cryoalign: error: {name}: {flagged(message, 'index')}", file=sys.stderr)
    print(
        f"{summary.indexed} indexed, {summary.skipped} already in {args.db}, {len(summary.errors)} failed; "
        f"{summary.entries} entries ({summary.time_s:.1f} s)"
    )
    return EXIT_INPUT if summary.errors else 0
