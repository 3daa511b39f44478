"""Command line: argument parsing -> library call -> files out. No math here.

    cryoalign align SOURCE TARGET [--source-contour A] [--target-contour B] [--voxel V]
                    [--local | --global] [--top N] [--jobs J] [--no-map-refine]
                    [--seed S] [--json OUT] [--out-dir DIR] [--source-model MODEL] [--quiet]
    cryoalign fit MODEL MAP --resolution R [--chains A,B] [--top 5] [--contour C] [--out-dir DIR]
    cryoalign simulate MODEL --resolution R -o MAP [--chains A,B] [--voxel V]
    cryoalign rmsd MODEL --matrix RESULT.json (--reference GT | --reference-model FITTED)

Exit codes: 0 success, 2 bad input (one line naming the problem and the fix),
1 internal error.

One module per command (`cli/<command>.py`: `add_parser(sub, d)` and `run(args)`); what
several share is in `cli/common.py`, the parameter -> flag vocabulary in `cryoalign.flags`.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

from ..flags import FLAGS, VALUE_OPTIONS, flagged
from .align import add_parser as _align_parser
from .align import run as _cmd_align
from .batch import add_parser as _batch_parser
from .batch import run as _cmd_batch
from .common import (
    EXIT_INPUT,
    EXIT_INTERNAL,
    Terminated,
    _catch_sigterm,
    _join_negative_values,
    _PipeSafeStdout,
    _raise_terminated,
    _setup_logging,
)
from .compare import add_parser as _compare_parser
from .compare import run as _cmd_compare
from .fit import add_parser as _fit_parser
from .fit import run as _cmd_fit
from .index import add_parser as _index_parser
from .index import run as _cmd_index
from .rmsd import add_parser as _rmsd_parser
from .rmsd import run as _cmd_rmsd
from .search import add_parser as _search_parser
from .search import run as _cmd_search
from .simulate import add_parser as _simulate_parser
from .simulate import run as _cmd_simulate
from .variance import add_parser as _variance_parser
from .variance import run as _cmd_variance

__all__ = ["main", "run", "flagged", "FLAGS", "VALUE_OPTIONS", "EXIT_INPUT", "EXIT_INTERNAL", "Terminated"]

# each command: (its sub-parser, its run), in the order `cryoalign --help` lists them
COMMANDS = {
    "align": (_align_parser, _cmd_align),
    "fit": (_fit_parser, _cmd_fit),
    "simulate": (_simulate_parser, _cmd_simulate),
    "compare": (_compare_parser, _cmd_compare),
    "variance": (_variance_parser, _cmd_variance),
    "batch": (_batch_parser, _cmd_batch),
    "index": (_index_parser, _cmd_index),
    "search": (_search_parser, _cmd_search),
    "rmsd": (_rmsd_parser, _cmd_rmsd),
}


def _parser() -> argparse.ArgumentParser:
    from .. import __version__
    from ..config import AlignConfig

    d = AlignConfig()
    p = argparse.ArgumentParser(prog="cryoalign", description="Superimpose cryo-EM density maps.")
    p.add_argument("--version", action="version", version=f"cryoalign {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    for add_parser, _ in COMMANDS.values():
        add_parser(sub, d)
    return p


def main(argv=None) -> int:
    from ..errors import InputError

    argv = _join_negative_values(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    handler = _setup_logging(getattr(args, "quiet", False), args.command)
    previous_sigterm = _catch_sigterm()
    try:
        import warnings

        import numpy as np

        from ..io import output_journal

        with output_journal(), warnings.catch_warnings(), np.errstate(all="ignore"), _PipeSafeStdout():
            warnings.simplefilter("ignore", RuntimeWarning)  # numeric warnings never reach the terminal
            return COMMANDS[args.command][1](args)
    except InputError as exc:
        print(f"cryoalign: error: {flagged(str(exc), args.command)}", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (Terminated): pools stopped, partial outputs removed
        print(f"cryoalign: {'terminated' if isinstance(exc, Terminated) else 'interrupted'}", file=sys.stderr)
        return 128 + (15 if isinstance(exc, Terminated) else 2)
    except Exception:  # a bug: show the traceback so it can be reported
        import traceback

        traceback.print_exc()
        print("cryoalign: internal error (please report it with the traceback above)", file=sys.stderr)
        return EXIT_INTERNAL
    finally:
        logging.getLogger("cryoalign").removeHandler(handler)  # main() may be called again (tests, scripts)
        if previous_sigterm is not None:
            signal.signal(signal.SIGTERM, previous_sigterm)
            if signal.getsignal(signal.SIGINT) is _raise_terminated:
                signal.signal(signal.SIGINT, signal.default_int_handler)


def run() -> None:
    """The `cryoalign` command: `main()`, then exit without the interpreter's teardown.
    When main() returns, every output is written and closed (atomic writes, pools and
    clients shut down in their own `finally`); the teardown would only free memory, and
    freeing numba's compiled code takes 0.15-0.3 s of every run."""
    code = main()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`cryoalign ... | head`) or stream
            pass
    logging.shutdown()
    os._exit(code)
