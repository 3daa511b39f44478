"""Local alignment (`mode="local"`, cryoalign.core.local) and map-level refinement (cryoalign.core.maprefine).

The case: one actin subunit (tests/data/3mfp.pdb.gz, chain A) and a model of three
identical copies of it (chains A, B, C) related by a C3 rotation about an axis 35 Å
from the subunit's centroid, so neighbouring copies touch without clashing.  The
target is the three-copy model simulated at 6 Å (2 Å voxels); the source is chain A
simulated after a known random rigid move M.  T_true = M^-1 takes the source frame
back onto copy A, and C3^k T_true onto copy k: all three are correct placements.
"""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
from scipy.spatial import cKDTree

import cryoalign
from _maps import moved_structure, three_copies
from cryoalign import transform as tf
from cryoalign.apps import simulate
from cryoalign.cli import main
from cryoalign.config import AlignConfig
from cryoalign.core import local, maprefine, rank

RESOLUTION_A = 6.0
VOXEL_A = 2.0


# --------------------------------------------------------------------------- the case


@pytest.fixture(scope="module")
def case(data_dir):
    mono, tri, C3, ca = three_copies(data_dir)
    target = simulate.simulate(tri, RESOLUTION_A, voxel_A=VOXEL_A)
    tc = simulate.contour_for(target, simulate.model_mass_Da(tri))
    rng = np.random.default_rng(7)
    M = tf.make(tf.random_rotation(rng), rng.uniform(-30.0, 30.0, 3))
    moved = moved_structure(mono, M)
    source = simulate.simulate(moved, RESOLUTION_A, voxel_A=VOXEL_A)
    sc = simulate.contour_for(source, simulate.model_mass_Da(moved))
    T_true = tf.invert(M)
    src_ca = tf.apply(M, ca)
    poses = [np.linalg.matrix_power(C3, k) @ T_true for k in range(3)]
    # the copies are far apart as placements, and a do-nothing answer is far from all of them
    assert min(tf.rmsd(a, b, src_ca) for i, a in enumerate(poses) for b in poses[i + 1 :]) > 20.0
    assert min(tf.rmsd(np.eye(4), p, src_ca) for p in poses) > 20.0
    return SimpleNamespace(
        mono=mono,
        tri=tri,
        C3=C3,
        M=M,
        T_true=T_true,
        poses=poses,
        src_ca=src_ca,
        source=source,
        sc=sc,
        target=target,
        tc=tc,
    )


def best_rmsd(T, case) -> float:
    """CA RMSD of the source moved by T against the nearest of the three correct placements."""
    return min(tf.rmsd(T, P, case.src_ca) for P in case.poses)


@pytest.fixture(scope="module")
def local_result(case):
    return cryoalign.align(
        case.source, case.target, source_contour=case.sc, target_contour=case.tc, mode="local", top=5, jobs=1
    )


@pytest.fixture(scope="module")
def auto_result(case):
    """Default mode ("auto") with two worker processes: must resolve to the same local search."""
    return cryoalign.align(case.source, case.target, source_contour=case.sc, target_contour=case.tc, top=5, jobs=2)


# --------------------------------------------------------------------------- local alignment
def test_local_alignment_places_the_chain_at_rank_one(local_result, case):
    assert best_rmsd(local_result.T_target_source, case) < 2.0
    np.testing.assert_array_equal(local_result.T_target_source, local_result.candidates[0].T_target_source)


def test_local_alignment_finds_every_identical_copy(local_result, case):
    # every correct placement (copy A, B, C) is matched by some candidate
    for k, P in enumerate(case.poses):
        closest = min(tf.rmsd(c.T_target_source, P, case.src_ca) for c in local_result.candidates)
        assert closest < 3.0, f"copy {'ABC'[k]} not among the candidates (closest {closest:.1f} Å)"
    # and the three best candidates are the three copies, one each
    hits = [
        int(np.argmin([tf.rmsd(c.T_target_source, P, case.src_ca) for P in case.poses]))
        for c in local_result.candidates[:3]
    ]
    assert sorted(hits) == [0, 1, 2]


