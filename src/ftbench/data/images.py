"""Decode one image file into a grayscale uint8 array, whatever its format, mode or bit depth.

DICOM files (``*.dcm`` or a ``DICM`` preamble) go through :mod:`ftbench.data.dicom`; everything else
through Pillow (JPEG, PNG, TIFF, ...).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ftbench.data import dicom

# Errors that mean "this file is not a usable image"; anything else is a bug and propagates.
DECODE_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError, *dicom.READ_ERRORS)


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Scale any numeric array to uint8 by its own range (16-bit and float images)."""
    if pixels.dtype == np.uint8:
        return pixels
    pixels = pixels.astype(np.float64)
    lo, hi = float(pixels.min()), float(pixels.max())
    if hi <= lo:
        return np.zeros(pixels.shape, dtype=np.uint8)
    return np.round((pixels - lo) / (hi - lo) * 255.0).astype(np.uint8)


def _raster(path: str | Path) -> np.ndarray:
    """Grayscale uint8 (H, W) from a JPEG/PNG/... file in mode L, RGB, RGBA, P, LA, I;16 or I.

    Alpha is dropped (composited on black), palette images are expanded, 16-bit and 32-bit images are
    rescaled by their own range. Raises one of ``DECODE_ERRORS`` for missing, truncated or unknown files.
    """
    with Image.open(path) as img:
        img.load()
        if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            return to_uint8(np.asarray(img))
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            rgba = img.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
            img = Image.alpha_composite(background, rgba)
        return np.asarray(img.convert("L"), dtype=np.uint8)


def _dicom(path: str | Path) -> np.ndarray:
    """Grayscale uint8 (H, W) of a DICOM radiograph after its modality and VOI LUTs (MONOCHROME1 inverted)."""
    return to_uint8(dicom.pixels(path))


DECODERS: dict[str, Callable[[str | Path], np.ndarray]] = {"dicom": _dicom, "raster": _raster}


def decode(path: str | Path) -> np.ndarray:
    """Grayscale uint8 (H, W) of any supported image file; raises one of ``DECODE_ERRORS`` when unusable."""
    return DECODERS["dicom" if dicom.is_dicom(path) else "raster"](path)


def resize(pixels: np.ndarray, side: int) -> np.ndarray:
    """Resize a (H, W) uint8 image to (side, side) with antialiasing (the whole field of view is kept)."""
    img = Image.fromarray(pixels)
    return np.asarray(img.resize((side, side), Image.Resampling.BILINEAR, reducing_gap=3.0), dtype=np.uint8)
