"""From a dataset table to one task: filter rows, binarise the label, pick images per patient (by default
each patient's admission image, the first by the dataset's time: :mod:`ftbench.data.selection`).

The task table keeps ``row`` (the image's row in the dataset's store) and a 0/1 ``label``. What the
filter and the label leave out is counted in the data report, never dropped without a trace: missing labels
(empty, or a missing-value spelling such as ``NA`` or ``#N/A``, as for patient ids) and values the task declares
``unknown`` (free text such as "?") drop out and are counted. A label comes only from a declared value: a value
equal to a declared one up to case, spacing or look-alike letters (``Poor``, ``poor ``, ``pοor`` with a Greek
omicron) is an error naming both spellings, and so is any other value outside the declared classes when the
task declares ``negative``; with ``positive`` alone, every other value is negative (the report lists each raw
value with its count and class, and the task stage prints that table). The report also states the task's
choices (label, classes, images per patient, unit of splitting), the counts per class, centre, view and
patient, how the times were read, and what the dataset rejected before the task saw it (duplicates, missing
patient ids, ...). Patients the image rule leaves out are listed under ``left_out`` (the task's
rejects.csv).
"""

from __future__ import annotations

import json
import unicodedata

import polars as pl

from ftbench.data import selection, text

# The class each raw label value goes to, by how the task declares it (listed in the data report).
CLASSES = {"positive": "1 (positive)", "negative": "0 (negative)", "unknown": "left out (declared unknown)"}
OTHER_CLASS, MISSING_CLASS = "0 (negative: not declared positive)", "left out (missing)"
KNOWN_CLASSES = (CLASSES["positive"], CLASSES["negative"], OTHER_CLASS)
# Greek and Cyrillic letters drawn like Latin ones (upper and lower case), folded before comparing spellings.
LOOK_ALIKES = str.maketrans(
    "ΑΒΕΖΗΙΚΜΝΟΡΤΥΧαικνοτυχАВЕКМНОРСТХаеорсухіјѕ",
    "ABEZHIKMNOPTYXaikvotuxABEKMHOPCTXaeopcyxijs",
)


def _as_text(values: list) -> list[str]:
    return [str(v) for v in values]


