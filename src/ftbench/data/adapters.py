"""Dataset adapters: each turns one kind of source into the standard table.

The standard table has one row per image: ``image_id``, ``patient_id``, ``file`` (absolute path),
``centre``, ``view``, ``time`` (for first/last image per patient; ``time_kind`` says whether it was read
from a number or a date, ``time_source`` from which column or DICOM attributes) and every label column of the source as text. :func:`build_table` then rejects
what cannot be used (listing each row, the kind of problem and the detail). Sources that must be fetched
first name their download in ``DOWNLOADS``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import polars as pl

from ftbench.data import aiforcovid, cohen, idc, manifest, synthetic, tcia, text
from ftbench.data.download import extract, fetch, find_root, hexdigest
from ftbench.data.images import (
    DECODE_ERRORS,
    MAX_PIXELS,
    NEAR,
    NEAR_SIDE,
    REJECT_KINDS,
    TooLarge,
    decode,
    fingerprint,
    near_pairs,
    thumbnail,
)

STANDARD = ("image_id", "patient_id", "file", "centre", "view", "time")
REJECTS_SCHEMA = {"image_id": pl.String, "file": pl.String, "kind": pl.String, "reason": pl.String}


def _synthetic(name: str, spec: dict, resources: Path) -> tuple[pl.DataFrame, list[dict]]:
    return synthetic.generate(resources / "datasets" / name, **spec.get("synthetic", {})), []


def _cohen(name: str, spec: dict, resources: Path) -> tuple[pl.DataFrame, list[dict]]:
    root = spec.get("path") or find_root(resources / "datasets" / name, "metadata.csv")
    return cohen.read(root), []


def _manifest(name: str, spec: dict, resources: Path) -> tuple[pl.DataFrame, list[dict]]:
    return manifest.read(
        spec["path"], spec.get("root"), spec.get("columns"), spec.get("encoding", "utf-8"), f"datasets.{name}.encoding"
    )


def _aiforcovid(name: str, spec: dict, resources: Path) -> tuple[pl.DataFrame, list[dict]]:
    return aiforcovid.read(spec["path"], spec.get("bbox"))


ADAPTERS: dict[str, Callable[[str, dict, Path], tuple[pl.DataFrame, list[dict]]]] = {
    "synthetic": _synthetic,
    "cohen": _cohen,
    "manifest": _manifest,
    "tcia": tcia.read,
    "aiforcovid": _aiforcovid,
}


RECORD = "archive.sha256.json"  # {url: SHA-256 of its first download here}


def _archive(source: dict, out: Path) -> None:
    """Fetch and unpack an archive, then check the SHA-256 of files inside it (``checksums``, by relative path).

    The archive itself is checked against ``sha256`` when given, else against its first download here (recorded
    in ``RECORD``): hosts such as GitHub build archives on request and do not promise the same bytes twice, so
    a pinned commit is checked through its files, and a later download that differs from the first is refused.
    """
    record = out / RECORD
    seen = json.loads(record.read_text()) if record.is_file() else {}
    first = seen.get(source["url"])
    try:
        archive = fetch(source["url"], out / "archive", source.get("sha256") or first)
    except ValueError as err:
        if first and not source.get("sha256"):
            raise ValueError(
                f"{err}. {record} holds the SHA-256 of this URL's first download here; if the new archive "
                f"is right (its files' checksums are still checked), delete that entry"
            ) from None
        raise
    if not first:
        record.write_text(json.dumps({**seen, source["url"]: hexdigest(archive)}, indent=1))
    extract(archive, out)
    for name, expected in (source.get("checksums") or {}).items():
        hits = sorted(out.rglob(name), key=lambda p: len(p.parts))
        if not hits:
            raise FileNotFoundError(f"{source['url']}: the archive has no '{name}' (listed under checksums)")
        if (got := hexdigest(hits[0])) != expected:
            raise ValueError(
                f"{source['url']}: {hits[0]} has SHA-256 {got}, the config's checksums say {expected}: "
                "not the snapshot the config pins"
            )


class Download(NamedTuple):
    # (dataset entry, the `images:` settings of the selected tasks on it) -> the settings that define what is
    # fetched (the download rule's params)
    source: Callable[[dict, list[str]], dict]
    fetch: Callable[[dict, Path], object]  # (source, folder) -> fetched into resources/datasets/<name>/


DOWNLOADS: dict[str, Download] = {
    "cohen": Download(lambda spec, images: {key: spec.get(key) for key in ("url", "sha256", "checksums")}, _archive),
    "tcia": Download(idc.download_source, idc.download),  # IDC first, NBIA as the fallback
}


def download_source(spec: dict, images: list[str] | None = None) -> dict | None:
    """What the download rule must fetch for this source; None for local copies (``path:``) and generators.
    ``images``: the ``images:`` settings of the tasks that use it (default: all images)."""
    entry = DOWNLOADS.get(spec["adapter"])
    return entry.source(spec, images or ["all"]) if entry and not spec.get("path") else None


def download(adapter: str, source: dict, out: str | Path) -> None:
    DOWNLOADS[adapter].fetch(source, Path(out))


# Kinds of rejects that mean a broken input rather than a choice (frontal views, derived images, a patient's
# second copy): their share of the source's images is limited by datasets.<name>.max_rejected.
FAULTS = (
    "missing file path",
    "path escapes root",
    "unreadable image",
    "oversized image",
    "several frames",
    "non-finite pixels",
    "unreadable DICOM header",
    "series download failed",
    "image missing",
)
MAX_REJECTED = 0.1  # ours: datasets.<name>.max_rejected


def build_table(name: str, spec: dict, resources: str | Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Run the adapter, check every patient id and image; return (table, rejects with kind and reason).

    Rejected, one line each: missing patient ids (placeholders such as ``NaN`` included), unreadable,
    oversized, multi-frame or non-finite images, and second copies of an image of the same patient (same
    file, same decoded pixels, or near-identical pixels). One image under two patients is an error naming both
    rows, unless ``duplicates: drop`` leaves out every copy. A patient's copy whose other values differ from
    the kept image's is recorded in ``copy_values`` (JSON), which each task checks for its label column.
    """
    table, rejects = ADAPTERS[spec["adapter"]](name, spec, Path(resources))
    reserved = [c for c in text.RESERVED if c in table.columns and c != "time_kind"]  # adapters read time_kind
    if reserved:
        raise ValueError(
            f"dataset '{name}': column(s) {reserved} are names ftbench gives its own columns "
            f"(reserved: {', '.join(text.RESERVED)}); rename them in the source"
        )
    if "time_kind" not in table.columns:  # adapters reading numbers (DICOM dates as days, generators)
        table = table.with_columns(pl.when(pl.col("time").is_not_null()).then(pl.lit("number")).alias("time_kind"))
    extra = ("time_kind", "time_source")  # how each time was read, and from which column or attributes
    table = table.select(*STANDARD, *extra, *[c for c in table.columns if c not in (*STANDARD, *extra)])
    table = table.with_columns(pl.col(c).cast(pl.String) for c in table.columns if c != "time")
    table = table.with_columns(pl.col("time").cast(pl.Float64), pl.col("patient_id").str.strip_chars())
    _check_image_ids(name, table)
    no_id = table.filter(text.is_missing(pl.col("patient_id")))
    rejects += [
        {
            "image_id": image_id,
            "file": file,
            "kind": "missing patient id",
            "reason": f"patient id {patient!r} means 'no value' ({', '.join(repr(m) for m in text.MISSING)}, "
            "any case, count as missing): the image cannot be kept apart from other patients' images",
        }
        for image_id, file, patient in no_id.select("image_id", "file", "patient_id").iter_rows()
    ]
    table = table.filter(~text.is_missing(pl.col("patient_id")))
    if spec.get("same_number_ids", "error") == "error":
        _check_numeric_twins(name, table)
    found = _decode_all(name, spec, table)
    rejects += [r for r in found.values() if "kind" in r]
    table = table.filter(pl.Series(["kind" not in found[image_id] for image_id in table["image_id"]], dtype=pl.Boolean))
    table = table.with_columns(
        pl.Series("height", [found[i]["height"] for i in table["image_id"]], dtype=pl.Int32),
        pl.Series("width", [found[i]["width"] for i in table["image_id"]], dtype=pl.Int32),
    )
    digests = [found[i]["digest"] for i in table["image_id"]]
    thumbs = np.array([found[i]["thumb"] for i in table["image_id"]], dtype=np.uint8)
    table, copies = _duplicates(name, spec, table, digests, thumbs)
    rejected = pl.DataFrame(rejects + copies, schema=REJECTS_SCHEMA).select(*REJECTS_SCHEMA)
    return table, rejected


