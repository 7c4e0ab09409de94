"""The input pipeline: uint8 image rows -> normalised, augmented model input, on the training device.

Images stay uint8 until they are on the device (4x less to move than float32), and augmentation runs
there as batched tensor ops: no per-epoch decoding and no per-image Python work.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ftbench.models.zoo import ZooEntry


def load_rows(array: np.ndarray, rows: np.ndarray) -> torch.Tensor:
    """Rows of a memory-mapped array (image store or embedding cache), read in ascending row order."""
    order = np.argsort(rows, kind="stable")
    block = np.empty((len(rows),) + array.shape[1:], dtype=array.dtype)
    block[order] = array[rows[order]]
    return torch.from_numpy(block)


class Preprocess:
    """Scale to [0, 1], optionally augment, resize to the model's side, replicate to 3 channels, normalise."""

    def __init__(self, entry: ZooEntry, device: torch.device, augment: bool, generator: torch.Generator | None = None):
        self.side = entry.img_size
        self.mean = torch.tensor(entry.mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(entry.std, device=device).view(1, 3, 1, 1)
        self.augment = augment
        self.generator = generator
        self.device = device

    def _rand(self, n: int, lo: float, hi: float) -> torch.Tensor:
        r = torch.rand(n, generator=self.generator, device="cpu")  # CPU generator: same draws on any device
        return (lo + (hi - lo) * r).to(self.device)

    def _augment(self, x: torch.Tensor) -> torch.Tensor:
        """Small random scale/shift/rotation and brightness/contrast jitter (no flips: anatomy is sided)."""
        n = x.shape[0]
        angle = self._rand(n, -0.1, 0.1)
        scale = self._rand(n, 0.9, 1.1)
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        theta = torch.stack(
            [
                torch.stack([cos, -sin, self._rand(n, -0.06, 0.06)], 1),
                torch.stack([sin, cos, self._rand(n, -0.06, 0.06)], 1),
            ],
            1,
        )
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        contrast = self._rand(n, 0.85, 1.15).view(n, 1, 1, 1)
        brightness = self._rand(n, -0.08, 0.08).view(n, 1, 1, 1)
        return ((x - 0.5) * contrast + 0.5 + brightness).clamp(0, 1)

    def __call__(self, batch: torch.Tensor, train: bool) -> torch.Tensor:
        """(B, S, S) uint8 rows of the store -> (B, 3, side, side) normalised float input."""
        x = batch.to(self.device, non_blocking=True).unsqueeze(1).float().div_(255.0)
        if train and self.augment:
            x = self._augment(x)
        if x.shape[-1] != self.side:
            x = F.interpolate(x, size=(self.side, self.side), mode="bilinear", antialias=True, align_corners=False)
        x = (x.expand(-1, 3, -1, -1) - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last) if self.device.type == "cuda" else x


class Features:
    """Input of a probe trained from the embedding cache: features go to the device unchanged."""

    generator = None  # no augmentation, nothing random

    def __init__(self, device: torch.device):
        self.device = device

    def __call__(self, batch: torch.Tensor, train: bool) -> torch.Tensor:
        return batch.to(self.device, non_blocking=True).float()
