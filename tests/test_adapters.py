"""Dataset adapters on their inputs: synthetic, the real Cohen sample, a user's manifest."""

import shutil

import numpy as np
import polars as pl
import pytest
from PIL import Image

from ftbench.data import store, tasks
from ftbench.data.adapters import STANDARD, build_table


def test_synthetic_is_deterministic_and_lists_corrupt_files(tmp_path):
    spec = {"adapter": "synthetic", "synthetic": {"patients": 12, "side": 32, "corrupt": 2, "centres": 3}}
    t1, r1 = build_table("s", spec, tmp_path / "a")
    t2, _ = build_table("s", spec, tmp_path / "b")
    assert list(t1.columns[:6]) == list(STANDARD)
    assert r1.height == 2 and r1["reason"].str.contains("unreadable").all()
    s1, s2 = store.build(t1, 32, tmp_path / "s1.npy"), store.build(t2, 32, tmp_path / "s2.npy")
    assert np.array_equal(np.load(s1), np.load(s2))
    assert t1.height + r1.height == t1["patient_id"].n_unique() * 0 + t1.height + 2
    assert set(t1["centre"].unique()) <= {"centre0", "centre1", "centre2"}


def test_synthetic_signal_separates_classes(tmp_path):
    spec = {"adapter": "synthetic", "synthetic": {"patients": 40, "side": 32, "signal": 1.0, "positive_rate": 0.5}}
    table, _ = build_table("s", spec, tmp_path)
    pixels = np.load(store.build(table, 32, tmp_path / "s.npy")).astype(float)
    lower_lungs = pixels[:, 18:24, 6:26].mean(axis=(1, 2))
    poor = (table["outcome"] == "poor").to_numpy()
    assert lower_lungs[poor].mean() > lower_lungs[~poor].mean() + 10


def _counts_from_csv(csv_path, label, positive, negative):
    """Task counts computed independently of the adapter: plain csv module."""
    import csv

    with open(csv_path, newline="") as fh:
        frontal = [r for r in csv.DictReader(fh) if r["view"] in ("PA", "AP", "AP Supine")]
    rows = [r for r in frontal if r[label] in positive + negative]
    images = {c: sum((r[label] in positive) == bool(c) for r in rows) for c in (0, 1)}
    patients = {c: len({r["patientid"] for r in rows if (r[label] in positive) == bool(c)}) for c in (0, 1)}
    return images, patients, len(frontal) - len(rows)


@pytest.mark.parametrize(
    "label, positive, negative", [("survival", ["N"], ["Y"]), ("went_icu", ["Y"], ["N"]), ("intubated", ["Y"], ["N"])]
)
def test_cohen_task_counts_match_metadata(cohen_sample, tmp_path, label, positive, negative):
    table, rejects = build_table("cohen", {"adapter": "cohen", "path": str(cohen_sample)}, tmp_path)
    assert rejects.height == 0 and table.height == 101
    spec = {
        "dataset": "cohen",
        "label": label,
        "positive": positive,
        "negative": negative,
        "filter": {"view": ["PA", "AP", "AP Supine"]},
        "images": "all",  # every image, as the CSV counts them (tests/test_admission.py: the default, first)
    }
    rows, report = tasks.build(table, spec, label)
    images, patients, unlabelled = _counts_from_csv(cohen_sample / "metadata.csv", label, positive, negative)
    assert report["images_per_class"] == {str(c): images[c] for c in (0, 1)}
    assert report["patients_per_class"] == {str(c): patients[c] for c in (0, 1)}
    assert report["unlabelled_images"] == unlabelled  # empty labels are counted, not lost


def test_cohen_sample_images_decode_into_a_store(cohen_sample, tmp_path):
    table, _ = build_table("cohen", {"adapter": "cohen", "path": str(cohen_sample)}, tmp_path)
    pixels = np.load(store.build(table.head(6), 64, tmp_path / "c.npy"))
    assert pixels.shape == (6, 64, 64) and pixels.std() > 10


