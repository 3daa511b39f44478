"""Command line: argument parsing -> library call -> files out. No math here.

    cryoalign align SOURCE TARGET [--source-contour A] [--target-contour B] [--voxel V]
                    [--local | --global] [--top N] [--jobs J] [--no-map-refine]
                    [--seed S] [--json OUT] [--out-dir DIR] [--source-model MODEL] [--quiet]
    cryoalign fit MODEL MAP --resolution R [--chains A,B] [--top 5] [--contour C] [--out-dir DIR]
    cryoalign simulate MODEL --resolution R -o MAP [--chains A,B] [--voxel V]
    cryoalign rmsd MODEL --matrix RESULT.json (--reference GT | --reference-model FITTED)

Exit codes: 0 success, 2 bad input (one line naming the problem and the fix),
1 internal error.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time


EXIT_INPUT = 2
EXIT_INTERNAL = 1


def _parser() -> argparse.ArgumentParser:
    from . import __version__
    from .config import AlignConfig

    d = AlignConfig()
    p = argparse.ArgumentParser(prog="cryoalign", description="Superimpose cryo-EM density maps.")
    p.add_argument("--version", action="version", version=f"cryoalign {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    def add_seed(parser):
        parser.add_argument("--seed", type=int, default=d.seed, help="seed of every random choice (default 0)")

    def add_quiet(parser, still_printed=None):
        parser.add_argument("--quiet", action="store_true", help="no progress messages" + (
            f" (the {still_printed} is still printed)" if still_printed else ""))

    def add_workers(parser):
        parser.add_argument("--jobs", type=int, default=None, help="worker processes (default: all cores)")
        parser.add_argument("--scheduler", default=None, help="Dask scheduler address (tcp://host:8786)")

    a = sub.add_parser("align", help="find T_target_source superimposing SOURCE on TARGET",
                       description="Global or local alignment of two maps (CryoAlign method, then "
                                   "refinement on the maps).")
    a.add_argument("source", help="moving map (.mrc/.map/.ccp4, optionally .gz/.bz2/.xz) or an EMDB ID (EMD-1234)")
    a.add_argument("target", help="fixed map or EMDB ID")
    a.add_argument("--source-contour", type=float, default=None,
                   help="source contour level (EMDB recommended level); estimated if omitted")
    a.add_argument("--target-contour", type=float, default=None,
                   help="target contour level; estimated if omitted")
    a.add_argument("--sampling", "--voxel", dest="sampling", type=float, default=None,
                   help="point-cloud sampling interval in Å (default: 3 for small sources such as "
                        "single chains, 5 otherwise; --voxel is the old name)")
    mode = a.add_mutually_exclusive_group()
    mode.add_argument("--local", dest="mode", action="store_const", const="local",
                      help="SOURCE is a part of TARGET: search spherical masks, report ranked placements "
                           "(default: chosen automatically when SOURCE is under 40%% of TARGET's volume)")
    mode.add_argument("--global", dest="mode", action="store_const", const="global",
                      help="whole-map alignment even when SOURCE is much smaller than TARGET")
    a.add_argument("--top", type=int, default=d.top, help=f"candidates to report (default {d.top})")
    a.add_argument("--jobs", type=int, default=None,
                   help="worker processes for the local search (default: all cores; results do not "
                        "depend on it)")
    a.add_argument("--hypotheses", type=int, default=d.max_hypotheses,
                   help=f"coarse poses (distinct consistent cliques) refined and scored (default {d.max_hypotheses})")
    a.add_argument("--check-hand", action="store_true",
                   help="also align the mirror image of SOURCE and report whether it fits clearly better "
                        "(a wrong-hand reconstruction)")
    a.add_argument("--flipped-out", default=None,
                   help="with --check-hand: write the mirror image of SOURCE here (.mrc)")
    a.add_argument("--wide-search", choices=["auto", "always", "never"], default=d.wide_search,
                   help="also search without descriptors (map-optimised random placements): when the "
                        "answer is weak (auto, default), always, or never")
    add_exhaustive(a, d)
    a.add_argument("--no-map-refine", dest="map_refine", action="store_false",
                   help="skip the final refinement on the maps (correlation about the mean)")
    add_seed(a)
    a.add_argument("--keypoints", choices=["dense", "meanshift"], default=d.keypoints,
                   help="key points: every sampled point (default) or mean-shift maxima (paper)")
    a.add_argument("--json", dest="json_out", default=None, help="write the result JSON here")
    a.add_argument("--out-dir", default=None,
                   help="write result.json, params.json, the source resampled on the target grid, "
                        "the moved model and a ChimeraX script here")
    a.add_argument("--source-model", default=None, help="PDB/mmCIF model in the source map's frame "
                                                        "to move onto the target (needs --out-dir)")
    add_quiet(a, "answer")

    f = sub.add_parser("fit", help="place each chain of MODEL into MAP (ranked placements)",
                       description="Simulate each chain's density at the map's resolution, align it "
                                   "locally into MAP, and write the top placements of every chain, "
                                   "a score table and one assembled model without clashes.")
    f.add_argument("model", help="PDB/mmCIF model (its chains are placed one by one)")
    f.add_argument("map", help="map to fit into (file or EMDB ID)")
    f.add_argument("--resolution", type=float, required=True, help="the map's resolution in Å")
    f.add_argument("--chains", default=None, help="comma-separated chain names (default: all)")
    f.add_argument("--top", type=int, default=5, help="placements kept per chain (default 5)")
    f.add_argument("--contour", type=float, default=None,
                   help="the map's contour level (EMDB recommended level); estimated if omitted")
    f.add_argument("--jobs", type=int, default=None, help="worker processes (default: all cores)")
    f.add_argument("--sampling", type=float, default=None,
                   help=f"point-cloud sampling interval in Å (default {d.fit_sampling_A:g})")
    add_seed(f)
    add_exhaustive(f, d)
    f.add_argument("--out-dir", default=None, help="output folder (default: MODELNAME_fit)")
    add_quiet(f, "table")

    s = sub.add_parser("simulate", help="density map of a model (molmap style)",
                       description="One Gaussian per heavy atom (sigma = 0.225 x resolution, height = "
                                   "atomic number), on a grid of resolution/3 Å.")
    s.add_argument("model", help="PDB/mmCIF model")
    s.add_argument("--resolution", type=float, required=True, help="resolution in Å")
    s.add_argument("-o", "--output", required=True, help="map to write (.mrc, .map, .ccp4; add .gz to compress)")
    s.add_argument("--chains", default=None, help="comma-separated chain names (default: all)")
    s.add_argument("--voxel", type=float, default=None, help="voxel size in Å (default resolution/3)")
    add_quiet(s)

    def add_alignment_options(parser, default_mode=None, part="SOURCE is a part of TARGET"):
        group = parser.add_mutually_exclusive_group()
        group.add_argument("--local", dest="mode", action="store_const", const="local",
                           help=f"{part} (local alignment)" + (" instead of the default whole-map alignment"
                                                               if default_mode == "global" else ""))
        group.add_argument("--global", dest="mode", action="store_const", const="global",
                           help="whole-map alignment" + (" (default)" if default_mode == "global" else ""))
        parser.set_defaults(mode=default_mode)
        parser.add_argument("--sampling", type=float, default=None,
                            help="point-cloud sampling interval in Å (default: chosen from the source's size)")
        add_seed(parser)

    c = sub.add_parser("compare", help="difference maps (kDa per blob), FSC and correlation of two maps",
                       description="Superimpose SOURCE on TARGET (or take --matrix), put both on one density "
                                   "scale, and report the differences both ways (volume, mass, blobs), the "
                                   "FSC and the correlation; pictures and report.html with --out-dir.")
    c.add_argument("source", help="map (file or EMDB ID)")
    c.add_argument("target", help="map (file or EMDB ID); differences are on its grid")
    c.add_argument("--source-contour", type=float, default=None, help="source contour (estimated if omitted)")
    c.add_argument("--target-contour", type=float, default=None, help="target contour (estimated if omitted)")
    c.add_argument("--matrix", default=None, help="use this transform (a result JSON, or 12/16 numbers) "
                                                  "instead of aligning")
    c.add_argument("--density", type=float, default=0.81,
                   help="Da per Å^3 of difference volume (default 0.81, protein; use a higher value "
                        "for RNA-rich maps)")
    c.add_argument("--min-blob", type=float, default=None, help="smallest difference blob kept, Å^3 (default 1000)")
    c.add_argument("--no-fsc-mask", dest="fsc_mask", action="store_false", help="FSC without the soft mask")
    add_alignment_options(c)
    c.add_argument("--jobs", type=int, default=None, help="worker processes for a local alignment")
    c.add_argument("--json", dest="json_out", default=None, help="write compare.json here")
    c.add_argument("--out-dir", default=None, help="write compare.json, the difference maps, pictures and "
                                                   "report.html here")
    add_quiet(c, "summary")

    v = sub.add_parser("variance", help="mean, variance and principal components over many aligned maps",
                       description="Align every MAP to REFERENCE, resample and scale it onto the reference's "
                                   "grid, and accumulate the mean and variance (streaming, float64). "
                                   "Interrupted runs continue where they stopped.")
    v.add_argument("reference", help="reference map (its grid and frame are used)")
    v.add_argument("maps", nargs="+", help="the series of maps (at least two)")
    v.add_argument("--reference-contour", type=float, default=None, help="reference contour (estimated if omitted)")
    v.add_argument("--contour-table", default=None, help="TSV of map<TAB>contour lines (others are estimated)")
    v.add_argument("--out-dir", default="variance_out", help="output folder (default variance_out)")
    add_workers(v)
    v.add_argument("--keep-all", action="store_true", help="keep maps whose alignment score is an outlier")
    v.add_argument("--components", type=int, default=0, help="principal components to write (default 0)")
    add_alignment_options(v, "global", part="each MAP is a part of REFERENCE")
    add_quiet(v, "summary")

    b = sub.add_parser("batch", help="align many pairs from a table; resumable",
                       description="PAIRS.tsv has columns source, target and optional source_contour, "
                                   "target_contour; one line per pair is appended to RESULTS.tsv as it "
                                   "finishes, and a rerun skips finished pairs.")
    b.add_argument("pairs", help="PAIRS.tsv")
    b.add_argument("--out", required=True, help="RESULTS.tsv (appended to; a rerun skips finished pairs)")
    add_workers(b)
    b.add_argument("--retry-errors", action="store_true", help="run the pairs that failed before again")
    b.add_argument("--db", default=None, help="catalogue folder made by cryoalign index: the maps it holds are "
                                              "not prepared again; the pairs are aligned with its parameters "
                                              "(--sampling as given to index, default 5)")
    add_alignment_options(b, part="each source is a part of its target")
    b.add_argument("--top", type=int, default=d.top, help=f"candidates per pair (default {d.top})")
    add_quiet(b, "summary")

    ix = sub.add_parser("index", help="prepare many maps once and store them in a searchable catalogue",
                        description="Prepare every MAP (file or EMDB ID) once and store it in DIR (SQLite "
                                    "catalogue + compressed arrays). A rerun skips what is stored; an "
                                    "interrupted run continues where it stopped.")
    ix.add_argument("maps", nargs="*", help="maps (files or EMDB IDs); none: bring an existing catalogue up to "
                                            "date (the pre-filter vectors of an earlier version)")
    ix.add_argument("--db", required=True, help="catalogue folder (created when missing)")
    ix.add_argument("--contour-table", default=None, help="TSV of map<TAB>contour lines (others: EMDB "
                                                          "header level, else estimated)")
    ix.add_argument("--sampling", type=float, default=None, help="sampling interval in Å (default 5)")
    add_workers(ix)
    add_quiet(ix, "summary")

    se = sub.add_parser("search", help="rank the maps of a catalogue by how well they superimpose on QUERY",
                        description="Prepare QUERY, rank the whole catalogue by a rotation-invariant shape "
                                    "vector, screen the closest entries on the query from their stored "
                                    "features, align the best of them fully and rank them by score = alignment "
                                    "score (map correlation x vector agreement) x coverage (the share of the "
                                    "query the entry covers), so a part of the query that fits well ranks "
                                    "below the whole.")
    se.add_argument("query", help="query map (.mrc/.map/.ccp4, optionally .gz/.bz2/.xz, or an EMDB ID)")
    se.add_argument("--db", required=True, help="catalogue folder made by cryoalign index")
    se.add_argument("--contour", type=float, default=None, help="query contour (EMDB header level or estimated "
                                                                "if omitted)")
    se.add_argument("--top", type=int, default=10, help="hits to report (default 10)")
    se.add_argument("--prefilter", type=int, default=_catalogue_default("PREFILTER"),
                    help=f"entries screened after the pre-filter (default {_catalogue_default('PREFILTER')}; "
                         "0 screens every entry)")
    se.add_argument("--refine", type=int, default=_catalogue_default("REFINE"),
                    help=f"of them, aligned with the full pipeline (default {_catalogue_default('REFINE')})")
    se.add_argument("--sampling", type=float, default=None, help="sampling interval in Å (as the index)")
    add_workers(se)
    se.add_argument("--json", dest="json_out", default=None, help="write the hits as JSON here")
    se.add_argument("--out-dir", default=None, help="write hits.json, search_hits.png (the best hits moved onto "
                                                    "the query) and report.html here")
    add_quiet(se, "table")

    r = sub.add_parser("rmsd", help="true RMSD of a model under an estimated transform",
                       description="RMSD (Å) of MODEL moved by the estimated matrix against a reference: "
                                   "ground-truth matrices (the best over alternatives is also "
                                   "reported) or the same model fitted in the target map.")
    r.add_argument("model", help="model in the source map's frame (PDB/mmCIF)")
    r.add_argument("--matrix", required=True,
                   help="estimated transform: cryoalign result JSON, or 12/16 numbers in a text file")
    g = r.add_mutually_exclusive_group(required=True)
    g.add_argument("--reference", help="ground truth: JSON with 'matrix' or 'T_gt' (+ 'alt_T_gt'), "
                                       "or a text matrix")
    g.add_argument("--reference-model", help="the same model as fitted in the target map")
    r.add_argument("--atoms", choices=["ca", "all"], default="ca",
                   help="CA/P trace atoms (default) or all atoms")
    r.add_argument("--json", dest="json_out", default=None, help="also write the numbers as JSON")
    return p


def add_exhaustive(parser, d):
    parser.add_argument("--exhaustive", choices=["auto", "always", "never"], default=d.exhaustive,
                        help="exhaustive 6D scan (every rotation, translations by FFT) when a local or fit "
                             "answer is weak (auto, default), always (also global), or never")


def _scan_note(timings) -> str:
    t = timings.get("exhaustive scan")
    return f" (exhaustive scan {t:.2f} s)" if t else ""


# Library messages name parameters ("try source_contour=2.5"); each command shows them
# as its own flags ("try --source-contour 2.5").
_ALIGNMENT_FLAGS = {"sampling_A": "--sampling", "seed": "--seed", "mode='global'": "--global", "mode='local'": "--local"}
_WORKER_FLAGS = {"jobs": "--jobs", "scheduler": "--scheduler"}
FLAGS = {
    "align": {**_ALIGNMENT_FLAGS, **_WORKER_FLAGS, "source_contour": "--source-contour",
              "target_contour": "--target-contour", "top": "--top", "max_hypotheses": "--hypotheses",
              "wide_search": "--wide-search", "exhaustive": "--exhaustive"},
    "fit": {"contour=": "--contour", "target_contour": "--contour", "sampling_A": "--sampling", "top": "--top",
            "jobs": "--jobs", "seed": "--seed", "chains": "--chains", "resolution_A": "--resolution",
            "exhaustive": "--exhaustive"},
    "simulate": {"resolution_A": "--resolution", "voxel_A": "--voxel", "chains": "--chains"},
    "rmsd": {},
    "compare": {**_ALIGNMENT_FLAGS, "source_contour": "--source-contour", "target_contour": "--target-contour",
                "jobs": "--jobs", "matrix": "--matrix", "density_Da_per_A3": "--density",
                "min_blob_A3": "--min-blob"},
    "variance": {**_ALIGNMENT_FLAGS, **_WORKER_FLAGS, "reference_contour": "--reference-contour",
                 "contours": "--contour-table", "keep_all": "--keep-all", "components": "--components"},
    "index": {**_WORKER_FLAGS, "contours": "--contour-table", "sampling_A": "--sampling"},
    "search": {**_WORKER_FLAGS, "contour=": "--contour", "top": "--top", "prefilter": "--prefilter", "refine": "--refine",
               "sampling_A": "--sampling"},
    "batch": {**_ALIGNMENT_FLAGS, **_WORKER_FLAGS, "retry_errors": "--retry-errors", "db=": "--db", "top": "--top"},
}
VALUE_OPTIONS = ("--source-contour", "--target-contour", "--contour", "--reference-contour", "--seed", "--top",
                 "--jobs", "--sampling", "--voxel", "--resolution", "--hypotheses", "--density", "--components",
                 "--min-blob", "--prefilter")


def flagged(message: str, command: str) -> str:
    """`message` with parameter names replaced by the command's flags."""
    import re

    for name, flag in sorted(FLAGS.get(command, {}).items(), key=lambda kv: -len(kv[0])):
        if name.endswith("="):          # a plain word ("contour"): only where it is set to a value
            message = re.sub(rf"(?<![\w-]){re.escape(name)}(\S+)", lambda m: f"{flag} {m.group(1)}", message)
            continue
        if "=" in name:
            message = message.replace(name, flag)
            continue
        message = re.sub(rf"(?<![\w-]){re.escape(name)}=(\S+)", lambda m: f"{flag} {m.group(1)}", message)
        message = re.sub(rf"(?<![\w-]){re.escape(name)}(?![\w=])", flag, message)
    return message


