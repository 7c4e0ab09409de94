"""TCIA collections from the Imaging Data Commons, offline: the plan's counts from the real index
(idc-index-data), downloads from a local folder in the bucket's layout copied by a stand-in for s5cmd (real s5cmd
for the unreachable bucket), the NBIA fallback, checks against the index, retries and resuming, clinical tables."""

import json
import os
import stat
import sys
import uuid
from pathlib import Path

import polars as pl
import pytest
from fixtures_dicom import FakeTCIA, make_dicom, radiograph
from pydicom.uid import generate_uid

from ftbench import cli
from ftbench.data import idc, tcia
from ftbench.data.adapters import build_table, download_source

# The stand-in for s5cmd: the manifest lines `cp "s3://<bucket>/<uuid>/*" "<dest>/"` that idc writes, copied from
# $FAKE_BUCKET/<bucket>/<uuid>/; each copy is logged; $FAKE_TRUNCATE (uuid -> n) cuts that series' files the
# first n times it is copied.
FAKE_S5CMD = """#!{python}
import json, os, shlex, shutil, sys
from pathlib import Path
root = Path(os.environ["FAKE_BUCKET"])
args = sys.argv[1:]
assert args[:2] == ["--no-sign-request", "--endpoint-url"], args
if "ls" in args:  # the reachability probe: the bucket answers
    sys.exit(0)
assert "--numworkers" in args, args
log = root / "copies.log"
cut = json.loads(os.environ.get("FAKE_TRUNCATE", "{{}}"))
for line in Path(args[args.index("run") + 1]).read_text().splitlines():
    op, src, dst = shlex.split(line)
    bucket, series = src[len("s3://"):].split("/")[:2]
    with open(log, "a") as fh:
        fh.write(series + "\\n")
    Path(dst).mkdir(parents=True, exist_ok=True)
    for f in sorted((root / bucket / series).iterdir()):
        shutil.copy(f, Path(dst) / f.name)
        if log.read_text().split().count(series) <= cut.get(series, 0):
            data = (Path(dst) / f.name).read_bytes()
            (Path(dst) / f.name).write_bytes(data[: len(data) // 2])
"""


def _copies(bucket: Path) -> list[str]:
    log = bucket / "copies.log"
    return log.read_text().split() if log.is_file() else []


@pytest.fixture
def fake_s5cmd(tmp_path, monkeypatch):
    """The stand-in first on PATH, serving the bucket folder it returns."""
    bin_dir, bucket = tmp_path / "bin", tmp_path / "bucket"
    bin_dir.mkdir()
    bucket.mkdir()
    script = bin_dir / "s5cmd"
    script.write_text(FAKE_S5CMD.format(python=sys.executable))
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_BUCKET", str(bucket))
    return bucket


def _index(tmp_path, monkeypatch, rows: list[dict]) -> None:
    """A small index with the real index's columns (and types) in place of the package's."""
    schema = pl.read_parquet_schema(idc.index_path())
    table = pl.DataFrame([{c: r.get(c) for c in schema} for r in rows], schema=schema)
    path = tmp_path / "idc_index.parquet"
    table.write_parquet(path)
    monkeypatch.setattr(idc, "index_path", lambda: path)


COLLECTION = "COVID-19-AR"


@pytest.fixture
def collection(tmp_path, monkeypatch, fake_s5cmd):
    """Three patients in the bucket's layout and the index: P1 with a frontal and a lateral on its first day and a
    follow-up, P2 with two days, P3 with one; plus a CT series (not fetched)."""
    src = tmp_path / "src"
    plan = {
        "COVID-19-AR-1": [("20200401", "CR", "AP"), ("20200401", "CR", "LL"), ("20200405", "DX", "PA")],
        "COVID-19-AR-2": [("20200402", "CR", "AP"), ("20200403", "DX", "AP")],
        "COVID-19-AR-3": [("20200410", "DX", "PA")],
    }
    rows = []
    for patient, images in plan.items():
        for n, (date, modality, view) in enumerate(images):
            uid, series = generate_uid(), str(uuid.uuid4())
            dicom = make_dicom(
                src / f"{patient}_{n}.dcm",
                radiograph(),
                patient=patient,
                modality=modality,
                view=view,
                series_uid=uid,
                study_date=date,
            )
            folder = fake_s5cmd / "idc-open-data" / series
            folder.mkdir(parents=True)
            (folder / f"{uuid.uuid4()}.dcm").write_bytes(dicom.read_bytes())
            iso = f"{date[:4]}-{date[4:6]}-{date[6:]}"
            rows.append(
                {
                    "collection_id": "covid_19_ar",
                    "PatientID": patient,
                    "SeriesInstanceUID": uid,
                    "Modality": modality,
                    "StudyDate": iso,
                    "SeriesDate": iso,
                    "instanceCount": 1,
                    "series_size_MB": dicom.stat().st_size / 1e6,
                    "aws_bucket": "idc-open-data",
                    "crdc_series_uuid": series,
                    "series_aws_url": f"s3://idc-open-data/{series}/*",
                }
            )
    rows.append({**rows[0], "Modality": "CT", "SeriesInstanceUID": generate_uid(), "crdc_series_uuid": "ct"})
    _index(tmp_path, monkeypatch, rows)
    monkeypatch.setattr(idc.time, "sleep", lambda seconds: None)
    sheet = tmp_path / "sheet.csv"
    sheet.write_text("PATIENT_ID,ICU Admit\nCOVID-19-AR-1,1\nCOVID-19-AR-2,0\nCOVID-19-AR-3,0\n")
    clinical = {"path": str(sheet), "id_column": "PATIENT_ID"}  # a local sheet: IDC's tables are their own test
    return {"rows": rows[:-1], "spec": {"adapter": "tcia", "collection": COLLECTION, "clinical": clinical}}


