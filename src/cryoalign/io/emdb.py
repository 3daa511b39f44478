"""EMDB entries as map input: `EMD-1234` wherever a map path is accepted.

    entry = fetch("EMD-1997")          # EmdbEntry: map_path (cached .map.gz), contour 1.0 from the header
    path, contour, note = resolve_map("EMD-1997")     # a file path is returned unchanged

The map (`EMD-1234/map/emd_1234.map.gz`) and its header (`EMD-1234/header/emd-1234.xml`)
are downloaded once from the EMDB archive, or a mirror with the same layout, into a cache
folder and reused afterwards without touching the network:

    server   the `server` argument, else $CRYOALIGN_EMDB_SERVER, else EMDB_SERVER (EBI)
    cache    the `cache_dir` argument, else $CRYOALIGN_CACHE, else pooch.os_cache("cryoalign");
             entries live in its `emdb/` folder

A download goes to a temporary file, is checked (a complete gzip stream holding an MRC
header and all the voxels it announces) and only then renamed into place, so the cache
never holds a partial map under its final name. The header's recommended contour level
is read from `<contour primary="true"><level>` (EMDB schema v3) or `<contourLevel>` (v1.9).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
import xml.etree.ElementTree as ET
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from ..errors import InputError, one_line

log = logging.getLogger(__name__)

EMDB_SERVER = "https://ftp.ebi.ac.uk/pub/databases/emdb/structures/"
SERVER_ENV = "CRYOALIGN_EMDB_SERVER"
CACHE_ENV = "CRYOALIGN_CACHE"
TIMEOUT_S = 60
_ID = re.compile(r"^\s*emd[-_:](\d{4,})\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class EmdbEntry:
    """One EMDB entry in the local cache.

    map_path: the gzipped map as downloaded; header_path: its header XML (None when the
    server has none); contour: the recommended level from the header (None when absent),
    contour_source: where in the header it was found."""

    id: str  # "EMD-1234"
    map_path: str
    header_path: str | None
    contour: float | None
    contour_source: str | None


class ResolvedMap(NamedTuple):
    """What `resolve_map` returns: unpacks as (path, contour, note)."""

    path: object  # a file path, or the DensityMap given
    contour: float | None  # the EMDB recommended contour; None for files
    note: str | None  # where the map and contour came from (EMDB entries only)


def is_emdb_id(text) -> bool:
    """True for `EMD-1234`, `emd-1234`, `emd:1234`, `EMD_1234`, `EMD-12345` (4 or more digits)."""
    return isinstance(text, str) and _ID.match(text) is not None


def parse_emdb_id(text) -> int:
    """The number of an EMDB ID: parse_emdb_id("emd_1997") == 1997."""
    match = _ID.match(text) if isinstance(text, str) else None
    if match is None:
        raise InputError(f"{text!r} is not an EMDB ID; write it as EMD-1234 (4 or more digits)")
    return int(match.group(1))


def entry_name(number: int) -> str:
    return f"EMD-{number:04d}"


def resolve_map(spec, *, server: str | None = None, cache_dir=None, progress: bool = False) -> ResolvedMap:
    """A map argument as given by the user -> (path, contour or None, note).

    An existing file (or a DensityMap, or any non-ID) is returned unchanged with no contour;
    an EMDB ID is fetched (see `fetch`) and its cached map returned with the header's
    recommended contour."""
    if not is_emdb_id(spec) or os.path.exists(spec):
        return ResolvedMap(spec, None, None)
    entry = fetch(spec, server=server, cache_dir=cache_dir, progress=progress)
    if entry.contour is not None:
        note = f"{entry.id}: recommended contour {entry.contour:g} from the {entry.contour_source}"
    else:
        note = f"{entry.id}: the EMDB header gives no recommended contour; it will be estimated"
    return ResolvedMap(entry.map_path, entry.contour, note)


def load_map(spec, contour: float | None = None, param: str = "contour", *, progress: bool = False):
    """A map argument (file path, EMDB ID or DensityMap) read as a `DensityMap`, with the
    contour to use: the given one, else the EMDB header's recommended level (logged),
    else None (to be estimated)."""
    from ..types import DensityMap
    from .maps import read_map

    if isinstance(spec, DensityMap):
        return spec, contour
    path, recommended, note = resolve_map(os.fspath(spec), progress=progress)
    if note:
        log.info("%s", note)
    if contour is None and recommended is not None:
        log.info("%s not given: using the EMDB recommended contour %g", param, recommended)
        contour = recommended
    return read_map(path), contour


def fetch(entry, *, server: str | None = None, cache_dir=None, progress: bool = False) -> EmdbEntry:
    """Download (once) the map and header of an EMDB entry into the cache and read its contour.

    entry: "EMD-1234" (or emd-1234, emd:1234, EMD_1234) or the number.  Raises InputError
    for an unknown entry (HTTP 404), an unreachable server, or a corrupt download."""
    number = entry if isinstance(entry, int) else parse_emdb_id(entry)
    name = entry_name(number)
    server = server_address(server)
    folder = cache_folder(cache_dir) / name
    map_path = folder / f"emd_{number}.map.gz"
    header_path = folder / f"emd-{number}.xml"
    show_bar = progress and sys.stderr.isatty()

    if map_path.exists():
        log.info("%s: using the cached map %s", name, map_path)
    else:
        url = f"{server}{name}/map/emd_{number}.map.gz"
        log.info("%s: downloading %s", name, url)
        _download(url, map_path, name, server, check=_check_map, progress=show_bar)

    if not header_path.exists():
        url = f"{server}{name}/header/emd-{number}.xml"
        try:
            _download(url, header_path, name, server, check=_check_xml, progress=False)
        except InputError as exc:
            log.warning("%s: no header (%s); the contour will be estimated", name, exc)
    contour, source = None, None
    if header_path.exists():
        contour, source = contour_from_header(header_path)
        if contour is None:
            log.info("%s: the header gives no recommended contour; the contour will be estimated", name)
    return EmdbEntry(
        id=name,
        map_path=str(map_path),
        header_path=str(header_path) if header_path.exists() else None,
        contour=contour,
        contour_source=source,
    )


def server_address(server: str | None = None) -> str:
    address = server or os.environ.get(SERVER_ENV) or EMDB_SERVER
    return address if address.endswith("/") else address + "/"


def cache_folder(cache_dir=None) -> Path:
    """The `emdb/` folder of the cache: cache_dir, else $CRYOALIGN_CACHE, else the OS user cache."""
    if cache_dir is None:
        cache_dir = os.environ.get(CACHE_ENV)
    if not cache_dir:
        import pooch

        cache_dir = pooch.os_cache("cryoalign")
    return Path(cache_dir) / "emdb"


# ----------------------------------------------------------------------------- header
def contour_from_header(path) -> tuple[float | None, str | None]:
    """(recommended contour level, where it was found) from an EMDB header XML, or (None, None).

    v3 schema: the level of the `<contour primary="true">` element (anywhere, usually
    map/contour_list/contour); v1.9: `<contourLevel>`."""
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as exc:
        log.warning("cannot read the EMDB header %s (%s); the contour will be estimated", path, exc)
        return None, None
    elements = list(root.iter())
    for element in elements:
        if _tag(element) == "contour" and (element.get("primary") or "").strip().lower() == "true":
            level = _number(next((c.text for c in element if _tag(c) == "level"), None))
            if level is not None:
                return level, 'EMDB header <contour primary="true">'
    for element in elements:
        if _tag(element) == "contourLevel":
            level = _number(element.text)
            if level is not None:
                return level, "EMDB header <contourLevel>"
    return None, None


def _tag(element) -> str:
    return element.tag.rsplit("}", 1)[-1] if isinstance(element.tag, str) else ""


def _number(text) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if value == value and abs(value) != float("inf") else None


# ----------------------------------------------------------------------------- download
def _download(url: str, path: Path, name: str, server: str, *, check, progress: bool) -> None:
    """Fetch `url` into a temporary file next to `path`, check it, rename it onto `path`."""
    import pooch
    import requests

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".part-", suffix="-" + path.name, dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise InputError(
            f"cannot write the EMDB cache {path.parent} ({exc.strerror or exc}); set {CACHE_ENV} to a writable folder"
        ) from None
    bar = _progress_bar(name) if progress else False
    try:
        try:
            pooch.HTTPDownloader(progressbar=bar, timeout=TIMEOUT_S)(url, tmp, None)
        except requests.exceptions.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else None
            if status == 404:
                raise InputError(f"{name} not found at {server} (HTTP 404 for {url}); check the ID") from None
            raise InputError(
                f"downloading {name} from {server} failed (HTTP {status} for {url}); retry later, "
                f"or set {SERVER_ENV} to an EMDB mirror"
            ) from None
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
            if isinstance(exc, requests.exceptions.ChunkedEncodingError):
                raise _corrupt(name, server, "the connection closed before the end of the file") from None
            raise InputError(
                f"cannot reach the EMDB server {server} ({one_line(exc, 300)}); check the network, "
                f"or set {SERVER_ENV} to a reachable EMDB mirror"
            ) from None
        except requests.exceptions.RequestException as exc:
            raise _corrupt(name, server, one_line(exc, 300)) from None
        problem = check(tmp)
        if problem:
            raise _corrupt(name, server, problem)
        os.replace(tmp, path)
    finally:
        if bar:
            bar.close()
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


def _progress_bar(name: str):
    from tqdm import tqdm

    return tqdm(desc=name, unit="B", unit_scale=True, file=sys.stderr, leave=False)


def _corrupt(name: str, server: str, problem: str) -> InputError:
    return InputError(
        f"the download of {name} from {server} is incomplete or corrupt ({problem}); "
        "it was removed from the cache: retry"
    )


def _check_map(path) -> str | None:
    """None when `path` is a complete gzip stream of an MRC map, else what is wrong.

    Streams through the file (constant memory): the gzip checksum and length trailer
    catch a cut download; the header's grid size and mode catch a map cut before gzip."""
    inflater = zlib.decompressobj(wbits=31)  # gzip container
    head, total = b"", 0
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                while chunk:
                    out = inflater.decompress(chunk, 1 << 24)
                    total += len(out)
                    if len(head) < 1024:
                        head += out[: 1024 - len(head)]
                    chunk = inflater.unconsumed_tail
                if inflater.eof:
                    break
    except zlib.error as exc:
        return f"not a valid gzip file: {exc}"
    if not inflater.eof:
        return "the gzip stream ends early"
    if len(head) < 1024 or head[208:211] != b"MAP":
        return "no MRC header ('MAP ' tag) in the file"
    from .maps import announced_bytes

    sizes = announced_bytes(head)
    expected = None if sizes is None else 1024 + sum(sizes)
    if expected is not None and total < expected:
        return f"the map holds {total} bytes, its header announces {expected}"
    return None


def _check_xml(path) -> str | None:
    try:
        ET.parse(path)
    except (ET.ParseError, OSError) as exc:
        return f"not a readable XML header: {exc}"
    return None