def test_local_candidates_are_distinct_ranked_and_annotated(local_result, case):
    r = local_result
    cands = r.candidates
    assert 3 <= len(cands) <= 5
    centre = case.src_ca.mean(0)
    for i in range(len(cands)):
        for j in range(i + 1, len(cands)):
            assert not tf.same_pose(
                cands[i].T_target_source, cands[j].T_target_source, centre, max_shift_A=3.0, max_angle_deg=10.0
            ), (i, j)
    values = [c.score.value for c in cands]
    assert values == sorted(values, reverse=True)
    lo = case.target.origin_A
    hi = lo + case.target.extent_A
    step = r.stats["mask_step_A"]
    for c in cands:
        assert c.score.js_divergence is None
        assert c.score.correlation is not None and c.correlation_before is not None
        assert len(c.mask_centre_A) == 3 and all(math.isfinite(v) for v in c.mask_centre_A)
        m = np.array(c.mask_centre_A)
        assert np.all(m > lo - step) and np.all(m < hi + step)
        # the placement overlaps the mask it came from: its matched key points lay inside the
        # mask, so its centroid is within the mask radius plus the source's radius (radius / 1.1)
        placed = tf.apply(c.T_target_source, case.src_ca).mean(0)
        assert np.linalg.norm(placed - m) < 2.0 * r.stats["mask_radius_A"]
    assert r.params["mode"] == "local"
    assert r.score == cands[0].score and r.score.value == r.score.correlation * r.score.vector_agreement
    assert r.stats["masks_considered"] >= r.stats["masks_searched"] >= 1
    assert r.stats["jobs"] == 1
    for stage in ("mask plan", "mask search", "fine pose", "map refine"):
        assert stage in r.timings_s
    doc = json.loads(json.dumps(r.to_json()))
    assert [c["mask_centre"] for c in doc["candidates"]] == [[round(v, 3) for v in c.mask_centre_A] for c in cands]
    assert all(c["score_terms"]["js_divergence"] is None for c in doc["candidates"])


def test_local_results_do_not_depend_on_the_number_of_processes(local_result, auto_result):
    assert auto_result.params["mode"] == "local"  # see test_auto_mode_...
    assert auto_result.stats["jobs"] == 2  # the worker-process path ran
    assert len(auto_result.candidates) == len(local_result.candidates)
    for a, b in zip(local_result.candidates, auto_result.candidates):
        np.testing.assert_array_equal(a.T_target_source, b.T_target_source)
        assert a.score == b.score
        assert a.mask_centre_A == b.mask_centre_A and a.found_by == b.found_by
    same = {k: v for k, v in local_result.stats.items() if k != "jobs"}
    assert same == {k: v for k, v in auto_result.stats.items() if k != "jobs"}


# --------------------------------------------------------------------------- auto mode, voxel
def test_auto_mode_chooses_local_for_a_chain_inside_a_complex(auto_result):
    p, s = auto_result.params, auto_result.stats
    assert p["mode"] == "local" and s["volume_ratio"] < 0.4
    assert s["volume_ratio"] == pytest.approx(1.0 / 3.0, abs=0.05)  # one copy of three
    assert s["source_volume_A3"] < 187_500
    assert p["sampling_A"] == 3.0 and p["sampling_chosen"] is True


def test_auto_mode_stays_global_for_whole_maps_and_keeps_an_explicit_voxel(case):
    whole = moved_structure(case.tri, case.M)
    source = simulate.simulate(whole, RESOLUTION_A, voxel_A=VOXEL_A)
    sc = simulate.contour_for(source, simulate.model_mass_Da(whole))
    r = cryoalign.align(source, case.target, source_contour=sc, target_contour=case.tc, sampling_A=5.0)
    assert r.params["mode"] == "global" and r.stats["volume_ratio"] > 0.9
    assert r.params["sampling_A"] == 5.0 and r.params["sampling_chosen"] is False
    assert r.score.js_divergence is not None
    assert all(c.mask_centre_A is None for c in r.candidates)
    # the whole model is C3 symmetric: any of the three poses superimposes it
    assert best_rmsd(r.T_target_source, case) < 3.0


