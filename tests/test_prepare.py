"""A prepared map: computed once, stored, loaded again, and aligned from with the same answer."""

from __future__ import annotations

import numpy as np
import pytest

import cryoalign
from _maps import moved_structure, three_copies
from cryoalign import transform as tf
from cryoalign.apps import simulate
from cryoalign.cli import flagged, main
from cryoalign.config import AlignConfig
from cryoalign.core import prepare as prep
from cryoalign.core.pipeline import align_prepared, choose_mode_and_sampling
from cryoalign.errors import InputError

SRC, TGT = "emd_3695_5A.mrc.gz", "emd_3696_5A.mrc.gz"
SC, TC = 1.25, 0.69


def _prepared(density, contour, config, *, fine, name):
    region, estimated = prep.resolve_contour(density, contour, f"{name}_contour")
    return prep.prepare(
        density,
        region.contour,
        config,
        region=region,
        fine=fine,
        name=name,
        contour_estimated=estimated,
        with_hash=True,
    )


def _same_result(a, b):
    np.testing.assert_array_equal(a.T_target_source, b.T_target_source)
    assert len(a.candidates) == len(b.candidates)
    for x, y in zip(a.candidates, b.candidates):
        np.testing.assert_array_equal(x.T_target_source, y.T_target_source)
        assert x.score == y.score and x.found_by == y.found_by


@pytest.fixture(scope="module")
def real_maps(data_dir):
    return cryoalign.read_map(data_dir / SRC), cryoalign.read_map(data_dir / TGT)


def test_saved_and_loaded_global_alignment_is_bitwise_the_same(real_maps, tmp_path):
    src_map, tgt_map = real_maps
    config = AlignConfig(mode="global", top=5)
    direct = cryoalign.align(src_map, tgt_map, source_contour=SC, target_contour=TC, config=config)
    config = config.replace(sampling_A=direct.params["sampling_A"])
    _prepared(src_map, SC, config, fine=False, name="source").save(tmp_path / "s.npz")
    _prepared(tgt_map, TC, config, fine=True, name="target").save(tmp_path / "t.npz")
    src = prep.load(tmp_path / "s.npz", config)
    tgt = prep.load(tmp_path / "t.npz", config, density=tgt_map)
    assert src.density is None and tgt.fine is not None
    again = align_prepared(src, tgt, config)
    _same_result(direct, again)


@pytest.fixture(scope="module")
def local_case(data_dir):
    mono, tri, C3, ca = three_copies(data_dir)
    target = simulate.simulate(tri, 6.0, voxel_A=2.0)
    tc = simulate.contour_for(target, simulate.model_mass_Da(tri))
    rng = np.random.default_rng(11)
    M = tf.make(tf.random_rotation(rng), rng.uniform(-30.0, 30.0, 3))
    moved = moved_structure(mono, M)
    source = simulate.simulate(moved, 6.0, voxel_A=2.0)
    sc = simulate.contour_for(source, simulate.model_mass_Da(moved))
    return source, sc, target, tc


def test_saved_and_loaded_local_alignment_is_bitwise_the_same(local_case, tmp_path):
    source, sc, target, tc = local_case
    config = AlignConfig(mode="local", top=3, jobs=1)
    direct = cryoalign.align(source, target, source_contour=sc, target_contour=tc, config=config)
    config = config.replace(sampling_A=direct.params["sampling_A"])
    _prepared(source, sc, config, fine=False, name="source").save(tmp_path / "s.npz")
    _prepared(target, tc, config, fine=True, name="target").save(tmp_path / "t.npz")
    # the maps themselves are at hand, as when aligning from the files (the tie break reads
    # every source voxel; without the source map it uses the stored sample)
    again = align_prepared(
        prep.load(tmp_path / "s.npz", config, density=source),
        prep.load(tmp_path / "t.npz", config, density=target),
        config,
    )
    _same_result(direct, again)


