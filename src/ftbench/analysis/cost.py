"""Projected device-hours of a grid from the measured cost of the cells that already ran.

Run a pilot (some jobs of the grid, on the devices the real run will use) or let the real run finish its
first jobs, then project every cell of the grid (``snakemake cost``). A cell's seconds come from, in order:

- ``measured``: the cell ran;
- ``job``: other cells of its job (same task, model, strategy and regime group) ran: their mean, since a
  job's cells differ only in fold and draw;
- ``scaled``: its (model, strategy) ran elsewhere: the pair's measured rates at the cell's task sizes (those
  measured for its task and regime group) and the pair's mean epochs for the regime kind (full or few-shot;
  early stopping decides them). A cell's time splits into optimisation steps (``train_seconds``, per training
  image), per-epoch checks (``check_seconds``: BatchNorm recalibration over the training images and the
  validation pass, so per training and per validation image), and the rest (start-up, and the test pass at
  the validation rate)::

      seconds = fixed + epochs * (train_rate * n_train + check_rate_train * n_train + check_rate_val * n_val)
                + check_rate_val * n_test

  ``train_rate`` is a ratio of sums, the two check rates a non-negative least-squares fit (full-data and
  few-shot cells differ in training images only), ``fixed`` the mean of what is left.
- ``flops``: with a FLOP-model projection (``ftbench.plan.flop_cost``, when ``cost.device`` names the device), its
  seconds on that device: image passes x the model's GFLOPs / (peak x MFU);
- null: nothing to go by (the pair never ran, or no cell of its task and regime group did); listed.

Embedding-cache builds (one per dataset and model) are not cells: the FLOP model adds them to the summary.
Measured seconds are a cell's wall time; when ``training.concurrent_cells`` cells of a job share the device at
once, its device time is their sum / that number (:func:`summarise`).
"""

from __future__ import annotations

import numpy as np
import polars as pl
from scipy.optimize import nnls

from ftbench.analysis.aggregate import cell_keys_frame

PAIR = ("model", "strategy")
JOB = ("task", "model", "strategy", "regime_group")


def measured_cells(cells: pl.DataFrame, device_name: str | None = None) -> pl.DataFrame:
    """The cells with a measured time, all from one device (``device_name``: a substring to select it)."""
    timed = cells.filter(pl.col("wall_seconds").is_not_null())
    if device_name is not None:
        timed = timed.filter(pl.col("device_name").str.contains(device_name, literal=True))
    devices = timed.group_by("device_name").len().sort("device_name")
    if devices.height > 1:
        listing = ", ".join(f"'{d}' ({n} cells)" for d, n in devices.iter_rows())
        raise ValueError(
            f"the measured cells ran on {devices.height} devices ({listing}): choose one with "
            "--device-name, since seconds on one device say nothing of another"
        )
    return timed.with_columns(_kind())


def _kind() -> pl.Expr:
    return pl.when(pl.col("regime_group") == "full").then(pl.lit("full")).otherwise(pl.lit("few-shot")).alias("kind")


def fit_pairs(measured: pl.DataFrame) -> pl.DataFrame:
    """Per (model, strategy): the rates of :func:`project`'s ``scaled`` formula, from that pair's cells."""
    # ok cells only (a diverged cell stopped early); a fitted probe runs no epochs: its time is all ``fixed``
    usable = measured.filter(
        pl.all_horizontal(
            pl.col("n_train", "n_val", "n_test", "epochs", "train_seconds", "check_seconds").is_not_null()
        )
        & (pl.col("status") == "ok")
    )
    rows = []
    for (model, strategy), cells in usable.group_by(PAIR, maintain_order=True):
        c = {name: cells[name].to_numpy().astype(float) for name in cells.columns if cells[name].dtype.is_numeric()}
        train_rate = c["train_seconds"].sum() / max((c["epochs"] * c["n_train"]).sum(), 1.0)
        (check_val, check_train), _ = nnls(
            np.column_stack([c["epochs"] * c["n_val"], c["epochs"] * c["n_train"]]), c["check_seconds"]
        )
        rest = c["wall_seconds"] - c["train_seconds"] - c["check_seconds"] - check_val * c["n_test"]
        rows.append(
            {
                "model": model,
                "strategy": strategy,
                "fixed": max(rest.mean(), 0.0),
                "train_rate": train_rate,
                "check_rate_train": check_train,
                "check_rate_val": check_val,
                "fitted_on": cells.height,
            }
        )
    schema = {
        "model": pl.String,
        "strategy": pl.String,
        "fixed": pl.Float64,
        "train_rate": pl.Float64,
        "check_rate_train": pl.Float64,
        "check_rate_val": pl.Float64,
        "fitted_on": pl.Int64,
    }
    return pl.DataFrame(rows, schema=schema)


