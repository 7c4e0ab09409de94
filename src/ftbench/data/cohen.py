"""The COVID-19 Image Data Collection (Cohen et al.) in its upstream layout: metadata.csv + images/."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from ftbench.data import text

# The time: upstream's offset, days since the start of symptoms or hospitalisation (its README).
SOURCE = "metadata.csv offset (days since symptoms or admission)"
# Free-text and bibliographic columns are not labels; everything else is kept for task filters.
DROP = ("clinical_notes", "other_notes", "doi", "url", "date", "location", "folder", "filename", "")


def read(root: str | Path) -> pl.DataFrame:
    """The standard table (with ``time_kind``) of a checkout or extracted archive of the collection at ``root``.

    ``offset`` (days since the start of symptoms or admission) is the time; '?' and empty cells are missing.
    """
    root = Path(root)
    csv = root / "metadata.csv"
    if not csv.is_file():
        raise FileNotFoundError(f"{csv}: not found; expected the upstream layout (metadata.csv + images/)")
    meta = text.read_csv(csv)  # every column as text: labels are Y/N/empty (and free text, see config.yaml)
    missing = {"patientid", "filename", "view", "folder", "offset"} - set(meta.columns)
    if missing:
        raise ValueError(f"{csv}: missing column(s) {sorted(missing)}")
    names = meta["filename"]
    time, kind = text.times(meta["offset"], lambda i: f"{csv} row {i + 1} ({names[i]}), column 'offset'")
    meta = meta.with_row_index("_row").with_columns(time.alias("_time"), kind.alias("time_kind"))
    return meta.select(
        pl.format("{}:{}", pl.col("_row"), pl.col("filename")).alias("image_id"),
        pl.col("patientid").alias("patient_id"),
        pl.concat_str([pl.lit(str(root.resolve()) + "/"), pl.col("folder"), pl.lit("/"), pl.col("filename")]).alias(
            "file"
        ),
        pl.col("location").alias("centre") if "location" in meta.columns else pl.lit(None, pl.String).alias("centre"),
        pl.col("view"),
        pl.col("_time").alias("time"),
        pl.col("time_kind"),
        pl.when(pl.col("_time").is_not_null()).then(pl.lit(SOURCE)).alias("time_source"),
        *[
            pl.col(c)
            for c in meta.columns
            if c not in DROP and c not in ("_row", "_time", "time_kind", "patientid", "view", "offset")
        ],
    )