def _join_negative_values(argv):
    """argparse reads '--source-contour -1e9' as two options: join such pairs."""
    out = list(argv)
    for i in range(len(out) - 1):
        if out[i] in VALUE_OPTIONS and out[i + 1].startswith("-"):
            try:
                float(out[i + 1])
            except ValueError:
                continue
            out[i], out[i + 1] = f"{out[i]}={out[i + 1]}", None
    return [a for a in out if a is not None]


def main(argv=None) -> int:
    from .errors import InputError

    argv = _join_negative_values(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    handler = _setup_logging(getattr(args, "quiet", False), args.command)
    previous_sigterm = _catch_sigterm()
    try:
        import warnings

        import numpy as np

        from .io import output_journal

        with output_journal(), warnings.catch_warnings(), np.errstate(all="ignore"), _PipeSafeStdout():
            warnings.simplefilter("ignore", RuntimeWarning)   # numeric warnings never reach the terminal
            return COMMANDS[args.command](args)
    except InputError as exc:
        print(f"cryoalign: error: {flagged(str(exc), args.command)}", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt as exc:       # Ctrl-C, or SIGTERM (Terminated): pools stopped, partial outputs removed
        print(f"cryoalign: {'terminated' if isinstance(exc, Terminated) else 'interrupted'}", file=sys.stderr)
        return 128 + (15 if isinstance(exc, Terminated) else 2)
    except Exception:  # a bug: show the traceback so it can be reported
        import traceback

        traceback.print_exc()
        print("cryoalign: internal error (please report it with the traceback above)", file=sys.stderr)
        return EXIT_INTERNAL
    finally:
        logging.getLogger("cryoalign").removeHandler(handler)     # main() may be called again (tests, scripts)
        if previous_sigterm is not None:
            signal.signal(signal.SIGTERM, previous_sigterm)
            if signal.getsignal(signal.SIGINT) is _raise_terminated:
                signal.signal(signal.SIGINT, signal.default_int_handler)


class _PipeSafeStdout:
    """stdout while a command runs: when the reader has gone (`cryoalign compare ... | head`)
    the rest of the text is dropped instead of raising BrokenPipeError, so the command
    ends normally (its files written and kept, exit code unchanged) without a traceback."""

    def __enter__(self):
        self.stream, sys.stdout = sys.stdout, self
        return self

    def __exit__(self, *exc):
        sys.stdout = self.stream
        return False

    def write(self, text):
        try:
            return self.stream.write(text)
        except BrokenPipeError:
            self._drop()
            return len(text)

    def flush(self):
        try:
            self.stream.flush()
        except BrokenPipeError:
            self._drop()

    def _drop(self):
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self.stream.fileno())      # later flushes (and the exit's) go nowhere
            os.close(devnull)
        except (OSError, ValueError, AttributeError):   # not a real file (tests capture stdout)
            pass

    def __getattr__(self, name):
        return getattr(self.stream, name)


class Terminated(KeyboardInterrupt):
    """SIGTERM: handled like Ctrl-C (worker pools stopped, a resumable run's finished work
    kept, other partial outputs removed), exit code 143."""


_HANDLER_PID = None     # the process that set the SIGTERM handler


def _raise_terminated(signum, frame):
    from .executor import defer

    if os.getpid() != _HANDLER_PID:      # a forked worker inherited the handler: end as SIGTERM means
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
        return
    exc = Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()
    if not defer(exc):                   # while workers are forked: raised once they are
        raise exc


def _catch_sigterm():
    """Turn SIGTERM into Terminated (only the main thread can set a handler); returns the
    previous handler, or None when none was set."""
    import threading

    global _HANDLER_PID
    if threading.current_thread() is not threading.main_thread():
        return None
    _HANDLER_PID = os.getpid()
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _raise_terminated)      # Ctrl-C: KeyboardInterrupt, deferred the same way
    return signal.signal(signal.SIGTERM, _raise_terminated)


