"""Tests for cryoalign.apps.simulate: molmap-style maps simulated from atomic models.

Synthetic gemmi structures (a few atoms at known positions) check peak heights,
widths, grid layout and atom selection exactly; a brute-force sum of Gaussians
over every voxel is the reference for both summation strategies; the real models
in tests/data and the multi-chain examples/5nsr.pdb.gz check chain selection,
contouring and file round trips.
"""

from __future__ import annotations

import math
import pathlib
import re

import gemmi
import numpy as np
import pytest
from scipy.spatial import cKDTree

from cryoalign.apps import simulate as sim
from cryoalign.apps.simulate import chain_ids, contour_for, model_mass_Da, simulate
from cryoalign.errors import InputError
from cryoalign.io import read_map, read_model, write_map
from cryoalign.types import DensityMap

TESTS_DIR = pathlib.Path(__file__).resolve().parent
DATA_DIR = TESTS_DIR / "data"
MULTI_CHAIN_MODEL = TESTS_DIR.parent / "examples" / "5nsr.pdb.gz"  # chains A-G, M
SIGMA_FACTOR = 1 / (math.pi * math.sqrt(2))


def structure(atoms) -> gemmi.Structure:
    """Build a one-model structure from (chain, residue name, atom name, element, xyz[, altloc]).

    Consecutive entries with the same chain and residue name share a residue; a
    repeated chain name after another chain starts a new chain part with that name.
    """
    model = gemmi.Model("1")
    chain = res = None
    for entry in atoms:
        chain_name, res_name, atom_name, element, xyz = entry[:5]
        if chain is None or chain.name != chain_name:
            model.add_chain(gemmi.Chain(chain_name))
            chain = model[len(model) - 1]
            res = None
        if res is None or res.name != res_name:
            new = gemmi.Residue()
            new.name = res_name
            new.seqid = gemmi.SeqId(len(chain) + 1, " ")
            chain.add_residue(new)
            res = chain[len(chain) - 1]
        atom = gemmi.Atom()
        atom.name = atom_name
        atom.element = gemmi.Element(element)
        atom.pos = gemmi.Position(*xyz)
        atom.occ = 1.0
        if len(entry) > 5:
            atom.altloc = entry[5]
        res.add_atom(atom)
    st = gemmi.Structure()
    st.add_model(model)
    return st


def heavy_atoms(st, chains=None):
    """(N, 3) positions and (N,) atomic numbers of non-hydrogen, non-water atoms."""
    xyz, z = [], []
    for chain in st[0]:
        if chains is not None and chain.name not in chains:
            continue
        for res in chain:
            if res.is_water():
                continue
            for atom in res:
                if not atom.element.is_hydrogen:
                    xyz.append(atom.pos.tolist())
                    z.append(atom.element.atomic_number)
    return np.array(xyz), np.array(z, float)


def brute_force(dm: DensityMap, xyz, z, sigma, cutoff=None) -> np.ndarray:
    """Sum of Z * exp(-r^2 / 2 sigma^2) at every voxel centre, optionally cut at
    `cutoff` along each axis; shape [z, y, x]."""
    nz, ny, nx = dm.data.shape
    axes = [dm.origin_A[a] + np.arange(n) * dm.voxel_size_A[a] for a, n in enumerate((nx, ny, nz))]
    out = np.zeros((nz, ny, nx))
    for pos, weight in zip(xyz, z):
        gx, gy, gz = (
            np.exp(-0.5 * ((ax - p) / sigma) ** 2) * (np.abs(ax - p) <= (cutoff or np.inf)) for ax, p in zip(axes, pos)
        )
        out += weight * gz[:, None, None] * gy[None, :, None] * gx[None, None, :]
    return out


def value_at(dm: DensityMap, xyz) -> float:
    """Density at the voxel nearest to the world point `xyz`."""
    i, j, k = np.round(dm.world_to_index(np.atleast_2d(xyz))[0]).astype(int)
    return float(dm.data[k, j, i])


def peak_world(dm: DensityMap) -> np.ndarray:
    k, j, i = np.unravel_index(np.argmax(dm.data), dm.data.shape)
    return dm.index_to_world(np.array([[i, j, k]]))[0]


