"""Collect the cells' outputs into tables and summarise them over folds and repetitions.

Works on whatever cells exist: a cell is identified by its directory (see ``grid.Cell.path``), so a cell whose files
cannot be read is still listed, as failed, with the reason.
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from ftbench.analysis import stats
from ftbench.models.zoo import resolve
from ftbench.plan.grid import CELL_FILES, Cell
from ftbench.train.metrics import Patients

KEYS = ("task", "model", "strategy", "regime", "fold")
GROUP = ("task", "model", "strategy", "regime_group")
HEADLINE = (
    "mcc",
    "pr_auc",
    "roc_auc",
    "balanced_accuracy",
    "f1",
    "sensitivity",
    "specificity",
    "brier",
    "ece",
    "mcc@0.5",
)
# The headline metrics score one prediction per patient (ftbench.train.metrics.evaluate); the same metrics per image
# are secondary columns.
IMAGE_METRICS = tuple(f"image_{m}" for m in HEADLINE)
CELL_FACTS = ("threshold", "n_test", "n_test_patients", "positive_rate")
RUN_FIELDS = (
    "trainable_params",
    "total_params",
    "trainable_fraction",
    "gflops",
    "wall_seconds",
    "peak_memory_mb",
    "device",
    "device_name",
    "n_train",
    "n_val",
    "epochs",
    "train_seconds",
    "check_seconds",
)
CELL_SCHEMA = {
    "cell": pl.String,
    **{k: pl.String for k in KEYS},
    "fold": pl.Int64,
    "status": pl.String,
    "error": pl.String,
    "family": pl.String,
    **{k: pl.Float64 for k in HEADLINE + IMAGE_METRICS + CELL_FACTS},
    "trainable_params": pl.Int64,
    "total_params": pl.Int64,
    "trainable_fraction": pl.Float64,
    "gflops": pl.Float64,
    "wall_seconds": pl.Float64,
    "peak_memory_mb": pl.Float64,
    "device": pl.String,
    "device_name": pl.String,
    "n_train": pl.Int64,
    "n_val": pl.Int64,
    "epochs": pl.Int64,
    "train_seconds": pl.Float64,
    "check_seconds": pl.Float64,
    "train_patients": pl.Int64,
    "val_patients": pl.Int64,
    "validation": pl.String,
    "chosen": pl.String,
}
# What a cell file's value must be for each column type (JSON gives int, float, str; a bool is not a number).
VALUE_TYPES = {pl.Float64: ((int, float), "number"), pl.Int64: ((int,), "whole number"), pl.String: ((str,), "text")}
PREDICTION_COLUMNS = {
    "image_id": pl.String,
    "patient_id": pl.String,
    "label": pl.Int64,
    "centre": pl.String,
    "prob": pl.Float64,
}
# Added to each test image's row: its patient's prediction in the cell (the mean of the patient's images'
# probabilities, as the cell's headline metrics score it) and that prediction's 0/1 decision at the cell's threshold.
PATIENT_COLUMNS = {"patient_prob": pl.Float64, "patient_pred": pl.Int8}


def discover(roots: list[str | Path], grid: list[str] | None = None) -> list[Path]:
    """The cell directories under ``roots`` that hold all of a cell's files, the first root winning; with ``grid``
    (cell paths as in ``results/grid.txt``) only those of the grid, so cells of an older config stay out.

    The roots are ``results/cells`` and, for a partial report, ``results/checkpoints``, where the finished
    cells of a job still running (or stopped) wait until the job completes.
    """
    found: dict[str, Path] = {}
    for root in map(Path, roots):
        cells = (
            (root / cell for cell in grid)
            if grid is not None
            else (
                d.parent
                for pattern in ("*/*/*/*/fold*/metrics.json", "*/*/*/*/r*/fold*/metrics.json")
                for d in root.glob(pattern)
            )
        )
        for d in cells:
            if all((d / f).is_file() for f in CELL_FILES):
                found.setdefault(d.relative_to(root).as_posix(), d)
    return [found[key] for key in sorted(found)]


def cell_keys(cell_dir: str | Path) -> dict:
    """The cell's keys, read from its directory (see ``grid.Cell.path``)."""
    cell = Cell.from_path(cell_dir)
    return {
        "cell": cell.path,
        "task": cell.task,
        "model": cell.model,
        "strategy": cell.strategy,
        "regime": cell.regime,
        "fold": cell.fold,
    }


