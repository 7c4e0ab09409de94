"""External validation: keep a source cell's trained model, then score it, unchanged, on another task's patients.

A cell whose settings say ``keep_model`` (the full-data cells of a transfer source, ``ftbench.plan.transfer``) saves
the chosen candidate's model: the parameters its strategy trained and every buffer (``model.pt``; the frozen rest
is rebuilt from the same weights), or its fitted probe (``probe.pkl``). A transfer job rebuilds each fold's model
from the source cell's settings and chosen candidate, loads what was kept, predicts every image of the target task,
and scores one prediction per patient at the threshold the source cell chose on its own validation part. Nothing of
the target is used to train, stop, choose or threshold.
"""

from __future__ import annotations

import json
import logging
import pickle
import time
from pathlib import Path

import numpy as np
import polars as pl
import torch

from ftbench.data import store as image_store
from ftbench.files import write_atomic
from ftbench.models import inputs, strategies
from ftbench.models.assembly import build_model
from ftbench.plan.grid import CELL_FILES
from ftbench.plan.transfer import KEPT_FILES, pair_name
from ftbench.train import metrics, probes
from ftbench.train.device import device_name, library_versions, peak_memory_mb, pick_device
from ftbench.train.loop import Part, predict

log = logging.getLogger("ftbench.train")
MODEL, PROBE = KEPT_FILES


def kept_file(folder: Path, probe: bool, candidate: int | None = None) -> Path:
    """Where a cell keeps its model (``candidate``: one candidate's, until the cell has chosen)."""
    name = PROBE if probe else MODEL
    return folder / (name if candidate is None else name.replace(".", f"{candidate}.", 1))


def keep_trained(model: torch.nn.Module, plan: strategies.Plan, path: Path) -> None:
    """Save what training changed: every parameter the strategy trains at some point, and every buffer
    (BatchNorm statistics); the frozen parameters are the model's weights, rebuilt when the model is loaded."""
    trained = {id(p) for p in plan.parameters()}
    names = {name for name, p in model.named_parameters() if id(p) in trained}
    names |= {name for name, _ in model.named_buffers()}
    # the state dict's keys: a non-persistent buffer is rebuilt with the model, so it is not kept
    state = {name: t.detach().cpu() for name, t in model.state_dict().items() if name in names}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda p: torch.save(state, p))


def keep_probe(probe, path: Path) -> None:
    """Save a fitted probe (a scikit-learn pipeline)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda p: p.write_bytes(pickle.dumps(probe)))


def choose_kept(folder: Path, probe: bool, chosen: int, count: int) -> None:
    """Keep the chosen candidate's model under the cell's name and remove the others'."""
    for i in range(count):
        path = kept_file(folder, probe, i)
        if i == chosen and path.exists():
            path.replace(kept_file(folder, probe))
        else:
            path.unlink(missing_ok=True)


def chosen_settings(run: dict) -> dict:
    """The settings the source cell's kept model was trained with: its settings, with the chosen candidate's."""
    settings = run["settings"]
    chosen = next((c for c in run.get("candidates") or [] if c.get("chosen")), None)
    return settings | ({"strategy": chosen["strategy"], "training": chosen["training"]} if chosen else {})


def load_kept(
    cell: Path, settings: dict, cached: bool, device: torch.device, weights_path: str | None
) -> tuple[object, inputs.Preprocess | inputs.Features | None]:
    """The source cell's kept model and its input transform (a probe: the fitted pipeline, and None)."""
    if settings["strategy"]["kind"] in probes.PROBES:
        return pickle.loads(kept_file(cell, probe=True).read_bytes()), None
    path = kept_file(cell, probe=False)
    model, _, prep, _, _ = build_model(settings, cached, device, weights_path)
    loaded = model.load_state_dict(torch.load(path, map_location=device, weights_only=True), strict=False)
    if loaded.unexpected_keys:
        raise ValueError(
            f"{path}: keys the model built from the cell's settings does not have: {loaded.unexpected_keys}"
        )
    return model, prep


def score_fold(
    cell: Path, part: Part, cached: bool, device: torch.device, weights_path: str | None
) -> tuple[dict, np.ndarray, dict]:
    """(the source cell's run record, the kept model's probabilities on ``part``, the metrics at its threshold)."""
    run = json.loads((cell / "run.json").read_text())
    threshold = json.loads((cell / "metrics.json").read_text())["threshold"]
    settings = chosen_settings(run)
    model, prep = load_kept(cell, settings, cached, device, weights_path)
    if prep is None:
        probs = model.predict_proba(part.x.numpy())[:, 1].astype(np.float64)
    else:
        probs = predict(model, part, prep, settings["training"]["batch_size"])
    return run, probs, metrics.evaluate(part.patients, probs, threshold)