def project(
    grid: list[str], cells: pl.DataFrame, device_name: str | None = None, paper: pl.DataFrame | None = None
) -> pl.DataFrame:
    """Every cell of ``grid`` (paths as in ``results/grid.txt``) with its seconds and their ``source``; ``paper``
    (columns ``cell``, ``flop_seconds``) gives the seconds of cells nothing measured could estimate."""
    measured = measured_cells(cells, device_name)
    target = cell_keys_frame(grid).with_columns(pl.col("regime").str.replace(r"r\d+$", "").alias("regime_group"))
    target = target.with_columns(_kind())
    jobs = measured.group_by(JOB).agg(pl.col("wall_seconds").mean().alias("job_seconds"))
    sizes = measured.group_by("task", "regime_group").agg(pl.col("n_train", "n_val", "n_test").mean())
    epochs = measured.group_by(*PAIR, "kind").agg(pl.col("epochs").mean())
    per_epoch = (pl.col("train_rate") + pl.col("check_rate_train")) * pl.col("n_train") + pl.col(
        "check_rate_val"
    ) * pl.col("n_val")
    scaled = pl.col("fixed") + pl.col("epochs") * per_epoch + pl.col("check_rate_val") * pl.col("n_test")
    out = (
        target.join(measured.select("cell", pl.col("wall_seconds").alias("cell_seconds")), on="cell", how="left")
        .join(jobs, on=JOB, how="left")
        .join(sizes, on=["task", "regime_group"], how="left")
        .join(epochs, on=[*PAIR, "kind"], how="left")
        .join(fit_pairs(measured), on=PAIR, how="left")
        .with_columns(scaled.alias("scaled_seconds"))
    )
    if paper is None:
        paper = pl.DataFrame(schema={"cell": pl.String, "flop_seconds": pl.Float64})
    out = out.join(paper.select("cell", "flop_seconds"), on="cell", how="left")
    return out.select(
        "cell",
        "task",
        "model",
        "strategy",
        "regime",
        "fold",
        pl.coalesce("cell_seconds", "job_seconds", "scaled_seconds", "flop_seconds").alias("seconds"),
        pl.when(pl.col("cell_seconds").is_not_null())
        .then(pl.lit("measured"))
        .when(pl.col("job_seconds").is_not_null())
        .then(pl.lit("job"))
        .when(pl.col("scaled_seconds").is_not_null())
        .then(pl.lit("scaled"))
        .when(pl.col("flop_seconds").is_not_null())
        .then(pl.lit("flops"))
        .alias("source"),
    )


def summarise(projected: pl.DataFrame, concurrent_cells: int = 1) -> pl.DataFrame:
    """Device-hours per (model, strategy): done (measured), projected for the rest, and cells without an estimate.

    Seconds from measured cells are wall times: ``concurrent_cells`` cells of a job at once on one device hold it
    for their sum / ``concurrent_cells``. The FLOP model's seconds are device time already (its MFU is how busy
    the cells keep the device, together)."""
    wall = pl.col("source").is_in(["measured", "job", "scaled"])
    hours = pl.when(wall).then(pl.col("seconds") / concurrent_cells).otherwise(pl.col("seconds")) / 3600
    measured = pl.col("source") == "measured"
    return (
        projected.group_by(PAIR)
        .agg(
            pl.len().alias("cells"),
            measured.sum().alias("measured_cells"),
            hours.filter(measured).sum().alias("done_hours"),
            hours.filter(~measured).sum().alias("remaining_hours"),
            pl.col("source").is_null().sum().alias("unestimated_cells"),
        )
        .with_columns((pl.col("done_hours") + pl.col("remaining_hours")).alias("total_hours"))
        .sort(PAIR)
    )