CELL_KEYS = {
    "cell": pl.String,
    "task": pl.String,
    "model": pl.String,
    "strategy": pl.String,
    "regime": pl.String,
    "fold": pl.Int64,
}


def cell_keys_frame(cell_dirs) -> pl.DataFrame:
    """``cell_keys`` of each cell directory, as a table (typed even when there are none)."""
    return pl.DataFrame([cell_keys(c) for c in cell_dirs], schema=CELL_KEYS)


def family(run: dict) -> str:
    """The model family the report groups by: the config's ``family``, else the zoo's, else 'unknown'."""
    model = run.get("settings", {}).get("model", {})
    if model.get("family"):
        return model["family"]
    try:
        return resolve(model["arch"]).family
    except (KeyError, TypeError):
        return "unknown"


def cell_choices(run: dict) -> dict:
    """What a cell learned and selected from: labelled patients per part, what its few-shot regime validated
    on, and the candidate settings chosen on validation (``key=value`` of the settings that differ)."""
    labels = run.get("labels_used") or {}
    candidates = run.get("candidates") or []
    chosen = next((c for c in candidates if c.get("chosen")), None)
    differing = sorted(
        {
            (part, key)
            for c in candidates
            for part in ("strategy", "training")
            for key in c[part]
            if any(c[part][key] != other[part].get(key) for other in candidates)
        }
    )
    return {
        "train_patients": labels.get("train_patients"),
        "val_patients": labels.get("val_patients"),
        "validation": run.get("settings", {}).get("regime", {}).get("validation", "full"),
        "chosen": ", ".join(f"{key}={chosen[part][key]}" for part, key in differing) if chosen else None,
    }


def read_cell(cell_dir: Path) -> tuple[dict, pl.DataFrame | None]:
    """One cell's row (keys, status, metrics, cost) and its test predictions (None unless the cell is ok)."""
    row = cell_keys(cell_dir)
    try:
        metrics = json.loads((cell_dir / "metrics.json").read_text())
        run = json.loads((cell_dir / "run.json").read_text())
        preds = pl.read_parquet(cell_dir / "predictions.parquet") if metrics.get("status") == "ok" else None
    except (OSError, ValueError, pl.exceptions.PolarsError) as err:
        return row | {"status": "failed", "error": f"unreadable cell output: {err}", "family": "unknown"}, None
    row |= {"status": metrics.get("status", "failed"), "error": metrics.get("error"), "family": family(run)}
    values = {k: ("metrics.json", metrics.get(k)) for k in HEADLINE + IMAGE_METRICS + CELL_FACTS} | {
        k: ("run.json", run.get(k)) for k in RUN_FIELDS
    }
    for key, (file, value) in values.items():  # a value of the wrong type is that cell's error, not the report's
        types, word = VALUE_TYPES[CELL_SCHEMA[key]]
        if value is not None and (isinstance(value, bool) or not isinstance(value, types)):
            return row | {
                "status": "failed",
                "error": f"{file}: '{key}' is {value!r} ({type(value).__name__}), not a {word}",
            }, None
    row |= {k: value for k, (_, value) in values.items()} | cell_choices(run)
    if preds is not None:
        preds = preds.select([pl.col(c).cast(t) for c, t in PREDICTION_COLUMNS.items()])
        try:
            patients = Patients.of(preds["patient_id"].to_numpy(), preds["label"].to_numpy())
        except ValueError as err:  # the cell cannot be scored per patient: its error, not the report's
            return row | {"status": "failed", "error": f"predictions.parquet: {err}"}, None
        patient_prob = patients.probs(preds["prob"].to_numpy())[patients.index]
        preds = preds.with_columns(
            pl.lit(row["cell"]).alias("cell"),
            pl.Series("patient_prob", patient_prob, dtype=pl.Float64),
            pl.Series("patient_pred", patient_prob >= metrics["threshold"], dtype=pl.Int8),
        )
    return row, preds


def _regime_columns(frame: pl.DataFrame) -> pl.DataFrame:
    k = pl.col("regime").str.extract(r"^k(\d+)r\d+$").cast(pl.Int32)
    return frame.with_columns(
        k.alias("k"),
        pl.col("regime").str.extract(r"^k\d+r(\d+)$").cast(pl.Int32).alias("repetition"),
        pl.when(k.is_null()).then(pl.col("regime")).otherwise(pl.format("k{}", k)).alias("regime_group"),
    )


