"""Dataset adapters: each turns one kind of source into the standard table.

The standard table has one row per image: ``image_id``, ``patient_id``, ``file`` (absolute path),
``centre``, ``view``, ``time`` (for first/last image per patient) and every label column of the source
as text. :func:`build_table` then rejects what cannot be used (listing each row, the kind of problem
and the detail). Sources that must be fetched first name their download in ``DOWNLOADS``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import polars as pl

from ftbench.data import aiforcovid, cohen, manifest, synthetic, tcia
from ftbench.data.download import extract, fetch, find_root
from ftbench.data.images import DECODE_ERRORS, decode

STANDARD = ("image_id", "patient_id", "file", "centre", "view", "time")
REJECTS_SCHEMA = {"image_id": pl.String, "file": pl.String, "kind": pl.String, "reason": pl.String}


def _synthetic(name: str, spec: dict, resources: Path) -> tuple[pl.DataFrame, list[dict]]:
    return synthetic.generate(resources / "datasets" / name, **spec.get("synthetic", {})), []


def _cohen(name: str, spec: dict, resources: Path) -> tuple[pl.DataFrame, list[dict]]:
    root = spec.get("path") or find_root(resources / "datasets" / name, "metadata.csv")
    return cohen.read(root), []


def _manifest(name: str, spec: dict, resources: Path) -> tuple[pl.DataFrame, list[dict]]:
    return manifest.read(spec["path"], spec.get("root"), spec.get("columns"))


def _aiforcovid(name: str, spec: dict, resources: Path) -> tuple[pl.DataFrame, list[dict]]:
    return aiforcovid.read(spec["path"])


ADAPTERS: dict[str, Callable[[str, dict, Path], tuple[pl.DataFrame, list[dict]]]] = {
    "synthetic": _synthetic,
    "cohen": _cohen,
    "manifest": _manifest,
    "tcia": tcia.read,
    "aiforcovid": _aiforcovid,
}


def _archive(source: dict, out: Path) -> None:
    extract(fetch(source["url"], out / "archive", source.get("sha256")), out)


class Download(NamedTuple):
    source: Callable[[dict], dict]  # the settings that define what is fetched (the download rule's params)
    fetch: Callable[[dict, Path], object]  # (source, folder) -> fetched into resources/datasets/<name>/


DOWNLOADS: dict[str, Download] = {
    "cohen": Download(lambda spec: {"url": spec["url"], "sha256": spec.get("sha256")}, _archive),
    "tcia": Download(tcia.download_source, tcia.download),
}


def download_source(spec: dict) -> dict | None:
    """What the download rule must fetch for this source; None for local copies (``path:``) and generators."""
    entry = DOWNLOADS.get(spec["adapter"])
    return entry.source(spec) if entry and not spec.get("path") else None


def download(adapter: str, source: dict, out: str | Path) -> None:
    DOWNLOADS[adapter].fetch(source, Path(out))


def build_table(name: str, spec: dict, resources: str | Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Run the adapter and check every image decodes; return (table, rejects with reasons)."""
    table, rejects = ADAPTERS[spec["adapter"]](name, spec, Path(resources))
    table = table.select(*STANDARD, *[c for c in table.columns if c not in STANDARD])
    table = table.with_columns(pl.col(c).cast(pl.String) for c in table.columns if c not in ("time",))
    dupes = table.filter(pl.col("image_id").is_duplicated())["image_id"].unique().to_list()
    if dupes:
        raise ValueError(f"dataset '{name}': duplicate image_id values {dupes[:5]}")
    keep, heights, widths = [], [], []
    for image_id, patient, file in table.select("image_id", "patient_id", "file").iter_rows():
        kind = reason = None
        if not patient:
            kind, reason = "empty patient id", "the source gives no patient id for this image"
        else:
            try:
                pixels = decode(file)
                heights.append(pixels.shape[0])
                widths.append(pixels.shape[1])
            except DECODE_ERRORS as err:
                kind, reason = "unreadable image", f"unreadable image: {type(err).__name__}: {err}"
        if reason:
            rejects.append({"image_id": image_id, "file": file, "kind": kind, "reason": reason})
        keep.append(reason is None)
    table = table.filter(pl.Series(keep)).with_columns(
        pl.Series("height", heights, dtype=pl.Int32), pl.Series("width", widths, dtype=pl.Int32))
    rejected = pl.DataFrame(rejects, schema=REJECTS_SCHEMA).select(*REJECTS_SCHEMA)
    return table, rejected
