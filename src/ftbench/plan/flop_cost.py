"""Device-hours of a grid on paper: each cell's image passes x its model's GFLOPs / (device peak x MFU).

Needs no pilot: ``snakemake cost --config cost='{device: a40}'`` (docs/pilot-and-cost.md). A trained cell
(``ftbench.train.loop``) runs, each epoch, its optimisation steps over the training images (a forward and a
backward pass), a BatchNorm recalibration pass over them (when the backbone has BatchNorms and any of it
trains that epoch), and a validation pass (the best epoch's validation predictions are kept); after the last
epoch it predicts the test images. An epoch whose backbone is frozen (LP-FT's first phase, gradual unfreezing's
first epochs) runs on the embedding cache where the job has it: no backbone pass. In forward passes of one
image::

    passes = sum over epochs e of [n_train x (1 + backward(e)) + n_train x recalibrates(e) + n_val] + n_test

summed over the strategy's candidates (each is trained; ``grid.strategy_candidates``). ``backward(e)`` is
the backward pass's FLOPs over the forward pass's (``BACKWARD``, per strategy kind). A cell's FLOPs are its
passes x its model's forward GFLOPs per image (``backbones.forward_gflops`` on the meta device), its seconds
the FLOPs / (the device's dense peak at ``cost.precision`` x ``cost.mfu``). Cells of strategies that train
from the embedding cache cost no device time here (a head on cached features); the cache itself costs one
forward pass per image of the dataset, once per (dataset, model) (:func:`embedding_passes`).

Epochs: the mean epochs of the (model, strategy)'s cells that ran, full data and few-shot apart (on any
device: early stopping does not depend on it); else ``max_epochs x cost.early_stopping``, at least the
``patience + 1`` epochs early stopping needs. Sizes (:func:`task_sizes`): counted from the data stage's task
table, folds and few-shot draws; for a task whose data is not there, derived from the patients and images
declared in ``cost.tasks`` (or, for TCIA collections the Imaging Data Commons serves, counted in its index) and
the task's validation scheme.

A cell's start-up (reading its data, building its model, loading weights) does no FLOPs: ``cost.startup``
seconds per cell (default 0) stand for it. Not counted: the adapters' own FLOPs and VPT's prompt tokens (a
few percent at most), and the head.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from ftbench.plan import grid
from ftbench.plan.config import task_validation


@dataclass(frozen=True)
class Device:
    """A GPU: its dense peak TFLOPS (without 2:4 sparsity) per precision, and the name its cells record."""

    gpu: str  # part of torch.cuda.get_device_name(): the measured cells that ran on it
    bf16: float  # tensor cores in bf16: what training uses on CUDA (ftbench.train.device.autocast)
    tf32: float  # tensor cores in TF32
    fp32: float  # CUDA cores, plain FP32


# The vendors' datasheets; the figures they give "with sparsity" (marked *) are halved to dense.
DEVICES: dict[str, Device] = {
    # NVIDIA A40 datasheet: FP32 37.4 TFLOPS; TF32 Tensor Core 74.8 | 149.6*; BF16 Tensor Core 149.7 | 299.4*
    "a40": Device("A40", bf16=149.7, tf32=74.8, fp32=37.4),
    # NVIDIA A100 Tensor Core GPU datasheet (40 and 80 GB, SXM and PCIe): FP32 19.5; TF32 156 | 312*; BF16 312 | 624*
    "a100": Device("A100", bf16=312.0, tf32=156.0, fp32=19.5),
    # NVIDIA H100 datasheet, H100 SXM: FP32 67; TF32 Tensor Core 989*; BF16 Tensor Core 1,979* (the PCIe and
    # NVL parts are slower: not this entry)
    "h100": Device("H100", bf16=989.5, tf32=494.5, fp32=67.0),
    # NVIDIA H200 datasheet, H200 SXM: FP32 67; TF32 Tensor Core 989*; BF16 Tensor Core 1,979* (the H100's
    # compute with more memory; the H200 NVL is slower: not this entry)
    "h200": Device("H200", bf16=989.5, tf32=494.5, fp32=67.0),
}


# ---- the backward pass, per strategy kind ------------------------------------------------------------------
# backward FLOPs / forward FLOPs of a training step in epoch ``epoch`` (ours; docs/pilot-and-cost.md). A layer's
# backward computes the gradient of its input (about its forward's FLOPs) and, where its weights train, of its
# weights (as much again). Gradients flow from the loss down to the lowest layer that trains.
Backward = Callable[[dict, int, int], float]  # (resolved strategy settings, blocks of the backbone, epoch)


def _everything(spec: dict, blocks: int, epoch: int) -> float:
    return 2.0  # every weight trains: input and weight gradients through the whole backbone


def _adapters(spec: dict, blocks: int, epoch: int) -> float:
    return 1.0  # adapters (biases, norms, prompts) in every block: input gradients all the way down, few weights


def _head(spec: dict, blocks: int, epoch: int) -> float:
    return 0.0  # the backbone is frozen: the backward pass stops at the head


def _lp_ft(spec: dict, blocks: int, epoch: int) -> float:
    return 0.0 if epoch < spec["lp_epochs"] else 2.0


def _top_blocks(trained: int, blocks: int) -> float:
    return 2.0 * min(trained, blocks) / blocks  # the top blocks of equal cost, weights and inputs


def _gradual_unfreezing(spec: dict, blocks: int, epoch: int) -> float:
    return _top_blocks(epoch // spec["unfreeze_every"], blocks)  # one more block every unfreeze_every epochs


def _last_block(spec: dict, blocks: int, epoch: int) -> float:
    return _top_blocks(spec["last_blocks"], blocks)


BACKWARD: dict[str, Backward] = {
    "fft": _everything,
    "l2_sp": _everything,
    "auto_rgn": _everything,
    "llrd": _everything,
    "lp": _head,
    "lp_ft": _lp_ft,
    "gradual_unfreezing": _gradual_unfreezing,
    "last_block": _last_block,
    **dict.fromkeys(
        (
            "lora",
            "vera",
            "ia3",
            "bitfit",
            "dora",
            "loha",
            "lokr",
            "adalora",
            "oft",
            "boft",
            "fourierft",
            "ln_tuning",
            "ssf",
            "vpt",
        ),
        _adapters,
    ),
}


def _epochs(epochs: float) -> Iterator[tuple[int, float]]:
    """(epoch, weight) of ``epochs`` epochs; a fractional mean weighs its last epoch by the fraction."""
    whole = int(epochs)
    yield from ((e, 1.0) for e in range(whole))
    if epochs > whole:
        yield whole, epochs - whole


def passes(
    n_train: float,
    n_val: float,
    n_test: float,
    epochs: float,
    backward: Callable[[int], float],
    batchnorm: bool,
    frozen_cached: bool = False,
) -> tuple[float, float]:
    """(forward, backward) passes, in forward passes of one image, that training and evaluating one candidate
    of a cell takes: the forward passes are what ``ftbench.train.loop`` runs, the backward ones their cost.
    ``frozen_cached``: epochs whose backbone is frozen train the head on the embedding cache (no pass)."""
    forward, back = n_test, 0.0  # the final predictions (the validation ones are the best epoch's)
    for epoch, weight in _epochs(epochs):
        ratio = backward(epoch)
        if frozen_cached and ratio == 0:
            continue
        recalibration = n_train if batchnorm and ratio > 0 else 0.0  # loop.recalibrate_batchnorm: any backbone trains
        forward += weight * (n_train + recalibration + n_val)
        back += weight * n_train * ratio
    return forward, back


def expected_epochs(training: dict, early_stopping: float) -> float:
    """Epochs of a cell without a pilot: ``max_epochs x early_stopping``, at least the patience + 1 epochs
    early stopping needs before it can stop."""
    return max(min(training["max_epochs"], training["patience"] + 1), training["max_epochs"] * early_stopping)


# ---- the models --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelCost:
    """What the FLOP model needs of a backbone, counted on the meta device."""

    gflops: float  # forward GFLOPs per image at the model's image size
    batchnorm: bool  # whether it has BatchNorms (recalibrated each epoch while it trains)
    blocks: int  # its blocks as layer-wise strategies see them (ftbench.models.blocks), stem included


def model_cost(config: dict, model: str) -> ModelCost:
    """The forward GFLOPs, BatchNorms and blocks of a config's model, from a meta-device build."""
    import torch

    from ftbench.models import backbones, blocks

    entry = grid.model_entry(config, model)
    with torch.device("meta"):
        full = backbones.build(entry)
    gflops = backbones.forward_gflops(full, entry.img_size)
    if gflops is None:
        raise ValueError(
            f"model '{model}': its forward GFLOPs could not be counted on the meta device (see the "
            "warning above), so `snakemake cost` cannot project it from FLOPs"
        )
    batchnorm = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in full.backbone.modules())
    return ModelCost(gflops, batchnorm, len(blocks.blocks(full.backbone, entry.blocks or None)))


