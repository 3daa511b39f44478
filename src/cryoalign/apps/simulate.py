"""Density maps simulated from atomic models, in the manner of Chimera's ``molmap``.

Each heavy atom of the first model becomes a 3D Gaussian of height equal to its
atomic number Z and standard deviation ``sigma = SIGMA_PER_RESOLUTION * resolution``
(molmap's sigma factor 1/(pi*sqrt(2)) ~ 0.225), truncated at ``CUTOFF_SIGMAS``
sigma along each axis. The map is the plain sum of these Gaussians, so an isolated
atom peaks at Z (not normalised to a maximum of 1, nor to unit integral).

Hydrogens (H, D) and waters are left out, and only the first conformer of
residues with alternative locations is used.

`contour_for` picks a threshold for such a map from the model's mass
(`model_mass_Da`), so that the enclosed volume is the expected molecular volume.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import InputError
from ..types import DensityMap

SIGMA_PER_RESOLUTION = 1.0 / (math.pi * math.sqrt(2.0))  # molmap's sigma_factor, ~0.225
CUTOFF_SIGMAS = 3.0
SPACING_PER_RESOLUTION = 1.0 / 3.0  # molmap's default gridSpacing = resolution / 3
MIN_DEFAULT_VOXEL_A = 0.5
MAX_VOXELS = 512**3
PROTEIN_A3_PER_DA = 1.21
# Up to this width (in voxels) each atom's Gaussian is summed exactly on its own
# box of grid points (cost grows as width**3); wider kernels splat the atoms onto the
# grid and blur, which is within ~1 % of the exact sum from this width on.
_MAX_DIRECT_SIGMA_VOXELS = 2.5
_CHUNK_VALUES = 4_000_000


def chain_ids(st) -> list[str]:
    """Names of the first model's chains that hold at least one atom.

    Parameters
    ----------
    st : gemmi.Structure

    Returns
    -------
    list of str
        In file order, each name once (gemmi may split one chain into several
        parts with the same name, e.g. polymer and ligands; they count as one).
    """
    names: dict[str, None] = {}
    for chain in _first_model(st):
        if any(len(res) for res in chain):
            names.setdefault(chain.name)
    return list(names)


def model_mass_Da(st, chains=None) -> float:
    """Sum of the atomic masses (Da) of the atoms `simulate` would use.

    Hydrogens and waters are not counted, so the mass of a model without
    explicit hydrogens is the same whether or not the file has them.

    Parameters
    ----------
    st : gemmi.Structure
    chains : None or iterable of str
        Chain names to include (None: all). A single string is one chain name.

    Raises
    ------
    InputError
        Unknown chain name or no atoms selected.
    """
    return float(_select_atoms(st, chains)[2].sum())


def simulate(
    st, resolution_A: float, *, chains=None, voxel_A: float | None = None, padding_A: float | None = None
) -> DensityMap:
    """Simulate a density map at `resolution_A` from the first model of `st`.

    Each selected atom contributes ``Z * exp(-r**2 / (2 * sigma**2))`` with Z its
    atomic number and ``sigma = SIGMA_PER_RESOLUTION * resolution_A``, truncated at
    ``CUTOFF_SIGMAS * sigma`` along each axis; an isolated atom peaks at Z.

    Parameters
    ----------
    st : gemmi.Structure
        Only the first model is used; hydrogens and waters are skipped.
    resolution_A : float
        Resolution in Å (> 0).
    chains : None or iterable of str
        Chain names to include (None: all, see `chain_ids`). A single string is
        one chain name.
    voxel_A : float, optional
        Cubic voxel edge in Å. Default ``resolution_A / 3``, at least 0.5 Å.
    padding_A : float, optional
        Margin around the atoms on each side in Å. Default
        ``CUTOFF_SIGMAS * sigma + 2 * voxel``, so no atom's Gaussian is clipped.

    Returns
    -------
    DensityMap
        float32, axis-aligned, origin at the atoms' minimum corner minus the
        padding, ``ceil(extent / voxel) + 1`` voxels along each axis, no path.

    Raises
    ------
    InputError
        Non-positive resolution, voxel or negative padding, unknown chain, no
        atoms selected, or a grid larger than 512**3 voxels.
    """
    resolution = _positive(resolution_A, "resolution", "Å, e.g. resolution_A=4")
    xyz, z_numbers, _ = _select_atoms(st, chains)
    sigma = SIGMA_PER_RESOLUTION * resolution
    if voxel_A is None:
        voxel = max(resolution * SPACING_PER_RESOLUTION, MIN_DEFAULT_VOXEL_A)
    else:
        voxel = _positive(voxel_A, "voxel size", "Å, e.g. voxel_A=1.5")
    if padding_A is not None:
        padding_A = _positive(padding_A, "padding", "Å, e.g. padding_A=5", allow_zero=True)

    def layout(spacing):
        padding = CUTOFF_SIGMAS * sigma + 2.0 * spacing if padding_A is None else padding_A
        low, high = xyz.min(axis=0) - padding, xyz.max(axis=0) + padding
        return low, np.ceil((high - low) / spacing - 1e-9).astype(int) + 1

    lo, shape_xyz = layout(voxel)
    n_voxels = int(np.prod(shape_xyz))
    if n_voxels > MAX_VOXELS:
        larger = voxel
        while np.prod(layout(larger)[1]) > MAX_VOXELS:
            larger *= 1.02
        raise InputError(
            f"the simulated map would have {'x'.join(map(str, shape_xyz))} = {n_voxels:,} "
            f"voxels, more than {round(MAX_VOXELS ** (1 / 3))}^3; use a larger voxel "
            f"(e.g. voxel_A={math.ceil(larger * 100) / 100:.2f}), a lower resolution, "
            "or fewer chains"
        )

    frac = (xyz - lo) / voxel
    sigma_vox = sigma / voxel
    if sigma_vox <= _MAX_DIRECT_SIGMA_VOXELS:
        data = _sum_gaussians(frac, z_numbers, shape_xyz, sigma_vox)
    else:
        data = _splat_and_blur(frac, z_numbers, shape_xyz, sigma_vox)
    return DensityMap(data=data.astype(np.float32), voxel_size_A=np.full(3, voxel), origin_A=lo)


def contour_for(density: DensityMap, mass_Da: float, *, A3_per_Da: float = PROTEIN_A3_PER_DA) -> float:
    """Density level enclosing the molecular volume of `mass_Da`.

    The level is chosen so that the number of voxels above it times the voxel
    volume is as close as possible to ``mass_Da * A3_per_Da`` (1.21 Å^3/Da is the
    usual protein value). Meant for maps from `simulate` with
    ``mass_Da = model_mass_Da(st, chains)``.

    Parameters
    ----------
    density : DensityMap
    mass_Da : float
        Molecular mass in Da (> 0).
    A3_per_Da : float
        Volume per mass in Å^3/Da.

    Returns
    -------
    float
        A level strictly below the map's maximum.

    Raises
    ------
    InputError
        Non-positive mass, a map of constant density, or a volume that does not
        fit in the map's box.
    """
    mass = _positive(mass_Da, "mass", "Da, e.g. model_mass_Da(st)")
    per_da = _positive(A3_per_Da, "volume per mass", "Å^3/Da, e.g. 1.21")
    values = density.data.ravel()
    top = float(values.max())
    if top <= float(values.min()):
        raise InputError(f"the map has constant density {top:g}; no contour encloses a volume")
    n_above = round(mass * per_da / float(np.prod(density.voxel_size_A)))
    if n_above >= values.size:
        raise InputError(
            f"a mass of {mass:g} Da fills {n_above:,} voxels but the map has only "
            f"{values.size:,}; check the mass or simulate with more padding"
        )
    n_above = max(n_above, 1)
    # the n_above-th largest value and the next one down; the level sits between them
    ranks = [values.size - n_above - 1, values.size - n_above]
    below, at = np.partition(values, ranks)[ranks].astype(float)
    level = 0.5 * (below + at)
    if level >= top:  # ties at the maximum
        level = float(np.nextafter(np.float32(top), np.float32(-np.inf)))
    return float(level)


# ----------------------------------------------------------------------------- helpers
def _first_model(st):
    if len(st) == 0:
        raise InputError("the structure has no models; pass a PDB or mmCIF file with coordinates")
    return st[0]


def _positive(value, what: str, unit_hint: str, *, allow_zero: bool = False) -> float:
    """`value` as a float, or InputError unless it is a finite number > 0 (>= 0 with allow_zero)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not math.isfinite(number) or number < 0 or (number == 0 and not allow_zero):
        kind = "non-negative" if allow_zero else "positive"
        raise InputError(f"{what} {value!r} must be a {kind} number of {unit_hint}")
    return number


