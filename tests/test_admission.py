"""The admission image (issue 22, part 1): each patient's first image by the dataset's time, its tie and
missing-time rules, where the times came from, and the warning `images: all` gets at planning and in the report."""

import csv
import json
from types import SimpleNamespace

import polars as pl
import pytest
from conftest import ROOT
from smk import snakemake, write_config

from ftbench.data import tasks
from ftbench.data.adapters import build_table

TASK = {"dataset": "d", "label": "y", "positive": ["1"]}  # no `images:`: the default


def _table(rows: list[tuple]) -> pl.DataFrame:
    """A dataset table from (image_id, patient_id, file, time, label) rows, in the given row order."""
    return pl.DataFrame(
        {
            "image_id": [r[0] for r in rows],
            "patient_id": [r[1] for r in rows],
            "file": [r[2] for r in rows],
            "centre": [None] * len(rows),
            "view": ["PA"] * len(rows),
            "time": [r[3] for r in rows],
            "y": [r[4] for r in rows],
        },
        schema_overrides={"time": pl.Float64, "centre": pl.String},
    )


def test_the_default_uses_each_patients_earliest_image_whatever_the_row_order():
    table = _table(
        [
            ("a3", "a", "/d/a3.png", 9.0, "1"),
            ("a1", "a", "/d/a1.png", -2.0, "1"),  # before symptom onset: still the earliest
            ("a2", "a", "/d/a2.png", 4.0, "1"),
            ("b2", "b", "/d/b2.png", 30.0, "0"),
            ("b1", "b", "/d/b1.png", 0.5, "0"),
            ("c1", "c", "/d/c1.png", 3.0, "0"),
        ]
    )
    rows, report = tasks.build(table, TASK, "t")
    assert dict(rows.select("patient_id", "image_id").iter_rows()) == {"a": "a1", "b": "b1", "c": "c1"}
    assert report["images_policy"] == "first" and report["images_per_patient"] == {"1": 3}
    assert report["images_per_patient_before_selection"] == {"1": 1, "2": 1, "3": 1}
    assert report["images_not_chosen"] == 3 and report["steps"]["first image per patient"] == 3
    assert report["time_source"] == {"the table's time column": 6}
    reversed_rows, _ = tasks.build(table.reverse(), TASK, "t")
    assert sorted(reversed_rows["image_id"]) == ["a1", "b1", "c1"]


@pytest.mark.parametrize("order", [1, -1])
def test_a_tie_at_the_first_time_goes_to_the_file_name_then_the_image_id_never_the_row_order(order):
    rows = [
        ("z-first", "a", "/x/case-b.png", 2.0, "1"),  # same day as case-a: the file name decides
        ("a-second", "a", "/y/case-a.png", 2.0, "1"),
        ("a-later", "a", "/a/case-0.png", 5.0, "1"),
        ("p2", "b", "/d/same.png", 1.0, "0"),  # same file name: the image id decides
        ("p1", "b", "/e/same.png", 1.0, "0"),
    ]
    chosen, report = tasks.build(_table(rows[::order]), TASK, "t")
    assert dict(chosen.select("patient_id", "image_id").iter_rows()) == {"a": "a-second", "b": "p1"}
    assert report["patients_with_a_tie_at_the_chosen_time"] == 2
    latest, _ = tasks.build(_table(rows[::order]), {**TASK, "images": "last"}, "t")
    assert dict(latest.select("patient_id", "image_id").iter_rows()) == {"a": "a-later", "b": "p1"}