# --------------------------------------------------------------------------- helpers of local
def test_source_diameter_of_points_with_a_known_diameter():
    rng = np.random.default_rng(0)
    d = rng.normal(size=3)
    d /= np.linalg.norm(d)
    inside = rng.normal(size=(800, 3))
    inside *= (rng.uniform(0, 20.0, 800) / np.linalg.norm(inside, axis=1))[:, None]  # within 20 Å
    pts = np.vstack([inside[:300], [50.0 * d], inside[300:], [-50.0 * d]]) + [3.0, -7.0, 11.0]
    assert local.source_diameter(pts) == pytest.approx(100.0, abs=1e-9)
    # a cloud without outliers: the exact largest distance (brute force)
    cloud = rng.uniform(-10, 10, (1500, 3)) * [1.0, 2.0, 0.5]
    brute = np.sqrt(((cloud[:, None] - cloud[None]) ** 2).sum(2).max())
    assert local.source_diameter(cloud) == pytest.approx(brute, abs=1e-9)


@pytest.mark.parametrize("step", [7.0, 12.5])
def test_mask_centres_cover_the_target_with_the_given_step(step):
    rng = np.random.default_rng(1)
    pts = rng.uniform(0, 1, (3000, 3)) * [80.0, 45.0, 20.0] + [-30.0, 100.0, 5.0]
    centres = local.mask_centres(pts, radius_A=2 * step, step_A=step)
    d, _ = cKDTree(centres).query(pts)
    assert d.max() <= step * math.sqrt(3) / 2 + 1e-9
    for a in range(3):  # a regular grid with spacing `step` along each axis
        u = np.unique(np.round(centres[:, a], 9))
        np.testing.assert_allclose(np.diff(u), step, atol=1e-9)
    assert len(centres) == np.prod([len(np.unique(np.round(centres[:, a], 9))) for a in range(3)])
    # centred on the points' bounding box
    box_centre = (pts.min(0) + pts.max(0)) / 2
    np.testing.assert_allclose((centres.min(0) + centres.max(0)) / 2, box_centre, atol=1e-9)
    # a point cloud smaller than one step: a single centre at its box centre
    one = local.mask_centres(pts[:1], radius_A=10.0, step_A=step)
    np.testing.assert_allclose(one, pts[:1])


def test_distinct_merges_poses_within_tolerance_and_keeps_the_others():
    rng = np.random.default_rng(2)
    probe = rng.normal(size=(200, 3)) * 10 + [20.0, -5.0, 40.0]
    c = probe.mean(0)
    base = tf.make(tf.random_rotation(rng), [5.0, 1.0, -2.0])

    def about_centre(angle_deg, shift):
        from scipy.spatial.transform import Rotation

        R = Rotation.from_rotvec(np.radians(angle_deg) * np.array([0.0, 0.6, 0.8])).as_matrix()
        target_c = tf.apply(base, c[None])[0]
        return tf.make(R, target_c - R @ target_c + np.asarray(shift, float)) @ base

    poses = [
        (0.9, "base", base),
        (0.8, "shift 1 Å", about_centre(0, [1.0, 0, 0])),
        (0.7, "rot 5°", about_centre(5, [0, 0, 0])),
        (0.6, "shift 5 Å", about_centre(0, [0, 5.0, 0])),
        (0.5, "rot 15°", about_centre(15, [0, 0, 0])),
        (0.4, "rot 15° + 1 Å", about_centre(15, [0, 0, 1.0])),
        (0.3, "shift 2.9 Å, rot 9°", about_centre(9, [0, 2.9, 0])),
    ]
    kept = rank.distinct(poses, c, AlignConfig(), pose=lambda p: p[-1])
    assert [k[1] for k in kept] == ["base", "shift 5 Å", "rot 15°"]
    assert kept[0] is poses[0]
    # tighter tolerances keep more
    kept = rank.distinct(poses, c, AlignConfig(same_pose_A=0.5, same_pose_deg=3.0), pose=lambda p: p[-1])
    assert [k[1] for k in kept] == [
        "base",
        "shift 1 Å",
        "rot 5°",
        "shift 5 Å",
        "rot 15°",
        "rot 15° + 1 Å",
        "shift 2.9 Å, rot 9°",
    ]


def _unit(rng, n, d):
    v = rng.normal(size=(n, d))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.mark.parametrize("ns, nt, k", [(2500, 400, 64), (30, 10, 64), (50, 200, 1)])
