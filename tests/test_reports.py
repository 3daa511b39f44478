"""Issue 20.6: `fit`, `batch` and `search` write a report and a picture (real runs of the
command line); the pictures are PNGs and the pages self-contained."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _cryoalign(*args, cwd=None):
    proc = subprocess.run([sys.executable, "-m", "cryoalign", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def _page_text(path) -> str:
    html = path.read_text()
    assert "http://" not in html and "https://" not in html          # self-contained
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def test_fit_writes_a_report_a_picture_and_a_script_opening_every_rank_1_chain(tmp_path, data_dir):
    out = tmp_path / "fit-out"
    proc = _cryoalign("fit", data_dir / "3j6b_9.pdb.gz", data_dir / "emd_2566_crop.mrc.gz", "--resolution", "4",
                      "--top", "3", "--out-dir", out, "--quiet")
    assert "open report.html" in proc.stdout
    assert (out / "fit_placements.png").read_bytes()[:8] == PNG_MAGIC
    text = _page_text(out / "report.html")
    assert "cryoalign fit" in text and "Placements on the map" in text and "written by cryoalign" in text
    assert re.search(r"\b9 \d+ [1-3] 0\.\d+ 0\.\d+ (high|medium|low) 1\b", text), text[:2000]   # the chain row
    assert text.count("data:image/png;base64") == 0 and (out / "report.html").read_text().count(
        "data:image/png;base64,") == 1
    script = (out / "fit.cxc").read_text().splitlines()
    assert "open chain_9_rank1.pdb" in script and "open assembled.pdb" in script
    assert script.index("open chain_9_rank1.pdb") < script.index("open assembled.pdb")
