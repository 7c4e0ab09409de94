"""Bad inputs of docs/reliability.md's table that no other test file covers: each gives an error naming what is wrong,
or a counted line in rejects.csv; never a silent wrong result or a traceback."""

import struct
import zlib

import numpy as np
import polars as pl
import pytest
from conftest import make_task_table
from PIL import Image

from ftbench import splits
from ftbench.data import tasks
from ftbench.data.adapters import build_table


def test_empty_class_after_filtering_names_task_and_class():
    table = pl.DataFrame(
        {
            "image_id": ["1", "2"],
            "patient_id": ["a", "b"],
            "file": ["f1", "f2"],
            "centre": [None] * 2,
            "view": ["PA", "AP"],
            "time": [0.0, 0.0],
            "y": ["Y", "N"],
        }
    )
    spec = {"dataset": "d", "label": "y", "positive": ["Y"], "negative": ["N"], "filter": {"view": ["PA"]}}
    with pytest.raises(ValueError, match=r"task 'death': class 0 \(negative\) is empty after filtering"):
        tasks.build(table, spec, "death")


def test_fold_whose_test_part_lacks_a_class_names_task_fold_and_centre():
    table = make_task_table(40, positive_every=3, centres=1).with_columns(
        pl.when(pl.col("patient_id").is_in(["p1", "p2", "p4", "p5"]))
        .then(pl.lit("onlyneg"))
        .otherwise(pl.lit("big"))
        .alias("centre")
    )
    validation = {"scheme": "loco", "centres": ["onlyneg", "big"], "val_fraction": 0.2, "seed": 0}
    with pytest.raises(
        ValueError,
        match=r"task 't', fold 0 \(test: .*onlyneg.*\): the test part has no patient of "
        r"class 1 \(positive\)",
    ):
        splits.make(table, validation, "t")