# ---- the sizes ---------------------------------------------------------------------------------------------
# The share of a task's patients each fold tests, from its validation scheme (cf. grid.FOLD_COUNTS)
TEST_SHARE = {
    "kfold": lambda v: 1 / v["folds"],
    "holdout": lambda v: v["test_fraction"],
    "loco": lambda v: 1 / len(v["centres"]),  # centres taken as equal in size
}
Sizes = dict[tuple[str, int], tuple[float, float, float]]  # (regime, fold) -> (n_train, n_val, n_test) images


def _data_files(config: dict, task: str, results: Path) -> dict[str, Path]:
    """A task's table, folds and few-shot draws (one file per K of the grid), as the data stage names them."""
    groups = sorted({grid.regime_group(r) for r in grid.regimes(config)} - {"full"})
    splits = results / "splits" / task
    return {"table": results / "tasks" / task / "images.parquet", "split": splits / "folds.parquet"} | {
        group: splits / "fewshot" / f"{group}.parquet" for group in groups
    }


def data_inputs(config: dict, task: str, results: str = "results") -> list[str]:
    """The data stage's files the sizes of a task are counted from (what `snakemake cost` asks for)."""
    return [str(p) for p in _data_files(config, task, Path(results)).values()]


def _counted_sizes(config: dict, files: dict[str, Path]) -> Sizes:
    """Sizes counted from a task's table (one row per image), folds and few-shot draws."""
    images = pl.read_parquet(files["table"]).group_by("patient_id").len("images")
    split = pl.read_parquet(files["split"]).join(images, on="patient_id")
    parts = {
        (fold, part): n for fold, part, n in split.group_by("fold", "part").agg(pl.col("images").sum()).iter_rows()
    }
    folds = sorted({fold for fold, _ in parts})
    out: Sizes = {}
    for regime in grid.regimes(config):
        parsed = grid.regime_settings(config, regime)
        train = {fold: parts.get((fold, "train"), 0) for fold in folds}
        val = {fold: parts.get((fold, "val"), 0) for fold in folds}
        if "k" in parsed:
            draws = (
                pl.read_parquet(files[grid.regime_group(regime)])
                .filter(pl.col("repetition") == parsed["repetition"])
                .join(images, on="patient_id")
            )
            drawn = {
                (fold, part): n
                for fold, part, n in draws.group_by("fold", "part").agg(pl.col("images").sum()).iter_rows()
            }
            train = {fold: drawn.get((fold, "train"), 0) for fold in folds}
            val = {fold: _fewshot_val(parsed["validation"], drawn.get((fold, "val"), 0), val[fold]) for fold in folds}
        out |= {(regime, fold): (train[fold], val[fold], parts.get((fold, "test"), 0)) for fold in folds}
    return out


