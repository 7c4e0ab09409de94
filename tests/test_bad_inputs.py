"""Bad inputs of the README's table that no other test file covers: each gives an error naming what is wrong."""

import polars as pl
import pytest
from conftest import make_task_table

from ftbench import splits
from ftbench.data import tasks


def test_empty_class_after_filtering_names_task_and_class():
    table = pl.DataFrame({"image_id": ["1", "2"], "patient_id": ["a", "b"], "file": ["f1", "f2"], "centre": [None] * 2,
                          "view": ["PA", "AP"], "time": [0.0, 0.0], "y": ["Y", "N"]})
    spec = {"dataset": "d", "label": "y", "positive": ["Y"], "negative": ["N"], "filter": {"view": ["PA"]}}
    with pytest.raises(ValueError, match=r"task 'death': class 0 \(negative\) is empty after filtering"):
        tasks.build(table, spec, "death")


def test_fold_whose_test_part_lacks_a_class_names_task_fold_and_centre():
    table = make_task_table(40, positive_every=3, centres=1).with_columns(
        pl.when(pl.col("patient_id").is_in(["p1", "p2", "p4", "p5"])).then(pl.lit("onlyneg"))
        .otherwise(pl.lit("big")).alias("centre"))
    validation = {"scheme": "loco", "centres": ["onlyneg", "big"], "val_fraction": 0.2, "seed": 0}
    with pytest.raises(ValueError, match=r"task 't', fold 0 \(test: .*onlyneg.*\): the test part has no patient of "
                                         r"class 1 \(positive\)"):
        splits.make(table, validation, "t")
