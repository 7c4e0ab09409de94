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

import polars as pl

from ftbench.data import aiforcovid, cohen, manifest, synthetic, tcia, text
from ftbench.data.download import extract, fetch, find_root, hexdigest
from ftbench.data.images import DECODE_ERRORS, MAX_PIXELS, TooLarge, decode, fingerprint

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
    return aiforcovid.read(spec["path"])


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
    source: Callable[[dict], dict]  # the settings that define what is fetched (the download rule's params)
    fetch: Callable[[dict, Path], object]  # (source, folder) -> fetched into resources/datasets/<name>/


DOWNLOADS: dict[str, Download] = {
    "cohen": Download(lambda spec: {key: spec.get(key) for key in ("url", "sha256", "checksums")}, _archive),
    "tcia": Download(tcia.download_source, tcia.download),
}


def download_source(spec: dict) -> dict | None:
    """What the download rule must fetch for this source; None for local copies (``path:``) and generators."""
    entry = DOWNLOADS.get(spec["adapter"])
    return entry.source(spec) if entry and not spec.get("path") else None


def download(adapter: str, source: dict, out: str | Path) -> None:
    DOWNLOADS[adapter].fetch(source, Path(out))


def build_table(name: str, spec: dict, resources: str | Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Run the adapter, check every patient id and image; return (table, rejects with kind and reason).

    Rejected, one line each: missing patient ids (placeholders such as ``NaN`` included), unreadable or
    oversized images, and second copies of an image of the same patient (same file, or same decoded pixels).
    One image under two patients is an error naming both rows, unless ``duplicates: drop`` leaves out every copy.
    """
    table, rejects = ADAPTERS[spec["adapter"]](name, spec, Path(resources))
    if "time_kind" not in table.columns:  # adapters reading numbers (DICOM dates as days, generators)
        table = table.with_columns(pl.when(pl.col("time").is_not_null()).then(pl.lit("number")).alias("time_kind"))
    extra = ("time_kind", "time_source")  # how each time was read, and from which column or attributes
    table = table.select(*STANDARD, *extra, *[c for c in table.columns if c not in (*STANDARD, *extra)])
    table = table.with_columns(pl.col(c).cast(pl.String) for c in table.columns if c != "time")
    table = table.with_columns(pl.col("time").cast(pl.Float64), pl.col("patient_id").str.strip_chars())
    dupes = table.filter(pl.col("image_id").is_duplicated())["image_id"].unique().to_list()
    if dupes:
        raise ValueError(f"dataset '{name}': duplicate image_id values {dupes[:5]}")
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
    _check_numeric_twins(name, table)
    found = _decode_all(name, spec, table)
    rejects += [r for r in found.values() if "kind" in r]
    table = table.filter(pl.Series(["kind" not in found[image_id] for image_id in table["image_id"]], dtype=pl.Boolean))
    table = table.with_columns(
        pl.Series("height", [found[i]["height"] for i in table["image_id"]], dtype=pl.Int32),
        pl.Series("width", [found[i]["width"] for i in table["image_id"]], dtype=pl.Int32),
    )
    table, copies = _duplicates(name, spec, table, [found[i]["digest"] for i in table["image_id"]])
    rejected = pl.DataFrame(rejects + copies, schema=REJECTS_SCHEMA).select(*REJECTS_SCHEMA)
    return table, rejected


def _check_numeric_twins(name: str, table: pl.DataFrame) -> None:
    """Ids are compared as text; two that are one number written two ways (7, 7.0, 07) are a mistake to fix."""
    twins = text.numeric_twins(table["patient_id"])
    if twins:
        first = dict(table.select("patient_id", "image_id").unique("patient_id", keep="first").iter_rows())
        shown = "; ".join(f"'{a}' (image {first[a]}) and '{b}' (image {first[b]})" for a, b in twins[:5])
        raise ValueError(
            f"dataset '{name}': patient ids {shown} are the same number written differently. Ids are "
            "compared as text, so these would be different patients; write each patient's id one way"
        )


def _decode_all(name: str, spec: dict, table: pl.DataFrame) -> dict[str, dict]:
    """Per image id: its size and pixel digest, or a reject (kind, reason). A file listed twice is decoded once."""
    max_pixels = spec.get("max_pixels", MAX_PIXELS)
    by_path: dict[str, dict] = {}
    found = {}
    for image_id, file in table.select("image_id", "file").iter_rows():
        path = str(Path(file).resolve())
        if path not in by_path:
            try:
                pixels = decode(file, max_pixels)
                by_path[path] = {"height": pixels.shape[0], "width": pixels.shape[1], "digest": fingerprint(pixels)}
            except TooLarge as err:
                by_path[path] = {
                    "kind": "oversized image",
                    "reason": f"oversized image: {err} (config key datasets.{name}.max_pixels)",
                }
            except DECODE_ERRORS as err:
                by_path[path] = {"kind": "unreadable image", "reason": f"unreadable image: {type(err).__name__}: {err}"}
        result = by_path[path]
        found[image_id] = {"image_id": image_id, "file": file, **result} if "kind" in result else result
    return found


def _duplicates(name: str, spec: dict, table: pl.DataFrame, digests: list[str]) -> tuple[pl.DataFrame, list[dict]]:
    """Keep one copy of an image a patient has twice; refuse (or, with ``duplicates: drop``, leave out) an
    image found under several patients: in one fold it would be trained as one patient and tested as another."""
    rows = table.select("image_id", "patient_id", "file").rows()
    groups: dict[str, list[int]] = {}
    for i, digest in enumerate(digests):
        groups.setdefault(digest, []).append(i)
    drop, copies, shared = set(), [], []
    for members in groups.values():
        if len(members) == 1:
            continue
        patients = list(dict.fromkeys(rows[i][1] for i in members))
        if len(patients) > 1:
            shared.append(members)
            continue
        first = rows[members[0]]
        for i in members[1:]:
            same = "file" if Path(rows[i][2]).resolve() == Path(first[2]).resolve() else "pixels"
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
            f"dataset '{name}': {len(shared)} image(s) appear under more than one patient, so a fold could "
            f"train on one and test on the other: {shown}. Fix the source, or set "
            f"datasets.{name}.duplicates: drop to leave out every copy (listed in rejects.csv)"
        )
    for members in shared:
        listing = ", ".join(f"{rows[i][0]} (patient {rows[i][1]})" for i in members)
        for i in members:
            copies.append(
                {
                    "image_id": rows[i][0],
                    "file": rows[i][2],
                    "kind": "image under several patients",
                    "reason": f"the same pixels are images {listing}; every copy left out "
                    f"(datasets.{name}.duplicates: drop)",
                }
            )
            drop.add(i)
    return table.filter(pl.Series([i not in drop for i in range(table.height)], dtype=pl.Boolean)), copies