def test_several_images_without_a_usable_time_leave_the_patient_out_listed_with_the_reason(tmp_path):
    from ftbench import cli

    table = _table(
        [
            ("n1", "none", "/d/n1.png", None, "1"),  # several images, none timed: which is first is unknown
            ("n2", "none", "/d/n2.png", None, "1"),
            ("s1", "some", "/d/s1.png", 3.0, "0"),  # one untimed image may be the admission image
            ("s2", "some", "/d/s2.png", None, "0"),
            ("o1", "one", "/d/o1.png", None, "1"),  # a single image: kept without a time
            ("k1", "kept", "/d/k1.png", 1.0, "0"),
            ("k2", "kept", "/d/k2.png", 0.0, "0"),
        ]
    )
    rows, report = tasks.build(table, TASK, "t")
    assert sorted(rows["image_id"]) == ["k2", "o1"]
    assert report["patients_left_out_without_a_usable_time"] == 2 and report["images_chosen_without_a_time"] == 1
    left = {r["image_id"]: r for r in report["left_out"]}
    assert set(left) == {"n1", "n2", "s1", "s2"} and {r["kind"] for r in left.values()} == {"no usable time"}
    assert left["s2"]["file"] == "/d/s2.png"
    assert left["s1"]["reason"].startswith("patient some: 1 of its 2 images have no time, so its first image cannot")
    assert "tasks.t.images: first" in left["n1"]["reason"]
    # the task stage writes them to its own rejects.csv
    table.write_parquet(tmp_path / "table.parquet")
    args = ["task", "--name", "t", "--spec", json.dumps(TASK), "--table", str(tmp_path / "table.parquet")]
    args += ["--out", str(tmp_path / "t.parquet"), "--report", str(tmp_path / "r.json")]
    assert cli.main([*args, "--left-out", str(tmp_path / "rejects.csv")]) == 0
    written = pl.read_csv(tmp_path / "rejects.csv")
    assert written.columns == ["image_id", "file", "kind", "reason"] and sorted(written["image_id"]) == sorted(left)
    # `all` keeps every image and leaves nobody out
    every, report = tasks.build(table, {**TASK, "images": "all"}, "t")
    assert every.height == table.height and report["left_out"] == []


def _earliest_by_offset(metadata, label: str, known: tuple[str, ...]) -> dict[str, tuple[float, set[str]]]:
    """Per labelled frontal patient whose every image has an offset: (its smallest offset, the file names at it),
    read with the csv module, independently of the adapter."""
    with open(metadata, newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["view"] in ("PA", "AP", "AP Supine") and r[label] in known]
    patients: dict[str, list[dict]] = {}
    for row in rows:
        patients.setdefault(row["patientid"], []).append(row)
    out = {}
    for pid, images in patients.items():
        if len(images) > 1 and any(r["offset"] in ("", "?", "NaN", "nan") for r in images):
            continue  # left out: a first image that cannot be told
        offsets = [float(r["offset"]) if r["offset"] not in ("", "NaN", "nan") else None for r in images]
        first = min((o for o in offsets if o is not None), default=None)
        out[pid] = (first, {r["filename"] for r, o in zip(images, offsets, strict=True) if o == first})
    return out


@pytest.mark.parametrize("label", ["survival", "went_icu", "intubated"])
def test_the_real_cohen_sample_gives_one_image_per_patient_the_earliest_by_offset(cohen_sample, tmp_path, label):
    table, rejects = build_table("cohen", {"adapter": "cohen", "path": str(cohen_sample)}, tmp_path)
    spec = {"dataset": "cohen", "label": label, "positive": ["Y"], "negative": ["N"]}
    spec["filter"] = {"view": ["PA", "AP", "AP Supine"]}
    rows, report = tasks.build(table, spec, label, rejects)
    expected = _earliest_by_offset(cohen_sample / "metadata.csv", label, ("Y", "N"))
    assert rows["patient_id"].n_unique() == rows.height == len(expected)
    for pid, time, image_id in rows.select("patient_id", "time", "image_id").iter_rows():
        first, names = expected[pid]
        assert time == first and image_id.split(":", 1)[1] in names, pid  # image ids are <row>:<file name>
    assert report["images_per_patient_before_selection"] != {"1": rows.height}  # the sample's patients have several
    assert set(report["time_source"]) == {"metadata.csv offset (days since symptoms or admission)", "missing"}
    if label == "survival":  # patient 326a: two images, neither with an offset
        assert {r["image_id"].split(":", 1)[1] for r in report["left_out"]} == {
            "41379_2020_536_Fig2_HTML-c1.png",
            "41379_2020_536_Fig2_HTML-c2.png",
        }


