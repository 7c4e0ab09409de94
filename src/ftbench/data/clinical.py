"""Clinical spreadsheets (CSV, Excel, or IDC's parquet tables) as text tables, one row per patient, joined onto image tables.

Every value is read as text, the way task labels are compared (``Y``/``N``, ``deceased``, ``1``); whole
numbers stored as floats by Excel become ``1`` rather than ``1.0``. Excel sheets may carry a title above
the header row (COVID-19-AR's does): the header is the first row that holds the id column.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from ftbench.data import text


def _cell(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    text = str(value).strip()
    return text or None


def _excel(path: Path, id_column: str) -> pl.DataFrame:
    from openpyxl import load_workbook

    book = load_workbook(path, read_only=True, data_only=True)
    try:
        rows = book.worksheets[0].iter_rows(values_only=True)
        for number, row in enumerate(rows, start=1):  # noqa: B007 (the header row number, read after the loop)
            names = [_cell(v) for v in row]
            if id_column in names:
                break
        else:
            raise ValueError(f"{path}: no header row with the id column '{id_column}' in the first sheet")
        keep = [i for i, name in enumerate(names) if name]
        records = [[_cell(row[i]) if i < len(row) else None for i in keep] for row in rows]
    finally:
        book.close()
    columns = [names[i] for i in keep]
    if len(set(columns)) < len(columns):
        raise ValueError(f"{path}: header row {number} repeats a column name: {columns}")
    return pl.DataFrame(records, schema={c: pl.String for c in columns}, orient="row")


def read(path: str | Path, id_column: str) -> pl.DataFrame:
    """The sheet with ``id_column`` renamed ``patient_id``; rows without an id are left out (empty lines).

    A patient listed twice is an error naming the file and the ids: labels must be one per patient.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: clinical spreadsheet not found")
    if path.suffix.lower() in (".xlsx", ".xlsm"):
        sheet = _excel(path, id_column)
    elif path.suffix.lower() == ".parquet":  # IDC's clinical tables (ftbench.data.idc)
        sheet = pl.read_parquet(path).select(pl.all().cast(pl.String).str.strip_chars().replace("", None))
    else:
        sheet = text.read_csv(path).with_columns(pl.all().str.strip_chars().replace("", None))
    if id_column not in sheet.columns:
        raise ValueError(f"{path}: id column '{id_column}' not found; columns are {sheet.columns}")
    sheet = sheet.rename({id_column: "patient_id"}).filter(pl.col("patient_id").is_not_null())
    twice = sheet.filter(pl.col("patient_id").is_duplicated())["patient_id"].unique().sort().to_list()
    if twice:
        raise ValueError(f"{path}: patient id(s) {twice[:10]} appear in more than one row of column '{id_column}'")
    return sheet


def join(images: pl.DataFrame, sheet: pl.DataFrame) -> pl.DataFrame:
    """Left-join the sheet's columns onto the image table by ``patient_id``.

    Patients missing from the sheet keep their images with empty labels (tasks count them as unlabelled).
    A sheet column named like an image-table column, or like a column ftbench adds (``height``, ``width``,
    ..., :data:`text.RESERVED`), gets the suffix ``_clinical`` instead of replacing it or being replaced.
    """
    clash = [c for c in sheet.columns if c != "patient_id" and (c in images.columns or c in text.RESERVED)]
    sheet = sheet.rename({c: f"{c}_clinical" for c in clash})
    return images.join(sheet, on="patient_id", how="left")
