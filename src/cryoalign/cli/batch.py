"""`cryoalign batch`: align many pairs from a table; resumable."""

from __future__ import annotations

from .common import _alignment_config, add_alignment_options, add_quiet, add_workers


def add_parser(sub, d) -> None:
    b = sub.add_parser(
        "batch",
        help="align many pairs from a table; resumable",
        description="PAIRS.tsv has columns source, target and optional source_contour, "
        "target_contour; one line per pair is appended to RESULTS.tsv as it "
        "finishes, and a rerun skips finished pairs.",
    )
    b.add_argument("pairs", help="PAIRS.tsv")
    b.add_argument("--out", required=True, help="RESULTS.tsv (appended to; a rerun skips finished pairs)")
    add_workers(b)
    b.add_argument("--retry-errors", action="store_true", help="run the pairs that failed before again")
    b.add_argument(
        "--db",
        default=None,
        help="catalogue folder made by cryoalign index: the maps it holds are "
        "not prepared again; the pairs are aligned with its parameters "
        "(--sampling as given to index, default 5)",
    )
    add_alignment_options(b, d, part="each source is a part of its target")
    b.add_argument("--top", type=int, default=d.top, help=f"candidates per pair (default {d.top})")
    add_quiet(b, "summary")


def run(args) -> int:
    from ..apps.batching import batch

    config = _alignment_config(args, top=args.top)
    summary = batch(
        args.pairs,
        args.out,
        jobs=args.jobs,
        scheduler=args.scheduler,
        config=config,
        db=args.db,
        retry_errors=args.retry_errors,
        progress=not args.quiet,
    )
    print(
        f"{summary.pairs} pair(s): {summary.ran} run now ({summary.ok} ok, {summary.errors} error), "
        f"{summary.skipped} finished earlier; results in {args.out}"
        + (f"; report {summary.report}" if summary.report else "")
    )
    return 0