def correlation(a, b) -> float:
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


@pytest.fixture(scope="module")
def actin():
    return read_model(DATA_DIR / "3mfp.pdb.gz")


@pytest.fixture(scope="module")
def multi_chain():
    return read_model(MULTI_CHAIN_MODEL)


# ================================================================ one atom, exact values
def test_single_carbon_on_grid_peak_height_and_width():
    resolution = 6.0
    sigma = SIGMA_FACTOR * resolution
    pos = np.array([1.3, -2.7, 4.1])
    # voxel = sigma and padding a whole number of voxels: the atom sits on a voxel
    # and its neighbours are exactly 1 and 2 sigma away
    dm = simulate(structure([("A", "ALA", "CA", "C", pos)]), resolution, voxel_A=sigma, padding_A=4 * sigma)

    assert dm.data.dtype == np.float32
    assert dm.path is None
    assert dm.data.shape == (9, 9, 9)
    np.testing.assert_allclose(dm.origin_A, pos - 4 * sigma)
    np.testing.assert_allclose(peak_world(dm), pos, atol=1e-9)
    assert dm.data.max() == pytest.approx(6.0, rel=1e-6)
    centre = dm.data[4, 4, 4]
    assert centre == pytest.approx(6.0, rel=1e-6)
    for neighbour in (dm.data[4, 4, 5], dm.data[4, 3, 4], dm.data[5, 4, 4]):
        assert neighbour == pytest.approx(6.0 * math.exp(-0.5), rel=1e-5)
    assert dm.data[4, 4, 6] == pytest.approx(6.0 * math.exp(-2.0), rel=1e-5)
    assert dm.data[4, 5, 5] == pytest.approx(6.0 * math.exp(-1.0), rel=1e-5)  # sqrt(2) sigma
    # beyond the 3-sigma cutoff there is nothing
    assert dm.data[4, 4, 8] == 0.0
    assert dm.data[0, 0, 0] == 0.0


def test_single_carbon_default_grid():
    resolution = 4.5
    sigma = SIGMA_FACTOR * resolution
    voxel = resolution / 3
    pos = np.array([10.0, 20.0, -30.0])
    dm = simulate(structure([("A", "ALA", "CA", "C", pos)]), resolution)

    np.testing.assert_allclose(dm.voxel_size_A, [voxel] * 3)
    padding = 3 * sigma + 2 * voxel
    np.testing.assert_allclose(dm.origin_A, pos - padding)
    assert dm.data.shape == (math.ceil(2 * padding / voxel) + 1,) * 3
    # the nearest voxel is the peak, less than half a voxel from the atom
    assert np.all(np.abs(peak_world(dm) - pos) <= voxel / 2 + 1e-9)
    offset = np.linalg.norm(peak_world(dm) - pos)
    assert dm.data.max() == pytest.approx(6.0 * math.exp(-0.5 * (offset / sigma) ** 2), rel=1e-5)
    assert dm.data.max() > 0.9 * 6.0
    # the integral of a Gaussian of height Z, less the ~0.8 % beyond 3 sigma
    integral = dm.data.sum(dtype=float) * voxel**3
    assert integral == pytest.approx(6.0 * (2 * math.pi) ** 1.5 * sigma**3, rel=0.015)
    # nothing is clipped by the box: the outer two layers are empty
    assert not dm.data[:2].any() and not dm.data[-2:].any()
    assert not dm.data[:, :, :2].any() and not dm.data[:, :, -2:].any()


@pytest.mark.parametrize("resolution, voxel", [(1.2, 0.5), (1.0, 0.5), (30.0, 10.0)])
def test_default_voxel_is_a_third_of_the_resolution_but_at_least_half_an_angstrom(resolution, voxel):
    dm = simulate(structure([("A", "ALA", "CA", "C", (0, 0, 0))]), resolution)
    np.testing.assert_allclose(dm.voxel_size_A, [voxel] * 3)


