"""Where folds and few-shot draws are made: always by patient, so no patient crosses partitions.

Folds are a long table ``(fold, patient_id, part)`` with part in {train, val, test}. A validation scheme
(``SCHEMES``) picks each fold's test patients; the rest is the training part, from which a validation
part (early stopping, decision threshold) is carved by patient, stratified by class with both classes in
it. Schemes:

- ``kfold``: stratified k-fold of patients (``folds``);
- ``holdout``: one stratified test part of ``test_fraction`` of each class's patients;
- ``loco``: leave one centre out; fold i tests the patients of ``centres[i]``. The centres are listed in
  the config, so the number of folds (the grid) is known before the data is read, and checked here
  against the data with an error that names what differs.

A few-shot draw takes K patients per class from a fold's train part, and K per class from its validation
part for the cells that validate on K labels too.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import polars as pl
from sklearn.model_selection import StratifiedKFold

CLASS_NAMES = {0: "negative", 1: "positive"}


def patients(task_table: pl.DataFrame) -> pl.DataFrame:
    """One row per patient with its (single) label, sorted so that splits do not depend on row order."""
    return task_table.group_by("patient_id").agg(pl.col("label").first()).sort("patient_id")


def _stratified_take(labels: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Indices of ``fraction`` of each class (at least one, never all of it), drawn with ``rng``."""
    taken = []
    for cls in (0, 1):
        members = np.flatnonzero(labels == cls)
        n = min(max(1, round(fraction * len(members))), len(members) - 1)
        taken.append(rng.choice(members, size=max(n, 0), replace=False))
    return np.sort(np.concatenate(taken))


def _kfold(
    ids: np.ndarray, labels: np.ndarray, table: pl.DataFrame, v: dict, task: str
) -> list[tuple[np.ndarray, str]]:
    folds = v["folds"]
    for cls in (0, 1):
        n = int((labels == cls).sum())
        if n < folds:
            raise ValueError(
                f"task '{task}': class {cls} ({CLASS_NAMES[cls]}) has {n} patients, "
                f"fewer than the {folds} folds asked for (validation.folds)"
            )
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=v["seed"])
    return [(test, f"stratified fold {i + 1} of {folds}") for i, (_, test) in enumerate(splitter.split(ids, labels))]


def _holdout(
    ids: np.ndarray, labels: np.ndarray, table: pl.DataFrame, v: dict, task: str
) -> list[tuple[np.ndarray, str]]:
    test = _stratified_take(labels, v["test_fraction"], np.random.default_rng([v["seed"], 1]))
    return [(test, f"hold-out {v['test_fraction']:.0%} of each class")]


def _loco(ids: np.ndarray, labels: np.ndarray, table: pl.DataFrame, v: dict, task: str) -> list[tuple[np.ndarray, str]]:
    per_patient = table.group_by("patient_id").agg(pl.col("centre").unique().alias("centres"))
    several = per_patient.filter(pl.col("centres").list.len() > 1)["patient_id"].sort().to_list()
    if several:
        raise ValueError(
            f"task '{task}': patient(s) {several[:10]} have images from several centres; "
            "leave-one-centre-out needs one centre per patient"
        )
    centre_of = dict(per_patient.select("patient_id", pl.col("centres").list.first()).iter_rows())
    centres = np.array([centre_of[p] for p in ids], dtype=object)
    if any(c is None or c == "" for c in centres):
        raise ValueError(f"task '{task}': some patients have no centre; leave-one-centre-out needs the centre column")
    listed, found = list(v["centres"]), sorted(set(centres))
    if set(listed) != set(found):
        raise ValueError(
            f"task '{task}': validation.centres lists {listed} but the task's patients come from {found} "
            f"(listed, not in the data: {sorted(set(listed) - set(found))}; in the data, not listed: "
            f"{sorted(set(found) - set(listed))}); list exactly the task's centres"
        )
    return [(np.flatnonzero(centres == c), f"centre {c}") for c in listed]


# scheme -> (ids, labels, task table, validation settings, task) -> [(test indices, what the fold tests)]
SCHEMES: dict[str, Callable[[np.ndarray, np.ndarray, pl.DataFrame, dict, str], list[tuple[np.ndarray, str]]]] = {
    "kfold": _kfold,
    "holdout": _holdout,
    "loco": _loco,
}