def test_nearest_tables_agree_with_brute_force(ns, nt, k):
    rng = np.random.default_rng(ns + nt)
    a, b = _unit(rng, ns, 16), _unit(rng, nt, 16)
    top_i, top_s, best_src = local.nearest_tables(a, b, k=k)
    kk = min(k, nt)
    assert top_i.shape == top_s.shape == (ns, kk) and best_src.shape == (nt,)
    sim = a @ b.T  # float64 reference
    order = np.argsort(-sim, axis=1, kind="stable")[:, :kk]
    expected = np.take_along_axis(sim, order, 1)
    np.testing.assert_allclose(top_s, expected, atol=1e-5)
    np.testing.assert_allclose(np.take_along_axis(sim, top_i, 1), expected, atol=1e-5)
    # the indices themselves agree wherever the ranking is not a float32 near-tie
    ss = np.sort(sim, axis=1)[:, ::-1]
    gap = ss[:, :-1] - ss[:, 1:]  # gap[:, p]: between ranks p and p + 1
    pad = np.full((ns, 1), np.inf)
    left = np.hstack([pad, gap])[:, :kk]
    right = np.hstack([gap, pad])[:, :kk]
    clear = (left > 1e-5) & (right > 1e-5)
    assert clear.mean() > 0.9
    np.testing.assert_array_equal(top_i[clear], order[clear])
    assert all(len(set(row)) == kk for row in top_i.tolist())
    # best source of each target: the column argmax
    np.testing.assert_allclose(sim[best_src, np.arange(nt)], sim.max(0), atol=1e-5)
    col_gap = np.sort(sim, 0)[-1] - np.sort(sim, 0)[-2]
    np.testing.assert_array_equal(best_src[col_gap > 1e-5], np.argmax(sim, 0)[col_gap > 1e-5])


def test_nearest_tables_break_ties_towards_the_lower_index():
    # exact ties (basis vectors: the dot products are exact in float32), across row blocks
    rng = np.random.default_rng(9)
    a, b = 0.5 * _unit(rng, 2300, 8), 0.5 * _unit(rng, 50, 8)  # others: similarity <= 0.25
    e0 = np.eye(8)[0]
    a[5] = a[2100] = e0  # two identical source rows, different blocks
    b[7] = b[3] = e0  # two identical target rows
    top_i, top_s, best_src = local.nearest_tables(a, b, k=4)
    assert top_i[5, :2].tolist() == [3, 7] and top_i[2100, :2].tolist() == [3, 7]
    np.testing.assert_array_equal(top_s[5, :2], [1.0, 1.0])
    assert best_src[3] == 5 and best_src[7] == 5


# --------------------------------------------------------------------------- map refinement
def test_map_refine_recovers_a_small_offset(case):
    sample = maprefine.sample_source(case.source, case.sc)
    assert 0 < len(sample.points_A) <= AlignConfig.map_points
    assert np.all(sample.values >= case.sc)
    from scipy.spatial.transform import Rotation

    centre = tf.apply(case.T_true, case.src_ca).mean(0)
    R = Rotation.from_rotvec(np.radians(3.0) * np.array([0.48, -0.6, 0.64])).as_matrix()
    shift = np.array([0.8, -1.1, 0.6])
    offset = tf.make(R, centre - R @ centre + 1.5 * shift / np.linalg.norm(shift))
    T_init = offset @ case.T_true
    assert tf.rmsd(T_init, case.T_true, case.src_ca) > 1.5
    fit = maprefine.refine(sample, case.target, T_init)
    assert tf.rmsd(fit.T_target_source, case.T_true, case.src_ca) < 0.3
    assert fit.correlation > fit.correlation_before + 0.01
    assert fit.correlation_before == pytest.approx(maprefine.correlation(sample, case.target, T_init), abs=1e-6)
    assert fit.correlation == pytest.approx(maprefine.correlation(sample, case.target, fit.T_target_source), abs=1e-6)
    assert fit.evaluations > 0


def test_map_correlation_of_a_map_with_itself_is_one(case):
    sample = maprefine.sample_source(case.target, case.tc)
    assert maprefine.correlation(sample, case.target, np.eye(4)) == pytest.approx(1.0, abs=1e-6)
    moved = tf.make(np.eye(3), [3.0, -2.0, 1.0])
    assert maprefine.correlation(sample, case.target, moved) < 0.9
    # refining from the truth stays there
    fit = maprefine.refine(sample, case.target, np.eye(4))
    copy_a = tf.apply(case.T_true, case.src_ca)
    assert tf.rmsd(fit.T_target_source, np.eye(4), copy_a) < 0.05


