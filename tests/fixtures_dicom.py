"""Test fixtures: small generated DICOM radiographs and a local stand-in for TCIA's NBIA REST API (v1).

The fake server answers the two endpoints the download uses with the shapes NBIA returns: ``getSeries``
(a JSON list of series records, an empty body when nothing matches) and ``getImageWithMD5Hash`` (a zip of
the series' DICOM files plus ``md5hashes.csv``), honours ``Range: bytes=N-`` with 206 answers, and can cut
a transfer after a given number of bytes to simulate a dropped connection. Every request is logged.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import threading
import urllib.parse
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
_IMAGES = itertools.count(1)  # numbers every generated radiograph, so no two share their pixels


def radiograph(rows: int = 48, cols: int = 40, high: int = 4095) -> np.ndarray:
    """Stored values whose *display* has a bright left half (bone-like) and a dark right half, plus a ramp.

    Each call's image is unique (the bottom row's last 12 pixels spell a call number), as different patients'
    radiographs are: the dataset table refuses one image under two patients.
    """
    img = np.tile(np.linspace(0.1, 0.3, cols), (rows, 1))
    img[:, : cols // 2] += 0.6
    number = next(_IMAGES)
    img[-1, cols - 12:] += [0.05 * (number >> bit & 1) for bit in range(12)]
    return np.round(img * high).astype(np.uint16 if high > 255 else np.uint8)


def make_dicom(path: str | Path, pixels: np.ndarray | None = None, *, photometric: str = "MONOCHROME2",
               bits_stored: int = 12, patient: str = "P1", view: str | None = "PA", modality: str = "CR",
               series_uid: str | None = None, series_description: str = "", study_description: str = "",
               body_part: str = "CHEST", study_date: str = "20200401", window: tuple[float, float] | None = None,
               rescale: tuple[float, float] | None = None) -> Path:
    """Write a single-frame radiograph (or, with ``pixels=None``, a DICOM object without pixel data)."""
    sop = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CR_STORAGE
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CR_STORAGE, sop
    ds.PatientID, ds.Modality, ds.BodyPartExamined = patient, modality, body_part
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), series_uid or generate_uid()
    ds.StudyDate, ds.StudyTime = study_date, "101500"
    ds.SeriesDescription, ds.StudyDescription = series_description, study_description
    if view is not None:
        ds.ViewPosition = view
    if window:
        ds.WindowCenter, ds.WindowWidth = window
    if rescale:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    if pixels is not None:
        ds.set_pixel_data(pixels, photometric_interpretation=photometric, bits_stored=bits_stored)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def series_zip(files: dict[str, bytes], bad_md5: str | None = None) -> bytes:
    """A getImageWithMD5Hash answer: the files and md5hashes.csv (``bad_md5``: a file given a wrong MD5)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        lines = ["Filename,MD5Hash"]
        for name, data in files.items():
            zf.writestr(name, data)
            lines.append(f"{name},{'0' * 32 if name == bad_md5 else hashlib.md5(data).hexdigest()}")
        zf.writestr("md5hashes.csv", "\n".join(lines) + "\n")
    return out.getvalue()


class FakeTCIA:
    """A threaded HTTP server on 127.0.0.1 serving a collection: ``add_series`` then ``with server:``."""

    def __init__(self, collection: str):
        self.collection = collection
        self.series: dict[str, dict] = {}  # uid -> {"row": listing record, "zip": bytes}
        self.files: dict[str, bytes] = {}  # path -> body (the clinical sheet)
        self.cuts: dict[str, list[int]] = {}  # uid -> bytes to send before dropping, one entry per request
        self.log: list[tuple[str, str | None]] = []  # (path?query, Range header)
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    @property
    def api(self) -> str:
        return f"{self.url}/nbia-api/services/v1"

    def add_series(self, patient: str, modality: str, dicoms: list[Path], description: str = "",
                   bad_md5: str | None = None) -> str:
        uid = generate_uid()
        files = {f"1-{i + 1}.dcm": Path(p).read_bytes() for i, p in enumerate(dicoms)}
        body = series_zip(files, bad_md5=f"1-{bad_md5}.dcm" if bad_md5 else None)
        self.series[uid] = {"zip": body, "row": {
            "SeriesInstanceUID": uid, "StudyInstanceUID": generate_uid(), "Modality": modality,
            "ProtocolName": "", "SeriesDate": "2020-04-01 00:00:00.0", "SeriesDescription": description,
            "BodyPartExamined": "CHEST", "SeriesNumber": "1", "Collection": self.collection, "PatientID": patient,
            "Manufacturer": "ACME", "ManufacturerModelName": "CR-1", "SoftwareVersions": "1", "ImageCount": len(files),
            "TimeStamp": "2021-08-06 00:00:00.0", "LicenseName": "Creative Commons Attribution 4.0 International License",
            "LicenseURI": "https://creativecommons.org/licenses/by/4.0/", "CollectionURI": "https://doi.org/10.7937/x",
            "FileSize": len(body), "DateReleased": "2021-08-06 00:00:00.0", "StudyDesc": "", "StudyDate": "2020-04-01",
            "ThirdPartyAnalysis": "NO"}}
        return uid

    def requests_for(self, uid: str) -> list[str | None]:
        """The Range headers of the image requests for one series, in order."""
        return [rng for path, rng in self.log if "getImage" in path and uid in path]

    def __enter__(self) -> "FakeTCIA":
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def do_GET(self):
                server.log.append((self.path, self.headers.get("Range")))
                url = urllib.parse.urlparse(self.path)
                query = dict(urllib.parse.parse_qsl(url.query))
                if url.path.endswith("/getSeries"):
                    rows = [s["row"] for s in server.series.values()
                            if s["row"]["Collection"] == query.get("Collection") and s["row"]["Modality"] == query.get("Modality")]
                    return self._send(json.dumps(rows).encode() if rows else b"", "application/json")
                if url.path.endswith("/getImageWithMD5Hash"):
                    uid = query.get("SeriesInstanceUID")
                    if uid not in server.series:
                        return self.send_error(404)
                    return self._send(server.series[uid]["zip"], "application/zip", cut=server.cuts.get(uid))
                if url.path in server.files:
                    return self._send(server.files[url.path], "application/octet-stream")
                self.send_error(404)

            def _send(self, body: bytes, kind: str, cut: list[int] | None = None):
                start = 0
                if (rng := self.headers.get("Range")) and rng.startswith("bytes="):
                    start = int(rng[6:].split("-")[0])
                self.send_response(206 if start else 200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body) - start))
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.end_headers()
                if cut:  # a dropped connection: part of the body, then the socket closes
                    self.wfile.write(body[start:start + cut.pop(0)])
                    self.close_connection = True
                    return
                self.wfile.write(body[start:])

        return Handler
