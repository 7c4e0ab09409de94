"""The benchmark grid: which training cells exist and the settings each one resolves to.

Torch-free (used by the Snakefile). A cell is (task, model, strategy, regime, fold); its settings are a
plain dict holding only what changes its result, so that Snakemake's params trigger reruns exactly the
cells whose definition changed.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ftbench import TRAINING_VERSION
from ftbench.models import strategy_kinds as kinds
from ftbench.models.zoo import ZooEntry, resolve
from ftbench.plan.config import selected, task_validation

# Zoo entry fields that change no result: not part of a cell's settings
ZOO_BOOKKEEPING = ("family", "license")

# How many folds a validation scheme makes, from the config alone (the grid is built before any data):
# LOCO lists its centres in the config for exactly this reason (see splits.py).
FOLD_COUNTS = {
    "kfold": lambda v: v["folds"],
    "holdout": lambda v: 1,
    "loco": lambda v: len(v["centres"]),
}

TASK_TRAINING_KEYS = ("batch_size",)  # training settings a task may set for its own cells
TRAINING_KEYS = (
    "batch_size",
    "max_epochs",
    "patience",
    "lr",
    "weight_decay",
    "augment",
    "seed",
    "batchnorm_min_images",
    "schedule",
)

# The cell contract: the files a finished cell leaves in its folder (see Cell.path), written by ftbench.train.cell,
# moved by ftbench.train.job, read by ftbench.analysis.aggregate and watched by the partial report.
CELL_FILES = ("predictions.parquet", "metrics.json", "run.json")
CELL_PATH = re.compile(
    r"(?P<task>[^/]+)/(?P<model>[^/]+)/(?P<strategy>[^/]+)/(?P<group>full|k\d+)/"
    r"(?:r(?P<rep>\d+)/)?fold(?P<fold>\d+)$"
)


@dataclass(frozen=True)
class Cell:
    """One training run: (task, model, strategy, regime, fold).

    ``job``, ``leaf`` and ``path`` are computed once, when the cell is made: the Snakefile asks for them for
    every cell of the grid (tens of thousands), and each planning of a cluster job re-parses it."""

    task: str
    model: str
    strategy: str
    regime: str
    fold: int
    job: Job = field(init=False, repr=False, compare=False)
    leaf: str = field(init=False, repr=False, compare=False)  # the folder inside its job's: fold{F} or r{R}/fold{F}
    # its folder under results/cells: <task>/<model>/<strategy>/full/fold<F> or .../k<K>/r<R>/fold<F>
    path: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        job = _job(self.task, self.model, self.strategy, regime_group(self.regime))
        leaf = f"fold{self.fold}" if self.regime == "full" else f"r{self.regime.partition('r')[2]}/fold{self.fold}"
        object.__setattr__(self, "job", job)
        object.__setattr__(self, "leaf", leaf)
        object.__setattr__(self, "path", f"{job.path}/{leaf}")

    @classmethod
    def from_path(cls, cell_dir: str | Path) -> Cell:
        """The cell whose folder ``cell_dir`` is (any prefix before the cell path is ignored)."""
        match = CELL_PATH.search(Path(cell_dir).as_posix())
        if not match or (match["group"] == "full") != (match["rep"] is None):
            raise ValueError(
                f"{cell_dir}: not a cell directory (expected <task>/<model>/<strategy>/full/fold<F> "
                "or <task>/<model>/<strategy>/k<K>/r<R>/fold<F>)"
            )
        regime = match["group"] if match["rep"] is None else f"{match['group']}r{match['rep']}"
        return cls(match["task"], match["model"], match["strategy"], regime, int(match["fold"]))


@dataclass(frozen=True)
class Job:
    """What one Snakemake job trains: every fold (and few-shot repetition) of (task, model, strategy, group).

    Cells of a job share every setting but the fold and the draw, so grouping them loses no rerun
    precision, while it keeps the full protocol grid to hundreds of jobs instead of tens of thousands
    (Snakemake plans it in seconds; a cluster queue takes it), and loads data and weights once.
    """

    task: str
    model: str
    strategy: str
    group: str  # "full" or "k{K}"
    path: str = field(init=False, repr=False, compare=False)  # <task>/<model>/<strategy>/<group>

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", f"{self.task}/{self.model}/{self.strategy}/{self.group}")


@functools.cache
def _job(task: str, model: str, strategy: str, group: str) -> Job:
    """One Job object per job, shared by its cells."""
    return Job(task, model, strategy, group)


def job_of_cell(cell: str) -> str:
    """The path of a cell's job (its log name, its key in a cost projection): the cell path's first four parts."""
    return "/".join(cell.split("/")[:4])


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


def regime_settings(config: dict, regime: str) -> dict:
    """A cell's regime as its settings: ``parse_regime`` plus, few-shot, what the cell may validate on
    (``regimes.fewshot.validation``). Shared between calls: never change it."""
    return _regime_settings(regime, (config.get("regimes", {}).get("fewshot") or {}).get("validation", "kshot"))


@functools.cache
def _regime_settings(regime: str, validation: str) -> dict:
    parsed = parse_regime(regime)
    return parsed if parsed["name"] == "full" else parsed | {"validation": validation}


def regime_group(regime: str) -> str:
    """``full`` -> ``full``; ``k4r0`` -> ``k4``: the regimes one job trains together."""
    return regime if regime == "full" else regime.partition("r")[0]


def excluded(config: dict) -> dict[tuple[str, str], str]:
    """(model, strategy) pairs left out of the grid, with the reason printed to the user."""
    out = {}
    for strategy, spec in selected(config, "strategies").items():
        allowed = spec.get("applies_to")
        for model in config["benchmark"]["models"]:
            entry = resolve(config["models"][model]["arch"])
            if allowed and entry.kind not in allowed:
                out[(model, strategy)] = (
                    f"strategy '{strategy}' applies to {allowed}, model '{model}' is a {entry.kind}"
                )
            elif reason := kinds.not_applicable(spec["kind"], entry):
                out[(model, strategy)] = (
                    f"strategy '{strategy}' ({spec['kind']}) does not apply to model '{model}' ({entry.kind}): {reason}"
                )
    return out


def fold_count(config: dict, task: str) -> int:
    """The number of folds of a task under its validation scheme."""
    validation = task_validation(config, task)
    return FOLD_COUNTS[validation["scheme"]](validation)


def _kept(fraction: float, n: int) -> int:
    """How many of a class's ``n`` patients a stratified take of ``fraction`` keeps (``splits._stratified_take``:
    at least one, never all)."""
    return max(min(max(1, round(fraction * n)), n - 1), 0)


# The fewest patients a class of n has in the training part of any fold, per scheme, from the count alone (what
# ftbench.splits.make does with it; tests/test_s1.py checks the two agree); LOCO depends on the centres: absent.
TRAINING_MINIMUM = {
    "kfold": lambda n, v: (rest := n - -(-n // v["folds"])) - _kept(v["val_fraction"], rest),
    "holdout": lambda n, v: (rest := n - _kept(v["test_fraction"], n)) - _kept(v["val_fraction"], rest),
}


def not_possible(config: dict) -> dict[tuple[str, str], str]:
    """Few-shot groups ``(task, "k{K}")`` left out of the grid, with the reason: the task's smaller class, as
    ``cost.tasks.<task>.classes`` declares it, leaves fewer than K training patients in some fold, so K patients
    of that class cannot be drawn. Planning knows no other class count (no data is read to plan); a task without
    the declaration, or under LOCO, keeps its cells, and its few-shot draw refuses such a K naming the task."""
    ks = (config.get("regimes", {}).get("fewshot") or {}).get("k") or []
    out = {}
    for task in config["benchmark"]["tasks"]:
        classes = config.get("cost", {}).get("tasks", {}).get(task, {}).get("classes")
        validation = task_validation(config, task)
        if not classes or validation["scheme"] not in TRAINING_MINIMUM:
            continue
        name, n = min(((c, int(v)) for c, v in classes.items()), key=lambda item: item[1])
        fewest = TRAINING_MINIMUM[validation["scheme"]](n, validation)
        for k in ks:
            if k > fewest:
                out[(task, f"k{k}")] = (
                    f"K={k}: task '{task}' has {n} {name} patients (cost.tasks.{task}.classes), {fewest} of them in "
                    f"the training part of its smallest fold ({validation['scheme']}): not possible with this data"
                )
    return out


def cells(config: dict) -> list[Cell]:
    """Every training cell of the selected grid, in a stable order (without the few-shot groups the data cannot
    give: :func:`not_possible`)."""
    skip, names, impossible = excluded(config), regimes(config), not_possible(config)
    folds = {task: range(fold_count(config, task)) for task in config["benchmark"]["tasks"]}
    return [
        Cell(task, model, strategy, regime, fold)
        for task in config["benchmark"]["tasks"]
        for model in config["benchmark"]["models"]
        for strategy in config["benchmark"]["strategies"]
        if (model, strategy) not in skip
        for regime in names
        if (task, regime_group(regime)) not in impossible
        for fold in folds[task]
    ]


def _cache_serves(config: dict, strategy: str, model: str) -> bool:
    """Whether the embedding cache (the pooled output) is what the strategy's heads read on ``model``: it is
    enabled, and no candidate's head reads several blocks (``kinds.head_reads_tokens``)."""
    spec = config["strategies"][strategy]
    return config["training"].get("embedding_cache", True) and not (
        any(name in spec for name in kinds.HEAD_SETTINGS) and kinds.head_reads_tokens(spec, model_entry(config, model))
    )


