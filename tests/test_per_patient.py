"""One prediction per patient (the mean of its images' probabilities) wherever a patient has several images: the
headline metrics, the validation threshold, early stopping and candidate choice, ROC / PR / calibration, the
bootstrap; image-level metrics stay as secondary ``image_*`` columns."""

import json
import shutil

import numpy as np
import polars as pl
import pytest
import torch
from conftest import cell_settings
from fake_grid import write_cell as write_fake_cell
from sklearn import metrics as skm

from ftbench.analysis import aggregate, plots, report, stats
from ftbench.models import backbones, inputs, strategies
from ftbench.models.zoo import resolve
from ftbench.train import metrics
from ftbench.train.cell import fit_candidate, write_cell
from ftbench.train.loop import Part, fit, validation_loss

# A test part where one negative patient has many images: patient A's five images (mean 0.6) outvote the others
# when every image counts. Images are interleaved, as a part's rows may be.
IDS = ["A", "B", "A", "C", "A", "D", "A", "E", "A"]
LABELS = np.array([0, 1, 0, 1, 0, 0, 0, 1, 0])
PROBS = np.array([0.5, 0.55, 0.7, 0.8, 0.6, 0.2, 0.6, 0.5, 0.6])
PATIENT_LABELS = np.array([0, 1, 1, 0, 1])  # A..E
PATIENT_PROBS = np.array([0.6, 0.55, 0.8, 0.2, 0.5])  # A: (0.5 + 0.7 + 0.6 + 0.6 + 0.6) / 5


def _part(ids, labels, x: torch.Tensor | None = None) -> Part:
    labels = np.asarray(labels)
    frame = pl.DataFrame(
        {"row": range(len(ids)), "image_id": [f"i{k}" for k in range(len(ids))], "patient_id": ids, "label": labels}
    ).with_columns(centre=pl.lit("c0"))
    return Part(torch.zeros(len(ids), 1) if x is None else x, torch.from_numpy(labels).long(), frame)


def test_headline_metrics_score_one_prediction_per_patient_and_images_are_secondary():
    out = metrics.evaluate(metrics.Patients.of(IDS, LABELS), PROBS, threshold=0.52)
    # patient level, by hand with scikit-learn: A is the only patient above the cut wrongly; E (0.5) falls below it
    assert out["roc_auc"] == pytest.approx(skm.roc_auc_score(PATIENT_LABELS, PATIENT_PROBS)) == pytest.approx(4 / 6)
    assert out["pr_auc"] == pytest.approx(skm.average_precision_score(PATIENT_LABELS, PATIENT_PROBS))
    assert out["brier"] == pytest.approx(skm.brier_score_loss(PATIENT_LABELS, PATIENT_PROBS))
    assert out["mcc"] == pytest.approx(skm.matthews_corrcoef(PATIENT_LABELS, PATIENT_PROBS >= 0.52))
    assert (out["sensitivity"], out["specificity"]) == pytest.approx((2 / 3, 1 / 2))
    assert out["positive_rate"] == pytest.approx(3 / 5)
    assert (out["n_test"], out["n_test_patients"]) == (9, 5)  # images (what a cell costs), patients
    # the same metrics per image, where A counts five times: a different, secondary number
    assert out["image_roc_auc"] == pytest.approx(skm.roc_auc_score(LABELS, PROBS))
    assert out["image_mcc"] == pytest.approx(skm.matthews_corrcoef(LABELS, PROBS >= 0.52))
    assert out["image_specificity"] == pytest.approx(2 / 6) and out["image_positive_rate"] == pytest.approx(3 / 9)
    assert out["image_mcc"] < out["mcc"] - 0.1 and out["image_roc_auc"] != pytest.approx(out["roc_auc"])
    # with one image per patient the two agree exactly
    single = metrics.evaluate(metrics.Patients.of(list("abcde"), PATIENT_LABELS), PATIENT_PROBS, 0.52)
    assert all(single[f"image_{k}"] == single[k] for k in ("mcc", "roc_auc", "pr_auc", "brier", "ece"))


def test_a_patient_with_both_labels_has_no_patient_prediction():
    with pytest.raises(ValueError, match=r"patient\(s\) \['B'\] have images with both labels"):
        metrics.Patients.of(["A", "B", "B"], [0, 1, 0])


def _cell(tmp_path, val: Part, val_probs: np.ndarray) -> dict:
    settings = {
        "task": "t",
        "fold": 0,
        "model": {"name": "m"},
        "strategy": {"name": "s"},
        "regime": {"name": "full"},
        "training": {"seed": 0},
    }
    parts = {"train": _part(["x", "y"], [0, 1]), "val": val, "test": _part(IDS, LABELS)}
    outcome = {"history": {}, "test": PROBS, "val": val_probs, "trainable": 1, "total": 2, "gflops": 0.0}
    write_cell(tmp_path, settings, parts, outcome, [], torch.device("cpu"), 1, None, 0.0)
    return json.loads((tmp_path / "metrics.json").read_text())