def run() -> None:
    """The `cryoalign` command: `main()`, then exit without the interpreter's teardown.
    When main() returns, every output is written and closed (atomic writes, pools and
    clients shut down in their own `finally`); the teardown would only free memory, and
    freeing numba's compiled code takes 0.15-0.3 s of every run."""
    code = main()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):      # a closed pipe (`cryoalign ... | head`) or stream
            pass
    logging.shutdown()
    os._exit(code)


def _setup_logging(quiet: bool, command: str) -> logging.Handler:
    logger = logging.getLogger("cryoalign")
    logger.handlers[:] = []
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_ElapsedFormatter(command))
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    logger.propagate = False
    return handler


class _ElapsedFormatter(logging.Formatter):
    """Seconds since start, and the message with parameter names shown as flags."""

    def __init__(self, command: str):
        super().__init__()
        self.t0 = time.perf_counter()
        self.command = command

    def format(self, record):
        return f"[{time.perf_counter() - self.t0:6.2f}s] {flagged(record.getMessage(), self.command)}"


def _cmd_align(args) -> int:
    from . import io
    from .io.emdb import load_map
    from .errors import InputError

    config = _alignment_config(args, keypoints=args.keypoints, top=args.top, jobs=args.jobs,
                               map_refine=args.map_refine, check_hand=args.check_hand,
                               max_hypotheses=args.hypotheses, wide_search=args.wide_search,
                               exhaustive=args.exhaustive)
    if args.flipped_out and not args.check_hand:
        raise InputError("--flipped-out needs --check-hand")
    if args.source_model and not args.out_dir:
        raise InputError("--source-model needs --out-dir (where the moved model is written)")
    for path in (args.json_out, args.flipped_out):
        if path:
            io.check_writable(path)
    _refuse_overwriting_inputs([p for p in (args.json_out, args.flipped_out) if p],
                               [args.source, args.target, args.source_model], folder=args.out_dir)
    if args.out_dir:
        io.check_output_folder(args.out_dir)
    if args.flipped_out:
        io.check_map_suffix(args.flipped_out)
    source_model = io.read_model(args.source_model) if args.source_model else None
    t0 = time.perf_counter()
    src_map, source_contour = load_map(args.source, args.source_contour, "source_contour", progress=True)
    tgt_map, target_contour = load_map(args.target, args.target_contour, "target_contour", progress=True)
    logging.getLogger("cryoalign").info("read maps in %.2f s", time.perf_counter() - t0)

    from .core.pipeline import align, mirror

    result = align(src_map, tgt_map, source_contour=source_contour, target_contour=target_contour,
                   config=config)
    text = json.dumps(result.to_json(), indent=1) + "\n"
    if args.flipped_out:
        io.write_map(mirror(src_map)[0], args.flipped_out)
    if args.json_out:
        io.write_text(args.json_out, text)
    if args.out_dir:
        from .io import outputs

        logging.getLogger("cryoalign").info("writing %s/ ...", args.out_dir)
        with io.output_folder(args.out_dir, "cryoalign align") as tmp:
            outputs.write_align_folder(tmp, result, src_map, tgt_map, source_path=src_map.path,
                                       target_path=tgt_map.path, source_model=source_model,
                                       model_suffix=io.model_suffix(args.source_model or ".pdb"),
                                       final_folder=os.path.abspath(args.out_dir))
    _print_summary(result, args)
    return 0


