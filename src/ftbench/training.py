"""One training cell: fit a strategy on a fold's training part, pick the threshold on validation, test.

Class-weighted cross-entropy, AdamW, early stopping on validation loss (best epoch restored). On CPU a
cell is a pure function of its inputs and seed: the same cell gives bit-identical predictions.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import platform
import resource
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F

from ftbench import backbones, inputs, metrics, probes, strategies, weights
from ftbench.data import store as image_store
from ftbench.errors import Preempted
from ftbench.zoo import resolve

log = logging.getLogger("ftbench.train")


class Diverged(RuntimeError):
    """The loss became NaN or infinite: the cell fails instead of reporting metrics of garbage."""


@dataclass
class Part:
    """The images of one partition: uint8 pixels, labels and identifiers."""

    x: torch.Tensor
    y: torch.Tensor
    frame: pl.DataFrame


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


def seed_everything(seed: int) -> torch.Generator:
    """Seed every generator and ask for deterministic algorithms (on CUDA too: cuBLAS needs its workspace
    setting for that; an operation without a deterministic version warns instead of failing)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    return torch.Generator().manual_seed(seed)


def class_weights(y: torch.Tensor) -> torch.Tensor:
    """Inverse class frequency, normalised so that a balanced set gets weights of 1."""
    counts = torch.bincount(y, minlength=2).float().clamp_min(1)
    return counts.sum() / (2 * counts)


def autocast(device: torch.device):
    """bf16 mixed precision on CUDA (matrix work in bf16, losses and weights in fp32); nothing on CPU, where
    cells stay bit-reproducible."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


@torch.inference_mode()
def predict(model: torch.nn.Module, part: Part, prep: inputs.Preprocess, batch_size: int) -> np.ndarray:
    """Positive-class probabilities of every image of ``part``."""
    model.eval()
    with autocast(prep.device):
        probs = [torch.softmax(model(prep(part.x[i:i + batch_size], train=False)).float(), 1)[:, 1].cpu()
                 for i in range(0, len(part.x), batch_size)]
    return torch.cat(probs).numpy().astype(np.float64)


@torch.no_grad()
def recalibrate_batchnorm(model: torch.nn.Module, part: Part, prep, batch_size: int) -> None:
    """Re-estimate BatchNorm running statistics on the training images with the current weights.

    With few optimizer steps per epoch (small prognostic datasets), the running averages lag far behind
    the weights, and an eval-mode model scores the validation part with stale statistics: early
    stopping then picks an epoch for the wrong reason. One extra forward pass (cumulative average,
    no augmentation) fixes that ("precise BN"). Frozen backbones keep their statistics.
    """
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.training]
    if not norms:
        return
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average over this pass
    for i in range(0, len(part.x), batch_size):
        model(prep(part.x[i:i + batch_size], train=False))
    for m, momentum in zip(norms, saved):
        m.momentum = momentum


class StopSignals:
    """Records SIGTERM / SIGUSR1 while training runs.

    SIGUSR1 (what the Slurm profile asks for some minutes before the time limit) lets the current epoch
    finish and be saved; SIGTERM (preemption, the limit itself) stops at the next batch, resuming later
    from the last saved epoch.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self):
        self.received: int | None = None

    def __enter__(self):
        self.previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        return self

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame):
        log.warning("received %s", signal.Signals(signum).name)
        self.received = signum

    @property
    def stop_now(self) -> bool:
        return self.received == signal.SIGTERM


class Checkpoint:
    """The training state of one cell in one file, written atomically at epoch ends (at most every
    ``every`` seconds, and when a stop signal came) and read back when the cell is run again.

    Holds everything an epoch depends on: weights, optimizer, the strategy hooks' state, best epoch so far,
    history, step counter and every random generator, so a resumed cell gives bit-identical predictions
    (on CPU) to an uninterrupted one.
    """

    def __init__(self, path: Path | None, every: float):
        self.path, self.every, self.saved_at = path, every, time.monotonic()

    def load(self) -> dict | None:
        if self.path is None or not self.path.is_file():
            return None
        return torch.load(self.path, map_location="cpu", weights_only=True)

    def save(self, state: dict, force: bool = False) -> None:
        if self.path is None or (not force and time.monotonic() - self.saved_at < self.every):
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, lambda tmp: torch.save(state, tmp))
        self.saved_at = time.monotonic()

    def clear(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)