def test_the_threshold_is_chosen_on_one_prediction_per_validation_patient(tmp_path):
    """The validation part is the test part's shape: per image, A's five negatives push the cut above most of them (0.75);
    per patient, A counts once and the cut that keeps every positive patient (0.35) wins."""
    patient_cut = metrics.best_threshold(PATIENT_LABELS, PATIENT_PROBS)
    brute = max(skm.matthews_corrcoef(PATIENT_LABELS, PATIENT_PROBS >= c) for c in PATIENT_PROBS)
    assert skm.matthews_corrcoef(PATIENT_LABELS, PATIENT_PROBS >= patient_cut) == pytest.approx(brute)
    assert patient_cut == pytest.approx(0.35) and metrics.best_threshold(LABELS, PROBS) == pytest.approx(0.75)
    written = _cell(tmp_path, _part(IDS, LABELS), PROBS)
    assert written["threshold"] == pytest.approx(patient_cut)
    assert written["mcc"] == pytest.approx(skm.matthews_corrcoef(PATIENT_LABELS, PATIENT_PROBS >= patient_cut))
    assert written["image_mcc"] == pytest.approx(skm.matthews_corrcoef(LABELS, PROBS >= patient_cut))
    assert pl.read_parquet(tmp_path / "predictions.parquet").height == len(IDS)  # still one row per image


def test_validation_loss_counts_each_patient_once():
    """Early stopping and candidate choice follow the class-weighted cross-entropy of the patients' predictions,
    classes weighted by their frequency among training patients (here 1 negative : 3 positives, over 7 images)."""
    train = _part(["n", "n", "n", "n", "p", "q", "r"], [0, 0, 0, 0, 1, 1, 1])
    weights = {0: 4 / 2, 1: 4 / 6}  # inverse frequency among the 4 training patients, a balanced set at 1
    expected = skm.log_loss(PATIENT_LABELS, PATIENT_PROBS, sample_weight=[weights[y] for y in PATIENT_LABELS])
    assert validation_loss(PROBS, _part(IDS, LABELS), train) == pytest.approx(expected, rel=1e-6)
    per_image = skm.log_loss(LABELS, PROBS, sample_weight=[weights[y] for y in LABELS])
    assert validation_loss(PROBS, _part(IDS, LABELS), train) != pytest.approx(per_image, rel=1e-3)


