"""A user's own dataset described by a CSV manifest.

Column contract (names configurable under ``columns:``): ``file`` (image path, relative to ``root`` or
absolute inside it), ``patient_id``; optional ``image_id``, ``centre``, ``view``, ``time`` (numbers or ISO
dates, see :mod:`ftbench.data.text`); every other column is kept as a label column. A path that resolves
outside ``root`` is rejected (listed, not dropped silently), so a manifest cannot read arbitrary files.
"""

from __future__ import annotations

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
    root = Path(root).resolve() if root else csv.resolve().parent
    meta = text.read_csv(csv, encoding, encoding_key)
    mapping = {"file": "file", "patient_id": "patient_id", **(columns or {})}
    for std in ("file", "patient_id"):
        if mapping[std] not in meta.columns:
            raise ValueError(
                f"{csv}: required column '{mapping[std]}' (for {std}) is missing; columns are {meta.columns}"
            )
    meta = meta.rename({src: std for std, src in mapping.items() if src in meta.columns and src != std})
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
        path = (root / file).resolve() if file else None
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
        elif not path.is_relative_to(root):
            rejects.append(
                {
                    "image_id": image_id,
                    "file": file,
                    "kind": "path escapes root",
                    "reason": f"{csv} line {line}: path escapes root {root}",
                }
            )
            files.append(None)
        else:
            files.append(str(path))
    meta = meta.with_columns(pl.Series("file", files, dtype=pl.String)).filter(pl.col("file").is_not_null())
    return meta, rejects
