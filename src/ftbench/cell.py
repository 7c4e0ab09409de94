"""One cell: read its fold's partitions, train (or fit, a probe) its model, evaluate it on the test part, and
write its files (``grid.CELL_FILES``): predictions, metrics and the run record."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import polars as pl
import torch

from ftbench import inputs, metrics, probes, strategies
from ftbench.assembly import build_model, frozen_backbone, model_entry
from ftbench.data import store as image_store
from ftbench.device import device_name, library_versions, peak_memory_mb, pick_device, seed_everything
from ftbench.files import write_atomic
from ftbench.loop import Checkpoint, Diverged, Part, fit, predict

log = logging.getLogger("ftbench.train")


def partitions(task_table: pl.DataFrame, split: pl.DataFrame, fold: int, fewshot: pl.DataFrame | None,
               source: np.ndarray) -> dict[str, Part]:
    """train / val / test rows of ``fold`` from ``source`` (image store or embedding cache);
    a few-shot draw replaces the train patients."""
    mine = split.filter(pl.col("fold") == fold)
    ids = {part: mine.filter(pl.col("part") == part)["patient_id"] for part in ("train", "val", "test")}
    if fewshot is not None:
        ids["train"] = fewshot.filter(pl.col("fold") == fold)["patient_id"]
    out = {}
    for part, patients in ids.items():
        frame = task_table.filter(pl.col("patient_id").is_in(patients.implode())).sort("row")
        rows = frame["row"].to_numpy().astype(np.int64)
        out[part] = Part(inputs.load_rows(source, rows), torch.from_numpy(frame["label"].to_numpy().astype(np.int64)), frame)
    for part in ("train", "val", "test"):
        if out[part].y.numel() == 0:
            raise ValueError(f"fold {fold}: the {part} part has no images")
    return out


def train_model(settings: dict, parts: dict[str, Part], generator: torch.Generator, device: torch.device,
                cached: bool, weights_path: str | None, out_dir: str) -> dict:
    """Train a cell's model with its strategy: validation and test probabilities (none if it diverged, with
    the error), history, trainable and total parameters, forward GFLOPs."""
    training = settings["training"]
    model, plan, prep, frozen_params, gflops = build_model(settings, cached, device, weights_path)
    trainable, total = strategies.count_parameters(model, plan)
    log.info("%d of %d parameters train", trainable, total + frozen_params)
    outcome = {"trainable": trainable, "total": total + frozen_params, "gflops": gflops, "history": {}}
    try:
        checkpoint = Checkpoint(Path(out_dir) / "state.pt", float(os.environ.get("FTBENCH_CHECKPOINT_SECONDS", 600)))
        outcome["history"] = fit(model, plan, parts, prep, training, generator, checkpoint)
    except Diverged as err:
        log.error("cell failed: %s", err)
        return outcome | {"error": str(err)}
    return outcome | {part: predict(model, parts[part], prep, training["batch_size"]) for part in ("val", "test")}


def fit_probe(settings: dict, parts: dict[str, Part]) -> dict:
    """Fit a cell's probe (``ftbench.probes``) on cached features: the same record as :func:`train_model`,
    the history holding each candidate's validation loss and the choice."""
    _, backbone_params, gflops = frozen_backbone(model_entry(settings["model"]))
    xy = {part: (parts[part].x.numpy(), parts[part].y.numpy()) for part in ("train", "val")}
    probe, history = probes.fit(settings["strategy"], xy["train"], xy["val"], settings["training"]["seed"] + settings["fold"])
    learned = probes.parameters(probe)
    log.info("probe %s chosen on validation; %d parameters learned", history["chosen"], learned)
    return {"trainable": learned, "total": learned + backbone_params, "gflops": gflops, "history": history,
            **{part: probe.predict_proba(parts[part].x.numpy())[:, 1] for part in ("val", "test")}}