def fit(model: torch.nn.Module, plan: strategies.Plan, parts: dict[str, Part], prep: inputs.Preprocess,
        training: dict, generator: torch.Generator, checkpoint: Checkpoint | None = None) -> dict:
    """Train with early stopping on validation loss; restore the best epoch. Returns the history.

    With a ``checkpoint`` the state is saved at epoch ends and a previous run's state is resumed.
    """
    checkpoint = checkpoint or Checkpoint(None, 0)
    device = prep.device
    weights = class_weights(parts["train"].y).to(device)
    optimizer = torch.optim.AdamW(plan.param_groups, weight_decay=training["weight_decay"],
                                  fused=True if device.type == "cuda" else None)
    best = {"loss": math.inf, "epoch": -1, "state": None}
    history = []
    train, bs = parts["train"], training["batch_size"]
    step, total_steps, phase_start, first = 0, training["max_epochs"] * math.ceil(len(train.x) / bs), 0, 0
    saved = checkpoint.load()
    if saved is not None:
        for epoch in range(saved["epoch"] + 1):  # replay the schedule: phases, unfrozen blocks, groups
            if plan.on_epoch is not None and plan.on_epoch(optimizer, epoch):
                phase_start = epoch
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        plan.load_state(saved["plan"])
        best, history, step = saved["best"], saved["history"], saved["step"]
        generator.set_state(saved["generator"])
        torch.set_rng_state(saved["torch_rng"])
        if prep.generator is not None:
            prep.generator.set_state(saved["prep_generator"])
        first = saved["epoch"] + 1
        log.info("resumed from %s after epoch %d", checkpoint.path, saved["epoch"])
    with StopSignals() as stop:
        outcome = _epochs(model, plan, parts, prep, training, generator, optimizer, weights, best, history,
                          step, total_steps, phase_start, first, checkpoint, stop)
    model.load_state_dict(outcome["best"]["state"])
    checkpoint.clear()
    return {"best_epoch": outcome["best"]["epoch"], "best_val_loss": outcome["best"]["loss"],
            "epochs": outcome["epochs"]}