def uses_cache(config: dict, strategy: str, model: str) -> bool:
    """Whether the strategy's cells on ``model`` train from the (dataset, model) embedding cache instead of the
    images."""
    mode = kinds.mode(config["strategies"][strategy]["kind"])
    return mode == "fitted" or (mode == "cached" and _cache_serves(config, strategy, model))


def caches_frozen_epochs(config: dict, strategy: str, model: str) -> bool:
    """Whether a trained strategy's first, frozen-backbone epochs (LP-FT's linear probing, gradual unfreezing's
    head-only epochs) train from the embedding cache: its jobs get the cache beside the image store."""
    return kinds.KINDS[config["strategies"][strategy]["kind"]].frozen_start and _cache_serves(config, strategy, model)


def model_weights(config: dict, model: str) -> str | None:
    """What a model's cells and embedding cache load: the user's weight path, the manifest of the weights stage,
    or nothing (random weights)."""
    spec = config["models"][model]
    if spec.get("weights"):
        return spec["weights"]
    return f"resources/weights/{model}/weights.json" if spec.get("pretrained") else None


def backbone_inputs(config: dict, dataset: str, model: str) -> dict[str, str]:
    """What running a model's backbone over a dataset reads (a training job or the embedding cache): the image
    store at the model's size, and its weights when it has any."""
    inputs = {"store": f"results/data/{dataset}/images_{model_img_size(config, model)}.npy"}
    if weights := model_weights(config, model):
        inputs["weights"] = weights
    return inputs


