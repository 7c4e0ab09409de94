"""The preprocessed image store: one (N, side, side) uint8 array per dataset and size, memory-mapped."""

from __future__ import annotations

import errno
import io
import shutil
from pathlib import Path

import numpy as np
import polars as pl

from ftbench.data.images import DECODE_ERRORS, decode, resize

# Optional columns of a dataset table: a box (top, left, bottom, right; pixels, bottom and right exclusive) each
# image is cropped to before it is resized; an adapter sets them (AIforCOVID's lung boxes, ftbench.data.aiforcovid).
CROP = ("crop_top", "crop_left", "crop_bottom", "crop_right")


def _header(shape: tuple[int, int, int]) -> bytes:
    """The .npy header of a C-ordered uint8 array of ``shape`` (what np.save writes before the data)."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "|u1", "fortran_order": False, "shape": shape})
    return buffer.getvalue()


def _check_space(folder: Path, needed: int, out: Path) -> None:
    available = shutil.disk_usage(folder).free
    if available < needed:
        raise OSError(
            f"{out}: not enough free disk space for the image store: it needs {_size(needed)}, "
            f"{folder} has {_size(available)} available; free some space or move results/"
        )


def _size(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB ({n:,} bytes)"


def crop_square(pixels: np.ndarray, box: tuple) -> np.ndarray:
    """``pixels`` inside ``box`` (top, left, bottom, right; bottom and right exclusive) widened to a square about
    its centre along its shorter side, as far as the image allows (the first study's lung-box crop)."""
    top, left, bottom, right = (int(v) for v in box)
    height, width = pixels.shape
    if bottom > height or right > width:
        raise ValueError(f"crop box {list(box)} reaches outside the {height} x {width} image")
    side = max(bottom - top, right - left)

    def widen(start: int, stop: int, size: int) -> tuple[int, int]:
        if stop - start == side:
            return start, stop
        centre = start + (stop - start) // 2
        return max(0, centre - side // 2), min(size, centre + side // 2)

    (top, bottom), (left, right) = widen(top, bottom, height), widen(left, right, width)
    return pixels[top:bottom, left:right]


def build(table: pl.DataFrame, side: int, out: str | Path) -> Path:
    """Decode, convert to grayscale and resize every image of ``table`` (row order) into a .npy file; an image
    with a crop box (the ``CROP`` columns, e.g. AIforCOVID's lungs) is cropped to it first (:func:`crop_square`).

    The free space is checked first (the size is known), the array is written sequentially under a temporary
    name (a full disk is then an ordinary error, not a crash inside a memory map) and renamed when complete;
    on any failure the temporary file is removed.
    """
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp.npy")
    header = _header((table.height, side, side))
    needed = len(header) + table.height * side * side
    _check_space(out.parent, needed, out)
    try:
        with open(tmp, "wb") as fh:
            fh.write(header)
            boxes = table.select(CROP).rows() if set(CROP) <= set(table.columns) else [None] * table.height
            for file, box in zip(table["file"], boxes):
                pixels = _decode(file)
                try:
                    pixels = pixels if box is None else crop_square(pixels, box)
                except ValueError as err:
                    raise ValueError(f"{file}: {err} (its crop box, from the dataset's box file)") from None
                fh.write(resize(pixels, side).tobytes())
        tmp.replace(out)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise OSError(
                err.errno,
                f"{out}: the disk filled up while writing the image store ({err.strerror}); "
                f"it needs {_size(needed)}; the partial file was removed",
            ) from err
        raise
    return out


def _decode(file: str) -> np.ndarray:
    """The image, or an error naming the file: it decoded when the table was built, so it changed since."""
    try:
        return decode(file, max_pixels=None)  # the table's images passed the limit
    except DECODE_ERRORS as err:
        raise ValueError(
            f"{file}: cannot be decoded for the image store ({type(err).__name__}: {err}), though it was when the "
            "dataset table was built: the file changed since; rebuild the dataset table (rerun its rule)"
        ) from err


def load(path: str | Path) -> np.ndarray:
    """The store as a read-only memory map: training reads rows without decoding anything."""
    return np.load(path, mmap_mode="r")