def test_peak_height_is_the_atomic_number():
    # same sub-voxel offset for every atom (whole-Å spacing on a 1 Å grid), far apart
    elements = ["C", "N", "O", "S", "P", "Fe"]
    positions = [(0.3 + 20 * i, 0.6, -0.2) for i in range(len(elements))]
    st = structure([("A", "LIG", el + "1", el, p) for el, p in zip(elements, positions)])
    dm = simulate(st, 3.0)
    peaks = np.array([value_at(dm, p) for p in positions])
    z = np.array([gemmi.Element(el).atomic_number for el in elements], float)
    np.testing.assert_allclose(peaks / peaks[0], z / 6.0, rtol=1e-5)
    assert peaks[3] / peaks[0] == pytest.approx(16 / 6, rel=1e-5)  # S vs C


# ================================================================ against a direct sum
def test_matches_direct_sum_for_a_cluster_of_atoms():
    rng = np.random.default_rng(7)
    elements = rng.choice(["C", "N", "O", "S"], size=25)
    xyz = rng.uniform(-6, 6, size=(25, 3))
    st = structure([("A", "LIG", f"X{i}", el, p) for i, (el, p) in enumerate(zip(elements, xyz))])
    resolution = 4.0
    sigma = SIGMA_FACTOR * resolution
    dm = simulate(st, resolution)
    _, z = heavy_atoms(st)

    truncated = brute_force(dm, xyz, z, sigma, cutoff=3 * sigma)
    np.testing.assert_allclose(dm.data, truncated, atol=1e-4 * truncated.max())

    exact = brute_force(dm, xyz, z, sigma)
    assert correlation(dm.data, exact) > 0.999
    assert np.abs(dm.data - exact).max() < 0.05 * exact.max()
    np.testing.assert_allclose(
        peak_world(dm),
        peak_world(DensityMap(exact.astype(np.float32), dm.voxel_size_A, dm.origin_A)),
        atol=0.5 * dm.voxel_size_A[0],
    )


def test_wide_kernels_on_fine_grids_match_direct_sum():
    # sigma = 3 voxels: simulate splats onto the grid and blurs instead of summing per atom
    xyz = np.array([[0.0, 0.0, 0.0], [3.7, 1.2, -0.4], [-2.1, 4.4, 2.9], [1.5, -3.3, 5.2]])
    st = structure([("A", "LIG", f"X{i}", el, p) for i, (el, p) in enumerate(zip("CNOS", xyz))])
    resolution = 10.0
    sigma = SIGMA_FACTOR * resolution
    voxel = sigma / 3
    assert sigma / voxel > sim._MAX_DIRECT_SIGMA_VOXELS
    dm = simulate(st, resolution, voxel_A=voxel)
    _, z = heavy_atoms(st)

    exact = brute_force(dm, xyz, z, sigma, cutoff=3 * sigma)
    assert correlation(dm.data, exact) > 0.999
    assert np.abs(dm.data - exact).max() < 0.015 * exact.max()
    assert np.linalg.norm(
        peak_world(dm) - peak_world(DensityMap(exact.astype(np.float32), dm.voxel_size_A, dm.origin_A))
    ) <= 0.5 * voxel * math.sqrt(3)


@pytest.mark.parametrize("sigma_voxels", [0.675, 3.0])  # per-atom sum, splat and blur
def test_zero_padding_puts_atoms_on_the_box_edges_at_full_height(sigma_voxels):
    xyz = np.array([[0.0, 0.0, 0.0], [6.1, 4.9, 3.3]])
    st = structure([("A", "LIG", "C1", "C", xyz[0]), ("A", "LIG", "S1", "S", xyz[1])])
    resolution = 4.0
    sigma = SIGMA_FACTOR * resolution
    dm = simulate(st, resolution, voxel_A=sigma / sigma_voxels, padding_A=0)

    np.testing.assert_allclose(dm.origin_A, xyz.min(axis=0))
    assert dm.data[0, 0, 0] == pytest.approx(6.0, rel=1e-5)  # the carbon sits on voxel (0, 0, 0)
    exact = brute_force(dm, xyz, np.array([6.0, 16.0]), sigma, cutoff=3 * sigma)
    assert np.abs(dm.data - exact).max() < 0.015 * exact.max()


