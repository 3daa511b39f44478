"""EMDB IDs as map input: download once into the cache, reuse, read the header contour,
and refuse missing entries, corrupt downloads and unreachable servers with a message
naming the fix. Everything is served by a local HTTP server laid out like the archive:
nothing here reaches the internet."""

from __future__ import annotations

import functools
import gzip
import http.server
import shutil
import socket
import threading

import pytest

from cryoalign import InputError, read_map
from cryoalign.io import emdb

V3_HEADER = """<?xml version="1.0" encoding="UTF-8"?>
<emd emdb_id="EMD-1234" version="3.0.2.0">
  <map format="CCP4" size_kbytes="44">
    <file>emd_1234.map.gz</file>
    <contour_list>
      <contour primary="false"><level>0.5</level><source>AUTHOR</source></contour>
      <contour primary="true"><level>0.0123</level><source>AUTHOR</source></contour>
    </contour_list>
  </map>
</emd>
"""
NO_CONTOUR_HEADER = """<?xml version="1.0" encoding="UTF-8"?>
<emd emdb_id="EMD-1234" version="3.0.2.0"><map><file>emd_1234.map.gz</file></map></emd>
"""


class _Archive:
    """A folder laid out like the EMDB archive, served over HTTP on 127.0.0.1."""

    def __init__(self, root):
        self.root = root
        self.requests = []

    def add(self, number, *, map_bytes=None, header=None):
        folder = self.root / f"EMD-{number}"
        if map_bytes is not None:
            (folder / "map").mkdir(parents=True, exist_ok=True)
            (folder / "map" / f"emd_{number}.map.gz").write_bytes(map_bytes)
        if header is not None:
            (folder / "header").mkdir(parents=True, exist_ok=True)
            (folder / "header" / f"emd-{number}.xml").write_text(header)


@pytest.fixture
def archive(tmp_path):
    www = tmp_path / "www"
    root = www / "pub"  # the archive's folders under /pub/, like /pub/databases/emdb/structures/
    root.mkdir(parents=True)
    served = _Archive(root)

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):
            served.requests.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(www)))
    thread = threading.Thread(target=server.serve_forever, kwargs=dict(poll_interval=0.05), daemon=True)
    thread.start()
    served.url = f"http://127.0.0.1:{server.server_address[1]}/pub/"
    yield served
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def map_gz(data_dir):
    return gzip.compress((data_dir / "1akeA_10A_simulated_odd_machine_stamp.mrc").read_bytes())


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------- IDs
@pytest.mark.parametrize(
    "text, number",
    [
        ("EMD-1234", 1234),
        ("emd-1234", 1234),
        ("emd:1234", 1234),
        ("EMD_1234", 1234),
        ("emd-12345", 12345),
        (" EMD-0042 ", 42),
    ],
)
def test_emdb_ids_are_parsed(text, number):
    assert emdb.is_emdb_id(text)
    assert emdb.parse_emdb_id(text) == number


@pytest.mark.parametrize("text", ["EMD-123", "EMD1234", "map.mrc", "emd_1234.map.gz", "EMD-12a4", "", None])
def test_other_text_is_not_an_emdb_id(text):
    assert not emdb.is_emdb_id(text)
    with pytest.raises(InputError, match="is not an EMDB ID; write it as EMD-1234"):
        emdb.parse_emdb_id(text)


# ----------------------------------------------------------------------------- fetch
def test_fetch_downloads_once_then_reuses_the_cache(archive, map_gz, tmp_path):
    archive.add(1234, map_bytes=map_gz, header=V3_HEADER)
    cache = tmp_path / "cache"
    entry = emdb.fetch("EMD-1234", server=archive.url, cache_dir=cache)
    assert entry.id == "EMD-1234"
    assert entry.map_path == str(cache / "emdb" / "EMD-1234" / "emd_1234.map.gz")
    assert open(entry.map_path, "rb").read() == map_gz  # stored as downloaded
    assert read_map(entry.map_path).data.shape == (22, 22, 22)
    assert len(archive.requests) == 2  # map and header
    again = emdb.fetch("emd_1234", server=archive.url, cache_dir=cache)
    assert again == entry
    assert len(archive.requests) == 2  # no network the second time


def test_contour_from_a_v3_header(archive, map_gz, tmp_path):
    archive.add(1234, map_bytes=map_gz, header=V3_HEADER)
    entry = emdb.fetch("EMD-1234", server=archive.url, cache_dir=tmp_path)
    assert entry.contour == 0.0123
    assert entry.contour_source == 'EMDB header <contour primary="true">'


def test_contour_from_a_real_v19_header(archive, map_gz, data_dir, tmp_path):
    archive.add(1997, map_bytes=map_gz, header=(data_dir / "emd-1997_header.xml").read_text())
    entry = emdb.fetch("EMD-1997", server=archive.url, cache_dir=tmp_path)
    assert entry.contour == 1.0
    assert entry.contour_source == "EMDB header <contourLevel>"
    assert emdb.contour_from_header(data_dir / "emd-1997_header.xml") == (1.0, "EMDB header <contourLevel>")