def test_compiled_interpolation_equals_the_python_reference():
    rng = np.random.default_rng(4)
    data = rng.normal(size=(7, 9, 11)).astype(np.float32)
    nz, ny, nx = data.shape
    f = np.vstack(
        [
            rng.uniform(-2.0, 1.0, (300, 3)) * [nx + 2, ny + 2, nz + 2] + [nx, ny, nz],  # in and out of bounds
            rng.integers(-1, 12, (50, 3)).astype(float),  # grid points, edges
            [
                [nx - 1.0, ny - 1.0, nz - 1.0],
                [0.0, 0.0, 0.0],
                [-0.5, 4.0, 3.0],
                [nx - 0.5, 2.0, 2.0],
                [-1.0, -1.0, -1.0],
                [100.0, 2.0, 2.0],
            ],
        ]
    )
    fast = maprefine._interpolate(data, f)
    ref = maprefine._interpolate_py(data, f)
    np.testing.assert_allclose(fast, ref, rtol=1e-6, atol=1e-6)
    # at grid points inside the box: the stored values; far outside: zero
    inside = np.all((f >= 0) & (f <= [nx - 1, ny - 1, nz - 1]) & (f == np.round(f)), axis=1)
    idx = f[inside].astype(int)
    np.testing.assert_allclose(fast[inside, 0], data[idx[:, 2], idx[:, 1], idx[:, 0]], rtol=1e-6)
    np.testing.assert_array_equal(fast[-1], 0.0)
    np.testing.assert_array_equal(fast[-2], 0.0)


def test_interpolation_gradient_matches_finite_differences():
    rng = np.random.default_rng(5)
    data = rng.normal(size=(6, 7, 8))
    f = rng.uniform(0.1, 4.9, (200, 3))  # inside cells (the interpolant is smooth there)
    h = 1e-6
    g = maprefine._interpolate(data, f)
    for k in range(3):
        e = np.zeros(3)
        e[k] = h
        fd = (maprefine._interpolate(data, f + e)[:, 0] - maprefine._interpolate(data, f - e)[:, 0]) / (2 * h)
        np.testing.assert_allclose(g[:, k + 1], fd, atol=1e-6)


# --------------------------------------------------------------------------- command line
@pytest.fixture(scope="module")
def map_files(case, tmp_path_factory):
    folder = tmp_path_factory.mktemp("local_cli")
    src, tgt = folder / "chain_a.mrc", folder / "three.mrc"
    cryoalign.write_map(case.source, src)
    cryoalign.write_map(case.target, tgt)
    return SimpleNamespace(folder=folder, source=src, target=tgt)


def run(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_local_alignment_writes_ranked_placements(case, map_files, capsys):
    out_json = map_files.folder / "local.json"
    code, out, err = run(
        [
            "align",
            map_files.source,
            map_files.target,
            "--local",
            "--top",
            3,
            "--json",
            out_json,
            "--jobs",
            1,
            "--source-contour",
            case.sc,
            "--target-contour",
            case.tc,
        ],
        capsys,
    )
    assert code == 0, err
    doc = json.loads(out_json.read_text())
    assert doc["params"]["mode"] == "local" and doc["params"]["top"] == 3
    assert 1 <= len(doc["candidates"]) <= 3
    for c in doc["candidates"]:
        assert {"matrix", "score", "mask_centre"} <= set(c)
        assert np.array(c["matrix"]).shape == (4, 4) and len(c["mask_centre"]) == 3
    assert best_rmsd(np.array(doc["candidates"][0]["matrix"]), case) < 2.0
    np.testing.assert_array_equal(doc["matrix"], doc["candidates"][0]["matrix"])
    assert "mode local" in out and "mask centre" in out


def test_cli_local_and_global_are_exclusive(map_files, capsys):
    with pytest.raises(SystemExit) as info:
        main(["align", str(map_files.source), str(map_files.target), "--local", "--global"])
    assert info.value.code == 2
    assert "not allowed with" in capsys.readouterr().err


def test_cli_top_zero_is_an_input_error(map_files, capsys):
    code, _, err = run(["align", map_files.source, map_files.target, "--local", "--top", 0], capsys)
    assert code == 2
    assert "--top" in err and "error" in err
