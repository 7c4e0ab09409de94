"""Learning-rate schedules: a factor on every parameter group's learning rate, epoch by epoch.

A schedule is a pure function of the epoch and the validation losses so far, so a resumed cell recomputes the
factor from its history. It multiplies the learning rates the strategy sets (per group: LP-FT's phases,
layer-wise decay and Auto-RGN's rescaling stay as they are), and never lowers one below ``min_lr``.

- ``constant`` (ours, the default): the strategy's learning rates as they are.
- ``plateau``: a linear warm-up over ``warmup_epochs``, then the factor is multiplied by ``factor`` whenever the
  validation loss has not improved for ``patience`` epochs (torch's ReduceLROnPlateau rule: relative threshold
  1e-4), down to ``min_lr``. The first study's configs give warm-up epochs, a plateau patience of 25 and an end
  learning rate of 1e-8 (``workflow/presets/s1.yaml``).
"""

from __future__ import annotations

from collections.abc import Callable


def constant(spec: dict, epoch: int, val_losses: list[float | None]) -> float:
    return 1.0


def plateau(spec: dict, epoch: int, val_losses: list[float | None]) -> float:
    """The factor for ``epoch`` after the validation losses of the epochs before it."""
    warmup = spec.get("warmup_epochs", 0)
    if epoch < warmup:
        return (epoch + 1) / warmup
    factor, best, bad = 1.0, float("inf"), 0
    for loss in val_losses[warmup:epoch]:
        if loss is None:
            continue
        if loss < best * (1 - 1e-4):
            best, bad = loss, 0
        else:
            bad += 1
            if bad > spec.get("patience", 25):
                factor, bad = factor * spec.get("factor", 0.1), 0
    return factor


SCHEDULES: dict[str, Callable[[dict, int, list[float | None]], float]] = {
    "constant": constant,
    "plateau": plateau,
}


def apply(spec: dict, optimizer, epoch: int, val_losses: list[float | None]) -> None:
    """Set every group's learning rate for ``epoch``: the strategy's rate for it times the schedule's factor
    (the strategy's rate is kept in the group as ``unscheduled_lr``; hooks that set ``lr`` set that one)."""
    factor = SCHEDULES[spec["name"]](spec, epoch, val_losses)
    for group in optimizer.param_groups:
        group["lr"] = max(group["unscheduled_lr"] * factor, min(spec.get("min_lr", 0.0), group["unscheduled_lr"]))
