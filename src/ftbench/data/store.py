"""The preprocessed image store: one (N, side, side) uint8 array per dataset and size, memory-mapped."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from ftbench.data.images import decode, resize


def build(table: pl.DataFrame, side: int, out: str | Path) -> Path:
    """Decode, convert to grayscale and resize every image of ``table`` (row order) into a .npy file."""
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp.npy")
    array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(table.height, side, side))
    for i, file in enumerate(table["file"]):
        array[i] = resize(decode(file), side)
    array.flush()
    del array
    tmp.replace(out)
    return out


def load(path: str | Path) -> np.ndarray:
    """The store as a read-only memory map: training reads rows without decoding anything."""
    return np.load(path, mmap_mode="r")
