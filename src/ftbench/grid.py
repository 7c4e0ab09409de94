"""The benchmark grid: which training cells exist and the settings each one resolves to.

Torch-free (used by the Snakefile). A cell is (task, model, strategy, regime, fold); its settings are a
plain dict holding only what changes its result, so that Snakemake's params trigger reruns exactly the
cells whose definition changed.
"""

from __future__ import annotations

from dataclasses import dataclass

from ftbench import TRAINING_VERSION
from ftbench.config import selected
from ftbench.zoo import resolve

TRAINING_KEYS = ("batch_size", "max_epochs", "patience", "lr", "weight_decay", "augment", "seed")


@dataclass(frozen=True)
class Cell:
    task: str
    model: str
    strategy: str
    regime: str
    fold: int

    @property
    def path(self) -> str:
        """Directory of the cell under ``results/cells``; matches the wildcards of the train rule."""
        return f"{self.task}/{self.model}/{self.strategy}/{self.regime}/fold{self.fold}"


def regimes(config: dict) -> list[str]:
    """Regime names: ``full`` and ``k{K}r{R}`` for each few-shot size K and repetition R."""
    spec = config.get("regimes", {})
    names = ["full"] if spec.get("full", True) else []
    fewshot = spec.get("fewshot")
    if fewshot:
        names += [f"k{k}r{r}" for k in fewshot["k"] for r in range(fewshot.get("repetitions", 5))]
    return names


def parse_regime(regime: str) -> dict:
    """``full`` -> {"name": "full"}; ``k4r0`` -> {"name": "k4r0", "k": 4, "repetition": 0}."""
    if regime == "full":
        return {"name": "full"}
    k, _, rep = regime[1:].partition("r")
    return {"name": regime, "k": int(k), "repetition": int(rep)}


def model_kind(config: dict, model: str) -> str:
    spec = config["models"][model]
    return resolve(spec["arch"]).kind


def excluded(config: dict) -> dict[tuple[str, str], str]:
    """(model, strategy) pairs left out of the grid, with the reason printed to the user."""
    out = {}
    for strategy, spec in selected(config, "strategies").items():
        allowed = spec.get("applies_to")
        for model in config["benchmark"]["models"]:
            kind = model_kind(config, model)
            if allowed and kind not in allowed:
                out[(model, strategy)] = f"strategy '{strategy}' applies to {allowed}, model '{model}' is a {kind}"
    return out


def cells(config: dict) -> list[Cell]:
    """Every training cell of the selected grid, in a stable order."""
    skip = excluded(config)
    folds = config["validation"]["folds"]
    return [
        Cell(task, model, strategy, regime, fold)
        for task in config["benchmark"]["tasks"]
        for model in config["benchmark"]["models"]
        for strategy in config["benchmark"]["strategies"]
        if (model, strategy) not in skip
        for regime in regimes(config)
        for fold in range(folds)
    ]


def model_img_size(config: dict, model: str) -> int:
    spec = config["models"][model]
    return spec.get("img_size") or resolve(spec["arch"]).img_size


def cell_settings(config: dict, cell: Cell) -> dict:
    """The resolved settings of one cell: everything that changes its result, nothing else."""
    model = dict(config["models"][cell.model], name=cell.model)
    model["img_size"] = model_img_size(config, cell.model)
    model.pop("weights", None)  # a path: the cell gets the file as an input, so its content, not its name, counts
    strategy = dict(config["strategies"][cell.strategy], name=cell.strategy)
    training = {key: config["training"][key] for key in TRAINING_KEYS}
    for key in ("lr", "weight_decay", "max_epochs"):
        if key in strategy:
            training[key] = strategy.pop(key)
    return {
        "version": TRAINING_VERSION,
        "task": cell.task,
        "model": model,
        "strategy": strategy,
        "training": training,
        "regime": parse_regime(cell.regime),
        "fold": cell.fold,
    }