def run_cell(settings: dict, task_table: str, split: str, store: str | None, out_dir: str,
             fewshot: str | None = None, threads: int = 1, embeddings: str | None = None,
             weights_path: str | None = None) -> dict:
    """Train (or, a probe, fit) and evaluate one cell; write its files into ``out_dir``.

    ``embeddings`` (a frozen-backbone strategy's cache, see ``ftbench.embeddings``) replaces ``store``.
    """
    started = time.perf_counter()
    torch.set_num_threads(threads)
    training, model_spec, strategy = settings["training"], settings["model"], settings["strategy"]
    generator = seed_everything(training["seed"] + settings["fold"])
    device = pick_device(settings.get("device", "auto"))
    table = pl.read_parquet(task_table)
    source = np.load(embeddings, mmap_mode="r") if embeddings else image_store.load(store)
    draw = None
    if fewshot:
        draw = pl.read_parquet(fewshot).filter(pl.col("repetition") == settings["regime"]["repetition"])
    parts = partitions(table, pl.read_parquet(split), settings["fold"], draw, source)
    log.info("cell %s: %s / %s / %s / fold %d | train %d, val %d, test %d images",
             settings["task"], model_spec["name"], strategy["name"], settings["regime"]["name"], settings["fold"],
             len(parts["train"].y), len(parts["val"].y), len(parts["test"].y))
    if strategy["kind"] in probes.PROBES:
        if embeddings is None:
            raise ValueError(f"strategy '{strategy['name']}' ({strategy['kind']}) is fitted on the embedding cache: "
                             "give the cell --embeddings")
        outcome = fit_probe(settings, parts)
    else:
        outcome = train_model(settings, parts, generator, device, embeddings is not None, weights_path, out_dir)
    run = write_cell(Path(out_dir), settings, parts, outcome, device, threads, embeddings, started)
    log.info("cell done in %.1fs: %s", run["wall_seconds"], run["summary"])
    return run


def write_cell(out: Path, settings: dict, parts: dict[str, Part], outcome: dict, device: torch.device,
               threads: int, embeddings: str | None, started: float) -> dict:
    """Score the test predictions at the validation-chosen threshold and write the cell's three files."""
    history = outcome["history"]
    status, error = ("failed", outcome["error"]) if "error" in outcome else ("ok", None)
    if status == "ok":
        probs = outcome["test"]
        result = metrics.compute(parts["test"].y.numpy(), probs,
                                 metrics.best_threshold(parts["val"].y.numpy(), outcome["val"]))
    else:
        probs, result = np.full(len(parts["test"].y), np.nan), {}
    out.mkdir(parents=True, exist_ok=True)
    epochs = history.get("epochs", [])
    predictions = parts["test"].frame.select("image_id", "patient_id", "label", "centre").with_columns(
        pl.Series("prob", probs, dtype=pl.Float64))
    write_atomic(out / "predictions.parquet", predictions.write_parquet)
    cell = {k: settings[k] for k in ("task", "fold")} | {"model": settings["model"]["name"],
                                                           "strategy": settings["strategy"]["name"],
                                                           "regime": settings["regime"]["name"]}
    write_atomic(out / "metrics.json", lambda p: p.write_text(json.dumps(
        cell | {"status": status, "error": error} | result, indent=1, allow_nan=True)))
    run = cell | {
        "status": status, "trainable_params": outcome["trainable"], "total_params": outcome["total"],
        "trainable_fraction": outcome["trainable"] / outcome["total"], "gflops": outcome["gflops"],
        "wall_seconds": time.perf_counter() - started,
        "peak_memory_mb": peak_memory_mb(device), "device": str(device),
        "n_train": len(parts["train"].y), "n_val": len(parts["val"].y), "epochs": len(epochs),
        # where the time went (see ftbench.cost): optimisation steps, and per-epoch checks (BatchNorm
        # recalibration, validation); the rest is start-up and the test predictions
        "train_seconds": sum(e["train_seconds"] for e in epochs),
        "check_seconds": sum(e["seconds"] - e["train_seconds"] for e in epochs),
        "device_name": device_name(device), "threads": threads, "seed": settings["training"]["seed"] + settings["fold"],
        "versions": library_versions(), "embedding_cache": embeddings, "settings": settings, "history": history,
    }
    write_atomic(out / "run.json", lambda p: p.write_text(json.dumps(run, indent=1, default=str)))
    return run | {"summary": ", ".join(f"{k} {result[k]:.3f}" for k in ("mcc", "pr_auc", "roc_auc") if k in result)
                  or status}