def test_both_summation_strategies_agree_on_a_real_model(monkeypatch):
    st = read_model(DATA_DIR / "3j6b_9.pdb.gz")
    voxel = SIGMA_FACTOR * 8.0 / 2.6  # sigma = 2.6 voxels: splat and blur
    splatted = simulate(st, 8.0, voxel_A=voxel)
    monkeypatch.setattr(sim, "_MAX_DIRECT_SIGMA_VOXELS", np.inf)
    direct = simulate(st, 8.0, voxel_A=voxel)

    assert splatted.data.shape == direct.data.shape
    np.testing.assert_allclose(splatted.origin_A, direct.origin_A)
    assert correlation(splatted.data, direct.data) > 0.999
    assert np.abs(splatted.data - direct.data).max() < 0.015 * direct.data.max()


# ================================================================ atom selection
def test_hydrogens_waters_and_alternative_conformers_are_skipped():
    carbon = ("A", "ALA", "CA", "C", (0.0, 0.0, 0.0))
    oxygen_a = ("A", "ALA", "O", "O", (1.5, 0.0, 0.0), "A")
    plain = simulate(structure([carbon, oxygen_a]), 3.0)
    noisy = simulate(
        structure(
            [
                carbon,
                ("A", "ALA", "HA", "H", (-9.0, 0.0, 0.0)),  # would widen the box if counted
                ("A", "ALA", "DB", "D", (0.0, 9.0, 0.0)),
                oxygen_a,
                ("A", "ALA", "O", "O", (0.0, 1.5, 0.0), "B"),  # second conformer
                ("A", "HOH", "O", "O", (0.0, 0.0, 9.0)),
                ("A", "DOD", "O", "O", (0.0, 0.0, -9.0)),
                ("W", "WAT", "O", "O", (9.0, 9.0, 9.0)),
            ]
        ),
        3.0,
    )

    assert noisy.data.shape == plain.data.shape
    np.testing.assert_array_equal(noisy.origin_A, plain.origin_A)
    np.testing.assert_array_equal(noisy.data, plain.data)
    assert model_mass_Da(
        structure([carbon, ("A", "ALA", "HA", "H", (1, 1, 1)), ("A", "HOH", "O", "O", (5, 5, 5))])
    ) == pytest.approx(gemmi.Element("C").weight)


def test_no_atoms_left_is_an_input_error():
    st = structure([("A", "HOH", "O", "O", (0, 0, 0)), ("B", "ALA", "H", "H", (1, 1, 1))])
    with pytest.raises(InputError, match="no atoms to simulate"):
        simulate(st, 4.0)
    with pytest.raises(InputError, match="no atoms to simulate: chain"):
        simulate(structure([("A", "ALA", "CA", "C", (0, 0, 0))]), 4.0, chains=[])


def test_chain_ids_merge_parts_and_skip_empty_chains():
    st = structure(
        [
            ("A", "ALA", "CA", "C", (0, 0, 0)),
            ("B", "GLY", "CA", "C", (20, 0, 0)),
            ("A", "ATP", "PG", "P", (0, 20, 0)),  # a ligand part of chain A after chain B
        ]
    )
    st[0].add_chain(gemmi.Chain("C"))  # no atoms
    assert chain_ids(st) == ["A", "B"]

    dm = simulate(st, 4.0, chains="A")  # a string is one chain name
    assert value_at(dm, (0, 0, 0)) == pytest.approx(6.0, rel=0.1)
    assert value_at(dm, (0, 20, 0)) == pytest.approx(15.0, rel=0.1)
    assert dm.world_to_index(np.array([[20.0, 0.0, 0.0]]))[0, 0] > dm.shape_xyz[0]  # B is outside the box
    assert model_mass_Da(st, chains=["A"]) == pytest.approx(gemmi.Element("C").weight + gemmi.Element("P").weight)


def test_real_multi_chain_model(multi_chain):
    assert chain_ids(multi_chain) == ["A", "B", "C", "D", "E", "M", "F", "G"]


