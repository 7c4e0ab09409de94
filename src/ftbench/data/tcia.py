"""COVID-19 collections of The Cancer Imaging Archive (TCIA): download through the public NBIA REST API
and read into the standard table (COVID-19-NY-SBU, COVID-19-AR, or any collection with a clinical sheet).

The download lists the collection's series of the wanted modalities (``getSeries``, CR and DX), then
fetches each series as a zip of DICOM files with their MD5s (``getImageWithMD5Hash``), and the clinical
spreadsheet. It is resumable at two levels: a transfer cut mid-way continues from the bytes it has (HTTP
Range), and a rerun skips every series whose files still match the MD5s recorded when it was verified.
Layout under ``resources/datasets/<name>/``::

    series.json                  the listing: what should be there
    series/<SeriesInstanceUID>/  verified DICOM files + .complete (name -> md5, size of every file)
    partial/<uid>.zip(.part)     a series in transit
    failed.json                  series still failing after the retries, with the error
    clinical/<file>              the clinical spreadsheet

The adapter keeps frontal chest radiographs (ViewPosition PA/AP, else the series or study description)
and lists every other image in the rejects with the reason, then joins the clinical sheet by patient id.
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
import urllib.parse
import urllib.request
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import polars as pl

from ftbench.data import clinical, dicom
from ftbench.data.download import fetch, hexdigest

log = logging.getLogger("ftbench")

API = "https://services.cancerimagingarchive.net/nbia-api/services/v1"

# What the collections publish next to their images (TCIA collection pages; override under `clinical:`).
COLLECTIONS = {
    "COVID-19-NY-SBU": {
        "centre": "Stony Brook University Hospital",
        "clinical": {"url": "https://www.cancerimagingarchive.net/wp-content/uploads/"
                            "deidentified_overlap_tcia.csv.cleaned.csv_20210806.csv",
                     "id_column": "to_patient_id"},
    },
    "COVID-19-AR": {
        "centre": "University of Arkansas for Medical Sciences",
        "clinical": {"url": "https://www.cancerimagingarchive.net/wp-content/uploads/"
                            "COVID_19_AR_ClinicalCorrelates_July202020.xlsx",
                     "id_column": "PATIENT_ID"},
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
    out = {"collection": collection, "api": spec.get("api", API), "modalities": spec.get("modalities", ["CR", "DX"]),
           "centre": spec.get("centre", known.get("centre", collection)),
           "clinical": {**known.get("clinical", {}), **spec.get("clinical", {})}}
    if "id_column" not in out["clinical"] or not ({"url", "path"} & set(out["clinical"])):
        raise ValueError(f"collection '{collection}' has no published clinical sheet known to ftbench: give "
                         "clinical.url (or clinical.path) and clinical.id_column in its dataset entry")
    return out


def download_source(spec: dict) -> dict:
    """Only the settings that change what is downloaded (the download rule's params)."""
    s = settings(spec)
    sheet = {k: s["clinical"][k] for k in ("url", "sha256") if s["clinical"].get(k)} if "path" not in s["clinical"] else {}
    return {"api": s["api"], "collection": s["collection"], "modalities": s["modalities"], "clinical": sheet}


def _get_json(url: str, timeout: float) -> list[dict]:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        body = response.read()
    return json.loads(body) if body.strip() else []  # NBIA answers an empty body when nothing matches


def list_series(api: str, collection: str, modalities: list[str], timeout: float = 120.0) -> list[dict]:
    """The collection's series of the given modalities, one dict per series as the API returns it."""
    rows: dict[str, dict] = {}
    for modality in modalities:
        query = urllib.parse.urlencode({"Collection": collection, "Modality": modality})
        for row in _get_json(f"{api}/getSeries?{query}", timeout):
            rows[row["SeriesInstanceUID"]] = row
    return [rows[uid] for uid in sorted(rows)]


def verified(folder: Path) -> bool:
    """Whether a series folder holds every file its marker lists, each with the recorded MD5."""
    marker = folder / MARKER
    if not marker.is_file():
        return False
    files = json.loads(marker.read_text())
    return all((folder / name).is_file() and (folder / name).stat().st_size == meta["size"]
               and hexdigest(folder / name, "md5") == meta["md5"] for name, meta in files.items())


def _md5s(zf: zipfile.ZipFile, source: str) -> dict[str, str]:
    if "md5hashes.csv" not in zf.namelist():
        raise ValueError(f"{source}: the series zip has no md5hashes.csv, its files cannot be verified")
    rows = list(csv.reader(io.TextIOWrapper(zf.open("md5hashes.csv"), "utf-8")))
    return {Path(name).name: md5.strip().lower() for name, md5, *_ in rows[1:] if name}


def extract_verified(archive: Path, folder: Path, expected_count: int | None) -> int:
    """Unpack a series zip into ``folder`` if every file matches its published MD5; return the file count.

    Files are written to a temporary sibling first and the folder appears complete or not at all.
    """
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    files = {}
    with zipfile.ZipFile(archive) as zf:
        published = _md5s(zf, str(archive))
        for member in zf.infolist():
            name = Path(member.filename).name  # NBIA zips are flat; a folder part would be ignored anyway
            if member.is_dir() or name == "md5hashes.csv":
                continue
            digest = hashlib.md5()
            with zf.open(member) as src, open(tmp / name, "wb") as dst:
                for block in iter(lambda: src.read(1 << 20), b""):
                    digest.update(block)
                    dst.write(block)
            if published.get(name) != digest.hexdigest():
                raise ValueError(f"{archive}: {name} has MD5 {digest.hexdigest()}, the server published "
                                 f"{published.get(name, 'none')}")
            files[name] = {"md5": digest.hexdigest(), "size": member.file_size}
    if missing := sorted(set(published) - set(files)):
        raise ValueError(f"{archive}: files listed in md5hashes.csv are missing from the zip: {missing[:5]}")
    if expected_count is not None and len(files) != expected_count:
        raise ValueError(f"{archive}: {len(files)} files, the series listing says ImageCount {expected_count}")
    (tmp / MARKER).write_text(json.dumps(files, indent=0, sort_keys=True))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.replace(folder)
    return len(files)


def fetch_series(api: str, row: dict, out: Path, timeout: float = 600.0) -> int:
    """Download (resuming a partial transfer), verify and unpack one series; return its file count."""
    uid = row["SeriesInstanceUID"]
    archive = out / "partial" / f"{uid}.zip"
    query = urllib.parse.urlencode({"SeriesInstanceUID": uid})
    fetch(f"{api}/getImageWithMD5Hash?{query}", archive, timeout=timeout)
    try:
        count = row.get("ImageCount")
        return extract_verified(archive, out / "series" / uid, int(count) if count is not None else None)
    finally:
        archive.unlink(missing_ok=True)  # complete but unusable archives are fetched afresh next time


def _fetch_with_retries(api: str, row: dict, out: Path, retries: int, wait: float) -> str | None:
    """Fetch one series, retrying with exponential back-off; None once it is verified, else the last error."""
    uid = row["SeriesInstanceUID"]
    for attempt in range(retries + 1):
        try:
            fetch_series(api, row, out)
            return None
        except TRANSFER_ERRORS as err:
            log.warning("series %s, attempt %d: %s: %s", uid, attempt + 1, type(err).__name__, err)
            error = f"{type(err).__name__}: {err}"
            if attempt < retries:
                time.sleep(wait * 2**attempt)
    return error


def download(source: dict, out: str | Path, retries: int = 3, wait: float = 10.0,
             connections: int = CONNECTIONS) -> dict:
    """Fetch the listing, every series not yet verified (over ``connections`` at once), and the clinical
    sheet into ``out``.

    A series still failing after ``retries`` retries is recorded in ``failed.json`` (its images become
    rejects with the error), so one broken series does not block a collection of thousands; rerunning the
    download retries exactly the failed and unverified series.
    """
    out = Path(out)
    listing = list_series(source["api"], source["collection"], source["modalities"])
    if not listing:
        raise ValueError(f"TCIA: no {'/'.join(source['modalities'])} series in collection '{source['collection']}' "
                         f"at {source['api']}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "series.json").write_text(json.dumps(listing, indent=1))
    todo = [row for row in listing if not verified(out / "series" / row["SeriesInstanceUID"])]
    log.info("TCIA %s: %d of %d series to fetch, %d at a time", source["collection"], len(todo), len(listing),
             connections)
    with ThreadPoolExecutor(max_workers=connections) as pool:  # each series has its own files: no shared state
        errors = list(pool.map(lambda row: _fetch_with_retries(source["api"], row, out, retries, wait), todo))
    failed = {row["SeriesInstanceUID"]: {"patient_id": row.get("PatientID", ""), "error": error}
              for row, error in zip(todo, errors) if error is not None}
    fetched = len(todo) - len(failed)
    (out / "failed.json").write_text(json.dumps(failed, indent=1))
    if source["clinical"]:
        url = source["clinical"]["url"]
        fetch(url, out / "clinical" / Path(urllib.parse.urlparse(url).path).name, source["clinical"].get("sha256"))
    log.info("TCIA %s: %d series listed, %d fetched now, %d failed", source["collection"], len(listing), fetched, len(failed))
    return {"series": len(listing), "fetched": fetched, "failed": len(failed)}


def _files(name: str, spec: dict, base: Path) -> tuple[list[Path], list[dict]]:
    """The DICOM files to read, and a reject per listed series that is not (verified) on disk."""
    if spec.get("path"):
        root = Path(spec["path"])
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: not found (datasets.{name}.path, a local copy of the collection)")
        return sorted(root.rglob("*.dcm")), []
    listing = base / "series.json"
    if not listing.is_file():
        raise FileNotFoundError(f"{listing}: not found; run the download rule or set datasets.{name}.path")
    failed = json.loads((base / "failed.json").read_text()) if (base / "failed.json").is_file() else {}
    files, rejects = [], []
    for row in json.loads(listing.read_text()):
        uid, folder = row["SeriesInstanceUID"], base / "series" / row["SeriesInstanceUID"]
        if (folder / MARKER).is_file():
            files += sorted(folder.glob("*.dcm"))
        else:
            error = failed.get(uid, {}).get("error", "not downloaded")
            rejects.append({"image_id": uid, "file": str(folder), "kind": "series download failed",
                            "reason": f"patient {row.get('PatientID', '')}, {row.get('ImageCount', '?')} image(s): {error}"})
    return files, rejects


def read(name: str, spec: dict, resources: Path) -> tuple[pl.DataFrame, list[dict]]:
    """The standard table of the collection's frontal chest radiographs + clinical columns, and rejects.

    Reads the verified series of the download under ``resources/datasets/<name>``, or a local copy at
    ``path:`` (e.g. from the NBIA Data Retriever: any folder tree of ``*.dcm`` files) with its sheet at
    ``clinical.path``.
    """
    s = settings(spec)
    base = resources / "datasets" / name
    files, rejects = _files(name, spec, base)
    rows = []
    for file in files:
        try:
            fields = dicom.header(file)
        except dicom.READ_ERRORS as err:
            rejects.append({"image_id": file.name, "file": str(file), "kind": "unreadable DICOM header",
                            "reason": f"{type(err).__name__}: {err}"})
            continue
        reason = dicom.not_frontal_chest(fields)
        if not reason and fields["modality"] not in s["modalities"]:
            reason = f"modality {fields['modality'] or 'missing'}, not one of {s['modalities']}"
        if reason:
            rejects.append({"image_id": fields["image_id"], "file": str(file), "kind": "not a frontal chest radiograph",
                            "reason": reason})
            continue
        rows.append({"image_id": fields["image_id"], "patient_id": fields["patient_id"], "file": str(file.resolve()),
                     "centre": s["centre"], "view": fields["view"], "time": fields["time"], "modality": fields["modality"],
                     "body_part": fields["body_part"], "series_uid": fields["series_uid"],
                     "series_description": fields["series_description"]})
    if not rows:
        raise ValueError(f"dataset '{name}': no frontal chest radiograph found ({len(files)} DICOM files, "
                         f"{len(rejects)} rejected)")
    sheet_path = s["clinical"].get("path") or base / "clinical" / Path(urllib.parse.urlparse(s["clinical"]["url"]).path).name
    table = pl.DataFrame(rows, schema_overrides={"time": pl.Float64})
    return clinical.join(table, clinical.read(sheet_path, s["clinical"]["id_column"])), rejects
