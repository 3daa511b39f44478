"""Render a report.html to a PNG screenshot with headless Chromium (to look at it).

    python benchmarks/render_report.py OUT/report.html /tmp/shot.png [--size 1200,2000]

Needs `chromium` on PATH (Debian: apt-get install -y chromium). Exit code 2 without it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def render(html_path, png_path, *, size=(1200, 2000), timeout_s: float = 120.0) -> str:
    """Screenshot `html_path` into `png_path`; returns png_path (raises on failure)."""
    browser = find_chromium()
    if browser is None:
        raise FileNotFoundError("no chromium on PATH: apt-get install -y chromium")
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [
                browser,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                f"--user-data-dir={profile}",
                f"--screenshot={os.path.abspath(png_path)}",
                f"--window-size={size[0]},{size[1]}",
                "file://" + os.path.abspath(html_path),
            ],
            check=True,
            capture_output=True,
            timeout=timeout_s,
        )
    if not os.path.isfile(png_path):
        raise RuntimeError(f"chromium wrote no screenshot at {png_path}")
    return os.fspath(png_path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("html")
    ap.add_argument("png")
    ap.add_argument("--size", default="1200,2000")
    args = ap.parse_args(argv)
    if find_chromium() is None:
        print("no chromium on PATH: apt-get install -y chromium", file=sys.stderr)
        return 2
    print(render(args.html, args.png, size=tuple(int(v) for v in args.size.split(","))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
