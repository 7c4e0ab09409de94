"""TCIA collections end to end against a local NBIA stand-in that behaves as NBIA's source code does: v4
then v1, series zips streamed without Content-Length or Range; listing, verified download, clinical sheet
(CSV for NY-SBU, Excel with a title row for AR), frontal and derived-image filtering, labels, tasks, store."""

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml
from conftest import ROOT
from fixtures_dicom import FakeTCIA, make_dicom, radiograph

from ftbench import cli
from ftbench.data import store, tasks, tcia
from ftbench.data.adapters import build_table, download_source
from ftbench.plan.config import KNOWN_COLLECTIONS

CONFIG = yaml.safe_load((ROOT / "config.yaml").read_text())
SHEETS = {
    "COVID-19-NY-SBU": "deidentified_overlap_tcia.csv.cleaned.csv_20210806.csv",
    "COVID-19-AR": "COVID_19_AR_ClinicalCorrelates_July202020.xlsx",
}


def _sheet_bytes(collection: str, tmp_path, outcomes: dict[str, tuple[str, str]]) -> bytes:
    """The collection's clinical sheet in its published form."""
    if collection == "COVID-19-NY-SBU":
        lines = ["to_patient_id,covid19_statuses,last.status,is_icu,was_ventilated,age.splits"]
        lines += [f"{pid},positive,{death},{icu},No,[50-60)" for pid, (death, icu) in outcomes.items()]
        return ("\n".join(lines) + "\n").encode()
    from openpyxl import Workbook

    book = Workbook()
    sheet = book.active
    sheet.append(["COVID-19-AR clinical correlates (July 2020)"])  # a title above the header, as published
    sheet.append(["PATIENT_ID", "AGE", "SEX", "COVID TEST POSITIVE", "ICU Admit", "# ICU Admits", "MORTALITY"])
    for pid, (death, icu) in outcomes.items():
        sheet.append([pid, 61.0, "F", "Y", float(icu), float(icu), death])  # Excel keeps numbers as floats
    path = tmp_path / "sheet.xlsx"
    book.save(path)
    return path.read_bytes()


# Per collection: patient ids as the collection spells them, and its outcome values (death, icu) per patient.
# NY-SBU's is_icu comes as booleans or as 0/1: both spellings appear.
CASES = {
    "COVID-19-NY-SBU": {
        "ids": ["A000801", "A001234", "A002304", "A046441", "A099999"],
        "outcomes": [("deceased", "True"), ("discharged", "0"), ("discharged", "1"), ("deceased", "False")],
    },
    "COVID-19-AR": {
        "ids": [
            "COVID-19-AR-16406513",
            "COVID-19-AR-16406514",
            "COVID-19-AR-16424082",
            "COVID-19-AR-16434409",
            "COVID-19-AR-16439216",
        ],
        "outcomes": [("Y", "1"), ("N", "0"), ("N", "1"), ("Y", "0")],
    },
}
TASKS = {
    "COVID-19-NY-SBU": {"death": "nysbu_death", "icu": "nysbu_icu"},
    "COVID-19-AR": {"death": "car_death", "icu": "car_icu"},
}


