"""External validation's results (``regimes.transfer``): each (source, target) pair beside the source's own test folds.

The transfer jobs' folds are cells of a task named ``<source>@<target>`` (``ftbench.plan.transfer``), aggregated and
compared like the grid's cells (``results/external/``): here they are read back, split into source and target, and
joined with the source's internal result of the same model and strategy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import polars as pl

from ftbench.analysis import stats
from ftbench.plan.transfer import PAIR_SEPARATOR

METRICS = ("mcc", "pr_auc", "roc_auc")


@dataclass
class External:
    """The external validation's cells, summary and comparisons across pairs (each pair one block)."""

    cells: pl.DataFrame
    summary: pl.DataFrame
    comparisons: stats.Comparisons

    @classmethod
    def read(cls, folder: str | Path) -> External:
        """The tables the external rules write under ``folder`` (``results/external``)."""
        folder = Path(folder)
        return cls(
            pl.read_parquet(folder / "cells.parquet"),
            pl.read_parquet(folder / "summary.parquet"),
            stats.Comparisons.read(folder / "stats"),
        )


def _split(frame: pl.DataFrame) -> pl.DataFrame:
    parts = pl.col("task").str.split_exact(PAIR_SEPARATOR, 1)
    return frame.with_columns(
        pl.col("task").alias("pair"),
        parts.struct.field("field_0").alias("source"),
        parts.struct.field("field_1").alias("target"),
    )


def pairs(external: External, summary: pl.DataFrame) -> pl.DataFrame:
    """One row per (pair, model, strategy): the external summary's columns, ``source`` and ``target``, and the
    source's internal result of the same model and strategy on full data (``internal_<metric>``, the mean over its
    test folds) with the drop ``delta_<metric>`` = external - internal."""
    ext = _split(external.summary.filter(pl.col("regime_group") == "full"))
    internal = summary.filter(pl.col("regime_group") == "full").select(
        pl.col("task").alias("source"),
        "model",
        "strategy",
        *(pl.col(f"{m}_mean").alias(f"internal_{m}") for m in METRICS),
    )
    joined = ext.join(internal, on=["source", "model", "strategy"], how="left")
    return joined.with_columns(
        (pl.col(f"{m}_mean") - pl.col(f"internal_{m}")).alias(f"delta_{m}") for m in METRICS
    ).sort("pair", "model", "strategy")


def target_patients(external: External) -> pl.DataFrame:
    """Per pair: the target patients each fold's model was scored on (the most of any fold)."""
    return (
        _split(external.cells.filter(pl.col("status") == "ok"))
        .group_by("pair")
        .agg(pl.col("n_test_patients").max().cast(pl.Int64).alias("target patients"))
    )