def _fewshot_val(validation: str, drawn: float, whole: float) -> float:
    """The validation images of a K-shot cell: its K-shot draw's, the fold's whole part's, or none."""
    return {"kshot": drawn, "full": whole, "none": 0.0}[validation]


def _declared_sizes(config: dict, task: str, declared: dict) -> Sizes:
    """Sizes of every fold from a task's declared patients and images and its validation scheme."""
    v = task_validation(config, task)
    per_patient = declared["images"] / declared["patients"]
    test = declared["patients"] * TEST_SHARE[v["scheme"]](v)
    val = (declared["patients"] - test) * v["val_fraction"]
    train = declared["patients"] - test - val
    out: Sizes = {}
    for regime in grid.regimes(config):
        parsed = grid.regime_settings(config, regime)
        k = parsed.get("k")
        patients = train if k is None else min(2 * k, train)  # K patients per class
        val_patients = val if k is None else _fewshot_val(parsed["validation"], min(2 * k, val), val)
        out |= {
            (regime, fold): (patients * per_patient, val_patients * per_patient, test * per_patient)
            for fold in range(grid.fold_count(config, task))
        }
    return out


def index_counts(config: dict, task: str) -> dict[str, int] | None:
    """Patients and images of a task on a TCIA collection the Imaging Data Commons serves, from IDC's index
    (``ftbench.data.idc``): every CR/DX image with ``images: all``, one per patient with ``first`` or ``last``;
    None for any other dataset."""
    spec = config["datasets"][config["tasks"][task]["dataset"]]
    if spec["adapter"] != "tcia" or spec.get("path") or spec.get("source", "idc") != "idc":
        return None
    from ftbench.data import idc

    images = config["tasks"][task].get("images", "all")
    rows = idc.series(spec["collection"], spec.get("modalities", ["CR", "DX"]), [images])
    if rows.is_empty():
        return None
    patients = rows["PatientID"].n_unique()
    return {"patients": patients, "images": int(rows["instanceCount"].sum()) if images == "all" else patients}


