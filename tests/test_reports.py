"""Issue 20.6: `fit`, `batch` and `search` write a report and a picture (real runs of the
command line); the pictures are PNGs and the pages self-contained."""

from __future__ import annotations

import re
import subprocess
import sys

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _cryoalign(*args, cwd=None):
    proc = subprocess.run(
        [sys.executable, "-m", "cryoalign", *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def _page_text(path) -> str:
    html = path.read_text()
    assert "http://" not in html and "https://" not in html  # self-contained
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def test_fit_writes_a_report_a_picture_and_a_script_opening_every_rank_1_chain(tmp_path, data_dir):
    out = tmp_path / "fit-out"
    proc = _cryoalign(
        "fit",
        data_dir / "3j6b_9.pdb.gz",
        data_dir / "emd_2566_crop.mrc.gz",
        "--resolution",
        "4",
        "--top",
        "3",
        "--out-dir",
        out,
        "--quiet",
    )
    assert "open report.html" in proc.stdout
    assert (out / "fit_placements.png").read_bytes()[:8] == PNG_MAGIC
    text = _page_text(out / "report.html")
    assert "cryoalign fit" in text and "Placements on the map" in text and "written by cryoalign" in text
    assert re.search(r"\b9 \d+ [1-3] 0\.\d+ 0\.\d+ (high|medium|low) 1\b", text), text[:2000]  # the chain row
    assert (
        text.count("data:image/png;base64") == 0
        and (out / "report.html").read_text().count("data:image/png;base64,") == 1
    )
    script = (out / "fit.cxc").read_text().splitlines()
    assert "open chain_9_rank1.pdb" in script and "open assembled.pdb" in script
    assert script.index("open chain_9_rank1.pdb") < script.index("open assembled.pdb")


def test_batch_writes_a_report_of_the_whole_table(tmp_path, data_dir):
    import shutil

    shutil.copy(data_dir / "emd_5168_monomer.mrc.gz", tmp_path / "m.mrc.gz")
    (tmp_path / "broken.mrc").write_bytes(b"not a map\n" * 40)
    (tmp_path / "pairs.tsv").write_text("source\ttarget\nm.mrc.gz\tm.mrc.gz\nbroken.mrc\tm.mrc.gz\n")
    proc = _cryoalign(
        "batch",
        tmp_path / "pairs.tsv",
        "--out",
        tmp_path / "results.tsv",
        "--jobs",
        "1",
        "--global",
        "--sampling",
        "5",
        "--quiet",
    )
    assert f"report {tmp_path / 'results.html'}" in proc.stdout
    assert (tmp_path / "results_scores.png").read_bytes()[:8] == PNG_MAGIC
    text = _page_text(tmp_path / "results.html")
    assert re.search(r"2 pair\(s\), 1 aligned \(confidence high [01], medium [01], low [01]\), 1 error\(s\)", text)
    assert re.search(r"m\.mrc\.gz m\.mrc\.gz ok [01](\.\d+)? (high|medium|low) global", text)
    assert "broken.mrc m.mrc.gz error" in text
    # a file of that name that cryoalign did not write is left alone
    (tmp_path / "results.html").write_text("my notes\n")
    proc = _cryoalign(
        "batch", tmp_path / "pairs.tsv", "--out", tmp_path / "results.tsv", "--jobs", "1", "--global", "--sampling", "5"
    )
    assert (tmp_path / "results.html").read_text() == "my notes\n"
    assert "was not written by cryoalign batch: no report written" in proc.stderr


def test_search_out_dir_writes_hits_a_picture_and_a_report(tmp_path, data_dir):
    maps = [data_dir / "emd_5168_monomer.mrc.gz", data_dir / "emd_3695_5A.mrc.gz"]
    _cryoalign("index", *maps, "--db", tmp_path / "db", "--jobs", "1", "--quiet")
    out = tmp_path / "search-out"
    proc = _cryoalign("search", maps[0], "--db", tmp_path / "db", "--jobs", "1", "--out-dir", out, "--quiet")
    assert f"wrote {out}/" in proc.stdout
    assert {p.name for p in out.iterdir()} == {".cryoalign", "hits.json", "search_hits.png", "report.html"}
    assert (out / "search_hits.png").read_bytes()[:8] == PNG_MAGIC
    text = _page_text(out / "report.html")
    assert "Hits" in text and re.search(r"\b1 \S*emd_5168_monomer\.mrc\.gz [01](\.\d+)? ", text), text[:1500]