def test_synthetic_patients_have_several_images_on_shuffled_days_so_that_first_selects(tmp_path):
    spec = {"adapter": "synthetic", "synthetic": {"patients": 30, "side": 16, "untimed": 4}}
    table, _ = build_table("s", spec, tmp_path)
    timed = table.filter(pl.col("time").is_not_null())
    assert set(timed["time_source"]) == {"synthetic: day of the stay"}
    assert timed.group_by("patient_id").agg(pl.col("time").n_unique() == pl.len())["time"].all()  # distinct days
    rows, report = tasks.build(table, {"dataset": "s", "label": "outcome", "positive": ["poor"]}, "t")
    file_order = table.group_by("patient_id", maintain_order=True).first()
    assert set(rows["image_id"]) != set(file_order["image_id"])  # the first file is not always the first day
    earliest = timed.group_by("patient_id").agg(pl.col("time").min())
    assert rows.join(earliest, on="patient_id")["time"].equals(rows.join(earliest, on="patient_id")["time_right"])
    untimed = table.filter(pl.col("time").is_null()).group_by("patient_id").len()
    assert (
        untimed.height == 4
        and report["patients_left_out_without_a_usable_time"] == untimed.filter(pl.col("len") > 1).height
    )


@pytest.mark.parametrize(
    "tags, source",
    [
        ({"AcquisitionDate": "20200403", "AcquisitionTime": "081500"}, "AcquisitionDate + AcquisitionTime"),
        ({"AcquisitionDate": "20200403"}, "AcquisitionDate"),
        ({}, "StudyDate + StudyTime"),
        ({"StudyTime": ""}, "StudyDate"),
        ({"StudyDate": ""}, None),
    ],
)
def test_a_dicom_time_names_the_attributes_it_came_from(tmp_path, tags, source):
    import pydicom
    from fixtures_dicom import make_dicom, radiograph

    from ftbench.data import dicom

    path = make_dicom(tmp_path / "x.dcm", radiograph(), patient="P1")
    ds = pydicom.dcmread(path)
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    ds.save_as(path)
    fields = dicom.header(path)
    assert fields["time_source"] == source and (fields["time"] is None) == (source is None)


def test_a_manifest_time_names_its_column_and_kind(tmp_path):
    from PIL import Image

    for name in ("a", "b"):
        Image.new("L", (8, 8), 50 if name == "a" else 90).save(tmp_path / f"{name}.png")
    (tmp_path / "m.csv").write_text("file,patient_id,y,when\na.png,p,1,2020-03-01\nb.png,q,0,\n")
    spec = {"adapter": "manifest", "path": str(tmp_path / "m.csv"), "columns": {"time": "when"}}
    table, _ = build_table("m", spec, tmp_path)
    assert table["time_source"].to_list() == ["m.csv column 'when' (ISO date)", None]


def test_images_all_is_warned_of_at_planning(tmp_path):
    from ftbench.plan.config import load, resolved_grid

    assert "warning" not in resolved_grid(load(ROOT / "config.yaml"), 0)  # the default: the admission image
    override = write_config(tmp_path / "all.yaml", {"tasks": {"synthetic_outcome": {"images": "all"}}})
    demo = ROOT / "workflow" / "presets" / "demo.yaml"
    proc = snakemake(ROOT, tmp_path, "--configfile", str(demo), str(override), "-n", "--quiet", "rules")
    assert "ftbench: warning: synthetic_outcome: images: all, every image of a patient: later images may show the " in (
        proc.stderr
    )


def test_the_report_states_the_image_rule_and_warns_of_images_all():
    from ftbench.analysis.report import _data_html

    report = {"task": "t", "dataset": "d", "images_policy": "first", "time_source": {"StudyDate + StudyTime": 3}}
    report["images_per_patient_before_selection"] = {"1": 1, "2": 1}
    report["left_out"] = [{"image_id": "n1", "file": "/d/n1.png", "kind": "no usable time", "reason": "patient n"}]
    html = _data_html(SimpleNamespace(data_reports=[report], rejects={}))
    assert "StudyDate + StudyTime" in html and "images per patient before selection" in html
    assert "the 1 images its image rule left out" in html and "/d/n1.png" in html and "later images" not in html
    html = _data_html(SimpleNamespace(data_reports=[{**report, "images_policy": "all", "left_out": []}], rejects={}))
    assert "<p class='note'>This task uses every image of a patient: later images may show the outcome" in html