def _refuse_overwriting_inputs(outputs, inputs, folder=None):
    """Outputs never overwrite inputs; an output folder (replaced whole) never holds one."""
    from .errors import InputError

    real_inputs = {os.path.realpath(p): p for p in inputs if p}
    for out in outputs:
        hit = real_inputs.get(os.path.realpath(out))
        if hit:
            raise InputError(f"output {out} is the input file {hit}; choose another output name "
                             "(inputs are never overwritten)")
    if folder:
        inside = os.path.realpath(folder) + os.sep
        for real, given in real_inputs.items():
            if real.startswith(inside):
                raise InputError(f"the input {given} is inside the output folder {folder}, which a run "
                                 "replaces whole; choose another --out-dir")


def _print_summary(result, args) -> None:
    from . import transform as tf

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
        lines.append(f"{len(result.candidates)} distinct placement(s), fewer than --top {args.top}: the other coarse "
                     "placements converged onto these poses when refined (placements are distinct poses, "
                     f"{p.get('same_pose_A', 3):g} Å or {p.get('same_pose_deg', 10):g}° apart)")
    if p["mode"] == "local":
        lines.append("rank  score  agreement  rotation  translation (Å)            mask centre (Å)")
        for k, c in enumerate(result.candidates, 1):
            M = c.T_target_source
            centre = ", ".join(f"{v:.1f}" for v in c.mask_centre_A) if c.mask_centre_A else "-"
            lines.append(f"{k:4d}  {c.score.value:5.3f}  {c.score.vector_agreement:9.3f}  "
                         f"{tf.rotation_angle_deg(M):7.2f}°  ({M[0, 3]:7.2f}, {M[1, 3]:7.2f}, {M[2, 3]:7.2f})"
                         f"  ({centre})")
    if result.ambiguous:
        lines.append(f"ambiguous: {len(result.equivalent)} other pose(s) score within "
                     f"{100 * p['symmetry_margin']:.0f}% of the best (symmetric assembly or identical copies):")
        for k in result.equivalent:
            rel = result.relation_to_best(result.candidates[k - 1])
            ax = rel["axis"]
            lines.append(f"  rank {k}: score {result.candidates[k - 1].score.value:.3f}, {rel['angle_deg']:.1f} deg "
                         f"about ({ax[0]:.3f}, {ax[1]:.3f}, {ax[2]:.3f}) from the best")
    if result.hand is not None:
        h = result.hand
        meaning = {"same": "the source has the target's hand",
                   "mirrored": "the mirror image fits clearly better: the source is likely the wrong hand "
                               "(mirrored_matrix in the JSON)",
                   "unclear": "neither hand fits clearly better"}[h["verdict"]]
        lines.append(f"hand: {h['verdict']} (score {h['score']:.3f}, mirrored {h['mirrored_score']:.3f}): {meaning}")
    for side in ("source", "target"):
        est = " (estimated; pass the EMDB recommended level if known)" if p[f"{side}_contour_estimated"] else ""
        lines.append(f"{side} contour {p[f'{side}_contour']:.5g}{est}")
    lines.append(f"mode {p['mode']}, sampling interval {p['sampling_A']:g} Å"
                 + (" (chosen from the source's size)" if p.get("sampling_chosen") else ""))
    lines.append(f"time {result.timings_s['total']:.2f} s" + _scan_note(result.timings_s))
    if args.json_out:
        lines.append(f"wrote {args.json_out}")
    if args.out_dir:
        lines.append(f"wrote {args.out_dir}/ (open superposition.cxc in ChimeraX)")
    print("\n".join(lines))


