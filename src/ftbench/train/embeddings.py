"""The embedding cache: a frozen backbone's features of every image of a dataset, computed once.

Frozen-backbone strategies (linear probing) then train every fold, few-shot draw and repetition from
this (N, D) float32 array instead of running the backbone again: the probe's grid costs one forward
pass per image instead of one per image, epoch and cell.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from ftbench.data import store as image_store
from ftbench.models import backbones, inputs, weights
from ftbench.models.zoo import resolve


@torch.inference_mode()
def compute(model: backbones.Classifier, pixels: np.ndarray, prep: inputs.Preprocess, batch_size: int) -> np.ndarray:
    """Features of every row of the image store, in row order, with the backbone in eval mode."""
    model.eval()
    out = []
    for start in range(0, len(pixels), batch_size):
        batch = inputs.load_rows(pixels, np.arange(start, min(start + batch_size, len(pixels))))
        out.append(model.features(prep(batch, train=False)).float().cpu())
    return torch.cat(out).numpy()


def build(
    model_spec: dict,
    store: str,
    out: str,
    batch_size: int = 64,
    threads: int = 1,
    device: str = "auto",
    weights_path: str | None = None,
) -> dict:
    """Write the cache of ``store`` for the model ``model_spec`` (a cell's ``model`` settings)."""
    from ftbench.train.device import pick_device

    torch.set_num_threads(threads)
    started = time.perf_counter()
    dev = pick_device(device)
    entry = resolve(model_spec["arch"], model_spec.get("img_size"), model_spec.get("pretrained", False))
    model = weights.build(model_spec["name"], entry, weights_path).to(dev)
    features = compute(model, image_store.load(store), inputs.Preprocess(entry, dev, augment=False), batch_size)
    out_path = Path(out)
    tmp = out_path.with_name(out_path.name + ".tmp.npy")
    np.save(tmp, features)
    tmp.replace(out_path)
    info = {
        "model": model_spec["name"],
        "images": int(features.shape[0]),
        "dim": int(features.shape[1]),
        "total_params": sum(p.numel() for p in model.backbone.parameters()),
        "seconds": time.perf_counter() - started,
        "device": str(dev),
    }
    out_path.with_suffix(".json").write_text(json.dumps(info, indent=1))
    return info