# ---- issue 17: nothing silent in the data -------------------------------------------------------------------------
def _images(root, names, shade=None):
    """Small PNGs under root/img, each with its own pixels unless ``shade`` gives two names the same one."""
    (root / "img").mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        value = (shade or {}).get(name, i)
        img = np.zeros((16, 16), np.uint8)
        img[value % 16, :] = 200  # a different row lit per value
        img[:, value // 16] = 100
        Image.fromarray(img).save(root / "img" / name)


def _manifest(root, text, **spec):
    (root / "m.csv").write_text(text)
    return {"adapter": "manifest", "path": str(root / "m.csv"), **spec}


def test_one_image_under_two_patients_is_an_error_naming_both_rows(tmp_path):
    _images(tmp_path, ["p1.png", "p2.png", "p3.png"])
    spec = _manifest(
        tmp_path,
        "file,patient_id,outcome\nimg/p1.png,P1,poor\n./img/p1.png,P99,good\nimg/p2.png,P2,poor\nimg/p3.png,P3,good\n",
    )
    with pytest.raises(
        ValueError,
        match=r"dataset 'd': 1 image\(s\) appear under more than one patient.*"
        r"image img/p1.png \(.*p1.png, patient P1\) and image ./img/p1.png "
        r"\(.*p1.png, patient P99\).*datasets.d.duplicates: drop",
    ):
        build_table("d", spec, tmp_path)


def test_a_renamed_copy_under_another_patient_is_found_by_its_pixels_and_dropped_when_asked(tmp_path):
    _images(tmp_path, ["a.png", "copy_of_a.jpg.png", "b.png"], shade={"a.png": 9, "copy_of_a.jpg.png": 9})
    spec = _manifest(
        tmp_path, "file,patient_id,outcome\nimg/a.png,P1,poor\nimg/copy_of_a.jpg.png,P2,good\nimg/b.png,P3,good\n"
    )
    with pytest.raises(ValueError, match="appear under more than one patient"):
        build_table("d", spec, tmp_path)
    table, rejects = build_table("d", {**spec, "duplicates": "drop"}, tmp_path)
    assert table["patient_id"].to_list() == ["P3"]
    assert rejects["kind"].to_list() == ["image under several patients"] * 2
    assert "img/a.png (patient P1), img/copy_of_a.jpg.png (patient P2)" in rejects["reason"][0]


def test_a_patients_second_copy_is_kept_once_and_counted_in_the_data_report(tmp_path):
    _images(tmp_path, ["a.png", "a_again.png", "b.png", "c.png"], shade={"a.png": 9, "a_again.png": 9})
    spec = _manifest(
        tmp_path,
        "file,patient_id,outcome\nimg/a.png,P1,poor\nimg/a.png,P1,poor\n"
        "img/a_again.png,P1,poor\nimg/b.png,P2,good\nimg/c.png,P3,good\n",
    )
    table, rejects = build_table("d", spec, tmp_path)
    assert table["patient_id"].to_list() == ["P1", "P2", "P3"]
    assert rejects["kind"].to_list() == ["duplicate image"] * 2
    assert [r.split(" as ")[0] for r in rejects["reason"]] == ["same file", "same pixels"]
    _, report = tasks.build(table, {"dataset": "d", "label": "outcome", "positive": ["poor"]}, "t", rejects)
    assert report["rejects"] == {"images": 2, "by_kind": {"duplicate image": 2}}


@pytest.mark.parametrize("placeholder", ["NaN", "nan", "NA", "N/A", "#N/A", "None", "null", " ", "?"])
def test_placeholder_patient_ids_are_rejected_not_merged_into_one_patient(tmp_path, placeholder):
    _images(tmp_path, [f"{i}.png" for i in range(6)])
    rows = [f"img/{i}.png,{placeholder},poor" for i in range(4)] + ["img/4.png,P4,good", "img/5.png,P5,good"]
    table, rejects = build_table(
        "d", _manifest(tmp_path, "file,patient_id,outcome\n" + "\n".join(rows) + "\n"), tmp_path
    )
    assert table["patient_id"].to_list() == ["P4", "P5"]
    assert rejects["kind"].to_list() == ["missing patient id"] * 4
    assert f"patient id {placeholder.strip()!r} means 'no value'" in rejects["reason"][0]


def test_ids_that_are_one_number_written_two_ways_are_an_error(tmp_path):
    _images(tmp_path, ["a.png", "b.png", "c.png"])
    spec = _manifest(tmp_path, "file,patient_id,outcome\nimg/a.png,7,poor\nimg/b.png, 7.0,poor\nimg/c.png,8,good\n")
    with pytest.raises(
        ValueError,
        match=r"patient ids '7' \(image img/a.png\) and '7.0' \(image img/b.png\) are the "
        "same number written differently",
    ):
        build_table("d", spec, tmp_path)


def test_iso_dates_are_read_as_times_and_choose_the_first_image(tmp_path):
    _images(tmp_path, ["late.png", "early.png", "other.png"])
    spec = _manifest(
        tmp_path,
        "file,patient_id,outcome,when\nimg/late.png,P1,poor,2020-04-02\n"
        "img/early.png,P1,poor,2020-03-30T08:00\nimg/other.png,P2,good,\n",
        columns={"time": "when"},
    )
    table, _ = build_table("d", spec, tmp_path)
    assert table["time_kind"].to_list() == ["date", "date", None]
    assert table["time"][0] - table["time"][1] == pytest.approx(2 + 16 / 24)  # days
    rows, report = tasks.build(
        table, {"dataset": "d", "label": "outcome", "positive": ["poor"], "images": "first"}, "t"
    )
    assert rows["image_id"].to_list() == ["img/early.png", "img/other.png"]
    assert report["times_read_as"] == {"date": 2, "missing": 1} and report["images_chosen_without_a_time"] == 1


@pytest.mark.parametrize(
    "times, message",
    [
        (["3", "yesterday"], r"m.csv line 3, column 'when': time 'yesterday' is neither a number nor an ISO date"),
        (
            ["3", "2020-01-01"],
            r"m.csv line 2, column 'when' gives a number as time, .*m.csv line 3, column 'when' a date",
        ),
    ],
)
def test_a_time_that_is_not_a_number_or_a_date_names_column_and_row(tmp_path, times, message):
    _images(tmp_path, ["a.png", "b.png"])
    spec = _manifest(
        tmp_path,
        f"file,patient_id,outcome,when\nimg/a.png,P1,poor,{times[0]}\nimg/b.png,P1,poor,{times[1]}\n",
        columns={"time": "when"},
    )
    with pytest.raises(ValueError, match=message):
        build_table("d", spec, tmp_path)


def _png_header(path, width: int, height: int) -> None:
    """A PNG whose header announces width x height (no pixel data needed to be refused)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def test_an_oversized_image_is_a_line_in_rejects_and_the_limit_a_setting(tmp_path):
    _images(tmp_path, ["a.png", "b.png"])
    _png_header(tmp_path / "img" / "bomb.png", 20000, 20000)
    spec = _manifest(tmp_path, "file,patient_id,outcome\nimg/a.png,P1,poor\nimg/b.png,P2,good\nimg/bomb.png,P3,good\n")
    table, rejects = build_table("d", spec, tmp_path)
    assert table.height == 2 and rejects["kind"].to_list() == ["oversized image"]
    assert "20000 x 20000 = 400,000,000 pixels, more than the limit of 178,956,970" in rejects["reason"][0]
    table, rejects = build_table("d", {**spec, "max_pixels": 200}, tmp_path)  # the 16 x 16 images too
    assert table.height == 0 and rejects["kind"].to_list() == ["oversized image"] * 3
    assert "(config key datasets.d.max_pixels)" in rejects["reason"][0]


def test_a_latin1_manifest_names_file_line_and_the_fix_or_reads_with_its_encoding(tmp_path):
    _images(tmp_path, ["a.png", "b.png"])
    (tmp_path / "m.csv").write_bytes(
        "file,patient_id,outcome\nimg/a.png,P1,poor\nimg/b.png,Ren\u00e9,bien\n".encode("latin-1")
    )
    spec = {"adapter": "manifest", "path": str(tmp_path / "m.csv")}
    with pytest.raises(
        ValueError,
        match=r"m.csv line 3, column 14: byte 0xe9 is not valid utf-8; save the file as "
        r"UTF-8, or set datasets.d.encoding to the file's encoding",
    ):
        build_table("d", spec, tmp_path)
    table, _ = build_table("d", {**spec, "encoding": "latin-1"}, tmp_path)
    assert table["patient_id"].to_list() == ["P1", "Ren\u00e9"]


def test_the_image_store_checks_free_space_first_and_never_leaves_its_temporary_file(tmp_path, monkeypatch):
    import errno
    import shutil

    from ftbench.data import store

    _images(tmp_path, [f"{i}.png" for i in range(4)])
    table = pl.DataFrame({"file": [str(tmp_path / "img" / f"{i}.png") for i in range(4)]})
    out = tmp_path / "images_64.npy"
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=10_000))
    with pytest.raises(
        OSError,
        match=r"not enough free disk space for the image store: it needs 0.0 MiB \(16,512 bytes\), .* has 0.0 MiB \(10,000 bytes\) available",
    ):
        store.build(table, 64, out)  # 4 x 64 x 64 + header = 16,512 bytes > 10,000
    monkeypatch.undo()
    real, calls = store.resize, []

    def disk_fills_at_the_third(pixels, side):
        calls.append(1)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(pixels, side)

    monkeypatch.setattr(store, "resize", disk_fills_at_the_third)
    with pytest.raises(
        OSError, match=r"the disk filled up while writing the image store .* the partial file was removed"
    ):
        store.build(table, 64, out)
    assert list(tmp_path.glob("*.npy")) == []


def test_a_report_draws_a_mean_outside_its_interval_and_fails_only_a_cell_whose_metric_has_the_wrong_type(tmp_path):
    import json

    from fake_grid import ONE_TASK, build_report, make_results

    root = tmp_path / "results"
    make_results(root, **ONE_TASK)
    cells = root / "cells" / "death" / "cnn_a"
    for fold in range(3):  # the mean over folds far above the bootstrap interval of the pooled predictions
        path = cells / "lp" / "full" / f"fold{fold}" / "metrics.json"
        path.write_text(json.dumps(json.loads(path.read_text()) | {"mcc": 0.99}))
    path = cells / "lora" / "k2" / "r0" / "fold1" / "metrics.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | {"pr_auc": "high"}))
    html = build_report(root, tmp_path / "out").read_text()
    assert (
        "Failed cells (1)" in html
        and "metrics.json: &#x27;pr_auc&#x27; is &#x27;high&#x27; (str), not a number" in html
    )


def test_the_data_report_counts_duplicates_placeholder_ids_and_times(tmp_path):
    import json

    from fake_grid import build_report, make_results

    from ftbench import cli

    data = tmp_path / "data"
    _images(data, ["a.png", "b.png", "c.png", "d.png", "e.png"])
    spec = _manifest(
        data,
        "file,patient_id,outcome,time\nimg/a.png,P1,poor,2020-03-01\nimg/a.png,P1,poor,2020-03-01\n"
        "img/b.png,#N/A,poor,2020-03-02\nimg/c.png,P2,poor,\nimg/d.png,P3,good,2020-03-04\n"
        "img/e.png,P4,good,2020-03-05\n",
    )
    table, rejects = data / "table.parquet", data / "rejects.csv"
    assert (
        cli.main(
            [
                "dataset",
                "--name",
                "d",
                "--spec",
                json.dumps(spec),
                "--resources",
                str(tmp_path),
                "--table",
                str(table),
                "--rejects",
                str(rejects),
            ]
        )
        == 0
    )
    root = tmp_path / "results"
    make_results(
        root, tasks={"death": 0.3}, models={"cnn_a": "cnn"}, strategies={"fft": 2.5}, regimes=("full",), folds=2
    )
    task = {"dataset": "d", "label": "outcome", "positive": ["poor"]}
    report = root / "tasks" / "death" / "data_report.json"
    assert (
        cli.main(
            [
                "task",
                "--name",
                "death",
                "--spec",
                json.dumps(task),
                "--table",
                str(table),
                "--rejects",
                str(rejects),
                "--out",
                str(tmp_path / "t.parquet"),
                "--report",
                str(report),
            ]
        )
        == 0
    )
    counts = json.loads(report.read_text())
    assert counts["rejects"] == {"images": 2, "by_kind": {"duplicate image": 1, "missing patient id": 1}}
    assert counts["times_read_as"] == {"date": 3, "missing": 1}
    html = build_report(root, tmp_path / "out").read_text()
    assert "times read as" in html and "duplicate image" in html and "missing patient id" in html