@pytest.fixture(params=sorted(CASES))
def collection(request, tmp_path):
    """A fake TCIA serving a small collection; the expected table is recorded alongside."""
    name = request.param
    case = CASES[name]
    server = FakeTCIA(name)
    src = tmp_path / "src"
    ids = case["ids"]
    expected = {"kept": []}
    for n, pid in enumerate(ids):
        # every patient: a 12-bit MONOCHROME1 CR frontal image and a 16-bit MONOCHROME2 DX follow-up
        m1 = make_dicom(
            src / f"{pid}_cr.dcm",
            (4095 - radiograph()).astype(np.uint16),
            photometric="MONOCHROME1",
            patient=pid,
            view="AP",
            study_date="20200401",
        )
        dx = make_dicom(
            src / f"{pid}_dx.dcm",
            radiograph(high=65535),
            bits_stored=16,
            patient=pid,
            view=None,
            modality="DX",
            series_description="CHEST PA",
            study_date=f"202004{10 + n:02d}",
        )
        server.add_series(pid, "CR", [m1])
        server.add_series(pid, "DX", [dx], description="CHEST PA")
        expected["kept"] += [pid, pid]
    lateral = make_dicom(src / "lat.dcm", radiograph(), patient=ids[0], view="LL")
    nopix = make_dicom(src / "nopix.dcm", None, patient=ids[1], view="PA")
    server.add_series(ids[0], "CR", [lateral])
    server.add_series(ids[1], "CR", [nopix])
    server.add_series(ids[2], "MR", [make_dicom(src / "mr.dcm", radiograph(), patient=ids[2], modality="MR")])
    outcomes = dict(zip(ids[:4], case["outcomes"]))  # the last patient is missing from the sheet
    server.files[f"/files/{SHEETS[name]}"] = _sheet_bytes(name, tmp_path, outcomes)
    with server:
        spec = {
            "adapter": "tcia",
            "collection": name,
            "source": "nbia",  # IDC first is tests/test_idc.py's
            "api": server.apis,
            "clinical": {"url": f"{server.url}/files/{SHEETS[name]}"},
        }
        yield {
            "name": name,
            "server": server,
            "spec": spec,
            "ids": ids,
            "outcomes": outcomes,
            "expected": expected,
            "out": tmp_path / "resources" / "datasets" / "ds",
        }


def _download(col, tmp_path, monkeypatch):
    monkeypatch.setattr(tcia.time, "sleep", lambda seconds: None)
    out = col["out"]
    argv = [
        "download",
        "--adapter",
        "tcia",
        "--source",
        json.dumps(download_source(col["spec"])),
        "--out",
        str(out),
        "--done",
        str(out / ".downloaded"),
    ]
    assert cli.main(argv) == 0
    return out


def test_download_end_to_end_from_v4(collection, tmp_path, monkeypatch):
    server, out = collection["server"], _download(collection, tmp_path, monkeypatch)
    # v4 listed per modality and served every series; v1 was never asked; MR was not listed
    assert [p.split("?")[0].rsplit("/", 2)[1] for p, _ in server.log if "services" in p] == ["v4"] * (
        2 + len(server.series) - 1
    )
    listed = json.loads((out / "series.json").read_text())
    assert {r["Modality"] for r in listed} == {"CR", "DX"} and len(listed) == 2 * 5 + 2
    assert json.loads((out / "download.json").read_text())["api"] == server.api_of("v4")
    assert json.loads((out / "failed.json").read_text()) == {}
    assert all(tcia.verified(out / "series" / r["SeriesInstanceUID"]) for r in listed)
    assert not list((out / "partial").iterdir())

    table, rejects = build_table("ds", collection["spec"], tmp_path / "resources")
    assert sorted(table["patient_id"]) == sorted(collection["expected"]["kept"])
    assert set(table["view"]) == {"AP", "PA"} and set(table["modality"]) == {"CR", "DX"}
    kinds = dict(zip(rejects["kind"], rejects["reason"]))
    assert set(kinds) == {"not a frontal chest radiograph", "unreadable image"}
    assert "view is lateral" in kinds["not a frontal chest radiograph"]
    assert "DICOM without pixel data" in kinds["unreadable image"]
    # images are decoded the same whatever their encoding: the bright half stays bright
    pixels = np.load(store.build(table, 32, tmp_path / "s.npy")).astype(float)
    assert (pixels[:, :, :16].mean(axis=(1, 2)) > pixels[:, :, 16:].mean(axis=(1, 2)) + 60).all()


