"""Decode one image file into a grayscale uint8 array, whatever its format, mode or bit depth.

DICOM files (``*.dcm`` or a ``DICM`` preamble) go through :mod:`ftbench.data.dicom`; everything else
through Pillow (JPEG, PNG, TIFF, ...). Both are checked from their header before any pixel is decoded: an
image larger than ``max_pixels`` is refused (a 20000 x 20000 PNG or DICOM would need gigabytes), and so is a
file of several frames or pages (a multi-page TIFF like a multi-frame DICOM: which page is the radiograph is
not ours to guess). Float images with NaN or infinite pixels are refused too: scaled by their range they
would turn black (and two of them would look like "the same pixels").
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


class SeveralFrames(ValueError):
    """The file holds several frames or pages, not one radiograph."""


class NotFinite(ValueError):
    """Some pixels are NaN or infinite."""


# The kind of reject (rejects.csv) each refusal gives; any other decoding error is an "unreadable image".
REJECT_KINDS: dict[type[Exception], str] = {
    TooLarge: "oversized image",
    SeveralFrames: "several frames",
    NotFinite: "non-finite pixels",
}


# Errors that mean "this file is not a usable image"; anything else is a bug and propagates.
DECODE_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError, *dicom.READ_ERRORS)


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Scale any numeric array to uint8 by its own range (16-bit and float images)."""
    if pixels.dtype == np.uint8:
        return pixels
    pixels = pixels.astype(np.float64)
    bad = int(np.count_nonzero(~np.isfinite(pixels)))
    if bad:
        raise NotFinite(f"{bad:,} of {pixels.size:,} pixels are NaN or infinite: the image has no grey levels to scale")
    lo, hi = float(pixels.min()), float(pixels.max())
    if hi <= lo:
        return np.zeros(pixels.shape, dtype=np.uint8)
    return np.round((pixels - lo) / (hi - lo) * 255.0).astype(np.uint8)


def check_header(width: int, height: int, frames: int, max_pixels: int | None) -> None:
    """Refuse, from the header, a file of several frames or pages, or one larger than ``max_pixels``."""
    if frames > 1:
        raise SeveralFrames(f"{frames} frames or pages in one file, not a single radiograph")
    if max_pixels is not None and width * height > max_pixels:
        raise TooLarge(f"{width} x {height} = {width * height:,} pixels, more than the limit of {max_pixels:,}")


def _raster(path: str | Path, max_pixels: int | None = MAX_PIXELS) -> np.ndarray:
    """Grayscale uint8 (H, W) from a JPEG/PNG/... file in mode L, RGB, RGBA, P, LA, I;16 or I.

    Alpha is dropped (composited on black), palette images are expanded, 16-bit and 32-bit images are
    rescaled by their own range. Raises one of ``DECODE_ERRORS`` for missing, truncated or unknown files,
    :class:`TooLarge` (from the header) above ``max_pixels``, :class:`SeveralFrames` for a multi-page file.
    """
    Image.MAX_IMAGE_PIXELS = None  # the limit is ours (max_pixels), checked below from the header
    with Image.open(path) as img:
        # A multi-picture JPEG (MPO, from some cameras) carries previews of its first picture, not other images.
        check_header(*img.size, 1 if img.format == "MPO" else getattr(img, "n_frames", 1), max_pixels)
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
    return to_uint8(dicom.pixels(path, lambda width, height, frames: check_header(width, height, frames, max_pixels)))


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


# Near-duplicates: the same radiograph saved again (JPEG, another size) under another name. Ours, measured on
# the Cohen sample (bench/near_duplicates.py): at 64 x 64, such copies differ by at most 1.9 grey levels on
# average (JPEG q98: 0.12; resized to 63 px: 1.9), distinct radiographs by at least 6.4, and the synthetic
# dataset's images of different patients by at least 4.3.
NEAR_SIDE = 64
NEAR_LEVELS = 3.0
NEAR = f"mean absolute difference at most {NEAR_LEVELS:g} grey levels at {NEAR_SIDE} x {NEAR_SIDE}"
COARSE = 4  # candidates are found on 4 x 4 block means (see candidates)


def thumbnail(pixels: np.ndarray) -> np.ndarray:
    """The image at ``NEAR_SIDE`` x ``NEAR_SIDE`` (uint8), as near-duplicates are compared."""
    return resize(pixels, NEAR_SIDE)


def candidates(thumbs: np.ndarray, levels: float = NEAR_LEVELS) -> list[np.ndarray]:
    """For each thumbnail, the later ones whose ``COARSE`` x ``COARSE`` block means differ by at most ``levels``
    on average: a superset of its near-duplicates, found with a k-d tree rather than by comparing all pairs.

    Exact, not a heuristic: a block mean's difference is the mean of its pixels' differences, so the mean
    absolute difference of the block means never exceeds that of the pixels.
    """
    n, step = len(thumbs), NEAR_SIDE // COARSE
    coarse = thumbs.reshape(n, COARSE, step, COARSE, step).mean(axis=(2, 4)).reshape(n, COARSE * COARSE)
    if n < 2:
        return [np.zeros(0, dtype=np.int64)] * n
    from sklearn.neighbors import KDTree  # here, not at import: the Snakefile imports the data stage to plan

    found = KDTree(coarse, metric="manhattan").query_radius(coarse, r=levels * COARSE * COARSE + 1e-9)
    return [np.sort(js[js > i]) for i, js in enumerate(found)]


def near_pairs(thumbs: np.ndarray, levels: float = NEAR_LEVELS) -> list[tuple[int, int, float]]:
    """Pairs (i, j, mean absolute difference) of thumbnails within ``levels`` grey levels of each other; only
    the :func:`candidates` are compared pixel by pixel."""
    flat = thumbs.reshape(len(thumbs), NEAR_SIDE * NEAR_SIDE).astype(np.int16)
    pairs = []
    for i, rest in enumerate(candidates(thumbs, levels)):
        if len(rest):
            diff = np.abs(flat[rest] - flat[i]).mean(axis=1)
            pairs += [(i, int(j), float(d)) for j, d in zip(rest, diff, strict=True) if d <= levels]
    return pairs