def _epochs(model, plan, parts, prep, training, generator, optimizer, weights, best, history, step, total_steps,
            phase_start, first, checkpoint: Checkpoint, stop: StopSignals) -> dict:
    """The epoch loop of :func:`fit`, from epoch ``first``."""
    device = prep.device
    train, bs = parts["train"], training["batch_size"]
    for epoch in range(first, training["max_epochs"]):
        start = time.perf_counter()
        if plan.on_epoch is not None and plan.on_epoch(optimizer, epoch):
            phase_start = epoch  # a new phase (LP-FT, gradual unfreezing): patience restarts
        model.train()
        if not any(p.requires_grad for p in model.backbone.parameters()):
            model.backbone.eval()  # a frozen feature extractor keeps its normalisation statistics
        order = torch.randperm(len(train.x), generator=generator)
        total, seen = 0.0, 0
        for i in range(0, len(order), bs):
            if stop.stop_now:
                raise Preempted(f"stopped in epoch {epoch}; resumes after epoch {epoch - 1} from {checkpoint.path}")
            idx = order[i:i + bs]
            with autocast(device):
                logits = model(prep(train.x[idx], train=True)).float()
            loss = F.cross_entropy(logits, train.y[idx].to(device), weight=weights)
            if plan.penalty is not None:
                loss = loss + plan.penalty()  # L2-SP, AdaLoRA's orthogonality
            if not torch.isfinite(loss):
                raise Diverged(f"epoch {epoch}: training loss is {loss.item()}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            if plan.on_step is not None:
                plan.on_step(optimizer, step, total_steps)
            total += loss.item() * len(idx)
            seen += len(idx)
        trained = time.perf_counter() - start  # the optimisation steps; the rest of the epoch checks the model
        recalibrate_batchnorm(model, train, prep, bs)
        val_probs = predict(model, parts["val"], prep, bs)
        val_y = parts["val"].y.numpy()
        val_loss = float(F.cross_entropy(
            torch.log(torch.from_numpy(np.stack([1 - val_probs, val_probs], 1)).clamp_min(1e-12)).float(),
            torch.from_numpy(val_y), weight=weights.cpu()))
        if not math.isfinite(val_loss):
            raise Diverged(f"epoch {epoch}: validation loss is {val_loss}")
        history.append({"epoch": epoch, "train_loss": total / seen, "val_loss": val_loss,
                        "seconds": time.perf_counter() - start, "train_seconds": trained})
        log.info("epoch %3d  train loss %.4f  val loss %.4f  (%.1fs)", epoch, total / seen, val_loss,
                 history[-1]["seconds"])
        if val_loss < best["loss"] - 1e-6:
            best = {"loss": val_loss, "epoch": epoch, "state": copy.deepcopy(model.state_dict())}
        elif epoch - max(best["epoch"], phase_start - 1) >= training["patience"]:
            log.info("early stop: no validation improvement for %d epochs", training["patience"])
            break
        checkpoint.save({
            "epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(), "best": best,
            "history": history, "step": step, "plan": plan.state(), "generator": generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "prep_generator": prep.generator.get_state() if prep.generator is not None else torch.empty(0),
        }, force=stop.received is not None)
        if stop.received is not None:
            raise Preempted(f"stopped after epoch {epoch}; the state is saved in {checkpoint.path}")
    return {"best": best, "epochs": history}


def pick_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def library_versions() -> dict[str, str]:
    import peft
    import sklearn
    import timm

    hubs = {name: sys.modules[name].__version__ for name in ("open_clip", "transformers") if name in sys.modules}
    return {"python": platform.python_version(), "torch": torch.__version__, "timm": timm.__version__,
            "peft": peft.__version__, "numpy": np.__version__, "polars": pl.__version__,
            "scikit-learn": sklearn.__version__} | hubs


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def write_atomic(path: Path, write) -> None:
    """Write via a temporary name and rename, so a killed cell never leaves a file that looks complete."""
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


def model_entry(model_spec: dict):
    """The zoo entry of a cell's model settings (architecture, image size, pretrained)."""
    return resolve(model_spec["arch"], model_spec.get("img_size"), model_spec.get("pretrained", False))


def frozen_backbone(entry) -> tuple[int, int, float | None]:
    """(feature width, backbone parameters, forward GFLOPs) of a backbone whose features come from the
    embedding cache: the full model is built on the meta device, without memory or compute."""
    with torch.device("meta"):
        full = backbones.build(entry)
    return full.head.in_features, sum(p.numel() for p in full.backbone.parameters()), \
        backbones.forward_gflops(full, entry.img_size)


def build_model(settings: dict, cached: bool, device: torch.device, weights_path: str | None = None):
    """(model, strategy plan, input transform, frozen parameters not in the model, forward GFLOPs) of a cell.

    With ``cached`` the backbone is already applied (embedding cache): the model is the head alone on the
    features, and the full model is only instantiated on the meta device to report its size and cost.
    """
    model_spec, strategy, training = settings["model"], settings["strategy"], settings["training"]
    seed = training["seed"] + settings["fold"]
    entry = model_entry(model_spec)
    if cached:
        width, backbone_params, gflops = frozen_backbone(entry)
        model = backbones.Classifier(torch.nn.Identity(), width, seed=seed)
        plan = strategies.apply(model, entry, strategy, training)
        return model.to(device), plan, inputs.Features(device), backbone_params, gflops
    model = weights.build(model_spec["name"], entry, weights_path)
    model.init_head(seed)
    plan = strategies.apply(model, entry, strategy, training)
    # a frozen feature extractor sees un-augmented images, exactly as the embedding cache does
    frozen = not plan.trains(model.backbone)
    prep = inputs.Preprocess(entry, device, training["augment"] and not frozen,
                              torch.Generator().manual_seed(seed))
    if device.type == "cuda" and entry.kind == "cnn":
        model = model.to(memory_format=torch.channels_last)  # the layout cuDNN's fast convolutions use
    return model.to(device), plan, prep, 0, backbones.forward_gflops(model, entry.img_size)


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
    """Train (or, a probe, fit) and evaluate one cell; write predictions.parquet, metrics.json and run.json
    into ``out_dir``.

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
    trainable, total, gflops, history = outcome["trainable"], outcome["total"], outcome["gflops"], outcome["history"]
    status, error = ("failed", outcome["error"]) if "error" in outcome else ("ok", None)
    if status == "ok":
        probs = outcome["test"]
        result = metrics.compute(parts["test"].y.numpy(), probs,
                                 metrics.best_threshold(parts["val"].y.numpy(), outcome["val"]))
    else:
        probs, result = np.full(len(parts["test"].y), np.nan), {}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    epochs = history.get("epochs", [])
    test = parts["test"].frame
    predictions = test.select("image_id", "patient_id", "label", "centre").with_columns(
        pl.Series("prob", probs, dtype=pl.Float64))
    write_atomic(out / "predictions.parquet", predictions.write_parquet)
    cell = {k: settings[k] for k in ("task", "fold")} | {"model": model_spec["name"], "strategy": strategy["name"],
                                                           "regime": settings["regime"]["name"]}
    write_atomic(out / "metrics.json", lambda p: p.write_text(json.dumps(
        cell | {"status": status, "error": error} | result, indent=1, allow_nan=True)))
    run = cell | {
        "status": status, "trainable_params": trainable, "total_params": total,
        "trainable_fraction": trainable / total, "gflops": gflops, "wall_seconds": time.perf_counter() - started,
        "peak_memory_mb": peak_memory_mb(device), "device": str(device),
        "n_train": len(parts["train"].y), "n_val": len(parts["val"].y), "epochs": len(epochs),
        # where the time went (see ftbench.cost): optimisation steps, and per-epoch checks (BatchNorm
        # recalibration, validation); the rest is start-up and the test predictions
        "train_seconds": sum(e["train_seconds"] for e in epochs),
        "check_seconds": sum(e["seconds"] - e["train_seconds"] for e in epochs),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "threads": threads, "seed": training["seed"] + settings["fold"], "versions": library_versions(),
        "embedding_cache": embeddings,
        "settings": settings, "history": history,
    }
    write_atomic(out / "run.json", lambda p: p.write_text(json.dumps(run, indent=1, default=str)))
    log.info("cell done in %.1fs: %s", run["wall_seconds"],
             ", ".join(f"{k} {result[k]:.3f}" for k in ("mcc", "pr_auc", "roc_auc") if k in result) or status)
    return run


OUTPUTS = ("predictions.parquet", "metrics.json", "run.json")


def _finished(folder: Path, settings: dict) -> bool:
    """Whether ``folder`` holds a completed cell trained with exactly ``settings``."""
    try:
        return all((folder / f).is_file() for f in OUTPUTS) and \
            json.loads((folder / "run.json").read_text())["settings"] == settings
    except (OSError, ValueError, KeyError):
        return False


def run_job(job: dict, task_table: str, split: str, store: str | None, out_dir: str, checkpoints: str,
            fewshot: str | None = None, threads: int = 1, embeddings: str | None = None,
            weights_path: str | None = None) -> None:
    """Train every cell of a job (see ``grid.Job``) into ``out_dir/<cell leaf>``.

    Cells are trained into ``checkpoints`` first, which Snakemake never deletes: when a job dies (time
    limit, preemption, a crash in a later cell), its rerun skips the cells already finished there.
    The finished job moves them into ``out_dir`` and removes its checkpoints.
    """
    shared = {k: v for k, v in job.items() if k not in ("cells", "group")}
    work, out = Path(checkpoints), Path(out_dir)
    for number, cell in enumerate(job["cells"], start=1):
        settings = shared | {"regime": cell["regime"], "fold": cell["fold"]}
        folder = work / cell["leaf"]
        if _finished(folder, settings):
            log.info("cell %d/%d (%s) already finished in %s", number, len(job["cells"]), cell["leaf"], folder)
            continue
        log.info("cell %d/%d: %s", number, len(job["cells"]), cell["leaf"])
        run_cell(settings, task_table, split, store, str(folder), fewshot, threads, embeddings, weights_path)
    for cell in job["cells"]:
        (out / cell["leaf"]).mkdir(parents=True, exist_ok=True)
        for name in OUTPUTS:
            os.replace(work / cell["leaf"] / name, out / cell["leaf"] / name)
    shutil.rmtree(work, ignore_errors=True)
