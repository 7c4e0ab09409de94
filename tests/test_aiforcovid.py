"""AIforCOVID from a local copy in its distributed layout: tasks, centres, rejects, LOCO, and the
instructions a user gets without the data."""

import numpy as np
import polars as pl
import pytest
import yaml
from conftest import ROOT
from fixtures_dicom import make_dicom, radiograph
from openpyxl import Workbook

from ftbench import splits
from ftbench.data import store, tasks
from ftbench.data.adapters import build_table
from ftbench.data.images import decode, resize

CONFIG = yaml.safe_load((ROOT / "config.yaml").read_text())
COLUMNS = ["ImageFile", "Hospital", "Age", "Sex", "Prognosis", "Death"]


def _sheet(path, rows):
    book = Workbook()
    book.active.append(COLUMNS)
    for row in rows:
        book.active.append(row)
    book.save(path)


@pytest.fixture
def afc(tmp_path):
    """Two releases, three hospitals, 8 patients each; one listed image missing, one image not listed."""
    root = tmp_path / "AIforCOVID"
    rng = np.random.default_rng(0)
    releases = {"": [], "_r2": []}
    for h, hospital in enumerate("ABC"):
        for i in range(8):
            pid = f"P_{h + 1}_{i}"
            severe = i % 2 == 0
            death = int(severe and i % 4 == 0)
            release = "" if i < 5 else "_r2"
            releases[release].append(
                [pid, hospital, float(rng.integers(40, 90)), "M", "SEVERE" if severe else "MILD", float(death)]
            )
            if pid != "P_3_7":  # listed, image missing
                make_dicom(
                    root / f"imgs{release}" / f"{pid}.dcm",
                    radiograph(),
                    patient=pid,
                    view="AP" if h else None,
                    photometric="MONOCHROME2",
                )
    make_dicom(root / "imgs" / "P_9_9.dcm", radiograph(), patient="P_9_9")  # an image no sheet lists
    for release, rows in releases.items():
        _sheet(root / f"AIforCOVID{release}.xlsx", rows)
    return root


def test_table_centres_and_rejects(afc, tmp_path):
    table, rejects = build_table("afc", {"adapter": "aiforcovid", "path": str(afc)}, tmp_path)
    assert table.height == 23 and table["patient_id"].is_unique().all()
    assert sorted(table["centre"].unique()) == ["A", "B", "C"]
    assert set(table["sheet"]) == {"AIforCOVID.xlsx", "AIforCOVID_r2.xlsx"}
    assert table.filter(pl.col("centre") == "A")["view"].unique().to_list() == ["unknown"]
    assert dict(zip(rejects["image_id"], rejects["kind"])) == {
        "P_9_9": "not in the clinical sheets",
        "P_3_7": "image missing",
    }


@pytest.mark.parametrize(
    "task, truth", [("afc_severity", lambda h, i: i % 2 == 0), ("afc_death", lambda h, i: i % 4 == 0)]
)
def test_protocol_tasks_and_leave_one_centre_out(afc, tmp_path, task, truth):
    table, _ = build_table("afc", {"adapter": "aiforcovid", "path": str(afc)}, tmp_path)
    spec = CONFIG["tasks"][task]
    rows, report = tasks.build(table, spec, task)
    expected = {f"P_{h + 1}_{i}": int(truth(h, i)) for h in range(3) for i in range(8) if (h, i) != (2, 7)}
    assert dict(rows.select("patient_id", "label").iter_rows()) == expected
    assert set(report["patients_per_centre_and_class"]) == {"A", "B", "C"}
    # LOCO as the config declares it, on the centres this copy has: one fold per centre, each test one centre
    validation = {**spec["validation"], "centres": ["A", "B", "C"], "val_fraction": 0.25, "seed": 0}
    split, summary = splits.make(rows, validation, task)
    centre = dict(rows.select("patient_id", "centre").unique().iter_rows())
    assert split["fold"].n_unique() == 3
    for fold, name in enumerate(["A", "B", "C"]):
        test = split.filter((pl.col("fold") == fold) & (pl.col("part") == "test"))["patient_id"]
        rest = split.filter((pl.col("fold") == fold) & (pl.col("part") != "test"))["patient_id"]
        assert {centre[p] for p in test} == {name} and name not in {centre[p] for p in rest}
        assert summary[fold]["test"] == f"centre {name}"


