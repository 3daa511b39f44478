"""One self-contained HTML page per run: pictures embedded as base64 data URIs, inline CSS,
no network resource, so the file can be mailed or archived alone.

    write_report("report.html", "cryoalign compare", compare_sections(result, images))

A section is a dict: ``{"heading": str, "text": str (optional), "tables": [{"columns":
[...], "rows": [[...], ...]}] (optional), "images": [png paths] (optional)}``.

Over 500 lines: one section builder per command (align, fit, compare, variance, batch, search)
around one page writer; they share the table and matrix helpers and change together.
"""

from __future__ import annotations

import base64
import html
import os

import numpy as np

CSS = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1150px; color: #1b1b1b; line-height: 1.45; padding: 0 1em; }
h1 { font-size: 1.6em; border-bottom: 2px solid #1f4e99; padding-bottom: .2em; }
h2 { font-size: 1.2em; margin-top: 1.8em; color: #1f4e99; }
table { border-collapse: collapse; margin: .6em 0 1em; font-size: .92em; }
th, td { border: 1px solid #c9d2e0; padding: .25em .7em; text-align: right; }
th { background: #eef2f8; }
td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; border: 1px solid #ddd; margin: .4em 0; }
p.note { color: #555; font-size: .92em; }
code { background: #f3f3f3; padding: 0 .25em; }
"""


def write_report(path, title: str, sections: list) -> str:
    """Write the page atomically; return its path."""
    from .files import write_text

    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    for section in sections:
        parts.append(f"<h2>{html.escape(section['heading'])}</h2>")
        if section.get("text"):
            parts.append(f'<p class="note">{html.escape(section["text"])}</p>')
        for table in section.get("tables", ()):
            parts.append(_table(table))
        for image in section.get("images", ()):
            parts.append(_image(image))
    from .. import __version__

    parts.append(f'<p class="note">written by cryoalign {html.escape(__version__)}</p>')
    parts.append("</body></html>")
    write_text(path, "\n".join(parts) + "\n")
    return os.fspath(path)


def _table(table: dict) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in table["columns"])
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row) + "</tr>" for row in table["rows"])
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def _image(path) -> str:
    with open(path, "rb") as fh:
        data = base64.b64encode(fh.read()).decode("ascii")
    alt = html.escape(os.path.basename(os.fspath(path)))
    return f'<div><img alt="{alt}" src="data:image/png;base64,{data}"></div>'


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, (float, np.floating)):
        return f"{v:.4g}"
    return str(v)


def _matrix_table(T) -> dict:
    T = np.asarray(T, float)
    return {
        "columns": ["row", "1", "2", "3", "4"],
        "rows": [[f"{i + 1}"] + [f"{v:.5f}" for v in T[i]] for i in range(4)],
    }


def _blob_table(difference) -> dict:
    rows = [
        [k, round(b.mass_kDa, 1), round(b.volume_A3), b.voxels, ", ".join(f"{v:.1f}" for v in b.centre_A)]
        for k, b in enumerate(difference.blobs, 1)
    ]
    return {"columns": ["rank", "mass (kDa)", "volume (Å³)", "voxels", "centre x, y, z (Å)"], "rows": rows}


def align_sections(result, images: list) -> list:
    """Sections for an `AlignResult` (images from `pictures.align_pictures`)."""
    from .. import transform as tf

    p = result.params
    s = result.score
    T = np.asarray(result.T_target_source)
    summary = [
        ["score (map correlation x vector agreement)", round(float(s.value), 4)],
        ["map correlation", None if s.correlation is None else round(float(s.correlation), 4)],
        ["vector agreement", round(float(s.vector_agreement), 4)],
        ["point similarity", round(float(s.similarity), 4)],
        ["local correlation", None if s.local_correlation is None else round(float(s.local_correlation), 4)],
        ["overlap", round(float(s.overlap), 3)],
        ["rotation (deg)", round(tf.rotation_angle_deg(T), 3)],
        ["translation (Å)", ", ".join(f"{v:.2f}" for v in T[:3, 3])],
        ["mode", p["mode"]],
        ["sampling interval (Å)", p["sampling_A"]],
        ["ambiguous", bool(result.ambiguous)],
    ]
    confidence = getattr(result, "confidence", None)
    sections_before = []
    if confidence:
        summary.insert(0, ["confidence", confidence["verdict"]])
        sections_before.append(confidence_section(confidence, "align"))
    rows = []
    for k, c in enumerate(result.candidates, 1):
        M = np.asarray(c.T_target_source)
        rows.append(
            [
                k,
                round(float(c.score.value), 4),
                round(float(c.score.vector_agreement), 3),
                round(tf.rotation_angle_deg(M), 2),
                ", ".join(f"{v:.1f}" for v in M[:3, 3]),
                c.found_by,
            ]
        )
    return [
        _inputs(p),
        *sections_before,
        {
            "heading": "Superposition",
            "text": "T_target_source maps source world coordinates (Å) onto the target's. "
            "Projections: target in blue, source in orange, white where both.",
            "tables": [_matrix_table(T), {"columns": ["", "value"], "rows": summary}],
            "images": list(images),
        },
        {
            "heading": "Candidates",
            "tables": [
                {
                    "columns": ["rank", "score", "agreement", "rotation (deg)", "translation (Å)", "found by"],
                    "rows": rows,
                }
            ],
        },
    ]


def confidence_section(confidence: dict, command: str) -> dict:
    """The "Confidence" section: the verdict, its evidence and, for a low answer, what to
    try (with the command's own flags)."""
    from ..flags import flagged

    e = confidence.get("evidence", {})
    text = {
        "high": "high: a strong score, a clear lead over the next pose, nearly full overlap, terms agreeing.",
        "medium": "medium: usable, but the lead, the score or the overlap is not clear-cut (symmetric "
        "assemblies land here).",
        "low": "low: do not trust this answer without checking it.",
    }.get(confidence["verdict"], confidence["verdict"])
    if confidence.get("advice"):
        text += " What to try: " + flagged(confidence["advice"], command) + "."
    rows = [
        [name, e[key]]
        for name, key in (
            ("score", "score"),
            ("lead over the next pose", "margin"),
            ("overlap", "overlap"),
            ("score terms agree", "terms_agree"),
            ("symmetry mates", "symmetry_mates"),
        )
        if key in e
    ]
    return {
        "heading": f"Confidence: {confidence['verdict']}",
        "text": text,
        "tables": [{"columns": ["evidence", "value"], "rows": rows}],
    }


def _inputs(p: dict) -> dict:
    """The "Inputs" section: each map and its contour (from a result's params)."""
    return {
        "heading": "Inputs",
        "tables": [
            {
                "columns": ["", "map", "contour"],
                "rows": [
                    [
                        side,
                        p.get(side) or "(in memory)",
                        f"{p[f'{side}_contour']:.4g}" + (" (estimated)" if p[f"{side}_contour_estimated"] else ""),
                    ]
                    for side in ("source", "target")
                ],
            }
        ],
    }


def compare_sections(result, images: list) -> list:
    """Sections for a `compare.CompareResult` (images from `pictures.compare_pictures`)."""
    from .. import transform as tf

    by_name = {os.path.basename(p): p for p in images}
    p = result.params
    T = np.asarray(result.T_target_source)
    pose = [
        ["rotation (deg)", round(tf.rotation_angle_deg(T), 3)],
        ["translation (Å)", ", ".join(f"{v:.2f}" for v in T[:3, 3])],
        ["from", "cryoalign.align" if result.alignment is not None else "the given matrix"],
    ]
    confidence = []
    if result.alignment is not None:
        a = result.alignment.score
        pose.append(["alignment score (map correlation x vector agreement)", round(float(a.value), 4)])
        pose.append(["vector agreement", round(float(a.vector_agreement), 4)])
        if result.alignment.confidence:
            pose.append(["confidence", result.alignment.confidence["verdict"]])
            confidence.append(confidence_section(result.alignment.confidence, "compare"))
    sections = [
        _inputs(p),
        *confidence,
        {
            "heading": "Superposition",
            "text": "T_target_source maps source world coordinates (Å) onto the target's.",
            "tables": [_matrix_table(T), {"columns": ["", "value"], "rows": pose}],
            "images": [by_name[n] for n in ("projections.png",) if n in by_name],
        },
        {
            "heading": "Density scale and agreement",
            "text": "scaled source = factor x source + offset (target units); correlation about the mean "
            "over the voxels above either contour.",
            "tables": [
                {
                    "columns": ["factor", "offset", "method", "correlation"],
                    "rows": [[result.scale.factor, result.scale.offset, result.scale.method, result.correlation]],
                }
            ],
        },
        {
            "heading": "Fourier shell correlation",
            "tables": [
                {
                    "columns": ["resolution at 0.5 (Å)", "resolution at 0.143 (Å)", "masked"],
                    "rows": [[result.fsc.resolution_at_05_A, result.fsc.resolution_at_0143_A, result.fsc.masked]],
                }
            ],
            "images": [by_name[n] for n in ("fsc.png",) if n in by_name],
        },
    ]
    diff_rows = [
        [name.replace("_", " "), d.level, round(d.volume_A3), round(d.mass_kDa, 1), len(d.blobs)]
        for name, d in result.difference.items()
    ]
    sections.append(
        {
            "heading": "Differences",
            "text": f"A voxel is difference when it exceeds the level (max({p['difference_fraction']:g} x target contour, "
            f"{p['difference_noise_k']:g} x robust sigma of the difference outside the molecule or inside both)) "
            "inside its own map's molecule; pieces joined above half the level or closer than "
            f"{p.get('merge_gap_A', 0):g} Å are one blob; blobs under {p['min_blob_A3']:g} Å³ are dropped; mass = volume x "
            f"{p['density_Da_per_A3']:g} Da/Å³; centres are difference-density weighted, target world Å.",
            "tables": [{"columns": ["direction", "level", "volume (Å³)", "mass (kDa)", "blobs"], "rows": diff_rows}],
            "images": [by_name[n] for n in ("difference_blobs.png",) if n in by_name],
        }
    )
    for name, d in result.difference.items():
        sections.append({"heading": f"Blobs: {name.replace('_', ' ')}", "tables": [_blob_table(d)]})
    return sections


def variance_sections(result, images: list) -> list:
    """Sections for a `variance.VarianceResult`."""
    p = result.params
    rows = [
        [
            os.path.basename(r["map"]),
            f"{r['contour']:.4g}" + (" (est.)" if r["contour_estimated"] else ""),
            round(r["score"], 4),
            round(r["correlation_with_reference"], 4),
            "yes" if r["excluded"] else "no",
            r["reason"],
        ]
        for r in result.records
    ]
    var = result.variance.data
    sections = [
        {
            "heading": "Series",
            "text": f"reference {p['reference']} at contour {p['reference_contour']:.4g}; "
            f"{len(result.kept)} of {len(result.records)} maps in the statistics; {p['variance']}.",
            "tables": [{"columns": ["map", "contour", "score", "correlation", "excluded", "reason"], "rows": rows}],
        },
        {
            "heading": "Variance",
            "tables": [
                {
                    "columns": ["max variance", "mean variance", "voxel of the max (x, y, z Å)"],
                    "rows": [
                        [
                            float(var.max()),
                            float(var.mean()),
                            ", ".join(
                                f"{v:.1f}"
                                for v in result.variance.index_to_world(
                                    np.array(np.unravel_index(int(np.argmax(var)), var.shape))[::-1][None]
                                )[0]
                            ),
                        ]
                    ],
                }
            ],
            "images": list(images),
        },
    ]
    if result.components:
        sections.append(
            {
                "heading": "Principal components",
                "tables": [
                    {
                        "columns": ["component", "share of the variance", "file"],
                        "rows": [[c["index"], c["share"], os.path.basename(c["path"])] for c in result.components],
                    }
                ],
            }
        )
    return sections


FIT_ADVICE = (
    "check --contour (the EMDB recommended level) and --resolution; chains of a few hundred residues "
    "in a map on a coarse grid have featureless simulated density (README, Limits): give the map at its "
    "native voxel size"
)


def fit_sections(result, images: list, *, model: str, map_path: str, written: dict | None = None) -> list:
    """Sections for a `fit.FitResult` (images from `pictures.fit_placements`); written:
    {(chain, rank): file name} of the placed chain models."""
    from .. import transform as tf

    written = written or {}
    chains = []
    for c in result.chains:
        best = c.placements[0] if c.placements else None
        assembled = result.assembled.get(c.chain)
        chains.append(
            [
                c.chain,
                c.atoms,
                len(c.placements),
                None if best is None else round(float(best.score.value), 4),
                None if best is None else round(float(best.score.vector_agreement), 3),
                (c.confidence or {}).get("verdict", "not placed"),
                "-" if assembled is None else assembled + 1,
            ]
        )
    rows = []
    for c in result.chains:
        for k, p in enumerate(c.placements, 1):
            T = np.asarray(p.T_target_source)
            rows.append(
                [
                    c.chain,
                    k,
                    round(float(p.score.value), 4),
                    round(float(p.score.vector_agreement), 3),
                    round(float(p.score.overlap), 3),
                    round(tf.rotation_angle_deg(T), 2),
                    ", ".join(f"{v:.1f}" for v in T[:3, 3]),
                    "yes" if result.assembled.get(c.chain) == k - 1 else "",
                    written.get((c.chain, k), ""),
                ]
            )
    low = [c.chain for c in result.chains if (c.confidence or {}).get("verdict") == "low"]
    fewer = [
        f"{c.chain} ({len(c.placements)})" for c in result.chains if 0 < len(c.placements) < result.params.get("top", 0)
    ]
    text = (
        "score = map correlation x vector agreement of the chain's simulated density; the verdict is the "
        "rank-1 placement's (high, medium, low)."
    )
    if low:
        text += f" Low: chain(s) {', '.join(low)}; what to try: {FIT_ADVICE}."
    if fewer:
        text += (
            f" Fewer placements than --top {result.params.get('top')}: {', '.join(fewer)}: the other "
            "coarse placements converged onto these poses when refined (distinct poses differ by more "
            f"than {result.params.get('same_pose_A', 3):g} Å or {result.params.get('same_pose_deg', 10):g}°)."
        )
    if result.left_out:
        text += f" Left out of the assembled model (every placement clashes): {', '.join(result.left_out)}."
    return [
        {
            "heading": "Inputs",
            "tables": [
                {
                    "columns": ["", "value"],
                    "rows": [
                        ["model", model],
                        ["map", map_path],
                        ["resolution (Å)", result.resolution_A],
                        [
                            "map contour",
                            f"{result.target_contour:.4g}"
                            + (" (estimated)" if result.target_contour_estimated else ""),
                        ],
                        ["sampling interval (Å)", result.params.get("sampling_A")],
                        ["time (s)", round(result.timings_s.get("total", 0.0), 2)],
                    ],
                }
            ],
        },
        {
            "heading": "Chains",
            "text": text,
            "tables": [
                {
                    "columns": [
                        "chain",
                        "trace atoms",
                        "placements",
                        "best score",
                        "agreement",
                        "confidence",
                        "assembled rank",
                    ],
                    "rows": chains,
                }
            ],
        },
        {
            "heading": "Placements on the map",
            "text": "The map's maximum-intensity projections in grey; each chain's placements as CA/P traces "
            "(rank 1 thick). fit.cxc opens every chain's rank-1 placement in ChimeraX.",
            "images": list(images),
        },
        {
            "heading": "Every placement",
            "tables": [
                {
                    "columns": [
                        "chain",
                        "rank",
                        "score",
                        "agreement",
                        "overlap",
                        "rotation (deg)",
                        "translation (Å)",
                        "assembled",
                        "file",
                    ],
                    "rows": rows,
                }
            ],
        },
    ]


def search_sections(result, images: list) -> list:
    """Sections for a `catalogue.SearchResult` (images from `pictures.search_hits`)."""
    from .. import transform as tf

    rows = []
    for k, h in enumerate(result.hits, 1):
        T = np.asarray(h.T_query_entry)
        rows.append(
            [
                k,
                h.map,
                round(h.score, 4),
                round(h.alignment_score, 4),
                round(h.coverage, 3),
                None if h.correlation is None else round(h.correlation, 4),
                round(h.signature_distance, 3),
                round(tf.rotation_angle_deg(T), 2),
                ", ".join(f"{v:.1f}" for v in T[:3, 3]),
            ]
        )
    sections = [
        {
            "heading": "Query",
            "text": f"{result.query}: {result.searched} of {result.entries} entries aligned "
            "(the closest by shape signature).",
            "tables": [
                {
                    "columns": ["", "value"],
                    "rows": [[k, v] for k, v in sorted(result.params.items()) if not isinstance(v, (dict, list))],
                }
            ],
        },
        {
            "heading": "Hits",
            "text": "score = alignment score (map correlation x vector agreement) x coverage (the fraction of the "
            "query's points the moved entry covers): a part of the query fits well but covers little.",
            "tables": [
                {
                    "columns": [
                        "rank",
                        "map",
                        "score",
                        "alignment score",
                        "coverage",
                        "correlation",
                        "signature distance",
                        "rotation (deg)",
                        "translation (Å)",
                    ],
                    "rows": rows,
                }
            ],
            "images": list(images),
        },
    ]
    if result.errors:
        sections.append(
            {
                "heading": "Entries that could not be aligned",
                "tables": [{"columns": ["map", "error"], "rows": [list(e) for e in result.errors]}],
            }
        )
    return sections


def batch_sections(rows: list, images: list, *, out_tsv: str) -> list:
    """Sections for a batch results table (rows: its lines as dicts)."""
    counts = {
        v: sum(1 for r in rows if r.get("status") == "ok" and r.get("confidence") == v)
        for v in ("high", "medium", "low")
    }
    errors = [r for r in rows if r.get("status") != "ok"]
    table = [
        [
            r.get("source"),
            r.get("target"),
            r.get("status"),
            round(float(r["score"]), 4) if r.get("score") else None,
            r.get("confidence") or None,
            r.get("mode") or None,
            r.get("error") or "",
        ]
        for r in rows
    ]
    return [
        {
            "heading": "Summary",
            "text": f"{out_tsv}: {len(rows)} pair(s), {len(rows) - len(errors)} aligned (confidence high "
            f"{counts['high']}, medium {counts['medium']}, low {counts['low']}), {len(errors)} error(s). "
            "A low answer needs checking: see the README's Confidence section.",
            "images": list(images),
        },
        {
            "heading": "Pairs",
            "tables": [
                {"columns": ["source", "target", "status", "score", "confidence", "mode", "error"], "rows": table}
            ],
        },
    ]
