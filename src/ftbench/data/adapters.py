"""Dataset adapters: each turns one kind of source into the standard table.

The standard table has one row per image: ``image_id``, ``patient_id``, ``file`` (absolute path),
``centre``, ``view``, ``time`` (for first/last image per patient) and every label column of the source
as text. :func:`build_table` then rejects what cannot be used (listing each row and why).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import polars as pl

from ftbench.data import cohen, manifest, synthetic
from ftbench.data.download import find_root
from ftbench.data.images import DECODE_ERRORS, decode

STANDARD = ("image_id", "patient_id", "file", "centre", "view", "time")


def _synthetic(name: str, spec: dict, resources: Path) -> tuple[pl.DataFrame, list[dict]]:
    return synthetic.generate(resources / "datasets" / name, **spec.get("synthetic", {})), []


def _cohen(name: str, spec: dict, resources: Path) -> tuple[pl.DataFrame, list[dict]]:
    root = spec.get("path") or find_root(resources / "datasets" / name, "metadata.csv")
    return cohen.read(root), []


def _manifest(name: str, spec: dict, resources: Path) -> tuple[pl.DataFrame, list[dict]]:
    return manifest.read(spec["path"], spec.get("root"), spec.get("columns"))


ADAPTERS: dict[str, Callable[[str, dict, Path], tuple[pl.DataFrame, list[dict]]]] = {
    "synthetic": _synthetic,
    "cohen": _cohen,
    "manifest": _manifest,
}


def needs_download(spec: dict) -> bool:
    """Whether the source is an archive that the download rule must fetch first."""
    return spec["adapter"] in ("cohen",) and not spec.get("path")


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
        reason = None
        if not patient:
            reason = "empty patient id"
        else:
            try:
                pixels = decode(file)
                heights.append(pixels.shape[0])
                widths.append(pixels.shape[1])
            except DECODE_ERRORS as err:
                reason = f"unreadable image: {type(err).__name__}: {err}"
        if reason:
            rejects.append({"image_id": image_id, "file": file, "reason": reason})
        keep.append(reason is None)
    table = table.filter(pl.Series(keep)).with_columns(
        pl.Series("height", heights, dtype=pl.Int32), pl.Series("width", widths, dtype=pl.Int32))
    rejected = pl.DataFrame(rejects, schema={"image_id": pl.String, "file": pl.String, "reason": pl.String})
    return table, rejected
