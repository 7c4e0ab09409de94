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

from ftbench.data import store as image_store
from ftbench.files import write_atomic
from ftbench.models import strategies, strategy_kinds
from ftbench.models.assembly import build_model, frozen_backbone, model_entry
from ftbench.train import metrics, probes, transfer
from ftbench.train.device import device_name, library_versions, peak_memory_mb, pick_device, seed_everything
from ftbench.train.loop import Checkpoint, Diverged, Part, fit, predict, validation_loss

log = logging.getLogger("ftbench.train")


def partitions(
    task_table: pl.DataFrame,
    split: pl.DataFrame,
    fold: int,
    fewshot: pl.DataFrame | None,
    source: np.ndarray,
    validation: str = "full",
) -> dict[str, Part]:
    """train / val / test rows of ``fold`` from ``source`` (image store or embedding cache).

    A few-shot draw replaces the train patients; ``validation`` says what the cell validates on: the fold's
    validation part (``full``), the draw's K patients per class of it (``kshot``), or nothing (``none``: no
    ``val`` part).
    """
    mine = split.filter(pl.col("fold") == fold)
    ids = {part: mine.filter(pl.col("part") == part)["patient_id"] for part in ("train", "val", "test")}
    if fewshot is not None:
        draw = fewshot.filter(pl.col("fold") == fold)
        ids["train"] = draw.filter(pl.col("part") == "train")["patient_id"]
        if validation == "kshot":
            ids["val"] = draw.filter(pl.col("part") == "val")["patient_id"]
    if validation == "none":
        del ids["val"]
    out = {}
    for part, patients in ids.items():
        out[part] = Part.of(task_table.filter(pl.col("patient_id").is_in(patients.implode())), source)
        if out[part].y.numel() == 0:
            raise ValueError(f"fold {fold}: the {part} part has no images")
    return out


def candidates(settings: dict) -> list[dict]:
    """The cell's settings once per candidate (``grid.strategy_candidates``): one, unless settings list values."""
    return [settings | c for c in settings.get("candidates", [])] or [settings]


def train_candidate(
    settings: dict,
    parts: dict[str, Part],
    device: torch.device,
    cached: bool,
    weights_path: str | None,
    state: Path,
    cached_parts: dict[str, Part] | None = None,
    keep: Path | None = None,
) -> dict:
    """Train one candidate's model: validation (if any) and test probabilities, its validation loss (the best
    epoch's), history, trainable and total parameters, forward GFLOPs; an ``error`` instead if it diverged.

    ``cached``: the backbone is applied already (``parts`` are embedding-cache features, the model is the head);
    ``cached_parts``: the same parts from the cache, for the epochs whose backbone is frozen (LP-FT's first);
    ``keep``: where to save the trained model (``ftbench.train.transfer``).
    """
    training = settings["training"]
    generator = seed_everything(training["seed"] + settings["fold"])
    model, plan, prep, frozen_params, gflops = build_model(settings, cached, device, weights_path)
    trainable, total = strategies.count_parameters(model, plan)
    log.info("%d of %d parameters train", trainable, total + frozen_params)
    outcome = {"trainable": trainable, "total": total + frozen_params, "gflops": gflops, "history": {}}
    try:
        checkpoint = Checkpoint(state, float(os.environ.get("FTBENCH_CHECKPOINT_SECONDS", 600)))
        history = fit(model, plan, parts, prep, training, generator, checkpoint, cached_parts)
    except Diverged as err:
        log.error("cell failed: %s", err)
        return outcome | {"error": str(err)}
    val = history.pop("val_probs")  # the best epoch's, computed when it was checked: not predicted again
    if keep is not None:
        transfer.keep_trained(model, plan, keep)
    return (
        outcome
        | {
            "history": history,
            "val_loss": history["best_val_loss"],
            "test": predict(model, parts["test"], prep, training["batch_size"]),
        }
        | ({"val": val} if val is not None else {})
    )


def fit_candidate(settings: dict, parts: dict[str, Part], keep: Path | None = None) -> dict:
    """Fit one candidate probe (``ftbench.train.probes``) on cached features: the same record as
    :func:`train_candidate`, its validation loss the one early stopping follows (``loop.validation_loss``);
    ``keep``: where to save the fitted probe."""
    _, backbone_params, gflops = frozen_backbone(model_entry(settings["model"]))
    (x, y), seed = (parts["train"].x.numpy(), parts["train"].y.numpy()), settings["training"]["seed"] + settings["fold"]
    probe = probes.PROBES[settings["strategy"]["kind"]](settings["strategy"], len(y), seed).fit(x, y)
    if keep is not None:
        transfer.keep_probe(probe, keep)
    probs = {part: probe.predict_proba(parts[part].x.numpy())[:, 1] for part in ("val", "test") if part in parts}
    learned = probes.parameters(probe)
    val_loss = validation_loss(probs["val"], parts["val"], parts["train"]) if "val" in probs else None
    return {
        "trainable": learned,
        "total": learned + backbone_params,
        "gflops": gflops,
        "history": {},
        "val_loss": val_loss,
    } | probs


