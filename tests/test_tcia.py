"""TCIA collections end to end against a local NBIA stand-in: listing, resumable verified download,
clinical sheet (CSV for NY-SBU, Excel with a title row for AR), frontal filtering, labels, tasks, store."""

import json

import numpy as np
import pytest
import yaml
from conftest import ROOT
from fixtures_dicom import FakeTCIA, make_dicom, radiograph

from ftbench import cli
from ftbench.config import KNOWN_COLLECTIONS
from ftbench.data import store, tasks, tcia
from ftbench.data.adapters import build_table, download_source

CONFIG = yaml.safe_load((ROOT / "config.yaml").read_text())


def _sheet_bytes(collection: str, tmp_path, outcomes: dict[str, tuple[str, str]]) -> tuple[str, bytes]:
    """The collection's clinical sheet in its published form: (file name, bytes)."""
    if collection == "COVID-19-NY-SBU":
        lines = ["to_patient_id,covid19_statuses,last.status,is_icu,was_ventilated,age.splits"]
        lines += [f"{pid},positive,{death},{icu},No,[50-60)" for pid, (death, icu) in outcomes.items()]
        return "deidentified_overlap_tcia.csv.cleaned.csv_20210806.csv", ("\n".join(lines) + "\n").encode()
    from openpyxl import Workbook

    book = Workbook()
    sheet = book.active
    sheet.append(["COVID-19-AR clinical correlates (July 2020)"])  # a title above the header, as published
    sheet.append(["PATIENT_ID", "AGE", "SEX", "COVID TEST POSITIVE", "ICU ADMIT", "# ICU ADMITS", "MORTALITY"])
    for pid, (death, icu) in outcomes.items():
        sheet.append([pid, 61.0, "F", "Y", icu, 1.0 if icu == "Y" else 0.0, death])
    path = tmp_path / "sheet.xlsx"
    book.save(path)
    return "COVID_19_AR_ClinicalCorrelates_July202020.xlsx", path.read_bytes()


# Per collection: patient ids as the collection spells them, and its outcome values (death, icu) per patient.
CASES = {
    "COVID-19-NY-SBU": {"ids": ["A000801", "A001234", "A002304", "A046441", "A099999"],
                        "outcomes": [("deceased", "True"), ("discharged", "False"), ("discharged", "True"),
                                     ("deceased", "False")]},
    "COVID-19-AR": {"ids": ["COVID-19-AR-16406513", "COVID-19-AR-16406514", "COVID-19-AR-16424082",
                            "COVID-19-AR-16434409", "COVID-19-AR-16439216"],
                    "outcomes": [("Y", "Y"), ("N", "N"), ("N", "Y"), ("Y", "N")]},
}


@pytest.fixture(params=sorted(CASES))
def collection(request, tmp_path):
    """A fake TCIA serving a small collection; the expected table is recorded alongside."""
    name = request.param
    case = CASES[name]
    server = FakeTCIA(name)
    src = tmp_path / "src"
    ids = case["ids"]
    expected = {"kept": [], "lateral": 0, "nopix": 0}
    for n, pid in enumerate(ids):
        # every patient: a 12-bit MONOCHROME1 CR frontal image and a 16-bit MONOCHROME2 DX follow-up
        m1 = make_dicom(src / f"{pid}_cr.dcm", (4095 - radiograph()).astype(np.uint16), photometric="MONOCHROME1",
                        patient=pid, view="AP", study_date="20200401")
        dx = make_dicom(src / f"{pid}_dx.dcm", radiograph(high=65535), bits_stored=16, patient=pid, view=None,
                        modality="DX", series_description="CHEST PA", study_date=f"202004{10 + n:02d}")
        server.add_series(pid, "CR", [m1])
        server.add_series(pid, "DX", [dx], description="CHEST PA")
        expected["kept"] += [pid, pid]
    lateral = make_dicom(src / "lat.dcm", radiograph(), patient=ids[0], view="LL")
    nopix = make_dicom(src / "nopix.dcm", None, patient=ids[1], view="PA")
    server.add_series(ids[0], "CR", [lateral])
    server.add_series(ids[1], "CR", [nopix])
    server.add_series(ids[2], "MR", [make_dicom(src / "mr.dcm", radiograph(), patient=ids[2], modality="MR")])
    outcomes = dict(zip(ids[:4], case["outcomes"]))  # the last patient is missing from the sheet
    filename, body = _sheet_bytes(name, tmp_path, outcomes)
    server.files[f"/files/{filename}"] = body
    with server:
        spec = {"adapter": "tcia", "collection": name, "api": server.api,
                "clinical": {"url": f"{server.url}/files/{filename}"}}
        yield {"name": name, "server": server, "spec": spec, "ids": ids, "outcomes": outcomes, "expected": expected}


def _download(col, tmp_path, monkeypatch, *args):
    monkeypatch.setattr(tcia.time, "sleep", lambda seconds: None)
    out = tmp_path / "resources" / "datasets" / "ds"
    argv = ["download", "--adapter", "tcia", "--source", json.dumps(download_source(col["spec"])),
            "--out", str(out), "--done", str(out / ".downloaded")]
    assert cli.main(argv) == 0
    return out