def test_planned_series_of_ny_sbu_match_the_index():
    """`first`: every series of each patient's earliest date; `all`: every CR/DX series; counted here
    independently of the code from the package's index."""
    index = pl.read_parquet(idc.index_path(), columns=["collection_id", "PatientID", "Modality", "SeriesDate"])
    crdx = index.filter((pl.col("collection_id") == "covid_19_ny_sbu") & pl.col("Modality").is_in(["CR", "DX"]))
    earliest = crdx.group_by("PatientID").agg(pl.col("SeriesDate").min())
    first_day = crdx.join(earliest, on=["PatientID", "SeriesDate"]).height
    spec = {"adapter": "tcia", "collection": "COVID-19-NY-SBU"}
    every, first = (idc.plan(download_source(spec, [images])) for images in ("all", "first"))
    assert every["series"] == crdx.height == 14132 and every["patients"] == 1365
    assert first["series"] == first_day and first["patients"] == 1365
    assert 1365 < first["series"] < every["series"] / 4
    assert round(every["bytes"] / 1e9) == 216
    assert download_source(spec, ["first", "all"])["images"] == ["all"]  # one task with all: every series
    assert download_source(spec, ["last", "first", "first"])["images"] == ["first", "last"]


def test_idc_first_then_resumes_without_fetching_finished_series(collection, fake_s5cmd, tmp_path):
    out = tmp_path / "resources" / "datasets" / "ds"
    source = download_source(collection["spec"], ["first"])
    assert source["source"] == "idc"
    argv = ["download", "--adapter", "tcia", "--source", json.dumps(source), "--out", str(out)]
    assert cli.main([*argv, "--done", str(out / ".downloaded")]) == 0  # as the download rule runs it
    summary = json.loads((out / "download.json").read_text())
    first_day = {r["SeriesInstanceUID"] for r in collection["rows"] if r["StudyDate"] in ("2020-04-01", "2020-04-02")}
    first_day |= {r["SeriesInstanceUID"] for r in collection["rows"] if r["PatientID"] == "COVID-19-AR-3"}
    assert {p.name for p in (out / "series").iterdir()} == first_day and len(first_day) == 4
    assert summary["source"] == "idc" and summary["verified"] == 4 and summary["failed"] == 0
    assert len(_copies(fake_s5cmd)) == 4
    # an interrupted run: one verified series lost its marker, another was never moved in
    done = sorted(first_day)
    (out / "series" / done[0] / tcia.MARKER).unlink()
    (out / "series" / done[1]).rename(tmp_path / "gone")
    (out / "partial" / done[1]).mkdir(parents=True)  # and a transfer cut mid-way left half a file
    (out / "partial" / done[1] / "half.dcm").write_bytes(b"DICM")
    idc.download(download_source(collection["spec"], ["all"]), out, retries=0)
    fetched_again = _copies(fake_s5cmd)[4:]
    assert len(fetched_again) == 2 + 2  # the two broken ones and the two later series of `all`
    by_uid = {r["SeriesInstanceUID"]: r["crdc_series_uuid"] for r in collection["rows"]}
    assert {by_uid[done[0]], by_uid[done[1]]} <= set(fetched_again)
    assert not (out / "partial").exists() and all(tcia.verified(out / "series" / uid) for uid in by_uid)
    table, rejects = build_table("ds", collection["spec"], tmp_path / "resources")
    assert table.height == 5 and rejects["kind"].to_list() == ["not a frontal chest radiograph"]


