"""PNG pictures of superpositions and comparisons (matplotlib, Agg backend, no display).

    align_pictures(source_map, target_map, T, out_dir)     -> [align_projections.png]
    compare_pictures(compare_result, out_dir)              -> projections, FSC, blobs
    fit_placements(target_map, rows, path)                  -> path (each chain's placements)
    search_hits(query_map, hits, path)                      -> path (the best hits on the query)
    batch_scores(rows, path)                                -> path (scores by verdict)
    variance_slices(variance_map, path, mean=, contour=)   -> [path] (projections, slices through the maximum)

Projections are maximum-intensity projections of maps on the target's grid along z, y
and x, drawn in world Å: the target in blue, the source in orange, added on black (where
both have density the picture turns white).  Each map is normalised by its 99.5th
percentile of projected intensity, so different density scales look alike.
Every file is written through `io.atomic_write`.
"""

from __future__ import annotations

import os

import numpy as np

from ..types import DensityMap

TARGET_RGB = np.array([0.25, 0.55, 1.0])
SOURCE_RGB = np.array([1.0, 0.55, 0.1])
BLOB_COLOURS = ("#39d353", "#ff4fd8")  # target_minus_source, source_minus_target
AXES = (("z", 0, ("x", "y")), ("y", 1, ("x", "z")), ("x", 2, ("y", "z")))  # axis dropped, array axis, shown


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path) -> str:
    from .files import atomic_write

    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    _pyplot().close(fig)
    return os.fspath(path)


def _extent(grid: DensityMap, shown) -> list:
    """imshow extent (left, right, bottom, top) in world Å for the two shown axes."""
    i, j = "xyz".index(shown[0]), "xyz".index(shown[1])
    o, v, n = grid.origin_A, grid.voxel_size_A, grid.shape_xyz
    return [o[i] - v[i] / 2, o[i] + (n[i] - 0.5) * v[i], o[j] - v[j] / 2, o[j] + (n[j] - 0.5) * v[j]]


def _mip(data: np.ndarray, array_axis: int) -> np.ndarray:
    """Projection as an image: (y, x), (z, x) or (z, y), rows along the second shown axis."""
    return data.max(axis=array_axis)


def _normalised(p: np.ndarray) -> np.ndarray:
    """0 at the projection's background (median), 1 at its 99.5th percentile; all 0 when flat."""
    low, top = float(np.median(p)), float(np.percentile(p, 99.5))
    if not top > low + 1e-6 * max(abs(top), 1e-30):
        return np.zeros(p.shape)
    return np.clip((p - low) / (top - low), 0.0, 1.0)


def _overlay(target_p, source_p) -> np.ndarray:
    rgb = _normalised(target_p)[..., None] * TARGET_RGB + _normalised(source_p)[..., None] * SOURCE_RGB
    return np.clip(rgb, 0.0, 1.0)


def projections(
    target: DensityMap, rows: list, path, *, title: str | None = None, names: tuple = ("target", "source")
) -> str:
    """One row of three projections per (label, source-on-target data) in `rows`, the
    target overlaid in blue and the source in orange."""
    plt = _pyplot()
    fig, axes = plt.subplots(len(rows), 3, figsize=(12, 4.1 * len(rows)), squeeze=False)
    target_mips = [_mip(target.data, axis) for _, axis, _ in AXES]
    for r, (label, source_data) in enumerate(rows):
        empty = " (source outside this box)" if not np.any(source_data > np.median(source_data)) else ""
        for c, (dropped, axis, shown) in enumerate(AXES):
            ax = axes[r][c]
            img = _overlay(target_mips[c], _mip(source_data, axis))
            ax.imshow(img, origin="lower", extent=_extent(target, shown), interpolation="nearest")
            ax.set_xlabel(f"{shown[0]} (Å)")
            ax.set_ylabel(f"{shown[1]} (Å)")
            ax.set_title(f"{label}: projection along {dropped}{empty}", fontsize=10)
    _legend(fig, names)
    if title:
        fig.suptitle(title, fontsize=12)
    fig.tight_layout(rect=(0, 0.04, 1, 0.97 if title else 1))
    return _save(fig, path)


