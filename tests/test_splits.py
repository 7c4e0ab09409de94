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
    """K training and K validation patients per class from the fold's own parts (all of a validation class that
    has fewer), each draw nested across K, reproducible, and never the same patient twice."""
    table = make_task_table(100)
    split = splits.kfold(table, 5, 0.2, 0)
    labels = dict(splits.patients(table).iter_rows())
    d4 = splits.fewshot(table, split, 4, 0, 0)
    assert d4.equals(splits.fewshot(table, split, 4, 0, 0))
    assert not d4.equals(splits.fewshot(table, split, 4, 1, 0))
    d8 = splits.fewshot(table, split, 8, 0, 0)
    for fold in range(5):
        for part in ("train", "val"):
            pool = set(split.filter((pl.col("fold") == fold) & (pl.col("part") == part))["patient_id"])
            drawn = d4.filter((pl.col("fold") == fold) & (pl.col("part") == part))["patient_id"].to_list()
            assert set(drawn) <= pool and len(set(drawn)) == len(drawn)
            available = [sum(labels[p] == c for p in pool) for c in (0, 1)]
            assert sorted(labels[p] for p in drawn) == [0] * min(4, available[0]) + [1] * min(4, available[1])
            assert set(drawn) <= set(d8.filter((pl.col("fold") == fold) & (pl.col("part") == part))["patient_id"])


def test_fewshot_k_too_large_names_task_fold_class_and_count():
    table = make_task_table(30)
    split = splits.kfold(table, 5, 0.2, 0)
    with pytest.raises(
        ValueError, match=r"task 'death', fold 0, class 0 \(negative\): few-shot K=50 asked for but only \d+ "
    ):
        splits.fewshot(table, split, 50, 0, 0, "death")


# --- every scheme: hold-out, leave-one-centre-out, and properties over random tables -------------------


@st.composite
def patient_tables(draw):
    """A random task table: patients with a label, a centre and 1-3 images each."""
    n = draw(st.integers(4, 60))
    rate = draw(st.floats(0.05, 0.95))
    centres = draw(st.integers(1, 5))
    rows = []
    for p in range(n):
        label = int(draw(st.floats(0, 1)) < rate)
        centre = f"c{draw(st.integers(0, centres - 1))}"
        for i in range(draw(st.integers(1, 3))):
            rows.append(
                {
                    "row": len(rows),
                    "image_id": f"p{p}_{i}",
                    "patient_id": f"p{p:03d}",
                    "label": label,
                    "centre": centre,
                    "view": "PA",
                    "time": float(i),
                }
            )
    return pl.DataFrame(rows).with_columns(pl.col("label").cast(pl.Int8))


def validations(table: pl.DataFrame):
    return st.one_of(
        st.builds(lambda k: {"scheme": "kfold", "folds": k}, st.integers(2, 5)),
        st.builds(lambda f: {"scheme": "holdout", "test_fraction": f}, st.floats(0.1, 0.5)),
        st.just({"scheme": "loco", "centres": sorted(table["centre"].unique())}),
    ).map(lambda v: {**v, "val_fraction": 0.2, "seed": 0})