def summary(name: str, table: pl.DataFrame, rejects: pl.DataFrame) -> str:
    """One line for the terminal: images kept, rejects by kind, and patient ids that differ only in case."""
    kinds = ", ".join(f"{kind}: {n}" for kind, n in rejects.group_by("kind").len().sort("kind").iter_rows())
    line = f"dataset {name}: {table.height} images kept, {rejects.height} rejected" + (f" ({kinds})" if kinds else "")
    twins = text.case_twins(table["patient_id"])
    if twins:
        shown = ", ".join(f"'{a}' and '{b}'" for a, b in twins[:5])
        line += (
            f"; warning: {len(twins)} pair(s) of patient ids differ only in case ({shown}): they are different "
            "patients, since ids are compared as text; if they are one, write the id one way"
        )
    return line


def check_rejects(name: str, spec: dict, table: pl.DataFrame, rejects: pl.DataFrame) -> None:
    """Stop when broken inputs (``FAULTS``) are more than ``max_rejected`` of the source's images, with the
    reasons by kind: wrong paths or a wrong root should not quietly leave a benchmark on what is left."""
    limit = spec.get("max_rejected", MAX_REJECTED)
    faults = rejects.filter(pl.col("kind").is_in(FAULTS))
    total = table.height + rejects.height
    if total and faults.height / total > limit:
        kinds = faults.group_by("kind", maintain_order=True).agg(
            pl.len(), pl.col("file").first(), pl.col("reason").first()
        )
        shown = "; ".join(f"{kind}: {n} (e.g. {file}: {reason})" for kind, n, file, reason in kinds.iter_rows())
        raise ValueError(
            f"dataset '{name}': {faults.height} of {total} images ({faults.height / total:.0%}) were rejected as "
            f"broken, more than the limit of {limit:.0%} (config key datasets.{name}.max_rejected): {shown}. "
            "Every reject is listed in the log; fix the paths or root, or raise the limit"
        )