def test_chain_selection_has_no_density_on_other_chains(multi_chain):
    resolution = 8.0
    sigma = SIGMA_FACTOR * resolution
    dm = simulate(multi_chain, resolution, chains=["A"])
    a_xyz, _ = heavy_atoms(multi_chain, chains={"A"})
    b_xyz, _ = heavy_atoms(multi_chain, chains={"B"})

    # the box is chain A's bounding box plus the default padding
    np.testing.assert_allclose(dm.origin_A, a_xyz.min(axis=0) - (3 * sigma + 2 * resolution / 3))
    assert all(value_at(dm, p) > 0 for p in a_xyz[::50])

    # chain B atoms out of reach of every chain A Gaussian (box cutoff + one voxel)
    reach = 3 * sigma * math.sqrt(3) + dm.voxel_size_A[0]
    far = cKDTree(a_xyz).query(b_xyz)[0] > reach
    idx = np.round(dm.world_to_index(b_xyz[far])).astype(int)
    inside = np.all((idx >= 0) & (idx < dm.shape_xyz), axis=1)
    assert inside.sum() > 100  # the test really probes chain B inside chain A's box
    assert not dm.data[idx[inside, 2], idx[inside, 1], idx[inside, 0]].any()

    both = simulate(multi_chain, resolution, chains=["B", "A"])
    assert value_at(both, b_xyz[far][0]) > 0


def test_unknown_chain_names_the_available_chains(multi_chain):
    with pytest.raises(InputError, match=r"chain\(s\) Q, Z not found.*available chains: A, B, C, D, E, M, F, G"):
        simulate(multi_chain, 5.0, chains=["A", "Z", "Q"])
    with pytest.raises(InputError, match="available chains"):
        model_mass_Da(multi_chain, chains=["a"])


# ================================================================ validation
@pytest.mark.parametrize("resolution", [0, -3.0, float("nan"), float("inf"), "abc", None, True])
def test_bad_resolution_is_an_input_error(resolution):
    st = structure([("A", "ALA", "CA", "C", (0, 0, 0))])
    with pytest.raises(InputError, match=r"resolution .* must be a positive number of Å, e\.g\. resolution_A=4"):
        simulate(st, resolution)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"voxel_A": 0.0}, "voxel size"),
        ({"voxel_A": float("nan")}, "voxel size"),
        ({"voxel_A": "big"}, "voxel size"),
        ({"padding_A": -1.0}, "padding .* non-negative"),
        ({"padding_A": float("inf")}, "padding"),
        ({"padding_A": "wide"}, "padding"),
    ],
)
def test_bad_voxel_or_padding_is_an_input_error(kwargs, message):
    with pytest.raises(InputError, match=message):
        simulate(structure([("A", "ALA", "CA", "C", (0, 0, 0))]), 4.0, **kwargs)


def test_resolution_given_as_text_number_is_accepted():
    dm = simulate(structure([("A", "ALA", "CA", "C", (0, 0, 0))]), "3")
    np.testing.assert_allclose(dm.voxel_size_A, [1.0] * 3)


def test_oversized_grid_is_refused_with_a_larger_voxel_suggested(monkeypatch):
    st = structure([("A", "ALA", "CA", "C", (0, 0, 0)), ("A", "ALA", "CB", "C", (400, 300, 300))])
    with pytest.raises(InputError, match=r"more than 512\^3; use a larger voxel \(e\.g\. voxel_A=\d+\.\d+\)"):
        simulate(st, 1.5)

    monkeypatch.setattr(sim, "MAX_VOXELS", 40**3)  # the same check, small enough to follow the advice
    with pytest.raises(InputError, match=r"more than 40\^3") as err:
        simulate(st, 1.5)
    suggested = float(re.search(r"voxel_A=(\d+\.\d+)", str(err.value)).group(1))
    dm = simulate(st, 1.5, voxel_A=suggested)
    assert 0.8 * 40**3 < dm.data.size <= 40**3


def test_empty_structure_is_an_input_error():
    with pytest.raises(InputError, match="no models"):
        simulate(gemmi.Structure(), 4.0)


