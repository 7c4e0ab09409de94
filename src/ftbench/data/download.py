"""Fetch a file over HTTP(S) into resources/, resumably, and check it against a SHA-256."""

from __future__ import annotations

import hashlib
import shutil
import tarfile
import urllib.request
import zipfile
from pathlib import Path

CHUNK = 1 << 20


def hexdigest(path: str | Path, algorithm: str = "sha256") -> str:
    """Checksum of a file, read in chunks (TCIA publishes MD5s, archives get SHA-256s)."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(
    url: str, dest: str | Path, expected_sha256: str | None = None, timeout: float = 60.0, resume: bool = True
) -> Path:
    """Download ``url`` to ``dest``; with ``resume``, a partial ``dest.part`` left by an interrupted run is
    continued with an HTTP Range request (a server that ignores it answers 200 and the file starts afresh).

    ``resume=False`` is for URLs that are streamed as they are generated (TCIA's series zips): they carry
    no Content-Length and honour no Range, so a partial file is worthless and no Range is sent.
    The file appears at ``dest`` only once complete and verified, so a half download never looks done.
    A connection that closes before the announced Content-Length raises ``ConnectionError`` and keeps the
    bytes received (urllib's reads end quietly there, so the length is checked here). Without a
    Content-Length, a chunked transfer cut mid-way raises ``http.client.IncompleteRead``; one delimited by
    closing the connection cannot be told from a complete one, so the caller checks the content (zip
    directory, MD5s).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if resume and part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        start = have if have and response.status == 206 else 0
        announced = response.headers.get("Content-Length")
        with open(part, "ab" if start else "wb") as out:
            shutil.copyfileobj(response, out, CHUNK)
    if announced is not None and (size := part.stat().st_size) != start + int(announced):
        then = "are resumed by the next attempt" if resume else "are discarded: the next attempt starts again"
        raise ConnectionError(
            f"{url}: transfer cut after {size - start} of {announced} bytes; the {size} bytes in {part} {then}"
        )
    if expected_sha256 and (got := hexdigest(part)) != expected_sha256:
        part.unlink()
        raise ValueError(
            f"{url}: checksum mismatch, expected sha256 {expected_sha256}, got {got}; the partial file was removed"
        )
    part.replace(dest)
    return dest


def extract(archive: str | Path, into: str | Path) -> Path:
    """Unpack a .zip or .tar(.gz) archive, refusing members that would land outside ``into``."""
    archive, into = Path(archive), Path(into).resolve()
    into.mkdir(parents=True, exist_ok=True)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for member in zf.namelist():
                if not (into / member).resolve().is_relative_to(into):
                    raise ValueError(f"{archive}: member '{member}' escapes the extraction folder")
            zf.extractall(into)
    else:
        with tarfile.open(archive) as tf:
            tf.extractall(into, filter="data")
    return into


def find_root(folder: str | Path, marker: str) -> Path:
    """The (possibly nested) folder of an extracted archive that holds ``marker``."""
    hits = sorted(Path(folder).rglob(marker), key=lambda p: len(p.parts))
    if not hits:
        raise FileNotFoundError(f"{folder}: no '{marker}' found in the extracted archive")
    return hits[0].parent