def declared_counts(config: dict, task: str) -> tuple[dict[str, int], str] | None:
    """A task's patients and images before its data stage has run: ``cost.tasks.<task>`` (``declared``), else
    IDC's index (``index``); None when neither knows them."""
    declared = settings(config)["tasks"].get(task)
    if declared is not None:
        return declared, "declared"
    counted = index_counts(config, task)
    return (counted, "index") if counted else None


def task_sizes(config: dict, task: str, results: Path) -> tuple[Sizes, str]:
    """A task's images per (regime, fold) and where they come from (``data``, ``declared`` or ``index``): counted
    from the data stage's files when they are all there, else derived from :func:`declared_counts`."""
    files = _data_files(config, task, results)
    if all(path.is_file() for path in files.values()):
        return _counted_sizes(config, files), "data"
    found = declared_counts(config, task)
    if found is None:
        missing = ", ".join(str(p) for p in files.values() if not p.is_file())
        raise ValueError(
            f"task '{task}': no sizes to project its cells with: the data stage's {missing} are missing "
            f"(`snakemake cost` makes them), and config key 'cost.tasks.{task}' declares none"
        )
    return _declared_sizes(config, task, found[0]), found[1]


# ---- the projection ----------------------------------------------------------------------------------------
def settings(config: dict) -> dict:
    """The ``cost`` settings with numbers as numbers (``--config`` passes nested values as text)."""
    spec = config.get("cost", {})
    unknown = set(spec.get("tasks") or {}) - set(config["tasks"])
    if unknown:
        raise ValueError(f"config key 'cost.tasks': {', '.join(sorted(unknown))} not a task of the catalogue (tasks:)")
    return {
        "device": spec.get("device"),
        "precision": spec.get("precision", "bf16"),
        "mfu": float(spec.get("mfu", 0.2)),
        "early_stopping": float(spec.get("early_stopping", 1.0)),
        "startup": float(spec.get("startup", 0.0)),
        "tasks": {
            task: {key: int(counts[key]) for key in ("patients", "images")}  # their classes: grid.not_possible
            for task, counts in (spec.get("tasks") or {}).items()
        },
    }


def rate(config: dict) -> float:
    """FLOP/s the configured device achieves: its dense peak at ``cost.precision`` x ``cost.mfu``."""
    s = settings(config)
    if s["device"] not in DEVICES:
        raise ValueError(f"config key 'cost.device': '{s['device']}' is not one of {', '.join(DEVICES)}")
    return getattr(DEVICES[s["device"]], s["precision"]) * 1e12 * s["mfu"]