def make(task_table: pl.DataFrame, validation: dict, task: str = "") -> tuple[pl.DataFrame, list[dict]]:
    """The folds of ``validation['scheme']`` with a validation part in each, and a summary per fold.

    Raises ``ValueError`` naming the task, fold and class when a test part lacks a class, or a training
    part holds fewer than two patients of a class (one for training, one for validation).
    """
    pats = patients(task_table)
    ids, labels = pats["patient_id"].to_numpy(), pats["label"].to_numpy()
    rows, summary = [], []
    for fold, (test, what) in enumerate(SCHEMES[validation["scheme"]](ids, labels, task_table, validation, task)):
        rest = np.setdiff1d(np.arange(len(ids)), test)
        for cls in (0, 1):
            if not (labels[test] == cls).any():
                raise ValueError(
                    f"task '{task}', fold {fold} (test: {what}): the test part has no patient of class "
                    f"{cls} ({CLASS_NAMES[cls]}), so ROC-AUC, PR-AUC and MCC are undefined there; "
                    "leave that centre out of validation.centres or use another scheme"
                )
            n = int((labels[rest] == cls).sum())
            if n < 2:
                raise ValueError(
                    f"task '{task}', fold {fold} (test: {what}): class {cls} ({CLASS_NAMES[cls]}) has {n} "
                    "patients in the training part, too few to carve a validation part with both classes"
                )
        val = rest[
            _stratified_take(
                labels[rest], validation["val_fraction"], np.random.default_rng([validation["seed"], fold])
            )
        ]
        train = np.setdiff1d(rest, val)
        parts = {"train": train, "val": val, "test": test}
        for part, index in parts.items():
            rows += [(fold, pid, part) for pid in ids[index]]
        summary.append(
            {
                "fold": fold,
                "test": what,
                **{
                    f"{part}_patients": {CLASS_NAMES[c]: int((labels[index] == c).sum()) for c in (0, 1)}
                    for part, index in parts.items()
                },
            }
        )
    split = pl.DataFrame(rows, schema={"fold": pl.Int32, "patient_id": pl.String, "part": pl.String}, orient="row")
    return split, summary


def kfold(task_table: pl.DataFrame, folds: int, val_fraction: float, seed: int, task: str = "") -> pl.DataFrame:
    """Stratified k-fold by patient with a stratified validation part inside each training part."""
    return make(task_table, {"scheme": "kfold", "folds": folds, "val_fraction": val_fraction, "seed": seed}, task)[0]


def fewshot(
    task_table: pl.DataFrame, split: pl.DataFrame, k: int, repetition: int, seed: int, task: str = ""
) -> pl.DataFrame:
    """K training patients per class for every fold, and a separate draw of K validation patients per class from
    the fold's validation part (all of a class where it has fewer), drawn reproducibly: ``(fold, patient_id, part)``.

    Each draw for (fold, repetition, part) is the first K of one seeded permutation per class, so the draws of a
    repetition are nested across K (K=2 is inside K=4): few-shot curves compare like with like. A K-shot cell
    that validates on the "val" draw learns and selects from at most 2K labelled patients per part.
    """
    labels = dict(patients(task_table).iter_rows())
    rows = []
    for fold in sorted(split["fold"].unique().to_list()):
        mine = split.filter(pl.col("fold") == fold)
        for part, stream in (("train", ()), ("val", (1,))):
            members = sorted(mine.filter(pl.col("part") == part)["patient_id"].to_list())
            rng = np.random.default_rng([seed, fold, repetition, *stream])
            for cls in (0, 1):
                pool = [p for p in members if labels[p] == cls]
                if part == "train" and k > len(pool):
                    raise ValueError(
                        f"task '{task}', fold {fold}, class {cls} ({CLASS_NAMES[cls]}): few-shot K={k} "
                        f"asked for but only {len(pool)} training patients are available; declare the task's "
                        f"patients per class as cost.tasks.{task}.classes and planning leaves such K out"
                    )
                order = rng.permutation(len(pool))
                rows += [(fold, pool[i], part) for i in order[:k]]
    return pl.DataFrame(rows, schema={"fold": pl.Int32, "patient_id": pl.String, "part": pl.String}, orient="row")


def fewshot_draws(
    task_table: pl.DataFrame, split: pl.DataFrame, k: int, repetitions: int, seed: int, task: str = ""
) -> pl.DataFrame:
    """Every repetition's draw of K patients per class and fold, with a ``repetition`` column."""
    return pl.concat(
        [
            fewshot(task_table, split, k, rep, seed, task).with_columns(pl.lit(rep, pl.Int32).alias("repetition"))
            for rep in range(repetitions)
        ]
    )
