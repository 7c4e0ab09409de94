"""The files a dataset given by a local ``path:`` is read from, so that the workflow reruns when they change.

A local copy is read where it lies, not fetched by a rule, so Snakemake sees its edits only through what this
module tells it (the dataset stage's inputs and a fingerprint rule's parameter, ``workflow/rules/data.smk``):

- its table files (a manifest CSV, Cohen's ``metadata.csv``, AIforCOVID's sheets, a TCIA copy's clinical sheet)
  are inputs of the dataset stage: an edited table is newer than the dataset table, which reruns;
- the image files they list (for a TCIA copy: every file under ``path``) are fingerprinted by path, size and
  modification time: a replaced image, even one copied with its old modification time, changes it.

Size and modification time, not a content hash: the fingerprint is taken each time the workflow is planned, and
reading every image is minutes on a large collection, while statting it is well under a second
(``docs/reruns.md`` gives the figures). Imported while planning (as the adapters already are, for downloads): no torch.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import NamedTuple

from ftbench.data.adapters import ADAPTERS


class Local(NamedTuple):
    tables: Callable[[dict], list[Path]]  # the files the labels and the image list are read from
    images: Callable[[str, dict], Iterable[str | Path]]  # (dataset name, spec) -> the image files they list


def _listed(name: str, spec: dict) -> list[str]:
    """The files the adapter's table lists, read as the dataset stage reads them (no image is opened)."""
    table, _ = ADAPTERS[spec["adapter"]](name, spec, Path("resources"))
    return table["file"].to_list()


def _walk(root: str | Path) -> list[str]:
    return [os.path.join(folder, file) for folder, _, files in os.walk(root) for file in files]


LOCAL: dict[str, Local] = {
    "manifest": Local(lambda spec: [Path(spec["path"])], _listed),
    "cohen": Local(lambda spec: [Path(spec["path"]) / "metadata.csv"], _listed),
    "aiforcovid": Local(
        lambda spec: sorted(Path(spec["path"]).glob("AIforCOVID*.xlsx")),
        lambda name, spec: Path(spec["path"]).glob("imgs*/*.dcm"),
    ),
    "tcia": Local(lambda spec: [Path(spec["clinical"]["path"])], lambda name, spec: _walk(spec["path"])),
}


def local(spec: dict) -> Local | None:
    """How a dataset's local copy is read, or None when it is generated or downloaded by the workflow."""
    return LOCAL.get(spec["adapter"]) if spec.get("path") else None


def tables(spec: dict) -> list[str]:
    """The table files of a local copy that exist now (a missing one is the dataset job's error to report,
    with the adapter's advice, rather than Snakemake's bare "missing input" that would stop all planning)."""
    found = local(spec)
    return [str(path) for path in found.tables(spec) if path.is_file()] if found else []


def fingerprint(name: str, spec: dict) -> str:
    """SHA-256 of every listed image's path, size and modification time (a missing one marked as such).

    A table that cannot be read gives its error instead: the dataset job stops with the same error, and the
    table, an input, reruns it once it is fixed.
    """
    try:
        files = sorted({str(Path(file).absolute()) for file in local(spec).images(name, spec)})
    except Exception as err:  # any reader error: the dataset job, reading the same table, reports it
        return f"unlisted: {type(err).__name__}: {err}"
    digest = hashlib.sha256()
    for file in files:
        try:
            stat = os.stat(file)
            digest.update(f"{file}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{file}\tmissing\n".encode())
    return f"{len(files)} image files, sha256 {digest.hexdigest()}"