def pilot_epochs(cells: pl.DataFrame) -> dict[tuple[str, str, str], float]:
    """Mean epochs per (model, strategy, ``full`` or ``few-shot``) of the cells that ran and trained."""
    ran = cells.filter((pl.col("status") == "ok") & (pl.col("epochs") > 0))
    kind = pl.when(pl.col("regime").str.starts_with("k")).then(pl.lit("few-shot")).otherwise(pl.lit("full"))
    means = ran.group_by("model", "strategy", kind.alias("kind")).agg(pl.col("epochs").mean())
    return {(m, s, k): e for m, s, k, e in means.iter_rows()}


@dataclass
class Estimate:
    """The FLOP model's projection: every cell, the embedding caches, and where sizes came from per task."""

    cells: pl.DataFrame
    embeddings: pl.DataFrame
    sizes_from: dict[str, str]


def estimate(
    config: dict, cells: pl.DataFrame, results: Path, flop_rate: float | None = None, startup: float | None = None
) -> Estimate:
    """Every cell of the config's grid with its FLOP-model passes, FLOPs and seconds: FLOPs / ``flop_rate``
    (FLOP/s; default: the configured device's :func:`rate`) + ``startup`` (default ``cost.startup``), with epochs
    from ``cells`` (those that ran) where they have them."""
    s = settings(config)
    flop_rate, startup = flop_rate or rate(config), s["startup"] if startup is None else startup
    grid_cells = grid.cells(config)
    sizes, sizes_from = {}, {}
    for task in dict.fromkeys(c.task for c in grid_cells):
        sizes[task], sizes_from[task] = task_sizes(config, task, results)
    models = {model: model_cost(config, model) for model in dict.fromkeys(c.model for c in grid_cells)}
    measured = pilot_epochs(cells)
    candidates = {}
    rows = []
    for cell in grid_cells:
        key = (cell.task, cell.model, cell.strategy)
        if key not in candidates:
            candidates[key] = grid.strategy_candidates(config, *key)
        n_train, n_val, n_test = sizes[cell.task][(cell.regime, cell.fold)]
        kind = "full" if cell.regime == "full" else "few-shot"
        cost, pilot = models[cell.model], measured.get((cell.model, cell.strategy, kind))
        total, epochs_used = 0.0, []
        if not grid.uses_cache(config, cell.strategy, cell.model):  # a head on cached features costs no device time
            for candidate in candidates[key]:
                epochs = pilot or expected_epochs(candidate["training"], s["early_stopping"])
                spec, backward = candidate["strategy"], BACKWARD[candidate["strategy"]["kind"]]
                total += sum(
                    passes(
                        n_train,
                        n_val,
                        n_test,
                        epochs,
                        lambda e, spec=spec, backward=backward: backward(spec, cost.blocks, e),
                        cost.batchnorm,
                        grid.caches_frozen_epochs(config, cell.strategy, cell.model),
                    )
                )
                epochs_used.append(epochs)
        rows.append(
            {
                "cell": cell.path,
                "n_train": n_train,
                "n_val": n_val,
                "n_test": n_test,
                "candidates": len(candidates[key]),
                "epochs": sum(epochs_used) / len(epochs_used) if epochs_used else None,
                "epochs_from": None if not epochs_used else "pilot" if pilot else "settings",
                "gflops": cost.gflops,
                "passes": total,
            }
        )
    schema = {
        "cell": pl.String,
        "n_train": pl.Float64,
        "n_val": pl.Float64,
        "n_test": pl.Float64,
        "candidates": pl.Int64,
        "epochs": pl.Float64,
        "epochs_from": pl.String,
        "gflops": pl.Float64,
        "passes": pl.Float64,
    }
    flops = pl.col("passes") * pl.col("gflops") * 1e9
    table = pl.DataFrame(rows, schema=schema).with_columns(
        flops.alias("flops"), (flops / flop_rate + startup).alias("flop_seconds")
    )
    gflops = {model: cost.gflops for model, cost in models.items()}
    embeddings = embedding_passes(config, grid_cells, results).with_columns(
        pl.col("model").replace_strict(gflops, return_dtype=pl.Float64).alias("gflops")
    )
    flops = pl.col("images") * pl.col("gflops") * 1e9
    embeddings = embeddings.with_columns(flops.alias("flops"), (flops / flop_rate).alias("flop_seconds"))
    return Estimate(table, embeddings, sizes_from)