def _select_atoms(st, chains):
    """(N, 3) positions, (N,) atomic numbers and (N,) masses of the selected heavy atoms."""
    model = _first_model(st)
    wanted = None
    if chains is not None:
        wanted = {chains} if isinstance(chains, str) else {str(c) for c in chains}
        available = chain_ids(st)
        unknown = sorted(wanted - set(available))
        if unknown:
            raise InputError(
                f"chain(s) {', '.join(unknown)} not found in the model; "
                f"available chains: {', '.join(available) or 'none'}"
            )
    xyz, z_numbers, masses = [], [], []
    for chain in model:
        if wanted is not None and chain.name not in wanted:
            continue
        for res in chain.first_conformer():
            if res.is_water():
                continue
            for atom in res.first_conformer():
                element = atom.element
                if element.is_hydrogen:
                    continue
                xyz.append((atom.pos.x, atom.pos.y, atom.pos.z))
                z_numbers.append(element.atomic_number)
                masses.append(element.weight)
    if not xyz:
        which = "the model" if wanted is None else f"chain(s) {', '.join(sorted(wanted))}"
        raise InputError(
            f"no atoms to simulate: {which} has no atoms other than hydrogens "
            "and waters; choose other chains or another model"
        )
    return np.array(xyz, float), np.array(z_numbers, float), np.array(masses, float)