def test_missing_copy_fails_with_instructions(tmp_path):
    for path in (tmp_path / "nowhere", tmp_path):
        with pytest.raises(FileNotFoundError) as err:
            build_table("afc", {"adapter": "aiforcovid", "path": str(path)}, tmp_path)
        message = str(err.value)
        assert str(path) in message and "registration" in message and "aiforcovid.radiomica.it" in message
        assert "AIforCOVID.xlsx" in message and "imgs/" in message


def test_a_patient_in_two_releases_is_an_error(afc):
    _sheet(afc / "AIforCOVID_r3.xlsx", [["P_1_0", "A", 50.0, "F", "MILD", 0.0]])
    with pytest.raises(ValueError, match=r"\['P_1_0'\] are listed in more than one AIforCOVID\*\.xlsx"):
        build_table("afc", {"adapter": "aiforcovid", "path": str(afc)}, afc)


def _boxes(path, rows):
    book = Workbook()
    book.active.append(["img", "dx", "sx", "all", "label"])  # the first study's box file: only img and all are read
    for pid, box in rows:
        book.active.append([pid, None, None, box, "MILD"])
    book.save(path)


def test_lung_boxes_crop_each_image_to_a_square_about_its_box(afc, tmp_path):
    """S1's AIforCOVID configs give `bbox: box_data_AFC.xlsx`: each image is cropped to its lung box widened to a
    square, then resized; an image without a box is rejected with the reason; without the key nothing is cropped."""
    listed = [f"P_{h + 1}_{i}" for h in range(3) for i in range(8) if (h, i) != (2, 7)]
    _boxes(afc / "box_data_AFC.xlsx", [(pid, "[10, 5, 30, 15]") for pid in listed if pid != "P_2_3"])
    table, rejects = build_table("afc", {"adapter": "aiforcovid", "path": str(afc), "bbox": "box_data_AFC.xlsx"}, afc)
    assert table.height == 22 and "P_2_3" not in table["patient_id"].to_list()
    assert rejects.filter(pl.col("image_id") == "P_2_3")["kind"].to_list() == ["no lung box"]
    assert table.select(store.CROP).unique().rows() == [("10", "5", "30", "15")]
    store.build(table.head(2), 16, tmp_path / "cropped.npy")
    pixels = decode(table["file"][0])
    # 20 rows x 10 columns: the columns widen to 20 about their centre (10), stopped by the image's left edge
    assert (store.crop_square(pixels, (10, 5, 30, 15)) == pixels[10:30, 0:20]).all()
    assert (store.load(tmp_path / "cropped.npy")[0] == resize(pixels[10:30, 0:20], 16)).all()
    whole, _ = build_table("afc", {"adapter": "aiforcovid", "path": str(afc)}, afc)
    assert not set(store.CROP) & set(whole.columns)


def test_a_bad_or_missing_box_file_names_the_file_and_the_image(afc):
    spec = {"adapter": "aiforcovid", "path": str(afc), "bbox": "box_data_AFC.xlsx"}
    with pytest.raises(FileNotFoundError, match=r"box_data_AFC\.xlsx: lung box file not found.*remove the bbox key"):
        build_table("afc", spec, afc)
    _boxes(afc / "box_data_AFC.xlsx", [("P_1_0", "[10, 5, 30, 15]"), ("P_1_1", "[30, 5, 10, 15]")])
    with pytest.raises(ValueError, match=r"box_data_AFC\.xlsx, the row of img P_1_1: all = '\[30, 5, 10, 15\]'"):
        build_table("afc", spec, afc)
