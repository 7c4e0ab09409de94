"""COVID-19 collections of The Cancer Imaging Archive (TCIA): download through the public NBIA REST API
and read into the standard table (COVID-19-NY-SBU, COVID-19-AR, or any collection with a clinical sheet).
The Imaging Data Commons serves the same collections first (:mod:`ftbench.data.idc`, into the same layout);
NBIA is its fallback, or the source with ``source: nbia``.

The download lists the collection's series of the wanted modalities (``getSeries``, CR and DX), then
fetches each series as a zip of DICOM files with their MD5s (``getImageWithMD5Hash``), and the clinical
spreadsheet. It asks NBIA's v4 API first and falls back to v1 (``APIS``): for the listing when v4 fails
or lists nothing, for one series when v4 refuses it (HTTP 4xx). NBIA streams each series zip as it
builds it, with no Content-Length and no Range support, so a transfer cut mid-way starts that series
again from its first byte; a rerun skips every series whose files still match the MD5s recorded when it
was verified. Layout under ``resources/datasets/<name>/``::

    series.json                  the listing: what should be there
    series/<SeriesInstanceUID>/  verified files, as md5hashes.csv names them + .complete (name -> md5, size)
    partial/<uid>.zip(.part)     a series in transit (removed once unpacked or failed)
    failed.json                  series still failing after the retries, with the error
    download.json                which API served the listing, and the counts
    clinical/<file>              the clinical spreadsheet

The adapter reads the files each series' completion record lists, keeps frontal chest radiographs
(ViewPosition PA/AP, else the series or study description), optionally leaves out derived images
(``derived: drop``), lists every other image in the rejects with the reason, then joins the clinical
sheet by patient id.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import http.client
import io
import json
import logging
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import polars as pl

from ftbench.data import clinical, dicom
from ftbench.data.download import fetch, hexdigest

log = logging.getLogger("ftbench")

# NBIA's REST APIs, tried in this order. v4 serves public collections without a token (tcia_utils moved
# to it in 2025, at this host); v1 is the older public API.
APIS = (
    "https://nbia.cancerimagingarchive.net/nbia-api/services/v4",
    "https://services.cancerimagingarchive.net/nbia-api/services/v1",
)

# What the collections publish next to their images (TCIA collection pages; override under `clinical:`).
# `label_columns`: the spellings the config's tasks use for outcome columns; a sheet column equal to one
# up to case and spacing is renamed to it (the AR sheet's own header is not public to check).
COLLECTIONS = {
    "COVID-19-NY-SBU": {
        "centre": "Stony Brook University Hospital",
        "page": "https://www.cancerimagingarchive.net/collection/covid-19-ny-sbu/",
        "clinical": {
            "url": "https://www.cancerimagingarchive.net/wp-content/uploads/"
            "deidentified_overlap_tcia.csv.cleaned.csv_20210806.csv",
            "id_column": "to_patient_id",
        },
        "label_columns": ["last.status", "is_icu"],
        # IDC's clinical table of the collection: its id column (IDC's curated DICOM PatientID) and, per label
        # spelling the tasks use, its column (idc_v25_clinical; checked against the clinical index at download)
        "idc_clinical": {
            "table": "covid_19_ny_sbu_clinical",
            "id_column": "dicom_patient_id",
            "columns": {"last.status": "laststatus", "is_icu": "is_icu"},
        },
    },
    "COVID-19-AR": {
        "centre": "University of Arkansas for Medical Sciences",
        "page": "https://www.cancerimagingarchive.net/collection/covid-19-ar/",
        "clinical": {
            "url": "https://www.cancerimagingarchive.net/wp-content/uploads/"
            "COVID_19_AR_ClinicalCorrelates_July202020.xlsx",
            "id_column": "PATIENT_ID",
        },
        "label_columns": ["ICU Admit", "MORTALITY"],
        "idc_clinical": {
            "table": "covid_19_ar_clinical",
            "id_column": "dicom_patient_id",
            "columns": {"ICU Admit": "icu_admit", "MORTALITY": "mortality"},
        },
    },
}

# Errors of one series transfer that a retry may cure; anything else is a bug and propagates.
TRANSFER_ERRORS = (OSError, http.client.HTTPException, zipfile.BadZipFile, ValueError)
MARKER = ".complete"
# Series transfers at once: TCIA serves each one slowly, so a few connections fill the line; more risk
# its rate limits.
CONNECTIONS = 4


def settings(spec: dict) -> dict:
    """The dataset's config entry completed with the collection's published defaults."""
    collection = spec["collection"]
    known = copy.deepcopy(COLLECTIONS.get(collection, {}))
    api = spec.get("api", list(APIS))
    out = {
        "collection": collection,
        "api": [api] if isinstance(api, str) else list(api),
        "modalities": spec.get("modalities", ["CR", "DX"]),
        "centre": spec.get("centre", known.get("centre", collection)),
        "derived": spec.get("derived", "keep"),
        "label_columns": known.get("label_columns", []),
        "clinical": {**known.get("clinical", {}), **spec.get("clinical", {})},
    }
    if "id_column" not in out["clinical"] or not ({"url", "path"} & set(out["clinical"])):
        raise ValueError(
            f"collection '{collection}' has no published clinical sheet known to ftbench: give "
            "clinical.url (or clinical.path) and clinical.id_column in its dataset entry"
        )
    return out


def download_source(spec: dict) -> dict:
    """Only the settings that change what is downloaded (the download rule's params)."""
    s = settings(spec)
    sheet = (
        {k: s["clinical"][k] for k in ("url", "sha256") if s["clinical"].get(k)} if "path" not in s["clinical"] else {}
    )
    return {"api": s["api"], "collection": s["collection"], "modalities": s["modalities"], "clinical": sheet}


def _get_json(url: str, timeout: float) -> list[dict]:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        body = response.read()
    rows = json.loads(body) if body.strip() else []  # NBIA answers an empty body when nothing matches
    if not isinstance(rows, list) or not all(isinstance(r, dict) and "SeriesInstanceUID" in r for r in rows):
        raise ValueError(f"{url}: the answer is not a list of series records: {body[:200]!r}")
    return rows


def list_series(
    apis: list[str], collection: str, modalities: list[str], timeout: float = 120.0
) -> tuple[str, list[dict]]:
    """The first of ``apis`` that lists series of the collection, and those series (one dict each, as the
    API returns them, CR and DX merged).

    An API that fails (HTTP error, no connection, an answer that is not a list of series) or lists nothing
    hands over to the next; when none lists anything, the error says what each one answered.
    """
    answers = {}
    for api in apis:
        rows: dict[str, dict] = {}
        try:
            for modality in modalities:
                query = urllib.parse.urlencode({"Collection": collection, "Modality": modality})
                for row in _get_json(f"{api}/getSeries?{query}", timeout):
                    rows[row["SeriesInstanceUID"]] = row
        except (OSError, http.client.HTTPException, ValueError) as err:
            answers[api] = f"{type(err).__name__}: {err}"
            log.warning("TCIA %s: listing from %s failed (%s)", collection, api, answers[api])
            continue
        if rows:
            return api, [rows[uid] for uid in sorted(rows)]
        answers[api] = "no series"
        log.warning("TCIA %s: %s lists no %s series", collection, api, "/".join(modalities))
    raise ValueError(
        f"TCIA: no {'/'.join(modalities)} series of collection '{collection}' from any API: "
        + "; ".join(f"{api}: {answer}" for api, answer in answers.items())
    )


def verified(folder: Path) -> bool:
    """Whether a series folder holds every file its marker lists, each with the recorded MD5."""
    marker = folder / MARKER
    if not marker.is_file():
        return False
    files = json.loads(marker.read_text())
    return all(
        (folder / name).is_file()
        and (folder / name).stat().st_size == meta["size"]
        and hexdigest(folder / name, "md5") == meta["md5"]
        for name, meta in files.items()
    )


def _md5s(zf: zipfile.ZipFile, source: str) -> dict[str, str]:
    """md5hashes.csv of a series zip ("Filename,MD5Hash" then one row per file): file name -> MD5."""
    if "md5hashes.csv" not in zf.namelist():
        raise ValueError(f"{source}: the series zip has no md5hashes.csv, its files cannot be verified")
    rows = list(csv.reader(io.TextIOWrapper(zf.open("md5hashes.csv"), "utf-8")))
    return {Path(name).name: md5.strip().lower() for name, md5, *_ in rows[1:] if Path(name).name}


def extract_verified(archive: Path, folder: Path, expected_count: int | None) -> int:
    """Unpack the files ``md5hashes.csv`` lists from a series zip, each checked against its MD5; return
    their count.

    The list, not a file-name pattern, says what the series holds (NBIA names files by number and the
    stored extension). A zip member the list does not name cannot be verified and is left out, with a
    warning. Files are written to a temporary sibling first and the folder appears complete or not at all.
    """
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    files = {}
    with zipfile.ZipFile(archive) as zf:
        published = _md5s(zf, str(archive))
        members = {Path(m.filename).name: m for m in zf.infolist() if not m.is_dir()}  # NBIA zips are flat
        if missing := sorted(set(published) - set(members)):
            raise ValueError(f"{archive}: files listed in md5hashes.csv are missing from the zip: {missing[:5]}")
        if unlisted := sorted(set(members) - set(published) - {"md5hashes.csv"}):
            log.warning(
                "%s: %d file(s) not listed in md5hashes.csv cannot be verified and are not used: %s",
                archive,
                len(unlisted),
                unlisted[:5],
            )
        for name in sorted(published):
            digest = hashlib.md5()
            with zf.open(members[name]) as src, open(tmp / name, "wb") as dst:
                for block in iter(lambda: src.read(1 << 20), b""):
                    digest.update(block)
                    dst.write(block)
            if published[name] != digest.hexdigest():
                raise ValueError(
                    f"{archive}: {name} has MD5 {digest.hexdigest()}, the server published {published[name]}"
                )
            files[name] = {"md5": digest.hexdigest(), "size": members[name].file_size}
    if expected_count is not None and len(files) != expected_count:
        raise ValueError(f"{archive}: {len(files)} files, the series listing says ImageCount {expected_count}")
    (tmp / MARKER).write_text(json.dumps(files, indent=0, sort_keys=True))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.replace(folder)
    return len(files)


def fetch_series(api: str, row: dict, out: Path, timeout: float = 600.0) -> int:
    """Download, verify and unpack one series; return its file count.

    The zip is streamed (no Content-Length, no Range): a cut transfer is not resumed, its bytes are removed.
    """
    uid = row["SeriesInstanceUID"]
    archive = out / "partial" / f"{uid}.zip"
    query = urllib.parse.urlencode({"SeriesInstanceUID": uid})
    try:
        fetch(f"{api}/getImageWithMD5Hash?{query}", archive, timeout=timeout, resume=False)
        count = row.get("ImageCount")
        return extract_verified(archive, out / "series" / uid, int(count) if count is not None else None)
    finally:  # neither a cut transfer nor a complete but unusable archive is of use to the next attempt
        archive.unlink(missing_ok=True)
        archive.with_name(archive.name + ".part").unlink(missing_ok=True)


def _refused(err: Exception) -> bool:
    """An HTTP 4xx answer: this API will not serve the series however often it is asked."""
    return isinstance(err, urllib.error.HTTPError) and 400 <= err.code < 500


def _fetch_with_retries(apis: list[str], row: dict, out: Path, retries: int, wait: float) -> str | None:
    """Fetch one series; None once it is verified, else the last error.

    ``apis`` are asked in order: one that refuses the series (HTTP 4xx) hands it to the next at once; any
    other error (cut transfer, 5xx, bad zip, MD5 mismatch) is retried with exponential back-off. When
    every API refuses, the series fails without retries.
    """
    uid = row["SeriesInstanceUID"]
    for attempt in range(retries + 1):
        for api in apis:
            try:
                fetch_series(api, row, out)
                return None
            except TRANSFER_ERRORS as err:
                log.warning("series %s, attempt %d, %s: %s: %s", uid, attempt + 1, api, type(err).__name__, err)
                error = f"{api}: {type(err).__name__}: {err}"
                if not _refused(err):
                    break
        else:
            return error
        if attempt < retries:
            time.sleep(wait * 2**attempt)
    return error


def _sheet_path(clinical: dict, base: Path) -> Path:
    """Where the clinical sheet is read: ``clinical.path``, else the download's copy of ``clinical.url``."""
    if clinical.get("path"):
        return Path(clinical["path"])
    return base / "clinical" / Path(urllib.parse.urlparse(clinical["url"]).path).name


def _missing_sheet(collection: str, name: str, sheet: Path, problem: str) -> str:
    """What to download by hand, from where, and where to put it, when the clinical sheet is not there."""
    page = COLLECTIONS.get(collection, {}).get("page")
    source = f"the collection's page {page} (its clinical data)" if page else f"where '{collection}' publishes it"
    return (
        f"TCIA {collection}: the clinical spreadsheet {problem}. Download '{sheet.name}' by hand from {source} "
        f"and save it as {sheet}, then run again; or set datasets.{name}.clinical.path to your copy "
        f"(or datasets.{name}.clinical.url to where it is published now)"
    )


def download(
    source: dict,
    out: str | Path,
    retries: int = 3,
    wait: float = 10.0,
    connections: int = CONNECTIONS,
    listing: list[dict] | None = None,
) -> dict:
    """Fetch the listing, every series not yet verified (over ``connections`` at once), and the clinical
    sheet (unless a copy is already in place) into ``out``.

    ``listing``: the series to fetch, when already chosen (from IDC's index, :mod:`ftbench.data.idc`); else
    every series NBIA lists. A series still failing after ``retries`` retries is recorded in ``failed.json``
    (its images become rejects with the error), so one broken series does not block a collection of thousands;
    rerunning the download retries exactly the failed and unverified series. A sheet that cannot be fetched
    stops the download with instructions to fetch it by hand.
    """
    out = Path(out)
    if listing is None:
        api, listing = list_series(source["api"], source["collection"], source["modalities"])
    else:
        api = source["api"][0]
    apis = [api, *(a for a in source["api"] if a != api)]
    out.mkdir(parents=True, exist_ok=True)
    (out / "series.json").write_text(json.dumps(listing, indent=1))
    todo = [row for row in listing if not verified(out / "series" / row["SeriesInstanceUID"])]
    log.info(
        "TCIA %s: %d of %d series to fetch from %s, %d at a time",
        source["collection"],
        len(todo),
        len(listing),
        api,
        connections,
    )
    with ThreadPoolExecutor(max_workers=connections) as pool:  # each series has its own files: no shared state
        errors = list(pool.map(lambda row: _fetch_with_retries(apis, row, out, retries, wait), todo))
    failed = {
        row["SeriesInstanceUID"]: {"patient_id": row.get("PatientID", ""), "error": error}
        for row, error in zip(todo, errors)
        if error is not None
    }
    (out / "failed.json").write_text(json.dumps(failed, indent=1))
    summary = {"api": api, "series": len(listing), "fetched": len(todo) - len(failed), "failed": len(failed)}
    (out / "download.json").write_text(json.dumps(summary, indent=1))
    if source["clinical"]:
        fetch_sheet(source, out)
    log.info(
        "TCIA %s: %d series listed by %s, %d fetched now, %d failed",
        source["collection"],
        len(listing),
        api,
        summary["fetched"],
        len(failed),
    )
    return summary


def fetch_sheet(source: dict, out: Path) -> Path:
    """The clinical sheet published at ``source["clinical"]["url"]``, fetched unless a matching copy is there."""
    url, sha256 = source["clinical"]["url"], source["clinical"].get("sha256")
    sheet = _sheet_path(source["clinical"], out)
    if not sheet.is_file() or (sha256 and hexdigest(sheet) != sha256):
        try:
            fetch(url, sheet, sha256)
        except (OSError, http.client.HTTPException, ValueError) as err:
            problem = f"could not be downloaded from {url} ({type(err).__name__}: {err})"
            raise FileNotFoundError(_missing_sheet(source["collection"], out.name, sheet, problem)) from None
    return sheet


def _files(name: str, spec: dict, base: Path) -> tuple[list[Path], list[dict]]:
    """The DICOM files to read, and a reject per listed series that is not (verified) on disk."""
    if spec.get("path"):
        root = Path(spec["path"])
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: not found (datasets.{name}.path, a local copy of the collection)")
        return sorted(f for f in root.rglob("*") if f.is_file() and dicom.is_dicom(f)), []
    listing = base / "series.json"
    if not listing.is_file():
        raise FileNotFoundError(f"{listing}: not found; run the download rule or set datasets.{name}.path")
    failed = json.loads((base / "failed.json").read_text()) if (base / "failed.json").is_file() else {}
    files, rejects = [], []
    for row in json.loads(listing.read_text()):
        uid, folder = row["SeriesInstanceUID"], base / "series" / row["SeriesInstanceUID"]
        if (folder / MARKER).is_file():  # the files md5hashes.csv listed, whatever their names
            files += [folder / file for file in sorted(json.loads((folder / MARKER).read_text()))]
        else:
            error = failed.get(uid, {}).get("error", "not downloaded")
            rejects.append(
                {
                    "image_id": uid,
                    "file": str(folder),
                    "kind": "series download failed",
                    "reason": f"patient {row.get('PatientID', '')}, {row.get('ImageCount', '?')} image(s): {error}",
                }
            )
    return files, rejects


def _label_columns(sheet: pl.DataFrame, spellings: list[str]) -> pl.DataFrame:
    """Rename the sheet columns equal to a known spelling up to case and spacing (``ICU ADMIT`` -> ``ICU Admit``)."""
    key = {" ".join(s.split()).casefold(): s for s in spellings}
    found = {c: key[k] for c in sheet.columns if (k := " ".join(c.split()).casefold()) in key and c != key[k]}
    return sheet.rename(found)


def _image_row(fields: dict, file: Path, s: dict) -> tuple[dict | None, dict | None]:
    """The standard-table row of one image, or the reject saying why it is left out."""
    reason, kind = dicom.not_frontal_chest(fields), "not a frontal chest radiograph"
    if not reason and fields["modality"] not in s["modalities"]:
        reason = f"modality {fields['modality'] or 'missing'}, not one of {s['modalities']}"
    if not reason and s["derived"] == "drop" and (reason := dicom.derived(fields)):
        kind = "derived image"
    if reason:
        return None, {"image_id": fields["image_id"], "file": str(file), "kind": kind, "reason": reason}
    return {
        "image_id": fields["image_id"],
        "patient_id": fields["patient_id"],
        "file": str(file.resolve()),
        "centre": s["centre"],
        "view": fields["view"],
        "time": fields["time"],
        "time_source": fields["time_source"],
        "modality": fields["modality"],
        "body_part": fields["body_part"],
        "series_uid": fields["series_uid"],
        "series_description": fields["series_description"],
    }, None


def read(name: str, spec: dict, resources: Path) -> tuple[pl.DataFrame, list[dict]]:
    """The standard table of the collection's frontal chest radiographs + clinical columns, and rejects.

    Reads the verified series of the download under ``resources/datasets/<name>``, or a local copy at
    ``path:`` (e.g. from the NBIA Data Retriever: any folder tree of DICOM files) with its sheet at
    ``clinical.path``.
    """
    s = settings(spec)
    base = resources / "datasets" / name
    sheet = _clinical_sheet(s, name, base)
    files, rejects = _files(name, spec, base)
    rows = []
    for file in files:
        try:
            fields = dicom.header(file)
        except dicom.READ_ERRORS as err:
            rejects.append(
                {
                    "image_id": file.name,
                    "file": str(file),
                    "kind": "unreadable DICOM header",
                    "reason": f"{type(err).__name__}: {err}",
                }
            )
            continue
        row, reject = _image_row(fields, file, s)
        if row:
            rows.append(row)
        else:
            rejects.append(reject)
    if not rows:
        raise ValueError(
            f"dataset '{name}': no frontal chest radiograph found ({len(files)} DICOM files, {len(rejects)} rejected)"
        )
    table = pl.DataFrame(rows, schema_overrides={"time": pl.Float64})
    return clinical.join(table, sheet), rejects


def _clinical_sheet(s: dict, name: str, base: Path) -> pl.DataFrame:
    """The clinical table: IDC's where the download fetched it (its label columns renamed to the tasks'
    spellings), else the TCIA sheet (``clinical.path`` or the download's copy of ``clinical.url``)."""
    idc = COLLECTIONS.get(s["collection"], {}).get("idc_clinical")
    table = base / "clinical" / f"{idc['table']}.parquet" if idc else None
    if table is not None and "path" not in s["clinical"] and table.is_file():
        sheet = clinical.read(table, idc["id_column"])
        return sheet.rename({column: label for label, column in idc["columns"].items()})
    sheet_path = _sheet_path(s["clinical"], base)
    if not sheet_path.is_file():
        raise FileNotFoundError(_missing_sheet(s["collection"], name, sheet_path, "is not there"))
    return _label_columns(clinical.read(sheet_path, s["clinical"]["id_column"]), s["label_columns"])