def test_a_series_failing_its_check_is_retried_then_reported(collection, fake_s5cmd, tmp_path, monkeypatch):
    once, always = (r["crdc_series_uuid"] for r in collection["rows"][:2])
    monkeypatch.setenv("FAKE_TRUNCATE", json.dumps({once: 1, always: 99}))
    out = tmp_path / "ds"
    summary = idc.download(download_source(collection["spec"], ["all"]), out, retries=2)
    copies = _copies(fake_s5cmd)
    assert copies.count(once) == 2 and copies.count(always) == 3  # fixed by its retry; failing every time
    bad = collection["rows"][1]["SeriesInstanceUID"]
    failed = json.loads((out / "failed.json").read_text())
    assert list(failed) == [bad] and failed[bad]["patient_id"] == "COVID-19-AR-1"
    assert f"series {bad}" in failed[bad]["error"] and "bytes, the index lists" in failed[bad]["error"]
    assert summary["failed"] == 1 and summary["verified"] == len(collection["rows"]) - 1
    assert not (out / "series" / bad).exists() and not (out / "partial").exists()


def test_check_series_names_what_differs_from_the_index(collection, fake_s5cmd, tmp_path):
    row = dict(collection["rows"][0])
    folder = fake_s5cmd / "idc-open-data" / row["crdc_series_uuid"]
    assert idc.check_series(folder, row)
    with pytest.raises(ValueError, match="1 file\\(s\\), the index lists 2 instance"):
        idc.check_series(folder, {**row, "instanceCount": 2})
    other = dict(collection["rows"][1])
    with pytest.raises(ValueError, match=f"belongs to series {row['SeriesInstanceUID']}"):
        idc.check_series(folder, {**row, "SeriesInstanceUID": other["SeriesInstanceUID"]})


def test_nbia_serves_when_idc_cannot_be_reached(tmp_path, monkeypatch):
    """Real s5cmd against a closed port: nothing arrives, so NBIA (a local stand-in) serves the same series."""
    server = FakeTCIA(COLLECTION)
    src = tmp_path / "src"
    rows = []
    for n, patient in enumerate(["COVID-19-AR-1", "COVID-19-AR-2"]):
        dicom = make_dicom(src / f"{n}.dcm", radiograph(), patient=patient, view="AP")
        uid = server.add_series(patient, "CR", [dicom])
        rows.append(
            {
                "collection_id": "covid_19_ar",
                "PatientID": patient,
                "SeriesInstanceUID": uid,
                "Modality": "CR",
                "StudyDate": "2020-04-01",
                "SeriesDate": "2020-04-01",
                "instanceCount": 1,
                "series_size_MB": dicom.stat().st_size / 1e6,
                "aws_bucket": "idc-open-data",
                "crdc_series_uuid": str(uuid.uuid4()),
            }
        )
    _index(tmp_path, monkeypatch, rows)
    monkeypatch.setattr(idc, "ENDPOINT", "http://127.0.0.1:9")  # the discard port: connection refused
    monkeypatch.setattr(tcia.time, "sleep", lambda seconds: None)
    with server:
        spec = {"adapter": "tcia", "collection": COLLECTION, "api": server.apis}
        spec["clinical"] = {"url": f"{server.url}/files/sheet.csv", "id_column": "PATIENT_ID"}
        server.files["/files/sheet.csv"] = b"PATIENT_ID,ICU Admit\nCOVID-19-AR-1,1\nCOVID-19-AR-2,0\n"
        summary = idc.download(download_source(spec, ["all"]), tmp_path / "ds", retries=0)
    assert summary["source"] == "nbia" and "IDC (http://127.0.0.1:9) cannot be reached" in summary["idc_error"]
    assert summary["fetched"] == 2 and summary["api"] == server.api_of("v4")
    assert not [p for p, _ in server.log if "getSeries" in p]  # the index's listing, not NBIA's
    assert json.loads((tmp_path / "ds" / "download.json").read_text())["source"] == "nbia"


def test_source_nbia_or_a_collection_idc_lacks_plans_nbia(tmp_path, monkeypatch):
    spec = {"adapter": "tcia", "collection": COLLECTION}
    assert download_source({**spec, "source": "nbia"}, ["first"])["source"] == "nbia"
    assert download_source(spec, ["first"])["source"] == "idc"  # the real index has it
    lacking = {"adapter": "tcia", "collection": "NO-SUCH", "clinical": {"url": "http://x/s.csv", "id_column": "id"}}
    assert download_source(lacking, ["all"])["source"] == "nbia"
    assert "from NBIA" in idc.describe("x", download_source(lacking, ["all"]))
    line = idc.describe("covid19_ar", download_source(spec, ["all"]))
    assert line.endswith("262 CR/DX series of 104 patients, 3.2 GB")