def job_inputs(config: dict, job: Job) -> dict[str, str]:
    """The files a training job reads, named as the train rule's inputs (``workflow/rules/train.smk``): the task
    table and folds; the image store (with the weights), or the embedding cache for a frozen backbone, or both
    when a strategy's first epochs are frozen; the few-shot draw."""
    dataset = config["tasks"][job.task]["dataset"]
    inputs = {"table": f"results/tasks/{job.task}/images.parquet", "split": f"results/splits/{job.task}/folds.parquet"}
    cache = f"results/embeddings/{dataset}/{job.model}.npy"
    if uses_cache(config, job.strategy, job.model):
        inputs["embeddings"] = cache
    else:
        inputs |= backbone_inputs(config, dataset, job.model)
        if caches_frozen_epochs(config, job.strategy, job.model):
            inputs["embeddings"] = cache
    if job.group != "full":
        inputs["fewshot"] = f"results/splits/{job.task}/fewshot/{job.group}.parquet"
    return inputs


def model_settings(config: dict, model: str) -> dict:
    """The resolved settings of a model: what its cells and its embedding cache depend on, with a digest of
    the zoo entry's facts (so that changing one in the zoo reruns exactly that model's cells; the entry itself
    is in ``ftbench.models.zoo``, and a strategy's adapter targets, resolved from it, are in the strategy's settings)."""
    spec = dict(config["models"][model], name=model)
    spec["img_size"] = model_img_size(config, model)
    spec.pop("weights", None)  # a path: jobs get the file as an input, so its content, not its name, counts
    entry = model_entry(config, model)
    facts = {key: value for key, value in asdict(entry).items() if key not in ZOO_BOOKKEEPING}
    spec["zoo"] = hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return spec


def model_entry(config: dict, model: str) -> ZooEntry:
    """The zoo entry a model of the config builds, at its image size."""
    spec = config["models"][model]
    return resolve(spec["arch"], model_img_size(config, model), spec.get("pretrained", False))


def model_img_size(config: dict, model: str) -> int:
    spec = config["models"][model]
    return spec.get("img_size") or resolve(spec["arch"]).img_size


def task_training(config: dict, task: str) -> dict:
    """The training settings of a task's cells: ``training`` with the task's own batch size over it."""
    return config["training"] | {
        key: config["tasks"][task][key] for key in TASK_TRAINING_KEYS if key in config["tasks"][task]
    }