def run_candidates(
    settings: dict,
    parts: dict[str, Part],
    device: torch.device,
    embeddings: str | None,
    weights_path: str | None,
    out_dir: Path,
    cached_parts: dict[str, Part] | None = None,
) -> tuple[dict, list[dict]]:
    """Train (or fit) every candidate of the cell and keep the one with the lowest validation loss; the chosen
    outcome and a record of every candidate (its settings, validation loss, status).

    With several candidates, each one's outcome is saved in ``out_dir`` as it finishes, so a resumed cell
    trains only the ones left; each candidate starts from the same seeds, whatever ran before it. With
    ``keep_model`` in the settings, each candidate's model is saved beside it, and the chosen one's kept.
    """
    settings_list, outcomes = candidates(settings), []
    probe = settings["strategy"]["kind"] in probes.PROBES  # candidates vary settings, never the kind
    several = len(settings_list) > 1
    for i, candidate in enumerate(settings_list):
        done = out_dir / f"candidate{i}.json"
        keep = transfer.kept_file(out_dir, probe, i if several else None) if settings.get("keep_model") else None
        if several and done.is_file():
            outcomes.append(
                {k: np.asarray(v) if k in ("val", "test") else v for k, v in json.loads(done.read_text()).items()}
            )
            continue
        if candidate["strategy"]["kind"] in probes.PROBES:
            if embeddings is None:
                raise ValueError(
                    f"strategy '{candidate['strategy']['name']}' ({candidate['strategy']['kind']}) is "
                    "fitted on the embedding cache: give the cell --embeddings"
                )
            outcome = fit_candidate(candidate, parts, keep)
        else:
            state = out_dir / (f"state{i}.pt" if several else "state.pt")
            outcome = train_candidate(
                candidate,
                parts,
                device,
                embeddings is not None and cached_parts is None,
                weights_path,
                state,
                cached_parts,
                keep,
            )
        if several:
            out_dir.mkdir(parents=True, exist_ok=True)
            write_atomic(
                done,
                lambda p: p.write_text(
                    json.dumps(
                        {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in outcome.items()}, default=str
                    )
                ),
            )
        outcomes.append(outcome)
    ok = [i for i, o in enumerate(outcomes) if "error" not in o]
    chosen = min(ok, key=lambda i: outcomes[i]["val_loss"]) if ok else 0
    if settings.get("keep_model") and several:
        transfer.choose_kept(out_dir, probe, chosen if ok else -1, len(settings_list))
    record = [
        {
            "strategy": c["strategy"],
            "training": c["training"],
            "val_loss": o.get("val_loss"),
            "status": "failed" if "error" in o else "ok",
            "chosen": i == chosen,
        }
        for i, (c, o) in enumerate(zip(settings_list, outcomes))
    ]
    if several:
        log.info(
            "candidate %d of %d chosen on validation loss: %s",
            chosen + 1,
            len(settings_list),
            [r["val_loss"] for r in record],
        )
    return outcomes[chosen], record if several else []