def _confidence_line(result, command: str) -> str:
    c = result.confidence
    e = c["evidence"]
    return (f"confidence {c['verdict']} (score {result.score.value:.3f}, lead {100 * e['margin']:.0f}% over the "
            f"next pose, overlap {e['overlap']:.2f}, score terms {'agree' if e['terms_agree'] else 'disagree'})"
            + (f": {flagged(c['advice'], command)}" if c.get("advice") else ""))


def _rotation_text(T) -> str:
    from . import transform as tf

    angle = tf.rotation_angle_deg(T)
    if angle < 0.005:
        return "no rotation"
    axis = tf.rotation_axis(T)
    return f"rotation {angle:.2f} deg about ({axis[0]:.3f}, {axis[1]:.3f}, {axis[2]:.3f})"


def _score_line(s, mode) -> str:
    parts = []
    if s.correlation is not None:
        head = (f"score {s.value:.3f} = map correlation {s.correlation:.3f} (after map refinement) x vector "
                f"agreement {s.vector_agreement:.3f}")
        parts.append(f"point similarity {s.similarity:.3f}")
        if s.local_correlation is not None:
            parts.append(f"local correlation {s.local_correlation:.3f}")
        if s.js_divergence is not None:
            parts.append(f"JS {s.js_divergence:.3f}")
    elif s.js_divergence is not None:
        head = f"score {s.similarity:.3f} = (1 - JS {s.js_divergence:.3f}) x vector agreement {s.vector_agreement:.3f}"
    else:
        head = f"score {s.similarity:.3f} = vector agreement"
    parts.append(f"overlap {s.overlap:.2f}")
    return head + "; " + "; ".join(parts)


