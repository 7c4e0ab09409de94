"""Decode one image file into a grayscale uint8 array, whatever its format, mode or bit depth.

DICOM files (``*.dcm`` or a ``DICM`` preamble) go through :mod:`ftbench.data.dicom`; everything else
through Pillow (JPEG, PNG, TIFF, ...). A raster image larger than ``max_pixels`` is refused from its header,
before any pixel is decoded (a 20000 x 20000 PNG would need gigabytes).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ftbench.data import dicom

# Pillow's own refusal threshold (2 x Image.MAX_IMAGE_PIXELS): far above any radiograph (a 4,280 px wide
# CXR has ~18 M pixels). Ours, a setting: datasets.<name>.max_pixels.
MAX_PIXELS = 2 * 89_478_485


class TooLarge(ValueError):
    """The image has more pixels than the limit allows."""


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


def _too_large(width: int, height: int, max_pixels: int | None) -> None:
    if max_pixels is not None and width * height > max_pixels:
        raise TooLarge(f"{width} x {height} = {width * height:,} pixels, more than the limit of {max_pixels:,}")


def _raster(path: str | Path, max_pixels: int | None = MAX_PIXELS) -> np.ndarray:
    """Grayscale uint8 (H, W) from a JPEG/PNG/... file in mode L, RGB, RGBA, P, LA, I;16 or I.

    Alpha is dropped (composited on black), palette images are expanded, 16-bit and 32-bit images are
    rescaled by their own range. Raises one of ``DECODE_ERRORS`` for missing, truncated or unknown files,
    :class:`TooLarge` (from the header) above ``max_pixels``.
    """
    Image.MAX_IMAGE_PIXELS = None  # the limit is ours (max_pixels), checked below from the header
    with Image.open(path) as img:
        _too_large(*img.size, max_pixels)
        img.load()
        if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            return to_uint8(np.asarray(img))
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            rgba = img.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
            img = Image.alpha_composite(background, rgba)
        return np.asarray(img.convert("L"), dtype=np.uint8)


def _dicom(path: str | Path, max_pixels: int | None = MAX_PIXELS) -> np.ndarray:
    """Grayscale uint8 (H, W) of a DICOM radiograph after its modality and VOI LUTs (MONOCHROME1 inverted)."""
    pixels = dicom.pixels(path)
    _too_large(pixels.shape[1], pixels.shape[0], max_pixels)
    return to_uint8(pixels)


DECODERS: dict[str, Callable[..., np.ndarray]] = {"dicom": _dicom, "raster": _raster}


def decode(path: str | Path, max_pixels: int | None = MAX_PIXELS) -> np.ndarray:
    """Grayscale uint8 (H, W) of any supported image file; raises one of ``DECODE_ERRORS`` when unusable
    (:class:`TooLarge` above ``max_pixels``; None: no limit)."""
    return DECODERS["dicom" if dicom.is_dicom(path) else "raster"](path, max_pixels)


def fingerprint(pixels: np.ndarray) -> str:
    """A digest of the decoded pixels and their shape: equal for the same image saved under two names."""
    digest = hashlib.blake2b(np.ascontiguousarray(pixels).tobytes(), digest_size=16)
    digest.update(str(pixels.shape).encode())
    return digest.hexdigest()


def resize(pixels: np.ndarray, side: int) -> np.ndarray:
    """Resize a (H, W) uint8 image to (side, side) with antialiasing (the whole field of view is kept)."""
    img = Image.fromarray(pixels)
    return np.asarray(img.resize((side, side), Image.Resampling.BILINEAR, reducing_gap=3.0), dtype=np.uint8)