def task_images(config: dict, task: str, results: Path) -> float:
    """A task's images: its table's rows when the data stage made it, else its :func:`declared_counts` images."""
    table = results / "tasks" / task / "images.parquet"
    if table.is_file():
        return float(pl.scan_parquet(table).select(pl.len()).collect().item())
    return float(declared_counts(config, task)[0]["images"])


def embedding_passes(config: dict, grid_cells: list[grid.Cell], results: Path) -> pl.DataFrame:
    """Images of each (dataset, model) embedding cache some cell trains from: one forward pass each. The dataset
    table's rows when the data stage made it, else (fewer) those of the dataset's largest task in the grid."""
    tasks: dict[tuple[str, str], set[str]] = {}
    for cell in grid_cells:
        if grid.uses_cache(config, cell.strategy, cell.model):
            tasks.setdefault((config["tasks"][cell.task]["dataset"], cell.model), set()).add(cell.task)
    rows = []
    for (dataset, model), names in tasks.items():
        table = results / "data" / dataset / "table.parquet"
        images = (
            float(pl.scan_parquet(table).select(pl.len()).collect().item())
            if table.is_file()
            else max(task_images(config, task, results) for task in names)
        )
        rows.append({"dataset": dataset, "model": model, "images": images})
    return pl.DataFrame(rows, schema={"dataset": pl.String, "model": pl.String, "images": pl.Float64})


def embedding_summary(embeddings: pl.DataFrame) -> pl.DataFrame:
    """The embedding caches' device-hours per model, as rows of ``cost.summarise``'s table (no cells)."""
    hours = embeddings.group_by("model", maintain_order=True).agg((pl.col("flop_seconds").sum() / 3600).alias("hours"))
    return hours.select(
        "model",
        pl.lit("(embedding cache)").alias("strategy"),
        pl.lit(0).alias("cells"),
        pl.lit(0).alias("measured_cells"),
        pl.lit(0.0).alias("done_hours"),
        pl.col("hours").alias("remaining_hours"),
        pl.lit(0).alias("unestimated_cells"),
        pl.col("hours").alias("total_hours"),
    )


def describe(config: dict, estimate: Estimate) -> list[str]:
    """What a FLOP-model projection assumed, in lines for the user."""
    s, cells = settings(config), estimate.cells
    device = DEVICES[s["device"]]
    peak = getattr(device, s["precision"])
    by_source = {
        source: sorted(task for task, origin in estimate.sizes_from.items() if origin == source)
        for source in ("data", "declared", "index")
    }
    pilot, settled = (cells.filter(pl.col("epochs_from") == source).height for source in ("pilot", "settings"))
    return [
        f"FLOP model: {s['device']} ({s['precision']}, {peak:g} TFLOPS dense) x MFU {s['mfu']:g} = "
        f"{peak * s['mfu']:.1f} TFLOP/s; {cells['flops'].sum() / 1e18:.1f} EFLOP in the cells, "
        f"{estimate.embeddings['flops'].sum() / 1e18:.3f} EFLOP in the embedding caches",
        f"epochs: the pilot's mean for {pilot} cells, max_epochs x {s['early_stopping']:g} (at least patience + 1) "
        f"for {settled}; every candidate of a strategy trained (cells with several: "
        f"{cells.filter(pl.col('candidates') > 1).height})",
        "sizes: counted from the data stage for "
        + (", ".join(by_source["data"]) or "no task")
        + "; derived from cost.tasks for "
        + (", ".join(by_source["declared"]) or "no task")
        + "; from IDC's index for "
        + (", ".join(by_source["index"]) or "no task"),
        f"start-up: {s['startup']:g} s per cell (cost.startup; {cells.height * s['startup'] / 3600:.1f} device-hours); "
        f"each further second of it adds {cells.height / 3600:.1f} device-hours",
    ]