@pytest.mark.parametrize("framing", ["chunked", "close"])
def test_a_cut_streamed_transfer_starts_the_series_again(collection, tmp_path, monkeypatch, framing):
    """NBIA streams a zip with no Content-Length and ignores Range: a retry asks for the whole series again,
    even when a megabyte had arrived before the cut."""
    server, pid = collection["server"], collection["ids"][0]
    server.framing = framing
    big = server.add_series(
        pid, "CR", [make_dicom(tmp_path / "big.dcm", radiograph(1024, 1024), patient=pid, view="AP")]
    )
    size = len(server.series[big]["zip"])
    server.cuts[big] = [size * 3 // 4]  # the connection drops after 1.5 of 2 MB, once
    out = _download(collection, tmp_path, monkeypatch)
    assert server.requests_for(big) == [None, None]  # no Range header: nothing to resume
    assert tcia.verified(out / "series" / big) and not list((out / "partial").iterdir())
    assert json.loads((out / "failed.json").read_text()) == {}


def test_a_failed_series_is_listed_and_fetched_again_by_the_next_run(collection, tmp_path):
    server, out = collection["server"], collection["out"]
    uid = next(iter(server.series))
    server.cuts[uid] = [100, 100]  # two dropped connections: more than the retries of the first run
    summary = tcia.download(download_source(collection["spec"]), out, retries=1, wait=0)
    assert summary["failed"] == 1
    failed = json.loads((out / "failed.json").read_text())
    assert list(failed) == [uid] and "IncompleteRead" in failed[uid]["error"]
    assert not list((out / "partial").iterdir())  # a cut stream is of no use: nothing is kept
    table, rejects = build_table("ds", collection["spec"], tmp_path / "resources")
    assert "series download failed" in set(rejects["kind"])  # nothing dropped silently
    server.log.clear()
    tcia.download(download_source(collection["spec"]), out, retries=1, wait=0)
    assert server.requests_for(uid) == [None]
    assert json.loads((out / "failed.json").read_text()) == {} and tcia.verified(out / "series" / uid)
    assert sum("getImage" in p for p, _ in server.log) == 1  # the verified series were not fetched again


@pytest.mark.parametrize(
    "answer",
    [(404, b"Not Found"), (401, b"Unauthorized"), (503, b"busy"), (200, b"<html><body>Maintenance</body></html>")],
)
def test_v4_failing_falls_back_to_v1(collection, tmp_path, monkeypatch, answer):
    server = collection["server"]
    server.refuse["v4"] = answer
    out = _download(collection, tmp_path, monkeypatch)
    assert json.loads((out / "download.json").read_text())["api"] == server.api_of("v1")
    first = next(iter(server.series))
    assert server.requests_for(first, "v1") == [None] and server.requests_for(first, "v4") == []
    table, _ = build_table("ds", collection["spec"], tmp_path / "resources")
    assert sorted(table["patient_id"]) == sorted(collection["expected"]["kept"])


def test_a_series_v4_refuses_is_fetched_from_v1(collection, tmp_path, monkeypatch):
    server = collection["server"]
    uid = next(iter(server.series))
    server.refuse[f"v4/{uid}"] = (
        400,
        b"The user has not been granted the access to image with given SeriesInstanceUID",
    )
    out = _download(collection, tmp_path, monkeypatch)
    assert server.requests_for(uid, "v4") == [None] and server.requests_for(uid, "v1") == [None]  # no back-off retries
    assert tcia.verified(out / "series" / uid) and json.loads((out / "failed.json").read_text()) == {}


def test_a_series_every_api_refuses_fails_at_once(collection, tmp_path):
    server, out = collection["server"], collection["out"]
    uid = next(iter(server.series))
    for version in ("v4", "v1"):
        server.refuse[f"{version}/{uid}"] = (400, b"not granted")
    tcia.download(download_source(collection["spec"]), out, retries=3, wait=60)  # a retry would sleep a minute
    assert len(server.requests_for(uid)) == 2
    assert "HTTPError" in json.loads((out / "failed.json").read_text())[uid]["error"]


def test_no_api_listing_the_collection_is_an_error_naming_each_answer(collection, tmp_path):
    server = collection["server"]
    server.refuse["v4"] = (404, b"Not Found")
    server.series.clear()
    with pytest.raises(ValueError, match=r"from any API: .*/v4: HTTPError.*404.*; .*/v1: no series"):
        tcia.download(download_source(collection["spec"]), collection["out"])


def test_the_default_api_is_v4_then_v1():
    assert "/services/v4" in tcia.APIS[0] and "/services/v1" in tcia.APIS[1] and len(tcia.APIS) == 2
    assert tcia.settings({"collection": "COVID-19-AR"})["api"] == list(tcia.APIS)
    assert download_source({"adapter": "tcia", "collection": "COVID-19-AR", "source": "nbia"})["api"] == list(tcia.APIS)
    assert tcia.settings({"collection": "COVID-19-AR", "api": "http://x/v1"})["api"] == ["http://x/v1"]


def test_the_files_are_those_md5hashes_csv_lists(collection, tmp_path, monkeypatch):
    """NBIA names files by number and stored extension; a member the list does not name is not used."""
    server, pid = collection["server"], collection["ids"][0]
    dicom = make_dicom(tmp_path / "x.dcm", radiograph(), patient=pid, view="PA")
    uid = server.add_series(pid, "CR", [dicom], ext=".dicom", unlisted={"LICENSE": b"CC BY 4.0"})
    out = _download(collection, tmp_path, monkeypatch)
    assert sorted(p.name for p in (out / "series" / uid).iterdir()) == [".complete", "00000001.dicom"]
    table, _ = build_table("ds", collection["spec"], tmp_path / "resources")
    assert str((out / "series" / uid / "00000001.dicom").resolve()) in set(table["file"])


def test_a_file_not_matching_its_published_md5_fails_the_series(collection, tmp_path):
    server = collection["server"]
    uid = server.add_series(
        collection["ids"][0],
        "CR",
        [make_dicom(tmp_path / "x.dcm", radiograph(), patient=collection["ids"][0])],
        bad_md5="1",
    )
    out = collection["out"]
    tcia.download(download_source(collection["spec"]), out, retries=0, wait=0)
    failed = json.loads((out / "failed.json").read_text())
    assert list(failed) == [uid] and "00000001.dcm has MD5" in failed[uid]["error"]
    assert not (out / "series" / uid).exists()


def test_a_sheet_that_cannot_be_downloaded_says_what_to_fetch_and_where(collection, tmp_path):
    server, out, name = collection["server"], collection["out"], collection["name"]
    body = server.files.pop(f"/files/{SHEETS[name]}")  # the published URL answers 404
    with pytest.raises(FileNotFoundError) as err:
        tcia.download(download_source(collection["spec"]), out, wait=0)
    sheet = out / "clinical" / SHEETS[name]
    for part in (
        f"'{SHEETS[name]}'",
        tcia.COLLECTIONS[name]["page"],
        f"save it as {sheet}",
        "404",
        "datasets.ds.clinical.path",
    ):
        assert part in str(err.value)
    assert json.loads((out / "failed.json").read_text()) == {}  # the series are in place all the same
    with pytest.raises(FileNotFoundError, match=f"save it as {sheet}"):
        build_table("ds", collection["spec"], tmp_path / "resources")
    sheet.parent.mkdir(parents=True, exist_ok=True)
    sheet.write_bytes(body)  # the user follows the instructions
    server.log.clear()
    tcia.download(download_source(collection["spec"]), out, wait=0)
    assert not [p for p, _ in server.log if "/files/" in p]  # the copy in place is used, not fetched
    table, _ = build_table("ds", collection["spec"], tmp_path / "resources")
    assert sorted(table["patient_id"]) == sorted(collection["expected"]["kept"])


@pytest.mark.parametrize("derived", ["keep", "drop"])
def test_derived_images_are_left_out_on_request_and_counted(collection, tmp_path, monkeypatch, derived):
    server, pid = collection["server"], collection["ids"][0]
    kinds = {
        "subtraction": {"image_type": ["DERIVED", "SECONDARY"]},
        "referencing": {"references": 2},
        "processed": {"image_type": ["DERIVED", "PRIMARY"]},
    }  # the last one is an ordinary radiograph
    uids = {
        kind: server.add_series(
            pid, "CR", [make_dicom(tmp_path / f"{kind}.dcm", radiograph(), patient=pid, view="AP", **fields)]
        )
        for kind, fields in kinds.items()
    }
    collection["spec"]["derived"] = derived
    _download(collection, tmp_path, monkeypatch)
    table, rejects = build_table("ds", collection["spec"], tmp_path / "resources")
    kept = {Path(file).parent.name for file in table["file"]}  # the series folders
    if derived == "keep":
        assert set(uids.values()) <= kept and "derived image" not in set(rejects["kind"])
    else:
        assert uids["processed"] in kept and not {uids["subtraction"], uids["referencing"]} & kept
        reasons = sorted(rejects.filter(pl.col("kind") == "derived image")["reason"])
        assert len(reasons) == 2 and "DERIVED\\SECONDARY" in reasons[0] and "references 2 other" in reasons[1]
    assert table.height == len(collection["expected"]["kept"]) + (3 if derived == "keep" else 1)


@pytest.mark.parametrize("task", ["death", "icu"])
def test_tasks_of_the_config_get_the_labels_of_the_sheet(collection, tmp_path, monkeypatch, task):
    _download(collection, tmp_path, monkeypatch)
    table, _ = build_table("ds", collection["spec"], tmp_path / "resources")
    rows, report = tasks.build(table, CONFIG["tasks"][TASKS[collection["name"]][task]], task)
    column = 0 if task == "death" else 1
    positive = {"deceased", "Y"} if task == "death" else {"True", "1"}
    truth = {pid: int(v[column] in positive) for pid, v in collection["outcomes"].items()}
    assert dict(rows.unique("patient_id").select("patient_id", "label").iter_rows()) == truth
    assert report["unlabelled_images"] == 2  # the patient missing from the sheet: two images, no label
    # two images per patient, one used: the admission image (images: first; both at the fixture's StudyDate + StudyTime)
    assert report["images_per_class"] == {str(c): sum(v == c for v in truth.values()) for c in (0, 1)}
    assert report["time_source"] == {"StudyDate + StudyTime": 2 * len(truth)}


def test_car_is_icu_admission_as_in_the_first_study():
    car = CONFIG["tasks"]["car_icu"]
    assert car["dataset"] == "covid19_ar" and car["label"] == "ICU Admit"
    assert "1" in car["positive"] and "0" in car["negative"]
    assert "car_icu" in CONFIG["benchmark"]["tasks"] and "car_death" not in CONFIG["benchmark"]["tasks"]
    protocol = yaml.safe_load((ROOT / "workflow" / "presets" / "protocol.yaml").read_text())
    assert "car_icu" in protocol["benchmark"]["tasks"] and "car_death" not in protocol["benchmark"]["tasks"]


def test_outcome_columns_are_matched_up_to_case_and_spacing():
    sheet = pl.DataFrame({"patient_id": ["a"], "ICU  ADMIT": ["1"], "mortality": ["N"], "AGE": ["60"]})
    renamed = tcia._label_columns(sheet, ["ICU Admit", "MORTALITY"])
    assert renamed.columns == ["patient_id", "ICU Admit", "MORTALITY", "AGE"]


def test_collections_known_to_the_config_check_are_those_of_the_adapter():
    assert set(KNOWN_COLLECTIONS) == set(tcia.COLLECTIONS)


def test_unknown_collection_needs_a_clinical_sheet():
    with pytest.raises(ValueError, match="clinical.url"):
        tcia.settings({"collection": "SOMETHING-ELSE"})
    assert tcia.settings({"collection": "X", "clinical": {"url": "u", "id_column": "pid"}})["centre"] == "X"


def test_series_are_fetched_over_several_connections_at_once(collection, tmp_path, monkeypatch):
    """Up to `connections` series transfer at the same time, and every one ends verified."""
    import threading
    import time

    active, peak, lock, fetch_series = [0], [0], threading.Lock(), tcia.fetch_series

    def counted(*args, **kwargs):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.05)  # long enough for the other connections to start
        try:
            return fetch_series(*args, **kwargs)
        finally:
            with lock:
                active[0] -= 1

    monkeypatch.setattr(tcia, "fetch_series", counted)
    out = collection["out"]
    summary = tcia.download(download_source(collection["spec"]), out, connections=3)
    listed = [row["SeriesInstanceUID"] for row in json.loads((out / "series.json").read_text())]
    assert (
        summary
        == {"api": collection["server"].api_of("v4"), "series": len(listed), "fetched": len(listed), "failed": 0}
        and len(listed) > 3
    )
    assert peak[0] == 3 and all(tcia.verified(out / "series" / uid) for uid in listed)
