"""What several commands share: the shared options, logging, SIGTERM/SIGINT handling, a
pipe-safe stdout, the rule that outputs never overwrite inputs, and the summary lines."""

from __future__ import annotations

import logging
import os
import signal
import sys
import time

from ..flags import VALUE_OPTIONS, flagged

EXIT_INPUT = 2
EXIT_INTERNAL = 1


# ----------------------------------------------------------------------------- shared options
def add_seed(parser, d):
    parser.add_argument("--seed", type=int, default=d.seed, help="seed of every random choice (default 0)")


def add_quiet(parser, still_printed=None):
    parser.add_argument(
        "--quiet",
        action="store_true",
        help="no progress messages" + (f" (the {still_printed} is still printed)" if still_printed else ""),
    )


def add_workers(parser):
    parser.add_argument("--jobs", type=int, default=None, help="worker processes (default: all cores)")
    parser.add_argument("--scheduler", default=None, help="Dask scheduler address (tcp://host:8786)")


def add_alignment_options(parser, d, default_mode=None, part="SOURCE is a part of TARGET"):
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--local",
        dest="mode",
        action="store_const",
        const="local",
        help=f"{part} (local alignment)"
        + (" instead of the default whole-map alignment" if default_mode == "global" else ""),
    )
    group.add_argument(
        "--global",
        dest="mode",
        action="store_const",
        const="global",
        help="whole-map alignment" + (" (default)" if default_mode == "global" else ""),
    )
    parser.set_defaults(mode=default_mode)
    parser.add_argument(
        "--sampling",
        type=float,
        default=None,
        help="point-cloud sampling interval in Å (default: chosen from the source's size)",
    )
    add_seed(parser, d)


def add_exhaustive(parser, d):
    parser.add_argument(
        "--exhaustive",
        choices=["auto", "always", "never"],
        default=d.exhaustive,
        help="exhaustive 6D scan (every rotation, translations by FFT) when a local or fit "
        "answer is weak (auto, default), always (also global), or never",
    )


def _alignment_config(args, **extra):
    from ..config import AlignConfig

    return AlignConfig(mode=args.mode or "auto", sampling_A=args.sampling, seed=args.seed, **extra)


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


# ----------------------------------------------------------------------------- logging
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


# ----------------------------------------------------------------------------- signals, stdout
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
            os.dup2(devnull, self.stream.fileno())  # later flushes (and the exit's) go nowhere
            os.close(devnull)
        except (OSError, ValueError, AttributeError):  # not a real file (tests capture stdout)
            pass

    def __getattr__(self, name):
        return getattr(self.stream, name)


class Terminated(KeyboardInterrupt):
    """SIGTERM: handled like Ctrl-C (worker pools stopped, a resumable run's finished work
    kept, other partial outputs removed), exit code 143."""


_HANDLER_PID = None  # the process that set the SIGTERM handler


def _raise_terminated(signum, frame):
    from ..executor import defer

    if os.getpid() != _HANDLER_PID:  # a forked worker inherited the handler: end as SIGTERM means
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
        return
    exc = Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()
    if not defer(exc):  # while workers are forked: raised once they are
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
        signal.signal(signal.SIGINT, _raise_terminated)  # Ctrl-C: KeyboardInterrupt, deferred the same way
    return signal.signal(signal.SIGTERM, _raise_terminated)


# ----------------------------------------------------------------------------- inputs and outputs
def _refuse_overwriting_inputs(outputs, inputs, folder=None):
    """Outputs never overwrite inputs; an output folder (replaced whole) never holds one."""
    from ..errors import InputError

    real_inputs = {os.path.realpath(p): p for p in inputs if p}
    for out in outputs:
        hit = real_inputs.get(os.path.realpath(out))
        if hit:
            raise InputError(
                f"output {out} is the input file {hit}; choose another output name (inputs are never overwritten)"
            )
    if folder:
        inside = os.path.realpath(folder) + os.sep
        for real, given in real_inputs.items():
            if real.startswith(inside):
                raise InputError(
                    f"the input {given} is inside the output folder {folder}, which a run "
                    "replaces whole; choose another --out-dir"
                )


# ----------------------------------------------------------------------------- summary lines
def _confidence_line(result, command: str) -> str:
    c = result.confidence
    e = c["evidence"]
    return (
        f"confidence {c['verdict']} (score {result.score.value:.3f}, lead {100 * e['margin']:.0f}% over the "
        f"next pose, overlap {e['overlap']:.2f}, score terms {'agree' if e['terms_agree'] else 'disagree'})"
        + (f": {flagged(c['advice'], command)}" if c.get("advice") else "")
    )


def _rotation_text(T) -> str:
    from .. import transform as tf

    angle = tf.rotation_angle_deg(T)
    if angle < 0.005:
        return "no rotation"
    axis = tf.rotation_axis(T)
    return f"rotation {angle:.2f} deg about ({axis[0]:.3f}, {axis[1]:.3f}, {axis[2]:.3f})"


def _score_line(s, mode) -> str:
    parts = []
    if s.correlation is not None:
        head = (
            f"score {s.value:.3f} = map correlation {s.correlation:.3f} (after map refinement) x vector "
            f"agreement {s.vector_agreement:.3f}"
        )
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


def _scan_note(timings) -> str:
    t = timings.get("exhaustive scan")
    return f" (exhaustive scan {t:.2f} s)" if t else ""
