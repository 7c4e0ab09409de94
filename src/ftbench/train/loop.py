"""The training loop of a cell: epochs of AdamW steps, a check on validation after each, early stopping on the
validation loss (one prediction per validation patient; best epoch restored), checkpoints at epoch ends and stop
signals (Slurm's warning, preemption).

Class-weighted cross-entropy. On CPU the loop is a pure function of its inputs and generators: the same cell,
interrupted and resumed or not, gives bit-identical weights.
"""

from __future__ import annotations

import copy
import functools
import logging
import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F

from ftbench.errors import Preempted
from ftbench.files import write_atomic
from ftbench.models import inputs, strategies
from ftbench.train import metrics, schedules
from ftbench.train.device import autocast
from ftbench.train.stop_signals import StopRecorder

log = logging.getLogger("ftbench.train")


class Diverged(RuntimeError):
    """The loss became NaN or infinite: the cell fails instead of reporting metrics of garbage."""


@dataclass
class Part:
    """The images of one partition: uint8 pixels (or cached features), labels and identifiers."""

    x: torch.Tensor
    y: torch.Tensor
    frame: pl.DataFrame

    @classmethod
    def of(cls, frame: pl.DataFrame, source: np.ndarray) -> Part:
        """The images of ``frame`` (task-table rows), in row order, from ``source`` (image store or embedding cache)."""
        frame = frame.sort("row")
        rows = frame["row"].to_numpy().astype(np.int64)
        return cls(inputs.load_rows(source, rows), torch.from_numpy(frame["label"].to_numpy().astype(np.int64)), frame)

    @functools.cached_property
    def patients(self) -> metrics.Patients:
        """The patient of each image (the frame's ``patient_id``): validation and test are scored per patient."""
        return metrics.Patients.of(self.frame["patient_id"].to_numpy(), self.y.numpy())


def class_weights(y: torch.Tensor) -> torch.Tensor:
    """Inverse class frequency, normalised so that a balanced set gets weights of 1."""
    counts = torch.bincount(y, minlength=2).float().clamp_min(1)
    return counts.sum() / (2 * counts)


@torch.inference_mode()
def predict(model: torch.nn.Module, part: Part, prep: inputs.Preprocess, batch_size: int) -> np.ndarray:
    """Positive-class probabilities of every image of ``part``."""
    model.eval()
    with autocast(prep.device):
        probs = [
            torch.softmax(model(prep(part.x[i : i + batch_size], train=False)).float(), 1)[:, 1].cpu()
            for i in range(0, len(part.x), batch_size)
        ]
    return torch.cat(probs).numpy().astype(np.float64)


def validation_loss(probs: np.ndarray, val: Part, train: Part) -> float:
    """What early stopping and the choice among candidate settings follow: the class-weighted cross-entropy of one
    prediction per validation patient (the mean of its images' probabilities ``probs``, as the cell is scored),
    classes weighted by their inverse frequency among the training patients, so a patient with many images counts
    once."""
    patient_probs = val.patients.probs(probs)
    logp = torch.log(torch.from_numpy(np.stack([1 - patient_probs, patient_probs], 1)).clamp_min(1e-12)).float()
    weights = class_weights(torch.from_numpy(train.patients.labels))
    return float(F.cross_entropy(logp, torch.from_numpy(val.patients.labels).long(), weight=weights))


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
        model(prep(part.x[i : i + batch_size], train=False))
    for m, momentum in zip(norms, saved):
        m.momentum = momentum


class StopSignals(StopRecorder):
    """Records SIGTERM / SIGUSR1 while a cell trains (``ftbench.train.stop_signals``): SIGUSR1 lets the current epoch
    finish and be saved, SIGTERM stops at the next batch."""

    def __init__(self):
        super().__init__(lambda signum: log.warning("received %s", signal.Signals(signum).name))

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


@dataclass
class Progress:
    """Where the loop is: the next epoch, optimizer steps so far, the best epoch and the history."""

    epoch: int = 0
    step: int = 0
    phase_start: int = 0  # the epoch the current phase (LP-FT's second, an unfreezing) began: patience restarts
    best: dict = field(default_factory=lambda: {"loss": math.inf, "epoch": -1, "state": None})
    history: list[dict] = field(default_factory=list)