def _check_image_ids(name: str, table: pl.DataFrame) -> None:
    """Image ids must be given and unique: an error naming the files of the empty or repeated ones."""
    empty = table.filter(text.is_missing(pl.col("image_id")))
    if empty.height:
        raise ValueError(
            f"dataset '{name}': {empty.height} image(s) have no image_id (an empty cell or a missing-value "
            f"spelling), e.g. the file(s) {empty['file'].head(5).to_list()}; give every image an id, or leave "
            "the image_id column out (ids are then the file paths)"
        )
    repeated = table.filter(pl.col("image_id").is_duplicated()).group_by("image_id", maintain_order=True).agg("file")
    if repeated.height:
        shown = "; ".join(f"'{i}' (files {files[:3]})" for i, files in repeated.head(5).iter_rows())
        raise ValueError(f"dataset '{name}': {repeated.height} image_id value(s) repeat: {shown}; ids must be unique")


def _check_numeric_twins(name: str, table: pl.DataFrame) -> None:
    """Ids are compared as text; two that are one number written two ways (7, 7.0, 07) are a mistake to fix,
    unless the dataset says they are different patients (``same_number_ids: distinct``, e.g. 1.1 and 1.10)."""
    twins = text.numeric_twins(table["patient_id"])
    if twins:
        first = dict(table.select("patient_id", "image_id").unique("patient_id", keep="first").iter_rows())
        shown = "; ".join(f"'{a}' (image {first[a]}) and '{b}' (image {first[b]})" for a, b in twins[:5])
        raise ValueError(
            f"dataset '{name}': patient ids {shown} are the same number written differently. Ids are "
            "compared as text, so these would be different patients; write each patient's id one way, or, if "
            f"they are different patients, set datasets.{name}.same_number_ids: distinct"
        )


def _decode_all(name: str, spec: dict, table: pl.DataFrame) -> dict[str, dict]:
    """Per image id: its size, pixel digest and thumbnail, or a reject (kind, reason). A file listed twice is
    decoded once."""
    max_pixels = spec.get("max_pixels", MAX_PIXELS)
    by_path: dict[str, dict] = {}
    found = {}
    for image_id, file in table.select("image_id", "file").iter_rows():
        path = str(Path(file).resolve())
        if path not in by_path:
            try:
                pixels = decode(file, max_pixels)
                by_path[path] = {
                    "height": pixels.shape[0],
                    "width": pixels.shape[1],
                    "digest": fingerprint(pixels),
                    "thumb": thumbnail(pixels),
                }
            except DECODE_ERRORS as err:
                kind = REJECT_KINDS.get(type(err), "unreadable image")
                detail = str(err) if kind != "unreadable image" else f"{type(err).__name__}: {err}"
                key = f" (config key datasets.{name}.max_pixels)" if isinstance(err, TooLarge) else ""
                by_path[path] = {"kind": kind, "reason": f"{kind}: {detail}{key}"}
        result = by_path[path]
        found[image_id] = {"image_id": image_id, "file": file, **result} if "kind" in result else result
    return found