def test_cohen_corrupt_and_missing_images_are_rejected_with_reasons(cohen_sample, tmp_path):
    copy = tmp_path / "cohen"
    shutil.copytree(cohen_sample, copy)
    meta = pl.read_csv(copy / "metadata.csv", infer_schema=False)
    broken, gone = meta["filename"][0], meta["filename"][1]
    (copy / "images" / broken).write_bytes((copy / "images" / broken).read_bytes()[:500])
    (copy / "images" / gone).unlink()
    table, rejects = build_table("cohen", {"adapter": "cohen", "path": str(copy)}, tmp_path)
    assert table.height == 99
    reasons = dict(zip(rejects["file"].str.split("/").list.last(), rejects["reason"]))
    assert set(reasons) == {broken, gone}
    assert "No such file" in reasons[gone] and "unreadable image" in reasons[broken]


def test_manifest_adapter_resolves_inside_root_and_rejects_escapes(tmp_path):
    root = tmp_path / "hospital"
    (root / "img").mkdir(parents=True)
    for i in range(4):
        Image.fromarray(np.full((20, 20), i * 40, np.uint8)).save(root / "img" / f"{i}.png")
    (tmp_path / "secret.png").write_bytes((root / "img" / "0.png").read_bytes())
    csv = root / "manifest.csv"
    csv.write_text(
        "path,pid,death,site\nimg/0.png,a,1,X\nimg/1.png,a,1,X\nimg/2.png,b,0,Y\nimg/3.png,c,0,Y\n../secret.png,d,1,X\n"
    )
    spec = {
        "adapter": "manifest",
        "path": str(csv),
        "root": str(root),
        "columns": {"file": "path", "patient_id": "pid", "centre": "site"},
    }
    table, rejects = build_table("mine", spec, tmp_path)
    assert table.height == 4 and set(table["centre"]) == {"X", "Y"} and "death" in table.columns
    assert rejects.height == 1 and "escapes root" in rejects["reason"][0] and "line 6" in rejects["reason"][0]


def test_task_rejects_contradicting_patient_labels(tmp_path):
    table = pl.DataFrame(
        {
            "image_id": ["1", "2", "3"],
            "patient_id": ["a", "a", "b"],
            "file": ["x"] * 3,
            "centre": [None] * 3,
            "view": ["PA"] * 3,
            "time": [0.0, 1.0, 0.0],
            "y": ["1", "0", "0"],
        }
    )
    with pytest.raises(ValueError, match=r"patient\(s\) \['a'\] have images with both labels"):
        tasks.build(table, {"dataset": "d", "label": "y", "positive": ["1"]}, "t")


def test_task_image_policy_first_and_last():
    table = pl.DataFrame(
        {
            "image_id": list("abcd"),
            "patient_id": ["p", "p", "q", "q"],
            "file": ["x"] * 4,
            "centre": [None] * 4,
            "view": ["PA"] * 4,
            "time": [5.0, 1.0, 0.0, 2.0],
            "y": ["1", "1", "0", "0"],
        }
    )
    first, rep = tasks.build(table, {"dataset": "d", "label": "y", "positive": ["1"], "images": "first"}, "t")
    last, _ = tasks.build(table, {"dataset": "d", "label": "y", "positive": ["1"], "images": "last"}, "t")
    assert sorted(first["image_id"]) == ["b", "c"] and sorted(last["image_id"]) == ["a", "d"]
    assert rep["images_policy"] == "first"


def test_task_label_value_outside_the_declared_ones_names_value_and_image():
    table = pl.DataFrame(
        {
            "image_id": ["1", "2", "3"],
            "patient_id": ["a", "b", "c"],
            "file": ["f1", "f2", "f3"],
            "centre": [None] * 3,
            "view": ["PA"] * 3,
            "time": [0.0] * 3,
            "y": ["Y", "N", "maybe"],
        }
    )
    with pytest.raises(ValueError, match=r"column 'y' has value\(s\) \['maybe'\] outside .* image 3 \(f3\)"):
        tasks.build(table, {"dataset": "d", "label": "y", "positive": ["N"], "negative": ["Y"]}, "t")
    # empty values are unknown labels: counted, not an error
    table = table.with_columns(pl.Series("y", ["Y", "N", ""]))
    rows, report = tasks.build(table, {"dataset": "d", "label": "y", "positive": ["N"], "negative": ["Y"]}, "t")
    assert rows.height == 2 and report["unlabelled_images"] == 1


