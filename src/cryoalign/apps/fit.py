"""Atomic-model fitting: place each chain of a model into a map (paper's application).

For every chain: simulate its density at the map's resolution (molmap style,
`simulate`), align it locally into the map at a 3 Å sampling interval, and keep
the top placements.  The map's point cloud and descriptors are computed once
for all chains.  An assembled model then takes, chain by chain (best-scoring
chain first), the best placement that does not clash with chains already placed,
so identical chains end up in different copies of their density.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
from scipy.spatial import cKDTree

from .. import io
from .. import transform as tf
from ..config import AlignConfig
from ..core.confidence import assess
from ..core.pipeline import as_map, candidates_for
from ..core.prepare import prepare, resolve_contour
from ..errors import InputError
from ..io.robust import without_outliers
from ..timing import Timer
from . import simulate

log = logging.getLogger(__name__)


@dataclass
class ChainFit:
    chain: str
    placements: list  # Candidate, best first
    atoms: int
    source_contour: float
    confidence: dict | None = None  # of the best placement (confidence.assess)


@dataclass
class FitResult:
    chains: list  # ChainFit per fitted chain, in the model's order
    assembled: dict  # chain -> index into its placements (chains left out are absent)
    left_out: list  # chains whose every placement clashes
    target_contour: float
    target_contour_estimated: bool
    resolution_A: float
    timings_s: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        from .. import __version__

        return {
            "version": __version__,
            "resolution_A": self.resolution_A,
            "target_contour": self.target_contour,
            "target_contour_estimated": self.target_contour_estimated,
            "chains": [
                {
                    "chain": c.chain,
                    "source_contour": c.source_contour,
                    "confidence": c.confidence,
                    "placements": [dict(p.as_dict(), rank=i + 1) for i, p in enumerate(c.placements)],
                    "assembled_rank": (self.assembled[c.chain] + 1) if c.chain in self.assembled else None,
                }
                for c in self.chains
            ],
            "left_out": list(self.left_out),
            "timings_s": {k: round(v, 4) for k, v in self.timings_s.items()},
            "params": self.params,
        }


def fit_config(config: AlignConfig | None = None, **overrides) -> AlignConfig:
    """The configuration of a fit: local mode, `fit_sampling_A` unless `sampling_A` is set,
    5 placements per chain unless `top` is given."""
    base = config or AlignConfig(top=5)
    base = base.replace(**overrides)
    return base.replace(mode="local", sampling_A=base.sampling_A or base.fit_sampling_A)


def fit_model(
    model,
    density,
    *,
    resolution_A: float,
    chains=None,
    contour: float | None = None,
    config: AlignConfig | None = None,
    **overrides,
) -> FitResult:
    """Fit every chain (or the named `chains`) of `model` (path or gemmi.Structure) into
    `density` (path or DensityMap).  Placements map the model's coordinates onto the map's.
    config / overrides: `AlignConfig` fields (top, jobs, seed, ...; see `fit_config`)."""
    config = fit_config(config, **overrides)
    config = config.replace(exhaustive_resolution_A=config.exhaustive_resolution_A or float(resolution_A))
    timer = Timer()
    st = io.read_model(model) if not hasattr(model, "setup_entities") else model
    target = without_outliers(as_map(density))
    names = list(dict.fromkeys(chains)) if chains else simulate.chain_ids(st)  # each chain once
    available = simulate.chain_ids(st)
    unknown = [c for c in names if c not in available]
    if unknown:
        raise InputError(f"chain(s) {', '.join(unknown)} not in the model; it has {', '.join(available)}")
    ligand_only = [c for c in names if not _has_polymer(st, c)]
    if ligand_only and len(ligand_only) == len(names):
        raise InputError(
            f"chain(s) {', '.join(ligand_only)} hold only ligands or waters (no protein or "
            "nucleic-acid residue), too small to fit on their own; name polymer chains with chains="
        )
    for c in ligand_only:
        log.warning("chain %s holds only ligands or waters (no protein or nucleic-acid residue): skipped", c)
    names = [c for c in names if c not in ligand_only]
    region, tc_est = resolve_contour(target, contour, "contour")
    tc = region.contour
    tgt = prepare(target, tc, config, region=region, name="the map", contour_estimated=tc_est, fine=True, timer=timer)
    fits = []
    for n, name in enumerate(names, 1):
        with timer.stage("simulate"):
            sim = simulate.simulate(st, resolution_A, chains=[name])
            sc = simulate.contour_for(sim, simulate.model_mass_Da(st, chains=[name]))
        log.info(
            "chain %s (%d of %d): simulated at %.3g Å, aligning into the map ...", name, n, len(names), resolution_A
        )
        try:
            src = prepare(sim, sc, config, name=f"chain {name}'s simulated map", timer=timer)
        except InputError as exc:
            log.warning("chain %s skipped: %s", name, exc)
            continue
        try:
            placements, _ = candidates_for(src, tgt, config, timer)
        except InputError as exc:  # no region of the map can hold this chain
            log.warning("chain %s not placed: %s", name, exc)
            placements = []
        trace = io.chain_trace(st, name)
        fits.append(
            ChainFit(
                chain=name,
                placements=placements,
                atoms=len(trace),
                source_contour=sc,
                confidence=assess(placements, "local", config) if placements else None,
            )
        )
        if placements:
            log.info("chain %s: best score %.3f", name, placements[0].score.value)
    assembled, left_out = assemble(st, fits, config)
    timer.timings["total"] = timer.total()
    params = dict(
        config.as_dict(), resolution_A=resolution_A, target_contour=tc, target_contour_estimated=tc_est, chains=names
    )
    return FitResult(
        chains=fits,
        assembled=assembled,
        left_out=left_out,
        target_contour=tc,
        target_contour_estimated=tc_est,
        resolution_A=float(resolution_A),
        timings_s=dict(timer.timings),
        params=params,
    )


def _has_polymer(st, chain_name) -> bool:
    return any(
        io.is_trace_atom(res, atom) for chain in st[0] if chain.name == chain_name for res in chain for atom in res
    )


def assemble(st, fits: list, config: AlignConfig = AlignConfig()) -> tuple[dict, list]:
    """For each chain, best-scoring chain first: the index of its best placement whose
    trace atoms do not clash with those already placed.  Returns ({chain: index}, left_out)."""
    order = sorted(
        range(len(fits)), key=lambda i: (-(fits[i].placements[0].score.value if fits[i].placements else -1.0), i)
    )
    placed = np.zeros((0, 3))
    chosen, left_out = {}, []
    for i in order:
        fit = fits[i]
        trace = io.chain_trace(st, fit.chain)
        for k, cand in enumerate(fit.placements):
            moved = tf.apply(cand.T_target_source, trace)
            if len(placed):
                d, _ = cKDTree(placed).query(moved, distance_upper_bound=config.clash_distance_A)
                if np.isfinite(d).mean() > config.clash_fraction:
                    continue
            chosen[fit.chain] = k
            placed = np.vstack([placed, moved])
            break
        else:
            left_out.append(fit.chain)
    return chosen, left_out


def chain_structure(st, chain_name: str, T: np.ndarray | None = None):
    """A copy of `st` keeping only `chain_name` (first model), moved by T if given."""
    out = st.clone()
    while len(out) > 1:
        del out[len(out) - 1]
    model = out[0]
    for i in range(len(model) - 1, -1, -1):
        if model[i].name != chain_name:
            del model[i]
    return io.transform_model(out, T) if T is not None else out


def assembled_structure(st, result: FitResult):
    """One model holding each placed chain at its assembled placement."""
    out = st.clone()
    while len(out) > 1:
        del out[len(out) - 1]
    model = out[0]
    placements = {
        c.chain: c.placements[result.assembled[c.chain]] for c in result.chains if c.chain in result.assembled
    }
    for i in range(len(model) - 1, -1, -1):
        chain = model[i]
        if chain.name not in placements:
            del model[i]
            continue
        T = np.asarray(placements[chain.name].T_target_source, float)
        for res in chain:
            for atom in res:
                atom.pos = _moved(atom.pos, T)
    return out


def _moved(pos, T):
    import gemmi

    x = T[:3, :3] @ np.array([pos.x, pos.y, pos.z]) + T[:3, 3]
    return gemmi.Position(*x)


def placement_table(result: FitResult) -> str:
    """Tab-separated table: one row per placement."""
    rows = ["chain\trank\tscore\toverlap\trotation_deg\ttx\tty\ttz\tmask_centre\tassembled"]
    for c in result.chains:
        for k, p in enumerate(c.placements):
            T = np.asarray(p.T_target_source)
            centre = ",".join(f"{v:.1f}" for v in p.mask_centre_A) if p.mask_centre_A else ""
            rows.append(
                f"{c.chain}\t{k + 1}\t{p.score.value:.4f}\t{p.score.overlap:.3f}\t"
                f"{tf.rotation_angle_deg(T):.2f}\t{T[0, 3]:.3f}\t{T[1, 3]:.3f}\t{T[2, 3]:.3f}\t"
                f"{centre}\t{'yes' if result.assembled.get(c.chain) == k else ''}"
            )
    return "\n".join(rows) + "\n"


__all__ = [
    "fit_model",
    "FitResult",
    "ChainFit",
    "assemble",
    "assembled_structure",
    "chain_structure",
    "placement_table",
]