def _duplicates(
    name: str, spec: dict, table: pl.DataFrame, digests: list[str], thumbs: np.ndarray
) -> tuple[pl.DataFrame, list[dict]]:
    """Keep one copy of an image a patient has twice; refuse (or, with ``duplicates: drop``, leave out) an
    image found under several patients: in one fold it would be trained as one patient and tested as another.

    Copies are the same file, the same decoded pixels, or near-identical pixels (:func:`images.near_pairs`:
    the same radiograph saved as JPEG, or resized). A patient's copy whose other columns differ from the kept
    image's (a corrected label on a repeated row) is recorded in the kept row's ``copy_values``, so that a task
    whose label differs reports the conflict instead of keeping the first row's label.
    """
    rows = table.select("image_id", "patient_id", "file").rows()
    values = table.select([c for c in table.columns if c not in (*STANDARD, *text.RESERVED)]).rows(named=True)
    edges = [(a, b, 0.0) for a, b in _same_digest(digests)] + near_pairs(thumbs)
    groups = _components(table.height, edges)
    drop, copies, shared, copy_values = set(), [], [], [None] * table.height
    for members in groups:
        patients = list(dict.fromkeys(rows[i][1] for i in members))
        if len(patients) > 1:
            shared.append(members)
            continue
        first = rows[members[0]]
        differ: dict[str, list] = {}
        for i in members[1:]:
            if Path(rows[i][2]).resolve() == Path(first[2]).resolve():
                same = "file"
            elif digests[i] == digests[members[0]]:
                same = "pixels"
            else:
                same = f"near-identical pixels ({_difference(thumbs, i, members[0])})"
            copies.append(
                {
                    "image_id": rows[i][0],
                    "file": rows[i][2],
                    "kind": "duplicate image",
                    "reason": f"same {same} as image {first[0]} ({first[2]}) of the same patient {first[1]}; "
                    "that copy is kept",
                }
            )
            drop.add(i)
            for column, value in values[i].items():
                if value != values[members[0]][column]:
                    differ.setdefault(column, []).append({"image_id": rows[i][0], "value": value})
        if differ:
            copy_values[members[0]] = json.dumps(differ)
    if shared and spec.get("duplicates", "error") != "drop":
        pairs = []
        for members in shared[:3]:  # the first image of the first two patients of each group
            by_patient: dict[str, int] = {}
            for i in members:
                by_patient.setdefault(rows[i][1], i)
            pairs.append(list(by_patient.values())[:2])
        shown = "; ".join(
            " and ".join(f"image {rows[i][0]} ({rows[i][2]}, patient {rows[i][1]})" for i in pair) for pair in pairs
        )
        raise ValueError(
            f"dataset '{name}': {len(shared)} image(s) appear under more than one patient (the same file, the "
            f"same pixels or near-identical pixels: {NEAR}), so a fold could train on one and test on the other: "
            f"{shown}. Fix the source, or set datasets.{name}.duplicates: drop to leave out every copy (listed in "
            "rejects.csv)"
        )
    for members in shared:
        listing = ", ".join(f"{rows[i][0]} (patient {rows[i][1]})" for i in members)
        for i in members:
            copies.append(
                {
                    "image_id": rows[i][0],
                    "file": rows[i][2],
                    "kind": "image under several patients",
                    "reason": f"the same or near-identical pixels ({NEAR}) are images {listing}; every copy left "
                    f"out (datasets.{name}.duplicates: drop)",
                }
            )
            drop.add(i)
    table = table.with_columns(pl.Series("copy_values", copy_values, dtype=pl.String))
    return table.filter(pl.Series([i not in drop for i in range(table.height)], dtype=pl.Boolean)), copies


def _same_digest(digests: list[str]) -> list[tuple[int, int]]:
    """Pairs (first row, later row) of rows whose decoded pixels are identical."""
    first: dict[str, int] = {}
    pairs = []
    for i, digest in enumerate(digests):
        if first.setdefault(digest, i) != i:
            pairs.append((first[digest], i))
    return pairs


def _components(n: int, edges: list[tuple[int, int, float]]) -> list[list[int]]:
    """Groups (row order, more than one member) of rows linked by ``edges``: copies of copies are one group."""
    if not edges:
        return []
    a, b, _ = zip(*edges, strict=True)
    from scipy.sparse import coo_matrix  # here, not at import: the Snakefile imports the adapters to plan
    from scipy.sparse.csgraph import connected_components

    _, labels = connected_components(coo_matrix((np.ones(len(a)), (a, b)), shape=(n, n)), directed=False)
    groups: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        groups.setdefault(int(label), []).append(i)
    return [members for members in groups.values() if len(members) > 1]


def _difference(thumbs: np.ndarray, i: int, j: int) -> str:
    diff = np.abs(thumbs[i].astype(np.int16) - thumbs[j].astype(np.int16)).mean()
    return f"mean difference {diff:.2f} grey levels at {NEAR_SIDE} x {NEAR_SIDE}"
