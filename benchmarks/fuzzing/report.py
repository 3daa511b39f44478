"""Reports of a fuzz run: summary.md (the outcome table per family, distinct failures, error
messages), failures.tsv (one row per failing case with its replay command), cases.tsv."""

from __future__ import annotations

import collections
import datetime
import os
import pathlib
import platform
import re
import shlex

from .generators import FAMILY_WEIGHTS
from .harness import FAILURES, OUTCOMES


def summary_tables(results, wall, opts) -> str:
    fams = [f for f in FAMILY_WEIGHTS if any(r["family"] == f for r in results)] + sorted(
        {r["family"] for r in results} - set(FAMILY_WEIGHTS)
    )
    head = ["family", "cases", "full aligns"] + list(OUTCOMES)
    rows = []
    for fam in fams + ["total"]:
        rs = [r for r in results if fam == "total" or r["family"] == fam]
        c = collections.Counter(r["outcome"] for r in rs)
        rows.append([fam, len(rs), sum(r["mode"] == "full" for r in rs)] + [c[k] for k in OUTCOMES])
    lines = [
        f"cryoalign fuzz: {len(results)} cases, seed {opts['seed']}, {opts['jobs']} jobs, "
        f"timeout {opts['timeout']:g} s ({opts.get('full_timeout', opts['timeout']):g} s for a whole "
        f"alignment), memory limit {opts['mem_gb']:g} GB per worker, "
        f"wall time {wall:.0f} s ({wall / 60:.1f} min)",
        f"date {datetime.datetime.now().isoformat(timespec='seconds')}, {platform.node()}, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    fails = [r for r in results if r["outcome"] in FAILURES]
    if fails:
        lines += [
            "",
            "Distinct failures (grouped by outcome and signature):",
            "",
            "| outcome | signature | cases | families / kinds | first case |",
            "|---|---|---|---|---|",
        ]
        groups = collections.defaultdict(list)
        for r in fails:
            groups[(r["outcome"], r["signature"])].append(r)
        for (outcome, sig), rs in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])):
            kinds = collections.Counter(f"{r['family']}/{r['kind']}" for r in rs)
            kinds_s = ", ".join(f"{k} ({n})" for k, n in kinds.most_common(4)) + (" ..." if len(kinds) > 4 else "")
            first = rs[0]
            lines.append(
                f"| {outcome} | {sig.replace('|', '/')} | {len(rs)} | {kinds_s} | "
                f"{first['index']}: {first['desc'].replace('|', '/')[:150]} |"
            )
    slow = sorted(results, key=lambda r: -r["seconds"])[:5]
    lines += [
        "",
        "slowest cases: "
        + ", ".join(f"{r['index']} ({r['family']}/{r['kind']}, {r['mode']}, {r['seconds']:.1f} s)" for r in slow),
    ]
    warned = sum(1 for r in results if r.get("warnings"))
    lines.append(
        f"cases in which Python warnings were recorded (a warning that would reach the terminal "
        f"is a bad message): {warned}"
    )
    api = collections.Counter(r.get("api") or "-" for r in results)
    lines.append("read_map: " + ", ".join(f"{k} {n}" for k, n in api.most_common()))
    lines += ["", message_table(results)]
    return "\n".join(lines) + "\n"


def message_shape(msg: str) -> str:
    """An error message with paths, numbers and quoted values replaced, for grouping."""
    msg = re.sub(r"(?<![\w.])/(?:[^\s:;,'/]+/)*[^\s:;,')]+", "PATH", msg)
    msg = re.sub(r"'[^']*'", "'X'", msg)
    return re.sub(r"[-+]?(\d+\.?\d*|\.\d+)(e[-+]?\d+)?|\binf\b|\bnan\b", "#", msg)


def message_table(results, top=80) -> str:
    """The distinct shapes of the clean error messages (exit 2), most frequent first; a shape
    without '; ' may lack the fix (informational, not a failure)."""
    shapes = collections.Counter(message_shape(r["message"]) for r in results if r.get("message"))
    lines = [
        f"Distinct error messages (exit 2; {len(shapes)} shapes, the {min(top, len(shapes))} most "
        "frequent; `fix?` = no '; ' clause):",
        "",
        "| cases | fix? | message |",
        "|---|---|---|",
    ]
    for shape, n in shapes.most_common(top):
        lines.append(f"| {n} | {'' if '; ' in shape else 'no'} | `{shape.replace('|', '/')[:160]}` |")
    return "\n".join(lines)


def tsv_cell(v, column="") -> str:
    if isinstance(v, (list, tuple)):
        v = shlex.join(str(a) for a in v) if column == "argv" else " | ".join(map(str, v))
    return str(v).replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")


def write_reports(results, wall, opts):
    out = pathlib.Path(opts["out"])
    text = summary_tables(results, wall, opts)
    (out / "summary.md").write_text(text)
    cols = [
        "index",
        "family",
        "kind",
        "mode",
        "outcome",
        "exit",
        "api",
        "seconds",
        "signature",
        "desc",
        "warning_text",
        "expect",
        "message",
        "argv",
        "problems",
        "stderr",
        "argv2",
    ]
    with open(out / "failures.tsv", "w") as fh:
        fh.write("seed\t" + "\t".join(cols) + "\treplay\n")
        for r in results:
            if r["outcome"] in FAILURES:
                replay = f"python benchmarks/fuzz.py --seed {opts['seed']} --case {r['index']}"
                fh.write(f"{opts['seed']}\t" + "\t".join(tsv_cell(r.get(c, ""), c) for c in cols) + f"\t{replay}\n")
    with open(out / "cases.tsv", "w") as fh:
        fh.write("\t".join(cols[:13]) + "\n")
        for r in results:
            fh.write(
                "\t".join(tsv_cell(r.get(c, ""), c) if c != "seconds" else f"{r['seconds']:.3f}" for c in cols[:13])
                + "\n"
            )
    return text