def run_transfer(
    job: dict,
    cells: list[str],
    task_table: str,
    out_dir: str,
    store: str | None = None,
    embeddings: str | None = None,
    weights_path: str | None = None,
    threads: int = 1,
) -> None:
    """Score every fold of each source job in ``cells`` (the full-data jobs of one model, ``results/cells/<source>/
    <model>/<strategy>/full``) on the target task; write each fold's cell files into ``out_dir/<strategy>/full/
    fold<F>``. ``job["strategies"]`` says what each strategy's models run on: the target's image store or its
    embedding cache. A source cell that failed, or kept no model, gives a failed fold naming why."""
    torch.set_num_threads(threads)
    device = pick_device("auto")
    table = pl.read_parquet(task_table)
    arrays = {
        "images": store and image_store.load(store),
        "embeddings": embeddings and np.load(embeddings, mmap_mode="r"),
    }
    parts = {kind: Part.of(table, array) for kind, array in arrays.items() if array is not None}
    for folder in map(Path, cells):
        strategy = folder.parent.name
        kind = job["strategies"][strategy]
        score_job(
            job, folder, parts[kind], kind == "embeddings", device, weights_path, Path(out_dir) / strategy / "full"
        )


def score_job(
    job: dict, cells: Path, part: Part, cached: bool, device: torch.device, weights_path: str | None, out_dir: Path
) -> None:
    """Score every fold of one source job (``cells``) on ``part``, the target's images or features."""
    folds = sorted(cells.glob("fold*"), key=lambda p: int(p.name[4:]))
    if not folds:
        raise ValueError(f"{cells}: no fold of the source job (it holds no fold<F> folder)")
    for cell in folds:
        started = time.perf_counter()
        try:
            missing = [f for f in CELL_FILES if not (cell / f).is_file()]
            if missing:
                raise ValueError(f"{cell}: the source cell lacks {', '.join(missing)}")
            if json.loads((cell / "metrics.json").read_text()).get("status") != "ok":
                raise ValueError(f"{cell}: the source cell failed, so there is no model to validate")
            if not any((cell / f).is_file() for f in KEPT_FILES):
                raise ValueError(
                    f"{cell}: the source cell kept no model; it was trained before its task was a transfer source "
                    f"(rerun it: snakemake --forcerun {cells})"
                )
            run, probs, result = score_fold(cell, part, cached, device, weights_path)
            status, error = "ok", None
        except (OSError, ValueError, KeyError) as err:
            log.error("%s: %s", cell, err)
            run, probs, result, status, error = {}, np.full(len(part.y), np.nan), {}, "failed", str(err)
        write_fold(out_dir / cell.name, job, run, part, probs, result, status, error, device, started)
        log.info("%s on %s, %s: %s", cells, job["target"], cell.name, result.get("mcc", status))


def write_fold(
    out: Path,
    job: dict,
    source_run: dict,
    part: Part,
    probs: np.ndarray,
    result: dict,
    status: str,
    error: str | None,
    device: torch.device,
    started: float,
) -> None:
    """One fold's cell files (``grid.CELL_FILES``), as a training cell writes them: the target's predictions, the
    metrics, and a run record holding the source cell's settings and what it learned from."""
    out.mkdir(parents=True, exist_ok=True)
    predictions = part.frame.select("image_id", "patient_id", "label", "centre").with_columns(
        pl.Series("prob", probs, dtype=pl.Float64)
    )
    write_atomic(out / "predictions.parquet", predictions.write_parquet)
    settings = source_run.get("settings", {})
    keys = {
        "task": pair_name(job["source"], job["target"]),
        "fold": int(out.name[4:]),
        "model": settings.get("model", {}).get("name"),
        "strategy": settings.get("strategy", {}).get("name"),
        "regime": "full",
    }
    write_atomic(
        out / "metrics.json",
        lambda p: p.write_text(json.dumps(keys | {"status": status, "error": error} | result, indent=1)),
    )
    learned = {k: source_run.get(k) for k in ("trainable_params", "total_params", "trainable_fraction", "gflops")}
    run = (
        keys
        | {"status": status, "source": job["source"], "target": job["target"]}
        | learned
        | {
            "wall_seconds": time.perf_counter() - started,
            "peak_memory_mb": peak_memory_mb(device),
            "device": str(device),
            "device_name": device_name(device),
            "n_test": len(part.y),
            # the source cell's: the target's labels take no part in anything but this score
            "labels_used": source_run.get("labels_used"),
            "candidates": source_run.get("candidates"),
            "versions": library_versions(),
            "settings": settings,
        }
    )
    write_atomic(out / "run.json", lambda p: p.write_text(json.dumps(run, indent=1, default=str)))