def collect(cell_dirs: list[str | Path]) -> tuple[pl.DataFrame, pl.DataFrame]:
    """One row per cell (keys, status, metrics, cost) and one row per test image of every ok cell (with its
    patient's prediction, ``PATIENT_COLUMNS``)."""
    rows, preds = [], []
    for cell_dir in map(Path, cell_dirs):
        row, pred = read_cell(cell_dir)
        rows.append(row)
        if pred is not None:
            preds.append(pred)
    cells = _regime_columns(pl.DataFrame(rows, schema=CELL_SCHEMA, strict=False)).sort(list(KEYS))
    keys = cells.select("cell", *KEYS, "regime_group", "family")
    pred_schema = {**PREDICTION_COLUMNS, "cell": pl.String, **PATIENT_COLUMNS}
    predictions = pl.concat(preds) if preds else pl.DataFrame(schema=pred_schema)
    predictions = keys.join(predictions, on="cell", how="inner").sort([*KEYS, "image_id"])
    return cells, predictions


def patient_predictions(predictions: pl.DataFrame) -> pl.DataFrame:
    """One row per (cell, patient) of :func:`collect`'s per-image predictions: ``prob`` and ``pred`` are the
    patient's prediction and decision, the ones the cell's headline metrics score."""
    return (
        predictions.unique(["cell", "patient_id"], keep="first", maintain_order=True)
        .drop("image_id", "prob")
        .rename({"patient_prob": "prob", "patient_pred": "pred"})
    )


def summarise(
    cells: pl.DataFrame, predictions: pl.DataFrame, n_resamples: int = 1000, seed: int = 0, confidence: float = 0.95
) -> pl.DataFrame:
    """Per (task, model, strategy, regime group): mean and SD over folds (and few-shot repetitions) of every
    metric (headline and image-level), a patient-bootstrap CI of MCC and PR-AUC on one prediction per patient
    (``n_resamples`` 0: none), cost, and failed cells."""
    group = list(GROUP)
    ok = cells.filter(pl.col("status") == "ok")
    aggs = [
        pl.len().alias("cells"),
        pl.col("family").first(),
        pl.col("k").first(),
        pl.col("trainable_params").first(),
        pl.col("total_params").first(),
        pl.col("trainable_fraction").first(),
        pl.col("gflops").first(),
        (pl.col("wall_seconds").sum() / 3600).alias("compute_hours"),
        pl.col("peak_memory_mb").max(),
        pl.col("device").unique().sort().str.join(",").alias("device"),
    ]
    for m in HEADLINE + IMAGE_METRICS:
        aggs += [pl.col(m).mean().alias(f"{m}_mean"), pl.col(m).std().alias(f"{m}_sd")]
    aggs += [
        pl.col("positive_rate").mean(),
        pl.col("validation").first(),
        pl.col("train_patients").max().alias("train_patients_max"),
        pl.col("val_patients").max().alias("val_patients_max"),
    ]
    summary = ok.group_by(group).agg(aggs)
    failed = (
        cells.filter(pl.col("status") != "ok")
        .group_by(group)
        .agg(pl.len().alias("failed"), pl.col("family").first().alias("family_failed"))
    )
    summary = (
        summary.join(failed, on=group, how="full", coalesce=True)
        .with_columns(
            pl.col("failed").fill_null(0),
            pl.col("cells").fill_null(0),
            pl.col("family").fill_null(pl.col("family_failed")),
        )
        .drop("family_failed")
    )
    ci_rows = []
    if n_resamples and predictions.height:
        for key, rows in patient_predictions(predictions).group_by(group):
            ci = stats.bootstrap_ci(rows.sort("cell", "patient_id"), n_resamples, seed, confidence)
            ci_rows.append(
                dict(zip(group, key)) | {f"{m}_ci_{end}": ci[m][i] for m in ci for i, end in enumerate(("low", "high"))}
            )
    ci_schema = {
        **{g: pl.String for g in group},
        **{f"{m}_ci_{e}": pl.Float64 for m in stats.CI_METRICS for e in ("low", "high")},
    }
    return summary.join(pl.DataFrame(ci_rows, schema=ci_schema), on=group, how="left").sort(group)
