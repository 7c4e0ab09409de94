"""Test fixtures: small generated DICOM radiographs and a local stand-in for TCIA's NBIA REST API.

The fake server answers the two endpoints the download uses, under both ``.../services/v4`` and
``.../services/v1``, with the shapes NBIA's source code gives them: ``getSeries`` (a JSON list of series
records, an empty body when nothing matches) and ``getImageWithMD5Hash`` (a zip of the series' files named
``00000001.dcm``... plus ``md5hashes.csv``, "Filename,MD5Hash"). Like NBIA's ``StreamingOutput``, a zip is
streamed with no Content-Length and Range is ignored (always 200, from the first byte): chunked
(HTTP/1.1) or delimited by closing the connection. A transfer can be cut after a given number of bytes,
an API version or one series on it can be made to refuse (an HTTP error status), and static files (the
clinical sheet) are served with Content-Length and Range. Every request is logged.
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
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
_IMAGES = itertools.count(1)  # numbers every generated radiograph, so no two share their pixels


def radiograph(rows: int = 48, cols: int = 40, high: int = 4095) -> np.ndarray:
    """Stored values whose *display* has a bright left half (bone-like) and a dark right half, plus a ramp.

    Each call's image is unique (a texture seeded by a call number), as different patients' radiographs are:
    the dataset table refuses one image under two patients, even with near-identical pixels.
    """
    img = np.tile(np.linspace(0.1, 0.3, cols), (rows, 1))
    img[:, : cols // 2] += 0.6
    img += np.random.default_rng(next(_IMAGES)).uniform(0, 0.08, size=img.shape)
    return np.round(img * high).astype(np.uint16 if high > 255 else np.uint8)


def make_dicom(
    path: str | Path,
    pixels: np.ndarray | None = None,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
    patient: str = "P1",
    view: str | None = "PA",
    modality: str = "CR",
    series_uid: str | None = None,
    series_description: str = "",
    study_description: str = "",
    body_part: str = "CHEST",
    study_date: str = "20200401",
    window: tuple[float, float] | None = None,
    rescale: tuple[float, float] | None = None,
    image_type: list[str] | None = None,
    references: int = 0,
) -> Path:
    """Write a single-frame radiograph (or, with ``pixels=None``, a DICOM object without pixel data);
    ``references``: that many items in a ReferencedImageSequence."""
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
    if image_type:
        ds.ImageType = image_type
    if references:
        items = []
        for _ in range(references):
            item = Dataset()
            item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = CR_STORAGE, generate_uid()
            items.append(item)
        ds.ReferencedImageSequence = Sequence(items)
    if pixels is not None:
        ds.set_pixel_data(pixels, photometric_interpretation=photometric, bits_stored=bits_stored)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def series_zip(files: dict[str, bytes], bad_md5: str | None = None, unlisted: dict[str, bytes] | None = None) -> bytes:
    """A getImageWithMD5Hash answer: the files and md5hashes.csv (``bad_md5``: a file given a wrong MD5;
    ``unlisted``: members md5hashes.csv does not name)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        lines = ["Filename,MD5Hash"]
        for name, data in files.items():
            zf.writestr(name, data)
            lines.append(f"{name},{'0' * 32 if name == bad_md5 else hashlib.md5(data).hexdigest()}")
        for name, data in (unlisted or {}).items():
            zf.writestr(name, data)
        zf.writestr("md5hashes.csv", "\n".join(lines) + "\n")
    return out.getvalue()


