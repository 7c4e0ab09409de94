"""Collect the cells' outputs into one table and summarise them over folds and repetitions."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

KEYS = ("task", "model", "strategy", "regime", "fold")
HEADLINE = ("mcc", "pr_auc", "roc_auc", "balanced_accuracy", "f1", "sensitivity", "specificity", "brier", "ece",
            "mcc@0.5")
RUN_FIELDS = ("trainable_params", "total_params", "trainable_fraction", "gflops", "wall_seconds", "peak_memory_mb",
              "device")


def collect(job_dirs: list[str | Path]) -> pl.DataFrame:
    """One row per cell found in the job folders: keys, status, metrics and cost (metrics.json, run.json)."""
    rows = []
    for cell in sorted(m.parent for job in map(Path, job_dirs) for m in job.rglob("metrics.json")):
        row = json.loads((cell / "metrics.json").read_text())
        run = json.loads((cell / "run.json").read_text())
        row.update({k: run.get(k) for k in RUN_FIELDS})
        rows.append(row)
    if not rows:
        return pl.DataFrame(schema={k: pl.String for k in KEYS})
    frame = pl.DataFrame(rows, infer_schema_length=None)
    for col in HEADLINE:
        if col not in frame.columns:
            frame = frame.with_columns(pl.lit(None, pl.Float64).alias(col))
    k = pl.col("regime").str.extract(r"^k(\d+)r\d+$").cast(pl.Int32)
    return frame.with_columns(
        k.alias("k"),
        pl.col("regime").str.extract(r"r(\d+)$").cast(pl.Int32).alias("repetition"),
        pl.when(k.is_null()).then(pl.lit("full")).otherwise(pl.format("k{}", k)).alias("regime_group"),
    ).sort(list(KEYS))


def summarise(cells: pl.DataFrame) -> pl.DataFrame:
    """Mean and SD over folds (and few-shot repetitions) per (task, model, strategy, regime group)."""
    ok = cells.filter(pl.col("status") == "ok")
    groups = ["task", "model", "strategy", "regime_group"]
    aggs = [pl.len().alias("cells"),
            pl.col("trainable_params").first(), pl.col("trainable_fraction").first(), pl.col("gflops").first(),
            pl.col("wall_seconds").sum().alias("wall_seconds_total"), pl.col("peak_memory_mb").max()]
    for m in HEADLINE:
        aggs += [pl.col(m).mean().alias(f"{m}_mean"), pl.col(m).std().alias(f"{m}_sd")]
    summary = ok.group_by(groups).agg(aggs)
    failed = cells.filter(pl.col("status") != "ok").group_by(groups).agg(pl.len().alias("failed"))
    return (summary.join(failed, on=groups, how="full", coalesce=True)
            .with_columns(pl.col("failed").fill_null(0), pl.col("cells").fill_null(0))
            .sort(groups))
