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

# Strategy kinds whose backbone stays frozen: their cells train from the embedding cache.
CACHEABLE_KINDS = frozenset({"lp"})

# Strategy kinds that work on some backbone kinds only: kind -> (those backbone kinds, why not the others).
# Every other kind of ftbench.strategies applies to CNNs and ViTs. Torch-free, so that the Snakefile leaves
# such (model, strategy) pairs out of the grid; tests/test_strategies.py checks it against the strategies.
KIND_LIMITS: dict[str, tuple[tuple[str, ...], str]] = {
    "vera": (("vit",), "peft's VeRA adapts Linear layers only, and a CNN's adapter targets are convolutions"),
    "fourierft": (("vit",), "peft's FourierFT adapts Linear layers only, and a CNN's adapter targets are convolutions"),
    "oft": (("vit",), "peft's OFT on Conv2d rotates unfolded input patches and folds them back by summing overlaps: "
                      "it is not the identity at initialisation and fails on feature maps smaller than the kernel"),
    "ln_tuning": (("vit",), "it tunes LayerNorms, which a BatchNorm CNN does not have"),
    "vpt": (("vit",), "prompts are extra tokens, and a CNN has no token sequence"),
}

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


def not_applicable(strategy_kind: str, backbone_kind: str) -> str | None:
    """Why a strategy kind cannot work on a backbone kind (see :data:`KIND_LIMITS`); None if it can."""
    kinds, reason = KIND_LIMITS.get(strategy_kind, ((backbone_kind,), ""))
    return None if backbone_kind in kinds else reason


def excluded(config: dict) -> dict[tuple[str, str], str]:
    """(model, strategy) pairs left out of the grid, with the reason printed to the user."""
    out = {}
    for strategy, spec in selected(config, "strategies").items():
        allowed = spec.get("applies_to")
        for model in config["benchmark"]["models"]:
            kind = model_kind(config, model)
            if allowed and kind not in allowed:
                out[(model, strategy)] = f"strategy '{strategy}' applies to {allowed}, model '{model}' is a {kind}"
            elif reason := not_applicable(spec["kind"], kind):
                out[(model, strategy)] = f"strategy '{strategy}' ({spec['kind']}) does not apply to a {kind}: {reason}"
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


def uses_cache(config: dict, cell: Cell) -> bool:
    """Whether the cell trains from the (dataset, model) embedding cache instead of the images."""
    kind = config["strategies"][cell.strategy]["kind"]
    return config["training"].get("embedding_cache", True) and kind in CACHEABLE_KINDS


def model_settings(config: dict, model: str) -> dict:
    """The resolved settings of a model: what its cells and its embedding cache depend on."""
    spec = dict(config["models"][model], name=model)
    spec["img_size"] = model_img_size(config, model)
    return spec


def model_img_size(config: dict, model: str) -> int:
    spec = config["models"][model]
    return spec.get("img_size") or resolve(spec["arch"]).img_size


def cell_settings(config: dict, cell: Cell) -> dict:
    """The resolved settings of one cell: everything that changes its result, nothing else."""
    model = model_settings(config, cell.model)
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