def test_data_report_states_choices_and_counts_per_class_centre_view_and_rejects(tmp_path):
    import json

    from ftbench import cli

    spec = {"adapter": "synthetic", "synthetic": {"patients": 30, "side": 16, "corrupt": 2, "centres": 3}}
    table, rejects = build_table("s", spec, tmp_path)
    table.write_parquet(tmp_path / "table.parquet")
    rejects.write_csv(tmp_path / "rejects.csv")
    task = {"dataset": "s", "label": "outcome", "positive": ["poor"], "images": "last", "split_by": "patient"}
    assert (
        cli.main(
            [
                "task",
                "--name",
                "t",
                "--spec",
                json.dumps(task),
                "--table",
                str(tmp_path / "table.parquet"),
                "--rejects",
                str(tmp_path / "rejects.csv"),
                "--out",
                str(tmp_path / "t.parquet"),
                "--report",
                str(tmp_path / "r.json"),
            ]
        )
        == 0
    )
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["images_policy"] == "last" and report["split_by"] == "patient"
    assert report["negative"] == "every other value that is not missing"
    assert report["rejects"] == {"images": 2, "by_kind": {"unreadable image": 2}}
    per_centre = report["patients_per_centre_and_class"]
    assert set(per_centre) <= {"centre0", "centre1", "centre2"}
    for cls in ("0", "1"):
        assert sum(c[cls] for c in per_centre.values()) == report["patients_per_class"][cls]
        assert report["images_per_view_and_class"]["PA"][cls] == report["images_per_class"][cls]
    assert report["images_per_patient"] == {"1": sum(report["patients_per_class"].values())}


# ---- issue 14: Cohen's real metadata carries free text besides Y/N; a pinned snapshot -------------------------------
COHEN_COLUMNS = (
    "patientid,offset,sex,age,finding,survival,intubated,intubation_present,went_icu,in_icu,view,modality,"
    "date,location,folder,filename,doi,url,license,clinical_notes,other_notes,"
)
COHEN_ROWS = [  # (patient, offset, finding, survival, intubated, went_icu, view): the kinds of rows upstream holds
    ("1", "0", "COVID-19", "Y", "N", "N", "PA"),
    ("1", "3", "COVID-19", "Y", "N", "N", "AP"),
    ("2", "0", "COVID-19", "N", "Y", "Y", "AP Supine"),
    ("3", "5", "COVID-19, ARDS", "N", "Y", "Y", "AP"),
    ("4", "?", "COVID-19", "?", "Not visible", "Would have been stated", "PA"),  # free text meaning "not known"
    ("5", "", "COVID-19", "Y", "N", "N", "PA"),
    ("6", "2", "COVID-19", "", "", "", "PA"),
    ("7", "1", "SARS", "N", "", "", "PA"),
    ("8", "0", "todo", "Y", "Not visible", "Would have been stated", "PA"),
    ("9", "4", "COVID-19", "Y", "N", "N", "L"),
]


def _cohen_metadata(root, rows=COHEN_ROWS):
    """An upstream-layout folder written by the test: metadata.csv with free-text labels, one small PNG per row."""
    (root / "images").mkdir(parents=True)
    lines = [COHEN_COLUMNS]
    for i, (pid, offset, finding, survival, intubated, icu, view) in enumerate(rows):
        img = np.zeros((24, 24), np.uint8)
        img[i, :] = 200
        Image.fromarray(img).save(root / "images" / f"{i}.png")
        lines.append(
            f'{pid},{offset},M,60,"{finding}",{survival},{intubated},,{icu},,{view},X-ray,2020,"Somewhere, X",'
            f'images,{i}.png,,,,"notes, with a comma",,'
        )
    (root / "metadata.csv").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def default_cohen_tasks():
    from conftest import ROOT

    from ftbench.plan.config import load

    config = load(ROOT / "config.yaml")
    return {name: config["tasks"][name] for name in ("cohen_death", "cohen_icu", "cohen_intubated")}