def fit(
    model: torch.nn.Module,
    plan: strategies.Plan,
    parts: dict[str, Part],
    prep: inputs.Preprocess,
    training: dict,
    generator: torch.Generator,
    checkpoint: Checkpoint | None = None,
    cached: dict[str, Part] | None = None,
) -> dict:
    """Train with early stopping on validation loss; restore the best epoch. Returns the history, with the
    validation probabilities of the best epoch.

    Without a ``val`` part (a few-shot cell that may not validate) every epoch up to ``max_epochs`` runs and the
    last one is kept. With a ``checkpoint`` the state is saved at epoch ends and a previous run's state is resumed.
    An epoch whose backbone is entirely frozen (LP-FT's first phase, gradual unfreezing's first epochs) feeds it
    un-augmented images, as the embedding cache holds them; with ``cached`` (the same parts from the cache) it
    trains and validates the head on those features instead of running the backbone again.
    """
    checkpoint = checkpoint or Checkpoint(None, 0)
    optimizer = torch.optim.AdamW(
        plan.param_groups, weight_decay=training["weight_decay"], fused=True if prep.device.type == "cuda" else None
    )
    progress = _resume(checkpoint, model, plan, optimizer, prep, generator) or Progress()
    weights = class_weights(parts["train"].y).to(prep.device)
    total_steps = training["max_epochs"] * math.ceil(len(parts["train"].x) / training["batch_size"])
    with StopSignals() as stop:
        while progress.epoch < training["max_epochs"]:
            _start_epoch(plan, optimizer, progress, training)
            started = time.perf_counter()
            frozen = _train_mode(model, len(parts["train"].x), training)
            net, epoch_parts, epoch_prep = (
                (model.head, cached, inputs.Features(prep.device))
                if frozen and cached is not None
                else (model, parts, prep)
            )
            train_loss = _train_epoch(
                net,
                plan,
                epoch_parts["train"],
                epoch_prep,
                training,
                generator,
                optimizer,
                weights,
                progress,
                total_steps,
                stop,
                augment=not frozen,
            )
            trained = time.perf_counter() - started  # the optimisation steps; the rest checks the model
            val_loss, val_probs = _check(net, epoch_parts, epoch_prep, training["batch_size"], progress.epoch)
            progress.history.append(
                {
                    "epoch": progress.epoch,
                    "train_loss": train_loss,
                    "val_loss": val_loss,
                    "seconds": time.perf_counter() - started,
                    "train_seconds": trained,
                }
            )
            log.info(
                "epoch %3d  train loss %.4f  val loss %s  (%.1fs)",
                progress.epoch,
                train_loss,
                "-" if val_loss is None else f"{val_loss:.4f}",
                progress.history[-1]["seconds"],
            )
            if _early_stop(
                model, progress, val_loss, val_probs, training["patience"], plan.ready(progress.step, total_steps)
            ):
                break
            _save(checkpoint, progress, model, plan, optimizer, prep, generator, force=stop.received is not None)
            if stop.received is not None:
                raise Preempted(f"stopped after epoch {progress.epoch}; the state is saved in {checkpoint.path}")
            progress.epoch += 1
    model.load_state_dict(progress.best["state"])
    checkpoint.clear()
    best_loss = progress.best["loss"] if "val" in parts else None
    val_probs = progress.best.get("val_probs")
    return {
        "best_epoch": progress.best["epoch"],
        "best_val_loss": best_loss,
        "epochs": progress.history,
        "val_probs": None if val_probs is None else val_probs.numpy(),
    }


def _start_epoch(plan: strategies.Plan, optimizer, progress: Progress, training: dict) -> None:
    """The strategy's hooks for the new epoch (a new phase restarts patience), then the learning-rate schedule
    on the rates the strategy set (``ftbench.train.schedules``)."""
    for group in optimizer.param_groups:
        group["lr"] = group.get("unscheduled_lr", group["lr"])
    if plan.on_epoch is not None and plan.on_epoch(optimizer, progress.epoch):
        progress.phase_start = progress.epoch
    for group in optimizer.param_groups:
        group["unscheduled_lr"] = group["lr"]
    schedules.apply(
        training.get("schedule", {"name": "constant"}),
        optimizer,
        progress.epoch,
        [epoch["val_loss"] for epoch in progress.history],
    )


def _train_mode(model, n_train: int, training: dict) -> bool:
    """Put the model in training mode for an epoch; True when its backbone is entirely frozen (it stays in eval
    mode then, keeping its normalisation statistics). With fewer training images than
    ``batchnorm_min_images`` the BatchNorms keep the statistics the backbone came with."""
    model.train()
    if not any(p.requires_grad for p in model.backbone.parameters()):
        model.backbone.eval()  # a frozen feature extractor keeps its normalisation statistics
        return True
    if n_train < training.get("batchnorm_min_images", 0):
        for m in model.modules():  # too few images for statistics: the pretrained ones stay (and are used)
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()
    return False