def run_cell(
    settings: dict,
    task_table: str,
    split: str,
    store: str | None,
    out_dir: str,
    fewshot: str | None = None,
    threads: int = 1,
    embeddings: str | None = None,
    weights_path: str | None = None,
) -> dict:
    """Train (or, a probe, fit) and evaluate one cell; write its files into ``out_dir``.

    ``embeddings`` (the backbone's embedding cache, see ``ftbench.train.embeddings``) replaces ``store`` for a frozen
    backbone's strategy; given with ``store``, it serves the epochs in which a strategy keeps the backbone frozen.
    """
    started = time.perf_counter()
    torch.set_num_threads(threads)
    model_spec, strategy = settings["model"], settings["strategy"]
    device = pick_device(settings.get("device", "auto"))
    table, split_table = pl.read_parquet(task_table), pl.read_parquet(split)
    draw = None
    if fewshot:
        draw = pl.read_parquet(fewshot).filter(pl.col("repetition") == settings["regime"]["repetition"])
    validation = settings["regime"].get("validation", "full")
    cache = np.load(embeddings, mmap_mode="r") if embeddings else None
    # a frozen backbone's strategy trains from the cache alone; a trained one from the images, and from the cache
    # in the epochs its backbone is frozen
    trained = strategy_kinds.mode(strategy["kind"]) == "trained"
    source = image_store.load(store) if store is not None and (trained or cache is None) else cache
    parts = partitions(table, split_table, settings["fold"], draw, source, validation)
    cached_parts = (
        partitions(table, split_table, settings["fold"], draw, cache, validation)
        if trained and store is not None and cache is not None
        else None
    )
    log.info(
        "cell %s: %s / %s / %s / fold %d | %s",
        settings["task"],
        model_spec["name"],
        strategy["name"],
        settings["regime"]["name"],
        settings["fold"],
        ", ".join(f"{p} {len(v.y)} images" for p, v in parts.items()),
    )
    outcome, record = run_candidates(settings, parts, device, embeddings, weights_path, Path(out_dir), cached_parts)
    run = write_cell(Path(out_dir), settings, parts, outcome, record, device, threads, embeddings, started)
    log.info("cell done in %.1fs: %s", run["wall_seconds"], run["summary"])
    return run


def write_cell(
    out: Path,
    settings: dict,
    parts: dict[str, Part],
    outcome: dict,
    record: list[dict],
    device: torch.device,
    threads: int,
    embeddings: str | None,
    started: float,
) -> dict:
    """Score the test predictions, one per patient (``metrics.evaluate``), at the threshold that maximised MCC on
    one prediction per validation patient (0.5 without a validation part), and write the cell's three files."""
    history = outcome["history"]
    status, error = ("failed", outcome["error"]) if "error" in outcome else ("ok", None)
    if status == "ok":
        probs = outcome["test"]
        val = parts.get("val")
        threshold = (
            metrics.best_threshold(val.patients.labels, val.patients.probs(outcome["val"])) if val is not None else 0.5
        )
        result = metrics.evaluate(parts["test"].patients, probs, threshold)
    else:
        probs, result = np.full(len(parts["test"].y), np.nan), {}
    out.mkdir(parents=True, exist_ok=True)
    epochs = history.get("epochs", [])
    predictions = (
        parts["test"]
        .frame.select("image_id", "patient_id", "label", "centre")
        .with_columns(pl.Series("prob", probs, dtype=pl.Float64))
    )
    write_atomic(out / "predictions.parquet", predictions.write_parquet)
    cell = {k: settings[k] for k in ("task", "fold")} | {
        "model": settings["model"]["name"],
        "strategy": settings["strategy"]["name"],
        "regime": settings["regime"]["name"],
    }
    write_atomic(
        out / "metrics.json",
        lambda p: p.write_text(
            json.dumps(cell | {"status": status, "error": error} | result, indent=1, allow_nan=True)
        ),
    )
    run = cell | {
        "status": status,
        "trainable_params": outcome["trainable"],
        "total_params": outcome["total"],
        "trainable_fraction": outcome["trainable"] / outcome["total"],
        "gflops": outcome["gflops"],
        "wall_seconds": time.perf_counter() - started,
        "peak_memory_mb": peak_memory_mb(device),
        "device": str(device),
        "n_train": len(parts["train"].y),
        "n_val": len(parts["val"].y) if "val" in parts else 0,
        "epochs": len(epochs),
        # every labelled patient the cell learned or selected from (training, early stopping, threshold, candidates)
        "labels_used": {
            f"{part}_patients": parts[part].frame["patient_id"].n_unique() if part in parts else 0
            for part in ("train", "val")
        },
        # where the time went (see ftbench.analysis.cost): optimisation steps, and per-epoch checks (BatchNorm
        # recalibration, validation); the rest is start-up and the test predictions
        "train_seconds": sum(e["train_seconds"] for e in epochs),
        "check_seconds": sum(e["seconds"] - e["train_seconds"] for e in epochs),
        "device_name": device_name(device),
        "threads": threads,
        "seed": settings["training"]["seed"] + settings["fold"],
        "versions": library_versions(),
        "embedding_cache": embeddings,
        "settings": settings,
        "history": history,
        "candidates": record,
    }
    write_atomic(out / "run.json", lambda p: p.write_text(json.dumps(run, indent=1, default=str)))
    return run | {
        "summary": ", ".join(f"{k} {result[k]:.3f}" for k in ("mcc", "pr_auc", "roc_auc") if k in result) or status
    }
