"""AIforCOVID (Soda et al., Medical Image Analysis 2021): one admission CXR per COVID-19 patient from six
Italian hospitals, with the outcome (mild / severe) and death. Access requires registration, so it is
read from the user's local copy as distributed:

    <path>/AIforCOVID.xlsx (+ AIforCOVID_r2.xlsx, ... for later releases)
        ImageFile (image and patient id), Hospital (centre, A-F), Prognosis (MILD / SEVERE), Death, ...
    <path>/imgs/<ImageFile>.dcm (+ imgs_r2/, ... for later releases)

Optionally a lung box file (``datasets.<name>.bbox``; the first study's configs give ``box_data_AFC.xlsx``), as
its authors' code writes and reads it (cosbidev/Multi-Dataset-Multi-Task-Learning-for-COVID-19-Prognosis,
src/preprocessing/AFC/segmentation_AFC.py and src/utils/utils_data.py): column ``img`` (the ImageFile) and column
``all``, the box around both lungs as ``[min_row, min_col, max_row, max_col]`` in the image's pixels (scikit-image's
``regionprops`` bounding box of the lung mask; its other columns are not used). Each image is then cropped to that
box, widened to a square about its centre within the image, as that code's loader does, before it is resized
(``ftbench.data.store``). Without the file the whole radiograph is resized.
"""

from __future__ import annotations

import ast
from pathlib import Path

import polars as pl

from ftbench.data import clinical, dicom
from ftbench.data.store import CROP

BOX_ID, BOX = "img", "all"

ID, CENTRE = "ImageFile", "Hospital"
INSTRUCTIONS = (
    "AIforCOVID is distributed only after registration: request access at https://aiforcovid.radiomica.it/ , "
    "download every release, and put (or point datasets.<name>.path at) one folder holding AIforCOVID.xlsx "
    "(AIforCOVID_r2.xlsx, ... for later releases: columns ImageFile, Hospital, Prognosis, Death) and imgs/ "
    "(imgs_r2/, ...) with one <ImageFile>.dcm per patient"
)


def read(root: str | Path, bbox: str | None = None) -> tuple[pl.DataFrame, list[dict]]:
    """The standard table (patient = image, centre = hospital, every sheet column as a label) and rejects.

    Sheet rows whose image is missing and images that no sheet lists are rejected with the reason. With ``bbox``
    (a file in ``root``, or a path) each image gets its lung box as the ``CROP`` columns; an image without a box
    is rejected with the reason.
    """
    root = Path(root)
    sheets = sorted(root.glob("AIforCOVID*.xlsx")) if root.is_dir() else []
    if not sheets:
        raise FileNotFoundError(
            f"{root}: {'no AIforCOVID*.xlsx sheet in this folder' if root.is_dir() else 'not found'}. {INSTRUCTIONS}"
        )
    table = pl.concat(
        [clinical.read(sheet, ID).with_columns(pl.lit(sheet.name).alias("sheet")) for sheet in sheets], how="diagonal"
    )
    twice = table.filter(pl.col("patient_id").is_duplicated())["patient_id"].unique().sort().to_list()
    if twice:
        raise ValueError(f"{root}: {ID} value(s) {twice[:10]} are listed in more than one AIforCOVID*.xlsx sheet")
    if CENTRE not in table.columns:
        raise ValueError(f"{root}: the sheets have no '{CENTRE}' column (the centre); columns are {table.columns}")
    images: dict[str, Path] = {}
    for file in sorted(root.glob("imgs*/*.dcm")):
        if file.stem in images:
            raise ValueError(f"{root}: image {file.stem} is in two folders: {images[file.stem]} and {file}")
        images[file.stem] = file.resolve()
    listed = set(table["patient_id"])
    rejects = [
        {
            "image_id": stem,
            "file": str(file),
            "kind": "not in the clinical sheets",
            "reason": f"no row with {ID} = {stem} in {[s.name for s in sheets]}",
        }
        for stem, file in images.items()
        if stem not in listed
    ]
    missing = table.filter(~pl.col("patient_id").is_in(list(images)))
    rejects += [
        {
            "image_id": pid,
            "file": str(root / "imgs" / f"{pid}.dcm"),
            "kind": "image missing",
            "reason": f"{sheet} lists {ID} {pid} but no imgs*/{pid}.dcm exists",
        }
        for pid, sheet in missing.select("patient_id", "sheet").iter_rows()
    ]
    table = table.filter(pl.col("patient_id").is_in(list(images)))
    files = [str(images[pid]) for pid in table["patient_id"]]
    views = [_view(f) for f in files]
    table = table.with_columns(
        pl.col("patient_id").alias("image_id"),
        pl.Series("file", files, dtype=pl.String),
        pl.col(CENTRE).alias("centre"),
        pl.Series("view", views, dtype=pl.String),
        pl.lit(None, pl.Float64).alias("time"),  # one admission image per patient: nothing to order
        pl.lit(None, pl.String).alias("time_source"),
    ).drop(CENTRE)
    if bbox:
        boxes = read_boxes(root / bbox)
        unboxed = table.filter(~pl.col("patient_id").is_in(list(boxes)))
        rejects += [
            {
                "image_id": pid,
                "file": file,
                "kind": "no lung box",
                "reason": f"{root / bbox} has no row with {BOX_ID} = {pid} (datasets.<name>.bbox)",
            }
            for pid, file in unboxed.select("patient_id", "file").iter_rows()
        ]
        table = table.filter(pl.col("patient_id").is_in(list(boxes)))
        table = table.with_columns(
            pl.Series(name, [boxes[pid][i] for pid in table["patient_id"]], dtype=pl.Int64)
            for i, name in enumerate(CROP)
        )
    return table, rejects


def read_boxes(path: Path) -> dict[str, tuple[int, int, int, int]]:
    """ImageFile -> its lung box ``(top, left, bottom, right)`` from a box file (columns ``img``, ``all``); an error
    naming the file, image and value when a box is not four whole numbers with top < bottom and left < right."""
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: lung box file not found (datasets.<name>.bbox). Put the first study's box_data_AFC.xlsx "
            "there, or remove the bbox key to use whole radiographs (not what the first study did)"
        )
    sheet = clinical.read(path, BOX_ID)
    if BOX not in sheet.columns:
        raise ValueError(f"{path}: no '{BOX}' column (the box around both lungs); columns are {sheet.columns}")
    boxes = {}
    for pid, text in sheet.select("patient_id", BOX).iter_rows():
        try:
            box = tuple(ast.literal_eval(text or ""))
            ok = (
                len(box) == 4
                and all(isinstance(v, int) and v >= 0 for v in box)
                and box[0] < box[2]
                and box[1] < box[3]
            )
        except (ValueError, SyntaxError, TypeError):
            ok = False
        if not ok:
            raise ValueError(
                f"{path}, the row of {BOX_ID} {pid}: {BOX} = {text!r} is not a box [min_row, min_col, max_row, "
                "max_col] of four whole numbers with min < max"
            )
        boxes[pid] = box
    return boxes


def _view(file: str) -> str:
    """The view the DICOM header states; an unreadable header is left to the decoding check to reject."""
    try:
        return dicom.header(file)["view"]
    except dicom.READ_ERRORS:
        return "unknown"
