"""A user's own dataset described by a CSV manifest.

Column contract (names configurable under ``columns:``): ``file`` (image path, relative to ``root`` or
absolute inside it), ``patient_id``; optional ``image_id``, ``centre``, ``view``, ``time``; every other
column is kept as a label column. A path that resolves outside ``root`` is rejected (listed, not dropped
silently), so a manifest cannot read arbitrary files.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl


def read(csv: str | Path, root: str | Path | None = None, columns: dict | None = None) -> tuple[pl.DataFrame, list[dict]]:
    """The standard table and the rows rejected for a path escaping ``root``."""
    csv = Path(csv)
    root = Path(root).resolve() if root else csv.resolve().parent
    meta = pl.read_csv(csv, infer_schema=False)
    mapping = {"file": "file", "patient_id": "patient_id", **(columns or {})}
    for std in ("file", "patient_id"):
        if mapping[std] not in meta.columns:
            raise ValueError(f"{csv}: required column '{mapping[std]}' (for {std}) is missing; columns are {meta.columns}")
    meta = meta.rename({src: std for std, src in mapping.items() if src in meta.columns and src != std})
    if "image_id" not in meta.columns:
        meta = meta.with_columns(pl.col("file").alias("image_id"))
    for optional in ("centre", "view"):
        if optional not in meta.columns:
            meta = meta.with_columns(pl.lit(None, pl.String).alias(optional))
    meta = meta.with_columns(pl.col("time").cast(pl.Float64, strict=False) if "time" in meta.columns
                             else pl.lit(None, pl.Float64).alias("time"))
    files, rejects = [], []
    for line, (image_id, file) in enumerate(meta.select("image_id", "file").iter_rows(), start=2):
        path = (root / file).resolve()
        if not path.is_relative_to(root):
            rejects.append({"image_id": image_id, "file": file, "kind": "path escapes root",
                            "reason": f"{csv} line {line}: path escapes root {root}"})
            files.append(None)
        else:
            files.append(str(path))
    meta = meta.with_columns(pl.Series("file", files, dtype=pl.String)).filter(pl.col("file").is_not_null())
    return meta, rejects