def test_early_stopping_keeps_the_patient_level_loss_of_its_best_epoch():
    entry = resolve("test_vit", img_size=32)
    model = backbones.build(entry)
    plan = strategies.apply(model, entry, {"kind": "lp"}, {"lr": 1e-2, "weight_decay": 0.0})
    gen = torch.Generator().manual_seed(0)
    ids = [f"p{i // 3}" for i in range(24)]  # 8 patients, 3 images each
    labels = np.array([(i // 3) % 2 for i in range(24)])
    parts = {
        part: _part(ids, labels, torch.randint(0, 255, (24, 32, 32), dtype=torch.uint8, generator=gen))
        for part in ("train", "val")
    }
    training = {"lr": 1e-2, "weight_decay": 0.0, "batch_size": 24, "max_epochs": 1, "patience": 5}
    history = fit(model, plan, parts, inputs.Preprocess(entry, torch.device("cpu"), False), training, gen)
    best = history["epochs"][history["best_epoch"]]
    assert best["val_loss"] == history["best_val_loss"]
    assert history["best_val_loss"] == pytest.approx(
        validation_loss(history["val_probs"], parts["val"], parts["train"])
    )


def test_a_probe_candidate_is_judged_on_the_patient_level_validation_loss():
    rng = np.random.default_rng(0)
    ids = [f"p{i // 4}" for i in range(40)]  # 10 patients, 4 images each
    labels = np.array([(i // 4) % 2 for i in range(40)])
    x = torch.from_numpy(rng.normal(size=(40, 8)).astype(np.float32) + labels[:, None])
    parts = {"train": _part(ids, labels, x), "val": _part(ids, labels, x.flip(0))}
    outcome = fit_candidate(cell_settings("test_resnet", "logreg", 1e-2, strategy={"C": 1.0}), parts)
    assert outcome["val_loss"] == pytest.approx(validation_loss(outcome["val"], parts["val"], parts["train"]))


@pytest.fixture(scope="module")
def fake_cells(tmp_path_factory):
    """Two folds of one (task, model, strategy) whose odd patients have two images with different probabilities."""
    root = tmp_path_factory.mktemp("perpatient")
    rng = np.random.default_rng(1)
    dirs = [
        write_fake_cell(root, "t", "cnn_a", "fft", "full", fold, list(range(20 * fold, 20 * fold + 20)), 0.4, 1.0, rng)
        for fold in range(2)
    ]
    cells, predictions = aggregate.collect(dirs)
    return dirs, cells, predictions


def test_the_cells_table_carries_patient_metrics_as_headline_and_image_metrics_beside(fake_cells):
    dirs, cells, predictions = fake_cells
    for directory, row in zip(dirs, cells.iter_rows(named=True)):
        written = json.loads((directory / "metrics.json").read_text())
        assert row["mcc"] == written["mcc"] and row["image_mcc"] == written["image_mcc"] != written["mcc"]
        assert (row["n_test"], row["n_test_patients"]) == (30, 20)  # 20 patients, 10 of them with two images
    assert predictions.height == 60  # one row per image, with its patient's prediction beside
    pair = predictions.filter(pl.col("patient_id") == "p1")
    assert pair.height == 2 and pair["patient_prob"].to_list() == [pair["prob"].mean()] * 2


def test_roc_pr_and_calibration_pool_one_prediction_per_patient(fake_cells):
    _, cells, predictions = fake_cells
    summary = aggregate.summarise(cells, predictions, n_resamples=0)
    [(model, strategy, y, p)] = plots.best_pairs(predictions, summary, "t")
    by_hand = predictions.group_by("cell", "patient_id").agg(pl.col("label").first(), pl.col("prob").mean())
    assert len(y) == by_hand.height == 40  # 2 folds x 20 patients, not 60 images
    assert sorted(p) == pytest.approx(sorted(by_hand["prob"]))
    assert skm.roc_auc_score(y, p) == pytest.approx(skm.roc_auc_score(by_hand["label"], by_hand["prob"]))


def test_bootstrap_cis_resample_the_patient_predictions_the_metrics_score(fake_cells):
    _, cells, predictions = fake_cells
    summary = aggregate.summarise(cells, predictions, n_resamples=200, seed=3).row(0, named=True)
    patients = aggregate.patient_predictions(predictions).sort("cell", "patient_id")
    ci = stats.bootstrap_ci(patients, 200, 3)
    assert (summary["mcc_ci_low"], summary["mcc_ci_high"]) == ci["mcc"]
    assert (summary["pr_auc_ci_low"], summary["pr_auc_ci_high"]) == ci["pr_auc"]
    per_image = predictions.with_columns(pl.col("patient_pred").alias("pred")).sort("cell", "image_id")
    assert stats.bootstrap_ci(per_image, 200, 3)["pr_auc"] != ci["pr_auc"]  # each image weighed: another CI
    assert summary["mcc_mean"] == pytest.approx(cells["mcc"].mean())
    assert summary["image_mcc_mean"] == pytest.approx(cells["image_mcc"].mean())


def test_the_report_shows_patient_metrics_as_headline_and_image_metrics_as_secondary(fake_cells):
    _, cells, predictions = fake_cells
    summary = aggregate.summarise(cells, predictions, n_resamples=0)
    empty = stats.Comparisons(**{name: pl.DataFrame(schema=schema) for name, schema in stats.SCHEMAS.items()})
    res = report.Results(cells=cells, summary=summary, predictions=predictions, comparisons=empty)
    best = report._key_results(res)
    assert "one prediction per patient" in best and '<th class="">MCC per image</th>' in best
    assert f"{summary['mcc_mean'][0]:.3f}" in best and f"{summary['image_mcc_mean'][0]:.3f}" in best
    table = report._results_table(summary)
    assert table["mcc"][0].startswith(f"{summary['mcc_mean'][0]:.3f}")
    assert table["image_mcc"][0] == summary["image_mcc_mean"][0] != summary["mcc_mean"][0]
    assert table.columns.index("image_mcc") > table.columns.index("ece")  # after every headline metric


def test_a_cell_whose_patient_has_both_labels_is_listed_as_failed_with_the_reason(fake_cells, tmp_path):
    dirs, _, _ = fake_cells
    broken = tmp_path / "cells" / "t" / "cnn_a" / "fft" / "full" / "fold0"
    shutil.copytree(dirs[0], broken)
    preds = pl.read_parquet(broken / "predictions.parquet")
    flipped = preds.with_columns(
        pl.when(pl.col("image_id") == "p1_0").then(1 - pl.col("label")).otherwise(pl.col("label")).alias("label")
    )
    flipped.write_parquet(broken / "predictions.parquet")
    row, rows = aggregate.read_cell(broken)
    assert rows is None and row["status"] == "failed"
    assert row["error"] == "predictions.parquet: patient(s) ['p1'] have images with both labels: no patient-level label"