def _split_chains(text):
    if text is None:
        return None
    names = [c.strip() for c in text.split(",") if c.strip()]
    return names or None


def _cmd_fit(args) -> int:
    from . import io
    from .config import AlignConfig
    from .io.emdb import load_map

    model_stem = os.path.basename(args.model)
    for ext in (".gz", ".pdb", ".ent", ".cif", ".mmcif"):
        if model_stem.lower().endswith(ext):
            model_stem = model_stem[: -len(ext)]
    out = args.out_dir or f"{model_stem}_fit"
    config = AlignConfig(top=args.top, jobs=args.jobs, seed=args.seed, sampling_A=args.sampling,
                         exhaustive=args.exhaustive)
    _refuse_overwriting_inputs([out], [args.model, args.map], folder=out)
    io.check_output_folder(out)
    st = io.read_model(args.model)
    density, contour = load_map(args.map, args.contour, "contour", progress=True)

    from .apps import fit
    from .io import outputs

    result = fit.fit_model(st, density, resolution_A=args.resolution, chains=_split_chains(args.chains),
                           contour=contour, config=config)
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
        outputs.fit_script(os.path.join(tmp, "fit.cxc"), map_path=density.path, contour=result.target_contour,
                           assembled=os.path.join(final, assembled) if result.assembled else None, folder=final,
                           best=[(c.chain, os.path.join(final, names[(c.chain, 1)])) for c in result.chains
                                 if c.placements])
        outputs.write_fit_pictures(tmp, result, st, density, model=args.model, map_path=args.map, written=names)
    lines = ["chain  rank  score  agreement  confidence  (score = map correlation x vector agreement)"]
    for c in result.chains:
        for k, cand in enumerate(c.placements, 1):
            mark = "  <- assembled" if result.assembled.get(c.chain) == k - 1 else ""
            verdict = c.confidence["verdict"] if k == 1 and c.confidence else ""
            lines.append(f"{c.chain:>5}  {k:4d}  {cand.score.value:5.3f}  "
                         f"{cand.score.vector_agreement:9.3f}  {verdict:>10}{mark}")
    if result.left_out:
        lines.append(f"left out of the assembled model (every placement clashes): {', '.join(result.left_out)}")
    fewer = [f"{c.chain} ({len(c.placements)})" for c in result.chains if 0 < len(c.placements) < args.top]
    if fewer:
        lines.append(f"fewer placements than --top {args.top} for chain(s) {', '.join(fewer)}: the other coarse "
                     "placements converged onto these poses when refined (placements are distinct poses, "
                     f"{config.same_pose_A:g} Å or {config.same_pose_deg:g}° apart)")
    lines.append(f"time {result.timings_s['total']:.2f} s" + _scan_note(result.timings_s))
    lines.append(f"wrote {out}/ ({len(written)} placed chain models, assembled{suffix}, "
                 "placements.tsv, fit.json, fit_placements.png; open report.html, or fit.cxc in ChimeraX)")
    print("\n".join(lines))
    return 0