def test_a_prepared_map_round_trips(real_maps, tmp_path):
    src_map, _ = real_maps
    config = AlignConfig(sampling_A=5.0)
    p = _prepared(src_map, SC, config, fine=True, name="source")
    p.save(tmp_path / "p.npz")
    q = prep.load(tmp_path / "p.npz", config)
    for a, b in [
        (p.cloud.points_A, q.cloud.points_A),
        (p.cloud.vectors, q.cloud.vectors),
        (p.fine.points_A, q.fine.points_A),
        (p.features.descriptors, q.features.descriptors),
        (p.sample.values, q.sample.values),
    ]:
        np.testing.assert_array_equal(a, b)
    assert q.features.descriptors.dtype == np.float32
    assert (q.contour, q.volume_A3, q.map_hash, q.params) == (p.contour, p.volume_A3, p.map_hash, p.params)
    assert len(p.map_hash) == 64


def test_loading_with_other_parameters_is_refused(real_maps, tmp_path):
    src_map, _ = real_maps
    config = AlignConfig(sampling_A=5.0)
    _prepared(src_map, SC, config, fine=False, name="source").save(tmp_path / "p.npz")
    with pytest.raises(InputError) as exc:
        prep.load(tmp_path / "p.npz", config.replace(vector_sigma_A=6.0))
    assert str(exc.value) == (
        f"{tmp_path / 'p.npz'} was prepared with other parameters: vector_sigma_A=8.0 "
        "(now 6.0); prepare it again with the current parameters"
    )
    prep.load(tmp_path / "p.npz", config.replace(top=3, seed=4))  # parameters of later stages: fine


def test_a_broken_prepared_file_is_refused(tmp_path):
    bad = tmp_path / "p.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(InputError, match=r"p\.npz is not a readable prepared map \(.*\); prepare the map again$"):
        prep.load(bad)
    with pytest.raises(InputError, match=r"^prepared map not found: "):
        prep.load(tmp_path / "missing.npz")


def test_the_map_is_swept_once_for_box_count_and_range(real_maps):
    _, tgt_map = real_maps
    region = prep.resolve_contour(tgt_map, TC, "target_contour")[0]
    data = tgt_map.data
    assert region.count == int((data >= TC).sum())
    assert (region.minimum, region.maximum) == (float(data.min()), float(data.max()))
    idx = np.argwhere(data >= TC)
    np.testing.assert_array_equal(region.lo, idx.min(0))
    np.testing.assert_array_equal(region.hi, idx.max(0) + 1)
    crop = region.crop()
    assert int((crop.data >= TC).sum()) == region.count  # every voxel above contour is in the crop


def test_mode_and_sampling_choice():
    config, chosen = choose_mode_and_sampling(1.0e5, 1.0e6, AlignConfig())
    assert (config.mode, config.sampling_A, chosen) == ("local", 3.0, True)
    config, chosen = choose_mode_and_sampling(5.0e5, 1.0e6, AlignConfig())
    assert (config.mode, config.sampling_A, chosen) == ("global", 5.0, True)
    config, chosen = choose_mode_and_sampling(5.0e5, 1.0e6, AlignConfig(mode="local", sampling_A=4.0))
    assert (config.mode, config.sampling_A, chosen) == ("local", 4.0, False)


def test_every_tuning_constant_is_in_the_recorded_parameters(real_maps):
    src_map, tgt_map = real_maps
    r = cryoalign.align(src_map, tgt_map, source_contour=SC, target_contour=TC, mode="global", top=2)
    for name in (
        "screen_points",
        "polish_top",
        "same_pose_A",
        "same_pose_deg",
        "map_refine_fraction",
        "map_refine_max",
        "map_points",
        "mask_radius_factor",
        "mask_screen_points",
        "descriptor_top_k",
        "symmetry_margin",
        "hand_margin",
        "local_volume_ratio",
        "clash_distance_A",
        "clash_fraction",
        "fit_sampling_A",
    ):
        assert name in r.params
    assert AlignConfig(**{k: v for k, v in r.params.items() if k in AlignConfig.__dataclass_fields__}) == AlignConfig(
        mode="global", top=2, sampling_A=r.params["sampling_A"]
    )


