"""Pictures and the HTML report: valid PNGs, self-contained page, optional Chromium render."""

from __future__ import annotations

import importlib.util
import pathlib
import re
import shutil

import numpy as np
import pytest

from cryoalign import transform as tf
from cryoalign.apps.comparison import compare, write_compare_outputs
from cryoalign.io import pictures
from cryoalign.io.report import write_report
from cryoalign.types import DensityMap

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
BENCHMARKS = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"


def _png_size(path) -> tuple[int, int]:
    data = pathlib.Path(path).read_bytes()
    assert data[:8] == PNG_MAGIC, path
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def _blobs_pair():
    """Target: three Gaussian blobs on an anisotropic, non-cubic grid; source: two of them
    in another frame (moved by a known rigid motion)."""
    shape, voxel, origin = (36, 40, 44), np.array([2.0, 2.2, 2.5]), np.array([10.0, -5.0, 3.0])
    grid = np.stack(
        np.meshgrid(*[origin[i] + voxel[i] * np.arange(shape[2 - i]) for i in (2, 1, 0)], indexing="ij")[::-1], -1
    )  # (z, y, x, 3) world x, y, z
    centres = origin + voxel * np.array([[12, 14, 10], [28, 20, 18], [18, 28, 26]])

    def density(points, cs):
        return sum(np.exp(-((points - c) ** 2).sum(-1) / (2 * 4.0**2)) for c in cs).astype(np.float32)

    target = DensityMap(density(grid, centres), voxel, origin)
    middle = centres.mean(0)
    R = tf.random_rotation(np.random.default_rng(4))
    T = tf.make(R, middle - R @ middle + [3.0, -2.0, 1.0])  # a turn about the blobs' centre
    source = DensityMap(density(grid, tf.apply(tf.invert(T), centres[:2])), voxel, origin)
    return source, target, T


def test_compare_pictures_and_self_contained_report(tmp_path):
    source, target, T = _blobs_pair()
    result = compare(source, target, source_contour=0.3, target_contour=0.3, matrix=T, min_blob_A3=50.0)
    written = write_compare_outputs(result, tmp_path)
    names = {pathlib.Path(p).name for p in written}
    assert {"projections.png", "fsc.png", "difference_blobs.png", "report.html"} <= names
    for name in ("projections.png", "fsc.png", "difference_blobs.png"):
        width, height = _png_size(tmp_path / name)
        assert 400 < width < 3000 and 300 < height < 3000, (name, width, height)
    html = (tmp_path / "report.html").read_text()
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", html)
    assert "http://" not in html and "https://" not in html
    assert html.count("data:image/png;base64,") == 3
    assert result.difference["target_minus_source"].blobs  # the third blob


def test_align_pictures_and_variance_slices(tmp_path):
    source, target, T = _blobs_pair()
    paths = pictures.align_pictures(source, target, T, tmp_path)
    assert [pathlib.Path(p).name for p in paths] == ["align_projections.png"]
    _png_size(paths[0])
    slices = pictures.variance_slices(target, tmp_path / "slices.png", mean=target, contour=0.3)
    width, height = _png_size(slices[0])
    assert width > 600 and height > 200


def test_report_escapes_text_and_embeds_images(tmp_path):
    source, target, T = _blobs_pair()
    image = pictures.align_pictures(source, target, T, tmp_path)[0]
    page = write_report(
        tmp_path / "r.html",
        "a <title>",
        [
            {
                "heading": "h & h",
                "text": "<script>",
                "tables": [{"columns": ["a"], "rows": [[None], [1.23456]]}],
                "images": [image],
            }
        ],
    )
    html = pathlib.Path(page).read_text()
    assert "a &lt;title&gt;" in html and "&lt;script&gt;" in html and "<script>" not in html
    assert html.count("data:image/png;base64,") == 1 and "1.235" in html


@pytest.mark.skipif(
    not any(shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")), reason="no chromium installed"
)
def test_report_renders_in_headless_chromium(tmp_path):
    spec = importlib.util.spec_from_file_location("render_report", BENCHMARKS / "render_report.py")
    render_report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(render_report)
    source, target, T = _blobs_pair()
    result = compare(source, target, source_contour=0.3, target_contour=0.3, matrix=T, min_blob_A3=50.0)
    write_compare_outputs(result, tmp_path)
    shot = render_report.render(tmp_path / "report.html", tmp_path / "shot.png", size=(1000, 1400))
    width, height = _png_size(shot)
    assert (width, height) == (1000, 1400)


def test_variance_picture_shows_a_maximum_off_the_central_slices(tmp_path):
    """Issue 20.6: only the central slices were shown, and the maximum can lie off them."""
    import matplotlib
    import matplotlib.image

    shape, voxel, origin = (36, 40, 44), np.array([2.0, 2.2, 2.5]), np.array([10.0, -5.0, 3.0])
    data = np.zeros(shape, np.float32)
    data[4:7, 5:8, 6:9] = 1.0  # far from the centre (18, 20, 22)
    data[5, 6, 7] = 2.0  # the maximum
    variance_map = DensityMap(data, voxel, origin)
    assert pictures.variance_peak(data) == ((5, 6, 7), 2.0)
    path = pictures.variance_slices(variance_map, tmp_path / "variance_slices.png")[0]
    image = matplotlib.image.imread(path)[..., :3]
    panels = image[:, : int(0.8 * image.shape[1])]  # the colour bar is on the right
    brightest = np.array(matplotlib.colormaps["magma"](1.0)[:3])
    hot = np.all(np.abs(panels - brightest) < 0.06, axis=-1)
    assert hot.sum() >= 6, "the maximum is not visible in the panels"  # 3 projections + 3 slices