def _axis_gaussians(frac_axis, sigma_vox, size):
    """Per-atom 1D Gaussian weights over the grid points within the cutoff of each atom.

    Returns (N, W) grid indices (clipped into range) and (N, W) weights (zero
    beyond the cutoff or outside the grid).
    """
    reach = CUTOFF_SIGMAS * sigma_vox
    width = math.floor(2 * reach) + 1
    idx = np.ceil(frac_axis - reach).astype(int)[:, None] + np.arange(width)
    offset = idx - frac_axis[:, None]
    weights = np.exp(-0.5 * (offset / sigma_vox) ** 2)
    weights[(np.abs(offset) > reach) | (idx < 0) | (idx >= size)] = 0.0
    return np.clip(idx, 0, size - 1), weights


def _axis_quadratic_splat(frac_axis):
    """Indices (N, 3) and weights (N, 3) spreading each atom over its nearest grid
    point and both neighbours with the atom's mean and (zero) variance preserved."""
    nearest = np.round(frac_axis)
    d = (frac_axis - nearest)[:, None]
    weights = np.hstack([(d * d - d) / 2, 1 - d * d, (d * d + d) / 2])
    return nearest.astype(int)[:, None] + np.arange(-1, 2), weights


def _accumulate(axis_terms, z_numbers, shape_xyz):
    """Sum over atoms of Z times the outer product of per-axis (indices, weights)."""
    (ix, wx), (iy, wy), (iz, wz) = axis_terms
    nx, ny, nz = (int(n) for n in shape_xyz)
    total = np.zeros(nx * ny * nz)
    step = max(1, _CHUNK_VALUES // (ix.shape[1] * iy.shape[1] * iz.shape[1]))
    for start in range(0, len(z_numbers), step):
        s = slice(start, start + step)
        flat = (iz[s, :, None, None] * ny + iy[s, None, :, None]) * nx + ix[s, None, None, :]
        values = z_numbers[s, None, None, None] * wz[s, :, None, None] * wy[s, None, :, None] * wx[s, None, None, :]
        first, last = int(flat.min()), int(flat.max()) + 1  # file order keeps chunks compact
        total[first:last] += np.bincount(flat.ravel() - first, values.ravel(), minlength=last - first)
    return total.reshape(nz, ny, nx)


def _sum_gaussians(frac, z_numbers, shape_xyz, sigma_vox):
    """Exact sum of truncated Gaussians, each evaluated on its own box of grid points."""
    terms = [_axis_gaussians(frac[:, a], sigma_vox, shape_xyz[a]) for a in range(3)]
    return _accumulate(terms, z_numbers, shape_xyz)


def _splat_and_blur(frac, z_numbers, shape_xyz, sigma_vox):
    """Splat Z onto the grid (3 points per axis, moments up to the variance kept), then
    blur with a separable truncated Gaussian: within ~1.5 % of the exact sum of the
    map's maximum once sigma is at least 2.5 voxels.

    The grid is widened by one voxel on each side during the splat so that atoms on
    the box edge keep their full weight.
    """
    from scipy.ndimage import correlate1d

    terms = [_axis_quadratic_splat(frac[:, a] + 1) for a in range(3)]
    grid = _accumulate(terms, z_numbers, np.asarray(shape_xyz) + 2)
    radius = math.floor(CUTOFF_SIGMAS * sigma_vox)
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma_vox) ** 2)
    for axis in range(3):
        grid = correlate1d(grid, kernel, axis=axis, mode="constant")
    return grid[1:-1, 1:-1, 1:-1]
