"""Writing files so that a killed job never leaves one that looks complete: a temporary name, then a rename."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def write_atomic(path: Path, write: Callable[[Path], object]) -> None:
    """``write(tmp)`` a temporary sibling of ``path``, then rename it to ``path`` (atomic on one file system)."""
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)