def build(table: pl.DataFrame, task: dict, name: str, rejects: pl.DataFrame | None = None) -> tuple[pl.DataFrame, dict]:
    """The task's image table and its data report (``rejects``: the dataset's rejected images)."""
    label = task["label"]
    if label not in table.columns:
        raise ValueError(
            f"task '{name}': label column '{label}' is not in dataset '{task['dataset']}' "
            f"(columns: {', '.join(table.columns)})"
        )
    steps, filtered_out = {"images": table.height}, {}
    rows = table.with_row_index("row")
    for column, values in task.get("filter", {}).items():
        if column not in rows.columns:
            raise ValueError(f"task '{name}': filter column '{column}' is not in dataset '{task['dataset']}'")
        keep = pl.col(column).is_in(_as_text(values)).fill_null(False)
        for value, count in rows.filter(~keep).group_by(column).len().sort(column, nulls_last=True).iter_rows():
            filtered_out[f"{column}: {'(empty)' if value is None else value}"] = count
        rows = rows.filter(keep)
        steps[f"after filter {column}"] = rows.height
    positive, unknown_values = _as_text(task["positive"]), _as_text(task.get("unknown", []))
    negatives = _as_text(task["negative"]) if task.get("negative") else None
    rows = rows.with_columns(pl.col(label).cast(pl.String))
    values = rows.group_by(label).len().sort(label, nulls_last=True)
    first = rows.group_by(label, maintain_order=True).agg(pl.col("image_id").first(), pl.col("file").first())
    where = {value: (image_id, file) for value, image_id, file in first.iter_rows()}
    copies = _copies(rows, label)
    for _, file, _, _, copy in copies:
        where.setdefault(copy["value"], (copy["image_id"], file))
    declared = {"positive": positive, "negative": negatives or [], "unknown": unknown_values}
    classes = _classes(name, label, where, declared, negatives is not None)
    _check_copies(name, label, copies, classes)
    label_values = [
        {"value": value, "images": int(count), "class": classes[value]} for value, count in values.iter_rows()
    ]
    lab = pl.col(label)
    cls = lab.replace_strict(
        {v: c for v, c in classes.items() if v is not None}, default=MISSING_CLASS, return_dtype=pl.String
    )
    declared_unknown = _counts(rows.filter(cls == CLASSES["unknown"]), label)
    known = cls.is_in(KNOWN_CLASSES)
    unlabelled = rows.filter(~known)
    rows = rows.filter(known).with_columns((cls == CLASSES["positive"]).cast(pl.Int8).alias("label"))
    steps["with a known label"] = rows.height
    kind = (
        pl.col("time_kind")
        if "time_kind" in rows.columns  # how the dataset read each time
        else pl.when(pl.col("time").is_not_null()).then(pl.lit("number"))
    )
    times = _counts(rows.select(kind.fill_null("missing").alias("time")), "time")
    source = (
        pl.col("time_source")
        if "time_source" in rows.columns
        else pl.when(pl.col("time").is_not_null()).then(pl.lit("the table's time column"))
    )
    sources = _counts(rows.select(source.fill_null("missing").alias("source")), "source")
    conflicts = rows.group_by("patient_id").agg(pl.col("label").n_unique().alias("n")).filter(pl.col("n") > 1)
    if conflicts.height:
        ids = sorted(conflicts["patient_id"].to_list())
        raise ValueError(
            f"task '{name}': patient(s) {ids[:10]} have images with both labels in column '{label}'; "
            "a prognostic label must be one per patient (fix the source or filter the rows)"
        )
    policy = task.get("images", "first")  # the admission image (selection.py states the rules)
    available = _counts(rows.group_by("patient_id").agg(pl.len().alias("images")), "images")
    rows, left_out, chosen = selection.select(rows, policy, name)
    if policy != "all":
        steps[f"{policy} image per patient"] = rows.height
    rows = rows.select("row", "image_id", "patient_id", "label", "centre", "view", "time").sort("row")
    for cls in (0, 1):
        if rows.filter(pl.col("label") == cls).height == 0:
            raise ValueError(
                f"task '{name}': class {cls} ({'positive' if cls else 'negative'}) is empty after filtering"
            )
    report = {
        "task": name,
        "dataset": task["dataset"],
        "description": task.get("description", ""),
        "label": label,
        "positive": positive,
        "negative": _as_text(task["negative"]) if task.get("negative") else "every other value that is not missing",
        "unknown": unknown_values,
        "images_policy": policy,
        "images_chosen_without_a_time": rows.filter(pl.col("time").is_null()).height if policy != "all" else 0,
        "split_by": task.get("split_by", "patient"),
        "steps": steps,
        "images_filtered_out": filtered_out,
        "unlabelled_images": unlabelled.height,
        "label_values": label_values,
        "patient_ids_differing_only_in_case": [list(pair) for pair in text.case_twins(rows["patient_id"])],
        "images_with_a_declared_unknown_label": declared_unknown,
        "times_read_as": times,
        "time_source": sources,
        **chosen,
        "images_per_class": _counts(rows, "label"),
        "patients_per_class": _counts(rows.unique("patient_id"), "label"),
        "images_per_centre": _counts(rows, "centre"),
        "images_per_view": _counts(rows, "view"),
        "images_per_patient_before_selection": available,
        "images_per_patient": _counts(rows.group_by("patient_id").agg(pl.len().alias("images")), "images"),
        "patients_per_centre_and_class": _per_class(rows.unique("patient_id"), "centre"),
        "images_per_view_and_class": _per_class(rows, "view"),
        "rejects": _rejects(rejects),
        "left_out": left_out,  # the task's own rejects (rows of rejects.csv), written beside the report
    }
    return rows, report


def _fold(value: str) -> str:
    """A label value as compared for near-spellings: NFKC, Greek/Cyrillic look-alikes as Latin, case, spacing."""
    return " ".join(unicodedata.normalize("NFKC", value).translate(LOOK_ALIKES).casefold().split())


def _spelling(value: str) -> str:
    """A value quoted, with its non-ASCII letters named (``'pοor' (ο: GREEK SMALL LETTER OMICRON)``)."""
    odd = sorted({f"{c}: {unicodedata.name(c, hex(ord(c)))}" for c in value if not c.isascii()})
    return repr(value) + (f" ({', '.join(odd)})" if odd else "")


