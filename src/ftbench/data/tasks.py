"""From a dataset table to one task: filter rows, binarise the label, pick images per patient.

The task table keeps ``row`` (the image's row in the dataset's store) and a 0/1 ``label``. What the
filter and the label leave out is counted in the data report, never dropped without a trace; the report
also states the task's choices (label, classes, images per patient, unit of splitting) and the counts per
class, centre, view and patient, and what the dataset rejected before the task saw it.
"""

from __future__ import annotations

import polars as pl


def _as_text(values: list) -> list[str]:
    return [str(v) for v in values]


def build(table: pl.DataFrame, task: dict, name: str, rejects: pl.DataFrame | None = None) -> tuple[pl.DataFrame, dict]:
    """The task's image table and its data report (``rejects``: the dataset's rejected images)."""
    label = task["label"]
    if label not in table.columns:
        raise ValueError(f"task '{name}': label column '{label}' is not in dataset '{task['dataset']}' "
                         f"(columns: {', '.join(table.columns)})")
    steps = {"images": table.height}
    rows = table.with_row_index("row")
    for column, values in task.get("filter", {}).items():
        if column not in rows.columns:
            raise ValueError(f"task '{name}': filter column '{column}' is not in dataset '{task['dataset']}'")
        rows = rows.filter(pl.col(column).is_in(_as_text(values)))
        steps[f"after filter {column}"] = rows.height
    positive = _as_text(task["positive"])
    lab = pl.col(label)
    present = lab.is_not_null() & (lab.str.strip_chars() != "")
    if task.get("negative"):
        negative = lab.is_in(_as_text(task["negative"]))
        stray = rows.filter(present & ~lab.is_in(positive) & ~negative)
        if stray.height:
            values = sorted(stray[label].unique().to_list())
            raise ValueError(f"task '{name}': column '{label}' has value(s) {values} outside the declared positive "
                             f"{positive} and negative {_as_text(task['negative'])} (config key 'tasks.{name}'), e.g. "
                             f"image {stray['image_id'][0]} ({stray['file'][0]}); declare them or filter the rows")
    else:
        negative = present & ~lab.is_in(positive)
    known = (lab.is_in(positive) | negative).fill_null(False)  # an empty label is unknown, and counted
    unknown = rows.filter(~known)
    rows = rows.filter(known).with_columns(lab.is_in(positive).cast(pl.Int8).alias("label"))
    steps["with a known label"] = rows.height
    conflicts = rows.group_by("patient_id").agg(pl.col("label").n_unique().alias("n")).filter(pl.col("n") > 1)
    if conflicts.height:
        ids = sorted(conflicts["patient_id"].to_list())
        raise ValueError(f"task '{name}': patient(s) {ids[:10]} have images with both labels in column '{label}'; "
                         "a prognostic label must be one per patient (fix the source or filter the rows)")
    policy = task.get("images", "all")
    if policy != "all":
        order = rows.sort(["patient_id", "time", "row"], nulls_last=True)
        rows = order.group_by("patient_id", maintain_order=True).agg(pl.all().first() if policy == "first" else pl.all().last())
        steps[f"{policy} image per patient"] = rows.height
    rows = rows.select("row", "image_id", "patient_id", "label", "centre", "view", "time").sort("row")
    for cls in (0, 1):
        if rows.filter(pl.col("label") == cls).height == 0:
            raise ValueError(f"task '{name}': class {cls} ({'positive' if cls else 'negative'}) is empty after filtering")
    report = {
        "task": name,
        "dataset": task["dataset"],
        "description": task.get("description", ""),
        "label": label,
        "positive": positive,
        "negative": _as_text(task["negative"]) if task.get("negative") else "every other non-empty value",
        "images_policy": policy,
        "split_by": task.get("split_by", "patient"),
        "steps": steps,
        "unlabelled_images": unknown.height,
        "images_per_class": _counts(rows, "label"),
        "patients_per_class": _counts(rows.unique("patient_id"), "label"),
        "images_per_centre": _counts(rows, "centre"),
        "images_per_view": _counts(rows, "view"),
        "images_per_patient": _counts(rows.group_by("patient_id").agg(pl.len().alias("images")), "images"),
        "patients_per_centre_and_class": _per_class(rows.unique("patient_id"), "centre"),
        "images_per_view_and_class": _per_class(rows, "view"),
        "rejects": _rejects(rejects),
    }
    return rows, report


def _per_class(frame: pl.DataFrame, column: str) -> dict[str, dict[str, int]]:
    """{value of column: {"0": negatives, "1": positives}}: where the classes are (LOCO needs both per centre)."""
    return {key: {"0": 0, "1": 0, **_counts(group, "label")}
            for key, group in sorted(((str(k[0]), g) for k, g in frame.group_by(column)), key=lambda kv: kv[0])}


def _rejects(rejects: pl.DataFrame | None) -> dict:
    """How many of the dataset's images were rejected before any task, by kind (details in rejects.csv)."""
    if rejects is None:
        return {"images": 0, "by_kind": {}}
    return {"images": rejects.height, "by_kind": _counts(rejects, "kind")}


def _counts(frame: pl.DataFrame, column: str) -> dict[str, int]:
    counts = frame.group_by(column).agg(pl.len().alias("_n")).sort(column, nulls_last=True)
    return {str(k): int(v) for k, v in counts.iter_rows()}
