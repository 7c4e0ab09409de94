"""Issue 24, the data stage: bad inputs that gave a silent wrong result, a traceback or an error without its cause.
Each test fails on the code before the fix (docs/reliability.md's bad-input table has a row for each)."""

import json
import os

import numpy as np
import polars as pl
import pytest
from fixtures_dicom import make_dicom, radiograph
from PIL import Image

from ftbench import cli
from ftbench.data import clinical, store, tasks
from ftbench.data.adapters import build_table


def _images(root, names):
    """Small PNGs under root/img, each with its own pixels (one lit row and column per name)."""
    (root / "img").mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        img = np.zeros((16, 16), np.uint8)
        img[i % 16, :] = 200
        img[:, i // 16] = 100
        Image.fromarray(img).save(root / "img" / name)


def _manifest(root, text, **spec):
    (root / "m.csv").write_text(text)
    return {"adapter": "manifest", "path": str(root / "m.csv"), **spec}


def _table(labels, patients=None):
    n = len(labels)
    return pl.DataFrame(
        {
            "image_id": [str(i) for i in range(n)],
            "patient_id": patients or [f"p{i}" for i in range(n)],
            "file": [f"f{i}.png" for i in range(n)],
            "centre": [None] * n,
            "view": ["PA"] * n,
            "time": [0.0] * n,
            "outcome": labels,
        }
    )


# ---- 3: labels come only from declared values --------------------------------------------------------------------
def test_missing_value_spellings_in_a_label_column_are_missing_not_negatives():
    labels = ["poor", "poor", "good", "NA", "nan", "#N/A", "null", "?", None, ""]
    rows, report = tasks.build(_table(labels), {"dataset": "d", "label": "outcome", "positive": ["poor"]}, "t")
    assert rows["label"].to_list() == [1, 1, 0]
    assert report["unlabelled_images"] == 7
    classes = {v["value"]: (v["images"], v["class"]) for v in report["label_values"]}
    assert classes["good"] == (1, "0 (negative: not declared positive)")
    assert classes["poor"] == (2, "1 (positive)")
    assert {classes[v][1] for v in ("NA", "nan", "#N/A", "null", "?", None, "")} == {"left out (missing)"}


@pytest.mark.parametrize("spelling", ["poor ", "Poor", "POOR", "p\u03bfor", " poor"])
def test_a_declared_value_spelled_differently_is_an_error_naming_both_spellings(spelling):
    table = _table(["poor", "good", spelling, "good"])
    with pytest.raises(ValueError) as err:
        tasks.build(table, {"dataset": "d", "label": "outcome", "positive": ["poor"]}, "t")
    message = str(err.value)
    assert f"has {spelling!r}" in message and "declared positive value 'poor'" in message
    assert "image 2 (f2.png)" in message and "config key 'tasks.t'" in message
    if spelling == "p\u03bfor":
        assert "GREEK SMALL LETTER OMICRON" in message


def test_a_look_alike_of_a_declared_negative_or_unknown_value_is_an_error_too():
    spec = {"dataset": "d", "label": "outcome", "positive": ["Y"], "negative": ["N"], "unknown": ["not stated"]}
    with pytest.raises(ValueError, match=r"has 'n'.*declared negative value 'N'"):
        tasks.build(_table(["Y", "N", "n"]), spec, "t")
    with pytest.raises(ValueError, match=r"has 'Not  stated'.*declared unknown value 'not stated'"):
        tasks.build(_table(["Y", "N", "Not  stated"]), spec, "t")


def test_the_task_stage_prints_each_raw_label_value_with_its_count_and_class(tmp_path, capsys):
    _table(["poor", "good", "good", "NA"]).write_parquet(tmp_path / "t.parquet")
    spec = {"dataset": "d", "label": "outcome", "positive": ["poor"]}
    argv = ["task", "--name", "t", "--spec", json.dumps(spec), "--table", str(tmp_path / "t.parquet")]
    assert cli.main([*argv, "--out", str(tmp_path / "o.parquet"), "--report", str(tmp_path / "r.json")]) == 0
    printed = capsys.readouterr().out
    assert "label values of column 'outcome'" in printed
    assert "'good'       2  0 (negative: not declared positive)" in printed
    assert "'NA'         1  left out (missing)" in printed
    report = json.loads((tmp_path / "r.json").read_text())
    assert {"value": "poor", "images": 1, "class": "1 (positive)"} in report["label_values"]


# ---- 5, 14, 15: the manifest's text ------------------------------------------------------------------------------
def test_a_header_naming_a_column_twice_is_an_error_naming_it(tmp_path):
    _images(tmp_path, ["a.png", "b.png"])
    spec = _manifest(tmp_path, "file,patient_id,outcome,outcome\nimg/a.png,P1,poor,good\nimg/b.png,P2,good,good\n")
    with pytest.raises(ValueError, match=r"m.csv line 1: the header names column\(s\) \['outcome'\] more than once"):
        build_table("d", spec, tmp_path)


def test_a_row_with_an_unquoted_comma_names_file_and_line(tmp_path):
    _images(tmp_path, ["a.png", "b.png"])
    spec = _manifest(tmp_path, 'file,patient_id,note\nimg/a.png,P1,"ok, quoted"\nimg/b.png,P2,Smith, J.\n')
    with pytest.raises(ValueError, match=r"m.csv line 3: 4 fields, the header has 3: a value with an unquoted comma"):
        build_table("d", spec, tmp_path)


def test_a_spreadsheet_given_as_the_manifest_says_to_save_it_as_csv(tmp_path):
    from openpyxl import Workbook

    book = Workbook()
    book.active.append(["file", "patient_id"])
    book.save(tmp_path / "m.xlsx")
    spec = {"adapter": "manifest", "path": str(tmp_path / "m.xlsx"), "encoding": "latin-1"}
    with pytest.raises(ValueError, match=r"m.xlsx is a zip archive \(an Excel .xlsx.*save the sheet as 'CSV UTF-8"):
        build_table("d", spec, tmp_path)


# ---- 6, 9, 16: pixels ----------------------------------------------------------------------------------------------
def _three_good(tmp_path):
    _images(tmp_path, [f"{i}.png" for i in range(9)])
    return "".join(f"img/{i}.png,P{i},{'poor' if i % 2 else 'good'}\n" for i in range(9))


def test_a_float_image_with_nan_pixels_is_rejected_not_stored_black(tmp_path):
    pixels = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    pixels[3, :5] = np.nan
    Image.fromarray(pixels, mode="F").save(tmp_path / "nan.tif")
    spec = _manifest(tmp_path, "file,patient_id,outcome\nnan.tif,PX,poor\n" + _three_good(tmp_path))
    table, rejects = build_table("d", spec, tmp_path)
    assert "PX" not in table["patient_id"].to_list()
    assert rejects["kind"].to_list() == ["non-finite pixels"]
    assert "5 of 4,096 pixels are NaN or infinite" in rejects["reason"][0]


def test_a_multi_page_tiff_is_rejected_like_a_multi_frame_dicom(tmp_path):
    pages = [Image.fromarray(np.full((16, 16), v, np.uint8)) for v in (10, 200)]
    pages[0].save(tmp_path / "two.tif", save_all=True, append_images=pages[1:])
    spec = _manifest(tmp_path, "file,patient_id,outcome\ntwo.tif,PX,poor\n" + _three_good(tmp_path))
    table, rejects = build_table("d", spec, tmp_path)
    assert "PX" not in table["patient_id"].to_list()
    assert rejects["kind"].to_list() == ["several frames"]
    assert "2 frames or pages in one file, not a single radiograph" in rejects["reason"][0]


def test_a_multi_picture_jpeg_from_a_camera_is_read_as_its_first_picture(tmp_path):
    first = Image.fromarray(np.tile(np.arange(64, dtype=np.uint8) * 4, (64, 1)))
    first.save(tmp_path / "photo.jpg", format="MPO", save_all=True, append_images=[first.resize((16, 16))])
    assert Image.open(tmp_path / "photo.jpg").n_frames == 2
    spec = _manifest(tmp_path, "file,patient_id,outcome\nphoto.jpg,PX,poor\n" + _three_good(tmp_path))
    table, rejects = build_table("d", spec, tmp_path)
    assert rejects.height == 0 and table.filter(pl.col("patient_id") == "PX")["width"].to_list() == [64]


def test_a_dicom_larger_than_max_pixels_is_refused_from_its_header_before_decoding(tmp_path):
    import pydicom

    path = make_dicom(tmp_path / "huge.dcm", radiograph(), patient="PX")
    ds = pydicom.dcmread(path)
    ds.Rows, ds.Columns = 12000, 12000  # the header's size; decoding these bytes as such would fail
    ds.save_as(path)
    spec = _manifest(tmp_path, "file,patient_id,outcome\nhuge.dcm,PX,poor\n" + _three_good(tmp_path))
    table, rejects = build_table("d", {**spec, "max_pixels": 10_000_000}, tmp_path)
    assert rejects["kind"].to_list() == ["oversized image"]
    assert "12000 x 12000 = 144,000,000 pixels" in rejects["reason"][0]


# ---- 7, 10: copies -------------------------------------------------------------------------------------------------
def test_a_repeated_row_with_a_corrected_label_is_a_conflict_not_a_duplicate(tmp_path):
    _images(tmp_path, [f"{i}.png" for i in range(4)])
    rows = [f"img/{i}.png,P{i},{'poor' if i % 2 else 'good'},{'ab'[i // 2]}" for i in range(4)] + [
        "img/0.png,P0,poor,a"
    ]
    spec = _manifest(tmp_path, "file,patient_id,outcome,site\n" + "\n".join(rows) + "\n")
    table, rejects = build_table("d", spec, tmp_path)
    assert rejects["kind"].to_list() == ["duplicate image"]
    with pytest.raises(ValueError, match=r"image img/0.png \(.*, patient P0\) says 'good', its copy img/0.png#2 says"):
        tasks.build(table, {"dataset": "d", "label": "outcome", "positive": ["poor"]}, "t", rejects)
    rows, _ = tasks.build(table, {"dataset": "d", "label": "site", "positive": ["a"], "negative": ["b"]}, "s")
    assert rows.height == 4  # the differing column is not this task's label: the copy stays a duplicate


def test_a_look_alike_label_on_a_dropped_copy_is_named_too(tmp_path):
    _images(tmp_path, [f"{i}.png" for i in range(4)])
    rows = [f"img/{i}.png,P{i},{'poor' if i % 2 else 'good'}" for i in range(4)] + ["img/1.png,P1,Poor"]
    table, rejects = build_table(
        "d", _manifest(tmp_path, "file,patient_id,outcome\n" + "\n".join(rows) + "\n"), tmp_path
    )
    with pytest.raises(
        ValueError, match=r"has 'Poor', e.g. image img/1.png#2 \(.*1.png\), which is the declared positive"
    ):
        tasks.build(table, {"dataset": "d", "label": "outcome", "positive": ["poor"]}, "t", rejects)


def _radiograph_like(seed: int, side: int = 256) -> np.ndarray:
    """A smooth random field with some texture: what a downscaled radiograph looks like to the check."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(30, 220, size=(8, 8), dtype=np.uint8))
    smooth = np.asarray(coarse.resize((side, side), Image.Resampling.BICUBIC), dtype=np.float64)
    return np.clip(smooth + rng.normal(0, 6, size=(side, side)), 0, 255).astype(np.uint8)


def test_the_same_radiograph_as_png_jpeg_and_resized_under_other_patients_is_found(tmp_path):
    original = Image.fromarray(_radiograph_like(1))
    (tmp_path / "img").mkdir()
    original.save(tmp_path / "img" / "a.png")
    original.save(tmp_path / "img" / "a.jpg", quality=98)
    original.resize((63, 63), Image.Resampling.BILINEAR).save(tmp_path / "img" / "a_small.png")
    for i in range(6):
        Image.fromarray(_radiograph_like(10 + i)).save(tmp_path / "img" / f"other{i}.png")
    spec = _manifest(
        tmp_path,
        "file,patient_id,outcome\nimg/a.png,P1,poor\nimg/a.jpg,P2,good\nimg/a_small.png,P3,poor\n"
        + "".join(f"img/other{i}.png,Q{i},{'poor' if i % 2 else 'good'}\n" for i in range(6)),
    )
    with pytest.raises(ValueError, match=r"1 image\(s\) appear under more than one patient.*near-identical pixels"):
        build_table("d", spec, tmp_path)
    table, rejects = build_table("d", {**spec, "duplicates": "drop"}, tmp_path)
    assert sorted(table["patient_id"]) == [f"Q{i}" for i in range(6)]
    assert rejects["kind"].to_list() == ["image under several patients"] * 3


def test_a_patients_jpeg_copy_is_a_duplicate_named_with_its_difference(tmp_path):
    (tmp_path / "img").mkdir()
    Image.fromarray(_radiograph_like(1)).save(tmp_path / "img" / "a.png")
    Image.fromarray(_radiograph_like(1)).save(tmp_path / "img" / "a.jpg", quality=98)
    Image.fromarray(_radiograph_like(2)).save(tmp_path / "img" / "b.png")
    spec = _manifest(tmp_path, "file,patient_id,outcome\nimg/a.png,P1,poor\nimg/a.jpg,P1,poor\nimg/b.png,P2,good\n")
    table, rejects = build_table("d", spec, tmp_path)
    assert table["patient_id"].to_list() == ["P1", "P2"]
    assert rejects["reason"][0].startswith("same near-identical pixels (mean difference 0.")


def test_the_k_d_tree_search_finds_every_pair_that_comparing_all_pairs_finds():
    from ftbench.data import images

    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, size=(40, 64, 64)).astype(np.int16)
    copies = np.clip(base[:15] + rng.integers(-5, 6, size=(15, 64, 64)), 0, 255)  # mean difference ~2.7
    thumbs = np.concatenate([base, copies, base[:5] // 2 + 60]).astype(np.uint8)
    flat = thumbs.reshape(len(thumbs), -1).astype(np.int16)
    brute = [(i, j) for i in range(len(flat)) for j in range(i + 1, len(flat)) if np.abs(flat[i] - flat[j]).mean() <= 3]
    assert len(brute) >= 10 and [(i, j) for i, j, _ in images.near_pairs(thumbs)] == brute


def test_different_patients_of_the_synthetic_dataset_are_not_near_duplicates(tmp_path):
    spec = {"adapter": "synthetic", "synthetic": {"patients": 40, "side": 128, "corrupt": 0}}
    table, rejects = build_table("s", spec, tmp_path)
    assert rejects.height == 0 and table["patient_id"].n_unique() == 40


# ---- 11, 19: patient and image ids -------------------------------------------------------------------------------
def test_ids_that_differ_only_in_case_are_warned_about_on_the_terminal_and_in_the_report(tmp_path, capsys):
    _images(tmp_path, ["a.png", "b.png", "c.png"])
    spec = _manifest(tmp_path, "file,patient_id,outcome\nimg/a.png,P1,poor\nimg/b.png,p1,good\nimg/c.png,P2,good\n")
    out = tmp_path / "data"
    argv = ["dataset", "--name", "d", "--spec", json.dumps(spec), "--resources", str(tmp_path)]
    assert cli.main([*argv, "--table", str(out / "t.parquet"), "--rejects", str(out / "r.csv")]) == 0
    assert "warning: 1 pair(s) of patient ids differ only in case ('P1' and 'p1')" in capsys.readouterr().out
    _, report = tasks.build(
        pl.read_parquet(out / "t.parquet"), {"dataset": "d", "label": "outcome", "positive": ["poor"]}, "t"
    )
    assert report["patient_ids_differing_only_in_case"] == [["P1", "p1"]]


def test_ids_1_1_and_1_10_can_be_declared_different_patients(tmp_path):
    _images(tmp_path, ["a.png", "b.png"])
    spec = _manifest(tmp_path, "file,patient_id,outcome\nimg/a.png,1.1,poor\nimg/b.png,1.10,good\n")
    with pytest.raises(ValueError, match=r"'1.1' .* and '1.10' .* set datasets.d.same_number_ids: distinct"):
        build_table("d", spec, tmp_path)
    table, _ = build_table("d", {**spec, "same_number_ids": "distinct"}, tmp_path)
    assert table["patient_id"].to_list() == ["1.1", "1.10"]


def test_empty_image_id_cells_name_their_lines(tmp_path):
    _images(tmp_path, ["a.png", "b.png", "c.png"])
    spec = _manifest(tmp_path, "file,patient_id,image_id\nimg/a.png,P1,x1\nimg/b.png,P2,\nimg/c.png,P3,NA\n")
    with pytest.raises(ValueError, match=r"m.csv line\(s\) \[3, 4\]: column 'image_id' \(the image id\) is empty"):
        build_table("d", spec, tmp_path)


def test_repeated_image_ids_name_their_files(tmp_path):
    _images(tmp_path, ["a.png", "b.png"])
    spec = _manifest(tmp_path, "file,patient_id,image_id\nimg/a.png,P1,x\nimg/b.png,P2,x\n")
    with pytest.raises(ValueError, match=r"image_id value\(s\) repeat: 'x' \(files \[.*a.png', .*b.png'\]\)"):
        build_table("d", spec, tmp_path)


# ---- 13: reserved and clashing column names ------------------------------------------------------------------------
def test_a_mapped_column_clashing_with_a_column_of_the_standard_name_is_an_error(tmp_path):
    _images(tmp_path, ["a.png"])
    spec = _manifest(tmp_path, "file,path,patient_id\nx,img/a.png,P1\n", columns={"file": "path"})
    with pytest.raises(ValueError, match=r"columns.file names column 'path' as the file, but the file has a column"):
        build_table("d", spec, tmp_path)


@pytest.mark.parametrize("column", ["height", "width", "row", "time_kind"])
def test_a_manifest_column_named_like_ftbench_s_own_is_refused(tmp_path, column):
    _images(tmp_path, ["a.png"])
    spec = _manifest(tmp_path, f"file,patient_id,{column}\nimg/a.png,P1,172\n")
    with pytest.raises(ValueError, match=rf"column\(s\) \['{column}'\] are names ftbench gives its own columns"):
        build_table("d", spec, tmp_path)


def test_a_clinical_sheets_height_is_renamed_not_replaced_by_the_pixel_height():
    images = pl.DataFrame({"patient_id": ["a"], "file": ["f"]})
    joined = clinical.join(images, pl.DataFrame({"patient_id": ["a"], "height": ["172"]}))
    assert joined["height_clinical"].to_list() == ["172"] and "height" not in joined.columns


# ---- 17: an image folder on other storage --------------------------------------------------------------------------
def test_an_image_folder_that_is_a_symbolic_link_is_followed_and_dot_dot_still_refused(tmp_path):
    storage, project = tmp_path / "storage", tmp_path / "project"
    _images(storage, ["a.png", "b.png"])
    project.mkdir()
    os.symlink(storage / "img", project / "img")
    spec = _manifest(project, "file,patient_id\nimg/a.png,P1\nimg/b.png,P2\n../storage/img/a.png,P3\n")
    table, rejects = build_table("d", {**spec, "max_rejected": 0.5}, tmp_path)
    assert table["patient_id"].to_list() == ["P1", "P2"]
    assert table["file"][0] == str(storage / "img" / "a.png")
    assert rejects["kind"].to_list() == ["path escapes root"]


# ---- 18: unreadable images do not pass quietly ---------------------------------------------------------------------
def test_more_broken_images_than_the_limit_stop_the_dataset_stage_with_the_reasons(tmp_path, capsys):
    _images(tmp_path, [f"{i}.png" for i in range(9)])
    rows = [f"img/{i}.png,P{i},{'poor' if i % 2 else 'good'}" for i in range(9)]
    rows += [f"img/missing{i}.png,Q{i},poor" for i in range(7)]
    spec = _manifest(tmp_path, "file,patient_id,outcome\n" + "\n".join(rows) + "\n")
    out = tmp_path / "data"
    argv = ["--resources", str(tmp_path), "--table", str(out / "t.parquet"), "--rejects", str(out / "r.csv")]
    assert cli.main(["dataset", "--name", "d", "--spec", json.dumps(spec), *argv]) == 1
    assert "dataset d: 9 images kept, 7 rejected (unreadable image: 7)" in capsys.readouterr().out
    assert not (out / "t.parquet").exists()
    with pytest.raises(
        ValueError,
        match=r"7 of 16 images \(44%\) were rejected as broken, more than the limit of 10% "
        r"\(config key datasets.d.max_rejected\): unreadable image: 7 \(e.g. .*missing0.png: .*No such file",
    ):
        from ftbench.data.adapters import check_rejects

        check_rejects("d", spec, *build_table("d", spec, tmp_path))
    relaxed = json.dumps({**spec, "max_rejected": 0.5})
    assert cli.main(["dataset", "--name", "d", "--spec", relaxed, *argv]) == 0
    assert pl.read_csv(out / "r.csv")["kind"].to_list() == ["unreadable image"] * 7


# ---- 19: a truncated image names its file --------------------------------------------------------------------------
def test_an_image_truncated_after_the_table_was_built_names_the_file_in_the_store(tmp_path):
    (tmp_path / "img").mkdir()
    for name in ("a", "b"):
        Image.fromarray(_radiograph_like(ord(name))).save(tmp_path / "img" / f"{name}.png")
    spec = _manifest(tmp_path, "file,patient_id\nimg/a.png,P1\nimg/b.png,P2\n")
    table, _ = build_table("d", spec, tmp_path)
    data = (tmp_path / "img" / "b.png").read_bytes()
    (tmp_path / "img" / "b.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"img/b.png: cannot be decoded for the image store \(OSError: .*truncated"):
        store.build(table, 32, tmp_path / "s.npy")
    assert not list(tmp_path.glob("s.npy*"))