CLEAR_ERRORS = (
    r"task 't': class \d \((negative|positive)\) has \d+ patients, fewer than the \d folds asked for",
    r"task 't', fold \d+ \(test: .+\): class \d \((negative|positive)\) has [01] patients in the training "
    r"part, too few to carve a validation part with both classes",
    r"task 't', fold \d+ \(test: .+\): the test part has no patient of class \d \((negative|positive)\)",
)


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_property_every_scheme_keeps_patients_whole_and_both_classes_in_training(data):
    table = data.draw(patient_tables())
    validation = data.draw(validations(table))
    try:
        split, summary = splits.make(table, validation, "t")
    except ValueError as err:  # allowed only as one of the clear errors
        assert any(pl.select(pl.lit(str(err)).str.contains(e)).item() for e in CLEAR_ERRORS), str(err)
        return
    labels = dict(splits.patients(table).iter_rows())
    folds = split["fold"].unique().sort().to_list()
    expected_folds = {"kfold": validation.get("folds"), "holdout": 1, "loco": len(validation.get("centres", []))}
    assert len(folds) == expected_folds[validation["scheme"]] == len(summary)
    for fold in folds:
        mine = split.filter(pl.col("fold") == fold)
        assert mine["patient_id"].is_unique().all(), "a patient is in two partitions of one fold"
        assert set(mine["patient_id"]) == set(labels)
        for part in ("train", "val", "test"):
            assert {labels[p] for p in mine.filter(pl.col("part") == part)["patient_id"]} == {0, 1}
    tests = split.filter(pl.col("part") == "test")
    if validation["scheme"] != "holdout":  # every patient is tested exactly once
        assert tests["patient_id"].is_unique().all() and set(tests["patient_id"]) == set(labels)
    if validation["scheme"] == "loco":
        centre = dict(table.select("patient_id", "centre").unique().iter_rows())
        for fold, name in enumerate(validation["centres"]):
            mine = split.filter(pl.col("fold") == fold)
            assert {centre[p] for p in mine.filter(pl.col("part") == "test")["patient_id"]} == {name}
            assert name not in {centre[p] for p in mine.filter(pl.col("part") != "test")["patient_id"]}


def test_holdout_is_one_stratified_fold():
    table = make_task_table(100)
    split, summary = splits.make(table, {"scheme": "holdout", "test_fraction": 0.3, "val_fraction": 0.2, "seed": 0})
    assert split["fold"].unique().to_list() == [0]
    test = summary[0]["test_patients"]
    assert test == {"negative": round(0.3 * 66), "positive": round(0.3 * 34)}


def test_loco_on_a_dataset_with_centres(tmp_path):
    from ftbench.data import tasks
    from ftbench.data.adapters import build_table

    spec = {"adapter": "synthetic", "synthetic": {"patients": 60, "centres": 3, "side": 16, "seed": 1}}
    table, _ = build_table("syn", spec, tmp_path)
    rows, _ = tasks.build(table, {"dataset": "syn", "label": "outcome", "positive": ["poor"]}, "t")
    centres = sorted(rows["centre"].unique())
    split, summary = splits.make(rows, {"scheme": "loco", "centres": centres, "val_fraction": 0.2, "seed": 0}, "t")
    centre = dict(rows.select("patient_id", "centre").unique().iter_rows())
    assert split["fold"].n_unique() == len(centres) == 3
    for fold, name in enumerate(centres):
        test = split.filter((pl.col("fold") == fold) & (pl.col("part") == "test"))["patient_id"]
        assert {centre[p] for p in test} == {name} and set(test) == {p for p, c in centre.items() if c == name}
        assert summary[fold]["test"] == f"centre {name}"


def test_loco_centres_must_match_the_data():
    table = make_task_table(30, centres=3)
    with pytest.raises(
        ValueError,
        match=r"validation.centres lists \['c0', 'c1', 'cX'\] but the task's patients come "
        r"from \['c0', 'c1', 'c2'\] \(listed, not in the data: \['cX'\]; in the data, "
        r"not listed: \['c2'\]\)",
    ):
        splits.make(table, {"scheme": "loco", "centres": ["c0", "c1", "cX"], "val_fraction": 0.2, "seed": 0}, "t")


def test_loco_patient_in_two_centres_is_an_error():
    table = make_task_table(30, centres=2).with_columns(
        pl.when(pl.col("image_id") == "p1_1").then(pl.lit("c0")).otherwise(pl.col("centre")).alias("centre")
    )
    with pytest.raises(ValueError, match=r"patient\(s\) \['p1'\] have images from several centres"):
        splits.make(table, {"scheme": "loco", "centres": ["c0", "c1"], "val_fraction": 0.2, "seed": 0}, "t")
