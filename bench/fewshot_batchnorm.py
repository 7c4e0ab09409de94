"""BatchNorm on few images: re-estimate the statistics on a K-shot cell's 2K training images, or keep the
pretrained ones? Both side by side on the same cells (``training.batchnorm_min_images``: 0 always re-estimates,
a large value always keeps them).

A tiny ResNet is "pretrained" (full fine-tuning, 20 epochs) on one synthetic CXR-like dataset; K-shot cells then
fine-tune it on another (other patients, other seed, the same kind of signal, weaker), FFT and BitFit (whose trained
biases include the BatchNorms'), K in {1, 2, 4, 8}, 5 folds x 3 repetitions, validation on K patients per class.

    .venv/bin/python bench/fewshot_batchnorm.py          # ~10 min on 2 cores; writes bench/results/fewshot_batchnorm.json
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
import torch  # noqa: E402
from record import record  # noqa: E402

from ftbench import splits  # noqa: E402
from ftbench.data import store, tasks  # noqa: E402
from ftbench.data.adapters import build_table  # noqa: E402
from ftbench.models.assembly import build_model  # noqa: E402
from ftbench.train.cell import partitions, run_cell  # noqa: E402
from ftbench.train.device import seed_everything  # noqa: E402
from ftbench.train.loop import fit  # noqa: E402

SIDE, KS, REPETITIONS, FOLDS = 48, (1, 2, 4, 8), 3, 5
TARGET_SIGNAL = 0.3  # weaker than the pretraining set's 1.0: the pretrained features help, they do not solve it
POLICIES = {"re-estimate (0)": 0, "keep pretrained (10000)": 10_000}


def dataset(root: Path, seed: int, patients: int, signal: float) -> dict:
    spec = {
        "adapter": "synthetic",
        "synthetic": {
            "patients": patients,
            "images_per_patient": [1, 2],
            "signal": signal,
            "side": SIDE,
            "seed": seed,
            "positive_rate": 0.5,
        },
    }
    table, _ = build_table(f"syn{seed}", spec, root)
    task, _ = tasks.build(table, {"dataset": "syn", "label": "outcome", "positive": ["poor"]}, "syn")
    paths = {
        "store": str(store.build(table, SIDE, root / "images.npy")),
        "task": str(root / "task.parquet"),
        "split": str(root / "folds.parquet"),
    }
    task.write_parquet(paths["task"])
    split = splits.kfold(task, FOLDS, 0.2, 0, "syn")
    split.write_parquet(paths["split"])
    for k in KS:
        splits.fewshot_draws(task, split, k, REPETITIONS, 0).write_parquet(root / f"k{k}.parquet")
    return paths


def settings(kind: str, lr: float, fold: int, regime: dict, bn_min: int, epochs: int = 15) -> dict:
    return {
        "version": 0,
        "task": "syn",
        "fold": fold,
        "regime": regime,
        "model": {"name": "test_resnet", "arch": "test_resnet", "img_size": SIDE},
        "strategy": {"name": kind, "kind": kind, "head_lr": 1e-2},
        "training": {
            "batch_size": 32,
            "max_epochs": epochs,
            "patience": 5,
            "lr": lr,
            "weight_decay": 0.01,
            "augment": True,
            "seed": 0,
            "batchnorm_min_images": bn_min,
        },
    }


def pretrain(data: dict, out: Path) -> str:
    """FFT on every patient of the pretraining set's fold 0 (train part), saved as a weight file."""
    from safetensors.torch import save_file

    cfg = settings("fft", 3e-3, 0, {"name": "full"}, 0, epochs=20)
    parts = partitions(
        pl.read_parquet(data["task"]), pl.read_parquet(data["split"]), 0, None, store.load(data["store"])
    )
    generator = seed_everything(0)
    model, plan, prep, _, _ = build_model(cfg, False, torch.device("cpu"))
    fit(model, plan, parts, prep, cfg["training"], generator)
    save_file({k: v.contiguous() for k, v in model.backbone.state_dict().items()}, out)
    return str(out)


def main() -> None:
    torch.set_num_threads(1)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "pre").mkdir(), (root / "target").mkdir()
        weights = pretrain(dataset(root / "pre", 11, 200, 1.0), root / "pretrained.safetensors")
        data = dataset(root / "target", 3, 160, TARGET_SIGNAL)
        rows = []
        for kind, lr in (("fft", 1e-3), ("bitfit", 1e-2)):
            for k in KS:
                for rep in range(REPETITIONS):
                    for fold in range(FOLDS):
                        regime = {"name": f"k{k}r{rep}", "k": k, "repetition": rep, "validation": "kshot"}
                        for policy, bn_min in POLICIES.items():
                            out = root / "cells" / kind / policy / regime["name"] / f"fold{fold}"
                            run_cell(
                                settings(kind, lr, fold, regime, bn_min),
                                data["task"],
                                data["split"],
                                data["store"],
                                str(out),
                                fewshot=str(root / "target" / f"k{k}.parquet"),
                                weights_path=weights,
                            )
                            metrics = json.loads((out / "metrics.json").read_text())
                            rows.append(
                                {
                                    "strategy": kind,
                                    "k": k,
                                    "policy": policy,
                                    "mcc": metrics.get("mcc"),
                                    "roc_auc": metrics.get("roc_auc"),
                                }
                            )
    table = (
        pl.DataFrame(rows)
        .group_by("strategy", "k", "policy")
        .agg(
            pl.col("mcc").mean().alias("mcc_mean"),
            pl.col("roc_auc").mean().alias("roc_auc_mean"),
            pl.len().alias("cells"),
        )
        .sort("strategy", "k", "policy")
    )
    with pl.Config(tbl_rows=-1, float_precision=3):
        print(table)
    record("fewshot_batchnorm", {"seconds": round(time.perf_counter() - started), "rows": table.to_dicts()})


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