def test_clinical_table_from_idc_checked_against_its_column_metadata(collection, tmp_path, monkeypatch):
    """IDC's table and clinical index in their published form (parquet; `values` a list of option_code /
    option_description), served over HTTP by a local stand-in; the labels reach the dataset table."""
    server = FakeTCIA(COLLECTION)
    table = pl.DataFrame(
        {
            "dicom_patient_id": ["COVID-19-AR-1", "COVID-19-AR-2", "COVID-19-AR-3"],
            "source_batch": [0, 0, 0],
            "icu_admit": ["1", "0", "0"],
            "mortality": ["Y", "N", "N"],
        }
    )
    values = pl.List(pl.Struct({"option_code": pl.String, "option_description": pl.String}))
    meta = pl.DataFrame(
        {
            "collection_id": ["covid_19_ar"] * 2,
            "table_name": ["bigquery-public-data.idc_v25_clinical.covid_19_ar_clinical"] * 2,
            "short_table_name": ["covid_19_ar_clinical"] * 2,
            "column": ["icu_admit", "mortality"],
            "column_label": ["ICU Admit", "MORTALITY"],
            "values": [
                [{"option_code": "0", "option_description": None}, {"option_code": "1", "option_description": None}],
                [{"option_code": "N", "option_description": None}, {"option_code": "Y", "option_description": None}],
            ],
        },
        schema_overrides={"values": values},
    )
    for name, frame in {"/index/clinical_index.parquet": meta, "/metadata/covid_19_ar_clinical.parquet": table}.items():
        path = tmp_path / name.rsplit("/", 1)[1]
        frame.write_parquet(path)
        server.files[name] = path.read_bytes()
    spec = {**collection["spec"], "clinical": {"url": f"{server.url}/files/sheet.csv", "id_column": "PATIENT_ID"}}
    with server:
        monkeypatch.setattr(idc, "CLINICAL_INDEX_URL", f"{server.url}/index/clinical_index.parquet?v={{version}}")
        monkeypatch.setattr(idc, "CLINICAL_TABLE_URL", f"{server.url}/metadata/{{table}}.parquet?v={{major}}")
        source = download_source(spec, ["all"])
        summary = idc.download(source, tmp_path / "resources" / "datasets" / "ds", retries=0)
        # a label column the clinical index lacks is an error naming it (the download then takes the TCIA sheet)
        missing = {**source["idc_clinical"], "columns": {"ICU Admit": "icu_admitted"}}
        with pytest.raises(ValueError, match="has no column 'icu_admitted'"):
            idc.fetch_clinical(missing, source["index"], tmp_path / "other")
    assert summary["clinical"]["source"] == "idc"
    assert summary["clinical"]["columns"]["ICU Admit"] == {
        "column": "icu_admit",
        "column_label": "ICU Admit",
        "values": ["0", "1"],
    }
    dataset, _ = build_table("ds", spec, tmp_path / "resources")
    labels = dict(dataset.select("patient_id", "ICU Admit").unique().iter_rows())
    assert labels == {"COVID-19-AR-1": "1", "COVID-19-AR-2": "0", "COVID-19-AR-3": "0"}
    assert dict(dataset.select("patient_id", "MORTALITY").unique().iter_rows())["COVID-19-AR-1"] == "Y"


def test_cost_projection_counts_idc_collections_in_the_index(tmp_path):
    """No declared sizes for NY-SBU and AR: `snakemake cost` counts their images in the index, per `images:`."""
    import yaml
    from conftest import ROOT

    from ftbench.plan import flop_cost
    from ftbench.plan.config import validate

    config = validate(yaml.safe_load((ROOT / "config.yaml").read_text()))
    assert not {"nysbu_death", "nysbu_icu", "car_icu", "car_death"} & set(config["cost"]["tasks"])
    # images: first (the admission image, the default) counts one image per patient; all, every CR/DX image
    assert flop_cost.declared_counts(config, "nysbu_death") == ({"patients": 1365, "images": 1365}, "index")
    assert flop_cost.declared_counts(config, "cohen_icu") == ({"patients": 106, "images": 106}, "declared")
    config["tasks"]["nysbu_death"]["images"] = "all"
    assert flop_cost.declared_counts(config, "nysbu_death") == ({"patients": 1365, "images": 14132}, "index")
    assert flop_cost.declared_counts(config, "car_icu") == ({"patients": 104, "images": 104}, "index")
    assert flop_cost.task_sizes(config, "car_icu", tmp_path)[1] == "index"
    config["datasets"]["covid19_ar"]["source"] = "nbia"  # NBIA has no index: neither declared nor counted
    assert flop_cost.declared_counts(config, "car_icu") is None