def _cmd_simulate(args) -> int:
    from . import io
    from .apps import simulate

    _refuse_overwriting_inputs([args.output], [args.model])
    io.check_map_suffix(args.output)
    io.check_writable(args.output)
    st = io.read_model(args.model)
    chains = _split_chains(args.chains)
    density = simulate.simulate(st, args.resolution, chains=chains, voxel_A=args.voxel)
    level = simulate.contour_for(density, simulate.model_mass_Da(st, chains=chains))
    io.write_map(density, args.output)
    nx, ny, nz = density.shape_xyz
    print(f"wrote {args.output}: {nx}x{ny}x{nz} voxels of {density.voxel_size_A[0]:.3g} Å, "
          f"resolution {args.resolution:g} Å; suggested contour {level:.5g} (encloses the model's "
          "volume at 1.21 Å^3/Da)")
    return 0


def _cmd_rmsd(args) -> int:
    from . import io
    from .apps.rmsd import load_matrices, rmsd_to_matrices, rmsd_to_model

    if args.json_out:
        io.check_writable(args.json_out)
    _refuse_overwriting_inputs([args.json_out] if args.json_out else [],
                               [args.model, args.matrix, args.reference, args.reference_model])
    T_est = load_matrices(args.matrix)[0]
    if args.reference:
        res = rmsd_to_matrices(args.model, T_est, load_matrices(args.reference), atoms=args.atoms)
        print(f"RMSD {res['rmsd_A']:.3f} Å over {res['atoms']} {_atom_words(res['atom_kind'])}"
              + (f" (best over {len(res['all_references_A'])} equivalent references: {res['rmsd_sym_A']:.3f} Å)"
                 if len(res["all_references_A"]) > 1 else ""))
    else:
        res = rmsd_to_model(args.model, T_est, args.reference_model, atoms=args.atoms)
        log = logging.getLogger("cryoalign")
        if res["paired_fraction"] < 0.95:
            log.warning("warning: the reference model pairs only %d of the model's %d %s atoms (%.0f%%) by "
                        "chain, residue number and atom name; the RMSD covers those only",
                        res["atoms"], res["model_atoms"], res["atom_kind"], 100 * res["paired_fraction"])
        if res["residue_name_mismatches"]:
            log.warning("warning: %d paired atoms belong to residues whose names differ between the two "
                        "models; check that the reference is the same model", res["residue_name_mismatches"])
        print(f"RMSD {res['rmsd_A']:.3f} Å over {res['atoms']} paired {_atom_words(res['atom_kind'])}")
    if args.json_out:
        io.write_text(args.json_out, json.dumps(res, indent=1) + "\n")
    return 0


def _alignment_config(args, **extra):
    from .config import AlignConfig

    return AlignConfig(mode=args.mode or "auto", sampling_A=args.sampling, seed=args.seed, **extra)