# ----------------------------------------------------------------------------- parameter names
def test_library_errors_name_the_parameter():
    with pytest.raises(InputError, match=r"^sampling_A=100 Å is outside 0\.5-30 Å"):
        AlignConfig(sampling_A=100)
    with pytest.raises(InputError, match=r"^max_hypotheses=0 is not allowed: give a whole number of at least 1$"):
        AlignConfig(max_hypotheses=0)
    with pytest.raises(InputError, match=r"^unknown parameter\(s\) voxel_A; see cryoalign.AlignConfig"):
        AlignConfig().replace(voxel_A=3.0)


@pytest.mark.parametrize(
    "command, message, expected",
    [
        ("align", "try source_contour=2.5 (or the EMDB level)", "try --source-contour 2.5 (or the EMDB level)"),
        ("align", "use a smaller sampling_A", "use a smaller --sampling"),
        ("align", "pass mode='global' to force", "pass --global to force"),
        (
            "fit",
            "target_contour=3 is at or above the map's maximum 2; try target_contour=1",
            "--contour 3 is at or above the map's maximum 2; try --contour 1",
        ),
        ("fit", "contour=9 is at or above", "--contour 9 is at or above"),
        ("fit", "lower the contour or use a smaller sampling_A", "lower the contour or use a smaller --sampling"),
        ("align", "the map map of source_contour_estimated", "the map map of source_contour_estimated"),
        # a parameter's name inside a file path is not a parameter (was "/tmp/--contour-table.tsv")
        (
            "variance",
            "contour table /tmp/contours.tsv has 1 problem(s); or give contours",
            "contour table /tmp/contours.tsv has 1 problem(s); or give --contour-table",
        ),
        ("variance", "see runs/contours/x.tsv", "see runs/contours/x.tsv"),
    ],
)
def test_messages_show_each_commands_flags(command, message, expected):
    assert flagged(message, command) == expected


def _error(capsys, argv):
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, err
    return err.strip().splitlines()[-1].removeprefix("cryoalign: error: ")


def test_fit_names_its_own_flags(data_dir, capsys, tmp_path):
    m = cryoalign.read_map(data_dir / "emd_5168_monomer.mrc.gz")
    top = float(m.data.max())
    msg = _error(
        capsys,
        [
            "fit",
            data_dir / "3mfp.pdb.gz",
            data_dir / "emd_5168_monomer.mrc.gz",
            "--resolution",
            "6.6",
            "--contour",
            top * 2,
            "--out-dir",
            tmp_path / "o",
        ],
    )
    assert msg.startswith(
        f"--contour {top * 2:g} is at or above the map's maximum {top:g}, so nothing would be kept; try --contour "
    )
    msg = _error(
        capsys,
        [
            "fit",
            data_dir / "3mfp.pdb.gz",
            data_dir / "emd_5168_monomer.mrc.gz",
            "--resolution",
            "6.6",
            "--contour",
            0.95 * top,
            "--out-dir",
            tmp_path / "o",
        ],
    )
    assert "--target-contour" not in msg and "--voxel" not in msg
    assert msg.endswith("lower the contour or use a smaller --sampling")
    assert not (tmp_path / "o").exists()


def test_align_accepts_negative_numbers_as_values(data_dir, capsys, tmp_path):
    msg = _error(
        capsys,
        [
            "align",
            data_dir / SRC,
            data_dir / TGT,
            "--source-contour",
            "-1e9",
            "--target-contour",
            TC,
            "--json",
            tmp_path / "r.json",
        ],
    )
    assert msg.startswith("--source-contour -1e+09 is at or below the map's minimum 0, so every voxel")
