"""Splits: no patient crosses partitions; few-shot draws are exact, nested and reproducible."""

import polars as pl
import pytest
from conftest import make_task_table
from hypothesis import given, settings
from hypothesis import strategies as st

from ftbench import splits


def _check_partitions(split: pl.DataFrame, table: pl.DataFrame, folds: int):
    assert split["fold"].n_unique() == folds
    for fold in range(folds):
        mine = split.filter(pl.col("fold") == fold)
        assert mine["patient_id"].is_unique().all(), "a patient is in two partitions of one fold"
        assert set(mine["patient_id"]) == set(table["patient_id"])
    tests = split.filter(pl.col("part") == "test")
    assert tests["patient_id"].is_unique().all() and set(tests["patient_id"]) == set(table["patient_id"])


def test_kfold_by_patient():
    table = make_task_table(60)
    split = splits.kfold(table, 5, 0.2, 0)
    _check_partitions(split, table, 5)
    labels = dict(splits.patients(table).iter_rows())
    for (fold, part), grp in split.group_by(["fold", "part"]):
        assert {labels[p] for p in grp["patient_id"]} == {0, 1}, f"fold {fold} {part} misses a class"


@settings(max_examples=40, deadline=None)
@given(patients=st.integers(12, 80), every=st.integers(2, 4), folds=st.integers(2, 5), seed=st.integers(0, 99))
def test_kfold_property_no_patient_crosses(patients, every, folds, seed):
    table = make_task_table(patients, positive_every=every, images=3)
    try:
        split = splits.kfold(table, folds, 0.25, seed)
    except ValueError as err:  # allowed only as the clear error about too few patients
        assert "patients" in str(err) and ("fewer than" in str(err) or "validation part" in str(err))
        return
    _check_partitions(split, table, folds)
    labels = dict(splits.patients(table).iter_rows())
    for _, grp in split.filter(pl.col("part") == "train").group_by("fold"):
        assert {labels[p] for p in grp["patient_id"]} == {0, 1}


def test_kfold_too_few_patients_in_a_class():
    with pytest.raises(ValueError, match=r"task 't': class 1 \(positive\) has 2 patients, fewer than the 5 folds"):
        splits.kfold(make_task_table(12, positive_every=6), 5, 0.2, 0, "t")


def test_fewshot_exact_reproducible_and_nested():
    table = make_task_table(100)
    split = splits.kfold(table, 5, 0.2, 0)
    labels = dict(splits.patients(table).iter_rows())
    d4 = splits.fewshot(table, split, 4, 0, 0)
    assert d4.equals(splits.fewshot(table, split, 4, 0, 0))
    assert not d4.equals(splits.fewshot(table, split, 4, 1, 0))
    d8 = splits.fewshot(table, split, 8, 0, 0)
    for fold in range(5):
        train = set(split.filter((pl.col("fold") == fold) & (pl.col("part") == "train"))["patient_id"])
        drawn = d4.filter(pl.col("fold") == fold)["patient_id"].to_list()
        assert set(drawn) <= train
        assert sorted(labels[p] for p in drawn) == [0] * 4 + [1] * 4
        assert set(drawn) <= set(d8.filter(pl.col("fold") == fold)["patient_id"])


def test_fewshot_k_too_large_names_task_fold_class_and_count():
    table = make_task_table(30)
    split = splits.kfold(table, 5, 0.2, 0)
    with pytest.raises(ValueError, match=r"task 'death', fold 0, class 0 \(negative\): few-shot K=50 asked for but only \d+ "):
        splits.fewshot(table, split, 50, 0, 0, "death")