def _cmd_compare(args) -> int:
    from . import io
    from .io.emdb import load_map

    config = _alignment_config(args, jobs=args.jobs)
    if args.json_out:
        io.check_writable(args.json_out)
    _refuse_overwriting_inputs([p for p in (args.json_out,) if p], [args.source, args.target, args.matrix],
                               folder=args.out_dir)
    if args.out_dir:
        io.check_output_folder(args.out_dir)
    src_map, source_contour = load_map(args.source, args.source_contour, "source_contour", progress=True)
    tgt_map, target_contour = load_map(args.target, args.target_contour, "target_contour", progress=True)

    from .apps.comparison import compare, write_compare_outputs

    result = compare(src_map, tgt_map, source_contour=source_contour, target_contour=target_contour,
                     matrix=args.matrix, config=config, density_Da_per_A3=args.density, min_blob_A3=args.min_blob,
                     fsc_mask=args.fsc_mask)
    text = json.dumps(result.to_json(), indent=1) + "\n"
    if args.json_out:
        io.write_text(args.json_out, text)
    if args.out_dir:
        with io.output_folder(args.out_dir, "cryoalign compare") as tmp:
            write_compare_outputs(result, tmp, target_map_path=tgt_map.path)
    T = result.T_target_source
    aligned = result.alignment
    lines = ["T_target_source (source world Å -> target world Å" + (", found by the alignment):" if aligned is not None
                                                                  else ", as given by --matrix):")]
    lines += ["  " + "  ".join(f"{v:11.5f}" for v in row) for row in T]
    lines.append(f"{_rotation_text(T)}; translation ({T[0, 3]:.2f}, {T[1, 3]:.2f}, {T[2, 3]:.2f}) Å")
    if aligned is not None:
        lines.append(_score_line(aligned.score, aligned.params["mode"]))
        if aligned.confidence:
            lines.append(_confidence_line(aligned, "compare"))
    lines.append(f"scale: source x {result.scale.factor:.4g} + {result.scale.offset:.4g} ({result.scale.method}); "
                 f"correlation {result.correlation:.3f}")
    f = result.fsc
    lines.append("FSC: 0.5 at " + (f"{f.resolution_at_05_A:.1f} Å" if f.resolution_at_05_A else "-")
                 + ", 0.143 at " + (f"{f.resolution_at_0143_A:.1f} Å" if f.resolution_at_0143_A else "-")
                 + (" (masked)" if f.masked else ""))
    for name, d in result.difference.items():
        lines.append(f"{name.replace('_', ' ')}: {d.mass_kDa:.1f} kDa ({d.volume_A3:.0f} Å^3) in "
                     f"{len(d.blobs)} blob(s) above {d.level:.4g}")
        for k, blob in enumerate(d.blobs[:5], 1):
            c = blob.centre_A
            lines.append(f"  {k}: {blob.mass_kDa:7.1f} kDa at ({c[0]:.1f}, {c[1]:.1f}, {c[2]:.1f}) Å")
    if args.json_out:
        lines.append(f"wrote {args.json_out}")
    if args.out_dir:
        lines.append(f"wrote {args.out_dir}/ (open report.html)")
    print("\n".join(lines))
    return 0


def _cmd_variance(args) -> int:
    from . import io
    from .apps.variation import read_contour_table, variance

    config = _alignment_config(args, jobs=1)
    contours = read_contour_table(args.contour_table) if args.contour_table else None
    _refuse_overwriting_inputs([], [args.reference, *args.maps, args.contour_table], folder=args.out_dir)
    result = variance(args.reference, args.maps, contours=contours, reference_contour=args.reference_contour,
                      out_dir=args.out_dir, jobs=args.jobs, scheduler=args.scheduler, keep_all=args.keep_all,
                      components=args.components, config=config, progress=not args.quiet)

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


def _cmd_batch(args) -> int:
    from .apps.batching import batch

    config = _alignment_config(args, top=args.top)
    summary = batch(args.pairs, args.out, jobs=args.jobs, scheduler=args.scheduler, config=config, db=args.db,
                    retry_errors=args.retry_errors, progress=not args.quiet)
    print(f"{summary.pairs} pair(s): {summary.ran} run now ({summary.ok} ok, {summary.errors} error), "
          f"{summary.skipped} finished earlier; results in {args.out}"
          + (f"; report {summary.report}" if summary.report else ""))
    return 0


def _catalogue_default(name: str) -> int:
    from .apps import catalogue
    return getattr(catalogue, name)


def _cmd_index(args) -> int:
    from .apps.catalogue import index
    from .config import AlignConfig
    from .apps.variation import read_contour_table

    contours = read_contour_table(args.contour_table) if args.contour_table else None
    summary = index(args.maps, args.db, contours=contours, config=AlignConfig(sampling_A=args.sampling),
                    jobs=args.jobs, scheduler=args.scheduler, progress=not args.quiet)
    for name, message in summary.errors:
        print(f"cryoalign: error: {name}: {flagged(message, 'index')}", file=sys.stderr)
    print(f"{summary.indexed} indexed, {summary.skipped} already in {args.db}, {len(summary.errors)} failed; "
          f"{summary.entries} entries ({summary.time_s:.1f} s)")
    return EXIT_INPUT if summary.errors else 0


def _cmd_search(args) -> int:
    from . import io
    from .apps.catalogue import format_table, search
    from .config import AlignConfig

    if args.json_out:
        io.check_writable(args.json_out)
        _refuse_overwriting_inputs([args.json_out], [args.query])
    if args.out_dir:
        _refuse_overwriting_inputs([], [args.query], folder=args.out_dir)
        io.check_output_folder(args.out_dir)
    result = search(args.query, args.db, contour=args.contour, top=args.top,
                    prefilter=args.prefilter or None, refine=args.refine, config=AlignConfig(sampling_A=args.sampling),
                    jobs=args.jobs, scheduler=args.scheduler, progress=not args.quiet)
    text = json.dumps(result.to_json(), indent=1) + "\n"
    if args.json_out:
        io.write_text(args.json_out, text)
    if args.out_dir:
        from .io import outputs

        with io.output_folder(args.out_dir, "cryoalign search") as tmp:
            io.write_text(os.path.join(tmp, "hits.json"), text)
            outputs.write_search_pictures(tmp, result, args.query)
    print(format_table(result) + (f"\nwrote {args.out_dir}/ (hits.json; open report.html)" if args.out_dir else ""))
    return 0


def _atom_words(kind: str) -> str:
    return "CA/P atoms" if kind == "CA/P" else "atoms (all)"


COMMANDS = {"align": _cmd_align, "fit": _cmd_fit, "simulate": _cmd_simulate, "rmsd": _cmd_rmsd,
            "compare": _cmd_compare, "variance": _cmd_variance, "batch": _cmd_batch, "index": _cmd_index,
            "search": _cmd_search}


if __name__ == "__main__":
    sys.exit(main())