def _train_epoch(
    net,
    plan: strategies.Plan,
    train: Part,
    prep,
    training: dict,
    generator: torch.Generator,
    optimizer,
    weights: torch.Tensor,
    progress: Progress,
    total_steps: int,
    stop: StopSignals,
    augment: bool,
) -> float:
    """One pass of optimizer steps over the shuffled training part; the mean training loss (penalty included)."""
    order, bs = torch.randperm(len(train.x), generator=generator), training["batch_size"]
    total = 0.0
    for i in range(0, len(order), bs):
        if stop.stop_now:
            raise Preempted(f"stopped in epoch {progress.epoch}; resumes after epoch {progress.epoch - 1}")
        idx = order[i : i + bs]
        with autocast(prep.device):
            logits = net(prep(train.x[idx], train=augment)).float()
        loss = F.cross_entropy(logits, train.y[idx].to(prep.device), weight=weights)
        if plan.penalty is not None:
            loss = loss + plan.penalty()  # L2-SP, AdaLoRA's orthogonality
        if not torch.isfinite(loss):
            raise Diverged(f"epoch {progress.epoch}: training loss is {loss.item()}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        progress.step += 1
        if plan.on_step is not None:
            plan.on_step(optimizer, progress.step, total_steps)
        total += loss.item() * len(idx)
    return total / len(order)


def _check(net, parts: dict[str, Part], prep, batch_size: int, epoch: int) -> tuple[float | None, np.ndarray | None]:
    """The validation loss (:func:`validation_loss`) and the images' probabilities after an epoch (None without a
    validation part), BatchNorm statistics re-estimated first."""
    recalibrate_batchnorm(net, parts["train"], prep, batch_size)
    if "val" not in parts:
        return None, None
    probs = predict(net, parts["val"], prep, batch_size)
    val_loss = validation_loss(probs, parts["val"], parts["train"])
    if not math.isfinite(val_loss):
        raise Diverged(f"epoch {epoch}: validation loss is {val_loss}")
    return val_loss, probs


def _early_stop(
    model, progress: Progress, val_loss: float | None, val_probs: np.ndarray | None, patience: int, ready: bool
) -> bool:
    """Keep the epoch if it is the best so far; True when ``patience`` epochs of the phase brought nothing.

    Without a validation loss every epoch is kept (the last one wins) and training never stops early. Before
    the strategy is ``ready`` (AdaLoRA's rank budget still being pruned) no epoch is kept and none stops
    training: patience counts from the first ready epoch.
    """
    if not ready:
        progress.phase_start = progress.epoch + 1
        return False
    if val_loss is None or val_loss < progress.best["loss"] - 1e-6:
        progress.best = {
            "loss": math.inf if val_loss is None else val_loss,
            "epoch": progress.epoch,
            "state": copy.deepcopy(model.state_dict()),
            "val_probs": None if val_probs is None else torch.from_numpy(val_probs),
        }
        return False
    if progress.epoch - max(progress.best["epoch"], progress.phase_start - 1) >= patience:
        log.info("early stop: no validation improvement for %d epochs", patience)
        return True
    return False


def _save(checkpoint: Checkpoint, progress: Progress, model, plan, optimizer, prep, generator, force: bool) -> None:
    checkpoint.save(
        {
            "epoch": progress.epoch,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "best": progress.best,
            "history": progress.history,
            "step": progress.step,
            "plan": plan.state(),
            "phase_start": progress.phase_start,
            "generator": generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "prep_generator": prep.generator.get_state() if prep.generator is not None else torch.empty(0),
        },
        force=force,
    )


def _resume(
    checkpoint: Checkpoint, model, plan: strategies.Plan, optimizer, prep, generator: torch.Generator
) -> Progress | None:
    """The progress of a previous run from its checkpoint (weights, optimizer, hooks and generators restored),
    the strategy's schedule replayed up to its epoch; None without one."""
    saved = checkpoint.load()
    if saved is None:
        return None
    progress = Progress(epoch=saved["epoch"] + 1, step=saved["step"], best=saved["best"], history=saved["history"])
    for epoch in range(progress.epoch):  # replay the schedule: phases, unfrozen blocks, groups
        if plan.on_epoch is not None and plan.on_epoch(optimizer, epoch):
            progress.phase_start = epoch
    progress.phase_start = saved["phase_start"]
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    plan.load_state(saved["plan"])
    generator.set_state(saved["generator"])
    torch.set_rng_state(saved["torch_rng"])
    if prep.generator is not None:
        prep.generator.set_state(saved["prep_generator"])
    log.info("resumed from %s after epoch %d", checkpoint.path, saved["epoch"])
    return progress