def _classes(name: str, label: str, where: dict, declared: dict[str, list[str]], closed: bool) -> dict:
    """The class of each raw label value (``where``: value -> an image having it, for errors): declared values
    first, then missing-value spellings, then the rest: negative, unless the task declares ``negative`` too
    (``closed``). A declared value spelled differently, or in a closed task any undeclared value, is an error
    naming the value, an image and the config key."""
    role = {value: kind for kind in ("unknown", "negative", "positive") for value in declared[kind]}
    folded = {_fold(value): value for value in role}
    classes, stray = {}, []
    for value, (image_id, file) in where.items():
        if value in role:
            classes[value] = CLASSES[role[value]]
        elif text.missing(value):
            classes[value] = MISSING_CLASS
        elif (twin := folded.get(_fold(value))) is not None:
            raise ValueError(
                f"task '{name}': column '{label}' has {_spelling(value)}, e.g. image {image_id} ({file}), which is "
                f"the declared {role[twin]} value {_spelling(twin)} spelled differently (case, spacing or look-alike "
                f"letters); labels come only from declared values: correct the source, or declare this spelling "
                f"too (config key 'tasks.{name}')"
            )
        elif closed:
            stray.append((value, image_id, file))
        else:
            classes[value] = OTHER_CLASS
    if stray:
        _, image_id, file = stray[0]
        raise ValueError(
            f"task '{name}': column '{label}' has value(s) {sorted(v for v, *_ in stray)} outside the declared "
            f"positive {declared['positive']} and negative {declared['negative']} (config key 'tasks.{name}'), "
            f"e.g. image {image_id} ({file}); declare them (positive, negative, or unknown: rows left out and "
            "counted) or filter the rows"
        )
    return classes


def _copies(rows: pl.DataFrame, label: str) -> list[tuple[str, str, str, str | None, dict]]:
    """(image_id, file, patient_id, kept value, copy) for each copy of an image the dataset left out whose
    ``label`` value differed from the kept image's (the dataset table's ``copy_values``)."""
    if "copy_values" not in rows.columns:
        return []
    found = rows.filter(pl.col("copy_values").is_not_null()).select(
        "image_id", "file", "patient_id", label, "copy_values"
    )
    return [
        (image_id, file, patient, kept, copy)
        for image_id, file, patient, kept, differ in found.iter_rows()
        for copy in json.loads(differ).get(label, [])
    ]


def _check_copies(name: str, label: str, copies: list, classes: dict) -> None:
    """A patient's image listed again with a label of another class is a conflict, not a duplicate to drop."""
    conflicts = [
        f"image {image_id} ({file}, patient {patient}) says {kept!r}, its copy {copy['image_id']} says {copy['value']!r}"
        for image_id, file, patient, kept, copy in copies
        if classes.get(copy["value"], MISSING_CLASS) != classes.get(kept, MISSING_CLASS)
    ]
    if conflicts:
        raise ValueError(
            f"task '{name}': {len(conflicts)} image(s) are listed twice for their patient with labels of different "
            f"classes in column '{label}', so which is right cannot be told: {'; '.join(conflicts[:5])}. Correct the "
            "source (remove the wrong row)"
        )


def label_table(report: dict) -> str:
    """The data report's raw label values as lines of text (value, images, class): what the task stage prints."""
    width = max([len(repr(v["value"])) for v in report["label_values"]] + [5])
    lines = [f"{'value':<{width}}  {'images':>6}  class"]
    lines += [f"{v['value']!r:<{width}}  {v['images']:>6}  {v['class']}" for v in report["label_values"]]
    return "\n".join(lines)


def _per_class(frame: pl.DataFrame, column: str) -> dict[str, dict[str, int]]:
    """{value of column: {"0": negatives, "1": positives}}: where the classes are (LOCO needs both per centre)."""
    return {
        key: {"0": 0, "1": 0, **_counts(group, "label")}
        for key, group in sorted(((str(k[0]), g) for k, g in frame.group_by(column)), key=lambda kv: kv[0])
    }


def _rejects(rejects: pl.DataFrame | None) -> dict:
    """How many of the dataset's images were rejected before any task, by kind (details in rejects.csv)."""
    if rejects is None:
        return {"images": 0, "by_kind": {}}
    return {"images": rejects.height, "by_kind": _counts(rejects, "kind")}


def _counts(frame: pl.DataFrame, column: str) -> dict[str, int]:
    counts = frame.group_by(column).agg(pl.len().alias("_n")).sort(column, nulls_last=True)
    return {str(k): int(v) for k, v in counts.iter_rows()}