def _legend(fig, names=("target", "source")):
    from matplotlib.patches import Patch

    fig.legend(
        handles=[
            Patch(color=TARGET_RGB, label=names[0]),
            Patch(color=SOURCE_RGB, label=names[1]),
            Patch(color=(1, 1, 1), label="both", ec="black"),
        ],
        loc="lower center",
        ncol=3,
        frameon=False,
    )


def align_pictures(src_map, tgt_map, T_target_source, out_dir, *, after: DensityMap | None = None) -> list:
    """Before/after projections of a superposition (before = the source in its own world
    coordinates, i.e. moved by the identity) on the target's grid; returns [png path].
    after: the source already resampled by T_target_source (`outputs.resample_onto`), when
    the caller has it."""
    from .maps import as_map, resample_onto

    src_map, tgt_map = as_map(src_map), as_map(tgt_map)
    before = resample_onto(src_map, tgt_map, np.eye(4)).data
    moved = after if after is not None else resample_onto(src_map, tgt_map, np.asarray(T_target_source, float))
    path = os.path.join(os.fspath(out_dir), "align_projections.png")
    return [
        projections(
            tgt_map,
            [("before", before), ("after", moved.data)],
            path,
            title="maximum-intensity projections on the target's grid",
        )
    ]


def fsc_plot(curve, path, *, title: str = "Fourier shell correlation") -> str:
    """FSC against spatial frequency (1/Å, resolution in Å on the top axis), with the 0.5
    and 0.143 lines and the crossings marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    f = np.asarray(curve.frequency_per_A)
    ax.plot(f, curve.fsc, color="#1f4e99", lw=2, label="FSC" + (" (masked)" if curve.masked else ""))
    for level, res, colour in (
        (0.5, curve.resolution_at_05_A, "#d97706"),
        (0.143, curve.resolution_at_0143_A, "#b91c1c"),
    ):
        ax.axhline(level, color=colour, ls="--", lw=1)
        if res is not None:
            ax.axvline(1.0 / res, color=colour, ls=":", lw=1)
            ax.plot([1.0 / res], [level], "o", color=colour)
            ax.annotate(
                f"{res:.1f} Å at {level:g}",
                (1.0 / res, level),
                textcoords="offset points",
                xytext=(6, 6),
                color=colour,
                fontsize=10,
            )
        else:
            ax.text(f[-1], level + 0.02, f"never below {level:g}", color=colour, ha="right", fontsize=9)
    ax.set_xlim(0, f[-1] if f.size else 1)
    ax.set_ylim(min(-0.05, float(np.min(curve.fsc)) - 0.05) if f.size else -0.05, 1.05)
    ax.set_xlabel("spatial frequency (1/Å)")
    ax.set_ylabel("FSC")
    top = ax.secondary_xaxis(
        "top", functions=(lambda x: 1.0 / np.maximum(x, 1e-6), lambda r: 1.0 / np.maximum(r, 1e-6))
    )
    top.set_xlabel("resolution (Å)")
    ticks = [r for r in (50, 20, 10, 8, 6, 5, 4, 3, 2.5, 2) if f.size and 1.0 / r <= f[-1]]
    top.set_xticks(ticks)
    top.set_xticklabels([f"{t:g}" for t in ticks])
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right")
    ax.set_title(title, fontsize=11, pad=28)
    fig.tight_layout()
    return _save(fig, path)


def blob_projections(target: DensityMap, differences: dict, path, *, top: int = 6, labelled: int = 3) -> str:
    """The target's projections in grey with the outlines of the largest difference blobs:
    target_minus_source in green, source_minus_target in magenta; the `labelled` largest
    of each (and only those over 5% of the largest's mass) carry their rank and mass, so
    labels do not pile up."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.6), squeeze=False)
    names = ("target_minus_source", "source_minus_target")
    for c, (dropped, axis, shown) in enumerate(AXES):
        ax = axes[0][c]
        ext = _extent(target, shown)
        ax.imshow(
            _normalised(_mip(target.data, axis)),
            origin="lower",
            extent=ext,
            cmap="gray",
            vmin=0,
            vmax=1.3,
            interpolation="nearest",
        )
        for name, colour in zip(names, BLOB_COLOURS):
            d = differences[name]
            for rank, blob in enumerate(d.blobs[:top], 1):
                footprint = np.any(d.labels == rank, axis=axis).astype(float)
                ny, nx = footprint.shape
                xs = np.linspace(ext[0], ext[1], nx + 1)
                ys = np.linspace(ext[2], ext[3], ny + 1)
                ax.contour(
                    0.5 * (xs[1:] + xs[:-1]),
                    0.5 * (ys[1:] + ys[:-1]),
                    footprint,
                    levels=[0.5],
                    colors=colour,
                    linewidths=1.5,
                )
                if rank > labelled or blob.mass_kDa < 0.05 * d.blobs[0].mass_kDa:
                    continue
                i, j = "xyz".index(shown[0]), "xyz".index(shown[1])
                sign = "+" if name == names[0] else "-"
                ax.annotate(
                    f"{sign}{rank}: {blob.mass_kDa:.0f} kDa",
                    (blob.centre_A[i], blob.centre_A[j]),
                    color=colour,
                    fontsize=9,
                    fontweight="bold",
                    ha="center",
                    bbox=dict(boxstyle="round,pad=0.15", fc="black", alpha=0.6, lw=0),
                )
        ax.set_xlabel(f"{shown[0]} (Å)")
        ax.set_ylabel(f"{shown[1]} (Å)")
        ax.set_title(f"projection along {dropped}", fontsize=10)
    from matplotlib.lines import Line2D

    fig.legend(
        handles=[
            Line2D([], [], color=BLOB_COLOURS[0], lw=2, label="+k: in target, not in source"),
            Line2D([], [], color=BLOB_COLOURS[1], lw=2, label="-k: in source, not in target"),
        ],
        loc="lower center",
        ncol=2,
        frameon=False,
    )
    fig.suptitle("difference blobs on the target (rank: mass)", fontsize=12)
    fig.tight_layout(rect=(0, 0.09, 1, 0.95))
    return _save(fig, path)


def compare_pictures(result, out_dir) -> list:
    """projections.png (before/after), fsc.png and difference_blobs.png for a CompareResult."""
    from .maps import resample_onto

    out_dir = os.fspath(out_dir)
    target = result.target
    before = resample_onto(result.source, target, np.eye(4))
    before = result.scale.apply(before.data)
    paths = [
        projections(
            target,
            [("before", before), ("after", result.source_on_target.data)],
            os.path.join(out_dir, "projections.png"),
            title="maximum-intensity projections on the target's grid",
        ),
        fsc_plot(result.fsc, os.path.join(out_dir, "fsc.png")),
        blob_projections(target, result.difference, os.path.join(out_dir, "difference_blobs.png")),
    ]
    return paths


def variance_peak(data: np.ndarray) -> tuple[tuple[int, int, int], float]:
    """The voxel of largest variance, as an array index (z, y, x), and its value."""
    flat = int(np.argmax(data))
    z, y, x = (int(i) for i in np.unravel_index(flat, data.shape))
    return (z, y, x), float(data.flat[flat])


def variance_slices(
    variance_map: DensityMap, path, *, mean: DensityMap | None = None, contour: float | None = None
) -> list:
    """The variance map in two rows of the three planes: maximum-intensity projections
    (where the variance lies anywhere in the box) and the slices through the voxel of
    largest variance (circled; the largest variance need not lie on the
    central slices).  One colour bar from 0 to that maximum; the mean's contour in white
    when given (on projections: the outline of the mean above it).  Returns [path]."""
    plt = _pyplot()
    fig, axes = plt.subplots(2, 3, figsize=(14, 9.2), layout="constrained")
    data = variance_map.data
    peak, top = variance_peak(data)
    top = top if top > 0 else 1.0
    peak_A = variance_map.index_to_world(np.array([peak[::-1]], float))[0]
    image = None
    for c, (dropped, axis, shown) in enumerate(AXES):
        ext = _extent(variance_map, shown)
        i, j = "xyz".index(shown[0]), "xyz".index(shown[1])
        for r, picture in enumerate((_mip(data, axis), np.take(data, peak[axis], axis=axis))):
            ax = axes[r][c]
            image = ax.imshow(
                picture, origin="lower", extent=ext, cmap="magma", vmin=0, vmax=top, interpolation="nearest"
            )
            if mean is not None and contour is not None:
                m = (
                    (mean.data > contour).any(axis=axis).astype(float)
                    if r == 0
                    else np.take(mean.data, peak[axis], axis=axis)
                )
                level = 0.5 if r == 0 else contour
                if m.max() > level > m.min():
                    ny, nx = m.shape
                    xs = np.linspace(ext[0], ext[1], nx + 1)
                    ys = np.linspace(ext[2], ext[3], ny + 1)
                    ax.contour(
                        0.5 * (xs[1:] + xs[:-1]),
                        0.5 * (ys[1:] + ys[:-1]),
                        m,
                        levels=[level],
                        colors="white",
                        linewidths=0.8,
                    )
            ax.plot([peak_A[i]], [peak_A[j]], "o", mfc="none", mec="#39d353", ms=16, mew=1.5)
            k = "xyz".index(dropped)
            ax.set_title(
                f"projection along {dropped} (maximum)"
                if r == 0
                else f"{shown[0]}{shown[1]} slice through the maximum, {dropped} = {peak_A[k]:.1f} Å",
                fontsize=10,
            )
            ax.set_xlabel(f"{shown[0]} (Å)")
            ax.set_ylabel(f"{shown[1]} (Å)")
    bar = fig.colorbar(image, ax=[ax for row in axes for ax in row], shrink=0.85)
    bar.set_label("variance (reference density units²), 0 to the maximum")
    title = f"variance: largest {top:.4g} at ({peak_A[0]:.1f}, {peak_A[1]:.1f}, {peak_A[2]:.1f}) Å (green circle)" + (
        "; white: the mean at the reference contour" if mean is not None and contour is not None else ""
    )
    fig.suptitle(title, fontsize=12)
    return [_save(fig, path)]


MAX_FIT_ROWS = 12  # chains drawn in fit_placements.png (the report's table lists them all)


def fit_placements(target: DensityMap, rows: list, path) -> str:
    """The map's maximum-intensity projections (grey), one row per chain, with that
    chain's placements drawn as their CA/P traces: rank 1 thick, later ranks thinner,
    each labelled with its rank at its centre.  rows: [(chain, verdict, [(rank, score,
    trace (N, 3) world Å), ...])]; at most MAX_FIT_ROWS are drawn."""
    plt = _pyplot()
    shown_rows = rows[:MAX_FIT_ROWS]
    n = max(1, len(shown_rows))
    fig, axes = plt.subplots(n, 3, figsize=(13, 3.9 * n + 0.6), squeeze=False)
    mips = [_normalised(_mip(target.data, axis)) for _, axis, _ in AXES]
    colours = plt.get_cmap("tab10")
    for r, (chain, verdict, placements) in enumerate(shown_rows):
        for c, (dropped, _axis, shown) in enumerate(AXES):
            ax = axes[r][c]
            ext = _extent(target, shown)
            ax.imshow(mips[c], origin="lower", extent=ext, cmap="gray", vmin=0, vmax=1.3, interpolation="nearest")
            i, j = "xyz".index(shown[0]), "xyz".index(shown[1])
            for rank, _score, trace in reversed(placements):  # rank 1 drawn last, on top
                colour = colours((rank - 1) % 10)
                ax.plot(
                    trace[:, i],
                    trace[:, j],
                    "-",
                    color=colour,
                    lw=2.0 if rank == 1 else 0.9,
                    alpha=1.0 if rank == 1 else 0.75,
                )
                centre = trace.mean(0)
                ax.annotate(
                    f"{rank}",
                    (centre[i], centre[j]),
                    color="white",
                    fontsize=9,
                    fontweight="bold",
                    ha="center",
                    va="center",
                    bbox=dict(boxstyle="circle,pad=0.15", fc=colour, alpha=0.85, lw=0),
                )
            ax.set_xlim(ext[0], ext[1])
            ax.set_ylim(ext[2], ext[3])
            ax.set_xlabel(f"{shown[0]} (Å)")
            ax.set_ylabel(f"{shown[1]} (Å)")
            scores = ", ".join(f"{rank}: {score:.3f}" for rank, score, _ in placements[:5])
            ax.set_title(
                f"chain {chain} ({verdict}), along {dropped}" + (f"\nscores {scores}" if c == 0 else ""), fontsize=9
            )
    more = f"; {len(rows) - len(shown_rows)} more chain(s) in the report's table" if len(rows) > len(shown_rows) else ""
    fig.suptitle(
        "placements of each chain on the map's projections (rank at the trace's centre; verdict of rank 1)" + more,
        fontsize=11,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    return _save(fig, path)


def search_hits(query: DensityMap, hits: list, path) -> str:
    """The query's projections (blue) with each hit moved onto it (orange), one row per
    hit: hits = [(label, entry data resampled on the query's grid)]."""
    return projections(
        query, hits, path, title="search: the best hits (orange) moved onto the query (blue)", names=("query", "hit")
    )


VERDICT_COLOURS = {"high": "#2e7d32", "medium": "#f9a825", "low": "#c62828", "": "#9e9e9e"}


def batch_scores(rows: list, path) -> str:
    """Histogram of the pairs' scores stacked by confidence verdict, and the count of each
    status.  rows: RESULTS.tsv lines as dicts."""
    plt = _pyplot()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw=dict(width_ratios=(3, 1)))
    ok = [r for r in rows if r.get("status") == "ok" and r.get("score")]
    scores = {v: [float(r["score"]) for r in ok if (r.get("confidence") or "") == v] for v in VERDICT_COLOURS}
    values = [x for xs in scores.values() for x in xs]
    top = max([1.0] + values)
    bins = np.linspace(min([0.0] + values), top, 21)
    kept = [v for v in VERDICT_COLOURS if scores[v]]
    if kept:
        ax.hist(
            [scores[v] for v in kept],
            bins=bins,
            stacked=True,
            color=[VERDICT_COLOURS[v] for v in kept],
            label=[v or "no verdict" for v in kept],
        )
        ax.legend(title="confidence")
    ax.set_xlabel("score (map correlation x vector agreement)")
    ax.set_ylabel("pairs")
    ax.set_title(f"{len(ok)} aligned pair(s)", fontsize=10)
    statuses = ["ok", "error"]
    counts = [sum(1 for r in rows if r.get("status") == s) for s in statuses]
    bx.bar(statuses, counts, color=["#1f4e99", "#c62828"])
    for k, c in enumerate(counts):
        bx.annotate(str(c), (k, c), ha="center", va="bottom")
    bx.set_title("status", fontsize=10)
    from matplotlib.ticker import MaxNLocator

    for axis in (ax, bx):
        axis.yaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    return _save(fig, path)