def test_download_end_to_end_with_an_interrupted_transfer(collection, tmp_path, monkeypatch):
    server = collection["server"]
    first = next(iter(server.series))
    size = len(server.series[first]["zip"])
    server.cuts[first] = [size // 3]  # the connection drops after a third of the zip, once
    out = _download(collection, tmp_path, monkeypatch)
    # the listing asked per modality; MR was not listed; the cut transfer resumed from where it stopped
    assert [r for p, r in server.log if "getSeries" in p] == [None, None]
    assert server.requests_for(first) == [None, f"bytes={size // 3}-"]
    listed = json.loads((out / "series.json").read_text())
    assert {r["Modality"] for r in listed} == {"CR", "DX"} and len(listed) == 2 * 5 + 2
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


@pytest.mark.parametrize("task", ["death", "icu"])
def test_tasks_of_the_protocol_get_the_labels_of_the_sheet(collection, tmp_path, monkeypatch, task):
    _download(collection, tmp_path, monkeypatch)
    table, _ = build_table("ds", collection["spec"], tmp_path / "resources")
    name = {"COVID-19-NY-SBU": {"death": "nysbu_death", "icu": "nysbu_icu"},
            "COVID-19-AR": {"death": "car_death", "icu": None}}[collection["name"]][task]
    spec = CONFIG["tasks"][name] if name else {"dataset": "ds", "label": "ICU ADMIT", "positive": ["Y"], "negative": ["N"]}
    rows, report = tasks.build(table, spec, task)
    column = 0 if task == "death" else 1
    positive = {"deceased", "True", "Y"}
    truth = {pid: int(v[column] in positive) for pid, v in collection["outcomes"].items()}
    assert dict(rows.unique("patient_id").select("patient_id", "label").iter_rows()) == truth
    assert report["unlabelled_images"] == 2  # the patient missing from the sheet: two images, no label
    assert report["images_per_class"] == {str(c): 2 * sum(v == c for v in truth.values()) for c in (0, 1)}


def test_a_rerun_verifies_what_it_has_and_refetches_only_what_is_broken(collection, tmp_path, monkeypatch):
    server = collection["server"]
    out = _download(collection, tmp_path, monkeypatch)
    uid = next(iter(server.series))
    dcm = next((out / "series" / uid).glob("*.dcm"))
    good = dcm.read_bytes()
    dcm.write_bytes(good[:-4] + b"\0\0\0\0")  # same size, different bytes
    server.log.clear()
    _download(collection, tmp_path, monkeypatch)
    fetched = {p.split("SeriesInstanceUID=")[1] for p, _ in server.log if "getImage" in p}
    assert fetched == {uid} and dcm.read_bytes() == good


def test_a_failed_series_is_listed_and_resumed_by_the_next_run(collection, tmp_path, monkeypatch):
    server = collection["server"]
    uid = next(iter(server.series))
    size = len(server.series[uid]["zip"])
    server.cuts[uid] = [100, 100]  # two dropped connections: more than the retries of the first run
    out = tmp_path / "resources" / "datasets" / "ds"
    summary = tcia.download(download_source(collection["spec"]), out, retries=1, wait=0)
    assert summary["failed"] == 1
    failed = json.loads((out / "failed.json").read_text())
    assert list(failed) == [uid] and "transfer cut after 100 of" in failed[uid]["error"]
    assert (out / "partial" / f"{uid}.zip.part").stat().st_size == 200
    table, rejects = build_table("ds", collection["spec"], tmp_path / "resources")
    assert "series download failed" in set(rejects["kind"])  # nothing dropped silently
    server.log.clear()
    tcia.download(download_source(collection["spec"]), out, retries=1, wait=0)
    assert server.requests_for(uid) == ["bytes=200-"] and size > 200
    assert json.loads((out / "failed.json").read_text()) == {} and tcia.verified(out / "series" / uid)
    assert sum("getImage" in p for p, _ in server.log) == 1  # the verified series were not fetched again


def test_a_file_not_matching_its_published_md5_fails_the_series(collection, tmp_path):
    server = collection["server"]
    uid = server.add_series(collection["ids"][0], "CR", [make_dicom(tmp_path / "x.dcm", radiograph(),
                                                                    patient=collection["ids"][0])], bad_md5="1")
    out = tmp_path / "resources" / "datasets" / "ds"
    tcia.download(download_source(collection["spec"]), out, retries=0, wait=0)
    failed = json.loads((out / "failed.json").read_text())
    assert list(failed) == [uid] and "1-1.dcm has MD5" in failed[uid]["error"]
    assert not (out / "series" / uid).exists()


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
    out = tmp_path / "resources" / "datasets" / "ds"
    summary = tcia.download(download_source(collection["spec"]), out, connections=3)
    listed = [row["SeriesInstanceUID"] for row in json.loads((out / "series.json").read_text())]
    assert summary == {"series": len(listed), "fetched": len(listed), "failed": 0} and len(listed) > 3
    assert peak[0] == 3 and all(tcia.verified(out / "series" / uid) for uid in listed)