def test_default_cohen_tasks_drop_and_count_declared_unknown_values(tmp_path, default_cohen_tasks):
    table, rejects = build_table("cohen", {"adapter": "cohen", "path": str(_cohen_metadata(tmp_path / "c"))}, tmp_path)
    assert rejects.height == 0 and table["time_kind"].to_list().count("number") == 8  # '?' and '' are missing
    expected = {  # task: (declared unknown values counted, images per class, patients per class): patient 1's
        # two images (offsets 0 and 3) give its first only
        "cohen_death": ({"?": 1}, {"0": 2, "1": 2}, {"0": 2, "1": 2}),
        "cohen_icu": ({"Would have been stated": 1}, {"0": 2, "1": 2}, {"0": 2, "1": 2}),
        "cohen_intubated": ({"Not visible": 1}, {"0": 2, "1": 2}, {"0": 2, "1": 2}),
    }
    for name, spec in default_cohen_tasks.items():
        rows, report = tasks.build(table, spec, name, rejects)
        unknown, images, patients = expected[name]
        assert report["images_with_a_declared_unknown_label"] == unknown, name
        assert report["images_per_class"] == images and report["patients_per_class"] == patients, name
        assert report["unlabelled_images"] == 2  # patient 6's empty label and the declared unknown value
        # each filter's counts: what it left out, by value, and the images after it
        assert report["images_filtered_out"] == {"finding: SARS": 1, "finding: todo": 1, "view: L": 1}
        assert report["steps"] == {
            "images": 10,
            "after filter finding": 8,
            "after filter modality": 8,
            "after filter view": 7,
            "with a known label": 5,
            "first image per patient": 4,
        }
        assert report["times_read_as"] == {"missing": 1, "number": 4}


def test_an_undeclared_free_text_label_stays_an_error_naming_value_and_image(tmp_path, default_cohen_tasks):
    rows = [*COHEN_ROWS, ("10", "0", "COVID-19", "Unclear", "N", "N", "PA")]
    table, _ = build_table("cohen", {"adapter": "cohen", "path": str(_cohen_metadata(tmp_path / "c", rows))}, tmp_path)
    with pytest.raises(
        ValueError,
        match=r"task 'cohen_death': column 'survival' has value\(s\) \['Unclear'\] outside "
        r"the declared positive \['N'\] and negative \['Y'\].*image 10:10.png",
    ):
        tasks.build(table, default_cohen_tasks["cohen_death"], "cohen_death")


def test_cohen_download_checks_file_checksums_and_refuses_an_archive_unlike_the_first(tmp_path):
    import hashlib
    import http.server
    import io
    import json
    import threading
    import zipfile

    from ftbench.data.adapters import RECORD, download, download_source

    def archive(comment: bytes) -> bytes:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as zf:
            zf.writestr("covid-chestxray-dataset-abc/metadata.csv", "patientid,offset\n1,0\n")
            zf.comment = comment  # the same files in other bytes: what a host rebuilding its archives may serve
        return buffer.getvalue()

    served = {"body": archive(b"first")}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(len(served["body"])))
            self.end_headers()
            self.wfile.write(served["body"])

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        metadata = hashlib.sha256(b"patientid,offset\n1,0\n").hexdigest()
        spec = {
            "adapter": "cohen",
            "url": f"http://127.0.0.1:{server.server_address[1]}/abc.zip",
            "checksums": {"metadata.csv": metadata},
        }
        out = tmp_path / "cohen"
        download("cohen", download_source(spec), out)
        assert json.loads((out / RECORD).read_text()) == {spec["url"]: hashlib.sha256(served["body"]).hexdigest()}
        served["body"] = archive(b"rebuilt")
        with pytest.raises(
            ValueError, match=f"checksum mismatch.*{RECORD} holds the SHA-256 of this URL's first download"
        ):
            download("cohen", download_source(spec), out)
        wrong = {**spec, "checksums": {"metadata.csv": "0" * 64}}
        with pytest.raises(ValueError, match="metadata.csv has SHA-256 .*, the config's checksums say 0000"):
            download("cohen", download_source(wrong), tmp_path / "other")
    finally:
        server.shutdown()
        server.server_close()
