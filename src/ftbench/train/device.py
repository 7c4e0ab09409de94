"""The device a cell runs on: which one, its precision, its seeds, and what it records about itself."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import resource
import sys

import numpy as np
import torch

# The libraries whose versions a cell records (read from their metadata: importing peft alone takes seconds).
RECORDED = ("torch", "timm", "peft", "numpy", "polars", "scikit-learn", "transformers")


def pick_device(name: str) -> torch.device:
    """``auto``: CUDA when there is one, else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def seed_everything(seed: int) -> torch.Generator:
    """Seed every generator and ask for deterministic algorithms (on CUDA too: cuBLAS needs its workspace
    setting for that; an operation without a deterministic version warns instead of failing)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    return torch.Generator().manual_seed(seed)


def autocast(device: torch.device):
    """bf16 mixed precision on CUDA (matrix work in bf16, losses and weights in fp32); nothing on CPU, where
    cells stay bit-reproducible."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def library_versions() -> dict[str, str]:
    """Python's and the recorded libraries' versions (those not installed are left out)."""
    versions = {"python": platform.python_version()}
    for name in RECORDED:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process on ``device``: allocated CUDA memory, or the CPU's resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def device_name(device: torch.device) -> str:
    """What the cost projection groups cells by: the GPU's model, or the processor."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