def strategy_candidates(config: dict, task: str, model: str, strategy: str) -> list[dict]:
    """Every candidate ``{"strategy": ..., "training": ...}`` of a (task, model, strategy), fully resolved: see
    :func:`resolve_candidates`."""
    spec = {"name": strategy} | config["strategies"][strategy]
    return resolve_candidates(spec, model_entry(config, model), task_training(config, task))


def resolve_candidates(spec: dict, entry: ZooEntry, training: dict) -> list[dict]:
    """Every candidate ``{"strategy": ..., "training": ...}`` of a named strategy ``spec`` on ``entry``, defaults
    of ``ftbench.models.strategy_kinds`` filled in: one, unless a setting lists values to choose from on validation.
    The training settings are those of ``training`` a cell's result depends on, the strategy's overrides in."""
    fitted = kinds.mode(spec["kind"]) == "fitted"
    out = []
    for resolved in kinds.resolve(spec, entry, training):
        keys = ("seed",) if fitted else TRAINING_KEYS  # what a probe's result depends on
        cell_training = {key: training[key] for key in keys if key in training}
        cell_training |= {key: resolved.pop(key) for key in kinds.TRAINING_OVERRIDES if key in resolved}
        resolved.pop("applies_to", None)  # the grid's business, not the cell's
        out.append({"strategy": {"name": spec["name"]} | resolved, "training": cell_training})
    return out


def _shared_settings(config: dict, task: str, model: str, strategy: str) -> dict:
    """The settings every cell of a (task, model, strategy) shares. Memoised on what they are made of (the model's,
    the strategy's, the training and the task's entries), since every regime group's job asks for them: the
    returned dict is shared, never change it."""
    parts = (
        config["models"][model],
        config["strategies"][strategy],
        config["training"],
        {key: config["tasks"][task][key] for key in TASK_TRAINING_KEYS if key in config["tasks"][task]},
    )
    return _memo_shared(task, model, strategy, json.dumps(parts, sort_keys=True, default=str))


@functools.lru_cache(maxsize=4096)
def _memo_shared(task: str, model: str, strategy: str, parts: str) -> dict:
    config_models, config_strategy, training, task_keys = json.loads(parts)
    config = {
        "models": {model: config_models},
        "strategies": {strategy: config_strategy},
        "training": training,
        "tasks": {task: task_keys},
    }
    candidates = strategy_candidates(config, task, model, strategy)
    shared = {"version": TRAINING_VERSION, "task": task, "model": model_settings(config, model)} | candidates[0]
    return shared | ({"candidates": candidates} if len(candidates) > 1 else {})


def keeps_model(config: dict, task: str, group: str) -> dict:
    """``{"keep_model": True}`` for the full-data cells of a transfer source (``regimes.transfer``,
    ``ftbench.plan.transfer``): they write their trained model beside their files, for the external validation
    jobs to run. Part of the settings, so that a task becoming a source reruns its full-data jobs, whose finished
    cells kept no model; targets added to a source rerun nothing here."""
    sources = config.get("regimes", {}).get("transfer") or {}
    return {"keep_model": True} if group == "full" and sources.get(task) else {}


def cell_settings(config: dict, cell: Cell) -> dict:
    """The resolved settings of one cell: everything that changes its result, nothing else."""
    return (
        _shared_settings(config, cell.task, cell.model, cell.strategy)
        | keeps_model(config, cell.task, cell.job.group)
        | {"regime": regime_settings(config, cell.regime), "fold": cell.fold}
    )


def jobs(config: dict, grid_cells: list[Cell] | None = None) -> dict[Job, list[Cell]]:
    """The training jobs of the grid (of ``grid_cells``, when the caller has them) with their cells, in a stable
    order."""
    out: dict[Job, list[Cell]] = {}
    for cell in cells(config) if grid_cells is None else grid_cells:
        out.setdefault(cell.job, []).append(cell)
    return out


def job_settings(config: dict, job: Job, job_cells: list[Cell]) -> dict:
    """The settings of a job: the shared ones, and each cell's regime, fold and folder."""
    return (
        _shared_settings(config, job.task, job.model, job.strategy)
        | keeps_model(config, job.task, job.group)
        | {
            "group": job.group,
            "cells": [{"regime": regime_settings(config, c.regime), "fold": c.fold, "leaf": c.leaf} for c in job_cells],
        }
    )
