"""How the text of source tables is read: file encodings, missing-value placeholders, patient ids, times.

Sources are spreadsheets exported by hand, so the same fact comes spelled many ways. The rules, stated once:
- a cell that is empty or one of :data:`MISSING` (any case, surrounding spaces ignored) is missing;
- patient ids are compared as text after trimming surrounding spaces: ``7``, ``7.0`` and ``07`` would be
  three patients, so two ids that are the same number written differently are an error (fix the source);
- a time is a number (days, hours, ...) or an ISO 8601 date (read as days since 1970-01-01); one column
  holds one kind, and anything else is an error naming the value and where it is.
"""

from __future__ import annotations

import csv
import io
import math
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

# The usual spellings of "no value" in exported spreadsheets (pandas, R, Excel, SQL, JSON, hand-made).
MISSING = ("", "nan", "na", "n/a", "#n/a", "none", "null", "?")
# Names of columns ftbench gives the standard table (``row``: the task table's): a source column so named
# would clash with or be replaced by ftbench's own, so a manifest's is refused, a clinical sheet's renamed.
RESERVED = ("time_kind", "height", "width", "copy_values", "row")
# The first bytes of spreadsheet files (zip: .xlsx/.ods; OLE2: .xls), which are not text.
SPREADSHEETS = {
    b"PK\x03\x04": "a zip archive (an Excel .xlsx or OpenDocument .ods workbook?)",
    b"\xd0\xcf\x11\xe0": "an Excel .xls workbook",
}


def missing(value: str | None) -> bool:
    """True for None, an empty value or a missing-value placeholder (the rule of :func:`is_missing`)."""
    return value is None or value.strip().lower() in MISSING


def is_missing(expr: pl.Expr) -> pl.Expr:
    """True where a text value is null, empty or a missing-value placeholder."""
    return expr.is_null() | expr.str.strip_chars().str.to_lowercase().is_in(list(MISSING))


def read_csv(path: str | Path, encoding: str = "utf-8", key: str = "encoding") -> pl.DataFrame:
    """A CSV file with every column as text, decoded from ``encoding`` (a UTF-8 byte-order mark is dropped).

    Bytes that are not valid in ``encoding`` stop with the file, line and byte, and how to fix it (``key``:
    the config key that sets the encoding); so do a spreadsheet given as CSV, a header naming a column twice
    and a row with more fields than the header (an unquoted comma), each naming the file and line.
    """
    path = Path(path)
    raw = path.read_bytes()
    for magic, what in SPREADSHEETS.items():
        if raw.startswith(magic):
            raise ValueError(
                f"{path} is {what}, not a CSV file: open it in Excel or LibreOffice and save the sheet as "
                "'CSV UTF-8 (comma delimited)', then give that file"
            )
    codec = "utf-8-sig" if encoding.lower().replace("_", "-") in ("utf-8", "utf8") else encoding
    try:
        text = raw.decode(codec)
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        column = err.start - (raw.rfind(b"\n", 0, err.start) + 1) + 1
        raise ValueError(
            f"{path} line {line}, column {column}: byte 0x{raw[err.start]:02x} is not valid {encoding}; "
            f"save the file as UTF-8, or set {key} to the file's encoding (e.g. latin-1, cp1252)"
        ) from None
    except LookupError:
        raise ValueError(
            f"{key}: unknown encoding '{encoding}' (Python codec names: utf-8, latin-1, cp1252, ...)"
        ) from None
    _check_fields(path, text)
    return pl.read_csv(io.StringIO(text), infer_schema=False)


def _check_fields(path: Path, text: str) -> None:
    """A header that names a column twice, or a row with more fields than the header, names file and line."""
    reader = csv.reader(io.StringIO(text))
    header = next(reader, [])
    twice = [name for name, n in Counter(header).items() if n > 1]
    if twice:
        raise ValueError(
            f"{path} line 1: the header names column(s) {twice} more than once; which one holds the values "
            "cannot be told: rename or remove the copy"
        )
    for row in reader:
        if len(row) > len(header):
            raise ValueError(
                f"{path} line {reader.line_num}: {len(row)} fields, the header has {len(header)}: a value with an "
                'unquoted comma? Quote it ("a, b") or remove the comma'
            )


def numeric_twins(ids: pl.Series) -> list[tuple[str, str]]:
    """Pairs of distinct ids that are the same number written differently (``7`` / ``7.0`` / ``07``)."""
    seen: dict[float, str] = {}
    twins = []
    for value in ids.unique(maintain_order=True).drop_nulls():
        try:
            number = float(value)
        except ValueError:
            continue
        if math.isfinite(number):
            if number in seen:
                twins.append((seen[number], value))
            else:
                seen[number] = value
    return twins


def case_twins(ids: pl.Series) -> list[tuple[str, str]]:
    """Pairs of distinct ids that differ only in case (``P1`` / ``p1``): two patients, since ids are text."""
    seen: dict[str, str] = {}
    twins = []
    for value in ids.unique(maintain_order=True).drop_nulls():
        if seen.setdefault(value.casefold(), value) != value:
            twins.append((seen[value.casefold()], value))
    return twins


def _date(text: str) -> float:
    """Days since 1970-01-01 (UTC unless the text gives an offset) of an ISO 8601 date or date-time."""
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp() / 86400.0


def times(values: pl.Series, where: Callable[[int], str]) -> tuple[pl.Series, pl.Series]:
    """Times as days or the source's unit (Float64), and how each was read: ``number``, ``date`` or null (missing).

    ``where(i)`` says where row ``i`` is (file and line, or image), for the error a value that is neither a
    number nor an ISO date raises, and for a column that mixes numbers and dates.
    """
    if values.dtype.is_numeric():
        floats = values.cast(pl.Float64).fill_nan(None)
        return floats, pl.Series(["number" if v is not None else None for v in floats], dtype=pl.String)
    out, kinds, first = [], [], {}
    for i, value in enumerate(values.cast(pl.String).to_list()):
        text = (value or "").strip()
        if text.lower() in MISSING:
            out.append(None)
            kinds.append(None)
            continue
        try:
            number = float(text)
            if not math.isfinite(number):
                raise ValueError(text)
            out.append(number)
            kinds.append("number")
        except ValueError:
            try:
                out.append(_date(text))
                kinds.append("date")
            except ValueError:
                raise ValueError(
                    f"{where(i)}: time '{text}' is neither a number nor an ISO date "
                    "(YYYY-MM-DD, optionally THH:MM[:SS]); give numbers (days, hours, ...) or ISO dates, "
                    "or leave the cell empty"
                ) from None
        first.setdefault(kinds[-1], i)
    if len(first) > 1:
        raise ValueError(
            f"{where(first['number'])} gives a number as time, {where(first['date'])} a date: one time "
            "column must hold one kind (numbers of one unit, or ISO dates)"
        )
    return pl.Series(out, dtype=pl.Float64), pl.Series(kinds, dtype=pl.String)
