"""A user's own dataset described by a CSV manifest.

Column contract (names configurable under ``columns:``): ``file`` (image path, relative to ``root`` or
absolute inside it), ``patient_id``; optional ``image_id``, ``centre``, ``view``, ``time`` (numbers or ISO
dates, see :mod:`ftbench.data.text`); every other column is kept as a label column. A path that leads
outside ``root`` (``..``, an absolute path elsewhere) is rejected (listed, not dropped silently), so a manifest
cannot read arbitrary files; symbolic links inside ``root`` (an image folder on other storage) are followed,
since whoever made them owns the root. Columns named like ftbench's own (:data:`text.RESERVED`) are refused.
"""

from __future__ import annotations

import os
from pathlib import Path

import polars as pl

from ftbench.data import text


def read(
    csv: str | Path,
    root: str | Path | None = None,
    columns: dict | None = None,
    encoding: str = "utf-8",
    encoding_key: str = "encoding",
) -> tuple[pl.DataFrame, list[dict]]:
    """The standard table (with ``time_kind``) and the rows rejected for a path escaping ``root``."""
    csv = Path(csv)
    given = Path(os.path.abspath(root if root else csv.parent))
    roots = (given, given.resolve())  # the root as written, and where its own symbolic link (if any) leads
    meta = text.read_csv(csv, encoding, encoding_key)
    mapping = {"file": "file", "patient_id": "patient_id", **(columns or {})}
    for std in ("file", "patient_id"):
        if mapping[std] not in meta.columns:
            raise ValueError(
                f"{csv}: required column '{mapping[std]}' (for {std}) is missing; columns are {meta.columns}"
            )
    for std, src in mapping.items():
        if src != std and std in meta.columns and src in meta.columns:
            raise ValueError(
                f"{csv}: columns.{std} names column '{src}' as the {std}, but the file has a column '{std}' too; "
                f"rename that one in the file, or drop columns.{std}"
            )
    meta = meta.rename({src: std for std, src in mapping.items() if src in meta.columns and src != std})
    reserved = [c for c in text.RESERVED if c in meta.columns]
    if reserved:
        raise ValueError(
            f"{csv}: column(s) {reserved} are names ftbench gives its own columns (reserved: "
            f"{', '.join(text.RESERVED)}); rename them in the file"
        )
    if "image_id" in meta.columns:
        empty = [line for line, value in enumerate(meta["image_id"], start=2) if text.missing(value)]
        if empty:
            raise ValueError(
                f"{csv} line(s) {empty[:10]}: column '{mapping.get('image_id', 'image_id')}' (the image id) is "
                "empty; give every image an id, or leave that column out (ids are then the file paths)"
            )
    if "image_id" not in meta.columns:  # the file as written; a file listed again gets #2, #3, ... (a duplicate image)
        seen = pl.int_range(pl.len()).over("file") + 1
        meta = meta.with_columns(
            pl.when(seen == 1)
            .then(pl.col("file"))
            .otherwise(pl.format("{}#{}", pl.col("file"), seen))
            .alias("image_id")
        )
    for optional in ("centre", "view", "time"):
        if optional not in meta.columns:
            meta = meta.with_columns(pl.lit(None, pl.String).alias(optional))
    column = mapping.get("time", "time")
    time, kind = text.times(meta["time"], lambda i: f"{csv} line {i + 2}, column '{column}'")
    meta = meta.with_columns(time.alias("time"), kind.alias("time_kind"))
    kind_text = pl.col("time_kind").replace({"date": "ISO date"})
    source = pl.concat_str(pl.lit(f"{csv.name} column '{column}' ("), kind_text, pl.lit(")"))  # null: no time
    meta = meta.with_columns(source.alias("time_source"))
    files, rejects = [], []
    for line, (image_id, file) in enumerate(meta.select("image_id", "file").iter_rows(), start=2):
        path = Path(os.path.normpath(given / file)) if file else None  # '..' folded, links not followed yet
        if path is None:
            rejects.append(
                {
                    "image_id": image_id,
                    "file": file,
                    "kind": "missing file path",
                    "reason": f"{csv} line {line}: the file column is empty",
                }
            )
            files.append(None)
        elif not any(path.is_relative_to(r) for r in roots):
            rejects.append(
                {
                    "image_id": image_id,
                    "file": file,
                    "kind": "path escapes root",
                    "reason": f"{csv} line {line}: path escapes root {given} ('..' or an absolute path leading "
                    "outside it; symbolic links inside the root are followed)",
                }
            )
            files.append(None)
        else:
            files.append(str(path.resolve()))
    meta = meta.with_columns(pl.Series("file", files, dtype=pl.String)).filter(pl.col("file").is_not_null())
    return meta, rejects
