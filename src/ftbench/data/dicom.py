"""DICOM radiographs: display-ready grayscale pixels and the header fields the standard table needs.

Pixels follow the DICOM display pipeline (PS3.4 grayscale transform): stored values -> modality LUT
(rescale slope/intercept) -> VOI LUT or window centre/width -> MONOCHROME1 inverted so that bone is
bright everywhere. ``images.decode`` then scales them to uint8 by their own range, so 16-bit, 12-bit and
signed stored values all end up alike.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import date
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut, apply_voi_lut

FRONTAL = {"PA", "AP"}
# Tokens of ViewPosition / series or study descriptions that name a view (descriptions are free text).
VIEW_TOKENS = {
    "PA": "PA",
    "AP": "AP",
    "FRONTAL": "frontal",
    "LAT": "lateral",
    "LATERAL": "lateral",
    "LL": "lateral",
    "RL": "lateral",
    "LLD": "lateral",
    "RLD": "lateral",
}
CHEST_WORDS = ("CHEST", "THORAX", "LUNG", "TORAX", "TORACE")


def is_dicom(path: str | Path) -> bool:
    """A Part-10 file (``DICM`` preamble) or a file named ``*.dcm``."""
    path = Path(path)
    if path.suffix.lower() == ".dcm":
        return True
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def pixels(path: str | Path, check: Callable[[int, int, int], None]) -> np.ndarray:
    """Display values (H, W), float, of a radiograph: larger is brighter.

    ``check(columns, rows, frames)`` sees the header's size before anything is decoded (pydicom decodes
    only when ``pixel_array`` is read) and raises to refuse the file. Raises ``ValueError`` with the reason
    when the file has no pixel data or pixel data pydicom cannot decode; pydicom's ``InvalidDicomError`` or
    ``OSError`` when it is not readable at all.
    """
    ds = pydicom.dcmread(path)
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        kind = getattr(ds, "SOPClassUID", None)
        raise ValueError(f"DICOM without pixel data (SOP class {kind.name if kind else 'unknown'})")
    check(int(ds.get("Columns", 0) or 0), int(ds.get("Rows", 0) or 0), int(ds.get("NumberOfFrames", 1) or 1))
    try:
        arr = ds.pixel_array
    except (NotImplementedError, RuntimeError, AttributeError) as err:
        syntax = ds.file_meta.get("TransferSyntaxUID", "unknown transfer syntax")
        raise ValueError(f"pixel data cannot be decoded ({getattr(syntax, 'name', syntax)}): {err}") from None
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip()
    if int(ds.get("SamplesPerPixel", 1)) == 3:  # colour secondary captures (pydicom gives YBR as RGB): luminance
        return np.asarray(arr, dtype=np.float64) @ np.array([0.299, 0.587, 0.114])
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ValueError(f"photometric interpretation {photometric} is not a grayscale radiograph")
    values = np.asarray(apply_voi_lut(apply_modality_lut(arr, ds), ds), dtype=np.float64)
    return -values if photometric == "MONOCHROME1" else values


def _text(ds: pydicom.Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    return str(value).strip() if value not in (None, "") else ""


def _days(day: str, clock: str) -> float | None:
    """DA + TM as days since 0001-01-01 (dates of de-identified collections are shifted, but consistently)."""
    if not re.fullmatch(r"\d{8}", day):
        return None
    try:
        ordinal = date(int(day[:4]), int(day[4:6]), int(day[6:])).toordinal()
    except ValueError:
        return None
    digits = re.sub(r"[^0-9.]", "", clock)
    hh, mm, ss = (float(digits[i : i + 2] or 0) for i in (0, 2, 4)) if digits else (0.0, 0.0, 0.0)
    return ordinal + (hh * 3600 + mm * 60 + ss) / 86400


def view_of(ds: pydicom.Dataset) -> str:
    """``PA``, ``AP``, ``frontal``, ``lateral``, ``ambiguous`` or ``unknown``.

    ViewPosition wins; without it the series then the study description is read word by word (free text
    such as "CHEST AP PORT"); a description naming both a frontal and a lateral view is ambiguous.
    """
    for keyword in ("ViewPosition", "SeriesDescription", "StudyDescription"):
        words = re.split(r"[^A-Z]+", _text(ds, keyword).upper())
        found = {VIEW_TOKENS[w] for w in words if w in VIEW_TOKENS}
        if len(found) == 1:
            return found.pop()
        if found and "lateral" in found:
            return "ambiguous"
        if found:  # PA and AP together ("PA/AP"): still frontal
            return "frontal"
    return "unknown"


def _values(ds: pydicom.Dataset, keyword: str) -> list[str]:
    """A multi-valued attribute (e.g. ImageType) as upper-case strings; [] when absent."""
    value = ds.get(keyword)
    if value in (None, ""):
        return []
    return [str(v).strip().upper() for v in (value if isinstance(value, MultiValue) else [value])]


def header(path: str | Path) -> dict:
    """The standard-table fields of one file, read without its pixels."""
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    day, clock = ("AcquisitionDate", "AcquisitionTime") if _text(ds, "AcquisitionDate") else ("StudyDate", "StudyTime")
    time = _days(_text(ds, day), _text(ds, clock))
    return {
        "image_id": _text(ds, "SOPInstanceUID") or Path(path).stem,
        "patient_id": _text(ds, "PatientID"),
        "view": view_of(ds),
        "time": time,
        # which attributes gave the time: the data report counts them (a date alone is read as its midnight)
        "time_source": None if time is None else " + ".join([day, clock] if _text(ds, clock) else [day]),
        "modality": _text(ds, "Modality"),
        "body_part": _text(ds, "BodyPartExamined"),
        "series_uid": _text(ds, "SeriesInstanceUID"),
        "series_description": _text(ds, "SeriesDescription"),
        "study_description": _text(ds, "StudyDescription"),
        "image_type": _values(ds, "ImageType"),
        "referenced_images": len(ds.get("ReferencedImageSequence") or []),
    }


def not_frontal_chest(fields: dict) -> str | None:
    """Why an image is not a frontal chest radiograph (None when it is): the reason lands in rejects."""
    body = fields["body_part"].upper()
    if body and not any(word in body for word in CHEST_WORDS):
        return f"body part examined is '{fields['body_part']}', not the chest"
    if fields["view"] not in (*FRONTAL, "frontal"):
        described = fields["series_description"] or fields["study_description"] or "none"
        return f"view is {fields['view']} (ViewPosition/description: '{described}'), not frontal"
    return None


def derived(fields: dict) -> str | None:
    """Why an image is derived from other images (None when it is not): the optional filter's reason.

    Derived means ImageType DERIVED\\SECONDARY (pixel values computed from other images after the
    examination, e.g. a subtraction) or a ReferencedImageSequence (public NY-SBU pipelines drop images that
    reference others as possible difference images). DERIVED\\PRIMARY is not derived here: an ordinary
    processed-for-presentation radiograph may carry it (MIMIC-CXR's images do).
    """
    kind = fields["image_type"]
    if kind[:2] == ["DERIVED", "SECONDARY"]:
        return "ImageType " + "\\".join(kind) + ": computed from other images"
    if fields["referenced_images"]:
        return f"references {fields['referenced_images']} other image(s) (ReferencedImageSequence)"
    return None


# What reading a header or pixels raises for a broken or foreign file (anything else is a bug).
READ_ERRORS = (InvalidDicomError, OSError, ValueError)