def test_header_without_contour_gives_none(archive, map_gz, tmp_path, caplog):
    archive.add(1234, map_bytes=map_gz, header=NO_CONTOUR_HEADER)
    with caplog.at_level("INFO", logger="cryoalign"):
        entry = emdb.fetch("EMD-1234", server=archive.url, cache_dir=tmp_path)
    assert entry.contour is None and entry.contour_source is None
    assert "the contour will be estimated" in caplog.text


def test_entry_without_header_gives_no_contour(archive, map_gz, tmp_path):
    archive.add(1234, map_bytes=map_gz)
    entry = emdb.fetch("EMD-1234", server=archive.url, cache_dir=tmp_path)
    assert entry.header_path is None and entry.contour is None
    assert read_map(entry.map_path).data.shape == (22, 22, 22)


def test_missing_entry_names_the_server_and_the_fix(archive, tmp_path):
    with pytest.raises(InputError) as err:
        emdb.fetch("EMD-99999", server=archive.url, cache_dir=tmp_path)
    url = f"{archive.url}EMD-99999/map/emd_99999.map.gz"
    assert str(err.value) == f"EMD-99999 not found at {archive.url} (HTTP 404 for {url}); check the ID"
    assert not (tmp_path / "emdb" / "EMD-99999" / "emd_99999.map.gz").exists()


@pytest.mark.parametrize("damage", ["cut gzip", "not a map"])
def test_corrupt_download_is_removed_and_refused(archive, map_gz, tmp_path, damage):
    served = map_gz[: len(map_gz) // 2] if damage == "cut gzip" else gzip.compress(b"<html>error page</html>")
    archive.add(1234, map_bytes=served, header=V3_HEADER)
    with pytest.raises(InputError) as err:
        emdb.fetch("EMD-1234", server=archive.url, cache_dir=tmp_path)
    assert str(err.value).startswith(f"the download of EMD-1234 from {archive.url} is incomplete or corrupt (")
    assert str(err.value).endswith("); it was removed from the cache: retry")
    folder = tmp_path / "emdb" / "EMD-1234"
    assert list(folder.iterdir()) == []  # neither the final name nor a temporary file
    archive.add(1234, map_bytes=map_gz)  # the server is fixed: a retry succeeds
    assert emdb.fetch("EMD-1234", server=archive.url, cache_dir=tmp_path).contour == 0.0123


def test_map_cut_before_compression_is_refused(archive, data_dir, tmp_path):
    raw = (data_dir / "1akeA_10A_simulated_odd_machine_stamp.mrc").read_bytes()
    archive.add(1234, map_bytes=gzip.compress(raw[:-4000]), header=V3_HEADER)
    with pytest.raises(InputError, match=r"the map holds \d+ bytes, its header announces \d+"):
        emdb.fetch("EMD-1234", server=archive.url, cache_dir=tmp_path)


def test_unreachable_server_names_the_setting(tmp_path):
    server = f"http://127.0.0.1:{_closed_port()}/emdb/"
    with pytest.raises(InputError) as err:
        emdb.fetch("EMD-1234", server=server, cache_dir=tmp_path)
    message = str(err.value)
    assert message.startswith(f"cannot reach the EMDB server {server} (")
    assert message.endswith("); check the network, or set CRYOALIGN_EMDB_SERVER to a reachable EMDB mirror")


def test_environment_sets_cache_and_server(archive, map_gz, tmp_path, monkeypatch):
    archive.add(1234, map_bytes=map_gz, header=V3_HEADER)
    monkeypatch.setenv("CRYOALIGN_CACHE", str(tmp_path / "env-cache"))
    monkeypatch.setenv("CRYOALIGN_EMDB_SERVER", archive.url.rstrip("/"))
    entry = emdb.fetch("EMD-1234")
    assert entry.map_path == str(tmp_path / "env-cache" / "emdb" / "EMD-1234" / "emd_1234.map.gz")
    assert archive.requests[0] == "/pub/EMD-1234/map/emd_1234.map.gz"


def test_default_server_is_the_ebi_archive(monkeypatch):
    monkeypatch.delenv("CRYOALIGN_EMDB_SERVER", raising=False)
    assert emdb.server_address() == "https://ftp.ebi.ac.uk/pub/databases/emdb/structures/"


# ----------------------------------------------------------------------------- resolve_map
def test_resolve_map_passes_files_through(data_dir):
    path = data_dir / "emd_3695_5A.mrc.gz"
    assert emdb.resolve_map(path) == (path, None, None)
    assert emdb.resolve_map(str(path)) == (str(path), None, None)


def test_resolve_map_fetches_emdb_ids(archive, map_gz, data_dir, tmp_path):
    archive.add(1997, map_bytes=map_gz, header=(data_dir / "emd-1997_header.xml").read_text())
    path, contour, note = emdb.resolve_map("EMD-1997", server=archive.url, cache_dir=tmp_path)
    assert path == str(tmp_path / "emdb" / "EMD-1997" / "emd_1997.map.gz")
    assert contour == 1.0
    assert note == "EMD-1997: recommended contour 1 from the EMDB header <contourLevel>"


def test_resolve_map_prefers_an_existing_file_named_like_an_id(tmp_path, monkeypatch, data_dir):
    monkeypatch.chdir(tmp_path)
    shutil.copy(data_dir / "1akeA_10A_simulated_odd_machine_stamp.mrc", tmp_path / "EMD-1234")
    assert emdb.resolve_map("EMD-1234") == ("EMD-1234", None, None)