class FakeTCIA:
    """A threaded HTTP server on 127.0.0.1 serving a collection: ``add_series`` then ``with server:``.

    ``framing``: how a series zip ends without a Content-Length, ``"chunked"`` or ``"close"``.
    """

    def __init__(self, collection: str, framing: str = "chunked"):
        self.collection = collection
        self.framing = framing
        self.series: dict[str, dict] = {}  # uid -> {"row": listing record, "zip": bytes}
        self.files: dict[str, bytes] = {}  # path -> body (the clinical sheet)
        self.cuts: dict[str, list[int]] = {}  # uid -> bytes to send before dropping, one entry per request
        self.refuse: dict[str, tuple[int, bytes]] = {}  # "v4" or "v4/<uid>" -> (status, body) of every answer
        self.log: list[tuple[str, str | None]] = []  # (path?query, Range header)
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def api_of(self, version: str) -> str:
        return f"{self.url}/nbia-api/services/{version}"

    @property
    def apis(self) -> list[str]:
        """The API versions in the order the adapter asks them by default."""
        return [self.api_of("v4"), self.api_of("v1")]

    def add_series(
        self,
        patient: str,
        modality: str,
        dicoms: list[Path],
        description: str = "",
        bad_md5: str | None = None,
        ext: str = ".dcm",
        unlisted: dict[str, bytes] | None = None,
    ) -> str:
        uid = generate_uid()
        files = {f"{i + 1:08d}{ext}": Path(p).read_bytes() for i, p in enumerate(dicoms)}
        body = series_zip(files, bad_md5=f"{int(bad_md5):08d}{ext}" if bad_md5 else None, unlisted=unlisted)
        self.series[uid] = {
            "zip": body,
            "row": {
                "SeriesInstanceUID": uid,
                "StudyInstanceUID": generate_uid(),
                "Modality": modality,
                "ProtocolName": "",
                "SeriesDate": "2020-04-01 00:00:00.0",
                "SeriesDescription": description,
                "BodyPartExamined": "CHEST",
                "SeriesNumber": "1",
                "AnnotationsFlag": "",
                "Collection": self.collection,
                "Site": "ACME",
                "PatientID": patient,
                "Manufacturer": "ACME",
                "ManufacturerModelName": "CR-1",
                "SoftwareVersions": "1",
                "ImageCount": len(files),
                "MaxSubmissionTimestamp": "2021-08-06 00:00:00.0",
                "LicenseName": "Creative Commons Attribution 4.0 International License",
                "LicenseURI": "https://creativecommons.org/licenses/by/4.0/",
                "DataDescriptionURI": "https://doi.org/10.7937/x",
                "FileSize": len(body),
                "DateReleased": "2021-08-06 00:00:00.0",
                "StudyDesc": "",
                "StudyDate": "2020-04-01",
                "ThirdPartyAnalysis": "NO",
            },
        }
        return uid

    def requests_for(self, uid: str, version: str = "") -> list[str | None]:
        """The Range headers of the image requests for one series (on one API version), in order."""
        return [rng for path, rng in self.log if "getImage" in path and uid in path and f"/services/{version}" in path]

    def __enter__(self) -> FakeTCIA:
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # chunked transfers need it; every answer says how it ends

            def log_message(self, *args):  # keep test output quiet
                pass

            def do_GET(self):
                server.log.append((self.path, self.headers.get("Range")))
                url = urllib.parse.urlparse(self.path)
                query = dict(urllib.parse.parse_qsl(url.query))
                version = url.path.split("/services/")[1].split("/")[0] if "/services/" in url.path else ""
                for key in (version, f"{version}/{query.get('SeriesInstanceUID')}"):
                    if key in server.refuse:
                        status, body = server.refuse[key]
                        return self._send(body, "text/html", status=status)
                if url.path.endswith("/getSeries"):
                    asked = (query.get("Collection"), query.get("Modality"))
                    rows = [
                        s["row"]
                        for s in server.series.values()
                        if (s["row"]["Collection"], s["row"]["Modality"]) == asked
                    ]
                    return self._send(json.dumps(rows).encode() if rows else b"", "application/json")
                if url.path.endswith("/getImageWithMD5Hash"):
                    uid = query.get("SeriesInstanceUID")
                    if uid not in server.series:
                        return self._send(b"no such series", "text/plain", status=404)
                    return self._stream(server.series[uid]["zip"], cut=server.cuts.get(uid))
                if url.path in server.files:
                    return self._send(server.files[url.path], "application/octet-stream", ranges=True)
                self._send(b"not found", "text/plain", status=404)

            def _send(self, body: bytes, kind: str, status: int = 200, ranges: bool = False):
                """A whole answer with its Content-Length (``ranges``: honour ``Range: bytes=N-`` with 206)."""
                start = 0
                if ranges and (rng := self.headers.get("Range")) and rng.startswith("bytes="):
                    start = int(rng[6:].split("-")[0])
                self.send_response(206 if start else status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body) - start))
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.end_headers()
                self.wfile.write(body[start:])

            def _stream(self, body: bytes, cut: list[int] | None = None):
                """A zip as NBIA streams it: no Content-Length, Range ignored; ``cut``: drop the connection."""
                end = cut.pop(0) if cut else len(body)
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                if server.framing == "chunked":
                    self.send_header("Transfer-Encoding", "chunked")
                else:
                    self.send_header("Connection", "close")
                    self.close_connection = True
                self.end_headers()
                for at in range(0, end, 4096):
                    block = body[at : min(at + 4096, end)]
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(block), block) if server.framing == "chunked" else block)
                if end < len(body):  # a dropped connection: part of the body, then the socket closes
                    self.close_connection = True
                elif server.framing == "chunked":
                    self.wfile.write(b"0\r\n\r\n")

        return Handler
