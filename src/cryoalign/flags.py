"""The command line's vocabulary: library messages name parameters ("try source_contour=2.5");
each command shows them as its own flags ("try --source-contour 2.5").

`FLAGS[command]` maps a parameter name to that command's flag; `flagged(message, command)`
rewrites a message with them; `VALUE_OPTIONS` are the flags that take a number (which may be
negative: `--source-contour -1e9`).
"""

from __future__ import annotations

_ALIGNMENT_FLAGS = {
    "sampling_A": "--sampling",
    "seed": "--seed",
    "mode='global'": "--global",
    "mode='local'": "--local",
}
_WORKER_FLAGS = {"jobs": "--jobs", "scheduler": "--scheduler"}
FLAGS = {
    "align": {
        **_ALIGNMENT_FLAGS,
        **_WORKER_FLAGS,
        "source_contour": "--source-contour",
        "target_contour": "--target-contour",
        "top": "--top",
        "max_hypotheses": "--hypotheses",
        "wide_search": "--wide-search",
        "exhaustive": "--exhaustive",
    },
    "fit": {
        "contour=": "--contour",
        "target_contour": "--contour",
        "sampling_A": "--sampling",
        "top": "--top",
        "jobs": "--jobs",
        "seed": "--seed",
        "chains": "--chains",
        "resolution_A": "--resolution",
        "exhaustive": "--exhaustive",
    },
    "simulate": {"resolution_A": "--resolution", "voxel_A": "--voxel", "chains": "--chains"},
    "rmsd": {},
    "compare": {
        **_ALIGNMENT_FLAGS,
        "source_contour": "--source-contour",
        "target_contour": "--target-contour",
        "jobs": "--jobs",
        "matrix": "--matrix",
        "density_Da_per_A3": "--density",
        "min_blob_A3": "--min-blob",
    },
    "variance": {
        **_ALIGNMENT_FLAGS,
        **_WORKER_FLAGS,
        "reference_contour": "--reference-contour",
        "contours": "--contour-table",
        "keep_all": "--keep-all",
        "components": "--components",
    },
    "index": {**_WORKER_FLAGS, "contours": "--contour-table", "sampling_A": "--sampling"},
    "search": {
        **_WORKER_FLAGS,
        "contour=": "--contour",
        "top": "--top",
        "prefilter": "--prefilter",
        "refine": "--refine",
        "sampling_A": "--sampling",
    },
    "batch": {**_ALIGNMENT_FLAGS, **_WORKER_FLAGS, "retry_errors": "--retry-errors", "db=": "--db", "top": "--top"},
}
VALUE_OPTIONS = (
    "--source-contour",
    "--target-contour",
    "--contour",
    "--reference-contour",
    "--seed",
    "--top",
    "--jobs",
    "--sampling",
    "--voxel",
    "--resolution",
    "--hypotheses",
    "--density",
    "--components",
    "--min-blob",
    "--prefilter",
)


def flagged(message: str, command: str) -> str:
    """`message` with parameter names replaced by the command's flags."""
    import re

    for name, flag in sorted(FLAGS.get(command, {}).items(), key=lambda kv: -len(kv[0])):
        if name.endswith("="):  # a plain word ("contour"): only where it is set to a value
            message = re.sub(rf"(?<![\w-]){re.escape(name)}(\S+)", lambda m: f"{flag} {m.group(1)}", message)
            continue
        if "=" in name:
            message = message.replace(name, flag)
            continue
        message = re.sub(rf"(?<![\w-]){re.escape(name)}=(\S+)", lambda m: f"{flag} {m.group(1)}", message)
        # a bare name, but not a part of a file path ("/data/contours.tsv" stays as it is)
        message = re.sub(rf"(?<![\w./\\-]){re.escape(name)}(?![\w=/\\]|\.\w)", flag, message)
    return message
