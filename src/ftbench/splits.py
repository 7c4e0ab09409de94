"""Where folds and few-shot draws are made: always by patient, so no patient crosses partitions.

Folds are a long table ``(fold, patient_id, part)`` with part in {train, val, test}: the test part is a
stratified k-fold of patients, and the validation part (early stopping, decision threshold) is carved
by patient from the rest. A few-shot draw takes K patients per class from a fold's train part.
"""

from __future__ import annotations

import numpy as np
import polars as pl
from sklearn.model_selection import StratifiedKFold, train_test_split

CLASS_NAMES = {0: "negative", 1: "positive"}


def patients(task_table: pl.DataFrame) -> pl.DataFrame:
    """One row per patient with its (single) label, sorted so that splits do not depend on row order."""
    return task_table.group_by("patient_id").agg(pl.col("label").first()).sort("patient_id")


def kfold(task_table: pl.DataFrame, folds: int, val_fraction: float, seed: int, task: str = "") -> pl.DataFrame:
    """Stratified k-fold by patient with a stratified validation part inside each training part."""
    pats = patients(task_table)
    ids, labels = pats["patient_id"].to_numpy(), pats["label"].to_numpy()
    for cls in (0, 1):
        n = int((labels == cls).sum())
        if n < folds:
            raise ValueError(f"task '{task}': class {cls} ({CLASS_NAMES[cls]}) has {n} patients, "
                             f"fewer than the {folds} folds asked for (validation.folds)")
    rows = []
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for fold, (rest, test) in enumerate(splitter.split(ids, labels)):
        for cls in (0, 1):
            n = int((labels[rest] == cls).sum())
            if n < 2:
                raise ValueError(f"task '{task}', fold {fold}: class {cls} ({CLASS_NAMES[cls]}) has {n} patients in the "
                                 "training part, too few to carve a validation part with both classes")
        n_val = min(max(2, round(val_fraction * len(rest))), len(rest) - 2)
        train, val = train_test_split(rest, test_size=n_val, stratify=labels[rest], random_state=seed + fold)
        for part, index in (("train", train), ("val", val), ("test", test)):
            rows += [(fold, pid, part) for pid in ids[index]]
    return pl.DataFrame(rows, schema={"fold": pl.Int32, "patient_id": pl.String, "part": pl.String}, orient="row")


def fewshot(task_table: pl.DataFrame, split: pl.DataFrame, k: int, repetition: int, seed: int,
            task: str = "") -> pl.DataFrame:
    """K training patients per class for every fold, drawn reproducibly.

    The draw for (fold, repetition) is the first K of one seeded permutation per class, so the draws
    of a repetition are nested across K (K=2 is inside K=4): few-shot curves compare like with like.
    """
    labels = dict(patients(task_table).iter_rows())
    rows = []
    for fold in sorted(split["fold"].unique().to_list()):
        train = sorted(split.filter((pl.col("fold") == fold) & (pl.col("part") == "train"))["patient_id"].to_list())
        rng = np.random.default_rng([seed, fold, repetition])
        for cls in (0, 1):
            pool = [p for p in train if labels[p] == cls]
            if k > len(pool):
                raise ValueError(f"task '{task}', fold {fold}, class {cls} ({CLASS_NAMES[cls]}): few-shot K={k} "
                                 f"asked for but only {len(pool)} training patients are available")
            order = rng.permutation(len(pool))
            rows += [(fold, pool[i]) for i in order[:k]]
    return pl.DataFrame(rows, schema={"fold": pl.Int32, "patient_id": pl.String}, orient="row")