# ================================================================ real model, grid, contour
def test_real_model_grid_layout_and_peaks(actin):
    resolution = 5.0
    dm = simulate(actin, resolution)
    xyz, _ = heavy_atoms(actin)
    voxel = resolution / 3
    padding = 3 * SIGMA_FACTOR * resolution + 2 * voxel

    np.testing.assert_allclose(dm.voxel_size_A, [voxel] * 3)
    np.testing.assert_allclose(dm.origin_A, xyz.min(axis=0) - padding)
    expected_shape = np.ceil((np.ptp(xyz, axis=0) + 2 * padding) / voxel).astype(int) + 1
    np.testing.assert_array_equal(dm.shape_xyz, expected_shape)
    assert dm.data.min() >= 0
    # overlapping atoms add up: peaks are above a single oxygen's height
    assert dm.data.max() > 8
    # density concentrates on the atoms: atom positions are far denser than the box on average
    on_atoms = np.mean([value_at(dm, p) for p in xyz])
    assert on_atoms > 5 * dm.data.mean()


def test_model_mass_of_actin(actin):
    mass = model_mass_Da(actin)
    xyz, _ = heavy_atoms(actin)
    assert len(xyz) == 2882
    # actin is ~42 kDa with hydrogens; its heavy atoms are ~39 kDa
    assert 36_000 < mass < 41_000
    assert mass == pytest.approx(
        sum(gemmi.Element(e).weight for e in ["C"] * 1824 + ["O"] * 552 + ["N"] * 486 + ["S"] * 20)
    )


@pytest.mark.parametrize("model, resolution", [("3mfp.pdb.gz", 5.0), ("3j6b_9.pdb.gz", 8.0), ("3mfp.pdb.gz", 12.0)])
def test_contour_encloses_the_molecular_volume(model, resolution):
    st = read_model(DATA_DIR / model)
    dm = simulate(st, resolution)
    mass = model_mass_Da(st)
    level = contour_for(dm, mass)

    assert 0 < level < dm.data.max()
    volume = np.count_nonzero(dm.data > level) * np.prod(dm.voxel_size_A)
    assert volume == pytest.approx(1.21 * mass, rel=0.1)
    # the level sits between two consecutive voxel values: the volume is exact to a voxel
    assert abs(volume - 1.21 * mass) <= np.prod(dm.voxel_size_A)
    # a denser packing gives a smaller volume, hence a higher level
    assert contour_for(dm, mass, A3_per_Da=0.8) > level


def test_contour_stays_below_a_flat_maximum():
    data = np.zeros((4, 4, 4), np.float32)
    data[1:3, 1:3, 1:3] = 2.0  # 8 voxels tie at the maximum
    dm = DensityMap(data, np.ones(3), np.zeros(3))
    level = contour_for(dm, 3.0, A3_per_Da=1.0)  # asks for 3 voxels
    assert level < 2.0
    assert np.count_nonzero(data > level) == 8
    assert np.count_nonzero(data > contour_for(dm, 8.0, A3_per_Da=1.0)) == 8


def test_contour_for_less_than_a_voxel_keeps_the_peak():
    dm = simulate(structure([("A", "ALA", "CA", "C", (0, 0, 0))]), 4.0)
    level = contour_for(dm, 0.01)
    assert level < dm.data.max()
    assert np.count_nonzero(dm.data > level) == 1


@pytest.mark.parametrize("mass, message", [(0.0, "mass"), (-5.0, "mass"), (float("nan"), "mass"), (1e9, "fills")])
def test_contour_rejects_bad_mass(mass, message):
    dm = simulate(structure([("A", "ALA", "CA", "C", (0, 0, 0))]), 4.0)
    with pytest.raises(InputError, match=message):
        contour_for(dm, mass)


def test_contour_of_a_constant_map_is_an_input_error():
    dm = DensityMap(np.ones((3, 3, 3), np.float32), np.ones(3), np.zeros(3))
    with pytest.raises(InputError, match="constant density"):
        contour_for(dm, 5.0)


def test_write_then_read_round_trip(tmp_path, actin):
    dm = simulate(actin, 6.0)
    path = tmp_path / "actin_6A.mrc"
    write_map(dm, path)
    back = read_map(path)

    np.testing.assert_array_equal(back.data, dm.data)
    np.testing.assert_allclose(back.voxel_size_A, dm.voxel_size_A, rtol=1e-6)
    np.testing.assert_allclose(back.origin_A, dm.origin_A, atol=1e-4)
    assert contour_for(back, model_mass_Da(actin)) == pytest.approx(contour_for(dm, model_mass_Da(actin)))
