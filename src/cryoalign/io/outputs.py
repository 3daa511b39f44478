"""What a superposition produces besides the matrix: the source map resampled onto
the target's grid, moved models, and a ChimeraX script that shows them together."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from .. import transform as tf
from ..types import DensityMap
from .files import write_text
from .maps import resample_onto


def chimerax_script(
    path,
    *,
    target_map: str,
    target_contour: float,
    source_map: str,
    source_contour: float,
    T_target_source: np.ndarray,
    resampled_map: str | None = None,
    models: tuple = (),
    folder: str | None = None,
) -> None:
    """Write a .cxc that opens the target and the source placed by T (and moved models).

    File names are written relative to the script's folder (`folder`, default the one
    it is written to) when they live in it, so the output folder can be moved as a whole."""
    name = _relative_to(folder or os.path.dirname(os.path.abspath(path)))

    T = np.asarray(T_target_source, float)
    flat = ",".join(f"{v:.6f}" for v in T[:3, :].ravel())
    lines = [
        "# cryoalign superposition: open in ChimeraX (File > Open, or 'open superposition.cxc')",
        "# The models below are numbered #1, #2, ... so the script starts from an empty session:",
        "# it closes whatever is open. Save your session first if you need it.",
        "close session",
        f"open {_q(name(target_map))}",
        f"volume #1 level {target_contour:.6g} style mesh color #9b9b9b",
        f"open {_q(name(source_map))}",
        f"volume #2 level {source_contour:.6g} style surface color #4f8fe6 transparency 0.4",
        "# place the original source map by T_target_source (rows of R | t)",
        f"view matrix models #2,{flat}",
    ]
    next_id = 3
    if resampled_map:
        lines += [
            f"open {_q(name(resampled_map))}",
            f"volume #{next_id} level {source_contour:.6g} style surface color #e6a04f transparency 0.4",
            f"hide #{next_id} models",
        ]
        next_id += 1
    for model in models:
        lines += [f"open {_q(name(model))}", f"color #{next_id} #d94f4f"]
        next_id += 1
    lines += ["view"]
    write_text(path, "\n".join(lines) + "\n")


CHAIN_COLOURS = (
    "#e6194b",
    "#3cb44b",
    "#4363d8",
    "#f58231",
    "#911eb4",
    "#42d4f4",
    "#f032e6",
    "#bfef45",
    "#469990",
    "#9a6324",
    "#800000",
    "#808000",
    "#000075",
    "#fabed4",
    "#ffe119",
    "#dcbeff",
)


def fit_script(
    path, *, map_path: str, contour: float, assembled: str | None = None, folder: str | None = None, best: Sequence = ()
) -> None:
    """Write a .cxc that opens the map (grey mesh), every chain's rank-1 placement (`best`:
    (chain, model path) pairs, one colour each) and the assembled model (hidden: the
    rank-1 placements of identical chains may share one copy, the assembled model never)."""
    name = _relative_to(folder or os.path.dirname(os.path.abspath(path)))
    lines = [
        "# cryoalign fit: open in ChimeraX",
        "# The models below are numbered #1, #2, ... so the script starts from an empty session:",
        "# it closes whatever is open. Save your session first if you need it.",
        "close session",
        f"open {_q(name(map_path))}",
        f"volume #1 level {contour:.6g} style mesh color #9b9b9b",
    ]
    number = 1
    for k, (chain, model) in enumerate(best):
        number += 1
        lines += [
            f"# #{number}: chain {chain}, rank-1 placement",
            f"open {_q(name(model))}",
            f"color #{number} {CHAIN_COLOURS[k % len(CHAIN_COLOURS)]}",
        ]
    if assembled:
        number += 1
        lines += [
            f"# #{number}: the assembled model (no clashes); show it with: show #{number} models",
            f"open {_q(name(assembled))}",
            f"color #{number} bychain",
        ]
        if best:
            lines.append(f"hide #{number} models")
    lines.append("view")
    write_text(path, "\n".join(lines) + "\n")


def _relative_to(folder):
    """File names relative to the script's folder when they live in it, so the output
    folder can be moved as a whole; absolute otherwise."""

    def name(p):
        p = os.path.abspath(p)
        rel = os.path.relpath(p, folder)
        return rel if not rel.startswith("..") else p

    return name


def _q(p: str) -> str:
    return f'"{p}"' if " " in p else p


def write_align_folder(
    folder,
    result,
    src_map: DensityMap,
    tgt_map: DensityMap,
    *,
    source_path: str,
    target_path: str,
    source_model=None,
    model_suffix: str = ".pdb",
    final_folder: str | None = None,
    pictures: bool = True,
) -> list[str]:
    """Write an `align` output folder and return the files written: result.json,
    params.json, source_on_target.mrc, the moved model(s), superposition.cxc, and with
    `pictures` align_projections.png and report.html.

    folder: where to write now; final_folder: where the folder will live (the ChimeraX
    script names the input maps relative to it when they are inside it)."""
    import json

    from .. import io

    final = final_folder or folder
    doc = result.to_json()
    written = []

    def out(name):
        path = os.path.join(folder, name)
        written.append(path)
        return path

    io.write_text(out("result.json"), json.dumps(doc, indent=1) + "\n")
    io.write_text(out("params.json"), json.dumps(doc["params"], indent=1) + "\n")
    moved = resample_onto(src_map, tgt_map, result.T_target_source)
    io.write_map(moved, out("source_on_target.mrc"))
    models = []
    if source_model is not None:
        io.write_model(
            io.transform_model(source_model, result.T_target_source), out("source_model_on_target" + model_suffix)
        )
        models.append(os.path.join(final, "source_model_on_target" + model_suffix))
        if result.params["mode"] == "local":  # the other ranked placements too
            for k, cand in enumerate(result.candidates[1:], 2):
                io.write_model(
                    io.transform_model(source_model, cand.T_target_source), out(f"source_model_rank{k}{model_suffix}")
                )
    chimerax_script(
        out("superposition.cxc"),
        target_map=target_path,
        target_contour=doc["params"]["target_contour"],
        source_map=source_path,
        source_contour=doc["params"]["source_contour"],
        T_target_source=result.T_target_source,
        resampled_map=os.path.join(final, "source_on_target.mrc"),
        models=tuple(models),
        folder=final,
    )
    if pictures:
        from . import pictures as pics
        from .report import align_sections, write_report

        images = pics.align_pictures(src_map, tgt_map, result.T_target_source, folder, after=moved)
        written += images
        write_report(out("report.html"), "cryoalign superposition", align_sections(result, images))
    return written


def write_fit_pictures(folder, result, st, density, *, model: str, map_path: str, written: dict) -> list[str]:
    """fit_placements.png (each chain's placements on the map's projections) and
    report.html for a `fit.FitResult`; returns the files written."""
    from . import pictures
    from .models import chain_trace
    from .report import fit_sections, write_report

    rows = []
    for c in result.chains:
        if not c.placements:
            continue
        trace = chain_trace(st, c.chain)
        rows.append(
            (
                c.chain,
                (c.confidence or {}).get("verdict", "-"),
                [
                    (k, float(p.score.value), tf.apply(np.asarray(p.T_target_source, float), trace))
                    for k, p in enumerate(c.placements, 1)
                ],
            )
        )
    image = pictures.fit_placements(density, rows, os.path.join(folder, "fit_placements.png"))
    page = write_report(
        os.path.join(folder, "report.html"),
        "cryoalign fit",
        fit_sections(result, [image], model=model, map_path=map_path, written=written),
    )
    return [image, page]


SEARCH_PICTURE_HITS = 3  # hits drawn on the query in search_hits.png


def write_search_pictures(folder, result, query) -> list[str]:
    """search_hits.png (the best hits whose map files are at hand, moved onto the query)
    and report.html for a `catalogue.SearchResult`; returns the files written."""
    from . import pictures
    from .emdb import resolve_map
    from .maps import read_map
    from .report import search_sections, write_report

    images = []
    if result.hits:
        query_map = read_map(resolve_map(query)[0])
        rows = []
        for k, h in enumerate(result.hits[:SEARCH_PICTURE_HITS], 1):
            if os.path.isfile(h.path):
                entry = read_map(h.path)
                rows.append(
                    (
                        f"hit {k} ({h.score:.3f})",
                        resample_onto(entry, query_map, np.asarray(h.T_query_entry, float)).data,
                    )
                )
        if rows:
            images.append(pictures.search_hits(query_map, rows, os.path.join(folder, "search_hits.png")))
    page = write_report(os.path.join(folder, "report.html"), "cryoalign search", search_sections(result, images))
    return images + [page]
